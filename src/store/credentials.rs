//! Credentials: sealed values and their metadata.

use sqlx::any::AnyRow;

use super::{Backend, Store, StoreError, col};
use crate::crypto::CryptoError;
use crate::domain::{CredentialKey, now_ms};

/// A stored credential. `sealed_value` is AES-256-GCM ciphertext bound to (vault id, key, version).
#[derive(Clone)]
pub struct CredentialRecord {
    /// The vault it belongs to.
    pub vault_id: String,
    /// Its key.
    pub key: CredentialKey,
    /// Bumped on every overwrite; part of the AAD.
    pub version: i64,
    /// The sealed value.
    pub sealed_value: Vec<u8>,
    /// `static` today.
    pub kind: String,
    /// Free text for people.
    pub description: String,
    /// How many proxied requests used it.
    pub use_count: i64,
    /// When a proxied request last used it (ms).
    pub last_used_at: Option<i64>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Last overwrite (ms).
    pub updated_at: i64,
}

impl std::fmt::Debug for CredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRecord")
            .field("vault_id", &self.vault_id)
            .field("key", &self.key)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl CredentialRecord {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let key: String = col(row, "key")?;
        let sealed_value = sealed_bytes(row, &key);
        Ok(Self {
            vault_id: col(row, "vault_id")?,
            key: CredentialKey::parse(key).map_err(|e| StoreError::corrupt("column key", e))?,
            version: col(row, "version")?,
            sealed_value,
            kind: col(row, "kind")?,
            description: col(row, "description")?,
            use_count: col(row, "use_count")?,
            last_used_at: col(row, "last_used_at")?,
            created_at: col(row, "created_at")?,
            updated_at: col(row, "updated_at")?,
        })
    }
}

/// The sealed value's bytes. A value that cannot be read as bytes is kept empty rather than
/// failing the row: failing it would fail every listing and so every credential of the vault,
/// while an empty value fails the AEAD check of this one credential only.
fn sealed_bytes(row: &AnyRow, key: &str) -> Vec<u8> {
    col::<Vec<u8>>(row, "sealed_value").unwrap_or_else(|e| {
        tracing::error!(key, error = %e, "INTEGRITY ALARM: a stored credential value cannot be read as bytes");
        Vec::new()
    })
}

/// One credential to write; the value is sealed by the caller's closure once the version is known.
#[derive(Clone, Debug)]
pub struct CredentialWrite {
    /// The key.
    pub key: CredentialKey,
    /// A new description, or `None` to keep the current one.
    pub description: Option<String>,
}

/// Writes credentials inside a transaction: each overwrite bumps the version, and
/// `seal(key, version)` produces the ciphertext bound to exactly that row and version.
pub(super) async fn write_credentials(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    vault_id: &str,
    writes: &[CredentialWrite],
    seal: impl Fn(&CredentialKey, i64) -> Result<Vec<u8>, CryptoError>,
) -> Result<Vec<(CredentialKey, i64)>, StoreError> {
    let now = now_ms();
    let mut written = Vec::with_capacity(writes.len());
    for write in writes {
        let current =
            sqlx::query("SELECT version FROM credentials WHERE vault_id = $1 AND key = $2")
                .bind(vault_id)
                .bind(write.key.as_str())
                .fetch_optional(&mut **tx)
                .await?;
        let version = match current {
            Some(row) => col::<i64>(&row, "version")? + 1,
            None => 1,
        };
        let sealed = seal(&write.key, version)?;
        sqlx::query(
            "INSERT INTO credentials (vault_id, key, version, sealed_value, kind, description, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'static', COALESCE($5, ''), $6, $6) \
             ON CONFLICT (vault_id, key) DO UPDATE SET version = excluded.version, sealed_value = excluded.sealed_value, \
             description = COALESCE($5, credentials.description), updated_at = excluded.updated_at",
        )
        .bind(vault_id)
        .bind(write.key.as_str())
        .bind(version)
        .bind(sealed)
        .bind(write.description.as_deref())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        written.push((write.key.clone(), version));
    }
    Ok(written)
}

/// Deletes credentials inside a transaction; returns the keys that did not exist.
pub(super) async fn remove_credentials(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    vault_id: &str,
    keys: &[CredentialKey],
) -> Result<Vec<CredentialKey>, StoreError> {
    let mut missing = Vec::new();
    for key in keys {
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
    /// The columns of a credential row. SQLite reads the sealed value as a BLOB whatever it
    /// holds: a value edited into TEXT that is not UTF-8 would otherwise fail the whole query,
    /// and with it every credential of the vault, instead of that one credential's AEAD check.
    fn credential_columns(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => {
                "vault_id, key, version, CAST(sealed_value AS BLOB) AS sealed_value, kind, description, use_count, last_used_at, created_at, updated_at"
            }
            Backend::Postgres => {
                "vault_id, key, version, sealed_value, kind, description, use_count, last_used_at, created_at, updated_at"
            }
        }
    }

    /// Writes several credentials in one transaction. Each overwrite bumps the version, and
    /// `seal(key, version)` produces the ciphertext bound to exactly that row and version. A
    /// vault grown to more than `max_per_vault` credentials fails with `LimitReached` and
    /// nothing is written.
    pub async fn set_credentials(
        &self,
        vault_id: &str,
        writes: &[CredentialWrite],
        max_per_vault: usize,
        seal: impl Fn(&CredentialKey, i64) -> Result<Vec<u8>, CryptoError>,
    ) -> Result<Vec<(CredentialKey, i64)>, StoreError> {
        let mut tx = self.begin_write().await?;
        super::services::lock_vault(&mut tx, vault_id).await?;
        let before = count_credentials(&mut tx, vault_id).await?;
        let written = write_credentials(&mut tx, vault_id, writes, seal).await?;
        check_credential_count(&mut tx, vault_id, before, max_per_vault).await?;
        tx.commit().await?;
        Ok(written)
    }

    /// Every credential of a vault, by key.
    pub async fn list_credentials(
        &self,
        vault_id: &str,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM credentials WHERE vault_id = $1 ORDER BY key",
            self.credential_columns()
        )))
        .bind(vault_id)
        .fetch_all(&self.pool)
        .await?;
        // A row edited past reading (a key that is no key, a version that is no number) is left
        // out with an alarm: failing the listing would take every credential of the vault down
        // with it, while a service that names the missing key fails closed on its own.
        Ok(rows
            .iter()
            .filter_map(|row| {
                CredentialRecord::from_row(row)
                    .inspect_err(|e| {
                        tracing::error!(vault_id, error = %e, "INTEGRITY ALARM: a stored credential row cannot be read; it is left out");
                    })
                    .ok()
            })
            .collect())
    }

    /// One credential.
    pub async fn credential(
        &self,
        vault_id: &str,
        key: &CredentialKey,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM credentials WHERE vault_id = $1 AND key = $2",
            self.credential_columns()
        )))
        .bind(vault_id)
        .bind(key.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(CredentialRecord::from_row).transpose()
    }

    /// Deletes several credentials, all or none: if any key is missing nothing is deleted and
    /// the missing keys are returned.
    pub async fn delete_credentials(
        &self,
        vault_id: &str,
        keys: &[CredentialKey],
    ) -> Result<Vec<CredentialKey>, StoreError> {
        let mut tx = self.begin_write().await?;
        let missing = remove_credentials(&mut tx, vault_id, keys).await?;
        if missing.is_empty() {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(missing)
    }

    /// Adds to use counters (called by the request-log writer, off the hot path).
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
