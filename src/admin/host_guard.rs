//! DNS-rebinding defence: the admin API and pages answer only to Host headers they know. A page
//! on an attacker's domain that rebinds its name to 127.0.0.1 reaches the listener with the
//! attacker's Host header and is refused.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The accepted Host values (lower case, with port where the client would send one).
#[derive(Clone, Debug)]
pub struct AllowedHosts(Option<Arc<BTreeSet<String>>>);

impl AllowedHosts {
    /// Builds the list for a listener bound at `bound`, reachable at `public_url`.
    pub fn new(bound: SocketAddr, public_url: Option<&str>, extra: &[String]) -> Self {
        let mut set = BTreeSet::new();
        let port = bound.port();
        for name in [
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "[::1]".to_owned(),
            bound.ip().to_string(),
        ] {
            let host = if name.contains(':') && !name.starts_with('[') {
                format!("[{name}]")
            } else {
                name
            };
            set.insert(format!("{host}:{port}"));
        }
        if let Some(url) = public_url.and_then(|u| url::Url::parse(u).ok())
            && let Some(host) = url.host_str()
        {
            let host = host.to_ascii_lowercase();
            match url.port() {
                Some(p) => set.insert(format!("{host}:{p}")),
                None => set.insert(host),
            };
        }
        for h in extra {
            set.insert(h.to_ascii_lowercase());
        }
        // Bound to every interface and told nothing about the public name: accept any Host
        // rather than locking the operator out (the startup log says how to tighten this).
        if bound.ip().is_unspecified() && public_url.is_none() && extra.is_empty() {
            return Self(None);
        }
        Self(Some(Arc::new(set)))
    }

    fn allows(&self, host: &str) -> bool {
        match &self.0 {
            None => true,
            Some(set) => set.contains(&host.to_ascii_lowercase()),
        }
    }
}

/// Refuses requests whose Host header is not on the list.
pub async fn guard(hosts: AllowedHosts, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if hosts.allows(host) {
        return next.run(req).await;
    }
    tracing::warn!(
        "refused a request for an unknown Host (possible DNS rebinding); set server.public_url or server.allowed_hosts"
    );
    (
        StatusCode::MISDIRECTED_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"error":"unknown_host","message":"this server does not answer to that Host; set server.public_url or server.allowed_hosts"}"#,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_binds_accept_only_local_names() {
        let h = AllowedHosts::new("127.0.0.1:14321".parse().unwrap(), None, &[]);
        assert!(h.allows("127.0.0.1:14321"));
        assert!(h.allows("LOCALHOST:14321"));
        assert!(!h.allows("evil.example:14321"));
        assert!(!h.allows("127.0.0.1:1"));
        assert!(!h.allows(""));
        let public = AllowedHosts::new(
            "127.0.0.1:14321".parse().unwrap(),
            Some("https://vault.example.com"),
            &[],
        );
        assert!(public.allows("vault.example.com"));
        let any = AllowedHosts::new("0.0.0.0:14321".parse().unwrap(), None, &[]);
        assert!(any.allows("whatever:1"));
    }
}
