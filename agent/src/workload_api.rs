//! The SPIFFE Workload API on the agent's Unix socket. Every call is attested from the
//! socket's peer credentials; streams send the current state at once and again on every change.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sigil_core::SelectorSet;
use sigil_core::rate_limit::KeyedLimiter;
use sigil_proto::workload as wl;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::attestation::{AttestError, WorkloadAttestor, attest_peer, attest_peer_cached};
use crate::cache::{Cache, Snapshot, WorkloadView};
use crate::peer::{PeerConnectInfo, PeerInfo};

/// Boxed server stream.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Workload attestation shared by the Workload API and SDS.
#[derive(Clone)]
pub struct Attestor {
    attestors: Arc<Vec<Box<dyn WorkloadAttestor>>>,
    limiter: Option<Arc<KeyedLimiter<u32>>>,
}

/// Most calling users whose rate-limit buckets are kept at once.
const RATE_LIMIT_USERS: usize = 4096;

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
            limiter: None,
        }
    }

    /// Allows each calling user (uid) `per_second` calls a second on average, in bursts of as
    /// many; 0 means no limit. Calls over it get Unavailable before any attestation work.
    ///
    /// Keyed by uid rather than process: a caller that forks to get fresh buckets gains nothing,
    /// and one user's processes share what that user may cost the agent.
    pub fn with_rate_limit(mut self, per_second: u32) -> Self {
        self.limiter =
            (per_second > 0).then(|| Arc::new(KeyedLimiter::new(per_second, RATE_LIMIT_USERS)));
        self
    }

    /// The caller's selectors. Failures are logged, and the caller learns only that it has no
    /// identity.
    pub async fn attest<T>(&self, req: &Request<T>) -> Result<SelectorSet, Status> {
        Ok(self.attest_for_stream(req).await?.selectors)
    }

    /// The caller's selectors, with what a long-lived stream needs to re-check its caller before
    /// each later push (see [`PeerCheck`]).
    pub async fn attest_for_stream<T>(&self, req: &Request<T>) -> Result<PeerCheck, Status> {
        let info = req
            .extensions()
            .get::<PeerConnectInfo>()
            .ok_or_else(|| Status::permission_denied("could not identify the caller"))?;
        let peer = *info
            .peer()
            .map_err(|_| Status::permission_denied("could not identify the caller"))?;
        if let Some(limiter) = &self.limiter
            && !limiter.allow(peer.uid, std::time::Instant::now())
        {
            tracing::debug!(
                pid = peer.pid,
                uid = peer.uid,
                "Workload API rate limit hit"
            );
            return Err(Status::unavailable(
                "rate limit exceeded for this caller; retry later",
            ));
        }
        let selectors = self.run(peer).await.map_err(|e| {
            tracing::info!(pid = peer.pid, uid = peer.uid, error = %e, "workload attestation failed");
            Status::permission_denied("no identity issued")
        })?;
        Ok(PeerCheck {
            attestors: Arc::clone(&self.attestors),
            peer,
            selectors,
        })
    }

    async fn run(&self, peer: PeerInfo) -> Result<SelectorSet, String> {
        run_attestors(Arc::clone(&self.attestors), peer).await
    }
}

/// Attests on this thread when the attestors' caches suffice (a few small `/proc` reads, the
/// common case), and on the blocking pool only when one needs slow work.
async fn run_attestors(
    attestors: Arc<Vec<Box<dyn WorkloadAttestor>>>,
    peer: PeerInfo,
) -> Result<SelectorSet, String> {
    match attest_peer_cached(&attestors, &peer) {
        Err(AttestError::WouldBlock) => {}
        done => return done.map_err(|e| e.to_string()),
    }
    tokio::task::spawn_blocking(move || attest_peer(&attestors, &peer))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// A stream's caller as attested when the stream opened.
///
/// A stream outlives the moment its caller was attested: the process may exit (and its pid go
/// to someone else) or exec another binary while the connection stays open, e.g. inherited by a
/// child. Before each push after the first, the stream attests the caller again and ends with
/// Unavailable unless it is the same process with the same selectors, so a reconnect gets what
/// the new program is entitled to. (SPIRE checks only that the process is alive.)
#[derive(Clone)]
pub struct PeerCheck {
    attestors: Arc<Vec<Box<dyn WorkloadAttestor>>>,
    peer: PeerInfo,
    /// The selectors attested when the stream opened.
    pub selectors: SelectorSet,
}

impl std::fmt::Debug for PeerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCheck")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl PeerCheck {
    /// Ok when the caller is still the process that opened the stream, with the same
    /// selectors; otherwise the status that ends the stream.
    pub async fn still_same(&self) -> Result<(), Status> {
        let now = run_attestors(Arc::clone(&self.attestors), self.peer).await;
        match now {
            Ok(s) if s == self.selectors => Ok(()),
            other => {
                tracing::info!(
                    pid = self.peer.pid,
                    uid = self.peer.uid,
                    reason = %other.err().unwrap_or_else(|| "selectors changed".into()),
                    "ending stream: its caller exited or changed"
                );
                Err(Status::unavailable(
                    "the calling process exited or changed since the stream opened; reconnect",
                ))
            }
        }
    }
}

/// The Workload API service.
#[derive(Clone, Debug)]
pub struct WorkloadApi {
    cache: Arc<Cache>,
    attestor: Attestor,
    jwt: Option<Arc<crate::jwt::JwtSvids>>,
}

impl WorkloadApi {
    /// Serves identities from `cache` to callers attested by `attestor`.
    pub fn new(cache: Arc<Cache>, attestor: Attestor) -> Self {
        Self {
            cache,
            attestor,
            jwt: None,
        }
    }

    /// Also serves JWT-SVIDs, minted (and cached) by `jwt`; without it FetchJWTSVID answers
    /// Unimplemented.
    pub fn with_jwt(mut self, jwt: Arc<crate::jwt::JwtSvids>) -> Self {
        self.jwt = Some(jwt);
        self
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

/// How long a call made before the agent's first sync waits for it before the caller is told
/// it has no identity.
pub const FIRST_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the first X.509-SVID message waits for matching entries whose SVIDs are still being
/// signed (right after an entry was created, or while a starting agent issues its SVIDs): a
/// one-shot client reads only that message, and the default SVID must be the oldest entry's.
/// After this, what is ready is sent (an entry the server refuses must not block the caller).
pub const FIRST_COMPLETE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Streams `render(view)` whenever the caller's view changes; ends with PermissionDenied when
/// the caller loses its last identity, and without error when the agent shuts down. `ready`
/// says whether a view is worth sending yet; with `wait_pending`, the first message also waits
/// (at most [`FIRST_COMPLETE_WAIT`]) until no matching entry lacks its SVID.
async fn watch_view<T: Send + 'static>(
    cache: &Arc<Cache>,
    caller: PeerCheck,
    wait_pending: bool,
    ready: fn(&WorkloadView) -> bool,
    render: fn(&WorkloadView) -> T,
) -> Result<ResponseStream<T>, Status> {
    let mut rx = cache.subscribe();
    if !rx.borrow().synced() {
        cache.synced(FIRST_SYNC_WAIT).await;
    }
    let first: Arc<Snapshot> = Arc::clone(&rx.borrow_and_update());
    if first.view(&caller.selectors).is_empty() {
        return Err(no_identity());
    }
    // The stream is polled by tonic only when the client can take a message: no task and no
    // channel per stream (a held stream costs a few hundred bytes here, and intermediate
    // states a slow client never saw are skipped, as the Workload API allows).
    struct Watch {
        rx: watch::Receiver<Arc<Snapshot>>,
        cache: Arc<Cache>,
        caller: PeerCheck,
        snap: Option<Arc<Snapshot>>,
        last: Option<WorkloadView>,
        done: bool,
        /// Until when the first message may wait for pending SVIDs.
        complete_by: Option<tokio::time::Instant>,
    }
    let state = Watch {
        rx,
        cache: Arc::clone(cache),
        caller,
        snap: Some(first),
        last: None,
        done: false,
        complete_by: wait_pending.then(|| tokio::time::Instant::now() + FIRST_COMPLETE_WAIT),
    };
    let stream = futures::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if let Some(snap) = st.snap.take() {
                let view = snap.view(&st.caller.selectors);
                if view.is_empty() {
                    st.done = true;
                    return Some((Err(no_identity()), st));
                }
                let complete = view.pending == 0
                    || st
                        .complete_by
                        .is_none_or(|t| t <= tokio::time::Instant::now());
                if ready(&view) && complete && st.last.as_ref().is_none_or(|l| !l.same_as(&view)) {
                    if st.last.is_some()
                        && let Err(e) = st.caller.still_same().await
                    {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                    let msg = render(&view);
                    st.last = Some(view);
                    st.complete_by = None;
                    return Some((Ok(msg), st));
                }
                if !complete {
                    // Look again at the deadline even if nothing changes.
                    st.snap = Some(snap);
                }
            }
            let deadline = st.complete_by.filter(|_| st.snap.is_some());
            let retry = async move {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = st.rx.changed() => if r.is_err() { return None },
                _ = st.cache.closed() => return None,
                _ = retry => continue,
            }
            st.snap = Some(Arc::clone(&st.rx.borrow_and_update()));
        }
    });
    Ok(Box::pin(stream))
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
        let sels = self.attestor.attest_for_stream(&req).await?;
        let s = watch_view(
            &self.cache,
            sels,
            true,
            |v| !v.svids.is_empty(),
            x509_response,
        )
        .await?;
        Ok(Response::new(s))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<wl::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&req)?;
        let sels = self.attestor.attest_for_stream(&req).await?;
        let s = watch_view(
            &self.cache,
            sels,
            false,
            |v| v.bundle.is_some(),
            x509_bundles,
        )
        .await?;
        Ok(Response::new(s))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<wl::JwtsvidRequest>,
    ) -> Result<Response<wl::JwtsvidResponse>, Status> {
        check_header(&req)?;
        let r = req.get_ref();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument(
                "audience: values must not be empty",
            ));
        }
        let want = match r.spiffe_id.as_str() {
            "" => None,
            s => Some(
                sigil_core::SpiffeId::parse_workload(s)
                    .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?,
            ),
        };
        let sels = self.attestor.attest(&req).await?;
        let snap = self.cache.synced(FIRST_SYNC_WAIT).await;
        let Some(jwt) = &self.jwt else {
            if snap.view(&sels).is_empty() {
                return Err(no_identity());
            }
            return Err(Status::unimplemented(
                "JWT-SVIDs are not enabled in this agent",
            ));
        };
        let svids = jwt
            .fetch_for(&snap, &sels, want.as_ref(), &req.get_ref().audience)
            .await?;
        Ok(Response::new(wl::JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<wl::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&req)?;
        let sels = self.attestor.attest_for_stream(&req).await?;
        let s = watch_view(
            &self.cache,
            sels,
            false,
            |v| v.bundle.is_some(),
            jwt_bundles,
        )
        .await?;
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
        let sels = self.attestor.attest(&req).await?;
        let snap = self.cache.synced(FIRST_SYNC_WAIT).await;
        let r = req.get_ref();
        let now = sigil_core::x509::unix_secs(std::time::SystemTime::now());
        // SPIRE answers InvalidArgument for every reason a token is refused.
        let v = crate::jwt::validate(&snap, &sels, &r.svid, &r.audience, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(wl::ValidateJwtsvidResponse {
            spiffe_id: v.spiffe_id.to_string(),
            claims: Some(crate::jwt::claims_struct(&v.claims)),
        }))
    }
}
