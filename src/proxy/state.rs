//! What every connection shares: identity, snapshots, keys, leaves, upstream clients, limits,
//! the request log, the connection and per-agent request limits, and shutdown. Built once;
//! nothing here touches the database per request.

use std::sync::{Arc, Weak};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::ProxyError;
use super::identity::Identities;
use super::upstream::Upstream;
use crate::audit::RequestLogger;
use crate::ca::LeafCache;
use crate::config::LimitsConfig;
use crate::identity::{FailureBudget, Identity};
use crate::keys::Keyring;
use crate::registry::Snapshots;

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
    /// Pooled upstream clients of each TLS client identity in use.
    pub(super) identities: Identities,
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
    pub(super) agent_http: auto::Builder<TokioExecutor>,
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
            identities: Identities::default(),
            auth_failures: FailureBudget::new(limits.auth_failures_per_minute),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            agent_http: agent_http(&limits),
            inflight: std::sync::Mutex::default(),
            limits,
            logger: parts.logger,
            shutdown: parts.shutdown,
            tasks: TaskTracker::new(),
            shutdown_grace: parts.shutdown_grace,
        })
    }

    /// The semaphore that limits the requests in flight of `actor` across its connections.
    pub(super) fn agent_slots(&self, actor: &str) -> Arc<Semaphore> {
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
    pub(super) fn check_head_size(&self, headers: &http::HeaderMap) -> Result<(), ProxyError> {
        let limit = self.limits.max_header_bytes;
        let size: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if size > limit {
            return Err(ProxyError::HeadersTooLarge(limit));
        }
        Ok(())
    }

    /// Waits for connections and tunnels to finish (after `shutdown` was cancelled).
    pub(super) async fn drain(&self) {
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

/// How intercepted connections speak HTTP to the agent (built once: every connection's task
/// would otherwise carry its own copy).
fn agent_http(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(60)));
    builder
}
