//! The server as a separate process (for kill -9, and to capture everything it logs).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{Alpn, FakeUpstream, MASTER_PASSWORD, TestCa, install_crypto};

/// A running `agent-vault server` process.
pub(crate) struct ServerProcess {
    pub child: Child,
    pub admin: String,
    pub proxy: String,
    pub data_dir: PathBuf,
    stderr: Option<tokio::task::JoinHandle<String>>,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// A server process whose only upstream is a fake HTTPS one for `*.example.test`, trusted
/// through its own CA file.
pub(crate) struct WithUpstream {
    pub server: ServerProcess,
    pub upstream: FakeUpstream,
    /// The server's data directory.
    pub data: PathBuf,
    /// Holds the data directory and config; dropped last.
    pub dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts a server (config file: request log flushed every 20 ms, `[log]` settings
    /// `log_toml`) whose `*.example.test` upstream is a fake one signed by a CA named `ca_name`.
    pub(crate) async fn start_with_upstream(
        ca_name: &str,
        log_toml: &str,
        env: &[(&str, &str)],
        level: &str,
    ) -> WithUpstream {
        install_crypto();
        let ca = TestCa::new(ca_name);
        let (chain, key) = ca.server_cert(&["example.test", "*.example.test"], (-1, 30));
        let upstream = FakeUpstream::start(chain, key, Alpn::Both).await;
        Self::start_against(upstream, &ca, log_toml, env, level).await
    }

    /// [`start_with_upstream`](Self::start_with_upstream) against a fake upstream the caller
    /// started, whose certificate `ca` signed.
    pub(crate) async fn start_against(
        upstream: FakeUpstream,
        ca: &TestCa,
        log_toml: &str,
        env: &[(&str, &str)],
        level: &str,
    ) -> WithUpstream {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ca_file = dir.path().join("upstream-ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[upstream]\nroots = \"none\"\nextra_ca_files = [\"{}\"]\nnetwork_allowlist = [\"127.0.0.0/8\"]\n[upstream.resolve]\n\"*.example.test:443\" = \"{}\"\n[request_log]\nflush_interval = \"20ms\"\n[log]\n{log_toml}\n",
                ca_file.display(),
                upstream.addr
            ),
        )
        .unwrap();
        let server =
            Self::start_with(&data, &["--config", config.to_str().unwrap()], env, level).await;
        WithUpstream {
            server,
            upstream,
            data,
            dir,
        }
    }

    /// Starts the server on port 0 with a tiny KDF and waits until it prints its addresses.
    pub(crate) async fn start(
        data_dir: &Path,
        extra_env: &[(&str, &str)],
        log_level: &str,
    ) -> Self {
        Self::start_with(data_dir, &[], extra_env, log_level).await
    }

    /// Like [`start`](Self::start), with extra command-line arguments.
    pub(crate) async fn start_with(
        data_dir: &Path,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
        log_level: &str,
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent-vault"));
        cmd.args([
            "server",
            "--port",
            "0",
            "--proxy-port",
            "0",
            "--log-level",
            log_level,
        ])
        .args(extra_args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", data_dir)
        .env("AGENT_VAULT_MASTER_PASSWORD", MASTER_PASSWORD)
        .env("AGENT_VAULT_KDF__MEMORY_KIB", "64")
        .env("AGENT_VAULT_KDF__ITERATIONS", "1")
        .env("AGENT_VAULT_KDF__PARALLELISM", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr_task = tokio::spawn(async move {
            let mut all = String::new();
            let _ = stderr.read_to_string(&mut all).await;
            all
        });
        let mut lines = BufReader::new(stdout).lines();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut admin, mut proxy) = (String::new(), String::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while admin.is_empty() || proxy.is_empty() {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .expect("server prints its addresses")
                .unwrap();
            let Some(line) = line else {
                panic!("server exited before listening")
            };
            if let Some(a) = line.strip_prefix("admin API: ") {
                admin = a.trim().to_owned();
            }
            if let Some(p) = line.strip_prefix("proxy:") {
                proxy = p.trim().to_owned();
            }
            // With `log.format = "json"` the banner is a log event.
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                && let (Some(a), Some(p)) = (
                    event["fields"]["admin_api"].as_str(),
                    event["fields"]["proxy"].as_str(),
                )
            {
                (admin, proxy) = (a.to_owned(), p.to_owned());
            }
            seen.lock().unwrap().push(line);
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        let keep = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            admin,
            proxy,
            data_dir: data_dir.to_owned(),
            stderr: Some(stderr_task),
            stdout: seen,
        }
    }

    /// The lines the server printed on standard output so far.
    pub(crate) fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// SIGKILL, no chance to flush anything.
    pub(crate) async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
    }

    /// SIGTERM and wait; returns everything the server wrote to stderr.
    pub(crate) async fn stop(mut self) -> String {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        match self.stderr.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => String::new(),
        }
    }
}
