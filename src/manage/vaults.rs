//! Vaults, their settings and their members. Humans create vaults and become their admin; only
//! admins change settings and members; a vault always keeps a human admin.

use super::{AccessError, Acting, Manage};
use crate::domain::{AgentName, DomainError, Email, UnmatchedHostPolicy, VaultName, VaultRole};
use crate::store::{GrantChange, MemberRecord, PrincipalKind, StoreError, VaultRecord};

/// Why a vault operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultsError {
    /// The caller may not see or change this vault.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// Only a human may do this (`action` says what).
    #[error("only human users can {action}")]
    UsersOnly {
        /// What was attempted, as a verb phrase.
        action: &'static str,
    },
    /// The vault name is not valid.
    #[error(transparent)]
    InvalidName(DomainError),
    /// A vault of that name exists.
    #[error("vault {0:?} already exists")]
    Exists(String),
    /// A user was offered the proxy role, which is for agents.
    #[error("users hold member or admin roles; proxy is for agents")]
    ProxyRoleForUser,
    /// No user or agent of that name.
    #[error("no {} named {who:?}", kind.as_str())]
    NoSuchPrincipal {
        /// User or agent.
        kind: PrincipalKind,
        /// The email or name asked for.
        who: String,
    },
    /// The agent's row failed its MAC: it cannot be given a role.
    #[error("agent row {0} failed its MAC")]
    AgentTampered(String),
    /// The change would leave the vault without a human admin. Agents do not count: a vault
    /// whose only admin is an agent has no human above what a prompt can make it do.
    #[error("a vault must keep at least one human admin")]
    LastHumanAdmin,
    /// The principal holds no role in the vault.
    #[error("{who:?} is not a member of vault {vault:?}")]
    NotMember {
        /// The email or name asked for.
        who: String,
        /// The vault, as the caller named it.
        vault: String,
    },
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The vaults the caller holds the member role or higher in, with that role. Proxy-role
/// principals reach only discovery and proposals.
pub async fn list(a: Acting<'_>) -> Result<Vec<(VaultRecord, VaultRole)>, VaultsError> {
    Ok(a.store
        .list_vaults()
        .await?
        .into_iter()
        .filter_map(|v| {
            let role = a
                .caller
                .role_in(&v.id)
                .filter(|r| *r >= VaultRole::Member)?;
            Some((v, role))
        })
        .collect())
}

/// Creates a vault whose admin is the calling human.
pub async fn create(a: Acting<'_>, name: &str) -> Result<VaultRecord, VaultsError> {
    let crate::identity::Principal::User { id, .. } = &a.caller.principal else {
        return Err(VaultsError::UsersOnly {
            action: "create vaults",
        });
    };
    let name = VaultName::parse(name).map_err(VaultsError::InvalidName)?;
    let vault = a
        .store
        .create_vault(&name, Some((PrincipalKind::User, id)))
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => VaultsError::Exists(name.to_string()),
            other => other.into(),
        })?;
    a.tokens_changed().await;
    a.changed(&vault.id).await;
    a.record("vault.create", Some(&vault), name.to_string())
        .await;
    Ok(vault)
}

/// Deletes a vault and everything in it (a human admin of it).
pub async fn delete(a: Acting<'_>, name: &str) -> Result<(), VaultsError> {
    let (vault, _) = a.vault(name, VaultRole::Admin).await?;
    if !a.caller.is_user() {
        return Err(VaultsError::UsersOnly {
            action: "delete vaults",
        });
    }
    a.store.delete_vault(&vault.id).await?;
    a.tokens_changed().await;
    a.changed(&vault.id).await;
    // The vault is gone, so the audit row belongs to no vault; its name is the target.
    a.record("vault.delete", None, vault.name.to_string()).await;
    Ok(())
}

/// Sets what the proxy does with hosts no service matches (admin).
pub async fn set_unmatched_host_policy(
    a: Acting<'_>,
    name: &str,
    policy: UnmatchedHostPolicy,
) -> Result<(), VaultsError> {
    let (vault, _) = a.vault(name, VaultRole::Admin).await?;
    a.store.set_unmatched_host_policy(&vault.id, policy).await?;
    a.changed(&vault.id).await;
    a.record_with(
        "vault.settings",
        Some(&vault),
        "unmatched_host_policy",
        policy.to_string(),
    )
    .await;
    Ok(())
}

/// The members of a vault (member or higher), including rows that failed their MAC so an admin
/// sees and removes them.
pub async fn members(a: Acting<'_>, name: &str) -> Result<Vec<MemberRecord>, VaultsError> {
    let (vault, _) = a.vault(name, VaultRole::Member).await?;
    Ok(a.store.list_members(&vault.id).await?)
}

/// The id of the user (by email) or agent (by name) a membership change is about. Removal also
/// finds rows that failed their MAC, so they can be cleaned up.
async fn principal_id(
    m: &Manage<'_>,
    kind: PrincipalKind,
    who: &str,
    removing: bool,
) -> Result<String, VaultsError> {
    let missing = || VaultsError::NoSuchPrincipal {
        kind,
        who: who.to_owned(),
    };
    match kind {
        PrincipalKind::User => {
            let email = Email::parse(who).map_err(|_| missing())?;
            let user = if removing {
                // A user row that failed its MAC is absent to lookups, but an admin must still
                // be able to take its grant away.
                m.store
                    .list_users()
                    .await?
                    .into_iter()
                    .find(|u| u.email == email)
            } else {
                m.store.user_by_email(&email).await?
            };
            Ok(user.ok_or_else(missing)?.id)
        }
        PrincipalKind::Agent => {
            let name = AgentName::parse(who).map_err(|_| missing())?;
            let agent = m.store.agent_by_name(&name).await?.ok_or_else(missing)?;
            if !agent.integrity_ok && !removing {
                return Err(VaultsError::AgentTampered(agent.id));
            }
            Ok(agent.id)
        }
    }
}

/// Grants or changes a role in a vault (admin).
pub async fn set_member(
    a: Acting<'_>,
    name: &str,
    kind: PrincipalKind,
    who: &str,
    role: VaultRole,
) -> Result<(), VaultsError> {
    let (vault, _) = a.vault(name, VaultRole::Admin).await?;
    if kind == PrincipalKind::User && role == VaultRole::Proxy {
        return Err(VaultsError::ProxyRoleForUser);
    }
    let id = principal_id(&a, kind, who, false).await?;
    match a
        .store
        .change_grant_keeping_a_human_admin(&vault.id, kind, &id, Some(role))
        .await?
    {
        GrantChange::LastHumanAdmin => return Err(VaultsError::LastHumanAdmin),
        GrantChange::Done | GrantChange::NotMember => {}
    }
    a.tokens_changed().await;
    a.record_with(
        "member.set",
        Some(&vault),
        format!("{}:{who}", kind.as_str()),
        role.to_string(),
    )
    .await;
    Ok(())
}

/// Takes a principal's role in a vault away (admin).
pub async fn remove_member(
    a: Acting<'_>,
    name: &str,
    kind: PrincipalKind,
    who: &str,
) -> Result<(), VaultsError> {
    let (vault, _) = a.vault(name, VaultRole::Admin).await?;
    let id = principal_id(&a, kind, who, true).await?;
    match a
        .store
        .change_grant_keeping_a_human_admin(&vault.id, kind, &id, None)
        .await?
    {
        GrantChange::Done => {}
        GrantChange::LastHumanAdmin => return Err(VaultsError::LastHumanAdmin),
        GrantChange::NotMember => {
            return Err(VaultsError::NotMember {
                who: who.to_owned(),
                vault: name.to_owned(),
            });
        }
    }
    a.tokens_changed().await;
    a.record(
        "member.remove",
        Some(&vault),
        format!("{}:{who}", kind.as_str()),
    )
    .await;
    Ok(())
}
