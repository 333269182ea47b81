//! Real mutual-TLS handshakes over loopback TCP with the SPIFFE verifiers and resolvers.

mod common;

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use sigil_core::SpiffeId;
use sigil_core::keys::KeyType;
use sigil_core::tls::{self, Authorizer, SvidResolver, TrustStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TD: &str = "example.org";
const SERVER: &str = "spiffe://example.org/server";
const CLIENT: &str = "spiffe://example.org/client";

/// What one side learned from a successful exchange.
#[derive(Debug)]
struct Seen {
    peer: Option<SpiffeId>,
    alpn: Option<Vec<u8>>,
}

/// Runs both sides concurrently: the client sends "ping", the server answers "pong". Each side
/// reports its own outcome; a failure on either side shows up as an Err on at least that side.
async fn exchange(
    server: ServerConfig,
    client: ClientConfig,
) -> (io::Result<Seen>, io::Result<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));

    let server_side = async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        let (_, conn) = tls.get_ref();
        let seen = Seen {
            peer: conn.peer_certificates().and_then(tls::peer_id),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        };
        let _ = tls.shutdown().await;
        Ok(seen)
    };
    let client_side = async move {
        let tcp = TcpStream::connect(addr).await?;
        // The name is irrelevant: servers are authenticated by SPIFFE ID, not hostname.
        let name = ServerName::try_from("sigil.invalid").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        let (_, conn) = tls.get_ref();
        Ok(Seen {
            peer: conn.peer_certificates().and_then(tls::peer_id),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        })
    };
    let timed = async { tokio::join!(server_side, client_side) };
    tokio::time::timeout(Duration::from_secs(20), timed)
        .await
        .expect("handshake hung")
}

/// One trust domain with a server and a client SVID, both from `ca`.
struct World {
    ca: Ca,
    trust: TrustStore,
    server_svid: Arc<SvidResolver>,
    client_svid: Arc<SvidResolver>,
}

fn resolver_for(ca: &Ca, spiffe_id: &str, t: SystemTime) -> Arc<SvidResolver> {
    let (chain, key) = ca.leaf(spiffe_id, t);
    let r = Arc::new(SvidResolver::new());
    r.set(chain, &key.serialize_der()).unwrap();
    r
}

fn world() -> World {
    let t = SystemTime::now();
    let ca = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    let trust = TrustStore::new();
    trust.set(td(TD), vec![ca.cert.clone()]);
    World {
        server_svid: resolver_for(&ca, SERVER, t),
        client_svid: resolver_for(&ca, CLIENT, t),
        ca,
        trust,
    }
}

fn server_cfg(w: &World, authorizer: Authorizer, mandatory: bool) -> ServerConfig {
    tls::server_config(
        w.server_svid.clone(),
        w.trust.clone(),
        authorizer,
        mandatory,
    )
    .unwrap()
}

fn client_cfg(w: &World, authorizer: Authorizer) -> ClientConfig {
    tls::client_config(Some(w.client_svid.clone()), w.trust.clone(), authorizer).unwrap()
}

fn assert_ok(
    (server, client): (io::Result<Seen>, io::Result<Seen>),
    want_client_peer: Option<&str>,
) {
    let server = server.expect("server side failed");
    let client = client.expect("client side failed");
    assert_eq!(client.peer, Some(id(SERVER)), "client sees the server's ID");
    assert_eq!(
        server.peer,
        want_client_peer.map(id),
        "server sees the client's ID"
    );
    assert_eq!(server.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(client.alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn mutual_tls_with_exact_ids() {
    let w = world();
    let r = exchange(
        server_cfg(&w, Authorizer::Exact(id(CLIENT)), true),
        client_cfg(&w, Authorizer::Exact(id(SERVER))),
    )
    .await;
    assert_ok(r, Some(CLIENT));
}

#[tokio::test]
async fn mutual_tls_with_member_of_and_other_authorizers() {
    let w = world();
    let r = exchange(
        server_cfg(&w, Authorizer::MemberOf(td(TD)), true),
        client_cfg(&w, Authorizer::Exact(id(SERVER))),
    )
    .await;
    assert_ok(r, Some(CLIENT));

    let r = exchange(
        server_cfg(
            &w,
            Authorizer::OneOf(vec![id("spiffe://example.org/x"), id(CLIENT)]),
            true,
        ),
        client_cfg(&w, Authorizer::MemberOf(td(TD))),
    )
    .await;
    assert_ok(r, Some(CLIENT));

    let r = exchange(
        server_cfg(
            &w,
            Authorizer::Predicate(Arc::new(|id| id.path().starts_with("/cli"))),
            true,
        ),
        client_cfg(&w, Authorizer::Any),
    )
    .await;
    assert_ok(r, Some(CLIENT));
}

#[tokio::test]
async fn fails_when_the_client_expects_another_server_id() {
    let w = world();
    let (server, client) = exchange(
        server_cfg(&w, Authorizer::MemberOf(td(TD)), true),
        client_cfg(&w, Authorizer::Exact(id("spiffe://example.org/other"))),
    )
    .await;
    let err = client.expect_err("client must refuse the server");
    assert!(
        err.to_string().contains("ApplicationVerificationFailure"),
        "{err}"
    );
    assert!(server.is_err(), "server must see the refusal");

    let (_, client) = exchange(
        server_cfg(&w, Authorizer::MemberOf(td(TD)), true),
        client_cfg(&w, Authorizer::MemberOf(td("other.org"))),
    )
    .await;
    assert!(client.is_err());
}

#[tokio::test]
async fn fails_when_the_server_refuses_the_client_id() {
    let w = world();
    let (server, _client) = exchange(
        server_cfg(
            &w,
            Authorizer::Exact(id("spiffe://example.org/admin")),
            true,
        ),
        client_cfg(&w, Authorizer::Exact(id(SERVER))),
    )
    .await;
    let err = server.expect_err("server must refuse the client");
    assert!(
        err.to_string().contains("ApplicationVerificationFailure"),
        "{err}"
    );
}

#[tokio::test]
async fn fails_when_the_client_trusts_a_foreign_bundle() {
    let w = world();
    let foreign = Ca::root(TD, KeyType::EcP256, 24 * HOUR, SystemTime::now());
    let client_trust = TrustStore::new();
    client_trust.set(td(TD), vec![foreign.cert.clone()]);
    let client =
        tls::client_config(Some(w.client_svid.clone()), client_trust, Authorizer::Any).unwrap();
    let (server, client) = exchange(server_cfg(&w, Authorizer::Any, true), client).await;
    let err = client.expect_err("client must not trust the server");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(server.is_err());

    // A store without any bundle for the server's trust domain is no better.
    let client = tls::client_config(None, TrustStore::new(), Authorizer::Any).unwrap();
    let (_, client) = exchange(server_cfg(&w, Authorizer::Any, false), client).await;
    assert!(client.is_err());
}

#[tokio::test]
async fn fails_when_the_server_does_not_trust_the_clients_domain() {
    let w = world();
    let t = SystemTime::now();
    let other = Ca::root("other.org", KeyType::EcP384, 24 * HOUR, t);
    let client_svid = resolver_for(&other, "spiffe://other.org/client", t);
    let client = tls::client_config(Some(client_svid), w.trust.clone(), Authorizer::Any).unwrap();
    let (server, _) = exchange(server_cfg(&w, Authorizer::Any, true), client).await;
    assert!(server.is_err(), "no bundle for other.org on the server");

    // Once the server learns other.org's bundle, the same client gets in.
    w.trust.set(td("other.org"), vec![other.cert.clone()]);
    let client_svid = resolver_for(&other, "spiffe://other.org/client", t);
    let client = tls::client_config(Some(client_svid), w.trust.clone(), Authorizer::Any).unwrap();
    let (server, client) = exchange(server_cfg(&w, Authorizer::Any, true), client).await;
    client.unwrap();
    assert_eq!(server.unwrap().peer, Some(id("spiffe://other.org/client")));
}

#[tokio::test]
async fn mandatory_client_auth_refuses_a_client_without_svid() {
    let w = world();
    // No resolver at all.
    let client = tls::client_config(None, w.trust.clone(), Authorizer::Exact(id(SERVER))).unwrap();
    let (server, client) = exchange(server_cfg(&w, Authorizer::Any, true), client).await;
    let err = server.expect_err("server must require a client certificate");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(client.is_err(), "client must see the alert");

    // A resolver that holds no SVID yet.
    let empty = Arc::new(SvidResolver::new());
    let client = tls::client_config(Some(empty), w.trust.clone(), Authorizer::Any).unwrap();
    let (server, _) = exchange(server_cfg(&w, Authorizer::Any, true), client).await;
    assert!(server.is_err());
}

#[tokio::test]
async fn optional_client_auth_lets_a_client_without_svid_in() {
    let w = world();
    let client = tls::client_config(None, w.trust.clone(), Authorizer::Exact(id(SERVER))).unwrap();
    let r = exchange(server_cfg(&w, Authorizer::Exact(id(CLIENT)), false), client).await;
    assert_ok(r, None);

    let empty = Arc::new(SvidResolver::new());
    let client = tls::client_config(Some(empty), w.trust.clone(), Authorizer::Any).unwrap();
    let r = exchange(server_cfg(&w, Authorizer::Any, false), client).await;
    assert_ok(r, None);

    // A client that does present an SVID is still verified and authorized.
    let r = exchange(
        server_cfg(&w, Authorizer::Exact(id(CLIENT)), false),
        client_cfg(&w, Authorizer::Any),
    )
    .await;
    assert_ok(r, Some(CLIENT));
    let (server, _) = exchange(
        server_cfg(
            &w,
            Authorizer::Exact(id("spiffe://example.org/admin")),
            false,
        ),
        client_cfg(&w, Authorizer::Any),
    )
    .await;
    assert!(server.is_err());
}

#[tokio::test]
async fn server_without_svid_fails() {
    let w = world();
    let server = tls::server_config(
        Arc::new(SvidResolver::new()),
        w.trust.clone(),
        Authorizer::Any,
        false,
    )
    .unwrap();
    let (server, client) = exchange(server, client_cfg(&w, Authorizer::Any)).await;
    assert!(server.is_err());
    assert!(client.is_err());
}

#[tokio::test]
async fn chains_through_intermediates_and_rotation() {
    let w = world();
    let t = SystemTime::now();
    // The server's SVID comes from an intermediate: it presents [leaf, intermediate] and the
    // client holds only the root.
    let int = Ca::intermediate(&w.ca, TD, HOUR, t);
    let (chain, key) = int.leaf(SERVER, t);
    assert_eq!(chain.len(), 2);
    w.server_svid.set(chain, &key.serialize_der()).unwrap();
    let r = exchange(
        server_cfg(&w, Authorizer::Exact(id(CLIENT)), true),
        client_cfg(&w, Authorizer::Exact(id(SERVER))),
    )
    .await;
    assert_ok(r, Some(CLIENT));

    // Rotating the trust store takes effect on the next handshake of existing configs.
    let server = server_cfg(&w, Authorizer::Any, true);
    let client = client_cfg(&w, Authorizer::Any);
    let foreign = Ca::root(TD, KeyType::EcP256, HOUR, t);
    w.trust.set(td(TD), vec![foreign.cert.clone()]);
    let (server_r, client_r) = exchange(server, client).await;
    assert!(server_r.is_err() || client_r.is_err());
    assert!(client_r.is_err(), "client no longer trusts the server");

    // Trusting both the old and the new root (a rotation overlap) works again.
    w.trust
        .set(td(TD), vec![foreign.cert.clone(), w.ca.cert.clone()]);
    let r = exchange(
        server_cfg(&w, Authorizer::Any, true),
        client_cfg(&w, Authorizer::Any),
    )
    .await;
    assert_ok(r, Some(CLIENT));

    w.trust.remove(&td(TD));
    assert!(w.trust.roots(&td(TD)).is_none());
}

#[test]
fn svid_resolver_refuses_a_key_that_is_not_the_leafs() {
    let t = SystemTime::now();
    let ca = Ca::root(TD, KeyType::EcP256, HOUR, t);
    let (chain, key) = ca.leaf(SERVER, t);
    let (_, other_key) = ca.leaf(SERVER, t);
    let r = SvidResolver::new();
    assert!(r.set(chain.clone(), &other_key.serialize_der()).is_err());
    assert!(r.set(vec![], &key.serialize_der()).is_err());
    assert!(r.set(chain.clone(), b"not a key").is_err());
    r.set(chain, &key.serialize_der()).unwrap();
}

#[test]
fn trust_store_verify_uses_the_leafs_trust_domain() {
    let t = SystemTime::now();
    let a = Ca::root("a.org", KeyType::EcP256, HOUR, t);
    let b = Ca::root("b.org", KeyType::EcP256, HOUR, t);
    let store = TrustStore::new();
    store.set(td("a.org"), vec![a.cert.clone()]);
    store.set(td("b.org"), vec![b.cert.clone()]);
    let (chain, _) = a.leaf("spiffe://a.org/w", t);
    assert_eq!(store.verify(&chain, t).unwrap(), id("spiffe://a.org/w"));
    // A leaf claiming b.org but signed by a.org's CA must not pass with a.org's roots.
    let (chain, _) = a.leaf("spiffe://b.org/w", t);
    assert!(store.verify(&chain, t).is_err());
    assert!(store.verify(&[] as &[CertificateDer<'_>], t).is_err());
    assert_eq!(tls::peer_id(&chain), Some(id("spiffe://b.org/w")));
    assert_eq!(tls::peer_id(&[]), None);
}
