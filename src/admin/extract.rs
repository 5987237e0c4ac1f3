//! Extractors: who is calling (bearer token or session cookie), JSON bodies with errors that
//! name the field but never echo values, and the client's address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use secrecy::SecretString;
use serde::de::DeserializeOwned;

use super::AdminState;
use super::error::{ApiError, scrub_quoted};
use crate::identity::Authenticated;

/// Name of the session cookie the web pages use over plain HTTP (loopback).
pub const SESSION_COOKIE: &str = "av_session";

/// Name of the session cookie when the pages are served over TLS.
pub const SECURE_SESSION_COOKIE: &str = "__Host-av_session";

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<Authenticated>);

impl std::ops::Deref for Caller {
    type Target = Authenticated;
    fn deref(&self) -> &Authenticated {
        &self.0
    }
}

/// The raw token a request carries in `Authorization: Bearer`. The API never accepts the web
/// pages' session cookie: browsers send cookies to every port of a host, so a page another
/// local program serves could otherwise act with the human's session.
pub fn raw_token(parts: &Parts) -> Option<SecretString> {
    let value = parts.headers.get(header::AUTHORIZATION)?;
    let text = value.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| SecretString::from(token.trim().to_owned()))
}

impl FromRequestParts<AdminState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        let raw = raw_token(parts).ok_or(ApiError::Unauthorized)?;
        let ip = client_ip(parts);
        // A valid token always works: the budget only slows guessing, so a process that burns
        // the budget of a shared address (loopback) cannot lock the human out.
        match state.identity.authenticate_fresh(&raw).await {
            Ok(who) => Ok(Caller(who)),
            Err(crate::identity::AuthError::Store(e)) => Err(e.into()),
            Err(e) => {
                tracing::debug!(reason = %e, %ip, "admin API token refused");
                if state.auth_failures.exhausted(&ip) {
                    return Err(ApiError::TooManyRequests);
                }
                state.auth_failures.record(ip);
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// The optional caller: `None` when no token is presented, an error when a bad one is.
#[derive(Clone, Debug)]
pub struct MaybeCaller(pub Option<Arc<Authenticated>>);

impl FromRequestParts<AdminState> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        if raw_token(parts).is_none() {
            return Ok(Self(None));
        }
        Caller::from_request_parts(parts, state)
            .await
            .map(|c| Self(Some(c.0)))
    }
}

/// The peer address of the connection.
pub fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// The client's IP address.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(client_ip(parts)))
    }
}

/// A JSON body.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request("invalid_body", "could not read the request body")
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON with an error that names the field and never quotes input.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!(
                "malformed JSON at line {} column {}",
                inner.line(),
                inner.column()
            )
        } else {
            let detail = scrub_quoted(&inner.to_string());
            let detail = detail
                .split(" at line ")
                .next()
                .unwrap_or(&detail)
                .to_owned();
            if path == "." {
                detail
            } else {
                format!("`{path}`: {detail}")
            }
        };
        ApiError::bad_request("invalid_json", message)
    })
}

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    /// An absent or empty body is `None`; anything else must be valid JSON.
    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let has_type = req.headers().contains_key(header::CONTENT_TYPE);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request("invalid_body", "could not read the request body")
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        if !has_type {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse_json(&bytes).map(|v| Some(ApiJson(v)))
    }
}
