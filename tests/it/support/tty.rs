//! The CLI on a pseudo-terminal, driven step by step: the test waits for each prompt, can check
//! that the program switched echo off before it types (a secret prompt's promise), then types.
//! [`super::terminal`] answers prompts automatically on a terminal whose echo is off from the
//! start, which suits whole walkthroughs but cannot tell whether a program hides what is typed.
//! `setsid --ctty` makes the terminal the child's controlling one (prompts open `/dev/tty`)
//! without `unsafe` here.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::termios::{LocalFlags, tcgetattr};
use tokio::sync::mpsc;

use super::{TestApp, eventually, missing_dependency};

/// A CLI process whose standard input, output and error are one terminal.
pub(crate) struct Tty {
    master: std::fs::File,
    output: mpsc::UnboundedReceiver<Vec<u8>>,
    /// Everything the terminal showed so far (prompts, echoed input, output).
    pub(crate) seen: String,
    child: tokio::process::Child,
}

impl Tty {
    /// Starts `agent-vault ARGS` against `app` on a new terminal; `None` (after the usual notice)
    /// when `setsid` is missing.
    pub(crate) fn spawn(app: &TestApp, args: &[&str]) -> Option<Self> {
        if std::process::Command::new("setsid")
            .arg("--version")
            .output()
            .is_err()
        {
            missing_dependency("setsid (util-linux)");
            return None;
        }
        // Close-on-exec from the start, so programs other tests spawn meanwhile do not inherit
        // (and keep open) either side.
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let slave_side: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags((OFlag::O_NOCTTY | OFlag::O_CLOEXEC).bits())
            .open(ptsname_r(&master).unwrap())
            .unwrap()
            .into();
        let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        let child = tokio::process::Command::new("setsid")
            .args(["--wait", "--ctty", env!("CARGO_BIN_EXE_agent-vault")])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", app.home.path())
            .env("AGENT_VAULT_ADDR", &app.admin)
            .stdin(slave(&slave_side))
            .stdout(slave(&slave_side))
            .stderr(slave(&slave_side))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Only the child holds the terminal's other end now, so reads end when it exits.
        drop(slave_side);
        let master = std::fs::File::from(OwnedFd::from(master));
        let mut reader = master.try_clone().unwrap();
        let (tx, output) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the child and its terminal are gone.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Some(Self {
            master,
            output,
            seen: String::new(),
            child,
        })
    }

    /// Waits (bounded) until the terminal has shown `needle`.
    pub(crate) async fn expect(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.seen.contains(needle) {
            match tokio::time::timeout_at(deadline, self.output.recv()).await {
                Ok(Some(chunk)) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                _ => panic!(
                    "the terminal never showed {needle:?}; it showed {:?}",
                    self.seen
                ),
            }
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
            self.seen
        );
    }

    /// Types a line.
    pub(crate) fn type_line(&mut self, line: &str) {
        self.master.write_all(line.as_bytes()).unwrap();
        self.master.write_all(b"\n").unwrap();
    }

    /// Waits for the program to exit; returns its code and everything the terminal showed.
    pub(crate) async fn finish(mut self) -> (i32, String) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the CLI exits")
            .unwrap();
        while let Ok(Some(chunk)) =
            tokio::time::timeout(Duration::from_secs(5), self.output.recv()).await
        {
            self.seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        (status.code().unwrap_or(-1), self.seen)
    }
}
