//! The approval page in a real headless Chromium, driven through WebDriver (chromedriver).
//! Skipped with a notice when Chromium or chromedriver is not installed (`.ci/run` installs
//! the Debian packages `chromium` and `chromium-driver`).

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::{OWNER_EMAIL, OWNER_PASSWORD, TestApp, eventually, fetch, spawn_app};

struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

/// The program `name` as the shell would find it on `PATH`, else the first of `fallbacks` that
/// exists (Debian keeps chromedriver outside `PATH` on some releases). `PATH` comes first so a
/// broken `chromium` there fails the test as it would fail a person, rather than being bypassed.
fn find_program(name: &str, fallbacks: &[&str]) -> Option<String> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path.map(|p| p.display().to_string()).or_else(|| {
        fallbacks
            .iter()
            .find(|p| std::path::Path::new(p).exists())
            .map(|p| (*p).to_owned())
    })
}

async fn browser() -> Option<Browser> {
    let Some(driver) = find_program("chromedriver", &["/usr/lib/chromium/chromedriver"]) else {
        crate::support::missing_dependency("chromedriver (Debian package chromium-driver)");
        return None;
    };
    let Some(chromium) = find_program("chromium", &["/usr/bin/chromium-browser"]) else {
        crate::support::missing_dependency("chromium (Debian package chromium)");
        return None;
    };
    let chromium_path = chromium.clone();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = tokio::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1100,1400",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    // Chromedriver listens a moment after it starts; the session request below says if it never did.
    eventually(Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;
    let client = ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!("chromedriver could not start Chromium at {chromium_path}: {e}")
        });
    Some(Browser {
        client,
        _driver: child,
        _profile: profile,
    })
}

async fn text_of(c: &Client, css: &str) -> String {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn login_on_page(c: &Client) {
    c.find(Locator::Id("email"))
        .await
        .unwrap()
        .send_keys(OWNER_EMAIL)
        .await
        .unwrap();
    c.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(OWNER_PASSWORD)
        .await
        .unwrap();
    c.find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("approve-form"))
        .await
        .expect("back on the approval page, logged in");
}

async fn propose(app: &TestApp, token: &str, body: Value) -> Value {
    let (status, created) = app.propose(token, body).await;
    assert_eq!(status, 201, "{created}");
    created
}

#[tokio::test]
async fn approver_logs_in_enters_the_value_and_the_agent_retry_succeeds() {
    let Some(browser) = browser().await else {
        return;
    };
    let c = &browser.client;
    let app = spawn_app().await;
    app.create_vault("shop").await;
    app.set_policy("shop", "deny").await;
    let (token, _) = app.proxy_token("shop").await;
    let agent = app.agent(&token, "shop").await;

    // The agent hits a host nobody set up: 403 with a proposal hint.
    let err = agent
        .get("https://api.example.test/v1/charges")
        .send()
        .await
        .unwrap_err();
    let _ = err; // the CONNECT is refused, so the client reports a proxy error
    let created = propose(
        &app,
        &token,
        json!({
            "message": "I need Stripe to create test charges",
            "services": [{ "action": "set", "name": "stripe", "host": "api.example.test", "auth": { "type": "bearer", "token": "STRIPE_KEY" } }],
            "credentials": [{ "action": "set", "key": "STRIPE_KEY", "description": "Stripe test secret key", "obtain": "https://dashboard.stripe.com/test/apikeys" }]
        }),
    )
    .await;
    let url = created["approval_url"].as_str().unwrap();

    c.goto(url).await.unwrap();
    assert!(text_of(c, "h1").await.contains("Proposal #1"));
    assert!(c.source().await.unwrap().contains("Log in"));
    login_on_page(c).await;
    c.find(Locator::Id("value_STRIPE_KEY"))
        .await
        .unwrap()
        .send_keys("sk_test_from_browser")
        .await
        .unwrap();
    c.find(Locator::Id("confirm_password"))
        .await
        .unwrap()
        .send_keys(OWNER_PASSWORD)
        .await
        .unwrap();
    if let Ok(dir) = std::env::var("AGENT_VAULT_SCREENSHOT_DIR") {
        let png = c.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join("approval-page.png"), png).unwrap();
    }
    c.find(Locator::Id("approve"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let flash = text_of(c, "#flash").await;
    assert!(flash.contains("Approved"), "{flash}");
    assert_eq!(text_of(c, "#status").await, "applied");

    // The agent's retry goes through with the credential attached.
    let resp = fetch(agent.get("https://api.example.test/v1/charges")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.upstream.last().header("authorization").as_deref(),
        Some("Bearer sk_test_from_browser")
    );
    browser.client.clone().close().await.unwrap();
}

/// Serves one HTML page from another origin.
async fn attacker_site(html: String) -> String {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let html = html.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let html = html.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "text/html")
                                .body(http_body_util::Full::new(bytes::Bytes::from(html)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}/")
}

#[tokio::test]
async fn cross_origin_post_is_refused_and_rebinding_is_flagged() {
    let Some(browser) = browser().await else {
        return;
    };
    let c = &browser.client;
    let app = spawn_app().await;
    let token = app.stripe_vault("bank", "sk_live_existing").await;

    // A proposal that points the existing STRIPE_KEY at a new host.
    let created = propose(
        &app,
        &token,
        json!({
            "message": "Mirror payments to our analytics host",
            "services": [{ "action": "set", "name": "mirror", "host": "collector.example.test", "auth": { "type": "bearer", "token": "STRIPE_KEY" } }]
        }),
    )
    .await;
    let url = created["approval_url"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    c.goto(url).await.unwrap();
    login_on_page(c).await;
    let risks = text_of(c, ".risk").await;
    assert!(
        risks.contains("existing credential STRIPE_KEY would be sent to collector.example.test"),
        "{risks}"
    );

    // Another origin posts the approval form without the CSRF token (the browser holds our
    // session cookie: 127.0.0.1 on another port is the same site).
    let evil = attacker_site(format!(
        "<!doctype html><form method=\"post\" action=\"{}/approve/{id}\"><input name=\"action\" value=\"approve\">\
         <input name=\"hash\" value=\"x\"><button id=\"go\">win a prize</button></form>",
        app.admin
    ))
    .await;
    c.goto(&evil).await.unwrap();
    c.find(Locator::Id("go"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Wait (bounded) for the navigation to our origin to finish, then read the page.
    let mut body = String::new();
    eventually(Duration::from_secs(10), async || {
        let on_ours = c
            .current_url()
            .await
            .map(|u| u.as_str().starts_with(&app.admin))
            .unwrap_or(false);
        if on_ours && let Ok(source) = c.source().await {
            body = source;
        }
        body.contains("refused").then_some(())
    })
    .await;
    assert!(body.contains("cross-origin request refused"), "{body}");
    let shown = app.ok("GET", "/v1/vaults/bank/proposals/1", None).await;
    assert_eq!(shown["status"], "pending", "nothing was approved");
    browser.client.clone().close().await.unwrap();
}
