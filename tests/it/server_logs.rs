//! What the server process writes, as an operator's log collector reads it: no colour codes
//! when nobody's terminal reads it, one JSON object per line when `log.format = "json"` (the
//! start banner included), and one line per proxied request only with `log.requests = true`,
//! never carrying a value, a query string or a header value.

use serde_json::{Value, json};

use crate::support::process::{ServerProcess, WithUpstream};
use crate::support::{OWNER_EMAIL, OWNER_PASSWORD};

const CREDENTIAL: &str = "sk_live_logcanary_7c1e";
const QUERY_CANARY: &str = "q-canary-3f9a";
const HEADER_CANARY: &str = "h-canary-8b2d";

/// What a server wrote while it registered an owner, set up a vault and proxied one request.
struct Run {
    stdout: Vec<String>,
    stderr: String,
}

/// Starts a server with `[log]` settings `log_toml` and env `env`, proxies one request carrying
/// canaries in its query and headers, stops the server with SIGTERM, and returns its output.
async fn run_server(log_toml: &str, env: &[(&str, &str)], level: &str) -> Run {
    let WithUpstream {
        server,
        upstream,
        data,
        dir: _dir,
    } = ServerProcess::start_with_upstream("server-log upstream CA", log_toml, env, level).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = server.admin.clone();
    let call = async |method: &str, path: &str, token: Option<&str>, body: Value| -> Value {
        let mut req = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert!(
            resp.status().is_success(),
            "{method} {path}: {}",
            resp.status()
        );
        resp.json().await.unwrap_or(Value::Null)
    };
    let setup = std::fs::read_to_string(data.join("setup-token")).unwrap();
    let owner = call(
        "POST",
        "/v1/auth/register",
        None,
        json!({ "email": OWNER_EMAIL, "password": OWNER_PASSWORD, "setup_token": setup.trim() }),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let owner = Some(owner.as_str());
    call("POST", "/v1/vaults", owner, json!({ "name": "logs" })).await;
    call(
        "PUT",
        "/v1/vaults/logs/credentials",
        owner,
        json!({ "credentials": { "STRIPE_KEY": CREDENTIAL } }),
    )
    .await;
    call(
        "PUT",
        "/v1/vaults/logs/services",
        owner,
        json!({ "services": [{ "name": "stripe", "host": "api.example.test", "auth": { "type": "bearer", "token": "STRIPE_KEY" } }] }),
    )
    .await;
    let token = call("POST", "/v1/vaults/logs/tokens", owner, json!({})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ca_pem = crate::support::fetch_text(http.get(format!("{base}/v1/ca.pem"))).await;
    let agent = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{token}:logs@{}", server.proxy)).unwrap())
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let resp = agent
        .get(format!(
            "https://api.example.test/echo?secret={QUERY_CANARY}"
        ))
        .header("x-private", HEADER_CANARY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        upstream.last().header("authorization").as_deref(),
        Some(format!("Bearer {CREDENTIAL}").as_str())
    );
    let stdout = server.stdout_lines();
    let stderr = server.stop().await;
    Run { stdout, stderr }
}

#[track_caller]
fn assert_no_canary(text: &str) {
    for canary in [CREDENTIAL, QUERY_CANARY, HEADER_CANARY] {
        assert!(!text.contains(canary), "{canary} in the log: {text}");
    }
}

#[tokio::test]
async fn a_piped_log_has_no_colour_codes_and_no_request_lines_unless_asked() {
    let run = run_server("", &[], "info").await;
    assert!(
        run.stderr.contains("INFO"),
        "the server logged at info: {}",
        run.stderr
    );
    assert!(
        !run.stderr.contains('\u{1b}'),
        "colour codes in a log nobody's terminal reads: {:?}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("proxied request"),
        "request lines only with log.requests: {}",
        run.stderr
    );
    assert!(
        run.stdout
            .iter()
            .any(|l| l.starts_with("admin API: http://"))
    );
    assert!(
        run.stdout.iter().any(|l| l.contains("No owner yet")),
        "{:?}",
        run.stdout
    );
    assert_no_canary(&run.stderr);
}

#[tokio::test]
async fn json_format_makes_every_line_json_and_request_lines_carry_no_secret() {
    // At warn, yet the banner and the asked-for request lines still appear.
    let run = run_server("format = \"json\"\nrequests = true", &[], "warn").await;
    let stderr: Vec<&str> = run.stderr.lines().collect();
    let parse = |line: &str| -> Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    };
    for line in run
        .stdout
        .iter()
        .map(String::as_str)
        .chain(stderr.iter().copied())
    {
        parse(line);
    }
    let banner: Vec<Value> = run.stdout.iter().map(|l| parse(l)).collect();
    assert_eq!(
        banner[0]["fields"]["message"], "agent-vault is running",
        "{banner:?}"
    );
    assert!(
        banner[0]["fields"]["admin_api"]
            .as_str()
            .unwrap()
            .starts_with("http://")
    );
    assert!(
        banner[1]["fields"]["command"]
            .as_str()
            .unwrap()
            .contains("auth register"),
        "{banner:?}"
    );
    // The warning about the master password in the environment (the harness passes it so) is
    // a JSON line too.
    assert!(
        stderr
            .iter()
            .any(|l| parse(l)["level"] == "WARN" && l.contains("AGENT_VAULT_MASTER_PASSWORD")),
        "{stderr:?}"
    );
    let requests: Vec<Value> = stderr
        .iter()
        .map(|l| parse(l))
        .filter(|e| e["fields"]["message"] == "proxied request")
        .collect();
    assert_eq!(
        requests.len(),
        1,
        "one line per proxied request: {stderr:?}"
    );
    let fields = &requests[0]["fields"];
    assert_eq!(requests[0]["level"], "INFO");
    assert_eq!(fields["vault"], "logs");
    assert_eq!(fields["actor"], "scoped");
    assert_eq!(fields["method"], "GET");
    assert_eq!(fields["host"], "api.example.test:443");
    assert_eq!(fields["service"], "stripe");
    assert_eq!(fields["status"], 200);
    assert!(fields["latency_ms"].is_u64(), "{fields}");
    assert!(!run.stderr.contains("/echo"), "no path in request lines");
    assert_no_canary(&run.stderr);
    assert_no_canary(&run.stdout.join("\n"));
}
