//! Services over the API: list, replace all, add or replace one, remove one. The rules live in
//! `manage::services`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, Caller};
use super::{AdminState, ApiError};
use crate::manage::services;
use crate::policy::service::ServiceSpec;

/// The services of a vault, as the API and the YAML file carry them.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServicesBody {
    /// In declaration order.
    pub services: Vec<ServiceSpec>,
}

/// `GET /v1/vaults/{vault}/services` (member or higher).
pub(super) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<ServicesBody>, ApiError> {
    let services = services::list(state.acting(&caller), &name).await?;
    Ok(Json(ServicesBody { services }))
}

/// `PUT /v1/vaults/{vault}/services` (admin): replaces every service atomically.
pub(super) async fn replace(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ServicesBody>,
) -> Result<Json<ServicesBody>, ApiError> {
    let services = services::replace(state.acting(&caller), &name, body.services).await?;
    Ok(Json(ServicesBody { services }))
}

/// `POST /v1/vaults/{vault}/services` (admin): adds or replaces one service by name.
pub(super) async fn upsert(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<ServiceSpec>,
) -> Result<(StatusCode, Json<ServiceSpec>), ApiError> {
    let (spec, created) = services::upsert(state.acting(&caller), &name, spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(spec)))
}

/// `DELETE /v1/vaults/{vault}/services/{name}` (admin).
pub(super) async fn remove(
    State(state): State<AdminState>,
    caller: Caller,
    Path((name, service)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    services::remove(state.acting(&caller), &name, &service).await?;
    Ok(StatusCode::NO_CONTENT)
}
