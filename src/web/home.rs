//! The dashboard (`/`): the pending proposals of every vault the logged-in human may approve in,
//! each linking to its approval page, and the logout form. Agent-written messages are escaped
//! and shortened; nothing here changes state.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::html::esc;
use super::{api_error_page, html_response, time, web_user};
use crate::admin::AdminState;
use crate::identity::Principal;
use crate::manage::proposals;
use crate::store::{ProposalRecord, VaultRecord};

/// Longest part of an agent's message the dashboard shows, in characters.
const MESSAGE_PREVIEW_CHARS: usize = 120;

/// `GET /`: the dashboard, or the login page for a visitor.
pub(super) async fn home(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let Some(user) = web_user(&state, &headers).await else {
        return Redirect::to("/login?next=/").into_response();
    };
    let pending = match proposals::pending_for(state.acting(&user)).await {
        Ok(pending) => pending,
        Err(e) => return api_error_page(e.into()),
    };
    let email = match &user.principal {
        Principal::User { email, .. } => email.to_string(),
        _ => String::new(),
    };
    let csrf = state.keyring.csrf_token(&user.token_id, "logout");
    html_response(
        StatusCode::OK,
        "Proposals",
        &dashboard(&email, &pending, &csrf),
    )
}

/// The dashboard's body: one row per pending proposal, or a line saying there are none.
fn dashboard(email: &str, pending: &[(VaultRecord, Vec<ProposalRecord>)], csrf: &str) -> String {
    let mut rows = String::new();
    for (vault, proposals) in pending {
        for p in proposals {
            rows.push_str(&format!(
                "<tr><td>{}</td><td><a href=\"/approve/{}\">#{}</a></td><td>{}</td><td>{}</td></tr>",
                esc(vault.name.as_str()),
                esc(&p.id),
                p.seq,
                esc(&p
                    .message
                    .chars()
                    .take(MESSAGE_PREVIEW_CHARS)
                    .collect::<String>()),
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
    format!(
        "<h1>Pending proposals</h1><p class=\"meta\">Logged in as {}</p>{list}\
         <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Log out</button></form>",
        esc(email),
        esc(csrf)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::tests::{proposal, vault};

    #[test]
    fn lists_pending_proposals_with_agent_text_escaped_and_shortened() {
        let mut p = proposal("<script>alert(1)</script>");
        p.message.push_str(&"x".repeat(500));
        let body = dashboard("ann@example.com", &[(vault(), vec![p])], "tok\"en");
        assert!(
            body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{body}"
        );
        assert!(!body.contains("<script>"), "{body}");
        assert!(!body.contains(&"x".repeat(120)), "the message is shortened");
        assert!(body.contains("href=\"/approve/p1\">#7</a>"), "{body}");
        assert!(body.contains("value=\"tok&quot;en\""), "{body}");
    }

    #[test]
    fn says_when_nothing_is_pending() {
        let body = dashboard("ann@example.com", &[(vault(), Vec::new())], "t");
        assert!(body.contains("No pending proposals"), "{body}");
        assert!(!body.contains("<table>"), "{body}");
    }
}
