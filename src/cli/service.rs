//! `agent-vault vault service`: services are written as YAML files and checked locally before
//! being sent; the server validates them again.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{Client, seg};
use super::output::{note, out, outln};
use super::{CliError, JsonFlag, VaultArg, ask_line, output, read_file_or_stdin};
use crate::policy::service::{ServiceSpec, parse_service_file, render_service_file};

/// `vault service ...`
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub(super) enum ServiceCommand {
    /// Replace all of the vault's services with those in a YAML file (admin role).
    ///
    /// Prints what it will add, change and remove first. Adding only goes ahead; changing or
    /// removing a service asks for confirmation on a terminal, and without one needs --yes.
    Set {
        /// The file, or - for standard input.
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Apply without asking, even when services are changed or removed (for scripts).
        #[arg(long, short = 'y')]
        yes: bool,
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
        /// bearer, basic, api-key, custom, mtls or passthrough.
        #[arg(long = "auth", default_value = "bearer")]
        auth: String,
        /// A `certificate` credential presented as the TLS client identity to the upstream
        /// (with `--auth mtls` alone, or beside another auth).
        #[arg(long, value_name = "KEY")]
        client_certificate: Option<String>,
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

#[allow(clippy::too_many_arguments)]
fn auth_json(
    auth: &str,
    key: Option<String>,
    client_certificate: Option<&str>,
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
            // A `password` credential with `username` metadata is the whole pair on its own.
            if username_key.is_none() && password_key.is_none() {
                return Err(CliError::msg(
                    "--auth basic needs --username-key, --password-key (a password credential with username metadata), or both",
                ));
            }
            let mut v = json!({ "type": "basic" });
            if let Some(u) = username_key {
                v["username"] = json!(u);
            }
            if let Some(p) = password_key {
                v["password"] = json!(p);
            }
            v
        }
        "mtls" => {
            let cert = client_certificate.map(str::to_owned).or(key);
            json!({ "type": "mtls", "certificate": need(cert, "--client-certificate")? })
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
                "unknown auth type {other:?}: use bearer, basic, api-key, custom, mtls or passthrough"
            )));
        }
    })
}

/// What `service set` would do to a vault's services.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// New services: (name, host).
    add: Vec<(String, String)>,
    /// Services whose definition differs: (name, host in the file).
    change: Vec<(String, String)>,
    /// Services not in the file: (name, host).
    remove: Vec<(String, String)>,
    /// Services kept in both whose order differs (order decides which rule wins).
    reorder: bool,
}

impl Plan {
    fn new(current: &[ServiceSpec], wanted: &[ServiceSpec]) -> Self {
        // Both sides in the form the server stores: normalized, compared as serialized.
        let normal = |list: &[ServiceSpec]| -> Vec<ServiceSpec> {
            list.iter().cloned().map(ServiceSpec::normalized).collect()
        };
        let (current, wanted) = (normal(current), normal(wanted));
        let entry = |s: &ServiceSpec| (s.name.clone(), s.host.clone());
        let find = |list: &[ServiceSpec], name: &str| list.iter().find(|s| s.name == name).cloned();
        let form = |s: &ServiceSpec| serde_json::to_value(s).ok();
        let mut plan = Self::default();
        for w in &wanted {
            match find(&current, &w.name) {
                None => plan.add.push(entry(w)),
                Some(c) if form(&c) != form(w) => plan.change.push(entry(w)),
                Some(_) => {}
            }
        }
        for c in &current {
            if find(&wanted, &c.name).is_none() {
                plan.remove.push(entry(c));
            }
        }
        let kept = |list: &[ServiceSpec], other: &[ServiceSpec]| -> Vec<String> {
            list.iter()
                .filter(|s| find(other, &s.name).is_some())
                .map(|s| s.name.clone())
                .collect()
        };
        plan.reorder = kept(&current, &wanted) != kept(&wanted, &current);
        plan
    }

    /// Whether applying loses or alters something that exists today.
    fn destructive(&self) -> bool {
        !self.change.is_empty() || !self.remove.is_empty() || self.reorder
    }

    /// Prints the plan for the person on standard error (standard output stays for `--json`).
    fn show(&self, vault: &str) {
        if self.add.is_empty() && !self.destructive() {
            note!("vault {vault}: the file matches the stored services; nothing changes");
            return;
        }
        note!("vault {vault}: service set will");
        for (verb, list) in [
            ("add", &self.add),
            ("change", &self.change),
            ("remove", &self.remove),
        ] {
            for (name, host) in list {
                note!("  {verb:<7}{name} ({host})");
            }
        }
        if self.reorder {
            note!("  reorder the services it keeps (the first matching rule wins)");
        }
    }
}

/// Applying a destructive plan needs `--yes` or a "y" typed at the terminal.
fn confirm_plan(plan: &Plan, vault: &str, yes: bool) -> Result<(), CliError> {
    if yes || !plan.destructive() {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::msg(format!(
            "service set would change or remove services of vault {vault} (listed above) and there is no terminal to confirm on; pass --yes to apply"
        )));
    }
    let answer = ask_line("Apply these changes? [y/N] ")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(CliError::msg(format!(
            "not applied: the services of vault {vault} are unchanged"
        )))
    }
}

/// Runs a service command.
pub(super) async fn run(cmd: ServiceCommand, address: Option<&str>) -> Result<(), CliError> {
    let client = Client::authenticated(address)?;
    match cmd {
        ServiceCommand::Set {
            file,
            yes,
            vault,
            json,
        } => {
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
            let path = format!("/v1/vaults/{}/services", seg(&vault.vault));
            let current: Value = client.get(&path).await?;
            let current: Vec<ServiceSpec> = serde_json::from_value(current["services"].clone())
                .map_err(|e| CliError::msg(format!("unexpected response: {e}")))?;
            let plan = Plan::new(&current, &specs);
            plan.show(&vault.vault);
            confirm_plan(&plan, &vault.vault, yes)?;
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
            client_certificate,
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
            let mut spec = json!({ "host": host, "auth": auth_json(&auth, key, client_certificate.as_deref(), username_key, password_key, header, prefix, &templates)? });
            if auth != "mtls"
                && let Some(cert) = &client_certificate
            {
                spec["client_certificate"] = json!(cert);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(yaml: &str) -> Vec<ServiceSpec> {
        parse_service_file(yaml).unwrap()
    }

    const STORED: &str = "- name: a\n  host: a.example.test\n  methods: [GET]\n  auth: {type: bearer, token: A}\n- name: b\n  host: b.example.test\n  auth: {type: passthrough}\n";

    #[test]
    fn the_same_services_in_another_spelling_change_nothing() {
        // The name derived from the host, and lower-case methods, are what the server stores.
        let file = "- host: a.example.test\n  methods: [get]\n  auth: {type: bearer, token: A}\n- name: b\n  host: b.example.test\n  auth: {type: passthrough}\n";
        let mut current = specs(STORED);
        current[0].name = crate::policy::service::name_from_host("a.example.test");
        let plan = Plan::new(&current, &specs(file));
        assert_eq!(plan, Plan::default());
        assert!(!plan.destructive());
    }

    #[test]
    fn adding_only_is_not_destructive() {
        let file =
            format!("{STORED}- name: c\n  host: c.example.test\n  auth: {{type: passthrough}}\n");
        let plan = Plan::new(&specs(STORED), &specs(&file));
        assert_eq!(plan.add, vec![("c".into(), "c.example.test".into())]);
        assert!(!plan.destructive());
        assert!(!Plan::new(&[], &specs(STORED)).destructive());
    }

    #[test]
    fn changes_removals_and_reorders_are_destructive() {
        let changed = "- name: a\n  host: a.example.test\n  auth: {type: bearer, token: OTHER}\n- name: b\n  host: b.example.test\n  auth: {type: passthrough}\n";
        let plan = Plan::new(&specs(STORED), &specs(changed));
        assert_eq!(plan.change, vec![("a".into(), "a.example.test".into())]);
        assert!(plan.remove.is_empty() && plan.add.is_empty() && !plan.reorder);
        assert!(plan.destructive());

        let removed = "- name: b\n  host: b.example.test\n  auth: {type: passthrough}\n";
        let plan = Plan::new(&specs(STORED), &specs(removed));
        assert_eq!(plan.remove, vec![("a".into(), "a.example.test".into())]);
        assert!(plan.destructive());
        assert!(
            Plan::new(&specs(STORED), &[]).destructive(),
            "an empty file removes all"
        );

        let mut swapped = specs(STORED);
        swapped.reverse();
        let plan = Plan::new(&specs(STORED), &swapped);
        assert!(plan.reorder && plan.change.is_empty() && plan.destructive());
    }
}
