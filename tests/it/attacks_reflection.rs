//! Reflection: a service echoes the credential it was sent (error messages, debug endpoints,
//! redirects). The proxy scrubs every injected value, raw and encoded, from what it passes back
//! (issue 6 §2, R9).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::support::{Alpn, TestApp, TestOptions, fetch, spawn_app, spawn_app_with};

/// Characters that every encoding treats differently.
const SECRET: &str = "sk_live/R3fl+ct\"ed Key=42";
const MARKER: &str = "[REDACTED by agent-vault]";

const SERVICES: &str = r#"
- name: api
  host: api.example.test
  auth: {type: bearer, token: KEY}
- name: basic
  host: basic.example.test
  auth: {type: basic, username: USER, password: PASS}
- name: open
  host: open.example.test
  auth: {type: passthrough}
"#;

async fn setup(app: &TestApp, vault: &str) -> String {
    app.service_vault(
        vault,
        &[
            ("KEY", SECRET),
            ("USER", "svc-user"),
            ("PASS", "hunter2-pw"),
        ],
        SERVICES,
    )
    .await
}

/// Every form of the secret a careless service could print.
fn forms() -> Vec<String> {
    let pct = utf8_percent_encode(SECRET, NON_ALPHANUMERIC).to_string();
    let json = serde_json::to_string(SECRET).unwrap();
    vec![
        SECRET.to_owned(),
        STANDARD.encode(SECRET),
        URL_SAFE_NO_PAD.encode(SECRET),
        STANDARD.encode(format!("Bearer {SECRET}")),
        pct.clone(),
        pct.replace("%2F", "%2f")
            .replace("%5F", "%5f")
            .replace("%2B", "%2b")
            .replace("%3D", "%3d"),
        pct.replace("%20", "+"),
        json[1..json.len() - 1].to_owned(),
        hex::encode(SECRET),
    ]
}

fn assert_clean(what: &str, text: &str) {
    for form in forms() {
        assert!(
            !text.contains(&form),
            "{what}: the secret leaked as {form:?} in {text}"
        );
    }
}

#[tokio::test]
async fn reflection_in_every_modelled_encoding_is_scrubbed() {
    // An HTTP/1.1 upstream: h2's own flood guard (rightly) cuts off an h2 upstream that sends
    // hundreds of 1-byte DATA frames before the body can be checked.
    let app = spawn_app_with(TestOptions {
        alpn: Alpn::H1Only,
        ..Default::default()
    })
    .await;
    let token = setup(&app, "reflect").await;
    let h1 = app.agent(&token, "reflect").await;
    let h2 = app
        .agent_builder(&token, "reflect")
        .await
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let no_redirect = app
        .agent_builder(&token, "reflect")
        .await
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for enc in [
        "raw",
        "b64",
        "b64url",
        "b64header",
        "pct",
        "pct-lower",
        "form",
        "json",
        "hex",
    ] {
        for (proto, agent) in [("h1", &h1), ("h2", &h2), ("h1", &no_redirect)] {
            for chunk in ["", "&chunk=1", "&chunk=7", "&chunk=64"] {
                let url = format!("https://api.example.test/reflect?enc={enc}{chunk}");
                let resp = agent.get(&url).send().await.unwrap();
                assert_eq!(resp.status(), 401, "{url}");
                let headers = format!("{:?}", resp.headers());
                assert_clean(&format!("{proto} {url} headers"), &headers);
                assert!(resp.headers()["x-debug-auth"] == "Bearer [REDACTED by agent-vault]");
                assert!(
                    resp.headers().get("content-length").is_none(),
                    "the length changed, so it is not announced"
                );
                let body = resp.text().await.unwrap();
                assert_clean(&format!("{proto} {url} body"), &body);
                assert!(body.contains(MARKER), "{url}: {body}");
                assert!(
                    body.contains("was not recognised"),
                    "the rest is intact: {body}"
                );
            }
        }
    }
    // The upstream did get the real value: scrubbing is on the way back only.
    assert_eq!(
        app.upstream.last().header("authorization"),
        Some(format!("Bearer {SECRET}"))
    );
}

#[tokio::test]
async fn reflection_of_basic_auth_and_echoed_headers_is_scrubbed() {
    let app = spawn_app().await;
    let token = setup(&app, "reflect-basic").await;
    let agent = app.agent(&token, "reflect-basic").await;
    let pair = STANDARD.encode("svc-user:hunter2-pw");
    let body = fetch(agent.get("https://basic.example.test/echo"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!body.contains(&pair), "{body}");
    assert!(!body.contains("hunter2-pw"), "{body}");
    assert!(body.contains(&format!("Basic {MARKER}")), "{body}");
    // A request without injected credentials is passed through untouched.
    let resp = agent
        .get("https://open.example.test/echo")
        .header("authorization", format!("Bearer {SECRET}"))
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers().get("content-length").is_some(),
        "nothing to scrub"
    );
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("sk_live/R3fl+ct"),
        "the agent's own text is not touched"
    );
}

#[tokio::test]
async fn reflection_in_gzip_bodies_is_scrubbed_and_other_codings_fail_closed() {
    let app = spawn_app().await;
    let token = setup(&app, "reflect-gzip").await;
    let agent = app.agent(&token, "reflect-gzip").await;
    for chunk in ["", "&chunk=5"] {
        let resp = agent
            .get(format!(
                "https://api.example.test/reflect?enc=raw&gzip=1{chunk}"
            ))
            .header("accept-encoding", "br, zstd, gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(
            app.upstream.last().header("accept-encoding").as_deref(),
            Some("gzip, identity"),
            "only codings the scrubber decodes are offered"
        );
        assert!(
            resp.headers().get("content-encoding").is_none(),
            "decoded bodies go out as identity"
        );
        let body = resp.text().await.unwrap();
        assert_clean("gzip body", &body);
        assert!(body.contains(MARKER), "{body}");
    }
    // A coding the proxy cannot decode is refused, never passed on unchecked.
    for coding in ["br", "zstd", "gzip, br", "compress"] {
        let resp = agent
            .get(format!(
                "https://api.example.test/reflect?enc=raw&coding={}",
                utf8_percent_encode(coding, NON_ALPHANUMERIC)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502, "{coding}");
        assert_eq!(
            resp.headers()["x-agent-vault-proxy-error"],
            "response_not_scrubbable"
        );
        assert_clean(coding, &resp.text().await.unwrap());
    }
    // Ranges would let the value be read back in pieces too short to recognise.
    agent
        .get("https://api.example.test/ranged")
        .header("range", "bytes=0-3")
        .header("if-range", "\"etag\"")
        .send()
        .await
        .unwrap();
    let seen = app.upstream.last();
    assert_eq!(seen.header("range"), None);
    assert_eq!(seen.header("if-range"), None);
}

/// Scrubbing holds back only a tail that could start the secret: an SSE event that carries the
/// secret arrives scrubbed, and arrives before the upstream sends anything more.
#[tokio::test]
async fn reflection_in_sse_is_scrubbed_without_delaying_events() {
    let app = spawn_app().await;
    let token = setup(&app, "reflect-sse").await;
    let agent = app.agent(&token, "reflect-sse").await;
    let mut resp = fetch(agent.get("https://api.example.test/gated?reflect=1")).await;
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("the first event is not held back")
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&first),
        format!("data: Bearer {MARKER}\n\n")
    );
    app.upstream.gate.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, "data: second\n\n");
}
