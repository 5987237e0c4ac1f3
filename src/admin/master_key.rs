//! `POST /v1/master-key/rotate` and `GET /v1/master-key` (owners): online rotation of the
//! instance key; thin over `manage::master_key`.

use axum::Json;
use axum::extract::State;
use serde_json::json;

use super::extract::Caller;
use super::{AdminState, ApiError};

/// `POST /v1/master-key/rotate`: a new instance key; every data key wrapped again, the old
/// version destroyed. Answers the versions and what was changed (counts, no key material).
pub(super) async fn rotate(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let report = state.acting(&caller).rotate_master_key().await?;
    let c = report.counts;
    Ok(Json(json!({
        "from_version": report.from,
        "key_version": report.to,
        "rewrapped": c.rewrapped,
        "resealed": c.resealed,
        "remaced": c.remaced,
        "untouched": c.untouched,
    })))
}

/// `GET /v1/master-key`: the active instance-key version and the versions this server still
/// holds (more than one only while a rotation settles).
pub(super) async fn show(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !caller.is_owner() {
        return Err(ApiError::Forbidden(
            "only an instance owner can do this".into(),
        ));
    }
    Ok(Json(json!({
        "key_version": state.keyring.active_key_version(),
        "held_versions": state.keyring.key_versions(),
    })))
}
