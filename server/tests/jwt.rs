//! JWT-SVIDs on the server: MintJwtSvid authorization and input checks, the tokens it mints,
//! and JWT key rotation reaching agents through the sync stream.

mod common;

use std::time::Duration;

use common::*;
use sigil_core::jwt;
use sigil_proto::sigil::v1 as pb;
use tonic::Code;

type LocalAuthority = pb::local_authority_client::LocalAuthorityClient<tonic::transport::Channel>;

fn now() -> i64 {
    sigil_core::x509::unix_secs(std::time::SystemTime::now())
}

async fn mint(
    agent: &TestAgent,
    entry_id: &str,
    audience: &[&str],
) -> Result<pb::MintJwtSvidResponse, tonic::Status> {
    agent
        .node
        .clone()
        .mint_jwt_svid(pb::MintJwtSvidRequest {
            entry_id: entry_id.into(),
            audience: audience.iter().map(|a| (*a).to_owned()).collect(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The own bundle as sigil-core's type, with the JWT keys the admin API reports.
async fn own_bundle(srv: &TestServer) -> sigil_core::Bundle {
    let b = srv.bundle().await;
    sigil_core::Bundle {
        trust_domain: td(),
        x509_authorities: b.x509_authorities,
        jwt_authorities: b
            .jwt_authorities
            .into_iter()
            .map(|k| sigil_core::JwtAuthority {
                key_id: k.key_id,
                public_key_der: k.public_key,
                expires_at: k.expires_at,
            })
            .collect(),
        sequence: b.sequence_number,
        refresh_hint: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_signing_keys() {
    let srv = TestServer::start_toml("jwt_key_type = \"RS256\"").await;
    let a = srv.attest().await;
    let e = srv
        .create_entry(entry(&format!("spiffe://{TD}/jwt-rsa"), &a.id_str()))
        .await;
    let r = mint(&a, &e.id, &["A"]).await.unwrap();
    let bundle = own_bundle(&srv).await;
    let v = jwt::verify(&r.token, "A", &[&bundle], now()).unwrap();
    assert_eq!(v.alg, jwt::JwtAlg::Rs256);
    assert!(jwt::verify(&r.token, "B", &[&bundle], now()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_for_an_authorized_entry() {
    let srv =
        TestServer::start_toml("jwt_issuer = \"https://iss.example\"\njwt_key_type = \"ES384\"")
            .await;
    let a = srv.attest().await;
    let e = srv
        .create_entry(pb::Entry {
            jwt_svid_ttl: 120,
            ..entry(&format!("spiffe://{TD}/jwt"), &a.id_str())
        })
        .await;
    let r = mint(&a, &e.id, &["A", "B"]).await.unwrap();
    assert_eq!(r.spiffe_id, format!("spiffe://{TD}/jwt"));
    assert_eq!(r.expires_at - r.issued_at, 120);
    assert!((r.issued_at - now()).abs() < 30);

    let bundle = own_bundle(&srv).await;
    assert_eq!(bundle.jwt_authorities.len(), 1);
    let v = jwt::verify(&r.token, "B", &[&bundle], now()).unwrap();
    assert_eq!(v.spiffe_id.to_string(), r.spiffe_id);
    assert_eq!(v.alg, jwt::JwtAlg::Es384);
    assert_eq!(v.key_id, bundle.jwt_authorities[0].key_id);
    assert_eq!(v.claims["iss"], "https://iss.example");
    assert_eq!(v.expires_at, r.expires_at);
    // The key outlives every token it signs.
    assert!(bundle.jwt_authorities[0].expires_at >= r.expires_at);

    // The default TTL applies when the entry sets none.
    let e2 = srv
        .create_entry(entry(&format!("spiffe://{TD}/jwt2"), &a.id_str()))
        .await;
    let r = mint(&a, &e2.id, &["A"]).await.unwrap();
    assert_eq!(r.expires_at - r.issued_at, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_refuses_bad_requests() {
    let srv = TestServer::start().await;
    let a = srv.attest().await;
    let b = srv.attest().await;
    let mine = srv
        .create_entry(entry(&format!("spiffe://{TD}/mine"), &a.id_str()))
        .await;

    for aud in [&[][..], &[""][..], &["ok", ""][..]] {
        let err = mint(&a, &mine.id, aud).await.unwrap_err();
        assert_status(&err, Code::InvalidArgument, "audience");
    }
    // Another agent's entry, an unknown entry, an expired entry.
    let err = mint(&b, &mine.id, &["A"]).await.unwrap_err();
    assert_status(&err, Code::PermissionDenied, "entry_id");
    let err = mint(&a, "no-such-entry", &["A"]).await.unwrap_err();
    assert_status(&err, Code::PermissionDenied, "entry_id");
    let old = srv
        .create_entry(pb::Entry {
            expires_at: now() - 10,
            ..entry(&format!("spiffe://{TD}/old"), &a.id_str())
        })
        .await;
    let err = mint(&a, &old.id, &["A"]).await.unwrap_err();
    assert_status(&err, Code::PermissionDenied, "entry_id");
    // No agent SVID at all.
    let err = srv
        .bootstrap()
        .await
        .mint_jwt_svid(pb::MintJwtSvidRequest {
            entry_id: mine.id.clone(),
            audience: vec!["A".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reaches_agents_by_sync() {
    let srv = TestServer::start().await;
    let a = srv.attest().await;
    let e = srv
        .create_entry(entry(&format!("spiffe://{TD}/rot"), &a.id_str()))
        .await;
    let mut la = LocalAuthority::new(srv.admin.clone());
    let mut stream = a.sync(0).await.unwrap();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let b0 = first.bundle.expect("a snapshot carries the bundle");
    assert_eq!(b0.jwt_authorities.len(), 1);
    let k1 = b0.jwt_authorities[0].key_id.clone();
    let t1 = mint(&a, &e.id, &["A"]).await.unwrap().token;

    let rev0 = srv
        .health()
        .check(pb::HealthCheckRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;
    let st = la
        .prepare_jwt_authority(pb::PrepareJwtAuthorityRequest {})
        .await
        .unwrap()
        .into_inner();
    let k2 = st.prepared.unwrap().key_id;
    let rev1 = srv
        .health()
        .check(pb::HealthCheckRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert!(rev1 > rev0, "publishing the key bumps the store revision");

    // The sync stream pushes the new bundle: both keys, a higher sequence number.
    let pushed = loop {
        let m = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("no bundle pushed after prepare")
            .unwrap()
            .unwrap();
        if let Some(b) = m.bundle {
            break b;
        }
    };
    assert!(pushed.sequence_number > b0.sequence_number);
    let mut kids: Vec<&str> = pushed
        .jwt_authorities
        .iter()
        .map(|k| k.key_id.as_str())
        .collect();
    kids.sort_unstable();
    let mut want = [k1.as_str(), k2.as_str()];
    want.sort_unstable();
    assert_eq!(kids, want);

    la.activate_jwt_authority(pb::ActivateJwtAuthorityRequest { key_id: k2.clone() })
        .await
        .unwrap();
    let t2 = mint(&a, &e.id, &["A"]).await.unwrap().token;
    let bundle = own_bundle(&srv).await;
    assert_eq!(jwt::verify(&t1, "A", &[&bundle], now()).unwrap().key_id, k1);
    assert_eq!(jwt::verify(&t2, "A", &[&bundle], now()).unwrap().key_id, k2);

    // Re-preparing replaces a prepared key that never signed: it leaves the bundle.
    let k3 = la
        .prepare_jwt_authority(pb::PrepareJwtAuthorityRequest {})
        .await
        .unwrap()
        .into_inner()
        .prepared
        .unwrap()
        .key_id;
    let k4 = la
        .prepare_jwt_authority(pb::PrepareJwtAuthorityRequest {})
        .await
        .unwrap()
        .into_inner()
        .prepared
        .unwrap()
        .key_id;
    let mut kids: Vec<String> = own_bundle(&srv)
        .await
        .jwt_authorities
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    kids.sort_unstable();
    let mut want = [k1, k2, k4];
    want.sort_unstable();
    assert_eq!(kids, want);
    assert!(!kids.contains(&k3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_keys_rotate_on_their_own() {
    // A 24s key life: prepared at 12s, activated at 20s (after at least 2s of publication).
    let srv = TestServer::start_toml("ca_ttl = \"24s\"\ndefault_x509_svid_ttl = \"10s\"").await;
    let mut la = LocalAuthority::new(srv.admin.clone());
    let k1 = la
        .get_jwt_authority_state(pb::GetJwtAuthorityStateRequest {})
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap()
        .key_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let st = la
            .get_jwt_authority_state(pb::GetJwtAuthorityStateRequest {})
            .await
            .unwrap()
            .into_inner();
        if st.active.as_ref().unwrap().key_id != k1 {
            assert_eq!(st.old[0].key_id, k1, "the previous key stays published");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the JWT key was never rotated"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
