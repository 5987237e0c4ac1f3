//! `agent-vault proposal`: agents ask for services and credentials; humans list, inspect,
//! approve (with the values, `KEY=-` from stdin) or reject.
#![allow(clippy::print_stderr)] // this command talks to a person on stderr on purpose

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{Client, seg};
use super::credential::parse_pairs;
use super::output::{note, outln};
use super::{CliError, JsonFlag, VaultArg, output, parse_duration, read_file_or_stdin};
use crate::policy::confusable::HostForms;

/// `agent-vault proposal ...`
#[derive(Debug, Subcommand)]
pub(super) enum ProposalCommand {
    /// Propose services and credentials from a YAML or JSON file (agents).
    Create {
        /// The file, or - for standard input.
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// The vault (default: AGENT_VAULT_VAULT, or the token's only vault).
        #[arg(long, env = "AGENT_VAULT_VAULT")]
        vault: Option<String>,
        /// Wait until a human approves or rejects it (or it expires), then print the decision.
        /// Exits 0 when it was approved, 1 when it was rejected, expired or the wait timed out.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 90s, 30m.
        #[arg(long, value_parser = parse_duration, default_value = "15m", requires = "wait")]
        timeout: Duration,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show a proposal's status by id (agents poll this).
    Status {
        /// The id `create` printed.
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List a vault's proposals (member role).
    List {
        /// Only this status: pending, applied, rejected, expired.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show one proposal with its risks and the values it still needs.
    Show {
        /// The proposal's number, or its id (what `create` printed).
        #[arg(value_name = "NUMBER|ID")]
        proposal: String,
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Approve a proposal, giving values as KEY=VALUE or KEY=- (standard input).
    Approve {
        /// The proposal's number, or its id (what `create` printed).
        #[arg(value_name = "NUMBER|ID")]
        proposal: String,
        /// Values for the credentials it asks for: KEY=VALUE, or KEY=- read from standard
        /// input as `vault credential set` reads it (a hidden prompt on a terminal).
        #[arg(value_name = "KEY=VALUE")]
        values: Vec<String>,
        /// Accept the risks that need an explicit acknowledgement (look-alike hosts); they are
        /// printed first either way.
        #[arg(long)]
        acknowledge_risks: bool,
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Reject a proposal.
    Reject {
        /// The proposal's number, or its id (what `create` printed).
        #[arg(value_name = "NUMBER|ID")]
        proposal: String,
        /// Why (shown to the agent).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
}

fn summary(p: &Value) -> String {
    let services = p["services"].as_array().map(Vec::len).unwrap_or(0);
    let creds = p["credentials"].as_array().map(Vec::len).unwrap_or(0);
    format!("{services} service change(s), {creds} credential slot(s)")
}

fn print_detail(p: &Value) -> Result<(), CliError> {
    outln!(
        "proposal #{} in vault {}: {}",
        output::text(p, "number"),
        output::text(p, "vault"),
        output::text(p, "status")
    )?;
    if let Some(who) = p["created_by"]["name"].as_str() {
        outln!("raised by {who}")?;
    }
    if let Some(m) = p["message"].as_str().filter(|m| !m.is_empty()) {
        outln!("message: {m}")?;
    }
    for s in p["services"].as_array().into_iter().flatten() {
        match s["action"].as_str() {
            Some("delete") => outln!("  service remove {}", output::text(s, "name"))?,
            _ => outln!(
                "  service set    {} -> {} ({})",
                output::text(s, "name"),
                HostForms::of(s["host"].as_str().unwrap_or_default()).describe(),
                output::text(&s["auth"], "type")
            )?,
        }
    }
    for c in p["credentials"].as_array().into_iter().flatten() {
        let mut extra = String::new();
        if let Some(ty) = c["type"].as_str() {
            extra.push_str(&format!(" ({ty})"));
        }
        if c["has_value"] == true {
            extra.push_str(" (value supplied by the agent)");
        }
        if c["has_metadata"] == true {
            extra.push_str(" (metadata supplied by the agent; shown on the approval page)");
        }
        outln!(
            "  credential {} {}{extra}  {}",
            output::text(c, "action"),
            output::text(c, "key"),
            c["description"].as_str().unwrap_or("")
        )?;
        if let Some(url) = c["obtain"].as_str() {
            outln!("      obtain at (link provided by the agent; check it before opening): {url}")?;
        }
        if let Some(how) = c["obtain_instructions"].as_str() {
            outln!("      how to obtain (text from the agent): {how}")?;
        }
    }
    for r in p["risks"].as_array().into_iter().flatten() {
        let ack = if r["needs_acknowledgement"] == true {
            " (approve needs --acknowledge-risks)"
        } else {
            ""
        };
        outln!(
            "  {}: {}{ack}",
            output::text(r, "severity"),
            output::text(r, "text")
        )?;
    }
    if let Some(missing) = p["missing_values"].as_array().filter(|m| !m.is_empty()) {
        let keys: Vec<_> = missing.iter().filter_map(Value::as_str).collect();
        outln!("  values needed to approve: {}", keys.join(", "))?;
    }
    Ok(())
}

/// First pause between status polls while waiting for a decision; it doubles up to the cap.
const FIRST_POLL: Duration = Duration::from_millis(250);
/// Longest pause between status polls.
const MAX_POLL: Duration = Duration::from_secs(5);

/// Polls the status of the proposal `created` describes, with backoff, until it is no longer
/// pending or `timeout` passes.
async fn wait_for_decision(
    client: &Client,
    created: &Value,
    timeout: Duration,
) -> Result<Value, CliError> {
    let id = output::text(created, "id");
    let path = format!("/v1/proposals/{}", seg(&id));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = FIRST_POLL;
    loop {
        let status: Value = client.get(&path).await?;
        if status["status"] != "pending" {
            return Ok(status);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(CliError::msg(format!(
                "no decision on proposal #{} within {}: it is still pending. A human must open {} ; check later with `agent-vault proposal status {id}`",
                output::text(created, "number"),
                humantime::format_duration(timeout),
                output::text(created, "approval_url"),
            )));
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// Prints a decided proposal; anything but an approval is an error (exit 1), so a script can
/// go on only when the change is live.
fn print_decision(decided: &Value, created: &Value, json: bool) -> Result<(), CliError> {
    let number = output::text(decided, "number");
    let status = decided["status"].as_str().unwrap_or_default();
    if json {
        output::json(&json!({
            "id": decided["id"],
            "number": decided["number"],
            "vault": decided["vault"],
            "status": decided["status"],
            "approval_url": created["approval_url"],
            "reviewed_at": decided["reviewed_at"],
            "review_note": decided["review_note"],
        }))?;
    }
    let reason = decided["review_note"].as_str().filter(|r| !r.is_empty());
    match status {
        "applied" => {
            if !json {
                outln!(
                    "proposal #{number} was approved; the changes are live in vault {}",
                    output::text(decided, "vault")
                )?;
            }
            Ok(())
        }
        "rejected" => Err(CliError::msg(match reason {
            Some(r) => format!("proposal #{number} was rejected: {r}"),
            None => format!("proposal #{number} was rejected (no reason given)"),
        })),
        "expired" => Err(CliError::msg(format!(
            "proposal #{number} expired before anyone decided; propose again if it is still needed"
        ))),
        other => Err(CliError::msg(format!(
            "proposal #{number} is {other}, which this version does not know"
        ))),
    }
}

/// Runs a proposal command.
pub(super) async fn run(cmd: ProposalCommand, address: Option<&str>) -> Result<(), CliError> {
    let client = Client::authenticated(address)?;
    match cmd {
        ProposalCommand::Create {
            file,
            vault,
            wait,
            timeout,
            json,
        } => {
            let text = read_file_or_stdin(&file)?;
            let mut body: Value = serde_norway::from_str(&text)
                .map_err(|e| CliError::msg(format!("{}: {e}", file.display())))?;
            if let (Some(v), Some(obj)) = (vault, body.as_object_mut()) {
                obj.entry("vault").or_insert(json!(v));
            }
            let resp: Value = client.post("/v1/proposals", &body).await?;
            if wait {
                // The human needs the link while the agent waits, whatever the output format.
                note!(
                    "proposal #{} created; waiting up to {} for a human to decide at:\n  {}",
                    output::text(&resp, "number"),
                    humantime::format_duration(timeout),
                    output::text(&resp, "approval_url")
                );
                let decided = wait_for_decision(&client, &resp, timeout).await?;
                return print_decision(&decided, &resp, json.json);
            }
            if json.json {
                output::json(
                    &json!({ "id": resp["id"], "number": resp["number"], "status": resp["status"], "approval_url": resp["approval_url"], "vault": resp["vault"] }),
                )?;
            } else {
                outln!(
                    "proposal #{} created in vault {} ({}).",
                    output::text(&resp, "number"),
                    output::text(&resp, "vault"),
                    output::text(&resp, "id")
                )?;
                outln!("A human must review and approve it here:")?;
                outln!("  {}", output::text(&resp, "approval_url"))?;
                outln!(
                    "Check its status with: agent-vault proposal status {}",
                    output::text(&resp, "id")
                )?;
            }
        }
        ProposalCommand::Status { id, json } => {
            let p: Value = client.get(&format!("/v1/proposals/{}", seg(&id))).await?;
            if json.json {
                output::json(&p)?
            } else {
                print_detail(&p)?
            }
        }
        ProposalCommand::List {
            status,
            vault,
            json,
        } => {
            let q = status
                .map(|s| format!("?status={}", seg(&s)))
                .unwrap_or_default();
            let list: Vec<Value> = client
                .get(&format!("/v1/vaults/{}/proposals{q}", seg(&vault.vault)))
                .await?;
            if json.json {
                output::json(&json!(list))?;
            } else {
                let rows: Vec<_> = list
                    .iter()
                    .map(|p| {
                        vec![
                            output::text(p, "number"),
                            output::text(p, "status"),
                            summary(p),
                            p["message"]
                                .as_str()
                                .unwrap_or("")
                                .chars()
                                .take(60)
                                .collect(),
                            output::time(p, "expires_at"),
                        ]
                    })
                    .collect();
                output::table(&["#", "STATUS", "CHANGES", "MESSAGE", "EXPIRES"], &rows)?;
            }
        }
        ProposalCommand::Show {
            proposal,
            vault,
            json,
        } => {
            let p: Value = client
                .get(&format!(
                    "/v1/vaults/{}/proposals/{}",
                    seg(&vault.vault),
                    seg(&proposal)
                ))
                .await?;
            if json.json {
                output::json(&p)?
            } else {
                print_detail(&p)?
            }
        }
        ProposalCommand::Approve {
            proposal,
            values,
            acknowledge_risks,
            vault,
            json,
        } => {
            let path = format!(
                "/v1/vaults/{}/proposals/{}",
                seg(&vault.vault),
                seg(&proposal)
            );
            // Approve exactly what was fetched: the server refuses if anything changed since.
            let shown: Value = client.get(&path).await?;
            // Risks that need an acknowledgement are printed before anything is sent, and only
            // the ones printed are acknowledged.
            let flagged: Vec<&Value> = shown["risks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["needs_acknowledgement"] == true)
                .collect();
            for r in &flagged {
                note!(
                    "risk ({}): {}",
                    output::text(r, "severity"),
                    output::text(r, "text")
                );
            }
            if !flagged.is_empty() && !acknowledge_risks {
                return Err(CliError::msg(format!(
                    "proposal #{} has {} risk(s) that need your explicit acknowledgement (above); nothing was approved. Check them, then run again with --acknowledge-risks",
                    output::text(&shown, "number"),
                    flagged.len()
                )));
            }
            let ids: Vec<&Value> = flagged.iter().map(|r| &r["id"]).collect();
            let values = parse_pairs(&values)?;
            let resp: Value = client
                .post(
                    &format!("{path}/approve"),
                    &json!({ "values": values, "approval_hash": shown["approval_hash"], "acknowledge_risks": ids }),
                )
                .await?;
            if json.json {
                output::json(&resp)?
            } else {
                outln!(
                    "approved proposal #{} in vault {}; the changes are live",
                    output::text(&resp, "number"),
                    vault.vault
                )?
            }
        }
        ProposalCommand::Reject {
            proposal,
            reason,
            vault,
            json,
        } => {
            let resp: Value = client
                .post(
                    &format!(
                        "/v1/vaults/{}/proposals/{}/reject",
                        seg(&vault.vault),
                        seg(&proposal)
                    ),
                    &json!({ "reason": reason }),
                )
                .await?;
            if json.json {
                output::json(&resp)?
            } else {
                outln!(
                    "rejected proposal #{} in vault {}",
                    output::text(&resp, "number"),
                    vault.vault
                )?
            }
        }
    }
    Ok(())
}
