//! The environment `agent-vault run` gives its command: the proxy URL (carrying the run's token),
//! the CA files every common runtime reads, and nothing inherited that could point elsewhere.
//! Kept apart from the process handling in `run.rs` so that what the child sees is decided (and
//! tested) in one place.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

use super::CliError;

/// Variables `run` owns; any inherited copy (in any case) is replaced.
const OWNED_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "NODE_USE_ENV_PROXY",
    "GIT_SSL_CAINFO",
    "DENO_CERT",
    "AGENT_VAULT_ADDR",
    "AGENT_VAULT_TOKEN",
    "AGENT_VAULT_VAULT",
];

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

fn write_private(path: &Path, contents: &str) -> Result<(), CliError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CliError::msg(format!("cannot create {}: {e}", dir.display())))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| CliError::msg(format!("cannot write {}: {e}", tmp.display())))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| CliError::msg(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| CliError::msg(format!("cannot write {}: {e}", path.display())))
}

/// Writes `ca.pem` (the agent-vault root only) and `ca-bundle.pem` (it plus the system roots,
/// so tunnelled hosts that present their real certificates still verify).
fn write_ca_files(ca_pem: &str) -> Result<(PathBuf, PathBuf), CliError> {
    let home = std::env::var_os("HOME").ok_or_else(|| CliError::msg("HOME is not set"))?;
    let dir = PathBuf::from(home).join(".agent-vault");
    let ca = dir.join("ca.pem");
    let bundle = dir.join("ca-bundle.pem");
    write_private(&ca, ca_pem)?;
    let mut all = String::from(ca_pem);
    for cert in rustls_native_certs::load_native_certs().certs {
        all.push_str(&pem_encode(&cert));
    }
    write_private(&bundle, &all)?;
    Ok((ca, bundle))
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

/// What the child's environment gains and loses. Holds the proxy URL, which carries the run's
/// token, so its `Debug` names variables only.
pub(super) struct RunEnv {
    remove: Vec<OsString>,
    set: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for RunEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunEnv")
            .field("remove", &self.remove)
            .field("set", &self.set.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

impl RunEnv {
    /// Writes the CA files and works out every variable for a run against the server at `base`.
    pub(super) fn prepare(
        base: &str,
        token: &SecretString,
        vault: &str,
        proxy_port: u64,
        ca_pem: &str,
    ) -> Result<Self, CliError> {
        let (ca, bundle) = write_ca_files(ca_pem)?;
        let ca = ca.to_string_lossy().into_owned();
        let bundle = bundle.to_string_lossy().into_owned();
        let host = proxy_host(base);
        let proxy = format!(
            "http://{}:{}@{host}:{proxy_port}",
            token.expose_secret(),
            vault
        );
        let no_proxy = format!("localhost,127.0.0.1,::1,{host}");
        let remove = std::env::vars_os()
            .map(|(key, _)| key)
            .filter(|key| {
                let k = key.to_string_lossy().to_ascii_uppercase();
                OWNED_VARS.contains(&k.as_str())
            })
            .collect();
        let mut set = Vec::new();
        for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            set.push((name, proxy.clone()));
        }
        set.push(("NO_PROXY", no_proxy.clone()));
        set.push(("no_proxy", no_proxy));
        for name in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO",
            "DENO_CERT",
        ] {
            set.push((name, bundle.clone()));
        }
        set.push(("NODE_EXTRA_CA_CERTS", ca));
        set.push(("NODE_USE_ENV_PROXY", "1".into()));
        set.push(("AGENT_VAULT_ADDR", base.to_owned()));
        set.push(("AGENT_VAULT_TOKEN", token.expose_secret().to_owned()));
        set.push(("AGENT_VAULT_VAULT", vault.to_owned()));
        Ok(Self { remove, set })
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
