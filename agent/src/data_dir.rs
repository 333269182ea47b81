//! What the agent keeps in `data_dir` so a restart does not re-attest: its identity (the agent
//! SVID chain and its private key, together in one file) and the server's roots.
//!
//! The identity is one file written by temp file + fsync + rename + fsync of the directory, so
//! a crash at any point leaves either the previous key and certificate or the new ones, never
//! one of each: the join token that produced the first identity is spent, so a mismatched pair
//! would leave the agent unable to start. At attestation the roots are written before the
//! identity, so an identity on disk always has roots beside it.
//!
//! Before this file existed the key and the certificate were two files written one after the
//! other; such a pair is still read (and rewritten as one file) if its halves match.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why the files in `data_dir` cannot be read back as an identity (every variant names a file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// Reading, writing or syncing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file does not hold what it should.
    #[error("{path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The private key is not the certificate's (a half-written identity).
    #[error("the private key in {path} does not match its certificate")]
    KeyMismatch {
        /// The file holding the key (and, in the current layout, the certificate).
        path: PathBuf,
    },
    /// The stored agent SVID has expired (the agent was off for longer than its lifetime).
    #[error("the agent SVID in {path} has expired")]
    Expired {
        /// The identity file.
        path: PathBuf,
    },
    /// The stored agent SVID is of another trust domain than the configured one.
    #[error("the agent SVID in {path} is {id}, outside the configured trust domain")]
    OtherTrustDomain {
        /// The identity file.
        path: PathBuf,
        /// Its SPIFFE ID.
        id: sigil_core::SpiffeId,
    },
    /// One file of a set is missing.
    #[error("{present} exists but {missing} does not")]
    Incomplete {
        /// The file that is there.
        present: PathBuf,
        /// The file that is not.
        missing: PathBuf,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DataDirError + 'a {
    move |source| DataDirError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The files, by role.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    /// `agent_identity.pem`: PKCS#8 PRIVATE KEY block, then the CERTIFICATE chain, leaf first.
    pub identity: PathBuf,
    /// `bundle.pem`: the own trust domain's roots, to authenticate the server.
    pub bundle: PathBuf,
    /// Older layout: the chain alone.
    legacy_svid: PathBuf,
    /// Older layout: the DER key alone.
    legacy_key: PathBuf,
}

impl Paths {
    /// The files in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            identity: dir.join("agent_identity.pem"),
            bundle: dir.join("bundle.pem"),
            legacy_svid: dir.join("agent_svid.pem"),
            legacy_key: dir.join("agent_key.der"),
        }
    }
}

/// An identity read back from disk whose key matches its leaf certificate.
#[derive(Clone)]
pub(crate) struct StoredIdentity {
    /// DER chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER key.
    pub key_pkcs8: Vec<u8>,
    /// The server's roots from `bundle.pem`.
    pub roots: Vec<CertificateDer<'static>>,
}

/// Writes `data` to `path` so that a crash leaves either the old or the new content: a temp
/// file with `mode`, fsync, rename over `path`, fsync of the directory (which makes the rename
/// itself durable).
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), DataDirError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("writing", &tmp))?;
    // `mode` applies only to a file this open created; a leftover temp file keeps its own.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("chmod", &tmp))?;
    f.write_all(data).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming to", path))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing directory", dir))
}

/// Concatenated PEM CERTIFICATE blocks.
pub(crate) fn pem_chain(chain: &[CertificateDer<'_>]) -> String {
    chain
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect()
}

fn parse_pem(path: &Path, text: &str) -> Result<Vec<pem::Pem>, DataDirError> {
    pem::parse_many(text).map_err(|e| DataDirError::Malformed {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn certs_of(blocks: Vec<pem::Pem>) -> Vec<CertificateDer<'static>> {
    blocks
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

fn read_text(path: &Path) -> Result<String, DataDirError> {
    fs::read_to_string(path).map_err(io("reading", path))
}

/// Reads the PEM certificates in `path` (a bundle file).
pub(crate) fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, DataDirError> {
    let text = read_text(path)?;
    Ok(certs_of(parse_pem(path, &text)?))
}

/// Persists the identity as one file (mode 0600), replacing any earlier one whole.
pub(crate) fn store_identity(
    paths: &Paths,
    chain: &[CertificateDer<'_>],
    key_pkcs8: &[u8],
) -> Result<(), DataDirError> {
    let mut text = pem::encode(&pem::Pem::new("PRIVATE KEY", key_pkcs8.to_vec()));
    text.push_str(&pem_chain(chain));
    write_file(&paths.identity, text.as_bytes(), 0o600)?;
    // The older two-file layout is superseded once the new file is durable.
    for old in [&paths.legacy_svid, &paths.legacy_key] {
        match fs::remove_file(old) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", old)(e)),
        }
    }
    Ok(())
}

/// Reads the stored identity and the roots beside it. `Ok(None)`: no identity was ever stored
/// (first start). An error means something is stored but unusable.
pub(crate) fn load_identity(paths: &Paths) -> Result<Option<StoredIdentity>, DataDirError> {
    let Some((chain, key_pkcs8, from)) = read_identity(paths)? else {
        return Ok(None);
    };
    check_pair(&chain, &key_pkcs8, from)?;
    if !paths.bundle.exists() {
        return Err(DataDirError::Incomplete {
            present: from.to_owned(),
            missing: paths.bundle.clone(),
        });
    }
    let roots = read_pem_certs(&paths.bundle)?;
    if roots.is_empty() {
        return Err(DataDirError::Malformed {
            path: paths.bundle.clone(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    if from != paths.identity {
        store_identity(paths, &chain, &key_pkcs8)?;
        tracing::info!(path = %paths.identity.display(), "agent identity moved to one file");
    }
    Ok(Some(StoredIdentity {
        chain,
        key_pkcs8,
        roots,
    }))
}

type RawIdentity<'a> = (Vec<CertificateDer<'static>>, Vec<u8>, &'a Path);

/// The chain and key from the identity file, else from the older two files.
fn read_identity(paths: &Paths) -> Result<Option<RawIdentity<'_>>, DataDirError> {
    if paths.identity.exists() {
        let path = paths.identity.as_path();
        let blocks = parse_pem(path, &read_text(path)?)?;
        let mut keys = blocks.iter().filter(|p| p.tag() == "PRIVATE KEY");
        let (Some(key), None) = (keys.next(), keys.next()) else {
            return Err(DataDirError::Malformed {
                path: path.to_owned(),
                reason: "expected exactly one PRIVATE KEY block".into(),
            });
        };
        let key = key.contents().to_vec();
        return Ok(Some((certs_of(blocks), key, path)));
    }
    let (svid, key) = (&paths.legacy_svid, &paths.legacy_key);
    match (svid.exists(), key.exists()) {
        (false, false) => Ok(None),
        (true, false) => Err(DataDirError::Incomplete {
            present: svid.clone(),
            missing: key.clone(),
        }),
        (false, true) => Err(DataDirError::Incomplete {
            present: key.clone(),
            missing: svid.clone(),
        }),
        (true, true) => {
            let chain = read_pem_certs(svid)?;
            let key_pkcs8 = fs::read(key).map_err(io("reading", key))?;
            Ok(Some((chain, key_pkcs8, key.as_path())))
        }
    }
}

/// Checks that `key_pkcs8` is the private key of the chain's leaf.
fn check_pair(
    chain: &[CertificateDer<'static>],
    key_pkcs8: &[u8],
    path: &Path,
) -> Result<(), DataDirError> {
    if chain.is_empty() {
        return Err(DataDirError::Malformed {
            path: path.to_owned(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    match rustls::sign::CertifiedKey::from_der(chain.to_vec(), key, &sigil_core::tls::provider()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(DataDirError::KeyMismatch {
            path: path.to_owned(),
        }),
        Err(e) => Err(DataDirError::Malformed {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests;
