//! Bearer tokens, stored only as keyed hashes.

use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use super::authority::token_fields;
use super::{Store, StoreError, col, hash_col, parsed, parsed_opt};
use crate::crypto::TokenHash;
use crate::domain::{TokenStoreKind, VaultRole, now_ms};
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
}

impl TokenRecord {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
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
        })
    }

    /// Whether the token is usable at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now_ms)
    }
}

impl TokenRecord {
    fn mac(&self, macs: &AuthorityMacs) -> Vec<u8> {
        macs.mac(
            AuthorityRow::Token,
            &token_fields(
                &self.id,
                &self.hash.0,
                self.kind.as_str(),
                self.user_id.as_deref(),
                self.agent_id.as_deref(),
                self.vault_id.as_deref(),
                self.vault_role.map(|r| r.as_str()),
            ),
        )
    }
}

pub(super) async fn insert_token(
    tx: &mut Transaction<'static, Any>,
    macs: &AuthorityMacs,
    token: &TokenRecord,
) -> Result<(), StoreError> {
    let mac = token.mac(macs);
    sqlx::query(
        "INSERT INTO tokens (id, hash, kind, user_id, agent_id, vault_id, vault_role, label, expires_at, revoked_at, created_at, mac) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, $11)",
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
    .bind(token.created_at)
    .bind(mac)
    .execute(&mut **tx)
    .await
    .map_err(|e| StoreError::unique(e, "token"))?;
    Ok(())
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
    /// (re-pointed at another user or agent, another vault or role) is absent.
    pub async fn token_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, hash, kind, user_id, agent_id, vault_id, vault_role, label, expires_at, revoked_at, created_at, mac FROM tokens WHERE hash = $1",
        )
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
    /// another user or agent, vault or role is treated as absent wherever it is read.
    fn verified_token(&self, row: &AnyRow) -> Result<Option<TokenRecord>, StoreError> {
        let record = TokenRecord::from_row(row)?;
        let stored: Option<Vec<u8>> = col(row, "mac")?;
        let ok = self.macs()?.verify(
            AuthorityRow::Token,
            &token_fields(
                &record.id,
                &record.hash.0,
                &col::<String>(row, "kind")?,
                record.user_id.as_deref(),
                record.agent_id.as_deref(),
                record.vault_id.as_deref(),
                col::<Option<String>>(row, "vault_role")?.as_deref(),
            ),
            stored.as_deref(),
        );
        if !ok {
            super::authority::alarm(AuthorityRow::Token, &record.id);
        }
        Ok(ok.then_some(record))
    }

    /// Finds a token by its public id (absent when its MAC fails).
    pub async fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let sql = "SELECT id, hash, kind, user_id, agent_id, vault_id, vault_role, label, expires_at, revoked_at, created_at, mac FROM tokens WHERE id = $1";
        let token = self.row_by(sql, id, |r| self.verified_token(r));
        Ok(token.await?.flatten())
    }

    /// Revokes one token, and for an agent token the scoped tokens the agent minted. Returns
    /// whether a live token was revoked.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        // An agent's scoped tokens go with its agent token: an agent holds one agent token at a
        // time (rotation revokes the old one and its scoped tokens), so they are this token's.
        let statement = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND (id = $2 \
             OR (kind = 'scoped' AND agent_id = (SELECT agent_id FROM tokens WHERE id = $2 AND kind = 'agent')))",
        )
        .bind(now_ms())
        .bind(id);
        self.changed(statement).await
    }

    /// Revokes every live token of an agent, including scoped tokens it minted.
    pub async fn revoke_agent_tokens(&self, agent_id: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE agent_id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Live tokens of an agent, or scoped tokens of a vault.
    pub async fn list_tokens(
        &self,
        agent_id: Option<&str>,
        vault_id: Option<&str>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, hash, kind, user_id, agent_id, vault_id, vault_role, label, expires_at, revoked_at, created_at, mac FROM tokens \
             WHERE revoked_at IS NULL AND ($1 IS NULL OR agent_id = $1) AND ($2 IS NULL OR (vault_id = $2 AND kind = 'scoped')) \
             ORDER BY created_at",
        )
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
