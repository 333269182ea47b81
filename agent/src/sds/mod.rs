//! Envoy's Secret Discovery Service (SDS v3) on the Workload API socket, so an Envoy sidecar
//! takes its certificates and trust bundles straight from the agent, with SPIRE's resource
//! names (`default`, `ROOTCA`, `ALL`, SPIFFE IDs, trust domain IDs; see [`resources`]).
//!
//! Callers are attested from the socket's peer credentials exactly like Workload API callers,
//! but the `workload.spiffe.io` header is not required: Envoy does not send it.
//!
//! Layout:
//! - [`resources`]: resource names to `Secret`s for one workload's view.
//! - [`xds`]: the ACK/NACK state machine of one `StreamSecrets` stream.
//! - [`delta`]: incremental SDS (`DeltaSecrets`).
//! - this module: the gRPC service tying them to the cache.

pub mod delta;
pub mod resources;
pub mod xds;

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use futures::StreamExt;
use sigil_core::SelectorSet;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cache::{Cache, Snapshot, WorkloadView};
use crate::config::SdsConfig;
use crate::workload_api::{Attestor, FIRST_SYNC_WAIT, PeerCheck, ResponseStream};
use resources::{Subscription, Validation};
use xds::{Reaction, XdsState};

/// `type_url` of the resources SDS serves.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// How long `FetchSecrets` waits for a workload's first SVID before answering without it.
const FETCH_WAIT: Duration = Duration::from_secs(5);

/// The SDS service.
#[derive(Clone, Debug)]
pub struct Sds {
    cache: Arc<Cache>,
    attestor: Attestor,
    cfg: Arc<SdsConfig>,
}

impl Sds {
    /// Serves `cache`'s identities to callers attested by `attestor`, under `cfg`'s names.
    pub fn new(cache: Arc<Cache>, attestor: Attestor, cfg: SdsConfig) -> Self {
        Self {
            cache,
            attestor,
            cfg: Arc::new(cfg),
        }
    }

    /// The caller's selectors, once it is known to hold some identity (after the agent's first
    /// sync, so a freshly started agent does not turn callers away).
    async fn attest<T>(&self, req: &Request<T>) -> Result<SelectorSet, Status> {
        Ok(self.attest_for_stream(req).await?.selectors)
    }

    /// As [`Self::attest`], keeping what a stream needs to re-check its caller before each push.
    async fn attest_for_stream<T>(&self, req: &Request<T>) -> Result<PeerCheck, Status> {
        let caller = self.attestor.attest_for_stream(req).await?;
        if !self.cache.current().synced() {
            self.cache.synced(FIRST_SYNC_WAIT).await;
        }
        view_of(&self.cache.current(), &caller.selectors)?;
        Ok(caller)
    }

    /// The tonic service, ready for `Server::add_service`.
    pub fn into_service(self) -> SecretDiscoveryServiceServer<Self> {
        SecretDiscoveryServiceServer::new(self)
    }
}

fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

/// Refuses a request for another resource type (an empty type is taken to mean Secrets).
fn check_type(type_url: &str) -> Result<(), Status> {
    if type_url.is_empty() || type_url == SECRET_TYPE_URL {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "unsupported type_url {type_url:?}: this endpoint serves {SECRET_TYPE_URL}"
        )))
    }
}

/// Packs the Secrets and names their content: the version is a digest of the encoded
/// resources, so it changes exactly when what the client would receive changes.
fn package(secrets: Vec<Secret>) -> (Vec<Any>, String) {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let resources: Vec<_> = secrets
        .iter()
        .map(|s| {
            let any = resources::pack(s);
            digest.update(&(any.value.len() as u64).to_be_bytes());
            digest.update(&any.value);
            any
        })
        .collect();
    (resources, short_hex(digest.finish()))
}

/// A version string from a digest: 64 bits are plenty to tell contents apart.
fn short_hex(d: ring::digest::Digest) -> String {
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn response(resources: Vec<Any>, version: String) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version,
        resources,
        type_url: SECRET_TYPE_URL.to_owned(),
        nonce: nonce(),
        ..Default::default()
    }
}

/// The caller's view, or PermissionDenied once it holds no identity at all.
fn view_of(snap: &Snapshot, selectors: &SelectorSet) -> Result<WorkloadView, Status> {
    let view = snap.view(selectors);
    if view.is_empty() {
        Err(no_identity())
    } else {
        Ok(view)
    }
}

/// Runs one `StreamSecrets` conversation until the client goes away or loses its identity, or
/// the agent shuts down.
async fn run_stream(
    cache: Arc<Cache>,
    cfg: Arc<SdsConfig>,
    caller: PeerCheck,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut state = XdsState::default();
    let mut snap = Arc::clone(&snapshots.borrow_and_update());
    let mut sent_any = false;
    // A client that half-closes its side still gets updates for its last subscription.
    let mut requests_open = true;
    loop {
        tokio::select! {
            r = requests.next(), if requests_open => match r {
                Some(Ok(req)) => {
                    tracing::debug!(
                        resources = ?req.resource_names,
                        version = %req.version_info,
                        nonce = %req.response_nonce,
                        "SDS request"
                    );
                    if let Err(e) = check_type(&req.type_url) {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    if state.on_request(&req) == Reaction::Ignore {
                        continue;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "SDS stream ended by the client");
                    return;
                }
                None => {
                    requests_open = false;
                    continue;
                }
            },
            r = snapshots.changed() => {
                if r.is_err() {
                    return;
                }
                snap = Arc::clone(&snapshots.borrow_and_update());
            }
            _ = tx.closed() => return,
            _ = cache.closed() => return,
        }
        let view = match view_of(&snap, &caller.selectors) {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let Some(sub) = state.subscription() else {
            continue; // nothing asked yet
        };
        if !resources::ready(&view, sub, &cfg) {
            continue;
        }
        let validation = Validation::for_node(state.node(), &cfg);
        let (resources, version) = package(resources::render(&view, sub, &cfg, validation));
        if !state.should_send(&version) {
            continue;
        }
        let resp = response(resources, version.clone());
        tracing::debug!(
            version = %version,
            nonce = %resp.nonce,
            count = resp.resources.len(),
            "sending SDS response"
        );
        if sent_any && let Err(e) = caller.still_same().await {
            let _ = tx.send(Err(e)).await;
            return;
        }
        sent_any = true;
        state.sent(version, resp.nonce.clone());
        if tx.send(Ok(resp)).await.is_err() {
            return;
        }
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let caller = self.attest_for_stream(&req).await?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(delta::run(
            Arc::clone(&self.cache),
            Arc::clone(&self.cfg),
            caller,
            self.cache.subscribe(),
            req.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stream_secrets(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let caller = self.attest_for_stream(&req).await?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(run_stream(
            Arc::clone(&self.cache),
            Arc::clone(&self.cfg),
            caller,
            self.cache.subscribe(),
            req.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        req: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let selectors = self.attest(&req).await?;
        let req = req.into_inner();
        check_type(&req.type_url)?;
        let sub = Subscription::new(&req.resource_names);
        let validation = Validation::for_node(req.node.as_ref(), &self.cfg);
        let mut snapshots = self.cache.subscribe();
        let deadline = tokio::time::Instant::now() + FETCH_WAIT;
        let view = loop {
            let view = view_of(&snapshots.borrow_and_update(), &selectors)?;
            if resources::ready(&view, &sub, &self.cfg) {
                break view;
            }
            // Still issuing the first SVID: wait a little, then answer with what there is.
            match tokio::time::timeout_at(deadline, snapshots.changed()).await {
                Ok(Ok(())) => continue,
                _ => break view,
            }
        };
        let (resources, version) = package(resources::render(&view, &sub, &self.cfg, validation));
        Ok(Response::new(response(resources, version)))
    }
}
