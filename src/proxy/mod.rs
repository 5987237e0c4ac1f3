//! The credential-injecting forward proxy: listener, CONNECT and TLS interception, absolute-form
//! requests, the per-request pipeline, injection and substitution, the upstream client, and the
//! responses the proxy makes itself.

mod auth;
pub(crate) mod body;
mod connect;
pub mod error;
mod inject;
mod jsonscan;
mod listener;
mod pipeline;
pub mod scrub;
mod substitute;
pub mod upstream;
mod websocket;
pub mod workers;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::RequestLogger;
use crate::ca::LeafCache;
use crate::config::LimitsConfig;
use crate::identity::{FailureBudget, Identity};
use crate::keys::Keyring;
use crate::registry::Snapshots;

pub use auth::parse_proxy_authorization;
pub use listener::serve;
pub use upstream::Upstream;
pub use workers::Workers;

/// Boxed error type of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the proxy returns and every request it sends upstream.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Everything the proxy shares across connections. Nothing here touches the database per request.
pub struct ProxyState {
    /// Token resolution (cached).
    pub identity: Identity,
    /// Per-vault snapshots.
    pub snapshots: Snapshots,
    /// The unsealed keys.
    pub keyring: Keyring,
    /// Leaf certificates per host.
    pub leaves: LeafCache,
    /// Pooled upstream clients.
    pub upstream: Upstream,
    /// Limits.
    pub limits: LimitsConfig,
    /// The request log.
    pub logger: RequestLogger,
    /// Failed authentications per client address.
    pub auth_failures: FailureBudget,
    /// Open connections, all agents together.
    pub connections: Arc<Semaphore>,
    /// Requests in flight per actor: each connection's session holds its actor's semaphore,
    /// and the entry lives as long as one does.
    inflight: std::sync::Mutex<AgentSlots>,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Every connection and tunnel task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// How long shutdown waits.
    pub shutdown_grace: Duration,
    /// How intercepted connections speak HTTP/1.1 and h2 to agents.
    agent_http: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyState").finish_non_exhaustive()
    }
}

/// The parts a [`ProxyState`] is built from.
#[allow(missing_debug_implementations)]
pub struct ProxyParts {
    /// Token resolution.
    pub identity: Identity,
    /// Snapshots.
    pub snapshots: Snapshots,
    /// Keys.
    pub keyring: Keyring,
    /// Leaf cache.
    pub leaves: LeafCache,
    /// Upstream clients.
    pub upstream: Upstream,
    /// Limits.
    pub limits: LimitsConfig,
    /// Request log.
    pub logger: RequestLogger,
    /// Shutdown signal.
    pub shutdown: CancellationToken,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
}

impl ProxyState {
    /// Builds the shared state.
    pub fn new(parts: ProxyParts) -> Arc<Self> {
        let limits = parts.limits;
        Arc::new(Self {
            identity: parts.identity,
            snapshots: parts.snapshots,
            keyring: parts.keyring,
            leaves: parts.leaves,
            upstream: parts.upstream,
            auth_failures: FailureBudget::new(limits.auth_failures_per_minute),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            agent_http: connect::agent_http(&limits),
            inflight: std::sync::Mutex::default(),
            limits,
            logger: parts.logger,
            shutdown: parts.shutdown,
            tasks: TaskTracker::new(),
            shutdown_grace: parts.shutdown_grace,
        })
    }

    /// The semaphore that limits the requests in flight of `actor` across its connections.
    fn agent_slots(&self, actor: &str) -> Arc<Semaphore> {
        let mut slots = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(live) = slots.map.get(actor).and_then(Weak::upgrade) {
            return live;
        }
        // Agents without a connection left are forgotten whenever the map has doubled.
        if slots.map.len() >= slots.prune_at {
            slots.map.retain(|_, sem| sem.strong_count() > 0);
            slots.prune_at = (2 * slots.map.len()).max(1024);
        }
        let sem = Arc::new(Semaphore::new(
            self.limits.max_concurrent_requests_per_agent,
        ));
        slots.map.insert(actor.to_owned(), Arc::downgrade(&sem));
        sem
    }

    /// Refuses a head over `limits.max_header_bytes`: hyper only checks its read buffer, which one
    /// large read can overshoot.
    fn check_head_size(&self, headers: &http::HeaderMap) -> Result<(), error::ProxyError> {
        let limit = self.limits.max_header_bytes;
        let size: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if size > limit {
            return Err(error::ProxyError::HeadersTooLarge(limit));
        }
        Ok(())
    }

    /// Waits for connections and tunnels to finish (after `shutdown` was cancelled).
    async fn drain(&self) {
        self.tasks.close();
        if tokio::time::timeout(self.shutdown_grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.tasks.len(),
                "shutdown grace period over; closing remaining proxy connections"
            );
        }
    }
}

/// The per-agent in-flight semaphores, by actor id.
#[derive(Debug)]
struct AgentSlots {
    map: std::collections::HashMap<String, Weak<Semaphore>>,
    prune_at: usize,
}

impl Default for AgentSlots {
    fn default() -> Self {
        Self {
            map: std::collections::HashMap::new(),
            prune_at: 1024,
        }
    }
}

/// A request in flight on a connection (until its response head is ready); dropping it ends it.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// When a connection last did something, and how many requests it has in flight.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    inflight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn now() -> u64 {
        u64::try_from(crate::domain::now_ms()).unwrap_or(0)
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.last_ms.store(Self::now(), Ordering::Relaxed);
        Busy(self.clone())
    }

    fn end(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        self.last_ms.store(Self::now(), Ordering::Relaxed);
    }

    pub(crate) fn touch(&self) {
        self.last_ms.store(Self::now(), Ordering::Relaxed);
    }

    pub(crate) fn idle_for(&self, limit: Duration) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        self.inflight.load(Ordering::Relaxed) == 0
            && Self::now().saturating_sub(last)
                > u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)
    }
}
