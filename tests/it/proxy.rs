//! The proxy end to end: a real HTTP client as the agent, the real server, and a fake HTTPS
//! upstream signed by a different CA than the proxy's.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::support::agent::{self, basic};
use crate::support::{
    Alpn, FakeUpstream, TestCa, TestOptions, spawn_app, spawn_app_against, spawn_app_with,
};

const SERVICES: &str = r#"
- name: bearer
  host: bearer.example.test
  auth: {type: bearer, token: TOKEN}
- name: basic
  host: basic.example.test
  auth: {type: basic, username: USER, password: PASS}
- name: apikey
  host: apikey.example.test
  auth: {type: api-key, key: TOKEN, header: X-Api-Key, prefix: "Key "}
- name: custom
  host: custom.example.test
  auth: {type: custom, headers: {X-Auth: "id={{ USER }} sig={{ TOKEN }}"}}
- name: open
  host: open.example.test
  auth: {type: passthrough}
- name: scoped
  host: scoped.example.test/v1/*
  methods: [GET]
  auth: {type: bearer, token: TOKEN}
- name: ghost
  host: ghost.example.test
  auth: {type: bearer, token: GONE}
"#;

async fn vault_with_services(app: &crate::support::TestApp, vault: &str) -> String {
    app.create_vault(vault).await;
    app.set_credentials(
        vault,
        &[
            ("TOKEN", "tok-123"),
            ("USER", "alice"),
            ("PASS", "pw-456"),
            ("GONE", "soon"),
        ],
    )
    .await;
    app.set_services_yaml(vault, SERVICES).await;
    app.ok(
        "DELETE",
        &format!("/v1/vaults/{vault}/credentials"),
        Some(json!({ "keys": ["GONE"] })),
    )
    .await;
    app.proxy_token(vault).await.0
}

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
    let body = agent
        .get("https://bearer.example.test/echo")
        .send()
        .await
        .unwrap()
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
    agent
        .get("https://scoped.example.test/v1/charges")
        .send()
        .await
        .unwrap();
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
    let resp = agent
        .get("https://scoped.example.test/v1/../admin")
        .send()
        .await
        .unwrap();
    let _ = resp; // reqwest normalizes dot segments itself; the raw form is tested below.
    let tls = app
        .tunnel(&token, "scoped", "scoped.example.test", &[b"http/1.1"])
        .await;
    let before = app.upstream.count();
    let out = agent::raw_exchange(
        tls,
        b"GET /v1/%2e%2e/admin HTTP/1.1\r\nHost: scoped.example.test\r\nConnection: close\r\n\r\n",
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
    let resp = agent
        .get("https://ghost.example.test/anything")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.headers()["x-agent-vault-proxy-error"],
        "credential_not_found"
    );
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
    // Host header names another host.
    let tunnel = agent::connect(app.proxy, "bearer.example.test:443", Some(&auth))
        .await
        .unwrap();
    let tls = agent::tls(
        tunnel,
        Some("bearer.example.test"),
        Some(&ca),
        &[b"http/1.1"],
    )
    .await
    .unwrap();
    let req = Request::get("/")
        .header("host", "evil.example.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = agent::send(tls, req).await.unwrap();
    assert_eq!(resp.status(), 421);
    assert_eq!(resp.headers()["x-agent-vault-proxy-error"], "host_mismatch");
    // SNI names another host (the client accepts any certificate to get this far).
    let tunnel = agent::connect(app.proxy, "bearer.example.test:443", Some(&auth))
        .await
        .unwrap();
    let tls = agent::tls(tunnel, Some("evil.example.test"), None, &[b"http/1.1"])
        .await
        .unwrap();
    let req = Request::get("/")
        .header("host", "bearer.example.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(agent::send(tls, req).await.unwrap().status(), 421);
    // A well-behaved client verifying the leaf refuses it for the wrong name.
    let tunnel = agent::connect(app.proxy, "bearer.example.test:443", Some(&auth))
        .await
        .unwrap();
    assert!(
        agent::tls(tunnel, Some("evil.example.test"), Some(&ca), &[b"http/1.1"])
            .await
            .is_err()
    );
    // Case, trailing dot and port spelling are the same authority.
    let tunnel = agent::connect(app.proxy, "BEARER.example.test.:443", Some(&auth))
        .await
        .unwrap();
    let tls = agent::tls(
        tunnel,
        Some("bearer.example.test"),
        Some(&ca),
        &[b"http/1.1"],
    )
    .await
    .unwrap();
    let req = Request::get("/ok")
        .header("host", "Bearer.Example.Test:443")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(agent::send(tls, req).await.unwrap().status(), 200);
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
    // deny: 403 with a proposal skeleton, and no connection to the upstream.
    app.set_policy("policy", "deny").await;
    let (status, head) = agent::connect(
        app.proxy,
        "other.example.test:443",
        Some(&basic(&token, "policy")),
    )
    .await
    .unwrap_err();
    assert_eq!(status, 403, "{head}");
    assert!(head.contains("forbidden_host"), "{head}");
    let body: Value = serde_json::from_str(head.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        body["hint"]["proposal"]["services"][0]["host"],
        "other.example.test"
    );
    // Bound hosts still work under deny.
    let agent = app.agent(&token, "policy").await;
    assert_eq!(
        agent
            .get("https://bearer.example.test/")
            .send()
            .await
            .unwrap()
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
async fn proxy_authentication_failures() {
    let app = spawn_app_with(TestOptions {
        tweak: Some(Box::new(|c| c.limits.auth_failures_per_minute = 5)),
        ..Default::default()
    })
    .await;
    let token = vault_with_services(&app, "authn").await;
    let (status, head) = agent::connect(app.proxy, "bearer.example.test:443", None)
        .await
        .unwrap_err();
    assert_eq!(status, 407);
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authenticate: basic"),
        "{head}"
    );
    assert!(head.contains("proxy_auth_required"));
    let (status, _) = agent::connect(
        app.proxy,
        "bearer.example.test:443",
        Some(&basic(&token, "other-vault")),
    )
    .await
    .unwrap_err();
    assert_eq!(status, 403, "a scoped token only works in its vault");
    let agent_resp = app.ok("POST", "/v1/agents", Some(json!({ "name": "multi", "vaults": [{ "vault": "authn", "role": "proxy" }, { "vault": "default", "role": "proxy" }] }))).await;
    let multi = agent_resp["token"].as_str().unwrap();
    let (status, head) = agent::connect(
        app.proxy,
        "bearer.example.test:443",
        Some(&format!("Bearer {multi}")),
    )
    .await
    .unwrap_err();
    assert_eq!(
        status, 403,
        "an agent with several vaults must name one: {head}"
    );
    assert!(
        agent::connect(
            app.proxy,
            "bearer.example.test:443",
            Some(&basic(multi, "authn"))
        )
        .await
        .is_ok()
    );
    let session = app.owner_token.clone();
    let (status, _) = agent::connect(
        app.proxy,
        "bearer.example.test:443",
        Some(&basic(&session, "authn")),
    )
    .await
    .unwrap_err();
    assert_eq!(status, 407, "login sessions cannot proxy");
    // The failure budget: after 5 failures from this address, guesses answer 429; the valid
    // token keeps working.
    for _ in 0..5 {
        let (status, _) = agent::connect(
            app.proxy,
            "bearer.example.test:443",
            Some(&basic(
                "av_run_wrongwrongwrongwrongwrongwrongwrongwrong",
                "authn",
            )),
        )
        .await
        .unwrap_err();
        assert!(status == 407 || status == 429);
    }
    let (status, head) = agent::connect(
        app.proxy,
        "bearer.example.test:443",
        Some(&basic(
            "av_run_wrongwrongwrongwrongwrongwrongwrongwrong",
            "authn",
        )),
    )
    .await
    .unwrap_err();
    assert_eq!(status, 429, "{head}");
    assert!(
        agent::connect(
            app.proxy,
            "bearer.example.test:443",
            Some(&basic(&token, "authn"))
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn ssrf_guard_blocks_private_and_metadata_destinations() {
    install_upstream_and(|upstream, ca| async move {
        let opts = TestOptions {
            allow_loopback: false,
            tweak: Some(Box::new(|c| {
                c.upstream
                    .resolve
                    .insert("meta.example.test:443".into(), "169.254.169.254:443".into());
                c.upstream
                    .resolve
                    .insert("lan.example.test:443".into(), "10.1.2.3:443".into());
            })),
            ..Default::default()
        };
        let app = spawn_app_against(opts, upstream, ca).await;
        let token = vault_with_services(&app, "ssrf").await;
        let agent = app.agent(&token, "ssrf").await;
        let before = app.upstream.count();
        // A bound host that resolves to loopback.
        let resp = agent
            .get("https://bearer.example.test/")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        assert_eq!(
            resp.headers()["x-agent-vault-proxy-error"],
            "blocked_destination"
        );
        // Tunnelled destinations: loopback, private, metadata, IP literals in other spellings.
        let auth = basic(&token, "ssrf");
        for target in [
            "other.example.test:443",
            "meta.example.test:443",
            "lan.example.test:443",
            "127.0.0.1:443",
            "[::1]:443",
            "[::ffff:127.0.0.1]:443",
            "169.254.169.254:80",
            "10.0.0.1:443",
        ] {
            let (status, head) = agent::connect(app.proxy, target, Some(&auth))
                .await
                .unwrap_err();
            assert_eq!(status, 403, "{target}: {head}");
            assert!(head.contains("blocked_destination"), "{target}: {head}");
        }
        for target in ["2130706433:443", "0x7f000001:443", "0177.0.0.1:443"] {
            let (status, _) = agent::connect(app.proxy, target, Some(&auth))
                .await
                .unwrap_err();
            assert_eq!(
                status, 400,
                "{target}: ambiguous numeric hosts are refused outright"
            );
        }
        // The proxy's own listeners.
        let own = format!("127.0.0.1:{}", app.proxy.port());
        let (status, _) = agent::connect(app.proxy, &own, Some(&auth))
            .await
            .unwrap_err();
        assert_eq!(status, 403);
        assert_eq!(app.upstream.count(), before);
    })
    .await;
}

#[tokio::test]
async fn metadata_stays_blocked_when_everything_is_allowlisted() {
    let app = spawn_app_with(TestOptions {
        tweak: Some(Box::new(|c| {
            c.upstream.allow_private_ranges = true;
            c.upstream.network_allowlist =
                vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
            c.upstream
                .resolve
                .insert("meta.example.test:443".into(), "169.254.169.254:443".into());
        })),
        ..Default::default()
    })
    .await;
    let (token, _) = app.proxy_token("default").await;
    for target in [
        "meta.example.test:443",
        "169.254.169.254:443",
        "[fd00:ec2::254]:443",
        "100.100.100.200:443",
        "192.0.0.192:443",
        "[::ffff:169.254.169.254]:443",
    ] {
        let (status, head) = agent::connect(app.proxy, target, Some(&basic(&token, "default")))
            .await
            .unwrap_err();
        assert_eq!(status, 403, "{target}: {head}");
    }
}

async fn install_upstream_and<F, Fut>(f: F)
where
    F: FnOnce(FakeUpstream, Arc<TestCa>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    crate::support::install_crypto();
    let ca = Arc::new(TestCa::new("upstream CA"));
    let (chain, key) = ca.server_cert(&["example.test", "*.example.test"], (-1, 30));
    let upstream = FakeUpstream::start(chain, key, Alpn::Both).await;
    f(upstream, ca).await;
}

#[tokio::test]
async fn untrusted_or_wrong_name_upstream_certificates_are_502() {
    crate::support::install_crypto();
    let trusted = Arc::new(TestCa::new("trusted upstream CA"));
    let cases: Vec<(
        &str,
        (
            Vec<rustls_pki_types::CertificateDer<'static>>,
            rustls_pki_types::PrivateKeyDer<'static>,
        ),
    )> = vec![
        (
            "self-signed",
            crate::support::pki::self_signed(&["*.example.test"]),
        ),
        (
            "wrong name",
            trusted.server_cert(&["elsewhere.test"], (-1, 30)),
        ),
        (
            "expired",
            trusted.server_cert(&["*.example.test"], (-30, -1)),
        ),
    ];
    for (what, (chain, key)) in cases {
        crate::support::assert_upstream_tls_refused(what, &trusted, chain, key).await;
    }
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let app = spawn_app().await;
    let token = app.stripe_vault("redir", "sk_redir").await;
    let agent = no_redirects(app.agent_builder(&token, "redir").await);
    let resp = agent
        .get("https://api.example.test/redirect")
        .send()
        .await
        .unwrap();
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
async fn sse_events_stream_through_without_buffering() {
    let app = spawn_app().await;
    let token = app.stripe_vault("sse", "sk_sse").await;
    let agent = app.agent(&token, "sse").await;
    let mut resp = agent
        .get("https://api.example.test/gated")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The upstream holds the rest of the stream until we have the first event: a buffering
    // proxy would never deliver it.
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("first event arrives before the stream ends")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    app.upstream.gate.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8_lossy(&rest), "data: second\n\n");
}

#[tokio::test]
async fn streaming_responses_keep_a_connection_busy_and_stalled_or_idle_ones_close() {
    let app = spawn_app_with(TestOptions {
        tweak: Some(Box::new(|c| {
            c.limits.idle_timeout = Duration::from_secs(1);
            // An idle connection is closed gracefully: in-flight responses get this long.
            c.server.shutdown_grace = Duration::from_millis(200);
        })),
        ..Default::default()
    })
    .await;
    let token = app.stripe_vault("long", "sk_long_stream").await;
    let open = || async {
        let tls = app
            .tunnel(&token, "long", "api.example.test", &[b"http/1.1"])
            .await;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        (sender, tokio::spawn(conn))
    };
    let get = |path: &str| {
        Request::get(path)
            .header("host", "api.example.test")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    // 12 events 250 ms apart: 2.75 s of streaming, well past the 1 s idle limit.
    let (mut sender, _conn) = open().await;
    let resp = sender
        .send_request(get("/sse?n=12&interval_ms=250"))
        .await
        .unwrap();
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .unwrap()
        .expect("a busy stream is not cut by the idle timeout")
        .to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body)
            .matches("data: event")
            .count(),
        12
    );

    // A response that stalls (the upstream sends one event, then nothing) is closed.
    let (mut sender, conn) = open().await;
    let resp = sender.send_request(get("/gated")).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    let cut = tokio::time::timeout(Duration::from_secs(10), body.frame()).await;
    assert!(
        matches!(cut, Ok(None | Some(Err(_)))),
        "a stalled response holds its connection forever"
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;

    // After a finished response, an idle connection is closed.
    let (mut sender, conn) = open().await;
    let resp = sender.send_request(get("/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .is_ok(),
        "an idle connection was not closed"
    );
    app.upstream.gate.notify_one();
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn large_downloads_stream_with_flat_memory() {
    let app = spawn_app().await;
    let token = app.stripe_vault("big", "sk_big").await;
    let agent = app.agent(&token, "big").await;
    // Warm up the connection and allocator first.
    agent
        .get("https://api.example.test/bytes?n=1048576")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let before = rss_kib();
    let size = 50 * 1024 * 1024;
    let mut resp = agent
        .get(format!("https://api.example.test/bytes?n={size}"))
        .send()
        .await
        .unwrap();
    let (mut total, mut peak) = (0usize, before);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        total += chunk.len();
        peak = peak.max(rss_kib());
    }
    assert_eq!(total, size);
    let growth_mib = (peak.saturating_sub(before)) / 1024;
    assert!(
        growth_mib < 32,
        "memory grew by {growth_mib} MiB while streaming 50 MiB"
    );
}

#[tokio::test]
async fn websocket_handshake_gets_credentials_and_frames_flow() {
    let app = spawn_app().await;
    let token = app.stripe_vault("ws-vault", "sk_ws").await;
    let tls = app
        .tunnel(&token, "ws-vault", "api.example.test", &[b"http/1.1"])
        .await;
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://api.example.test/ws", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(
        app.upstream.last().header("authorization").as_deref(),
        Some("Bearer sk_ws")
    );
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        "hello through the proxy",
    ))
    .await
    .unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        echo.into_text().unwrap().as_str(),
        "hello through the proxy"
    );
}

#[tokio::test]
async fn a_busy_websocket_outlives_the_idle_limit_and_an_idle_one_does_not() {
    use tokio_tungstenite::tungstenite::Message;
    let app = spawn_app_with(TestOptions {
        tweak: Some(Box::new(|c| {
            c.limits.tunnel_idle_timeout = Duration::from_secs(1);
        })),
        ..Default::default()
    })
    .await;
    // With a credential attached, frames are read one by one (scrubbing); with passthrough
    // auth and no substitutions, bytes are spliced. Both keep a busy socket open.
    let rewriting = app.stripe_vault("ws-idle", "sk_ws_idle").await;
    app.create_vault("ws-plain").await;
    app.set_services_yaml(
        "ws-plain",
        "- name: plain\n  host: api.example.test\n  auth: {type: passthrough}\n",
    )
    .await;
    let plain = app.proxy_token("ws-plain").await.0;
    for (token, vault) in [(rewriting, "ws-idle"), (plain, "ws-plain")] {
        let tls = app
            .tunnel(&token, vault, "api.example.test", &[b"http/1.1"])
            .await;
        let (mut ws, _) = tokio_tungstenite::client_async("wss://api.example.test/ws", tls)
            .await
            .unwrap();
        // Busy for 2.5 s, well past the 1 s idle limit: every message still comes back.
        for i in 0..10 {
            ws.send(Message::text(format!("ping {i}"))).await.unwrap();
            let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap_or_else(|e| panic!("{vault}: websocket cut while busy: {e}"));
            assert_eq!(echo.into_text().unwrap().as_str(), format!("ping {i}"));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Quiet: the proxy closes it.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{vault}: an idle websocket stays open");
    }
}

#[tokio::test]
async fn http2_clients_and_h2_only_upstreams_work() {
    let app = spawn_app_with(TestOptions {
        alpn: Alpn::H2Only,
        ..Default::default()
    })
    .await;
    let token = app.stripe_vault("h2-vault", "sk_h2").await;
    let agent = app
        .agent_builder(&token, "h2-vault")
        .await
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = agent
        .get("https://api.example.test/h2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let seen = app.upstream.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Bearer sk_h2")
    );
    // An h1-only agent against the h2-only upstream also works.
    let h1 = app
        .agent_builder(&token, "h2-vault")
        .await
        .http1_only()
        .build()
        .unwrap();
    let resp = h1.get("https://api.example.test/h1").send().await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, reqwest::Version::HTTP_11)
    );
    // Concurrent bodies, each larger than an upstream h2 stream's flow-control window, arrive
    // whole. Together (18 MiB) they exceed a connection's window too, as long as the proxy has
    // at most two workers (one per core) to spread them over.
    let size = 3 << 20;
    let downloads = (0..6).map(|_| {
        let h1 = h1.clone();
        async move {
            let resp = h1
                .get(format!("https://api.example.test/bytes?n={size}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.bytes().await.unwrap();
            body.len() == size && body.iter().all(|&b| b == b'x')
        }
    });
    assert!(
        futures_util::future::join_all(downloads)
            .await
            .into_iter()
            .all(|whole| whole)
    );
}

#[tokio::test]
async fn concurrent_connects_to_a_new_host_mint_one_leaf() {
    let app = spawn_app().await;
    let token = app.stripe_vault("leaf", "sk_leaf").await;
    let before = app.proxy_state.leaves.minted();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let agent = app.agent(&token, "leaf").await;
        tasks.push(tokio::spawn(async move {
            agent
                .get("https://api.example.test/")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(app.proxy_state.leaves.minted() - before, 1);
}

#[tokio::test]
async fn revoked_token_is_cut_off_on_an_open_tunnel() {
    let app = spawn_app().await;
    let token = app.stripe_vault("revoke", "sk_revoke").await;
    let tokens = app.ok("GET", "/v1/vaults/revoke/tokens", None).await;
    let id = tokens[0]["id"].as_str().unwrap().to_owned();
    let tls = app
        .tunnel(&token, "revoke", "api.example.test", &[b"http/1.1"])
        .await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = || {
        Request::get("/")
            .header("host", "api.example.test")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(sender.send_request(req()).await.unwrap().status(), 200);
    assert_eq!(
        app.call("DELETE", &format!("/v1/tokens/{id}"), None)
            .await
            .0,
        204
    );
    let before = app.upstream.count();
    // Either the revocation watcher already closed the connection, or the request is refused.
    if let Ok(resp) = sender.send_request(req()).await {
        assert_eq!(
            resp.status(),
            407,
            "the next request on the open tunnel is refused"
        );
    }
    assert_eq!(app.upstream.count(), before);
}

#[tokio::test]
async fn absolute_form_requests() {
    let app = spawn_app().await;
    let token = app.stripe_vault("abs", "sk_abs").await;
    // https:// absolute form, as axios sends it.
    let stream = tokio::net::TcpStream::connect(app.proxy).await.unwrap();
    let req = format!(
        "GET https://api.example.test/axios?x=1 HTTP/1.1\r\nHost: api.example.test\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        basic(&token, "abs")
    );
    let out = agent::raw_exchange(stream, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = app.upstream.last();
    assert_eq!(seen.path_and_query, "/axios?x=1");
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Bearer sk_abs")
    );
    // Plain http:// to a host bound to credentials is refused.
    let stream = tokio::net::TcpStream::connect(app.proxy).await.unwrap();
    let req = format!(
        "GET http://api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        basic(&token, "abs")
    );
    let out = agent::raw_exchange(stream, req.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("plaintext_refused"),
        "{out}"
    );
    // Origin-form is not a proxy request.
    let stream = tokio::net::TcpStream::connect(app.proxy).await.unwrap();
    let out = agent::raw_exchange(
        stream,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Absolute form without credentials.
    let stream = tokio::net::TcpStream::connect(app.proxy).await.unwrap();
    let out = agent::raw_exchange(stream, b"GET https://api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n").await;
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

#[tokio::test]
async fn graceful_shutdown_lets_open_streams_finish() {
    let app = spawn_app().await;
    let token = app.stripe_vault("drain", "sk_drain").await;
    let agent = app.agent(&token, "drain").await;
    let mut resp = agent
        .get("https://api.example.test/gated")
        .send()
        .await
        .unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    let upstream = app.upstream.clone();
    let proxy = app.proxy;
    let stopping = tokio::spawn(app.stop());
    // Wait (bounded) until the listener is closed: shutdown has begun.
    let mut closed = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(proxy).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "the proxy stopped accepting connections");
    // The open stream still completes once the upstream sends the rest.
    upstream.gate.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8_lossy(&rest), "data: second\n\n");
    stopping.await.unwrap();
}

#[tokio::test]
async fn websocket_frames_get_substitutions_and_echoes_are_scrubbed() {
    let app = spawn_app().await;
    app.create_vault("ws-frames").await;
    app.set_credentials("ws-frames", &[("WS_TOKEN", "ws-secret-value-123")])
        .await;
    app.set_services_yaml(
        "ws-frames",
        "- name: stream\n  host: api.example.test\n  auth: {type: passthrough}\n  substitutions:\n    - {placeholder: __WS_TOKEN__, key: WS_TOKEN, in: [{websocket: /auth}]}\n",
    )
    .await;
    let (token, _) = app.proxy_token("ws-frames").await;
    let tls = app
        .tunnel(&token, "ws-frames", "api.example.test", &[b"http/1.1"])
        .await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            "wss://api.example.test/ws",
        )
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-extensions",
        "permessage-deflate".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    let handshake = app.upstream.last();
    assert!(
        handshake.header("sec-websocket-extensions").is_none(),
        "compression is not offered upstream"
    );
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"auth":"__WS_TOKEN__","say":"please"}"#,
    ))
    .await
    .unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let echoed = echo.into_text().unwrap().to_string();
    let seen = app
        .upstream
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.method == "WS")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen.body),
        r#"{"auth":"ws-secret-value-123","say":"please"}"#,
        "the upstream got the value"
    );
    assert!(
        !echoed.contains("ws-secret-value-123"),
        "the echo back to the agent is scrubbed: {echoed}"
    );
    assert!(echoed.contains("REDACTED"), "{echoed}");
    // The placeholder anywhere but the declared pointer ends the connection, unsent.
    let frames_before = app
        .upstream
        .requests()
        .iter()
        .filter(|r| r.method == "WS")
        .count();
    let _ = ws
        .send(tokio_tungstenite::tungstenite::Message::text(
            r#"{"auth":"x","note":"__WS_TOKEN__"}"#,
        ))
        .await;
    let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the connection ends");
    match next {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1008);
            assert_eq!(frame.reason.as_str(), "placeholder_refused");
        }
        other => panic!("expected a 1008 close, got {other:?}"),
    }
    let frames: Vec<_> = app
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.method == "WS")
        .collect();
    assert_eq!(
        frames.len(),
        frames_before,
        "the frame never reached the upstream"
    );
}

#[tokio::test]
async fn tampered_rows_fail_closed_at_the_proxy() {
    let app = spawn_app().await;
    let token = app.stripe_vault("rows", "sk_rows_value").await;
    app.set_credentials("rows", &[("OTHER", "other-value")])
        .await;
    let agent = app.agent(&token, "rows").await;
    let store = agent_vault::store::Store::open(&app.config.data_dir, None)
        .await
        .unwrap();
    // A credential row carrying another row's ciphertext.
    sqlx::query("UPDATE credentials SET sealed_value = (SELECT sealed_value FROM credentials c2 WHERE c2.key = 'OTHER') WHERE key = 'STRIPE_KEY'")
        .execute(store.pool())
        .await
        .unwrap();
    app.set_policy("rows", "tunnel").await; // any write rebuilds the snapshot from the rows
    let before = app.upstream.count();
    let resp = agent.get("https://api.example.test/").send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.headers()["x-agent-vault-proxy-error"],
        "integrity_error"
    );
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
    let resp = agent
        .get("https://evil.example.test/")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.headers()["x-agent-vault-proxy-error"],
        "integrity_error"
    );
    assert!(
        app.upstream
            .requests()
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "the credential never left"
    );
    store.close().await;
}

/// Flips one bit of one credential's sealed value in SQL, the way a database writer would:
/// on SQLite with `||` (which also turns the column into TEXT), on Postgres with `set_bit`.
pub(crate) async fn flip_one_bit(store: &agent_vault::store::Store, key: &str) {
    let done = match store.backend() {
        agent_vault::store::Backend::Sqlite => {
            let row = sqlx::query("SELECT hex(substr(sealed_value, 21, 1)) AS b FROM credentials WHERE key = $1")
                .bind(key)
                .fetch_one(store.pool())
                .await
                .unwrap();
            let hex: String = sqlx::Row::get(&row, "b");
            let flipped = u8::from_str_radix(&hex, 16).unwrap() ^ 0x01;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE credentials SET sealed_value = substr(sealed_value, 1, 20) || X'{flipped:02X}' || substr(sealed_value, 22) WHERE key = $1"
            )))
            .bind(key)
            .execute(store.pool())
            .await
            .unwrap()
        }
        agent_vault::store::Backend::Postgres => sqlx::query(
            "UPDATE credentials SET sealed_value = set_bit(sealed_value, 160, 1 - get_bit(sealed_value, 160)) WHERE key = $1",
        )
        .bind(key)
        .execute(store.pool())
        .await
        .unwrap(),
    };
    assert_eq!(done.rows_affected(), 1);
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
    app.create_vault("bits").await;
    app.set_credentials(
        "bits",
        &[("BAD_KEY", "sk_bad_value"), ("GOOD_KEY", "sk_good_value")],
    )
    .await;
    app.set_services_yaml(
        "bits",
        "- name: bad\n  host: api.example.test\n  auth: {type: bearer, token: BAD_KEY}\n\
         - name: good\n  host: good.example.test\n  auth: {type: bearer, token: GOOD_KEY}\n",
    )
    .await;
    let (token, _) = app.proxy_token("bits").await;
    let agent = app.agent(&token, "bits").await;
    let store = agent_vault::store::Store::open(&app.config.data_dir, postgres.as_deref())
        .await
        .unwrap();
    flip_one_bit(&store, "BAD_KEY").await;
    store.close().await;
    app.set_policy("bits", "tunnel").await; // any write rebuilds the snapshot from the rows

    let resp = agent
        .get("https://good.example.test/ok")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the other credential keeps working");
    let seen = app.upstream.requests();
    assert_eq!(
        seen.last().unwrap().header("authorization").as_deref(),
        Some("Bearer sk_good_value")
    );
    let before = app.upstream.count();
    let resp = agent
        .get("https://api.example.test/bad")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.headers()["x-agent-vault-proxy-error"],
        "integrity_error"
    );
    assert_eq!(app.upstream.count(), before, "nothing was sent upstream");

    let (status, body) = app
        .call("GET", "/v1/vaults/bits/credentials/BAD_KEY", None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("integrity_error")),
        "{body}"
    );
    let (status, body) = app
        .call("GET", "/v1/vaults/bits/credentials/GOOD_KEY", None)
        .await;
    assert_eq!(
        (status, body["value"].as_str()),
        (200, Some("sk_good_value")),
        "{body}"
    );
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
