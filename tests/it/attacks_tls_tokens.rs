//! TLS on both sides of the proxy, and proxy tokens: the failure budget per client address,
//! revoked and expired tokens on new and already open connections (issue 6 §2).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::agent::{self, basic, closed_by_peer};
use crate::support::{TestApp, TestCa, eventually, spawn_app};

#[tokio::test]
async fn tls_client_hello_without_sni_still_routes_on_the_connect_authority() {
    let app = spawn_app().await;
    let token = app.stripe_vault("nosni", "sk_nosni_value").await;
    let auth = basic(&token, "nosni");
    for (host, want) in [("api.example.test", 200), ("evil.example.test", 421)] {
        let resp = agent::dial(app.proxy, &auth, "api.example.test:443")
            .get("/nosni", host)
            .await;
        assert_eq!(resp.status(), want, "{host}");
    }
    assert_eq!(app.upstream.count(), 1);
    let seen = app.upstream.last();
    assert_eq!(seen.sni.as_deref(), Some("api.example.test"));
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Bearer sk_nosni_value")
    );
    // Plaintext HTTP/2 after CONNECT to a bound host: nothing is forwarded.
    let mut tcp = agent::connect(app.proxy, "api.example.test:443", Some(&auth))
        .await
        .unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(closed_by_peer(&mut tcp).await);
    assert_eq!(app.upstream.count(), 1);
}

#[tokio::test]
async fn tls_not_yet_valid_and_ip_only_upstream_certificates_are_502() {
    crate::support::install_crypto();
    let trusted = Arc::new(TestCa::new("trusted upstream CA"));
    for (what, names, days) in [
        ("not yet valid", &["*.example.test"][..], (1, 30)),
        ("IP address only", &["127.0.0.1"][..], (-1, 30)),
    ] {
        let (chain, key) = trusted.server_cert(names, days);
        crate::support::assert_upstream_tls_refused(what, &trusted, chain, key).await;
    }
}

/// A connection from a chosen loopback address, so budgets of different addresses can be told
/// apart.
async fn from(ip: [u8; 4], app: &TestApp) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((ip, 0).into()).unwrap();
    socket.connect(app.proxy).await.unwrap()
}

async fn connect_from(ip: [u8; 4], app: &TestApp, auth: Option<&str>) -> String {
    let stream = from(ip, app).await;
    let mut raw =
        "CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\n".to_owned();
    if let Some(a) = auth {
        raw.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    raw.push_str("\r\n");
    let mut stream = stream;
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn tokens_failure_budget_is_per_client_address_including_loopback() {
    let app = crate::support::spawn_app_tweaked(|c| c.limits.auth_failures_per_minute = 3).await;
    let token = app.stripe_vault("budget", "sk_budget_value").await;
    let good = basic(&token, "budget");
    // Failures of every kind spend the budget: malformed header, unknown token, absolute form.
    assert!(
        connect_from([127, 0, 0, 2], &app, Some("Basic !!!"))
            .await
            .starts_with("HTTP/1.1 407")
    );
    let unknown = basic(
        "av_run_0000000000000000000000000000000000000000000",
        "budget",
    );
    assert!(
        connect_from([127, 0, 0, 2], &app, Some(&unknown))
            .await
            .starts_with("HTTP/1.1 407")
    );
    let mut s = from([127, 0, 0, 2], &app).await;
    s.write_all(
        "GET https://api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\nProxy-Authorization: Bearer av_agt_nope\r\nConnection: close\r\n\r\n".as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await;
    assert!(out.starts_with("HTTP/1.1 407"), "{out}");
    // Exhausted: further guesses answer 429...
    let out = connect_from([127, 0, 0, 2], &app, Some(&unknown)).await;
    assert!(out.starts_with("HTTP/1.1 429"), "{out}");
    assert!(
        out.contains("x-agent-vault-proxy-error: rate_limited"),
        "{out}"
    );
    // ...while a valid token from the same address still works: a guesser sharing the address
    // (loopback) cannot lock out the real agent.
    let good_from = async |last: u8| {
        connect_from([127, 0, 0, last], &app, Some(&good))
            .await
            .starts_with("HTTP/1.1 200")
    };
    assert!(good_from(2).await);
    // Another address has its own budget.
    assert!(good_from(3).await);
    // Asking without any credentials is not a guess and costs nothing.
    for _ in 0..10 {
        assert!(
            connect_from([127, 0, 0, 4], &app, None)
                .await
                .starts_with("HTTP/1.1 407")
        );
    }
    assert!(good_from(4).await);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn tokens_revoked_and_expired_on_new_and_open_connections() {
    let app = spawn_app().await;
    app.stripe_vault("life", "sk_life_value").await;
    let ca = app.ca_pem().await;
    let fresh = || async { app.proxy_token("life").await };

    // Revoked: a spliced tunnel (unbound host) is closed, new CONNECTs are refused.
    let (token, id) = fresh().await;
    let auth = basic(&token, "life");
    let mut tunnel = agent::connect(app.proxy, "unbound.example.test:443", Some(&auth))
        .await
        .unwrap();
    assert_eq!(
        app.call("DELETE", &format!("/v1/tokens/{id}"), None)
            .await
            .0,
        204
    );
    assert!(closed_by_peer(&mut tunnel).await, "revoked: tunnel closed");
    let (code, _) = agent::connect(app.proxy, "api.example.test:443", Some(&auth))
        .await
        .unwrap_err();
    assert_eq!(code, 407);

    // Expired while open: the intercepted connection stops serving, the tunnel closes.
    let (token, id) = fresh().await;
    let auth = basic(&token, "life");
    let tls = agent::dial(app.proxy, &auth, "api.example.test:443")
        .sni("api.example.test")
        .trusting(&ca)
        .tls()
        .await
        .unwrap();
    let (mut sender, _conn) = agent::http1(tls).await;
    let req = || agent::get("/", "api.example.test");
    assert_eq!(sender.send_request(req()).await.unwrap().status(), 200);
    let mut tunnel = agent::connect(app.proxy, "unbound.example.test:443", Some(&auth))
        .await
        .unwrap();
    let before = app.upstream.count();
    app.set_token_expiry(&id, now_ms() - 1000).await;
    if let Ok(resp) = sender.send_request(req()).await {
        assert_eq!(resp.status(), 407);
    }
    assert!(closed_by_peer(&mut tunnel).await, "expired: tunnel closed");
    assert_eq!(app.upstream.count(), before, "nothing more was forwarded");
    let (code, _) = agent::connect(app.proxy, "api.example.test:443", Some(&auth))
        .await
        .unwrap_err();
    assert_eq!(code, 407, "expired: new CONNECT refused");

    // Expiring while a tunnel is open and quiet: no event announces it, the tunnel still closes.
    let (token, id) = fresh().await;
    app.set_token_expiry(&id, now_ms() + 1500).await;
    let mut tunnel = agent::connect(
        app.proxy,
        "unbound.example.test:443",
        Some(&basic(&token, "life")),
    )
    .await
    .unwrap();
    assert!(
        closed_by_peer(&mut tunnel).await,
        "a tunnel does not outlive its token"
    );
}

#[tokio::test]
async fn an_open_websocket_closes_when_its_token_is_revoked() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = spawn_app().await;
    app.stripe_vault("ws-life", "sk_ws_life_value").await;
    let (token, id) = app.proxy_token("ws-life").await;
    let mut ws = app.websocket(&token, "ws-life").await;
    ws.send(Message::text("before")).await.unwrap();
    let echo = agent::next_message(&mut ws).await;
    assert_eq!(echo.into_text().unwrap().as_str(), "before");

    assert_eq!(
        app.call("DELETE", &format!("/v1/tokens/{id}"), None)
            .await
            .0,
        204
    );
    // The upgraded connection is no longer hyper's: it must be closed by the revocation
    // watch, not left open for as long as the agent likes.
    let ended = eventually(Duration::from_secs(10), async || {
        let _ = ws.send(Message::text("after")).await;
        match ws.next().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Some(()),
            Some(Ok(_)) => None,
        }
    })
    .await;
    assert!(ended.is_some(), "the websocket outlived its revoked token");
}
