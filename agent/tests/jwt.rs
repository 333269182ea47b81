//! JWT-SVIDs end to end: a real server and a real agent in this process, the crates.io `spiffe`
//! client fetching and validating tokens unmodified (through the Workload API and offline
//! against FetchJWTBundles), every kind of bad token refused, and JWT key rotation by hand
//! keeping tokens of the old key valid.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sigil_proto::sigil::v1 as pb;
use spiffe::JwtSvid;
use tonic::Code;

use h::*;

/// Helpers for this file only (the shared `common` module belongs to other tests).
mod h {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use hyper_util::rt::TokioIo;
    use sigil_proto::sigil::v1 as pb;
    use sigil_proto::workload as wl;
    use tonic::transport::{Channel, Endpoint};
    use tonic::{Code, Request};

    pub const TD: &str = "example.org";
    pub const WAIT: Duration = Duration::from_secs(15);
    pub const ISSUER: &str = "https://sigil.example.org";

    pub type Workload = wl::spiffe_workload_api_client::SpiffeWorkloadApiClient<Channel>;
    pub type LocalAuthority = pb::local_authority_client::LocalAuthorityClient<Channel>;

    pub fn uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    pub fn wreq<T>(msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert(sigil_proto::WORKLOAD_HEADER, "true".parse().unwrap());
        r
    }

    #[track_caller]
    pub fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code) -> String {
        match r {
            Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
            Err(s) => {
                assert_eq!(s.code(), code, "unexpected status {s:?}");
                s.message().to_owned()
            }
        }
    }

    async fn unix_channel(path: &Path) -> Channel {
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

    /// A server and an agent (attested with a join token whose node alias is `alias`).
    pub struct Env {
        pub server: Option<sigil_server::serve::Running>,
        pub agent: Option<sigil_agent::serve::Running>,
        pub admin: Channel,
        pub alias: String,
        pub dir: tempfile::TempDir,
    }

    pub fn server_config(dir: &Path) -> sigil_server::config::Config {
        let toml = format!(
            "trust_domain = \"{TD}\"\nbind_address = \"127.0.0.1:0\"\n\
             admin_socket_path = \"{}\"\ndata_dir = \"{}\"\njwt_issuer = \"{ISSUER}\"\n",
            dir.join("server.sock").display(),
            dir.join("server-data").display()
        );
        sigil_server::config::Config::from_toml(&toml, Default::default()).unwrap()
    }

    impl Env {
        pub async fn start() -> Self {
            let dir = tempfile::Builder::new()
                .prefix("sj")
                .tempdir_in("/tmp")
                .unwrap();
            let server = sigil_server::serve::start(server_config(dir.path()))
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
            let bundle_path = dir.path().join("bundle.pem");
            let pem: String = bundle
                .x509_authorities
                .iter()
                .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone())))
                .collect();
            std::fs::write(&bundle_path, pem).unwrap();
            let n: u64 = rand::random();
            let alias = format!("spiffe://{TD}/node/n{n:016x}");
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
            let d = dir.path();
            let toml = format!(
                "trust_domain = \"{TD}\"\nserver_address = \"{}\"\n\
                 trust_bundle_path = \"{}\"\njoin_token = \"{token}\"\ndata_dir = \"{}\"\n\
                 socket_path = \"{}\"\nadmin_socket_path = \"{}\"\n\
                 workload_binary_sha256 = false\ndiscover_workload_path = false\n",
                server.addr,
                bundle_path.display(),
                d.join("agent-data").display(),
                d.join("agent/api.sock").display(),
                d.join("agent-admin/admin.sock").display(),
            );
            let cfg = sigil_agent::config::Config::from_toml(&toml, Default::default()).unwrap();
            let agent = sigil_agent::serve::start(cfg).await.unwrap();
            Self {
                server: Some(server),
                agent: Some(agent),
                admin,
                alias,
                dir,
            }
        }

        pub fn socket(&self) -> PathBuf {
            self.agent.as_ref().unwrap().socket_path.clone()
        }

        pub async fn workload(&self) -> Workload {
            Workload::new(unix_channel(&self.socket()).await)
        }

        /// The crates.io client, connected as any SPIFFE workload would.
        pub async fn spiffe(&self) -> spiffe::WorkloadApiClient {
            spiffe::WorkloadApiClient::connect_to(format!("unix:{}", self.socket().display()))
                .await
                .unwrap()
        }

        pub fn local_authority(&self) -> LocalAuthority {
            LocalAuthority::new(self.admin.clone())
        }

        /// Creates an entry for `path` (this process's uid) and waits until the agent has it.
        pub async fn entry(&self, path: &str, hint: &str, jwt_ttl: i64) -> pb::Entry {
            let e = pb::Entry {
                spiffe_id: format!("spiffe://{TD}/{path}"),
                parent_id: self.alias.clone(),
                selectors: vec![pb::Selector {
                    r#type: "unix".into(),
                    value: format!("uid:{}", uid()),
                }],
                hint: hint.into(),
                jwt_svid_ttl: jwt_ttl,
                ..Default::default()
            };
            let r = pb::entries_client::EntriesClient::new(self.admin.clone())
                .batch_create_entry(pb::BatchCreateEntryRequest { entries: vec![e] })
                .await
                .unwrap()
                .into_inner()
                .results
                .remove(0);
            assert_eq!(r.code, 0, "{}", r.message);
            let e = r.entry.unwrap();
            let mut rx = self.agent.as_ref().unwrap().cache.subscribe();
            tokio::time::timeout(WAIT, rx.wait_for(|s| s.entries.contains_key(&e.id)))
                .await
                .expect("agent did not receive the entry")
                .unwrap();
            e
        }

        /// The own JWT bundle's key IDs as the agent serves them, once `ok` holds for them.
        pub async fn wait_jwt_kids(&self, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
            let mut c = self.workload().await;
            let mut s = c
                .fetch_jwt_bundles(wreq(wl::JwtBundlesRequest {}))
                .await
                .unwrap()
                .into_inner();
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let m = tokio::time::timeout_at(deadline, s.message())
                    .await
                    .expect("the agent never served the expected JWT keys")
                    .unwrap()
                    .unwrap();
                let doc: serde_json::Value =
                    serde_json::from_slice(&m.bundles[&format!("spiffe://{TD}")]).unwrap();
                let kids: Vec<String> = doc["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k["kid"].as_str().unwrap().to_owned())
                    .collect();
                if ok(&kids) {
                    return kids;
                }
            }
        }

        pub async fn shutdown(mut self) {
            if let Some(a) = self.agent.take() {
                tokio::time::timeout(WAIT, a.shutdown()).await.unwrap();
            }
            if let Some(s) = self.server.take() {
                tokio::time::timeout(WAIT, s.shutdown()).await.unwrap();
            }
        }
    }

    /// FetchJWTSVID through the raw client.
    pub async fn fetch(
        c: &mut Workload,
        audience: &[&str],
        spiffe_id: &str,
    ) -> Result<wl::JwtsvidResponse, tonic::Status> {
        c.fetch_jwtsvid(wreq(wl::JwtsvidRequest {
            audience: audience.iter().map(|a| (*a).to_owned()).collect(),
            spiffe_id: spiffe_id.into(),
        }))
        .await
        .map(tonic::Response::into_inner)
    }

    /// ValidateJWTSVID through the raw client.
    pub async fn validate(
        c: &mut Workload,
        audience: &str,
        token: &str,
    ) -> Result<wl::ValidateJwtsvidResponse, tonic::Status> {
        c.validate_jwtsvid(wreq(wl::ValidateJwtsvidRequest {
            audience: audience.into(),
            svid: token.into(),
        }))
        .await
        .map(tonic::Response::into_inner)
    }

    /// The token's header and payload, unverified.
    pub fn decode(token: &str) -> (serde_json::Value, serde_json::Value) {
        use base64::Engine;
        let d = |s: &str| {
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(s)
                    .unwrap(),
            )
            .unwrap()
        };
        let mut p = token.split('.');
        (d(p.next().unwrap()), d(p.next().unwrap()))
    }

    /// The server's JWT key state.
    pub async fn key_state(la: &mut LocalAuthority) -> pb::JwtAuthorityState {
        la.get_jwt_authority_state(pb::GetJwtAuthorityStateRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    pub fn spiffe_td() -> spiffe::TrustDomain {
        spiffe::TrustDomain::new(TD).unwrap()
    }
}

/// JWT-1/2/4..9 with the crates.io client, the cache, and BND-8 (bundle document vs Workload API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_crate_fetches_and_validates_our_tokens() {
    let env = Env::start().await;
    env.entry("web", "", 0).await;
    let client = env.spiffe().await;

    let svid: JwtSvid = client.fetch_jwt_svid(["A"], None).await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), format!("spiffe://{TD}/web"));
    assert_eq!(svid.audience(), ["A"]);
    let active = key_state(&mut env.local_authority()).await.active.unwrap();
    assert_eq!(svid.key_id(), active.key_id);
    assert_eq!(active.algorithm, "ES256");

    let (header, claims) = decode(svid.token());
    assert_eq!(
        header,
        json!({"alg": "ES256", "kid": active.key_id, "typ": "JWT"})
    );
    assert_eq!(claims["sub"], format!("spiffe://{TD}/web"));
    assert_eq!(claims["iss"], ISSUER);
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 300, "default_jwt_svid_ttl is 5m");

    // Through the agent's ValidateJWTSVID.
    let checked = client.validate_jwt_token("A", svid.token()).await.unwrap();
    assert_eq!(checked.spiffe_id(), svid.spiffe_id());
    let err = client
        .validate_jwt_token("B", svid.token())
        .await
        .unwrap_err();
    assert!(err.is_invalid_argument(), "{err:?}");

    // Offline against FetchJWTBundles.
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let offline = JwtSvid::parse_and_validate(svid.token(), &bundles, &["A"]).unwrap();
    assert_eq!(offline.spiffe_id(), svid.spiffe_id());
    assert!(JwtSvid::parse_and_validate(svid.token(), &bundles, &["B"]).is_err());
    assert!(
        bundles
            .get(&spiffe_td())
            .unwrap()
            .find_jwt_authority(&active.key_id)
            .is_some()
    );

    // ValidateJWTSVID returns the claims as a Struct (JWT-9).
    let mut raw = env.workload().await;
    let v = validate(&mut raw, "A", svid.token()).await.unwrap();
    assert_eq!(v.spiffe_id, format!("spiffe://{TD}/web"));
    let fields = v.claims.unwrap().fields;
    for k in ["sub", "aud", "exp", "iat", "iss"] {
        assert!(fields.contains_key(k), "claim {k} missing: {fields:?}");
    }

    // Cached: the same audience set (any order, duplicates) gets the same token; another
    // audience gets another one.
    let again = fetch(&mut raw, &["A"], "").await.unwrap();
    assert_eq!(again.svids[0].svid, svid.token());
    let ab = fetch(&mut raw, &["B", "A", "B"], "").await.unwrap();
    let ba = fetch(&mut raw, &["A", "B"], "").await.unwrap();
    assert_eq!(ab.svids[0].svid, ba.svids[0].svid);
    assert_ne!(ab.svids[0].svid, svid.token());
    assert_eq!(decode(&ab.svids[0].svid).1["aud"], json!(["A", "B"]));

    // BND-8: the server's SPIFFE bundle document names the same jwt-svid keys the agent serves.
    let own = pb::bundles_client::BundlesClient::new(env.admin.clone())
        .get_bundle(pb::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let doc = sigil_core::Bundle {
        trust_domain: sigil_core::TrustDomain::new(TD).unwrap(),
        x509_authorities: own.x509_authorities.clone(),
        jwt_authorities: own
            .jwt_authorities
            .iter()
            .map(|k| sigil_core::JwtAuthority {
                key_id: k.key_id.clone(),
                public_key_der: k.public_key.clone(),
                expires_at: k.expires_at,
            })
            .collect(),
        sequence: own.sequence_number,
        refresh_hint: None,
    }
    .to_spiffe_json()
    .unwrap();
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let doc_kids: Vec<&str> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    let served = env.wait_jwt_kids(|_| true).await;
    assert_eq!(doc_kids, served);
    env.shutdown().await;
}

/// Bad input: each a clear InvalidArgument, none accepted (JWT-10..13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_requests_are_refused() {
    let env = Env::start().await;
    env.entry("api", "", 0).await;
    let mut c = env.workload().await;
    let client = env.spiffe().await;
    let good = fetch(&mut c, &["A"], "")
        .await
        .unwrap()
        .svids
        .remove(0)
        .svid;
    validate(&mut c, "A", &good).await.unwrap();
    let bundles = client.fetch_jwt_bundles().await.unwrap();

    // Requests without an audience.
    let m = assert_code(fetch(&mut c, &[], "").await, Code::InvalidArgument);
    assert!(m.contains("audience"), "{m}");
    let m = assert_code(fetch(&mut c, &["A", ""], "").await, Code::InvalidArgument);
    assert!(m.contains("audience"), "{m}");
    assert_code(validate(&mut c, "", &good).await, Code::InvalidArgument);
    assert_code(validate(&mut c, "A", "").await, Code::InvalidArgument);

    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let mut parts = good.split('.');
    let (h, p, sig) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let (header, claims) = decode(&good);
    let kid = header["kid"].as_str().unwrap().to_owned();

    // Tampered signature and tampered payload.
    let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig_bytes[5] ^= 0x40;
    let tampered_sig = format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(&sig_bytes));
    let mut evil = claims.clone();
    evil["sub"] = json!(format!("spiffe://{TD}/admin"));
    let tampered_payload = format!("{h}.{}.{sig}", b64(&evil));

    // alg none and HS256 (keyed with the public key, the classic confusion attack).
    let none = format!(
        "{}.{p}.",
        b64(&json!({"alg": "none", "kid": kid, "typ": "JWT"}))
    );
    let hs_header = b64(&json!({"alg": "HS256", "kid": kid, "typ": "JWT"}));
    let state = key_state(&mut env.local_authority()).await;
    let pk = state.active.unwrap().public_key;
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &pk),
        format!("{hs_header}.{p}").as_bytes(),
    );
    let hs256 = format!("{hs_header}.{p}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));

    // Unknown kid: a key of our own making, never published.
    let rogue = sigil_core::jwt::generate_key(sigil_core::jwt::JwtKeyType::Es256).unwrap();
    let rogue = sigil_core::jwt::JwtSigner::from_pkcs8("rogue".into(), &rogue.pkcs8).unwrap();
    let now = sigil_core::x509::unix_secs(SystemTime::now());
    let sub = sigil_core::SpiffeId::parse(&format!("spiffe://{TD}/api")).unwrap();
    let aud = vec!["A".to_owned()];
    let unknown_kid = rogue
        .sign(&sigil_core::jwt::JwtClaims {
            subject: &sub,
            audience: &aud,
            issued_at: now,
            expires_at: now + 300,
            issuer: None,
        })
        .unwrap();

    // Expired: signed by the server's real active key an hour ago.
    let expired = env
        .server
        .as_ref()
        .unwrap()
        .state
        .ca
        .jwt()
        .sign(
            &sub,
            &aud,
            Duration::from_secs(300),
            None,
            SystemTime::now() - Duration::from_secs(3600),
        )
        .unwrap()
        .token;

    let cases = [
        ("malformed", "x.y.z".to_owned()),
        ("garbage", "garbage".to_owned()),
        ("tampered signature", tampered_sig),
        ("tampered payload", tampered_payload),
        ("alg none", none),
        ("alg HS256", hs256),
        ("unknown kid", unknown_kid),
        ("expired", expired),
    ];
    for (what, token) in &cases {
        let m = assert_code(validate(&mut c, "A", token).await, Code::InvalidArgument);
        assert!(!m.is_empty(), "{what}: the refusal says why");
        let err = client.validate_jwt_token("A", token).await.unwrap_err();
        assert!(err.is_invalid_argument(), "{what}: {err:?}");
        assert!(
            JwtSvid::parse_and_validate(token, &bundles, &["A"]).is_err(),
            "{what}: accepted offline"
        );
    }
    // Token for another audience (JWT-10), with the reason in the message.
    let m = assert_code(validate(&mut c, "B", &good).await, Code::InvalidArgument);
    assert!(m.contains("audience"), "{m}");
    env.shutdown().await;
}

/// JWT-14 and entry TTLs: several identities, picking one, refusing one not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_served_per_entry() {
    let env = Env::start().await;
    env.entry("first", "one", 60).await;
    env.entry("second", "two", 0).await;
    let mut c = env.workload().await;

    let all = fetch(&mut c, &["A"], "").await.unwrap();
    let ids: Vec<&str> = all.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("spiffe://{TD}/first"),
            format!("spiffe://{TD}/second")
        ]
    );
    let hints: Vec<&str> = all.svids.iter().map(|s| s.hint.as_str()).collect();
    assert_eq!(hints, ["one", "two"]);
    let first = decode(&all.svids[0].svid).1;
    assert_eq!(
        first["exp"].as_i64().unwrap() - first["iat"].as_i64().unwrap(),
        60,
        "the entry's jwt_svid_ttl"
    );
    for s in &all.svids {
        let v = validate(&mut c, "A", &s.svid).await.unwrap();
        assert_eq!(v.spiffe_id, s.spiffe_id);
    }

    let second = format!("spiffe://{TD}/second");
    let one = fetch(&mut c, &["A"], &second).await.unwrap();
    assert_eq!(one.svids.len(), 1);
    assert_eq!(one.svids[0].spiffe_id, second);
    assert_eq!(decode(&one.svids[0].svid).1["sub"], second);

    // The spiffe crate picks by SPIFFE ID too.
    let client = env.spiffe().await;
    let id = spiffe::SpiffeId::new(&second).unwrap();
    let s = client.fetch_jwt_svid(["A"], Some(&id)).await.unwrap();
    assert_eq!(s.spiffe_id(), &id);
    let by_hint = client
        .fetch_jwt_svid_by_hint(["A"], None, "one")
        .await
        .unwrap();
    assert_eq!(
        by_hint.spiffe_id().to_string(),
        format!("spiffe://{TD}/first")
    );

    assert_code(
        fetch(&mut c, &["A"], &format!("spiffe://{TD}/third")).await,
        Code::PermissionDenied,
    );
    assert_code(
        fetch(&mut c, &["A"], "not-a-spiffe-id").await,
        Code::InvalidArgument,
    );
    env.shutdown().await;
}

/// Rotation by hand: the prepared key is published before it signs; after activation new
/// tokens carry the new kid and tokens of the old key still validate; keys survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_tokens_valid() {
    let env = Env::start().await;
    env.entry("svc", "", 0).await;
    let mut c = env.workload().await;
    let client = env.spiffe().await;
    let mut la = env.local_authority();

    let before = key_state(&mut la).await;
    let k1 = before.active.clone().unwrap().key_id;
    assert!(before.prepared.is_none());
    let old_token = fetch(&mut c, &["A"], "")
        .await
        .unwrap()
        .svids
        .remove(0)
        .svid;
    assert_eq!(decode(&old_token).0["kid"], k1);

    // Activating with nothing prepared is refused.
    let m = assert_code(
        la.activate_jwt_authority(pb::ActivateJwtAuthorityRequest::default())
            .await,
        Code::FailedPrecondition,
    );
    assert!(m.contains("prepare"), "{m}");

    // Prepare: published (and pushed to the agent) before it signs anything.
    let prepared = la
        .prepare_jwt_authority(pb::PrepareJwtAuthorityRequest {})
        .await
        .unwrap()
        .into_inner();
    let k2 = prepared.prepared.clone().unwrap().key_id;
    assert_ne!(k1, k2);
    assert_eq!(prepared.active.as_ref().unwrap().key_id, k1);
    assert!(prepared.bundle_sequence > before.bundle_sequence);
    env.wait_jwt_kids(|k| k.contains(&k1) && k.contains(&k2))
        .await;
    let still_k1 = fetch(&mut c, &["P"], "")
        .await
        .unwrap()
        .svids
        .remove(0)
        .svid;
    assert_eq!(
        decode(&still_k1).0["kid"],
        k1,
        "a prepared key does not sign"
    );

    // Activating another key ID than the prepared one is refused.
    assert_code(
        la.activate_jwt_authority(pb::ActivateJwtAuthorityRequest {
            key_id: "someone-elses".into(),
        })
        .await,
        Code::FailedPrecondition,
    );
    let activated = la
        .activate_jwt_authority(pb::ActivateJwtAuthorityRequest { key_id: k2.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(activated.active.as_ref().unwrap().key_id, k2);
    assert!(activated.prepared.is_none());
    assert_eq!(activated.old.len(), 1);
    assert_eq!(activated.old[0].key_id, k1);

    // New tokens (fresh audience, so not from the cache) carry the new kid.
    let new_token = fetch(&mut c, &["C"], "")
        .await
        .unwrap()
        .svids
        .remove(0)
        .svid;
    assert_eq!(decode(&new_token).0["kid"], k2);

    // Both validate, through the agent and offline.
    validate(&mut c, "A", &old_token).await.unwrap();
    validate(&mut c, "C", &new_token).await.unwrap();
    client.validate_jwt_token("A", &old_token).await.unwrap();
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    JwtSvid::parse_and_validate(&old_token, &bundles, &["A"]).unwrap();
    JwtSvid::parse_and_validate(&new_token, &bundles, &["C"]).unwrap();

    // The keys and their states survive a server restart.
    let dir = env.dir.path().to_owned();
    let Env {
        server,
        agent,
        dir: tmp,
        ..
    } = env;
    tokio::time::timeout(WAIT, agent.unwrap().shutdown())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, server.unwrap().shutdown())
        .await
        .unwrap();
    let server = sigil_server::serve::start(server_config(&dir))
        .await
        .unwrap();
    let admin = sigil_server::client::admin_channel(&server.admin_socket)
        .await
        .unwrap();
    let after = key_state(&mut LocalAuthority::new(admin)).await;
    assert_eq!(after.active.unwrap().key_id, k2);
    assert_eq!(after.old[0].key_id, k1);
    assert_eq!(after.bundle_sequence, activated.bundle_sequence);
    server.shutdown().await;
    drop(tmp);
}
