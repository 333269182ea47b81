//! The agent sync stream against a real server: snapshot, pushed deltas on registration
//! changes, resumption from a revision, paging, and the end of the stream for banned or evicted
//! agents.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use sigil_proto::sigil::v1 as pb;
use tonic::Code;

fn ids(entries: &[pb::Entry]) -> BTreeSet<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

/// Reads messages until one satisfies `want`, returning it and how long that took.
async fn wait_for(
    stream: &mut tonic::Streaming<pb::SyncResponse>,
    want: impl Fn(&pb::SyncResponse) -> bool,
) -> pb::SyncResponse {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "expected sync message never came"
        );
        let m = next_msg(stream).await.unwrap();
        if want(&m) {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_deltas_then_resume() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let other = srv.attest().await;
    let e1 = srv
        .create_entry(entry(&format!("spiffe://{TD}/one"), &agent.id_str()))
        .await;
    let e2 = srv
        .create_entry(entry(&format!("spiffe://{TD}/two"), &agent.id_str()))
        .await;
    let not_mine = srv
        .create_entry(entry(&format!("spiffe://{TD}/theirs"), &other.id_str()))
        .await;

    // Snapshot: one message here (reset and complete), the authorized entries and the bundle.
    let mut stream = agent.sync(0).await.unwrap();
    let snap = read_snapshot(&mut stream).await;
    assert_eq!(snap.len(), 1);
    let s = &snap[0];
    assert!(s.reset && s.complete);
    assert_eq!(ids(&s.upserts), ids(&[e1.clone(), e2.clone()]));
    assert!(s.removed_entry_ids.is_empty() && s.unchanged_entry_ids.is_empty());
    assert_eq!(s.bundle.as_ref().unwrap(), &srv.bundle().await);
    assert!(s.revision >= e2.revision);
    let full = s.upserts.iter().find(|e| e.id == e1.id).unwrap();
    assert_eq!(full, &e1, "entries are sent whole");

    // A change to another agent's entries sends nothing to this one; a new entry of ours is
    // pushed promptly on the open stream.
    srv.create_entry(entry(&format!("spiffe://{TD}/theirs2"), &other.id_str()))
        .await;
    let t0 = Instant::now();
    let e3 = srv
        .create_entry(entry(&format!("spiffe://{TD}/three"), &agent.id_str()))
        .await;
    let m = next_msg(&mut stream).await.unwrap();
    let latency = t0.elapsed();
    eprintln!("entry creation to sync delta: {latency:?}");
    assert!(
        latency < Duration::from_secs(1),
        "delta took {latency:?} (create RPC included)"
    );
    assert!(!m.reset && m.complete);
    assert_eq!(ids(&m.upserts), ids(std::slice::from_ref(&e3)));
    assert!(m.revision >= e3.revision);
    assert!(m.bundle.is_none(), "the unchanged bundle is not resent");
    assert!(!m.upserts.iter().any(|e| e.id == not_mine.id));

    // Deleting it delivers its removal.
    srv.entries()
        .batch_delete_entry(pb::BatchDeleteEntryRequest {
            ids: vec![e3.id.clone()],
        })
        .await
        .unwrap();
    let m = wait_for(&mut stream, |m| !m.removed_entry_ids.is_empty()).await;
    assert_eq!(m.removed_entry_ids, std::slice::from_ref(&e3.id));
    assert!(m.upserts.is_empty());
    let last_rev = m.revision;
    drop(stream);

    // While disconnected, e2 changes. Resuming from the last revision resends only e2 in full;
    // e1 goes by ID. The bundle is always in a snapshot.
    let r = srv
        .entries()
        .batch_update_entry(pb::BatchUpdateEntryRequest {
            entries: vec![pb::Entry {
                dns_names: vec!["two.example.org".into()],
                ..e2.clone()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    assert_eq!(r.code, 0, "{}", r.message);
    let mut stream = agent.sync(last_rev).await.unwrap();
    let snap = read_snapshot(&mut stream).await;
    assert_eq!(snap.len(), 1);
    let s = &snap[0];
    assert!(s.reset && s.complete);
    assert_eq!(s.unchanged_entry_ids, std::slice::from_ref(&e1.id));
    assert_eq!(s.upserts.len(), 1);
    assert_eq!(s.upserts[0].id, e2.id);
    assert_eq!(s.upserts[0].dns_names, ["two.example.org"]);
    assert!(s.bundle.is_some());
    assert!(s.revision > last_rev);

    // An update on the open stream is a delta with the new version.
    let r = srv
        .entries()
        .batch_update_entry(pb::BatchUpdateEntryRequest {
            entries: vec![pb::Entry {
                x509_svid_ttl: 300,
                ..e1.clone()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    let m = next_msg(&mut stream).await.unwrap();
    assert_eq!(m.upserts, vec![r.entry.unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_behind_an_alias_are_synced() {
    let srv = TestServer::start().await;
    let alias = format!("spiffe://{TD}/node/{}", unique("group"));
    let token = srv.join_token(600, &alias).await;
    let agent = srv.attest_token(&token).await;
    let mut stream = agent.sync(0).await.unwrap();
    let snap = read_snapshot(&mut stream).await;
    // The alias entry itself is part of the agent's set.
    assert_eq!(snap[0].upserts.len(), 1);
    assert_eq!(snap[0].upserts[0].spiffe_id, alias);

    let child = srv
        .create_entry(entry(&format!("spiffe://{TD}/child"), &alias))
        .await;
    let m = next_msg(&mut stream).await.unwrap();
    assert_eq!(ids(&m.upserts), ids(&[child]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_snapshot_is_paged() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let page = sigil_server::api::sync::PAGE;
    let n = page + 7;
    let entries: Vec<pb::Entry> = (0..n)
        .map(|i| entry(&format!("spiffe://{TD}/w/{i}"), &agent.id_str()))
        .collect();
    let created = srv.create_entries(entries).await;

    let mut stream = agent.sync(0).await.unwrap();
    let snap = read_snapshot(&mut stream).await;
    assert_eq!(snap.len(), 2, "{n} entries in pages of {page}");
    assert!(snap[0].reset && !snap[0].complete);
    assert!(!snap[1].reset && snap[1].complete);
    assert_eq!(snap[0].upserts.len(), page);
    assert!(snap[0].bundle.is_none());
    assert!(snap[1].bundle.is_some());
    let got: BTreeSet<String> = snap.iter().flat_map(|m| ids(&m.upserts)).collect();
    assert_eq!(got, ids(&created));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banning_ends_the_stream() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    srv.create_entry(entry(&format!("spiffe://{TD}/w"), &agent.id_str()))
        .await;
    let mut stream = agent.sync(0).await.unwrap();
    read_snapshot(&mut stream).await;
    srv.agents()
        .ban_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
        .unwrap();
    let err = next_msg(&mut stream).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // And a new stream is refused outright.
    let err = agent.sync(0).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_ends_the_stream() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let mut stream = agent.sync(0).await.unwrap();
    let snap = read_snapshot(&mut stream).await;
    assert!(
        snap[0].upserts.is_empty(),
        "an agent without entries gets an empty snapshot"
    );
    assert!(snap[0].bundle.is_some());
    srv.agents()
        .evict_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
        .unwrap();
    let err = next_msg(&mut stream).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_delivers_old_entries_that_became_authorized() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    // C hangs under X, which is nobody's identity yet: the agent is not authorized for it.
    let x = format!("spiffe://{TD}/node/{}", unique("x"));
    let c = srv
        .create_entry(entry(&format!("spiffe://{TD}/c"), &x))
        .await;
    let mine = srv
        .create_entry(entry(&format!("spiffe://{TD}/mine"), &agent.id_str()))
        .await;
    let mut stream = agent.sync(0).await.unwrap();
    let snap = read_snapshot(&mut stream).await;
    assert_eq!(ids(&snap[0].upserts), ids(std::slice::from_ref(&mine)));
    let last_rev = snap.last().unwrap().revision;
    assert!(last_rev >= c.revision);
    drop(stream);

    // While the agent is away, P gives it the identity X (P is parented by the agent), so C,
    // unchanged and older than the agent's revision, becomes authorized.
    let p = srv.create_entry(entry(&x, &agent.id_str())).await;

    let mut stream = agent.sync(last_rev).await.unwrap();
    let snap = read_snapshot(&mut stream).await;
    let s = &snap[0];
    // The agent never held C: it comes in full, not as an ID the agent would drop.
    let full = s.upserts.iter().find(|e| e.id == c.id);
    assert_eq!(full, Some(&c), "C arrives in full: {s:?}");
    assert!(!s.unchanged_entry_ids.contains(&c.id));
    assert!(s.upserts.iter().any(|e| e.id == p.id));
    // What the agent did hold still goes by ID.
    assert_eq!(s.unchanged_entry_ids, std::slice::from_ref(&mine.id));
}
