//! The binaries under test, from the same target directory as the test executable.
//!
//! `CARGO_BIN_EXE_*` only covers binaries of the test's own package, so the target directory is
//! derived from the test executable (`target/<profile>/deps/<test>` → `target/<profile>`). Before
//! the first binary is used, `cargo build --workspace --bins` runs once per test process, so the
//! tests never exercise stale binaries; it is a no-op taking about a second when they are fresh.
//! It builds the whole workspace's binaries, as the README does, rather than `-p` the four
//! packages: a package subset unifies dependency features differently and would rebuild ring,
//! rustls and tonic a second time. Set `SIGIL_E2E_NO_BUILD=1` to skip the build when all
//! binaries exist.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every binary the tests run.
const BINARIES: [&str; 5] = [
    "sigil-server",
    "sigil-agent",
    "sigil",
    "mtls-server",
    "mtls-client",
];

/// `target/<profile>`: the directory holding the binaries.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the test executable");
    let deps = exe
        .parent()
        .expect("test executable has no parent directory");
    // Integration tests live in target/<profile>/deps; be lenient if run from elsewhere.
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has no parent")
    } else {
        deps
    };
    dir.to_path_buf()
}

/// The path of binary `name`, built first if needed (see the module doc).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = profile_dir();
    if let Err(e) = BUILT.get_or_init(|| build(&dir)) {
        panic!("{e}");
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing after the build",
        path.display()
    );
    path
}

fn build(dir: &Path) -> Result<(), String> {
    let all_present = BINARIES.iter().all(|b| dir.join(b).is_file());
    if all_present && std::env::var_os("SIGIL_E2E_NO_BUILD").is_some() {
        return Ok(());
    }
    // The workspace root is this package's parent directory.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("tests/ has no parent directory")?;
    let target_dir = dir.parent().ok_or("profile directory has no parent")?;
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--workspace",
            "--bins",
            "--profile",
            profile,
            "--target-dir",
        ])
        .arg(target_dir);
    eprintln!("sigil-e2e: building the binaries under test: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo to build the binaries under test: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "building the binaries under test failed ({status}); run `cargo build --workspace \
             --bins` to see why"
        ))
    }
}
