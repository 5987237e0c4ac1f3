//! The canary scan: a server process at trace log level goes through the whole product
//! (registration, credentials, services, agents, proxying with successes and every kind of
//! error, proposals, approval, logs, CLI errors); afterwards no known secret, in any common
//! encoding (credential values and metadata values alike), may appear in anything it logged, any file of its data directory, any response an
//! agent received, or any error message.

use base64::Engine;
use serde_json::{Value, json};

use crate::support::process::{ServerProcess, WithUpstream};
use crate::support::{MASTER_PASSWORD, OWNER_EMAIL, walk};

const CREDENTIAL: &str = "sk_live_CanaryCredential_7f3a";
const PROPOSED: &str = "ghp_CanaryProposedValue_91bd";
const APPROVED: &str = "xoxb-CanaryApprovedValue-55c1";
const OWNER_PASSWORD: &str = "Canary-Owner-Password-3e8";
const METADATA: &str = "meta-CanaryMetadataValue-4d2a";
const PROPOSED_METADATA: &str = "meta-CanaryProposedMetadata-8e1f";
const TYPED_PASSWORD: &str = "CanaryTypedPassword-c3d5";
const DB_PASSWORD: &str = "CanaryDbPassword8e1f";
const OAUTH_REFRESH: &str = "CanaryOauthRefresh-6d90";
const OAUTH_SECRET: &str = "CanaryOauthClientSecret-0a4e";

/// The base64 body lines of a PEM text that carry private material (`skip` leading lines hold
/// only public parts, as an OpenSSH key's first lines do).
fn pem_body_lines(pem: &str, skip: usize) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .skip(skip)
        .filter(|l| l.len() >= 40)
        .map(str::to_owned)
        .collect()
}

fn encodings(secret: &str) -> Vec<(String, String)> {
    let b = secret.as_bytes();
    vec![
        ("raw".into(), secret.to_owned()),
        (
            "base64".into(),
            base64::engine::general_purpose::STANDARD.encode(b),
        ),
        (
            "base64url".into(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
        ),
        (
            "percent".into(),
            percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        ),
        ("hex".into(), hex::encode(b)),
        ("HEX".into(), hex::encode_upper(b)),
    ]
}

fn scan(haystack: &[u8], secrets: &[(&str, String)], place: &str) {
    for (name, secret) in secrets {
        for (encoding, needle) in encodings(secret) {
            let found = haystack
                .windows(needle.len())
                .any(|w| w == needle.as_bytes());
            assert!(!found, "{name} ({encoding}) leaked into {place}");
        }
    }
}

struct Agent {
    responses: Vec<u8>,
}

impl Agent {
    async fn record(&mut self, resp: reqwest::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        for (k, v) in resp.headers() {
            self.responses.extend_from_slice(k.as_str().as_bytes());
            self.responses.extend_from_slice(v.as_bytes());
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        self.responses.extend_from_slice(&bytes);
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

#[tokio::test]
async fn no_secret_reaches_logs_files_responses_or_errors() {
    let WithUpstream {
        server,
        upstream,
        data,
        dir: _dir,
    } = ServerProcess::start_with_upstream("canary upstream CA", "requests = true", &[], "trace")
        .await;
    let base = server.admin.clone();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut errors = Vec::<u8>::new();
    let mut agent = Agent {
        responses: Vec::new(),
    };

    let call = |method: &str, path: &str, token: Option<&str>, body: Option<Value>| {
        let mut req = http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{base}{path}"),
        );
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };
    let setup = std::fs::read_to_string(data.join("setup-token"))
        .unwrap()
        .trim()
        .to_owned();
    let resp = call(
        "POST",
        "/v1/auth/register",
        None,
        Some(json!({ "email": OWNER_EMAIL, "password": OWNER_PASSWORD, "setup_token": setup })),
    )
    .await
    .unwrap();
    let owner: Value = resp.json().await.unwrap();
    let owner = owner["token"].as_str().unwrap().to_owned();
    call(
        "POST",
        "/v1/vaults",
        Some(&owner),
        Some(json!({ "name": "canary" })),
    )
    .await
    .unwrap();
    call(
        "PUT",
        "/v1/vaults/canary/credentials",
        Some(&owner),
        Some(json!({
            "credentials": { "STRIPE_KEY": CREDENTIAL },
            "metadata": { "STRIPE_KEY": { "team.owner": METADATA } },
        })),
    )
    .await
    .unwrap();
    // One credential of every type that holds something secret besides a plain string.
    let cert_key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["canary.example.test".to_owned()])
        .unwrap()
        .self_signed(&cert_key)
        .unwrap();
    let cert_key_pem = cert_key.serialize_pem();
    let ssh_pem = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ssh/ed25519"),
    )
    .unwrap();
    let typed = call(
        "PUT",
        "/v1/vaults/canary/credentials",
        Some(&owner),
        Some(json!({
            "credentials": {
                "DB_PASSWORD": TYPED_PASSWORD,
                "DB_URL": format!("postgres://app:{DB_PASSWORD}@db.example.test/app"),
                "GH_OAUTH": json!({
                    "access_token": "gho_CanaryAccess",
                    "refresh_token": OAUTH_REFRESH,
                    "client_id": "canary-client",
                    "client_secret": OAUTH_SECRET,
                    "token_url": "https://auth.example.test/token"
                }).to_string(),
                "CLIENT_CERT": json!({ "certificate": cert.pem(), "private_key": cert_key_pem }).to_string(),
                "DEPLOY_KEY": ssh_pem,
            },
            "types": {
                "DB_PASSWORD": "password", "DB_URL": "database_url", "GH_OAUTH": "oauth",
                "CLIENT_CERT": "certificate", "DEPLOY_KEY": "ssh_key",
            },
            "metadata": { "DB_PASSWORD": { "username": "canary-user" } },
        })),
    )
    .await
    .unwrap();
    assert_eq!(typed.status(), 200);
    // A second version, so the scan covers rotated versions and re-sealed metadata too.
    let rotated = call(
        "POST",
        "/v1/vaults/canary/credentials/STRIPE_KEY/rotate",
        Some(&owner),
        Some(json!({ "value": CREDENTIAL, "metadata": { "team.owner": METADATA } })),
    )
    .await
    .unwrap();
    assert_eq!(rotated.status(), 200);
    let services = json!({ "services": [
        { "name": "stripe", "host": "api.example.test", "auth": { "type": "bearer", "token": "STRIPE_KEY" } },
        { "name": "ghost", "host": "ghost.example.test", "auth": { "type": "bearer", "token": "STRIPE_KEY" },
          "substitutions": [{ "placeholder": "__STRIPE_KEY__", "key": "STRIPE_KEY", "in": [{ "path": 1, "prefix": "bot" }, { "query": "k" }, { "header": "X-Token" }, { "json": "/t" }] }] }
    ] });
    call(
        "PUT",
        "/v1/vaults/canary/services",
        Some(&owner),
        Some(services),
    )
    .await
    .unwrap();
    let created: Value = call(
        "POST",
        "/v1/agents",
        Some(&owner),
        Some(json!({ "name": "canary-bot", "vaults": [{ "vault": "canary", "role": "proxy" }] })),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let agent_token = created["token"].as_str().unwrap().to_owned();
    let scoped: Value = call(
        "POST",
        "/v1/vaults/canary/tokens",
        Some(&owner),
        Some(json!({})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let scoped = scoped["token"].as_str().unwrap().to_owned();

    // Bad input that carries secrets in the wrong places: errors must not echo them.
    for body in [
        json!({ "credentials": CREDENTIAL }),
        json!({ "credentials": { "lower_case": CREDENTIAL } }),
        json!({ "credentials": { "OK": CREDENTIAL }, "extra": CREDENTIAL }),
    ] {
        let resp = call(
            "PUT",
            "/v1/vaults/canary/credentials",
            Some(&owner),
            Some(body),
        )
        .await
        .unwrap();
        errors.extend_from_slice(&resp.bytes().await.unwrap());
    }
    let resp = call("GET", "/v1/vaults", Some(CREDENTIAL), None)
        .await
        .unwrap();
    errors.extend_from_slice(&resp.bytes().await.unwrap());

    // The agent: successes and every kind of proxy error.
    let proxy_ca = reqwest::Certificate::from_pem(
        http.get(format!("{base}/v1/ca.pem"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let proxied = |token: &str| {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(format!("http://{token}:canary@{}", server.proxy)).unwrap())
            .tls_certs_only([proxy_ca.clone()])
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    for token in [&scoped, &agent_token] {
        let c = proxied(token);
        for url in [
            "https://api.example.test/v1/charges?limit=1",
            "https://api.example.test/redirect",
            "https://api.example.test/status/401",
            "https://ghost.example.test/bot__STRIPE_KEY__/x?k=__STRIPE_KEY__",
        ] {
            if let Ok(resp) = c.get(url).header("x-token", "__STRIPE_KEY__").send().await {
                agent.record(resp).await;
            }
        }
        if let Ok(resp) = c
            .post("https://ghost.example.test/echo-body")
            .header("content-type", "application/json")
            .body("{\"t\":\"__STRIPE_KEY__\"}")
            .send()
            .await
        {
            let (status, _) = agent.record(resp).await;
            assert_eq!(status, 200);
        }
    }
    // Revoked/bad tokens and another vault.
    let bad = proxied("av_run_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    if let Ok(resp) = bad.get("https://api.example.test/").send().await {
        agent.record(resp).await;
    }
    assert!(upstream.requests().iter().any(|r| r.header("authorization").as_deref() == Some(&*format!("Bearer {CREDENTIAL}"))), "the credential was used");

    // Proposals: an agent-supplied value and an approver-supplied value.
    let (status, created) = agent
        .record(
            call(
                "POST",
                "/v1/proposals",
                Some(&scoped),
                Some(json!({ "credentials": [{ "action": "set", "key": "GH_TOKEN", "value": PROPOSED, "metadata": { "note": PROPOSED_METADATA } }, { "action": "set", "key": "SLACK_TOKEN" }] })),
            )
            .await
            .unwrap(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let shown: Value = call("GET", "/v1/vaults/canary/proposals/1", Some(&owner), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = call(
        "POST",
        "/v1/vaults/canary/proposals/1/approve",
        Some(&owner),
        Some(json!({ "values": { "SLACK_TOKEN": APPROVED }, "approval_hash": shown["approval_hash"] })),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, polled) = agent
        .record(
            call(
                "GET",
                &format!("/v1/proposals/{}", created["id"].as_str().unwrap()),
                Some(&scoped),
                None,
            )
            .await
            .unwrap(),
        )
        .await;
    assert_eq!(polled["status"], "applied");
    agent
        .record(
            call("GET", "/v1/discover", Some(&scoped), None)
                .await
                .unwrap(),
        )
        .await;
    agent
        .record(
            call("GET", "/v1/vaults/canary/credentials", Some(&scoped), None)
                .await
                .unwrap(),
        )
        .await;
    agent
        .record(
            call(
                "GET",
                "/v1/vaults/canary/credentials?reveal=true",
                Some(&scoped),
                None,
            )
            .await
            .unwrap(),
        )
        .await;
    // Logs and audit are readable by members and must be metadata only.
    let logs = call("GET", "/v1/vaults/canary/logs", Some(&owner), None)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let audit = call("GET", "/v1/vaults/canary/audit", Some(&owner), None)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();

    let log = server.stop().await;
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the server really logged at trace level"
    );
    // Every proxied request and agent connection has a span, so its lines can be filtered
    // together; the scan below shows the spans carry no secret.
    let plain = strip_ansi(&log);
    assert!(
        plain.lines().any(|l| l.contains("request{")
            && l.contains("vault=canary")
            && l.contains("status=")
            && l.contains("request answered")),
        "request spans name the vault and the status"
    );
    assert!(
        plain
            .lines()
            .any(|l| l.contains("connection{") && l.contains("mode=\"intercept\"")),
        "intercepted connections have a span"
    );
    // `log.requests`: one line per proxied request, scanned with everything else below.
    assert!(
        plain
            .lines()
            .any(|l| l.contains("proxied request") && l.contains("vault=\"canary\"")),
        "request lines name the vault"
    );
    // Every admin action is one `info` line: who, what, which target; never a value (the scan
    // below covers these lines with the rest of the log).
    let admin_line = |action: &str| {
        plain
            .lines()
            .find(|l| l.contains("admin action") && l.contains(&format!("action=\"{action}\"")))
            .unwrap_or_else(|| panic!("no admin-action line for {action}"))
            .to_owned()
    };
    let set = admin_line("credential.set");
    assert!(
        set.contains("INFO")
            && set.contains("actor=\"user\"")
            && set.contains("vault=\"canary\"")
            && set.contains("target=STRIPE_KEY"),
        "{set}"
    );
    assert!(admin_line("proposal.create").contains("target=#1"));
    assert!(admin_line("proposal.approve").contains("target=#1"));
    for action in [
        "vault.create",
        "service.replace",
        "agent.create",
        "token.mint",
    ] {
        admin_line(action);
    }
    let secrets: Vec<(&str, String)> = vec![
        ("the credential", CREDENTIAL.to_owned()),
        ("the agent-proposed value", PROPOSED.to_owned()),
        ("the approver-supplied value", APPROVED.to_owned()),
        ("a metadata value", METADATA.to_owned()),
        ("metadata an agent proposed", PROPOSED_METADATA.to_owned()),
        ("a password credential", TYPED_PASSWORD.to_owned()),
        ("a database URL's password", DB_PASSWORD.to_owned()),
        ("an OAuth refresh token", OAUTH_REFRESH.to_owned()),
        ("an OAuth client secret", OAUTH_SECRET.to_owned()),
        ("the master password", MASTER_PASSWORD.to_owned()),
        ("the owner's password", OWNER_PASSWORD.to_owned()),
        ("the owner's session token", owner.clone()),
        ("the agent token", agent_token.clone()),
        ("the scoped token", scoped.clone()),
        ("the setup token", setup.clone()),
    ];
    // Every line of the certificate's and the SSH key's private material.
    let key_lines: Vec<String> = pem_body_lines(&cert_key_pem, 0)
        .into_iter()
        .chain(pem_body_lines(&ssh_pem, 2))
        .collect();
    assert!(key_lines.len() >= 3);
    // Inserted before the two passwords: files and the agent's responses are scanned for
    // everything up to them, and for the four tokens after them only in logs and errors.
    let before_passwords = secrets.len() - 6;
    let mut secrets = secrets;
    for (i, line) in key_lines.into_iter().enumerate() {
        secrets.insert(before_passwords + i, ("a private key's line", line));
    }
    let values = secrets.len() - 4;
    scan(log.as_bytes(), &secrets, "the server log");
    scan(&errors, &secrets, "API error messages");
    scan(&logs, &secrets, "the request log");
    scan(&audit, &secrets, "the audit log");
    for file in walk(&data) {
        let bytes = std::fs::read(&file).unwrap();
        scan(&bytes, &secrets[..values], &file.display().to_string());
    }
    // Responses the agent received may carry its own token only in nothing we echo back.
    let agent_visible = &secrets[..values];
    scan(
        &agent.responses,
        agent_visible,
        "responses the agent received",
    );
}

/// The log without terminal colour codes (`ESC [ ... m`), as a person filtering it would read it.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
