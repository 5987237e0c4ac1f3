//! `agent-vault master-key rotate`: asks the running server (owners only) to rotate the
//! instance key online; `master-key show`: the active version.

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::Client;
use super::output::{json as print_json, outln};
use super::{CliError, JsonFlag};

/// `agent-vault master-key ...`
#[derive(Debug, Subcommand)]
pub(super) enum MasterKeyCommand {
    /// Rotate the instance key on the running server: every credential's data key is wrapped
    /// again and the old instance key destroyed. Values are not re-encrypted; the proxy keeps
    /// serving.
    Rotate {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show the active instance-key version.
    Show {
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// Runs a master-key command against the server.
pub(super) async fn run(cmd: MasterKeyCommand, address: Option<&str>) -> Result<(), CliError> {
    let client = Client::authenticated(address)?;
    match cmd {
        MasterKeyCommand::Rotate { json: flag } => {
            let out: Value = client.post("/v1/master-key/rotate", &json!({})).await?;
            if flag.json {
                return print_json(&out);
            }
            outln!(
                "rotated the instance key: version {} -> {} ({} data keys rewrapped, {} values resealed, {} MACs recomputed); version {} is destroyed",
                out["from_version"],
                out["key_version"],
                out["rewrapped"],
                out["resealed"],
                out["remaced"],
                out["from_version"]
            )?;
        }
        MasterKeyCommand::Show { json: flag } => {
            let out: Value = client.get("/v1/master-key").await?;
            if flag.json {
                return print_json(&out);
            }
            outln!("instance key version {}", out["key_version"])?;
        }
    }
    Ok(())
}
