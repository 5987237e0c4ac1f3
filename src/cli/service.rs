//! `agent-vault vault service`: services are written as YAML files and checked locally before
//! being sent; the server validates them again.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{Client, seg};
use super::output::{out, outln};
use super::{CliError, JsonFlag, VaultArg, output, read_file_or_stdin};
use crate::policy::service::{ServiceSpec, parse_service_file, render_service_file};

/// `vault service ...`
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub(super) enum ServiceCommand {
    /// Replace all of the vault's services with those in a YAML file (admin role).
    Set {
        /// The file, or - for standard input.
        #[arg(long, short = 'f')]
        file: PathBuf,
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Add (or replace by name) one service (admin role).
    Add {
        /// Host pattern: api.example.com, *.example.com, host:8443, host/path/*.
        #[arg(long)]
        host: String,
        /// Name (default: derived from the host).
        #[arg(long)]
        name: Option<String>,
        /// bearer, basic, api-key, custom or passthrough.
        #[arg(long = "auth", default_value = "bearer")]
        auth: String,
        /// Credential key for bearer tokens and api keys.
        #[arg(long)]
        key: Option<String>,
        /// Credential key of the basic-auth user name.
        #[arg(long)]
        username_key: Option<String>,
        /// Credential key of the basic-auth password.
        #[arg(long)]
        password_key: Option<String>,
        /// Header for api-key auth (default Authorization).
        #[arg(long)]
        header: Option<String>,
        /// Prefix for api-key auth, e.g. "Token ".
        #[arg(long)]
        prefix: Option<String>,
        /// Custom header templates, NAME=TEMPLATE with {{ KEY }} references; repeatable.
        #[arg(long = "template", value_name = "NAME=TEMPLATE")]
        templates: Vec<String>,
        /// Allowed methods (default: any); repeatable.
        #[arg(long = "method")]
        methods: Vec<String>,
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Print the vault's services as YAML (or JSON).
    List {
        #[command(flatten)]
        vault: VaultArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Remove a service by name (admin role).
    Remove {
        /// The service's name.
        name: String,
        #[command(flatten)]
        vault: VaultArg,
    },
}

fn auth_json(
    auth: &str,
    key: Option<String>,
    username_key: Option<String>,
    password_key: Option<String>,
    header: Option<String>,
    prefix: Option<String>,
    templates: &[String],
) -> Result<Value, CliError> {
    let need = |v: Option<String>, flag: &str| {
        v.ok_or_else(|| CliError::msg(format!("--auth {auth} needs {flag}")))
    };
    Ok(match auth {
        "bearer" => json!({ "type": "bearer", "token": need(key, "--key")? }),
        "basic" => {
            let mut v =
                json!({ "type": "basic", "username": need(username_key, "--username-key")? });
            if let Some(p) = password_key {
                v["password"] = json!(p);
            }
            v
        }
        "api-key" => {
            let mut v = json!({ "type": "api-key", "key": need(key, "--key")? });
            if let Some(h) = header {
                v["header"] = json!(h);
            }
            if let Some(p) = prefix {
                v["prefix"] = json!(p);
            }
            v
        }
        "custom" => {
            let mut headers = BTreeMap::new();
            for t in templates {
                let (name, template) = t
                    .split_once('=')
                    .ok_or_else(|| CliError::msg(format!("--template {t:?}: use NAME=TEMPLATE")))?;
                headers.insert(name.to_owned(), template.to_owned());
            }
            if headers.is_empty() {
                return Err(CliError::msg(
                    "--auth custom needs at least one --template NAME=TEMPLATE",
                ));
            }
            json!({ "type": "custom", "headers": headers })
        }
        "passthrough" => json!({ "type": "passthrough" }),
        other => {
            return Err(CliError::msg(format!(
                "unknown auth type {other:?}: use bearer, basic, api-key, custom or passthrough"
            )));
        }
    })
}

/// Runs a service command.
pub(super) async fn run(cmd: ServiceCommand, address: Option<&str>) -> Result<(), CliError> {
    let client = Client::authenticated(address)?;
    match cmd {
        ServiceCommand::Set { file, vault, json } => {
            let text = read_file_or_stdin(&file)?;
            let specs: Vec<ServiceSpec> = parse_service_file(&text)
                .map_err(|e| CliError::msg(format!("{}: {e}", file.display())))?
                .into_iter()
                .map(ServiceSpec::normalized)
                .collect();
            for spec in &specs {
                spec.compile()
                    .map_err(|e| CliError::msg(format!("{}: {e}", file.display())))?;
            }
            let resp: Value = client
                .put(
                    &format!("/v1/vaults/{}/services", seg(&vault.vault)),
                    &json!({ "services": specs }),
                )
                .await?;
            // The stored services, as `service list --json` and the admin API show them.
            if json.json {
                output::json(&resp["services"])?;
                return Ok(());
            }
            let n = resp["services"].as_array().map(Vec::len).unwrap_or(0);
            outln!(
                "vault {} now has {n} service{}",
                vault.vault,
                if n == 1 { "" } else { "s" }
            )?;
        }
        ServiceCommand::Add {
            host,
            name,
            auth,
            key,
            username_key,
            password_key,
            header,
            prefix,
            templates,
            methods,
            vault,
            json,
        } => {
            let mut spec = json!({ "host": host, "auth": auth_json(&auth, key, username_key, password_key, header, prefix, &templates)? });
            if let Some(n) = name {
                spec["name"] = json!(n);
            }
            if !methods.is_empty() {
                spec["methods"] = json!(methods);
            }
            let resp: Value = client
                .post(&format!("/v1/vaults/{}/services", seg(&vault.vault)), &spec)
                .await?;
            // The stored service as the server normalized it (name, host, methods, auth, ...).
            if json.json {
                output::json(&resp)?;
                return Ok(());
            }
            outln!(
                "service {} -> {} saved in vault {}",
                output::text(&resp, "name"),
                output::text(&resp, "host"),
                vault.vault
            )?;
        }
        ServiceCommand::List { vault, json } if client.acting == super::client::Acting::Agent => {
            // Agents see service names and hosts through discover.
            let d: Value = client
                .get(&format!("/v1/discover?vault={}", seg(&vault.vault)))
                .await?;
            if json.json {
                output::json(&d["services"])?;
            } else {
                for s in d["services"].as_array().into_iter().flatten() {
                    outln!("{}  {}", output::text(s, "name"), output::text(s, "host"))?;
                }
            }
        }
        ServiceCommand::List { vault, json } => {
            let resp: Value = client
                .get(&format!("/v1/vaults/{}/services", seg(&vault.vault)))
                .await?;
            if json.json {
                output::json(&resp["services"])?;
            } else {
                let specs: Vec<ServiceSpec> = serde_json::from_value(resp["services"].clone())
                    .map_err(|e| CliError::msg(format!("unexpected response: {e}")))?;
                out!("{}", render_service_file(&specs))?;
            }
        }
        ServiceCommand::Remove { name, vault } => {
            let _: Value = client
                .delete(
                    &format!("/v1/vaults/{}/services/{}", seg(&vault.vault), seg(&name)),
                    None,
                )
                .await?;
            outln!("removed service {name} from vault {}", vault.vault)?;
        }
    }
    Ok(())
}
