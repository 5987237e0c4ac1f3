//! The request-log writer: the proxy hands rows to a bounded queue without waiting; a
//! background task writes them in batches and applies retention.
//!
//! At shutdown the writer keeps going while the proxy drains, so requests that finish during
//! the grace period are logged too; [`LogWriter::finish`], called once the proxy has stopped,
//! writes out what is queued and ends. With `log.requests`, the writer also puts one info line
//! per row in the server log (off the hot path, as it writes the batch).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::RequestLogConfig;
use crate::store::{RequestLogRow, Store};

/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// A cheap, cloneable handle for submitting rows.
#[derive(Clone, Debug)]
pub struct RequestLogger {
    tx: mpsc::Sender<RequestLogRow>,
    dropped: Arc<AtomicU64>,
}

/// The writer task, to be finished once nothing logs any more.
#[derive(Debug)]
pub struct LogWriter {
    task: JoinHandle<()>,
    finish: CancellationToken,
}

impl RequestLogger {
    /// Starts the writer and retention tasks. Retention stops with `shutdown`; the writer
    /// stops only when [`LogWriter::finish`] is called (or every handle is dropped).
    pub fn start(
        store: Store,
        config: RequestLogConfig,
        log_lines: bool,
        shutdown: CancellationToken,
    ) -> (Self, LogWriter) {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let finish = CancellationToken::new();
        let writer = Writer {
            store: store.clone(),
            log_lines,
            vault_names: HashMap::new(),
        };
        let task = tokio::spawn(write_loop(writer, config.clone(), rx, finish.clone()));
        tokio::spawn(retention_loop(store, config, shutdown));
        (
            Self {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            LogWriter { task, finish },
        )
    }

    /// Queues a row without waiting. If the queue is full the row is dropped and counted.
    pub fn log(&self, row: RequestLogRow) {
        let Err(e) = self.tx.try_send(row) else {
            return;
        };
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            match e {
                mpsc::error::TrySendError::Full(_) => tracing::warn!(
                    dropped = n,
                    "request log queue full; rows are being dropped"
                ),
                mpsc::error::TrySendError::Closed(_) => tracing::warn!(
                    dropped = n,
                    "a request finished after the request log was closed for shutdown; its row is not recorded"
                ),
            }
        }
    }

    /// Rows dropped because the queue was full or already closed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl LogWriter {
    /// Closes the queue, writes every row already in it, and waits (at most `limit`) for the
    /// writer to end. Call it after the proxy has drained, before the store is closed.
    pub async fn finish(self, limit: Duration) {
        self.finish.cancel();
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!(
                "the request log was not written out within {limit:?}; its last rows may be lost"
            );
        }
    }
}

/// The target of the per-request lines (`log.requests`), so the log filter can enable them.
pub const REQUEST_LINE_TARGET: &str = "agent_vault::request";

/// The writer's state.
struct Writer {
    store: Store,
    /// Whether to put one info line per row in the server log (`log.requests`).
    log_lines: bool,
    /// Vault names by id, for those lines.
    vault_names: HashMap<String, String>,
}

async fn write_loop(
    mut writer: Writer,
    config: RequestLogConfig,
    mut rx: mpsc::Receiver<RequestLogRow>,
    finish: CancellationToken,
) {
    let mut batch = Vec::with_capacity(config.batch_size);
    loop {
        let first = tokio::select! {
            row = rx.recv() => row,
            () = finish.cancelled() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        // Collect for one interval without waiting on the queue: a writer waiting on it is
        // woken, across threads, by every row (at 30,000 requests a second that and the many
        // small SQLite statements it led to were a quarter of the server's CPU); one that
        // sleeps is woken once per interval.
        tokio::select! {
            () = tokio::time::sleep(config.flush_interval) => {}
            () = finish.cancelled() => {}
        }
        loop {
            while batch.len() < config.batch_size {
                match rx.try_recv() {
                    Ok(row) => batch.push(row),
                    Err(_) => break,
                }
            }
            let full = batch.len() >= config.batch_size;
            writer.flush(&mut batch).await;
            if !full {
                break;
            }
        }
    }
    // Write out what is already queued so a graceful shutdown loses nothing.
    rx.close();
    while rx.recv_many(&mut batch, config.batch_size).await > 0 {
        writer.flush(&mut batch).await;
    }
}

impl Writer {
    async fn flush(&mut self, batch: &mut Vec<RequestLogRow>) {
        if self.log_lines {
            for row in batch.iter() {
                let vault = self.vault_name(&row.vault_id).await;
                log_line(&vault, row);
            }
        }
        flush(&self.store, batch).await;
    }

    /// A vault's name for log lines (its id if it cannot be read).
    async fn vault_name(&mut self, id: &str) -> String {
        if let Some(name) = self.vault_names.get(id) {
            return name.clone();
        }
        match self.store.vault_by_id(id).await {
            Ok(Some(v)) => {
                let name = v.name.as_str().to_owned();
                self.vault_names.insert(id.to_owned(), name.clone());
                name
            }
            _ => id.to_owned(),
        }
    }
}

/// One line per proxied request: who, where, what came of it. Never a header value, a query
/// string or a path (paths can carry identifiers people consider private).
fn log_line(vault: &str, row: &RequestLogRow) {
    tracing::info!(
        target: REQUEST_LINE_TARGET,
        vault,
        actor = row.actor.as_str(),
        actor_id = row.actor.id(),
        method = %row.method,
        host = %row.host,
        service = row.service.as_deref().unwrap_or("-"),
        status = row.status,
        latency_ms = row.latency_ms,
        error = row.error_code.unwrap_or("-"),
        "proxied request"
    );
}

async fn flush(store: &Store, batch: &mut Vec<RequestLogRow>) {
    if batch.is_empty() {
        return;
    }
    let mut uses: HashMap<(String, String), (i64, i64)> = HashMap::new();
    for row in batch.iter() {
        for key in &row.credential_keys {
            let e = uses
                .entry((row.vault_id.clone(), key.clone()))
                .or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(row.created_at);
        }
    }
    for attempt in 0..3 {
        match store.insert_request_logs(batch).await {
            Ok(()) => break,
            Err(e) if attempt < 2 => {
                tracing::warn!(error = %e, rows = batch.len(), "writing request log failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, rows = batch.len(), "writing request log failed; rows lost")
            }
        }
    }
    let uses: Vec<_> = uses
        .into_iter()
        .map(|((v, k), (n, at))| (v, k, n, at))
        .collect();
    if let Err(e) = store.record_credential_use(&uses).await {
        tracing::warn!(error = %e, "updating credential use counters failed");
    }
    batch.clear();
}

async fn retention_loop(store: Store, config: RequestLogConfig, shutdown: CancellationToken) {
    let max_age = i64::try_from(config.max_age.as_millis()).unwrap_or(i64::MAX);
    let max_rows = i64::try_from(config.max_rows_per_vault).unwrap_or(i64::MAX);
    loop {
        match store.prune_request_logs(max_age, max_rows).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "request log retention"),
            Err(e) => tracing::warn!(error = %e, "request log retention failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(RETENTION_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
