//! The one API error type: every handler returns it, and it alone decides the status and the
//! JSON body. Internal details are logged here and never sent to the caller.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::crypto::CryptoError;
use crate::identity::AuthError;
use crate::manage::AccessError;
use crate::manage::agents::AgentsError;
use crate::manage::credentials::CredentialsError;
use crate::manage::master_key::MasterKeyError;
use crate::manage::proposals::ProposalsError;
use crate::manage::services::ServicesError;
use crate::manage::vaults::VaultsError;
use crate::registry::StoredServiceError;
use crate::store::{CredentialRefused, StoreError};

/// An error answered by the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a value is invalid (400).
    #[error("{message}")]
    BadRequest {
        /// Stable machine-readable code.
        code: &'static str,
        /// What is wrong, naming the field; never echoes a secret.
        message: String,
    },
    /// No valid credentials (401).
    #[error("authentication required: log in, or pass a valid token")]
    Unauthorized,
    /// Wrong email or password at login (401).
    #[error("wrong email or password")]
    InvalidCredentials,
    /// Authenticated but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// The thing does not exist, or the caller may not know it exists (404).
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// A refusal with its own stable code (a credential's lifecycle: 404 or 409).
    #[error("{message}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// Stable machine-readable code.
        code: &'static str,
        /// What was refused and why; never a value.
        message: String,
    },
    /// The request body is over the cap (413).
    #[error("request body too large")]
    PayloadTooLarge,
    /// The request body is not JSON (415).
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// Too many pending proposals in the vault (429).
    #[error("{0}")]
    TooManyPending(String),
    /// Too many failed attempts from this client (429).
    #[error("too many failed attempts; wait a minute and try again")]
    TooManyRequests,
    /// The store is unreachable (503).
    #[error("the database is unavailable")]
    Unavailable,
    /// Too many password checks at once or failed this minute (503, `Retry-After` seconds).
    #[error("the server is busy checking passwords; retry in a few seconds")]
    Busy(u64),
    /// A stored value failed its integrity check (500, logged as an alarm).
    #[error("a stored value failed its integrity check; it may have been tampered with")]
    Integrity(String),
    /// Anything else (500, logged).
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 400 with a code and message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 500 whose cause is logged.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        Self::Internal(err.to_string())
    }

    /// The HTTP status this error is answered with, by the API and the web pages alike.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Refused { status, code, .. } => (*status, code),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::TooManyPending(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_pending"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::Integrity(_) => (StatusCode::INTERNAL_SERVER_ERROR, "integrity_error"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            Self::Internal(detail) => tracing::error!(error = %detail, "admin API internal error"),
            Self::Integrity(detail) => {
                tracing::error!(error = %detail, "INTEGRITY ALARM: stored data failed authentication")
            }
            Self::Unavailable => tracing::warn!("admin API: database unavailable"),
            _ => {}
        }
        let mut response = (
            status,
            Json(json!({ "error": code, "message": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"agent-vault\""),
            );
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        if let Self::Busy(secs) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound("not found".into()),
            StoreError::Conflict(what) => Self::Conflict(format!("{what} already exists")),
            StoreError::LimitReached(message) => Self::Conflict(message),
            StoreError::Credential(refused) => refused.into(),
            e @ StoreError::Corrupt { .. } => Self::Integrity(e.to_string()),
            e if e.is_unavailable() => Self::Unavailable,
            e => Self::internal(e),
        }
    }
}

impl From<MasterKeyError> for ApiError {
    fn from(err: MasterKeyError) -> Self {
        use crate::rekey::RekeyError;
        match err {
            MasterKeyError::NotOwner => Self::Forbidden(err.to_string()),
            MasterKeyError::Refused(_) | MasterKeyError::Rekey(RekeyError::PasswordChanged) => {
                Self::Conflict(err.to_string())
            }
            MasterKeyError::Rekey(RekeyError::Store(e)) | MasterKeyError::Store(e) => e.into(),
            MasterKeyError::Rekey(RekeyError::Crypto(e)) | MasterKeyError::Crypto(e) => e.into(),
            MasterKeyError::Rekey(RekeyError::NoKek) => Self::internal(err),
        }
    }
}

impl From<CryptoError> for ApiError {
    fn from(err: CryptoError) -> Self {
        match err {
            CryptoError::Integrity | CryptoError::Malformed => Self::Integrity(err.to_string()),
            CryptoError::Busy { retry_after_secs } => Self::Busy(retry_after_secs),
            other => Self::internal(other),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Store(e) => e.into(),
            _ => Self::Unauthorized,
        }
    }
}

/// An error with its causes, for the log (never for the caller).
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

impl From<AccessError> for ApiError {
    fn from(err: AccessError) -> Self {
        match err {
            AccessError::VaultNotFound(_) => Self::NotFound(err.to_string()),
            AccessError::RoleTooLow { .. } => Self::Forbidden(err.to_string()),
            AccessError::Store(e) => e.into(),
        }
    }
}

impl From<StoredServiceError> for ApiError {
    fn from(err: StoredServiceError) -> Self {
        match err {
            StoredServiceError::Tampered { .. } => Self::Integrity(err.to_string()),
            StoredServiceError::Unreadable { .. } => Self::Internal(chain(&err)),
        }
    }
}

impl From<ServicesError> for ApiError {
    fn from(err: ServicesError) -> Self {
        match err {
            ServicesError::Access(e) => e.into(),
            ServicesError::Invalid(e) => Self::bad_request("invalid_service", e.to_string()),
            ServicesError::Incompatible(e) => {
                Self::bad_request("incompatible_credential", e.to_string())
            }
            ServicesError::NotFound { .. } => Self::NotFound(err.to_string()),
            ServicesError::Stored(e) => e.into(),
            ServicesError::Encode { .. } => Self::Internal(chain(&err)),
            ServicesError::Store(e) => e.into(),
        }
    }
}

impl From<VaultsError> for ApiError {
    fn from(err: VaultsError) -> Self {
        match err {
            VaultsError::Access(e) => e.into(),
            VaultsError::UsersOnly { .. } => Self::Forbidden(err.to_string()),
            VaultsError::InvalidName(_) => Self::bad_request("invalid_vault_name", err.to_string()),
            VaultsError::Exists(_) | VaultsError::LastHumanAdmin => Self::Conflict(err.to_string()),
            VaultsError::ProxyRoleForUser => Self::bad_request("invalid_role", err.to_string()),
            VaultsError::NoSuchPrincipal { .. } | VaultsError::NotMember { .. } => {
                Self::NotFound(err.to_string())
            }
            VaultsError::AgentTampered(_) => Self::Integrity(err.to_string()),
            VaultsError::Store(e) => e.into(),
        }
    }
}

impl From<CredentialRefused> for ApiError {
    fn from(err: CredentialRefused) -> Self {
        use CredentialRefused as R;
        let (status, code) = match &err {
            R::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            R::Revoked(_) => (StatusCode::CONFLICT, "credential_revoked"),
            R::TypeMismatch { .. } => (StatusCode::CONFLICT, "type_mismatch"),
            R::VersionNotFound { .. } => (StatusCode::NOT_FOUND, "version_not_found"),
            R::VersionUnavailable { .. } => (StatusCode::CONFLICT, "version_unavailable"),
            R::Integrity(_) => return Self::Integrity(err.to_string()),
        };
        Self::Refused {
            status,
            code,
            message: err.to_string(),
        }
    }
}

impl From<CredentialsError> for ApiError {
    fn from(err: CredentialsError) -> Self {
        use CredentialsError as E;
        match err {
            E::Access(e) => e.into(),
            E::TooMany { .. } => Self::bad_request("too_many_credentials", err.to_string()),
            E::NothingToSet
            | E::NothingToDelete
            | E::Stray { .. }
            | E::DescriptionTooLong(_)
            | E::ReasonTooLong => Self::bad_request("invalid_body", err.to_string()),
            E::InvalidKey(_) => Self::bad_request("invalid_credential_key", err.to_string()),
            E::Invalid { .. } => Self::bad_request("invalid_credential", err.to_string()),
            E::NotFound { .. } | E::NotAllFound { .. } => Self::NotFound(err.to_string()),
            E::Revoked(_) => Self::Refused {
                status: StatusCode::CONFLICT,
                code: "credential_revoked",
                message: err.to_string(),
            },
            E::Refused(r) => r.into(),
            E::Integrity { .. } => Self::Integrity(chain(&err)),
            E::Store(e) => e.into(),
        }
    }
}

impl From<AgentsError> for ApiError {
    fn from(err: AgentsError) -> Self {
        use AgentsError as E;
        match err {
            E::Access(e) => e.into(),
            E::UsersOnly | E::ScopedCannotMint => Self::Forbidden(err.to_string()),
            E::InvalidName(_) => Self::bad_request("invalid_agent_name", err.to_string()),
            E::Exists(_) => Self::Conflict(err.to_string()),
            E::NotFound(_) | E::TokenNotFound(_) => Self::NotFound(err.to_string()),
            E::Tampered(_) => Self::Integrity(err.to_string()),
            E::TtlTooShort | E::TtlTooLong(_) | E::OutlivesMinter(_) => {
                Self::bad_request("invalid_ttl", err.to_string())
            }
            E::LabelTooLong => Self::bad_request("invalid_label", err.to_string()),
            E::Crypto(e) => e.into(),
            E::Store(e) => e.into(),
        }
    }
}

impl From<ProposalsError> for ApiError {
    fn from(err: ProposalsError) -> Self {
        use ProposalsError as E;
        match err {
            E::Access(e) => e.into(),
            E::Services(e) => e.into(),
            E::VaultRequired => Self::bad_request("vault_required", err.to_string()),
            E::Invalid(_) => Self::bad_request("invalid_proposal", err.to_string()),
            E::TooManyPending { .. } => Self::TooManyPending(err.to_string()),
            E::VaultGone | E::NotFound(_) | E::NotInVault { .. } | E::LinkInvalid | E::NoRole => {
                Self::NotFound(err.to_string())
            }
            E::HumansOnly
            | E::ApproveNeedsRole { .. }
            | E::RejectNeedsMember
            | E::NotFollower { .. } => Self::Forbidden(err.to_string()),
            E::NotPending { .. } | E::Stale | E::NoLongerApplies(_) | E::VaultChanged => {
                Self::Conflict(err.to_string())
            }
            E::RisksNotAcknowledged { .. } => {
                Self::bad_request("risks_not_acknowledged", err.to_string())
            }
            E::InvalidKey(_) => Self::bad_request("invalid_credential_key", err.to_string()),
            E::UnexpectedValue(_) => Self::bad_request("unexpected_value", err.to_string()),
            E::ValueTooLong(_) => Self::bad_request("invalid_credential_value", err.to_string()),
            E::InvalidValue { .. } => Self::bad_request("invalid_credential", err.to_string()),
            E::ValueRequired(_) => Self::bad_request("value_required", err.to_string()),
            E::ReasonTooLong => Self::bad_request("invalid_reason", err.to_string()),
            E::Content { .. } | E::SuppliedValue { .. } => Self::Integrity(chain(&err)),
            E::Encode(_) => Self::Internal(chain(&err)),
            E::Crypto(e) => e.into(),
            E::Store(e) => e.into(),
        }
    }
}

/// Replaces double-quoted fragments of a parser message (serde quotes input strings that way)
/// with a placeholder, so an error never echoes input that could be a secret sent in the wrong
/// field. Back-quoted field and variant names are kept: they are schema, not data.
pub fn scrub_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            out.push(c);
            out.push('…');
            for d in chars.by_ref() {
                if d == c {
                    break;
                }
            }
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_quoted_input() {
        assert_eq!(
            scrub_quoted("invalid type: string \"sk_live_123\", expected a map"),
            "invalid type: string \"…\", expected a map"
        );
        assert_eq!(
            scrub_quoted("unknown field `tokn`, expected `token`"),
            "unknown field `tokn`, expected `token`"
        );
    }
}
