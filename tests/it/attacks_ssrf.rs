//! SSRF: the proxy must not become a pivot into loopback, private networks, cloud metadata or
//! itself, whatever spelling or DNS answer the agent arranges (issue 6 §2, R4, I5).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use agent_vault::proxy::upstream::Lookup;

use crate::support::agent::{self, basic};
use crate::support::{
    TestApp, TestOptions, assert_proxy_error, fetch, spawn_app_tweaked, spawn_app_with,
};

/// A DNS server played by the test: answers per host and call number, and counts the calls.
type Answer = dyn Fn(&str, usize) -> Vec<SocketAddr> + Send + Sync;

#[derive(Clone)]
struct ScriptedDns {
    answer: Arc<Answer>,
    calls: Arc<Mutex<HashMap<String, usize>>>,
}

impl ScriptedDns {
    fn new(answer: impl Fn(&str, usize) -> Vec<SocketAddr> + Send + Sync + 'static) -> Self {
        Self {
            answer: Arc::new(answer),
            calls: Arc::default(),
        }
    }

    fn calls(&self, host: &str) -> usize {
        self.calls.lock().unwrap().get(host).copied().unwrap_or(0)
    }

    /// Makes this the proxy's resolver.
    fn install(&self, app: &TestApp) {
        app.proxy_state
            .upstream
            .resolver
            .set_lookup(Some(Arc::new(self.clone())));
    }
}

/// The `Proxy-Authorization` of a proxy token for the default vault.
async fn default_vault_auth(app: &TestApp) -> String {
    let (token, _) = app.proxy_token("default").await;
    basic(&token, "default")
}

impl Lookup for ScriptedDns {
    fn lookup(
        &self,
        host: &str,
        _port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let c = calls.entry(host.to_owned()).or_default();
            *c += 1;
            *c - 1
        };
        let addrs = (self.answer)(host, n);
        Box::pin(async move {
            if addrs.is_empty() {
                Err(io::Error::new(io::ErrorKind::NotFound, "NXDOMAIN"))
            } else {
                Ok(addrs)
            }
        })
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

async fn connect_status(app: &TestApp, auth: &str, target: &str) -> (u16, String) {
    match agent::connect(app.proxy, target, Some(auth)).await {
        Ok(_) => (200, String::new()),
        Err(e) => e,
    }
}

async fn absolute_status(app: &TestApp, auth: &str, url: &str) -> String {
    let host = url.split('/').nth(2).unwrap();
    let raw = format!(
        "GET {url} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    agent::plain(app.proxy, raw.as_bytes()).await
}

const METADATA: &[&str] = &[
    "169.254.169.254:443",
    "169.254.169.254.:80",
    "[::ffff:169.254.169.254]:443",
    "[::ffff:a9fe:a9fe]:443",
    "[::a9fe:a9fe]:443",
    "[64:ff9b::a9fe:a9fe]:443",
    "[64:ff9b:1::a9fe:a9fe]:443",
    "[2002:a9fe:a9fe::]:443",
    "[2001:0:4136:e378:8000:63bf:5601:5601]:443",
    "[fd00:ec2::254]:80",
    "[fd00:0ec2:0000::0254]:80",
    "[fd20:ce::254]:80",
    "100.100.100.200:80",
    "192.0.0.192:80",
    "169.254.170.2:80",
    "meta4.attack.test:443",
    "meta6.attack.test:443",
    "nat64.attack.test:443",
];

/// Numeric spellings that `inet_aton` and browsers read as 169.254.169.254: refused as input.
const AMBIGUOUS: &[&str] = &[
    "2852039166:443",
    "0xa9fea9fe:443",
    "0251.0376.0251.0376:443",
    "169.254.43518:443",
    "0xa9.0xfe.0xa9.0xfe:443",
    "0251.254.169.254:443",
];

fn metadata_names(c: &mut agent_vault::config::Config) {
    for (name, to) in [
        ("meta4.attack.test:443", "169.254.169.254:443"),
        ("meta6.attack.test:443", "[fd00:ec2::254]:443"),
        ("nat64.attack.test:443", "[64:ff9b::a9fe:a9fe]:443"),
    ] {
        c.upstream.resolve.insert(name.into(), to.into());
    }
}

#[tokio::test]
async fn ssrf_blocked_address_classes_in_every_spelling() {
    let app = spawn_app_with(TestOptions {
        allow_loopback: false,
        tweak: Some(Box::new(metadata_names)),
        ..Default::default()
    })
    .await;
    let auth = default_vault_auth(&app).await;
    let private = [
        "127.0.0.1:443",
        "127.255.255.254:443",
        "0.0.0.0:443",
        "0.1.2.3:443",
        "[::]:443",
        "[::1]:443",
        "10.0.0.1:443",
        "172.16.0.1:443",
        "192.168.0.1:443",
        "169.254.1.1:443",
        "100.64.0.1:443",
        "224.0.0.1:443",
        "255.255.255.255:443",
        "240.0.0.1:443",
        "198.18.0.1:443",
        "[fe80::1]:443",
        "[fc00::1]:443",
        "[fd12:3456::1]:443",
        "[ff02::1]:443",
        "[::ffff:10.0.0.1]:443",
        "[64:ff9b::a00:1]:443",
        "[64:ff9b::7f00:1]:443",
        "[2002:c0a8:1::]:443",
        "[2002:7f00:1::]:443",
    ];
    for target in private.iter().chain(METADATA) {
        let (code, head) = connect_status(&app, &auth, target).await;
        assert_eq!(code, 403, "{target}: {head}");
        assert!(
            head.contains("x-agent-vault-proxy-error: blocked_destination"),
            "{target}: {head}"
        );
    }
    for target in AMBIGUOUS {
        let (code, head) = connect_status(&app, &auth, target).await;
        assert_eq!(code, 400, "{target}: {head}");
    }
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://127.0.0.1/",
        "http://10.0.0.1/",
        "http://meta4.attack.test:443/",
    ] {
        let out = absolute_status(&app, &auth, url).await;
        assert!(
            out.starts_with("HTTP/1.1 403") && out.contains("blocked_destination"),
            "{url}: {out}"
        );
    }
    assert_eq!(app.upstream.count(), 0);
}

#[tokio::test]
async fn ssrf_metadata_stays_blocked_when_every_range_is_allowlisted() {
    let app = spawn_app_tweaked(|c| {
        c.upstream.allow_private_ranges = true;
        c.upstream.network_allowlist = vec![
            "0.0.0.0/0".parse().unwrap(),
            "::/0".parse().unwrap(),
            "169.254.0.0/16".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ];
        metadata_names(c);
    })
    .await;
    let auth = default_vault_auth(&app).await;
    for target in METADATA {
        let (code, head) = connect_status(&app, &auth, target).await;
        assert_eq!(code, 403, "{target}: {head}");
        assert!(head.contains("blocked_destination"), "{target}: {head}");
    }
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:a9fe:a9fe]/",
    ] {
        let out = absolute_status(&app, &auth, url).await;
        assert!(out.starts_with("HTTP/1.1 403"), "{url}: {out}");
    }
}

/// With every range allowlisted, the proxy still never dials its own admin API or itself.
#[tokio::test]
async fn ssrf_own_listeners_are_never_dialed() {
    let app = spawn_app_tweaked(|c| {
        c.upstream.allow_private_ranges = true;
        c.upstream.network_allowlist = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    })
    .await;
    let admin_port: u16 = app.admin.rsplit(':').next().unwrap().parse().unwrap();
    let proxy_port = app.proxy.port();
    let dns = ScriptedDns::new(move |_, _| vec![SocketAddr::from(([127, 0, 0, 1], admin_port))]);
    dns.install(&app);
    let auth = default_vault_auth(&app).await;
    for target in [
        format!("127.0.0.1:{proxy_port}"),
        format!("127.0.0.2:{proxy_port}"),
        format!("[::1]:{proxy_port}"),
        format!("127.0.0.1:{admin_port}"),
        format!("[::ffff:127.0.0.1]:{admin_port}"),
        format!("[64:ff9b::7f00:1]:{admin_port}"),
        format!("0.0.0.0:{admin_port}"),
        format!("[::]:{admin_port}"),
        format!("self.attack.test:{admin_port}"),
    ] {
        let (code, head) = connect_status(&app, &auth, &target).await;
        assert_eq!(code, 403, "{target}: {head}");
        assert!(head.contains("blocked_destination"), "{target}: {head}");
    }
    let out = absolute_status(
        &app,
        &auth,
        &format!("http://127.0.0.1:{admin_port}/v1/health"),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("blocked_destination"),
        "the admin API is not reachable through the proxy: {out}"
    );
}

/// A DNS answer that mixes an allowed address with a blocked one is refused whole.
#[tokio::test]
async fn ssrf_mixed_dns_answers_are_refused() {
    let app = spawn_app_with(TestOptions::default()).await;
    let up = app.upstream.addr;
    let dns = ScriptedDns::new(move |host, _| match host {
        "good.attack.test" => vec![up],
        "mixed.attack.test" => vec![up, SocketAddr::new([10, 0, 0, 1].into(), up.port())],
        "mixed-meta.attack.test" => {
            vec![SocketAddr::new([169, 254, 169, 254].into(), up.port()), up]
        }
        "mixed-v6.attack.test" => vec![up, sa(&format!("[fd00:ec2::254]:{}", up.port()))],
        _ => vec![],
    });
    dns.install(&app);
    let auth = default_vault_auth(&app).await;
    let port = up.port();
    let (code, head) = connect_status(&app, &auth, &format!("good.attack.test:{port}")).await;
    assert_eq!(code, 200, "the allowlisted answer alone is fine: {head}");
    for host in [
        "mixed.attack.test",
        "mixed-meta.attack.test",
        "mixed-v6.attack.test",
    ] {
        let (code, head) = connect_status(&app, &auth, &format!("{host}:{port}")).await;
        assert_eq!(code, 403, "{host}: {head}");
        assert!(head.contains("blocked_destination"), "{host}: {head}");
    }
}

/// DNS rebinding: the name answers differently on every lookup. Each dial resolves exactly once
/// and connects to the address it checked, for intercepted requests and spliced tunnels alike.
#[tokio::test]
async fn ssrf_rebinding_between_check_and_dial() {
    let app = spawn_app_tweaked(|c| c.upstream.resolve.clear()).await;
    let up = app.upstream.addr;
    let meta = SocketAddr::new([169, 254, 169, 254].into(), 443);
    // Even calls answer with the metadata address, odd calls with the (allowlisted) upstream.
    let dns = ScriptedDns::new(move |_, n| vec![if n % 2 == 0 { meta } else { up }]);
    dns.install(&app);
    let token = app.stripe_vault("rebind", "sk_rebind_value").await;
    let agent = app.agent(&token, "rebind").await;
    let resp = fetch(agent.get("https://api.example.test/one")).await;
    assert_proxy_error(&resp, 403, "blocked_destination");
    assert_eq!(dns.calls("api.example.test"), 1, "one lookup per dial");
    assert_eq!(app.upstream.count(), 0);
    let resp = fetch(agent.get("https://api.example.test/two")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(dns.calls("api.example.test"), 2, "one lookup per dial");
    assert_eq!(
        app.upstream.last().header("authorization").as_deref(),
        Some("Bearer sk_rebind_value")
    );
    // The pooled connection goes to the address that was checked; no new lookup.
    let resp = fetch(agent.get("https://api.example.test/three")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(dns.calls("api.example.test"), 2);
    // Spliced tunnels: one lookup per CONNECT, dialing what was checked.
    let auth = default_vault_auth(&app).await;
    let target = format!("rebind.attack.test:{}", up.port());
    for (i, want) in [403u16, 200, 403, 200].into_iter().enumerate() {
        let (code, head) = connect_status(&app, &auth, &target).await;
        assert_eq!(code, want, "CONNECT #{i}: {head}");
        assert_eq!(dns.calls("rebind.attack.test"), i + 1);
    }
}
