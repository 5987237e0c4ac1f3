//! Proposals: creation with a per-vault number, expiry, rejection, and the one transaction that
//! applies an approved proposal.

use sqlx::any::AnyRow;

use super::credentials::{
    CredentialWrite, check_credential_count, count_credentials, remove_credentials,
    write_credentials,
};
use super::services::replace_services_in;
use super::{Backend, ServiceRow, Store, StoreError, col, hash_col, parsed};
use crate::crypto::TokenHash;
use crate::domain::{Actor, CredentialKey, ProposalStatus, now_ms};

/// A stored proposal. `content` is the validated JSON; values live in `proposal_values`.
#[derive(Clone, Debug)]
pub struct ProposalRecord {
    /// Random id (used in links).
    pub id: String,
    /// The vault.
    pub vault_id: String,
    /// The per-vault number people use (`proposal show N`).
    pub seq: i64,
    /// Status, with expiry applied at read time.
    pub status: ProposalStatus,
    /// Who raised it (an agent, a user, or a scoped token by its id; never a raw token).
    pub created_by: Actor,
    /// The id of the token that created it (for status polling by its creator).
    pub creator_token_id: Option<String>,
    /// The message for the human.
    pub message: String,
    /// The content JSON.
    pub content: String,
    /// SHA-256 of the content.
    pub content_hash: String,
    /// HMAC of the view-only approval link token.
    pub approval_token_hash: TokenHash,
    /// Expiry (ms).
    pub expires_at: i64,
    /// Who decided (user id).
    pub reviewed_by: Option<String>,
    /// When.
    pub reviewed_at: Option<i64>,
    /// The rejection reason.
    pub review_note: Option<String>,
    /// Creation time (ms).
    pub created_at: i64,
}

/// An agent-supplied value or metadata map, sealed with AAD (proposal id, [`Self::row_key`]).
#[derive(Clone)]
pub struct ProposalValueRecord {
    /// The key.
    pub key: CredentialKey,
    /// What the row holds.
    pub part: SuppliedPart,
    /// The sealed value.
    pub sealed_value: Vec<u8>,
}

/// What an agent-supplied row holds for its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuppliedPart {
    /// The credential's value (row key: the credential key, as before metadata existed).
    Value,
    /// The credential's metadata as a JSON object (row key: `KEY#metadata`; `#` is never
    /// part of a credential key, so the two rows and their AADs cannot be confused).
    Metadata,
}

impl ProposalValueRecord {
    /// The text of the row's `key` column, also the key part of its AAD.
    pub fn row_key(key: &CredentialKey, part: SuppliedPart) -> String {
        match part {
            SuppliedPart::Value => key.as_str().to_owned(),
            SuppliedPart::Metadata => format!("{}#metadata", key.as_str()),
        }
    }
}

impl std::fmt::Debug for ProposalValueRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProposalValueRecord")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ProposalRecord {
    fn from_row(row: &AnyRow, now: i64) -> Result<Self, StoreError> {
        let mut status: ProposalStatus = parsed(row, "status")?;
        let expires_at: i64 = col(row, "expires_at")?;
        if status == ProposalStatus::Pending && expires_at <= now {
            // Expiry holds on every read, whether or not the sweep has run yet.
            status = ProposalStatus::Expired;
        }
        let kind: String = col(row, "created_by_kind")?;
        let created_by = Actor::from_stored(&kind, col::<String>(row, "created_by_id")?)
            .map_err(|e| StoreError::corrupt("column created_by_kind", e))?;
        Ok(Self {
            id: col(row, "id")?,
            vault_id: col(row, "vault_id")?,
            seq: col(row, "seq")?,
            status,
            created_by,
            creator_token_id: col(row, "creator_token_id")?,
            message: col(row, "message")?,
            content: col(row, "content")?,
            content_hash: col(row, "content_hash")?,
            approval_token_hash: hash_col(row, "approval_token_hash")?,
            expires_at,
            reviewed_by: col(row, "reviewed_by")?,
            reviewed_at: col(row, "reviewed_at")?,
            review_note: col(row, "review_note")?,
            created_at: col(row, "created_at")?,
        })
    }
}

const COLUMNS: &str = "id, vault_id, seq, status, created_by_kind, created_by_id, creator_token_id, message, content, content_hash, \
     approval_token_hash, expires_at, reviewed_by, reviewed_at, review_note, created_at";

/// Why a proposal was not created.
#[derive(Debug, PartialEq, Eq)]
pub enum CreateRefused {
    /// The vault already has this many pending proposals.
    TooManyPending(i64),
}

/// Everything an approval writes.
#[derive(Debug)]
pub struct ApplyWrites<'a> {
    /// The vault's complete service list afterwards.
    pub services: &'a [ServiceRow],
    /// Credentials to set.
    pub credentials: &'a [CredentialWrite],
    /// Credentials to delete.
    pub delete_keys: &'a [CredentialKey],
    /// The approving user.
    pub reviewer: &'a str,
    /// Most credentials the vault may hold afterwards.
    pub max_credentials: usize,
}

impl Store {
    /// Stores a new proposal with the next per-vault number, unless the vault already has
    /// `max_pending` pending proposals.
    pub async fn create_proposal(
        &self,
        record: &ProposalRecord,
        values: &[ProposalValueRecord],
        max_pending: i64,
    ) -> Result<Result<i64, CreateRefused>, StoreError> {
        let now = now_ms();
        // Two instances on Postgres can race for the same number; the unique index refuses
        // the loser, which retries with the next one.
        for _ in 0..5 {
            let mut tx = self.begin_write().await?;
            if self.backend == Backend::Postgres {
                // Concurrent creators (or instances) must not both pass the count below; the
                // vault's row lock serialises them (NO KEY: foreign-key checks of other writers
                // are not blocked). SQLite's write transaction already does.
                sqlx::query("SELECT id FROM vaults WHERE id = $1 FOR NO KEY UPDATE")
                    .bind(&record.vault_id)
                    .execute(&mut *tx)
                    .await?;
            }
            let pending = sqlx::query("SELECT COUNT(*) AS n FROM proposals WHERE vault_id = $1 AND status = 'pending' AND expires_at > $2")
                .bind(&record.vault_id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            let pending: i64 = col(&pending, "n")?;
            if pending >= max_pending {
                tx.rollback().await?;
                return Ok(Err(CreateRefused::TooManyPending(pending)));
            }
            let next = sqlx::query(
                "SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM proposals WHERE vault_id = $1",
            )
            .bind(&record.vault_id)
            .fetch_one(&mut *tx)
            .await?;
            let seq: i64 = col(&next, "next")?;
            let inserted = sqlx::query(
                "INSERT INTO proposals (id, vault_id, seq, status, created_by_kind, created_by_id, creator_token_id, message, content, \
                 content_hash, approval_token_hash, expires_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
            )
            .bind(&record.id)
            .bind(&record.vault_id)
            .bind(seq)
            .bind(record.created_by.as_str())
            .bind(record.created_by.id())
            .bind(record.creator_token_id.as_deref())
            .bind(&record.message)
            .bind(&record.content)
            .bind(&record.content_hash)
            .bind(record.approval_token_hash.0.to_vec())
            .bind(record.expires_at)
            .bind(record.created_at)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    let _ = tx.rollback().await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            for v in values {
                sqlx::query("INSERT INTO proposal_values (proposal_id, key, sealed_value) VALUES ($1, $2, $3)")
                    .bind(&record.id)
                    .bind(ProposalValueRecord::row_key(&v.key, v.part))
                    .bind(v.sealed_value.clone())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            return Ok(Ok(seq));
        }
        Err(StoreError::Conflict("proposal number"))
    }

    /// A proposal by id.
    pub async fn proposal(&self, id: &str) -> Result<Option<ProposalRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM proposals WHERE id = $1");
        self.row_by(sqlx::AssertSqlSafe(sql), id, |r| {
            ProposalRecord::from_row(r, now_ms())
        })
        .await
    }

    /// A proposal by its per-vault number.
    pub async fn proposal_by_seq(
        &self,
        vault_id: &str,
        seq: i64,
    ) -> Result<Option<ProposalRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM proposals WHERE vault_id = $1 AND seq = $2"
        )))
        .bind(vault_id)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(|r| ProposalRecord::from_row(r, now_ms()))
            .transpose()
    }

    /// A vault's proposals, newest first, optionally with one status.
    pub async fn list_proposals(
        &self,
        vault_id: &str,
        status: Option<ProposalStatus>,
    ) -> Result<Vec<ProposalRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM proposals WHERE vault_id = $1 ORDER BY seq DESC"
        )))
        .bind(vault_id)
        .fetch_all(&self.pool)
        .await?;
        let now = now_ms();
        let all = rows
            .iter()
            .map(|r| ProposalRecord::from_row(r, now))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(all
            .into_iter()
            .filter(|p| status.is_none_or(|s| p.status == s))
            .collect())
    }

    /// The sealed values an agent supplied.
    pub async fn proposal_values(&self, id: &str) -> Result<Vec<ProposalValueRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT key, sealed_value FROM proposal_values WHERE proposal_id = $1 ORDER BY key",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let key: String = col(r, "key")?;
                let (key, part) = match key.strip_suffix("#metadata") {
                    Some(k) => (k.to_owned(), SuppliedPart::Metadata),
                    None => (key, SuppliedPart::Value),
                };
                Ok(ProposalValueRecord {
                    key: CredentialKey::parse(key)
                        .map_err(|e| StoreError::corrupt("column key", e))?,
                    part,
                    sealed_value: col(r, "sealed_value")?,
                })
            })
            .collect()
    }

    /// Marks overdue pending proposals expired and drops their sealed values. Returns how many.
    pub async fn expire_proposals(&self) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM proposal_values WHERE proposal_id IN (SELECT id FROM proposals WHERE status = 'pending' AND expires_at <= $1)",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query("UPDATE proposals SET status = 'expired', updated_at = $1 WHERE status = 'pending' AND expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Rejects a pending, unexpired proposal. Returns false if it was not pending any more.
    pub async fn reject_proposal(
        &self,
        id: &str,
        reviewer: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE proposals SET status = 'rejected', reviewed_by = $1, reviewed_at = $2, review_note = $3, updated_at = $2 \
             WHERE id = $4 AND status = 'pending' AND expires_at > $2",
        )
        .bind(reviewer)
        .bind(now)
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM proposal_values WHERE proposal_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Applies an approved proposal in one transaction: the status flips from pending to
    /// applied (so it can happen once), the services are replaced, credentials are written and
    /// deleted. Returns false (and changes nothing) if the proposal was no longer pending.
    pub async fn apply_proposal(
        &self,
        proposal: &ProposalRecord,
        writes: ApplyWrites<'_>,
        keyring: &crate::keys::Keyring,
        still_current: impl Fn(&[ServiceRow], &[CredentialKey]) -> bool,
    ) -> Result<ApplyOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        // Lock the vault, then check that it is still what the approver reviewed: a concurrent
        // edit must not be silently overwritten by the proposal's service list.
        super::services::lock_vault(&mut tx, &proposal.vault_id).await?;
        let rows = super::services::services_in(&mut tx, &proposal.vault_id).await?;
        let keys: Vec<CredentialKey> =
            sqlx::query("SELECT key FROM credentials WHERE vault_id = $1 ORDER BY key")
                .bind(&proposal.vault_id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| {
                    let k: String = col(r, "key")?;
                    CredentialKey::parse(k).map_err(|e| StoreError::corrupt("column key", e))
                })
                .collect::<Result<_, _>>()?;
        if !still_current(&rows, &keys) {
            tx.rollback().await?;
            return Ok(ApplyOutcome::VaultChanged);
        }
        let done = sqlx::query(
            "UPDATE proposals SET status = 'applied', reviewed_by = $1, reviewed_at = $2, updated_at = $2 \
             WHERE id = $3 AND status = 'pending' AND expires_at > $2",
        )
        .bind(writes.reviewer)
        .bind(now)
        .bind(&proposal.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(ApplyOutcome::NotPending);
        }
        replace_services_in(&mut tx, &proposal.vault_id, writes.services).await?;
        let before = count_credentials(&mut tx, &proposal.vault_id).await?;
        write_credentials(
            self,
            &mut tx,
            keyring,
            &proposal.vault_id,
            writes.credentials,
        )
        .await?;
        remove_credentials(&mut tx, &proposal.vault_id, writes.delete_keys).await?;
        check_credential_count(&mut tx, &proposal.vault_id, before, writes.max_credentials).await?;
        sqlx::query("DELETE FROM proposal_values WHERE proposal_id = $1")
            .bind(&proposal.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ApplyOutcome::Applied)
    }
}

/// What `apply_proposal` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Applied, in one transaction.
    Applied,
    /// The proposal was no longer pending (decided, or expired).
    NotPending,
    /// The vault changed since the approver reviewed it.
    VaultChanged,
}
