//! Instance-key rotation in the store: one write transaction that moves everything keyed by the
//! instance key from the old version to the new one. Wrapped data keys are wrapped again (the
//! values they seal are not touched), values sealed directly under the instance key are sealed
//! again, and every service and authority-row MAC is recomputed; then the `master_key` row is
//! overwritten with the new version, which destroys the old wrap. Items the old key does not
//! open or verify are left as they are: a forged row stays forged.
//!
//! The same pass, without the `master_key` update, is the sweep each instance runs after it
//! adopts a new version, catching rows it wrote under the old version while the rotation ran.

use super::authority::credential_fields;
use super::instance::{SETUP_TOKEN_SEALED_KEY, TOKEN_HASH_KEY};
use super::{Backend, Store, StoreError, col};
use crate::crypto::Aad;
use crate::domain::now_ms;
use crate::keys::{AuthorityRow, Rotation, WrappedDataKey};

/// Where a table's rows name their credential version (part of each wrap's AAD).
#[derive(Clone, Copy, Debug)]
pub enum VersionColumn {
    /// A column holds it.
    Column(&'static str),
    /// Every row of the table has this version (0: a credential's metadata key).
    Fixed(i64),
}

/// A table holding wrapped data keys in a `wrapped_key` + `key_version` column pair, and the
/// columns that identify each row (and make up the wrap's associated data).
#[derive(Clone, Copy, Debug)]
pub struct WrappedKeyColumns {
    /// The table.
    pub table: &'static str,
    /// The column holding the vault id.
    pub vault_id: &'static str,
    /// The column holding the credential key.
    pub key: &'static str,
    /// The credential version.
    pub version: VersionColumn,
}

/// Every table whose rows hold a data key wrapped by the instance key. A rotation rewraps each
/// of them; a table missing here would be unreadable after the next rotation.
// `credentials` holds one too (its metadata key), but its row MAC covers the wrap, so it is
// rewrapped together with its MAC by `rekey_credential_rows`.
pub const WRAPPED_KEY_TABLES: &[WrappedKeyColumns] = &[WrappedKeyColumns {
    table: "credential_versions",
    vault_id: "vault_id",
    key: "key",
    version: VersionColumn::Column("version"),
}];

/// What one pass changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RekeyCounts {
    /// Data keys wrapped again.
    pub rewrapped: u64,
    /// Values sealed again under the new key.
    pub resealed: u64,
    /// Service and authority-row MACs recomputed.
    pub remaced: u64,
    /// Items the old key neither opened nor verified (already moved, or failing before):
    /// left as they were.
    pub untouched: u64,
}

/// Why a rotation was refused before anything changed.
#[derive(Debug, thiserror::Error)]
pub enum RotateRefused {
    /// Another rotation (here or on another instance) moved the key on first.
    #[error("the instance key is at version {stored}, not {expected}; another rotation ran first")]
    VersionMoved {
        /// The version this rotation started from.
        expected: i64,
        /// The version stored.
        stored: i64,
    },
    /// The master password was changed since this server unsealed: its KEK would wrap the
    /// new key so that the new password could not open it.
    #[error(
        "the master password was changed since this server started; restart it with the new password before rotating"
    )]
    PasswordChanged,
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

impl Store {
    /// Rotates the instance key in one write transaction (the `master_key` row is locked
    /// first, so two rotations cannot interleave): rewraps `tables`, reseals, re-MACs, and
    /// stores `wrapped_new` (the new version under the KEK derived with `kek_salt`) in place of
    /// the old version. `Ok(Err(_))`: refused, nothing changed.
    pub async fn rotate_instance_key(
        &self,
        rotation: &Rotation,
        wrapped_new: &[u8],
        kek_salt: &[u8],
        tables: &[WrappedKeyColumns],
    ) -> Result<Result<RekeyCounts, RotateRefused>, StoreError> {
        let mut tx = self.begin_write().await?;
        let lock = match self.backend {
            Backend::Postgres => {
                "SELECT key_version, kdf_salt FROM master_key WHERE id = 1 FOR UPDATE"
            }
            // BEGIN IMMEDIATE already holds the database's one write lock.
            Backend::Sqlite => "SELECT key_version, kdf_salt FROM master_key WHERE id = 1",
        };
        let row = sqlx::query(lock).fetch_one(&mut *tx).await?;
        let stored: i64 = col(&row, "key_version")?;
        let salt: Vec<u8> = col(&row, "kdf_salt")?;
        if stored != rotation.old_version() {
            tx.rollback().await?;
            return Ok(Err(RotateRefused::VersionMoved {
                expected: rotation.old_version(),
                stored,
            }));
        }
        if salt != kek_salt {
            tx.rollback().await?;
            return Ok(Err(RotateRefused::PasswordChanged));
        }
        let counts = rekey_rows(self, &mut tx, rotation, tables).await?;
        sqlx::query(
            "UPDATE master_key SET wrapped_dek = $1, key_version = $2, updated_at = $3 WHERE id = 1",
        )
        .bind(wrapped_new.to_vec())
        .bind(rotation.new_version())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(counts))
    }

    /// Moves whatever is still under the rotation's old version to its new one, in one
    /// transaction; the `master_key` row is not touched.
    pub async fn sweep_instance_key(
        &self,
        rotation: &Rotation,
        tables: &[WrappedKeyColumns],
    ) -> Result<RekeyCounts, StoreError> {
        let mut tx = self.begin_write().await?;
        let counts = rekey_rows(self, &mut tx, rotation, tables).await?;
        tx.commit().await?;
        Ok(counts)
    }

    /// After a rotation on SQLite: moves the write-ahead log into the database file and
    /// truncates it, so the pages that held the old wraps leave the log (secure_delete zeroes
    /// freed space in the file). Postgres keeps dead tuples until VACUUM: nothing to do here.
    pub async fn checkpoint_after_rekey(&self) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The instance-key version stored, and its wrap (to adopt a version another instance
    /// made).
    pub async fn instance_key(&self) -> Result<Option<(i64, Vec<u8>, Vec<u8>)>, StoreError> {
        let row =
            sqlx::query("SELECT key_version, wrapped_dek, kdf_salt FROM master_key WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok((
                col(&r, "key_version")?,
                col(&r, "wrapped_dek")?,
                col(&r, "kdf_salt")?,
            ))
        })
        .transpose()
    }
}

/// Every item keyed by the instance key, moved from the rotation's old version to its new one.
async fn rekey_rows(
    store: &Store,
    tx: &mut Tx,
    rotation: &Rotation,
    tables: &[WrappedKeyColumns],
) -> Result<RekeyCounts, StoreError> {
    let mut counts = RekeyCounts::default();
    for table in tables {
        rewrap_data_keys(tx, rotation, table, &mut counts).await?;
    }
    rekey_credential_rows(tx, rotation, &mut counts).await?;
    reseal_instance_secrets(tx, rotation, &mut counts).await?;
    remac_services(tx, rotation, &mut counts).await?;
    // Rows that do not verify under the old key stay failing (never laundered) and are alarmed.
    let (old, new) = rotation.authority_macs();
    let rebound = store.rebind_authority_macs(tx, &old, &new).await?;
    counts.remaced += rebound.bound;
    counts.untouched += rebound.refused;
    Ok(counts)
}

/// Rewraps each credential's metadata key and binds the row again, since its MAC covers the
/// wrap. A row whose MAC does not verify under the old key is left as it is: still refused,
/// never laundered into a row the new key vouches for.
async fn rekey_credential_rows(
    tx: &mut Tx,
    rotation: &Rotation,
    counts: &mut RekeyCounts,
) -> Result<(), StoreError> {
    let (old, new) = rotation.authority_macs();
    let rows = sqlx::query(
        "SELECT vault_id, key, version, type, state, active_version, expires_at, wrapped_key, \
         key_version, revoked_at, mac FROM credentials WHERE key_version = $1",
    )
    .bind(rotation.old_version())
    .fetch_all(&mut **tx)
    .await?;
    for r in &rows {
        let (v, k, ty, state): (String, String, String, String) = (
            col(r, "vault_id")?,
            col(r, "key")?,
            col(r, "type")?,
            col(r, "state")?,
        );
        let last_version: i64 = col(r, "version")?;
        let (active, expires, revoked): (Option<i64>, Option<i64>, Option<i64>) = (
            col(r, "active_version")?,
            col(r, "expires_at")?,
            col(r, "revoked_at")?,
        );
        let wrapped = WrappedDataKey {
            key_version: col(r, "key_version")?,
            bytes: col(r, "wrapped_key")?,
        };
        let stored: Option<Vec<u8>> = col(r, "mac")?;
        let bound = |w: &WrappedDataKey, macs: &crate::keys::AuthorityMacs| {
            macs.mac(
                AuthorityRow::Credential,
                &credential_fields(
                    &v,
                    &k,
                    last_version,
                    &ty,
                    &state,
                    active,
                    expires,
                    &w.bytes,
                    w.key_version,
                    revoked,
                ),
            )
        };
        // Recomputed and compared like `AuthorityMacs::verify`, in constant time.
        let proven = stored.as_deref().is_some_and(|s| {
            use subtle::ConstantTimeEq;
            bool::from(bound(&wrapped, &old).as_slice().ct_eq(s))
        });
        if !proven {
            counts.untouched += 1;
            continue;
        }
        let Some(rewrapped) = rotation.rewrap(&v, &k, 0, &wrapped) else {
            counts.untouched += 1;
            continue;
        };
        let rewrapped = rewrapped?;
        let mac = bound(&rewrapped, &new);
        sqlx::query(
            "UPDATE credentials SET wrapped_key = $1, key_version = $2, mac = $3 \
             WHERE vault_id = $4 AND key = $5 AND key_version = $6",
        )
        .bind(rewrapped.bytes.clone())
        .bind(rewrapped.key_version)
        .bind(mac)
        .bind(&v)
        .bind(&k)
        .bind(rotation.old_version())
        .execute(&mut **tx)
        .await?;
        counts.rewrapped += 1;
        counts.remaced += 1;
    }
    Ok(())
}

/// Rewraps every data key of `table` wrapped under the rotation's old version.
pub async fn rewrap_data_keys(
    tx: &mut Tx,
    rotation: &Rotation,
    table: &WrappedKeyColumns,
    counts: &mut RekeyCounts,
) -> Result<(), StoreError> {
    let WrappedKeyColumns {
        table: name,
        vault_id,
        key,
        version,
    } = *table;
    let version_select = match version {
        VersionColumn::Column(c) => format!("{c} AS av_version"),
        VersionColumn::Fixed(v) => format!("{v} AS av_version"),
    };
    // Table and column names are constants of the code, never input.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {vault_id} AS av_vault, {key} AS av_key, {version_select}, wrapped_key, key_version \
         FROM {name} WHERE key_version = $1"
    )))
    .bind(rotation.old_version())
    .fetch_all(&mut **tx)
    .await?;
    let version_match = match version {
        VersionColumn::Column(c) => format!(" AND {c} = $6"),
        VersionColumn::Fixed(_) => String::new(),
    };
    let update = format!(
        "UPDATE {name} SET wrapped_key = $1, key_version = $2 \
         WHERE {vault_id} = $3 AND {key} = $4 AND key_version = $5{version_match}"
    );
    for r in &rows {
        let (v, k, n): (String, String, i64) = (
            col(r, "av_vault")?,
            col(r, "av_key")?,
            col(r, "av_version")?,
        );
        let wrapped = WrappedDataKey {
            key_version: col(r, "key_version")?,
            bytes: col(r, "wrapped_key")?,
        };
        let Some(new) = rotation.rewrap(&v, &k, n, &wrapped) else {
            counts.untouched += 1;
            continue;
        };
        let new = new?;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(update.clone()))
            .bind(new.bytes)
            .bind(new.key_version)
            .bind(v)
            .bind(k)
            .bind(rotation.old_version());
        if matches!(version, VersionColumn::Column(_)) {
            q = q.bind(n);
        }
        q.execute(&mut **tx).await?;
        counts.rewrapped += 1;
    }
    Ok(())
}

/// Seals again what is sealed directly under the instance key: the CA key, the setup token,
/// the token-hash key and values supplied with proposals. Credential values are not among
/// them: each is sealed under its own data key, which is rewrapped instead.
async fn reseal_instance_secrets(
    tx: &mut Tx,
    rotation: &Rotation,
    counts: &mut RekeyCounts,
) -> Result<(), StoreError> {
    let mut reseal = |aad: &Aad, sealed: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
        match rotation.reseal(aad, sealed) {
            Some(new) => {
                counts.resealed += 1;
                Ok(Some(new?))
            }
            None => {
                counts.untouched += 1;
                Ok(None)
            }
        }
    };

    if let Some(r) = sqlx::query("SELECT sealed_key FROM ca_state WHERE id = 1")
        .fetch_optional(&mut **tx)
        .await?
        && let Some(new) = reseal(&Aad::ca_key(), &col::<Vec<u8>>(&r, "sealed_key")?)?
    {
        sqlx::query("UPDATE ca_state SET sealed_key = $1 WHERE id = 1")
            .bind(new)
            .execute(&mut **tx)
            .await?;
    }

    for (name, aad) in [
        (SETUP_TOKEN_SEALED_KEY, Aad::setup_token()),
        (TOKEN_HASH_KEY, Aad::token_hash_key()),
    ] {
        let Some(r) = sqlx::query("SELECT value FROM instance_state WHERE key = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
        else {
            continue;
        };
        let text: String = col(&r, "value")?;
        let sealed = hex::decode(text)
            .map_err(|e| StoreError::corrupt(format!("instance_state {name}"), e))?;
        if let Some(new) = reseal(&aad, &sealed)? {
            sqlx::query("UPDATE instance_state SET value = $1, updated_at = $2 WHERE key = $3")
                .bind(hex::encode(new))
                .bind(now_ms())
                .bind(name)
                .execute(&mut **tx)
                .await?;
        }
    }

    let rows = sqlx::query("SELECT proposal_id, key, sealed_value FROM proposal_values")
        .fetch_all(&mut **tx)
        .await?;
    for r in &rows {
        let (id, key): (String, String) = (col(r, "proposal_id")?, col(r, "key")?);
        let sealed: Vec<u8> = col(r, "sealed_value")?;
        if let Some(new) = reseal(&Aad::proposal_value(&id, &key), &sealed)? {
            sqlx::query(
                "UPDATE proposal_values SET sealed_value = $1 WHERE proposal_id = $2 AND key = $3",
            )
            .bind(new)
            .bind(id)
            .bind(key)
            .execute(&mut **tx)
            .await?;
        }
    }

    Ok(())
}

/// Recomputes every service MAC that verifies under the old key.
async fn remac_services(
    tx: &mut Tx,
    rotation: &Rotation,
    counts: &mut RekeyCounts,
) -> Result<(), StoreError> {
    let rows = sqlx::query("SELECT vault_id, name, spec, mac FROM services")
        .fetch_all(&mut **tx)
        .await?;
    for r in &rows {
        let (v, name, spec): (String, String, String) =
            (col(r, "vault_id")?, col(r, "name")?, col(r, "spec")?);
        let mac: Vec<u8> = col(r, "mac")?;
        let Some(new) = rotation.remac_service(&v, &name, &spec, &mac) else {
            counts.untouched += 1;
            continue;
        };
        sqlx::query("UPDATE services SET mac = $1 WHERE vault_id = $2 AND name = $3")
            .bind(new)
            .bind(v)
            .bind(name)
            .execute(&mut **tx)
            .await?;
        counts.remaced += 1;
    }
    Ok(())
}
