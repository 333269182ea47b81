//! End-to-end harness: the real `sigil-server`, `sigil-agent`, `sigil` and example binaries run
//! as child processes, talking over real TCP ports and Unix sockets, driven through the CLI.
//!
//! Nothing here links Sigil's libraries: what the tests see is what an operator sees.
//!
//! Layout:
//! - [`bins`]: finding the binaries in the target directory, building them once per test run.
//! - [`process`]: child processes that die with the test, line readers, polling, free ports.
//! - [`cluster`]: a server and an agent in one temporary directory, joined with a join token,
//!   plus helpers to register and fetch through the CLI.
//! - [`mtls`]: the `mtls-server` / `mtls-client` example programs.
//! - [`python`]: the Python interpreter (py-spiffe, grpcio) and scripts of the interop tests.
//!
//! Tests that need other uids (workload isolation) run only as root and print why they skip
//! otherwise.
#![forbid(unsafe_code)]

pub mod bins;
pub mod cluster;
pub mod mtls;
pub mod process;
pub mod python;
