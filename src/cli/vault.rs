//! `agent-vault vault`: create, list and delete vaults; settings, members, scoped tokens and the
//! request log. Credentials and services have their own files.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{Client, seg};
use super::credential::CredentialCommand;
use super::output::{note, outln};
use super::service::ServiceCommand;
use super::{CliError, JsonFlag, VaultArg, ask_line, output, parse_duration};

/// `agent-vault vault ...`
#[derive(Debug, Subcommand)]
pub(super) enum VaultCommand {
    /// Create a vault; you become its admin.
    Create {
        /// Name: 3-64 characters of a-z, 0-9 and '-'.
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List the vaults you have a role in.
    List {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Delete a vault and everything in it.
    ///
    /// On a terminal, asks for the vault's name to be typed; without one, needs --yes.
    Delete {
        /// The vault.
        name: String,
        /// Delete without asking (for scripts).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Credentials: set, get, list, delete.
    #[command(subcommand, alias = "credentials", visible_alias = "creds")]
    Credential(CredentialCommand),
    /// Services: the rules that bind credentials to hosts.
    #[command(subcommand, alias = "services")]
    Service(ServiceCommand),
    /// Vault settings.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Vault members (users and agents) and their roles.
    #[command(subcommand, alias = "members")]
    Member(MemberCommand),
    /// Mint a short-lived proxy-role token for one agent run (for orchestrators and sandboxes).
    Token {
        #[command(flatten)]
        vault: VaultArg,
        /// Lifetime, e.g. 30m, 1h (server default 1h).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// A label to recognise it by.
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// What this vault offers an agent: services (name, host) and credential key names.
    Discover {
        /// The vault (default: AGENT_VAULT_VAULT, or the token's only vault).
        #[arg(long, env = "AGENT_VAULT_VAULT")]
        vault: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show the request log of proxied traffic.
    Logs {
        #[command(flatten)]
        vault: VaultArg,
        /// Keep printing new entries.
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many recent entries to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// `vault settings ...`
#[derive(Debug, Subcommand)]
pub(super) enum SettingsCommand {
    /// Show the settings.
    Show {
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Change a setting: unmatched-host-policy tunnel|deny.
    Set {
        /// The setting (unmatched-host-policy).
        key: String,
        /// The value.
        value: String,
        #[command(flatten)]
        vault: VaultArg,
    },
}

/// `vault member ...`
#[derive(Debug, Subcommand)]
pub(super) enum MemberCommand {
    /// List members.
    List {
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Grant or change a role: a user by email or an agent by name.
    Set {
        /// `user` or `agent`.
        kind: String,
        /// Email (user) or name (agent).
        who: String,
        /// proxy (agents only), member or admin.
        role: String,
        #[command(flatten)]
        vault: VaultArg,
    },
    /// Remove a member.
    Remove {
        /// `user` or `agent`.
        kind: String,
        /// Email (user) or name (agent).
        who: String,
        #[command(flatten)]
        vault: VaultArg,
    },
}

/// One request-log row as table cells.
fn log_cells(r: &Value) -> Vec<String> {
    vec![
        output::time(r, "created_at"),
        output::text(r, "method"),
        output::text(r, "host"),
        output::text(r, "path"),
        output::text(r, "status"),
        output::text(r, "service"),
        r["credential_keys"]
            .as_array()
            .map(|k| {
                k.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        format!("{}ms", output::text(r, "latency_ms")),
        output::text(r, "error_code"),
    ]
}

/// Prints request-log rows as a table.
fn print_logs(rows: &[Value]) -> Result<(), CliError> {
    let table: Vec<Vec<String>> = rows.iter().map(log_cells).collect();
    output::table(
        &[
            "TIME",
            "METHOD",
            "HOST",
            "PATH",
            "STATUS",
            "SERVICE",
            "CREDENTIALS",
            "LATENCY",
            "ERROR",
        ],
        &table,
    )
}

/// Deleting a vault needs `--yes`, or its name typed at the terminal: a slip of the shell
/// history must not take every credential with it.
fn confirm_delete(name: &str, yes: bool) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::msg(format!(
            "vault delete removes vault {name} and everything in it, and there is no terminal to confirm on; pass --yes to delete it"
        )));
    }
    note!(
        "This deletes vault {name} with all its credentials, services, members, tokens, proposals and logs. It cannot be undone."
    );
    if ask_line("Type the vault's name to delete it: ")? != name {
        return Err(CliError::msg(format!(
            "the name typed is not {name}; nothing was deleted"
        )));
    }
    Ok(())
}

/// Runs a vault command.
pub(super) async fn run(cmd: VaultCommand, address: Option<&str>) -> Result<(), CliError> {
    match cmd {
        VaultCommand::Credential(c) => return super::credential::run(c, address).await,
        VaultCommand::Service(c) => return super::service::run(c, address).await,
        _ => {}
    }
    let client = Client::authenticated(address)?;
    match cmd {
        VaultCommand::Create { name, json } => {
            let v: Value = client.post("/v1/vaults", &json!({ "name": name })).await?;
            if json.json {
                output::json(&v)?
            } else {
                outln!("created vault {name}")?
            }
        }
        VaultCommand::List { json } => {
            let list: Vec<Value> = client.get("/v1/vaults").await?;
            if json.json {
                output::json(&json!(list))?;
            } else {
                let rows: Vec<_> = list
                    .iter()
                    .map(|v| {
                        vec![
                            output::text(v, "name"),
                            output::text(v, "role"),
                            output::text(v, "unmatched_host_policy"),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "ROLE", "UNMATCHED HOSTS"], &rows)?;
            }
        }
        VaultCommand::Delete { name, yes } => {
            confirm_delete(&name, yes)?;
            let _: Value = client
                .delete(&format!("/v1/vaults/{}", seg(&name)), None)
                .await?;
            outln!("deleted vault {name}")?;
        }
        VaultCommand::Settings(SettingsCommand::Show { vault, json }) => {
            let s: Value = client
                .get(&format!("/v1/vaults/{}/settings", seg(&vault.vault)))
                .await?;
            if json.json {
                output::json(&s)?
            } else {
                outln!(
                    "unmatched-host-policy  {}",
                    output::text(&s, "unmatched_host_policy")
                )?
            }
        }
        VaultCommand::Settings(SettingsCommand::Set { key, value, vault }) => {
            if key != "unmatched-host-policy" {
                return Err(CliError::msg(format!(
                    "unknown setting {key:?}; known: unmatched-host-policy"
                )));
            }
            if value != "tunnel" && value != "deny" {
                return Err(CliError::msg(format!(
                    "unmatched-host-policy must be tunnel or deny, not {value:?}"
                )));
            }
            let _: Value = client
                .patch(
                    &format!("/v1/vaults/{}/settings", seg(&vault.vault)),
                    &json!({ "unmatched_host_policy": value }),
                )
                .await?;
            outln!("vault {}: unmatched-host-policy = {value}", vault.vault)?;
        }
        VaultCommand::Member(MemberCommand::List { vault, json }) => {
            let list: Vec<Value> = client
                .get(&format!("/v1/vaults/{}/members", seg(&vault.vault)))
                .await?;
            if json.json {
                output::json(&json!(list))?;
            } else {
                let rows: Vec<_> = list
                    .iter()
                    .map(|m| {
                        vec![
                            output::text(m, "kind"),
                            output::text(m, "name"),
                            output::text(m, "role"),
                        ]
                    })
                    .collect();
                output::table(&["KIND", "NAME", "ROLE"], &rows)?;
            }
        }
        VaultCommand::Member(MemberCommand::Set {
            kind,
            who,
            role,
            vault,
        }) => {
            let _: Value = client
                .put(
                    &format!("/v1/vaults/{}/members", seg(&vault.vault)),
                    &json!({ "kind": kind, "name": who, "role": role }),
                )
                .await?;
            outln!("{kind} {who} is now {role} in vault {}", vault.vault)?;
        }
        VaultCommand::Member(MemberCommand::Remove { kind, who, vault }) => {
            let _: Value = client
                .delete(
                    &format!(
                        "/v1/vaults/{}/members/{}/{}",
                        seg(&vault.vault),
                        seg(&kind),
                        seg(&who)
                    ),
                    None,
                )
                .await?;
            outln!("removed {kind} {who} from vault {}", vault.vault)?;
        }
        VaultCommand::Token {
            vault,
            ttl,
            label,
            json,
        } => {
            let mut body = json!({});
            if let Some(t) = ttl {
                body["ttl_seconds"] = json!(t.as_secs());
            }
            if let Some(l) = label {
                body["label"] = json!(l);
            }
            let resp: Value = client
                .post(&format!("/v1/vaults/{}/tokens", seg(&vault.vault)), &body)
                .await?;
            if json.json {
                output::json(
                    &json!({ "token": resp["token"], "expires_at": resp["expires_at"], "id": resp["id"], "vault": resp["vault"], "proxy_port": resp["proxy_port"] }),
                )?;
            } else {
                outln!("{}", output::text(&resp, "token"))?;
            }
        }
        VaultCommand::Discover { vault, json } => {
            let q = vault
                .map(|v| format!("?vault={}", seg(&v)))
                .unwrap_or_default();
            let d: Value = client.get(&format!("/v1/discover{q}")).await?;
            if json.json {
                output::json(&d)?;
            } else {
                outln!(
                    "vault {} (unmatched hosts: {})",
                    output::text(&d, "vault"),
                    output::text(&d, "unmatched_host_policy")
                )?;
                for s in d["services"].as_array().into_iter().flatten() {
                    outln!(
                        "  service {}  {}",
                        output::text(s, "name"),
                        output::text(s, "host")
                    )?;
                }
                let keys: Vec<_> = d["credentials"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                outln!(
                    "  credentials: {}",
                    if keys.is_empty() {
                        "-".to_owned()
                    } else {
                        keys.join(", ")
                    }
                )?;
            }
        }
        VaultCommand::Logs {
            vault,
            follow,
            limit,
            json,
        } => {
            let base = format!("/v1/vaults/{}/logs", seg(&vault.vault));
            let mut rows: Vec<Value> = client.get(&format!("{base}?limit={limit}")).await?;
            rows.reverse();
            let mut last = rows
                .iter()
                .filter_map(|r| r["id"].as_i64())
                .max()
                .unwrap_or(0);
            if json.json {
                if follow {
                    for r in &rows {
                        outln!("{r}")?;
                    }
                } else {
                    output::json(&json!(rows))?;
                }
            } else {
                print_logs(&rows)?;
            }
            if !follow {
                return Ok(());
            }
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let new: Vec<Value> = client
                    .get(&format!("{base}?after={last}&limit=500"))
                    .await?;
                if let Some(max) = new.iter().filter_map(|r| r["id"].as_i64()).max() {
                    last = max;
                }
                for r in &new {
                    if json.json {
                        outln!("{r}")?;
                    } else {
                        outln!("{}", log_cells(r).join("  "))?;
                    }
                }
            }
        }
        VaultCommand::Credential(_) | VaultCommand::Service(_) => {}
    }
    Ok(())
}
