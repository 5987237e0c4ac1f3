//! What a database writer without the master password does: SQL on the app's database behind
//! its back, on SQLite and, when AGENT_VAULT_TEST_DATABASE_URL is set, on Postgres; and what the
//! server records when it catches them (`integrity.failure` audit events).

use std::time::Duration;

use super::{TestApp, TestDatabase, TestOptions, eventually, spawn_app, spawn_app_with};

/// Runs `f` against an app on SQLite and, when configured, one on Postgres.
pub(crate) async fn on_each_backend<F, Fut>(f: F)
where
    F: Fn(TestApp, &'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    f(spawn_app().await, "sqlite").await;
    if let Some(db) = TestDatabase::create().await {
        let app = spawn_app_with(TestOptions {
            postgres: Some(db.url.clone()),
            ..Default::default()
        })
        .await;
        f(app, "postgres").await;
        drop(db);
    }
}

/// Runs `query` (text binds) on the app's database; how many rows it changed.
pub(crate) async fn sql(app: &TestApp, query: &'static str, binds: &[&str]) -> u64 {
    let store = app.open_store().await;
    let mut q = sqlx::query(query);
    for b in binds {
        q = q.bind((*b).to_owned());
    }
    let done = q.execute(store.pool()).await.unwrap();
    store.close().await;
    done.rows_affected()
}

/// The text column `query` selects (text binds), one string a row.
pub(crate) async fn sql_strings(app: &TestApp, query: &'static str, binds: &[&str]) -> Vec<String> {
    let store = app.open_store().await;
    let mut q = sqlx::query_scalar::<_, String>(query);
    for b in binds {
        q = q.bind((*b).to_owned());
    }
    let rows = q.fetch_all(store.pool()).await.unwrap();
    store.close().await;
    rows
}

/// An agent's id by name.
pub(crate) async fn agent_id(app: &TestApp, name: &str) -> String {
    let ids = sql_strings(app, "SELECT id FROM agents WHERE name = $1", &[name]).await;
    ids.into_iter().next().unwrap()
}

/// One `integrity.failure` audit event: (target, detail, vault id).
pub(crate) type IntegrityEvent = (String, String, Option<String>);

/// The `integrity.failure` events recorded so far, oldest first.
pub(crate) async fn integrity_events(app: &TestApp) -> Vec<IntegrityEvent> {
    let store = app.open_store().await;
    let rows: Vec<IntegrityEvent> = sqlx::query_as(
        "SELECT target, detail, vault_id FROM audit_events WHERE action = 'integrity.failure' ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    store.close().await;
    rows
}

/// Waits (bounded) until an `integrity.failure` event names `target` (`table/row id`), then
/// returns every event naming it. The event is written off the request's path.
pub(crate) async fn integrity_events_for(app: &TestApp, target: &str) -> Vec<IntegrityEvent> {
    eventually(Duration::from_secs(10), async || {
        let hits: Vec<IntegrityEvent> = integrity_events(app)
            .await
            .into_iter()
            .filter(|(t, _, _)| t == target)
            .collect();
        (!hits.is_empty()).then_some(hits)
    })
    .await
    .unwrap_or_else(|| panic!("no integrity.failure audit event for {target}"))
}
