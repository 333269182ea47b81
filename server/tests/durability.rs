//! The real `sigil-server` binary as a child process: what it acknowledged survives a SIGKILL,
//! its CA is reused on restart, and a second server on the same data directory fails clearly.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use sigil_proto::sigil::v1 as pb;
use sigil_server::client::admin_channel;
use tonic::transport::Channel;

/// Startup of a debug binary on a busy CI machine: generous, but never a hang.
const STARTUP: Duration = Duration::from_secs(30);

/// A `sigil-server run` child process; killed on drop so a failing test leaves nothing behind.
struct ServerProcess {
    child: Child,
    addr: Option<SocketAddr>,
    socket: PathBuf,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

/// Removes ANSI colour sequences (`ESC [ ... letter`) from a log line.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `addr=` field of the "sigil-server listening" line of the text log format.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("sigil-server listening") {
        return None;
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
}

impl ServerProcess {
    /// Spawns `sigil-server run` on `data`/`socket` without waiting for it.
    fn spawn(data: &Path, socket: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sigil-server"))
            .args(["run", "--trust-domain", TD, "--bind-address", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data)
            .arg("--admin-socket-path")
            .arg(socket)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Drain stderr on a thread so the child never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            addr: None,
            socket: socket.to_owned(),
            lines,
            log,
        }
    }

    /// Spawns and waits until the log says it listens and the admin socket answers.
    async fn start(data: &Path, socket: &Path) -> (Self, Channel) {
        let mut p = Self::spawn(data, socket);
        let deadline = Instant::now() + STARTUP;
        while p.addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match p.lines.recv_timeout(left) {
                Ok(line) => p.addr = listening_addr(&line),
                Err(_) => panic!(
                    "server did not log its address within {STARTUP:?}; status {:?}; log:\n{}",
                    p.child.try_wait(),
                    p.log()
                ),
            }
        }
        let addr = p.addr.unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        let admin = p.admin().await;
        (p, admin)
    }

    /// Connects to the admin socket and waits for Health/Check to answer.
    async fn admin(&self) -> Channel {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(ch) = admin_channel(&self.socket).await {
                let r = HealthClient::new(ch.clone())
                    .check(pb::HealthCheckRequest {})
                    .await;
                if let Ok(h) = r {
                    assert!(h.get_ref().serving);
                    assert_eq!(h.get_ref().trust_domain, TD);
                    return ch;
                }
            }
            assert!(Instant::now() < deadline, "admin socket never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL: no shutdown code runs.
    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to exit on its own.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "process still running after {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_agents_and_ca_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let socket = dir.path().join("admin.sock");

    let (server, admin) = ServerProcess::start(&data, &socket).await;
    let bundle = get_bundle(&admin).await;
    assert_eq!(bundle.x509_authorities.len(), 1);

    // Attest an agent over real mTLS against the child's agent port.
    let token = TokensClient::new(admin.clone())
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .value;
    let agent = attest_agent(server.addr.unwrap(), &bundle, &token)
        .await
        .unwrap();
    let mut wanted: Vec<pb::Entry> = (0..20)
        .map(|i| pb::Entry {
            dns_names: vec![format!("svc{i}.example.org")],
            x509_svid_ttl: 100 + i,
            ..entry(&format!("spiffe://{TD}/svc/{i}"), &agent.id_str())
        })
        .collect();
    wanted = create_entries(&admin, wanted).await;
    // One more, deleted before the crash: it must stay deleted.
    let gone = create_entries(
        &admin,
        vec![entry(&format!("spiffe://{TD}/gone"), &agent.id_str())],
    )
    .await
    .remove(0);
    let r = EntriesClient::new(admin.clone())
        .batch_delete_entry(pb::BatchDeleteEntryRequest {
            ids: vec![gone.id.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].code, 0);
    let rev_before = HealthClient::new(admin.clone())
        .check(pb::HealthCheckRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;

    // The acknowledged writes are on disk; SIGKILL gives the process no chance to flush more.
    drop(admin);
    drop(agent);
    server.sigkill();

    // Restart on the same data dir (the dead server's socket file is still there).
    assert!(socket.exists(), "SIGKILL left the socket file behind");
    let (server, admin) = ServerProcess::start(&data, &socket).await;
    let mut got = list_entries(&admin).await;
    got.sort_by(|a, b| a.id.cmp(&b.id));
    wanted.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        got, wanted,
        "every acknowledged entry, unchanged, and nothing else"
    );
    let after = get_bundle(&admin).await;
    assert_eq!(
        after.x509_authorities, bundle.x509_authorities,
        "the CA is reused, not recreated"
    );
    let rev_after = HealthClient::new(admin.clone())
        .check(pb::HealthCheckRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert!(
        rev_after >= rev_before,
        "revision went back: {rev_before} -> {rev_after}"
    );

    // The agent record survived too: the agent signs again with its old SVID (the CA and the
    // trust chain are the same), and the token stays consumed.
    let mut ag = AgentsClient::new(admin.clone());
    let rec = ag
        .get_agent(pb::GetAgentRequest {
            id: agent_id_for(&token).to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!rec.banned);
    let err = attest_agent(server.addr.unwrap(), &after, &token)
        .await
        .err()
        .expect("a used token stays used across a crash");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_keeps_working_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let socket = dir.path().join("admin.sock");
    let (server, admin) = ServerProcess::start(&data, &socket).await;
    let bundle = get_bundle(&admin).await;
    let token = TokensClient::new(admin.clone())
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .value;
    let agent = attest_agent(server.addr.unwrap(), &bundle, &token)
        .await
        .unwrap();
    let e = create_entries(
        &admin,
        vec![entry(&format!("spiffe://{TD}/w"), &agent.id_str())],
    )
    .await
    .remove(0);
    drop(admin);
    server.sigkill();

    let (server, admin) = ServerProcess::start(&data, &socket).await;
    // A new connection with the SVID issued before the crash is still trusted and authorized.
    let chain: Vec<Vec<u8>> = agent.svid.cert_chain.iter().map(|c| c.to_vec()).collect();
    let mut node = authenticated_client(server.addr.unwrap(), &bundle, &chain, &agent.key).await;
    let r = node
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            params: vec![pb::SignX509SvidParam {
                entry_id: e.id.clone(),
                csr: csr(),
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    assert_eq!(r.code, 0, "{}", r.error);
    let svid_chain: Vec<Vec<u8>> = r
        .svid
        .unwrap()
        .cert_chain
        .iter()
        .map(|c| c.to_vec())
        .collect();
    validate(&svid_chain, &roots_of(&get_bundle(&admin).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_the_same_data_dir_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let socket = dir.path().join("admin.sock");
    let (first, admin) = ServerProcess::start(&data, &socket).await;

    // Same data dir, its own socket: the store is locked.
    let mut second = ServerProcess::spawn(&data, &dir.path().join("second.sock"));
    let status = second.wait_exit(STARTUP);
    assert!(!status.success(), "second server must fail");
    let log = second.log();
    assert!(
        log.contains("data store") && log.contains("lock"),
        "the error should say the data store is locked; log:\n{log}"
    );
    assert!(!dir.path().join("second.sock").exists());

    // Same socket, another data dir: the live socket is not stolen.
    let mut third = ServerProcess::spawn(&dir.path().join("data3"), &socket);
    let status = third.wait_exit(STARTUP);
    assert!(!status.success(), "third server must fail");
    let log = third.log();
    assert!(
        log.contains("another server is listening"),
        "the error should name the busy socket; log:\n{log}"
    );

    // The first server is unharmed.
    let h = HealthClient::new(admin)
        .check(pb::HealthCheckRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(h.serving);
    drop(first);
}
