//! The `unix` workload attestor: the caller's user, groups, binary path and binary digest,
//! with the same selector names and values as SPIRE's `unix` plugin so registrations carry over.
//!
//! - `unix:uid:<n>`, `unix:gid:<n>`: from `SO_PEERCRED` (effective ids at `connect()`);
//! - `unix:user:<name>`, `unix:group:<name>`: NSS lookup of those ids, when they resolve;
//! - `unix:supplementary_gid:<n>`, `unix:supplementary_group:<name>`: the `Groups:` line of
//!   `/proc/<pid>/status`;
//! - `unix:path:<path>`: `readlink /proc/<pid>/exe`, without the `" (deleted)"` suffix;
//! - `unix:sha256:<hex>`: the file behind `/proc/<pid>/exe`.
//!
//! Differences from SPIRE, both deliberate: uid/gid come from the socket rather than `/proc`
//! (the kernel's record of who connected, immune to a later `setuid`), and the digest is read
//! through `/proc/<pid>/exe` rather than `/proc/<pid>/root/<path>`, so it covers deleted and
//! replaced binaries and is the very inode the process runs.

use std::ffi::OsString;
use std::fmt::Display;
use std::fs::{self, File};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use nix::unistd::{Gid, Group, Uid, User};
use sigil_core::{Selector, SelectorError};

use super::cache::BoundedCache;
use super::digest::BinaryDigests;
use super::{AttestError, WorkloadAttestor};
use crate::peer::PeerInfo;

/// Names change rarely but do change (a user renamed, an LDAP group added); after this long a
/// cached lookup is asked again.
const NAME_TTL: Duration = Duration::from_secs(60);

/// Distinct uids (and, separately, gids) whose names are remembered.
const NAME_CAPACITY: usize = 1024;

/// What the `unix` attestor reports beyond users and groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixAttestorConfig {
    /// Emit `unix:path:`, which needs the agent to be allowed to read other users'
    /// `/proc/<pid>/exe` (root or `CAP_SYS_PTRACE`). SPIRE defaults this to off; we default it
    /// to on because the agent normally runs as root and binary paths are the most common
    /// selector after uid.
    pub discover_workload_path: bool,
    /// Also emit `unix:sha256:`. The first call per binary reads the whole file; later calls
    /// hit a cache. As in SPIRE, it has no effect without `discover_workload_path`.
    pub hash_binary: bool,
}

impl Default for UnixAttestorConfig {
    fn default() -> Self {
        Self {
            discover_workload_path: true,
            hash_binary: true,
        }
    }
}

/// Produces `unix:` selectors for a caller; cheap enough for every Workload API call because
/// name lookups and binary digests are cached.
pub struct UnixAttestor {
    config: UnixAttestorConfig,
    users: BoundedCache<u32, Option<String>>,
    groups: BoundedCache<u32, Option<String>>,
    digests: BinaryDigests,
}

impl UnixAttestor {
    /// An attestor with empty caches.
    pub fn new(config: UnixAttestorConfig) -> Self {
        Self {
            config,
            users: BoundedCache::new(NAME_CAPACITY, Some(NAME_TTL)),
            groups: BoundedCache::new(NAME_CAPACITY, Some(NAME_TTL)),
            digests: BinaryDigests::default(),
        }
    }

    fn user_name(&self, uid: u32, mode: Mode) -> Result<Option<String>, AttestError> {
        cached_name(&self.users, uid, mode, |id| {
            User::from_uid(Uid::from_raw(id)).map(|u| u.map(|u| u.name))
        })
    }

    fn group_name(&self, gid: u32, mode: Mode) -> Result<Option<String>, AttestError> {
        cached_name(&self.groups, gid, mode, |id| {
            Group::from_gid(Gid::from_raw(id)).map(|g| g.map(|g| g.name))
        })
    }

    /// Appends `path` and, if configured, `sha256`.
    fn path_selectors(
        &self,
        pid: i32,
        mode: Mode,
        out: &mut Vec<Selector>,
    ) -> Result<(), AttestError> {
        let exe = format!("/proc/{pid}/exe");
        let proc_err = |what: &str, e: std::io::Error| AttestError::from_proc_io(what, pid, &e);
        let target = fs::read_link(&exe).map_err(|e| proc_err("exe link", e))?;

        // Opening the magic link reaches the inode the process runs; fstat on it tells whether
        // that inode was unlinked, which is when the kernel appends " (deleted)" to the name.
        // A cache-only pass needs no open file: stat through the link reaches the same inode.
        let (meta, file) = if self.config.hash_binary && mode == Mode::MayBlock {
            let file = File::open(&exe).map_err(|e| proc_err("exe", e))?;
            let meta = file.metadata().map_err(|e| proc_err("exe metadata", e))?;
            (meta, Some(file))
        } else {
            (
                fs::metadata(&exe).map_err(|e| proc_err("exe metadata", e))?,
                None,
            )
        };
        let path = strip_deleted(target, meta.nlink() == 0);

        match path.to_str() {
            Some(p) => out.push(unix("path", p)?),
            // A lossy conversion could make two binaries share one selector; omitting it can
            // only make fewer entries match.
            None => tracing::debug!(
                pid,
                ?path,
                "binary path is not UTF-8; no unix:path selector"
            ),
        }
        if self.config.hash_binary {
            let hex = match file {
                Some(file) => self
                    .digests
                    .digest_file(&path, file)
                    .map_err(|e| proc_err("exe digest", e))?,
                None => self
                    .digests
                    .cached(&path, &meta)
                    .ok_or(AttestError::WouldBlock)?,
            };
            out.push(unix("sha256", hex)?);
        }
        Ok(())
    }

    fn attest_in(&self, peer: &PeerInfo, mode: Mode) -> Result<Vec<Selector>, AttestError> {
        let mut out = Vec::with_capacity(8);
        out.push(unix("uid", peer.uid)?);
        if let Some(name) = self.user_name(peer.uid, mode)? {
            out.push(unix("user", name)?);
        }
        out.push(unix("gid", peer.gid)?);
        if let Some(name) = self.group_name(peer.gid, mode)? {
            out.push(unix("group", name)?);
        }

        let status = crate::procfs::read(&format!("/proc/{}/status", peer.pid))
            .map_err(|e| AttestError::from_proc_io("status", peer.pid, &e))?;
        let groups = parse_groups(&status).ok_or_else(|| {
            AttestError::Io(format!("no valid Groups line in /proc/{}/status", peer.pid))
        })?;
        for gid in groups {
            out.push(unix("supplementary_gid", gid)?);
            if let Some(name) = self.group_name(gid, mode)? {
                out.push(unix("supplementary_group", name)?);
            }
        }

        if self.config.discover_workload_path {
            self.path_selectors(peer.pid, mode, &mut out)?;
        }
        Ok(out)
    }
}

/// Whether an attestation may do slow work (NSS lookups, hashing a binary) or must answer
/// [`AttestError::WouldBlock`] when its caches cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    MayBlock,
    CachedOnly,
}

impl WorkloadAttestor for UnixAttestor {
    fn name(&self) -> &'static str {
        "unix"
    }

    fn attest(&self, peer: &PeerInfo) -> Result<Vec<Selector>, AttestError> {
        self.attest_in(peer, Mode::MayBlock)
    }

    fn attest_cached(&self, peer: &PeerInfo) -> Result<Vec<Selector>, AttestError> {
        self.attest_in(peer, Mode::CachedOnly)
    }
}

fn unix(field: &str, value: impl Display) -> Result<Selector, SelectorError> {
    Selector::new("unix", &format!("{field}:{value}"))
}

/// Looks `id` up through `cache`; in [`Mode::CachedOnly`] a miss is `WouldBlock` (NSS may
/// ask a network directory). Only definite answers (a name, or "no such id") are cached; a
/// failing NSS backend is asked again next time instead of pinning a wrong "no name".
fn cached_name(
    cache: &BoundedCache<u32, Option<String>>,
    id: u32,
    mode: Mode,
    lookup: impl FnOnce(u32) -> nix::Result<Option<String>>,
) -> Result<Option<String>, AttestError> {
    if let Some(hit) = cache.get(&id) {
        return Ok(hit);
    }
    if mode == Mode::CachedOnly {
        return Err(AttestError::WouldBlock);
    }
    Ok(match lookup(id) {
        Ok(name) => {
            cache.insert(id, name.clone());
            name
        }
        Err(e) => {
            tracing::debug!(id, error = %e, "user/group name lookup failed");
            None
        }
    })
}

/// The supplementary gids from the text of `/proc/<pid>/status`, or `None` if the line is
/// missing or malformed.
///
/// The last `Groups:` line wins: the only field before it a workload controls is `Name:`, which
/// the kernel escapes, but if a forged line ever slipped through it would come first.
fn parse_groups(status: &str) -> Option<Vec<u32>> {
    let line = status
        .lines()
        .filter_map(|l| l.strip_prefix("Groups:"))
        .next_back()?;
    line.split_ascii_whitespace()
        .map(|g| g.parse().ok())
        .collect()
}

/// Removes the `" (deleted)"` the kernel appends to an unlinked binary's link target, so a
/// workload keeps its `unix:path` across a package upgrade until it restarts. Only done when the
/// inode really is unlinked: a binary can legitimately be named `x (deleted)`.
fn strip_deleted(target: PathBuf, unlinked: bool) -> PathBuf {
    const SUFFIX: &[u8] = b" (deleted)";
    let bytes = target.as_os_str().as_bytes();
    match bytes.strip_suffix(SUFFIX) {
        Some(stem) if unlinked => PathBuf::from(OsString::from_vec(stem.to_vec())),
        _ => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestation::attest_peer;
    use std::process::{Child, Command};
    use tokio::net::{UnixListener, UnixStream};

    fn has(selectors: &[Selector], s: &str) -> bool {
        selectors.iter().any(|x| x.to_string() == s)
    }

    fn sha256_of_file(path: &std::path::Path) -> String {
        let bytes = fs::read(path).unwrap();
        ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The peer of a real connection from this test process to a socket in a temp dir.
    async fn connect_to_self() -> PeerInfo {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let _client = UnixStream::connect(&path).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        PeerInfo::from_stream(&accepted).unwrap()
    }

    #[tokio::test]
    async fn attests_this_process_over_a_real_socket() {
        let peer = connect_to_self().await;
        let attestor: Vec<Box<dyn WorkloadAttestor>> =
            vec![Box::new(UnixAttestor::new(UnixAttestorConfig::default()))];
        let set = attest_peer(&attestor, &peer).unwrap();
        let got: Vec<Selector> = set.iter().cloned().collect();

        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let exe = std::env::current_exe().unwrap();
        assert!(has(&got, &format!("unix:uid:{uid}")), "{got:?}");
        assert!(has(&got, &format!("unix:gid:{gid}")), "{got:?}");
        assert!(
            has(&got, &format!("unix:path:{}", exe.display())),
            "{got:?}"
        );
        assert!(
            has(&got, &format!("unix:sha256:{}", sha256_of_file(&exe))),
            "{got:?}"
        );
        if let Some(user) = User::from_uid(Uid::from_raw(uid)).unwrap() {
            assert!(has(&got, &format!("unix:user:{}", user.name)), "{got:?}");
        }
        if let Some(group) = Group::from_gid(Gid::from_raw(gid)).unwrap() {
            assert!(has(&got, &format!("unix:group:{}", group.name)), "{got:?}");
        }
        for g in nix::unistd::getgroups().unwrap() {
            assert!(has(&got, &format!("unix:supplementary_gid:{g}")), "{got:?}");
        }
        assert!(got.iter().all(|s| s.kind() == "unix"));
    }

    #[tokio::test]
    async fn uid_and_gid_come_from_the_socket_not_proc() {
        // A PeerInfo carrying ids other than the process's real ones: the attestor must report
        // what the kernel recorded at connect(), which is what PeerInfo holds.
        let mut peer = connect_to_self().await;
        peer.uid = 4_000_000_001;
        peer.gid = 4_000_000_002;
        let got = UnixAttestor::new(UnixAttestorConfig::default())
            .attest(&peer)
            .unwrap();
        assert!(has(&got, "unix:uid:4000000001"), "{got:?}");
        assert!(has(&got, "unix:gid:4000000002"), "{got:?}");
    }

    #[tokio::test]
    async fn config_switches_path_and_digest_off() {
        let peer = connect_to_self().await;
        let no_hash = UnixAttestor::new(UnixAttestorConfig {
            discover_workload_path: true,
            hash_binary: false,
        })
        .attest(&peer)
        .unwrap();
        assert!(no_hash.iter().any(|s| s.value().starts_with("path:")));
        assert!(!no_hash.iter().any(|s| s.value().starts_with("sha256:")));

        let no_path = UnixAttestor::new(UnixAttestorConfig {
            discover_workload_path: false,
            hash_binary: true,
        })
        .attest(&peer)
        .unwrap();
        assert!(!no_path.iter().any(|s| s.value().starts_with("path:")));
        assert!(!no_path.iter().any(|s| s.value().starts_with("sha256:")));
        assert!(has(&no_path, &format!("unix:uid:{}", peer.uid)));
    }

    /// Spawns `program`, retrying while a concurrently forked test child still holds the
    /// just-written binary open for writing (ETXTBSY).
    fn spawn_fresh_binary(program: &std::path::Path) -> Child {
        for _ in 0..50 {
            match Command::new(program).arg("5").spawn() {
                Ok(child) => return child,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("spawn {program:?}: {e}"),
            }
        }
        panic!("{program:?} stayed busy")
    }

    #[test]
    fn deleted_binary_keeps_its_path_and_is_still_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().canonicalize().unwrap().join("sleep");
        fs::copy(fs::canonicalize("/bin/sleep").unwrap(), &copy).unwrap();
        let expected_digest = sha256_of_file(&copy);
        let mut child = spawn_fresh_binary(&copy);
        fs::remove_file(&copy).unwrap();

        let pid = i32::try_from(child.id()).unwrap();
        let peer = PeerInfo {
            pid,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            start_time: crate::peer::read_start_time(pid).unwrap(),
        };
        let result = UnixAttestor::new(UnixAttestorConfig::default()).attest(&peer);
        let _ = child.kill();
        let _ = child.wait();
        let got = result.unwrap();
        assert!(
            has(&got, &format!("unix:path:{}", copy.display())),
            "{got:?}"
        );
        assert!(
            has(&got, &format!("unix:sha256:{expected_digest}")),
            "{got:?}"
        );
    }

    #[test]
    fn exited_process_is_process_gone() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        let peer = PeerInfo {
            pid,
            uid: 0,
            gid: 0,
            start_time: 0,
        };
        let result = UnixAttestor::new(UnixAttestorConfig::default()).attest(&peer);
        assert!(
            matches!(result, Err(AttestError::ProcessGone)),
            "{result:?}"
        );
    }

    #[test]
    fn groups_line_parsing() {
        let status =
            "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 \nVmPeak:\t1 kB\n";
        assert_eq!(parse_groups(status), Some(vec![4, 24, 27]));
        assert_eq!(parse_groups("Name:\tx\nGroups:\t\n"), Some(vec![]));
        assert_eq!(parse_groups("Name:\tx\n"), None);
        assert_eq!(parse_groups("Groups:\t4 x\n"), None);
        // A forged earlier line never wins over the kernel's own.
        assert_eq!(
            parse_groups("Name:\tx\nGroups:\t0\nGroups:\t7\n"),
            Some(vec![7])
        );
    }

    #[test]
    fn deleted_suffix_is_stripped_only_for_unlinked_binaries() {
        let p = PathBuf::from("/usr/bin/app (deleted)");
        assert_eq!(
            strip_deleted(p.clone(), true),
            PathBuf::from("/usr/bin/app")
        );
        assert_eq!(strip_deleted(p.clone(), false), p);
        let plain = PathBuf::from("/usr/bin/app");
        assert_eq!(strip_deleted(plain.clone(), true), plain);
    }
}
