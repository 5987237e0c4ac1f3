//! Attacks by someone who can write the database but does not know the master password: they
//! edit authority rows (grants, users, invites, agents) directly with SQL. Each runs on SQLite
//! and, when AGENT_VAULT_TEST_DATABASE_URL is set, on Postgres.

use serde_json::{Value, json};

use crate::support::tamper::{agent_id, integrity_events_for, on_each_backend, sql, sql_strings};
use crate::support::{OWNER_EMAIL, OWNER_PASSWORD, TINY_KDF, TestApp, TestOptions, spawn_app_with};

/// Admin actions an agent with the admin role could take in `vault`; none may succeed.
async fn assert_no_admin_power(app: &TestApp, token: &str, vault: &str, secret: &str, what: &str) {
    let attempts: Vec<(&str, String, Option<Value>)> = vec![
        (
            "GET",
            format!("/v1/vaults/{vault}/credentials?reveal=true"),
            None,
        ),
        (
            "GET",
            format!("/v1/vaults/{vault}/credentials/SECRET"),
            None,
        ),
        (
            "PUT",
            format!("/v1/vaults/{vault}/credentials"),
            Some(json!({ "credentials": { "PLANTED": "x" } })),
        ),
        (
            "PATCH",
            format!("/v1/vaults/{vault}/settings"),
            Some(json!({ "unmatched_host_policy": "deny" })),
        ),
        (
            "PUT",
            format!("/v1/vaults/{vault}/services"),
            Some(json!({ "services": [] })),
        ),
        (
            "PUT",
            format!("/v1/vaults/{vault}/members"),
            Some(json!({ "kind": "user", "name": OWNER_EMAIL, "role": "member" })),
        ),
    ];
    for (method, path, body) in attempts {
        let (status, resp) = app.call_with(Some(token), method, &path, body).await;
        assert!(
            matches!(status, 401 | 403 | 404),
            "{what}: {method} {path} answered {status}: {resp}"
        );
        assert!(!resp.to_string().contains(secret), "{what}: {resp}");
    }
    // And nothing changed.
    let creds = app
        .ok("GET", &format!("/v1/vaults/{vault}/credentials"), None)
        .await;
    assert!(!creds.to_string().contains("PLANTED"), "{what}: {creds}");
    let settings = app
        .ok("GET", &format!("/v1/vaults/{vault}/settings"), None)
        .await;
    assert_eq!(settings["unmatched_host_policy"], "tunnel", "{what}");
}

#[tokio::test]
async fn agent_grant_flipped_to_admin_in_the_database_gives_no_admin_power() {
    on_each_backend(|app, backend| async move {
        app.create_vault("flip").await;
        app.set_credentials("flip", &[("SECRET", "value-flip-secret")])
            .await;
        let created = app
            .ok(
                "POST",
                "/v1/agents",
                Some(json!({ "name": "bot", "vaults": [{ "vault": "flip", "role": "proxy" }] })),
            )
            .await;
        let bot = created["token"].as_str().unwrap().to_owned();
        let changed = sql(
            &app,
            "UPDATE vault_grants SET role = 'admin' WHERE principal_kind = 'agent'",
            &[],
        )
        .await;
        assert_eq!(changed, 1, "{backend}");
        assert_no_admin_power(&app, &bot, "flip", "value-flip-secret", backend).await;
        // The edited grant counts as no grant: the agent is not even a proxy member now.
        let who = app
            .call_with(Some(&bot), "GET", "/v1/auth/whoami", None)
            .await
            .1;
        assert_eq!(who["vaults"], json!([]), "{backend}: {who}");
        // The owner sees the row for what it is.
        let members = app.ok("GET", "/v1/vaults/flip/members", None).await;
        let bot_row = members
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "bot")
            .cloned()
            .unwrap();
        assert_eq!(bot_row["role"], "integrity_error", "{backend}: {members}");
        let vault = sql_strings(&app, "SELECT id FROM vaults WHERE name = 'flip'", &[]).await;
        let bot_id = agent_id(&app, "bot").await;
        integrity_events_for(&app, &format!("vault_grants/{}/agent/{bot_id}", vault[0])).await;
    })
    .await;
}

#[tokio::test]
async fn grant_row_moved_to_another_agent_in_the_database_is_refused() {
    on_each_backend(|app, backend| async move {
        app.create_vault("moved").await;
        app.create_vault("elsewhere").await;
        app.set_credentials("moved", &[("SECRET", "value-moved-secret")])
            .await;
        app.ok(
            "POST",
            "/v1/agents",
            Some(json!({ "name": "boss-bot", "vaults": [{ "vault": "moved", "role": "admin" }] })),
        )
        .await;
        let low = app
            .ok(
                "POST",
                "/v1/agents",
                Some(json!({ "name": "low-bot", "vaults": [{ "vault": "elsewhere", "role": "proxy" }] })),
            )
            .await;
        let low = low["token"].as_str().unwrap().to_owned();
        let (boss_id, low_id) = (
            agent_id(&app, "boss-bot").await,
            agent_id(&app, "low-bot").await,
        );
        // The admin grant row, MAC and all, now names the low agent.
        let changed = sql(
            &app,
            "UPDATE vault_grants SET principal_id = $1 WHERE principal_id = $2",
            &[&low_id, &boss_id],
        )
        .await;
        assert_eq!(changed, 1, "{backend}");
        assert_no_admin_power(&app, &low, "moved", "value-moved-secret", backend).await;
    })
    .await;
}

#[tokio::test]
async fn user_role_flipped_to_owner_in_the_database_gives_no_owner_powers() {
    on_each_backend(|app, backend| async move {
        let inv = app
            .ok(
                "POST",
                "/v1/invites",
                Some(json!({ "email": "mallory@example.com", "vaults": [{ "vault": "default", "role": "member" }] })),
            )
            .await;
        let (status, body) = app
            .call_anon(
                "POST",
                "/v1/auth/register",
                Some(json!({ "email": "mallory@example.com", "password": "mallory-password", "invite_token": inv["token"] })),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {body}");
        let session = body["token"].as_str().unwrap().to_owned();
        assert_eq!(
            app.call_with(Some(&session), "GET", "/v1/users", None)
                .await
                .0,
            403,
            "{backend}: a member is no owner"
        );
        sql(
            &app,
            "UPDATE users SET role = 'owner' WHERE email = 'mallory@example.com'",
            &[],
        )
        .await;
        for (method, path, body) in [
            ("GET", "/v1/users", None),
            (
                "POST",
                "/v1/invites",
                Some(json!({ "email": "friend@example.com", "role": "owner" })),
            ),
            ("POST", "/v1/vaults", Some(json!({ "name": "grabbed" }))),
            ("GET", "/v1/vaults/default/credentials?reveal=true", None),
        ] {
            let (status, resp) = app.call_with(Some(&session), method, path, body).await;
            assert!(
                matches!(status, 401 | 403),
                "{backend}: {method} {path} answered {status}: {resp}"
            );
        }
        let (status, _) = app
            .call_anon(
                "POST",
                "/v1/auth/login",
                Some(json!({ "email": "mallory@example.com", "password": "mallory-password" })),
            )
            .await;
        assert_eq!(status, 401, "{backend}: the edited user cannot log in");
        let users = app.ok("GET", "/v1/users", None).await;
        let row = users
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["email"] == "mallory@example.com")
            .cloned()
            .unwrap();
        assert_eq!(row["role"], "integrity_error", "{backend}: {users}");
        integrity_events_for(&app, &format!("users/{}", row["id"].as_str().unwrap())).await;
        // Its grant can still be taken away by an admin.
        assert_eq!(
            app.call(
                "DELETE",
                "/v1/vaults/default/members/user/mallory@example.com",
                None
            )
            .await
            .0,
            204,
            "{backend}"
        );
    })
    .await;
}

#[tokio::test]
async fn password_hash_replaced_in_the_database_does_not_log_the_attacker_in() {
    on_each_backend(|app, backend| async move {
        let gate = agent_vault::crypto::KdfGate::new(1 << 30, std::time::Duration::from_secs(2));
        let attacker_phc = agent_vault::crypto::PasswordHasher::new(TINY_KDF, gate, 1000)
            .unwrap()
            .hash(secrecy::SecretString::from("attacker-knows-this"))
            .await
            .unwrap();
        sql(
            &app,
            "UPDATE users SET password_hash = $1 WHERE email = $2",
            &[&attacker_phc, OWNER_EMAIL],
        )
        .await;
        for password in ["attacker-knows-this", OWNER_PASSWORD] {
            let (status, body) = app
                .call_anon(
                    "POST",
                    "/v1/auth/login",
                    Some(json!({ "email": OWNER_EMAIL, "password": password })),
                )
                .await;
            assert_eq!(status, 401, "{backend}: {body}");
            assert!(body.get("token").is_none(), "{backend}");
        }
        // The session issued before the edit belonged to the row as it was: it ends too.
        assert_eq!(app.call("GET", "/v1/auth/whoami", None).await.0, 401);
        let owner = sql_strings(
            &app,
            "SELECT id FROM users WHERE email = $1",
            &[OWNER_EMAIL],
        )
        .await;
        let events = integrity_events_for(&app, &format!("users/{}", owner[0])).await;
        assert!(
            !events[0].1.contains(&attacker_phc),
            "{backend}: {events:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn invite_role_edited_in_the_database_is_refused() {
    on_each_backend(|app, backend| async move {
        let inv = app
            .ok(
                "POST",
                "/v1/invites",
                Some(json!({ "email": "eve@example.com", "role": "member" })),
            )
            .await;
        sql(
            &app,
            "UPDATE invites SET role = 'owner' WHERE email = 'eve@example.com'",
            &[],
        )
        .await;
        let (status, body) = app
            .call_anon(
                "POST",
                "/v1/auth/register",
                Some(json!({ "email": "eve@example.com", "password": "eve-password-1", "invite_token": inv["token"] })),
            )
            .await;
        assert_eq!(status, 403, "{backend}: {body}");
        let invites = app.ok("GET", "/v1/invites", None).await;
        assert_eq!(invites[0]["status"], "integrity_error", "{backend}: {invites}");
        integrity_events_for(&app, &format!("invites/{}", invites[0]["id"].as_str().unwrap())).await;
        let users = app.ok("GET", "/v1/users", None).await;
        assert_eq!(users.as_array().unwrap().len(), 1, "{backend}: {users}");
    })
    .await;
}

#[tokio::test]
async fn agent_row_renamed_in_the_database_has_its_tokens_refused() {
    on_each_backend(|app, backend| async move {
        app.create_vault("named").await;
        let created = app
            .ok(
                "POST",
                "/v1/agents",
                Some(
                    json!({ "name": "honest", "vaults": [{ "vault": "named", "role": "proxy" }] }),
                ),
            )
            .await;
        let token = created["token"].as_str().unwrap().to_owned();
        assert_eq!(
            app.call_with(Some(&token), "GET", "/v1/auth/whoami", None)
                .await
                .0,
            200
        );
        // Claiming another creator would hand the agent to another user to manage.
        sql(
            &app,
            "UPDATE agents SET created_by = 'someone-else' WHERE name = 'honest'",
            &[],
        )
        .await;
        assert_eq!(
            app.call_with(Some(&token), "GET", "/v1/auth/whoami", None)
                .await
                .0,
            401,
            "{backend}"
        );
        let agents = app.ok("GET", "/v1/agents", None).await;
        assert_eq!(agents[0]["integrity_error"], true, "{backend}: {agents}");
        let honest = agent_id(&app, "honest").await;
        integrity_events_for(&app, &format!("agents/{honest}")).await;
        // An owner can still delete it.
        assert_eq!(app.call("DELETE", "/v1/agents/honest", None).await.0, 204);
    })
    .await;
}

#[tokio::test]
async fn tokens_repointed_in_the_database_are_refused() {
    on_each_backend(|app, backend| async move {
        app.create_vault("tok").await;
        app.set_credentials("tok", &[("SECRET", "value-tok-secret")])
            .await;
        // A member's session re-pointed at the owner.
        let inv = app
            .ok(
                "POST",
                "/v1/invites",
                Some(json!({ "email": "trudy@example.com" })),
            )
            .await;
        let (status, body) = app
            .call_anon(
                "POST",
                "/v1/auth/register",
                Some(json!({ "email": "trudy@example.com", "password": "trudy-password", "invite_token": inv["token"] })),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {body}");
        let session = body["token"].as_str().unwrap().to_owned();
        let session_id = body["token_id"].as_str().unwrap().to_owned();
        sql(
            &app,
            "UPDATE tokens SET user_id = (SELECT id FROM users WHERE email = $1) WHERE id = $2",
            &[OWNER_EMAIL, &session_id],
        )
        .await;
        let (status, resp) = app.call_with(Some(&session), "GET", "/v1/users", None).await;
        assert_eq!(status, 401, "{backend}: {resp}");

        // A proxy-role scoped token whose role is raised to admin.
        let created = app
            .ok(
                "POST",
                "/v1/agents",
                Some(json!({ "name": "minter", "vaults": [{ "vault": "tok", "role": "proxy" }] })),
            )
            .await;
        let agent = created["token"].as_str().unwrap().to_owned();
        let (status, minted) = app
            .call_with(Some(&agent), "POST", "/v1/vaults/tok/tokens", Some(json!({})))
            .await;
        assert_eq!(status, 201, "{backend}: {minted}");
        let scoped = minted["token"].as_str().unwrap().to_owned();
        let scoped_id = minted["id"].as_str().unwrap().to_owned();
        sql(
            &app,
            "UPDATE tokens SET vault_role = 'admin' WHERE id = $1",
            &[&scoped_id],
        )
        .await;
        assert_no_admin_power(&app, &scoped, "tok", "value-tok-secret", backend).await;
        // Listings and lookups by id skip it too, rather than showing the raised role.
        let listed = app.ok("GET", "/v1/vaults/tok/tokens", None).await;
        assert!(
            !listed.to_string().contains(&scoped_id),
            "{backend}: a re-pointed token is not listed: {listed}"
        );
    })
    .await;
}

#[tokio::test]
async fn rows_from_before_the_upgrade_work_after_the_first_start_and_edits_after_it_do_not() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_with(TestOptions {
        data_dir: Some(dir.clone()),
        ..Default::default()
    })
    .await;
    app.create_vault("kept").await;
    let created = app
        .ok(
            "POST",
            "/v1/agents",
            Some(json!({ "name": "old-bot", "vaults": [{ "vault": "kept", "role": "proxy" }] })),
        )
        .await;
    let bot = created["token"].as_str().unwrap().to_owned();
    // What a database written by the version before migration 0003 looks like to it: no MACs,
    // and the backfill still pending.
    for table in [
        "UPDATE vault_grants SET mac = NULL",
        "UPDATE users SET mac = NULL",
        "UPDATE agents SET mac = NULL",
        "UPDATE tokens SET mac = NULL",
    ] {
        sql(&app, table, &[]).await;
    }
    sql(
        &app,
        "INSERT INTO instance_state (key, value, updated_at) VALUES ('authority_macs_pending', '1', 0)",
        &[],
    )
    .await;
    app.stop().await;
    wrap_dek_as_before_authority_macs(&dir).await;
    let app = spawn_app_with(TestOptions {
        data_dir: Some(dir.clone()),
        ..Default::default()
    })
    .await;
    // The owner logged in (spawn_app_with does), and the agent's token and grant still work.
    let who = app
        .call_with(Some(&bot), "GET", "/v1/auth/whoami", None)
        .await
        .1;
    assert_eq!(who["vaults"][0]["role"], "proxy", "{who}");
    // Once bound, an edit is caught as on any other start.
    sql(
        &app,
        "UPDATE vault_grants SET role = 'admin' WHERE principal_kind = 'agent'",
        &[],
    )
    .await;
    let who = app
        .call_with(Some(&bot), "GET", "/v1/auth/whoami", None)
        .await
        .1;
    assert_eq!(who["vaults"], json!([]), "{who}");
}

/// The data key wrapped as a version before authority-row MACs wrapped it, which is what tells
/// the next start that the rows of this database still need binding.
async fn wrap_dek_as_before_authority_macs(dir: &tempfile::TempDir) {
    let store = agent_vault::store::Store::open(&dir.path().join("data"), None)
        .await
        .unwrap();
    let gate = agent_vault::crypto::KdfGate::new(1 << 30, std::time::Duration::from_secs(5));
    agent_vault::unseal::wrap_as_before_authority_macs(
        &store,
        secrecy::SecretString::from(crate::support::MASTER_PASSWORD),
        &gate,
    )
    .await
    .unwrap();
    store.close().await;
}

/// The one-time binding of old rows is not a door a database writer can reopen: wiping the MAC
/// of an edited grant and re-inserting the "binding pending" marker used to get the edit bound
/// at the next start, making a proxy-role agent an admin that could reveal every value. The
/// data key's wrap (which only the master password can write) now records that the rows are
/// bound, so the marker is discarded with an alarm and the edited row stays refused.
#[tokio::test]
async fn backfill_marker_reinserted_by_a_database_writer_binds_nothing() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_with(TestOptions {
        data_dir: Some(dir.clone()),
        ..Default::default()
    })
    .await;
    app.create_vault("held").await;
    app.set_credentials("held", &[("KEY", "sk_marker_secret_value")])
        .await;
    let created = app
        .ok(
            "POST",
            "/v1/agents",
            Some(json!({ "name": "marker-bot", "vaults": [{ "vault": "held", "role": "proxy" }] })),
        )
        .await;
    let bot = created["token"].as_str().unwrap().to_owned();
    let reveal = "/v1/vaults/held/credentials?reveal=true";
    assert_eq!(app.call_with(Some(&bot), "GET", reveal, None).await.0, 403);
    sql(
        &app,
        "UPDATE vault_grants SET role = 'admin', mac = NULL WHERE principal_kind = 'agent'",
        &[],
    )
    .await;
    sql(
        &app,
        "INSERT INTO instance_state (key, value, updated_at) VALUES ('authority_macs_pending', '1', 0)",
        &[],
    )
    .await;
    app.stop().await;
    let app = spawn_app_with(TestOptions {
        data_dir: Some(dir.clone()),
        ..Default::default()
    })
    .await;
    let (status, body) = app.call_with(Some(&bot), "GET", reveal, None).await;
    assert!(
        status == 403 || status == 404,
        "the edited grant must stay refused: {status} {body}"
    );
    assert!(!body.to_string().contains("sk_marker_secret_value"));
    let who = app
        .call_with(Some(&bot), "GET", "/v1/auth/whoami", None)
        .await
        .1;
    assert_eq!(who["vaults"], json!([]), "{who}");
}
