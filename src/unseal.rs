//! Unsealing: the master password derives the KEK (Argon2id, within the process's KDF gate),
//! which unwraps the DEK into a [`Keyring`]; first start, upgrades of old databases, and
//! master-password changes. The server and the CLI both come through here.

use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;
use crate::crypto::{
    Aad, CryptoError, DataKey, KDF_QUEUE_WAIT, KdfGate, KdfParams, open, random_bytes, seal,
};
use crate::keys::{Kek, Keyring, instance_key_aad, legacy_token_hash_key};
use crate::store::{MasterKeyRecord, Store, StoreError};

/// Shortest master password accepted when an instance is initialized or the password changed.
pub const MIN_MASTER_PASSWORD_LEN: usize = 12;

/// The 1,000 most common passwords of the "10 million passwords" list published in SecLists
/// (danielmiessler/SecLists, Passwords/Common-Credentials/10-million-password-list-top-1000.txt,
/// MIT licence), lower-cased, one a line.
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

fn is_common(word: &str) -> bool {
    COMMON_PASSWORDS.lines().any(|common| common == word)
}

/// Why a new master password is refused, or `None` when it is acceptable: under
/// [`MIN_MASTER_PASSWORD_LEN`] characters, few distinct characters, or a common password,
/// also when repeated or wrapped in digits and punctuation (`Password123!`, `qwertyqwerty`).
pub fn master_password_weakness(password: &SecretString) -> Option<String> {
    let pw = password.expose_secret();
    if pw.chars().count() < MIN_MASTER_PASSWORD_LEN {
        return Some(format!(
            "the master password must be at least {MIN_MASTER_PASSWORD_LEN} characters"
        ));
    }
    let lower = pw.to_lowercase();
    let distinct: std::collections::BTreeSet<char> = lower.chars().collect();
    let core = lower.trim_matches(|c: char| !c.is_alphabetic());
    let repeated = (1..core.len()).any(|n| {
        core.len().is_multiple_of(n)
            && core.is_char_boundary(n)
            && core[..n].repeat(core.len() / n) == core
            && (n < 4 || is_common(&core[..n]))
    });
    let steps: Vec<i32> = lower
        .chars()
        .zip(lower.chars().skip(1))
        .map(|(a, b)| b as i32 - a as i32)
        .collect();
    // `1234567890123`, `abcdefghijklm`, `987654321098`: runs, wrapping from 9 to 0.
    let sequential =
        steps.iter().all(|d| matches!(d, 1 | -9)) || steps.iter().all(|d| matches!(d, -1 | 9));
    if distinct.len() < 5 || is_common(&lower) || is_common(core) || repeated || sequential {
        return Some(
            "the master password is too common or too simple; choose a longer passphrase".into(),
        );
    }
    None
}

/// Why unsealing failed.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    /// The password does not unwrap the stored DEK.
    #[error("wrong master password")]
    WrongPassword,
    /// A new master password is too weak (the reason names no part of it).
    #[error("{0}")]
    WeakPassword(String),
    /// The instance has never been initialized (nothing to change).
    #[error(
        "this data directory or database has not been initialized; start the server once first"
    )]
    NotInitialized,
    /// The stored key changed underneath us (another instance changed the password).
    #[error("the master key was changed concurrently; retry")]
    Concurrent,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A cryptographic operation failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

async fn wrap(
    gate: &KdfGate,
    password: &SecretString,
    dek: &DataKey,
    key_version: i64,
    params: KdfParams,
) -> Result<(MasterKeyRecord, DataKey), CryptoError> {
    let salt: [u8; 16] = random_bytes()?;
    let kek = gate.derive_key(password, &salt, params).await?;
    let wrapped_dek = seal(&kek, &instance_key_aad(key_version), dek.expose())?;
    let record = MasterKeyRecord {
        kdf_salt: salt.to_vec(),
        kdf: params,
        wrapped_dek,
        key_version,
    };
    Ok((record, kek))
}

/// Which MACs a wrapped DEK says the authority rows carry. Only the master password can write
/// the wrap, so this (not a row a database writer could insert) decides what the first unseal
/// after an upgrade binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binding {
    /// Wrapped before authority-row MACs (migration 0003): rows without one get one.
    Unbound,
    /// Wrapped between migrations 0003 and 0006: tokens and invitations carry MACs that do not
    /// cover their lifetime yet.
    V1,
    /// Every row carries its current MAC.
    Current,
}

/// The DEK a record opened to, the KEK that opened it, and which MACs the record says the
/// authority rows carry.
struct Opened {
    dek: DataKey,
    kek: DataKey,
    binding: Binding,
}

/// The token-hash key: stored sealed under the instance key so it survives rotations. A
/// database from before rotation has none; its key is the one releases before derived from the
/// (version 1) instance key, stored here once so stored token hashes keep matching.
async fn token_hash_key(
    store: &Store,
    version: i64,
    dek: &DataKey,
) -> Result<DataKey, UnsealError> {
    let ring = Keyring::from_dek(dek.clone());
    for _ in 0..2 {
        if let Some(sealed) = store.sealed_token_hash_key().await? {
            let plain = ring.open_instance(&Aad::token_hash_key(), &sealed)?;
            let bytes: [u8; 32] = plain
                .expose_secret()
                .try_into()
                .map_err(|_| UnsealError::Crypto(CryptoError::Malformed))?;
            return Ok(DataKey::from_bytes(bytes));
        }
        let key = if version <= 1 {
            legacy_token_hash_key(dek)
        } else {
            // Rotation always carries the sealed key along, so only a database writer can
            // have removed it. Fail closed: a new key invalidates every stored token, and
            // people log in again with their passwords.
            tracing::error!(
                "INTEGRITY ALARM: the sealed token-hash key is missing from a rotated instance; every existing token is invalid from now on"
            );
            DataKey::generate()?
        };
        let sealed = ring.seal_instance(&Aad::token_hash_key(), key.expose())?;
        if store.insert_sealed_token_hash_key(&sealed).await? {
            return Ok(key);
        }
    }
    Err(UnsealError::Concurrent)
}

/// The keyring of an unsealed instance: the active instance key, the token-hash key and the
/// KEK (kept so that rotations need no password; see `keys::Kek`).
async fn keyring_of(
    store: &Store,
    record: &MasterKeyRecord,
    opened: Opened,
) -> Result<Keyring, UnsealError> {
    let tokens = token_hash_key(store, record.key_version, &opened.dek).await?;
    Ok(Keyring::unsealed(
        record.key_version,
        opened.dek,
        tokens,
        Kek::new(opened.kek, record.kdf_salt.clone()),
    ))
}

async fn unwrap(
    gate: &KdfGate,
    password: &SecretString,
    record: &MasterKeyRecord,
) -> Result<Opened, UnsealError> {
    let kek = gate
        .derive_key(password, &record.kdf_salt, record.kdf)
        .await?;
    // Version 1 may carry the wraps of earlier releases (before authority-row MACs, before
    // their lifetime MACs); a rotated key was made by a server that had bound every row.
    let candidates: &[(Aad, Binding)] = &if record.key_version <= 1 {
        vec![
            (Aad::wrapped_dek_macs_bound(), Binding::Current),
            (Aad::wrapped_dek_macs_bound_v1(), Binding::V1),
            (Aad::wrapped_dek(), Binding::Unbound),
        ]
    } else {
        vec![(instance_key_aad(record.key_version), Binding::Current)]
    };
    let mut opened = None;
    for (aad, binding) in candidates {
        match open(&kek, aad, &record.wrapped_dek) {
            Ok(dek) => {
                opened = Some((dek, *binding));
                break;
            }
            Err(CryptoError::Integrity) => continue,
            Err(other) => return Err(UnsealError::Crypto(other)),
        }
    }
    let (dek, binding) = opened.ok_or(UnsealError::WrongPassword)?;
    let bytes: [u8; 32] = dek
        .expose_secret()
        .try_into()
        .map_err(|_| UnsealError::Crypto(CryptoError::Malformed))?;
    Ok(Opened {
        dek: DataKey::from_bytes(bytes),
        kek,
        binding,
    })
}

/// Makes sure every authority row carries its current MAC before anything reads them. A record
/// wrapped before authority-row MACs existed gets its rows bound once (rows edited before this
/// are trusted as they are); one wrapped before 0006 gets its tokens and invitations whose MAC
/// verifies re-bound over their lifetime too (their lifetime columns trusted as they are). Then
/// the DEK is re-wrapped so that it says so; only the master password can write that wrap, so a
/// database writer who wipes a MAC and re-inserts the pending marker later gets an alarm, not a
/// fresh binding of their edit.
async fn bind_authority_rows(
    store: &Store,
    record: &MasterKeyRecord,
    opened: &Opened,
    keyring: &Keyring,
) -> Result<(), UnsealError> {
    let store = store.with_authority_macs(keyring.authority_macs());
    match opened.binding {
        Binding::Current | Binding::V1 => {
            if store.discard_backfill_marker().await? {
                tracing::error!(
                    "INTEGRITY ALARM: the database asks for authority rows to be bound again, but they were bound at an earlier start; ignored (a database writer may have wiped MACs)"
                );
            }
            if opened.binding == Binding::Current {
                return Ok(());
            }
            let done = store.upgrade_authority_macs().await?;
            tracing::warn!(
                rows = done.bound,
                refused = done.refused,
                "bound the expiry and revocation of existing tokens and invitations with their MACs (first start after upgrading); rows whose earlier MAC failed stay refused"
            );
        }
        Binding::Unbound => {
            let bound = store.backfill_authority_macs().await?;
            tracing::warn!(
                rows = bound,
                "bound existing grants, users, invites, agents and tokens with MACs (first start after upgrading); rows edited before this start are trusted as they were"
            );
        }
    }
    let rewrapped = MasterKeyRecord {
        kdf_salt: record.kdf_salt.clone(),
        kdf: record.kdf,
        wrapped_dek: seal(
            &opened.kek,
            &instance_key_aad(record.key_version),
            opened.dek.expose(),
        )?,
        key_version: record.key_version,
    };
    // Another instance upgrading at the same moment wraps the same DEK the same way: losing
    // the race is as good as winning it.
    store
        .replace_master_key(&record.wrapped_dek, &rewrapped)
        .await?;
    Ok(())
}

/// Re-seals every credential value written before per-credential data keys under a key of its
/// own, once (migration 0005 asks for it), before anything reads credentials.
async fn upgrade_credential_keys(store: &Store, keyring: &Keyring) -> Result<(), UnsealError> {
    let upgraded = store
        .with_authority_macs(keyring.authority_macs())
        .upgrade_credential_keys(keyring)
        .await?;
    if upgraded > 0 {
        tracing::warn!(
            credentials = upgraded,
            "re-sealed credentials written by an earlier release, each under its own data key (first start after upgrading)"
        );
    }
    Ok(())
}

/// Unwraps with an existing password, warning (without the value) when it would not be
/// accepted as a new one: it keeps working, but should be changed.
async fn unwrap_existing(
    gate: &KdfGate,
    password: &SecretString,
    record: &MasterKeyRecord,
) -> Result<Opened, UnsealError> {
    let opened = unwrap(gate, password, record).await?;
    if let Some(why) = master_password_weakness(password) {
        tracing::warn!(
            reason = %why,
            "the master password is weak; change it with `agent-vault master-password change`"
        );
    }
    Ok(opened)
}

/// Unseals the instance, initializing it with a fresh DEK on first start. Returns the keyring
/// and whether this call initialized the instance. Key derivation runs within `gate`. Authority
/// rows of a database from before their MACs are bound here, once.
pub async fn unseal_or_init(
    store: &Store,
    password: SecretString,
    params: KdfParams,
    gate: &KdfGate,
) -> Result<(Keyring, bool), UnsealError> {
    if let Some(record) = store.master_key().await? {
        let opened = unwrap_existing(gate, &password, &record).await?;
        bind_authority_rows(
            store,
            &record,
            &opened,
            &Keyring::from_dek(opened.dek.clone()),
        )
        .await?;
        let keyring = keyring_of(store, &record, opened).await?;
        upgrade_credential_keys(store, &keyring).await?;
        return Ok((keyring, false));
    }
    if let Some(why) = master_password_weakness(&password) {
        return Err(UnsealError::WeakPassword(why));
    }
    let dek = DataKey::generate()?;
    let (record, kek) = wrap(gate, &password, &dek, 1, params).await?;
    if store.insert_master_key_if_absent(&record).await? {
        let opened = Opened {
            dek,
            kek,
            binding: Binding::Current,
        };
        let keyring = keyring_of(store, &record, opened).await?;
        // A new database has no rows to bind or re-seal; the markers of migrations 0003 and
        // 0005 have nothing to do.
        let bound = store.with_authority_macs(keyring.authority_macs());
        bound.discard_backfill_marker().await?;
        bound.discard_credential_upgrade_marker().await?;
        return Ok((keyring, true));
    }
    // Another instance initialized the database first: use its key, which must open with the
    // same password.
    let record = store
        .master_key()
        .await?
        .ok_or(UnsealError::NotInitialized)?;
    let opened = unwrap(gate, &password, &record).await?;
    Ok((keyring_of(store, &record, opened).await?, false))
}

/// Re-wraps the DEK under a new master password. Data is not re-encrypted: the DEK is unchanged.
/// A database from before authority-row MACs has its rows bound first, since the new wrap says
/// they are.
pub async fn change_master_password(
    store: &Store,
    old: SecretString,
    new: SecretString,
    params: KdfParams,
    gate: &KdfGate,
) -> Result<(), UnsealError> {
    if let Some(why) = master_password_weakness(&new) {
        return Err(UnsealError::WeakPassword(why));
    }
    let record = store
        .master_key()
        .await?
        .ok_or(UnsealError::NotInitialized)?;
    let opened = unwrap(gate, &old, &record).await?;
    let first_version = record.key_version;
    if opened.binding != Binding::Current {
        let keyring = Keyring::from_dek(opened.dek.clone());
        bind_authority_rows(store, &record, &opened, &keyring).await?;
    }
    let record = store
        .master_key()
        .await?
        .ok_or(UnsealError::NotInitialized)?;
    // A rotation in between would make `opened.dek` an old version: never wrap it as the new.
    if record.key_version != first_version {
        return Err(UnsealError::Concurrent);
    }
    let expected = record.wrapped_dek.clone();
    let (new_record, _) = wrap(gate, &new, &opened.dek, record.key_version, params).await?;
    if store.replace_master_key(&expected, &new_record).await? {
        Ok(())
    } else {
        Err(UnsealError::Concurrent)
    }
}

/// Wraps the DEK the way versions before authority-row MACs did, so upgrade tests can make a
/// database that looks like theirs. Not for anything else: it undoes the binding's record.
#[doc(hidden)]
pub async fn wrap_as_before_authority_macs(
    store: &Store,
    password: SecretString,
    gate: &KdfGate,
) -> Result<(), UnsealError> {
    rewrap_for_tests(store, password, gate, Aad::wrapped_dek()).await
}

/// Wraps the DEK the way versions between migrations 0003 and 0006 did (authority rows bound,
/// tokens' and invitations' lifetimes not), so upgrade tests can make a database that looks like
/// theirs. Not for anything else: it undoes the binding's record.
#[doc(hidden)]
pub async fn wrap_as_before_lifetime_macs(
    store: &Store,
    password: SecretString,
    gate: &KdfGate,
) -> Result<(), UnsealError> {
    rewrap_for_tests(store, password, gate, Aad::wrapped_dek_macs_bound_v1()).await
}

async fn rewrap_for_tests(
    store: &Store,
    password: SecretString,
    gate: &KdfGate,
    aad: Aad,
) -> Result<(), UnsealError> {
    let record = store
        .master_key()
        .await?
        .ok_or(UnsealError::NotInitialized)?;
    let opened = unwrap(gate, &password, &record).await?;
    let old = MasterKeyRecord {
        kdf_salt: record.kdf_salt.clone(),
        kdf: record.kdf,
        wrapped_dek: seal(&opened.kek, &aad, opened.dek.expose())?,
        key_version: record.key_version,
    };
    store.replace_master_key(&record.wrapped_dek, &old).await?;
    Ok(())
}

/// `agent-vault master-password change`: opens the configured store, re-wraps the DEK under
/// `new`, and closes the store, so the CLI needs no storage code of its own.
pub async fn change_master_password_of(
    config: &Config,
    old: SecretString,
    new: SecretString,
) -> Result<(), UnsealError> {
    let store = Store::open(
        &config.data_dir,
        config.database_url.as_ref().map(|u| u.0.as_str()),
    )
    .await?;
    let gate = KdfGate::new(config.limits.kdf_memory_budget, KDF_QUEUE_WAIT);
    let result = change_master_password(&store, old, new, config.kdf, &gate).await;
    store.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wrong_password_is_reported_as_such() {
        let params = KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let gate = KdfGate::new(1 << 20, crate::crypto::KDF_QUEUE_WAIT);
        let dek = DataKey::generate().unwrap();
        let right = SecretString::from("correct horse");
        let (record, _) = wrap(&gate, &right, &dek, 1, params).await.unwrap();
        let back = unwrap(&gate, &right, &record).await.unwrap();
        assert_eq!(back.dek.expose(), dek.expose());
        assert_eq!(
            back.binding,
            Binding::Current,
            "new wraps say the authority rows carry their current MACs"
        );
        assert!(matches!(
            unwrap(&gate, &SecretString::from("wrong horse"), &record).await,
            Err(UnsealError::WrongPassword)
        ));
    }

    #[test]
    fn weak_new_master_passwords_are_named_as_such() {
        let weak = |p: &str| master_password_weakness(&SecretString::from(p.to_owned()));
        for p in [
            "password",
            "short1!",
            "Password123!",
            "passwordpassword",
            "QWERTYQWERTY",
            "aaaaaaaaaaaaaaaa",
            "123456789012",
            "1234567890123",
            "!!monkey!!2024",
            "ababababababab",
        ] {
            assert!(weak(p).is_some(), "{p} is accepted");
        }
        for p in [
            "correct horse battery staple",
            "new password 123",
            "tr0ub4dor&3-zebra",
        ] {
            assert_eq!(weak(p), None, "{p} is refused");
        }
        let why = weak("password").unwrap();
        assert!(why.contains("at least 12"), "{why}");
        assert!(
            !why.contains("password\""),
            "the reason never quotes the value"
        );
    }
}
