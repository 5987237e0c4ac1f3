//! Framing: request smuggling from the agent's side, header injection through substituted
//! values, and malformed or desynchronizing responses from the upstream's side (issue 6 §2, R11).

use std::sync::Arc;

use serde_json::json;

use crate::support::raw_upstream::RawUpstream;
use crate::support::{
    Alpn, FakeUpstream, TestCa, TestOptions, assert_proxy_error, fetch, spawn_app,
    spawn_app_against,
};

fn status(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Request heads whose body length two parsers could read differently never reach the
/// upstream, and the connection they came on is closed.
#[tokio::test]
async fn framing_agent_side_smuggling_is_refused() {
    let app = spawn_app().await;
    let token = app.stripe_vault("smuggle", "sk_smuggle_value").await;
    let head = "Host: api.example.test\r\n";
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n";
    let cases = [
        format!(
            "POST /clte HTTP/1.1\r\n{head}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /tecl HTTP/1.1\r\n{head}Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /dupcl2 HTTP/1.1\r\n{head}Content-Length: 0\r\nContent-Length: 71\r\n\r\n{smuggled}"
        ),
        format!("POST /cllist HTTP/1.1\r\n{head}Content-Length: 0, 71\r\n\r\n{smuggled}"),
        format!("POST /signed HTTP/1.1\r\n{head}Content-Length: +0\r\n\r\n{smuggled}"),
        format!("POST /negative HTTP/1.1\r\n{head}Content-Length: -1\r\n\r\n{smuggled}"),
        format!("POST /te HTTP/1.1\r\n{head}Transfer-Encoding: identity\r\n\r\n{smuggled}"),
        format!(
            "POST /te2 HTTP/1.1\r\n{head}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!("GET /fold HTTP/1.1\r\n{head}X-Folded: a\r\n b\r\n\r\n{smuggled}"),
        format!("GET /space HTTP/1.1\r\n{head}Content-Length : 0\r\n\r\n{smuggled}"),
        format!("GET /cr HTTP/1.1\r\n{head}X-A: a\rX-B: b\r\n\r\n{smuggled}"),
        format!(
            "POST /badchunk HTTP/1.1\r\n{head}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{smuggled}"
        ),
    ];
    for raw in cases {
        let name = raw.split_whitespace().nth(1).unwrap().to_owned();
        let out = app
            .raw_request(&token, "smuggle", "api.example.test", &raw)
            .await;
        // RFC 9112 §6.1 allows refusing, or reading by Transfer-Encoding alone and closing.
        if status(&out) == 200 {
            assert!(
                name.starts_with("/clte") || name.starts_with("/tecl"),
                "{name}: {out}"
            );
            assert!(out.contains("connection: close"), "{name}: {out}");
        }
        let responses = out.split("HTTP/1.1 ").filter(|s| !s.is_empty()).count();
        assert!(
            responses <= 1,
            "{name}: more than one response came back: {out}"
        );
    }
    for r in app.upstream.requests() {
        assert_ne!(
            r.path_and_query, "/smuggled",
            "a smuggled request got through"
        );
        assert!(
            !String::from_utf8_lossy(&r.body).contains("hello"),
            "{}: a body the agent framed badly was delivered",
            r.path_and_query
        );
    }
}

/// Substituted and injected values can never add a header line or a request line.
#[tokio::test]
async fn framing_crlf_in_credential_values_cannot_inject() {
    let app = spawn_app().await;
    app.create_vault("crlf").await;
    // `generic` takes any bytes, so the value gets as far as the proxy, which must refuse it.
    app.ok(
        "PUT",
        "/v1/vaults/crlf/credentials",
        Some(json!({
            "credentials": { "EVIL": "v1\r\nX-Injected: yes\r\n\r\nGET /x HTTP/1.1" },
            "types": { "EVIL": "generic" },
        })),
    )
    .await;
    app.set_services_yaml(
        "crlf",
        r#"
- name: bearer
  host: bearer.example.test
  auth: {type: bearer, token: EVIL}
- name: custom
  host: custom.example.test
  auth: {type: custom, headers: {X-Key: "k={{ EVIL }}"}}
- name: sub
  host: sub.example.test
  auth: {type: passthrough}
  substitutions:
    - {placeholder: __EVIL_VALUE__, key: EVIL, in: [{header: X-Token}, {path: 2}, {query: q}, {json: /k}]}
"#,
    )
    .await;
    let (token, _) = app.proxy_token("crlf").await;
    let agent = app.agent(&token, "crlf").await;
    let before = app.upstream.count();
    for req in [
        agent.get("https://bearer.example.test/"),
        agent.get("https://custom.example.test/"),
        agent
            .get("https://sub.example.test/")
            .header("x-token", "__EVIL_VALUE__"),
    ] {
        let resp = req.send().await.unwrap();
        assert_proxy_error(&resp, 403, "placeholder_refused");
    }
    assert_eq!(app.upstream.count(), before, "nothing was sent");
    // In a URL or a body the value is escaped for its location.
    fetch(agent.get("https://sub.example.test/p/__EVIL_VALUE__?q=__EVIL_VALUE__")).await;
    let seen = app.upstream.last();
    assert_eq!(
        seen.path_and_query,
        "/p/v1%0D%0AX-Injected%3A%20yes%0D%0A%0D%0AGET%20%2Fx%20HTTP%2F1.1?q=v1%0D%0AX-Injected%3A%20yes%0D%0A%0D%0AGET%20%2Fx%20HTTP%2F1.1"
    );
    assert!(seen.header("x-injected").is_none());
    agent
        .post("https://sub.example.test/b")
        .json(&json!({ "k": "__EVIL_VALUE__" }))
        .send()
        .await
        .unwrap();
    let seen = app.upstream.last();
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["k"], "v1\r\nX-Injected: yes\r\n\r\nGET /x HTTP/1.1");
    assert!(
        app.upstream
            .requests()
            .iter()
            .all(|r| r.path_and_query != "/x")
    );
}

const SECOND: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond";

fn script(head: &str) -> Vec<u8> {
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let bytes: &[u8] = match path {
        // One response, then a second one nobody asked for: the next request on this
        // connection would read it as its own.
        "/desync" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle"
        }
        "/desync-late" => b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\nsmuggle",
        "/clte" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        }
        "/dupcl" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhellosmuggle",
        "/negcl" => b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
        "/badchunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "/fold" => b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 5\r\n\r\nhello",
        "/te-gzip" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        }
        "/reflect-in-header" => {
            b"HTTP/1.1 200 OK\r\nX-Echo: Bearer sk_raw_upstream_value\r\nContent-Length: 2\r\n\r\nok"
        }
        _ => SECOND,
    };
    bytes.to_vec()
}

/// Malformed responses fail the request they answer, and the upstream connection they came on
/// is never used again: the next request gets its own answer, not bytes left over.
#[tokio::test]
async fn framing_upstream_anomalies_discard_the_connection() {
    crate::support::install_crypto();
    let ca = Arc::new(TestCa::new("framing upstream CA"));
    let (chain, key) = ca.server_cert(&["example.test", "*.example.test"], (-1, 30));
    let upstream = FakeUpstream::start(chain, key, Alpn::Both).await;
    let raw = RawUpstream::start(&ca, Arc::new(script)).await;
    let raw_addr = raw.addr;
    let app = spawn_app_against(
        TestOptions {
            tweak: Some(Box::new(move |c| {
                c.upstream
                    .resolve
                    .insert("raw.example.test:443".into(), raw_addr.to_string());
            })),
            ..Default::default()
        },
        upstream,
        ca,
    )
    .await;
    let token = app
        .service_vault(
            "raw",
            &[("KEY", "sk_raw_upstream_value")],
            "- name: raw\n  host: raw.example.test\n  auth: {type: bearer, token: KEY}\n",
        )
        .await;
    let agent = app.agent(&token, "raw").await;
    let get = |path: &str| agent.get(format!("https://raw.example.test{path}")).send();

    // A well-formed exchange first: the connection is pooled.
    let resp = get("/warm").await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "second");
    assert_eq!(raw.connections(), 1);

    let cases: [(&str, Option<u16>); 8] = [
        ("/desync", Some(200)),
        ("/desync-late", Some(204)),
        ("/clte", Some(200)),
        ("/dupcl", Some(502)),
        ("/negcl", Some(502)),
        ("/badchunk", None),
        ("/fold", Some(502)),
        ("/te-gzip", Some(502)),
    ];
    for (path, want) in cases {
        let before = raw.connections();
        let result = get(path).await;
        match (want, result) {
            (Some(code), Ok(resp)) => {
                assert_eq!(resp.status(), code, "{path}");
                let body = resp.text().await.unwrap_or_default();
                assert!(!body.contains("smuggle"), "{path}: {body}");
                if path == "/clte" {
                    assert_eq!(body, "hello", "the chunked framing wins, no stray length");
                }
            }
            (None, Ok(resp)) => {
                assert!(
                    resp.bytes().await.is_err(),
                    "{path}: a broken body is cut off, not completed"
                );
            }
            (_, Err(e)) => assert!(want.is_none(), "{path}: {e}"),
        }
        let after = get("/after").await.unwrap();
        assert_eq!(after.status(), 200, "{path}");
        assert_eq!(
            after.text().await.unwrap(),
            "second",
            "{path}: the next request read leftovers of a desynchronized connection"
        );
        if path.starts_with("/desync") {
            assert!(
                raw.connections() > before,
                "{path}: the desynchronized connection was reused"
            );
        }
    }
    // Reflections in headers from a raw upstream are scrubbed too.
    let resp = get("/reflect-in-header").await.unwrap();
    assert_eq!(resp.headers()["x-echo"], "Bearer [REDACTED by agent-vault]");
}

/// A CONNECT target must be authority-form, `host:port` (RFC 9110 §9.3.6): a URI
/// (`https://host:443`), a path, userinfo or a missing port is refused with 400 and a proxy
/// error code before anything is dialed, whatever the host.
#[tokio::test]
async fn framing_connect_targets_that_are_not_host_and_port_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let token = app.stripe_vault("target", "sk_target_value").await;
    let auth = crate::support::agent::basic(&token, "target");
    // hyper's request-line parser already refuses some targets with a bare 400 before the
    // proxy sees them (`false`); the proxy refuses the rest with its error header.
    let cases = [
        ("https://api.example.test:443", true),
        ("http://api.example.test:443/", true),
        ("https://api.example.test", true),
        ("api.example.test:443/path", false),
        ("user@api.example.test:443", true),
        ("user:pw@api.example.test:443", true),
        ("api.example.test", true),
        ("api.example.test:", true),
        ("*", true),
        ("/", true),
    ];
    for (target, by_proxy) in cases {
        let mut s = tokio::net::TcpStream::connect(app.proxy).await.unwrap();
        s.write_all(
            format!(
                "CONNECT {target} HTTP/1.1\r\nHost: api.example.test:443\r\nProxy-Authorization: {auth}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        })
        .await;
        assert!(read.is_ok(), "{target}: no answer");
        let head = String::from_utf8_lossy(&head).to_lowercase();
        assert_eq!(status(&head), 400, "{target}: {head}");
        assert_eq!(
            head.contains("x-agent-vault-proxy-error: bad_request"),
            by_proxy,
            "{target}: {head}"
        );
    }
    // The same host in authority form still works.
    let tcp = crate::support::agent::connect(app.proxy, "api.example.test:443", Some(&auth)).await;
    assert!(tcp.is_ok(), "{:?}", tcp.err());
    assert_eq!(app.upstream.count(), 0, "nothing reached the upstream");
}

/// Found in review: with two Content-Type headers the proxy substituted the body as the first
/// (JSON) while an upstream reading the last took it as a form, so a JSON place's secret landed
/// in a form field (`{"a":"&note=","auth":{"token":"__KEY__"}}` reads as `note=...secret...`).
#[tokio::test]
async fn framing_duplicate_content_type_moves_a_json_place_into_a_form_field() {
    let app = spawn_app().await;
    app.create_vault("two-types").await;
    app.set_credentials("two-types", &[("NOTES_KEY", "sk_two_types_0123456789")])
        .await;
    app.set_services_yaml(
        "two-types",
        "- name: notes\n  host: notes.example.test\n  auth: {type: passthrough}\n  substitutions:\n    - {placeholder: __NOTES_KEY__, key: NOTES_KEY, in: [{json: /auth/token}]}\n",
    )
    .await;
    let token = app.proxy_token("two-types").await.0;
    let agent = app.agent(&token, "two-types").await;
    let before = app.upstream.count();
    for (first, second) in [
        ("application/json", "application/x-www-form-urlencoded"),
        ("application/json", "application/json"),
    ] {
        let resp = agent
            .post("https://notes.example.test/notes")
            .header("content-type", first)
            .header("content-type", second)
            .body(r#"{"a":"&note=","auth":{"token":"__NOTES_KEY__"}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{first} {second}");
        assert_eq!(resp.headers()["x-agent-vault-proxy-error"], "bad_framing");
    }
    assert_eq!(app.upstream.count(), before, "nothing was forwarded");
}
