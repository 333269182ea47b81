//! The agent's Workload API end to end: a real server and a real agent in this process, real
//! Unix sockets, real mTLS between agent and server, real sled. The test process is the
//! workload: the agent attests it by `SO_PEERCRED`, so entries select `unix:uid:<our uid>`.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;
use sigil_proto::sigil::v1 as pb;
use sigil_proto::workload as wl;
use tonic::{Code, Request};

/// Checks one SVID of a response: chain valid against its bundle (X5-1..X5-14 via
/// `validate_x509_svid`), ID matches, key is PKCS#8 and the private half of the leaf.
#[track_caller]
fn check_svid(svid: &wl::X509svid, want_id: &str) {
    assert_eq!(svid.spiffe_id, want_id);
    assert!(!svid.x509_svid.is_empty() && !svid.x509_svid_key.is_empty());
    assert!(!svid.bundle.is_empty());
    let chain = split_der(&svid.x509_svid);
    let roots = split_der(&svid.bundle);
    let id = sigil_core::validate_x509_svid(&chain, &roots, SystemTime::now())
        .unwrap_or_else(|e| panic!("SVID for {want_id} does not validate: {e}"));
    assert_eq!(id.to_string(), want_id);
    assert_eq!(
        pkcs8_public_key(&svid.x509_svid_key),
        leaf_public_key(&chain[0]),
        "x509_svid_key is not the leaf's private key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_workload_gets_its_svid_and_bundle() {
    let env = Env::start().await;
    let e = env.create(env.entry("web", uid())).await;
    let mut c = env.client().await;
    let mut stream = open_x509(&mut c).await;
    let first = next_until(&mut stream, |m| !m.svids.is_empty()).await;
    assert_eq!(first.svids.len(), 1);
    let want = format!("spiffe://{TD}/web");
    check_svid(&first.svids[0], &want);
    assert_eq!(e.spiffe_id, want);
    // The bundle is the server's own.
    let own = env.server.bundle().await;
    assert_eq!(
        first.svids[0].bundle.to_vec(),
        own.x509_authorities.concat()
    );
    assert!(first.federated_bundles.is_empty());

    // WL-4: the stream stays open after the first message.
    let r = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(r.is_err(), "stream delivered or ended unexpectedly: {r:?}");
    drop(stream);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_matching_nothing_is_denied() {
    let env = Env::start().await;
    // Only an entry for somebody else.
    let e = env.server.create_entry(env.entry("other", uid() + 1)).await;
    env.wait_entry(&e.id, true).await;
    let mut c = env.client().await;
    assert_code(
        c.fetch_x509svid(wreq(wl::X509svidRequest {})).await,
        Code::PermissionDenied,
    );
    assert_code(
        c.fetch_x509_bundles(wreq(wl::X509BundlesRequest {})).await,
        Code::PermissionDenied,
    );
    assert_code(
        c.fetch_jwt_bundles(wreq(wl::JwtBundlesRequest {})).await,
        Code::PermissionDenied,
    );
    assert_code(
        c.fetch_jwtsvid(wreq(wl::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        }))
        .await,
        Code::PermissionDenied,
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_header_is_required_and_case_sensitive() {
    let env = Env::start().await;
    // Not even a matching entry: the header check must still win (WL-1).
    let mut c = env.client().await;
    let bad_headers: [Option<&str>; 3] = [None, Some("TRUE"), Some("True")];
    for h in bad_headers {
        let req = |m| {
            let mut r = Request::new(m);
            if let Some(v) = h {
                r.metadata_mut()
                    .insert(sigil_proto::WORKLOAD_HEADER, v.parse().unwrap());
            }
            r
        };
        assert_code(
            c.fetch_x509svid(req(wl::X509svidRequest {})).await,
            Code::InvalidArgument,
        );
        let mut r = Request::new(wl::X509BundlesRequest {});
        if let Some(v) = h {
            r.metadata_mut()
                .insert(sigil_proto::WORKLOAD_HEADER, v.parse().unwrap());
        }
        assert_code(c.fetch_x509_bundles(r).await, Code::InvalidArgument);
        let mut r = Request::new(wl::JwtBundlesRequest {});
        if let Some(v) = h {
            r.metadata_mut()
                .insert(sigil_proto::WORKLOAD_HEADER, v.parse().unwrap());
        }
        assert_code(c.fetch_jwt_bundles(r).await, Code::InvalidArgument);
        let mut r = Request::new(wl::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        });
        if let Some(v) = h {
            r.metadata_mut()
                .insert(sigil_proto::WORKLOAD_HEADER, v.parse().unwrap());
        }
        assert_code(c.fetch_jwtsvid(r).await, Code::InvalidArgument);
        let mut r = Request::new(wl::ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "x.y.z".into(),
        });
        if let Some(v) = h {
            r.metadata_mut()
                .insert(sigil_proto::WORKLOAD_HEADER, v.parse().unwrap());
        }
        assert_code(c.validate_jwtsvid(r).await, Code::InvalidArgument);
    }
    // With a matching entry the same holds.
    let e = env.server.create_entry(env.entry("hdr", uid())).await;
    env.wait_entry(&e.id, true).await;
    assert_code(
        c.fetch_x509svid(Request::new(wl::X509svidRequest {})).await,
        Code::InvalidArgument,
    );
    let mut r = Request::new(wl::X509svidRequest {});
    r.metadata_mut()
        .insert(sigil_proto::WORKLOAD_HEADER, "TRUE".parse().unwrap());
    assert_code(c.fetch_x509svid(r).await, Code::InvalidArgument);
    // And the right header works.
    let m = fetch_x509_n(&mut c, 1).await;
    assert_eq!(m.svids[0].spiffe_id, format!("spiffe://{TD}/hdr"));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_changes_reach_the_open_stream() {
    let env = Env::start().await;
    let a = env.create(env.entry("a", uid())).await;
    let mut c = env.client().await;
    let mut stream = open_x509(&mut c).await;
    let first = next_until(&mut stream, |m| m.svids.len() == 1).await;
    check_svid(&first.svids[0], &format!("spiffe://{TD}/a"));

    // Created: the open stream delivers the new SVID; time it from the acknowledgement.
    let mut latencies = Vec::new();
    let mut ids = vec![a.id.clone()];
    for i in 0..3 {
        let path = format!("b{i}");
        let e = env.server.create_entry(env.entry(&path, uid())).await;
        let acked = Instant::now();
        let want = format!("spiffe://{TD}/{path}");
        let m = next_until(&mut stream, |m| m.svids.iter().any(|s| s.spiffe_id == want)).await;
        latencies.push(acked.elapsed());
        assert_eq!(m.svids.len(), i + 2);
        for s in &m.svids {
            check_svid(s, &s.spiffe_id.clone());
        }
        ids.push(e.id);
    }
    eprintln!("entry creation -> open stream: {latencies:?}");
    for l in &latencies {
        assert!(
            *l < Duration::from_secs(1),
            "propagation took {l:?} (latencies {latencies:?})"
        );
    }

    // Deleted: the SVID disappears from the next message, the others stay.
    let gone = format!("spiffe://{TD}/b0");
    env.server.delete_entry(&ids[1]).await;
    let m = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(m.svids.len(), 3, "{:?}", ids_of(&m));
    assert!(!m.svids.iter().any(|s| s.spiffe_id == gone));

    // Deleting the last entries: the stream ends with PermissionDenied.
    for id in [&ids[0], &ids[2]] {
        env.server.delete_entry(id).await;
    }
    let m = next_until(&mut stream, |m| m.svids.len() == 1).await;
    assert_eq!(m.svids[0].spiffe_id, format!("spiffe://{TD}/b2"));
    env.server.delete_entry(&ids[3]).await;
    let end = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("stream neither ended nor failed");
    match end {
        Err(s) => assert_eq!(s.code(), Code::PermissionDenied, "{s:?}"),
        Ok(m) => panic!("expected PermissionDenied, got {m:?}"),
    }
    // A new call is refused too.
    assert_code(
        c.fetch_x509svid(wreq(wl::X509svidRequest {})).await,
        Code::PermissionDenied,
    );
    env.shutdown().await;
}

fn ids_of(m: &wl::X509svidResponse) -> Vec<&str> {
    m.svids.iter().map(|s| s.spiffe_id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_svid_is_rotated_before_it_expires() {
    let env = Env::start().await;
    let mut e = env.entry("short", uid());
    e.x509_svid_ttl = 4;
    env.create(e).await;
    let mut c = env.client().await;
    let mut stream = open_x509(&mut c).await;
    let first = next_until(&mut stream, |m| m.svids.len() == 1).await;
    let received = SystemTime::now();
    let old = &first.svids[0];
    let old_chain = split_der(&old.x509_svid);
    let old_expiry = not_after(&old_chain[0]);
    // The server honours the entry's short TTL (nothing capped or stretched).
    let left = old_expiry
        .duration_since(received)
        .unwrap_or_default()
        .as_secs_f64();
    assert!(left <= 4.5, "SVID lives {left}s, the entry asked for 4s");

    let m = tokio::time::timeout(Duration::from_secs(6), stream.message())
        .await
        .expect("no rotation within 6s")
        .unwrap()
        .unwrap();
    let arrived = SystemTime::now();
    assert!(
        arrived < old_expiry,
        "new SVID arrived at {arrived:?}, after the old one expired at {old_expiry:?}"
    );
    let new = &m.svids[0];
    check_svid(new, &format!("spiffe://{TD}/short"));
    assert_ne!(new.x509_svid, old.x509_svid, "certificate did not change");
    assert_ne!(
        new.x509_svid_key, old.x509_svid_key,
        "private key did not change"
    );
    let new_chain = split_der(&new.x509_svid);
    assert!(not_after(&new_chain[0]) > old_expiry);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_svids_survive_a_server_outage_and_sync_resumes() {
    let mut env = Env::start().await;
    env.create(env.entry("steady", uid())).await;
    let mut c = env.client().await;
    let before = fetch_x509_n(&mut c, 1).await;
    let mut stream = open_x509(&mut c).await;
    next(&mut stream).await.unwrap().unwrap();

    // Server gone: a new call is still answered from the cache.
    let port = env.server.addr.port();
    env.server.shutdown().await;
    let during = fetch_x509_n(&mut c, 1).await;
    assert_eq!(during.svids[0].x509_svid, before.svids[0].x509_svid);
    check_svid(&during.svids[0], &format!("spiffe://{TD}/steady"));

    // Server back on the same data dir and port: sync resumes and new entries arrive.
    env.server = TestServer::start(env.dir.path(), port).await;
    assert_eq!(env.server.addr.port(), port);
    env.server.create_entry(env.entry("after", uid())).await;
    let want = format!("spiffe://{TD}/after");
    let m = next_until(&mut stream, |m| m.svids.iter().any(|s| s.spiffe_id == want)).await;
    assert_eq!(m.svids.len(), 2);
    for s in &m.svids {
        check_svid(s, &s.spiffe_id.clone());
    }
    drop(stream);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_keeps_its_identity_without_reattesting() {
    let mut env = Env::start().await;
    let agent_id = env.agent().agent_id.clone();
    assert_eq!(
        agent_id,
        format!("spiffe://{TD}/sigil/agent/join_token/{}", env.token)
    );
    env.create(env.entry("persist", uid())).await;
    let mut c = env.client().await;
    fetch_x509_n(&mut c, 1).await;
    env.shutdown_agent().await;

    // The join token is single use: attesting again with it must fail...
    let fresh = AgentFiles {
        data_dir: env.dir.path().join("fresh-data"),
        socket_path: env.dir.path().join("fresh/api.sock"),
        admin_socket_path: env.dir.path().join("fresh-admin/a.sock"),
        bundle_path: env.files.bundle_path.clone(),
    };
    let err = start_agent(&fresh, env.server.addr, &env.token)
        .await
        .expect_err("a used join token attested again");
    assert!(err.to_string().contains("refused"), "{err}");

    // ...so an agent restarted on its data dir that works did not re-attest.
    let agent = start_agent(&env.files, env.server.addr, &env.token)
        .await
        .unwrap();
    assert_eq!(agent.agent_id, agent_id);
    env.agent = Some(agent);
    // A workload calling right after the restart gets its SVID in the first message (the agent
    // waits for its first sync and for the SVID rather than answering "no identity").
    let mut c = env.client().await;
    let m = fetch_x509(&mut c).await;
    assert_eq!(m.svids.len(), 1);
    check_svid(&m.svids[0], &format!("spiffe://{TD}/persist"));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_entries_give_several_svids_default_first() {
    let env = Env::start().await;
    // Created one after the other, within the same second: the first is the default.
    let names = ["first", "second", "third"];
    for n in names {
        let mut e = env.entry(n, uid());
        e.hint = format!("{n}-hint");
        env.create(e).await;
    }
    let mut c = env.client().await;
    let m = fetch_x509_n(&mut c, 3).await;
    for (s, n) in m.svids.iter().zip(names) {
        assert_eq!(
            s.spiffe_id,
            format!("spiffe://{TD}/{n}"),
            "{:?}",
            ids_of(&m)
        );
        assert_eq!(s.hint, format!("{n}-hint"));
        check_svid(s, &s.spiffe_id.clone());
    }
    // Distinct keys per SVID.
    assert_ne!(m.svids[0].x509_svid_key, m.svids[1].x509_svid_key);
    env.shutdown().await;
}

/// One-shot clients read only the first message: it must hold every SVID of the caller, not
/// just those already signed when the call arrived, or the default could be the wrong one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_message_waits_for_svids_still_being_signed() {
    let env = Env::start().await;
    let mut c = env.client().await;
    for round in 0..3 {
        let names: Vec<String> = (0..5).map(|i| format!("batch{round}/e{i}")).collect();
        let created = env
            .server
            .create_entries(names.iter().map(|n| env.entry(n, uid())).collect())
            .await;
        // The agent knows the entries; their SVIDs may still be in flight.
        for e in &created {
            env.wait_entry(&e.id, true).await;
        }
        let m = fetch_x509(&mut c).await;
        assert_eq!(m.svids.len(), 5 * (round + 1), "{:?}", ids_of(&m));
        assert_eq!(m.svids[0].spiffe_id, format!("spiffe://{TD}/batch0/e0"));
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_bundles_and_federation() {
    let env = Env::start().await;
    env.create(env.entry("plain", uid())).await;
    let mut c = env.client().await;
    let svids = fetch_x509_n(&mut c, 1).await;

    let mut b = c
        .fetch_x509_bundles(wreq(wl::X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut b).await.unwrap().unwrap();
    let own_key = format!("spiffe://{TD}");
    assert_eq!(first.bundles.len(), 1, "{:?}", first.bundles.keys());
    assert_eq!(first.bundles[&own_key], svids.svids[0].bundle);

    // A federated trust domain with its own CA.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://other.org".try_into().unwrap(),
    )];
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&key).unwrap();
    let ca_der = ca.der().to_vec();
    env.server
        .bundles()
        .set_federated_bundle(pb::Bundle {
            trust_domain: "other.org".into(),
            x509_authorities: vec![ca_der.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut e = env.entry("federated", uid());
    e.federates_with = vec!["other.org".into()];
    env.create(e).await;

    let m = fetch_x509_n(&mut c, 2).await;
    assert_eq!(
        m.federated_bundles.keys().collect::<Vec<_>>(),
        ["spiffe://other.org"]
    );
    assert_eq!(m.federated_bundles["spiffe://other.org"].to_vec(), ca_der);
    // FED-4: no own certificate inside the federated bundle.
    let own = env.server.bundle().await;
    for own_cert in &own.x509_authorities {
        assert!(
            !split_der(&m.federated_bundles["spiffe://other.org"])
                .iter()
                .any(|c| c.as_ref() == own_cert.as_slice())
        );
    }
    // FED-3/5: FetchX509Bundles shows the same federated domain, plus the own one.
    let up = next_until(&mut b, |m| m.bundles.len() == 2).await;
    assert_eq!(up.bundles["spiffe://other.org"].to_vec(), ca_der);
    assert_eq!(up.bundles[&own_key], m.svids[0].bundle);
    // FetchJWTBundles names both trust domains too.
    let mut j = c
        .fetch_jwt_bundles(wreq(wl::JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let jb = next(&mut j).await.unwrap().unwrap();
    assert!(jb.bundles.contains_key(&own_key), "{:?}", jb.bundles.keys());
    assert!(jb.bundles.contains_key("spiffe://other.org"));
    drop((b, j));
    env.shutdown().await;
}
