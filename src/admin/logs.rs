//! The request log and the audit trail of a vault.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use super::extract::Caller;
use super::{AdminState, ApiError};
use crate::domain::VaultRole;
use crate::store::{AuditRecord, RequestLogFilter, RequestLogRecord};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    after: Option<i64>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// `GET /v1/vaults/{vault}/logs` (member or higher). Newest first; with `after`, oldest first
/// (for following).
pub(super) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<Vec<RequestLogRecord>>, ApiError> {
    let (vault, _) = state
        .vault_access(&caller, &name, VaultRole::Member)
        .await?;
    let filter = RequestLogFilter {
        after: q.after,
        before: q.before,
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(
        state.store.list_request_logs(&vault.id, &filter).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    limit: Option<i64>,
}

/// `GET /v1/vaults/{vault}/audit` (admin): control-plane events, newest first.
pub(super) async fn audit(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    let (vault, _) = state.vault_access(&caller, &name, VaultRole::Admin).await?;
    Ok(Json(
        state
            .store
            .list_audit(&vault.id, q.limit.unwrap_or(100))
            .await?,
    ))
}
