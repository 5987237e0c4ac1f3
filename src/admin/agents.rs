//! Agents and tokens: create an agent (its token is shown once), rotate, revoke, delete; mint
//! short-lived scoped proxy tokens for one vault (`run`, `vault token`) and revoke them.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use super::auth::VaultGrantBody;
use super::extract::{ApiJson, Caller};
use super::{AdminState, ApiError, issue_token};
use crate::crypto::{TokenKind, random_id};
use crate::domain::{AgentName, VaultRole, now_ms};
use crate::identity::{Minter, Principal};
use crate::store::{AgentRecord, PrincipalKind, TokenStoreKind};

/// Shortest token lifetime accepted.
const MIN_TTL: Duration = Duration::from_secs(60);

/// A new token for an agent, not yet stored (it is stored with the agent, or replaces its
/// previous token).
fn agent_token(
    state: &AdminState,
    agent_id: &str,
    ttl: Option<Duration>,
) -> Result<(secrecy::SecretString, crate::store::TokenRecord), ApiError> {
    super::new_token(
        state,
        TokenKind::Agent,
        TokenStoreKind::Agent,
        |t| {
            t.agent_id = Some(agent_id.to_owned());
            t.label = "agent".into();
        },
        ttl,
    )
}

fn ttl_from(
    seconds: Option<u64>,
    default: Option<Duration>,
    max: Option<Duration>,
) -> Result<Option<Duration>, ApiError> {
    let ttl = seconds.map(Duration::from_secs).or(default);
    if let Some(t) = ttl {
        if t < MIN_TTL {
            return Err(ApiError::bad_request(
                "invalid_ttl",
                "the lifetime must be at least 60 seconds",
            ));
        }
        if let Some(m) = max
            && t > m
        {
            return Err(ApiError::bad_request(
                "invalid_ttl",
                format!(
                    "the lifetime must be at most {}",
                    humantime::format_duration(m)
                ),
            ));
        }
    }
    Ok(ttl)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: String,
    #[serde(default)]
    vaults: Vec<VaultGrantBody>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

fn require_user(caller: &Caller) -> Result<&str, ApiError> {
    match &caller.principal {
        Principal::User { id, .. } => Ok(id),
        _ => Err(ApiError::Forbidden("only human users manage agents".into())),
    }
}

async fn agent_view(
    state: &AdminState,
    agent: &AgentRecord,
) -> Result<serde_json::Value, ApiError> {
    let mut vaults = Vec::new();
    for (vault_id, role) in state
        .store
        .grants_of(PrincipalKind::Agent, &agent.id)
        .await?
    {
        if let Some(v) = state.store.vault_by_id(&vault_id).await? {
            vaults.push(json!({ "vault": v.name, "role": role }));
        }
    }
    let tokens = state.store.list_tokens(Some(&agent.id), None).await?;
    let own: Vec<_> = tokens
        .iter()
        .filter(|t| t.kind == TokenStoreKind::Agent)
        .collect();
    if !agent.integrity_ok {
        // Its tokens resolve to nothing; show it so an owner can delete it.
        return Ok(json!({
            "name": agent.name,
            "created_at": agent.created_at,
            "vaults": [],
            "active_tokens": 0,
            "integrity_error": true,
        }));
    }
    Ok(json!({
        "name": agent.name,
        "created_at": agent.created_at,
        "vaults": vaults,
        "active_tokens": own.len(),
        "expires_at": own.iter().filter_map(|t| t.expires_at).max(),
    }))
}

/// `POST /v1/agents`: creates an agent with vault roles; the token is returned once.
pub(super) async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let user_id = require_user(&caller)?.to_owned();
    let name = AgentName::parse(&body.name)
        .map_err(|e| ApiError::bad_request("invalid_agent_name", e.to_string()))?;
    let mut grants = Vec::new();
    for g in &body.vaults {
        let (vault, _) = state
            .vault_access(&caller, &g.vault, VaultRole::Admin)
            .await?;
        grants.push((vault.id, g.role));
    }
    let ttl = ttl_from(
        body.ttl_seconds,
        state.config.tokens.agent_default_ttl,
        None,
    )?;
    let agent = AgentRecord {
        id: random_id()?,
        name: name.clone(),
        created_by: Some(user_id),
        created_at: now_ms(),
        integrity_ok: true,
    };
    let (raw, token) = agent_token(&state, &agent.id, ttl)?;
    state
        .store
        .create_agent(&agent, &grants, &token)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(_) => {
                ApiError::Conflict(format!("agent {name:?} already exists"))
            }
            other => other.into(),
        })?;
    state.manage().tokens_changed().await;
    crate::audit::record(
        &state.store,
        &caller,
        "agent.create",
        None,
        name.to_string(),
        String::new(),
    )
    .await;
    let mut view = agent_view(&state, &agent).await?;
    view["token"] = json!(raw.expose_secret());
    view["expires_at"] = json!(token.expires_at);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn managed_agent(
    state: &AdminState,
    caller: &Caller,
    name: &str,
) -> Result<AgentRecord, ApiError> {
    let user_id = require_user(caller)?;
    let not_found = || ApiError::NotFound(format!("agent {name:?} not found"));
    let parsed = AgentName::parse(name).map_err(|_| not_found())?;
    let agent = state
        .store
        .agent_by_name(&parsed)
        .await?
        .ok_or_else(not_found)?;
    // Whom a tampered row claims as its creator is not evidence: only owners manage it.
    let creator = agent
        .integrity_ok
        .then_some(agent.created_by.as_deref())
        .flatten();
    if caller.is_owner() || creator == Some(user_id) {
        Ok(agent)
    } else {
        Err(not_found())
    }
}

/// An agent row that failed its MAC may only be deleted: a new token for it would be a token
/// for whatever the edit made of it.
fn require_intact(agent: &AgentRecord) -> Result<(), ApiError> {
    if agent.integrity_ok {
        Ok(())
    } else {
        Err(ApiError::Integrity(format!(
            "agent row {} failed its MAC",
            agent.id
        )))
    }
}

/// `GET /v1/agents`: owners see every agent, others the agents they created.
pub(super) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let user_id = require_user(&caller)?.to_owned();
    let mut out = Vec::new();
    for agent in state.store.list_agents().await? {
        let creator = agent
            .integrity_ok
            .then_some(agent.created_by.as_deref())
            .flatten();
        if caller.is_owner() || creator == Some(user_id.as_str()) {
            out.push(agent_view(&state, &agent).await?);
        }
    }
    Ok(Json(out))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateBody {
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// `POST /v1/agents/{name}/rotate`: revokes every token of the agent and issues a new one.
pub(super) async fn rotate(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Option<ApiJson<RotateBody>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = managed_agent(&state, &caller, &name).await?;
    require_intact(&agent)?;
    let body = body.map(|b| b.0).unwrap_or_default();
    let ttl = ttl_from(
        body.ttl_seconds,
        state.config.tokens.agent_default_ttl,
        None,
    )?;
    let (raw, token) = agent_token(&state, &agent.id, ttl)?;
    state.store.rotate_agent_token(&agent.id, &token).await?;
    state.manage().tokens_changed().await;
    crate::audit::record(
        &state.store,
        &caller,
        "agent.rotate",
        None,
        agent.name.to_string(),
        String::new(),
    )
    .await;
    Ok(Json(
        json!({ "name": agent.name, "token": raw.expose_secret(), "expires_at": token.expires_at }),
    ))
}

/// `POST /v1/agents/{name}/revoke`: revokes every token the agent holds or minted.
pub(super) async fn revoke(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = managed_agent(&state, &caller, &name).await?;
    let n = state.store.revoke_agent_tokens(&agent.id).await?;
    state.manage().tokens_changed().await;
    crate::audit::record(
        &state.store,
        &caller,
        "agent.revoke",
        None,
        agent.name.to_string(),
        String::new(),
    )
    .await;
    Ok(Json(json!({ "name": agent.name, "revoked_tokens": n })))
}

/// `DELETE /v1/agents/{name}`: deletes the agent, its grants and its tokens.
pub(super) async fn remove(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let agent = managed_agent(&state, &caller, &name).await?;
    state.store.delete_agent(&agent.id).await?;
    state.manage().tokens_changed().await;
    crate::audit::record(
        &state.store,
        &caller,
        "agent.delete",
        None,
        agent.name.to_string(),
        String::new(),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct MintBody {
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    label: Option<String>,
}

/// `POST /v1/vaults/{vault}/tokens`: a short-lived proxy-role token for this vault. Users need
/// the member role; agents may mint one for a vault they hold a role in. What an agent mints is
/// always proxy-role, for one of its own vaults, no longer-lived than the agent's token, and is
/// revoked with it (`revoke_token`, rotate, revoke, delete); scoped tokens mint nothing.
pub(super) async fn mint_token(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Option<ApiJson<MintBody>>,
) -> Result<Response, ApiError> {
    let body = body.map(|b| b.0).unwrap_or_default();
    let need = match &caller.principal {
        Principal::User { .. } => VaultRole::Member,
        Principal::Agent { .. } => VaultRole::Proxy,
        Principal::Scoped { .. } => {
            return Err(ApiError::Forbidden(
                "a scoped token cannot mint further tokens".into(),
            ));
        }
    };
    let (vault, _) = state.vault_access(&caller, &name, need).await?;
    let tokens = &state.config.tokens;
    let mut ttl = ttl_from(
        body.ttl_seconds,
        Some(tokens.scoped_default_ttl),
        Some(tokens.scoped_max_ttl),
    )?
    .unwrap_or(tokens.scoped_default_ttl);
    if let Some(own_expiry) = caller.expires_at {
        // Never outlive the token that minted it. An agent asking for more is told so rather
        // than quietly given less: what it mints is always shorter-lived than itself.
        let left =
            Duration::from_millis(u64::try_from(own_expiry.saturating_sub(now_ms())).unwrap_or(0));
        if matches!(caller.principal, Principal::Agent { .. })
            && body.ttl_seconds.is_some()
            && ttl > left
        {
            return Err(ApiError::bad_request(
                "invalid_ttl",
                format!(
                    "a token cannot outlive the agent token that mints it, which expires in {}",
                    humantime::format_duration(Duration::from_secs(left.as_secs()))
                ),
            ));
        }
        ttl = ttl.min(left);
    }
    let label = body.label.unwrap_or_default();
    if label.len() > 100 {
        return Err(ApiError::bad_request(
            "invalid_label",
            "labels are at most 100 characters",
        ));
    }
    let minter = match &caller.principal {
        Principal::User { id, .. } => Minter::User(id.clone()),
        Principal::Agent { id, .. } => Minter::Agent(id.clone()),
        Principal::Scoped { .. } => {
            return Err(ApiError::Forbidden(
                "a scoped token cannot mint further tokens".into(),
            ));
        }
    };
    let vault_id = vault.id.clone();
    let (raw, record) = issue_token(
        &state,
        TokenKind::Scoped,
        TokenStoreKind::Scoped,
        |t| {
            t.vault_id = Some(vault_id);
            t.vault_role = Some(VaultRole::Proxy);
            t.label = label;
            match minter {
                Minter::User(u) => t.user_id = Some(u),
                Minter::Agent(a) => t.agent_id = Some(a),
            }
        },
        Some(ttl),
    )
    .await?;
    crate::audit::record(
        &state.store,
        &caller,
        "token.mint",
        Some(&vault.id),
        record.id.clone(),
        record.label.clone(),
    )
    .await;
    let body = json!({
        "id": record.id,
        "token": raw.expose_secret(),
        "expires_at": record.expires_at,
        "vault": vault.name,
        "proxy_port": state.proxy_addr.port(),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/vaults/{vault}/tokens` (member or higher): live scoped tokens, never their values.
pub(super) async fn list_tokens(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let (vault, _) = state
        .vault_access(&caller, &name, VaultRole::Member)
        .await?;
    let tokens = state.store.list_tokens(None, Some(&vault.id)).await?;
    Ok(Json(
        tokens
            .iter()
            .map(|t| {
                let minted_by = match (&t.agent_id, &t.user_id) {
                    (Some(a), _) => json!({ "kind": "agent", "id": a }),
                    (None, Some(u)) => json!({ "kind": "user", "id": u }),
                    _ => serde_json::Value::Null,
                };
                json!({ "id": t.id, "label": t.label, "created_at": t.created_at, "expires_at": t.expires_at, "minted_by": minted_by })
            })
            .collect(),
    ))
}

/// `DELETE /v1/tokens/{id}`: revokes a token. Allowed for the token itself, its minter or owner,
/// members of a scoped token's vault, and instance owners.
pub(super) async fn revoke_token(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = if id == "self" {
        caller.token_id.clone()
    } else {
        id
    };
    let not_found = || ApiError::NotFound(format!("no live token {id:?}"));
    let token = state.store.token_by_id(&id).await?.ok_or_else(not_found)?;
    let (kind, who) = caller.actor();
    let allowed = caller.token_id == token.id
        || caller.is_owner()
        || (kind == "user" && token.user_id.as_deref() == Some(who))
        || (kind == "agent"
            && token.agent_id.as_deref() == Some(who)
            && token.kind == TokenStoreKind::Scoped)
        || (token.kind == TokenStoreKind::Scoped
            && token
                .vault_id
                .as_deref()
                .and_then(|v| caller.role_in(v))
                .is_some_and(|r| r >= VaultRole::Member));
    if !allowed {
        return Err(not_found());
    }
    if !state.store.revoke_token(&token.id).await? {
        return Err(not_found());
    }
    state.manage().tokens_changed().await;
    crate::audit::record(
        &state.store,
        &caller,
        "token.revoke",
        token.vault_id.as_deref(),
        token.id.clone(),
        String::new(),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
