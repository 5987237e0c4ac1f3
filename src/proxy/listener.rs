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
use super::{ProxyBody, ProxyState, connect, pipeline};

/// Accepts connections until shutdown.
pub async fn serve(listener: TcpListener, state: Arc<ProxyState>) {
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
                    state.tasks.spawn(serve_connection(st, stream, peer, Arc::new(permit)));
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

async fn serve_connection(
    state: Arc<ProxyState>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Arc<OwnedSemaphorePermit>,
) {
    let st = state.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let st = st.clone();
        let permit = permit.clone();
        async move { Ok::<_, Infallible>(dispatch(st, peer, permit, req).await) }
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
