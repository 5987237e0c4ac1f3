//! The Dockerfile's builder stage must copy every path the build reads: images cannot be built
//! on the machines that run this suite, so this test stands in for `docker build`. It reads the
//! paths `Cargo.toml` declares (`[lib]`, `[[bin]]`, `[[test]]`, `[[bench]]`, `[[example]]`, the
//! build script, `include`) and the files the sources pull in at compile time (`include_str!`,
//! `include_bytes!`, `sqlx::migrate!`), and fails naming any that no `COPY` line (or that
//! `.dockerignore` removes) leaves out. Cargo refuses a manifest whose declared target file is
//! missing, even when building only the binary.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A path the build needs, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Needed {
    path: String,
    why: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every path `Cargo.toml` declares, with Cargo's defaults for targets that name no path.
fn declared_by_manifest(manifest: &Value, root: &Path) -> Vec<Needed> {
    let need = |path: &str, why: String| Needed {
        path: path.trim_start_matches("./").to_owned(),
        why,
    };
    let mut out = vec![
        need("Cargo.toml", "the manifest".into()),
        need("Cargo.lock", "--locked".into()),
    ];
    let package = manifest["package"]["name"].as_str().unwrap_or_default();
    let targets = |kind: &str| -> Vec<Value> {
        match &manifest[kind] {
            Value::Array(list) => list.clone(),
            Value::Object(_) => vec![manifest[kind].clone()],
            _ => Vec::new(),
        }
    };
    for (kind, default) in [
        ("lib", "src/lib.rs".to_owned()),
        ("bin", String::new()),
        ("test", "tests/{}.rs".to_owned()),
        ("bench", "benches/{}.rs".to_owned()),
        ("example", "examples/{}.rs".to_owned()),
    ] {
        for target in targets(kind) {
            let name = target["name"].as_str().unwrap_or(package);
            let path = match target["path"].as_str() {
                Some(p) => p.to_owned(),
                None if kind == "bin" && name == package => "src/main.rs".to_owned(),
                None if kind == "bin" => format!("src/bin/{name}.rs"),
                None => default.replace("{}", name),
            };
            out.push(need(&path, format!("[{kind}] {name}")));
        }
    }
    match &manifest["package"]["build"] {
        Value::String(script) => out.push(need(script, "package.build".into())),
        Value::Bool(false) => {}
        _ if root.join("build.rs").exists() => {
            out.push(need("build.rs", "the build script".into()))
        }
        _ => {}
    }
    for pattern in manifest["package"]["include"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let pattern = pattern.as_str().unwrap_or_default();
        // The literal directories before the first wildcard.
        let literal: Vec<&str> = pattern
            .split('/')
            .take_while(|part| !part.contains(['*', '?', '[']))
            .collect();
        if !literal.is_empty() {
            out.push(need(
                &literal.join("/"),
                format!("package.include {pattern}"),
            ));
        }
    }
    out
}

/// Files the sources read at compile time (outside their unit tests).
fn read_by_sources(root: &Path) -> Vec<Needed> {
    let mut out = Vec::new();
    for file in crate::support::walk(&root.join("src")) {
        if file.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests sit at the end of a file, after `#[cfg(test)]`; a release build does not
        // read what they include (the README, for one).
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        let rel_file = file.strip_prefix(root).unwrap().display().to_string();
        for (mac, relative_to_file) in [
            ("include_str!(\"", true),
            ("include_bytes!(\"", true),
            ("migrate!(\"", false),
        ] {
            for (at, _) in text.match_indices(mac) {
                let rest = &text[at + mac.len()..];
                let Some(end) = rest.find('"') else { continue };
                let arg = &rest[..end];
                let base = if relative_to_file {
                    file.parent().unwrap().to_path_buf()
                } else {
                    root.to_path_buf()
                };
                let full = normalize(&base.join(arg));
                let rel = full.strip_prefix(root).unwrap().display().to_string();
                out.push(Needed {
                    path: rel,
                    why: format!("{}\"{arg}\") in {rel_file}", mac.trim_end_matches('"')),
                });
            }
        }
    }
    out
}

/// Resolves `..` and `.` without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The sources of the `COPY` lines (from the build context, not `--from` another stage) of the
/// stage that runs `cargo build`.
fn builder_copies(dockerfile: &str) -> Vec<String> {
    // Join continuation lines, drop comments.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Vec<String>> = Vec::new();
    for instruction in instructions {
        if keyword(&instruction) == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push(instruction);
        }
    }
    let builder = stages
        .iter()
        .find(|stage| stage.iter().any(|i| i.contains("cargo build")))
        .expect("a stage runs cargo build");
    let mut sources = Vec::new();
    for instruction in builder.iter() {
        if !matches!(keyword(instruction).as_str(), "COPY" | "ADD") {
            continue;
        }
        let mut rest = instruction
            .split_once(char::is_whitespace)
            .map_or("", |(_, rest)| rest.trim());
        let mut from_stage = false;
        while let Some(flagged) = rest.strip_prefix("--") {
            let (flag, after) = flagged
                .split_once(char::is_whitespace)
                .unwrap_or((flagged, ""));
            from_stage |= flag.starts_with("from");
            rest = after.trim_start();
        }
        if from_stage {
            continue;
        }
        let paths: Vec<String> = if rest.starts_with('[') {
            serde_json::from_str(rest).expect("COPY [\"src\", ..., \"dest\"]")
        } else {
            rest.split_whitespace().map(str::to_owned).collect()
        };
        if let Some((_, srcs)) = paths.split_last() {
            sources.extend(srcs.iter().map(|s| {
                let s = s.trim_start_matches("./").trim_end_matches('/');
                if s.is_empty() {
                    ".".to_owned()
                } else {
                    s.to_owned()
                }
            }));
        }
    }
    sources
}

/// An instruction's keyword, upper case (Dockerfile keywords are case-insensitive).
fn keyword(instruction: &str) -> String {
    instruction
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// Whether `pattern` (a COPY source or .dockerignore line, `*` within one path part) covers
/// `path` itself or a directory above it.
fn covers(pattern: &str, path: &str) -> bool {
    if pattern == "." {
        return true;
    }
    let pat: Vec<&str> = pattern.split('/').collect();
    let parts: Vec<&str> = path.split('/').collect();
    pat.len() <= parts.len() && pat.iter().zip(&parts).all(|(p, part)| glob(p, part))
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.starts_with(head)
                && (0..=text.len() - head.len()).any(|i| {
                    text.is_char_boundary(head.len() + i) && glob(tail, &text[head.len() + i..])
                })
        }
    }
}

/// The needed paths that the Dockerfile does not bring into the builder stage.
fn uncovered(dockerfile: &str, dockerignore: &str, needed: &[Needed]) -> Vec<Needed> {
    let copies = builder_copies(dockerfile);
    let ignored: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/'))
        .collect();
    needed
        .iter()
        .filter(|n| {
            !copies.iter().any(|c| covers(c, &n.path)) || ignored.iter().any(|i| covers(i, &n.path))
        })
        .cloned()
        .collect()
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    use figment::providers::Format;
    figment::Figment::from(figment::providers::Toml::string(&text))
        .extract()
        .expect("Cargo.toml parses")
}

fn needed() -> Vec<Needed> {
    let root = root();
    let mut needed = declared_by_manifest(&manifest(), &root);
    needed.extend(read_by_sources(&root));
    needed
}

#[test]
fn the_dockerfile_builder_copies_every_path_the_build_reads() {
    let root = root();
    let needed = needed();
    for n in &needed {
        assert!(
            root.join(&n.path).exists(),
            "{} ({}) does not exist",
            n.path,
            n.why
        );
    }
    // The paths this manifest is known to declare are among them (so the parsing works).
    for path in [
        "src/lib.rs",
        "src/main.rs",
        "tests/it/main.rs",
        "benches/proxy.rs",
        "migrations",
    ] {
        assert!(
            needed
                .iter()
                .any(|n| n.path == path || n.path.starts_with(&format!("{path}/"))),
            "{path} not found among {needed:?}"
        );
    }
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let dockerignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap_or_default();
    let missing = uncovered(&dockerfile, &dockerignore, &needed);
    assert!(
        missing.is_empty(),
        "the Dockerfile's builder stage does not copy (or .dockerignore drops): {}",
        missing
            .iter()
            .map(|n| format!("{} ({})", n.path, n.why))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[test]
fn the_check_names_what_a_dockerfile_leaves_out() {
    // The builder stage as it was before benches/ and tests/ were copied.
    let before = "FROM rust:1.95-slim-bookworm AS builder\nWORKDIR /src\nCOPY Cargo.toml Cargo.lock ./\nCOPY src ./src\nCOPY migrations ./migrations\nCOPY config ./config\nRUN cargo build --release --locked --bin agent-vault \\\n    && cp target/release/agent-vault /usr/local/bin/\n\nFROM debian:bookworm-slim\nCOPY . /everything\nCOPY --from=builder /usr/local/bin/agent-vault /usr/local/bin/agent-vault\n";
    let missing: Vec<String> = uncovered(before, "", &needed())
        .into_iter()
        .map(|n| n.path)
        .collect();
    assert_eq!(missing, ["tests/it/main.rs", "benches/proxy.rs"]);
    // A .dockerignore that drops a needed directory is caught too.
    let everything = "FROM rust AS builder\nCOPY . .\nRUN cargo build\n";
    assert!(uncovered(everything, "target\n.git\n", &needed()).is_empty());
    let dropped: Vec<String> = uncovered(everything, "target\nbenches/\n", &needed())
        .into_iter()
        .map(|n| n.path)
        .collect();
    assert_eq!(dropped, ["benches/proxy.rs"]);
    // JSON-form COPY, globs and flags.
    let json_form = "FROM rust AS builder\nCOPY --chown=1:1 [\"Cargo.*\", \"./\"]\nCOPY s* ./\nRUN cargo build\n";
    let left: Vec<String> = uncovered(json_form, "", &needed())
        .into_iter()
        .map(|n| n.path)
        .collect();
    assert!(!left.contains(&"Cargo.toml".to_owned()) && !left.contains(&"src/lib.rs".to_owned()));
    assert!(
        left.iter().any(|p| p.starts_with("migrations/")),
        "{left:?}"
    );
    assert!(!left.iter().any(|p| p.starts_with("src/")), "{left:?}");
}
