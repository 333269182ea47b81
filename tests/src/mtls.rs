//! The `mtls-server` / `mtls-client` example programs as child processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bins::bin;
use crate::cluster::Cluster;
use crate::process::{Out, Spawned};

/// `spiffe://example.org/demo/server`, the server's ID in the README tour.
pub const SERVER_ID: &str = "spiffe://example.org/demo/server";
/// `spiffe://example.org/demo/client`, the client's ID in the README tour.
pub const CLIENT_ID: &str = "spiffe://example.org/demo/client";

/// The example binary `name`, with symlinks resolved: the agent's `unix:path` selector is the
/// path the kernel reports for the process, which is the canonical one.
pub fn example_bin(name: &str) -> PathBuf {
    let path = bin(name);
    std::fs::canonicalize(&path)
        .unwrap_or_else(|e| panic!("cannot resolve {}: {e}", path.display()))
}

/// The `--selector` flags the tour registers `binary` with: the test's uid and the binary path.
pub fn binary_selectors(binary: &Path) -> [String; 2] {
    [
        format!("unix:uid:{}", nix::unistd::getuid().as_raw()),
        format!("unix:path:{}", binary.display()),
    ]
}

/// Registers `id` under [`NODE`](crate::cluster::NODE) for processes of the test's uid running `binary`.
pub fn register_binary(c: &Cluster, id: &str, binary: &Path, extra: &[&str]) {
    let [uid, path] = binary_selectors(binary);
    c.register(id, &[&uid, &path], extra);
}

/// A running `mtls-server`.
#[derive(Debug)]
pub struct MtlsServer {
    /// The process (stdout lines collected).
    pub proc: Spawned,
    /// The address it listens on.
    pub addr: String,
}

impl MtlsServer {
    /// `mtls-server --listen 127.0.0.1:0 <args>` against the cluster's agent.
    pub fn start(c: &Cluster, args: &[&str]) -> Self {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend(args);
        Self::start_with(&c.endpoint(), c.env.path(), &all)
    }

    /// `mtls-server <args>` with `$SPIFFE_ENDPOINT_SOCKET=endpoint` and its stderr in `dir`;
    /// waits for its `listening on` line (printed once it holds an SVID).
    pub fn start_with(endpoint: &str, dir: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(example_bin("mtls-server"));
        cmd.args(args).env("SPIFFE_ENDPOINT_SOCKET", endpoint);
        let log = dir.join("mtls-server.log");
        let mut proc = Spawned::piped("mtls-server", &mut cmd, &log);
        let lines = proc.stdout.clone().expect("stdout is piped");
        let line = lines.wait_for(Duration::from_secs(40), |l| l.contains(" listening on "));
        let Some(line) = line else {
            proc.assert_running();
            panic!("mtls-server did not start listening:\n{}", proc.describe());
        };
        let addr = line
            .split(" listening on ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        Self { proc, addr }
    }
}

/// Runs `mtls-client --connect <addr> <args>` to completion against the cluster's agent.
pub fn client(c: &Cluster, addr: &str, args: &[&str]) -> Out {
    let mut all = vec!["--connect", addr];
    all.extend(args);
    client_with(&c.endpoint(), &all)
}

/// Runs `mtls-client <args>` to completion with `$SPIFFE_ENDPOINT_SOCKET=endpoint`.
pub fn client_with(endpoint: &str, args: &[&str]) -> Out {
    let mut cmd = Command::new(example_bin("mtls-client"));
    cmd.args(args).env("SPIFFE_ENDPOINT_SOCKET", endpoint);
    Out::run(&mut cmd)
}
