//! Interop with Workload API clients Sigil did not write, from the Python stack, against the
//! real agent: py-spiffe (the SPIFFE project's library: `WorkloadApiClient`, `X509Source`,
//! `JwtSource`) and plain grpcio, i.e. gRPC C core, which sends the percent-encoded socket path
//! as HTTP/2 `:authority`, or the raw socket path when set as grpc-java sends it.
//!
//! The scripts are in `tests/python/` and print their findings as JSON, asserted on here; their
//! interpreter comes from [`sigil_e2e::python`] (`$SIGIL_PYTHON`, or a venv `.ci/python-env`
//! creates). Tests running at the same time share one server and agent, with one entry for the
//! test's uid whose X.509 and JWT SVIDs live 6 s, so the agent renews them every 3 s.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use sigil_e2e::cluster::{Cluster, TD};
use sigil_e2e::python::{python, run_script};

/// The SPIFFE ID the test's uid is registered as.
const ME: &str = "spiffe://example.org/e2e/python";
/// The audience of the JWT-SVIDs the scripts fetch.
const AUDIENCE: &str = "sigil-e2e-python";
/// How long one script may run (each also has its own, shorter, deadline).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The shared cluster: the one another running test holds, or a new one (registered and
/// serving [`ME`]). It stops when the last test holding it finishes.
fn cluster() -> Arc<Cluster> {
    static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    // A test that panicked while starting one leaves the lock poisoned; start another.
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(c) = shared.upgrade() {
        return c;
    }
    // Set up Python first: it can fail, and on a fresh machine takes a while.
    python();
    let c = Cluster::start();
    let uid = format!("unix:uid:{}", nix::unistd::getuid().as_raw());
    c.register(
        ME,
        &[&uid],
        &["--x509-svid-ttl", "6s", "--jwt-svid-ttl", "6s"],
    );
    c.wait_for_svid(None, ME);
    let c = Arc::new(c);
    *shared = Arc::downgrade(&c);
    c
}

/// Runs `tests/python/<script> --socket <agent socket> --spiffe-id <ME> <args>` and returns
/// its result, panicking with its output and the daemons' logs if it failed (the shared
/// cluster may outlive this test, so its logs would not be shown otherwise).
fn run(c: &Cluster, script: &str, args: &[&str]) -> Value {
    let socket = c.agent.socket.to_str().expect("socket path is not UTF-8");
    let mut all = vec!["--socket", socket, "--spiffe-id", ME];
    all.extend(args);
    let out = run_script(c.env.path(), script, &all, SCRIPT_TIMEOUT);
    let what = format!("{script} {args:?}");
    assert!(
        out.succeeded(),
        "{}\n{}{}",
        out.explain(&what),
        c.agent.proc.describe(),
        c.server.proc.describe()
    );
    out.ok(&what)
}

fn has(list: &Value, item: &str) -> bool {
    list.as_array()
        .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(item)))
}

fn num(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

#[test]
fn py_spiffe_workload_api_client() {
    let c = cluster();
    let r = run(&c, "workload_api_client.py", &["--audience", AUDIENCE]);

    let x509 = &r["x509"];
    assert_eq!(x509["svids"], 1, "{r}");
    assert_eq!(x509["leaf"]["spiffe_id"], ME, "{r}");
    assert_eq!(x509["trust_domain"], TD, "{r}");
    assert!(num(&x509["chain_len"]) >= 1, "{r}");
    assert!(num(&x509["bundle_authorities"]) >= 1, "{r}");
    assert!(has(&r["x509_bundles"], TD), "{r}");

    let jwt = &r["jwt"];
    assert_eq!(jwt["spiffe_id"], ME, "{r}");
    assert_eq!(jwt["audience"], json!([AUDIENCE]), "{r}");
    assert_eq!(jwt["validated_by_agent"], ME, "{r}");
    assert_eq!(
        jwt["wrong_audience_by_agent"]["code"], "INVALID_ARGUMENT",
        "{r}"
    );
    assert_eq!(jwt["validated_offline"], ME, "{r}");
    assert!(has(&r["jwt_bundles"], TD), "{r}");
    assert!(num(&r["jwt_authorities"]) >= 1, "{r}");
}

#[test]
fn py_spiffe_sources_follow_rotation() {
    let c = cluster();
    let r = run(
        &c,
        "sources_rotation.py",
        &["--audience", AUDIENCE, "--rotation-timeout", "20"],
    );

    let x509 = &r["x509"];
    let (first, rotated) = (&x509["first"], &x509["rotated"]);
    assert_eq!(first["spiffe_id"], ME, "{r}");
    assert_eq!(rotated["spiffe_id"], ME, "{r}");
    assert_ne!(first["serial"], rotated["serial"], "{r}");
    assert!(num(&rotated["not_after"]) > num(&first["not_after"]), "{r}");
    assert!(num(&x509["notified"]) >= 1, "{r}");

    let jwt = &r["jwt"];
    assert!(has(&jwt["bundles"], TD), "{r}");
    assert!(num(&jwt["authorities"]) >= 1, "{r}");
    assert!(num(&jwt["newer_expiry"]) > num(&jwt["first_expiry"]), "{r}");
    eprintln!(
        "X509Source rotated after {} s, JwtSource got a newer token after {} s",
        x509["waited_s"], jwt["waited_s"]
    );
}

/// grpc-java sends the socket path itself as `:authority`.
#[test]
fn grpcio_with_socket_path_authority_fetches_x509_and_sds() {
    let c = cluster();
    let r = run(
        &c,
        "grpcio_raw.py",
        &["--authority", "raw", "--check", "x509", "--check", "sds"],
    );
    assert_eq!(r["authority"], c.agent.socket.to_str().unwrap(), "{r}");
    assert_eq!(r["x509"]["spiffe_id"], ME, "{r}");
    assert_eq!(r["x509"]["leaf"]["spiffe_id"], ME, "{r}");
    assert_eq!(r["sds"]["secret"], "default", "{r}");
    assert_eq!(r["sds"]["leaf"]["spiffe_id"], ME, "{r}");
}

/// gRPC C core derives `:authority` from the `unix:` target: the percent-encoded socket path.
#[test]
fn grpcio_with_default_authority_fetches_x509_and_sds() {
    let c = cluster();
    let r = run(
        &c,
        "grpcio_raw.py",
        &[
            "--authority",
            "default",
            "--check",
            "x509",
            "--check",
            "sds",
        ],
    );
    assert_eq!(r["authority"], Value::Null, "{r}");
    assert_eq!(r["x509"]["spiffe_id"], ME, "{r}");
    assert_eq!(r["x509"]["leaf"]["spiffe_id"], ME, "{r}");
    assert_eq!(r["sds"]["secret"], "default", "{r}");
    assert_eq!(r["sds"]["leaf"]["spiffe_id"], ME, "{r}");
}

/// Accepting these clients' authorities must not loosen the Workload API: without the
/// `workload.spiffe.io` header the call is still refused with `INVALID_ARGUMENT`.
#[test]
fn grpcio_without_security_header_is_invalid_argument() {
    let c = cluster();
    for authority in ["raw", "default"] {
        let r = run(
            &c,
            "grpcio_raw.py",
            &["--authority", authority, "--check", "no-header"],
        );
        let status = &r["no-header"];
        assert_eq!(
            status["code"], "INVALID_ARGUMENT",
            "authority {authority}: {r}"
        );
        assert!(
            status["details"]
                .as_str()
                .is_some_and(|d| d.contains("workload.spiffe.io")),
            "authority {authority}: {r}"
        );
    }
}

/// The admin sockets (the server's and the agent's) serve grpcio clients too, whatever
/// `:authority` they send.
#[test]
fn grpcio_on_both_admin_sockets() {
    let c = cluster();
    for socket in [&c.server.admin_socket, &c.agent.admin_socket] {
        let socket = socket.to_str().expect("socket path is not UTF-8");
        let args = [
            "--socket",
            socket,
            "--authority",
            "raw",
            "--authority",
            "default",
        ];
        let out = run_script(c.env.path(), "admin_health.py", &args, SCRIPT_TIMEOUT);
        let what = format!("admin_health.py {args:?}");
        assert!(out.succeeded(), "{}", out.explain(&what));
        let r = out.ok(&what);
        assert!(num(&r["raw"]) >= 2 && num(&r["default"]) >= 2, "{r}");
    }
}
