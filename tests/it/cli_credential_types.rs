//! Typed credentials through the CLI and the real server: one credential of each type stored
//! from files or standard input (never from the command line), the lifecycle commands, and the
//! files and flags the CLI refuses before anything is sent.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;
use time::{Duration, OffsetDateTime};

use crate::support::{CliOutput, TestApp, spawn_app};

/// The fixture directory of OpenSSH keys.
fn ssh_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ssh")
        .join(name)
}

/// A client certificate signed by a fresh CA, valid for `days` from now: (chain PEM, key PEM).
fn client_certificate(days: i64) -> (String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "CLI Test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["agent.example.test".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "cli agent");
    leaf.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    leaf.not_after = OffsetDateTime::now_utc() + Duration::days(days);
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (format!("{}{ca_pem}", cert.pem()), key.serialize_pem())
}

/// An app with a logged-in CLI and a vault `typed`, and a scratch directory for files.
async fn setup() -> (TestApp, tempfile::TempDir) {
    let app = spawn_app().await;
    app.cli_login().await;
    app.create_vault("typed").await;
    (app, tempfile::tempdir().unwrap())
}

/// Writes `text` to `name` in `dir` and returns the path as a string.
fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `vault credential ARGS... --vault typed`.
async fn creds(app: &TestApp, args: &[&str], stdin: Option<&str>) -> CliOutput {
    let mut all = vec!["vault", "credential"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--vault", "typed"]);
    app.cli(&all, stdin).await
}

/// The vault's credentials as `list --json` prints them.
async fn listed(app: &TestApp) -> Vec<Value> {
    let out = creds(app, &["list", "--json"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    out.json().as_array().unwrap().clone()
}

/// The listed credential `key`.
fn entry<'a>(list: &'a [Value], key: &str) -> &'a Value {
    list.iter()
        .find(|c| c["key"] == key)
        .unwrap_or_else(|| panic!("{key} is not listed: {list:?}"))
}

#[tokio::test]
async fn a_value_from_a_file_is_stored_without_its_final_line_ending() {
    let (app, dir) = setup().await;
    let path = file(&dir, "stripe.txt", "sk_test_from_a_file\n");
    let out = creds(
        &app,
        &[
            "set",
            "STRIPE_KEY",
            "--from-file",
            &path,
            "--description",
            "Stripe test key",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("set STRIPE_KEY ("), "{out:?}");
    let out = creds(&app, &["get", "STRIPE_KEY"], None).await;
    assert_eq!(out.stdout, "sk_test_from_a_file\n", "{out:?}");
    // The table shows the new columns; nothing has used the key yet.
    let out = creds(&app, &["list"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "KEY",
            "TYPE",
            "STATE",
            "VERSION",
            "EXPIRES",
            "USES",
            "LAST",
            "USED",
            "DESCRIPTION"
        ]
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with("STRIPE_KEY"), "{row}");
    assert!(
        row.contains(" never ") && row.ends_with("Stripe test key"),
        "{row}"
    );
    assert!(!out.stdout.contains("sk_test_from_a_file"), "{out:?}");
}

#[tokio::test]
async fn files_and_flags_the_type_cannot_use_are_refused_and_nothing_is_stored() {
    let (app, dir) = setup().await;
    let value = file(&dir, "value.txt", "s3cret-value\n");
    let yaml = file(&dir, "oauth.yaml", "access_token: [s3cret-unclosed\n");
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    // (arguments, exit code, what stderr says)
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["set", "A", "--key-file", &value],
            1,
            "--key-file is for --type certificate",
        ),
        (
            vec![
                "set",
                "A",
                "--type",
                "certificate",
                "--from-file",
                &value,
                "--passphrase-file",
                &value,
            ],
            1,
            "--passphrase-file is for --type ssh_key",
        ),
        (
            vec![
                "set",
                "A",
                "--type",
                "ssh_key",
                "--from-file",
                &value,
                "--key-file",
                &value,
            ],
            1,
            "give the OpenSSH key once",
        ),
        (
            vec!["set", "A", "B", "--from-file", &value],
            1,
            "give one KEY",
        ),
        (
            vec!["set", "A=s3cret-typed", "--from-file", &value],
            1,
            "give the key alone",
        ),
        (vec!["set", "A", "--from-file", missing], 1, "missing.pem"),
        (
            vec!["set", "A", "--type", "oauth", "--from-file", &yaml],
            1,
            "oauth.yaml: value: not a JSON or YAML document (line",
        ),
        (
            vec!["set", "A=1", "--metadata", "s3cret-no-equals"],
            1,
            "--metadata number 1 is not KEY=VALUE",
        ),
        (
            vec!["set", "A=1", "--metadata", "Bad Key=s3cret"],
            1,
            "metadata key \"Bad Key\"",
        ),
        (
            vec!["set", "A=1", "--type", "pgp_key"],
            2,
            "unknown credential type \"pgp_key\"",
        ),
        (
            vec!["set", "A=1", "--expires-at", "next week"],
            2,
            "RFC 3339",
        ),
        (vec!["rollback", "A"], 2, "--to"),
        (vec!["rollback", "A", "--to", "first"], 2, "--to"),
    ];
    for (args, code, says) in cases {
        let out = creds(&app, &args, None).await;
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(out.stderr.contains(says), "{args:?}: {out:?}");
        assert!(!out.stderr.contains("s3cret"), "{args:?}: {out:?}");
    }
    assert!(listed(&app).await.is_empty());
}

#[tokio::test]
async fn one_credential_of_each_type_is_stored_from_files_and_listed_without_values() {
    let (app, dir) = setup().await;
    let (chain, key) = client_certificate(3);
    let chain = file(&dir, "client-chain.pem", &chain);
    let key = file(&dir, "client-key.pem", &key);
    let passphrase = file(&dir, "passphrase", "fixture passphrase\n");
    let ssh_key = ssh_fixture("ed25519_encrypted");
    let oauth = file(
        &dir,
        "oauth.yaml",
        "access_token: at-canary-oauth\nrefresh_token: rt-canary-oauth\ntoken_url: https://auth.example.test/token\nclient_id: 12345\nscopes: read write\nauth_method: client_secret_basic\n",
    );
    let generic = file(&dir, "blob.txt", "line one\nline two canary-generic\n");
    let api = file(&dir, "api.txt", "canary-api-key\n");
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjQxMDI0NDQ4MDB9.canary-jwt";
    let steps: Vec<(Vec<&str>, Option<&str>)> = vec![
        (
            vec!["set", "API", "--type", "api_key", "--from-file", &api],
            None,
        ),
        (vec!["set", "JWT=-", "--type", "token"], Some(jwt)),
        (
            vec![
                "set",
                "DB_PASSWORD=-",
                "--type",
                "password",
                "--metadata",
                "username=deploy",
            ],
            Some("canary-password\n"),
        ),
        (
            vec![
                "set",
                "CLIENT_TLS",
                "--type",
                "certificate",
                "--from-file",
                &chain,
                "--key-file",
                &key,
            ],
            None,
        ),
        (
            vec![
                "set",
                "DEPLOY_SSH",
                "--type",
                "ssh_key",
                "--key-file",
                ssh_key.to_str().unwrap(),
                "--passphrase-file",
                &passphrase,
            ],
            None,
        ),
        (
            vec![
                "set",
                "GITHUB_OAUTH",
                "--type",
                "oauth",
                "--from-file",
                &oauth,
            ],
            None,
        ),
        (
            vec!["set", "DATABASE_URL=-", "--type", "database_url"],
            Some("postgres://app:canary-db@db.example.test:5432/app\n"),
        ),
        (
            vec!["set", "BLOB", "--type", "generic", "--from-file", &generic],
            None,
        ),
    ];
    for (args, stdin) in steps {
        let out = creds(&app, &args, stdin).await;
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
    }
    let list = listed(&app).await;
    for (k, ty) in [
        ("API", "api_key"),
        ("JWT", "token"),
        ("DB_PASSWORD", "password"),
        ("CLIENT_TLS", "certificate"),
        ("DEPLOY_SSH", "ssh_key"),
        ("GITHUB_OAUTH", "oauth"),
        ("DATABASE_URL", "database_url"),
        ("BLOB", "generic"),
    ] {
        let c = entry(&list, k);
        assert_eq!(c["type"], ty, "{c}");
        assert_eq!(c["state"], "active", "{c}");
        assert_eq!(c["version"], 1, "{c}");
    }
    assert_eq!(entry(&list, "JWT")["expires_at"], 4_102_444_800_000i64);
    assert_eq!(
        entry(&list, "DB_PASSWORD")["metadata"]["username"],
        "deploy"
    );
    let tls = entry(&list, "CLIENT_TLS");
    assert!(tls["expires_at"].as_i64().is_some(), "{tls}");
    assert_eq!(tls["metadata"]["subject"], "CN=cli agent");
    assert_eq!(
        entry(&list, "DEPLOY_SSH")["metadata"]["fingerprint"],
        "SHA256:U4bYGvcGuQ36JLlQjl/ywgTrR0LWhRacDsVtxwka+Gw"
    );
    assert_eq!(
        entry(&list, "DATABASE_URL")["metadata"]["url"],
        "postgres://app@db.example.test:5432/app"
    );
    let all = serde_json::to_string(&list).unwrap();
    assert!(!all.contains("canary"), "a listing shows no value: {all}");
    // The table: the certificate expires in 3 days (less the seconds the test took).
    let out = creds(&app, &["list"], None).await;
    let tls_row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("CLIENT_TLS"))
        .unwrap();
    assert!(tls_row.contains(" in 3 days "), "{tls_row}");
    // Values come back whole: the oauth YAML as its JSON object, the SSH key with its passphrase.
    let out = creds(&app, &["get", "GITHUB_OAUTH"], None).await;
    let oauth: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(oauth["client_id"], "12345");
    assert_eq!(oauth["scopes"], serde_json::json!(["read", "write"]));
    let out = creds(&app, &["get", "BLOB"], None).await;
    assert_eq!(out.stdout, "line one\nline two canary-generic\n");
}

#[tokio::test]
async fn bad_typed_values_are_refused_naming_the_field_and_nothing_is_stored() {
    let (app, dir) = setup().await;
    let (chain, _) = client_certificate(30);
    let (_, other_key) = client_certificate(30);
    let chain = file(&dir, "chain.pem", &chain);
    let other_key = file(&dir, "other-key.pem", &other_key);
    let (expired_chain, expired_key) = client_certificate(-1);
    let expired_chain = file(&dir, "expired.pem", &expired_chain);
    let expired_key = file(&dir, "expired-key.pem", &expired_key);
    let wrong_pass = file(&dir, "wrong-pass", "not the passphrase\n");
    let encrypted = ssh_fixture("ed25519_encrypted");
    let encrypted = encrypted.to_str().unwrap();
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (
            vec![
                "set",
                "T",
                "--type",
                "certificate",
                "--from-file",
                &chain,
                "--key-file",
                &other_key,
            ],
            None,
            "private_key: the key of the leaf",
        ),
        (
            vec![
                "set",
                "T",
                "--type",
                "certificate",
                "--from-file",
                &other_key,
                "--key-file",
                &other_key,
            ],
            None,
            "certificate: a PEM certificate chain",
        ),
        (
            vec![
                "set",
                "T",
                "--type",
                "certificate",
                "--from-file",
                &expired_chain,
                "--key-file",
                &expired_key,
            ],
            None,
            "--allow-expired",
        ),
        (
            vec!["set", "T", "--type", "ssh_key", "--key-file", encrypted],
            None,
            "passphrase: the passphrase of this encrypted key",
        ),
        (
            vec![
                "set",
                "T",
                "--type",
                "ssh_key",
                "--key-file",
                encrypted,
                "--passphrase-file",
                &wrong_pass,
            ],
            None,
            "passphrase: the passphrase that decrypts",
        ),
        (
            vec!["set", "T=-", "--type", "database_url"],
            Some("db.example.test:5432/app\n"),
            "value: a connection URL with a host",
        ),
        (
            vec!["set", "T=-", "--type", "oauth"],
            Some("refresh_token: only\n"),
            "access_token: required",
        ),
        (
            vec!["set", "T=-", "--type", "api_key"],
            Some("two\tparts\n"),
            "no control characters",
        ),
    ];
    for (args, stdin, says) in cases {
        let out = creds(&app, &args, stdin).await;
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(says) && out.stderr.contains("invalid_credential"),
            "{args:?}: {out:?}"
        );
    }
    assert!(listed(&app).await.is_empty());
    // The expired certificate goes in when asked for.
    let out = creds(
        &app,
        &[
            "set",
            "T",
            "--type",
            "certificate",
            "--from-file",
            &expired_chain,
            "--key-file",
            &expired_key,
            "--allow-expired",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = creds(&app, &["list"], None).await;
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("T ") && l.contains(" expired ")),
        "{out:?}"
    );
}

#[tokio::test]
async fn rotate_versions_rollback_and_revoke_from_the_cli() {
    let (app, dir) = setup().await;
    let out = creds(&app, &["set", "KEY=-"], Some("first-value\n")).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = creds(&app, &["rotate", "KEY"], Some("second-value\n")).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("version 2 is active"), "{out:?}");
    let third = file(&dir, "third.txt", "third-value\n");
    let out = creds(
        &app,
        &["rotate", "KEY", "--from-file", &third, "--json"],
        None,
    )
    .await;
    assert_eq!(out.json()["version"], 3, "{out:?}");

    let out = creds(&app, &["versions", "KEY", "--json"], None).await;
    let versions = out.json();
    let states: Vec<(i64, &str)> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_i64().unwrap(), v["state"].as_str().unwrap()))
        .collect();
    assert!(
        states.contains(&(1, "rotated")) && states.contains(&(3, "active")),
        "{states:?}"
    );
    assert!(
        !out.stdout.contains("value"),
        "versions show no values: {out:?}"
    );
    let out = creds(&app, &["versions", "KEY"], None).await;
    assert!(out.stdout.starts_with("VERSION"), "{out:?}");

    let out = creds(&app, &["rollback", "KEY", "--to", "1"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("version 4 is active"), "{out:?}");
    let out = creds(&app, &["get", "KEY"], None).await;
    assert_eq!(out.stdout, "first-value\n");
    let out = creds(&app, &["rollback", "KEY", "--to", "99"], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("version_not_found"), "{out:?}");

    let out = creds(
        &app,
        &["revoke", "KEY", "--reason", "leaked in a log"],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let list = listed(&app).await;
    assert_eq!(entry(&list, "KEY")["state"], "revoked");
    assert_eq!(entry(&list, "KEY")["revoked_reason"], "leaked in a log");
    for args in [vec!["rotate", "KEY"], vec!["rollback", "KEY", "--to", "2"]] {
        let out = creds(&app, &args, Some("fourth-value\n")).await;
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("credential_revoked"),
            "{args:?}: {out:?}"
        );
    }
}
