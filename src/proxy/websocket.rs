//! WebSocket upgrades: the handshake went through the normal pipeline (so credentials were
//! attached to it); once both sides switched protocols, frames are spliced byte for byte.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Splices the agent's and the upstream's upgraded connections until either side closes or the
/// connection is idle for `idle`.
pub async fn splice(agent: OnUpgrade, upstream: OnUpgrade, idle: Duration) {
    let (agent, upstream) = match tokio::try_join!(agent, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    let mut agent = TokioIo::new(agent);
    let mut upstream = TokioIo::new(upstream);
    let copy = tokio::io::copy_bidirectional(&mut agent, &mut upstream);
    match tokio::time::timeout(idle, copy).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "websocket ended with an error"),
        Err(_) => tracing::debug!("websocket closed after the idle limit"),
    }
}
