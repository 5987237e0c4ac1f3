//! Canonical hosts and authorities. The proxy routes on the CONNECT authority, canonicalized
//! exactly once here: ASCII, lower case, one trailing dot removed, IDNA A-labels, and no
//! spelling that different parsers could read differently.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a host or authority was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Nothing where a host was expected.
    #[error("empty host")]
    Empty,
    /// A character that has no place in a host name.
    #[error("host contains a forbidden character")]
    ForbiddenChar,
    /// IDNA processing rejected the name.
    #[error("host is not a valid internationalized domain name")]
    Idna,
    /// A numeric spelling that some parsers read as an IPv4 address (decimal, hex, octal, short).
    #[error("ambiguous numeric host; write IPv4 addresses as four decimal octets")]
    AmbiguousNumeric,
    /// A bracketed literal that is not IPv6.
    #[error("invalid IPv6 literal")]
    InvalidIpv6,
    /// Missing, zero, or malformed port.
    #[error("invalid port")]
    Port,
    /// Longer than DNS allows.
    #[error("host name too long")]
    TooLong,
}

/// A canonical host: a lower-case ASCII domain name or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A domain name in A-label form, lower case, without trailing dot.
    Domain(String),
    /// An IP literal.
    Ip(IpAddr),
}

impl Host {
    /// The domain name, if this is not an IP literal.
    pub fn domain(&self) -> Option<&str> {
        match self {
            Host::Domain(d) => Some(d),
            Host::Ip(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
        }
    }
}

/// A canonical `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Authority {
    /// The canonical host.
    pub host: Host,
    /// The port.
    pub port: u16,
}

impl Authority {
    /// The form for a `Host` header or an `:authority`: the port is left out when it is the
    /// scheme's default, so signatures computed over the host (SigV4 and kin) still match.
    pub fn host_header(&self, default_port: u16) -> String {
        if self.port == default_port {
            self.host.to_string()
        } else {
            self.to_string()
        }
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

fn forbidden(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '%' | '\\'
                | '@'
                | '/'
                | '?'
                | '#'
                | '['
                | ']'
                | '"'
                | '<'
                | '>'
                | '^'
                | '`'
                | '{'
                | '|'
                | '}'
                | '*'
                | ','
                | ';'
                | '='
                | '\''
                | '('
                | ')'
                | '!'
                | '&'
                | '+'
                | '$'
        )
}

/// Whether a label would be read as a number by `inet_aton`-style parsers.
fn numeric_label(label: &str) -> bool {
    let l = label.to_ascii_lowercase();
    if l.is_empty() {
        return false;
    }
    if l.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    if let Some(hex) = l.strip_prefix("0x") {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    false
}

/// Canonicalizes a bare host (no port). IPv6 literals may be bracketed or not.
pub fn canonicalize_host(input: &str) -> Result<Host, HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    if let Some(inner) = input.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(HostError::InvalidIpv6)?;
        // Zone ids (`%eth0`) are refused: they name local interfaces.
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| HostError::InvalidIpv6);
    }
    if input.contains(':') {
        return input
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| HostError::InvalidIpv6);
    }
    if input.chars().any(forbidden) {
        return Err(HostError::ForbiddenChar);
    }
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty()
        || trimmed.ends_with('.')
        || trimmed.starts_with('.')
        || trimmed.contains("..")
    {
        return Err(HostError::Empty);
    }
    if let Ok(v4) = trimmed.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(v4)));
    }
    let ascii = idna::domain_to_ascii_strict(trimmed).map_err(|_| HostError::Idna)?;
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii).to_owned();
    if ascii.is_empty() {
        return Err(HostError::Empty);
    }
    if ascii.len() > 253 {
        return Err(HostError::TooLong);
    }
    // Unicode digits (fullwidth and kin) map to ASCII digits under IDNA; a name that only now
    // reads as an address is an address.
    if let Ok(v4) = ascii.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(v4)));
    }
    if ascii.rsplit('.').next().is_some_and(numeric_label) {
        return Err(HostError::AmbiguousNumeric);
    }
    Ok(Host::Domain(ascii))
}

/// Canonicalizes `host[:port]`. Without a port, `default_port` is used; `None` makes the port
/// mandatory (CONNECT authorities).
pub fn parse_authority(input: &str, default_port: Option<u16>) -> Result<Authority, HostError> {
    let (host, port) = if let Some(rest) = input.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(HostError::InvalidIpv6)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(HostError::Port)?),
        };
        (&input[..v6.len() + 2], port)
    } else {
        match input.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return Err(HostError::InvalidIpv6),
            None => (input, None),
        }
    };
    let port = match port {
        Some(p) => parse_port(p)?,
        None => default_port.ok_or(HostError::Port)?,
    };
    Ok(Authority {
        host: canonicalize_host(host)?,
        port,
    })
}

fn parse_port(p: &str) -> Result<u16, HostError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::Port);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(HostError::Port),
        Ok(port) => Ok(port),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn dom(s: &str) -> Host {
        Host::Domain(s.into())
    }

    #[test]
    fn case_trailing_dot_and_idna_are_canonicalized() {
        assert_eq!(
            canonicalize_host("API.Stripe.COM"),
            Ok(dom("api.stripe.com"))
        );
        assert_eq!(
            canonicalize_host("api.stripe.com."),
            Ok(dom("api.stripe.com"))
        );
        assert_eq!(
            canonicalize_host("bücher.example"),
            Ok(dom("xn--bcher-kva.example"))
        );
        assert_eq!(
            canonicalize_host("xn--bcher-kva.example"),
            Ok(dom("xn--bcher-kva.example"))
        );
        assert_eq!(
            canonicalize_host("BÜCHER.example."),
            Ok(dom("xn--bcher-kva.example"))
        );
    }

    #[test]
    fn only_one_trailing_dot_is_removed() {
        assert!(canonicalize_host("api.stripe.com..").is_err());
        assert!(canonicalize_host(".api.stripe.com").is_err());
        assert!(canonicalize_host("api..stripe.com").is_err());
        assert!(canonicalize_host(".").is_err());
    }

    #[test]
    fn tricky_characters_are_refused() {
        for bad in [
            "a%2eb.com",
            "evil.com\\@api.stripe.com",
            "user@api.stripe.com",
            "a b.com",
            "a\0.com",
            "a/b.com",
            "*.x.com",
            "",
        ] {
            assert!(canonicalize_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ipv4_only_in_dotted_decimal() {
        assert_eq!(
            canonicalize_host("127.0.0.1"),
            Ok(Host::Ip("127.0.0.1".parse().unwrap()))
        );
        for ambiguous in [
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "127.1",
            "127.0.0.0x1",
            "1.2.3.04",
        ] {
            assert!(canonicalize_host(ambiguous).is_err(), "{ambiguous}");
        }
        // Fullwidth digits are mapped by IDNA and land on the canonical address.
        assert_eq!(
            canonicalize_host("１２７.０.０.１"),
            Ok(Host::Ip("127.0.0.1".parse().unwrap()))
        );
    }

    #[test]
    fn ipv6_literals() {
        let mapped = "::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap();
        assert_eq!(
            canonicalize_host("[::ffff:127.0.0.1]"),
            Ok(Host::Ip(IpAddr::V6(mapped)))
        );
        assert!(canonicalize_host("[fe80::1%eth0]").is_err());
        assert!(canonicalize_host("[not-v6]").is_err());
    }

    #[test]
    fn authorities_need_a_valid_port() {
        assert_eq!(
            parse_authority("api.stripe.com:443", None)
                .unwrap()
                .to_string(),
            "api.stripe.com:443"
        );
        assert_eq!(
            parse_authority("[::1]:8443", None).unwrap().to_string(),
            "[::1]:8443"
        );
        assert_eq!(
            parse_authority("api.stripe.com", Some(443)).unwrap().port,
            443
        );
        for bad in [
            "api.stripe.com",
            "api.stripe.com:",
            "api.stripe.com:0",
            "api.stripe.com:65536",
            "api.stripe.com:+443",
            "a:b:c",
            "[::1]x",
        ] {
            assert!(parse_authority(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_header_drops_default_port() {
        let a = parse_authority("API.example.test:443", None).unwrap();
        assert_eq!(a.host_header(443), "api.example.test");
        let b = parse_authority("api.example.test:8443", None).unwrap();
        assert_eq!(b.host_header(443), "api.example.test:8443");
    }

    proptest! {
        #[test]
        fn canonical_form_is_a_fixed_point(s in "[a-zA-Z0-9.:\\[\\]%@\\\\-]{0,40}") {
            if let Ok(h) = canonicalize_host(&s) {
                let again = canonicalize_host(&h.to_string());
                prop_assert_eq!(again, Ok(h));
            }
        }

        #[test]
        fn never_panics_on_unicode(s in "\\PC{0,30}") {
            let _ = parse_authority(&s, Some(443));
        }

        /// Case and one trailing dot never change the route, and a domain never reads as an
        /// IPv4 address to another parser.
        #[test]
        fn spellings_of_one_name_route_alike(s in "[a-z0-9-]{1,10}(\\.[a-z0-9-]{1,10}){1,3}") {
            let base = canonicalize_host(&s);
            prop_assert_eq!(&canonicalize_host(&s.to_ascii_uppercase()), &base);
            prop_assert_eq!(&canonicalize_host(&format!("{s}.")), &base);
            if let Ok(Host::Domain(d)) = &base {
                prop_assert!(d.parse::<Ipv4Addr>().is_err());
                prop_assert!(!d.rsplit('.').next().is_some_and(numeric_label));
            }
        }

        /// An authority prints to a form that parses back to itself.
        #[test]
        fn authorities_round_trip(s in "\\PC{0,30}", port in 1u16..) {
            if let Ok(a) = parse_authority(&format!("{s}:{port}"), None) {
                prop_assert_eq!(parse_authority(&a.to_string(), None), Ok(a));
            }
        }
    }
}
