//! Human users.

use sqlx::any::AnyRow;

use super::{Store, StoreError, col, parsed};
use crate::domain::{Email, InstanceRole, now_ms};

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
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl UserRecord {
    pub(super) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let email: String = col(row, "email")?;
        Ok(Self {
            id: col(row, "id")?,
            email: Email::parse(email).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            password_hash: col(row, "password_hash")?,
            role: parsed(row, "role")?,
            created_at: col(row, "created_at")?,
        })
    }
}

pub(super) async fn insert_user(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    id: &str,
    email: &Email,
    password_hash: &str,
    role: InstanceRole,
) -> Result<(), StoreError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO users (id, email, password_hash, role, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(id)
    .bind(email.as_str())
    .bind(password_hash)
    .bind(role.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|e| StoreError::unique(e, "user"))?;
    Ok(())
}

impl Store {
    /// Looks a user up by email.
    pub async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, email, password_hash, role, created_at FROM users WHERE email = $1",
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(UserRecord::from_row).transpose()
    }

    /// Looks a user up by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, email, password_hash, role, created_at FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(UserRecord::from_row).transpose()
    }

    /// Every user, by email.
    pub async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, email, password_hash, role, created_at FROM users ORDER BY email",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(UserRecord::from_row).collect()
    }

    /// How many users exist.
    pub async fn count_users(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?;
        col(&row, "n")
    }

    /// Replaces a user's password hash and revokes all their sessions.
    pub async fn set_user_password(&self, id: &str, password_hash: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let done =
            sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
                .bind(password_hash)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE user_id = $2 AND kind IN ('session', 'web') AND revoked_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
