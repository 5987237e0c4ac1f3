//! Proposals: agents discover what a vault offers and ask for services and credentials; they
//! follow the outcome; humans list, review, approve or reject. Only a human with the member role
//! (admin when services change) decides, once, for exactly the content and vault state shown,
//! and an approval applies in one transaction. The JSON API and the approval page both call
//! these functions, so the rules live here once.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};

use super::services::{self, ServicesError};
use super::{AccessError, Acting, Manage};
use crate::credtype::CredentialType;
use crate::crypto::{Aad, CryptoError, TokenKind, random_id};
use crate::domain::{Actor, CredentialKey, CredentialState, DomainError, Email, VaultRole, now_ms};
use crate::identity::{Authenticated, Minter, Principal};
use crate::notify::ProposalEvent;
use crate::policy::service::ServiceSpec;
use crate::proposal::{
    self, Acknowledgement, ProposalContent, ProposalError, ProposalRequest, StoredCredential,
    VaultState,
};
use crate::registry::read_service;
use crate::store::{
    ApplyOutcome, ApplyWrites, CreateRefused, CredentialRefused, CredentialWrite, PrincipalKind,
    ProposalRecord, ProposalStatus, ProposalValueRecord, StoreError, SuppliedPart, VaultRecord,
};

/// Longest rejection reason, in characters.
const MAX_REASON_CHARS: usize = 1000;

/// Why a proposal operation failed. No message includes a value or a token.
#[derive(Debug, thiserror::Error)]
pub enum ProposalsError {
    /// The caller may not act on the vault named.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The vault's services could not be read (integrity) or the proposed ones are invalid.
    #[error(transparent)]
    Services(#[from] ServicesError),
    /// The caller holds roles in several vaults and named none.
    #[error("name the vault: add \"vault\" (or ?vault=) to the request")]
    VaultRequired,
    /// The caller's only vault no longer exists.
    #[error("vault not found")]
    VaultGone,
    /// The proposal is invalid (the message names the item and field).
    #[error(transparent)]
    Invalid(ProposalError),
    /// The vault has as many pending proposals as `proposals.max_pending_per_vault` allows.
    #[error(
        "vault {vault:?} already has {pending} pending proposals; wait for a human to review them"
    )]
    TooManyPending {
        /// The vault.
        vault: String,
        /// How many are pending.
        pending: i64,
    },
    /// No proposal with that id.
    #[error("proposal {0:?} not found")]
    NotFound(String),
    /// The caller is not among those who may follow this proposal's status.
    #[error("proposal {id:?} was raised by {raised_by}; only {readers} may read its status")]
    NotFollower {
        /// The proposal id asked for.
        id: String,
        /// Who raised it, as a kind (never a name).
        raised_by: &'static str,
        /// Who may read it.
        readers: &'static str,
    },
    /// No proposal with that number or id in the vault.
    #[error("no proposal {proposal:?} in vault {vault:?} (give its number or its id)")]
    NotInVault {
        /// The number or id asked for.
        proposal: String,
        /// The vault, as the caller named it.
        vault: String,
    },
    /// The link token does not open this proposal (or there is no such proposal).
    #[error(
        "This approval link is invalid. Ask the agent for a new one, or open the proposal from your dashboard."
    )]
    LinkInvalid,
    /// The stored content cannot be read back.
    #[error("proposal {id} has unreadable content")]
    Content {
        /// The proposal.
        id: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// Only humans decide; agent tokens of any role never can.
    #[error("only a human user can approve or reject proposals; agent tokens never can")]
    HumansOnly,
    /// The caller holds no role in the proposal's vault.
    #[error("proposal not found")]
    NoRole,
    /// Approving needs a higher role.
    #[error("approving this proposal needs the {need} role in its vault; you have {have}")]
    ApproveNeedsRole {
        /// Member, or admin when services change.
        need: VaultRole,
        /// The caller's role.
        have: VaultRole,
    },
    /// Rejecting needs the member role.
    #[error("rejecting needs the member role in the vault")]
    RejectNeedsMember,
    /// The proposal was decided or expired.
    #[error("proposal #{number} is {} and can no longer be decided", status.as_str())]
    NotPending {
        /// The proposal's number.
        number: i64,
        /// Its status now.
        status: ProposalStatus,
    },
    /// The content or vault state differs from what the approver was shown.
    #[error("the proposal or the vault changed since it was shown; reload it and review again")]
    Stale,
    /// Risks that need an explicit acknowledgement were not acknowledged.
    #[error(
        "this proposal has {count} risk(s) you must acknowledge before approving: tick the box for each on the approval page, or send \"acknowledge_risks\" with their ids (the CLI: --acknowledge-risks). Nothing was applied. {risks}"
    )]
    RisksNotAcknowledged {
        /// How many.
        count: usize,
        /// Each as `[id] text`, joined.
        risks: String,
    },
    /// The vault changed so that the proposal's changes no longer apply.
    #[error("the vault changed and this proposal no longer applies: {0}")]
    NoLongerApplies(ProposalError),
    /// A value was given under an invalid key.
    #[error(transparent)]
    InvalidKey(DomainError),
    /// A value was given for a key the proposal does not set.
    #[error("the proposal does not ask for {0}")]
    UnexpectedValue(CredentialKey),
    /// A value is over the size limit.
    #[error("the value of {0} is too long")]
    ValueTooLong(CredentialKey),
    /// A value is not valid for its credential's type (stored type, or `api_key`).
    #[error("{key}: {source}; nothing was stored")]
    InvalidValue {
        /// The key.
        key: CredentialKey,
        /// What was wrong, naming the field.
        #[source]
        source: crate::credtype::CredTypeError,
    },
    /// A credential slot has no value from the approver or the agent.
    #[error("enter a value for {0}")]
    ValueRequired(CredentialKey),
    /// The vault changed between review and the approving transaction.
    #[error("the vault changed since the proposal was shown; reload it and review again")]
    VaultChanged,
    /// An agent-supplied value failed to open (its row was edited or moved).
    #[error("agent-supplied value {key} of proposal {id} failed its integrity check")]
    SuppliedValue {
        /// The proposal.
        id: String,
        /// The key.
        key: CredentialKey,
        /// Why it did not open.
        #[source]
        source: CryptoError,
    },
    /// The rejection reason is too long.
    #[error("the reason is longer than 1000 characters")]
    ReasonTooLong,
    /// The content could not be encoded for storage.
    #[error("cannot encode a proposal")]
    Encode(#[source] serde_json::Error),
    /// Randomness or sealing failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A proposal's stored content.
pub fn content_of(p: &ProposalRecord) -> Result<ProposalContent, ProposalsError> {
    serde_json::from_str(&p.content).map_err(|source| ProposalsError::Content {
        id: p.id.clone(),
        source,
    })
}

/// The vault's current services (verified), credential keys, and each credential's type and
/// state.
pub async fn vault_state(m: &Manage<'_>, vault_id: &str) -> Result<VaultState, ProposalsError> {
    let services = services::specs(m, vault_id).await?;
    let credentials: BTreeMap<CredentialKey, StoredCredential> = m
        .store
        .list_credentials(vault_id)
        .await?
        .into_iter()
        .map(|c| {
            let stored = StoredCredential {
                ty: c.ty,
                revoked: c.state == CredentialState::Revoked,
            };
            (c.key, stored)
        })
        .collect();
    Ok(VaultState {
        services,
        keys: credentials.keys().cloned().collect(),
        credentials,
    })
}

/// The type of every credential the vault holds once `plan` is applied (services are
/// checked against it, at creation and at approval).
fn types_after(
    vs: &VaultState,
    plan: &proposal::ApplyPlan,
) -> BTreeMap<CredentialKey, CredentialType> {
    let mut types: BTreeMap<CredentialKey, CredentialType> = vs
        .credentials
        .iter()
        .map(|(k, c)| (k.clone(), c.ty))
        .collect();
    for key in &plan.delete_keys {
        types.remove(key);
    }
    types.extend(plan.types.iter().map(|(k, t)| (k.clone(), *t)));
    types
}

/// Resolves the vault an agent-side call is about: named, or the token's only vault.
async fn agent_vault(a: Acting<'_>, named: Option<&str>) -> Result<VaultRecord, ProposalsError> {
    if let Some(name) = named {
        return Ok(a.vault(name, VaultRole::Proxy).await?.0);
    }
    let id = match &a.caller.principal {
        Principal::Scoped { vault_id, .. } => vault_id.clone(),
        _ => {
            let mut ids = a.caller.grants.keys();
            match (ids.next(), ids.next()) {
                (Some(only), None) => only.clone(),
                _ => return Err(ProposalsError::VaultRequired),
            }
        }
    };
    a.store
        .vault_by_id(&id)
        .await?
        .ok_or(ProposalsError::VaultGone)
}

/// What an agent can use in a vault: its services and key names, never values.
pub async fn discover(
    a: Acting<'_>,
    vault: Option<&str>,
) -> Result<(VaultRecord, VaultState), ProposalsError> {
    let vault = agent_vault(a, vault).await?;
    let state = vault_state(&a, &vault.id).await?;
    Ok((vault, state))
}

/// Where this server is reached: its public URL, the Host names it answers to, its listeners.
fn own_hosts(m: &Manage<'_>) -> proposal::OwnHosts {
    let mut own = proposal::OwnHosts::default();
    own.add_url(m.public_url);
    for host in &m.config.server.allowed_hosts {
        own.add_host(host);
    }
    own.add_addr(m.config.server.host);
    own.add_addr(m.proxy_addr.ip());
    own
}

/// A new proposal.
#[derive(Debug)]
pub struct Created {
    /// As stored, with its number.
    pub record: ProposalRecord,
    /// Its vault.
    pub vault: VaultRecord,
    /// The view-only link for the human (it carries the approval token).
    pub approval_url: String,
}

/// Raises a proposal in the caller's vault, seals any agent-supplied values, and notifies the
/// humans who may approve it.
pub async fn create(a: Acting<'_>, req: ProposalRequest) -> Result<Created, ProposalsError> {
    let vault = agent_vault(a, req.vault.as_deref()).await?;
    let vs = vault_state(&a, &vault.id).await?;
    let (content, supplied) = proposal::validate(req, &vs).map_err(ProposalsError::Invalid)?;
    proposal::check_links(&content, &own_hosts(&a)).map_err(ProposalsError::Invalid)?;
    // A service that would use a slot's credential in a way its type cannot serve (a
    // certificate as a bearer token) is refused now, not first at approval.
    let plan = proposal::plan(&content, &vs).map_err(ProposalsError::Invalid)?;
    services::rows_for(&a, &vault.id, &plan.services, &types_after(&vs, &plan))?;
    let id = random_id()?;
    let raw = TokenKind::Approval.generate()?;
    let now = now_ms();
    let ttl = i64::try_from(a.config.proposals.ttl.as_millis()).unwrap_or(i64::MAX);
    let mut record = ProposalRecord {
        id: id.clone(),
        vault_id: vault.id.clone(),
        seq: 0,
        status: ProposalStatus::Pending,
        created_by: a.caller.actor(),
        creator_token_id: Some(a.caller.token_id.clone()),
        message: content.message.clone(),
        content: serde_json::to_string(&content).map_err(ProposalsError::Encode)?,
        content_hash: proposal::content_hash(&content),
        approval_token_hash: a.keyring.token_hasher().hash(&raw),
        expires_at: now.saturating_add(ttl),
        reviewed_by: None,
        reviewed_at: None,
        review_note: None,
        created_at: now,
    };
    let seal = |key: &CredentialKey, part: SuppliedPart, plain: &[u8]| {
        Ok::<_, CryptoError>(ProposalValueRecord {
            key: key.clone(),
            part,
            sealed_value: a.keyring.seal_instance(
                &Aad::proposal_value(&id, &ProposalValueRecord::row_key(key, part)),
                plain,
            )?,
        })
    };
    let mut sealed = Vec::new();
    for (key, value) in &supplied.values {
        sealed.push(seal(
            key,
            SuppliedPart::Value,
            value.expose_secret().as_bytes(),
        )?);
    }
    for (key, metadata) in &supplied.metadata {
        let json =
            zeroize::Zeroizing::new(serde_json::to_vec(metadata).map_err(ProposalsError::Encode)?);
        sealed.push(seal(key, SuppliedPart::Metadata, &json)?);
    }
    let max = i64::from(a.config.proposals.max_pending_per_vault);
    record.seq = match a.store.create_proposal(&record, &sealed, max).await? {
        Ok(seq) => seq,
        Err(CreateRefused::TooManyPending(pending)) => {
            return Err(ProposalsError::TooManyPending {
                vault: vault.name.to_string(),
                pending,
            });
        }
    };
    let approval_url = format!(
        "{}/approve/{id}?token={}",
        a.public_url,
        raw.expose_secret()
    );
    a.record("proposal.create", Some(&vault), format!("#{}", record.seq))
        .await;
    let created_by = describe_creator(&a, &record).await;
    let approvers = approvers(&a, &vault.id, proposal::needs_admin(&content))
        .await
        .unwrap_or_default();
    a.notifier.proposal_created(
        ProposalEvent {
            event: "proposal.created",
            vault: vault.name.to_string(),
            number: record.seq,
            id,
            approval_url: approval_url.clone(),
            message: content.message.chars().take(500).collect(),
            created_by,
        },
        approvers,
    );
    Ok(Created {
        record,
        vault,
        approval_url,
    })
}

/// Who raised a proposal, in words a person recognises: the agent's name, the user's email, or
/// whose run token. Never a raw token or row id: when the token or agent is gone by now (run
/// tokens are purged after they expire), it says so instead.
pub async fn describe_creator(m: &Manage<'_>, p: &ProposalRecord) -> String {
    let described = match &p.created_by {
        Actor::Agent(id) => agent_name(m, id).await,
        Actor::ScopedToken(id) => match m.store.token_by_id(id).await.ok().flatten() {
            Some(t) => match (t.agent_id, t.user_id) {
                (Some(a), _) => agent_name(m, &a)
                    .await
                    .map(|n| format!("a run token of {n}")),
                (None, Some(u)) => user_email(m, &u)
                    .await
                    .map(|email| format!("an agent run started by {email}")),
                _ => None,
            },
            None => None,
        },
        Actor::User(id) => user_email(m, id).await,
    };
    described.unwrap_or_else(|| match p.created_by {
        Actor::Agent(_) => "an agent that has since been deleted".into(),
        Actor::User(_) => "a user who has since been deleted".into(),
        Actor::ScopedToken(_) => {
            "an agent run whose token has since expired or been removed".into()
        }
    })
}

async fn agent_name(m: &Manage<'_>, id: &str) -> Option<String> {
    let agent = m.store.agent_by_id(id).await.ok().flatten()?;
    Some(format!("agent {}", agent.name))
}

async fn user_email(m: &Manage<'_>, id: &str) -> Option<String> {
    let user = m.store.user_by_id(id).await.ok().flatten()?;
    Some(user.email.to_string())
}

/// Human users who may approve: members or admins (admins only when services change).
async fn approvers(
    m: &Manage<'_>,
    vault_id: &str,
    admin: bool,
) -> Result<Vec<Email>, ProposalsError> {
    let need = if admin {
        VaultRole::Admin
    } else {
        VaultRole::Member
    };
    let mut out = Vec::new();
    for member in m.store.list_members(vault_id).await? {
        if member.kind == PrincipalKind::User
            && member.integrity_ok
            && member.role >= need
            && let Ok(email) = Email::parse(&member.display)
        {
            out.push(email);
        }
    }
    Ok(out)
}

/// A proposal with its vault and content, as status, listing and review show it.
#[derive(Debug)]
pub struct Viewed {
    /// The proposal.
    pub record: ProposalRecord,
    /// Its vault.
    pub vault: VaultRecord,
    /// Its content.
    pub content: ProposalContent,
}

/// Who, besides the members of its vault, may follow a proposal's status: the proxy-role side
/// that raised it, however many short-lived tokens it went through (each `run` revokes its own
/// on exit, so the token that asked is often gone by the time a human decides).
#[derive(Debug, PartialEq, Eq)]
enum Followers<'a> {
    /// Raised by an agent: its own token and every token it minted.
    Agent(&'a str),
    /// Raised by a `run` or `vault token` session a person started: every such session for the
    /// same vault (they are not tied to one agent, only to the vault).
    VaultRuns(&'a str),
    /// Raised by a person: nobody but the vault's members.
    Nobody,
}

impl<'a> Followers<'a> {
    fn of(p: &'a ProposalRecord) -> Self {
        match &p.created_by {
            Actor::Agent(id) => Self::Agent(id),
            Actor::ScopedToken(_) => Self::VaultRuns(&p.vault_id),
            Actor::User(_) => Self::Nobody,
        }
    }

    fn admit(&self, caller: &Authenticated) -> bool {
        match self {
            Self::Agent(agent) => matches!(caller.actor(), Actor::Agent(id) if id == *agent),
            Self::VaultRuns(vault) => matches!(
                &caller.principal,
                Principal::Scoped { vault_id, minted_by: Minter::User(_), .. } if vault_id == vault
            ),
            Self::Nobody => false,
        }
    }

    /// Who raised it and who may follow it, in words, for the error the others get.
    fn describe(&self) -> (&'static str, &'static str) {
        match self {
            Self::Agent(_) => (
                "an agent",
                "that agent (its own token, or any `run` or `vault token` session it started) and members of the vault",
            ),
            Self::VaultRuns(_) => (
                "a `run` or `vault token` session a person started",
                "such sessions for the same vault and members of the vault",
            ),
            Self::Nobody => ("a person", "members of the vault"),
        }
    }
}

/// A proposal's status by id: for the token that raised it, the side that raised it (see
/// [`Followers`]) and members of its vault. Anyone else is told who may read it.
pub async fn status(a: Acting<'_>, id: &str) -> Result<Viewed, ProposalsError> {
    let not_found = || ProposalsError::NotFound(id.to_owned());
    let p = a.store.proposal(id).await?.ok_or_else(not_found)?;
    let followers = Followers::of(&p);
    let allowed = p.creator_token_id.as_deref() == Some(a.caller.token_id.as_str())
        || followers.admit(a.caller)
        || a.caller
            .role_in(&p.vault_id)
            .is_some_and(|r| r >= VaultRole::Member);
    if !allowed {
        let (raised_by, readers) = followers.describe();
        return Err(ProposalsError::NotFollower {
            id: id.to_owned(),
            raised_by,
            readers,
        });
    }
    let vault = a
        .store
        .vault_by_id(&p.vault_id)
        .await?
        .ok_or_else(not_found)?;
    let content = content_of(&p)?;
    Ok(Viewed {
        record: p,
        vault,
        content,
    })
}

/// A vault's proposals, newest first, optionally of one status (member or higher).
pub async fn list(
    a: Acting<'_>,
    vault: &str,
    status: Option<ProposalStatus>,
) -> Result<(VaultRecord, Vec<(ProposalRecord, ProposalContent)>), ProposalsError> {
    let (vault, _) = a.vault(vault, VaultRole::Member).await?;
    let mut out = Vec::new();
    for p in a.store.list_proposals(&vault.id, status).await? {
        let content = content_of(&p)?;
        out.push((p, content));
    }
    Ok((vault, out))
}

/// The pending proposals of every vault the caller holds the member role or higher in (the
/// dashboard). A vault whose proposals cannot be read shows none rather than failing the page.
pub async fn pending_for(
    a: Acting<'_>,
) -> Result<Vec<(VaultRecord, Vec<ProposalRecord>)>, ProposalsError> {
    let mut out = Vec::new();
    for vault in a.store.list_vaults().await? {
        if a.caller
            .role_in(&vault.id)
            .is_some_and(|r| r >= VaultRole::Member)
        {
            let pending = a
                .store
                .list_proposals(&vault.id, Some(ProposalStatus::Pending))
                .await
                .unwrap_or_default();
            out.push((vault, pending));
        }
    }
    Ok(out)
}

/// A proposal of vault `vault` by its number (`3`, `#3`) or its id (what `create` answered),
/// for a caller with the member role or higher there. Ids are 32 hex digits, too long for a
/// number.
pub async fn find(
    a: Acting<'_>,
    vault: &str,
    number_or_id: &str,
) -> Result<(VaultRecord, ProposalRecord), ProposalsError> {
    let (record, _) = a.vault(vault, VaultRole::Member).await?;
    let found = match number_or_id
        .strip_prefix('#')
        .unwrap_or(number_or_id)
        .parse::<i64>()
    {
        Ok(n) => a.store.proposal_by_seq(&record.id, n).await?,
        Err(_) => a
            .store
            .proposal(number_or_id)
            .await?
            .filter(|p| p.vault_id == record.id),
    };
    let p = found.ok_or_else(|| ProposalsError::NotInVault {
        proposal: number_or_id.to_owned(),
        vault: vault.to_owned(),
    })?;
    Ok((record, p))
}

/// A proposal under review: what the approver is shown, against the vault as it is now.
#[derive(Debug)]
pub struct Review {
    /// The proposal, its vault and its content.
    pub viewed: Viewed,
    /// The vault's services and keys now (risks and the approval hash are computed on it).
    pub state: VaultState,
    /// Who raised it, in words.
    pub creator: String,
    /// Who decided it (their email), once decided by a person who still exists.
    pub reviewer: Option<String>,
}

/// A proposal for review by number or id (member or higher).
pub async fn review(
    a: Acting<'_>,
    vault: &str,
    number_or_id: &str,
) -> Result<Review, ProposalsError> {
    let (vault, record) = find(a, vault, number_or_id).await?;
    review_of(&a, vault, record).await
}

/// The review of an already loaded proposal.
pub async fn review_of(
    m: &Manage<'_>,
    vault: VaultRecord,
    record: ProposalRecord,
) -> Result<Review, ProposalsError> {
    let content = content_of(&record)?;
    let state = vault_state(m, &vault.id).await?;
    let creator = describe_creator(m, &record).await;
    let reviewer = match &record.reviewed_by {
        Some(id) => user_email(m, id).await,
        None => None,
    };
    Ok(Review {
        viewed: Viewed {
            record,
            vault,
            content,
        },
        state,
        creator,
        reviewer,
    })
}

/// A proposal the approval page may show: to anyone holding its link token, or to a member of
/// its vault. Everything else looks like a bad link.
pub async fn visible(
    m: &Manage<'_>,
    id: &str,
    link_token: Option<&str>,
    viewer: Option<&Authenticated>,
) -> Result<(VaultRecord, ProposalRecord), ProposalsError> {
    let p = m
        .store
        .proposal(id)
        .await?
        .ok_or(ProposalsError::LinkInvalid)?;
    let member = viewer
        .and_then(|v| v.role_in(&p.vault_id))
        .is_some_and(|r| r >= VaultRole::Member);
    let link_ok = match link_token {
        Some(t) if TokenKind::Approval.matches_format(t) => m
            .keyring
            .token_hasher()
            .hash_str(t)
            .ct_eq(&p.approval_token_hash),
        _ => false,
    };
    if !member && !link_ok {
        return Err(ProposalsError::LinkInvalid);
    }
    let vault = m
        .store
        .vault_by_id(&p.vault_id)
        .await?
        .ok_or(ProposalsError::LinkInvalid)?;
    Ok((vault, p))
}

/// The user id of a caller who may decide proposals: humans only.
fn reviewer(caller: &Authenticated) -> Result<&str, ProposalsError> {
    match &caller.principal {
        Principal::User { id, .. } => Ok(id),
        _ => Err(ProposalsError::HumansOnly),
    }
}

fn not_pending(p: &ProposalRecord) -> ProposalsError {
    ProposalsError::NotPending {
        number: p.seq,
        status: p.status,
    }
}

/// The error for a proposal another decision (or expiry) got to first, with its status now.
async fn decided_meanwhile(m: &Manage<'_>, p: &ProposalRecord) -> ProposalsError {
    match m.store.proposal(&p.id).await {
        Ok(now) => not_pending(now.as_ref().unwrap_or(p)),
        Err(e) => e.into(),
    }
}

/// What an approver sends: values for the credential slots, and what they reviewed.
#[derive(Debug, Default)]
pub struct Approval {
    /// Values by key; an empty one keeps the value the agent supplied.
    pub values: BTreeMap<String, SecretString>,
    /// Metadata entries by key (the page's username field, or the API's `metadata`); each
    /// entry replaces the agent's entry of the same name, the others are kept.
    pub metadata: BTreeMap<String, BTreeMap<String, String>>,
    /// The `approval_hash` of what was reviewed; without it, the approval is for the content
    /// and vault as they are now (the API allows that; the page always sends it).
    pub shown_hash: Option<String>,
    /// The risks the approver accepted.
    pub acknowledged: Acknowledgement,
}

/// A human's decision on a proposal.
#[derive(Debug)]
pub enum Decision {
    /// Approve and apply it.
    Approve(Approval),
    /// Reject it; the reason is shown to the agent.
    Reject {
        /// Why (at most 1000 characters; may be empty).
        reason: String,
    },
}

/// Decides proposal `number_or_id` of vault `vault` (see [`decide`]); returns the proposal as
/// it was before the decision.
pub async fn decide_by_ref(
    a: Acting<'_>,
    vault: &str,
    number_or_id: &str,
    decision: Decision,
) -> Result<ProposalRecord, ProposalsError> {
    reviewer(a.caller)?;
    let (vault, p) = find(a, vault, number_or_id).await?;
    decide(a, &vault, &p, decision).await?;
    Ok(p)
}

/// Approves or rejects a pending proposal: humans only, once.
pub async fn decide(
    a: Acting<'_>,
    vault: &VaultRecord,
    p: &ProposalRecord,
    decision: Decision,
) -> Result<(), ProposalsError> {
    match decision {
        Decision::Approve(approval) => approve(a, vault, p, approval).await,
        Decision::Reject { reason } => reject(a, vault, p, &reason).await,
    }
}

/// Approves and applies a proposal in one transaction. The caller must be a human with the
/// member role (admin when services change); the hash shown must match the content and vault
/// state the human reviewed; every risk that needs an acknowledgement (look-alike hosts) must be
/// acknowledged; every credential slot needs a value (the approver's, else the agent's).
async fn approve(
    a: Acting<'_>,
    vault: &VaultRecord,
    p: &ProposalRecord,
    approval: Approval,
) -> Result<(), ProposalsError> {
    let user_id = reviewer(a.caller)?;
    if p.status != ProposalStatus::Pending {
        return Err(not_pending(p));
    }
    let content = content_of(p)?;
    let need = if proposal::needs_admin(&content) {
        VaultRole::Admin
    } else {
        VaultRole::Member
    };
    let have = a
        .caller
        .role_in(&p.vault_id)
        .ok_or(ProposalsError::NoRole)?;
    if have < need {
        return Err(ProposalsError::ApproveNeedsRole { need, have });
    }
    let vs = vault_state(&a, &p.vault_id).await?;
    let current = proposal::approval_hash(&content, &vs);
    let shown = approval.shown_hash.as_deref().unwrap_or(&current);
    use subtle::ConstantTimeEq;
    if !bool::from(current.as_bytes().ct_eq(shown.as_bytes())) {
        return Err(ProposalsError::Stale);
    }
    // The risks are a function of the content and vault state the hash covers, so these are
    // exactly the risks the approver was shown.
    let risks = proposal::risks(&content, &vs);
    let missing = proposal::unacknowledged(&risks, &approval.acknowledged);
    if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|r| format!("[{}] {}", r.id.as_deref().unwrap_or_default(), r.text))
            .collect();
        return Err(ProposalsError::RisksNotAcknowledged {
            count: missing.len(),
            risks: list.join("; "),
        });
    }
    let plan = proposal::plan(&content, &vs).map_err(ProposalsError::NoLongerApplies)?;
    let supplied =
        supplied_to_apply(&a, p, &plan.set_keys, approval.values, approval.metadata).await?;
    let rows = services::rows_for(&a, &p.vault_id, &plan.services, &types_after(&vs, &plan))?;
    let actor = a.caller.actor().to_string();
    let now = now_ms();
    let mut writes: Vec<CredentialWrite> = Vec::with_capacity(plan.set_keys.len());
    for key in &plan.set_keys {
        let invalid = |source| ProposalsError::InvalidValue {
            key: key.clone(),
            source,
        };
        // Each value is checked as its slot's type, like any other set: nothing is written
        // unless every one passes.
        let ty = plan
            .types
            .get(key)
            .copied()
            .unwrap_or(CredentialType::ApiKey);
        let value = supplied
            .values
            .get(key)
            .ok_or_else(|| ProposalsError::ValueRequired(key.clone()))?;
        // SSH KDFs and RSA parses run off the async runtime, as for a direct set.
        let validated = super::credentials::validate_off_the_runtime(
            ty,
            value,
            crate::credtype::CheckOptions {
                allow_expired: false,
                now_ms: now,
            },
        )
        .await
        .map_err(invalid)?;
        let metadata = supplied.metadata.get(key).cloned();
        if let Some(m) = &metadata {
            crate::credtype::validate_metadata(m).map_err(invalid)?;
        }
        writes.push(CredentialWrite {
            key: key.clone(),
            ty,
            payload: validated.payload,
            description: content
                .credentials
                .iter()
                .filter_map(|s| s.writes())
                .find(|s| &s.key == key && !s.description.is_empty())
                .map(|s| s.description.clone()),
            // No metadata given keeps a rotated credential's stored map (its username).
            metadata,
            derived: validated.derived_metadata,
            expires_at: validated.expires_at,
            actor: actor.clone(),
            must_exist: plan.rotate_keys.contains(key),
        });
    }
    let applied = a
        .store
        .apply_proposal(
            p,
            ApplyWrites {
                services: &rows,
                credentials: &writes,
                delete_keys: &plan.delete_keys,
                reviewer: user_id,
                max_credentials: a.config.limits.max_credentials_per_vault,
            },
            a.keyring,
            |rows, keys| {
                // The vault inside the transaction must be the one the approver reviewed.
                let services: Option<Vec<ServiceSpec>> = rows
                    .iter()
                    .map(|r| read_service(a.keyring, &p.vault_id, r).verified().ok())
                    .collect();
                services.is_some_and(|services| {
                    VaultState {
                        services,
                        keys: keys.iter().cloned().collect(),
                        credentials: BTreeMap::new(),
                    }
                    .fingerprint()
                        == vs.fingerprint()
                })
            },
        )
        .await
        .map_err(|e| match e {
            // Revoked, deleted or retyped between the check above and the write transaction.
            StoreError::Credential(
                refused @ (CredentialRefused::Revoked(_)
                | CredentialRefused::NotFound(_)
                | CredentialRefused::TypeMismatch { .. }),
            ) => ProposalsError::NoLongerApplies(ProposalError(refused.to_string())),
            other => other.into(),
        })?;
    match applied {
        ApplyOutcome::Applied => {}
        ApplyOutcome::VaultChanged => return Err(ProposalsError::VaultChanged),
        ApplyOutcome::NotPending => return Err(decided_meanwhile(&a, p).await),
    }
    a.changed(&p.vault_id).await;
    a.record("proposal.approve", Some(vault), format!("#{}", p.seq))
        .await;
    Ok(())
}

/// What is written for the keys a proposal sets or rotates.
struct ToApply {
    /// Each key's value: the approver's, else the agent's.
    values: BTreeMap<CredentialKey, SecretString>,
    /// Each key's metadata, where the agent or the approver gave any: the agent's entries
    /// with the approver's over them.
    metadata: BTreeMap<CredentialKey, BTreeMap<String, String>>,
}

/// The value (and metadata) of every key the proposal sets: the approver's when given
/// (checked), else what the agent supplied (opened from its seal); a key without a value is
/// an error.
async fn supplied_to_apply(
    m: &Manage<'_>,
    p: &ProposalRecord,
    set_keys: &[CredentialKey],
    values: BTreeMap<String, SecretString>,
    approver_metadata: BTreeMap<String, BTreeMap<String, String>>,
) -> Result<ToApply, ProposalsError> {
    let mut given: BTreeMap<CredentialKey, SecretString> = BTreeMap::new();
    for (key, value) in values {
        let key = CredentialKey::parse(&key).map_err(ProposalsError::InvalidKey)?;
        if !set_keys.contains(&key) {
            return Err(ProposalsError::UnexpectedValue(key));
        }
        if value.expose_secret().len() > super::credentials::MAX_VALUE_BYTES {
            return Err(ProposalsError::ValueTooLong(key));
        }
        if !value.expose_secret().is_empty() {
            given.insert(key, value);
        }
    }
    let mut given_meta: BTreeMap<CredentialKey, BTreeMap<String, String>> = BTreeMap::new();
    for (key, entries) in approver_metadata {
        let key = CredentialKey::parse(&key).map_err(ProposalsError::InvalidKey)?;
        if !set_keys.contains(&key) {
            return Err(ProposalsError::UnexpectedValue(key));
        }
        if !entries.is_empty() {
            given_meta.insert(key, entries);
        }
    }
    let supplied = m.store.proposal_values(&p.id).await?;
    let mut out = ToApply {
        values: BTreeMap::new(),
        metadata: agent_metadata(m, p, &supplied)?,
    };
    for key in set_keys {
        if let Some(v) = given.remove(key) {
            out.values.insert(key.clone(), v);
        } else if let Some(rec) = supplied
            .iter()
            .find(|r| &r.key == key && r.part == SuppliedPart::Value)
        {
            let plain = open_supplied(m, p, rec)?;
            out.values.insert(
                key.clone(),
                SecretString::from(String::from_utf8_lossy(plain.expose_secret()).into_owned()),
            );
        } else {
            return Err(ProposalsError::ValueRequired(key.clone()));
        }
    }
    for (key, entries) in given_meta {
        out.metadata.entry(key).or_default().extend(entries);
    }
    Ok(out)
}

/// Opens one agent-supplied row.
fn open_supplied(
    m: &Manage<'_>,
    p: &ProposalRecord,
    rec: &ProposalValueRecord,
) -> Result<secrecy::SecretSlice<u8>, ProposalsError> {
    m.keyring
        .open_instance(
            &Aad::proposal_value(&p.id, &ProposalValueRecord::row_key(&rec.key, rec.part)),
            &rec.sealed_value,
        )
        .map_err(|source| ProposalsError::SuppliedValue {
            id: p.id.clone(),
            key: rec.key.clone(),
            source,
        })
}

/// The metadata the agent supplied, by key, opened from its seals.
fn agent_metadata(
    m: &Manage<'_>,
    p: &ProposalRecord,
    supplied: &[ProposalValueRecord],
) -> Result<BTreeMap<CredentialKey, BTreeMap<String, String>>, ProposalsError> {
    let mut out = BTreeMap::new();
    for rec in supplied.iter().filter(|r| r.part == SuppliedPart::Metadata) {
        let plain = open_supplied(m, p, rec)?;
        // It was checked before it was sealed; a row that does not read back was edited.
        let map: BTreeMap<String, String> =
            serde_json::from_slice(plain.expose_secret()).map_err(|_| {
                ProposalsError::SuppliedValue {
                    id: p.id.clone(),
                    key: rec.key.clone(),
                    source: CryptoError::Malformed,
                }
            })?;
        out.insert(rec.key.clone(), map);
    }
    Ok(out)
}

/// The metadata the agent supplied with a pending proposal, for its approval page.
pub async fn supplied_metadata(
    m: &Manage<'_>,
    p: &ProposalRecord,
) -> Result<BTreeMap<CredentialKey, BTreeMap<String, String>>, ProposalsError> {
    if p.status != ProposalStatus::Pending {
        return Ok(BTreeMap::new());
    }
    let supplied = m.store.proposal_values(&p.id).await?;
    agent_metadata(m, p, &supplied)
}

/// Rejects a proposal (member role or higher, humans only); the reason is shown to the agent.
async fn reject(
    a: Acting<'_>,
    vault: &VaultRecord,
    p: &ProposalRecord,
    reason: &str,
) -> Result<(), ProposalsError> {
    let user_id = reviewer(a.caller)?;
    if p.status != ProposalStatus::Pending {
        return Err(not_pending(p));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(ProposalsError::ReasonTooLong);
    }
    let role = a
        .caller
        .role_in(&p.vault_id)
        .ok_or(ProposalsError::NoRole)?;
    if role < VaultRole::Member {
        return Err(ProposalsError::RejectNeedsMember);
    }
    if !a.store.reject_proposal(&p.id, user_id, reason).await? {
        return Err(decided_meanwhile(&a, p).await);
    }
    a.record_with(
        "proposal.reject",
        Some(vault),
        format!("#{}", p.seq),
        reason.chars().take(200).collect(),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::TokenHash;
    use crate::domain::AgentName;

    fn raised_by(kind: &str, id: &str) -> ProposalRecord {
        let created_by = Actor::from_stored(kind, id).unwrap();
        ProposalRecord {
            id: "p1".into(),
            vault_id: "v1".into(),
            seq: 1,
            status: ProposalStatus::Pending,
            created_by,
            creator_token_id: Some("gone".into()),
            message: String::new(),
            content: String::new(),
            content_hash: String::new(),
            approval_token_hash: TokenHash([0; 32]),
            expires_at: 0,
            reviewed_by: None,
            reviewed_at: None,
            review_note: None,
            created_at: 0,
        }
    }

    fn token(principal: Principal) -> Authenticated {
        Authenticated {
            token_id: "t".into(),
            token_hash: TokenHash([1; 32]),
            principal,
            grants: Default::default(),
            expires_at: None,
        }
    }

    fn agent(id: &str) -> Authenticated {
        token(Principal::Agent {
            id: id.into(),
            name: AgentName::parse("bot").unwrap(),
        })
    }

    fn run(vault: &str, minted_by: Minter) -> Authenticated {
        token(Principal::Scoped {
            vault_id: vault.into(),
            role: VaultRole::Proxy,
            minted_by,
        })
    }

    #[test]
    fn an_agents_proposal_is_followed_by_any_token_of_that_agent() {
        let p = raised_by("agent", "a1");
        let f = Followers::of(&p);
        assert!(f.admit(&agent("a1")));
        assert!(f.admit(&run("v1", Minter::Agent("a1".into()))));
        assert!(f.admit(&run("v2", Minter::Agent("a1".into()))));
        assert!(!f.admit(&agent("a2")));
        assert!(!f.admit(&run("v1", Minter::Agent("a2".into()))));
        assert!(!f.admit(&run("v1", Minter::User("u1".into()))));
    }

    #[test]
    fn a_vault_token_proposal_is_followed_by_vault_token_sessions_of_that_vault() {
        let p = raised_by("scoped", "t0");
        let f = Followers::of(&p);
        assert!(f.admit(&run("v1", Minter::User("u1".into()))));
        assert!(f.admit(&run("v1", Minter::User("u2".into()))));
        assert!(!f.admit(&run("v2", Minter::User("u1".into()))));
        assert!(!f.admit(&run("v1", Minter::Agent("a1".into()))));
        assert!(!f.admit(&agent("a1")));
    }

    #[test]
    fn a_persons_proposal_is_followed_by_members_only() {
        let p = raised_by("user", "u1");
        let f = Followers::of(&p);
        assert_eq!(f, Followers::Nobody);
        assert!(!f.admit(&run("v1", Minter::User("u1".into()))));
        assert_eq!(f.describe().1, "members of the vault");
    }
}
