//! Credentials: set (checked by their type, each write a new version sealed under its own data
//! key), rotate, list versions, roll back, revoke, list (values only when a member asks to
//! reveal them), reveal one, delete. Members and above only: proxy-role callers see key names
//! through discovery and never a value or a version. A revoked credential is never revealed
//! again. Every change and every reveal is audited.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};

use super::{AccessError, Acting, Manage};
use crate::credtype::{self, CheckOptions, CredTypeError, CredentialType};
use crate::crypto::CryptoError;
use crate::domain::{CredentialKey, CredentialState, DomainError, VaultRole, now_ms};
use crate::store::{
    CredentialRecord, CredentialRefused, CredentialWrite, StoreError, VersionRecord, Written,
    open_meta,
};

/// Largest credential value accepted (any type).
pub const MAX_VALUE_BYTES: usize = credtype::MAX_VALUE_BYTES;

/// Longest description accepted, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 1000;

/// Longest revocation reason accepted, in bytes.
const MAX_REASON_BYTES: usize = 1000;

/// Why a credential operation failed. No message ever includes a value or a metadata value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The caller may not see or change this vault.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// More credentials in one request than `limits.max_credentials_per_request`: each is a
    /// statement in one write transaction that holds the database's write lock.
    #[error(
        "one request may {verb} at most {max} credentials (limits.max_credentials_per_request); this one names {count}; nothing was changed"
    )]
    TooMany {
        /// `set` or `delete`.
        verb: &'static str,
        /// The limit.
        max: usize,
        /// How many the request named.
        count: usize,
    },
    /// A set request without any credential.
    #[error("give at least one credential")]
    NothingToSet,
    /// A delete request without any key.
    #[error("give at least one key to delete")]
    NothingToDelete,
    /// A key is not `UPPER_SNAKE_CASE`.
    #[error(transparent)]
    InvalidKey(DomainError),
    /// A value, type, metadata or expiry failed its checks; nothing was stored.
    #[error("{key}: {source}; nothing was stored")]
    Invalid {
        /// The credential.
        key: String,
        /// What was wrong, naming the field.
        #[source]
        source: CredTypeError,
    },
    /// A per-key field (description, type, metadata, expiry) names a key the request does not
    /// set.
    #[error("{field} given for {key:?}, which is not being set")]
    Stray {
        /// `descriptions`, `types`, `metadata` or `expires_at`.
        field: &'static str,
        /// The key it named.
        key: String,
    },
    /// A description is too long.
    #[error("the description of {0} is longer than 1000 characters")]
    DescriptionTooLong(String),
    /// A revocation reason is too long.
    #[error("reason: at most {MAX_REASON_BYTES} bytes")]
    ReasonTooLong,
    /// No credential of that key in the vault.
    #[error("credential {key} not found in vault {vault:?}")]
    NotFound {
        /// The key asked for.
        key: CredentialKey,
        /// The vault, as the caller named it.
        vault: String,
    },
    /// Some keys of a delete request do not exist; nothing was deleted.
    #[error("no credential {} in vault {vault:?}; nothing was deleted", keys.iter().map(CredentialKey::as_str).collect::<Vec<_>>().join(", "))]
    NotAllFound {
        /// The keys that do not exist.
        keys: Vec<CredentialKey>,
        /// The vault, as the caller named it.
        vault: String,
    },
    /// The credential is revoked: its value is never returned again.
    #[error("credential {0} is revoked; its value is not available (delete it to reuse the key)")]
    Revoked(CredentialKey),
    /// The change was refused inside its transaction (revoked, another type, no such version).
    #[error(transparent)]
    Refused(CredentialRefused),
    /// A stored value failed to open: its row was edited or moved outside agent-vault.
    #[error("credential {key} of vault {vault_id} failed its integrity check")]
    Integrity {
        /// The vault's id.
        vault_id: String,
        /// The key.
        key: CredentialKey,
        /// Why it did not open.
        #[source]
        source: CryptoError,
    },
    /// The store could not answer.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for CredentialsError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Credential(refused) => Self::Refused(refused),
            other => Self::Store(other),
        }
    }
}

/// A credential as a listing shows it: its row, its metadata, and its value when revealed.
pub struct Listed {
    /// The stored row.
    pub record: CredentialRecord,
    /// Its metadata (`None` when it failed to open; logged as an alarm).
    pub metadata: Option<BTreeMap<String, String>>,
    /// What a reveal found.
    pub value: Revealed,
}

/// Metadata values are sealed at rest and shown to members only: debug output names keys.
impl std::fmt::Debug for Listed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listed")
            .field("record", &self.record)
            .field(
                "metadata_keys",
                &self.metadata.as_ref().map(|m| m.keys().collect::<Vec<_>>()),
            )
            .field("value", &self.value)
            .finish()
    }
}

/// A credential's value in a listing.
#[derive(Debug)]
pub enum Revealed {
    /// Not asked for.
    Hidden,
    /// The plaintext.
    Value(SecretString),
    /// Revoked: never revealed again.
    Revoked,
    /// This one value failed its integrity check (logged as an alarm); the others are shown.
    IntegrityError,
}

/// Everything a `set` request carries besides the values; each map is keyed by credential key.
#[derive(Default)]
pub struct SetOptions {
    /// Descriptions of keys being set.
    pub descriptions: BTreeMap<String, String>,
    /// Types of keys being set (default: the stored type, or `api_key` for a new key).
    pub types: BTreeMap<String, String>,
    /// Metadata of keys being set (replaces the stored map; derived entries win).
    pub metadata: BTreeMap<String, BTreeMap<String, String>>,
    /// Explicit expiries (ms) of keys being set (default: what the value says, if anything).
    pub expires_at: BTreeMap<String, i64>,
    /// Store values that have already expired.
    pub allow_expired: bool,
}

/// Debug output leaves metadata values and descriptions out (keys only).
impl std::fmt::Debug for SetOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetOptions")
            .field("types", &self.types)
            .field("metadata_for", &self.metadata.keys().collect::<Vec<_>>())
            .field(
                "descriptions_for",
                &self.descriptions.keys().collect::<Vec<_>>(),
            )
            .field("expires_at", &self.expires_at)
            .field("allow_expired", &self.allow_expired)
            .finish()
    }
}

fn integrity(c: &CredentialRecord, source: CryptoError) -> CredentialsError {
    CredentialsError::Integrity {
        vault_id: c.vault_id.clone(),
        key: c.key.clone(),
        source,
    }
}

fn open_value(m: &Manage<'_>, c: &CredentialRecord) -> Result<SecretString, CredentialsError> {
    if c.state == CredentialState::Revoked {
        return Err(CredentialsError::Revoked(c.key.clone()));
    }
    let Some(active) = &c.active else {
        return Err(integrity(c, CryptoError::Malformed));
    };
    let plain = m
        .keyring
        .open_version(
            &c.vault_id,
            c.key.as_str(),
            active.version,
            &active.wrapped_key,
            &active.sealed_value,
        )
        .map_err(|source| integrity(c, source))?;
    Ok(SecretString::from(
        String::from_utf8_lossy(plain.expose_secret()).into_owned(),
    ))
}

fn metadata_of(m: &Manage<'_>, c: &CredentialRecord) -> Option<BTreeMap<String, String>> {
    open_meta(m.keyring, c)
        .inspect_err(|e| {
            tracing::error!(vault_id = %c.vault_id, key = %c.key, error = %e, "INTEGRITY ALARM: a credential's metadata failed to open");
        })
        .ok()
}

/// A vault's credentials (member or higher), with their values when `reveal` is set.
pub async fn list(
    a: Acting<'_>,
    vault: &str,
    reveal: bool,
) -> Result<Vec<Listed>, CredentialsError> {
    let (vault, _) = a.vault(vault, VaultRole::Member).await?;
    let records = a.store.list_credentials(&vault.id).await?;
    let mut out = Vec::with_capacity(records.len());
    let mut revealed = Vec::new();
    for record in records {
        let value = if !reveal {
            Revealed::Hidden
        } else {
            // One tampered value must not hide the others: it is marked, the rest are revealed.
            match open_value(&a, &record) {
                Ok(value) => {
                    revealed.push(record.key.to_string());
                    Revealed::Value(value)
                }
                Err(CredentialsError::Revoked(_)) => Revealed::Revoked,
                Err(e @ CredentialsError::Integrity { .. }) => {
                    tracing::error!(error = %e, "INTEGRITY ALARM: stored data failed authentication");
                    Revealed::IntegrityError
                }
                Err(e) => return Err(e),
            }
        };
        let metadata = metadata_of(&a, &record);
        out.push(Listed {
            record,
            metadata,
            value,
        });
    }
    if reveal {
        a.record("credential.reveal", Some(&vault), revealed.join(","))
            .await;
    }
    Ok(out)
}

/// Finds one credential of a vault the caller may act on as a member.
async fn find(
    a: &Acting<'_>,
    vault: &str,
    key: &str,
) -> Result<(crate::store::VaultRecord, CredentialRecord), CredentialsError> {
    let (record, _) = a.vault(vault, VaultRole::Member).await?;
    let key = CredentialKey::parse(key).map_err(CredentialsError::InvalidKey)?;
    let c =
        a.store
            .credential(&record.id, &key)
            .await?
            .ok_or_else(|| CredentialsError::NotFound {
                key,
                vault: vault.to_owned(),
            })?;
    Ok((record, c))
}

/// One credential with its value and metadata (member or higher); a revoked one is refused.
pub async fn reveal(a: Acting<'_>, vault: &str, key: &str) -> Result<Listed, CredentialsError> {
    let (record, c) = find(&a, vault, key).await?;
    let value = open_value(&a, &c)?;
    a.record("credential.reveal", Some(&record), c.key.to_string())
        .await;
    let metadata = metadata_of(&a, &c);
    Ok(Listed {
        record: c,
        metadata,
        value: Revealed::Value(value),
    })
}

/// Refuses a request naming more credentials than `limits.max_credentials_per_request`.
fn check_request_size(
    m: &Manage<'_>,
    count: usize,
    verb: &'static str,
) -> Result<(), CredentialsError> {
    let max = m.config.limits.max_credentials_per_request;
    if count > max {
        return Err(CredentialsError::TooMany { verb, max, count });
    }
    Ok(())
}

/// What one value becomes once checked: its type's canonical payload, the metadata to store,
/// and its expiry.
struct Checked {
    validated: credtype::Validated,
    metadata: Option<BTreeMap<String, String>>,
    expires_at: Option<i64>,
}

/// Runs a type's checks off the async runtime when they cost real CPU (an encrypted SSH key's
/// KDF, an RSA key's parse), so one such request cannot stall every other on its worker.
pub(super) async fn validate_off_the_runtime(
    ty: CredentialType,
    value: &SecretString,
    opts: CheckOptions,
) -> Result<credtype::Validated, CredTypeError> {
    if !matches!(ty, CredentialType::SshKey | CredentialType::Certificate) {
        return credtype::validate(ty, value, opts);
    }
    let value = value.clone();
    tokio::task::spawn_blocking(move || credtype::validate(ty, &value, opts))
        .await
        .unwrap_or_else(|_| {
            Err(CredTypeError::invalid(
                "value",
                "a value whose checks complete (they failed unexpectedly; see the server log)",
            ))
        })
}

/// Checks one value as a credential of type `ty`, with the caller's metadata and expiry.
async fn check(
    key: &str,
    ty: CredentialType,
    value: &SecretString,
    metadata: Option<&BTreeMap<String, String>>,
    expires_at: Option<i64>,
    allow_expired: bool,
) -> Result<Checked, CredentialsError> {
    let invalid = |source| CredentialsError::Invalid {
        key: key.to_owned(),
        source,
    };
    let now = now_ms();
    let validated = validate_off_the_runtime(
        ty,
        value,
        CheckOptions {
            allow_expired,
            now_ms: now,
        },
    )
    .await
    .map_err(invalid)?;
    if let Some(m) = metadata {
        credtype::validate_metadata(m).map_err(invalid)?;
    }
    let expires_at = expires_at.or(validated.expires_at);
    if let Some(at) = expires_at
        && at <= now
        && !allow_expired
    {
        return Err(invalid(CredTypeError::invalid(
            "expires_at",
            "a time in the future (ms since the epoch); pass allow_expired to store an expired value anyway",
        )));
    }
    Ok(Checked {
        validated,
        metadata: metadata.cloned(),
        expires_at,
    })
}

fn write_of(
    key: CredentialKey,
    ty: CredentialType,
    checked: Checked,
    actor: &str,
) -> CredentialWrite {
    CredentialWrite {
        key,
        ty,
        payload: checked.validated.payload,
        description: None,
        metadata: checked.metadata,
        derived: checked.validated.derived_metadata,
        expires_at: checked.expires_at,
        actor: actor.to_owned(),
        must_exist: false,
    }
}

/// Sets one or more values atomically (member or higher), each as a new version of its
/// credential (version 1 for a new key); returns each key's new version and type. The
/// per-key options may only name keys being set.
pub async fn set(
    a: Acting<'_>,
    vault: &str,
    values: &BTreeMap<String, SecretString>,
    opts: &SetOptions,
) -> Result<Vec<Written>, CredentialsError> {
    let (vault, _) = a.vault(vault, VaultRole::Member).await?;
    check_request_size(&a, values.len(), "set")?;
    if values.is_empty() {
        return Err(CredentialsError::NothingToSet);
    }
    let stray = [
        ("descriptions", opts.descriptions.keys().collect::<Vec<_>>()),
        ("types", opts.types.keys().collect()),
        ("metadata", opts.metadata.keys().collect()),
        ("expires_at", opts.expires_at.keys().collect()),
    ]
    .into_iter()
    .find_map(|(field, keys)| {
        keys.into_iter()
            .find(|k| !values.contains_key(*k))
            .map(|k| (field, k.clone()))
    });
    if let Some((field, key)) = stray {
        return Err(CredentialsError::Stray { field, key });
    }
    for (key, description) in &opts.descriptions {
        if description.len() > MAX_DESCRIPTION_BYTES {
            return Err(CredentialsError::DescriptionTooLong(key.clone()));
        }
    }
    // An existing key keeps its type unless the request names one (a different one is refused
    // in the write transaction); a new key is an api_key unless named.
    let stored: BTreeMap<CredentialKey, CredentialType> = a
        .store
        .list_credentials(&vault.id)
        .await?
        .into_iter()
        .map(|c| (c.key, c.ty))
        .collect();
    let actor = a.caller.actor().to_string();
    let mut writes = Vec::with_capacity(values.len());
    for (key, value) in values {
        let parsed = CredentialKey::parse(key).map_err(CredentialsError::InvalidKey)?;
        let ty = match opts.types.get(key) {
            Some(name) => {
                name.parse::<CredentialType>()
                    .map_err(|source| CredentialsError::Invalid {
                        key: key.clone(),
                        source,
                    })?
            }
            None => stored
                .get(&parsed)
                .copied()
                .unwrap_or(CredentialType::ApiKey),
        };
        let checked = check(
            key,
            ty,
            value,
            opts.metadata.get(key),
            opts.expires_at.get(key).copied(),
            opts.allow_expired,
        )
        .await?;
        let mut write = write_of(parsed, ty, checked, &actor);
        write.description = opts.descriptions.get(key).cloned();
        writes.push(write);
    }
    let written = a
        .store
        .set_credentials(
            a.keyring,
            &vault.id,
            &writes,
            a.config.limits.max_credentials_per_vault,
        )
        .await?;
    a.changed(&vault.id).await;
    let keys: Vec<_> = written
        .iter()
        .map(|w| format!("{} v{}", w.key, w.version))
        .collect();
    a.record("credential.set", Some(&vault), keys.join(","))
        .await;
    Ok(written)
}

/// A new active version of an existing credential (member or higher), checked as its stored
/// type; the previous version becomes `rotated`. `metadata` replaces the stored map when given.
pub async fn rotate(
    a: Acting<'_>,
    vault: &str,
    key: &str,
    value: &SecretString,
    metadata: Option<&BTreeMap<String, String>>,
    expires_at: Option<i64>,
    allow_expired: bool,
) -> Result<Written, CredentialsError> {
    let (record, c) = find(&a, vault, key).await?;
    if c.state == CredentialState::Revoked {
        return Err(CredentialsError::Refused(CredentialRefused::Revoked(c.key)));
    }
    let checked = check(key, c.ty, value, metadata, expires_at, allow_expired).await?;
    let mut write = write_of(c.key.clone(), c.ty, checked, &a.caller.actor().to_string());
    write.must_exist = true;
    let written = a
        .store
        .set_credentials(
            a.keyring,
            &record.id,
            std::slice::from_ref(&write),
            a.config.limits.max_credentials_per_vault,
        )
        .await?
        .remove(0);
    a.changed(&record.id).await;
    a.record(
        "credential.rotate",
        Some(&record),
        format!("{} v{}", written.key, written.version),
    )
    .await;
    Ok(written)
}

/// The retained versions of a credential, newest first (member or higher; never values).
pub async fn versions(
    a: Acting<'_>,
    vault: &str,
    key: &str,
) -> Result<Vec<VersionRecord>, CredentialsError> {
    let (record, c) = find(&a, vault, key).await?;
    a.store
        .credential_versions(&record.id, &c.key)
        .await?
        .ok_or(CredentialsError::NotFound {
            key: c.key,
            vault: vault.to_owned(),
        })
}

/// Makes version `to`'s value the new active version (member or higher); returns its number.
pub async fn rollback(
    a: Acting<'_>,
    vault: &str,
    key: &str,
    to: i64,
) -> Result<i64, CredentialsError> {
    let (record, c) = find(&a, vault, key).await?;
    let version = a
        .store
        .rollback_credential(
            a.keyring,
            &record.id,
            &c.key,
            to,
            &a.caller.actor().to_string(),
        )
        .await?;
    a.changed(&record.id).await;
    a.record(
        "credential.rollback",
        Some(&record),
        format!("{} v{to} -> v{version}", c.key),
    )
    .await;
    Ok(version)
}

/// Revokes a credential (member or higher): every version revoked, the proxy refuses it, and
/// its value is never revealed again. Revoking it again changes nothing.
pub async fn revoke(
    a: Acting<'_>,
    vault: &str,
    key: &str,
    reason: Option<&str>,
) -> Result<CredentialKey, CredentialsError> {
    if reason.is_some_and(|r| r.len() > MAX_REASON_BYTES) {
        return Err(CredentialsError::ReasonTooLong);
    }
    let (record, c) = find(&a, vault, key).await?;
    a.store
        .revoke_credential(&record.id, &c.key, reason, &a.caller.actor().to_string())
        .await?;
    a.changed(&record.id).await;
    a.record_with(
        "credential.revoke",
        Some(&record),
        c.key.to_string(),
        reason.unwrap_or_default().to_owned(),
    )
    .await;
    Ok(c.key)
}

/// Deletes every listed key with all its versions, or none when one is missing (member or
/// higher). Their data keys go with their rows.
pub async fn delete(
    a: Acting<'_>,
    vault: &str,
    keys: &[String],
) -> Result<Vec<CredentialKey>, CredentialsError> {
    let (record, _) = a.vault(vault, VaultRole::Member).await?;
    if keys.is_empty() {
        return Err(CredentialsError::NothingToDelete);
    }
    check_request_size(&a, keys.len(), "delete")?;
    let keys = keys
        .iter()
        .map(|k| CredentialKey::parse(k).map_err(CredentialsError::InvalidKey))
        .collect::<Result<Vec<_>, _>>()?;
    let missing = a.store.delete_credentials(&record.id, &keys).await?;
    if !missing.is_empty() {
        return Err(CredentialsError::NotAllFound {
            keys: missing,
            vault: vault.to_owned(),
        });
    }
    a.changed(&record.id).await;
    let names: Vec<_> = keys.iter().map(|k| k.to_string()).collect();
    a.record("credential.delete", Some(&record), names.join(","))
        .await;
    Ok(keys)
}
