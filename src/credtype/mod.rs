//! Credential types: what each type holds, how a value given for it is checked and put into the
//! canonical form that is sealed, what derived facts (expiry, fingerprint) it yields, and what a
//! service may do with it. Pure: no IO, and no clock but the `now_ms` it is given.
//!
//! The value of every type travels as one secret string (API field `value`, CLI stdin or
//! files). Single-part types take the text itself. Multi-part types take a JSON object naming
//! their parts (the CLI builds it from `--from-file`/`--key-file` or a YAML document):
//! - `certificate`: `{"certificate": PEM chain (leaf first), "private_key": PEM}`, or one PEM
//!   text holding both;
//! - `ssh_key`: `{"private_key": OpenSSH PEM, "passphrase": optional}`, or the key text alone;
//! - `oauth`: `{"access_token", "refresh_token"?, "expires_at"? (RFC 3339), "token_url"?,
//!   "client_id"?, "client_secret"?, "scopes"?, "auth_method"?}`.
//!
//! The sealed payload is canonical: the text for single-part types, a JSON object with the
//! names above for multi-part ones. [`injectable`] says which bytes a header or placeholder
//! injection of that payload carries.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};

/// Largest value of any type, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Most metadata entries one credential may carry.
pub const MAX_METADATA_ENTRIES: usize = 32;

/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 256;

/// What a credential is; decides what its value must look like and how services may use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialType {
    /// One opaque string (the default).
    ApiKey,
    /// A bearer token or JWT; a JWT's `exp` becomes the credential's expiry.
    Token,
    /// A password; its username, if any, is the metadata entry `username`.
    Password,
    /// A PEM certificate chain and its private key: a TLS client identity.
    Certificate,
    /// An OpenSSH private key, optionally with its passphrase.
    SshKey,
    /// OAuth tokens and the endpoint that refreshes them.
    Oauth,
    /// A connection URL; only its password part is secret.
    DatabaseUrl,
    /// Any bytes up to [`MAX_VALUE_BYTES`].
    Generic,
}

impl CredentialType {
    /// Every type, in documentation order.
    pub const ALL: [CredentialType; 8] = [
        Self::ApiKey,
        Self::Token,
        Self::Password,
        Self::Certificate,
        Self::SshKey,
        Self::Oauth,
        Self::DatabaseUrl,
        Self::Generic,
    ];

    /// The name used in the API, the CLI and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::Token => "token",
            Self::Password => "password",
            Self::Certificate => "certificate",
            Self::SshKey => "ssh_key",
            Self::Oauth => "oauth",
            Self::DatabaseUrl => "database_url",
            Self::Generic => "generic",
        }
    }
}

impl fmt::Display for CredentialType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CredentialType {
    type Err = CredTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| CredTypeError::UnknownType(s.chars().take(64).collect()))
    }
}

/// Why a value, a type name or metadata was refused. Every message names the field and what
/// was expected, and never quotes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredTypeError {
    /// The type name is not one of [`CredentialType::ALL`].
    #[error(
        "unknown credential type {0:?}; expected one of api_key, token, password, certificate, ssh_key, oauth, database_url, generic"
    )]
    UnknownType(String),
    /// A part of the value is missing or malformed.
    #[error("{field}: {expected}")]
    Invalid {
        /// The part, e.g. `value`, `private_key`, `certificate`, `metadata.username`.
        field: String,
        /// What was expected, in words.
        expected: String,
    },
    /// The value has expired (a certificate past notAfter) and expiry was not allowed.
    #[error(
        "{field}: expired at {at_rfc3339}; pass --allow-expired (API: allow_expired) to store it anyway"
    )]
    Expired {
        /// The part that carries the expiry.
        field: String,
        /// When it expired.
        at_rfc3339: String,
    },
}

impl CredTypeError {
    /// A malformed or missing part.
    pub fn invalid(field: impl Into<String>, expected: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            expected: expected.into(),
        }
    }
}

/// How the caller asked for a value to be checked.
#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Store an already-expired certificate or token anyway.
    pub allow_expired: bool,
    /// The time to compare expiries with (ms since the epoch).
    pub now_ms: i64,
}

/// A value that passed its type's checks, in the form to seal.
pub struct Validated {
    /// The canonical payload to seal (see the module docs).
    pub payload: SecretSlice<u8>,
    /// Facts read from the value that are not secret (a key fingerprint, a certificate subject,
    /// a URL without its password); stored as metadata the caller cannot override.
    pub derived_metadata: BTreeMap<String, String>,
    /// Expiry read from the value (JWT `exp`, certificate notAfter, OAuth `expires_at`), ms.
    pub expires_at: Option<i64>,
}

impl fmt::Debug for Validated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validated")
            .field("derived_metadata", &self.derived_metadata)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Checks `value` as a credential of type `ty` and returns its canonical payload.
pub fn validate(
    ty: CredentialType,
    value: &SecretString,
    opts: CheckOptions,
) -> Result<Validated, CredTypeError> {
    let _ = opts;
    let text = value.expose_secret();
    if text.len() > MAX_VALUE_BYTES {
        return Err(CredTypeError::invalid(
            "value",
            format!("at most {MAX_VALUE_BYTES} bytes"),
        ));
    }
    match ty {
        CredentialType::ApiKey | CredentialType::Token | CredentialType::Password => {
            if text.is_empty() {
                return Err(CredTypeError::invalid("value", "a non-empty string"));
            }
            if ty != CredentialType::Password && text.chars().any(char::is_control) {
                return Err(CredTypeError::invalid(
                    "value",
                    "no control characters (newline, tab, NUL)",
                ));
            }
        }
        CredentialType::Generic => {}
        // Filled in by the credential-types work: until then these types are refused.
        other => {
            return Err(CredTypeError::invalid(
                "type",
                format!("{other} is not supported yet"),
            ));
        }
    }
    Ok(Validated {
        payload: SecretSlice::from(text.as_bytes().to_vec()),
        derived_metadata: BTreeMap::new(),
        expires_at: None,
    })
}

/// The bytes a header, query or placeholder injection of a sealed `payload` carries: the text
/// for single-part types, the access token for `oauth`, the password for `database_url`;
/// `None` for types that are not a string a request can carry (`certificate`, `ssh_key`).
pub fn injectable(ty: CredentialType, payload: &[u8]) -> Option<Cow<'_, [u8]>> {
    match ty {
        CredentialType::ApiKey
        | CredentialType::Token
        | CredentialType::Password
        | CredentialType::Generic => Some(Cow::Borrowed(payload)),
        CredentialType::Certificate | CredentialType::SshKey => None,
        CredentialType::Oauth | CredentialType::DatabaseUrl => None,
    }
}

/// A way a service uses a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// Its text goes into a header, query parameter, body field or placeholder.
    Text,
    /// It is the password of `Authorization: Basic`, its username from metadata.
    BasicAuth,
    /// It is the TLS client identity presented to the upstream (`mtls`).
    ClientIdentity,
}

/// Whether a credential of type `ty` can serve `usage`; `service set` refuses a service that
/// asks for anything else, naming both.
pub fn can_serve(ty: CredentialType, usage: Usage) -> bool {
    match usage {
        Usage::Text => injectable_kind(ty),
        Usage::BasicAuth => injectable_kind(ty),
        Usage::ClientIdentity => ty == CredentialType::Certificate,
    }
}

fn injectable_kind(ty: CredentialType) -> bool {
    !matches!(ty, CredentialType::Certificate | CredentialType::SshKey)
}

/// Checks caller-given metadata: at most [`MAX_METADATA_ENTRIES`] entries, keys of
/// `[a-z0-9_.-]` (1 to 64 characters), values of at most [`MAX_METADATA_VALUE_BYTES`] bytes
/// without control characters.
pub fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<(), CredTypeError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(CredTypeError::invalid(
            "metadata",
            format!(
                "at most {MAX_METADATA_ENTRIES} entries, got {}",
                metadata.len()
            ),
        ));
    }
    for (key, value) in metadata {
        let good_key = !key.is_empty()
            && key.len() <= 64
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if !good_key {
            return Err(CredTypeError::invalid(
                format!(
                    "metadata key {:?}",
                    key.chars().take(64).collect::<String>()
                ),
                "1 to 64 characters of a-z, 0-9, '_', '.', '-'",
            ));
        }
        if value.len() > MAX_METADATA_VALUE_BYTES || value.chars().any(char::is_control) {
            return Err(CredTypeError::invalid(
                format!("metadata.{key}"),
                format!("at most {MAX_METADATA_VALUE_BYTES} bytes without control characters"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_round_trip_and_unknown_names_are_refused() {
        for t in CredentialType::ALL {
            assert_eq!(t.as_str().parse::<CredentialType>(), Ok(t));
        }
        let err = "pgp_key".parse::<CredentialType>().unwrap_err();
        assert!(err.to_string().contains("pgp_key"), "{err}");
    }

    #[test]
    fn metadata_limits() {
        let mut m = BTreeMap::new();
        m.insert("team.owner-1".into(), "payments".into());
        assert!(validate_metadata(&m).is_ok());
        m.insert("Bad".into(), "x".into());
        assert!(
            validate_metadata(&m)
                .unwrap_err()
                .to_string()
                .contains("Bad")
        );
    }
}
