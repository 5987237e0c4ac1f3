//! The README runs as written: every ```` ```sh ```` block of README.md is run with bash, line
//! for line, against a real server, in README order, so a walkthrough that stops working fails
//! here instead of in a new user's terminal.
//!
//! How the README maps onto the test, with no rewriting of what the blocks say:
//! - Markers: an HTML comment on the line before a block says what it is.
//!   `<!-- readme-test: skip -->`: not run (building, testing, benchmarking: cargo's business).
//!   `<!-- readme-test: server -->`: "terminal 1", the server; it starts in the background and
//!   the other blocks run once it prints its addresses. Every other `sh` block runs, in order,
//!   each in a fresh `bash` with `set -e -o pipefail`, and must succeed.
//! - The binary: the working directory is a scratch "checkout" whose `target/release/agent-vault`
//!   is the binary under test, and its directory is first on `PATH`. A line starting with
//!   `cargo ` is not run: the test suite has already built it.
//! - Addresses: the server is configured the way an operator would, through `AGENT_VAULT_*`
//!   environment variables (ports 0, a tiny KDF, and `upstream.resolve`/`extra_ca_files`
//!   sending the README's external hosts to the suite's fake HTTPS upstream); the other blocks
//!   find it through `AGENT_VAULT_ADDR`, and `run` learns the proxy's port from the server. So
//!   the README keeps its default 14321/14322 and no text is rewritten.
//! - A person at a terminal: every block runs on a pseudo-terminal of its own with `HOME` a
//!   scratch directory (so `~/.agent-vault` is the server's data directory and the CLI's login,
//!   as the README says). Prompts are answered as they appear: master passwords, the account
//!   password (`auth register` asks twice), `[y/N]` confirmations. A line with `KEY=-` gets one
//!   typed line per such key, typed when the line starts (it may not prompt), then Ctrl-D if
//!   the line's comment tells the reader to press it; the values are [`typed_value`], and the
//!   test checks they reach the fake upstream as the README promises.
//! - Failures name the README line that failed, its output, and the block's whole transcript.
//!
//! Later changes to what a command asks (a new confirmation, a new prompt) should need a README
//! edit or a new entry in [`prompt_answer`], not a new harness.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::support::terminal::{Reply, Terminal};
use crate::support::{Alpn, FakeUpstream, TestCa, install_crypto, missing_dependency};

/// Hosts the README sends requests to; the test resolves them to its fake upstream, whose
/// certificate (from a test CA the server is told to trust) names them.
const EXTERNAL_HOSTS: &[&str] = &["api.stripe.com", "api.github.com"];
/// The master password typed at the server's prompt (a passphrase: the server refuses weak ones).
const MASTER_PASSWORD: &str = "readme walkthrough master passphrase";
/// The account password typed at `auth register`'s and `auth login`'s prompts.
const ACCOUNT_PASSWORD: &str = "readme-account-password";
/// What a block prints before each of its commands: the README line that starts.
const MARKER: &str = "@@readme-line ";
/// Commands that print credential values because the person asked for them.
const SHOWS_VALUES: &[&str] = &["--reveal", "credential get", "creds get"];
/// Time for one block; the whole walkthrough takes a few seconds.
const BLOCK_LIMIT: Duration = Duration::from_secs(60);

/// The value typed for `KEY=-`.
fn typed_value(key: &str) -> String {
    format!("{}-typed-by-the-readme-test", key.to_ascii_lowercase())
}

/// What to type at a prompt (the unfinished last line a program printed), if it is one.
fn prompt_answer(line: &str) -> Option<&'static str> {
    let line = line.trim_end().to_ascii_lowercase();
    if line.ends_with("password:") {
        return Some(if line.contains("master") {
            MASTER_PASSWORD
        } else {
            ACCOUNT_PASSWORD
        });
    }
    let asks = |forms: &[&str]| forms.iter().any(|f| line.ends_with(f));
    if asks(&["[y/n]", "[y/n]:", "(y/n)", "(y/n):", "[y/n]?", "(y/n)?"]) {
        return Some("y");
    }
    asks(&["[yes/no]", "[yes/no]:", "(yes/no)", "(yes/no):"]).then_some("yes")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Run,
}

/// One ```` ```sh ```` block of the README.
#[derive(Debug)]
struct Block {
    role: Role,
    /// README line number (1-based) of the block's first line of code.
    first_line: usize,
    lines: Vec<String>,
}

impl Block {
    fn line(&self, readme_line: usize) -> &str {
        readme_line
            .checked_sub(self.first_line)
            .and_then(|i| self.lines.get(i))
            .map_or("", String::as_str)
    }

    /// The script bash runs: a first line that makes every command announce its README line,
    /// then the block's lines as they are (a `cargo` line becomes a no-op, keeping numbers).
    fn script(&self) -> String {
        // bash's LINENO of the block's first line is 2.
        let offset = self.first_line as i64 - 2;
        let mut script = format!(
            "set -e -o pipefail; trap 'printf \"\\n{MARKER}%d\\n\" \"$((LINENO + {offset}))\"' DEBUG\n"
        );
        for line in &self.lines {
            if line.trim_start().starts_with("cargo ") {
                script.push_str(": not run by the README test, which built the binary already\n");
            } else {
                script.push_str(line);
                script.push('\n');
            }
        }
        script
    }
}

/// The README's shell blocks, minus those marked skip.
fn shell_blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut marker: Option<&str> = None;
    let mut lines = readme.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("<!-- readme-test:") {
            let word = rest.trim_end_matches("-->").trim();
            assert!(
                ["skip", "server"].contains(&word),
                "README.md:{}: unknown marker {word:?} (skip or server)",
                i + 1
            );
            marker = Some(word);
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        let info = trimmed.strip_prefix("```").map(str::trim);
        let is_shell = matches!(info, Some("sh" | "bash" | "shell"));
        if info.is_some_and(|i| !i.is_empty()) {
            let code: Vec<String> = lines
                .by_ref()
                .take_while(|(_, l)| l.trim() != "```")
                .map(|(_, l)| l.to_owned())
                .collect();
            if is_shell && marker != Some("skip") {
                blocks.push(Block {
                    role: if marker == Some("server") {
                        Role::Server
                    } else {
                        Role::Run
                    },
                    first_line: i + 2,
                    lines: code,
                });
            }
        } else if info.is_some() {
            // A fence without an info string (a synopsis, a table): skip to its end.
            lines
                .by_ref()
                .take_while(|(_, l)| l.trim() != "```")
                .count();
        }
        marker = None;
    }
    blocks
}

/// Answers a block's terminal: the `KEY=-` values when a line starts, and prompts.
fn responder(block: &Arc<Block>) -> Box<dyn FnMut(&str) -> Reply + Send> {
    let block = block.clone();
    let mut started = HashSet::new();
    Box::new(move |text: &str| {
        let mut reply = Reply::default();
        while let Some(at) = text[reply.consumed..].find(MARKER) {
            let start = reply.consumed + at + MARKER.len();
            let Some(len) = text[start..].find('\n') else {
                return reply; // the rest of the marker is still on its way
            };
            let number: usize = text[start..start + len].parse().unwrap_or(0);
            if started.insert(number) {
                reply.input.push_str(&typing_for(block.line(number)));
            }
            reply.consumed = start + len + 1;
        }
        let unfinished = text[reply.consumed..].rsplit('\n').next().unwrap_or("");
        if let Some(answer) = prompt_answer(unfinished) {
            reply.input.push_str(answer);
            reply.input.push('\n');
            reply.consumed = text.len();
        }
        reply
    })
}

/// What a person types when a README line starts: a line per `KEY=-`, and Ctrl-D (end of
/// input) when the line's comment tells them to press it.
fn typing_for(line: &str) -> String {
    let mut typed: String = stdin_keys(line)
        .into_iter()
        .map(|key| typed_value(key) + "\n")
        .collect();
    let comment = line.split_once(" #").map_or("", |(_, c)| c);
    if comment.to_ascii_lowercase().contains("ctrl-d") {
        typed.push('\x04');
    }
    typed
}

/// The keys a command line reads from standard input (`KEY=-`), comments excluded.
fn stdin_keys(line: &str) -> Vec<&str> {
    line.split_whitespace()
        .take_while(|w| !w.starts_with('#'))
        .filter_map(|w| w.strip_suffix("=-"))
        .filter(|k| {
            k.starts_with(|c: char| c.is_ascii_uppercase())
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect()
}

/// A transcript as a person would have seen it: each README line as `$ line`, then its output
/// (colours dropped).
fn render(block: &Block, transcript: &str) -> String {
    let mut out = String::new();
    for line in strip_colours(transcript).lines() {
        match line.strip_prefix(MARKER).and_then(|n| n.parse().ok()) {
            Some(n) => out.push_str(&format!("README.md:{n}: $ {}\n", block.line(n))),
            None if line.is_empty() => {}
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The text without terminal colour sequences (`ESC [ ... m`).
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\x1b[") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 2..];
        rest = tail
            .find(|c: char| c.is_ascii_alphabetic())
            .map_or("", |end| &tail[end + 1..]);
    }
    out.push_str(rest);
    out
}

/// What each README line printed, in order (a line that ran twice appears twice).
fn outputs(transcript: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for line in strip_colours(transcript).lines() {
        match line.strip_prefix(MARKER).and_then(|n| n.parse().ok()) {
            Some(n) => out.push((n, String::new())),
            None => match out.last_mut() {
                Some((_, text)) if !(text.is_empty() && line.is_empty()) => {
                    text.push_str(line);
                    text.push('\n');
                }
                _ => {}
            },
        }
    }
    out
}

/// Starts a block on a terminal of its own.
fn start(block: &Arc<Block>, scratch: &Path, env: &[(String, String)], cwd: &Path) -> Terminal {
    let script = scratch.join(format!("readme-line-{}.sh", block.first_line));
    std::fs::write(&script, block.script()).unwrap();
    Terminal::spawn("bash", &[OsStr::new(&script)], cwd, env, responder(block))
        .unwrap_or_else(|e| panic!("cannot start a shell on a pseudo-terminal: {e}"))
}

/// Runs a block to its end and returns what each of its lines printed; fails the test, naming
/// the README line, if the block did not succeed.
fn run_block(
    block: &Arc<Block>,
    scratch: &Path,
    env: &[(String, String)],
    cwd: &Path,
) -> Vec<(usize, String)> {
    let (status, transcript) = start(block, scratch, env, cwd).finish(BLOCK_LIMIT);
    let printed = outputs(&transcript);
    let failed = match status {
        Some(s) if s.success() => return printed,
        Some(s) => format!("exited with {s}"),
        None => format!("did not finish within {BLOCK_LIMIT:?}"),
    };
    let (line, output) = printed.last().cloned().unwrap_or_default();
    panic!(
        "README.md:{line}: `{}` {failed}; its output:\n{}\n\n--- the block (README.md:{}) as it ran ---\n{}",
        block.line(line),
        output.trim_end(),
        block.first_line,
        render(block, &transcript)
    );
}

/// Whether a program is on PATH (with the suite's notice when it is not).
fn installed(program: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        missing_dependency(&format!("the program {program} (the README test needs it)"));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthroughs_run_as_written() {
    if !["bash", "setsid", "curl"].into_iter().all(installed) {
        return;
    }
    install_crypto();
    let ca = TestCa::new("agent-vault README test upstream CA");
    let (chain, key) = ca.server_cert(EXTERNAL_HOSTS, (-1, 30));
    let upstream = FakeUpstream::start(chain, key, Alpn::Both).await;

    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let blocks: Vec<Arc<Block>> = shell_blocks(&readme).into_iter().map(Arc::new).collect();
    let servers: Vec<_> = blocks.iter().filter(|b| b.role == Role::Server).collect();
    assert_eq!(
        servers.len(),
        1,
        "the README has one block marked <!-- readme-test: server -->"
    );
    let server_block = servers[0].clone();

    // A scratch home, and a scratch "checkout" in it whose target/release holds the binary.
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    let checkout = home.join("agent-vault");
    let bin = Path::new(env!("CARGO_BIN_EXE_agent-vault"));
    std::fs::create_dir_all(checkout.join("target/release")).unwrap();
    std::os::unix::fs::symlink(bin, checkout.join("target/release/agent-vault")).unwrap();
    let ca_file = scratch.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();

    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let base = |extra: &[(&str, String)]| -> Vec<(String, String)> {
        [
            ("HOME", home.display().to_string()),
            ("PATH", path.clone()),
            ("LANG", "C.UTF-8".into()),
            // A terminal without colours, so failure messages read plainly.
            ("TERM", "dumb".into()),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
    };
    let resolve = EXTERNAL_HOSTS
        .iter()
        .map(|h| format!("\"{h}:443\"=\"{}\"", upstream.addr))
        .collect::<Vec<_>>()
        .join(",");
    let server_env = base(&[
        ("AGENT_VAULT_SERVER__PORT", "0".into()),
        ("AGENT_VAULT_SERVER__PROXY_PORT", "0".into()),
        ("AGENT_VAULT_KDF__MEMORY_KIB", "64".into()),
        ("AGENT_VAULT_KDF__ITERATIONS", "1".into()),
        ("AGENT_VAULT_KDF__PARALLELISM", "1".into()),
        ("AGENT_VAULT_UPSTREAM__ROOTS", "none".into()),
        (
            "AGENT_VAULT_UPSTREAM__EXTRA_CA_FILES",
            format!("[\"{}\"]", ca_file.display()),
        ),
        ("AGENT_VAULT_UPSTREAM__RESOLVE", format!("{{{resolve}}}")),
        (
            "AGENT_VAULT_UPSTREAM__NETWORK_ALLOWLIST",
            "[\"127.0.0.0/8\"]".into(),
        ),
        ("AGENT_VAULT_REQUEST_LOG__FLUSH_INTERVAL", "20ms".into()),
    ]);

    tokio::task::block_in_place(|| {
        let server = start(&server_block, scratch.path(), &server_env, &checkout);
        let listening = server.wait_for(Duration::from_secs(30), |t| {
            t.lines().any(|l| l.starts_with("admin API: http"))
                && t.lines().any(|l| l.starts_with("proxy:"))
        });
        let transcript = server.transcript();
        assert!(
            listening,
            "README.md:{}: the server did not print its addresses:\n{}",
            server_block.first_line,
            render(&server_block, &transcript)
        );
        let admin = transcript
            .lines()
            .find_map(|l| l.strip_prefix("admin API: "))
            .unwrap()
            .trim()
            .to_owned();
        let client_env = base(&[("AGENT_VAULT_ADDR", admin)]);
        let mut printed = Vec::new();
        for block in blocks.iter().filter(|b| b.role == Role::Run) {
            let lines = run_block(block, scratch.path(), &client_env, &checkout);
            printed.extend(
                lines
                    .into_iter()
                    .map(|(n, out)| (n, block.line(n).to_owned(), out)),
            );
        }
        // A value a person typed is printed back only where they asked to see values.
        for (n, line, out) in &printed {
            for key in ["STRIPE_KEY", "GH_TOKEN"] {
                assert!(
                    !out.contains(&typed_value(key))
                        || SHOWS_VALUES.iter().any(|s| line.contains(s)),
                    "README.md:{n}: `{line}` printed the value of {key}:\n{out}"
                );
            }
        }
        let (stopped, transcript) = server.stop(Duration::from_secs(20));
        for secret in [MASTER_PASSWORD, ACCOUNT_PASSWORD]
            .map(String::from)
            .into_iter()
            .chain(["STRIPE_KEY", "GH_TOKEN"].map(typed_value))
        {
            assert!(
                !transcript.contains(&secret),
                "the server printed a secret:\n{}",
                render(&server_block, &transcript)
            );
        }
        assert!(
            stopped.is_some(),
            "the server stops on SIGTERM:\n{}",
            render(&server_block, &transcript)
        );
        let prompts = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| l.to_ascii_lowercase().contains("password:"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            prompts(&transcript),
            ["Choose a master password: ", "Repeat the master password: "]
        );
        // "It asks for the master password on every start": once on the next one.
        let again = start(&server_block, scratch.path(), &server_env, &checkout);
        let listening = again.wait_for(Duration::from_secs(30), |t| {
            t.lines().any(|l| l.starts_with("admin API: http"))
        });
        let (_, transcript) = again.stop(Duration::from_secs(20));
        assert!(
            listening,
            "the server starts again:\n{}",
            render(&server_block, &transcript)
        );
        assert_eq!(prompts(&transcript), ["Master password: "]);
    });

    // What the walkthroughs promise: the agent's requests left with the values a person typed.
    let seen = upstream.requests();
    for (host, path, key) in [
        ("api.stripe.com", "/v1/charges", "STRIPE_KEY"),
        ("api.github.com", "/user", "GH_TOKEN"),
    ] {
        let request = seen
            .iter()
            .find(|r| r.sni.as_deref() == Some(host) && r.path_and_query == path)
            .unwrap_or_else(|| panic!("no request to https://{host}{path} reached the upstream"));
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {}", typed_value(key))),
            "https://{host}{path} carries {key} as the README set it"
        );
    }
}

#[test]
fn markers_choose_which_blocks_run_and_how() {
    let readme = "intro\n\n<!-- readme-test: skip -->\n```sh\ncargo bench\n```\n\n```yaml\na: 1\n```\n\n<!-- readme-test: server -->\n\n```sh\nagent-vault server\n```\n\n```\nsynopsis\n```\n```sh\necho one\necho two\n```\n";
    let blocks = shell_blocks(readme);
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    assert_eq!(blocks[0].role, Role::Server);
    assert_eq!(blocks[0].first_line, 15);
    assert_eq!(blocks[0].lines, ["agent-vault server"]);
    assert_eq!(blocks[1].role, Role::Run);
    assert_eq!(blocks[1].first_line, 22);
    assert_eq!(blocks[1].line(23), "echo two");
    assert_eq!(
        stdin_keys("agent-vault x set A=- b=- C_2=- D=1 # E=-"),
        ["A", "C_2"]
    );
    assert_eq!(
        prompt_answer("Choose a master password: "),
        Some(MASTER_PASSWORD)
    );
    assert_eq!(
        prompt_answer("Repeat the password: "),
        Some(ACCOUNT_PASSWORD)
    );
    assert_eq!(prompt_answer("Replace 3 services? [y/N] "), Some("y"));
    assert_eq!(prompt_answer("Apply? (yes/no): "), Some("yes"));
    assert_eq!(prompt_answer("done"), None);
    assert_eq!(
        strip_colours("\x1b[1m\x1b[31merror:\x1b[0m bad"),
        "error: bad"
    );
    assert_eq!(
        typing_for("agent-vault proposal approve 1 GH_TOKEN=-   # type it, Enter, Ctrl-D"),
        format!("{}\n\x04", typed_value("GH_TOKEN"))
    );
}

/// Whether a synopsis word is written as a command name (`create`, `create|list`), not as a
/// placeholder (`NAME`), a value (`KEY=-`) or a flag.
fn command_like(word: &str) -> bool {
    word.split('|').all(|w| {
        w.starts_with(|c: char| c.is_ascii_lowercase())
            && w.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    })
}

/// The commands a command-like word names below each of `parents` (an alias counts), or
/// `None` when one of them has no such command.
fn subcommands(parents: &[clap::Command], word: &str) -> Option<Vec<clap::Command>> {
    let mut found = Vec::new();
    for parent in parents {
        for name in word.split('|') {
            found.push(parent.find_subcommand(name)?.clone());
        }
    }
    Some(found)
}

/// The flags a synopsis alternative mentions: `--long` names and `-s` letters.
fn flags(alternative: &str) -> Vec<String> {
    alternative
        .split_whitespace()
        .map(|w| w.trim_start_matches(['[', '(']))
        .filter(|w| w.starts_with('-') && *w != "--")
        .map(|w| {
            let end = w[1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(w.len(), |i| i + 1);
            w[..end].to_owned()
        })
        .collect()
}

/// Splits a synopsis line's alternatives at ` | ` outside brackets.
fn alternatives(line: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in line.char_indices() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth -= 1,
            '|' if depth == 0 && line[..i].ends_with(' ') && line[i + 1..].starts_with(' ') => {
                out.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&line[start..]);
    out
}

/// What is wrong with one synopsis line: a command that does not exist, or a flag that one of
/// the commands it is written beside does not take.
fn synopsis_problems(root: &clap::Command, line: &str) -> Vec<String> {
    let Some(rest) = line.strip_prefix("agent-vault ") else {
        return vec![format!("{line:?} does not start with agent-vault")];
    };
    let mut problems = Vec::new();
    let (mut parents, mut commands) = (vec![root.clone()], vec![root.clone()]);
    for (i, alternative) in alternatives(rest).into_iter().enumerate() {
        let mut words = alternative.split_whitespace().peekable();
        // A later alternative names siblings of the first one's last command (`list | show N`)
        // or goes on with it (`KEY=VALUE | KEY=-`).
        let mut below = if i == 0 { &commands } else { &parents }.clone();
        if i > 0 && !words.peek().is_some_and(|w| command_like(w)) {
            below = vec![];
        }
        while let Some(word) =
            words.next_if(|w| command_like(w) && below.iter().any(|c| c.has_subcommands()))
        {
            match subcommands(&below, word) {
                Some(found) => {
                    parents = below;
                    below = found.clone();
                    commands = found;
                }
                None => {
                    problems.push(format!("{line}: no command {word:?}"));
                    break;
                }
            }
        }
        for flag in flags(alternative) {
            for command in &commands {
                let known = command
                    .get_arguments()
                    .any(|a| match flag.strip_prefix("--") {
                        Some(long) => {
                            a.get_long() == Some(long)
                                || a.get_all_aliases().into_iter().flatten().any(|x| x == long)
                        }
                        None => flag
                            .chars()
                            .nth(1)
                            .is_some_and(|s| a.get_short() == Some(s)),
                    })
                    || flag == "--help";
                if !known {
                    problems.push(format!(
                        "{line}: `{}` takes no {flag}",
                        command.get_bin_name().unwrap_or(command.get_name())
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn the_cli_synopsis_names_only_commands_and_flags_that_exist() {
    use clap::CommandFactory;
    let mut root = agent_vault::cli::Cli::command();
    root.build();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let synopsis: Vec<&str> = readme
        .split("\n## CLI\n")
        .nth(1)
        .and_then(|cli| cli.split("\n```\n").nth(1))
        .expect("README.md has a CLI section with a synopsis block")
        .lines()
        .collect();
    assert!(synopsis.len() > 10, "{synopsis:?}");
    let problems: Vec<String> = synopsis
        .iter()
        .flat_map(|line| synopsis_problems(&root, line))
        .collect();
    assert!(
        problems.is_empty(),
        "README.md's CLI synopsis:\n{}",
        problems.join("\n")
    );
    // The checker itself: each of these mistakes is caught.
    for wrong in [
        "agent-vault auth invite --email E",
        "agent-vault vault credential list --reveal | get KEY --reveal",
        "agent-vault vault nosuch",
        "agent-vault agent create NAME | list --vault V",
    ] {
        assert!(!synopsis_problems(&root, wrong).is_empty(), "{wrong}");
    }
}
