//! Unsealing: the master password derives the KEK (Argon2id), which unwraps the DEK. The DEK
//! lives only in this process's memory; every other key is derived from it for one purpose.

use std::fmt;

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;

use crate::crypto::{
    Aad, CryptoError, DataKey, KdfGate, KdfParams, TokenHasher, open, random_bytes, seal,
};
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

/// The DEK and the keys derived from it, held for the life of the process.
#[derive(Clone)]
pub struct Keyring {
    dek: DataKey,
    tokens: TokenHasher,
    service_mac: DataKey,
    csrf: DataKey,
    authority: AuthorityMacs,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keyring([REDACTED])")
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

impl Keyring {
    /// Builds the keyring around an unwrapped DEK.
    pub fn from_dek(dek: DataKey) -> Self {
        let tokens = TokenHasher::new(derive_subkey(&dek, b"token-hash"));
        let service_mac = derive_subkey(&dek, b"service-mac");
        let csrf = derive_subkey(&dek, b"csrf");
        let authority = AuthorityMacs::derive(&dek);
        Self {
            dek,
            tokens,
            service_mac,
            csrf,
            authority,
        }
    }

    /// The keys binding authority rows (grants, users, invites, agents), for the store.
    pub fn authority_macs(&self) -> AuthorityMacs {
        self.authority.clone()
    }

    /// The data-encryption key.
    pub fn dek(&self) -> &DataKey {
        &self.dek
    }

    /// The keyed hash used for every stored token.
    pub fn token_hasher(&self) -> &TokenHasher {
        &self.tokens
    }

    /// Seals a credential value for (vault, key, version).
    pub fn seal_credential(
        &self,
        vault_id: &str,
        key: &str,
        version: i64,
        value: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        seal(&self.dek, &Aad::credential(vault_id, key, version), value)
    }

    /// Opens a credential value; fails if the row was edited or moved.
    pub fn open_credential(
        &self,
        vault_id: &str,
        key: &str,
        version: i64,
        sealed: &[u8],
    ) -> Result<SecretSlice<u8>, CryptoError> {
        open(&self.dek, &Aad::credential(vault_id, key, version), sealed)
    }

    /// MAC binding a service definition to its vault and name, so a database writer cannot
    /// point a credential at another host without the DEK.
    pub fn service_mac(&self, vault_id: &str, name: &str, spec: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.service_mac.expose())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        for field in [vault_id, name, spec] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// A CSRF token bound to one login session and one purpose (e.g. a proposal id): forms
    /// carry it, and a request from another site cannot know it.
    pub fn csrf_token(&self, session_token_id: &str, purpose: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.csrf.expose())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        for field in [session_token_id, purpose] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// Checks a CSRF token in constant time.
    pub fn verify_csrf(&self, session_token_id: &str, purpose: &str, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.csrf_token(session_token_id, purpose)
            .as_bytes()
            .ct_eq(presented.as_bytes())
            .into()
    }

    /// Checks a stored service MAC in constant time.
    pub fn verify_service_mac(
        &self,
        vault_id: &str,
        name: &str,
        spec: &str,
        stored: &[u8],
    ) -> bool {
        use subtle::ConstantTimeEq;
        self.service_mac(vault_id, name, spec).ct_eq(stored).into()
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
    /// `invites`: (id, email, role, vault grants, expiry, token hash, creator).
    Invite,
    /// `agents`: (id, name, creator).
    Agent,
    /// `tokens`: (id, hash, kind, user, agent, vault, role).
    Token,
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
        }
    }

    fn label(self) -> &'static [u8] {
        match self {
            Self::Grant => b"authority-mac grant v1",
            Self::User => b"authority-mac user v1",
            Self::Invite => b"authority-mac invite v1",
            Self::Agent => b"authority-mac agent v1",
            Self::Token => b"authority-mac token v1",
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
}

/// Keys (derived from the DEK) that bind authority rows, so a database writer cannot grant a
/// role, change a password hash or move a row to another id without the master password.
#[derive(Clone)]
pub struct AuthorityMacs {
    grant: DataKey,
    user: DataKey,
    invite: DataKey,
    agent: DataKey,
    token: DataKey,
}

impl fmt::Debug for AuthorityMacs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthorityMacs([REDACTED])")
    }
}

impl AuthorityMacs {
    fn derive(dek: &DataKey) -> Self {
        Self {
            grant: derive_subkey(dek, AuthorityRow::Grant.label()),
            user: derive_subkey(dek, AuthorityRow::User.label()),
            invite: derive_subkey(dek, AuthorityRow::Invite.label()),
            agent: derive_subkey(dek, AuthorityRow::Agent.label()),
            token: derive_subkey(dek, AuthorityRow::Token.label()),
        }
    }

    /// The MAC of one row of `kind`, over its fields in a fixed order.
    pub fn mac(&self, kind: AuthorityRow, fields: &[MacField<'_>]) -> Vec<u8> {
        let key = match kind {
            AuthorityRow::Grant => &self.grant,
            AuthorityRow::User => &self.user,
            AuthorityRow::Invite => &self.invite,
            AuthorityRow::Agent => &self.agent,
            AuthorityRow::Token => &self.token,
        };
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
            };
            mac.update(&[tag]);
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(&bytes);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// Checks a stored MAC in constant time; a missing one never verifies.
    pub fn verify(
        &self,
        kind: AuthorityRow,
        fields: &[MacField<'_>],
        stored: Option<&[u8]>,
    ) -> bool {
        use subtle::ConstantTimeEq;
        stored.is_some_and(|s| self.mac(kind, fields).ct_eq(s).into())
    }
}

async fn wrap(
    gate: &KdfGate,
    password: &SecretString,
    dek: &DataKey,
    params: KdfParams,
) -> Result<MasterKeyRecord, CryptoError> {
    let salt: [u8; 16] = random_bytes()?;
    let kek = gate.derive_key(password, &salt, params).await?;
    let wrapped_dek = seal(&kek, &Aad::wrapped_dek_macs_bound(), dek.expose())?;
    Ok(MasterKeyRecord {
        kdf_salt: salt.to_vec(),
        kdf: params,
        wrapped_dek,
    })
}

/// The DEK a record opened to, the KEK that opened it, and whether the record says the
/// authority rows are bound (false: wrapped by a version before authority-row MACs).
struct Opened {
    dek: DataKey,
    kek: DataKey,
    macs_bound: bool,
}

async fn unwrap(
    gate: &KdfGate,
    password: &SecretString,
    record: &MasterKeyRecord,
) -> Result<Opened, UnsealError> {
    let kek = gate
        .derive_key(password, &record.kdf_salt, record.kdf)
        .await?;
    let (dek, macs_bound) = match open(&kek, &Aad::wrapped_dek_macs_bound(), &record.wrapped_dek) {
        Ok(dek) => (dek, true),
        Err(CryptoError::Integrity) => {
            let dek =
                open(&kek, &Aad::wrapped_dek(), &record.wrapped_dek).map_err(|e| match e {
                    CryptoError::Integrity => UnsealError::WrongPassword,
                    other => UnsealError::Crypto(other),
                })?;
            (dek, false)
        }
        Err(other) => return Err(UnsealError::Crypto(other)),
    };
    let bytes: [u8; 32] = dek
        .expose_secret()
        .try_into()
        .map_err(|_| UnsealError::Crypto(CryptoError::Malformed))?;
    Ok(Opened {
        dek: DataKey::from_bytes(bytes),
        kek,
        macs_bound,
    })
}

/// Makes sure every authority row carries a MAC before anything reads them. A record wrapped
/// before authority-row MACs existed gets its rows bound once (rows edited before this are
/// trusted as they are), then the DEK is re-wrapped so that it says so; only the master
/// password can write that wrap, so a database writer who wipes a MAC and re-inserts the
/// pending marker later gets an alarm, not a fresh binding of their edit.
async fn bind_authority_rows(
    store: &Store,
    record: &MasterKeyRecord,
    opened: &Opened,
    keyring: &Keyring,
) -> Result<(), UnsealError> {
    let store = store.with_authority_macs(keyring.authority_macs());
    if opened.macs_bound {
        if store.discard_backfill_marker().await? {
            tracing::error!(
                "INTEGRITY ALARM: the database asks for authority rows to be bound again, but they were bound at an earlier start; ignored (a database writer may have wiped MACs)"
            );
        }
        return Ok(());
    }
    let bound = store.backfill_authority_macs().await?;
    tracing::warn!(
        rows = bound,
        "bound existing grants, users, invites, agents and tokens with MACs (first start after upgrading); rows edited before this start are trusted as they were"
    );
    let rewrapped = MasterKeyRecord {
        kdf_salt: record.kdf_salt.clone(),
        kdf: record.kdf,
        wrapped_dek: seal(
            &opened.kek,
            &Aad::wrapped_dek_macs_bound(),
            opened.dek.expose(),
        )?,
    };
    // Another instance upgrading at the same moment wraps the same DEK the same way: losing
    // the race is as good as winning it.
    store
        .replace_master_key(&record.wrapped_dek, &rewrapped)
        .await?;
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
        let keyring = Keyring::from_dek(opened.dek.clone());
        bind_authority_rows(store, &record, &opened, &keyring).await?;
        return Ok((keyring, false));
    }
    if let Some(why) = master_password_weakness(&password) {
        return Err(UnsealError::WeakPassword(why));
    }
    let dek = DataKey::generate()?;
    let record = wrap(gate, &password, &dek, params).await?;
    if store.insert_master_key_if_absent(&record).await? {
        let keyring = Keyring::from_dek(dek);
        // A new database has no rows to bind; migration 0003's marker has nothing to do.
        store
            .with_authority_macs(keyring.authority_macs())
            .discard_backfill_marker()
            .await?;
        return Ok((keyring, true));
    }
    // Another instance initialized the database first: use its key, which must open with the
    // same password.
    let record = store
        .master_key()
        .await?
        .ok_or(UnsealError::NotInitialized)?;
    let opened = unwrap(gate, &password, &record).await?;
    Ok((Keyring::from_dek(opened.dek), false))
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
    if !opened.macs_bound {
        let keyring = Keyring::from_dek(opened.dek.clone());
        bind_authority_rows(store, &record, &opened, &keyring).await?;
    }
    let record = store
        .master_key()
        .await?
        .ok_or(UnsealError::NotInitialized)?;
    let expected = record.wrapped_dek.clone();
    let new_record = wrap(gate, &new, &opened.dek, params).await?;
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
    let record = store
        .master_key()
        .await?
        .ok_or(UnsealError::NotInitialized)?;
    let opened = unwrap(gate, &password, &record).await?;
    let old = MasterKeyRecord {
        kdf_salt: record.kdf_salt.clone(),
        kdf: record.kdf,
        wrapped_dek: seal(&opened.kek, &Aad::wrapped_dek(), opened.dek.expose())?,
    };
    store.replace_master_key(&record.wrapped_dek, &old).await?;
    Ok(())
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
        let other = Keyring::from_dek(DataKey::from_bytes([5; 32])).authority_macs();
        assert!(!other.verify(AuthorityRow::Grant, &fields, Some(&mac)));
    }

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
        let record = wrap(&gate, &right, &dek, params).await.unwrap();
        let back = unwrap(&gate, &right, &record).await.unwrap();
        assert_eq!(back.dek.expose(), dek.expose());
        assert!(
            back.macs_bound,
            "new wraps say the authority rows are bound"
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
