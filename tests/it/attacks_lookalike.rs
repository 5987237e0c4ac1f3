//! Look-alike hosts (issue 15, broken item 5 and the shared-tenant wildcard): an agent proposes to
//! bind an existing credential to a host that reads like one the approver trusts
//! (`api.strіpe.com` with a Cyrillic і, `api.stripe.corn`), or to every tenant of a
//! tunnel-sharing domain (`*.loca.lt`). The approver sees the A-label beside the Unicode form and
//! must tick a box per look-alike risk; nothing is applied without it.

use serde_json::{Value, json};

use crate::support::web::{self, attr, form};
use crate::support::{OWNER_PASSWORD, TestApp, fetch_text, spawn_app};

/// `api.strіpe.com`, the і being U+0456 CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I.
const CYRILLIC_HOST: &str = "api.str\u{0456}pe.com";

/// A vault whose stripe service binds api.stripe.com; returns an agent's proxy token.
async fn setup(app: &TestApp, vault: &str) -> String {
    app.service_vault(
        vault,
        &[("STRIPE_KEY", "sk_live_lookalike")],
        "- name: stripe\n  host: api.stripe.com\n  auth: {type: bearer, token: STRIPE_KEY}\n",
    )
    .await
}

/// The agent's proposal: a new service sending the existing STRIPE_KEY to `host`.
async fn propose_rebind(app: &TestApp, token: &str, vault: &str, host: &str) -> Value {
    let proposal = json!({
        "vault": vault,
        "message": "stripe moved its API, please update",
        "services": [{ "action": "set", "name": "stripe-v2", "host": host, "auth": { "type": "bearer", "token": "STRIPE_KEY" } }]
    });
    let (status, created) = app.propose(token, proposal).await;
    assert_eq!(status, 201, "{created}");
    created
}

fn a_label(host: &str) -> String {
    idna::domain_to_ascii(host).unwrap()
}

fn ack_risks(shown: &Value) -> Vec<Value> {
    shown["risks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["needs_acknowledgement"] == true)
        .cloned()
        .collect()
}

async fn service_hosts(app: &TestApp, vault: &str) -> Vec<String> {
    let v = app
        .ok("GET", &format!("/v1/vaults/{vault}/services"), None)
        .await;
    let list = v.as_array().or_else(|| v["services"].as_array()).unwrap();
    list.iter()
        .map(|s| s["host"].as_str().unwrap().to_owned())
        .collect()
}

/// Over the API: the risk list names the A-label and the confusable flag, and approving without
/// acknowledging it is refused with nothing applied.
#[tokio::test]
async fn lookalike_cyrillic_host_needs_acknowledgement_over_the_api() {
    let app = spawn_app().await;
    let token = setup(&app, "look-api").await;
    propose_rebind(&app, &token, "look-api", CYRILLIC_HOST).await;
    let base = "/v1/vaults/look-api/proposals/1";
    let shown = app.ok("GET", base, None).await;
    let ascii = a_label(CYRILLIC_HOST);
    assert!(ascii.starts_with("api.xn--"), "{ascii}");
    assert_eq!(
        shown["hosts"],
        json!([{ "service": "stripe-v2", "a_label": ascii, "unicode": CYRILLIC_HOST }])
    );
    let flagged = ack_risks(&shown);
    assert!(!flagged.is_empty(), "{shown}");
    let texts: Vec<&str> = flagged
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains(&ascii) && t.contains(CYRILLIC_HOST)),
        "the risk names both forms: {texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("U+0456") && t.contains("Cyrillic")),
        "the risk names the confusable character: {texts:?}"
    );
    // The rebinding risk names the A-label too, not only the Unicode text.
    assert!(
        shown["risks"].as_array().unwrap().iter().any(|r| r["text"]
            .as_str()
            .unwrap()
            .contains("STRIPE_KEY")
            && r["text"].as_str().unwrap().contains(&ascii)),
        "{shown}"
    );

    // No acknowledgement, a wrong one, or `false`: refused, nothing applied.
    for ack in [None, Some(json!(["something-else"])), Some(json!(false))] {
        let mut body = json!({ "approval_hash": shown["approval_hash"] });
        if let Some(a) = ack.clone() {
            body["acknowledge_risks"] = a;
        }
        let (status, resp) = app
            .call("POST", &format!("{base}/approve"), Some(body))
            .await;
        assert_eq!(status, 400, "{ack:?}: {resp}");
        assert_eq!(resp["error"], "risks_not_acknowledged", "{resp}");
        assert!(resp.to_string().contains(&ascii), "{resp}");
        assert_eq!(app.ok("GET", base, None).await["status"], "pending");
        assert_eq!(
            service_hosts(&app, "look-api").await,
            vec!["api.stripe.com"]
        );
    }

    // Acknowledged by id: applied.
    let ids: Vec<Value> = flagged.iter().map(|r| r["id"].clone()).collect();
    let done = approve_acknowledging(&app, base, &shown, json!(ids)).await;
    assert_eq!(done["status"], "applied");
    assert_eq!(service_hosts(&app, "look-api").await.len(), 2);
}

/// Tries to approve the proposal at `base` as `shown` without acknowledging its risks.
async fn approve_unacknowledged(app: &TestApp, base: &str, shown: &Value) -> (u16, Value) {
    app.call(
        "POST",
        &format!("{base}/approve"),
        Some(json!({ "approval_hash": shown["approval_hash"] })),
    )
    .await
}

/// Approves the proposal at `base` as `shown`, acknowledging `risks` (ids, or `true` for all).
async fn approve_acknowledging(app: &TestApp, base: &str, shown: &Value, risks: Value) -> Value {
    app.ok(
        "POST",
        &format!("{base}/approve"),
        Some(json!({ "approval_hash": shown["approval_hash"], "acknowledge_risks": risks })),
    )
    .await
}

/// A pure-ASCII look-alike of a host the vault already binds (`corn` reads as `com`: UTS #39
/// skeletons are equal) is a high risk that needs the tick too; `true` acknowledges every risk.
#[tokio::test]
async fn lookalike_skeleton_of_an_existing_binding_is_high_risk() {
    let app = spawn_app().await;
    let token = setup(&app, "look-skel").await;
    propose_rebind(&app, &token, "look-skel", "api.stripe.corn").await;
    let base = "/v1/vaults/look-skel/proposals/1";
    let shown = app.ok("GET", base, None).await;
    let flagged = ack_risks(&shown);
    assert!(
        flagged.iter().any(|r| r["severity"] == "high"
            && r["text"].as_str().unwrap().contains("api.stripe.com")
            && r["text"].as_str().unwrap().contains("api.stripe.corn")),
        "{shown}"
    );
    let (status, resp) = approve_unacknowledged(&app, base, &shown).await;
    assert_eq!(status, 400, "{resp}");
    assert_eq!(app.ok("GET", base, None).await["status"], "pending");
    let done = approve_acknowledging(&app, base, &shown, json!(true)).await;
    assert_eq!(done["status"], "applied");
    // An ordinary new host raises no such risk and needs no acknowledgement.
    let proposal = json!({
        "vault": "look-skel",
        "services": [{ "action": "set", "name": "github", "host": "api.github.com", "auth": { "type": "passthrough" } }]
    });
    let (status, _) = app.propose(&token, proposal).await;
    assert_eq!(status, 201);
    let plain = app
        .ok("GET", "/v1/vaults/look-skel/proposals/2", None)
        .await;
    assert!(ack_risks(&plain).is_empty(), "{plain}");
    let done = app
        .ok(
            "POST",
            "/v1/vaults/look-skel/proposals/2/approve",
            Some(json!({ "approval_hash": plain["approval_hash"] })),
        )
        .await;
    assert_eq!(done["status"], "applied");
}

/// On the approval page: both forms of the host, a required checkbox per look-alike risk, and
/// an approval without the tick refused with nothing applied.
#[tokio::test]
async fn lookalike_cyrillic_host_on_the_approval_page_needs_the_checkbox() {
    let app = spawn_app().await;
    let token = setup(&app, "look-web").await;
    let created = propose_rebind(&app, &token, "look-web", CYRILLIC_HOST).await;
    let url = created["approval_url"].as_str().unwrap().to_owned();
    let page_url = url.split('?').next().unwrap().to_owned();
    let client = web::client();
    let cookie = web::login_cookie(&app).await;
    let html = fetch_text(client.get(&url).header("cookie", &cookie)).await;
    let ascii = a_label(CYRILLIC_HOST);
    assert!(html.contains(&ascii), "the A-label is shown: {html}");
    assert!(html.contains(CYRILLIC_HOST), "the Unicode form is shown");
    assert!(html.contains("U+0456"), "the odd character is named");
    // One required box per look-alike risk: the confusable letter, and the likeness to the
    // api.stripe.com binding the vault already has.
    let checkboxes: Vec<&str> = html
        .split('<')
        .filter(|tag| tag.starts_with("input") && tag.contains("type=\"checkbox\""))
        .collect();
    assert_eq!(checkboxes.len(), 2, "{html}");
    let acks: Vec<String> = checkboxes
        .iter()
        .map(|tag| {
            assert!(tag.contains(" required"), "{tag}");
            attr(tag, "ack")
        })
        .collect();
    let csrf = attr(&html, "csrf");
    let hash = attr(&html, "hash");
    let post = |ticked: Vec<&str>| {
        let mut pairs = vec![
            ("action", "approve"),
            ("csrf", csrf.as_str()),
            ("hash", hash.as_str()),
            ("confirm_password", OWNER_PASSWORD),
        ];
        for a in ticked {
            pairs.push(("ack", a));
        }
        client
            .post(&page_url)
            .header("cookie", &cookie)
            .header("origin", &app.admin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&pairs))
            .send()
    };
    for ticked in [vec![], vec!["not-a-risk"], vec![acks[0].as_str()]] {
        let refused = post(ticked.clone()).await.unwrap();
        assert_eq!(refused.status(), 400, "{ticked:?}");
        let text = refused.text().await.unwrap();
        assert!(text.contains("tick"), "a clear message: {text}");
        assert_eq!(
            app.ok("GET", "/v1/vaults/look-web/proposals/1", None).await["status"],
            "pending"
        );
        assert_eq!(
            service_hosts(&app, "look-web").await,
            vec!["api.stripe.com"]
        );
    }
    let done = post(acks.iter().map(String::as_str).collect())
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("Approved"));
    assert_eq!(service_hosts(&app, "look-web").await.len(), 2);
}

/// The CLI prints the look-alike risk before approving and refuses without
/// `--acknowledge-risks`.
#[tokio::test]
async fn lookalike_cyrillic_host_cli_needs_the_acknowledge_flag() {
    let app = spawn_app().await;
    let token = setup(&app, "look-cli").await;
    propose_rebind(&app, &token, "look-cli", CYRILLIC_HOST).await;
    app.cli_login().await;
    let refused = app
        .cli(&["proposal", "approve", "1", "--vault", "look-cli"], None)
        .await;
    assert_ne!(refused.code, 0, "{refused:?}");
    let ascii = a_label(CYRILLIC_HOST);
    assert!(refused.stderr.contains(&ascii), "{refused:?}");
    assert!(
        refused.stderr.contains("--acknowledge-risks"),
        "{refused:?}"
    );
    assert_eq!(
        app.ok("GET", "/v1/vaults/look-cli/proposals/1", None).await["status"],
        "pending"
    );
    let done = app
        .cli(
            &[
                "proposal",
                "approve",
                "1",
                "--vault",
                "look-cli",
                "--acknowledge-risks",
            ],
            None,
        )
        .await;
    assert_eq!(done.code, 0, "{done:?}");
    assert!(
        done.stderr.contains(&ascii),
        "the risk is printed first: {done:?}"
    );
    assert_eq!(service_hosts(&app, "look-cli").await.len(), 2);
}

/// `*.loca.lt` and other tunnel-sharing or shared-tenant domains are not on the public suffix
/// list (or only in forms the check does not see), yet anyone can get a name under them: a
/// wildcard there sends the credential to whoever registers a tunnel.
#[tokio::test]
async fn lookalike_wildcard_under_a_tunnel_sharing_domain_is_refused() {
    let app = spawn_app().await;
    let token = setup(&app, "look-tunnel").await;
    for host in [
        "*.loca.lt",
        "*.ngrok-free.app",
        "*.trycloudflare.com",
        "*.amazonaws.com",
    ] {
        let (status, resp) = app
            .call(
                "PUT",
                "/v1/vaults/look-tunnel/services",
                Some(json!({ "services": [
                    { "name": "stripe", "host": "api.stripe.com", "auth": { "type": "bearer", "token": "STRIPE_KEY" } },
                    { "name": "tunnel", "host": host, "auth": { "type": "bearer", "token": "STRIPE_KEY" } }
                ] })),
            )
            .await;
        assert_eq!(status, 400, "{host}: {resp}");
        assert!(resp.to_string().contains("shared"), "{host}: {resp}");
        let proposal = json!({
            "vault": "look-tunnel",
            "services": [{ "action": "set", "name": "tunnel", "host": host, "auth": { "type": "bearer", "token": "STRIPE_KEY" } }]
        });
        let (status, resp) = app.propose(&token, proposal).await;
        assert_eq!(status, 400, "{host}: {resp}");
        assert!(resp.to_string().contains("shared"), "{host}: {resp}");
    }
    assert_eq!(
        service_hosts(&app, "look-tunnel").await,
        vec!["api.stripe.com"]
    );
    // One named tunnel host is fine: the approver sees exactly which one.
    let proposal = json!({
        "vault": "look-tunnel",
        "services": [{ "action": "set", "name": "tunnel", "host": "my-app.loca.lt", "auth": { "type": "passthrough" } }]
    });
    let (status, resp) = app.propose(&token, proposal).await;
    assert_eq!(status, 201, "{resp}");
}

/// A combining dot after an `i`, or an accented `í`, reads as `stripe` on the approval page but
/// is neither mixed-script nor on UTS #39's confusable list: both used to be a plain warning
/// that an approval without acknowledgement applied. They now need the tick like any look-alike.
#[tokio::test]
async fn lookalike_combining_mark_or_accent_needs_acknowledgement() {
    for (i, host) in ["api.stri\u{0307}pe.com", "api.str\u{00ED}pe.com"]
        .into_iter()
        .enumerate()
    {
        let app = spawn_app().await;
        let vault = format!("look-mark-{i}");
        let token = setup(&app, &vault).await;
        propose_rebind(&app, &token, &vault, host).await;
        let base = format!("/v1/vaults/{vault}/proposals/1");
        let shown = app.ok("GET", &base, None).await;
        assert!(!ack_risks(&shown).is_empty(), "{host}: {shown}");
        let (status, resp) = approve_unacknowledged(&app, &base, &shown).await;
        assert_eq!(status, 400, "{host}: {resp}");
        assert_eq!(app.ok("GET", &base, None).await["status"], "pending");
    }
}
