//! The agent side of the server's push sync: one long-lived stream, applied to the cache,
//! resumed from the last revision after a reconnect (with backoff). While the server is away
//! the cache keeps serving what it has.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sigil_core::{Bundle, JwtAuthority, Selector, SpiffeId, TrustDomain};
use sigil_proto::sigil::v1 as pb;
use tokio::sync::watch;
use tonic::Code;

use crate::cache::{Cache, Entry};
use crate::node::NodeClient;

/// Converts a wire entry, skipping (with a log line) entries that fail to parse.
fn entry_from_pb(e: pb::Entry) -> Option<Entry> {
    let spiffe_id = SpiffeId::parse(&e.spiffe_id).ok()?;
    // Exact capacities: collecting through `Result`/`filter_map` starts at capacity 4, and the
    // cache keeps one entry per registration (tens of thousands), most with one selector.
    let mut selectors = Vec::with_capacity(e.selectors.len());
    for s in &e.selectors {
        selectors.push(Selector::new(&s.r#type, &s.value).ok()?);
    }
    let mut federates_with: Vec<TrustDomain> = e
        .federates_with
        .iter()
        .filter_map(|t| TrustDomain::new(t).ok())
        .collect();
    federates_with.shrink_to_fit();
    Some(Entry {
        id: e.id,
        spiffe_id,
        selectors,
        federates_with,
        hint: e.hint,
        revision: e.revision,
        created_at: e.created_at,
    })
}

/// Converts a wire bundle.
pub fn bundle_from_pb(b: pb::Bundle) -> Option<Bundle> {
    Some(Bundle {
        trust_domain: TrustDomain::new(&b.trust_domain).ok()?,
        x509_authorities: b.x509_authorities,
        jwt_authorities: b
            .jwt_authorities
            .into_iter()
            .map(|j| JwtAuthority {
                key_id: j.key_id,
                public_key_der: j.public_key,
                expires_at: j.expires_at,
            })
            .collect(),
        sequence: b.sequence_number,
        refresh_hint: u64::try_from(b.refresh_hint).ok().filter(|h| *h > 0),
    })
}

/// Applies sync messages; holds a snapshot under construction between `reset` and `complete`.
#[derive(Default)]
struct Applier {
    pending: Option<HashMap<String, Arc<Entry>>>,
    delta_upserts: Vec<Arc<Entry>>,
    last_revision: u64,
}

impl Applier {
    fn apply(&mut self, cache: &Cache, node: &NodeClient, msg: pb::SyncResponse) {
        let cur = cache.current();
        if msg.reset {
            self.pending = Some(HashMap::new());
        }
        let ups: Vec<Arc<Entry>> = msg
            .upserts
            .into_iter()
            .filter_map(|e| {
                let id = e.id.clone();
                let parsed = entry_from_pb(e);
                if parsed.is_none() {
                    tracing::warn!(entry_id = %id, "ignoring malformed entry from server");
                }
                parsed.map(Arc::new)
            })
            .collect();
        match &mut self.pending {
            Some(p) => {
                for e in ups {
                    p.insert(e.id.clone(), e);
                }
                for id in msg.unchanged_entry_ids {
                    if let Some(e) = cur.entries.get(&id) {
                        p.insert(id, Arc::clone(e));
                    }
                }
            }
            None => self.delta_upserts.extend(ups),
        }
        if let Some(b) = msg.bundle.and_then(bundle_from_pb) {
            node.update_trust(&b);
            let changed = cur.bundle.as_ref().is_none_or(|old| old.bundle != b);
            if changed {
                cache.set_bundle(b);
            }
        }
        if msg.federated_bundles_changed {
            cache.set_federated(
                msg.federated_bundles
                    .into_iter()
                    .filter_map(bundle_from_pb)
                    .collect(),
            );
        }
        if !msg.complete {
            return;
        }
        let entries = match self.pending.take() {
            Some(p) => p,
            None => {
                let mut m = HashMap::clone(&cur.entries);
                for e in self.delta_upserts.drain(..) {
                    m.insert(e.id.clone(), e);
                }
                for id in &msg.removed_entry_ids {
                    m.remove(id);
                }
                m
            }
        };
        self.last_revision = msg.revision;
        cache.set_entries(entries, msg.revision);
    }
}

/// Runs the sync loop until `shutdown` flips or the server refuses the agent.
pub async fn run(node: Arc<NodeClient>, cache: Arc<Cache>, mut shutdown: watch::Receiver<bool>) {
    let mut applier = Applier::default();
    let mut backoff = Duration::from_millis(100);
    let mut renewals = node.renewals();
    loop {
        renewals.borrow_and_update();
        let req = pb::SyncRequest {
            last_revision: applier.last_revision,
        };
        let mut client = node.client();
        let result = tokio::select! {
            r = client.sync(req) => r,
            _ = shutdown.changed() => return,
        };
        let mut stream = match result {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::PermissionDenied => return refused(&cache, &s),
            Err(s) => {
                tracing::warn!(error = %s.message(), code = ?s.code(), "sync: server unreachable; serving cached SVIDs");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut renewed = false;
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = shutdown.changed() => return,
                // The agent SVID was renewed: this stream's connection presents the previous
                // one, which the server stops accepting soon, so reopen on the new connection.
                // (`node`, held here, owns the sender: this resolves only on a renewal.)
                _ = renewals.changed() => {
                    renewed = true;
                    break;
                }
            };
            match msg {
                Ok(Some(m)) => {
                    backoff = Duration::from_millis(100);
                    applier.apply(&cache, &node, m);
                }
                Ok(None) => break,
                Err(s) if s.code() == Code::PermissionDenied => return refused(&cache, &s),
                Err(s) => {
                    tracing::warn!(error = %s.message(), "sync stream broke; reconnecting");
                    break;
                }
            }
        }
        applier.pending = None;
        applier.delta_upserts.clear();
        if renewed {
            tracing::debug!("agent SVID renewed; reopening the sync stream");
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn refused(cache: &Cache, s: &tonic::Status) {
    tracing::error!(
        reason = %s.message(),
        "the server refused this agent (banned or evicted): no identities will be served"
    );
    cache.deny();
}
