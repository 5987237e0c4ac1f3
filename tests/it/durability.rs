//! Acknowledged writes survive `kill -9`: a burst of concurrent credential writes against the
//! server process, killed mid-burst, restarted, checked; repeated.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::process::ServerProcess;
use crate::support::{OWNER_EMAIL, OWNER_PASSWORD};

async fn call(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let rounds = 6;
    for round in 0..=rounds {
        let server = ServerProcess::start(&data, &[], "warn").await;
        let base = server.admin.clone();
        let token = if round == 0 {
            let setup = std::fs::read_to_string(data.join("setup-token")).unwrap();
            let body = json!({ "email": OWNER_EMAIL, "password": OWNER_PASSWORD, "setup_token": setup.trim() });
            let (status, v) = call(
                &http,
                &base,
                None,
                reqwest::Method::POST,
                "/v1/auth/register",
                Some(body),
            )
            .await;
            assert_eq!(status, 201, "{v}");
            let token = v["token"].as_str().unwrap().to_owned();
            let (status, _) = call(
                &http,
                &base,
                Some(&token),
                reqwest::Method::POST,
                "/v1/vaults",
                Some(json!({ "name": "durable" })),
            )
            .await;
            assert_eq!(status, 201);
            token
        } else {
            let (status, v) = call(
                &http,
                &base,
                None,
                reqwest::Method::POST,
                "/v1/auth/login",
                Some(json!({ "email": OWNER_EMAIL, "password": OWNER_PASSWORD })),
            )
            .await;
            assert_eq!(status, 200, "round {round}: {v}");
            v["token"].as_str().unwrap().to_owned()
        };
        // Everything acknowledged before the last kill is there, with its value.
        let (status, list) = call(
            &http,
            &base,
            Some(&token),
            reqwest::Method::GET,
            "/v1/vaults/durable/credentials?reveal=true",
            None,
        )
        .await;
        assert_eq!(status, 200);
        let stored: BTreeMap<String, String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["key"].as_str().unwrap().to_owned(),
                    c["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        for (key, value) in acked.lock().unwrap().iter() {
            assert_eq!(
                stored.get(key),
                Some(value),
                "round {round}: acknowledged write {key} was lost"
            );
        }
        if round == rounds {
            server.stop().await;
            break;
        }
        // A burst from four writers; kill -9 after a round-dependent number of acknowledgements.
        let kill_after = 8 + 7 * round;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1024);
        let mut writers = Vec::new();
        for w in 0..4 {
            let (http, base, token, acked, tx) = (
                http.clone(),
                base.clone(),
                token.clone(),
                acked.clone(),
                tx.clone(),
            );
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("K_{round}_{w}_{i}");
                    let value = format!("value-{round}-{w}-{i}");
                    let body = json!({ "credentials": { key.clone(): value.clone() } });
                    let (status, _) = call(
                        &http,
                        &base,
                        Some(&token),
                        reqwest::Method::PUT,
                        "/v1/vaults/durable/credentials",
                        Some(body),
                    )
                    .await;
                    if status != 200 {
                        return;
                    }
                    acked.lock().unwrap().insert(key, value);
                    if tx.send(()).await.is_err() {
                        return;
                    }
                }
            }));
        }
        drop(tx);
        for _ in 0..kill_after {
            if rx.recv().await.is_none() {
                break;
            }
        }
        server.kill9().await;
        for w in writers {
            let _ = w.await;
        }
    }
    assert!(
        acked.lock().unwrap().len() >= 8 * 6,
        "the test really wrote something"
    );
}

/// Requests still streaming when shutdown begins finish, and their request-log rows reach the
/// store before the process ends: shutdown drains the queue only after the proxy has drained.
async fn in_flight_requests_at_shutdown_are_logged(postgres: Option<String>) {
    use crate::support::{TestOptions, eventually, fetch, rest_of, spawn_app_with};
    const OPEN: usize = 4;
    let app = spawn_app_with(TestOptions {
        postgres,
        ..Default::default()
    })
    .await;
    let token = app.stripe_vault("drain", "sk_drain").await;
    let agent = app.agent(&token, "drain").await;
    for _ in 0..3 {
        assert_eq!(
            fetch(agent.get("https://api.example.test/echo"))
                .await
                .status(),
            200
        );
    }
    // Streams whose upstream holds back the second event until the gate opens.
    let mut open = Vec::new();
    for _ in 0..OPEN {
        let mut resp = fetch(agent.get("https://api.example.test/gated")).await;
        let first = resp.chunk().await.unwrap().unwrap();
        assert_eq!(&first[..], b"data: first\n\n");
        open.push(tokio::spawn(async move { rest_of(&mut resp).await }));
    }
    let store = app.open_store().await;
    let vault_id = store
        .vault_by_name(&agent_vault::domain::VaultName::parse("drain").unwrap())
        .await
        .unwrap()
        .unwrap()
        .id;
    let (upstream, proxy, state) = (app.upstream.clone(), app.proxy, app.proxy_state.clone());
    let stopping = tokio::spawn(app.stop());
    let closed = eventually(Duration::from_secs(5), async || {
        tokio::net::TcpStream::connect(proxy).await.err()
    })
    .await;
    assert!(
        closed.is_some(),
        "shutdown has begun: the proxy stopped accepting"
    );
    // Open the gate until every stream has ended (a stream registers as a waiter only once
    // its first event is out, so one notification may come too early for some).
    let ended = eventually(Duration::from_secs(10), async || {
        upstream.gate.notify_waiters();
        open.iter().all(|t| t.is_finished()).then_some(())
    })
    .await;
    assert!(
        ended.is_some(),
        "the open streams finished during the grace period"
    );
    for t in open {
        assert_eq!(t.await.unwrap(), "data: second\n\n");
    }
    stopping.await.unwrap();
    let rows = store
        .list_request_logs(
            &vault_id,
            &agent_vault::store::RequestLogFilter {
                after: None,
                before: None,
                limit: 100,
            },
        )
        .await
        .unwrap();
    let gated = rows.iter().filter(|r| r.path == "/gated").count();
    assert_eq!(
        (rows.len(), gated),
        (3 + OPEN, OPEN),
        "every request has its row, the ones in flight at shutdown included"
    );
    assert_eq!(state.logger.dropped(), 0, "no row was dropped");
    store.close().await;
}

#[tokio::test]
async fn in_flight_requests_at_shutdown_are_logged_on_sqlite() {
    in_flight_requests_at_shutdown_are_logged(None).await;
}

#[tokio::test]
async fn in_flight_requests_at_shutdown_are_logged_on_postgres() {
    let Some(db) = crate::support::TestDatabase::create().await else {
        return;
    };
    in_flight_requests_at_shutdown_are_logged(Some(db.url.clone())).await;
}
