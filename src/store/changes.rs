//! Change notification between instances sharing a Postgres database: a write on one instance
//! publishes what changed, every instance listening rebuilds that part of its in-memory state.
//! SQLite has one instance, so publishing is a no-op there.

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Backend, Store, StoreError};

const CHANNEL: &str = "agent_vault_changes";
const TOKENS: &str = "tokens";
const INSTANCE_KEY: &str = "instance_key";

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A vault's services, credentials or settings (by id).
    Vault(String),
    /// Tokens or grants were revoked or changed.
    Tokens,
    /// The instance key was rotated: adopt the new version and settle.
    InstanceKey,
}

impl Store {
    /// Tells other instances about a change (Postgres only).
    pub async fn publish(&self, change: &Change) -> Result<(), StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        let payload = match change {
            Change::Vault(id) => format!("vault:{id}"),
            Change::Tokens => TOKENS.to_owned(),
            Change::InstanceKey => INSTANCE_KEY.to_owned(),
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Listens for changes published by other instances and calls `on_change` for each; on a lost
/// connection it reconnects and reports `None` (meaning: anything may have changed).
pub async fn listen(
    url: String,
    shutdown: CancellationToken,
    on_change: impl Fn(Option<Change>) + Send + 'static,
) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "change listener cannot connect; retrying");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(2)) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "change listener cannot LISTEN; retrying");
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(2)) => continue,
                () = shutdown.cancelled() => return,
            }
        }
        // We may have missed changes while disconnected.
        on_change(None);
        let mut stream = listener.into_stream();
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(n)) => {
                        let change = match n.payload() {
                            TOKENS => Change::Tokens,
                            INSTANCE_KEY => Change::InstanceKey,
                            p => match p.strip_prefix("vault:") {
                                Some(id) => Change::Vault(id.to_owned()),
                                None => continue,
                            },
                        };
                        on_change(Some(change));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "change listener lost its connection");
                        break;
                    }
                    None => break,
                },
                () = shutdown.cancelled() => return,
            }
        }
    }
}
