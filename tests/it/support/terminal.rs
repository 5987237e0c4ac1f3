//! A program on a pseudo-terminal, run the way a person at a terminal runs it: it is the
//! session leader of its own terminal (so prompts that open `/dev/tty` work and never reach the
//! terminal of whoever runs the tests), everything it prints is kept as one transcript, and a
//! responder the test supplies types the answers (passwords, confirmations, values) as the
//! transcript asks for them. Echo is off, as it is at a password prompt, so what the responder
//! types never shows in the transcript.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::signal::{Signal, killpg};
use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
use nix::unistd::Pid;

/// What a responder answers to the transcript it has not consumed yet.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    /// Bytes of that text it is done with (they are not shown to it again).
    pub consumed: usize,
    /// What to type on the terminal, if anything.
    pub input: String,
}

/// Called with the transcript not yet consumed, each time the program prints something.
pub(crate) type Responder = Box<dyn FnMut(&str) -> Reply + Send>;

#[derive(Default)]
struct State {
    transcript: String,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// A running program on its own pseudo-terminal.
pub(crate) struct Terminal {
    child: Child,
    shared: Arc<Shared>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Terminal {
    /// Starts `program args` in a new session whose controlling terminal is a fresh
    /// pseudo-terminal (through util-linux `setsid --ctty`), with exactly the environment `env`.
    pub(crate) fn spawn(
        program: &str,
        args: &[&OsStr],
        cwd: &Path,
        env: &[(String, String)],
        mut responder: Responder,
    ) -> std::io::Result<Self> {
        // Both ends close-on-exec from the start: other tests spawn programs concurrently, and
        // one that inherited the slave side would keep this terminal open after its end.
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(OFlag::O_NOCTTY.bits())
            .open(ptsname_r(&master)?)?;
        let mut termios = tcgetattr(&slave)?;
        termios.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&slave, SetArg::TCSANOW, &termios)?;
        let mut cmd = Command::new("setsid");
        cmd.args(["--wait", "--ctty", program])
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn()?;
        // The command holds the last copies of the terminal's slave side: once it is gone, the
        // master reads EOF (EIO) when the program and everything it started have exited.
        drop(cmd);
        let mut output = std::fs::File::from(OwnedFd::from(master));
        let mut input = output.try_clone()?;
        let shared = Arc::new(Shared::default());
        let reader = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let (mut buf, mut pending, mut consumed) = ([0u8; 4096], Vec::new(), 0);
                loop {
                    let n = match output.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        // EIO: the last holder of the slave side has exited (Linux).
                        Err(_) => break,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    let text = take_utf8(&mut pending).replace('\r', "");
                    let unconsumed = {
                        let mut state = shared.state.lock().unwrap();
                        state.transcript.push_str(&text);
                        state.transcript[consumed..].to_owned()
                    };
                    let reply = responder(&unconsumed);
                    consumed += reply.consumed.min(unconsumed.len());
                    if !reply.input.is_empty() {
                        let _ = input.write_all(reply.input.as_bytes());
                    }
                    shared.changed.notify_all();
                }
                shared.state.lock().unwrap().closed = true;
                shared.changed.notify_all();
            })
        };
        Ok(Self {
            child,
            shared,
            reader: Some(reader),
        })
    }

    /// Everything printed so far.
    pub(crate) fn transcript(&self) -> String {
        self.shared.state.lock().unwrap().transcript.clone()
    }

    /// Waits (at most `limit`) until `done` holds for the transcript; false when time ran out or
    /// the terminal closed first.
    pub(crate) fn wait_for(&self, limit: Duration, mut done: impl FnMut(&str) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.shared.state.lock().unwrap();
        loop {
            if done(&state.transcript) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.closed || left.is_zero() {
                return false;
            }
            state = self.shared.changed.wait_timeout(state, left).unwrap().0;
        }
    }

    /// Waits (at most `limit`) for the program and everything it started to finish, and
    /// returns its exit status (`None` when time ran out: everything is then killed) and the
    /// whole transcript.
    pub(crate) fn finish(mut self, limit: Duration) -> (Option<ExitStatus>, String) {
        self.wait_for(limit, |_| false);
        let status = if self.is_closed() {
            self.child.wait().ok()
        } else {
            None
        };
        (status, self.transcript())
    }

    /// Asks the whole session to stop (SIGTERM to its process group), then waits at most
    /// `limit` for it to finish.
    pub(crate) fn stop(self, limit: Duration) -> (Option<ExitStatus>, String) {
        self.signal(Signal::SIGTERM);
        self.finish(limit)
    }

    /// Whether everything holding the terminal has exited.
    fn is_closed(&self) -> bool {
        self.shared.state.lock().unwrap().closed
    }

    /// `setsid` made the program the leader of a new session and process group whose id is
    /// its pid (it does not fork: a spawned child never leads a group already).
    fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // Something of ours still holds the terminal: end the session's process group.
        if !self.is_closed() {
            self.signal(Signal::SIGKILL);
        }
        let _ = self.child.wait();
        self.wait_for(Duration::from_secs(5), |_| false);
        if self.is_closed()
            && let Some(reader) = self.reader.take()
        {
            let _ = reader.join();
        }
    }
}

/// Takes the complete UTF-8 text at the start of `pending`, leaving an incomplete trailing
/// character for the next read (invalid bytes become U+FFFD).
fn take_utf8(pending: &mut Vec<u8>) -> String {
    let keep = match std::str::from_utf8(pending) {
        Ok(_) => 0,
        Err(e) if e.error_len().is_none() => pending.len() - e.valid_up_to(),
        Err(_) => 0,
    };
    let rest = pending.split_off(pending.len() - keep);
    let text = String::from_utf8_lossy(pending).into_owned();
    *pending = rest;
    text
}
