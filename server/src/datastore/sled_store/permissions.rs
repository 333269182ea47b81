//! File modes for the database directory. It holds the CA private key, so only the server's
//! user may read it. sled creates files with the process umask (often 0644) and has no option
//! to do otherwise, and changing the umask would affect the whole process; so the directory is
//! made 0700 before sled runs (which alone keeps everyone else out, including from files sled
//! creates later) and the files are tightened afterwards as defence in depth, should the
//! directory ever be copied or its mode loosened.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::datastore::{Result, StoreError};

/// Creates `dir` (and missing parents) with mode 0700, and forces 0700 if it already existed.
pub(super) fn create_private_dir(dir: &Path) -> Result<()> {
    let io = |e: std::io::Error| StoreError::Backend(format!("{}: {e}", dir.display()));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Sets every file under `dir` to 0600 and every directory to 0700; symlinks are left alone
/// rather than followed out of the directory.
pub(super) fn restrict_permissions(dir: &Path) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| StoreError::Backend(format!("{}: {e}", p.display()));
    for item in fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = item.map_err(|e| io(dir, e))?.path();
        let kind = fs::symlink_metadata(&path)
            .map_err(|e| io(&path, e))?
            .file_type();
        if kind.is_dir() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
                .map_err(|e| io(&path, e))?;
            restrict_permissions(&path)?;
        } else if kind.is_file() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| io(&path, e))?;
        }
    }
    Ok(())
}
