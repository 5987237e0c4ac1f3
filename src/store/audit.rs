//! Control-plane audit events: who changed or revealed what.

use serde::Serialize;

use super::{Store, StoreError, col};
use crate::domain::{Actor, now_ms};

/// An event to record. `detail` must never contain a secret value.
#[derive(Clone, Debug)]
pub struct AuditEvent<'a> {
    /// Who did it.
    pub actor: &'a Actor,
    /// What happened, e.g. `credential.set`.
    pub action: &'a str,
    /// The vault concerned.
    pub vault_id: Option<&'a str>,
    /// What it happened to (key names, service names, agent names).
    pub target: String,
    /// Extra context.
    pub detail: String,
}

/// A stored event.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord {
    /// Monotonic id.
    pub id: i64,
    /// Time (ms).
    pub at: i64,
    /// Actor kind.
    pub actor_kind: String,
    /// Actor id.
    pub actor_id: String,
    /// Action.
    pub action: String,
    /// Target.
    pub target: String,
    /// Detail.
    pub detail: String,
}

impl Store {
    /// Records an event.
    pub async fn record_audit(&self, event: &AuditEvent<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_events (at, actor_kind, actor_id, action, vault_id, target, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(now_ms())
        .bind(event.actor.as_str())
        .bind(event.actor.id())
        .bind(event.action)
        .bind(event.vault_id)
        .bind(&event.target)
        .bind(&event.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest events of a vault.
    pub async fn list_audit(
        &self,
        vault_id: &str,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor_kind, actor_id, action, target, detail FROM audit_events WHERE vault_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(vault_id)
        .bind(limit.clamp(1, 1000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    id: col(r, "id")?,
                    at: col(r, "at")?,
                    actor_kind: col(r, "actor_kind")?,
                    actor_id: col(r, "actor_id")?,
                    action: col(r, "action")?,
                    target: col(r, "target")?,
                    detail: col(r, "detail")?,
                })
            })
            .collect()
    }
}
