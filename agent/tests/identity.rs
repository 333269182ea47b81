//! The agent's stored identity across restarts: a crash in the middle of persisting it never
//! leaves an agent that cannot start without saying why and how to recover.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The certificate chain the agent stored, from whichever layout holds it.
fn stored_chain_pem(data_dir: &Path) -> String {
    // `agent_svid.pem` is the older layout (chain and key in two files).
    let file = ["agent_identity.pem", "agent_svid.pem"]
        .iter()
        .map(|f| data_dir.join(f))
        .find(|p| p.exists())
        .expect("the agent stored no certificate");
    let text = std::fs::read_to_string(file).unwrap();
    pem::parse_many(text)
        .unwrap()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| pem::encode(&p))
        .collect()
}

/// Leaves `data_dir` as a crash between "write the new key" and "write the new certificate"
/// left it before the identity became one file: a fresh key beside the old certificate.
fn half_written_renewal(data_dir: &Path) -> PathBuf {
    let chain = stored_chain_pem(data_dir);
    let _ = std::fs::remove_file(data_dir.join("agent_identity.pem"));
    let new_key = rcgen::KeyPair::generate().unwrap().serialize_der();
    std::fs::write(data_dir.join("agent_key.der"), new_key).unwrap();
    std::fs::write(data_dir.join("agent_svid.pem"), chain).unwrap();
    data_dir.join("agent_key.der")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_written_identity_says_how_to_recover_and_a_new_token_recovers() {
    let mut env = Env::start().await;
    let old_id = env.agent().agent_id.clone();
    env.create(env.entry("after-recovery", uid())).await;
    env.shutdown_agent().await;
    let key_file = half_written_renewal(&env.files.data_dir);

    // The join token is spent: the agent cannot start, and says why and what to do.
    let err = start_agent(&env.files, env.server.addr, &env.token)
        .await
        .expect_err("an agent with a mismatched key and certificate started");
    let msg = err.to_string();
    for want in [
        key_file.display().to_string(),
        "does not match".into(),
        "attesting again failed".into(),
        "sigil token generate".into(),
        "join_token".into(),
    ] {
        assert!(
            msg.contains(&want),
            "the error should mention {want:?}: {msg}"
        );
    }

    // Following the advice works: a new token, and the agent attests again and serves.
    let token = env.server.join_token(&env.alias).await;
    let agent = start_agent(&env.files, env.server.addr, &token)
        .await
        .expect("a new join token must recover the agent");
    assert_ne!(agent.agent_id, old_id);
    assert_eq!(
        agent.agent_id,
        format!("spiffe://{TD}/sigil/agent/join_token/{token}")
    );
    env.agent = Some(agent);
    let mut c = env.client().await;
    let m = fetch_x509(&mut c).await;
    assert_eq!(
        m.svids[0].spiffe_id,
        format!("spiffe://{TD}/after-recovery")
    );
    env.shutdown_agent().await;

    // The replacement is stored whole: the next restart reuses it without a token.
    let agent = start_agent(&env.files, env.server.addr, "")
        .await
        .expect("the recovered identity must be reused");
    env.agent = Some(agent);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_replacing_the_identity_keeps_the_previous_one() {
    let mut env = Env::start().await;
    let id = env.agent().agent_id.clone();
    env.shutdown_agent().await;
    // A write interrupted before its rename leaves a partial temp file beside the identity.
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    std::fs::write(
        env.files.data_dir.join("agent_identity.tmp"),
        &key[..key.len() / 2],
    )
    .unwrap();

    let agent = start_agent(&env.files, env.server.addr, &env.token)
        .await
        .expect("the previous identity must still be usable");
    assert_eq!(agent.agent_id, id);
    env.agent = Some(agent);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_identity_file_is_named_with_the_way_to_recover() {
    let mut env = Env::start().await;
    env.shutdown_agent().await;
    let file = env.files.data_dir.join("agent_identity.pem");
    std::fs::write(&file, "-----BEGIN PRIVATE KEY-----\ntruncated").unwrap();
    let err = start_agent(&env.files, env.server.addr, "")
        .await
        .expect_err("a damaged identity must not start");
    let msg = err.to_string();
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("sigil token generate"), "{msg}");
    env.shutdown().await;
}
