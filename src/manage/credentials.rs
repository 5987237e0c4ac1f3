//! Credentials: set (sealed at once, bound to vault, key and version), list (values only when a
//! member asks to reveal them), reveal one, delete. Members and above only: proxy-role callers
//! see key names through discovery and never a value. Every reveal is audited.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};

use super::{AccessError, Acting, Manage};
use crate::crypto::CryptoError;
use crate::domain::{CredentialKey, DomainError, VaultRole};
use crate::store::{CredentialRecord, CredentialWrite, StoreError};

/// Largest credential value accepted.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Longest description accepted, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 1000;

/// Why a credential operation failed. No message ever includes a value.
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
    /// A value is empty.
    #[error("the value of {0} is empty")]
    EmptyValue(CredentialKey),
    /// A value is over [`MAX_VALUE_BYTES`].
    #[error("the value of {0} is longer than {MAX_VALUE_BYTES} bytes")]
    ValueTooLong(CredentialKey),
    /// A description names a key the request does not set.
    #[error("description given for {0:?}, which is not being set")]
    StrayDescription(String),
    /// A description is too long.
    #[error("the description of {0} is longer than 1000 characters")]
    DescriptionTooLong(String),
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
    Store(#[from] StoreError),
}

/// A credential as a listing shows it: its metadata, and its value when revealed.
#[derive(Debug)]
pub struct Listed {
    /// The stored row (metadata and sealed value).
    pub record: CredentialRecord,
    /// What a reveal found.
    pub value: Revealed,
}

/// A credential's value in a listing.
#[derive(Debug)]
pub enum Revealed {
    /// Not asked for.
    Hidden,
    /// The plaintext.
    Value(SecretString),
    /// This one value failed its integrity check (logged as an alarm); the others are shown.
    IntegrityError,
}

fn open_value(m: &Manage<'_>, c: &CredentialRecord) -> Result<SecretString, CredentialsError> {
    let plain = m
        .keyring
        .open_credential(&c.vault_id, c.key.as_str(), c.version, &c.sealed_value)
        .map_err(|source| CredentialsError::Integrity {
            vault_id: c.vault_id.clone(),
            key: c.key.clone(),
            source,
        })?;
    Ok(SecretString::from(
        String::from_utf8_lossy(plain.expose_secret()).into_owned(),
    ))
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
                Err(e @ CredentialsError::Integrity { .. }) => {
                    tracing::error!(error = %e, "INTEGRITY ALARM: stored data failed authentication");
                    Revealed::IntegrityError
                }
                Err(e) => return Err(e),
            }
        };
        out.push(Listed { record, value });
    }
    if reveal {
        a.record("credential.reveal", Some(&vault), revealed.join(","))
            .await;
    }
    Ok(out)
}

/// One credential with its value (member or higher).
pub async fn reveal(
    a: Acting<'_>,
    vault: &str,
    key: &str,
) -> Result<(CredentialRecord, SecretString), CredentialsError> {
    let (record, _) = a.vault(vault, VaultRole::Member).await?;
    let key = CredentialKey::parse(key).map_err(CredentialsError::InvalidKey)?;
    let c =
        a.store
            .credential(&record.id, &key)
            .await?
            .ok_or_else(|| CredentialsError::NotFound {
                key: key.clone(),
                vault: vault.to_owned(),
            })?;
    let value = open_value(&a, &c)?;
    a.record("credential.reveal", Some(&record), key.to_string())
        .await;
    Ok((c, value))
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

/// Checks a value's size: never empty, never over [`MAX_VALUE_BYTES`].
fn check_value(key: &CredentialKey, value: &SecretString) -> Result<(), CredentialsError> {
    let len = value.expose_secret().len();
    if len == 0 {
        return Err(CredentialsError::EmptyValue(key.clone()));
    }
    if len > MAX_VALUE_BYTES {
        return Err(CredentialsError::ValueTooLong(key.clone()));
    }
    Ok(())
}

/// Sets one or more values atomically (member or higher), each as a new version; returns the
/// keys with their new versions. `descriptions` may describe keys being set, nothing else.
pub async fn set(
    a: Acting<'_>,
    vault: &str,
    values: &BTreeMap<String, SecretString>,
    descriptions: &BTreeMap<String, String>,
) -> Result<Vec<(CredentialKey, i64)>, CredentialsError> {
    let (vault, _) = a.vault(vault, VaultRole::Member).await?;
    check_request_size(&a, values.len(), "set")?;
    if values.is_empty() {
        return Err(CredentialsError::NothingToSet);
    }
    let mut writes = Vec::with_capacity(values.len());
    for (key, value) in values {
        let parsed = CredentialKey::parse(key).map_err(CredentialsError::InvalidKey)?;
        check_value(&parsed, value)?;
        writes.push(CredentialWrite {
            key: parsed,
            description: descriptions.get(key).cloned(),
        });
    }
    for (key, description) in descriptions {
        if !values.contains_key(key) {
            return Err(CredentialsError::StrayDescription(key.clone()));
        }
        if description.len() > MAX_DESCRIPTION_BYTES {
            return Err(CredentialsError::DescriptionTooLong(key.clone()));
        }
    }
    let written = a
        .store
        .set_credentials(
            &vault.id,
            &writes,
            a.config.limits.max_credentials_per_vault,
            |key, version| {
                let value = values
                    .get(key.as_str())
                    .map(|v| v.expose_secret().as_bytes())
                    .unwrap_or_default();
                a.keyring
                    .seal_credential(&vault.id, key.as_str(), version, value)
            },
        )
        .await?;
    a.changed(&vault.id).await;
    let keys: Vec<_> = written.iter().map(|(k, _)| k.to_string()).collect();
    a.record("credential.set", Some(&vault), keys.join(","))
        .await;
    Ok(written)
}

/// Deletes every listed key, or none when one is missing (member or higher).
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
