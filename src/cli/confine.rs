//! The confinement `run` puts its command in, so an agent started with `agent-vault run` cannot
//! pick up what the person who started it can read: the CLI's login session, the server's data
//! directory and the files that hold keys. The command runs as the same OS user, so file
//! permissions alone do not stop it; Landlock does, without privileges and without `unsafe`:
//! `run` starts `agent-vault confined-exec --deny … -- COMMAND…`, which builds a Landlock ruleset,
//! restricts itself (with `no_new_privs`) and then `exec`s the command, which keeps the
//! restriction, the process id (so signals and exit codes behave as without confinement) and the
//! environment `run` prepared.
//!
//! Landlock only allows, so "everything but these paths" is spelled as a walk from `/` towards
//! each denied path: every entry beside the path gets the rights, the denied path gets none, and
//! the directories on the way (`/`, `$HOME`, …) get none either, because a right granted on a
//! directory covers everything beneath it, the denied path included. The price is that those
//! ancestor directories cannot be listed and nothing new can be created directly in them while
//! the command runs (see `run --help` and SECURITY.md).
#![allow(clippy::print_stderr)] // the refusal explains itself to a person on stderr

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use clap::{Args, ValueEnum};
use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus,
};

use super::CliError;

/// The newest Landlock ABI whose rights the ruleset asks for; older kernels enforce the subset
/// they know (best effort), a kernel without Landlock makes `run` refuse.
const LANDLOCK_ABI: ABI = ABI::V5;

/// Test-only: makes `run` behave as on a kernel without Landlock, so the refusal can be tested on
/// machines that have it. It can only make `run` refuse, never run anything less confined.
const SIMULATE_NO_LANDLOCK: &str = "AGENT_VAULT_TEST_NO_LANDLOCK";

/// Device files a `strict` command may still write: output sinks, terminals, shared memory.
const STRICT_WRITABLE_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
    "/dev/shm",
];

/// How `run` confines its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Mode {
    /// No confinement: the command can read everything you can, your CLI login included.
    Off,
    /// Deny the CLI login, the data directory and key files; everything else as usual.
    Paths,
    /// `paths`, and writes only in the working directory and the temporary directory.
    Strict,
}

/// The confinement flags of `agent-vault run`.
#[derive(Debug, Args)]
pub(super) struct ConfineArgs {
    /// How to confine the command (Linux Landlock, no privileges needed).
    ///
    /// `paths` (the default) denies reading and writing the CLI's login
    /// (~/.agent-vault), the server's data directory (~/.agent-vault, AGENT_VAULT_DATA_DIR or
    /// data_dir from AGENT_VAULT_* variables), AGENT_VAULT_MASTER_PASSWORD_FILE and every --deny
    /// path; `strict` also makes everything read-only except the working directory, the
    /// temporary directory and terminal and null devices; `off` runs the command unconfined.
    /// Side effects while the command runs: the directories on the way to a denied path (/,
    /// your home directory, ...) cannot be listed and nothing new can be created directly in
    /// them; files and directories already in them work as usual. Where Landlock is missing
    /// (Linux before 5.13, or disabled), `run` refuses unless --confine=off or --no-confine is
    /// given. Confinement covers files and process memory, not sockets of services outside it:
    /// run agents as another OS user for a hard boundary.
    #[arg(long, value_enum, default_value_t = Mode::Paths, value_name = "MODE")]
    confine: Mode,
    /// The same as --confine=off.
    #[arg(long, conflicts_with = "confine")]
    no_confine: bool,
    /// Also deny reading and writing PATH (repeatable).
    #[arg(long = "deny", value_name = "PATH")]
    deny: Vec<PathBuf>,
}

/// Flags of the hidden `agent-vault confined-exec`, which `run` starts in place of the command.
#[derive(Debug, Args)]
pub(super) struct ExecArgs {
    /// `paths` or `strict`.
    #[arg(long, value_enum)]
    mode: Mode,
    /// A path to deny (absolute, canonical).
    #[arg(long = "deny", value_name = "PATH")]
    deny: Vec<PathBuf>,
    /// A path that stays writable in `strict` mode (absolute, canonical).
    #[arg(long = "write", value_name = "PATH")]
    write: Vec<PathBuf>,
    /// A path the command may read even beneath a denied one: its own run's files.
    #[arg(long = "read", value_name = "PATH")]
    read: Vec<PathBuf>,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<OsString>,
}

/// What `run` will do to its command, decided before anything is minted.
#[derive(Debug)]
pub(super) struct Plan {
    mode: Mode,
    deny: Vec<PathBuf>,
    write: Vec<PathBuf>,
}

impl Plan {
    /// Reads the flags, finds the paths to deny and refuses when the command cannot be confined.
    pub(super) fn new(args: &ConfineArgs) -> Result<Self, CliError> {
        let mode = if args.no_confine {
            Mode::Off
        } else {
            args.confine
        };
        if mode == Mode::Off {
            return Ok(Self {
                mode,
                deny: Vec::new(),
                write: Vec::new(),
            });
        }
        landlock_available().map_err(|why| {
            CliError::msg(format!(
                "cannot confine the command: {why}. Without confinement it could read your CLI login and the vault's data directory. Run agents as another OS user, or pass --confine=off (or --no-confine) to run it unconfined anyway"
            ))
        })?;
        // This process holds the login while the command runs: keep other processes of the user
        // that are not root out of its memory too (the confined command is kept out by Landlock).
        let _ = nix::sys::prctl::set_dumpable(false);
        let cwd = std::env::current_dir()
            .map_err(|e| CliError::msg(format!("cannot read the working directory: {e}")))?;
        let mut deny: Vec<PathBuf> = denied_paths(&args.deny)
            .iter()
            .map(|p| canonical(&cwd, p))
            .collect();
        deny.sort();
        deny.dedup();
        let cwd = canonical(&cwd, &cwd);
        if let Some(d) = deny.iter().find(|d| cwd.starts_with(d)) {
            return Err(CliError::msg(format!(
                "the working directory {} is inside {}, which `run` denies to the command; start it from another directory",
                cwd.display(),
                d.display()
            )));
        }
        let write = if mode == Mode::Strict {
            let mut w = vec![cwd.clone(), canonical(&cwd, &std::env::temp_dir())];
            w.extend(STRICT_WRITABLE_DEVICES.iter().map(PathBuf::from));
            w
        } else {
            Vec::new()
        };
        Ok(Self { mode, deny, write })
    }

    /// The process to spawn for `command`: the command itself when unconfined, otherwise
    /// `agent-vault confined-exec`, which confines itself and becomes the command. Either way
    /// the agent-vault variables of the caller (master password, setup and invitation tokens,
    /// configuration) are not passed on; `run` sets the ones the command needs.
    pub(super) fn command(
        &self,
        command: &[String],
        run_files: &Path,
    ) -> Result<tokio::process::Command, CliError> {
        let mut cmd = if self.mode == Mode::Off {
            let mut cmd = tokio::process::Command::new(&command[0]);
            cmd.args(&command[1..]);
            cmd
        } else {
            let exe = std::env::current_exe().map_err(|e| {
                CliError::msg(format!(
                    "cannot find the agent-vault program to confine the command: {e}"
                ))
            })?;
            let mut cmd = tokio::process::Command::new(exe);
            cmd.arg("confined-exec").arg("--mode").arg(match self.mode {
                Mode::Strict => "strict",
                _ => "paths",
            });
            for path in &self.deny {
                cmd.arg("--deny").arg(path);
            }
            for path in &self.write {
                cmd.arg("--write").arg(path);
            }
            cmd.arg("--read").arg(run_files);
            cmd.arg("--").args(command);
            cmd
        };
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy().to_ascii_uppercase();
            // DATABASE_URL is the server's Postgres URL, password included: with it the command
            // could copy the wrapped data key and every hash, which confinement exists to deny.
            if name.starts_with("AGENT_VAULT_") || name == "DATABASE_URL" {
                cmd.env_remove(&key);
            }
        }
        Ok(cmd)
    }
}

/// Where `run` writes the files its command must read (CA certificates, trust store, Node and
/// Java helpers): `~/.agent-vault/runs`, inside the directory confinement denies. Each confined
/// command is granted read access to its own run's directory alone, so one agent can neither
/// read nor plant code in another run's preload files (which a sibling `node` or `java` would
/// load with that run's token).
pub(super) fn run_files_dir() -> Result<PathBuf, CliError> {
    Ok(super::client::session_dir()?.join("runs"))
}

/// `Err(why)` when this kernel cannot enforce a Landlock ruleset.
fn landlock_available() -> Result<(), String> {
    if std::env::var_os(SIMULATE_NO_LANDLOCK).is_some() {
        return Err(format!(
            "Landlock is not available ({SIMULATE_NO_LANDLOCK} is set, which simulates a kernel without it for tests)"
        ));
    }
    Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .and_then(Ruleset::create)
        .map(drop)
        .map_err(|e| {
            format!("Landlock is not available on this system (it needs Linux 5.13 or later with Landlock enabled: {e})")
        })
}

/// The CLI's session directory, the data directory wherever the configuration puts it, the
/// master password file, and the caller's extra paths.
fn denied_paths(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Ok(dir) = super::client::session_dir() {
        paths.push(dir);
    }
    // The default data directory, and the one the AGENT_VAULT_* environment names (the same
    // layers the server reads, minus its flags and --config file, which `run` cannot know).
    paths.push(crate::config::Config::default().data_dir);
    if let Ok(figment) =
        crate::config::Config::figment(None, &crate::config::FlagOverrides::default())
    {
        if let Ok(dir) = figment.extract_inner::<PathBuf>("data_dir") {
            paths.push(expand_home(dir));
        }
        if let Ok(Some(file)) = figment.extract_inner::<Option<PathBuf>>("smtp.password_file") {
            paths.push(expand_home(file));
        }
    }
    if let Some(file) = std::env::var_os("AGENT_VAULT_MASTER_PASSWORD_FILE") {
        paths.push(PathBuf::from(file));
    }
    paths.extend(extra.iter().cloned());
    paths
}

fn expand_home(path: PathBuf) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path,
    }
}

/// `path` made absolute against `cwd`, with `.` and `..` resolved and the longest existing prefix
/// canonicalized (symbolic links resolved), so the walk compares real locations.
fn canonical(cwd: &Path, path: &Path) -> PathBuf {
    let mut lexical = PathBuf::new();
    for part in cwd.join(path).components() {
        match part {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return lexical,
        }
    }
}

/// Which rights a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Grant {
    /// Everything Landlock handles.
    All,
    /// Read, list and execute.
    Read,
    /// Everything but read, list and execute.
    Write,
}

impl Grant {
    fn access(self) -> BitFlags<AccessFs> {
        match self {
            Grant::All => AccessFs::from_all(LANDLOCK_ABI),
            Grant::Read => AccessFs::from_read(LANDLOCK_ABI),
            Grant::Write => AccessFs::from_write(LANDLOCK_ABI),
        }
    }
}

/// The rules for one mode: which hierarchies get which rights. Pure apart from listing the
/// directories on the way to a denied path; `Err` names a directory that could be neither
/// listed nor granted whole (see [`grant_beneath`]).
fn rules(
    mode: Mode,
    deny: &[PathBuf],
    write: &[PathBuf],
    read: &[PathBuf],
) -> Result<Vec<(PathBuf, Grant)>, PathBuf> {
    let mut out = Vec::new();
    match mode {
        Mode::Off => return Ok(out),
        Mode::Paths => grant_beneath(Path::new("/"), Grant::All, deny, &mut out)?,
        Mode::Strict => {
            grant_beneath(Path::new("/"), Grant::Read, deny, &mut out)?;
            for root in write {
                grant_beneath(root, Grant::Write, deny, &mut out)?;
            }
        }
    }
    // Read-only even beneath a denied path: Landlock judges a file by the rules on its own
    // hierarchy, so the directories above it need no right of their own.
    out.extend(read.iter().map(|path| (path.clone(), Grant::Read)));
    Ok(out)
}

/// Grants `grant` on `path` unless a denied path is at or beneath it; then on each of its
/// entries instead, recursively, so the denied path and the directories leading to it get
/// nothing. Symbolic links get no rule of their own: Landlock judges the real location a link
/// resolves to, which the walk covers where it really is.
///
/// Inside another confinement (`run` under `run`) the directories on the way cannot be listed.
/// Such a directory is granted whole when every denied path beneath it is already out of reach
/// (the outer confinement, which stays in force, denies it); otherwise the walk fails rather
/// than leave a denied path readable.
fn grant_beneath(
    path: &Path,
    grant: Grant,
    deny: &[PathBuf],
    out: &mut Vec<(PathBuf, Grant)>,
) -> Result<(), PathBuf> {
    if deny.iter().any(|d| path.starts_with(d)) {
        return Ok(());
    }
    if !deny.iter().any(|d| d.starts_with(path)) {
        out.push((path.to_path_buf(), grant));
        return Ok(());
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            if deny
                .iter()
                .filter(|d| d.starts_with(path))
                .all(|d| out_of_reach(d))
            {
                out.push((path.to_path_buf(), grant));
                return Ok(());
            }
            return Err(path.to_path_buf());
        }
        Err(_) => return Ok(()), // gone since its parent was listed
    };
    for entry in entries.flatten() {
        let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(true);
        if !is_link {
            grant_beneath(&entry.path(), grant, deny, out)?;
        }
    }
    Ok(())
}

/// Whether this process is already refused `path` (or, when it does not exist, the nearest
/// directory above it, so it cannot be created either).
fn out_of_reach(path: &Path) -> bool {
    let denied = |r: std::io::Result<()>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied);
    let mut at = path;
    loop {
        match std::fs::symlink_metadata(at) {
            Ok(meta) if meta.is_dir() => return denied(std::fs::read_dir(at).map(drop)),
            Ok(_) => return denied(std::fs::File::open(at).map(drop)),
            Err(_) => match at.parent() {
                Some(parent) => at = parent,
                None => return false,
            },
        }
    }
}

/// Opens `path` without following a final symbolic link, for a Landlock rule.
fn open_for_rule(path: &Path) -> Option<std::fs::File> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode as Perm;
    let fd = open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Perm::empty(),
    )
    .ok()?;
    Some(std::fs::File::from(fd))
}

/// Confines this process as `args` says and becomes the command; returns only on failure.
pub(super) fn exec(args: ExecArgs) -> Result<(), CliError> {
    use std::os::unix::process::CommandExt;
    let refuse = |why: String| {
        CliError::msg(format!(
            "cannot confine the command: {why}; pass --confine=off (or --no-confine) to run it unconfined"
        ))
    };
    if args.mode == Mode::Off {
        return Err(refuse("confined-exec needs --mode paths or strict".into()));
    }
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .and_then(Ruleset::create)
        .map_err(|e| refuse(format!("cannot create a Landlock ruleset: {e}")))?;
    let rules = rules(args.mode, &args.deny, &args.write, &args.read).map_err(|dir| {
        refuse(format!(
            "{} cannot be listed (is this already a confined command?) and a path to deny beneath it is still readable",
            dir.display()
        ))
    })?;
    for (path, grant) in rules {
        let Some(file) = open_for_rule(&path) else {
            continue; // gone since it was listed: nothing there to grant
        };
        let Ok(meta) = file.metadata() else { continue };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mut access = grant.access();
        if !meta.is_dir() {
            access &= AccessFs::from_file(LANDLOCK_ABI);
        }
        if access.is_empty() {
            continue;
        }
        ruleset = ruleset
            .add_rule(PathBeneath::new(file, access))
            .map_err(|e| refuse(format!("cannot add a rule for {}: {e}", path.display())))?;
    }
    let status = ruleset
        .restrict_self()
        .map_err(|e| refuse(format!("Landlock refused the ruleset: {e}")))?;
    if status.ruleset == RulesetStatus::NotEnforced || !status.no_new_privs {
        return Err(refuse(
            "Landlock is not enforced on this system (it needs Linux 5.13 or later with Landlock enabled)".into(),
        ));
    }
    let program = &args.command[0];
    let err = std::process::Command::new(program)
        .args(&args.command[1..])
        .exec();
    Err(CliError::msg(format!(
        "cannot run {}: {err}",
        program.to_string_lossy()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_grants_everything_beside_a_denied_path_and_nothing_on_the_way() {
        let root = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        let home = root.join("home");
        for dir in ["home/.agent-vault", "home/project/src", "other"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("home/notes.txt"), "x").unwrap();
        std::fs::write(root.join("home/.agent-vault/session.json"), "x").unwrap();
        std::os::unix::fs::symlink(root.join("home/.agent-vault"), root.join("home/link")).unwrap();
        let deny = vec![home.join(".agent-vault")];
        let mut out = Vec::new();
        grant_beneath(&root, Grant::All, &deny, &mut out).unwrap();
        out.sort();
        assert_eq!(
            out,
            vec![
                (home.join("notes.txt"), Grant::All),
                (home.join("project"), Grant::All),
                (root.join("other"), Grant::All),
            ],
            "no rule on the root, on home, on the denied directory or through the link"
        );
    }

    #[test]
    fn strict_writes_only_beneath_its_roots_and_never_into_a_denied_path() {
        let root = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        for dir in ["work/.agent-vault", "work/out"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let deny = vec![root.join("work/.agent-vault")];
        let own_run = root.join("work/.agent-vault/runs/this-run");
        let rules = rules(
            Mode::Strict,
            &deny,
            &[root.join("work")],
            std::slice::from_ref(&own_run),
        )
        .unwrap();
        let writes: Vec<_> = rules
            .iter()
            .filter(|(_, g)| *g == Grant::Write)
            .map(|(p, _)| p.clone())
            .collect();
        assert_eq!(writes, vec![root.join("work/out")]);
        assert!(
            rules
                .iter()
                .filter(|(p, _)| p.starts_with(root.join("work/.agent-vault")))
                .eq([&(own_run, Grant::Read)]),
            "beneath the denied path only the run's own files, read-only: {rules:?}"
        );
        assert!(rules.iter().all(|(p, _)| p != Path::new("/")));
    }

    #[test]
    fn a_missing_denied_path_still_denies_its_future_place() {
        let root = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        std::fs::create_dir_all(root.join("home/project")).unwrap();
        let deny = vec![canonical(
            &root,
            Path::new("home/./x/../.agent-vault/session.json"),
        )];
        assert_eq!(deny[0], root.join("home/.agent-vault/session.json"));
        let mut out = Vec::new();
        grant_beneath(&root, Grant::All, &deny, &mut out).unwrap();
        assert_eq!(out, vec![(root.join("home/project"), Grant::All)]);
    }

    #[test]
    fn read_and_write_grants_split_every_right() {
        assert_eq!(
            Grant::Read.access() | Grant::Write.access(),
            Grant::All.access()
        );
        assert!((Grant::Read.access() & Grant::Write.access()).is_empty());
    }
}
