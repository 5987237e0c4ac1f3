//! Rows changed behind the server's back (swapped ciphertexts, retargeted services, one flipped
//! bit) fail closed at the proxy, for the tampered credential only.

use crate::support::fixtures::flip_one_bit;
use crate::support::{TestOptions, assert_proxy_error, fetch, spawn_app, spawn_app_with};

#[tokio::test]
async fn tampered_rows_fail_closed_at_the_proxy() {
    let app = spawn_app().await;
    let token = app.stripe_vault("rows", "sk_rows_value").await;
    app.set_credentials("rows", &[("OTHER", "other-value")])
        .await;
    let agent = app.agent(&token, "rows").await;
    let store = app.open_store().await;
    // A credential row carrying another row's ciphertext.
    sqlx::query("UPDATE credential_versions SET sealed_value = (SELECT sealed_value FROM credential_versions c2 WHERE c2.key = 'OTHER'), wrapped_key = (SELECT wrapped_key FROM credential_versions c2 WHERE c2.key = 'OTHER') WHERE key = 'STRIPE_KEY'")
        .execute(store.pool())
        .await
        .unwrap();
    app.set_policy("rows", "tunnel").await; // any write rebuilds the snapshot from the rows
    let before = app.upstream.count();
    let resp = agent.get("https://api.example.test/").send().await.unwrap();
    assert_proxy_error(&resp, 502, "integrity_error");
    assert_eq!(app.upstream.count(), before, "nothing was sent upstream");
    // A service row pointed at another host without the key that MACs it.
    sqlx::query(
        "UPDATE services SET spec = REPLACE(spec, 'api.example.test', 'evil.example.test')",
    )
    .execute(store.pool())
    .await
    .unwrap();
    app.set_credentials("rows", &[("STRIPE_KEY", "sk_rows_value")])
        .await;
    let resp = fetch(agent.get("https://evil.example.test/")).await;
    assert_proxy_error(&resp, 502, "integrity_error");
    assert!(
        app.upstream
            .requests()
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "the credential never left"
    );
    store.close().await;
}

#[tokio::test]
async fn one_flipped_bit_fails_closed_for_that_credential_only() {
    let mut dbs = vec![None];
    if let Some(db) = crate::support::TestDatabase::create().await {
        dbs.push(Some(db));
    }
    for db in dbs {
        let url = db.as_ref().map(|d| d.url.clone());
        one_flipped_bit(url).await;
    }
}

async fn one_flipped_bit(postgres: Option<String>) {
    let app = spawn_app_with(TestOptions {
        postgres: postgres.clone(),
        ..Default::default()
    })
    .await;
    let token = app
        .service_vault(
            "bits",
            &[("BAD_KEY", "sk_bad_value"), ("GOOD_KEY", "sk_good_value")],
            "- name: bad\n  host: api.example.test\n  auth: {type: bearer, token: BAD_KEY}\n\
         - name: good\n  host: good.example.test\n  auth: {type: bearer, token: GOOD_KEY}\n",
        )
        .await;
    let agent = app.agent(&token, "bits").await;
    let store = app.open_store().await;
    flip_one_bit(&store, "BAD_KEY").await;
    store.close().await;
    app.set_policy("bits", "tunnel").await; // any write rebuilds the snapshot from the rows

    let resp = fetch(agent.get("https://good.example.test/ok")).await;
    assert_eq!(resp.status(), 200, "the other credential keeps working");
    let seen = app.upstream.requests();
    assert_eq!(
        seen.last().unwrap().header("authorization").as_deref(),
        Some("Bearer sk_good_value")
    );
    let before = app.upstream.count();
    let resp = fetch(agent.get("https://api.example.test/bad")).await;
    assert_proxy_error(&resp, 502, "integrity_error");
    assert_eq!(app.upstream.count(), before, "nothing was sent upstream");

    let credential = async |key: &str| {
        app.call("GET", &format!("/v1/vaults/bits/credentials/{key}"), None)
            .await
    };
    let (status, body) = credential("BAD_KEY").await;
    let bad = (status, body["error"].as_str());
    assert_eq!(bad, (500, Some("integrity_error")), "{body}");
    let (status, body) = credential("GOOD_KEY").await;
    let good = (status, body["value"].as_str());
    assert_eq!(good, (200, Some("sk_good_value")), "{body}");
    let (status, body) = app.call("GET", "/v1/vaults/bits/credentials", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .call("GET", "/v1/vaults/bits/credentials?reveal=true", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let rows = body.as_array().unwrap();
    let bad = rows.iter().find(|r| r["key"] == "BAD_KEY").unwrap();
    assert_eq!(bad["error"], "integrity_error", "{body}");
    assert!(bad.get("value").is_none(), "{body}");
    let good = rows.iter().find(|r| r["key"] == "GOOD_KEY").unwrap();
    assert_eq!(good["value"], "sk_good_value", "{body}");
}
