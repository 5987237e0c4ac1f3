//! The service-file parser and compiler (what admins and agent proposals submit): never panics,
//! and every compiled service has a canonical, non-IP host and a path glob without dot segments.
#![no_main]

use agent_vault::policy::service::parse_service_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(specs) = parse_service_file(text) else {
        return;
    };
    for spec in specs {
        let Ok(compiled) = spec.normalized().compile() else {
            continue;
        };
        let host = &compiled.pattern.host;
        assert!(host.contains('.') && host.parse::<std::net::IpAddr>().is_err(), "{host}");
        if let Some(path) = &compiled.pattern.path {
            assert!(path.split('/').all(|s| s != "." && s != ".."), "{path}");
        }
    }
});
