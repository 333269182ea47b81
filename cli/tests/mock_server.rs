//! The real `sigil` binary against in-process mock services on temporary Unix sockets.
//!
//! The mocks implement just enough of the admin API and the Workload API to check what the CLI
//! sends (pagination, per-item codes, the Workload API header) and what it prints and exits
//! with. The real server and agent are exercised by the end-to-end tests in `tests/`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PublicKeyData};
use sigil_proto::sigil::v1 as pb;
use sigil_proto::sigil::v1::agents_server::{Agents, AgentsServer};
use sigil_proto::sigil::v1::bundles_server::{Bundles, BundlesServer};
use sigil_proto::sigil::v1::entries_server::{Entries, EntriesServer};
use sigil_proto::sigil::v1::health_server::{Health, HealthServer};
use sigil_proto::sigil::v1::tokens_server::{Tokens, TokensServer};
use sigil_proto::workload as wl;
use sigil_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    entries: Mutex<Vec<pb::Entry>>,
    next_id: Mutex<u32>,
    list_calls: Mutex<u32>,
    token_requests: Mutex<Vec<pb::CreateJoinTokenRequest>>,
    not_serving: Mutex<bool>,
    agents: Mutex<Vec<pb::Agent>>,
    federated: Mutex<Vec<pb::Bundle>>,
    own_bundle: Mutex<Option<pb::Bundle>>,
    svid: Mutex<Option<wl::X509svidResponse>>,
}

#[derive(Clone)]
struct Mock(Arc<State>);

#[tonic::async_trait]
impl Entries for Mock {
    async fn batch_create_entry(
        &self,
        request: Request<pb::BatchCreateEntryRequest>,
    ) -> Result<Response<pb::BatchEntryResponse>, Status> {
        let mut entries = self.0.entries.lock().unwrap();
        let mut results = Vec::new();
        for mut e in request.into_inner().entries {
            if entries
                .iter()
                .any(|x| x.spiffe_id == e.spiffe_id && x.parent_id == e.parent_id)
            {
                results.push(pb::EntryResult {
                    entry: None,
                    code: tonic::Code::AlreadyExists as i32,
                    message: "similar entry already exists".into(),
                });
                continue;
            }
            if e.id.is_empty() {
                let mut n = self.0.next_id.lock().unwrap();
                *n += 1;
                e.id = format!("entry-{n}");
            }
            e.revision = 1;
            entries.push(e.clone());
            results.push(pb::EntryResult {
                entry: Some(e),
                code: 0,
                message: String::new(),
            });
        }
        Ok(Response::new(pb::BatchEntryResponse { results }))
    }

    async fn get_entry(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let id = request.into_inner().id;
        let entries = self.0.entries.lock().unwrap();
        let e = entries.iter().find(|e| e.id == id).cloned();
        e.map(Response::new)
            .ok_or_else(|| Status::not_found("entry not found"))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        *self.0.list_calls.lock().unwrap() += 1;
        let r = request.into_inner();
        let matching: Vec<pb::Entry> = self
            .0
            .entries
            .lock()
            .unwrap()
            .iter()
            .filter(|e| r.by_spiffe_id.is_empty() || e.spiffe_id == r.by_spiffe_id)
            .filter(|e| r.by_parent_id.is_empty() || e.parent_id == r.by_parent_id)
            .filter(|e| r.by_selectors.iter().all(|s| e.selectors.contains(s)))
            .cloned()
            .collect();
        // A small default page so every listing in these tests spans several pages.
        let size = if r.page_size == 0 {
            2
        } else {
            r.page_size as usize
        };
        let start: usize = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse()
                .map_err(|_| Status::invalid_argument("bad page token"))?
        };
        let end = (start + size).min(matching.len());
        let next = if end < matching.len() {
            end.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListEntriesResponse {
            entries: matching[start.min(end)..end].to_vec(),
            next_page_token: next,
        }))
    }

    async fn batch_update_entry(
        &self,
        request: Request<pb::BatchUpdateEntryRequest>,
    ) -> Result<Response<pb::BatchEntryResponse>, Status> {
        let mut entries = self.0.entries.lock().unwrap();
        let mut results = Vec::new();
        for mut e in request.into_inner().entries {
            match entries.iter_mut().find(|x| x.id == e.id) {
                Some(slot) if slot.revision == e.revision => {
                    e.revision += 1;
                    *slot = e.clone();
                    results.push(pb::EntryResult {
                        entry: Some(e),
                        code: 0,
                        message: String::new(),
                    });
                }
                Some(_) => results.push(pb::EntryResult {
                    entry: None,
                    code: tonic::Code::Aborted as i32,
                    message: "revision mismatch".into(),
                }),
                None => results.push(pb::EntryResult {
                    entry: None,
                    code: tonic::Code::NotFound as i32,
                    message: "entry not found".into(),
                }),
            }
        }
        Ok(Response::new(pb::BatchEntryResponse { results }))
    }

    async fn batch_delete_entry(
        &self,
        request: Request<pb::BatchDeleteEntryRequest>,
    ) -> Result<Response<pb::BatchDeleteEntryResponse>, Status> {
        let mut entries = self.0.entries.lock().unwrap();
        let results = request
            .into_inner()
            .ids
            .into_iter()
            .map(|id| {
                let before = entries.len();
                entries.retain(|e| e.id != id);
                let (code, message) = if entries.len() < before {
                    (0, String::new())
                } else {
                    (tonic::Code::NotFound as i32, "entry not found".to_owned())
                };
                pb::DeleteResult { id, code, message }
            })
            .collect();
        Ok(Response::new(pb::BatchDeleteEntryResponse { results }))
    }
}

#[tonic::async_trait]
impl Tokens for Mock {
    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        let r = request.into_inner();
        let token = pb::JoinToken {
            value: format!("tok-{}", r.ttl),
            expires_at: 1_000 + r.ttl,
        };
        self.0.token_requests.lock().unwrap().push(r);
        Ok(Response::new(token))
    }
}

#[tonic::async_trait]
impl Health for Mock {
    async fn check(
        &self,
        _: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        Ok(Response::new(pb::HealthCheckResponse {
            serving: !*self.0.not_serving.lock().unwrap(),
            trust_domain: "example.org".into(),
            revision: 42,
        }))
    }
}

#[tonic::async_trait]
impl Agents for Mock {
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        // One agent per page, so listing three takes three calls.
        let start: usize = request.into_inner().page_token.parse().unwrap_or(0);
        let agents = self.0.agents.lock().unwrap();
        let page: Vec<pb::Agent> = agents.iter().skip(start).take(1).cloned().collect();
        let next = if start + 1 < agents.len() {
            (start + 1).to_string()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page,
            next_page_token: next,
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = request.into_inner().id;
        let agents = self.0.agents.lock().unwrap();
        let a = agents.iter().find(|a| a.id == id).cloned();
        a.map(Response::new)
            .ok_or_else(|| Status::not_found("agent not found"))
    }

    async fn ban_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = request.into_inner().id;
        let mut agents = self.0.agents.lock().unwrap();
        let a = agents
            .iter_mut()
            .find(|a| a.id == id)
            .ok_or_else(|| Status::not_found("agent not found"))?;
        a.banned = true;
        Ok(Response::new(a.clone()))
    }

    async fn evict_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::EvictAgentResponse>, Status> {
        let id = request.into_inner().id;
        let mut agents = self.0.agents.lock().unwrap();
        let before = agents.len();
        agents.retain(|a| a.id != id);
        if agents.len() == before {
            return Err(Status::not_found("agent not found"));
        }
        Ok(Response::new(pb::EvictAgentResponse {}))
    }
}

#[tonic::async_trait]
impl Bundles for Mock {
    async fn get_bundle(
        &self,
        _: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::Bundle>, Status> {
        let b = self.0.own_bundle.lock().unwrap().clone();
        b.map(Response::new)
            .ok_or_else(|| Status::unavailable("no bundle yet"))
    }

    async fn list_federated_bundles(
        &self,
        _: Request<pb::ListFederatedBundlesRequest>,
    ) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        let bundles = self.0.federated.lock().unwrap().clone();
        Ok(Response::new(pb::ListFederatedBundlesResponse { bundles }))
    }

    async fn set_federated_bundle(
        &self,
        request: Request<pb::Bundle>,
    ) -> Result<Response<pb::Bundle>, Status> {
        let b = request.into_inner();
        if b.trust_domain.starts_with("spiffe://") {
            return Err(Status::invalid_argument("want a bare trust domain name"));
        }
        let mut fed = self.0.federated.lock().unwrap();
        fed.retain(|x| x.trust_domain != b.trust_domain);
        fed.push(b.clone());
        Ok(Response::new(b))
    }

    async fn delete_federated_bundle(
        &self,
        request: Request<pb::DeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::DeleteFederatedBundleResponse>, Status> {
        let td = request.into_inner().trust_domain;
        let mut fed = self.0.federated.lock().unwrap();
        let before = fed.len();
        fed.retain(|x| x.trust_domain != td);
        if fed.len() == before {
            return Err(Status::not_found(format!("no federated bundle for {td}")));
        }
        Ok(Response::new(pb::DeleteFederatedBundleResponse {}))
    }
}

type Stream<T> = tokio_stream::Iter<std::vec::IntoIter<Result<T, Status>>>;

/// The standard's SSRF guard: without the header the call is InvalidArgument.
fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request
        .metadata()
        .get(sigil_proto::WORKLOAD_HEADER)
        .map(|v| v.to_str())
    {
        Some(Ok("true")) => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Mock {
    type FetchX509SVIDStream = Stream<wl::X509svidResponse>;
    type FetchX509BundlesStream = Stream<wl::X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<wl::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<wl::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        let resp = self
            .0
            .svid
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| Status::permission_denied("no identity issued"))?;
        // Two updates, then the stream ends: enough for `watch` to show both and exit.
        Ok(Response::new(tokio_stream::iter(vec![
            Ok(resp.clone()),
            Ok(resp),
        ])))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<wl::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("not in this mock"))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<wl::JwtsvidRequest>,
    ) -> Result<Response<wl::JwtsvidResponse>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented("JWT-SVIDs are not supported yet"))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<wl::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&request)?;
        let mut bundles = HashMap::new();
        bundles.insert(
            "spiffe://example.org".to_owned(),
            br#"{"keys":[]}"#.to_vec().into(),
        );
        Ok(Response::new(tokio_stream::iter(vec![Ok(
            wl::JwtBundlesResponse { bundles },
        )])))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<wl::ValidateJwtsvidRequest>,
    ) -> Result<Response<wl::ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        let r = request.into_inner();
        let mut fields = std::collections::BTreeMap::new();
        let aud = prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(r.audience)),
        };
        fields.insert("aud".to_owned(), aud);
        let exp = prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(1.7e9)),
        };
        fields.insert("exp".to_owned(), exp);
        Ok(Response::new(wl::ValidateJwtsvidResponse {
            spiffe_id: "spiffe://example.org/web".into(),
            claims: Some(prost_types::Struct { fields }),
        }))
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    admin: PathBuf,
    workload: PathBuf,
    state: Arc<State>,
    ca_der: Vec<u8>,
}

async fn start() -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let admin = dir.join("admin.sock");
    let workload = dir.join("agent.sock");
    let state = Arc::new(State::default());

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_der = ca.der().to_vec();
    let jwt_key = KeyPair::generate().unwrap();
    *state.own_bundle.lock().unwrap() = Some(pb::Bundle {
        trust_domain: "example.org".into(),
        x509_authorities: vec![ca_der.clone()],
        jwt_authorities: vec![pb::JwtKey {
            key_id: "k1".into(),
            public_key: jwt_key.subject_public_key_info(),
            expires_at: 0,
        }],
        sequence_number: 1,
        refresh_hint: 300,
    });
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    *state.svid.lock().unwrap() = Some(wl::X509svidResponse {
        svids: vec![wl::X509svid {
            spiffe_id: "spiffe://example.org/web".into(),
            x509_svid: leaf.der().to_vec().into(),
            x509_svid_key: leaf_key.serialize_der().into(),
            bundle: ca_der.clone().into(),
            hint: String::new(),
        }],
        ..Default::default()
    });
    *state.agents.lock().unwrap() = (1..=3)
        .map(|i| pb::Agent {
            id: format!("spiffe://example.org/sigil/agent/join_token/t{i}"),
            attestation_type: "join_token".into(),
            x509_svid_serial: format!("{i}"),
            ..Default::default()
        })
        .collect();

    let mock = Mock(state.clone());
    let listener = UnixListener::bind(&admin).unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(EntriesServer::new(mock.clone()))
            .add_service(TokensServer::new(mock.clone()))
            .add_service(AgentsServer::new(mock.clone()))
            .add_service(BundlesServer::new(mock.clone()))
            .add_service(HealthServer::new(mock.clone()))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let listener = UnixListener::bind(&workload).unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(mock))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    Harness {
        _dir: tmp,
        dir,
        admin,
        workload,
        state,
        ca_der,
    }
}

impl Harness {
    async fn sigil(&self, args: &[&str]) -> Output {
        self.sigil_stdin(args, None).await
    }

    async fn sigil_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sigil"));
        cmd.args(args)
            .env("SIGIL_ADMIN_SOCKET", &self.admin)
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix://{}", self.workload.display()),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).await.unwrap();
        }
        drop(input);
        child.wait_with_output().await.unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

#[track_caller]
fn assert_fails_with(o: &Output, message: &str) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    assert!(stderr(o).contains(message), "stderr:\n{}", stderr(o));
}

fn create_args(spiffe: &str, uid: &str) -> Vec<String> {
    [
        "entry",
        "create",
        "--spiffe-id",
        spiffe,
        "--parent-id",
        "spiffe://example.org/agent",
        "--selector",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("unix:uid:{uid}")])
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn entry_lifecycle() {
    let h = start().await;
    let mut args = create_args("spiffe://example.org/web", "1000");
    args.extend(["--x509-svid-ttl", "1h", "--dns-name", "web.example.org"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = h.sigil(&args).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.starts_with("Entry ID         : entry-1\n"), "{out}");
    assert!(out.contains("X509-SVID TTL    : 3600\n"), "{out}");
    assert!(out.contains("Selector         : unix:uid:1000\n"), "{out}");

    let o = h.sigil(&args).await;
    assert_fails_with(&o, "Error: AlreadyExists: similar entry already exists");

    for i in 2..=5 {
        let a = create_args(&format!("spiffe://example.org/w{i}"), &i.to_string());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        assert_ok(&h.sigil(&a).await);
    }

    *h.state.list_calls.lock().unwrap() = 0;
    let o = h.sigil(&["entry", "list"]).await;
    assert_ok(&o);
    assert!(
        stdout(&o).starts_with("Found 5 entries\n"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        *h.state.list_calls.lock().unwrap(),
        3,
        "5 entries in pages of 2"
    );

    let o = h
        .sigil(&["entry", "list", "--output", "json", "--page-size", "4"])
        .await;
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 5);
    assert_eq!(v["entries"][0]["selectors"][0]["value"], "uid:1000");

    let o = h
        .sigil(&["entry", "list", "--selector", "unix:uid:3"])
        .await;
    assert!(
        stdout(&o).starts_with("Found 1 entry\nEntry ID         : entry-3\n"),
        "{}",
        stdout(&o)
    );

    let o = h.sigil(&["entry", "show", "entry-1"]).await;
    assert_ok(&o);
    assert!(stdout(&o).starts_with("Found 1 entry\nEntry ID         : entry-1\n"));
    assert_fails_with(
        &h.sigil(&["entry", "show", "nope"]).await,
        "Error: NotFound: entry not found",
    );

    let o = h
        .sigil(&[
            "entry",
            "update",
            "--entry-id",
            "entry-1",
            "--x509-svid-ttl",
            "2h",
            "--admin",
        ])
        .await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("X509-SVID TTL    : 7200\n"), "{out}");
    assert!(
        out.contains("Selector         : unix:uid:1000\n"),
        "selectors kept: {out}"
    );
    assert!(
        out.contains("DNS name         : web.example.org\n"),
        "dns kept: {out}"
    );
    assert!(out.contains("Admin            : true\n"), "{out}");
    assert!(out.contains("Revision         : 2\n"), "{out}");
    assert_fails_with(
        &h.sigil(&["entry", "update", "--entry-id", "entry-1"]).await,
        "nothing to update",
    );
    assert_fails_with(
        &h.sigil(&["entry", "update", "--entry-id", "nope", "--hint", "x"])
            .await,
        "Error: NotFound: entry not found",
    );

    let o = h.sigil(&["entry", "delete", "entry-1"]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o), "Deleted entry with ID: entry-1\n");
    assert_fails_with(
        &h.sigil(&["entry", "delete", "entry-1"]).await,
        "Error: NotFound: entry not found",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_health_and_agents() {
    let h = start().await;
    let o = h
        .sigil(&[
            "token",
            "generate",
            "--ttl",
            "1h",
            "--spiffe-id",
            "spiffe://example.org/node",
        ])
        .await;
    assert_ok(&o);
    assert!(
        stdout(&o).starts_with("Token: tok-3600\n"),
        "{}",
        stdout(&o)
    );
    let req = h.state.token_requests.lock().unwrap()[0].clone();
    assert_eq!(req.agent_alias_spiffe_id, "spiffe://example.org/node");
    let o = h.sigil(&["token", "generate", "--output", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["value"], "tok-600", "default ttl is 10m");

    let o = h.sigil(&["server", "healthcheck"]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o), "Server is healthy.\n");
    *h.state.not_serving.lock().unwrap() = true;
    assert_fails_with(&h.sigil(&["server", "healthcheck"]).await, "unhealthy");
    let missing = h.dir.join("missing.sock");
    let o = h
        .sigil(&[
            "server",
            "healthcheck",
            "--socket",
            missing.to_str().unwrap(),
        ])
        .await;
    assert_fails_with(
        &o,
        &format!(
            "Error: cannot connect to the Sigil server admin socket {}",
            missing.display()
        ),
    );

    let o = h.sigil(&["agent", "list"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.starts_with("Found 3 attested agents:\n\nSPIFFE ID        : "),
        "{out}"
    );
    assert!(out.contains("join_token/t3\n"), "all pages followed: {out}");
    let t1 = "spiffe://example.org/sigil/agent/join_token/t1";
    let o = h.sigil(&["agent", "ban", t1]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o), "Agent banned successfully\n");
    let o = h.sigil(&["agent", "show", t1, "--output", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["banned"], true);
    assert_ok(&h.sigil(&["agent", "evict", t1]).await);
    assert_fails_with(
        &h.sigil(&["agent", "show", t1]).await,
        "Error: NotFound: agent not found",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bundles() {
    let h = start().await;
    let o = h.sigil(&["bundle", "show"]).await;
    assert_ok(&o);
    let certs = pem::parse_many(&o.stdout).unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].contents(), h.ca_der.as_slice());

    let o = h.sigil(&["bundle", "show", "--format", "spiffe"]).await;
    assert_ok(&o);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["keys"].as_array().unwrap().len(), 2, "{doc}");
    assert_eq!(doc["spiffe_refresh_hint"], 300);

    let file = h.dir.join("other.pem");
    std::fs::write(&file, certs[0].to_string()).unwrap();
    let o = h
        .sigil(&[
            "bundle",
            "set",
            "--id",
            "spiffe://other.org",
            "--path",
            file.to_str().unwrap(),
        ])
        .await;
    assert_ok(&o);
    assert_eq!(stdout(&o), "Bundle set.\n");
    let o = h
        .sigil_stdin(
            &["bundle", "set", "--id", "third.org", "--format", "spiffe"],
            Some(&serde_json::to_vec(&doc).unwrap()),
        )
        .await;
    assert_ok(&o);
    assert_fails_with(
        &h.sigil_stdin(&["bundle", "set", "--id", "bad.org"], Some(b"garbage"))
            .await,
        "Error: reading the bundle from stdin",
    );

    let o = h.sigil(&["bundle", "list"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("* spiffe://other.org\n"), "{out}");
    assert!(out.contains("* spiffe://third.org\n"), "{out}");
    let o = h.sigil(&["bundle", "list", "--output", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["bundles"][1]["jwt_authorities"][0]["key_id"], "k1");

    let o = h
        .sigil(&["bundle", "delete", "--id", "spiffe://other.org"])
        .await;
    assert_ok(&o);
    assert_fails_with(
        &h.sigil(&["bundle", "delete", "--id", "other.org"]).await,
        "Error: NotFound: no federated bundle for other.org",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_api() {
    let h = start().await;
    let out_dir = h.dir.join("svids");
    let o = h
        .sigil(&[
            "agent",
            "api",
            "fetch",
            "x509",
            "--write",
            out_dir.to_str().unwrap(),
        ])
        .await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.starts_with("Received 1 svid after "), "{out}");
    assert!(
        out.contains("SPIFFE ID:           spiffe://example.org/web\n"),
        "{out}"
    );
    assert!(!out.contains("PRIVATE"), "{out}");
    let key = out_dir.join("svid.0.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for f in ["svid.0.pem", "bundle.0.pem"] {
        assert!(Path::new(&out_dir.join(f)).exists(), "{f}");
    }

    let o = h
        .sigil(&["agent", "api", "fetch", "x509", "--output", "json"])
        .await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["svids"][0]["spiffe_id"], "spiffe://example.org/web");

    let o = h.sigil(&["agent", "api", "watch"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains("Update #1 received at ") && out.contains("Update #2 received at "),
        "{out}"
    );
    assert!(stderr(&o).contains("closed the stream"), "{}", stderr(&o));

    assert_fails_with(
        &h.sigil(&["agent", "api", "fetch", "jwt", "--audience", "a"])
            .await,
        "Error: Unimplemented: JWT-SVIDs are not supported yet",
    );
    let o = h.sigil(&["agent", "api", "fetch", "jwtbundles"]).await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "bundle(spiffe://example.org):\n\t{\"keys\":[]}\n"
    );
    let o = h
        .sigil(&[
            "agent",
            "api",
            "validate",
            "jwt",
            "--audience",
            "db",
            "--svid",
            "x.y.z",
        ])
        .await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        concat!(
            "SVID is valid.\n",
            "SPIFFE ID : spiffe://example.org/web\n",
            "Claims    : {\"aud\":\"db\",\"exp\":1700000000}\n",
        )
    );

    *h.state.svid.lock().unwrap() = None;
    assert_fails_with(
        &h.sigil(&["agent", "api", "fetch", "x509"]).await,
        "Error: PermissionDenied: no identity issued",
    );
    let missing = h.dir.join("none.sock");
    let o = h
        .sigil(&[
            "agent",
            "api",
            "fetch",
            "x509",
            "--socket",
            missing.to_str().unwrap(),
        ])
        .await;
    assert_fails_with(
        &o,
        &format!(
            "Error: cannot connect to the Workload API socket {}",
            missing.display()
        ),
    );
}
