//! One request, from the agent's head to the upstream's last byte, in five phases: [`admit`]
//! (the token is still live, Host agrees with the CONNECT authority, the head is sound),
//! [`decide`] (policy picks the service and its sealed credentials), [`build`] (open, substitute,
//! inject, strip: the upstream request), [`send`], and [`respond`] (stream the response back,
//! scrubbed, and log one row when it ends). Credentials are opened only in `build`, only for the
//! request that uses them, and only after every check has passed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::auth::{self, Session};
use super::body::ProxyBody;
use super::body::{Drained, End, Observed, is_too_large};
use super::conn::{Target, revoked};
use super::error::ProxyError;
use super::headers::{
    check_framing, check_method_override, content_length, is_websocket, strip_hop_by_hop,
};
use super::inject::{self, Opened};
use super::scrub::{self, Needles, Scrubbed};
use super::state::ProxyState;
use super::upstream::{ConnectError, IdentityClients, connect_error, tls_failure};
use super::{substitute, websocket};
use crate::domain::{Actor, CredentialKey, RequestLogKind, RequestLogRow, now_ms};
use crate::policy::decide::path_is_ambiguous;
use crate::policy::service::CompiledService;
use crate::policy::{
    DenyReason, RequestDecision, SealedCredential, VaultSnapshot, decide_request, parse_authority,
};

/// What the request log row will say.
#[derive(Clone)]
struct Draft {
    vault_id: String,
    actor: Actor,
    method: String,
    host: String,
    path: String,
    service: Option<String>,
    keys: Vec<String>,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
}

impl Draft {
    fn row(&self, status: u16, bytes_out: u64, error: Option<&'static str>) -> RequestLogRow {
        RequestLogRow {
            vault_id: self.vault_id.clone(),
            actor: self.actor.clone(),
            kind: RequestLogKind::Request,
            method: self.method.clone(),
            host: self.host.clone(),
            path: self.path.clone(),
            service: self.service.clone(),
            credential_keys: self.keys.clone(),
            status,
            bytes_in: self.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
            bytes_out,
            latency_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            error_code: error,
            created_at: now_ms(),
        }
    }
}

/// An absolute-form request on the proxy's own connection (`GET http://host/...`, or
/// `https://` from clients such as axios): authenticated on its own, then handled like any
/// intercepted request.
pub(super) async fn absolute_form(
    state: Arc<ProxyState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let https = match req.uri().scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return ProxyError::BadRequest(
                "only http:// and https:// targets are supported".into(),
            )
            .into_response();
        }
    };
    let Some(auth_text) = req.uri().authority().map(|a| a.as_str().to_owned()) else {
        return ProxyError::BadRequest("the request URI has no host".into()).into_response();
    };
    if auth_text.contains('@') {
        return ProxyError::BadRequest("user information in the request URI is not allowed".into())
            .into_response();
    }
    let authority = match parse_authority(&auth_text, Some(if https { 443 } else { 80 })) {
        Ok(a) => a,
        Err(e) => {
            return ProxyError::BadRequest(format!("invalid request host: {e}")).into_response();
        }
    };
    let (session, snapshot) = match auth::authenticate(&state, req.headers(), peer.ip()).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let target = Arc::new(Target::new(authority, https, false, true));
    let admission = Admission::Authenticated(snapshot);
    handle(state, Arc::new(session), target, req, admission).await
}

/// Handles one request on an intercepted connection (or an absolute-form request).
pub(super) async fn handle(
    state: Arc<ProxyState>,
    session: Arc<Session>,
    target: Arc<Target>,
    req: Request<Incoming>,
    admission: Admission,
) -> Response<ProxyBody> {
    let mut draft = Draft {
        vault_id: session.vault_id.clone(),
        actor: session.actor.clone(),
        method: req.method().as_str().to_owned(),
        host: target.logged.clone(),
        path: req.uri().path().to_owned(),
        service: None,
        keys: Vec::new(),
        started: Instant::now(),
        bytes_in: Arc::new(AtomicU64::new(0)),
    };
    // A body the answer leaves unread is drained, so an early 413 or 403 reaches the agent.
    let (parts, body) = req.into_parts();
    let body = Drained::new(body, parts.version, &parts.headers);
    let req = Request::from_parts(parts, body);
    // One span per proxied request (debug level: free at the default `info`). Ids, names, the
    // method and the host only; never a path's query, a header or a value.
    let span = tracing::debug_span!(
        "request",
        vault = %session.vault_name,
        actor = %session.actor.id(),
        method = %draft.method,
        host = %draft.host,
        service = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let result = process(&state, &session, &target, req, admission, &mut draft)
        .instrument(span.clone())
        .await;
    let status = match &result {
        Ok(response) => response.status(),
        Err(err) => err.status(),
    };
    if !span.is_disabled() {
        if let Some(service) = &draft.service {
            span.record("service", service.as_str());
        }
        span.record("status", status.as_u16());
        span.record("latency_ms", draft.started.elapsed().as_millis() as u64);
        span.in_scope(|| tracing::debug!("request answered"));
    }
    match result {
        Ok(response) => response,
        Err(err) => {
            state
                .logger
                .log(draft.row(err.status().as_u16(), 0, Some(err.code())));
            err.into_response()
        }
    }
}

fn check_host<B>(target: &Target, req: &Request<B>) -> Result<(), ProxyError> {
    let mismatch = || ProxyError::HostMismatch(target.authority.to_string());
    if target.sni_mismatch {
        return Err(mismatch());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header".into()));
    }
    if host.is_some_and(|h| !target.names(h.as_bytes())) {
        return Err(mismatch());
    }
    if !target.absolute_form
        && let Some(a) = req.uri().authority()
        && !target.names(a.as_str().as_bytes())
    {
        return Err(mismatch());
    }
    Ok(())
}

fn deny(reason: DenyReason, snapshot: &VaultSnapshot, target: &Target) -> ProxyError {
    match reason {
        DenyReason::ForbiddenHost => ProxyError::ForbiddenHost {
            vault: snapshot.vault_name.to_string(),
            host: target.authority.to_string(),
            hostname: target.authority.host.to_string(),
        },
        DenyReason::CredentialNotFound(k) => ProxyError::CredentialNotFound(k.to_string()),
        DenyReason::Integrity => ProxyError::Integrity,
        DenyReason::AmbiguousPath => ProxyError::AmbiguousPath,
        DenyReason::Plaintext => ProxyError::Plaintext(target.authority.to_string()),
        DenyReason::NonStandardMethod(m) => ProxyError::MethodNotAllowed(format!(
            "{} (not one of GET HEAD POST PUT PATCH DELETE OPTIONS, which are case-sensitive, and no service of this host lists it)",
            m.as_str().chars().take(32).collect::<String>()
        )),
    }
}

/// Builds the upstream URI from its parts (never by pasting strings) and checks that it names
/// exactly the target: no user information, the same host, the same port.
fn upstream_uri(target: &Target, path_and_query: &str) -> Result<Uri, ProxyError> {
    let refuse = || ProxyError::BadRequest("the request target cannot be forwarded".into());
    if !path_and_query.starts_with('/') {
        return Err(refuse());
    }
    let (scheme, default_port) = if target.https {
        ("https", 443)
    } else {
        ("http", 80)
    };
    let uri = Uri::builder()
        .scheme(scheme)
        .authority(target.host_header.as_str())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| refuse())?;
    let auth = uri.authority().ok_or_else(refuse)?;
    let same_port = auth.port_u16().unwrap_or(default_port) == target.authority.port;
    // Parsed again, not compared with the text it was built from: that comparison could not
    // fail, and this check is here for the case where the builder reads it differently.
    if auth.as_str().contains('@')
        || !same_port
        || !target.parses_to_target(auth.as_str().as_bytes())
    {
        return Err(refuse());
    }
    Ok(uri)
}

fn classify_send_error(err: &hyper_util::client::legacy::Error) -> ProxyError {
    if let Some(ce) = connect_error(err) {
        return match ce {
            ConnectError::Blocked(b) => ProxyError::Blocked(*b),
            ConnectError::Tls(failure) => ProxyError::UpstreamTls(failure.clone()),
            other => ProxyError::Unreachable(other.clone()),
        };
    }
    // With TLS 1.3 the server judges the client's certificate after the client has finished its
    // handshake, so an upstream that refuses the identity (or its absence) says so with an alert
    // on the first read, which reaches us inside hyper's error rather than the connector's.
    if let Some(failure) = tls_failure(err) {
        return ProxyError::UpstreamTls(failure);
    }
    if is_too_large(err) {
        return ProxyError::RequestTooLarge(0);
    }
    ProxyError::UpstreamProtocol
}

/// How far a request was checked before it reached the pipeline.
pub(super) enum Admission {
    /// A request on an intercepted connection: its token is re-checked (so revocation reaches
    /// open connections) and its head measured here.
    Recheck,
    /// An absolute-form request, authenticated and measured by the listener just before: it is
    /// not done twice.
    Authenticated(Arc<VaultSnapshot>),
}

/// The five phases in order; whatever one refuses, [`handle`] logs and answers.
async fn process(
    state: &Arc<ProxyState>,
    session: &Session,
    target: &Target,
    req: Request<Drained<Incoming>>,
    admission: Admission,
    draft: &mut Draft,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (snapshot, admitted) = admit(state, session, target, req, admission).await?;
    let decided = decide(&snapshot, session, target, &admitted, draft)?;
    let outbound = build(state, &snapshot, target, admitted, decided, draft).await?;
    let response = send(
        state,
        target,
        outbound.request,
        outbound.identity.as_deref(),
        outbound.reply.upgrade.is_some(),
        draft,
    )
    .await?;
    respond(state, session, outbound.reply, response, draft)
}

/// A request whose token is live and whose head is well-formed, before any policy.
struct Admitted {
    req: Request<Drained<Incoming>>,
    /// The origin-form path, without the query.
    path: String,
    path_and_query: String,
}

/// Phase 1 (admit): the token is still live, the head is within its limits, names the target, is
/// framed one way only, and asks for a method and an origin-form path the proxy forwards.
async fn admit(
    state: &ProxyState,
    session: &Session,
    target: &Target,
    req: Request<Drained<Incoming>>,
    admission: Admission,
) -> Result<(Arc<VaultSnapshot>, Admitted), ProxyError> {
    let snapshot = match admission {
        Admission::Authenticated(snapshot) => snapshot,
        Admission::Recheck => {
            let snapshot = auth::recheck(state, session).await?;
            state.check_head_size(req.headers())?;
            snapshot
        }
    };
    check_host(target, &req)?;
    check_framing(req.headers())?;
    let method = req.method();
    // Refused in every spelling: `trace` is another method to hyper, but not to every upstream.
    if method.as_str().eq_ignore_ascii_case("TRACE")
        || method.as_str().eq_ignore_ascii_case("CONNECT")
    {
        return Err(ProxyError::MethodNotAllowed(method.to_string()));
    }
    let path = req.uri().path().to_owned();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    // Only origin-form paths: an h2 `:path` such as `@evil.example/x` or `.evil.example/x` would
    // otherwise splice into the upstream URI's authority and move the request, credentials and
    // all, to another host.
    if !path_and_query.starts_with('/') || !path.starts_with('/') {
        return Err(ProxyError::BadRequest(
            "the request path must start with /".into(),
        ));
    }
    Ok((
        snapshot,
        Admitted {
            req,
            path,
            path_and_query,
        },
    ))
}

/// What policy gives a request: its service and credentials (still sealed), and its place
/// under the agent's in-flight limit.
struct Decided<'s> {
    service: Option<&'s CompiledService>,
    sealed: Vec<(&'s CredentialKey, &'s SealedCredential)>,
    slot: OwnedSemaphorePermit,
}

/// Phase 2 (decide): decide by the snapshot, refuse method overrides where the service limits methods,
/// and take a place under the agent's in-flight limit.
fn decide<'s>(
    snapshot: &'s VaultSnapshot,
    session: &Session,
    target: &Target,
    admitted: &Admitted,
    draft: &mut Draft,
) -> Result<Decided<'s>, ProxyError> {
    let req = &admitted.req;
    let decision = decide_request(
        snapshot,
        &target.authority,
        req.method(),
        &admitted.path,
        target.https,
    );
    let (service, sealed) = match decision {
        RequestDecision::Deny(reason) => return Err(deny(reason, snapshot, target)),
        RequestDecision::Forward => (None, Vec::new()),
        RequestDecision::Inject {
            service,
            credentials,
        } => (Some(service), credentials),
    };
    draft.service = service.map(|s| s.name.clone());
    if let Some(service) = service {
        check_method_override(service, req.headers(), req.uri().query())?;
    }
    let slot = session
        .slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ProxyError::RateLimited("too many requests in flight for this agent"))?;
    Ok(Decided {
        service,
        sealed,
        slot,
    })
}

/// The request to send upstream, and what its response will need.
struct Outbound {
    request: Request<ProxyBody>,
    /// The clients presenting the service's TLS client identity, if it has one.
    identity: Option<Arc<IdentityClients>>,
    reply: Reply,
}

/// What the response phase needs from the phases before it.
struct Reply {
    /// The agent's place under its in-flight limit, held until the response ends.
    slot: OwnedSemaphorePermit,
    /// Everything the response could reflect of the credentials, scrubbed from it.
    needles: Option<Arc<Needles>>,
    /// A WebSocket handshake: the agent's side of the upgrade, and what to do to its frames.
    upgrade: Option<Upgrade>,
}

/// The agent's side of a WebSocket upgrade.
struct Upgrade {
    agent: hyper::upgrade::OnUpgrade,
    rewrite: Option<websocket::Rewrite>,
}

/// Phase 3 (build): open the credentials, substitute placeholders, attach credentials, strip what
/// must not travel, and build the upstream request with its body (buffered only when its
/// placeholders must be replaced).
async fn build(
    state: &ProxyState,
    snapshot: &VaultSnapshot,
    target: &Target,
    admitted: Admitted,
    decided: Decided<'_>,
    draft: &mut Draft,
) -> Result<Outbound, ProxyError> {
    let Admitted {
        mut req,
        path,
        path_and_query,
    } = admitted;
    let Decided {
        service,
        sealed,
        slot,
    } = decided;
    let opened = if sealed.is_empty() {
        None
    } else {
        Some(Opened::open(
            &state.keyring,
            &snapshot.vault_id,
            &sealed,
            crate::domain::now_ms(),
        )?)
    };
    let identity = match (service.and_then(|s| s.client_identity.as_ref()), &opened) {
        (Some(key), Some(opened)) => Some(client_identity(state, snapshot, &sealed, key, opened)?),
        _ => None,
    };
    let plan = substitute::Plan::new(&snapshot.placeholders, service, opened.as_ref())?;
    draft.keys = sealed.iter().map(|(k, _)| k.to_string()).collect();
    // Everything this request could get reflected back, zeroized when its response ends.
    let needles = opened.as_ref().and_then(|o| {
        let values = inject::reflectable(service, o);
        Needles::new(values.iter().map(|v| v.as_slice()))
    });

    let websocket = is_websocket(&req);
    let agent_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, websocket);
    parts.headers.remove(header::HOST);
    plan.headers(&mut parts.headers)?;
    if let (Some(service), Some(opened)) = (service, opened.as_ref()) {
        inject::apply(service, opened, &mut parts.headers)?;
    }
    let uri = forwarded_uri(&plan, service, target, &path, &path_and_query)?;
    if needles.is_some() {
        ask_for_scrubbable(&mut parts.headers);
    }

    let upstream_body = request_body(
        state,
        service,
        opened.as_ref(),
        &plan,
        &mut parts.headers,
        body,
        draft,
    )
    .await?;
    // A WebSocket that carries credentials, or declares frame substitutions, is read frame by
    // frame after the upgrade; compression would make frames unreadable, so it is not offered.
    let ws_rewrite = if websocket {
        let frames = plan.for_websocket();
        (needles.is_some() || frames.has_websocket_places()).then(|| websocket::Rewrite {
            frames,
            needles: needles.clone(),
        })
    } else {
        None
    };
    if ws_rewrite.is_some() {
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    drop(plan);
    drop(opened);

    let mut request = Request::from_parts(parts, upstream_body);
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    Ok(Outbound {
        request,
        identity,
        reply: Reply {
            slot,
            needles,
            upgrade: agent_upgrade.map(|agent| Upgrade {
                agent,
                rewrite: ws_rewrite,
            }),
        },
    })
}

/// The pooled clients presenting the service's client certificate `key`, opened with the rest
/// of the request's credentials (policy put it among them, so it is there).
fn client_identity(
    state: &ProxyState,
    snapshot: &VaultSnapshot,
    sealed: &[(&CredentialKey, &SealedCredential)],
    key: &CredentialKey,
    opened: &Opened,
) -> Result<Arc<IdentityClients>, ProxyError> {
    let (_, sealed) = sealed
        .iter()
        .find(|(k, _)| *k == key)
        .ok_or_else(|| ProxyError::CredentialNotFound(key.to_string()))?;
    state.identities.clients(
        &state.upstream,
        &snapshot.vault_id,
        key,
        sealed,
        opened.identity(key)?,
    )
}

/// The upstream URI after substitution, which must stay under the path rule that matched.
fn forwarded_uri(
    plan: &substitute::Plan,
    service: Option<&CompiledService>,
    target: &Target,
    path: &str,
    path_and_query: &str,
) -> Result<Uri, ProxyError> {
    let new_path = plan.target(path_and_query)?;
    if let Some(service) = service
        && service.pattern.path.is_some()
    {
        // What was matched is what is forwarded: a substituted value must not move the request
        // out of the path the rule allows.
        let forwarded = new_path.split('?').next().unwrap_or(&new_path);
        if forwarded != path
            && (path_is_ambiguous(forwarded) || !service.pattern.matches_path(forwarded))
        {
            return Err(ProxyError::PlaceholderRefused(
                "a substituted value would change which path rule the request falls under".into(),
            ));
        }
    }
    upstream_uri(target, &new_path)
}

/// Only codings the scrubber can decode, and no partial responses: a value read back in byte
/// ranges would never appear whole.
fn ask_for_scrubbable(headers: &mut http::HeaderMap) {
    if headers.contains_key(header::ACCEPT_ENCODING) {
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, identity"),
        );
    }
    headers.remove(header::RANGE);
    headers.remove(header::IF_RANGE);
}

/// The upstream request's body: streamed and counted under the request cap, or, when the
/// service substitutes in bodies of this kind and credentials were opened, read whole (under
/// the substitution cap) and rewritten.
async fn request_body(
    state: &ProxyState,
    service: Option<&CompiledService>,
    opened: Option<&Opened>,
    plan: &substitute::Plan,
    headers: &mut http::HeaderMap,
    body: Drained<Incoming>,
    draft: &Draft,
) -> Result<ProxyBody, ProxyError> {
    let max_in = state.limits.max_request_body_bytes;
    if content_length(headers).is_some_and(|n| n > max_in) {
        return Err(ProxyError::RequestTooLarge(max_in));
    }
    let body_kind = substitute::body_kind(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let encoded = headers.contains_key(header::CONTENT_ENCODING);
    let body: ProxyBody = match (substitute::wants_body(service), body_kind, opened) {
        (true, Some(kind), Some(_)) if !encoded => {
            let cap = state.limits.max_substitution_body_bytes;
            let collected = Limited::new(body, cap).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ProxyError::RequestTooLarge(cap as u64)
                } else {
                    ProxyError::BadRequest("could not read the request body".into())
                }
            })?;
            let collected = collected.to_bytes();
            if kind == substitute::BodyKind::Form
                && service.is_some_and(|s| s.methods.is_some())
                && substitute::form_names_method(&collected)
            {
                return Err(ProxyError::BadRequest(
                    "a _method form field is refused for services that allow only some methods"
                        .into(),
                ));
            }
            let rewritten = plan.body(&collected, kind)?;
            draft
                .bytes_in
                .store(rewritten.len() as u64, std::sync::atomic::Ordering::Relaxed);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
            Full::new(Bytes::from(rewritten))
                .map_err(|never| match never {})
                .boxed()
        }
        _ => Observed::new(body, draft.bytes_in.clone(), max_in).boxed(),
    };
    Ok(body)
}

/// Phase 4 (send): send the request on this worker's pooled client (the one presenting the
/// service's client identity, if it has one) and wait for the response head.
async fn send(
    state: &ProxyState,
    target: &Target,
    request: Request<ProxyBody>,
    identity: Option<&IdentityClients>,
    upgrade: bool,
    draft: &Draft,
) -> Result<Response<Incoming>, ProxyError> {
    let client = match identity {
        None => state.upstream.client(upgrade),
        Some(clients) => clients.client(upgrade),
    };
    let timeout = state.upstream.response_header_timeout;
    match tokio::time::timeout(timeout, client.request(request)).await {
        Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
        Ok(Err(e)) => {
            let err = classify_send_error(&e);
            let max_in = state.limits.max_request_body_bytes;
            // An h2 upstream may report the stream reset the cap caused rather than the cap.
            let over = draft.bytes_in.load(std::sync::atomic::Ordering::Relaxed) > max_in;
            Err(match err {
                ProxyError::RequestTooLarge(_) => ProxyError::RequestTooLarge(max_in),
                _ if over => ProxyError::RequestTooLarge(max_in),
                // The connection may have died of a TLS alert the request never saw (h2).
                ProxyError::UpstreamProtocol => state
                    .upstream
                    .recent_tls_failure(&target.authority.host.to_string(), target.authority.port)
                    .map_or(ProxyError::UpstreamProtocol, ProxyError::UpstreamTls),
                other => other,
            })
        }
        Ok(Ok(r)) => Ok(r),
    }
}

/// Phase 5 (respond): stream the response back (scrubbed when credentials were attached, capped, and
/// logged once when it ends), or splice an accepted WebSocket upgrade.
fn respond(
    state: &Arc<ProxyState>,
    session: &Session,
    reply: Reply,
    response: Response<Incoming>,
    draft: &Draft,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Reply {
        slot,
        needles,
        upgrade,
    } = reply;
    if let Some(upgrade) = upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        return Ok(switch_protocols(
            state, session, upgrade, slot, needles, response, draft,
        ));
    }
    let (mut parts, body) = response.into_parts();
    forget_reason_phrase(&mut parts);
    let coding = match needles.as_ref().map(|_| scrub::coding(&parts.headers)) {
        Some(None) => return Err(ProxyError::Unscrubbable),
        Some(Some(c)) => Some(c),
        None => None,
    };
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        // The body was framed by the transfer coding; a Content-Length next to it is a lie
        // that would desynchronize the agent's connection.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers, false);
    let max_out = state.limits.max_response_body_bytes;
    if max_out > 0 && content_length(&parts.headers).is_some_and(|n| n > max_out) {
        return Err(ProxyError::ResponseTooLarge);
    }
    let status = parts.status.as_u16();
    let logger = state.logger.clone();
    let draft = draft.clone();
    let body = Observed::new(body, Arc::new(AtomicU64::new(0)), max_out)
        .on_end(move |end, bytes_out| {
            let error = match end {
                End::Complete => None,
                End::Aborted => Some("response_aborted"),
                End::TooLarge => Some("response_too_large"),
            };
            logger.log(draft.row(status, bytes_out, error));
        })
        .hold(slot);
    let body = match (needles, coding) {
        (Some(needles), Some(coding)) => {
            needles.scrub_headers(&mut parts.headers);
            // The body's length changes with every match, and decoded bodies go out as identity.
            parts.headers.remove(header::CONTENT_LENGTH);
            if coding != scrub::Coding::Identity {
                parts.headers.remove(header::CONTENT_ENCODING);
            }
            Scrubbed::new(body, needles, coding).boxed()
        }
        _ => body.boxed(),
    };
    Ok(Response::from_parts(parts, body))
}

/// hyper keeps a non-standard reason phrase in an extension and writes it back out; it is
/// upstream text that no scrubber sees, so it never travels on.
fn forget_reason_phrase(parts: &mut http::response::Parts) {
    parts.extensions.clear();
}

/// The upstream accepted a WebSocket upgrade: splice both sides in a task of their own, which
/// watches for revocation as a tunnel does, and answer the agent's handshake.
fn switch_protocols(
    state: &Arc<ProxyState>,
    session: &Session,
    upgrade: Upgrade,
    slot: OwnedSemaphorePermit,
    needles: Option<Arc<Needles>>,
    mut response: Response<Incoming>,
    draft: &Draft,
) -> Response<ProxyBody> {
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let st = state.clone();
    let session = session.clone();
    let row = draft.row(101, 0, None);
    state.tasks.spawn(async move {
        let splice = websocket::splice(
            upgrade.agent,
            upstream_upgrade,
            st.limits.tunnel_idle_timeout,
            upgrade.rewrite,
        );
        tokio::pin!(splice);
        // An upgraded connection has left hyper's connection (and its revocation watch): it
        // needs its own, like a tunnel.
        tokio::select! {
            () = &mut splice => {}
            () = revoked(&st, &session) => {
                tracing::debug!("closing websocket: token revoked or vault access removed");
            }
            () = st.shutdown.cancelled() => {
                let _ = tokio::time::timeout(st.shutdown_grace, &mut splice).await;
            }
        }
        st.logger.log(row);
        drop(slot);
    });
    let (mut parts, _) = response.into_parts();
    forget_reason_phrase(&mut parts);
    strip_hop_by_hop(&mut parts.headers, true);
    if let Some(needles) = &needles {
        needles.scrub_headers(&mut parts.headers);
    }
    Response::from_parts(
        parts,
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    )
}
