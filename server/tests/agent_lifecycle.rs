//! The agent lifecycle against a real server (real mTLS, real sled): bans and evictions that
//! renewals cannot undo, agent SVIDs that stop working once superseded, and node-alias entries
//! that are never issued, neither as X.509 nor as JWT.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use rcgen::KeyPair;
use sigil_proto::sigil::v1 as pb;
use tonic::{Code, Status};

/// Renewal loops that hammer the server with the agent's SVID while the test bans or evicts it.
struct Renewers {
    stop: Arc<AtomicBool>,
    renewed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Renewers {
    fn start(node: &NodeClient, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let renewed = Arc::new(AtomicUsize::new(0));
        let tasks = (0..n)
            .map(|_| {
                let (mut node, stop, renewed) =
                    (node.clone(), Arc::clone(&stop), Arc::clone(&renewed));
                let csr = csr();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let r = node
                            .renew_agent(pb::RenewAgentRequest { csr: csr.clone() })
                            .await;
                        if r.is_ok() {
                            renewed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            renewed,
            tasks,
        }
    }

    /// Waits until at least `n` renewals succeeded, so the race is really on.
    async fn wait_for(&self, n: usize) {
        tokio::time::timeout(WAIT, async {
            while self.renewed.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("renewals are succeeding");
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

/// Sync, BatchSignX509Svid, MintJwtSvid and RenewAgent with `node`, in that order.
async fn every_call(node: &NodeClient, entry_id: &str) -> Vec<(&'static str, Result<(), Status>)> {
    let mut n = node.clone();
    let sync = n.sync(pb::SyncRequest { last_revision: 0 }).await.map(drop);
    let sign = n
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            params: vec![pb::SignX509SvidParam {
                entry_id: entry_id.into(),
                csr: csr(),
            }],
        })
        .await
        .map(|r| {
            let r = r.into_inner().results.remove(0);
            assert_eq!(r.code, 0, "{}", r.error);
        });
    let mint = n
        .mint_jwt_svid(pb::MintJwtSvidRequest {
            entry_id: entry_id.into(),
            audience: vec!["aud".into()],
        })
        .await
        .map(drop);
    let renew = n
        .renew_agent(pb::RenewAgentRequest { csr: csr() })
        .await
        .map(drop);
    vec![
        ("Sync", sync),
        ("BatchSignX509Svid", sign),
        ("MintJwtSvid", mint),
        ("RenewAgent", renew),
    ]
}

#[track_caller]
fn assert_all_refused(results: &[(&str, Result<(), Status>)], code: Code) {
    for (call, r) in results {
        match r {
            Err(s) => assert_eq!(s.code(), code, "{call}: {s:?}"),
            Ok(()) => panic!("{call} succeeded, but must be refused with {code:?}"),
        }
    }
}

#[track_caller]
fn assert_all_ok(results: &[(&str, Result<(), Status>)]) {
    for (call, r) in results {
        assert!(r.is_ok(), "{call}: {r:?}");
    }
}

/// Renews with `node`; the new SVID's key and chain.
async fn renew(node: &NodeClient) -> (KeyPair, Vec<Vec<u8>>) {
    let (key, csr) = key_and_csr();
    let svid = node
        .clone()
        .renew_agent(pb::RenewAgentRequest { csr })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    (key, svid.cert_chain)
}

async fn workload_entry(srv: &TestServer, agent: &TestAgent) -> pb::Entry {
    srv.create_entry(entry(
        &format!("spiffe://{TD}/{}", unique("w")),
        &agent.id_str(),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_racing_a_ban_never_undo_it() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let e = workload_entry(&srv, &agent).await;
    let renewers = Renewers::start(&agent.node, 16);
    renewers.wait_for(16).await;

    let banned = srv
        .agents()
        .ban_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
        .unwrap()
        .into_inner();
    assert!(banned.banned);
    // Renewals that authenticated before the ban keep landing for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    renewers.stop().await;

    let rec = srv
        .agents()
        .get_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
        .unwrap()
        .into_inner();
    assert!(rec.banned, "a renewal undid the ban: {rec:?}");
    assert_all_refused(
        &every_call(&agent.node, &e.id).await,
        Code::PermissionDenied,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_racing_an_eviction_never_recreate_the_agent() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let e = workload_entry(&srv, &agent).await;
    let renewers = Renewers::start(&agent.node, 16);
    renewers.wait_for(16).await;

    srv.agents()
        .evict_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    renewers.stop().await;

    let err = srv
        .agents()
        .get_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
        .expect_err("a renewal recreated the evicted agent");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_all_refused(
        &every_call(&agent.node, &e.id).await,
        Code::PermissionDenied,
    );

    // Only a fresh attestation brings the agent back.
    srv.tokens()
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl: 600,
            agent_alias_spiffe_id: String::new(),
            token: agent.token.clone(),
        })
        .await
        .unwrap();
    let again = srv.attest_token(&agent.token).await;
    assert_eq!(again.id, agent.id);
    assert_all_ok(&every_call(&again.node, &e.id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_agent_svid_is_refused_on_every_call() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let e = workload_entry(&srv, &agent).await;
    // A sync stream opened with the SVID that is about to be replaced.
    let mut old_stream = agent.sync(0).await.unwrap();
    read_snapshot(&mut old_stream).await;

    let (key, chain) = renew(&agent.node).await;
    // Until the agent presents the new SVID, the previous one still works (the agent may not
    // have received the reply, or is still switching connections).
    let s = agent.sign(&e.id, csr()).await;
    assert_eq!(s.code, 0, "{}", s.error);

    let renewed = authenticated_client(srv.running.addr, &agent.bundle, &chain, &key).await;
    let r = renewed
        .clone()
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            params: vec![pb::SignX509SvidParam {
                entry_id: e.id.clone(),
                csr: csr(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].code, 0, "{}", r.results[0].error);

    // The agent has switched: the old SVID is refused on every call, on the very connection
    // it authenticated, and the stream opened with it ends.
    let results = every_call(&agent.node, &e.id).await;
    assert_all_refused(&results, Code::Unauthenticated);
    for (_, r) in &results {
        let msg = r.as_ref().unwrap_err().message();
        assert!(msg.contains("superseded"), "{msg}");
    }
    let end = next_msg(&mut old_stream)
        .await
        .expect_err("the stream on the superseded SVID ends");
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");

    // The renewed SVID does everything (renewal last: it supersedes this one in turn).
    assert_all_ok(&every_call(&renewed, &e.id).await);
    let rec = srv
        .agents()
        .get_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rec.x509_svid_serial, cert_info(&chain[0]).serial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_agent_svid_is_accepted_only_for_the_overlap() {
    // Long enough that two renewals on a loaded machine fit inside it.
    let srv = TestServer::start_toml("agent_svid_overlap = \"3s\"").await;
    let agent = srv.attest().await;
    let e = workload_entry(&srv, &agent).await;
    let (_, lost) = renew(&agent.node).await;
    // The reply could have been lost: a retry with the previous SVID is accepted...
    let (key, chain) = renew(&agent.node).await;
    assert_ne!(chain, lost);
    // ...but only for the overlap, even if the agent never presents the new SVID.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_all_refused(&every_call(&agent.node, &e.id).await, Code::Unauthenticated);
    let renewed = authenticated_client(srv.running.addr, &agent.bundle, &chain, &key).await;
    assert_all_ok(&every_call(&renewed, &e.id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_eviction_svid_is_refused_after_reattestation() {
    let srv = TestServer::start().await;
    let before = srv.attest().await;
    let e = workload_entry(&srv, &before).await;
    srv.agents()
        .evict_agent(pb::GetAgentRequest {
            id: before.id_str(),
        })
        .await
        .unwrap();
    srv.tokens()
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl: 600,
            agent_alias_spiffe_id: String::new(),
            token: before.token.clone(),
        })
        .await
        .unwrap();
    let after = srv.attest_token(&before.token).await;
    assert_eq!(after.id, before.id);

    // Same agent ID, still a valid certificate, but from the earlier attestation.
    assert_all_refused(
        &every_call(&before.node, &e.id).await,
        Code::Unauthenticated,
    );
    assert_all_ok(&every_call(&after.node, &e.id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_alias_entries_are_issued_neither_as_x509_nor_as_jwt() {
    let srv = TestServer::start().await;
    let alias = format!("spiffe://{TD}/node/{}", unique("rack"));
    let token = srv.join_token(600, &alias).await;
    let agent = srv.attest_token(&token).await;
    let alias_entry = srv
        .entries()
        .list_entries(pb::ListEntriesRequest {
            by_spiffe_id: alias.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .remove(0);
    assert!(alias_entry.selectors.is_empty());

    let r = agent.sign(&alias_entry.id, csr()).await;
    assert_item(r.code, &r.error, Code::PermissionDenied, "entry_id");
    assert!(r.error.contains("node alias"), "{}", r.error);
    let err = agent
        .node
        .clone()
        .mint_jwt_svid(pb::MintJwtSvidRequest {
            entry_id: alias_entry.id.clone(),
            audience: vec!["aud".into()],
        })
        .await
        .expect_err("no JWT-SVID for a node alias");
    assert_status(&err, Code::PermissionDenied, "entry_id");
    assert!(err.message().contains("node alias"), "{err:?}");

    // A workload entry behind the alias gets both.
    let child = srv
        .create_entry(entry(&format!("spiffe://{TD}/behind-alias"), &alias))
        .await;
    assert_eq!(agent.sign(&child.id, csr()).await.code, 0);
    let jwt = agent
        .node
        .clone()
        .mint_jwt_svid(pb::MintJwtSvidRequest {
            entry_id: child.id.clone(),
            audience: vec!["aud".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwt.spiffe_id, format!("spiffe://{TD}/behind-alias"));
}
