//! The live per-vault snapshots the proxy reads, swapped atomically. This is the only bridge
//! between the store and the hot path: admin writes call `reload`, the proxy calls `get`, and
//! nothing in between touches the database per request. It also owns reading a stored service
//! row back ([`read_service`]): the one place a row's MAC is checked, for the snapshots here
//! and for every operation in `manage`.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::domain::{CredentialState, VaultName};
use crate::keys::Keyring;
use crate::policy::service::ServiceSpec;
use crate::policy::{SealedCredential, VaultSnapshot};
use crate::store::{ServiceRow, Store, StoreError, VaultRecord, open_meta};

/// Why a stored service row cannot be used as written.
#[derive(Debug, thiserror::Error)]
pub enum StoredServiceError {
    /// The row's MAC does not match: it was changed outside agent-vault.
    #[error("service {name} of vault {vault_id} failed its integrity check")]
    Tampered {
        /// The vault's id.
        vault_id: String,
        /// The service's name as stored.
        name: String,
    },
    /// The row's MAC holds but its definition is not one this version can read.
    #[error("service {name} of vault {vault_id} cannot be read")]
    Unreadable {
        /// The vault's id.
        vault_id: String,
        /// The service's name as stored.
        name: String,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
}

/// A service row read back from the store: its definition, and whether its MAC held.
#[derive(Debug)]
pub struct StoredService {
    /// The vault's id.
    pub vault_id: String,
    /// The name the row is stored under.
    pub name: String,
    /// Whether the MAC over (vault, name, definition) matched.
    pub intact: bool,
    /// The parsed definition.
    pub spec: Result<ServiceSpec, serde_json::Error>,
}

impl StoredService {
    /// The definition, if the row is intact and readable: what every write path needs before
    /// it builds on a stored service.
    pub fn verified(self) -> Result<ServiceSpec, StoredServiceError> {
        if !self.intact {
            return Err(StoredServiceError::Tampered {
                vault_id: self.vault_id,
                name: self.name,
            });
        }
        self.spec.map_err(|source| StoredServiceError::Unreadable {
            vault_id: self.vault_id,
            name: self.name,
            source,
        })
    }
}

/// Reads one stored service row: checks its MAC and parses its definition. The snapshot build
/// keeps a tampered service bound (so its host fails closed); everyone else wants
/// [`StoredService::verified`] or [`verified_services`].
pub fn read_service(keyring: &Keyring, vault_id: &str, row: &ServiceRow) -> StoredService {
    StoredService {
        vault_id: vault_id.to_owned(),
        name: row.name.clone(),
        intact: keyring.verify_service_mac(vault_id, &row.name, &row.spec, &row.mac),
        spec: serde_json::from_str(&row.spec),
    }
}

/// The definitions of a vault's stored rows, all verified, in order; the first row that is not
/// intact or not readable is the error.
pub fn verified_services(
    keyring: &Keyring,
    vault_id: &str,
    rows: &[ServiceRow],
) -> Result<Vec<ServiceSpec>, StoredServiceError> {
    rows.iter()
        .map(|row| read_service(keyring, vault_id, row).verified())
        .collect()
}

type Map = HashMap<VaultName, Arc<VaultSnapshot>>;

/// All vault snapshots, by name.
#[derive(Clone)]
pub struct Snapshots {
    map: Arc<ArcSwap<Map>>,
    by_id: Arc<ArcSwap<HashMap<String, VaultName>>>,
    store: Store,
    keyring: Keyring,
    // Serializes rebuilds so that two writers cannot swap in snapshots out of order.
    writer: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("vaults", &self.map.load().len())
            .finish()
    }
}

impl Snapshots {
    /// Builds snapshots of every vault.
    pub async fn load(store: Store, keyring: Keyring) -> Result<Self, StoreError> {
        let snapshots = Self {
            map: Arc::new(ArcSwap::from_pointee(HashMap::new())),
            by_id: Arc::new(ArcSwap::from_pointee(HashMap::new())),
            store,
            keyring,
            writer: Arc::new(Mutex::new(())),
        };
        snapshots.reload_all().await?;
        Ok(snapshots)
    }

    /// The snapshot of a vault, by name.
    pub fn get(&self, name: &str) -> Option<Arc<VaultSnapshot>> {
        let name = VaultName::parse(name).ok()?;
        self.map.load().get(&name).cloned()
    }

    /// The snapshot of a vault, by id.
    pub fn get_by_id(&self, id: &str) -> Option<Arc<VaultSnapshot>> {
        let name = self.by_id.load().get(id).cloned()?;
        // The two maps are swapped one after the other; a vault deleted and re-created under the
        // same name in between must not hand one vault's session the other vault.
        self.map
            .load()
            .get(&name)
            .filter(|s| s.vault_id == id)
            .cloned()
    }

    /// Drops a vault's snapshot, so the proxy refuses it until a rebuild succeeds (used when a
    /// rebuild after a write failed: serving the old bindings would ignore the write).
    pub async fn forget(&self, vault_id: &str) {
        let _guard = self.writer.lock().await;
        let mut map: Map = (**self.map.load()).clone();
        map.retain(|_, s| s.vault_id != vault_id);
        self.publish(map);
    }

    /// Rebuilds every snapshot (startup, and when another instance signals a change it could
    /// not name).
    pub async fn reload_all(&self) -> Result<(), StoreError> {
        let failures = self.adopt_newer_key().await;
        self.reload_all_once().await?;
        if self.keyring.mac_failures() > failures && self.adopt_newer_key_now().await {
            // A rotation elsewhere committed while the rows were read: once more, with the key.
            self.reload_all_once().await?;
        }
        Ok(())
    }

    /// Adopts a newer instance key before a rebuild (rows written after a rotation are keyed
    /// by it); returns the MAC-failure count to compare after the rebuild.
    async fn adopt_newer_key(&self) -> u64 {
        self.adopt_newer_key_now().await;
        self.keyring.mac_failures()
    }

    async fn adopt_newer_key_now(&self) -> bool {
        match crate::rekey::adopt_newer(&self.store, &self.keyring).await {
            Ok(adopted) => adopted,
            Err(e) => {
                tracing::error!(error = %e, "cannot adopt the stored instance key");
                false
            }
        }
    }

    async fn reload_all_once(&self) -> Result<(), StoreError> {
        let _guard = self.writer.lock().await;
        let mut map = HashMap::new();
        for vault in self.store.list_vaults().await? {
            // One vault that cannot be built must not keep every other vault stale: it is
            // left out (the proxy refuses it) until a later rebuild works.
            match self.build(&vault).await {
                Ok(snap) => {
                    map.insert(vault.name.clone(), Arc::new(snap));
                }
                Err(e) => {
                    tracing::error!(vault = %vault.name, error = %e, "building a vault snapshot failed; the proxy refuses the vault until it builds");
                }
            }
        }
        self.publish(map);
        Ok(())
    }

    /// Rebuilds one vault's snapshot (or drops it if the vault is gone).
    pub async fn reload(&self, vault_id: &str) -> Result<(), StoreError> {
        let failures = self.adopt_newer_key().await;
        self.reload_once(vault_id).await?;
        if self.keyring.mac_failures() > failures && self.adopt_newer_key_now().await {
            self.reload_once(vault_id).await?;
        }
        Ok(())
    }

    async fn reload_once(&self, vault_id: &str) -> Result<(), StoreError> {
        let _guard = self.writer.lock().await;
        let mut map: Map = (**self.map.load()).clone();
        map.retain(|_, s| s.vault_id != vault_id);
        if let Some(vault) = self.store.vault_by_id(vault_id).await? {
            let snap = self.build(&vault).await?;
            map.insert(vault.name.clone(), Arc::new(snap));
        }
        self.publish(map);
        Ok(())
    }

    fn publish(&self, map: Map) {
        let by_id = map
            .iter()
            .map(|(name, s)| (s.vault_id.clone(), name.clone()))
            .collect();
        self.map.store(Arc::new(map));
        self.by_id.store(Arc::new(by_id));
    }

    async fn build(&self, vault: &VaultRecord) -> Result<VaultSnapshot, StoreError> {
        let rows = self.store.list_services(&vault.id).await?;
        let mut services = Vec::with_capacity(rows.len());
        for row in rows {
            let stored = read_service(&self.keyring, &vault.id, &row);
            let compiled = stored
                .spec
                .map_err(|e| e.to_string())
                .and_then(|spec| spec.compile_stored().map_err(|e| e.to_string()));
            match compiled {
                Ok(mut svc) => {
                    for sub in svc.substitutions.iter().filter(|s| s.disabled) {
                        // Stored before substitutions named exact places: the loose form would
                        // let the agent write the value where it can be read back, so it stays
                        // off (its placeholder is refused) until an admin rewrites it.
                        tracing::error!(vault = %vault.name, service = %row.name, placeholder = %sub.placeholder, "stored substitution uses the old form without exact places; it is disabled until the service is set again");
                    }
                    if !stored.intact {
                        // The definition was changed outside agent-vault. Keep it bound so its
                        // host fails closed instead of falling through to the tunnel policy.
                        tracing::error!(vault = %vault.name, service = %row.name, "service definition failed its integrity check; requests it matches are refused");
                        svc.integrity_failed = true;
                    }
                    services.push(svc);
                }
                Err(e) => {
                    tracing::error!(vault = %vault.name, service = %row.name, error = %e, "stored service definition cannot be compiled; ignoring it");
                }
            }
        }
        let mut credentials = HashMap::new();
        for c in self.store.list_credentials(&vault.id).await? {
            // Metadata is opened here, once per build: requests read it (a basic-auth
            // username) without unsealing anything. A credential whose metadata does not open
            // is left out, so a service using it fails closed.
            let metadata = match open_meta(&self.keyring, &c) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(vault = %vault.name, key = %c.key, error = %e, "INTEGRITY ALARM: a credential's metadata failed to open; requests that use it are refused");
                    continue;
                }
            };
            let (version, key_version, wrapped_key, sealed): (i64, i64, Arc<[u8]>, Arc<[u8]>) =
                match c.active {
                    Some(v) => (
                        v.version,
                        v.wrapped_key.key_version,
                        Arc::from(v.wrapped_key.bytes),
                        Arc::from(v.sealed_value),
                    ),
                    None if c.state == CredentialState::Revoked => {
                        (0, 0, Arc::from(Vec::new()), Arc::from(Vec::new()))
                    }
                    // Active without its version row: left out (alarmed by the store).
                    None => continue,
                };
            credentials.insert(
                c.key,
                SealedCredential {
                    ty: c.ty,
                    state: c.state,
                    expires_at: c.expires_at,
                    version,
                    key_version,
                    wrapped_key,
                    sealed,
                    metadata: Arc::new(metadata),
                },
            );
        }
        Ok(VaultSnapshot::new(
            vault.id.clone(),
            vault.name.clone(),
            vault.unmatched_host_policy,
            services,
            credentials,
        ))
    }
}
