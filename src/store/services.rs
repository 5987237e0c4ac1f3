//! Service definitions: one row per service, its JSON spec and a MAC binding it to the vault.

use super::{Store, StoreError, col};
use crate::domain::now_ms;

/// A stored service definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRow {
    /// Unique name within the vault.
    pub name: String,
    /// Declaration order (matters for ties in matching).
    pub position: i64,
    /// The JSON spec.
    pub spec: String,
    /// HMAC over (vault id, name, spec) under a key derived from the DEK.
    pub mac: Vec<u8>,
}

/// Replaces a vault's services inside a transaction.
pub(super) async fn replace_services_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    vault_id: &str,
    rows: &[ServiceRow],
) -> Result<(), StoreError> {
    let now = now_ms();
    lock_vault(tx, vault_id).await?;
    sqlx::query("DELETE FROM services WHERE vault_id = $1")
        .bind(vault_id)
        .execute(&mut **tx)
        .await?;
    for row in rows {
        sqlx::query(
            "INSERT INTO services (vault_id, name, position, spec, mac, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(vault_id)
        .bind(&row.name)
        .bind(row.position)
        .bind(&row.spec)
        .bind(row.mac.clone())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(|e| StoreError::unique(e, "service"))?;
    }
    Ok(())
}

/// Takes the vault's row lock for the rest of the transaction (on SQLite the write transaction
/// already excludes other writers), so writers that change a vault's bindings are serialized and
/// always lock in the same order.
pub(super) async fn lock_vault(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    vault_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE vaults SET updated_at = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(vault_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A vault's service rows in declaration order, on the pool or inside a transaction.
async fn select_services<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    vault_id: &str,
) -> Result<Vec<ServiceRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, position, spec, mac FROM services WHERE vault_id = $1 ORDER BY position, name",
    )
    .bind(vault_id)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ServiceRow {
                name: col(r, "name")?,
                position: col(r, "position")?,
                spec: col(r, "spec")?,
                mac: col(r, "mac")?,
            })
        })
        .collect()
}

/// A vault's service rows in declaration order, read inside a transaction.
pub(super) async fn services_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    vault_id: &str,
) -> Result<Vec<ServiceRow>, StoreError> {
    select_services(&mut **tx, vault_id).await
}

impl Store {
    /// Replaces all of a vault's services atomically.
    pub async fn replace_services(
        &self,
        vault_id: &str,
        rows: &[ServiceRow],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        replace_services_in(&mut tx, vault_id, rows).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Inserts or replaces one service by name, keeping its position when it exists.
    pub async fn upsert_service(&self, vault_id: &str, row: &ServiceRow) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let next = sqlx::query(
            "SELECT COALESCE(MAX(position), -1) + 1 AS next FROM services WHERE vault_id = $1",
        )
        .bind(vault_id)
        .fetch_one(&mut *tx)
        .await?;
        let next: i64 = col(&next, "next")?;
        sqlx::query(
            "INSERT INTO services (vault_id, name, position, spec, mac, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (vault_id, name) DO UPDATE SET spec = excluded.spec, mac = excluded.mac, updated_at = excluded.updated_at",
        )
        .bind(vault_id)
        .bind(&row.name)
        .bind(next)
        .bind(&row.spec)
        .bind(row.mac.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a service by name. Returns whether it existed.
    pub async fn delete_service(&self, vault_id: &str, name: &str) -> Result<bool, StoreError> {
        self.changed(
            sqlx::query("DELETE FROM services WHERE vault_id = $1 AND name = $2")
                .bind(vault_id)
                .bind(name),
        )
        .await
    }

    /// A vault's services in declaration order.
    pub async fn list_services(&self, vault_id: &str) -> Result<Vec<ServiceRow>, StoreError> {
        select_services(&self.pool, vault_id).await
    }
}
