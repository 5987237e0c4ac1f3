//! Streaming bodies that count bytes, enforce caps, and report once when they end. Nothing here
//! buffers: frames pass through as they arrive, so SSE and large downloads stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Boxed error type of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the proxy returns and every request it sends upstream.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A body went over its cap.
#[derive(Debug, thiserror::Error)]
#[error("body exceeds the limit of {0} bytes")]
pub(crate) struct TooLarge(pub u64);

/// How a body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// All frames were delivered.
    Complete,
    /// The body failed or was dropped early.
    Aborted,
    /// The body went over its cap.
    TooLarge,
}

type OnEnd = Box<dyn FnOnce(End, u64) + Send + Sync>;

pin_project_lite::pin_project! {
    /// Wraps a body: counts data bytes into `counter`, fails once `limit` (if non-zero) is
    /// passed, and calls `on_end` exactly once with how it ended and the byte count.
    pub struct Observed<B> {
        #[pin]
        inner: B,
        counter: Arc<AtomicU64>,
        limit: u64,
        on_end: Option<OnEnd>,
        // Held until the body ends (per-agent concurrency slots and the like).
        guard: Option<Box<dyn Send + Sync>>,
    }

    impl<B> PinnedDrop for Observed<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.on_end.take() {
                f(End::Aborted, this.counter.load(Ordering::Relaxed));
            }
        }
    }
}

impl<B> Observed<B> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: B, counter: Arc<AtomicU64>, limit: u64) -> Self {
        Self {
            inner,
            counter,
            limit,
            on_end: None,
            guard: None,
        }
    }

    /// Calls `f` once when the body ends.
    pub(crate) fn on_end(mut self, f: impl FnOnce(End, u64) + Send + Sync + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }

    /// Keeps `guard` alive until the body ends.
    pub(crate) fn hold(mut self, guard: impl Send + Sync + 'static) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }
}

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = this.counter.fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if *this.limit > 0 && total > *this.limit {
                        if let Some(f) = this.on_end.take() {
                            f(End::TooLarge, total);
                        }
                        this.guard.take();
                        return Poll::Ready(Some(Err(Box::new(TooLarge(*this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(f) = this.on_end.take() {
                    f(End::Aborted, this.counter.load(Ordering::Relaxed));
                }
                this.guard.take();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                if let Some(f) = this.on_end.take() {
                    f(End::Complete, this.counter.load(Ordering::Relaxed));
                }
                this.guard.take();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Most request bytes read and discarded after the request was answered without them.
const DRAIN_MAX_BYTES: u64 = 1 << 30;
/// Longest time spent reading and discarding them.
const DRAIN_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// A request body that, when dropped before its end, is read to the end and discarded in the
/// background (at most `DRAIN_MAX_BYTES`, for at most `DRAIN_MAX_TIME`). An HTTP/1.1 server that
/// answers early (413, 403, 401) and closes with request bytes unread makes the kernel send RST,
/// and the RST destroys the answer before a client that writes its whole request first reads it.
pub(crate) struct Drained<B: Body + Send + Unpin + 'static> {
    inner: Option<B>,
    drain: bool,
    // The body returned its end (or an error): nothing is left to read.
    ended: bool,
}

impl<B: Body + Send + Unpin + 'static> Drained<B> {
    /// Wraps the body of a request with `headers` and `version`. HTTP/2 resets a stream without
    /// touching the connection, and a client sending `Expect: 100-continue` waits for the answer
    /// instead of sending (reading would make hyper send `100 Continue` after it): neither is
    /// drained.
    pub(crate) fn new(inner: B, version: http::Version, headers: &http::HeaderMap) -> Self {
        let expects = headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        Self {
            drain: version <= http::Version::HTTP_11 && !expects,
            inner: Some(inner),
            ended: false,
        }
    }
}

impl<B: Body + Send + Unpin + 'static> Drop for Drained<B> {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if !self.drain || self.ended || body.is_end_stream() {
            return;
        }
        // Outside a runtime (never in the servers) the body is simply dropped.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            use http_body_util::BodyExt;
            let mut discarded = 0u64;
            let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(data) = frame.data_ref() {
                        discarded += bytes::Buf::remaining(data) as u64;
                        if discarded > DRAIN_MAX_BYTES {
                            break;
                        }
                    }
                }
            })
            .await;
        });
    }
}

impl<B> Body for Drained<B>
where
    B: Body + Send + Unpin + 'static,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let Some(body) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Whether an error chain contains a [`TooLarge`].
pub(crate) fn is_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if e.is::<TooLarge>() {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    #[tokio::test]
    async fn counts_and_reports_once() {
        let counter = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let body = Observed::new(Full::new(Bytes::from_static(b"hello")), counter.clone(), 0)
            .on_end(move |end, n| s.lock().unwrap().push((end, n)));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(*seen.lock().unwrap(), vec![(End::Complete, 5)]);
    }

    #[tokio::test]
    async fn cap_fails_the_stream() {
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..10)
            .map(|_| Ok(Frame::data(Bytes::from_static(b"0123456789"))))
            .collect();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let body = Observed::new(
            StreamBody::new(futures_util::stream::iter(chunks)),
            Arc::new(AtomicU64::new(0)),
            25,
        )
        .on_end(move |end, n| s.lock().unwrap().push((end, n)));
        let err = body.collect().await.unwrap_err();
        assert!(is_too_large(err.as_ref()));
        assert_eq!(*seen.lock().unwrap(), vec![(End::TooLarge, 30)]);
    }

    /// A body fed through a one-slot channel: each send completes only once the previous frame
    /// was read, so the sender sees whether anyone still reads.
    fn channel_body() -> (
        tokio::sync::mpsc::Sender<Bytes>,
        impl Body<Data = Bytes, Error = std::convert::Infallible> + Send + Unpin + 'static,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
        });
        (tx, StreamBody::new(Box::pin(frames)))
    }

    async fn reads_after_drop(version: http::Version, headers: &http::HeaderMap) -> bool {
        let (tx, body) = channel_body();
        drop(Drained::new(body, version, headers));
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            for _ in 0..10 {
                if tx.send(Bytes::from_static(b"unread")).await.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    }

    #[tokio::test]
    async fn unread_http1_bodies_are_drained_after_drop() {
        let none = http::HeaderMap::new();
        assert!(reads_after_drop(http::Version::HTTP_11, &none).await);
        assert!(!reads_after_drop(http::Version::HTTP_2, &none).await);
        let mut expect = http::HeaderMap::new();
        expect.insert(
            http::header::EXPECT,
            http::HeaderValue::from_static("100-continue"),
        );
        assert!(!reads_after_drop(http::Version::HTTP_11, &expect).await);
    }

    #[tokio::test]
    async fn dropping_early_reports_aborted() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        drop(
            Observed::new(
                Full::new(Bytes::from_static(b"x")),
                Arc::new(AtomicU64::new(0)),
                0,
            )
            .on_end(move |end, n| s.lock().unwrap().push((end, n))),
        );
        assert_eq!(*seen.lock().unwrap(), vec![(End::Aborted, 0)]);
    }
}
