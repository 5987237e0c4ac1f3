//! `agent-vault vault credential`: values go in through argv or, with `KEY=-` or value files,
//! through standard input and files so they stay out of shell history and the process list;
//! typed values are put together from their files by `credential_value`. Also a credential's
//! lifecycle: rotate, versions, rollback, revoke.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use clap::{Args, Subcommand};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::client::{Client, seg};
use super::credential_value::ValueFiles;
use super::output::outln;
use super::{CliError, JsonFlag, VaultArg, output, prompt_hidden, read_stdin};
use crate::credtype::{CredentialType, parse_rfc3339, validate_metadata};

/// `vault credential ...`
#[derive(Debug, Subcommand)]
pub(super) enum CredentialCommand {
    /// Set one or more credentials: KEY=VALUE, or KEY=- to read the value from standard input.
    ///
    /// Each KEY=- is prompted for, without echo, when standard input is a terminal. Piped, one
    /// KEY=- takes all of standard input (multi-line values work) and several take one line
    /// each, in the order given. With --from-file (or an ssh_key's --key-file) give one KEY
    /// alone: its value comes from the file. Setting an existing key makes a new version.
    Set {
        /// KEY=VALUE or KEY=- pairs; keys are UPPER_SNAKE_CASE.
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        #[command(flatten)]
        details: Details,
        /// A description for every key set.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Make a new active version of a credential (the previous one becomes rotated); the value
    /// comes from --from-file or standard input.
    Rotate {
        /// The key.
        key: String,
        #[command(flatten)]
        details: Details,
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List a credential's versions: state, who made each and when (never values).
    Versions {
        /// The key.
        key: String,
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Make a rotated version's value the active one again, as a new version.
    Rollback {
        /// The key.
        key: String,
        /// The version whose value to restore.
        #[arg(long, value_name = "N")]
        to: u32,
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Revoke every version of a credential: the proxy refuses to use it and its value is never
    /// shown again (delete still removes it).
    Revoke {
        /// The key.
        key: String,
        /// Why, for the audit log and listings.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Print a credential's value (member or admin role).
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List credentials: type, state, expiry, use count, last use (no values unless --reveal).
    List {
        /// Include values (member or admin role).
        #[arg(long)]
        reveal: bool,
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Delete credentials (all listed or none).
    Delete {
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        vault: VaultArg,
    },
}

/// What `set` and `rotate` take beside the value: its type, files, metadata and expiry.
#[derive(Args, Clone)]
pub(super) struct Details {
    /// The credential type: api_key, token, password, certificate, ssh_key, oauth,
    /// database_url, generic (set: default api_key; rotate: the stored type).
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_type)]
    kind: Option<CredentialType>,
    #[command(flatten)]
    files: ValueFiles,
    /// Metadata entry KEY=VALUE (repeatable), e.g. --metadata username=deploy.
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// When the credential expires (RFC 3339, e.g. 2027-01-31T12:00:00Z); the proxy refuses
    /// to use it after that.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    expires_at: Option<i64>,
    /// Store a value that has already expired (a certificate past notAfter, a JWT past exp).
    #[arg(long)]
    allow_expired: bool,
}

/// Metadata values may be sensitive (they are sealed at rest): debug output names the flags only.
impl std::fmt::Debug for Details {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Details")
            .field("kind", &self.kind)
            .field("files", &self.files)
            .field("metadata_entries", &self.metadata.len())
            .field("expires_at", &self.expires_at)
            .field("allow_expired", &self.allow_expired)
            .finish()
    }
}

/// `--type`: one of the credential type names.
fn parse_type(s: &str) -> Result<CredentialType, String> {
    s.parse::<CredentialType>().map_err(|e| e.to_string())
}

/// `--expires-at`: an RFC 3339 time, as ms since the epoch.
fn parse_time(s: &str) -> Result<i64, String> {
    parse_rfc3339(s).ok_or_else(|| "expected an RFC 3339 time such as 2027-01-31T12:00:00Z".into())
}

/// `--metadata KEY=VALUE` flags as a map, checked against the metadata rules. Errors name the
/// flag and key but never quote a value.
fn parse_metadata(flags: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for (i, flag) in flags.iter().enumerate() {
        let (key, value) = flag.split_once('=').ok_or_else(|| {
            CliError::msg(format!(
                "--metadata number {} is not KEY=VALUE (e.g. --metadata username=deploy)",
                i + 1
            ))
        })?;
        if out.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(CliError::msg(format!("--metadata {key} is given twice")));
        }
    }
    validate_metadata(&out).map_err(|e| CliError::msg(format!("--metadata: {e}")))?;
    Ok(out)
}

impl Details {
    /// The `--metadata` flags as a map, `None` when there are none.
    fn metadata(&self) -> Result<Option<BTreeMap<String, String>>, CliError> {
        (!self.metadata.is_empty())
            .then(|| parse_metadata(&self.metadata))
            .transpose()
    }
}

/// The value for a `KEY` argument given with a value file: `KEY` alone, or `KEY=-`.
fn key_alone(pairs: &[String]) -> Result<String, CliError> {
    match pairs {
        [one] => match one.split_once('=') {
            None => Ok(one.clone()),
            Some((key, "-")) => Ok(key.to_owned()),
            // The argument may hold a value: never echo it.
            Some(_) => Err(CliError::msg(
                "with a value file (--from-file, or --key-file for ssh_key), give the key alone: KEY, not KEY=VALUE",
            )),
        },
        _ => Err(CliError::msg(
            "a value file (--from-file, or --key-file for ssh_key) sets one credential: give one KEY",
        )),
    }
}

/// The type a stored credential has, read from the listing (which carries no values).
async fn stored_type(client: &Client, vault: &str, key: &str) -> Result<CredentialType, CliError> {
    let list: Vec<Value> = client
        .get(&format!("/v1/vaults/{}/credentials", seg(vault)))
        .await?;
    let found = list
        .iter()
        .find(|c| c["key"].as_str() == Some(key))
        .ok_or_else(|| CliError::msg(format!("no credential {key} in vault {vault}")))?;
    // Rows from before typed credentials say `static`: they are api keys.
    Ok(found["type"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(CredentialType::ApiKey))
}

/// Splits `KEY=VALUE` pairs. Each `KEY=-` takes its value from standard input: on a terminal,
/// a prompt naming the key that does not echo what is typed; otherwise, with one `KEY=-`, all
/// of standard input (so multi-line values such as PEM keys work), and with several, one line
/// each, in the order given.
pub(super) fn parse_pairs(pairs: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut given: Vec<(&str, Option<&str>)> = Vec::with_capacity(pairs.len());
    for (i, pair) in pairs.iter().enumerate() {
        // The argument may be a value typed without its key: never echo it.
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            CliError::msg(format!(
                "argument {} is not KEY=VALUE (use KEY=- to read the value from standard input)",
                i + 1
            ))
        })?;
        given.push((key, (value != "-").then_some(value)));
    }
    let from_stdin: Vec<&str> = given
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| *k)
        .collect();
    let mut read = if from_stdin.is_empty() {
        Vec::new()
    } else if std::io::stdin().is_terminal() {
        from_stdin
            .iter()
            .map(|key| {
                prompt_hidden(
                    &format!("Value for {key} (not shown): "),
                    "use KEY=- with the value on standard input",
                )
                .map(|v| v.expose_secret().to_owned())
            })
            .collect::<Result<_, _>>()?
    } else {
        stdin_values(&from_stdin, &read_stdin()?)?
    }
    .into_iter();
    let mut out = BTreeMap::new();
    for (key, value) in given {
        let value = match value {
            Some(v) => v.to_owned(),
            None => read.next().unwrap_or_default(),
        };
        if out.insert(key.to_owned(), value).is_some() {
            return Err(CliError::msg(format!("{key} is given twice")));
        }
    }
    Ok(out)
}

/// The values of `keys` (the `KEY=-` arguments, in order) from piped standard input: all of it
/// for one key (less one final line ending), one line each for several. A line count that does
/// not match is refused rather than guessed at.
fn stdin_values(keys: &[&str], text: &str) -> Result<Vec<String>, CliError> {
    let strip = |line: &str| -> String {
        let line = line.strip_suffix('\n').unwrap_or(line);
        line.strip_suffix('\r').unwrap_or(line).to_owned()
    };
    if let [_] = keys {
        return Ok(vec![strip(text)]);
    }
    let lines: Vec<String> = text.split_inclusive('\n').map(strip).collect();
    if lines.len() != keys.len() {
        return Err(CliError::msg(format!(
            "{} KEY=- arguments ({}) read one line each from standard input, but it has {} line{}; nothing was set",
            keys.len(),
            keys.join(", "),
            lines.len(),
            if lines.len() == 1 { "" } else { "s" }
        )));
    }
    Ok(lines)
}

/// `/v1/vaults/{vault}/credentials/{key}/{action}`.
fn lifecycle_path(vault: &str, key: &str, action: &str) -> String {
    format!(
        "/v1/vaults/{}/credentials/{}/{action}",
        seg(vault),
        seg(key)
    )
}

/// Runs a credential command.
pub(super) async fn run(cmd: CredentialCommand, address: Option<&str>) -> Result<(), CliError> {
    let client = Client::authenticated(address)?;
    match cmd {
        CredentialCommand::Set {
            pairs,
            details,
            description,
            vault,
            json,
        } => {
            let ty = details.kind.unwrap_or(CredentialType::ApiKey);
            details.files.check(ty)?;
            let (metadata, expires_at) = (details.metadata()?, details.expires_at);
            let given: BTreeMap<String, Zeroizing<String>> = match details.files.read_main(ty)? {
                Some(main) => BTreeMap::from([(key_alone(&pairs)?, main)]),
                None => parse_pairs(&pairs)?
                    .into_iter()
                    .map(|(k, v)| (k, Zeroizing::new(v)))
                    .collect(),
            };
            let mut values = BTreeMap::new();
            for (key, main) in given {
                values.insert(key, details.files.assemble(ty, main)?);
            }
            let for_each = |v: Value| -> Value {
                json!(
                    values
                        .keys()
                        .map(|k| (k.clone(), v.clone()))
                        .collect::<BTreeMap<_, _>>()
                )
            };
            let plain: BTreeMap<&str, &str> = values
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut body = json!({ "credentials": plain });
            // Only what was given is sent: a server without typed credentials still takes the rest.
            if let Some(d) = description {
                body["descriptions"] = for_each(json!(d));
            }
            if let Some(t) = details.kind {
                body["types"] = for_each(json!(t.as_str()));
            }
            if let Some(m) = metadata {
                body["metadata"] = for_each(json!(m));
            }
            if let Some(at) = expires_at {
                body["expires_at"] = for_each(json!(at));
            }
            if details.allow_expired {
                body["allow_expired"] = json!(true);
            }
            let resp: Value = client
                .put(
                    &format!("/v1/vaults/{}/credentials", seg(&vault.vault)),
                    &body,
                )
                .await?;
            if json.json {
                output::json(&resp)?;
            } else {
                for w in resp["written"].as_array().into_iter().flatten() {
                    let kind = match w.get("type").and_then(Value::as_str) {
                        Some(t) => format!("{t}, "),
                        None => String::new(),
                    };
                    outln!(
                        "set {} ({kind}version {}) in vault {}",
                        output::text(w, "key"),
                        output::text(w, "version"),
                        vault.vault
                    )?;
                }
            }
        }
        CredentialCommand::Rotate {
            key,
            details,
            vault,
            json,
        } => {
            let ty = match details.kind {
                Some(t) => t,
                None => stored_type(&client, &vault.vault, &key).await?,
            };
            details.files.check(ty)?;
            let (metadata, expires_at) = (details.metadata()?, details.expires_at);
            let main = match details.files.read_main(ty)? {
                Some(main) => main,
                // Read as `KEY=-` is: a prompt on a terminal, all of standard input piped.
                None => parse_pairs(&[format!("{key}=-")])?
                    .remove(&key)
                    .map(Zeroizing::new)
                    .unwrap_or_default(),
            };
            let value = details.files.assemble(ty, main)?;
            let mut body = json!({ "value": value.as_str() });
            if let Some(m) = metadata {
                body["metadata"] = json!(m);
            }
            if let Some(at) = expires_at {
                body["expires_at"] = json!(at);
            }
            if details.allow_expired {
                body["allow_expired"] = json!(true);
            }
            let resp: Value = client
                .post(&lifecycle_path(&vault.vault, &key, "rotate"), &body)
                .await?;
            if json.json {
                output::json(&resp)?;
            } else {
                outln!(
                    "rotated {key} in vault {}: version {} is active",
                    vault.vault,
                    output::text(&resp, "version")
                )?;
            }
        }
        CredentialCommand::Versions { key, vault, json } => {
            let versions: Vec<Value> = client
                .get(&lifecycle_path(&vault.vault, &key, "versions"))
                .await?;
            if json.json {
                output::json(&json!(versions))?;
            } else {
                let now = output::now_ms();
                let rows: Vec<_> = versions
                    .iter()
                    .map(|v| {
                        vec![
                            output::text(v, "version"),
                            output::text(v, "state"),
                            output::text(v, "created_by"),
                            output::time(v, "created_at"),
                            output::time(v, "rotated_at"),
                            output::expiry(v, "expires_at", now),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "VERSION",
                        "STATE",
                        "CREATED BY",
                        "CREATED",
                        "ROTATED",
                        "EXPIRES",
                    ],
                    &rows,
                )?;
            }
        }
        CredentialCommand::Rollback {
            key,
            to,
            vault,
            json,
        } => {
            let resp: Value = client
                .post(
                    &lifecycle_path(&vault.vault, &key, "rollback"),
                    &json!({ "to": to }),
                )
                .await?;
            if json.json {
                output::json(&resp)?;
            } else {
                outln!(
                    "rolled {key} back to the value of version {to} in vault {}: version {} is active",
                    vault.vault,
                    output::text(&resp, "version")
                )?;
            }
        }
        CredentialCommand::Revoke {
            key,
            reason,
            vault,
            json,
        } => {
            let body = match reason {
                Some(r) => json!({ "reason": r }),
                None => json!({}),
            };
            let resp: Value = client
                .post(&lifecycle_path(&vault.vault, &key, "revoke"), &body)
                .await?;
            if json.json {
                output::json(&resp)?;
            } else {
                outln!(
                    "revoked {key} in vault {}: the proxy no longer uses it",
                    vault.vault
                )?;
            }
        }
        CredentialCommand::Get { key, vault, json } => {
            let c: Value = client
                .get(&format!(
                    "/v1/vaults/{}/credentials/{}",
                    seg(&vault.vault),
                    seg(&key)
                ))
                .await?;
            if json.json {
                output::json(&c)?
            } else {
                outln!("{}", c["value"].as_str().unwrap_or_default())?
            }
        }
        CredentialCommand::List {
            reveal,
            vault,
            json,
        } if client.acting == super::client::Acting::Agent && !reveal => {
            // Agents see key names through discover, the only read route open to proxy roles.
            let d: Value = client
                .get(&format!("/v1/discover?vault={}", seg(&vault.vault)))
                .await?;
            if json.json {
                let keys: Vec<Value> = d["credentials"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|k| json!({ "key": k }))
                    .collect();
                output::json(&json!(keys))?;
            } else {
                for k in d["credentials"].as_array().into_iter().flatten() {
                    outln!("{}", k.as_str().unwrap_or_default())?;
                }
            }
        }
        CredentialCommand::List {
            reveal,
            vault,
            json,
        } => {
            let path = format!(
                "/v1/vaults/{}/credentials{}",
                seg(&vault.vault),
                if reveal { "?reveal=true" } else { "" }
            );
            let list: Vec<Value> = client.get(&path).await?;
            if json.json {
                output::json(&json!(list))?;
            } else {
                let mut headers = vec![
                    "KEY",
                    "TYPE",
                    "STATE",
                    "VERSION",
                    "EXPIRES",
                    "USES",
                    "LAST USED",
                    "DESCRIPTION",
                ];
                if reveal {
                    headers.push("VALUE");
                }
                let now = output::now_ms();
                let rows: Vec<_> = list
                    .iter()
                    .map(|c| {
                        let mut row = vec![
                            output::text(c, "key"),
                            output::text(c, "type"),
                            output::text(c, "state"),
                            output::text(c, "version"),
                            output::expiry(c, "expires_at", now),
                            output::text(c, "use_count"),
                            output::ago(c, "last_used_at", now, "never"),
                            output::text(c, "description"),
                        ];
                        if reveal {
                            // A value that failed its integrity check is marked, not left blank.
                            row.push(match c["error"].as_str() {
                                Some(code) => format!("<{code}>"),
                                None => output::text(c, "value"),
                            });
                        }
                        row
                    })
                    .collect();
                output::table(&headers, &rows)?;
            }
        }
        CredentialCommand::Delete { keys, vault } => {
            let resp: Value = client
                .delete(
                    &format!("/v1/vaults/{}/credentials", seg(&vault.vault)),
                    Some(&json!({ "keys": keys })),
                )
                .await?;
            for k in resp["deleted"].as_array().into_iter().flatten() {
                outln!(
                    "deleted {} from vault {}",
                    k.as_str().unwrap_or_default(),
                    vault.vault
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The credential commands alone, for parse tests.
    #[derive(Debug, Parser)]
    struct Parse {
        #[command(subcommand)]
        cmd: CredentialCommand,
    }

    fn parse(args: &[&str]) -> Result<CredentialCommand, clap::Error> {
        Parse::try_parse_from(std::iter::once("credential").chain(args.iter().copied()))
            .map(|p| p.cmd)
    }

    #[test]
    fn set_takes_type_files_metadata_and_expiry() {
        let cmd = parse(&[
            "set",
            "CLIENT_TLS",
            "--type",
            "certificate",
            "--from-file",
            "chain.pem",
            "--key-file",
            "key.pem",
            "--metadata",
            "team=payments",
            "--metadata",
            "owner=ada",
            "--expires-at",
            "2027-01-31T13:00:00+01:00",
            "--allow-expired",
        ])
        .unwrap();
        let CredentialCommand::Set { pairs, details, .. } = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(pairs, ["CLIENT_TLS"]);
        assert_eq!(details.kind, Some(CredentialType::Certificate));
        assert_eq!(
            details.files.from_file.as_deref(),
            Some("chain.pem".as_ref())
        );
        assert_eq!(details.files.key_file.as_deref(), Some("key.pem".as_ref()));
        assert_eq!(details.expires_at, Some(1_801_396_800_000));
        assert!(details.allow_expired);
        let metadata = details.metadata().unwrap().unwrap();
        assert_eq!(metadata["team"], "payments");
        assert_eq!(metadata["owner"], "ada");
    }

    #[test]
    fn lifecycle_commands_parse_and_usage_errors_are_clap_errors() {
        assert!(matches!(
            parse(&["rollback", "K", "--to", "3"]).unwrap(),
            CredentialCommand::Rollback { to: 3, .. }
        ));
        assert!(matches!(
            parse(&["revoke", "K", "--reason", "leaked"]).unwrap(),
            CredentialCommand::Revoke {
                reason: Some(_),
                ..
            }
        ));
        assert!(matches!(
            parse(&["rotate", "K", "--from-file", "v.txt"]).unwrap(),
            CredentialCommand::Rotate { .. }
        ));
        assert!(matches!(
            parse(&["versions", "K", "--json"]).unwrap(),
            CredentialCommand::Versions { .. }
        ));
        for bad in [
            &["rollback", "K"][..],
            &["rollback", "K", "--to", "-1"],
            &["set", "A=1", "--type", "pgp_key"],
            &["set", "A=1", "--expires-at", "2027-01-31"],
            &["rotate"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }

    #[test]
    fn metadata_flags_are_checked_without_echoing_values() {
        let m = parse_metadata(&["username=deploy".into(), "note=a=b".into()]).unwrap();
        assert_eq!(m["note"], "a=b");
        for (flags, says) in [
            (vec!["s3cret"], "--metadata number 1 is not KEY=VALUE"),
            (vec!["a=s3cret", "a=s3cret2"], "--metadata a is given twice"),
            (vec!["Bad=s3cret"], "--metadata: metadata key \"Bad\""),
        ] {
            let flags: Vec<String> = flags.into_iter().map(String::from).collect();
            let err = parse_metadata(&flags).unwrap_err().to_string();
            assert!(err.starts_with(says), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let long = vec![format!("k={}", "x".repeat(300))];
        let err = parse_metadata(&long).unwrap_err().to_string();
        assert!(err.contains("metadata.k: at most 256 bytes"), "{err}");
    }

    #[test]
    fn a_value_file_goes_with_one_bare_key() {
        assert_eq!(key_alone(&["K".into()]).unwrap(), "K");
        assert_eq!(key_alone(&["K=-".into()]).unwrap(), "K");
        let err = key_alone(&["K=s3cret".into()]).unwrap_err().to_string();
        assert!(
            err.contains("give the key alone") && !err.contains("s3cret"),
            "{err}"
        );
        assert!(key_alone(&["A".into(), "B".into()]).is_err());
    }

    #[test]
    fn pairs_split_on_the_first_equals() {
        let p = parse_pairs(&["A=1".into(), "B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(p["A"], "1");
        assert_eq!(p["B"], "x=y");
        assert_eq!(p["C"], "");
        assert!(parse_pairs(&["NOEQUALS".into()]).is_err());
        assert!(parse_pairs(&["A=1".into(), "A=2".into()]).is_err());
    }

    #[test]
    fn malformed_pair_errors_do_not_echo_values() {
        let err = parse_pairs(&["A=1".into(), "sk_live_secret".into()])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sk_live_secret"));
        assert!(err.contains("argument 2"));
        let err = parse_pairs(&["A=s3cret".into(), "A=s3cret2".into()])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"));
    }

    #[test]
    fn one_piped_key_takes_all_of_stdin_and_several_take_a_line_each() {
        let pem = "-----BEGIN KEY-----\nabc\n-----END KEY-----\n";
        assert_eq!(
            stdin_values(&["PEM"], pem).unwrap(),
            vec!["-----BEGIN KEY-----\nabc\n-----END KEY-----"]
        );
        assert_eq!(stdin_values(&["A"], "one\r\n").unwrap(), vec!["one"]);
        assert_eq!(
            stdin_values(&["A", "B"], "first\nsecond\n").unwrap(),
            vec!["first", "second"]
        );
        assert_eq!(
            stdin_values(&["A", "B"], "first\r\nsecond").unwrap(),
            vec!["first", "second"],
            "the last line needs no line ending"
        );
        assert_eq!(
            stdin_values(&["A", "B"], "\nsecond\n").unwrap(),
            vec!["", "second"],
            "an empty line is an empty value (the server judges it)"
        );
    }

    #[test]
    fn a_piped_line_count_that_does_not_match_is_refused_without_echoing_values() {
        for text in ["only-one\n", "a-secret\nb-secret\nc-secret\n", ""] {
            let err = stdin_values(&["A", "B"], text).unwrap_err().to_string();
            assert!(
                err.contains("A, B") && err.contains("one line each"),
                "{err}"
            );
            assert!(
                !err.contains("secret") && !err.contains("only-one"),
                "{err}"
            );
        }
    }
}
