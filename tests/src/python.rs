//! Python clients for interop tests: the interpreter of a virtualenv holding
//! `tests/python/requirements.txt` (py-spiffe, grpcio), and the scripts in `tests/python/`.
//!
//! [`python`] uses `$SIGIL_PYTHON` when set (CI sets it from `.ci/python-env`); otherwise it runs
//! `.ci/python-env` itself, once per test process and under a file lock shared by every test
//! process, so a plain `cargo test --workspace` works on a fresh machine that can reach PyPI. The
//! script skips all work when the venv already matches the requirements. When no interpreter
//! can be had, the test fails and says why: these tests are never skipped silently.
//!
//! Each script prints one `RESULT <json>` line on success, and `FAILED: <why>` on stderr and exit
//! status 1 on failure; [`run_script`] returns the JSON or the whole story.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use crate::bins::profile_dir;
use crate::process::Spawned;

/// Environment variable naming a ready interpreter (one that can import the requirements).
pub const SIGIL_PYTHON: &str = "SIGIL_PYTHON";

/// The modules the scripts import; an interpreter without them is refused.
const SMOKE: &str = "import spiffe, grpc, google.protobuf, cryptography, jwt";

/// The repository root (this package's parent directory).
fn root() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).to_path_buf()
}

/// `tests/python/<name>`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// The interpreter the interop scripts run with (see the module doc); panics with the reason
/// when there is none.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(find_python) {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn find_python() -> Result<PathBuf, String> {
    let (python, from) = match std::env::var_os(SIGIL_PYTHON) {
        Some(p) if !p.is_empty() => (PathBuf::from(p), format!("${SIGIL_PYTHON}")),
        _ => (setup_venv()?, ".ci/python-env".to_owned()),
    };
    let out = Command::new(&python)
        .args(["-c", SMOKE])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run the interop tests' Python {} (from {from}): {e}",
                python.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "the interop tests' Python {} (from {from}) cannot import their requirements \
             (tests/python/requirements.txt; `{SMOKE}` failed, {}):\n{}\nUnset ${SIGIL_PYTHON} \
             to let the tests create the venv, or point it at `$(.ci/python-env)`",
            python.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(python)
}

/// Runs `.ci/python-env` for this target directory while holding `python-venv.lock` in it,
/// and returns the interpreter it prints.
fn setup_venv() -> Result<PathBuf, String> {
    let target = profile_dir()
        .parent()
        .map(Path::to_path_buf)
        .ok_or("the profile directory has no parent (no target directory)")?;
    let lock_path = target.join("python-venv.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    let _lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", lock_path.display()))?;

    let env_script = root().join(".ci/python-env");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&env_script)
        .env("CARGO_TARGET_DIR", &target)
        .env("SIGIL_PYTHON_ENV_LOCKED", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run bash {}: {e}", env_script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "cannot set up Python for the interop tests: {} failed ({}). It creates \
             {}/python-venv from tests/python/requirements.txt with pip, which needs python3 >= \
             3.10 with venv and access to PyPI (or a mirror: PIP_INDEX_URL). Alternatively set \
             ${SIGIL_PYTHON} to an interpreter that has those packages.\n--- stdout\n{stdout}\n\
             --- stderr\n{stderr}",
            env_script.display(),
            out.status,
            target.display()
        ));
    }
    let python = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| {
            format!(
                "{} printed no interpreter path:\n{stderr}",
                env_script.display()
            )
        })?;
    if !stderr.trim().is_empty() {
        eprintln!("sigil-e2e: {}:\n{stderr}", env_script.display());
    }
    eprintln!(
        "sigil-e2e: Python for the interop tests: {} ({:.1?})",
        python.display(),
        started.elapsed()
    );
    Ok(python)
}

/// The outcome of a script that exited.
#[derive(Debug)]
pub struct ScriptOut {
    /// Whether it exited successfully.
    pub success: bool,
    /// The JSON of its `RESULT` line, if it printed one.
    pub result: Option<Value>,
    /// Its stdout and stderr, for messages.
    pub transcript: String,
    /// Its `FAILED: ...` line, if it printed one.
    pub failure: Option<String>,
}

impl ScriptOut {
    /// True when it exited successfully and printed its result.
    pub fn succeeded(&self) -> bool {
        self.success && self.result.is_some()
    }

    /// `what` failed: why (its `FAILED:` line), then the whole transcript.
    pub fn explain(&self, what: &str) -> String {
        let why = self
            .failure
            .clone()
            .unwrap_or_else(|| format!("no result line (exited successfully: {})", self.success));
        format!("{what}: {why}\n{}", self.transcript)
    }

    /// The result, or a panic with [`ScriptOut::explain`].
    pub fn ok(self, what: &str) -> Value {
        match self.result {
            Some(result) if self.success => result,
            _ => panic!("{}", self.explain(what)),
        }
    }
}

/// Runs `python tests/python/<name> <args>` to completion (killed after `timeout`), with its
/// stderr in `dir/python-<name>.log`.
pub fn run_script(dir: &Path, name: &str, args: &[&str], timeout: Duration) -> ScriptOut {
    let mut cmd = Command::new(python());
    cmd.arg(script(name))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env_remove("PYTHONPATH");
    let stem = name.trim_end_matches(".py");
    let log = dir.join(format!("python-{stem}-{}.log", unique()));
    let mut proc = Spawned::piped(&format!("python {name}"), &mut cmd, &log);
    let status = proc.wait_timeout(timeout);
    let lines = proc.stdout.clone().expect("stdout is piped");
    // Wait for the reader thread to drain stdout (it ends with the process).
    let _ = lines.wait_for(Duration::from_secs(5), |_| false);
    let stdout = lines.all();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let Some(status) = status else {
        proc.kill9();
        let transcript = transcript(&stdout, &stderr);
        return ScriptOut {
            success: false,
            result: None,
            failure: Some(format!("killed after {timeout:?}")),
            transcript,
        };
    };
    let result = stdout
        .iter()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|json| serde_json::from_str(json).ok());
    let failure = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("FAILED: "))
        .map(str::to_owned);
    ScriptOut {
        success: status.success(),
        result,
        transcript: transcript(&stdout, &stderr),
        failure,
    }
}

/// A number distinct for every script run of this process, for log names.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn transcript(stdout: &[String], stderr: &str) -> String {
    format!(
        "--- python stdout\n{}\n--- python stderr\n{stderr}",
        stdout.join("\n")
    )
}
