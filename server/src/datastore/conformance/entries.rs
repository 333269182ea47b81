//! Conformance cases for registration entries and the revision counter.

use std::collections::BTreeSet;

use super::{all_entries, entry, id, sel};
use crate::datastore::{DataStore, EntryFilter, Page, StoreError};

/// Create, get, list, update and delete one entry, checking every field survives.
pub(crate) fn entry_crud(store: &dyn DataStore) {
    let mut new = entry(
        "spiffe://example.org/web",
        "spiffe://example.org/agent",
        &["unix:uid:1000", "k8s:ns:web", "unix:uid:1000"],
    );
    let created = store.create_entry(new.clone()).unwrap();
    assert!(!created.id.is_empty(), "an id is assigned");
    assert_eq!(
        created.selectors,
        vec![sel("k8s:ns:web"), sel("unix:uid:1000")]
    );
    assert_eq!(created.revision, store.revision().unwrap());
    new.id = created.id.clone();
    new.selectors = created.selectors.clone();
    new.revision = created.revision;
    assert_eq!(created, new, "every other field is stored as given");

    assert_eq!(store.get_entry(&created.id).unwrap(), Some(created.clone()));
    let (listed, next) = store
        .list_entries(&EntryFilter::default(), Page::default())
        .unwrap();
    assert_eq!((listed, next), (vec![created.clone()], None));

    // A caller-chosen id is kept.
    let mut named = entry(
        "spiffe://example.org/db",
        "spiffe://example.org/agent",
        &["unix:uid:5"],
    );
    named.id = "my-id".into();
    assert_eq!(store.create_entry(named).unwrap().id, "my-id");

    let mut change = created.clone();
    change.dns_names = vec!["a.example.org".into(), "b.example.org".into()];
    change.selectors = vec![sel("unix:uid:1000")];
    change.created_at = 42; // ignored: creation time is kept
    let updated = store.update_entry(change.clone()).unwrap();
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.revision > created.revision);
    assert_eq!(updated.revision, store.revision().unwrap());
    assert_eq!(updated.dns_names, change.dns_names);
    assert_eq!(store.get_entry(&created.id).unwrap(), Some(updated.clone()));
    // The old selector set is free again, the new one is taken.
    let again = entry(
        "spiffe://example.org/web",
        "spiffe://example.org/agent",
        &["unix:uid:1000"],
    );
    assert!(matches!(
        store.create_entry(again),
        Err(StoreError::AlreadyExists(_))
    ));

    assert_eq!(store.delete_entry(&created.id).unwrap(), updated);
    assert_eq!(store.get_entry(&created.id).unwrap(), None);
    let (listed, _) = store
        .list_entries(&EntryFilter::default(), Page::default())
        .unwrap();
    assert_eq!(
        listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["my-id"]
    );
    // Deleting frees the triple for a new entry.
    let reuse = entry(
        "spiffe://example.org/web",
        "spiffe://example.org/agent",
        &["unix:uid:1000"],
    );
    store.create_entry(reuse).unwrap();
}

/// Same (SPIFFE ID, parent, selector set) or same id: AlreadyExists, and nothing is written.
pub(crate) fn entry_duplicates_rejected(store: &dyn DataStore) {
    let first = store
        .create_entry(entry(
            "spiffe://example.org/web",
            "spiffe://example.org/agent",
            &["a:1", "b:2"],
        ))
        .unwrap();
    let revision = store.revision().unwrap();

    let dup = entry(
        "spiffe://example.org/web",
        "spiffe://example.org/agent",
        &["b:2", "a:1", "a:1"],
    );
    let err = store.create_entry(dup).unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists(m) if m.contains(&first.id)),
        "{err}"
    );

    let mut same_id = entry(
        "spiffe://example.org/other",
        "spiffe://example.org/agent",
        &["c:3"],
    );
    same_id.id = first.id.clone();
    let err = store.create_entry(same_id).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("entry {:?} already exists", first.id)
    );

    assert_eq!(
        store.revision().unwrap(),
        revision,
        "failed writes do not bump the revision"
    );
    assert_eq!(
        all_entries(store, &EntryFilter::default(), 0),
        vec![first.clone()]
    );

    // Differing in any part of the triple is fine.
    let other_parent = entry(
        "spiffe://example.org/web",
        "spiffe://example.org/agent2",
        &["a:1", "b:2"],
    );
    let second = store.create_entry(other_parent).unwrap();
    store
        .create_entry(entry(
            "spiffe://example.org/web",
            "spiffe://example.org/agent",
            &["a:1"],
        ))
        .unwrap();

    // Updating into an existing triple fails and leaves the entry unchanged.
    let revision = store.revision().unwrap();
    let mut clash = second.clone();
    clash.parent_id = id("spiffe://example.org/agent");
    assert!(matches!(
        store.update_entry(clash),
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(store.get_entry(&second.id).unwrap(), Some(second));
    assert_eq!(store.revision().unwrap(), revision);
    assert_eq!(all_entries(store, &EntryFilter::default(), 0).len(), 3);
}

/// Update and delete of an id that does not exist are NotFound and change nothing.
pub(crate) fn entry_unknown_id_not_found(store: &dyn DataStore) {
    let revision = store.revision().unwrap();
    let mut missing = entry(
        "spiffe://example.org/web",
        "spiffe://example.org/agent",
        &["a:1"],
    );
    missing.id = "abc".into();
    let err = store.update_entry(missing).unwrap_err();
    assert_eq!(err, StoreError::NotFound("entry \"abc\"".into()));
    assert_eq!(err.to_string(), "entry \"abc\" not found");
    assert_eq!(
        store.delete_entry("abc").unwrap_err(),
        StoreError::NotFound("entry \"abc\"".into())
    );
    assert_eq!(store.get_entry("abc").unwrap(), None);
    assert_eq!(store.revision().unwrap(), revision);
    assert!(all_entries(store, &EntryFilter::default(), 0).is_empty());
}

/// Filters by SPIFFE ID, by parent ID, by a selector subset, and combined.
pub(crate) fn entry_list_filters(store: &dyn DataStore) {
    let a = "spiffe://example.org/agent-a";
    let b = "spiffe://example.org/agent-b";
    let web_a = store
        .create_entry(entry("spiffe://example.org/web", a, &["u:1", "n:web"]))
        .unwrap();
    let web_b = store
        .create_entry(entry("spiffe://example.org/web", b, &["u:1"]))
        .unwrap();
    let db_a = store
        .create_entry(entry("spiffe://example.org/db", a, &["u:2", "n:web"]))
        .unwrap();
    let ids = |f: EntryFilter| -> BTreeSet<String> {
        all_entries(store, &f, 0)
            .into_iter()
            .map(|e| e.id)
            .collect()
    };
    let set = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|s| s.to_string()).collect() };

    assert_eq!(
        ids(EntryFilter::default()),
        set(&[&web_a.id, &web_b.id, &db_a.id])
    );
    let by_spiffe = EntryFilter {
        by_spiffe_id: Some(id("spiffe://example.org/web")),
        ..Default::default()
    };
    assert_eq!(ids(by_spiffe.clone()), set(&[&web_a.id, &web_b.id]));
    let by_parent = EntryFilter {
        by_parent_id: Some(id(a)),
        ..Default::default()
    };
    assert_eq!(ids(by_parent.clone()), set(&[&web_a.id, &db_a.id]));
    let by_sel = |s: &[&str]| EntryFilter {
        by_selectors: s.iter().map(|s| sel(s)).collect(),
        ..Default::default()
    };
    assert_eq!(ids(by_sel(&["n:web"])), set(&[&web_a.id, &db_a.id]));
    assert_eq!(ids(by_sel(&["n:web", "u:1"])), set(&[&web_a.id]));
    assert_eq!(ids(by_sel(&["u:1", "u:2"])), set(&[]));
    let both = EntryFilter {
        by_parent_id: Some(id(b)),
        ..by_spiffe
    };
    assert_eq!(ids(both), set(&[&web_b.id]));
    let all_three = EntryFilter {
        by_selectors: vec![sel("u:2")],
        ..by_parent
    };
    assert_eq!(ids(all_three), set(&[&db_a.id]));
    let nobody = EntryFilter {
        by_parent_id: Some(id("spiffe://example.org/nobody")),
        ..Default::default()
    };
    assert_eq!(ids(nobody), set(&[]));
}

/// Paging through 23 entries, unfiltered and through an index, returns each exactly once.
pub(crate) fn entry_pagination(store: &dyn DataStore) {
    let mut want = BTreeSet::new();
    for i in 0..23 {
        let parent = if i % 2 == 0 {
            "spiffe://example.org/even"
        } else {
            "spiffe://example.org/odd"
        };
        let e = entry(&format!("spiffe://example.org/w{i}"), parent, &["u:1"]);
        want.insert(store.create_entry(e).unwrap().id);
    }
    for size in [1, 5, 7, 22, 23, 24, 0] {
        let got: Vec<String> = all_entries(store, &EntryFilter::default(), size)
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(got.len(), 23, "no duplicates at page size {size}");
        assert_eq!(
            got.iter().cloned().collect::<BTreeSet<_>>(),
            want,
            "size {size}"
        );
    }
    let (first, next) = store
        .list_entries(&EntryFilter::default(), Page::first(5))
        .unwrap();
    assert_eq!(first.len(), 5);
    assert!(next.is_some());

    let even = EntryFilter {
        by_parent_id: Some(id("spiffe://example.org/even")),
        ..Default::default()
    };
    let got = all_entries(store, &even, 5);
    assert_eq!(got.len(), 12);
    assert_eq!(got.iter().map(|e| &e.id).collect::<BTreeSet<_>>().len(), 12);
    let with_sel = EntryFilter {
        by_selectors: vec![sel("u:1")],
        ..Default::default()
    };
    assert_eq!(all_entries(store, &with_sel, 4).len(), 23);
}

/// Every entry, agent and bundle write bumps the revision by one; failed writes do not.
pub(crate) fn revision_tracks_every_write(store: &dyn DataStore) {
    let mut last = store.revision().unwrap();
    let mut step = |what: &str| {
        let now = store.revision().unwrap();
        assert_eq!(now, last + 1, "{what} bumps the revision by one");
        last = now;
        now
    };
    let e = store
        .create_entry(entry(
            "spiffe://example.org/w",
            "spiffe://example.org/a",
            &["u:1"],
        ))
        .unwrap();
    assert_eq!(e.revision, step("create_entry"));
    let u = store.update_entry(e.clone()).unwrap();
    assert_eq!(u.revision, step("update_entry"));
    let td = super::td("other.org");
    store.set_bundle(&td, b"{}".to_vec()).unwrap();
    step("set_bundle");
    store.put_agent(super::agent("n1")).unwrap();
    step("put_agent");
    store.delete_agent(&super::agent("n1").id).unwrap();
    step("delete_agent");
    store.delete_bundle(&td).unwrap();
    step("delete_bundle");
    store.delete_entry(&e.id).unwrap();
    step("delete_entry");

    assert!(store.delete_entry(&e.id).is_err());
    assert!(store.delete_bundle(&td).is_err());
    assert_eq!(
        store.revision().unwrap(),
        last,
        "failed writes leave the revision alone"
    );
}

/// Writers on several threads each get a distinct revision and none is lost.
pub(crate) fn concurrent_writes_get_distinct_revisions(store: &dyn DataStore) {
    let start = store.revision().unwrap();
    let revisions: Vec<u64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                scope.spawn(move || {
                    (0..10)
                        .map(|i| {
                            let spiffe = format!("spiffe://example.org/t{t}/w{i}");
                            let e = entry(&spiffe, "spiffe://example.org/a", &["u:1"]);
                            store.create_entry(e).unwrap().revision
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let distinct: BTreeSet<u64> = revisions.iter().copied().collect();
    assert_eq!(distinct.len(), 40);
    assert_eq!(distinct, (start + 1..=start + 40).collect());
    assert_eq!(store.revision().unwrap(), start + 40);
}
