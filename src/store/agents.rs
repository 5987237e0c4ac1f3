//! Agents: non-human identities that hold tokens.

use sqlx::any::AnyRow;

use super::authority::agent_fields;
use super::{PrincipalKind, Store, StoreError, TokenRecord, col};
use crate::domain::{AgentName, VaultRole};
use crate::keys::AuthorityRow;

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
    /// Whether the row passed its MAC (set when read; ignored when written). Lookups drop rows
    /// that did not, so their tokens resolve to nothing; the listing flags them.
    pub integrity_ok: bool,
}

impl AgentRecord {
    fn from_row(store: &Store, row: &AnyRow) -> Result<Self, StoreError> {
        let id: String = col(row, "id")?;
        let name: String = col(row, "name")?;
        let created_by: Option<String> = col(row, "created_by")?;
        let mac: Option<Vec<u8>> = col(row, "mac")?;
        let integrity_ok = store.verify_row(
            AuthorityRow::Agent,
            &id,
            None,
            &agent_fields(&id, &name, created_by.as_deref()),
            mac.as_deref(),
        )?;
        Ok(Self {
            id,
            name: AgentName::parse(name).map_err(|e| StoreError::corrupt("column name", e))?,
            created_by,
            created_at: col(row, "created_at")?,
            integrity_ok,
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
        let macs = self.macs()?;
        let mac = macs.mac(
            AuthorityRow::Agent,
            &agent_fields(&agent.id, agent.name.as_str(), agent.created_by.as_deref()),
        );
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO agents (id, name, created_by, created_at, updated_at, mac) VALUES ($1, $2, $3, $4, $4, $5)")
            .bind(&agent.id)
            .bind(agent.name.as_str())
            .bind(agent.created_by.as_deref())
            .bind(agent.created_at)
            .bind(mac)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::unique(e, "agent"))?;
        for (vault_id, role) in grants {
            super::grants::upsert_grant(
                &mut tx,
                macs,
                vault_id,
                PrincipalKind::Agent,
                &agent.id,
                *role,
            )
            .await?;
        }
        super::tokens::insert_token(&mut tx, macs, token).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Looks an agent up by name, including a row that fails its MAC (flagged), so that an
    /// admin can still find and delete it; callers that grant anything check `integrity_ok`.
    pub async fn agent_by_name(&self, name: &AgentName) -> Result<Option<AgentRecord>, StoreError> {
        let sql = "SELECT id, name, created_by, created_at, mac FROM agents WHERE name = $1";
        self.row_by(sql, name.as_str(), |r| AgentRecord::from_row(self, r))
            .await
    }

    /// Looks an agent up by id; a row that fails its MAC is treated as absent (its tokens
    /// resolve to nothing).
    pub async fn agent_by_id(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let sql = "SELECT id, name, created_by, created_at, mac FROM agents WHERE id = $1";
        let agent = self.row_by(sql, id, |r| AgentRecord::from_row(self, r));
        Ok(agent.await?.filter(|a| a.integrity_ok))
    }

    /// Every agent, by name, including rows that fail their MAC (flagged).
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT id, name, created_by, created_at, mac FROM agents ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| AgentRecord::from_row(self, r))
            .collect()
    }

    /// Revokes every live token of an agent and issues `token` in their place, atomically.
    pub async fn rotate_agent_token(
        &self,
        agent_id: &str,
        token: &TokenRecord,
    ) -> Result<(), StoreError> {
        let macs = self.macs()?;
        let mut tx = self.begin_write().await?;
        super::tokens::revoke_in(self, &mut tx, super::tokens::Revoke::Agent(agent_id)).await?;
        super::tokens::insert_token(&mut tx, macs, token).await?;
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
