//! Proposals as data: what an agent may ask for, how it is validated (exactly like direct edits),
//! what is risky about it, the hash that ties an approval to the exact content shown, and the
//! plan that applies it. Pure: no IO, no clock.

use std::collections::{BTreeMap, BTreeSet};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::credtype::{self, CredentialType};
use crate::domain::CredentialKey;
use crate::policy::confusable::{self, HostForms};
use crate::policy::service::{ServiceSpec, validate_services};

/// Most services one proposal may change.
pub const MAX_SERVICES: usize = 10;
/// Most credential slots one proposal may carry.
pub const MAX_CREDENTIALS: usize = 10;
/// Longest message to the human.
pub const MAX_MESSAGE: usize = 2000;
/// Longest credential description and `obtain` URL.
pub const MAX_DESCRIPTION: usize = 500;
/// Longest instructions for obtaining a credential.
pub const MAX_INSTRUCTIONS: usize = 1000;
/// Largest agent-supplied value.
pub const MAX_VALUE: usize = 64 * 1024;

/// Why a proposal was refused. Messages name the item and field, never a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProposalError(pub String);

fn err(msg: impl Into<String>) -> ProposalError {
    ProposalError(msg.into())
}

/// A change to one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ServiceChange {
    /// Add the service, or replace the one with the same name.
    Set(ServiceSpec),
    /// Remove a service by name.
    Delete {
        /// The service's name.
        name: String,
    },
}

/// What an agent sends for a slot that sets or rotates a credential.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRequest {
    /// Its key.
    pub key: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Where a human can get it (http or https URL).
    #[serde(default)]
    pub obtain: Option<String>,
    /// How to get it. `instructions` is accepted too: the reference product calls it
    /// `obtain_instructions`, earlier versions of this one `instructions`.
    #[serde(default, alias = "instructions")]
    pub obtain_instructions: Option<String>,
    /// A value the agent already has (sealed at once; approving still needs a human).
    #[serde(default)]
    pub value: Option<SecretString>,
    /// The credential type's name (default: the stored type, or `api_key` for a new key).
    /// Read as text so an unknown name gets the type module's message, naming the choices.
    #[serde(default, rename = "type")]
    pub ty: Option<String>,
    /// Metadata for the credential (sealed with the proposal's values, never stored in
    /// its content).
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl std::fmt::Debug for SlotRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotRequest")
            .field("key", &self.key)
            .field("type", &self.ty)
            .field("has_value", &self.value.is_some())
            .field("has_metadata", &self.metadata.is_some())
            .finish_non_exhaustive()
    }
}

/// A credential slot as an agent sends it.
#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum CredentialSlotRequest {
    /// Ask for a credential to be set (a new key, or a new version of an existing one).
    Set(SlotRequest),
    /// Ask for a new version of an existing, non-revoked credential.
    Rotate(SlotRequest),
    /// Ask for a credential to be deleted.
    Delete {
        /// Its key.
        key: String,
    },
}

impl std::fmt::Debug for CredentialSlotRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Set(slot) => f.debug_tuple("Set").field(slot).finish(),
            Self::Rotate(slot) => f.debug_tuple("Rotate").field(slot).finish(),
            Self::Delete { key } => f.debug_struct("Delete").field("key", key).finish(),
        }
    }
}

/// What `POST /v1/proposals` accepts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalRequest {
    /// The vault (optional for tokens bound to one vault).
    #[serde(default)]
    pub vault: Option<String>,
    /// A message for the human.
    #[serde(default)]
    pub message: String,
    /// Service changes.
    #[serde(default)]
    pub services: Vec<ServiceChange>,
    /// Credential slots.
    #[serde(default)]
    pub credentials: Vec<CredentialSlotRequest>,
}

/// A slot that sets or rotates a credential, as stored and shown (never with a value or a
/// metadata value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSlot {
    /// Its key.
    pub key: CredentialKey,
    /// What it is for.
    pub description: String,
    /// Where to get it.
    pub obtain: Option<String>,
    /// How to get it. Shown as `obtain_instructions`; rows stored as `instructions` by
    /// earlier versions still load.
    #[serde(alias = "instructions")]
    pub obtain_instructions: Option<String>,
    /// Whether the agent supplied a value (sealed separately).
    pub has_value: bool,
    /// The type the value is checked as. Resolved at creation (named, else stored, else
    /// `api_key`); `None` only in content stored before types existed.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<CredentialType>,
    /// Whether the agent supplied metadata (sealed separately, like values).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub has_metadata: bool,
}

/// A credential slot as stored and shown (never with a value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum CredentialSlot {
    /// Set a credential.
    Set(SetSlot),
    /// Rotate an existing credential: a new active version, the previous one `rotated`.
    Rotate(SetSlot),
    /// Delete a credential.
    Delete {
        /// Its key.
        key: CredentialKey,
    },
}

impl CredentialSlot {
    /// The slot's key.
    pub fn key(&self) -> &CredentialKey {
        match self {
            Self::Set(s) | Self::Rotate(s) => &s.key,
            Self::Delete { key } => key,
        }
    }

    /// The set or rotate part of the slot, if it is one.
    pub fn writes(&self) -> Option<&SetSlot> {
        match self {
            Self::Set(s) | Self::Rotate(s) => Some(s),
            Self::Delete { .. } => None,
        }
    }

    /// `set`, `rotate` or `delete`, as the API names the action.
    pub fn action(&self) -> &'static str {
        match self {
            Self::Set(_) => "set",
            Self::Rotate(_) => "rotate",
            Self::Delete { .. } => "delete",
        }
    }
}

/// A validated proposal's content, as stored and hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalContent {
    /// The message for the human.
    pub message: String,
    /// Service changes.
    pub services: Vec<ServiceChange>,
    /// Credential slots.
    pub credentials: Vec<CredentialSlot>,
}

/// The vault as it is now, for validation, risk analysis and applying.
#[derive(Clone, Debug, Default)]
pub struct VaultState {
    /// Current services, in order.
    pub services: Vec<ServiceSpec>,
    /// Current credential keys.
    pub keys: BTreeSet<CredentialKey>,
    /// Type and lifecycle state of the current credentials. Not part of the fingerprint: a
    /// slot that no longer fits them is refused by [`plan`] at approval ("no longer
    /// applies"), and the write transaction refuses it again.
    pub credentials: BTreeMap<CredentialKey, StoredCredential>,
}

/// What a proposal needs to know of a stored credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredCredential {
    /// Its type.
    pub ty: CredentialType,
    /// Revoked: only deleting it remains.
    pub revoked: bool,
}

impl VaultState {
    /// A fingerprint of the state, so an approval is refused if the vault changed since the
    /// page was shown (the risks shown depend on it).
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&self.services).unwrap_or_default());
        for k in &self.keys {
            h.update(k.as_str().as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }
}

/// An `obtain` link is shown to the approver, who may open it while logged in to the pages. It
/// must lead to a public https site: never this machine, a private network, or a plain-http
/// page, where an agent-run server would receive the browser's same-site requests. Numeric
/// spellings (`2130706433`, `0x7f.1`, `[::ffff:7f00:1]`) are parsed the way browsers parse them
/// and classified like the proxy classifies destinations. This server's own host names are
/// checked by [`check_links`]. Returns the URL as the parser serializes it (ASCII only: A-label
/// host, percent-encoded path), so what the approver reads is where it goes, with no
/// text-direction or invisible characters.
fn check_url(key: &CredentialKey, url: &str) -> Result<String, ProposalError> {
    if url.len() > MAX_DESCRIPTION {
        return Err(err(format!(
            "credential {key}: `obtain` is longer than {MAX_DESCRIPTION} characters"
        )));
    }
    let parsed = match url::Url::parse(url) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() => u,
        _ => {
            return Err(err(format!(
                "credential {key}: `obtain` must be an https:// URL"
            )));
        }
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(err(format!(
            "credential {key}: `obtain` must not contain a user name or password"
        )));
    }
    let refused = |what: &str| {
        err(format!(
            "credential {key}: `obtain` must not point at {what}; give a link to a public https site"
        ))
    };
    match parsed.host() {
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.');
            if name.eq_ignore_ascii_case("localhost")
                || name.to_ascii_lowercase().ends_with(".localhost")
            {
                return Err(refused("this machine (localhost)"));
            }
        }
        // Any address the proxy's SSRF guard refuses is refused as a link target too.
        Some(url::Host::Ipv4(ip)) => {
            if let Some(blocked) = crate::netguard::classify(ip.into()) {
                return Err(refused(&format!("a {blocked}")));
            }
        }
        Some(url::Host::Ipv6(ip)) => {
            if let Some(blocked) = crate::netguard::classify(ip.into()) {
                return Err(refused(&format!("a {blocked}")));
            }
        }
        None => return Err(refused("no host")),
    }
    Ok(parsed.to_string())
}

/// The host names and addresses this server is reached at (its public URL, the Host names it
/// answers to, its listeners). Links an agent supplies may not point there.
#[derive(Clone, Debug, Default)]
pub struct OwnHosts {
    names: BTreeSet<String>,
    addrs: BTreeSet<std::net::IpAddr>,
}

impl OwnHosts {
    /// Adds the host of a URL (`server.public_url`).
    pub fn add_url(&mut self, url: &str) {
        if let Ok(u) = url::Url::parse(url) {
            match u.host() {
                Some(url::Host::Domain(d)) => self.add_name(d),
                Some(url::Host::Ipv4(ip)) => self.add_addr(ip.into()),
                Some(url::Host::Ipv6(ip)) => self.add_addr(ip.into()),
                None => {}
            }
        }
    }

    /// Adds a `host` or `host:port` as found in a Host header (`server.allowed_hosts`).
    pub fn add_host(&mut self, host: &str) {
        self.add_url(&format!("https://{host}/"));
    }

    /// Adds a listener address.
    pub fn add_addr(&mut self, ip: std::net::IpAddr) {
        if !ip.is_unspecified() {
            self.addrs.insert(canonical_ip(ip));
        }
    }

    fn add_name(&mut self, name: &str) {
        self.names
            .insert(name.trim_end_matches('.').to_ascii_lowercase());
    }

    fn contains(&self, host: &url::Host<&str>) -> bool {
        match host {
            url::Host::Domain(d) => self
                .names
                .contains(&d.trim_end_matches('.').to_ascii_lowercase()),
            url::Host::Ipv4(ip) => self.addrs.contains(&canonical_ip((*ip).into())),
            url::Host::Ipv6(ip) => self.addrs.contains(&canonical_ip((*ip).into())),
        }
    }
}

fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => crate::netguard::embedded_ipv4(&v6)
            .map(std::net::IpAddr::V4)
            .unwrap_or(ip),
        v4 => v4,
    }
}

/// Refuses links in validated content that point at this server itself (whatever port): a
/// click from the approval page would be a same-site request to it.
pub fn check_links(content: &ProposalContent, own: &OwnHosts) -> Result<(), ProposalError> {
    for slot in &content.credentials {
        if let Some(SetSlot {
            key,
            obtain: Some(url),
            ..
        }) = slot.writes()
            && let Ok(parsed) = url::Url::parse(url)
            && parsed.host().is_some_and(|h| own.contains(&h))
        {
            return Err(err(format!(
                "credential {key}: `obtain` must not point at this server's own host; give a link to a public https site"
            )));
        }
    }
    Ok(())
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), ProposalError> {
    if text.chars().count() > max {
        return Err(err(format!("{what} is longer than {max} characters")));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(err(format!("{what} contains control characters")));
    }
    // Bidirectional overrides and invisible characters can make the approval page show
    // something other than what the text says.
    if text.chars().any(is_invisible_format) {
        return Err(err(format!(
            "{what} contains invisible or text-direction characters"
        )));
    }
    Ok(())
}

/// Unicode format characters that hide or reorder text (the ones of category Cf that matter).
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// What the agent supplied with its slots, to be sealed apart from the content.
#[derive(Default)]
pub struct Supplied {
    /// Values by key.
    pub values: Vec<(CredentialKey, SecretString)>,
    /// Metadata by key (checked like any credential's metadata).
    pub metadata: Vec<(CredentialKey, BTreeMap<String, String>)>,
}

impl std::fmt::Debug for Supplied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let values: Vec<&str> = self.values.iter().map(|(k, _)| k.as_str()).collect();
        let metadata: Vec<&str> = self.metadata.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Supplied")
            .field("values", &values)
            .field("metadata", &metadata)
            .finish()
    }
}

/// Checks one set or rotate slot; returns it as stored, with what the agent supplied put
/// aside in `supplied`.
fn validate_slot(
    req: SlotRequest,
    state: &VaultState,
    supplied: &mut Supplied,
) -> Result<SetSlot, ProposalError> {
    let SlotRequest {
        key,
        description,
        obtain,
        obtain_instructions,
        value,
        ty,
        metadata,
    } = req;
    let key = CredentialKey::parse(&key).map_err(|e| err(e.to_string()))?;
    check_text(
        &format!("credential {key}: the description"),
        &description,
        MAX_DESCRIPTION,
    )?;
    let obtain = obtain.map(|url| check_url(&key, &url)).transpose()?;
    if let Some(text) = &obtain_instructions {
        check_text(
            &format!("credential {key}: the instructions"),
            text,
            MAX_INSTRUCTIONS,
        )?;
    }
    let named = ty
        .map(|name| {
            name.parse::<CredentialType>()
                .map_err(|e| err(format!("credential {key}: type: {e}")))
        })
        .transpose()?;
    // The type the value will be checked as; whether it fits the stored credential (and a
    // rotation has one to rotate) is [`plan`]'s check, so approval repeats it.
    let resolved = named
        .or_else(|| state.credentials.get(&key).map(|c| c.ty))
        .unwrap_or(CredentialType::ApiKey);
    let has_metadata = match metadata {
        Some(map) if !map.is_empty() => {
            credtype::validate_metadata(&map).map_err(|e| err(format!("credential {key}: {e}")))?;
            for (name, text) in &map {
                // Shown to the approver like any other agent text.
                check_text(
                    &format!("credential {key}: metadata.{name}"),
                    text,
                    credtype::MAX_METADATA_VALUE_BYTES,
                )?;
            }
            supplied.metadata.push((key.clone(), map));
            true
        }
        _ => false,
    };
    let has_value = match value {
        Some(v) if v.expose_secret().is_empty() => false,
        Some(v) => {
            if v.expose_secret().len() > MAX_VALUE {
                return Err(err(format!(
                    "credential {key}: the value is longer than {MAX_VALUE} bytes"
                )));
            }
            supplied.values.push((key.clone(), v));
            true
        }
        None => false,
    };
    Ok(SetSlot {
        key,
        description,
        obtain,
        obtain_instructions,
        has_value,
        ty: Some(resolved),
        has_metadata,
    })
}

/// Validates a request against the vault's current state. Returns the content to store and
/// what the agent supplied (values and metadata) to seal.
pub fn validate(
    req: ProposalRequest,
    state: &VaultState,
) -> Result<(ProposalContent, Supplied), ProposalError> {
    if req.services.is_empty() && req.credentials.is_empty() {
        return Err(err(
            "a proposal needs at least one service or credential change",
        ));
    }
    if req.services.len() > MAX_SERVICES {
        return Err(err(format!(
            "a proposal may change at most {MAX_SERVICES} services"
        )));
    }
    if req.credentials.len() > MAX_CREDENTIALS {
        return Err(err(format!(
            "a proposal may carry at most {MAX_CREDENTIALS} credential slots"
        )));
    }
    check_text("the message", &req.message, MAX_MESSAGE)?;

    let mut slots = Vec::new();
    let mut supplied = Supplied::default();
    let mut seen = BTreeSet::new();
    for slot in req.credentials {
        let slot = match slot {
            CredentialSlotRequest::Set(req) => {
                CredentialSlot::Set(validate_slot(req, state, &mut supplied)?)
            }
            CredentialSlotRequest::Rotate(req) => {
                CredentialSlot::Rotate(validate_slot(req, state, &mut supplied)?)
            }
            CredentialSlotRequest::Delete { key } => {
                let key = CredentialKey::parse(&key).map_err(|e| err(e.to_string()))?;
                if !state.keys.contains(&key) {
                    return Err(err(format!(
                        "credential {key} cannot be deleted: it does not exist in this vault"
                    )));
                }
                CredentialSlot::Delete { key }
            }
        };
        let key = slot.key().clone();
        if !seen.insert(key.clone()) {
            return Err(err(format!("credential {key} appears more than once")));
        }
        slots.push(slot);
    }

    let mut services = Vec::new();
    let mut names = BTreeSet::new();
    for change in req.services {
        let change = match change {
            ServiceChange::Set(spec) => {
                let spec = spec.normalized();
                spec.compile().map_err(|e| err(e.to_string()))?;
                ServiceChange::Set(spec)
            }
            ServiceChange::Delete { name } => {
                if !state.services.iter().any(|s| s.name == name) {
                    return Err(err(format!(
                        "service {name:?} cannot be deleted: it does not exist in this vault"
                    )));
                }
                ServiceChange::Delete { name }
            }
        };
        let name = match &change {
            ServiceChange::Set(s) => s.name.clone(),
            ServiceChange::Delete { name } => name.clone(),
        };
        if !names.insert(name.clone()) {
            return Err(err(format!("service {name:?} appears more than once")));
        }
        services.push(change);
    }
    let content = ProposalContent {
        message: req.message,
        services,
        credentials: slots,
    };
    // The vault as it would be after approval must be consistent: every referenced key exists.
    plan(&content, state)?;
    Ok((content, supplied))
}

/// What applying a proposal does to the vault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyPlan {
    /// The vault's complete service list afterwards.
    pub services: Vec<ServiceSpec>,
    /// Keys to set or rotate (values from the approver, else the agent), with the type each
    /// value is checked as.
    pub set_keys: Vec<CredentialKey>,
    /// The type of every key set or rotated.
    pub types: BTreeMap<CredentialKey, CredentialType>,
    /// Keys that must already exist when written (rotations).
    pub rotate_keys: BTreeSet<CredentialKey>,
    /// Keys to delete.
    pub delete_keys: Vec<CredentialKey>,
}

/// Refuses a set or rotate slot that does not fit the stored credential: another type, a
/// revoked credential, or a rotation of a key the vault does not hold.
fn check_slot_fits(
    slot: &SetSlot,
    rotate: bool,
    state: &VaultState,
) -> Result<CredentialType, ProposalError> {
    let key = &slot.key;
    let stored = state.credentials.get(key).copied().or_else(|| {
        // States built without credential details (older callers) know only the keys.
        state.keys.contains(key).then_some(StoredCredential {
            ty: slot.ty.unwrap_or(CredentialType::ApiKey),
            revoked: false,
        })
    });
    match stored {
        None if rotate => Err(err(format!(
            "credential {key} cannot be rotated: it does not exist in this vault (use action set to create it)"
        ))),
        None => Ok(slot.ty.unwrap_or(CredentialType::ApiKey)),
        Some(c) if c.revoked => Err(err(format!(
            "credential {key} is revoked; it cannot be {} (delete it to reuse the key)",
            if rotate { "rotated" } else { "set" }
        ))),
        Some(c) => match slot.ty {
            Some(ty) if ty != c.ty => Err(err(format!(
                "credential {key} is of type {}; this proposal gives it type {ty} (a proposal cannot change a credential's type; delete the credential first)",
                c.ty
            ))),
            _ => Ok(c.ty),
        },
    }
}

/// Computes the result of applying `content` to `state`, checking it exactly as a direct edit.
pub fn plan(content: &ProposalContent, state: &VaultState) -> Result<ApplyPlan, ProposalError> {
    let mut services = state.services.clone();
    for change in &content.services {
        match change {
            ServiceChange::Set(spec) => match services.iter_mut().find(|s| s.name == spec.name) {
                Some(existing) => *existing = spec.clone(),
                None => services.push(spec.clone()),
            },
            ServiceChange::Delete { name } => services.retain(|s| &s.name != name),
        }
    }
    let mut keys = state.keys.clone();
    let mut set_keys = Vec::new();
    let mut types = BTreeMap::new();
    let mut rotate_keys = BTreeSet::new();
    let mut delete_keys = Vec::new();
    for slot in &content.credentials {
        match slot {
            CredentialSlot::Set(s) | CredentialSlot::Rotate(s) => {
                let rotate = matches!(slot, CredentialSlot::Rotate(_));
                let ty = check_slot_fits(s, rotate, state)?;
                keys.insert(s.key.clone());
                set_keys.push(s.key.clone());
                types.insert(s.key.clone(), ty);
                if rotate {
                    rotate_keys.insert(s.key.clone());
                }
            }
            CredentialSlot::Delete { key } => {
                keys.remove(key);
                delete_keys.push(key.clone());
            }
        }
    }
    validate_services(&services, &keys).map_err(|e| err(e.to_string()))?;
    Ok(ApplyPlan {
        services,
        set_keys,
        types,
        rotate_keys,
        delete_keys,
    })
}

/// The hash of the content, plus the vault state it was shown against.
pub fn approval_hash(content: &ProposalContent, state: &VaultState) -> String {
    let mut h = Sha256::new();
    h.update(content_hash(content).as_bytes());
    h.update(b"\n");
    h.update(state.fingerprint().as_bytes());
    hex::encode(h.finalize())
}

/// The hash of the content alone (stored with the proposal).
pub fn content_hash(content: &ProposalContent) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(content).unwrap_or_default(),
    ))
}

/// Whether approving needs the admin role (service changes do; credential-only needs member).
pub fn needs_admin(content: &ProposalContent) -> bool {
    !content.services.is_empty()
}

/// Set slots without an agent-supplied value: the approver must supply these.
pub fn missing_values(content: &ProposalContent) -> Vec<CredentialKey> {
    content
        .credentials
        .iter()
        .filter_map(|s| match s.writes() {
            Some(SetSlot {
                key,
                has_value: false,
                ..
            }) => Some(key.clone()),
            _ => None,
        })
        .collect()
}

/// How serious a flagged change is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Reads like a host the vault already trusts: the classic way to phish a credential.
    High,
    /// Could send an existing secret somewhere new, or widen access.
    Warning,
    /// Worth knowing.
    Notice,
}

/// A flagged change, for the approver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Risk {
    /// How serious.
    pub severity: Severity,
    /// What, in one sentence.
    pub text: String,
    /// Whether approving needs the approver to acknowledge this risk explicitly (by `id`).
    pub needs_acknowledgement: bool,
    /// A stable name for the risk (kind and service), for acknowledging it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Risk {
    fn new(severity: Severity, text: String) -> Self {
        Self {
            severity,
            text,
            needs_acknowledgement: false,
            id: None,
        }
    }

    fn acknowledged_as(severity: Severity, id: String, text: String) -> Self {
        Self {
            severity,
            text,
            needs_acknowledgement: true,
            id: Some(id),
        }
    }
}

/// What an approver explicitly acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Acknowledgement {
    /// Nothing.
    #[default]
    Nothing,
    /// Every risk shown (an API caller's `"acknowledge_risks": true`).
    All,
    /// These risk ids (the ticked boxes, or an API caller's list).
    Ids(BTreeSet<String>),
}

/// The risks that need an acknowledgement `ack` does not give.
pub fn unacknowledged<'a>(risks: &'a [Risk], ack: &Acknowledgement) -> Vec<&'a Risk> {
    risks
        .iter()
        .filter(|r| r.needs_acknowledgement)
        .filter(|r| match (ack, &r.id) {
            (Acknowledgement::All, _) => false,
            (Acknowledgement::Ids(ids), Some(id)) => !ids.contains(id),
            _ => true,
        })
        .collect()
}

/// Canonical (A-label) hosts of the services that attach `key`.
fn hosts_using(services: &[ServiceSpec], key: &CredentialKey) -> BTreeSet<String> {
    services
        .iter()
        .filter(|s| {
            s.compile()
                .map(|c| c.referenced_keys().contains(key))
                .unwrap_or(false)
        })
        .map(|s| HostForms::of(&s.host).ascii)
        .collect()
}

/// Look-alike risks of one proposed host: confusable characters or mixed scripts in its Unicode
/// form, and a skeleton equal to a host the vault already binds.
fn lookalike_risks(spec: &ServiceSpec, state: &VaultState, out: &mut Vec<Risk>) {
    let forms = HostForms::of(&spec.host);
    let found = confusable::confusables(&forms);
    if !found.is_empty() {
        let mut why = Vec::new();
        if !found.mixed_script_labels.is_empty() {
            why.push(format!(
                "mixes scripts in {}",
                found
                    .mixed_script_labels
                    .iter()
                    .map(|l| format!("{l:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !found.confusable_chars.is_empty() {
            why.push(format!(
                "has characters that look like letters of other scripts: {}",
                found
                    .confusable_chars
                    .iter()
                    .map(|c| confusable::describe_char(*c))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.push(Risk::acknowledged_as(
            Severity::Warning,
            format!("confusable-host:{}", spec.name),
            format!(
                "service {:?} binds {}: the name {}; make sure this is the host you mean",
                spec.name,
                forms.describe(),
                why.join(" and ")
            ),
        ));
    }
    let existing: Vec<(&str, HostForms)> = state
        .services
        .iter()
        .map(|s| (s.name.as_str(), HostForms::of(&s.host)))
        .collect();
    if let Some((name, other)) = confusable::lookalike_of(&forms, &existing) {
        out.push(Risk::acknowledged_as(
            Severity::High,
            format!("lookalike-host:{}", spec.name),
            format!(
                "service {:?} binds {}, which looks like {} that service {name:?} already binds (their UTS #39 skeletons are equal): a look-alike of a host this vault trusts",
                spec.name,
                forms.describe(),
                other.describe()
            ),
        ));
    }
}

/// Flags what an approver should look at twice.
pub fn risks(content: &ProposalContent, state: &VaultState) -> Vec<Risk> {
    let mut out = Vec::new();
    let warn = |text: String| Risk::new(Severity::Warning, text);
    let current: BTreeMap<&str, &ServiceSpec> = state
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    for change in &content.services {
        match change {
            ServiceChange::Set(spec) => {
                let forms = HostForms::of(&spec.host);
                lookalike_risks(spec, state, &mut out);
                if spec.host.starts_with("*.") {
                    out.push(warn(format!("service {:?} uses the wildcard host {}: every subdomain gets its credentials", spec.name, forms.describe())));
                }
                if let Some(old) = current.get(spec.name.as_str()) {
                    let was = HostForms::of(&old.host);
                    if was.ascii != forms.ascii {
                        out.push(warn(format!(
                            "service {:?} changes its host from {} to {}",
                            spec.name,
                            was.describe(),
                            forms.describe()
                        )));
                    }
                    if old.auth != spec.auth || old.substitutions != spec.substitutions {
                        out.push(warn(format!(
                            "service {:?} changes how credentials are attached",
                            spec.name
                        )));
                    }
                }
                if let Ok(compiled) = spec.compile() {
                    for key in compiled.referenced_keys() {
                        if !state.keys.contains(&key) {
                            continue;
                        }
                        let before = hosts_using(&state.services, &key);
                        if !before.contains(&forms.ascii) {
                            let was = if before.is_empty() {
                                "no host".to_owned()
                            } else {
                                before.into_iter().collect::<Vec<_>>().join(", ")
                            };
                            out.push(warn(format!(
                                "the existing credential {key} would be sent to {} (today it goes to {was})",
                                forms.describe()
                            )));
                        }
                    }
                }
            }
            ServiceChange::Delete { name } => out.push(Risk::new(
                Severity::Notice,
                format!("service {name:?} will be removed"),
            )),
        }
    }
    for slot in &content.credentials {
        match slot {
            CredentialSlot::Set(SetSlot {
                key,
                has_value: true,
                ..
            }) if state.keys.contains(key) => {
                out.push(warn(format!("the agent supplied a value for the existing credential {key}; approving replaces it unless you enter one")));
            }
            CredentialSlot::Set(SetSlot { key, .. }) if state.keys.contains(key) => {
                out.push(Risk::new(
                    Severity::Notice,
                    format!("credential {key} already exists; the value you enter replaces it"),
                ));
            }
            CredentialSlot::Rotate(SetSlot { key, has_value, .. }) => {
                let source = if *has_value {
                    "the value the agent supplied (unless you enter one)"
                } else {
                    "the value you enter"
                };
                out.push(warn(format!("credential {key} will be rotated: {source} becomes its active version from the next request on, and the current one is kept as rotated")));
            }
            CredentialSlot::Delete { key } => out.push(Risk::new(
                Severity::Notice,
                format!("credential {key} will be deleted"),
            )),
            CredentialSlot::Set(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::service::parse_service_file;

    fn key(k: &str) -> CredentialKey {
        CredentialKey::parse(k).unwrap()
    }

    fn stored(ty: CredentialType, revoked: bool) -> StoredCredential {
        StoredCredential { ty, revoked }
    }

    fn state() -> VaultState {
        VaultState {
            services: parse_service_file("- name: stripe\n  host: api.stripe.com\n  auth: {type: bearer, token: STRIPE_KEY}\n")
                .unwrap()
                .into_iter()
                .map(ServiceSpec::normalized)
                .collect(),
            keys: [key("STRIPE_KEY"), key("OLD")].into_iter().collect(),
            credentials: [
                (key("STRIPE_KEY"), stored(CredentialType::ApiKey, false)),
                (key("OLD"), stored(CredentialType::ApiKey, false)),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn request(json: serde_json::Value) -> ProposalRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_new_service_with_its_credential_validates() {
        let (content, values) = validate(
            request(serde_json::json!({
                "message": "I need GitHub",
                "services": [{"action": "set", "name": "gh", "host": "api.github.com", "auth": {"type": "bearer", "token": "GH_TOKEN"}}],
                "credentials": [{"action": "set", "key": "GH_TOKEN", "description": "repo access", "obtain": "https://github.com/settings/tokens", "value": "ghp_agent"}]
            })),
            &state(),
        )
        .unwrap();
        assert_eq!(values.values.len(), 1);
        assert_eq!(missing_values(&content), vec![]);
        assert!(needs_admin(&content));
        let stored = serde_json::to_string(&content).unwrap();
        assert!(
            !stored.contains("ghp_agent"),
            "values are never part of the content"
        );
        let plan = plan(&content, &state()).unwrap();
        assert_eq!(plan.services.len(), 2);
    }

    fn obtain(url: &str) -> Result<ProposalContent, ProposalError> {
        validate(
            request(
                serde_json::json!({"credentials": [{"action": "set", "key": "K", "obtain": url}]}),
            ),
            &state(),
        )
        .map(|(content, _)| content)
    }

    #[test]
    fn obtain_links_must_be_public_https() {
        for url in [
            "http://github.com/settings/tokens",
            "https://127.0.0.1:8080/",
            "https://2130706433/",
            "https://0x7f.1/",
            "https://0177.0.0.1/",
            "https://127.1/",
            "https://0/",
            "https://[::]/",
            "https://[::1]/",
            "https://[::ffff:7f00:1]/",
            "https://[64:ff9b::7f00:1]/",
            "https://localhost/",
            "https://Localhost./",
            "https://a.b.localhost:8443/",
            "https://10.0.0.1/",
            "https://192.168.0.1/",
            "https://[fd12::1]/",
            "https://169.254.169.254/",
            "https://[fe80::1]/",
            "https://github.com@127.0.0.1/",
            "https://user:pw@github.com/",
            "javascript:alert(1)",
            "data:text/html,x",
        ] {
            let e = obtain(url).unwrap_err();
            assert!(e.0.contains("credential K: `obtain`"), "{url}: {e}");
            assert!(
                !e.0.contains(url),
                "the message does not echo the link: {e}"
            );
        }
        assert!(obtain("https://github.com/settings/tokens?x=1").is_ok());
        // Stored as parsed: A-label host, no text-direction or invisible characters.
        let stored = obtain("https://GitHub.com/\u{202E}txt.exe?q=a b").unwrap();
        let CredentialSlot::Set(SetSlot {
            obtain: Some(url), ..
        }) = &stored.credentials[0]
        else {
            panic!("a set slot with its link");
        };
        assert_eq!(url, "https://github.com/%E2%80%AEtxt.exe?q=a%20b");
        let idn = obtain("https://straße.example/").unwrap();
        assert!(
            serde_json::to_string(&idn)
                .unwrap()
                .contains("https://xn--strae-oqa.example/")
        );
        assert!(obtain("https://[2606:4700:4700::1111]/").is_ok());
    }

    #[test]
    fn obtain_links_to_this_server_are_refused() {
        let mut own = OwnHosts::default();
        own.add_url("https://Vault.Corp.example/");
        own.add_host("av.intranet.example:8443");
        own.add_addr("203.0.113.7".parse().unwrap());
        own.add_addr("0.0.0.0".parse().unwrap());
        for url in [
            "https://vault.corp.example/approve",
            "https://VAULT.corp.example.:444/",
            "https://av.intranet.example/",
            "https://203.0.113.7:9000/",
            "https://[::ffff:203.0.113.7]/",
        ] {
            let content = ProposalContent {
                credentials: vec![CredentialSlot::Set(SetSlot {
                    key: key("K"),
                    description: String::new(),
                    obtain: Some(url.into()),
                    obtain_instructions: None,
                    has_value: false,
                    ty: None,
                    has_metadata: false,
                })],
                message: String::new(),
                services: Vec::new(),
            };
            let e = check_links(&content, &own).unwrap_err();
            assert!(e.0.contains("own host"), "{url}: {e}");
        }
        let fine = obtain("https://github.com/settings/tokens").unwrap();
        assert!(check_links(&fine, &own).is_ok());
    }

    #[test]
    fn obtain_instructions_is_the_field_name_and_instructions_an_alias() {
        for field in ["obtain_instructions", "instructions"] {
            let (content, _) = validate(
                request(serde_json::json!({"credentials": [{"action": "set", "key": "K", field: "Settings > Tokens"}]})),
                &state(),
            )
            .unwrap();
            let CredentialSlot::Set(SetSlot {
                obtain_instructions,
                ..
            }) = &content.credentials[0]
            else {
                panic!("a set slot");
            };
            assert_eq!(obtain_instructions.as_deref(), Some("Settings > Tokens"));
            // Shown and stored under the reference product's name.
            let shown = serde_json::to_value(&content).unwrap();
            assert_eq!(
                shown["credentials"][0]["obtain_instructions"],
                "Settings > Tokens"
            );
            assert!(shown["credentials"][0].get("instructions").is_none());
        }
        // Content stored by earlier versions (`instructions`) still loads.
        let old: ProposalContent = serde_json::from_value(serde_json::json!({
            "message": "", "services": [],
            "credentials": [{"action": "set", "key": "K", "description": "", "obtain": null, "instructions": "old", "has_value": false}]
        }))
        .unwrap();
        assert!(matches!(
            &old.credentials[0],
            CredentialSlot::Set(SetSlot { obtain_instructions: Some(t), .. }) if t == "old"
        ));
        // Both names at once is ambiguous and refused.
        let both: Result<ProposalRequest, _> = serde_json::from_value(serde_json::json!({
            "credentials": [{"action": "set", "key": "K", "instructions": "a", "obtain_instructions": "b"}]
        }));
        assert!(both.is_err());
    }

    fn typed_state() -> VaultState {
        let mut s = state();
        s.keys.insert(key("DB_PASS"));
        s.keys.insert(key("GONE"));
        s.credentials
            .insert(key("DB_PASS"), stored(CredentialType::Password, false));
        s.credentials
            .insert(key("GONE"), stored(CredentialType::ApiKey, true));
        s
    }

    fn slot_type(content: &ProposalContent) -> Option<CredentialType> {
        content.credentials[0].writes().and_then(|s| s.ty)
    }

    #[test]
    fn a_slot_takes_its_named_type_else_the_stored_one_else_api_key() {
        let typed = |slot: serde_json::Value| {
            validate(
                request(serde_json::json!({ "credentials": [slot] })),
                &typed_state(),
            )
        };
        let new = typed(serde_json::json!({"action": "set", "key": "NEW"})).unwrap();
        assert_eq!(slot_type(&new.0), Some(CredentialType::ApiKey));
        let named =
            typed(serde_json::json!({"action": "set", "key": "NEW", "type": "certificate"}))
                .unwrap();
        assert_eq!(slot_type(&named.0), Some(CredentialType::Certificate));
        let existing = typed(serde_json::json!({"action": "set", "key": "DB_PASS"})).unwrap();
        assert_eq!(slot_type(&existing.0), Some(CredentialType::Password));
        let shown = serde_json::to_value(&existing.0).unwrap();
        assert_eq!(shown["credentials"][0]["type"], "password");

        let e = typed(serde_json::json!({"action": "set", "key": "DB_PASS", "type": "token"}))
            .unwrap_err();
        assert!(
            e.0.contains("DB_PASS is of type password; this proposal gives it type token"),
            "{e}"
        );
        let e = typed(serde_json::json!({"action": "set", "key": "NEW", "type": "pgp_key"}))
            .unwrap_err();
        assert!(
            e.0.starts_with("credential NEW: type: unknown credential type \"pgp_key\"")
                && e.0.contains("ssh_key"),
            "{e}"
        );
        let e = typed(serde_json::json!({"action": "set", "key": "GONE"})).unwrap_err();
        assert!(e.0.contains("GONE is revoked"), "{e}");
    }

    #[test]
    fn rotate_needs_an_existing_credential_that_is_not_revoked() {
        let rotate = |k: &str, state: &VaultState| {
            validate(
                request(
                    serde_json::json!({ "credentials": [{"action": "rotate", "key": k, "value": "new"}] }),
                ),
                state,
            )
        };
        let e = rotate("MISSING", &typed_state()).unwrap_err();
        assert!(
            e.0.contains("MISSING cannot be rotated: it does not exist"),
            "{e}"
        );
        let e = rotate("GONE", &typed_state()).unwrap_err();
        assert!(e.0.contains("GONE is revoked; it cannot be rotated"), "{e}");

        let (content, supplied) = rotate("DB_PASS", &typed_state()).unwrap();
        assert_eq!(content.credentials[0].action(), "rotate");
        assert_eq!(slot_type(&content), Some(CredentialType::Password));
        assert_eq!(supplied.values.len(), 1);
        let shown = serde_json::to_value(&content).unwrap();
        assert_eq!(shown["credentials"][0]["action"], "rotate");
        let p = plan(&content, &typed_state()).unwrap();
        assert!(p.rotate_keys.contains(&key("DB_PASS")));
        assert_eq!(p.types[&key("DB_PASS")], CredentialType::Password);
        let risks = risks(&content, &typed_state());
        assert!(
            risks
                .iter()
                .any(|r| r.text.contains("DB_PASS will be rotated")),
            "{risks:?}"
        );
        // Revoked or deleted after the proposal was raised: it no longer applies.
        let mut later = typed_state();
        later.credentials.get_mut(&key("DB_PASS")).unwrap().revoked = true;
        assert!(plan(&content, &later).unwrap_err().0.contains("revoked"));
        later.credentials.remove(&key("DB_PASS"));
        later.keys.remove(&key("DB_PASS"));
        assert!(
            plan(&content, &later)
                .unwrap_err()
                .0
                .contains("does not exist")
        );
    }

    #[test]
    fn slot_metadata_is_checked_and_kept_out_of_the_content() {
        let with = |metadata: serde_json::Value| {
            validate(
                request(
                    serde_json::json!({ "credentials": [{"action": "set", "key": "NEW", "type": "password", "metadata": metadata}] }),
                ),
                &typed_state(),
            )
        };
        let (content, supplied) =
            with(serde_json::json!({"username": "svc-billing", "team": "pay"})).unwrap();
        let stored = serde_json::to_string(&content).unwrap();
        assert!(!stored.contains("svc-billing"), "{stored}");
        assert!(stored.contains("\"has_metadata\":true"), "{stored}");
        assert_eq!(supplied.metadata[0].1["username"], "svc-billing");
        assert!(!format!("{supplied:?}").contains("svc-billing"));

        let e = with(serde_json::json!({"Bad Key": "x"})).unwrap_err();
        assert!(
            e.0.contains("credential NEW: metadata key \"Bad Key\""),
            "{e}"
        );
        let e = with(serde_json::json!({"note": "x".repeat(300)})).unwrap_err();
        assert!(e.0.contains("metadata.note"), "{e}");
        let e = with(serde_json::json!({"note": "approve\u{202E}gnp"})).unwrap_err();
        assert!(e.0.contains("metadata.note contains invisible"), "{e}");
        let many: serde_json::Map<String, serde_json::Value> = (0..33)
            .map(|i| (format!("k{i}"), serde_json::json!("v")))
            .collect();
        let e = with(serde_json::Value::Object(many)).unwrap_err();
        assert!(e.0.contains("at most 32 entries"), "{e}");
    }

    #[test]
    fn content_stored_before_types_loads_and_hashes_as_before() {
        let old = serde_json::json!({
            "message": "", "services": [],
            "credentials": [{"action": "set", "key": "K", "description": "", "obtain": null, "obtain_instructions": null, "has_value": false}]
        });
        let content: ProposalContent = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(slot_type(&content), None);
        // Serialized exactly as before, so its stored hash still matches.
        assert_eq!(serde_json::to_value(&content).unwrap(), old);
        let p = plan(&content, &state()).unwrap();
        assert_eq!(p.types[&key("K")], CredentialType::ApiKey);
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let cases = [
            (serde_json::json!({}), "at least one"),
            (
                serde_json::json!({"services": [{"action": "set", "host": "api.x.com", "auth": {"type": "bearer", "token": "NOPE"}}]}),
                "NOPE",
            ),
            (
                serde_json::json!({"services": [{"action": "delete", "name": "ghost"}]}),
                "ghost",
            ),
            (
                serde_json::json!({"credentials": [{"action": "set", "key": "lower"}]}),
                "invalid credential key",
            ),
            (
                serde_json::json!({"credentials": [{"action": "set", "key": "A", "obtain": "javascript:alert(1)"}]}),
                "obtain",
            ),
            (
                serde_json::json!({"credentials": [{"action": "delete", "key": "MISSING"}]}),
                "MISSING",
            ),
            (
                serde_json::json!({"credentials": [{"action": "set", "key": "A"}, {"action": "set", "key": "A"}]}),
                "more than once",
            ),
            (
                serde_json::json!({"credentials": [{"action": "delete", "key": "STRIPE_KEY"}]}),
                "STRIPE_KEY",
            ),
            (
                serde_json::json!({"message": "x".repeat(MAX_MESSAGE + 1), "credentials": [{"action": "set", "key": "A"}]}),
                "message",
            ),
            (
                serde_json::json!({"services": [{"action": "set", "host": "10.0.0.1", "auth": {"type": "passthrough"}}]}),
                "IP",
            ),
        ];
        for (json, needle) in cases {
            let e = validate(request(json.clone()), &state()).unwrap_err();
            assert!(e.0.contains(needle), "{json}: {e}");
        }
        let hidden = validate(
            request(
                serde_json::json!({"message": "approve\u{202E}gnp.exe", "credentials": [{"action": "set", "key": "A"}]}),
            ),
            &state(),
        );
        assert!(hidden.unwrap_err().0.contains("invisible"));
        let many: Vec<_> = (0..=MAX_CREDENTIALS)
            .map(|i| serde_json::json!({"action": "set", "key": format!("K{i}")}))
            .collect();
        assert!(
            validate(
                request(serde_json::json!({ "credentials": many })),
                &state()
            )
            .is_err()
        );
    }

    #[test]
    fn rebinding_an_existing_credential_is_flagged() {
        let (content, _) = validate(
            request(serde_json::json!({
                "services": [{"action": "set", "name": "exfil", "host": "*.attacker.example", "auth": {"type": "bearer", "token": "STRIPE_KEY"}}]
            })),
            &state(),
        )
        .unwrap();
        let risks = risks(&content, &state());
        assert!(
            risks.iter().any(|r| r
                .text
                .contains("existing credential STRIPE_KEY would be sent to *.attacker.example")),
            "{risks:?}"
        );
        assert!(
            risks.iter().any(|r| r.text.contains("wildcard")),
            "{risks:?}"
        );
        let (moved, _) = validate(
            request(serde_json::json!({
                "services": [{"action": "set", "name": "stripe", "host": "api.stripe.evil.example", "auth": {"type": "bearer", "token": "STRIPE_KEY"}}]
            })),
            &state(),
        )
        .unwrap();
        let risks = super::risks(&moved, &state());
        assert!(
            risks.iter().any(|r| r.text.contains("changes its host")),
            "{risks:?}"
        );
    }

    #[test]
    fn approval_hash_covers_content_and_state() {
        let (content, _) = validate(
            request(serde_json::json!({"credentials": [{"action": "set", "key": "NEW"}]})),
            &state(),
        )
        .unwrap();
        let h1 = approval_hash(&content, &state());
        let mut other = state();
        other.keys.insert(key("ANOTHER"));
        assert_ne!(h1, approval_hash(&content, &other));
        let mut edited = content.clone();
        edited.message = "changed".into();
        assert_ne!(h1, approval_hash(&edited, &state()));
        assert_eq!(h1, approval_hash(&content, &state()));
    }

    fn rebind(host: &str) -> ProposalContent {
        validate(
            request(serde_json::json!({
                "services": [{"action": "set", "name": "stripe-v2", "host": host, "auth": {"type": "bearer", "token": "STRIPE_KEY"}}]
            })),
            &state(),
        )
        .unwrap()
        .0
    }

    #[test]
    fn cyrillic_lookalike_host_needs_acknowledgement_and_shows_its_a_label() {
        let host = "api.str\u{0456}pe.com";
        let ascii = idna::domain_to_ascii(host).unwrap();
        let risks = risks(&rebind(host), &state());
        let flagged: Vec<_> = risks.iter().filter(|r| r.needs_acknowledgement).collect();
        let confusable = flagged
            .iter()
            .find(|r| r.id.as_deref() == Some("confusable-host:stripe-v2"))
            .unwrap_or_else(|| panic!("{risks:?}"));
        assert!(confusable.text.contains(&ascii), "{confusable:?}");
        assert!(confusable.text.contains(host), "{confusable:?}");
        assert!(
            confusable.text.contains("U+0456 (Cyrillic)"),
            "{confusable:?}"
        );
        assert!(confusable.text.contains("mixes scripts"), "{confusable:?}");
        // It also reads as the host the vault binds today.
        assert!(
            flagged.iter().any(|r| r.severity == Severity::High
                && r.id.as_deref() == Some("lookalike-host:stripe-v2")
                && r.text.contains("api.stripe.com")),
            "{risks:?}"
        );
        // The other risk texts name the A-label, never only the Unicode form.
        let rebound = risks
            .iter()
            .find(|r| r.text.contains("existing credential STRIPE_KEY"))
            .unwrap();
        assert!(rebound.text.contains(&ascii), "{rebound:?}");
        // The stored A-label spelling is flagged the same way.
        let again = super::risks(&rebind(&ascii), &state());
        assert_eq!(
            again.iter().filter(|r| r.needs_acknowledgement).count(),
            flagged.len()
        );
    }

    #[test]
    fn ascii_lookalike_of_an_existing_binding_is_high_risk() {
        let risks = risks(&rebind("api.stripe.corn"), &state());
        let hit: Vec<_> = risks.iter().filter(|r| r.needs_acknowledgement).collect();
        assert_eq!(hit.len(), 1, "{risks:?}");
        assert_eq!(hit[0].severity, Severity::High);
        assert!(hit[0].text.contains("api.stripe.corn") && hit[0].text.contains("api.stripe.com"));
        // Plain new hosts and the same host in another spelling need no acknowledgement.
        for host in ["api.github.com", "API.STRIPE.COM", "b\u{00FC}cher.example"] {
            let r = super::risks(&rebind(host), &state());
            assert!(r.iter().all(|r| !r.needs_acknowledgement), "{host}: {r:?}");
        }
    }

    #[test]
    fn acknowledgements_cover_risks_by_id_or_all() {
        let risks = risks(&rebind("api.str\u{0456}pe.com"), &state());
        let ids: BTreeSet<String> = risks.iter().filter_map(|r| r.id.clone()).collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(unacknowledged(&risks, &Acknowledgement::Nothing).len(), 2);
        assert!(unacknowledged(&risks, &Acknowledgement::All).is_empty());
        assert!(unacknowledged(&risks, &Acknowledgement::Ids(ids.clone())).is_empty());
        let one: BTreeSet<String> = ids.iter().take(1).cloned().collect();
        assert_eq!(unacknowledged(&risks, &Acknowledgement::Ids(one)).len(), 1);
        // Risks that need no acknowledgement never block.
        let plain = super::risks(&rebind("api.github.com"), &state());
        assert!(!plain.is_empty());
        assert!(unacknowledged(&plain, &Acknowledgement::Nothing).is_empty());
    }
}
