//! Durability: a server killed with SIGKILL (no shutdown code runs) comes back with every entry,
//! and the agent resumes: it keeps serving, and new registrations reach workloads again.

use serde_json::Value;
use sigil_e2e::cluster::{Cluster, TD};

fn entries(c: &Cluster) -> Value {
    let out = c
        .admin(&["entry", "list", "--output", "json"])
        .ok("entry list");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn server_sigkill_loses_no_entries() {
    let mut c = Cluster::start();
    let uid = format!("unix:uid:{}", nix::unistd::getuid().as_raw());
    let me = format!("spiffe://{TD}/e2e/durable");
    c.register(
        &me,
        &[&uid],
        &["--x509-svid-ttl", "10m", "--dns-name", "durable.test"],
    );
    c.register(
        &format!("spiffe://{TD}/e2e/other"),
        &["unix:uid:4242", "unix:gid:4242"],
        &["--admin", "--hint", "other"],
    );
    c.register(
        &format!("spiffe://{TD}/e2e/path"),
        &["unix:path:/usr/bin/true"],
        &[],
    );
    c.wait_for_svid(None, &me);
    let before = entries(&c);
    assert_eq!(
        before["entries"].as_array().map(Vec::len),
        Some(4),
        "{before}"
    );

    c.server.kill_and_restart();

    assert_eq!(entries(&c), before);
    // The agent still serves what it has...
    c.wait_for_svid(None, &me);
    // ...and its sync stream came back: a registration made after the restart reaches it.
    let later = format!("spiffe://{TD}/e2e/after-restart");
    c.register(&later, &[&uid], &[]);
    let out = c.wait_for_svid(None, &later);
    assert!(out.stdout.contains(&me), "{out}");
}
