//! Pruning against a real server: expired join tokens go away on the server's own schedule,
//! and agents whose SVID expired long ago are deleted only when configured (never banned
//! ones).

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use sigil_proto::sigil::v1 as pb;
use sigil_server::prune::prune_once;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_join_tokens_are_pruned_periodically() {
    let srv = TestServer::start_toml("prune_interval = \"1s\"").await;
    let short = srv.join_token(1, "").await;
    let long = srv.join_token(600, "").await;
    let store = &srv.running.state.store;
    assert!(store.get_join_token(&short).unwrap().is_some());
    tokio::time::timeout(WAIT, async {
        while store.get_join_token(&short).unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the expired join token was never pruned");
    assert!(store.get_join_token(&long).unwrap().is_some());
    srv.attest_token(&long).await;
}

async fn agent_exists(srv: &TestServer, agent: &TestAgent) -> bool {
    match srv
        .agents()
        .get_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
    {
        Ok(_) => true,
        Err(s) if s.code() == Code::NotFound => false,
        Err(s) => panic!("{s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_agents_are_kept_by_default() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let much_later = SystemTime::now() + Duration::from_secs(30 * 24 * 3600);
    let pruned = prune_once(&srv.running.state, much_later).await.unwrap();
    assert_eq!(pruned.agents, 0);
    assert!(agent_exists(&srv, &agent).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_expired_agents_are_pruned_when_configured_but_bans_stay() {
    let srv = TestServer::start_toml("prune_attested_agents_expired_for = \"1h\"").await;
    let idle = srv.attest().await;
    let banned = srv.attest().await;
    srv.agents()
        .ban_agent(pb::GetAgentRequest {
            id: banned.id_str(),
        })
        .await
        .unwrap();
    let mut stream = idle.sync(0).await.unwrap();
    read_snapshot(&mut stream).await;

    // Agent SVIDs live 1h. Half an hour after they expired, nothing is pruned yet.
    let now = SystemTime::now();
    let pruned = prune_once(&srv.running.state, now + Duration::from_secs(5400))
        .await
        .unwrap();
    assert_eq!(pruned.agents, 0);
    assert!(agent_exists(&srv, &idle).await);

    // An hour and a half after: the idle agent goes, the banned one stays banned.
    let pruned = prune_once(&srv.running.state, now + Duration::from_secs(9000))
        .await
        .unwrap();
    assert_eq!(pruned.agents, 1);
    assert!(!agent_exists(&srv, &idle).await);
    let rec = srv
        .agents()
        .get_agent(pb::GetAgentRequest {
            id: banned.id_str(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rec.banned);
    // The pruned agent's stream ends and its SVID no longer works.
    let end = next_msg(&mut stream).await.unwrap_err();
    assert_eq!(end.code(), Code::PermissionDenied, "{end:?}");
    let err = idle.sync(0).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}
