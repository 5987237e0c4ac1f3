//! Response scrubbing: a service that reflects the credential it was sent (echo endpoints, error
//! messages quoting headers, stored fields read back) must not hand it to the agent. For every
//! response to a request that had credentials attached, the proxy replaces each known value, raw
//! and in common encodings, with [`MARKER`] in header values, trailers and body.
//!
//! The body is scrubbed as it streams: nothing is buffered except a held-back tail that is a
//! proper prefix of some needle (so a value split across chunks is still caught, and an SSE event
//! that cannot be the start of a value is never delayed). gzip and deflate bodies are decoded on
//! the fly and passed on as identity; any other content coding fails closed.
//!
//! Limits (defence in depth, not a guarantee): values shorter than [`MIN_NEEDLE`] bytes are not
//! scrubbed; encodings not listed in [`Needles::new`] (hashes, partial values, reversed, other
//! escapes, compression other than gzip/deflate) pass; WebSocket frames after the upgrade are not
//! scrubbed.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};
use zeroize::{Zeroize, Zeroizing};

use super::body::BoxError;

/// What a reflected value is replaced with.
pub const MARKER: &[u8] = b"[REDACTED by agent-vault]";

/// Needles shorter than this are not scrubbed: they would redact ordinary text.
pub const MIN_NEEDLE: usize = 6;

/// Most needles one request carries (values beyond it are not scrubbed in extra encodings).
const MAX_NEEDLES: usize = 1024;

/// How much decoded output one decompression step produces before it is passed on.
const DECODE_STEP_OUT: usize = 16 * 1024;
/// How much compressed input one decompression step feeds at a time (bounds the output of a
/// single write, whatever the compression ratio).
const DECODE_STEP_IN: usize = 256;

/// `encodeURIComponent` leaves these unencoded.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');
/// RFC 3986 unreserved characters stay; what the proxy itself uses for substitution.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The byte strings to scrub for one request, zeroized when the response is done.
pub struct Needles {
    /// Sorted by first byte, then longest first (so the longest match at a position wins).
    list: Vec<Zeroizing<Vec<u8>>>,
    /// Whether some needle begins with byte `b`: the scan skips ahead with this table when
    /// there are too many distinct first bytes for [`Self::groups`].
    first: Box<[bool; 256]>,
    /// The distinct first bytes in threes, when there are at most [`MAX_GROUPS`] of them: the
    /// scan finds the next candidate with one vectorised `memchr3` pass per group instead of
    /// looking every byte up (a quarter of the proxy's CPU in a large download).
    groups: Vec<[u8; 3]>,
    max_len: usize,
}

/// More groups than this and the table scan is faster than that many passes.
const MAX_GROUPS: usize = 4;

impl Drop for Needles {
    fn drop(&mut self) {
        // The first bytes of secret values; the needles zeroize themselves.
        self.first.zeroize();
        self.groups.zeroize();
    }
}

impl std::fmt::Debug for Needles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Needles")
            .field("count", &self.list.len())
            .finish_non_exhaustive()
    }
}

fn push(out: &mut Vec<Zeroizing<Vec<u8>>>, needle: Vec<u8>) {
    let needle = Zeroizing::new(needle);
    if needle.len() >= MIN_NEEDLE && out.len() < MAX_NEEDLES && !out.contains(&needle) {
        out.push(needle);
    }
}

/// The URL-safe form of standard base64 text: the alphabets differ only in `+` and `/`, so one
/// encoding serves both.
fn url_safe(standard: &[u8]) -> Vec<u8> {
    standard
        .iter()
        .map(|&b| match b {
            b'+' => b'-',
            b'/' => b'_',
            b => b,
        })
        .collect()
}

/// Pushes standard base64 text and its URL-safe form.
fn push_base64(out: &mut Vec<Zeroizing<Vec<u8>>>, standard: &[u8]) {
    push(out, standard.to_vec());
    push(out, url_safe(standard));
}

/// `value` in base64, padded, and the characters that depend only on `value` for each of the
/// three alignments it can have inside a longer encoded string; every one in both alphabets.
/// Three encodings in reused buffers: this runs for every request that carries a credential.
fn base64_variants(value: &[u8], out: &mut Vec<Zeroizing<Vec<u8>>>) {
    let padded = Zeroizing::new(STANDARD.encode(value).into_bytes());
    push_base64(out, &padded);
    let mut input = Zeroizing::new(Vec::with_capacity(value.len() + 2));
    let mut encoded = Zeroizing::new(Vec::with_capacity(padded.len() + 4));
    for k in 0..3usize {
        let text: &[u8] = if k == 0 {
            // Alignment 0 is the padded encoding without its padding.
            let unpadded = padded
                .iter()
                .position(|&b| b == b'=')
                .unwrap_or(padded.len());
            &padded[..unpadded]
        } else {
            input.clear();
            input.resize(k, 0);
            input.extend_from_slice(value);
            encoded.clear();
            encoded.resize(input.len().div_ceil(3) * 4, 0);
            let Ok(n) = STANDARD_NO_PAD.encode_slice(input.as_slice(), encoded.as_mut_slice())
            else {
                continue;
            };
            &encoded[..n]
        };
        let start = (8 * k).div_ceil(6);
        let end = (8 * (k + value.len()) / 6).min(text.len());
        if start < end {
            push_base64(out, &text[start..end]);
        }
    }
}

fn percent_variants(value: &[u8], out: &mut Vec<Zeroizing<Vec<u8>>>) {
    for set in [NON_ALPHANUMERIC, URI_COMPONENT, UNRESERVED] {
        // The first piece is the whole value when nothing in it needs encoding (most tokens,
        // for the two narrower sets): no allocation then.
        let mut pieces = percent_encode(value, set);
        if pieces.clone().next().is_some_and(|p| p.as_bytes() == value) {
            continue;
        }
        let upper = Zeroizing::new(pieces.by_ref().collect::<String>().into_bytes());
        let mut lower = upper.clone();
        let mut i = 0;
        while i < lower.len() {
            if lower[i] == b'%' && i + 2 < lower.len() {
                lower[i + 1] = lower[i + 1].to_ascii_lowercase();
                lower[i + 2] = lower[i + 2].to_ascii_lowercase();
                i += 3;
            } else {
                i += 1;
            }
        }
        // Form encoding writes spaces as '+'.
        let form = Zeroizing::new(String::from_utf8_lossy(&upper).replace("%20", "+"));
        push(out, form.as_bytes().to_vec());
        push(out, lower.to_vec());
        push(out, upper.to_vec());
    }
}

fn json_variants(value: &[u8], out: &mut Vec<Zeroizing<Vec<u8>>>) {
    // Printable ASCII without a quote, backslash or solidus is its own JSON string body in
    // every form below: nothing to add, and nothing to allocate.
    if value
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && !matches!(b, b'"' | b'\\' | b'/'))
    {
        return;
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return;
    };
    let Ok(quoted) = serde_json::to_string(text) else {
        return;
    };
    let quoted = Zeroizing::new(quoted);
    let inner = &quoted[1..quoted.len() - 1];
    let mut forms = vec![Zeroizing::new(inner.to_owned())];
    if !text.is_ascii() {
        // Python's json.dumps and others escape everything outside ASCII.
        let mut ascii = Zeroizing::new(String::with_capacity(inner.len() * 2));
        for c in inner.chars() {
            if c.is_ascii() {
                ascii.push(c);
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    ascii.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
        forms.push(ascii);
    }
    if inner.contains('/') {
        // Some encoders (PHP, older Java) escape the solidus too.
        let escaped: Vec<_> = forms
            .iter()
            .map(|f| Zeroizing::new(f.replace('/', "\\/")))
            .collect();
        forms.extend(escaped);
    }
    for form in forms {
        if form.as_bytes() != value {
            push(out, form.as_bytes().to_vec());
        }
    }
}

impl Needles {
    /// The needles for a set of secret values: each raw, base64 (standard and URL-safe, padded,
    /// and the fragments of every alignment inside a longer encoded string), percent-encoded
    /// (several character sets, upper- and lower-case hex, `+` for spaces), JSON-escaped (plain,
    /// with `\/`, and ASCII-only), and hex. `None` when nothing is long enough to scrub.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Arc<Self>> {
        let mut list = Vec::new();
        for value in values {
            if value.len() < MIN_NEEDLE {
                continue;
            }
            push(&mut list, value.to_vec());
            base64_variants(value, &mut list);
            percent_variants(value, &mut list);
            json_variants(value, &mut list);
            push(&mut list, hex::encode(value).into_bytes());
            push(&mut list, hex::encode_upper(value).into_bytes());
        }
        if list.is_empty() {
            return None;
        }
        list.sort_by(|a, b| a[0].cmp(&b[0]).then(b.len().cmp(&a.len())));
        let max_len = list.iter().map(|n| n.len()).max().unwrap_or(0);
        let mut first = Box::new([false; 256]);
        let mut distinct = Zeroizing::new(Vec::new());
        for n in &list {
            if !first[usize::from(n[0])] {
                first[usize::from(n[0])] = true;
                distinct.push(n[0]);
            }
        }
        let groups = if distinct.len() <= 3 * MAX_GROUPS {
            distinct
                .chunks(3)
                .map(|c| [c[0], c[c.len().min(2) - 1], c[c.len() - 1]])
                .collect()
        } else {
            Vec::new()
        };
        Some(Arc::new(Self {
            list,
            first,
            groups,
            max_len,
        }))
    }

    /// The needles that begin with `first` (a binary search: candidates are rare once the
    /// scan has skipped to them, and a table per request cost more than all the searches).
    fn bucket(&self, first: u8) -> &[Zeroizing<Vec<u8>>] {
        let from = self.list.partition_point(|n| n[0] < first);
        let to = from + self.list[from..].partition_point(|n| n[0] == first);
        &self.list[from..to]
    }

    /// Scans `buf`: pushes the `(start, end)` of each match (leftmost, longest, not overlapping)
    /// and returns where output must stop. Unless `last`, a tail that is a proper prefix of a
    /// needle is held back (the return value is its start); otherwise everything is output.
    fn scan(&self, buf: &[u8], last: bool, matches: &mut Vec<(usize, usize)>) -> usize {
        // Where each group's next first byte is at or after `i` (`buf.len()`: none left).
        let group_next = |g: &[u8; 3], from: usize| {
            memchr::memchr3(g[0], g[1], g[2], &buf[from..]).map_or(buf.len(), |p| from + p)
        };
        let mut next: Vec<usize> = self.groups.iter().map(|g| group_next(g, 0)).collect();
        let mut i = 0;
        while i < buf.len() {
            if self.groups.is_empty() {
                match buf[i..].iter().position(|&b| self.first[usize::from(b)]) {
                    Some(skip) => i += skip,
                    None => break,
                }
            } else {
                for (at, g) in next.iter_mut().zip(&self.groups) {
                    if *at < i {
                        *at = group_next(g, i);
                    }
                }
                i = next.iter().copied().min().unwrap_or(buf.len());
                if i >= buf.len() {
                    break;
                }
            }
            let bucket = self.bucket(buf[i]);
            let rest = &buf[i..];
            if !last
                && rest.len() < self.max_len
                && bucket
                    .iter()
                    .any(|n| n.len() > rest.len() && n.starts_with(rest))
            {
                return i;
            }
            match bucket.iter().find(|n| rest.starts_with(n)) {
                Some(n) => {
                    matches.push((i, i + n.len()));
                    i += n.len();
                }
                None => i += 1,
            }
        }
        buf.len()
    }

    /// `buf[..end]` with every match replaced.
    fn replace(buf: &[u8], end: usize, matches: &[(usize, usize)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(end + matches.len() * MARKER.len());
        let mut at = 0;
        for &(s, e) in matches {
            out.extend_from_slice(&buf[at..s]);
            out.extend_from_slice(MARKER);
            at = e;
        }
        out.extend_from_slice(&buf[at..end]);
        out
    }

    /// A complete value with every match replaced, or `None` when it holds none.
    pub fn scrub_complete(&self, value: &[u8]) -> Option<Vec<u8>> {
        let mut matches = Vec::new();
        self.scan(value, true, &mut matches);
        (!matches.is_empty()).then(|| Self::replace(value, value.len(), &matches))
    }

    /// Scrubs every header value in place.
    pub fn scrub_headers(&self, headers: &mut HeaderMap) {
        for value in headers.values_mut() {
            if let Some(clean) = self.scrub_complete(value.as_bytes())
                && let Ok(v) = HeaderValue::from_bytes(&clean)
            {
                *value = v;
            }
        }
    }
}

/// A response body's content coding, as far as scrubbing is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// No content coding.
    Identity,
    /// `gzip` / `x-gzip`.
    Gzip,
    /// `deflate` (zlib).
    Deflate,
}

/// The coding of a response that must be scrubbed, or `None` when it cannot be decoded (the
/// caller fails closed). Several codings, unknown codings and transfer codings other than
/// `chunked` are all undecodable.
pub fn coding(headers: &HeaderMap) -> Option<Coding> {
    for te in headers.get_all(http::header::TRANSFER_ENCODING) {
        let ok = te.to_str().is_ok_and(|t| {
            t.split(',')
                .all(|c| c.trim().eq_ignore_ascii_case("chunked"))
        });
        if !ok {
            return None;
        }
    }
    let mut values = headers.get_all(http::header::CONTENT_ENCODING).iter();
    let Some(first) = values.next() else {
        return Some(Coding::Identity);
    };
    if values.next().is_some() {
        return None;
    }
    let text = first.to_str().ok()?.trim().to_ascii_lowercase();
    match text.as_str() {
        "" | "identity" => Some(Coding::Identity),
        "gzip" | "x-gzip" => Some(Coding::Gzip),
        "deflate" => Some(Coding::Deflate),
        _ => None,
    }
}

/// The decompressor's output, drained after every step.
type Sink = Vec<u8>;

enum Decoder {
    Gzip(Box<flate2::write::MultiGzDecoder<Sink>>),
    Deflate(Box<flate2::write::ZlibDecoder<Sink>>),
}

impl Decoder {
    fn write(&mut self, input: &[u8]) -> std::io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.write(input),
            Decoder::Deflate(d) => d.write(input),
        }
    }
    fn finish(&mut self) -> std::io::Result<()> {
        match self {
            Decoder::Gzip(d) => d.try_finish(),
            Decoder::Deflate(d) => d.try_finish(),
        }
    }
    fn output(&mut self) -> &mut Sink {
        match self {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Deflate(d) => d.get_mut(),
        }
    }
}

/// A content-coded response body could not be decoded; the stream fails closed.
#[derive(Debug, thiserror::Error)]
#[error("the upstream response body could not be decoded for scrubbing")]
pub struct UndecodableBody;

pin_project_lite::pin_project! {
    /// Wraps a response body: decodes it if needed and replaces every needle with [`MARKER`].
    pub struct Scrubbed<B> {
        #[pin]
        inner: B,
        needles: Arc<Needles>,
        // Held-back tail (a proper prefix of some needle), still unscanned.
        carry: Zeroizing<Vec<u8>>,
        decoder: Option<Decoder>,
        // Compressed bytes not yet fed to the decoder.
        input: Bytes,
        fed: bool,
        trailers: Option<HeaderMap>,
        done: bool,
    }
}

impl<B> Scrubbed<B> {
    /// Wraps `inner`, whose content coding is `coding`.
    pub fn new(inner: B, needles: Arc<Needles>, coding: Coding) -> Self {
        let decoder = match coding {
            Coding::Identity => None,
            Coding::Gzip => Some(Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(
                Vec::new(),
            )))),
            Coding::Deflate => Some(Decoder::Deflate(Box::new(flate2::write::ZlibDecoder::new(
                Vec::new(),
            )))),
        };
        Self {
            inner,
            needles,
            carry: Zeroizing::new(Vec::new()),
            decoder,
            input: Bytes::new(),
            fed: false,
            trailers: None,
            done: false,
        }
    }
}

/// Scans `carry + chunk` and returns what may be passed on now; the rest stays in `carry`.
fn process(needles: &Needles, carry: &mut Zeroizing<Vec<u8>>, chunk: Bytes, last: bool) -> Bytes {
    let mut matches = Vec::new();
    if carry.is_empty() {
        // The common case: no copy unless something matched or a tail is held.
        let end = needles.scan(&chunk, last, &mut matches);
        carry.extend_from_slice(&chunk[end..]);
        return if matches.is_empty() {
            chunk.slice(..end)
        } else {
            Bytes::from(Needles::replace(&chunk, end, &matches))
        };
    }
    carry.extend_from_slice(&chunk);
    let end = needles.scan(carry, last, &mut matches);
    let out = Needles::replace(carry, end, &matches);
    carry.drain(..end);
    Bytes::from(out)
}

impl<B> Scrubbed<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// Feeds compressed input until a step's worth of output is ready or the input runs out.
    fn decode_step(
        decoder: &mut Decoder,
        input: &mut Bytes,
        fed: &mut bool,
    ) -> Result<Bytes, BoxError> {
        while !input.is_empty() && decoder.output().len() < DECODE_STEP_OUT {
            let n = input.len().min(DECODE_STEP_IN);
            let used = decoder
                .write(&input[..n])
                .map_err(|_| Box::new(UndecodableBody) as BoxError)?;
            if used == 0 {
                // Bytes after the end of the compressed stream.
                return Err(Box::new(UndecodableBody));
            }
            *fed = true;
            let _ = input.split_to(used);
        }
        Ok(Bytes::from(std::mem::take(decoder.output())))
    }
}

impl<B> Body for Scrubbed<B>
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
        let mut this = self.project();
        loop {
            if let Some(decoder) = this.decoder.as_mut()
                && !this.input.is_empty()
            {
                let plain = Self::decode_step(decoder, this.input, this.fed)?;
                let out = process(this.needles, this.carry, plain, false);
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                continue;
            }
            if *this.done {
                if let Some(t) = this.trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if this.decoder.is_some() {
                            *this.input = data;
                            continue;
                        }
                        let out = process(this.needles, this.carry, data, false);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut trailers) = frame.into_trailers() {
                            this.needles.scrub_headers(&mut trailers);
                            *this.trailers = Some(trailers);
                        }
                    }
                },
                Poll::Ready(None) => {
                    *this.done = true;
                    let mut tail = Bytes::new();
                    if let Some(decoder) = this.decoder.as_mut()
                        && *this.fed
                    {
                        decoder
                            .finish()
                            .map_err(|_| Box::new(UndecodableBody) as BoxError)?;
                        tail = Bytes::from(std::mem::take(decoder.output()));
                    }
                    let out = process(this.needles, this.carry, tail, true);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use http_body_util::{BodyExt, StreamBody};
    use proptest::prelude::*;

    use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};

    use super::*;

    const SECRET: &[u8] = b"sk_live_4eC39HqLyjWDarjtT1zdp7dc";

    async fn run(needles: Arc<Needles>, chunks: Vec<Vec<u8>>, coding: Coding) -> Vec<u8> {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from(c))))
            .collect();
        let body = Scrubbed::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            needles,
            coding,
        );
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    fn needles() -> Arc<Needles> {
        Needles::new([SECRET, b"alice:pw-456".as_slice()]).unwrap()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[tokio::test]
    async fn every_modelled_encoding_is_redacted() {
        let n = needles();
        let secret = std::str::from_utf8(SECRET).unwrap();
        let reflections = [
            secret.to_owned(),
            STANDARD.encode(SECRET),
            URL_SAFE_NO_PAD.encode(SECRET),
            STANDARD.encode(format!("Bearer {secret}")),
            STANDARD.encode(format!("x{secret}")),
            STANDARD.encode(format!("xy{secret}")),
            STANDARD.encode("alice:pw-456"),
            percent_encode(SECRET, NON_ALPHANUMERIC).to_string(),
            hex::encode(SECRET),
        ];
        for r in reflections {
            let out = run(
                n.clone(),
                vec![format!("<{r}>").into_bytes()],
                Coding::Identity,
            )
            .await;
            let text = String::from_utf8_lossy(&out);
            assert!(text.contains("[REDACTED by agent-vault]"), "{r} -> {text}");
            assert!(!contains(&out, SECRET), "{text}");
        }
        // Bytes whose base64 has `+` and `/` at every alignment, so both alphabets differ.
        let value: &[u8] = b"k3y>?>~\xfb\xff\xbe?>s3cr3t";
        let binary = Needles::new([value]).unwrap();
        for prefix in [&b""[..], b"x", b"xy", b"Bearer "] {
            let mut plain = prefix.to_vec();
            plain.extend_from_slice(value);
            for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
                let encoded = engine.encode(&plain).into_bytes();
                // The characters that depend only on the value, as the encoder wrote them.
                let from = (8 * prefix.len()).div_ceil(6);
                let to = 8 * plain.len() / 6;
                let fragment = &encoded[from..to];
                let out = run(binary.clone(), vec![encoded.clone()], Coding::Identity).await;
                assert!(
                    contains(&out, MARKER),
                    "{}",
                    String::from_utf8_lossy(&encoded)
                );
                assert!(
                    !contains(&out, fragment),
                    "{}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
        let special = Needles::new([b"a/b\"c d\xc3\xa9f".as_slice()]).unwrap();
        for r in [
            r#"a\/b\"c d\u00e9f"#,
            r#"a/b\"c déf"#,
            "a%2Fb%22c+d%C3%A9f",
            "a%2fb%22c%20d%c3%a9f",
        ] {
            let out = run(
                special.clone(),
                vec![r.as_bytes().to_vec()],
                Coding::Identity,
            )
            .await;
            assert_eq!(out, MARKER, "{r}");
        }
    }

    #[tokio::test]
    async fn split_values_are_caught_and_other_tails_are_not_held() {
        let n = needles();
        let mut body = b"token=".to_vec();
        body.extend_from_slice(SECRET);
        body.extend_from_slice(b";");
        for cut in 0..body.len() {
            let out = run(
                n.clone(),
                vec![body[..cut].to_vec(), body[cut..].to_vec()],
                Coding::Identity,
            )
            .await;
            assert_eq!(out, b"token=[REDACTED by agent-vault];", "cut at {cut}");
        }
        // A tail that cannot start a needle is passed on at once.
        let mut carry = Zeroizing::new(Vec::new());
        let out = process(
            &n,
            &mut carry,
            Bytes::from_static(b"data: event\n\n"),
            false,
        );
        assert_eq!(&out[..], b"data: event\n\n");
        assert!(carry.is_empty());
        let out = process(&n, &mut carry, Bytes::from_static(b"data: sk_li"), false);
        assert_eq!(&out[..], b"data: ");
        assert_eq!(carry.as_slice(), b"sk_li");
        let out = process(&n, &mut carry, Bytes::from_static(b"ving\n\n"), false);
        assert_eq!(&out[..], b"sk_living\n\n");
    }

    #[tokio::test]
    async fn gzip_bodies_are_decoded_and_scrubbed() {
        let mut plain = Vec::new();
        for i in 0..2000 {
            plain.extend_from_slice(format!("line {i} ").as_bytes());
            if i == 1234 {
                plain.extend_from_slice(SECRET);
            }
        }
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&plain).unwrap();
        let gz = enc.finish().unwrap();
        let chunks: Vec<Vec<u8>> = gz.chunks(7).map(<[u8]>::to_vec).collect();
        let out = run(needles(), chunks, Coding::Gzip).await;
        assert!(!contains(&out, SECRET));
        assert_eq!(
            out.len(),
            plain.len() - SECRET.len() + MARKER.len(),
            "everything else is intact"
        );
        // Garbage is not passed on as if it were plain text.
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"not gzip at all")))];
        let body = Scrubbed::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            needles(),
            Coding::Gzip,
        );
        assert!(body.collect().await.is_err());
    }

    #[tokio::test]
    async fn a_decompression_bomb_streams_in_bounded_steps() {
        let mut enc = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        let gz = enc.finish().unwrap();
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(Frame::data(Bytes::from(gz)))];
        let mut body = Scrubbed::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            needles(),
            Coding::Gzip,
        );
        let (mut total, mut largest) = (0usize, 0usize);
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            total += data.len();
            largest = largest.max(data.len());
        }
        assert_eq!(total, 64 << 20);
        assert!(largest <= 2 * 1024 * 1024, "one frame held {largest} bytes");
    }

    #[test]
    fn codings() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        assert_eq!(coding(&h(&[])), Some(Coding::Identity));
        assert_eq!(
            coding(&h(&[("content-encoding", "GZIP")])),
            Some(Coding::Gzip)
        );
        assert_eq!(
            coding(&h(&[("content-encoding", "deflate")])),
            Some(Coding::Deflate)
        );
        for bad in [
            &[("content-encoding", "br")][..],
            &[("content-encoding", "zstd")],
            &[("content-encoding", "gzip, br")],
            &[("content-encoding", "gzip"), ("content-encoding", "gzip")],
            &[("transfer-encoding", "gzip, chunked")],
        ] {
            assert_eq!(coding(&h(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn headers_are_scrubbed_and_short_values_ignored() {
        let n = needles();
        let mut h = HeaderMap::new();
        h.insert(
            "location",
            HeaderValue::from_static(
                "https://evil.example/?k=sk_live_4eC39HqLyjWDarjtT1zdp7dc&x=1",
            ),
        );
        h.insert("x-plain", HeaderValue::from_static("nothing here"));
        n.scrub_headers(&mut h);
        assert_eq!(
            h["location"],
            "https://evil.example/?k=[REDACTED by agent-vault]&x=1"
        );
        assert_eq!(h["x-plain"], "nothing here");
        assert!(Needles::new([b"abc".as_slice()]).is_none());
    }

    #[test]
    fn both_skip_strategies_find_every_value() {
        // Few distinct first bytes: memchr groups. Many (one value per letter): the table.
        let few: Vec<Vec<u8>> = vec![b"sk_live_abcdef12".to_vec()];
        let many: Vec<Vec<u8>> = (b'a'..=b'z')
            .map(|c| format!("{}_secret_{}", c as char, c as char).into_bytes())
            .collect();
        for values in [few, many] {
            let n = Needles::new(values.iter().map(|v| v.as_slice())).unwrap();
            assert_eq!(n.groups.is_empty(), values.len() > 1, "strategy under test");
            let mut text = b"prefix ".to_vec();
            for v in &values {
                text.extend_from_slice(b"<");
                text.extend_from_slice(v);
                text.extend_from_slice(b"> and ");
                text.extend_from_slice(STANDARD.encode(v).as_bytes());
                text.extend_from_slice(b" zz");
            }
            let out = n.scrub_complete(&text).unwrap();
            for v in &values {
                assert!(!contains(&out, v), "{}", String::from_utf8_lossy(v));
                assert!(!contains(&out, STANDARD.encode(v).as_bytes()));
            }
            let markers = out.windows(MARKER.len()).filter(|w| *w == MARKER).count();
            assert_eq!(markers, 2 * values.len());
            assert!(out.starts_with(b"prefix <") && out.ends_with(b" zz"));
        }
    }

    proptest! {
        /// However the body is cut into chunks, the output is the same as scrubbing it whole, and
        /// holds no needle that was not already part of the original text around a match.
        #[test]
        fn chunking_never_changes_the_result(
            prefix in proptest::collection::vec(any::<u8>(), 0..64),
            suffix in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(0usize..200, 0..6),
            value in "[A-Za-z0-9_]{6,24}",
        ) {
            prop_assume!(!contains(MARKER, value.as_bytes()));
            let n = Needles::new([value.as_bytes()]).unwrap();
            let mut body = prefix.clone();
            body.extend_from_slice(value.as_bytes());
            body.extend_from_slice(&suffix);
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (body.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for p in points {
                chunks.push(body[at..p].to_vec());
                at = p;
            }
            chunks.push(body[at..].to_vec());
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let whole = rt.block_on(run(n.clone(), vec![body.clone()], Coding::Identity));
            let split = rt.block_on(run(n, chunks, Coding::Identity));
            prop_assert_eq!(&whole, &split);
            prop_assert!(!contains(&split, value.as_bytes()));
        }
    }
}
