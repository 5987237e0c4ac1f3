//! AES-256-GCM sealing with associated data that binds each ciphertext to the row it lives in.

use std::fmt;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use secrecy::SecretSlice;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{CryptoError, random_bytes};

/// Format version of sealed blobs; bumping it lets old rows be detected and migrated.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes a sealed value adds to its plaintext (version, nonce, tag).
pub const SEALED_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// A 256-bit symmetric key (the DEK, a KEK, or a key derived from them). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self(random_bytes()?))
    }

    /// The raw key bytes, for key wrapping and derivation only.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([REDACTED])")
    }
}

/// Associated data naming the row a ciphertext belongs to. Fields are length-prefixed so that no
/// two different rows can produce the same bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aad(Vec<u8>);

impl Aad {
    fn new(purpose: &str) -> Self {
        let mut aad = Self(Vec::with_capacity(64));
        aad.push(b"agent-vault/v1");
        aad.push(purpose.as_bytes());
        aad
    }

    fn push(&mut self, field: &[u8]) {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(field);
    }

    /// A credential value: bound to its vault id, key and version.
    pub fn credential(vault_id: &str, key: &str, version: i64) -> Self {
        let mut aad = Self::new("credential");
        aad.push(vault_id.as_bytes());
        aad.push(key.as_bytes());
        aad.push(&version.to_be_bytes());
        aad
    }

    /// A credential's own data key wrapped by the instance key `key_version`: bound to the
    /// credential's vault, key and version (0 for the key that seals the credential's metadata)
    /// and to the instance-key version, so a wrap moved to another row or version fails.
    pub fn data_key(vault_id: &str, key: &str, version: i64, key_version: i64) -> Self {
        let mut aad = Self::new("data-key");
        aad.push(vault_id.as_bytes());
        aad.push(key.as_bytes());
        aad.push(&version.to_be_bytes());
        aad.push(&key_version.to_be_bytes());
        aad
    }

    /// A credential's metadata (description, metadata map), sealed under its metadata key.
    pub fn credential_metadata(vault_id: &str, key: &str) -> Self {
        let mut aad = Self::new("credential-metadata");
        aad.push(vault_id.as_bytes());
        aad.push(key.as_bytes());
        aad
    }

    /// The DEK wrapped by the KEK, as versions before authority-row MACs wrapped it.
    pub fn wrapped_dek() -> Self {
        Self::new("dek")
    }

    /// The DEK wrapped by the KEK once every authority row carries its current MAC (migration
    /// 0006's: token expiry, revocation and parent, invite acceptance and revocation). The wrap
    /// is the one record a database writer cannot forge, so it (not a row they could re-insert)
    /// says that the one-time binding of old rows has happened. Every new wrap uses this one.
    pub fn wrapped_dek_macs_bound() -> Self {
        Self::new("dek authority-macs-bound v2")
    }

    /// The DEK wrapped by the KEK as versions between migrations 0003 and 0006 wrapped it: the
    /// authority rows carry MACs, but tokens' and invitations' MACs do not yet cover their
    /// lifetime. Only read, to upgrade.
    pub fn wrapped_dek_macs_bound_v1() -> Self {
        Self::new("dek authority-macs-bound")
    }

    /// Instance key `version` (2 and later; version 1 keeps [`Aad::wrapped_dek_macs_bound`])
    /// wrapped by the KEK: a wrap cannot be passed off as another version's.
    pub fn instance_key(version: i64) -> Self {
        let mut aad = Self::new("instance-key");
        aad.push(&version.to_be_bytes());
        aad
    }

    /// The token-hash key, sealed under the instance key so it survives rotations: tokens are
    /// stored only as hashes under it.
    pub fn token_hash_key() -> Self {
        Self::new("token-hash-key")
    }

    /// The CA private key.
    pub fn ca_key() -> Self {
        Self::new("ca-key")
    }

    /// The outstanding setup token, kept sealed so every instance on one database can print
    /// the same one.
    pub fn setup_token() -> Self {
        Self::new("setup-token")
    }

    /// A value an agent or approver supplied for a proposal's credential slot.
    pub fn proposal_value(proposal_id: &str, key: &str) -> Self {
        let mut aad = Self::new("proposal-value");
        aad.push(proposal_id.as_bytes());
        aad.push(key.as_bytes());
        aad
    }

    /// The raw bytes, for tests and for MAC inputs.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Encrypts `plaintext` under `key`, bound to `aad`. Layout: version || nonce || ciphertext+tag.
pub fn seal(key: &DataKey, aad: &Aad, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm::new(&key.0.into());
    let nonce_bytes: [u8; NONCE_LEN] = random_bytes()?;
    let nonce = Nonce::from(nonce_bytes);
    let mut out = Vec::with_capacity(plaintext.len() + SEALED_OVERHEAD);
    out.push(FORMAT_V1);
    out.extend_from_slice(&nonce_bytes);
    let mut buffer = Zeroizing::new(plaintext.to_vec());
    let tag = cipher
        .encrypt_inout_detached(&nonce, aad.as_bytes(), buffer.as_mut_slice().into())
        .map_err(|_| CryptoError::Malformed)?;
    out.extend_from_slice(&buffer);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts a sealed value; any change to the bytes, the key or the row identity fails.
pub fn open(key: &DataKey, aad: &Aad, sealed: &[u8]) -> Result<SecretSlice<u8>, CryptoError> {
    if sealed.len() < SEALED_OVERHEAD {
        return Err(CryptoError::Malformed);
    }
    let (version, rest) = sealed.split_at(1);
    if version[0] != FORMAT_V1 {
        return Err(CryptoError::Malformed);
    }
    let (nonce_bytes, rest) = rest.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce_arr: [u8; NONCE_LEN] = nonce_bytes.try_into().map_err(|_| CryptoError::Malformed)?;
    let tag_arr: [u8; TAG_LEN] = tag.try_into().map_err(|_| CryptoError::Malformed)?;
    let cipher = Aes256Gcm::new(&key.0.into());
    let mut buffer = ciphertext.to_vec();
    match cipher.decrypt_inout_detached(
        &Nonce::from(nonce_arr),
        aad.as_bytes(),
        buffer.as_mut_slice().into(),
        &tag_arr.into(),
    ) {
        Ok(()) => Ok(SecretSlice::from(buffer)),
        Err(_) => {
            buffer.zeroize();
            Err(CryptoError::Integrity)
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn key() -> DataKey {
        DataKey::from_bytes([7u8; 32])
    }

    #[test]
    fn round_trip() {
        let aad = Aad::credential("v1", "KEY", 1);
        let sealed = seal(&key(), &aad, b"sk_test_abc").unwrap();
        assert_eq!(
            open(&key(), &aad, &sealed).unwrap().expose_secret(),
            b"sk_test_abc"
        );
        assert!(!sealed.windows(11).any(|w| w == b"sk_test_abc"));
    }

    #[test]
    fn another_row_cannot_open_it() {
        let sealed = seal(&key(), &Aad::credential("v1", "KEY", 1), b"secret").unwrap();
        for other in [
            Aad::credential("v2", "KEY", 1),
            Aad::credential("v1", "OTHER", 1),
            Aad::credential("v1", "KEY", 2),
            Aad::ca_key(),
        ] {
            assert!(matches!(
                open(&key(), &other, &sealed),
                Err(CryptoError::Integrity)
            ));
        }
    }

    #[test]
    fn edited_bytes_or_wrong_key_fail() {
        let aad = Aad::credential("v1", "KEY", 1);
        let mut sealed = seal(&key(), &aad, b"secret").unwrap();
        assert!(open(&DataKey::from_bytes([8u8; 32]), &aad, &sealed).is_err());
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(matches!(
            open(&key(), &aad, &sealed),
            Err(CryptoError::Integrity)
        ));
        assert!(matches!(
            open(&key(), &aad, &sealed[..5]),
            Err(CryptoError::Malformed)
        ));
    }

    #[test]
    fn aad_fields_cannot_be_shifted() {
        assert_ne!(Aad::credential("ab", "C", 1), Aad::credential("a", "BC", 1));
    }

    #[test]
    fn debug_redacts_keys() {
        assert_eq!(format!("{:?}", key()), "DataKey([REDACTED])");
    }
}
