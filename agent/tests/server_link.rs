//! The agent's link to a real in-process server: after renewing its SVID the agent moves to
//! connections that present the new one (the server soon refuses the old one), a
//! rate-limited attestation is retried, and the admin socket caps concurrent HTTP/2 streams.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sigil_proto::sigil::v1 as pb;
use sigil_proto::workload as wl;
use tonic::transport::Channel;

type AgentsClient = pb::agents_client::AgentsClient<Channel>;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sl")
        .tempdir_in("/tmp")
        .unwrap()
}

/// The serial of the agent SVID the server has on record for `id`.
async fn recorded_serial(server: &TestServer, id: &str) -> String {
    AgentsClient::new(server.admin.clone())
        .get_agent(pb::GetAgentRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .x509_svid_serial
}

/// Waits until the server records an agent SVID other than `old`, and returns it.
async fn next_serial(server: &TestServer, id: &str, old: &str) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            let s = recorded_serial(server, id).await;
            if s != old {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the agent did not renew its SVID")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_renewal_the_agent_carries_on_with_its_new_svid() {
    init_tracing();
    let dir = tempdir();
    // Agent SVIDs live 6 s (renewed after 3 s); the previous one is accepted 1 s at most.
    let server = TestServer::start_with(
        dir.path(),
        0,
        "attestation_rate_limit = 0\ndefault_x509_svid_ttl = \"6s\"\nagent_svid_overlap = \"1s\"\n",
    )
    .await;
    let files = AgentFiles::in_dir(dir.path(), "agent");
    server.write_bundle_pem(&files.bundle_path).await;
    let alias = format!("spiffe://{TD}/node/{}", unique("n"));
    let token = server.join_token(&alias).await;
    let agent = start_agent(&files, server.addr, &token).await.unwrap();
    let first = recorded_serial(&server, &agent.agent_id).await;
    let second = next_serial(&server, &agent.agent_id, &first).await;
    // Past the overlap, only the renewed SVID is accepted.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A new registration still reaches the workload: synced and signed over a connection
    // that presents the renewed SVID.
    let e = server
        .create_entry(entry(&unique("after-renewal"), &alias, uid()))
        .await;
    let mut client = WorkloadClient::new(unix_channel(&agent.socket_path).await);
    tokio::time::timeout(WAIT, async {
        loop {
            // PermissionDenied ("no identity issued") until the SVID is there.
            if let Ok(r) = client.fetch_x509svid(wreq(wl::X509svidRequest {})).await
                && let Ok(Some(m)) = r.into_inner().message().await
                && m.svids.iter().any(|s| s.spiffe_id == e.spiffe_id)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the new entry's SVID never reached the workload");
    assert!(!agent.cache.is_denied());
    // The next renewal presents the renewed SVID, and is accepted.
    next_serial(&server, &agent.agent_id, &second).await;

    tokio::time::timeout(WAIT, agent.shutdown()).await.unwrap();
    let mut server = server;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_attestation_is_retried() {
    init_tracing();
    let dir = tempdir();
    let mut server = TestServer::start_with(dir.path(), 0, "attestation_rate_limit = 1\n").await;
    let mut agents = Vec::new();
    let t = Instant::now();
    // Two nodes behind one address joining at once: the second is refused at first.
    for name in ["a", "b"] {
        let files = AgentFiles::in_dir(dir.path(), name);
        server.write_bundle_pem(&files.bundle_path).await;
        let token = server.join_token("").await;
        agents.push(start_agent(&files, server.addr, &token).await.unwrap());
    }
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_ne!(agents[0].agent_id, agents[1].agent_id);
    for a in agents {
        tokio::time::timeout(WAIT, a.shutdown()).await.unwrap();
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_socket_caps_concurrent_streams() {
    let env = Env::start().await;
    let io = tokio::net::UnixStream::connect(&env.files.admin_socket_path)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("http://localhost/sigil.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    // Once a response is in, the agent's SETTINGS have been applied.
    let (resp, _) = send.send_request(req, true).unwrap();
    tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    assert_eq!(
        send.current_max_send_streams(),
        sigil_agent::serve::ADMIN_MAX_CONCURRENT_STREAMS as usize
    );
    env.shutdown().await;
}
