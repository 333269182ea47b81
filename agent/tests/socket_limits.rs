//! What one client may cost the agent on the Workload API socket: HTTP/2 streams per
//! connection, calls per second per user, and a client that never reads its stream.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sigil_proto::workload as wl;
use tonic::transport::Endpoint;

/// An Env whose agent has `extra` settings.
async fn env_with(extra: &str) -> (Env, sigil_agent::serve::Running) {
    let env = Env::start().await;
    // Env has written the bundle this agent's files point at.
    let files = AgentFiles::in_dir(env.dir.path(), "limited");
    let alias = format!("spiffe://{TD}/node/{}", unique("limited"));
    let token = env.server.join_token(&alias).await;
    env.server
        .create_entry(entry(&unique("w"), &alias, uid()))
        .await;
    let cfg = sigil_agent::config::Config::from_toml(
        &agent_toml(&files, env.server.addr, &token, extra),
        Default::default(),
    )
    .unwrap();
    let agent = sigil_agent::serve::start(cfg).await.unwrap();
    (env, agent)
}

async fn first_message(c: &mut WorkloadClient) -> Result<wl::X509svidResponse, tonic::Status> {
    let mut s = c
        .fetch_x509svid(wreq(wl::X509svidRequest {}))
        .await?
        .into_inner();
    s.message()
        .await?
        .ok_or_else(|| tonic::Status::internal("stream ended"))
}

#[tokio::test]
async fn streams_beyond_the_per_connection_limit_wait_for_a_free_slot() {
    let (_env, agent) = env_with("max_concurrent_streams = 2").await;
    let sock = agent.socket_path.clone();
    wait_for_svids(&sock).await;
    let c = WorkloadClient::new(unix_channel(&sock).await);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = c.clone();
        let mut s = open_x509(&mut c).await;
        next(&mut s).await.unwrap().unwrap();
        held.push(s);
    }
    // The client honours SETTINGS_MAX_CONCURRENT_STREAMS = 2: a third stream cannot open yet.
    let mut third = c.clone();
    let pending = tokio::spawn(async move { first_message(&mut third).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !pending.is_finished(),
        "a third stream was served beside two"
    );
    drop(held.pop());
    let m = tokio::time::timeout(WAIT, pending)
        .await
        .expect("the third stream never got the freed slot")
        .unwrap()
        .unwrap();
    assert_eq!(m.svids.len(), 1);
    agent.shutdown().await;
}

#[tokio::test]
async fn calls_over_the_per_user_rate_limit_get_unavailable() {
    let (_env, agent) = env_with("workload_api_rate_limit = 2").await;
    let sock = agent.socket_path.clone();
    // Let any bucket used while waiting refill.
    wait_for_svids(&sock).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut c = WorkloadClient::new(unix_channel(&sock).await);
    let mut ok = 0;
    let mut limited = Vec::new();
    let t0 = Instant::now();
    for _ in 0..8 {
        match first_message(&mut c).await {
            Ok(_) => ok += 1,
            Err(e) => limited.push(e),
        }
    }
    let took = t0.elapsed().as_secs_f64();
    // A burst of 2, plus at most 2 per second refilled while the calls ran.
    assert!(ok >= 2, "{ok} calls allowed");
    assert!(
        f64::from(ok) <= 2.0 + 2.0 * took + 1.0,
        "{ok} calls in {took:.2}s"
    );
    assert!(!limited.is_empty(), "no call was limited");
    for e in &limited {
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(e.message().contains("rate limit"), "{e:?}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    first_message(&mut c).await.expect("the bucket refilled");
    agent.shutdown().await;
}

#[tokio::test]
async fn without_a_limit_rapid_calls_are_all_served() {
    let env = Env::start().await;
    env.server
        .create_entry(env.entry(&unique("w"), uid()))
        .await;
    let sock = env.agent().socket_path.clone();
    wait_for_svids(&sock).await;
    let mut c = WorkloadClient::new(unix_channel(&sock).await);
    for i in 0..30 {
        first_message(&mut c)
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e:?}"));
    }
}

async fn wait_for_svids(sock: &Path) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = WorkloadClient::new(unix_channel(sock).await);
        if first_message(&mut c).await.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "agent never served an SVID");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clients that open streams and then never read them (no flow-control credit is returned)
/// while their identities change many times: the agent must not queue the messages they do
/// not take. The real agent binary runs so its memory is its own.
#[tokio::test]
async fn clients_that_never_read_do_not_grow_agent_memory() {
    const STUCK: usize = 40;
    const CHANGES: usize = 60;
    let env = Env::start().await;
    let files = AgentFiles::in_dir(env.dir.path(), "child");
    let alias = format!("spiffe://{TD}/node/{}", unique("child"));
    let token = env.server.join_token(&alias).await;
    env.server
        .create_entry(entry(&unique("w"), &alias, uid()))
        .await;
    let cfg = env.dir.path().join("child.toml");
    std::fs::write(
        &cfg,
        agent_toml(&files, env.server.addr, &token, "log_level = \"warn\""),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sigil-agent"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + WAIT;
    while !files.socket_path.exists() {
        assert!(Instant::now() < deadline, "agent socket never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_svids(&files.socket_path).await;

    // Each stuck client: its own connection, a 16-byte stream window, one stream never read.
    let mut stuck = Vec::new();
    for _ in 0..STUCK {
        let path = files.socket_path.clone();
        let ch = Endpoint::from_static("http://localhost")
            .initial_stream_window_size(16)
            .initial_connection_window_size(65_535)
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let p = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(p).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        let mut c = WorkloadClient::new(ch);
        let s = c
            .fetch_x509svid(wreq(wl::X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        stuck.push((c, s));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    // Every change is a new, larger message for every stuck stream: queued, they would add up
    // to STUCK * (1 + 2 + ... + CHANGES) SVIDs, about 90 MB.
    for i in 0..CHANGES {
        env.server
            .create_entry(entry(&format!("stuck/{i}"), &alias, uid()))
            .await;
    }
    // A reading client sees every SVID, so the agent has processed every change.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut c = WorkloadClient::new(unix_channel(&files.socket_path).await)
            .max_decoding_message_size(64 << 20);
        if let Ok(m) = first_message(&mut c).await
            && m.svids.len() == CHANGES + 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "agent never served every SVID");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    let grew_kib = after.saturating_sub(before);
    eprintln!("agent RSS {before} KiB -> {after} KiB with {STUCK} unread streams");
    assert!(
        grew_kib < 20 * 1024,
        "agent RSS grew by {grew_kib} KiB with {STUCK} unread streams"
    );
    drop(stuck);
    let _ = child.kill();
    let _ = child.wait();
}
