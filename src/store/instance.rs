//! Instance-wide state: the wrapped DEK, the CA, the setup token and the first owner.
//!
//! There is at most one setup token per database. Beside its keyed hash (what registration
//! checks) it is kept sealed under the DEK, so every instance sharing a Postgres database prints
//! the same valid token instead of each minting its own and invalidating the others'.

use super::{Store, StoreError, col, users};
use crate::crypto::KdfParams;
use crate::domain::{Email, InstanceRole, VaultName, VaultRole, now_ms};

const SETUP_TOKEN_KEY: &str = "setup_token_hash";
pub(super) const SETUP_TOKEN_SEALED_KEY: &str = "setup_token_sealed";
/// The token-hash key sealed under the instance key (hex).
pub(super) const TOKEN_HASH_KEY: &str = "token_hash_key_sealed";

/// The outstanding setup token.
#[derive(Clone, Debug)]
pub struct SetupTokenRecord {
    /// Its keyed hash (hex).
    pub hash_hex: String,
    /// The token sealed under the DEK; absent for a token made before tokens were kept sealed.
    pub sealed: Option<Vec<u8>>,
}

/// The wrapped data-encryption key and the parameters to unwrap it.
#[derive(Clone, Debug)]
pub struct MasterKeyRecord {
    /// Argon2id salt.
    pub kdf_salt: Vec<u8>,
    /// Argon2id cost.
    pub kdf: KdfParams,
    /// The instance key sealed under the KEK.
    pub wrapped_dek: Vec<u8>,
    /// Which instance-key version `wrapped_dek` holds (1 until the first rotation).
    pub key_version: i64,
}

/// The stored root CA.
#[derive(Clone, Debug)]
pub struct CaStateRecord {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key sealed under the DEK.
    pub sealed_key: Vec<u8>,
}

fn kdf_u32(row: &sqlx::any::AnyRow, name: &str) -> Result<u32, StoreError> {
    let v: i64 = col(row, name)?;
    u32::try_from(v).map_err(|e| StoreError::corrupt(format!("column {name}"), e))
}

impl Store {
    /// The wrapped DEK, if the instance has been initialized.
    pub async fn master_key(&self) -> Result<Option<MasterKeyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT kdf_salt, kdf_memory_kib, kdf_iterations, kdf_parallelism, wrapped_dek, key_version FROM master_key WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(MasterKeyRecord {
                kdf_salt: col(&r, "kdf_salt")?,
                kdf: KdfParams {
                    memory_kib: kdf_u32(&r, "kdf_memory_kib")?,
                    iterations: kdf_u32(&r, "kdf_iterations")?,
                    parallelism: kdf_u32(&r, "kdf_parallelism")?,
                },
                wrapped_dek: col(&r, "wrapped_dek")?,
                key_version: col(&r, "key_version")?,
            })
        })
        .transpose()
    }

    /// Stores the wrapped DEK unless another instance got there first; returns whether this one won.
    pub async fn insert_master_key_if_absent(
        &self,
        key: &MasterKeyRecord,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "INSERT INTO master_key (id, kdf_salt, kdf_memory_kib, kdf_iterations, kdf_parallelism, wrapped_dek, created_at, updated_at) \
             VALUES (1, $1, $2, $3, $4, $5, $6, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(key.kdf_salt.clone())
        .bind(i64::from(key.kdf.memory_kib))
        .bind(i64::from(key.kdf.iterations))
        .bind(i64::from(key.kdf.parallelism))
        .bind(key.wrapped_dek.clone())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Replaces the wrapped DEK (master password change), but only if the row still holds
    /// `expected_wrapped` of the same key version, so a concurrent change or rotation cannot
    /// be overwritten blindly.
    pub async fn replace_master_key(
        &self,
        expected_wrapped: &[u8],
        key: &MasterKeyRecord,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE master_key SET kdf_salt = $1, kdf_memory_kib = $2, kdf_iterations = $3, kdf_parallelism = $4, \
             wrapped_dek = $5, updated_at = $6 WHERE id = 1 AND wrapped_dek = $7 AND key_version = $8",
        )
        .bind(key.kdf_salt.clone())
        .bind(i64::from(key.kdf.memory_kib))
        .bind(i64::from(key.kdf.iterations))
        .bind(i64::from(key.kdf.parallelism))
        .bind(key.wrapped_dek.clone())
        .bind(now_ms())
        .bind(expected_wrapped.to_vec())
        .bind(key.key_version)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The token-hash key sealed under the instance key, if it has been stored.
    pub async fn sealed_token_hash_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT value FROM instance_state WHERE key = $1")
            .bind(TOKEN_HASH_KEY)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let text: String = col(&r, "value")?;
            hex::decode(text)
                .map_err(|e| StoreError::corrupt(format!("instance_state {TOKEN_HASH_KEY}"), e))
        })
        .transpose()
    }

    /// Stores the sealed token-hash key unless one is stored already (another instance won
    /// the race: its key is the same, derived from the same instance key); returns whether
    /// this one was stored.
    pub async fn insert_sealed_token_hash_key(&self, sealed: &[u8]) -> Result<bool, StoreError> {
        self.changed(
            sqlx::query(
                "INSERT INTO instance_state (key, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
            )
            .bind(TOKEN_HASH_KEY)
            .bind(hex::encode(sealed))
            .bind(now_ms()),
        )
        .await
    }

    /// The stored CA, if any.
    pub async fn ca_state(&self) -> Result<Option<CaStateRecord>, StoreError> {
        let row = sqlx::query("SELECT cert_pem, sealed_key FROM ca_state WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(CaStateRecord {
                cert_pem: col(&r, "cert_pem")?,
                sealed_key: col(&r, "sealed_key")?,
            })
        })
        .transpose()
    }

    /// Stores the CA unless another instance got there first.
    pub async fn insert_ca_state_if_absent(&self, ca: &CaStateRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO ca_state (id, cert_pem, sealed_key, created_at) VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ca.cert_pem)
        .bind(ca.sealed_key.clone())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The keyed hash (hex) of the current setup token, if one is outstanding.
    pub async fn setup_token_hash(&self) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM instance_state WHERE key = $1")
            .bind(SETUP_TOKEN_KEY)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| col(&r, "value")).transpose()
    }

    /// The outstanding setup token, if any.
    pub async fn setup_token(&self) -> Result<Option<SetupTokenRecord>, StoreError> {
        let Some(hash_hex) = self.setup_token_hash().await? else {
            return Ok(None);
        };
        let row = sqlx::query("SELECT value FROM instance_state WHERE key = $1")
            .bind(SETUP_TOKEN_SEALED_KEY)
            .fetch_optional(&self.pool)
            .await?;
        let sealed = row
            .map(|r| {
                let text: String = col(&r, "value")?;
                hex::decode(text).map_err(|e| {
                    StoreError::corrupt(format!("instance_state {SETUP_TOKEN_SEALED_KEY}"), e)
                })
            })
            .transpose()?;
        Ok(Some(SetupTokenRecord { hash_hex, sealed }))
    }

    /// Records a setup token unless one is outstanding already; returns whether this one is
    /// now the outstanding token (false: another instance got there first).
    pub async fn claim_setup_token(
        &self,
        hash_hex: &str,
        sealed: &[u8],
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let claimed = sqlx::query(
            "INSERT INTO instance_state (key, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
        )
        .bind(SETUP_TOKEN_KEY)
        .bind(hash_hex)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        put_sealed_setup_token(&mut tx, sealed).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Replaces the outstanding setup token, but only if it is still `expected_hash_hex` (a
    /// token from before tokens were kept sealed, whose value no instance can print any more);
    /// returns whether it was replaced.
    pub async fn replace_setup_token(
        &self,
        expected_hash_hex: &str,
        hash_hex: &str,
        sealed: &[u8],
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let replaced = sqlx::query(
            "UPDATE instance_state SET value = $1, updated_at = $2 WHERE key = $3 AND value = $4",
        )
        .bind(hash_hex)
        .bind(now_ms())
        .bind(SETUP_TOKEN_KEY)
        .bind(expected_hash_hex)
        .execute(&mut *tx)
        .await?;
        if replaced.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        put_sealed_setup_token(&mut tx, sealed).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Registers the first owner: burns the setup token, creates the user and a `default`
    /// vault they administer, all in one transaction. Returns `Ok(None)` when the token is not
    /// the outstanding one (wrong, already used, or users already exist).
    pub async fn register_first_owner(
        &self,
        setup_hash_hex: &str,
        user_id: &str,
        email: &Email,
        password_hash: &str,
        default_vault: (&str, &VaultName),
    ) -> Result<Option<()>, StoreError> {
        let macs = self.macs()?;
        let mut tx = self.begin_write().await?;
        let burnt = sqlx::query("DELETE FROM instance_state WHERE key = $1 AND value = $2")
            .bind(SETUP_TOKEN_KEY)
            .bind(setup_hash_hex)
            .execute(&mut *tx)
            .await?;
        if burnt.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        sqlx::query("DELETE FROM instance_state WHERE key = $1")
            .bind(SETUP_TOKEN_SEALED_KEY)
            .execute(&mut *tx)
            .await?;
        let existing = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&mut *tx)
            .await?;
        if col::<i64>(&existing, "n")? > 0 {
            // The token is burnt either way: it must never work once an owner exists.
            tx.commit().await?;
            return Ok(None);
        }
        users::insert_user(
            &mut tx,
            macs,
            user_id,
            email,
            password_hash,
            InstanceRole::Owner,
        )
        .await?;
        let now = now_ms();
        let (vault_id, vault_name) = default_vault;
        sqlx::query(
            "INSERT INTO vaults (id, name, unmatched_host_policy, created_at, updated_at) VALUES ($1, $2, 'tunnel', $3, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(vault_id)
        .bind(vault_name.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let vault = sqlx::query("SELECT id FROM vaults WHERE name = $1")
            .bind(vault_name.as_str())
            .fetch_one(&mut *tx)
            .await?;
        let vault_id: String = col(&vault, "id")?;
        super::grants::upsert_grant(
            &mut tx,
            macs,
            &vault_id,
            super::PrincipalKind::User,
            user_id,
            VaultRole::Admin,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(()))
    }
}

async fn put_sealed_setup_token(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    sealed: &[u8],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO instance_state (key, value, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )
    .bind(SETUP_TOKEN_SEALED_KEY)
    .bind(hex::encode(sealed))
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
