//! The decisions: what to do with a CONNECT, and with each request inside it. Pure functions of
//! the snapshot and the request head.

use http::Method;
use unicode_normalization::UnicodeNormalization;

use super::host::{Authority, Host};
use super::service::{CompiledService, is_standard_method};
use super::snapshot::{SealedCredential, VaultSnapshot};
use crate::domain::{CredentialKey, UnmatchedHostPolicy};

/// Why the proxy refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// The vault's policy is `deny` and no service binds the host (or no rule fits the request).
    ForbiddenHost,
    /// A service references a credential the vault does not have.
    CredentialNotFound(CredentialKey),
    /// The matched service's stored definition failed its integrity check.
    Integrity,
    /// The path of a request to a path-scoped service could be read two ways (dot segments,
    /// encoded slashes or dots).
    AmbiguousPath,
    /// Credentials would travel over plain HTTP.
    Plaintext,
    /// A non-standard method (see [`is_standard_method`]) that no service of the host lists.
    NonStandardMethod(Method),
}

/// What to do with a CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectDecision {
    /// A service binds the host: terminate TLS and handle each request.
    Intercept,
    /// No service binds it and the policy is `tunnel`: splice bytes, attach nothing.
    Tunnel,
    /// Refuse.
    Deny(DenyReason),
}

/// Decides a CONNECT on its canonical authority.
pub fn decide_connect(snapshot: &VaultSnapshot, authority: &Authority) -> ConnectDecision {
    let bound = match &authority.host {
        Host::Domain(d) => snapshot.binds(d, authority.port),
        Host::Ip(_) => false,
    };
    match (bound, snapshot.policy) {
        (true, _) => ConnectDecision::Intercept,
        (false, UnmatchedHostPolicy::Tunnel) => ConnectDecision::Tunnel,
        (false, UnmatchedHostPolicy::Deny) => ConnectDecision::Deny(DenyReason::ForbiddenHost),
    }
}

/// What to do with one request.
#[derive(Debug)]
pub enum RequestDecision<'a> {
    /// Attach this service's credentials.
    Inject {
        /// The matched service.
        service: &'a CompiledService,
        /// Every credential it references, still sealed.
        credentials: Vec<(&'a CredentialKey, &'a SealedCredential)>,
    },
    /// Forward as is: no service fits and the policy allows it.
    Forward,
    /// Refuse.
    Deny(DenyReason),
}

/// Whether a raw path could be normalized differently by the upstream than it was matched here:
/// dot segments (also `..;`, which Tomcat and Spring read as `..`), encoded dots, slashes,
/// backslashes, percent signs or NULs, and escapes that decode to invalid UTF-8 (overlong forms
/// such as `%c0%ae`, which old servers read as `.`), IIS-style `%u` escapes (`%u002e`), and
/// Unicode look-alikes of `.`, `/` and `\` that servers normalizing to NFKC (or to ASCII) fold
/// into the real thing (`%EF%BC%8E`, U+FF0E FULLWIDTH FULL STOP).
pub fn path_is_ambiguous(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%u")
        || has_separator_lookalike(path)
        || lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%25")
        || lower.contains("%00")
        || path.contains('\\')
        // hyper refuses raw control bytes in a request target; this rule must hold without it.
        || path.bytes().any(|b| b.is_ascii_control())
        || path.split('/').any(|seg| {
            let name = seg.split(';').next().unwrap_or(seg);
            name == "." || name == ".."
        })
        || percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .is_err()
        || !path.starts_with('/')
}

/// Look-alikes of `.`, `/` and `\` that NFKC does not fold but some servers and frameworks map
/// to ASCII anyway (ideographic full stops, the division and fraction slashes).
const SEPARATOR_LOOKALIKES: &[char] = &[
    '\u{3002}', '\u{FF61}', '\u{2215}', '\u{2044}', '\u{29F5}', '\u{29F8}', '\u{29F9}', '\u{2216}',
];

/// Whether the raw or percent-decoded path has a non-ASCII character that reads as a dot, slash
/// or backslash once normalized: `．．` becomes `..` for an upstream that applies NFKC.
fn has_separator_lookalike(path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded.chars().any(|c| {
        !c.is_ascii()
            && (SEPARATOR_LOOKALIKES.contains(&c)
                || std::iter::once(c)
                    .nfkc()
                    .any(|n| matches!(n, '.' | '/' | '\\' | '%' | ';') || n.is_ascii_control()))
    })
}

/// Decides one request. `secure` is false for plain-HTTP absolute-form requests.
pub fn decide_request<'a>(
    snapshot: &'a VaultSnapshot,
    authority: &Authority,
    method: &Method,
    path: &str,
    secure: bool,
) -> RequestDecision<'a> {
    let Host::Domain(host) = &authority.host else {
        return unmatched(snapshot);
    };
    let mut candidates = snapshot.candidates(host, authority.port).peekable();
    if candidates.peek().is_none() {
        // Plain http to a name bound for https: say so instead of forwarding it bare.
        if !secure && authority.port == 80 && snapshot.binds(host, 443) {
            return RequestDecision::Deny(DenyReason::Plaintext);
        }
        return unmatched(snapshot);
    }
    let candidates: Vec<&CompiledService> = candidates.collect();
    if !is_standard_method(method) && !candidates.iter().any(|s| s.lists_method(method)) {
        return RequestDecision::Deny(DenyReason::NonStandardMethod(method.clone()));
    }
    let scoped = candidates.iter().any(|s| s.pattern.path.is_some());
    if scoped && path_is_ambiguous(path) {
        return RequestDecision::Deny(DenyReason::AmbiguousPath);
    }
    // Most specific wins: exact host before wildcard (candidate order), then an explicit port
    // before the implied 443 (both match only 443 here: a pattern without a port never matches
    // another port), then the longest literal path prefix; declaration order breaks ties.
    let best = candidates
        .iter()
        .enumerate()
        .filter(|(_, s)| s.pattern.matches_path(path) && s.allows_method(method))
        .min_by_key(|(i, s)| {
            (
                usize::from(s.pattern.wildcard),
                usize::from(s.pattern.port.is_none()),
                usize::MAX - s.pattern.path_specificity(),
                *i,
            )
        })
        .map(|(_, s)| *s);
    let Some(service) = best else {
        // The host is bound but no rule fits this path or method: no credentials.
        return unmatched(snapshot);
    };
    if service.integrity_failed {
        return RequestDecision::Deny(DenyReason::Integrity);
    }
    let keys = service.referenced_keys();
    if !secure && !keys.is_empty() {
        return RequestDecision::Deny(DenyReason::Plaintext);
    }
    let mut credentials = Vec::with_capacity(keys.len());
    for key in keys {
        match snapshot.credentials.get_key_value(&key) {
            Some((k, sealed)) => credentials.push((k, sealed)),
            None => return RequestDecision::Deny(DenyReason::CredentialNotFound(key)),
        }
    }
    RequestDecision::Inject {
        service,
        credentials,
    }
}

fn unmatched(snapshot: &VaultSnapshot) -> RequestDecision<'_> {
    match snapshot.policy {
        UnmatchedHostPolicy::Tunnel => RequestDecision::Forward,
        UnmatchedHostPolicy::Deny => RequestDecision::Deny(DenyReason::ForbiddenHost),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::domain::VaultName;
    use crate::policy::host::parse_authority;
    use crate::policy::service::{ServiceSpec, parse_service_file};

    fn snapshot(yaml: &str, keys: &[&str], policy: UnmatchedHostPolicy) -> VaultSnapshot {
        let services = parse_service_file(yaml)
            .unwrap()
            .into_iter()
            .map(|s: ServiceSpec| s.normalized().compile().unwrap())
            .collect();
        let credentials = keys
            .iter()
            .map(|k| {
                (
                    CredentialKey::parse(*k).unwrap(),
                    SealedCredential {
                        ty: crate::credtype::CredentialType::ApiKey,
                        state: crate::domain::CredentialState::Active,
                        expires_at: None,
                        version: 1,
                        key_version: 1,
                        wrapped_key: Arc::from(vec![0u8; 4]),
                        sealed: Arc::from(vec![0u8; 4]),
                        metadata: Arc::default(),
                    },
                )
            })
            .collect::<HashMap<_, _>>();
        VaultSnapshot::new(
            "vid".into(),
            VaultName::parse("vault").unwrap(),
            policy,
            services,
            credentials,
        )
    }

    fn auth(s: &str) -> Authority {
        parse_authority(s, None).unwrap()
    }

    const YAML: &str = r#"
- name: stripe
  host: api.stripe.com
  auth: {type: bearer, token: STRIPE_KEY}
- name: gh-wild
  host: "*.github.com"
  auth: {type: bearer, token: GH}
- name: gh-api
  host: api.github.com
  auth: {type: bearer, token: GH_API}
- name: slack-api
  host: slack.com/api/*
  methods: [POST]
  auth: {type: bearer, token: SLACK}
- name: slack-files
  host: slack.com/api/files.*
  methods: [POST]
  auth: {type: bearer, token: SLACK_FILES}
- name: special-port
  host: api.stripe.com:8443
  auth: {type: bearer, token: OTHER}
- name: off
  host: off.example.com
  enabled: false
  auth: {type: bearer, token: STRIPE_KEY}
"#;

    fn keys() -> Vec<&'static str> {
        vec![
            "STRIPE_KEY",
            "GH",
            "GH_API",
            "SLACK",
            "SLACK_FILES",
            "OTHER",
        ]
    }

    fn injected(d: RequestDecision<'_>) -> Option<String> {
        match d {
            RequestDecision::Inject { service, .. } => Some(service.name.clone()),
            _ => None,
        }
    }

    #[test]
    fn connect_decisions() {
        let tunnel = snapshot(YAML, &keys(), UnmatchedHostPolicy::Tunnel);
        let deny = snapshot(YAML, &keys(), UnmatchedHostPolicy::Deny);
        assert_eq!(
            decide_connect(&tunnel, &auth("api.stripe.com:443")),
            ConnectDecision::Intercept
        );
        assert_eq!(
            decide_connect(&tunnel, &auth("API.STRIPE.COM.:443")),
            ConnectDecision::Intercept
        );
        assert_eq!(
            decide_connect(&tunnel, &auth("example.org:443")),
            ConnectDecision::Tunnel
        );
        assert_eq!(
            decide_connect(&deny, &auth("example.org:443")),
            ConnectDecision::Deny(DenyReason::ForbiddenHost)
        );
        assert_eq!(
            decide_connect(&tunnel, &auth("off.example.com:443")),
            ConnectDecision::Tunnel,
            "disabled binds nothing"
        );
        assert_eq!(
            decide_connect(&deny, &auth("1.2.3.4:443")),
            ConnectDecision::Deny(DenyReason::ForbiddenHost)
        );
    }

    #[test]
    fn most_specific_service_wins() {
        let s = snapshot(YAML, &keys(), UnmatchedHostPolicy::Tunnel);
        let d = |a: &str, m: Method, p: &str| injected(decide_request(&s, &auth(a), &m, p, true));
        assert_eq!(
            d("api.github.com:443", Method::GET, "/"),
            Some("gh-api".into())
        );
        assert_eq!(
            d("raw.github.com:443", Method::GET, "/"),
            Some("gh-wild".into())
        );
        assert_eq!(
            d("api.stripe.com:8443", Method::GET, "/"),
            Some("special-port".into())
        );
        assert_eq!(
            d("api.stripe.com:443", Method::GET, "/"),
            Some("stripe".into())
        );
        assert_eq!(
            d("slack.com:443", Method::POST, "/api/files.upload"),
            Some("slack-files".into())
        );
        assert_eq!(
            d("slack.com:443", Method::POST, "/api/chat.postMessage"),
            Some("slack-api".into())
        );
    }

    #[test]
    fn bound_host_without_fitting_rule_gets_nothing() {
        let s = snapshot(YAML, &keys(), UnmatchedHostPolicy::Tunnel);
        assert!(matches!(
            decide_request(&s, &auth("slack.com:443"), &Method::GET, "/api/x", true),
            RequestDecision::Forward
        ));
        assert!(matches!(
            decide_request(&s, &auth("slack.com:443"), &Method::POST, "/other", true),
            RequestDecision::Forward
        ));
        let d = snapshot(YAML, &keys(), UnmatchedHostPolicy::Deny);
        assert!(matches!(
            decide_request(&d, &auth("slack.com:443"), &Method::POST, "/other", true),
            RequestDecision::Deny(DenyReason::ForbiddenHost)
        ));
    }

    #[test]
    fn path_tricks_are_refused_for_scoped_services() {
        let s = snapshot(YAML, &keys(), UnmatchedHostPolicy::Tunnel);
        for p in [
            "/api/../admin",
            "/api/%2e%2e/admin",
            "/api%2fx",
            "/api/%252e%252e/x",
            "/api/./x",
            "/api\\..\\x",
            "api/x",
            "/api/..;/admin",
            "/api/.;x/admin",
            "/api/%c0%ae%c0%ae/admin",
            "/api/x%00.json",
        ] {
            assert!(
                matches!(
                    decide_request(&s, &auth("slack.com:443"), &Method::POST, p, true),
                    RequestDecision::Deny(DenyReason::AmbiguousPath)
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn missing_credential_and_plaintext_are_refused() {
        let s = snapshot(YAML, &["GH"], UnmatchedHostPolicy::Tunnel);
        match decide_request(&s, &auth("api.stripe.com:443"), &Method::GET, "/", true) {
            RequestDecision::Deny(DenyReason::CredentialNotFound(k)) => {
                assert_eq!(k.as_str(), "STRIPE_KEY")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide_request(&s, &auth("raw.github.com:80"), &Method::GET, "/", false),
            RequestDecision::Deny(DenyReason::Plaintext)
        ));
    }

    #[test]
    fn unicode_dot_lookalikes_and_percent_u_make_a_path_ambiguous() {
        for p in [
            "/api/\u{FF0E}\u{FF0E}/admin",
            "/api/%EF%BC%8E%EF%BC%8E/admin",
            "/api/%ef%bc%8e./admin",
            "/api/%E2%80%A4%E2%80%A4/admin",
            "/api/%E2%80%A5/admin",
            "/api/%E2%80%A6/admin",
            "/api/%EF%B9%92%EF%B9%92/admin",
            "/api/%E3%80%82%E3%80%82/admin",
            "/api/%EF%BD%A1/admin",
            "/api%EF%BC%8Fadmin",
            "/api%EF%BC%BCadmin",
            "/api%EF%B9%A8admin",
            "/api%E2%88%95admin",
            "/api/%u002e%u002e/admin",
            "/api/%U002E%u002E/admin",
            "/api%u2215admin",
            "/api/%u",
        ] {
            assert!(path_is_ambiguous(p), "{p}");
        }
        for p in [
            "/api/caf%C3%A9",
            "/api/\u{00E9}t\u{00E9}",
            "/api/%E6%97%A5%E6%9C%AC",
            "/api/%55",
        ] {
            assert!(!path_is_ambiguous(p), "{p}");
        }
        let s = snapshot(YAML, &keys(), UnmatchedHostPolicy::Tunnel);
        assert!(matches!(
            decide_request(
                &s,
                &auth("slack.com:443"),
                &Method::POST,
                "/api/%EF%BC%8E%EF%BC%8E/admin",
                true
            ),
            RequestDecision::Deny(DenyReason::AmbiguousPath)
        ));
    }

    #[test]
    fn nonstandard_methods_need_a_service_that_lists_them() {
        let yaml = format!(
            "{YAML}- name: dav\n  host: dav.example.com\n  methods: [PROPFIND]\n  auth: {{type: bearer, token: GH}}\n"
        );
        for policy in [UnmatchedHostPolicy::Tunnel, UnmatchedHostPolicy::Deny] {
            let s = snapshot(&yaml, &keys(), policy);
            for m in ["TRACK", "DEBUG", "trace", "get", "PROPFIND"] {
                let method = Method::from_bytes(m.as_bytes()).unwrap();
                assert!(
                    matches!(
                        decide_request(&s, &auth("api.stripe.com:443"), &method, "/", true),
                        RequestDecision::Deny(DenyReason::NonStandardMethod(_))
                    ),
                    "{m}"
                );
            }
            let propfind = Method::from_bytes(b"PROPFIND").unwrap();
            assert_eq!(
                injected(decide_request(
                    &s,
                    &auth("dav.example.com:443"),
                    &propfind,
                    "/",
                    true
                )),
                Some("dav".into())
            );
            let track = Method::from_bytes(b"TRACK").unwrap();
            assert!(matches!(
                decide_request(&s, &auth("dav.example.com:443"), &track, "/", true),
                RequestDecision::Deny(DenyReason::NonStandardMethod(_))
            ));
            assert_eq!(
                injected(decide_request(
                    &s,
                    &auth("api.stripe.com:443"),
                    &Method::PATCH,
                    "/",
                    true
                )),
                Some("stripe".into())
            );
        }
    }

    #[test]
    fn raw_control_bytes_make_a_path_ambiguous() {
        // Found by `cargo fuzz run path`: a raw NUL passed the check that only knew `%00`.
        assert!(path_is_ambiguous("/%\u{4}\u{0}"));
        assert!(path_is_ambiguous("/v1/\u{0}/charges"));
        assert!(path_is_ambiguous("/v1/\tcharges"));
        assert!(!path_is_ambiguous("/v1/charges"));
    }

    proptest::proptest! {
        /// A path accepted for a path-scoped service means the same to an upstream that
        /// percent-decodes once and removes dot segments: decoding adds no separator, dot
        /// segment, backslash or NUL.
        #[test]
        fn unambiguous_paths_survive_decoding(
            segs in proptest::collection::vec("(\\.|\\.\\.|%2e|%2E|%2f|%25|%5c|%00|%c0%ae|;|[a-z0-9_~-]{1,4}|%[0-9a-fA-F]{2}){0,3}", 0..6)
        ) {
            let path = format!("/{}", segs.join("/"));
            if !path_is_ambiguous(&path) {
                let decoded: Vec<u8> = percent_encoding::percent_decode_str(&path).collect();
                proptest::prop_assert_eq!(
                    decoded.iter().filter(|&&b| b == b'/').count(),
                    path.bytes().filter(|&b| b == b'/').count()
                );
                for seg in decoded.split(|&b| b == b'/') {
                    let name = seg.split(|&b| b == b';').next().unwrap_or(seg);
                    proptest::prop_assert!(name != b"." && name != b"..", "{}", path);
                }
                proptest::prop_assert!(!decoded.contains(&b'\\') && !decoded.contains(&0));
            }
        }
    }
}
