//! The agent-facing API against a real server: node attestation with join tokens, X.509-SVID
//! signing and its authorization, over real mTLS on loopback with a real sled store.

mod common;

use std::time::Duration;

use common::*;
use rcgen::{CertificateParams, DnType, SanType};
use sigil_proto::sigil::v1 as pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attest_with_join_token_issues_a_valid_agent_svid() {
    let srv = TestServer::start().await;
    let bundle = srv.bundle().await;
    assert_eq!(bundle.trust_domain, TD);
    assert_eq!(bundle.x509_authorities.len(), 1);

    let token = srv.join_token(600, "").await;
    let agent = srv.attest_token(&token).await;
    let want = agent_id_for(&token);
    assert_eq!(agent.id, want);
    assert_eq!(agent.svid.spiffe_id, want.to_string());
    // Self-signed CA: the chain is the leaf alone, and it validates against the bundle.
    assert_eq!(agent.svid.cert_chain.len(), 1);
    let chain: Vec<Vec<u8>> = agent.svid.cert_chain.iter().map(|c| c.to_vec()).collect();
    assert_eq!(validate(&chain, &roots_of(&bundle)), want);
    let info = cert_info(&chain[0]);
    assert_eq!(info.uris, [want.to_string()]);
    assert_eq!(info.spki, spki(&agent.key));
    assert_eq!(agent.svid.expires_at, info.not_after);
    // The bundle in the attest response is the one the admin API publishes.
    assert_eq!(agent.bundle, bundle);

    // The agent is recorded, with the serial of the SVID it holds.
    let rec = srv
        .agents()
        .get_agent(pb::GetAgentRequest {
            id: want.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rec.attestation_type, "join_token");
    assert_eq!(rec.x509_svid_serial, info.serial);
    assert_eq!(rec.x509_svid_expires_at, info.not_after);
    assert!(!rec.banned);

    // The new SVID authenticates the agent: an authenticated call succeeds.
    let st = agent.sync(0).await;
    assert!(st.is_ok(), "{:?}", st.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_is_single_use() {
    let srv = TestServer::start().await;
    let token = srv.join_token(600, "").await;
    srv.attest_token(&token).await;
    let err = attest_agent(srv.running.addr, &srv.bundle().await, &token)
        .await
        .err()
        .expect("second use of a join token must fail");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // The refusal does not say which of invalid/expired/used it was, nor echo the token.
    assert!(!err.message().contains(&token), "{err:?}");

    // A token that never existed is refused alike.
    let err = attest_agent(srv.running.addr, &srv.bundle().await, "no-such-token")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_join_token_is_refused() {
    let srv = TestServer::start().await;
    let token = srv.join_token(1, "").await;
    // Expiry has one-second resolution: after 2.1 s the token's second has surely passed.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = attest_agent(srv.running.addr, &srv.bundle().await, &token)
        .await
        .err()
        .expect("an expired token must be refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // No agent was recorded.
    let agents = srv
        .agents()
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert!(agents.is_empty(), "{agents:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attest_rejects_malformed_requests() {
    let srv = TestServer::start().await;
    let token = srv.join_token(600, "").await;
    let mut boot = srv.bootstrap().await;

    let err = boot
        .attest(pb::AttestRequest {
            attestation_type: "join_token".into(),
            attestation_data: token.clone().into_bytes(),
            csr: b"definitely not a CSR".to_vec(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "csr");

    let mut bad_sig = csr();
    let n = bad_sig.len();
    bad_sig[n - 2] ^= 0x5a;
    let err = boot
        .attest(pb::AttestRequest {
            attestation_type: "join_token".into(),
            attestation_data: token.clone().into_bytes(),
            csr: bad_sig,
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "csr");

    let err = boot
        .attest(pb::AttestRequest {
            attestation_type: "aws_iid".into(),
            attestation_data: token.clone().into_bytes(),
            csr: csr(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "attestation_type");

    let err = boot
        .attest(pb::AttestRequest {
            attestation_type: "join_token".into(),
            attestation_data: vec![0xff, 0xfe],
            csr: csr(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "attestation_data");

    // None of the refusals consumed the token.
    srv.attest_token(&token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_svid_for_authorized_entry() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let spiffe_id = format!("spiffe://{TD}/ns/prod/sa/api");
    let e = srv
        .create_entry(pb::Entry {
            x509_svid_ttl: 120,
            dns_names: vec!["api.example.org".into(), "api.prod.svc".into()],
            ..entry(&spiffe_id, &agent.id_str())
        })
        .await;

    let (key, csr) = key_and_csr();
    let before = unix_now();
    let r = agent.sign(&e.id, csr).await;
    let after = unix_now();
    assert_eq!(r.code, 0, "{}", r.error);
    assert!(r.error.is_empty());
    assert_eq!(r.entry_id, e.id);
    let svid = r.svid.unwrap();
    assert_eq!(svid.spiffe_id, spiffe_id);
    let chain: Vec<Vec<u8>> = svid.cert_chain.iter().map(|c| c.to_vec()).collect();
    assert_eq!(validate(&chain, &srv.roots().await).to_string(), spiffe_id);

    let info = cert_info(&chain[0]);
    assert_eq!(info.uris, std::slice::from_ref(&spiffe_id));
    assert_eq!(info.dns, ["api.example.org", "api.prod.svc"]);
    assert_eq!(info.spki, spki(&key), "the CSR's key is certified");
    assert!(!info.is_ca);
    // TTL from the entry: notAfter = issuance + 120 s.
    assert!(
        info.not_after >= before + 120 && info.not_after <= after + 121,
        "notAfter {} not ~{}+120",
        info.not_after,
        before
    );
    assert!(info.not_before <= before, "notBefore is backdated");
    assert_eq!(svid.expires_at, info.not_after);

    // An entry without a TTL gets the server default (1h).
    let e2 = srv
        .create_entry(entry(
            &format!("spiffe://{TD}/default-ttl"),
            &agent.id_str(),
        ))
        .await;
    let r = agent.sign(&e2.id, key_and_csr().1).await;
    assert_eq!(r.code, 0, "{}", r.error);
    let info = cert_info(&r.svid.unwrap().cert_chain[0]);
    assert!((info.not_after - unix_now() - 3600).abs() <= 5, "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_entries_the_agent_is_not_authorized_for() {
    let srv = TestServer::start().await;
    let a = srv.attest().await;
    let b = srv.attest().await;
    let mine = srv
        .create_entry(entry(&format!("spiffe://{TD}/mine"), &a.id_str()))
        .await;
    let theirs = srv
        .create_entry(entry(&format!("spiffe://{TD}/theirs"), &b.id_str()))
        .await;

    // One batch, three items: refusals are per item and do not fail the others.
    let results = a
        .sign_batch(vec![
            (mine.id.clone(), csr()),
            (theirs.id.clone(), csr()),
            ("no-such-entry".into(), csr()),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].code, 0, "{}", results[0].error);
    assert!(results[0].svid.is_some());
    for r in &results[1..] {
        assert_item(r.code, &r.error, Code::PermissionDenied, "entry_id");
        assert!(r.svid.is_none());
    }
    assert_eq!(results[1].entry_id, theirs.id);

    // B gets its own entry but not A's.
    assert_eq!(b.sign(&theirs.id, csr()).await.code, 0);
    let r = b.sign(&mine.id, csr()).await;
    assert_item(r.code, &r.error, Code::PermissionDenied, "entry_id");

    // An empty batch is a malformed request.
    let err = a.sign_batch(vec![]).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "params");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entry_is_not_signed() {
    let srv = TestServer::start().await;
    let a = srv.attest().await;
    let e = srv
        .create_entry(pb::Entry {
            expires_at: unix_now() - 10,
            ..entry(&format!("spiffe://{TD}/old"), &a.id_str())
        })
        .await;
    let r = a.sign(&e.id, csr()).await;
    assert_item(r.code, &r.error, Code::PermissionDenied, "entry_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_alias_authorizes_its_children() {
    let srv = TestServer::start().await;
    let alias = format!("spiffe://{TD}/node/{}", unique("rack"));
    let token = srv.join_token(600, &alias).await;
    let agent = srv.attest_token(&token).await;
    let other = srv.attest().await;

    // The alias entry was created: parent is the agent, identity is the alias.
    let aliases = srv
        .entries()
        .list_entries(pb::ListEntriesRequest {
            by_spiffe_id: alias.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(aliases.len(), 1);
    assert_eq!(aliases[0].parent_id, agent.id_str());

    let child = srv
        .create_entry(entry(&format!("spiffe://{TD}/behind-alias"), &alias))
        .await;
    let r = agent.sign(&child.id, csr()).await;
    assert_eq!(r.code, 0, "{}", r.error);
    let svid = r.svid.unwrap();
    assert_eq!(svid.spiffe_id, format!("spiffe://{TD}/behind-alias"));
    let chain: Vec<Vec<u8>> = svid.cert_chain.iter().map(|c| c.to_vec()).collect();
    validate(&chain, &srv.roots().await);

    // An agent without the alias may not.
    let r = other.sign(&child.id, csr()).await;
    assert_item(r.code, &r.error, Code::PermissionDenied, "entry_id");

    // The alias itself names the agent, not a workload: it is never issued.
    let r = agent.sign(&aliases[0].id, csr()).await;
    assert_item(r.code, &r.error, Code::PermissionDenied, "entry_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_identity_is_ignored() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let spiffe_id = format!("spiffe://{TD}/honest");
    let e = srv.create_entry(entry(&spiffe_id, &agent.id_str())).await;

    // A CSR asking for another identity, DNS name and subject.
    let key = sigil_core::keys::generate(sigil_core::keys::KeyType::EcP256).unwrap();
    let mut params = CertificateParams::new(vec!["evil.example.com".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI("spiffe://evil/x".try_into().unwrap()));
    params
        .distinguished_name
        .push(DnType::CommonName, "evil.example.com");
    let evil_csr = params.serialize_request(&key).unwrap().der().to_vec();

    let r = agent.sign(&e.id, evil_csr).await;
    assert_eq!(r.code, 0, "{}", r.error);
    let svid = r.svid.unwrap();
    assert_eq!(svid.spiffe_id, spiffe_id);
    let info = cert_info(&svid.cert_chain[0]);
    assert_eq!(info.uris, [spiffe_id]);
    assert!(info.dns.is_empty(), "{:?}", info.dns);
    assert!(!info.subject.contains("evil"), "{}", info.subject);
    assert_eq!(info.spki, spki(&key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_with_broken_signature_is_invalid_argument() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let e = srv
        .create_entry(entry(&format!("spiffe://{TD}/w"), &agent.id_str()))
        .await;
    let mut bad = csr();
    let n = bad.len();
    bad[n - 3] ^= 0x55; // inside the signature
    let results = agent
        .sign_batch(vec![
            (e.id.clone(), bad),
            (e.id.clone(), b"garbage".to_vec()),
            (e.id.clone(), csr()),
        ])
        .await
        .unwrap();
    assert_item(
        results[0].code,
        &results[0].error,
        Code::InvalidArgument,
        "csr",
    );
    assert_item(
        results[1].code,
        &results[1].error,
        Code::InvalidArgument,
        "csr",
    );
    assert!(results[0].svid.is_none() && results[1].svid.is_none());
    assert_eq!(results[2].code, 0, "{}", results[2].error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_agent_is_refused() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let e = srv
        .create_entry(entry(&format!("spiffe://{TD}/w"), &agent.id_str()))
        .await;
    assert_eq!(agent.sign(&e.id, csr()).await.code, 0);

    let banned = srv
        .agents()
        .ban_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
        .unwrap()
        .into_inner();
    assert!(banned.banned);

    // The same, still cryptographically valid, connection and SVID are refused from now on.
    let err = agent
        .sign_batch(vec![(e.id.clone(), csr())])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = agent
        .node
        .clone()
        .renew_agent(pb::RenewAgentRequest { csr: csr() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = agent.sync(0).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // A new join token with the same value does not re-admit the banned agent.
    srv.tokens()
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl: 600,
            agent_alias_spiffe_id: String::new(),
            token: agent.token.clone(),
        })
        .await
        .unwrap();
    let err = attest_agent(srv.running.addr, &srv.bundle().await, &agent.token)
        .await
        .err()
        .expect("a banned agent must not re-attest");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let rec = srv
        .agents()
        .get_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
        .unwrap()
        .into_inner();
    assert!(rec.banned, "the ban survives the attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_agent_is_refused_until_it_attests_again() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let e = srv
        .create_entry(entry(&format!("spiffe://{TD}/w"), &agent.id_str()))
        .await;
    srv.agents()
        .evict_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
        .unwrap();
    let err = agent
        .sign_batch(vec![(e.id.clone(), csr())])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = srv
        .agents()
        .get_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Eviction, unlike a ban, lets the node come back with a new token for the same ID.
    srv.tokens()
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl: 600,
            agent_alias_spiffe_id: String::new(),
            token: agent.token.clone(),
        })
        .await
        .unwrap();
    let again = srv.attest_token(&agent.token).await;
    assert_eq!(again.id, agent.id);
    assert_eq!(again.sign(&e.id, csr()).await.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_client_certificate_are_unauthenticated() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let e = srv
        .create_entry(entry(&format!("spiffe://{TD}/w"), &agent.id_str()))
        .await;
    let mut boot = srv.bootstrap().await;
    let err = boot
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            params: vec![pb::SignX509SvidParam {
                entry_id: e.id.clone(),
                csr: csr(),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = boot
        .renew_agent(pb::RenewAgentRequest { csr: csr() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = boot
        .sync(pb::SyncRequest { last_revision: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_svid_cannot_act_as_an_agent() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let e = srv
        .create_entry(entry(&format!("spiffe://{TD}/w"), &agent.id_str()))
        .await;
    let (key, csr) = key_and_csr();
    let svid = agent.sign(&e.id, csr).await.svid.unwrap();
    let chain: Vec<Vec<u8>> = svid.cert_chain.iter().map(|c| c.to_vec()).collect();
    let mut as_workload =
        authenticated_client(srv.running.addr, &srv.bundle().await, &chain, &key).await;
    let err = as_workload
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            params: vec![pb::SignX509SvidParam {
                entry_id: e.id.clone(),
                csr: key_and_csr().1,
            }],
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, "not an agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_agent_issues_a_fresh_svid() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let (key, csr) = key_and_csr();
    let svid = agent
        .node
        .clone()
        .renew_agent(pb::RenewAgentRequest { csr })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    assert_eq!(svid.spiffe_id, agent.id_str());
    let chain: Vec<Vec<u8>> = svid.cert_chain.iter().map(|c| c.to_vec()).collect();
    assert_eq!(validate(&chain, &srv.roots().await), agent.id);
    let info = cert_info(&chain[0]);
    assert_eq!(info.spki, spki(&key));
    let old = cert_info(&agent.svid.cert_chain[0]);
    assert_ne!(info.serial, old.serial);
    let rec = srv
        .agents()
        .get_agent(pb::GetAgentRequest { id: agent.id_str() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rec.x509_svid_serial, info.serial);

    // The renewed SVID authenticates on a new connection.
    let renewed = authenticated_client(srv.running.addr, &agent.bundle, &chain, &key).await;
    renewed
        .clone()
        .sync(pb::SyncRequest { last_revision: 0 })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_authority_signs_the_intermediate() {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, IsCa, KeyPair, KeyUsagePurpose,
    };

    let dir = tempfile::tempdir().unwrap();
    let root_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Upstream Test Root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let root = params.self_signed(&root_key).unwrap();
    let root_der = root.der().to_vec();
    let cert_file = dir.path().join("upstream.crt");
    let key_file = dir.path().join("upstream.key");
    std::fs::write(&cert_file, root.pem()).unwrap();
    std::fs::write(&key_file, root_key.serialize_pem()).unwrap();
    let toml = format!(
        "upstream_authority = {{ disk = {{ cert_file = '{}', key_file = '{}' }} }}",
        cert_file.display(),
        key_file.display()
    );

    let srv = TestServer::start_in(dir, &toml).await;
    // The bundle publishes the upstream root, and only it.
    let bundle = srv.bundle().await;
    assert_eq!(bundle.x509_authorities, vec![root_der.clone()]);

    // Attestation works with the upstream root as the only trust anchor (the server's own TLS
    // SVID chains through the intermediate).
    let agent = srv.attest().await;
    let e = srv
        .create_entry(entry(&format!("spiffe://{TD}/upstreamed"), &agent.id_str()))
        .await;
    let svid = agent.sign(&e.id, csr()).await.svid.unwrap();
    let chain: Vec<Vec<u8>> = svid.cert_chain.iter().map(|c| c.to_vec()).collect();
    assert_eq!(chain.len(), 2, "chain is [leaf, intermediate]");
    let root_only = vec![rustls_pki_types::CertificateDer::from(root_der.clone())];
    assert_eq!(
        validate(&chain, &root_only).to_string(),
        format!("spiffe://{TD}/upstreamed")
    );
    let inter = cert_info(&chain[1]);
    assert!(inter.is_ca);
    let (_, inter_cert) = x509_parser::parse_x509_certificate(&chain[1]).unwrap();
    let (_, root_cert) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    inter_cert
        .verify_signature(Some(root_cert.public_key()))
        .expect("intermediate is signed by the upstream root");
    assert!(inter.not_after <= root_cert.validity().not_after.timestamp());
    // The leaf is not verifiable by the root alone: it needs the intermediate.
    let leaf_der = [rustls_pki_types::CertificateDer::from(chain[0].clone())];
    assert!(
        sigil_core::validate_x509_svid(&leaf_der, &root_only, std::time::SystemTime::now())
            .is_err()
    );
}
