//! Invitations for further users.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use super::authority::{InviteMacView, invite_fields};
use super::{PrincipalKind, Store, StoreError, col, hash_col, parsed};
use crate::crypto::TokenHash;
use crate::domain::{Email, InstanceRole, VaultRole, now_ms};
use crate::keys::{AuthorityMacs, AuthorityRow};

/// A vault role granted when the invitation is accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteVaultGrant {
    /// The vault's id.
    pub vault_id: String,
    /// The role to grant.
    pub role: VaultRole,
}

/// A stored invitation (the raw token is only ever shown to its creator).
#[derive(Clone, Debug)]
pub struct InviteRecord {
    /// Public id.
    pub id: String,
    /// HMAC of the invitation token.
    pub token_hash: TokenHash,
    /// Who may accept it.
    pub email: Email,
    /// Instance role on acceptance.
    pub role: InstanceRole,
    /// Vault roles on acceptance.
    pub vault_grants: Vec<InviteVaultGrant>,
    /// Who created it (user id).
    pub created_by: String,
    /// Expiry (ms).
    pub expires_at: i64,
    /// When it was accepted (ms).
    pub accepted_at: Option<i64>,
    /// When it was revoked (ms).
    pub revoked_at: Option<i64>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Whether the row passed its MAC (set when read; ignored when written). Lookups drop rows
    /// that did not; the listing shows them as `integrity_error`.
    pub integrity_ok: bool,
}

impl InviteRecord {
    fn from_row(store: &Store, row: &AnyRow) -> Result<Self, StoreError> {
        let id: String = col(row, "id")?;
        let hash: Vec<u8> = col(row, "token_hash")?;
        let grants: String = col(row, "vault_grants")?;
        let email: String = col(row, "email")?;
        let role: String = col(row, "role")?;
        let expires_at: i64 = col(row, "expires_at")?;
        let created_by: String = col(row, "created_by")?;
        let accepted_at: Option<i64> = col(row, "accepted_at")?;
        let revoked_at: Option<i64> = col(row, "revoked_at")?;
        let mac: Option<Vec<u8>> = col(row, "mac")?;
        let integrity_ok = store.verify_row(
            AuthorityRow::Invite,
            &id,
            None,
            &invite_fields(&InviteMacView {
                id: &id,
                email: &email,
                role: &role,
                vault_grants: &grants,
                expires_at,
                token_hash: &hash,
                created_by: &created_by,
                accepted_at,
                revoked_at,
            }),
            mac.as_deref(),
        )?;
        Ok(Self {
            id,
            token_hash: hash_col(row, "token_hash")?,
            email: Email::parse(email).map_err(|e| StoreError::corrupt("column email", e))?,
            role: parsed(row, "role")?,
            vault_grants: serde_json::from_str(&grants)
                .map_err(|e| StoreError::corrupt("column vault_grants", e))?,
            created_by,
            expires_at,
            accepted_at,
            revoked_at,
            created_at: col(row, "created_at")?,
            integrity_ok,
        })
    }

    /// The row's MAC under `macs`, with `grants` its stored `vault_grants` text.
    fn mac(&self, macs: &AuthorityMacs, grants: &str) -> Vec<u8> {
        macs.mac(
            AuthorityRow::Invite,
            &invite_fields(&InviteMacView {
                id: &self.id,
                email: self.email.as_str(),
                role: self.role.as_str(),
                vault_grants: grants,
                expires_at: self.expires_at,
                token_hash: &self.token_hash.0,
                created_by: &self.created_by,
                accepted_at: self.accepted_at,
                revoked_at: self.revoked_at,
            }),
        )
    }

    /// Pending, accepted, revoked or expired at `now`.
    pub fn status(&self, now: i64) -> &'static str {
        if self.accepted_at.is_some() {
            "accepted"
        } else if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at <= now {
            "expired"
        } else {
            "pending"
        }
    }
}

/// One invitation by id, every column its MAC covers.
const INVITE_BY_ID: &str = "SELECT id, token_hash, email, role, vault_grants, created_by, expires_at, accepted_at, revoked_at, created_at, mac FROM invites WHERE id = $1";

impl Store {
    /// Stores a new invitation.
    pub async fn create_invite(&self, invite: &InviteRecord) -> Result<(), StoreError> {
        let macs = self.macs()?;
        let grants = serde_json::to_string(&invite.vault_grants)
            .map_err(|e| StoreError::corrupt("column vault_grants", e))?;
        let mac = invite.mac(macs, &grants);
        sqlx::query(
            "INSERT INTO invites (id, token_hash, email, role, vault_grants, created_by, expires_at, accepted_at, revoked_at, created_at, mac) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&invite.id)
        .bind(invite.token_hash.0.to_vec())
        .bind(invite.email.as_str())
        .bind(invite.role.as_str())
        .bind(grants)
        .bind(&invite.created_by)
        .bind(invite.expires_at)
        .bind(invite.accepted_at)
        .bind(invite.revoked_at)
        .bind(invite.created_at)
        .bind(mac)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::unique(e, "invite"))?;
        Ok(())
    }

    /// Finds an invitation by its token hash; one that fails its MAC is refused as absent.
    pub async fn invite_by_hash(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<InviteRecord>, StoreError> {
        let row = sqlx::query("SELECT id, token_hash, email, role, vault_grants, created_by, expires_at, accepted_at, revoked_at, created_at, mac FROM invites WHERE token_hash = $1")
        .bind(hash.0.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .as_ref()
            .map(|r| InviteRecord::from_row(self, r))
            .transpose()?
            .filter(|i| i.integrity_ok && i.token_hash.ct_eq(hash)))
    }

    /// Every invitation, newest first, including rows that fail their MAC (flagged).
    pub async fn list_invites(&self) -> Result<Vec<InviteRecord>, StoreError> {
        let rows = sqlx::query("SELECT id, token_hash, email, role, vault_grants, created_by, expires_at, accepted_at, revoked_at, created_at, mac FROM invites ORDER BY created_at DESC")
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| InviteRecord::from_row(self, r))
            .collect()
    }

    /// Revokes a pending invitation, re-binding its MAC with the revocation (so clearing it
    /// later makes the row fail). Returns whether one was revoked. A row that fails its MAC is
    /// revoked but left failing.
    pub async fn revoke_invite(&self, id: &str) -> Result<bool, StoreError> {
        let macs = self.macs()?;
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(INVITE_BY_ID)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        let invite = InviteRecord::from_row(self, &row)?;
        let done = if invite.integrity_ok {
            let grants: String = col(&row, "vault_grants")?;
            let stored: Option<Vec<u8>> = col(&row, "mac")?;
            let revoked = InviteRecord {
                revoked_at: Some(now),
                ..invite
            };
            sqlx::query(
                "UPDATE invites SET revoked_at = $1, mac = $2 WHERE id = $3 AND revoked_at IS NULL AND accepted_at IS NULL AND mac = $4",
            )
            .bind(now)
            .bind(revoked.mac(macs, &grants))
            .bind(id)
            .bind(stored)
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query(
                "UPDATE invites SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL AND accepted_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
        };
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Accepts an invitation: marks it used and creates the user with its grants, atomically.
    /// Returns `Ok(false)` when the invitation is no longer pending.
    pub async fn accept_invite(
        &self,
        invite: &InviteRecord,
        user_id: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let macs = self.macs()?;
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        // Re-read and re-check inside the transaction: the caller's copy was checked, but the
        // row could have been edited since, and the grants come from this copy.
        let row = sqlx::query(INVITE_BY_ID)
            .bind(&invite.id)
            .fetch_optional(&mut *tx)
            .await?;
        let current = row
            .as_ref()
            .map(|r| InviteRecord::from_row(self, r))
            .transpose()?;
        let Some(invite) = current.filter(|i| {
            i.integrity_ok
                && i.token_hash.ct_eq(&invite.token_hash)
                && i.email == invite.email
                && i.role == invite.role
                && i.vault_grants == invite.vault_grants
        }) else {
            tx.rollback().await?;
            return Ok(false);
        };
        let invite = &invite;
        let (grants, stored): (String, Option<Vec<u8>>) = match &row {
            Some(r) => (col(r, "vault_grants")?, col(r, "mac")?),
            None => return Err(StoreError::NotFound),
        };
        let accepted = InviteRecord {
            accepted_at: Some(now),
            ..invite.clone()
        };
        let done = sqlx::query(
            "UPDATE invites SET accepted_at = $1, mac = $2 WHERE id = $3 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $1 AND mac = $4",
        )
        .bind(now)
        .bind(accepted.mac(macs, &grants))
        .bind(&invite.id)
        .bind(stored)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        super::users::insert_user(
            &mut tx,
            macs,
            user_id,
            &invite.email,
            password_hash,
            invite.role,
        )
        .await?;
        for grant in &invite.vault_grants {
            // A vault deleted since the invitation was made is skipped, not an error.
            let exists = sqlx::query("SELECT id FROM vaults WHERE id = $1")
                .bind(&grant.vault_id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_some() {
                super::grants::upsert_grant(
                    &mut tx,
                    macs,
                    &grant.vault_id,
                    PrincipalKind::User,
                    user_id,
                    grant.role,
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }
}
