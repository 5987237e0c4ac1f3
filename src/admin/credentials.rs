//! Credentials over the API: set, rotate, versions, rollback, revoke, list (values only on
//! `?reveal=true`), reveal one, delete. The rules live in `manage::credentials`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::extract::{ApiJson, Caller};
use super::{AdminState, ApiError};
use crate::domain::CredentialKey;
use crate::manage::credentials::{self, Listed, Revealed, SetOptions};
use crate::store::VersionRecord;

/// A credential as the API lists it (never a metadata value to anyone below member: every
/// caller of these routes is a member or higher).
#[derive(Serialize)]
pub(super) struct CredentialView {
    key: CredentialKey,
    #[serde(rename = "type")]
    ty: &'static str,
    state: &'static str,
    description: String,
    /// The active version (`null` once revoked).
    version: Option<i64>,
    expires_at: Option<i64>,
    metadata: Option<BTreeMap<String, String>>,
    created_by: Option<String>,
    updated_by: Option<String>,
    revoked_at: Option<i64>,
    revoked_reason: Option<String>,
    use_count: i64,
    last_used_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// `integrity_error` when a reveal could not open this one value (it was edited outside
    /// agent-vault), `credential_revoked` for a revoked one; the other credentials of the
    /// listing are still revealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

fn view(listed: &Listed) -> CredentialView {
    let c = &listed.record;
    let (value, error) = match &listed.value {
        Revealed::Hidden => (None, None),
        Revealed::Value(v) => (Some(v.expose_secret().to_owned()), None),
        Revealed::Revoked => (None, Some("credential_revoked")),
        Revealed::IntegrityError => (None, Some("integrity_error")),
    };
    CredentialView {
        key: c.key.clone(),
        ty: c.ty.as_str(),
        state: c.state.as_str(),
        description: c.description.clone(),
        version: c.version(),
        expires_at: c.expires_at,
        metadata: listed.metadata.clone(),
        created_by: c.created_by.clone(),
        updated_by: c.updated_by.clone(),
        revoked_at: c.revoked_at,
        revoked_reason: c.revoked_reason.clone(),
        use_count: c.use_count,
        last_used_at: c.last_used_at,
        created_at: c.created_at,
        updated_at: c.updated_at,
        value,
        error,
    }
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    reveal: bool,
}

/// `GET /v1/vaults/{vault}/credentials[?reveal=true]` (member or higher).
pub(super) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<CredentialView>>, ApiError> {
    let listed = credentials::list(state.acting(&caller), &name, q.reveal).await?;
    Ok(Json(listed.iter().map(view).collect()))
}

/// `GET /v1/vaults/{vault}/credentials/{key}` (member or higher): the active value.
pub(super) async fn get_one(
    State(state): State<AdminState>,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
) -> Result<Json<CredentialView>, ApiError> {
    let listed = credentials::reveal(state.acting(&caller), &name, &key).await?;
    Ok(Json(view(&listed)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetBody {
    credentials: BTreeMap<String, SecretString>,
    #[serde(default)]
    descriptions: BTreeMap<String, String>,
    #[serde(default)]
    types: BTreeMap<String, String>,
    #[serde(default)]
    metadata: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    expires_at: BTreeMap<String, i64>,
    #[serde(default)]
    allow_expired: bool,
}

/// `PUT /v1/vaults/{vault}/credentials` (member or higher): sets one or more values atomically,
/// each a new version. Answers `{written: [{key, version, type}]}`.
pub(super) async fn set(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SetBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let opts = SetOptions {
        descriptions: body.descriptions,
        types: body.types,
        metadata: body.metadata,
        expires_at: body.expires_at,
        allow_expired: body.allow_expired,
    };
    let written = credentials::set(state.acting(&caller), &name, &body.credentials, &opts).await?;
    Ok(Json(json!({
        "written": written
            .iter()
            .map(|w| json!({ "key": w.key, "version": w.version, "type": w.ty.as_str() }))
            .collect::<Vec<_>>()
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateBody {
    value: SecretString,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    allow_expired: bool,
}

/// `POST /v1/vaults/{vault}/credentials/{key}/rotate` (member or higher): a new active
/// version. Answers `{key, version}`.
pub(super) async fn rotate(
    State(state): State<AdminState>,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
    ApiJson(body): ApiJson<RotateBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let written = credentials::rotate(
        state.acting(&caller),
        &name,
        &key,
        &body.value,
        body.metadata.as_ref(),
        body.expires_at,
        body.allow_expired,
    )
    .await?;
    Ok(Json(
        json!({ "key": written.key, "version": written.version }),
    ))
}

/// A version as the API lists it: never its value.
#[derive(Serialize)]
pub(super) struct VersionView {
    version: i64,
    state: &'static str,
    created_by: Option<String>,
    created_at: i64,
    rotated_at: Option<i64>,
    expires_at: Option<i64>,
}

impl From<&VersionRecord> for VersionView {
    fn from(v: &VersionRecord) -> Self {
        Self {
            version: v.version,
            state: v.state.as_str(),
            created_by: v.created_by.clone(),
            created_at: v.created_at,
            rotated_at: v.rotated_at,
            expires_at: v.expires_at,
        }
    }
}

/// `GET /v1/vaults/{vault}/credentials/{key}/versions` (member or higher), newest first.
pub(super) async fn versions(
    State(state): State<AdminState>,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
) -> Result<Json<Vec<VersionView>>, ApiError> {
    let versions = credentials::versions(state.acting(&caller), &name, &key).await?;
    Ok(Json(versions.iter().map(VersionView::from).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackBody {
    to: i64,
}

/// `POST /v1/vaults/{vault}/credentials/{key}/rollback` (member or higher): version `to`'s
/// value becomes a new active version. Answers `{key, version}`.
pub(super) async fn rollback(
    State(state): State<AdminState>,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let version = credentials::rollback(state.acting(&caller), &name, &key, body.to).await?;
    Ok(Json(json!({ "key": key, "version": version })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/vaults/{vault}/credentials/{key}/revoke` (member or higher). Answers
/// `{key, state: "revoked"}`.
pub(super) async fn revoke(
    State(state): State<AdminState>,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
    ApiJson(body): ApiJson<RevokeBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key =
        credentials::revoke(state.acting(&caller), &name, &key, body.reason.as_deref()).await?;
    Ok(Json(json!({ "key": key, "state": "revoked" })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteBody {
    keys: Vec<String>,
}

/// `DELETE /v1/vaults/{vault}/credentials` (member or higher): all listed keys or none.
pub(super) async fn remove(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<DeleteBody>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let deleted = credentials::delete(state.acting(&caller), &name, &body.keys).await?;
    let names: Vec<_> = deleted.iter().map(|k| k.to_string()).collect();
    Ok((StatusCode::OK, Json(json!({ "deleted": names }))))
}
