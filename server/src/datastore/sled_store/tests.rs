//! The conformance suite on sled, plus what only a disk-backed store can show: durability across
//! reopen, file permissions, and detection of corrupt records.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::TempDir;

use super::SledStore;
use crate::datastore::conformance::{agent, entry, td};
use crate::datastore::{
    Authority, AuthorityKind, AuthorityState, AuthorityWrite, DataStore, EntryFilter, JoinToken,
    Page, StoreError,
};

fn fresh_store() -> (TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("data")).unwrap();
    (dir, store)
}

crate::datastore::conformance::datastore_conformance_tests!(fresh_store());

fn authority() -> Authority {
    Authority {
        id: "ca".into(),
        kind: AuthorityKind::X509Ca,
        cert_der: vec![1, 2, 3],
        chain_der: vec![],
        roots_der: vec![vec![1, 2, 3]],
        public_key_der: vec![4],
        private_key_pkcs8: vec![5, 6],
        not_before: 1,
        not_after: 2,
        state: AuthorityState::Active,
    }
}

#[test]
fn everything_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (e, revision) = {
        let store = SledStore::open(&dir).unwrap();
        let e = store
            .create_entry(entry(
                "spiffe://example.org/w",
                "spiffe://example.org/a",
                &["u:1"],
            ))
            .unwrap();
        store.put_agent(agent("n1")).unwrap();
        store
            .set_bundle(&td("example.org"), b"{}".to_vec())
            .unwrap();
        store
            .write_authorities(AuthorityWrite {
                put: vec![authority()],
                ..Default::default()
            })
            .unwrap();
        let token = JoinToken {
            token: "tok".into(),
            expires_at: 100,
        };
        store.create_join_token(token, None).unwrap();
        (e, store.revision().unwrap())
    };

    let store = SledStore::open(&dir).unwrap();
    assert_eq!(store.revision().unwrap(), revision);
    assert_eq!(store.get_entry(&e.id).unwrap(), Some(e.clone()));
    // The indexes came back too: a filtered list goes through one.
    let by_parent = EntryFilter {
        by_parent_id: Some(e.parent_id.clone()),
        ..Default::default()
    };
    assert_eq!(
        store.list_entries(&by_parent, Page::default()).unwrap().0,
        vec![e.clone()]
    );
    assert_eq!(store.get_agent(&agent("n1").id).unwrap(), Some(agent("n1")));
    assert_eq!(
        store.get_bundle(&td("example.org")).unwrap(),
        Some(b"{}".to_vec())
    );
    assert_eq!(store.list_authorities().unwrap(), vec![authority()]);
    // The uniqueness index survived as well.
    let dup = entry("spiffe://example.org/w", "spiffe://example.org/a", &["u:1"]);
    assert!(matches!(
        store.create_entry(dup),
        Err(StoreError::AlreadyExists(_))
    ));
    store.attest_join_token("tok", 50, agent("n2")).unwrap();
}

fn assert_private(path: &Path) {
    for item in fs::read_dir(path).unwrap() {
        let item = item.unwrap();
        let meta = fs::symlink_metadata(item.path()).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", item.path().display());
            assert_private(&item.path());
        } else {
            assert_eq!(mode, 0o600, "{}", item.path().display());
        }
    }
}

#[test]
fn directory_and_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested").join("data");
    let store = SledStore::open(&dir).unwrap();
    store
        .write_authorities(AuthorityWrite {
            put: vec![authority()],
            ..Default::default()
        })
        .unwrap();
    let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let files = fs::read_dir(&dir).unwrap().count();
    assert!(files > 0, "sled created its files");
    assert_private(&dir);

    // An existing, too-open directory is tightened on open.
    drop(store);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let _store = SledStore::open(&dir).unwrap();
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_private(&dir);
}

#[test]
fn second_open_of_a_locked_directory_is_a_backend_error() {
    let (tmp, _store) = fresh_store();
    let err = SledStore::open(&tmp.path().join("data")).err();
    assert!(matches!(err, Some(StoreError::Backend(_))), "{err:?}");
}

#[test]
fn undecodable_records_are_reported_as_corrupt() {
    let (_tmp, store) = fresh_store();
    store.entries.insert("bad", &[9u8, b'{'][..]).unwrap();
    let err = store.get_entry("bad").unwrap_err();
    assert_eq!(
        err,
        StoreError::Corrupt("entry \"bad\": unknown format version 9".into())
    );
    assert!(matches!(
        store.list_entries(&EntryFilter::default(), Page::default()),
        Err(StoreError::Corrupt(_))
    ));
    store.authorities.insert("a", &b"\x01not json"[..]).unwrap();
    assert!(matches!(
        store.list_authorities(),
        Err(StoreError::Corrupt(_))
    ));
    store
        .bundles
        .insert("Not A Domain", &b"\x01{}"[..])
        .unwrap();
    assert!(matches!(store.list_bundles(), Err(StoreError::Corrupt(_))));
}
