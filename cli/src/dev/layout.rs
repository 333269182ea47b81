//! Where `sigil dev` keeps things, and how it claims its data directory.
//!
//! ```text
//! <data dir>/dev.lock       flock held while `sigil dev` runs; holds its pid and its children's
//! <data dir>/server/        sigil-server's sled store (CA key, entries, agents)
//! <data dir>/agent/         sigil-agent's identity
//! <data dir>/server.log, agent.log, bundle.pem
//! <sockets>/public/api.sock     Workload API (dir 0755, socket 0777: any local user may ask)
//! <sockets>/private/server.sock server admin API (dir 0700, socket 0600)
//! <sockets>/private/agent.sock  agent health
//! ```
//! `<sockets>` is `<data dir>/run`, unless that makes a socket path too long for `sun_path`
//! (108 bytes on Linux): then `/tmp/sigil-dev-<uid>-<hash of the data dir>`.
//!
//! The data directory is wiped at every start, so each run is fresh and no state from an older
//! build can get in the way. To never delete something it did not create, `sigil dev` only wipes
//! a directory that is empty or holds its `dev.lock`.

use std::collections::hash_map::DefaultHasher;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file's name inside the data directory.
const LOCK_FILE: &str = "dev.lock";
/// Longest socket path we create: Linux allows 107 bytes plus a NUL; keep a margin.
const MAX_SOCKET_PATH: usize = 100;
/// The longest socket name below the socket directory.
const LONGEST_SOCKET: &str = "/private/server.sock";

/// Every path `sigil dev` uses.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The data directory as the user gave it (for messages).
    pub shown: PathBuf,
    /// The data directory, absolute.
    pub data_dir: PathBuf,
    /// The directory holding the sockets.
    pub socket_dir: PathBuf,
    /// True when `socket_dir` is the short fallback under `/tmp`.
    pub socket_fallback: bool,
}

impl Layout {
    /// Computes the layout for `data_dir` (relative paths are taken from the current directory).
    pub fn new(data_dir: &Path, uid: u32) -> Result<Self> {
        let abs = std::path::absolute(data_dir)
            .with_context(|| format!("resolving {}", data_dir.display()))?;
        let (socket_dir, socket_fallback) = socket_dir(&abs, uid);
        Ok(Self {
            shown: data_dir.to_path_buf(),
            data_dir: abs,
            socket_dir,
            socket_fallback,
        })
    }

    /// sigil-server's `--data-dir`.
    pub fn server_data(&self) -> PathBuf {
        self.data_dir.join("server")
    }

    /// sigil-agent's `--data-dir`.
    pub fn agent_data(&self) -> PathBuf {
        self.data_dir.join("agent")
    }

    /// Where sigil-server's output goes (as shown to the user).
    pub fn server_log(&self) -> PathBuf {
        self.shown.join("server.log")
    }

    /// Where sigil-agent's output goes (as shown to the user).
    pub fn agent_log(&self) -> PathBuf {
        self.shown.join("agent.log")
    }

    /// The server's trust bundle, which the agent uses to authenticate the server at first.
    pub fn bundle(&self) -> PathBuf {
        self.data_dir.join("bundle.pem")
    }

    /// The agent's Workload API socket.
    pub fn workload_socket(&self) -> PathBuf {
        self.socket_dir.join("public/api.sock")
    }

    /// The server's admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.socket_dir.join("private/server.sock")
    }

    /// The agent's admin (health) socket.
    pub fn agent_admin_socket(&self) -> PathBuf {
        self.socket_dir.join("private/agent.sock")
    }

    fn lock_file(&self) -> PathBuf {
        self.data_dir.join(LOCK_FILE)
    }
}

/// `<data dir>/run` when short enough for every socket, else a per-user, per-data-dir directory
/// under `/tmp` (the hash keeps two data dirs of one user apart).
fn socket_dir(data_dir: &Path, uid: u32) -> (PathBuf, bool) {
    let local = data_dir.join("run");
    if local.as_os_str().len() + LONGEST_SOCKET.len() <= MAX_SOCKET_PATH {
        return (local, false);
    }
    let mut hasher = DefaultHasher::new();
    data_dir.hash(&mut hasher);
    let short = format!("/tmp/sigil-dev-{uid}-{:08x}", hasher.finish() as u32);
    (PathBuf::from(short), true)
}

/// The three binaries, found next to the running `sigil`.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `sigil-server`.
    pub server: PathBuf,
    /// `sigil-agent`.
    pub agent: PathBuf,
    /// This `sigil`, as the user should type it in the printed commands.
    pub sigil: String,
}

impl Binaries {
    /// Looks for `sigil-server` and `sigil-agent` in the directory of the current executable,
    /// which is where `cargo build` puts all three.
    pub fn locate() -> Result<Self> {
        let exe = std::env::current_exe().context("finding the sigil executable")?;
        let dir = exe
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
        let find = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(anyhow!(
                    "{name} not found next to {} (looked for {}): run `cargo build --workspace \
                     --bins` first",
                    exe.display(),
                    path.display()
                ))
            }
        };
        let cwd = std::env::current_dir().unwrap_or_default();
        Ok(Self {
            server: find("sigil-server")?,
            agent: find("sigil-agent")?,
            sigil: command_name(&exe, &cwd, std::env::var_os("PATH").as_deref()),
        })
    }
}

/// How to spell `exe` in a command the user will paste: `sigil` when `$PATH` finds this very
/// file, `./target/debug/sigil` below the current directory, else the absolute path.
pub fn command_name(exe: &Path, cwd: &Path, path_env: Option<&OsStr>) -> String {
    let same_file = |p: &Path| match (fs::canonicalize(p), fs::canonicalize(exe)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if let (Some(name), Some(path_env)) = (exe.file_name(), path_env) {
        // Only the first match counts: that is what the shell would run.
        if let Some(found) = std::env::split_paths(path_env)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
            && same_file(&found)
        {
            return name.to_string_lossy().into_owned();
        }
    }
    match exe.strip_prefix(cwd) {
        Ok(rel) => format!("./{}", rel.display()),
        Err(_) => exe.display().to_string(),
    }
}

/// The data directory, claimed by this `sigil dev` for as long as the value lives.
#[derive(Debug)]
pub struct DirLock {
    file: Flock<File>,
}

impl DirLock {
    /// Creates the data directory if needed and locks it; refuses when another `sigil dev` holds
    /// it, when children of a crashed one still run, or when it holds files not ours.
    pub fn acquire(layout: &Layout) -> Result<Self> {
        let dir = &layout.data_dir;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock_path = layout.lock_file();
        if !lock_path.exists() && !is_empty_dir(dir)? {
            bail!(
                "{} exists and was not created by `sigil dev`; it is wiped at every start, so \
                 choose another --data-dir (or remove it yourself)",
                layout.shown.display()
            );
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let pids = read_pids(&mut file);
                let who = pids
                    .iter()
                    .find(|(name, _)| name == "sigil-dev")
                    .map_or_else(String::new, |(_, pid)| format!(" (pid {pid})"));
                bail!(
                    "another `sigil dev`{who} is running with data dir {}; its Workload API \
                     socket is {}. Use it, stop it (Ctrl-C in its terminal), or pass another \
                     --data-dir and --port",
                    layout.shown.display(),
                    layout.workload_socket().display()
                );
            }
            Err((_, errno)) => {
                return Err(anyhow!(errno).context(format!("locking {}", lock_path.display())));
            }
        };
        // A `sigil dev` killed with SIGKILL cannot stop its children; say so instead of failing
        // later on a busy port or socket.
        let orphans: Vec<(String, u32)> = read_pids(&mut file)
            .into_iter()
            .filter(|(name, pid)| name != "sigil-dev" && process_is(*pid, name))
            .collect();
        if !orphans.is_empty() {
            let who: Vec<String> = orphans
                .iter()
                .map(|(n, p)| format!("{n} (pid {p})"))
                .collect();
            let pids: Vec<String> = orphans.iter().map(|(_, p)| p.to_string()).collect();
            let (verb, them) = if orphans.len() == 1 {
                ("is", "it")
            } else {
                ("are", "them")
            };
            bail!(
                "{} from an earlier `sigil dev` with this data dir {verb} still running; stop \
                 {them} with `kill {}` and try again",
                who.join(" and "),
                pids.join(" ")
            );
        }
        let mut lock = Self { file };
        lock.record(&[("sigil-dev", std::process::id())])?;
        Ok(lock)
    }

    /// Writes `name pid` lines into the lock file, replacing its content.
    pub fn record(&mut self, pids: &[(&str, u32)]) -> Result<()> {
        let text: String = pids.iter().map(|(n, p)| format!("{n} {p}\n")).collect();
        let file: &mut File = &mut self.file;
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(text.as_bytes()))
            .context("writing the lock file")
    }
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    let mut entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(entries.next().is_none())
}

/// The `name pid` lines of a lock file; unreadable or malformed content counts as none.
fn read_pids(file: &mut File) -> Vec<(String, u32)> {
    let mut text = String::new();
    if file
        .rewind()
        .and_then(|()| file.read_to_string(&mut text))
        .is_err()
    {
        return Vec::new();
    }
    parse_pids(&text)
}

fn parse_pids(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter_map(|line| {
            let (name, pid) = line.split_once(' ')?;
            Some((name.to_owned(), pid.trim().parse().ok()?))
        })
        .collect()
}

/// True when process `pid` exists and its command name is `name` (a pid may have been reused).
fn process_is(pid: u32, name: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim_end() == name)
}

/// Refuses early when something already listens on the port, with a hint, instead of letting
/// sigil-server fail with a bare "address in use" in its log.
pub fn ensure_port_free(port: u16) -> Result<()> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "cannot use port {port} on 127.0.0.1 ({e}): another `sigil dev` or sigil-server may \
             be running; pass --port to use another"
        ),
    }
}

/// Deletes everything from an earlier run: the data directory's content but the lock, and the
/// fallback socket directory. Then creates the socket directory.
pub fn wipe(layout: &Layout) -> Result<()> {
    let dir = &layout.data_dir;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if entry.file_name() == LOCK_FILE {
            continue;
        }
        remove(&entry.path())?;
    }
    if layout.socket_fallback {
        let sockets = &layout.socket_dir;
        match fs::symlink_metadata(sockets) {
            Ok(meta) if meta.is_dir() && meta.uid() == nix::unistd::getuid().as_raw() => {
                remove(sockets)?;
            }
            Ok(_) => bail!(
                "{} exists but is not a directory owned by you; remove it or use a shorter \
                 --data-dir",
                sockets.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", sockets.display())),
        }
    }
    // 0755: other users' workloads must be able to reach the public socket below it.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&layout.socket_dir)
        .with_context(|| format!("creating {}", layout.socket_dir.display()))?;
    fs::set_permissions(&layout.socket_dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", layout.socket_dir.display()))
}

fn remove(path: &Path) -> Result<()> {
    let meta =
        fs::symlink_metadata(path).with_context(|| format!("inspecting {}", path.display()))?;
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.with_context(|| format!("removing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_stay_under_the_data_dir_when_short() {
        let l = Layout::new(Path::new("/home/me/proj/.sigil-dev"), 1000).unwrap();
        assert!(!l.socket_fallback);
        assert_eq!(
            l.workload_socket(),
            Path::new("/home/me/proj/.sigil-dev/run/public/api.sock")
        );
        assert_eq!(
            l.server_log(),
            Path::new("/home/me/proj/.sigil-dev/server.log")
        );
    }

    #[test]
    fn long_data_dirs_put_sockets_under_tmp() {
        let long = format!("/home/me/{}/.sigil-dev", "x".repeat(90));
        let a = Layout::new(Path::new(&long), 1000).unwrap();
        assert!(a.socket_fallback);
        let shown = a.socket_dir.display().to_string();
        assert!(shown.starts_with("/tmp/sigil-dev-1000-"), "{shown}");
        for s in [
            a.workload_socket(),
            a.admin_socket(),
            a.agent_admin_socket(),
        ] {
            assert!(s.as_os_str().len() <= MAX_SOCKET_PATH, "{}", s.display());
        }
        let other = format!("/home/me/{}/.sigil-dev", "y".repeat(90));
        let b = Layout::new(Path::new(&other), 1000).unwrap();
        assert_ne!(a.socket_dir, b.socket_dir);
    }

    #[test]
    fn relative_data_dirs_become_absolute_but_print_as_given() {
        let l = Layout::new(Path::new(".sigil-dev"), 1000).unwrap();
        assert!(l.data_dir.is_absolute());
        assert_eq!(l.agent_log(), Path::new(".sigil-dev/agent.log"));
    }

    #[test]
    fn lock_file_pids_parse_leniently() {
        let pids = parse_pids("sigil-dev 10\nsigil-server 11\ngarbage\nsigil-agent x\n");
        assert_eq!(
            pids,
            vec![
                ("sigil-dev".to_owned(), 10),
                ("sigil-server".to_owned(), 11)
            ]
        );
    }

    #[test]
    fn command_names() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let exe = bin.join("sigil");
        fs::write(&exe, "").unwrap();
        assert_eq!(command_name(&exe, dir.path(), None), "./bin/sigil");
        assert_eq!(
            command_name(&exe, Path::new("/elsewhere"), None),
            exe.display().to_string()
        );
        let path = std::env::join_paths([bin.as_path()]).unwrap();
        assert_eq!(command_name(&exe, dir.path(), Some(&path)), "sigil");
        // Another `sigil` earlier in $PATH wins in a shell, so the path must be spelled out.
        let other = dir.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("sigil"), "").unwrap();
        let path = std::env::join_paths([other.as_path(), bin.as_path()]).unwrap();
        assert_eq!(command_name(&exe, dir.path(), Some(&path)), "./bin/sigil");
    }

    #[test]
    fn refuses_foreign_dirs_and_a_second_instance() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("foreign");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("precious.txt"), "keep me").unwrap();
        let err = DirLock::acquire(&Layout::new(&foreign, 1).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("not created by `sigil dev`"),
            "{err}"
        );
        assert!(foreign.join("precious.txt").exists());

        let ours = Layout::new(&dir.path().join("dev"), 1).unwrap();
        let lock = DirLock::acquire(&ours).unwrap();
        fs::write(ours.data_dir.join("server.log"), "old").unwrap();
        // flock locks belong to the open file description, so a second open in the same process
        // conflicts just as another process would.
        let err = DirLock::acquire(&ours).unwrap_err().to_string();
        assert!(err.contains("another `sigil dev`"), "{err}");
        assert!(
            err.contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        drop(lock);

        let _lock = DirLock::acquire(&ours).unwrap();
        wipe(&ours).unwrap();
        assert!(!ours.data_dir.join("server.log").exists());
        assert!(ours.data_dir.join(LOCK_FILE).exists());
        assert!(ours.socket_dir.is_dir());
    }
}
