//! The proxy routes by the CONNECT authority and injects credentials: each auth type, rules
//! bound to paths and methods, hosts no service binds, redirects, absolute-form requests, and
//! the request log that records each route. A real HTTP client is the agent, against the real
//! server and a fake HTTPS upstream signed by a different CA than the proxy's.

use serde_json::{Value, json};

use crate::support::agent::{self, basic};
use crate::support::fixtures::vault_with_services;
use crate::support::{assert_proxy_error, fetch, spawn_app};

fn no_redirects(b: reqwest::ClientBuilder) -> reqwest::Client {
    b.redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn each_auth_type_is_injected_and_replaces_the_agents_header() {
    let app = spawn_app().await;
    let token = vault_with_services(&app, "inject").await;
    let agent = app.agent(&token, "inject").await;
    let cases = [
        ("bearer", "authorization", "Bearer tok-123"),
        ("basic", "authorization", "Basic YWxpY2U6cHctNDU2"),
        ("apikey", "x-api-key", "Key tok-123"),
        ("custom", "x-auth", "id=alice sig=tok-123"),
    ];
    for (host, header, want) in cases {
        let resp = agent
            .get(format!("https://{host}.example.test/v1/things?q=1"))
            .header("authorization", "Bearer agent-supplied")
            .header("x-api-key", "agent-supplied")
            .header("x-auth", "agent-supplied")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
        let seen = app.upstream.last();
        assert_eq!(seen.header(header).as_deref(), Some(want), "{host}");
        assert_eq!(
            seen.headers.get_all(header).iter().count(),
            1,
            "{host}: exactly one value"
        );
        assert_eq!(seen.path_and_query, "/v1/things?q=1");
        assert!(seen.header("proxy-authorization").is_none());
        assert_eq!(seen.sni.as_deref(), Some(&*format!("{host}.example.test")));
    }
    // Passthrough attaches nothing (and keeps the agent's own header).
    agent
        .get("https://open.example.test/")
        .header("authorization", "Bearer agent-own")
        .send()
        .await
        .unwrap();
    assert_eq!(
        app.upstream.last().header("authorization").as_deref(),
        Some("Bearer agent-own")
    );
    // The agent never sees the values.
    let body = fetch(agent.get("https://bearer.example.test/echo"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !body.contains("tok-123") && body.contains("[REDACTED by agent-vault]"),
        "the echo endpoint reflects the header and the proxy scrubs it: {body}"
    );
}

#[tokio::test]
async fn bound_host_without_a_fitting_rule_gets_no_credentials() {
    let app = spawn_app().await;
    let token = vault_with_services(&app, "scoped").await;
    let agent = app.agent(&token, "scoped").await;
    fetch(agent.get("https://scoped.example.test/v1/charges")).await;
    assert_eq!(
        app.upstream.last().header("authorization").as_deref(),
        Some("Bearer tok-123")
    );
    for (method, path) in [("GET", "/v2/other"), ("POST", "/v1/charges")] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = agent
            .request(m, format!("https://scoped.example.test{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            app.upstream.last().header("authorization"),
            None,
            "{method} {path}"
        );
    }
    let resp = fetch(agent.get("https://scoped.example.test/v1/../admin")).await;
    let _ = resp; // reqwest normalizes dot segments itself; the raw form is tested below.
    let before = app.upstream.count();
    let out = app
        .raw_request(
            &token,
            "scoped",
            "scoped.example.test",
            "GET /v1/%2e%2e/admin HTTP/1.1\r\nHost: scoped.example.test\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("ambiguous_path"));
    assert_eq!(app.upstream.count(), before, "nothing forwarded");
}

#[tokio::test]
async fn missing_credential_answers_502_and_sends_nothing() {
    let app = spawn_app().await;
    let token = vault_with_services(&app, "missing").await;
    let agent = app.agent(&token, "missing").await;
    let before = app.upstream.count();
    let resp = fetch(agent.get("https://ghost.example.test/anything")).await;
    assert_proxy_error(&resp, 502, "credential_not_found");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "credential_not_found");
    assert!(body["message"].as_str().unwrap().contains("GONE"));
    assert_eq!(
        app.upstream.count(),
        before,
        "the upstream received nothing"
    );
}

#[tokio::test]
async fn host_and_sni_must_match_the_connect_authority() {
    let app = spawn_app().await;
    let token = vault_with_services(&app, "mismatch").await;
    let auth = basic(&token, "mismatch");
    let ca = app.ca_pem().await;
    let before = app.upstream.count();
    let bearer = agent::dial(app.proxy, &auth, "bearer.example.test:443");
    // Host header names another host.
    let resp = bearer
        .sni("bearer.example.test")
        .trusting(&ca)
        .get("/", "evil.example.test")
        .await;
    assert_proxy_error(&resp, 421, "host_mismatch");
    // SNI names another host (the client accepts any certificate to get this far).
    let resp = bearer
        .sni("evil.example.test")
        .get("/", "bearer.example.test")
        .await;
    assert_eq!(resp.status(), 421);
    // A well-behaved client verifying the leaf refuses it for the wrong name.
    assert!(
        bearer
            .sni("evil.example.test")
            .trusting(&ca)
            .tls()
            .await
            .is_err()
    );
    // Case, trailing dot and port spelling are the same authority.
    let resp = agent::dial(app.proxy, &auth, "BEARER.example.test.:443")
        .sni("bearer.example.test")
        .trusting(&ca)
        .get("/ok", "Bearer.Example.Test:443")
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.upstream.count(),
        before + 1,
        "only the matching request was forwarded"
    );
    assert_eq!(
        app.upstream.last().header("authorization").as_deref(),
        Some("Bearer tok-123")
    );
    // Plaintext after CONNECT to a bound host: nothing is forwarded.
    let tunnel = agent::connect(app.proxy, "bearer.example.test:443", Some(&auth))
        .await
        .unwrap();
    let out = agent::raw_exchange(
        tunnel,
        b"GET / HTTP/1.1\r\nHost: bearer.example.test\r\n\r\n",
    )
    .await;
    assert!(!out.contains("200"), "{out}");
    assert_eq!(app.upstream.count(), before + 1);
}

#[tokio::test]
async fn unmatched_hosts_follow_the_vault_policy() {
    let app = spawn_app().await;
    let token = vault_with_services(&app, "policy").await;
    // tunnel: bytes are spliced, the agent sees the upstream's own certificate, nothing attached.
    let upstream_ca = reqwest::Certificate::from_pem(app.upstream_ca.pem.as_bytes()).unwrap();
    let proxy = reqwest::Proxy::all(format!("http://{token}:policy@{}", app.proxy)).unwrap();
    let direct_trust = reqwest::Client::builder()
        .proxy(proxy)
        .tls_certs_only([upstream_ca])
        .http1_only()
        .build()
        .unwrap();
    let resp = direct_trust
        .get("https://other.example.test/x")
        .header("authorization", "Bearer mine")
        .header("connection", "close")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = app.upstream.last();
    assert_eq!(seen.header("authorization").as_deref(), Some("Bearer mine"));
    assert_eq!(seen.sni.as_deref(), Some("other.example.test"));
    // deny: the CONNECT is accepted and TLS terminated with a leaf for the host, so that the
    // request inside gets the 403 with its proposal skeleton as an ordinary response (clients
    // discard the body of a refused CONNECT); nothing reaches the upstream.
    app.set_policy("policy", "deny").await;
    let before = app.upstream.count();
    let ca = app.ca_pem().await;
    let resp = agent::dial(
        app.proxy,
        &basic(&token, "policy"),
        "other.example.test:443",
    )
    .sni("other.example.test")
    .trusting(&ca)
    .get("/x", "other.example.test")
    .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.headers()["x-agent-vault-proxy-error"],
        "forbidden_host"
    );
    let body: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(
        body["hint"]["proposal"]["services"][0]["host"],
        "other.example.test"
    );
    assert_eq!(app.upstream.count(), before, "nothing reached the upstream");
    // Bound hosts still work under deny.
    let agent = app.agent(&token, "policy").await;
    assert_eq!(
        fetch(agent.get("https://bearer.example.test/"))
            .await
            .status(),
        200
    );
    // Tunnel rows are written when the tunnel closes (the upstream closed it: Connection: close).
    let logs = app.wait_for_logs("policy", 3).await;
    assert!(
        logs.iter().any(|r| r["kind"] == "tunnel"
            && r["host"] == "other.example.test:443"
            && r["status"] == 200),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|r| r["error_code"] == "forbidden_host"),
        "{logs:?}"
    );
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let app = spawn_app().await;
    let token = app.stripe_vault("redir", "sk_redir").await;
    let agent = no_redirects(app.agent_builder(&token, "redir").await);
    let resp = fetch(agent.get("https://api.example.test/redirect")).await;
    assert_eq!(resp.status(), 302);
    assert_eq!(
        resp.headers()["location"],
        "https://evil.example.test/steal"
    );
    assert_eq!(app.upstream.count(), 1);
    assert!(
        app.upstream
            .requests()
            .iter()
            .all(|r| r.path_and_query == "/redirect")
    );
}

#[tokio::test]
async fn absolute_form_requests() {
    let app = spawn_app().await;
    let token = app.stripe_vault("abs", "sk_abs").await;
    // https:// absolute form, as axios sends it.
    let req = format!(
        "GET https://api.example.test/axios?x=1 HTTP/1.1\r\nHost: api.example.test\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        basic(&token, "abs")
    );
    let out = agent::plain(app.proxy, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = app.upstream.last();
    assert_eq!(seen.path_and_query, "/axios?x=1");
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Bearer sk_abs")
    );
    // Plain http:// to a host bound to credentials is refused.
    let req = format!(
        "GET http://api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        basic(&token, "abs")
    );
    let out = agent::plain(app.proxy, req.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("plaintext_refused"),
        "{out}"
    );
    // Origin-form is not a proxy request.
    let out = agent::plain(
        app.proxy,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Absolute form without credentials.
    let out = agent::plain(app.proxy, b"GET https://api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 407"), "{out}");
}

#[tokio::test]
async fn credential_changes_apply_to_the_very_next_request() {
    let app = spawn_app().await;
    let token = app.stripe_vault("fresh", "sk_first").await;
    let agent = app.agent(&token, "fresh").await;
    agent.get("https://api.example.test/").send().await.unwrap();
    assert_eq!(
        app.upstream.last().header("authorization").as_deref(),
        Some("Bearer sk_first")
    );
    app.set_credentials("fresh", &[("STRIPE_KEY", "sk_second")])
        .await;
    agent.get("https://api.example.test/").send().await.unwrap();
    assert_eq!(
        app.upstream.last().header("authorization").as_deref(),
        Some("Bearer sk_second")
    );
}

#[tokio::test]
async fn request_log_records_metadata_only() {
    let app = spawn_app().await;
    let token = app.stripe_vault("logged", "sk_logged_secret").await;
    let agent = app.agent(&token, "logged").await;
    agent
        .post("https://api.example.test/v1/charges?api_key=query-secret")
        .body("body-secret")
        .send()
        .await
        .unwrap();
    let rows = app.wait_for_logs("logged", 1).await;
    let row = &rows[0];
    assert_eq!(row["method"], "POST");
    assert_eq!(row["host"], "api.example.test:443");
    assert_eq!(row["path"], "/v1/charges");
    assert_eq!(row["service"], "stripe");
    assert_eq!(row["credential_keys"], json!(["STRIPE_KEY"]));
    assert_eq!(row["status"], 200);
    assert_eq!(row["bytes_in"], 11);
    let text = rows.iter().map(Value::to_string).collect::<String>();
    for secret in ["sk_logged_secret", "query-secret", "body-secret", &token] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the request log"
        );
    }
    let out = {
        app.cli_login().await;
        app.cli(&["vault", "logs", "--vault", "logged", "--json"], None)
            .await
    };
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()[0]["path"], "/v1/charges");
}
