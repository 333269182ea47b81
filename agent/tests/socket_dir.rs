//! The Workload API and admin sockets' directories: the agent creates what is missing, leaves
//! the mode of what exists alone, and refuses a directory other users control (the full rule
//! set is tested in sigil-socket; these prove the agent uses it, before it touches the server).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

fn mkdir(p: &Path, mode: u32) {
    std::fs::create_dir(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

async fn server_and_files(dir: &Path) -> (TestServer, AgentFiles, String) {
    let server = TestServer::start(dir, 0).await;
    let files = AgentFiles::in_dir(dir, "agent");
    server.write_bundle_pem(&files.bundle_path).await;
    let token = server.join_token("").await;
    (server, files, token)
}

/// `socket_path = "/tmp/a.sock"` used to turn /tmp into 0755, dropping its sticky bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_in_a_shared_sticky_directory_leaves_its_mode_alone() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut files, token) = server_and_files(dir.path()).await;
    let shared = dir.path().join("tmp");
    mkdir(&shared, 0o1777);
    files.socket_path = shared.join("a.sock");
    files.admin_socket_path = shared.join("admin.sock");
    let agent = start_agent(&files, server.addr, &token).await.unwrap();
    assert_eq!(mode(&shared), 0o1777);
    assert_eq!(mode(&files.socket_path), 0o777);
    assert_eq!(mode(&files.admin_socket_path), 0o600);
    agent.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_socket_directories_are_refused_by_name_before_attesting() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut files, token) = server_and_files(dir.path()).await;

    let open = dir.path().join("open");
    mkdir(&open, 0o777);
    files.socket_path = open.join("api.sock");
    let err = start_agent(&files, server.addr, &token).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&open.display().to_string()) && msg.contains("writable"),
        "{msg}"
    );
    assert_eq!(mode(&open), 0o777);

    let real = dir.path().join("real");
    mkdir(&real, 0o755);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    files.socket_path = link.join("api.sock");
    let err = start_agent(&files, server.addr, &token).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&link.display().to_string()) && msg.contains("symbolic link"),
        "{msg}"
    );

    // Nothing reached the server: the join token is still unused.
    files.socket_path = dir.path().join("ok/api.sock");
    let agent = start_agent(&files, server.addr, &token).await.unwrap();
    agent.shutdown().await;
    server.shutdown().await;
}
