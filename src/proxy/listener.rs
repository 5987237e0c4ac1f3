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

use super::body::ProxyBody;
use super::conn::Slot;
use super::error::ProxyError;
use super::state::ProxyState;
use super::workers::{WorkerError, Workers};
use super::{connect, pipeline};

/// Starts `n` workers that accept connections for `state` (see [`serve`]).
pub fn start_workers(state: &Arc<ProxyState>, n: usize) -> Result<Workers, WorkerError> {
    let st = state.clone();
    Workers::start(n, move |listener| {
        st.tasks.spawn(accept_loop(listener, st.clone()));
    })
}

/// Has the workers accept connections until shutdown; then drains open connections and
/// tunnels (up to `server.shutdown_grace`) and stops the workers.
pub async fn serve(listener: TcpListener, state: Arc<ProxyState>, workers: Workers) {
    match listener.into_std().and_then(|l| workers.listen(l)) {
        Ok(()) => state.shutdown.cancelled().await,
        Err(e) => {
            tracing::error!(error = %e, "the proxy cannot accept connections");
            state.shutdown.cancelled().await;
        }
    }
    // Each worker's accept loop has closed its copy of the socket (it is a task the drain
    // waits for), so clients see at once that no new connection is taken.
    state.drain().await;
    workers.stop().await;
}

/// Accepts connections on one worker until shutdown, under the global connection limit.
async fn accept_loop(listener: TcpListener, state: Arc<ProxyState>) {
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
                    let st = state.clone();
                    state
                        .tasks
                        .spawn(serve_connection(st, stream, peer, Arc::new(Slot::new(permit))));
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
}

/// Serves one agent connection (on a worker's runtime).
async fn serve_connection(
    state: Arc<ProxyState>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<Slot>,
) {
    let st = state.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let st = st.clone();
        let slot = slot.clone();
        // Boxed: hyper keeps a slot the size of this future for the connection's whole life.
        let handling = Box::pin(dispatch(st, peer, slot, req));
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
    slot: Arc<Slot>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if state.shutdown.is_cancelled() {
        return ProxyError::ShuttingDown.into_response();
    }
    if let Err(e) = state.check_head_size(req.headers()) {
        return e.into_response();
    }
    if req.method() == Method::CONNECT {
        return connect::handle(state, peer, slot, req).await;
    }
    if req.uri().scheme().is_some() {
        return pipeline::absolute_form(state, peer, req).await;
    }
    ProxyError::BadRequest(
        "this is a forward proxy: send CONNECT host:port for https, or an absolute-form request such as GET http://host/path".into(),
    )
    .into_response()
}
