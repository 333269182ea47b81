//! The startup steps that wait on a child: readiness probes of the server's admin API and of the
//! agent's Workload API, and the registration of the dev identity.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use sigil_core::{Selector, SpiffeId};
use sigil_proto::sigil::v1 as pb;
use sigil_proto::sigil::v1::entries_client::EntriesClient;
use sigil_proto::sigil::v1::health_client::HealthClient;
use sigil_proto::workload::X509svidRequest;
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::procs::Proc;
use crate::{connect, entry, status, x509};

/// Pause between readiness probes.
const POLL: Duration = Duration::from_millis(100);
/// Bound on one probe of the Workload API.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Polls the admin socket until the server reports serving.
pub async fn wait_for_server(
    server: &mut Proc,
    admin: &Path,
    deadline: Instant,
) -> Result<Channel> {
    loop {
        server.check_running()?;
        let last = match probe_server(admin).await {
            Ok(channel) => return Ok(channel),
            Err(e) => status::render(&e),
        };
        if Instant::now() >= deadline {
            bail!(
                "sigil-server did not become healthy in time ({last}); see {}",
                server.log.display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn probe_server(admin: &Path) -> Result<Channel> {
    let channel = connect::admin_channel(admin).await?;
    let health = HealthClient::new(channel.clone())
        .check(pb::HealthCheckRequest {})
        .await?
        .into_inner();
    if !health.serving {
        bail!("the server is not serving yet");
    }
    Ok(channel)
}

/// Registers `unix:uid:<uid>` as `id`, under the agent's node alias `parent`.
pub async fn register(channel: Channel, id: &SpiffeId, parent: &SpiffeId, uid: u32) -> Result<()> {
    let selector = Selector::new("unix", &format!("uid:{uid}"))?;
    let request = pb::BatchCreateEntryRequest {
        entries: vec![pb::Entry {
            spiffe_id: id.to_string(),
            parent_id: parent.to_string(),
            selectors: vec![entry::proto_selector(&selector)],
            ..pb::Entry::default()
        }],
    };
    let response = EntriesClient::new(channel)
        .batch_create_entry(request)
        .await?
        .into_inner();
    match response.results.first() {
        Some(r) if r.code == 0 => Ok(()),
        Some(r) => {
            Err(status::item_failure(r.code, &r.message).context(format!("registering {id}")))
        }
        None => bail!("the server returned no result for the registration"),
    }
}

/// Fetches from the Workload API, as a workload, until it serves `id`; returns its expiry.
pub async fn wait_for_svid(
    agent: &mut Proc,
    socket: &Path,
    id: &SpiffeId,
    deadline: Instant,
) -> Result<i64> {
    let want = id.to_string();
    loop {
        agent.check_running()?;
        let last = match tokio::time::timeout(PROBE_TIMEOUT, fetch_expiry(socket, &want)).await {
            Ok(Ok(Some(not_after))) => return Ok(not_after),
            Ok(Ok(None)) => format!("the Workload API does not serve {want} yet"),
            // PermissionDenied until the agent has attested, synced and signed: keep waiting.
            Ok(Err(e)) => status::render(&e),
            Err(_) => "the Workload API did not answer".to_owned(),
        };
        if Instant::now() >= deadline {
            bail!(
                "the agent did not serve {want} in time ({last}); see {}",
                agent.log.display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn fetch_expiry(socket: &Path, want: &str) -> Result<Option<i64>> {
    let channel = connect::workload_channel(socket).await?;
    let mut request = tonic::Request::new(X509svidRequest {});
    request.metadata_mut().insert(
        sigil_proto::WORKLOAD_HEADER,
        MetadataValue::from_static("true"),
    );
    let mut stream = SpiffeWorkloadApiClient::new(channel)
        .fetch_x509svid(request)
        .await?
        .into_inner();
    let Some(response) = stream.message().await? else {
        return Ok(None);
    };
    let Some(svid) = response.svids.iter().find(|s| s.spiffe_id == want) else {
        return Ok(None);
    };
    let certs = x509::split_certs(&svid.x509_svid)?;
    let leaf = certs
        .first()
        .ok_or_else(|| anyhow!("the SVID has no certificate"))?;
    Ok(Some(x509::validity(leaf)?.not_after))
}
