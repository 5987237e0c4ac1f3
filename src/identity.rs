//! Who is calling: raw bearer tokens resolved to principals with their vault grants. Shared by
//! the admin API (always fresh from the store) and the proxy (from a short-lived in-memory
//! cache, so revocation on another instance takes effect within `tokens.cache_ttl`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;

use crate::crypto::{TokenHash, TokenHasher, TokenKind};
use crate::domain::{
    Actor, AgentName, Email, InstanceRole, PrincipalKind, TokenStoreKind, VaultRole, now_ms,
};
use crate::store::{Store, StoreError, TokenRecord};

/// Why a token was not accepted. The variants are for logs and tests; callers show one generic
/// message so that a guesser learns nothing.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token, or not in any token format this server issues.
    #[error("malformed token")]
    Malformed,
    /// Well-formed but unknown.
    #[error("unknown token")]
    Unknown,
    /// Past its expiry.
    #[error("expired token")]
    Expired,
    /// Revoked.
    #[error("revoked token")]
    Revoked,
    /// The token's owner no longer exists.
    #[error("token owner no longer exists")]
    Orphaned,
    /// The stored kind disagrees with the token's prefix (a tampered row).
    #[error("token kind does not match its record")]
    KindMismatch,
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whom a scoped token was minted by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Minter {
    /// A human.
    User(String),
    /// An agent.
    Agent(String),
}

/// An authenticated principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A human with a login session.
    User {
        /// User id.
        id: String,
        /// Email.
        email: Email,
        /// Instance role.
        role: InstanceRole,
    },
    /// An agent holding its own token.
    Agent {
        /// Agent id.
        id: String,
        /// Agent name.
        name: AgentName,
    },
    /// A short-lived token bound to one vault with one role.
    Scoped {
        /// The vault it works in.
        vault_id: String,
        /// Its role there.
        role: VaultRole,
        /// Who minted it.
        minted_by: Minter,
    },
}

/// A verified token and what it may do.
#[derive(Clone, Debug)]
pub struct Authenticated {
    /// The token's public id.
    pub token_id: String,
    /// Its keyed hash (for re-checking on open connections).
    pub token_hash: TokenHash,
    /// Who it is.
    pub principal: Principal,
    /// Vault id → role, for users and agents (explicit grants only; owners are implicit admins).
    pub grants: HashMap<String, VaultRole>,
    /// Expiry (ms).
    pub expires_at: Option<i64>,
}

impl Authenticated {
    /// The principal's role in a vault, if any. Owners are admins everywhere.
    pub fn role_in(&self, vault_id: &str) -> Option<VaultRole> {
        match &self.principal {
            Principal::User {
                role: InstanceRole::Owner,
                ..
            } => Some(VaultRole::Admin),
            Principal::Scoped {
                vault_id: v, role, ..
            } => (v == vault_id).then_some(*role),
            _ => self.grants.get(vault_id).copied(),
        }
    }

    /// Who this is for logs, audit rows, proposals and per-agent limits; a scoped token is
    /// attributed to the agent that minted it, or else to the token itself.
    pub fn actor(&self) -> Actor {
        match &self.principal {
            Principal::User { id, .. } => Actor::User(id.clone()),
            Principal::Agent { id, .. }
            | Principal::Scoped {
                minted_by: Minter::Agent(id),
                ..
            } => Actor::Agent(id.clone()),
            Principal::Scoped { .. } => Actor::ScopedToken(self.token_id.clone()),
        }
    }

    /// Whether this is a human.
    pub fn is_user(&self) -> bool {
        matches!(self.principal, Principal::User { .. })
    }

    /// Whether the instance owner.
    pub fn is_owner(&self) -> bool {
        matches!(
            self.principal,
            Principal::User {
                role: InstanceRole::Owner,
                ..
            }
        )
    }

    /// Still usable at `now` (expiry only; revocation needs the store or the cache).
    pub fn unexpired(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

/// The kinds the admin API and the proxy accept as a bearer token. Not [`TokenKind::Web`]: a
/// browser sends the pages' cookie to every port of the host, so any local program could
/// receive it.
const BEARER_KINDS: [TokenKind; 3] = [TokenKind::Session, TokenKind::Agent, TokenKind::Scoped];

/// How a token kind is recorded in the tokens table (only kinds that resolve to a principal).
fn store_kind_of(kind: TokenKind) -> Option<TokenStoreKind> {
    match kind {
        TokenKind::Session => Some(TokenStoreKind::Session),
        TokenKind::Web => Some(TokenStoreKind::Web),
        TokenKind::Agent => Some(TokenStoreKind::Agent),
        TokenKind::Scoped => Some(TokenStoreKind::Scoped),
        TokenKind::Setup | TokenKind::Invite | TokenKind::Approval => None,
    }
}

#[derive(Clone)]
struct CacheEntry(Arc<Authenticated>);

/// Resolves tokens, caches results briefly, and tells open connections about revocations.
#[derive(Clone)]
pub struct Identity {
    store: Store,
    hasher: TokenHasher,
    // Set when the store's authority MACs come from it: a token row that fails them may be
    // keyed by an instance key another instance just rotated to, so it is adopted and the
    // lookup tried once more.
    keyring: Option<crate::keys::Keyring>,
    cache: moka::sync::Cache<TokenHash, CacheEntry>,
    revocations: Arc<watch::Sender<u64>>,
    /// The runtime the store's connections belong to. The proxy's workers run their own
    /// runtimes; a database connection one of them opened would die with it at shutdown,
    /// under the request log's last flush, so lookups from there run here.
    home: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    /// Builds the resolver; `cache_ttl` bounds how stale a proxy-side answer may be.
    pub fn new(store: Store, hasher: TokenHasher, cache_ttl: Duration) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(cache_ttl)
            .build();
        let (tx, _) = watch::channel(0);
        Self {
            store,
            hasher,
            keyring: None,
            cache,
            revocations: Arc::new(tx),
            home: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// This resolver, adopting a newer instance key from `keyring`'s store when a token row
    /// fails its MAC (see [`crate::rekey::adopt_newer`]).
    pub fn adopting(mut self, keyring: crate::keys::Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// The keyed hash of a raw token.
    pub fn hash(&self, raw: &SecretString) -> TokenHash {
        self.hasher.hash(raw)
    }

    /// Resolves a raw bearer token from the store (admin API path). Web sessions are refused.
    pub async fn authenticate_fresh(
        &self,
        raw: &SecretString,
    ) -> Result<Arc<Authenticated>, AuthError> {
        self.authenticate_fresh_as(raw, &BEARER_KINDS).await
    }

    /// Resolves a web pages' session cookie from the store: only the web kind is accepted.
    pub async fn authenticate_web(
        &self,
        raw: &SecretString,
    ) -> Result<Arc<Authenticated>, AuthError> {
        self.authenticate_fresh_as(raw, &[TokenKind::Web]).await
    }

    async fn authenticate_fresh_as(
        &self,
        raw: &SecretString,
        allowed: &[TokenKind],
    ) -> Result<Arc<Authenticated>, AuthError> {
        let (hash, kind) = self.check_format(raw, allowed)?;
        let resolved = Arc::new(self.resolve(hash, Some(kind)).await?);
        self.cache.insert(hash, CacheEntry(resolved.clone()));
        Ok(resolved)
    }

    /// Resolves a raw bearer token, from the cache when fresh enough (proxy path). Web sessions
    /// are refused.
    pub async fn authenticate_cached(
        &self,
        raw: &SecretString,
    ) -> Result<Arc<Authenticated>, AuthError> {
        let (hash, kind) = self.check_format(raw, &BEARER_KINDS)?;
        self.lookup(hash, Some(kind)).await
    }

    /// Re-checks an already verified token by its hash (every request on an open connection).
    pub async fn authenticate_hash(
        &self,
        hash: TokenHash,
    ) -> Result<Arc<Authenticated>, AuthError> {
        self.lookup(hash, None).await
    }

    /// The cached answer for `hash`, or the store's. A cached answer was checked against the
    /// token's prefix when it was filled: the hash covers the prefix, so it is the same token.
    async fn lookup(
        &self,
        hash: TokenHash,
        kind: Option<TokenKind>,
    ) -> Result<Arc<Authenticated>, AuthError> {
        if let Some(CacheEntry(hit)) = self.cache.get(&hash) {
            return if hit.unexpired(now_ms()) {
                Ok(hit)
            } else {
                Err(AuthError::Expired)
            };
        }
        let resolved = Arc::new(self.resolve(hash, kind).await?);
        self.cache.insert(hash, CacheEntry(resolved.clone()));
        Ok(resolved)
    }

    /// The token's keyed hash and kind, if it is well-formed and of an `allowed` kind. The
    /// prefix is part of what is hashed, so a token cannot change its kind and still match.
    fn check_format(
        &self,
        raw: &SecretString,
        allowed: &[TokenKind],
    ) -> Result<(TokenHash, TokenKind), AuthError> {
        let text = raw.expose_secret();
        let kind = allowed
            .iter()
            .copied()
            .find(|k| k.matches_format(text))
            .ok_or(AuthError::Malformed)?;
        Ok((self.hasher.hash(raw), kind))
    }

    async fn resolve(
        &self,
        hash: TokenHash,
        kind: Option<TokenKind>,
    ) -> Result<Authenticated, AuthError> {
        let Some(home) = &self.home else {
            return self.resolve_here(hash, kind).await;
        };
        let this = self.clone();
        home.spawn(async move { this.resolve_here(hash, kind).await })
            .await
            // The home runtime is shutting down (or the lookup panicked): the store is gone.
            .unwrap_or(Err(AuthError::Store(StoreError::Database(
                sqlx::Error::PoolClosed,
            ))))
    }

    async fn resolve_here(
        &self,
        hash: TokenHash,
        kind: Option<TokenKind>,
    ) -> Result<Authenticated, AuthError> {
        let Some(keyring) = &self.keyring else {
            return self.resolve_once(hash, kind).await;
        };
        let before = keyring.mac_failures();
        let first = self.resolve_once(hash, kind).await;
        // A row (token, user, grant) failed its MAC under every key held: if another instance
        // rotated the instance key, adopt it and look once more; a forged row fails again.
        if keyring.mac_failures() > before {
            match crate::rekey::adopt_newer(&self.store, keyring).await {
                Ok(true) => return self.resolve_once(hash, kind).await,
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "cannot adopt the stored instance key"),
            }
        }
        first
    }

    async fn resolve_once(
        &self,
        hash: TokenHash,
        kind: Option<TokenKind>,
    ) -> Result<Authenticated, AuthError> {
        let token = self
            .store
            .token_by_hash(&hash)
            .await?
            .ok_or(AuthError::Unknown)?;
        if kind.is_some_and(|k| store_kind_of(k) != Some(token.kind)) {
            return Err(AuthError::KindMismatch);
        }
        let now = now_ms();
        if token.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if token.expires_at.is_some_and(|e| e <= now) {
            return Err(AuthError::Expired);
        }
        self.principal_of(token).await
    }

    async fn principal_of(&self, token: TokenRecord) -> Result<Authenticated, AuthError> {
        let (principal, grants) = match token.kind {
            TokenStoreKind::Session | TokenStoreKind::Web => {
                let user_id = token.user_id.clone().ok_or(AuthError::Orphaned)?;
                let user = self
                    .store
                    .user_by_id(&user_id)
                    .await?
                    .ok_or(AuthError::Orphaned)?;
                let grants = self.store.grants_of(PrincipalKind::User, &user.id).await?;
                (
                    Principal::User {
                        id: user.id,
                        email: user.email,
                        role: user.role,
                    },
                    grants,
                )
            }
            TokenStoreKind::Agent => {
                let agent_id = token.agent_id.clone().ok_or(AuthError::Orphaned)?;
                let agent = self
                    .store
                    .agent_by_id(&agent_id)
                    .await?
                    .ok_or(AuthError::Orphaned)?;
                let grants = self
                    .store
                    .grants_of(PrincipalKind::Agent, &agent.id)
                    .await?;
                (
                    Principal::Agent {
                        id: agent.id,
                        name: agent.name,
                    },
                    grants,
                )
            }
            TokenStoreKind::Scoped => {
                let vault_id = token.vault_id.clone().ok_or(AuthError::Orphaned)?;
                let minted_by = match (&token.agent_id, &token.user_id) {
                    (Some(a), _) => Minter::Agent(a.clone()),
                    (None, Some(u)) => Minter::User(u.clone()),
                    (None, None) => return Err(AuthError::Orphaned),
                };
                // A scoped token lives no longer than its minter's access to the vault.
                let minter_ok = match &minted_by {
                    Minter::Agent(a) => self
                        .store
                        .role_in_vault(&vault_id, PrincipalKind::Agent, a)
                        .await?
                        .is_some(),
                    Minter::User(u) => match self.store.user_by_id(u).await? {
                        Some(user) if user.role == InstanceRole::Owner => true,
                        Some(user) => self
                            .store
                            .role_in_vault(&vault_id, PrincipalKind::User, &user.id)
                            .await?
                            .is_some_and(|r| r >= VaultRole::Member),
                        None => false,
                    },
                };
                if !minter_ok {
                    return Err(AuthError::Revoked);
                }
                let role = token.vault_role.unwrap_or(VaultRole::Proxy);
                (
                    Principal::Scoped {
                        vault_id,
                        role,
                        minted_by,
                    },
                    Vec::new(),
                )
            }
        };
        Ok(Authenticated {
            token_id: token.id,
            token_hash: token.hash,
            principal,
            grants: grants.into_iter().collect(),
            expires_at: token.expires_at,
        })
    }

    /// Forgets every cached answer and wakes open connections to re-check their tokens. Called
    /// after revocations, deletions and grant changes on this instance.
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
        self.revocations.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A receiver that changes whenever tokens or grants may have been revoked.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }
}

/// Counts failed authentications per key (by default the client address); once `limit`
/// failures happen within a minute, that key is refused (429) until the minute has passed.
/// Loopback is not exempt: a prompt-injected agent usually runs on the same host.
#[derive(Clone)]
pub struct FailureBudget<K = std::net::IpAddr>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    counts: moka::sync::Cache<K, Arc<std::sync::atomic::AtomicU32>>,
    limit: u32,
}

impl<K> std::fmt::Debug for FailureBudget<K>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureBudget")
            .field("limit", &self.limit)
            .finish()
    }
}

impl<K> FailureBudget<K>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    /// A budget of `limit` failures per minute per key.
    pub fn new(limit: u32) -> Self {
        let counts = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs(60))
            .build();
        Self { counts, limit }
    }

    /// Whether the key has used up its budget.
    pub fn exhausted(&self, key: &K) -> bool {
        self.counts
            .get(key)
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed) >= self.limit)
    }

    /// Records one failure.
    pub fn record(&self, key: K) {
        let counter = self
            .counts
            .get_with(key, || Arc::new(std::sync::atomic::AtomicU32::new(0)));
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
