//! Services: the rules that bind credentials to hosts. Only vault admins change them; every
//! definition is validated exactly as proposals are, and stored with a MAC.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, Caller};
use super::{AdminState, ApiError};
use crate::domain::{CredentialKey, VaultRole};
use crate::policy::service::{ServiceSpec, validate_services};
use crate::store::ServiceRow;

/// The services of a vault, as the API and the YAML file carry them.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServicesBody {
    /// In declaration order.
    pub services: Vec<ServiceSpec>,
}

async fn load_specs(state: &AdminState, vault_id: &str) -> Result<Vec<ServiceSpec>, ApiError> {
    state
        .store
        .list_services(vault_id)
        .await?
        .into_iter()
        .map(|row| {
            if !state
                .keyring
                .verify_service_mac(vault_id, &row.name, &row.spec, &row.mac)
            {
                return Err(ApiError::Integrity(format!(
                    "service {} of vault {vault_id}",
                    row.name
                )));
            }
            serde_json::from_str(&row.spec).map_err(ApiError::internal)
        })
        .collect()
}

pub(crate) async fn known_keys(
    state: &AdminState,
    vault_id: &str,
) -> Result<BTreeSet<CredentialKey>, ApiError> {
    Ok(state
        .store
        .list_credentials(vault_id)
        .await?
        .into_iter()
        .map(|c| c.key)
        .collect())
}

/// Validates specs against the vault's keys and turns them into rows with MACs.
pub(crate) fn rows_for(
    state: &AdminState,
    vault_id: &str,
    specs: &[ServiceSpec],
    keys: &BTreeSet<CredentialKey>,
) -> Result<Vec<ServiceRow>, ApiError> {
    validate_services(specs, keys)
        .map_err(|e| ApiError::bad_request("invalid_service", e.to_string()))?;
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let json = serde_json::to_string(spec).map_err(ApiError::internal)?;
            Ok(ServiceRow {
                name: spec.name.clone(),
                position: i64::try_from(i).unwrap_or(i64::MAX),
                mac: state.keyring.service_mac(vault_id, &spec.name, &json),
                spec: json,
            })
        })
        .collect()
}

/// `GET /v1/vaults/{vault}/services` (any role).
pub(super) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<ServicesBody>, ApiError> {
    let (vault, _) = state
        .vault_access(&caller, &name, VaultRole::Member)
        .await?;
    Ok(Json(ServicesBody {
        services: load_specs(&state, &vault.id).await?,
    }))
}

/// `PUT /v1/vaults/{vault}/services` (admin): replaces every service atomically.
pub(super) async fn replace(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ServicesBody>,
) -> Result<Json<ServicesBody>, ApiError> {
    let (vault, _) = state.vault_access(&caller, &name, VaultRole::Admin).await?;
    let specs: Vec<ServiceSpec> = body
        .services
        .into_iter()
        .map(ServiceSpec::normalized)
        .collect();
    let keys = known_keys(&state, &vault.id).await?;
    let rows = rows_for(&state, &vault.id, &specs, &keys)?;
    state.store.replace_services(&vault.id, &rows).await?;
    state.changed(&vault.id).await;
    let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
    crate::audit::record(
        &state.store,
        &caller,
        "service.replace",
        Some(&vault.id),
        names.join(","),
        String::new(),
    )
    .await;
    Ok(Json(ServicesBody { services: specs }))
}

/// `POST /v1/vaults/{vault}/services` (admin): adds or replaces one service by name.
pub(super) async fn upsert(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<ServiceSpec>,
) -> Result<(StatusCode, Json<ServiceSpec>), ApiError> {
    let (vault, _) = state.vault_access(&caller, &name, VaultRole::Admin).await?;
    let spec = spec.normalized();
    let keys = known_keys(&state, &vault.id).await?;
    let mut rows = rows_for(&state, &vault.id, std::slice::from_ref(&spec), &keys)?;
    let existed = state
        .store
        .list_services(&vault.id)
        .await?
        .iter()
        .any(|r| r.name == spec.name);
    let row = rows.pop().ok_or_else(|| ApiError::internal("no row"))?;
    state.store.upsert_service(&vault.id, &row).await?;
    state.changed(&vault.id).await;
    crate::audit::record(
        &state.store,
        &caller,
        "service.set",
        Some(&vault.id),
        spec.name.clone(),
        spec.host.clone(),
    )
    .await;
    Ok((
        if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        Json(spec),
    ))
}

/// `DELETE /v1/vaults/{vault}/services/{name}` (admin).
pub(super) async fn remove(
    State(state): State<AdminState>,
    caller: Caller,
    Path((name, service)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (vault, _) = state.vault_access(&caller, &name, VaultRole::Admin).await?;
    if !state.store.delete_service(&vault.id, &service).await? {
        return Err(ApiError::NotFound(format!(
            "no service {service:?} in vault {name:?}"
        )));
    }
    state.changed(&vault.id).await;
    crate::audit::record(
        &state.store,
        &caller,
        "service.remove",
        Some(&vault.id),
        service,
        String::new(),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
