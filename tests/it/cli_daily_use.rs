//! The CLI in daily use: output piped into `head`, secrets typed at a prompt, and commands that
//! replace or delete a lot asking first.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::support::{CliOutput, TestApp, spawn_app};

/// A vault holding enough long values that `credential list --reveal` prints well over a pipe's
/// buffer (64 KiB on Linux).
async fn big_vault(app: &TestApp) {
    app.create_vault("big").await;
    let value = "v".repeat(400);
    let pairs: Vec<(String, String)> = (0..300)
        .map(|i| (format!("KEY_{i:03}"), value.clone()))
        .collect();
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for chunk in pairs.chunks(100) {
        app.set_credentials("big", chunk).await;
    }
}

/// Runs the CLI with a standard output whose reader reads `keep` bytes and then closes it.
async fn with_closed_stdout(app: &TestApp, args: &[&str], keep: usize) -> CliOutput {
    let mut child = app.cli_command(args).spawn().unwrap();
    drop(child.stdin.take());
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut head = vec![0u8; keep];
    if keep > 0 {
        tokio::time::timeout(Duration::from_secs(30), stdout.read_exact(&mut head))
            .await
            .expect("the CLI starts printing")
            .unwrap();
    }
    drop(stdout);
    let mut err = String::new();
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        let _ = stderr.read_to_string(&mut err).await;
        child.wait().await.unwrap()
    })
    .await
    .expect("the CLI ends once its reader is gone");
    CliOutput {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&head).into_owned(),
        stderr: err,
    }
}

#[tokio::test]
async fn a_reader_closing_stdout_ends_the_command_quietly_with_zero() {
    let app = spawn_app().await;
    app.cli_login().await;
    big_vault(&app).await;
    let json = [
        "vault",
        "credential",
        "list",
        "--reveal",
        "--vault",
        "big",
        "--json",
    ];
    let table = ["vault", "credential", "list", "--reveal", "--vault", "big"];
    // Closed before the first byte, and closed after the first lines (`| head`), with output
    // larger than the pipe's buffer, as JSON and as a table.
    for (args, keep) in [
        (&json[..], 0),
        (&json[..], 100),
        (&table[..], 0),
        (&table[..], 100),
    ] {
        let out = with_closed_stdout(&app, args, keep).await;
        assert_eq!(out.code, 0, "{args:?} keep {keep}: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "no panic, backtrace or message: {out:?}"
        );
        if keep > 0 {
            assert!(
                out.stdout.starts_with('[') || out.stdout.starts_with("KEY"),
                "{out:?}"
            );
        }
    }
    // Sanity: with a reader that reads everything, the same command prints it all.
    let full = app.cli(&json, None).await;
    assert_eq!(full.code, 0, "{full:?}");
    assert!(full.stdout.len() > 100_000, "{}", full.stdout.len());
    assert_eq!(full.json().as_array().unwrap().len(), 300);
}

/// The values stored in `vault`, by key.
async fn stored(app: &TestApp, vault: &str) -> std::collections::BTreeMap<String, String> {
    let list = app
        .ok(
            "GET",
            &format!("/v1/vaults/{vault}/credentials?reveal=true"),
            None,
        )
        .await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap().to_owned(),
                c["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn several_piped_key_dash_values_are_read_one_line_each_in_order() {
    let app = spawn_app().await;
    app.cli_login().await;
    let set = [
        "vault",
        "credential",
        "set",
        "B=-",
        "A=-",
        "C=plain",
        "--vault",
        "default",
    ];
    let out = app.cli(&set, Some("bee-value\r\nay-value\n")).await;
    assert_eq!(out.code, 0, "{out:?}");
    let values = stored(&app, "default").await;
    assert_eq!(values["A"], "ay-value");
    assert_eq!(values["B"], "bee-value");
    assert_eq!(values["C"], "plain");

    // One `KEY=-` still takes all of standard input, so a PEM key keeps its lines (held by a
    // `generic` credential, which takes line breaks; a set without a type keeps the stored one).
    app.ok(
        "PUT",
        "/v1/vaults/default/credentials",
        Some(
            serde_json::json!({ "credentials": { "PEM": "first" }, "types": { "PEM": "generic" } }),
        ),
    )
    .await;
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIB\nAAAA\n-----END PRIVATE KEY-----\n";
    let out = app
        .cli(
            &["vault", "credential", "set", "PEM=-", "--vault", "default"],
            Some(pem),
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(stored(&app, "default").await["PEM"], pem.trim_end());

    // A line count that does not match the keys sets nothing and echoes no value.
    for input in ["new-bee\n", "new-bee\nnew-ay\nnew-extra\n"] {
        let out = app.cli(&set, Some(input)).await;
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains("one line each"), "{out:?}");
        assert!(!out.stderr.contains("new-"), "{out:?}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");
    }
    assert_eq!(
        stored(&app, "default").await["B"],
        "bee-value",
        "nothing changed"
    );

    let help = app
        .cli(&["vault", "credential", "set", "--help"], None)
        .await;
    assert!(help.stdout.contains("one line"), "{help:?}");
}

#[tokio::test]
async fn key_dash_on_a_terminal_prompts_for_each_key_without_echo() {
    let app = spawn_app().await;
    app.cli_login().await;
    let args = [
        "vault",
        "credential",
        "set",
        "FIRST=-",
        "SECOND=-",
        "--vault",
        "default",
    ];
    let Some(mut tty) = crate::support::terminal::Terminal::spawn_cli(&app, &args) else {
        return;
    };
    tty.expect("Value for FIRST").await;
    tty.expect_echo_off().await;
    tty.type_line("typed-first-secret");
    tty.expect("Value for SECOND").await;
    tty.expect_echo_off().await;
    tty.type_line("typed-second-secret");
    let (code, shown) = tty.exit().await;
    assert_eq!(code, 0, "{shown}");
    assert!(
        !shown.contains("typed-first") && !shown.contains("typed-second"),
        "the terminal echoed a value: {shown:?}"
    );
    assert!(
        shown.contains("set FIRST") && shown.contains("set SECOND"),
        "{shown:?}"
    );
    let values = stored(&app, "default").await;
    assert_eq!(values["FIRST"], "typed-first-secret");
    assert_eq!(values["SECOND"], "typed-second-secret");
}

/// The names of the services stored in `vault`, in order.
async fn service_names(app: &TestApp, vault: &str) -> Vec<String> {
    let resp = app
        .ok("GET", &format!("/v1/vaults/{vault}/services"), None)
        .await;
    resp["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

const TWO: &str = "services:\n  - name: a\n    host: a.example.test\n    auth: {type: passthrough}\n  - name: b\n    host: b.example.test\n    auth: {type: passthrough}\n";
const THREE: &str = "services:\n  - name: a\n    host: a.example.test\n    auth: {type: passthrough}\n  - name: b\n    host: b.example.test\n    auth: {type: passthrough}\n  - name: c\n    host: c.example.test\n    auth: {type: passthrough}\n";
const REPLACED: &str = "services:\n  - name: a\n    host: a.example.test\n    methods: [GET]\n    auth: {type: passthrough}\n  - name: d\n    host: d.example.test\n    auth: {type: passthrough}\n";

#[tokio::test]
async fn service_set_shows_its_plan_and_needs_yes_to_change_or_remove_without_a_terminal() {
    let app = spawn_app().await;
    app.cli_login().await;
    let set = ["vault", "service", "set", "-f", "-", "--vault", "default"];
    // Adding only goes ahead, and says what it adds.
    let out = app.cli(&set, Some(TWO)).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("add    a (a.example.test)"), "{out:?}");
    let out = app.cli(&set, Some(THREE)).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(service_names(&app, "default").await, ["a", "b", "c"]);

    // Changing and removing is refused without --yes, after the plan is shown; nothing changes.
    let refused = app.cli(&set, Some(REPLACED)).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    for line in [
        "add    d (d.example.test)",
        "change a (a.example.test)",
        "remove b (b.example.test)",
        "remove c (c.example.test)",
        "pass --yes",
    ] {
        assert!(refused.stderr.contains(line), "{line}: {refused:?}");
    }
    assert_eq!(service_names(&app, "default").await, ["a", "b", "c"]);
    // A reorder changes which rule wins: it needs --yes too.
    let reordered = "services:\n  - name: c\n    host: c.example.test\n    auth: {type: passthrough}\n  - name: a\n    host: a.example.test\n    auth: {type: passthrough}\n  - name: b\n    host: b.example.test\n    auth: {type: passthrough}\n";
    let out = app.cli(&set, Some(reordered)).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("reorder"), "{out:?}");

    // With --yes it applies, and --json still prints only the stored services on stdout.
    let mut yes = set.to_vec();
    yes.extend(["--yes", "--json"]);
    let out = app.cli(&yes, Some(REPLACED)).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json().as_array().unwrap().len(), 2);
    assert_eq!(service_names(&app, "default").await, ["a", "d"]);
    // The same file again changes nothing, and needs no confirmation.
    let out = app.cli(&set, Some(REPLACED)).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("nothing changes"), "{out:?}");
}

#[tokio::test]
async fn service_set_on_a_terminal_asks_before_removing() {
    let app = spawn_app().await;
    app.cli_login().await;
    app.set_services_yaml("default", THREE).await;
    let file = app.home.path().join("replaced.yaml");
    std::fs::write(&file, REPLACED).unwrap();
    let args = [
        "vault",
        "service",
        "set",
        "-f",
        file.to_str().unwrap(),
        "--vault",
        "default",
    ];
    // Anything but "y" keeps the services as they were.
    let Some(mut tty) = crate::support::terminal::Terminal::spawn_cli(&app, &args) else {
        return;
    };
    tty.expect("Apply these changes? [y/N]").await;
    assert!(
        tty.transcript().contains("remove b (b.example.test)"),
        "{}",
        tty.transcript()
    );
    tty.type_line("n");
    let (code, shown) = tty.exit().await;
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("not applied"), "{shown}");
    assert_eq!(service_names(&app, "default").await, ["a", "b", "c"]);

    let mut tty = crate::support::terminal::Terminal::spawn_cli(&app, &args).unwrap();
    tty.expect("Apply these changes? [y/N]").await;
    tty.type_line("y");
    let (code, shown) = tty.exit().await;
    assert_eq!(code, 0, "{shown}");
    assert_eq!(service_names(&app, "default").await, ["a", "d"]);
}

#[tokio::test]
async fn vault_delete_needs_the_name_typed_or_yes() {
    let app = spawn_app().await;
    app.cli_login().await;
    for name in ["doomed", "spared", "typed"] {
        app.create_vault(name).await;
    }
    let exists = async |name: &str| {
        app.call("GET", &format!("/v1/vaults/{name}/settings"), None)
            .await
            .0
            == 200
    };

    let refused = app.cli(&["vault", "delete", "spared"], None).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("--yes"), "{refused:?}");
    assert_eq!(refused.stderr.trim().lines().count(), 1, "{refused:?}");
    assert!(exists("spared").await);

    let out = app.cli(&["vault", "delete", "doomed", "--yes"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!exists("doomed").await);

    let Some(mut tty) =
        crate::support::terminal::Terminal::spawn_cli(&app, &["vault", "delete", "spared"])
    else {
        return;
    };
    tty.expect("Type the vault's name").await;
    tty.type_line("spare");
    let (code, shown) = tty.exit().await;
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("nothing was deleted"), "{shown}");
    assert!(exists("spared").await);

    let mut tty =
        crate::support::terminal::Terminal::spawn_cli(&app, &["vault", "delete", "typed"]).unwrap();
    tty.expect("Type the vault's name").await;
    tty.type_line("typed");
    let (code, shown) = tty.exit().await;
    assert_eq!(code, 0, "{shown}");
    assert!(!exists("typed").await);
    assert!(exists("spared").await);
}
