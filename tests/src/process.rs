//! Child processes for tests: killed when dropped, their output kept for failure messages.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A port that was free a moment ago on 127.0.0.1 (bind port 0, read it, close).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("cannot bind a free port")
        .port()
}

/// Polls `f` every 50 ms until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of a file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The result of a command that ran to completion.
#[derive(Debug)]
pub struct Out {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Out {
    /// Runs `cmd` to completion, capturing both streams.
    pub fn run(cmd: &mut Command) -> Self {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        Self {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics, showing both streams, unless the command succeeded.
    pub fn ok(self, what: &str) -> Self {
        assert!(
            self.status.success(),
            "{what} failed ({}):\n{self}",
            self.status
        );
        self
    }

    /// Panics, showing both streams, unless the command failed.
    pub fn failed(self, what: &str) -> Self {
        assert!(!self.status.success(), "{what} should have failed:\n{self}");
        self
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr)
    }
}

/// A child process that is SIGKILLed and reaped if still running when dropped.
#[derive(Debug)]
pub struct Spawned {
    /// A name for messages.
    pub name: String,
    child: Child,
    /// Where its output goes, when it goes to a file.
    pub log: Option<PathBuf>,
    /// Its stdout lines, when stdout is piped (see [`Spawned::piped`]).
    pub stdout: Option<Lines>,
}

impl Spawned {
    /// Starts `cmd` with stdout and stderr appended to `log` (appending keeps a restarted
    /// process's earlier output).
    pub fn logged(name: &str, cmd: &mut Command, log: &Path) -> Self {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let err = file
            .try_clone()
            .expect("cannot duplicate a log file handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Self {
            name: name.to_owned(),
            child,
            log: Some(log.to_path_buf()),
            stdout: None,
        }
    }

    /// Starts `cmd` with stdout read line by line into [`Spawned::stdout`] and stderr appended to
    /// `log`.
    pub fn piped(name: &str, cmd: &mut Command, log: &Path) -> Self {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let stdout = child.stdout.take().map(Lines::spawn);
        Self {
            name: name.to_owned(),
            child,
            log: Some(log.to_path_buf()),
            stdout,
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (ignoring a process that already exited).
    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.pid()).expect("pid out of range");
        let _ = kill(Pid::from_raw(pid), signal);
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait failed")
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics, quoting its log, if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!(
                "{} exited unexpectedly ({status}):\n{}",
                self.name,
                self.describe()
            );
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The end of its log and its stdout so far, for failure messages.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        if let Some(lines) = &self.stdout {
            text.push_str(&format!(
                "--- {} stdout\n{}\n",
                self.name,
                lines.all().join("\n")
            ));
        }
        if let Some(log) = &self.log {
            text.push_str(&format!(
                "--- {} ({})\n{}\n",
                self.name,
                log.display(),
                tail(log, 40)
            ));
        }
        text
    }
}

impl Drop for Spawned {
    /// SIGTERM first, so a `sigil dev` stops its own children; SIGKILL if that takes too long.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
        if self.try_wait().is_none() {
            self.signal(Signal::SIGTERM);
            if self.wait_timeout(Duration::from_secs(5)).is_none() {
                self.kill9();
            }
        }
    }
}

/// The lines read so far, and whether the stream has ended.
type LineState = Mutex<(Vec<String>, bool)>;

/// A child's stdout, collected line by line by a background thread.
#[derive(Debug, Clone)]
pub struct Lines {
    shared: Arc<(LineState, Condvar)>,
}

impl Lines {
    fn spawn(stdout: impl Read + Send + 'static) -> Self {
        let shared = Arc::new((Mutex::new((Vec::new(), false)), Condvar::new()));
        let writer = Arc::clone(&shared);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (lock, cv) = &*writer;
                lock.lock().expect("poisoned").0.push(line);
                cv.notify_all();
            }
            let (lock, cv) = &*writer;
            lock.lock().expect("poisoned").1 = true;
            cv.notify_all();
        });
        Self { shared }
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.shared.0.lock().expect("poisoned").0.clone()
    }

    /// The first line matching `pred`, waiting up to `timeout`; `None` on timeout or end of
    /// output.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut state = lock.lock().expect("poisoned");
        loop {
            if let Some(line) = state.0.iter().find(|l| pred(l)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if state.1 || now >= deadline {
                return None;
            }
            state = cv.wait_timeout(state, deadline - now).expect("poisoned").0;
        }
    }
}
