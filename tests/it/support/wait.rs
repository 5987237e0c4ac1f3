//! Bounded waiting: the one way tests wait for something the server does in the background
//! (a log row written, a webhook called, a slot freed), instead of sleeping a fixed time.

use std::time::Duration;

/// How often [`eventually`] asks again: short enough not to slow a test, long enough not to
/// spin against the server.
const POLL: Duration = Duration::from_millis(20);

/// Asks `attempt` until it answers `Some`, for at most `limit` in all (an attempt that hangs
/// counts against the limit too); `None` when time ran out, for the caller to fail with its
/// own message. The attempt may borrow and change the caller's state (`async || { ... }`).
pub(crate) async fn eventually<T>(
    limit: Duration,
    mut attempt: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    tokio::time::timeout(limit, async {
        loop {
            if let Some(done) = attempt().await {
                return done;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
    .ok()
}
