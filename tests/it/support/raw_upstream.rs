//! A hand-written HTTPS upstream that answers with exactly the bytes a test scripts (malformed
//! framing, smuggled extra responses), counts connections, and records every request head.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::TestCa;

/// What the upstream answers to a request, given its head.
pub(crate) type Script = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct RawUpstream {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RawUpstream {
    /// Listens on loopback with a certificate for `*.example.test` from `ca`.
    pub(crate) async fn start(ca: &TestCa, script: Script) -> Self {
        let (chain, key) = ca.server_cert(&["example.test", "*.example.test"], (-1, 30));
        let acceptor = super::pki::tls_acceptor(chain, key, &[b"http/1.1"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (conns, hs) = (connections.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (acceptor, hs, script) = (acceptor.clone(), hs.clone(), script.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    loop {
                        // One request head (bodies are not used by these tests).
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head: Vec<u8> = buf.drain(..end).collect();
                        let head = String::from_utf8_lossy(&head).into_owned();
                        hs.lock().unwrap().push(head.clone());
                        if tls.write_all(&script(&head)).await.is_err() {
                            return;
                        }
                        let _ = tls.flush().await;
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            heads,
        }
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub(crate) fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}
