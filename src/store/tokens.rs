//! Bearer tokens, stored only as keyed hashes.

use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use super::authority::token_fields;
use super::{Store, StoreError, TokenStoreKind, col, hash_col, parsed, parsed_opt};
use crate::crypto::TokenHash;
use crate::domain::{VaultRole, now_ms};
use crate::keys::{AuthorityMacs, AuthorityRow};

/// A stored token (never the raw value).
#[derive(Clone, Debug)]
pub struct TokenRecord {
    /// Public id, safe to show and to revoke by.
    pub id: String,
    /// HMAC of the raw token.
    pub hash: TokenHash,
    /// What it is.
    pub kind: TokenStoreKind,
    /// The user it belongs to (session), or who minted it (scoped).
    pub user_id: Option<String>,
    /// The agent it belongs to (agent), or who minted it (scoped).
    pub agent_id: Option<String>,
    /// The one vault a scoped token works in.
    pub vault_id: Option<String>,
    /// The role a scoped token carries in that vault.
    pub vault_role: Option<VaultRole>,
    /// Free text to recognise it by.
    pub label: String,
    /// Expiry (ms), none for tokens that do not expire.
    pub expires_at: Option<i64>,
    /// When it was revoked (ms).
    pub revoked_at: Option<i64>,
    /// Creation time (ms).
    pub created_at: i64,
    /// The token that minted it (a scoped token's minter's token): revoking that token revokes
    /// this one too.
    pub parent_id: Option<String>,
}

/// Every column of a `tokens` row, in the order the store selects them.
pub(super) const TOKEN_COLUMNS: &str = "id, hash, kind, user_id, agent_id, vault_id, vault_role, label, expires_at, revoked_at, created_at, parent_id, mac";

impl TokenRecord {
    pub(super) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: col(row, "id")?,
            hash: hash_col(row, "hash")?,
            kind: parsed(row, "kind")?,
            user_id: col(row, "user_id")?,
            agent_id: col(row, "agent_id")?,
            vault_id: col(row, "vault_id")?,
            vault_role: parsed_opt(row, "vault_role")?,
            label: col(row, "label")?,
            expires_at: col(row, "expires_at")?,
            revoked_at: col(row, "revoked_at")?,
            created_at: col(row, "created_at")?,
            parent_id: col(row, "parent_id")?,
        })
    }

    /// Whether the token is usable at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now_ms)
    }

    fn mac(&self, macs: &AuthorityMacs) -> Vec<u8> {
        macs.mac(AuthorityRow::Token, &token_fields(self))
    }
}

pub(super) async fn insert_token(
    tx: &mut Transaction<'static, Any>,
    macs: &AuthorityMacs,
    token: &TokenRecord,
) -> Result<(), StoreError> {
    let mac = token.mac(macs);
    sqlx::query(
        "INSERT INTO tokens (id, hash, kind, user_id, agent_id, vault_id, vault_role, label, expires_at, revoked_at, created_at, parent_id, mac) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&token.id)
    .bind(token.hash.0.to_vec())
    .bind(token.kind.as_str())
    .bind(token.user_id.as_deref())
    .bind(token.agent_id.as_deref())
    .bind(token.vault_id.as_deref())
    .bind(token.vault_role.map(|r| r.as_str()))
    .bind(&token.label)
    .bind(token.expires_at)
    .bind(token.revoked_at)
    .bind(token.created_at)
    .bind(token.parent_id.as_deref())
    .bind(mac)
    .execute(&mut **tx)
    .await
    .map_err(|e| StoreError::unique(e, "token"))?;
    Ok(())
}

/// Which live tokens a revocation starts from; the tokens they minted go with them.
#[derive(Clone, Copy)]
pub(super) enum Revoke<'a> {
    /// One token by id; for an agent token also the scoped tokens its agent minted before
    /// tokens recorded their parent (an agent holds one agent token at a time).
    Token(&'a str),
    /// Every token of an agent, and every scoped token it minted.
    Agent(&'a str),
    /// A user's login sessions (API and web).
    UserSessions(&'a str),
}

/// Revokes the live tokens `what` names and, through `parent_id`, every token minted from them,
/// inside `tx`. Each row that passes its MAC is re-bound with its revocation, so clearing
/// `revoked_at` later makes it fail; a row that fails is revoked but left failing (re-binding it
/// would launder the edit). Returns the ids revoked, the ones `what` named first.
pub(super) async fn revoke_in(
    store: &Store,
    tx: &mut Transaction<'static, Any>,
    what: Revoke<'_>,
) -> Result<Vec<String>, StoreError> {
    let macs = store.macs()?;
    let now = now_ms();
    let select = |condition: &str| {
        format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE revoked_at IS NULL AND {condition}")
    };
    let (condition, key) = match what {
        Revoke::Token(id) => ("id = $1", id),
        Revoke::Agent(agent) => ("agent_id = $1", agent),
        Revoke::UserSessions(user) => ("user_id = $1 AND kind IN ('session', 'web')", user),
    };
    let mut queue = sqlx::query(sqlx::AssertSqlSafe(select(condition)))
        .bind(key.to_owned())
        .fetch_all(&mut **tx)
        .await?;
    let mut revoked: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let children = select("parent_id = $1");
    let legacy_children = select("kind = 'scoped' AND agent_id = $1");
    while let Some(row) = queue.pop() {
        let token = TokenRecord::from_row(&row)?;
        if !seen.insert(token.id.clone()) {
            continue;
        }
        let stored: Option<Vec<u8>> = col(&row, "mac")?;
        let intact = store.verify_row(
            AuthorityRow::Token,
            &token.id,
            token.vault_id.as_deref(),
            &token_fields(&token),
            stored.as_deref(),
        )?;
        let done = if intact {
            let revoked_row = TokenRecord {
                revoked_at: Some(now),
                ..token.clone()
            };
            sqlx::query(
                "UPDATE tokens SET revoked_at = $1, mac = $2 WHERE id = $3 AND revoked_at IS NULL AND mac = $4",
            )
            .bind(now)
            .bind(revoked_row.mac(macs))
            .bind(&token.id)
            .bind(stored)
            .execute(&mut **tx)
            .await?
        } else {
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(&token.id)
                .execute(&mut **tx)
                .await?
        };
        if done.rows_affected() == 0 {
            continue;
        }
        revoked.push(token.id.clone());
        queue.extend(
            sqlx::query(sqlx::AssertSqlSafe(children.clone()))
                .bind(token.id.clone())
                .fetch_all(&mut **tx)
                .await?,
        );
        if intact
            && token.kind == TokenStoreKind::Agent
            && let (Revoke::Token(_), Some(agent)) = (what, &token.agent_id)
        {
            queue.extend(
                sqlx::query(sqlx::AssertSqlSafe(legacy_children.clone()))
                    .bind(agent.clone())
                    .fetch_all(&mut **tx)
                    .await?,
            );
        }
    }
    Ok(revoked)
}

impl Store {
    /// Stores a new token.
    pub async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let macs = self.macs()?;
        let mut tx = self.begin_write().await?;
        insert_token(&mut tx, macs, token).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Finds a token by its keyed hash (live or not; the caller decides). A row whose MAC fails
    /// (re-pointed at another user or agent, another vault or role, un-revoked or extended) is
    /// absent.
    pub async fn token_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1"
        )))
        .bind(hash.0.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        let record = match row {
            Some(row) => self.verified_token(&row)?,
            None => None,
        };
        // The index lookup already matched; compare again in constant time so a future change
        // to the lookup can never turn this into a prefix comparison.
        Ok(record.filter(|r| r.hash.ct_eq(hash)))
    }

    /// The token a row holds, or `None` (with an alarm) when its MAC fails: a row re-pointed at
    /// another user or agent, vault or role, or with its lifetime edited, is treated as absent
    /// wherever it is read.
    fn verified_token(&self, row: &AnyRow) -> Result<Option<TokenRecord>, StoreError> {
        let record = TokenRecord::from_row(row)?;
        let stored: Option<Vec<u8>> = col(row, "mac")?;
        let ok = self.verify_row(
            AuthorityRow::Token,
            &record.id,
            record.vault_id.as_deref(),
            &token_fields(&record),
            stored.as_deref(),
        )?;
        Ok(ok.then_some(record))
    }

    /// Finds a token by its public id (absent when its MAC fails).
    pub async fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1");
        let token = self.row_by(sqlx::AssertSqlSafe(sql), id, |r| self.verified_token(r));
        Ok(token.await?.flatten())
    }

    /// Revokes one token and every token minted from it (for an agent token, also the scoped
    /// tokens its agent minted), in one transaction. Returns whether the token itself was live
    /// and is now revoked.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked = revoke_in(self, &mut tx, Revoke::Token(id)).await?;
        tx.commit().await?;
        Ok(revoked.first().is_some_and(|first| first == id))
    }

    /// Moves a live token's expiry, re-binding its MAC in the same transaction; returns whether
    /// the token was live and intact. The API never extends a token; tests shorten lifetimes
    /// below its one-minute floor with this, the way an operator tool could.
    pub async fn set_token_expiry(
        &self,
        id: &str,
        expires_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        let macs = self.macs()?;
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1 AND revoked_at IS NULL"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(token) = row
            .as_ref()
            .map(|r| self.verified_token(r))
            .transpose()?
            .flatten()
        else {
            tx.rollback().await?;
            return Ok(false);
        };
        let stored: Option<Vec<u8>> = row.as_ref().map(|r| col(r, "mac")).transpose()?.flatten();
        let moved = TokenRecord {
            expires_at,
            ..token
        };
        let done = sqlx::query(
            "UPDATE tokens SET expires_at = $1, mac = $2 WHERE id = $3 AND revoked_at IS NULL AND mac = $4",
        )
        .bind(expires_at)
        .bind(moved.mac(macs))
        .bind(id)
        .bind(stored)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revokes every live token of an agent, including scoped tokens it minted.
    pub async fn revoke_agent_tokens(&self, agent_id: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked = revoke_in(self, &mut tx, Revoke::Agent(agent_id)).await?;
        tx.commit().await?;
        Ok(revoked.len() as u64)
    }

    /// Live tokens of an agent, or scoped tokens of a vault.
    pub async fn list_tokens(
        &self,
        agent_id: Option<&str>,
        vault_id: Option<&str>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens \
             WHERE revoked_at IS NULL AND ($1 IS NULL OR agent_id = $1) AND ($2 IS NULL OR (vault_id = $2 AND kind = 'scoped')) \
             ORDER BY created_at"
        )))
        .bind(agent_id)
        .bind(vault_id)
        .fetch_all(&self.pool)
        .await?;
        let now = now_ms();
        let mut live = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(t) = self.verified_token(row)?
                && t.is_live(now)
            {
                live.push(t);
            }
        }
        Ok(live)
    }

    /// Deletes tokens that expired or were revoked more than `grace_ms` ago.
    pub async fn purge_dead_tokens(&self, grace_ms: i64) -> Result<u64, StoreError> {
        let cutoff = now_ms() - grace_ms;
        let done = sqlx::query(
            "DELETE FROM tokens WHERE (expires_at IS NOT NULL AND expires_at < $1) OR (revoked_at IS NOT NULL AND revoked_at < $1)",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
