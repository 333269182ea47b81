//! The join-token flow of the README, through the CLI only: token generate, an agent attesting
//! with it, entry create under the token's node alias, and the workload fetching its SVID.

use std::time::Duration;

use serde_json::Value;
use sigil_e2e::cluster::{Cluster, NODE, TD};
use sigil_e2e::process::{Spawned, tail};

#[test]
fn join_token_flow_through_the_cli() {
    let c = Cluster::start();

    // The agent attested with the token: the server lists it under its join_token ID.
    let agents = c.admin(&["agent", "list"]).ok("agent list");
    let agent_id = format!("spiffe://{TD}/sigil/agent/join_token/{}", c.token);
    assert!(agents.stdout.contains(&agent_id), "{agents}");
    // And the token created the node alias entry parented by that agent.
    let alias = c
        .admin(&["entry", "list", "--spiffe-id", NODE, "--output", "json"])
        .ok("entry list");
    let alias: Value = serde_json::from_str(&alias.stdout).unwrap();
    assert_eq!(alias["entries"][0]["parent_id"], agent_id.as_str());

    // A workload without an entry is refused, naming the reason as a gRPC status.
    let refused = c.fetch_x509_as(None).failed("fetch before registration");
    assert!(refused.stderr.contains("PermissionDenied"), "{refused}");

    let me = format!("spiffe://{TD}/e2e/me");
    let uid = nix::unistd::getuid().as_raw().to_string();
    let created = c.register(&me, &[&format!("unix:uid:{uid}")], &[]);
    assert!(
        created.stdout.contains(&format!("SPIFFE ID        : {me}")),
        "{created}"
    );

    let fetched = c.wait_for_svid(None, &me);
    assert!(
        fetched
            .stdout
            .contains(&format!("SPIFFE ID:           {me}")),
        "{fetched}"
    );

    // --write leaves PEM files a TLS library can load; JSON output names the same ID.
    let dir = c.env.path().join("svid");
    let written = c
        .api(&["fetch", "x509", "--write", dir.to_str().unwrap()])
        .ok("fetch x509 --write");
    for file in ["svid.0.pem", "svid.0.key", "bundle.0.pem"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{file}: {text}");
        assert!(written.stdout.contains(file), "{written}");
    }
    let json = c
        .api(&["fetch", "x509", "--output", "json"])
        .ok("fetch x509 --output json");
    let json: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["svids"][0]["spiffe_id"], me.as_str());

    // A token is single-use: a second agent presenting it is refused and exits.
    let second = c.env.path().join("second");
    std::fs::create_dir(&second).unwrap();
    std::fs::copy(c.env.path().join("bundle.pem"), second.join("bundle.pem")).unwrap();
    let mut cmd = std::process::Command::new(sigil_e2e::bins::bin("sigil-agent"));
    cmd.args(["run", "--trust-domain", TD, "--server-address"])
        .arg(format!("127.0.0.1:{}", c.server.port))
        .arg("--trust-bundle-path")
        .arg(second.join("bundle.pem"))
        .args(["--join-token", &c.token, "--data-dir"])
        .arg(second.join("agent"))
        .arg("--socket-path")
        .arg(second.join("pub/api.sock"))
        .arg("--admin-socket-path")
        .arg(second.join("priv/admin.sock"));
    let log = second.join("agent.log");
    let mut reused = Spawned::logged("second sigil-agent", &mut cmd, &log);
    let status = reused.wait_timeout(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "an agent reusing a join token should exit with an error, got {status:?}:\n{}",
        tail(&log, 20)
    );
}
