//! `agent-vault vault credential`: values go in through argv or, with `KEY=-`, through standard
//! input so they stay out of shell history and the process list.

use std::collections::BTreeMap;

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{Client, seg};
use super::output::outln;
use super::{CliError, JsonFlag, VaultArg, output, read_stdin};

/// `vault credential ...`
#[derive(Debug, Subcommand)]
pub(super) enum CredentialCommand {
    /// Set one or more credentials: KEY=VALUE, or KEY=- to read the value from standard input.
    Set {
        /// KEY=VALUE pairs; keys are UPPER_SNAKE_CASE.
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

/// Splits `KEY=VALUE` pairs; at most one `KEY=-` reads standard input.
pub(super) fn parse_pairs(pairs: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    let mut stdin_used = false;
    for (i, pair) in pairs.iter().enumerate() {
        // The argument may be a value typed without its key: never echo it.
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            CliError::msg(format!(
                "argument {} is not KEY=VALUE (use KEY=- to read the value from standard input)",
                i + 1
            ))
        })?;
        let value = if value == "-" {
            if stdin_used {
                return Err(CliError::msg(
                    "only one KEY=- can read standard input per command",
                ));
            }
            stdin_used = true;
            let text = read_stdin()?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            text.strip_suffix('\r').unwrap_or(text).to_owned()
        } else {
            value.to_owned()
        };
        if out.insert(key.to_owned(), value).is_some() {
            return Err(CliError::msg(format!("{key} is given twice")));
        }
    }
    Ok(out)
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
}
