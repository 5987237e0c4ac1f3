//! The admin API: JSON over HTTP under `/v1`. Every route checks who is calling and with which
//! role; errors go through [`error::ApiError`]; writes rebuild the touched vault's snapshot so
//! the proxy uses the change on its very next request.

mod agents;
mod auth;
mod credentials;
pub mod error;
pub mod extract;
pub mod host_guard;
mod logs;
mod master_key;
mod meta;
pub(crate) mod proposals;
pub mod server;
mod services;
mod vaults;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, header};
use axum::routing::{delete, get, post};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::ca::CertificateAuthority;
use crate::config::Config;
use crate::crypto::PasswordHasher;
use crate::domain::VaultRole;
use crate::identity::{Authenticated, FailureBudget, Identity};
use crate::keys::Keyring;
use crate::manage::{Acting, Manage};
use crate::registry::Snapshots;
use crate::store::{Store, VaultRecord};

pub use error::ApiError;

/// Shared state of the admin API.
#[derive(Clone)]
pub struct AdminState(Arc<AdminInner>);

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// The parts of [`AdminState`].
#[allow(missing_debug_implementations)]
pub struct AdminInner {
    /// The database.
    pub store: Store,
    /// The unsealed keys.
    pub keyring: Keyring,
    /// Token resolution.
    pub identity: Identity,
    /// The proxy's snapshots.
    pub snapshots: Snapshots,
    /// The proxy's CA.
    pub ca: Arc<CertificateAuthority>,
    /// The whole configuration.
    pub config: Arc<Config>,
    /// User password hashing.
    pub passwords: PasswordHasher,
    /// Base URL for links (approval, invitations).
    pub public_url: String,
    /// The proxy's bound address.
    pub proxy_addr: SocketAddr,
    /// Where the setup token file lives (deleted once used).
    pub setup_token_file: PathBuf,
    /// Failed authentications per client address.
    pub auth_failures: FailureBudget,
    /// Failed password re-entries on the approval page, per logged-in user: the person behind
    /// a web session, not the address, so an agent failing logins from the same host cannot
    /// lock an approver out, and a replayed session cookie cannot guess the password freely.
    pub confirm_failures: FailureBudget<String>,
    /// Proposal notifications.
    pub notifier: crate::notify::Notifier,
}

impl std::ops::Deref for AdminState {
    type Target = AdminInner;
    fn deref(&self) -> &AdminInner {
        &self.0
    }
}

impl AdminState {
    /// Wraps the parts.
    pub fn new(inner: AdminInner) -> Self {
        Self(Arc::new(inner))
    }

    /// The application layer over this state's parts.
    pub fn manage(&self) -> Manage<'_> {
        Manage {
            store: &self.store,
            keyring: &self.keyring,
            identity: &self.identity,
            snapshots: &self.snapshots,
            config: &self.config,
            notifier: &self.notifier,
            public_url: &self.public_url,
            proxy_addr: self.proxy_addr,
        }
    }

    /// The application layer acting for `caller`.
    pub fn acting<'a>(&'a self, caller: &'a Authenticated) -> Acting<'a> {
        self.manage().acting(caller)
    }

    /// Resolves a vault the caller may act on with at least `need`. A vault the caller has no
    /// role in is reported as not found, so names cannot be probed.
    pub async fn vault_access(
        &self,
        caller: &Authenticated,
        name: &str,
        need: VaultRole,
    ) -> Result<(VaultRecord, VaultRole), ApiError> {
        Ok(self.manage().vault_access(caller, name, need).await?)
    }
}

/// Headers on every admin response.
fn security_headers<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    let set = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    router
        .layer(set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(set(header::X_FRAME_OPTIONS, "DENY"))
        .layer(set(header::REFERRER_POLICY, "no-referrer"))
        .layer(set(header::CACHE_CONTROL, "no-store"))
        .layer(set(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ))
}

/// The `/v1` API router.
pub fn router(state: AdminState) -> Router {
    let limit = state.config.limits.max_admin_body_bytes;
    let api = Router::new()
        .route("/v1/health", get(meta::health))
        .route("/v1/status", get(meta::status))
        .route("/v1/ca.pem", get(meta::ca_pem))
        .route("/v1/auth/register", post(auth::register))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/auth/whoami", get(auth::whoami))
        .route("/v1/users", get(auth::list_users))
        .route(
            "/v1/invites",
            get(auth::list_invites).post(auth::create_invite),
        )
        .route("/v1/invites/{id}", delete(auth::revoke_invite))
        .route("/v1/master-key", get(master_key::show))
        .route("/v1/master-key/rotate", post(master_key::rotate))
        .route("/v1/vaults", get(vaults::list).post(vaults::create))
        .route(
            "/v1/vaults/{vault}",
            get(vaults::show).delete(vaults::remove),
        )
        .route(
            "/v1/vaults/{vault}/settings",
            get(vaults::settings).patch(vaults::update_settings),
        )
        .route(
            "/v1/vaults/{vault}/members",
            get(vaults::members).put(vaults::set_member),
        )
        .route(
            "/v1/vaults/{vault}/members/{kind}/{who}",
            delete(vaults::remove_member),
        )
        .route(
            "/v1/vaults/{vault}/credentials",
            get(credentials::list)
                .put(credentials::set)
                .delete(credentials::remove),
        )
        .route(
            "/v1/vaults/{vault}/credentials/{key}",
            get(credentials::get_one),
        )
        .route(
            "/v1/vaults/{vault}/credentials/{key}/rotate",
            post(credentials::rotate),
        )
        .route(
            "/v1/vaults/{vault}/credentials/{key}/versions",
            get(credentials::versions),
        )
        .route(
            "/v1/vaults/{vault}/credentials/{key}/rollback",
            post(credentials::rollback),
        )
        .route(
            "/v1/vaults/{vault}/credentials/{key}/revoke",
            post(credentials::revoke),
        )
        .route(
            "/v1/vaults/{vault}/services",
            get(services::list)
                .put(services::replace)
                .post(services::upsert),
        )
        .route(
            "/v1/vaults/{vault}/services/{name}",
            delete(services::remove),
        )
        .route(
            "/v1/vaults/{vault}/tokens",
            get(agents::list_tokens).post(agents::mint_token),
        )
        .route("/v1/tokens/{id}", delete(agents::revoke_token))
        .route("/v1/agents", get(agents::list).post(agents::create))
        .route("/v1/agents/{name}", delete(agents::remove))
        .route("/v1/agents/{name}/rotate", post(agents::rotate))
        .route("/v1/agents/{name}/revoke", post(agents::revoke))
        .route("/v1/discover", get(proposals::discover))
        .route("/v1/proposals", post(proposals::create))
        .route("/v1/proposals/{id}", get(proposals::poll))
        .route("/v1/vaults/{vault}/proposals", get(proposals::list))
        .route("/v1/vaults/{vault}/proposals/{n}", get(proposals::show))
        .route(
            "/v1/vaults/{vault}/proposals/{n}/approve",
            post(proposals::approve_api),
        )
        .route(
            "/v1/vaults/{vault}/proposals/{n}/reject",
            post(proposals::reject_api),
        )
        .route("/v1/vaults/{vault}/logs", get(logs::list))
        .route("/v1/vaults/{vault}/audit", get(logs::audit))
        .fallback(meta::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state);
    security_headers(api)
}
