//! The sync stream: a snapshot of an agent's authorized entries and bundles, then a delta on
//! every change (an entry reaching its `expires_at` is one: it is removed from the agent). Each message holds at most [`PAGE`] entries so no message nears gRPC's 4 MiB
//! limit however many entries an agent has.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use sigil_core::x509::unix_secs;
use sigil_core::{Bundle, SelectorSet, TrustDomain};
use sigil_proto::sigil::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::api::caller::{self, Caller};
use crate::convert::{bundle_to_pb, entry_to_pb};
use crate::registry::Authorized;
use crate::state::State;
use crate::status::ApiError;

/// Entries per sync message.
pub const PAGE: usize = 500;

/// The stream type returned to tonic.
pub type SyncStream = ReceiverStream<Result<pb::SyncResponse, Status>>;

/// Starts the per-agent sync task and returns its stream.
pub fn start(state: Arc<State>, caller: Caller, last_revision: u64) -> SyncStream {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let id = caller.agent.id.clone();
        if let Err(e) = run(state, caller, last_revision, &tx).await {
            tracing::debug!(agent_id = %id, error = %e, "sync stream ended");
        }
    });
    ReceiverStream::new(rx)
}

#[derive(Debug, thiserror::Error)]
enum SyncEnd {
    #[error("agent went away")]
    Closed,
    #[error("agent no longer allowed: {0}")]
    Denied(String),
}

type Tx = mpsc::Sender<Result<pb::SyncResponse, Status>>;

async fn send(tx: &Tx, msg: pb::SyncResponse) -> Result<(), SyncEnd> {
    tx.send(Ok(msg)).await.map_err(|_| SyncEnd::Closed)
}

/// Federated bundles the agent's entries ask for, sorted by trust domain.
async fn federated(state: &State, auth: &Authorized) -> Vec<pb::Bundle> {
    let wanted: std::collections::BTreeSet<TrustDomain> = auth
        .values()
        .flat_map(|e| e.federates_with.iter().cloned())
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let all = state.store(|s| s.list_bundles()).await.unwrap_or_default();
    let mut out = BTreeMap::new();
    for (td, doc) in all {
        if wanted.contains(&td)
            && let Ok(b) = Bundle::from_spiffe_json(td.clone(), &doc)
        {
            out.insert(td, bundle_to_pb(&b));
        }
    }
    out.into_values().collect()
}

async fn run(
    state: Arc<State>,
    caller: Caller,
    last_revision: u64,
    tx: &Tx,
) -> Result<(), SyncEnd> {
    let Caller { agent, serial } = caller;
    let sels: SelectorSet = agent.selectors.iter().cloned().collect();
    let mut rev_rx = state.registry.subscribe();
    let rev = *rev_rx.borrow_and_update();
    let now = unix_secs(state.now());
    let auth = state.registry.authorized_at(&agent.id, &sels, now);
    // On resume, only entries the agent really held at `last_revision` may go by ID: an old
    // entry that became authorized since (a new alias or parent) is news to the agent.
    let held = if last_revision > 0 {
        state.registry.held_at(&agent.id, &sels, last_revision, now)
    } else {
        HashSet::new()
    };
    // The index may already hold entries whose revision was not announced yet when `rev` was
    // read; a message never claims less than what it carries.
    let rev = auth.values().map(|e| e.revision).fold(rev, u64::max);
    let bundle = state.ca.bundle();
    let fed = federated(&state, &auth).await;

    // Snapshot (possibly resumed: entries unchanged since `last_revision` go by ID only).
    let mut sent: HashMap<String, u64> = HashMap::with_capacity(auth.len());
    let mut entries: Vec<_> = auth.values().collect();
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    let pages: Vec<_> = entries.chunks(PAGE).collect();
    let n = pages.len().max(1);
    for i in 0..n {
        let page = pages.get(i).copied().unwrap_or(&[]);
        let mut msg = pb::SyncResponse {
            reset: i == 0,
            complete: i + 1 == n,
            ..Default::default()
        };
        for e in page {
            sent.insert(e.id.clone(), e.revision);
            if held.contains(&e.id) {
                msg.unchanged_entry_ids.push(e.id.clone());
            } else {
                msg.upserts.push(entry_to_pb(e));
            }
        }
        if msg.complete {
            msg.revision = rev;
            msg.bundle = Some(bundle_to_pb(&bundle));
            msg.federated_bundles = fed.clone();
            msg.federated_bundles_changed = true;
        }
        send(tx, msg).await?;
    }
    let mut sent_bundle_seq = bundle.sequence;
    let mut sent_fed = fed;
    let mut next_expiry = earliest_expiry(&auth);

    loop {
        tokio::select! {
            r = rev_rx.changed() => if r.is_err() { return Err(SyncEnd::Closed) },
            _ = tx.closed() => return Err(SyncEnd::Closed),
            // The agent sees the stream end and reconnects (to this server once restarted).
            _ = state.registry.closed() => return Err(SyncEnd::Closed),
            // An entry the agent holds expires: its removal is pushed like any other change.
            _ = sleep_until_unix(next_expiry) => {}
        }
        let rev = *rev_rx.borrow_and_update();
        // Still allowed? A ban, an eviction, or the agent's switch to a renewed SVID (which
        // supersedes the one this stream was opened with) ends the stream.
        let id = agent.id.clone();
        let now = unix_secs(state.now());
        match state.store(move |s| s.get_agent(&id)).await {
            Ok(Some(a)) => {
                if let Some(refused) = caller::refusal(&a, &serial, now) {
                    return end(tx, refused).await;
                }
            }
            Ok(None) => return end(tx, caller::not_attested(&agent.id)).await,
            Err(_) => continue,
        }
        let auth = state
            .registry
            .authorized_at(&agent.id, &sels, unix_secs(state.now()));
        next_expiry = earliest_expiry(&auth);
        let mut upserts: Vec<pb::Entry> = auth
            .values()
            .filter(|e| sent.get(&e.id) != Some(&e.revision))
            .map(|e| entry_to_pb(e))
            .collect();
        upserts.sort_by(|a, b| a.id.cmp(&b.id));
        // Entries indexed after `rev` was read (during the awaits above) are included already.
        let rev = upserts.iter().map(|e| e.revision).fold(rev, u64::max);
        let removed: Vec<String> = sent
            .keys()
            .filter(|k| !auth.contains_key(*k))
            .cloned()
            .collect();
        let bundle = state.ca.bundle();
        let bundle_changed = bundle.sequence != sent_bundle_seq;
        let fed = federated(&state, &auth).await;
        let fed_changed = fed != sent_fed;
        if upserts.is_empty() && removed.is_empty() && !bundle_changed && !fed_changed {
            continue;
        }
        for e in &upserts {
            sent.insert(e.id.clone(), e.revision);
        }
        for r in &removed {
            sent.remove(r);
        }
        let mut chunks: Vec<Vec<pb::Entry>> = upserts.chunks(PAGE).map(<[_]>::to_vec).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut msg = pb::SyncResponse {
                upserts: chunk,
                complete: i == last,
                ..Default::default()
            };
            if i == last {
                msg.revision = rev;
                msg.removed_entry_ids = removed.clone();
                if bundle_changed {
                    msg.bundle = Some(bundle_to_pb(&bundle));
                }
                if fed_changed {
                    msg.federated_bundles = fed.clone();
                    msg.federated_bundles_changed = true;
                }
            }
            send(tx, msg).await?;
        }
        sent_bundle_seq = bundle.sequence;
        sent_fed = fed;
    }
}

/// The earliest `expires_at` among `auth` (Unix seconds), if any entry has one.
fn earliest_expiry(auth: &Authorized) -> Option<i64> {
    auth.values().map(|e| e.expires_at).filter(|t| *t > 0).min()
}

/// Resolves at Unix second `at` (never, for `None`).
async fn sleep_until_unix(at: Option<i64>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    let when = sigil_core::x509::to_system_time(at);
    let wait = when
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait).await;
}

/// Ends the stream with `why` (PermissionDenied for a ban or eviction, Unauthenticated for a
/// superseded SVID, on which the agent reconnects with its current one).
async fn end(tx: &Tx, why: ApiError) -> Result<(), SyncEnd> {
    let reason = why.to_string();
    let _ = tx.send(Err(Status::from(why))).await;
    Err(SyncEnd::Denied(reason))
}
