//! The integration suite: one binary, the real server on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

mod admin_api;
mod attacks_exfil;
mod attacks_framing;
mod attacks_integrity;
mod attacks_lookalike;
mod attacks_reflection;
mod attacks_resources;
mod attacks_ssrf;
mod attacks_storage;
mod attacks_tls_tokens;
mod attacks_websession;
mod browser;
mod cli;
mod cli_credential_types;
mod cli_daily_use;
mod credentials_lifecycle;
mod durability;
mod leaks;
mod master_key;
mod packaging;
mod proposals;
mod proxy_access;
mod proxy_mtls;
mod proxy_routing;
mod proxy_streaming;
mod proxy_tampering;
mod proxy_websocket;
mod readme;
mod run;
mod runtimes;
mod scaleout;
mod server_logs;
mod store;
