//! Proposals over the API: discovery and creation by agents, status polling by their creator,
//! listing and review by humans. Approving is shared with the web pages through
//! [`approve`] and [`reject`], so the rules live in one place.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{ApiJson, Caller};
use super::{AdminState, ApiError};
use crate::crypto::{Aad, TokenKind, open, random_id, seal};
use crate::domain::{CredentialKey, VaultRole, now_ms};
use crate::identity::{Authenticated, Principal};
use crate::manage;
use crate::notify::ProposalEvent;
use crate::policy::service::ServiceSpec;
use crate::proposal::{self, ProposalContent, ProposalRequest, VaultState};
use crate::registry::read_service;
use crate::store::{
    ApplyOutcome, ApplyWrites, CreateRefused, CredentialWrite, PrincipalKind, ProposalRecord,
    ProposalStatus, ProposalValueRecord, VaultRecord,
};

/// The vault's current services and keys.
pub(crate) async fn vault_state(
    state: &AdminState,
    vault_id: &str,
) -> Result<VaultState, ApiError> {
    let m = state.manage();
    let services = manage::services::specs(&m, vault_id).await?;
    let keys = manage::services::known_keys(&m, vault_id).await?;
    Ok(VaultState { services, keys })
}

/// Resolves the vault an agent-side call is about: named, or the token's only vault.
async fn agent_vault(
    state: &AdminState,
    caller: &Authenticated,
    named: Option<&str>,
) -> Result<VaultRecord, ApiError> {
    if let Some(name) = named {
        return Ok(state.vault_access(caller, name, VaultRole::Proxy).await?.0);
    }
    let id = match &caller.principal {
        Principal::Scoped { vault_id, .. } => vault_id.clone(),
        _ => {
            let mut ids = caller.grants.keys();
            match (ids.next(), ids.next()) {
                (Some(only), None) => only.clone(),
                _ => {
                    return Err(ApiError::bad_request(
                        "vault_required",
                        "name the vault: add \"vault\" (or ?vault=) to the request",
                    ));
                }
            }
        }
    };
    state
        .store
        .vault_by_id(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound("vault not found".into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscoverQuery {
    vault: Option<String>,
}

/// `GET /v1/discover`: what an agent can use here: services (name, host) and credential key
/// names, never values.
pub(crate) async fn discover(
    State(state): State<AdminState>,
    caller: Caller,
    Query(q): Query<DiscoverQuery>,
) -> Result<Json<Value>, ApiError> {
    let vault = agent_vault(&state, &caller, q.vault.as_deref()).await?;
    let vs = vault_state(&state, &vault.id).await?;
    let services: Vec<_> = vs
        .services
        .iter()
        .filter(|s| s.enabled)
        .map(|s| json!({ "name": s.name, "host": s.host }))
        .collect();
    Ok(Json(json!({
        "vault": vault.name,
        "unmatched_host_policy": vault.unmatched_host_policy,
        "services": services,
        "credentials": vs.keys.iter().collect::<Vec<_>>(),
        "propose": "POST /v1/proposals",
    })))
}

fn proposal_json(p: &ProposalRecord, vault_name: &str, content: &ProposalContent) -> Value {
    json!({
        "id": p.id,
        "number": p.seq,
        "vault": vault_name,
        "status": p.status,
        "message": p.message,
        "services": content.services,
        "credentials": content.credentials,
        "created_by": { "kind": p.created_by_kind, "id": p.created_by_id },
        "created_at": p.created_at,
        "expires_at": p.expires_at,
        "reviewed_at": p.reviewed_at,
        "review_note": p.review_note,
    })
}

pub(crate) fn content_of(p: &ProposalRecord) -> Result<ProposalContent, ApiError> {
    serde_json::from_str(&p.content)
        .map_err(|e| ApiError::Integrity(format!("proposal {} content: {e}", p.id)))
}

/// Where this server is reached: its public URL, the Host names it answers to, its listeners.
fn own_hosts(state: &AdminState) -> proposal::OwnHosts {
    let mut own = proposal::OwnHosts::default();
    own.add_url(&state.public_url);
    for host in &state.config.server.allowed_hosts {
        own.add_host(host);
    }
    own.add_addr(state.config.server.host);
    own.add_addr(state.proxy_addr.ip());
    own
}

/// `POST /v1/proposals`: an agent asks for services and credentials.
pub(crate) async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    ApiJson(req): ApiJson<ProposalRequest>,
) -> Result<Response, ApiError> {
    let vault = agent_vault(&state, &caller, req.vault.as_deref()).await?;
    let vs = vault_state(&state, &vault.id).await?;
    let (content, values) =
        proposal::validate(req, &vs).map_err(|e| ApiError::bad_request("invalid_proposal", e.0))?;
    proposal::check_links(&content, &own_hosts(&state))
        .map_err(|e| ApiError::bad_request("invalid_proposal", e.0))?;
    let id = random_id()?;
    let raw = TokenKind::Approval.generate()?;
    let now = now_ms();
    let ttl = i64::try_from(state.config.proposals.ttl.as_millis()).unwrap_or(i64::MAX);
    let (kind, actor) = caller.actor();
    let record = ProposalRecord {
        id: id.clone(),
        vault_id: vault.id.clone(),
        seq: 0,
        status: ProposalStatus::Pending,
        created_by_kind: kind.to_owned(),
        created_by_id: actor.to_owned(),
        creator_token_id: Some(caller.token_id.clone()),
        message: content.message.clone(),
        content: serde_json::to_string(&content).map_err(ApiError::internal)?,
        content_hash: proposal::content_hash(&content),
        approval_token_hash: state.keyring.token_hasher().hash(&raw),
        expires_at: now.saturating_add(ttl),
        reviewed_by: None,
        reviewed_at: None,
        review_note: None,
        created_at: now,
    };
    let sealed = values
        .iter()
        .map(|(key, value)| {
            Ok(ProposalValueRecord {
                key: key.clone(),
                sealed_value: seal(
                    state.keyring.dek(),
                    &Aad::proposal_value(&id, key.as_str()),
                    value.expose_secret().as_bytes(),
                )?,
            })
        })
        .collect::<Result<Vec<_>, crate::crypto::CryptoError>>()?;
    let max = i64::from(state.config.proposals.max_pending_per_vault);
    let seq = match state.store.create_proposal(&record, &sealed, max).await? {
        Ok(seq) => seq,
        Err(CreateRefused::TooManyPending(n)) => {
            return Err(ApiError::TooManyPending(format!(
                "vault {:?} already has {n} pending proposals; wait for a human to review them",
                vault.name
            )));
        }
    };
    let approval_url = format!(
        "{}/approve/{id}?token={}",
        state.public_url,
        raw.expose_secret()
    );
    crate::audit::record(
        &state.store,
        &caller,
        "proposal.create",
        Some(&vault.id),
        format!("#{seq}"),
        String::new(),
    )
    .await;
    let created_by = describe_creator(&state, &record).await;
    let approvers = approvers(&state, &vault.id, proposal::needs_admin(&content))
        .await
        .unwrap_or_default();
    state.notifier.proposal_created(
        ProposalEvent {
            event: "proposal.created",
            vault: vault.name.to_string(),
            number: seq,
            id: id.clone(),
            approval_url: approval_url.clone(),
            message: content.message.chars().take(500).collect(),
            created_by,
        },
        approvers,
    );
    let body = json!({
        "id": id,
        "number": seq,
        "vault": vault.name,
        "status": "pending",
        "approval_url": approval_url,
        "expires_at": record.expires_at,
        "message": "a human must open approval_url, review and approve; poll GET /v1/proposals/{id} for the outcome",
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Who raised a proposal, in words a person recognises: the agent's name, the user's email, or
/// whose run token. Never a raw token or row id: when the token or agent is gone by now (run
/// tokens are purged after they expire), it says so instead.
pub(crate) async fn describe_creator(state: &AdminState, p: &ProposalRecord) -> String {
    let agent_name = |id: String| async move {
        state
            .store
            .agent_by_id(&id)
            .await
            .ok()
            .flatten()
            .map(|a| format!("agent {}", a.name))
    };
    let user_email = |id: String| async move {
        state
            .store
            .user_by_id(&id)
            .await
            .ok()
            .flatten()
            .map(|u| u.email.to_string())
    };
    let described = match p.created_by_kind.as_str() {
        "agent" => agent_name(p.created_by_id.clone()).await,
        "scoped" => match state
            .store
            .token_by_id(&p.created_by_id)
            .await
            .ok()
            .flatten()
        {
            Some(t) => match (t.agent_id, t.user_id) {
                (Some(a), _) => agent_name(a).await.map(|n| format!("a run token of {n}")),
                (None, Some(u)) => user_email(u)
                    .await
                    .map(|email| format!("an agent run started by {email}")),
                _ => None,
            },
            None => None,
        },
        "user" => user_email(p.created_by_id.clone()).await,
        _ => None,
    };
    described.unwrap_or_else(|| match p.created_by_kind.as_str() {
        "agent" => "an agent that has since been deleted".into(),
        "user" => "a user who has since been deleted".into(),
        _ => "an agent run whose token has since expired or been removed".into(),
    })
}

/// Human users who may approve: members or admins (admins only when services change).
async fn approvers(
    state: &AdminState,
    vault_id: &str,
    admin: bool,
) -> Result<Vec<crate::domain::Email>, ApiError> {
    let need = if admin {
        VaultRole::Admin
    } else {
        VaultRole::Member
    };
    let mut out = Vec::new();
    for m in state.store.list_members(vault_id).await? {
        if m.kind == PrincipalKind::User
            && m.integrity_ok
            && m.role >= need
            && let Ok(email) = crate::domain::Email::parse(&m.display)
        {
            out.push(email);
        }
    }
    Ok(out)
}

/// `GET /v1/proposals/{id}`: status polling by the proposal's creator (or a member of the vault).
pub(crate) async fn poll(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::NotFound(format!("proposal {id:?} not found"));
    let p = state.store.proposal(&id).await?.ok_or_else(not_found)?;
    let (kind, actor) = caller.actor();
    let is_creator = p.creator_token_id.as_deref() == Some(caller.token_id.as_str())
        || (kind == "agent" && p.created_by_kind == "agent" && p.created_by_id == actor);
    let is_member = caller
        .role_in(&p.vault_id)
        .is_some_and(|r| r >= VaultRole::Member);
    if !is_creator && !is_member {
        return Err(not_found());
    }
    let vault = state
        .store
        .vault_by_id(&p.vault_id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(proposal_json(
        &p,
        vault.name.as_str(),
        &content_of(&p)?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    status: Option<String>,
}

/// `GET /v1/vaults/{vault}/proposals[?status=...]` (member or higher).
pub(crate) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let (vault, _) = state
        .vault_access(&caller, &name, VaultRole::Member)
        .await?;
    let status = q
        .status
        .map(|s| {
            s.parse::<ProposalStatus>()
                .map_err(|e| ApiError::bad_request("invalid_status", e))
        })
        .transpose()?;
    let mut out = Vec::new();
    for p in state.store.list_proposals(&vault.id, status).await? {
        let content = content_of(&p)?;
        out.push(proposal_json(&p, vault.name.as_str(), &content));
    }
    Ok(Json(out))
}

/// A proposal of vault `name` by its number (`3`, `#3`) or its id (what `create` answered), for
/// a caller with member role or higher there. Ids are 32 hex digits, too long for a number.
async fn proposal_in(
    state: &AdminState,
    caller: &Caller,
    name: &str,
    number_or_id: &str,
) -> Result<(VaultRecord, ProposalRecord), ApiError> {
    let (vault, _) = state.vault_access(caller, name, VaultRole::Member).await?;
    let found = match number_or_id
        .strip_prefix('#')
        .unwrap_or(number_or_id)
        .parse::<i64>()
    {
        Ok(n) => state.store.proposal_by_seq(&vault.id, n).await?,
        Err(_) => state
            .store
            .proposal(number_or_id)
            .await?
            .filter(|p| p.vault_id == vault.id),
    };
    let p = found.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no proposal {number_or_id:?} in vault {name:?} (give its number or its id)"
        ))
    })?;
    Ok((vault, p))
}

/// `GET /v1/vaults/{vault}/proposals/{n}` (member or higher; `n` is the number or the id): with risks, the values still
/// needed, and the approval hash the CLI sends back.
pub(crate) async fn show(
    State(state): State<AdminState>,
    caller: Caller,
    Path((name, n)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (vault, p) = proposal_in(&state, &caller, &name, &n).await?;
    let content = content_of(&p)?;
    let vs = vault_state(&state, &vault.id).await?;
    let mut out = proposal_json(&p, vault.name.as_str(), &content);
    out["created_by"]["name"] = json!(describe_creator(&state, &p).await);
    out["risks"] = json!(proposal::risks(&content, &vs));
    // Every proposed host in the A-label form the proxy routes on, beside its Unicode form.
    out["hosts"] = json!(
        content
            .services
            .iter()
            .filter_map(|c| match c {
                proposal::ServiceChange::Set(spec) => {
                    let forms = crate::policy::confusable::HostForms::of(&spec.host);
                    Some(json!({ "service": spec.name, "a_label": forms.ascii, "unicode": forms.unicode }))
                }
                proposal::ServiceChange::Delete { .. } => None,
            })
            .collect::<Vec<_>>()
    );
    out["missing_values"] = json!(proposal::missing_values(&content));
    out["requires_role"] = json!(if proposal::needs_admin(&content) {
        "admin"
    } else {
        "member"
    });
    out["approval_hash"] = json!(proposal::approval_hash(&content, &vs));
    Ok(Json(out))
}

/// Approval or rejection must come from a human holding a login session and, over the API, a
/// bearer token: a cookie alone is not enough here (the web pages have their own CSRF checks).
fn require_bearer_human(caller: &Caller, headers: &HeaderMap) -> Result<String, ApiError> {
    if !headers.contains_key(header::AUTHORIZATION) {
        return Err(ApiError::Forbidden(
            "approving over the API needs an Authorization header".into(),
        ));
    }
    match &caller.principal {
        Principal::User { id, .. } => Ok(id.clone()),
        _ => Err(ApiError::Forbidden(
            "only a human user can approve or reject proposals; agent tokens never can".into(),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproveBody {
    #[serde(default)]
    values: BTreeMap<String, SecretString>,
    /// The `approval_hash` of what was reviewed; when given, the approval fails if anything changed.
    #[serde(default)]
    approval_hash: Option<String>,
    /// Risks the approver explicitly accepts: `true` for all shown, or their ids.
    #[serde(default)]
    acknowledge_risks: Option<AcknowledgeRisks>,
}

/// `"acknowledge_risks": true` or `["lookalike-host:stripe", ...]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum AcknowledgeRisks {
    /// All risks (or none, when false).
    All(bool),
    /// These risk ids.
    Ids(std::collections::BTreeSet<String>),
}

impl From<Option<AcknowledgeRisks>> for proposal::Acknowledgement {
    fn from(a: Option<AcknowledgeRisks>) -> Self {
        match a {
            Some(AcknowledgeRisks::All(true)) => Self::All,
            Some(AcknowledgeRisks::Ids(ids)) => Self::Ids(ids),
            Some(AcknowledgeRisks::All(false)) | None => Self::Nothing,
        }
    }
}

/// `POST /v1/vaults/{vault}/proposals/{n}/approve`.
pub(crate) async fn approve_api(
    State(state): State<AdminState>,
    caller: Caller,
    headers: HeaderMap,
    Path((name, n)): Path<(String, String)>,
    ApiJson(body): ApiJson<ApproveBody>,
) -> Result<Json<Value>, ApiError> {
    let user_id = require_bearer_human(&caller, &headers)?;
    let (vault, p) = proposal_in(&state, &caller, &name, &n).await?;
    let content = content_of(&p)?;
    let hash = match body.approval_hash {
        Some(h) => h,
        None => proposal::approval_hash(&content, &vault_state(&state, &vault.id).await?),
    };
    let ack = body.acknowledge_risks.into();
    approve(&state, &caller, &user_id, &p, body.values, &hash, &ack).await?;
    Ok(Json(
        json!({ "id": p.id, "number": p.seq, "status": "applied" }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectBody {
    #[serde(default)]
    reason: String,
}

/// `POST /v1/vaults/{vault}/proposals/{n}/reject`.
pub(crate) async fn reject_api(
    State(state): State<AdminState>,
    caller: Caller,
    headers: HeaderMap,
    Path((name, n)): Path<(String, String)>,
    ApiJson(body): ApiJson<RejectBody>,
) -> Result<Json<Value>, ApiError> {
    let user_id = require_bearer_human(&caller, &headers)?;
    let (_, p) = proposal_in(&state, &caller, &name, &n).await?;
    reject(&state, &caller, &user_id, &p, &body.reason).await?;
    Ok(Json(
        json!({ "id": p.id, "number": p.seq, "status": "rejected" }),
    ))
}

fn not_pending(p: &ProposalRecord) -> ApiError {
    ApiError::Conflict(format!(
        "proposal #{} is {} and can no longer be decided",
        p.seq,
        p.status.as_str()
    ))
}

/// Approves and applies a proposal in one transaction. The caller must be a human with the
/// member role (admin when services change); `shown_hash` must match the content and vault
/// state the human reviewed; every risk that needs an acknowledgement (look-alike hosts) must be
/// in `acknowledged`; every credential slot needs a value (the approver's, else the agent's).
pub(crate) async fn approve(
    state: &AdminState,
    caller: &Authenticated,
    user_id: &str,
    p: &ProposalRecord,
    values: BTreeMap<String, SecretString>,
    shown_hash: &str,
    acknowledged: &proposal::Acknowledgement,
) -> Result<(), ApiError> {
    if p.status != ProposalStatus::Pending {
        return Err(not_pending(p));
    }
    let content = content_of(p)?;
    let need = if proposal::needs_admin(&content) {
        VaultRole::Admin
    } else {
        VaultRole::Member
    };
    let role = caller
        .role_in(&p.vault_id)
        .ok_or_else(|| ApiError::NotFound("proposal not found".into()))?;
    if role < need {
        return Err(ApiError::Forbidden(format!(
            "approving this proposal needs the {need} role in its vault; you have {role}"
        )));
    }
    let vs = vault_state(state, &p.vault_id).await?;
    use subtle::ConstantTimeEq;
    if !bool::from(
        proposal::approval_hash(&content, &vs)
            .as_bytes()
            .ct_eq(shown_hash.as_bytes()),
    ) {
        return Err(ApiError::Conflict(
            "the proposal or the vault changed since it was shown; reload it and review again"
                .into(),
        ));
    }
    // The risks are a function of the content and vault state the hash covers, so these are
    // exactly the risks the approver was shown.
    let risks = proposal::risks(&content, &vs);
    let missing = proposal::unacknowledged(&risks, acknowledged);
    if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|r| format!("[{}] {}", r.id.as_deref().unwrap_or_default(), r.text))
            .collect();
        return Err(ApiError::bad_request(
            "risks_not_acknowledged",
            format!(
                "this proposal has {} risk(s) you must acknowledge before approving: tick the box for each on the approval page, or send \"acknowledge_risks\" with their ids (the CLI: --acknowledge-risks). Nothing was applied. {}",
                missing.len(),
                list.join("; ")
            ),
        ));
    }
    let plan = proposal::plan(&content, &vs).map_err(|e| {
        ApiError::Conflict(format!(
            "the vault changed and this proposal no longer applies: {e}"
        ))
    })?;
    let mut given: BTreeMap<CredentialKey, SecretString> = BTreeMap::new();
    for (key, value) in values {
        let key = CredentialKey::parse(&key)
            .map_err(|e| ApiError::bad_request("invalid_credential_key", e.to_string()))?;
        if !plan.set_keys.contains(&key) {
            return Err(ApiError::bad_request(
                "unexpected_value",
                format!("the proposal does not ask for {key}"),
            ));
        }
        if value.expose_secret().len() > manage::credentials::MAX_VALUE_BYTES {
            return Err(ApiError::bad_request(
                "invalid_credential_value",
                format!("the value of {key} is too long"),
            ));
        }
        if !value.expose_secret().is_empty() {
            given.insert(key, value);
        }
    }
    let supplied = state.store.proposal_values(&p.id).await?;
    let mut final_values: BTreeMap<CredentialKey, SecretString> = BTreeMap::new();
    for key in &plan.set_keys {
        if let Some(v) = given.remove(key) {
            final_values.insert(key.clone(), v);
        } else if let Some(rec) = supplied.iter().find(|r| &r.key == key) {
            let plain = open(
                state.keyring.dek(),
                &Aad::proposal_value(&p.id, key.as_str()),
                &rec.sealed_value,
            )
            .map_err(|e| {
                ApiError::Integrity(format!(
                    "agent-supplied value {key} of proposal {}: {e}",
                    p.id
                ))
            })?;
            final_values.insert(
                key.clone(),
                SecretString::from(String::from_utf8_lossy(plain.expose_secret()).into_owned()),
            );
        } else {
            return Err(ApiError::bad_request(
                "value_required",
                format!("enter a value for {key}"),
            ));
        }
    }
    let keys_after: std::collections::BTreeSet<CredentialKey> = vs
        .keys
        .iter()
        .chain(plan.set_keys.iter())
        .cloned()
        .collect();
    let rows =
        manage::services::rows_for(&state.manage(), &p.vault_id, &plan.services, &keys_after)?;
    let writes: Vec<CredentialWrite> = plan
        .set_keys
        .iter()
        .map(|key| {
            let description = content.credentials.iter().find_map(|s| match s {
                proposal::CredentialSlot::Set {
                    key: k,
                    description,
                    ..
                } if k == key && !description.is_empty() => Some(description.clone()),
                _ => None,
            });
            CredentialWrite {
                key: key.clone(),
                description,
            }
        })
        .collect();
    let keyring = state.keyring.clone();
    let vault_id = p.vault_id.clone();
    let applied = state
        .store
        .apply_proposal(
            p,
            ApplyWrites {
                services: &rows,
                credentials: &writes,
                delete_keys: &plan.delete_keys,
                reviewer: user_id,
                max_credentials: state.config.limits.max_credentials_per_vault,
            },
            |key, version| {
                let value = final_values
                    .get(key)
                    .map(|v| v.expose_secret().as_bytes())
                    .unwrap_or_default();
                keyring.seal_credential(&vault_id, key.as_str(), version, value)
            },
            |rows, keys| {
                // The vault inside the transaction must be the one the approver reviewed.
                let services: Option<Vec<ServiceSpec>> = rows
                    .iter()
                    .map(|r| read_service(&state.keyring, &p.vault_id, r).verified().ok())
                    .collect();
                services.is_some_and(|services| {
                    VaultState {
                        services,
                        keys: keys.iter().cloned().collect(),
                    }
                    .fingerprint()
                        == vs.fingerprint()
                })
            },
        )
        .await?;
    match applied {
        ApplyOutcome::Applied => {}
        ApplyOutcome::VaultChanged => {
            return Err(ApiError::Conflict(
                "the vault changed since the proposal was shown; reload it and review again".into(),
            ));
        }
        ApplyOutcome::NotPending => {
            let now = state
                .store
                .proposal(&p.id)
                .await?
                .unwrap_or_else(|| p.clone());
            return Err(not_pending(&now));
        }
    }
    state.manage().changed(&p.vault_id).await;
    crate::audit::record(
        &state.store,
        caller,
        "proposal.approve",
        Some(&p.vault_id),
        format!("#{}", p.seq),
        String::new(),
    )
    .await;
    Ok(())
}

/// Rejects a proposal (member role or higher, humans only).
pub(crate) async fn reject(
    state: &AdminState,
    caller: &Authenticated,
    user_id: &str,
    p: &ProposalRecord,
    reason: &str,
) -> Result<(), ApiError> {
    if p.status != ProposalStatus::Pending {
        return Err(not_pending(p));
    }
    if reason.chars().count() > 1000 {
        return Err(ApiError::bad_request(
            "invalid_reason",
            "the reason is longer than 1000 characters",
        ));
    }
    let role = caller
        .role_in(&p.vault_id)
        .ok_or_else(|| ApiError::NotFound("proposal not found".into()))?;
    if role < VaultRole::Member {
        return Err(ApiError::Forbidden(
            "rejecting needs the member role in the vault".into(),
        ));
    }
    if !state.store.reject_proposal(&p.id, user_id, reason).await? {
        let now = state
            .store
            .proposal(&p.id)
            .await?
            .unwrap_or_else(|| p.clone());
        return Err(not_pending(&now));
    }
    crate::audit::record(
        &state.store,
        caller,
        "proposal.reject",
        Some(&p.vault_id),
        format!("#{}", p.seq),
        reason.chars().take(200).collect(),
    )
    .await;
    Ok(())
}
