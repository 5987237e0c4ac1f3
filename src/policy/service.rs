//! Service definitions: what people write (YAML or JSON), how it is validated, and the compiled
//! form the matcher uses. Validation is the same for direct edits and for agent proposals.

use std::collections::{BTreeMap, BTreeSet};

use http::{HeaderName, Method};
use serde::{Deserialize, Serialize};

use super::host::{Host, canonicalize_host};
use crate::credtype::{CredentialType, Usage, can_serve};
use crate::domain::CredentialKey;

/// Why a service definition was refused. Messages name the service and the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("service {service:?}: {message}")]
pub struct ServiceError {
    /// The service's name (or host when it has no name yet).
    pub service: String,
    /// What is wrong.
    pub message: String,
}

/// The authentication a service attaches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AuthSpec {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// Credential holding the token.
        token: CredentialKey,
    },
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// Credential holding the user name; when absent, the password credential's
        /// `username` metadata entry is the user name (a `password` credential carries both).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<CredentialKey>,
        /// Credential holding the password (empty password when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<CredentialKey>,
    },
    /// `<header>: <prefix><key>`.
    ApiKey {
        /// Credential holding the key.
        key: CredentialKey,
        /// Header to set (default `Authorization`).
        #[serde(default = "default_api_key_header")]
        header: String,
        /// Text before the key, e.g. `Token `.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        prefix: String,
    },
    /// Header templates with `{{ KEY }}` references.
    Custom {
        /// Header name to template.
        headers: BTreeMap<String, String>,
    },
    /// No credentials: the host is allowed and intercepted, nothing is attached.
    Passthrough,
    /// A TLS client certificate presented to the upstream, and no header. To attach a header
    /// as well, use another auth with [`ServiceSpec::client_certificate`] beside it.
    Mtls {
        /// Credential (type `certificate`) holding the chain and its private key.
        certificate: CredentialKey,
    },
}

fn default_api_key_header() -> String {
    "Authorization".into()
}

/// One exact place a placeholder may stand, as written under `in:`. Exactly one of the place
/// fields is set; the whole value at that place must be the placeholder (after `prefix`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceSpec {
    /// A request header, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A query parameter, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A field of a JSON request body, by JSON Pointer (RFC 6901), e.g. `/auth/token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<String>,
    /// A field of an `application/x-www-form-urlencoded` body, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
    /// A path segment, counting from 1 after the leading `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<u32>,
    /// A field of the agent's JSON WebSocket text frames, by JSON Pointer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<String>,
    /// Literal text that must stand right before the placeholder (`Bearer `, `bot`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// An entry of a substitution's `in:` list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PlaceEntry {
    /// An exact place.
    Exact(PlaceSpec),
    /// The old, loose form (`header`, `body`, `path`, ...), which replaced the placeholder
    /// anywhere in that part of the request. Parsed only to refuse it with directions, and so
    /// stored definitions that still carry it load with the substitution disabled.
    Legacy(String),
}

impl PlaceEntry {
    /// How an approver reads the place: `header X-Api-Key`, `JSON field /auth/token`, ...
    pub fn describe(&self) -> String {
        let spec = match self {
            PlaceEntry::Legacy(old) => {
                return format!("anywhere in the {old} (old form, refused)");
            }
            PlaceEntry::Exact(spec) => spec,
        };
        let mut out = Vec::new();
        if let Some(h) = &spec.header {
            out.push(format!("header {h}"));
        }
        if let Some(q) = &spec.query {
            out.push(format!("query parameter {q}"));
        }
        if let Some(j) = &spec.json {
            out.push(format!("JSON field {j}"));
        }
        if let Some(f) = &spec.form {
            out.push(format!("form field {f}"));
        }
        if let Some(n) = spec.path {
            out.push(format!("path segment {n}"));
        }
        if let Some(w) = &spec.websocket {
            out.push(format!("WebSocket JSON field {w}"));
        }
        let mut text = out.join(" and ");
        if !spec.prefix.is_empty() {
            text.push_str(&format!(" after the text {:?}", spec.prefix));
        }
        text
    }
}

impl<'de> Deserialize<'de> for PlaceEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PlaceEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an exact place such as {header: X-Api-Key}, {query: api_key}, {json: /auth/token}, {form: password}, {path: 2} or {websocket: /auth/token}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PlaceEntry, E> {
                Ok(PlaceEntry::Legacy(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<PlaceEntry, A::Error> {
                PlaceSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(PlaceEntry::Exact)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A placeholder the agent writes where the real value must go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubstitutionSpec {
    /// The text the agent sends, e.g. `__STRIPE_KEY__`.
    pub placeholder: String,
    /// The credential that replaces it.
    pub key: CredentialKey,
    /// The exact places where it may be replaced (required).
    #[serde(default, rename = "in")]
    pub places: Vec<PlaceEntry>,
}

/// Where, exactly, a compiled substitution may happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlaceKind {
    /// A request header.
    Header(HeaderName),
    /// A query parameter, by its decoded name.
    Query(String),
    /// A JSON body field, by its decoded JSON Pointer tokens.
    Json(Vec<String>),
    /// A form body field, by its decoded name.
    Form(String),
    /// The path segment at this index (1 = the first after the leading `/`).
    PathSegment(usize),
    /// A field of the agent's JSON WebSocket text frames, by decoded JSON Pointer tokens.
    Websocket(Vec<String>),
}

/// A compiled place: where, and the literal text before the placeholder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// Where.
    pub kind: PlaceKind,
    /// Text that must stand before the placeholder; it stays in the forwarded value.
    pub prefix: String,
}

/// A validated substitution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledSubstitution {
    /// The text the agent sends.
    pub placeholder: String,
    /// The credential that replaces it.
    pub key: CredentialKey,
    /// The exact places it may stand; empty when disabled.
    pub places: Vec<Place>,
    /// Loaded from a stored definition in the old, loose form: it replaces nothing and its
    /// placeholder is refused everywhere until an admin rewrites it with exact places.
    pub disabled: bool,
}

/// How to write an exact place, for error messages about the old form.
pub const EXACT_PLACE_HELP: &str = "name each exact place, e.g. `in: [{header: X-Api-Key}, {query: api_key}, {json: /auth/token}, {form: password}, {path: 2}, {websocket: /auth/token}]`, with `prefix: \"Bearer \"` beside a place when literal text must stand before the placeholder";

/// Headers that upstreams echo, log or store by design: a placeholder there would be written
/// back where the agent can read it.
const ECHOED_HEADERS: &[&str] = &[
    "cookie",
    "cookie2",
    "set-cookie",
    "user-agent",
    "referer",
    "origin",
    "forwarded",
    "via",
    "host",
    "x-real-ip",
    "true-client-ip",
];

fn is_echoed_header(name: &HeaderName) -> bool {
    ECHOED_HEADERS.contains(&name.as_str()) || name.as_str().starts_with("x-forwarded-")
}

/// Parses an RFC 6901 JSON Pointer into its unescaped tokens.
pub fn parse_json_pointer(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.len() > 256 {
        return Err(format!(
            "JSON Pointer {pointer:?} is longer than 256 characters"
        ));
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!(
            "JSON Pointer {pointer:?} must start with '/', e.g. /auth/token"
        ));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "JSON Pointer {pointer:?}: '~' must be followed by 0 or 1"
                            ));
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .collect()
}

fn check_field_name(kind: &str, name: &str) -> Result<String, String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!("{kind} name must be 1-128 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{kind} name may not contain control characters"));
    }
    Ok(name.to_owned())
}

impl PlaceSpec {
    fn compile(&self, placeholder: &str) -> Result<Place, String> {
        let set = [
            self.header.is_some(),
            self.query.is_some(),
            self.json.is_some(),
            self.form.is_some(),
            self.path.is_some(),
            self.websocket.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count();
        if set != 1 {
            return Err(format!(
                "each entry of `in` names exactly one place (header, query, json, form, path or websocket); {EXACT_PLACE_HELP}"
            ));
        }
        let kind = if let Some(name) = &self.header {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{name:?} is not a valid header name"))?;
            if is_echoed_header(&header) {
                return Err(format!(
                    "header {name:?} cannot hold a placeholder: upstreams echo, log or store it by design, where the agent could read the value back; use the header the API reads its key from, such as X-Api-Key or Authorization"
                ));
            }
            if FORBIDDEN_HEADERS.contains(&header.as_str()) {
                return Err(format!("header {name:?} cannot hold a placeholder"));
            }
            PlaceKind::Header(header)
        } else if let Some(name) = &self.query {
            PlaceKind::Query(check_field_name("query parameter", name)?)
        } else if let Some(pointer) = &self.json {
            PlaceKind::Json(parse_json_pointer(pointer)?)
        } else if let Some(name) = &self.form {
            PlaceKind::Form(check_field_name("form field", name)?)
        } else if let Some(index) = self.path {
            if !(1..=64).contains(&index) {
                return Err(format!(
                    "path segment {index} is out of range: segments count from 1 (the first after the leading /) to 64"
                ));
            }
            PlaceKind::PathSegment(index as usize)
        } else if let Some(pointer) = &self.websocket {
            PlaceKind::Websocket(parse_json_pointer(pointer)?)
        } else {
            return Err(EXACT_PLACE_HELP.into());
        };
        if self.prefix.len() > 64 {
            return Err("prefix longer than 64 characters".into());
        }
        if self
            .prefix
            .bytes()
            .any(|b| b == 0x7f || (b < 0x20 && b != b'\t'))
        {
            return Err("prefix may not contain control characters".into());
        }
        if self.prefix.contains(placeholder) {
            return Err("prefix may not contain the placeholder".into());
        }
        Ok(Place {
            kind,
            prefix: self.prefix.clone(),
        })
    }
}

impl SubstitutionSpec {
    /// Compiles the places. In the old, loose form it is refused, or with `lenient` (a stored
    /// definition) compiled disabled.
    fn compile(&self, lenient: bool) -> Result<CompiledSubstitution, String> {
        let p = &self.placeholder;
        let legacy = self.places.is_empty()
            || self
                .places
                .iter()
                .any(|e| matches!(e, PlaceEntry::Legacy(_)));
        if legacy {
            if lenient {
                return Ok(CompiledSubstitution {
                    placeholder: p.clone(),
                    key: self.key.clone(),
                    places: Vec::new(),
                    disabled: true,
                });
            }
            let written: Vec<&str> = self
                .places
                .iter()
                .filter_map(|e| match e {
                    PlaceEntry::Legacy(s) => Some(s.as_str()),
                    PlaceEntry::Exact(_) => None,
                })
                .collect();
            let what = if written.is_empty() {
                "has no `in`, which used to mean anywhere in the path and query".to_owned()
            } else {
                format!(
                    "uses the old form `in: [{}]`, which replaced it anywhere in those parts of the request",
                    written.join(", ")
                )
            };
            return Err(format!("placeholder {p:?} {what}; {EXACT_PLACE_HELP}"));
        }
        let mut places: Vec<Place> = Vec::with_capacity(self.places.len());
        for entry in &self.places {
            let PlaceEntry::Exact(spec) = entry else {
                continue;
            };
            let place = spec
                .compile(p)
                .map_err(|m| format!("placeholder {p:?}: {m}"))?;
            if places.iter().any(|q| q.kind == place.kind) {
                return Err(format!("placeholder {p:?}: a place is declared twice"));
            }
            places.push(place);
        }
        if places.len() > 16 {
            return Err(format!("placeholder {p:?}: more than 16 places"));
        }
        Ok(CompiledSubstitution {
            placeholder: p.clone(),
            key: self.key.clone(),
            places,
            disabled: false,
        })
    }
}

fn is_true(v: &bool) -> bool {
    *v
}

fn yes() -> bool {
    true
}

/// A service as people write it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique within the vault; derived from the host when omitted.
    #[serde(default)]
    pub name: String,
    /// `api.stripe.com`, `*.github.com`, `host:8443`, `slack.com/api/*`.
    pub host: String,
    /// Allowed methods; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// What to attach.
    pub auth: AuthSpec,
    /// A `certificate` credential presented as the TLS client identity to the upstream, beside
    /// whatever `auth` attaches (`auth: {type: mtls}` is the same without a header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<CredentialKey>,
    /// Placeholders to replace with credential values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub substitutions: Vec<SubstitutionSpec>,
    /// Disabled services bind nothing.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The file format of `vault service set -f`: a list, or `services:` holding one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ServiceFile {
    Wrapped { services: Vec<ServiceSpec> },
    List(Vec<ServiceSpec>),
}

/// Parses a YAML (or JSON) service file.
pub fn parse_service_file(text: &str) -> Result<Vec<ServiceSpec>, String> {
    // Parse strictly first for a precise message, then accept either shape.
    if let Ok(file) = serde_norway::from_str::<ServiceFile>(text) {
        return Ok(match file {
            ServiceFile::Wrapped { services } => services,
            ServiceFile::List(list) => list,
        });
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        services: Vec<ServiceSpec>,
    }
    match serde_norway::from_str::<Strict>(text) {
        Ok(s) => Ok(s.services),
        Err(wrapped_err) => match serde_norway::from_str::<Vec<ServiceSpec>>(text) {
            Ok(list) => Ok(list),
            Err(list_err) => {
                // Report the error of the shape the file looks like.
                let looks_wrapped = text
                    .lines()
                    .any(|l| l.trim_start().starts_with("services:"));
                Err(if looks_wrapped {
                    wrapped_err.to_string()
                } else {
                    list_err.to_string()
                })
            }
        },
    }
}

/// Renders services as the YAML the file format accepts.
pub fn render_service_file(services: &[ServiceSpec]) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        services: &'a [ServiceSpec],
    }
    serde_norway::to_string(&Out { services }).unwrap_or_default()
}

/// Domains whose subdomains are handed to anyone who asks (tunnel-sharing services and
/// shared-tenant hosting platforms): a wildcard directly under one of them sends the credential
/// to every stranger's tunnel or app. This list sits beside the public suffix check because the
/// Public Suffix List's private section does not cover them reliably: a domain is listed only
/// when its owner asks (several tunnel services never did), `psl` is a snapshot compiled into
/// the binary, and some platforms are listed only below the name that actually hands out
/// subdomains (`s3.amazonaws.com` and kin are suffixes, `amazonaws.com` is not), while the check
/// compares the exact suffix. Our own curated list of shared-tenant domains, not a copy of the
/// PSL: add to it, never remove.
pub const SHARED_TENANT_DOMAINS: &[&str] = &[
    // tunnels
    "ngrok.io",
    "ngrok.app",
    "ngrok.dev",
    "ngrok-free.app",
    "ngrok-free.dev",
    "loca.lt",
    "localtunnel.me",
    "trycloudflare.com",
    "serveo.net",
    "serveousercontent.com",
    "localhost.run",
    "lhr.life",
    "lhr.rocks",
    "pagekite.me",
    "telebit.io",
    "tunnelmole.net",
    "devtunnels.ms",
    "loophole.site",
    "pinggy.link",
    "pinggy.online",
    // shared hosting and app platforms
    "pages.dev",
    "workers.dev",
    "vercel.app",
    "now.sh",
    "netlify.app",
    "netlify.com",
    "herokuapp.com",
    "github.io",
    "gitlab.io",
    "glitch.me",
    "repl.co",
    "replit.dev",
    "replit.app",
    "onrender.com",
    "fly.dev",
    "web.app",
    "firebaseapp.com",
    "appspot.com",
    "azurewebsites.net",
    "azurestaticapps.net",
    "cloudfront.net",
    "amazonaws.com",
    "blogspot.com",
    "wixsite.com",
    "webflow.io",
    "surge.sh",
    "deno.dev",
    "railway.app",
    "up.railway.app",
    "codesandbox.io",
    "csb.app",
    "stackblitz.io",
    "ondigitalocean.app",
    "run.app",
    "a.run.app",
    "cloudfunctions.net",
    "azureedge.net",
    "trafficmanager.net",
    "cloudapp.net",
    "pythonanywhere.com",
    "000webhostapp.com",
    "loclx.io",
    "zrok.io",
    "localto.net",
    "github.dev",
    "app.github.dev",
    "githubpreview.dev",
    "gitpod.io",
    "cloudapp.azure.com",
    "azurefd.net",
    "herokudns.com",
    "b-cdn.net",
    "tailscale.net",
    "ts.net",
    "ngrok.pizza",
    "r2.dev",
    "on.aws",
    "web.core.windows.net",
    "blob.core.windows.net",
    "myshopify.com",
    "supabase.co",
    "cloudflareaccess.com",
];

/// Whether `domain` is a shared-tenant domain or lies under one: regions and shards
/// (`eu.ngrok.io`, `compute-1.amazonaws.com`) hand out names to strangers just the same.
fn is_shared_tenant(domain: &str) -> bool {
    SHARED_TENANT_DOMAINS.iter().any(|entry| {
        domain == *entry
            || domain
                .strip_suffix(entry)
                .is_some_and(|rest| rest.ends_with('.'))
    })
}

/// How a service's host pattern matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    /// Canonical host, or the suffix after `*.` for wildcards.
    pub host: String,
    /// `*.suffix`: exactly one extra label.
    pub wildcard: bool,
    /// A specific port; none means 443 only, never any port.
    pub port: Option<u16>,
    /// A path glob (`*` matches any run of characters), or any path.
    pub path: Option<String>,
}

impl HostPattern {
    /// Parses `host[:port][/path]`.
    pub fn parse(input: &str) -> Result<Self, String> {
        let (authority, path) = match input.find('/') {
            Some(i) => (&input[..i], Some(&input[i..])),
            None => (input, None),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("invalid port {p:?} in host {input:?}"))?;
                (h, Some(port))
            }
            None => (authority, None),
        };
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (host, false),
        };
        if host.contains('*') {
            return Err(format!(
                "host {input:?}: a wildcard may only be a leading \"*.\""
            ));
        }
        let canonical = match canonicalize_host(host) {
            Ok(Host::Domain(d)) => d,
            Ok(Host::Ip(_)) => {
                return Err(format!(
                    "host {input:?}: IP addresses cannot be services; credentials only go to names whose TLS certificate can be verified"
                ));
            }
            Err(e) => return Err(format!("host {input:?}: {e}")),
        };
        if !canonical.contains('.') {
            return Err(format!(
                "host {input:?}: must be a fully qualified name like api.example.com"
            ));
        }
        if wildcard && canonical.split('.').count() < 2 {
            return Err(format!(
                "host {input:?}: a wildcard needs at least two labels after \"*.\""
            ));
        }
        if wildcard && is_shared_tenant(&canonical) {
            return Err(format!(
                "host {input:?}: {canonical} is a shared hosting or tunnel domain where anyone can get a subdomain; name the one host you mean instead of a wildcard"
            ));
        }
        if wildcard && psl::suffix(canonical.as_bytes()).is_some_and(|s| s == canonical.as_bytes())
        {
            // Anyone can register a name under a public suffix (co.uk, github.io, s3.amazonaws.com):
            // a credential bound to all of them goes to whoever registers one.
            return Err(format!(
                "host {input:?}: {canonical} is a public suffix; name the hosts you mean instead of a wildcard"
            ));
        }
        if canonical == "localhost"
            || canonical.ends_with(".localhost")
            || canonical == "metadata.google.internal"
        {
            return Err(format!("host {input:?}: internal names cannot be services"));
        }
        if let Some(path) = path {
            validate_path_glob(path).map_err(|m| format!("host {input:?}: {m}"))?;
        }
        Ok(Self {
            host: canonical,
            wildcard,
            port,
            path: path.map(str::to_owned),
        })
    }

    /// Whether the host part matches a canonical domain and port (ignoring the path).
    pub fn matches_host(&self, host: &str, port: u16) -> bool {
        // No port in the pattern means the https default: another port on the same name may be
        // another program (a debug endpoint that echoes), which was not approved.
        if self.port.unwrap_or(443) != port {
            return false;
        }
        if self.wildcard {
            host.split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == self.host)
        } else {
            host == self.host
        }
    }

    /// Whether the path glob (if any) matches the raw request path (without query).
    pub fn matches_path(&self, path: &str) -> bool {
        match &self.path {
            None => true,
            Some(glob) => glob_match(glob.as_bytes(), path.as_bytes()),
        }
    }

    /// Length of the literal prefix of the path glob, for "most specific wins".
    pub fn path_specificity(&self) -> usize {
        self.path
            .as_ref()
            .map(|p| p.find('*').unwrap_or(p.len()) + 1)
            .unwrap_or(0)
    }
}

fn validate_path_glob(path: &str) -> Result<(), String> {
    if path.len() > 256 {
        return Err("path pattern longer than 256 characters".into());
    }
    if path.contains("**") {
        return Err("use a single * (it already matches across /)".into());
    }
    let ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~*:@!$&'()+,;=".contains(&b));
    if !ok {
        return Err("path pattern may only use unreserved URL characters, '/' and '*'".into());
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("path pattern must not contain . or .. segments".into());
    }
    Ok(())
}

/// `*` matches any run of bytes (including `/`); everything else is literal.
fn glob_match(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if g < glob.len() && glob[g] == b'*' {
            star = Some(g);
            mark = t;
            g += 1;
        } else if g < glob.len() && glob[g] == text[t] {
            g += 1;
            t += 1;
        } else if let Some(s) = star {
            g = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&b| b == b'*')
}

/// One piece of a header template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplatePart {
    /// Literal text.
    Text(String),
    /// A credential's value.
    Key(CredentialKey),
}

/// A header the service sets, built from credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Injection {
    /// `header: <parts...>`.
    Template {
        /// Header name.
        header: HeaderName,
        /// Literal text and credential references.
        parts: Vec<TemplatePart>,
    },
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        /// User name credential; `None` takes the password credential's `username` metadata.
        username: Option<CredentialKey>,
        /// Password credential.
        password: Option<CredentialKey>,
    },
}

impl Injection {
    /// The header this injection sets.
    pub fn header(&self) -> HeaderName {
        match self {
            Injection::Template { header, .. } => header.clone(),
            Injection::Basic { .. } => http::header::AUTHORIZATION,
        }
    }
}

/// A validated service, ready for matching.
#[derive(Clone, Debug)]
pub struct CompiledService {
    /// Its name.
    pub name: String,
    /// Host, port and path rule.
    pub pattern: HostPattern,
    /// Allowed methods (none = any).
    pub methods: Option<Vec<Method>>,
    /// Headers to set.
    pub injections: Vec<Injection>,
    /// The `certificate` credential presented as the TLS client identity to the upstream.
    pub client_identity: Option<CredentialKey>,
    /// Placeholders to replace.
    pub substitutions: Vec<CompiledSubstitution>,
    /// Whether an enabled substitution has a JSON or form place, so request bodies of those
    /// kinds are read whole (known at compile time rather than searched for on every request).
    pub substitutes_in_body: bool,
    /// Whether it binds anything.
    pub enabled: bool,
    /// Its stored MAC failed: requests it would match fail closed.
    pub integrity_failed: bool,
}

impl CompiledService {
    /// Every credential key this service references.
    pub fn referenced_keys(&self) -> BTreeSet<CredentialKey> {
        let mut keys = BTreeSet::new();
        for inj in &self.injections {
            match inj {
                Injection::Template { parts, .. } => {
                    for p in parts {
                        if let TemplatePart::Key(k) = p {
                            keys.insert(k.clone());
                        }
                    }
                }
                Injection::Basic { username, password } => {
                    keys.extend(username.iter().cloned());
                    keys.extend(password.iter().cloned());
                }
            }
        }
        for s in self.substitutions.iter().filter(|s| !s.disabled) {
            keys.insert(s.key.clone());
        }
        keys.extend(self.client_identity.iter().cloned());
        keys
    }

    /// Every credential this service references with what it does with it; a key used two
    /// ways appears twice. [`check_credential_types`] holds each against the credential's type.
    pub fn credential_usages(&self) -> Vec<(&CredentialKey, Usage)> {
        let mut out = Vec::new();
        for inj in &self.injections {
            match inj {
                Injection::Template { parts, .. } => {
                    out.extend(parts.iter().filter_map(|p| match p {
                        TemplatePart::Key(k) => Some((k, Usage::Text)),
                        TemplatePart::Text(_) => None,
                    }));
                }
                Injection::Basic { username, password } => {
                    out.extend(username.iter().map(|k| (k, Usage::BasicAuth)));
                    out.extend(password.iter().map(|k| (k, Usage::BasicAuth)));
                }
            }
        }
        out.extend(
            self.substitutions
                .iter()
                .filter(|s| !s.disabled)
                .map(|s| (&s.key, Usage::Text)),
        );
        out.extend(
            self.client_identity
                .iter()
                .map(|k| (k, Usage::ClientIdentity)),
        );
        out
    }

    /// Whether `method` is allowed: a method the service lists, or, for a service that allows
    /// any method, one of the standard ones.
    pub fn allows_method(&self, method: &Method) -> bool {
        match &self.methods {
            None => is_standard_method(method),
            Some(m) => m.contains(method),
        }
    }

    /// Whether the service names `method` in its `methods` list.
    pub fn lists_method(&self, method: &Method) -> bool {
        self.methods.as_ref().is_some_and(|m| m.contains(method))
    }
}

/// Whether a method is one a service allowing "any method" means: GET HEAD POST PUT PATCH
/// DELETE OPTIONS, spelled exactly so (method names are case-sensitive, RFC 9110 §9.1, so `get`
/// is another method). Anything else (`TRACK`, `DEBUG`, WebDAV verbs) reaches an upstream with
/// credentials only where a service lists it, because servers that echo the request for
/// unknown methods would hand the credential back.
pub fn is_standard_method(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ]
    .contains(method)
}

/// Headers a service may never set: they frame the message, route it, or belong to the proxy.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "expect",
    "cookie2",
];

fn check_header_name(service: &str, name: &str) -> Result<HeaderName, ServiceError> {
    let err = |message: String| ServiceError {
        service: service.into(),
        message,
    };
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| err(format!("{name:?} is not a valid header name")))?;
    if FORBIDDEN_HEADERS.contains(&header.as_str()) || header.as_str().starts_with(':') {
        return Err(err(format!("header {name:?} cannot be set by a service")));
    }
    Ok(header)
}

fn check_literal(service: &str, text: &str) -> Result<(), ServiceError> {
    if text
        .bytes()
        .any(|b| b == b'\r' || b == b'\n' || b == 0 || (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(ServiceError {
            service: service.into(),
            message: "header text may not contain control characters".into(),
        });
    }
    Ok(())
}

/// Parses `Token {{ KEY }} and {{OTHER}}` into parts.
pub fn parse_template(service: &str, template: &str) -> Result<Vec<TemplatePart>, ServiceError> {
    let err = |message: String| ServiceError {
        service: service.into(),
        message,
    };
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            check_literal(service, &rest[..start])?;
            parts.push(TemplatePart::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| err(format!("unclosed {{{{ in template {template:?}")))?;
        let key = after[..end].trim();
        let key = CredentialKey::parse(key).map_err(|e| err(e.to_string()))?;
        parts.push(TemplatePart::Key(key));
        rest = &after[end + 2..];
    }
    if rest.contains("}}") {
        return Err(err(format!("unmatched }}}} in template {template:?}")));
    }
    if !rest.is_empty() {
        check_literal(service, rest)?;
        parts.push(TemplatePart::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// Derives a service name from its host pattern: `api.stripe.com/v1/*` → `api-stripe-com`.
pub fn name_from_host(host: &str) -> String {
    let base = host
        .split('/')
        .next()
        .unwrap_or(host)
        .trim_start_matches("*.");
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    name.trim_matches('-').chars().take(64).collect()
}

fn is_service_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && s.len() <= 64
        && b.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
}

impl ServiceSpec {
    /// Fills defaults that depend on other fields (the name).
    pub fn normalized(mut self) -> Self {
        if self.name.trim().is_empty() {
            self.name = name_from_host(&self.host);
        }
        for m in &mut self.methods {
            *m = m.to_ascii_uppercase();
        }
        self
    }

    /// Validates and compiles. Does not check that referenced credentials exist (the caller
    /// knows the vault's keys).
    pub fn compile(&self) -> Result<CompiledService, ServiceError> {
        self.compile_with(false)
    }

    /// Compiles a definition read back from the store. A substitution still in the old, loose
    /// form loads disabled (see [`CompiledSubstitution::disabled`]) instead of failing the whole
    /// service, whose host would then fall through to the vault's unmatched-host policy.
    pub fn compile_stored(&self) -> Result<CompiledService, ServiceError> {
        self.compile_with(true)
    }

    fn compile_with(&self, lenient: bool) -> Result<CompiledService, ServiceError> {
        let svc = if self.name.is_empty() {
            self.host.as_str()
        } else {
            self.name.as_str()
        };
        let err = |message: String| ServiceError {
            service: svc.into(),
            message,
        };
        if !is_service_name(&self.name) {
            return Err(err(
                "name must be 1-64 characters from a-z, 0-9, '-', '_' and '.', starting with a letter or digit".into(),
            ));
        }
        let pattern = HostPattern::parse(&self.host).map_err(err)?;
        let methods = if self.methods.is_empty() {
            None
        } else {
            let mut out = Vec::new();
            for m in &self.methods {
                let method = Method::from_bytes(m.as_bytes())
                    .ok()
                    .filter(|_| m.bytes().all(|b| b.is_ascii_uppercase()))
                    .ok_or_else(|| err(format!("{m:?} is not an HTTP method")))?;
                if method == Method::CONNECT || method == Method::TRACE {
                    return Err(err(format!("method {m} cannot be allowed")));
                }
                out.push(method);
            }
            Some(out)
        };
        let injections = match &self.auth {
            AuthSpec::Bearer { token } => vec![Injection::Template {
                header: http::header::AUTHORIZATION,
                parts: vec![
                    TemplatePart::Text("Bearer ".into()),
                    TemplatePart::Key(token.clone()),
                ],
            }],
            AuthSpec::Basic { username, password } => {
                if username.is_none() && password.is_none() {
                    return Err(err(
                        "basic auth needs `password` (a password credential whose `username` metadata is the user name), `username`, or both".into(),
                    ));
                }
                vec![Injection::Basic {
                    username: username.clone(),
                    password: password.clone(),
                }]
            }
            AuthSpec::ApiKey {
                key,
                header,
                prefix,
            } => {
                let header = check_header_name(svc, header)?;
                check_literal(svc, prefix)?;
                let mut parts = Vec::new();
                if !prefix.is_empty() {
                    parts.push(TemplatePart::Text(prefix.clone()));
                }
                parts.push(TemplatePart::Key(key.clone()));
                vec![Injection::Template { header, parts }]
            }
            AuthSpec::Custom { headers } => {
                if headers.is_empty() {
                    return Err(err("custom auth needs at least one header template".into()));
                }
                let mut out = Vec::new();
                for (name, template) in headers {
                    let header = check_header_name(svc, name)?;
                    let parts = parse_template(svc, template)?;
                    if !parts.iter().any(|p| matches!(p, TemplatePart::Key(_))) {
                        return Err(err(format!(
                            "header template for {name:?} references no credential; use {{{{ KEY }}}}"
                        )));
                    }
                    out.push(Injection::Template { header, parts });
                }
                out
            }
            AuthSpec::Passthrough | AuthSpec::Mtls { .. } => Vec::new(),
        };
        let client_identity = match (&self.auth, &self.client_certificate) {
            (AuthSpec::Mtls { .. }, Some(_)) => {
                return Err(err(
                    "auth type mtls already names the client certificate; drop `client_certificate`, or keep it beside another auth type (bearer, basic, api-key, custom, passthrough) to attach a header as well".into(),
                ));
            }
            (AuthSpec::Mtls { certificate }, None) => Some(certificate.clone()),
            (_, other) => other.clone(),
        };
        let mut seen = BTreeSet::new();
        let mut substitutions = Vec::with_capacity(self.substitutions.len());
        for s in &self.substitutions {
            let p = &s.placeholder;
            if p.len() < 6 || p.len() > 128 {
                return Err(err(format!("placeholder {p:?} must be 6-128 characters")));
            }
            if !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.~-".contains(&b))
            {
                return Err(err(format!(
                    "placeholder {p:?} may only use A-Z, a-z, 0-9, '_', '.', '~' and '-'"
                )));
            }
            if !p.bytes().any(|b| b.is_ascii_alphanumeric())
                || !(p.contains("__") || p.bytes().any(|b| b"-.~".contains(&b)))
            {
                return Err(err(format!(
                    "placeholder {p:?} must contain \"__\" or one of - . ~ so it cannot collide with ordinary words"
                )));
            }
            if !seen.insert(p.clone()) {
                return Err(err(format!("placeholder {p:?} is declared twice")));
            }
            substitutions.push(s.compile(lenient).map_err(err)?);
        }
        for (a, b) in self
            .substitutions
            .iter()
            .flat_map(|a| self.substitutions.iter().map(move |b| (a, b)))
        {
            if a.placeholder != b.placeholder && b.placeholder.contains(&a.placeholder) {
                return Err(err(format!(
                    "placeholder {:?} contains placeholder {:?}",
                    b.placeholder, a.placeholder
                )));
            }
        }
        if let Some(d) = &self.description
            && d.len() > 1000
        {
            return Err(err("description longer than 1000 characters".into()));
        }
        let substitutes_in_body = substitutions
            .iter()
            .filter(|s| !s.disabled)
            .flat_map(|s| s.places.iter())
            .any(|p| matches!(p.kind, PlaceKind::Json(_) | PlaceKind::Form(_)));
        Ok(CompiledService {
            name: self.name.clone(),
            pattern,
            methods,
            injections,
            client_identity,
            substitutes_in_body,
            substitutions,
            enabled: self.enabled,
            integrity_failed: false,
        })
    }
}

/// Validates a whole set: each service, unique names, and every referenced key present in
/// `known_keys`. Returns the compiled services in order.
pub fn validate_services(
    specs: &[ServiceSpec],
    known_keys: &BTreeSet<CredentialKey>,
) -> Result<Vec<CompiledService>, ServiceError> {
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let compiled = spec.compile()?;
        if !names.insert(compiled.name.clone()) {
            return Err(ServiceError {
                service: compiled.name,
                message: "name is used by more than one service".into(),
            });
        }
        for key in compiled.referenced_keys() {
            if !known_keys.contains(&key) {
                return Err(ServiceError {
                    service: compiled.name,
                    message: format!(
                        "references credential {key} which does not exist in this vault; set it first"
                    ),
                });
            }
        }
        out.push(compiled);
    }
    Ok(out)
}

/// A service uses a credential in a way its type cannot serve (a certificate as a bearer
/// token, an API key as a TLS client identity).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "service {service:?} uses credential {key} {}, but {key} is of type {ty}; that needs a credential of type {}",
    describe_usage(*usage),
    serving_types(*usage)
)]
pub struct IncompatibleCredential {
    /// The service.
    pub service: String,
    /// The credential.
    pub key: CredentialKey,
    /// Its stored type.
    pub ty: CredentialType,
    /// What the service does with it.
    pub usage: Usage,
}

fn describe_usage(usage: Usage) -> &'static str {
    match usage {
        Usage::Text => "as text (a header, query parameter, body field or placeholder)",
        Usage::BasicAuth => "for basic auth",
        Usage::ClientIdentity => "as its TLS client certificate (mtls)",
    }
}

fn serving_types(usage: Usage) -> String {
    CredentialType::ALL
        .into_iter()
        .filter(|t| can_serve(*t, usage))
        .map(CredentialType::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks every credential the services use against its stored type. Only credentials in
/// `types` are checked: a key the vault does not hold yet has no type to disagree with.
pub fn check_credential_types(
    services: &[CompiledService],
    types: &BTreeMap<CredentialKey, CredentialType>,
) -> Result<(), IncompatibleCredential> {
    for service in services {
        for (key, usage) in service.credential_usages() {
            if let Some(&ty) = types.get(key)
                && !can_serve(ty, usage)
            {
                return Err(IncompatibleCredential {
                    service: service.name.clone(),
                    key: key.clone(),
                    ty,
                    usage,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> CredentialKey {
        CredentialKey::parse(k).unwrap()
    }

    #[test]
    fn parses_the_documented_yaml() {
        let yaml = r#"
services:
  - name: stripe
    host: api.stripe.com
    auth: { type: bearer, token: STRIPE_KEY }
  - host: "*.github.com"
    methods: [get, POST]
    auth:
      type: api-key
      key: GH_TOKEN
      header: X-Api-Key
      prefix: "token "
  - name: custom
    host: api.example.test:8443/v1/*
    auth:
      type: custom
      headers:
        X-Auth: "Key {{ A }}:{{B}}"
    substitutions:
      - placeholder: __TELEGRAM__
        key: A
        in:
          - {path: 1, prefix: bot}
          - header: X-Api-Key
          - {query: api_key}
          - json: /auth/to~1ken
          - form: password
          - websocket: /token
  - name: open
    host: docs.example.test
    auth: { type: passthrough }
    enabled: false
"#;
        let specs: Vec<ServiceSpec> = parse_service_file(yaml)
            .unwrap()
            .into_iter()
            .map(ServiceSpec::normalized)
            .collect();
        assert_eq!(specs.len(), 4);
        assert_eq!(specs[1].name, "github-com");
        assert_eq!(specs[1].methods, vec!["GET", "POST"]);
        let known: BTreeSet<_> = ["STRIPE_KEY", "GH_TOKEN", "A", "B"]
            .into_iter()
            .map(key)
            .collect();
        let compiled = validate_services(&specs, &known).unwrap();
        assert_eq!(compiled[2].pattern.port, Some(8443));
        assert_eq!(compiled[2].referenced_keys().len(), 2);
        assert!(!compiled[3].enabled);
        // Round trip through the rendered file.
        let again = parse_service_file(&render_service_file(&specs)).unwrap();
        assert_eq!(again, specs);
        // A bare list works too.
        assert_eq!(
            parse_service_file("- host: a.example.com\n  auth: {type: passthrough}\n")
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let unknown_type = parse_service_file(
            "services:\n  - host: a.example.com\n    auth: {type: oauth, token: A}\n",
        )
        .unwrap_err();
        assert!(unknown_type.contains("oauth"), "{unknown_type}");
        assert!(parse_service_file("services: [").is_err());
        let typo = parse_service_file(
            "services:\n  - host: a.example.com\n    auht: {type: passthrough}\n",
        )
        .unwrap_err();
        assert!(typo.contains("auht") || typo.contains("auth"), "{typo}");
    }

    fn compile_one(yaml: &str) -> Result<CompiledService, ServiceError> {
        parse_service_file(yaml)
            .map_err(|message| ServiceError {
                service: "parse".into(),
                message,
            })?
            .remove(0)
            .normalized()
            .compile()
    }

    #[test]
    fn mtls_alone_or_beside_another_auth_names_the_client_identity() {
        let alone =
            compile_one("- host: a.example.com\n  auth: {type: mtls, certificate: CLIENT_CERT}\n")
                .unwrap();
        assert_eq!(alone.client_identity, Some(key("CLIENT_CERT")));
        assert!(alone.injections.is_empty());
        assert_eq!(
            alone.credential_usages(),
            [(&key("CLIENT_CERT"), Usage::ClientIdentity)]
        );
        let mixed = compile_one(
            "- host: a.example.com\n  auth: {type: bearer, token: TOKEN}\n  client_certificate: CLIENT_CERT\n",
        )
        .unwrap();
        assert_eq!(mixed.client_identity, Some(key("CLIENT_CERT")));
        assert_eq!(mixed.injections.len(), 1);
        assert_eq!(
            mixed.referenced_keys(),
            [key("CLIENT_CERT"), key("TOKEN")].into_iter().collect()
        );
        // A service without one keeps loading, and serializing, exactly as before.
        let spec = parse_service_file("- host: a.example.com\n  auth: {type: bearer, token: T}\n")
            .unwrap()
            .remove(0);
        assert!(spec.client_certificate.is_none());
        assert!(
            !serde_json::to_string(&spec)
                .unwrap()
                .contains("client_certificate")
        );
        let round = parse_service_file(&render_service_file(&[parse_service_file(
            "- name: m\n  host: a.example.com\n  auth: {type: passthrough}\n  client_certificate: C\n",
        )
        .unwrap()
        .remove(0)]))
        .unwrap();
        assert_eq!(round[0].client_certificate, Some(key("C")));
    }

    #[test]
    fn bad_mtls_definitions_are_refused_clearly() {
        let both = compile_one(
            "- host: a.example.com\n  auth: {type: mtls, certificate: A}\n  client_certificate: B\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            both.contains("already names the client certificate"),
            "{both}"
        );
        for (yaml, want) in [
            (
                "- host: a.example.com\n  auth: {type: mtls}\n",
                "certificate",
            ),
            (
                "- host: a.example.com\n  auth: {type: mtls, certificate: lower}\n",
                "lower",
            ),
            (
                "- host: a.example.com\n  auth: {type: mtls, certificate: A, header: X}\n",
                "header",
            ),
            (
                "- host: a.example.com\n  auth: {type: passthrough}\n  client_certificate: [A]\n",
                "client_certificate",
            ),
        ] {
            let err = compile_one(yaml).unwrap_err().to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }

    #[test]
    fn basic_auth_may_take_its_user_from_the_password_credential() {
        let svc =
            compile_one("- host: a.example.com\n  auth: {type: basic, password: DB_PASSWORD}\n")
                .unwrap();
        assert_eq!(
            svc.injections,
            [Injection::Basic {
                username: None,
                password: Some(key("DB_PASSWORD")),
            }]
        );
        assert_eq!(
            svc.credential_usages(),
            [(&key("DB_PASSWORD"), Usage::BasicAuth)]
        );
        let neither = compile_one("- host: a.example.com\n  auth: {type: basic}\n")
            .unwrap_err()
            .to_string();
        assert!(neither.contains("basic auth needs `password`"), "{neither}");
    }

    #[test]
    fn credentials_of_a_type_that_cannot_serve_their_use_are_named() {
        use crate::credtype::CredentialType as T;
        let yaml = "- name: api\n  host: a.example.com\n  auth: {type: bearer, token: TOKEN}\n  client_certificate: CLIENT_CERT\n  substitutions:\n    - {placeholder: __SUB_KEY__, key: SUB, in: [{query: k}]}\n";
        let svc = compile_one(yaml).unwrap();
        let types = |list: &[(&str, T)]| -> BTreeMap<CredentialKey, T> {
            list.iter().map(|(k, t)| (key(k), *t)).collect()
        };
        let fine = types(&[
            ("TOKEN", T::Token),
            ("CLIENT_CERT", T::Certificate),
            ("SUB", T::ApiKey),
        ]);
        assert_eq!(
            check_credential_types(std::slice::from_ref(&svc), &fine),
            Ok(())
        );
        // Keys the vault does not hold are not checked.
        assert_eq!(
            check_credential_types(std::slice::from_ref(&svc), &types(&[])),
            Ok(())
        );
        for (bad, culprit, ty, usage) in [
            (
                types(&[("TOKEN", T::Certificate)]),
                "TOKEN",
                T::Certificate,
                "as text",
            ),
            (
                types(&[("CLIENT_CERT", T::ApiKey)]),
                "CLIENT_CERT",
                T::ApiKey,
                "TLS client certificate",
            ),
            (types(&[("SUB", T::SshKey)]), "SUB", T::SshKey, "as text"),
        ] {
            let err = check_credential_types(std::slice::from_ref(&svc), &bad).unwrap_err();
            assert_eq!((err.key.as_str(), err.ty), (culprit, ty));
            let text = err.to_string();
            for part in ["\"api\"", culprit, ty.as_str(), usage] {
                assert!(text.contains(part), "{part} missing from: {text}");
            }
        }
        let basic =
            compile_one("- name: db\n  host: a.example.com\n  auth: {type: basic, password: P}\n")
                .unwrap();
        let err = check_credential_types(&[basic], &types(&[("P", T::Certificate)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("basic auth") && err.contains("password"),
            "{err}"
        );
    }

    #[test]
    fn missing_key_is_named() {
        let spec = ServiceSpec {
            name: "s".into(),
            host: "api.example.com".into(),
            methods: vec![],
            auth: AuthSpec::Bearer { token: key("NOPE") },
            client_certificate: None,
            substitutions: vec![],
            enabled: true,
            description: None,
        };
        let err = validate_services(&[spec], &BTreeSet::new()).unwrap_err();
        assert!(err.to_string().contains("NOPE"), "{err}");
    }

    #[test]
    fn host_patterns() {
        let p = HostPattern::parse("*.GitHub.com").unwrap();
        assert!(p.matches_host("api.github.com", 443));
        assert!(!p.matches_host("github.com", 443));
        assert!(!p.matches_host("a.b.github.com", 443));
        assert!(!p.matches_host("evilgithub.com", 443));
        let p = HostPattern::parse("api.example.com:8443/v1/*").unwrap();
        assert!(p.matches_host("api.example.com", 8443));
        assert!(!p.matches_host("api.example.com", 443));
        assert!(p.matches_path("/v1/charges"));
        assert!(!p.matches_path("/v2/charges"));
        assert!(!p.matches_path("/v1"));
        // No port is not "any port": it is 443, so it never beats or shadows a port rule.
        let bare = HostPattern::parse("api.example.com").unwrap();
        assert!(bare.matches_host("api.example.com", 443));
        assert!(!bare.matches_host("api.example.com", 8443));
        for bad in [
            "127.0.0.1",
            "localhost",
            "*.com",
            "*.co.uk",
            "*.github.io",
            "*.s3.amazonaws.com",
            "a.*.com",
            "api.example.com:0",
            "api.example.com/../x",
            "api.example.com/a b",
            "a.example.com/**",
            "[::1]",
            "x",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcards_under_shared_tenant_domains_are_refused() {
        for bad in [
            "*.loca.lt",
            "*.LOCA.LT",
            "*.loca.lt.",
            "*.ngrok-free.app",
            "*.ngrok.io",
            "*.trycloudflare.com",
            "*.serveo.net",
            "*.localhost.run",
            "*.lhr.life",
            "*.pages.dev",
            "*.workers.dev",
            "*.vercel.app",
            "*.herokuapp.com",
            "*.amazonaws.com",
            "*.cloudfront.net",
            "*.azurewebsites.net",
            "*.loca.lt:8443",
            "*.loca.lt/api/*",
            // Under a listed domain: regions, shards and tenants' own names alike.
            "*.my-app.herokuapp.com",
        ] {
            let e = HostPattern::parse(bad).unwrap_err();
            assert!(e.contains("shared hosting or tunnel domain"), "{bad}: {e}");
        }
        // One named host there is fine, and so is a wildcard under one tenant's own name.
        for ok in [
            "my-app.loca.lt",
            "abc.ngrok-free.app",
            "*.example.com",
            "*.notngrok.io",
        ] {
            assert!(HostPattern::parse(ok).is_ok(), "{ok}");
        }
        // Every entry is canonical, so the exact comparison can match it.
        for d in SHARED_TENANT_DOMAINS {
            assert_eq!(
                canonicalize_host(d),
                Ok(Host::Domain((*d).to_owned())),
                "{d}"
            );
        }
    }

    #[test]
    fn wildcards_below_shared_tenant_domains_are_refused() {
        // The security review's list: each is a region, shard or tenant below a platform that
        // hands out names to anyone.
        for bad in [
            "*.compute-1.amazonaws.com",
            "*.us-west-2.compute.amazonaws.com",
            "*.eu.ngrok.io",
            "*.us-east-1.elb.amazonaws.com",
            "*.eastus.cloudapp.azure.com",
            "*.execute-api.us-east-1.amazonaws.com",
            "*.scm.azurewebsites.net",
            "*.s3.amazonaws.com",
            "*.web.core.windows.net",
            "*.z13.web.core.windows.net",
            "*.blob.core.windows.net",
            "*.ngrok.pizza",
            "*.loclx.io",
            "*.serveo.net",
            "*.onrender.com",
            "*.up.railway.app",
            "*.firebaseapp.com",
            "*.glitch.me",
            "*.netlify.app",
            "*.fly.dev",
            "*.herokudns.com",
            "*.repl.co",
            "*.b-cdn.net",
            "*.r2.dev",
            "*.workers.dev",
            "*.lambda-url.us-east-1.on.aws",
            "*.azurefd.net",
            "*.tunnelmole.net",
            "*.a.pinggy.link",
            "*.a.free.pinggy.link",
            "*.localto.net",
            "*.zrok.io",
            "*.share.zrok.io",
            "*.ts.net",
            "*.tailscale.net",
            "*.githubpreview.dev",
            "*.app.github.dev",
            "*.gitpod.io",
            "*.ws-eu01.gitpod.io",
            "*.myshopify.com",
            "*.supabase.co",
            "*.cloudflareaccess.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn any_method_means_the_standard_methods_only() {
        let any = ServiceSpec {
            name: "s".into(),
            host: "api.example.com".into(),
            methods: vec![],
            auth: AuthSpec::Passthrough,
            client_certificate: None,
            substitutions: vec![],
            enabled: true,
            description: None,
        }
        .compile()
        .unwrap();
        for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            assert!(
                any.allows_method(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
        for m in [
            "TRACK", "DEBUG", "trace", "TRACE", "CONNECT", "get", "PROPFIND",
        ] {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(!any.allows_method(&method), "{m}");
            assert!(!any.lists_method(&method), "{m}");
        }
        let dav = ServiceSpec {
            methods: vec!["propfind".into()],
            ..ServiceSpec {
                name: "s".into(),
                host: "api.example.com".into(),
                methods: vec![],
                auth: AuthSpec::Passthrough,
                client_certificate: None,
                substitutions: vec![],
                enabled: true,
                description: None,
            }
        }
        .normalized()
        .compile()
        .unwrap();
        let propfind = Method::from_bytes(b"PROPFIND").unwrap();
        assert!(dav.allows_method(&propfind) && dav.lists_method(&propfind));
        assert!(!dav.allows_method(&Method::from_bytes(b"propfind").unwrap()));
        assert!(!dav.allows_method(&Method::GET));
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"/a/*", b"/a/b/c"));
        assert!(glob_match(b"/a/*/c", b"/a/b/c"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"/a", b"/a/"));
        assert!(glob_match(b"/a*b*c", b"/axxbyyc"));
        assert!(!glob_match(b"/a*b*c", b"/axxbyy"));
    }

    #[test]
    fn templates() {
        let parts = parse_template("s", "Key {{ A }}-{{B}}").unwrap();
        assert_eq!(
            parts,
            vec![
                TemplatePart::Text("Key ".into()),
                TemplatePart::Key(key("A")),
                TemplatePart::Text("-".into()),
                TemplatePart::Key(key("B")),
            ]
        );
        assert!(parse_template("s", "{{ a }}").is_err());
        assert!(parse_template("s", "{{ A ").is_err());
        assert!(parse_template("s", "x\r\n{{A}}").is_err());
    }

    #[test]
    fn forbidden_headers_and_placeholders() {
        let mk = |auth: AuthSpec, subs: Vec<SubstitutionSpec>| ServiceSpec {
            name: "s".into(),
            host: "api.example.com".into(),
            methods: vec![],
            auth,
            client_certificate: None,
            substitutions: subs,
            enabled: true,
            description: None,
        };
        let host_header = mk(
            AuthSpec::ApiKey {
                key: key("A"),
                header: "Host".into(),
                prefix: String::new(),
            },
            vec![],
        );
        assert!(host_header.compile().is_err());
        let weak = mk(
            AuthSpec::Passthrough,
            vec![SubstitutionSpec {
                placeholder: "secret".into(),
                key: key("A"),
                places: vec![PlaceEntry::Exact(PlaceSpec {
                    query: Some("k".into()),
                    ..PlaceSpec::default()
                })],
            }],
        );
        assert!(weak.compile().is_err());
        let ok = mk(
            AuthSpec::Passthrough,
            vec![SubstitutionSpec {
                placeholder: "__A__".into(),
                key: key("A"),
                places: vec![PlaceEntry::Exact(PlaceSpec {
                    query: Some("k".into()),
                    ..PlaceSpec::default()
                })],
            }],
        );
        assert!(ok.compile().is_err(), "too short");
        let ok = mk(
            AuthSpec::Passthrough,
            vec![SubstitutionSpec {
                placeholder: "__KEY_A__".into(),
                key: key("A"),
                places: vec![PlaceEntry::Exact(PlaceSpec {
                    query: Some("k".into()),
                    ..PlaceSpec::default()
                })],
            }],
        );
        assert!(ok.compile().is_ok());
        let trace = ServiceSpec {
            methods: vec!["TRACE".into()],
            ..mk(AuthSpec::Passthrough, vec![])
        };
        assert!(trace.compile().is_err());
    }

    fn one_substitution(places: &str) -> Result<CompiledService, ServiceError> {
        let yaml = format!(
            "- host: api.example.com\n  auth: {{type: passthrough}}\n  substitutions:\n    - placeholder: __KEY_A__\n      key: A\n{places}"
        );
        parse_service_file(&yaml)
            .map_err(|message| ServiceError {
                service: "parse".into(),
                message,
            })?
            .remove(0)
            .normalized()
            .compile()
    }

    /// The README's service file is what people copy: it must parse and compile as written.
    #[test]
    fn the_readme_service_file_compiles() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("### Service files")
            .nth(1)
            .and_then(|s| s.split("```yaml").nth(1))
            .and_then(|s| s.split("```").next())
            .unwrap();
        let specs = parse_service_file(section).unwrap();
        assert!(specs.len() >= 6);
        for spec in specs {
            spec.normalized().compile().unwrap();
        }
    }

    #[test]
    fn only_json_and_form_places_make_bodies_read_whole() {
        for (places, whole) in [
            ("      in: [{json: /token}]\n", true),
            ("      in: [{form: token}]\n", true),
            (
                "      in: [{header: X-Token}, {query: k}, {path: 1}]\n",
                false,
            ),
            ("      in: [{websocket: /t}]\n", false),
        ] {
            let svc = one_substitution(places).unwrap();
            assert_eq!(svc.substitutes_in_body, whole, "{places}");
        }
    }

    #[test]
    fn substitutions_name_exact_places() {
        let svc = one_substitution(
            "      in:\n        - {header: Authorization, prefix: \"Bearer \"}\n        - {query: api_key}\n        - {json: /auth/0/to~0k~1en}\n        - {form: password}\n        - {path: 2}\n        - {websocket: /t}\n",
        )
        .unwrap();
        let sub = &svc.substitutions[0];
        assert!(!sub.disabled);
        let kinds: Vec<PlaceKind> = sub.places.iter().map(|p| p.kind.clone()).collect();
        assert_eq!(
            kinds,
            [
                PlaceKind::Header(http::header::AUTHORIZATION),
                PlaceKind::Query("api_key".into()),
                PlaceKind::Json(vec!["auth".into(), "0".into(), "to~k/en".into()]),
                PlaceKind::Form("password".into()),
                PlaceKind::PathSegment(2),
                PlaceKind::Websocket(vec!["t".into()]),
            ]
        );
        assert_eq!(sub.places[0].prefix, "Bearer ");
        assert!(svc.referenced_keys().contains(&key("A")));
    }

    #[test]
    fn old_substitution_forms_are_refused_with_directions() {
        for places in [
            "      in: [header, body]\n",
            "      in: [path, query]\n",
            "      in: [websocket]\n",
            "",
        ] {
            let err = one_substitution(places).unwrap_err().to_string();
            assert!(
                err.contains("{header: X-Api-Key}") && err.contains("{json: /auth/token}"),
                "{places:?}: {err}"
            );
            // A stored definition in the old form loads with the substitution off.
            let yaml = format!(
                "- host: api.example.com\n  auth: {{type: bearer, token: B}}\n  substitutions:\n    - placeholder: __KEY_A__\n      key: A\n{places}"
            );
            let spec = parse_service_file(&yaml).unwrap().remove(0).normalized();
            let stored = spec.compile_stored().unwrap();
            assert!(stored.substitutions[0].disabled);
            assert!(stored.substitutions[0].places.is_empty());
            assert_eq!(stored.referenced_keys(), [key("B")].into_iter().collect());
            assert_eq!(
                stored.injections.len(),
                1,
                "the rest of the service still binds"
            );
        }
    }

    #[test]
    fn echoed_headers_cannot_hold_placeholders() {
        for name in [
            "User-Agent",
            "Cookie",
            "Referer",
            "Origin",
            "X-Forwarded-For",
            "X-Forwarded-Host",
            "Forwarded",
            "Via",
            "Host",
            "Set-Cookie",
            "Content-Length",
        ] {
            let err = one_substitution(&format!("      in: [{{header: {name}}}]\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("cannot hold a placeholder"), "{name}: {err}");
        }
    }

    #[test]
    fn bad_places_are_refused() {
        for places in [
            "      in: [{header: X-A, query: a}]\n",
            "      in: [{prefix: x}]\n",
            "      in: [{path: 0}]\n",
            "      in: [{path: 65}]\n",
            "      in: [{json: auth/token}]\n",
            "      in: [{json: /a~2}]\n",
            "      in: [{query: a}, {query: a}]\n",
            "      in: [{body: a}]\n",
            "      in: [{query: \"\"}]\n",
            "      in: [{query: a, prefix: \"a\\nb\"}]\n",
            "      in: [{query: a, prefix: \"x__KEY_A__\"}]\n",
        ] {
            assert!(one_substitution(places).is_err(), "{places}");
        }
    }

    proptest::proptest! {
        /// Arbitrary text never panics the parser or the compiler, and whatever compiles binds
        /// a dotted, non-IP, canonical host and a path glob without dot segments.
        #[test]
        fn service_files_never_panic(text in "\\PC{0,200}") {
            if let Ok(specs) = parse_service_file(&text) {
                for spec in specs {
                    let _ = spec.normalized().compile();
                }
            }
        }

        #[test]
        fn compiled_hosts_are_canonical(
            host in "[*.a-zA-Z0-9%@:/\\[\\]-]{1,40}",
            methods in proptest::collection::vec("[A-Za-z]{1,8}", 0..3),
        ) {
            let yaml = format!(
                "- host: {}\n  methods: {}\n  auth: {{type: bearer, token: KEY}}\n",
                serde_json::to_string(&host).unwrap(),
                serde_json::to_string(&methods).unwrap(),
            );
            if let Ok(specs) = parse_service_file(&yaml) {
                for spec in specs {
                    if let Ok(c) = spec.normalized().compile() {
                        let h = &c.pattern.host;
                        proptest::prop_assert!(h.contains('.'));
                        proptest::prop_assert!(h.parse::<std::net::IpAddr>().is_err());
                        proptest::prop_assert_eq!(
                            canonicalize_host(h),
                            Ok(Host::Domain(h.clone()))
                        );
                        if let Some(p) = &c.pattern.path {
                            proptest::prop_assert!(p.split('/').all(|s| s != "." && s != ".."));
                        }
                    }
                }
            }
        }
    }
}
