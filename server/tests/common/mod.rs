//! Helpers shared by the server's integration tests: a real server (real sled store in a temp
//! dir, real mTLS on a loopback port, admin API on a Unix socket in the temp dir), admin clients,
//! and a test agent that attests with a join token and then calls the agent API with its SVID.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use sigil_core::keys::{self, KeyType};
use sigil_core::tls::{self, Authorizer, SvidResolver, TrustStore};
use sigil_core::{SpiffeId, TrustDomain};
use sigil_proto::sigil::v1 as pb;
use sigil_server::client::{admin_channel, node_channel};
use sigil_server::config::{Config, Overrides};
use sigil_server::serve::{self, Running};
use tonic::Code;
use tonic::transport::Channel;
use x509_parser::extensions::{GeneralName, ParsedExtension};

pub type NodeClient = pb::node_client::NodeClient<Channel>;
pub type EntriesClient = pb::entries_client::EntriesClient<Channel>;
pub type TokensClient = pb::tokens_client::TokensClient<Channel>;
pub type AgentsClient = pb::agents_client::AgentsClient<Channel>;
pub type BundlesClient = pb::bundles_client::BundlesClient<Channel>;
pub type HealthClient = pb::health_client::HealthClient<Channel>;

/// The trust domain every test server serves.
pub const TD: &str = "example.org";

/// How long any single wait for the server may take before a test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// `spiffe://example.org/sigil/server`.
pub fn server_id() -> SpiffeId {
    id(&format!("spiffe://{TD}/sigil/server"))
}

/// The agent ID a join token attests as.
pub fn agent_id_for(token: &str) -> SpiffeId {
    id(&format!("spiffe://{TD}/sigil/agent/join_token/{token}"))
}

/// A fresh unique path segment, so tests sharing nothing still never collide.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn selector(kind: &str, value: &str) -> pb::Selector {
    pb::Selector {
        r#type: kind.into(),
        value: value.into(),
    }
}

/// A valid entry for `spiffe_id` under `parent` with selector `unix:uid:1000`.
pub fn entry(spiffe_id: &str, parent: &str) -> pb::Entry {
    pb::Entry {
        spiffe_id: spiffe_id.into(),
        parent_id: parent.into(),
        selectors: vec![selector("unix", "uid:1000")],
        ..Default::default()
    }
}

/// A fresh P-256 key and a CSR for it, as an agent makes them.
pub fn key_and_csr() -> (KeyPair, Vec<u8>) {
    let key = keys::generate(KeyType::EcP256).unwrap();
    let csr = keys::csr_der(&key).unwrap();
    (key, csr)
}

pub fn csr() -> Vec<u8> {
    key_and_csr().1
}

/// Config for a server in `dir`: loopback port 0, admin socket and data in `dir`, plus `toml`.
/// Tests attest many agents from 127.0.0.1 in quick succession, so the per-address attestation
/// limit is off unless `toml` sets it (as the tests of the limit do).
pub fn config(dir: &Path, toml: &str) -> Config {
    let mut cfg = Config::from_toml(
        toml,
        Overrides {
            trust_domain: Some(TD.into()),
            bind_address: Some("127.0.0.1:0".into()),
            admin_socket_path: Some(dir.join("admin.sock")),
            data_dir: Some(dir.join("data")),
            ..Default::default()
        },
    )
    .unwrap();
    if !toml.contains("attestation_rate_limit") {
        cfg.attestation_rate_limit = 0;
    }
    cfg
}

/// Asserts `status` has `code` and its message mentions `needle`.
#[track_caller]
pub fn assert_status(status: &tonic::Status, code: Code, needle: &str) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should mention {needle:?}",
        status.message()
    );
}

/// Asserts a per-item result code and that its message starts by naming `field`.
#[track_caller]
pub fn assert_item(code: i32, message: &str, want: Code, field: &str) {
    assert_eq!(
        Code::from_i32(code),
        want,
        "unexpected item code {code} ({message:?}), wanted {want:?} naming {field:?}"
    );
    assert!(
        message.starts_with(&format!("{field}:")) || message.contains(field),
        "message {message:?} should name {field:?}"
    );
}

/// A server running in this process on a temp dir.
pub struct TestServer {
    pub running: Running,
    pub admin: Channel,
    /// Kept last so the directory outlives the server.
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// A server with the default configuration.
    pub async fn start() -> Self {
        Self::start_toml("").await
    }

    /// A server with extra TOML configuration.
    pub async fn start_toml(toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, toml).await
    }

    /// A server in an existing temp dir (whose files a test may have prepared).
    pub async fn start_in(dir: tempfile::TempDir, toml: &str) -> Self {
        let cfg = config(dir.path(), toml);
        let running = serve::start(cfg).await.unwrap();
        let admin = admin_channel(&running.admin_socket).await.unwrap();
        Self {
            running,
            admin,
            dir,
        }
    }

    pub fn entries(&self) -> EntriesClient {
        EntriesClient::new(self.admin.clone())
    }

    pub fn tokens(&self) -> TokensClient {
        TokensClient::new(self.admin.clone())
    }

    pub fn agents(&self) -> AgentsClient {
        AgentsClient::new(self.admin.clone())
    }

    pub fn bundles(&self) -> BundlesClient {
        BundlesClient::new(self.admin.clone())
    }

    pub fn health(&self) -> HealthClient {
        HealthClient::new(self.admin.clone())
    }

    /// The own bundle, through the admin API (how an agent operator gets the trust anchor).
    pub async fn bundle(&self) -> pb::Bundle {
        get_bundle(&self.admin).await
    }

    pub async fn roots(&self) -> Vec<CertificateDer<'static>> {
        roots_of(&self.bundle().await)
    }

    pub async fn join_token(&self, ttl: i64, alias: &str) -> String {
        self.tokens()
            .create_join_token(pb::CreateJoinTokenRequest {
                ttl,
                agent_alias_spiffe_id: alias.into(),
                token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .value
    }

    /// A Node client without a client certificate, as an agent before attestation.
    pub async fn bootstrap(&self) -> NodeClient {
        bootstrap_client(self.running.addr, &self.bundle().await).await
    }

    /// Creates a join token and attests a new agent with it.
    pub async fn attest(&self) -> TestAgent {
        let token = self.join_token(600, "").await;
        self.attest_token(&token).await
    }

    /// Attests a new agent with `token`; panics if refused.
    pub async fn attest_token(&self, token: &str) -> TestAgent {
        attest_agent(self.running.addr, &self.bundle().await, token)
            .await
            .unwrap()
    }

    /// Creates entries and asserts every one succeeded.
    pub async fn create_entries(&self, entries: Vec<pb::Entry>) -> Vec<pb::Entry> {
        create_entries(&self.admin, entries).await
    }

    pub async fn create_entry(&self, e: pb::Entry) -> pb::Entry {
        self.create_entries(vec![e]).await.remove(0)
    }

    /// The raw per-item results of a batch create.
    pub async fn try_create(&self, entries: Vec<pb::Entry>) -> Vec<pb::EntryResult> {
        self.entries()
            .batch_create_entry(pb::BatchCreateEntryRequest { entries })
            .await
            .unwrap()
            .into_inner()
            .results
    }

    /// Every entry, following pages.
    pub async fn list_entries(&self) -> Vec<pb::Entry> {
        list_entries(&self.admin).await
    }
}

pub async fn get_bundle(admin: &Channel) -> pb::Bundle {
    BundlesClient::new(admin.clone())
        .get_bundle(pb::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner()
}

pub async fn create_entries(admin: &Channel, entries: Vec<pb::Entry>) -> Vec<pb::Entry> {
    let results = EntriesClient::new(admin.clone())
        .batch_create_entry(pb::BatchCreateEntryRequest { entries })
        .await
        .unwrap()
        .into_inner()
        .results;
    results
        .into_iter()
        .map(|r| {
            assert_eq!(r.code, 0, "entry creation failed: {}", r.message);
            r.entry.unwrap()
        })
        .collect()
}

pub async fn list_entries(admin: &Channel) -> Vec<pb::Entry> {
    let mut client = EntriesClient::new(admin.clone());
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = client
            .list_entries(pb::ListEntriesRequest {
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(r.entries);
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

pub fn roots_of(bundle: &pb::Bundle) -> Vec<CertificateDer<'static>> {
    bundle
        .x509_authorities
        .iter()
        .map(|d| CertificateDer::from(d.to_vec()))
        .collect()
}

pub fn trust_of(bundle: &pb::Bundle) -> TrustStore {
    let trust = TrustStore::new();
    trust.set(td(), roots_of(bundle));
    trust
}

/// A Node client without a client certificate that authenticates the server by its SPIFFE ID.
pub async fn bootstrap_client(addr: std::net::SocketAddr, bundle: &pb::Bundle) -> NodeClient {
    let cfg = tls::client_config(None, trust_of(bundle), Authorizer::Exact(server_id())).unwrap();
    NodeClient::new(node_channel(addr, cfg).await.unwrap())
}

/// A Node client presenting `chain`/`key` as its client certificate.
pub async fn authenticated_client(
    addr: std::net::SocketAddr,
    bundle: &pb::Bundle,
    chain: &[Vec<u8>],
    key: &KeyPair,
) -> NodeClient {
    let resolver = Arc::new(SvidResolver::new());
    resolver
        .set(
            chain
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect(),
            &key.serialize_der(),
        )
        .unwrap();
    let cfg = tls::client_config(
        Some(resolver),
        trust_of(bundle),
        Authorizer::Exact(server_id()),
    )
    .unwrap();
    NodeClient::new(node_channel(addr, cfg).await.unwrap())
}

/// An attested agent with an authenticated connection to the agent API.
pub struct TestAgent {
    pub id: SpiffeId,
    pub token: String,
    pub svid: pb::X509Svid,
    pub bundle: pb::Bundle,
    pub key: KeyPair,
    pub node: NodeClient,
}

/// Attests with `token` over a bootstrap connection, then connects again with the new SVID.
pub async fn attest_agent(
    addr: std::net::SocketAddr,
    bundle: &pb::Bundle,
    token: &str,
) -> Result<TestAgent, tonic::Status> {
    let (key, csr) = key_and_csr();
    let mut boot = bootstrap_client(addr, bundle).await;
    let resp = boot
        .attest(pb::AttestRequest {
            attestation_type: "join_token".into(),
            attestation_data: token.as_bytes().to_vec(),
            csr,
        })
        .await?
        .into_inner();
    let svid = resp.svid.expect("attest response has an SVID");
    let bundle = resp.bundle.expect("attest response has a bundle");
    let chain: Vec<Vec<u8>> = svid.cert_chain.iter().map(|c| c.to_vec()).collect();
    let node = authenticated_client(addr, &bundle, &chain, &key).await;
    Ok(TestAgent {
        id: id(&svid.spiffe_id),
        token: token.into(),
        svid,
        bundle,
        key,
        node,
    })
}

impl TestAgent {
    pub fn id_str(&self) -> String {
        self.id.to_string()
    }

    /// Signs one CSR for `entry_id`; returns the per-item result.
    pub async fn sign(&self, entry_id: &str, csr: Vec<u8>) -> pb::SignX509SvidResult {
        let mut r = self
            .sign_batch(vec![(entry_id.to_owned(), csr)])
            .await
            .unwrap();
        assert_eq!(r.len(), 1);
        r.remove(0)
    }

    /// Signs a batch; the call's own status on failure.
    pub async fn sign_batch(
        &self,
        items: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<pb::SignX509SvidResult>, tonic::Status> {
        let params = items
            .into_iter()
            .map(|(entry_id, csr)| pb::SignX509SvidParam { entry_id, csr })
            .collect();
        Ok(self
            .node
            .clone()
            .batch_sign_x509_svid(pb::BatchSignX509SvidRequest { params })
            .await?
            .into_inner()
            .results)
    }

    /// Opens a sync stream from `last_revision`.
    pub async fn sync(
        &self,
        last_revision: u64,
    ) -> Result<tonic::Streaming<pb::SyncResponse>, tonic::Status> {
        Ok(self
            .node
            .clone()
            .sync(pb::SyncRequest { last_revision })
            .await?
            .into_inner())
    }
}

/// Validates an issued chain with sigil-core against `roots` and returns its SPIFFE ID.
#[track_caller]
pub fn validate(chain: &[Vec<u8>], roots: &[CertificateDer<'static>]) -> SpiffeId {
    let chain: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    sigil_core::validate_x509_svid(&chain, roots, SystemTime::now())
        .unwrap_or_else(|e| panic!("SVID does not validate: {e}"))
}

/// What a test checks in a certificate.
#[derive(Debug)]
pub struct CertInfo {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
    pub spki: Vec<u8>,
    pub serial: String,
    pub is_ca: bool,
}

pub fn cert_info(der: &[u8]) -> CertInfo {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    for ext in c.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
    }
    CertInfo {
        uris,
        dns,
        subject: c.subject().to_string(),
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        spki: c.public_key().raw.to_vec(),
        serial: c.raw_serial_as_string(),
        is_ca: c.is_ca(),
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Receives the next sync message, failing the test instead of hanging.
pub async fn next_msg(
    stream: &mut tonic::Streaming<pb::SyncResponse>,
) -> Result<pb::SyncResponse, tonic::Status> {
    match tokio::time::timeout(WAIT, stream.message()).await {
        Err(_) => panic!("no sync message within {WAIT:?}"),
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => panic!("sync stream ended without a status"),
        Ok(Err(s)) => Err(s),
    }
}

/// Reads a whole snapshot: from a `reset` message through the `complete` one.
pub async fn read_snapshot(
    stream: &mut tonic::Streaming<pb::SyncResponse>,
) -> Vec<pb::SyncResponse> {
    let mut msgs = Vec::new();
    loop {
        let m = next_msg(stream).await.unwrap();
        assert_eq!(m.reset, msgs.is_empty(), "reset only on the first page");
        let done = m.complete;
        msgs.push(m);
        if done {
            return msgs;
        }
    }
}

/// DER SubjectPublicKeyInfo of a key, as x509-parser shows a certificate's.
pub fn spki(key: &KeyPair) -> Vec<u8> {
    rcgen::PublicKeyData::subject_public_key_info(key)
}
