//! The proxy's certificate authority. One root per instance (ECDSA P-256, path length 0, five
//! years), created at first start; its private key is sealed with the DEK and stored in the
//! database so every instance sharing the database presents the same root.

mod leaf;

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::crypto::{Aad, CryptoError, random_bytes};
use crate::keys::Keyring;
use crate::store::{CaStateRecord, Store, StoreError};

pub use leaf::LeafCache;

/// Root validity: five years.
const ROOT_VALIDITY_DAYS: i64 = 5 * 365;

/// Errors from the CA. None carries key material.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Certificate generation or parsing failed.
    #[error("certificate error: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The stored key could not be opened (wrong DEK or tampered row).
    #[error("the stored CA key failed its integrity check")]
    Sealed(#[from] CryptoError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS configuration could not be built.
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
    /// The stored certificate does not belong to the sealed key.
    #[error("the stored CA certificate does not match the sealed CA key (the row was changed)")]
    Mismatch,
    /// The host cannot be put in a certificate.
    #[error("cannot mint a certificate for this host")]
    BadHost,
}

/// The loaded root and the signer for leaves.
pub struct CertificateAuthority {
    root_pem: String,
    root_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

fn serial() -> Result<SerialNumber, CaError> {
    let mut bytes: [u8; 16] = random_bytes()?;
    bytes[0] &= 0x7f; // keep it positive
    Ok(SerialNumber::from_slice(&bytes))
}

impl CertificateAuthority {
    /// Loads the instance's root, creating and storing one on first start. If several instances
    /// race, the first insert wins and the others load it.
    pub async fn load_or_create(store: &Store, keyring: &Keyring) -> Result<Self, CaError> {
        if let Some(state) = store.ca_state().await? {
            return Self::from_state(&state, keyring);
        }
        let fresh = Self::generate(keyring)?;
        if store.insert_ca_state_if_absent(&fresh.0).await? {
            return Ok(fresh.1);
        }
        let state = store.ca_state().await?.ok_or(StoreError::NotFound)?;
        Self::from_state(&state, keyring)
    }

    fn generate(keyring: &Keyring) -> Result<(CaStateRecord, Self), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let suffix: [u8; 4] = random_bytes()?;
        dn.push(
            DnType::CommonName,
            format!("agent-vault root CA {}", hex::encode(suffix)),
        );
        dn.push(DnType::OrganizationName, "agent-vault");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(ROOT_VALIDITY_DAYS);
        params.serial_number = Some(serial()?);
        let cert = params.self_signed(&key)?;
        let key_der = Zeroizing::new(key.serialize_der());
        let sealed_key = keyring.seal_instance(&Aad::ca_key(), &key_der)?;
        let state = CaStateRecord {
            cert_pem: cert.pem(),
            sealed_key,
        };
        let ca = Self {
            root_pem: cert.pem(),
            root_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        };
        Ok((state, ca))
    }

    fn from_state(state: &CaStateRecord, keyring: &Keyring) -> Result<Self, CaError> {
        use secrecy::ExposeSecret;
        let key_der = keyring.open_instance(&Aad::ca_key(), &state.sealed_key)?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key_der.expose_secret()),
            &PKCS_ECDSA_P256_SHA256,
        )?;
        let root_der: CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(state.cert_pem.as_bytes())
                .map_err(|_| CaError::Certificate(rcgen::Error::CouldNotParseCertificate))?;
        // The certificate is stored in the clear: a database writer could swap in their own
        // root. It must carry the public half of the sealed key, or nothing is served.
        let (_, parsed) = x509_parser::parse_x509_certificate(root_der.as_ref())
            .map_err(|_| CaError::Certificate(rcgen::Error::CouldNotParseCertificate))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::Mismatch);
        }
        let issuer = Issuer::from_ca_cert_pem(&state.cert_pem, key)?;
        Ok(Self {
            root_pem: state.cert_pem.clone(),
            root_der,
            issuer,
        })
    }

    /// The root certificate, PEM, for agents to trust.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root certificate, DER.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// A leaf cache that mints from this root.
    pub fn leaf_cache(self: &Arc<Self>, provider: Arc<CryptoProvider>) -> LeafCache {
        LeafCache::new(self.clone(), provider)
    }
}
