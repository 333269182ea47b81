//! The agent's in-memory state: authorized entries from the server, their X.509-SVIDs and the
//! bundles. Published as immutable snapshots through a `watch` channel so every Workload API
//! stream wakes on change and certificate bytes are shared (`Bytes`/`Arc`), never copied per
//! subscriber.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use sigil_core::{Bundle, Selector, SelectorSet, SpiffeId, TrustDomain};
use tokio::sync::watch;

/// A registration entry as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Server-assigned entry ID.
    pub id: String,
    /// Identity granted to matching workloads.
    pub spiffe_id: SpiffeId,
    /// All must be among the workload's selectors.
    pub selectors: Vec<Selector>,
    /// Foreign trust domains whose bundles matching workloads receive.
    pub federates_with: Vec<TrustDomain>,
    /// Operator hint, passed to workloads.
    pub hint: String,
    /// Store revision of the entry's last change; a new revision means a new SVID.
    pub revision: u64,
    /// Creation time, for a stable default-SVID order.
    pub created_at: i64,
}

/// An issued X.509-SVID with its private key (generated here; never leaves the agent process
/// except to the workload it belongs to).
pub struct Svid {
    /// Entry this SVID was issued for.
    pub entry_id: String,
    /// Entry revision it was issued at.
    pub entry_revision: u64,
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// DER certificates back to back, leaf first (Workload API encoding).
    pub chain_der: Bytes,
    /// Each certificate separately, leaf first.
    pub certs: Vec<Bytes>,
    /// PKCS#8 DER private key.
    pub key_pkcs8: Bytes,
    /// Leaf notAfter.
    pub not_after: SystemTime,
    /// When to renew (half the lifetime).
    pub renew_at: SystemTime,
    /// Entry hint.
    pub hint: String,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("entry_id", &self.entry_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A bundle with its Workload API encoding precomputed.
#[derive(Debug)]
pub struct BundleView {
    /// The bundle.
    pub bundle: Bundle,
    /// DER roots back to back.
    pub x509_der: Bytes,
}

impl BundleView {
    /// Precomputes the encodings of `bundle`.
    pub fn new(bundle: Bundle) -> Self {
        let x509_der = Bytes::from(bundle.x509_authorities.concat());
        Self { bundle, x509_der }
    }
}

/// An entry ID as the SVID map's key: allocated once per entry, so cloning the map for a new
/// snapshot (once per signed batch) allocates nothing per SVID.
pub type EntryKey = Arc<str>;

/// One consistent state of the agent.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Authorized entries by ID.
    pub entries: Arc<HashMap<String, Arc<Entry>>>,
    /// Entries by selector, to find a workload's entries without scanning all.
    pub by_selector: Arc<HashMap<Selector, Vec<Arc<Entry>>>>,
    /// SVIDs by entry ID.
    pub svids: Arc<HashMap<EntryKey, Arc<Svid>>>,
    /// Own trust domain bundle.
    pub bundle: Option<Arc<BundleView>>,
    /// Federated bundles.
    pub federated: Arc<BTreeMap<TrustDomain, Arc<BundleView>>>,
    /// Sync revision applied.
    pub revision: u64,
    /// The server refused this agent (banned/evicted): no identities are served.
    pub denied: bool,
}

/// What one workload is entitled to in a snapshot.
#[derive(Debug, Clone)]
pub struct WorkloadView {
    /// SVIDs in default-first order.
    pub svids: Vec<Arc<Svid>>,
    /// Matching entries that have no SVID yet.
    pub pending: usize,
    /// Federated bundles the workload's entries ask for.
    pub federated: Vec<Arc<BundleView>>,
    /// Own bundle.
    pub bundle: Option<Arc<BundleView>>,
}

impl WorkloadView {
    /// True when the workload matches no entry at all.
    pub fn is_empty(&self) -> bool {
        self.svids.is_empty() && self.pending == 0
    }

    /// Same SVID objects and bundles as `other` (pointer equality: SVIDs are immutable).
    pub fn same_as(&self, other: &WorkloadView) -> bool {
        self.svids.len() == other.svids.len()
            && self
                .svids
                .iter()
                .zip(&other.svids)
                .all(|(a, b)| Arc::ptr_eq(a, b))
            && self.federated.len() == other.federated.len()
            && self
                .federated
                .iter()
                .zip(&other.federated)
                .all(|(a, b)| Arc::ptr_eq(a, b))
            && match (&self.bundle, &other.bundle) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl Snapshot {
    /// True once a sync snapshot from the server was applied (or the server refused us): only
    /// then does "no matching entry" mean the caller has no identity.
    pub fn synced(&self) -> bool {
        self.revision > 0 || self.denied
    }

    /// The entries whose selectors are all among `selectors`, oldest first.
    ///
    /// `created_at` has one-second resolution, so entries created within the same second are
    /// ordered by their store revision (creation order unless updated since), then by ID.
    pub fn matching_entries(&self, selectors: &SelectorSet) -> Vec<Arc<Entry>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for s in selectors.iter() {
            let Some(entries) = self.by_selector.get(s) else {
                continue;
            };
            for e in entries {
                if seen.insert(Arc::as_ptr(e)) && selectors.matches_all(&e.selectors) {
                    out.push(Arc::clone(e));
                }
            }
        }
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.revision.cmp(&b.revision))
                .then_with(|| a.id.cmp(&b.id))
        });
        out
    }

    /// What a workload with `selectors` is entitled to.
    pub fn view(&self, selectors: &SelectorSet) -> WorkloadView {
        let mut view = WorkloadView {
            svids: Vec::new(),
            pending: 0,
            federated: Vec::new(),
            bundle: self.bundle.clone(),
        };
        if self.denied {
            return view;
        }
        let mut feds = std::collections::BTreeSet::new();
        for e in self.matching_entries(selectors) {
            match self.svids.get(e.id.as_str()) {
                Some(s) => view.svids.push(Arc::clone(s)),
                None => view.pending += 1,
            }
            feds.extend(e.federates_with.iter().cloned());
        }
        view.federated = feds
            .iter()
            .filter_map(|td| self.federated.get(td).cloned())
            .collect();
        view
    }
}

/// The shared, watchable agent state.
#[derive(Debug)]
pub struct Cache {
    tx: watch::Sender<Arc<Snapshot>>,
    closed: watch::Sender<bool>,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

fn index(entries: &HashMap<String, Arc<Entry>>) -> HashMap<Selector, Vec<Arc<Entry>>> {
    let mut idx: HashMap<Selector, Vec<Arc<Entry>>> = HashMap::new();
    for e in entries.values() {
        for s in &e.selectors {
            // `entry()` would clone the selector for every entry; most share a few selectors.
            match idx.get_mut(s) {
                Some(v) => v.push(Arc::clone(e)),
                None => {
                    idx.insert(s.clone(), vec![Arc::clone(e)]);
                }
            }
        }
    }
    idx
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        let (closed, _) = watch::channel(false);
        Self { tx, closed }
    }

    /// Tells every stream serving from this cache to end: the agent is shutting down, and its
    /// servers' graceful shutdown waits for open streams, which would otherwise never finish.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once [`Cache::close`] was called.
    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// The current snapshot once the first sync was applied, waiting at most `timeout` for it
    /// (after which the possibly empty snapshot is returned). Right after a start or restart the
    /// cache is empty; answering "no identity" then would be wrong, not merely early.
    pub async fn synced(&self, timeout: std::time::Duration) -> Arc<Snapshot> {
        let mut rx = self.tx.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|s| s.synced())).await;
        self.current()
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.tx.borrow())
    }

    /// Wakes on every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    fn modify(&self, f: impl FnOnce(&mut Snapshot)) {
        self.tx.send_modify(|cur| {
            let mut next = Snapshot::clone(cur);
            f(&mut next);
            *cur = Arc::new(next);
        });
    }

    /// Replaces the entry set (a completed snapshot or delta). SVIDs of vanished entries and of
    /// entries whose SPIFFE ID changed are dropped.
    pub fn set_entries(&self, entries: HashMap<String, Arc<Entry>>, revision: u64) {
        self.modify(|s| {
            let mut svids = HashMap::clone(&s.svids);
            svids.retain(|id, svid| {
                entries
                    .get(&**id)
                    .is_some_and(|e| e.spiffe_id == svid.spiffe_id && !e.selectors.is_empty())
            });
            s.by_selector = Arc::new(index(&entries));
            s.entries = Arc::new(entries);
            s.svids = Arc::new(svids);
            s.revision = revision;
        });
    }

    /// Installs freshly issued SVIDs (ignored when their entry is gone meanwhile).
    pub fn put_svids(&self, new: Vec<Svid>) {
        if new.is_empty() {
            return;
        }
        self.modify(|s| {
            let mut svids = HashMap::clone(&s.svids);
            for svid in new {
                if s.entries
                    .get(&svid.entry_id)
                    .is_some_and(|e| e.spiffe_id == svid.spiffe_id)
                {
                    // A renewal keeps the entry's key.
                    let key = svids
                        .get_key_value(svid.entry_id.as_str())
                        .map(|(k, _)| Arc::clone(k))
                        .unwrap_or_else(|| EntryKey::from(svid.entry_id.as_str()));
                    svids.insert(key, Arc::new(svid));
                }
            }
            s.svids = Arc::new(svids);
        });
    }

    /// Sets the own bundle.
    pub fn set_bundle(&self, b: Bundle) {
        self.modify(|s| s.bundle = Some(Arc::new(BundleView::new(b))));
    }

    /// Replaces the federated bundles, keeping unchanged ones (same pointer) so streams of
    /// workloads not affected do not wake needlessly.
    pub fn set_federated(&self, bundles: Vec<Bundle>) {
        self.modify(|s| {
            let mut next = BTreeMap::new();
            for b in bundles {
                let td = b.trust_domain.clone();
                match s.federated.get(&td) {
                    Some(old) if old.bundle == b => {
                        next.insert(td, Arc::clone(old));
                    }
                    _ => {
                        next.insert(td, Arc::new(BundleView::new(b)));
                    }
                }
            }
            s.federated = Arc::new(next);
        });
    }

    /// The server refused this agent: drop every identity.
    pub fn deny(&self) {
        self.modify(|s| {
            s.denied = true;
            s.entries = Arc::default();
            s.by_selector = Arc::default();
            s.svids = Arc::default();
        });
    }

    /// True when the server refused this agent.
    pub fn is_denied(&self) -> bool {
        self.tx.borrow().denied
    }
}
