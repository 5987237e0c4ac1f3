//! Server-rendered pages that work without JavaScript: login, the proposal approval page
//! (`/approve/{id}?token=...`), and a dashboard of pending proposals. Every state change is a
//! same-origin POST carrying a CSRF token bound to the login session; every page sends CSP
//! without inline script, `frame-ancestors 'none'`, `Referrer-Policy: no-referrer` and
//! `X-Content-Type-Options: nosniff`.

mod html;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::admin::extract::{ClientIp, SECURE_SESSION_COOKIE, SESSION_COOKIE};
use crate::admin::{AdminState, ApiError};
use crate::crypto::TokenKind;
use crate::domain::{Email, VaultRole};
use crate::identity::{Authenticated, Principal};
use crate::manage::proposals::{
    self as manage_proposals, approve, content_of, reject, vault_state,
};
use crate::policy::confusable::{self, HostForms};
use crate::policy::service::{AuthSpec, ServiceSpec};
use crate::proposal::{self, CredentialSlot, ProposalContent, ServiceChange, Severity, VaultState};
use crate::store::{ProposalRecord, ProposalStatus, TokenStoreKind, VaultRecord};
use html::{esc, page};

/// The Content-Security-Policy of every page.
pub const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The pages' router.
pub fn router(state: AdminState) -> Router {
    let set = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
    };
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_page).post(login_submit))
        .route("/logout", post(logout))
        .route("/approve/{id}", get(approval_page).post(approval_submit))
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

fn html_response(status: StatusCode, title: &str, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page(title, body),
    )
        .into_response()
}

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

fn status_of(err: &ApiError) -> StatusCode {
    match err {
        ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        ApiError::Unauthorized | ApiError::InvalidCredentials => StatusCode::UNAUTHORIZED,
        ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::Conflict(_) => StatusCode::CONFLICT,
        ApiError::TooManyRequests | ApiError::TooManyPending(_) => StatusCode::TOO_MANY_REQUESTS,
        ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ApiError::Unavailable | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Integrity(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
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

fn api_error_page(err: ApiError) -> Response {
    error_page(status_of(&err), &page_message(&err))
}

/// Whether people reach the pages over TLS (a TLS-terminating front end, by `public_url`).
fn served_over_tls(state: &AdminState) -> bool {
    state
        .public_url
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// The session cookie's name. Over TLS it is `__Host-` prefixed: the browser then keeps it only
/// if it was set `Secure`, with `Path=/` and no `Domain`, by this origin, so a plain-http
/// service on another port of the host can neither read it nor plant one of its own.
fn cookie_name(state: &AdminState) -> &'static str {
    if served_over_tls(state) {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

/// The `Set-Cookie` value for the session cookie (`Max-Age=0` clears it).
fn session_cookie(state: &AdminState, value: &str, max_age: u64) -> String {
    let secure = if served_over_tls(state) {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        cookie_name(state)
    )
}

/// The session cookie's token (pages never accept bearer headers).
fn cookie_token(state: &AdminState, headers: &HeaderMap) -> Option<SecretString> {
    let wanted = cookie_name(state);
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
    let raw = cookie_token(state, headers)?;
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
fn same_origin(state: &AdminState, headers: &HeaderMap) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match origin {
        Some(o) if o != "null" => {
            let mut allowed = Vec::new();
            if let Some(a) = origin_of(&state.public_url) {
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

fn time(ms: i64) -> String {
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

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

fn login_form(next: &str, error: Option<&str>) -> String {
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
struct NextQuery {
    next: Option<String>,
}

async fn login_page(Query(q): Query<NextQuery>) -> Response {
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
        status_of(&err),
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
struct LoginForm {
    email: String,
    password: SecretString,
    #[serde(default)]
    next: String,
}

async fn login_submit(
    State(state): State<AdminState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let next = safe_next(&form.next).to_owned();
    if !same_origin(&state, &headers) {
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
    let cookie = session_cookie(&state, raw.expose_secret(), ttl.as_secs());
    let mut response = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<AdminState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    let Some(user) = web_user(&state, &headers).await else {
        return Redirect::to("/login").into_response();
    };
    if !same_origin(&state, &headers)
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
    if let Ok(v) = HeaderValue::from_str(&session_cookie(&state, "", 0)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn home(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let Some(user) = web_user(&state, &headers).await else {
        return Redirect::to("/login?next=/").into_response();
    };
    let vaults = match state.store.list_vaults().await {
        Ok(v) => v,
        Err(e) => return api_error_page(e.into()),
    };
    let mut rows = String::new();
    for vault in vaults
        .iter()
        .filter(|v| user.role_in(&v.id).is_some_and(|r| r >= VaultRole::Member))
    {
        let pending = state
            .store
            .list_proposals(&vault.id, Some(ProposalStatus::Pending))
            .await
            .unwrap_or_default();
        for p in pending {
            rows.push_str(&format!(
                "<tr><td>{}</td><td><a href=\"/approve/{}\">#{}</a></td><td>{}</td><td>{}</td></tr>",
                esc(vault.name.as_str()),
                esc(&p.id),
                p.seq,
                esc(&p.message.chars().take(120).collect::<String>()),
                time(p.expires_at)
            ));
        }
    }
    let list = if rows.is_empty() {
        "<p class=\"meta\">No pending proposals in your vaults.</p>".to_owned()
    } else {
        format!(
            "<table><tr><th>Vault</th><th>Proposal</th><th>Message</th><th>Expires</th></tr>{rows}</table>"
        )
    };
    let email = match &user.principal {
        Principal::User { email, .. } => email.to_string(),
        _ => String::new(),
    };
    let body = format!(
        "<h1>Pending proposals</h1><p class=\"meta\">Logged in as {}</p>{list}\
         <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Log out</button></form>",
        esc(&email),
        esc(&state.keyring.csrf_token(&user.token_id, "logout"))
    );
    html_response(StatusCode::OK, "Proposals", &body)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Who is looking at a proposal page, and what they may do.
enum Viewer {
    /// Not logged in (but holding a valid link).
    Anonymous,
    /// Logged in, with this role (or none) in the vault.
    User(Arc<Authenticated>, Option<VaultRole>),
}

/// Loads a proposal the visitor may see: with a valid link token, or as a member of its vault.
async fn load_visible(
    state: &AdminState,
    id: &str,
    token: Option<&str>,
    headers: &HeaderMap,
) -> Result<(ProposalRecord, VaultRecord, Viewer), Response> {
    let user = web_user(state, headers).await;
    let (vault, p) = manage_proposals::visible(&state.manage(), id, token, user.as_deref())
        .await
        .map_err(|e| api_error_page(e.into()))?;
    let viewer = match user {
        Some(user) => {
            let role = user.role_in(&p.vault_id);
            Viewer::User(user, role)
        }
        None => Viewer::Anonymous,
    };
    Ok((p, vault, viewer))
}

fn auth_summary(auth: &AuthSpec) -> String {
    match auth {
        AuthSpec::Bearer { token } => {
            format!("bearer token from <code>{}</code>", esc(token.as_str()))
        }
        AuthSpec::Basic { username, password } => format!(
            "basic auth: user <code>{}</code>{}",
            esc(username.as_str()),
            password
                .as_ref()
                .map(|p| format!(", password <code>{}</code>", esc(p.as_str())))
                .unwrap_or_default()
        ),
        AuthSpec::ApiKey {
            key,
            header,
            prefix,
        } => {
            format!(
                "header <code>{}: {}&lt;{}&gt;</code>",
                esc(header),
                esc(prefix),
                esc(key.as_str())
            )
        }
        AuthSpec::Custom { headers } => headers
            .iter()
            .map(|(h, t)| format!("header <code>{}: {}</code>", esc(h), esc(t)))
            .collect::<Vec<_>>()
            .join("<br>"),
        AuthSpec::Passthrough => "nothing attached (allow only)".into(),
    }
}

fn service_rows(content: &ProposalContent, state: &VaultState) -> String {
    let mut rows = String::new();
    for change in &content.services {
        match change {
            ServiceChange::Set(spec) => {
                let existing = state.services.iter().any(|s| s.name == spec.name);
                rows.push_str(&format!(
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    if existing { "replace" } else { "add" },
                    esc(&spec.name),
                    host_cell(&spec.host),
                    if spec.methods.is_empty() {
                        "any".to_owned()
                    } else {
                        esc(&spec.methods.join(", "))
                    },
                    auth_summary(&spec.auth) + &substitutions(spec)
                ));
            }
            ServiceChange::Delete { name } => rows.push_str(&format!(
                "<tr><td>remove</td><td><code>{}</code></td><td></td><td></td><td></td></tr>",
                esc(name)
            )),
        }
    }
    rows
}

/// A host as the proxy routes on it (A-labels) and, when it differs, as a browser would show
/// it, with every non-ASCII character named: a look-alike cannot hide behind its rendering.
/// The Unicode form is forced left-to-right so right-to-left letters cannot reorder it.
fn host_cell(host: &str) -> String {
    let forms = HostForms::of(host);
    let mut cell = format!("<code class=\"host-ascii\">{}</code>", esc(&forms.ascii));
    if forms.is_internationalized() {
        let chars: Vec<String> = forms
            .unicode
            .chars()
            .filter(|c| !c.is_ascii())
            .fold(Vec::new(), |mut seen, c| {
                if !seen.contains(&c) {
                    seen.push(c);
                }
                seen
            })
            .into_iter()
            .map(confusable::describe_char)
            .collect();
        cell.push_str(&format!(
            "<br>displayed as <code class=\"host-unicode\"><bdo dir=\"ltr\">{}</bdo></code><br><span class=\"hint\">non-ASCII: {}</span>",
            esc(&forms.unicode),
            esc(&chars.join(", "))
        ));
    }
    cell
}

fn substitutions(spec: &ServiceSpec) -> String {
    spec.substitutions
        .iter()
        .map(|s| {
            let places: Vec<String> = s.places.iter().map(|p| p.describe()).collect();
            format!(
                "<br>replaces <code>{}</code> with <code>{}</code> only as the whole value of: {}",
                esc(&s.placeholder),
                esc(s.key.as_str()),
                esc(&places.join("; "))
            )
        })
        .collect()
}

fn credential_rows(content: &ProposalContent) -> String {
    let mut rows = String::new();
    for slot in &content.credentials {
        match slot {
            CredentialSlot::Set {
                key,
                description,
                obtain,
                obtain_instructions,
                has_value,
            } => {
                // Never a link: a click would carry the approver's cookie to whatever the agent
                // runs (cookies are not isolated by port). The approver reads it and decides.
                let link = obtain
                    .as_ref()
                    .map(|u| {
                        format!(
                            "<div class=\"agent-url\"><span class=\"agent-warning\">⚠ Link provided by the agent; \
                             not clickable. Check where it goes before you copy it into your browser:</span>\
                             <code>{}</code></div>",
                            esc(u)
                        )
                    })
                    .unwrap_or_default();
                let how = obtain_instructions
                    .as_ref()
                    .map(|i| format!("<div class=\"message\">{}</div>", esc(i)))
                    .unwrap_or_default();
                rows.push_str(&format!(
                    "<tr><td>set</td><td><code>{}</code></td><td>{}</td><td>{link}{how}</td><td>{}</td></tr>",
                    esc(key.as_str()),
                    esc(description),
                    if *has_value { "the agent supplied a value" } else { "you enter it below" }
                ));
            }
            CredentialSlot::Delete { key } => rows.push_str(&format!(
                "<tr><td>delete</td><td><code>{}</code></td><td></td><td></td><td></td></tr>",
                esc(key.as_str())
            )),
        }
    }
    rows
}

#[allow(clippy::too_many_arguments)]
fn render(
    state: &AdminState,
    p: &ProposalRecord,
    vault: &VaultRecord,
    vs: &VaultState,
    creator: &str,
    viewer: &Viewer,
    token: Option<&str>,
    flash: Option<(&str, &str)>,
) -> Result<String, ApiError> {
    let content = content_of(p)?;
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>Proposal #{} in vault <code>{}</code> <span class=\"status {}\" id=\"status\">{}</span></h1>\
         <p class=\"meta\">Raised by {} on {} · expires {}</p>",
        p.seq,
        esc(vault.name.as_str()),
        p.status.as_str(),
        p.status.as_str(),
        esc(creator),
        time(p.created_at),
        time(p.expires_at)
    ));
    if let Some((kind, text)) = flash {
        body.push_str(&format!(
            "<p class=\"{kind}\" id=\"flash\">{}</p>",
            esc(text)
        ));
    }
    if !content.message.is_empty() {
        body.push_str(&format!(
            "<h2>Message from the agent</h2><div class=\"message\">{}</div>",
            esc(&content.message)
        ));
    }
    // Risks are computed against the vault as it is now, and the form's hash covers both.
    let risks = proposal::risks(&content, vs);
    if !risks.is_empty() {
        body.push_str("<h2>Check these</h2>");
        for r in &risks {
            let class = if r.severity == Severity::Notice {
                "notice"
            } else {
                "risk"
            };
            body.push_str(&format!(
                "<p class=\"{class}\">{}{}</p>",
                match r.severity {
                    Severity::High => "⚠ High risk: ",
                    Severity::Warning => "⚠ ",
                    Severity::Notice => "",
                },
                esc(&r.text)
            ));
        }
    }
    if !content.services.is_empty() {
        body.push_str(&format!(
            "<h2>Services</h2><table><tr><th>Change</th><th>Name</th><th>Host</th><th>Methods</th><th>Credentials attached</th></tr>{}</table>",
            service_rows(&content, vs)
        ));
    }
    if !content.credentials.is_empty() {
        body.push_str(&format!(
            "<h2>Credentials</h2><table><tr><th>Change</th><th>Key</th><th>Description</th><th>Where to get it</th><th>Value</th></tr>{}</table>",
            credential_rows(&content)
        ));
    }
    if p.status != ProposalStatus::Pending {
        if let Some(note) = &p.review_note
            && !note.is_empty()
        {
            body.push_str(&format!("<p class=\"meta\">Reason: {}</p>", esc(note)));
        }
        return Ok(body);
    }
    let token_field = token
        .map(|t| {
            format!(
                "<input type=\"hidden\" name=\"token\" value=\"{}\">",
                esc(t)
            )
        })
        .unwrap_or_default();
    match viewer {
        Viewer::Anonymous => {
            let next = format!(
                "/approve/{}{}",
                p.id,
                token.map(|t| format!("?token={t}")).unwrap_or_default()
            );
            body.push_str("<p class=\"notice\">Log in with an account that is a member of this vault to approve or reject.</p>");
            body.push_str(&login_form(&next, None));
        }
        Viewer::User(user, role) => {
            let need = if proposal::needs_admin(&content) {
                VaultRole::Admin
            } else {
                VaultRole::Member
            };
            if role.is_none_or(|r| r < need) {
                body.push_str(&format!(
                    "<p class=\"notice\">Approving this proposal needs the {need} role in vault {}; you are {}.</p>",
                    esc(vault.name.as_str()),
                    role.map(|r| r.to_string()).unwrap_or_else(|| "not a member".into())
                ));
                return Ok(body);
            }
            let csrf = state.keyring.csrf_token(&user.token_id, &p.id);
            let hash = proposal::approval_hash(&content, vs);
            let mut inputs = String::new();
            // One required box per risk that needs an explicit acknowledgement; the server
            // refuses the approval without each of them.
            for (i, r) in risks.iter().enumerate() {
                if let (true, Some(risk_id)) = (r.needs_acknowledgement, &r.id) {
                    inputs.push_str(&format!(
                        "<p class=\"risk\"><input type=\"checkbox\" id=\"ack_{i}\" name=\"ack\" value=\"{}\" required> \
                         <label for=\"ack_{i}\" class=\"inline\">I checked this and accept it: {}</label></p>",
                        esc(risk_id),
                        esc(&r.text)
                    ));
                }
            }
            for slot in &content.credentials {
                if let CredentialSlot::Set { key, has_value, .. } = slot {
                    let id = format!("value_{}", key.as_str());
                    inputs.push_str(&format!(
                        "<label for=\"{id}\">Value for {}</label><input type=\"password\" id=\"{id}\" name=\"{id}\" autocomplete=\"off\"{}>\
                         <p class=\"hint\">{}</p>",
                        esc(key.as_str()),
                        if *has_value { "" } else { " required" },
                        if *has_value { "Optional: leave empty to keep the value the agent supplied." } else { "Required." }
                    ));
                }
            }
            body.push_str(&format!(
                "<h2>Decide</h2><form method=\"post\" action=\"/approve/{id}\" id=\"approve-form\">\
                 <input type=\"hidden\" name=\"action\" value=\"approve\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"hash\" value=\"{hash}\">{token_field}{inputs}\
                 <label for=\"confirm_password\">Your password</label>\
                 <input type=\"password\" id=\"confirm_password\" name=\"confirm_password\" autocomplete=\"current-password\" required>\
                 <p class=\"hint\">Approving changes which credentials go where; confirm it is you.</p>\
                 <div class=\"actions\"><button type=\"submit\" class=\"approve\" id=\"approve\">Approve</button></div></form>\
                 <form method=\"post\" action=\"/approve/{id}\" id=\"reject-form\">\
                 <input type=\"hidden\" name=\"action\" value=\"reject\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"hash\" value=\"{hash}\">{token_field}\
                 <label for=\"reason\">Reason for rejecting (shown to the agent)</label><textarea id=\"reason\" name=\"reason\" rows=\"2\"></textarea>\
                 <div class=\"actions\"><button type=\"submit\" class=\"reject\" id=\"reject\">Reject</button></div></form>",
                id = esc(&p.id),
                csrf = esc(&csrf),
                hash = esc(&hash),
            ));
        }
    }
    Ok(body)
}

async fn render_page(
    state: &AdminState,
    p: &ProposalRecord,
    vault: &VaultRecord,
    viewer: &Viewer,
    token: Option<&str>,
    flash: Option<(&str, &str)>,
    status: StatusCode,
) -> Response {
    let m = state.manage();
    let vs = match vault_state(&m, &vault.id).await {
        Ok(vs) => vs,
        Err(e) => return api_error_page(e.into()),
    };
    let creator = manage_proposals::describe_creator(&m, p).await;
    match render(state, p, vault, &vs, &creator, viewer, token, flash) {
        Ok(body) => html_response(status, &format!("Proposal #{}", p.seq), &body),
        Err(e) => api_error_page(e),
    }
}

/// Approving asks for the password again: the page's session cookie travels to every port of
/// the host, so holding it alone must not be enough to change what credentials go where.
async fn confirm(
    state: &AdminState,
    user_id: &str,
    password: Option<SecretString>,
) -> Result<(), ApiError> {
    let who = user_id.to_owned();
    if state.confirm_failures.exhausted(&who) {
        return Err(ApiError::TooManyRequests);
    }
    let Some(password) = password.filter(|p| !p.expose_secret().is_empty()) else {
        return Err(ApiError::bad_request(
            "password_required",
            "enter your password to approve",
        ));
    };
    let user = state
        .store
        .user_by_id(user_id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let phc = user.password_hash.clone();
    // Not counted against the instance-wide login limit: an agent failing logins on purpose
    // must not be able to block a logged-in human from approving.
    if state
        .passwords
        .verify_for_session(password, Some(phc))
        .await?
    {
        Ok(())
    } else {
        state.confirm_failures.record(who);
        Err(ApiError::InvalidCredentials)
    }
}

async fn approval_page(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    match load_visible(&state, &id, q.token.as_deref(), &headers).await {
        Ok((p, vault, viewer)) => {
            render_page(
                &state,
                &p,
                &vault,
                &viewer,
                q.token.as_deref(),
                None,
                StatusCode::OK,
            )
            .await
        }
        Err(resp) => resp,
    }
}

async fn approval_submit(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    axum::Form(fields): axum::Form<Vec<(String, String)>>,
) -> Response {
    // Refuse cross-site posts before looking at anything else.
    if !same_origin(&state, &headers) {
        return error_page(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    let mut form: BTreeMap<String, String> = BTreeMap::new();
    let mut values: BTreeMap<String, SecretString> = BTreeMap::new();
    let mut confirm_password: Option<SecretString> = None;
    let mut acknowledged = std::collections::BTreeSet::new();
    for (name, value) in fields {
        if name == "confirm_password" {
            confirm_password = Some(SecretString::from(value));
            continue;
        }
        if name == "ack" {
            acknowledged.insert(value);
            continue;
        }
        match name.strip_prefix("value_") {
            Some(key) => {
                values.insert(key.to_owned(), SecretString::from(value));
            }
            None => {
                form.insert(name, value);
            }
        }
    }
    let token = form.get("token").map(String::as_str);
    let (p, vault, viewer) = match load_visible(&state, &id, token, &headers).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let Viewer::User(user, _) = &viewer else {
        return error_page(StatusCode::UNAUTHORIZED, "log in to approve or reject");
    };
    let csrf = form.get("csrf").map(String::as_str).unwrap_or_default();
    if !state.keyring.verify_csrf(&user.token_id, &p.id, csrf) {
        return error_page(
            StatusCode::FORBIDDEN,
            "this form is not valid any more (or came from another site); reload the page",
        );
    }
    let user_id = match &user.principal {
        Principal::User { id, .. } => id.clone(),
        _ => return error_page(StatusCode::FORBIDDEN, "only human users can approve"),
    };
    let hash = form.get("hash").map(String::as_str).unwrap_or_default();
    let outcome = match form.get("action").map(String::as_str) {
        Some("approve") => match confirm(&state, &user_id, confirm_password).await {
            Ok(()) => approve(
                &state.manage(),
                user,
                &vault,
                &p,
                values,
                hash,
                &proposal::Acknowledgement::Ids(acknowledged),
            )
            .await
            .map_err(ApiError::from)
            .map(|()| "Approved: the changes are live."),
            Err(e) => Err(e),
        },
        Some("reject") => {
            let reason = form.get("reason").map(String::as_str).unwrap_or_default();
            reject(&state.manage(), user, &vault, &p, reason)
                .await
                .map_err(ApiError::from)
                .map(|()| "Rejected.")
        }
        _ => Err(ApiError::bad_request(
            "invalid_action",
            "choose approve or reject",
        )),
    };
    let (flash, status) = match &outcome {
        Ok(msg) => (("success", (*msg).to_owned()), StatusCode::OK),
        Err(e) => (("error", page_message(e)), status_of(e)),
    };
    let retry_after = match &outcome {
        Err(ApiError::Busy(secs)) => Some(*secs),
        _ => None,
    };
    let fresh = state
        .store
        .proposal(&p.id)
        .await
        .ok()
        .flatten()
        .unwrap_or(p);
    let viewer = match web_user(&state, &headers).await {
        Some(u) => {
            let role = u.role_in(&fresh.vault_id);
            Viewer::User(u, role)
        }
        None => Viewer::Anonymous,
    };
    let mut response = render_page(
        &state,
        &fresh,
        &vault,
        &viewer,
        token,
        Some((flash.0, &flash.1)),
        status,
    )
    .await;
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
