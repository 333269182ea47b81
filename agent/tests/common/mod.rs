//! Helpers shared by the agent's integration tests: a real server in this process (sled store in
//! a temp dir, mTLS on a loopback port, admin API on a Unix socket), a real agent started with
//! `sigil_agent::serve::start` on temp-dir sockets, and Workload API clients over those sockets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use sigil_proto::sigil::v1 as pb;
use sigil_proto::workload as wl;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Streaming};

/// Trust domain of every test server.
pub const TD: &str = "example.org";

/// Upper bound for any single wait, so a broken test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(15);

pub type EntriesClient = pb::entries_client::EntriesClient<Channel>;
pub type TokensClient = pb::tokens_client::TokensClient<Channel>;
pub type BundlesClient = pb::bundles_client::BundlesClient<Channel>;
pub type WorkloadClient = wl::spiffe_workload_api_client::SpiffeWorkloadApiClient<Channel>;

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// This process's effective uid, which the agent sees through `SO_PEERCRED`.
pub fn uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// `unix:uid:<uid>`.
pub fn uid_selector(uid: u32) -> pb::Selector {
    pb::Selector {
        r#type: "unix".into(),
        value: format!("uid:{uid}"),
    }
}

/// A fresh path segment, unique across tests.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_like())
}

fn uuid_like() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

/// Connects a gRPC channel over the Unix socket at `path`.
pub async fn unix_channel(path: &Path) -> Channel {
    let path: PathBuf = path.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .unwrap()
}

/// A request carrying `workload.spiffe.io: true`.
pub fn wreq<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(sigil_proto::WORKLOAD_HEADER, "true".parse().unwrap());
    r
}

/// A server running in this process.
pub struct TestServer {
    pub running: Option<sigil_server::serve::Running>,
    pub addr: SocketAddr,
    pub admin: Channel,
    pub data_dir: PathBuf,
    pub admin_socket: PathBuf,
}

impl TestServer {
    /// Starts a server with data and admin socket under `dir`, on `port` (0 = any).
    pub async fn start(dir: &Path, port: u16) -> Self {
        Self::start_with(dir, port, "attestation_rate_limit = 0\n").await
    }

    /// As [`TestServer::start`], with `extra` server TOML (which then also decides the
    /// per-address attestation limit).
    pub async fn start_with(dir: &Path, port: u16, extra: &str) -> Self {
        let data_dir = dir.join("server-data");
        let admin_socket = dir.join("server.sock");
        let toml = format!(
            "trust_domain = \"{TD}\"\nbind_address = \"127.0.0.1:{port}\"\n\
             admin_socket_path = \"{}\"\ndata_dir = \"{}\"\n{extra}",
            admin_socket.display(),
            data_dir.display()
        );
        let cfg = sigil_server::config::Config::from_toml(&toml, Default::default()).unwrap();
        let running = sigil_server::serve::start(cfg).await.unwrap();
        let admin = sigil_server::client::admin_channel(&running.admin_socket)
            .await
            .unwrap();
        Self {
            addr: running.addr,
            running: Some(running),
            admin,
            data_dir,
            admin_socket,
        }
    }

    /// Stops the server (listeners, sync streams, store).
    pub async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            tokio::time::timeout(WAIT, r.shutdown())
                .await
                .expect("server shutdown hung");
        }
    }

    pub fn entries(&self) -> EntriesClient {
        EntriesClient::new(self.admin.clone())
    }

    pub fn tokens(&self) -> TokensClient {
        TokensClient::new(self.admin.clone())
    }

    pub fn bundles(&self) -> BundlesClient {
        BundlesClient::new(self.admin.clone())
    }

    /// The own bundle from the admin API.
    pub async fn bundle(&self) -> pb::Bundle {
        self.bundles()
            .get_bundle(pb::GetBundleRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// Writes the own bundle as PEM to `path` (the agent's `trust_bundle_path`).
    pub async fn write_bundle_pem(&self, path: &Path) {
        let b = self.bundle().await;
        let pem: String = b
            .x509_authorities
            .iter()
            .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone())))
            .collect();
        std::fs::write(path, pem).unwrap();
    }

    /// A join token; with `alias`, a node alias entry with that SPIFFE ID is created for it.
    pub async fn join_token(&self, alias: &str) -> String {
        self.tokens()
            .create_join_token(pb::CreateJoinTokenRequest {
                ttl: 600,
                agent_alias_spiffe_id: alias.into(),
                token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .value
    }

    /// Creates entries and returns them as stored; panics if any item failed.
    pub async fn create_entries(&self, entries: Vec<pb::Entry>) -> Vec<pb::Entry> {
        let resp = self
            .entries()
            .batch_create_entry(pb::BatchCreateEntryRequest { entries })
            .await
            .unwrap()
            .into_inner();
        resp.results
            .into_iter()
            .map(|r| {
                assert_eq!(r.code, 0, "entry creation failed: {}", r.message);
                r.entry.unwrap()
            })
            .collect()
    }

    pub async fn create_entry(&self, e: pb::Entry) -> pb::Entry {
        self.create_entries(vec![e]).await.remove(0)
    }

    pub async fn delete_entry(&self, id: &str) {
        let r = self
            .entries()
            .batch_delete_entry(pb::BatchDeleteEntryRequest {
                ids: vec![id.into()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.results[0].code, 0, "{}", r.results[0].message);
    }
}

/// An entry for `spiffe://example.org/<path>` under `parent`, matching `unix:uid:<uid>`.
pub fn entry(path: &str, parent: &str, uid: u32) -> pb::Entry {
    pb::Entry {
        spiffe_id: format!("spiffe://{TD}/{path}"),
        parent_id: parent.into(),
        selectors: vec![uid_selector(uid)],
        ..Default::default()
    }
}

/// Agent settings a test chooses.
pub struct AgentFiles {
    pub data_dir: PathBuf,
    pub socket_path: PathBuf,
    pub admin_socket_path: PathBuf,
    pub bundle_path: PathBuf,
}

impl AgentFiles {
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            data_dir: dir.join(format!("{name}-data")),
            socket_path: dir.join(format!("{name}/api.sock")),
            admin_socket_path: dir.join(format!("{name}-admin/admin.sock")),
            bundle_path: dir.join("bundle.pem"),
        }
    }
}

/// Starts an agent against `server_addr` with the given files and join token.
pub async fn start_agent(
    files: &AgentFiles,
    server_addr: SocketAddr,
    token: &str,
) -> Result<sigil_agent::serve::Running, sigil_agent::serve::StartError> {
    let cfg = sigil_agent::config::Config::from_toml(
        &agent_toml(files, server_addr, token, ""),
        Default::default(),
    )
    .unwrap();
    sigil_agent::serve::start(cfg).await
}

/// The agent configuration [`start_agent`] uses, with `extra` TOML lines appended.
pub fn agent_toml(files: &AgentFiles, server_addr: SocketAddr, token: &str, extra: &str) -> String {
    format!(
        "trust_domain = \"{TD}\"\nserver_address = \"{server_addr}\"\n\
         trust_bundle_path = \"{}\"\njoin_token = \"{token}\"\ndata_dir = \"{}\"\n\
         socket_path = \"{}\"\nadmin_socket_path = \"{}\"\nworkload_binary_sha256 = false\n{extra}\n",
        files.bundle_path.display(),
        files.data_dir.display(),
        files.socket_path.display(),
        files.admin_socket_path.display(),
    )
}

/// A server and one agent attested with a join token whose node alias is `alias`.
pub struct Env {
    pub server: TestServer,
    pub agent: Option<sigil_agent::serve::Running>,
    pub files: AgentFiles,
    pub alias: String,
    pub token: String,
    /// Kept last: removed after everything else is dropped.
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn start() -> Self {
        init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("sa")
            .tempdir_in("/tmp")
            .unwrap();
        let server = TestServer::start(dir.path(), 0).await;
        let files = AgentFiles::in_dir(dir.path(), "agent");
        server.write_bundle_pem(&files.bundle_path).await;
        let alias = format!("spiffe://{TD}/node/{}", unique("n"));
        let token = server.join_token(&alias).await;
        let agent = start_agent(&files, server.addr, &token).await.unwrap();
        Self {
            server,
            agent: Some(agent),
            files,
            alias,
            token,
            dir,
        }
    }

    pub fn agent(&self) -> &sigil_agent::serve::Running {
        self.agent.as_ref().unwrap()
    }

    /// An entry for `path` under this agent's alias for `uid`.
    pub fn entry(&self, path: &str, uid: u32) -> pb::Entry {
        entry(path, &self.alias, uid)
    }

    pub async fn client(&self) -> WorkloadClient {
        WorkloadClient::new(unix_channel(&self.agent().socket_path).await)
    }

    /// Waits until the agent's cache holds an entry with `id` (or, with `present = false`, no
    /// longer holds it).
    pub async fn wait_entry(&self, id: &str, present: bool) {
        let mut rx = self.agent().cache.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|s| s.entries.contains_key(id) == present))
            .await
            .expect("agent cache did not converge")
            .unwrap();
    }

    /// Creates `e` and waits until the agent knows it (so a fetch right after matches it).
    pub async fn create(&self, e: pb::Entry) -> pb::Entry {
        let e = self.server.create_entry(e).await;
        self.wait_entry(&e.id, true).await;
        e
    }

    pub async fn shutdown_agent(&mut self) {
        if let Some(a) = self.agent.take() {
            tokio::time::timeout(WAIT, a.shutdown())
                .await
                .expect("agent shutdown hung");
        }
    }

    pub async fn shutdown(mut self) {
        self.shutdown_agent().await;
        self.server.shutdown().await;
    }
}

/// Opens FetchX509SVID.
pub async fn open_x509(client: &mut WorkloadClient) -> Streaming<wl::X509svidResponse> {
    client
        .fetch_x509svid(wreq(wl::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner()
}

/// The next message of a stream, failing after [`WAIT`].
pub async fn next<T>(s: &mut Streaming<T>) -> Result<Option<T>, tonic::Status> {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("no stream message in time")
}

/// Reads messages until one satisfies `f`.
pub async fn next_until<T>(s: &mut Streaming<T>, mut f: impl FnMut(&T) -> bool) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, s.message())
            .await
            .expect("expected stream message did not arrive in time")
            .unwrap()
            .expect("stream ended");
        if f(&m) {
            return m;
        }
    }
}

/// First message of a fresh FetchX509SVID call.
pub async fn fetch_x509(client: &mut WorkloadClient) -> wl::X509svidResponse {
    let mut s = open_x509(client).await;
    next(&mut s).await.unwrap().unwrap()
}

/// Opens FetchX509SVID and reads until the response has `n` SVIDs.
pub async fn fetch_x509_n(client: &mut WorkloadClient, n: usize) -> wl::X509svidResponse {
    let mut s = open_x509(client).await;
    next_until(&mut s, |m| m.svids.len() == n).await
}

/// Splits DER certificates laid back to back.
pub fn split_der(mut b: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(b).expect("bad DER in chain");
        let len = b.len() - rest.len();
        out.push(CertificateDer::from(b[..len].to_vec()));
        b = rest;
    }
    out
}

/// Asserts a status code.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code) {
    match r {
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
        Err(s) => assert_eq!(s.code(), code, "unexpected status {s:?}"),
    }
}

/// The leaf's notAfter.
pub fn not_after(leaf: &[u8]) -> std::time::SystemTime {
    let (_, c) = x509_parser::parse_x509_certificate(leaf).unwrap();
    std::time::UNIX_EPOCH + Duration::from_secs(c.validity().not_after.timestamp() as u64)
}

/// The leaf's SubjectPublicKeyInfo public key bits.
pub fn leaf_public_key(leaf: &[u8]) -> Vec<u8> {
    let (_, c) = x509_parser::parse_x509_certificate(leaf).unwrap();
    c.public_key().subject_public_key.data.to_vec()
}

/// The public key of a PKCS#8 P-256 private key (parsing it proves it is PKCS#8).
pub fn pkcs8_public_key(key: &[u8]) -> Vec<u8> {
    use ring::signature::KeyPair;
    let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        key,
        &ring::rand::SystemRandom::new(),
    )
    .expect("x509_svid_key is not an unencrypted PKCS#8 P-256 key");
    kp.public_key().as_ref().to_vec()
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
