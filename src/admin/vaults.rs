//! Vaults, their settings and their members over the API; the rules live in `manage::vaults`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::extract::{ApiJson, Caller};
use super::{AdminState, ApiError};
use crate::domain::{UnmatchedHostPolicy, VaultName, VaultRole};
use crate::manage::vaults;
use crate::store::{PrincipalKind, VaultRecord};

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

/// `GET /v1/vaults`: the vaults the caller holds the member role or higher in.
pub(super) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<Vec<VaultView>>, ApiError> {
    let vaults = vaults::list(state.acting(&caller)).await?;
    Ok(Json(
        vaults.iter().map(|(v, role)| view(v, *role)).collect(),
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
    let vault = vaults::create(state.acting(&caller), &body.name).await?;
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
    vaults::delete(state.acting(&caller), &name).await?;
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
    let Some(policy) = body.unmatched_host_policy else {
        // Checked after access, as before: a caller without the role learns nothing here.
        state.vault_access(&caller, &name, VaultRole::Admin).await?;
        return Err(ApiError::bad_request(
            "invalid_body",
            "nothing to change: give unmatched_host_policy",
        ));
    };
    vaults::set_unmatched_host_policy(state.acting(&caller), &name, policy).await?;
    Ok(Json(json!({ "unmatched_host_policy": policy })))
}

/// `GET /v1/vaults/{vault}/members` (member or higher).
pub(super) async fn members(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let members: Vec<_> = vaults::members(state.acting(&caller), &name)
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

/// `PUT /v1/vaults/{vault}/members` (admin): grants or changes a role.
pub(super) async fn set_member(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<MemberBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    vaults::set_member(
        state.acting(&caller),
        &name,
        body.kind,
        &body.name,
        body.role,
    )
    .await?;
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
    let kind: PrincipalKind = match kind.parse() {
        Ok(kind) => kind,
        Err(_) => {
            // Checked after access, as before: a caller without the role learns nothing here.
            state.vault_access(&caller, &name, VaultRole::Admin).await?;
            return Err(ApiError::bad_request(
                "invalid_kind",
                "member kind must be user or agent",
            ));
        }
    };
    vaults::remove_member(state.acting(&caller), &name, kind, &who).await?;
    Ok(StatusCode::NO_CONTENT)
}
