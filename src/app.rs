//! The application: `App::build` opens the store, unseals, binds both listeners (port 0 picks a
//! free one), wires every part together, and `App::run` serves until shutdown, then drains.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminInner, AdminState};
use crate::audit::{LogWriter, RequestLogger};
use crate::ca::{CaError, CertificateAuthority};
use crate::config::Config;
use crate::crypto::{Aad, CryptoError, KDF_QUEUE_WAIT, KdfGate, PasswordHasher, TokenKind};
use crate::identity::{FailureBudget, Identity};

/// Wrong passwords an approver may enter on approval pages within a minute before further tries
/// wait: enough for typos, far too few to guess a password with a stolen session cookie.
const CONFIRM_FAILURES_PER_MINUTE: u32 = 5;
use crate::keys::Keyring;
use crate::manage::master_key::settle;
use crate::netguard::NetGuard;
use crate::notify::{Notifier, NotifyError};
use crate::proxy::{self, ProxyParts, ProxyState, Upstream};
use crate::registry::Snapshots;
use crate::store::changes::{self, Change};
use crate::store::{Backend, Store, StoreError};
use crate::unseal::{self, UnsealError};

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The database could not be opened or migrated.
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    /// The master password is wrong or the keys could not be unsealed.
    #[error("{0}")]
    Unseal(#[from] UnsealError),
    /// The CA could not be loaded or created.
    #[error("cannot load the proxy CA: {0}")]
    Ca(#[from] CaError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Upstream TLS settings are unusable.
    #[error("configuration error: {0}")]
    Upstream(#[from] proxy::upstream::TrustError),
    /// The proposal notification settings (webhook client, SMTP) are unusable.
    #[error("configuration error: {0}")]
    Notify(#[from] NotifyError),
    /// The setup token file could not be written.
    #[error("cannot write {path}: {source}")]
    SetupFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A cryptographic operation failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The proxy's worker threads could not start.
    #[error(transparent)]
    Workers(#[from] proxy::workers::WorkerError),
}

/// How long shutdown waits for the request log to be written out (a store that is down gets
/// three tries per batch).
const REQUEST_LOG_FINISH: Duration = Duration::from_secs(10);

/// A built, listening application.
#[allow(missing_debug_implementations)]
pub struct App {
    admin_listener: TcpListener,
    proxy_listener: TcpListener,
    admin_state: AdminState,
    proxy_state: Arc<ProxyState>,
    workers: proxy::Workers,
    log_writer: LogWriter,
    shutdown: CancellationToken,
    store: Store,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// The setup token file, when no owner exists yet.
    pub setup_token_file: Option<PathBuf>,
    /// The base URL for links.
    pub public_url: String,
    /// Whether `server.public_url` was configured (rather than derived).
    pub public_url_configured: bool,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

/// Makes sure the database holds its one setup token and this instance's data directory has
/// it (0600). Instances sharing a database all write the same token: it is kept sealed under
/// the DEK beside its hash, so a second instance starting never invalidates the first's.
async fn ensure_setup_token(
    store: &Store,
    keyring: &Keyring,
    data_dir: &Path,
) -> Result<PathBuf, AppError> {
    let path = data_dir.join("setup-token");
    let hash_of = |t: &SecretString| hex::encode(keyring.token_hasher().hash(t).0);
    let seal_token =
        |t: &SecretString| keyring.seal_instance(&Aad::setup_token(), t.expose_secret().as_bytes());
    // Two instances may race to create or replace it; each race has one winner, and the loser
    // reads the winner's token on its next turn.
    for _ in 0..3 {
        let token = match store.setup_token().await? {
            Some(stored) => {
                let opened = stored
                    .sealed
                    .as_deref()
                    .and_then(|sealed| open_setup_token(keyring, sealed))
                    .filter(|t| hash_of(t) == stored.hash_hex);
                match opened {
                    Some(token) => token,
                    None => {
                        // Made before tokens were kept sealed (or its sealed copy does not
                        // open): keep it if this instance's file holds it, else replace it.
                        let token = match std::fs::read_to_string(&path)
                            .ok()
                            .map(|t| SecretString::from(t.trim().to_owned()))
                            .filter(|t| hash_of(t) == stored.hash_hex)
                        {
                            Some(token) => token,
                            None => TokenKind::Setup.generate()?,
                        };
                        let sealed = seal_token(&token)?;
                        if !store
                            .replace_setup_token(&stored.hash_hex, &hash_of(&token), &sealed)
                            .await?
                        {
                            continue;
                        }
                        token
                    }
                }
            }
            None => {
                let token = TokenKind::Setup.generate()?;
                if !store
                    .claim_setup_token(&hash_of(&token), &seal_token(&token)?)
                    .await?
                {
                    continue;
                }
                token
            }
        };
        write_setup_token_file(&path, data_dir, &token)?;
        return Ok(path);
    }
    Err(AppError::Store(StoreError::Conflict("setup token")))
}

fn open_setup_token(keyring: &Keyring, sealed: &[u8]) -> Option<SecretString> {
    let bytes = keyring.open_instance(&Aad::setup_token(), sealed).ok()?;
    let text = std::str::from_utf8(bytes.expose_secret()).ok()?;
    Some(SecretString::from(text.to_owned()))
}

/// Writes the token to `path` (0600), unless the file already holds it.
fn write_setup_token_file(
    path: &Path,
    data_dir: &Path,
    token: &SecretString,
) -> Result<(), AppError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::read_to_string(path).is_ok_and(|t| t.trim() == token.expose_secret()) {
        return Ok(());
    }
    let io = |source| AppError::SetupFile {
        path: path.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(data_dir)
        .map_err(io)?;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(token.expose_secret().as_bytes())
        .map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

impl App {
    /// Opens, unseals, binds and wires. Nothing listens if unsealing fails.
    pub async fn build(config: Config, password: SecretString) -> Result<Self, AppError> {
        let config = Arc::new(config);
        let store = Store::open(
            &config.data_dir,
            config.database_url.as_ref().map(|u| u.0.as_str()),
        )
        .await?;
        // One gate for every Argon2 run of this process: unsealing, logins, approvals, sign-ups.
        let kdf_gate = KdfGate::new(config.limits.kdf_memory_budget, KDF_QUEUE_WAIT);
        tracing::debug!(
            concurrent = kdf_gate.concurrency(config.kdf.memory_kib),
            "password checks that may run at once"
        );
        let (keyring, initialized) =
            unseal::unseal_or_init(&store, password, config.kdf, &kdf_gate).await?;
        if initialized {
            tracing::info!("initialized a new vault: generated and sealed the data-encryption key");
        }
        // From here on every authority row is MACed on write and checked on read (unsealing
        // bound the rows of a database from before those MACs).
        let store = store.with_authority_macs(keyring.authority_macs());
        let admin_listener = bind(SocketAddr::new(config.server.host, config.server.port)).await?;
        let proxy_listener = bind(SocketAddr::new(
            config.proxy_host(),
            config.server.proxy_port,
        ))
        .await?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| AppError::Bind {
                addr: SocketAddr::new(config.server.host, config.server.port),
                source,
            })?;
        let proxy_addr = proxy_listener
            .local_addr()
            .map_err(|source| AppError::Bind {
                addr: SocketAddr::new(config.proxy_host(), config.server.proxy_port),
                source,
            })?;

        let guard = NetGuard::new(
            config.upstream.allow_private_ranges,
            config.upstream.network_allowlist.clone(),
        );
        guard.add_own_listener(admin_addr);
        guard.add_own_listener(proxy_addr);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let ca = Arc::new(CertificateAuthority::load_or_create(&store, &keyring).await?);
        let leaves = ca.leaf_cache(provider.clone());
        let workers = proxy::workers::count(config.server.proxy_threads);
        let upstream = Upstream::new(&config.upstream, guard, provider, workers)?;
        let identity = Identity::new(
            store.clone(),
            keyring.token_hasher().clone(),
            config.tokens.cache_ttl,
        )
        .adopting(keyring.clone());
        let snapshots = Snapshots::load(store.clone(), keyring.clone()).await?;
        let shutdown = CancellationToken::new();
        let (logger, log_writer) = RequestLogger::start(
            store.clone(),
            config.request_log.clone(),
            config.log.requests,
            shutdown.clone(),
        );

        let setup_token_file = if store.count_users().await? == 0 {
            Some(ensure_setup_token(&store, &keyring, &config.data_dir).await?)
        } else {
            None
        };
        let public_url = config
            .server
            .public_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| {
                // Links must be usable: an unspecified bind address is not a place to go.
                let mut addr = admin_addr;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::IpAddr::from([127, 0, 0, 1]));
                }
                format!("http://{addr}")
            });

        let admin_state = AdminState::new(AdminInner {
            store: store.clone(),
            keyring: keyring.clone(),
            identity: identity.clone(),
            snapshots: snapshots.clone(),
            ca,
            config: config.clone(),
            passwords: PasswordHasher::new(
                config.kdf,
                kdf_gate,
                config.limits.login_failures_per_minute,
            )?,
            public_url: public_url.clone(),
            proxy_addr,
            setup_token_file: config.data_dir.join("setup-token"),
            auth_failures: FailureBudget::new(config.limits.auth_failures_per_minute),
            confirm_failures: FailureBudget::new(CONFIRM_FAILURES_PER_MINUTE),
            notifier: Notifier::new(config.proposals.webhook_url.clone(), &config.smtp)?,
        });
        let proxy_state = ProxyState::new(ProxyParts {
            identity: identity.clone(),
            snapshots: snapshots.clone(),
            keyring: keyring.clone(),
            leaves,
            upstream,
            limits: config.limits.clone(),
            logger,
            shutdown: shutdown.clone(),
            shutdown_grace: config.server.shutdown_grace,
        });

        if store.backend() == Backend::Postgres
            && let Some(url) = config.database_url.clone()
        {
            let (snaps, ident) = (snapshots.clone(), identity.clone());
            let (st, ring) = (store.clone(), keyring.clone());
            tokio::spawn(changes::listen(url.0, shutdown.clone(), move |change| {
                let (snaps, ident) = (snaps.clone(), ident.clone());
                let (st, ring) = (st.clone(), ring.clone());
                tokio::spawn(async move {
                    let result = match change {
                        Some(Change::Vault(id)) => snaps.reload(&id).await,
                        Some(Change::Tokens) => {
                            ident.invalidate_all();
                            Ok(())
                        }
                        Some(Change::InstanceKey) => {
                            if let Err(e) = settle(&st, &ring, &snaps, &ident).await {
                                tracing::error!(error = %e, "adopting the rotated instance key failed; retried periodically");
                            }
                            Ok(())
                        }
                        None => {
                            ident.invalidate_all();
                            if let Err(e) = settle(&st, &ring, &snaps, &ident).await {
                                tracing::error!(error = %e, "adopting the rotated instance key failed; retried periodically");
                            }
                            snaps.reload_all().await
                        }
                    };
                    if let Err(e) = result {
                        tracing::error!(error = %e, "applying a change from another instance failed");
                    }
                });
            }));
        }
        tokio::spawn(maintenance(
            store.clone(),
            snapshots.clone(),
            Rekeying {
                keyring: keyring.clone(),
                identity: identity.clone(),
            },
            shutdown.clone(),
        ));
        tokio::spawn(sweep_versions(
            store.clone(),
            config.credentials.version_retention.clone(),
            shutdown.clone(),
        ));

        Ok(Self {
            admin_listener,
            proxy_listener,
            admin_state,
            workers: proxy::start_workers(&proxy_state, workers)?,
            proxy_state,
            log_writer,
            shutdown,
            store,
            admin_addr,
            proxy_addr,
            setup_token_file,
            public_url_configured: config.server.public_url.is_some(),
            public_url,
        })
    }

    /// A token that stops the application when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The proxy's shared state (tests inspect the leaf cache through it).
    pub fn proxy_state(&self) -> Arc<ProxyState> {
        self.proxy_state.clone()
    }

    /// Serves both listeners until the shutdown token is cancelled, then drains open requests
    /// and tunnels (up to `server.shutdown_grace`) and flushes the request log.
    pub async fn run(self) -> Result<(), std::io::Error> {
        let hosts = admin::host_guard::AllowedHosts::new(
            self.admin_addr,
            self.admin_state.config.server.public_url.as_deref(),
            &self.admin_state.config.server.allowed_hosts,
        );
        let router = crate::web::router(self.admin_state.clone())
            .merge(admin::router(self.admin_state.clone()))
            .layer(axum::middleware::from_fn(move |req, next| {
                admin::host_guard::guard(hosts.clone(), req, next)
            }));
        let admin_task = tokio::spawn(admin::server::serve(
            self.admin_listener,
            router,
            self.shutdown.clone(),
            self.admin_state.config.limits.header_read_timeout,
            self.proxy_state.shutdown_grace,
        ));
        // serve() returns once shutdown was requested and open connections have drained.
        proxy::serve(self.proxy_listener, self.proxy_state.clone(), self.workers).await;
        let grace = self.proxy_state.shutdown_grace;
        match tokio::time::timeout(grace + Duration::from_secs(1), admin_task).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "admin server task failed"),
            Err(_) => tracing::warn!("admin server did not stop within the grace period"),
            Ok(Ok(())) => {}
        }
        drop(self.admin_state);
        drop(self.proxy_state);
        // Only now: requests that finished while the proxy drained have queued their rows.
        self.log_writer.finish(REQUEST_LOG_FINISH).await;
        self.store.close().await;
        Ok(())
    }
}

/// What the periodic settle of the instance key needs besides the store and snapshots.
struct Rekeying {
    keyring: Keyring,
    identity: Identity,
}

/// Periodic housekeeping: the instance key is settled after a rotation this instance missed,
/// overdue proposals expire (reads also treat them as expired), dead tokens are deleted a day
/// after they stop working, and every snapshot is rebuilt from the store (a safety net for a
/// rebuild that failed, or a notification that was lost).
async fn maintenance(
    store: Store,
    snapshots: Snapshots,
    rekeying: Rekeying,
    shutdown: CancellationToken,
) {
    let mut tick: u64 = 0;
    loop {
        // A rotation this instance missed (a lost notification) or could not settle.
        if tick > 0
            && let Err(e) = settle(&store, &rekeying.keyring, &snapshots, &rekeying.identity).await
        {
            tracing::warn!(error = %e, "settling the instance key failed");
        }
        if tick > 0
            && let Err(e) = snapshots.reload_all().await
        {
            tracing::warn!(error = %e, "periodic snapshot rebuild failed");
        }
        match store.expire_proposals().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "proposals expired"),
            Err(e) => tracing::warn!(error = %e, "expiring proposals failed"),
        }
        if tick.is_multiple_of(10)
            && let Err(e) = store.purge_dead_tokens(24 * 3600 * 1000).await
        {
            tracing::warn!(error = %e, "purging dead tokens failed");
        }
        tick = tick.wrapping_add(1);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Destroys rotated credential versions past `credentials.version_retention`, at start and
/// every `sweep_interval`. Rotated versions are not in any snapshot, so nothing is rebuilt.
async fn sweep_versions(
    store: Store,
    retention: crate::config::VersionRetention,
    shutdown: CancellationToken,
) {
    let max_age = i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
    loop {
        let cutoff = crate::domain::now_ms().saturating_sub(max_age);
        match store
            .sweep_credential_versions(retention.max_versions, cutoff)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                destroyed = n,
                "rotated credential versions past retention destroyed"
            ),
            Err(e) => tracing::warn!(error = %e, "destroying rotated credential versions failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(retention.sweep_interval) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
