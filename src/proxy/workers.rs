//! The proxy's worker threads: one single-threaded runtime per worker. The accept loop hands
//! each connection to a worker, round robin, and the connection lives there until it closes,
//! together with the upstream connections its requests use (each worker has its own pools). A
//! request therefore never crosses threads: on the multi-threaded scheduler, the wake-ups between
//! the agent's connection, the upstream connection and idle workers cost about a quarter of the
//! proxy's CPU per request (see the README's benchmark).

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::ProxyState;

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker this thread is, or `None` on any other thread (the main runtime, tests).
pub fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// The number of workers `server.proxy_threads` asks for (0: one per core).
pub fn count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map_or(2, usize::from)
    }
}

/// An accepted connection on its way to a worker.
struct Job {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: Arc<OwnedSemaphorePermit>,
}

/// Handles to the running workers.
#[derive(Debug)]
pub struct Workers {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
    stopped: Vec<oneshot::Receiver<()>>,
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The operating system refused a thread or a runtime.
    #[error("cannot start proxy worker {index}: {source}")]
    Start {
        /// Which worker.
        index: usize,
        /// What the operating system said.
        source: std::io::Error,
    },
}

impl Workers {
    /// Starts `n` workers serving connections with `state`.
    pub fn start(state: &Arc<ProxyState>, n: usize) -> Result<Self, WorkerError> {
        let mut queues = Vec::with_capacity(n);
        let mut stopped = Vec::with_capacity(n);
        for index in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let (done_tx, done_rx) = oneshot::channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| WorkerError::Start { index, source })?;
            let st = state.clone();
            std::thread::Builder::new()
                .name(format!("proxy-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(Some(index)));
                    runtime.block_on(run(st, rx));
                    // Upstream connection tasks still parked here end with the runtime.
                    drop(runtime);
                    let _ = done_tx.send(());
                })
                .map_err(|source| WorkerError::Start { index, source })?;
            queues.push(tx);
            stopped.push(done_rx);
        }
        Ok(Self {
            queues,
            next: AtomicUsize::new(0),
            stopped,
        })
    }

    /// Hands an accepted connection to the next worker; gives it back when none can take it.
    pub fn assign(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        permit: Arc<OwnedSemaphorePermit>,
    ) -> std::io::Result<()> {
        let stream = stream.into_std()?;
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        self.queues[index]
            .send(Job {
                stream,
                peer,
                permit,
            })
            .map_err(|_| std::io::Error::other("proxy worker has stopped"))
    }

    /// Stops the workers and waits for their threads. Connections still open are closed: the
    /// caller drains them first, within the shutdown grace period, while the workers still run.
    pub async fn stop(mut self) {
        self.queues.clear();
        for done in self.stopped.drain(..) {
            let _ = done.await;
        }
    }
}

/// A worker's loop: serve connections until [`Workers::stop`]. The runtime drives every
/// connection task while this waits for the next job.
async fn run(state: Arc<ProxyState>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = jobs.recv().await {
        match tokio::net::TcpStream::from_std(job.stream) {
            Ok(stream) => {
                let st = state.clone();
                state.tasks.spawn(super::listener::serve_connection(
                    st, stream, job.peer, job.permit,
                ));
            }
            Err(e) => tracing::warn!(error = %e, "proxy worker could not take a connection"),
        }
    }
}
