//! A Sigil deployment in a temporary directory: one server, one agent attested with a join
//! token, set up exactly as the README does it, through the `sigil` CLI.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bins::bin;
use crate::process::{Out, Spawned, free_port, wait_until};

/// The trust domain of every test deployment.
pub const TD: &str = "example.org";
/// The node alias the agent's join token creates; entries use it as their parent ID.
pub const NODE: &str = "spiffe://example.org/node1";
/// How long a process gets to become healthy.
pub const STARTUP: Duration = Duration::from_secs(30);

/// A temporary directory under `/tmp` (short, for socket paths), readable by every user so
/// workloads running under other uids can reach the agent's public socket inside it.
#[derive(Debug)]
pub struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// Creates the directory (mode 0755).
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sigil-e2e-")
            .tempdir_in("/tmp")
            .expect("cannot create a temporary directory");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("cannot chmod the temporary directory");
        Self { dir }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `sigil` executable that user `uid` can run: the built one when every directory above
    /// it is world-searchable, else a copy in this directory (a checkout under /root is not).
    pub fn sigil_for_others(&self) -> PathBuf {
        let built = bin("sigil");
        if world_executable(&built) {
            return built;
        }
        let copy = self.path().join("sigil");
        if !copy.exists() {
            fs::copy(&built, &copy).expect("cannot copy sigil");
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod sigil");
        }
        copy
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

/// True when others may search every ancestor directory of `path` and execute it.
fn world_executable(path: &Path) -> bool {
    path.ancestors().all(|p| {
        p.as_os_str().is_empty()
            || fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    })
}

/// `sigil` with no socket inherited from the test's environment.
pub fn sigil() -> Command {
    let mut cmd = Command::new(bin("sigil"));
    cmd.env_remove("SIGIL_ADMIN_SOCKET")
        .env_remove("SPIFFE_ENDPOINT_SOCKET");
    cmd
}

/// A running `sigil-server`.
#[derive(Debug)]
pub struct Server {
    /// The process.
    pub proc: Spawned,
    /// Its agent API port on 127.0.0.1.
    pub port: u16,
    /// Its admin socket.
    pub admin_socket: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Starts a server with its store and sockets in `dir`, on a free port, and waits until
    /// `sigil server healthcheck` passes.
    pub fn start(dir: &Path) -> Self {
        Self::start_on(
            dir.join("server"),
            dir.join("server-admin/api.sock"),
            dir.join("server.log"),
            free_port(),
        )
    }

    fn start_on(data_dir: PathBuf, admin_socket: PathBuf, log: PathBuf, port: u16) -> Self {
        let mut cmd = Command::new(bin("sigil-server"));
        cmd.args(["run", "--trust-domain", TD, "--bind-address"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--admin-socket-path")
            .arg(&admin_socket);
        let mut server = Self {
            proc: Spawned::logged("sigil-server", &mut cmd, &log),
            port,
            admin_socket,
            data_dir,
            log,
        };
        wait_until(STARTUP, "sigil-server to be healthy", || {
            server.proc.assert_running();
            server
                .admin(&["server", "healthcheck"])
                .status
                .success()
                .then_some(())
        });
        server
    }

    /// SIGKILLs the server (no shutdown code runs) and starts it again on the same store, port
    /// and socket.
    pub fn kill_and_restart(&mut self) {
        self.proc.kill9();
        let restarted = Self::start_on(
            self.data_dir.clone(),
            self.admin_socket.clone(),
            self.log.clone(),
            self.port,
        );
        *self = restarted;
    }

    /// Runs `sigil <args>` against the admin socket (through `$SIGIL_ADMIN_SOCKET`).
    pub fn admin(&self, args: &[&str]) -> Out {
        Out::run(
            sigil()
                .args(args)
                .env("SIGIL_ADMIN_SOCKET", &self.admin_socket),
        )
    }
}

/// A running `sigil-agent`.
#[derive(Debug)]
pub struct Agent {
    /// The process.
    pub proc: Spawned,
    /// Its Workload API socket.
    pub socket: PathBuf,
    /// Its admin (health) socket.
    pub admin_socket: PathBuf,
}

impl Agent {
    /// Starts an agent in `dir` that attests to `server` with `token`, and waits until
    /// `sigil-agent healthcheck` passes.
    pub fn start(dir: &Path, server: &Server, token: &str) -> Self {
        let socket = dir.join("agent-pub/api.sock");
        let admin = dir.join("agent-priv/admin.sock");
        let mut cmd = Command::new(bin("sigil-agent"));
        cmd.args(["run", "--trust-domain", TD, "--server-address"])
            .arg(format!("127.0.0.1:{}", server.port))
            .arg("--trust-bundle-path")
            .arg(dir.join("bundle.pem"))
            .args(["--join-token", token, "--data-dir"])
            .arg(dir.join("agent"))
            .arg("--socket-path")
            .arg(&socket)
            .arg("--admin-socket-path")
            .arg(&admin);
        let mut proc = Spawned::logged("sigil-agent", &mut cmd, &dir.join("agent.log"));
        wait_until(STARTUP, "sigil-agent to be healthy", || {
            proc.assert_running();
            let mut check = Command::new(bin("sigil-agent"));
            check.arg("healthcheck").arg("--socket").arg(&admin);
            Out::run(&mut check).status.success().then_some(())
        });
        Self {
            proc,
            socket,
            admin_socket: admin,
        }
    }
}

/// A server and an agent joined through the CLI, as in the README.
#[derive(Debug)]
pub struct Cluster {
    /// The agent (dropped first: fields drop in declaration order).
    pub agent: Agent,
    /// The server.
    pub server: Server,
    /// The agent's join token.
    pub token: String,
    /// The temporary directory (dropped last).
    pub env: Env,
}

impl Cluster {
    /// `sigil bundle show`, `sigil token generate --spiffe-id <NODE>`, then an agent with that
    /// token.
    pub fn start() -> Self {
        let env = Env::new();
        let dir = env.path();
        let server = Server::start(dir);
        let bundle = server
            .admin(&["bundle", "show", "--format", "pem"])
            .ok("bundle show");
        fs::write(dir.join("bundle.pem"), bundle.stdout).expect("cannot write bundle.pem");
        let token = server
            .admin(&["token", "generate", "--spiffe-id", NODE])
            .ok("token generate");
        let token = token
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("Token: "))
            .unwrap_or_else(|| panic!("no `Token:` line in {token}"))
            .trim()
            .to_owned();
        let agent = Agent::start(dir, &server, &token);
        Self {
            agent,
            server,
            token,
            env,
        }
    }

    /// Runs `sigil <args>` against the server's admin socket.
    pub fn admin(&self, args: &[&str]) -> Out {
        self.server.admin(args)
    }

    /// `sigil entry create --parent-id <NODE> --spiffe-id <id> --selector <s>... <extra>...`.
    pub fn register(&self, spiffe_id: &str, selectors: &[&str], extra: &[&str]) -> Out {
        let mut args = vec![
            "entry",
            "create",
            "--parent-id",
            NODE,
            "--spiffe-id",
            spiffe_id,
        ];
        for s in selectors {
            args.extend(["--selector", s]);
        }
        args.extend(extra);
        self.admin(&args).ok("entry create")
    }

    /// `unix://<Workload API socket>`, as `SPIFFE_ENDPOINT_SOCKET` wants it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.agent.socket.display())
    }

    /// `sigil agent api <args>` with `$SPIFFE_ENDPOINT_SOCKET` set, as the test's user.
    pub fn api(&self, args: &[&str]) -> Out {
        Out::run(
            sigil()
                .args(["agent", "api"])
                .args(args)
                .env("SPIFFE_ENDPOINT_SOCKET", self.endpoint()),
        )
    }

    /// `sigil agent api fetch x509`, as user `uid` (group `uid` too) when given.
    pub fn fetch_x509_as(&self, uid: Option<u32>) -> Out {
        fetch_x509_as(&self.env, &self.endpoint(), uid)
    }

    /// Fetches (as `uid`) until the answer names `spiffe_id`; registration reaches the agent
    /// asynchronously.
    pub fn wait_for_svid(&self, uid: Option<u32>, spiffe_id: &str) -> Out {
        let mut last = None;
        let found = wait_until_or(STARTUP, || {
            let out = self.fetch_x509_as(uid);
            if out.status.success() && out.stdout.contains(spiffe_id) {
                return Some(out);
            }
            last = Some(out);
            None
        });
        found.unwrap_or_else(|| {
            let last = last.map_or_else(String::new, |o| o.to_string());
            panic!("uid {uid:?} never received {spiffe_id}; last fetch:\n{last}")
        })
    }
}

/// `sigil agent api fetch x509` with `$SPIFFE_ENDPOINT_SOCKET=endpoint`, as user `uid` (group
/// `uid` too) when given, using a `sigil` that user can run (see [`Env::sigil_for_others`]).
pub fn fetch_x509_as(env: &Env, endpoint: &str, uid: Option<u32>) -> Out {
    let mut cmd = match uid {
        Some(uid) => {
            let mut cmd = Command::new(env.sigil_for_others());
            cmd.uid(uid).gid(uid).current_dir(env.path());
            cmd
        }
        None => sigil(),
    };
    cmd.args(["agent", "api", "fetch", "x509", "--timeout", "5s"])
        .env_remove("SIGIL_ADMIN_SOCKET")
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint);
    Out::run(&mut cmd)
}

/// Like [`wait_until`] but returns `None` on timeout instead of panicking.
fn wait_until_or<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True when the tests run as root; otherwise prints why `test` is skipped.
pub fn root_or_skip(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!(
            "SKIPPED {test}: it runs workloads under other uids (setuid), which needs root; run \
             the e2e tests as root (as CI does) to include it"
        );
    }
    root
}
