//! The way out: resolve (system resolver or static overrides) → check every address with the
//! SSRF guard → dial a checked address → TLS verified against the configured roots with
//! SNI = host. Connections are pooled per authority by hyper's client; each proxy worker has its
//! own clients, all with one trust configuration, so pools never mix trust settings. Redirects
//! are never followed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::body::ProxyBody;
use crate::config::{ResolveKey, Roots, UpstreamConfig, parse_resolve_key};
use crate::netguard::{Blocked, NetGuard};

/// Why a connection to an upstream could not be made. Cloneable (causes are shared), because
/// hyper's client hands it back only by reference inside its own error.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnectError {
    /// The name did not resolve.
    #[error("name resolution failed: {0}")]
    Resolve(#[source] Arc<io::Error>),
    /// A resolved address is blocked by the SSRF guard.
    #[error("blocked destination: {0}")]
    Blocked(Blocked),
    /// No address accepted a TCP connection.
    #[error("connection failed: {0}")]
    Connect(#[source] Arc<io::Error>),
    /// TLS failed (verification, protocol, or timeout).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] TlsFailure),
    /// The URI had no host.
    #[error("missing host")]
    NoHost,
}

/// Why a TLS handshake with an upstream failed; its text is what the agent is told after
/// "TLS with the upstream failed: ".
#[derive(Clone, Debug, thiserror::Error)]
pub enum TlsFailure {
    /// The host is not a name a certificate can be checked against.
    #[error(transparent)]
    Name(Arc<rustls_pki_types::InvalidDnsNameError>),
    /// No handshake within `upstream.tls_handshake_timeout`.
    #[error("handshake timed out")]
    Timeout,
    /// Verification or protocol failure (rustls's error is the io error's source).
    #[error(transparent)]
    Handshake(Arc<io::Error>),
}

/// Why the upstream trust settings (`upstream.roots`, `upstream.extra_ca_files`) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// `upstream.roots = "native"` found no system certificates.
    #[error(
        "upstream.roots = \"native\" but no system CA certificates were found; install ca-certificates or use \"webpki\""
    )]
    NoNativeRoots,
    /// An extra CA file could not be opened.
    #[error("upstream.extra_ca_files: cannot read {}: {source}", path.display())]
    ReadCaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls_pki_types::pem::Error,
    },
    /// An extra CA file holds text that is not a PEM certificate.
    #[error("upstream.extra_ca_files: {}: {source}", path.display())]
    CaPem {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate in an extra CA file is not usable as a trust anchor.
    #[error("upstream.extra_ca_files: {}: {source}", path.display())]
    CaCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// An extra CA file holds no certificate.
    #[error("upstream.extra_ca_files: {} holds no certificate", path.display())]
    EmptyCaFile {
        /// The file.
        path: PathBuf,
    },
    /// The TLS provider refused the protocol versions.
    #[error(transparent)]
    Provider(#[from] rustls::Error),
}

/// A name lookup other than the system resolver (split DNS, and tests that play a DNS server
/// answering with rebinding or mixed addresses).
pub trait Lookup: Send + Sync + 'static {
    /// Every address `host:port` resolves to.
    fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
}

/// Static overrides first, then the installed [`Lookup`] or else the system resolver.
#[derive(Clone, Default)]
pub struct Resolver {
    overrides: Vec<(ResolveKey, SocketAddr)>,
    // Shared by every clone (the pooled clients' connectors hold clones).
    custom: Arc<std::sync::RwLock<Option<Arc<dyn Lookup>>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("overrides", &self.overrides)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Builds the resolver from `upstream.resolve` (already validated).
    pub fn new(config: &UpstreamConfig) -> Self {
        let overrides = config
            .resolve
            .iter()
            .filter_map(|(k, v)| Some((parse_resolve_key(k).ok()?, v.parse().ok()?)))
            .collect();
        Self {
            overrides,
            custom: Arc::default(),
        }
    }

    /// Installs (or removes) the lookup used instead of the system resolver.
    pub fn set_lookup(&self, lookup: Option<Arc<dyn Lookup>>) {
        if let Ok(mut custom) = self.custom.write() {
            *custom = lookup;
        }
    }

    fn lookup_override(&self, host: &str, port: u16) -> Option<SocketAddr> {
        let exact = self
            .overrides
            .iter()
            .find(|(k, _)| !k.wildcard && k.port == port && k.host == host);
        let wild = || {
            self.overrides.iter().find(|(k, _)| {
                k.wildcard
                    && k.port == port
                    && host.len() > k.host.len() + 1
                    && host.ends_with(&k.host)
                    && host.as_bytes()[host.len() - k.host.len() - 1] == b'.'
            })
        };
        exact.or_else(wild).map(|(_, a)| *a)
    }

    /// Every address `host:port` resolves to.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ConnectError> {
        if let Some(addr) = self.lookup_override(host, port) {
            return Ok(vec![addr]);
        }
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let custom = self.custom.read().ok().and_then(|c| c.clone());
        let addrs: Vec<SocketAddr> = match custom {
            Some(lookup) => lookup
                .lookup(host, port)
                .await
                .map_err(|e| ConnectError::Resolve(Arc::new(e)))?,
            None => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| ConnectError::Resolve(Arc::new(e)))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(ConnectError::Resolve(Arc::new(io::Error::new(
                io::ErrorKind::NotFound,
                "no addresses",
            ))));
        }
        Ok(addrs)
    }
}

/// Resolves and checks every address, then connects to the first checked address that answers.
/// Refuses outright when any answer is blocked: a mixed answer is a rebinding attempt.
pub async fn dial(
    resolver: &Resolver,
    guard: &NetGuard,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let addrs = resolver.resolve(host, port).await?;
    for addr in &addrs {
        guard.check(*addr).map_err(ConnectError::Blocked)?;
    }
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        }
    }
    Err(ConnectError::Connect(Arc::new(last)))
}

/// The byte stream under a pooled upstream connection.
#[derive(Debug)]
enum Transport {
    /// Plain TCP, for `http://` absolute-form requests to hosts that carry no credentials.
    Plain(TokioIo<TcpStream>),
    /// Verified TLS.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

/// A connection to an upstream, telling hyper whether h2 was negotiated.
#[derive(Debug)]
pub struct UpstreamStream {
    io: Transport,
    h2: bool,
    peer: SocketAddr,
    /// Where a TLS failure on this connection after its handshake is noted (TLS only).
    failures: Option<(TlsFailures, String, u16)>,
    /// Whether the upstream has sent anything since the handshake.
    heard: bool,
}

/// TLS failures that happened after a handshake had completed, by upstream host and port.
///
/// With TLS 1.3 a server judges the client's certificate (or its absence) after the client has
/// finished its handshake, and says so with an alert on the connection's first read. Over
/// HTTP/1.1 that error reaches the request; over h2 it ends the connection's task and the
/// request learns only that the connection closed. The stream notes it here, so a request that
/// failed that way is answered `upstream_tls` rather than `upstream_protocol`. Written only when
/// a connection fails, read only when a request did.
#[derive(Clone, Debug, Default)]
pub struct TlsFailures(Arc<std::sync::Mutex<std::collections::HashMap<(String, u16), Noted>>>);

#[derive(Debug)]
struct Noted {
    at: std::time::Instant,
    failure: TlsFailure,
}

/// How long a noted failure explains a failed request to the same upstream.
const TLS_FAILURE_MEMORY: Duration = Duration::from_secs(10);

impl TlsFailures {
    fn note(&self, host: &str, port: u16, failure: TlsFailure) {
        let now = std::time::Instant::now();
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, n| now.duration_since(n.at) < TLS_FAILURE_MEMORY);
        map.insert((host.to_owned(), port), Noted { at: now, failure });
    }

    /// The TLS failure noted for `host:port` within the last few seconds, if any.
    pub fn recent(&self, host: &str, port: u16) -> Option<TlsFailure> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&(host.to_owned(), port))
            .filter(|n| n.at.elapsed() < TLS_FAILURE_MEMORY)
            .map(|n| n.failure.clone())
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new().extra(self.peer);
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match &mut $self.io {
            Transport::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            Transport::Tls($io) => {
                let $io = Pin::new($io);
                $e
            }
        }
    };
}

impl UpstreamStream {
    /// A write that failed on a TLS connection may have failed because the upstream refused
    /// the handshake and closed (TLS 1.3 refuses a client certificate after the client is done):
    /// its alert may still be waiting to be read, and is noted if so. The connection is dead
    /// either way, so what the read takes is lost to no one.
    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if !matches!(result, Poll::Ready(Err(_))) {
            return result;
        }
        let (Transport::Tls(io), Some((failures, host, port))) = (&mut self.io, &self.failures)
        else {
            return result;
        };
        let mut scratch = [0u8; 512];
        for _ in 0..4 {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match tokio::io::AsyncRead::poll_read(Pin::new(io.inner_mut()), cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                Poll::Ready(Err(e)) => {
                    if let Some(failure) = tls_failure(&e) {
                        failures.note(host, *port, failure);
                        return result;
                    }
                    break;
                }
                _ => break,
            }
        }
        // The alert itself can be lost with the reset; an upstream that hung up right after the
        // handshake, before saying anything, refused it all the same.
        if !self.heard {
            let closed = io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the upstream closed the connection right after the handshake (an upstream that requires a TLS client certificate does this)",
            );
            failures.note(host, *port, TlsFailure::Handshake(Arc::new(closed)));
        }
        result
    }
}

impl hyper::rt::Read for UpstreamStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let read = delegate!(self, io => io.poll_read(cx, buf));
        match &read {
            Poll::Ready(Ok(())) => self.heard = true,
            Poll::Ready(Err(e)) => {
                if let Some((failures, host, port)) = &self.failures
                    && let Some(failure) = tls_failure(e)
                {
                    failures.note(host, *port, failure);
                }
            }
            Poll::Pending => {}
        }
        read
    }
}

impl hyper::rt::Write for UpstreamStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = delegate!(self, io => io.poll_write(cx, buf));
        self.after_write(cx, written)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = delegate!(self, io => io.poll_flush(cx));
        self.after_write(cx, flushed)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Transport::Plain(io) => io.is_write_vectored(),
            Transport::Tls(io) => io.is_write_vectored(),
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = delegate!(self, io => io.poll_write_vectored(cx, bufs));
        self.after_write(cx, written)
    }
}

/// The connector hyper's pooled client calls for each new connection. Hyper clones it for every
/// request, pooled connection or not, so it is one reference count.
#[derive(Clone)]
#[allow(missing_debug_implementations)]
pub struct Connector(Arc<ConnectorInner>);

struct ConnectorInner {
    resolver: Resolver,
    guard: NetGuard,
    failures: TlsFailures,
    tls: TlsConnector,
    connect_timeout: Duration,
    tls_timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.0.clone();
        Box::pin(async move {
            // Defence in depth: the pipeline builds URIs from parts, but never dial a URI whose
            // authority carries user information (it would name a different host).
            if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(ConnectError::NoHost);
            }
            let host = uri
                .host()
                .ok_or(ConnectError::NoHost)?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let plain = uri.scheme_str() == Some("http");
            let port = uri.port_u16().unwrap_or(if plain { 80 } else { 443 });
            let (tcp, peer) = dial(
                &this.resolver,
                &this.guard,
                &host,
                port,
                this.connect_timeout,
            )
            .await?;
            if plain {
                return Ok(UpstreamStream {
                    io: Transport::Plain(TokioIo::new(tcp)),
                    h2: false,
                    peer,
                    failures: None,
                    heard: false,
                });
            }
            let name = ServerName::try_from(host.clone())
                .map_err(|e| ConnectError::Tls(TlsFailure::Name(Arc::new(e))))?;
            let tls = tokio::time::timeout(this.tls_timeout, this.tls.connect(name, tcp))
                .await
                .map_err(|_| ConnectError::Tls(TlsFailure::Timeout))?
                .map_err(|e| ConnectError::Tls(TlsFailure::Handshake(Arc::new(e))))?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok(UpstreamStream {
                io: Transport::Tls(Box::new(TokioIo::new(tls))),
                h2,
                peer,
                failures: Some((this.failures.clone(), host, port)),
                heard: false,
            })
        })
    }
}

/// The trust anchors of `upstream.roots` and `upstream.extra_ca_files`.
pub fn upstream_roots(config: &UpstreamConfig) -> Result<rustls::RootCertStore, TrustError> {
    let mut roots = rustls::RootCertStore::empty();
    match config.roots {
        Roots::Webpki => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Roots::Native => {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(TrustError::NoNativeRoots);
            }
        }
        Roots::None => {}
    }
    for file in &config.extra_ca_files {
        use rustls_pki_types::pem::PemObject;
        let path = || file.clone();
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(file).map_err(|source| {
            TrustError::ReadCaFile {
                path: path(),
                source,
            }
        })?;
        let mut n = 0;
        for cert in certs {
            let cert = cert.map_err(|source| TrustError::CaPem {
                path: path(),
                source,
            })?;
            roots
                .add(cert)
                .map_err(|source| TrustError::CaCertificate {
                    path: path(),
                    source,
                })?;
            n += 1;
        }
        if n == 0 {
            return Err(TrustError::EmptyCaFile { path: path() });
        }
    }
    Ok(roots)
}

/// Builds the TLS client configuration from `upstream.roots` and `upstream.extra_ca_files`.
pub fn client_tls_config(
    config: &UpstreamConfig,
    provider: Arc<CryptoProvider>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TrustError> {
    let mut tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(upstream_roots(config)?)
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tls)
}

/// ALPN of the client that speaks h2 or HTTP/1.1, whichever the upstream picks.
const ALPN_ANY: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN of the HTTP/1.1-only client that WebSocket upgrades need.
const ALPN_H1: &[&[u8]] = &[b"http/1.1"];

/// One worker's pooled clients: one speaking h2 or HTTP/1.1 (by ALPN), one HTTP/1.1-only for
/// upgrades.
struct Clients {
    client: Client<Connector, ProxyBody>,
    upgrade: Client<Connector, ProxyBody>,
}

/// Every worker's pooled clients for one TLS client configuration.
struct WorkerClients(Vec<Clients>);

impl WorkerClients {
    /// The pooled client of this thread's worker (the first worker's on any other thread).
    fn pick(&self, upgrade: bool) -> &Client<Connector, ProxyBody> {
        let index = super::workers::current().unwrap_or(0) % self.0.len();
        let clients = &self.0[index];
        if upgrade {
            &clients.upgrade
        } else {
            &clients.client
        }
    }
}

/// What building a pooled client needs besides its TLS configuration; kept so that clients
/// presenting a TLS client identity are built later exactly like the shared ones.
struct ClientFactory {
    resolver: Resolver,
    guard: NetGuard,
    failures: TlsFailures,
    provider: Arc<CryptoProvider>,
    /// Parsed once: parsing the roots is the expensive part, and every pool shares them.
    roots: Arc<rustls::RootCertStore>,
    connect_timeout: Duration,
    tls_timeout: Duration,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    workers: usize,
}

impl ClientFactory {
    fn connector(&self, tls: ClientConfig) -> Connector {
        Connector(Arc::new(ConnectorInner {
            resolver: self.resolver.clone(),
            guard: self.guard.clone(),
            failures: self.failures.clone(),
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout: self.connect_timeout,
            tls_timeout: self.tls_timeout,
        }))
    }

    fn client(&self, connector: Connector, h2: bool) -> Client<Connector, ProxyBody> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            // Hyper only re-sends a request that was never written to a reused connection,
            // so nothing, idempotent or not, is ever sent twice.
            .retry_canceled_requests(true)
            .set_host(true);
        if h2 {
            // Fixed windows, not hyper's adaptive one: that starts at 64 KiB for the whole
            // connection and grows only with its bandwidth-delay estimate, which on a
            // low-latency link stays small, so concurrent responses and large downloads
            // waited on WINDOW_UPDATEs (10 MB downloads through the proxy at 0.17-0.24x
            // direct and 16 KiB echoes at 32 concurrent requests at 0.24-0.27x, against
            // 0.39-0.45x and 0.27-0.37x with these windows; see the README's benchmark).
            // They also bound what one stream or connection may buffer here when the agent
            // reads slowly.
            builder
                .http2_initial_stream_window_size(H2_STREAM_WINDOW)
                .http2_initial_connection_window_size(H2_CONNECTION_WINDOW)
                .http2_max_frame_size(H2_MAX_FRAME)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .http2_keep_alive_while_idle(false);
        }
        builder.build(connector)
    }

    /// Per-worker clients over `configure`'s TLS configuration (called once per ALPN set).
    fn worker_clients(
        &self,
        configure: impl Fn(&[&[u8]]) -> Result<ClientConfig, rustls::Error>,
    ) -> Result<WorkerClients, rustls::Error> {
        let (any, h1_only) = (
            self.connector(configure(ALPN_ANY)?),
            self.connector(configure(ALPN_H1)?),
        );
        Ok(WorkerClients(
            (0..self.workers.max(1))
                .map(|_| Clients {
                    client: self.client(any.clone(), true),
                    upgrade: self.client(h1_only.clone(), false),
                })
                .collect(),
        ))
    }

    /// A TLS configuration trusting the upstream roots, presenting `identity` if given.
    fn tls(
        &self,
        alpn: &[&[u8]],
        identity: Option<&ClientIdentity>,
    ) -> Result<ClientConfig, rustls::Error> {
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone());
        let mut tls = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        };
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(tls)
    }
}

/// A TLS client identity to present to upstreams: a certificate chain (leaf first) and the
/// leaf's private key. No `Debug` of the key: it prints only the chain's length.
pub struct ClientIdentity {
    /// The chain, leaf first.
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: rustls_pki_types::PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Pooled clients that present one TLS client identity. Their pools hold only connections
/// made with that identity, so a connection is never shared across identities.
pub struct IdentityClients(WorkerClients);

impl std::fmt::Debug for IdentityClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityClients").finish_non_exhaustive()
    }
}

impl IdentityClients {
    /// This worker's client presenting the identity (`upgrade`: the HTTP/1.1-only one).
    pub fn client(&self, upgrade: bool) -> &Client<Connector, ProxyBody> {
        self.0.pick(upgrade)
    }
}

/// The way out: per-worker pooled clients over one resolver and SSRF guard.
pub struct Upstream {
    /// A worker's requests use its own pools, so an upstream connection lives on the thread of
    /// the agent connections it serves. These present no client identity.
    shared: WorkerClients,
    /// Builds the clients of services that present a TLS client identity.
    factory: ClientFactory,
    /// The resolver (also used for spliced tunnels).
    pub resolver: Resolver,
    /// The SSRF guard (also used for spliced tunnels).
    pub guard: NetGuard,
    /// Connect timeout per address.
    pub connect_timeout: Duration,
    /// How long to wait for a response head.
    pub response_header_timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

/// How much one upstream h2 stream may send before the proxy has forwarded it.
const H2_STREAM_WINDOW: u32 = 2 << 20;
/// How much one upstream h2 connection may send, across its streams, before the proxy has
/// forwarded it.
const H2_CONNECTION_WINDOW: u32 = 8 << 20;
/// The largest h2 frame an upstream may send: fewer frames (and wake-ups) per large body.
const H2_MAX_FRAME: u32 = 64 << 10;

impl Upstream {
    /// Builds the clients for `workers` proxy workers.
    pub fn new(
        config: &UpstreamConfig,
        guard: NetGuard,
        provider: Arc<CryptoProvider>,
        workers: usize,
    ) -> Result<Self, TrustError> {
        let resolver = Resolver::new(config);
        let factory = ClientFactory {
            resolver: resolver.clone(),
            guard: guard.clone(),
            failures: TlsFailures::default(),
            provider,
            roots: Arc::new(upstream_roots(config)?),
            connect_timeout: config.connect_timeout,
            tls_timeout: config.tls_handshake_timeout,
            pool_idle_timeout: config.pool_idle_timeout,
            pool_max_idle_per_host: config.pool_max_idle_per_host,
            workers,
        };
        let shared = factory.worker_clients(|alpn| factory.tls(alpn, None))?;
        Ok(Self {
            shared,
            factory,
            resolver,
            guard,
            connect_timeout: config.connect_timeout,
            response_header_timeout: config.response_header_timeout,
        })
    }

    /// The pooled client of this thread's worker (the first worker's on any other thread);
    /// `upgrade` picks the HTTP/1.1-only one that WebSocket upgrades need.
    pub fn client(&self, upgrade: bool) -> &Client<Connector, ProxyBody> {
        self.shared.pick(upgrade)
    }

    /// The TLS failure a connection to `host:port` met after its handshake in the last few
    /// seconds (see [`TlsFailures`]).
    pub fn recent_tls_failure(&self, host: &str, port: u16) -> Option<TlsFailure> {
        self.factory.failures.recent(host, port)
    }

    /// New pooled clients that present `identity` to every upstream they connect to, trusting
    /// the same roots as the shared ones. Fails when the key does not suit the certificate or
    /// the provider cannot use it.
    pub fn identity_clients(
        &self,
        identity: &ClientIdentity,
    ) -> Result<IdentityClients, rustls::Error> {
        self.factory
            .worker_clients(|alpn| self.factory.tls(alpn, Some(identity)))
            .map(IdentityClients)
    }
}

/// Finds a TLS failure after the handshake (an alert the upstream sent, such as
/// `certificate_required`) inside a client error chain. An io error's `source` skips the error
/// it wraps, so that one is looked at directly; and h2 keeps only the kind and text of an io
/// error, so over h2 rustls's own text for a received alert is what is left to recognise.
pub fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let failure = |e: io::Error| Some(TlsFailure::Handshake(Arc::new(e)));
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return failure(io::Error::new(io::ErrorKind::InvalidData, tls.clone()));
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return failure(io::Error::new(io::ErrorKind::InvalidData, tls.clone()));
            }
            let text = inner.to_string();
            if io.kind() == io::ErrorKind::InvalidData && text.starts_with(RUSTLS_ALERT_TEXT) {
                return failure(io::Error::new(io::ErrorKind::InvalidData, text));
            }
        }
        current = e.source();
    }
    None
}

/// How rustls's `Error::AlertReceived` reads (checked by a test, so a rustls that words it
/// otherwise fails the build's tests rather than this check).
const RUSTLS_ALERT_TEXT: &str = "received fatal alert: ";

/// Finds our connector's error inside a client error chain.
pub fn connect_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ConnectError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<ConnectError>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn tls_failures_after_the_handshake_are_found_as_rustls_or_h2_leaves_them() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        assert!(alert.to_string().starts_with(RUSTLS_ALERT_TEXT), "{alert}");
        let wrapped = io::Error::new(io::ErrorKind::InvalidData, alert.clone());
        assert!(tls_failure(&wrapped).is_some());
        // What h2 hands on: the kind and the text only.
        let flattened = io::Error::new(io::ErrorKind::InvalidData, alert.to_string());
        assert!(tls_failure(&flattened).is_some());
        for other in [
            io::Error::new(io::ErrorKind::InvalidData, "received garbage"),
            io::Error::new(io::ErrorKind::ConnectionReset, alert.to_string()),
            io::Error::from(io::ErrorKind::UnexpectedEof),
        ] {
            assert!(tls_failure(&other).is_none(), "{other}");
        }
    }

    #[tokio::test]
    async fn overrides_win_and_wildcards_need_a_label() {
        let mut resolve = BTreeMap::new();
        resolve.insert("*.example.test:443".to_owned(), "127.0.0.1:8443".to_owned());
        resolve.insert(
            "api.example.test:443".to_owned(),
            "127.0.0.2:9443".to_owned(),
        );
        let r = Resolver::new(&UpstreamConfig {
            resolve,
            ..Default::default()
        });
        assert_eq!(
            r.resolve("api.example.test", 443).await.unwrap(),
            vec!["127.0.0.2:9443".parse().unwrap()]
        );
        assert_eq!(
            r.resolve("x.example.test", 443).await.unwrap(),
            vec!["127.0.0.1:8443".parse().unwrap()]
        );
        assert_eq!(
            r.resolve("a.b.example.test", 443).await.unwrap(),
            vec!["127.0.0.1:8443".parse().unwrap()]
        );
        assert!(r.lookup_override("example.test", 443).is_none());
        assert!(r.lookup_override("badexample.test", 443).is_none());
        assert!(r.lookup_override("x.example.test", 80).is_none());
    }

    #[tokio::test]
    async fn mixed_answers_are_refused() {
        let mut resolve = BTreeMap::new();
        resolve.insert(
            "internal.example.test:443".to_owned(),
            "10.0.0.1:443".to_owned(),
        );
        let config = UpstreamConfig {
            resolve,
            ..Default::default()
        };
        let r = Resolver::new(&config);
        for (host, port, want) in [
            ("internal.example.test", 443, Blocked::Private),
            ("169.254.169.254", 80, Blocked::Metadata),
        ] {
            let err = dial(
                &r,
                &NetGuard::new(false, vec![]),
                host,
                port,
                Duration::from_secs(1),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(err, ConnectError::Blocked(b) if b == want),
                "{host}: {err:?}"
            );
        }
    }
}
