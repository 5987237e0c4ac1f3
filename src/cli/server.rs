//! `agent-vault server`: load configuration, obtain the master password, unseal, listen, and
//! stop gracefully on SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use tracing_subscriber::EnvFilter;

use super::{CliError, prompt_password, read_secret_line};
use crate::app::App;
use crate::config::{Config, FlagOverrides, LogFlags, LogFormat, ServerFlags};

/// Flags of `agent-vault server`.
#[derive(Debug, Args)]
pub(super) struct ServerArgs {
    /// TOML configuration file (see config/agent-vault.example.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (default ~/.agent-vault).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Bind address of the admin API (and of the proxy unless server.proxy_host is set).
    #[arg(long)]
    host: Option<IpAddr>,
    /// Admin API port; 0 picks a free one.
    #[arg(long)]
    port: Option<u16>,
    /// Proxy port; 0 picks a free one.
    #[arg(long)]
    proxy_port: Option<u16>,
    /// Postgres URL (default: the embedded SQLite database).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Log filter, e.g. info or debug.
    #[arg(long)]
    log_level: Option<String>,
    /// Read the master password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Keeps keys and values out of core dumps and away from same-user debuggers: no core files,
/// and the process is not dumpable (ptrace by other same-uid processes is refused).
fn harden_process() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!(error = %e, "could not disable core dumps");
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "could not mark the process non-dumpable");
    }
}

/// Finds the master password: environment, file, stdin, or the terminal.
fn master_password(password_stdin: bool, first_start: bool) -> Result<SecretString, CliError> {
    if let Ok(p) = std::env::var("AGENT_VAULT_MASTER_PASSWORD") {
        // The variable cannot be removed from our own environment without `unsafe`
        // (`remove_var`, edition 2024), which this crate forbids.
        tracing::warn!(
            "the master password was given in AGENT_VAULT_MASTER_PASSWORD, which stays readable in /proc/<pid>/environ for the life of the process; prefer AGENT_VAULT_MASTER_PASSWORD_FILE or --password-stdin"
        );
        return Ok(SecretString::from(p));
    }
    if let Ok(path) = std::env::var("AGENT_VAULT_MASTER_PASSWORD_FILE") {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            CliError::msg(format!(
                "cannot read AGENT_VAULT_MASTER_PASSWORD_FILE {path}: {e}"
            ))
        })?;
        let line = text.lines().next().unwrap_or_default().to_owned();
        return Ok(SecretString::from(line));
    }
    if password_stdin {
        return read_secret_line();
    }
    if std::io::stdin().is_terminal() {
        let first = prompt_password(if first_start {
            "Choose a master password: "
        } else {
            "Master password: "
        })?;
        if first_start {
            let again = prompt_password("Repeat the master password: ")?;
            if first.expose_secret() != again.expose_secret() {
                return Err(CliError::msg("the passwords do not match"));
            }
        }
        return Ok(first);
    }
    Err(CliError::msg(
        "no master password: set AGENT_VAULT_MASTER_PASSWORD or AGENT_VAULT_MASTER_PASSWORD_FILE, pass --password-stdin, or run in a terminal",
    ))
}

/// Runs the server until SIGINT or SIGTERM.
pub(super) async fn run(args: ServerArgs) -> Result<(), CliError> {
    let flags = FlagOverrides {
        data_dir: args.data_dir,
        database_url: args.database_url,
        server: ServerFlags {
            host: args.host,
            port: args.port,
            proxy_port: args.proxy_port,
        },
        log: LogFlags {
            level: args.log_level,
        },
    };
    let config = Config::load(args.config.as_deref(), &flags)?;
    init_logging(&config);
    harden_process();
    // Files the server creates (database, WAL, setup token) are for this user only.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let first_start =
        config.database_url.is_none() && !config.data_dir.join("agent-vault.db").exists();
    let password = master_password(args.password_stdin, first_start)?;
    // Refuse a weak first password before the database is even created.
    if first_start && let Some(why) = crate::unseal::master_password_weakness(&password) {
        return Err(CliError::msg(why));
    }
    let app = App::build(config, password).await?;
    if app.admin_addr.ip().is_unspecified() && !app.public_url_configured {
        tracing::warn!(
            "the admin API listens on every interface without server.public_url: it answers to any Host header; set server.public_url (or server.allowed_hosts) to refuse DNS-rebinding requests"
        );
    }
    println!("agent-vault {} is running", env!("CARGO_PKG_VERSION"));
    println!("admin API: http://{}", app.admin_addr);
    println!("proxy:     {}", app.proxy_addr);
    if let Some(path) = &app.setup_token_file {
        println!();
        println!(
            "No owner yet. Register the first owner with the one-time setup token in {}:",
            path.display()
        );
        println!(
            "  AGENT_VAULT_SETUP_TOKEN=\"$(cat {})\" agent-vault auth register --address {} --email you@example.com",
            path.display(),
            app.public_url
        );
    }
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining open requests and tunnels");
        shutdown.cancel();
    });
    app.run().await.map_err(CliError::Serve)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
