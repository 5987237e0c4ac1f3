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

/// The fields of a `credentials` row under its MAC: everything that decides whether and which
/// value is used (type, state, active version, expiry, the metadata key's wrap, revocation).
/// Counters, description and timestamps of changes are not bound: they grant nothing.
#[allow(clippy::too_many_arguments)]
pub(super) fn credential_fields<'a>(
    vault_id: &'a str,
    key: &'a str,
    ty: &'a str,
    state: &'a str,
    active_version: Option<i64>,
    expires_at: Option<i64>,
    wrapped_key: &'a [u8],
    key_version: i64,
    revoked_at: Option<i64>,
) -> [MacField<'a>; 9] {
    [
        MacField::Text(vault_id),
        MacField::Text(key),
        MacField::Text(ty),
        MacField::Text(state),
        MacField::OptInt(active_version),
        MacField::OptInt(expires_at),
        MacField::Bytes(wrapped_key),
        MacField::Int(key_version),
        MacField::OptInt(revoked_at),
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

        bound += bind_rows_by_id(
            &mut tx,
            AuthorityRow::User,
            "id, email, role, password_hash",
            |r| {
                Ok(macs.mac(
                    AuthorityRow::User,
                    &user_fields(
                        &col::<String>(r, "id")?,
                        &col::<String>(r, "email")?,
                        &col::<String>(r, "role")?,
                        &col::<String>(r, "password_hash")?,
                    ),
                ))
            },
        )
        .await?;
        bound += bind_rows_by_id(
            &mut tx,
            AuthorityRow::Invite,
            "id, email, role, vault_grants, expires_at, token_hash, created_by",
            |r| {
                Ok(macs.mac(
                    AuthorityRow::Invite,
                    &invite_fields(
                        &col::<String>(r, "id")?,
                        &col::<String>(r, "email")?,
                        &col::<String>(r, "role")?,
                        &col::<String>(r, "vault_grants")?,
                        col::<i64>(r, "expires_at")?,
                        &col::<Vec<u8>>(r, "token_hash")?,
                        &col::<String>(r, "created_by")?,
                    ),
                ))
            },
        )
        .await?;
        bound += bind_rows_by_id(&mut tx, AuthorityRow::Agent, "id, name, created_by", |r| {
            Ok(macs.mac(
                AuthorityRow::Agent,
                &agent_fields(
                    &col::<String>(r, "id")?,
                    &col::<String>(r, "name")?,
                    col::<Option<String>>(r, "created_by")?.as_deref(),
                ),
            ))
        })
        .await?;
        bound += bind_rows_by_id(
            &mut tx,
            AuthorityRow::Token,
            "id, hash, kind, user_id, agent_id, vault_id, vault_role",
            |r| {
                Ok(macs.mac(
                    AuthorityRow::Token,
                    &token_fields(
                        &col::<String>(r, "id")?,
                        &col::<Vec<u8>>(r, "hash")?,
                        &col::<String>(r, "kind")?,
                        col::<Option<String>>(r, "user_id")?.as_deref(),
                        col::<Option<String>>(r, "agent_id")?.as_deref(),
                        col::<Option<String>>(r, "vault_id")?.as_deref(),
                        col::<Option<String>>(r, "vault_role")?.as_deref(),
                    ),
                ))
            },
        )
        .await?;

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
        self.changed(
            sqlx::query("DELETE FROM instance_state WHERE key = $1").bind(BACKFILL_PENDING_KEY),
        )
        .await
    }
}

/// Gives every row of `kind`'s table (keyed by `id`) that has no MAC the one `mac_of` computes
/// from `columns`; returns how many rows were bound.
async fn bind_rows_by_id(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: AuthorityRow,
    columns: &'static str,
    mac_of: impl Fn(&sqlx::any::AnyRow) -> Result<Vec<u8>, StoreError>,
) -> Result<u64, StoreError> {
    let table = kind.table();
    // Table and column names are constants of this module, never input.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {columns} FROM {table} WHERE mac IS NULL"
    )))
    .fetch_all(&mut **tx)
    .await?;
    let update = format!("UPDATE {table} SET mac = $1 WHERE id = $2 AND mac IS NULL");
    for r in &rows {
        sqlx::query(sqlx::AssertSqlSafe(update.clone()))
            .bind(mac_of(r)?)
            .bind(col::<String>(r, "id")?)
            .execute(&mut **tx)
            .await?;
    }
    Ok(rows.len() as u64)
}
