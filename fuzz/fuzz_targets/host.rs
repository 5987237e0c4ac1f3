//! Host and authority canonicalization: never panics, and a canonical form is a fixed point
//! (canonicalizing what it prints gives the same host back), so "canonicalized once" holds.
#![no_main]

use agent_vault::policy::{Host, canonicalize_host, parse_authority};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(host) = canonicalize_host(text) {
        let printed = host.to_string();
        assert_eq!(canonicalize_host(&printed).as_ref(), Ok(&host), "{printed}");
        if let Host::Domain(d) = &host {
            assert!(d.is_ascii() && !d.bytes().any(|b| b.is_ascii_uppercase()), "{d}");
            assert!(d.parse::<std::net::Ipv4Addr>().is_err(), "{d}");
        }
    }
    for default in [None, Some(443)] {
        if let Ok(a) = parse_authority(text, default) {
            let printed = a.to_string();
            assert_eq!(parse_authority(&printed, None).as_ref(), Ok(&a), "{printed}");
        }
    }
});
