//! Every response the proxy itself makes: errors classified by origin (agent, policy, upstream,
//! internal) and mapped to a status, a stable code, the `X-Agent-Vault-Proxy-Error` header and a
//! JSON body, in exactly one place. Messages never contain header values, query strings,
//! bodies or credential values.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::body::ProxyBody;
use super::upstream::{ConnectError, TlsFailure};
use crate::identity::AuthError;
use crate::netguard::Blocked;

/// Header naming the proxy's error code on every response it makes itself.
pub const PROXY_ERROR_HEADER: &str = "x-agent-vault-proxy-error";

/// Where an error comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The agent sent something wrong.
    Agent,
    /// The vault's rules refuse it.
    Policy,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// Our own fault.
    Internal,
}

/// An error the proxy answers itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Missing, malformed, unknown, expired or revoked proxy token.
    #[error(
        "proxy authentication required: set HTTPS_PROXY=http://<token>:<vault>@<proxy address>"
    )]
    AuthRequired,
    /// A user login session was presented; only agent and scoped tokens proxy.
    #[error("login sessions cannot use the proxy; run your command with `agent-vault run`")]
    SessionToken,
    /// The token has no role in the vault it names (or names none and has several).
    #[error("{0}")]
    VaultAccess(String),
    /// Too many failed authentications, or too many requests in flight for this agent.
    #[error("{0}")]
    RateLimited(&'static str),
    /// The request is malformed for a proxy (bad target, origin-form, ...).
    #[error("{0}")]
    BadRequest(String),
    /// The request head is over `limits.max_header_bytes` (hyper's own limit is approximate).
    #[error("the request headers exceed the proxy's limit of {0} bytes")]
    HeadersTooLarge(usize),
    /// The request's length could be read two ways (request smuggling); the connection is closed.
    #[error("{0}")]
    BadFraming(&'static str),
    /// SNI or Host disagrees with the CONNECT authority.
    #[error("the Host header or TLS server name does not match the CONNECT target {0}")]
    HostMismatch(String),
    /// TRACE and other refused methods.
    #[error("method {0} is not allowed through the proxy")]
    MethodNotAllowed(String),
    /// A body over the configured cap.
    #[error("request body exceeds the proxy's limit of {0} bytes")]
    RequestTooLarge(u64),
    /// The path of a request to a path-scoped service could be read two ways.
    #[error(
        "the request path contains dot segments or encoded separators, which path-scoped services refuse"
    )]
    AmbiguousPath,
    /// A placeholder in a place or for a host its service does not declare.
    #[error("{0}")]
    PlaceholderRefused(String),
    /// Credentials would travel over plain HTTP.
    #[error("{0} is bound to credentials and must be reached over https://")]
    Plaintext(String),
    /// No service binds the host and the vault denies unmatched hosts.
    #[error(
        "no service in vault {vault:?} covers {host}, and the vault denies hosts without a service"
    )]
    ForbiddenHost {
        /// The vault.
        vault: String,
        /// `host:port`.
        host: String,
        /// The bare host, for the proposal skeleton.
        hostname: String,
    },
    /// A referenced credential does not exist.
    #[error("a credential this service needs ({0}) is not in the vault; nothing was sent upstream")]
    CredentialNotFound(String),
    /// A credential exists but cannot serve this request (a client certificate that does not
    /// parse, a password without its `username`); answered like a missing one.
    #[error("credential {key} cannot be used by this service: {why}; nothing was sent upstream")]
    CredentialUnusable {
        /// The credential.
        key: String,
        /// What is wrong with it, in words (never its value).
        why: &'static str,
    },
    /// A referenced credential's active value has expired.
    #[error("the credential {0} this service needs has expired; nothing was sent upstream")]
    CredentialExpired(String),
    /// A referenced credential was revoked.
    #[error("the credential {0} this service needs was revoked; nothing was sent upstream")]
    CredentialRevoked(String),
    /// A stored credential or service failed its integrity check.
    #[error("a stored credential or service failed its integrity check; nothing was sent upstream")]
    Integrity,
    /// The destination address is not allowed (SSRF guard).
    #[error("the destination resolves to a blocked address ({0})")]
    Blocked(Blocked),
    /// DNS failure, refused or timed-out connection.
    #[error("could not reach the upstream: {0}")]
    Unreachable(#[source] ConnectError),
    /// The upstream's certificate did not verify, or the handshake failed.
    #[error("TLS with the upstream failed: {0}")]
    UpstreamTls(#[source] TlsFailure),
    /// The upstream did not answer within this long.
    #[error("the upstream did not respond within {}", humantime::format_duration(*.0))]
    UpstreamTimeout(Duration),
    /// The upstream broke the protocol or closed early.
    #[error("the upstream connection failed before a complete response")]
    UpstreamProtocol,
    /// The upstream's response is over the configured cap.
    #[error("the upstream response exceeds the proxy's limit")]
    ResponseTooLarge,
    /// A response to a request that carried credentials uses a content or transfer coding the
    /// proxy cannot decode, so it cannot be checked for reflected credentials.
    #[error(
        "the upstream answered with a content coding the proxy cannot scrub for credentials (only gzip, deflate and identity are accepted)"
    )]
    Unscrubbable,
    /// Shutting down.
    #[error("the proxy is shutting down")]
    ShuttingDown,
    /// The store could not answer a token check (details logged); nothing is forwarded.
    #[error("the vault's database is unavailable; try again shortly")]
    Unavailable(#[source] AuthError),
    /// Our own fault (details logged).
    #[error("internal proxy error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ProxyError {
    /// The error's origin.
    pub fn class(&self) -> ErrorClass {
        use ProxyError::*;
        match self {
            AuthRequired
            | SessionToken
            | RateLimited(_)
            | BadRequest(_)
            | BadFraming(_)
            | HeadersTooLarge(_)
            | HostMismatch(_)
            | MethodNotAllowed(_)
            | RequestTooLarge(_)
            | AmbiguousPath
            | PlaceholderRefused(_)
            | Plaintext(_) => ErrorClass::Agent,
            VaultAccess(_)
            | ForbiddenHost { .. }
            | CredentialNotFound(_)
            | CredentialUnusable { .. }
            | CredentialExpired(_)
            | CredentialRevoked(_)
            | Blocked(_) => ErrorClass::Policy,
            Unreachable(_) | UpstreamTls(_) | UpstreamTimeout(_) | UpstreamProtocol
            | ResponseTooLarge | Unscrubbable => ErrorClass::Upstream,
            Integrity | ShuttingDown | Unavailable(_) | Internal(_) => ErrorClass::Internal,
        }
    }

    /// The stable code in the header and body.
    pub fn code(&self) -> &'static str {
        use ProxyError::*;
        match self {
            AuthRequired | SessionToken => "proxy_auth_required",
            VaultAccess(_) => "vault_access_denied",
            RateLimited(_) => "rate_limited",
            BadRequest(_) => "bad_request",
            BadFraming(_) => "bad_framing",
            HeadersTooLarge(_) => "headers_too_large",
            HostMismatch(_) => "host_mismatch",
            MethodNotAllowed(_) => "method_not_allowed",
            RequestTooLarge(_) => "request_too_large",
            AmbiguousPath => "ambiguous_path",
            PlaceholderRefused(_) => "placeholder_refused",
            Plaintext(_) => "plaintext_refused",
            ForbiddenHost { .. } => "forbidden_host",
            CredentialNotFound(_) | CredentialUnusable { .. } => "credential_not_found",
            CredentialExpired(_) => "credential_expired",
            CredentialRevoked(_) => "credential_revoked",
            Integrity => "integrity_error",
            Blocked(_) => "blocked_destination",
            Unreachable(_) => "upstream_unreachable",
            UpstreamTls(_) => "upstream_tls",
            UpstreamTimeout(_) => "upstream_timeout",
            UpstreamProtocol => "upstream_protocol",
            ResponseTooLarge => "response_too_large",
            Unscrubbable => "response_not_scrubbable",
            ShuttingDown => "shutting_down",
            Unavailable(_) => "unavailable",
            Internal(_) => "internal",
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            AuthRequired | SessionToken => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            VaultAccess(_)
            | ForbiddenHost { .. }
            | Blocked(_)
            | PlaceholderRefused(_)
            | Plaintext(_) => StatusCode::FORBIDDEN,
            RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            BadRequest(_) | BadFraming(_) | AmbiguousPath => StatusCode::BAD_REQUEST,
            HostMismatch(_) => StatusCode::MISDIRECTED_REQUEST,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            RequestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            CredentialNotFound(_)
            | CredentialUnusable { .. }
            | CredentialExpired(_)
            | CredentialRevoked(_)
            | Integrity
            | Unreachable(_)
            | UpstreamTls(_)
            | UpstreamProtocol
            | ResponseTooLarge
            | Unscrubbable => StatusCode::BAD_GATEWAY,
            UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ShuttingDown | Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn hint(&self) -> Value {
        match self {
            ProxyError::ForbiddenHost {
                vault,
                host,
                hostname,
            } => json!({
                "text": format!(
                    "ask a human to add a service for {host}: POST /v1/proposals with the skeleton below (or `agent-vault proposal create -f FILE`)"
                ),
                "proposal": {
                    "vault": vault,
                    "message": format!("I need access to {hostname}"),
                    "services": [{
                        "action": "set",
                        "name": crate::policy::service::name_from_host(hostname),
                        "host": hostname,
                        "auth": { "type": "bearer", "token": "REPLACE_WITH_KEY" }
                    }],
                    "credentials": [{
                        "action": "set",
                        "key": "REPLACE_WITH_KEY",
                        "description": "what this credential is for",
                        "obtain": "https://where-a-human-gets-it.example"
                    }]
                }
            }),
            ProxyError::CredentialNotFound(key) => json!({
                "text": format!("ask a human to set {key} (`agent-vault vault credential set {key}=-`) or propose it with POST /v1/proposals")
            }),
            ProxyError::CredentialUnusable { key, .. } => json!({
                "text": format!("ask a human to set {key} again in the form this service needs (see `agent-vault vault credential list`)")
            }),
            ProxyError::CredentialExpired(key) => json!({
                "text": format!("ask a human to rotate {key} (`agent-vault vault credential rotate {key}`)")
            }),
            ProxyError::CredentialRevoked(key) => json!({
                "text": format!("{key} was revoked; ask a human for a new credential")
            }),
            ProxyError::AuthRequired => json!({
                "text": "use `agent-vault run -- <command>`, or set HTTPS_PROXY=http://<token>:<vault>@<proxy address> with a token from `agent-vault vault token`"
            }),
            ProxyError::Blocked(_) => json!({
                "text": "private, loopback and metadata addresses are blocked; an operator can allow ranges with upstream.network_allowlist"
            }),
            _ => Value::Null,
        }
    }

    /// Logs at a level fitting the class and builds the response.
    pub fn into_response(self) -> Response<ProxyBody> {
        match self.class() {
            ErrorClass::Internal => {
                tracing::error!(code = self.code(), detail = ?self, "proxy internal error")
            }
            ErrorClass::Upstream => {
                tracing::info!(code = self.code(), error = %self, "upstream error")
            }
            ErrorClass::Agent | ErrorClass::Policy => {
                tracing::debug!(code = self.code(), "proxy refused request")
            }
        }
        let body =
            json!({ "error": self.code(), "message": self.to_string(), "hint": self.hint() });
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let mut response = Response::new(Full::new(bytes).map_err(|never| match never {}).boxed());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(PROXY_ERROR_HEADER, HeaderValue::from_static(self.code()));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            headers.insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"agent-vault\""),
            );
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(
            self,
            ProxyError::BadFraming(_) | ProxyError::HeadersTooLarge(_)
        ) {
            // Whatever follows on this connection was framed by a reading we refused.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status() == StatusCode::TOO_MANY_REQUESTS {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_carry_code_header_and_json() {
        let resp = ProxyError::CredentialNotFound("STRIPE_KEY".into()).into_response();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()[PROXY_ERROR_HEADER], "credential_not_found");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "credential_not_found");
        assert!(v["message"].as_str().unwrap().contains("STRIPE_KEY"));
        let auth = ProxyError::AuthRequired.into_response();
        assert_eq!(auth.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert!(auth.headers().contains_key(header::PROXY_AUTHENTICATE));
        assert_eq!(auth.headers()[header::CONNECTION], "close");
    }

    /// One value of every variant. The match makes a new variant a compile error here until it
    /// is listed, so the table below covers them all.
    fn one_of_each() -> Vec<ProxyError> {
        use ProxyError::*;
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let all = vec![
            AuthRequired,
            SessionToken,
            VaultAccess("no access".into()),
            RateLimited("slow down"),
            BadRequest("bad".into()),
            HeadersTooLarge(1),
            BadFraming("two lengths"),
            HostMismatch("h:443".into()),
            MethodNotAllowed("TRACE".into()),
            RequestTooLarge(1),
            AmbiguousPath,
            PlaceholderRefused("not here".into()),
            Plaintext("h".into()),
            ForbiddenHost {
                vault: "v".into(),
                host: "h:443".into(),
                hostname: "h".into(),
            },
            CredentialNotFound("K".into()),
            CredentialUnusable {
                key: "K".into(),
                why: "no username",
            },
            CredentialExpired("K".into()),
            CredentialRevoked("K".into()),
            Integrity,
            Blocked(crate::netguard::Blocked::Metadata),
            Unreachable(ConnectError::Connect(std::sync::Arc::new(refused))),
            UpstreamTls(TlsFailure::Timeout),
            UpstreamTimeout(Duration::from_secs(30)),
            UpstreamProtocol,
            ResponseTooLarge,
            Unscrubbable,
            ShuttingDown,
            Unavailable(AuthError::Unknown),
            Internal("cause".into()),
        ];
        for e in &all {
            match e {
                AuthRequired
                | SessionToken
                | VaultAccess(_)
                | RateLimited(_)
                | BadRequest(_)
                | HeadersTooLarge(_)
                | BadFraming(_)
                | HostMismatch(_)
                | MethodNotAllowed(_)
                | RequestTooLarge(_)
                | AmbiguousPath
                | PlaceholderRefused(_)
                | Plaintext(_)
                | ForbiddenHost { .. }
                | CredentialNotFound(_)
                | CredentialUnusable { .. }
                | CredentialExpired(_)
                | CredentialRevoked(_)
                | Integrity
                | Blocked(_)
                | Unreachable(_)
                | UpstreamTls(_)
                | UpstreamTimeout(_)
                | UpstreamProtocol
                | ResponseTooLarge
                | Unscrubbable
                | ShuttingDown
                | Unavailable(_)
                | Internal(_) => {}
            }
        }
        all
    }

    #[test]
    fn every_variant_has_a_class_code_and_status() {
        use ErrorClass::*;
        let table: Vec<_> = one_of_each()
            .iter()
            .map(|e| (e.class(), e.code(), e.status().as_u16()))
            .collect();
        assert_eq!(
            table,
            [
                (Agent, "proxy_auth_required", 407),
                (Agent, "proxy_auth_required", 407),
                (Policy, "vault_access_denied", 403),
                (Agent, "rate_limited", 429),
                (Agent, "bad_request", 400),
                (Agent, "headers_too_large", 431),
                (Agent, "bad_framing", 400),
                (Agent, "host_mismatch", 421),
                (Agent, "method_not_allowed", 405),
                (Agent, "request_too_large", 413),
                (Agent, "ambiguous_path", 400),
                (Agent, "placeholder_refused", 403),
                (Agent, "plaintext_refused", 403),
                (Policy, "forbidden_host", 403),
                (Policy, "credential_not_found", 502),
                (Policy, "credential_not_found", 502),
                (Policy, "credential_expired", 502),
                (Policy, "credential_revoked", 502),
                (Internal, "integrity_error", 502),
                (Policy, "blocked_destination", 403),
                (Upstream, "upstream_unreachable", 502),
                (Upstream, "upstream_tls", 502),
                (Upstream, "upstream_timeout", 504),
                (Upstream, "upstream_protocol", 502),
                (Upstream, "response_too_large", 502),
                (Upstream, "response_not_scrubbable", 502),
                (Internal, "shutting_down", 503),
                (Internal, "unavailable", 503),
                (Internal, "internal", 500),
            ]
        );
    }

    #[test]
    fn causes_are_kept_for_logs_and_internal_ones_stay_out_of_the_message() {
        use std::error::Error as _;
        let internal = ProxyError::Internal("sk_live_cause".into());
        assert!(
            internal
                .source()
                .is_some_and(|c| c.to_string() == "sk_live_cause")
        );
        assert_eq!(internal.to_string(), "internal proxy error");
        let unavailable = ProxyError::Unavailable(AuthError::Unknown);
        assert!(unavailable.source().is_some());
        assert!(!unavailable.to_string().contains("unknown token"));
        // Upstream failures name their cause to the agent, as before: the text is unchanged.
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let unreachable =
            ProxyError::Unreachable(ConnectError::Connect(std::sync::Arc::new(refused)));
        assert_eq!(
            unreachable.to_string(),
            "could not reach the upstream: connection failed: connection refused"
        );
        assert!(unreachable.source().is_some());
        assert_eq!(
            ProxyError::UpstreamTimeout(Duration::from_secs(30)).to_string(),
            "the upstream did not respond within 30s"
        );
        assert_eq!(
            ProxyError::UpstreamTls(TlsFailure::Timeout).to_string(),
            "TLS with the upstream failed: handshake timed out"
        );
    }
}
