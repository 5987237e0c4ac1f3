//! Streaming bodies that count bytes, enforce caps, and report once when they end. Nothing here
//! buffers: frames pass through as they arrive, so SSE and large downloads stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::BoxError;

/// A body went over its cap.
#[derive(Debug, thiserror::Error)]
#[error("body exceeds the limit of {0} bytes")]
pub struct TooLarge(pub u64);

/// How a body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
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
    pub fn new(inner: B, counter: Arc<AtomicU64>, limit: u64) -> Self {
        Self {
            inner,
            counter,
            limit,
            on_end: None,
            guard: None,
        }
    }

    /// Calls `f` once when the body ends.
    pub fn on_end(mut self, f: impl FnOnce(End, u64) + Send + Sync + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }

    /// Keeps `guard` alive until the body ends.
    pub fn hold(mut self, guard: impl Send + Sync + 'static) -> Self {
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

/// Whether an error chain contains a [`TooLarge`].
pub fn is_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
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
