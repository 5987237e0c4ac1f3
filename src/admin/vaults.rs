//! Vaults, their settings and their members.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::extract::{ApiJson, Caller};
use super::{AdminState, ApiError};
use crate::domain::{AgentName, Email, UnmatchedHostPolicy, VaultName, VaultRole};
use crate::identity::Principal;
use crate::store::{GrantChange, PrincipalKind, VaultRecord};

/// A vault as the API shows it.
#[derive(Serialize)]
pub(super) struct VaultView {
    name: VaultName,
    role: VaultRole,
    unmatched_host_policy: UnmatchedHostPolicy,
    created_at: i64,
    updated_at: i64,
}

fn view(v: &VaultRecord, role: VaultRole) -> VaultView {
    VaultView {
        name: v.name.clone(),
        role,
        unmatched_host_policy: v.unmatched_host_policy,
        created_at: v.created_at,
        updated_at: v.updated_at,
    }
}

/// `GET /v1/vaults`: the vaults the caller has a role in.
pub(super) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<Vec<VaultView>>, ApiError> {
    let vaults = state.store.list_vaults().await?;
    Ok(Json(
        vaults
            .iter()
            // Proxy-role principals reach only discover and proposals.
            .filter_map(|v| {
                caller
                    .role_in(&v.id)
                    .filter(|r| *r >= VaultRole::Member)
                    .map(|r| view(v, r))
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: String,
}

/// `POST /v1/vaults`: humans create vaults and become their admin.
pub(super) async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let Principal::User { id, .. } = &caller.principal else {
        return Err(ApiError::Forbidden(
            "only human users can create vaults".into(),
        ));
    };
    let name = VaultName::parse(&body.name)
        .map_err(|e| ApiError::bad_request("invalid_vault_name", e.to_string()))?;
    let vault = state
        .store
        .create_vault(&name, Some((PrincipalKind::User, id)))
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(_) => {
                ApiError::Conflict(format!("vault {name:?} already exists"))
            }
            other => other.into(),
        })?;
    state.manage().tokens_changed().await;
    state.manage().changed(&vault.id).await;
    crate::audit::record(
        &state.store,
        &caller,
        "vault.create",
        Some(&vault.id),
        name.to_string(),
        String::new(),
    )
    .await;
    Ok((StatusCode::CREATED, Json(view(&vault, VaultRole::Admin))).into_response())
}

/// `GET /v1/vaults/{vault}`.
pub(super) async fn show(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<VaultView>, ApiError> {
    let (vault, role) = state
        .vault_access(&caller, &name, VaultRole::Member)
        .await?;
    Ok(Json(view(&vault, role)))
}

/// `DELETE /v1/vaults/{vault}` (admin): deletes everything in it.
pub(super) async fn remove(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (vault, _) = state.vault_access(&caller, &name, VaultRole::Admin).await?;
    if !caller.is_user() {
        return Err(ApiError::Forbidden(
            "only human users can delete vaults".into(),
        ));
    }
    state.store.delete_vault(&vault.id).await?;
    state.manage().tokens_changed().await;
    state.manage().changed(&vault.id).await;
    crate::audit::record(
        &state.store,
        &caller,
        "vault.delete",
        None,
        vault.name.to_string(),
        String::new(),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/vaults/{vault}/settings`.
pub(super) async fn settings(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (vault, _) = state
        .vault_access(&caller, &name, VaultRole::Member)
        .await?;
    Ok(Json(
        json!({ "unmatched_host_policy": vault.unmatched_host_policy }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SettingsBody {
    unmatched_host_policy: Option<UnmatchedHostPolicy>,
}

/// `PATCH /v1/vaults/{vault}/settings` (admin).
pub(super) async fn update_settings(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SettingsBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (vault, _) = state.vault_access(&caller, &name, VaultRole::Admin).await?;
    let Some(policy) = body.unmatched_host_policy else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "nothing to change: give unmatched_host_policy",
        ));
    };
    state
        .store
        .set_unmatched_host_policy(&vault.id, policy)
        .await?;
    state.manage().changed(&vault.id).await;
    crate::audit::record(
        &state.store,
        &caller,
        "vault.settings",
        Some(&vault.id),
        "unmatched_host_policy".into(),
        policy.to_string(),
    )
    .await;
    Ok(Json(json!({ "unmatched_host_policy": policy })))
}

/// `GET /v1/vaults/{vault}/members` (member or higher).
pub(super) async fn members(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (vault, _) = state
        .vault_access(&caller, &name, VaultRole::Member)
        .await?;
    let members: Vec<_> = state
        .store
        .list_members(&vault.id)
        .await?
        .into_iter()
        .map(|m| {
            if m.integrity_ok {
                json!({ "kind": m.kind, "name": m.display, "role": m.role })
            } else {
                // Edited outside agent-vault: it holds no role. Shown so an admin removes it.
                json!({ "kind": m.kind, "name": m.display, "role": "integrity_error", "integrity_error": true })
            }
        })
        .collect();
    Ok(Json(json!(members)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MemberBody {
    kind: PrincipalKind,
    /// The user's email or the agent's name.
    name: String,
    role: VaultRole,
}

async fn principal_id(
    state: &AdminState,
    kind: PrincipalKind,
    who: &str,
    // Removal also finds rows that failed their MAC, so they can be cleaned up.
    removing: bool,
) -> Result<String, ApiError> {
    let missing = || ApiError::NotFound(format!("no {} named {who:?}", kind.as_str()));
    match kind {
        PrincipalKind::User => {
            let email = Email::parse(who).map_err(|_| missing())?;
            if removing {
                // A user row that failed its MAC is absent to lookups, but an admin must still
                // be able to take its grant away.
                return Ok(state
                    .store
                    .list_users()
                    .await?
                    .into_iter()
                    .find(|u| u.email == email)
                    .ok_or_else(missing)?
                    .id);
            }
            Ok(state
                .store
                .user_by_email(&email)
                .await?
                .ok_or_else(missing)?
                .id)
        }
        PrincipalKind::Agent => {
            let name = AgentName::parse(who).map_err(|_| missing())?;
            let agent = state
                .store
                .agent_by_name(&name)
                .await?
                .ok_or_else(missing)?;
            if !agent.integrity_ok && !removing {
                return Err(ApiError::Integrity(format!(
                    "agent row {} failed its MAC",
                    agent.id
                )));
            }
            Ok(agent.id)
        }
    }
}

fn last_human_admin() -> ApiError {
    // Agents do not count: a vault whose only admin is an agent has no human above what a
    // prompt can make it do.
    ApiError::Conflict("a vault must keep at least one human admin".into())
}

/// `PUT /v1/vaults/{vault}/members` (admin): grants or changes a role.
pub(super) async fn set_member(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<MemberBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (vault, _) = state.vault_access(&caller, &name, VaultRole::Admin).await?;
    if body.kind == PrincipalKind::User && body.role == VaultRole::Proxy {
        return Err(ApiError::bad_request(
            "invalid_role",
            "users hold member or admin roles; proxy is for agents",
        ));
    }
    let id = principal_id(&state, body.kind, &body.name, false).await?;
    match state
        .store
        .change_grant_keeping_a_human_admin(&vault.id, body.kind, &id, Some(body.role))
        .await?
    {
        GrantChange::LastHumanAdmin => return Err(last_human_admin()),
        GrantChange::Done | GrantChange::NotMember => {}
    }
    state.manage().tokens_changed().await;
    crate::audit::record(
        &state.store,
        &caller,
        "member.set",
        Some(&vault.id),
        format!("{}:{}", body.kind.as_str(), body.name),
        body.role.to_string(),
    )
    .await;
    Ok(Json(
        json!({ "kind": body.kind, "name": body.name, "role": body.role }),
    ))
}

/// `DELETE /v1/vaults/{vault}/members/{kind}/{who}` (admin).
pub(super) async fn remove_member(
    State(state): State<AdminState>,
    caller: Caller,
    Path((name, kind, who)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let (vault, _) = state.vault_access(&caller, &name, VaultRole::Admin).await?;
    let kind: PrincipalKind = kind
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_kind", "member kind must be user or agent"))?;
    let id = principal_id(&state, kind, &who, true).await?;
    match state
        .store
        .change_grant_keeping_a_human_admin(&vault.id, kind, &id, None)
        .await?
    {
        GrantChange::Done => {}
        GrantChange::LastHumanAdmin => return Err(last_human_admin()),
        GrantChange::NotMember => {
            return Err(ApiError::NotFound(format!(
                "{who:?} is not a member of vault {name:?}"
            )));
        }
    }
    state.manage().tokens_changed().await;
    crate::audit::record(
        &state.store,
        &caller,
        "member.remove",
        Some(&vault.id),
        format!("{}:{who}", kind.as_str()),
        String::new(),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
