//! Attacks on the lifetime of authority rows by someone who can write the database but does not
//! know the master password: bringing a revoked token back, extending one, moving one to another
//! agent or vault or detaching it from the token that minted it, re-opening an invitation,
//! taking another agent's name. Each fails closed, is recorded once as an `integrity.failure`
//! audit event however often the row is hit, and is logged as an INTEGRITY ALARM naming only the
//! table and row. Rows bound before their MACs covered their lifetime are re-bound at the first
//! start after the upgrade. Each runs on SQLite and, when AGENT_VAULT_TEST_DATABASE_URL is set,
//! on Postgres.

use serde_json::{Value, json};

use crate::support::agent::{self, basic};
use crate::support::process::ServerProcess;
use crate::support::tamper::{
    agent_id, integrity_events, integrity_events_for, on_each_backend, sql, sql_strings,
};
use crate::support::{
    MASTER_PASSWORD, OWNER_EMAIL, TestApp, TestDatabase, TestOptions, spawn_app_with,
};

/// The proxy's answer to a CONNECT with this token for `vault`: 200 or the refusal's status.
async fn connect_status(app: &TestApp, token: &str, vault: &str) -> u16 {
    match agent::connect(
        app.proxy,
        "api.example.test:443",
        Some(&basic(token, vault)),
    )
    .await
    {
        Ok(_) => 200,
        Err((status, _)) => status,
    }
}

async fn whoami(app: &TestApp, token: &str) -> (u16, Value) {
    app.call_with(Some(token), "GET", "/v1/auth/whoami", None)
        .await
}

/// Creates an agent with `role` in `vault`; its token.
async fn new_agent(app: &TestApp, name: &str, vault: &str, role: &str) -> String {
    let created = app
        .ok(
            "POST",
            "/v1/agents",
            Some(json!({ "name": name, "vaults": [{ "vault": vault, "role": role }] })),
        )
        .await;
    created["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_revoked_token_brought_back_in_the_database_stays_revoked() {
    on_each_backend(|app, backend| async move {
        let scoped = app.stripe_vault("back", "sk_back_secret_value").await;
        let scoped_id = sql_strings(&app, "SELECT id FROM tokens WHERE kind = 'scoped'", &[])
            .await
            .remove(0);
        let old_agent = new_agent(&app, "back-bot", "back", "proxy").await;
        // Rotation revokes the agent's first token; DELETE revokes the scoped one.
        app.ok("POST", "/v1/agents/back-bot/rotate", Some(json!({})))
            .await;
        assert_eq!(
            app.call("DELETE", &format!("/v1/tokens/{scoped_id}"), None)
                .await
                .0,
            204
        );
        assert_eq!(whoami(&app, &old_agent).await.0, 401, "{backend}");
        assert_eq!(
            connect_status(&app, &scoped, "back").await,
            407,
            "{backend}"
        );
        let changed = sql(
            &app,
            "UPDATE tokens SET revoked_at = NULL WHERE revoked_at IS NOT NULL",
            &[],
        )
        .await;
        assert_eq!(changed, 2, "{backend}");
        app.proxy_state.identity.invalidate_all();
        assert_eq!(whoami(&app, &old_agent).await.0, 401, "{backend}");
        assert_eq!(
            connect_status(&app, &scoped, "back").await,
            407,
            "{backend}"
        );
        assert_eq!(
            app.upstream.count(),
            0,
            "{backend}: nothing reached the upstream"
        );
        let events = integrity_events_for(&app, &format!("tokens/{scoped_id}")).await;
        let (_, detail, vault) = &events[0];
        assert!(
            vault.is_some(),
            "{backend}: a scoped token's event is its vault's"
        );
        assert!(
            !detail.contains("sk_back_secret_value"),
            "{backend}: {detail}"
        );
        // The vault's admins see it in the vault's audit trail.
        let audit = app.ok("GET", "/v1/vaults/back/audit", None).await;
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == "integrity.failure"
                    && e["target"] == format!("tokens/{scoped_id}")),
            "{backend}: {audit}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_token_expiry_extended_in_the_database_ends_the_token() {
    on_each_backend(|app, backend| async move {
        app.create_vault("long").await;
        let (scoped, scoped_id) = app.proxy_token("long").await;
        let session_id = whoami(&app, &app.owner_token.clone()).await.1["token_id"]
            .as_str()
            .map(str::to_owned);
        assert_eq!(
            connect_status(&app, &scoped, "long").await,
            200,
            "{backend}"
        );
        // A year more for the scoped token.
        sql(
            &app,
            "UPDATE tokens SET expires_at = expires_at + 31536000000 WHERE id = $1",
            &[&scoped_id],
        )
        .await;
        app.proxy_state.identity.invalidate_all();
        assert_eq!(
            connect_status(&app, &scoped, "long").await,
            407,
            "{backend}"
        );
        assert_eq!(
            app.call_with(Some(&scoped), "GET", "/v1/discover", None)
                .await
                .0,
            401,
            "{backend}"
        );
        integrity_events_for(&app, &format!("tokens/{scoped_id}")).await;
        // A login session that never expires instead of in a while.
        let owner_sessions = sql(
            &app,
            "UPDATE tokens SET expires_at = NULL WHERE kind = 'session'",
            &[],
        )
        .await;
        assert!(owner_sessions >= 1, "{backend}");
        assert_eq!(
            app.call("GET", "/v1/vaults", None).await.0,
            401,
            "{backend}"
        );
        if let Some(id) = session_id {
            integrity_events_for(&app, &format!("tokens/{id}")).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_token_moved_to_another_agent_or_vault_is_refused() {
    on_each_backend(|app, backend| async move {
        app.create_vault("mine").await;
        app.create_vault("theirs").await;
        app.set_credentials("theirs", &[("SECRET", "sk_theirs_secret")])
            .await;
        let low = new_agent(&app, "low", "mine", "proxy").await;
        new_agent(&app, "high", "theirs", "admin").await;
        let (low_id, high_id) = (agent_id(&app, "low").await, agent_id(&app, "high").await);
        // The low agent's token now says it is the high agent's.
        sql(
            &app,
            "UPDATE tokens SET agent_id = $1 WHERE agent_id = $2 AND kind = 'agent'",
            &[&high_id, &low_id],
        )
        .await;
        let (status, body) = app
            .call_with(
                Some(&low),
                "GET",
                "/v1/vaults/theirs/credentials?reveal=true",
                None,
            )
            .await;
        assert_eq!(status, 401, "{backend}: {body}");
        assert!(!body.to_string().contains("sk_theirs_secret"));
        assert_eq!(connect_status(&app, &low, "theirs").await, 407, "{backend}");

        // A scoped token for one vault moved to another.
        let (scoped, scoped_id) = app.proxy_token("mine").await;
        let theirs = sql_strings(&app, "SELECT id FROM vaults WHERE name = 'theirs'", &[])
            .await
            .remove(0);
        sql(
            &app,
            "UPDATE tokens SET vault_id = $1 WHERE id = $2",
            &[&theirs, &scoped_id],
        )
        .await;
        app.proxy_state.identity.invalidate_all();
        assert_eq!(
            connect_status(&app, &scoped, "theirs").await,
            407,
            "{backend}"
        );
        assert_eq!(
            connect_status(&app, &scoped, "mine").await,
            407,
            "{backend}"
        );
        let events = integrity_events_for(&app, &format!("tokens/{scoped_id}")).await;
        assert_eq!(events[0].2.as_deref(), Some(theirs.as_str()), "{backend}");
    })
    .await;
}

#[tokio::test]
async fn revoking_a_token_revokes_what_it_minted_and_the_link_is_bound() {
    on_each_backend(|app, backend| async move {
        app.create_vault("kin").await;
        // A member's session mints a scoped token; logging out ends both.
        let login = app
            .call_anon(
                "POST",
                "/v1/auth/login",
                Some(json!({ "email": OWNER_EMAIL, "password": crate::support::OWNER_PASSWORD })),
            )
            .await
            .1;
        let session = login["token"].as_str().unwrap().to_owned();
        let (status, minted) = app
            .call_with(
                Some(&session),
                "POST",
                "/v1/vaults/kin/tokens",
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {minted}");
        let child = minted["token"].as_str().unwrap().to_owned();
        assert_eq!(connect_status(&app, &child, "kin").await, 200, "{backend}");
        assert_eq!(
            app.call_with(Some(&session), "POST", "/v1/auth/logout", None)
                .await
                .0,
            204,
            "{backend}"
        );
        app.proxy_state.identity.invalidate_all();
        assert_eq!(
            connect_status(&app, &child, "kin").await,
            407,
            "{backend}: a token ends with the session that minted it"
        );

        // An agent's scoped token: its parent link is bound, so detaching it (to survive the
        // agent's revocation) ends it.
        let agent_token = new_agent(&app, "parent-bot", "kin", "proxy").await;
        let (status, minted) = app
            .call_with(
                Some(&agent_token),
                "POST",
                "/v1/vaults/kin/tokens",
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {minted}");
        let (child, child_id) = (
            minted["token"].as_str().unwrap().to_owned(),
            minted["id"].as_str().unwrap().to_owned(),
        );
        assert_eq!(connect_status(&app, &child, "kin").await, 200, "{backend}");
        sql(
            &app,
            "UPDATE tokens SET parent_id = NULL WHERE id = $1",
            &[&child_id],
        )
        .await;
        app.proxy_state.identity.invalidate_all();
        assert_eq!(connect_status(&app, &child, "kin").await, 407, "{backend}");
        integrity_events_for(&app, &format!("tokens/{child_id}")).await;
        // And the store cascades through the column: the agent's revocation takes a fresh child.
        let (_, minted) = app
            .call_with(
                Some(&agent_token),
                "POST",
                "/v1/vaults/kin/tokens",
                Some(json!({})),
            )
            .await;
        let child = minted["token"].as_str().unwrap().to_owned();
        let parent = sql_strings(
            &app,
            "SELECT parent_id FROM tokens WHERE id = $1",
            &[minted["id"].as_str().unwrap()],
        )
        .await;
        let agent_token_id = whoami(&app, &agent_token).await.1["token_id"].clone();
        assert_eq!(json!(parent[0]), agent_token_id, "{backend}");
        assert_eq!(
            app.call_with(
                Some(&agent_token),
                "DELETE",
                &format!("/v1/tokens/{}", agent_token_id.as_str().unwrap()),
                None
            )
            .await
            .0,
            204,
            "{backend}"
        );
        app.proxy_state.identity.invalidate_all();
        assert_eq!(connect_status(&app, &child, "kin").await, 407, "{backend}");
    })
    .await;
}

#[tokio::test]
async fn an_invitation_reopened_or_extended_in_the_database_is_refused() {
    on_each_backend(|app, backend| async move {
        let register = async |email: &str, token: &Value| {
            app.call_anon(
                "POST",
                "/v1/auth/register",
                Some(json!({ "email": email, "password": "invited-password-1", "invite_token": token })),
            )
            .await
        };
        let invite = async |email: &str| {
            app.ok(
                "POST",
                "/v1/invites",
                Some(json!({ "email": email, "vaults": [{ "vault": "default", "role": "admin" }] })),
            )
            .await
        };
        // Revoked, then un-revoked by the writer.
        let revoked = invite("revoked@example.com").await;
        let id = revoked["id"].as_str().unwrap().to_owned();
        assert_eq!(app.call("DELETE", &format!("/v1/invites/{id}"), None).await.0, 204);
        sql(&app, "UPDATE invites SET revoked_at = NULL WHERE id = $1", &[&id]).await;
        let (status, body) = register("revoked@example.com", &revoked["token"]).await;
        assert_eq!(status, 403, "{backend}: {body}");
        integrity_events_for(&app, &format!("invites/{id}")).await;

        // Extended by a year.
        let extended = invite("extended@example.com").await;
        let id = extended["id"].as_str().unwrap().to_owned();
        sql(
            &app,
            "UPDATE invites SET expires_at = expires_at + 31536000000 WHERE id = $1",
            &[&id],
        )
        .await;
        let (status, body) = register("extended@example.com", &extended["token"]).await;
        assert_eq!(status, 403, "{backend}: {body}");
        integrity_events_for(&app, &format!("invites/{id}")).await;

        // Accepted, then re-opened for a second account under another address.
        let used = invite("used@example.com").await;
        let id = used["id"].as_str().unwrap().to_owned();
        assert_eq!(register("used@example.com", &used["token"]).await.0, 201);
        sql(
            &app,
            "UPDATE invites SET accepted_at = NULL, email = 'second@example.com' WHERE id = $1",
            &[&id],
        )
        .await;
        let (status, body) = register("second@example.com", &used["token"]).await;
        assert_eq!(status, 403, "{backend}: {body}");
        sql(&app, "UPDATE invites SET email = 'used@example.com' WHERE id = $1", &[&id]).await;
        let (status, body) = register("used@example.com", &used["token"]).await;
        assert!(matches!(status, 403 | 409), "{backend}: {status} {body}");
        let users = app.ok("GET", "/v1/users", None).await;
        assert_eq!(users.as_array().unwrap().len(), 2, "{backend}: {users}");
        let invites = app.ok("GET", "/v1/invites", None).await;
        let statuses: Vec<&str> = invites
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            statuses,
            ["integrity_error"; 3],
            "{backend}: each edited invitation is shown for what it is"
        );
    })
    .await;
}

#[tokio::test]
async fn an_agent_renamed_to_take_anothers_name_is_refused() {
    on_each_backend(|app, backend| async move {
        app.create_vault("names").await;
        app.set_credentials("names", &[("SECRET", "sk_names_secret")])
            .await;
        new_agent(&app, "deployer", "names", "admin").await;
        let intruder = new_agent(&app, "intruder", "default", "proxy").await;
        let intruder_id = agent_id(&app, "intruder").await;
        // The deployer steps aside and the intruder's row takes its name.
        sql(
            &app,
            "UPDATE agents SET name = 'old-deployer' WHERE name = 'deployer'",
            &[],
        )
        .await;
        sql(
            &app,
            "UPDATE agents SET name = 'deployer' WHERE name = 'intruder'",
            &[],
        )
        .await;
        assert_eq!(whoami(&app, &intruder).await.0, 401, "{backend}");
        let (status, body) = app
            .call_with(
                Some(&intruder),
                "GET",
                "/v1/vaults/names/credentials?reveal=true",
                None,
            )
            .await;
        assert_eq!(status, 401, "{backend}: {body}");
        // An owner rotating "deployer" would hand a token to the intruder's row: refused.
        let (status, body) = app
            .call("POST", "/v1/agents/deployer/rotate", Some(json!({})))
            .await;
        assert!(!(200..300).contains(&status), "{backend}: {status} {body}");
        assert!(body.get("token").is_none(), "{backend}: {body}");
        integrity_events_for(&app, &format!("agents/{intruder_id}")).await;
    })
    .await;
}

#[tokio::test]
async fn a_tampered_row_hit_by_every_request_is_audited_once() {
    on_each_backend(|app, backend| async move {
        app.create_vault("flood").await;
        let bot = new_agent(&app, "flood-bot", "flood", "proxy").await;
        let bot_id = agent_id(&app, "flood-bot").await;
        sql(
            &app,
            "UPDATE vault_grants SET role = 'admin' WHERE principal_id = $1",
            &[&bot_id],
        )
        .await;
        for _ in 0..25 {
            assert_eq!(
                app.call_with(Some(&bot), "GET", "/v1/vaults/flood/credentials", None)
                    .await
                    .0,
                404,
                "{backend}: the edited grant is no grant"
            );
        }
        let vault = sql_strings(&app, "SELECT id FROM vaults WHERE name = 'flood'", &[])
            .await
            .remove(0);
        let target = format!("vault_grants/{vault}/agent/{bot_id}");
        let events = integrity_events_for(&app, &target).await;
        // Anything still in flight would have been written by now: the agent's next request
        // waits on the same database.
        whoami(&app, &bot).await;
        let all: Vec<_> = integrity_events(&app)
            .await
            .into_iter()
            .filter(|(t, _, _)| *t == target)
            .collect();
        assert_eq!(
            all.len(),
            1,
            "{backend}: one event per row per window: {all:?}"
        );
        assert_eq!(events[0].2.as_deref(), Some(vault.as_str()), "{backend}");
    })
    .await;
}

/// The alarm as an operator's log collector sees it: the table and the row, never the token, the
/// password or the hash that was planted.
#[tokio::test]
async fn the_integrity_alarm_is_logged_without_the_rows_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[], "info").await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = server.admin.clone();
    let setup = std::fs::read_to_string(data.join("setup-token")).unwrap();
    let password = "logged-owner-password-1";
    let owner: Value = http
        .post(format!("{base}/v1/auth/register"))
        .json(&json!({ "email": OWNER_EMAIL, "password": password, "setup_token": setup.trim() }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = owner["token"].as_str().unwrap().to_owned();
    let created: Value = http
        .post(format!("{base}/v1/agents"))
        .bearer_auth(&session)
        .json(&json!({ "name": "logged-bot", "vaults": [{ "vault": "default", "role": "proxy" }] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bot = created["token"].as_str().unwrap().to_owned();
    let store = agent_vault::store::Store::open(&data, None).await.unwrap();
    let phc: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(store.pool())
        .await
        .unwrap();
    // Planted: a role, and a token that outlives its expiry.
    sqlx::query("UPDATE users SET role = 'member'")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE tokens SET expires_at = 4102444800000 WHERE kind = 'agent'")
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let status = |r: reqwest::Response| r.status().as_u16();
    let login = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({ "email": OWNER_EMAIL, "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(status(login), 401);
    let who = http
        .get(format!("{base}/v1/auth/whoami"))
        .bearer_auth(&bot)
        .send()
        .await
        .unwrap();
    assert_eq!(status(who), 401);
    let stderr = server.stop().await;
    let alarms: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("INTEGRITY ALARM"))
        .collect();
    assert!(
        alarms.iter().any(|l| l.contains("users")) && alarms.iter().any(|l| l.contains("tokens")),
        "{stderr}"
    );
    for secret in [password, phc.as_str(), bot.as_str(), session.as_str()] {
        assert!(!stderr.contains(secret), "a secret in the log: {stderr}");
    }
}

/// What a database written between migrations 0003 and 0006 looks like: tokens' and
/// invitations' MACs over the fields 0003 bound (no lifetime), and the data key wrapped to say
/// so. The first start re-binds the rows whose MAC verifies, over their lifetime as it stands;
/// one edited in a field 0003 bound stays refused; afterwards an un-revocation is caught.
#[tokio::test]
async fn tokens_and_invitations_bound_before_0006_are_rebound_at_the_first_start() {
    upgrade_from_0003_macs(None).await;
    if let Some(db) = TestDatabase::create().await {
        upgrade_from_0003_macs(Some(db.url.clone())).await;
        drop(db);
    }
}

/// A `tokens` row's columns under 0003's MAC: id, hash, kind, user, agent, vault, role.
type TokenRow0003 = (
    String,
    Vec<u8>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// An `invites` row's columns under 0003's MAC: id, email, role, vault grants, expiry, token
/// hash, creator.
type InviteRow0003 = (String, String, String, String, i64, Vec<u8>, String);

async fn upgrade_from_0003_macs(postgres: Option<String>) {
    use agent_vault::keys::{AuthorityRow, MacField};
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let options = || TestOptions {
        data_dir: Some(dir.clone()),
        postgres: postgres.clone(),
        ..Default::default()
    };
    let backend = if postgres.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let app = spawn_app_with(options()).await;
    app.create_vault("upg").await;
    let old = new_agent(&app, "up-bot", "upg", "proxy").await;
    app.ok("POST", "/v1/agents/up-bot/rotate", Some(json!({})))
        .await;
    let (live, _) = app.proxy_token("upg").await;
    let (raised, raised_id) = app.proxy_token("upg").await;
    let invite = app
        .ok(
            "POST",
            "/v1/invites",
            Some(json!({ "email": "later@example.com" })),
        )
        .await;

    // Rewrite every token and invitation MAC as a release before 0006 computed it.
    let store = app.open_store().await;
    let macs = app.proxy_state.keyring.authority_macs();
    let tokens: Vec<TokenRow0003> = sqlx::query_as(
        "SELECT id, hash, kind, user_id, agent_id, vault_id, vault_role FROM tokens",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for (id, hash, kind, user, agent, vault, role) in &tokens {
        let mac = macs.mac(
            AuthorityRow::Token,
            &[
                MacField::Text(id),
                MacField::Bytes(hash),
                MacField::Text(kind),
                MacField::OptText(user.as_deref()),
                MacField::OptText(agent.as_deref()),
                MacField::OptText(vault.as_deref()),
                MacField::OptText(role.as_deref()),
            ],
        );
        sqlx::query("UPDATE tokens SET mac = $1, parent_id = NULL WHERE id = $2")
            .bind(mac)
            .bind(id)
            .execute(store.pool())
            .await
            .unwrap();
    }
    let invites: Vec<InviteRow0003> = sqlx::query_as(
        "SELECT id, email, role, vault_grants, expires_at, token_hash, created_by FROM invites",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for (id, email, role, grants, expires, hash, by) in &invites {
        let mac = macs.mac(
            AuthorityRow::Invite,
            &[
                MacField::Text(id),
                MacField::Text(email),
                MacField::Text(role),
                MacField::Text(grants),
                MacField::Int(*expires),
                MacField::Bytes(hash),
                MacField::Text(by),
            ],
        );
        sqlx::query("UPDATE invites SET mac = $1 WHERE id = $2")
            .bind(mac)
            .bind(id)
            .execute(store.pool())
            .await
            .unwrap();
    }
    // Edited while the old release ran, in a field its MAC covered.
    sqlx::query("UPDATE tokens SET vault_role = 'admin' WHERE id = $1")
        .bind(&raised_id)
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    app.stop().await;
    let store = agent_vault::store::Store::open(&dir.path().join("data"), postgres.as_deref())
        .await
        .unwrap();
    let gate = agent_vault::crypto::KdfGate::new(1 << 30, std::time::Duration::from_secs(5));
    agent_vault::unseal::wrap_as_before_lifetime_macs(
        &store,
        secrecy::SecretString::from(MASTER_PASSWORD),
        &gate,
    )
    .await
    .unwrap();
    store.close().await;

    let app = spawn_app_with(options()).await;
    assert_eq!(
        connect_status(&app, &live, "upg").await,
        200,
        "{backend}: re-bound"
    );
    assert_eq!(whoami(&app, &old).await.0, 401, "{backend}: still revoked");
    assert_eq!(
        connect_status(&app, &raised, "upg").await,
        407,
        "{backend}: an edit the old MAC covered stays refused"
    );
    integrity_events_for(&app, &format!("tokens/{raised_id}")).await;
    // After the upgrade the lifetime is bound: the old agent token cannot be brought back.
    sql(
        &app,
        "UPDATE tokens SET revoked_at = NULL WHERE kind = 'agent'",
        &[],
    )
    .await;
    assert_eq!(whoami(&app, &old).await.0, 401, "{backend}");
    let (status, body) = app
        .call_anon(
            "POST",
            "/v1/auth/register",
            Some(json!({ "email": "later@example.com", "password": "later-password-1", "invite_token": invite["token"] })),
        )
        .await;
    assert_eq!(
        status, 201,
        "{backend}: the re-bound invitation works: {body}"
    );
    // Put back, the raised token's row verifies as 0003 bound it, which no longer counts.
    sql(
        &app,
        "UPDATE tokens SET vault_role = 'proxy' WHERE id = $1",
        &[&raised_id],
    )
    .await;
    app.proxy_state.identity.invalidate_all();
    assert_eq!(connect_status(&app, &raised, "upg").await, 407, "{backend}");
    app.stop().await;
    // The wrap now says the rows are bound: the next start re-binds nothing.
    let app = spawn_app_with(options()).await;
    assert_eq!(connect_status(&app, &raised, "upg").await, 407, "{backend}");
    assert_eq!(connect_status(&app, &live, "upg").await, 200, "{backend}");
}
