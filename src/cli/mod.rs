//! The command line. Every command but `server` and `master-password` is a client of the admin
//! API. Errors are one line a person can act on; exit codes are 0 (ok, or standard output
//! closed by its reader), 1 (error), 2 (usage).

mod agent;
mod auth;
mod ca;
pub mod client;
mod confine;
mod credential;
mod credential_value;
mod javaagent;
mod master_key;
mod master_password;
pub mod output;
mod proposal;
mod run;
mod run_env;
mod server;
mod service;
mod truststore;
mod vault;

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

/// An error the CLI reports on one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A problem described for a person.
    #[error("{0}")]
    Message(String),
    /// The server refused.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's error code.
        code: String,
        /// The API's message.
        message: String,
    },
    /// The child of `run` exited; carry its code through.
    #[error("child exited with {0}")]
    ChildExit(i32),
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        /// `read`, `write`, ...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Standard input could not be read.
    #[error("cannot read standard input: {0}")]
    Stdin(#[source] std::io::Error),
    /// The configuration did not load (the message names the key).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The server could not start.
    #[error(transparent)]
    Start(#[from] crate::app::AppError),
    /// The running server failed.
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
    /// The keys could not be unsealed or re-wrapped.
    #[error(transparent)]
    Unseal(#[from] crate::unseal::UnsealError),
    /// Standard output was closed by its reader (`| head`): the command stops quietly with 0,
    /// since the reader chose to stop reading.
    #[error("standard output was closed")]
    StdoutClosed,
    /// The error was already written to the server's log (JSON format): exit 1 without
    /// repeating it as a line that is not JSON.
    #[error("see the log")]
    Logged,
}

impl CliError {
    /// A plain message.
    pub fn msg(m: impl Into<String>) -> Self {
        Self::Message(m.into())
    }

    /// A file error: `action` is what was attempted (`read`, `write`, ...).
    pub fn file(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::File {
            action,
            path,
            source,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::ChildExit(code) => *code,
            Self::StdoutClosed => 0,
            _ => 1,
        }
    }
}

/// agent-vault: a credential vault and HTTPS proxy that attaches secrets to AI agents' requests
/// without ever handing the secrets to them.
#[derive(Debug, Parser)]
#[command(name = "agent-vault", version, about, propagate_version = true)]
pub struct Cli {
    /// Admin API address of the server.
    #[arg(long, global = true, env = "AGENT_VAULT_ADDR", value_name = "URL")]
    address: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: admin API and web UI, and the proxy.
    Server(server::ServerArgs),
    /// Register, log in and out, see who you are, invite users.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Vaults and everything in them: credentials, services, settings, tokens, logs.
    #[command(subcommand)]
    Vault(vault::VaultCommand),
    /// Agents: non-human identities holding proxy tokens.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Run a command with the proxy and CA configured and a short-lived token.
    Run(run::RunArgs),
    /// Proposals: agents ask for services and credentials, humans approve.
    #[command(subcommand)]
    Proposal(proposal::ProposalCommand),
    /// The proxy's root CA certificate.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Rotate the instance key on the running server (owners).
    #[command(subcommand, name = "master-key")]
    MasterKey(master_key::MasterKeyCommand),
    /// Change the master password (re-wraps the data key; works offline).
    #[command(subcommand, name = "master-password")]
    MasterPassword(master_password::MasterPasswordCommand),
    /// Internal to `run`: confine this process with Landlock, then become the command.
    #[command(hide = true, name = "confined-exec")]
    ConfinedExec(confine::ExecArgs),
}

/// `--json`.
#[derive(Debug, Args, Clone, Copy)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `--vault` (default from `AGENT_VAULT_VAULT`, then `default`).
#[derive(Debug, Args, Clone)]
pub struct VaultArg {
    /// The vault to act on.
    #[arg(
        long,
        short = 'v',
        env = "AGENT_VAULT_VAULT",
        default_value = "default"
    )]
    pub vault: String,
}

/// Parses durations like `30m`, `1h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 30m, 1h or 7d: {e}"))
}

/// Reads all of standard input.
pub fn read_stdin() -> Result<String, CliError> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(CliError::Stdin)?;
    Ok(text)
}

/// Reads one secret line from standard input (without its line ending).
pub fn read_secret_line() -> Result<SecretString, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(CliError::Stdin)?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(SecretString::from(trimmed.to_owned()))
}

/// Asks for a password on the terminal.
pub fn prompt_password(prompt: &str) -> Result<SecretString, CliError> {
    prompt_hidden(prompt, "use --password-stdin")
}

/// Asks for a secret on the terminal without echoing it; `instead` says what to do where there
/// is no terminal to ask on.
pub fn prompt_hidden(prompt: &str, instead: &str) -> Result<SecretString, CliError> {
    rpassword::prompt_password(prompt)
        .map(SecretString::from)
        .map_err(|e| CliError::msg(format!("cannot read from the terminal ({e}); {instead}")))
}

/// Asks a question on standard error and reads the answer, one line, from standard input.
pub fn ask_line(prompt: &str) -> Result<String, CliError> {
    output::write_err(format_args!("{prompt}"));
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(CliError::Stdin)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// A file path or `-` for standard input.
pub fn read_file_or_stdin(path: &PathBuf) -> Result<String, CliError> {
    if path.as_os_str() == "-" {
        return read_stdin();
    }
    std::fs::read_to_string(path).map_err(CliError::file("read", path))
}

impl Cli {
    /// Runs the parsed command.
    pub async fn run(self) -> Result<(), CliError> {
        let address = self.address.as_deref();
        match self.command {
            Command::Server(args) => server::run(args).await,
            Command::Auth(cmd) => auth::run(cmd, address).await,
            Command::Vault(cmd) => vault::run(cmd, address).await,
            Command::Agent(cmd) => agent::run(cmd, address).await,
            Command::Run(args) => run::run(args, address).await,
            Command::Proposal(cmd) => proposal::run(cmd, address).await,
            Command::Ca(cmd) => ca::run(cmd, address).await,
            Command::MasterKey(cmd) => master_key::run(cmd, address).await,
            Command::MasterPassword(cmd) => master_password::run(cmd).await,
            Command::ConfinedExec(args) => confine::exec(args),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
