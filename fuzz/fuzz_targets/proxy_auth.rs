//! The Proxy-Authorization parser: arbitrary bytes never panic, and what it accepts has a
//! non-empty token.
#![no_main]

use agent_vault::proxy::parse_proxy_authorization;
use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;

fuzz_target!(|data: &[u8]| {
    if let Some(creds) = parse_proxy_authorization(data) {
        assert!(!creds.token.expose_secret().is_empty());
        assert!(creds.vault.as_deref() != Some(""));
    }
});
