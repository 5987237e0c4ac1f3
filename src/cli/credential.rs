//! `agent-vault vault credential`: values go in through argv or, with `KEY=-`, through standard
//! input so they stay out of shell history and the process list.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use clap::Subcommand;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::client::{Client, seg};
use super::output::outln;
use super::{CliError, JsonFlag, VaultArg, output, prompt_hidden, read_stdin};

/// `vault credential ...`
#[derive(Debug, Subcommand)]
pub(super) enum CredentialCommand {
    /// Set one or more credentials: KEY=VALUE, or KEY=- to read the value from standard input.
    ///
    /// Each KEY=- is prompted for, without echo, when standard input is a terminal. Piped, one
    /// KEY=- takes all of standard input (multi-line values work) and several take one line
    /// each, in the order given.
    Set {
        /// KEY=VALUE or KEY=- pairs; keys are UPPER_SNAKE_CASE.
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// A description for every key set.
        #[arg(long)]
        description: Option<String>,
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
    /// List credentials (no values unless --reveal).
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

/// Runs a credential command.
pub(super) async fn run(cmd: CredentialCommand, address: Option<&str>) -> Result<(), CliError> {
    let client = Client::authenticated(address)?;
    match cmd {
        CredentialCommand::Set {
            pairs,
            description,
            vault,
            json,
        } => {
            let values = parse_pairs(&pairs)?;
            let mut body = json!({ "credentials": values });
            if let Some(d) = description {
                body["descriptions"] = json!(
                    values
                        .keys()
                        .map(|k| (k.clone(), d.clone()))
                        .collect::<BTreeMap<_, _>>()
                );
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
                    outln!(
                        "set {} (version {}) in vault {}",
                        output::text(w, "key"),
                        output::text(w, "version"),
                        vault.vault
                    )?;
                }
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
                let mut headers = vec!["KEY", "TYPE", "VERSION", "UPDATED", "USES", "DESCRIPTION"];
                if reveal {
                    headers.push("VALUE");
                }
                let rows: Vec<_> = list
                    .iter()
                    .map(|c| {
                        let mut row = vec![
                            output::text(c, "key"),
                            output::text(c, "type"),
                            output::text(c, "version"),
                            output::time(c, "updated_at"),
                            output::text(c, "use_count"),
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
    use super::*;

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
