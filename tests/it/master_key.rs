//! Online rotation of the instance key (`agent-vault master-key rotate`): the proxy keeps
//! serving while it runs (failed requests counted: zero), everything keyed by the instance key
//! still works after it and after a restart, another instance on the same Postgres database
//! adopts the new key and keeps serving, and a copy of the database taken before the rotation
//! cannot be opened with the keys the server holds after it (crypto-shredding).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use agent_vault::crypto::{Aad, DataKey, KDF_QUEUE_WAIT, KdfGate};
use agent_vault::keys::{Keyring, WrappedDataKey};
use agent_vault::store::Store;
use agent_vault::store::rekey::{VersionColumn, WrappedKeyColumns};
use secrecy::SecretString;
use serde_json::json;

use crate::support::{
    MASTER_PASSWORD, TINY_KDF, TestApp, TestDatabase, TestOptions, eventually, for_each_store,
    spawn_app, spawn_app_against, spawn_app_with,
};

/// Agents sending requests through the proxy in a loop until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    /// Starts one looping agent per client.
    fn start(clients: Vec<reqwest::Client>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks = clients
            .into_iter()
            .map(|client| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut why = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get("https://api.example.test/charges").send().await {
                            Ok(r) if r.status() == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if why.len() < 5 {
                                    why.push(match other {
                                        Ok(r) => format!(
                                            "{} {:?}",
                                            r.status(),
                                            r.headers().get("x-agent-vault-proxy-error")
                                        ),
                                        Err(e) => format!("{e:#}"),
                                    });
                                }
                            }
                        }
                    }
                    why
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Waits until `more` further requests succeeded (bounded).
    async fn served(&self, more: u64) {
        let target = self.ok.load(Ordering::Relaxed) + more;
        let reached = eventually(Duration::from_secs(30), async || {
            (self.ok.load(Ordering::Relaxed) >= target).then_some(())
        })
        .await;
        assert!(
            reached.is_some(),
            "agents stopped being served ({} failed)",
            self.failed.load(Ordering::Relaxed)
        );
    }

    /// Stops the agents; (succeeded, failed, why some failed).
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut why = Vec::new();
        for t in self.tasks {
            why.extend(t.await.unwrap());
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            why,
        )
    }
}

async fn key_version(app: &TestApp) -> serde_json::Value {
    app.ok("GET", "/v1/master-key", None).await
}

#[tokio::test]
#[allow(clippy::print_stdout)] // the count of failed requests is the measurement
async fn the_proxy_keeps_serving_while_the_master_key_rotates() {
    let app = spawn_app().await;
    let token = app.stripe_vault("rot", "sk_rot_load").await;
    app.cli_login().await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(app.agent(&token, "rot").await);
    }
    let load = Load::start(clients);
    load.served(20).await;
    for round in 1..=3 {
        let out = app.cli(&["master-key", "rotate", "--json"], None).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let report = out.json();
        assert_eq!(report["from_version"], round, "{report}");
        assert_eq!(report["key_version"], round + 1, "{report}");
        assert!(report["remaced"].as_u64().unwrap() >= 4, "{report}");
        // The CA key and the token-hash key are sealed again; the credential's two data keys
        // (metadata and value) are wrapped again, its value untouched.
        assert!(report["resealed"].as_u64().unwrap() >= 2, "{report}");
        assert!(report["rewrapped"].as_u64().unwrap() >= 2, "{report}");
        load.served(20).await;
    }
    let (ok, failed, why) = load.finish().await;
    println!(
        "master-key rotation under load: {ok} requests served, {failed} failed, during 3 rotations"
    );
    assert_eq!(failed, 0, "requests failed during rotation: {why:?}");
    assert_eq!(
        app.upstream.last().header("authorization").as_deref(),
        Some("Bearer sk_rot_load")
    );
    assert_eq!(
        key_version(&app).await,
        json!({ "key_version": 4, "held_versions": [4] }),
        "the old versions are forgotten once settled"
    );

    // Audited, without key material.
    let store = app.open_store().await;
    let rows = sqlx::query(
        "SELECT target, detail FROM audit_events WHERE action = 'master_key.rotate' ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    let target: String = sqlx::Row::get(&rows[2], "target");
    assert_eq!(target, "instance key v3 -> v4");
    let stored: i64 = sqlx::Row::get(
        &sqlx::query("SELECT key_version FROM master_key")
            .fetch_one(store.pool())
            .await
            .unwrap(),
        "key_version",
    );
    assert_eq!(stored, 4);
    store.close().await;
}

#[tokio::test]
async fn only_an_owner_can_rotate_the_master_key() {
    let app = spawn_app().await;
    let token = app.stripe_vault("rot", "sk_rot_owner").await;
    let (status, body) = app
        .call_with(Some(&token), "POST", "/v1/master-key/rotate", None)
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    let (status, _) = app
        .call_with(None, "POST", "/v1/master-key/rotate", None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(key_version(&app).await["key_version"], 1, "nothing rotated");
    // The CLI says so in one line and exits 1.
    app.cli_login().await;
    let out = app
        .cli_env(
            &["master-key", "rotate"],
            None,
            &[("AGENT_VAULT_TOKEN", &token)],
        )
        .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("owner"), "{}", out.stderr);
}

#[tokio::test]
async fn after_a_rotation_a_restart_with_the_same_password_keeps_tokens_sessions_services_and_the_ca()
 {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_with(TestOptions {
        data_dir: Some(dir.clone()),
        ..Default::default()
    })
    .await;
    let token = app.stripe_vault("kept", "sk_kept").await;
    let owner_session = app.owner_token.clone();
    let ca = app.ca_pem().await;
    let rotated = app
        .ok("POST", "/v1/master-key/rotate", Some(json!({})))
        .await;
    assert_eq!(rotated["key_version"], 2, "{rotated}");
    let upstream = app.upstream.clone();
    let upstream_ca = app.upstream_ca.clone();
    app.stop().await;

    let app = spawn_app_against(
        TestOptions {
            data_dir: Some(dir.clone()),
            register_owner: false,
            ..Default::default()
        },
        upstream,
        upstream_ca,
    )
    .await;
    // The session from before the rotation (token hash, token and user MACs, grants).
    let vaults = app
        .call_with(Some(&owner_session), "GET", "/v1/vaults", None)
        .await;
    assert_eq!(vaults.0, 200, "{}", vaults.1);
    assert_eq!(
        app.call_with(Some(&owner_session), "GET", "/v1/master-key", None)
            .await
            .1["key_version"],
        2
    );
    // A fresh login, the agent's token, the service and its credential, and the CA.
    app.login(crate::support::OWNER_EMAIL, crate::support::OWNER_PASSWORD)
        .await;
    let resp = app
        .agent(&token, "kept")
        .await
        .get("https://api.example.test/")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.upstream.last().header("authorization").as_deref(),
        Some("Bearer sk_kept")
    );
    assert_eq!(app.ca_pem().await, ca, "the same CA");
    // A wrong password still does not open it.
    let mut config = app.config.clone();
    app.stop().await;
    config.server.port = 0;
    let wrong =
        agent_vault::app::App::build(config, SecretString::from("not the password at all")).await;
    assert!(wrong.is_err());
}

/// Copies the SQLite database file (and its write-ahead log) as a backup on disk would.
fn copy_database(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["agent-vault.db", "agent-vault.db-wal"] {
        if from.join(name).exists() {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }
}

#[tokio::test]
async fn a_copy_of_the_database_taken_before_a_rotation_does_not_open_with_the_keys_after_it() {
    let app = spawn_app().await;
    app.stripe_vault("shred", "sk_shredded_value").await;
    let keyring = app.proxy_state.keyring.clone();
    // A data key wrapped the way per-credential keys are, in a table of this test's own.
    let store = app.open_store().await;
    sqlx::query(
        "CREATE TABLE shred_keys (vault_id TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL, \
         wrapped_key BLOB NOT NULL, key_version INTEGER NOT NULL)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let (_, wrapped) = keyring.new_data_key("vault-id", "STRIPE_KEY", 1).unwrap();
    sqlx::query("INSERT INTO shred_keys VALUES ('vault-id', 'STRIPE_KEY', 1, $1, $2)")
        .bind(wrapped.bytes.clone())
        .bind(wrapped.key_version)
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let backup = tempfile::tempdir().unwrap();
    copy_database(&app.config.data_dir, backup.path());

    let live = app.open_store().await;
    let old_wrap: Vec<u8> = sqlx::Row::get(
        &sqlx::query("SELECT wrapped_dek FROM master_key")
            .fetch_one(live.pool())
            .await
            .unwrap(),
        "wrapped_dek",
    );
    live.close().await;
    app.ok("POST", "/v1/master-key/rotate", Some(json!({})))
        .await;
    assert_eq!(keyring.key_versions(), vec![2]);
    // The old version's wrap is gone from the live files (secure_delete, WAL truncated).
    for file in crate::support::walk(&app.config.data_dir) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes
                .windows(old_wrap.len())
                .any(|w| w == old_wrap.as_slice()),
            "the destroyed instance-key wrap is still in {}",
            file.display()
        );
    }

    let copy = Store::open(backup.path(), None).await.unwrap();
    let row = sqlx::query("SELECT wrapped_key, key_version FROM shred_keys")
        .fetch_one(copy.pool())
        .await
        .unwrap();
    let old = WrappedDataKey {
        bytes: sqlx::Row::get(&row, "wrapped_key"),
        key_version: sqlx::Row::get(&row, "key_version"),
    };
    assert_eq!(old.key_version, 1);
    assert!(
        keyring
            .unwrap_data_key("vault-id", "STRIPE_KEY", 1, &old)
            .is_err(),
        "the copy's data key does not unwrap with the current keyring"
    );
    let relabelled = WrappedDataKey {
        key_version: 2,
        ..old.clone()
    };
    assert!(
        keyring
            .unwrap_data_key("vault-id", "STRIPE_KEY", 1, &relabelled)
            .is_err(),
        "nor when it claims the current version"
    );
    // Nor do the copy's credential value and CA key, which the live database's do.
    let sealed_of = async |store: &Store| {
        let r = sqlx::query(
            "SELECT vault_id, version, wrapped_key, key_version, sealed_value FROM credential_versions WHERE key = 'STRIPE_KEY'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        let wrapped = WrappedDataKey {
            bytes: sqlx::Row::get(&r, "wrapped_key"),
            key_version: sqlx::Row::get(&r, "key_version"),
        };
        let (v, n, s): (String, i64, Vec<u8>) = (
            sqlx::Row::get(&r, "vault_id"),
            sqlx::Row::get(&r, "version"),
            sqlx::Row::get(&r, "sealed_value"),
        );
        (v, n, wrapped, s)
    };
    let (v, n, copied_wrap, copied) = sealed_of(&copy).await;
    assert!(
        keyring
            .open_version(&v, "STRIPE_KEY", n, &copied_wrap, &copied)
            .is_err()
    );
    let copied_ca = copy.ca_state().await.unwrap().unwrap().sealed_key;
    assert!(keyring.open_instance(&Aad::ca_key(), &copied_ca).is_err());
    let live = app.open_store().await;
    let (v, n, wrapped, current) = sealed_of(&live).await;
    assert!(
        keyring
            .open_version(&v, "STRIPE_KEY", n, &wrapped, &current)
            .is_ok()
    );
    let live_ca = live.ca_state().await.unwrap().unwrap().sealed_key;
    assert!(keyring.open_instance(&Aad::ca_key(), &live_ca).is_ok());
    live.close().await;

    // What the copy still allows with the master password: everything it held.
    let gate = KdfGate::new(1 << 20, KDF_QUEUE_WAIT);
    let (old_ring, _) = agent_vault::unseal::unseal_or_init(
        &copy,
        SecretString::from(MASTER_PASSWORD),
        TINY_KDF,
        &gate,
    )
    .await
    .unwrap();
    assert_eq!(old_ring.active_key_version(), 1);
    let opened = old_ring
        .open_version(&v, "STRIPE_KEY", n, &copied_wrap, &copied)
        .unwrap();
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(&opened),
        b"sk_shredded_value"
    );
    assert!(
        old_ring
            .unwrap_data_key("vault-id", "STRIPE_KEY", 1, &old)
            .is_ok()
    );
    copy.close().await;
}

#[tokio::test]
async fn rewrapping_a_table_keeps_every_data_key_and_leaves_a_forged_wrap_failing() {
    let table = WrappedKeyColumns {
        table: "rewrap_test",
        vault_id: "vault_id",
        key: "key",
        version: VersionColumn::Column("version"),
    };
    let meta = WrappedKeyColumns {
        table: "rewrap_meta_test",
        vault_id: "vault_id",
        key: "key",
        version: VersionColumn::Fixed(0),
    };
    for_each_store(|store, backend| {
        let (table, meta) = (table, meta);
        async move {
            let blob = if backend == "postgres" { "BYTEA" } else { "BLOB" };
            for (name, version_col) in [
                ("rewrap_test", ", version BIGINT NOT NULL"),
                ("rewrap_meta_test", ""),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE TABLE {name} (vault_id TEXT NOT NULL, key TEXT NOT NULL{version_col}, \
                     wrapped_key {blob} NOT NULL, key_version BIGINT NOT NULL)"
                )))
                .execute(store.pool())
                .await
                .unwrap();
            }
            let ring = Keyring::from_dek(DataKey::from_bytes([11; 32]));
            let mut keys = Vec::new();
            for (key, version) in [("A", 1), ("A", 2), ("B", 1)] {
                let (data_key, wrapped) = ring.new_data_key("v", key, version).unwrap();
                sqlx::query("INSERT INTO rewrap_test VALUES ('v', $1, $2, $3, $4)")
                    .bind(key)
                    .bind(version)
                    .bind(wrapped.bytes)
                    .bind(wrapped.key_version)
                    .execute(store.pool())
                    .await
                    .unwrap();
                keys.push((key, version, data_key));
            }
            let (meta_key, wrapped) = ring.new_data_key("v", "A", 0).unwrap();
            sqlx::query("INSERT INTO rewrap_meta_test VALUES ('v', 'A', $1, $2)")
                .bind(wrapped.bytes)
                .bind(wrapped.key_version)
                .execute(store.pool())
                .await
                .unwrap();
            // A wrap a database writer moved from (A, 1) to (C, 1): it must stay unreadable.
            let (_, moved) = ring.new_data_key("v", "A", 1).unwrap();
            sqlx::query("INSERT INTO rewrap_test VALUES ('v', 'C', 1, $1, $2)")
                .bind(moved.bytes)
                .bind(moved.key_version)
                .execute(store.pool())
                .await
                .unwrap();

            let rotation = ring.begin_rotation(2, DataKey::from_bytes([12; 32]));
            let counts = store
                .sweep_instance_key(&rotation, &[table, meta])
                .await
                .unwrap();
            assert_eq!(counts.rewrapped, 4, "{backend}");
            assert!(counts.untouched >= 1, "{backend}");
            ring.hold(&rotation);
            ring.activate(&rotation);
            ring.retire_others();

            let read = async |name: &str, key: &str, version: Option<i64>| {
                let sql = match version {
                    Some(_) => format!(
                        "SELECT wrapped_key, key_version FROM {name} WHERE key = $1 AND version = $2"
                    ),
                    None => format!("SELECT wrapped_key, key_version FROM {name} WHERE key = $1"),
                };
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(key.to_owned());
                if let Some(v) = version {
                    q = q.bind(v);
                }
                let r = q.fetch_one(store.pool()).await.unwrap();
                WrappedDataKey {
                    bytes: sqlx::Row::get(&r, "wrapped_key"),
                    key_version: sqlx::Row::get(&r, "key_version"),
                }
            };
            for (key, version, data_key) in &keys {
                let wrapped = read("rewrap_test", key, Some(*version)).await;
                assert_eq!(wrapped.key_version, 2, "{backend}");
                let back = ring.unwrap_data_key("v", key, *version, &wrapped).unwrap();
                assert_eq!(back.expose(), data_key.expose(), "{backend}");
            }
            let wrapped = read("rewrap_meta_test", "A", None).await;
            assert_eq!(
                ring.unwrap_data_key("v", "A", 0, &wrapped)
                    .unwrap()
                    .expose(),
                meta_key.expose(),
                "{backend}"
            );
            let forged = read("rewrap_test", "C", Some(1)).await;
            assert_eq!(forged.key_version, 1, "{backend}: left as it was");
            assert!(ring.unwrap_data_key("v", "C", 1, &forged).is_err());
        }
    })
    .await;
}

#[tokio::test]
#[allow(clippy::print_stdout)] // the count of failed requests is the measurement
async fn a_second_instance_on_postgres_keeps_serving_after_the_first_rotates() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    crate::support::install_crypto();
    let ca = Arc::new(crate::support::TestCa::new("rotation upstream CA"));
    let (chain, key) = ca.server_cert(&["example.test", "*.example.test"], (-1, 30));
    let upstream =
        crate::support::FakeUpstream::start(chain, key, crate::support::Alpn::Both).await;
    let opts = || TestOptions {
        postgres: Some(db.url.clone()),
        ..Default::default()
    };
    let a = spawn_app_against(opts(), upstream.clone(), ca.clone()).await;
    let b = spawn_app_against(opts(), upstream.clone(), ca.clone()).await;
    let token = a.stripe_vault("shared", "sk_pg_rot").await;
    // B serves the vault before the rotation.
    let served = eventually(Duration::from_secs(5), async || {
        let resp = b
            .agent(&token, "shared")
            .await
            .get("https://api.example.test/")
            .send()
            .await
            .ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
    assert!(served.is_some());

    let mut clients = Vec::new();
    for app in [&a, &b, &b] {
        clients.push(app.agent(&token, "shared").await);
    }
    let load = Load::start(clients);
    load.served(20).await;
    for round in 1..=2 {
        let rotated = a.ok("POST", "/v1/master-key/rotate", Some(json!({}))).await;
        assert_eq!(rotated["key_version"], round + 1, "{rotated}");
        let settled = eventually(Duration::from_secs(10), async || {
            let seen = key_version(&b).await;
            (seen == json!({ "key_version": round + 1, "held_versions": [round + 1] }))
                .then_some(())
        })
        .await;
        assert!(
            settled.is_some(),
            "B adopted the new key and forgot the old"
        );
        load.served(20).await;
    }
    // A fresh agent token minted through B (its MAC is made by B under the new key) works on
    // A, and a credential set through B reaches A's proxy.
    let (fresh, _) = b.proxy_token("shared").await;
    b.set_credentials("shared", &[("STRIPE_KEY", "sk_pg_after")])
        .await;
    let updated = eventually(Duration::from_secs(5), async || {
        let resp = a
            .agent(&fresh, "shared")
            .await
            .get("https://api.example.test/")
            .send()
            .await
            .ok()?;
        (resp.status() == 200
            && upstream.last().header("authorization").as_deref() == Some("Bearer sk_pg_after"))
        .then_some(())
    })
    .await;
    assert!(updated.is_some(), "A uses what B wrote after the rotation");
    let (ok, failed, why) = load.finish().await;
    println!(
        "master-key rotation on Postgres, two instances: {ok} requests served, {failed} failed, during 2 rotations"
    );
    assert_eq!(failed, 0, "requests failed during rotation: {why:?}");
    // B restarts with the master password into the rotated key.
    b.stop().await;
    let b = spawn_app_against(opts(), upstream.clone(), ca.clone()).await;
    assert_eq!(key_version(&b).await["key_version"], 3);
}

#[tokio::test]
async fn a_deleted_credential_leaves_no_ciphertext_in_the_sqlite_files_after_a_rotation() {
    let app = spawn_app().await;
    app.stripe_vault("gone", "sk_kept_beside").await;
    app.set_credentials("gone", &[("DOOMED", &"d".repeat(3000))])
        .await;
    let live = app.open_store().await;
    let sealed: Vec<u8> = sqlx::Row::get(
        &sqlx::query("SELECT sealed_value FROM credential_versions WHERE key = 'DOOMED'")
            .fetch_one(live.pool())
            .await
            .unwrap(),
        "sealed_value",
    );
    live.close().await;
    let (status, body) = app
        .call(
            "DELETE",
            "/v1/vaults/gone/credentials",
            Some(json!({ "keys": ["DOOMED"] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.ok("POST", "/v1/master-key/rotate", Some(json!({})))
        .await;
    // A window of the ciphertext is enough to show it survived.
    let probe = &sealed[100..164];
    for file in crate::support::walk(&app.config.data_dir) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(probe.len()).any(|w| w == probe),
            "the deleted credential's ciphertext is still in {}",
            file.display()
        );
    }
}
