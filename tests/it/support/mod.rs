//! Shared test support: the real app on port 0, a fake HTTPS upstream signed by its own test CA,
//! agents as real HTTP clients through the proxy, and the CLI binary.

#![allow(dead_code)]

pub(crate) mod agent;
pub(crate) mod fixtures;
pub(crate) mod pki;
pub(crate) mod process;
pub(crate) mod raw_upstream;
pub(crate) mod tamper;
pub(crate) mod terminal;
pub(crate) mod upstream;
pub(crate) mod wait;
pub(crate) mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Once};
use std::time::Duration;

use agent_vault::app::App;
use agent_vault::config::{Config, DatabaseUrl, Roots};
use agent_vault::crypto::KdfParams;
use agent_vault::proxy::ProxyState;
use secrecy::SecretString;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

pub(crate) use pki::TestCa;
pub(crate) use upstream::{Alpn, FakeUpstream};
pub(crate) use wait::eventually;

pub(crate) const MASTER_PASSWORD: &str = "correct horse battery staple";
pub(crate) const OWNER_EMAIL: &str = "owner@example.com";
pub(crate) const OWNER_PASSWORD: &str = "owner-password-1";
pub(crate) const TINY_KDF: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

static CRYPTO: Once = Once::new();

/// The absolute path of a program, or `None` (with a notice) when it is not installed.
pub(crate) fn program(name: &str) -> Option<String> {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if path.is_empty() {
        missing_dependency(&format!("the program {name}"));
        return None;
    }
    Some(path)
}

/// An app with the CLI logged in and a Stripe-style vault `vault` holding `secret`: the start
/// of every `agent-vault run` test.
pub(crate) async fn spawn_app_for_run(vault: &str, secret: &str) -> TestApp {
    let app = spawn_app().await;
    app.stripe_vault(vault, secret).await;
    app.cli_login().await;
    app
}

/// A test whose outside dependency (a program, Python modules, Postgres) is missing: locally it
/// skips with a printed notice; under `.ci/run` (`AGENT_VAULT_CI` set) it fails, naming what is
/// missing, so a green CI run never tests less than it claims.
#[allow(clippy::print_stderr)] // the notice is for the person running the tests
pub(crate) fn missing_dependency(what: &str) {
    if std::env::var_os("AGENT_VAULT_CI").is_some() {
        panic!("{what} is missing, and AGENT_VAULT_CI requires it (.ci/run installs it)");
    }
    eprintln!("notice: {what} is missing; skipping (.ci/run installs it)");
}

pub(crate) fn install_crypto() {
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A Postgres database created for one test and dropped afterwards.
pub(crate) struct TestDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    /// `None` (with a printed notice) when AGENT_VAULT_TEST_DATABASE_URL is unset.
    pub(crate) async fn create() -> Option<Self> {
        let Ok(admin_url) = std::env::var("AGENT_VAULT_TEST_DATABASE_URL") else {
            missing_dependency("AGENT_VAULT_TEST_DATABASE_URL (the Postgres variant of this test)");
            return None;
        };
        sqlx::any::install_default_drivers();
        let name = format!("av_test_{}", agent_vault::crypto::random_id().unwrap());
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .expect("connect to the test Postgres");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&format!("/{name}"));
        Some(Self {
            url: url.to_string(),
            admin_url,
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut conn) =
                    <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url).await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A last-minute configuration change.
pub(crate) type Tweak = Box<dyn FnOnce(&mut Config) + Send>;

/// How to build a test app.
pub(crate) struct TestOptions {
    /// Allow loopback destinations (the fake upstream lives there).
    pub allow_loopback: bool,
    /// Run on a fresh Postgres database.
    pub postgres: Option<String>,
    /// Upstream protocols.
    pub alpn: Alpn,
    /// Last-minute configuration changes.
    pub tweak: Option<Tweak>,
    /// Reuse this data directory (restarts).
    pub data_dir: Option<Arc<TempDir>>,
    /// Register the owner.
    pub register_owner: bool,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            allow_loopback: true,
            postgres: None,
            alpn: Alpn::Both,
            tweak: None,
            data_dir: None,
            register_owner: true,
        }
    }
}

/// A running app with its fake upstream.
pub(crate) struct TestApp {
    pub admin: String,
    pub proxy: SocketAddr,
    pub upstream: FakeUpstream,
    pub upstream_ca: Arc<TestCa>,
    pub upstream_ca_file: PathBuf,
    pub data_dir: Arc<TempDir>,
    pub home: TempDir,
    pub owner_token: String,
    pub http: reqwest::Client,
    pub proxy_state: Arc<ProxyState>,
    pub setup_token_file: Option<PathBuf>,
    pub config: Config,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Builds the configuration tests use: port 0, tiny KDF, trust only the upstream test CA, and
/// `*.example.test` resolved to the fake upstream.
pub(crate) fn test_config(
    data_dir: &std::path::Path,
    ca_file: &std::path::Path,
    upstream: SocketAddr,
    allow_loopback: bool,
) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_path_buf(),
        ..Default::default()
    };
    config.server.port = 0;
    config.server.proxy_port = 0;
    config.server.shutdown_grace = Duration::from_secs(2);
    config.kdf = TINY_KDF;
    config.upstream.roots = Roots::None;
    config.upstream.extra_ca_files = vec![ca_file.to_path_buf()];
    config
        .upstream
        .resolve
        .insert("*.example.test:443".into(), upstream.to_string());
    config
        .upstream
        .resolve
        .insert("example.test:443".into(), upstream.to_string());
    config.upstream.connect_timeout = Duration::from_secs(3);
    if allow_loopback {
        config.upstream.network_allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    }
    config.request_log.flush_interval = Duration::from_millis(20);
    config
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(TestOptions::default()).await
}

/// An app whose configuration `tweak` changes at the last minute (otherwise the defaults).
pub(crate) async fn spawn_app_tweaked(tweak: impl FnOnce(&mut Config) + Send + 'static) -> TestApp {
    spawn_app_with(TestOptions {
        tweak: Some(Box::new(tweak)),
        ..Default::default()
    })
    .await
}

pub(crate) async fn spawn_app_with(opts: TestOptions) -> TestApp {
    install_crypto();
    let ca = Arc::new(TestCa::new("agent-vault tests upstream CA"));
    let (chain, key) = ca.server_cert(&["example.test", "*.example.test"], (-1, 30));
    let upstream = FakeUpstream::start(chain, key, opts.alpn).await;
    spawn_app_against(opts, upstream, ca).await
}

/// Runs an app against an upstream serving `chain` (trusted roots: `trusted` only) and checks
/// that a request to it is answered 502 `upstream_tls` with nothing reaching the upstream.
pub(crate) async fn assert_upstream_tls_refused(
    what: &str,
    trusted: &Arc<TestCa>,
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) {
    let upstream = FakeUpstream::start(chain, key, Alpn::Both).await;
    let app = spawn_app_against(TestOptions::default(), upstream, trusted.clone()).await;
    let token = app.stripe_vault("tls", "sk_tls_refused").await;
    let resp = app
        .agent(&token, "tls")
        .await
        .get("https://api.example.test/")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502, "{what}");
    assert_eq!(
        resp.headers()["x-agent-vault-proxy-error"],
        "upstream_tls",
        "{what}"
    );
    assert_eq!(app.upstream.count(), 0, "{what}: nothing reached it");
}

pub(crate) async fn spawn_app_against(
    opts: TestOptions,
    upstream: FakeUpstream,
    ca: Arc<TestCa>,
) -> TestApp {
    install_crypto();
    let data_dir = opts
        .data_dir
        .unwrap_or_else(|| Arc::new(tempfile::tempdir().unwrap()));
    let ca_file = data_dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let mut config = test_config(
        &data_dir.path().join("data"),
        &ca_file,
        upstream.addr,
        opts.allow_loopback,
    );
    if let Some(url) = opts.postgres {
        config.database_url = Some(DatabaseUrl(url));
    }
    if let Some(tweak) = opts.tweak {
        tweak(&mut config);
    }
    let app = App::build(config.clone(), SecretString::from(MASTER_PASSWORD))
        .await
        .expect("app builds");
    let admin = format!("http://{}", app.admin_addr);
    let proxy = app.proxy_addr;
    let proxy_state = app.proxy_state();
    let setup_token_file = app.setup_token_file.clone();
    let shutdown = app.shutdown_token();
    let task = tokio::spawn(async move {
        app.run().await.unwrap();
    });
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut test = TestApp {
        admin,
        proxy,
        upstream,
        upstream_ca: ca,
        upstream_ca_file: ca_file,
        data_dir,
        home: tempfile::tempdir().unwrap(),
        owner_token: String::new(),
        http,
        proxy_state,
        setup_token_file,
        config,
        shutdown,
        task: Some(task),
    };
    if opts.register_owner {
        if let Some(path) = &test.setup_token_file {
            let setup = std::fs::read_to_string(path).unwrap();
            let (status, body) = test
                .call_anon("POST", "/v1/auth/register", Some(json!({ "email": OWNER_EMAIL, "password": OWNER_PASSWORD, "setup_token": setup.trim() })))
                .await;
            assert_eq!(status, 201, "{body}");
            test.owner_token = body["token"].as_str().unwrap().to_owned();
        } else {
            test.owner_token = test.login(OWNER_EMAIL, OWNER_PASSWORD).await;
        }
    }
    test
}

impl TestApp {
    /// Stops the app and waits for it to drain.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("app stops within 15s")
                .unwrap();
        }
    }

    pub(crate) async fn login(&self, email: &str, password: &str) -> String {
        let (status, body) = self
            .call_anon(
                "POST",
                "/v1/auth/login",
                Some(json!({ "email": email, "password": password })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Calls the admin API with an explicit token (or none).
    /// `POST /v1/proposals` as the agent holding `token`: the status and the answer.
    pub(crate) async fn propose(&self, token: &str, proposal: Value) -> (u16, Value) {
        self.call_with(Some(token), "POST", "/v1/proposals", Some(proposal))
            .await
    }

    pub(crate) async fn call_with(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.admin));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub(crate) async fn call_anon(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_with(None, method, path, body).await
    }

    /// Calls the admin API as the owner.
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let token = self.owner_token.clone();
        self.call_with(Some(&token), method, path, body).await
    }

    /// Calls and asserts the status.
    pub(crate) async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} -> {status}: {value}"
        );
        value
    }

    pub(crate) async fn create_vault(&self, name: &str) {
        self.ok("POST", "/v1/vaults", Some(json!({ "name": name })))
            .await;
    }

    pub(crate) async fn set_credentials(&self, vault: &str, pairs: &[(&str, &str)]) {
        let map: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        self.ok(
            "PUT",
            &format!("/v1/vaults/{vault}/credentials"),
            Some(json!({ "credentials": map })),
        )
        .await;
    }

    /// Replaces a vault's services with those of a YAML document.
    pub(crate) async fn set_services_yaml(&self, vault: &str, yaml: &str) {
        let specs = agent_vault::policy::service::parse_service_file(yaml).unwrap();
        self.ok(
            "PUT",
            &format!("/v1/vaults/{vault}/services"),
            Some(json!({ "services": specs })),
        )
        .await;
    }

    pub(crate) async fn set_policy(&self, vault: &str, policy: &str) {
        self.ok(
            "PATCH",
            &format!("/v1/vaults/{vault}/settings"),
            Some(json!({ "unmatched_host_policy": policy })),
        )
        .await;
    }

    /// A scoped proxy token for `vault`.
    pub(crate) async fn proxy_token(&self, vault: &str) -> (String, String) {
        let v = self
            .ok(
                "POST",
                &format!("/v1/vaults/{vault}/tokens"),
                Some(json!({})),
            )
            .await;
        (
            v["token"].as_str().unwrap().to_owned(),
            v["id"].as_str().unwrap().to_owned(),
        )
    }

    /// A new vault with these credentials and the services of a YAML document; returns a
    /// scoped proxy token for it.
    pub(crate) async fn service_vault(
        &self,
        vault: &str,
        creds: &[(&str, &str)],
        yaml: &str,
    ) -> String {
        self.create_vault(vault).await;
        self.set_credentials(vault, creds).await;
        self.set_services_yaml(vault, yaml).await;
        self.proxy_token(vault).await.0
    }

    /// A vault with one bearer service for api.example.test and its credential.
    pub(crate) async fn stripe_vault(&self, vault: &str, value: &str) -> String {
        self.service_vault(
            vault,
            &[("STRIPE_KEY", value)],
            "- name: stripe\n  host: api.example.test\n  auth: {type: bearer, token: STRIPE_KEY}\n",
        )
        .await
    }

    /// A second handle on this app's own database, to change rows behind the server's back.
    pub(crate) async fn open_store(&self) -> agent_vault::store::Store {
        let url = self.config.database_url.as_ref().map(|u| u.0.as_str());
        agent_vault::store::Store::open(&self.config.data_dir, url)
            .await
            .unwrap()
    }

    /// This app's database as the server sees it: with the keys that bind authority rows, so
    /// a test can make a change the server itself could make (its MACs re-bound).
    pub(crate) async fn open_unsealed_store(&self) -> agent_vault::store::Store {
        self.open_store()
            .await
            .with_authority_macs(self.proxy_state.keyring.authority_macs())
    }

    /// Moves a token's expiry as the server would (MAC re-bound: the API refuses lifetimes under
    /// a minute, and an expiry edited in the database is an integrity failure, not an expiry),
    /// and drops cached answers, as a change on another instance would.
    pub(crate) async fn set_token_expiry(&self, token_id: &str, at_ms: i64) {
        let store = self.open_unsealed_store().await;
        assert!(
            store.set_token_expiry(token_id, Some(at_ms)).await.unwrap(),
            "token {token_id} is live and intact"
        );
        store.close().await;
        self.proxy_state.identity.invalidate_all();
    }

    pub(crate) async fn ca_pem(&self) -> String {
        fetch_text(self.http.get(format!("{}/v1/ca.pem", self.admin))).await
    }

    /// An HTTP client acting as an agent: proxy set with token and vault, trusting only the
    /// proxy's CA.
    pub(crate) async fn agent(&self, token: &str, vault: &str) -> reqwest::Client {
        self.agent_builder(token, vault).await.build().unwrap()
    }

    pub(crate) async fn agent_builder(&self, token: &str, vault: &str) -> reqwest::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(self.ca_pem().await.as_bytes()).unwrap();
        let proxy = reqwest::Proxy::all(format!("http://{token}:{vault}@{}", self.proxy)).unwrap();
        reqwest::Client::builder()
            .proxy(proxy)
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(30))
    }

    /// A websocket through the proxy to the fake upstream's `/ws`, on a tunnel for `vault`
    /// (the upgrade is checked).
    pub(crate) async fn websocket(
        &self,
        token: &str,
        vault: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>
    {
        let tls = self
            .tunnel(token, vault, "api.example.test", &[b"http/1.1"])
            .await;
        let (ws, resp) = tokio_tungstenite::client_async("wss://api.example.test/ws", tls)
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        ws
    }

    /// An intercepted TLS connection to `host:443` through the proxy, trusting the proxy's CA.
    pub(crate) async fn tunnel(
        &self,
        token: &str,
        vault: &str,
        host: &str,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let (auth, ca) = (agent::basic(token, vault), self.ca_pem().await);
        agent::dial(self.proxy, &auth, &format!("{host}:443"))
            .sni(host)
            .trusting(&ca)
            .alpn(alpn)
            .tls()
            .await
            .unwrap()
    }

    /// Sends one raw HTTP/1.1 request (which should say `Connection: close`) through an
    /// intercepted connection to `host` and returns everything the proxy answered.
    pub(crate) async fn raw_request(
        &self,
        token: &str,
        vault: &str,
        host: &str,
        raw: &str,
    ) -> String {
        let tls = self.tunnel(token, vault, host, &[b"http/1.1"]).await;
        agent::raw_exchange(tls, raw.as_bytes()).await
    }

    /// Waits (bounded) until the vault's request log has at least `n` rows.
    pub(crate) async fn wait_for_logs(&self, vault: &str, n: usize) -> Vec<Value> {
        let path = format!("/v1/vaults/{vault}/logs");
        let mut last = Value::Null;
        let rows = eventually(Duration::from_secs(10), async || {
            last = self.call("GET", &path, None).await.1;
            last.as_array().filter(|rows| rows.len() >= n).cloned()
        })
        .await;
        rows.unwrap_or_else(|| panic!("request log of {vault} never reached {n} rows: {last}"))
    }

    /// Runs the CLI binary against this app with its own HOME.
    pub(crate) async fn cli(&self, args: &[&str], stdin: Option<&str>) -> CliOutput {
        self.cli_env(args, stdin, &[]).await
    }

    /// The CLI binary as a command against this app (own HOME, clean environment, every
    /// stream piped), for tests that need to hold its pipes themselves.
    pub(crate) fn cli_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-vault"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("AGENT_VAULT_ADDR", &self.admin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    pub(crate) async fn cli_env(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        env: &[(&str, &str)],
    ) -> CliOutput {
        let mut cmd = self.cli_command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).await.unwrap();
        }
        drop(input);
        CliOutput::of(child.wait_with_output()).await
    }

    /// Logs the CLI in as the owner.
    pub(crate) async fn cli_login(&self) {
        let out = self
            .cli(
                &["auth", "login", "--email", OWNER_EMAIL, "--password-stdin"],
                Some(&format!("{OWNER_PASSWORD}\n")),
            )
            .await;
        assert_eq!(out.code, 0, "{out:?}");
    }
}

#[derive(Debug)]
pub(crate) struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Waits (bounded) for a CLI run to finish and keeps its exit code and what it printed.
    pub(crate) async fn of(
        run: impl Future<Output = std::io::Result<std::process::Output>>,
    ) -> Self {
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("CLI finishes")
            .unwrap();
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Sends a request that must get an answer (any status); the test judges the answer.
pub(crate) async fn fetch(req: reqwest::RequestBuilder) -> reqwest::Response {
    req.send().await.unwrap()
}

/// Sends a request that must get an answer and returns its body as text, whatever the status.
pub(crate) async fn fetch_text(req: reqwest::RequestBuilder) -> String {
    fetch(req).await.text().await.unwrap()
}

/// The rest of a streamed body, each chunk due within 10 s, as text.
pub(crate) async fn rest_of(resp: &mut reqwest::Response) -> String {
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&rest).into_owned()
}

/// A response's status and headers, whichever client received it.
pub(crate) trait Answer {
    /// The status code.
    fn code(&self) -> u16;
    /// The response headers.
    fn head(&self) -> &http::HeaderMap;
}

impl Answer for reqwest::Response {
    fn code(&self) -> u16 {
        self.status().as_u16()
    }
    fn head(&self) -> &http::HeaderMap {
        self.headers()
    }
}

impl<B> Answer for http::Response<B> {
    fn code(&self) -> u16 {
        self.status().as_u16()
    }
    fn head(&self) -> &http::HeaderMap {
        self.headers()
    }
}

/// Asserts the proxy itself refused: `status` with `X-Agent-Vault-Proxy-Error: code`.
#[track_caller]
pub(crate) fn assert_proxy_error(resp: &impl Answer, status: u16, code: &str) {
    assert_eq!(resp.code(), status);
    assert_eq!(resp.head()["x-agent-vault-proxy-error"], code);
}

/// Every file below `dir`, however deep.
pub(crate) fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path))
        } else {
            out.push(path)
        }
    }
    out
}

/// This process's resident memory, in KiB (the app runs in process, so this is its memory too).
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Runs `f` against a fresh SQLite store and, when configured, a fresh Postgres store.
pub(crate) async fn for_each_store<F, Fut>(f: F)
where
    F: Fn(agent_vault::store::Store, &'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Unsealed the way the server does it, so authority rows can be written and read.
    let macs =
        agent_vault::keys::Keyring::from_dek(agent_vault::crypto::DataKey::from_bytes([42; 32]))
            .authority_macs();
    let dir = tempfile::tempdir().unwrap();
    let store = agent_vault::store::Store::open(dir.path(), None)
        .await
        .unwrap()
        .with_authority_macs(macs.clone());
    f(store.clone(), "sqlite").await;
    store.close().await;
    if let Some(db) = TestDatabase::create().await {
        let store = agent_vault::store::Store::open(dir.path(), Some(&db.url))
            .await
            .unwrap()
            .with_authority_macs(macs);
        f(store.clone(), "postgres").await;
        store.close().await;
        drop(db);
    }
}
