//! Workload attestation across processes: each uid receives only its own identity, an
//! unregistered uid is refused, and the mTLS example programs authenticate each other with
//! SVIDs from the Workload API (the README tour's commands).

use sigil_e2e::cluster::{Cluster, root_or_skip};
use sigil_e2e::mtls::{CLIENT_ID, MtlsServer, SERVER_ID, client, example_bin, register_binary};

const A: u32 = 65534;
const B: u32 = 65533;
const UNREGISTERED: u32 = 65532;

#[test]
fn each_uid_gets_only_its_own_identity() {
    if !root_or_skip("each_uid_gets_only_its_own_identity") {
        return;
    }
    let c = Cluster::start();
    let id_a = "spiffe://example.org/dev/uid-a";
    let id_b = "spiffe://example.org/dev/uid-b";
    c.register(id_a, &[&format!("unix:uid:{A}")], &[]);
    c.register(id_b, &[&format!("unix:uid:{B}")], &[]);

    let a = c.wait_for_svid(Some(A), id_a);
    assert!(a.stdout.contains("Received 1 svid"), "{a}");
    assert!(
        !a.stdout.contains(id_b),
        "uid {A} received uid {B}'s identity:\n{a}"
    );
    let b = c.wait_for_svid(Some(B), id_b);
    assert!(b.stdout.contains("Received 1 svid"), "{b}");
    assert!(
        !b.stdout.contains(id_a),
        "uid {B} received uid {A}'s identity:\n{b}"
    );

    let refused = c
        .fetch_x509_as(Some(UNREGISTERED))
        .failed("fetch by an unregistered uid");
    assert!(refused.stderr.contains("PermissionDenied"), "{refused}");
    assert!(!refused.stdout.contains("spiffe://"), "{refused}");
}

#[test]
fn mtls_example_authenticates_both_ends() {
    let c = Cluster::start();
    let ttl = ["--x509-svid-ttl", "1m"];
    register_binary(&c, SERVER_ID, &example_bin("mtls-server"), &ttl);
    register_binary(&c, CLIENT_ID, &example_bin("mtls-client"), &ttl);
    // A second identity for the client binary: valid in the trust domain, not authorized.
    let intruder = "spiffe://example.org/demo/intruder";
    register_binary(&c, intruder, &example_bin("mtls-client"), &[]);

    let server = MtlsServer::start(&c, &["--spiffe-id", SERVER_ID, "--authorize", CLIENT_ID]);
    assert!(server.proc.stdout.as_ref().unwrap().all()[0].contains(SERVER_ID));

    let ok = client(
        &c,
        &server.addr,
        &[
            "--spiffe-id",
            CLIENT_ID,
            "--authorize",
            SERVER_ID,
            "--count",
            "3",
            "--interval-ms",
            "100",
        ],
    )
    .ok("mtls-client");
    assert!(
        ok.stdout
            .contains(&format!("pong 3 {CLIENT_ID} from {SERVER_ID}")),
        "{ok}"
    );
    assert!(ok.stdout.contains("3 requests ok"), "{ok}");

    // The server refuses a client ID it was not told to authorize...
    let refused = client(
        &c,
        &server.addr,
        &["--spiffe-id", intruder, "--authorize", SERVER_ID],
    )
    .failed("mtls-client with an unauthorized ID");
    assert!(refused.stderr.contains("request 1 failed"), "{refused}");
    // ...and the client refuses a server that is not the one it expects.
    let wrong = "spiffe://example.org/demo/not-the-server";
    let refused = client(
        &c,
        &server.addr,
        &["--spiffe-id", CLIENT_ID, "--authorize", wrong],
    )
    .failed("mtls-client expecting another server");
    assert!(refused.stderr.contains("request 1 failed"), "{refused}");
}
