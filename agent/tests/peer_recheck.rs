//! Long-lived Workload API streams re-check their caller before every push after the first: once
//! the process that connected has exited (and perhaps left its pid to someone else) or has exec'd
//! another binary, the stream ends with Unavailable instead of handing the next SVID or bundle to
//! whoever now holds the connection.
//!
//! The agent learns its caller from `SO_PEERCRED`, which names the process that called
//! `connect()`. So the caller here is a helper process (this test binary run again with
//! [`helper_connect_and_hand_over`] selected): it connects to the agent's socket, passes the
//! connected socket to the test over a control socket with `SCM_RIGHTS`, and then lives, dies or
//! execs `sleep` as the test orders. The test process speaks gRPC on its copy of the connection,
//! so the agent keeps attributing every call on it to the helper.

mod common;

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hyper_util::rt::TokioIo;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use sigil_proto::sigil::v1 as pb;
use sigil_proto::workload as wl;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};

/// Env var naming the agent's Workload API socket; the helper does nothing without it.
const AGENT_SOCKET_ENV: &str = "SIGIL_PEER_RECHECK_AGENT_SOCKET";
/// Env var naming the test's control socket.
const CONTROL_SOCKET_ENV: &str = "SIGIL_PEER_RECHECK_CONTROL_SOCKET";
/// Order sent over the control socket: exec [`SLEEP`].
const ORDER_EXEC: u8 = b'x';
/// The binary the helper execs into.
const SLEEP: &str = "/bin/sleep";
/// How long a helper (or the `sleep` it became) outlives a test that forgot to kill it.
const HELPER_LIFETIME: Duration = Duration::from_secs(60);
/// How long a stream may take to end once its caller is gone or changed.
const END_WAIT: Duration = Duration::from_secs(10);

/// Not a test on its own: the tests run this test binary with only this function selected, as
/// the process whose connection they use. With the env vars set it connects to the agent, sends
/// the connection to the control socket, then waits for an order: [`ORDER_EXEC`] makes it exec
/// `sleep 60`, end of file (the test finished or died) or [`HELPER_LIFETIME`] makes it exit.
#[test]
#[ignore = "helper process for the peer_recheck tests"]
fn helper_connect_and_hand_over() {
    let (Some(agent), Some(control)) = (
        std::env::var_os(AGENT_SOCKET_ENV),
        std::env::var_os(CONTROL_SOCKET_ENV),
    ) else {
        return;
    };
    let conn = StdUnixStream::connect(agent).expect("helper: connecting to the agent");
    let mut ctl = StdUnixStream::connect(control).expect("helper: connecting to the test");
    send_fd(&ctl, conn.as_fd());
    ctl.set_read_timeout(Some(HELPER_LIFETIME)).unwrap();
    let mut order = [0u8; 1];
    if let Ok(1) = ctl.read(&mut order)
        && order[0] == ORDER_EXEC
    {
        let secs = HELPER_LIFETIME.as_secs().to_string();
        let err = Command::new(SLEEP).arg(secs).exec();
        panic!("helper: exec {SLEEP}: {err}");
    }
    drop(conn);
}

/// Sends `fd` over the Unix stream `ctl` as `SCM_RIGHTS`, with one byte of payload.
fn send_fd(ctl: &StdUnixStream, fd: BorrowedFd<'_>) {
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    assert!(cmsg.push(SendAncillaryMessage::ScmRights(&fds)));
    let sent = rustix::net::sendmsg(ctl, &[IoSlice::new(b"F")], &mut cmsg, SendFlags::empty())
        .expect("sendmsg with SCM_RIGHTS");
    assert_eq!(sent, 1);
}

/// Receives the one file descriptor [`send_fd`] sent over `ctl` (blocking, bounded by `ctl`'s
/// read timeout).
fn recv_fd(ctl: &StdUnixStream) -> OwnedFd {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        ctl,
        &mut [IoSliceMut::new(&mut byte)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )
    .expect("recvmsg from the helper");
    assert_eq!(got.bytes, 1, "the helper closed the control socket early");
    cmsg.drain()
        .find_map(|m| match m {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .expect("the helper's message carried no file descriptor")
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`, counted from the last `)` as the agent does.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_ascii_whitespace()
        .nth(22 - 3)
        .unwrap()
        .parse()
        .unwrap()
}

/// `readlink /proc/<pid>/exe`: what the agent's `unix:path` selector reports.
fn exe_of(pid: u32) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
}

/// `unix:path:<path>`.
fn path_selector(path: &Path) -> pb::Selector {
    pb::Selector {
        r#type: "unix".into(),
        value: format!("path:{}", path.display()),
    }
}

/// A helper process that connected to the agent; killed and reaped on drop, so a failing test
/// leaves nothing behind.
struct Helper {
    child: Child,
    /// The test's end of the control socket: orders go out here, and closing it ends a helper
    /// that is still waiting.
    ctl: StdUnixStream,
}

impl Helper {
    /// Starts a helper that connects to `agent_socket`, and returns it with the connection it
    /// made (the test's own copy of the socket). The control socket is bound in `dir`.
    async fn spawn(agent_socket: &Path, dir: &Path) -> (Self, tokio::net::UnixStream) {
        let control = dir.join("control.sock");
        let listener = tokio::net::UnixListener::bind(&control).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "helper_connect_and_hand_over",
                "--ignored",
                "--nocapture",
            ])
            .env(AGENT_SOCKET_ENV, agent_socket)
            .env(CONTROL_SOCKET_ENV, &control)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let (ctl, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the helper did not connect to the control socket in time")
            .unwrap();
        let ctl = ctl.into_std().unwrap();
        ctl.set_nonblocking(false).unwrap();
        ctl.set_read_timeout(Some(WAIT)).unwrap();
        let (fd, ctl) = tokio::task::spawn_blocking(move || (recv_fd(&ctl), ctl))
            .await
            .unwrap();
        let conn = StdUnixStream::from(fd);
        conn.set_nonblocking(true).unwrap();
        let conn = tokio::net::UnixStream::from_std(conn).unwrap();
        (Self { child, ctl }, conn)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the helper and reaps it: the process that connected is gone for good.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Orders the helper to exec [`SLEEP`] and waits until it has: same pid, same start time,
    /// another binary (hence another `unix:path`).
    async fn exec_sleep(&mut self) {
        let pid = self.pid();
        let before = start_time(pid);
        let sleep = std::fs::canonicalize(SLEEP).unwrap();
        assert_ne!(exe_of(pid).unwrap(), sleep);
        self.ctl.write_all(&[ORDER_EXEC]).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while exe_of(pid).ok().as_ref() != Some(&sleep) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the helper did not exec {SLEEP} in time"
            );
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the helper exited instead of exec'ing"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // What makes this case hard: only the selectors tell the new program from the old one.
        assert_eq!(start_time(pid), before, "exec changed the start time");
    }

    /// Asserts the helper still runs.
    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the helper exited"
        );
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gRPC channel over exactly `conn`: the connector hands it out once, and any reconnect fails,
/// so every call on the channel is the helper's as far as the agent can tell.
async fn channel_over(conn: tokio::net::UnixStream) -> Channel {
    let slot = Arc::new(Mutex::new(Some(conn)));
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let conn = slot.lock().unwrap().take();
            async move {
                conn.map(TokioIo::new).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotConnected,
                        "the helper's connection was already used",
                    )
                })
            }
        }))
        .await
        .unwrap()
}

/// Starts a helper, makes sure the agent knows an entry with `selectors` (which must match the
/// helper), and opens FetchX509SVID over the helper's connection, reading until the first
/// message carries that entry's SVID. Returns the helper, a client on its connection, the open
/// stream and the entry's SPIFFE ID.
async fn x509_stream_through_helper(
    env: &Env,
    selectors: Vec<pb::Selector>,
) -> (
    Helper,
    WorkloadClient,
    Streaming<wl::X509svidResponse>,
    String,
) {
    let mut e = env.entry(&unique("first"), uid());
    e.selectors = selectors;
    let e = env.create(e).await;
    let (helper, conn) = Helper::spawn(&env.agent().socket_path, env.dir.path()).await;
    let mut client = WorkloadClient::new(channel_over(conn).await);
    let mut stream = open_x509(&mut client).await;
    let first = next_until(&mut stream, |m| !m.svids.is_empty()).await;
    assert_eq!(first.svids.len(), 1);
    assert_eq!(first.svids[0].spiffe_id, e.spiffe_id);
    (helper, client, stream, e.spiffe_id)
}

/// Creates a second entry for our uid (and waits until the agent knows it), so an open
/// FetchX509SVID stream has a new message to push.
async fn add_second_entry(env: &Env) -> pb::Entry {
    env.create(env.entry(&unique("second"), uid())).await
}

/// Asserts the stream's next item is Unavailable saying the caller exited or changed, within
/// [`END_WAIT`]; a message pushed first fails the test, described by `describe`. `what` tells
/// what became of the caller, for the failure message.
async fn assert_ends_unavailable<T>(
    s: &mut Streaming<T>,
    what: &str,
    describe: impl Fn(&T) -> String,
) {
    let item = tokio::time::timeout(END_WAIT, s.message())
        .await
        .unwrap_or_else(|_| panic!("the stream of a caller that {what} neither ended nor pushed"));
    match item {
        Ok(Some(m)) => panic!(
            "the stream pushed a new message to a caller that {what}: {}",
            describe(&m)
        ),
        Ok(None) => panic!("the stream of a caller that {what} ended without a status"),
        Err(status) => {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            let msg = status.message();
            assert!(
                msg.contains("exited") || msg.contains("changed"),
                "status message does not say the caller exited or changed: {msg:?}"
            );
        }
    }
}

/// The SPIFFE IDs of an X509SVIDResponse, for failure messages.
fn svid_ids(m: &wl::X509svidResponse) -> String {
    let ids: Vec<&str> = m.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    format!("SVIDs {ids:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ends_when_peer_exits() {
    let env = Env::start().await;
    let (mut helper, _client, mut stream, _) =
        x509_stream_through_helper(&env, vec![uid_selector(uid())]).await;

    helper.kill();
    add_second_entry(&env).await;
    assert_ends_unavailable(&mut stream, "exited", svid_ids).await;
    drop(stream);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ends_when_peer_execs_another_binary() {
    let env = Env::start().await;
    // The first entry also selects the helper's binary, so the SVID arriving proves the agent
    // attests `unix:path` (without it this test could not tell anything).
    let exe = std::env::current_exe().unwrap();
    let (mut helper, _client, mut stream, _) =
        x509_stream_through_helper(&env, vec![uid_selector(uid()), path_selector(&exe)]).await;

    helper.exec_sleep().await;
    add_second_entry(&env).await;
    assert_ends_unavailable(&mut stream, &format!("exec'd {SLEEP}"), svid_ids).await;
    drop(stream);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_keeps_serving_a_live_unchanged_peer() {
    let env = Env::start().await;
    let (mut helper, _client, mut stream, first) =
        x509_stream_through_helper(&env, vec![uid_selector(uid())]).await;

    // A new entry arrives as a new message (every item is unwrapped: an error fails the test).
    let second = add_second_entry(&env).await;
    let m = next_until(&mut stream, |m| m.svids.len() == 2).await;
    let ids: Vec<&str> = m.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert!(
        ids.contains(&first.as_str()) && ids.contains(&second.spiffe_id.as_str()),
        "{ids:?}"
    );

    // And so does a later change: every push re-checks, and each check passes.
    env.server.delete_entry(&second.id).await;
    let m = next_until(&mut stream, |m| m.svids.len() == 1).await;
    assert_eq!(m.svids[0].spiffe_id, first);
    helper.assert_alive();
    drop(stream);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_streams_end_when_peer_exits() {
    let env = Env::start().await;
    let (mut helper, mut client, svids, _) =
        x509_stream_through_helper(&env, vec![uid_selector(uid())]).await;
    drop(svids);
    let mut x509 = client
        .fetch_x509_bundles(wreq(wl::X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    next(&mut x509).await.unwrap().unwrap();
    let mut jwt = client
        .fetch_jwt_bundles(wreq(wl::JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    next(&mut jwt).await.unwrap().unwrap();

    helper.kill();
    // A federated trust domain for our entries: both bundle streams have a new bundle to push.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://other.org".try_into().unwrap(),
    )];
    let ca = params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    env.server
        .bundles()
        .set_federated_bundle(pb::Bundle {
            trust_domain: "other.org".into(),
            x509_authorities: vec![ca.der().to_vec()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut e = env.entry(&unique("federated"), uid());
    e.federates_with = vec!["other.org".into()];
    env.create(e).await;

    assert_ends_unavailable(&mut x509, "exited", |m| {
        format!("bundles {:?}", m.bundles.keys())
    })
    .await;
    assert_ends_unavailable(&mut jwt, "exited", |m| {
        format!("bundles {:?}", m.bundles.keys())
    })
    .await;
    drop((x509, jwt));
    env.shutdown().await;
}
