//! The application layer: every operation on vaults, credentials, services, agents and
//! proposals, with the rules that decide who may do it and what a valid change is. It knows
//! neither HTTP nor HTML: the admin API (JSON) and the web pages (HTML) parse their input, call
//! these functions with the caller's identity, and map each module's error enum to a status in
//! one place (`admin::error`). A rule written here holds on every face at once.
//!
//! Every admin action ends in [`Acting::record`], which writes the audit row and one `info`
//! log line (who, what, which target; never a value).

pub mod agents;
pub mod credentials;
pub mod master_key;
pub mod proposals;
pub mod services;
pub mod vaults;

use std::net::SocketAddr;

use crate::config::Config;
use crate::domain::{VaultName, VaultRole};
use crate::identity::{Authenticated, Identity};
use crate::keys::Keyring;
use crate::notify::Notifier;
use crate::registry::Snapshots;
use crate::store::changes::Change;
use crate::store::{Store, StoreError, VaultRecord};

/// What the operations work with: the store, the keys, the proxy's snapshots and the settings.
/// A borrowed view, built by each face from its own state, so it costs nothing per call.
#[derive(Clone, Copy)]
pub struct Manage<'a> {
    /// The database.
    pub store: &'a Store,
    /// The unsealed keys.
    pub keyring: &'a Keyring,
    /// Token resolution (its cache is dropped when tokens or grants change).
    pub identity: &'a Identity,
    /// The proxy's snapshots, rebuilt after every write to a vault.
    pub snapshots: &'a Snapshots,
    /// The whole configuration.
    pub config: &'a Config,
    /// Proposal notifications.
    pub notifier: &'a Notifier,
    /// Base URL for links (approval pages).
    pub public_url: &'a str,
    /// The proxy's bound address (agents are told its port).
    pub proxy_addr: SocketAddr,
}

impl std::fmt::Debug for Manage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manage")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// Why a caller cannot act on a vault.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// No such vault, or the caller holds no role in it (the two look the same, so vault names
    /// cannot be probed).
    #[error("vault {0:?} not found")]
    VaultNotFound(String),
    /// The caller's role in the vault is below what the operation needs.
    #[error("this needs the {need} role in vault {vault:?}; you have {have}")]
    RoleTooLow {
        /// The vault, as the caller named it.
        vault: String,
        /// The role the operation needs.
        need: VaultRole,
        /// The caller's role.
        have: VaultRole,
    },
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Manage<'_> {
    /// Resolves a vault the caller may act on with at least `need`, and the caller's role there.
    pub async fn vault_access(
        &self,
        caller: &Authenticated,
        name: &str,
        need: VaultRole,
    ) -> Result<(VaultRecord, VaultRole), AccessError> {
        let not_found = || AccessError::VaultNotFound(name.to_owned());
        let parsed = VaultName::parse(name).map_err(|_| not_found())?;
        let vault = self
            .store
            .vault_by_name(&parsed)
            .await?
            .ok_or_else(not_found)?;
        let have = caller.role_in(&vault.id).ok_or_else(not_found)?;
        if have < need {
            return Err(AccessError::RoleTooLow {
                vault: name.to_owned(),
                need,
                have,
            });
        }
        Ok((vault, have))
    }

    /// Rebuilds a vault's snapshot after a write. The write is committed; a failed rebuild is
    /// logged and retried from scratch so the proxy never keeps serving stale bindings.
    pub async fn changed(&self, vault_id: &str) {
        if let Err(e) = self.snapshots.reload(vault_id).await {
            // Fail closed: the write is committed, so the old snapshot is wrong. The vault is
            // refused until the periodic reload (or the next write) rebuilds it.
            tracing::error!(error = %e, vault_id, "rebuilding a vault snapshot failed; refusing the vault until it rebuilds");
            self.snapshots.forget(vault_id).await;
        }
        if let Err(e) = self
            .store
            .publish(&Change::Vault(vault_id.to_owned()))
            .await
        {
            tracing::error!(error = %e, "could not notify other instances of a vault change");
        }
    }

    /// Drops cached token answers here and on other instances after a revocation or a grant
    /// change, and wakes open connections to re-check.
    pub async fn tokens_changed(&self) {
        self.identity.invalidate_all();
        if let Err(e) = self.store.publish(&Change::Tokens).await {
            tracing::error!(error = %e, "could not notify other instances of a token change");
        }
    }
}

/// The application layer acting for one authenticated caller: what every operation that checks
/// who is asking takes. It reads as the [`Manage`] it wraps.
#[derive(Clone, Copy, Debug)]
pub struct Acting<'a> {
    manage: Manage<'a>,
    /// Who is asking, with their roles.
    pub caller: &'a Authenticated,
}

impl<'a> Manage<'a> {
    /// This view, acting for `caller`.
    pub fn acting(self, caller: &'a Authenticated) -> Acting<'a> {
        Acting {
            manage: self,
            caller,
        }
    }
}

impl<'a> std::ops::Deref for Acting<'a> {
    type Target = Manage<'a>;
    fn deref(&self) -> &Manage<'a> {
        &self.manage
    }
}

impl Acting<'_> {
    /// The vault named, if the caller holds at least `need` there (see
    /// [`Manage::vault_access`]).
    pub async fn vault(
        &self,
        name: &str,
        need: VaultRole,
    ) -> Result<(VaultRecord, VaultRole), AccessError> {
        self.manage.vault_access(self.caller, name, need).await
    }

    /// Records an admin action by the caller: the audit row and one `info` line naming who did
    /// what to which target. Neither ever carries a value: targets are names, numbers and ids.
    pub async fn record(
        &self,
        action: &str,
        vault: Option<&VaultRecord>,
        target: impl Into<String>,
    ) {
        self.record_with(action, vault, target, String::new()).await;
    }

    /// [`Acting::record`] with a detail for the audit row only (a label, a policy, a reason):
    /// the log line leaves it out, since it may be free text.
    pub async fn record_with(
        &self,
        action: &str,
        vault: Option<&VaultRecord>,
        target: impl Into<String>,
        detail: String,
    ) {
        let target = target.into();
        let actor = self.caller.actor();
        tracing::info!(
            actor = actor.as_str(),
            actor_id = actor.id(),
            action,
            vault = vault.map(|v| v.name.as_str()),
            target = %target,
            "admin action"
        );
        let vault_id = vault.map(|v| v.id.as_str());
        crate::audit::record(self.store, self.caller, action, vault_id, target, detail).await;
    }
}
