//! `agent-vault run` with real clients as the child: curl, Python requests and httpx.

use serde_json::Value;

use crate::support::{TestApp, spawn_app};

const SECRET: &str = "sk_live_run_secret_4242";

async fn app_with_service() -> TestApp {
    let app = spawn_app().await;
    app.stripe_vault("runner", SECRET).await;
    app.cli_login().await;
    app
}

/// The absolute path of a program, or `None` (with a notice) when it is not installed.
fn program(name: &str) -> Option<String> {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if path.is_empty() {
        crate::support::missing_dependency(&format!("the program {name}"));
        return None;
    }
    Some(path)
}

/// The real interpreter behind a pyenv shim, with the given modules importable.
fn python_with(modules: &str) -> Option<String> {
    let python = program("python3")?;
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            &format!("import sys, {modules}; print(sys.executable)"),
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        crate::support::missing_dependency(&format!("the python modules {modules}"));
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn assert_no_live_run_tokens(app: &TestApp) {
    let tokens = app.ok("GET", "/v1/vaults/runner/tokens", None).await;
    let live_runs: Vec<_> = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["label"].as_str().unwrap().starts_with("run:"))
        .collect();
    assert!(
        live_runs.is_empty(),
        "the run's token was revoked when the child exited: {live_runs:?}"
    );
}

#[tokio::test]
async fn run_curl_gets_the_credential_attached_and_never_sees_it() {
    let Some(curl) = program("curl") else { return };
    let app = app_with_service().await;
    let out = app
        .cli(
            &[
                "run",
                "--vault",
                "runner",
                "--",
                &curl,
                "-sS",
                "https://api.example.test/v1/charges?limit=3",
            ],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let body: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(body["path"], "/v1/charges?limit=3");
    let seen = app.upstream.last();
    assert_eq!(
        seen.header("authorization").unwrap(),
        format!("Bearer {SECRET}")
    );
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
    assert_no_live_run_tokens(&app).await;
    let rows = app.wait_for_logs("runner", 1).await;
    assert_eq!(rows[0]["path"], "/v1/charges");
    assert_eq!(rows[0]["credential_keys"][0], "STRIPE_KEY");
    let logs = app.cli(&["vault", "logs", "--vault", "runner"], None).await;
    assert!(
        logs.stdout.contains("/v1/charges") && logs.stdout.contains("STRIPE_KEY"),
        "{logs:?}"
    );
}

#[tokio::test]
async fn run_sets_the_environment_and_passes_the_exit_code() {
    let app = app_with_service().await;
    let env = app
        .cli(&["run", "--vault", "runner", "--", "env"], None)
        .await;
    assert_eq!(env.code, 0, "{env:?}");
    for var in [
        "HTTPS_PROXY=http://av_run_",
        "https_proxy=http://av_run_",
        "HTTP_PROXY=",
        "http_proxy=",
        "NO_PROXY=",
        "SSL_CERT_FILE=",
        "REQUESTS_CA_BUNDLE=",
        "CURL_CA_BUNDLE=",
        "NODE_EXTRA_CA_CERTS=",
        "NODE_USE_ENV_PROXY=1",
        "GIT_SSL_CAINFO=",
        "AGENT_VAULT_ADDR=",
        "AGENT_VAULT_TOKEN=av_run_",
        "AGENT_VAULT_VAULT=runner",
    ] {
        assert!(
            env.stdout.lines().any(|l| l.starts_with(var)),
            "missing {var} in {}",
            env.stdout
        );
    }
    assert!(
        !env.stdout.contains(SECRET),
        "no credential value in the child's environment"
    );
    // The CA files live in the run's own directory, which is gone once the run ends: their
    // mode is read from inside the run.
    let mode = app
        .cli(
            &[
                "run",
                "--vault",
                "runner",
                "--",
                "sh",
                "-c",
                "stat -c %a \"$NODE_EXTRA_CA_CERTS\" \"$(dirname \"$NODE_EXTRA_CA_CERTS\")\"",
            ],
            None,
        )
        .await;
    assert_eq!(mode.stdout, "600\n700\n", "{mode:?}");
    let failed = app
        .cli(
            &["run", "--vault", "runner", "--", "sh", "-c", "exit 7"],
            None,
        )
        .await;
    assert_eq!(failed.code, 7, "{failed:?}");
    let missing = app
        .cli(
            &["run", "--vault", "runner", "--", "/no/such/program"],
            None,
        )
        .await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("cannot run"), "{missing:?}");
    assert_no_live_run_tokens(&app).await;
    let token = app
        .cli(
            &[
                "vault", "token", "--vault", "runner", "--ttl", "10m", "--json",
            ],
            None,
        )
        .await;
    assert_eq!(token.code, 0, "{token:?}");
    let v = token.json();
    assert!(v["token"].as_str().unwrap().starts_with("av_run_"));
    assert!(v["expires_at"].as_i64().is_some());
}

async fn python_client(module: &str, code: &str) {
    let Some(python) = python_with(module) else {
        return;
    };
    let app = app_with_service().await;
    let out = app
        .cli(
            &["run", "--vault", "runner", "--", &python, "-c", code],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("200"), "{out:?}");
    assert_eq!(
        app.upstream.last().header("authorization").unwrap(),
        format!("Bearer {SECRET}")
    );
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
}

#[tokio::test]
async fn run_python_requests() {
    python_client("requests", "import requests; r = requests.get('https://api.example.test/py/requests'); print(r.status_code, r.json()['path'])").await;
}

#[tokio::test]
async fn run_python_httpx() {
    python_client("httpx", "import httpx; r = httpx.get('https://api.example.test/py/httpx'); print(r.status_code, r.json()['path'])").await;
}
