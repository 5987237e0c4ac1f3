//! The approver's web session (issue 15, broken item 1): an agent files a proposal whose
//! `obtain` link points at a server it runs on another port of the same host; the approver
//! clicks it and the browser sends the session cookie along (cookies are not isolated by port).
//! Each link of that chain is cut: the cookie is useless against `/v1` and the proxy, agent links
//! are not clickable, such links are refused at creation, and over TLS the cookie is
//! `__Host-`-prefixed and `Secure`.

use serde_json::{Value, json};

use crate::support::agent::{self, basic};
use crate::support::web::{self, form};
use crate::support::{OWNER_EMAIL, OWNER_PASSWORD, TestApp, fetch, spawn_app, spawn_app_tweaked};

const SECRET: &str = "sk_live_websession_secret_1";

/// `name=value` of a `Set-Cookie` header.
fn pair(set_cookie: &str) -> (String, String) {
    let first = set_cookie.split(';').next().unwrap();
    let (name, value) = first.split_once('=').unwrap();
    (name.to_owned(), value.to_owned())
}

/// Whether the dashboard answers this `Cookie` header as a logged-in page.
async fn dashboard(app: &TestApp, cookie: &str) -> (u16, String) {
    let resp = web::client()
        .get(format!("{}/", app.admin))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn web_session_cookie_is_refused_as_api_bearer() {
    let app = spawn_app().await;
    app.stripe_vault("bank", SECRET).await;
    let set_cookie = web::login(&app, &app.admin).await;
    let (name, value) = pair(&set_cookie);
    assert_eq!(name, "av_session", "plain-http loopback keeps the old name");
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");

    // What the agent's page on another port receives and replays against the API.
    for path in [
        "/v1/vaults/bank/credentials?reveal=true",
        "/v1/vaults/bank/credentials/STRIPE_KEY",
        "/v1/auth/whoami",
        "/v1/vaults",
    ] {
        let (status, body) = app.call_with(Some(&value), "GET", path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(!body.to_string().contains(SECRET), "{path}: {body}");
    }
    // Nor does it work at the proxy.
    let refused = agent::connect(
        app.proxy,
        "api.example.test:443",
        Some(&basic(&value, "bank")),
    )
    .await
    .map(|_| ())
    .unwrap_err();
    assert_eq!(refused.0, 407, "{}", refused.1);
    assert_eq!(app.upstream.count(), 0);

    // The pages still work with the cookie.
    let (status, page) = dashboard(&app, &format!("{name}={value}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("Pending proposals"), "{page}");

    // And the pages take only the web kind: an API session in the cookie is not a login.
    let api = app.login(OWNER_EMAIL, OWNER_PASSWORD).await;
    assert!(api.starts_with("av_sess_"));
    let (status, _) = dashboard(&app, &format!("av_session={api}")).await;
    assert_eq!(status, 303, "an av_sess_ token is not a web session");
    // The API login's token still works as a bearer.
    assert_eq!(
        app.call_with(
            Some(&api),
            "GET",
            "/v1/vaults/bank/credentials?reveal=true",
            None
        )
        .await
        .0,
        200
    );

    // Logout ends the web session.
    let cleared = logout(&app, &format!("{name}={value}"), &app.admin).await;
    assert!(
        cleared.starts_with("av_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(dashboard(&app, &format!("{name}={value}")).await.0, 303);
}

#[tokio::test]
async fn expired_web_session_is_refused_by_the_pages() {
    let app = spawn_app().await;
    let (name, value) = pair(&web::login(&app, &app.admin).await);
    let cookie = format!("{name}={value}");
    assert_eq!(dashboard(&app, &cookie).await.0, 200);
    let store = app.open_store().await;
    let kind: String = sqlx::query_scalar("SELECT kind FROM tokens WHERE label = 'web'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(kind, "web", "the web kind is recorded");
    // The record's kind must agree with the token's prefix.
    let set_kind = |kind: &'static str| {
        sqlx::query("UPDATE tokens SET kind = $1 WHERE label = 'web'")
            .bind(kind)
            .execute(store.pool())
    };
    set_kind("session").await.unwrap();
    assert_eq!(dashboard(&app, &cookie).await.0, 303);
    set_kind("web").await.unwrap();
    assert_eq!(dashboard(&app, &cookie).await.0, 200);
    let id: String = sqlx::query_scalar("SELECT id FROM tokens WHERE label = 'web'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    store.close().await;
    app.set_token_expiry(&id, 1).await;
    assert_eq!(dashboard(&app, &cookie).await.0, 303);
}

fn proposal_with_obtain(obtain: &str) -> Value {
    json!({
        "message": "I need GitHub; get the token at https://github.com/settings/tokens",
        "credentials": [{ "action": "set", "key": "GH_TOKEN", "description": "repo scope", "obtain": obtain,
                          "instructions": "Open https://github.com/settings/tokens and create one" }]
    })
}

#[tokio::test]
async fn agent_obtain_links_are_not_clickable() {
    let app = spawn_app().await;
    let token = app.stripe_vault("links", SECRET).await;
    let obtain = "https://github.com/settings/tokens?scopes=repo&note=\"x\"";
    let (status, created) = app.propose(&token, proposal_with_obtain(obtain)).await;
    assert_eq!(status, 201, "{created}");
    let url = created["approval_url"].as_str().unwrap();
    let html = fetch(web::client().get(url)).await.text().await.unwrap();
    // Stored and shown as the URL parser serializes it, then HTML-escaped.
    let escaped = "https://github.com/settings/tokens?scopes=repo&amp;note=%22x%22";
    assert!(
        html.contains(escaped),
        "the full URL is shown as text: {html}"
    );
    assert!(html.contains("provided by the agent"), "{html}");
    // No link anywhere on the page leads to the agent's URL (or anywhere off our origin).
    for tag in html.split("<a ").skip(1) {
        let href = tag
            .split("href=\"")
            .nth(1)
            .and_then(|h| h.split('"').next())
            .unwrap_or("");
        assert!(
            href.starts_with('/') && !href.starts_with("//"),
            "only links to our own pages: {tag}"
        );
    }
    assert!(!html.contains("href=\"https://github.com"), "{html}");
}

#[tokio::test]
async fn obtain_urls_to_loopback_private_or_plain_http_are_refused() {
    let app = spawn_app_tweaked(|c| {
        c.server.public_url = Some("https://vault.corp.test".into());
        c.server.allowed_hosts = vec!["av.intranet.test".into()];
    })
    .await;
    let token = app.stripe_vault("obtain", SECRET).await;
    let admin_port = app.admin.rsplit(':').next().unwrap().to_owned();
    let proxy_port = app.proxy.port();
    let refused = [
        format!("http://127.0.0.1:{admin_port}/v1/vaults/obtain/credentials?reveal=true"),
        "http://github.com/settings/tokens".to_owned(),
        "https://127.0.0.1:9999/steal".to_owned(),
        format!("https://127.0.0.1:{proxy_port}/"),
        "https://localhost/".to_owned(),
        "https://LOCALHOST.:8443/".to_owned(),
        "https://evil.localhost/".to_owned(),
        "https://[::1]:8080/".to_owned(),
        "https://[::ffff:127.0.0.1]/".to_owned(),
        "https://[::ffff:7f00:1]/".to_owned(),
        "https://2130706433/".to_owned(),
        "https://0x7f.1/".to_owned(),
        "https://0177.0.0.1/".to_owned(),
        "https://127.1/".to_owned(),
        "https://0/".to_owned(),
        "https://0.0.0.0:8080/".to_owned(),
        "https://[::]/".to_owned(),
        "https://10.1.2.3/".to_owned(),
        "https://172.16.0.1/".to_owned(),
        "https://192.168.1.10/".to_owned(),
        "https://[fd00::1]/".to_owned(),
        "https://169.254.169.254/latest/meta-data/".to_owned(),
        "https://[fe80::1]/".to_owned(),
        "https://100.64.0.1/".to_owned(),
        "https://vault.corp.test/".to_owned(),
        "https://VAULT.corp.test.:8443/x".to_owned(),
        "https://av.intranet.test/".to_owned(),
        "ftp://github.com/".to_owned(),
    ];
    for obtain in &refused {
        let (status, body) = app.propose(&token, proposal_with_obtain(obtain)).await;
        assert_eq!(status, 400, "{obtain}: {body}");
        assert_eq!(body["error"], "invalid_proposal", "{obtain}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("GH_TOKEN") && message.contains("`obtain`"),
            "{obtain}: {message}"
        );
    }
    // Nothing was stored for any of them; a public https link still works.
    let (status, created) = app
        .propose(
            &token,
            proposal_with_obtain("https://github.com/settings/tokens"),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["number"], 1);
}

#[tokio::test]
async fn web_session_cookie_over_tls_is_host_prefixed_and_secure() {
    let public = "https://vault.corp.test";
    let app =
        spawn_app_tweaked(|c| c.server.public_url = Some("https://vault.corp.test".into())).await;
    let set_cookie = web::login(&app, public).await;
    let (name, value) = pair(&set_cookie);
    assert_eq!(name, "__Host-av_session", "{set_cookie}");
    let attrs: Vec<&str> = set_cookie.split(';').map(str::trim).collect();
    for want in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(&want), "{want} missing: {set_cookie}");
    }
    assert!(
        !attrs
            .iter()
            .any(|a| a.to_ascii_lowercase().starts_with("domain")),
        "{set_cookie}"
    );
    assert_eq!(dashboard(&app, &format!("{name}={value}")).await.0, 200);
    // A same-host service on a plain-http port can set `av_session` (no `__Host-` protection);
    // over TLS the pages do not read that name at all.
    assert_eq!(dashboard(&app, &format!("av_session={value}")).await.0, 303);
    // And the cookie is still useless against the API.
    assert_eq!(
        app.call_with(Some(&value), "GET", "/v1/vaults", None)
            .await
            .0,
        401
    );
    // Logout clears it with the attributes a browser needs to accept the change.
    let cookie = format!("{name}={value}");
    let cleared = logout(&app, &cookie, public).await;
    assert!(
        cleared.starts_with("__Host-av_session=;")
            && cleared.contains("Max-Age=0")
            && cleared.contains("Secure")
            && cleared.contains("Path=/"),
        "{cleared}"
    );
    assert_eq!(dashboard(&app, &cookie).await.0, 303);
}

/// Logs out through the dashboard's form (its CSRF token, the given `Origin`) and returns the
/// `Set-Cookie` header that clears the session.
async fn logout(app: &TestApp, cookie: &str, origin: &str) -> String {
    let (_, page) = dashboard(app, cookie).await;
    let out = web::client()
        .post(format!("{}/logout", app.admin))
        .header("cookie", cookie)
        .header("origin", origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", &web::attr(&page, "csrf"))]))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    out.headers()["set-cookie"].to_str().unwrap().to_owned()
}
