//! `sigil agent list|show|ban|evict`: attested agents through the server's `Agents` service.

use anyhow::{Result, bail};
use serde_json::json;
use sigil_proto::sigil::v1::agents_client::AgentsClient;
use sigil_proto::sigil::v1::{Agent, GetAgentRequest, ListAgentsRequest};
use tonic::transport::Channel;

use crate::args::{AgentAdminCommand, Globals, OutputFormat};
use crate::{connect, output};

/// Runs one agent-management subcommand against the admin socket.
pub async fn run(globals: &Globals, cmd: AgentAdminCommand) -> Result<()> {
    let out = globals.output;
    let mut client = AgentsClient::new(connect::admin(globals).await?);
    match cmd {
        AgentAdminCommand::List => {
            let agents = list_all(&mut client).await?;
            match out {
                OutputFormat::Human => output::emit(&output::agents_text(&agents)),
                OutputFormat::Json => output::emit_json(&output::agents_json(&agents)),
            }
        }
        AgentAdminCommand::Show { id } => {
            let request = GetAgentRequest { id: id.to_string() };
            let agent = client.get_agent(request).await?.into_inner();
            match out {
                OutputFormat::Human => output::emit(&output::agents_text(&[agent])),
                OutputFormat::Json => output::emit_json(&output::agent_json(&agent)),
            }
        }
        AgentAdminCommand::Ban { id } => {
            let request = GetAgentRequest { id: id.to_string() };
            let agent = client.ban_agent(request).await?.into_inner();
            match out {
                OutputFormat::Human => output::emit("Agent banned successfully\n"),
                OutputFormat::Json => output::emit_json(&output::agent_json(&agent)),
            }
        }
        AgentAdminCommand::Evict { id } => {
            let request = GetAgentRequest { id: id.to_string() };
            client.evict_agent(request).await?;
            match out {
                OutputFormat::Human => output::emit("Agent evicted successfully\n"),
                OutputFormat::Json => output::emit_json(&json!({ "id": id.to_string() })),
            }
        }
    }
}

async fn list_all(client: &mut AgentsClient<Channel>) -> Result<Vec<Agent>> {
    let mut agents = Vec::new();
    let mut request = ListAgentsRequest::default();
    loop {
        let page = client.list_agents(request.clone()).await?.into_inner();
        agents.extend(page.agents);
        if page.next_page_token.is_empty() {
            return Ok(agents);
        }
        // A server that hands back the token it was given would keep us looping forever.
        if page.next_page_token == request.page_token {
            bail!("server returned the same page token twice; stopping");
        }
        request.page_token = page.next_page_token;
    }
}
