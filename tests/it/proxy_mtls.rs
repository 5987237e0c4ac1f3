//! TLS client identities to upstreams (`mtls`): an upstream that requires a client certificate
//! from a third test CA (neither the proxy's nor the upstream's) and records the subject each
//! connection presented; identities never share a connection; mtls beside a header; type
//! compatibility at `service set`; and the key and certificate never reach the logs.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::support::process::{ServerProcess, WithUpstream};
use crate::support::{
    Alpn, FakeUpstream, OWNER_EMAIL, OWNER_PASSWORD, TestApp, TestCa, TestOptions,
    assert_proxy_error, spawn_app_against, walk,
};

/// An app whose `*.example.test` upstream requires a client certificate signed by the returned
/// CA.
async fn mtls_app(alpn: Alpn) -> (TestApp, TestCa) {
    crate::support::install_crypto();
    let clients = TestCa::new("agent-vault tests client CA");
    let (upstream, ca) = mtls_upstream(&clients, alpn).await;
    let app = spawn_app_against(TestOptions::default(), upstream, ca).await;
    (app, clients)
}

async fn mtls_upstream(clients: &TestCa, alpn: Alpn) -> (FakeUpstream, std::sync::Arc<TestCa>) {
    let ca = std::sync::Arc::new(TestCa::new("agent-vault tests upstream CA"));
    let (chain, key) = ca.server_cert(&["example.test", "*.example.test"], (-1, 30));
    let upstream = FakeUpstream::start_requiring(chain, key, alpn, Some(clients)).await;
    (upstream, ca)
}

/// Stores a `certificate` credential holding `payload` (the canonical JSON).
//
// Until typed credentials land, today's API stores it as a plain value and the type is written
// by hand; with them this is `types: {KEY: certificate}` in the same PUT.
async fn set_certificate(app: &TestApp, vault: &str, key: &str, payload: &str) {
    let (status, body) = try_set_certificate(app, vault, key, payload).await;
    assert_eq!(status, 200, "{body}");
}

/// Sets `key` as a `certificate` credential; the status and body of the answer.
async fn try_set_certificate(app: &TestApp, vault: &str, key: &str, payload: &str) -> (u16, Value) {
    app.call(
        "PUT",
        &format!("/v1/vaults/{vault}/credentials"),
        Some(json!({ "credentials": { key: payload }, "types": { key: "certificate" } })),
    )
    .await
}

/// A vault with `certs` (key, common name) stored as certificates, `texts` as plain values, and
/// the services of `yaml`; returns a proxy token for it.
async fn vault(
    app: &TestApp,
    clients: &TestCa,
    name: &str,
    certs: &[(&str, &str)],
    texts: &[(&str, &str)],
    yaml: &str,
) -> String {
    app.create_vault(name).await;
    for (key, cn) in certs {
        set_certificate(app, name, key, &clients.client_identity(cn)).await;
    }
    if !texts.is_empty() {
        app.set_credentials(name, texts).await;
    }
    app.set_services_yaml(name, yaml).await;
    app.proxy_token(name).await.0
}

#[tokio::test]
async fn an_mtls_service_presents_its_client_certificate() {
    for alpn in [Alpn::Both, Alpn::H1Only] {
        let (app, clients) = mtls_app(alpn).await;
        let token = vault(
            &app,
            &clients,
            "mtls",
            &[("CLIENT_CERT", "billing-bot")],
            &[],
            "- name: bank\n  host: api.example.test\n  auth: {type: mtls, certificate: CLIENT_CERT}\n",
        )
        .await;
        let agent = app.agent(&token, "mtls").await;
        let resp = agent
            .get("https://api.example.test/echo")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{alpn:?}");
        let seen = app.upstream.last();
        assert_eq!(
            seen.client_subject.as_deref(),
            Some("billing-bot"),
            "{alpn:?}"
        );
        assert_eq!(
            seen.header("authorization"),
            None,
            "mtls attaches no header"
        );
    }
}

#[tokio::test]
async fn two_identities_to_one_upstream_never_share_a_connection() {
    let (app, clients) = mtls_app(Alpn::Both).await;
    let token = vault(
        &app,
        &clients,
        "pair",
        &[("CERT_A", "identity-a"), ("CERT_B", "identity-b")],
        &[],
        "- name: a\n  host: api.example.test/a/*\n  auth: {type: mtls, certificate: CERT_A}\n- name: b\n  host: api.example.test/b/*\n  auth: {type: mtls, certificate: CERT_B}\n",
    )
    .await;
    let agent = app.agent(&token, "pair").await;
    // Interleaved on one agent connection, then concurrently.
    for i in 0..4 {
        for side in ["a", "b"] {
            let resp = agent
                .get(format!("https://api.example.test/{side}/{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
    }
    let burst = (0..8).map(|i| {
        let side = if i % 2 == 0 { "a" } else { "b" };
        agent
            .get(format!("https://api.example.test/{side}/burst{i}"))
            .send()
    });
    for resp in futures_util::future::join_all(burst).await {
        assert_eq!(resp.unwrap().status(), 200);
    }
    let mut by_connection: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for req in app.upstream.requests() {
        let subject = req
            .client_subject
            .clone()
            .expect("every connection presents one");
        let want = if req.path_and_query.starts_with("/a/") {
            "identity-a"
        } else {
            "identity-b"
        };
        assert_eq!(subject, want, "{}", req.path_and_query);
        by_connection
            .entry(req.connection)
            .or_default()
            .insert(subject);
    }
    assert_eq!(app.upstream.count(), 16);
    for (connection, subjects) in &by_connection {
        assert_eq!(
            subjects.len(),
            1,
            "connection {connection} carried {subjects:?}"
        );
    }
    // Each identity's connections are pooled and reused, not made per request.
    assert!(by_connection.len() < 16, "{by_connection:?}");
}

#[tokio::test]
async fn mtls_and_a_bearer_header_on_one_service() {
    let (app, clients) = mtls_app(Alpn::Both).await;
    let token = vault(
        &app,
        &clients,
        "mixed",
        &[("CLIENT_CERT", "mixed-bot")],
        &[("API_TOKEN", "tok_mixed_123")],
        "- name: bank\n  host: api.example.test\n  auth: {type: bearer, token: API_TOKEN}\n  client_certificate: CLIENT_CERT\n",
    )
    .await;
    let resp = app
        .agent(&token, "mixed")
        .await
        .get("https://api.example.test/echo")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = app.upstream.last();
    assert_eq!(seen.client_subject.as_deref(), Some("mixed-bot"));
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Bearer tok_mixed_123")
    );
    // The request log names both credentials.
    let rows = app.wait_for_logs("mixed", 1).await;
    let keys = rows[0]["credential_keys"].to_string();
    assert!(
        keys.contains("CLIENT_CERT") && keys.contains("API_TOKEN"),
        "{keys}"
    );
}

#[tokio::test]
async fn a_service_without_an_identity_fails_at_the_upstream_tls() {
    for alpn in [Alpn::Both, Alpn::H1Only] {
        let (app, _clients) = mtls_app(alpn).await;
        let token = app.stripe_vault("plain", "sk_no_identity").await;
        let resp = app
            .agent(&token, "plain")
            .await
            .get("https://api.example.test/")
            .send()
            .await
            .unwrap();
        assert_proxy_error(&resp, 502, "upstream_tls");
        assert_eq!(app.upstream.count(), 0, "{alpn:?}: nothing reached it");
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_at_the_upstream_tls() {
    let (app, _clients) = mtls_app(Alpn::Both).await;
    let stranger = TestCa::new("a CA the upstream does not trust");
    let token = vault(
        &app,
        &stranger,
        "stranger",
        &[("CLIENT_CERT", "stranger-bot")],
        &[],
        "- name: bank\n  host: api.example.test\n  auth: {type: mtls, certificate: CLIENT_CERT}\n",
    )
    .await;
    let resp = app
        .agent(&token, "stranger")
        .await
        .get("https://api.example.test/")
        .send()
        .await
        .unwrap();
    assert_proxy_error(&resp, 502, "upstream_tls");
    assert_eq!(app.upstream.count(), 0);
}

#[tokio::test]
async fn an_unusable_or_missing_identity_is_refused_and_nothing_is_sent() {
    let (app, clients) = mtls_app(Alpn::Both).await;
    let yaml =
        "- name: bank\n  host: api.example.test\n  auth: {type: mtls, certificate: CLIENT_CERT}\n";
    let token = vault(
        &app,
        &clients,
        "broken",
        &[("CLIENT_CERT", "bot")],
        &[],
        yaml,
    )
    .await;
    let agent = app.agent(&token, "broken").await;
    let good: Value = serde_json::from_str(&clients.client_identity("bot")).unwrap();
    let other: Value = serde_json::from_str(&clients.client_identity("other")).unwrap();
    let mismatched =
        json!({ "certificate": good["certificate"], "private_key": other["private_key"] });
    for (what, payload) in [
        ("not JSON", "-----BEGIN NOTHING-----".to_owned()),
        ("a key that does not match", mismatched.to_string()),
        (
            "no certificate",
            json!({ "certificate": "", "private_key": good["private_key"] }).to_string(),
        ),
    ] {
        // Refused when set, naming the field; the identity stored before is kept and presented.
        let (status, body) = try_set_certificate(&app, "broken", "CLIENT_CERT", &payload).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"], "invalid_credential", "{what}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("CLIENT_CERT"), "{what}: {message}");
        let key_lines = good["private_key"].as_str().unwrap().lines();
        for line in key_lines.filter(|l| !l.starts_with("-----") && l.len() >= 40) {
            assert!(
                !message.contains(line),
                "{what}: the message quotes the key"
            );
        }
        let resp = agent.get("https://api.example.test/").send().await.unwrap();
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(app.upstream.last().client_subject.as_deref(), Some("bot"));
    }
    let served = app.upstream.count();
    app.ok(
        "DELETE",
        "/v1/vaults/broken/credentials",
        Some(json!({ "keys": ["CLIENT_CERT"] })),
    )
    .await;
    let resp = agent.get("https://api.example.test/").send().await.unwrap();
    assert_proxy_error(&resp, 502, "credential_not_found");
    assert_eq!(app.upstream.count(), served);
    // Set again (version 1 once more, after the delete): the new identity is presented.
    set_certificate(
        &app,
        "broken",
        "CLIENT_CERT",
        &clients.client_identity("reborn"),
    )
    .await;
    let resp = agent.get("https://api.example.test/").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.upstream.last().client_subject.as_deref(),
        Some("reborn")
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_presented_from_the_next_request_on() {
    let (app, clients) = mtls_app(Alpn::Both).await;
    let yaml =
        "- name: bank\n  host: api.example.test\n  auth: {type: mtls, certificate: CLIENT_CERT}\n";
    let token = vault(
        &app,
        &clients,
        "rotate",
        &[("CLIENT_CERT", "old")],
        &[],
        yaml,
    )
    .await;
    let agent = app.agent(&token, "rotate").await;
    assert_eq!(
        agent
            .get("https://api.example.test/")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    set_certificate(
        &app,
        "rotate",
        "CLIENT_CERT",
        &clients.client_identity("new"),
    )
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
    let subjects: Vec<_> = app
        .upstream
        .requests()
        .into_iter()
        .map(|r| r.client_subject.unwrap())
        .collect();
    assert_eq!(subjects, ["old", "new"]);
}

#[tokio::test]
async fn service_set_refuses_a_credential_whose_type_cannot_serve_its_use() {
    let (app, clients) = mtls_app(Alpn::Both).await;
    app.create_vault("types").await;
    set_certificate(
        &app,
        "types",
        "CLIENT_CERT",
        &clients.client_identity("bot"),
    )
    .await;
    app.set_credentials("types", &[("API_KEY", "k_123")]).await;
    let before = app.ok("GET", "/v1/vaults/types/services", None).await;
    for (service, culprit, ty) in [
        (
            json!({ "name": "cert-as-bearer", "host": "api.example.test", "auth": { "type": "bearer", "token": "CLIENT_CERT" } }),
            "CLIENT_CERT",
            "certificate",
        ),
        (
            json!({ "name": "cert-in-header", "host": "api.example.test", "auth": { "type": "custom", "headers": { "X-Cert": "{{ CLIENT_CERT }}" } } }),
            "CLIENT_CERT",
            "certificate",
        ),
        (
            json!({ "name": "key-as-identity", "host": "api.example.test", "auth": { "type": "mtls", "certificate": "API_KEY" } }),
            "API_KEY",
            "api_key",
        ),
        (
            json!({ "name": "key-beside", "host": "api.example.test", "auth": { "type": "passthrough" }, "client_certificate": "API_KEY" }),
            "API_KEY",
            "api_key",
        ),
    ] {
        let name = service["name"].as_str().unwrap().to_owned();
        for (method, body) in [
            ("PUT", json!({ "services": [service.clone()] })),
            ("POST", service.clone()),
        ] {
            let (status, err) = app
                .call(method, "/v1/vaults/types/services", Some(body))
                .await;
            assert_eq!(status, 400, "{method} {name}: {err}");
            assert_eq!(err["error"], "incompatible_credential", "{err}");
            let message = err["message"].as_str().unwrap();
            for part in [name.as_str(), culprit, ty] {
                assert!(message.contains(part), "{part} missing: {message}");
            }
        }
    }
    assert_eq!(
        app.ok("GET", "/v1/vaults/types/services", None).await,
        before
    );
    // The right types pass, and a service may still name a key the vault holds as any type
    // that can serve it.
    app.set_services_yaml(
        "types",
        "- name: ok\n  host: api.example.test\n  auth: {type: bearer, token: API_KEY}\n  client_certificate: CLIENT_CERT\n",
    )
    .await;
}

#[tokio::test]
async fn an_approved_proposal_cannot_bind_a_credential_of_the_wrong_type() {
    let (app, clients) = mtls_app(Alpn::Both).await;
    let token = vault(
        &app,
        &clients,
        "propose",
        &[("CLIENT_CERT", "bot")],
        &[("API_TOKEN", "tok-1")],
        "- name: bank\n  host: api.example.test\n  auth: {type: mtls, certificate: CLIENT_CERT}\n",
    )
    .await;
    let bearer = |key: &str| {
        json!({
            "message": "I need the bank API with a token",
            "services": [{ "action": "set", "name": "bank-token", "host": "bank.example.test", "auth": { "type": "bearer", "token": key } }]
        })
    };
    // Refused as soon as it is raised, naming both.
    let (status, err) = app.propose(&token, bearer("CLIENT_CERT")).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"], "incompatible_credential", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("bank-token")
            && err["message"].as_str().unwrap().contains("CLIENT_CERT"),
        "{err}"
    );
    // And again at approval, when the credential became a certificate since.
    let (status, created) = app.propose(&token, bearer("API_TOKEN")).await;
    assert_eq!(status, 201, "{created}");
    app.ok(
        "DELETE",
        "/v1/vaults/propose/credentials",
        Some(json!({ "keys": ["API_TOKEN"] })),
    )
    .await;
    set_certificate(
        &app,
        "propose",
        "API_TOKEN",
        &clients.client_identity("bot2"),
    )
    .await;
    let (status, err) = app
        .call(
            "POST",
            &format!(
                "/v1/vaults/propose/proposals/{}/approve",
                created["id"].as_str().unwrap()
            ),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"], "incompatible_credential", "{err}");
    let services = app.ok("GET", "/v1/vaults/propose/services", None).await;
    assert_eq!(
        services["services"].as_array().unwrap().len(),
        1,
        "{services}"
    );
}

/// A `password` credential with `username` metadata is basic auth on its own.
#[tokio::test]
async fn basic_auth_takes_the_user_from_a_password_credentials_metadata() {
    let app = crate::support::spawn_app().await;
    app.create_vault("basic").await;
    app.ok(
        "PUT",
        "/v1/vaults/basic/credentials",
        Some(json!({
            "credentials": { "DB_PASSWORD": "pw-789" },
            "types": { "DB_PASSWORD": "password" },
            "metadata": { "DB_PASSWORD": { "username": "alice" } }
        })),
    )
    .await;
    app.set_services_yaml(
        "basic",
        "- name: db\n  host: basic.example.test\n  auth: {type: basic, password: DB_PASSWORD}\n",
    )
    .await;
    let token = app.proxy_token("basic").await.0;
    let resp = app
        .agent(&token, "basic")
        .await
        .get("https://basic.example.test/echo")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    use base64::Engine;
    let want = base64::engine::general_purpose::STANDARD.encode("alice:pw-789");
    assert_eq!(
        app.upstream.last().header("authorization"),
        Some(format!("Basic {want}"))
    );
}

#[tokio::test]
async fn client_certificates_and_keys_never_reach_the_logs_or_the_data_directory() {
    crate::support::install_crypto();
    let clients = TestCa::new("agent-vault tests client CA");
    let (upstream, ca) = mtls_upstream(&clients, Alpn::Both).await;
    let WithUpstream {
        server,
        upstream,
        data,
        dir: _dir,
    } = ServerProcess::start_against(upstream, &ca, "requests = true", &[], "trace").await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = server.admin.clone();
    let call = async |method: &str, path: &str, token: Option<&str>, body: Value| -> Value {
        let mut req = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert!(
            resp.status().is_success(),
            "{method} {path}: {}",
            resp.status()
        );
        resp.json().await.unwrap_or(Value::Null)
    };
    let setup = std::fs::read_to_string(data.join("setup-token")).unwrap();
    let owner = call(
        "POST",
        "/v1/auth/register",
        None,
        json!({ "email": OWNER_EMAIL, "password": OWNER_PASSWORD, "setup_token": setup.trim() }),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let owner = Some(owner.as_str());
    let identity = clients.client_identity("log-bot");
    let parts: Value = serde_json::from_str(&identity).unwrap();
    call("POST", "/v1/vaults", owner, json!({ "name": "logs" })).await;
    call(
        "PUT",
        "/v1/vaults/logs/credentials",
        owner,
        json!({
            "credentials": { "CLIENT_CERT": identity, "BAD_CERT": clients.client_identity("bad-bot") },
            "types": { "CLIENT_CERT": "certificate", "BAD_CERT": "certificate" }
        }),
    )
    .await;
    // BAD_CERT's sealed value edited in the database: the proxy's refusal path is logged too.
    let store = agent_vault::store::Store::open(&data, None).await.unwrap();
    let done =
        sqlx::query("UPDATE credential_versions SET sealed_value = $1 WHERE key = 'BAD_CERT'")
            .bind(vec![7u8; 64])
            .execute(store.pool())
            .await
            .unwrap();
    assert_eq!(done.rows_affected(), 1);
    store.close().await;
    call(
        "PUT",
        "/v1/vaults/logs/services",
        owner,
        json!({ "services": [
            { "name": "bank", "host": "api.example.test", "auth": { "type": "mtls", "certificate": "CLIENT_CERT" } },
            { "name": "broken", "host": "broken.example.test", "auth": { "type": "mtls", "certificate": "BAD_CERT" } }
        ] }),
    )
    .await;
    let token = call("POST", "/v1/vaults/logs/tokens", owner, json!({})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ca_pem = crate::support::fetch_text(http.get(format!("{base}/v1/ca.pem"))).await;
    let agent = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{token}:logs@{}", server.proxy)).unwrap())
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let ok = agent
        .get("https://api.example.test/echo")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(upstream.last().client_subject.as_deref(), Some("log-bot"));
    let broken = agent
        .get("https://broken.example.test/")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), 502);
    let stdout = server.stdout_lines().join("\n");
    let stderr = server.stop().await;
    // Every line of base64 inside the PEM blocks: any one of them in a log is a leak.
    let needles: Vec<&str> = ["certificate", "private_key"]
        .into_iter()
        .flat_map(|part| parts[part].as_str().unwrap().lines())
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .collect();
    assert!(needles.len() > 4);
    assert!(
        stderr.contains("BAD_CERT") || stdout.contains("BAD_CERT"),
        "the refusal is logged: {stderr}"
    );
    for (place, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        for needle in &needles {
            assert!(
                !text.contains(needle),
                "PEM material in the server's {place}"
            );
        }
    }
    for file in walk(&data) {
        let bytes = std::fs::read(&file).unwrap();
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "PEM material in {}",
                file.display()
            );
        }
    }
}
