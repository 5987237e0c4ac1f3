//! The request-log writer: the proxy hands rows to a bounded queue without waiting; a
//! background task writes them in batches and applies retention.

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

impl RequestLogger {
    /// Starts the writer and retention tasks; they finish (after a last flush) when `shutdown`
    /// is cancelled and every handle is dropped.
    pub fn start(
        store: Store,
        config: RequestLogConfig,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let writer = tokio::spawn(write_loop(
            store.clone(),
            config.clone(),
            rx,
            shutdown.clone(),
        ));
        tokio::spawn(retention_loop(store, config, shutdown));
        (
            Self {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            writer,
        )
    }

    /// Queues a row without waiting. If the queue is full the row is dropped and counted.
    pub fn log(&self, row: RequestLogRow) {
        if self.tx.try_send(row).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "request log queue full; rows are being dropped"
                );
            }
        }
    }

    /// Rows dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn write_loop(
    store: Store,
    config: RequestLogConfig,
    mut rx: mpsc::Receiver<RequestLogRow>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(config.batch_size);
    loop {
        let first = tokio::select! {
            row = rx.recv() => row,
            () = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        // Collect for one interval without waiting on the queue: a writer waiting on it is
        // woken, across threads, by every row (at 30,000 requests a second that and the many
        // small SQLite statements it led to were a quarter of the server's CPU); one that
        // sleeps is woken once per interval.
        tokio::select! {
            () = tokio::time::sleep(config.flush_interval) => {}
            () = shutdown.cancelled() => {}
        }
        loop {
            while batch.len() < config.batch_size {
                match rx.try_recv() {
                    Ok(row) => batch.push(row),
                    Err(_) => break,
                }
            }
            let full = batch.len() >= config.batch_size;
            flush(&store, &mut batch).await;
            if !full {
                break;
            }
        }
    }
    // Drain what is already queued so a graceful shutdown loses nothing.
    rx.close();
    while rx.recv_many(&mut batch, config.batch_size).await > 0 {
        flush(&store, &mut batch).await;
    }
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
