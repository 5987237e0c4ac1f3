//! The request log: metadata of proxied requests and tunnels, written in batches.

use serde::Serialize;

use super::{Backend, Store, StoreError, col};
use crate::domain::now_ms;

/// One row to write: the proxy produces it as a domain type (it never sees storage types).
pub use crate::domain::RequestLogRow;

/// A stored row, as the API returns it.
#[derive(Clone, Debug, Serialize)]
pub struct RequestLogRecord {
    /// Monotonic id (a cursor for `--follow`).
    pub id: i64,
    /// `agent`, `user` or `scoped`.
    pub actor_kind: String,
    /// Actor id.
    pub actor_id: String,
    /// `request` or `tunnel`.
    pub kind: String,
    /// HTTP method.
    pub method: String,
    /// `host:port`.
    pub host: String,
    /// Path without query.
    pub path: String,
    /// Matched service.
    pub service: Option<String>,
    /// Credential keys attached.
    pub credential_keys: Vec<String>,
    /// Status.
    pub status: i64,
    /// Request bytes.
    pub bytes_in: i64,
    /// Response bytes.
    pub bytes_out: i64,
    /// Latency (ms).
    pub latency_ms: i64,
    /// Proxy error code.
    pub error_code: Option<String>,
    /// Time (ms).
    pub created_at: i64,
}

/// Which rows to list.
#[derive(Clone, Debug, Default)]
pub struct RequestLogFilter {
    /// Only rows with a larger id (for following).
    pub after: Option<i64>,
    /// Only rows with a smaller id (for paging back).
    pub before: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// Appends `($first, ..., $(first + n - 1))`; on SQLite `(?, ..., ?)`, because SQLite looks
/// up a numbered parameter's name by a linear scan, which made large statements quadratic.
fn placeholders(sql: &mut String, backend: Backend, first: usize, n: usize) {
    use std::fmt::Write;
    sql.push('(');
    for i in first..first + n {
        let sep = if i == first { "" } else { ", " };
        let _ = match backend {
            Backend::Sqlite => write!(sql, "{sep}?"),
            Backend::Postgres => write!(sql, "{sep}${i}"),
        };
    }
    sql.push(')');
}

/// Most rows per INSERT statement (15 parameters each). Every statement is a round trip to
/// SQLite's worker thread, and every distinct statement text is prepared and cached by each
/// connection: a batch goes out in statements of a power of two rows, so at most nine shapes
/// are ever cached (a cache of a statement per batch length grew the server by megabytes a
/// second under load).
pub const REQUEST_LOG_ROWS_PER_STATEMENT: usize = 256;

/// How many rows the next statement carries when `left` remain: a power of two.
fn statement_rows(left: usize) -> usize {
    if left >= REQUEST_LOG_ROWS_PER_STATEMENT {
        REQUEST_LOG_ROWS_PER_STATEMENT
    } else {
        1 << left.ilog2()
    }
}

fn u64_to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Writes a batch of rows in one transaction, many rows per statement (one round trip to
    /// the database per chunk, not per row: the proxy may log tens of thousands of rows a
    /// second). Rows of a vault deleted meanwhile are skipped.
    pub async fn insert_request_logs(&self, rows: &[RequestLogRow]) -> Result<(), StoreError> {
        const COLUMNS: usize = 15;
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        // Rows of a vault deleted since they were queued are dropped here, not by a filter in
        // the INSERT: a filtered INSERT ... SELECT may insert in any order on Postgres, and ids
        // must follow the order requests happened in (`logs --follow` pages by id).
        let mut vault_ids: Vec<&str> = rows.iter().map(|r| r.vault_id.as_str()).collect();
        vault_ids.sort_unstable();
        vault_ids.dedup();
        let mut sql = String::from("SELECT id FROM vaults WHERE id IN ");
        placeholders(&mut sql, self.backend, 1, vault_ids.len());
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in &vault_ids {
            query = query.bind(*id);
        }
        let live: std::collections::HashSet<String> = query
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| col::<String>(r, "id"))
            .collect::<Result<_, _>>()?;
        let rows: Vec<&RequestLogRow> =
            rows.iter().filter(|r| live.contains(&r.vault_id)).collect();
        let mut rest = rows.as_slice();
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(statement_rows(rest.len()));
            rest = after;
            let mut sql = String::with_capacity(300 + chunk.len() * 90);
            sql.push_str(
                "INSERT INTO request_logs (vault_id, actor_kind, actor_id, kind, method, host, path, service, credential_keys, \
                 status, bytes_in, bytes_out, latency_ms, error_code, created_at) VALUES ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                placeholders(&mut sql, self.backend, i * COLUMNS + 1, COLUMNS);
            }
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                query = query
                    .bind(r.vault_id.as_str())
                    .bind(r.actor.as_str())
                    .bind(r.actor.id())
                    .bind(r.kind.as_str())
                    .bind(r.method.as_str())
                    .bind(r.host.as_str())
                    .bind(r.path.as_str())
                    .bind(r.service.as_deref())
                    .bind(r.credential_keys.join(","))
                    .bind(i64::from(r.status))
                    .bind(u64_to_i64(r.bytes_in))
                    .bind(u64_to_i64(r.bytes_out))
                    .bind(u64_to_i64(r.latency_ms))
                    .bind(r.error_code)
                    .bind(r.created_at);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Rows of one vault, newest first unless following (`after`), then oldest first.
    pub async fn list_request_logs(
        &self,
        vault_id: &str,
        filter: &RequestLogFilter,
    ) -> Result<Vec<RequestLogRecord>, StoreError> {
        let limit = filter.limit.clamp(1, 1000);
        let rows = if let Some(after) = filter.after {
            sqlx::query(
                "SELECT id, actor_kind, actor_id, kind, method, host, path, service, credential_keys, status, bytes_in, bytes_out, \
                 latency_ms, error_code, created_at FROM request_logs WHERE vault_id = $1 AND id > $2 ORDER BY id ASC LIMIT $3",
            )
            .bind(vault_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
        } else {
            sqlx::query(
                "SELECT id, actor_kind, actor_id, kind, method, host, path, service, credential_keys, status, bytes_in, bytes_out, \
                 latency_ms, error_code, created_at FROM request_logs WHERE vault_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            )
            .bind(vault_id)
            .bind(filter.before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
        };
        rows.iter()
            .map(|r| {
                let keys: String = col(r, "credential_keys")?;
                Ok(RequestLogRecord {
                    id: col(r, "id")?,
                    actor_kind: col(r, "actor_kind")?,
                    actor_id: col(r, "actor_id")?,
                    kind: col(r, "kind")?,
                    method: col(r, "method")?,
                    host: col(r, "host")?,
                    path: col(r, "path")?,
                    service: col(r, "service")?,
                    credential_keys: keys
                        .split(',')
                        .filter(|k| !k.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    status: col(r, "status")?,
                    bytes_in: col(r, "bytes_in")?,
                    bytes_out: col(r, "bytes_out")?,
                    latency_ms: col(r, "latency_ms")?,
                    error_code: col(r, "error_code")?,
                    created_at: col(r, "created_at")?,
                })
            })
            .collect()
    }

    /// Applies retention: deletes rows older than `max_age_ms` and, per vault, all but the
    /// newest `max_rows` rows. Returns how many rows were deleted.
    pub async fn prune_request_logs(
        &self,
        max_age_ms: i64,
        max_rows: i64,
    ) -> Result<u64, StoreError> {
        let mut deleted = sqlx::query("DELETE FROM request_logs WHERE created_at < $1")
            .bind(now_ms() - max_age_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let vaults = sqlx::query("SELECT DISTINCT vault_id FROM request_logs")
            .fetch_all(&self.pool)
            .await?;
        for v in vaults {
            let vault_id: String = col(&v, "vault_id")?;
            let cutoff = sqlx::query(
                "SELECT id FROM request_logs WHERE vault_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2",
            )
            .bind(&vault_id)
            .bind(max_rows)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = cutoff {
                let id: i64 = col(&row, "id")?;
                deleted += sqlx::query("DELETE FROM request_logs WHERE vault_id = $1 AND id <= $2")
                    .bind(&vault_id)
                    .bind(id)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_use_few_statement_shapes() {
        let mut shapes = std::collections::BTreeSet::new();
        for total in 1..=2000 {
            let (mut left, mut statements) = (total, 0);
            while left > 0 {
                let n = statement_rows(left);
                assert!(n >= 1 && n <= left && n <= REQUEST_LOG_ROWS_PER_STATEMENT);
                shapes.insert(n);
                left -= n;
                statements += 1;
            }
            // Full statements, then at most one per bit of the remainder.
            assert!(statements <= total / REQUEST_LOG_ROWS_PER_STATEMENT + 8);
        }
        assert_eq!(shapes.len(), 9);
    }
}
