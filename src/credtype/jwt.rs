//! Reading a `token` that is a JWT: only its `exp` claim, to become the credential's expiry.
//! Signatures are not checked (the vault is not the token's audience) and nothing else of the
//! token is kept or shown.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::Value;

use super::CredTypeError;

/// base64url as JWTs write it (no padding), also accepting the padding some issuers add.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Latest `exp` accepted: the end of year 9999, as RFC 3339 can write it.
const MAX_EXP_SECONDS: f64 = 253_402_300_799.0;

/// The `exp` of `token` in ms since the epoch, when `token` is a JWS compact JWT that has one.
/// A token that is not a JWT (not three dot-separated segments whose first is a base64url JSON
/// header naming an `alg`) is fine and has no expiry; one whose header says JWT but whose
/// claims or `exp` are malformed is refused.
pub(super) fn expiry(token: &str) -> Result<Option<i64>, CredTypeError> {
    let mut segments = token.split('.');
    let (Some(header), Some(claims), Some(_signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Ok(None);
    };
    let is_jwt_header = B64URL
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .is_some_and(|h| h.get("alg").is_some_and(Value::is_string));
    if !is_jwt_header {
        return Ok(None);
    }
    let claims: Value = B64URL
        .decode(claims)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(Value::is_object)
        .ok_or_else(|| {
            CredTypeError::invalid(
                "value",
                "a JWT whose second segment is a base64url JSON object of claims (the header says it is a JWT)",
            )
        })?;
    match claims.get("exp") {
        None | Some(Value::Null) => Ok(None),
        Some(exp) => exp
            .as_f64()
            .filter(|s| (0.0..=MAX_EXP_SECONDS).contains(s))
            // In range, so the product fits an i64 and the cast is exact to the millisecond.
            .map(|s| Some((s * 1000.0).floor() as i64))
            .ok_or_else(|| {
                CredTypeError::invalid(
                    "value (JWT exp)",
                    "seconds since the epoch, a number such as 1801396800",
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(header: &str, claims: &str) -> String {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2lnbmF0dXJl", enc(header), enc(claims))
    }

    #[test]
    fn exp_becomes_milliseconds() {
        let t = jwt(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"sub":"a","exp":1801396800}"#,
        );
        assert_eq!(expiry(&t), Ok(Some(1_801_396_800_000)));
        let t = jwt(r#"{"alg":"none"}"#, r#"{"exp":1801396800.5}"#);
        assert_eq!(expiry(&t), Ok(Some(1_801_396_800_500)));
    }

    #[test]
    fn a_jwt_without_exp_and_tokens_that_are_not_jwts_have_no_expiry() {
        let t = jwt(r#"{"alg":"RS256"}"#, r#"{"sub":"a"}"#);
        assert_eq!(expiry(&t), Ok(None));
        for t in [
            "ghp_abcdef0123456789",
            "a.b.c",
            "v1.some.opaque.token",
            // A header that is JSON but names no alg is not taken for a JWT.
            &jwt(r#"{"kid":"1"}"#, "not json"),
        ] {
            assert_eq!(expiry(t), Ok(None), "{t}");
        }
    }

    #[test]
    fn a_jwt_with_broken_claims_or_exp_is_refused_without_quoting_it() {
        let bad_claims = jwt(r#"{"alg":"HS256"}"#, "s3cret-not-json");
        let err = expiry(&bad_claims).unwrap_err().to_string();
        assert!(
            err.starts_with("value: a JWT whose second segment"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        for exp in [r#""tomorrow""#, "-5", "1e300", "true"] {
            let t = jwt(r#"{"alg":"HS256"}"#, &format!(r#"{{"exp":{exp}}}"#));
            let err = expiry(&t).unwrap_err().to_string();
            assert!(err.starts_with("value (JWT exp): seconds"), "{exp}: {err}");
        }
    }
}
