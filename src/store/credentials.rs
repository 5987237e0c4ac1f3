//! Credentials: one `credentials` row per credential (type, state, active version, its metadata
//! sealed under the credential's own metadata key, and a MAC over its authority columns) and one
//! `credential_versions` row per retained version, each value sealed under a data key of its
//! own (AAD: vault, key, version). Every write of a credential row stores its MAC; every read
//! checks it, and a row that fails is treated as absent and raised as an integrity alarm.
//! Versions, rollback, revocation, retention and the upgrade of old rows live in
//! `credential_versions`.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretSlice};
use sqlx::any::AnyRow;

use super::authority::credential_fields;
use super::{Backend, Store, StoreError, col};
use crate::credtype::CredentialType;
use crate::crypto::{Aad, CryptoError, seal};
use crate::domain::{CredentialKey, CredentialState, now_ms};
use crate::keys::{AuthorityRow, Keyring, WrappedDataKey};

/// Why a credential change was refused inside its transaction (nothing was stored).
#[derive(Debug, thiserror::Error)]
pub enum CredentialRefused {
    /// No credential of that key.
    #[error("credential {0} not found")]
    NotFound(CredentialKey),
    /// The credential is revoked: only delete remains.
    #[error(
        "credential {0} is revoked; it cannot be set, rotated or rolled back (delete it to reuse the key)"
    )]
    Revoked(CredentialKey),
    /// A set named another type than the stored one.
    #[error(
        "credential {key} is of type {stored}; it cannot be set as {given} (delete it first to change its type)"
    )]
    TypeMismatch {
        /// The key.
        key: CredentialKey,
        /// Its stored type.
        stored: CredentialType,
        /// The type the request named.
        given: CredentialType,
    },
    /// The version never existed.
    #[error("credential {key} has no version {version}")]
    VersionNotFound {
        /// The key.
        key: CredentialKey,
        /// The version asked for.
        version: i64,
    },
    /// The version existed but cannot be used: destroyed by retention, or revoked.
    #[error("version {version} of credential {key} is {why}")]
    VersionUnavailable {
        /// The key.
        key: CredentialKey,
        /// The version asked for.
        version: i64,
        /// `destroyed` or `revoked`.
        why: &'static str,
    },
    /// The stored row failed its MAC or its keys did not open: it was edited outside
    /// agent-vault. Delete it and set it again.
    #[error(
        "credential {0} failed its integrity check (edited outside agent-vault); delete it and set it again"
    )]
    Integrity(CredentialKey),
}

/// The active version of a credential as stored: its data key's wrap and the sealed value.
#[derive(Clone)]
pub struct SealedVersion {
    /// The version number (part of both AADs).
    pub version: i64,
    /// Its data key, wrapped by the instance key.
    pub wrapped_key: WrappedDataKey,
    /// The value sealed under that data key.
    pub sealed_value: Vec<u8>,
}

impl std::fmt::Debug for SealedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedVersion(v{})", self.version)
    }
}

/// A stored credential whose MAC verified.
#[derive(Clone)]
pub struct CredentialRecord {
    /// The vault it belongs to.
    pub vault_id: String,
    /// Its key.
    pub key: CredentialKey,
    /// What it holds.
    pub ty: CredentialType,
    /// Active or revoked.
    pub state: CredentialState,
    /// The active version, with its sealed value (`None` once revoked).
    pub active: Option<SealedVersion>,
    /// The highest version number ever made (a new version takes the next one).
    pub last_version: i64,
    /// The metadata key (version 0), wrapped by the instance key.
    pub metadata_key: WrappedDataKey,
    /// The metadata map, sealed under the metadata key.
    pub sealed_meta: Option<Vec<u8>>,
    /// Free text for people.
    pub description: String,
    /// When the active value stops being usable (ms).
    pub expires_at: Option<i64>,
    /// Who created it (`user ID`, `agent ID`, `scoped ID`).
    pub created_by: Option<String>,
    /// Who changed it last.
    pub updated_by: Option<String>,
    /// When it was revoked (ms).
    pub revoked_at: Option<i64>,
    /// Why, as the revoker said.
    pub revoked_reason: Option<String>,
    /// How many proxied requests used it.
    pub use_count: i64,
    /// When a proxied request last used it (ms).
    pub last_used_at: Option<i64>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Last change (ms).
    pub updated_at: i64,
}

impl std::fmt::Debug for CredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRecord")
            .field("vault_id", &self.vault_id)
            .field("key", &self.key)
            .field("ty", &self.ty)
            .field("state", &self.state)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl CredentialRecord {
    /// The active version's number, if any.
    pub fn version(&self) -> Option<i64> {
        self.active.as_ref().map(|v| v.version)
    }
}

/// The columns of a credential row, with its active version joined in (`c` and `v`). SQLite
/// reads the binary columns as BLOBs whatever they hold: a value edited into TEXT that is not
/// UTF-8 would otherwise fail the whole query, and with it every credential of the vault,
/// instead of that one row's MAC or AEAD check.
pub(super) fn credential_select(backend: Backend) -> String {
    let blob = |expr: &str, name: &str| match backend {
        Backend::Sqlite => format!("CAST({expr} AS BLOB) AS {name}"),
        Backend::Postgres => format!("{expr} AS {name}"),
    };
    format!(
        "SELECT c.vault_id, c.key, c.version, c.type, c.state, c.active_version, {}, c.key_version, {}, \
         c.description, c.expires_at, c.created_by, c.updated_by, c.revoked_at, c.revoked_reason, \
         c.use_count, c.last_used_at, c.created_at, c.updated_at, {}, \
         v.key_version AS v_key_version, {}, {} \
         FROM credentials c LEFT JOIN credential_versions v \
         ON v.vault_id = c.vault_id AND v.key = c.key AND v.version = c.active_version AND v.state = 'active'",
        blob("c.wrapped_key", "wrapped_key"),
        blob("c.sealed_meta", "sealed_meta"),
        blob("c.mac", "mac"),
        blob("v.wrapped_key", "v_wrapped_key"),
        blob("v.sealed_value", "v_sealed_value"),
    )
}

/// The number of a credential's next version. The counter is under the row's MAC, so it only
/// reaches the end of `i64` if this program counted there, which a failure answers instead of
/// a wrapped or repeated number.
pub(super) fn next_version(current: &CredentialRecord) -> Result<i64, StoreError> {
    current.last_version.checked_add(1).ok_or_else(|| {
        StoreError::corrupt(
            "column version",
            format!("credential {} has no version number left", current.key),
        )
    })
}

/// The raw columns of a credential row, before its MAC is checked.
struct RawCredential {
    vault_id: String,
    key: String,
    last_version: i64,
    ty: String,
    state: String,
    active_version: Option<i64>,
    wrapped_key: Option<Vec<u8>>,
    key_version: Option<i64>,
    sealed_meta: Option<Vec<u8>>,
    description: String,
    expires_at: Option<i64>,
    created_by: Option<String>,
    updated_by: Option<String>,
    revoked_at: Option<i64>,
    revoked_reason: Option<String>,
    use_count: i64,
    last_used_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    mac: Option<Vec<u8>>,
    v_key_version: Option<i64>,
    v_wrapped_key: Option<Vec<u8>>,
    v_sealed_value: Option<Vec<u8>>,
}

impl RawCredential {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        Ok(Self {
            vault_id: col(row, "vault_id")?,
            key: col(row, "key")?,
            last_version: col(row, "version")?,
            ty: col(row, "type")?,
            state: col(row, "state")?,
            active_version: col(row, "active_version")?,
            wrapped_key: col(row, "wrapped_key")?,
            key_version: col(row, "key_version")?,
            sealed_meta: col(row, "sealed_meta")?,
            description: col(row, "description")?,
            expires_at: col(row, "expires_at")?,
            created_by: col(row, "created_by")?,
            updated_by: col(row, "updated_by")?,
            revoked_at: col(row, "revoked_at")?,
            revoked_reason: col(row, "revoked_reason")?,
            use_count: col(row, "use_count")?,
            last_used_at: col(row, "last_used_at")?,
            created_at: col(row, "created_at")?,
            updated_at: col(row, "updated_at")?,
            mac: col(row, "mac")?,
            v_key_version: col(row, "v_key_version")?,
            v_wrapped_key: col(row, "v_wrapped_key")?,
            v_sealed_value: col(row, "v_sealed_value")?,
        })
    }

    /// The record, if the row's MAC verifies and its columns hold what this program writes;
    /// `None` (with an alarm) otherwise.
    fn verified(self, store: &Store) -> Result<Option<CredentialRecord>, StoreError> {
        let row_id = format!("{}/{}", self.vault_id, self.key);
        let (Some(wrapped), Some(key_version)) = (self.wrapped_key.as_deref(), self.key_version)
        else {
            // A row without a metadata key is one the upgrade has not re-sealed (or a writer
            // emptied): it cannot be bound, so it is absent.
            store.alarm(AuthorityRow::Credential, &row_id, Some(&self.vault_id));
            return Ok(None);
        };
        let fields = credential_fields(
            &self.vault_id,
            &self.key,
            self.last_version,
            &self.ty,
            &self.state,
            self.active_version,
            self.expires_at,
            wrapped,
            key_version,
            self.revoked_at,
        );
        if !store.verify_row(
            AuthorityRow::Credential,
            &row_id,
            Some(&self.vault_id),
            &fields,
            self.mac.as_deref(),
        )? {
            return Ok(None);
        }
        let parsed = (|| {
            let key = CredentialKey::parse(&self.key)
                .map_err(|e| StoreError::corrupt("column key", e))?;
            let ty: CredentialType = self
                .ty
                .parse()
                .map_err(|e| StoreError::corrupt("column type", e))?;
            let state: CredentialState = self
                .state
                .parse()
                .map_err(|e| StoreError::corrupt("column state", e))?;
            Ok::<_, StoreError>((key, ty, state))
        })();
        let (key, ty, state) = match parsed {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(row = %row_id, error = %e, "INTEGRITY ALARM: a credential row cannot be read; it is treated as absent");
                return Ok(None);
            }
        };
        // The active version's row is bound by its AEAD (AAD: vault, key, version), so it needs
        // no MAC: an edited or swapped one fails to open, and the request fails closed.
        let active = match (
            self.active_version,
            self.v_wrapped_key,
            self.v_key_version,
            self.v_sealed_value,
        ) {
            (Some(version), Some(bytes), Some(key_version), Some(sealed_value)) => {
                Some(SealedVersion {
                    version,
                    wrapped_key: WrappedDataKey { key_version, bytes },
                    sealed_value,
                })
            }
            (Some(version), ..) => {
                tracing::error!(row = %row_id, version, "INTEGRITY ALARM: the active version of a credential is missing");
                None
            }
            (None, ..) => None,
        };
        Ok(Some(CredentialRecord {
            vault_id: self.vault_id,
            key,
            ty,
            state,
            active,
            last_version: self.last_version,
            metadata_key: WrappedDataKey {
                key_version,
                bytes: wrapped.to_vec(),
            },
            sealed_meta: self.sealed_meta,
            description: self.description,
            expires_at: self.expires_at,
            created_by: self.created_by,
            updated_by: self.updated_by,
            revoked_at: self.revoked_at,
            revoked_reason: self.revoked_reason,
            use_count: self.use_count,
            last_used_at: self.last_used_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }))
    }
}

/// One credential to write: a new credential (version 1) or a new active version of an
/// existing one. The payload is the canonical form its type's validation produced.
pub struct CredentialWrite {
    /// The key.
    pub key: CredentialKey,
    /// Its type; an existing credential must already have it.
    pub ty: CredentialType,
    /// The canonical value to seal.
    pub payload: SecretSlice<u8>,
    /// A new description, or `None` to keep the current one.
    pub description: Option<String>,
    /// The caller's metadata (replacing the stored map), or `None` to keep the stored map.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Metadata derived from the value; merged over the rest (derived keys win).
    pub derived: BTreeMap<String, String>,
    /// When the value stops being usable (ms).
    pub expires_at: Option<i64>,
    /// Who writes it (`user ID`, `agent ID`, `scoped ID`).
    pub actor: String,
    /// Only a new version of an existing credential (rotate): a missing key is `NotFound`.
    pub must_exist: bool,
}

impl std::fmt::Debug for CredentialWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialWrite")
            .field("key", &self.key)
            .field("ty", &self.ty)
            .finish_non_exhaustive()
    }
}

/// What a write made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The key.
    pub key: CredentialKey,
    /// The new active version.
    pub version: i64,
    /// The credential's type.
    pub ty: CredentialType,
}

/// Metadata as sealed: the map, as JSON.
pub(super) fn seal_meta(
    keyring: &Keyring,
    vault_id: &str,
    key: &str,
    wrapped: &WrappedDataKey,
    map: &BTreeMap<String, String>,
) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(map).map_err(|e| StoreError::corrupt("metadata", e))?;
    Ok(keyring.seal_metadata(vault_id, key, wrapped, &json)?)
}

/// Opens a record's metadata map; an empty map when it has none.
pub fn open_meta(
    keyring: &Keyring,
    record: &CredentialRecord,
) -> Result<BTreeMap<String, String>, CryptoError> {
    let Some(sealed) = &record.sealed_meta else {
        return Ok(BTreeMap::new());
    };
    let plain = keyring.open_metadata(
        &record.vault_id,
        record.key.as_str(),
        &record.metadata_key,
        sealed,
    )?;
    serde_json::from_slice(plain.expose_secret()).map_err(|_| CryptoError::Malformed)
}

/// Reads one credential row inside a transaction (its MAC checked). A row that exists but
/// fails is `Integrity`; a missing one is `None`.
pub(super) async fn credential_in(
    store: &Store,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    vault_id: &str,
    key: &CredentialKey,
) -> Result<Option<CredentialRecord>, StoreError> {
    let sql = format!(
        "{} WHERE c.vault_id = $1 AND c.key = $2",
        credential_select(store.backend())
    );
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(vault_id)
        .bind(key.as_str())
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(None);
    };
    let record = RawCredential::from_row(&row)
        .and_then(|raw| raw.verified(store))
        .ok()
        .flatten();
    match record {
        Some(record) => Ok(Some(record)),
        None => Err(StoreError::Credential(CredentialRefused::Integrity(
            key.clone(),
        ))),
    }
}

/// The authority columns of a credential row after a change, and its MAC.
pub(super) struct RowState<'a> {
    pub(super) last_version: i64,
    pub(super) ty: CredentialType,
    pub(super) state: CredentialState,
    pub(super) active_version: Option<i64>,
    pub(super) expires_at: Option<i64>,
    pub(super) metadata_key: &'a WrappedDataKey,
    pub(super) revoked_at: Option<i64>,
}

impl RowState<'_> {
    pub(super) fn mac(
        &self,
        store: &Store,
        vault_id: &str,
        key: &str,
    ) -> Result<Vec<u8>, StoreError> {
        Ok(store.macs()?.mac(
            AuthorityRow::Credential,
            &credential_fields(
                vault_id,
                key,
                self.last_version,
                self.ty.as_str(),
                self.state.as_str(),
                self.active_version,
                self.expires_at,
                &self.metadata_key.bytes,
                self.metadata_key.key_version,
                self.revoked_at,
            ),
        ))
    }
}

/// Inserts one version row: the value sealed under a fresh data key of its own.
#[allow(clippy::too_many_arguments)]
pub(super) async fn insert_version(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    keyring: &Keyring,
    vault_id: &str,
    key: &str,
    version: i64,
    payload: &[u8],
    expires_at: Option<i64>,
    actor: &str,
    now: i64,
) -> Result<(), StoreError> {
    let (wrapped, sealed) = keyring.seal_version(vault_id, key, version, payload)?;
    sqlx::query(
        "INSERT INTO credential_versions (vault_id, key, version, state, wrapped_key, key_version, sealed_value, expires_at, created_by, created_at) \
         VALUES ($1, $2, $3, 'active', $4, $5, $6, $7, $8, $9)",
    )
    .bind(vault_id)
    .bind(key)
    .bind(version)
    .bind(wrapped.bytes)
    .bind(wrapped.key_version)
    .bind(sealed)
    .bind(expires_at)
    .bind(actor)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks the active version of a credential `rotated` (a new one is about to take its place).
pub(super) async fn retire_active(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    vault_id: &str,
    key: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE credential_versions SET state = 'rotated', rotated_at = $1 WHERE vault_id = $2 AND key = $3 AND state = 'active'",
    )
    .bind(now)
    .bind(vault_id)
    .bind(key)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Points a credential row at a new active version (and its expiry), with a fresh MAC.
#[allow(clippy::too_many_arguments)]
pub(super) async fn activate(
    store: &Store,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    current: &CredentialRecord,
    version: i64,
    expires_at: Option<i64>,
    sealed_meta: Option<&[u8]>,
    description: Option<&str>,
    actor: &str,
    now: i64,
) -> Result<(), StoreError> {
    let key = current.key.as_str();
    let mac = RowState {
        last_version: version,
        ty: current.ty,
        state: CredentialState::Active,
        active_version: Some(version),
        expires_at,
        metadata_key: &current.metadata_key,
        revoked_at: None,
    }
    .mac(store, &current.vault_id, key)?;
    sqlx::query(
        "UPDATE credentials SET version = $1, active_version = $1, expires_at = $2, \
         sealed_meta = COALESCE($3, sealed_meta), description = COALESCE($4, description), \
         updated_at = $5, updated_by = $6, mac = $7 WHERE vault_id = $8 AND key = $9",
    )
    .bind(version)
    .bind(expires_at)
    .bind(sealed_meta.map(<[u8]>::to_vec))
    .bind(description)
    .bind(now)
    .bind(actor)
    .bind(mac)
    .bind(&current.vault_id)
    .bind(key)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes credentials inside a transaction: a new key gets its metadata key and version 1; an
/// existing one a new active version (the previous becomes `rotated`), refused when revoked or
/// of another type.
pub(super) async fn write_credentials(
    store: &Store,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    keyring: &Keyring,
    vault_id: &str,
    writes: &[CredentialWrite],
) -> Result<Vec<Written>, StoreError> {
    let now = now_ms();
    let mut written = Vec::with_capacity(writes.len());
    for write in writes {
        let key = write.key.as_str();
        let payload = write.payload.expose_secret();
        match credential_in(store, tx, vault_id, &write.key).await? {
            Some(current) => {
                if current.state == CredentialState::Revoked {
                    return Err(CredentialRefused::Revoked(write.key.clone()).into());
                }
                if current.ty != write.ty {
                    return Err(CredentialRefused::TypeMismatch {
                        key: write.key.clone(),
                        stored: current.ty,
                        given: write.ty,
                    }
                    .into());
                }
                let version = next_version(&current)?;
                let meta = if write.metadata.is_none() && write.derived.is_empty() {
                    None
                } else {
                    let mut map = match &write.metadata {
                        Some(given) => given.clone(),
                        None => open_meta(keyring, &current).map_err(|_| {
                            StoreError::Credential(CredentialRefused::Integrity(write.key.clone()))
                        })?,
                    };
                    map.extend(write.derived.clone());
                    Some(seal_meta(
                        keyring,
                        vault_id,
                        key,
                        &current.metadata_key,
                        &map,
                    )?)
                };
                retire_active(tx, vault_id, key, now).await?;
                insert_version(
                    tx,
                    keyring,
                    vault_id,
                    key,
                    version,
                    payload,
                    write.expires_at,
                    &write.actor,
                    now,
                )
                .await?;
                activate(
                    store,
                    tx,
                    &current,
                    version,
                    write.expires_at,
                    meta.as_deref(),
                    write.description.as_deref(),
                    &write.actor,
                    now,
                )
                .await?;
                written.push(Written {
                    key: write.key.clone(),
                    version,
                    ty: current.ty,
                });
            }
            None if write.must_exist => {
                return Err(CredentialRefused::NotFound(write.key.clone()).into());
            }
            None => {
                let (meta_key, wrapped) = keyring.new_data_key(vault_id, key, 0)?;
                let mut map = write.metadata.clone().unwrap_or_default();
                map.extend(write.derived.clone());
                let json =
                    serde_json::to_vec(&map).map_err(|e| StoreError::corrupt("metadata", e))?;
                let sealed_meta = seal(&meta_key, &Aad::credential_metadata(vault_id, key), &json)?;
                let mac = RowState {
                    last_version: 1,
                    ty: write.ty,
                    state: CredentialState::Active,
                    active_version: Some(1),
                    expires_at: write.expires_at,
                    metadata_key: &wrapped,
                    revoked_at: None,
                }
                .mac(store, vault_id, key)?;
                sqlx::query(
                    "INSERT INTO credentials (vault_id, key, version, sealed_value, description, created_at, updated_at, \
                     type, state, active_version, wrapped_key, key_version, sealed_meta, expires_at, created_by, updated_by, mac) \
                     VALUES ($1, $2, 1, $3, COALESCE($4, ''), $5, $5, $6, 'active', 1, $7, $8, $9, $10, $11, $11, $12)",
                )
                .bind(vault_id)
                .bind(key)
                .bind(Vec::<u8>::new())
                .bind(write.description.as_deref())
                .bind(now)
                .bind(write.ty.as_str())
                .bind(wrapped.bytes.clone())
                .bind(wrapped.key_version)
                .bind(sealed_meta)
                .bind(write.expires_at)
                .bind(&write.actor)
                .bind(mac)
                .execute(&mut **tx)
                .await?;
                insert_version(
                    tx,
                    keyring,
                    vault_id,
                    key,
                    1,
                    payload,
                    write.expires_at,
                    &write.actor,
                    now,
                )
                .await?;
                written.push(Written {
                    key: write.key.clone(),
                    version: 1,
                    ty: write.ty,
                });
            }
        }
    }
    Ok(written)
}

/// Deletes credentials inside a transaction, every version with them (their data keys are
/// gone with their rows); returns the keys that did not exist.
pub(super) async fn remove_credentials(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    vault_id: &str,
    keys: &[CredentialKey],
) -> Result<Vec<CredentialKey>, StoreError> {
    let mut missing = Vec::new();
    for key in keys {
        // Explicitly, not only by the foreign key's cascade: a database opened without
        // foreign-key enforcement must not keep a deleted credential's versions.
        sqlx::query("DELETE FROM credential_versions WHERE vault_id = $1 AND key = $2")
            .bind(vault_id)
            .bind(key.as_str())
            .execute(&mut **tx)
            .await?;
        let done = sqlx::query("DELETE FROM credentials WHERE vault_id = $1 AND key = $2")
            .bind(vault_id)
            .bind(key.as_str())
            .execute(&mut **tx)
            .await?;
        if done.rows_affected() == 0 {
            missing.push(key.clone());
        }
    }
    Ok(missing)
}

/// How many credentials a vault holds, as this transaction sees it.
pub(super) async fn count_credentials(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    vault_id: &str,
) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM credentials WHERE vault_id = $1")
        .bind(vault_id)
        .fetch_one(&mut **tx)
        .await?;
    col(&row, "n")
}

/// Refuses, inside the write transaction, a change that grows the vault to more than `max`
/// credentials (`before` is the count before the change); the caller's transaction is then
/// dropped, so nothing of the change is stored. A vault already over the cap (the cap was
/// lowered) can still rotate and delete. Callers lock the vault row first, so concurrent writers
/// cannot each slip under the cap.
pub(super) async fn check_credential_count(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    vault_id: &str,
    before: i64,
    max: usize,
) -> Result<(), StoreError> {
    let held = count_credentials(tx, vault_id).await?;
    if held > before && usize::try_from(held).map_or(true, |held| held > max) {
        return Err(StoreError::LimitReached(format!(
            "a vault holds at most {max} credentials (limits.max_credentials_per_vault) and this \
             change would leave {held}; nothing was stored"
        )));
    }
    Ok(())
}

impl Store {
    /// Writes several credentials in one transaction, the vault row locked: a new key gets
    /// version 1, an existing one its next version (the previous becomes `rotated`). A vault
    /// grown to more than `max_per_vault` credentials fails with `LimitReached`, a revoked
    /// credential or another type with `Credential(..)`, and nothing is written.
    pub async fn set_credentials(
        &self,
        keyring: &Keyring,
        vault_id: &str,
        writes: &[CredentialWrite],
        max_per_vault: usize,
    ) -> Result<Vec<Written>, StoreError> {
        let mut tx = self.begin_write().await?;
        super::services::lock_vault(&mut tx, vault_id).await?;
        let before = count_credentials(&mut tx, vault_id).await?;
        let written = write_credentials(self, &mut tx, keyring, vault_id, writes).await?;
        check_credential_count(&mut tx, vault_id, before, max_per_vault).await?;
        tx.commit().await?;
        Ok(written)
    }

    /// Every credential of a vault whose row verifies, by key. A row that fails its MAC or
    /// cannot be read is left out with an alarm: failing the listing would take every
    /// credential of the vault down with it, while a service that names the missing key fails
    /// closed on its own.
    pub async fn list_credentials(
        &self,
        vault_id: &str,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let sql = format!(
            "{} WHERE c.vault_id = $1 ORDER BY c.key",
            credential_select(self.backend())
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(vault_id)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            match RawCredential::from_row(row) {
                Ok(raw) => out.extend(raw.verified(self)?),
                Err(e) => {
                    tracing::error!(vault_id, error = %e, "INTEGRITY ALARM: a stored credential row cannot be read; it is left out");
                }
            }
        }
        Ok(out)
    }

    /// One credential, if its row verifies (a row that fails is absent, with an alarm).
    pub async fn credential(
        &self,
        vault_id: &str,
        key: &CredentialKey,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        let sql = format!(
            "{} WHERE c.vault_id = $1 AND c.key = $2",
            credential_select(self.backend())
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(vault_id)
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some(row) => match RawCredential::from_row(&row) {
                Ok(raw) => raw.verified(self),
                Err(e) => {
                    tracing::error!(vault_id, key = %key, error = %e, "INTEGRITY ALARM: a stored credential row cannot be read; it is treated as absent");
                    Ok(None)
                }
            },
        }
    }

    /// Deletes several credentials with all their versions, all or none: if any key is missing
    /// nothing is deleted and the missing keys are returned.
    pub async fn delete_credentials(
        &self,
        vault_id: &str,
        keys: &[CredentialKey],
    ) -> Result<Vec<CredentialKey>, StoreError> {
        let mut tx = self.begin_write().await?;
        // Serialized with set, rotate and revoke of the same vault, like every credential write.
        super::services::lock_vault(&mut tx, vault_id).await?;
        let missing = remove_credentials(&mut tx, vault_id, keys).await?;
        if missing.is_empty() {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(missing)
    }

    /// Adds to use counters (called by the request-log writer, off the hot path). The counters
    /// are not under the row's MAC: they grant nothing.
    pub async fn record_credential_use(
        &self,
        uses: &[(String, String, i64, i64)],
    ) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for (vault_id, key, count, at) in uses {
            sqlx::query(
                "UPDATE credentials SET use_count = use_count + $1, last_used_at = $2 WHERE vault_id = $3 AND key = $4",
            )
            .bind(*count)
            .bind(*at)
            .bind(vault_id)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
