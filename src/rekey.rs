//! Adopting an instance-key version that another instance (or this one) stored: read the
//! `master_key` row, unwrap the new version with the KEK this process kept, and make it the
//! active version, keeping the old one for reads until the caller has settled (see
//! `manage::master_key`). Called when a notification says the key moved, and as the one
//! reload before a retry when a MAC fails under every key held.

use crate::crypto::CryptoError;
use crate::keys::Keyring;
use crate::store::{Store, StoreError};

/// Why a newer instance key could not be adopted.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    /// This keyring was built without a KEK (a test or a tool).
    #[error("this process holds no key-encryption key; restart it to load the new instance key")]
    NoKek,
    /// The master password was changed since this process unsealed, so its KEK does not open
    /// the stored key.
    #[error(
        "the master password was changed since this server started; restart it with the new password"
    )]
    PasswordChanged,
    /// The stored wrap did not open.
    #[error("the stored instance key does not open: {0}")]
    Crypto(#[from] CryptoError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Makes the stored instance-key version active if it is newer than the active one; returns
/// whether it did. The old version stays held for reads.
pub async fn adopt_newer(store: &Store, keyring: &Keyring) -> Result<bool, RekeyError> {
    let Some((version, wrapped, salt)) = store.instance_key().await? else {
        return Ok(false);
    };
    if version <= keyring.active_key_version() {
        return Ok(false);
    }
    if keyring
        .kek_salt()
        .is_some_and(|ours| ours != salt.as_slice())
    {
        return Err(RekeyError::PasswordChanged);
    }
    let dek = keyring
        .unwrap_instance_key(version, &wrapped)
        .ok_or(RekeyError::NoKek)??;
    let adoption = keyring.begin_rotation(version, dek);
    keyring.activate(&adoption);
    tracing::info!(
        key_version = version,
        "adopted a new instance-key version made by a rotation"
    );
    Ok(true)
}
