//! Server-rendered pages that work without JavaScript, one module per page: `session` (login,
//! logout), `home` (the dashboard of pending proposals) and `approval` (the proposal approval
//! page, `/approve/{id}?token=...`). This module holds what they share: the router, the page
//! chrome, the session cookie, the same-origin check and the error page. Every state change is
//! a same-origin POST carrying a CSRF token bound to the login session; every page sends CSP
//! without inline script, `frame-ancestors 'none'`, `Referrer-Policy: no-referrer` and
//! `X-Content-Type-Options: nosniff`. Like `admin/`, the pages are a thin face over `manage`.

mod approval;
mod home;
mod html;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::SecretString;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::admin::extract::{SECURE_SESSION_COOKIE, SESSION_COOKIE};
use crate::admin::{AdminState, ApiError};
use crate::identity::{Authenticated, Principal};
use html::{esc, page};

/// The Content-Security-Policy of every page.
pub const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The pages' router.
pub fn router(state: AdminState) -> Router {
    let set = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
    };
    Router::new()
        .route("/", get(home::home))
        .route(
            "/login",
            get(session::login_page).post(session::login_submit),
        )
        .route("/logout", post(session::logout))
        .route(
            "/approve/{id}",
            get(approval::approval_page).post(approval::approval_submit),
        )
        .route("/static/app.css", get(stylesheet))
        .layer(set(header::CONTENT_SECURITY_POLICY, PAGE_CSP))
        .layer(set(header::REFERRER_POLICY, "no-referrer"))
        .layer(set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(set(header::X_FRAME_OPTIONS, "DENY"))
        .layer(set(header::CACHE_CONTROL, "no-store"))
        .with_state(state)
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        html::STYLESHEET,
    )
        .into_response()
}

/// A whole page: the chrome around `body` (already HTML), with `status`.
fn html_response(status: StatusCode, title: &str, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page(title, body),
    )
        .into_response()
}

/// A page that says what is wrong, in words for a person.
fn error_page(status: StatusCode, message: &str) -> Response {
    html_response(
        status,
        "Error",
        &format!(
            "<h1>Something is wrong</h1><p class=\"error\">{}</p>",
            esc(message)
        ),
    )
}

/// What a page may say about an error: internal details are logged, never shown.
fn page_message(err: &ApiError) -> String {
    match err {
        ApiError::Integrity(detail) | ApiError::Internal(detail) => {
            tracing::error!(error = %detail, "web page error");
            "internal error; the server log has the details".into()
        }
        other => other.to_string(),
    }
}

/// The error page for an error from the application layer, with the status the API would
/// answer (one mapping, in `admin::error`).
fn api_error_page(err: ApiError) -> Response {
    error_page(err.status(), &page_message(&err))
}

/// Whether people reach the pages over TLS (a TLS-terminating front end, by `public_url`).
fn served_over_tls(public_url: &str) -> bool {
    public_url
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// The session cookie's name. Over TLS it is `__Host-` prefixed: the browser then keeps it only
/// if it was set `Secure`, with `Path=/` and no `Domain`, by this origin, so a plain-http
/// service on another port of the host can neither read it nor plant one of its own.
fn cookie_name(public_url: &str) -> &'static str {
    if served_over_tls(public_url) {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

/// The `Set-Cookie` value for the session cookie (`Max-Age=0` clears it).
fn session_cookie(public_url: &str, value: &str, max_age: u64) -> String {
    let secure = if served_over_tls(public_url) {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        cookie_name(public_url)
    )
}

/// The session cookie's token (pages never accept bearer headers).
fn cookie_token(public_url: &str, headers: &HeaderMap) -> Option<SecretString> {
    let wanted = cookie_name(public_url);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == wanted && !value.is_empty()).then(|| SecretString::from(value.to_owned()))
        })
}

/// The logged-in human, if any. Only web-session tokens count: agent tokens and API sessions
/// in a cookie are ignored, and the web token itself is refused everywhere else.
async fn web_user(state: &AdminState, headers: &HeaderMap) -> Option<Arc<Authenticated>> {
    let raw = cookie_token(&state.public_url, headers)?;
    let who = state.identity.authenticate_web(&raw).await.ok()?;
    matches!(who.principal, Principal::User { .. }).then_some(who)
}

fn origin_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(u.origin().ascii_serialization())
}

/// A state-changing request must come from one of our own pages. The browser's `Origin` must
/// be our public origin or the origin of the address the request was sent to. Our pages send
/// `Referrer-Policy: no-referrer`, under which browsers send `Origin: null` on form posts; then
/// the browser's own `Sec-Fetch-Site: same-origin` is required instead. The CSRF token bound to
/// the session is checked on top of this.
fn same_origin(public_url: &str, headers: &HeaderMap) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match origin {
        Some(o) if o != "null" => {
            let mut allowed = Vec::new();
            if let Some(a) = origin_of(public_url) {
                allowed.push(a);
            }
            if let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok())
                && let Some(a) = origin_of(&format!("http://{host}"))
            {
                allowed.push(a);
            }
            allowed.iter().any(|a| a == o)
        }
        _ => headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("same-origin"),
    }
}

/// A time (ms since the epoch) as people read it on a page.
fn time(ms: i64) -> String {
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::crypto::TokenHash;
    use crate::domain::{Actor, UnmatchedHostPolicy, VaultName};
    use crate::store::{ProposalRecord, ProposalStatus, VaultRecord};

    /// A vault named `props`, for page rendering tests.
    pub(super) fn vault() -> VaultRecord {
        VaultRecord {
            id: "v1".into(),
            name: VaultName::parse("props").unwrap(),
            unmatched_host_policy: UnmatchedHostPolicy::Tunnel,
            created_at: 0,
            updated_at: 0,
        }
    }

    /// A pending proposal #7 (`p1`) of [`vault`] with `message` and no changes.
    pub(super) fn proposal(message: &str) -> ProposalRecord {
        ProposalRecord {
            id: "p1".into(),
            vault_id: "v1".into(),
            seq: 7,
            status: ProposalStatus::Pending,
            created_by: Actor::Agent("a1".into()),
            creator_token_id: None,
            message: message.into(),
            content: serde_json::json!({ "message": message, "services": [], "credentials": [] })
                .to_string(),
            content_hash: String::new(),
            approval_token_hash: TokenHash([0; 32]),
            expires_at: 1_800_000_000_000,
            reviewed_by: None,
            reviewed_at: None,
            review_note: None,
            created_at: 1_700_000_000_000,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn the_session_cookie_is_host_prefixed_and_secure_over_tls_only() {
        let plain = session_cookie("http://127.0.0.1:14321", "tok", 60);
        assert_eq!(
            plain,
            "av_session=tok; Path=/; HttpOnly; SameSite=Strict; Max-Age=60"
        );
        let tls = session_cookie("HTTPS://vault.example", "tok", 0);
        assert!(tls.starts_with("__Host-av_session=tok;"), "{tls}");
        assert!(tls.ends_with("; Secure"), "{tls}");
    }

    #[test]
    fn only_our_own_cookie_is_read() {
        let h = headers(&[("cookie", "other=1; av_session=; av_session=abc")]);
        assert_eq!(
            cookie_token("http://x", &h)
                .map(|t| t.expose_secret().to_owned())
                .as_deref(),
            Some("abc")
        );
        assert!(
            cookie_token("https://x", &h).is_none(),
            "over TLS only __Host- counts"
        );
        assert!(cookie_token("http://x", &headers(&[])).is_none());
    }

    #[test]
    fn posts_must_come_from_our_origin() {
        let url = "http://127.0.0.1:14321";
        let ok = |pairs: &[(&'static str, &str)]| same_origin(url, &headers(pairs));
        assert!(ok(&[("origin", "http://127.0.0.1:14321")]));
        assert!(ok(&[
            ("origin", "http://localhost:9"),
            ("host", "localhost:9")
        ]));
        assert!(ok(&[("origin", "null"), ("sec-fetch-site", "same-origin")]));
        assert!(!ok(&[("origin", "http://evil.example")]));
        assert!(!ok(&[("origin", "null"), ("sec-fetch-site", "same-site")]));
        assert!(!ok(&[]), "no origin and no fetch metadata");
    }

    #[test]
    fn internal_errors_never_reach_the_page() {
        let message = page_message(&ApiError::Internal("db password=hunter2".into()));
        assert!(!message.contains("hunter2"), "{message}");
        let resp = api_error_page(ApiError::NotFound("no such thing".into()));
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
