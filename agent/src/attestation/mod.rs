//! Workload attestation: turning the process behind a Workload API call into selectors.
//!
//! The seam is [`WorkloadAttestor`]: one implementation per selector type (`unix` today, `k8s`
//! later), each a pure function of the caller's [`PeerInfo`] plus whatever it reads from the host.
//! [`attest_peer`] runs them all and then proves the answer still describes the caller: every
//! attestor reads `/proc/<pid>`, and a pid recycled in the meantime would hand the caller's
//! identity to a stranger (or the stranger's to the caller).
//!
//! Layout: `unix.rs` is the `unix` attestor, `digest.rs` hashes workload binaries with a cache,
//! `cache.rs` is the small bounded map both use.

mod cache;
mod digest;
mod unix;

use std::io;

use sigil_core::{Selector, SelectorError, SelectorSet};

use crate::peer::{PeerInfo, read_start_time};

pub use digest::{BinaryDigests, sha256_hex};
pub use unix::{UnixAttestor, UnixAttestorConfig};

/// One source of workload selectors (`unix`, later `k8s`, ...), owned by the agent.
///
/// `attest` does blocking reads of `/proc` and, for binary hashing, of whole files: call it (or
/// [`attest_peer`]) from `tokio::task::spawn_blocking`, never directly on a runtime thread.
pub trait WorkloadAttestor: Send + Sync {
    /// The selector type this attestor produces, e.g. `unix`; used in logs.
    fn name(&self) -> &'static str;

    /// The selectors describing `peer`. Reads of `/proc/<pid>` that find no process must map to
    /// [`AttestError::ProcessGone`]; [`attest_peer`] catches a recycled pid afterwards, so an
    /// attestor need not check the start time itself.
    fn attest(&self, peer: &PeerInfo) -> Result<Vec<Selector>, AttestError>;

    /// The same answer as [`WorkloadAttestor::attest`] when it needs no slow work: only small
    /// in-memory `/proc` reads and this attestor's caches. Anything more (an NSS lookup, hashing
    /// a binary not seen before) must answer [`AttestError::WouldBlock`], and the caller then
    /// runs `attest` on the blocking pool. This lets the common call stay on the runtime thread
    /// instead of hopping to another one; the default always defers.
    fn attest_cached(&self, _peer: &PeerInfo) -> Result<Vec<Selector>, AttestError> {
        Err(AttestError::WouldBlock)
    }
}

/// Why a caller could not be attested. Every variant means "serve no identity"; the Workload API
/// answers PermissionDenied without telling the caller which one it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The calling process exited before (or while) it was examined.
    #[error("the calling process exited before attestation finished")]
    ProcessGone,
    /// The pid now names a different process than the one that connected: what `/proc` says
    /// about it must not be attributed to the caller.
    #[error("the caller's pid was reused by another process during attestation")]
    PidReused,
    /// Reading host state failed for another reason, e.g. the agent lacks permission to read
    /// another user's `/proc/<pid>/exe`.
    #[error("attestation I/O: {0}")]
    Io(String),
    /// [`WorkloadAttestor::attest_cached`] cannot answer without slow work; not a failure, the
    /// caller retries with `attest` where blocking is allowed.
    #[error("attestation needs work that may block")]
    WouldBlock,
    /// An attestor produced a malformed selector (a bug in that attestor).
    #[error("attestor built an invalid selector: {0}")]
    InvalidSelector(#[from] SelectorError),
}

impl AttestError {
    /// Classifies a failed read about `pid`: a vanished `/proc` entry is the caller exiting,
    /// anything else is an I/O failure worth reporting with context.
    pub(crate) fn from_proc_io(what: &str, pid: i32, err: &io::Error) -> Self {
        if err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH) {
            Self::ProcessGone
        } else {
            Self::Io(format!("{what} of pid {pid}: {err}"))
        }
    }
}

/// Attests `peer` with every attestor and returns the union of their selectors, or an error if
/// any attestor fails or the pid no longer names the process that connected.
///
/// Failing closed when one attestor fails is deliberate: a partial selector set could only match
/// fewer entries, but silently serving fewer identities hides misconfiguration (e.g. an agent
/// that cannot read `/proc/<pid>/exe`) behind confusing "no identity" answers.
pub fn attest_peer(
    attestors: &[Box<dyn WorkloadAttestor>],
    peer: &PeerInfo,
) -> Result<SelectorSet, AttestError> {
    attest_with(attestors, peer, |a, p| a.attest(p))
}

/// [`attest_peer`] from the attestors' caches only, safe to call on a runtime thread: answers
/// [`AttestError::WouldBlock`] when any attestor needs slow work, and the caller then runs
/// [`attest_peer`] on the blocking pool.
pub fn attest_peer_cached(
    attestors: &[Box<dyn WorkloadAttestor>],
    peer: &PeerInfo,
) -> Result<SelectorSet, AttestError> {
    attest_with(attestors, peer, |a, p| a.attest_cached(p))
}

fn attest_with(
    attestors: &[Box<dyn WorkloadAttestor>],
    peer: &PeerInfo,
    attest: impl Fn(&dyn WorkloadAttestor, &PeerInfo) -> Result<Vec<Selector>, AttestError>,
) -> Result<SelectorSet, AttestError> {
    let mut selectors = SelectorSet::new();
    for attestor in attestors {
        let found = attest(attestor.as_ref(), peer).inspect_err(|e| {
            if !matches!(e, AttestError::WouldBlock) {
                let attestor = attestor.name();
                tracing::debug!(attestor, pid = peer.pid, error = %e, "attestor failed");
            }
        })?;
        for s in found {
            selectors.insert(s);
        }
    }

    // A pid recycled before or while the attestors read /proc shows up now as a different start
    // time. A vanished process counts as reuse too: we cannot tell whether what the attestors
    // read still belonged to our caller. There is deliberately no check before the attestors:
    // it would only speed up the failure path, at the cost of a /proc read on every call.
    // Known limit: execve keeps pid and start time, so a caller that execs mid-attestation is
    // described by a mix of old and new binary; it is still the same process and user.
    match verify_peer(peer) {
        Ok(()) => Ok(selectors),
        Err(AttestError::ProcessGone | AttestError::PidReused) => Err(AttestError::PidReused),
        Err(e) => Err(e),
    }
}

/// Checks that `peer.pid` still names the process that connected: `ProcessGone` if nothing runs
/// under that pid, `PidReused` if something else does.
///
/// Besides [`attest_peer`], long-lived Workload API streams should call this before each push,
/// so a stream whose caller died is not answered to whoever inherited the pid. A zombie still
/// passes: its pid cannot be reused until it is reaped.
pub fn verify_peer(peer: &PeerInfo) -> Result<(), AttestError> {
    match read_start_time(peer.pid) {
        Ok(t) if t == peer.start_time => Ok(()),
        Ok(_) => Err(AttestError::PidReused),
        Err(e) => Err(AttestError::from_proc_io("start time", peer.pid, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn pid_of(child: &Child) -> i32 {
        i32::try_from(child.id()).unwrap()
    }

    /// A live child, killed and reaped on drop so a failing test leaves no process behind.
    struct Sleeper(Child);

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeper() -> Sleeper {
        Sleeper(Command::new("sleep").arg("5").spawn().unwrap())
    }

    fn peer_for(pid: i32, start_time: u64) -> PeerInfo {
        PeerInfo {
            pid,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            start_time,
        }
    }

    /// Returns a fixed selector, to show results of several attestors are merged.
    struct Fixed;

    impl WorkloadAttestor for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn attest(&self, _: &PeerInfo) -> Result<Vec<Selector>, AttestError> {
            Ok(vec![Selector::parse("test:fixed")?])
        }
    }

    fn attestors() -> Vec<Box<dyn WorkloadAttestor>> {
        vec![
            Box::new(UnixAttestor::new(UnixAttestorConfig::default())),
            Box::new(Fixed),
        ]
    }

    #[test]
    fn live_child_with_right_start_time_is_attested() {
        let child = sleeper();
        let pid = pid_of(&child.0);
        let peer = peer_for(pid, read_start_time(pid).unwrap());
        let set = attest_peer(&attestors(), &peer).unwrap();
        assert!(set.contains(&Selector::parse("test:fixed").unwrap()));
        assert!(set.contains(&Selector::parse(&format!("unix:uid:{}", peer.uid)).unwrap()));
    }

    #[test]
    fn wrong_start_time_is_pid_reuse() {
        let child = sleeper();
        let pid = pid_of(&child.0);
        let real = read_start_time(pid).unwrap();
        let peer = peer_for(pid, real.wrapping_sub(1));
        assert!(matches!(
            attest_peer(&attestors(), &peer),
            Err(AttestError::PidReused)
        ));
        assert!(matches!(verify_peer(&peer), Err(AttestError::PidReused)));
    }

    #[test]
    fn exited_process_is_not_attested() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = pid_of(&child);
        let start_time = read_start_time(pid).unwrap_or(0);
        child.wait().unwrap();
        let result = attest_peer(&attestors(), &peer_for(pid, start_time));
        assert!(
            matches!(
                result,
                Err(AttestError::ProcessGone | AttestError::PidReused)
            ),
            "{result:?}"
        );
    }

    /// The post-attestation check: an attestor that is slow enough for the caller to die
    /// underneath it must not yield selectors.
    #[test]
    fn caller_dying_during_attestation_is_refused() {
        struct KillsCaller(std::sync::Mutex<Option<Child>>);
        impl WorkloadAttestor for KillsCaller {
            fn name(&self) -> &'static str {
                "kills-caller"
            }
            fn attest(&self, _: &PeerInfo) -> Result<Vec<Selector>, AttestError> {
                let mut guard = self.0.lock().unwrap();
                let mut child = guard.take().unwrap();
                child.kill().unwrap();
                child.wait().unwrap();
                Ok(vec![Selector::parse("test:stale")?])
            }
        }
        let child = Command::new("sleep").arg("5").spawn().unwrap();
        let pid = pid_of(&child);
        let peer = peer_for(pid, read_start_time(pid).unwrap());
        let list: Vec<Box<dyn WorkloadAttestor>> =
            vec![Box::new(KillsCaller(std::sync::Mutex::new(Some(child))))];
        assert!(matches!(
            attest_peer(&list, &peer),
            Err(AttestError::PidReused)
        ));
    }

    #[test]
    fn proc_errors_are_classified() {
        let gone = io::Error::from(io::ErrorKind::NotFound);
        assert!(matches!(
            AttestError::from_proc_io("x", 1, &gone),
            AttestError::ProcessGone
        ));
        let esrch = io::Error::from_raw_os_error(libc::ESRCH);
        assert!(matches!(
            AttestError::from_proc_io("x", 1, &esrch),
            AttestError::ProcessGone
        ));
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        match AttestError::from_proc_io("exe", 7, &denied) {
            AttestError::Io(msg) => assert!(msg.starts_with("exe of pid 7:"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
}
