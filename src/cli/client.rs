//! The typed admin-API client the CLI uses, and the login session file it keeps: one login per
//! server address, each sent only to the address that issued it.

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

/// One saved login: a session token and the server address that issued it, which is the only
/// address the CLI ever sends it to.
#[derive(Clone, Serialize, Deserialize)]
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

/// Every saved login, one per server address, and the one used when no address is given.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Sessions {
    /// The address of the most recent login.
    current: Option<String>,
    /// One login per server address.
    logins: Vec<SavedSession>,
}

/// The session file as it may be found on disk.
#[derive(Deserialize)]
#[serde(untagged)]
enum SessionFile {
    /// Several logins (today's format).
    Several(Sessions),
    /// One login, the format before logins were bound to their address; read and migrated.
    One(SavedSession),
}

/// The form of an address two spellings of the same server share: scheme, host and port
/// (the default port filled in), no trailing slash.
pub fn address_key(address: &str) -> String {
    let trimmed = address.trim().trim_end_matches('/');
    match url::Url::parse(trimmed) {
        Ok(url) => format!(
            "{}://{}:{}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default(),
            url.path().trim_end_matches('/')
        ),
        Err(_) => trimmed.to_owned(),
    }
}

impl Sessions {
    /// Reads the session file (an empty set when there is none).
    pub fn load() -> Result<Self, CliError> {
        let path = session_path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str(&text) {
                Ok(SessionFile::Several(sessions)) => Ok(sessions),
                Ok(SessionFile::One(login)) => Ok(Self {
                    current: Some(login.address.clone()),
                    logins: vec![login],
                }),
                Err(_) => Err(CliError::msg(format!(
                    "{} is corrupt; delete it and run `agent-vault auth login` again",
                    path.display()
                ))),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(CliError::msg(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// The login for `address`, if any.
    pub fn find(&self, address: &str) -> Option<&SavedSession> {
        let key = address_key(address);
        self.logins.iter().find(|s| address_key(&s.address) == key)
    }

    /// The most recent login.
    pub fn current(&self) -> Option<&SavedSession> {
        self.current
            .as_deref()
            .and_then(|a| self.find(a))
            .or_else(|| self.logins.last())
    }

    /// The login for `address`, or the most recent one when no address is given.
    pub fn pick(&self, address: Option<&str>) -> Result<&SavedSession, CliError> {
        match address {
            Some(a) => self.find(a).ok_or_else(|| {
                CliError::msg(format!(
                    "no login for {a}; run agent-vault auth login --address {a}"
                ))
            }),
            None => self
                .current()
                .ok_or_else(|| CliError::msg("not logged in: run `agent-vault auth login` first")),
        }
    }

    /// Adds or replaces the login for its address and makes it the current one.
    pub fn put(&mut self, login: SavedSession) {
        self.remove(&login.address);
        self.current = Some(login.address.clone());
        self.logins.push(login);
    }

    /// Forgets the login for `address`.
    pub fn remove(&mut self, address: &str) {
        let key = address_key(address);
        self.logins.retain(|s| address_key(&s.address) != key);
        if self.current.as_deref().map(address_key) == Some(key) {
            self.current = self.logins.last().map(|s| s.address.clone());
        }
    }

    /// Writes the file (mode 0600 in a 0700 directory), or deletes it when no login is left.
    pub fn save(&self) -> Result<(), CliError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let path = session_path()?;
        if self.logins.is_empty() {
            return match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(CliError::msg(format!(
                    "cannot delete the session file: {e}"
                ))),
            };
        }
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| CliError::msg(format!("cannot create {}: {e}", dir.display())))?;
        }
        let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| CliError::msg(format!("cannot write {}: {e}", tmp.display())))?;
        let text = serde_json::to_string(self).map_err(|e| CliError::msg(e.to_string()))?;
        file.write_all(text.as_bytes())
            .map_err(|e| CliError::msg(format!("cannot write {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| CliError::msg(format!("cannot write {}: {e}", path.display())))?;
        Ok(())
    }
}

/// `~/.agent-vault`: the CLI's own directory, which `run` denies to its command.
pub fn session_dir() -> Result<PathBuf, CliError> {
    let home = std::env::var_os("HOME")
        .ok_or_else(|| CliError::msg("HOME is not set; cannot find the CLI session file"))?;
    Ok(PathBuf::from(home).join(".agent-vault"))
}

/// `~/.agent-vault/session.json`.
pub fn session_path() -> Result<PathBuf, CliError> {
    Ok(session_dir()?.join("session.json"))
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
            // A login is bound to its server's address; a redirect must not take it elsewhere.
            .redirect(reqwest::redirect::Policy::none())
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
        // A login goes only to the server that issued it: another --address gets an error, not
        // the token.
        let sessions = Sessions::load()?;
        let session = sessions.pick(address)?;
        Self::with_token(
            &session.address,
            SecretString::from(session.token.clone()),
            Acting::User,
        )
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
