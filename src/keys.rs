//! The keyring: the instance key (the DEK of earlier releases), held only in this process's
//! memory, in numbered versions, and every key derived from it for one purpose (service and
//! authority-row MACs, CSRF); plus the token-hash key, which never changes, and the KEK.
//! Pure: no IO; the flows that obtain the keys from the master password live in `unseal`, the
//! ones that rotate them in `rekey`.
//!
//! The keyring is cloned into every part of the server (proxy, admin, web, store, identity),
//! so its keys sit behind one shared atomic pointer: a rotation swaps them for all clones at
//! once, and readers never wait. While a rotation is under way it holds two versions: new data
//! is written under the active one, and reads accept any version still held, so requests that
//! raced the rotation keep working.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

use crate::crypto::{Aad, CryptoError, DataKey, TokenHasher, open, seal};

/// A data key wrapped by an instance key, as stored beside the value it seals.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedDataKey {
    /// Which instance key wrapped it.
    pub key_version: i64,
    /// The sealed key bytes.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for WrappedDataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedDataKey(k{})", self.key_version)
    }
}

fn derive_subkey(dek: &DataKey, info: &[u8]) -> DataKey {
    let hk = Hkdf::<Sha256>::new(Some(b"agent-vault key derivation v1"), dek.expose());
    let mut out = [0u8; 32];
    // 32 bytes is always a valid HKDF-SHA256 output length.
    hk.expand(info, &mut out)
        .unwrap_or_else(|_| unreachable!("32-byte HKDF output"));
    let key = DataKey::from_bytes(out);
    zeroize::Zeroize::zeroize(&mut out);
    key
}

fn hmac_fields(key: &DataKey, fields: &[&str]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    for field in fields {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field.as_bytes());
    }
    mac.finalize().into_bytes().to_vec()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// The key derived for the token hasher from a version-1 instance key: what releases before
/// rotation used, and what the sealed token-hash key is initialised to, so stored token hashes
/// keep matching.
pub fn legacy_token_hash_key(dek: &DataKey) -> DataKey {
    derive_subkey(dek, b"token-hash")
}

/// One version of the instance key and the keys derived from it.
struct InstanceKey {
    version: i64,
    dek: DataKey,
    service_mac: DataKey,
    csrf: DataKey,
}

impl InstanceKey {
    fn new(version: i64, dek: DataKey) -> Self {
        Self {
            version,
            service_mac: derive_subkey(&dek, b"service-mac"),
            csrf: derive_subkey(&dek, b"csrf"),
            dek,
        }
    }

    fn service_mac(&self, vault_id: &str, name: &str, spec: &str) -> Vec<u8> {
        hmac_fields(&self.service_mac, &[vault_id, name, spec])
    }

    fn authority_mac(&self, kind: AuthorityRow, fields: &[MacField<'_>]) -> Vec<u8> {
        authority_mac(&derive_subkey(&self.dek, kind.label()), kind, fields)
    }

    fn wrap_data_key(
        &self,
        vault_id: &str,
        key: &str,
        version: i64,
        data_key: &DataKey,
    ) -> Result<WrappedDataKey, CryptoError> {
        let bytes = seal(
            &self.dek,
            &Aad::data_key(vault_id, key, version, self.version),
            data_key.expose(),
        )?;
        Ok(WrappedDataKey {
            key_version: self.version,
            bytes,
        })
    }

    fn unwrap_data_key(
        &self,
        vault_id: &str,
        key: &str,
        version: i64,
        wrapped: &WrappedDataKey,
    ) -> Result<DataKey, CryptoError> {
        let plain = open(
            &self.dek,
            &Aad::data_key(vault_id, key, version, wrapped.key_version),
            &wrapped.bytes,
        )?;
        let bytes: [u8; 32] = plain
            .expose_secret()
            .try_into()
            .map_err(|_| CryptoError::Malformed)?;
        Ok(DataKey::from_bytes(bytes))
    }
}

/// The versions held at one moment: the active one (all new writes) and any others still
/// accepted on read (during a rotation).
struct Ring {
    active: Arc<InstanceKey>,
    others: Vec<Arc<InstanceKey>>,
}

impl Ring {
    fn all(&self) -> impl Iterator<Item = &Arc<InstanceKey>> {
        std::iter::once(&self.active).chain(self.others.iter())
    }

    fn get(&self, version: i64) -> Option<&Arc<InstanceKey>> {
        self.all().find(|k| k.version == version)
    }
}

/// The key-encryption key derived from the master password, and the salt it was derived with.
/// Kept for the life of the process (zeroized on drop) so that this instance can wrap a new
/// instance-key version when it rotates, and unwrap one another instance wrote, without the
/// master password being entered again: the server runs unattended, and the alternative,
/// keeping the password itself, would be worse.
pub struct Kek {
    key: DataKey,
    salt: Vec<u8>,
}

impl Kek {
    /// The KEK derived from the master password with `salt`.
    pub fn new(key: DataKey, salt: Vec<u8>) -> Self {
        Self { key, salt }
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek([REDACTED])")
    }
}

/// The associated data of instance key `version` wrapped by the KEK. Version 1 keeps the wrap
/// of releases before rotation (which also says that authority rows are bound).
pub fn instance_key_aad(version: i64) -> Aad {
    if version <= 1 {
        Aad::wrapped_dek_macs_bound()
    } else {
        Aad::instance_key(version)
    }
}

struct Shared {
    ring: ArcSwap<Ring>,
    tokens: TokenHasher,
    kek: Option<Kek>,
    mac_failures: AtomicU64,
    rekey: tokio::sync::Mutex<()>,
}

/// The instance-key versions and the keys derived from them, shared by every clone.
#[derive(Clone)]
pub struct Keyring {
    shared: Arc<Shared>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keyring([REDACTED])")
    }
}

impl Keyring {
    /// Builds a keyring around instance key version 1, the token-hash key derived from it as
    /// releases before rotation did, and no KEK (tests and tools: it cannot rotate).
    pub fn from_dek(dek: DataKey) -> Self {
        let tokens = TokenHasher::new(legacy_token_hash_key(&dek));
        Self::build(1, dek, tokens, None)
    }

    /// The keyring of an unsealed instance: the active instance key, the token-hash key kept
    /// sealed in the store, and the KEK that wraps instance keys.
    pub fn unsealed(version: i64, dek: DataKey, token_hash_key: DataKey, kek: Kek) -> Self {
        Self::build(version, dek, TokenHasher::new(token_hash_key), Some(kek))
    }

    fn build(version: i64, dek: DataKey, tokens: TokenHasher, kek: Option<Kek>) -> Self {
        Self {
            shared: Arc::new(Shared {
                ring: ArcSwap::from_pointee(Ring {
                    active: Arc::new(InstanceKey::new(version, dek)),
                    others: Vec::new(),
                }),
                tokens,
                kek,
                mac_failures: AtomicU64::new(0),
                rekey: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The keys binding authority rows (grants, users, invites, agents, tokens), for the store.
    /// They follow this keyring through rotations.
    pub fn authority_macs(&self) -> AuthorityMacs {
        AuthorityMacs {
            shared: self.shared.clone(),
        }
    }

    /// The keyed hash used for every stored token. Its key is not derived from the instance
    /// key: tokens are stored only as hashes, so it must survive rotations unchanged.
    pub fn token_hasher(&self) -> &TokenHasher {
        &self.shared.tokens
    }

    /// How many MAC checks (service or authority rows) have failed under every held key so
    /// far: a caller that sees it rise may be behind a rotation made by another instance.
    pub fn mac_failures(&self) -> u64 {
        self.shared.mac_failures.load(Ordering::Relaxed)
    }

    fn note(&self, ok: bool) -> bool {
        if !ok {
            self.shared.mac_failures.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Seals an instance-wide secret (the CA key, the setup token, a proposal's value) under
    /// the active instance key.
    pub fn seal_instance(&self, aad: &Aad, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal(&self.shared.ring.load().active.dek, aad, plaintext)
    }

    /// Opens what [`Keyring::seal_instance`] sealed, under any version still held.
    pub fn open_instance(&self, aad: &Aad, sealed: &[u8]) -> Result<SecretSlice<u8>, CryptoError> {
        let ring = self.shared.ring.load();
        let mut last = CryptoError::Integrity;
        for key in ring.all() {
            match open(&key.dek, aad, sealed) {
                Ok(plain) => return Ok(plain),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Seals a credential value under the instance key itself, as releases before
    /// per-credential data keys did (kept for the upgrade path and its tests).
    pub fn seal_credential(
        &self,
        vault_id: &str,
        key: &str,
        version: i64,
        value: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.seal_instance(&Aad::credential(vault_id, key, version), value)
    }

    /// Opens a value sealed the way releases before per-credential data keys did; fails if
    /// the row was edited or moved. Only the upgrade to data keys needs it.
    pub fn open_credential(
        &self,
        vault_id: &str,
        key: &str,
        version: i64,
        sealed: &[u8],
    ) -> Result<SecretSlice<u8>, CryptoError> {
        self.open_instance(&Aad::credential(vault_id, key, version), sealed)
    }

    /// The instance-key version that new data keys are wrapped under.
    pub fn active_key_version(&self) -> i64 {
        self.shared.ring.load().active.version
    }

    /// A one-way fingerprint of the active instance key (hex): tells two keyrings' keys apart
    /// without exposing either.
    pub fn key_fingerprint(&self) -> String {
        hex::encode(hmac_fields(
            &self.shared.ring.load().active.dek,
            &["agent-vault key fingerprint"],
        ))
    }

    /// Every instance-key version this process holds, the active one first.
    pub fn key_versions(&self) -> Vec<i64> {
        self.shared.ring.load().all().map(|k| k.version).collect()
    }

    /// Whether this process holds instance key `version`.
    pub fn holds(&self, version: i64) -> bool {
        self.shared.ring.load().get(version).is_some()
    }

    /// A fresh random data key for one credential version (`version` 0: the credential's
    /// metadata key), and its wrap under the active instance key. Each credential version is
    /// sealed under its own data key, so destroying the wrap destroys the value.
    pub fn new_data_key(
        &self,
        vault_id: &str,
        key: &str,
        version: i64,
    ) -> Result<(DataKey, WrappedDataKey), CryptoError> {
        let data_key = DataKey::generate()?;
        let wrapped = self
            .shared
            .ring
            .load()
            .active
            .wrap_data_key(vault_id, key, version, &data_key)?;
        Ok((data_key, wrapped))
    }

    /// Unwraps a data key written by [`Keyring::new_data_key`]; fails if the wrap was moved to
    /// another row or version, edited, or made under an instance key this process no longer
    /// holds (`Malformed`; see [`Keyring::holds`] to tell that case apart and reload).
    pub fn unwrap_data_key(
        &self,
        vault_id: &str,
        key: &str,
        version: i64,
        wrapped: &WrappedDataKey,
    ) -> Result<DataKey, CryptoError> {
        let ring = self.shared.ring.load();
        let instance = ring
            .get(wrapped.key_version)
            .ok_or(CryptoError::Malformed)?;
        instance.unwrap_data_key(vault_id, key, version, wrapped)
    }

    /// Seals one credential version's value under a fresh data key of its own: the wrap and
    /// the ciphertext (AAD: vault, key, version), ready for a `credential_versions` row.
    pub fn seal_version(
        &self,
        vault_id: &str,
        key: &str,
        version: i64,
        payload: &[u8],
    ) -> Result<(WrappedDataKey, Vec<u8>), CryptoError> {
        let (data_key, wrapped) = self.new_data_key(vault_id, key, version)?;
        let sealed = seal(&data_key, &Aad::credential(vault_id, key, version), payload)?;
        Ok((wrapped, sealed))
    }

    /// Opens one credential version's value: unwraps its data key, then the value; fails if
    /// either was edited, moved to another row or version, or wrapped by a key not held here.
    pub fn open_version(
        &self,
        vault_id: &str,
        key: &str,
        version: i64,
        wrapped: &WrappedDataKey,
        sealed: &[u8],
    ) -> Result<SecretSlice<u8>, CryptoError> {
        let data_key = self.unwrap_data_key(vault_id, key, version, wrapped)?;
        open(&data_key, &Aad::credential(vault_id, key, version), sealed)
    }

    /// Seals a credential's metadata under its metadata key (the data key of version 0).
    pub fn seal_metadata(
        &self,
        vault_id: &str,
        key: &str,
        wrapped: &WrappedDataKey,
        plain: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let data_key = self.unwrap_data_key(vault_id, key, 0, wrapped)?;
        seal(&data_key, &Aad::credential_metadata(vault_id, key), plain)
    }

    /// Opens a credential's metadata sealed by [`Keyring::seal_metadata`].
    pub fn open_metadata(
        &self,
        vault_id: &str,
        key: &str,
        wrapped: &WrappedDataKey,
        sealed: &[u8],
    ) -> Result<SecretSlice<u8>, CryptoError> {
        let data_key = self.unwrap_data_key(vault_id, key, 0, wrapped)?;
        open(&data_key, &Aad::credential_metadata(vault_id, key), sealed)
    }

    /// MAC binding a service definition to its vault and name, so a database writer cannot
    /// point a credential at another host without the instance key.
    pub fn service_mac(&self, vault_id: &str, name: &str, spec: &str) -> Vec<u8> {
        self.shared
            .ring
            .load()
            .active
            .service_mac(vault_id, name, spec)
    }

    /// A CSRF token bound to one login session and one purpose (e.g. a proposal id): forms
    /// carry it, and a request from another site cannot know it.
    pub fn csrf_token(&self, session_token_id: &str, purpose: &str) -> String {
        hex::encode(hmac_fields(
            &self.shared.ring.load().active.csrf,
            &[session_token_id, purpose],
        ))
    }

    /// Checks a CSRF token in constant time, under any version held (a form rendered just
    /// before a rotation still submits).
    pub fn verify_csrf(&self, session_token_id: &str, purpose: &str, presented: &str) -> bool {
        self.shared.ring.load().all().any(|k| {
            let expected = hex::encode(hmac_fields(&k.csrf, &[session_token_id, purpose]));
            ct_eq(expected.as_bytes(), presented.as_bytes())
        })
    }

    /// Checks a stored service MAC in constant time, under any version held.
    pub fn verify_service_mac(
        &self,
        vault_id: &str,
        name: &str,
        spec: &str,
        stored: &[u8],
    ) -> bool {
        let ok = self
            .shared
            .ring
            .load()
            .all()
            .any(|k| ct_eq(&k.service_mac(vault_id, name, spec), stored));
        self.note(ok)
    }

    /// Wraps instance key `version` under the KEK, for the `master_key` row; `None` when this
    /// keyring has no KEK (built for a test or a tool).
    pub fn wrap_instance_key(
        &self,
        version: i64,
        dek: &DataKey,
    ) -> Option<Result<Vec<u8>, CryptoError>> {
        let kek = self.shared.kek.as_ref()?;
        Some(seal(&kek.key, &instance_key_aad(version), dek.expose()))
    }

    /// Unwraps instance key `version` from the `master_key` row with the KEK this process
    /// holds; `None` without a KEK.
    pub fn unwrap_instance_key(
        &self,
        version: i64,
        wrapped: &[u8],
    ) -> Option<Result<DataKey, CryptoError>> {
        let kek = self.shared.kek.as_ref()?;
        Some(
            open(&kek.key, &instance_key_aad(version), wrapped).and_then(|plain| {
                let bytes: [u8; 32] = plain
                    .expose_secret()
                    .try_into()
                    .map_err(|_| CryptoError::Malformed)?;
                Ok(DataKey::from_bytes(bytes))
            }),
        )
    }

    /// The salt the KEK was derived with: if the stored one differs, the master password was
    /// changed since this process unsealed, and its KEK must not wrap anything new.
    pub fn kek_salt(&self) -> Option<&[u8]> {
        self.shared.kek.as_ref().map(|k| k.salt.as_slice())
    }

    /// Serializes rotations and the settling after one within this process (across
    /// processes, the store's lock on the `master_key` row does).
    pub async fn rekeying(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.shared.rekey.lock().await
    }

    /// Prepares a rotation from the active version to `new_version` with key `new_dek`. Nothing
    /// changes in this keyring until [`Keyring::hold`].
    pub fn begin_rotation(&self, new_version: i64, new_dek: DataKey) -> Rotation {
        Rotation {
            old: self.shared.ring.load().active.clone(),
            new: Arc::new(InstanceKey::new(new_version, new_dek)),
        }
    }

    /// Accepts the rotation's new version on read (before the rotation commits, so rows it
    /// rewrites verify the moment they are visible); the active version is unchanged.
    pub fn hold(&self, rotation: &Rotation) {
        self.shared.ring.rcu(|ring| {
            let mut others = ring.others.clone();
            if ring.get(rotation.new.version).is_none() {
                others.push(rotation.new.clone());
            }
            Ring {
                active: ring.active.clone(),
                others,
            }
        });
    }

    /// Makes the rotation's new version the active one (new writes use it); the old version
    /// is still accepted on read until [`Keyring::retire_others`].
    pub fn activate(&self, rotation: &Rotation) {
        self.shared.ring.rcu(|ring| {
            let mut others: Vec<_> = ring
                .all()
                .filter(|k| k.version != rotation.new.version)
                .cloned()
                .collect();
            others.sort_by_key(|k| std::cmp::Reverse(k.version));
            Ring {
                active: rotation.new.clone(),
                others,
            }
        });
    }

    /// Forgets every version but the active one (the old key's memory is zeroized once the
    /// last reader lets go of it). From here on, anything still under an old version is
    /// unreadable by this process: that is the crypto-shredding.
    pub fn retire_others(&self) {
        self.shared.ring.rcu(|ring| Ring {
            active: ring.active.clone(),
            others: Vec::new(),
        });
    }

    /// Undoes [`Keyring::hold`] of a rotation that did not commit.
    pub fn drop_version(&self, version: i64) {
        self.shared.ring.rcu(|ring| Ring {
            active: ring.active.clone(),
            others: ring
                .others
                .iter()
                .filter(|k| k.version != version)
                .cloned()
                .collect(),
        });
    }

    /// A rotation from every version held but the active one to the active one: what a sweep
    /// after a rotation uses to catch rows written under an older version meanwhile.
    pub fn catch_up(&self) -> Vec<Rotation> {
        let ring = self.shared.ring.load();
        ring.others
            .iter()
            .map(|old| Rotation {
                old: old.clone(),
                new: ring.active.clone(),
            })
            .collect()
    }
}

/// What a rotation does to one stored item, with the old and the new instance key in hand.
/// Every method leaves alone what the old key does not open or verify: a forged row stays
/// forged, never laundered into a valid one.
#[derive(Clone)]
pub struct Rotation {
    old: Arc<InstanceKey>,
    new: Arc<InstanceKey>,
}

impl fmt::Debug for Rotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Rotation(k{} -> k{})",
            self.old.version, self.new.version
        )
    }
}

impl Rotation {
    /// The version rotated from.
    pub fn old_version(&self) -> i64 {
        self.old.version
    }

    /// The version rotated to.
    pub fn new_version(&self) -> i64 {
        self.new.version
    }

    /// The new instance key (to wrap under the KEK).
    pub fn new_key(&self) -> &DataKey {
        &self.new.dek
    }

    /// A data key wrapped under the old version, wrapped again under the new one; `None` when
    /// the wrap is under another version (already rewrapped, or dead), or fails to open.
    pub fn rewrap(
        &self,
        vault_id: &str,
        key: &str,
        version: i64,
        wrapped: &WrappedDataKey,
    ) -> Option<Result<WrappedDataKey, CryptoError>> {
        if wrapped.key_version != self.old.version {
            return None;
        }
        let data_key = self
            .old
            .unwrap_data_key(vault_id, key, version, wrapped)
            .ok()?;
        Some(self.new.wrap_data_key(vault_id, key, version, &data_key))
    }

    /// A value sealed under the old version, sealed again under the new one; `None` when the
    /// old key does not open it (already resealed, or tampered with).
    pub fn reseal(&self, aad: &Aad, sealed: &[u8]) -> Option<Result<Vec<u8>, CryptoError>> {
        let plain = open(&self.old.dek, aad, sealed).ok()?;
        Some(seal(&self.new.dek, aad, plain.expose_secret()))
    }

    /// A service MAC under the new key, if the stored one verifies under the old key.
    pub fn remac_service(
        &self,
        vault_id: &str,
        name: &str,
        spec: &str,
        stored: &[u8],
    ) -> Option<Vec<u8>> {
        ct_eq(&self.old.service_mac(vault_id, name, spec), stored)
            .then(|| self.new.service_mac(vault_id, name, spec))
    }

    /// The authority-row MAC keys of the old and the new version, for re-binding every row
    /// that verifies under the old one.
    pub fn authority_macs(&self) -> (AuthorityMacs, AuthorityMacs) {
        (
            Keyring::from_dek(self.old.dek.clone()).authority_macs(),
            Keyring::from_dek(self.new.dek.clone()).authority_macs(),
        )
    }

    /// An authority row's MAC under the new key, if the stored one verifies under the old.
    pub fn remac_authority(
        &self,
        kind: AuthorityRow,
        fields: &[MacField<'_>],
        stored: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        let stored = stored?;
        ct_eq(&self.old.authority_mac(kind, fields), stored)
            .then(|| self.new.authority_mac(kind, fields))
    }
}

/// The kinds of row that carry authority, each MACed under its own key so a MAC from one table
/// never verifies in another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorityRow {
    /// `vault_grants`: (vault, principal kind, principal id, role).
    Grant,
    /// `users`: (id, email, role, password hash).
    User,
    /// `invites`: (id, email, role, vault grants, expiry, token hash, creator, accepted,
    /// revoked).
    Invite,
    /// `agents`: (id, name, creator).
    Agent,
    /// `tokens`: (id, hash, kind, user, agent, vault, role, expiry, revoked, parent).
    Token,
    /// `credentials`: (vault, key, type, state, active version, expiry, metadata key wrap and
    /// its instance-key version, revocation time).
    Credential,
}

impl AuthorityRow {
    /// The table the row lives in (for alarms).
    pub fn table(self) -> &'static str {
        match self {
            Self::Grant => "vault_grants",
            Self::User => "users",
            Self::Invite => "invites",
            Self::Agent => "agents",
            Self::Token => "tokens",
            Self::Credential => "credentials",
        }
    }

    fn label(self) -> &'static [u8] {
        match self {
            Self::Grant => b"authority-mac grant v1",
            Self::User => b"authority-mac user v1",
            Self::Invite => b"authority-mac invite v1",
            Self::Agent => b"authority-mac agent v1",
            Self::Token => b"authority-mac token v1",
            Self::Credential => b"authority-mac credential v1",
        }
    }
}

/// One field of a row under a MAC. Each is tagged and length-prefixed so no two different
/// rows encode to the same bytes.
#[derive(Clone, Copy, Debug)]
pub enum MacField<'a> {
    /// A text column.
    Text(&'a str),
    /// A binary column.
    Bytes(&'a [u8]),
    /// An integer column.
    Int(i64),
    /// A nullable text column.
    OptText(Option<&'a str>),
    /// A nullable integer column (an expiry, a revocation time).
    OptInt(Option<i64>),
}

/// The MAC of one authority row under `key` (the one derived for `kind`).
fn authority_mac(key: &DataKey, kind: AuthorityRow, fields: &[MacField<'_>]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    // The label as well as the key: belt and braces against cross-table replay.
    let label = kind.label();
    mac.update(&(label.len() as u64).to_be_bytes());
    mac.update(label);
    for field in fields {
        let (tag, bytes): (u8, std::borrow::Cow<'_, [u8]>) = match field {
            MacField::Text(s) => (1, s.as_bytes().into()),
            MacField::Bytes(b) => (2, (*b).into()),
            MacField::Int(i) => (3, i.to_be_bytes().to_vec().into()),
            MacField::OptText(None) => (4, (&[][..]).into()),
            MacField::OptText(Some(s)) => (5, s.as_bytes().into()),
            MacField::OptInt(None) => (6, (&[][..]).into()),
            MacField::OptInt(Some(i)) => (7, i.to_be_bytes().to_vec().into()),
        };
        mac.update(&[tag]);
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(&bytes);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Keys (derived per table from the instance key) that bind authority rows, so a database
/// writer cannot grant a role, change a password hash or move a row to another id without the
/// master password. A handle on the keyring: it follows rotations.
#[derive(Clone)]
pub struct AuthorityMacs {
    shared: Arc<Shared>,
}

impl fmt::Debug for AuthorityMacs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthorityMacs([REDACTED])")
    }
}

impl AuthorityMacs {
    /// The MAC of one row of `kind`, over its fields in a fixed order, under the active key.
    pub fn mac(&self, kind: AuthorityRow, fields: &[MacField<'_>]) -> Vec<u8> {
        self.shared.ring.load().active.authority_mac(kind, fields)
    }

    /// Checks a stored MAC in constant time under every version held; a missing one never
    /// verifies.
    pub fn verify(
        &self,
        kind: AuthorityRow,
        fields: &[MacField<'_>],
        stored: Option<&[u8]>,
    ) -> bool {
        let Some(stored) = stored else {
            return false;
        };
        let ok = self
            .shared
            .ring
            .load()
            .all()
            .any(|k| ct_eq(&k.authority_mac(kind, fields), stored));
        if !ok {
            self.shared.mac_failures.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subkeys_differ_from_the_dek_and_each_other() {
        let ring = Keyring::from_dek(DataKey::from_bytes([3; 32]));
        let mac = ring.service_mac("v", "svc", "{}");
        assert!(ring.verify_service_mac("v", "svc", "{}", &mac));
        assert!(!ring.verify_service_mac("v", "svc", "{\"host\":1}", &mac));
        assert!(!ring.verify_service_mac("w", "svc", "{}", &mac));
        assert_eq!(format!("{ring:?}"), "Keyring([REDACTED])");
    }

    #[test]
    fn authority_macs_do_not_verify_across_tables_or_fields() {
        let macs = Keyring::from_dek(DataKey::from_bytes([4; 32])).authority_macs();
        let fields = [MacField::Text("a"), MacField::Text("b")];
        let mac = macs.mac(AuthorityRow::Grant, &fields);
        assert!(macs.verify(AuthorityRow::Grant, &fields, Some(&mac)));
        assert!(!macs.verify(AuthorityRow::User, &fields, Some(&mac)));
        assert!(!macs.verify(AuthorityRow::Grant, &fields, None));
        let shifted = [MacField::Text("ab"), MacField::Text("")];
        assert!(!macs.verify(AuthorityRow::Grant, &shifted, Some(&mac)));
        let none = [MacField::OptText(None)];
        let empty = [MacField::OptText(Some(""))];
        assert_ne!(
            macs.mac(AuthorityRow::Agent, &none),
            macs.mac(AuthorityRow::Agent, &empty)
        );
        // A revocation cleared or an expiry moved is another row.
        let live = [MacField::OptInt(None)];
        let revoked = [MacField::OptInt(Some(0))];
        let later = [MacField::OptInt(Some(1))];
        let mac = macs.mac(AuthorityRow::Token, &revoked);
        assert!(!macs.verify(AuthorityRow::Token, &live, Some(&mac)));
        assert!(!macs.verify(AuthorityRow::Token, &later, Some(&mac)));
        assert_ne!(
            macs.mac(AuthorityRow::Token, &[MacField::Int(0)]),
            mac,
            "a nullable integer never encodes as a plain one"
        );
        let other = Keyring::from_dek(DataKey::from_bytes([5; 32])).authority_macs();
        assert!(!other.verify(AuthorityRow::Grant, &fields, Some(&mac)));
    }

    #[test]
    fn a_rotation_rewraps_data_keys_and_retiring_the_old_version_shreds_them() {
        let ring = Keyring::from_dek(DataKey::from_bytes([1; 32]));
        let (data_key, old_wrap) = ring.new_data_key("v", "KEY", 3).unwrap();
        assert_eq!(old_wrap.key_version, 1);
        let rotation = ring.begin_rotation(2, DataKey::from_bytes([2; 32]));
        let new_wrap = rotation.rewrap("v", "KEY", 3, &old_wrap).unwrap().unwrap();
        assert_eq!(new_wrap.key_version, 2);
        assert_ne!(new_wrap.bytes, old_wrap.bytes);
        assert!(
            rotation.rewrap("v", "KEY", 3, &new_wrap).is_none(),
            "a wrap under the new version is left alone"
        );
        assert!(
            rotation.rewrap("v", "KEY", 4, &old_wrap).is_none(),
            "a wrap moved to another row does not open, so it is not rewrapped"
        );
        ring.hold(&rotation);
        assert_eq!(ring.active_key_version(), 1, "holding does not activate");
        ring.activate(&rotation);
        assert_eq!(ring.key_versions(), vec![2, 1]);
        let back = ring.unwrap_data_key("v", "KEY", 3, &new_wrap).unwrap();
        assert_eq!(back.expose(), data_key.expose());
        assert!(ring.unwrap_data_key("v", "KEY", 3, &old_wrap).is_ok());
        ring.retire_others();
        assert_eq!(ring.key_versions(), vec![2]);
        assert!(
            ring.unwrap_data_key("v", "KEY", 3, &old_wrap).is_err(),
            "the old wrap is dead once the old version is gone"
        );
        let forged = WrappedDataKey {
            key_version: 2,
            bytes: old_wrap.bytes.clone(),
        };
        assert!(ring.unwrap_data_key("v", "KEY", 3, &forged).is_err());
        assert_eq!(ring.new_data_key("v", "K2", 1).unwrap().1.key_version, 2);
    }

    #[test]
    fn a_rotation_never_launders_a_forged_mac_and_reads_accept_both_versions_while_held() {
        let ring = Keyring::from_dek(DataKey::from_bytes([1; 32]));
        let macs = ring.authority_macs();
        let fields = [MacField::Text("u1"), MacField::Text("owner")];
        let good = macs.mac(AuthorityRow::User, &fields);
        let forged = vec![0u8; 32];
        let service = ring.service_mac("v", "svc", "{}");
        let rotation = ring.begin_rotation(2, DataKey::from_bytes([2; 32]));
        let remac = rotation
            .remac_authority(AuthorityRow::User, &fields, Some(&good))
            .unwrap();
        assert_ne!(remac, good);
        assert!(
            rotation
                .remac_authority(AuthorityRow::User, &fields, Some(&forged))
                .is_none()
        );
        assert!(
            rotation
                .remac_authority(AuthorityRow::User, &fields, None)
                .is_none()
        );
        let new_service = rotation.remac_service("v", "svc", "{}", &service).unwrap();
        assert!(
            rotation
                .remac_service("v", "svc", "{\"x\":1}", &service)
                .is_none()
        );
        let sealed = ring.seal_instance(&Aad::ca_key(), b"ca").unwrap();
        let resealed = rotation.reseal(&Aad::ca_key(), &sealed).unwrap().unwrap();
        assert!(rotation.reseal(&Aad::setup_token(), &sealed).is_none());

        assert!(!macs.verify(AuthorityRow::User, &fields, Some(&remac)));
        let before = ring.mac_failures();
        assert!(!ring.verify_service_mac("v", "svc", "{}", &new_service));
        assert_eq!(ring.mac_failures(), before + 1, "failures are counted");
        ring.hold(&rotation);
        for mac in [&good, &remac] {
            assert!(macs.verify(AuthorityRow::User, &fields, Some(mac)));
        }
        assert!(ring.verify_service_mac("v", "svc", "{}", &new_service));
        assert!(ring.open_instance(&Aad::ca_key(), &resealed).is_ok());
        ring.activate(&rotation);
        assert_eq!(
            macs.mac(AuthorityRow::User, &fields),
            remac,
            "writes use the new key"
        );
        ring.retire_others();
        assert!(!macs.verify(AuthorityRow::User, &fields, Some(&good)));
        assert!(macs.verify(AuthorityRow::User, &fields, Some(&remac)));
        assert!(ring.open_instance(&Aad::ca_key(), &sealed).is_err());
        assert!(ring.open_instance(&Aad::ca_key(), &resealed).is_ok());
    }

    #[test]
    fn the_token_hasher_survives_a_rotation() {
        let ring = Keyring::from_dek(DataKey::from_bytes([1; 32]));
        let raw = secrecy::SecretString::from("av_agt_x".to_owned());
        let before = ring.token_hasher().hash(&raw);
        let rotation = ring.begin_rotation(2, DataKey::from_bytes([2; 32]));
        ring.hold(&rotation);
        ring.activate(&rotation);
        ring.retire_others();
        assert_eq!(ring.token_hasher().hash(&raw), before);
        let clone = ring.clone();
        assert_eq!(clone.active_key_version(), 2, "clones share the ring");
    }

    #[test]
    fn instance_key_wraps_are_bound_to_their_version() {
        let kek = Kek::new(DataKey::from_bytes([9; 32]), vec![1; 16]);
        let ring = Keyring::unsealed(
            1,
            DataKey::from_bytes([1; 32]),
            DataKey::from_bytes([5; 32]),
            kek,
        );
        let dek = DataKey::from_bytes([2; 32]);
        let wrapped = ring.wrap_instance_key(2, &dek).unwrap().unwrap();
        assert_eq!(
            ring.unwrap_instance_key(2, &wrapped)
                .unwrap()
                .unwrap()
                .expose(),
            dek.expose()
        );
        assert!(ring.unwrap_instance_key(3, &wrapped).unwrap().is_err());
        assert!(
            Keyring::from_dek(DataKey::from_bytes([1; 32]))
                .wrap_instance_key(2, &dek)
                .is_none()
        );
        assert_eq!(format!("{:?}", Kek::new(dek, vec![])), "Kek([REDACTED])");
    }
}
