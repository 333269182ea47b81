//! SHA-256 of workload binaries, for the `unix:sha256:<hex>` selector, with a cache.
//!
//! Hashing a 100 MB binary takes a few hundred milliseconds; doing it on every Workload API call
//! would dwarf everything else. A cached digest is only trusted while the file is provably the
//! same one: the key holds the device, inode, size, mtime and ctime read from the open file, so a
//! new binary at the same path (new inode) or an in-place rewrite (new ctime, which unlike mtime
//! no unprivileged user can set back) misses the cache.
//!
//! Two gaps remain and are handled here rather than accepted:
//! - Timestamps have coarse granularity (a kernel tick), so a rewrite within the same tick as
//!   our hash could keep every key field. Like git's "racily clean" rule, we never cache a file
//!   whose ctime is within [`RACY_WINDOW`] of now; such a file is simply hashed each time.
//! - A write during hashing: the key is read again afterwards and the digest is only cached if
//!   nothing changed.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::digest::{Context, SHA256};

use super::cache::BoundedCache;

/// A file changed less than this long ago is never cached (see the module doc).
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// How many distinct binaries the cache remembers.
const DEFAULT_CAPACITY: usize = 256;

/// Read size while hashing: large enough that syscalls do not dominate.
const CHUNK: usize = 64 * 1024;

/// Streams `reader` to its end and returns its SHA-256 as lowercase hex, the form SPIRE's
/// `unix:sha256:` selector uses. Exposed so tests and tools compute the same string.
pub fn sha256_hex(reader: &mut impl Read) -> io::Result<String> {
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => ctx.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(to_hex(ctx.finish().as_ref()))
}

/// Cached SHA-256 digests of executables, safe against a binary being replaced or rewritten.
pub struct BinaryDigests {
    cache: BoundedCache<FileKey, String>,
    racy_window: Duration,
    /// Number of times a file was actually read and hashed (cache misses); lets tests tell a hit
    /// from a miss.
    hashed: AtomicU64,
}

/// What identifies one version of one file.
#[derive(Clone, PartialEq, Eq, Hash)]
struct FileKey {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    fn new(path: &Path, meta: &Metadata) -> Self {
        Self {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl Default for BinaryDigests {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl BinaryDigests {
    /// A cache remembering up to `capacity` binaries.
    pub fn new(capacity: usize) -> Self {
        Self::with_racy_window(capacity, RACY_WINDOW)
    }

    fn with_racy_window(capacity: usize, racy_window: Duration) -> Self {
        Self {
            cache: BoundedCache::new(capacity, None),
            racy_window,
            hashed: AtomicU64::new(0),
        }
    }

    /// The digest of the file at `path`; see [`BinaryDigests::digest_file`].
    pub fn digest_path(&self, path: &Path) -> io::Result<String> {
        self.digest_file(path, File::open(path)?)
    }

    /// The digest of the already opened `file`, cached under `label` plus the file's identity.
    ///
    /// Taking an open file lets the attestor open `/proc/<pid>/exe`, which reaches the very
    /// inode the process runs even if it was deleted, replaced, or lives in another mount
    /// namespace. `label` is the path that link names; it is part of the key only so that a
    /// rename or second hard link costs one extra hash, never a wrong answer.
    pub fn digest_file(&self, label: &Path, mut file: File) -> io::Result<String> {
        let before = file.metadata()?;
        let key = FileKey::new(label, &before);
        if let Some(hex) = self.cache.get(&key) {
            return Ok(hex);
        }

        let hex = sha256_hex(&mut file)?;
        self.hashed.fetch_add(1, Ordering::Relaxed);

        let after = FileKey::new(label, &file.metadata()?);
        if after == key && !self.is_racy(&before) {
            self.cache.insert(key, hex.clone());
        }
        Ok(hex)
    }

    /// The cached digest of the open file described by `meta` (its metadata), without reading
    /// it: `None` on a miss.
    pub fn cached(&self, label: &Path, meta: &Metadata) -> Option<String> {
        self.cache.get(&FileKey::new(label, meta))
    }

    /// True when the file changed too recently for its timestamps to prove a later rewrite
    /// would be noticed; a ctime in the future (clock stepped back) counts as recent.
    fn is_racy(&self, meta: &Metadata) -> bool {
        let changed = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
        let window = i128::try_from(self.racy_window.as_nanos()).unwrap_or(i128::MAX);
        now - changed < window
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn hashes(d: &BinaryDigests) -> u64 {
        d.hashed.load(Ordering::Relaxed)
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            sha256_hex(&mut &b""[..]).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(&mut &b"abc"[..]).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Longer than one chunk, so the streaming loop runs more than once.
        let big = vec![b'a'; CHUNK * 2 + 17];
        let expected = to_hex(ring::digest::digest(&SHA256, &big).as_ref());
        assert_eq!(sha256_hex(&mut &big[..]).unwrap(), expected);
    }

    #[test]
    fn cache_hits_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"version one").unwrap();
        // No racy window: this test is about the key, not about timestamp granularity.
        let digests = BinaryDigests::with_racy_window(8, Duration::ZERO);

        let one = digests.digest_path(&path).unwrap();
        assert_eq!(one, sha256_hex(&mut &b"version one"[..]).unwrap());
        assert_eq!(digests.digest_path(&path).unwrap(), one);
        assert_eq!(hashes(&digests), 1, "second call served from the cache");

        // Rewrite in place (same inode): size and ctime change, so the key misses.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(b"version two, longer").unwrap();
        drop(f);
        let two = digests.digest_path(&path).unwrap();
        assert_eq!(two, sha256_hex(&mut &b"version two, longer"[..]).unwrap());
        assert_eq!(hashes(&digests), 2);

        // Replace with a new file at the same path (new inode).
        let tmp = dir.path().join("bin.new");
        std::fs::write(&tmp, b"version three").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let three = digests.digest_path(&path).unwrap();
        assert_eq!(three, sha256_hex(&mut &b"version three"[..]).unwrap());
        assert_eq!(hashes(&digests), 3);
    }

    #[test]
    fn same_size_rewrite_within_a_tick_is_still_seen() {
        // With the real racy window a freshly written file is never cached, so a rewrite that
        // keeps size and (coarse) timestamps still yields the new digest.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        let digests = BinaryDigests::default();
        std::fs::write(&path, b"AAAA").unwrap();
        assert_eq!(
            digests.digest_path(&path).unwrap(),
            sha256_hex(&mut &b"AAAA"[..]).unwrap()
        );
        std::fs::write(&path, b"BBBB").unwrap();
        assert_eq!(
            digests.digest_path(&path).unwrap(),
            sha256_hex(&mut &b"BBBB"[..]).unwrap()
        );
        assert_eq!(digests.cache.len(), 0);
    }

    #[test]
    fn old_files_are_cached_under_the_real_window() {
        // A system binary has not changed in the last seconds, so it is cached.
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let digests = BinaryDigests::default();
        let a = digests.digest_path(&sh).unwrap();
        let b = digests.digest_path(&sh).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, sha256_hex(&mut File::open(&sh).unwrap()).unwrap());
        assert_eq!(hashes(&digests), 1);
    }
}
