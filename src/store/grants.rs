//! Vault role grants for users and agents.

use sqlx::{Any, Transaction};

use super::{Store, StoreError, col, parsed};
use crate::domain::{VaultRole, now_ms};

/// Whether a principal is a human user or an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A human with an email and password.
    User,
    /// A non-human identity holding tokens.
    Agent,
}

impl PrincipalKind {
    /// The stored text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Agent => "agent",
        }
    }
}

impl std::str::FromStr for PrincipalKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Self::User),
            "agent" => Ok(Self::Agent),
            other => Err(format!("unknown principal kind {other:?}")),
        }
    }
}

/// A member of a vault, with a name people recognise.
#[derive(Clone, Debug)]
pub struct MemberRecord {
    /// User or agent.
    pub kind: PrincipalKind,
    /// The principal's id.
    pub id: String,
    /// The user's email or the agent's name.
    pub display: String,
    /// The role in this vault.
    pub role: VaultRole,
}

pub(super) async fn upsert_grant(
    tx: &mut Transaction<'static, Any>,
    vault_id: &str,
    kind: PrincipalKind,
    principal_id: &str,
    role: VaultRole,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO vault_grants (vault_id, principal_kind, principal_id, role, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (vault_id, principal_kind, principal_id) DO UPDATE SET role = excluded.role",
    )
    .bind(vault_id)
    .bind(kind.as_str())
    .bind(principal_id)
    .bind(role.as_str())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Grants (or changes) a principal's role in a vault.
    pub async fn grant(
        &self,
        vault_id: &str,
        kind: PrincipalKind,
        principal_id: &str,
        role: VaultRole,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        upsert_grant(&mut tx, vault_id, kind, principal_id, role).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a principal from a vault. Returns whether a grant existed.
    pub async fn revoke_grant(
        &self,
        vault_id: &str,
        kind: PrincipalKind,
        principal_id: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "DELETE FROM vault_grants WHERE vault_id = $1 AND principal_kind = $2 AND principal_id = $3",
        )
        .bind(vault_id)
        .bind(kind.as_str())
        .bind(principal_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The principal's role in a vault, if any.
    pub async fn role_in_vault(
        &self,
        vault_id: &str,
        kind: PrincipalKind,
        principal_id: &str,
    ) -> Result<Option<VaultRole>, StoreError> {
        let row = sqlx::query(
            "SELECT role FROM vault_grants WHERE vault_id = $1 AND principal_kind = $2 AND principal_id = $3",
        )
        .bind(vault_id)
        .bind(kind.as_str())
        .bind(principal_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(|r| parsed(r, "role")).transpose()
    }

    /// Every vault a principal holds a grant in: (vault id, role).
    pub async fn grants_of(
        &self,
        kind: PrincipalKind,
        principal_id: &str,
    ) -> Result<Vec<(String, VaultRole)>, StoreError> {
        let rows = sqlx::query(
            "SELECT vault_id, role FROM vault_grants WHERE principal_kind = $1 AND principal_id = $2",
        )
        .bind(kind.as_str())
        .bind(principal_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((col(r, "vault_id")?, parsed(r, "role")?)))
            .collect()
    }

    /// The members of a vault, users first, then agents.
    pub async fn list_members(&self, vault_id: &str) -> Result<Vec<MemberRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.principal_kind AS kind, g.principal_id AS id, g.role AS role, \
                    COALESCE(u.email, a.name, g.principal_id) AS display \
             FROM vault_grants g \
             LEFT JOIN users u ON g.principal_kind = 'user' AND u.id = g.principal_id \
             LEFT JOIN agents a ON g.principal_kind = 'agent' AND a.id = g.principal_id \
             WHERE g.vault_id = $1 ORDER BY g.principal_kind DESC, display",
        )
        .bind(vault_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MemberRecord {
                    kind: parsed(r, "kind")?,
                    id: col(r, "id")?,
                    display: col(r, "display")?,
                    role: parsed(r, "role")?,
                })
            })
            .collect()
    }

    /// How many admins a vault has (to refuse removing the last one).
    pub async fn count_vault_admins(&self, vault_id: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM vault_grants WHERE vault_id = $1 AND role = 'admin'",
        )
        .bind(vault_id)
        .fetch_one(&self.pool)
        .await?;
        col(&row, "n")
    }
}
