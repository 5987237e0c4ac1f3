//! Domain newtypes shared by every layer: names, keys and roles are validated once, where they
//! enter the program, and carried as types that cannot hold an invalid value afterwards.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Why a name, key or role was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A vault name broke the slug rules.
    #[error(
        "invalid vault name {0:?}: use 3-64 characters from a-z, 0-9 and '-', not starting or ending with '-' and without '--'"
    )]
    VaultName(String),
    /// A credential key was not UPPER_SNAKE_CASE.
    #[error(
        "invalid credential key {0:?}: keys must match ^[A-Z][A-Z0-9_]*$ and be at most 128 characters"
    )]
    CredentialKey(String),
    /// An agent name broke the naming rules.
    #[error(
        "invalid agent name {0:?}: use 1-64 characters from a-z, 0-9, '-', '_' and '.', starting with a letter or digit"
    )]
    AgentName(String),
    /// An email address was not plausible.
    #[error("invalid email address {0:?}")]
    Email(String),
    /// A role name was not one of the known roles.
    #[error("unknown role {0:?}: expected one of {1}")]
    Role(String, &'static str),
    /// The unmatched-host policy was not `tunnel` or `deny`.
    #[error("unknown unmatched-host policy {0:?}: expected tunnel or deny")]
    Policy(String),
    /// A stored kind or status (actor, principal, token, proposal) was not one this program writes.
    #[error("unknown {what} {value:?}")]
    Kind {
        /// Which kind of value, e.g. `proposal status`.
        what: &'static str,
        /// The text found.
        value: String,
    },
}

impl DomainError {
    fn kind(what: &'static str) -> impl Fn(String) -> Self {
        move |value| Self::Kind { what, value }
    }
}

/// Milliseconds since the Unix epoch, the one time unit stored in the database.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $check:expr, $err:path) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value` and wraps it.
            pub fn parse(value: impl Into<String>) -> Result<Self, DomainError> {
                let value = value.into();
                let check: fn(&str) -> bool = $check;
                if check(&value) { Ok(Self(value)) } else { Err($err(value)) }
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn is_vault_name(s: &str) -> bool {
    (3..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn is_credential_key(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'A'..=b'Z'))
        && s.len() <= 128
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn is_agent_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && s.len() <= 64
        && bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && s.len() <= 254
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@')
}

string_newtype!(
    /// A vault slug: `[a-z0-9-]`, 3–64 characters.
    VaultName,
    is_vault_name,
    DomainError::VaultName
);
string_newtype!(
    /// A credential key in UPPER_SNAKE_CASE.
    CredentialKey,
    is_credential_key,
    DomainError::CredentialKey
);
string_newtype!(
    /// The name of a non-human identity.
    AgentName,
    is_agent_name,
    DomainError::AgentName
);

/// A user's email address, stored lower-cased so that lookups are case-insensitive.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    /// Validates and lower-cases an address.
    pub fn parse(value: impl Into<String>) -> Result<Self, DomainError> {
        let value: String = value.into();
        let trimmed = value.trim().to_ascii_lowercase();
        if is_email(&trimmed) {
            Ok(Self(trimmed))
        } else {
            Err(DomainError::Email(value))
        }
    }

    /// The normalized address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<Email> for String {
    fn from(value: Email) -> String {
        value.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({:?})", self.0)
    }
}

macro_rules! str_enum {
    ($(#[$meta:meta])* $name:ident, $err:expr, $expected:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// The stable text form used in the database, the API and the CLI.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($text => Ok(Self::$variant),)+ other => Err($err(other.to_owned())) }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(
    /// A principal's role inside one vault; the order is the privilege order.
    VaultRole,
    |s| DomainError::Role(s, "proxy, member, admin"),
    "proxy, member, admin",
    {
        /// May use credentials through the proxy, discover and propose; never read values.
        Proxy => "proxy",
        /// May also read and write credential values and approve credential-only proposals.
        Member => "member",
        /// May also manage services, settings and members.
        Admin => "admin",
    }
);

str_enum!(
    /// A human user's role on the whole instance.
    InstanceRole,
    |s| DomainError::Role(s, "owner, member"),
    "owner, member",
    {
        /// Implicit admin of every vault; manages users.
        Owner => "owner",
        /// Sees only the vaults granted to them.
        Member => "member",
    }
);

str_enum!(
    /// What the proxy does with a CONNECT to a host no service binds.
    UnmatchedHostPolicy,
    DomainError::Policy,
    "tunnel, deny",
    {
        /// Splice bytes opaquely: no interception, no credentials.
        Tunnel => "tunnel",
        /// Refuse with 403 `forbidden_host` and a proposal hint.
        Deny => "deny",
    }
);

str_enum!(
    /// Whether a principal (the holder of a vault grant) is a human user or an agent.
    PrincipalKind,
    DomainError::kind("principal kind"),
    "user, agent",
    {
        /// A human with an email and password.
        User => "user",
        /// A non-human identity holding tokens.
        Agent => "agent",
    }
);

str_enum!(
    /// What a stored token stands for (only the kinds that resolve to a principal are stored
    /// as tokens; setup, invite and approval tokens live beside their own rows).
    TokenStoreKind,
    DomainError::kind("token kind"),
    "session, web, agent, scoped",
    {
        /// A human login session for the CLI and the admin API.
        Session => "session",
        /// A human's browser session (the web pages' cookie only).
        Web => "web",
        /// An agent's token.
        Agent => "agent",
        /// A short-lived proxy token bound to one vault.
        Scoped => "scoped",
    }
);

str_enum!(
    /// Where a proposal stands.
    ProposalStatus,
    DomainError::kind("proposal status"),
    "pending, applied, rejected, expired",
    {
        /// Waiting for a human.
        Pending => "pending",
        /// Approved and applied.
        Applied => "applied",
        /// Rejected by a human.
        Rejected => "rejected",
        /// Nobody decided in time.
        Expired => "expired",
    }
);

str_enum!(
    /// What a request-log row records.
    RequestLogKind,
    DomainError::kind("request log kind"),
    "request, tunnel",
    {
        /// An intercepted or forwarded HTTP request.
        Request => "request",
        /// A CONNECT tunnel spliced without interception.
        Tunnel => "tunnel",
    }
);

str_enum!(
    /// Whether a credential can still be used.
    CredentialState,
    DomainError::kind("credential state"),
    "active, revoked",
    {
        /// Its active version is injected and can be rotated.
        Active => "active",
        /// Every version is revoked: never injected or revealed again; only delete remains.
        Revoked => "revoked",
    }
);

str_enum!(
    /// Where one version of a credential stands.
    VersionState,
    DomainError::kind("credential version state"),
    "active, rotated, revoked",
    {
        /// The version the proxy injects; one per usable credential.
        Active => "active",
        /// Replaced by a newer version; kept for rollback until retention destroys it.
        Rotated => "rotated",
        /// Revoked with its credential: never used or revealed again.
        Revoked => "revoked",
    }
);

/// Who did something, as request logs, audit events, proposals and per-agent limits see it.
/// Ids only: a token is named by its public id, never by its value, so `Display` and `Debug`
/// are safe to log.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Actor {
    /// A human user, by user id.
    User(String),
    /// An agent, by agent id; a scoped token an agent minted acts as that agent.
    Agent(String),
    /// A scoped token a human minted (`vault token`, `run`), by the token's public id.
    ScopedToken(String),
}

impl Actor {
    /// The stored kind: `user`, `agent` or `scoped`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::User(_) => "user",
            Self::Agent(_) => "agent",
            Self::ScopedToken(_) => "scoped",
        }
    }

    /// The user, agent or token id.
    pub fn id(&self) -> &str {
        match self {
            Self::User(id) | Self::Agent(id) | Self::ScopedToken(id) => id,
        }
    }

    /// Rebuilds an actor from its stored kind and id.
    pub fn from_stored(kind: &str, id: impl Into<String>) -> Result<Self, DomainError> {
        let id = id.into();
        match kind {
            "user" => Ok(Self::User(id)),
            "agent" => Ok(Self::Agent(id)),
            "scoped" => Ok(Self::ScopedToken(id)),
            other => Err(DomainError::kind("actor kind")(other.to_owned())),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.as_str(), self.id())
    }
}

/// One request-log row the proxy produces and the store writes. Never values, query strings, header values or bodies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLogRow {
    /// The vault's id.
    pub vault_id: String,
    /// Who made the request.
    pub actor: Actor,
    /// An intercepted or forwarded request, or a spliced tunnel.
    pub kind: RequestLogKind,
    /// HTTP method (`CONNECT` for tunnels).
    pub method: String,
    /// `host:port`.
    pub host: String,
    /// Path without the query.
    pub path: String,
    /// The matched service's name.
    pub service: Option<String>,
    /// Names of the credentials attached.
    pub credential_keys: Vec<String>,
    /// Status returned to the agent (0 when the connection failed before one).
    pub status: u16,
    /// Request body bytes forwarded.
    pub bytes_in: u64,
    /// Response body bytes returned.
    pub bytes_out: u64,
    /// Time from request head to end of response (ms).
    pub latency_ms: u64,
    /// The proxy error code, if the proxy made the response.
    pub error_code: Option<&'static str>,
    /// When it happened (ms).
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_names_follow_slug_rules() {
        for ok in ["abc", "my-vault", "a1-b2", &"a".repeat(64)] {
            assert!(VaultName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "-abc",
            "abc-",
            "a--b",
            "ABC",
            "a_b",
            "a b",
            &"a".repeat(65),
            "",
        ] {
            assert!(VaultName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credential_keys_are_upper_snake_case() {
        for ok in ["A", "STRIPE_KEY", "K8S_TOKEN_2"] {
            assert!(CredentialKey::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "stripe_key", "1KEY", "_KEY", "KEY-1", "KEY ", "Stripe"] {
            assert!(CredentialKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_are_ordered_by_privilege() {
        assert!(VaultRole::Proxy < VaultRole::Member);
        assert!(VaultRole::Member < VaultRole::Admin);
        assert_eq!("member".parse::<VaultRole>(), Ok(VaultRole::Member));
        assert!("root".parse::<VaultRole>().is_err());
    }

    #[test]
    fn emails_are_normalized() {
        assert_eq!(
            Email::parse(" Ada@Example.COM ").map(|e| e.0),
            Ok("ada@example.com".into())
        );
        for bad in [
            "ada",
            "@example.com",
            "ada@example",
            "ada@.com",
            "a da@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn actors_round_trip_through_their_stored_form() {
        for actor in [
            Actor::User("u1".into()),
            Actor::Agent("a1".into()),
            Actor::ScopedToken("t1".into()),
        ] {
            assert_eq!(
                Actor::from_stored(actor.as_str(), actor.id()),
                Ok(actor.clone())
            );
        }
        assert_eq!(Actor::Agent("a1".into()).to_string(), "agent a1");
        assert!(Actor::from_stored("robot", "x").is_err());
    }

    #[test]
    fn stored_kinds_parse_back_and_refuse_strangers() {
        for status in ["pending", "applied", "rejected", "expired"] {
            assert_eq!(
                status.parse::<ProposalStatus>().map(|s| s.as_str()),
                Ok(status)
            );
        }
        for kind in ["session", "web", "agent", "scoped"] {
            assert_eq!(kind.parse::<TokenStoreKind>().map(|k| k.as_str()), Ok(kind));
        }
        assert_eq!("user".parse::<PrincipalKind>(), Ok(PrincipalKind::User));
        assert_eq!(
            "approval"
                .parse::<TokenStoreKind>()
                .map_err(|e| e.to_string()),
            Err("unknown token kind \"approval\"".into())
        );
        assert!("Pending".parse::<ProposalStatus>().is_err());
    }
}
