//! JWT-SVID benchmark: `cargo bench -p sigil-agent --bench jwt`.
//!
//! A real server and a real agent run in this process (sled in a temp dir, mTLS on loopback, the
//! Workload API on a Unix socket); the bench is the workload, attested through `SO_PEERCRED`.
//! It prints, from the same run:
//!
//! - the raw ES256 (and ES384) signing rate of `sigil_core::jwt::JwtSigner` on one core, the
//!   ceiling for minting, and the raw verification rate;
//! - FetchJWTSVID through the Workload API, cached (same audience: served from the agent's token
//!   cache) and uncached (a fresh audience per call: agent → server MintJwtSvid → sign), with 1
//!   and 16 concurrent callers;
//! - ValidateJWTSVID through the Workload API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use sigil_core::jwt::{self, JwtClaims, JwtKeyType, JwtSigner};
use sigil_proto::sigil::v1 as pb;
use sigil_proto::workload as wl;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};

const TD: &str = "example.org";
/// How long each measurement runs.
const RUN: Duration = Duration::from_secs(3);

type Workload = wl::spiffe_workload_api_client::SpiffeWorkloadApiClient<Channel>;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn wreq<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(sigil_proto::WORKLOAD_HEADER, "true".parse().unwrap());
    r
}

async fn channel(path: &Path) -> Channel {
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

/// Calls `op` back to back for [`RUN`] from `conc` tasks (one connection each); returns
/// operations per second.
async fn rate<F, Fut>(sock: &Path, conc: usize, op: F) -> f64
where
    F: Fn(Workload, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let client = Workload::new(channel(sock).await);
        let op = Arc::clone(&op);
        let counter = Arc::clone(&counter);
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < RUN {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                op(client.clone(), n).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    counter.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Signs back to back on this thread for [`RUN`]; signatures per second.
fn raw_sign_rate(kind: JwtKeyType) -> f64 {
    let key = jwt::generate_key(kind).unwrap();
    let signer = JwtSigner::from_pkcs8(jwt::new_key_id(), &key.pkcs8).unwrap();
    let sub = sigil_core::SpiffeId::parse(&format!("spiffe://{TD}/bench")).unwrap();
    let aud = vec!["bench".to_owned()];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        let claims = JwtClaims {
            subject: &sub,
            audience: &aud,
            issued_at: 1_700_000_000,
            expires_at: 1_700_000_300,
            issuer: None,
        };
        std::hint::black_box(signer.sign(&claims).unwrap());
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Verifies one ES256 token back to back on this thread for [`RUN`]; verifications per second.
fn raw_verify_rate() -> f64 {
    let key = jwt::generate_key(JwtKeyType::Es256).unwrap();
    let signer = JwtSigner::from_pkcs8(jwt::new_key_id(), &key.pkcs8).unwrap();
    let sub = sigil_core::SpiffeId::parse(&format!("spiffe://{TD}/bench")).unwrap();
    let aud = vec!["bench".to_owned()];
    let token = signer
        .sign(&JwtClaims {
            subject: &sub,
            audience: &aud,
            issued_at: 1_700_000_000,
            expires_at: 1_700_000_300,
            issuer: None,
        })
        .unwrap();
    let mut bundle = sigil_core::Bundle::new(sigil_core::TrustDomain::new(TD).unwrap());
    bundle.jwt_authorities.push(sigil_core::JwtAuthority {
        key_id: signer.key_id().to_owned(),
        public_key_der: key.public_key_der,
        expires_at: 0,
    });
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        std::hint::black_box(jwt::verify(&token, "bench", &[&bundle], 1_700_000_100).unwrap());
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn run() {
    let dir = tempfile::Builder::new()
        .prefix("sjb")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();
    let toml = format!(
        "trust_domain = \"{TD}\"\nbind_address = \"127.0.0.1:0\"\nadmin_socket_path = \"{}\"\n\
         data_dir = \"{}\"\nlog_level = \"warn\"\n",
        d.join("server.sock").display(),
        d.join("server-data").display()
    );
    let server = sigil_server::serve::start(
        sigil_server::config::Config::from_toml(&toml, Default::default()).unwrap(),
    )
    .await
    .unwrap();
    let admin = sigil_server::client::admin_channel(&server.admin_socket)
        .await
        .unwrap();
    let bundle = pb::bundles_client::BundlesClient::new(admin.clone())
        .get_bundle(pb::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let pem: String = bundle
        .x509_authorities
        .iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
        .collect();
    std::fs::write(d.join("bundle.pem"), pem).unwrap();
    let alias = format!("spiffe://{TD}/node/bench");
    let token = pb::tokens_client::TokensClient::new(admin.clone())
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl: 600,
            agent_alias_spiffe_id: alias.clone(),
            token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .value;
    let agent_toml = format!(
        "trust_domain = \"{TD}\"\nserver_address = \"{}\"\ntrust_bundle_path = \"{}\"\n\
         join_token = \"{token}\"\ndata_dir = \"{}\"\nsocket_path = \"{}\"\n\
         admin_socket_path = \"{}\"\nworkload_binary_sha256 = false\n",
        server.addr,
        d.join("bundle.pem").display(),
        d.join("agent-data").display(),
        d.join("agent/api.sock").display(),
        d.join("agent-admin/admin.sock").display(),
    );
    let agent = sigil_agent::serve::start(
        sigil_agent::config::Config::from_toml(&agent_toml, Default::default()).unwrap(),
    )
    .await
    .unwrap();
    let uid = nix::unistd::geteuid().as_raw();
    let created = pb::entries_client::EntriesClient::new(admin.clone())
        .batch_create_entry(pb::BatchCreateEntryRequest {
            entries: vec![pb::Entry {
                spiffe_id: format!("spiffe://{TD}/bench"),
                parent_id: alias.clone(),
                selectors: vec![pb::Selector {
                    r#type: "unix".into(),
                    value: format!("uid:{uid}"),
                }],
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let entry_id = created.results[0].entry.as_ref().unwrap().id.clone();
    let mut rx = agent.cache.subscribe();
    tokio::time::timeout(
        Duration::from_secs(15),
        rx.wait_for(|s| s.entries.contains_key(&entry_id)),
    )
    .await
    .unwrap()
    .unwrap();
    let sock = agent.socket_path.clone();
    let mut c = Workload::new(channel(&sock).await);
    let first = c
        .fetch_jwtsvid(wreq(wl::JwtsvidRequest {
            audience: vec!["cached".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let cached_token = first.svids[0].svid.clone();

    println!(
        "JWT-SVID benchmark ({}s per row, 2 tokio workers, {} CPUs)\n",
        RUN.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows: Vec<(String, f64)> = Vec::new();
    rows.push((
        "raw ES256 sign (core JwtSigner, 1 thread)".into(),
        tokio::task::spawn_blocking(|| raw_sign_rate(JwtKeyType::Es256))
            .await
            .unwrap(),
    ));
    rows.push((
        "raw ES384 sign (core JwtSigner, 1 thread)".into(),
        tokio::task::spawn_blocking(|| raw_sign_rate(JwtKeyType::Es384))
            .await
            .unwrap(),
    ));
    rows.push((
        "raw ES256 verify (core jwt::verify, 1 thread)".into(),
        tokio::task::spawn_blocking(raw_verify_rate).await.unwrap(),
    ));
    for conc in [1usize, 16] {
        let r = rate(&sock, conc, |mut c, _| async move {
            c.fetch_jwtsvid(wreq(wl::JwtsvidRequest {
                audience: vec!["cached".into()],
                spiffe_id: String::new(),
            }))
            .await
            .unwrap();
        })
        .await;
        rows.push((
            format!("FetchJWTSVID cached   (same audience), {conc:>2} caller(s)"),
            r,
        ));
        let r = rate(&sock, conc, move |mut c, n| async move {
            c.fetch_jwtsvid(wreq(wl::JwtsvidRequest {
                audience: vec![format!("fresh-{conc}-{n}")],
                spiffe_id: String::new(),
            }))
            .await
            .unwrap();
        })
        .await;
        rows.push((
            format!("FetchJWTSVID uncached (fresh audience), {conc:>2} caller(s)"),
            r,
        ));
        let t = cached_token.clone();
        let r = rate(&sock, conc, move |mut c, _| {
            let t = t.clone();
            async move {
                c.validate_jwtsvid(wreq(wl::ValidateJwtsvidRequest {
                    audience: "cached".into(),
                    svid: t,
                }))
                .await
                .unwrap();
            }
        })
        .await;
        rows.push((format!("ValidateJWTSVID, {conc:>2} caller(s)"), r));
    }
    for (what, r) in &rows {
        println!("{what:<56} {r:>10.0} /s");
    }
    agent.shutdown().await;
    server.shutdown().await;
}
