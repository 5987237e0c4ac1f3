//! Every runtime the README's table says works with zero configuration, run for real under
//! `agent-vault run` against the fake HTTPS upstream: the credential is attached by the proxy (the
//! upstream saw it), the program never printed it, and the proxy logged the request. Runtimes
//! missing here skip with a notice, and fail under AGENT_VAULT_CI (`.ci/run` installs them).

use std::time::Duration;

use serde_json::Value;

use crate::support::{
    CliOutput, TestApp, eventually, missing_dependency, program, spawn_app, spawn_app_for_run,
};

const SECRET: &str = "sk_live_runtime_secret_7171";
const VAULT: &str = "runtimes";

async fn app_with_service() -> TestApp {
    spawn_app_for_run(VAULT, SECRET).await
}

/// `agent-vault run --vault runtimes -- COMMAND...`.
async fn run(app: &TestApp, command: &[&str]) -> CliOutput {
    let mut args = vec!["run", "--vault", VAULT, "--"];
    args.extend_from_slice(command);
    app.cli(&args, None).await
}

/// The upstream received `path` with the credential attached, the program saw none of it, and
/// the proxy logged the request under the service.
async fn assert_injected(app: &TestApp, out: &CliOutput, path: &str) {
    let seen = app
        .upstream
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == path)
        .unwrap_or_else(|| panic!("the upstream never saw {path}: {out:?}"));
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some(format!("Bearer {SECRET}").as_str()),
        "{out:?}"
    );
    assert!(
        !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
        "{out:?}"
    );
    // The log is written in batches: wait for this request's row, not for any row.
    let bare = path.split('?').next().unwrap_or(path);
    let logs = format!("/v1/vaults/{VAULT}/logs");
    let mut last = Value::Null;
    let row = eventually(Duration::from_secs(10), async || {
        last = app.call("GET", &logs, None).await.1;
        last.as_array()?
            .iter()
            .find(|r| r["path"] == bare && r["credential_keys"][0] == "STRIPE_KEY")
            .cloned()
    })
    .await;
    assert!(row.is_some(), "no log row for {bare}: {last}");
}

/// The program printed `200 <path>` (status and the path the upstream echoed).
fn assert_printed_ok(out: &CliOutput, path: &str) {
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.trim() == format!("200 {path}")),
        "{out:?}"
    );
}

const NODE_HTTPS: &str = r#"
const https = require('https');
https.get(process.argv[1], (r) => {
  let b = '';
  r.on('data', (d) => (b += d));
  r.on('end', () => console.log(r.statusCode, JSON.parse(b).path));
}).on('error', (e) => { console.error(e.message); process.exit(3); });
"#;

const NODE_OWN_AGENT: &str = r#"
const https = require('https');
const agent = new https.Agent({ keepAlive: true });
https.get(process.argv[1], { agent }, (r) => {
  let b = '';
  r.on('data', (d) => (b += d));
  r.on('end', () => { console.log(r.statusCode, JSON.parse(b).path); agent.destroy(); });
}).on('error', (e) => { console.error(e.message); process.exit(3); });
"#;

const NODE_FETCH: &str = r#"
fetch(process.argv[1])
  .then(async (r) => console.log(r.status, (await r.json()).path))
  .catch((e) => { console.error(e.message, e.cause && e.cause.message); process.exit(3); });
"#;

#[tokio::test]
async fn node_https_get_goes_through_the_proxy() {
    let Some(node) = program("node") else { return };
    let app = app_with_service().await;
    let path = "/node/https";
    let url = format!("https://api.example.test{path}");
    let out = run(&app, &[&node, "-e", NODE_HTTPS, &url]).await;
    assert_printed_ok(&out, path);
    assert_injected(&app, &out, path).await;
}

#[tokio::test]
async fn node_https_with_its_own_agent_goes_through_the_proxy() {
    let Some(node) = program("node") else { return };
    let app = app_with_service().await;
    let path = "/node/own-agent";
    let url = format!("https://api.example.test{path}");
    let out = run(&app, &[&node, "-e", NODE_OWN_AGENT, &url]).await;
    assert_printed_ok(&out, path);
    assert_injected(&app, &out, path).await;
}

#[tokio::test]
async fn node_fetch_goes_through_the_proxy() {
    let Some(node) = program("node") else { return };
    let app = app_with_service().await;
    let path = "/node/fetch?q=1";
    let url = format!("https://api.example.test{path}");
    let out = run(&app, &[&node, "-e", NODE_FETCH, &url]).await;
    assert_printed_ok(&out, "/node/fetch?q=1");
    assert_injected(&app, &out, path).await;
}

/// Plain `http://` from Node reaches the proxy in absolute form (no upstream listens on port 80
/// here, so the proxy's own 502 is the proof), from both `http.get` and `fetch`.
#[tokio::test]
async fn node_plain_http_reaches_the_proxy() {
    let Some(node) = program("node") else { return };
    let app = app_with_service().await;
    let script = r#"
const http = require('http');
http.get('http://plain.example.test/node/http', (r) => {
  console.log('http', r.statusCode, r.headers['x-agent-vault-proxy-error']);
  r.resume();
  fetch('http://plain.example.test/node/fetch').then((f) =>
    console.log('fetch', f.status, f.headers.get('x-agent-vault-proxy-error')));
}).on('error', (e) => { console.error(e.message); process.exit(3); });
"#;
    let out = run(&app, &[&node, "-e", script]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("http 502 upstream_unreachable"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("fetch 502 upstream_unreachable"),
        "{out:?}"
    );
}

#[tokio::test]
async fn node_options_are_kept_and_the_preload_never_prints() {
    let Some(node) = program("node") else { return };
    let app = app_with_service().await;
    let out = app
        .cli_env(
            &[
                "run",
                "--vault",
                VAULT,
                "--",
                &node,
                "-e",
                "console.log(!!globalThis[Symbol.for('agent-vault.preload')], process.env.NODE_OPTIONS.split(' ')[0])",
            ],
            None,
            &[("NODE_OPTIONS", "--no-warnings")],
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "true --no-warnings", "{out:?}");
    assert_eq!(out.stderr, "", "{out:?}");
}

/// What `agent-vault run -- env` shows: every variable the README lists, and each file there.
#[tokio::test]
async fn run_sets_every_runtime_variable_to_an_existing_file() {
    let app = app_with_service().await;
    let script = "env; for v in SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE GIT_SSL_CAINFO \
        AWS_CA_BUNDLE PIP_CERT NIX_SSL_CERT_FILE HTTPLIB2_CA_CERTS GRPC_DEFAULT_SSL_ROOTS_FILE_PATH \
        CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE CARGO_HTTP_CAINFO NPM_CONFIG_CAFILE DENO_CERT \
        BUNDLE_SSL_CA_CERT NODE_EXTRA_CA_CERTS WGETRC; do \
        eval f=\\$$v; test -s \"$f\" && echo \"exists $v\"; done";
    let out = run(&app, &["sh", "-c", script]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for var in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "AWS_CA_BUNDLE",
        "PIP_CERT",
        "NIX_SSL_CERT_FILE",
        "HTTPLIB2_CA_CERTS",
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
        "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
        "CARGO_HTTP_CAINFO",
        "NPM_CONFIG_CAFILE",
        "DENO_CERT",
        "BUNDLE_SSL_CA_CERT",
        "NODE_EXTRA_CA_CERTS",
        "WGETRC",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == format!("exists {var}")),
            "{var} does not name a file: {}",
            out.stdout
        );
    }
    let value = |name: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} unset: {}", out.stdout))
            .to_owned()
    };
    let bundle = value("SSL_CERT_FILE");
    assert!(bundle.ends_with("/ca-bundle.pem"), "{bundle}");
    assert!(value("NODE_EXTRA_CA_CERTS").ends_with("/ca.pem"));
    assert!(value("NODE_OPTIONS").contains("node-preload.cjs"));
    assert_eq!(value("NODE_USE_ENV_PROXY"), "1");
    let java = value("JAVA_TOOL_OPTIONS");
    assert!(java.contains("-Djavax.net.ssl.trustStore="), "{java}");
    assert!(
        !java.contains(SECRET) && !java.contains("av_run_"),
        "{java}"
    );
    // The run's directory is gone once the run is over.
    let dir = std::path::Path::new(&bundle).parent().unwrap();
    assert!(!dir.exists(), "{} outlived the run", dir.display());
}

#[tokio::test]
async fn wget_goes_through_the_proxy() {
    let Some(wget) = program("wget") else { return };
    let app = app_with_service().await;
    let path = "/wget/get";
    let url = format!("https://api.example.test{path}");
    let out = run(&app, &[&wget, "-q", "-O", "-", &url]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let body: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(body["path"], path);
    assert_injected(&app, &out, path).await;
}

#[tokio::test]
async fn git_goes_through_the_proxy() {
    let Some(git) = program("git") else { return };
    let app = app_with_service().await;
    // The fake upstream is no git server: what matters is the first request, credential attached.
    let out = run(
        &app,
        &[&git, "ls-remote", "https://api.example.test/org/repo.git"],
    )
    .await;
    assert_injected(
        &app,
        &out,
        "/org/repo.git/info/refs?service=git-upload-pack",
    )
    .await;
}

#[tokio::test]
async fn npm_goes_through_the_proxy() {
    let Some(npm) = program("npm") else { return };
    let app = app_with_service().await;
    // The fake upstream is no registry: what matters is the request, credential attached.
    let out = run(
        &app,
        &[
            &npm,
            "view",
            "left-pad",
            "--registry",
            "https://api.example.test/npm/",
            "--fetch-retries=0",
            "--update-notifier=false",
        ],
    )
    .await;
    assert_injected(&app, &out, "/npm/left-pad").await;
}

const JAVA_URLCONNECTION: &str = r#"
import java.io.InputStream;
import java.net.HttpURLConnection;
import java.net.URL;

public class Get {
    public static void main(String[] args) throws Exception {
        HttpURLConnection c = (HttpURLConnection) new URL(args[0]).openConnection();
        int status = c.getResponseCode();
        InputStream in = status < 400 ? c.getInputStream() : c.getErrorStream();
        String body = new String(in.readAllBytes(), "UTF-8");
        String path = body.replaceAll("(?s).*\"path\":\"([^\"]*)\".*", "$1");
        System.out.println(status + " " + path);
    }
}
"#;

const JAVA_HTTPCLIENT: &str = r#"
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Get {
    public static void main(String[] args) throws Exception {
        // The README's one line: without it HttpClient sends no proxy credentials (407).
        HttpClient client = args.length > 1
            ? HttpClient.newHttpClient()
            : HttpClient.newBuilder().authenticator(java.net.Authenticator.getDefault()).build();
        HttpResponse<String> r = client.send(
            HttpRequest.newBuilder(URI.create(args[0])).build(),
            HttpResponse.BodyHandlers.ofString());
        String path = String.valueOf(r.body()).replaceAll("(?s).*\"path\":\"([^\"]*)\".*", "$1");
        System.out.println(r.statusCode() + " " + path);
    }
}
"#;

/// Runs a single-file Java program (`java Get.java URL [EXTRA]`) under `run`.
async fn java_get(app: &TestApp, source: &str, path: &str, extra: &[&str]) -> Option<CliOutput> {
    let java = program("java")?;
    // `java Get.java` compiles in memory: it needs the JDK's compiler module, not only a JRE.
    program("javac")?;
    let file = app.home.path().join("Get.java");
    std::fs::write(&file, source).unwrap();
    let url = format!("https://api.example.test{path}");
    let mut command = vec![java.as_str(), file.to_str().unwrap(), &url];
    command.extend_from_slice(extra);
    Some(run(app, &command).await)
}

/// `HttpURLConnection` (and what is built on it) with nothing configured: the proxy, its
/// credentials (the agent in JAVA_TOOL_OPTIONS) and the trust store all come from `run`.
#[tokio::test]
async fn java_url_connection_goes_through_the_proxy() {
    let app = app_with_service().await;
    let path = "/java/urlconnection";
    let Some(out) = java_get(&app, JAVA_URLCONNECTION, path, &[]).await else {
        return;
    };
    assert_printed_ok(&out, path);
    assert_injected(&app, &out, path).await;
}

/// `java.net.http.HttpClient` asks no default authenticator: with the README's one line it
/// works; without it the proxy's 407 reaches the program (never a silent direct request).
#[tokio::test]
async fn java_http_client_needs_the_default_authenticator() {
    let app = app_with_service().await;
    let path = "/java/httpclient";
    let Some(out) = java_get(&app, JAVA_HTTPCLIENT, path, &[]).await else {
        return;
    };
    assert_printed_ok(&out, path);
    assert_injected(&app, &out, path).await;
    let bare = java_get(&app, JAVA_HTTPCLIENT, "/java/bare", &["bare"])
        .await
        .unwrap();
    assert!(bare.stdout.starts_with("407 "), "{bare:?}");
}

/// Under the `deny` policy a real client reads the refusal: status 403, the proxy's error
/// header and the proposal hint in the body, instead of a bare "CONNECT tunnel failed".
async fn denied(app: &TestApp, command: &[&str]) -> CliOutput {
    app.set_policy(VAULT, "deny").await;
    let before = app.upstream.count();
    let out = run(app, command).await;
    assert_eq!(app.upstream.count(), before, "nothing reached the upstream");
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
    out
}

fn assert_hint(out: &CliOutput) {
    assert!(out.stdout.contains("403"), "{out:?}");
    assert!(out.stdout.contains("forbidden_host"), "{out:?}");
    assert!(
        out.stdout.contains("\"host\":\"unbound.example.test\""),
        "the proposal skeleton names the host: {out:?}"
    );
}

#[tokio::test]
async fn deny_hint_reaches_curl() {
    let Some(curl) = program("curl") else { return };
    let app = app_with_service().await;
    let out = denied(
        &app,
        &[&curl, "-sS", "-i", "https://unbound.example.test/v1/things"],
    )
    .await;
    assert!(
        out.stdout
            .to_ascii_lowercase()
            .contains("x-agent-vault-proxy-error: forbidden_host"),
        "{out:?}"
    );
    assert_hint(&out);
}

#[tokio::test]
async fn deny_hint_reaches_python_requests() {
    let Some(python) = program("python3") else {
        return;
    };
    let app = app_with_service().await;
    let script = "import requests\n\
        r = requests.get('https://unbound.example.test/v1/things')\n\
        print(r.status_code, r.headers['x-agent-vault-proxy-error'], r.text)";
    let out = denied(&app, &[&python, "-c", script]).await;
    if out.stderr.contains("No module named 'requests'") {
        missing_dependency("the python module requests");
        return;
    }
    assert_eq!(out.code, 0, "{out:?}");
    assert_hint(&out);
}

#[tokio::test]
async fn deny_hint_reaches_node_https_and_fetch() {
    let Some(node) = program("node") else { return };
    let app = app_with_service().await;
    let script = r#"
const https = require('https');
https.get('https://unbound.example.test/v1/things', (r) => {
  let b = '';
  r.on('data', (d) => (b += d));
  r.on('end', async () => {
    console.log('https', r.statusCode, r.headers['x-agent-vault-proxy-error'], b);
    const f = await fetch('https://unbound.example.test/v1/things');
    console.log('fetch', f.status, f.headers.get('x-agent-vault-proxy-error'), await f.text());
  });
}).on('error', (e) => { console.error(e.message); process.exit(3); });
"#;
    let out = denied(&app, &[&node, "-e", script]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_hint(&out);
    assert!(out.stdout.contains("https 403 forbidden_host"), "{out:?}");
    assert!(out.stdout.contains("fetch 403 forbidden_host"), "{out:?}");
}

#[tokio::test]
async fn pip_goes_through_the_proxy() {
    let Some(python) = program("python3") else {
        return;
    };
    let app = app_with_service().await;
    // Made before the run: under confinement nothing new can be created directly in HOME.
    let dest = app.home.path().join("wheels");
    std::fs::create_dir(&dest).unwrap();
    // The fake upstream is no package index: what matters is the request, credential attached.
    let out = run(
        &app,
        &[
            &python,
            "-m",
            "pip",
            "download",
            "left-pad",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--retries",
            "0",
            "--index-url",
            "https://api.example.test/simple/",
            "-d",
            dest.to_str().unwrap(),
        ],
    )
    .await;
    if out.stderr.contains("No module named pip") {
        missing_dependency("pip");
        return;
    }
    assert_injected(&app, &out, "/simple/left-pad/").await;
}

/// An agent that never completes TLS after its refused CONNECT (it does not trust the CA, or
/// speaks plaintext) still leaves a row in the request log.
#[tokio::test]
async fn deny_connect_without_tls_is_still_logged() {
    let app = spawn_app().await;
    let token = app.stripe_vault(VAULT, SECRET).await;
    app.set_policy(VAULT, "deny").await;
    let auth = crate::support::agent::basic(&token, VAULT);
    let mut tcp =
        crate::support::agent::connect(app.proxy, "unbound.example.test:443", Some(&auth))
            .await
            .expect("the CONNECT is accepted; the refusal comes inside");
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    drop(tcp);
    let rows = app.wait_for_logs(VAULT, 1).await;
    assert!(
        rows.iter().any(|r| r["kind"] == "tunnel"
            && r["host"] == "unbound.example.test:443"
            && r["status"] == 403
            && r["error_code"] == "forbidden_host"),
        "{rows:?}"
    );
    assert_eq!(app.upstream.count(), 0);
}
