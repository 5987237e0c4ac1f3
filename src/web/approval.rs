//! The proposal approval page (`/approve/{id}?token=...`): what an agent asks for, shown so a
//! human can judge it (agent text is escaped and never a link, hosts are shown in the A-label
//! form the proxy routes on, risks first), and the forms that decide it. The link token only
//! lets a visitor see the proposal; deciding needs a logged-in human with the right role, the
//! session's CSRF token, a same-origin POST and, to approve, the password again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::html::esc;
use super::session::login_form;
use super::{api_error_page, error_page, html_response, page_message, same_origin, time, web_user};
use crate::admin::{AdminState, ApiError};
use crate::credtype::CredentialType;
use crate::domain::{CredentialKey, VaultRole};
use crate::identity::{Authenticated, Principal};
use crate::keys::Keyring;
use crate::manage::proposals::{self, Approval, Decision, Review};
use crate::policy::confusable::{self, HostForms};
use crate::policy::service::{AuthSpec, ServiceSpec};
use crate::proposal::{
    self, Acknowledgement, ProposalContent, ServiceChange, SetSlot, Severity, VaultState,
};
use crate::store::{ProposalRecord, ProposalStatus, VaultRecord};

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

/// Who is looking at a proposal page, and what they may do.
enum Viewer {
    /// Not logged in (but holding a valid link).
    Anonymous,
    /// Logged in, with this role (or none) in the vault.
    User(Arc<Authenticated>, Option<VaultRole>),
}

/// What one rendering of the page shows.
#[derive(Clone, Copy)]
struct Page<'a> {
    /// The proposal, its vault now, and who raised it.
    review: &'a Review,
    /// Who is looking.
    viewer: &'a Viewer,
    /// The link token the visitor came with (carried in the forms).
    token: Option<&'a str>,
    /// A message about what just happened: (`success` or `error`, text).
    flash: Option<(&'a str, &'a str)>,
    /// The metadata the agent supplied, by key (pending proposals only).
    metadata: &'a BTreeMap<CredentialKey, BTreeMap<String, String>>,
}

/// Input name prefixes of a slot's value parts (`<part>_<KEY>`).
const PART_VALUE: &str = "value";
/// A certificate's PEM chain.
const PART_CERT: &str = "cert";
/// A certificate's or an OpenSSH key's private key.
const PART_KEY: &str = "privkey";
/// An OpenSSH key's passphrase.
const PART_PASSPHRASE: &str = "passphrase";
/// A password's username (metadata `username`; not a secret).
const PART_USERNAME: &str = "username";

/// Whether the viewer may see metadata values (members and above, like a credential's).
fn viewer_is_member(viewer: &Viewer) -> bool {
    matches!(viewer, Viewer::User(_, Some(role)) if *role >= VaultRole::Member)
}

/// Loads a proposal the visitor may see: with a valid link token, or as a member of its vault.
async fn load_visible(
    state: &AdminState,
    id: &str,
    token: Option<&str>,
    headers: &HeaderMap,
) -> Result<(ProposalRecord, VaultRecord, Viewer), Response> {
    let user = web_user(state, headers).await;
    let (vault, p) = proposals::visible(&state.manage(), id, token, user.as_deref())
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
        AuthSpec::Basic { username, password } => {
            let user = match (username, password) {
                (Some(u), _) => format!("user <code>{}</code>", esc(u.as_str())),
                (None, Some(p)) => format!("user from <code>{}</code>'s username", esc(p.as_str())),
                (None, None) => "no user".into(),
            };
            let password = password
                .as_ref()
                .map(|p| format!(", password <code>{}</code>", esc(p.as_str())))
                .unwrap_or_default();
            format!("basic auth: {user}{password}")
        }
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
        AuthSpec::Mtls { certificate } => format!(
            "TLS client certificate from <code>{}</code>",
            esc(certificate.as_str())
        ),
    }
}

/// The client certificate a service presents beside its other auth, if any.
fn client_certificate_summary(spec: &ServiceSpec) -> String {
    spec.client_certificate
        .as_ref()
        .map(|k| {
            format!(
                "<br>TLS client certificate from <code>{}</code>",
                esc(k.as_str())
            )
        })
        .unwrap_or_default()
}

/// The service changes. While pending, each says whether it adds a service or replaces one of
/// the vault's; once decided the vault has moved on, so each says only what it asked for.
fn service_rows(content: &ProposalContent, state: &VaultState, pending: bool) -> String {
    let mut rows = String::new();
    for change in &content.services {
        match change {
            ServiceChange::Set(spec) => {
                let existing = state.services.iter().any(|s| s.name == spec.name);
                let verb = match (pending, existing) {
                    (false, _) => "set",
                    (true, true) => "replace",
                    (true, false) => "add",
                };
                rows.push_str(&format!(
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    verb,
                    esc(&spec.name),
                    host_cell(&spec.host),
                    if spec.methods.is_empty() {
                        "any".to_owned()
                    } else {
                        esc(&spec.methods.join(", "))
                    },
                    auth_summary(&spec.auth)
                        + &client_certificate_summary(spec)
                        + &substitutions(spec)
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

/// The agent's metadata for one slot, escaped like all agent text and never a link. Values
/// are shown to vault members only (`None`: the viewer sees the names alone).
fn metadata_cell(entries: Option<&BTreeMap<String, String>>, shown: bool) -> String {
    let Some(entries) = entries.filter(|e| !e.is_empty()) else {
        return String::new();
    };
    let items: Vec<String> = entries
        .iter()
        .map(|(k, v)| {
            if shown {
                format!("<li><code>{}</code>: <code>{}</code></li>", esc(k), esc(v))
            } else {
                format!("<li><code>{}</code></li>", esc(k))
            }
        })
        .collect();
    format!(
        "<div class=\"agent-metadata\"><span class=\"agent-warning\">Metadata provided by the agent{}:</span><ul>{}</ul></div>",
        if shown {
            ""
        } else {
            " (values shown to vault members)"
        },
        items.concat()
    )
}

/// The credential slots; the last column says where each value comes from while pending, and
/// whether it was stored once decided.
fn credential_rows(
    content: &ProposalContent,
    status: ProposalStatus,
    metadata: &BTreeMap<CredentialKey, BTreeMap<String, String>>,
    show_metadata: bool,
) -> String {
    let mut rows = String::new();
    for slot in &content.credentials {
        match slot.writes() {
            Some(SetSlot {
                key,
                description,
                obtain,
                obtain_instructions,
                has_value,
                ty,
                has_metadata,
            }) => {
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
                let meta = if *has_metadata {
                    metadata_cell(metadata.get(key), show_metadata)
                } else {
                    String::new()
                };
                rows.push_str(&format!(
                    "<tr><td>{}</td><td><code>{}</code>{}</td><td>{}{meta}</td><td>{link}{how}</td><td>{}</td></tr>",
                    slot.action(),
                    esc(key.as_str()),
                    ty.map(|t| format!(" <span class=\"hint\">{t}</span>"))
                        .unwrap_or_default(),
                    esc(description),
                    match (status, *has_value) {
                        (ProposalStatus::Pending, true) => "the agent supplied a value",
                        (ProposalStatus::Pending, false) => "you enter it below",
                        (ProposalStatus::Applied, _) => "stored",
                        (ProposalStatus::Rejected | ProposalStatus::Expired, _) => "not stored",
                    }
                ));
            }
            None => rows.push_str(&format!(
                "<tr><td>delete</td><td><code>{}</code></td><td></td><td></td><td></td></tr>",
                esc(slot.key().as_str())
            )),
        }
    }
    rows
}

/// The inputs for one slot's value, by its type: a text area for PEM, SSH keys, oauth
/// documents and generic values; username and password for `password`; one password input
/// for the rest. Input names are `<part>_<KEY>`, which [`Submitted::parse`] sorts back.
fn value_inputs(slot: &SetSlot, agent_metadata: Option<&BTreeMap<String, String>>) -> String {
    let key = esc(slot.key.as_str());
    let required = if slot.has_value { "" } else { " required" };
    let hint = if slot.has_value {
        "Optional: leave empty to keep the value the agent supplied."
    } else {
        "Required."
    };
    let secret_area = |part: &str, label: &str, placeholder: &str| {
        format!(
            "<label for=\"{part}_{key}\">{label} for {key}</label>\
             <textarea id=\"{part}_{key}\" name=\"{part}_{key}\" rows=\"6\" autocomplete=\"off\" spellcheck=\"false\" placeholder=\"{placeholder}\"{required}></textarea>"
        )
    };
    let password = |part: &str, label: &str, required: &str| {
        format!(
            "<label for=\"{part}_{key}\">{label} for {key}</label>\
             <input type=\"password\" id=\"{part}_{key}\" name=\"{part}_{key}\" autocomplete=\"off\"{required}>"
        )
    };
    let fields = match slot.ty.unwrap_or(CredentialType::ApiKey) {
        CredentialType::Certificate => {
            secret_area(
                PART_CERT,
                "Certificate chain (PEM, leaf first)",
                "-----BEGIN CERTIFICATE-----",
            ) + &secret_area(PART_KEY, "Private key (PEM)", "-----BEGIN PRIVATE KEY-----")
        }
        CredentialType::SshKey => {
            secret_area(
                PART_KEY,
                "OpenSSH private key",
                "-----BEGIN OPENSSH PRIVATE KEY-----",
            ) + &password(PART_PASSPHRASE, "Passphrase (if the key is encrypted)", "")
        }
        CredentialType::Oauth => secret_area(
            PART_VALUE,
            "OAuth document (JSON or YAML: access_token, refresh_token, token_url, ...)",
            "access_token: ...",
        ),
        CredentialType::Generic => secret_area(PART_VALUE, "Value", ""),
        CredentialType::Password => {
            // The username is metadata, not a secret: prefilled with the agent's, if any.
            let user = agent_metadata
                .and_then(|m| m.get("username"))
                .map(|u| esc(u))
                .unwrap_or_default();
            format!(
                "<label for=\"{PART_USERNAME}_{key}\">Username for {key}</label>\
                 <input type=\"text\" id=\"{PART_USERNAME}_{key}\" name=\"{PART_USERNAME}_{key}\" autocomplete=\"off\" value=\"{user}\">"
            ) + &password(PART_VALUE, "Password", required)
        }
        _ => password(PART_VALUE, "Value", required),
    };
    format!("{fields}<p class=\"hint\">{hint}</p>")
}

/// What became of a decided proposal: approved by whom and when, rejected (with the reason), or
/// expired.
fn outcome(p: &ProposalRecord, reviewer: Option<&str>) -> String {
    let who = esc(reviewer.unwrap_or("a user who has since been deleted"));
    let when = time(match p.status {
        ProposalStatus::Expired => p.expires_at,
        _ => p.reviewed_at.unwrap_or(p.expires_at),
    });
    let (class, text) = match p.status {
        ProposalStatus::Applied => (
            "success",
            format!("Approved by {who} on {when}; the changes are live."),
        ),
        ProposalStatus::Rejected => {
            let reason = match p.review_note.as_deref().filter(|r| !r.is_empty()) {
                Some(r) => format!(" Reason: {}", esc(r)),
                None => " No reason was given.".to_owned(),
            };
            ("error", format!("Rejected by {who} on {when}.{reason}"))
        }
        ProposalStatus::Expired => (
            "notice",
            format!("Expired on {when} without a decision; nothing was changed."),
        ),
        ProposalStatus::Pending => return String::new(),
    };
    format!("<p class=\"{class}\" id=\"outcome\">{text}</p>")
}

/// The page's body: the proposal as the approver reviews it, then what this viewer may do.
fn render(keyring: &Keyring, page: &Page<'_>) -> String {
    let Page {
        review,
        viewer,
        token,
        flash,
        metadata,
    } = *page;
    let (p, vault, content) = (
        &review.viewed.record,
        &review.viewed.vault,
        &review.viewed.content,
    );
    let (vs, creator) = (&review.state, review.creator.as_str());
    let mut body = String::new();
    // Only a pending proposal can still expire; a decided one shows its outcome below instead.
    let expiry = match p.status {
        ProposalStatus::Pending => format!(" · expires {}", time(p.expires_at)),
        _ => String::new(),
    };
    body.push_str(&format!(
        "<h1>Proposal #{} in vault <code>{}</code> <span class=\"status {}\" id=\"status\">{}</span></h1>\
         <p class=\"meta\">Raised by {} on {}{expiry}</p>",
        p.seq,
        esc(vault.name.as_str()),
        p.status.as_str(),
        p.status.as_str(),
        esc(creator),
        time(p.created_at),
    ));
    if let Some((kind, text)) = flash {
        body.push_str(&format!(
            "<p class=\"{kind}\" id=\"flash\">{}</p>",
            esc(text)
        ));
    }
    let pending = p.status == ProposalStatus::Pending;
    if !pending {
        body.push_str(&outcome(p, review.reviewer.as_deref()));
    }
    if !content.message.is_empty() {
        body.push_str(&format!(
            "<h2>Message from the agent</h2><div class=\"message\">{}</div>",
            esc(&content.message)
        ));
    }
    // Risks are computed against the vault as it is now, and the form's hash covers both. Once
    // decided there is nothing left to check, and the vault has moved on.
    let risks = if pending {
        proposal::risks(content, vs)
    } else {
        Vec::new()
    };
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
            service_rows(content, vs, pending)
        ));
    }
    if !content.credentials.is_empty() {
        body.push_str(&format!(
            "<h2>Credentials</h2><table><tr><th>Change</th><th>Key</th><th>Description</th><th>Where to get it</th><th>Value</th></tr>{}</table>",
            credential_rows(content, p.status, metadata, viewer_is_member(viewer))
        ));
    }
    if !pending {
        return body;
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
            let need = if proposal::needs_admin(content) {
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
                return body;
            }
            let csrf = keyring.csrf_token(&user.token_id, &p.id);
            let hash = proposal::approval_hash(content, vs);
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
            for slot in content.credentials.iter().filter_map(|s| s.writes()) {
                inputs.push_str(&value_inputs(slot, metadata.get(&slot.key)));
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
    body
}

/// Renders the approval page for a proposal as it stands now.
async fn render_page(
    state: &AdminState,
    p: ProposalRecord,
    vault: VaultRecord,
    viewer: &Viewer,
    token: Option<&str>,
    flash: Option<(&str, &str)>,
    status: StatusCode,
) -> Response {
    let metadata = match proposals::supplied_metadata(&state.manage(), &p).await {
        Ok(m) => m,
        Err(e) => return api_error_page(e.into()),
    };
    let review = match proposals::review_of(&state.manage(), vault, p).await {
        Ok(review) => review,
        Err(e) => return api_error_page(e.into()),
    };
    let page = Page {
        review: &review,
        viewer,
        token,
        flash,
        metadata: &metadata,
    };
    html_response(
        status,
        &format!("Proposal #{}", review.viewed.record.seq),
        &render(&state.keyring, &page),
    )
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

/// `GET /approve/{id}[?token=...]`.
pub(super) async fn approval_page(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    match load_visible(&state, &id, q.token.as_deref(), &headers).await {
        Ok((p, vault, viewer)) => {
            render_page(
                &state,
                p,
                vault,
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

/// A submitted decision form, sorted: secrets apart from the plain fields.
#[derive(Debug, Default)]
struct Submitted {
    /// `action`, `csrf`, `hash`, `token`, `reason`.
    fields: BTreeMap<String, String>,
    /// The value parts (`value_KEY`, `cert_KEY`, `privkey_KEY`, `passphrase_KEY`), by key.
    parts: BTreeMap<String, BTreeMap<&'static str, SecretString>>,
    /// `username_KEY` inputs: metadata, not secrets, but never plain fields either.
    usernames: BTreeMap<String, String>,
    /// The approver's password, asked again.
    confirm_password: Option<SecretString>,
    /// The ids of the risks ticked.
    acknowledged: BTreeSet<String>,
}

impl Submitted {
    fn parse(pairs: Vec<(String, String)>) -> Self {
        let mut out = Self::default();
        'pairs: for (name, value) in pairs {
            if name == "confirm_password" {
                out.confirm_password = Some(SecretString::from(value));
                continue;
            }
            if name == "ack" {
                out.acknowledged.insert(value);
                continue;
            }
            if let Some(key) = name.strip_prefix("username_") {
                out.usernames.insert(key.to_owned(), value);
                continue;
            }
            for part in [PART_VALUE, PART_CERT, PART_KEY, PART_PASSPHRASE] {
                if let Some(key) = name
                    .strip_prefix(part)
                    .and_then(|rest| rest.strip_prefix('_'))
                {
                    out.parts
                        .entry(key.to_owned())
                        .or_default()
                        .insert(part, SecretString::from(value));
                    continue 'pairs;
                }
            }
            out.fields.insert(name, value);
        }
        out
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// Each slot's value in its type's canonical input form (see `credtype`): the text for
    /// single-part types, a JSON object of the parts for `certificate` and `ssh_key`, the
    /// JSON of a YAML document for `oauth`. All parts left empty is an empty value, which
    /// keeps the one the agent supplied. Usernames become metadata `username`.
    fn assemble(&mut self, content: &ProposalContent) -> Result<Assembled, ApiError> {
        let types: BTreeMap<&str, CredentialType> = content
            .credentials
            .iter()
            .filter_map(|s| s.writes())
            .map(|s| (s.key.as_str(), s.ty.unwrap_or(CredentialType::ApiKey)))
            .collect();
        let mut values = BTreeMap::new();
        for (key, mut parts) in std::mem::take(&mut self.parts) {
            let mut take =
                |part: &str| parts.remove(part).filter(|v| !v.expose_secret().is_empty());
            let ty = types.get(key.as_str()).copied();
            let value = match ty {
                Some(CredentialType::Certificate) => {
                    let (chain, private) = (take(PART_CERT), take(PART_KEY));
                    object_of(&[("certificate", chain), ("private_key", private)])
                }
                Some(CredentialType::SshKey) => match take(PART_KEY) {
                    Some(private) => object_of(&[
                        ("private_key", Some(private)),
                        ("passphrase", take(PART_PASSPHRASE)),
                    ]),
                    None => None,
                },
                Some(CredentialType::Oauth) => match take(PART_VALUE) {
                    Some(doc) => Some(SecretString::from(
                        crate::credtype::oauth_document_to_json(doc.expose_secret())
                            .map_err(|e| {
                                ApiError::bad_request(
                                    "invalid_credential",
                                    format!("{key}: {e}; nothing was stored"),
                                )
                            })?
                            .to_string(),
                    )),
                    None => None,
                },
                _ => take(PART_VALUE),
            };
            values.insert(
                key,
                value.unwrap_or_else(|| SecretString::from(String::new())),
            );
        }
        let metadata = std::mem::take(&mut self.usernames)
            .into_iter()
            .filter(|(_, user)| !user.is_empty())
            .map(|(key, user)| (key, BTreeMap::from([("username".to_owned(), user)])))
            .collect();
        Ok((values, metadata))
    }
}

/// What a form yields for [`Approval`]: values by key, and metadata entries by key.
type Assembled = (
    BTreeMap<String, SecretString>,
    BTreeMap<String, BTreeMap<String, String>>,
);

/// A JSON object of the parts given, or `None` when none was.
fn object_of(parts: &[(&str, Option<SecretString>)]) -> Option<SecretString> {
    let map: serde_json::Map<String, serde_json::Value> = parts
        .iter()
        .filter_map(|(name, v)| {
            v.as_ref().map(|v| {
                (
                    (*name).to_owned(),
                    serde_json::Value::String(v.expose_secret().to_owned()),
                )
            })
        })
        .collect();
    (!map.is_empty()).then(|| SecretString::from(serde_json::Value::Object(map).to_string()))
}

/// `POST /approve/{id}`: approve (with the password again) or reject, then the page anew.
pub(super) async fn approval_submit(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Response {
    // Refuse cross-site posts before looking at anything else.
    if !same_origin(&state.public_url, &headers) {
        return error_page(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    let form = Submitted::parse(pairs);
    let token = form.field("token").map(str::to_owned);
    let (p, vault, viewer) = match load_visible(&state, &id, token.as_deref(), &headers).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let Viewer::User(user, _) = &viewer else {
        return error_page(StatusCode::UNAUTHORIZED, "log in to approve or reject");
    };
    let csrf = form.field("csrf").unwrap_or_default();
    if !state.keyring.verify_csrf(&user.token_id, &p.id, csrf) {
        return error_page(
            StatusCode::FORBIDDEN,
            "this form is not valid any more (or came from another site); reload the page",
        );
    }
    let outcome = decide_from_form(&state, user, &vault, &p, form).await;
    let (flash, status) = match &outcome {
        Ok(msg) => (("success", (*msg).to_owned()), StatusCode::OK),
        Err(e) => (("error", page_message(e)), e.status()),
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
    let flash = Some((flash.0, flash.1.as_str()));
    let mut response = render_page(
        &state,
        fresh,
        vault,
        &viewer,
        token.as_deref(),
        flash,
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

/// Carries out what the form asks; the text says what happened, for the page's flash.
async fn decide_from_form(
    state: &AdminState,
    user: &Authenticated,
    vault: &VaultRecord,
    p: &ProposalRecord,
    mut form: Submitted,
) -> Result<&'static str, ApiError> {
    let (decision, done) = match form.field("action") {
        Some("approve") => {
            // `web_user` admits humans only, and deciding checks it again.
            let user_id = match &user.principal {
                Principal::User { id, .. } => id.as_str(),
                _ => "",
            };
            confirm(state, user_id, form.confirm_password.take()).await?;
            let content = proposals::content_of(p)?;
            let (values, metadata) = form.assemble(&content)?;
            let approval = Approval {
                shown_hash: Some(form.field("hash").unwrap_or_default().to_owned()),
                values,
                metadata,
                acknowledged: Acknowledgement::Ids(form.acknowledged),
            };
            (
                Decision::Approve(approval),
                "Approved: the changes are live.",
            )
        }
        Some("reject") => {
            let reason = form.field("reason").unwrap_or_default().to_owned();
            (Decision::Reject { reason }, "Rejected.")
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_action",
                "choose approve or reject",
            ));
        }
    };
    proposals::decide(state.acting(user), vault, p, decision).await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{DataKey, TokenHash};
    use crate::domain::{Email, InstanceRole};
    use crate::manage::proposals::Viewed;
    use crate::web::tests::{proposal, vault};

    fn keyring() -> Keyring {
        Keyring::from_dek(DataKey::from_bytes([7; 32]))
    }

    /// A review of a proposal asking for one new service and one credential, with agent text
    /// that tries to be markup and a link.
    fn review(status: ProposalStatus) -> Review {
        let mut record = proposal("<script>alert('msg')</script>");
        record.status = status;
        let content: ProposalContent = serde_json::from_value(serde_json::json!({
            "message": "<script>alert('msg')</script>",
            "services": [{ "action": "set", "name": "gh", "host": "gh.example.test",
                           "auth": { "type": "bearer", "token": "GH_TOKEN" } }],
            "credentials": [{ "action": "set", "key": "GH_TOKEN",
                              "description": "<img src=x onerror=alert(1)>",
                              "obtain": "https://evil.example/\"><a href=x>",
                              "obtain_instructions": "<b>click</b>", "has_value": false }]
        }))
        .unwrap();
        Review {
            viewed: Viewed {
                record,
                vault: vault(),
                content,
            },
            state: VaultState::default(),
            creator: "agent <bot>".into(),
            reviewer: (status != ProposalStatus::Pending).then(|| "ann@example.com".into()),
        }
    }

    fn user(role: Option<VaultRole>) -> Viewer {
        let who = Authenticated {
            token_id: "t1".into(),
            token_hash: TokenHash([1; 32]),
            principal: Principal::User {
                id: "u1".into(),
                email: Email::parse("ann@example.com").unwrap(),
                role: InstanceRole::Member,
            },
            grants: Default::default(),
            expires_at: None,
        };
        Viewer::User(Arc::new(who), role)
    }

    fn page(review: &Review, viewer: &Viewer) -> String {
        page_with(review, viewer, &BTreeMap::new())
    }

    fn page_with(
        review: &Review,
        viewer: &Viewer,
        metadata: &BTreeMap<CredentialKey, BTreeMap<String, String>>,
    ) -> String {
        render(
            &keyring(),
            &Page {
                review,
                viewer,
                token: Some("av_appr_\"x"),
                flash: None,
                metadata,
            },
        )
    }

    #[test]
    fn agent_text_is_escaped_and_links_are_never_clickable() {
        let review = review(ProposalStatus::Pending);
        let body = page(&review, &Viewer::Anonymous);
        for raw in ["<script>", "<img", "<b>click", "<a href=x>", "agent <bot>"] {
            assert!(!body.contains(raw), "{raw} reached the page: {body}");
        }
        assert!(body.contains("&lt;script&gt;alert(&#39;msg&#39;)&lt;/script&gt;"));
        assert!(body.contains("not clickable"), "{body}");
        assert!(!body.contains("<a "), "no link at all: {body}");
        assert!(body.contains("gh.example.test"), "{body}");
    }

    #[test]
    fn a_visitor_gets_a_login_form_that_returns_to_the_link() {
        let review = review(ProposalStatus::Pending);
        let body = page(&review, &Viewer::Anonymous);
        assert!(
            body.contains(" · expires "),
            "a pending one says when: {body}"
        );
        assert!(body.contains("action=\"/login\""), "{body}");
        assert!(body.contains("/approve/p1?token=av_appr_&quot;x"), "{body}");
        assert!(!body.contains("approve-form"), "{body}");
    }

    #[test]
    fn only_the_needed_role_gets_the_decision_forms() {
        let review = review(ProposalStatus::Pending);
        // A new service needs an admin.
        let member = page(&review, &user(Some(VaultRole::Member)));
        assert!(member.contains("needs the admin role"), "{member}");
        assert!(!member.contains("approve-form"), "{member}");
        let outsider = page(&review, &user(None));
        assert!(outsider.contains("not a member"), "{outsider}");
        let admin = page(&review, &user(Some(VaultRole::Admin)));
        assert!(
            admin.contains("id=\"approve-form\"") && admin.contains("id=\"reject-form\""),
            "{admin}"
        );
        let csrf = keyring().csrf_token("t1", "p1");
        assert!(
            admin.contains(&csrf),
            "the CSRF token is bound to session and proposal"
        );
        assert!(admin.contains("name=\"value_GH_TOKEN\""), "{admin}");
        assert!(
            admin.contains("name=\"token\" value=\"av_appr_&quot;x\""),
            "{admin}"
        );
    }

    #[test]
    fn a_submitted_form_keeps_secrets_apart() {
        let form = Submitted::parse(vec![
            ("action".into(), "approve".into()),
            ("value_GH_TOKEN".into(), "ghp_x".into()),
            ("confirm_password".into(), "pw".into()),
            ("ack".into(), "lookalike-host:gh".into()),
            ("ack".into(), "other".into()),
            ("csrf".into(), "c".into()),
        ]);
        assert_eq!(form.field("action"), Some("approve"));
        assert_eq!(form.field("csrf"), Some("c"));
        assert_eq!(
            form.fields.len(),
            2,
            "values and the password are not plain fields"
        );
        assert_eq!(form.parts["GH_TOKEN"]["value"].expose_secret(), "ghp_x");
        assert_eq!(
            form.confirm_password.as_ref().map(|p| p.expose_secret()),
            Some("pw")
        );
        assert_eq!(form.acknowledged.len(), 2);
    }

    /// A credential-only proposal with one slot of each kind of input.
    fn typed_review() -> Review {
        let mut review = review(ProposalStatus::Pending);
        let slot = |action: &str, key: &str, ty: &str, meta: bool| {
            serde_json::json!({ "action": action, "key": key, "description": "", "obtain": null,
                                "obtain_instructions": null, "has_value": false, "type": ty,
                                "has_metadata": meta })
        };
        review.viewed.content = serde_json::from_value(serde_json::json!({
            "message": "", "services": [],
            "credentials": [
                slot("set", "CERT", "certificate", false),
                slot("set", "DEPLOY", "ssh_key", false),
                slot("set", "OAUTH", "oauth", false),
                slot("set", "BLOB", "generic", false),
                slot("set", "DB", "password", true),
                slot("rotate", "API", "api_key", false),
            ]
        }))
        .unwrap();
        review
    }

    fn metadata() -> BTreeMap<CredentialKey, BTreeMap<String, String>> {
        BTreeMap::from([(
            CredentialKey::parse("DB").unwrap(),
            BTreeMap::from([
                ("username".to_owned(), "svc\"><script>x</script>".to_owned()),
                ("site".to_owned(), "https://evil.example/".to_owned()),
            ]),
        )])
    }

    #[test]
    fn each_type_gets_its_own_inputs() {
        let review = typed_review();
        let body = page_with(&review, &user(Some(VaultRole::Member)), &metadata());
        for needle in [
            "<textarea id=\"cert_CERT\" name=\"cert_CERT\"",
            "<textarea id=\"privkey_CERT\" name=\"privkey_CERT\"",
            "<textarea id=\"privkey_DEPLOY\" name=\"privkey_DEPLOY\"",
            "<input type=\"password\" id=\"passphrase_DEPLOY\" name=\"passphrase_DEPLOY\" autocomplete=\"off\">",
            "<textarea id=\"value_OAUTH\" name=\"value_OAUTH\"",
            "<textarea id=\"value_BLOB\" name=\"value_BLOB\"",
            "<input type=\"text\" id=\"username_DB\" name=\"username_DB\"",
            "<input type=\"password\" id=\"value_DB\" name=\"value_DB\" autocomplete=\"off\" required>",
            "<input type=\"password\" id=\"value_API\" name=\"value_API\" autocomplete=\"off\" required>",
            "<td>rotate</td><td><code>API</code> <span class=\"hint\">api_key</span>",
        ] {
            assert!(body.contains(needle), "{needle}: {body}");
        }
        assert!(!body.contains("name=\"value_CERT\""), "{body}");
        // Exactly the inputs above: no text area for single-line types.
        assert_eq!(body.matches("<textarea id=\"").count(), 6, "{body}");
    }

    #[test]
    fn agent_metadata_is_escaped_never_a_link_and_shown_to_members_only() {
        let review = typed_review();
        let member = page_with(&review, &user(Some(VaultRole::Member)), &metadata());
        assert!(!member.contains("<script>x"), "{member}");
        assert!(!member.contains("<a "), "{member}");
        assert!(
            member.contains("<code>site</code>: <code>https://evil.example/</code>"),
            "{member}"
        );
        // The username is prefilled, escaped inside the attribute.
        assert!(
            member.contains("value=\"svc&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""),
            "{member}"
        );
        let visitor = page_with(&review, &Viewer::Anonymous, &metadata());
        assert!(visitor.contains("<code>username</code>"), "{visitor}");
        assert!(!visitor.contains("svc"), "{visitor}");
        assert!(!visitor.contains("evil.example"), "{visitor}");
        assert!(
            visitor.contains("values shown to vault members"),
            "{visitor}"
        );
    }

    fn assembled(
        pairs: &[(&str, &str)],
    ) -> (
        BTreeMap<String, String>,
        BTreeMap<String, BTreeMap<String, String>>,
    ) {
        let mut form = Submitted::parse(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        assert!(form.fields.is_empty(), "parts are never plain fields");
        let (values, metadata) = form.assemble(&typed_review().viewed.content).unwrap();
        let values = values
            .into_iter()
            .map(|(k, v)| (k, v.expose_secret().to_owned()))
            .collect();
        (values, metadata)
    }

    #[test]
    fn a_form_becomes_canonical_values_and_metadata() {
        let (values, metadata) = assembled(&[
            ("cert_CERT", "-----BEGIN CERTIFICATE-----\nA\n"),
            ("privkey_CERT", "-----BEGIN PRIVATE KEY-----\nB\n"),
            ("privkey_DEPLOY", "-----BEGIN OPENSSH PRIVATE KEY-----\nC\n"),
            ("passphrase_DEPLOY", "pass phrase"),
            ("value_OAUTH", "access_token: at-1\nclient_id: 12345\n"),
            ("value_BLOB", "line 1\nline 2"),
            ("username_DB", "svc-billing"),
            ("value_DB", "hunter2"),
            ("value_API", "sk_new"),
        ]);
        let json = |k: &str| serde_json::from_str::<serde_json::Value>(&values[k]).unwrap();
        assert_eq!(
            json("CERT"),
            serde_json::json!({"certificate": "-----BEGIN CERTIFICATE-----\nA\n", "private_key": "-----BEGIN PRIVATE KEY-----\nB\n"})
        );
        assert_eq!(
            json("DEPLOY"),
            serde_json::json!({"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nC\n", "passphrase": "pass phrase"})
        );
        assert_eq!(
            json("OAUTH"),
            serde_json::json!({"access_token": "at-1", "client_id": "12345"})
        );
        assert_eq!(values["BLOB"], "line 1\nline 2");
        assert_eq!(values["DB"], "hunter2");
        assert_eq!(values["API"], "sk_new");
        assert_eq!(metadata["DB"]["username"], "svc-billing");

        // Parts left empty keep the agent's value: an empty value, no username.
        let (values, metadata) = assembled(&[
            ("cert_CERT", ""),
            ("privkey_CERT", ""),
            ("privkey_DEPLOY", ""),
            ("passphrase_DEPLOY", "orphan"),
            ("username_DB", ""),
            ("value_DB", ""),
        ]);
        assert!(values.values().all(String::is_empty), "{:?}", values.keys());
        assert!(metadata.is_empty());

        // A broken oauth document is refused naming the position, never quoting it.
        let mut form = Submitted::parse(vec![(
            "value_OAUTH".into(),
            "access_token: [s3cret\n".into(),
        )]);
        let err = form.assemble(&typed_review().viewed.content).unwrap_err();
        let text = page_message(&err);
        assert!(
            text.contains(
                "OAUTH: value: not a JSON or YAML document (line 2, column 1); nothing was stored"
            ),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn a_decided_proposal_shows_its_outcome_and_no_forms() {
        for status in [
            ProposalStatus::Applied,
            ProposalStatus::Rejected,
            ProposalStatus::Expired,
        ] {
            let mut review = review(status);
            review.viewed.record.reviewed_at = Some(1_750_000_000_000);
            review.viewed.record.review_note = Some("<i>use ops</i>".into());
            // The vault now has the service the proposal added.
            review.state.services = match &review.viewed.content.services[0] {
                ServiceChange::Set(spec) => vec![spec.clone()],
                ServiceChange::Delete { .. } => unreachable!(),
            };
            let body = page(&review, &user(Some(VaultRole::Admin)));
            assert!(!body.contains("<form"), "{status:?}: {body}");
            assert!(
                !body.contains("expires "),
                "a decided proposal no longer expires: {body}"
            );
            for stale in ["you enter it below", "replace", "add", "Check these"] {
                assert!(
                    !body.contains(&format!(">{stale}")),
                    "{status:?} says {stale:?}: {body}"
                );
            }
            let outcome = body
                .split("id=\"outcome\">")
                .nth(1)
                .and_then(|rest| rest.split("</p>").next())
                .unwrap_or_else(|| panic!("{status:?} has no outcome: {body}"));
            match status {
                ProposalStatus::Applied => {
                    assert_eq!(
                        outcome,
                        "Approved by ann@example.com on 2025-06-15T15:06:40Z; the changes are live."
                    );
                    assert!(body.contains("<td>stored</td>"), "{body}");
                }
                ProposalStatus::Rejected => {
                    assert_eq!(
                        outcome,
                        "Rejected by ann@example.com on 2025-06-15T15:06:40Z. Reason: &lt;i&gt;use ops&lt;/i&gt;"
                    );
                    assert!(body.contains("<td>not stored</td>"), "{body}");
                }
                _ => {
                    assert_eq!(
                        outcome,
                        "Expired on 2027-01-15T08:00:00Z without a decision; nothing was changed."
                    );
                    assert!(body.contains("<td>not stored</td>"), "{body}");
                }
            }
        }
    }
}
