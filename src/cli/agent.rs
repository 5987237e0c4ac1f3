//! `agent-vault agent`: agents and their tokens. A token is printed once, when created or rotated.
#![allow(clippy::print_stderr)] // this command talks to a person on stderr on purpose

use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{Client, seg};
use super::output::{note, outln};
use super::{CliError, JsonFlag, output, parse_duration};

/// `agent-vault agent ...`
#[derive(Debug, Subcommand)]
pub(super) enum AgentCommand {
    /// Create an agent and print its token once.
    Create {
        /// Name: a-z, 0-9, '-', '_', '.'.
        name: String,
        /// Vaults it may use, as VAULT or VAULT:ROLE (proxy, member, admin; default proxy); repeatable.
        #[arg(long = "vault", value_name = "VAULT[:ROLE]")]
        vaults: Vec<String>,
        /// Token lifetime, e.g. 30d (default: the server's tokens.agent_default_ttl).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List agents.
    List {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Revoke an agent's tokens and print a new one.
    Rotate {
        /// The agent.
        name: String,
        /// New token lifetime.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Revoke every token the agent holds or minted.
    Revoke {
        /// The agent.
        name: String,
    },
    /// Delete an agent, its grants and its tokens.
    Delete {
        /// The agent.
        name: String,
    },
}

/// Runs an agent command.
pub(super) async fn run(cmd: AgentCommand, address: Option<&str>) -> Result<(), CliError> {
    let client = Client::authenticated(address)?;
    match cmd {
        AgentCommand::Create {
            name,
            vaults,
            ttl,
            json,
        } => {
            let grants: Vec<Value> = vaults
                .iter()
                .map(|v| match v.split_once(':') {
                    Some((vault, role)) => json!({ "vault": vault, "role": role }),
                    None => json!({ "vault": v, "role": "proxy" }),
                })
                .collect();
            let mut body = json!({ "name": name, "vaults": grants });
            if let Some(t) = ttl {
                body["ttl_seconds"] = json!(t.as_secs());
            }
            let resp: Value = client.post("/v1/agents", &body).await?;
            if json.json {
                output::json(&resp)?;
            } else {
                note!("created agent {name}; its token (shown only once):");
                outln!("{}", output::text(&resp, "token"))?;
            }
        }
        AgentCommand::List { json } => {
            let list: Vec<Value> = client.get("/v1/agents").await?;
            if json.json {
                output::json(&json!(list))?;
            } else {
                let rows: Vec<_> = list
                    .iter()
                    .map(|a| {
                        let vaults = a["vaults"]
                            .as_array()
                            .map(|vs| {
                                vs.iter()
                                    .map(|v| {
                                        format!(
                                            "{}:{}",
                                            output::text(v, "vault"),
                                            output::text(v, "role")
                                        )
                                    })
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default();
                        vec![
                            output::text(a, "name"),
                            vaults,
                            output::text(a, "active_tokens"),
                            output::time(a, "expires_at"),
                            output::time(a, "created_at"),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "VAULTS", "TOKENS", "EXPIRES", "CREATED"], &rows)?;
            }
        }
        AgentCommand::Rotate { name, ttl, json } => {
            let mut body = json!({});
            if let Some(t) = ttl {
                body["ttl_seconds"] = json!(t.as_secs());
            }
            let resp: Value = client
                .post(&format!("/v1/agents/{}/rotate", seg(&name)), &body)
                .await?;
            if json.json {
                output::json(&resp)?;
            } else {
                note!("rotated agent {name}; old tokens are revoked. New token (shown only once):");
                outln!("{}", output::text(&resp, "token"))?;
            }
        }
        AgentCommand::Revoke { name } => {
            let resp: Value = client
                .post(&format!("/v1/agents/{}/revoke", seg(&name)), &json!({}))
                .await?;
            outln!(
                "revoked {} token(s) of agent {name}",
                output::text(&resp, "revoked_tokens")
            )?;
        }
        AgentCommand::Delete { name } => {
            let _: Value = client
                .delete(&format!("/v1/agents/{}", seg(&name)), None)
                .await?;
            outln!("deleted agent {name}")?;
        }
    }
    Ok(())
}
