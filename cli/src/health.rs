//! `sigil server healthcheck`: the server's `Health/Check`, for scripts and container probes.

use anyhow::{Result, bail};
use serde_json::json;
use sigil_proto::sigil::v1::HealthCheckRequest;
use sigil_proto::sigil::v1::health_client::HealthClient;

use crate::args::{Globals, OutputFormat, ServerCommand};
use crate::{connect, output};

/// Runs one `server` subcommand; an unhealthy server is an error, hence a non-zero exit.
pub async fn run(globals: &Globals, cmd: ServerCommand) -> Result<()> {
    let ServerCommand::Healthcheck { verbose } = cmd;
    let mut client = HealthClient::new(connect::admin(globals).await?);
    let health = client.check(HealthCheckRequest {}).await?.into_inner();
    if globals.output == OutputFormat::Json {
        output::emit_json(&json!({
            "serving": health.serving,
            "trust_domain": health.trust_domain,
            "revision": health.revision,
        }))?;
    }
    if !health.serving {
        bail!("server is unhealthy: it answered but is not serving");
    }
    if globals.output == OutputFormat::Human {
        let mut text = "Server is healthy.\n".to_owned();
        if verbose {
            text.push_str(&output::line("Trust domain", &health.trust_domain));
            text.push_str(&output::line("Revision", health.revision));
        }
        output::emit(&text)?;
    }
    Ok(())
}
