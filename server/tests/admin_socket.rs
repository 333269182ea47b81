//! The admin socket's directory: the server creates what is missing, leaves the mode of what
//! exists alone, and refuses a directory other users control (the full rule set is tested in
//! sigil-socket; these prove the server uses it).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use sigil_server::config::{Config, Overrides};

fn config_with_socket(dir: &Path, socket: &Path) -> Config {
    Config::from_toml(
        "",
        Overrides {
            trust_domain: Some(TD.into()),
            bind_address: Some("127.0.0.1:0".into()),
            admin_socket_path: Some(socket.to_owned()),
            data_dir: Some(dir.join("data")),
            ..Default::default()
        },
    )
    .unwrap()
}

fn mkdir(p: &Path, mode: u32) {
    std::fs::create_dir(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn a_shared_sticky_directory_keeps_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("tmp");
    mkdir(&shared, 0o1777);
    let socket = shared.join("admin.sock");
    let running = sigil_server::serve::start(config_with_socket(dir.path(), &socket))
        .await
        .unwrap();
    assert_eq!(
        mode(&shared),
        0o1777,
        "the server must not chmod a directory it did not create"
    );
    assert_eq!(mode(&socket), 0o600);
    let admin = sigil_server::client::admin_channel(&socket).await.unwrap();
    let h = HealthClient::new(admin)
        .check(sigil_proto::sigil::v1::HealthCheckRequest {})
        .await
        .unwrap();
    assert!(h.into_inner().serving);
    running.shutdown().await;
}

#[tokio::test]
async fn a_directory_writable_by_others_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    mkdir(&open, 0o777);
    let err = sigil_server::serve::start(config_with_socket(dir.path(), &open.join("admin.sock")))
        .await
        .expect_err("a server must not serve its admin API from a world-writable directory");
    let msg = err.to_string();
    assert!(msg.contains(&open.display().to_string()), "{msg}");
    assert!(msg.contains("writable"), "{msg}");
    assert_eq!(mode(&open), 0o777);
}

#[tokio::test]
async fn a_symlinked_directory_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    mkdir(&real, 0o755);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = sigil_server::serve::start(config_with_socket(dir.path(), &link.join("admin.sock")))
        .await
        .expect_err("a server must not follow a symlink to its admin socket");
    let msg = err.to_string();
    assert!(msg.contains(&link.display().to_string()), "{msg}");
    assert!(msg.contains("symbolic link"), "{msg}");
    assert_eq!(
        mode(&real),
        0o755,
        "nothing may be chmod-ed through the link"
    );
}
