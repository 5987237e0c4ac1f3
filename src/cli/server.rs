//! `agent-vault server`: load configuration, obtain the master password, unseal, listen, and
//! stop gracefully on SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use super::output::outln;
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

/// The target of the start banner's events in JSON format: always on, and written to standard
/// output where the text banner goes.
const BANNER: &str = "agent_vault::banner";

/// Logs to standard error in `log.format`, with colour only when a person's terminal reads it.
fn init_logging(config: &Config) {
    let mut filter =
        EnvFilter::try_new(&config.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // The banner says where to connect and how to register: never filtered away, and
    // `log.requests` asks for its lines whatever the level.
    let always = [
        Some(BANNER),
        config
            .log
            .requests
            .then_some(crate::audit::REQUEST_LINE_TARGET),
    ];
    for target in always.into_iter().flatten() {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let writer = std::io::stdout
        .with_filter(|meta: &tracing::Metadata<'_>| meta.target() == BANNER)
        .or_else(std::io::stderr);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Says where the server listens and, until an owner exists, how to register one: as text
/// lines on standard output, or, in JSON format, as log events there.
fn banner(app: &App, format: LogFormat) -> Result<(), CliError> {
    let version = env!("CARGO_PKG_VERSION");
    let admin = format!("http://{}", app.admin_addr);
    let setup = app.setup_token_file.as_ref().map(|path| {
        (
            path.display().to_string(),
            format!(
                "AGENT_VAULT_SETUP_TOKEN=\"$(cat {})\" agent-vault auth register --address {} --email you@example.com",
                path.display(),
                app.public_url
            ),
        )
    });
    let login = format!(
        "agent-vault auth login --address {} --email you@example.com",
        app.public_url
    );
    if format == LogFormat::Json {
        tracing::info!(target: BANNER, version, admin_api = %admin, proxy = %app.proxy_addr, "agent-vault is running");
        match &setup {
            Some((file, command)) => tracing::info!(
                target: BANNER,
                setup_token_file = %file,
                command = %command,
                "no owner yet: register the first owner with the one-time setup token in the file"
            ),
            None => {
                tracing::info!(target: BANNER, command = %login, "an owner is registered: log in")
            }
        }
        return Ok(());
    }
    outln!("agent-vault {version} is running")?;
    outln!("admin API: {admin}")?;
    outln!("proxy:     {}", app.proxy_addr)?;
    outln!()?;
    match &setup {
        Some((file, command)) => {
            outln!(
                "No owner yet. Register the first owner with the one-time setup token in {file}:"
            )?;
            outln!("  {command}")
        }
        None => outln!("An owner is registered. Log in with:\n  {login}"),
    }
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

/// Loads the configuration, starts logging, and runs the server until SIGINT or SIGTERM.
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
    let format = config.log.format;
    match serve(config, args.password_stdin).await {
        // In JSON format every line is JSON, the reason the server stopped included.
        Err(e) if format == LogFormat::Json && !matches!(e, CliError::Logged) => {
            tracing::error!(error = %e, "the server stopped");
            Err(CliError::Logged)
        }
        other => other,
    }
}

/// Unseals, listens, prints the banner and serves until SIGINT or SIGTERM.
async fn serve(config: Config, password_stdin: bool) -> Result<(), CliError> {
    harden_process();
    // Files the server creates (database, WAL, setup token) are for this user only.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let first_start =
        config.database_url.is_none() && !config.data_dir.join("agent-vault.db").exists();
    let password = master_password(password_stdin, first_start)?;
    // Refuse a weak first password before the database is even created.
    if first_start && let Some(why) = crate::unseal::master_password_weakness(&password) {
        return Err(CliError::msg(why));
    }
    let format = config.log.format;
    let app = App::build(config, password).await?;
    if app.admin_addr.ip().is_unspecified() && !app.public_url_configured {
        tracing::warn!(
            "the admin API listens on every interface without server.public_url: it answers to any Host header; set server.public_url (or server.allowed_hosts) to refuse DNS-rebinding requests"
        );
    }
    // The banner is for whoever started the server; an unwritable stdout must not stop it
    // (the setup token is in its file either way).
    match banner(&app, format) {
        Ok(()) | Err(CliError::StdoutClosed) => {}
        Err(e) => tracing::warn!(error = %e, "could not print the start banner"),
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
