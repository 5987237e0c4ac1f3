//! Vaults and their settings.

use sqlx::any::AnyRow;

use super::{PrincipalKind, Store, StoreError, col, parsed};
use crate::crypto::random_id;
use crate::domain::{UnmatchedHostPolicy, VaultName, VaultRole, now_ms};

/// A stored vault.
#[derive(Clone, Debug)]
pub struct VaultRecord {
    /// Stable id; credentials are sealed against it, so renaming never breaks them.
    pub id: String,
    /// The slug people type.
    pub name: VaultName,
    /// What the proxy does with hosts no service binds.
    pub unmatched_host_policy: UnmatchedHostPolicy,
    /// Creation time (ms).
    pub created_at: i64,
    /// Last change (ms).
    pub updated_at: i64,
}

impl VaultRecord {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: col(row, "id")?,
            name: parsed(row, "name")?,
            unmatched_host_policy: parsed(row, "unmatched_host_policy")?,
            created_at: col(row, "created_at")?,
            updated_at: col(row, "updated_at")?,
        })
    }
}

impl Store {
    /// Creates a vault and, when a creator is given, makes them its admin in the same transaction.
    pub async fn create_vault(
        &self,
        name: &VaultName,
        creator: Option<(PrincipalKind, &str)>,
    ) -> Result<VaultRecord, StoreError> {
        let id = random_id()?;
        let now = now_ms();
        let macs = match creator {
            Some(_) => Some(self.macs()?),
            None => None,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO vaults (id, name, unmatched_host_policy, created_at, updated_at) VALUES ($1, $2, 'tunnel', $3, $3)",
        )
        .bind(&id)
        .bind(name.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::unique(e, "vault"))?;
        if let (Some((kind, principal_id)), Some(macs)) = (creator, macs) {
            super::grants::upsert_grant(&mut tx, macs, &id, kind, principal_id, VaultRole::Admin)
                .await?;
        }
        tx.commit().await?;
        Ok(VaultRecord {
            id,
            name: name.clone(),
            unmatched_host_policy: UnmatchedHostPolicy::Tunnel,
            created_at: now,
            updated_at: now,
        })
    }

    /// Looks a vault up by name.
    pub async fn vault_by_name(&self, name: &VaultName) -> Result<Option<VaultRecord>, StoreError> {
        let row = sqlx::query("SELECT id, name, unmatched_host_policy, created_at, updated_at FROM vaults WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(VaultRecord::from_row).transpose()
    }

    /// Looks a vault up by id.
    pub async fn vault_by_id(&self, id: &str) -> Result<Option<VaultRecord>, StoreError> {
        let row = sqlx::query("SELECT id, name, unmatched_host_policy, created_at, updated_at FROM vaults WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(VaultRecord::from_row).transpose()
    }

    /// Every vault, by name.
    pub async fn list_vaults(&self) -> Result<Vec<VaultRecord>, StoreError> {
        let rows = sqlx::query("SELECT id, name, unmatched_host_policy, created_at, updated_at FROM vaults ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(VaultRecord::from_row).collect()
    }

    /// Deletes a vault and, by cascade, everything in it. Returns whether it existed.
    pub async fn delete_vault(&self, id: &str) -> Result<bool, StoreError> {
        self.changed(sqlx::query("DELETE FROM vaults WHERE id = $1").bind(id))
            .await
    }

    /// Sets the unmatched-host policy.
    pub async fn set_unmatched_host_policy(
        &self,
        id: &str,
        policy: UnmatchedHostPolicy,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE vaults SET unmatched_host_policy = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(policy.as_str())
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
