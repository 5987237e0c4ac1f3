//! Proxy authentication: `Proxy-Authorization: Basic base64(token:vault)` (what
//! `HTTPS_PROXY=http://token:vault@host:port` sends) or `Bearer token`, resolved to a token and
//! the one vault this connection works in.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use percent_encoding::percent_decode_str;
use secrecy::SecretString;

use super::error::ProxyError;
use super::state::ProxyState;
use crate::crypto::TokenHash;
use crate::domain::Actor;
use crate::identity::{AuthError, Authenticated, Principal};
use crate::policy::VaultSnapshot;

/// What a `Proxy-Authorization` header carries.
pub struct ProxyCredentials {
    /// The raw token.
    pub token: SecretString,
    /// The vault named next to it, if any.
    pub vault: Option<String>,
}

impl std::fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCredentials")
            .field("vault", &self.vault)
            .finish_non_exhaustive()
    }
}

/// Parses a `Proxy-Authorization` value. Returns `None` for anything malformed.
pub fn parse_proxy_authorization(value: &[u8]) -> Option<ProxyCredentials> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return None;
        }
        return Some(ProxyCredentials {
            token: SecretString::from(rest.to_owned()),
            vault: None,
        });
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = match decoded.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (decoded.as_str(), None),
    };
    // Clients percent-encode userinfo from proxy URLs inconsistently; tokens and vault names
    // only use unreserved characters, so decoding is harmless and makes both forms work.
    let user = percent_decode_str(user).decode_utf8().ok()?.into_owned();
    let vault = pass
        .map(|p| percent_decode_str(p).decode_utf8().map(|c| c.into_owned()))
        .transpose()
        .ok()?
        .filter(|v| !v.is_empty());
    if user.is_empty() {
        return None;
    }
    Some(ProxyCredentials {
        token: SecretString::from(user),
        vault,
    })
}

/// An authenticated proxy client bound to one vault.
#[derive(Clone, Debug)]
pub(super) struct Session {
    /// The token's hash, for re-checking on every request.
    pub token_hash: TokenHash,
    /// The vault's id.
    pub vault_id: String,
    /// The vault's name.
    pub vault_name: String,
    /// Who is calling, for logs and limits.
    pub actor: Actor,
    /// When the token expires (ms), so open tunnels close then and not at their idle timeout.
    pub expires_at: Option<i64>,
    /// The actor's in-flight request limit, shared with its other connections.
    pub slots: Arc<tokio::sync::Semaphore>,
}

fn vault_for(
    state: &ProxyState,
    who: &Authenticated,
    hint: Option<&str>,
) -> Result<Arc<VaultSnapshot>, ProxyError> {
    let denied =
        |name: &str| ProxyError::VaultAccess(format!("this token has no access to vault {name:?}"));
    match (&who.principal, hint) {
        (Principal::User { .. }, _) => Err(ProxyError::SessionToken),
        (Principal::Scoped { vault_id, .. }, hint) => {
            let snap = state
                .snapshots
                .get_by_id(vault_id)
                .ok_or_else(|| denied(hint.unwrap_or("?")))?;
            match hint {
                Some(h) if h != snap.vault_name.as_str() => Err(denied(h)),
                _ => Ok(snap),
            }
        }
        (Principal::Agent { .. }, Some(name)) => {
            let snap = state.snapshots.get(name).ok_or_else(|| denied(name))?;
            if who.role_in(&snap.vault_id).is_some() {
                Ok(snap)
            } else {
                Err(denied(name))
            }
        }
        (Principal::Agent { .. }, None) => {
            let mut ids = who.grants.keys();
            match (ids.next(), ids.next()) {
                (Some(only), None) => state.snapshots.get_by_id(only).ok_or_else(|| denied("?")),
                _ => Err(ProxyError::VaultAccess(
                    "this agent has several vaults; name one: HTTPS_PROXY=http://<token>:<vault>@<proxy address>".into(),
                )),
            }
        }
    }
}

/// Authenticates a CONNECT or absolute-form request from its headers.
pub(super) async fn authenticate(
    state: &ProxyState,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<(Session, Arc<VaultSnapshot>), ProxyError> {
    // A valid token always works: the budget only slows guessing, so one process burning the
    // budget of a shared address (loopback) cannot lock out the others.
    let fail = |reason: &str| {
        tracing::debug!(%peer, reason, "proxy authentication failed");
        if state.auth_failures.exhausted(&peer) {
            return ProxyError::RateLimited(
                "too many failed proxy authentications from this address; wait a minute",
            );
        }
        state.auth_failures.record(peer);
        ProxyError::AuthRequired
    };
    let Some(value) = headers.get(http::header::PROXY_AUTHORIZATION) else {
        // No attempt at all is not a guess; do not spend the budget on it.
        return Err(ProxyError::AuthRequired);
    };
    let Some(creds) = parse_proxy_authorization(value.as_bytes()) else {
        return Err(fail("malformed Proxy-Authorization"));
    };
    let who = match state.identity.authenticate_cached(&creds.token).await {
        Ok(who) => who,
        Err(e @ AuthError::Store(_)) => return Err(ProxyError::Unavailable(e)),
        Err(e) => return Err(fail(&e.to_string())),
    };
    let snapshot = vault_for(state, &who, creds.vault.as_deref())?;
    let actor = who.actor();
    let session = Session {
        token_hash: who.token_hash,
        vault_id: snapshot.vault_id.clone(),
        vault_name: snapshot.vault_name.to_string(),
        slots: state.agent_slots(actor.id()),
        actor,
        expires_at: who.expires_at,
    };
    Ok((session, snapshot))
}

/// Re-checks a session on an open connection: the token must still be live and still have a
/// role in the vault. Returns the vault's current snapshot.
pub(super) async fn recheck(
    state: &ProxyState,
    session: &Session,
) -> Result<Arc<VaultSnapshot>, ProxyError> {
    let who = match state.identity.authenticate_hash(session.token_hash).await {
        Ok(who) => who,
        Err(e @ AuthError::Store(_)) => return Err(ProxyError::Unavailable(e)),
        Err(_) => return Err(ProxyError::AuthRequired),
    };
    if who.role_in(&session.vault_id).is_none() {
        return Err(ProxyError::VaultAccess(format!(
            "this token no longer has access to vault {:?}",
            session.vault_name
        )));
    }
    state.snapshots.get_by_id(&session.vault_id).ok_or_else(|| {
        ProxyError::VaultAccess(format!("vault {:?} no longer exists", session.vault_name))
    })
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn basic(s: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(s)).into_bytes()
    }

    #[test]
    fn parses_the_forms_clients_send() {
        let c = parse_proxy_authorization(&basic("av_run_abc:my-vault")).unwrap();
        assert_eq!(c.token.expose_secret(), "av_run_abc");
        assert_eq!(c.vault.as_deref(), Some("my-vault"));
        let c = parse_proxy_authorization(&basic("av_run_abc:")).unwrap();
        assert_eq!(c.vault, None);
        let c = parse_proxy_authorization(&basic("av_run_abc")).unwrap();
        assert_eq!(c.vault, None);
        let c = parse_proxy_authorization(b"Bearer av_agt_xyz").unwrap();
        assert_eq!(c.token.expose_secret(), "av_agt_xyz");
        let c = parse_proxy_authorization(&basic("av_run_a%2Db:my%2Dvault")).unwrap();
        assert_eq!(c.token.expose_secret(), "av_run_a-b");
        assert_eq!(c.vault.as_deref(), Some("my-vault"));
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            &b"Basic"[..],
            b"Basic !!!",
            b"Digest abc",
            b"Bearer ",
            b"Bearer a b",
            b"",
            &basic(":vault"),
            b"Basic \xff",
        ] {
            assert!(parse_proxy_authorization(bad).is_none(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_proxy_authorization(&bytes);
        }

        /// What `HTTPS_PROXY=http://token:vault@...` sends parses back to the same token and
        /// vault, whether or not the client percent-encoded the userinfo.
        #[test]
        fn basic_credentials_round_trip(
            token in "av_(run|agt)_[A-Za-z0-9_-]{1,60}",
            vault in "[a-z0-9-]{3,64}",
            encode in proptest::prelude::any::<bool>(),
        ) {
            let (t, v) = if encode {
                (token.replace('-', "%2D"), vault.replace('-', "%2d"))
            } else {
                (token.clone(), vault.clone())
            };
            let c = parse_proxy_authorization(&basic(&format!("{t}:{v}"))).unwrap();
            proptest::prop_assert_eq!(c.token.expose_secret(), token.as_str());
            proptest::prop_assert_eq!(c.vault.as_deref(), Some(vault.as_str()));
        }
    }
}
