//! The credential-injecting forward proxy: listener, CONNECT and TLS interception, absolute-form
//! requests, the per-request pipeline, injection and substitution, the upstream client, and the
//! responses the proxy makes itself.
//!
//! The modules import each other in one direction only; read them bottom-up in this order, each
//! using only the ones before it:
//!
//! 1. `body`: streaming body types (counted, capped, drained) and [`ProxyBody`].
//! 2. [`error`]: every response the proxy makes itself.
//! 3. `jsonscan`, `inject`, `substitute`, [`scrub`]: what is done to one request's bytes
//!    (credentials attached, placeholders replaced, values scrubbed from the response).
//! 4. `headers`: header hygiene (hop-by-hop, framing, method overrides).
//! 5. [`workers`]: the worker threads (they know nothing of the proxy above them).
//! 6. [`upstream`]: the way out (resolve, SSRF guard, TLS, pooled clients per worker), and
//!    `identity`: the pooled clients of each TLS client identity (`mtls`).
//! 7. `state`: what every connection shares ([`ProxyState`]).
//! 8. `auth`: `Proxy-Authorization`, and the per-request re-check of a session.
//! 9. `conn`: one connection's life (target, slot, activity, revocation, idleness).
//! 10. `websocket`: upgraded connections, spliced or read frame by frame.
//! 11. `pipeline`: one request, as a sequence of named phases.
//! 12. `connect`: CONNECT (intercept, tunnel or refuse).
//! 13. `listener`: accepting connections and dispatching their requests.

mod auth;
pub(crate) mod body;
mod conn;
mod connect;
pub mod error;
mod headers;
mod identity;
mod inject;
mod jsonscan;
mod listener;
mod pipeline;
pub mod scrub;
mod state;
mod substitute;
pub mod upstream;
mod websocket;
pub mod workers;

pub use auth::parse_proxy_authorization;
pub use body::{BoxError, ProxyBody};
pub use listener::{serve, start_workers};
pub use state::{ProxyParts, ProxyState};
pub use upstream::Upstream;
pub use workers::Workers;
