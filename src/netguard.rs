//! The SSRF guard: every address the proxy is about to dial is classified after resolution.
//! Embedded IPv4 addresses (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo) are unwrapped
//! first so no spelling of a blocked address gets through. Cloud metadata endpoints stay blocked
//! even when an operator allowlists their range; the proxy's own listeners are never dialed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use ipnet::IpNet;

/// Why an address may not be dialed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    /// A cloud metadata endpoint (never allowed).
    #[error("cloud metadata address")]
    Metadata,
    /// One of this server's own listeners (never allowed).
    #[error("the proxy's own listener")]
    OwnListener,
    /// Loopback or unspecified (0.0.0.0, ::).
    #[error("loopback address")]
    Loopback,
    /// RFC 1918 or IPv6 unique-local.
    #[error("private address")]
    Private,
    /// Link-local.
    #[error("link-local address")]
    LinkLocal,
    /// Carrier-grade NAT (100.64.0.0/10).
    #[error("shared (CGNAT) address")]
    Cgnat,
    /// Multicast or broadcast.
    #[error("multicast or broadcast address")]
    Multicast,
    /// Reserved, documentation, benchmarking or otherwise not globally routable.
    #[error("reserved address")]
    Reserved,
}

/// Addresses that are blocked regardless of configuration.
const METADATA: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), // AWS, GCP, Azure, DigitalOcean, ...
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),   // AWS ECS task metadata
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),  // AWS EKS pod identity
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)), // Alibaba Cloud
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),     // Oracle Cloud
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)), // AWS IMDS over IPv6
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)), // AWS EKS pod identity (v6)
    IpAddr::V6(Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)), // GCP metadata over IPv6
];

/// The IPv4 address embedded in an IPv6 address by a transition mechanism, if any.
pub fn embedded_ipv4(v6: &Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    // IPv4-mapped ::ffff:a.b.c.d
    if s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
        return Some(tail);
    }
    // IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks); not :: or ::1.
    if s[..6] == [0, 0, 0, 0, 0, 0] && (s[6] != 0 || s[7] > 1) {
        return Some(tail);
    }
    // NAT64 well-known prefix 64:ff9b::/96 and local-use 64:ff9b:1::/48.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) {
        return Some(tail);
    }
    // 6to4 2002:AABB:CCDD::/48
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // Teredo 2001:0::/32: the client address is the last 32 bits, inverted.
    if s[0] == 0x2001 && s[1] == 0 {
        return Some(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]));
    }
    None
}

fn classify_v4(ip: Ipv4Addr) -> Option<Blocked> {
    let o = ip.octets();
    if ip.is_loopback() || o[0] == 0 {
        // 0.0.0.0/8 reaches the local host on most stacks.
        return Some(Blocked::Loopback);
    }
    if ip.is_private() {
        return Some(Blocked::Private);
    }
    if ip.is_link_local() {
        return Some(Blocked::LinkLocal);
    }
    if o[0] == 100 && (o[1] & 0xc0) == 64 {
        return Some(Blocked::Cgnat);
    }
    if ip.is_multicast() || ip.is_broadcast() {
        return Some(Blocked::Multicast);
    }
    let reserved = (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || ip.is_documentation()
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || o[0] >= 240; // reserved for future use
    reserved.then_some(Blocked::Reserved)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Blocked> {
    let s = ip.segments();
    if ip.is_loopback() || ip.is_unspecified() {
        return Some(Blocked::Loopback);
    }
    if (s[0] & 0xfe00) == 0xfc00 {
        return Some(Blocked::Private);
    }
    if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
        return Some(Blocked::LinkLocal);
    }
    if ip.is_multicast() {
        return Some(Blocked::Multicast);
    }
    let reserved = (s[0] == 0x2001 && s[1] == 0xdb8) // documentation
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
        || (s[0] == 0x2001 && s[1] < 0x200 && s[1] != 0) // IETF protocol assignments 2001::/23 (Teredo handled above)
        || (s[0] & 0xe000) != 0x2000; // outside global unicast 2000::/3
    reserved.then_some(Blocked::Reserved)
}

/// Classifies an address on its own (without configuration): `None` means globally routable.
pub fn classify(ip: IpAddr) -> Option<Blocked> {
    if METADATA.contains(&ip) {
        return Some(Blocked::Metadata);
    }
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(&v6) {
                if METADATA.contains(&IpAddr::V4(v4)) {
                    return Some(Blocked::Metadata);
                }
                // A transition address is as reachable as the IPv4 address it carries.
                if let Some(b) = classify_v4(v4) {
                    return Some(b);
                }
                // Mapped/compatible forms are the IPv4 address itself; others are global v6.
                return None;
            }
            classify_v6(v6)
        }
    }
}

/// The configured guard.
#[derive(Clone, Debug, Default)]
pub struct NetGuard {
    allow_private: bool,
    allowlist: Vec<IpNet>,
    own: Arc<RwLock<Vec<SocketAddr>>>,
}

impl NetGuard {
    /// Builds a guard from `upstream.allow_private_ranges` and `upstream.network_allowlist`.
    pub fn new(allow_private: bool, allowlist: Vec<IpNet>) -> Self {
        Self {
            allow_private,
            allowlist,
            own: Arc::default(),
        }
    }

    /// Records a listener of this process so it is never dialed.
    pub fn add_own_listener(&self, addr: SocketAddr) {
        if let Ok(mut own) = self.own.write() {
            own.push(addr);
        }
    }

    fn is_own(&self, addr: SocketAddr) -> bool {
        let Ok(own) = self.own.read() else {
            return true;
        };
        let ip = unwrap_mapped(addr.ip());
        own.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == ip
                    || l.ip().is_unspecified()
                    || ip.is_loopback()
                    || ip.is_unspecified())
        })
    }

    /// Checks one resolved address.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Blocked> {
        if self.is_own(addr) {
            return Err(Blocked::OwnListener);
        }
        let ip = addr.ip();
        let Some(blocked) = classify(ip) else {
            return Ok(());
        };
        if blocked == Blocked::Metadata {
            return Err(blocked);
        }
        let canonical = match ip {
            IpAddr::V6(v6) => embedded_ipv4(&v6).map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if self
            .allowlist
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            return Ok(());
        }
        let relaxable = matches!(
            blocked,
            Blocked::Loopback | Blocked::Private | Blocked::LinkLocal | Blocked::Cgnat
        );
        if self.allow_private && relaxable {
            return Ok(());
        }
        Err(blocked)
    }
}

/// The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64, 6to4, Teredo), so a
/// listener on 127.0.0.1 is recognized in every spelling.
fn unwrap_mapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_ipv4(&v6).map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sock(s: &str) -> SocketAddr {
        SocketAddr::new(ip(s), 443)
    }

    #[test]
    fn classes() {
        let cases = [
            ("127.0.0.1", Some(Blocked::Loopback)),
            ("0.0.0.0", Some(Blocked::Loopback)),
            ("0.1.2.3", Some(Blocked::Loopback)),
            ("10.1.2.3", Some(Blocked::Private)),
            ("172.16.0.1", Some(Blocked::Private)),
            ("192.168.1.1", Some(Blocked::Private)),
            ("169.254.1.1", Some(Blocked::LinkLocal)),
            ("100.64.0.1", Some(Blocked::Cgnat)),
            ("224.0.0.1", Some(Blocked::Multicast)),
            ("255.255.255.255", Some(Blocked::Multicast)),
            ("240.0.0.1", Some(Blocked::Reserved)),
            ("198.18.0.1", Some(Blocked::Reserved)),
            ("192.0.2.1", Some(Blocked::Reserved)),
            ("169.254.169.254", Some(Blocked::Metadata)),
            ("100.100.100.200", Some(Blocked::Metadata)),
            ("192.0.0.192", Some(Blocked::Metadata)),
            ("fd00:ec2::254", Some(Blocked::Metadata)),
            ("::1", Some(Blocked::Loopback)),
            ("::", Some(Blocked::Loopback)),
            ("fc00::1", Some(Blocked::Private)),
            ("fe80::1", Some(Blocked::LinkLocal)),
            ("ff02::1", Some(Blocked::Multicast)),
            ("2001:db8::1", Some(Blocked::Reserved)),
            ("8.8.8.8", None),
            ("2606:4700:4700::1111", None),
        ];
        for (addr, want) in cases {
            assert_eq!(classify(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn embedded_ipv4_spellings_are_unwrapped() {
        for addr in [
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::7f00:1",
            "2002:7f00:1::",
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo client 127.0.0.1
        ] {
            assert_eq!(classify(ip(addr)), Some(Blocked::Loopback), "{addr}");
        }
        for addr in [
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::",
        ] {
            assert_eq!(classify(ip(addr)), Some(Blocked::Metadata), "{addr}");
        }
        assert_eq!(classify(ip("::ffff:8.8.8.8")), None);
    }

    #[test]
    fn relaxations_never_open_metadata() {
        let guard = NetGuard::new(
            true,
            vec![
                "169.254.0.0/16".parse().unwrap(),
                "0.0.0.0/0".parse().unwrap(),
            ],
        );
        assert_eq!(guard.check(sock("169.254.169.254")), Err(Blocked::Metadata));
        assert_eq!(
            guard.check(sock("::ffff:169.254.169.254")),
            Err(Blocked::Metadata)
        );
        assert_eq!(guard.check(sock("127.0.0.1")), Ok(()));
        let strict = NetGuard::new(false, vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(strict.check(sock("127.0.0.1")), Ok(()));
        assert_eq!(
            strict.check(sock("::ffff:127.0.0.1")),
            Ok(()),
            "mapped form follows the allowlist too"
        );
        assert_eq!(strict.check(sock("10.0.0.1")), Err(Blocked::Private));
        let private = NetGuard::new(true, vec![]);
        assert_eq!(private.check(sock("224.0.0.1")), Err(Blocked::Multicast));
    }

    #[test]
    fn own_listeners_are_never_dialed() {
        let guard = NetGuard::new(true, vec!["0.0.0.0/0".parse().unwrap()]);
        guard.add_own_listener("127.0.0.1:14322".parse().unwrap());
        assert_eq!(
            guard.check("127.0.0.1:14322".parse().unwrap()),
            Err(Blocked::OwnListener)
        );
        assert_eq!(
            guard.check("127.0.0.2:14322".parse().unwrap()),
            Err(Blocked::OwnListener)
        );
        for spelling in [
            "[::ffff:127.0.0.1]:14322",
            "[::127.0.0.1]:14322",
            "[64:ff9b::7f00:1]:14322",
            "[2002:7f00:1::]:14322",
            "[::1]:14322",
            "0.0.0.0:14322",
        ] {
            assert_eq!(
                guard.check(spelling.parse().unwrap()),
                Err(Blocked::OwnListener),
                "{spelling}"
            );
        }
        assert_eq!(guard.check("127.0.0.1:8443".parse().unwrap()), Ok(()));
    }
}
