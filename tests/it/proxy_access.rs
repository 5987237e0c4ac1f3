//! Who may use the proxy and where it may go: proxy authentication and its failure budget,
//! revocation on an open tunnel, the SSRF guard, and the upstream's certificate.

use std::sync::Arc;

use serde_json::json;

use crate::support::agent::{self, basic};
use crate::support::fixtures::vault_with_services;
use crate::support::{
    Alpn, FakeUpstream, TestCa, TestOptions, assert_proxy_error, fetch, spawn_app,
    spawn_app_against, spawn_app_tweaked,
};

#[tokio::test]
async fn proxy_authentication_failures() {
    let app = spawn_app_tweaked(|c| c.limits.auth_failures_per_minute = 5).await;
    let token = vault_with_services(&app, "authn").await;
    let bearer =
        async |auth: Option<&str>| agent::connect(app.proxy, "bearer.example.test:443", auth).await;
    let (status, head) = bearer(None).await.unwrap_err();
    assert_eq!(status, 407);
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authenticate: basic"),
        "{head}"
    );
    assert!(head.contains("proxy_auth_required"));
    let (status, _) = bearer(Some(&basic(&token, "other-vault")))
        .await
        .unwrap_err();
    assert_eq!(status, 403, "a scoped token only works in its vault");
    let agent_resp = app.ok("POST", "/v1/agents", Some(json!({ "name": "multi", "vaults": [{ "vault": "authn", "role": "proxy" }, { "vault": "default", "role": "proxy" }] }))).await;
    let multi = agent_resp["token"].as_str().unwrap();
    let (status, head) = bearer(Some(&format!("Bearer {multi}"))).await.unwrap_err();
    assert_eq!(
        status, 403,
        "an agent with several vaults must name one: {head}"
    );
    assert!(bearer(Some(&basic(multi, "authn"))).await.is_ok());
    let session = app.owner_token.clone();
    let (status, _) = bearer(Some(&basic(&session, "authn"))).await.unwrap_err();
    assert_eq!(status, 407, "login sessions cannot proxy");
    // The failure budget: after 5 failures from this address, guesses answer 429; the valid
    // token keeps working.
    let wrong = basic("av_run_wrongwrongwrongwrongwrongwrongwrongwrong", "authn");
    for _ in 0..5 {
        let (status, _) = bearer(Some(&wrong)).await.unwrap_err();
        assert!(status == 407 || status == 429);
    }
    let (status, head) = bearer(Some(&wrong)).await.unwrap_err();
    assert_eq!(status, 429, "{head}");
    assert!(bearer(Some(&basic(&token, "authn"))).await.is_ok());
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
    let (mut sender, _conn) = agent::http1(tls).await;
    let req = || agent::get("/", "api.example.test");
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
        let resp = fetch(agent.get("https://bearer.example.test/")).await;
        assert_proxy_error(&resp, 403, "blocked_destination");
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
    let app = spawn_app_tweaked(|c| {
        c.upstream.allow_private_ranges = true;
        c.upstream.network_allowlist = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        c.upstream
            .resolve
            .insert("meta.example.test:443".into(), "169.254.169.254:443".into());
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
