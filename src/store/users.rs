//! Human users.

use sqlx::any::AnyRow;

use super::authority::user_fields;
use super::{Store, StoreError, col, parsed};
use crate::domain::{Email, InstanceRole, now_ms};
use crate::keys::{AuthorityMacs, AuthorityRow};

/// A stored user. The password hash is a PHC string (Argon2id, salt and cost inside).
#[derive(Clone)]
pub struct UserRecord {
    /// Stable id.
    pub id: String,
    /// Lower-cased email.
    pub email: Email,
    /// PHC string; never leaves the server.
    pub password_hash: String,
    /// Owner or member.
    pub role: InstanceRole,
    /// Creation time (ms).
    pub created_at: i64,
    /// Whether the row passed its MAC. Lookups drop rows that did not; listings keep them
    /// with this false so the API can report `integrity_error`.
    pub integrity_ok: bool,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("role", &self.role)
            .field("integrity_ok", &self.integrity_ok)
            .finish_non_exhaustive()
    }
}

impl UserRecord {
    fn from_row(store: &Store, row: &AnyRow) -> Result<Self, StoreError> {
        let id: String = col(row, "id")?;
        let email: String = col(row, "email")?;
        let password_hash: String = col(row, "password_hash")?;
        let role: String = col(row, "role")?;
        let mac: Option<Vec<u8>> = col(row, "mac")?;
        let integrity_ok = store.verify_row(
            AuthorityRow::User,
            &id,
            None,
            &user_fields(&id, &email, &role, &password_hash),
            mac.as_deref(),
        )?;
        Ok(Self {
            id,
            email: Email::parse(email).map_err(|e| StoreError::corrupt("column email", e))?,
            password_hash,
            role: parsed(row, "role")?,
            created_at: col(row, "created_at")?,
            integrity_ok,
        })
    }
}

pub(super) async fn insert_user(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    macs: &AuthorityMacs,
    id: &str,
    email: &Email,
    password_hash: &str,
    role: InstanceRole,
) -> Result<(), StoreError> {
    let now = now_ms();
    let mac = macs.mac(
        AuthorityRow::User,
        &user_fields(id, email.as_str(), role.as_str(), password_hash),
    );
    sqlx::query(
        "INSERT INTO users (id, email, password_hash, role, created_at, updated_at, mac) VALUES ($1, $2, $3, $4, $5, $5, $6)",
    )
    .bind(id)
    .bind(email.as_str())
    .bind(password_hash)
    .bind(role.as_str())
    .bind(now)
    .bind(mac)
    .execute(&mut **tx)
    .await
    .map_err(|e| StoreError::unique(e, "user"))?;
    Ok(())
}

impl Store {
    /// Looks a user up by email. A row that fails its MAC is treated as absent (it cannot log
    /// in, and no token of it resolves).
    pub async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError> {
        let sql =
            "SELECT id, email, password_hash, role, created_at, mac FROM users WHERE email = $1";
        let user = self.row_by(sql, email.as_str(), |r| UserRecord::from_row(self, r));
        Ok(user.await?.filter(|u| u.integrity_ok))
    }

    /// Looks a user up by id; a row that fails its MAC is treated as absent.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let sql = "SELECT id, email, password_hash, role, created_at, mac FROM users WHERE id = $1";
        let user = self.row_by(sql, id, |r| UserRecord::from_row(self, r));
        Ok(user.await?.filter(|u| u.integrity_ok))
    }

    /// Every user, by email, including rows that fail their MAC (flagged).
    pub async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, email, password_hash, role, created_at, mac FROM users ORDER BY email",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| UserRecord::from_row(self, r)).collect()
    }

    /// How many users exist.
    pub async fn count_users(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?;
        col(&row, "n")
    }

    /// Replaces a user's password hash and revokes all their sessions (and what they minted). A row that fails its
    /// MAC is refused as not found: re-MACing it would launder whatever was edited.
    pub async fn set_user_password(&self, id: &str, password_hash: &str) -> Result<(), StoreError> {
        let macs = self.macs()?;
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let row = sqlx::query(
            "SELECT id, email, password_hash, role, created_at, mac FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let user = row
            .as_ref()
            .map(|r| UserRecord::from_row(self, r))
            .transpose()?
            .filter(|u| u.integrity_ok)
            .ok_or(StoreError::NotFound)?;
        let mac = macs.mac(
            AuthorityRow::User,
            &user_fields(
                &user.id,
                user.email.as_str(),
                user.role.as_str(),
                password_hash,
            ),
        );
        let done = sqlx::query(
            "UPDATE users SET password_hash = $1, updated_at = $2, mac = $3 WHERE id = $4",
        )
        .bind(password_hash)
        .bind(now)
        .bind(mac)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        super::tokens::revoke_in(self, &mut tx, super::tokens::Revoke::UserSessions(id)).await?;
        tx.commit().await?;
        Ok(())
    }
}
