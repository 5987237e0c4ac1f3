//! The environment `agent-vault run` gives its command: the proxy URL (carrying the run's token),
//! the CA files every common runtime reads, a Java trust store, a Node preload that routes Node's
//! requests through the proxy, and nothing inherited that could point elsewhere. The files live in
//! a private directory made for the run and removed after it (outside `~/.agent-vault`, which a
//! confined child cannot read). Kept apart from the process handling in `run.rs` so that what the
//! child sees is decided (and tested) in one place.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

use super::CliError;
use super::truststore::pkcs12_trust_store;

/// Variables `run` owns besides [`BUNDLE_VARS`]; any inherited copy (in any case) of either is
/// replaced.
const OWNED_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "NODE_USE_ENV_PROXY",
    "GIT_SSL_CAPATH",
    "CARGO_HTTP_PROXY",
    "NPM_CONFIG_CA",
    "NPM_CONFIG_PROXY",
    "NPM_CONFIG_HTTPS_PROXY",
    "NPM_CONFIG_NOPROXY",
    "WGETRC",
    "AGENT_VAULT_ADDR",
    "AGENT_VAULT_TOKEN",
    "AGENT_VAULT_VAULT",
];

/// Variables that name the CA bundle (the agent-vault root plus the system roots), one per
/// runtime or tool that reads its own.
const BUNDLE_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "DENO_CERT",
    "AWS_CA_BUNDLE",
    "PIP_CERT",
    "NIX_SSL_CERT_FILE",
    "HTTPLIB2_CA_CERTS",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
    "CARGO_HTTP_CAINFO",
    "NPM_CONFIG_CAFILE",
    "BUNDLE_SSL_CA_CERT",
];

/// Routes Node's https, http and fetch through the proxy on Node lines that ignore HTTPS_PROXY.
const NODE_PRELOAD: &str = include_str!("node_preload.cjs");

/// File names inside the run directory (the README names them too).
const CA_FILE: &str = "ca.pem";
const BUNDLE_FILE: &str = "ca-bundle.pem";
const TRUST_STORE_FILE: &str = "truststore.p12";
const WGETRC_FILE: &str = "wgetrc";
const NODE_PRELOAD_FILE: &str = "node-preload.cjs";
const JAVA_AGENT_FILE: &str = "agent-vault-java-agent.jar";

fn pem_encode(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::msg(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(contents)
        .map_err(|e| CliError::msg(format!("cannot write {}: {e}", path.display())))
}

/// The run's private directory (0700, a fresh random name), removed with everything in it when
/// the run ends. It holds certificates and scripts, never the token.
#[derive(Debug)]
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates a fresh directory under `parent`.
    fn create(parent: &Path) -> Result<Self, CliError> {
        use std::os::unix::fs::DirBuilderExt;
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix)
            .map_err(|e| CliError::msg(format!("no randomness for the run directory: {e}")))?;
        let path = parent.join(format!("agent-vault-run-{}", hex::encode(suffix)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| CliError::msg(format!("cannot create {}: {e}", path.display())))?;
        Ok(Self { path })
    }

    /// Creates it under the first of `parents` that takes it (each made 0700 if missing).
    fn create_in_first(parents: &[PathBuf]) -> Result<Self, CliError> {
        use std::os::unix::fs::DirBuilderExt;
        let mut last = CliError::msg("no directory for the run's files");
        for parent in parents {
            let made = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| CliError::msg(format!("cannot create {}: {e}", parent.display())));
            match made.and_then(|()| Self::create(parent)) {
                Ok(dir) => return Ok(dir),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Where run directories go: `~/.agent-vault/runs` (denied to every confined command but for its
/// own run's directory, see `confine::run_files_dir`), else the temporary directory (a `run`
/// inside a confined run cannot write beneath `~/.agent-vault`), else `~/.cache/agent-vault`
/// (when the home directory lies inside the temporary directory, the outer confinement cannot
/// grant entries directly in it; there sibling commands could write the inner run's files, the
/// price of nesting in such a layout).
fn run_dir_parents() -> Vec<PathBuf> {
    let mut parents = Vec::new();
    if let Ok(runs) = super::confine::run_files_dir() {
        parents.push(runs);
    }
    parents.push(std::env::temp_dir());
    if let Some(home) = std::env::var_os("HOME") {
        let nested = PathBuf::from(home).join(".cache").join("agent-vault");
        // Made now, while unconfined: a confined command cannot create entries in `$HOME`.
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&nested);
        parents.push(nested);
    }
    parents
}

/// What the run directory holds, by role.
struct Files {
    /// The agent-vault root alone (Node adds it to its own roots).
    ca: String,
    /// The agent-vault root plus the system roots (tunnelled hosts keep their real certificates).
    bundle: String,
    /// The same roots as a Java trust store.
    trust_store: String,
    /// wget's configuration: the owner's, then the bundle.
    wgetrc: String,
    /// Routes Node's requests through the proxy.
    node_preload: String,
    /// Answers the proxy's 407 inside a JVM.
    java_agent: String,
}

/// The system roots as DER, for the bundle and the trust store.
fn system_roots() -> Vec<Vec<u8>> {
    rustls_native_certs::load_native_certs()
        .certs
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// The owner's wget configuration (`$WGETRC`, else `~/.wgetrc`), kept so settings other than
/// ours still apply; ours come last and win.
fn inherited_wgetrc() -> String {
    let path = std::env::var_os("WGETRC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".wgetrc")));
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

fn write_files(
    dir: &RunDir,
    ca_pem: &str,
    roots: &[Vec<u8>],
    wgetrc: &str,
) -> Result<Files, CliError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let ca_der: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CliError::msg(format!("the server's CA is not PEM: {e}")))?;
    if ca_der.is_empty() {
        return Err(CliError::msg("the server returned no CA certificate"));
    }
    let path = |name: &str| dir.file(name).to_string_lossy().into_owned();
    let files = Files {
        ca: path(CA_FILE),
        bundle: path(BUNDLE_FILE),
        trust_store: path(TRUST_STORE_FILE),
        wgetrc: path(WGETRC_FILE),
        node_preload: path(NODE_PRELOAD_FILE),
        java_agent: path(JAVA_AGENT_FILE),
    };
    write_private(&dir.file(CA_FILE), ca_pem.as_bytes())?;
    let mut all = String::from(ca_pem);
    for root in roots {
        all.push_str(&pem_encode(root));
    }
    write_private(&dir.file(BUNDLE_FILE), all.as_bytes())?;
    let entries = ca_der
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("agent-vault-ca-{i}"), c.as_ref()))
        .chain(
            roots
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("system-root-{i}"), c.as_slice())),
        );
    write_private(&dir.file(TRUST_STORE_FILE), &pkcs12_trust_store(entries))?;
    let mut rc = String::from(wgetrc);
    if !rc.is_empty() && !rc.ends_with('\n') {
        rc.push('\n');
    }
    rc.push_str(&format!(
        "# agent-vault run: the proxy comes from https_proxy; trust its CA\nuse_proxy = on\nca_certificate = {}\n",
        files.bundle
    ));
    write_private(&dir.file(WGETRC_FILE), rc.as_bytes())?;
    write_private(&dir.file(NODE_PRELOAD_FILE), NODE_PRELOAD.as_bytes())?;
    write_private(&dir.file(JAVA_AGENT_FILE), &super::javaagent::jar())?;
    Ok(files)
}

fn proxy_host(address: &str) -> String {
    let host = url::Url::parse(address)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1".into());
    match host.as_str() {
        "0.0.0.0" | "[::]" | "::" => "127.0.0.1".into(),
        _ => host,
    }
}

/// `existing` plus `extra`, space-separated (Node and the JVM read their options this way).
fn append_options(existing: Option<&OsStr>, extra: &str) -> String {
    match existing.map(|e| e.to_string_lossy()) {
        Some(e) if !e.trim().is_empty() => format!("{} {extra}", e.trim_end()),
        _ => extra.to_owned(),
    }
}

/// A path as one `NODE_OPTIONS` word: Node splits on spaces and honours double quotes.
fn node_quote(path: &str) -> String {
    format!("\"{}\"", path.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The JVM's options: the proxy for both schemes (the admin address goes direct), Basic proxy
/// authentication allowed for tunnels (the JDK disables it by default), the trust store, and the
/// agent that answers the proxy's 407 (for this proxy's host and port only).
fn java_options(host: &str, port: u64, files: &Files) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let bracketed = if bare.contains(':') {
        format!("[{bare}]")
    } else {
        bare.to_owned()
    };
    [
        format!("-Dhttps.proxyHost={bare}"),
        format!("-Dhttps.proxyPort={port}"),
        format!("-Dhttp.proxyHost={bare}"),
        format!("-Dhttp.proxyPort={port}"),
        format!("-Dhttp.nonProxyHosts=localhost|127.*|[::1]|{bracketed}"),
        "-Djdk.http.auth.tunneling.disabledSchemes=".to_owned(),
        "-Djdk.http.auth.proxying.disabledSchemes=".to_owned(),
        format!("-Djavax.net.ssl.trustStore={}", files.trust_store),
        "-Djavax.net.ssl.trustStoreType=PKCS12".to_owned(),
        format!("-javaagent:{}={bare}:{port}", files.java_agent),
    ]
    .join(" ")
}

/// What the child's environment gains and loses, and the directory its files live in (removed
/// when this is dropped). Holds the proxy URL, which carries the run's token, so its `Debug`
/// names variables only.
pub(super) struct RunEnv {
    remove: Vec<OsString>,
    set: Vec<(&'static str, String)>,
    dir: RunDir,
}

impl std::fmt::Debug for RunEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunEnv")
            .field("remove", &self.remove)
            .field("set", &self.set.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("dir", &self.dir)
            .finish()
    }
}

/// Where a run happens: the server, the token and vault, and the CA to trust.
pub(super) struct Target<'a> {
    /// The admin API's base URL (the proxy is on its host).
    pub(super) base: &'a str,
    /// The run's proxy token.
    pub(super) token: &'a SecretString,
    /// The vault the token proxies for.
    pub(super) vault: &'a str,
    /// The proxy's port.
    pub(super) proxy_port: u64,
    /// The server's root CA, PEM.
    pub(super) ca_pem: &'a str,
}

impl RunEnv {
    /// Writes the run's files into a fresh directory under the temp directory and works out
    /// every variable.
    pub(super) fn prepare(target: &Target<'_>) -> Result<Self, CliError> {
        let dir = RunDir::create_in_first(&run_dir_parents())?;
        let inherited: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        Self::build(
            dir,
            target,
            &inherited,
            &system_roots(),
            &inherited_wgetrc(),
        )
    }

    fn build(
        dir: RunDir,
        target: &Target<'_>,
        inherited: &[(OsString, OsString)],
        roots: &[Vec<u8>],
        wgetrc: &str,
    ) -> Result<Self, CliError> {
        let files = write_files(&dir, target.ca_pem, roots, wgetrc)?;
        let host = proxy_host(target.base);
        let proxy = format!(
            "http://{}:{}@{host}:{}",
            target.token.expose_secret(),
            target.vault,
            target.proxy_port
        );
        let no_proxy = format!("localhost,127.0.0.1,::1,{host}");
        let remove = inherited
            .iter()
            .map(|(key, _)| key.clone())
            .filter(|key| {
                let k = key.to_string_lossy().to_ascii_uppercase();
                OWNED_VARS.contains(&k.as_str()) || BUNDLE_VARS.contains(&k.as_str())
            })
            .collect();
        let inherited_value = |name: &str| {
            inherited
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_os_str())
        };
        let mut set = Vec::new();
        for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            set.push((name, proxy.clone()));
        }
        // npm reads its own proxy settings first; point them at the same place.
        set.push(("npm_config_https_proxy", proxy.clone()));
        set.push(("npm_config_proxy", proxy.clone()));
        set.push(("NO_PROXY", no_proxy.clone()));
        set.push(("no_proxy", no_proxy.clone()));
        set.push(("npm_config_noproxy", no_proxy));
        for name in BUNDLE_VARS {
            set.push((name, files.bundle.clone()));
        }
        set.push(("NODE_EXTRA_CA_CERTS", files.ca.clone()));
        set.push(("NODE_USE_ENV_PROXY", "1".into()));
        set.push((
            "NODE_OPTIONS",
            append_options(
                inherited_value("NODE_OPTIONS"),
                &format!("--require {}", node_quote(&files.node_preload)),
            ),
        ));
        set.push((
            "JAVA_TOOL_OPTIONS",
            append_options(
                inherited_value("JAVA_TOOL_OPTIONS"),
                &java_options(&host, target.proxy_port, &files),
            ),
        ));
        set.push(("WGETRC", files.wgetrc.clone()));
        set.push(("AGENT_VAULT_ADDR", target.base.to_owned()));
        set.push(("AGENT_VAULT_TOKEN", target.token.expose_secret().to_owned()));
        set.push(("AGENT_VAULT_VAULT", target.vault.to_owned()));
        Ok(Self { remove, set, dir })
    }

    /// The directory holding this run's files, which the confined command may read.
    pub(super) fn files_dir(&self) -> &Path {
        &self.dir.path
    }

    /// Removes every inherited owned variable from `cmd` and sets ours.
    pub(super) fn apply(&self, cmd: &mut tokio::process::Command) {
        for key in &self.remove {
            cmd.env_remove(key);
        }
        for (key, value) in &self.set {
            cmd.env(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBATCBqaADAgECAgEBMAoGCCqGSM49BAMCMAAwHhcNMjQwMTAxMDAwMDAwWhcN\n-----END CERTIFICATE-----\n";

    fn env_for(inherited: &[(&str, &str)]) -> (tempfile::TempDir, RunEnv) {
        let parent = tempfile::tempdir().unwrap();
        let dir = RunDir::create(parent.path()).unwrap();
        let token = SecretString::from("av_run_test_token".to_owned());
        let target = Target {
            base: "http://127.0.0.1:14321",
            token: &token,
            vault: "my-vault",
            proxy_port: 14322,
            ca_pem: CA,
        };
        let inherited: Vec<(OsString, OsString)> = inherited
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        let roots = vec![b"not-really-a-root".to_vec()];
        let env = RunEnv::build(dir, &target, &inherited, &roots, "tries = 3").unwrap();
        (parent, env)
    }

    fn get<'a>(env: &'a RunEnv, name: &str) -> &'a str {
        env.set
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name} is not set"))
    }

    #[test]
    fn every_path_variable_points_at_a_file_that_exists() {
        let (_parent, env) = env_for(&[]);
        let mut paths: Vec<(String, String)> = BUNDLE_VARS
            .iter()
            .chain(&["NODE_EXTRA_CA_CERTS", "WGETRC"])
            .map(|name| (name.to_string(), get(&env, name).to_owned()))
            .collect();
        let node = get(&env, "NODE_OPTIONS");
        let preload = node
            .strip_prefix("--require \"")
            .and_then(|p| p.strip_suffix('"'))
            .unwrap();
        paths.push(("NODE_OPTIONS --require".into(), preload.to_owned()));
        let java = get(&env, "JAVA_TOOL_OPTIONS");
        for word in java.split(' ') {
            if let Some(p) = word.strip_prefix("-Djavax.net.ssl.trustStore=") {
                paths.push(("JAVA_TOOL_OPTIONS trustStore".into(), p.to_owned()));
            }
            if let Some(p) = word.strip_prefix("-javaagent:") {
                let jar = p.rsplit_once('=').map_or(p, |(jar, _)| jar);
                paths.push(("JAVA_TOOL_OPTIONS javaagent".into(), jar.to_owned()));
            }
        }
        assert_eq!(paths.len(), BUNDLE_VARS.len() + 5);
        for (name, path) in &paths {
            let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{name}={path}: {e}"));
            assert!(meta.is_file() && meta.len() > 0, "{name}={path}");
            assert!(path.contains("agent-vault-run-"), "{name}={path}");
        }
        let bundle = std::fs::read_to_string(get(&env, "SSL_CERT_FILE")).unwrap();
        assert!(bundle.starts_with(CA), "the bundle starts with our root");
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        let wgetrc = std::fs::read_to_string(get(&env, "WGETRC")).unwrap();
        assert!(wgetrc.starts_with("tries = 3\n"), "{wgetrc}");
        assert!(wgetrc.ends_with(&format!(
            "ca_certificate = {}\n",
            get(&env, "SSL_CERT_FILE")
        )));
        let preload = std::fs::read_to_string(preload).unwrap();
        assert_eq!(preload, NODE_PRELOAD);
    }

    #[test]
    fn the_run_directory_is_private_and_removed_with_the_environment() {
        use std::os::unix::fs::PermissionsExt;
        let (_parent, env) = env_for(&[]);
        let dir = env.dir.path.clone();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let mode = entry.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let token = "av_run_test_token";
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "no file holds the token"
            );
        }
        drop(env);
        assert!(!dir.exists());
    }

    #[test]
    fn the_run_directory_falls_back_to_the_next_parent() {
        let parent = tempfile::tempdir().unwrap();
        let file = parent.path().join("a-file");
        std::fs::write(&file, "not a directory").unwrap();
        let second = parent.path().join("made").join("on demand");
        let dir = RunDir::create_in_first(&[file.join("cache"), second.clone()]).unwrap();
        assert!(dir.path.starts_with(&second), "{}", dir.path.display());
        assert!(RunDir::create_in_first(&[file.join("x")]).is_err());
    }

    #[test]
    fn owned_variables_are_replaced_in_any_case_and_options_are_appended() {
        let (_parent, env) = env_for(&[
            ("https_proxy", "http://elsewhere:1"),
            ("Aws_Ca_Bundle", "/etc/other.pem"),
            ("npm_config_proxy", "http://elsewhere:1"),
            ("NODE_OPTIONS", "--max-old-space-size=100"),
            ("JAVA_TOOL_OPTIONS", "-Xmx64m"),
            ("PATH", "/usr/bin"),
        ]);
        for name in ["https_proxy", "Aws_Ca_Bundle", "npm_config_proxy"] {
            assert!(env.remove.iter().any(|k| k == name), "{name} kept");
        }
        assert!(!env.remove.iter().any(|k| k == "PATH"));
        assert!(!env.remove.iter().any(|k| k == "NODE_OPTIONS"));
        assert!(get(&env, "NODE_OPTIONS").starts_with("--max-old-space-size=100 --require \""));
        let java = get(&env, "JAVA_TOOL_OPTIONS");
        assert!(java.starts_with("-Xmx64m -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=14322"));
        assert!(java.contains(" -Djdk.http.auth.tunneling.disabledSchemes= "));
        assert!(
            !java.contains("av_run_test_token"),
            "the JVM options are printed by every JVM"
        );
        assert_eq!(
            get(&env, "HTTPS_PROXY"),
            "http://av_run_test_token:my-vault@127.0.0.1:14322"
        );
        let names: Vec<_> = env
            .set
            .iter()
            .map(|(k, _)| k.to_ascii_uppercase())
            .collect();
        for owned in OWNED_VARS.iter().chain(BUNDLE_VARS) {
            let set = names.iter().any(|n| n == owned);
            let known_unset = [
                "ALL_PROXY",
                "SSL_CERT_DIR",
                "GIT_SSL_CAPATH",
                "CARGO_HTTP_PROXY",
                "NPM_CONFIG_CA",
            ];
            assert!(
                set || known_unset.contains(owned),
                "{owned} is owned but never set"
            );
        }
        let debug = format!("{env:?}");
        assert!(!debug.contains("av_run_test_token"), "{debug}");
    }

    #[test]
    fn node_options_quote_paths() {
        assert_eq!(node_quote("/tmp/a b/x.cjs"), "\"/tmp/a b/x.cjs\"");
        assert_eq!(node_quote("/tmp/a\"b"), "\"/tmp/a\\\"b\"");
        assert_eq!(append_options(Some(OsStr::new("  ")), "x"), "x");
        assert_eq!(append_options(Some(OsStr::new("-a ")), "x"), "-a x");
    }
}
