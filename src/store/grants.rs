//! Vault role grants for users and agents.

use sqlx::{Any, Transaction};

use super::authority::{agent_fields, grant_fields, user_fields};
use super::{Store, StoreError, col, parsed};
use crate::domain::{PrincipalKind, VaultRole, now_ms};
use crate::keys::{AuthorityMacs, AuthorityRow};

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
    /// Whether the grant (and the user or agent row behind it) passed its MAC; a member that
    /// did not holds no role, and the API shows `integrity_error`.
    pub integrity_ok: bool,
}

/// What a guarded grant change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantChange {
    /// The grant was written or removed.
    Done,
    /// There was no grant to remove.
    NotMember,
    /// Refused: it would leave the vault without a human admin.
    LastHumanAdmin,
}

/// How a grant row is named in alarms and audit events (its key; no value).
fn grant_row_id(vault_id: &str, kind: &str, principal_id: &str) -> String {
    format!("{vault_id}/{kind}/{principal_id}")
}

pub(super) async fn upsert_grant(
    tx: &mut Transaction<'static, Any>,
    macs: &AuthorityMacs,
    vault_id: &str,
    kind: PrincipalKind,
    principal_id: &str,
    role: VaultRole,
) -> Result<(), StoreError> {
    let mac = macs.mac(
        AuthorityRow::Grant,
        &grant_fields(vault_id, kind.as_str(), principal_id, role.as_str()),
    );
    sqlx::query(
        "INSERT INTO vault_grants (vault_id, principal_kind, principal_id, role, created_at, mac) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (vault_id, principal_kind, principal_id) DO UPDATE SET role = excluded.role, mac = excluded.mac",
    )
    .bind(vault_id)
    .bind(kind.as_str())
    .bind(principal_id)
    .bind(role.as_str())
    .bind(now_ms())
    .bind(mac)
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
        let macs = self.macs()?;
        let mut tx = self.begin_write().await?;
        upsert_grant(&mut tx, macs, vault_id, kind, principal_id, role).await?;
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
        let statement = sqlx::query(
            "DELETE FROM vault_grants WHERE vault_id = $1 AND principal_kind = $2 AND principal_id = $3",
        )
        .bind(vault_id)
        .bind(kind.as_str())
        .bind(principal_id);
        self.changed(statement).await
    }

    /// The principal's role in a vault, if any.
    pub async fn role_in_vault(
        &self,
        vault_id: &str,
        kind: PrincipalKind,
        principal_id: &str,
    ) -> Result<Option<VaultRole>, StoreError> {
        let row = sqlx::query(
            "SELECT role, mac FROM vault_grants WHERE vault_id = $1 AND principal_kind = $2 AND principal_id = $3",
        )
        .bind(vault_id)
        .bind(kind.as_str())
        .bind(principal_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let role: String = col(&row, "role")?;
        let mac: Option<Vec<u8>> = col(&row, "mac")?;
        if !self.verify_row(
            AuthorityRow::Grant,
            &grant_row_id(vault_id, kind.as_str(), principal_id),
            Some(vault_id),
            &grant_fields(vault_id, kind.as_str(), principal_id, &role),
            mac.as_deref(),
        )? {
            return Ok(None);
        }
        parsed(&row, "role").map(Some)
    }

    /// Every vault a principal holds a grant in: (vault id, role).
    pub async fn grants_of(
        &self,
        kind: PrincipalKind,
        principal_id: &str,
    ) -> Result<Vec<(String, VaultRole)>, StoreError> {
        let rows = sqlx::query(
            "SELECT vault_id, role, mac FROM vault_grants WHERE principal_kind = $1 AND principal_id = $2",
        )
        .bind(kind.as_str())
        .bind(principal_id)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let vault_id: String = col(r, "vault_id")?;
            let role: String = col(r, "role")?;
            let mac: Option<Vec<u8>> = col(r, "mac")?;
            if self.verify_row(
                AuthorityRow::Grant,
                &grant_row_id(&vault_id, kind.as_str(), principal_id),
                Some(&vault_id),
                &grant_fields(&vault_id, kind.as_str(), principal_id, &role),
                mac.as_deref(),
            )? {
                out.push((vault_id, parsed(r, "role")?));
            }
        }
        Ok(out)
    }

    /// The members of a vault, users first, then agents. Members whose grant, user or agent row
    /// fails its MAC are listed with `integrity_ok: false` so an admin can see and remove them.
    pub async fn list_members(&self, vault_id: &str) -> Result<Vec<MemberRecord>, StoreError> {
        self.members_with(&self.pool, vault_id).await
    }

    async fn members_with<'e, E>(
        &self,
        executor: E,
        vault_id: &str,
    ) -> Result<Vec<MemberRecord>, StoreError>
    where
        E: sqlx::Executor<'e, Database = Any>,
    {
        let rows = sqlx::query(
            "SELECT g.principal_kind AS kind, g.principal_id AS id, g.role AS role, g.mac AS grant_mac, \
                    u.id AS user_id, u.email AS user_email, u.role AS user_role, u.password_hash AS user_phc, u.mac AS user_mac, \
                    a.id AS agent_id, a.name AS agent_name, a.created_by AS agent_created_by, a.mac AS agent_mac, \
                    COALESCE(u.email, a.name, g.principal_id) AS display \
             FROM vault_grants g \
             LEFT JOIN users u ON g.principal_kind = 'user' AND u.id = g.principal_id \
             LEFT JOIN agents a ON g.principal_kind = 'agent' AND a.id = g.principal_id \
             WHERE g.vault_id = $1 ORDER BY g.principal_kind DESC, display",
        )
        .bind(vault_id)
        .fetch_all(executor)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let kind: PrincipalKind = parsed(r, "kind")?;
            let id: String = col(r, "id")?;
            let role: String = col(r, "role")?;
            let grant_mac: Option<Vec<u8>> = col(r, "grant_mac")?;
            let mut ok = self.verify_row(
                AuthorityRow::Grant,
                &grant_row_id(vault_id, kind.as_str(), &id),
                Some(vault_id),
                &grant_fields(vault_id, kind.as_str(), &id, &role),
                grant_mac.as_deref(),
            )?;
            // The name shown (and, for users, the address approval mail goes to) comes from the
            // principal's own row, so that row must be authentic too.
            match kind {
                PrincipalKind::User => {
                    let uid: Option<String> = col(r, "user_id")?;
                    if uid.is_some() {
                        let email: String = col(r, "user_email")?;
                        let urole: String = col(r, "user_role")?;
                        let phc: String = col(r, "user_phc")?;
                        let umac: Option<Vec<u8>> = col(r, "user_mac")?;
                        ok &= self.verify_row(
                            AuthorityRow::User,
                            &id,
                            None,
                            &user_fields(&id, &email, &urole, &phc),
                            umac.as_deref(),
                        )?;
                    }
                }
                PrincipalKind::Agent => {
                    let aid: Option<String> = col(r, "agent_id")?;
                    if aid.is_some() {
                        let name: String = col(r, "agent_name")?;
                        let created_by: Option<String> = col(r, "agent_created_by")?;
                        let amac: Option<Vec<u8>> = col(r, "agent_mac")?;
                        ok &= self.verify_row(
                            AuthorityRow::Agent,
                            &id,
                            None,
                            &agent_fields(&id, &name, created_by.as_deref()),
                            amac.as_deref(),
                        )?;
                    }
                }
            }
            out.push(MemberRecord {
                kind,
                id,
                display: col(r, "display")?,
                role: parsed(r, "role")?,
                integrity_ok: ok,
            });
        }
        Ok(out)
    }

    /// Grants, changes (`Some(role)`) or removes (`None`) a principal's role, refusing to take
    /// the admin role from the last human admin of the vault. Check and write share one
    /// transaction under the vault's lock, so two admins stepping down at once cannot both pass.
    pub async fn change_grant_keeping_a_human_admin(
        &self,
        vault_id: &str,
        kind: PrincipalKind,
        principal_id: &str,
        role: Option<VaultRole>,
    ) -> Result<GrantChange, StoreError> {
        let macs = self.macs()?;
        let mut tx = self.begin_write().await?;
        super::services::lock_vault(&mut tx, vault_id).await?;
        if kind == PrincipalKind::User && role != Some(VaultRole::Admin) {
            let members = self.members_with(&mut *tx, vault_id).await?;
            let human_admin = |m: &MemberRecord| {
                m.integrity_ok && m.kind == PrincipalKind::User && m.role == VaultRole::Admin
            };
            let is_admin = members
                .iter()
                .any(|m| m.id == principal_id && human_admin(m));
            if is_admin && members.iter().filter(|m| human_admin(m)).count() <= 1 {
                tx.rollback().await?;
                return Ok(GrantChange::LastHumanAdmin);
            }
        }
        match role {
            Some(role) => upsert_grant(&mut tx, macs, vault_id, kind, principal_id, role).await?,
            None => {
                let done = sqlx::query(
                    "DELETE FROM vault_grants WHERE vault_id = $1 AND principal_kind = $2 AND principal_id = $3",
                )
                .bind(vault_id)
                .bind(kind.as_str())
                .bind(principal_id)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Ok(GrantChange::NotMember);
                }
            }
        }
        tx.commit().await?;
        Ok(GrantChange::Done)
    }
}
