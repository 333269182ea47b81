//! Rotation under load: with 6-second SVIDs the agent renews every ~3 s, and the mTLS example
//! keeps working across it without restarts (each new handshake uses the newest SVID), while
//! `sigil agent api watch` reports every update.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use sigil_e2e::bins::bin;
use sigil_e2e::cluster::Cluster;
use sigil_e2e::mtls::{CLIENT_ID, MtlsServer, SERVER_ID, client, example_bin, register_binary};
use sigil_e2e::process::Spawned;

/// The serial numbers printed after `marker` on `lines` (`... serial <hex>, ...`).
fn serials(lines: &[String], marker: &str) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| l.split(marker).nth(1))
        .filter_map(|rest| rest.split([',', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn mtls_survives_rotation_and_watch_sees_it() {
    let c = Cluster::start();
    let ttl = ["--x509-svid-ttl", "6s"];
    register_binary(&c, SERVER_ID, &example_bin("mtls-server"), &ttl);
    register_binary(&c, CLIENT_ID, &example_bin("mtls-client"), &ttl);
    let watcher = "spiffe://example.org/e2e/watcher";
    let uid = format!("unix:uid:{}", nix::unistd::getuid().as_raw());
    c.register(watcher, &[&uid], &ttl);
    c.wait_for_svid(None, watcher);

    let mut watch_cmd = Command::new(bin("sigil"));
    watch_cmd
        .args(["agent", "api", "watch"])
        .env("SPIFFE_ENDPOINT_SOCKET", c.endpoint());
    let mut watch = Spawned::piped(
        "sigil agent api watch",
        &mut watch_cmd,
        &c.env.path().join("watch.log"),
    );

    let server = MtlsServer::start(&c, &["--spiffe-id", SERVER_ID, "--authorize", CLIENT_ID]);
    // 25 requests over ~15 s, a new connection (and handshake) every second request: about five
    // rotations of both SVIDs happen in between.
    let out = client(
        &c,
        &server.addr,
        &[
            "--spiffe-id",
            CLIENT_ID,
            "--authorize",
            SERVER_ID,
            "--count",
            "25",
            "--interval-ms",
            "600",
            "--per-connection",
            "2",
        ],
    );
    let out = out.ok("mtls-client across rotations");
    assert!(out.stdout.contains("25 requests ok"), "{out}");

    // New handshakes really used new SVIDs, on both sides.
    let lines: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    let server_serials = serials(&lines, "server cert serial ");
    assert!(
        server_serials.len() >= 3,
        "server SVID rotated too rarely: {server_serials:?}\n{out}"
    );
    let server_lines = server.proc.stdout.as_ref().unwrap().all();
    let client_serials = serials(&server_lines, "cert serial ");
    assert!(
        client_serials.len() >= 3,
        "client SVID rotated too rarely: {client_serials:?}\n{}",
        server_lines.join("\n")
    );

    eprintln!(
        "{} server SVIDs and {} client SVIDs used over 25 requests",
        server_serials.len(),
        client_serials.len()
    );

    // The watch stream delivered the watcher's rotations as they happened.
    watch.assert_running();
    let updates = watch.stdout.as_ref().unwrap().all();
    let n = updates.iter().filter(|l| l.starts_with("Update #")).count();
    assert!(
        n >= 4,
        "watch saw {n} updates in ~15 s of 6 s SVIDs:\n{}",
        updates.join("\n")
    );
    assert!(
        updates.iter().any(|l| l.contains(watcher)),
        "{}",
        updates.join("\n")
    );
    watch.signal(Signal::SIGINT);
    let status = watch.wait_timeout(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "watch did not exit cleanly on Ctrl-C: {status:?}"
    );
}
