//! agent-vault: a credential vault and HTTPS forward proxy that attaches secrets to AI agents'
//! requests without ever handing the secrets to the agents.
#![forbid(unsafe_code)]

pub mod config;
pub mod crypto;
pub mod domain;
pub mod keys;
pub mod policy;
pub mod ca;
pub mod identity;
pub mod netguard;
pub mod registry;
pub mod store;
