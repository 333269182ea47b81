//! Unauthenticated and expensive calls against a real server: attestation does its cheap,
//! read-only checks before any CSR verification or signing, is rate-limited per source
//! address, signing work is admitted within a global bound (a saturated CA refuses at once),
//! and every listener caps the HTTP/2 streams a connection may open.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use sigil_core::tls::{self, Authorizer};
use sigil_proto::sigil::v1 as pb;
use sigil_server::serve::MAX_CONCURRENT_STREAMS;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::Code;
use tonic::transport::Endpoint;

fn attest_req(token: &str, csr: Vec<u8>) -> pb::AttestRequest {
    pb::AttestRequest {
        attestation_type: "join_token".into(),
        attestation_data: token.as_bytes().to_vec(),
        csr,
    }
}

/// A Node client without a client certificate whose connection comes from `local`: any
/// 127.0.0.0/8 address is loopback on Linux, so this is another host to the server.
async fn bootstrap_from(local: IpAddr, addr: SocketAddr, bundle: &pb::Bundle) -> NodeClient {
    let cfg = tls::client_config(None, trust_of(bundle), Authorizer::Exact(server_id())).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let channel = Endpoint::from_static("http://sigil-server")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(local, 0))?;
                let tcp = socket.connect(addr).await?;
                let name = rustls_pki_types::ServerName::try_from("sigil-server")
                    .map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>(TokioIo::new(connector.connect(name, tcp).await?))
            }
        }))
        .await
        .unwrap();
    NodeClient::new(channel)
}

fn signed(srv: &TestServer) -> u64 {
    srv.running.state.signer.admitted()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_flood_does_not_delay_admin_writes() {
    let srv = TestServer::start_toml("attestation_rate_limit = 1").await;
    let bundle = srv.bundle().await;
    let before = signed(&srv);
    // Unknown tokens with well-formed CSRs: the old server verified and signed each one.
    let csr = csr();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(bootstrap_client(srv.running.addr, &bundle).await);
    }
    let started = Instant::now();
    let flood = tokio::spawn(async move {
        futures::stream::iter(0..400)
            .map(|i| {
                let mut client = clients[i % clients.len()].clone();
                let req = attest_req(&unique("bogus"), csr.clone());
                async move { client.attest(req).await.map(drop) }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await
    });

    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        srv.create_entry(entry(
            &format!("spiffe://{TD}/flood/{i}"),
            &format!("spiffe://{TD}/flood-parent"),
        ))
        .await;
        slowest = slowest.max(t.elapsed());
    }
    let results = flood.await.unwrap();
    let flood_took = started.elapsed();
    assert!(
        slowest < Duration::from_secs(1),
        "an entry create took {slowest:?} during the flood"
    );

    let limited = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    let denied = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::PermissionDenied))
        .count();
    assert_eq!(limited + denied, results.len(), "{results:?}");
    // One attestation per second from this address gets as far as the token check.
    let admitted = 2 + flood_took.as_secs() as usize;
    assert!(
        denied <= admitted,
        "{denied} bogus attestations passed the rate limit in {flood_took:?}"
    );
    assert_eq!(
        signed(&srv),
        before,
        "bogus attestations caused signing work"
    );

    // Still healthy: the admin API answers, a node at another address attests at once, and
    // this address may attest again once its bucket has refilled.
    srv.health().check(pb::HealthCheckRequest {}).await.unwrap();
    let token = srv.join_token(600, "").await;
    let other = Ipv4Addr::new(127, 0, 0, 2).into();
    bootstrap_from(other, srv.running.addr, &bundle)
        .await
        .attest(attest_req(&token, common::csr()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    srv.attest().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_checks_the_token_before_the_csr() {
    let srv = TestServer::start().await;
    let mut boot = srv.bootstrap().await;
    let garbage = b"not a CSR".to_vec();
    let before = signed(&srv);

    // Unknown token: refused without looking at the CSR, well-formed or not.
    for csr in [garbage.clone(), csr()] {
        let err = boot
            .attest(attest_req(&unique("unknown"), csr))
            .await
            .unwrap_err();
        assert_status(&err, Code::PermissionDenied, "join token");
    }

    // A banned agent's token (re-issued with the same value): refused alike.
    let agent = srv.attest().await;
    srv.agents()
        .ban_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
        .unwrap();
    srv.tokens()
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl: 600,
            agent_alias_spiffe_id: String::new(),
            token: agent.token.clone(),
        })
        .await
        .unwrap();
    let err = boot
        .attest(attest_req(&agent.token, garbage.clone()))
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, "join token");

    // An expired token.
    let token = srv.join_token(1, "").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = boot
        .attest(attest_req(&token, garbage.clone()))
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, "join token");

    // Only the one successful attestation above did signing work.
    assert_eq!(signed(&srv), before + 1);

    // A good token with a bad CSR is still InvalidArgument naming the field, and keeps the
    // token.
    let token = srv.join_token(600, "").await;
    let err = boot.attest(attest_req(&token, garbage)).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "csr");
    srv.attest_token(&token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_ca_refuses_signing_at_once() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let e = srv
        .create_entry(entry(&format!("spiffe://{TD}/busy"), &agent.id_str()))
        .await;
    let token = srv.join_token(600, "").await;
    let mut boot = srv.bootstrap().await;

    // Everything the CA may have pending is taken.
    let held = srv.running.state.signer.admit(u32::MAX).unwrap();
    let t = Instant::now();
    let err = agent
        .sign_batch(vec![(e.id.clone(), csr())])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let err = agent
        .node
        .clone()
        .renew_agent(pb::RenewAgentRequest { csr: csr() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let err = agent
        .node
        .clone()
        .mint_jwt_svid(pb::MintJwtSvidRequest {
            entry_id: e.id.clone(),
            audience: vec!["aud".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let err = boot.attest(attest_req(&token, csr())).await.unwrap_err();
    assert_status(&err, Code::ResourceExhausted, "retry");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "refusals took {took:?}");
    // Admin writes do not wait for the CA.
    srv.create_entry(entry(&format!("spiffe://{TD}/meanwhile"), &agent.id_str()))
        .await;

    drop(held);
    assert_eq!(agent.sign(&e.id, csr()).await.code, 0);
    // The refused attestation did not spend the token.
    srv.attest_token(&token).await;
}

/// The SETTINGS_MAX_CONCURRENT_STREAMS a server announces on `io`.
async fn announced_max_streams<T>(io: T, path: &str) -> usize
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    // Once a response is in, the server's SETTINGS have been applied.
    let (resp, _) = send.send_request(req, true).unwrap();
    tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    send.current_max_send_streams()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_caps_concurrent_streams() {
    let srv = TestServer::start().await;
    let bundle = srv.bundle().await;
    let cfg = tls::client_config(None, trust_of(&bundle), Authorizer::Exact(server_id())).unwrap();
    let tcp = tokio::net::TcpStream::connect(srv.running.addr)
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("sigil-server").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let want = MAX_CONCURRENT_STREAMS as usize;
    assert_eq!(
        announced_max_streams(tls, "/sigil.v1.Node/Attest").await,
        want
    );
    let unix = tokio::net::UnixStream::connect(&srv.running.admin_socket)
        .await
        .unwrap();
    assert_eq!(
        announced_max_streams(unix, "/sigil.v1.Health/Check").await,
        want
    );
}
