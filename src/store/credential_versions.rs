//! The versions of a credential: listing them, rolling back to one (its value re-sealed as a
//! new active version under a new data key), revoking every one, destroying rotated ones past
//! retention, and the one-time upgrade of values written before per-credential data keys.

use std::collections::BTreeMap;

use secrecy::ExposeSecret;

use super::credentials::{
    CredentialRefused, RowState, activate, credential_in, insert_version, retire_active, seal_meta,
};
use super::{Backend, Store, StoreError, col};
use crate::credtype::CredentialType;
use crate::domain::{CredentialKey, CredentialState, VersionState, now_ms};
use crate::keys::{Keyring, WrappedDataKey};

/// The expiry a rolled-back value gets: the earlier of the one stored with its version and the
/// one its type reads from the value itself. A version row's `expires_at` is not under a MAC, so
/// a database writer could clear it; an expiry the value carries (JWT `exp`, certificate
/// notAfter, OAuth `expires_at`) comes from authenticated bytes and cannot be laundered away.
fn rollback_expiry(ty: CredentialType, stored: Option<i64>, value: &[u8], now: i64) -> Option<i64> {
    let derived = match ty {
        CredentialType::Token | CredentialType::Certificate | CredentialType::Oauth => {
            std::str::from_utf8(value).ok().and_then(|text| {
                crate::credtype::validate(
                    ty,
                    &secrecy::SecretString::from(text.to_owned()),
                    crate::credtype::CheckOptions {
                        allow_expired: true,
                        now_ms: now,
                    },
                )
                .ok()
                .and_then(|v| v.expires_at)
            })
        }
        _ => None,
    };
    match (stored, derived) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The type an old value gets: `api_key` (migration 0005's default) when it passes that type's
/// checks; `generic` when it does not (a PEM block, a value with a line break), since earlier
/// releases stored any string and it must stay usable and rotatable as it is.
fn legacy_type(value: &[u8]) -> CredentialType {
    let fits = std::str::from_utf8(value).is_ok_and(|text| {
        let text = secrecy::SecretString::from(text.to_owned());
        crate::credtype::validate(
            CredentialType::ApiKey,
            &text,
            crate::credtype::CheckOptions {
                allow_expired: true,
                now_ms: 0,
            },
        )
        .is_ok()
    });
    if fits {
        CredentialType::ApiKey
    } else {
        CredentialType::Generic
    }
}

/// Set by migration 0005; removed once every value written before it is re-sealed.
const UPGRADE_PENDING_KEY: &str = "credential_keys_pending";

/// One stored version of a credential. Its value is bound by its AEAD (AAD: vault, key,
/// version), so the row needs no MAC of its own.
#[derive(Clone)]
pub struct VersionRecord {
    /// The version number.
    pub version: i64,
    /// Active, rotated or revoked.
    pub state: VersionState,
    /// Its data key, wrapped by the instance key.
    pub wrapped_key: WrappedDataKey,
    /// Its value, sealed under that data key.
    pub sealed_value: Vec<u8>,
    /// When its value stops being usable (ms).
    pub expires_at: Option<i64>,
    /// Who made it.
    pub created_by: Option<String>,
    /// When it was made (ms).
    pub created_at: i64,
    /// When a newer version replaced it (ms).
    pub rotated_at: Option<i64>,
}

impl std::fmt::Debug for VersionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionRecord")
            .field("version", &self.version)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn version_select(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "SELECT version, state, CAST(wrapped_key AS BLOB) AS wrapped_key, key_version, CAST(sealed_value AS BLOB) AS sealed_value, \
             expires_at, created_by, created_at, rotated_at FROM credential_versions"
        }
        Backend::Postgres => {
            "SELECT version, state, wrapped_key, key_version, sealed_value, expires_at, created_by, created_at, rotated_at \
             FROM credential_versions"
        }
    }
}

fn version_from_row(row: &sqlx::any::AnyRow) -> Result<VersionRecord, StoreError> {
    Ok(VersionRecord {
        version: col(row, "version")?,
        state: super::parsed(row, "state")?,
        wrapped_key: WrappedDataKey {
            key_version: col(row, "key_version")?,
            bytes: col(row, "wrapped_key")?,
        },
        sealed_value: col(row, "sealed_value")?,
        expires_at: col(row, "expires_at")?,
        created_by: col(row, "created_by")?,
        created_at: col(row, "created_at")?,
        rotated_at: col(row, "rotated_at")?,
    })
}

impl Store {
    /// Every retained version of a credential, newest first (`None` when the credential is
    /// absent or its row fails its MAC).
    pub async fn credential_versions(
        &self,
        vault_id: &str,
        key: &CredentialKey,
    ) -> Result<Option<Vec<VersionRecord>>, StoreError> {
        if self.credential(vault_id, key).await?.is_none() {
            return Ok(None);
        }
        let sql = format!(
            "{} WHERE vault_id = $1 AND key = $2 ORDER BY version DESC",
            version_select(self.backend())
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(vault_id)
            .bind(key.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(version_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Makes version `to`'s value the new active version (the current one becomes `rotated`):
    /// its data key is unwrapped and its value opened, then sealed again under a new data key
    /// for the new version number, in one transaction. Returns the new version.
    pub async fn rollback_credential(
        &self,
        keyring: &Keyring,
        vault_id: &str,
        key: &CredentialKey,
        to: i64,
        actor: &str,
    ) -> Result<i64, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        super::services::lock_vault(&mut tx, vault_id).await?;
        let current = credential_in(self, &mut tx, vault_id, key)
            .await?
            .ok_or_else(|| CredentialRefused::NotFound(key.clone()))?;
        if current.state == CredentialState::Revoked {
            return Err(CredentialRefused::Revoked(key.clone()).into());
        }
        let sql = format!(
            "{} WHERE vault_id = $1 AND key = $2 AND version = $3",
            version_select(self.backend())
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(vault_id)
            .bind(key.as_str())
            .bind(to)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(old) = row.as_ref().map(version_from_row).transpose()? else {
            // Numbers up to the last one made existed once: retention destroyed them.
            return Err(if (1..=current.last_version).contains(&to) {
                CredentialRefused::VersionUnavailable {
                    key: key.clone(),
                    version: to,
                    why: "destroyed (past credentials.version_retention)",
                }
            } else {
                CredentialRefused::VersionNotFound {
                    key: key.clone(),
                    version: to,
                }
            }
            .into());
        };
        if old.state == VersionState::Revoked {
            return Err(CredentialRefused::VersionUnavailable {
                key: key.clone(),
                version: to,
                why: "revoked",
            }
            .into());
        }
        let value = keyring
            .open_version(vault_id, key.as_str(), to, &old.wrapped_key, &old.sealed_value)
            .map_err(|e| {
                tracing::error!(vault_id, key = %key, version = to, error = %e, "INTEGRITY ALARM: a stored credential version failed to open");
                StoreError::Credential(CredentialRefused::Integrity(key.clone()))
            })?;
        let expires_at = rollback_expiry(current.ty, old.expires_at, value.expose_secret(), now);
        let version = super::credentials::next_version(&current)?;
        retire_active(&mut tx, vault_id, key.as_str(), now).await?;
        insert_version(
            &mut tx,
            keyring,
            vault_id,
            key.as_str(),
            version,
            value.expose_secret(),
            expires_at,
            actor,
            now,
        )
        .await?;
        activate(
            self, &mut tx, &current, version, expires_at, None, None, actor, now,
        )
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Revokes a credential: every version `revoked`, the credential `revoked` with no active
    /// version. Revoking a revoked credential changes nothing.
    pub async fn revoke_credential(
        &self,
        vault_id: &str,
        key: &CredentialKey,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        // Serialized with a concurrent set or rotate, which would otherwise leave a row whose
        // MAC says active beside a state that says revoked.
        super::services::lock_vault(&mut tx, vault_id).await?;
        let current = credential_in(self, &mut tx, vault_id, key)
            .await?
            .ok_or_else(|| CredentialRefused::NotFound(key.clone()))?;
        if current.state == CredentialState::Revoked {
            tx.rollback().await?;
            return Ok(());
        }
        // A revoked value is never used again, so its data keys and ciphertexts are destroyed
        // (the version rows stay, for the history): a database writer who puts back the
        // credential row as it was before the revocation finds nothing to open.
        sqlx::query(
            "UPDATE credential_versions SET state = 'revoked', wrapped_key = $3, sealed_value = $3 \
             WHERE vault_id = $1 AND key = $2",
        )
        .bind(vault_id)
        .bind(key.as_str())
        .bind(Vec::<u8>::new())
        .execute(&mut *tx)
        .await?;
        let mac = RowState {
            last_version: current.last_version,
            ty: current.ty,
            state: CredentialState::Revoked,
            active_version: None,
            expires_at: current.expires_at,
            metadata_key: &current.metadata_key,
            revoked_at: Some(now),
        }
        .mac(self, vault_id, key.as_str())?;
        sqlx::query(
            "UPDATE credentials SET state = 'revoked', active_version = NULL, revoked_at = $1, revoked_reason = $2, \
             updated_at = $1, updated_by = $3, mac = $4 WHERE vault_id = $5 AND key = $6",
        )
        .bind(now)
        .bind(reason)
        .bind(actor)
        .bind(mac)
        .bind(vault_id)
        .bind(key.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Destroys (deletes, with their data keys) rotated versions past retention: those rotated
    /// before `rotated_before` (ms), and those with `max_versions` or more newer rotated versions
    /// of the same credential. Never an active or revoked version. Returns how many went.
    pub async fn sweep_credential_versions(
        &self,
        max_versions: u32,
        rotated_before: i64,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM credential_versions WHERE state = 'rotated' AND (rotated_at < $1 OR \
             (SELECT COUNT(*) FROM credential_versions n WHERE n.vault_id = credential_versions.vault_id \
              AND n.key = credential_versions.key AND n.state = 'rotated' AND n.version > credential_versions.version) >= $2)",
        )
        .bind(rotated_before)
        .bind(i64::from(max_versions))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Re-seals every value written before per-credential data keys (migration 0005 marks it
    /// pending): each is opened with the instance key as before, sealed again under a data key
    /// of its own as version `version` of `credential_versions`, its credential row gets a
    /// metadata key and a MAC, and the old column is emptied. Once, in one transaction; a value
    /// that does not open (edited before the upgrade) is left unbound, so it reads as absent.
    /// Returns how many values were re-sealed.
    pub async fn upgrade_credential_keys(&self, keyring: &Keyring) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let pending = sqlx::query("SELECT value FROM instance_state WHERE key = $1")
            .bind(UPGRADE_PENDING_KEY)
            .fetch_optional(&mut *tx)
            .await?;
        if pending.is_none() {
            tx.rollback().await?;
            return Ok(0);
        }
        let select = match self.backend() {
            Backend::Sqlite => {
                "SELECT vault_id, key, version, type, CAST(sealed_value AS BLOB) AS sealed_value FROM credentials WHERE wrapped_key IS NULL"
            }
            Backend::Postgres => {
                "SELECT vault_id, key, version, type, sealed_value FROM credentials WHERE wrapped_key IS NULL"
            }
        };
        let rows = sqlx::query(select).fetch_all(&mut *tx).await?;
        let mut upgraded = 0u64;
        for row in &rows {
            let vault_id: String = col(row, "vault_id")?;
            let key: String = col(row, "key")?;
            let version: i64 = col(row, "version")?;
            let sealed: Vec<u8> = col(row, "sealed_value")?;
            let value = match keyring.open_credential(&vault_id, &key, version, &sealed) {
                Ok(value) => value,
                Err(e) => {
                    tracing::error!(vault_id, key, error = %e, "INTEGRITY ALARM: a credential written before per-credential keys does not open; it is left unusable");
                    continue;
                }
            };
            let ty = legacy_type(value.expose_secret());
            let (_, wrapped) = keyring.new_data_key(&vault_id, &key, 0)?;
            let sealed_meta = seal_meta(keyring, &vault_id, &key, &wrapped, &BTreeMap::new())?;
            insert_version(
                &mut tx,
                keyring,
                &vault_id,
                &key,
                version,
                value.expose_secret(),
                None,
                "upgrade",
                now,
            )
            .await?;
            let mac = RowState {
                last_version: version,
                ty,
                state: CredentialState::Active,
                active_version: Some(version),
                expires_at: None,
                metadata_key: &wrapped,
                revoked_at: None,
            }
            .mac(self, &vault_id, &key)?;
            sqlx::query(
                "UPDATE credentials SET type = $9, state = 'active', active_version = $1, wrapped_key = $2, key_version = $3, \
                 sealed_meta = $4, sealed_value = $5, mac = $6 WHERE vault_id = $7 AND key = $8",
            )
            .bind(version)
            .bind(wrapped.bytes.clone())
            .bind(wrapped.key_version)
            .bind(sealed_meta)
            .bind(Vec::<u8>::new())
            .bind(mac)
            .bind(&vault_id)
            .bind(&key)
            .bind(ty.as_str())
            .execute(&mut *tx)
            .await?;
            upgraded += 1;
        }
        sqlx::query("DELETE FROM instance_state WHERE key = $1")
            .bind(UPGRADE_PENDING_KEY)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(upgraded)
    }

    /// Removes the upgrade marker without re-sealing anything (a new database has nothing to
    /// upgrade); says whether it was there.
    pub async fn discard_credential_upgrade_marker(&self) -> Result<bool, StoreError> {
        self.changed(
            sqlx::query("DELETE FROM instance_state WHERE key = $1").bind(UPGRADE_PENDING_KEY),
        )
        .await
    }
}
