//! WebSocket upgrades. The handshake goes through the normal pipeline (so credentials were
//! attached to it). Afterwards frames are spliced; when the service declares `websocket`
//! places, or credentials were attached, frames are read one by one instead: a placeholder that
//! is the whole string at a declared JSON Pointer of the agent's text frame is replaced, one
//! anywhere else closes the connection, and injected values are scrubbed from the upstream's
//! frames. Compression extensions are stripped from such handshakes so frames stay readable.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::conn::{self, Activity, Counted};
use super::scrub::Needles;
use super::substitute::Plan;

/// Largest frame read when rewriting; bigger frames close the connection.
const MAX_FRAME: u64 = 16 << 20;
const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;

/// What to do to frames in each direction.
pub(super) struct Rewrite {
    /// The declared WebSocket places (JSON Pointers into the agent's unfragmented text frames),
    /// and the vault's placeholders, refused anywhere else in the agent's frames.
    pub frames: Plan,
    /// Values to scrub from the upstream's frames.
    pub needles: Option<Arc<Needles>>,
}

impl std::fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewrite")
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

/// Splices the agent's and the upstream's upgraded connections until either side closes or
/// nothing has been read in either direction for `idle`; with a `rewrite`, frame by frame.
pub(super) async fn splice(
    agent: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    rewrite: Option<Rewrite>,
) {
    let (agent, upstream) = match tokio::try_join!(agent, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    // Idle means nothing read in either direction: a stream that only the upstream talks on
    // (or only the agent) is busy, and a busy connection lives as long as it stays busy.
    let activity = Arc::new(Activity::default());
    activity.touch();
    let read = Arc::new(AtomicU64::new(0));
    let mut agent = Counted {
        inner: TokioIo::new(agent),
        read: read.clone(),
        activity: activity.clone(),
    };
    let mut upstream = Counted {
        inner: TokioIo::new(upstream),
        read,
        activity: activity.clone(),
    };
    let Some(rewrite) = rewrite else {
        tokio::select! {
            res = tokio::io::copy_bidirectional(&mut agent, &mut upstream) => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "websocket ended with an error");
                }
            }
            () = conn::idle(&activity, idle) => tracing::debug!("websocket closed after the idle limit"),
        }
        return;
    };
    let (agent_read, mut agent_write) = tokio::io::split(agent);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let frames = rewrite.frames;
    let needles = rewrite.needles;
    let to_upstream = pump(agent_read, upstream_write, move |frame| {
        substitute(frame, &frames)
    });
    let to_agent = pump(upstream_read, &mut agent_write, move |frame| {
        scrub(frame, needles.as_deref())
    });
    let mut refused = false;
    tokio::select! {
        res = to_upstream => if let Err(e) = res {
            refused = e.kind() == io::ErrorKind::PermissionDenied;
            tracing::debug!(error = %e, "websocket (agent side) ended");
        },
        res = to_agent => if let Err(e) = res { tracing::debug!(error = %e, "websocket (upstream side) ended") },
        () = conn::idle(&activity, idle) => tracing::debug!("websocket closed after the idle limit"),
    }
    if refused {
        // Tell the agent why, as the HTTP path would with 403 `placeholder_refused`: close code
        // 1008 (policy violation).
        let mut payload = 1008u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"placeholder_refused");
        let close = Frame {
            fin: true,
            rsv: 0,
            opcode: OP_CLOSE,
            masked: false,
            payload,
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            write_frame(&mut agent_write, &close),
        )
        .await;
    }
}

/// One frame, unmasked.
struct Frame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 2];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let fin = head[0] & 0x80 != 0;
    let rsv = (head[0] >> 4) & 0x7;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "websocket frame too large to inspect",
        ));
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0)];
    r.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok(Some(Frame {
        fin,
        rsv,
        opcode,
        masked,
        payload,
    }))
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> io::Result<()> {
    let mut out = Vec::with_capacity(frame.payload.len() + 14);
    out.push((u8::from(frame.fin) << 7) | (frame.rsv << 4) | frame.opcode);
    let mask_bit = if frame.masked { 0x80 } else { 0 };
    let len = frame.payload.len();
    if len < 126 {
        out.push(mask_bit | u8::try_from(len).unwrap_or(0));
    } else if let Ok(short) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if frame.masked {
        // A fresh key for what we re-encode: masks exist so the payload is unpredictable on
        // the wire; reusing the client's would defeat that for rewritten frames.
        let mask: [u8; 4] =
            crate::crypto::random_bytes().map_err(|_| io::Error::other("no randomness"))?;
        out.extend_from_slice(&mask);
        out.extend(
            frame
                .payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4]),
        );
    } else {
        out.extend_from_slice(&frame.payload);
    }
    w.write_all(&out).await?;
    w.flush().await
}

async fn pump<R, W>(
    mut r: R,
    mut w: W,
    mut edit: impl FnMut(&mut Frame) -> io::Result<()>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let Some(mut frame) = read_frame(&mut r).await? else {
            let _ = w.shutdown().await;
            return Ok(());
        };
        edit(&mut frame)?;
        let close = frame.opcode == OP_CLOSE;
        write_frame(&mut w, &frame).await?;
        if close {
            return Ok(());
        }
    }
}

/// Replaces placeholders at declared JSON Pointers of the agent's unfragmented, uncompressed
/// text frames. A placeholder anywhere else (another field, a non-JSON, fragmented or binary
/// frame) ends the connection before the frame is sent (a `PermissionDenied` error, which
/// closes the agent's side with 1008).
fn substitute(frame: &mut Frame, plan: &Plan) -> io::Result<()> {
    if plan.is_empty() || !matches!(frame.opcode, OP_TEXT | OP_BINARY | OP_CONTINUATION) {
        return Ok(());
    }
    if frame.opcode == OP_TEXT && frame.fin && frame.rsv == 0 {
        if let Some(rewritten) = plan
            .frame(&frame.payload)
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?
        {
            frame.payload = rewritten;
        }
        return Ok(());
    }
    if plan.find(&frame.payload).is_some() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a placeholder in a fragmented, compressed or binary websocket frame is refused",
        ));
    }
    Ok(())
}

/// Removes injected values from the upstream's data frames; refuses what it cannot read.
fn scrub(frame: &mut Frame, needles: Option<&Needles>) -> io::Result<()> {
    let Some(needles) = needles else {
        return Ok(());
    };
    if !matches!(
        frame.opcode,
        OP_TEXT | OP_BINARY | OP_CONTINUATION | OP_CLOSE
    ) {
        return Ok(());
    }
    if frame.rsv != 0 {
        // A compressed frame despite the stripped extension: it cannot be checked.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "compressed websocket frame cannot be scrubbed",
        ));
    }
    if let Some(clean) = needles.scrub_complete(&frame.payload) {
        frame.payload = clean;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_masked_and_unmasked() {
        for (masked, len) in [(true, 5usize), (false, 200), (true, 70_000)] {
            let frame = Frame {
                fin: true,
                rsv: 0,
                opcode: OP_TEXT,
                masked,
                payload: vec![b'a'; len],
            };
            let mut wire = Vec::new();
            write_frame(&mut wire, &frame).await.unwrap();
            let back = read_frame(&mut wire.as_slice()).await.unwrap().unwrap();
            assert_eq!(
                (back.fin, back.opcode, back.masked, back.payload.len()),
                (true, OP_TEXT, masked, len)
            );
            assert!(back.payload.iter().all(|&b| b == b'a'));
        }
    }

    #[test]
    fn text_frames_get_substitutions_and_other_frames_are_refused() {
        let plan = crate::proxy::substitute::test_plan(
            "- host: ws.example.com\n  auth: {type: passthrough}\n  substitutions:\n    - {placeholder: __TOKEN__, key: K, in: [{websocket: /auth}]}\n",
            "K",
            b"s3cret-value",
        )
        .for_websocket();
        let frame = |opcode, fin, payload: &[u8]| Frame {
            fin,
            rsv: 0,
            opcode,
            masked: true,
            payload: payload.to_vec(),
        };
        let mut text = frame(OP_TEXT, true, br#"{"auth": "__TOKEN__", "n": 1}"#);
        substitute(&mut text, &plan).unwrap();
        assert_eq!(text.payload, br#"{"auth": "s3cret-value", "n": 1}"#);
        let mut plain = frame(OP_TEXT, true, b"hello");
        substitute(&mut plain, &plan).unwrap();
        assert_eq!(plain.payload, b"hello");
        for mut bad in [
            frame(OP_TEXT, true, b"auth __TOKEN__ now"),
            frame(OP_TEXT, true, br#"{"note": "__TOKEN__"}"#),
            frame(OP_BINARY, true, b"__TOKEN__"),
            frame(OP_TEXT, false, br#"{"auth": "__TOKEN__"}"#),
            frame(OP_CONTINUATION, true, b"__TOKEN__"),
        ] {
            assert!(substitute(&mut bad, &plan).is_err());
        }
    }

    #[test]
    fn upstream_frames_are_scrubbed() {
        let needles = Needles::new([&b"s3cret-value"[..]]).unwrap();
        let mut frame = Frame {
            fin: true,
            rsv: 0,
            opcode: OP_TEXT,
            masked: false,
            payload: b"echo: s3cret-value".to_vec(),
        };
        scrub(&mut frame, Some(&needles)).unwrap();
        assert!(!String::from_utf8_lossy(&frame.payload).contains("s3cret-value"));
        let mut compressed = Frame {
            fin: true,
            rsv: 4,
            opcode: OP_TEXT,
            masked: false,
            payload: vec![1, 2],
        };
        assert!(scrub(&mut compressed, Some(&needles)).is_err());
    }
}
