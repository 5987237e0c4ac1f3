//! Telling humans about new proposals: an optional webhook (JSON POST, retried with backoff)
//! and optional email to the vault's approvers. Both run in the background; a failure is
//! logged and never affects the proposal.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Serialize;

use crate::config::{SmtpConfig, SmtpSecurity};
use crate::domain::Email;

/// Attempts per webhook delivery.
const WEBHOOK_ATTEMPTS: u32 = 4;

/// What a notification says about a new proposal.
#[derive(Clone, Debug, Serialize)]
pub struct ProposalEvent {
    /// Always `proposal.created`.
    pub event: &'static str,
    /// The vault.
    pub vault: String,
    /// The per-vault number.
    pub number: i64,
    /// The proposal id.
    pub id: String,
    /// The approval link (view-only; approving still needs a logged-in human).
    pub approval_url: String,
    /// The agent's message, shortened.
    pub message: String,
    /// Who raised it, in words: the agent's name, the user's email, or whose run (never an id).
    pub created_by: String,
}

/// Sends notifications in the background.
#[derive(Clone)]
pub struct Notifier {
    webhook: Option<String>,
    http: reqwest::Client,
    smtp: Option<Arc<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>>,
    retry_base: Duration,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("webhook", &self.webhook.is_some())
            .field("smtp", &self.smtp.is_some())
            .finish()
    }
}

/// Why notifications could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The SMTP relay settings are unusable.
    #[error("smtp: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// `smtp.password_file` could not be read.
    #[error("smtp: cannot read {}: {source}", path.display())]
    PasswordFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `smtp.from` is not a mailbox.
    #[error("smtp: {0}")]
    From(#[from] lettre::address::AddressError),
    /// The HTTP client could not be built.
    #[error("webhook client: {0}")]
    Http(#[from] reqwest::Error),
}

impl Notifier {
    /// Builds the notifier from configuration.
    pub fn new(webhook: Option<String>, smtp: &SmtpConfig) -> Result<Self, NotifyError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let smtp = match &smtp.host {
            None => None,
            Some(host) => {
                let builder = match smtp.security {
                    SmtpSecurity::Starttls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                    }
                    SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
                    SmtpSecurity::None => Ok(
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
                    ),
                }?;
                let mut builder = builder
                    .port(smtp.port)
                    .timeout(Some(Duration::from_secs(15)));
                if let Some(user) = &smtp.username {
                    let password = match (&smtp.password, &smtp.password_file) {
                        (Some(p), _) => p.0.clone(),
                        (None, Some(file)) => std::fs::read_to_string(file)
                            .map_err(|source| NotifyError::PasswordFile {
                                path: file.clone(),
                                source,
                            })?
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                        (None, None) => String::new(),
                    };
                    builder = builder.credentials(Credentials::new(user.clone(), password));
                }
                let from: Mailbox = smtp.from.parse()?;
                Some(Arc::new((builder.build(), from)))
            }
        };
        Ok(Self {
            webhook,
            http,
            smtp,
            retry_base: Duration::from_millis(500),
        })
    }

    /// Announces a new proposal to the webhook and to `approvers` by email, in the background.
    pub fn proposal_created(&self, event: ProposalEvent, approvers: Vec<Email>) {
        if let Some(url) = self.webhook.clone() {
            let (http, event, base) = (self.http.clone(), event.clone(), self.retry_base);
            tokio::spawn(async move { deliver_webhook(&http, &url, &event, base).await });
        }
        if let Some(smtp) = self.smtp.clone() {
            if approvers.is_empty() {
                return;
            }
            tokio::spawn(async move { send_emails(&smtp.0, &smtp.1, &event, &approvers).await });
        }
    }
}

impl Notifier {
    /// Whether invitations can be emailed.
    pub fn can_email(&self) -> bool {
        self.smtp.is_some()
    }

    /// Emails an invitation in the background (only when SMTP is configured).
    pub fn invitation(&self, to: Email, register_command: String, inviter: String) {
        let Some(smtp) = self.smtp.clone() else {
            return;
        };
        tokio::spawn(async move {
            let body = format!(
                "{inviter} invited you to agent-vault.\n\nCreate your account with (you will be asked for a password):\n\n  {register_command}\n\nThe invitation works once and expires in 48 hours.\n"
            );
            let Ok(to_box) = to.as_str().parse::<Mailbox>() else {
                return;
            };
            match Message::builder()
                .from(smtp.1.clone())
                .to(to_box)
                .subject("agent-vault: you are invited")
                .body(body)
            {
                Ok(m) => {
                    if let Err(e) = smtp.0.send(m).await {
                        tracing::warn!(error = %e, "sending the invitation email failed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "building the invitation email failed"),
            }
        });
    }
}

async fn deliver_webhook(http: &reqwest::Client, url: &str, event: &ProposalEvent, base: Duration) {
    for attempt in 0..WEBHOOK_ATTEMPTS {
        match http.post(url).json(event).send().await {
            Ok(resp) if resp.status().is_success() => return,
            Ok(resp) => tracing::warn!(
                status = resp.status().as_u16(),
                attempt,
                "proposal webhook refused the notification"
            ),
            Err(e) => {
                tracing::warn!(error = %e.without_url(), attempt, "proposal webhook unreachable")
            }
        }
        if attempt + 1 < WEBHOOK_ATTEMPTS {
            tokio::time::sleep(base * 2u32.pow(attempt)).await;
        }
    }
    tracing::error!(vault = %event.vault, number = event.number, "proposal webhook failed after every retry");
}

async fn send_emails(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    from: &Mailbox,
    event: &ProposalEvent,
    approvers: &[Email],
) {
    // The agent's own words stay out of the mail: mail clients turn URLs in plain text into
    // links, and a click would carry the approver's session cookie to whatever the agent runs
    // on another port of this host. The page shows them as text.
    let body = format!(
        "An agent ({}) proposed a change to vault {}.\n\nRead its message, review the change, enter any credential values it needs, and approve or reject it here:\n{}\n\nThe link lets you view the proposal; approving needs your login.\n",
        event.created_by, event.vault, event.approval_url
    );
    for to in approvers {
        let Ok(to_box) = to.as_str().parse::<Mailbox>() else {
            continue;
        };
        let message = Message::builder()
            .from(from.clone())
            .to(to_box)
            .subject(format!(
                "agent-vault: proposal #{} in vault {}",
                event.number, event.vault
            ))
            .body(body.clone());
        match message {
            Ok(m) => {
                if let Err(e) = transport.send(m).await {
                    tracing::warn!(error = %e, "sending the proposal email failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "building the proposal email failed"),
        }
    }
}
