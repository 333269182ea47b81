//! Who is on the other end of an accepted Workload API connection.
//!
//! The kernel tells us the caller's pid/uid/gid (`SO_PEERCRED`, taken at `connect()` time), but a
//! pid is only a name: once the caller exits, the kernel may hand the same number to another
//! process, and every later `/proc/<pid>` read would describe that stranger. So the moment we
//! accept, we also record the process start time (field 22 of `/proc/<pid>/stat`). Attestation
//! reads `/proc` and then checks the start time again (see [`crate::attestation::attest_peer`]):
//! a different value means the pid was recycled and the selectors belong to someone else.
//!
//! That leaves the window between `connect()` and our first read: if the caller exits and its pid
//! is recycled before we read `/proc/<pid>/stat`, the first start time we see is already the
//! newcomer's. Where the kernel offers `SO_PEERPIDFD` (Linux 6.5+) we close it: the pidfd names
//! the very process that connected, and after reading the start time we check through it that
//! this process still holds the pid (it has not been reaped, so the number cannot have been
//! reused). On older kernels the window stays open, as it does in SPIRE's peer tracker; closing
//! it requires the caller to exit and the pid space to wrap within microseconds.
//!
//! [`PeerStream`] carries the captured peer through tonic as connection info, so a handler reads
//! it with `request.extensions().get::<PeerConnectInfo>()`; [`incoming`] turns a listener into the
//! stream `serve_with_incoming` wants.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::Connected;

/// The process that connected to the agent, pinned to one incarnation of its pid.
///
/// `uid` and `gid` are the effective ids the kernel recorded at `connect()`; attestors use them
/// rather than `/proc`, which a later `setuid` or a recycled pid could change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerInfo {
    /// Process id in the agent's pid namespace.
    pub pid: i32,
    /// Effective user id at `connect()`.
    pub uid: u32,
    /// Effective group id at `connect()`.
    pub gid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22); tells two processes
    /// that shared a pid apart.
    pub start_time: u64,
}

/// Why the peer of a connection could not be identified. Such a connection still serves, but
/// every Workload API call on it is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// Reading the peer's credentials from the socket (`SO_PEERCRED`, `SO_PEERPIDFD` and the
    /// pidfd's fdinfo) failed; on kernels 6.5 to 6.15 this is also how a peer that already exited
    /// shows up.
    #[error("reading peer credentials: {0}")]
    Credentials(#[source] io::Error),
    /// The kernel reported no pid (or pid 0): the caller lives in a pid namespace the agent
    /// cannot see, so nothing about it can be read from `/proc`.
    #[error("peer pid is not visible from the agent's pid namespace")]
    NoPid,
    /// `/proc/<pid>/stat` could not be read or parsed, usually because the caller already exited.
    #[error("reading start time of pid {pid}: {source}")]
    StartTime {
        /// The pid from `SO_PEERCRED`.
        pid: i32,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The process that connected exited and was reaped before its start time was pinned, so
    /// whatever now runs under its pid is someone else.
    #[error("the process that connected as pid {pid} exited before it could be identified")]
    Exited {
        /// The pid from `SO_PEERCRED`.
        pid: i32,
    },
}

impl PeerInfo {
    /// Captures the peer of an accepted connection: credentials first, then the start time at
    /// once, so the window in which the pid could change hands is as short as we can make it;
    /// with `SO_PEERPIDFD` that window is closed entirely (see the module doc).
    ///
    /// Blocking, but only on small in-memory `/proc` reads.
    pub fn from_stream(stream: &UnixStream) -> Result<Self, PeerError> {
        let cred = stream.peer_cred().map_err(PeerError::Credentials)?;
        let pid = cred.pid().filter(|&p| p > 0).ok_or(PeerError::NoPid)?;
        let pidfd = peer_pidfd(stream)?;
        let start_time =
            read_start_time(pid).map_err(|source| PeerError::StartTime { pid, source })?;
        if let Some(pidfd) = pidfd {
            let holder = pidfd_pid(&pidfd).map_err(PeerError::Credentials)?;
            if holder != pid {
                return Err(PeerError::Exited { pid });
            }
        }
        Ok(Self {
            pid,
            uid: cred.uid(),
            gid: cred.gid(),
            start_time,
        })
    }
}

/// A pidfd for the process that connected, or `None` on kernels without `SO_PEERPIDFD`.
fn peer_pidfd(stream: &UnixStream) -> Result<Option<OwnedFd>, PeerError> {
    match getsockopt(stream, sockopt::PeerPidfd) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOPROTOOPT | Errno::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(PeerError::Credentials(e.into())),
    }
}

/// The pid a pidfd's process holds in our pid namespace, from `/proc/self/fdinfo`; `-1` once the
/// process has been reaped and its pid number freed for reuse.
fn pidfd_pid(pidfd: &OwnedFd) -> io::Result<i32> {
    let info = crate::procfs::read(&format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    parse_fdinfo_pid(&info)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "pidfd fdinfo has no Pid line"))
}

/// Extracts the `Pid:` field of a pidfd's fdinfo text.
fn parse_fdinfo_pid(info: &str) -> Option<i32> {
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()
}

/// Reads field 22 (`starttime`) of `/proc/<pid>/stat`. `NotFound` means the process is gone;
/// `InvalidData` means the file did not parse.
pub(crate) fn read_start_time(pid: i32) -> io::Result<u64> {
    let stat = crate::procfs::read(&format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed /proc/{pid}/stat"),
        )
    })
}

/// Extracts `starttime` from the text of a `/proc/<pid>/stat` file.
///
/// Field 2 (`comm`) is the executable name in parentheses and is chosen by the workload: it may
/// hold spaces and parentheses, e.g. `1 (a) (b) S ...`. Only the last `)` reliably ends it, so
/// we count fields from there: the next one is field 3 (`state`), so `starttime` is 19 further.
pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

/// What tonic attaches to every request of a [`PeerStream`] connection; a handler finds it with
/// `request.extensions().get::<PeerConnectInfo>()`.
///
/// The failure is kept as text because tonic needs `Clone + Sync` and the connection must stay
/// usable: the handler answers PermissionDenied instead of the listener dropping the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConnectInfo(Result<PeerInfo, String>);

impl PeerConnectInfo {
    /// The captured peer, or why it could not be captured.
    pub fn peer(&self) -> Result<&PeerInfo, &str> {
        self.0.as_ref().map_err(String::as_str)
    }
}

impl From<Result<PeerInfo, PeerError>> for PeerConnectInfo {
    fn from(r: Result<PeerInfo, PeerError>) -> Self {
        Self(r.map_err(|e| e.to_string()))
    }
}

/// An accepted Unix connection together with the peer captured when it was accepted.
#[derive(Debug)]
pub struct PeerStream {
    inner: UnixStream,
    info: PeerConnectInfo,
}

impl PeerStream {
    /// Wraps an accepted stream, capturing its peer now. A capture failure is stored, not
    /// returned, so one odd caller cannot stop the accept loop.
    pub fn new(inner: UnixStream) -> Self {
        let info = PeerInfo::from_stream(&inner).into();
        Self { inner, info }
    }

    /// The peer captured at accept time.
    pub fn peer(&self) -> Result<&PeerInfo, &str> {
        self.info.peer()
    }

    /// The wrapped stream, for callers that no longer need the peer.
    pub fn into_inner(self) -> UnixStream {
        self.inner
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

/// Accepts connections on `listener`, each wrapped in a [`PeerStream`], for tonic's
/// `serve_with_incoming`. Only accept errors are yielded as errors (tonic logs and skips them);
/// a peer that cannot be identified still yields its stream, with the failure inside.
///
/// The `/proc` read happens on the accept path: it is a small in-memory read, and doing it any
/// later would widen the pid-reuse window.
pub fn incoming(listener: UnixListener) -> impl Stream<Item = io::Result<PeerStream>> {
    UnixListenerStream::new(listener).map(|conn| conn.map(PeerStream::new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Start time of this process, parsed independently of [`parse_start_time`].
    fn own_start_time() -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_comm.split(' ').collect();
        fields[19].parse().unwrap()
    }

    fn own_peer() -> (i32, u32, u32) {
        (
            i32::try_from(std::process::id()).unwrap(),
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }

    #[test]
    fn parse_plain_stat() {
        let stat = "42 (sleep) S 1 42 42 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 987654 \
                    5000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0\n";
        assert_eq!(parse_start_time(stat), Some(987_654));
    }

    #[test]
    fn parse_stat_with_hostile_comm() {
        // A workload controls its comm: spaces, ") (" and digits must not shift the fields.
        let stat = "42 (evil) (1 2 3) S 9) S 1 42 42 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 \
                    123456 5000000 200 18446744073709551615\n";
        assert_eq!(parse_start_time(stat), Some(123_456));
    }

    #[test]
    fn parse_stat_rejects_garbage() {
        assert_eq!(parse_start_time(""), None);
        assert_eq!(parse_start_time("42 no parens at all"), None);
        assert_eq!(parse_start_time("42 (short) S 1 2 3"), None);
        assert_eq!(
            parse_start_time("42 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 notanumber"),
            None
        );
    }

    #[test]
    fn start_time_of_self_matches_proc() {
        let pid = i32::try_from(std::process::id()).unwrap();
        assert_eq!(read_start_time(pid).unwrap(), own_start_time());
    }

    #[test]
    fn start_time_of_missing_pid_is_not_found() {
        // pid_max never exceeds 2^22, so this pid cannot exist.
        let err = read_start_time(i32::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn from_stream_identifies_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let _client = UnixStream::connect(&path).await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();

        let peer = PeerInfo::from_stream(&server_side).unwrap();
        let (pid, uid, gid) = own_peer();
        assert_eq!(peer.pid, pid);
        assert_eq!(peer.uid, uid);
        assert_eq!(peer.gid, gid);
        assert_eq!(peer.start_time, own_start_time());
    }

    #[tokio::test]
    async fn incoming_yields_streams_that_carry_their_peer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let mut conns = Box::pin(incoming(UnixListener::bind(&path).unwrap()));

        let mut client = UnixStream::connect(&path).await.unwrap();
        let mut server_side = conns.next().await.unwrap().unwrap();

        let (pid, uid, gid) = own_peer();
        let info = server_side.connect_info();
        let peer = info.peer().unwrap();
        assert_eq!((peer.pid, peer.uid, peer.gid), (pid, uid, gid));
        assert_eq!(server_side.peer().unwrap(), peer);

        // The wrapper is a transparent byte pipe in both directions.
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server_side.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server_side.write_all(b"pong").await.unwrap();
        server_side.flush().await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        server_side.shutdown().await.unwrap();
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
    }

    #[test]
    fn parse_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1234\nPid:\t4321\nNSpid:\t4321\n";
        assert_eq!(parse_fdinfo_pid(info), Some(4321));
        assert_eq!(parse_fdinfo_pid("Pid:\t-1\nNSpid:\t-1\n"), Some(-1));
        assert_eq!(parse_fdinfo_pid("pos:\t0\n"), None);
    }

    #[tokio::test]
    async fn pidfd_of_a_live_peer_names_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let _client = UnixStream::connect(&path).await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        // Kernels before 6.5 have no SO_PEERPIDFD; from_stream then relies on start time alone.
        if let Some(pidfd) = peer_pidfd(&server_side).unwrap() {
            assert_eq!(pidfd_pid(&pidfd).unwrap(), own_peer().0);
        }
    }

    const HELPER_SOCKET_ENV: &str = "SIGIL_PEER_TEST_SOCKET";

    /// Not a test on its own: `peer_that_exited_before_accept_is_refused` runs this test binary
    /// with it selected, as a separate process that connects and exits.
    #[test]
    #[ignore = "helper process for peer_that_exited_before_accept_is_refused"]
    fn helper_connect_and_exit() {
        if let Ok(path) = std::env::var(HELPER_SOCKET_ENV) {
            std::os::unix::net::UnixStream::connect(path).unwrap();
        }
    }

    #[tokio::test]
    async fn peer_that_exited_before_accept_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "peer::tests::helper_connect_and_exit",
                "--ignored",
            ])
            .env(HELPER_SOCKET_ENV, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());

        // The connection waits in the backlog; its creator is gone and reaped.
        let (server_side, _) = listener.accept().await.unwrap();
        let result = PeerInfo::from_stream(&server_side);
        assert!(result.is_err(), "{result:?}");
        // What PeerError::Exited relies on: a pidfd (where the kernel still hands one out for a
        // reaped peer) reports pid -1, so no recycled pid can pass for the caller.
        if let Ok(Some(pidfd)) = peer_pidfd(&server_side) {
            assert_eq!(pidfd_pid(&pidfd).unwrap(), -1);
        }
        let info = PeerStream::new(server_side).connect_info();
        assert!(info.peer().is_err());
    }

    #[test]
    fn connect_info_keeps_the_failure_text() {
        let info = PeerConnectInfo::from(Err(PeerError::NoPid));
        assert_eq!(
            info.peer().unwrap_err(),
            "peer pid is not visible from the agent's pid namespace"
        );
    }

    /// The whole path a Workload API handler relies on: a real tonic server over
    /// [`incoming`], a real client, and the peer read back from the request extensions.
    #[tokio::test]
    async fn tonic_handlers_see_the_peer() {
        use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
        use sigil_proto::workload::spiffe_workload_api_server::{
            SpiffeWorkloadApi, SpiffeWorkloadApiServer,
        };
        use sigil_proto::workload::*;
        use tonic::{Request, Response, Status};

        type Empty<T> = tokio_stream::Empty<Result<T, Status>>;

        /// Answers FetchJWTSVID with the caller's pid/uid in the SPIFFE ID field.
        struct EchoPeer;

        #[tonic::async_trait]
        impl SpiffeWorkloadApi for EchoPeer {
            type FetchX509SVIDStream = Empty<X509svidResponse>;
            type FetchX509BundlesStream = Empty<X509BundlesResponse>;
            type FetchJWTBundlesStream = Empty<JwtBundlesResponse>;

            async fn fetch_x509svid(
                &self,
                _: Request<X509svidRequest>,
            ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
                Err(Status::unimplemented("test"))
            }
            async fn fetch_x509_bundles(
                &self,
                _: Request<X509BundlesRequest>,
            ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
                Err(Status::unimplemented("test"))
            }
            async fn fetch_jwtsvid(
                &self,
                req: Request<JwtsvidRequest>,
            ) -> Result<Response<JwtsvidResponse>, Status> {
                let info = req
                    .extensions()
                    .get::<PeerConnectInfo>()
                    .ok_or_else(|| Status::internal("no connect info"))?;
                let peer = info.peer().map_err(Status::permission_denied)?;
                Ok(Response::new(JwtsvidResponse {
                    svids: vec![Jwtsvid {
                        spiffe_id: format!("{}/{}/{}", peer.pid, peer.uid, peer.start_time),
                        ..Default::default()
                    }],
                }))
            }
            async fn fetch_jwt_bundles(
                &self,
                _: Request<JwtBundlesRequest>,
            ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
                Err(Status::unimplemented("test"))
            }
            async fn validate_jwtsvid(
                &self,
                _: Request<ValidateJwtsvidRequest>,
            ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
                Err(Status::unimplemented("test"))
            }
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(EchoPeer))
                .serve_with_incoming(incoming(listener)),
        );

        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(
                        UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        let resp = SpiffeWorkloadApiClient::new(channel)
            .fetch_jwtsvid(JwtsvidRequest::default())
            .await
            .unwrap()
            .into_inner();

        let (pid, uid, _) = own_peer();
        assert_eq!(
            resp.svids[0].spiffe_id,
            format!("{pid}/{uid}/{}", own_start_time())
        );
        server.abort();
    }
}
