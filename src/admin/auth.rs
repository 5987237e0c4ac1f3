//! Registration (first owner by setup token, others by invitation), login, logout, whoami,
//! users and invitations.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::extract::{ApiJson, Caller, ClientIp};
use super::{AdminState, ApiError};
use crate::crypto::{TokenKind, random_id};
use crate::domain::{Email, InstanceRole, VaultName, VaultRole, now_ms};
use crate::identity::Principal;
use crate::manage::agents::issue_token;
use crate::store::{InviteRecord, InviteVaultGrant, TokenStoreKind, UserRecord};

/// Longest password accepted (Argon2 would take anything; this bounds request cost).
const MAX_PASSWORD_LEN: usize = 1024;
/// Shortest user password accepted.
pub(super) const MIN_PASSWORD_LEN: usize = 8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegisterBody {
    email: String,
    password: SecretString,
    #[serde(default)]
    setup_token: Option<SecretString>,
    #[serde(default)]
    invite_token: Option<SecretString>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginBody {
    email: String,
    password: SecretString,
}

/// A user as the API shows it.
#[derive(Serialize)]
pub(super) struct UserView {
    id: String,
    email: String,
    role: InstanceRole,
    created_at: i64,
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        Self {
            id: u.id.clone(),
            email: u.email.to_string(),
            role: u.role,
            created_at: u.created_at,
        }
    }
}

pub(super) fn check_password(password: &SecretString) -> Result<(), ApiError> {
    let len = password.expose_secret().chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(ApiError::bad_request(
            "weak_password",
            format!("passwords must be at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    if len > MAX_PASSWORD_LEN {
        return Err(ApiError::bad_request(
            "invalid_password",
            format!("passwords must be at most {MAX_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

async fn hash_password(state: &AdminState, password: SecretString) -> Result<String, ApiError> {
    Ok(state.passwords.hash(password).await?)
}

async fn verify_password(
    state: &AdminState,
    password: SecretString,
    phc: Option<String>,
) -> Result<bool, ApiError> {
    Ok(state.passwords.verify(password, phc).await?)
}

async fn session_response(
    state: &AdminState,
    user: &UserRecord,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let ttl = state.config.tokens.session_ttl;
    let issued = issue_token(
        &state.manage(),
        TokenKind::Session,
        TokenStoreKind::Session,
        |t| {
            t.user_id = Some(user.id.clone());
            t.label = "login".into();
        },
        Some(ttl),
    )
    .await?;
    let body = json!({
        "user": UserView::from(user),
        "token": issued.raw.expose_secret(),
        "token_id": issued.record.id,
        "expires_at": issued.record.expires_at,
    });
    Ok((status, Json(body)).into_response())
}

/// `POST /v1/auth/register`: the first owner with the setup token, anyone else with an invitation.
pub(super) async fn register(
    State(state): State<AdminState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<Response, ApiError> {
    if state.auth_failures.exhausted(&ip) {
        return Err(ApiError::TooManyRequests);
    }
    let email = Email::parse(&body.email)
        .map_err(|e| ApiError::bad_request("invalid_email", e.to_string()))?;
    check_password(&body.password)?;
    match (&body.setup_token, &body.invite_token) {
        (Some(setup), None) => {
            if !TokenKind::Setup.matches_format(setup.expose_secret()) {
                state.auth_failures.record(ip);
                return Err(ApiError::Forbidden(
                    "invalid or already used setup token".into(),
                ));
            }
            let hash = hex::encode(state.keyring.token_hasher().hash(setup).0);
            // Checked before hashing the password, so a bogus token costs no Argon2 run (the
            // burn in `register_first_owner` stays the authority on a race).
            let current = state.store.setup_token_hash().await?;
            let matches = current.as_deref().is_some_and(|c| {
                subtle::ConstantTimeEq::ct_eq(c.as_bytes(), hash.as_bytes()).into()
            });
            if !matches {
                state.auth_failures.record(ip);
                return Err(ApiError::Forbidden(
                    "invalid or already used setup token".into(),
                ));
            }
            let phc = hash_password(&state, body.password).await?;
            let user_id = random_id()?;
            let vault_id = random_id()?;
            let default_vault = VaultName::parse("default").map_err(ApiError::internal)?;
            let registered = state
                .store
                .register_first_owner(&hash, &user_id, &email, &phc, (&vault_id, &default_vault))
                .await?;
            if registered.is_none() {
                state.auth_failures.record(ip);
                return Err(ApiError::Forbidden(
                    "invalid or already used setup token".into(),
                ));
            }
            if let Err(e) = std::fs::remove_file(&state.setup_token_file)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, "could not delete the used setup token file");
            }
            tracing::info!(email = %email, "first owner registered; setup token burnt");
            let user = state
                .store
                .user_by_id(&user_id)
                .await?
                .ok_or_else(|| ApiError::internal("new owner vanished"))?;
            if let Some(v) = state.store.vault_by_name(&default_vault).await? {
                state.manage().changed(&v.id).await;
            }
            session_response(&state, &user, StatusCode::CREATED).await
        }
        (None, Some(invite_token)) => {
            if !TokenKind::Invite.matches_format(invite_token.expose_secret()) {
                state.auth_failures.record(ip);
                return Err(ApiError::Forbidden(
                    "invalid, expired or already used invitation".into(),
                ));
            }
            let hash = state.keyring.token_hasher().hash(invite_token);
            let invite = state.store.invite_by_hash(&hash).await?;
            let Some(invite) = invite.filter(|i| i.status(now_ms()) == "pending") else {
                state.auth_failures.record(ip);
                return Err(ApiError::Forbidden(
                    "invalid, expired or already used invitation".into(),
                ));
            };
            if invite.email != email {
                return Err(ApiError::Forbidden(
                    "this invitation is for a different email address".into(),
                ));
            }
            let phc = hash_password(&state, body.password).await?;
            let user_id = random_id()?;
            if !state.store.accept_invite(&invite, &user_id, &phc).await? {
                return Err(ApiError::Forbidden(
                    "invalid, expired or already used invitation".into(),
                ));
            }
            let user = state
                .store
                .user_by_id(&user_id)
                .await?
                .ok_or_else(|| ApiError::internal("new user vanished"))?;
            state.manage().tokens_changed().await;
            session_response(&state, &user, StatusCode::CREATED).await
        }
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_body",
            "give either setup_token or invite_token, not both",
        )),
        (None, None) => Err(ApiError::Forbidden(
            "registration needs the setup token (first owner) or an invitation from an owner"
                .into(),
        )),
    }
}

/// `POST /v1/auth/login`.
pub(super) async fn login(
    State(state): State<AdminState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    if state.auth_failures.exhausted(&ip) {
        return Err(ApiError::TooManyRequests);
    }
    let invalid = || ApiError::InvalidCredentials;
    let email = Email::parse(&body.email).ok();
    let user = match &email {
        Some(e) => state.store.user_by_email(e).await?,
        None => None,
    };
    if body.password.expose_secret().len() > MAX_PASSWORD_LEN {
        return Err(invalid());
    }
    let ok = verify_password(
        &state,
        body.password,
        user.as_ref().map(|u| u.password_hash.clone()),
    )
    .await?;
    match user {
        Some(user) if ok => session_response(&state, &user, StatusCode::OK).await,
        _ => {
            state.auth_failures.record(ip);
            Err(invalid())
        }
    }
}

/// `POST /v1/auth/logout`: revokes the calling session (or scoped) token.
pub(super) async fn logout(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    if matches!(caller.principal, Principal::Agent { .. }) {
        return Err(ApiError::bad_request(
            "not_a_session",
            "agent tokens are revoked with `agent revoke`, not logout",
        ));
    }
    state.store.revoke_token(&caller.token_id).await?;
    state.manage().tokens_changed().await;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("av_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok((StatusCode::NO_CONTENT, headers).into_response())
}

/// `GET /v1/auth/whoami`.
pub(super) async fn whoami(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut vaults = Vec::new();
    for v in state.store.list_vaults().await? {
        if let Some(role) = caller.role_in(&v.id) {
            vaults.push(json!({ "name": v.name, "role": role }));
        }
    }
    let mut out = match &caller.principal {
        Principal::User { id, email, role } => {
            json!({ "kind": "user", "id": id, "email": email, "role": role })
        }
        Principal::Agent { id, name } => json!({ "kind": "agent", "id": id, "name": name }),
        Principal::Scoped { role, .. } => {
            json!({ "kind": "scoped", "id": caller.token_id, "role": role })
        }
    };
    out["vaults"] = json!(vaults);
    out["token_id"] = json!(caller.token_id);
    out["expires_at"] = json!(caller.expires_at);
    Ok(Json(out))
}

fn require_owner(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_owner() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only an instance owner can do this".into(),
        ))
    }
}

/// `GET /v1/users` (owners).
pub(super) async fn list_users(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    require_owner(&caller)?;
    Ok(Json(
        state
            .store
            .list_users()
            .await?
            .iter()
            .map(|u| {
                let mut view = json!(UserView::from(u));
                // A row edited outside agent-vault has no role; say so instead of failing.
                if !u.integrity_ok {
                    view["role"] = json!("integrity_error");
                    view["integrity_error"] = json!(true);
                }
                view
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InviteBody {
    email: String,
    #[serde(default = "member_role")]
    role: InstanceRole,
    #[serde(default)]
    vaults: Vec<VaultGrantBody>,
}

fn member_role() -> InstanceRole {
    InstanceRole::Member
}

/// A `{vault, role}` pair in request bodies.
#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct VaultGrantBody {
    /// Vault name.
    pub vault: String,
    /// Role in it.
    pub role: VaultRole,
}

/// `POST /v1/invites` (owners): returns the invitation token once.
pub(super) async fn create_invite(
    State(state): State<AdminState>,
    caller: Caller,
    ApiJson(body): ApiJson<InviteBody>,
) -> Result<Response, ApiError> {
    require_owner(&caller)?;
    let email = Email::parse(&body.email)
        .map_err(|e| ApiError::bad_request("invalid_email", e.to_string()))?;
    if state.store.user_by_email(&email).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "a user with email {email} already exists"
        )));
    }
    let mut grants = Vec::new();
    for g in &body.vaults {
        if g.role == VaultRole::Proxy {
            return Err(ApiError::bad_request(
                "invalid_role",
                "users hold member or admin roles; proxy is for agents",
            ));
        }
        let (vault, _) = state
            .vault_access(&caller, &g.vault, VaultRole::Admin)
            .await?;
        grants.push(InviteVaultGrant {
            vault_id: vault.id,
            role: g.role,
        });
    }
    let raw = TokenKind::Invite.generate()?;
    let now = now_ms();
    let ttl = i64::try_from(state.config.tokens.invite_ttl.as_millis()).unwrap_or(i64::MAX);
    let invite = InviteRecord {
        id: random_id()?,
        token_hash: state.keyring.token_hasher().hash(&raw),
        email,
        role: body.role,
        vault_grants: grants,
        created_by: caller.actor().id().to_owned(),
        expires_at: now.saturating_add(ttl),
        accepted_at: None,
        revoked_at: None,
        created_at: now,
        integrity_ok: true,
    };
    state.store.create_invite(&invite).await?;
    state
        .acting(&caller)
        .record("invite.create", None, invite.email.to_string())
        .await;
    let register_command = format!(
        "agent-vault auth register --address {} --email {} --invite-token {} --password-stdin",
        state.public_url,
        invite.email,
        raw.expose_secret()
    );
    let emailed = state.notifier.can_email();
    let inviter = match &caller.principal {
        crate::identity::Principal::User { email, .. } => email.to_string(),
        _ => "An owner".into(),
    };
    state
        .notifier
        .invitation(invite.email.clone(), register_command.clone(), inviter);

    let body = json!({
        "id": invite.id,
        "email": invite.email,
        "role": invite.role,
        "token": raw.expose_secret(),
        "expires_at": invite.expires_at,
        "register_command": register_command,
        "emailed": emailed,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/invites` (owners).
pub(super) async fn list_invites(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_owner(&caller)?;
    let now = now_ms();
    let invites: Vec<_> = state
        .store
        .list_invites()
        .await?
        .into_iter()
        .map(|i| {
            let status = if i.integrity_ok { i.status(now) } else { "integrity_error" };
            json!({ "id": i.id, "email": i.email, "role": i.role, "status": status, "expires_at": i.expires_at, "created_at": i.created_at })
        })
        .collect();
    Ok(Json(json!(invites)))
}

/// `DELETE /v1/invites/{id}` (owners).
pub(super) async fn revoke_invite(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_owner(&caller)?;
    if state.store.revoke_invite(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no pending invitation {id:?}")))
    }
}
