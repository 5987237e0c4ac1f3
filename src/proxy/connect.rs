//! CONNECT: authenticate, decide on the canonical authority, then either intercept (terminate
//! TLS with a leaf for that host and handle each request), splice bytes opaquely (tunnel
//! policy, nothing attached), or refuse.
//!
//! Where a refusal is told matters: clients discard the body of a non-2xx answer to CONNECT, so
//! a host the vault's `deny` policy refuses is intercepted like a bound one and each request
//! inside gets the 403 and its proposal hint as an ordinary response. A look-alike of a bound
//! name (`api.example.com.evil`, another script's A-label) or an IP literal is such a host too:
//! its leaf names exactly what the agent asked for, and nothing goes upstream. Refusals that
//! come before a leaf could be minted or that concern the route itself stay answers to the
//! CONNECT: a bad target (400), missing or bad proxy credentials (407), a destination the SSRF
//! guard blocks (403 `blocked_destination`) and an unreachable upstream (502) on the tunnel
//! path, which is dialled before the CONNECT is answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::Instrument;

use super::auth::{self, Session};
use super::body::ProxyBody;
use super::conn::{Activity, Counted, Slot, Target, idle, revoked};
use super::error::ProxyError;
use super::pipeline;
use super::state::ProxyState;
use super::upstream::{ConnectError, dial};
use crate::domain::{RequestLogKind, RequestLogRow, now_ms};
use crate::policy::{
    Authority, ConnectDecision, Host, canonicalize_host, decide_connect, parse_authority,
};

fn established() -> Response<ProxyBody> {
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *r.status_mut() = StatusCode::OK;
    r
}

/// The log row of a tunnel refused before any byte moved.
fn refused_row(
    session: &Session,
    authority: &Authority,
    err: &ProxyError,
    started: Instant,
) -> RequestLogRow {
    tunnel_row(
        session,
        authority,
        err.status().as_u16(),
        (0, 0),
        started,
        Some(err.code()),
    )
}

fn tunnel_row(
    session: &Session,
    authority: &Authority,
    status: u16,
    bytes: (u64, u64),
    started: Instant,
    error: Option<&'static str>,
) -> RequestLogRow {
    RequestLogRow {
        vault_id: session.vault_id.clone(),
        actor: session.actor.clone(),
        kind: RequestLogKind::Tunnel,
        method: "CONNECT".into(),
        host: authority.to_string(),
        path: String::new(),
        service: None,
        credential_keys: Vec::new(),
        status,
        bytes_in: bytes.0,
        bytes_out: bytes.1,
        latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        error_code: error,
        created_at: now_ms(),
    }
}

/// The CONNECT target, which must be authority-form `host:port` and nothing else (RFC 9110
/// §9.3.6). hyper also hands over an absolute URI (`https://host:443`) or userinfo there;
/// they are refused so that one request has one reading, and the agent learns its client is
/// wrong instead of having it guessed.
fn connect_target(uri: &http::Uri) -> Result<&str, ProxyError> {
    let bad = |what: &str| ProxyError::BadRequest(format!("invalid CONNECT target: {what}"));
    let authority = match (uri.scheme(), uri.authority(), uri.path_and_query()) {
        (None, Some(a), None) => a,
        (Some(_), ..) => return Err(bad("a URI; send host:port (authority form)")),
        (None, None, _) => return Err(bad("no host; send host:port (authority form)")),
        (None, Some(_), Some(_)) => return Err(bad("a path; send host:port only")),
    };
    if authority.as_str().contains('@') {
        return Err(bad("userinfo; send host:port only"));
    }
    if authority.port().is_none() {
        return Err(bad("no port; send host:port"));
    }
    Ok(authority.as_str())
}

/// One span per agent connection after CONNECT, so its log lines (and those of every request
/// on it) can be filtered together. Debug level: at the default `info` it costs one level check.
/// Ids and names only, never token, header or query values.
fn connection_span(
    mode: &'static str,
    session: &Session,
    authority: &Authority,
    peer: SocketAddr,
) -> tracing::Span {
    tracing::debug_span!(
        "connection",
        mode,
        %peer,
        vault = %session.vault_name,
        actor_kind = session.actor.as_str(),
        actor = %session.actor.id(),
        host = %authority,
    )
}

/// Handles a CONNECT request.
pub(super) async fn handle(
    state: Arc<ProxyState>,
    peer: SocketAddr,
    slot: Arc<Slot>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let target = match connect_target(req.uri()) {
        Ok(t) => t.to_owned(),
        Err(e) => return e.into_response(),
    };
    let authority = match parse_authority(&target, None) {
        Ok(a) => a,
        Err(e) => {
            return ProxyError::BadRequest(format!("invalid CONNECT target: {e}")).into_response();
        }
    };
    let (session, snapshot) = match auth::authenticate(&state, req.headers(), peer.ip()).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match decide_connect(&snapshot, &authority) {
        decision @ (ConnectDecision::Intercept | ConnectDecision::Deny(_)) => {
            // A refused host is intercepted too: clients discard the body of a refused CONNECT
            // (curl prints "CONNECT tunnel failed, response 403", Node and requests a bare
            // ProxyError), so the proposal hint would never reach the agent. Inside TLS, each
            // request meets the same policy in the pipeline and gets the 403 with its header,
            // hint and log row as an ordinary response; nothing is sent upstream for it.
            let refusal = match decision {
                ConnectDecision::Deny(_) => Some(ProxyError::ForbiddenHost {
                    vault: session.vault_name.clone(),
                    host: authority.to_string(),
                    hostname: authority.host.to_string(),
                }),
                _ => None,
            };
            let on_upgrade = hyper::upgrade::on(req);
            let st = state.clone();
            let mode = if refusal.is_some() {
                "refuse"
            } else {
                "intercept"
            };
            let span = connection_span(mode, &session, &authority, peer);
            state.tasks.spawn(
                async move {
                    let refused = refusal.map(|err| Box::new((err, started)));
                    intercept(st, Arc::new(session), authority, on_upgrade, refused).await;
                    drop(slot);
                }
                .instrument(span),
            );
            established()
        }
        ConnectDecision::Tunnel => {
            let host = match &authority.host {
                Host::Domain(d) => d.clone(),
                Host::Ip(ip) => ip.to_string(),
            };
            let upstream = &state.upstream;
            match dial(
                &upstream.resolver,
                &upstream.guard,
                &host,
                authority.port,
                upstream.connect_timeout,
            )
            .await
            {
                Ok((tcp, _)) => {
                    let on_upgrade = hyper::upgrade::on(req);
                    let st = state.clone();
                    let span = connection_span("tunnel", &session, &authority, peer);
                    state.tasks.spawn(
                        async move {
                            splice_tunnel(st, session, authority, on_upgrade, tcp, started).await;
                            drop(slot);
                        }
                        .instrument(span),
                    );
                    established()
                }
                Err(e) => {
                    let err = match e {
                        ConnectError::Blocked(b) => ProxyError::Blocked(b),
                        other => ProxyError::Unreachable(other),
                    };
                    state
                        .logger
                        .log(refused_row(&session, &authority, &err, started));
                    err.into_response()
                }
            }
        }
    }
}

/// Completes the agent's TLS handshake with a leaf for the CONNECT authority. Also says
/// whether the agent's SNI named another host (its requests are then refused with 421).
async fn accept_tls(
    state: &ProxyState,
    authority: &Authority,
    on_upgrade: OnUpgrade,
) -> Option<(TlsStream<TokioIo<Upgraded>>, bool)> {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "CONNECT upgrade failed");
            return None;
        }
    };
    let io = TokioIo::new(upgraded);
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let handshake_limit = state.limits.tls_handshake_timeout;
    let start = match tokio::time::timeout(handshake_limit, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            // Plaintext or garbage after CONNECT to a bound host: nothing is forwarded.
            tracing::debug!(error = %e, host = %authority, "agent did not start TLS after CONNECT");
            return None;
        }
        Err(_) => return None,
    };
    let sni_mismatch = match start.client_hello().server_name() {
        None => false,
        Some(sni) => match canonicalize_host(sni) {
            Ok(h) => h != authority.host,
            Err(_) => true,
        },
    };
    let host_for_cert = authority.host.to_string();
    let host_for_cert = host_for_cert.trim_start_matches('[').trim_end_matches(']');
    let config = match state.leaves.server_config(host_for_cert).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, host = %authority, "could not mint a leaf certificate");
            return None;
        }
    };
    match tokio::time::timeout(handshake_limit, start.into_stream(config)).await {
        Ok(Ok(tls)) => Some((tls, sni_mismatch)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, host = %authority, "agent TLS handshake failed (does it trust the agent-vault CA?)");
            None
        }
        Err(_) => None,
    }
}

/// Serves an intercepted connection: every request goes through the pipeline. `refused` is the
/// refusal the CONNECT met (a host the vault's policy denies): it is logged here when no request
/// follows (the agent did not complete TLS), since the pipeline logs only requests.
async fn intercept(
    state: Arc<ProxyState>,
    session: Arc<Session>,
    authority: Authority,
    on_upgrade: OnUpgrade,
    refused: Option<Box<(ProxyError, Instant)>>,
) {
    // Boxed, like every large state below that an idle connection does not need: this task
    // lives as long as the connection, and its size is what each idle tunnel costs.
    let Some((tls, sni_mismatch)) = Box::pin(accept_tls(&state, &authority, on_upgrade)).await
    else {
        if let Some(refused) = refused {
            let (err, started) = *refused;
            state
                .logger
                .log(refused_row(&session, &authority, &err, started));
        }
        return;
    };
    // Boxed and dropped here: the connection's task keeps nothing of it while it lives.
    drop(refused);
    let target = Arc::new(Target::new(authority, true, sni_mismatch, false));
    let activity = Arc::new(Activity::default());
    activity.touch();
    let st = state.clone();
    let sess = session.clone();
    let act = activity.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let (st, sess, target, act) = (st.clone(), sess.clone(), target.clone(), act.clone());
        // Boxed: hyper keeps a slot the size of this future for the connection's whole life,
        // and the request's state machine is kilobytes that an idle connection need not hold.
        let handling = Box::pin(pipeline::handle(
            st,
            sess,
            target,
            req,
            pipeline::Admission::Recheck,
        ));
        async move {
            let busy = act.busy();
            let resp = handling.await;
            drop(busy);
            // Every frame of a streaming response counts as activity: a long download or event
            // stream is not idle, while a response that stalls for the idle limit is.
            Ok::<_, std::convert::Infallible>(resp.map(|body| {
                body.map_frame(move |frame| {
                    act.touch();
                    frame
                })
                .boxed()
            }))
        }
    });
    let conn = state
        .agent_http
        .serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let grace = state.shutdown_grace;
    let reason = tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "intercepted connection ended with an error");
            }
            return;
        }
        () = revoked(&state, &session) => "token revoked or vault access removed",
        () = idle(&activity, state.limits.idle_timeout) => "idle timeout",
        () = state.shutdown.cancelled() => "shutdown",
    };
    tracing::debug!(reason, "closing intercepted connection");
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(grace, conn).await;
}

async fn splice_tunnel(
    state: Arc<ProxyState>,
    session: Session,
    authority: Authority,
    on_upgrade: OnUpgrade,
    upstream: TcpStream,
    started: Instant,
) {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "CONNECT upgrade failed");
            return;
        }
    };
    let activity = Arc::new(Activity::default());
    activity.touch();
    let (from_agent, from_upstream) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut agent = Counted {
        inner: TokioIo::new(upgraded),
        read: from_agent.clone(),
        activity: activity.clone(),
    };
    let mut remote = Counted {
        inner: upstream,
        read: from_upstream.clone(),
        activity: activity.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut agent, &mut remote);
    tokio::pin!(copy);
    tokio::select! {
        res = &mut copy => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "tunnel ended with an error");
            }
        }
        () = revoked(&state, &session) => tracing::debug!("closing tunnel: token revoked"),
        () = idle(&activity, state.limits.tunnel_idle_timeout) => tracing::debug!("closing idle tunnel"),
        () = state.shutdown.cancelled() => {
            // Let the tunnel finish on its own within the grace period.
            let _ = tokio::time::timeout(state.shutdown_grace, &mut copy).await;
        }
    }
    let bytes = (
        from_agent.load(Ordering::Relaxed),
        from_upstream.load(Ordering::Relaxed),
    );
    state
        .logger
        .log(tunnel_row(&session, &authority, 200, bytes, started, None));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(raw: &str) -> Result<String, String> {
        let uri: http::Uri = raw.parse().map_err(|e| format!("unparsable: {e}"))?;
        connect_target(&uri)
            .map(str::to_owned)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn only_authority_form_host_and_port_is_a_connect_target() {
        assert_eq!(
            target("api.example.com:443"),
            Ok("api.example.com:443".into())
        );
        assert_eq!(target("[::1]:8443"), Ok("[::1]:8443".into()));
        for bad in [
            "https://api.example.com:443",
            "https://api.example.com",
            "http://api.example.com:443/",
            "user@api.example.com:443",
            "user:pw@api.example.com:443",
            "api.example.com",
            "/",
            "*",
        ] {
            assert!(target(bad).is_err(), "{bad} was accepted");
        }
    }
}
