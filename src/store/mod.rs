//! Persistence over sqlx's `Any` driver: one SQL text for SQLite (the embedded default) and
//! Postgres (for several instances behind a load balancer). One module per aggregate; every
//! multi-row change is one transaction. Ids are TEXT and times integer milliseconds.

mod agents;
mod audit;
mod authority;
pub mod changes;
mod credential_versions;
mod credentials;
mod grants;
mod instance;
mod invites;
mod proposals;
pub mod rekey;
mod request_logs;
mod services;
mod tokens;
mod users;
mod vaults;

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Transaction};

pub use agents::AgentRecord;
pub use audit::{AuditEvent, AuditRecord};
pub use authority::{INTEGRITY_ACTION, Rebound};
pub use credential_versions::VersionRecord;
pub use credentials::{
    CredentialRecord, CredentialRefused, CredentialWrite, SealedVersion, Written, open_meta,
};
pub use grants::{GrantChange, MemberRecord};
pub use instance::{CaStateRecord, MasterKeyRecord};
pub use invites::{InviteRecord, InviteVaultGrant};

pub use proposals::{
    ApplyOutcome, ApplyWrites, CreateRefused, ProposalRecord, ProposalValueRecord, SuppliedPart,
};
pub use request_logs::{
    REQUEST_LOG_ROWS_PER_STATEMENT, RequestLogFilter, RequestLogRecord, RequestLogRow,
};
pub use services::ServiceRow;
pub use tokens::TokenRecord;
pub use users::UserRecord;
pub use vaults::VaultRecord;

// Row kinds are domain facts; they are re-exported here for the callers that name them beside
// the records that carry them.
pub use crate::domain::{PrincipalKind, ProposalStatus, TokenStoreKind};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Which database is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file in the data directory.
    Sqlite,
    /// An external Postgres server.
    Postgres,
}

/// Errors from the store. Database details are kept for the log, never shown to callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist.
    #[error("not found")]
    NotFound,
    /// A unique constraint refused the write.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// A configured limit refused the write (the message names it; nothing was stored).
    #[error("{0}")]
    LimitReached(String),
    /// A stored row could not be interpreted.
    #[error("stored data is corrupt: {what}: {source}")]
    Corrupt {
        /// The column or field at fault.
        what: String,
        /// Why it could not be read (a decode error, a refused domain value, a wrong length).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A credential change was refused (revoked, another type, no such version).
    #[error(transparent)]
    Credential(#[from] CredentialRefused),
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Sealing a value, or drawing a random id, failed while preparing a write.
    #[error("cannot prepare the write: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Authority rows (grants, users, invites, agents) were read or written before unsealing.
    #[error("the store is sealed: authority rows need the keys from unsealing")]
    Sealed,
    /// The data directory or database file could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl StoreError {
    /// A `Corrupt` error for `what` (a column or field), keeping the cause.
    pub(crate) fn corrupt(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            source: source.into(),
        }
    }

    /// Maps a unique-constraint violation to `Conflict(what)`, on either backend.
    pub(crate) fn unique(err: sqlx::Error, what: &'static str) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what),
            _ => StoreError::Database(err),
        }
    }

    /// Whether the database is unreachable rather than refusing this one statement.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            )
        )
    }
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    // Set once unsealed: every read and write of an authority row goes through it.
    authority: Option<crate::keys::AuthorityMacs>,
    // Shared by every clone, so a tampered row raises one alarm per window however it is read.
    alarms: std::sync::Arc<authority::IntegrityAlarms>,
    // The runtime that opened the pool: integrity audit events are written there, even when a
    // row is read from a proxy worker's runtime.
    home: Option<tokio::runtime::Handle>,
}

impl Store {
    /// Opens (creating if needed) the SQLite database in `data_dir`, or connects to `database_url`
    /// when one is given, and applies migrations.
    pub async fn open(data_dir: &Path, database_url: Option<&str>) -> Result<Self, StoreError> {
        install_default_drivers();
        let store = match database_url {
            Some(url) => Self::connect_postgres(url).await?,
            None => Self::open_sqlite(data_dir).await?,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn connect_postgres(url: &str) -> Result<Self, StoreError> {
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(Self {
            pool,
            backend: Backend::Postgres,
            authority: None,
            alarms: Default::default(),
            home: tokio::runtime::Handle::try_current().ok(),
        })
    }

    async fn open_sqlite(data_dir: &Path) -> Result<Self, StoreError> {
        let db_path = prepare_data_dir(data_dir)?;
        let encoded =
            percent_encoding::utf8_percent_encode(&db_path.to_string_lossy(), &PATH_ENCODE_SET)
                .to_string();
        let url = format!("sqlite://{encoded}?mode=rwc");
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets readers run beside the writer; FULL sync makes every acknowledged
                    // commit survive a crash; foreign keys enforce cascades; secure_delete
                    // zeroes the space a delete or update frees, so a destroyed key's bytes do
                    // not stay in the file (SECURITY.md, "Keys and crypto-shredding").
                    for pragma in [
                        "PRAGMA secure_delete = ON",
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = FULL",
                        "PRAGMA foreign_keys = ON",
                        "PRAGMA busy_timeout = 10000",
                        // Deleted rows (a destroyed version's wrapped data key) are overwritten
                        // in the file, not left in free pages for a copy of it to recover.
                        "PRAGMA secure_delete = ON",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let store = Self {
            pool,
            backend: Backend::Sqlite,
            authority: None,
            alarms: Default::default(),
            home: tokio::runtime::Handle::try_current().ok(),
        };
        restrict_sqlite_sidecars(&db_path);
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // The Postgres migrator holds an advisory lock while it runs, so instances starting
        // together apply each migration exactly once.
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The underlying pool, for the few callers that need raw access (LISTEN, tests).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock up front, so two
    /// writers wait for each other instead of failing when a read is upgraded to a write.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(tx)
    }

    /// Runs one statement on the pool; whether it changed any row.
    async fn changed(
        &self,
        statement: sqlx::query::Query<'_, Any, sqlx::any::AnyArguments>,
    ) -> Result<bool, StoreError> {
        Ok(statement.execute(&self.pool).await?.rows_affected() > 0)
    }

    /// The one row `sql` selects with `key` bound to `$1`, if there is one, read by `read`.
    async fn row_by<T>(
        &self,
        sql: impl sqlx::SqlSafeStr,
        key: &str,
        read: impl FnOnce(&sqlx::any::AnyRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(read).transpose()
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

const PATH_ENCODE_SET: percent_encoding::AsciiSet = percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'.')
    .remove(b'-')
    .remove(b'_');

/// Creates the data directory (0700) and the database file (0600) with those modes at creation,
/// so the file is never readable by others, not even for a moment.
fn prepare_data_dir(data_dir: &Path) -> Result<std::path::PathBuf, StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StoreError::Io { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(io(data_dir))?;
    let meta = std::fs::metadata(data_dir).map_err(io(data_dir))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(data_dir))?;
    }
    let db_path = data_dir.join("agent-vault.db");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&db_path)
        .map_err(io(&db_path))?;
    std::fs::set_permissions(&db_path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(&db_path))?;
    Ok(db_path)
}

fn restrict_sqlite_sidecars(db_path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["-wal", "-shm"] {
        let mut path = db_path.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
}

/// Reads a column, turning a decode failure into `Corrupt` with the column's name.
pub(crate) fn col<'r, T>(row: &'r sqlx::any::AnyRow, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    use sqlx::Row;
    row.try_get(name)
        .map_err(|e| StoreError::corrupt(format!("column {name}"), e))
}

/// Reads a keyed-hash column (a token's or approval link's HMAC).
pub(crate) fn hash_col(
    row: &sqlx::any::AnyRow,
    name: &str,
) -> Result<crate::crypto::TokenHash, StoreError> {
    let bytes: Vec<u8> = col(row, name)?;
    crate::crypto::TokenHash::from_slice(&bytes).ok_or_else(|| {
        StoreError::corrupt(
            format!("column {name}"),
            format!("{} bytes where a hash has 32", bytes.len()),
        )
    })
}

/// Parses a stored text column into a domain type.
pub(crate) fn parsed<T: std::str::FromStr>(
    row: &sqlx::any::AnyRow,
    name: &str,
) -> Result<T, StoreError>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = col(row, name)?;
    text.parse()
        .map_err(|e: T::Err| StoreError::corrupt(format!("column {name}"), e))
}

/// Parses a stored nullable text column into a domain type.
pub(crate) fn parsed_opt<T: std::str::FromStr>(
    row: &sqlx::any::AnyRow,
    name: &str,
) -> Result<Option<T>, StoreError>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: Option<String> = col(row, name)?;
    text.map(|t| {
        t.parse()
            .map_err(|e: T::Err| StoreError::corrupt(format!("column {name}"), e))
    })
    .transpose()
}
