//! The two child processes: spawned with their output in a log file and stopped with SIGTERM,
//! then SIGKILL if they do not exit in time.
//!
//! They stay in `sigil dev`'s process group on purpose. A signal to the whole group (Ctrl-C in
//! the terminal, a closed terminal, `kill -- -<pgid>`, a CI job being cancelled) then reaches
//! them even when it is SIGKILL and `sigil dev` cannot clean up. The price is that on Ctrl-C all
//! three get SIGINT at once rather than the children being stopped in order; both daemons shut
//! down cleanly on SIGINT, and `sigil dev` does not count that exit as a failure (see
//! `Children::supervise`). Without `unsafe` (a `pre_exec` PR_SET_PDEATHSIG) nothing can stop the
//! children when only `sigil dev` is SIGKILLed; the next `sigil dev` finds them through the lock
//! file and says how to stop them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// How long a child gets to exit after SIGTERM.
const GRACE: Duration = Duration::from_secs(10);
/// Lines of a log quoted when its process fails.
const TAIL_LINES: usize = 15;

/// A running sigil-server or sigil-agent.
#[derive(Debug)]
pub struct Proc {
    /// `sigil-server` or `sigil-agent`.
    pub name: &'static str,
    /// Its process ID.
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `bin args...` with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &'static str,
        bin: &Path,
        args: &[&std::ffi::OsStr],
        log: &Path,
    ) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // The safety net: if `sigil dev` fails or panics, its children do not outlive it.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{name} exited as soon as it started"))?;
        Ok(Self {
            name,
            pid,
            log: log.to_path_buf(),
            child,
        })
    }

    /// An error when the process has exited, quoting the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.exited_error(status)),
            Err(e) => Err(anyhow!(e).context(format!("checking on {}", self.name))),
        }
    }

    /// Waits until the process exits by itself, and describes that as an error.
    pub async fn exited(&mut self) -> anyhow::Error {
        match self.child.wait().await {
            Ok(status) => self.exited_error(status),
            Err(e) => anyhow!(e).context(format!("waiting for {}", self.name)),
        }
    }

    fn exited_error(&self, status: ExitStatus) -> anyhow::Error {
        anyhow!(
            "{} exited unexpectedly ({status}); the end of {}:\n{}",
            self.name,
            self.log.display(),
            log_tail(&self.log, TAIL_LINES)
        )
    }

    /// SIGTERM, then SIGKILL after [`GRACE`]; returns how it ended.
    pub async fn stop(mut self) -> Result<String> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(format!("exited ({status})"));
        }
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        // ESRCH means it exited between try_wait and now; wait() below reaps it either way.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        match tokio::time::timeout(GRACE, self.child.wait()).await {
            Ok(status) => Ok(format!("stopped ({})", status?)),
            Err(_) => {
                self.child.kill().await?;
                Ok(format!("did not stop within {}s; killed", GRACE.as_secs()))
            }
        }
    }
}

/// The last `n` lines of a log file, indented; a note instead when it cannot be read.
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..]
                .iter()
                .map(|l| format!("    {l}\n"))
                .collect()
        }
        Err(e) => format!("    (cannot read it: {e})\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_logs() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&log, 2), "    b\n    c\n");
        assert_eq!(log_tail(&log, 10), "    a\n    b\n    c\n");
        assert!(log_tail(&dir.path().join("none"), 2).contains("cannot read"));
    }

    #[tokio::test]
    async fn stops_children_and_reports_exits() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let p = Proc::spawn("sleep", Path::new("sleep"), &["30".as_ref()], &log).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(p.stop().await.unwrap(), "stopped (signal: 15 (SIGTERM))");
        assert!(started.elapsed() < GRACE);

        let mut p = Proc::spawn(
            "sh",
            Path::new("sh"),
            &["-c".as_ref(), "echo boom; exit 3".as_ref()],
            &log,
        )
        .unwrap();
        let err = p.exited().await.to_string();
        assert!(
            err.contains("sh exited unexpectedly (exit status: 3)"),
            "{err}"
        );
        assert!(err.contains("    boom\n"), "{err}");
    }
}
