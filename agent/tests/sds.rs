//! The agent's Envoy SDS v3 endpoint end to end: a real server and a real agent in this process,
//! real Unix sockets and mTLS between them. This test process plays Envoy: it speaks SDS with the
//! `envoy-types` protos (node, resource names, ACKs and NACKs, never the Workload API header) and
//! is attested by `SO_PEERCRED`, so entries select `unix:uid:<our uid>`.

use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use harness::*;
use prost::{Message, Name};
use rustls_pki_types::CertificateDer;
use tonic::Code;

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Test scaffolding: server, agent, clients and decoding of what SDS returns.
mod harness {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use envoy_types::pb::envoy::config::core::v3::{BuildVersion, Node, node};
    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
    use hyper_util::rt::TokioIo;
    use sigil_proto::sigil::v1 as pb;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Streaming;
    use tonic::transport::{Channel, Endpoint};

    /// Trust domain of the test server.
    pub const TD: &str = "example.org";
    /// Upper bound of any single wait, so a broken test fails instead of hanging.
    pub const WAIT: Duration = Duration::from_secs(15);

    pub type SdsClient = SecretDiscoveryServiceClient<Channel>;

    /// Logs to the test output when `RUST_LOG` is set.
    fn init_tracing() {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    }

    /// This process's effective uid, as the agent reads it from the socket.
    pub fn uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn unique(prefix: &str) -> String {
        format!("{prefix}-{:016x}", rand::random::<u64>())
    }

    /// A gRPC channel over the Unix socket at `path`.
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

    /// An Envoy node; with a version, as Envoy reports its build (`user_agent_build_version`).
    pub fn node(version: Option<(u32, u32, u32)>) -> Node {
        Node {
            id: "sidecar-1".into(),
            cluster: "test".into(),
            user_agent_name: "envoy".into(),
            user_agent_version_type: version.map(|(major, minor, patch)| {
                node::UserAgentVersionType::UserAgentBuildVersion(BuildVersion {
                    version: Some(SemanticVersion {
                        major_number: major,
                        minor_number: minor,
                        patch,
                    }),
                    metadata: None,
                })
            }),
            ..Default::default()
        }
    }

    /// A first SDS request as Envoy sends it.
    pub fn request(names: &[&str], node: Option<Node>) -> DiscoveryRequest {
        DiscoveryRequest {
            node,
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            type_url: super::SECRET_TYPE.into(),
            ..Default::default()
        }
    }

    /// The ACK Envoy sends after applying `resp`.
    pub fn ack(names: &[&str], resp: &DiscoveryResponse) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            ..request(names, None)
        }
    }

    /// A running server and an agent attested with a join token whose node alias is `alias`.
    pub struct Env {
        pub server: Option<sigil_server::serve::Running>,
        pub agent: Option<sigil_agent::serve::Running>,
        pub admin: Channel,
        pub alias: String,
        /// Kept last so the directory outlives both.
        pub _dir: tempfile::TempDir,
    }

    impl Env {
        /// Server and agent with default settings.
        pub async fn start() -> Self {
            Self::start_with("").await
        }

        /// Server and agent; `agent_toml` is appended to the agent's config file.
        pub async fn start_with(agent_toml: &str) -> Self {
            init_tracing();
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let server_toml = format!(
                "trust_domain = \"{TD}\"\nbind_address = \"127.0.0.1:0\"\n\
                 admin_socket_path = \"{}\"\ndata_dir = \"{}\"\n",
                d.join("server.sock").display(),
                d.join("server-data").display()
            );
            let cfg =
                sigil_server::config::Config::from_toml(&server_toml, Default::default()).unwrap();
            let server = sigil_server::serve::start(cfg).await.unwrap();
            let admin = sigil_server::client::admin_channel(&server.admin_socket)
                .await
                .unwrap();

            let alias = format!("spiffe://{TD}/{}", unique("node"));
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
            let bundle = pb::bundles_client::BundlesClient::new(admin.clone())
                .get_bundle(pb::GetBundleRequest {})
                .await
                .unwrap()
                .into_inner();
            let bundle_path = d.join("bundle.pem");
            let pem: String = bundle
                .x509_authorities
                .iter()
                .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
                .collect();
            std::fs::write(&bundle_path, pem).unwrap();

            let agent_toml = format!(
                "trust_domain = \"{TD}\"\nserver_address = \"{}\"\ntrust_bundle_path = \"{}\"\n\
                 join_token = \"{token}\"\ndata_dir = \"{}\"\nsocket_path = \"{}\"\n\
                 admin_socket_path = \"{}\"\n{agent_toml}",
                server.addr,
                bundle_path.display(),
                d.join("agent-data").display(),
                d.join("agent.sock").display(),
                d.join("agent-admin.sock").display(),
            );
            let cfg =
                sigil_agent::config::Config::from_toml(&agent_toml, Default::default()).unwrap();
            let agent = sigil_agent::serve::start(cfg).await.unwrap();
            Self {
                server: Some(server),
                agent: Some(agent),
                admin,
                alias,
                _dir: dir,
            }
        }

        fn agent(&self) -> &sigil_agent::serve::Running {
            self.agent.as_ref().unwrap()
        }

        /// The server's own CA certificates (DER).
        pub async fn roots(&self) -> Vec<Vec<u8>> {
            pb::bundles_client::BundlesClient::new(self.admin.clone())
                .get_bundle(pb::GetBundleRequest {})
                .await
                .unwrap()
                .into_inner()
                .x509_authorities
        }

        /// Registers `spiffe://example.org/<path>` for `uid` under this agent and waits until the
        /// agent holds its SVID.
        pub async fn register(
            &self,
            path: &str,
            uid: u32,
            x509_svid_ttl: i64,
            federates_with: &[&str],
        ) -> String {
            let spiffe_id = format!("spiffe://{TD}/{path}");
            let entry = pb::Entry {
                spiffe_id: spiffe_id.clone(),
                parent_id: self.alias.clone(),
                selectors: vec![pb::Selector {
                    r#type: "unix".into(),
                    value: format!("uid:{uid}"),
                }],
                x509_svid_ttl,
                federates_with: federates_with.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            let r = pb::entries_client::EntriesClient::new(self.admin.clone())
                .batch_create_entry(pb::BatchCreateEntryRequest {
                    entries: vec![entry],
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.results[0].code, 0, "{}", r.results[0].message);
            self.wait_cache(|s| {
                s.svids
                    .values()
                    .any(|v| v.spiffe_id.to_string() == spiffe_id)
            })
            .await;
            spiffe_id
        }

        /// Publishes a federated bundle for `td` (a fresh self-signed CA). The agent receives it
        /// once one of its entries federates with `td`. Returns the CA certificate.
        pub async fn federate(&self, td: &str) -> Vec<u8> {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            let der = params.self_signed(&key).unwrap().der().to_vec();
            pb::bundles_client::BundlesClient::new(self.admin.clone())
                .set_federated_bundle(pb::Bundle {
                    trust_domain: td.into(),
                    x509_authorities: vec![der.clone()],
                    ..Default::default()
                })
                .await
                .unwrap();
            der
        }

        /// Waits until the agent's cache satisfies `f`.
        pub async fn wait_cache(&self, f: impl Fn(&sigil_agent::cache::Snapshot) -> bool) {
            let mut rx = self.agent().cache.subscribe();
            tokio::time::timeout(WAIT, async {
                loop {
                    if f(&rx.borrow_and_update()) {
                        return;
                    }
                    rx.changed().await.unwrap();
                }
            })
            .await
            .expect("agent cache did not converge");
        }

        /// An SDS client on the agent's socket.
        pub async fn sds(&self) -> SdsClient {
            SdsClient::new(unix_channel(&self.agent().socket_path).await)
        }

        /// A Workload API client on the same socket.
        pub async fn workload(
            &self,
        ) -> sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<Channel>
        {
            sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
                unix_channel(&self.agent().socket_path).await,
            )
        }

        /// Opens `StreamSecrets` with `first` as its first request. Returns the sender for later
        /// requests and the response stream.
        pub async fn stream(
            &self,
            first: DiscoveryRequest,
        ) -> Result<(mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>), tonic::Status>
        {
            let (tx, rx) = mpsc::channel(8);
            tx.send(first).await.unwrap();
            let resp = self
                .sds()
                .await
                .stream_secrets(ReceiverStream::new(rx))
                .await?;
            Ok((tx, resp.into_inner()))
        }

        pub async fn shutdown(mut self) {
            if let Some(a) = self.agent.take() {
                tokio::time::timeout(WAIT, a.shutdown())
                    .await
                    .expect("agent shutdown hung");
            }
            if let Some(s) = self.server.take() {
                tokio::time::timeout(WAIT, s.shutdown())
                    .await
                    .expect("server shutdown hung");
            }
        }
    }

    /// The next response, failing the test on error, end of stream or timeout.
    pub async fn next<T: std::fmt::Debug>(s: &mut Streaming<T>) -> T {
        match tokio::time::timeout(WAIT, s.message()).await {
            Ok(Ok(Some(m))) => m,
            other => panic!("expected an SDS response, got {other:?}"),
        }
    }
}

fn inline_bytes(d: &Option<DataSource>) -> &[u8] {
    match d.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => b,
        Some(data_source::Specifier::InlineString(s)) => s.as_bytes(),
        other => panic!("expected inline data, got {other:?}"),
    }
}

/// DER contents of the PEM blocks tagged `tag` (fails on any other block).
fn pem_ders(text: &[u8], tag: &str) -> Vec<Vec<u8>> {
    let blocks = pem::parse_many(text).unwrap();
    assert!(!blocks.is_empty(), "no PEM block in {text:?}");
    blocks
        .into_iter()
        .map(|p| {
            assert_eq!(p.tag(), tag);
            p.into_contents()
        })
        .collect()
}

/// The Secrets of a response, by name, checking the response's envelope.
fn secrets(resp: &DiscoveryResponse) -> Vec<Secret> {
    assert_eq!(resp.type_url, SECRET_TYPE);
    resp.resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, Secret::type_url());
            Secret::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

fn names(resp: &DiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = secrets(resp).into_iter().map(|s| s.name).collect();
    n.sort();
    n
}

fn find(resp: &DiscoveryResponse, name: &str) -> Secret {
    secrets(resp)
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no secret {name} in {:?}", names(resp)))
}

fn tls_certificate(s: &Secret) -> &TlsCertificate {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(t)) => t,
        other => panic!("{} is not a tls_certificate: {other:?}", s.name),
    }
}

fn validation_context(s: &Secret) -> &CertificateValidationContext {
    match &s.r#type {
        Some(secret::Type::ValidationContext(v)) => v,
        other => panic!("{} is not a validation_context: {other:?}", s.name),
    }
}

/// The `trusted_ca` certificates of a validation context.
fn trusted_ca(s: &Secret) -> Vec<Vec<u8>> {
    let vc = validation_context(s);
    assert!(vc.custom_validator_config.is_none());
    pem_ders(inline_bytes(&vc.trusted_ca), "CERTIFICATE")
}

/// The trust domains and CA certificates of a SPIFFE validator validation context.
fn spiffe_validator(s: &Secret) -> Vec<(String, Vec<Vec<u8>>)> {
    let vc = validation_context(s);
    let tc = vc
        .custom_validator_config
        .as_ref()
        .unwrap_or_else(|| panic!("{} has no custom validator", s.name));
    assert_eq!(tc.name, "envoy.tls.cert_validator.spiffe");
    let any = tc.typed_config.as_ref().unwrap();
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
    );
    let cfg = SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap();
    cfg.trust_domains
        .into_iter()
        .map(|t| {
            let certs = pem_ders(inline_bytes(&t.trust_bundle), "CERTIFICATE");
            (t.name, certs)
        })
        .collect()
}

/// Checks a tls_certificate against `roots` (X.509-SVID rules via `validate_x509_svid`), that
/// its key is the leaf's, and returns (SPIFFE ID, leaf DER).
#[track_caller]
fn check_svid(s: &Secret, roots: &[Vec<u8>]) -> (String, Vec<u8>) {
    let tc = tls_certificate(s);
    let chain = pem_ders(inline_bytes(&tc.certificate_chain), "CERTIFICATE");
    let chain_der: Vec<CertificateDer<'_>> = chain
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let root_der: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let id = sigil_core::validate_x509_svid(&chain_der, &root_der, SystemTime::now())
        .unwrap_or_else(|e| panic!("{} does not validate: {e}", s.name));
    let key = pem_ders(inline_bytes(&tc.private_key), "PRIVATE KEY");
    assert_eq!(key.len(), 1);
    let key = sigil_core::keys::from_pkcs8(&key[0]).expect("private key is not PKCS#8");
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    assert_eq!(
        key.public_key_raw(),
        &*leaf.tbs_certificate.subject_pki.subject_public_key.data,
        "private key does not match the leaf"
    );
    (id.to_string(), chain[0].clone())
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_default_and_rootca_without_header() {
    let env = Env::start().await;
    let id = env.register("web", uid(), 0, &[]).await;
    let mut sds = env.sds().await;

    // SDS-1..3: one Secret named `default`, no Workload API header needed.
    let resp = sds
        .fetch_secrets(request(&["default"], Some(node(None))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&resp), ["default"]);
    assert!(!resp.version_info.is_empty());
    let roots = env.roots().await;
    let (got_id, _) = check_svid(&find(&resp, "default"), &roots);
    assert_eq!(got_id, id);

    // SDS-4/5: ROOTCA for a node without a version is trusted_ca, and `default` chains to it.
    let resp = sds
        .fetch_secrets(request(&["ROOTCA"], Some(node(None))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&resp), ["ROOTCA"]);
    let rootca = trusted_ca(&find(&resp, "ROOTCA"));
    assert_eq!(sorted(rootca.clone()), sorted(roots.clone()));
    let both = sds
        .fetch_secrets(request(&["default", "ROOTCA"], None))
        .await
        .unwrap()
        .into_inner();
    check_svid(&find(&both, "default"), &trusted_ca(&find(&both, "ROOTCA")));

    // SDS-14: the Workload API serves the same default identity and own bundle.
    let mut wl = env.workload().await;
    let mut req = tonic::Request::new(sigil_proto::workload::X509svidRequest {});
    req.metadata_mut()
        .insert(sigil_proto::WORKLOAD_HEADER, "true".parse().unwrap());
    let mut x509 = wl.fetch_x509svid(req).await.unwrap().into_inner();
    let first = tokio::time::timeout(WAIT, x509.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.svids[0].spiffe_id, id);
    assert_eq!(first.svids[0].bundle.to_vec(), rootca.concat());

    // Another resource type is refused.
    let mut wrong = request(&["default"], None);
    wrong.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    let err = sds.fetch_secrets(wrong).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_trust_domains_all_and_wildcard() {
    let env = Env::start().await;
    let fed_ca = env.federate("other.org").await;
    // A bundle the agent holds for another workload only.
    env.federate("stranger.org").await;
    let web = env.register("web", uid(), 0, &["other.org"]).await;
    let api = env.register("api", uid(), 0, &[]).await;
    let not_mine = env
        .register("not-mine", uid() + 1, 0, &["stranger.org"])
        .await;
    env.wait_cache(|s| s.federated.len() == 2).await;
    let roots = env.roots().await;
    let mut sds = env.sds().await;
    let modern = || Some(node(Some((1, 30, 0))));

    // SDS-8: an SVID by its SPIFFE ID, a bundle by its trust domain ID, under those names.
    let td_id = format!("spiffe://{TD}");
    let resp = sds
        .fetch_secrets(request(
            &[&api, &td_id, "spiffe://other.org"],
            Some(node(None)),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut want = vec![api.clone(), td_id.clone(), "spiffe://other.org".to_owned()];
    want.sort();
    assert_eq!(names(&resp), want);
    assert_eq!(check_svid(&find(&resp, &api), &roots).0, api);
    assert_eq!(
        sorted(trusted_ca(&find(&resp, &td_id))),
        sorted(roots.clone())
    );
    assert_eq!(
        trusted_ca(&find(&resp, "spiffe://other.org")),
        std::slice::from_ref(&fed_ca)
    );

    // SDS-9: names the workload holds nothing for are simply absent.
    let resp = sds
        .fetch_secrets(request(
            &[
                "default",
                "nope",
                &not_mine,
                "spiffe://stranger.org",
                "spiffe://unknown.org",
            ],
            modern(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&resp), ["default"]);
    let (default_id, _) = check_svid(&find(&resp, "default"), &roots);
    assert!(default_id == web || default_id == api, "{default_id}");

    // SDS-10/11: ALL and ROOTCA for Envoy 1.30 use the SPIFFE validator.
    let resp = sds
        .fetch_secrets(request(&["ALL", "ROOTCA"], modern()))
        .await
        .unwrap()
        .into_inner();
    let all = spiffe_validator(&find(&resp, "ALL"));
    let domains: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(domains, [TD, "other.org"]);
    assert_eq!(sorted(all[0].1.clone()), sorted(roots.clone()));
    assert_eq!(all[1].1, std::slice::from_ref(&fed_ca));
    let rootca = spiffe_validator(&find(&resp, "ROOTCA"));
    assert_eq!(rootca.len(), 1);
    assert_eq!(rootca[0].0, TD);
    assert_eq!(sorted(rootca[0].1.clone()), sorted(roots.clone()));
    // An Envoy older than 1.18 cannot take the validator: ROOTCA is trusted_ca, ALL is absent.
    let resp = sds
        .fetch_secrets(request(&["ALL", "ROOTCA"], Some(node(Some((1, 17, 2))))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&resp), ["ROOTCA"]);
    trusted_ca(&find(&resp, "ROOTCA"));

    // SDS-12: no names means every SVID by SPIFFE ID and every bundle by trust domain ID.
    let resp = sds
        .fetch_secrets(request(&[], Some(node(None))))
        .await
        .unwrap()
        .into_inner();
    let mut want = vec![
        web.clone(),
        api.clone(),
        td_id.clone(),
        "spiffe://other.org".into(),
    ];
    want.sort();
    assert_eq!(names(&resp), want);
    assert_eq!(check_svid(&find(&resp, &web), &roots).0, web);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_pushes_rotations_and_survives_a_nack() {
    let env = Env::start().await;
    // Renewed at half life: a new SVID about every 2 s.
    let id = env.register("rotating", uid(), 4, &[]).await;
    let roots = env.roots().await;
    let names_wanted = ["default", "ROOTCA"];
    let (tx, mut stream) = env
        .stream(request(&names_wanted, Some(node(None))))
        .await
        .unwrap();

    // SDS-6: both Secrets at once, with the Secret type, a version and a nonce.
    let first = next(&mut stream).await;
    assert_eq!(names(&first), ["ROOTCA", "default"]);
    assert!(!first.version_info.is_empty() && !first.nonce.is_empty());
    let (got, leaf1) = check_svid(&find(&first, "default"), &roots);
    assert_eq!(got, id);
    assert_eq!(
        sorted(trusted_ca(&find(&first, "ROOTCA"))),
        sorted(roots.clone())
    );
    tx.send(ack(&names_wanted, &first)).await.unwrap();

    // SDS-13: the rotated SVID arrives on the open stream under a new version and nonce.
    let second = next(&mut stream).await;
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    let (_, leaf2) = check_svid(&find(&second, "default"), &roots);
    assert_ne!(leaf2, leaf1, "a new version must carry the new SVID");

    // NACK it: the agent logs it and does not re-send the rejected version.
    let mut nack = ack(&names_wanted, &second);
    nack.version_info = first.version_info.clone();
    nack.error_detail = Some(RpcStatus {
        code: Code::InvalidArgument as i32,
        message: "Failed to load certificate chain (test)".into(),
        details: vec![],
    });
    tx.send(nack).await.unwrap();
    let third = next(&mut stream).await;
    assert_ne!(
        third.version_info, second.version_info,
        "the NACKed version was sent again"
    );
    let (_, leaf3) = check_svid(&find(&third, "default"), &roots);
    assert_ne!(leaf3, leaf2);
    tx.send(ack(&names_wanted, &third)).await.unwrap();
    let fourth = next(&mut stream).await;
    assert_ne!(fourth.version_info, third.version_info);
    drop(tx);
    drop(stream);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_stream_stays_quiet_until_something_requested_changes() {
    let env = Env::start().await;
    let web = env.register("web", uid(), 0, &[]).await;
    let roots = env.roots().await;
    let (tx, mut stream) = env
        .stream(request(&["default"], Some(node(Some((1, 30, 0))))))
        .await
        .unwrap();
    let first = next(&mut stream).await;
    assert_eq!(names(&first), ["default"]);
    assert_eq!(check_svid(&find(&first, "default"), &roots).0, web);

    // SDS-7: after the ACK nothing is re-sent, and the stream stays open...
    tx.send(ack(&["default"], &first)).await.unwrap();
    // ...even when the workload gains an identity that does not change `default` (a later
    // entry: `created_at` has a resolution of one second, and the oldest entry is the default).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let api = env.register("api", uid(), 0, &[]).await;
    let r = tokio::time::timeout(Duration::from_millis(1500), stream.message()).await;
    assert!(r.is_err(), "unexpected message or end of stream: {r:?}");

    // A changed subscription (echoing the last nonce) is answered at once.
    let wanted = ["default", &api, "ROOTCA"];
    tx.send(ack(&wanted, &first)).await.unwrap();
    let second = next(&mut stream).await;
    let mut want = vec!["ROOTCA".to_owned(), "default".to_owned(), api.clone()];
    want.sort();
    assert_eq!(names(&second), want);
    assert_eq!(check_svid(&find(&second, &api), &roots).0, api);
    assert_eq!(spiffe_validator(&find(&second, "ROOTCA"))[0].0, TD);
    tx.send(ack(&wanted, &second)).await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    assert!(r.is_err(), "unexpected message after ACK: {r:?}");
    drop(tx);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_without_identity_is_denied() {
    let env = Env::start().await;
    // Only an entry for somebody else.
    env.register("other", uid() + 1, 0, &[]).await;
    let mut sds = env.sds().await;
    let err = sds
        .fetch_secrets(request(&["default"], Some(node(None))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = sds
        .fetch_secrets(request(&["ROOTCA"], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    match env.stream(request(&["default", "ROOTCA"], None)).await {
        Err(e) => assert_eq!(e.code(), Code::PermissionDenied, "{e:?}"),
        Ok((_tx, mut s)) => {
            let r = tokio::time::timeout(WAIT, s.message()).await.unwrap();
            let e = r.expect_err("a caller without identity got secrets");
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        }
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_validator_follow_the_config() {
    let env = Env::start_with(
        "[sds]\ndefault_svid_name = \"svid\"\ndefault_bundle_name = \"ca\"\n\
         default_all_bundles_name = \"everything\"\ndisable_spiffe_cert_validation = true\n",
    )
    .await;
    let web = env.register("web", uid(), 0, &[]).await;
    let roots = env.roots().await;
    let mut sds = env.sds().await;
    let resp = sds
        .fetch_secrets(request(
            &["svid", "ca", "default", "ROOTCA", "ALL"],
            Some(node(Some((1, 30, 0)))),
        ))
        .await
        .unwrap()
        .into_inner();
    // Validation disabled: trusted_ca even for a modern Envoy, and no all-bundles validator.
    assert_eq!(names(&resp), ["ca", "svid"]);
    assert_eq!(check_svid(&find(&resp, "svid"), &roots).0, web);
    assert_eq!(sorted(trusted_ca(&find(&resp, "ca"))), sorted(roots));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_stream_sends_only_changes() {
    let env = Env::start().await;
    let id = env.register("rotating", uid(), 4, &[]).await;
    let roots = env.roots().await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(node(Some((1, 30, 0)))),
        type_url: SECRET_TYPE.into(),
        resource_names_subscribe: vec!["default".into(), "ROOTCA".into(), "nope".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = env
        .sds()
        .await
        .delta_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let decode = |r: &DeltaDiscoveryResponse| -> Vec<Secret> {
        assert_eq!(r.type_url, SECRET_TYPE);
        assert!(!r.nonce.is_empty());
        r.resources
            .iter()
            .map(|res| {
                assert!(!res.version.is_empty());
                let any = res.resource.as_ref().unwrap();
                let s = Secret::decode(any.value.as_slice()).unwrap();
                assert_eq!(s.name, res.name);
                s
            })
            .collect()
    };

    // Everything asked for at once; the unknown name is reported removed.
    let first = next(&mut stream).await;
    let secrets = decode(&first);
    let mut got: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    got.sort();
    assert_eq!(got, ["ROOTCA", "default"]);
    assert_eq!(first.removed_resources, ["nope"]);
    let default = secrets.iter().find(|s| s.name == "default").unwrap();
    let (got_id, leaf1) = check_svid(default, &roots);
    assert_eq!(got_id, id);
    let rootca = secrets.iter().find(|s| s.name == "ROOTCA").unwrap();
    assert_eq!(spiffe_validator(rootca)[0].0, TD);
    tx.send(DeltaDiscoveryRequest {
        type_url: SECRET_TYPE.into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // After the ACK, a rotation sends the new certificate alone.
    let second = next(&mut stream).await;
    let secrets = decode(&second);
    assert_eq!(secrets.len(), 1, "{:?}", second.resources);
    let (_, leaf2) = check_svid(&secrets[0], &roots);
    assert_eq!(secrets[0].name, "default");
    assert_ne!(leaf2, leaf1);
    assert!(second.removed_resources.is_empty());
    drop(tx);
    drop(stream);
    env.shutdown().await;
}
