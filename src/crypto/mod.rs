//! Cryptographic building blocks: authenticated encryption bound to a row, password-based key
//! derivation, opaque tokens with keyed hashes, and the secret types that keep plaintext from
//! ever being printed or serialized.

mod aead;
mod kdf;
mod token;

pub use aead::{Aad, DataKey, SEALED_OVERHEAD, open, seal};
pub use kdf::{KDF_QUEUE_WAIT, KdfGate, KdfParams, PasswordHasher};
pub use token::{TokenHash, TokenHasher, TokenKind, random_id};

pub use secrecy::{ExposeSecret, SecretSlice, SecretString};

/// Errors from the cryptographic layer; none of them carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng(#[source] getrandom::Error),
    /// A ciphertext failed authentication: it was edited, swapped to another row, or the key is wrong.
    #[error(
        "integrity check failed: the sealed value was modified, moved to another row, or the key is wrong"
    )]
    Integrity,
    /// A sealed value was too short or had an unknown format version.
    #[error("malformed sealed value")]
    Malformed,
    /// Key derivation parameters were rejected.
    #[error("invalid key derivation parameters: {0}")]
    KdfParams(#[source] argon2::Error),
    /// A password hash could not be computed or parsed.
    #[error("password hashing failed")]
    PasswordHash,
    /// Too many password checks are running or have failed; the caller may retry later.
    #[error("the server is busy checking passwords; retry in {retry_after_secs} s")]
    Busy {
        /// When a retry may succeed.
        retry_after_secs: u64,
    },
}

/// Fills a fixed-size array from the operating system's random number generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(CryptoError::Rng)?;
    Ok(buf)
}
