//! The proxy listener: accepts connections under a global cap, speaks HTTP/1.1 to agents, and
//! dispatches CONNECT, absolute-form requests, and everything else (refused).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use super::error::ProxyError;
use super::workers::Workers;
use super::{ProxyBody, ProxyState, connect, pipeline};

/// Accepts connections until shutdown and hands them to the workers; then drains open
/// connections and tunnels (up to `server.shutdown_grace`) and stops the workers.
pub async fn serve(listener: TcpListener, state: Arc<ProxyState>, workers: Workers) {
    let mut refused: u64 = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
                        refused += 1;
                        if refused.is_power_of_two() {
                            tracing::warn!(refused, "proxy connection limit reached; refusing connections");
                        }
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = workers.assign(stream, peer, Arc::new(permit)) {
                        tracing::warn!(error = %e, "could not hand a proxy connection to a worker");
                    }
                }
                Err(e) => {
                    // Out of file descriptors and kin: back off instead of spinning.
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = state.shutdown.cancelled() => break,
        }
    }
    // Closed before draining, so clients see at once that no new connection is taken.
    drop(listener);
    state.drain().await;
    workers.stop().await;
}

/// Serves one agent connection (on a worker's runtime).
pub(super) async fn serve_connection(
    state: Arc<ProxyState>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Arc<OwnedSemaphorePermit>,
) {
    let st = state.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let st = st.clone();
        let permit = permit.clone();
        // Boxed: hyper keeps a slot the size of this future for the connection's whole life.
        let handling = Box::pin(dispatch(st, peer, permit, req));
        async move { Ok::<_, Infallible>(handling.await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_read_timeout)
        .max_buf_size(state.limits.max_header_bytes)
        .max_headers(state.limits.max_headers)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, %peer, "proxy connection ended with an error");
            }
        }
        () = state.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(state.shutdown_grace, conn).await;
        }
    }
}

async fn dispatch(
    state: Arc<ProxyState>,
    peer: SocketAddr,
    permit: Arc<OwnedSemaphorePermit>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if state.shutdown.is_cancelled() {
        return ProxyError::ShuttingDown.into_response();
    }
    if let Err(e) = state.check_head_size(req.headers()) {
        return e.into_response();
    }
    if req.method() == Method::CONNECT {
        return connect::handle(state, peer, permit, req).await;
    }
    if req.uri().scheme().is_some() {
        return pipeline::absolute_form(state, peer, req).await;
    }
    ProxyError::BadRequest(
        "this is a forward proxy: send CONNECT host:port for https, or an absolute-form request such as GET http://host/path".into(),
    )
    .into_response()
}
