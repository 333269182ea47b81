//! Clients we did not write, used unmodified against our agent: the crates.io `spiffe` crate
//! (Workload API client and `X509Source`) and `spiffe-rustls` (mTLS between two workloads whose
//! certificates come from X509Sources on our agent).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use rustls_pki_types::ServerName;
use spiffe::x509_source::SvidPicker;
use spiffe::{TrustDomain, WorkloadApiClient, X509Source, X509Svid};
use spiffe_rustls::{authorizer, mtls_client, mtls_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn endpoint(env: &Env) -> String {
    format!("unix:{}", env.agent().socket_path.display())
}

fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_crate_client_fetches_svids_and_bundles() {
    let env = Env::start().await;
    let mut e = env.entry("interop/default", uid());
    e.hint = "primary".into();
    env.create(e).await;
    let mut e = env.entry("interop/second", uid());
    e.hint = "secondary".into();
    env.create(e).await;

    let client = WorkloadApiClient::connect_to(endpoint(&env)).await.unwrap();
    // The crate parses and checks the SVID (leaf rules, key matches certificate).
    let svid = tokio::time::timeout(WAIT, client.fetch_x509_svid())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        format!("spiffe://{TD}/interop/default")
    );
    assert_eq!(svid.hint(), Some("primary"));
    let all = client.fetch_all_x509_svids().await.unwrap();
    let ids: Vec<_> = all.iter().map(|s| s.spiffe_id().to_string()).collect();
    assert_eq!(
        ids,
        [
            format!("spiffe://{TD}/interop/default"),
            format!("spiffe://{TD}/interop/second")
        ]
    );
    assert_eq!(all[1].hint(), Some("secondary"));

    let own = env.server.bundle().await;
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let b = bundles.get(&td()).expect("own bundle missing");
    let got: Vec<Vec<u8>> = b
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert_eq!(got, own.x509_authorities);

    let ctx = client.fetch_x509_context().await.unwrap();
    assert_eq!(ctx.svids().len(), 2);
    assert!(ctx.bundle_set().get(&td()).is_some());

    // The streaming API sees a new entry arrive.
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.svids().len(), 2);
    env.server
        .create_entry(env.entry("interop/third", uid()))
        .await;
    let next = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.svids().len(), 3);
    drop(stream);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_source_observes_rotation() {
    let env = Env::start().await;
    let mut e = env.entry("rotating", uid());
    e.x509_svid_ttl = 4;
    env.create(e).await;

    let source = tokio::time::timeout(WAIT, X509Source::builder().endpoint(endpoint(&env)).build())
        .await
        .unwrap()
        .unwrap();
    let first = source.svid().unwrap();
    assert_eq!(
        first.spiffe_id().to_string(),
        format!("spiffe://{TD}/rotating")
    );
    let first_leaf = first.leaf().as_bytes().to_vec();
    let expiry = not_after(&first_leaf);

    let mut updates = source.updated();
    let rotated = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            updates.changed().await.unwrap();
            let s = source.svid().unwrap();
            if s.leaf().as_bytes() != first_leaf.as_slice() {
                return s;
            }
        }
    })
    .await
    .expect("X509Source saw no rotation");
    assert!(
        std::time::SystemTime::now() < expiry,
        "rotation arrived after expiry"
    );
    assert_eq!(rotated.spiffe_id(), first.spiffe_id());
    assert_ne!(
        rotated.private_key().as_bytes(),
        first.private_key().as_bytes()
    );
    source.shutdown().await;
    env.shutdown().await;
}

/// Picks the SVID carrying a given hint.
#[derive(Debug)]
struct ByHint(&'static str);

impl SvidPicker for ByHint {
    fn pick_svid(&self, svids: &[Arc<X509Svid>]) -> Option<usize> {
        svids.iter().position(|s| s.hint() == Some(self.0))
    }
}

async fn source_with_hint(env: &Env, hint: &'static str) -> X509Source {
    tokio::time::timeout(
        WAIT,
        X509Source::builder()
            .endpoint(endpoint(env))
            .picker(ByHint(hint))
            .build(),
    )
    .await
    .unwrap()
    .unwrap()
}

/// Runs one handshake + echo; returns (server result, client result).
async fn mtls_round(
    server_cfg: rustls::ServerConfig,
    client_cfg: rustls::ClientConfig,
) -> (Result<String, String>, Result<String, String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_cfg));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no client certificate")?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        let id = sigil_core::validate::leaf_spiffe_id(&peer).map_err(|e| e.to_string())?;
        Ok::<_, String>(id.to_string())
    });
    let connector = TlsConnector::from(Arc::new(client_cfg));
    let client = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no server certificate")?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf != b"pong" {
            return Err("bad reply".to_string());
        }
        let id = sigil_core::validate::leaf_spiffe_id(&peer).map_err(|e| e.to_string())?;
        Ok::<_, String>(id.to_string())
    };
    let client = tokio::time::timeout(WAIT, client).await.unwrap();
    let server = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_rustls_mtls_between_two_workloads() {
    let env = Env::start().await;
    let server_id = format!("spiffe://{TD}/svc/server");
    let client_id = format!("spiffe://{TD}/svc/client");
    let mut e = env.entry("svc/server", uid());
    e.hint = "server".into();
    env.create(e).await;
    let mut e = env.entry("svc/client", uid());
    e.hint = "client".into();
    env.create(e).await;

    let server_src = source_with_hint(&env, "server").await;
    let client_src = source_with_hint(&env, "client").await;
    assert_eq!(
        server_src.svid().unwrap().spiffe_id().to_string(),
        server_id
    );
    assert_eq!(
        client_src.svid().unwrap().spiffe_id().to_string(),
        client_id
    );

    let server_cfg = |allowed: &str| {
        mtls_server(server_src.clone())
            .authorize(authorizer::exact([allowed]).unwrap())
            .build()
            .unwrap()
    };
    let client_cfg = |allowed: &str| {
        mtls_client(client_src.clone())
            .authorize(authorizer::exact([allowed]).unwrap())
            .build()
            .unwrap()
    };

    // Each side authorizes the other: the handshake succeeds and each sees the other's ID.
    let (s, c) = mtls_round(server_cfg(&client_id), client_cfg(&server_id)).await;
    assert_eq!(s.as_deref(), Ok(client_id.as_str()), "server side: {s:?}");
    assert_eq!(c.as_deref(), Ok(server_id.as_str()), "client side: {c:?}");

    // The server authorizes only someone else: the connection fails.
    let other = format!("spiffe://{TD}/svc/someone-else");
    let (s, c) = mtls_round(server_cfg(&other), client_cfg(&server_id)).await;
    assert!(s.is_err(), "server accepted an unauthorized client: {s:?}");
    assert!(
        c.is_err(),
        "client got a reply from a server that refused it"
    );

    // The client authorizes only someone else: the connection fails too.
    let (s, c) = mtls_round(server_cfg(&client_id), client_cfg(&other)).await;
    assert!(c.is_err(), "client accepted an unauthorized server: {c:?}");
    assert!(s.is_err());

    server_src.shutdown().await;
    client_src.shutdown().await;
    env.shutdown().await;
}
