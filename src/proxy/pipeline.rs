//! One request, from the agent's head to the upstream's last byte: re-check the token, check
//! that Host agrees with the CONNECT authority, decide, substitute, inject, send, stream the
//! response back, and log one row when it ends. Credentials are opened only here, only for
//! the request that uses them, and only after every check has passed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::auth::{self, Session};
use super::body::{Drained, End, Observed, is_too_large};
use super::error::ProxyError;
use super::inject::{self, Opened};
use super::scrub::{self, Needles, Scrubbed};
use super::upstream::{ConnectError, connect_error};
use super::{ProxyBody, ProxyState, connect, substitute, websocket};
use crate::domain::now_ms;
use crate::policy::decide::path_is_ambiguous;
use crate::policy::service::CompiledService;
use crate::policy::{
    Authority, DenyReason, RequestDecision, VaultSnapshot, decide_request, parse_authority,
};
use crate::store::RequestLogRow;

/// Where requests on this connection go.
#[derive(Debug)]
pub struct Target {
    /// The canonical authority (from CONNECT, or from the absolute-form URI).
    pub authority: Authority,
    /// Upstream scheme is https.
    pub https: bool,
    /// The TLS server name the agent sent disagreed with the CONNECT authority.
    pub sni_mismatch: bool,
    /// The request came in absolute form on the proxy's own connection.
    pub absolute_form: bool,
    /// The authority as a `Host` header writes it (the port only when not the default): the
    /// form nearly every request claims, so most checks are one comparison.
    host_header: String,
    /// The authority as the request log writes it, formatted once per connection.
    logged: String,
}

impl Target {
    /// Where requests go: the canonical authority, over https or not.
    pub fn new(authority: Authority, https: bool, sni_mismatch: bool, absolute_form: bool) -> Self {
        let host_header = authority.host_header(if https { 443 } else { 80 });
        let logged = authority.to_string();
        Self {
            logged,
            authority,
            https,
            sni_mismatch,
            absolute_form,
            host_header,
        }
    }

    /// Whether `claimed` (a `Host` header or URI authority) names this target.
    fn names(&self, claimed: &[u8]) -> bool {
        claimed == self.host_header.as_bytes() || self.parses_to_target(claimed)
    }

    /// Whether `claimed`, parsed on its own, is this target's authority.
    fn parses_to_target(&self, claimed: &[u8]) -> bool {
        let default_port = if self.https { 443 } else { 80 };
        std::str::from_utf8(claimed)
            .ok()
            .and_then(|c| parse_authority(c, Some(default_port)).ok())
            .is_some_and(|a| a == self.authority)
    }
}

/// Headers that describe one hop and never travel further.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == "proxy-connection" || name == "keep-alive"
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most heads carry none of them (and a name listed in Connection needs Connection): one
    // pass over the few names present instead of a lookup for every hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        if keep_upgrade && (name == header::UPGRADE || name == header::CONNECTION) {
            continue;
        }
        headers.remove(name);
    }
    headers.remove("proxy-connection");
    headers.remove("keep-alive");
}

/// What the request log row will say.
#[derive(Clone)]
struct Draft {
    vault_id: String,
    actor: (&'static str, String),
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
            actor_kind: self.actor.0,
            actor_id: self.actor.1.clone(),
            kind: "request",
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
pub async fn absolute_form(
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
    let (session, _) = match auth::authenticate(&state, req.headers(), peer.ip()).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let target = Arc::new(Target::new(authority, https, false, true));
    handle(state, Arc::new(session), target, req).await
}

/// Handles one request on an intercepted connection (or an absolute-form request).
pub async fn handle(
    state: Arc<ProxyState>,
    session: Arc<Session>,
    target: Arc<Target>,
    req: Request<Incoming>,
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
    match process(&state, &session, &target, req, &mut draft).await {
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

/// Refuses request heads whose length two parsers could read differently: a body framed by both
/// `Content-Length` and `Transfer-Encoding`, or by several `Content-Length` values. Forwarding
/// either is how a request gets smuggled past the proxy into the upstream connection.
fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    if lengths > 1 {
        return Err(ProxyError::BadFraming(
            "more than one Content-Length header",
        ));
    }
    // Substitution reads the body as the first type; an upstream reading the last would take a
    // JSON place for a form field (or the other way round).
    if headers.get_all(header::CONTENT_TYPE).iter().count() > 1 {
        return Err(ProxyError::BadFraming("more than one Content-Type header"));
    }
    if lengths == 1 && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(ProxyError::BadFraming(
            "Content-Length and Transfer-Encoding together",
        ));
    }
    Ok(())
}

/// Headers and parameters that frameworks (Rails, Laravel, Symfony, ASP.NET, Express) honour to
/// run a request as another method.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// A service that allows only some methods must not be tricked into another one: the method the
/// rule matched is the method the upstream runs. A service that allows any method still gets
/// only the standard ones, as it does without an override.
fn check_method_override(
    service: &CompiledService,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(), ProxyError> {
    let scoped = service.methods.is_some();
    // Names are read as frameworks read them, form-decoded: `_%6Dethod` is `_method`.
    let mut wanted = METHOD_OVERRIDES
        .iter()
        .flat_map(|h| headers.get_all(*h).iter())
        .map(|v| v.as_bytes().to_vec())
        .chain(
            query
                .into_iter()
                .flat_map(|q| url::form_urlencoded::parse(q.as_bytes()))
                .filter(|(name, _)| name.eq_ignore_ascii_case("_method"))
                .map(|(_, value)| value.as_bytes().to_vec()),
        );
    if scoped && wanted.next().is_some() {
        return Err(ProxyError::BadRequest(
            "method override headers and _method parameters are refused for services that allow only some methods".into(),
        ));
    }
    if wanted.any(|m| !is_standard_override(&m)) {
        return Err(ProxyError::MethodNotAllowed(
            "a method override to a method other than GET HEAD POST PUT PATCH DELETE OPTIONS"
                .into(),
        ));
    }
    Ok(())
}

/// Whether an override names a standard method; frameworks upper-case it first, so any case.
fn is_standard_override(method: &[u8]) -> bool {
    const STANDARD: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    STANDARD
        .iter()
        .any(|m| m.as_bytes().eq_ignore_ascii_case(method.trim_ascii()))
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

fn is_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn classify_send_error(err: &hyper_util::client::legacy::Error) -> ProxyError {
    if let Some(ce) = connect_error(err) {
        return match ce {
            ConnectError::Blocked(b) => ProxyError::Blocked(*b),
            ConnectError::Tls(detail) => ProxyError::UpstreamTls(detail.clone()),
            other => ProxyError::Unreachable(other.to_string()),
        };
    }
    if is_too_large(err) {
        return ProxyError::RequestTooLarge(0);
    }
    ProxyError::UpstreamProtocol
}

async fn process(
    state: &Arc<ProxyState>,
    session: &Session,
    target: &Target,
    mut req: Request<Drained<Incoming>>,
    draft: &mut Draft,
) -> Result<Response<ProxyBody>, ProxyError> {
    // The token is checked again on every request, so revocation reaches open connections.
    let snapshot = auth::recheck(state, session).await?;
    state.check_head_size(req.headers())?;
    check_host(target, &req)?;
    check_framing(req.headers())?;
    let method = req.method().clone();
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
    let decision = decide_request(&snapshot, &target.authority, &method, &path, target.https);
    let (service, sealed) = match decision {
        RequestDecision::Deny(reason) => return Err(deny(reason, &snapshot, target)),
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

    let opened = if sealed.is_empty() {
        None
    } else {
        Some(Opened::open(&state.keyring, &snapshot.vault_id, &sealed)?)
    };
    let plan = substitute::Plan::new(&snapshot.services, service, opened.as_ref())?;
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
    let new_path = plan.target(&path_and_query)?;
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
    if needles.is_some() {
        // Only codings the scrubber can decode, and no partial responses: a value read back in
        // byte ranges would never appear whole.
        if parts.headers.contains_key(header::ACCEPT_ENCODING) {
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("gzip, identity"),
            );
        }
        parts.headers.remove(header::RANGE);
        parts.headers.remove(header::IF_RANGE);
    }
    let uri = upstream_uri(target, &new_path)?;

    let max_in = state.limits.max_request_body_bytes;
    let declared_len = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > max_in) {
        return Err(ProxyError::RequestTooLarge(max_in));
    }
    let body_kind = substitute::body_kind(
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let encoded = parts.headers.contains_key(header::CONTENT_ENCODING);
    let upstream_body: ProxyBody =
        match (substitute::wants_body(service), body_kind, opened.as_ref()) {
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
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
                Full::new(Bytes::from(rewritten))
                    .map_err(|never| match never {})
                    .boxed()
            }
            _ => Observed::new(body, draft.bytes_in.clone(), max_in).boxed(),
        };
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

    let mut upstream_req = Request::from_parts(parts, upstream_body);
    *upstream_req.uri_mut() = uri;
    *upstream_req.version_mut() = Version::HTTP_11;
    let client = state.upstream.client(websocket);
    let timeout = state.upstream.response_header_timeout;
    let mut response = match tokio::time::timeout(timeout, client.request(upstream_req)).await {
        Err(_) => {
            return Err(ProxyError::UpstreamTimeout(
                humantime::format_duration(timeout).to_string(),
            ));
        }
        Ok(Err(e)) => {
            let err = classify_send_error(&e);
            // An h2 upstream may report the stream reset the cap caused rather than the cap.
            let over = draft.bytes_in.load(std::sync::atomic::Ordering::Relaxed) > max_in;
            return Err(match err {
                ProxyError::RequestTooLarge(_) => ProxyError::RequestTooLarge(max_in),
                _ if over => ProxyError::RequestTooLarge(max_in),
                other => other,
            });
        }
        Ok(Ok(r)) => r,
    };

    if websocket && response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        if let Some(agent_upgrade) = agent_upgrade {
            let st = state.clone();
            let session = session.clone();
            let row = draft.row(101, 0, None);
            state.tasks.spawn(async move {
                let splice = websocket::splice(
                    agent_upgrade,
                    upstream_upgrade,
                    st.limits.tunnel_idle_timeout,
                    ws_rewrite,
                );
                tokio::pin!(splice);
                // An upgraded connection has left hyper's connection (and its revocation
                // watch): it needs its own, like a tunnel.
                tokio::select! {
                    () = &mut splice => {}
                    () = connect::revoked(&st, &session) => {
                        tracing::debug!("closing websocket: token revoked or vault access removed");
                    }
                    () = st.shutdown.cancelled() => {
                        let _ = tokio::time::timeout(st.shutdown_grace, &mut splice).await;
                    }
                }
                st.logger.log(row);
                drop(slot);
            });
        }
        let (mut parts, _) = response.into_parts();
        // hyper keeps a non-standard reason phrase in an extension and writes it back out; it
        // is upstream text that no scrubber sees, so it never travels on.
        parts.extensions.clear();
        strip_hop_by_hop(&mut parts.headers, true);
        if let Some(needles) = &needles {
            needles.scrub_headers(&mut parts.headers);
        }
        return Ok(Response::from_parts(
            parts,
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        ));
    }

    let (mut parts, body) = response.into_parts();
    // hyper keeps a non-standard reason phrase in an extension and writes it back out; it is
    // upstream text that no scrubber sees, so it never travels on.
    parts.extensions.clear();
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
    let declared_out = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if max_out > 0 && declared_out.is_some_and(|n| n > max_out) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_never_travel() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic abc"),
        );
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }
}
