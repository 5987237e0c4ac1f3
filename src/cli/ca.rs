//! `agent-vault ca fetch`: the proxy's root certificate, for clients to trust.
#![allow(clippy::print_stderr)] // this command talks to a person on stderr on purpose

use std::path::PathBuf;

use clap::Subcommand;

use super::CliError;
use super::client::{Client, DEFAULT_ADDRESS};
use super::output::{note, out};

/// `agent-vault ca ...`
#[derive(Debug, Subcommand)]
pub(super) enum CaCommand {
    /// Download the root certificate (PEM) to a file or standard output.
    Fetch {
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
}

/// Runs a CA command.
pub(super) async fn run(cmd: CaCommand, address: Option<&str>) -> Result<(), CliError> {
    let CaCommand::Fetch { output } = cmd;
    let client = Client::anonymous(address.unwrap_or(DEFAULT_ADDRESS))?;
    let pem = client.get_text("/v1/ca.pem").await?;
    if !pem.starts_with("-----BEGIN CERTIFICATE-----") {
        return Err(CliError::msg("the server did not return a PEM certificate"));
    }
    match output {
        Some(path) => {
            std::fs::write(&path, pem).map_err(CliError::file("write", &path))?;
            note!("wrote the agent-vault CA certificate to {}", path.display());
        }
        None => out!("{pem}")?,
    }
    Ok(())
}
