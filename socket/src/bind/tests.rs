use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, lchown, symlink};

use super::*;

const PUBLIC: SocketSpec = SocketSpec {
    dir_mode: 0o755,
    socket_mode: 0o777,
    role: "agent",
};

/// A uid that is neither root nor us, as CI runs as root (`nobody`).
const OTHER_UID: u32 = 65534;

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn mkdir(p: &Path, m: u32) {
    fs::create_dir(p).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[tokio::test]
async fn creates_missing_directories_with_the_given_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("a/b/api.sock");
    let _l = bind(&sock, PUBLIC).unwrap();
    assert_eq!(mode(&tmp.path().join("a")), 0o755);
    assert_eq!(mode(&tmp.path().join("a/b")), 0o755);
    assert_eq!(mode(&sock), 0o777);
    std::os::unix::net::UnixStream::connect(&sock).unwrap();

    let private = SocketSpec {
        dir_mode: 0o700,
        socket_mode: 0o600,
        role: "server",
    };
    let admin = tmp.path().join("p/admin.sock");
    let _a = bind(&admin, private).unwrap();
    assert_eq!(mode(&tmp.path().join("p")), 0o700);
    assert_eq!(mode(&admin), 0o600);
}

/// `socket_path = "/tmp/a.sock"` used to turn /tmp into 0755, dropping its sticky bit.
#[tokio::test]
async fn an_existing_sticky_shared_directory_keeps_its_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("tmp");
    mkdir(&shared, 0o1777);
    let sock = shared.join("a.sock");
    let _l = bind(&sock, PUBLIC).unwrap();
    assert_eq!(mode(&shared), 0o1777);
    std::os::unix::net::UnixStream::connect(&sock).unwrap();
}

#[tokio::test]
async fn an_existing_own_directory_keeps_its_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mine");
    mkdir(&dir, 0o750);
    let _l = bind(&dir.join("api.sock"), PUBLIC).unwrap();
    assert_eq!(mode(&dir), 0o750);
}

#[tokio::test]
async fn a_symlinked_socket_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    mkdir(&real, 0o700);
    let link = tmp.path().join("link");
    symlink(&real, &link).unwrap();

    let err = bind(&link.join("api.sock"), PUBLIC).unwrap_err();
    assert!(
        matches!(&err, BindError::Symlink { path } if path == &link),
        "{err}"
    );
    assert!(
        err.to_string().contains(&link.display().to_string()),
        "{err}"
    );
    // Nothing was created or chmod-ed through the link.
    assert_eq!(mode(&real), 0o700);
    assert!(!real.join("api.sock").exists());

    // A link higher up is refused before anything is created below it.
    let err = bind(&link.join("sub/api.sock"), PUBLIC).unwrap_err();
    assert!(
        matches!(&err, BindError::Symlink { path } if path == &link),
        "{err}"
    );
    assert!(!real.join("sub").exists());
}

#[tokio::test]
async fn a_directory_writable_by_others_without_sticky_bit_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for m in [0o777, 0o775, 0o757] {
        let dir = tmp.path().join(format!("open{m:o}"));
        mkdir(&dir, m);
        let err = bind(&dir.join("api.sock"), PUBLIC).unwrap_err();
        assert!(
            matches!(&err, BindError::Writable { path, mode } if path == &dir && *mode == m),
            "{err}"
        );
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
        assert_eq!(mode(&dir), m, "the directory must keep its mode");
        assert!(!dir.join("api.sock").exists());
    }
    // Also when the open directory is an ancestor: the socket's own directory is not created.
    let open = tmp.path().join("open777");
    let err = bind(&open.join("ours/api.sock"), PUBLIC).unwrap_err();
    assert!(
        matches!(&err, BindError::Writable { path, .. } if path == &open),
        "{err}"
    );
    assert!(!open.join("ours").exists());
}

#[tokio::test]
async fn a_directory_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to chown a directory to uid {OTHER_UID}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let theirs = tmp.path().join("theirs");
    mkdir(&theirs, 0o755);
    chown(&theirs, Some(OTHER_UID), None).unwrap();
    let err = bind(&theirs.join("api.sock"), PUBLIC).unwrap_err();
    assert!(
        matches!(&err, BindError::ForeignOwner { path, owner, .. }
            if path == &theirs && *owner == OTHER_UID),
        "{err}"
    );
    assert!(
        err.to_string().contains(&theirs.display().to_string()),
        "{err}"
    );
    assert!(!theirs.join("api.sock").exists());

    // Our own directory below theirs is no safer: they can rename it away.
    let below = theirs.join("ours");
    mkdir(&below, 0o755);
    let err = bind(&below.join("api.sock"), PUBLIC).unwrap_err();
    assert!(
        matches!(&err, BindError::ForeignOwner { path, .. } if path == &theirs),
        "{err}"
    );

    // A link created by another user in a sticky shared directory (a /tmp squatter).
    let shared = tmp.path().join("shared");
    mkdir(&shared, 0o1777);
    let mine = tmp.path().join("mine");
    mkdir(&mine, 0o755);
    let squat = shared.join("sigil-agent");
    symlink(&mine, &squat).unwrap();
    lchown(&squat, Some(OTHER_UID), None).unwrap();
    let err = bind(&squat.join("api.sock"), PUBLIC).unwrap_err();
    assert!(
        matches!(&err, BindError::Symlink { path } if path == &squat),
        "{err}"
    );
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("s/api.sock");
    drop(bind(&sock, PUBLIC).unwrap());
    // The file of a dead listener stays behind; a restart replaces it.
    assert!(sock.exists());
    let live = bind(&sock, PUBLIC).unwrap();

    let err = bind(&sock, PUBLIC).unwrap_err();
    assert!(
        matches!(&err, BindError::InUse { role: "agent", .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("another agent is listening"),
        "{err}"
    );
    drop(live);
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("api.sock");
    fs::write(&file, b"precious").unwrap();
    let err = bind(&file, PUBLIC).unwrap_err();
    assert!(
        matches!(&err, BindError::NotASocket { path } if path == &file),
        "{err}"
    );
    assert_eq!(fs::read(&file).unwrap(), b"precious");

    let target = tmp.path().join("target");
    fs::write(&target, b"x").unwrap();
    let link = tmp.path().join("link.sock");
    symlink(&target, &link).unwrap();
    let err = bind(&link, PUBLIC).unwrap_err();
    assert!(matches!(&err, BindError::NotASocket { .. }), "{err}");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
}

#[tokio::test]
async fn a_path_naming_no_file_is_refused() {
    let err = bind(Path::new("/"), PUBLIC).unwrap_err();
    assert!(matches!(err, BindError::NotAFile { .. }), "{err}");
}
