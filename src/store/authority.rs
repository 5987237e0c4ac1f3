//! MACs over authority rows (grants, users, invites, agents, tokens). Every write of such a row stores
//! a MAC keyed from the DEK; every read checks it, and a row that fails is treated as absent and
//! raised as an integrity alarm. Rows from before migration 0003 get their MAC at the first
//! unseal after it (the DEK is not available earlier).

use super::{Store, StoreError, col};
use crate::keys::{AuthorityMacs, AuthorityRow, MacField};

/// Set by migration 0003; removed once the rows it found without a MAC have one.
const BACKFILL_PENDING_KEY: &str = "authority_macs_pending";

/// The fields of a `vault_grants` row under its MAC.
pub(super) fn grant_fields<'a>(
    vault_id: &'a str,
    kind: &'a str,
    principal_id: &'a str,
    role: &'a str,
) -> [MacField<'a>; 4] {
    [
        MacField::Text(vault_id),
        MacField::Text(kind),
        MacField::Text(principal_id),
        MacField::Text(role),
    ]
}

/// The fields of a `users` row under its MAC.
pub(super) fn user_fields<'a>(
    id: &'a str,
    email: &'a str,
    role: &'a str,
    password_hash: &'a str,
) -> [MacField<'a>; 4] {
    [
        MacField::Text(id),
        MacField::Text(email),
        MacField::Text(role),
        MacField::Text(password_hash),
    ]
}

/// The fields of an `invites` row under its MAC.
#[allow(clippy::too_many_arguments)]
pub(super) fn invite_fields<'a>(
    id: &'a str,
    email: &'a str,
    role: &'a str,
    vault_grants: &'a str,
    expires_at: i64,
    token_hash: &'a [u8],
    created_by: &'a str,
) -> [MacField<'a>; 7] {
    [
        MacField::Text(id),
        MacField::Text(email),
        MacField::Text(role),
        MacField::Text(vault_grants),
        MacField::Int(expires_at),
        MacField::Bytes(token_hash),
        MacField::Text(created_by),
    ]
}

/// The fields of an `agents` row under its MAC.
pub(super) fn agent_fields<'a>(
    id: &'a str,
    name: &'a str,
    created_by: Option<&'a str>,
) -> [MacField<'a>; 3] {
    [
        MacField::Text(id),
        MacField::Text(name),
        MacField::OptText(created_by),
    ]
}

/// The fields of a `tokens` row under its MAC: everything that says whose it is and what it
/// may do. Its lifetime (expiry, revocation) is not bound: an edit there only matters to a
/// writer who also holds the raw token, which the database never stores.
pub(super) fn token_fields<'a>(
    id: &'a str,
    hash: &'a [u8],
    kind: &'a str,
    user_id: Option<&'a str>,
    agent_id: Option<&'a str>,
    vault_id: Option<&'a str>,
    vault_role: Option<&'a str>,
) -> [MacField<'a>; 7] {
    [
        MacField::Text(id),
        MacField::Bytes(hash),
        MacField::Text(kind),
        MacField::OptText(user_id),
        MacField::OptText(agent_id),
        MacField::OptText(vault_id),
        MacField::OptText(vault_role),
    ]
}

/// Logs that a row failed its MAC. Only the table and the row's id: never a value.
pub(super) fn alarm(kind: AuthorityRow, row_id: &str) {
    tracing::error!(
        table = kind.table(),
        row = %row_id,
        "INTEGRITY ALARM: an authority row failed its MAC (edited outside agent-vault); it is treated as absent"
    );
}

impl Store {
    /// This store with the keys that bind authority rows; without them those rows can be
    /// neither read nor written.
    pub fn with_authority_macs(&self, macs: AuthorityMacs) -> Store {
        Store {
            pool: self.pool.clone(),
            backend: self.backend,
            authority: Some(macs),
        }
    }

    pub(super) fn macs(&self) -> Result<&AuthorityMacs, StoreError> {
        self.authority.as_ref().ok_or(StoreError::Sealed)
    }

    /// Checks a row's MAC, raising the alarm when it fails.
    pub(super) fn verify_row(
        &self,
        kind: AuthorityRow,
        row_id: &str,
        fields: &[MacField<'_>],
        stored: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let ok = self.macs()?.verify(kind, fields, stored);
        if !ok {
            alarm(kind, row_id);
        }
        Ok(ok)
    }

    /// Gives a MAC to every authority row that has none, once, right after migration 0003
    /// (which marks the backfill as pending). Returns how many rows were bound. Rows edited
    /// before this runs are trusted as they are: that is the price of adding MACs to an
    /// existing database, and the count is logged so an operator can see it happen.
    pub async fn backfill_authority_macs(&self) -> Result<u64, StoreError> {
        let macs = self.macs()?.clone();
        let mut tx = self.begin_write().await?;
        let pending = sqlx::query("SELECT value FROM instance_state WHERE key = $1")
            .bind(BACKFILL_PENDING_KEY)
            .fetch_optional(&mut *tx)
            .await?;
        if pending.is_none() {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut bound = 0u64;

        let rows = sqlx::query(
            "SELECT vault_id, principal_kind, principal_id, role FROM vault_grants WHERE mac IS NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            let (v, k, p, role): (String, String, String, String) = (
                col(r, "vault_id")?,
                col(r, "principal_kind")?,
                col(r, "principal_id")?,
                col(r, "role")?,
            );
            let mac = macs.mac(AuthorityRow::Grant, &grant_fields(&v, &k, &p, &role));
            sqlx::query(
                "UPDATE vault_grants SET mac = $1 WHERE vault_id = $2 AND principal_kind = $3 AND principal_id = $4 AND mac IS NULL",
            )
            .bind(mac)
            .bind(&v)
            .bind(&k)
            .bind(&p)
            .execute(&mut *tx)
            .await?;
            bound += 1;
        }

        let rows =
            sqlx::query("SELECT id, email, role, password_hash FROM users WHERE mac IS NULL")
                .fetch_all(&mut *tx)
                .await?;
        for r in &rows {
            let (id, email, role, phc): (String, String, String, String) = (
                col(r, "id")?,
                col(r, "email")?,
                col(r, "role")?,
                col(r, "password_hash")?,
            );
            let mac = macs.mac(AuthorityRow::User, &user_fields(&id, &email, &role, &phc));
            sqlx::query("UPDATE users SET mac = $1 WHERE id = $2 AND mac IS NULL")
                .bind(mac)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            bound += 1;
        }

        let rows = sqlx::query(
            "SELECT id, email, role, vault_grants, expires_at, token_hash, created_by FROM invites WHERE mac IS NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            let id: String = col(r, "id")?;
            let email: String = col(r, "email")?;
            let role: String = col(r, "role")?;
            let grants: String = col(r, "vault_grants")?;
            let expires_at: i64 = col(r, "expires_at")?;
            let hash: Vec<u8> = col(r, "token_hash")?;
            let created_by: String = col(r, "created_by")?;
            let mac = macs.mac(
                AuthorityRow::Invite,
                &invite_fields(&id, &email, &role, &grants, expires_at, &hash, &created_by),
            );
            sqlx::query("UPDATE invites SET mac = $1 WHERE id = $2 AND mac IS NULL")
                .bind(mac)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            bound += 1;
        }

        let rows = sqlx::query("SELECT id, name, created_by FROM agents WHERE mac IS NULL")
            .fetch_all(&mut *tx)
            .await?;
        for r in &rows {
            let id: String = col(r, "id")?;
            let name: String = col(r, "name")?;
            let created_by: Option<String> = col(r, "created_by")?;
            let mac = macs.mac(
                AuthorityRow::Agent,
                &agent_fields(&id, &name, created_by.as_deref()),
            );
            sqlx::query("UPDATE agents SET mac = $1 WHERE id = $2 AND mac IS NULL")
                .bind(mac)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            bound += 1;
        }

        let rows = sqlx::query(
            "SELECT id, hash, kind, user_id, agent_id, vault_id, vault_role FROM tokens WHERE mac IS NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            let id: String = col(r, "id")?;
            let hash: Vec<u8> = col(r, "hash")?;
            let kind: String = col(r, "kind")?;
            let user_id: Option<String> = col(r, "user_id")?;
            let agent_id: Option<String> = col(r, "agent_id")?;
            let vault_id: Option<String> = col(r, "vault_id")?;
            let vault_role: Option<String> = col(r, "vault_role")?;
            let mac = macs.mac(
                AuthorityRow::Token,
                &token_fields(
                    &id,
                    &hash,
                    &kind,
                    user_id.as_deref(),
                    agent_id.as_deref(),
                    vault_id.as_deref(),
                    vault_role.as_deref(),
                ),
            );
            sqlx::query("UPDATE tokens SET mac = $1 WHERE id = $2 AND mac IS NULL")
                .bind(mac)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            bound += 1;
        }

        sqlx::query("DELETE FROM instance_state WHERE key = $1")
            .bind(BACKFILL_PENDING_KEY)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(bound)
    }

    /// Removes the backfill marker without binding anything; says whether it was there. On a
    /// database whose MACs are already bound, a marker can only come from a database writer.
    pub async fn discard_backfill_marker(&self) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM instance_state WHERE key = $1")
            .bind(BACKFILL_PENDING_KEY)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
