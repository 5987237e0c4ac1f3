//! Acknowledged writes survive `kill -9`: a burst of concurrent credential writes against the
//! server process, killed mid-burst, restarted, checked; repeated.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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
