//! The proxy's worker threads: one single-threaded runtime per worker. Every worker accepts on
//! the proxy's listening socket (a worker busy with its connections is not in `accept`, so new
//! connections go to idle ones), and a connection lives on the worker that accepted it until it
//! closes, together with the upstream connections its requests use (each worker has its own
//! pools). A request therefore never crosses threads: on the multi-threaded scheduler it woke
//! tasks and idle workers on other threads (2.4 futex calls per request, by strace; 0.04 with
//! the first version of the workers, which handed connections over, by `perf stat`). One worker
//! thread alone uses only 5-10% less CPU per request than two (0.42-0.46 against 0.47 s per
//! 10,000 keep-alive requests, alternating benchmark runs), so the default is one worker per
//! core. Accepting on the workers themselves, rather than handing connections over from one
//! accept loop, keeps new connections as cheap as they were on the shared scheduler.

use std::cell::Cell;

use tokio::sync::{mpsc, oneshot};

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

/// Handles to the running workers.
#[derive(Debug)]
pub struct Workers {
    /// Each worker's mailbox for the listening socket it accepts on.
    listeners: Vec<mpsc::UnboundedSender<std::net::TcpListener>>,
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
    /// Starts `n` workers; each hands every listening socket [`Workers::listen`] gives it to
    /// `accept`, on its own runtime. The workers know nothing of what accepting means: the
    /// listener passes that in, so neither calls back into the other.
    pub fn start<F>(n: usize, accept: F) -> Result<Self, WorkerError>
    where
        F: Fn(tokio::net::TcpListener) + Clone + Send + 'static,
    {
        let mut listeners = Vec::with_capacity(n);
        let mut stopped = Vec::with_capacity(n);
        for index in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let (done_tx, done_rx) = oneshot::channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| WorkerError::Start { index, source })?;
            let accept = accept.clone();
            std::thread::Builder::new()
                .name(format!("proxy-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(Some(index)));
                    runtime.block_on(run(accept, rx));
                    // Upstream connection tasks still parked here end with the runtime.
                    drop(runtime);
                    let _ = done_tx.send(());
                })
                .map_err(|source| WorkerError::Start { index, source })?;
            listeners.push(tx);
            stopped.push(done_rx);
        }
        Ok(Self { listeners, stopped })
    }

    /// Has every worker accept on `listener` (each on its own duplicate of the socket) until
    /// shutdown. Fails only when no worker could be given the socket.
    pub fn listen(&self, listener: std::net::TcpListener) -> std::io::Result<()> {
        let Some((last, others)) = self.listeners.split_last() else {
            return Err(std::io::Error::other("no proxy worker is running"));
        };
        for (worker, mailbox) in others.iter().enumerate() {
            match listener.try_clone() {
                Ok(socket) => {
                    let _ = mailbox.send(socket);
                }
                Err(e) => {
                    tracing::warn!(error = %e, worker, "cannot share the proxy socket with a worker");
                }
            }
        }
        last.send(listener)
            .map_err(|_| std::io::Error::other("proxy worker has stopped"))
    }

    /// Stops the workers and waits for their threads. Connections still open are closed: the
    /// caller drains them first, within the shutdown grace period, while the workers still run.
    pub async fn stop(mut self) {
        self.listeners.clear();
        for done in self.stopped.drain(..) {
            let _ = done.await;
        }
    }
}

/// A worker's loop: hands every socket it is given to `accept` until [`Workers::stop`]. The
/// runtime drives every connection task while this waits.
async fn run(
    accept: impl Fn(tokio::net::TcpListener),
    mut listeners: mpsc::UnboundedReceiver<std::net::TcpListener>,
) {
    while let Some(listener) = listeners.recv().await {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => accept(listener),
            Err(e) => {
                tracing::warn!(error = %e, "proxy worker could not take the listening socket")
            }
        }
    }
}
