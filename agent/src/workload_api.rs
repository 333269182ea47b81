//! The SPIFFE Workload API on the agent's Unix socket. Every call is attested from the
//! socket's peer credentials; streams send the current state at once and again on every change.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sigil_core::SelectorSet;
use sigil_proto::workload as wl;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::attestation::{WorkloadAttestor, attest_peer};
use crate::cache::{Cache, Snapshot, WorkloadView};
use crate::peer::PeerConnectInfo;

/// Boxed server stream.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Workload attestation shared by the Workload API and SDS.
#[derive(Clone)]
pub struct Attestor {
    attestors: Arc<Vec<Box<dyn WorkloadAttestor>>>,
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attestor")
    }
}

impl Attestor {
    /// Wraps the configured attestors.
    pub fn new(attestors: Vec<Box<dyn WorkloadAttestor>>) -> Self {
        Self {
            attestors: Arc::new(attestors),
        }
    }

    /// The caller's selectors. Failures are logged, and the caller learns only that it has no
    /// identity.
    pub async fn attest<T>(&self, req: &Request<T>) -> Result<SelectorSet, Status> {
        let info = req
            .extensions()
            .get::<PeerConnectInfo>()
            .ok_or_else(|| Status::permission_denied("could not identify the caller"))?;
        let peer = *info
            .peer()
            .map_err(|_| Status::permission_denied("could not identify the caller"))?;
        let attestors = Arc::clone(&self.attestors);
        let r = tokio::task::spawn_blocking(move || attest_peer(&attestors, &peer))
            .await
            .map_err(|_| Status::internal("attestation failed"))?;
        r.map_err(|e| {
            tracing::info!(pid = peer.pid, uid = peer.uid, error = %e, "workload attestation failed");
            Status::permission_denied("no identity issued")
        })
    }
}

/// The Workload API service.
#[derive(Clone, Debug)]
pub struct WorkloadApi {
    cache: Arc<Cache>,
    attestor: Attestor,
}

impl WorkloadApi {
    /// Serves identities from `cache` to callers attested by `attestor`.
    pub fn new(cache: Arc<Cache>, attestor: Attestor) -> Self {
        Self { cache, attestor }
    }
}

/// Refuses requests without `workload.spiffe.io: true` (exact, case-sensitive value).
pub fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(sigil_proto::WORKLOAD_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request: workload.spiffe.io: true",
        )),
    }
}

fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

/// Builds the X509SVIDResponse for a view. Hints must be unique: later duplicates are dropped.
pub fn x509_response(view: &WorkloadView) -> wl::X509svidResponse {
    let bundle = view
        .bundle
        .as_ref()
        .map(|b| b.x509_der.clone())
        .unwrap_or_default();
    let mut hints = std::collections::HashSet::new();
    let svids = view
        .svids
        .iter()
        .filter(|s| s.hint.is_empty() || hints.insert(s.hint.as_str()))
        .map(|s| wl::X509svid {
            spiffe_id: s.spiffe_id.to_string(),
            x509_svid: s.chain_der.clone(),
            x509_svid_key: s.key_pkcs8.clone(),
            bundle: bundle.clone(),
            hint: s.hint.clone(),
        })
        .collect();
    let federated_bundles = view
        .federated
        .iter()
        .map(|b| (b.bundle.trust_domain.id_string(), b.x509_der.clone()))
        .collect();
    wl::X509svidResponse {
        svids,
        crl: vec![],
        federated_bundles,
    }
}

fn x509_bundles(view: &WorkloadView) -> wl::X509BundlesResponse {
    let mut bundles = HashMap::new();
    if let Some(b) = &view.bundle {
        bundles.insert(b.bundle.trust_domain.id_string(), b.x509_der.clone());
    }
    for b in &view.federated {
        bundles.insert(b.bundle.trust_domain.id_string(), b.x509_der.clone());
    }
    wl::X509BundlesResponse {
        crl: vec![],
        bundles,
    }
}

fn jwt_bundles(view: &WorkloadView) -> wl::JwtBundlesResponse {
    let mut bundles = HashMap::new();
    for b in view.bundle.iter().chain(view.federated.iter()) {
        if let Ok(doc) = b.bundle.to_jwks_json() {
            bundles.insert(b.bundle.trust_domain.id_string(), bytes::Bytes::from(doc));
        }
    }
    wl::JwtBundlesResponse { bundles }
}

/// Streams `render(view)` whenever the caller's view changes; ends with PermissionDenied when
/// the caller loses its last identity. `ready` says whether a view is worth sending yet.
fn watch_view<T: Send + 'static>(
    cache: &Cache,
    selectors: SelectorSet,
    ready: fn(&WorkloadView) -> bool,
    render: fn(&WorkloadView) -> T,
) -> Result<ResponseStream<T>, Status> {
    let mut rx = cache.subscribe();
    let first: Arc<Snapshot> = Arc::clone(&rx.borrow_and_update());
    if first.view(&selectors).is_empty() {
        return Err(no_identity());
    }
    let (tx, out) = mpsc::channel(2);
    tokio::spawn(async move {
        let mut last: Option<WorkloadView> = None;
        let mut snap = first;
        loop {
            let view = snap.view(&selectors);
            if view.is_empty() {
                let _ = tx.send(Err(no_identity())).await;
                return;
            }
            if ready(&view) && last.as_ref().is_none_or(|l| !l.same_as(&view)) {
                if tx.send(Ok(render(&view))).await.is_err() {
                    return;
                }
                last = Some(view);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
            snap = Arc::clone(&rx.borrow_and_update());
        }
    });
    Ok(Box::pin(ReceiverStream::new(out)))
}

#[tonic::async_trait]
impl wl::spiffe_workload_api_server::SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<wl::X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<wl::X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<wl::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<wl::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&req)?;
        let sels = self.attestor.attest(&req).await?;
        let s = watch_view(&self.cache, sels, |v| !v.svids.is_empty(), x509_response)?;
        Ok(Response::new(s))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<wl::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&req)?;
        let sels = self.attestor.attest(&req).await?;
        let s = watch_view(&self.cache, sels, |v| v.bundle.is_some(), x509_bundles)?;
        Ok(Response::new(s))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<wl::JwtsvidRequest>,
    ) -> Result<Response<wl::JwtsvidResponse>, Status> {
        check_header(&req)?;
        if req.get_ref().audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let sels = self.attestor.attest(&req).await?;
        if self.cache.current().view(&sels).is_empty() {
            return Err(no_identity());
        }
        Err(Status::unimplemented(
            "JWT-SVIDs are not yet supported by this agent",
        ))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<wl::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&req)?;
        let sels = self.attestor.attest(&req).await?;
        let s = watch_view(&self.cache, sels, |v| v.bundle.is_some(), jwt_bundles)?;
        Ok(Response::new(s))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<wl::ValidateJwtsvidRequest>,
    ) -> Result<Response<wl::ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        let r = req.get_ref();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        Err(Status::unimplemented(
            "JWT-SVID validation is not yet supported by this agent",
        ))
    }
}
