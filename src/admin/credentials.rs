//! Credentials over the API: set, list (values only on `?reveal=true`), reveal one, delete. The
//! rules live in `manage::credentials`.

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
use crate::manage::credentials::{self, Listed, Revealed};
use crate::store::CredentialRecord;

/// A credential as the API lists it.
#[derive(Serialize)]
pub(super) struct CredentialView {
    key: CredentialKey,
    #[serde(rename = "type")]
    kind: String,
    description: String,
    version: i64,
    use_count: i64,
    last_used_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// `integrity_error` when a reveal could not open this one value (it was edited outside
    /// agent-vault); the other credentials of the listing are still revealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

fn view(c: &CredentialRecord, value: Option<&SecretString>) -> CredentialView {
    CredentialView {
        key: c.key.clone(),
        kind: c.kind.clone(),
        description: c.description.clone(),
        version: c.version,
        use_count: c.use_count,
        last_used_at: c.last_used_at,
        created_at: c.created_at,
        updated_at: c.updated_at,
        value: value.map(|v| v.expose_secret().to_owned()),
        error: None,
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
    Ok(Json(
        listed
            .iter()
            .map(|Listed { record, value }| match value {
                Revealed::Hidden => view(record, None),
                Revealed::Value(v) => view(record, Some(v)),
                Revealed::IntegrityError => CredentialView {
                    error: Some("integrity_error"),
                    ..view(record, None)
                },
            })
            .collect(),
    ))
}

/// `GET /v1/vaults/{vault}/credentials/{key}` (member or higher): the value.
pub(super) async fn get_one(
    State(state): State<AdminState>,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
) -> Result<Json<CredentialView>, ApiError> {
    let (record, value) = credentials::reveal(state.acting(&caller), &name, &key).await?;
    Ok(Json(view(&record, Some(&value))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetBody {
    credentials: BTreeMap<String, SecretString>,
    #[serde(default)]
    descriptions: BTreeMap<String, String>,
}

/// `PUT /v1/vaults/{vault}/credentials` (member or higher): sets one or more values atomically.
pub(super) async fn set(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SetBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let written = credentials::set(
        state.acting(&caller),
        &name,
        &body.credentials,
        &body.descriptions,
    )
    .await?;
    Ok(Json(json!({
        "written": written.iter().map(|(k, v)| json!({ "key": k, "version": v })).collect::<Vec<_>>()
    })))
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
