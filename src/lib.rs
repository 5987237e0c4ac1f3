//! agent-vault: a credential vault and HTTPS forward proxy that attaches secrets to AI agents'
//! requests without ever handing the secrets to the agents.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod ca;
pub mod cli;
pub mod config;
pub mod credtype;
pub mod crypto;
pub mod domain;
pub mod identity;
pub mod keys;
pub mod manage;
pub mod netguard;
pub mod notify;
pub mod policy;
pub mod proposal;
pub mod proxy;
pub mod registry;
pub mod rekey;
pub mod store;
pub mod unseal;
pub mod web;
