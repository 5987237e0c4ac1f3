//! Header hygiene: what never travels past the proxy (hop-by-hop headers), and request heads
//! refused for what they could make an upstream do (ambiguous framing, method overrides).

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Version};

use super::error::ProxyError;
use crate::policy::service::CompiledService;

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

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
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

/// Refuses request heads whose length two parsers could read differently: a body framed by both
/// `Content-Length` and `Transfer-Encoding`, or by several `Content-Length` values. Forwarding
/// either is how a request gets smuggled past the proxy into the upstream connection.
pub(super) fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
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
pub(super) fn check_method_override(
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

/// The body length a head declares, if it declares one that parses.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Whether the request asks for a WebSocket upgrade.
pub(super) fn is_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_never_travel() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", http::HeaderValue::from_static("1"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            http::HeaderValue::from_static("Basic abc"),
        );
        h.insert(
            "proxy-connection",
            http::HeaderValue::from_static("keep-alive"),
        );
        h.insert(header::TE, http::HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, http::HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }
}
