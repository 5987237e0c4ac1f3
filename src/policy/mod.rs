//! The pure decision core. Given a compiled vault snapshot and a request head, decide whether to
//! intercept, tunnel or deny, and which credentials a request gets. No sockets, no clock, no
//! database, no logging: everything here is a function of its inputs.

pub mod confusable;
pub mod decide;
pub mod host;
pub mod service;
pub mod snapshot;

pub use decide::{ConnectDecision, DenyReason, RequestDecision, decide_connect, decide_request};
pub use host::{Authority, Host, HostError, canonicalize_host, parse_authority};
pub use service::{AuthSpec, CompiledService, ServiceError, ServiceSpec, validate_services};
pub use snapshot::{Placeholders, SealedCredential, Unusable, VaultSnapshot};
