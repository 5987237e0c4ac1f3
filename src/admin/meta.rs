//! Health, status and the CA certificate: the public endpoints.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AdminState, ApiError};

/// `GET /v1/health`: 200 when the database answers, 503 otherwise.
pub(super) async fn health(State(state): State<AdminState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({ "status": "ok" })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "error": "unavailable", "message": "the database is unavailable" })))
                .into_response()
        }
    }
}

/// `GET /v1/status`: version, whether an owner exists, and the proxy port.
pub(super) async fn status(
    State(state): State<AdminState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let users = state.store.count_users().await?;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "initialized": users > 0,
        "proxy_port": state.proxy_addr.port(),
        "public_url": state.public_url,
    })))
}

/// `GET /v1/ca.pem`: the root certificate agents must trust.
pub(super) async fn ca_pem(State(state): State<AdminState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/x-pem-file".to_owned()),
            (
                header::HeaderName::from_static("x-agent-vault-proxy-port"),
                state.proxy_addr.port().to_string(),
            ),
        ],
        state.ca.root_pem().to_owned(),
    )
        .into_response()
}

/// Unknown routes answer JSON like everything else.
pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}
