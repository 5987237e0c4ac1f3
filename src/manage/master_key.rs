//! Online rotation of the instance key (`agent-vault master-key rotate`, owners only) and the
//! settling every instance does after a rotation. Rotation: a new version, wrapped by the KEK,
//! replaces the old one in one store transaction that rewraps every data key and reseals and
//! re-MACs everything keyed by the instance key (`store::rekey`); then this instance makes it
//! active, tells the others, and settles. Settling: adopt the stored version if newer, sweep
//! rows still under an older version held here (written while the rotation ran), rebuild every
//! snapshot, and only then forget the older versions. Requests keep being served throughout:
//! until the old version is forgotten, reads accept both.

use crate::crypto::{CryptoError, DataKey};
use crate::identity::Identity;
use crate::keys::Keyring;
use crate::registry::Snapshots;
use crate::rekey::{RekeyError, adopt_newer};
use crate::store::changes::Change;
use crate::store::rekey::{RekeyCounts, RotateRefused, WRAPPED_KEY_TABLES};
use crate::store::{Store, StoreError};

use super::Acting;

/// Why the instance key was not rotated.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// Only an instance owner may rotate.
    #[error("only an instance owner can rotate the master key")]
    NotOwner,
    /// Another rotation ran first, or the master password changed since this server started.
    #[error(transparent)]
    Refused(#[from] RotateRefused),
    /// This server cannot load or wrap instance keys without a restart.
    #[error(transparent)]
    Rekey(#[from] RekeyError),
    /// A key could not be generated or wrapped.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a rotation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationReport {
    /// The version rotated from (now destroyed).
    pub from: i64,
    /// The version now active.
    pub to: i64,
    /// What the store transaction changed.
    pub counts: RekeyCounts,
}

impl Acting<'_> {
    /// Rotates the instance key (owners only); see the module documentation.
    pub async fn rotate_master_key(&self) -> Result<RotationReport, MasterKeyError> {
        if !self.caller.is_owner() {
            return Err(MasterKeyError::NotOwner);
        }
        let report = rotate(self.store, self.keyring).await?;
        if let Err(e) = self.store.publish(&Change::InstanceKey).await {
            tracing::error!(error = %e, "could not notify other instances of the new instance key");
        }
        if let Err(e) = settle(self.store, self.keyring, self.snapshots, self.identity).await {
            // The rotation is committed; the older version stays held (reads keep working)
            // until the next periodic settle succeeds.
            tracing::error!(error = %e, "settling after the rotation failed; retried periodically");
        }
        let c = report.counts;
        self.record_with(
            "master_key.rotate",
            None,
            format!("instance key v{} -> v{}", report.from, report.to),
            format!(
                "rewrapped {} data keys, resealed {} values, recomputed {} MACs, left {} items that the old key did not open",
                c.rewrapped, c.resealed, c.remaced, c.untouched
            ),
        )
        .await;
        Ok(report)
    }
}

async fn rotate(store: &Store, keyring: &Keyring) -> Result<RotationReport, MasterKeyError> {
    let _one_at_a_time = keyring.rekeying().await;
    // Behind a rotation made elsewhere: start from the version stored.
    adopt_newer(store, keyring).await?;
    let from = keyring.active_key_version();
    let to = from + 1;
    let rotation = keyring.begin_rotation(to, DataKey::generate()?);
    let wrapped = keyring
        .wrap_instance_key(to, rotation.new_key())
        .ok_or(RekeyError::NoKek)??;
    let salt = keyring.kek_salt().ok_or(RekeyError::NoKek)?.to_vec();
    // Held before the commit: rows the transaction rewrites verify the moment they are seen.
    keyring.hold(&rotation);
    let outcome = store
        .rotate_instance_key(&rotation, &wrapped, &salt, WRAPPED_KEY_TABLES)
        .await;
    let counts = match outcome {
        Ok(Ok(counts)) => counts,
        Ok(Err(refused)) => {
            keyring.drop_version(to);
            return Err(refused.into());
        }
        Err(e) => {
            keyring.drop_version(to);
            return Err(e.into());
        }
    };
    keyring.activate(&rotation);
    tracing::info!(
        from,
        to,
        rewrapped = counts.rewrapped,
        resealed = counts.resealed,
        remaced = counts.remaced,
        untouched = counts.untouched,
        "rotated the instance key; the old version is destroyed in the store"
    );
    Ok(RotationReport { from, to, counts })
}

/// Brings this instance to the stored instance-key version and lets go of older ones: adopt,
/// sweep rows still under an older version, rebuild every snapshot, forget the older versions.
/// A no-op when only the stored version is held. Run after a rotation (here, or announced by
/// another instance) and periodically as a safety net.
pub async fn settle(
    store: &Store,
    keyring: &Keyring,
    snapshots: &Snapshots,
    identity: &Identity,
) -> Result<(), MasterKeyError> {
    let _one_at_a_time = keyring.rekeying().await;
    adopt_newer(store, keyring).await?;
    let older = keyring.catch_up();
    if older.is_empty() {
        return Ok(());
    }
    for rotation in &older {
        let swept = store
            .sweep_instance_key(rotation, WRAPPED_KEY_TABLES)
            .await?;
        if swept.rewrapped + swept.resealed + swept.remaced > 0 {
            tracing::info!(
                from = rotation.old_version(),
                to = rotation.new_version(),
                rewrapped = swept.rewrapped,
                resealed = swept.resealed,
                remaced = swept.remaced,
                "moved rows written under the old instance key during the rotation"
            );
        }
    }
    snapshots.reload_all().await?;
    identity.invalidate_all();
    keyring.retire_others();
    if let Err(e) = store.checkpoint_after_rekey().await {
        // Readers may hold the log open; the next automatic checkpoint gets there.
        tracing::warn!(error = %e, "checkpointing the write-ahead log after the rotation failed");
    }
    tracing::info!(
        key_version = keyring.active_key_version(),
        "older instance-key versions forgotten"
    );
    Ok(())
}
