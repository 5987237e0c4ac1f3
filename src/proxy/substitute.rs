//! Placeholder substitution: the agent writes `__STRIPE_KEY__` where a value must go, and the
//! proxy replaces it, escaped for the place, only where the matched service declares it: as the
//! whole value (after a declared prefix) of one named header, query parameter, JSON Pointer,
//! form field, path segment or WebSocket JSON field. A known placeholder anywhere else (another
//! header, field or parameter, inside longer text, or in a request bound for another host) is
//! refused rather than forwarded: a value written where the upstream stores or echoes it could be
//! read back later through a tunnel, where nothing is scrubbed.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode, utf8_percent_encode};
use zeroize::Zeroizing;

use super::error::ProxyError;
use super::inject::Opened;
use super::jsonscan;
use crate::policy::Placeholders;
use crate::policy::decide::path_is_ambiguous;
use crate::policy::service::{CompiledService, PlaceKind};

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

/// One declared place with its value opened: what the whole value there must be, and what
/// replaces it.
struct Ready {
    kind: PlaceKind,
    /// `prefix + placeholder`.
    expected: Vec<u8>,
    /// `prefix + credential value`.
    value: Zeroizing<Vec<u8>>,
}

/// The substitutions of one request: the matched service's declared places, and every
/// placeholder the vault declares, which are refused wherever no place takes them.
pub(super) struct Plan {
    ready: Vec<Ready>,
    placeholders: Arc<Placeholders>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("places", &self.ready.len())
            .field("placeholders", &self.placeholders)
            .finish()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a form encoder (`application/x-www-form-urlencoded`) can write this byte: ALPHA,
/// DIGIT, `*-._~`, and the `%`, `+`, `=` and `&` of its encoding.
fn is_form_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"*-._~%+=&".contains(&b)
}

/// Form decoding (`+` is a space), as servers read query strings and form bodies.
fn form_decode(text: &str) -> Vec<u8> {
    let spaced = text.replace('+', " ");
    percent_decode(spaced.as_bytes()).collect()
}

impl Plan {
    /// Takes the vault's placeholders and opens the matched service's declared places.
    pub(super) fn new(
        placeholders: &Arc<Placeholders>,
        service: Option<&CompiledService>,
        opened: Option<&Opened>,
    ) -> Result<Self, ProxyError> {
        let mut ready = Vec::new();
        if let (Some(service), Some(opened)) = (service, opened) {
            for sub in service.substitutions.iter().filter(|s| !s.disabled) {
                let secret = opened.get(&sub.key)?;
                for place in &sub.places {
                    let mut expected = place.prefix.as_bytes().to_vec();
                    expected.extend_from_slice(sub.placeholder.as_bytes());
                    let mut value = Zeroizing::new(place.prefix.as_bytes().to_vec());
                    value.extend_from_slice(secret);
                    ready.push(Ready {
                        kind: place.kind.clone(),
                        expected,
                        value,
                    });
                }
            }
        }
        Ok(Self {
            ready,
            placeholders: placeholders.clone(),
        })
    }

    /// The part of the plan that applies to the agent's WebSocket frames.
    pub(super) fn for_websocket(&self) -> Self {
        Self {
            ready: self
                .ready
                .iter()
                .filter(|r| matches!(r.kind, PlaceKind::Websocket(_)))
                .map(|r| Ready {
                    kind: r.kind.clone(),
                    expected: r.expected.clone(),
                    value: r.value.clone(),
                })
                .collect(),
            placeholders: self.placeholders.clone(),
        }
    }

    /// Whether the vault declares any placeholder at all.
    pub(super) fn is_empty(&self) -> bool {
        self.placeholders.is_empty()
    }

    /// Whether WebSocket frames have places to substitute.
    pub(super) fn has_websocket_places(&self) -> bool {
        self.ready
            .iter()
            .any(|r| matches!(r.kind, PlaceKind::Websocket(_)))
    }

    /// The first known placeholder in `text`.
    pub(super) fn find(&self, text: &[u8]) -> Option<&str> {
        self.placeholders
            .iter()
            .find(|p| contains(text, p.as_bytes()))
    }

    fn refused(&self, placeholder: &str, place: &str) -> ProxyError {
        ProxyError::PlaceholderRefused(if self.placeholders.is_disabled(placeholder) {
            format!(
                "placeholder {placeholder} belongs to a substitution stored in the old form without exact places, which is disabled; an admin must set its service again naming each exact place"
            )
        } else {
            format!(
                "placeholder {placeholder} is not allowed in {place} of a request to this host; it is replaced only as the whole value of a place its service names under `in`, and only for that service's host"
            )
        })
    }

    /// `Ok(None)`: no placeholder in `value`. `Ok(Some(v))`: the whole value is a declared
    /// place's placeholder, and `v` replaces it. Anything else is refused.
    fn check(
        &self,
        value: &[u8],
        at: impl Fn(&PlaceKind) -> bool,
        place: impl FnOnce() -> String,
    ) -> Result<Option<&[u8]>, ProxyError> {
        let Some(placeholder) = self.find(value) else {
            return Ok(None);
        };
        match self
            .ready
            .iter()
            .find(|r| at(&r.kind) && r.expected == value)
        {
            Some(r) => Ok(Some(r.value.as_slice())),
            None => Err(self.refused(placeholder, &place())),
        }
    }

    /// Rewrites the path and query.
    pub(super) fn target(&self, path_and_query: &str) -> Result<String, ProxyError> {
        if self.placeholders.is_empty() {
            return Ok(path_and_query.to_owned());
        }
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let mut out = String::with_capacity(path_and_query.len());
        for (i, segment) in path.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            let decoded: Vec<u8> = percent_decode(segment.as_bytes()).collect();
            match self.check(
                &decoded,
                |k| *k == PlaceKind::PathSegment(i),
                || format!("path segment {i}"),
            )? {
                Some(value) => {
                    // Segment numbers count raw `/`; an upstream that decodes `%2F` or folds
                    // `//` counts differently, and the secret would sit in another segment.
                    if path_is_ambiguous(path) || path.contains("//") {
                        return Err(ProxyError::PlaceholderRefused(format!(
                            "a placeholder in path segment {i} of a path that servers may split into segments differently (encoded separators, dot segments or an empty segment) is refused"
                        )));
                    }
                    out.push_str(&encode_component(value)?);
                }
                None => out.push_str(segment),
            }
        }
        if let Some(query) = query {
            out.push('?');
            out.push_str(&self.pairs(query, false)?);
        }
        Ok(out)
    }

    /// Rewrites `name=value&...` (a query string, or a form body with `form`).
    fn pairs(&self, text: &str, form: bool) -> Result<String, ProxyError> {
        let what = if form {
            "form field"
        } else {
            "query parameter"
        };
        let mut out = String::with_capacity(text.len());
        for (i, piece) in text.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let (name, value) = match piece.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (piece, None),
            };
            let decoded_name = form_decode(name);
            if let Some(p) = self.find(&decoded_name) {
                return Err(self.refused(p, &format!("a {what} name")));
            }
            let Some(value) = value else {
                out.push_str(piece);
                continue;
            };
            let at = |k: &PlaceKind| match k {
                PlaceKind::Query(n) if !form => n.as_bytes() == decoded_name.as_slice(),
                PlaceKind::Form(n) if form => n.as_bytes() == decoded_name.as_slice(),
                _ => false,
            };
            match self.check(&form_decode(value), at, || {
                format!("an undeclared {what}, or with other text around it,")
            })? {
                Some(v) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(&encode_component(v)?);
                }
                None => out.push_str(piece),
            }
        }
        Ok(out)
    }

    /// Rewrites header values in place.
    pub(super) fn headers(&self, headers: &mut HeaderMap) -> Result<(), ProxyError> {
        // Most heads carry no placeholder: one pass finds that without collecting the names.
        if self.placeholders.is_empty()
            || !headers.values().any(|v| self.find(v.as_bytes()).is_some())
        {
            return Ok(());
        }
        let names: Vec<_> = headers.keys().cloned().collect();
        for name in names {
            let mut changed = false;
            let mut rewritten = Vec::new();
            for value in headers.get_all(&name) {
                let at = |k: &PlaceKind| matches!(k, PlaceKind::Header(h) if *h == name);
                match self.check(value.as_bytes(), at, || format!("header {name}"))? {
                    Some(v) => {
                        if v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
                            return Err(ProxyError::PlaceholderRefused("a credential value contains a line break or NUL and cannot go in a header".into()));
                        }
                        let mut hv = HeaderValue::from_bytes(v).map_err(|_| {
                            ProxyError::PlaceholderRefused(
                                "a credential value is not valid in an HTTP header".into(),
                            )
                        })?;
                        hv.set_sensitive(true);
                        rewritten.push(hv);
                        changed = true;
                    }
                    None => rewritten.push(value.clone()),
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

    /// Rewrites a buffered body.
    pub(super) fn body(&self, bytes: &[u8], kind: BodyKind) -> Result<Vec<u8>, ProxyError> {
        match kind {
            BodyKind::Json => Ok(self
                .json(
                    bytes,
                    |k, pointer| matches!(k, PlaceKind::Json(p) if p.as_slice() == pointer),
                    "JSON body",
                )?
                .unwrap_or_else(|| bytes.to_vec())),
            BodyKind::Form => {
                // Only what a form encoder writes is read as a form: a JSON (or any other)
                // document labelled as a form would have a "field" cut out of one of its
                // strings by `&`, and the secret would land wherever that string goes.
                if bytes.iter().all(|&b| is_form_byte(b)) {
                    let text =
                        std::str::from_utf8(bytes).map_err(|e| ProxyError::Internal(e.into()))?;
                    return Ok(self.pairs(text, true)?.into_bytes());
                }
                let decoded = form_decode(&String::from_utf8_lossy(bytes));
                match self.find(bytes).or_else(|| self.find(&decoded)) {
                    Some(p) => Err(self.refused(
                        p,
                        "a form body holding bytes a form encoder never writes (is it really a form?)",
                    )),
                    None => Ok(bytes.to_vec()),
                }
            }
        }
    }

    /// Rewrites the agent's WebSocket text frame; `Ok(None)` leaves it as it is.
    pub(super) fn frame(&self, payload: &[u8]) -> Result<Option<Vec<u8>>, ProxyError> {
        self.json(
            payload,
            |k, pointer| matches!(k, PlaceKind::Websocket(p) if p.as_slice() == pointer),
            "WebSocket frame",
        )
    }

    /// Replaces placeholders standing as whole JSON string values at declared pointers, in
    /// place; `Ok(None)` when there is nothing to replace.
    fn json(
        &self,
        doc: &[u8],
        at: impl Fn(&PlaceKind, &[String]) -> bool,
        what: &str,
    ) -> Result<Option<Vec<u8>>, ProxyError> {
        // Without an escape, every string decodes to its raw bytes: no placeholder in the raw
        // document means none in any string, and the parse (per WebSocket frame) is skipped.
        if self.placeholders.is_empty() || (!doc.contains(&b'\\') && self.find(doc).is_none()) {
            return Ok(None);
        }
        let found = match jsonscan::scan(doc, &|s| self.find(s.as_bytes()).is_some()) {
            Ok(found) => found,
            Err(jsonscan::Malformed) => {
                return match self.find(doc) {
                    Some(p) => Err(self.refused(p, &format!("a {what} that is not valid JSON"))),
                    None => Ok(None),
                };
            }
        };
        if found.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(doc.len());
        let mut copied = 0;
        for f in &found {
            if f.is_key {
                let p = self.find(f.value.as_bytes()).unwrap_or_default();
                return Err(self.refused(p, &format!("a key of a {what}")));
            }
            let value = self.check(
                f.value.as_bytes(),
                |k| at(k, &f.pointer),
                || format!("an undeclared field of a {what}, or with other text around it,"),
            )?;
            if let Some(value) = value {
                let text = std::str::from_utf8(value).map_err(|_| {
                    ProxyError::PlaceholderRefused(
                        "a credential value is not UTF-8 text and cannot go in JSON".into(),
                    )
                })?;
                let quoted =
                    serde_json::to_string(text).map_err(|e| ProxyError::Internal(e.into()))?;
                out.extend_from_slice(&doc[copied..f.span.start]);
                out.extend_from_slice(quoted.as_bytes());
                copied = f.span.end;
            }
        }
        out.extend_from_slice(&doc[copied..]);
        Ok(Some(out))
    }
}

/// Whether the request body must be buffered: the service declares a JSON or form place.
pub(super) fn wants_body(service: Option<&CompiledService>) -> bool {
    service.is_some_and(|s| s.substitutes_in_body)
}

/// Whether a form body has a `_method` field, as frameworks read it (form-decoded, any case).
pub(super) fn form_names_method(body: &[u8]) -> bool {
    url::form_urlencoded::parse(body).any(|(name, _)| name.eq_ignore_ascii_case("_method"))
}

/// The kinds of bodies substitution understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyKind {
    /// `application/json` and `+json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// Classifies a Content-Type for body substitution.
pub(super) fn body_kind(content_type: Option<&str>) -> Option<BodyKind> {
    let mime = content_type?.split(';').next()?.trim().to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Some(BodyKind::Json)
    } else if mime == "application/x-www-form-urlencoded" {
        Some(BodyKind::Form)
    } else {
        None
    }
}

/// The plan for the first service of `services` (a service file), with one credential `key`
/// holding `value`: the fixture of this module's tests and the WebSocket frame tests.
#[cfg(test)]
pub(super) fn test_plan(services: &str, key: &str, value: &[u8]) -> Plan {
    use std::sync::Arc;

    use crate::crypto::DataKey;
    use crate::domain::CredentialKey;
    use crate::keys::Keyring;
    use crate::policy::service::parse_service_file;

    let services: Vec<CompiledService> = parse_service_file(services)
        .unwrap()
        .into_iter()
        .map(|s| s.normalized().compile().unwrap())
        .collect();
    let ring = Keyring::from_dek(DataKey::from_bytes([1; 32]));
    let sealed = super::inject::sealed_for_test(&ring, "v", key, value);
    let key = CredentialKey::parse(key).unwrap();
    let opened = Opened::open(&ring, "v", &[(&key, &sealed)], 0).unwrap();
    let placeholders = Arc::new(Placeholders::of(&services));
    Plan::new(&placeholders, Some(&services[0]), Some(&opened)).unwrap()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::service::parse_service_file;

    fn placeholders(services: &[CompiledService]) -> Arc<Placeholders> {
        Arc::new(Placeholders::of(services))
    }

    const SERVICES: &str = r#"
- host: api.telegram.org
  auth: {type: passthrough}
  substitutions:
    - placeholder: __BOT_TOKEN__
      key: BOT
      in:
        - {path: 1, prefix: bot}
        - {path: 3}
        - {query: x}
        - {header: X-Token, prefix: "bot "}
        - {json: /token}
        - {json: /list/1}
        - {form: token}
- host: other.example.com
  auth: {type: passthrough}
  substitutions:
    - {placeholder: __OTHER_KEY__, key: BOT, in: [{query: k}]}
"#;

    fn setup(value: &str) -> Plan {
        test_plan(SERVICES, "BOT", value.as_bytes())
    }

    fn refused<T: std::fmt::Debug>(r: Result<T, ProxyError>) -> bool {
        matches!(r, Err(ProxyError::PlaceholderRefused(_)))
    }

    #[test]
    fn path_and_query_values_are_encoded() {
        let plan = setup("12:ab/c?d&e=f#g");
        let out = plan
            .target(
                "/bot__BOT_TOKEN__/send/__BOT_TOKEN__?x=__BOT_TOKEN__&y=1&x=%5F%5FBOT_TOKEN%5F%5F",
            )
            .unwrap();
        let v = "12%3Aab%2Fc%3Fd%26e%3Df%23g";
        assert_eq!(out, format!("/bot{v}/send/{v}?x={v}&y=1&x={v}"));
        assert_eq!(plan.target("/a/b?c=d&e").unwrap(), "/a/b?c=d&e");
    }

    #[test]
    fn placeholders_outside_declared_places_are_refused() {
        let plan = setup("v");
        for target in [
            "/x/__BOT_TOKEN__",
            "/bot__BOT_TOKEN__x/a",
            "/__BOT_TOKEN__/a",
            "/a/b/__BOT_TOKEN____BOT_TOKEN__",
            "/a/b/x%5F%5FBOT_TOKEN__",
            "/a?y=__BOT_TOKEN__",
            "/a?x=__BOT_TOKEN__x",
            "/a?x=__BOT_TOKEN__;y=1",
            "/a?__BOT_TOKEN__=1",
            "/a?__BOT_TOKEN__",
            "/a?x=__OTHER_KEY__",
        ] {
            assert!(refused(plan.target(target)), "{target}");
        }
        let no_service = Plan::new(&placeholders(&[]), None, None).unwrap();
        assert!(
            no_service.target("/x/__BOT_TOKEN__").is_ok(),
            "no placeholders in the vault"
        );
        for (name, value) in [
            ("x-other", "__BOT_TOKEN__"),
            ("x-token", "__BOT_TOKEN__"),
            ("x-token", "bot __BOT_TOKEN__ x"),
            ("x-token", "bot __OTHER_KEY__"),
            ("user-agent", "__BOT_TOKEN__"),
            ("cookie", "a=__BOT_TOKEN__"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            assert!(refused(plan.headers(&mut h)), "{name}: {value}");
        }
    }

    #[test]
    fn headers_refuse_line_breaks() {
        let mut h = HeaderMap::new();
        h.insert("x-token", HeaderValue::from_static("bot __BOT_TOKEN__"));
        assert!(refused(setup("a\r\nInjected: yes").headers(&mut h)));
        setup("plain").headers(&mut h).unwrap();
        assert_eq!(h["x-token"], "bot plain");
        assert!(h["x-token"].is_sensitive());
    }

    #[test]
    fn bodies_are_escaped_and_pinned() {
        let plan = setup("q\"uo\\te&x=1");
        let json = plan
            .body(
                br#"{ "token" : "__BOT_TOKEN__", "n": 12345678901234567890123, "list": ["a", "__BOT_TOKEN__"]}"#,
                BodyKind::Json,
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{ "token" : "q\"uo\\te&x=1", "n": 12345678901234567890123, "list": ["a", "q\"uo\\te&x=1"]}"#,
            "only the declared strings change, byte for byte"
        );
        for bad in [
            r#"{"note":"__BOT_TOKEN__"}"#,
            r#"{"token":"x __BOT_TOKEN__"}"#,
            r#"{"token":{"a":"__BOT_TOKEN__"}}"#,
            r#"{"list":["__BOT_TOKEN__"]}"#,
            r#"{"__BOT_TOKEN__":1}"#,
            r#"{"note":"\u005f_BOT_TOKEN__"}"#,
            r#"{"token":"__BOT_TOKEN__""#,
        ] {
            assert!(refused(plan.body(bad.as_bytes(), BodyKind::Json)), "{bad}");
        }
        let untouched = br#"{"a": "b"}"#;
        assert_eq!(plan.body(untouched, BodyKind::Json).unwrap(), untouched);
        let form = plan
            .body(b"token=__BOT_TOKEN__&a=b", BodyKind::Form)
            .unwrap();
        assert_eq!(form, b"token=q%22uo%5Cte%26x%3D1&a=b");
        for bad in [
            "a=__BOT_TOKEN__",
            "token=__BOT_TOKEN__+x",
            "__BOT_TOKEN__=1",
        ] {
            assert!(refused(plan.body(bad.as_bytes(), BodyKind::Form)), "{bad}");
        }
        assert_eq!(
            body_kind(Some("application/json; charset=utf-8")),
            Some(BodyKind::Json)
        );
        assert_eq!(body_kind(Some("multipart/form-data")), None);
    }

    #[test]
    fn exfil_form_place_cut_out_of_a_json_string_is_refused() {
        let plan = setup("s3cret");
        for bad in [
            r#"{"title":"hi","note":"x&token=__BOT_TOKEN__&y=","z":1}"#,
            "note=<b>&token=__BOT_TOKEN__",
            "token=__BOT_TOKEN__\n",
            "token=%5F%5FBOT_TOKEN__&x=\"",
        ] {
            assert!(refused(plan.body(bad.as_bytes(), BodyKind::Form)), "{bad}");
        }
        // No placeholder: forwarded as it is, whatever it holds.
        let other = br#"{"a":"b&c=d"}"#;
        assert_eq!(plan.body(other, BodyKind::Form).unwrap(), other);
        assert_eq!(
            plan.body(b"a=%7B*-._~&token=__BOT_TOKEN__", BodyKind::Form)
                .unwrap(),
            b"a=%7B*-._~&token=s3cret"
        );
    }

    #[test]
    fn exfil_path_segment_behind_an_encoded_slash_is_refused() {
        let plan = setup("s3cret");
        for bad in [
            "/a%2Fb/__BOT_TOKEN__",
            "/a/b/__BOT_TOKEN__//",
            "//b/__BOT_TOKEN__",
            "/a/%2e%2e/__BOT_TOKEN__",
            "/botx/a%5Cb/__BOT_TOKEN__",
        ] {
            assert!(refused(plan.target(bad)), "{bad}");
        }
        // Without a placeholder in a segment the path is not this check's business.
        assert_eq!(plan.target("/a%2Fb//c").unwrap(), "/a%2Fb//c");
        assert_eq!(plan.target("/a/b/__BOT_TOKEN__").unwrap(), "/a/b/s3cret");
    }

    #[test]
    fn websocket_frames_are_pinned_to_their_pointer() {
        let plan = test_plan(
            "- host: ws.example.com\n  auth: {type: passthrough}\n  substitutions:\n    - {placeholder: __WS_KEY__, key: BOT, in: [{websocket: /auth}]}\n",
            "BOT",
            b"s3cret",
        )
        .for_websocket();
        assert!(plan.has_websocket_places());
        assert_eq!(
            plan.frame(br#"{"auth":"__WS_KEY__"}"#).unwrap().unwrap(),
            br#"{"auth":"s3cret"}"#
        );
        assert_eq!(plan.frame(b"not json").unwrap(), None);
        assert!(refused(plan.frame(br#"{"msg":"__WS_KEY__"}"#)));
        assert!(refused(plan.frame(b"auth __WS_KEY__")));
    }

    proptest::proptest! {
        /// Whatever a target is made of, what goes out holds no placeholder, plain or
        /// percent-encoded: each one was replaced at a declared place or the request refused.
        #[test]
        fn no_placeholder_survives_a_target(
            parts in proptest::collection::vec(0usize..12, 1..16),
        ) {
            const PIECES: [&str; 12] = [
                "__BOT_TOKEN__", "bot", "/", "?", "&", "=", "x", "%5F", "_", "+", ";", "__OTHER_KEY__",
            ];
            let target: String = std::iter::once("/")
                .chain(parts.iter().map(|&i| PIECES[i]))
                .collect();
            let plan = setup("s3cret");
            if let Ok(out) = plan.target(&target) {
                let decoded: Vec<u8> = percent_decode(out.replace('+', " ").as_bytes()).collect();
                proptest::prop_assert!(plan.find(&decoded).is_none(), "{target} -> {out}");
            }
        }
    }

    /// JSON documents built from the declared pointers' names and placeholder-bearing strings.
    fn json_body() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        const STRINGS: [&str; 6] = [
            "__BOT_TOKEN__",
            "x__BOT_TOKEN__",
            "__OTHER_KEY__",
            "a",
            "",
            "__BOT_TOKEN____BOT_TOKEN__",
        ];
        const KEYS: [&str; 5] = ["token", "list", "note", "auth", "__BOT_TOKEN__"];
        let leaf = prop_oneof![
            (0..STRINGS.len()).prop_map(|i| serde_json::Value::from(STRINGS[i])),
            any::<i32>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    (0..KEYS.len()).prop_map(|i| KEYS[i].to_owned()),
                    inner,
                    0..3
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever JSON body is sent (plain, or with `_` written as `\u005f`), the answer is a
        /// refusal only when a placeholder is there, and otherwise still JSON, holding no
        /// placeholder in any string or key, and unchanged when there was nothing to replace.
        #[test]
        fn no_placeholder_survives_a_json_body(value in json_body(), escaped in proptest::bool::ANY) {
            let mut doc = serde_json::to_string(&value).unwrap();
            if escaped {
                doc = doc.replace('_', "\\u005f");
            }
            let had = value.to_string().contains("__BOT_TOKEN__")
                || value.to_string().contains("__OTHER_KEY__");
            let plan = setup("s3cret");
            match plan.body(doc.as_bytes(), BodyKind::Json) {
                Ok(out) => {
                    let parsed = serde_json::from_slice::<serde_json::Value>(&out);
                    proptest::prop_assert!(parsed.is_ok(), "{doc} -> {}", String::from_utf8_lossy(&out));
                    let text = parsed.unwrap().to_string();
                    proptest::prop_assert!(
                        !text.contains("__BOT_TOKEN__") && !text.contains("__OTHER_KEY__"),
                        "{doc} -> {text}"
                    );
                    if !had {
                        proptest::prop_assert_eq!(out, doc.into_bytes());
                    }
                }
                Err(e) => {
                    proptest::prop_assert!(refused::<()>(Err(e)), "{doc}");
                    proptest::prop_assert!(had, "refused without a placeholder: {doc}");
                }
            }
        }
    }

    #[test]
    fn disabled_substitutions_are_refused_everywhere_with_directions() {
        let spec = parse_service_file(
            "- host: api.example.com\n  auth: {type: passthrough}\n  substitutions:\n    - {placeholder: __OLD_KEY__, key: BOT, in: [header, body]}\n",
        )
        .unwrap()
        .remove(0)
        .normalized();
        let svc = spec.compile_stored().unwrap();
        let plan = Plan::new(&placeholders(std::slice::from_ref(&svc)), Some(&svc), None).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("__OLD_KEY__"));
        match plan.headers(&mut h) {
            Err(ProxyError::PlaceholderRefused(m)) => assert!(m.contains("old form"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(refused(plan.target("/__OLD_KEY__")));
    }
}
