//! Logging in and out of the web pages. The session lives in an HttpOnly, SameSite=Strict
//! cookie holding a web-only token (the API refuses it); login is rate-limited per client
//! address like the API's, and both forms are same-origin POSTs.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::html::esc;
use super::{
    api_error_page, error_page, html_response, page_message, same_origin, session_cookie, web_user,
};
use crate::admin::extract::ClientIp;
use crate::admin::{AdminState, ApiError};
use crate::crypto::TokenKind;
use crate::domain::Email;
use crate::store::TokenStoreKind;

/// Only same-site relative paths may be redirect targets after login.
fn safe_next(next: &str) -> &str {
    // Browsers drop tabs and newlines from URLs and read a backslash as a slash, so "/\t/evil"
    // would become "//evil": any of them makes the target unsafe.
    let odd = next.chars().any(|c| c.is_control() || c == '\\');
    if next.starts_with('/') && !next.starts_with("//") && !odd {
        next
    } else {
        "/"
    }
}

/// The login form, returning to `next` (already made safe) after a successful login.
pub(super) fn login_form(next: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    format!(
        "<h2>Log in</h2>{error}<form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label for=\"email\">Email</label><input type=\"email\" id=\"email\" name=\"email\" autocomplete=\"username\" required>\
         <label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
         <div class=\"actions\"><button type=\"submit\" id=\"login\">Log in</button></div></form>",
        esc(next)
    )
}

#[derive(Deserialize)]
pub(super) struct NextQuery {
    next: Option<String>,
}

/// `GET /login`.
pub(super) async fn login_page(Query(q): Query<NextQuery>) -> Response {
    let next = q.next.unwrap_or_else(|| "/".into());
    html_response(
        StatusCode::OK,
        "Log in",
        &format!("<h1>agent-vault</h1>{}", login_form(safe_next(&next), None)),
    )
}

/// The login form again with a 503 (and `Retry-After` when the server is busy hashing).
fn busy_page(next: &str, err: ApiError) -> Response {
    let mut response = html_response(
        err.status(),
        "Log in",
        &login_form(next, Some(&page_message(&err))),
    );
    if let ApiError::Busy(secs) = err {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    email: String,
    password: SecretString,
    #[serde(default)]
    next: String,
}

/// `POST /login`: checks the password (counted against the client's failure budget) and sets
/// the web session cookie.
pub(super) async fn login_submit(
    State(state): State<AdminState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let next = safe_next(&form.next).to_owned();
    if !same_origin(&state.public_url, &headers) {
        return error_page(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    if state.auth_failures.exhausted(&ip) {
        return html_response(
            StatusCode::TOO_MANY_REQUESTS,
            "Log in",
            &login_form(&next, Some("too many failed attempts; wait a minute")),
        );
    }
    let user = match Email::parse(&form.email) {
        Ok(email) => state.store.user_by_email(&email).await.ok().flatten(),
        Err(_) => None,
    };
    let phc = user.as_ref().map(|u| u.password_hash.clone());
    let ok = match state.passwords.verify(form.password, phc).await {
        Ok(ok) => ok,
        Err(e) => return busy_page(&next, e.into()),
    };
    let Some(user) = user.filter(|_| ok) else {
        state.auth_failures.record(ip);
        return html_response(
            StatusCode::UNAUTHORIZED,
            "Log in",
            &login_form(&next, Some("wrong email or password")),
        );
    };
    let ttl = state.config.tokens.web_session_ttl;
    let issued = crate::manage::agents::issue_token(
        &state.manage(),
        TokenKind::Web,
        TokenStoreKind::Web,
        |t| {
            t.user_id = Some(user.id.clone());
            t.label = "web".into();
        },
        Some(ttl),
    )
    .await;
    let raw = match issued {
        Ok(issued) => issued.raw,
        Err(e) => return api_error_page(e.into()),
    };
    let cookie = session_cookie(&state.public_url, raw.expose_secret(), ttl.as_secs());
    let mut response = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout`: revokes the web session and clears its cookie.
pub(super) async fn logout(
    State(state): State<AdminState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    let Some(user) = web_user(&state, &headers).await else {
        return Redirect::to("/login").into_response();
    };
    if !same_origin(&state.public_url, &headers)
        || !state
            .keyring
            .verify_csrf(&user.token_id, "logout", &form.csrf)
    {
        return error_page(
            StatusCode::FORBIDDEN,
            "cross-origin or expired form; reload the page",
        );
    }
    let _ = state.store.revoke_token(&user.token_id).await;
    state.manage().tokens_changed().await;
    let mut response = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session_cookie(&state.public_url, "", 0)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_site_paths_are_redirect_targets() {
        for safe in ["/", "/approve/abc?token=av_appr_x", "/a/b"] {
            assert_eq!(safe_next(safe), safe);
        }
        for unsafe_next in [
            "",
            "//evil.example",
            "https://evil.example/",
            "/\\evil.example",
            "\\\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "evil",
        ] {
            assert_eq!(safe_next(unsafe_next), "/", "{unsafe_next:?}");
        }
    }

    #[test]
    fn the_login_form_escapes_what_it_echoes() {
        let form = login_form("/x\"><script>", Some("<b>wrong</b>"));
        assert!(
            form.contains("value=\"/x&quot;&gt;&lt;script&gt;\""),
            "{form}"
        );
        assert!(form.contains("&lt;b&gt;wrong&lt;/b&gt;"), "{form}");
        assert!(
            !form.contains("<script>") && !form.contains("<b>"),
            "{form}"
        );
    }

    #[test]
    fn a_busy_server_answers_503_with_retry_after() {
        let resp = busy_page("/", ApiError::Busy(7));
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
    }
}
