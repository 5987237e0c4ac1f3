//! WebSockets through the proxy: credentials on the handshake, frames both ways, idle limits,
//! and substitutions in frames with their echoes scrubbed.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};

use crate::support::agent;
use crate::support::{eventually, spawn_app, spawn_app_tweaked};

#[tokio::test]
async fn websocket_handshake_gets_credentials_and_frames_flow() {
    let app = spawn_app().await;
    let token = app.stripe_vault("ws-vault", "sk_ws").await;
    let mut ws = app.websocket(&token, "ws-vault").await;
    assert_eq!(
        app.upstream.last().header("authorization").as_deref(),
        Some("Bearer sk_ws")
    );
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        "hello through the proxy",
    ))
    .await
    .unwrap();
    let echo = agent::next_message(&mut ws).await;
    assert_eq!(
        echo.into_text().unwrap().as_str(),
        "hello through the proxy"
    );
}

#[tokio::test]
async fn a_busy_websocket_outlives_the_idle_limit_and_an_idle_one_does_not() {
    use tokio_tungstenite::tungstenite::Message;
    let app = spawn_app_tweaked(|c| {
        c.limits.tunnel_idle_timeout = Duration::from_secs(1);
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
        let closed = eventually(Duration::from_secs(10), async || match ws.next().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Some(()),
            Some(Ok(_)) => None,
        })
        .await;
        assert!(closed.is_some(), "{vault}: an idle websocket stays open");
    }
}

#[tokio::test]
async fn websocket_frames_get_substitutions_and_echoes_are_scrubbed() {
    let app = spawn_app().await;
    let token = app.service_vault("ws-frames", &[("WS_TOKEN", "ws-secret-value-123")], "- name: stream\n  host: api.example.test\n  auth: {type: passthrough}\n  substitutions:\n    - {placeholder: __WS_TOKEN__, key: WS_TOKEN, in: [{websocket: /auth}]}\n").await;
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
    let echo = agent::next_message(&mut ws).await;
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
