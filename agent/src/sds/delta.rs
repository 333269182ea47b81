//! Incremental SDS (`DeltaSecrets`, Envoy's `api_type: DELTA_GRPC`): the same resources as the
//! state-of-the-world stream, but each response carries only the Secrets whose content changed
//! and the names that disappeared.
//!
//! Every resource has its own version (a digest of its encoding), and the stream remembers which
//! version the client holds of each, seeded from `initial_resource_versions` on reconnect. A
//! response is due when that differs from the rendering. As in the state-of-the-world stream,
//! a NACK is logged and not answered: the rejected version counts as delivered, so only the next
//! change is sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::resources::{self, Subscription, Validation};
use super::{SECRET_TYPE_URL, check_type, nonce, short_hex, view_of};
use crate::cache::{Cache, Snapshot, WorkloadView};
use crate::config::SdsConfig;
use crate::workload_api::PeerCheck;

/// The name with which a delta client subscribes to every resource.
const WILDCARD: &str = "*";

/// One delta stream's state.
#[derive(Debug, Default)]
pub struct DeltaState {
    started: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// Names subscribed since the last response: each must be answered, if only as removed.
    fresh: BTreeSet<String>,
    /// What the client holds: resource name to version.
    held: HashMap<String, String>,
    node: Option<Node>,
}

/// What a response carries.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Secrets that are new or changed.
    pub resources: Vec<Resource>,
    /// Names the client holds or asked for that do not (or no longer) exist for it.
    pub removed: Vec<String>,
}

impl DeltaState {
    /// Applies a request: the first one sets the starting point, every one may change the
    /// subscription; ACKs and NACKs change nothing else.
    pub fn on_request(&mut self, req: &DeltaDiscoveryRequest) {
        if !self.started {
            self.started = true;
            self.held = req.initial_resource_versions.clone();
            // A first request naming nothing is a wildcard subscription (legacy xDS rule).
            self.wildcard = req.resource_names_subscribe.is_empty();
        }
        if let Some(err) = &req.error_detail {
            tracing::warn!(
                nonce = %req.response_nonce,
                code = err.code,
                error = %err.message,
                "Envoy rejected the secrets sent (delta NACK)"
            );
        }
        if let Some(node) = &req.node {
            self.node = Some(node.clone());
        }
        for n in &req.resource_names_subscribe {
            if n == WILDCARD {
                self.wildcard = true;
            } else if !n.is_empty() && self.names.insert(n.clone()) {
                self.fresh.insert(n.clone());
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == WILDCARD {
                self.wildcard = false;
            } else {
                self.names.remove(n);
                self.fresh.remove(n);
                self.held.remove(n);
            }
        }
    }

    /// The client's node, from the latest request that carried one.
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// The Secrets the subscription covers in `view`, by name.
    pub fn render(
        &self,
        view: &WorkloadView,
        cfg: &SdsConfig,
        validation: Validation,
    ) -> BTreeMap<String, Secret> {
        let mut out = BTreeMap::new();
        if self.wildcard {
            let all = resources::render(view, &Subscription::default(), cfg, validation);
            out.extend(all.into_iter().map(|s| (s.name.clone(), s)));
        }
        if !self.names.is_empty() {
            let named: Vec<&str> = self.names.iter().map(String::as_str).collect();
            let sub = Subscription::new(&named);
            let secrets = resources::render(view, &sub, cfg, validation);
            out.extend(secrets.into_iter().map(|s| (s.name.clone(), s)));
        }
        out
    }

    /// Whether the stream should wait for the workload's first SVID before answering.
    pub fn ready(&self, view: &WorkloadView, cfg: &SdsConfig) -> bool {
        if !self.wildcard && self.names.is_empty() {
            return true; // nothing wanted, nothing to wait for
        }
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        let wants = if self.wildcard {
            Subscription::default()
        } else {
            Subscription::new(&names)
        };
        resources::ready(view, &wants, cfg)
    }

    /// The difference between `rendered` and what the client holds, recorded as delivered.
    pub fn changes(&mut self, rendered: BTreeMap<String, Secret>) -> Changes {
        let mut out = Changes::default();
        for (name, secret) in &rendered {
            let any = resources::pack(secret);
            let version = short_hex(ring::digest::digest(&ring::digest::SHA256, &any.value));
            if self.held.get(name) != Some(&version) {
                self.held.insert(name.clone(), version.clone());
                out.resources.push(Resource {
                    name: name.clone(),
                    version,
                    resource: Some(any),
                    ..Default::default()
                });
            }
        }
        let mut removed: BTreeSet<String> = self
            .held
            .keys()
            .filter(|n| !rendered.contains_key(*n))
            .cloned()
            .collect();
        self.held.retain(|n, _| rendered.contains_key(n));
        removed.extend(
            std::mem::take(&mut self.fresh)
                .into_iter()
                .filter(|n| !rendered.contains_key(n)),
        );
        out.removed = removed.into_iter().collect();
        out
    }
}

/// Runs one `DeltaSecrets` conversation until the client goes away or loses its identity, or
/// the agent shuts down.
pub(super) async fn run(
    cache: Arc<Cache>,
    cfg: Arc<SdsConfig>,
    caller: PeerCheck,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let mut state = DeltaState::default();
    let mut snap = Arc::clone(&snapshots.borrow_and_update());
    let mut sent_any = false;
    let mut requests_open = true;
    loop {
        tokio::select! {
            r = requests.next(), if requests_open => match r {
                Some(Ok(req)) => {
                    tracing::debug!(
                        subscribe = ?req.resource_names_subscribe,
                        unsubscribe = ?req.resource_names_unsubscribe,
                        nonce = %req.response_nonce,
                        "delta SDS request"
                    );
                    if let Err(e) = check_type(&req.type_url) {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    state.on_request(&req);
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "delta SDS stream ended by the client");
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
        if !state.started || !state.ready(&view, &cfg) {
            continue;
        }
        let validation = Validation::for_node(state.node(), &cfg);
        let changes = state.changes(state.render(&view, &cfg, validation));
        if changes.resources.is_empty() && changes.removed.is_empty() {
            continue;
        }
        let resp = DeltaDiscoveryResponse {
            resources: changes.resources,
            removed_resources: changes.removed,
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: nonce(),
            ..Default::default()
        };
        tracing::debug!(
            nonce = %resp.nonce,
            changed = resp.resources.len(),
            removed = resp.removed_resources.len(),
            "sending delta SDS response"
        );
        if sent_any && let Err(e) = caller.still_same().await {
            let _ = tx.send(Err(e)).await;
            return;
        }
        sent_any = true;
        if tx.send(Ok(resp)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use bytes::Bytes;
    use sigil_core::{Bundle, SpiffeId, TrustDomain};

    use super::*;
    use crate::cache::{BundleView, Svid};

    fn view(leaf: &'static [u8]) -> WorkloadView {
        let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
        b.x509_authorities.push(b"ca".to_vec());
        WorkloadView {
            svids: vec![Arc::new(Svid {
                entry_id: "e".into(),
                entry_revision: 1,
                spiffe_id: SpiffeId::parse("spiffe://example.org/a").unwrap(),
                chain_der: Bytes::from_static(leaf),
                certs: vec![Bytes::from_static(leaf)],
                key_pkcs8: Bytes::from_static(b"key"),
                not_after: SystemTime::now(),
                renew_at: SystemTime::now(),
                hint: String::new(),
            })],
            pending: 0,
            federated: vec![],
            bundle: Some(Arc::new(BundleView::new(b))),
        }
    }

    fn sub(names: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn step(s: &mut DeltaState, v: &WorkloadView) -> (Vec<String>, Vec<String>) {
        let cfg = SdsConfig::default();
        let c = s.changes(s.render(v, &cfg, Validation::TrustedCa));
        (c.resources.into_iter().map(|r| r.name).collect(), c.removed)
    }

    #[test]
    fn sends_only_changes_and_removals() {
        let mut s = DeltaState::default();
        s.on_request(&sub(&["default", "ROOTCA", "nope"], &[], ""));
        let v1 = view(b"leaf1");
        assert_eq!(
            step(&mut s, &v1),
            (
                vec!["ROOTCA".to_owned(), "default".to_owned()],
                vec!["nope".to_owned()]
            )
        );
        // ACK: nothing new.
        s.on_request(&sub(&[], &[], "n1"));
        assert_eq!(step(&mut s, &v1), (vec![], vec![]));
        // Rotation: only the certificate.
        assert_eq!(
            step(&mut s, &view(b"leaf2")),
            (vec!["default".to_owned()], vec![])
        );
        // Unsubscribing sends nothing; resubscribing sends it again.
        s.on_request(&sub(&[], &["ROOTCA"], "n2"));
        assert_eq!(step(&mut s, &view(b"leaf2")), (vec![], vec![]));
        s.on_request(&sub(&["ROOTCA"], &[], "n3"));
        assert_eq!(
            step(&mut s, &view(b"leaf2")),
            (vec!["ROOTCA".to_owned()], vec![])
        );
        // The SVID disappears: removed.
        let mut gone = view(b"leaf2");
        gone.svids.clear();
        assert_eq!(step(&mut s, &gone), (vec![], vec!["default".to_owned()]));
    }

    #[test]
    fn wildcard_and_initial_versions() {
        let v = view(b"leaf1");
        let mut first = DeltaState::default();
        first.on_request(&sub(&[], &[], ""));
        let cfg = SdsConfig::default();
        let c = first.changes(first.render(&v, &cfg, Validation::TrustedCa));
        let names: Vec<&str> = c.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["spiffe://example.org", "spiffe://example.org/a"]);
        // A reconnecting client that holds the current versions gets nothing re-sent.
        let mut again = DeltaState::default();
        let mut req = sub(&["*"], &[], "");
        req.initial_resource_versions = c
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .chain([("spiffe://example.org/old".to_owned(), "x".to_owned())])
            .collect();
        again.on_request(&req);
        assert_eq!(
            step(&mut again, &v),
            (vec![], vec!["spiffe://example.org/old".to_owned()])
        );
    }
}
