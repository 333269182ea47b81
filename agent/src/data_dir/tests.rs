use std::os::unix::fs::PermissionsExt;

use super::*;

/// A self-signed certificate and its PKCS#8 key.
fn pair() -> (Vec<CertificateDer<'static>>, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["agent.test".into()]).unwrap();
    (vec![ck.cert.der().clone()], ck.signing_key.serialize_der())
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A data dir with roots in place, as after an attestation.
fn dir() -> (tempfile::TempDir, Paths) {
    let tmp = tempfile::tempdir().unwrap();
    let paths = Paths::new(tmp.path());
    let (root, _) = pair();
    write_file(&paths.bundle, pem_chain(&root).as_bytes(), 0o600).unwrap();
    (tmp, paths)
}

fn loaded(paths: &Paths) -> StoredIdentity {
    load_identity(paths)
        .unwrap()
        .expect("an identity is stored")
}

#[test]
fn nothing_stored_is_a_first_start() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(load_identity(&Paths::new(tmp.path())).unwrap().is_none());
}

#[test]
fn an_identity_round_trips_in_one_private_file() {
    let (_tmp, paths) = dir();
    let (chain, key) = pair();
    store_identity(&paths, &chain, &key).unwrap();
    assert_eq!(mode(&paths.identity), 0o600);
    let got = loaded(&paths);
    assert_eq!(got.chain, chain);
    assert_eq!(got.key_pkcs8, key);
    assert_eq!(got.roots.len(), 1);
}

/// A write that fails before its rename (a crash, a full disk) leaves the previous identity
/// whole: the key and the certificate are never of different generations.
#[test]
fn a_failed_replacement_keeps_the_previous_identity() {
    let (_tmp, paths) = dir();
    let (old_chain, old_key) = pair();
    store_identity(&paths, &old_chain, &old_key).unwrap();

    // The temp file cannot be created: the write fails where a crash would stop it.
    let tmp = paths.identity.with_extension("tmp");
    fs::create_dir(&tmp).unwrap();
    let (new_chain, new_key) = pair();
    assert!(store_identity(&paths, &new_chain, &new_key).is_err());
    let got = loaded(&paths);
    assert_eq!((got.chain, got.key_pkcs8), (old_chain, old_key));

    fs::remove_dir(&tmp).unwrap();
    store_identity(&paths, &new_chain, &new_key).unwrap();
    let got = loaded(&paths);
    assert_eq!((got.chain, got.key_pkcs8), (new_chain, new_key));
}

/// What a crash in the middle of writing leaves: a partial temp file beside the real one.
#[test]
fn a_partial_temp_file_is_ignored_and_then_replaced() {
    let (_tmp, paths) = dir();
    let (chain, key) = pair();
    store_identity(&paths, &chain, &key).unwrap();
    let tmp = paths.identity.with_extension("tmp");
    let half = pem::encode(&pem::Pem::new("PRIVATE KEY", pair().1));
    fs::write(&tmp, &half[..half.len() / 2]).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();

    assert_eq!(loaded(&paths).key_pkcs8, key);
    let (chain2, key2) = pair();
    store_identity(&paths, &chain2, &key2).unwrap();
    assert!(!tmp.exists());
    assert_eq!(
        mode(&paths.identity),
        0o600,
        "a leftover temp file's mode must not leak"
    );
    assert_eq!(loaded(&paths).key_pkcs8, key2);
}

#[test]
fn a_matching_pair_in_the_older_two_file_layout_is_moved_to_one_file() {
    let (_tmp, paths) = dir();
    let (chain, key) = pair();
    fs::write(&paths.legacy_svid, pem_chain(&chain)).unwrap();
    fs::write(&paths.legacy_key, &key).unwrap();
    let got = loaded(&paths);
    assert_eq!((got.chain, got.key_pkcs8), (chain.clone(), key.clone()));
    assert!(paths.identity.exists());
    assert!(!paths.legacy_svid.exists() && !paths.legacy_key.exists());
    let again = loaded(&paths);
    assert_eq!((again.chain, again.key_pkcs8), (chain, key));
}

/// The state the older layout was left in by a crash between its two writes (new key, old
/// certificate): reported as such, naming the file, and left untouched for the operator.
#[test]
fn a_half_written_older_pair_is_a_key_mismatch() {
    let (_tmp, paths) = dir();
    let (chain, _) = pair();
    let (_, other_key) = pair();
    fs::write(&paths.legacy_svid, pem_chain(&chain)).unwrap();
    fs::write(&paths.legacy_key, &other_key).unwrap();
    let err = load_identity(&paths)
        .err()
        .expect("a mismatched pair must not load");
    assert!(
        matches!(&err, DataDirError::KeyMismatch { path } if path == &paths.legacy_key),
        "{err}"
    );
    assert!(err.to_string().contains("agent_key.der"), "{err}");
    assert!(paths.legacy_svid.exists() && paths.legacy_key.exists());
    assert!(!paths.identity.exists());

    fs::remove_file(&paths.legacy_key).unwrap();
    let err = load_identity(&paths)
        .err()
        .expect("half a pair must not load");
    assert!(matches!(err, DataDirError::Incomplete { .. }), "{err}");
}

#[test]
fn a_damaged_identity_file_is_an_error_naming_it() {
    let (_tmp, paths) = dir();
    let (chain, key) = pair();
    store_identity(&paths, &chain, &key).unwrap();
    let whole = fs::read(&paths.identity).unwrap();
    for cut in [0, 10, whole.len() / 3, whole.len() - 40] {
        fs::write(&paths.identity, &whole[..cut]).unwrap();
        let err = load_identity(&paths)
            .err()
            .expect("a damaged file must not load");
        assert!(
            err.to_string()
                .contains(&paths.identity.display().to_string()),
            "cut at {cut}: {err}"
        );
    }
    // A key that is not the certificate's.
    let (_, other) = pair();
    let mut text = pem::encode(&pem::Pem::new("PRIVATE KEY", other));
    text.push_str(&pem_chain(&chain));
    fs::write(&paths.identity, text).unwrap();
    assert!(matches!(
        load_identity(&paths),
        Err(DataDirError::KeyMismatch { .. })
    ));
    // Unreadable.
    fs::remove_file(&paths.identity).unwrap();
    fs::create_dir(&paths.identity).unwrap();
    assert!(matches!(
        load_identity(&paths),
        Err(DataDirError::Io { .. })
    ));
}

#[test]
fn an_identity_without_roots_is_incomplete() {
    let (_tmp, paths) = dir();
    let (chain, key) = pair();
    store_identity(&paths, &chain, &key).unwrap();
    fs::remove_file(&paths.bundle).unwrap();
    let err = load_identity(&paths).err().expect("no roots, no identity");
    assert!(
        matches!(&err, DataDirError::Incomplete { missing, .. } if missing == &paths.bundle),
        "{err}"
    );
}
