//! `agent-vault master-password change`: re-wraps the data-encryption key under a new master
//! password. Only the wrapped key changes, so it is safe while a server runs; the new password
//! is needed from the next start on.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Subcommand;
use secrecy::ExposeSecret;

use super::output::outln;
use super::{CliError, prompt_password, read_secret_line};
use crate::config::{Config, FlagOverrides};
use crate::unseal;

/// `agent-vault master-password ...`
#[derive(Debug, Subcommand)]
pub(super) enum MasterPasswordCommand {
    /// Change the master password.
    Change {
        /// Configuration file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Postgres URL.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Read the current password, then the new one, from two lines of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// Runs a master-password command.
pub(super) async fn run(cmd: MasterPasswordCommand) -> Result<(), CliError> {
    let MasterPasswordCommand::Change {
        config,
        data_dir,
        database_url,
        password_stdin,
    } = cmd;
    let flags = FlagOverrides {
        data_dir,
        database_url,
        ..Default::default()
    };
    let config = Config::load(config.as_deref(), &flags)?;
    let (old, new) = if password_stdin {
        (read_secret_line()?, read_secret_line()?)
    } else if std::io::stdin().is_terminal() {
        let old = prompt_password("Current master password: ")?;
        let new = prompt_password("New master password: ")?;
        if prompt_password("Repeat the new master password: ")?.expose_secret()
            != new.expose_secret()
        {
            return Err(CliError::msg("the new passwords do not match"));
        }
        (old, new)
    } else {
        return Err(CliError::msg(
            "no terminal to ask for passwords; use --password-stdin (current, then new, one per line)",
        ));
    };
    unseal::change_master_password_of(&config, old, new).await?;
    outln!("master password changed; use the new one from the next server start")?;
    Ok(())
}
