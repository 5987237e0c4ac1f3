//! Proxy benchmark: one client, measured in the same run against a fast HTTPS upstream directly
//! and through the real `agent-vault server` process, printed as a table of ratios.
//!
//! Run: `cargo bench --bench proxy` (options after `--`: `--seconds N` per throughput phase,
//! `--tunnels N` idle tunnels, `--json FILE`). See the README's "Benchmark" section.
//!
//! Every response is checked: the upstream answers 401 unless the request carries the vault's
//! credential, so a 200 through the proxy proves the credential was attached.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const HOST: &str = "bench.example.test";
const CREDENTIAL: &str = "sk_bench_7f3a9c0e5d1b42a8";
const SMALL: &[u8; 100] = &[b'x'; 100];
const BIG_LEN: usize = 10 * 1000 * 1000;
const BIG_CHUNK: usize = 64 * 1024;
const SSE_EVENTS: usize = 50;
const SSE_GAP: Duration = Duration::from_millis(20);
const ECHO_LEN: usize = 16 * 1024;
/// Downloads measured per route (each takes only milliseconds; the median smooths the noise).
const DOWNLOADS: usize = 15;
const MASTER_PASSWORD: &str = "benchmark master password";

type UpBody = BoxBody<Bytes, hyper::Error>;

// ---------------------------------------------------------------------------------------------
// The upstream: a minimal hyper HTTP/1.1 server over rustls, as fast as we can make it.

/// Counts what the upstream saw, so credential delivery is checked, not assumed.
#[derive(Default)]
struct UpstreamCounters {
    connections: AtomicU64,
    authorized: AtomicU64,
    refused: AtomicU64,
}

fn full(status: StatusCode, body: Bytes) -> Response<UpBody> {
    let mut resp = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp
}

fn upstream_handle(req: Request<Incoming>, counters: &UpstreamCounters) -> Response<UpBody> {
    let expected = format!("Bearer {CREDENTIAL}");
    if req
        .headers()
        .get(header::AUTHORIZATION)
        .is_none_or(|v| v.as_bytes() != expected.as_bytes())
    {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        return full(
            StatusCode::UNAUTHORIZED,
            Bytes::from_static(b"no credential"),
        );
    }
    counters.authorized.fetch_add(1, Ordering::Relaxed);
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/small") => full(StatusCode::OK, Bytes::from_static(SMALL)),
        (&Method::GET, "/big") => {
            let chunk = Bytes::from(vec![b'b'; BIG_CHUNK]);
            let mut left = BIG_LEN;
            let stream = futures_util::stream::iter(std::iter::from_fn(move || {
                if left == 0 {
                    return None;
                }
                let n = left.min(BIG_CHUNK);
                left -= n;
                Some(Ok::<_, hyper::Error>(Frame::data(chunk.slice(..n))))
            }));
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, BIG_LEN.into());
            resp
        }
        (&Method::GET, "/sse") => {
            let stream = futures_util::stream::unfold(0usize, |i| async move {
                if i == SSE_EVENTS {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(SSE_GAP).await;
                }
                let event = Bytes::from(format!("data: {{\"token\":{i}}}\n\n"));
                Some((Ok::<_, hyper::Error>(Frame::data(event)), i + 1))
            });
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            resp
        }
        (&Method::POST, "/echo") => Response::new(req.into_body().boxed()),
        _ => full(StatusCode::NOT_FOUND, Bytes::new()),
    }
}

/// Starts the upstream on a runtime of its own, as a real upstream runs in its own process.
/// On the client's runtime, a 10 MB response was written in one long task poll while the
/// client's socket events waited behind it (`perf record` on system-call tracepoints: 5.7 ms
/// of upstream writes before the client read its first byte), which skewed time to first byte
/// on both routes.
fn start_upstream(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    counters: Arc<UpstreamCounters>,
    h2: bool,
) -> Result<SocketAddr> {
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, usize::from))
        .thread_name("upstream")
        .enable_all()
        .build()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("register the upstream listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                counters.connections.fetch_add(1, Ordering::Relaxed);
                let (acceptor, counters) = (acceptor.clone(), counters.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        let resp = upstream_handle(req, &counters);
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    }
                });
            }
        })
    });
    Ok(addr)
}

/// The upstream's own CA (the proxy trusts it through `upstream.extra_ca_files`).
fn upstream_pki() -> Result<(String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "agent-vault bench upstream CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::DnsName(HOST.try_into()?)];
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((
        ca_cert.pem(),
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

// ---------------------------------------------------------------------------------------------
// The proxy: the real server binary, configured through a file like a user would.

struct Server {
    child: tokio::process::Child,
    pid: i32,
    admin: String,
    proxy: SocketAddr,
}

async fn start_server(dir: &Path, upstream: SocketAddr, upstream_ca: &Path) -> Result<Server> {
    use tokio::io::AsyncBufReadExt;
    let config = dir.join("agent-vault.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n\
             [server]\nport = 0\nproxy_port = 0\n\
             [upstream]\nroots = \"none\"\nextra_ca_files = [{ca:?}]\n\
             network_allowlist = [\"127.0.0.0/8\"]\n\
             [upstream.resolve]\n\"{HOST}:443\" = \"{upstream}\"\n\
             [kdf]\nmemory_kib = 64\niterations = 1\nparallelism = 1\n",
            data = dir.join("data"),
            ca = upstream_ca,
        ),
    )?;
    // AGENT_VAULT_BENCH_BIN runs another build of the server (A/B comparisons in one session).
    let bin = std::env::var_os("AGENT_VAULT_BENCH_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_agent-vault").into());
    let mut child = tokio::process::Command::new(bin)
        .arg("server")
        .arg("--config")
        .arg(&config)
        .env("AGENT_VAULT_MASTER_PASSWORD", MASTER_PASSWORD)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("server.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting agent-vault server")?;
    let pid = child.id().context("server pid")? as i32;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let (mut admin, mut proxy) = (None, None);
    while admin.is_none() || proxy.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("server start timed out")??
            .with_context(|| {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                format!("server exited before listening:\n{log}")
            })?;
        if let Some(a) = line.strip_prefix("admin API: ") {
            admin = Some(a.trim().to_owned());
        }
        if let Some(p) = line.strip_prefix("proxy:") {
            proxy = Some(p.trim().parse()?);
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server {
        child,
        pid,
        admin: admin.context("admin address")?,
        proxy: proxy.context("proxy address")?,
    })
}

/// Owner, vault `bench`, its credential and a bearer service for the upstream host; returns a
/// proxy token and the proxy's CA.
async fn provision(server: &Server, data_dir: &Path) -> Result<(String, String)> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let setup = std::fs::read_to_string(data_dir.join("setup-token"))?;
    let call = |method: Method, path: &str, token: Option<&str>, body: Value| {
        let mut req = http
            .request(method, format!("{}{path}", server.admin))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let path = path.to_owned();
        async move {
            let resp = req.send().await?;
            let status = resp.status();
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!("{path}: {status} {value}");
            }
            Ok(value)
        }
    };
    let owner = call(
        Method::POST,
        "/v1/auth/register",
        None,
        json!({"email": "bench@example.com", "password": "bench-password-1", "setup_token": setup.trim()}),
    )
    .await?["token"]
        .as_str()
        .context("owner token")?
        .to_owned();
    let owner = Some(owner.as_str());
    call(Method::POST, "/v1/vaults", owner, json!({"name": "bench"})).await?;
    call(
        Method::PUT,
        "/v1/vaults/bench/credentials",
        owner,
        json!({"credentials": {"BENCH_KEY": CREDENTIAL}}),
    )
    .await?;
    let services = agent_vault::policy::service::parse_service_file(&format!(
        "- name: bench\n  host: {HOST}\n  auth: {{type: bearer, token: BENCH_KEY}}\n"
    ))
    .map_err(anyhow::Error::msg)?;
    call(
        Method::PUT,
        "/v1/vaults/bench/services",
        owner,
        json!({"services": services}),
    )
    .await?;
    let token = call(
        Method::POST,
        "/v1/vaults/bench/tokens",
        owner,
        json!({"ttl_seconds": 86400}),
    )
    .await?["token"]
        .as_str()
        .context("proxy token")?
        .to_owned();
    let ca = http
        .get(format!("{}/v1/ca.pem", server.admin))
        .send()
        .await?
        .text()
        .await?;
    Ok((token, ca))
}

/// The proxy's resident memory, from /proc.
fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The proxy's user + system CPU time (Linux reports both in USER_HZ = 100 ticks per second).
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

// ---------------------------------------------------------------------------------------------
// The client: identical for both routes except how the TLS stream is obtained.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Direct,
    Proxy,
}

struct Target {
    upstream: SocketAddr,
    proxy: SocketAddr,
    proxy_authorization: String,
    direct_tls: TlsConnector,
    proxy_tls: TlsConnector,
}

fn client_tls(ca_pem: &str) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every new connection pays for full handshakes, on both routes.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

type Sender = SendRequest<Full<Bytes>>;

impl Target {
    async fn open(&self, route: Route) -> Result<Sender> {
        let name = ServerName::try_from(HOST)?;
        let tls = match route {
            Route::Direct => {
                let tcp = TcpStream::connect(self.upstream).await?;
                tcp.set_nodelay(true)?;
                self.direct_tls.connect(name, tcp).await?
            }
            Route::Proxy => {
                let mut tcp = TcpStream::connect(self.proxy).await?;
                tcp.set_nodelay(true)?;
                let connect = format!(
                    "CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nProxy-Authorization: {}\r\n\r\n",
                    self.proxy_authorization
                );
                tcp.write_all(connect.as_bytes()).await?;
                // The proxy sends nothing after its answer until we speak TLS.
                let mut head = Vec::with_capacity(128);
                let mut buf = [0u8; 256];
                while !head.ends_with(b"\r\n\r\n") {
                    let n = tcp.read(&mut buf).await?;
                    if n == 0 {
                        bail!("proxy closed during CONNECT");
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                if !head.starts_with(b"HTTP/1.1 200") {
                    bail!("CONNECT refused: {}", String::from_utf8_lossy(&head));
                }
                self.proxy_tls.connect(name, tcp).await?
            }
        };
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }
}

fn request(route: Route, method: Method, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, HOST);
    if route == Route::Direct {
        // Directly, the client holds the secret; through the proxy it never does.
        req = req.header(header::AUTHORIZATION, format!("Bearer {CREDENTIAL}"));
    }
    req.body(Full::new(body)).unwrap()
}

/// Sends one request, reads the whole body, checks status and length.
async fn exchange(send: &mut Sender, req: Request<Full<Bytes>>, expect_len: usize) -> Result<()> {
    send.ready().await?;
    let resp = send.send_request(req).await?;
    if resp.status() != StatusCode::OK {
        bail!("status {}", resp.status());
    }
    let body = resp.into_body().collect().await?.to_bytes();
    if body.len() != expect_len {
        bail!("body of {} bytes, expected {expect_len}", body.len());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Measurements.

#[derive(Default)]
struct Sample {
    ok: u64,
    failures: u64,
    /// Requests sent, warm-up included (for CPU per request).
    sent: u64,
    seconds: f64,
    latencies: Vec<Duration>,
}

/// Results of several runs of one route that pool into one.
trait Pooled: Default {
    fn merge(&mut self, other: Self);
}

impl Pooled for Sample {
    fn merge(&mut self, other: Sample) {
        self.ok += other.ok;
        self.failures += other.failures;
        self.sent += other.sent;
        self.seconds += other.seconds;
        self.latencies.extend(other.latencies);
    }
}

impl Sample {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
    fn pct_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut l = self.latencies.clone();
        l.sort_unstable();
        let i = ((l.len() as f64 * q) as usize).min(l.len() - 1);
        l[i].as_secs_f64() * 1e3
    }
}

#[derive(Clone, Copy)]
enum Work {
    Small,
    Echo,
}

/// `concurrency` keep-alive connections, each sending requests back to back for `secs`
/// (after a warm-up that is not counted).
async fn keep_alive(
    target: &Arc<Target>,
    route: Route,
    concurrency: usize,
    work: Work,
    secs: f64,
) -> Result<Sample> {
    let warm = Duration::from_millis(500);
    let mut senders = Vec::new();
    for _ in 0..concurrency {
        senders.push(target.open(route).await?);
    }
    let echo = Bytes::from(vec![b'e'; ECHO_LEN]);
    let start = Instant::now();
    let (measure_from, until) = (start + warm, start + warm + Duration::from_secs_f64(secs));
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut send| {
            let echo = echo.clone();
            tokio::spawn(async move {
                let mut s = Sample::default();
                loop {
                    let t0 = Instant::now();
                    if t0 >= until {
                        break;
                    }
                    let result = match work {
                        Work::Small => {
                            exchange(
                                &mut send,
                                request(route, Method::GET, "/small", Bytes::new()),
                                SMALL.len(),
                            )
                            .await
                        }
                        Work::Echo => {
                            exchange(
                                &mut send,
                                request(route, Method::POST, "/echo", echo.clone()),
                                ECHO_LEN,
                            )
                            .await
                        }
                    };
                    s.sent += 1;
                    if t0 < measure_from {
                        if result.is_err() {
                            s.failures += 1;
                        }
                        continue;
                    }
                    match result {
                        Ok(()) => {
                            s.ok += 1;
                            s.latencies.push(t0.elapsed());
                        }
                        Err(_) => {
                            s.failures += 1;
                            break;
                        }
                    }
                }
                s
            })
        })
        .collect();
    let mut all = Sample::default();
    for t in tasks {
        all.merge(t.await?);
    }
    all.seconds = secs;
    Ok(all)
}

/// Direct and proxy runs alternate in this many rounds and are pooled per route: load from a
/// neighbour on the shared machine then weighs on both routes alike instead of on whichever
/// happened to run during it (single runs of the direct route varied by a third).
const ROUNDS: u32 = 3;

/// `measure` on both routes in [`ROUNDS`] alternating rounds, pooled per route; also the CPU
/// seconds each route took (see [`Cpu`]).
async fn alternate<T, F, Fut>(pid: i32, mut measure: F) -> Result<(T, T, Cpu)>
where
    T: Pooled,
    F: FnMut(Route) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let (mut direct, mut proxy, mut cpu) = (T::default(), T::default(), Cpu::default());
    let me = i32::try_from(std::process::id())?;
    for _ in 0..ROUNDS {
        let ours = cpu_seconds(me);
        direct.merge(measure(Route::Direct).await?);
        let (ours_between, proxy0) = (cpu_seconds(me), cpu_seconds(pid));
        cpu.client_direct += ours_between - ours;
        proxy.merge(measure(Route::Proxy).await?);
        cpu.proxy += cpu_seconds(pid) - proxy0;
        cpu.client_proxy += cpu_seconds(me) - ours_between;
    }
    Ok((direct, proxy, cpu))
}

/// CPU seconds spent during the proxy runs by the proxy, and during each route's runs by this
/// process (the client and the upstream): what the proxy costs the machine besides its own
/// time.
#[derive(Default)]
struct Cpu {
    proxy: f64,
    client_direct: f64,
    client_proxy: f64,
}

/// A new connection for every request: TCP, (CONNECT,) full TLS handshakes, one GET.
async fn new_connections(
    target: &Arc<Target>,
    route: Route,
    concurrency: usize,
    secs: f64,
) -> Result<Sample> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut s = Sample::default();
                while Instant::now() < until {
                    let t0 = Instant::now();
                    let result = async {
                        let mut send = target.open(route).await?;
                        exchange(
                            &mut send,
                            request(route, Method::GET, "/small", Bytes::new()),
                            SMALL.len(),
                        )
                        .await
                    }
                    .await;
                    match result {
                        Ok(()) => {
                            s.ok += 1;
                            s.latencies.push(t0.elapsed());
                        }
                        Err(_) => s.failures += 1,
                    }
                }
                s
            })
        })
        .collect();
    let mut all = Sample::default();
    for t in tasks {
        all.merge(t.await?);
    }
    all.seconds = secs;
    Ok(all)
}

#[derive(Default)]
struct Download {
    /// Per download.
    ttfb_ms: Vec<f64>,
    /// Per download.
    mb_per_s: Vec<f64>,
    rss_growth: u64,
    failures: u64,
}

impl Pooled for Download {
    fn merge(&mut self, other: Download) {
        self.ttfb_ms.extend(other.ttfb_ms);
        self.mb_per_s.extend(other.mb_per_s);
        self.rss_growth = self.rss_growth.max(other.rss_growth);
        self.failures += other.failures;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// [`DOWNLOADS`] 10 MB downloads on one connection (after one more to warm up): time to
/// first byte and MB/s, and the proxy's peak RSS above its level before the first download.
async fn download(target: &Arc<Target>, route: Route, pid: i32) -> Result<Download> {
    let mut send = target.open(route).await?;
    exchange(
        &mut send,
        request(route, Method::GET, "/small", Bytes::new()),
        SMALL.len(),
    )
    .await?;
    let before = rss_bytes(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let (mut ttfb, mut rate, mut failures) = (Vec::new(), Vec::new(), 0);
    // The first download warms TCP windows and buffers on every hop; it is not counted.
    for round in 0..=DOWNLOADS {
        let t0 = Instant::now();
        let result: Result<(f64, f64)> = async {
            send.ready().await?;
            let resp = send
                .send_request(request(route, Method::GET, "/big", Bytes::new()))
                .await?;
            if resp.status() != StatusCode::OK {
                bail!("status {}", resp.status());
            }
            let mut body = resp.into_body();
            let (mut first, mut n) = (None, 0usize);
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    first.get_or_insert_with(|| t0.elapsed());
                    n += data.len();
                }
            }
            if n != BIG_LEN {
                bail!("downloaded {n} bytes");
            }
            let secs = t0.elapsed().as_secs_f64();
            Ok((
                first.unwrap_or_default().as_secs_f64() * 1e3,
                n as f64 / 1e6 / secs,
            ))
        }
        .await;
        match result {
            Ok(_) if round == 0 => {}
            Ok((t, r)) => {
                ttfb.push(t);
                rate.push(r);
            }
            Err(_) => failures += 1,
        }
    }
    done.store(true, Ordering::Relaxed);
    sampler.await?;
    Ok(Download {
        ttfb_ms: ttfb,
        mb_per_s: rate,
        rss_growth: peak.load(Ordering::Relaxed).saturating_sub(before),
        failures,
    })
}

/// Time from sending the request to the first SSE event, median of five streams of 50 events
/// (every stream is read to the end and its events counted).
async fn sse(target: &Arc<Target>, route: Route) -> Result<(f64, u64)> {
    let mut send = target.open(route).await?;
    let (mut first, mut failures) = (Vec::new(), 0);
    for _ in 0..5 {
        let t0 = Instant::now();
        let result: Result<f64> = async {
            send.ready().await?;
            let resp = send
                .send_request(request(route, Method::GET, "/sse", Bytes::new()))
                .await?;
            if resp.status() != StatusCode::OK {
                bail!("status {}", resp.status());
            }
            let mut body = resp.into_body();
            let (mut at, mut text) = (None, Vec::new());
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    at.get_or_insert_with(|| t0.elapsed());
                    text.extend_from_slice(&data);
                }
            }
            let events = text.windows(6).filter(|w| w == b"data: ").count();
            if events != SSE_EVENTS {
                bail!("{events} events");
            }
            Ok(at.unwrap_or_default().as_secs_f64() * 1e3)
        }
        .await;
        match result {
            Ok(ms) => first.push(ms),
            Err(_) => failures += 1,
        }
    }
    Ok((median(first), failures))
}

/// The proxy's RSS around `n` idle intercepted tunnels.
struct Tunnels {
    /// Before any is opened.
    before: u64,
    /// With all open: CONNECT authenticated, TLS with the proxy's leaf completed.
    handshaken: u64,
    /// After one request on each, all idle again (HTTP state and buffers now exist).
    used: u64,
    failures: u64,
}

/// Opens `n` authenticated, TLS-intercepted tunnels and measures the proxy's RSS with all of
/// them idle: first straight after the handshakes, then after one request on each.
async fn idle_tunnels(target: &Arc<Target>, n: usize, pid: i32) -> Result<Tunnels> {
    const WORKERS: usize = 32;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_bytes(pid);
    let next = Arc::new(AtomicU64::new(0));
    let openers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (target, next) = (target.clone(), next.clone());
            tokio::spawn(async move {
                let (mut opened, mut failures) = (Vec::new(), 0u64);
                while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                    match target.open(Route::Proxy).await {
                        Ok(send) => opened.push(send),
                        Err(_) => failures += 1,
                    }
                }
                (opened, failures)
            })
        })
        .collect();
    let (mut groups, mut failures) = (Vec::new(), 0);
    for o in openers {
        let (opened, f) = o.await?;
        groups.push(opened);
        failures += f;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let handshaken = rss_bytes(pid);
    let users: Vec<_> = groups
        .into_iter()
        .map(|mut group| {
            tokio::spawn(async move {
                let mut failures = 0u64;
                for send in &mut group {
                    let req = request(Route::Proxy, Method::GET, "/small", Bytes::new());
                    if exchange(send, req, SMALL.len()).await.is_err() {
                        failures += 1;
                    }
                }
                (group, failures)
            })
        })
        .collect();
    let mut groups = Vec::new();
    for u in users {
        let (group, f) = u.await?;
        groups.push(group);
        failures += f;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = rss_bytes(pid);
    let closed = groups.iter().flatten().filter(|s| s.is_closed()).count() as u64;
    Ok(Tunnels {
        before,
        handshaken,
        used,
        failures: failures + closed,
    })
}

// ---------------------------------------------------------------------------------------------
// Report.

struct Row {
    name: String,
    direct: Option<f64>,
    proxy: f64,
    /// How the proxy figure compares with its target, and whether it meets it.
    target: Option<(String, bool)>,
}

/// A phase's rate, p50 and p99 rows (names `rate` and `{prefix}: p50 ms`, ...), with the
/// rate's and the p50's targets.
fn sample_rows(
    rows: &mut Vec<Row>,
    (rate, prefix): (&str, &str),
    (direct, proxy): (&Sample, &Sample),
    rate_target: Option<(String, bool)>,
    p50_target: Option<(String, bool)>,
) {
    rows.push(row(rate, Some(direct.rate()), proxy.rate(), rate_target));
    rows.push(row(
        &format!("{prefix}: p50 ms"),
        Some(direct.pct_ms(0.5)),
        proxy.pct_ms(0.5),
        p50_target,
    ));
    rows.push(row(
        &format!("{prefix}: p99 ms"),
        Some(direct.pct_ms(0.99)),
        proxy.pct_ms(0.99),
        None,
    ));
}

fn row(name: &str, direct: Option<f64>, proxy: f64, target: Option<(String, bool)>) -> Row {
    Row {
        name: name.to_owned(),
        direct,
        proxy,
        target,
    }
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n| {:<56} | {:>10} | {:>10} | {:>8} | {:<22} |",
        "measurement", "direct", "proxy", "ratio", "target"
    );
    println!(
        "|{:-<58}|{:->12}|{:->12}|{:->10}|{:-<24}|",
        "", "", "", "", ""
    );
    for r in rows {
        let ratio = r
            .direct
            .map_or("-".to_owned(), |d| format!("{:.2}x", r.proxy / d));
        let target = r.target.as_ref().map_or(String::new(), |(t, ok)| {
            format!("{t} {}", if *ok { "met" } else { "NOT MET" })
        });
        println!(
            "| {:<56} | {:>10} | {:>10} | {:>8} | {:<22} |",
            r.name,
            r.direct.map_or("-".to_owned(), fmt_num),
            fmt_num(r.proxy),
            ratio,
            target
        );
    }
}

struct Options {
    /// Phases to run (all when empty).
    only: Vec<String>,
    secs: f64,
    tunnels: usize,
    json: PathBuf,
    /// Whether the upstream offers h2 by ALPN (the client always speaks HTTP/1.1).
    upstream_h2: bool,
}

/// The measurement phases, in the order they run.
const PHASES: &[&str] = &["keepalive", "newconn", "download", "sse", "echo", "tunnels"];

impl Options {
    fn runs(&self, phase: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == phase)
    }
}

fn options() -> Result<Options> {
    let mut o = Options {
        only: Vec::new(),
        secs: 5.0,
        tunnels: 10_000,
        json: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-proxy.json"),
        upstream_h2: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => o.secs = args.next().context("--seconds N")?.parse()?,
            "--tunnels" => o.tunnels = args.next().context("--tunnels N")?.parse()?,
            "--json" => o.json = args.next().context("--json FILE")?.into(),
            "--upstream-h2" => o.upstream_h2 = true,
            "--only" => {
                o.only = args
                    .next()
                    .context("--only PHASE,...")?
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = o.only.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    bail!("unknown phase {bad} (phases: {})", PHASES.join(","));
                }
            }
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            other => bail!(
                "unknown option {other} (known: --seconds N, --tunnels N, --json FILE, --only PHASE,..., --upstream-h2)"
            ),
        }
    }
    Ok(o)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cores} cores, {cpu}")
}

fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let opts = options()?;
    // The client's runtime; the upstream has its own, and all share the cores with the proxy.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, usize::from))
        .enable_all()
        .build()?
        .block_on(run(opts))
}

async fn run(opts: Options) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca_pem, chain, key) = upstream_pki()?;
    let ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca_pem)?;
    let counters = Arc::new(UpstreamCounters::default());
    let upstream = start_upstream(chain, key, counters.clone(), opts.upstream_h2)?;
    let mut server = start_server(dir.path(), upstream, &ca_file).await?;
    let (token, proxy_ca) = provision(&server, &dir.path().join("data")).await?;
    let pid = server.pid;
    let target = Arc::new(Target {
        upstream,
        proxy: server.proxy,
        proxy_authorization: format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{token}:bench"))
        ),
        direct_tls: client_tls(&ca_pem)?,
        proxy_tls: client_tls(&proxy_ca)?,
    });
    println!("agent-vault proxy benchmark on {}", machine());
    println!(
        "phases of {} s; {} idle tunnels; upstream offers {}",
        opts.secs,
        opts.tunnels,
        if opts.upstream_h2 {
            "h2 and HTTP/1.1"
        } else {
            "HTTP/1.1 only"
        }
    );
    let secs = opts.secs;
    let round = secs / f64::from(ROUNDS);
    let mut failures = 0;
    let mut rows = Vec::new();
    let mut json = serde_json::Map::new();

    // Keep-alive, concurrency 1.
    if opts.runs("keepalive") {
        let (d1, p1, _) = alternate(pid, |route| {
            keep_alive(&target, route, 1, Work::Small, round)
        })
        .await?;
        failures += d1.failures + p1.failures;
        let added = p1.pct_ms(0.5) - d1.pct_ms(0.5);
        sample_rows(
            &mut rows,
            ("keep-alive GET 100 B, c=1: req/s", "keep-alive c=1"),
            (&d1, &p1),
            None,
            Some(("+<=0.2 ms".into(), added <= 0.2)),
        );

        // Keep-alive, concurrency 32, with the proxy's CPU time.
        let (d32, p32, cpu) = alternate(pid, |route| {
            keep_alive(&target, route, 32, Work::Small, round)
        })
        .await?;
        let per_10k = |seconds: f64, sent: u64| seconds / sent as f64 * 10_000.0;
        let cpu_per_10k = per_10k(cpu.proxy, p32.sent);
        failures += d32.failures + p32.failures;
        let ratio = p32.rate() / d32.rate();
        sample_rows(
            &mut rows,
            ("keep-alive GET 100 B, c=32: req/s", "keep-alive c=32"),
            (&d32, &p32),
            Some((">=0.4x".into(), ratio >= 0.4)),
            None,
        );
        rows.push(row(
            "proxy CPU seconds per 10,000 requests",
            None,
            cpu_per_10k,
            None,
        ));
        rows.push(row(
            "client + upstream CPU seconds per 10,000 requests",
            Some(per_10k(cpu.client_direct, d32.sent)),
            per_10k(cpu.client_proxy, p32.sent),
            None,
        ));
    }

    // New connection per request, concurrency 32.
    if opts.runs("newconn") {
        let (dn, pn, _) =
            alternate(pid, |route| new_connections(&target, route, 32, round)).await?;
        failures += dn.failures + pn.failures;
        let ratio = pn.rate() / dn.rate();
        sample_rows(
            &mut rows,
            ("new connection per GET, c=32: conn/s", "new connection"),
            (&dn, &pn),
            Some((">=0.7x".into(), ratio >= 0.7)),
            None,
        );
    }

    // 10 MB download.
    if opts.runs("download") {
        let (dd, pd, _) = alternate(pid, |route| download(&target, route, pid)).await?;
        failures += dd.failures + pd.failures;
        let (d_rate, p_rate) = (median(dd.mb_per_s), median(pd.mb_per_s));
        let ratio = p_rate / d_rate;
        rows.push(row(
            "10 MB download: time to first byte ms",
            Some(median(dd.ttfb_ms)),
            median(pd.ttfb_ms),
            None,
        ));
        rows.push(row(
            "10 MB download: MB/s",
            Some(d_rate),
            p_rate,
            Some((">=0.7x".into(), ratio >= 0.7)),
        ));
        let growth_mb = pd.rss_growth as f64 / 1e6;
        rows.push(row(
            "10 MB download: proxy RSS growth MB",
            None,
            growth_mb,
            Some(("<16 MB".into(), growth_mb < 16.0)),
        ));
    }

    // SSE.
    if opts.runs("sse") {
        let (ds, dsf) = sse(&target, Route::Direct).await?;
        let (ps, psf) = sse(&target, Route::Proxy).await?;
        failures += dsf + psf;
        rows.push(row(
            "SSE 50 events: first event ms",
            Some(ds),
            ps,
            Some(("+<=1 ms".into(), ps - ds <= 1.0)),
        ));
    }

    // 16 KiB POST echo.
    if opts.runs("echo") {
        let (de, pe, _) = alternate(pid, |route| {
            keep_alive(&target, route, 32, Work::Echo, round)
        })
        .await?;
        failures += de.failures + pe.failures;
        rows.push(row(
            "16 KiB POST echo, c=32: req/s",
            Some(de.rate()),
            pe.rate(),
            None,
        ));
    }

    // Idle intercepted tunnels.
    if opts.runs("tunnels") {
        let t = idle_tunnels(&target, opts.tunnels, pid).await?;
        failures += t.failures;
        let n = opts.tunnels.max(1) as f64;
        let mb = |b: u64| b as f64 / 1e6;
        let per = |b: u64| b.saturating_sub(t.before) as f64 / 1024.0 / n;
        rows.push(row("proxy RSS, no tunnels: MB", None, mb(t.before), None));
        rows.push(row(
            &format!(
                "proxy RSS, {} idle tunnels (handshake only): MB",
                opts.tunnels
            ),
            None,
            mb(t.handshaken),
            Some(("<=300 MB".into(), mb(t.handshaken) <= 300.0)),
        ));
        rows.push(row(
            "  per tunnel, handshake only: KiB",
            None,
            per(t.handshaken),
            None,
        ));
        rows.push(row(
            &format!(
                "proxy RSS, {} idle tunnels (after a request each): MB",
                opts.tunnels
            ),
            None,
            mb(t.used),
            Some(("<=300 MB".into(), mb(t.used) <= 300.0)),
        ));
        rows.push(row(
            "  per tunnel, after a request: KiB",
            None,
            per(t.used),
            None,
        ));
    }

    print_table(&rows);
    let refused = counters.refused.load(Ordering::Relaxed);
    println!(
        "\nfailures: {failures}; upstream requests with the credential: {}, without: {refused}; \
         upstream connections accepted: {}",
        counters.authorized.load(Ordering::Relaxed),
        counters.connections.load(Ordering::Relaxed)
    );

    for r in &rows {
        json.insert(
            r.name.clone(),
            json!({"direct": r.direct, "proxy": r.proxy, "target": r.target.as_ref().map(|t| &t.0), "met": r.target.as_ref().map(|t| t.1)}),
        );
    }
    let report = json!({
        "machine": machine(),
        "seconds_per_phase": secs,
        "tunnels": opts.tunnels,
        "upstream_h2": opts.upstream_h2,
        "failures": failures,
        "upstream_refused": refused,
        "results": json,
    });
    std::fs::write(&opts.json, serde_json::to_string_pretty(&report)?)?;
    println!("JSON written to {}", opts.json.display());
    server.child.kill().await?;
    if failures > 0 || refused > 0 {
        bail!("{failures} failed requests, {refused} reached the upstream without the credential");
    }
    Ok(())
}
