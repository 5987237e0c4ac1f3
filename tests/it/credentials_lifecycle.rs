//! Credentials as versioned objects, end to end: rotation while an agent keeps requesting,
//! revocation and expiry at the proxy, versions and rollback (with every bad input), retention,
//! metadata limits, what a proxy-role caller may not read, use counters, restarts, and the
//! upgrade of a database written by the release before per-credential keys. SQLite always,
//! Postgres when AGENT_VAULT_TEST_DATABASE_URL is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    OWNER_EMAIL, OWNER_PASSWORD, TestApp, TestDatabase, TestOptions, assert_proxy_error,
    eventually, spawn_app_against, spawn_app_with,
};

/// `None` (SQLite) and, when configured, a fresh Postgres database.
async fn backends() -> Vec<Option<TestDatabase>> {
    let mut out = vec![None];
    if let Some(db) = TestDatabase::create().await {
        out.push(Some(db));
    }
    out
}

async fn app_on(db: &Option<TestDatabase>) -> TestApp {
    spawn_app_with(TestOptions {
        postgres: db.as_ref().map(|d| d.url.clone()),
        ..Default::default()
    })
    .await
}

fn path(vault: &str, rest: &str) -> String {
    format!("/v1/vaults/{vault}/credentials{rest}")
}

/// The vault's credential `key` as the list shows it.
async fn listed(app: &TestApp, vault: &str, key: &str) -> Value {
    let all = app.ok("GET", &path(vault, ""), None).await;
    all.as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == key)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn versions(app: &TestApp, vault: &str, key: &str) -> Vec<(i64, String)> {
    let v = app
        .ok("GET", &path(vault, &format!("/{key}/versions")), None)
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn rotate(app: &TestApp, vault: &str, key: &str, value: &str) -> (u16, Value) {
    app.call(
        "POST",
        &path(vault, &format!("/{key}/rotate")),
        Some(json!({ "value": value })),
    )
    .await
}

/// The status and error code of an answer.
fn refusal(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["error"].as_str().unwrap_or_default())
}

/// Rotation while an agent keeps requesting: every request is answered 200, the upstream sees
/// the old value up to the rotation and the new one after it, and never both in one request
/// (the service carries the value in two headers).
#[tokio::test]
async fn rotation_under_traffic_switches_whole_requests_from_old_to_new() {
    for db in backends().await {
        let app = app_on(&db).await;
        let token = app
            .service_vault(
                "rot",
                &[("KEY", "sk_old_value_1")],
                "- name: twice\n  host: api.example.test\n  auth: {type: custom, headers: {X-A: '{{ KEY }}', X-B: '{{ KEY }}'}}\n",
            )
            .await;
        let agent = app.agent(&token, "rot").await;
        let stop = Arc::new(AtomicBool::new(false));
        let loop_stop = stop.clone();
        let requests = tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..400 {
                if loop_stop.load(Ordering::Relaxed) {
                    break;
                }
                let resp = agent.get("https://api.example.test/").send().await.unwrap();
                statuses.push(resp.status().as_u16());
            }
            statuses
        });
        let seen = eventually(Duration::from_secs(20), async || {
            (app.upstream.count() >= 5).then_some(())
        })
        .await;
        assert!(seen.is_some(), "the agent's requests reach the upstream");
        let (status, body) = rotate(&app, "rot", "KEY", "sk_new_value_2").await;
        assert_eq!((status, body["version"].as_i64()), (200, Some(2)), "{body}");
        let after = app.upstream.count();
        let switched = eventually(Duration::from_secs(20), async || {
            (app.upstream.count() >= after + 5).then_some(())
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let statuses = requests.await.unwrap();
        assert!(
            switched.is_some(),
            "requests keep flowing after the rotation"
        );
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        let values: Vec<String> = app
            .upstream
            .requests()
            .iter()
            .map(|r| {
                let (a, b) = (r.header("x-a").unwrap(), r.header("x-b").unwrap());
                assert_eq!(a, b, "one request carries one version");
                a
            })
            .collect();
        let first_new = values.iter().position(|v| v == "sk_new_value_2").unwrap();
        assert!(first_new >= 5);
        assert!(values[..first_new].iter().all(|v| v == "sk_old_value_1"));
        assert!(
            values[first_new..].iter().all(|v| v == "sk_new_value_2"),
            "never the old value after the new one: {values:?}"
        );
        assert!(
            values[after..].iter().all(|v| v == "sk_new_value_2"),
            "the request after the rotation answered gets the new value"
        );
    }
}

#[tokio::test]
async fn revoked_credentials_are_refused_at_the_proxy_and_never_revealed_again() {
    for db in backends().await {
        let app = app_on(&db).await;
        let token = app.stripe_vault("rev", "sk_revoked_value").await;
        let agent = app.agent(&token, "rev").await;
        assert_eq!(
            agent
                .get("https://api.example.test/")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let before = app.upstream.count();
        let body = app
            .ok(
                "POST",
                &path("rev", "/STRIPE_KEY/revoke"),
                Some(json!({ "reason": "leaked in a log" })),
            )
            .await;
        assert_eq!(body, json!({ "key": "STRIPE_KEY", "state": "revoked" }));

        let resp = agent.get("https://api.example.test/").send().await.unwrap();
        assert_proxy_error(&resp, 502, "credential_revoked");
        assert_eq!(app.upstream.count(), before, "nothing was sent upstream");
        let logs = app.wait_for_logs("rev", 2).await;
        assert_eq!(logs[0]["error_code"], "credential_revoked", "{logs:?}");

        let got = app.call("GET", &path("rev", "/STRIPE_KEY"), None).await;
        assert_eq!(refusal(&got), (409, "credential_revoked"), "{got:?}");
        assert!(!got.1.to_string().contains("sk_revoked_value"));
        let revealed = app.ok("GET", &path("rev", "?reveal=true"), None).await;
        assert!(
            !revealed.to_string().contains("sk_revoked_value"),
            "{revealed}"
        );
        assert_eq!(revealed[0]["error"], "credential_revoked");
        let c = listed(&app, "rev", "STRIPE_KEY").await;
        assert_eq!(c["state"], "revoked");
        assert_eq!(c["version"], Value::Null);
        assert_eq!(c["revoked_reason"], "leaked in a log");
        assert!(c["revoked_at"].is_i64());
        assert_eq!(
            versions(&app, "rev", "STRIPE_KEY").await,
            [(1, "revoked".to_owned())]
        );

        // Nothing brings it back: rotate, rollback and set are refused, and change nothing.
        let r = rotate(&app, "rev", "STRIPE_KEY", "sk_after").await;
        assert_eq!(refusal(&r), (409, "credential_revoked"), "{r:?}");
        let r = app
            .call(
                "POST",
                &path("rev", "/STRIPE_KEY/rollback"),
                Some(json!({ "to": 1 })),
            )
            .await;
        assert_eq!(refusal(&r), (409, "credential_revoked"), "{r:?}");
        let r = app
            .call(
                "PUT",
                &path("rev", ""),
                Some(json!({ "credentials": { "STRIPE_KEY": "sk_after" } })),
            )
            .await;
        assert_eq!(refusal(&r), (409, "credential_revoked"), "{r:?}");
        assert_eq!(
            versions(&app, "rev", "STRIPE_KEY").await,
            [(1, "revoked".to_owned())]
        );
        // Revoking again is harmless; delete removes it, and the key can be set anew.
        app.ok("POST", &path("rev", "/STRIPE_KEY/revoke"), Some(json!({})))
            .await;
        app.ok(
            "DELETE",
            &path("rev", ""),
            Some(json!({ "keys": ["STRIPE_KEY"] })),
        )
        .await;
        app.set_credentials("rev", &[("STRIPE_KEY", "sk_fresh")])
            .await;
        assert_eq!(
            agent
                .get("https://api.example.test/")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            app.upstream.last().header("authorization").as_deref(),
            Some("Bearer sk_fresh")
        );
    }
}

#[tokio::test]
async fn expired_credentials_are_refused_at_the_proxy() {
    let app = app_on(&None).await;
    let token = app.stripe_vault("exp", "sk_current").await;
    let agent = app.agent(&token, "exp").await;
    let past = agent_vault::domain::now_ms() - 60_000;
    // An expiry in the past is refused unless asked for, naming the field; nothing is stored.
    let r = rotate_with(&app, json!({ "value": "sk_stale", "expires_at": past })).await;
    assert_eq!(refusal(&r), (400, "invalid_credential"), "{r:?}");
    assert!(
        r.1["message"].as_str().unwrap().contains("expires_at"),
        "{r:?}"
    );
    assert_eq!(versions(&app, "exp", "STRIPE_KEY").await.len(), 1);

    let r = rotate_with(
        &app,
        json!({ "value": "sk_stale", "expires_at": past, "allow_expired": true }),
    )
    .await;
    assert_eq!(r.0, 200, "{r:?}");
    assert_eq!(listed(&app, "exp", "STRIPE_KEY").await["expires_at"], past);
    let before = app.upstream.count();
    let resp = agent.get("https://api.example.test/").send().await.unwrap();
    assert_proxy_error(&resp, 502, "credential_expired");
    assert_eq!(app.upstream.count(), before, "nothing was sent upstream");
    let logs = app.wait_for_logs("exp", 1).await;
    assert_eq!(logs[0]["error_code"], "credential_expired", "{logs:?}");

    // A future expiry is served until then.
    let future = agent_vault::domain::now_ms() + 3_600_000;
    let r = rotate_with(&app, json!({ "value": "sk_fresh", "expires_at": future })).await;
    assert_eq!(r.0, 200, "{r:?}");
    assert_eq!(
        agent
            .get("https://api.example.test/")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

async fn rotate_with(app: &TestApp, body: Value) -> (u16, Value) {
    app.call("POST", &path("exp", "/STRIPE_KEY/rotate"), Some(body))
        .await
}

#[tokio::test]
async fn versions_list_and_rollback_make_a_new_version_with_an_old_value() {
    for db in backends().await {
        let app = app_on(&db).await;
        let token = app.stripe_vault("ver", "sk_v1").await;
        let agent = app.agent(&token, "ver").await;
        for value in ["sk_v2", "sk_v3"] {
            let r = rotate(&app, "ver", "STRIPE_KEY", value).await;
            assert_eq!(r.0, 200, "{r:?}");
        }
        // Setting an existing key is a new version too.
        let set = app
            .ok(
                "PUT",
                &path("ver", ""),
                Some(json!({ "credentials": { "STRIPE_KEY": "sk_v4" } })),
            )
            .await;
        assert_eq!(
            set,
            json!({ "written": [{ "key": "STRIPE_KEY", "version": 4, "type": "api_key" }] })
        );
        let all = app
            .ok("GET", &path("ver", "/STRIPE_KEY/versions"), None)
            .await;
        assert_eq!(all.as_array().unwrap().len(), 4, "{all}");
        assert_eq!(all[0]["version"], 4);
        assert_eq!(all[0]["state"], "active");
        assert_eq!(all[0]["rotated_at"], Value::Null);
        assert!(all[0]["created_by"].as_str().unwrap().starts_with("user "));
        assert_eq!(all[1]["state"], "rotated");
        assert!(all[1]["rotated_at"].is_i64());
        assert!(
            !all.to_string().contains("sk_v"),
            "no values in versions: {all}"
        );

        let r = app
            .ok(
                "POST",
                &path("ver", "/STRIPE_KEY/rollback"),
                Some(json!({ "to": 1 })),
            )
            .await;
        assert_eq!(r, json!({ "key": "STRIPE_KEY", "version": 5 }));
        agent.get("https://api.example.test/").send().await.unwrap();
        assert_eq!(
            app.upstream.last().header("authorization").as_deref(),
            Some("Bearer sk_v1"),
            "the proxy injects the rolled-back value"
        );
        let got = app.ok("GET", &path("ver", "/STRIPE_KEY"), None).await;
        assert_eq!(
            (got["value"].as_str(), got["version"].as_i64()),
            (Some("sk_v1"), Some(5))
        );
        let c = listed(&app, "ver", "STRIPE_KEY").await;
        assert!(c["updated_by"].as_str().unwrap().starts_with("user "));
        assert_eq!(c["created_by"], c["updated_by"]);

        // Bad input: a version that never existed, a malformed body, an unknown key.
        for to in [0, 6, 99, -1] {
            let r = app
                .call(
                    "POST",
                    &path("ver", "/STRIPE_KEY/rollback"),
                    Some(json!({ "to": to })),
                )
                .await;
            assert_eq!(refusal(&r), (404, "version_not_found"), "to {to}: {r:?}");
        }
        let r = app
            .call(
                "POST",
                &path("ver", "/STRIPE_KEY/rollback"),
                Some(json!({ "to": "one" })),
            )
            .await;
        assert_eq!(r.0, 400, "{r:?}");
        let r = app
            .call(
                "POST",
                &path("ver", "/NOPE/rollback"),
                Some(json!({ "to": 1 })),
            )
            .await;
        assert_eq!(r.0, 404, "{r:?}");
        let r = rotate(&app, "ver", "NOPE", "x").await;
        assert_eq!(r.0, 404, "{r:?}");
        let r = app.call("GET", &path("ver", "/NOPE/versions"), None).await;
        assert_eq!(r.0, 404, "{r:?}");
        assert_eq!(
            versions(&app, "ver", "STRIPE_KEY").await.len(),
            5,
            "nothing changed"
        );
    }
}

/// Rotated versions past `credentials.version_retention` are destroyed by the sweep (rows and
/// data keys gone); the active version never is; rollback to a destroyed one is refused.
#[tokio::test]
async fn retention_sweep_destroys_old_rotated_versions() {
    for db in backends().await {
        let app = spawn_app_with(TestOptions {
            postgres: db.as_ref().map(|d| d.url.clone()),
            tweak: Some(Box::new(|c| {
                c.credentials.version_retention.max_versions = 2;
                c.credentials.version_retention.sweep_interval = Duration::from_millis(50);
            })),
            ..Default::default()
        })
        .await;
        app.stripe_vault("keep", "sk_k1").await;
        for value in ["sk_k2", "sk_k3", "sk_k4", "sk_k5"] {
            assert_eq!(rotate(&app, "keep", "STRIPE_KEY", value).await.0, 200);
        }
        let mut last = Vec::new();
        let swept = eventually(Duration::from_secs(10), async || {
            last = versions(&app, "keep", "STRIPE_KEY").await;
            (last.len() == 3).then_some(())
        })
        .await;
        assert!(swept.is_some(), "{last:?}");
        assert_eq!(
            last,
            [
                (5, "active".to_owned()),
                (4, "rotated".to_owned()),
                (3, "rotated".to_owned())
            ]
        );
        let store = app.open_store().await;
        let rows: i64 = sqlx::Row::get(
            &sqlx::query("SELECT COUNT(*) AS n FROM credential_versions")
                .fetch_one(store.pool())
                .await
                .unwrap(),
            "n",
        );
        store.close().await;
        assert_eq!(
            rows, 3,
            "destroyed versions are deleted, data keys with them"
        );
        let r = app
            .call(
                "POST",
                &path("keep", "/STRIPE_KEY/rollback"),
                Some(json!({ "to": 1 })),
            )
            .await;
        assert_eq!(refusal(&r), (409, "version_unavailable"), "{r:?}");
        assert!(
            r.1["message"].as_str().unwrap().contains("destroyed"),
            "{r:?}"
        );
        let r = app
            .ok(
                "POST",
                &path("keep", "/STRIPE_KEY/rollback"),
                Some(json!({ "to": 3 })),
            )
            .await;
        assert_eq!(r["version"], 6);
    }
}

#[tokio::test]
async fn retention_by_age_destroys_every_rotated_version_but_never_the_active_one() {
    let app = spawn_app_with(TestOptions {
        tweak: Some(Box::new(|c| {
            c.credentials.version_retention.max_age = Duration::from_millis(1);
            c.credentials.version_retention.sweep_interval = Duration::from_millis(50);
        })),
        ..Default::default()
    })
    .await;
    let token = app.stripe_vault("age", "sk_a1").await;
    assert_eq!(rotate(&app, "age", "STRIPE_KEY", "sk_a2").await.0, 200);
    let mut last = Vec::new();
    let swept = eventually(Duration::from_secs(10), async || {
        last = versions(&app, "age", "STRIPE_KEY").await;
        (last.len() == 1).then_some(())
    })
    .await;
    assert!(swept.is_some(), "{last:?}");
    assert_eq!(last, [(2, "active".to_owned())]);
    let agent = app.agent(&token, "age").await;
    assert_eq!(
        agent
            .get("https://api.example.test/")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn types_and_metadata_are_checked_and_nothing_bad_is_stored() {
    let app = app_on(&None).await;
    app.create_vault("meta").await;
    let meta_path = path("meta", "");
    let cases = [
        (
            json!({ "credentials": { "K": "v" }, "metadata": { "K": { "Bad Key": "x" } } }),
            400,
            "invalid_credential",
            "Bad Key",
        ),
        (
            json!({ "credentials": { "K": "v" }, "metadata": { "K": { "note": "x".repeat(257) } } }),
            400,
            "invalid_credential",
            "metadata.note",
        ),
        (
            json!({ "credentials": { "K": "v" }, "metadata": { "K": (0..33).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>() } }),
            400,
            "invalid_credential",
            "at most 32 entries",
        ),
        (
            json!({ "credentials": { "K": "v" }, "metadata": { "OTHER": { "a": "b" } } }),
            400,
            "invalid_body",
            "OTHER",
        ),
        (
            json!({ "credentials": { "K": "v" }, "types": { "K": "pgp_key" } }),
            400,
            "invalid_credential",
            "pgp_key",
        ),
        (
            json!({ "credentials": { "K": "" } }),
            400,
            "invalid_credential",
            "value",
        ),
        (
            json!({ "credentials": { "K": "line\nbreak" } }),
            400,
            "invalid_credential",
            "control characters",
        ),
    ];
    for (body, status, code, names) in cases {
        let r = app.call("PUT", &meta_path, Some(body.clone())).await;
        assert_eq!(refusal(&r), (status, code), "{body}: {r:?}");
        let message = r.1["message"].as_str().unwrap();
        assert!(message.contains(names), "{message} should name {names}");
        assert!(
            message.contains("K") || code == "invalid_body",
            "{message} names the key"
        );
    }
    assert_eq!(
        app.ok("GET", &path("meta", ""), None).await,
        json!([]),
        "nothing was stored"
    );

    // Good metadata is stored sealed and shown to members; a type, once set, stays.
    let w = app
        .ok(
            "PUT",
            &path("meta", ""),
            Some(json!({
                "credentials": { "PW": "hunter2-password" },
                "types": { "PW": "password" },
                "metadata": { "PW": { "username": "alice" } },
                "descriptions": { "PW": "the test login" },
            })),
        )
        .await;
    assert_eq!(w["written"][0]["type"], "password");
    let c = listed(&app, "meta", "PW").await;
    assert_eq!(c["type"], "password");
    assert_eq!(c["metadata"], json!({ "username": "alice" }));
    assert_eq!(c["description"], "the test login");
    let r = app
        .call(
            "PUT",
            &path("meta", ""),
            Some(json!({ "credentials": { "PW": "x" }, "types": { "PW": "api_key" } })),
        )
        .await;
    assert_eq!(refusal(&r), (409, "type_mismatch"), "{r:?}");
    assert!(r.1["message"].as_str().unwrap().contains("password"));
    // Without a type, an existing key keeps its own; metadata not given is kept.
    app.ok(
        "PUT",
        &path("meta", ""),
        Some(json!({ "credentials": { "PW": "second-password" } })),
    )
    .await;
    let c = listed(&app, "meta", "PW").await;
    assert_eq!(
        (c["type"].as_str(), c["version"].as_i64()),
        (Some("password"), Some(2))
    );
    assert_eq!(c["metadata"], json!({ "username": "alice" }));
    // Rotation with bad metadata is refused too, and stores nothing.
    let r = app
        .call(
            "POST",
            &path("meta", "/PW/rotate"),
            Some(json!({ "value": "third", "metadata": { "UPPER": "x" } })),
        )
        .await;
    assert_eq!(refusal(&r), (400, "invalid_credential"), "{r:?}");
    assert_eq!(versions(&app, "meta", "PW").await.len(), 2);
}

#[tokio::test]
async fn proxy_role_callers_cannot_read_versions_values_or_change_lifecycle() {
    let app = app_on(&None).await;
    let token = app.stripe_vault("deny", "sk_deny_value").await;
    let calls = [
        ("GET", path("deny", "/STRIPE_KEY/versions"), None),
        ("GET", path("deny", "/STRIPE_KEY"), None),
        ("GET", path("deny", "?reveal=true"), None),
        (
            "POST",
            path("deny", "/STRIPE_KEY/rotate"),
            Some(json!({ "value": "sk_agent" })),
        ),
        (
            "POST",
            path("deny", "/STRIPE_KEY/rollback"),
            Some(json!({ "to": 1 })),
        ),
        ("POST", path("deny", "/STRIPE_KEY/revoke"), Some(json!({}))),
    ];
    for (method, p, body) in calls {
        let r = app.call_with(Some(&token), method, &p, body).await;
        assert_eq!(r.0, 403, "{method} {p}: {r:?}");
        assert!(!r.1.to_string().contains("sk_deny_value"));
    }
    assert_eq!(
        versions(&app, "deny", "STRIPE_KEY").await,
        [(1, "active".to_owned())],
        "nothing changed"
    );
}

#[tokio::test]
async fn use_count_and_last_used_at_move_after_proxied_requests() {
    let app = app_on(&None).await;
    let token = app.stripe_vault("uses", "sk_uses").await;
    let before = listed(&app, "uses", "STRIPE_KEY").await;
    assert_eq!(before["use_count"], 0);
    assert_eq!(before["last_used_at"], Value::Null);
    let agent = app.agent(&token, "uses").await;
    for _ in 0..3 {
        assert_eq!(
            agent
                .get("https://api.example.test/")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let mut last = Value::Null;
    let moved = eventually(Duration::from_secs(10), async || {
        last = listed(&app, "uses", "STRIPE_KEY").await;
        (last["use_count"] == 3).then_some(())
    })
    .await;
    assert!(moved.is_some(), "{last}");
    assert!(last["last_used_at"].as_i64().unwrap() >= before["created_at"].as_i64().unwrap());
}

#[tokio::test]
async fn restart_keeps_versions_states_metadata_and_refusals() {
    for db in backends().await {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let postgres = db.as_ref().map(|d| d.url.clone());
        let app = spawn_app_with(TestOptions {
            postgres: postgres.clone(),
            data_dir: Some(dir.clone()),
            ..Default::default()
        })
        .await;
        app.create_vault("keep").await;
        app.ok(
            "PUT",
            &path("keep", ""),
            Some(json!({
                "credentials": { "LIVE": "sk_live_1", "DEAD": "sk_dead_1" },
                "metadata": { "LIVE": { "owner": "payments" } },
            })),
        )
        .await;
        assert_eq!(rotate(&app, "keep", "LIVE", "sk_live_2").await.0, 200);
        app.ok("POST", &path("keep", "/DEAD/revoke"), Some(json!({})))
            .await;
        app.set_services_yaml(
            "keep",
            "- name: live\n  host: api.example.test\n  auth: {type: bearer, token: LIVE}\n- name: dead\n  host: dead.example.test\n  auth: {type: bearer, token: DEAD}\n",
        )
        .await;
        let (upstream, ca) = (app.upstream.clone(), app.upstream_ca.clone());
        app.stop().await;

        let app = spawn_app_against(
            TestOptions {
                postgres,
                data_dir: Some(dir.clone()),
                register_owner: false,
                ..Default::default()
            },
            upstream,
            ca,
        )
        .await;
        let mut app = app;
        app.owner_token = app.login(OWNER_EMAIL, OWNER_PASSWORD).await;
        assert_eq!(
            versions(&app, "keep", "LIVE").await,
            [(2, "active".to_owned()), (1, "rotated".to_owned())]
        );
        assert_eq!(
            listed(&app, "keep", "LIVE").await["metadata"],
            json!({ "owner": "payments" })
        );
        assert_eq!(listed(&app, "keep", "DEAD").await["state"], "revoked");
        let token = app.proxy_token("keep").await.0;
        let agent = app.agent(&token, "keep").await;
        agent.get("https://api.example.test/").send().await.unwrap();
        assert_eq!(
            app.upstream.last().header("authorization").as_deref(),
            Some("Bearer sk_live_2")
        );
        let resp = agent
            .get("https://dead.example.test/")
            .send()
            .await
            .unwrap();
        assert_proxy_error(&resp, 502, "credential_revoked");
    }
}

/// The fixture holds a database written by the release before per-credential keys (see
/// tests/fixtures/make-pre-0005.sh): on its first start, every value is re-sealed under a data
/// key of its own, the old column is emptied, and the proxy injects the same values as before.
async fn upgraded_fixture_serves_the_old_values(postgres: Option<TestDatabase>) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    if let Some(db) = &postgres {
        let sql = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/pre-0005.postgres.sql"
        ))
        .unwrap();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::Connection::close(conn).await.unwrap();
    } else {
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/pre-0005.sqlite"
            ),
            data.join("agent-vault.db"),
        )
        .unwrap();
    }
    let url = postgres.as_ref().map(|d| d.url.clone());
    let opts = || TestOptions {
        postgres: url.clone(),
        data_dir: Some(dir.clone()),
        register_owner: false,
        ..Default::default()
    };
    let mut app = spawn_app_with(opts()).await;
    app.owner_token = app.login(OWNER_EMAIL, OWNER_PASSWORD).await;
    let token = app.proxy_token("legacy").await.0;
    let agent = app.agent(&token, "legacy").await;
    for (host, want) in [
        ("api.example.test", "Bearer sk_legacy_stripe_0002"),
        ("gh.example.test", "Bearer gh_legacy_token_0003"),
    ] {
        let resp = agent.get(format!("https://{host}/")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{host}");
        assert_eq!(
            app.upstream.last().header("authorization").as_deref(),
            Some(want)
        );
    }
    let other = app
        .ok("GET", "/v1/vaults/second/credentials/OTHER_KEY", None)
        .await;
    assert_eq!(other["value"], "second_vault_value_0004");
    assert_eq!(other["type"], "api_key");
    let pem = app
        .ok("GET", "/v1/vaults/second/credentials/PEM_KEY", None)
        .await;
    assert!(
        pem["value"]
            .as_str()
            .unwrap()
            .contains("line-one\nline-two"),
        "{pem}"
    );
    assert_eq!(
        pem["type"], "generic",
        "a value api_key would refuse stays usable"
    );
    assert_eq!(
        versions(&app, "legacy", "STRIPE_KEY").await,
        [(2, "active".to_owned())],
        "the old value became its version 2"
    );

    let store = app.open_store().await;
    let count = async |sql: &'static str| -> i64 {
        sqlx::Row::get(
            &sqlx::query(sql).fetch_one(store.pool()).await.unwrap(),
            "n",
        )
    };
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM credentials WHERE LENGTH(sealed_value) > 0").await,
        0,
        "the old column is empty"
    );
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM credential_versions").await,
        4
    );
    assert_eq!(
        count("SELECT COUNT(DISTINCT wrapped_key) AS n FROM credential_versions").await,
        4,
        "each value under its own data key"
    );
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM instance_state WHERE key = 'credential_keys_pending'")
            .await,
        0
    );
    store.close().await;

    // A second start finds nothing to upgrade and serves the same.
    let (upstream, ca) = (app.upstream.clone(), app.upstream_ca.clone());
    app.stop().await;
    let mut app = spawn_app_against(opts(), upstream, ca).await;
    app.owner_token = app.login(OWNER_EMAIL, OWNER_PASSWORD).await;
    let token = app.proxy_token("legacy").await.0;
    app.agent(&token, "legacy")
        .await
        .get("https://api.example.test/")
        .send()
        .await
        .unwrap();
    assert_eq!(
        app.upstream.last().header("authorization").as_deref(),
        Some("Bearer sk_legacy_stripe_0002")
    );
    drop(postgres);
}

#[tokio::test]
async fn upgrade_from_the_previous_release_reseals_every_value_under_its_own_key() {
    upgraded_fixture_serves_the_old_values(None).await;
    if let Some(db) = TestDatabase::create().await {
        upgraded_fixture_serves_the_old_values(Some(db)).await;
    }
}

/// A database writer without the master password edits a credential row: un-revokes it,
/// extends its expiry, or points it at another version. The row fails its MAC and is treated
/// as absent: the proxy sends nothing, the API does not list it.
#[tokio::test]
async fn credential_rows_edited_in_the_database_are_treated_as_absent() {
    for db in backends().await {
        let app = app_on(&db).await;
        let token = app.stripe_vault("edit", "sk_edit_1").await;
        assert_eq!(rotate(&app, "edit", "STRIPE_KEY", "sk_edit_2").await.0, 200);
        app.ok("POST", &path("edit", "/STRIPE_KEY/revoke"), Some(json!({})))
            .await;
        let agent = app.agent(&token, "edit").await;
        let store = app.open_store().await;
        let revoked_at: i64 = sqlx::Row::get(
            &sqlx::query("SELECT revoked_at FROM credentials")
                .fetch_one(store.pool())
                .await
                .unwrap(),
            "revoked_at",
        );
        for edit in [
            "UPDATE credentials SET state = 'active', active_version = 1",
            "UPDATE credentials SET state = 'active', active_version = 2, revoked_at = NULL",
            "UPDATE credentials SET expires_at = 1",
            "UPDATE credentials SET type = 'generic'",
            // Lowered so that the next version number would be issued a second time.
            "UPDATE credentials SET version = 1",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(edit))
                .execute(store.pool())
                .await
                .unwrap();
            sqlx::query("UPDATE credential_versions SET state = 'active'")
                .execute(store.pool())
                .await
                .unwrap();
            app.set_policy("edit", "tunnel").await; // any write rebuilds the snapshot
            let before = app.upstream.count();
            let resp = agent.get("https://api.example.test/").send().await.unwrap();
            assert_proxy_error(&resp, 502, "credential_not_found");
            assert_eq!(app.upstream.count(), before, "{edit}: nothing was sent");
            assert_eq!(
                listed(&app, "edit", "STRIPE_KEY").await,
                Value::Null,
                "{edit}"
            );
            let r = app.call("GET", &path("edit", "/STRIPE_KEY"), None).await;
            assert_eq!(r.0, 404, "{edit}: {r:?}");
            // Put back exactly as it was, the row verifies again: still revoked.
            sqlx::query("UPDATE credentials SET state = 'revoked', active_version = NULL, revoked_at = $1, expires_at = NULL, type = 'api_key', version = 2")
                .bind(revoked_at)
                .execute(store.pool())
                .await
                .unwrap();
            sqlx::query("UPDATE credential_versions SET state = 'revoked'")
                .execute(store.pool())
                .await
                .unwrap();
            app.set_policy("edit", "tunnel").await;
            let resp = agent.get("https://api.example.test/").send().await.unwrap();
            assert_proxy_error(&resp, 502, "credential_revoked");
        }
        store.close().await;
    }
}

/// Crypto-shredding on SQLite: once a credential is deleted (or a rotated version destroyed),
/// its wrapped data keys and ciphertexts are gone from the database file itself, not left in
/// free pages (`secure_delete`), once the WAL is checkpointed.
#[tokio::test]
async fn deleted_data_keys_are_overwritten_in_the_sqlite_file() {
    let app = app_on(&None).await;
    app.stripe_vault("shred", "sk_shred_1").await;
    assert_eq!(
        rotate(&app, "shred", "STRIPE_KEY", "sk_shred_2").await.0,
        200
    );
    let store = app.open_store().await;
    let secure: i64 = sqlx::Row::get(
        &sqlx::query("PRAGMA secure_delete")
            .fetch_one(store.pool())
            .await
            .unwrap(),
        0,
    );
    assert_eq!(secure, 1, "every connection overwrites deleted content");
    let blobs: Vec<Vec<u8>> = sqlx::query(
        "SELECT CAST(wrapped_key AS BLOB) AS b FROM credential_versions UNION ALL \
         SELECT CAST(sealed_value AS BLOB) FROM credential_versions UNION ALL \
         SELECT CAST(wrapped_key AS BLOB) FROM credentials",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| sqlx::Row::get(r, "b"))
    .collect();
    assert_eq!(blobs.len(), 5);
    app.ok(
        "DELETE",
        &path("shred", ""),
        Some(json!({ "keys": ["STRIPE_KEY"] })),
    )
    .await;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let file = std::fs::read(app.config.data_dir.join("agent-vault.db")).unwrap();
    for blob in &blobs {
        assert!(
            !file.windows(blob.len()).any(|w| w == blob.as_slice()),
            "a deleted wrapped key or ciphertext is still in the file"
        );
    }
}

/// A database writer who kept the credential row from before its revocation writes it back
/// (state, active version and MAC as they were): the value was destroyed with the revocation,
/// so nothing is sent upstream and nothing is revealed.
#[tokio::test]
async fn a_revoked_credential_written_back_as_it_was_stays_unusable() {
    let app = crate::support::spawn_app().await;
    let token = app.stripe_vault("unrevoke", "sk_before_revoke").await;
    let agent = app.agent(&token, "unrevoke").await;
    let resp = agent.get("https://api.example.test/").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let store = app.open_store().await;
    let row = sqlx::query(
        "SELECT state, active_version, CAST(mac AS BLOB) AS mac FROM credentials WHERE key = 'STRIPE_KEY'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    let (state, active, mac): (String, Option<i64>, Vec<u8>) = (
        sqlx::Row::get(&row, "state"),
        sqlx::Row::get(&row, "active_version"),
        sqlx::Row::get(&row, "mac"),
    );
    app.ok(
        "POST",
        "/v1/vaults/unrevoke/credentials/STRIPE_KEY/revoke",
        Some(json!({})),
    )
    .await;
    sqlx::query(
        "UPDATE credentials SET state = $1, active_version = $2, revoked_at = NULL, mac = $3 WHERE key = 'STRIPE_KEY'",
    )
    .bind(state)
    .bind(active)
    .bind(mac)
    .execute(store.pool())
    .await
    .unwrap();
    store.close().await;
    // Any write rebuilds the vault's snapshot from the edited rows.
    app.set_policy("unrevoke", "tunnel").await;
    let served = app.upstream.count();
    let resp = agent.get("https://api.example.test/").send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(app.upstream.count(), served, "nothing reached the upstream");
    let (status, body) = app
        .call("GET", "/v1/vaults/unrevoke/credentials/STRIPE_KEY", None)
        .await;
    assert_ne!(status, 200, "{body}");
    assert!(!body.to_string().contains("sk_before_revoke"), "{body}");
}

/// A version row's `expires_at` is not under a MAC: a database writer who clears it on an
/// expired JWT's version must not get that token served by a rollback, since the expiry the
/// value itself carries (`exp`) is read again.
#[tokio::test]
async fn a_rollback_reads_the_expiry_the_value_carries_again() {
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let jwt = format!(
        "{}.{}.c2ln",
        b64(json!({ "alg": "HS256", "typ": "JWT" })),
        b64(json!({ "sub": "bot", "exp": 1_000_000 }))
    );
    let app = crate::support::spawn_app().await;
    app.create_vault("jwt").await;
    app.ok(
        "PUT",
        "/v1/vaults/jwt/credentials",
        Some(json!({
            "credentials": { "STRIPE_KEY": jwt },
            "types": { "STRIPE_KEY": "token" },
            "allow_expired": true
        })),
    )
    .await;
    assert_eq!(
        rotate(&app, "jwt", "STRIPE_KEY", "sk_plain_token").await.0,
        200
    );
    app.set_services_yaml(
        "jwt",
        "- name: stripe\n  host: api.example.test\n  auth: {type: bearer, token: STRIPE_KEY}\n",
    )
    .await;
    let store = app.open_store().await;
    sqlx::query("UPDATE credential_versions SET expires_at = NULL WHERE version = 1")
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    app.ok(
        "POST",
        &path("jwt", "/STRIPE_KEY/rollback"),
        Some(json!({ "to": 1 })),
    )
    .await;
    let token = app.proxy_token("jwt").await.0;
    let agent = app.agent(&token, "jwt").await;
    let resp = agent.get("https://api.example.test/").send().await.unwrap();
    assert_proxy_error(&resp, 502, "credential_expired");
    assert_eq!(app.upstream.count(), 0, "nothing reached the upstream");
}
