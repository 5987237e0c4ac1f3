//! `database_url`: a connection URL (`postgres://app:PASSWORD@db.example.com:5432/app`). It
//! must parse with a scheme and a host. Only the password is secret: it is what an injection
//! carries, and the URL without it (and without its query, where drivers also accept
//! passwords) becomes the derived metadata `url`.

use percent_encoding::percent_decode_str;
use url::Url;

use super::{CredTypeError, Validated, clip};

/// What a connection URL looks like, for error messages.
const EXAMPLE: &str = "postgres://user:password@db.example.com:5432/app";

/// Checks a `database_url` value and returns it as its own canonical payload.
pub(super) fn validate(text: &str) -> Result<Validated, CredTypeError> {
    if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(CredTypeError::invalid(
            "value",
            "a connection URL without spaces or control characters",
        ));
    }
    let url = Url::parse(text).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => CredTypeError::invalid(
            "value",
            format!("a connection URL with a scheme, like {EXAMPLE}"),
        ),
        // The parser's messages are fixed phrases ("invalid port number"), never the input.
        other => CredTypeError::invalid(
            "value",
            format!("a connection URL like {EXAMPLE} ({other})"),
        ),
    })?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(CredTypeError::invalid(
            "value",
            format!("a connection URL with a host after the scheme, like {EXAMPLE}"),
        ));
    }
    let mut shown = url.clone();
    // A URL with a host always takes a password change; the fallback keeps nothing secret.
    if shown.set_password(None).is_err() {
        shown = Url::parse(&format!(
            "{}://{}",
            url.scheme(),
            url.host_str().unwrap_or("")
        ))
        .map_err(|_| CredTypeError::invalid("value", "a connection URL"))?;
    }
    shown.set_query(None);
    shown.set_fragment(None);
    let mut validated = Validated::text(text);
    validated
        .derived_metadata
        .insert("url".to_owned(), clip(shown.as_str()));
    Ok(validated)
}

/// The password of a stored URL, percent-decoded; `None` when it has none.
pub(super) fn password(payload: &[u8]) -> Option<Vec<u8>> {
    let url = Url::parse(std::str::from_utf8(payload).ok()?).ok()?;
    let password = url.password()?;
    Some(percent_decode_str(password).collect())
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::credtype::{CheckOptions, CredentialType, injectable, validate as validate_type};

    fn check(value: &str) -> Result<Validated, CredTypeError> {
        validate_type(
            CredentialType::DatabaseUrl,
            &value.to_owned().into(),
            CheckOptions {
                allow_expired: false,
                now_ms: 0,
            },
        )
    }

    #[test]
    fn the_url_without_its_password_is_metadata_and_the_password_is_injected() {
        let url =
            "postgres://app:p%40ss%2Fw0rd@db.example.com:5432/app?sslmode=require&password=s3cret";
        let v = check(url).unwrap();
        assert_eq!(v.payload.expose_secret(), url.as_bytes());
        assert_eq!(
            v.derived_metadata["url"],
            "postgres://app@db.example.com:5432/app"
        );
        assert_eq!(
            injectable(CredentialType::DatabaseUrl, url.as_bytes()).as_deref(),
            Some(&b"p@ss/w0rd"[..])
        );
        let v = check("mysql://db.internal/app").unwrap();
        assert_eq!(v.derived_metadata["url"], "mysql://db.internal/app");
        assert_eq!(
            injectable(CredentialType::DatabaseUrl, b"mysql://db.internal/app"),
            None
        );
    }

    #[test]
    fn a_url_without_a_host_or_scheme_is_refused_without_quoting_it() {
        for (bad, says) in [
            ("db.example.com:5432/app", "with a host"),
            ("postgres:///app?host=/run/s3cret", "with a host"),
            ("app:s3cret", "with a host"),
            ("/var/run/s3cret", "with a scheme"),
            ("s3cret", "with a scheme"),
            ("", "with a scheme"),
            (
                "postgres://u:s3cret@db.example.com:99999/app",
                "invalid port number",
            ),
            ("postgres://u:s3cret @db/app", "without spaces"),
        ] {
            let err = check(bad).unwrap_err().to_string();
            assert!(err.starts_with("value: "), "{bad}: {err}");
            assert!(err.contains(says), "{bad}: {err}");
            assert!(!err.contains("s3cret"), "{bad}: {err}");
        }
    }
}
