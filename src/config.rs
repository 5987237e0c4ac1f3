//! The configuration tree, loaded with figment in layers (built-in defaults < `--config FILE` <
//! `AGENT_VAULT_*` environment < command-line flags) and validated into typed settings before
//! anything starts. Unknown keys and bad values stop startup with a message naming the key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::crypto::KdfParams;

/// Environment variables (after the `AGENT_VAULT_` prefix) that are top-level configuration keys.
/// Every other prefixed variable without `__` (MASTER_PASSWORD, TOKEN, ADDR, ...) belongs to
/// another part of the program and is not configuration.
const TOP_LEVEL_ENV_KEYS: &[&str] = &["data_dir", "database_url"];

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be parsed, or a key was unknown or had the wrong type.
    #[error("configuration error: {}", describe_figment(.0))]
    Load(#[source] Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("configuration error: `{key}`: {message}")]
    Invalid {
        /// The dotted key at fault.
        key: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
    /// Argon2 refuses the `kdf` parameters.
    #[error("configuration error: `kdf`: {0}")]
    Kdf(#[source] crate::crypto::CryptoError),
}

impl From<figment::Error> for ConfigError {
    fn from(err: figment::Error) -> Self {
        // Boxed: figment's error is over 200 bytes, and every `Result` of the CLI carries it.
        ConfigError::Load(Box::new(err))
    }
}

/// Every error figment collected, each with its key path and source layer, on one line.
fn describe_figment(err: &figment::Error) -> String {
    // figment's messages already name the key path and the source layer; keep all of them.
    let messages: Vec<String> = err
        .clone()
        .into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let source = match &e.metadata {
                Some(m) => match &m.source {
                    Some(s) => format!(" (from {} {s})", m.name),
                    None => format!(" (from {})", m.name),
                },
                None => String::new(),
            };
            if path.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("`{path}`: {}{source}", e.kind)
            }
        })
        .collect();
    messages.join("; ")
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// A database URL; its `Debug` hides any password it carries.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(pub String);

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("REDACTED"));
                write!(f, "DatabaseUrl({u})")
            }
            Ok(u) => write!(f, "DatabaseUrl({u})"),
            Err(_) => f.write_str("DatabaseUrl(<unparsable>)"),
        }
    }
}

/// The whole configuration tree.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the SQLite database, the setup token and nothing secret in the clear live.
    pub data_dir: PathBuf,
    /// `postgres://...` to use Postgres instead of the embedded SQLite database.
    pub database_url: Option<DatabaseUrl>,
    /// Listeners and public address.
    pub server: ServerConfig,
    /// How the proxy reaches upstream services.
    pub upstream: UpstreamConfig,
    /// Size, count and time limits.
    pub limits: LimitsConfig,
    /// Diagnostic logging.
    pub log: LogConfig,
    /// Argon2id cost for the master password and user passwords.
    pub kdf: KdfParams,
    /// Lifetimes of the tokens the server issues.
    pub tokens: TokensConfig,
    /// The per-request log of proxied traffic.
    pub request_log: RequestLogConfig,
    /// Agent proposals.
    pub proposals: ProposalsConfig,
    /// Optional email notifications to approvers.
    pub smtp: SmtpConfig,
    /// Credential versions.
    pub credentials: CredentialsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            database_url: None,
            server: ServerConfig::default(),
            upstream: UpstreamConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            kdf: KdfParams::default(),
            tokens: TokensConfig::default(),
            request_log: RequestLogConfig::default(),
            proposals: ProposalsConfig::default(),
            smtp: SmtpConfig::default(),
            credentials: CredentialsConfig::default(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".agent-vault")
}

/// More proxy workers than this is a typo, not a machine.
const MAX_PROXY_THREADS: usize = 1024;

/// Listeners.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the admin API and web UI bind to.
    pub host: IpAddr,
    /// Admin API port (0 picks a free port and prints it).
    pub port: u16,
    /// Address the proxy binds to (defaults to `host`).
    pub proxy_host: Option<IpAddr>,
    /// Proxy port (0 picks a free port and prints it).
    pub proxy_port: u16,
    /// The base URL people use to reach the admin API (for approval and invite links).
    pub public_url: Option<String>,
    /// Host headers the admin API and pages answer to, besides the bound address, `localhost`
    /// and the host of `public_url` (a defence against DNS rebinding). Empty on a non-loopback
    /// bind without `public_url` means any.
    pub allowed_hosts: Vec<String>,
    /// How long graceful shutdown waits for open requests and tunnels.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Proxy worker threads, each serving its share of agent connections (0: one per core).
    pub proxy_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 14321,
            proxy_host: None,
            proxy_port: 14322,
            public_url: None,
            allowed_hosts: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
            proxy_threads: 0,
        }
    }
}

/// Which roots upstream TLS trusts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Roots {
    /// The operating system's trust store.
    Native,
    /// Mozilla's roots compiled into the binary.
    Webpki,
    /// Only `extra_ca_files`.
    None,
}

/// Upstream connections.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Base trust roots.
    pub roots: Roots,
    /// Extra PEM files of CA certificates to trust.
    pub extra_ca_files: Vec<PathBuf>,
    /// Static name overrides: `"host:port"` (or `"*.suffix:port"`) to `"ip:port"`.
    pub resolve: BTreeMap<String, String>,
    /// Allow loopback, private, link-local and CGNAT destinations (metadata stays blocked).
    pub allow_private_ranges: bool,
    /// Ranges allowed despite the SSRF guard (metadata addresses stay blocked).
    pub network_allowlist: Vec<IpNet>,
    /// TCP connect timeout per address.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// TLS handshake timeout.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// How long to wait for the response head after the request was sent.
    #[serde(with = "humantime_serde")]
    pub response_header_timeout: Duration,
    /// How long an idle pooled connection is kept.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per upstream authority.
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            roots: Roots::Native,
            extra_ca_files: Vec::new(),
            resolve: BTreeMap::new(),
            allow_private_ranges: false,
            network_allowlist: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            response_header_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
        }
    }
}

/// Size, count and time limits. Every resource an agent can make the proxy hold is capped here.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body forwarded upstream.
    pub max_request_body_bytes: u64,
    /// Largest response body passed back to the agent (0 = unlimited).
    pub max_response_body_bytes: u64,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// Most headers in one request.
    pub max_headers: usize,
    /// Largest body buffered for a declared body substitution.
    pub max_substitution_body_bytes: usize,
    /// Largest admin API request body.
    pub max_admin_body_bytes: usize,
    /// Most credentials one request may set or delete (API and CLI).
    pub max_credentials_per_request: usize,
    /// Most credentials one vault may hold (direct sets and approved proposals).
    pub max_credentials_per_vault: usize,
    /// Open proxy connections, all agents together.
    pub max_connections: usize,
    /// Requests in flight per agent token; more answer 429 `rate_limited`.
    pub max_concurrent_requests_per_agent: usize,
    /// Failed proxy authentications per client address per minute before 429.
    pub auth_failures_per_minute: u32,
    /// Failed password checks (logins, approvals) of all addresses together per minute; beyond
    /// it every password check answers 503 `busy` until the minute ends.
    pub login_failures_per_minute: u32,
    /// Argon2 memory in use at once, all password checks together (bytes); with one run per
    /// core at most, callers beyond it wait briefly, then get 503 `busy`.
    pub kdf_memory_budget: u64,
    /// Time allowed to send the CONNECT or request head.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time allowed for the agent's TLS handshake inside a CONNECT.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// An intercepted connection with no request for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A spliced tunnel with no bytes either way for this long is closed.
    #[serde(with = "humantime_serde")]
    pub tunnel_idle_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 1 << 30,
            max_response_body_bytes: 0,
            max_header_bytes: 64 * 1024,
            max_headers: 128,
            max_substitution_body_bytes: 1 << 20,
            max_admin_body_bytes: 1 << 20,
            max_credentials_per_request: 100,
            max_credentials_per_vault: 1000,
            max_connections: 16_384,
            max_concurrent_requests_per_agent: 256,
            auth_failures_per_minute: 30,
            login_failures_per_minute: 300,
            kdf_memory_budget: 256 << 20,
            header_read_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            tunnel_idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (`text` is accepted too).
    #[serde(alias = "text")]
    Pretty,
    /// One JSON object per line, the start banner included.
    Json,
}

/// Diagnostic logging.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, or directives such as `agent_vault=debug,info`.
    pub level: String,
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// One info line per proxied request (vault, actor, method, host, service, status,
    /// latency; never a path, query string or header value).
    pub requests: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Pretty,
            requests: false,
        }
    }
}

/// Token lifetimes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Lifetime of a human login session (CLI and API).
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Lifetime of a web page login (its cookie reaches every port of the host, so it is kept
    /// short; approving also asks for the password again).
    #[serde(with = "humantime_serde")]
    pub web_session_ttl: Duration,
    /// Default lifetime of agent tokens when `--ttl` is not given (none = no expiry).
    #[serde(with = "humantime_serde")]
    pub agent_default_ttl: Option<Duration>,
    /// Default lifetime of scoped proxy tokens (`run`, `vault token`).
    #[serde(with = "humantime_serde")]
    pub scoped_default_ttl: Duration,
    /// Longest lifetime a scoped proxy token may be given.
    #[serde(with = "humantime_serde")]
    pub scoped_max_ttl: Duration,
    /// Lifetime of an invitation.
    #[serde(with = "humantime_serde")]
    pub invite_ttl: Duration,
    /// How long a token check may be answered from memory; revocation on another instance takes
    /// effect within this time.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(7 * 24 * 3600),
            web_session_ttl: Duration::from_secs(8 * 3600),
            agent_default_ttl: None,
            scoped_default_ttl: Duration::from_secs(3600),
            scoped_max_ttl: Duration::from_secs(7 * 24 * 3600),
            invite_ttl: Duration::from_secs(48 * 3600),
            cache_ttl: Duration::from_millis(500),
        }
    }
}

/// The request log.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLogConfig {
    /// Rows older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// At most this many rows are kept per vault.
    pub max_rows_per_vault: u64,
    /// Rows are written in transactions of at most this many.
    pub batch_size: usize,
    /// The writer collects rows for this long after the first one arrives, then writes them
    /// all.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Rows waiting to be written; beyond this, new rows are dropped and counted.
    pub queue_capacity: usize,
}

impl Default for RequestLogConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_rows_per_vault: 10_000,
            batch_size: 4096,
            flush_interval: Duration::from_millis(200),
            queue_capacity: 65_536,
        }
    }
}

/// Agent proposals.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProposalsConfig {
    /// How long a proposal (and its approval link) stays open.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Pending proposals allowed per vault.
    pub max_pending_per_vault: u32,
    /// Optional webhook that receives `{"approval_url": ...}` for every new proposal.
    pub webhook_url: Option<String>,
}

impl Default for ProposalsConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            max_pending_per_vault: 20,
            webhook_url: None,
        }
    }
}

/// Credential versions.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    /// How long rotated versions are kept (for rollback) before they are destroyed.
    pub version_retention: VersionRetention,
}

/// Which rotated versions are kept. A rotated version beyond either bound is destroyed (its
/// row and data key deleted) by a sweep at start and every `sweep_interval`; the active
/// version and revoked versions are never swept.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VersionRetention {
    /// At most this many rotated versions per credential (0: none is kept).
    pub max_versions: u32,
    /// A rotated version is kept at most this long after it was replaced.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How often the sweep runs.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for VersionRetention {
    fn default() -> Self {
        Self {
            max_versions: 10,
            max_age: Duration::from_secs(30 * 24 * 3600),
            sweep_interval: Duration::from_secs(3600),
        }
    }
}

/// A secret configuration value (an SMTP password): never printed, never serialized back.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct ConfigSecret(pub String);

impl fmt::Debug for ConfigSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfigSecret([REDACTED])")
    }
}

impl Serialize for ConfigSecret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[REDACTED]")
    }
}

/// How to secure the SMTP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// STARTTLS required (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS (a local relay only).
    None,
}

/// Email notifications of new proposals to the vault's approvers (off unless `host` is set).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// SMTP server host; unset disables email.
    pub host: Option<String>,
    /// SMTP port.
    pub port: u16,
    /// `starttls`, `tls` or `none`.
    pub security: SmtpSecurity,
    /// Login user name, if the server needs one.
    pub username: Option<String>,
    /// Login password (prefer `password_file` or AGENT_VAULT_SMTP__PASSWORD).
    pub password: Option<ConfigSecret>,
    /// A file whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// The sender address.
    pub from: String,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: None,
            port: 587,
            security: SmtpSecurity::Starttls,
            username: None,
            password: None,
            password_file: None,
            from: "agent-vault@localhost".into(),
        }
    }
}

/// Overrides from command-line flags; `None` leaves the lower layers in charge.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlagOverrides {
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--database-url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// `--host`, `--port`, `--proxy-port`.
    #[serde(skip_serializing_if = "ServerFlags::is_empty")]
    pub server: ServerFlags,
    /// `--log-level`.
    #[serde(skip_serializing_if = "LogFlags::is_empty")]
    pub log: LogFlags,
}

/// Listener flags.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServerFlags {
    /// `--host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
    /// `--port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `--proxy-port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_port: Option<u16>,
}

impl ServerFlags {
    fn is_empty(&self) -> bool {
        self.host.is_none() && self.port.is_none() && self.proxy_port.is_none()
    }
}

/// Logging flags.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LogFlags {
    /// `--log-level`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

impl LogFlags {
    fn is_empty(&self) -> bool {
        self.level.is_none()
    }
}

impl Config {
    /// Loads every layer from the real environment and validates the result.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<Self, ConfigError> {
        Self::figment(file, flags)?.extract::<Config>()?.validated()
    }

    /// The layered figment, exposed so tests can inject their own environment.
    pub fn figment(file: Option<&Path>, flags: &FlagOverrides) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL"])
                    .map(|_| "database_url".into()),
            )
            .merge(
                Env::prefixed("AGENT_VAULT_")
                    .filter(|key| {
                        let key = key.as_str();
                        key.contains("__")
                            || TOP_LEVEL_ENV_KEYS
                                .iter()
                                .any(|k| key.eq_ignore_ascii_case(k))
                    })
                    .split("__"),
            )
            .merge(Serialized::defaults(flags));
        Ok(figment)
    }

    /// Checks cross-field rules and values serde cannot express.
    pub fn validated(mut self) -> Result<Self, ConfigError> {
        if let Some(url) = &self.database_url {
            if url.0.trim().is_empty() {
                self.database_url = None;
            } else if !(url.0.starts_with("postgres://") || url.0.starts_with("postgresql://")) {
                return Err(invalid(
                    "database_url",
                    "only postgres:// or postgresql:// URLs are supported; leave it unset for the embedded SQLite database",
                ));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if let Ok(stripped) = self.data_dir.strip_prefix("~") {
            self.data_dir = default_data_dir()
                .parent()
                .map(|home| home.join(stripped))
                .unwrap_or_else(|| stripped.to_path_buf());
        }
        if self.upstream.roots == Roots::None && self.upstream.extra_ca_files.is_empty() {
            return Err(invalid(
                "upstream.roots",
                "\"none\" trusts nothing unless upstream.extra_ca_files lists at least one CA file",
            ));
        }
        for (i, file) in self.upstream.extra_ca_files.iter().enumerate() {
            if !file.is_file() {
                return Err(invalid(
                    &format!("upstream.extra_ca_files[{i}]"),
                    format!("{} is not a readable file", file.display()),
                ));
            }
        }
        for (from, to) in &self.upstream.resolve {
            parse_resolve_key(from)
                .map_err(|m| invalid(&format!("upstream.resolve.\"{from}\""), m))?;
            to.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    &format!("upstream.resolve.\"{from}\""),
                    format!("{to:?} is not an ip:port address"),
                )
            })?;
        }
        if self.server.proxy_threads > MAX_PROXY_THREADS {
            return Err(invalid(
                "server.proxy_threads",
                format!("at most {MAX_PROXY_THREADS} (0 means one per core)"),
            ));
        }
        if let Some(url) = &self.server.public_url {
            let parsed = url::Url::parse(url)
                .map_err(|e| invalid("server.public_url", format!("{url:?} is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid(
                    "server.public_url",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if let Some(url) = &self.proposals.webhook_url {
            let parsed = url::Url::parse(url).map_err(|e| {
                invalid(
                    "proposals.webhook_url",
                    format!("{url:?} is not a URL: {e}"),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid(
                    "proposals.webhook_url",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if self.smtp.host.is_some() {
            if crate::domain::Email::parse(&self.smtp.from).is_err() {
                return Err(invalid(
                    "smtp.from",
                    format!("{:?} is not an email address", self.smtp.from),
                ));
            }
            if self.smtp.password.is_some() && self.smtp.password_file.is_some() {
                return Err(invalid(
                    "smtp.password_file",
                    "give either smtp.password or smtp.password_file, not both",
                ));
            }
            if let Some(file) = &self.smtp.password_file
                && !file.is_file()
            {
                return Err(invalid(
                    "smtp.password_file",
                    format!("{} is not a readable file", file.display()),
                ));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", format!("{:?}: {e}", self.log.level)))?;
        self.kdf.validate().map_err(ConfigError::Kdf)?;
        if self.limits.kdf_memory_budget < u64::from(self.kdf.memory_kib) * 1024 {
            return Err(invalid(
                "limits.kdf_memory_budget",
                format!(
                    "must be at least kdf.memory_kib ({} KiB = {} bytes): one password check needs that much",
                    self.kdf.memory_kib,
                    u64::from(self.kdf.memory_kib) * 1024
                ),
            ));
        }
        if self.limits.login_failures_per_minute == 0 {
            return Err(invalid(
                "limits.login_failures_per_minute",
                "must be greater than zero",
            ));
        }
        let positive: [(&str, u64); 7] = [
            (
                "limits.max_request_body_bytes",
                self.limits.max_request_body_bytes,
            ),
            (
                "limits.max_header_bytes",
                self.limits.max_header_bytes as u64,
            ),
            ("limits.max_headers", self.limits.max_headers as u64),
            ("limits.max_connections", self.limits.max_connections as u64),
            (
                "limits.max_concurrent_requests_per_agent",
                self.limits.max_concurrent_requests_per_agent as u64,
            ),
            ("request_log.batch_size", self.request_log.batch_size as u64),
            (
                "request_log.queue_capacity",
                self.request_log.queue_capacity as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        let retention = &self.credentials.version_retention;
        if retention.max_age.is_zero() {
            return Err(invalid(
                "credentials.version_retention.max_age",
                "must be greater than zero",
            ));
        }
        if retention.sweep_interval < Duration::from_millis(10) {
            return Err(invalid(
                "credentials.version_retention.sweep_interval",
                "must be at least 10ms",
            ));
        }
        if self.limits.max_credentials_per_request == 0 {
            return Err(invalid(
                "limits.max_credentials_per_request",
                "must be greater than zero",
            ));
        }
        if self.limits.max_credentials_per_vault < self.limits.max_credentials_per_request {
            return Err(invalid(
                "limits.max_credentials_per_vault",
                "must be at least limits.max_credentials_per_request",
            ));
        }
        if self.limits.max_header_bytes < 8192 {
            return Err(invalid("limits.max_header_bytes", "must be at least 8192"));
        }
        if self.tokens.scoped_default_ttl > self.tokens.scoped_max_ttl {
            return Err(invalid(
                "tokens.scoped_default_ttl",
                "must not exceed tokens.scoped_max_ttl",
            ));
        }
        if self.tokens.cache_ttl > Duration::from_secs(1) {
            return Err(invalid(
                "tokens.cache_ttl",
                "must be at most 1s so that revoked tokens stop working within a second",
            ));
        }
        Ok(self)
    }

    /// The proxy's bind address.
    pub fn proxy_host(&self) -> IpAddr {
        self.server.proxy_host.unwrap_or(self.server.host)
    }
}

/// A resolve override key: an exact `host:port` or a `*.suffix:port` wildcard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveKey {
    /// The lower-case host or suffix (without `*.`).
    pub host: String,
    /// Whether `host` is a suffix that matches any one-or-more-label prefix.
    pub wildcard: bool,
    /// The port.
    pub port: u16,
}

/// Parses a key of `upstream.resolve`.
pub fn parse_resolve_key(key: &str) -> Result<ResolveKey, String> {
    let (host, port) = key
        .rsplit_once(':')
        .ok_or_else(|| format!("{key:?} must be host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{key:?} has an invalid port"))?;
    let (host, wildcard) = match host.strip_prefix("*.") {
        Some(suffix) => (suffix, true),
        None => (host, false),
    };
    if host.is_empty() || host.contains('*') {
        return Err(format!("{key:?} must be host:port or *.suffix:port"));
    }
    Ok(ResolveKey {
        host: host.to_ascii_lowercase(),
        wildcard,
        port,
    })
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use figment::Jail;

    use super::*;

    fn load_in_jail(jail: &Jail, toml: Option<&str>) -> Result<Config, ConfigError> {
        let file = toml.map(|t| {
            jail.create_file("av.toml", t).unwrap();
            PathBuf::from("av.toml")
        });
        Config::figment(file.as_deref(), &FlagOverrides::default())?
            .extract::<Config>()?
            .validated()
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let c = Config::default().validated().unwrap();
        assert_eq!(c.server.port, 14321);
        assert_eq!(c.server.proxy_port, 14322);
        assert_eq!(c.server.host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.upstream.roots, Roots::Native);
        assert!(!c.upstream.allow_private_ranges);
        assert_eq!(c.log.format, LogFormat::Pretty);
    }

    #[test]
    fn layers_override_in_order() {
        Jail::expect_with(|jail| {
            jail.set_env("AGENT_VAULT_UPSTREAM__ALLOW_PRIVATE_RANGES", "true");
            jail.set_env("AGENT_VAULT_LOG__FORMAT", "json");
            jail.set_env("AGENT_VAULT_MASTER_PASSWORD", "not config");
            jail.set_env("AGENT_VAULT_TOKEN", "not config");
            let c = load_in_jail(
                jail,
                Some("[server]\nport = 1000\n[log]\nformat = \"pretty\"\nlevel = \"debug\"\n"),
            )
            .unwrap();
            assert_eq!(c.server.port, 1000);
            assert!(c.upstream.allow_private_ranges);
            assert_eq!(c.log.format, LogFormat::Json, "env beats file");
            assert_eq!(c.log.level, "debug");
            let flags = FlagOverrides {
                server: ServerFlags {
                    port: Some(0),
                    ..Default::default()
                },
                ..Default::default()
            };
            jail.create_file("b.toml", "[server]\nport = 1000\n")?;
            let c = Config::figment(Some(Path::new("b.toml")), &flags)
                .unwrap()
                .extract::<Config>()
                .unwrap();
            assert_eq!(c.server.port, 0, "flags beat file");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_named() {
        Jail::expect_with(|jail| {
            let err = load_in_jail(jail, Some("[upstream]\nrootz = \"native\"\n")).unwrap_err();
            assert!(err.to_string().contains("rootz"), "{err}");
            let err = load_in_jail(jail, Some("bogus = 1\n")).unwrap_err();
            assert!(err.to_string().contains("bogus"), "{err}");
            jail.set_env("AGENT_VAULT_LIMITS__MAX_BODY", "1");
            let err = load_in_jail(jail, None).unwrap_err();
            assert!(err.to_string().contains("max_body"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_named() {
        Jail::expect_with(|jail| {
            let cases = [
                ("[upstream]\nroots = \"system\"\n", "roots"),
                ("[upstream]\nroots = \"none\"\n", "upstream.roots"),
                (
                    "[upstream.resolve]\n\"api.example.test\" = \"127.0.0.1:1\"\n",
                    "upstream.resolve",
                ),
                (
                    "[upstream.resolve]\n\"api.example.test:443\" = \"localhost\"\n",
                    "upstream.resolve",
                ),
                (
                    "[upstream]\nnetwork_allowlist = [\"10.0.0.0/33\"]\n",
                    "network_allowlist",
                ),
                (
                    "[upstream]\nconnect_timeout = \"soon\"\n",
                    "connect_timeout",
                ),
                ("[log]\nlevel = \"loud=[\"\n", "log.level"),
                ("[server]\nport = 70000\n", "port"),
                ("database_url = \"mysql://x\"\n", "database_url"),
                (
                    "[kdf]\nmemory_kib = 1\niterations = 1\nparallelism = 1\n",
                    "kdf",
                ),
                ("[tokens]\ncache_ttl = \"5s\"\n", "tokens.cache_ttl"),
                (
                    "[limits]\nmax_credentials_per_request = 0\n",
                    "limits.max_credentials_per_request",
                ),
                (
                    "[limits]\nmax_credentials_per_vault = 10\n",
                    "limits.max_credentials_per_vault",
                ),
                ("[server]\nproxy_threads = 5000\n", "server.proxy_threads"),
                ("[server]\nproxy_threads = -1\n", "proxy_threads"),
                (
                    "[limits]\nkdf_memory_budget = 1048576\n",
                    "limits.kdf_memory_budget",
                ),
                (
                    "[limits]\nlogin_failures_per_minute = 0\n",
                    "limits.login_failures_per_minute",
                ),
            ];
            for (toml, key) in cases {
                let err = load_in_jail(jail, Some(toml)).unwrap_err().to_string();
                assert!(err.contains(key), "{toml}: {err}");
            }
            Ok(())
        });
    }

    #[test]
    fn resolve_keys_accept_wildcards() {
        assert_eq!(
            parse_resolve_key("*.Example.test:443").unwrap(),
            ResolveKey {
                host: "example.test".into(),
                wildcard: true,
                port: 443
            }
        );
        assert!(parse_resolve_key("a.*.test:443").is_err());
        assert!(parse_resolve_key("example.test").is_err());
    }

    #[test]
    fn database_url_debug_hides_password() {
        let url = DatabaseUrl("postgres://user:hunter2@db/av".into());
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    #[test]
    fn example_file_documents_every_key_and_loads() {
        let example = include_str!("../config/agent-vault.example.toml");
        let parsed: Config = Figment::from(Toml::string(example)).extract().unwrap();
        parsed.validated().unwrap();
        let defaults = toml_keys(&serde_json::to_value(Config::default()).unwrap(), "");
        for key in defaults {
            assert!(
                example.contains(key.rsplit('.').next().unwrap_or(&key)),
                "example misses {key}"
            );
        }
    }

    fn toml_keys(v: &serde_json::Value, prefix: &str) -> Vec<String> {
        match v {
            serde_json::Value::Object(map) => map
                .iter()
                .flat_map(|(k, v)| {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    let mut keys = vec![key.clone()];
                    keys.extend(toml_keys(v, &key));
                    keys
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}
