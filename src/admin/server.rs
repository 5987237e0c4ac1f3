//! The admin listener: every connection is bounded (a connection cap, a deadline for request
//! heads), and shutdown lets open requests finish within the grace period.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::proxy::body::Drained;

/// Most admin connections open at once.
const MAX_ADMIN_CONNECTIONS: usize = 1024;

/// Serves `router` until `shutdown` is cancelled, then waits up to `grace` for open requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    header_timeout: Duration,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64);
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let router = router.clone();
            // A body the answer leaves unread (a 413, a 401) is drained, so the answer reaches
            // a client that writes its whole request before reading.
            let (parts, body) = req.into_parts();
            let body = Drained::new(body, parts.version, &parts.headers);
            let req = hyper::Request::from_parts(parts, axum::body::Body::new(body));
            async move {
                Ok::<_, Infallible>(
                    router
                        .oneshot(req)
                        .await
                        .unwrap_or_else(|never| match never {}),
                )
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin connections still open after the grace period");
    }
}
