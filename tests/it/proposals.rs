//! Proposals: agents ask, humans approve. API rules, states, limits, notifications, and the
//! approval page over plain HTTP (the browser test drives it in Chromium).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::web::{attr, form};
use crate::support::{
    OWNER_EMAIL, OWNER_PASSWORD, TestApp, TestOptions, eventually, fetch, fetch_text, spawn_app,
    spawn_app_tweaked, spawn_app_with,
};

/// A vault with the stripe service; returns a scoped proxy token for it.
async fn setup(app: &TestApp) -> String {
    app.stripe_vault("props", "sk_existing").await
}

fn github_proposal() -> Value {
    json!({
        "message": "I need to open issues on GitHub",
        "services": [{ "action": "set", "name": "github", "host": "gh.example.test", "auth": { "type": "bearer", "token": "GH_TOKEN" } }],
        "credentials": [{ "action": "set", "key": "GH_TOKEN", "description": "repo scope", "obtain": "https://github.com/settings/tokens" }]
    })
}

async fn propose(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    app.call_with(Some(token), "POST", "/v1/proposals", Some(body))
        .await
}

#[tokio::test]
async fn discovery_lists_services_and_keys_never_values() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let (status, d) = app
        .call_with(Some(&token), "GET", "/v1/discover", None)
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["vault"], "props");
    assert_eq!(
        d["services"],
        json!([{ "name": "stripe", "host": "api.example.test" }])
    );
    assert_eq!(d["credentials"], json!(["STRIPE_KEY"]));
    assert!(!d.to_string().contains("sk_existing"));
}

#[tokio::test]
async fn agents_create_and_poll_proposals() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let (status, created) = propose(&app, &token, github_proposal()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "pending");
    assert_eq!(created["number"], 1);
    let url = created["approval_url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/approve/", app.admin)), "{url}");
    let link_token = url.split("token=").nth(1).unwrap().to_owned();
    assert!(link_token.starts_with("av_appr_"));
    let id = created["id"].as_str().unwrap().to_owned();

    // The creator polls its status, and so may a later `vault token` session of the same vault
    // (every `run` revokes its token on exit); a session of another vault cannot, and is told
    // who can.
    let (status, polled) = app
        .call_with(Some(&token), "GET", &format!("/v1/proposals/{id}"), None)
        .await;
    assert_eq!((status, polled["status"].as_str()), (200, Some("pending")));
    let (next_run, _) = app.proxy_token("props").await;
    let (status, polled) = app
        .call_with(Some(&next_run), "GET", &format!("/v1/proposals/{id}"), None)
        .await;
    assert_eq!((status, polled["status"].as_str()), (200, Some("pending")));
    app.create_vault("elsewhere").await;
    let (other, _) = app.proxy_token("elsewhere").await;
    let (status, refused) = app
        .call_with(Some(&other), "GET", &format!("/v1/proposals/{id}"), None)
        .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (403, Some("forbidden"))
    );
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("only such sessions for the same vault and members of the vault"),
        "{refused}"
    );
    assert!(!refused.to_string().contains("props"), "{refused}");

    // Nothing raw is stored: neither the approval link token nor the creator's token.
    let store = app.open_store().await;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT created_by_id, COALESCE(creator_token_id, ''), content FROM proposals",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    store.close().await;
    let dump = format!("{rows:?}");
    assert!(
        !dump.contains(&link_token) && !dump.contains(&token),
        "{dump}"
    );
    let db = std::fs::read(app.config.data_dir.join("agent-vault.db")).unwrap();
    let wal = std::fs::read(app.config.data_dir.join("agent-vault.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes
                .windows(link_token.len())
                .any(|w| w == link_token.as_bytes())
        );
    }
}

/// An agent with the proxy role in `props`; returns its own token.
async fn proxy_agent(app: &TestApp, name: &str) -> String {
    let created = app
        .ok(
            "POST",
            "/v1/agents",
            Some(json!({ "name": name, "vaults": [{ "vault": "props", "role": "proxy" }] })),
        )
        .await;
    created["token"].as_str().unwrap().to_owned()
}

/// A `run`-style token minted with `token`: short-lived, proxy role, one vault.
async fn run_token(app: &TestApp, token: &str) -> String {
    let (status, minted) = app
        .call_with(
            Some(token),
            "POST",
            "/v1/vaults/props/tokens",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    minted["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn later_run_tokens_of_the_same_agent_follow_its_proposals() {
    let app = spawn_app().await;
    setup(&app).await;
    let bot = proxy_agent(&app, "bot").await;
    let first_run = run_token(&app, &bot).await;
    let (status, created) = propose(&app, &first_run, github_proposal()).await;
    assert_eq!(status, 201, "{created}");
    let path = format!("/v1/proposals/{}", created["id"].as_str().unwrap());
    // The run ends: its token is revoked, as `agent-vault run` does on exit.
    let (status, _) = app
        .call_with(Some(&first_run), "DELETE", "/v1/tokens/self", None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        app.call_with(Some(&first_run), "GET", &path, None).await.0,
        401
    );

    // The next run of the same agent reads the outcome once a human decides.
    let second_run = run_token(&app, &bot).await;
    let (status, polled) = app.call_with(Some(&second_run), "GET", &path, None).await;
    assert_eq!((status, polled["status"].as_str()), (200, Some("pending")));
    app.ok(
        "POST",
        "/v1/vaults/props/proposals/1/reject",
        Some(json!({ "reason": "use the existing key" })),
    )
    .await;
    for token in [&second_run, &bot] {
        let (status, polled) = app.call_with(Some(token), "GET", &path, None).await;
        assert_eq!(status, 200, "{polled}");
        assert_eq!(polled["status"], "rejected");
        assert_eq!(polled["review_note"], "use the existing key");
    }

    // Another agent of the same vault, its runs, and people's `vault token` sessions cannot,
    // and are told who can.
    let other = proxy_agent(&app, "other").await;
    let other_run = run_token(&app, &other).await;
    let (vault_session, _) = app.proxy_token("props").await;
    for token in [&other, &other_run, &vault_session] {
        let (status, refused) = app.call_with(Some(token), "GET", &path, None).await;
        assert_eq!(
            (status, refused["error"].as_str()),
            (403, Some("forbidden"))
        );
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains("was raised by an agent; only that agent")
                && message.contains("members of the vault may read its status"),
            "{message}"
        );
        assert!(
            !message.contains("bot"),
            "the agent is not named: {message}"
        );
    }
}

/// A credential-only proposal file (a member may approve it) in the app's home.
fn key_proposal_file(app: &TestApp) -> std::path::PathBuf {
    let file = app.home.path().join("want-key.yaml");
    std::fs::write(
        &file,
        "message: I need the deploy key\ncredentials:\n  - action: set\n    key: DEPLOY_KEY\n    description: deploys\n",
    )
    .unwrap();
    file
}

#[tokio::test]
async fn proposal_create_wait_returns_the_decision() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let file = key_proposal_file(&app);
    let agent_env = [
        ("AGENT_VAULT_TOKEN", token.as_str()),
        ("AGENT_VAULT_VAULT", "props"),
    ];
    let args = [
        "proposal",
        "create",
        "-f",
        file.to_str().unwrap(),
        "--wait",
        "--timeout",
        "60s",
        "--json",
    ];
    // A human approves while the agent's command waits.
    let approver = async {
        let pending = eventually(Duration::from_secs(30), async || {
            let list = app
                .ok("GET", "/v1/vaults/props/proposals?status=pending", None)
                .await;
            (list.as_array().map(Vec::len) == Some(1)).then_some(list)
        })
        .await
        .expect("the waiting command created its proposal");
        app.ok(
            "POST",
            &format!(
                "/v1/vaults/props/proposals/{}/approve",
                pending[0]["number"]
            ),
            Some(json!({ "values": { "DEPLOY_KEY": "dk_live" } })),
        )
        .await;
    };
    let (waited, ()) = tokio::join!(app.cli_env(&args, None, &agent_env), approver);
    assert_eq!(waited.code, 0, "{waited:?}");
    let decided = waited.json();
    assert_eq!(decided["status"], "applied", "{decided}");
    assert_eq!(decided["number"], 1);
    assert!(
        waited.stderr.contains("/approve/"),
        "the link is shown while waiting: {waited:?}"
    );
    assert!(!waited.stdout.contains("dk_live") && !waited.stderr.contains("dk_live"));

    // A rejection ends the wait too, with the reason and a non-zero exit.
    let rejecter = async {
        eventually(Duration::from_secs(30), async || {
            let (status, _) = app
                .call(
                    "POST",
                    "/v1/vaults/props/proposals/2/reject",
                    Some(json!({ "reason": "ask ops instead" })),
                )
                .await;
            (status == 200).then_some(())
        })
        .await
        .expect("the waiting command created its proposal");
    };
    let text_args = &args[..args.len() - 1];
    let (waited, ()) = tokio::join!(app.cli_env(text_args, None, &agent_env), rejecter);
    assert_eq!(waited.code, 1, "{waited:?}");
    assert!(
        waited
            .stderr
            .contains("proposal #2 was rejected: ask ops instead"),
        "{waited:?}"
    );
}

#[tokio::test]
async fn proposal_create_wait_times_out_with_a_clear_message() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let file = key_proposal_file(&app);
    let waited = app
        .cli_env(
            &[
                "proposal",
                "create",
                "-f",
                file.to_str().unwrap(),
                "--wait",
                "--timeout",
                "1s",
            ],
            None,
            &[
                ("AGENT_VAULT_TOKEN", token.as_str()),
                ("AGENT_VAULT_VAULT", "props"),
            ],
        )
        .await;
    assert_eq!(waited.code, 1, "{waited:?}");
    assert!(
        waited
            .stderr
            .contains("no decision on proposal #1 within 1s: it is still pending"),
        "{waited:?}"
    );
    assert!(
        waited.stderr.contains("agent-vault proposal status "),
        "{waited:?}"
    );
    // The proposal itself is untouched: still pending for a human.
    let shown = app.ok("GET", "/v1/vaults/props/proposals/1", None).await;
    assert_eq!(shown["status"], "pending");
    // --timeout without --wait is a usage error.
    let usage = app
        .cli_env(
            &[
                "proposal",
                "create",
                "-f",
                file.to_str().unwrap(),
                "--timeout",
                "1s",
            ],
            None,
            &[("AGENT_VAULT_TOKEN", token.as_str())],
        )
        .await;
    assert_eq!(usage.code, 2, "{usage:?}");
}

#[tokio::test]
async fn proposals_are_validated_like_direct_edits_and_limited() {
    let app = spawn_app_tweaked(|c| c.proposals.max_pending_per_vault = 2).await;
    let token = setup(&app).await;
    let bad = [
        (json!({}), "at least one"),
        (
            json!({ "services": [{ "action": "set", "host": "api.example.test", "auth": { "type": "bearer", "token": "NOT_THERE" } }] }),
            "NOT_THERE",
        ),
        (
            json!({ "services": [{ "action": "set", "host": "169.254.169.254", "auth": { "type": "passthrough" } }] }),
            "IP",
        ),
        (
            json!({ "services": [{ "action": "set", "host": "x.example.test", "auth": { "type": "oauth" } }] }),
            "oauth",
        ),
        (
            json!({ "credentials": [{ "action": "set", "key": "bad-key" }] }),
            "invalid credential key",
        ),
        (
            json!({ "credentials": [{ "action": "set", "key": "K", "obtain": "file:///etc/passwd" }] }),
            "obtain",
        ),
        (
            json!({ "message": "m".repeat(2001), "credentials": [{ "action": "set", "key": "K" }] }),
            "message",
        ),
        (
            json!({ "credentials": (0..11).map(|i| json!({ "action": "set", "key": format!("K{i}") })).collect::<Vec<_>>() }),
            "at most 10",
        ),
        (
            json!({ "credentials": [{ "action": "delete", "key": "STRIPE_KEY" }] }),
            "STRIPE_KEY",
        ),
        (
            json!({ "vault": "default", "credentials": [{ "action": "set", "key": "K" }] }),
            "",
        ),
    ];
    for (body, needle) in bad {
        let (status, resp) = propose(&app, &token, body.clone()).await;
        assert!(status == 400 || status == 404, "{body}: {status} {resp}");
        assert!(
            resp["message"].as_str().unwrap().contains(needle),
            "{body}: {resp}"
        );
    }
    assert_eq!(
        propose(
            &app,
            &token,
            json!({ "credentials": [{ "action": "set", "key": "A" }] })
        )
        .await
        .0,
        201
    );
    assert_eq!(
        propose(
            &app,
            &token,
            json!({ "credentials": [{ "action": "set", "key": "B" }] })
        )
        .await
        .0,
        201
    );
    let (status, resp) = propose(
        &app,
        &token,
        json!({ "credentials": [{ "action": "set", "key": "C" }] }),
    )
    .await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (429, Some("too_many_pending")),
        "{resp}"
    );
}

#[tokio::test]
async fn approval_roles_states_and_the_next_request() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let (_, created) = propose(&app, &token, github_proposal()).await;
    let n = created["number"].as_i64().unwrap();
    let base = format!("/v1/vaults/props/proposals/{n}");

    // No agent token of any role approves, not even an admin agent.
    let admin_agent = app
        .ok(
            "POST",
            "/v1/agents",
            Some(json!({ "name": "boss", "vaults": [{ "vault": "props", "role": "admin" }] })),
        )
        .await;
    let admin_agent = admin_agent["token"].as_str().unwrap().to_owned();
    for t in [&token, &admin_agent] {
        let (status, body) = app
            .call_with(
                Some(t),
                "POST",
                &format!("{base}/approve"),
                Some(json!({ "values": { "GH_TOKEN": "ghp_x" } })),
            )
            .await;
        assert!(status == 403 || status == 404, "{body}");
    }
    // A member may not approve service changes.
    let inv = app.ok("POST", "/v1/invites", Some(json!({ "email": "mia@example.com", "vaults": [{ "vault": "props", "role": "member" }] }))).await;
    let (_, reg) = app
        .call_anon("POST", "/v1/auth/register", Some(json!({ "email": "mia@example.com", "password": "mia-password", "invite_token": inv["token"] })))
        .await;
    let mia = reg["token"].as_str().unwrap().to_owned();
    let (status, body) = app
        .call_with(
            Some(&mia),
            "POST",
            &format!("{base}/approve"),
            Some(json!({ "values": { "GH_TOKEN": "ghp_x" } })),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("admin"));

    // Missing value, wrong hash: refused, nothing applied.
    let shown = app.ok("GET", &base, None).await;
    assert_eq!(shown["missing_values"], json!(["GH_TOKEN"]));
    assert_eq!(shown["requires_role"], "admin");
    let (status, _) = app
        .call(
            "POST",
            &format!("{base}/approve"),
            Some(json!({ "approval_hash": shown["approval_hash"] })),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .call(
            "POST",
            &format!("{base}/approve"),
            Some(json!({ "values": { "GH_TOKEN": "ghp_new" }, "approval_hash": "0".repeat(64) })),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(app.ok("GET", &base, None).await["status"], "pending");

    // The owner approves; the proxy uses the new credential on the very next request.
    let approved = app.ok("POST", &format!("{base}/approve"), Some(json!({ "values": { "GH_TOKEN": "ghp_new" }, "approval_hash": shown["approval_hash"] }))).await;
    assert_eq!(approved["status"], "applied");
    let agent = app.agent(&token, "props").await;
    fetch(agent.get("https://gh.example.test/user")).await;
    assert_eq!(
        app.upstream.last().header("authorization").as_deref(),
        Some("Bearer ghp_new")
    );
    let (_, polled) = app
        .call_with(
            Some(&token),
            "GET",
            &format!("/v1/proposals/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(polled["status"], "applied");
    assert!(
        !polled.to_string().contains("ghp_new"),
        "values never go back to the agent"
    );

    // Twice, or reject after apply: refused.
    let (status, _) = app
        .call(
            "POST",
            &format!("{base}/approve"),
            Some(json!({ "values": { "GH_TOKEN": "ghp_other" } })),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        app.call(
            "POST",
            &format!("{base}/reject"),
            Some(json!({ "reason": "late" }))
        )
        .await
        .0,
        409
    );
}

#[tokio::test]
async fn agent_supplied_values_are_sealed_and_used_on_approval() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let body = json!({ "credentials": [{ "action": "set", "key": "ANALYTICS_KEY", "value": "agent-found-this-value" }] });
    let (_, created) = propose(&app, &token, body).await;
    let n = created["number"].as_i64().unwrap();
    let shown = app
        .ok("GET", &format!("/v1/vaults/props/proposals/{n}"), None)
        .await;
    assert_eq!(
        shown["requires_role"], "member",
        "credential-only proposals need the member role"
    );
    assert_eq!(shown["missing_values"], json!([]));
    assert!(!shown.to_string().contains("agent-found-this-value"));
    let db = std::fs::read(app.config.data_dir.join("agent-vault.db-wal")).unwrap_or_default();
    assert!(
        !db.windows(22).any(|w| w == b"agent-found-this-value"),
        "the agent's value is sealed at rest"
    );
    app.ok(
        "POST",
        &format!("/v1/vaults/props/proposals/{n}/approve"),
        Some(json!({})),
    )
    .await;
    let v = app
        .ok("GET", "/v1/vaults/props/credentials/ANALYTICS_KEY", None)
        .await;
    assert_eq!(v["value"], "agent-found-this-value");
}

#[tokio::test]
async fn rejection_and_expiry() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let (_, first) = propose(
        &app,
        &token,
        json!({ "credentials": [{ "action": "set", "key": "ONE" }] }),
    )
    .await;
    let (_, second) = propose(
        &app,
        &token,
        json!({ "credentials": [{ "action": "set", "key": "TWO" }] }),
    )
    .await;
    app.ok(
        "POST",
        "/v1/vaults/props/proposals/1/reject",
        Some(json!({ "reason": "not needed" })),
    )
    .await;
    let (_, polled) = app
        .call_with(
            Some(&token),
            "GET",
            &format!("/v1/proposals/{}", first["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        (polled["status"].as_str(), polled["review_note"].as_str()),
        (Some("rejected"), Some("not needed"))
    );
    assert_eq!(
        app.call(
            "POST",
            "/v1/vaults/props/proposals/1/approve",
            Some(json!({ "values": { "ONE": "x" } }))
        )
        .await
        .0,
        409
    );

    // Expiry holds on every read, before the sweep has run...
    let store = app.open_store().await;
    sqlx::query("UPDATE proposals SET expires_at = 1 WHERE id = $1")
        .bind(second["id"].as_str().unwrap())
        .execute(store.pool())
        .await
        .unwrap();
    let shown = app.ok("GET", "/v1/vaults/props/proposals/2", None).await;
    assert_eq!(shown["status"], "expired");
    assert_eq!(
        app.call(
            "POST",
            "/v1/vaults/props/proposals/2/approve",
            Some(json!({ "values": { "TWO": "x" } }))
        )
        .await
        .0,
        409
    );
    // ...and the sweep records it.
    assert_eq!(store.expire_proposals().await.unwrap(), 1);
    let status: String = sqlx::query_scalar("SELECT status FROM proposals WHERE seq = 2")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(status, "expired");
    store.close().await;
    let listed = app
        .ok("GET", "/v1/vaults/props/proposals?status=pending", None)
        .await;
    assert_eq!(listed, json!([]));
}

#[tokio::test]
async fn deny_policy_hint_is_a_ready_to_send_proposal() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    app.set_policy("props", "deny").await;
    // The refusal is an ordinary response inside the intercepted connection, so a real client
    // reads its body.
    let agent = app.agent(&token, "props").await;
    let resp = agent
        .get("https://newapi.example.test/v1/things")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.headers()["x-agent-vault-proxy-error"],
        "forbidden_host"
    );
    let body: Value = resp.json().await.unwrap();
    let mut skeleton = body["hint"]["proposal"].clone();
    // The agent fills in the key name and sends it back as is.
    skeleton["services"][0]["auth"]["token"] = json!("NEWAPI_KEY");
    skeleton["credentials"][0]["key"] = json!("NEWAPI_KEY");
    let (status, created) = propose(&app, &token, skeleton).await;
    assert_eq!(status, 201, "{created}");
}

/// A tiny HTTP server recording JSON POSTs; the first `fail_first` requests get a 500.
async fn webhook_receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<Value>>>) {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (s, count) = (s.clone(), count.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (s, count) = (s.clone(), count.clone());
                    async move {
                        use http_body_util::BodyExt;
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let status = if n < fail_first { 500 } else { 200 };
                        if status == 200 {
                            s.lock()
                                .unwrap()
                                .push(serde_json::from_slice::<Value>(&body).unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(bytes::Bytes::new()))
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
    (format!("http://{addr}/hook"), seen)
}

#[tokio::test]
async fn webhook_gets_the_link_with_retries() {
    let (url, seen) = webhook_receiver(1).await;
    let app = spawn_app_tweaked(move |c| c.proposals.webhook_url = Some(url)).await;
    let token = setup(&app).await;
    let (_, created) = propose(&app, &token, github_proposal()).await;
    let got = eventually(Duration::from_secs(10), async || {
        seen.lock().unwrap().first().cloned()
    })
    .await;
    let event = got.expect("the webhook was called after one failed attempt");
    assert_eq!(event["event"], "proposal.created");
    assert_eq!(event["approval_url"], created["approval_url"]);
    assert_eq!(event["vault"], "props");
}

/// A minimal SMTP server that records DATA payloads.
async fn smtp_receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails = Arc::new(Mutex::new(Vec::new()));
    let m = mails.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let m = m.clone();
            tokio::spawn(async move {
                let (r, mut w) = tcp.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 test ESMTP\r\n").await.unwrap();
                let mut in_data = false;
                let mut data = String::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            m.lock().unwrap().push(std::mem::take(&mut data));
                            w.write_all(b"250 OK\r\n").await.unwrap();
                        } else {
                            data.push_str(&line);
                            data.push('\n');
                        }
                        continue;
                    }
                    let cmd = line.to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                        b"250-test\r\n250 OK\r\n"
                    } else if cmd.starts_with("DATA") {
                        in_data = true;
                        b"354 go\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 OK\r\n"
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, mails)
}

#[tokio::test]
async fn approvers_get_an_email_with_the_link() {
    let (port, mails) = smtp_receiver().await;
    let app = spawn_app_tweaked(move |c| {
        c.smtp.host = Some("127.0.0.1".into());
        c.smtp.port = port;
        c.smtp.security = agent_vault::config::SmtpSecurity::None;
        c.smtp.from = "vault@example.com".into();
    })
    .await;
    let token = setup(&app).await;
    let (_, created) = propose(&app, &token, github_proposal()).await;
    let mail = eventually(Duration::from_secs(10), async || {
        mails.lock().unwrap().first().cloned()
    })
    .await;
    let mail = mail.expect("an email was sent");
    assert!(mail.contains(OWNER_EMAIL), "{mail}");
    let id = created["id"].as_str().unwrap();
    assert!(
        mail.contains(id),
        "the mail carries the approval link: {mail}"
    );
}

/// Mail clients turn URLs in plain text into links, and a click from the approver's browser
/// would carry the page's session cookie to a server the agent runs on another port: the
/// agent's words stay on the approval page, where they are text.
#[tokio::test]
async fn agent_text_with_links_never_reaches_the_approvers_email() {
    let (port, mails) = smtp_receiver().await;
    let app = spawn_app_tweaked(move |c| {
        c.smtp.host = Some("127.0.0.1".into());
        c.smtp.port = port;
        c.smtp.security = agent_vault::config::SmtpSecurity::None;
        c.smtp.from = "vault@example.com".into();
    })
    .await;
    let token = setup(&app).await;
    let mut body = github_proposal();
    body["message"] =
        json!("Urgent: first open http://127.0.0.1:9/steal and www.agent-site.example");
    let (status, created) = propose(&app, &token, body).await;
    assert_eq!(status, 201, "{created}");
    let mail = eventually(Duration::from_secs(10), async || {
        mails.lock().unwrap().first().cloned()
    })
    .await;
    let mail = mail.expect("an email was sent");
    assert!(
        mail.contains(created["id"].as_str().unwrap()),
        "the mail still carries our approval link: {mail}"
    );
    for agent_text in ["127.0.0.1:9", "steal", "agent-site", "Urgent"] {
        assert!(!mail.contains(agent_text), "{agent_text}: {mail}");
    }
}

#[tokio::test]
async fn approval_page_over_http() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let (_, created) = propose(&app, &token, github_proposal()).await;
    let url = created["approval_url"].as_str().unwrap().to_owned();
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // The link shows the proposal and a login form; headers lock the page down.
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("frame-ancestors 'none'")
            && !csp.contains("unsafe-inline")
            && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("GH_TOKEN") && html.contains("gh.example.test") && html.contains("Log in")
    );
    assert!(!html.contains("<script"), "no JavaScript at all");
    // A wrong or missing token shows nothing.
    let bad = url.replace("token=av_appr_", "token=av_appr_x");
    assert_eq!(client.get(&bad).send().await.unwrap().status(), 404);
    assert_eq!(
        fetch(client.get(url.split('?').next().unwrap()))
            .await
            .status(),
        404
    );

    // Log in through the page's form and come back.
    let next = format!(
        "/approve/{}?token={}",
        created["id"].as_str().unwrap(),
        url.split("token=").nth(1).unwrap()
    );
    let origin = app.admin.clone();
    let login = client
        .post(format!("{}/login", app.admin))
        .header("origin", &origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("email", OWNER_EMAIL),
            ("password", OWNER_PASSWORD),
            ("next", &next),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    assert_eq!(login.headers()["location"], next.as_str());
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let page = fetch_text(client.get(&url).header("cookie", &cookie)).await;
    let csrf = attr(&page, "csrf");
    let hash = attr(&page, "hash");

    let post = |body: String, origin: Option<String>| {
        let mut req = client
            .post(url.split('?').next().unwrap())
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let approve_with = |csrf: &str, password: &str| {
        form(&[
            ("action", "approve"),
            ("csrf", csrf),
            ("hash", &hash),
            ("value_GH_TOKEN", "ghp_from_page"),
            ("confirm_password", password),
        ])
    };
    let approve_body = |csrf: &str| approve_with(csrf, OWNER_PASSWORD);
    // The session cookie alone is not enough: approving asks for the password again.
    for (password, status) in [("", 400), ("not-my-password", 401)] {
        let resp = client
            .post(url.split('?').next().unwrap())
            .header("cookie", &cookie)
            .header("origin", &origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(approve_with(&csrf, password))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "password {password:?}");
    }
    // The API never accepts the page's cookie.
    let api = client
        .get(format!("{}/v1/vaults", app.admin))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    // Cross-origin, no origin, or a wrong CSRF token: refused, still pending.
    assert_eq!(
        post(approve_body(&csrf), Some("http://evil.example".into()))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(post(approve_body(&csrf), None).await.unwrap().status(), 403);
    let null_cross_site = client
        .post(url.split('?').next().unwrap())
        .header("cookie", &cookie)
        .header("origin", "null")
        .header("sec-fetch-site", "same-site")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(approve_body(&csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(null_cross_site.status(), 403);
    assert_eq!(
        post(approve_body("00"), Some(origin.clone()))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        app.ok("GET", "/v1/vaults/props/proposals/1", None).await["status"],
        "pending"
    );
    // The real thing, as a browser sends it under Referrer-Policy: no-referrer.
    let done = client
        .post(url.split('?').next().unwrap())
        .header("cookie", &cookie)
        .header("origin", "null")
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(approve_body(&csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let html = done.text().await.unwrap();
    assert!(html.contains("Approved"), "{html}");
    // From now on the page shows the outcome, to the approver and to anyone with the link, and
    // no longer speaks as if the decision were still to be made.
    for page in [
        fetch_text(client.get(&url).header("cookie", &cookie)).await,
        fetch_text(client.get(&url)).await,
    ] {
        assert!(
            page.contains(&format!("id=\"outcome\">Approved by {OWNER_EMAIL} on ")),
            "{page}"
        );
        for stale in [
            "you enter it below",
            ">replace<",
            ">add<",
            "<form method=\"post\" action=\"/approve",
        ] {
            assert!(!page.contains(stale), "{stale}: {page}");
        }
        assert!(page.contains("<td>stored</td>"), "{page}");
    }
    assert_eq!(
        app.ok("GET", "/v1/vaults/props/credentials/GH_TOKEN", None)
            .await["value"],
        "ghp_from_page"
    );
    // Replaying the same form does nothing.
    assert_eq!(
        post(approve_body(&csrf), Some(origin))
            .await
            .unwrap()
            .status(),
        409
    );
}

#[tokio::test]
async fn the_approval_page_shows_a_rejection_or_an_expiry() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let (_, rejected) = propose(&app, &token, github_proposal()).await;
    let (_, expired) = propose(&app, &token, github_proposal()).await;
    app.ok(
        "POST",
        "/v1/vaults/props/proposals/1/reject",
        Some(json!({ "reason": "we use <the> org token" })),
    )
    .await;
    let store = app.open_store().await;
    sqlx::query("UPDATE proposals SET expires_at = 1 WHERE id = $1")
        .bind(expired["id"].as_str().unwrap())
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let http = &app.http;
    let page = |created: &Value| {
        let url = created["approval_url"].as_str().unwrap().to_owned();
        async move { fetch_text(http.get(url)).await }
    };
    let html = page(&rejected).await;
    assert!(
        html.contains(&format!("id=\"outcome\">Rejected by {OWNER_EMAIL} on "))
            && html.contains("Reason: we use &lt;the&gt; org token</p>"),
        "{html}"
    );
    let html = page(&expired).await;
    assert!(
        html.contains("id=\"outcome\">Expired on 1970-01-01T00:00:00Z without a decision; nothing was changed."),
        "{html}"
    );
    for html in [page(&rejected).await, page(&expired).await] {
        assert!(
            !html.contains("you enter it below") && !html.contains("Log in"),
            "{html}"
        );
        assert!(html.contains("<td>not stored</td>"), "{html}");
    }
}

#[tokio::test]
async fn cli_proposal_flow() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let file = app.home.path().join("proposal.yaml");
    std::fs::write(
        &file,
        "message: I need GitHub\nservices:\n  - action: set\n    name: github\n    host: api.example.test\n    auth: {type: bearer, token: GH_TOKEN}\ncredentials:\n  - action: set\n    key: GH_TOKEN\n    description: repo scope\n",
    )
    .unwrap();
    let agent_env = [
        ("AGENT_VAULT_TOKEN", token.as_str()),
        ("AGENT_VAULT_VAULT", "props"),
    ];
    let created = app
        .cli_env(
            &["proposal", "create", "-f", file.to_str().unwrap(), "--json"],
            None,
            &agent_env,
        )
        .await;
    assert_eq!(created.code, 0, "{created:?}");
    let v = created.json();
    assert_eq!(v["status"], "pending");
    assert!(v["approval_url"].as_str().unwrap().contains("/approve/"));
    let id = v["id"].as_str().unwrap().to_owned();
    // An agent cannot approve, even with the CLI.
    let refused = app
        .cli_env(
            &["proposal", "approve", "1", "GH_TOKEN=x", "--vault", "props"],
            None,
            &agent_env,
        )
        .await;
    assert_eq!(refused.code, 1, "{refused:?}");

    app.cli_login().await;
    let list = app
        .cli(
            &[
                "proposal", "list", "--vault", "props", "--status", "pending", "--json",
            ],
            None,
        )
        .await;
    assert_eq!(list.json()[0]["number"], 1);
    let show = app
        .cli(&["proposal", "show", "1", "--vault", "props"], None)
        .await;
    assert!(
        show.stdout.contains("GH_TOKEN") && show.stdout.contains("values needed"),
        "{show:?}"
    );
    let approve = app
        .cli(
            &["proposal", "approve", "1", "GH_TOKEN=-", "--vault", "props"],
            Some("ghp_cli_value\n"),
        )
        .await;
    assert_eq!(approve.code, 0, "{approve:?}");
    let status = app
        .cli_env(&["proposal", "status", &id, "--json"], None, &agent_env)
        .await;
    assert_eq!(status.json()["status"], "applied");
    let v = app
        .ok("GET", "/v1/vaults/props/credentials/GH_TOKEN", None)
        .await;
    assert_eq!(v["value"], "ghp_cli_value");
    let discover = app
        .cli_env(&["vault", "discover", "--json"], None, &agent_env)
        .await;
    assert_eq!(
        discover.json()["credentials"],
        json!(["GH_TOKEN", "STRIPE_KEY"])
    );
}

#[tokio::test]
async fn an_edit_after_review_is_not_overwritten_by_approval() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let (_, _) = propose(&app, &token, github_proposal()).await;
    let shown = app.ok("GET", "/v1/vaults/props/proposals/1", None).await;
    // An admin removes the stripe service after the approver looked at the proposal.
    assert_eq!(
        app.call("DELETE", "/v1/vaults/props/services/stripe", None)
            .await
            .0,
        204
    );
    let (status, body) = app
        .call(
            "POST",
            "/v1/vaults/props/proposals/1/approve",
            Some(json!({ "values": { "GH_TOKEN": "ghp_x" }, "approval_hash": shown["approval_hash"] })),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let services = app.ok("GET", "/v1/vaults/props/services", None).await;
    assert_eq!(services["services"], json!([]), "the removal stands");
    assert_eq!(
        app.ok("GET", "/v1/vaults/props/proposals/1", None).await["status"],
        "pending"
    );
}

#[tokio::test]
async fn concurrent_proposals_never_exceed_the_pending_limit() {
    // Postgres runs writers concurrently (SQLite serialises them): the count must still hold.
    let mut dbs = vec![None];
    if let Some(db) = crate::support::TestDatabase::create().await {
        dbs.push(Some(db));
    }
    for db in dbs {
        let app = spawn_app_with(TestOptions {
            postgres: db.as_ref().map(|d| d.url.clone()),
            tweak: Some(Box::new(|c| c.proposals.max_pending_per_vault = 5)),
            ..Default::default()
        })
        .await;
        let token = setup(&app).await;
        let attempts = (0..16).map(|_| propose(&app, &token, github_proposal()));
        let results = futures_util::future::join_all(attempts).await;
        let created = results.iter().filter(|(s, _)| *s == 201).count();
        let refused = results
            .iter()
            .filter(|(s, b)| *s == 429 && b["error"] == "too_many_pending")
            .count();
        assert_eq!((created, refused), (5, 11), "{results:?}");
        let (_, listed) = app.call("GET", "/v1/vaults/props/proposals", None).await;
        assert_eq!(listed.as_array().map(Vec::len), Some(5), "{listed}");
        app.stop().await;
    }
}

/// An agent proposes a substitution: the approval page says exactly where the value would go,
/// escaped, and a proposal in the old loose form is refused with directions.
#[tokio::test]
async fn approval_page_shows_exact_substitution_places() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let (status, created) = propose(
        &app,
        &token,
        json!({
            "message": "notes need the key",
            "services": [{ "action": "set", "name": "notes", "host": "notes.example.test",
                "auth": { "type": "passthrough" },
                "substitutions": [{ "placeholder": "__NOTES_KEY__", "key": "STRIPE_KEY",
                    "in": [{ "header": "X-Api-Key" }, { "json": "/a<b>", "prefix": "<i>" }] }] }]
        }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let url = created["approval_url"].as_str().unwrap().to_owned();
    let html = crate::support::fetch_text(
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(&url),
    )
    .await;
    assert!(html.contains("header X-Api-Key"), "{html}");
    assert!(
        html.contains("JSON field /a&lt;b&gt; after the text &quot;&lt;i&gt;&quot;"),
        "{html}"
    );
    assert!(!html.contains("<i>"), "agent text is escaped");
    let (status, body) = propose(
        &app,
        &token,
        json!({
            "message": "loose",
            "services": [{ "action": "set", "name": "loose", "host": "notes.example.test",
                "auth": { "type": "passthrough" },
                "substitutions": [{ "placeholder": "__NOTES_KEY__", "key": "STRIPE_KEY", "in": ["header", "body"] }] }]
        }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("{header: X-Api-Key}"),
        "{body}"
    );
}

#[tokio::test]
async fn the_approval_page_and_the_webhook_name_who_raised_the_proposal() {
    let (hook, seen) = webhook_receiver(0).await;
    let app = spawn_app_with(TestOptions {
        tweak: Some(Box::new(move |c| c.proposals.webhook_url = Some(hook))),
        ..Default::default()
    })
    .await;
    let user_run = setup(&app).await;
    let agent = app
        .ok(
            "POST",
            "/v1/agents",
            Some(
                json!({ "name": "release-bot", "vaults": [{ "vault": "props", "role": "proxy" }] }),
            ),
        )
        .await;
    let agent_token = agent["token"].as_str().unwrap().to_owned();
    let agent_id = app
        .call_with(Some(&agent_token), "GET", "/v1/auth/whoami", None)
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, minted) = app
        .call_with(
            Some(&agent_token),
            "POST",
            "/v1/vaults/props/tokens",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    let agent_run = minted["token"].as_str().unwrap().to_owned();
    let user_run_id = app
        .call_with(Some(&user_run), "GET", "/v1/auth/whoami", None)
        .await
        .1["token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut urls = Vec::new();
    let cases = [
        (
            user_run.as_str(),
            format!("an agent run started by {OWNER_EMAIL}"),
        ),
        (agent_token.as_str(), "agent release-bot".to_owned()),
        (agent_run.as_str(), "agent release-bot".to_owned()),
    ];
    for (n, (token, expected)) in cases.iter().enumerate() {
        let body = json!({ "credentials": [{ "action": "set", "key": format!("K{n}") }] });
        let (status, created) = propose(&app, token, body).await;
        assert_eq!(status, 201, "{created}");
        let html =
            crate::support::fetch_text(client.get(created["approval_url"].as_str().unwrap())).await;
        assert!(html.contains(&format!("Raised by {expected} on")), "{html}");
        urls.push(created["approval_url"].as_str().unwrap().to_owned());
        let number = created["number"].as_i64().unwrap();
        let shown = app
            .ok("GET", &format!("/v1/vaults/props/proposals/{number}"), None)
            .await;
        assert_eq!(shown["created_by"]["name"], expected.as_str(), "{shown}");
        let mut event = None;
        for _ in 0..200 {
            event = seen
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["number"] == number)
                .cloned();
            if event.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let event = event.expect("the webhook was called");
        assert_eq!(event["created_by"], expected.as_str(), "{event}");
        // No raw ids: neither the agent's nor a token's.
        for text in [html, event.to_string()] {
            assert!(!text.contains(&agent_id), "{text}");
            assert!(!text.contains(&user_run_id), "{text}");
            assert!(!text.contains("scoped "), "{text}");
        }
    }
    // Once the run token is gone (expired tokens are purged), the page says so, still without
    // an id.
    let store = agent_vault::store::Store::open(&app.config.data_dir, None)
        .await
        .unwrap();
    sqlx::query("DELETE FROM tokens WHERE id = $1")
        .bind(&user_run_id)
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let html = crate::support::fetch_text(client.get(&urls[0])).await;
    assert!(
        html.contains("Raised by an agent run whose token has since expired or been removed on"),
        "{html}"
    );
    assert!(!html.contains(&user_run_id), "{html}");
}

#[tokio::test]
async fn proposals_are_shown_approved_and_rejected_by_id_or_number() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let mut ids = Vec::new();
    for key in ["BY_ID", "BY_NUMBER", "TO_REJECT"] {
        let body = json!({ "credentials": [{ "action": "set", "key": key, "instructions": format!("ask ops for {key}") }] });
        let (status, created) = propose(&app, &token, body).await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    app.cli_login().await;
    // `show` by id: the same proposal as by number, with the instructions under their name.
    let by_id = app
        .cli(
            &["proposal", "show", &ids[0], "--vault", "props", "--json"],
            None,
        )
        .await;
    assert_eq!(by_id.code, 0, "{by_id:?}");
    let by_number = app
        .cli(
            &["proposal", "show", "1", "--vault", "props", "--json"],
            None,
        )
        .await;
    assert_eq!(by_id.json(), by_number.json());
    assert_eq!(
        by_id.json()["credentials"][0]["obtain_instructions"],
        "ask ops for BY_ID"
    );
    let text = app
        .cli(&["proposal", "show", &ids[0], "--vault", "props"], None)
        .await;
    assert!(text.stdout.contains("ask ops for BY_ID"), "{text:?}");
    assert!(text.stdout.contains("raised by"), "{text:?}");
    // `approve` and `reject` by id.
    let approve = app
        .cli(
            &[
                "proposal", "approve", &ids[0], "BY_ID=-", "--vault", "props",
            ],
            Some("v-by-id\n"),
        )
        .await;
    assert_eq!(approve.code, 0, "{approve:?}");
    assert!(approve.stdout.contains("#1"), "{approve:?}");
    let reject = app
        .cli(
            &[
                "proposal", "reject", &ids[2], "--reason", "no", "--vault", "props", "--json",
            ],
            None,
        )
        .await;
    assert_eq!(reject.code, 0, "{reject:?}");
    assert_eq!(reject.json()["number"], 3);
    assert_eq!(
        app.ok("GET", "/v1/vaults/props/credentials/BY_ID", None)
            .await["value"],
        "v-by-id"
    );
    let list = app.ok("GET", "/v1/vaults/props/proposals", None).await;
    let status_of = |n: i64| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["number"] == n)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(
        (status_of(1), status_of(2), status_of(3)),
        (json!("applied"), json!("pending"), json!("rejected"))
    );
    // An id from another vault, or one that does not exist, is not found there.
    app.create_vault("elsewhere").await;
    for (vault, which) in [
        ("elsewhere", ids[1].as_str()),
        ("props", "0123456789abcdef0123456789abcdef"),
    ] {
        let missing = app
            .cli(&["proposal", "show", which, "--vault", vault], None)
            .await;
        assert_eq!(missing.code, 1, "{missing:?}");
        assert!(missing.stderr.contains("404"), "{missing:?}");
    }
}

// Typed slots and rotation (issue 18): the page's per-type inputs, sealed agent metadata, and
// `action: rotate`, on SQLite and on Postgres when a test database is configured.

async fn backends() -> Vec<Option<crate::support::TestDatabase>> {
    let mut out = vec![None];
    if let Some(db) = crate::support::TestDatabase::create().await {
        out.push(Some(db));
    }
    out
}

async fn app_on(db: &Option<crate::support::TestDatabase>) -> TestApp {
    spawn_app_with(TestOptions {
        postgres: db.as_ref().map(|d| d.url.clone()),
        ..Default::default()
    })
    .await
}

/// The owner, logged in to the approval page of one proposal.
struct ApprovalPage {
    client: reqwest::Client,
    url: String,
    cookie: String,
    origin: String,
}

impl ApprovalPage {
    /// Logs the owner in through the page's login form, as a browser following the link does.
    async fn open(app: &TestApp, approval_url: &str) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let next = approval_url
            .trim_start_matches(app.admin.as_str())
            .to_owned();
        let login = client
            .post(format!("{}/login", app.admin))
            .header("origin", &app.admin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("email", OWNER_EMAIL),
                ("password", OWNER_PASSWORD),
                ("next", &next),
            ]))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 303);
        let cookie = login.headers()["set-cookie"].to_str().unwrap();
        Self {
            cookie: cookie.split(';').next().unwrap().to_owned(),
            client,
            url: approval_url.to_owned(),
            origin: app.admin.clone(),
        }
    }

    async fn html(&self) -> String {
        fetch_text(self.client.get(&self.url).header("cookie", &self.cookie)).await
    }

    /// Posts the approve form with the page's CSRF token and hash, the owner's password, and
    /// `fields`; returns the status and the page shown after it.
    async fn approve(&self, fields: &[(&str, &str)]) -> (u16, String) {
        let page = self.html().await;
        let (csrf, hash) = (attr(&page, "csrf"), attr(&page, "hash"));
        let mut pairs = vec![
            ("action", "approve"),
            ("csrf", csrf.as_str()),
            ("hash", hash.as_str()),
            ("confirm_password", OWNER_PASSWORD),
        ];
        pairs.extend_from_slice(fields);
        let resp = self
            .client
            .post(self.url.split('?').next().unwrap())
            .header("cookie", &self.cookie)
            .header("origin", &self.origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&pairs))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

/// The credential `key` of vault `vault` as the list shows it (`null` when absent).
async fn listed(app: &TestApp, vault: &str, key: &str) -> Value {
    let all = app
        .ok("GET", &format!("/v1/vaults/{vault}/credentials"), None)
        .await;
    all.as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == key)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn versions(app: &TestApp, vault: &str, key: &str) -> Vec<(i64, String)> {
    let v = app
        .ok(
            "GET",
            &format!("/v1/vaults/{vault}/credentials/{key}/versions"),
            None,
        )
        .await;
    let mut out: Vec<(i64, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn status_of(app: &TestApp, vault: &str, n: i64) -> Value {
    app.ok("GET", &format!("/v1/vaults/{vault}/proposals/{n}"), None)
        .await["status"]
        .clone()
}

#[tokio::test]
async fn a_password_slot_approved_on_the_page_with_a_username_is_basic_auth() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let (status, created) = propose(
        &app,
        &token,
        json!({
            "message": "the billing database",
            "services": [{ "action": "set", "name": "db", "host": "basic.example.test", "auth": { "type": "basic", "password": "DB_PASSWORD" } }],
            "credentials": [{ "action": "set", "key": "DB_PASSWORD", "type": "password", "metadata": { "team": "billing-<b>ops</b>" } }]
        }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let shown = app.ok("GET", "/v1/vaults/props/proposals/1", None).await;
    assert_eq!(shown["credentials"][0]["type"], "password");
    assert_eq!(shown["credentials"][0]["has_metadata"], true);
    assert!(
        !shown.to_string().contains("billing-"),
        "metadata values stay out of the content: {shown}"
    );
    let page = ApprovalPage::open(&app, created["approval_url"].as_str().unwrap()).await;
    let html = page.html().await;
    assert!(html.contains("name=\"username_DB_PASSWORD\""), "{html}");
    assert!(
        html.contains("type=\"password\" id=\"value_DB_PASSWORD\""),
        "{html}"
    );
    assert!(
        html.contains("billing-&lt;b&gt;ops&lt;/b&gt;") && !html.contains("<b>ops"),
        "agent metadata is shown escaped: {html}"
    );

    let (status, html) = page
        .approve(&[
            ("username_DB_PASSWORD", "alice"),
            ("value_DB_PASSWORD", "pw-789"),
        ])
        .await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Approved"), "{html}");
    let c = listed(&app, "props", "DB_PASSWORD").await;
    assert_eq!(c["type"], "password");
    assert_eq!(
        c["metadata"],
        json!({ "username": "alice", "team": "billing-<b>ops</b>" })
    );
    let agent = app.agent(&token, "props").await;
    assert_eq!(
        fetch(agent.get("https://basic.example.test/echo"))
            .await
            .status(),
        200
    );
    use base64::Engine;
    let want = base64::engine::general_purpose::STANDARD.encode("alice:pw-789");
    assert_eq!(
        app.upstream.last().header("authorization"),
        Some(format!("Basic {want}"))
    );
}

#[tokio::test]
async fn a_certificate_slot_is_approved_with_pem_text_areas() {
    let app = spawn_app().await;
    let token = setup(&app).await;
    let clients = crate::support::pki::TestCa::new("proposal client CA");
    let parts = |cn: &str| {
        let v: Value = serde_json::from_str(&clients.client_identity(cn)).unwrap();
        (
            v["certificate"].as_str().unwrap().to_owned(),
            v["private_key"].as_str().unwrap().to_owned(),
        )
    };
    let (chain, key) = parts("proposal-client");
    let (_, other_key) = parts("someone-else");
    let (_, created) = propose(
        &app,
        &token,
        json!({ "credentials": [{ "action": "set", "key": "CLIENT_CERT", "type": "certificate", "description": "bank mTLS" }] }),
    )
    .await;
    let n = created["number"].as_i64().unwrap();
    let page = ApprovalPage::open(&app, created["approval_url"].as_str().unwrap()).await;
    let html = page.html().await;
    assert!(
        html.contains("<textarea id=\"cert_CLIENT_CERT\"")
            && html.contains("<textarea id=\"privkey_CLIENT_CERT\""),
        "{html}"
    );

    // A key that does not match the leaf: refused naming the part, nothing stored.
    let (status, html) = page
        .approve(&[
            ("cert_CLIENT_CERT", &chain),
            ("privkey_CLIENT_CERT", &other_key),
        ])
        .await;
    assert_eq!(status, 400, "{html}");
    assert!(html.contains("CLIENT_CERT: private_key"), "{html}");
    assert!(!html.contains("PRIVATE KEY-----\n"), "no PEM echoed back");
    assert_eq!(status_of(&app, "props", n).await, "pending");
    assert_eq!(listed(&app, "props", "CLIENT_CERT").await, Value::Null);

    let (status, html) = page
        .approve(&[("cert_CLIENT_CERT", &chain), ("privkey_CLIENT_CERT", &key)])
        .await;
    assert_eq!(status, 200, "{html}");
    let c = listed(&app, "props", "CLIENT_CERT").await;
    assert_eq!(c["type"], "certificate");
    assert_eq!(c["description"], "bank mTLS");
    assert!(
        c["metadata"]["subject"]
            .as_str()
            .unwrap()
            .contains("proposal-client"),
        "{c}"
    );
    assert!(c["expires_at"].as_i64().is_some(), "{c}");
}

#[tokio::test]
async fn an_approved_rotation_makes_a_new_active_version_the_proxy_uses() {
    for db in backends().await {
        let app = app_on(&db).await;
        let token = setup(&app).await;
        let agent = app.agent(&token, "props").await;
        let (status, created) = propose(
            &app,
            &token,
            json!({ "message": "the old key leaked", "credentials": [{ "action": "rotate", "key": "STRIPE_KEY" }] }),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let shown = app.ok("GET", "/v1/vaults/props/proposals/1", None).await;
        assert_eq!(shown["credentials"][0]["action"], "rotate");
        assert_eq!(shown["credentials"][0]["type"], "api_key");
        assert_eq!(shown["missing_values"], json!(["STRIPE_KEY"]));
        let page = ApprovalPage::open(&app, created["approval_url"].as_str().unwrap()).await;
        let html = page.html().await;
        assert!(html.contains("STRIPE_KEY will be rotated"), "{html}");
        let (status, html) = page.approve(&[("value_STRIPE_KEY", "sk_rotated")]).await;
        assert_eq!(status, 200, "{html}");
        assert_eq!(
            versions(&app, "props", "STRIPE_KEY").await,
            vec![(1, "rotated".to_owned()), (2, "active".to_owned())]
        );
        fetch(agent.get("https://api.example.test/v1/charges")).await;
        assert_eq!(
            app.upstream.last().header("authorization").as_deref(),
            Some("Bearer sk_rotated")
        );

        // An agent-supplied value with metadata, approved through the API.
        let (_, created) = propose(
            &app,
            &token,
            json!({ "credentials": [{ "action": "rotate", "key": "STRIPE_KEY", "value": "sk_from_agent", "metadata": { "rotated_for": "incident-7" } }] }),
        )
        .await;
        let n = created["number"].as_i64().unwrap();
        app.ok(
            "POST",
            &format!("/v1/vaults/props/proposals/{n}/approve"),
            Some(json!({})),
        )
        .await;
        assert_eq!(versions(&app, "props", "STRIPE_KEY").await.len(), 3);
        let c = listed(&app, "props", "STRIPE_KEY").await;
        assert_eq!(c["version"], 3);
        assert_eq!(c["metadata"], json!({ "rotated_for": "incident-7" }));
        fetch(agent.get("https://api.example.test/v1/charges")).await;
        assert_eq!(
            app.upstream.last().header("authorization").as_deref(),
            Some("Bearer sk_from_agent")
        );
    }
}

#[tokio::test]
async fn bad_typed_or_rotating_proposals_are_refused_and_nothing_is_written() {
    for db in backends().await {
        let app = app_on(&db).await;
        let token = setup(&app).await;
        app.ok(
            "PUT",
            "/v1/vaults/props/credentials",
            Some(json!({ "credentials": { "OLD_KEY": "sk_old" } })),
        )
        .await;
        app.ok(
            "POST",
            "/v1/vaults/props/credentials/OLD_KEY/revoke",
            Some(json!({ "reason": "leaked" })),
        )
        .await;
        let refused = [
            (
                json!({ "action": "rotate", "key": "MISSING" }),
                "MISSING cannot be rotated: it does not exist",
            ),
            (
                json!({ "action": "rotate", "key": "OLD_KEY" }),
                "OLD_KEY is revoked; it cannot be rotated",
            ),
            (
                json!({ "action": "set", "key": "NEW", "type": "pgp_key" }),
                "credential NEW: type: unknown credential type",
            ),
            (
                json!({ "action": "set", "key": "STRIPE_KEY", "type": "password" }),
                "STRIPE_KEY is of type api_key; this proposal gives it type password",
            ),
            (
                json!({ "action": "set", "key": "NEW", "metadata": { "Not OK": "x" } }),
                "credential NEW: metadata key",
            ),
        ];
        for (slot, needle) in refused {
            let (status, body) = propose(&app, &token, json!({ "credentials": [slot] })).await;
            assert_eq!(status, 400, "{slot}: {body}");
            assert_eq!(body["error"], "invalid_proposal", "{body}");
            assert!(
                body["message"].as_str().unwrap().contains(needle),
                "{slot}: {body}"
            );
        }
        // A service that would send a certificate as a bearer token is refused at creation.
        let (status, body) = propose(
            &app,
            &token,
            json!({
                "services": [{ "action": "set", "name": "x", "host": "x.example.test", "auth": { "type": "bearer", "token": "CERT" } }],
                "credentials": [{ "action": "set", "key": "CERT", "type": "certificate" }]
            }),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "incompatible_credential", "{body}");
        let listed_proposals = app.ok("GET", "/v1/vaults/props/proposals", None).await;
        assert_eq!(
            listed_proposals.as_array().unwrap().len(),
            0,
            "{listed_proposals}"
        );

        // A value that fails its slot's type at approval: refused naming the field, nothing
        // written, the proposal still pending.
        let (_, created) = propose(
            &app,
            &token,
            json!({ "credentials": [
                { "action": "set", "key": "DEPLOY_KEY", "type": "ssh_key" },
                { "action": "rotate", "key": "STRIPE_KEY" }
            ] }),
        )
        .await;
        let n = created["number"].as_i64().unwrap();
        let approve = format!("/v1/vaults/props/proposals/{n}/approve");
        let (status, body) = app
            .call(
                "POST",
                &approve,
                Some(json!({ "values": { "DEPLOY_KEY": "not an ssh key", "STRIPE_KEY": "sk_next" } })),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_credential", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("DEPLOY_KEY: "),
            "{body}"
        );
        assert!(!body.to_string().contains("not an ssh key"), "{body}");
        let (status, body) = app
            .call(
                "POST",
                &approve,
                Some(json!({ "values": { "DEPLOY_KEY": "x", "STRIPE_KEY": "sk_next" }, "metadata": { "STRIPE_KEY": { "BAD": "y" } } })),
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_credential")),
            "{body}"
        );
        assert_eq!(status_of(&app, "props", n).await, "pending");
        assert_eq!(listed(&app, "props", "DEPLOY_KEY").await, Value::Null);
        assert_eq!(versions(&app, "props", "STRIPE_KEY").await.len(), 1);

        // Revoked since it was raised: the rotation no longer applies; nothing written.
        let (_, created) = propose(
            &app,
            &token,
            json!({ "credentials": [{ "action": "rotate", "key": "STRIPE_KEY", "value": "sk_late" }] }),
        )
        .await;
        let n = created["number"].as_i64().unwrap();
        app.ok(
            "POST",
            "/v1/vaults/props/credentials/STRIPE_KEY/revoke",
            Some(json!({})),
        )
        .await;
        let (status, body) = app
            .call(
                "POST",
                &format!("/v1/vaults/props/proposals/{n}/approve"),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 409, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("no longer applies"),
            "{body}"
        );
        assert_eq!(status_of(&app, "props", n).await, "pending");
        assert_eq!(
            versions(&app, "props", "STRIPE_KEY").await,
            vec![(1, "revoked".to_owned())]
        );
    }
}
