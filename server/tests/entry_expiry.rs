//! Entry expiry (`expires_at`, the CLI's `--entry-expiry`): an expired entry authorizes
//! nothing (neither itself nor entries under it), is not synced, is removed from agents when it
//! expires, and no SVID outlives its entry.

mod common;

use std::time::Duration;

use common::*;
use sigil_core::jwt;
use sigil_proto::sigil::v1 as pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_end_no_later_than_their_entry() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let expires_at = unix_now() + 120;
    let e = srv
        .create_entry(pb::Entry {
            expires_at,
            ..entry(&format!("spiffe://{TD}/short"), &agent.id_str())
        })
        .await;
    // The default X.509 TTL is an hour: the leaf ends when the entry does.
    let r = agent.sign(&e.id, csr()).await;
    assert_eq!(r.code, 0, "{}", r.error);
    let svid = r.svid.unwrap();
    let leaf = cert_info(&svid.cert_chain[0]);
    assert_eq!(leaf.not_after, expires_at);
    assert_eq!(svid.expires_at, expires_at);

    // The JWT default is five minutes: capped too.
    let m = agent
        .node
        .clone()
        .mint_jwt_svid(pb::MintJwtSvidRequest {
            entry_id: e.id.clone(),
            audience: vec!["aud".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        m.expires_at <= expires_at,
        "{} > {expires_at}",
        m.expires_at
    );
    assert!(m.expires_at >= expires_at - 2);
    let b = srv.bundle().await;
    let bundle = sigil_core::Bundle {
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
    };
    let v = jwt::verify(&m.token, "aud", &[&bundle], unix_now()).unwrap();
    assert_eq!(v.expires_at, m.expires_at);

    // An entry without expiry keeps the configured lifetime.
    let forever = srv
        .create_entry(entry(&format!("spiffe://{TD}/forever"), &agent.id_str()))
        .await;
    let r = agent.sign(&forever.id, csr()).await;
    let leaf = cert_info(&r.svid.unwrap().cert_chain[0]);
    assert!(leaf.not_after >= unix_now() + 3500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_parent_authorizes_nothing_below_it() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let x = format!("spiffe://{TD}/node/{}", unique("x"));
    // P (expired) would give the agent the identity X; C hangs under X.
    srv.create_entry(pb::Entry {
        expires_at: unix_now() - 5,
        ..entry(&x, &agent.id_str())
    })
    .await;
    let c = srv
        .create_entry(entry(&format!("spiffe://{TD}/c"), &x))
        .await;
    let r = agent.sign(&c.id, csr()).await;
    assert_item(r.code, &r.error, Code::PermissionDenied, "entry_id");
    let err = agent
        .node
        .clone()
        .mint_jwt_svid(pb::MintJwtSvidRequest {
            entry_id: c.id.clone(),
            audience: vec!["aud".into()],
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, "entry_id");
    // Neither P nor C is synced.
    let mut stream = agent.sync(0).await.unwrap();
    let snap = read_snapshot(&mut stream).await;
    assert!(snap[0].upserts.is_empty(), "{:?}", snap[0].upserts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_is_removed_from_the_agent_when_it_expires() {
    let srv = TestServer::start().await;
    let agent = srv.attest().await;
    let expires_at = unix_now() + 2;
    let short = srv
        .create_entry(pb::Entry {
            expires_at,
            ..entry(&format!("spiffe://{TD}/short"), &agent.id_str())
        })
        .await;
    let stays = srv
        .create_entry(entry(&format!("spiffe://{TD}/stays"), &agent.id_str()))
        .await;
    let mut stream = agent.sync(0).await.unwrap();
    let snap = read_snapshot(&mut stream).await;
    assert_eq!(snap[0].upserts.len(), 2);

    // Nothing is written to the store at expiry; the open stream still pushes the removal.
    let m = next_msg(&mut stream).await.unwrap();
    let now = unix_now();
    assert!(
        now >= expires_at,
        "removed at {now}, before the expiry {expires_at}"
    );
    assert!(
        now <= expires_at + 2,
        "removed at {now}, long after the expiry {expires_at}"
    );
    assert_eq!(m.removed_entry_ids, vec![short.id.clone()]);
    assert!(m.upserts.is_empty());

    // A new stream does not carry it, and signing for it is refused.
    let mut stream = agent.sync(0).await.unwrap();
    let snap = read_snapshot(&mut stream).await;
    assert_eq!(snap[0].upserts, vec![stays]);
    let r = agent.sign(&short.id, csr()).await;
    assert_item(r.code, &r.error, Code::PermissionDenied, "entry_id");
    // Extending the entry brings it back.
    let r = srv
        .entries()
        .batch_update_entry(pb::BatchUpdateEntryRequest {
            entries: vec![pb::Entry {
                expires_at: unix_now() + 600,
                ..short.clone()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    assert_eq!(r.code, 0, "{}", r.message);
    let m = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.upserts.len(), 1);
    assert_eq!(m.upserts[0].id, short.id);
}
