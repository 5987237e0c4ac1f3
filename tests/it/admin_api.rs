//! The admin API through real HTTP: roles, bad input, and state left unchanged on errors.

use serde_json::{Value, json};

use crate::support::{OWNER_EMAIL, TestOptions, spawn_app, spawn_app_tweaked, spawn_app_with};

#[tokio::test]
async fn public_endpoints() {
    let app = spawn_app().await;
    let (status, body) = app.call_anon("GET", "/v1/health", None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.call_anon("GET", "/v1/status", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["initialized"], true);
    assert_eq!(body["proxy_port"], app.proxy.port());
    let pem = app.ca_pem().await;
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let resp = app
        .http
        .get(format!("{}/v1/health", app.admin))
        .send()
        .await
        .unwrap();
    for h in [
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
        "content-security-policy",
    ] {
        assert!(resp.headers().contains_key(h), "missing {h}");
    }
    let (status, body) = app.call_anon("GET", "/v1/nope", None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn protected_routes_need_a_valid_token() {
    let app = spawn_app().await;
    for token in [
        None,
        Some("garbage"),
        Some("av_sess_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        Some("Bearer x"),
    ] {
        let (status, body) = app.call_with(token, "GET", "/v1/vaults", None).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(body["error"], "unauthorized");
    }
    // A revoked session no longer works.
    let token = app.login(OWNER_EMAIL, crate::support::OWNER_PASSWORD).await;
    assert_eq!(
        app.call_with(Some(&token), "GET", "/v1/vaults", None)
            .await
            .0,
        200
    );
    assert_eq!(
        app.call_with(Some(&token), "POST", "/v1/auth/logout", None)
            .await
            .0,
        204
    );
    assert_eq!(
        app.call_with(Some(&token), "GET", "/v1/vaults", None)
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn registration_rules() {
    let app = spawn_app().await;
    let (status, body) = app
        .call_anon(
            "POST",
            "/v1/auth/register",
            Some(json!({ "email": "eve@example.com", "password": "password-123" })),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("invitation"));
    let setup = app.setup_token_file.clone().unwrap();
    assert!(!setup.exists(), "the used setup token file is deleted");
    let (status, _) = app
        .call_anon("POST", "/v1/auth/register", Some(json!({ "email": "eve@example.com", "password": "password-123", "setup_token": "av_setup_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" })))
        .await;
    assert_eq!(status, 403);
    let (status, body) = app
        .call(
            "POST",
            "/v1/auth/register",
            Some(
                json!({ "email": "not-an-email", "password": "password-123", "setup_token": "x" }),
            ),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_email"))
    );
    let (status, body) = app
        .call_anon(
            "POST",
            "/v1/auth/login",
            Some(json!({ "email": OWNER_EMAIL, "password": "wrong" })),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let (_, users) = app.call("GET", "/v1/users", None).await;
    assert_eq!(users.as_array().unwrap().len(), 1, "nothing was created");
}

#[tokio::test]
async fn invitations_create_users_with_vault_roles() {
    let app = spawn_app().await;
    app.create_vault("team").await;
    let inv = app.ok("POST", "/v1/invites", Some(json!({ "email": "Bob@Example.com", "vaults": [{ "vault": "team", "role": "member" }] }))).await;
    let token = inv["token"].as_str().unwrap().to_owned();
    let (status, _) = app.call_anon("POST", "/v1/auth/register", Some(json!({ "email": "carol@example.com", "password": "password-123", "invite_token": token }))).await;
    assert_eq!(status, 403, "invitation is for a different email");
    let (status, body) = app.call_anon("POST", "/v1/auth/register", Some(json!({ "email": "bob@example.com", "password": "password-123", "invite_token": token }))).await;
    assert_eq!(status, 201, "{body}");
    let bob = body["token"].as_str().unwrap().to_owned();
    let (status, vaults) = app.call_with(Some(&bob), "GET", "/v1/vaults", None).await;
    assert_eq!(status, 200);
    let names: Vec<_> = vaults
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["team"]);
    let (status, _) = app.call_anon("POST", "/v1/auth/register", Some(json!({ "email": "bob@example.com", "password": "password-123", "invite_token": token }))).await;
    assert_eq!(status, 403, "an invitation works once");
    let (status, _) = app
        .call_with(
            Some(&bob),
            "POST",
            "/v1/invites",
            Some(json!({ "email": "x@example.com" })),
        )
        .await;
    assert_eq!(status, 403, "members cannot invite");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let app = spawn_app().await;
    app.create_vault("vault-one").await;
    app.set_credentials("vault-one", &[("GOOD", "value-1")])
        .await;
    let cases: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "POST",
            "/v1/vaults".into(),
            json!({ "name": "vault-one" }),
            409,
            "conflict",
        ),
        (
            "POST",
            "/v1/vaults".into(),
            json!({ "name": "Bad_Name" }),
            400,
            "invalid_vault_name",
        ),
        (
            "PUT",
            "/v1/vaults/vault-one/credentials".into(),
            json!({ "credentials": { "lower": "x" } }),
            400,
            "invalid_credential_key",
        ),
        (
            "PUT",
            "/v1/vaults/vault-one/credentials".into(),
            json!({ "credentials": { "GOOD": "" } }),
            400,
            "invalid_credential",
        ),
        (
            "PUT",
            "/v1/vaults/vault-one/credentials".into(),
            json!({ "credentials": { "OK": "x", "1BAD": "y" } }),
            400,
            "invalid_credential_key",
        ),
        (
            "PUT",
            "/v1/vaults/nope/credentials".into(),
            json!({ "credentials": { "A": "x" } }),
            404,
            "not_found",
        ),
        (
            "PUT",
            "/v1/vaults/vault-one/credentials".into(),
            json!({ "credentials": "sk_live_should_not_echo" }),
            400,
            "invalid_json",
        ),
        (
            "PUT",
            "/v1/vaults/vault-one/services".into(),
            json!({ "services": [{ "host": "api.example.test", "auth": { "type": "oauth", "token": "GOOD" } }] }),
            400,
            "invalid_json",
        ),
        (
            "PUT",
            "/v1/vaults/vault-one/services".into(),
            json!({ "services": [{ "host": "api.example.test", "auth": { "type": "bearer", "token": "MISSING" } }] }),
            400,
            "invalid_service",
        ),
        (
            "PUT",
            "/v1/vaults/vault-one/services".into(),
            json!({ "services": [{ "host": "10.0.0.1", "auth": { "type": "bearer", "token": "GOOD" } }] }),
            400,
            "invalid_service",
        ),
        (
            "DELETE",
            "/v1/vaults/vault-one/credentials".into(),
            json!({ "keys": ["GOOD", "ABSENT"] }),
            404,
            "not_found",
        ),
        (
            "PATCH",
            "/v1/vaults/vault-one/settings".into(),
            json!({ "unmatched_host_policy": "allow" }),
            400,
            "invalid_json",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, resp) = app.call(method, &path, Some(body.clone())).await;
        assert_eq!(
            (got, resp["error"].as_str().unwrap_or("")),
            (status, code),
            "{method} {path} {body}: {resp}"
        );
        assert!(
            !resp.to_string().contains("sk_live_should_not_echo"),
            "errors never echo values: {resp}"
        );
    }
    let (_, err) = app.call("PUT", "/v1/vaults/vault-one/services", Some(json!({ "services": [{ "host": "api.example.test", "auth": { "type": "bearer", "token": "MISSING" } }] }))).await;
    assert!(
        err["message"].as_str().unwrap().contains("MISSING"),
        "names the missing key: {err}"
    );
    // Nothing changed.
    let creds = app
        .ok("GET", "/v1/vaults/vault-one/credentials?reveal=true", None)
        .await;
    assert_eq!(creds.as_array().unwrap().len(), 1);
    assert_eq!(creds[0]["value"], "value-1");
    assert_eq!(
        app.ok("GET", "/v1/vaults/vault-one/services", None).await["services"],
        json!([])
    );

    // Body cap, content type, malformed JSON.
    let big = "x".repeat(2 << 20);
    let resp = app
        .http
        .put(format!("{}/v1/vaults/vault-one/credentials", app.admin))
        .bearer_auth(&app.owner_token)
        .header("content-type", "application/json")
        .body(format!("{{\"credentials\":{{\"BIG\":\"{big}\"}}}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let resp = app
        .http
        .put(format!("{}/v1/vaults/vault-one/credentials", app.admin))
        .bearer_auth(&app.owner_token)
        .body("A=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = app
        .http
        .put(format!("{}/v1/vaults/vault-one/credentials", app.admin))
        .bearer_auth(&app.owner_token)
        .header("content-type", "application/json")
        .body("{\"credentials\": {")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let creds = app
        .ok("GET", "/v1/vaults/vault-one/credentials", None)
        .await;
    assert_eq!(creds.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn roles_limit_what_each_principal_can_do() {
    let app = spawn_app().await;
    app.create_vault("alpha").await;
    app.create_vault("beta").await;
    app.set_credentials("alpha", &[("SECRET", "alpha-secret")])
        .await;
    app.set_credentials("beta", &[("SECRET", "beta-secret")])
        .await;
    app.set_services_yaml(
        "alpha",
        "- name: s\n  host: api.example.test\n  auth: {type: bearer, token: SECRET}\n",
    )
    .await;
    let agent = app
        .ok(
            "POST",
            "/v1/agents",
            Some(json!({ "name": "bot", "vaults": [{ "vault": "alpha", "role": "proxy" }] })),
        )
        .await;
    let proxy_token = agent["token"].as_str().unwrap().to_owned();
    let member = app
        .ok(
            "POST",
            "/v1/agents",
            Some(json!({ "name": "helper", "vaults": [{ "vault": "alpha", "role": "member" }] })),
        )
        .await;
    let member_token = member["token"].as_str().unwrap().to_owned();

    // Proxy role: key names and services through discover, never values, no writes.
    let (status, d) = app
        .call_with(Some(&proxy_token), "GET", "/v1/discover", None)
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["credentials"], json!(["SECRET"]));
    assert!(!d.to_string().contains("alpha-secret"));
    for (method, path, body) in [
        ("GET", "/v1/vaults/alpha/credentials?reveal=true", None),
        ("GET", "/v1/vaults/alpha/credentials/SECRET", None),
        (
            "PUT",
            "/v1/vaults/alpha/credentials",
            Some(json!({ "credentials": { "SECRET": "overwrite" } })),
        ),
        (
            "PUT",
            "/v1/vaults/alpha/services",
            Some(json!({ "services": [] })),
        ),
        ("GET", "/v1/vaults/alpha/logs", None),
        ("GET", "/v1/vaults/alpha/credentials", None),
        ("GET", "/v1/vaults/alpha/services", None),
    ] {
        let (status, body) = app.call_with(Some(&proxy_token), method, path, body).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(!body.to_string().contains("alpha-secret"));
    }
    for path in ["/v1/users", "/v1/agents", "/v1/invites"] {
        assert_eq!(
            app.call_with(Some(&proxy_token), "GET", path, None).await.0,
            403,
            "{path}"
        );
    }
    assert_eq!(
        app.call_with(
            Some(&proxy_token),
            "POST",
            "/v1/vaults",
            Some(json!({ "name": "mine" }))
        )
        .await
        .0,
        403
    );
    // Vault B does not exist for it.
    let (status, _) = app
        .call_with(
            Some(&proxy_token),
            "GET",
            "/v1/vaults/beta/credentials",
            None,
        )
        .await;
    assert_eq!(status, 404);
    // Member role: values yes, services no.
    let (status, v) = app
        .call_with(
            Some(&member_token),
            "GET",
            "/v1/vaults/alpha/credentials/SECRET",
            None,
        )
        .await;
    assert_eq!((status, v["value"].as_str()), (200, Some("alpha-secret")));
    assert_eq!(
        app.call_with(
            Some(&member_token),
            "PUT",
            "/v1/vaults/alpha/services",
            Some(json!({ "services": [] }))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        app.call_with(
            Some(&member_token),
            "GET",
            "/v1/vaults/beta/credentials/SECRET",
            None
        )
        .await
        .0,
        404
    );
    // Nothing changed.
    let v = app
        .ok("GET", "/v1/vaults/alpha/credentials/SECRET", None)
        .await;
    assert_eq!(v["value"], "alpha-secret");
}

#[tokio::test]
async fn agents_rotate_revoke_and_delete() {
    let app = spawn_app().await;
    app.create_vault("ops").await;
    let created = app.ok("POST", "/v1/agents", Some(json!({ "name": "ci", "vaults": [{ "vault": "ops", "role": "proxy" }], "ttl_seconds": 3600 }))).await;
    let first = created["token"].as_str().unwrap().to_owned();
    assert!(first.starts_with("av_agt_"));
    assert!(created["expires_at"].as_i64().is_some());
    assert_eq!(
        app.call_with(Some(&first), "GET", "/v1/auth/whoami", None)
            .await
            .0,
        200
    );
    let (status, _) = app
        .call("POST", "/v1/agents", Some(json!({ "name": "ci" })))
        .await;
    assert_eq!(status, 409);
    let rotated = app.ok("POST", "/v1/agents/ci/rotate", None).await;
    let second = rotated["token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.call_with(Some(&first), "GET", "/v1/auth/whoami", None)
            .await
            .0,
        401,
        "rotation revokes the old token"
    );
    assert_eq!(
        app.call_with(Some(&second), "GET", "/v1/auth/whoami", None)
            .await
            .0,
        200
    );
    let revoked = app.ok("POST", "/v1/agents/ci/revoke", None).await;
    assert_eq!(revoked["revoked_tokens"], 1);
    assert_eq!(
        app.call_with(Some(&second), "GET", "/v1/auth/whoami", None)
            .await
            .0,
        401
    );
    assert_eq!(app.call("DELETE", "/v1/agents/ci", None).await.0, 204);
    assert_eq!(app.call("DELETE", "/v1/agents/ci", None).await.0, 404);
    let (status, body) = app
        .call(
            "POST",
            "/v1/agents",
            Some(json!({ "name": "bad", "ttl_seconds": 5 })),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_ttl")));
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let app =
        spawn_app_tweaked(|c| c.tokens.scoped_default_ttl = std::time::Duration::from_secs(60))
            .await;
    app.create_vault("exp").await;
    let (token, id) = app.proxy_token("exp").await;
    assert_eq!(
        app.call_with(Some(&token), "GET", "/v1/discover", None)
            .await
            .0,
        200
    );
    // Move the expiry into the past (the API refuses lifetimes under a minute).
    app.set_token_expiry(&id, 1).await;
    assert_eq!(
        app.call_with(Some(&token), "GET", "/v1/discover", None)
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn tampered_rows_are_reported_as_integrity_errors() {
    let app = spawn_app().await;
    app.create_vault("tamper").await;
    app.set_credentials("tamper", &[("A", "value-a"), ("B", "value-b")])
        .await;
    let store = app.open_store().await;
    sqlx::query("UPDATE credential_versions SET sealed_value = (SELECT sealed_value FROM credential_versions c2 WHERE c2.key = 'B'), wrapped_key = (SELECT wrapped_key FROM credential_versions c2 WHERE c2.key = 'B') WHERE key = 'A'")
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let (status, body) = app
        .call("GET", "/v1/vaults/tamper/credentials/A", None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("integrity_error")),
        "{body}"
    );
    assert!(!body.to_string().contains("value-b"));
    let (status, _) = app
        .call("GET", "/v1/vaults/tamper/credentials/B", None)
        .await;
    assert_eq!(status, 200, "untouched rows still work");
}

#[tokio::test]
async fn members_and_last_admin_guard() {
    let app = spawn_app().await;
    app.create_vault("crew").await;
    app.ok("POST", "/v1/agents", Some(json!({ "name": "worker" })))
        .await;
    app.ok(
        "PUT",
        "/v1/vaults/crew/members",
        Some(json!({ "kind": "agent", "name": "worker", "role": "proxy" })),
    )
    .await;
    let members = app.ok("GET", "/v1/vaults/crew/members", None).await;
    assert_eq!(members.as_array().unwrap().len(), 2, "{members}");
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/v1/vaults/crew/members/user/{OWNER_EMAIL}"),
            None,
        )
        .await;
    assert_eq!(status, 409, "the last admin stays");
    assert_eq!(
        app.call("DELETE", "/v1/vaults/crew/members/agent/worker", None)
            .await
            .0,
        204
    );
    let (status, _) = app
        .call(
            "PUT",
            "/v1/vaults/crew/members",
            Some(json!({ "kind": "user", "name": "ghost@example.com", "role": "member" })),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn unknown_host_headers_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let addr = app.admin.trim_start_matches("http://").to_owned();
    for (host, want) in [
        ("evil.example:14321", "421"),
        (addr.as_str(), "200"),
        (
            &*format!("localhost:{}", addr.rsplit(':').next().unwrap()),
            "200",
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            format!("GET /v1/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with(&format!("HTTP/1.1 {want}")),
            "{host}: {out}"
        );
    }
}

#[tokio::test]
async fn proxy_role_tokens_reach_only_discover_and_proposals() {
    let app = spawn_app().await;
    app.create_vault("only").await;
    app.set_credentials("only", &[("K", "v-secret-only")]).await;
    app.set_services_yaml(
        "only",
        "- name: s\n  host: api.example.test\n  auth: {type: bearer, token: K}\n",
    )
    .await;
    let agent = app
        .ok(
            "POST",
            "/v1/agents",
            Some(json!({ "name": "px", "vaults": [{ "vault": "only", "role": "proxy" }] })),
        )
        .await;
    let agent_token = agent["token"].as_str().unwrap().to_owned();
    let (scoped, scoped_id) = app.proxy_token("only").await;
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/v1/users".into(), None),
        ("GET", "/v1/invites".into(), None),
        (
            "POST",
            "/v1/invites".into(),
            Some(json!({ "email": "x@example.com" })),
        ),
        ("DELETE", "/v1/invites/abc".into(), None),
        ("POST", "/v1/vaults".into(), Some(json!({ "name": "mine" }))),
        ("GET", "/v1/vaults/only".into(), None),
        ("DELETE", "/v1/vaults/only".into(), None),
        ("GET", "/v1/vaults/only/settings".into(), None),
        (
            "PATCH",
            "/v1/vaults/only/settings".into(),
            Some(json!({ "unmatched_host_policy": "tunnel" })),
        ),
        ("GET", "/v1/vaults/only/members".into(), None),
        (
            "PUT",
            "/v1/vaults/only/members".into(),
            Some(json!({ "kind": "agent", "name": "px", "role": "admin" })),
        ),
        ("DELETE", "/v1/vaults/only/members/agent/px".into(), None),
        ("GET", "/v1/vaults/only/credentials".into(), None),
        (
            "GET",
            "/v1/vaults/only/credentials?reveal=true".into(),
            None,
        ),
        ("GET", "/v1/vaults/only/credentials/K".into(), None),
        (
            "PUT",
            "/v1/vaults/only/credentials".into(),
            Some(json!({ "credentials": { "K": "x" } })),
        ),
        (
            "DELETE",
            "/v1/vaults/only/credentials".into(),
            Some(json!({ "keys": ["K"] })),
        ),
        ("GET", "/v1/vaults/only/services".into(), None),
        (
            "PUT",
            "/v1/vaults/only/services".into(),
            Some(json!({ "services": [] })),
        ),
        (
            "POST",
            "/v1/vaults/only/services".into(),
            Some(json!({ "host": "x.example.test", "auth": { "type": "passthrough" } })),
        ),
        ("DELETE", "/v1/vaults/only/services/s".into(), None),
        ("GET", "/v1/vaults/only/tokens".into(), None),
        ("GET", "/v1/agents".into(), None),
        (
            "POST",
            "/v1/agents".into(),
            Some(json!({ "name": "other" })),
        ),
        ("POST", "/v1/agents/px/rotate".into(), None),
        ("POST", "/v1/agents/px/revoke".into(), None),
        ("DELETE", "/v1/agents/px".into(), None),
        ("GET", "/v1/vaults/only/logs".into(), None),
        ("GET", "/v1/vaults/only/audit".into(), None),
        ("GET", "/v1/vaults/only/proposals".into(), None),
        ("GET", "/v1/vaults/only/proposals/1".into(), None),
        (
            "POST",
            "/v1/vaults/only/proposals/1/approve".into(),
            Some(json!({})),
        ),
        (
            "POST",
            "/v1/vaults/only/proposals/1/reject".into(),
            Some(json!({})),
        ),
        ("DELETE", format!("/v1/tokens/{scoped_id}"), None),
    ];
    let (status, _) = app
        .propose(
            &scoped,
            json!({ "credentials": [{ "action": "set", "key": "NEW" }] }),
        )
        .await;
    assert_eq!(status, 201);
    for token in [&agent_token, &scoped] {
        for (method, path, body) in &routes {
            if token == &scoped && path.starts_with("/v1/tokens/") {
                continue; // a token may revoke itself
            }
            let (status, resp) = app.call_with(Some(token), method, path, body.clone()).await;
            assert!(
                matches!(status, 401 | 403 | 404),
                "{method} {path} answered {status}: {resp}"
            );
            assert!(!resp.to_string().contains("v-secret-only"));
        }
        let (status, _) = app
            .call_with(Some(token), "GET", "/v1/discover?vault=only", None)
            .await;
        assert_eq!(status, 200);
        let (status, vaults) = app.call_with(Some(token), "GET", "/v1/vaults", None).await;
        assert_eq!(
            (status, vaults),
            (200, json!([])),
            "vaults it only proxies for are not listed"
        );
    }
    // Nothing changed.
    assert_eq!(
        app.ok("GET", "/v1/vaults/only/credentials/K", None).await["value"],
        "v-secret-only"
    );
    assert_eq!(
        app.ok("GET", "/v1/vaults/only/services", None).await["services"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn scoped_tokens_end_with_their_minters_access() {
    let app = spawn_app().await;
    app.create_vault("minted").await;
    let agent = app
        .ok(
            "POST",
            "/v1/agents",
            Some(json!({ "name": "minter", "vaults": [{ "vault": "minted", "role": "proxy" }] })),
        )
        .await;
    let agent_token = agent["token"].as_str().unwrap().to_owned();
    let (status, scoped) = app
        .call_with(
            Some(&agent_token),
            "POST",
            "/v1/vaults/minted/tokens",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{scoped}");
    let scoped = scoped["token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.call_with(Some(&scoped), "GET", "/v1/discover", None)
            .await
            .0,
        200
    );
    // Removing the agent from the vault ends the tokens it minted there.
    assert_eq!(
        app.call("DELETE", "/v1/vaults/minted/members/agent/minter", None)
            .await
            .0,
        204
    );
    assert_eq!(
        app.call_with(Some(&scoped), "GET", "/v1/discover", None)
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn a_swapped_ca_certificate_stops_startup() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_with(TestOptions {
        data_dir: Some(dir.clone()),
        ..Default::default()
    })
    .await;
    let config = app.config.clone();
    app.stop().await;
    // A database writer replaces the stored root certificate with their own.
    let other = crate::support::TestCa::new("attacker root");
    let store = agent_vault::store::Store::open(&config.data_dir, None)
        .await
        .unwrap();
    sqlx::query("UPDATE ca_state SET cert_pem = $1")
        .bind(other.pem.clone())
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let err = agent_vault::app::App::build(
        config,
        secrecy::SecretString::from(crate::support::MASTER_PASSWORD),
    )
    .await
    .err()
    .expect("startup refuses a CA certificate that does not match the sealed key");
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[tokio::test]
async fn last_human_admin_cannot_leave_a_vault_to_an_admin_agent() {
    let app = spawn_app().await;
    last_human_admin_stays(&app).await;
    if let Some(db) = crate::support::TestDatabase::create().await {
        let app = spawn_app_with(TestOptions {
            postgres: Some(db.url.clone()),
            ..Default::default()
        })
        .await;
        last_human_admin_stays(&app).await;
        drop(app);
        drop(db);
    }
}

async fn last_human_admin_stays(app: &crate::support::TestApp) {
    let inv = app
        .ok(
            "POST",
            "/v1/invites",
            Some(json!({ "email": "alice@example.com" })),
        )
        .await;
    let (status, body) = app.call_anon("POST", "/v1/auth/register", Some(json!({ "email": "alice@example.com", "password": "alice-password", "invite_token": inv["token"] }))).await;
    assert_eq!(status, 201, "{body}");
    let alice = body["token"].as_str().unwrap().to_owned();
    let (status, body) = app
        .call_with(
            Some(&alice),
            "POST",
            "/v1/vaults",
            Some(json!({ "name": "alices" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .call_with(
            Some(&alice),
            "POST",
            "/v1/agents",
            Some(json!({ "name": "ops-bot", "vaults": [{ "vault": "alices", "role": "admin" }] })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // The agent is an admin too, but it is no human: alice may neither leave nor step down.
    let (status, body) = app
        .call_with(
            Some(&alice),
            "DELETE",
            "/v1/vaults/alices/members/user/alice@example.com",
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = app
        .call_with(
            Some(&alice),
            "PUT",
            "/v1/vaults/alices/members",
            Some(json!({ "kind": "user", "name": "alice@example.com", "role": "member" })),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let members = app
        .call_with(Some(&alice), "GET", "/v1/vaults/alices/members", None)
        .await
        .1;
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "alice@example.com" && m["role"] == "admin"),
        "{members}"
    );
    // Removing the agent is fine: the human admin stays.
    let (status, body) = app
        .call_with(
            Some(&alice),
            "DELETE",
            "/v1/vaults/alices/members/agent/ops-bot",
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
}

#[tokio::test]
async fn an_agent_mints_only_shorter_lived_proxy_tokens_for_its_own_vaults() {
    let app = spawn_app().await;
    app.create_vault("mine").await;
    app.create_vault("theirs").await;
    app.set_credentials("mine", &[("K", "v-secret-mine")]).await;
    let agent = app
        .ok(
            "POST",
            "/v1/agents",
            Some(json!({ "name": "minter", "vaults": [{ "vault": "mine", "role": "proxy" }], "ttl_seconds": 3600 })),
        )
        .await;
    let agent_token = agent["token"].as_str().unwrap().to_owned();
    let agent_expires = agent["expires_at"].as_i64().unwrap();
    let mint = |path: &'static str, body: Value| {
        let app = &app;
        let token = agent_token.clone();
        async move { app.call_with(Some(&token), "POST", path, Some(body)).await }
    };

    // Longer than the agent's own token: refused with the reason, nothing minted.
    let (status, body) = mint("/v1/vaults/mine/tokens", json!({ "ttl_seconds": 7200 })).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_ttl", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("outlive"),
        "{body}"
    );
    // A higher role cannot even be asked for.
    let (status, body) = mint("/v1/vaults/mine/tokens", json!({ "role": "admin" })).await;
    assert_eq!(status, 400, "{body}");
    // Another vault answers as if it did not exist.
    let (status, body) = mint("/v1/vaults/theirs/tokens", json!({})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        app.ok("GET", "/v1/vaults/mine/tokens", None).await,
        json!([]),
        "nothing was minted"
    );

    // What it may mint: proxy role, its own vault, ending no later than itself.
    for body in [json!({}), json!({ "ttl_seconds": 600 })] {
        let (status, child) = mint("/v1/vaults/mine/tokens", body).await;
        assert_eq!(status, 201, "{child}");
        assert!(child["expires_at"].as_i64().unwrap() <= agent_expires);
        let child = child["token"].as_str().unwrap().to_owned();
        assert_eq!(
            app.call_with(Some(&child), "GET", "/v1/discover", None)
                .await
                .0,
            200
        );
        for (method, path) in [
            ("GET", "/v1/vaults/mine/credentials"),
            ("GET", "/v1/vaults/mine/credentials/K"),
            ("GET", "/v1/vaults/mine/members"),
            ("GET", "/v1/discover?vault=theirs"),
        ] {
            let (status, resp) = app.call_with(Some(&child), method, path, None).await;
            assert!(
                matches!(status, 403 | 404),
                "{method} {path}: {status} {resp}"
            );
            assert!(!resp.to_string().contains("v-secret-mine"));
        }
        let (status, _) = app
            .call_with(
                Some(&child),
                "POST",
                "/v1/vaults/mine/tokens",
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 403, "a scoped token mints nothing");
    }
}

#[tokio::test]
async fn revoking_an_agent_token_revokes_the_tokens_it_minted() {
    revocation_reaches_minted_tokens(&spawn_app().await).await;
    if let Some(db) = crate::support::TestDatabase::create().await {
        let app = spawn_app_with(TestOptions {
            postgres: Some(db.url.clone()),
            ..Default::default()
        })
        .await;
        revocation_reaches_minted_tokens(&app).await;
        drop(app);
        drop(db);
    }
}

async fn revocation_reaches_minted_tokens(app: &crate::support::TestApp) {
    app.create_vault("fam").await;
    app.ok(
        "POST",
        "/v1/agents",
        Some(json!({ "name": "parent", "vaults": [{ "vault": "fam", "role": "proxy" }] })),
    )
    .await;
    let mint_child = |parent: String| async move {
        let (status, child) = app
            .call_with(
                Some(&parent),
                "POST",
                "/v1/vaults/fam/tokens",
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 201, "{child}");
        child["token"].as_str().unwrap().to_owned()
    };
    let discover = |token: String| async move {
        app.call_with(Some(&token), "GET", "/v1/discover", None)
            .await
            .0
    };
    // A user's own run token is not touched by an agent's revocation.
    let (user_run, _) = app.proxy_token("fam").await;

    // The agent revokes its own token: its children stop working at once.
    let parent = app.ok("POST", "/v1/agents/parent/rotate", None).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let child = mint_child(parent.clone()).await;
    assert_eq!(discover(child.clone()).await, 200);
    assert_eq!(
        app.call_with(Some(&parent), "DELETE", "/v1/tokens/self", None)
            .await
            .0,
        204
    );
    assert_eq!(discover(parent).await, 401);
    assert_eq!(discover(child).await, 401, "the child went with its parent");

    // An owner revoking the agent's token by id does the same.
    let parent = app.ok("POST", "/v1/agents/parent/rotate", None).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let child = mint_child(parent.clone()).await;
    let me = app
        .call_with(Some(&parent), "GET", "/v1/auth/whoami", None)
        .await
        .1;
    let parent_id = me["token_id"].as_str().unwrap();
    assert_eq!(
        app.call("DELETE", &format!("/v1/tokens/{parent_id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(discover(child).await, 401);

    // Rotating the agent's token ends the old token's children too.
    let parent = app.ok("POST", "/v1/agents/parent/rotate", None).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let child = mint_child(parent).await;
    let fresh = app.ok("POST", "/v1/agents/parent/rotate", None).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(discover(child).await, 401);
    assert_eq!(discover(fresh).await, 200);
    assert_eq!(discover(user_run).await, 200);
}
