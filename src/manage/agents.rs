//! Agents and tokens. Humans create agents (whose token is shown once), rotate, revoke and
//! delete them; owners manage every agent, others the agents they created. Scoped tokens are
//! short-lived proxy-role tokens for one vault (`run`, `vault token`): members mint them, and an
//! agent may mint them for a vault it holds a role in, never longer-lived than itself and
//! revoked with it. Every token is stored only as its keyed hash.

use std::time::Duration;

use secrecy::SecretString;

use super::{AccessError, Acting, Manage};
use crate::crypto::{CryptoError, TokenKind, random_id};
use crate::domain::{Actor, AgentName, DomainError, VaultName, VaultRole, now_ms};
use crate::identity::{Authenticated, Minter, Principal};
use crate::store::{
    AgentRecord, PrincipalKind, StoreError, TokenRecord, TokenStoreKind, VaultRecord,
};

/// Shortest token lifetime accepted.
const MIN_TTL: Duration = Duration::from_secs(60);

/// Longest label a scoped token may carry.
const MAX_LABEL_LEN: usize = 100;

/// Why an agent or token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    /// The caller may not act on the vault named.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// Only humans create and manage agents.
    #[error("only human users manage agents")]
    UsersOnly,
    /// The agent name is not valid.
    #[error(transparent)]
    InvalidName(DomainError),
    /// An agent of that name exists.
    #[error("agent {0:?} already exists")]
    Exists(String),
    /// No such agent, or not one the caller manages.
    #[error("agent {0:?} not found")]
    NotFound(String),
    /// The agent's row failed its MAC: a new token for it would be a token for whatever the
    /// edit made of it, so it may only be deleted.
    #[error("agent row {0} failed its MAC")]
    Tampered(String),
    /// The requested lifetime is under a minute.
    #[error("the lifetime must be at least 60 seconds")]
    TtlTooShort,
    /// The requested lifetime is over the configured maximum.
    #[error("the lifetime must be at most {}", humantime::format_duration(*.0))]
    TtlTooLong(Duration),
    /// An agent asked for a token that would outlive its own.
    #[error("a token cannot outlive the agent token that mints it, which expires in {}", humantime::format_duration(*.0))]
    OutlivesMinter(Duration),
    /// A scoped token tried to mint another.
    #[error("a scoped token cannot mint further tokens")]
    ScopedCannotMint,
    /// The label is too long.
    #[error("labels are at most 100 characters")]
    LabelTooLong,
    /// No live token of that id the caller may revoke.
    #[error("no live token {0:?}")]
    TokenNotFound(String),
    /// Randomness for a token or id was not available.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A raw token, shown once, and its stored record.
#[derive(Debug)]
pub struct Issued {
    /// The token itself; only its hash is stored.
    pub raw: SecretString,
    /// What was stored.
    pub record: TokenRecord,
}

/// Mints a raw token of `kind` and the record of its hash, for callers that store it together
/// with other rows. `fill` sets the owner fields.
pub fn new_token(
    m: &Manage<'_>,
    kind: TokenKind,
    store_kind: TokenStoreKind,
    fill: impl FnOnce(&mut TokenRecord),
    ttl: Option<Duration>,
) -> Result<Issued, CryptoError> {
    let raw = kind.generate()?;
    let now = now_ms();
    let mut record = TokenRecord {
        id: random_id()?,
        hash: m.keyring.token_hasher().hash(&raw),
        kind: store_kind,
        user_id: None,
        agent_id: None,
        vault_id: None,
        vault_role: None,
        label: String::new(),
        expires_at: ttl
            .map(|t| now.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))),
        revoked_at: None,
        created_at: now,
        parent_id: None,
    };
    fill(&mut record);
    Ok(Issued { raw, record })
}

/// Mints a raw token of `kind`, stores its hash, and returns both. `fill` sets the owner fields.
pub async fn issue_token(
    m: &Manage<'_>,
    kind: TokenKind,
    store_kind: TokenStoreKind,
    fill: impl FnOnce(&mut TokenRecord),
    ttl: Option<Duration>,
) -> Result<Issued, AgentsError> {
    let issued = new_token(m, kind, store_kind, fill, ttl)?;
    m.store.insert_token(&issued.record).await?;
    Ok(issued)
}

/// A new token for an agent, not yet stored (it is stored with the agent, or replaces its
/// previous token).
fn agent_token(
    m: &Manage<'_>,
    agent_id: &str,
    ttl: Option<Duration>,
) -> Result<Issued, CryptoError> {
    new_token(
        m,
        TokenKind::Agent,
        TokenStoreKind::Agent,
        |t| {
            t.agent_id = Some(agent_id.to_owned());
            t.label = "agent".into();
        },
        ttl,
    )
}

/// The lifetime asked for (or `default`), checked against the minimum and `max`.
fn ttl_from(
    seconds: Option<u64>,
    default: Option<Duration>,
    max: Option<Duration>,
) -> Result<Option<Duration>, AgentsError> {
    let ttl = seconds.map(Duration::from_secs).or(default);
    if let Some(t) = ttl {
        if t < MIN_TTL {
            return Err(AgentsError::TtlTooShort);
        }
        if let Some(m) = max
            && t > m
        {
            return Err(AgentsError::TtlTooLong(m));
        }
    }
    Ok(ttl)
}

fn require_user(caller: &Authenticated) -> Result<&str, AgentsError> {
    match &caller.principal {
        Principal::User { id, .. } => Ok(id),
        _ => Err(AgentsError::UsersOnly),
    }
}

/// Whether the caller manages this agent: owners manage every agent, others the ones they
/// created. Whom a tampered row claims as its creator is not evidence: only owners manage it.
fn manages(caller: &Authenticated, user_id: &str, agent: &AgentRecord) -> bool {
    let creator = agent
        .integrity_ok
        .then_some(agent.created_by.as_deref())
        .flatten();
    caller.is_owner() || creator == Some(user_id)
}

/// An agent row that failed its MAC may only be deleted.
fn require_intact(agent: &AgentRecord) -> Result<(), AgentsError> {
    if agent.integrity_ok {
        Ok(())
    } else {
        Err(AgentsError::Tampered(agent.id.clone()))
    }
}

/// An agent as listings show it.
#[derive(Debug)]
pub struct AgentSummary {
    /// The stored row.
    pub agent: AgentRecord,
    /// Its vaults and roles (empty when the row failed its MAC).
    pub vaults: Vec<(VaultName, VaultRole)>,
    /// How many live agent tokens it holds.
    pub active_tokens: usize,
    /// When its latest agent token expires.
    pub expires_at: Option<i64>,
}

async fn summary(m: &Manage<'_>, agent: AgentRecord) -> Result<AgentSummary, AgentsError> {
    if !agent.integrity_ok {
        // Its tokens resolve to nothing; shown so an owner can delete it.
        return Ok(AgentSummary {
            agent,
            vaults: Vec::new(),
            active_tokens: 0,
            expires_at: None,
        });
    }
    let mut vaults = Vec::new();
    for (vault_id, role) in m.store.grants_of(PrincipalKind::Agent, &agent.id).await? {
        if let Some(v) = m.store.vault_by_id(&vault_id).await? {
            vaults.push((v.name, role));
        }
    }
    let tokens = m.store.list_tokens(Some(&agent.id), None).await?;
    let own: Vec<_> = tokens
        .iter()
        .filter(|t| t.kind == TokenStoreKind::Agent)
        .collect();
    Ok(AgentSummary {
        vaults,
        active_tokens: own.len(),
        expires_at: own.iter().filter_map(|t| t.expires_at).max(),
        agent,
    })
}

/// Creates an agent with roles in vaults the caller administers; its token is returned once.
pub async fn create(
    a: Acting<'_>,
    name: &str,
    vaults: &[(String, VaultRole)],
    ttl_seconds: Option<u64>,
) -> Result<(AgentSummary, Issued), AgentsError> {
    let user_id = require_user(a.caller)?.to_owned();
    let name = AgentName::parse(name).map_err(AgentsError::InvalidName)?;
    let mut grants = Vec::new();
    for (vault, role) in vaults {
        let (vault, _) = a.vault(vault, VaultRole::Admin).await?;
        grants.push((vault.id, *role));
    }
    let ttl = ttl_from(ttl_seconds, a.config.tokens.agent_default_ttl, None)?;
    let agent = AgentRecord {
        id: random_id()?,
        name: name.clone(),
        created_by: Some(user_id),
        created_at: now_ms(),
        integrity_ok: true,
    };
    let token = agent_token(&a, &agent.id, ttl)?;
    a.store
        .create_agent(&agent, &grants, &token.record)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => AgentsError::Exists(name.to_string()),
            other => other.into(),
        })?;
    a.tokens_changed().await;
    a.record("agent.create", None, name.to_string()).await;
    Ok((summary(&a, agent).await?, token))
}

/// An agent the caller manages, by name; others are reported as not found.
async fn managed_agent(a: Acting<'_>, name: &str) -> Result<AgentRecord, AgentsError> {
    let user_id = require_user(a.caller)?;
    let not_found = || AgentsError::NotFound(name.to_owned());
    let parsed = AgentName::parse(name).map_err(|_| not_found())?;
    let agent = a
        .store
        .agent_by_name(&parsed)
        .await?
        .ok_or_else(not_found)?;
    if manages(a.caller, user_id, &agent) {
        Ok(agent)
    } else {
        Err(not_found())
    }
}

/// The agents the caller manages.
pub async fn list(a: Acting<'_>) -> Result<Vec<AgentSummary>, AgentsError> {
    let user_id = require_user(a.caller)?.to_owned();
    let mut out = Vec::new();
    for agent in a.store.list_agents().await? {
        if manages(a.caller, &user_id, &agent) {
            out.push(summary(&a, agent).await?);
        }
    }
    Ok(out)
}

/// Revokes every token of the agent and issues a new one.
pub async fn rotate(
    a: Acting<'_>,
    name: &str,
    ttl_seconds: Option<u64>,
) -> Result<(AgentRecord, Issued), AgentsError> {
    let agent = managed_agent(a, name).await?;
    require_intact(&agent)?;
    let ttl = ttl_from(ttl_seconds, a.config.tokens.agent_default_ttl, None)?;
    let token = agent_token(&a, &agent.id, ttl)?;
    a.store.rotate_agent_token(&agent.id, &token.record).await?;
    a.tokens_changed().await;
    a.record("agent.rotate", None, agent.name.to_string()).await;
    Ok((agent, token))
}

/// Revokes every token the agent holds or minted; returns the agent and how many.
pub async fn revoke(a: Acting<'_>, name: &str) -> Result<(AgentRecord, u64), AgentsError> {
    let agent = managed_agent(a, name).await?;
    let n = a.store.revoke_agent_tokens(&agent.id).await?;
    a.tokens_changed().await;
    a.record("agent.revoke", None, agent.name.to_string()).await;
    Ok((agent, n))
}

/// Deletes the agent, its grants and its tokens.
pub async fn delete(a: Acting<'_>, name: &str) -> Result<(), AgentsError> {
    let agent = managed_agent(a, name).await?;
    a.store.delete_agent(&agent.id).await?;
    a.tokens_changed().await;
    a.record("agent.delete", None, agent.name.to_string()).await;
    Ok(())
}

/// Mints a short-lived proxy-role token for one vault. Users need the member role; agents may
/// mint one for a vault they hold a role in. What an agent mints is always proxy-role, for one
/// of its own vaults, no longer-lived than the agent's token, and is revoked with it; scoped
/// tokens mint nothing.
pub async fn mint_scoped(
    a: Acting<'_>,
    vault: &str,
    ttl_seconds: Option<u64>,
    label: Option<String>,
) -> Result<(VaultRecord, Issued), AgentsError> {
    let (need, minter) = match &a.caller.principal {
        Principal::User { id, .. } => (VaultRole::Member, Minter::User(id.clone())),
        Principal::Agent { id, .. } => (VaultRole::Proxy, Minter::Agent(id.clone())),
        Principal::Scoped { .. } => return Err(AgentsError::ScopedCannotMint),
    };
    let (vault, _) = a.vault(vault, need).await?;
    let tokens = &a.config.tokens;
    let mut ttl = ttl_from(
        ttl_seconds,
        Some(tokens.scoped_default_ttl),
        Some(tokens.scoped_max_ttl),
    )?
    .unwrap_or(tokens.scoped_default_ttl);
    if let Some(own_expiry) = a.caller.expires_at {
        // Never outlive the token that minted it. An agent asking for more is told so rather
        // than quietly given less: what it mints is always shorter-lived than itself.
        let left =
            Duration::from_millis(u64::try_from(own_expiry.saturating_sub(now_ms())).unwrap_or(0));
        if matches!(minter, Minter::Agent(_)) && ttl_seconds.is_some() && ttl > left {
            return Err(AgentsError::OutlivesMinter(Duration::from_secs(
                left.as_secs(),
            )));
        }
        ttl = ttl.min(left);
    }
    let label = label.unwrap_or_default();
    if label.len() > MAX_LABEL_LEN {
        return Err(AgentsError::LabelTooLong);
    }
    let vault_id = vault.id.clone();
    // Recorded so that revoking the minting token (an agent's rotation or revocation, a user's
    // logout or password change) revokes this one with it, in the store's transaction.
    let parent = a.caller.token_id.clone();
    let issued = issue_token(
        &a,
        TokenKind::Scoped,
        TokenStoreKind::Scoped,
        |t| {
            t.vault_id = Some(vault_id);
            t.vault_role = Some(VaultRole::Proxy);
            t.label = label;
            t.parent_id = Some(parent);
            match minter {
                Minter::User(u) => t.user_id = Some(u),
                Minter::Agent(agent) => t.agent_id = Some(agent),
            }
        },
        Some(ttl),
    )
    .await?;
    a.record_with(
        "token.mint",
        Some(&vault),
        issued.record.id.clone(),
        issued.record.label.clone(),
    )
    .await;
    Ok((vault, issued))
}

/// The live scoped tokens of a vault (member or higher); never their values.
pub async fn list_scoped(a: Acting<'_>, vault: &str) -> Result<Vec<TokenRecord>, AgentsError> {
    let (vault, _) = a.vault(vault, VaultRole::Member).await?;
    Ok(a.store.list_tokens(None, Some(&vault.id)).await?)
}

/// Revokes a token. Allowed for the token itself, its minter or owner, members of a scoped
/// token's vault, and instance owners; anyone else is told there is no such token.
pub async fn revoke_token(a: Acting<'_>, id: &str) -> Result<(), AgentsError> {
    let not_found = || AgentsError::TokenNotFound(id.to_owned());
    let token = a.store.token_by_id(id).await?.ok_or_else(not_found)?;
    let allowed = a.caller.token_id == token.id
        || a.caller.is_owner()
        || match a.caller.actor() {
            Actor::User(who) => token.user_id.as_deref() == Some(who.as_str()),
            Actor::Agent(who) => {
                token.agent_id.as_deref() == Some(who.as_str())
                    && token.kind == TokenStoreKind::Scoped
            }
            Actor::ScopedToken(_) => false,
        }
        || (token.kind == TokenStoreKind::Scoped
            && token
                .vault_id
                .as_deref()
                .and_then(|v| a.caller.role_in(v))
                .is_some_and(|r| r >= VaultRole::Member));
    if !allowed {
        return Err(not_found());
    }
    if !a.store.revoke_token(&token.id).await? {
        return Err(not_found());
    }
    a.tokens_changed().await;
    let vault = match token.vault_id.as_deref() {
        Some(id) => a.store.vault_by_id(id).await.ok().flatten(),
        None => None,
    };
    a.record("token.revoke", vault.as_ref(), token.id.clone())
        .await;
    Ok(())
}
