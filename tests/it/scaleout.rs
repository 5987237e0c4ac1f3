//! Several instances on one Postgres database: changes made through one instance reach the
//! other's proxy through LISTEN/NOTIFY, and revocation reaches it within a second. Instances
//! (and restarts, on SQLite too) share one setup token per database.

use std::time::Duration;

use crate::support::{TestApp, TestDatabase, TestOptions, eventually, fetch, spawn_app_against};

#[tokio::test]
async fn two_instances_share_state_through_postgres() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    crate::support::install_crypto();
    let ca = std::sync::Arc::new(crate::support::TestCa::new("scale-out upstream CA"));
    let (chain, key) = ca.server_cert(&["example.test", "*.example.test"], (-1, 30));
    let upstream =
        crate::support::FakeUpstream::start(chain, key, crate::support::Alpn::Both).await;
    let a = spawn_app_against(
        TestOptions {
            postgres: Some(db.url.clone()),
            ..Default::default()
        },
        upstream.clone(),
        ca.clone(),
    )
    .await;
    let b = spawn_app_against(
        TestOptions {
            postgres: Some(db.url.clone()),
            register_owner: true,
            ..Default::default()
        },
        upstream.clone(),
        ca.clone(),
    )
    .await;
    assert_eq!(
        a.ca_pem().await,
        b.ca_pem().await,
        "both instances present the same CA"
    );

    // Configure through A, use through B.
    let token = a.stripe_vault("shared", "sk_first").await;
    let agent_b = b.agent(&token, "shared").await;
    let seen = eventually(Duration::from_secs(5), async || {
        let resp = agent_b.get("https://api.example.test/").send().await.ok()?;
        (resp.status() == 200).then(|| upstream.last().header("authorization"))
    })
    .await
    .flatten();
    assert_eq!(seen.as_deref(), Some("Bearer sk_first"));
    a.set_credentials("shared", &[("STRIPE_KEY", "sk_second")])
        .await;
    let updated = eventually(Duration::from_secs(5), async || {
        fetch(agent_b.get("https://api.example.test/")).await;
        let seen = upstream.last().header("authorization");
        (seen.as_deref() == Some("Bearer sk_second")).then_some(())
    })
    .await;
    assert!(
        updated.is_some(),
        "instance B picked up the change made through A"
    );

    // Revoke through A: B refuses the token within a second (cache TTL 500 ms).
    let tokens = a.ok("GET", "/v1/vaults/shared/tokens", None).await;
    let id = tokens[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        a.call("DELETE", &format!("/v1/tokens/{id}"), None).await.0,
        204
    );
    let refused = eventually(Duration::from_secs(5), async || {
        let fresh = b.agent(&token, "shared").await;
        match fresh.get("https://api.example.test/").send().await {
            Err(_) => Some(()),
            Ok(r) => (r.status() == 407).then_some(()),
        }
    })
    .await;
    assert!(
        refused.is_some(),
        "instance B stopped accepting the revoked token"
    );
}

/// Starts an instance without an owner on `postgres` (or on SQLite in `dir`), beside `upstream`.
/// Registers `name@example.com` (password `name-password-1`) with `setup_token` on `app`.
async fn register_as(app: &TestApp, name: &str, setup_token: &str) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "email": format!("{name}@example.com"),
        "password": format!("{name}-password-1"),
        "setup_token": setup_token,
    });
    app.call_anon("POST", "/v1/auth/register", Some(body)).await
}

async fn ownerless(
    postgres: Option<String>,
    dir: Option<std::sync::Arc<tempfile::TempDir>>,
) -> crate::support::TestApp {
    crate::support::spawn_app_with(TestOptions {
        postgres,
        data_dir: dir,
        register_owner: false,
        ..Default::default()
    })
    .await
}

fn setup_token_of(app: &crate::support::TestApp) -> String {
    let path = app
        .setup_token_file
        .as_ref()
        .expect("no owner yet: a setup token file");
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

#[tokio::test]
async fn a_second_instance_prints_the_first_instances_setup_token_instead_of_replacing_it() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let a = ownerless(Some(db.url.clone()), None).await;
    let first = setup_token_of(&a);
    // Another instance with its own data directory, and a restart of the first.
    let b = ownerless(Some(db.url.clone()), None).await;
    assert_eq!(setup_token_of(&b), first, "one setup token per database");
    let a_dir = a.data_dir.clone();
    a.stop().await;
    std::fs::remove_file(a_dir.path().join("data/setup-token")).unwrap();
    let a = ownerless(Some(db.url.clone()), Some(a_dir)).await;
    assert_eq!(
        setup_token_of(&a),
        first,
        "a lost file gets the same token back"
    );

    // The token the first instance printed registers the owner through the second.
    let (status, body) = register_as(&b, "ada", &first).await;
    assert_eq!(status, 201, "{body}");
    // Once an owner exists no instance makes or prints a setup token, and the burnt one fails.
    let c = ownerless(Some(db.url.clone()), None).await;
    assert!(c.setup_token_file.is_none());
    let (status, _) = register_as(&a, "eve", &first).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn on_sqlite_a_restart_without_the_token_file_prints_the_same_token() {
    let a = ownerless(None, None).await;
    let first = setup_token_of(&a);
    let dir = a.data_dir.clone();
    a.stop().await;
    std::fs::remove_file(dir.path().join("data/setup-token")).unwrap();
    let a = ownerless(None, Some(dir)).await;
    assert_eq!(setup_token_of(&a), first);
    let (status, body) = register_as(&a, "ada", &first).await;
    assert_eq!(status, 201, "{body}");
}

/// Runs SQL on an app's database behind its back.
async fn sql(app: &crate::support::TestApp, query: &'static str) -> u64 {
    let store = app.open_store().await;
    let done = sqlx::query(query).execute(store.pool()).await.unwrap();
    store.close().await;
    done.rows_affected()
}

#[tokio::test]
async fn a_setup_token_without_a_sealed_copy_is_kept_if_its_file_holds_it_else_replaced() {
    // As a database from before tokens were kept sealed: only the hash is stored.
    let a = ownerless(None, None).await;
    let first = setup_token_of(&a);
    let dir = a.data_dir.clone();
    assert_eq!(
        sql(
            &a,
            "DELETE FROM instance_state WHERE key = 'setup_token_sealed'"
        )
        .await,
        1
    );
    a.stop().await;
    let a = ownerless(None, Some(dir.clone())).await;
    assert_eq!(setup_token_of(&a), first, "the file still holds it: kept");

    // A sealed copy that does not open (edited) and no file: a new token replaces the old one,
    // which stops working.
    assert_eq!(
        sql(
            &a,
            "UPDATE instance_state SET value = '00ff' WHERE key = 'setup_token_sealed'"
        )
        .await,
        1
    );
    a.stop().await;
    std::fs::remove_file(dir.path().join("data/setup-token")).unwrap();
    let a = ownerless(None, Some(dir)).await;
    let second = setup_token_of(&a);
    assert_ne!(second, first);
    let register = async |token: &str| {
        a.call_anon(
            "POST",
            "/v1/auth/register",
            Some(serde_json::json!({ "email": "ada@example.com", "password": "ada-password-1", "setup_token": token })),
        )
        .await
        .0
    };
    assert_eq!(register(&first).await, 403);
    assert_eq!(register(&second).await, 201);
}
