//! Creating the Unix socket a Sigil process serves on without handing its directory, or any
//! other file, to another local user.
//!
//! Whoever controls a socket's directory controls the socket: they can rename ours away and
//! put their own in its place (a fake Workload API handing out forged bundles), or make us
//! chmod a file of their choosing. So, as ssh's `StrictModes` does for `authorized_keys`:
//! - every directory from `/` down to the socket's must be owned by root or by this process's
//!   user, and must not be writable by group or others unless it has the sticky bit (`/tmp`);
//! - no component of the path may be a symbolic link: a link in a shared directory points
//!   wherever its creator likes, and links are never followed here;
//! - only directories this call creates are chmod-ed; an existing directory keeps its mode.
//!
//! Every refusal names the offending path.

use std::fs::{self, DirBuilder, Metadata, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tokio::net::UnixListener;

/// How to create one socket: the modes of what we create, and who we are (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketSpec {
    /// Mode of each directory this call creates (e.g. 0o755 for a socket any user may reach,
    /// 0o700 for an admin socket). Existing directories are left as they are.
    pub dir_mode: u32,
    /// Mode of the socket file (connecting needs write permission on it).
    pub socket_mode: u32,
    /// What serves it (`"server"`, `"agent"`), so "already in use" says what is running.
    pub role: &'static str,
}

/// Why a socket could not be created; every variant names the path at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The path names no file (empty, or ends in `/` or `..`).
    #[error("socket path {path:?} does not name a file")]
    NotAFile {
        /// The configured path.
        path: PathBuf,
    },
    /// A component of the path is a symbolic link.
    #[error(
        "{path} is a symbolic link; refusing to follow it for a socket (configure the path it \
         points to, after checking who owns that)"
    )]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A component of the socket's directory is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The component.
        path: PathBuf,
    },
    /// A directory on the path belongs to another user, who could swap the socket.
    #[error(
        "{path} is owned by uid {owner}, neither root nor this process's uid {uid}; refusing to \
         serve a socket below it (its owner could replace the socket)"
    )]
    ForeignOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        uid: u32,
    },
    /// A directory on the path is writable by other users and not sticky.
    #[error(
        "{path} is writable by group or others (mode {mode:04o}) without the sticky bit; \
         refusing to serve a socket below it (anyone could replace the socket): use a directory \
         only its owner can write, or `chmod go-w` it"
    )]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Something other than a socket is in the way.
    #[error("{path} exists and is not a socket; remove it or choose another socket path")]
    NotASocket {
        /// The file.
        path: PathBuf,
    },
    /// A live process answers on the socket.
    #[error("{path}: another {role} is listening on it")]
    InUse {
        /// The socket.
        path: PathBuf,
        /// [`SocketSpec::role`].
        role: &'static str,
    },
    /// A system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BindError + 'a {
    move |source| BindError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Makes the socket's directory safe (see the module doc), removes a stale socket left by a
/// process that died, binds, and sets the socket's mode. Needs a tokio runtime.
pub fn bind(path: &Path, spec: SocketSpec) -> Result<UnixListener, BindError> {
    let path = std::path::absolute(path).map_err(io("resolving", path))?;
    let (Some(dir), Some(_)) = (path.parent(), path.file_name()) else {
        return Err(BindError::NotAFile { path });
    };
    secure_dir(dir, spec.dir_mode)?;
    remove_stale(&path, spec.role)?;
    let listener = UnixListener::bind(&path).map_err(io("binding", &path))?;
    // The directory is ours or root's and not writable by others (or sticky, so nobody else
    // can rename our socket away): the path still names the socket just bound.
    fs::set_permissions(&path, fs::Permissions::from_mode(spec.socket_mode))
        .map_err(io("chmod", &path))?;
    Ok(listener)
}

/// Walks `dir` from `/` down, checking each existing component and creating the missing ones
/// with `mode`. A parent is checked before anything is created inside it.
fn secure_dir(dir: &Path, mode: u32) -> Result<(), BindError> {
    let uid = nix::unistd::geteuid().as_raw();
    let mut prefix = PathBuf::new();
    for c in dir.components() {
        prefix.push(c);
        if matches!(c, Component::Prefix(_)) {
            continue;
        }
        match fs::symlink_metadata(&prefix) {
            Ok(meta) => check_dir(&prefix, &meta, uid)?,
            Err(e) if e.kind() == ErrorKind::NotFound => create_dir(&prefix, mode, uid)?,
            Err(e) => return Err(io("inspecting", &prefix)(e)),
        }
    }
    Ok(())
}

/// The StrictModes rule for one existing directory.
fn check_dir(path: &Path, meta: &Metadata, uid: u32) -> Result<(), BindError> {
    if meta.file_type().is_symlink() {
        return Err(BindError::Symlink {
            path: path.to_owned(),
        });
    }
    if !meta.is_dir() {
        return Err(BindError::NotADirectory {
            path: path.to_owned(),
        });
    }
    let owner = meta.uid();
    if owner != 0 && owner != uid {
        return Err(BindError::ForeignOwner {
            path: path.to_owned(),
            owner,
            uid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(BindError::Writable {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Creates one directory (never through a link: mkdir does not follow one) and sets its mode
/// exactly, whatever the umask. One that appeared meanwhile is checked like any existing one.
fn create_dir(path: &Path, mode: u32, uid: u32) -> Result<(), BindError> {
    match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(path).map_err(io("inspecting", path))?;
            return check_dir(path, &meta, uid);
        }
        Err(e) => return Err(io("creating", path)(e)),
    }
    // chmod through a handle opened without following links: the directory we just made.
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_DIRECTORY)
        .open(path)
        .map_err(io("opening", path))?;
    handle
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("chmod", path))?;
    let meta = handle.metadata().map_err(io("inspecting", path))?;
    check_dir(path, &meta, uid)
}

/// Removes a socket file nobody answers on; refuses a live socket or a file of another kind.
fn remove_stale(path: &Path, role: &'static str) -> Result<(), BindError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("inspecting", path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket {
            path: path.to_owned(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(BindError::InUse {
            path: path.to_owned(),
            role,
        });
    }
    fs::remove_file(path).map_err(io("removing stale socket", path))
}

#[cfg(test)]
mod tests;
