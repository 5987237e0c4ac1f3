//! TLS client identities presented to upstreams (`mtls`): a `certificate` credential, opened for
//! the request like any other, becomes pooled clients that present it. Building a rustls client
//! configuration parses the PEM and loads the key, so the clients are cached per identity and
//! version; each identity has pools of its own, so an upstream connection made with one identity
//! never carries a request made for another, and requests without an identity never see these.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};

use super::error::ProxyError;
use super::upstream::{ClientIdentity, IdentityClients, Upstream};
use crate::domain::CredentialKey;
use crate::policy::SealedCredential;

/// Most identities whose clients are kept at once.
const MAX_IDENTITIES: u64 = 1024;

/// How long an identity's clients (and their idle connections) outlive their last request. A
/// rotated or deleted certificate is never asked for again, so its clients leave this way.
const IDLE_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Which sealed value an identity was built from: the vault, the key, the version, and the
/// sealed value's authentication tag. The tag makes a credential deleted and set again under
/// the same version number another entry, never the old identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct IdentityKey {
    vault_id: String,
    key: CredentialKey,
    version: i64,
    tag: [u8; 16],
}

impl IdentityKey {
    fn of(vault_id: &str, key: &CredentialKey, sealed: &SealedCredential) -> Self {
        let mut tag = [0u8; 16];
        let n = sealed.sealed.len().min(16);
        tag[16 - n..].copy_from_slice(&sealed.sealed[sealed.sealed.len() - n..]);
        Self {
            vault_id: vault_id.to_owned(),
            key: key.clone(),
            version: sealed.version,
            tag,
        }
    }
}

/// The clients of every identity in use, built on first use.
pub(super) struct Identities {
    cache: moka::sync::Cache<IdentityKey, Arc<IdentityClients>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("cached", &self.cache.entry_count())
            .finish()
    }
}

impl Default for Identities {
    fn default() -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(MAX_IDENTITIES)
                .time_to_idle(IDLE_LIFETIME)
                .build(),
        }
    }
}

impl Identities {
    /// The clients presenting the identity held by `key` (sealed as `sealed`, opened as
    /// `payload`). A payload that is not a usable identity is refused like a missing
    /// credential, and nothing is sent.
    pub(super) fn clients(
        &self,
        upstream: &Upstream,
        vault_id: &str,
        key: &CredentialKey,
        sealed: &SealedCredential,
        payload: &[u8],
    ) -> Result<Arc<IdentityClients>, ProxyError> {
        let id = IdentityKey::of(vault_id, key, sealed);
        self.cache
            .try_get_with(id, || {
                let identity = client_identity(payload)?;
                upstream
                    .identity_clients(&identity)
                    .map(Arc::new)
                    .map_err(|e| {
                        // rustls's error names what is wrong (a key that does not match the
                        // certificate, an unsupported key type), never key material.
                        tracing::warn!(vault_id, key = %key, error = %e, "a client certificate credential cannot be used");
                        Unusable("its private key does not match its certificate, or is of a type the TLS provider cannot use")
                    })
            })
            .map_err(|e: Arc<Unusable>| ProxyError::CredentialUnusable {
                key: key.to_string(),
                why: e.0,
            })
    }
}

/// Why a payload is not a usable client identity (words only, never the value).
#[derive(Debug)]
struct Unusable(&'static str);

/// The canonical `certificate` payload: `{"certificate": PEM chain, "private_key": PEM}`.
#[derive(serde::Deserialize)]
struct CertificatePayload {
    certificate: SecretString,
    private_key: SecretString,
}

/// Reads a `certificate` credential's canonical payload as a chain (leaf first) and its key.
//
// A stand-in for `credtype::client_identity`, which owns this format; it goes when that lands.
fn client_identity(payload: &[u8]) -> Result<ClientIdentity, Unusable> {
    let parsed: CertificatePayload = serde_json::from_slice(payload).map_err(|_| {
        Unusable(
            "it is not a certificate credential (a JSON object with `certificate` and `private_key`)",
        )
    })?;
    let chain = CertificateDer::pem_slice_iter(parsed.certificate.expose_secret().as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Unusable("its `certificate` is not a PEM certificate chain"))?;
    if chain.is_empty() {
        return Err(Unusable("its `certificate` holds no PEM certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(parsed.private_key.expose_secret().as_bytes())
        .map_err(|_| Unusable("its `private_key` is not a PEM private key"))?;
    Ok(ClientIdentity { chain, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn payload(cert: &str, key: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "certificate": cert, "private_key": key })).unwrap()
    }

    #[test]
    fn the_canonical_payload_gives_the_chain_and_key() {
        let (cert, key) = pem_pair();
        let id = client_identity(&payload(&cert, &key)).unwrap();
        assert_eq!(id.chain.len(), 1);
        assert!(matches!(id.key, PrivateKeyDer::Pkcs8(_)));
        // Debug shows neither the chain nor the key.
        let debug = format!("{id:?}");
        assert!(
            !debug.contains("BEGIN") && debug.contains("chain_len"),
            "{debug}"
        );
    }

    #[test]
    fn unusable_payloads_say_why_without_the_value() {
        let (cert, key) = pem_pair();
        for (bad, want) in [
            (b"plain api key".to_vec(), "JSON object"),
            (payload("not pem", &key), "holds no PEM certificate"),
            (payload(&key, &key), "holds no PEM certificate"),
            (payload(&cert, "not a key"), "not a PEM private key"),
            (payload(&cert, &cert), "not a PEM private key"),
        ] {
            let err = client_identity(&bad).unwrap_err();
            assert!(err.0.contains(want), "{}: {}", err.0, want);
            assert!(!err.0.contains("BEGIN"));
        }
    }

    #[test]
    fn a_credential_set_again_under_the_same_version_is_another_identity() {
        let key = CredentialKey::parse("CLIENT_CERT").unwrap();
        let sealed = |bytes: &[u8]| SealedCredential {
            ty: crate::credtype::CredentialType::Certificate,
            state: crate::domain::CredentialState::Active,
            expires_at: None,
            version: 1,
            key_version: 1,
            wrapped_key: Arc::from(Vec::new()),
            sealed: Arc::from(bytes.to_vec()),
            metadata: Arc::default(),
        };
        let a = IdentityKey::of("v", &key, &sealed(&[1; 40]));
        assert_eq!(a, IdentityKey::of("v", &key, &sealed(&[1; 40])));
        assert_ne!(a, IdentityKey::of("v", &key, &sealed(&[2; 40])));
        assert_ne!(a, IdentityKey::of("w", &key, &sealed(&[1; 40])));
        // Short (malformed) sealed values do not panic; they fail to open anyway.
        let _ = IdentityKey::of("v", &key, &sealed(&[1; 3]));
    }
}
