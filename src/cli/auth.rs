//! `agent-vault auth`: register (first owner with the setup token, others with an invitation),
//! login, logout, whoami, and invitations.

use std::io::IsTerminal;

use clap::Subcommand;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::client::{Client, DEFAULT_ADDRESS, SavedSession, Sessions};
use super::output::outln;
use super::{CliError, JsonFlag, output, prompt_password, read_secret_line};

/// `agent-vault auth ...`
#[derive(Debug, Subcommand)]
pub(super) enum AuthCommand {
    /// Create your account: the first owner with the setup token, others with an invitation.
    Register {
        /// Your email address.
        #[arg(long)]
        email: String,
        /// The one-time setup token printed by the first `agent-vault server` start.
        #[arg(long, env = "AGENT_VAULT_SETUP_TOKEN", hide_env_values = true)]
        setup_token: Option<String>,
        /// An invitation token from an owner.
        #[arg(long, env = "AGENT_VAULT_INVITE_TOKEN", hide_env_values = true)]
        invite_token: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Log in and keep the session in ~/.agent-vault/session.json (mode 0600), bound to the
    /// server address: one login per address, each sent only to its own address.
    Login {
        /// Your email address.
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// End the login for --address (default: the most recent login) and forget it.
    Logout,
    /// Show who the CLI acts as.
    Whoami {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Invite a user (owners). Prints the invitation token once.
    Invite {
        /// Their email address.
        email: String,
        /// Instance role: member or owner.
        #[arg(long, default_value = "member")]
        role: String,
        /// Vault roles to grant, as VAULT:ROLE (member or admin); repeatable.
        #[arg(long = "vault", value_name = "VAULT:ROLE")]
        vaults: Vec<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

fn password(stdin: bool, confirm: bool) -> Result<SecretString, CliError> {
    if stdin {
        return read_secret_line();
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::msg(
            "no terminal to ask for a password; use --password-stdin",
        ));
    }
    let first = prompt_password("Password: ")?;
    if confirm && prompt_password("Repeat the password: ")?.expose_secret() != first.expose_secret()
    {
        return Err(CliError::msg("the passwords do not match"));
    }
    Ok(first)
}

fn remember(address: &str, email: &str, resp: &Value) -> Result<(), CliError> {
    let token = resp["token"]
        .as_str()
        .ok_or_else(|| CliError::msg("the server returned no session token"))?;
    let mut sessions = Sessions::load()?;
    sessions.put(SavedSession {
        address: address.to_owned(),
        token: token.to_owned(),
        email: email.to_owned(),
        expires_at: resp["expires_at"].as_i64(),
    });
    sessions.save()
}

/// Runs an auth command.
pub(super) async fn run(cmd: AuthCommand, address: Option<&str>) -> Result<(), CliError> {
    let addr = address.unwrap_or(DEFAULT_ADDRESS).to_owned();
    match cmd {
        AuthCommand::Register {
            email,
            setup_token,
            invite_token,
            password_stdin,
        } => {
            if setup_token.is_none() && invite_token.is_none() {
                return Err(CliError::msg(
                    "registration needs --setup-token (first owner; see the server's first start output) or --invite-token",
                ));
            }
            let pw = password(password_stdin, true)?;
            let client = Client::anonymous(&addr)?;
            let mut body = json!({ "email": email, "password": pw.expose_secret() });
            if let Some(t) = setup_token {
                body["setup_token"] = json!(t.trim());
            }
            if let Some(t) = invite_token {
                body["invite_token"] = json!(t.trim());
            }
            let resp: Value = client.post("/v1/auth/register", &body).await?;
            remember(&addr, &email, &resp)?;
            outln!(
                "registered {} as {}; logged in",
                output::text(&resp["user"], "email"),
                output::text(&resp["user"], "role")
            )?;
            Ok(())
        }
        AuthCommand::Login {
            email,
            password_stdin,
        } => {
            let pw = password(password_stdin, false)?;
            let client = Client::anonymous(&addr)?;
            let resp: Value = client
                .post(
                    "/v1/auth/login",
                    &json!({ "email": email, "password": pw.expose_secret() }),
                )
                .await?;
            remember(&addr, &email, &resp)?;
            outln!("logged in as {email}")?;
            Ok(())
        }
        AuthCommand::Logout => {
            let mut sessions = Sessions::load()?;
            let Ok(session) = sessions.pick(address).cloned() else {
                return outln!(
                    "not logged in{}",
                    address.map(|a| format!(" to {a}")).unwrap_or_default()
                );
            };
            // Only to the address that issued the token.
            let client = Client::with_token(
                &session.address,
                SecretString::from(session.token.clone()),
                super::client::Acting::User,
            )?;
            match client.post::<Value>("/v1/auth/logout", &json!({})).await {
                Ok(_) | Err(CliError::Api { status: 401, .. }) => {}
                Err(e) => return Err(e),
            }
            sessions.remove(&session.address);
            sessions.save()?;
            outln!("logged out of {}", session.address)?;
            Ok(())
        }
        AuthCommand::Whoami { json } => {
            let client = Client::authenticated(address)?;
            let me: Value = client.get("/v1/auth/whoami").await?;
            if json.json {
                output::json(&me)?;
            } else {
                let who = if me["kind"] == "user" {
                    output::text(&me, "email")
                } else {
                    format!(
                        "{} {}",
                        me["kind"].as_str().unwrap_or(""),
                        output::text(&me, "name")
                    )
                };
                outln!("{who} ({})", client.base())?;
                if let Some(vaults) = me["vaults"].as_array() {
                    for v in vaults {
                        outln!("  {}  {}", output::text(v, "name"), output::text(v, "role"))?;
                    }
                }
            }
            Ok(())
        }
        AuthCommand::Invite {
            email,
            role,
            vaults,
            json,
        } => {
            let client = Client::authenticated(address)?;
            let grants = vaults
                .iter()
                .map(|v| {
                    let (vault, role) = v.split_once(':').ok_or_else(|| {
                        CliError::msg(format!(
                            "--vault {v:?}: use VAULT:ROLE, e.g. my-vault:member"
                        ))
                    })?;
                    Ok(json!({ "vault": vault, "role": role }))
                })
                .collect::<Result<Vec<_>, CliError>>()?;
            let resp: Value = client
                .post(
                    "/v1/invites",
                    &json!({ "email": email, "role": role, "vaults": grants }),
                )
                .await?;
            if json.json {
                output::json(&resp)?;
            } else {
                outln!(
                    "invitation for {email} (expires {}). They register with:",
                    output::time(&resp, "expires_at")
                )?;
                outln!("  {}", output::text(&resp, "register_command"))?;
            }
            Ok(())
        }
    }
}
