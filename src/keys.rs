//! The keyring: the DEK, held only in this process's memory, and every key derived from it for
//! one purpose (token hashing, service and authority-row MACs, CSRF). Pure: no IO; the flows
//! that obtain the DEK from the master password live in `unseal`.

use std::fmt;

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

    /// Seals a credential value under the instance key itself, as releases before
    /// per-credential data keys did (kept for the upgrade path and its tests).
    pub fn seal_credential(
        &self,
        vault_id: &str,
        key: &str,
        version: i64,
        value: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        seal(&self.dek, &Aad::credential(vault_id, key, version), value)
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
        open(&self.dek, &Aad::credential(vault_id, key, version), sealed)
    }

    /// The instance-key version that new data keys are wrapped under.
    pub fn active_key_version(&self) -> i64 {
        1
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
        let key_version = self.active_key_version();
        let bytes = seal(
            &self.dek,
            &Aad::data_key(vault_id, key, version, key_version),
            data_key.expose(),
        )?;
        Ok((data_key, WrappedDataKey { key_version, bytes }))
    }

    /// Unwraps a data key written by [`Keyring::new_data_key`]; fails if the wrap was moved to
    /// another row or version, edited, or made under an instance key this process no longer holds.
    pub fn unwrap_data_key(
        &self,
        vault_id: &str,
        key: &str,
        version: i64,
        wrapped: &WrappedDataKey,
    ) -> Result<DataKey, CryptoError> {
        if wrapped.key_version != self.active_key_version() {
            return Err(CryptoError::Malformed);
        }
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
    /// A nullable integer column.
    OptInt(Option<i64>),
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
    credential: DataKey,
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
            credential: derive_subkey(dek, AuthorityRow::Credential.label()),
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
            AuthorityRow::Credential => &self.credential,
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
                MacField::OptInt(None) => (6, (&[][..]).into()),
                MacField::OptInt(Some(i)) => (7, i.to_be_bytes().to_vec().into()),
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
}
