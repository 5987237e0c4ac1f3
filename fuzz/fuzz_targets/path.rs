//! Path ambiguity: a path accepted for a path-scoped service must mean the same thing to an
//! upstream that percent-decodes once and removes dot segments.
#![no_main]

use agent_vault::policy::decide::path_is_ambiguous;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if path_is_ambiguous(path) {
        return;
    }
    let decoded = percent_encoding::percent_decode_str(path).collect::<Vec<u8>>();
    // No separator or dot segment appears only after decoding.
    assert_eq!(
        decoded.iter().filter(|&&b| b == b'/').count(),
        path.bytes().filter(|&b| b == b'/').count()
    );
    for seg in decoded.split(|&b| b == b'/') {
        let name = seg.split(|&b| b == b';').next().unwrap_or(seg);
        assert!(name != b"." && name != b"..", "{path}");
    }
    assert!(!decoded.contains(&b'\\') && !decoded.contains(&0));
});
