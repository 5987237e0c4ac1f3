//! Opaque bearer tokens: 256 random bits with a typed prefix that secret scanners recognise,
//! stored only as an HMAC keyed from the DEK so a database reader cannot use or forge them.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{CryptoError, DataKey, random_bytes};

/// What a token is for; the prefix makes a leaked token recognisable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A human's login session for the CLI and the admin API (a bearer token).
    Session,
    /// A human's browser session: the web pages' cookie, never accepted as a bearer, because
    /// browsers send cookies to every port of a host.
    Web,
    /// An agent's long-lived token.
    Agent,
    /// A short-lived proxy-role token bound to one vault (minted by `run` and `vault token`).
    Scoped,
    /// The one-time token that registers the first owner.
    Setup,
    /// An invitation for a new user.
    Invite,
    /// A view-only link to one proposal.
    Approval,
}

impl TokenKind {
    /// The typed prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Session => "av_sess_",
            Self::Web => "av_web_",
            Self::Agent => "av_agt_",
            Self::Scoped => "av_run_",
            Self::Setup => "av_setup_",
            Self::Invite => "av_inv_",
            Self::Approval => "av_appr_",
        }
    }

    /// The kind a raw token claims by its prefix, if any.
    pub fn of(raw: &str) -> Option<Self> {
        [
            Self::Session,
            Self::Web,
            Self::Agent,
            Self::Scoped,
            Self::Setup,
            Self::Invite,
            Self::Approval,
        ]
        .into_iter()
        .find(|k| raw.starts_with(k.prefix()))
    }

    /// Generates a new raw token of this kind.
    pub fn generate(self) -> Result<SecretString, CryptoError> {
        let bytes: [u8; 32] = random_bytes()?;
        Ok(SecretString::from(format!(
            "{}{}",
            self.prefix(),
            URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    /// Whether `raw` has this prefix followed by a well-formed 256-bit body.
    pub fn matches_format(self, raw: &str) -> bool {
        raw.strip_prefix(self.prefix())
            .is_some_and(|body| body.len() == 43 && URL_SAFE_NO_PAD.decode(body).is_ok())
    }
}

/// The stored form of a token: HMAC-SHA256 under a key derived from the DEK.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Constant-time comparison.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// Reads a stored hash.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A short accessor is enough to correlate log lines and cannot be used as a token.
        write!(f, "TokenHash({}…)", hex::encode(&self.0[..4]))
    }
}

/// Computes keyed token hashes.
#[derive(Clone)]
pub struct TokenHasher {
    key: DataKey,
}

impl fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHasher([REDACTED])")
    }
}

impl TokenHasher {
    /// Uses `key` (derived from the DEK for this one purpose) as the HMAC key.
    pub fn new(key: DataKey) -> Self {
        Self { key }
    }

    /// Hashes a raw token.
    pub fn hash(&self, raw: &SecretString) -> TokenHash {
        self.hash_str(raw.expose_secret())
    }

    /// Hashes raw token text.
    pub fn hash_str(&self, raw: &str) -> TokenHash {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.expose())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(raw.as_bytes());
        TokenHash(mac.finalize().into_bytes().into())
    }
}

/// A random 128-bit identifier in hex, for row ids that are not secret.
pub fn random_id() -> Result<String, CryptoError> {
    Ok(hex::encode(random_bytes::<16>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_prefix_and_entropy() {
        let a = TokenKind::Agent.generate().unwrap();
        let b = TokenKind::Agent.generate().unwrap();
        assert!(a.expose_secret().starts_with("av_agt_"));
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(TokenKind::Agent.matches_format(a.expose_secret()));
        assert!(!TokenKind::Session.matches_format(a.expose_secret()));
        assert_eq!(TokenKind::of(a.expose_secret()), Some(TokenKind::Agent));
        assert!(!TokenKind::Agent.matches_format("av_agt_short"));
        let web = TokenKind::Web.generate().unwrap();
        assert!(web.expose_secret().starts_with("av_web_"));
        assert!(TokenKind::Web.matches_format(web.expose_secret()));
        assert!(!TokenKind::Session.matches_format(web.expose_secret()));
        assert_eq!(TokenKind::of(web.expose_secret()), Some(TokenKind::Web));
    }

    #[test]
    fn hashes_are_keyed() {
        let raw = TokenKind::Session.generate().unwrap();
        let h1 = TokenHasher::new(DataKey::from_bytes([1; 32])).hash(&raw);
        let h2 = TokenHasher::new(DataKey::from_bytes([2; 32])).hash(&raw);
        assert!(!h1.ct_eq(&h2));
        assert!(h1.ct_eq(&TokenHasher::new(DataKey::from_bytes([1; 32])).hash(&raw)));
        assert!(!format!("{h1:?}").contains(&hex::encode(h1.0)));
    }
}
