//! The agent checks what the server returns. The agent talks to a real server's agent API
//! through a second mTLS listener whose Node service passes every call to the real one but, for
//! chosen entries, swaps the SVID in the answer for one that is wrong: another SPIFFE ID,
//! another key than the CSR's, a chain to a CA outside the bundle, a JWT for another subject or
//! signed by an unpublished key; or refuses the entry. None of those may reach a workload, and
//! a refused entry is asked for again only after a back-off.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use sigil_core::keys::{self, KeyType};
use sigil_core::tls::{self, Authorizer, SvidResolver};
use sigil_core::x509::{self, CaSigner, LeafParams};
use sigil_core::{SpiffeId, TrustDomain};
use sigil_proto::sigil::v1 as pb;
use sigil_proto::workload as wl;
use sigil_server::api::node::Node as RealNode;
use sigil_server::state::State;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use pb::node_server::{Node as NodeApi, NodeServer};

/// What the tampering listener does to an entry's SVIDs.
#[derive(Clone, Debug)]
enum Fault {
    /// An X.509-SVID over the CSR's key, from the real CA, for this other identity.
    WrongId(SpiffeId),
    /// An X.509-SVID for the right identity, from the real CA, over a key of the server's own.
    WrongKey,
    /// An X.509-SVID for the right identity and key from a CA that is in no bundle.
    Untrusted,
    /// A per-entry PermissionDenied.
    Refuse,
    /// A JWT-SVID signed by the real key for this other identity (the reply still names the
    /// entry's identity).
    JwtWrongId(SpiffeId),
    /// A JWT-SVID for the right identity signed by a key that is not published.
    JwtUnpublished,
}

#[derive(Default)]
struct Faults {
    by_entry: HashMap<String, Fault>,
    /// Per entry ID, when each signing request for it arrived.
    sign_requests: HashMap<String, Vec<Instant>>,
}

#[derive(Clone)]
struct Tamper {
    real: RealNode,
    state: Arc<State>,
    faults: Arc<Mutex<Faults>>,
}

impl Tamper {
    fn fault(&self, entry_id: &str) -> Option<Fault> {
        self.faults.lock().unwrap().by_entry.get(entry_id).cloned()
    }

    fn bad_x509(&self, fault: &Fault, entry_spiffe_id: &str, csr: &[u8]) -> Vec<Vec<u8>> {
        let ca = &self.state.ca;
        let now = SystemTime::now();
        let ttl = Duration::from_secs(600);
        let right = SpiffeId::parse(entry_spiffe_id).unwrap();
        let key = keys::parse_csr(csr).unwrap();
        let chain = match fault {
            Fault::WrongId(other) => ca.sign_x509_svid(&key, other, &[], ttl, now).unwrap(),
            Fault::WrongKey => {
                let own = keys::generate(KeyType::EcP256).unwrap();
                let own = keys::parse_csr(&keys::csr_der(&own).unwrap()).unwrap();
                ca.sign_x509_svid(&own, &right, &[], ttl, now).unwrap()
            }
            Fault::Untrusted => {
                let td = TrustDomain::new(TD).unwrap();
                let rogue_key = keys::generate(KeyType::EcP256).unwrap();
                let cert = x509::self_signed_ca(&rogue_key, &td, ttl, now).unwrap();
                let rogue = CaSigner::new(cert, rogue_key, vec![]).unwrap();
                let params = LeafParams {
                    spiffe_id: right,
                    dns_names: vec![],
                    ttl,
                    now,
                    rsa_key: false,
                };
                rogue.sign_leaf(&key, &params).unwrap()
            }
            other => panic!("{other:?} is not an X.509 fault"),
        };
        chain.iter().map(|c| c.to_vec()).collect()
    }
}

#[tonic::async_trait]
impl NodeApi for Tamper {
    async fn attest(
        &self,
        req: Request<pb::AttestRequest>,
    ) -> Result<Response<pb::AttestResponse>, Status> {
        self.real.attest(req).await
    }

    async fn renew_agent(
        &self,
        req: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::RenewAgentResponse>, Status> {
        self.real.renew_agent(req).await
    }

    async fn batch_sign_x509_svid(
        &self,
        req: Request<pb::BatchSignX509SvidRequest>,
    ) -> Result<Response<pb::BatchSignX509SvidResponse>, Status> {
        let csrs: HashMap<String, Vec<u8>> = req
            .get_ref()
            .params
            .iter()
            .map(|p| (p.entry_id.clone(), p.csr.clone()))
            .collect();
        {
            let mut f = self.faults.lock().unwrap();
            for id in csrs.keys() {
                f.sign_requests
                    .entry(id.clone())
                    .or_default()
                    .push(Instant::now());
            }
        }
        let mut resp = self.real.batch_sign_x509_svid(req).await?;
        for r in &mut resp.get_mut().results {
            let Some(fault) = self.fault(&r.entry_id) else {
                continue;
            };
            if matches!(fault, Fault::JwtWrongId(_) | Fault::JwtUnpublished) {
                continue;
            }
            if matches!(fault, Fault::Refuse) {
                r.svid = None;
                r.code = Code::PermissionDenied as i32;
                r.error = "entry_id: refused by the test".into();
                continue;
            }
            let Some(svid) = r.svid.as_mut() else {
                continue;
            };
            svid.cert_chain = self.bad_x509(&fault, &svid.spiffe_id, &csrs[&r.entry_id]);
        }
        Ok(resp)
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<pb::MintJwtSvidRequest>,
    ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
        let entry_id = req.get_ref().entry_id.clone();
        let audience = req.get_ref().audience.clone();
        let mut resp = self.real.mint_jwt_svid(req).await?;
        let now = SystemTime::now();
        let ttl = Duration::from_secs(300);
        match self.fault(&entry_id) {
            Some(Fault::JwtWrongId(other)) => {
                let minted = self
                    .state
                    .ca
                    .jwt()
                    .sign(&other, &audience, ttl, None, now)
                    .unwrap();
                resp.get_mut().token = minted.token;
            }
            Some(Fault::JwtUnpublished) => {
                let right = SpiffeId::parse(&resp.get_ref().spiffe_id).unwrap();
                let k = sigil_core::jwt::generate_key(sigil_core::jwt::JwtKeyType::Es256).unwrap();
                let rogue =
                    sigil_core::jwt::JwtSigner::from_pkcs8("rogue".into(), &k.pkcs8).unwrap();
                let now = sigil_core::x509::unix_secs(now);
                resp.get_mut().token = rogue
                    .sign(&sigil_core::jwt::JwtClaims {
                        subject: &right,
                        audience: &audience,
                        issued_at: now,
                        expires_at: now + 300,
                        issuer: None,
                    })
                    .unwrap();
            }
            _ => {}
        }
        Ok(resp)
    }

    type SyncStream = <RealNode as NodeApi>::SyncStream;

    async fn sync(
        &self,
        req: Request<pb::SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        self.real.sync(req).await
    }
}

/// Serves [`Tamper`] over mTLS on a loopback port, presenting a server SVID of the real CA.
async fn tamper_listener(state: Arc<State>, faults: Arc<Mutex<Faults>>) -> SocketAddr {
    let resolver = Arc::new(SvidResolver::new());
    let (chain, key) = state
        .ca
        .server_svid(Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    resolver.set(chain, &key).unwrap();
    let td = TrustDomain::new(TD).unwrap();
    let cfg = tls::server_config(
        resolver,
        state.trust.clone(),
        Authorizer::MemberOf(td),
        false,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                }
            });
        }
    });
    let tamper = Tamper {
        real: RealNode(Arc::clone(&state)),
        state,
        faults,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeServer::new(tamper))
            .serve_with_incoming(ReceiverStream::new(rx)),
    );
    addr
}

/// A real server, the tampering listener in front of it, and an agent talking to the listener.
struct Harness {
    server: TestServer,
    agent: Option<sigil_agent::serve::Running>,
    faults: Arc<Mutex<Faults>>,
    alias: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Starts everything; `entries` (under the agent's alias, for `(path, fault)`) exist before
    /// the agent's first sync, so its first signing batch meets the faults.
    async fn start(entries: &[(&str, Option<Fault>)]) -> (Self, Vec<pb::Entry>) {
        init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("sc")
            .tempdir_in("/tmp")
            .unwrap();
        let server = TestServer::start(dir.path(), 0).await;
        let state = Arc::clone(&server.running.as_ref().unwrap().state);
        let faults = Arc::new(Mutex::new(Faults::default()));
        let addr = tamper_listener(state, Arc::clone(&faults)).await;
        let files = AgentFiles::in_dir(dir.path(), "agent");
        server.write_bundle_pem(&files.bundle_path).await;
        let alias = format!("spiffe://{TD}/node/{}", unique("n"));
        let token = server.join_token(&alias).await;
        let mut created = Vec::new();
        for (path, fault) in entries {
            let e = server.create_entry(entry(path, &alias, uid())).await;
            if let Some(f) = fault {
                faults
                    .lock()
                    .unwrap()
                    .by_entry
                    .insert(e.id.clone(), f.clone());
            }
            created.push(e);
        }
        let agent = start_agent(&files, addr, &token).await.unwrap();
        let h = Self {
            server,
            agent: Some(agent),
            faults,
            alias,
            _dir: dir,
        };
        (h, created)
    }

    fn cache(&self) -> &sigil_agent::cache::Cache {
        &self.agent.as_ref().unwrap().cache
    }

    fn requests(&self, entry_id: &str) -> Vec<Instant> {
        self.faults
            .lock()
            .unwrap()
            .sign_requests
            .get(entry_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until the agent has asked `n` times for an SVID for `entry_id`.
    async fn wait_requests(&self, entry_id: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.requests(entry_id).len() < n {
            assert!(
                Instant::now() < deadline,
                "the agent asked {} times for {entry_id} within {within:?}, wanted {n}",
                self.requests(entry_id).len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the agent serves an SVID for `entry_id`.
    async fn wait_svid(&self, entry_id: &str, within: Duration) {
        let mut rx = self.cache().subscribe();
        tokio::time::timeout(within, rx.wait_for(|s| s.svids.contains_key(entry_id)))
            .await
            .unwrap_or_else(|_| panic!("no SVID for {entry_id} within {within:?}"))
            .unwrap();
    }

    fn clear_faults(&self) {
        self.faults.lock().unwrap().by_entry.clear();
    }

    async fn shutdown(mut self) {
        if let Some(a) = self.agent.take() {
            tokio::time::timeout(WAIT, a.shutdown()).await.unwrap();
        }
        self.server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_svids_that_fail_the_checks_are_not_served() {
    let other = SpiffeId::parse(&format!("spiffe://{TD}/payments/admin")).unwrap();
    let (h, e) = Harness::start(&[
        ("good", None),
        ("wrong-id", Some(Fault::WrongId(other))),
        ("wrong-key", Some(Fault::WrongKey)),
        ("untrusted", Some(Fault::Untrusted)),
    ])
    .await;
    let (good, bad) = (&e[0], &e[1..]);
    h.wait_svid(&good.id, WAIT).await;
    for b in bad {
        h.wait_requests(&b.id, 1, WAIT).await;
    }
    // The batch that carried them is fully handled: the good SVID is served, the others not.
    let snap = h.cache().current();
    assert_eq!(snap.entries.len(), 5, "the alias and the four entries");
    for b in bad {
        assert!(
            !snap.svids.contains_key(b.id.as_str()),
            "{} was served although it fails the checks",
            b.spiffe_id
        );
    }
    // A workload sees only the good identity.
    let mut client =
        WorkloadClient::new(unix_channel(&h.agent.as_ref().unwrap().socket_path).await);
    let r = fetch_x509(&mut client).await;
    let ids: Vec<&str> = r.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, [good.spiffe_id.as_str()]);

    // Once the server answers correctly, the entries get their SVIDs after the back-off.
    h.clear_faults();
    for b in bad {
        h.wait_svid(&b.id, WAIT).await;
    }
    let snap = h.cache().current();
    let roots = h.server.bundle().await.x509_authorities;
    let roots: Vec<_> = roots
        .into_iter()
        .map(rustls_pki_types::CertificateDer::from)
        .collect();
    for b in bad {
        let svid = &snap.svids[b.id.as_str()];
        let chain: Vec<_> = svid
            .certs
            .iter()
            .map(|c| rustls_pki_types::CertificateDer::from(c.to_vec()))
            .collect();
        let id = sigil_core::validate_x509_svid(&chain, &roots, SystemTime::now()).unwrap();
        assert_eq!(id.to_string(), b.spiffe_id);
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_entry_is_retried_with_back_off() {
    let (h, e) = Harness::start(&[("fine", None), ("refused", Some(Fault::Refuse))]).await;
    let (fine, refused) = (&e[0], &e[1]);
    h.wait_svid(&fine.id, WAIT).await;
    h.wait_requests(&refused.id, 1, WAIT).await;
    let first = h.requests(&refused.id)[0];
    // Watch for five seconds after the first refusal: the agent waits 2 s, then 4 s.
    tokio::time::sleep_until((first + Duration::from_secs(5)).into()).await;
    let asked: Vec<Duration> = h
        .requests(&refused.id)
        .iter()
        .map(|t| t.duration_since(first))
        .collect();
    assert!(
        asked.len() <= 2,
        "a refused entry was asked for {} times in 5 s: {asked:?}",
        asked.len()
    );
    assert!(
        asked
            .iter()
            .skip(1)
            .all(|d| *d >= Duration::from_millis(1900)),
        "asked again too soon: {asked:?}"
    );
    // Changing the entry ends the wait: it is asked for (and, now allowed, issued) at once.
    h.clear_faults();
    let before = h.requests(&refused.id).len();
    let r = h
        .server
        .entries()
        .batch_update_entry(pb::BatchUpdateEntryRequest {
            entries: vec![pb::Entry {
                hint: "changed".into(),
                ..refused.clone()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    assert_eq!(r.code, 0, "{}", r.message);
    h.wait_svid(&refused.id, Duration::from_secs(2)).await;
    assert!(h.requests(&refused.id).len() > before);
    assert!(!h.alias.is_empty());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_that_fail_the_checks_are_not_served() {
    let other = SpiffeId::parse(&format!("spiffe://{TD}/payments/admin")).unwrap();
    let (h, e) = Harness::start(&[
        ("jwt-wrong-id", Some(Fault::JwtWrongId(other))),
        ("jwt-unpublished", Some(Fault::JwtUnpublished)),
    ])
    .await;
    for x in &e {
        h.wait_svid(&x.id, WAIT).await;
    }
    let mut client =
        WorkloadClient::new(unix_channel(&h.agent.as_ref().unwrap().socket_path).await);
    let fetch = |c: &mut WorkloadClient, id: &str| {
        let mut c = c.clone();
        let req = wreq(wl::JwtsvidRequest {
            audience: vec!["aud".into()],
            spiffe_id: id.into(),
        });
        async move { c.fetch_jwtsvid(req).await.map(Response::into_inner) }
    };
    for x in &e {
        let err = fetch(&mut client, &x.spiffe_id).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{}: {err:?}", x.spiffe_id);
        assert!(err.message().contains("verification"), "{err:?}");
    }
    // Nothing bad was cached: once the server answers correctly, the real token is served.
    h.clear_faults();
    let bundle = h.server.bundle().await;
    let bundle = sigil_core::Bundle {
        trust_domain: TrustDomain::new(TD).unwrap(),
        x509_authorities: vec![],
        jwt_authorities: bundle
            .jwt_authorities
            .into_iter()
            .map(|k| sigil_core::JwtAuthority {
                key_id: k.key_id,
                public_key_der: k.public_key,
                expires_at: k.expires_at,
            })
            .collect(),
        sequence: 0,
        refresh_hint: None,
    };
    for x in &e {
        let r = fetch(&mut client, &x.spiffe_id).await.unwrap();
        let now = sigil_core::x509::unix_secs(SystemTime::now());
        let v = sigil_core::jwt::verify(&r.svids[0].svid, "aud", &[&bundle], now).unwrap();
        assert_eq!(v.spiffe_id.to_string(), x.spiffe_id);
    }
    h.shutdown().await;
}
