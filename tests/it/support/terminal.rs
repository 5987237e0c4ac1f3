//! A program on a pseudo-terminal, run the way a person at a terminal runs it: it is the
//! session leader of its own terminal (through util-linux `setsid --ctty`, so prompts that open
//! `/dev/tty` work and never reach the terminal of whoever runs the tests, without `unsafe`
//! here), and everything it prints is kept as one transcript. Two ways to drive it, one engine:
//! - [`Terminal::spawn`]: a responder the test supplies types the answers (passwords,
//!   confirmations, values) as the transcript asks for them. Echo is off from the start, as it is
//!   at a password prompt, so what the responder types never shows; suits whole walkthroughs.
//! - [`Terminal::spawn_cli`]: our CLI, driven step by step (`expect`, `type_line`). Echo is left
//!   as the program sets it, so a test can check that a secret prompt switched it off itself
//!   ([`Terminal::expect_echo_off`]) before typing.

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

use super::{TestApp, eventually, missing_dependency};

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
    /// The master side, for typing and for reading the terminal's settings.
    master: std::fs::File,
    shared: Arc<Shared>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Terminal {
    /// Starts `program args` in a new session whose controlling terminal is a fresh
    /// pseudo-terminal (through util-linux `setsid --ctty`), with exactly the environment `env`.
    /// Echo is off from the start, so the responder's answers never show in the transcript.
    pub(crate) fn spawn(
        program: &str,
        args: &[&OsStr],
        cwd: &Path,
        env: &[(String, String)],
        responder: Responder,
    ) -> std::io::Result<Self> {
        Self::start(program, args, cwd, env, responder, false)
    }

    /// Starts `agent-vault ARGS` against `app` on a new terminal whose echo stays as the CLI
    /// sets it, for a test to drive step by step; `None` (after the usual notice) when
    /// `setsid` is missing.
    pub(crate) fn spawn_cli(app: &TestApp, args: &[&str]) -> Option<Self> {
        if Command::new("setsid").arg("--version").output().is_err() {
            missing_dependency("setsid (util-linux)");
            return None;
        }
        let env = [
            ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".to_owned(), app.home.path().display().to_string()),
            ("AGENT_VAULT_ADDR".to_owned(), app.admin.to_string()),
        ];
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let terminal = Self::start(
            env!("CARGO_BIN_EXE_agent-vault"),
            &args,
            &std::env::current_dir().unwrap(),
            &env,
            Box::new(|_| Reply::default()),
            true,
        )
        .unwrap();
        Some(terminal)
    }

    fn start(
        program: &str,
        args: &[&OsStr],
        cwd: &Path,
        env: &[(String, String)],
        mut responder: Responder,
        echo: bool,
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
        if !echo {
            let mut termios = tcgetattr(&slave)?;
            termios.local_flags.remove(LocalFlags::ECHO);
            tcsetattr(&slave, SetArg::TCSANOW, &termios)?;
        }
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
        let master = output.try_clone()?;
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
            master,
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

    /// [`Self::wait_for`] without blocking the runtime, for tests whose program talks to a
    /// server on the test's own runtime.
    pub(crate) async fn until(&self, limit: Duration, mut done: impl FnMut(&str) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            {
                let state = self.shared.state.lock().unwrap();
                if done(&state.transcript) {
                    return true;
                }
                if state.closed || Instant::now() >= deadline {
                    return false;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (bounded) until the terminal has shown `needle`.
    pub(crate) async fn expect(&self, needle: &str) {
        if !self
            .until(Duration::from_secs(30), |t| t.contains(needle))
            .await
        {
            panic!(
                "the terminal never showed {needle:?}; it showed {:?}",
                self.transcript()
            );
        }
    }

    /// Waits (bounded) until the program has switched echo off, as a password prompt does.
    pub(crate) async fn expect_echo_off(&self) {
        let off = eventually(Duration::from_secs(10), async || {
            let flags = tcgetattr(&self.master).unwrap().local_flags;
            (!flags.contains(LocalFlags::ECHO)).then_some(())
        })
        .await;
        assert!(
            off.is_some(),
            "echo stayed on; the terminal showed {:?}",
            self.transcript()
        );
    }

    /// Types a line.
    pub(crate) fn type_line(&mut self, line: &str) {
        self.master.write_all(line.as_bytes()).unwrap();
        self.master.write_all(b"\n").unwrap();
    }

    /// Waits (bounded, without blocking the runtime) for the program to exit; returns its code
    /// and everything the terminal showed.
    pub(crate) async fn exit(mut self) -> (i32, String) {
        self.until(Duration::from_secs(30), |_| false).await;
        assert!(self.is_closed(), "the CLI exits: {:?}", self.transcript());
        let status = self.child.wait().unwrap();
        (status.code().unwrap_or(-1), self.transcript())
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
