//! `sigil dev` and the README's five-minute tour on top of it: ready within 30 s, the commands
//! it prints work as printed, a uid registered by the tour gets its identity (and only it), the
//! mTLS example runs with the tour's flags, a second `sigil dev` on the same directory is
//! refused, and Ctrl-C stops both children.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sigil_e2e::bins::bin;
use sigil_e2e::cluster::{Env, fetch_x509_as, root_or_skip};
use sigil_e2e::mtls::{
    CLIENT_ID, MtlsServer, SERVER_ID, binary_selectors, client_with, example_bin,
};
use sigil_e2e::process::{Out, Spawned, free_port};

/// The value after `prefix` on the first line of `lines` that has it.
fn after<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.trim_start().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{}", lines.join("\n")))
        .trim()
}

fn pid_of(lines: &[String], name: &str) -> u32 {
    let rest = after(lines, name);
    let pid = rest
        .strip_prefix("pid ")
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no pid in {rest:?}"));
    pid.parse().unwrap()
}

/// A command line `sigil dev` printed (`<sigil> <args>... # comment`), with `envs`.
fn printed_command(line: &str, envs: &[(&str, &str)]) -> Command {
    let line = line.split('#').next().unwrap_or(line);
    let mut words = line.split_whitespace();
    let program = words.next().expect("empty command line");
    let mut cmd = Command::new(program);
    cmd.args(words)
        .env_remove("SIGIL_ADMIN_SOCKET")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .envs(envs.iter().copied());
    cmd
}

#[test]
fn sigil_dev_and_the_tour() {
    let env = Env::new();
    let data_dir = env.path().join("dev");
    let port = free_port().to_string();
    let mut cmd = Command::new(bin("sigil"));
    cmd.arg("dev")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--port", &port])
        .current_dir(env.path());
    let started = Instant::now();
    let mut dev = Spawned::piped("sigil dev", &mut cmd, &env.path().join("dev.stderr"));
    let lines = dev.stdout.clone().unwrap();
    if lines
        .wait_for(Duration::from_secs(30), |l| l.contains("ready"))
        .is_none()
    {
        dev.assert_running();
        panic!("sigil dev was not ready within 30 s:\n{}", dev.describe());
    }
    eprintln!("sigil dev ready after {:?}", started.elapsed());
    let out = lines.all();

    let server_pid = pid_of(&out, "sigil-server");
    let agent_pid = pid_of(&out, "sigil-agent");
    let endpoint = after(&out, "export SPIFFE_ENDPOINT_SOCKET=").to_owned();
    let admin = after(&out, "export SIGIL_ADMIN_SOCKET=").to_owned();
    let identity = after(&out, "Your identity:");
    let me = identity.split_whitespace().next().unwrap().to_owned();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .map_or(String::new(), |u| u.name);
    assert!(me.starts_with("spiffe://example.org/dev/"), "{identity}");
    if !user.is_empty() {
        assert_eq!(me, format!("spiffe://example.org/dev/{user}"));
    }
    assert!(after(&out, "X.509-SVID valid until").ends_with("half its lifetime."));
    assert!(Path::new(&admin).starts_with(&data_dir), "{admin}");
    for log in ["server.log", "agent.log"] {
        assert!(data_dir.join(log).is_file(), "{log} missing");
    }

    // Tour 1: the printed commands work as printed, with the printed environment.
    let envs = [
        ("SPIFFE_ENDPOINT_SOCKET", endpoint.as_str()),
        ("SIGIL_ADMIN_SOCKET", admin.as_str()),
    ];
    let printed = |needle: &str| {
        out.iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` command in:\n{}", out.join("\n")))
            .clone()
    };
    let run = |line: &str| Out::run(&mut printed_command(line, &envs));
    let sigil = printed(" agent api fetch x509");
    let sigil = sigil.split_whitespace().next().unwrap().to_owned();
    let fetched = run(&printed(" agent api fetch x509")).ok("printed fetch");
    assert!(fetched.stdout.contains(&me), "{fetched}");
    let mut watch = Spawned::piped(
        "printed watch",
        &mut printed_command(&printed(" agent api watch"), &envs),
        &env.path().join("watch.log"),
    );
    let first = watch.stdout.clone().unwrap();
    let update = first.wait_for(Duration::from_secs(10), |l| l.contains(&me));
    assert!(
        update.is_some(),
        "watch printed no update:\n{}",
        watch.describe()
    );
    watch.signal(Signal::SIGINT);
    let status = watch.wait_timeout(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "watch on Ctrl-C: {status:?}"
    );
    let create = printed(" entry create ");
    run(&create).ok("printed entry create");
    let listed = run(&printed(" entry list")).ok("printed entry list");
    let new_id = create
        .split_whitespace()
        .skip_while(|w| *w != "--spiffe-id")
        .nth(1)
        .unwrap();
    assert!(listed.stdout.contains(new_id), "{listed}");

    // Tour 2: register `nobody` by uid; it gets that identity and only it, and a uid without an
    // entry is refused.
    if root_or_skip("the tour's other-uid steps") {
        let nobody = "spiffe://example.org/dev/nobody";
        let args = [
            "entry",
            "create",
            "--parent-id",
            "spiffe://example.org/dev-node",
            "--spiffe-id",
            nobody,
            "--selector",
            "unix:uid:65534",
        ];
        Out::run(printed_command(&sigil, &envs).args(args)).ok("tour entry create");
        let got = sigil_e2e::process::wait_until(Duration::from_secs(10), "nobody's SVID", || {
            let out = fetch_x509_as(&env, &endpoint, Some(65534));
            out.status.success().then_some(out)
        });
        assert!(got.stdout.contains(nobody), "{got}");
        assert!(!got.stdout.contains(&me), "{got}");
        let refused = fetch_x509_as(&env, &endpoint, Some(65532)).failed("unregistered uid");
        assert!(refused.stderr.contains("PermissionDenied"), "{refused}");
    }

    // Tour 3: the mTLS example, registered by uid and binary path, with the tour's flags.
    for (id, binary) in [(SERVER_ID, "mtls-server"), (CLIENT_ID, "mtls-client")] {
        let [uid, path] = binary_selectors(&example_bin(binary));
        let args = [
            "entry",
            "create",
            "--parent-id",
            "spiffe://example.org/dev-node",
            "--spiffe-id",
            id,
            "--selector",
            &uid,
            "--selector",
            &path,
            "--x509-svid-ttl",
            "1m",
        ];
        Out::run(printed_command(&sigil, &envs).args(args)).ok("tour mTLS entry create");
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let server = MtlsServer::start_with(
        &endpoint,
        env.path(),
        &[
            "--listen",
            &listen,
            "--spiffe-id",
            SERVER_ID,
            "--authorize",
            CLIENT_ID,
        ],
    );
    assert_eq!(server.addr, listen);
    let tour_client = [
        "--connect",
        &listen,
        "--spiffe-id",
        CLIENT_ID,
        "--authorize",
        SERVER_ID,
        "--count",
        "3",
        "--interval-ms",
        "500",
    ];
    let ok = client_with(&endpoint, &tour_client).ok("tour mtls-client");
    assert!(
        ok.stdout
            .contains(&format!("pong 3 {CLIENT_ID} from {SERVER_ID}")),
        "{ok}"
    );
    // The client process also holds your uid's identity; the server does not authorize it.
    let as_me = [
        "--connect",
        &listen,
        "--spiffe-id",
        &me,
        "--authorize",
        SERVER_ID,
    ];
    let refused = client_with(&endpoint, &as_me).failed("mtls-client as the dev identity");
    assert!(refused.stderr.contains("request 1 failed"), "{refused}");
    drop(server);

    // A second `sigil dev` on the same directory explains instead of failing obscurely.
    let other_port = free_port().to_string();
    let mut second = Command::new(bin("sigil"));
    second
        .arg("dev")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--port", &other_port]);
    let second = Out::run(&mut second).failed("second sigil dev");
    assert!(second.stderr.contains("another `sigil dev`"), "{second}");
    // The first one is unharmed.
    dev.assert_running();
    run(&printed(" agent api fetch x509")).ok("fetch after the second attempt");

    // Ctrl-C stops both children, then sigil dev exits successfully.
    dev.signal(Signal::SIGINT);
    let status = dev.wait_timeout(Duration::from_secs(25));
    assert!(
        status.is_some_and(|s| s.success()),
        "sigil dev exit: {status:?}\n{}",
        dev.describe()
    );
    for (name, pid) in [("sigil-server", server_pid), ("sigil-agent", agent_pid)] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) still exists after sigil dev exited"
        );
    }
    let stderr = std::fs::read_to_string(env.path().join("dev.stderr")).unwrap();
    assert!(stderr.contains("sigil-agent stopped"), "{stderr}");
    assert!(stderr.contains("sigil-server stopped"), "{stderr}");
}
