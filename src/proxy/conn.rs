//! One connection's life: where its requests go ([`Target`]), its place under the connection
//! limit ([`Slot`]), what it has been doing ([`Activity`], [`Counted`]), and the two things that
//! end it from outside: the token's revocation or expiry ([`revoked`]) and idleness ([`idle`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;

use super::auth::{self, Session};
use super::state::ProxyState;
use crate::domain::now_ms;
use crate::policy::{Authority, parse_authority};

/// Where requests on this connection go.
#[derive(Debug)]
pub(super) struct Target {
    /// The canonical authority (from CONNECT, or from the absolute-form URI).
    pub authority: Authority,
    /// Upstream scheme is https.
    pub https: bool,
    /// The TLS server name the agent sent disagreed with the CONNECT authority.
    pub sni_mismatch: bool,
    /// The request came in absolute form on the proxy's own connection.
    pub absolute_form: bool,
    /// The authority as a `Host` header writes it (the port only when not the default): the
    /// form nearly every request claims, so most checks are one comparison.
    pub(super) host_header: String,
    /// The authority as the request log writes it, formatted once per connection.
    pub(super) logged: String,
}

impl Target {
    /// Where requests go: the canonical authority, over https or not.
    pub(super) fn new(
        authority: Authority,
        https: bool,
        sni_mismatch: bool,
        absolute_form: bool,
    ) -> Self {
        let host_header = authority.host_header(if https { 443 } else { 80 });
        let logged = authority.to_string();
        Self {
            logged,
            authority,
            https,
            sni_mismatch,
            absolute_form,
            host_header,
        }
    }

    /// Whether `claimed` (a `Host` header or URI authority) names this target.
    pub(super) fn names(&self, claimed: &[u8]) -> bool {
        claimed == self.host_header.as_bytes() || self.parses_to_target(claimed)
    }

    /// Whether `claimed`, parsed on its own, is this target's authority.
    pub(super) fn parses_to_target(&self, claimed: &[u8]) -> bool {
        let default_port = if self.https { 443 } else { 80 };
        std::str::from_utf8(claimed)
            .ok()
            .and_then(|c| parse_authority(c, Some(default_port)).ok())
            .is_some_and(|a| a == self.authority)
    }
}

/// An accepted connection's place under the global connection limit, given back when the
/// connection, and any tunnel it turned into, ends.
#[derive(Debug)]
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// Holds `permit` for one connection.
    pub(super) fn new(permit: OwnedSemaphorePermit) -> Self {
        Self { _permit: permit }
    }
}

/// A request in flight on a connection (until its response head is ready); dropping it ends it.
#[derive(Debug)]
pub(super) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// When a connection last did something, and how many requests it has in flight.
#[derive(Debug, Default)]
pub(super) struct Activity {
    inflight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn now() -> u64 {
        u64::try_from(crate::domain::now_ms()).unwrap_or(0)
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub(super) fn busy(self: &Arc<Self>) -> Busy {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.last_ms.store(Self::now(), Ordering::Relaxed);
        Busy(self.clone())
    }

    fn end(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        self.last_ms.store(Self::now(), Ordering::Relaxed);
    }

    pub(super) fn touch(&self) {
        self.last_ms.store(Self::now(), Ordering::Relaxed);
    }

    pub(super) fn idle_for(&self, limit: Duration) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        self.inflight.load(Ordering::Relaxed) == 0
            && Self::now().saturating_sub(last)
                > u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Waits until the session is revoked (or loses its vault), checking whenever tokens change, or
/// until its token expires: nothing announces an expiry, and a spliced tunnel has no requests
/// that would notice it.
pub(super) async fn revoked(state: &ProxyState, session: &Session) {
    let expiry = async {
        match session.expires_at {
            Some(at) => {
                let left = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(left)).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(expiry);
    let mut changes = state.identity.revocations();
    // A revocation between the caller's last check and this subscription would otherwise go
    // unseen until the next change: check once more now.
    changes.mark_changed();
    loop {
        tokio::select! {
            () = &mut expiry => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    expiry.as_mut().await;
                    return;
                }
                // Boxed: this future lives inside every open connection's task.
                if Box::pin(auth::recheck(state, session)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Resolves once the connection has shown no activity (reads, response frames) for `limit` and
/// no request is waiting for its response head.
pub(super) async fn idle(activity: &Activity, limit: Duration) {
    let tick = (limit / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        tokio::time::sleep(tick).await;
        if activity.idle_for(limit) {
            return;
        }
    }
}

pin_project_lite::pin_project! {
    /// Counts bytes and records activity on a spliced stream.
    pub(super) struct Counted<S> {
        #[pin]
        pub(super) inner: S,
        pub(super) read: Arc<AtomicU64>,
        pub(super) activity: Arc<Activity>,
    }
}

impl<S: AsyncRead> AsyncRead for Counted<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.fetch_add(n as u64, Ordering::Relaxed);
            this.activity.touch();
        }
        res
    }
}

impl<S: AsyncWrite> AsyncWrite for Counted<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
