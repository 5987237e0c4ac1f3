//! The typed admin-API client the CLI uses, and the login session file it keeps.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CliError;

/// Default admin API address.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:14321";

/// The CLI's saved login (0600 file under the user's home directory).
#[derive(Serialize, Deserialize)]
pub struct SavedSession {
    /// Server address.
    pub address: String,
    /// Session token.
    pub token: String,
    /// Who logged in.
    pub email: String,
    /// Expiry (ms).
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for SavedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedSession")
            .field("address", &self.address)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// `~/.agent-vault/session.json`.
pub fn session_path() -> Result<PathBuf, CliError> {
    let home = std::env::var_os("HOME")
        .ok_or_else(|| CliError::msg("HOME is not set; cannot find the CLI session file"))?;
    Ok(PathBuf::from(home)
        .join(".agent-vault")
        .join("session.json"))
}

/// Reads the saved session, if any.
pub fn load_session() -> Result<Option<SavedSession>, CliError> {
    let path = session_path()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|_| {
            CliError::msg(format!(
                "{} is corrupt; run `agent-vault auth login` again",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::msg(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Saves the session with mode 0600 in a 0700 directory.
pub fn save_session(session: &SavedSession) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = session_path()?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CliError::msg(format!("cannot create {}: {e}", dir.display())))?;
    }
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| CliError::msg(format!("cannot write {}: {e}", tmp.display())))?;
    let text = serde_json::to_string(session).map_err(|e| CliError::msg(e.to_string()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| CliError::msg(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| CliError::msg(format!("cannot write {}: {e}", path.display())))?;
    Ok(())
}

/// Deletes the saved session.
pub fn forget_session() -> Result<(), CliError> {
    match std::fs::remove_file(session_path()?) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CliError::msg(format!(
            "cannot delete the session file: {e}"
        ))),
    }
}

/// Who the CLI acts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acting {
    /// A human's saved login.
    User,
    /// An agent (`AGENT_VAULT_TOKEN`).
    Agent,
    /// Nobody (register, login).
    Anonymous,
}

/// A client of the admin API.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<SecretString>,
    /// Who it acts as.
    pub acting: Acting,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("acting", &self.acting)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ApiErrorBody {
    error: String,
    message: String,
}

impl Client {
    fn http() -> Result<reqwest::Client, CliError> {
        // Never through a proxy: inside `agent-vault run` HTTP(S)_PROXY points at our own proxy.
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| CliError::msg(format!("cannot build an HTTP client: {e}")))
    }

    /// A client without credentials.
    pub fn anonymous(address: &str) -> Result<Self, CliError> {
        Ok(Self {
            http: Self::http()?,
            base: address.trim_end_matches('/').to_owned(),
            token: None,
            acting: Acting::Anonymous,
        })
    }

    /// A client with an explicit token.
    pub fn with_token(
        address: &str,
        token: SecretString,
        acting: Acting,
    ) -> Result<Self, CliError> {
        Ok(Self {
            http: Self::http()?,
            base: address.trim_end_matches('/').to_owned(),
            token: Some(token),
            acting,
        })
    }

    /// The usual client: `AGENT_VAULT_TOKEN` (agent mode) or the saved login.
    pub fn authenticated(address: Option<&str>) -> Result<Self, CliError> {
        if let Ok(token) = std::env::var("AGENT_VAULT_TOKEN")
            && !token.is_empty()
        {
            let addr = address
                .map(str::to_owned)
                .unwrap_or_else(|| DEFAULT_ADDRESS.to_owned());
            return Self::with_token(&addr, SecretString::from(token), Acting::Agent);
        }
        let session = load_session()?
            .ok_or_else(|| CliError::msg("not logged in: run `agent-vault auth login` first"))?;
        let addr = address.map(str::to_owned).unwrap_or(session.address);
        Self::with_token(&addr, SecretString::from(session.token), Acting::User)
    }

    /// The server's base address.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and decodes the JSON answer (or `null` for 204).
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose_secret());
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                CliError::msg(format!(
                    "cannot reach agent-vault at {}: is the server running? (set --address or AGENT_VAULT_ADDR)",
                    self.base
                ))
            } else {
                CliError::msg(format!("request to {} failed: {}", self.base, e.without_url()))
            }
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            CliError::msg(format!("reading the response failed: {}", e.without_url()))
        })?;
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<ApiErrorBody>(&bytes) {
                Ok(b) => (b.error, b.message),
                Err(_) => (
                    "error".into(),
                    String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                ),
            };
            let message = if status == StatusCode::UNAUTHORIZED && self.acting == Acting::User {
                format!("{message} (your login may have expired: run `agent-vault auth login`)")
            } else {
                message
            };
            return Err(CliError::Api {
                status: status.as_u16(),
                code,
                message,
            });
        }
        let bytes = if bytes.is_empty() {
            bytes::Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::msg(format!("unexpected response from the server: {e}")))
    }

    /// GET.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send(Method::GET, path, None).await
    }

    /// POST with a JSON body.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, CliError> {
        self.send(Method::POST, path, Some(body)).await
    }

    /// PUT with a JSON body.
    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, CliError> {
        self.send(Method::PUT, path, Some(body)).await
    }

    /// PATCH with a JSON body.
    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, CliError> {
        self.send(Method::PATCH, path, Some(body)).await
    }

    /// DELETE, optionally with a JSON body.
    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, CliError> {
        self.send(Method::DELETE, path, body).await
    }

    /// GET returning raw text (the CA certificate).
    pub async fn get_text(&self, path: &str) -> Result<String, CliError> {
        let url = format!("{}{path}", self.base);
        let resp = self.http.get(&url).send().await.map_err(|e| {
            CliError::msg(format!(
                "cannot reach agent-vault at {}: {}",
                self.base,
                e.without_url()
            ))
        })?;
        if !resp.status().is_success() {
            return Err(CliError::msg(format!(
                "{path} answered HTTP {}",
                resp.status().as_u16()
            )));
        }
        resp.text()
            .await
            .map_err(|e| CliError::msg(format!("reading the response failed: {}", e.without_url())))
    }
}

/// Percent-encodes a path segment.
pub fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
