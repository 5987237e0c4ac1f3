//! Low-level agents: raw CONNECT, TLS with a chosen SNI, and hand-written requests, for the
//! cases a well-behaved HTTP client would never produce.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub(crate) fn basic(token: &str, vault: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{token}:{vault}"))
    )
}

/// Sends `CONNECT target` and returns the stream after a 200, or the status and raw head.
pub(crate) async fn connect(
    proxy: SocketAddr,
    target: &str,
    auth: Option<&str>,
) -> Result<TcpStream, (u16, String)> {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap() == 0 {
            break;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 200 {
        Ok(reader.into_inner())
    } else {
        // The body, by its declared length when there is one (the proxy may keep the
        // connection open after refusing a CONNECT).
        let length = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        });
        let mut rest = Vec::new();
        let wait = std::time::Duration::from_secs(2);
        match length {
            Some(n) => {
                rest.resize(n, 0);
                if tokio::time::timeout(wait, reader.read_exact(&mut rest))
                    .await
                    .is_err()
                {
                    rest.clear();
                }
            }
            None => {
                let _ = tokio::time::timeout(wait, reader.read_to_end(&mut rest)).await;
            }
        }
        Err((status, format!("{head}{}", String::from_utf8_lossy(&rest))))
    }
}

#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls12_signature(message, cert, signature)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS over an established tunnel. `ca_pem = None` accepts any certificate (to reach the
/// proxy's own checks with deliberately wrong names); `sni = None` sends no server name.
pub(crate) async fn tls(
    stream: TcpStream,
    sni: Option<&str>,
    ca_pem: Option<&str>,
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut config = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            use rustls_pki_types::pem::PemObject;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = sni.is_some();
    let name = ServerName::try_from(sni.unwrap_or("no-sni.invalid").to_owned()).unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
}

/// The first steps of a hand-built agent, CONNECT and then TLS, each chosen freely to reach the
/// proxy's own checks: the CONNECT authority, the SNI (none unless set), the roots (any
/// certificate unless set) and the ALPN offer (HTTP/1.1 unless set). Start with [`dial`].
#[derive(Clone, Copy)]
pub(crate) struct Dial<'a> {
    proxy: SocketAddr,
    auth: &'a str,
    target: &'a str,
    sni: Option<&'a str>,
    ca_pem: Option<&'a str>,
    alpn: &'a [&'a [u8]],
}

/// A [`Dial`] to `target` through `proxy`, authenticated with the `Proxy-Authorization` value
/// `auth`.
pub(crate) fn dial<'a>(proxy: SocketAddr, auth: &'a str, target: &'a str) -> Dial<'a> {
    Dial {
        proxy,
        auth,
        target,
        sni: None,
        ca_pem: None,
        alpn: &[b"http/1.1"],
    }
}

impl<'a> Dial<'a> {
    /// Sends this server name in the ClientHello.
    pub(crate) fn sni(self, sni: &'a str) -> Self {
        Self {
            sni: Some(sni),
            ..self
        }
    }

    /// Trusts only the certificates in `ca_pem` (a well-behaved client).
    pub(crate) fn trusting(self, ca_pem: &'a str) -> Self {
        Self {
            ca_pem: Some(ca_pem),
            ..self
        }
    }

    /// Offers these ALPN protocols.
    pub(crate) fn alpn(self, alpn: &'a [&'a [u8]]) -> Self {
        Self { alpn, ..self }
    }

    /// CONNECT, which must succeed, then the TLS handshake, whose outcome the caller judges.
    pub(crate) async fn tls(self) -> Result<TlsStream<TcpStream>, std::io::Error> {
        let tcp = connect(self.proxy, self.target, Some(self.auth))
            .await
            .unwrap_or_else(|e| panic!("CONNECT {}: {e:?}", self.target));
        tls(tcp, self.sni, self.ca_pem, self.alpn).await
    }

    /// CONNECT and TLS, which must both succeed, then one GET of `path` with this `Host`.
    pub(crate) async fn get(self, path: &str, host: &str) -> Response<Bytes> {
        let tls = self
            .tls()
            .await
            .unwrap_or_else(|e| panic!("TLS through CONNECT {}: {e}", self.target));
        send(tls, get(path, host)).await.unwrap()
    }
}

/// A bodiless GET of `path` with this `Host` header (any bytes, to try odd spellings).
pub(crate) fn get(path: &str, host: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(
            "host",
            http::HeaderValue::from_bytes(host.as_bytes()).unwrap(),
        )
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// An HTTP/1.1 connection over `stream` for several requests; the task drives it and finishes
/// when the connection ends.
pub(crate) async fn http1<S>(
    stream: S,
) -> (
    http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    (sender, tokio::spawn(conn))
}

/// An HTTP/2 connection over `stream` for several requests.
pub(crate) async fn http2<S>(stream: S) -> http2::SendRequest<Full<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// One HTTP/1.1 request over a stream; returns the response with its body collected.
pub(crate) async fn send<S>(
    stream: S,
    req: Request<Full<Bytes>>,
) -> Result<Response<Bytes>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, bytes))
}

/// Writes raw bytes and reads until the peer closes or `limit` passes.
pub(crate) async fn raw_exchange<S>(mut stream: S, bytes: &[u8]) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut out),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Raw bytes straight to the proxy's listener, with no CONNECT (absolute-form and malformed
/// requests); returns everything the proxy answered.
pub(crate) async fn plain(proxy: SocketAddr, bytes: &[u8]) -> String {
    raw_exchange(TcpStream::connect(proxy).await.unwrap(), bytes).await
}

/// Reads until the peer closes (true) or 20 s pass (false).
pub(crate) async fn closed_by_peer<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The next WebSocket message, which must arrive within 10 s.
pub(crate) async fn next_message<S, E>(ws: &mut S) -> tokio_tungstenite::tungstenite::Message
where
    S: futures_util::Stream<Item = Result<tokio_tungstenite::tungstenite::Message, E>> + Unpin,
    E: std::fmt::Debug,
{
    use futures_util::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .expect("a message within 10 s")
        .expect("the socket is open")
        .unwrap()
}
