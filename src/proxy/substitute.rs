//! Placeholder substitution: the agent writes `__STRIPE_KEY__` where a value must go, and the
//! proxy replaces it, escaped for the location, only where the matched service declares it.
//! A known placeholder anywhere else (another location, or a request bound for another host) is
//! refused rather than forwarded.

use std::collections::BTreeSet;

use http::{HeaderMap, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::error::ProxyError;
use super::inject::Opened;
use crate::policy::service::{CompiledService, Location};

/// Everything but RFC 3986 unreserved characters is encoded, in paths and in queries alike, so a
/// value can never add a path segment, a query parameter or a fragment.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode_component(value: &[u8]) -> Result<String, ProxyError> {
    let text = std::str::from_utf8(value).map_err(|_| {
        ProxyError::PlaceholderRefused(
            "a credential value is not UTF-8 text and cannot go in a URL".into(),
        )
    })?;
    Ok(utf8_percent_encode(text, COMPONENT).to_string())
}

fn refused(placeholder: &str, place: &str) -> ProxyError {
    ProxyError::PlaceholderRefused(format!(
        "placeholder {placeholder} is not allowed in the {place} of a request to this host; only the service that declares it may use it, where it declares it"
    ))
}

fn rules(
    service: Option<&CompiledService>,
    location: Location,
) -> impl Iterator<Item = (&str, &crate::domain::CredentialKey)> {
    service
        .into_iter()
        .flat_map(|s| s.substitutions.iter())
        .filter(move |r| r.locations.contains(&location))
        .map(|r| (r.placeholder.as_str(), &r.key))
}

/// Whether a body substitution is declared for this service.
pub fn wants_body(service: Option<&CompiledService>) -> bool {
    rules(service, Location::Body).next().is_some()
}

/// Rewrites the path and query. `placeholders` are all placeholders declared in the vault.
pub fn target(
    path_and_query: &str,
    service: Option<&CompiledService>,
    opened: Option<&Opened>,
    placeholders: &BTreeSet<String>,
) -> Result<String, ProxyError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (path_and_query.to_owned(), None),
    };
    let mut path = path;
    let mut query = query;
    if let Some(opened) = opened {
        for (placeholder, key) in rules(service, Location::Path) {
            if path.contains(placeholder) {
                path = path.replace(placeholder, &encode_component(opened.get(key)?)?);
            }
        }
        if let Some(q) = query.as_mut() {
            for (placeholder, key) in rules(service, Location::Query) {
                if q.contains(placeholder) {
                    *q = q.replace(placeholder, &encode_component(opened.get(key)?)?);
                }
            }
        }
    }
    for p in placeholders {
        if path.contains(p.as_str()) {
            return Err(refused(p, "path"));
        }
        if query.as_deref().is_some_and(|q| q.contains(p.as_str())) {
            return Err(refused(p, "query"));
        }
    }
    Ok(match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    })
}

/// Rewrites header values in place.
pub fn headers(
    headers: &mut HeaderMap,
    service: Option<&CompiledService>,
    opened: Option<&Opened>,
    placeholders: &BTreeSet<String>,
) -> Result<(), ProxyError> {
    if placeholders.is_empty() {
        return Ok(());
    }
    let names: Vec<_> = headers.keys().cloned().collect();
    for name in names {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        let mut changed = false;
        let mut rewritten = Vec::with_capacity(values.len());
        for value in values {
            let mut bytes = value.as_bytes().to_vec();
            let mut touched = false;
            if let Some(opened) = opened {
                for (placeholder, key) in rules(service, Location::Header) {
                    if contains(&bytes, placeholder.as_bytes()) {
                        let v = opened.get(key)?;
                        if v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
                            return Err(ProxyError::PlaceholderRefused("a credential value contains a line break or NUL and cannot go in a header".into()));
                        }
                        bytes = replace(&bytes, placeholder.as_bytes(), v);
                        touched = true;
                    }
                }
            }
            if let Some(p) = placeholders.iter().find(|p| contains(&bytes, p.as_bytes())) {
                return Err(refused(p, "headers"));
            }
            if touched {
                let mut hv = HeaderValue::from_bytes(&bytes).map_err(|_| {
                    ProxyError::PlaceholderRefused(
                        "a credential value is not valid in an HTTP header".into(),
                    )
                })?;
                hv.set_sensitive(true);
                rewritten.push(hv);
                changed = true;
            } else {
                rewritten.push(value);
            }
        }
        if changed {
            headers.remove(&name);
            for v in rewritten {
                headers.append(name.clone(), v);
            }
        }
    }
    Ok(())
}

/// The kinds of bodies substitution understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json` and `+json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// Classifies a Content-Type for body substitution.
pub fn body_kind(content_type: Option<&str>) -> Option<BodyKind> {
    let mime = content_type?.split(';').next()?.trim().to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Some(BodyKind::Json)
    } else if mime == "application/x-www-form-urlencoded" {
        Some(BodyKind::Form)
    } else {
        None
    }
}

/// Rewrites a buffered body.
pub fn body(
    bytes: &[u8],
    kind: BodyKind,
    service: Option<&CompiledService>,
    opened: &Opened,
) -> Result<Vec<u8>, ProxyError> {
    let mut out = bytes.to_vec();
    for (placeholder, key) in rules(service, Location::Body) {
        if !contains(&out, placeholder.as_bytes()) {
            continue;
        }
        let value = opened.get(key)?;
        let encoded = match kind {
            BodyKind::Json => {
                let text = std::str::from_utf8(value).map_err(|_| {
                    ProxyError::PlaceholderRefused(
                        "a credential value is not UTF-8 text and cannot go in JSON".into(),
                    )
                })?;
                let quoted =
                    serde_json::to_string(text).map_err(|e| ProxyError::Internal(e.to_string()))?;
                quoted.as_bytes()[1..quoted.len() - 1].to_vec()
            }
            BodyKind::Form => encode_component(value)?.into_bytes(),
        };
        out = replace(&out, placeholder.as_bytes(), &encoded);
    }
    Ok(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len() + with.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::crypto::DataKey;
    use crate::domain::CredentialKey;
    use crate::keys::Keyring;
    use crate::policy::SealedCredential;
    use crate::policy::service::parse_service_file;

    fn setup(value: &str) -> (CompiledService, Opened, BTreeSet<String>) {
        let yaml = "- host: api.telegram.org\n  auth: {type: passthrough}\n  substitutions:\n    - {placeholder: __BOT_TOKEN__, key: BOT, in: [path, query, header, body]}\n";
        let svc = parse_service_file(yaml)
            .unwrap()
            .remove(0)
            .normalized()
            .compile()
            .unwrap();
        let ring = Keyring::from_dek(DataKey::from_bytes([1; 32]));
        let key = CredentialKey::parse("BOT").unwrap();
        let sealed = SealedCredential {
            version: 1,
            sealed: Arc::from(
                ring.seal_credential("v", "BOT", 1, value.as_bytes())
                    .unwrap(),
            ),
        };
        let opened = Opened::open(&ring, "v", &[(&key, &sealed)]).unwrap();
        let all = ["__BOT_TOKEN__".to_owned(), "__OTHER_KEY__".to_owned()]
            .into_iter()
            .collect();
        (svc, opened, all)
    }

    #[test]
    fn path_and_query_values_are_encoded() {
        let (svc, opened, all) = setup("12:ab/c?d&e=f#g");
        let out = target(
            "/bot__BOT_TOKEN__/send?x=__BOT_TOKEN__",
            Some(&svc),
            Some(&opened),
            &all,
        )
        .unwrap();
        assert_eq!(
            out,
            "/bot12%3Aab%2Fc%3Fd%26e%3Df%23g/send?x=12%3Aab%2Fc%3Fd%26e%3Df%23g"
        );
    }

    #[test]
    fn foreign_or_undeclared_placeholders_are_refused() {
        let (svc, opened, all) = setup("v");
        assert!(target("/x/__OTHER_KEY__", Some(&svc), Some(&opened), &all).is_err());
        assert!(
            target("/x/__BOT_TOKEN__", None, None, &all).is_err(),
            "no service: refused"
        );
        let mut h = HeaderMap::new();
        h.insert("x-other", HeaderValue::from_static("__OTHER_KEY__"));
        assert!(headers(&mut h, Some(&svc), Some(&opened), &all).is_err());
    }

    #[test]
    fn headers_refuse_line_breaks() {
        let (svc, opened, all) = setup("a\r\nInjected: yes");
        let mut h = HeaderMap::new();
        h.insert("x-token", HeaderValue::from_static("bot __BOT_TOKEN__"));
        assert!(headers(&mut h, Some(&svc), Some(&opened), &all).is_err());
        let (svc, opened, all) = setup("plain");
        headers(&mut h, Some(&svc), Some(&opened), &all).unwrap();
        assert_eq!(h["x-token"], "bot plain");
    }

    #[test]
    fn bodies_are_escaped_for_their_type() {
        let (svc, opened, _) = setup("q\"uo\\te&x=1");
        let json = body(
            br#"{"token":"__BOT_TOKEN__"}"#,
            BodyKind::Json,
            Some(&svc),
            &opened,
        )
        .unwrap();
        assert_eq!(json, br#"{"token":"q\"uo\\te&x=1"}"#);
        let form = body(
            b"token=__BOT_TOKEN__&a=b",
            BodyKind::Form,
            Some(&svc),
            &opened,
        )
        .unwrap();
        assert_eq!(form, b"token=q%22uo%5Cte%26x%3D1&a=b");
        assert_eq!(
            body_kind(Some("application/json; charset=utf-8")),
            Some(BodyKind::Json)
        );
        assert_eq!(body_kind(Some("multipart/form-data")), None);
    }
}
