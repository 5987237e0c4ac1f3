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
//!
//! What each type checks and derives (one file each):
//! - `api_key`: non-empty, no control characters. `password`: non-empty (its username is the
//!   caller's metadata `username`). `generic`: any text up to [`MAX_VALUE_BYTES`].
//! - `token` (`jwt.rs`): as `api_key`; a JWT's `exp` becomes `expires_at`.
//! - `certificate` (`pem.rs`): chain and key parse, the key matches the leaf; `expires_at` is
//!   the leaf's notAfter; derived `subject`, `issuer`, `not_after`, `fingerprint` (SHA-256 of
//!   the leaf's DER, hex).
//! - `ssh_key` (`ssh.rs`): OpenSSH key, decrypted with its passphrase if encrypted; derived
//!   `fingerprint` (`SHA256:...`) and `algorithm`.
//! - `oauth` (`oauth.rs`): fields well-formed; `expires_at` from the value.
//! - `database_url` (`dburl.rs`): URL with scheme and host; derived `url` without password.
//!
//! An expiry already past (`exp`, notAfter, an `oauth` `expires_at` without a refresh token)
//! is refused unless [`CheckOptions::allow_expired`]. Errors name the part and what was
//! expected; no message quotes a value (multi-part objects are read field by field for that,
//! `parts.rs`).

mod dburl;
mod jwt;
mod oauth;
mod parts;
mod pem;
mod ssh;
mod when;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};

pub use oauth::document_to_json as oauth_document_to_json;
pub use pem::{ClientIdentity, client_identity};
pub use when::parse_rfc3339;

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
    let text = value.expose_secret();
    if text.len() > MAX_VALUE_BYTES {
        return Err(CredTypeError::invalid(
            "value",
            format!("at most {MAX_VALUE_BYTES} bytes"),
        ));
    }
    let validated = match ty {
        CredentialType::ApiKey => {
            one_line(text)?;
            Validated::text(text)
        }
        CredentialType::Token => {
            one_line(text)?;
            let expires_at = jwt::expiry(text)?;
            if let Some(at) = expires_at {
                not_expired("value (JWT exp)", at, opts)?;
            }
            Validated {
                expires_at,
                ..Validated::text(text)
            }
        }
        CredentialType::Password => {
            if text.is_empty() {
                return Err(CredTypeError::invalid("value", "a non-empty password"));
            }
            Validated::text(text)
        }
        CredentialType::Certificate => pem::validate(text, opts)?,
        CredentialType::SshKey => ssh::validate(text)?,
        CredentialType::Oauth => oauth::validate(text, opts)?,
        CredentialType::DatabaseUrl => dburl::validate(text)?,
        CredentialType::Generic => Validated::text(text),
    };
    // JSON escaping can make a canonical payload a little longer than what was given.
    if validated.payload.expose_secret().len() > MAX_VALUE_BYTES {
        return Err(CredTypeError::invalid(
            "value",
            format!("at most {MAX_VALUE_BYTES} bytes in canonical form"),
        ));
    }
    Ok(validated)
}

impl Validated {
    /// A single-part value: the text itself, nothing derived.
    fn text(text: &str) -> Self {
        Self {
            payload: SecretSlice::from(text.as_bytes().to_vec()),
            derived_metadata: BTreeMap::new(),
            expires_at: None,
        }
    }
}

/// The check shared by one-line types: non-empty, and nothing a header could be split by.
fn one_line(text: &str) -> Result<(), CredTypeError> {
    if text.is_empty() {
        return Err(CredTypeError::invalid("value", "a non-empty string"));
    }
    if text.chars().any(char::is_control) {
        return Err(CredTypeError::invalid(
            "value",
            "no control characters (newline, tab, NUL)",
        ));
    }
    Ok(())
}

/// Refuses an expiry at or before `opts.now_ms` unless expired values were allowed.
fn not_expired(field: &str, at_ms: i64, opts: CheckOptions) -> Result<(), CredTypeError> {
    if at_ms <= opts.now_ms && !opts.allow_expired {
        return Err(CredTypeError::Expired {
            field: field.to_owned(),
            at_rfc3339: when::rfc3339(at_ms),
        });
    }
    Ok(())
}

/// A derived metadata value as metadata may hold it: control characters replaced, cut to
/// [`MAX_METADATA_VALUE_BYTES`] at a character boundary.
fn clip(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_METADATA_VALUE_BYTES));
    for c in value.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > MAX_METADATA_VALUE_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

/// The bytes a header, query or placeholder injection of a sealed `payload` carries: the text
/// for single-part types, the access token for `oauth`, the password (percent-decoded) for
/// `database_url`; `None` for types that are not a string a request can carry (`certificate`,
/// `ssh_key`), for a `database_url` without a password and for a payload that does not parse.
pub fn injectable(ty: CredentialType, payload: &[u8]) -> Option<Cow<'_, [u8]>> {
    match ty {
        CredentialType::ApiKey
        | CredentialType::Token
        | CredentialType::Password
        | CredentialType::Generic => Some(Cow::Borrowed(payload)),
        CredentialType::Certificate | CredentialType::SshKey => None,
        CredentialType::Oauth => oauth::access_token(payload).map(Cow::Owned),
        CredentialType::DatabaseUrl => dburl::password(payload).map(Cow::Owned),
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

    fn opts(allow_expired: bool) -> CheckOptions {
        CheckOptions {
            allow_expired,
            now_ms: 1_801_396_800_000, // 2027-01-31T12:00:00Z
        }
    }

    fn check(ty: CredentialType, value: &str) -> Result<Validated, CredTypeError> {
        validate(ty, &value.to_owned().into(), opts(false))
    }

    #[test]
    fn single_part_types_keep_the_text_and_refuse_empty_or_control_characters() {
        for ty in [CredentialType::ApiKey, CredentialType::Token] {
            let v = check(ty, "sk_test_abc").unwrap();
            assert_eq!(v.payload.expose_secret(), b"sk_test_abc");
            assert!(v.derived_metadata.is_empty() && v.expires_at.is_none());
            assert_eq!(
                check(ty, "").unwrap_err().to_string(),
                "value: a non-empty string"
            );
            let err = check(ty, "sk_s3cret\n").unwrap_err().to_string();
            assert_eq!(err, "value: no control characters (newline, tab, NUL)");
        }
        assert_eq!(
            check(CredentialType::Password, "").unwrap_err().to_string(),
            "value: a non-empty password"
        );
        assert!(check(CredentialType::Password, "pass word\twith tab").is_ok());
        assert!(check(CredentialType::Generic, "").is_ok());
        assert!(check(CredentialType::Generic, "multi\nline\0bytes").is_ok());
    }

    #[test]
    fn every_type_is_refused_over_64_kib() {
        let big = "a".repeat(MAX_VALUE_BYTES + 1);
        for ty in CredentialType::ALL {
            let err = check(ty, &big).unwrap_err().to_string();
            assert_eq!(err, "value: at most 65536 bytes", "{ty}");
        }
        let v = check(CredentialType::Generic, &big[1..]).unwrap();
        assert_eq!(v.payload.expose_secret().len(), MAX_VALUE_BYTES);
    }

    #[test]
    fn a_jwt_token_gets_its_exp_as_expiry_and_an_expired_one_needs_allow_expired() {
        use base64::Engine as _;
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = |exp: i64| {
            format!(
                "{}.{}.sig",
                enc(r#"{"alg":"HS256","typ":"JWT"}"#),
                enc(&format!(r#"{{"exp":{exp}}}"#))
            )
        };
        let v = check(CredentialType::Token, &jwt(1_801_400_000)).unwrap();
        assert_eq!(v.expires_at, Some(1_801_400_000_000));
        let err = check(CredentialType::Token, &jwt(1_801_000_000)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("value (JWT exp): expired at 2027-01-26T21:46:40Z"),
            "{err}"
        );
        let v = validate(
            CredentialType::Token,
            &jwt(1_801_000_000).into(),
            opts(true),
        )
        .unwrap();
        assert_eq!(v.expires_at, Some(1_801_000_000_000));
        // The same text as an api_key is opaque: no expiry read.
        let v = check(CredentialType::ApiKey, &jwt(1_801_000_000)).unwrap();
        assert_eq!(v.expires_at, None);
    }

    #[test]
    fn injection_carries_text_access_token_or_password_and_nothing_for_keys() {
        assert_eq!(
            injectable(CredentialType::ApiKey, b"k").as_deref(),
            Some(&b"k"[..])
        );
        assert_eq!(injectable(CredentialType::Certificate, b"{}"), None);
        assert_eq!(injectable(CredentialType::SshKey, b"{}"), None);
        assert_eq!(injectable(CredentialType::Oauth, b"not json"), None);
        for ty in CredentialType::ALL {
            let text = can_serve(ty, Usage::Text);
            let key = matches!(ty, CredentialType::Certificate | CredentialType::SshKey);
            assert_eq!(text, !key, "{ty}");
            assert_eq!(
                can_serve(ty, Usage::ClientIdentity),
                ty == CredentialType::Certificate
            );
        }
    }

    #[test]
    fn derived_values_are_clipped_to_metadata_limits() {
        let long = "é".repeat(200);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_METADATA_VALUE_BYTES && clipped.len() >= 254);
        assert_eq!(clip("a\nb"), "a?b");
        let mut m = BTreeMap::new();
        m.insert("subject".to_owned(), clipped);
        assert!(validate_metadata(&m).is_ok());
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
