//! `agent-vault run` with real clients as the child (curl, Python requests and httpx), and the
//! confinement that keeps the child away from the CLI's login, the data directory and key files:
//! every way an agent could read a value under `run` is tried, and tried again with
//! `--confine=off` to show the attempt would have worked.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::{CliOutput, TestApp, eventually, program, spawn_app_for_run};

const SECRET: &str = "sk_live_run_secret_4242";

async fn app_with_service() -> TestApp {
    spawn_app_for_run("runner", SECRET).await
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
            &run_sh("stat -c %a \"$NODE_EXTRA_CA_CERTS\" \"$(dirname \"$NODE_EXTRA_CA_CERTS\")\""),
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

/// `agent-vault run` arguments for a shell `script` under the `runner` vault.
fn run_sh(script: &str) -> [&str; 7] {
    ["run", "--vault", "runner", "--", "sh", "-c", script]
}

/// Runs the CLI like `TestApp::cli_env`, from the working directory `cwd`.
async fn cli_in(app: &TestApp, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-vault"));
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", app.home.path())
        .env("AGENT_VAULT_ADDR", &app.admin)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    CliOutput::of(cmd.output()).await
}

/// The exit code the script printed as `attempt NAME rc=N`.
fn attempt(out: &CliOutput, name: &str) -> i32 {
    let marker = format!("attempt {name} rc=");
    out.stdout
        .lines()
        .find_map(|l| l.split_once(&marker).map(|(_, rc)| rc))
        .unwrap_or_else(|| panic!("no attempt {name} in {out:?}"))
        .trim()
        .parse()
        .unwrap()
}

/// Every way the README's tools offer an agent to read a value: the CLI as the agent and with the
/// owner's login, `--reveal` with every token found in any readable file, the session file, the
/// data directory, and the memory of the `run` process that holds the login.
const STEAL: &str = r#"
AV="$AV_BIN"
"$AV" vault credential get STRIPE_KEY --vault runner; echo "attempt get-as-agent rc=$?"
env -u AGENT_VAULT_TOKEN "$AV" vault credential get STRIPE_KEY --vault runner; echo "attempt get-with-login rc=$?"
"$AV" vault credential list --reveal --vault runner; echo "attempt reveal-as-agent rc=$?"
cat "$HOME/.agent-vault/session.json"; echo "attempt session-file rc=$?"
ls "$HOME/.agent-vault"; echo "attempt session-dir rc=$?"
cat "$DATA/agent-vault.db" > /dev/null; echo "attempt database rc=$?"
ls "$DATA"; echo "attempt data-dir rc=$?"
head -c 1 "/proc/$PPID/mem" > /dev/null; echo "attempt run-memory rc=$?"
found=$(grep -rhoa 'av_[a-z]*_[A-Za-z0-9_-]\{43\}' "$HOME" "$DATA" . 2>/dev/null | sort -u)
echo "tokens found: $(printf '%s' "$found" | grep -c .)"
for t in $found; do
  AGENT_VAULT_TOKEN="$t" "$AV" vault credential list --reveal --vault runner
  if command -v curl > /dev/null; then
    curl -sS -H "Authorization: Bearer $t" "$AGENT_VAULT_ADDR/v1/vaults/runner/credentials?reveal=true"
  fi
done
if command -v curl > /dev/null; then
  curl -sS -H "Authorization: Bearer $AGENT_VAULT_TOKEN" "$AGENT_VAULT_ADDR/v1/vaults/runner/credentials?reveal=true"
fi
exit 0
"#;

async fn steal(app: &TestApp, confine: &[&str]) -> CliOutput {
    let data = app.config.data_dir.to_str().unwrap().to_owned();
    let mut args = vec!["run", "--vault", "runner"];
    args.extend_from_slice(confine);
    args.extend_from_slice(&["--", "sh", "-c", STEAL]);
    let out = cli_in(
        app,
        app.home.path(),
        &args,
        &[
            ("AV_BIN", env!("CARGO_BIN_EXE_agent-vault")),
            ("DATA", &data),
            // Where this user's server keeps its data: `run` denies it too.
            ("AGENT_VAULT_DATA_DIR", &data),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    out
}

#[tokio::test]
async fn under_run_no_tool_file_or_token_yields_a_credential_value() {
    let app = app_with_service().await;
    let out = steal(&app, &[]).await;
    for name in [
        "get-as-agent",
        "get-with-login",
        "reveal-as-agent",
        "session-file",
        "session-dir",
        "database",
        "data-dir",
        "run-memory",
    ] {
        assert_ne!(attempt(&out, name), 0, "{name} must fail: {out:?}");
    }
    assert!(
        out.stdout.contains("tokens found: 0"),
        "no readable file holds a token: {out:?}"
    );
    assert!(
        out.stderr.contains("session.json: Permission denied"),
        "the CLI under run cannot read the login: {out:?}"
    );
    assert!(
        out.stderr.contains("/mem' for reading: Permission denied"),
        "the run process's memory is out of reach: {out:?}"
    );
    assert!(
        !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
        "canary: no credential value in anything the child printed: {out:?}"
    );
    assert_no_live_run_tokens(&app).await;

    // The same attempts without confinement get the value: the test above can fail.
    let open = steal(&app, &["--confine=off"]).await;
    assert_eq!(attempt(&open, "get-with-login"), 0, "{open:?}");
    assert_eq!(attempt(&open, "session-file"), 0, "{open:?}");
    assert_eq!(attempt(&open, "database"), 0, "{open:?}");
    assert!(open.stdout.contains(SECRET), "{open:?}");
    assert!(!open.stdout.contains("tokens found: 0"), "{open:?}");
}

const WRITES: &str = r#"
echo a > in-cwd; echo "attempt cwd rc=$?"
echo a > "$TMPDIR/in-tmp"; echo "attempt tmp rc=$?"
echo a > "$ELSEWHERE/out"; echo "attempt elsewhere rc=$?"
cat "$ELSEWHERE/kept" > /dev/null; echo "attempt read-elsewhere rc=$?"
echo a > /dev/null; echo "attempt dev-null rc=$?"
cat "$HOME/.agent-vault/session.json" > /dev/null; echo "attempt session-file rc=$?"
"#;

#[tokio::test]
async fn strict_confinement_writes_only_in_the_working_and_temporary_directories() {
    let app = app_with_service().await;
    let (work, tmp, elsewhere) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    std::fs::write(elsewhere.path().join("kept"), "x").unwrap();
    let run = async |confine: &str| {
        let out = cli_in(
            &app,
            work.path(),
            &[
                "run", "--vault", "runner", confine, "--", "sh", "-c", WRITES,
            ],
            &[
                ("TMPDIR", tmp.path().to_str().unwrap()),
                ("ELSEWHERE", elsewhere.path().to_str().unwrap()),
            ],
        )
        .await;
        assert_eq!(out.code, 0, "{out:?}");
        out
    };
    let strict = run("--confine=strict").await;
    for (name, rc) in [
        ("cwd", 0),
        ("tmp", 0),
        ("read-elsewhere", 0),
        ("dev-null", 0),
    ] {
        assert_eq!(attempt(&strict, name), rc, "{name}: {strict:?}");
    }
    assert_ne!(attempt(&strict, "elsewhere"), 0, "{strict:?}");
    assert_ne!(attempt(&strict, "session-file"), 0, "{strict:?}");
    assert!(work.path().join("in-cwd").exists() && tmp.path().join("in-tmp").exists());
    assert!(!elsewhere.path().join("out").exists());

    // `paths` (the default) leaves writes alone: the strict test above can fail.
    let paths = run("--confine=paths").await;
    assert_eq!(attempt(&paths, "elsewhere"), 0, "{paths:?}");
    assert_ne!(attempt(&paths, "session-file"), 0, "{paths:?}");
}

/// What one run's command may do to run files: read its own, touch no other run's (whose Node
/// preload and Java agent another `node` or `java` would load with that run's token), and never
/// see the server's database URL.
const RUN_FILES: &str = r#"
cat "$NODE_EXTRA_CA_CERTS" > /dev/null; echo "attempt read-own rc=$?"
echo tampered >> "$NODE_EXTRA_CA_CERTS"; echo "attempt write-own rc=$?"
cat "$OTHER/node-preload.cjs"; echo "attempt read-other rc=$?"
echo 'planted()' >> "$OTHER/node-preload.cjs"; echo "attempt plant-other rc=$?"
echo "database url: ${DATABASE_URL:-none}"
"#;

#[tokio::test]
async fn a_confined_command_reads_its_own_run_files_and_no_other_runs_or_database_url() {
    let app = app_with_service().await;
    // Another run's directory, as a concurrent `run` would have made it.
    let other = app
        .home
        .path()
        .join(".agent-vault/runs/agent-vault-run-other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("node-preload.cjs"), "original preload\n").unwrap();
    let other_s = other.to_str().unwrap().to_owned();
    let db_url = "postgres://av:db-password-canary@db.example/av";
    let go = |confine: &'static [&'static str]| {
        let mut args = vec!["run", "--vault", "runner"];
        args.extend_from_slice(confine);
        args.extend_from_slice(&["--", "sh", "-c", RUN_FILES]);
        let (app, other_s) = (&app, other_s.clone());
        async move {
            cli_in(
                app,
                app.home.path(),
                &args,
                &[("OTHER", other_s.as_str()), ("DATABASE_URL", db_url)],
            )
            .await
        }
    };
    let confined = go(&[]).await;
    assert_eq!(attempt(&confined, "read-own"), 0, "{confined:?}");
    assert_ne!(attempt(&confined, "write-own"), 0, "{confined:?}");
    assert_ne!(attempt(&confined, "read-other"), 0, "{confined:?}");
    assert_ne!(attempt(&confined, "plant-other"), 0, "{confined:?}");
    assert!(
        confined.stdout.contains("database url: none"),
        "{confined:?}"
    );
    assert!(!format!("{confined:?}").contains("db-password-canary"));
    assert_eq!(
        std::fs::read_to_string(other.join("node-preload.cjs")).unwrap(),
        "original preload\n"
    );
    // Unconfined the same script succeeds, so the checks above can fail.
    let open = go(&["--confine=off"]).await;
    assert_eq!(attempt(&open, "plant-other"), 0, "{open:?}");
}

#[tokio::test]
async fn deny_adds_paths_to_the_confinement() {
    let app = app_with_service().await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("agent.key");
    std::fs::write(&key, "private").unwrap();
    let key = key.to_str().unwrap();
    let script = format!("cat {key}; echo \"attempt key rc=$?\"");
    let denied = app
        .cli(
            &[
                "run", "--vault", "runner", "--deny", key, "--", "sh", "-c", &script,
            ],
            None,
        )
        .await;
    assert_ne!(attempt(&denied, "key"), 0, "{denied:?}");
    assert!(!denied.stdout.contains("private"), "{denied:?}");
    let allowed = app
        .cli(
            &["run", "--vault", "runner", "--", "sh", "-c", &script],
            None,
        )
        .await;
    assert_eq!(attempt(&allowed, "key"), 0, "{allowed:?}");
}

#[tokio::test]
async fn run_refuses_without_landlock_unless_told_to_run_unconfined() {
    let app = app_with_service().await;
    let no_landlock = [("AGENT_VAULT_TEST_NO_LANDLOCK", "1")];
    let refused = app
        .cli_env(
            &["run", "--vault", "runner", "--", "true"],
            None,
            &no_landlock,
        )
        .await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert_eq!(refused.stderr.trim().lines().count(), 1, "{refused:?}");
    for words in ["Landlock", "--confine=off", "--no-confine"] {
        assert!(refused.stderr.contains(words), "{words}: {refused:?}");
    }
    let tokens = app.ok("GET", "/v1/vaults/runner/tokens", None).await;
    assert!(
        tokens.as_array().unwrap().iter().all(|t| t["label"] == ""),
        "no run token minted before the refusal: {tokens}"
    );
    for flag in ["--no-confine", "--confine=off"] {
        let out = app
            .cli_env(
                &["run", "--vault", "runner", flag, "--", "true"],
                None,
                &no_landlock,
            )
            .await;
        assert_eq!(out.code, 0, "{flag}: {out:?}");
    }
    let both = app
        .cli(
            &[
                "run",
                "--vault",
                "runner",
                "--no-confine",
                "--confine=strict",
                "--",
                "true",
            ],
            None,
        )
        .await;
    assert_eq!(both.code, 2, "{both:?}");
}

#[tokio::test]
async fn a_confined_command_gets_forwarded_signals_and_its_exit_code_passes_through() {
    let app = app_with_service().await;
    let work = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-vault"))
        .args(run_sh(
            "trap 'exit 42' TERM; echo > started; while :; do sleep 0.05; done",
        ))
        .current_dir(work.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", app.home.path())
        .env("AGENT_VAULT_ADDR", &app.admin)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = work.path().join("started");
    eventually(Duration::from_secs(30), async || {
        started.exists().then_some(())
    })
    .await
    .expect("the confined command starts");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("run ends after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(42));
    assert_no_live_run_tokens(&app).await;
}

const NESTED: &str = r#"
"$AV_BIN" run --vault runner -- sh -c '
  cat "$HOME/.agent-vault/session.json" > /dev/null; echo "attempt inner-session rc=$?"
  cat "$HOME/notes" > /dev/null; echo "attempt inner-read rc=$?"'
echo "attempt inner-run rc=$?"
"$AV_BIN" run --vault runner --deny "$HOME/notes" -- true; echo "attempt inner-deny rc=$?"
"#;

#[tokio::test]
async fn run_inside_a_confined_run_keeps_the_outer_denials_and_refuses_what_it_cannot_add() {
    let app = app_with_service().await;
    std::fs::write(app.home.path().join("notes"), "x").unwrap();
    let out = app
        .cli_env(
            &["run", "--vault", "runner", "--", "sh", "-c", NESTED],
            None,
            &[("AV_BIN", env!("CARGO_BIN_EXE_agent-vault"))],
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(attempt(&out, "inner-run"), 0, "{out:?}");
    assert_eq!(attempt(&out, "inner-read"), 0, "{out:?}");
    assert_ne!(attempt(&out, "inner-session"), 0, "{out:?}");
    // $HOME cannot be listed inside the outer confinement, so the inner one cannot single out
    // $HOME/notes, which the outer one allows: it refuses instead of running unconfined there.
    assert_eq!(attempt(&out, "inner-deny"), 1, "{out:?}");
    assert!(out.stderr.contains("cannot be listed"), "{out:?}");
}
