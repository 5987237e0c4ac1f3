//! Leaf certificates for intercepted hosts: a fresh P-256 key per host, valid for 24 hours,
//! cached and minted once per host even when many CONNECTs for it arrive together.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration as StdDuration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use super::{CaError, CertificateAuthority, serial};

/// Leaves are valid this long...
const LEAF_VALIDITY: Duration = Duration::hours(24);
/// ...and served from the cache for at most this long, so a cached leaf always has hours left.
const CACHE_TTL: StdDuration = StdDuration::from_secs(12 * 3600);

/// Per-host TLS server configurations, each with its own leaf.
#[derive(Clone)]
pub struct LeafCache {
    ca: Arc<CertificateAuthority>,
    provider: Arc<CryptoProvider>,
    cache: moka::future::Cache<String, Arc<ServerConfig>>,
    minted: Arc<AtomicU64>,
}

impl std::fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl LeafCache {
    pub(super) fn new(ca: Arc<CertificateAuthority>, provider: Arc<CryptoProvider>) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(CACHE_TTL)
            .build();
        Self {
            ca,
            provider,
            cache,
            minted: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The TLS server configuration for `host` (canonical), minting its leaf on first use.
    /// Concurrent callers for the same host wait for one mint.
    pub async fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, Arc<CaError>> {
        let this = self.clone();
        let owned = host.to_owned();
        self.cache
            .try_get_with(owned.clone(), async move {
                // Signing is CPU work; keep it off the I/O threads' critical path.
                tokio::task::spawn_blocking(move || this.mint(&owned))
                    .await
                    .unwrap_or(Err(CaError::BadHost))
                    .map(Arc::new)
            })
            .await
    }

    /// How many leaves this process has minted (for tests and metrics).
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    fn mint(&self, host: &str) -> Result<ServerConfig, CaError> {
        self.minted.fetch_add(1, Ordering::Relaxed);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.to_owned().try_into().map_err(|_| CaError::BadHost)?),
        };
        params.subject_alt_names = vec![san];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(serial()?);
        let cert = params.signed_by(&key, &self.ca.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}
