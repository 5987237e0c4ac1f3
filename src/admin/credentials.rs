//! Credentials: set (sealed at once), list (never values unless revealed by a member), reveal,
//! delete. Every reveal is audited.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::extract::{ApiJson, Caller};
use super::{AdminState, ApiError};
use crate::domain::{CredentialKey, VaultRole};
use crate::store::{CredentialRecord, CredentialWrite};

/// Largest credential value accepted.
pub(super) const MAX_VALUE_BYTES: usize = 64 * 1024;

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

fn view(c: &CredentialRecord, value: Option<String>) -> CredentialView {
    CredentialView {
        key: c.key.clone(),
        kind: c.kind.clone(),
        description: c.description.clone(),
        version: c.version,
        use_count: c.use_count,
        last_used_at: c.last_used_at,
        created_at: c.created_at,
        updated_at: c.updated_at,
        value,
        error: None,
    }
}

fn open_value(state: &AdminState, c: &CredentialRecord) -> Result<String, ApiError> {
    let plain = state
        .keyring
        .open_credential(&c.vault_id, c.key.as_str(), c.version, &c.sealed_value)
        .map_err(|e| {
            ApiError::Integrity(format!("credential {} of vault {}: {e}", c.key, c.vault_id))
        })?;
    Ok(String::from_utf8_lossy(plain.expose_secret()).into_owned())
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    reveal: bool,
}

/// `GET /v1/vaults/{vault}/credentials[?reveal=true]`.
pub(super) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<CredentialView>>, ApiError> {
    // Proxy-role tokens see key names through /v1/discover only; this route is for members.
    let (vault, _) = state
        .vault_access(&caller, &name, VaultRole::Member)
        .await?;
    let records = state.store.list_credentials(&vault.id).await?;
    let mut out = Vec::with_capacity(records.len());
    let mut revealed = Vec::with_capacity(records.len());
    for c in &records {
        if !q.reveal {
            out.push(view(c, None));
            continue;
        }
        // One tampered value must not hide the others: it is marked, the rest are revealed.
        match open_value(&state, c) {
            Ok(value) => {
                revealed.push(c.key.to_string());
                out.push(view(c, Some(value)));
            }
            Err(ApiError::Integrity(detail)) => {
                tracing::error!(error = %detail, "INTEGRITY ALARM: stored data failed authentication");
                let mut bad = view(c, None);
                bad.error = Some("integrity_error");
                out.push(bad);
            }
            Err(e) => return Err(e),
        }
    }
    if q.reveal {
        let keys = revealed;
        crate::audit::record(
            &state.store,
            &caller,
            "credential.reveal",
            Some(&vault.id),
            keys.join(","),
            String::new(),
        )
        .await;
    }
    Ok(Json(out))
}

/// `GET /v1/vaults/{vault}/credentials/{key}` (member or higher): the value.
pub(super) async fn get_one(
    State(state): State<AdminState>,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
) -> Result<Json<CredentialView>, ApiError> {
    let (vault, _) = state
        .vault_access(&caller, &name, VaultRole::Member)
        .await?;
    let key = CredentialKey::parse(&key)
        .map_err(|e| ApiError::bad_request("invalid_credential_key", e.to_string()))?;
    let c = state
        .store
        .credential(&vault.id, &key)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("credential {key} not found in vault {name:?}"))
        })?;
    let value = open_value(&state, &c)?;
    crate::audit::record(
        &state.store,
        &caller,
        "credential.reveal",
        Some(&vault.id),
        key.to_string(),
        String::new(),
    )
    .await;
    Ok(Json(view(&c, Some(value))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetBody {
    credentials: BTreeMap<String, SecretString>,
    #[serde(default)]
    descriptions: BTreeMap<String, String>,
}

/// Refuses a request naming more credentials than `limits.max_credentials_per_request`: each
/// one is a statement in a single write transaction that holds the database's write lock.
fn check_request_size(state: &AdminState, count: usize, verb: &str) -> Result<(), ApiError> {
    let max = state.config.limits.max_credentials_per_request;
    if count > max {
        return Err(ApiError::bad_request(
            "too_many_credentials",
            format!(
                "one request may {verb} at most {max} credentials \
                 (limits.max_credentials_per_request); this one names {count}; nothing was changed"
            ),
        ));
    }
    Ok(())
}

/// Validates keys and values of a set request, naming the first bad key.
pub(crate) fn validate_values(
    credentials: &BTreeMap<String, SecretString>,
) -> Result<Vec<(CredentialKey, &SecretString)>, ApiError> {
    if credentials.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "give at least one credential",
        ));
    }
    let mut out = Vec::with_capacity(credentials.len());
    for (key, value) in credentials {
        let key = CredentialKey::parse(key)
            .map_err(|e| ApiError::bad_request("invalid_credential_key", e.to_string()))?;
        let len = value.expose_secret().len();
        if len == 0 {
            return Err(ApiError::bad_request(
                "invalid_credential_value",
                format!("the value of {key} is empty"),
            ));
        }
        if len > MAX_VALUE_BYTES {
            return Err(ApiError::bad_request(
                "invalid_credential_value",
                format!("the value of {key} is longer than {MAX_VALUE_BYTES} bytes"),
            ));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// `PUT /v1/vaults/{vault}/credentials` (member or higher): sets one or more values atomically.
pub(super) async fn set(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SetBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (vault, _) = state
        .vault_access(&caller, &name, VaultRole::Member)
        .await?;
    check_request_size(&state, body.credentials.len(), "set")?;
    let values = validate_values(&body.credentials)?;
    for (key, desc) in &body.descriptions {
        if !body.credentials.contains_key(key) {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("description given for {key:?}, which is not being set"),
            ));
        }
        if desc.len() > 1000 {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("the description of {key} is longer than 1000 characters"),
            ));
        }
    }
    let writes: Vec<CredentialWrite> = values
        .iter()
        .map(|(key, _)| CredentialWrite {
            key: key.clone(),
            description: body.descriptions.get(key.as_str()).cloned(),
        })
        .collect();
    let keyring = state.keyring.clone();
    let vault_id = vault.id.clone();
    let written = state
        .store
        .set_credentials(
            &vault.id,
            &writes,
            state.config.limits.max_credentials_per_vault,
            |key, version| {
                let value = body
                    .credentials
                    .get(key.as_str())
                    .map(|v| v.expose_secret().as_bytes())
                    .unwrap_or_default();
                keyring.seal_credential(&vault_id, key.as_str(), version, value)
            },
        )
        .await?;
    state.manage().changed(&vault.id).await;
    let keys: Vec<_> = written.iter().map(|(k, _)| k.to_string()).collect();
    crate::audit::record(
        &state.store,
        &caller,
        "credential.set",
        Some(&vault.id),
        keys.join(","),
        String::new(),
    )
    .await;
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
    let (vault, _) = state
        .vault_access(&caller, &name, VaultRole::Member)
        .await?;
    if body.keys.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "give at least one key to delete",
        ));
    }
    check_request_size(&state, body.keys.len(), "delete")?;
    let keys = body
        .keys
        .iter()
        .map(|k| {
            CredentialKey::parse(k)
                .map_err(|e| ApiError::bad_request("invalid_credential_key", e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let missing = state.store.delete_credentials(&vault.id, &keys).await?;
    if !missing.is_empty() {
        let names: Vec<_> = missing.iter().map(|k| k.to_string()).collect();
        return Err(ApiError::NotFound(format!(
            "no credential {} in vault {name:?}; nothing was deleted",
            names.join(", ")
        )));
    }
    state.manage().changed(&vault.id).await;
    let names: Vec<_> = keys.iter().map(|k| k.to_string()).collect();
    crate::audit::record(
        &state.store,
        &caller,
        "credential.delete",
        Some(&vault.id),
        names.join(","),
        String::new(),
    )
    .await;
    Ok((StatusCode::OK, Json(json!({ "deleted": names }))))
}
