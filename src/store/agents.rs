//! Agents: non-human identities that hold tokens.

use sqlx::any::AnyRow;

use super::{PrincipalKind, Store, StoreError, TokenRecord, col};
use crate::domain::{AgentName, VaultRole, now_ms};

/// A stored agent.
#[derive(Clone, Debug)]
pub struct AgentRecord {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: AgentName,
    /// Who created it (`user:<id>` or `agent:<id>`).
    pub created_by: Option<String>,
    /// Creation time (ms).
    pub created_at: i64,
}

impl AgentRecord {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let name: String = col(row, "name")?;
        Ok(Self {
            id: col(row, "id")?,
            name: AgentName::parse(name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            created_by: col(row, "created_by")?,
            created_at: col(row, "created_at")?,
        })
    }
}

impl Store {
    /// Creates an agent with its vault grants and first token in one transaction.
    pub async fn create_agent(
        &self,
        agent: &AgentRecord,
        grants: &[(String, VaultRole)],
        token: &TokenRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO agents (id, name, created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)")
            .bind(&agent.id)
            .bind(agent.name.as_str())
            .bind(agent.created_by.as_deref())
            .bind(agent.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::unique(e, "agent"))?;
        for (vault_id, role) in grants {
            super::grants::upsert_grant(&mut tx, vault_id, PrincipalKind::Agent, &agent.id, *role)
                .await?;
        }
        super::tokens::insert_token(&mut tx, token).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Looks an agent up by name.
    pub async fn agent_by_name(&self, name: &AgentName) -> Result<Option<AgentRecord>, StoreError> {
        let row =
            sqlx::query("SELECT id, name, created_by, created_at FROM agents WHERE name = $1")
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(AgentRecord::from_row).transpose()
    }

    /// Looks an agent up by id.
    pub async fn agent_by_id(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let row = sqlx::query("SELECT id, name, created_by, created_at FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(AgentRecord::from_row).transpose()
    }

    /// Every agent, by name.
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query("SELECT id, name, created_by, created_at FROM agents ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(AgentRecord::from_row).collect()
    }

    /// Revokes every live token of an agent and issues `token` in their place, atomically.
    pub async fn rotate_agent_token(
        &self,
        agent_id: &str,
        token: &TokenRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE agent_id = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
        super::tokens::insert_token(&mut tx, token).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes an agent; its tokens and grants go with it.
    pub async fn delete_agent(&self, agent_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM vault_grants WHERE principal_kind = 'agent' AND principal_id = $1",
        )
        .bind(agent_id)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }
}
