//! Bodies and connections through the proxy: SSE without buffering, idle and stalled
//! connections, large downloads in flat memory, HTTP/2 on both sides, one leaf per new host, and
//! open streams finishing during a graceful shutdown.

use std::time::Duration;

use http_body_util::BodyExt;

use crate::support::agent;
use crate::support::{
    Alpn, TestOptions, eventually, fetch, rest_of, rss_kib, spawn_app, spawn_app_tweaked,
    spawn_app_with,
};

#[tokio::test]
async fn sse_events_stream_through_without_buffering() {
    let app = spawn_app().await;
    let token = app.stripe_vault("sse", "sk_sse").await;
    let agent = app.agent(&token, "sse").await;
    let mut resp = fetch(agent.get("https://api.example.test/gated")).await;
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
    assert_eq!(rest_of(&mut resp).await, "data: second\n\n");
}

#[tokio::test]
async fn streaming_responses_keep_a_connection_busy_and_stalled_or_idle_ones_close() {
    let app = spawn_app_tweaked(|c| {
        c.limits.idle_timeout = Duration::from_secs(1);
        // An idle connection is closed gracefully: in-flight responses get this long.
        c.server.shutdown_grace = Duration::from_millis(200);
    })
    .await;
    let token = app.stripe_vault("long", "sk_long_stream").await;
    let open = async || {
        let tls = app
            .tunnel(&token, "long", "api.example.test", &[b"http/1.1"])
            .await;
        agent::http1(tls).await
    };
    let get = |path: &str| agent::get(path, "api.example.test");

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

#[tokio::test]
async fn large_downloads_stream_with_flat_memory() {
    let app = spawn_app().await;
    let token = app.stripe_vault("big", "sk_big").await;
    let agent = app.agent(&token, "big").await;
    // Warm up the connection and allocator first.
    fetch(agent.get("https://api.example.test/bytes?n=1048576"))
        .await
        .bytes()
        .await
        .unwrap();
    let before = rss_kib();
    let size = 50 * 1024 * 1024;
    let mut resp = fetch(agent.get(format!("https://api.example.test/bytes?n={size}"))).await;
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
    let resp = fetch(agent.get("https://api.example.test/h2")).await;
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
            let resp = fetch(h1.get(format!("https://api.example.test/bytes?n={size}"))).await;
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
            fetch(agent.get("https://api.example.test/"))
                .await
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
async fn graceful_shutdown_lets_open_streams_finish() {
    let app = spawn_app().await;
    let token = app.stripe_vault("drain", "sk_drain").await;
    let agent = app.agent(&token, "drain").await;
    let mut resp = fetch(agent.get("https://api.example.test/gated")).await;
    let first = resp.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    let upstream = app.upstream.clone();
    let proxy = app.proxy;
    let stopping = tokio::spawn(app.stop());
    // Wait (bounded) until the listener is closed: shutdown has begun.
    let closed = eventually(Duration::from_secs(5), async || {
        tokio::net::TcpStream::connect(proxy).await.err()
    })
    .await;
    assert!(closed.is_some(), "the proxy stopped accepting connections");
    // The open stream still completes once the upstream sends the rest.
    upstream.gate.notify_one();
    assert_eq!(rest_of(&mut resp).await, "data: second\n\n");
    stopping.await.unwrap();
}
