//! A vault compiled for the hot path: services indexed by host, sealed credential handles, and
//! settings. Immutable once built; a change builds a new snapshot and swaps it in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::service::CompiledService;
use crate::credtype::CredentialType;
use crate::domain::{CredentialKey, CredentialState, UnmatchedHostPolicy, VaultName};

/// A credential as the proxy holds it: its active version still sealed under that version's
/// data key (itself wrapped by the instance key), opened only for the request that uses it.
#[derive(Clone)]
pub struct SealedCredential {
    /// What the value holds (decides which bytes an injection carries).
    pub ty: CredentialType,
    /// Active or revoked.
    pub state: CredentialState,
    /// When the active value stops being usable (ms).
    pub expires_at: Option<i64>,
    /// The active version (part of both AADs); 0 when there is none (revoked).
    pub version: i64,
    /// Which instance key wrapped the data key.
    pub key_version: i64,
    /// The active version's data key, wrapped.
    pub wrapped_key: Arc<[u8]>,
    /// The active value, sealed under that data key.
    pub sealed: Arc<[u8]>,
    /// The credential's metadata (not secret to this process; a basic-auth username lives
    /// here).
    pub metadata: Arc<BTreeMap<String, String>>,
}

impl std::fmt::Debug for SealedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SealedCredential({} v{} {})",
            self.ty, self.version, self.state
        )
    }
}

/// Why a credential cannot be used for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// It was revoked.
    Revoked,
    /// Its active value expired at or before the request.
    Expired,
}

impl SealedCredential {
    /// Whether the credential may be injected into a request made at `now_ms`.
    pub fn usable(&self, now_ms: i64) -> Result<(), Unusable> {
        if self.state == CredentialState::Revoked {
            return Err(Unusable::Revoked);
        }
        if self.expires_at.is_some_and(|at| at <= now_ms) {
            return Err(Unusable::Expired);
        }
        Ok(())
    }
}

/// Every placeholder a vault's services declare, and which of them belong to disabled
/// substitutions. A fact of the snapshot alone, so it is collected once when the snapshot is
/// compiled instead of for every request.
#[derive(Debug, Default)]
pub struct Placeholders {
    all: BTreeSet<String>,
    disabled: BTreeSet<String>,
}

impl Placeholders {
    /// Collects the placeholders of `services`.
    pub fn of(services: &[CompiledService]) -> Self {
        let mut all = BTreeSet::new();
        let mut disabled = BTreeSet::new();
        for sub in services.iter().flat_map(|s| s.substitutions.iter()) {
            all.insert(sub.placeholder.clone());
            if sub.disabled {
                disabled.insert(sub.placeholder.clone());
            }
        }
        Self { all, disabled }
    }

    /// Whether the vault declares no placeholder at all.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Every placeholder, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.all.iter().map(String::as_str)
    }

    /// Whether `placeholder` belongs to a disabled substitution.
    pub fn is_disabled(&self, placeholder: &str) -> bool {
        self.disabled.contains(placeholder)
    }
}

/// Everything the proxy needs to know about one vault.
#[derive(Debug)]
pub struct VaultSnapshot {
    /// The vault's id (part of every credential's AAD).
    pub vault_id: String,
    /// Its name.
    pub vault_name: VaultName,
    /// What happens to hosts no service binds.
    pub policy: UnmatchedHostPolicy,
    /// Services in declaration order.
    pub services: Vec<CompiledService>,
    /// Exact host → indices into `services`.
    exact: HashMap<String, Vec<usize>>,
    /// Wildcard suffix → indices into `services`.
    wildcard: HashMap<String, Vec<usize>>,
    /// Credentials by key.
    pub credentials: HashMap<CredentialKey, SealedCredential>,
    /// The placeholders the services declare (shared with each request's substitution plan).
    pub placeholders: Arc<Placeholders>,
}

impl VaultSnapshot {
    /// Indexes compiled services. Disabled services are kept for display but bind nothing.
    pub fn new(
        vault_id: String,
        vault_name: VaultName,
        policy: UnmatchedHostPolicy,
        services: Vec<CompiledService>,
        credentials: HashMap<CredentialKey, SealedCredential>,
    ) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in services.iter().enumerate().filter(|(_, s)| s.enabled) {
            let index = if s.pattern.wildcard {
                &mut wildcard
            } else {
                &mut exact
            };
            index.entry(s.pattern.host.clone()).or_default().push(i);
        }
        let placeholders = Arc::new(Placeholders::of(&services));
        Self {
            vault_id,
            vault_name,
            policy,
            placeholders,
            services,
            exact,
            wildcard,
            credentials,
        }
    }

    /// Services whose host part matches, most specific host first (exact before wildcard),
    /// each group in declaration order.
    pub fn candidates<'a, 'h>(
        &'a self,
        host: &'h str,
        port: u16,
    ) -> impl Iterator<Item = &'a CompiledService> + use<'a, 'h> {
        let exact = self.exact.get(host).into_iter().flatten();
        let suffix = host.split_once('.').map(|(_, rest)| rest).unwrap_or("");
        let wild = self.wildcard.get(suffix).into_iter().flatten();
        exact
            .chain(wild)
            .map(|&i| &self.services[i])
            .filter(move |s| s.pattern.matches_host(host, port))
    }

    /// Whether any enabled service binds this host and port (whatever its path and methods).
    pub fn binds(&self, host: &str, port: u16) -> bool {
        self.candidates(host, port).next().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::service::parse_service_file;

    #[test]
    fn revoked_and_expired_credentials_are_unusable() {
        let mut c = SealedCredential {
            ty: CredentialType::ApiKey,
            state: CredentialState::Active,
            expires_at: Some(1000),
            version: 1,
            key_version: 1,
            wrapped_key: Arc::from(Vec::new()),
            sealed: Arc::from(Vec::new()),
            metadata: Arc::default(),
        };
        assert_eq!(c.usable(999), Ok(()));
        assert_eq!(c.usable(1000), Err(Unusable::Expired));
        c.expires_at = None;
        assert_eq!(c.usable(i64::MAX), Ok(()));
        c.state = CredentialState::Revoked;
        assert_eq!(c.usable(0), Err(Unusable::Revoked));
    }

    #[test]
    fn placeholders_are_collected_once_across_services() {
        let yaml = r#"
- host: a.example.com
  auth: {type: passthrough}
  substitutions:
    - {placeholder: __KEY_A__, key: A, in: [{query: a}]}
- host: b.example.com
  auth: {type: passthrough}
  substitutions:
    - {placeholder: __KEY_B__, key: B, in: [{header: X-B}]}
    - {placeholder: __KEY_A__, key: A, in: [{query: a}]}
"#;
        let services: Vec<CompiledService> = parse_service_file(yaml)
            .unwrap()
            .into_iter()
            .map(|s| s.normalized().compile().unwrap())
            .collect();
        let placeholders = Placeholders::of(&services);
        assert_eq!(
            placeholders.iter().collect::<Vec<_>>(),
            ["__KEY_A__", "__KEY_B__"]
        );
        assert!(!placeholders.is_disabled("__KEY_A__"));
        assert!(Placeholders::of(&[]).is_empty());
    }
}
