//! Agents and tokens over the API: create an agent (its token is shown once), rotate, revoke,
//! delete; mint short-lived scoped proxy tokens for one vault (`run`, `vault token`) and revoke
//! them. The rules live in `manage::agents`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use super::auth::VaultGrantBody;
use super::extract::{ApiJson, Caller};
use super::{AdminState, ApiError};
use crate::manage::agents::{self, AgentSummary};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: String,
    #[serde(default)]
    vaults: Vec<VaultGrantBody>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

fn agent_view(s: &AgentSummary) -> serde_json::Value {
    if !s.agent.integrity_ok {
        // Its tokens resolve to nothing; show it so an owner can delete it.
        return json!({
            "name": s.agent.name,
            "created_at": s.agent.created_at,
            "vaults": [],
            "active_tokens": 0,
            "integrity_error": true,
        });
    }
    let vaults: Vec<_> = s
        .vaults
        .iter()
        .map(|(vault, role)| json!({ "vault": vault, "role": role }))
        .collect();
    json!({
        "name": s.agent.name,
        "created_at": s.agent.created_at,
        "vaults": vaults,
        "active_tokens": s.active_tokens,
        "expires_at": s.expires_at,
    })
}

/// `POST /v1/agents`: creates an agent with vault roles; the token is returned once.
pub(super) async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let grants: Vec<_> = body.vaults.into_iter().map(|g| (g.vault, g.role)).collect();
    let (summary, token) =
        agents::create(state.acting(&caller), &body.name, &grants, body.ttl_seconds).await?;
    let mut view = agent_view(&summary);
    view["token"] = json!(token.raw.expose_secret());
    view["expires_at"] = json!(token.record.expires_at);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `GET /v1/agents`: owners see every agent, others the agents they created.
pub(super) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let agents = agents::list(state.acting(&caller)).await?;
    Ok(Json(agents.iter().map(agent_view).collect()))
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
    let ttl = body.and_then(|b| b.0.ttl_seconds);
    let (agent, token) = agents::rotate(state.acting(&caller), &name, ttl).await?;
    Ok(Json(
        json!({ "name": agent.name, "token": token.raw.expose_secret(), "expires_at": token.record.expires_at }),
    ))
}

/// `POST /v1/agents/{name}/revoke`: revokes every token the agent holds or minted.
pub(super) async fn revoke(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (agent, n) = agents::revoke(state.acting(&caller), &name).await?;
    Ok(Json(json!({ "name": agent.name, "revoked_tokens": n })))
}

/// `DELETE /v1/agents/{name}`: deletes the agent, its grants and its tokens.
pub(super) async fn remove(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    agents::delete(state.acting(&caller), &name).await?;
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

/// `POST /v1/vaults/{vault}/tokens`: a short-lived proxy-role token for this vault.
pub(super) async fn mint_token(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Option<ApiJson<MintBody>>,
) -> Result<Response, ApiError> {
    let body = body.map(|b| b.0).unwrap_or_default();
    let (vault, token) =
        agents::mint_scoped(state.acting(&caller), &name, body.ttl_seconds, body.label).await?;
    let body = json!({
        "id": token.record.id,
        "token": token.raw.expose_secret(),
        "expires_at": token.record.expires_at,
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
    let tokens = agents::list_scoped(state.acting(&caller), &name).await?;
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

/// `DELETE /v1/tokens/{id}`: revokes a token (`self`: the calling one). Allowed for the token
/// itself, its minter or owner, members of a scoped token's vault, and instance owners.
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
    agents::revoke_token(state.acting(&caller), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
