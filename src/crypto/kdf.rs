//! Argon2id: the master password becomes the key-encryption key, and user passwords become
//! PHC hash strings. Parameters are stored next to each salt so they can change over time.

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{CryptoError, DataKey};

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism.
    pub parallelism: u32,
}

impl KdfParams {
    /// The production default: 64 MiB, three passes, four lanes.
    pub const PRODUCTION: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 4,
    };

    fn argon2(&self) -> Result<Argon2<'static>, CryptoError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Checks that Argon2 accepts these parameters.
    pub fn validate(&self) -> Result<(), CryptoError> {
        self.argon2().map(|_| ())
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::PRODUCTION
    }
}

/// Derives a 256-bit key from a password and salt.
pub fn derive_key(
    password: &SecretString,
    salt: &[u8],
    params: &KdfParams,
) -> Result<DataKey, CryptoError> {
    let mut out = Zeroizing::new([0u8; 32]);
    params
        .argon2()?
        .hash_password_into(password.expose_secret().as_bytes(), salt, out.as_mut())
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    Ok(DataKey::from_bytes(*out))
}

/// Hashes and verifies user passwords as PHC strings.
#[derive(Clone, Debug)]
pub struct PasswordHasher {
    params: KdfParams,
    /// A hash of a random password, verified against when an email is unknown so that the
    /// response time does not reveal which accounts exist.
    dummy: String,
}

impl PasswordHasher {
    /// Builds a hasher with the given cost.
    pub fn new(params: KdfParams) -> Result<Self, CryptoError> {
        let seed: [u8; 16] = super::random_bytes()?;
        let mut hasher = Self {
            params,
            dummy: String::new(),
        };
        hasher.dummy = hasher.hash(&SecretString::from(hex::encode(seed)))?;
        Ok(hasher)
    }

    /// Hashes a password into a PHC string that embeds salt and parameters.
    pub fn hash(&self, password: &SecretString) -> Result<String, CryptoError> {
        self.params
            .argon2()?
            .hash_password(password.expose_secret().as_bytes())
            .map(|h| h.to_string())
            .map_err(|_| CryptoError::PasswordHash)
    }

    /// Verifies a password against a stored PHC string; malformed hashes never verify.
    pub fn verify(&self, password: &SecretString, phc: &str) -> bool {
        Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), phc)
            .is_ok()
    }

    /// Spends the same time as a real verification and returns false.
    pub fn verify_dummy(&self, password: &SecretString) -> bool {
        let _ = self.verify(password, &self.dummy);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn production_defaults_meet_the_floor() {
        let p = KdfParams::default();
        assert!(p.memory_kib >= 64 * 1024);
        assert!(p.iterations >= 3);
        assert!(p.parallelism >= 4);
        p.validate().unwrap();
    }

    #[test]
    fn same_password_and_salt_give_same_key() {
        let pw = SecretString::from("correct horse");
        let a = derive_key(&pw, b"saltsaltsaltsalt", &TINY).unwrap();
        let b = derive_key(&pw, b"saltsaltsaltsalt", &TINY).unwrap();
        let c = derive_key(&SecretString::from("wrong"), b"saltsaltsaltsalt", &TINY).unwrap();
        assert_eq!(a.expose(), b.expose());
        assert_ne!(a.expose(), c.expose());
    }

    #[test]
    fn password_hashes_verify() {
        let hasher = PasswordHasher::new(TINY).unwrap();
        let pw = SecretString::from("hunter22hunter22");
        let phc = hasher.hash(&pw).unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("hunter22"));
        assert!(hasher.verify(&pw, &phc));
        assert!(!hasher.verify(&SecretString::from("nope"), &phc));
        assert!(!hasher.verify(&pw, "not a hash"));
        assert!(!hasher.verify_dummy(&pw));
    }
}
