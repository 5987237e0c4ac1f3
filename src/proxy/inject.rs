//! Attaching credentials: open the sealed values a decision named (only for this request) and
//! build the headers the service declares. An injected header always replaces whatever the agent
//! sent in that slot. A service's client certificate is opened here too, and handed to the
//! upstream client (`upstream::Identities`) rather than put in a header.

use std::borrow::Cow;
use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use zeroize::Zeroizing;

use super::error::ProxyError;
use crate::credtype::{CredentialType, injectable};
use crate::domain::CredentialKey;
use crate::keys::{Keyring, WrappedDataKey};
use crate::policy::service::{CompiledService, Injection, TemplatePart};
use crate::policy::{SealedCredential, Unusable};

/// The opened values of one request, dropped (and zeroized) when the request is built.
pub(super) struct Opened {
    /// For each key, the bytes an injection carries (see [`crate::credtype::injectable`]).
    values: HashMap<CredentialKey, SecretSlice<u8>>,
    /// The `username` metadata entry of opened credentials that carry one: the user name of
    /// basic auth for a service that names only the password credential.
    usernames: HashMap<CredentialKey, SecretString>,
    /// The stored payload of `certificate` credentials: a TLS client identity, kept apart from
    /// `values` so it can never be injected into a request.
    identities: HashMap<CredentialKey, SecretSlice<u8>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Opened {
    /// Opens every named credential for a request made at `now_ms`: a revoked or expired one
    /// refuses the request, and any failure to open fails it closed. Each value costs two
    /// AES-GCM opens (its data key, then the value) and no database access.
    pub(super) fn open(
        keyring: &Keyring,
        vault_id: &str,
        creds: &[(&CredentialKey, &SealedCredential)],
        now_ms: i64,
    ) -> Result<Self, ProxyError> {
        for (key, sealed) in creds {
            match sealed.usable(now_ms) {
                Ok(()) => {}
                Err(Unusable::Revoked) => {
                    return Err(ProxyError::CredentialRevoked(key.to_string()));
                }
                Err(Unusable::Expired) => {
                    return Err(ProxyError::CredentialExpired(key.to_string()));
                }
            }
        }
        let mut map = HashMap::with_capacity(creds.len());
        let mut usernames = HashMap::new();
        let mut identities = HashMap::new();
        for (key, sealed) in creds {
            let wrapped = WrappedDataKey {
                key_version: sealed.key_version,
                bytes: sealed.wrapped_key.to_vec(),
            };
            let payload = keyring
                .open_version(vault_id, key.as_str(), sealed.version, &wrapped, &sealed.sealed)
                .map_err(|e| {
                    tracing::error!(vault_id, key = %key, error = %e, "INTEGRITY ALARM: credential failed to open; request refused");
                    ProxyError::Integrity
                })?;
            if let Some(username) = sealed.metadata.get("username") {
                usernames.insert((*key).clone(), SecretString::from(username.clone()));
            }
            if sealed.ty == CredentialType::Certificate {
                identities.insert((*key).clone(), payload);
                continue;
            }
            // Types whose value is not a string a request can carry (an SSH key) have no
            // injectable bytes: a service naming them finds nothing to inject.
            if let Some(text) = injectable(sealed.ty, payload.expose_secret()) {
                let text = match text {
                    Cow::Borrowed(_) => payload,
                    Cow::Owned(owned) => SecretSlice::from(owned),
                };
                map.insert((*key).clone(), text);
            }
        }
        Ok(Self {
            values: map,
            usernames,
            identities,
        })
    }

    /// The stored payload of a `certificate` credential, for the TLS client identity.
    pub(super) fn identity(&self, key: &CredentialKey) -> Result<&[u8], ProxyError> {
        self.identities
            .get(key)
            .map(|v| v.expose_secret())
            .ok_or_else(|| ProxyError::CredentialUnusable {
                key: key.to_string(),
                why: "a client certificate must be a credential of type certificate",
            })
    }

    /// Records the `username` metadata entry of an opened credential, as `open` does.
    #[cfg(test)]
    pub(super) fn set_username(&mut self, key: CredentialKey, username: SecretString) {
        self.usernames.insert(key, username);
    }

    /// A value's bytes.
    pub(super) fn get(&self, key: &CredentialKey) -> Result<&[u8], ProxyError> {
        self.values
            .get(key)
            .map(|v| v.expose_secret())
            .ok_or_else(|| ProxyError::CredentialNotFound(key.to_string()))
    }

    /// The user name of basic auth: the `username` credential's value when the service names
    /// one, else the password credential's `username` metadata.
    fn basic_user(
        &self,
        username: Option<&CredentialKey>,
        password: Option<&CredentialKey>,
    ) -> Result<&[u8], ProxyError> {
        match (username, password) {
            (Some(u), _) => self.get(u),
            (None, Some(p)) => {
                self.get(p)?;
                self.usernames
                    .get(p)
                    .map(|u| u.expose_secret().as_bytes())
                    .ok_or_else(|| ProxyError::CredentialUnusable {
                        key: p.to_string(),
                        why: "basic auth without a username key needs the password credential's `username` metadata, and it has none",
                    })
            }
            // Refused when the service is compiled.
            (None, None) => Ok(b""),
        }
    }
}

/// Every secret byte string a response could reflect for this request: each opened value, and
/// the `user:password` pair of basic auth (reflected base64-encoded inside `Authorization`).
pub(super) fn reflectable(
    service: Option<&CompiledService>,
    opened: &Opened,
) -> Vec<Zeroizing<Vec<u8>>> {
    // A client certificate goes to the TLS layer, never into the request, so the upstream
    // cannot reflect it (and its private key is no needle worth searching for).
    let identity = service.and_then(|s| s.client_identity.as_ref());
    let mut out: Vec<Zeroizing<Vec<u8>>> = opened
        .values
        .iter()
        .filter(|(k, _)| Some(*k) != identity)
        .map(|(_, v)| Zeroizing::new(v.expose_secret().to_vec()))
        .collect();
    for injection in service.into_iter().flat_map(|s| s.injections.iter()) {
        if let Injection::Basic { username, password } = injection {
            let mut pair = Zeroizing::new(Vec::with_capacity(64));
            if let Ok(u) = opened.basic_user(username.as_ref(), password.as_ref()) {
                pair.extend_from_slice(u);
            }
            pair.push(b':');
            if let Some(p) = password
                && let Ok(p) = opened.get(p)
            {
                pair.extend_from_slice(p);
            }
            out.push(pair);
        }
    }
    out
}

fn header_value(bytes: &[u8]) -> Result<HeaderValue, ProxyError> {
    if bytes.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(ProxyError::PlaceholderRefused(
            "a credential value contains a line break or NUL and cannot be put in a header".into(),
        ));
    }
    let mut value = HeaderValue::from_bytes(bytes).map_err(|_| {
        ProxyError::PlaceholderRefused("a credential value is not valid in an HTTP header".into())
    })?;
    // Keeps HPACK from indexing it and hyper from logging it.
    value.set_sensitive(true);
    Ok(value)
}

/// Sets the service's headers on `headers`, replacing any the agent sent.
pub(super) fn apply(
    service: &CompiledService,
    opened: &Opened,
    headers: &mut HeaderMap,
) -> Result<(), ProxyError> {
    for injection in &service.injections {
        let mut buf = Zeroizing::new(Vec::with_capacity(128));
        match injection {
            Injection::Template { parts, .. } => {
                for part in parts {
                    match part {
                        TemplatePart::Text(t) => buf.extend_from_slice(t.as_bytes()),
                        TemplatePart::Key(k) => buf.extend_from_slice(opened.get(k)?),
                    }
                }
            }
            Injection::Basic { username, password } => {
                let mut pair = Zeroizing::new(Vec::with_capacity(128));
                pair.extend_from_slice(opened.basic_user(username.as_ref(), password.as_ref())?);
                pair.push(b':');
                if let Some(p) = password {
                    pair.extend_from_slice(opened.get(p)?);
                }
                buf.extend_from_slice(b"Basic ");
                buf.extend_from_slice(STANDARD.encode(pair.as_slice()).as_bytes());
            }
        }
        let name = injection.header();
        headers.remove(&name);
        headers.insert(name, header_value(&buf)?);
    }
    Ok(())
}

/// A credential as a snapshot holds it: `value` sealed under a data key of its own (tests).
#[cfg(test)]
pub(super) fn sealed_for_test(
    ring: &Keyring,
    vault_id: &str,
    key: &str,
    value: &[u8],
) -> SealedCredential {
    use std::sync::Arc;
    let (wrapped, sealed) = ring.seal_version(vault_id, key, 1, value).unwrap();
    SealedCredential {
        ty: crate::credtype::CredentialType::ApiKey,
        state: crate::domain::CredentialState::Active,
        expires_at: None,
        version: 1,
        key_version: wrapped.key_version,
        wrapped_key: Arc::from(wrapped.bytes),
        sealed: Arc::from(sealed),
        metadata: Arc::default(),
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::crypto::DataKey;
    use crate::policy::service::{ServiceSpec, parse_service_file};

    fn setup(yaml: &str, values: &[(&str, &str)]) -> (CompiledService, Opened) {
        let svc = parse_service_file(yaml).unwrap().remove(0).normalized();
        let svc: ServiceSpec = svc;
        let compiled = svc.compile().unwrap();
        let ring = Keyring::from_dek(DataKey::from_bytes([9; 32]));
        let sealed: Vec<(CredentialKey, SealedCredential)> = values
            .iter()
            .map(|(k, v)| {
                (
                    CredentialKey::parse(*k).unwrap(),
                    sealed_for_test(&ring, "vid", k, v.as_bytes()),
                )
            })
            .collect();
        let refs: Vec<_> = sealed.iter().map(|(k, s)| (k, s)).collect();
        (compiled, Opened::open(&ring, "vid", &refs, 0).unwrap())
    }

    #[test]
    fn each_auth_type_builds_its_header() {
        let cases = [
            (
                "- host: a.example.com\n  auth: {type: bearer, token: T}\n",
                vec![("T", "tok")],
                "authorization",
                "Bearer tok",
            ),
            (
                "- host: a.example.com\n  auth: {type: basic, username: U, password: P}\n",
                vec![("U", "user"), ("P", "pw")],
                "authorization",
                "Basic dXNlcjpwdw==",
            ),
            (
                "- host: a.example.com\n  auth: {type: basic, username: U}\n",
                vec![("U", "user")],
                "authorization",
                "Basic dXNlcjo=",
            ),
            (
                "- host: a.example.com\n  auth: {type: api-key, key: K, header: X-Api-Key, prefix: 'Token '}\n",
                vec![("K", "k1")],
                "x-api-key",
                "Token k1",
            ),
            (
                "- host: a.example.com\n  auth: {type: custom, headers: {X-Auth: 'id={{ A }};sig={{B}}'}}\n",
                vec![("A", "1"), ("B", "2")],
                "x-auth",
                "id=1;sig=2",
            ),
        ];
        for (yaml, values, header, want) in cases {
            let (svc, opened) = setup(yaml, &values);
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_static("Bearer agent-supplied"),
            );
            headers.insert("x-api-key", HeaderValue::from_static("agent-supplied"));
            apply(&svc, &opened, &mut headers).unwrap();
            assert_eq!(headers.get_all(header).iter().count(), 1, "{yaml}");
            assert_eq!(headers[header], want, "{yaml}");
            assert!(headers[header].is_sensitive());
        }
    }

    #[test]
    fn basic_auth_takes_the_user_from_the_password_credentials_metadata() {
        let yaml = "- host: a.example.com\n  auth: {type: basic, password: DB_PASSWORD}\n";
        let (svc, mut opened) = setup(yaml, &[("DB_PASSWORD", "pw")]);
        // Without the metadata entry nothing is attached and the request is refused.
        let err = apply(&svc, &opened, &mut HeaderMap::new()).unwrap_err();
        assert!(
            matches!(&err, ProxyError::CredentialUnusable { key, .. } if key == "DB_PASSWORD"),
            "{err:?}"
        );
        assert_eq!(err.code(), "credential_not_found");
        opened.set_username(
            CredentialKey::parse("DB_PASSWORD").unwrap(),
            SecretString::from("alice"),
        );
        let mut headers = HeaderMap::new();
        apply(&svc, &opened, &mut headers).unwrap();
        assert_eq!(headers["authorization"], "Basic YWxpY2U6cHc=");
        // The pair is scrubbed from responses like any value.
        let needles = reflectable(Some(&svc), &opened);
        assert!(needles.iter().any(|n| n.as_slice() == b"alice:pw"));
    }

    #[test]
    fn a_client_certificate_is_no_needle() {
        let (svc, opened) = setup(
            "- host: a.example.com\n  auth: {type: bearer, token: T}\n  client_certificate: CLIENT_CERT\n",
            &[("T", "tok"), ("CLIENT_CERT", "{\"certificate\": \"...\"}")],
        );
        let mut headers = HeaderMap::new();
        apply(&svc, &opened, &mut headers).unwrap();
        assert_eq!(headers.len(), 1, "only the bearer header: {headers:?}");
        let needles = reflectable(Some(&svc), &opened);
        assert_eq!(needles.len(), 1);
        assert_eq!(needles[0].as_slice(), b"tok");
    }

    #[test]
    fn values_with_line_breaks_are_refused() {
        let (svc, opened) = setup(
            "- host: a.example.com\n  auth: {type: bearer, token: T}\n",
            &[("T", "a\r\nX-Evil: 1")],
        );
        assert!(apply(&svc, &opened, &mut HeaderMap::new()).is_err());
    }

    #[test]
    fn tampered_credentials_fail_closed() {
        let ring = Keyring::from_dek(DataKey::from_bytes([9; 32]));
        let key = CredentialKey::parse("T").unwrap();
        let moved = sealed_for_test(&ring, "vid", "T", b"v");
        assert!(matches!(
            Opened::open(&ring, "other-vault", &[(&key, &moved)], 0),
            Err(ProxyError::Integrity)
        ));
        let mut other_version = moved.clone();
        other_version.version = 2;
        assert!(matches!(
            Opened::open(&ring, "vid", &[(&key, &other_version)], 0),
            Err(ProxyError::Integrity)
        ));
    }

    #[test]
    fn revoked_and_expired_credentials_refuse_the_request_before_opening() {
        let ring = Keyring::from_dek(DataKey::from_bytes([9; 32]));
        let key = CredentialKey::parse("T").unwrap();
        let mut c = sealed_for_test(&ring, "vid", "T", b"v");
        c.expires_at = Some(10);
        assert!(Opened::open(&ring, "vid", &[(&key, &c)], 9).is_ok());
        assert!(matches!(
            Opened::open(&ring, "vid", &[(&key, &c)], 10),
            Err(ProxyError::CredentialExpired(k)) if k == "T"
        ));
        c.state = crate::domain::CredentialState::Revoked;
        assert!(matches!(
            Opened::open(&ring, "vid", &[(&key, &c)], 0),
            Err(ProxyError::CredentialRevoked(k)) if k == "T"
        ));
    }
}
