//! `agent-vault run -- COMMAND...`: mint a short-lived proxy-role token, write the CA, run the
//! command with proxy and CA variables set, forward signals, exit with the command's code, and
//! revoke the token afterwards. The command never sees a credential value.
#![allow(clippy::print_stderr)] // this command talks to a person on stderr on purpose

use std::time::Duration;

use clap::Args;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::client::{Acting, Client, seg};
use super::run_env::{self, RunEnv};
use super::{CliError, VaultArg, parse_duration};
use crate::crypto::TokenKind;

/// Flags of `agent-vault run`.
#[derive(Debug, Args)]
pub(super) struct RunArgs {
    #[command(flatten)]
    vault: VaultArg,
    /// Lifetime of the token minted for this run (default: the server's, 1h).
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    #[command(flatten)]
    confine: super::confine::ConfineArgs,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

/// Runs the command.
pub(super) async fn run(args: RunArgs, address: Option<&str>) -> Result<(), CliError> {
    // Confinement is decided first, so a refusal comes before any token is minted.
    let confinement = super::confine::Plan::new(&args.confine)?;
    let client = Client::authenticated(address)?;
    let vault = args.vault.vault.clone();
    let inherited = std::env::var("AGENT_VAULT_TOKEN").unwrap_or_default();
    let (token, token_id, proxy_port) =
        if client.acting == Acting::Agent && TokenKind::Scoped.matches_format(&inherited) {
            // Already a scoped token (run inside run, or from `vault token`): use it as it is.
            let status: Value = Client::anonymous(client.base())?.get("/v1/status").await?;
            (
                SecretString::from(inherited),
                None,
                status["proxy_port"].as_u64().unwrap_or(14322),
            )
        } else {
            let mut body = json!({ "label": format!("run: {}", args.command[0]) });
            if let Some(t) = args.ttl {
                body["ttl_seconds"] = json!(t.as_secs());
            }
            let resp: Value = client
                .post(&format!("/v1/vaults/{}/tokens", seg(&vault)), &body)
                .await?;
            let token = resp["token"]
                .as_str()
                .ok_or_else(|| CliError::msg("the server returned no token"))?;
            (
                SecretString::from(token.to_owned()),
                resp["id"].as_str().map(str::to_owned),
                resp["proxy_port"].as_u64().unwrap_or(14322),
            )
        };
    let ca_pem = Client::anonymous(client.base())?
        .get_text("/v1/ca.pem")
        .await?;
    let env = RunEnv::prepare(&run_env::Target {
        base: client.base(),
        token: &token,
        vault: &vault,
        proxy_port,
        ca_pem: &ca_pem,
    })?;

    let mut cmd = confinement.command(&args.command, env.files_dir())?;
    env.apply(&mut cmd);

    let outcome = match cmd.spawn() {
        Ok(mut child) => {
            let pid = child.id();
            let forwarder = tokio::spawn(forward_signals(pid));
            let status = child.wait().await;
            forwarder.abort();
            status
                .map_err(|e| CliError::msg(format!("waiting for {} failed: {e}", args.command[0])))
        }
        Err(e) => Err(CliError::msg(format!(
            "cannot run {}: {e}",
            args.command[0]
        ))),
    };
    if let Some(id) = token_id
        && let Err(e) = client
            .delete::<Value>(&format!("/v1/tokens/{}", seg(&id)), None)
            .await
    {
        eprintln!(
            "agent-vault: warning: could not revoke the run's token ({e}); it expires on its own"
        );
    }
    let status = outcome?;
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    if code == 0 {
        Ok(())
    } else {
        Err(CliError::ChildExit(code))
    }
}

/// Forwards SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 to the child. SIGINT and SIGQUIT from a terminal
/// already reach the child through its process group, so they are not sent twice.
async fn forward_signals(pid: Option<u32>) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use tokio::signal::unix::{SignalKind, signal};
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    let kinds = [
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::user_defined1(), Signal::SIGUSR1),
        (SignalKind::user_defined2(), Signal::SIGUSR2),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    for (kind, sig) in kinds {
        let Ok(mut stream) = signal(kind) else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).await.is_err() {
                    return;
                }
            }
        });
    }
    // Keep SIGINT and SIGQUIT from killing us before the child has finished.
    let _ignore_int = signal(SignalKind::interrupt());
    let _ignore_quit = signal(SignalKind::quit());
    while let Some(sig) = rx.recv().await {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}
