//! X.509 CA rotation: a prepared CA is published before it signs, activation switches signing,
//! the old root stays trusted until it expires, and the automatic schedule does both steps.

mod common;

use std::time::Duration;

use common::*;
use sigil_proto::sigil::v1 as pb;
use tonic::Code;

type LocalAuthority = pb::local_authority_client::LocalAuthorityClient<tonic::transport::Channel>;

fn roots_ders(b: &pb::Bundle) -> Vec<Vec<u8>> {
    b.x509_authorities.clone()
}

async fn sign_chain(agent: &TestAgent, entry_id: &str) -> Vec<Vec<u8>> {
    let r = agent.sign(entry_id, csr()).await;
    assert_eq!(r.code, 0, "{}", r.error);
    r.svid
        .unwrap()
        .cert_chain
        .iter()
        .map(|c| c.to_vec())
        .collect()
}

fn chains_to(chain: &[Vec<u8>], root: &[u8]) -> bool {
    let certs: Vec<_> = chain
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.clone()))
        .collect();
    let roots = [rustls_pki_types::CertificateDer::from(root.to_vec())];
    sigil_core::validate_x509_svid(&certs, &roots, std::time::SystemTime::now()).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_then_activate_by_hand() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let e = srv
        .create_entry(entry(&format!("spiffe://{TD}/rotating"), &agent.id_str()))
        .await;
    let mut la = LocalAuthority::new(srv.admin.clone());
    let before = srv.bundle().await;
    let old_root = before.x509_authorities[0].clone();

    // Nothing prepared yet: activation is a precondition failure and changes nothing.
    let err = la
        .activate_x509_authority(pb::ActivateX509AuthorityRequest::default())
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "prepared");

    // Prepare: the new root is published (sequence up) but the old CA still signs.
    let st = la
        .prepare_x509_authority(pb::PrepareX509AuthorityRequest {})
        .await
        .unwrap()
        .into_inner();
    let prepared = st.prepared.clone().unwrap();
    let after_prepare = srv.bundle().await;
    assert_eq!(roots_ders(&after_prepare).len(), 2);
    assert!(after_prepare.sequence_number > before.sequence_number);
    assert!(
        after_prepare
            .x509_authorities
            .contains(&prepared.certificate)
    );
    let chain = sign_chain(&agent, &e.id).await;
    assert!(chains_to(&chain, &old_root));
    assert!(!chains_to(&chain, &prepared.certificate));

    // Activating a CA by the wrong ID is refused.
    let err = la
        .activate_x509_authority(pb::ActivateX509AuthorityRequest {
            authority_id: "not-this-one".into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "prepared");

    // Activate: new SVIDs chain to the new root only; the old root stays published, and the
    // agent whose SVID came from the old CA is still accepted.
    let st = la
        .activate_x509_authority(pb::ActivateX509AuthorityRequest {
            authority_id: prepared.authority_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.active.unwrap().authority_id, prepared.authority_id);
    assert!(st.prepared.is_none());
    let chain = sign_chain(&agent, &e.id).await;
    assert!(chains_to(&chain, &prepared.certificate));
    assert!(!chains_to(&chain, &old_root));
    let after = srv.bundle().await;
    assert!(after.x509_authorities.contains(&old_root));

    // A new agent attests and signs with the new CA; the listener trusts its SVID.
    let fresh = srv.attest().await;
    let e2 = srv
        .create_entry(entry(&format!("spiffe://{TD}/fresh"), &fresh.id_str()))
        .await;
    let chain = sign_chain(&fresh, &e2.id).await;
    assert!(chains_to(&chain, &prepared.certificate));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_ca_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let srv = TestServer::start_in(dir, "").await;
    let mut la = LocalAuthority::new(srv.admin.clone());
    let st = la
        .prepare_x509_authority(pb::PrepareX509AuthorityRequest {})
        .await
        .unwrap()
        .into_inner();
    let TestServer { running, dir, .. } = srv;
    running.shutdown().await;
    assert_eq!(dir.path(), path);
    let srv = TestServer::start_in(dir, "").await;
    let mut la = LocalAuthority::new(srv.admin.clone());
    let again = la
        .get_x509_authority_state(pb::GetX509AuthorityStateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.prepared.unwrap().authority_id,
        st.prepared.unwrap().authority_id
    );
    assert_eq!(
        again.active.unwrap().authority_id,
        st.active.unwrap().authority_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_schedule_prepares_then_activates() {
    // CA life 12 s: prepared at 6 s, activated at 10 s.
    let srv = TestServer::start_toml("ca_ttl = \"12s\"\ndefault_x509_svid_ttl = \"4s\"").await;
    let mut la = LocalAuthority::new(srv.admin.clone());
    let first = la
        .get_x509_authority_state(pb::GetX509AuthorityStateRequest {})
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut saw_prepared = false;
    loop {
        let st = la
            .get_x509_authority_state(pb::GetX509AuthorityStateRequest {})
            .await
            .unwrap()
            .into_inner();
        if let Some(p) = &st.prepared {
            saw_prepared = true;
            assert!(srv.bundle().await.x509_authorities.contains(&p.certificate));
        }
        if st.active.as_ref().unwrap().authority_id != first.authority_id {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no activation within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        saw_prepared,
        "the next CA was published before it became active"
    );
}
