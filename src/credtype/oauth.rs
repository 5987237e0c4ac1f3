//! `oauth`: an access token and what refreshing it needs (refresh token, token endpoint, client
//! credentials, scopes, client authentication method). Only the form of each field is checked
//! here; the refresh flow itself lives elsewhere. The canonical payload is a JSON object of the
//! fields given, with `expires_at` in RFC 3339 UTC and `scopes` as a list; an injection carries
//! the access token.

use secrecy::SecretSlice;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use super::parts::{self, Parts};
use super::{CheckOptions, CredTypeError, Validated, not_expired, when};

/// An oauth value from a JSON or YAML document (the CLI's file, the approval page's text
/// area): JSON is passed on as written; YAML becomes the JSON object, with plain numbers and
/// booleans taken as the strings they were written as (`client_id: 12345`). An error gives
/// only the position: a YAML parser's message may quote the document.
pub fn document_to_json(text: &str) -> Result<Zeroizing<String>, CredTypeError> {
    if serde_json::from_str::<Value>(text).is_ok() {
        return Ok(Zeroizing::new(text.to_owned()));
    }
    let doc: Value = serde_norway::from_str(text).map_err(|e| {
        CredTypeError::invalid(
            "value",
            match e.location() {
                Some(at) => format!(
                    "not a JSON or YAML document (line {}, column {})",
                    at.line(),
                    at.column()
                ),
                None => "not a JSON or YAML document".to_owned(),
            },
        )
    })?;
    let Value::Object(fields) = doc else {
        return Err(CredTypeError::invalid(
            "value",
            "a mapping of oauth fields (access_token: ..., refresh_token: ..., token_url: ...)",
        ));
    };
    let fields: serde_json::Map<String, Value> = fields
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Number(n) => Value::String(n.to_string()),
                Value::Bool(b) => Value::String(b.to_string()),
                other => other,
            };
            (k, v)
        })
        .collect();
    Ok(Zeroizing::new(Value::Object(fields).to_string()))
}

/// Every field of an `oauth` value.
const FIELDS: &[&str] = &[
    "access_token",
    "refresh_token",
    "expires_at",
    "token_url",
    "client_id",
    "client_secret",
    "scopes",
    "auth_method",
];

/// The client authentication methods a token endpoint may be called with.
const AUTH_METHODS: &[&str] = &["client_secret_post", "client_secret_basic"];

/// The canonical payload.
#[derive(Serialize, Deserialize)]
struct Canonical {
    access_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_method: Option<String>,
}

impl Drop for Canonical {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.access_token.zeroize();
        self.refresh_token.zeroize();
        self.client_secret.zeroize();
    }
}

/// Checks an `oauth` value and returns its canonical payload. An access token past its
/// `expires_at` is refused unless expired values are allowed or a refresh token can renew it.
pub(super) fn validate(text: &str, opts: CheckOptions) -> Result<Validated, CredTypeError> {
    if !parts::is_object(text) {
        return Err(CredTypeError::invalid(
            "value",
            format!(
                "a JSON object with access_token and optionally {} (CLI: --from-file with a YAML or JSON document)",
                FIELDS[1..].join(", ")
            ),
        ));
    }
    let mut p = Parts::parse(text, "oauth", FIELDS)?;
    let access_token = token(&mut p, "access_token")?
        .ok_or_else(|| CredTypeError::invalid("access_token", "required, a non-empty string"))?;
    let refresh_token = token(&mut p, "refresh_token")?;
    let expires_at_ms = match p.string("expires_at")? {
        None => None,
        Some(t) => Some(when::parse_rfc3339(&t).ok_or_else(|| {
            CredTypeError::invalid(
                "expires_at",
                "an RFC 3339 time such as 2027-01-31T12:00:00Z",
            )
        })?),
    };
    if let (Some(at), None) = (expires_at_ms, &refresh_token) {
        not_expired("expires_at", at, opts)?;
    }
    let token_url = p
        .string("token_url")?
        .map(|u| check_token_url(&u))
        .transpose()?;
    let client_id = token(&mut p, "client_id")?;
    let client_secret = token(&mut p, "client_secret")?;
    let scopes = p.any("scopes").map(scopes).transpose()?;
    let auth_method = match p.string("auth_method")? {
        None => None,
        Some(m) if AUTH_METHODS.contains(&m.as_str()) => Some(m.to_string()),
        Some(_) => {
            return Err(CredTypeError::invalid(
                "auth_method",
                format!("one of {}", AUTH_METHODS.join(", ")),
            ));
        }
    };
    let canonical = Canonical {
        access_token: access_token.to_string(),
        refresh_token: refresh_token.map(|t| t.to_string()),
        expires_at: expires_at_ms.map(when::rfc3339),
        token_url,
        client_id: client_id.map(|t| t.to_string()),
        client_secret: client_secret.map(|t| t.to_string()),
        scopes,
        auth_method,
    };
    let payload = Zeroizing::new(
        serde_json::to_vec(&canonical)
            .map_err(|_| CredTypeError::invalid("value", "a value that can be encoded"))?,
    );
    Ok(Validated {
        payload: SecretSlice::from(payload.to_vec()),
        derived_metadata: Default::default(),
        expires_at: expires_at_ms,
    })
}

/// The access token of a stored payload.
pub(super) fn access_token(payload: &[u8]) -> Option<Vec<u8>> {
    let canonical: Canonical = serde_json::from_slice(payload).ok()?;
    Some(canonical.access_token.as_bytes().to_vec())
}

/// A token-like field: a non-empty string without control characters or spaces, or absent.
fn token(p: &mut Parts, name: &str) -> Result<Option<Zeroizing<String>>, CredTypeError> {
    match p.string(name)? {
        None => Ok(None),
        Some(t) if !t.is_empty() && !t.chars().any(|c| c.is_control() || c == ' ') => Ok(Some(t)),
        Some(_) => Err(CredTypeError::invalid(
            name,
            "a non-empty string without spaces or control characters",
        )),
    }
}

/// The token endpoint: an https URL with a host and no user or password in it.
fn check_token_url(text: &str) -> Result<String, CredTypeError> {
    let expected =
        "an https URL such as https://auth.example.com/oauth/token, without user:password";
    let url = url::Url::parse(text).map_err(|_| CredTypeError::invalid("token_url", expected))?;
    if url.scheme() != "https"
        || url.host_str().is_none_or(str::is_empty)
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(CredTypeError::invalid("token_url", expected));
    }
    Ok(url.into())
}

/// Scopes as a list of strings, or one space-separated string; each scope non-empty, printable
/// and without spaces.
fn scopes(value: Value) -> Result<Vec<String>, CredTypeError> {
    let expected = "a list of scopes or one space-separated string of them";
    let list: Vec<String> = match value {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(CredTypeError::invalid("scopes", expected)),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(CredTypeError::invalid("scopes", expected)),
    };
    if list
        .iter()
        .any(|s| s.is_empty() || s.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(CredTypeError::invalid(
            "scopes",
            "scopes that are non-empty and contain no spaces or control characters",
        ));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;
    use serde_json::json;

    use super::*;
    use crate::credtype::{CredentialType, injectable, validate as validate_type};

    const NOW_MS: i64 = 1_801_396_800_000; // 2027-01-31T12:00:00Z

    fn check(value: &Value, allow_expired: bool) -> Result<Validated, CredTypeError> {
        validate_type(
            CredentialType::Oauth,
            &value.to_string().into(),
            CheckOptions {
                allow_expired,
                now_ms: NOW_MS,
            },
        )
    }

    #[test]
    fn a_full_value_is_stored_canonically_and_injects_its_access_token() {
        let v = check(
            &json!({
                "access_token": "at-s3cret",
                "refresh_token": "rt-s3cret",
                "expires_at": "2027-01-31T13:00:00+01:00",
                "token_url": "https://auth.example.com/oauth/token",
                "client_id": "agent-vault",
                "client_secret": "cs-s3cret",
                "scopes": "read:user  repo",
                "auth_method": "client_secret_basic",
            }),
            false,
        );
        // Already expired (13:00+01:00 is NOW), but a refresh token can renew it.
        let v = v.unwrap();
        assert_eq!(v.expires_at, Some(NOW_MS));
        let stored: Value = serde_json::from_slice(v.payload.expose_secret()).unwrap();
        assert_eq!(stored["expires_at"], "2027-01-31T12:00:00Z");
        assert_eq!(stored["scopes"], json!(["read:user", "repo"]));
        assert_eq!(
            injectable(CredentialType::Oauth, v.payload.expose_secret()).as_deref(),
            Some(&b"at-s3cret"[..])
        );
        let minimal = check(&json!({"access_token": "at", "scopes": ["a", "b"]}), false).unwrap();
        assert_eq!(
            std::str::from_utf8(minimal.payload.expose_secret()).unwrap(),
            r#"{"access_token":"at","scopes":["a","b"]}"#
        );
        assert_eq!(minimal.expires_at, None);
    }

    #[test]
    fn malformed_fields_are_refused_by_name_without_quoting_values() {
        let cases = [
            (json!({}), "access_token: required"),
            (
                json!({"access_token": ""}),
                "access_token: a non-empty string",
            ),
            (json!({"access_token": 5}), "access_token: a string"),
            (
                json!({"access_token": "a", "expires_at": "s3cret"}),
                "expires_at: an RFC 3339 time",
            ),
            (
                json!({"access_token": "a", "expires_at": 1801396800}),
                "expires_at: a string",
            ),
            (
                json!({"access_token": "a", "token_url": "http://auth.example.com/t"}),
                "token_url: an https URL",
            ),
            (
                json!({"access_token": "a", "token_url": "https://u:s3cret@auth.example.com/t"}),
                "token_url: an https URL",
            ),
            (
                json!({"access_token": "a", "token_url": "s3cret"}),
                "token_url: an https URL",
            ),
            (
                json!({"access_token": "a", "auth_method": "private_key_jwt"}),
                "auth_method: one of client_secret_post, client_secret_basic",
            ),
            (
                json!({"access_token": "a", "scopes": 5}),
                "scopes: a list of scopes",
            ),
            (
                json!({"access_token": "a", "scopes": ["ok", 5]}),
                "scopes: a list of scopes",
            ),
            (
                json!({"access_token": "a", "scopes": ["two words"]}),
                "scopes: scopes that are non-empty",
            ),
            (
                json!({"access_token": "a", "client_secret": "s3cret\n"}),
                "client_secret: a non-empty string",
            ),
            (
                json!({"access_token": "a", "refresh": "s3cret"}),
                "refresh: unknown oauth field",
            ),
        ];
        for (value, says) in cases {
            let err = check(&value, false).unwrap_err().to_string();
            assert!(err.starts_with(says), "{value}: {err}");
            assert!(!err.contains("s3cret"), "{value}: {err}");
        }
        let err = validate_type(
            CredentialType::Oauth,
            &"at-s3cret".to_owned().into(),
            CheckOptions {
                allow_expired: false,
                now_ms: NOW_MS,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("value: a JSON object with access_token"),
            "{err}"
        );
    }

    #[test]
    fn an_expired_access_token_without_a_refresh_token_is_refused_unless_allowed() {
        let value = json!({"access_token": "a", "expires_at": "2027-01-30T12:00:00Z"});
        let err = check(&value, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expires_at: expired at 2027-01-30T12:00:00Z; pass --allow-expired (API: allow_expired) to store it anyway"
        );
        assert_eq!(
            check(&value, true).unwrap().expires_at,
            Some(NOW_MS - 86_400_000)
        );
    }
}
