//! Conformance cases for join tokens, agents, bundles and authorities.

use super::{agent, all_entries, entry, id, td};
use crate::datastore::{
    Authority, AuthorityKind, AuthorityState, AuthorityWrite, DataStore, EntryFilter, JoinToken,
    Page, StoreError,
};

fn token(value: &str, expires_at: i64) -> JoinToken {
    JoinToken {
        token: value.into(),
        expires_at,
    }
}

/// A token admits one agent; a second attest with it is NotFound.
pub(crate) fn join_token_single_use(store: &dyn DataStore) {
    store.create_join_token(token("t1", 100), None).unwrap();
    let err = store.create_join_token(token("t1", 200), None).unwrap_err();
    assert_eq!(err, StoreError::AlreadyExists("join token".into()));

    let node = agent("join_token/t1");
    let revision = store.revision().unwrap();
    store.attest_join_token("t1", 99, node.clone()).unwrap();
    assert_eq!(store.get_agent(&node.id).unwrap(), Some(node.clone()));
    assert_eq!(
        store.revision().unwrap(),
        revision + 1,
        "the agent write bumps the revision"
    );

    let mut other = agent("join_token/t1-again");
    other.created_at = 5;
    let err = store
        .attest_join_token("t1", 99, other.clone())
        .unwrap_err();
    assert_eq!(err, StoreError::NotFound("join token".into()));
    assert!(
        !err.to_string().contains("t1"),
        "errors never echo the token"
    );
    assert_eq!(store.get_agent(&other.id).unwrap(), None);
    assert_eq!(
        store
            .attest_join_token("never-issued", 0, other)
            .unwrap_err(),
        StoreError::NotFound("join token".into())
    );
}

/// An expired token is refused, writes no agent, and is gone afterwards.
pub(crate) fn join_token_expired(store: &dyn DataStore) {
    store.create_join_token(token("old", 100), None).unwrap();
    let node = agent("join_token/old");
    let revision = store.revision().unwrap();
    let err = store
        .attest_join_token("old", 100, node.clone())
        .unwrap_err();
    assert_eq!(err, StoreError::Expired("join token".into()));
    assert_eq!(store.get_agent(&node.id).unwrap(), None);
    assert_eq!(store.revision().unwrap(), revision);
    assert_eq!(
        store.attest_join_token("old", 0, node).unwrap_err(),
        StoreError::NotFound("join token".into()),
        "the expired token was deleted"
    );
}

/// The node-alias entry is created with its token, or neither is.
pub(crate) fn join_token_alias_is_atomic(store: &dyn DataStore) {
    let agent_id = "spiffe://example.org/sigil/agent/join_token/t1";
    let alias = entry(
        "spiffe://example.org/nodes/web",
        agent_id,
        &["join_token:t1"],
    );
    let revision = store.revision().unwrap();
    store
        .create_join_token(token("t1", 100), Some(alias.clone()))
        .unwrap();
    let by_parent = EntryFilter {
        by_parent_id: Some(id(agent_id)),
        ..Default::default()
    };
    let stored = all_entries(store, &by_parent, 0);
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].id.is_empty());
    assert_eq!(stored[0].spiffe_id, alias.spiffe_id);
    assert_eq!(stored[0].revision, store.revision().unwrap());
    assert!(stored[0].revision > revision);

    // A duplicate alias aborts the whole thing: the token is not stored either.
    let revision = store.revision().unwrap();
    let err = store
        .create_join_token(token("t2", 100), Some(alias))
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
    assert_eq!(
        store
            .attest_join_token("t2", 0, agent("join_token/t2"))
            .unwrap_err(),
        StoreError::NotFound("join token".into())
    );
    // A duplicate token aborts too: its new alias is not stored.
    let fresh_alias = entry(
        "spiffe://example.org/nodes/db",
        agent_id,
        &["join_token:t1"],
    );
    let err = store
        .create_join_token(token("t1", 100), Some(fresh_alias))
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
    assert_eq!(all_entries(store, &EntryFilter::default(), 0).len(), 1);
    assert_eq!(store.revision().unwrap(), revision);
}

/// Pruning deletes exactly the tokens with `expires_at <= now`.
pub(crate) fn join_token_prune(store: &dyn DataStore) {
    assert_eq!(store.prune_join_tokens(1_000).unwrap(), 0);
    for (t, exp) in [("a", 10), ("b", 20), ("c", 30)] {
        store.create_join_token(token(t, exp), None).unwrap();
    }
    assert_eq!(store.prune_join_tokens(20).unwrap(), 2);
    assert_eq!(store.prune_join_tokens(20).unwrap(), 0);
    let gone = store.attest_join_token("b", 0, agent("b")).unwrap_err();
    assert_eq!(gone, StoreError::NotFound("join token".into()));
    store.attest_join_token("c", 25, agent("c")).unwrap();
}

/// Put, get, replace, page through and delete agents.
pub(crate) fn agent_crud_and_pagination(store: &dyn DataStore) {
    let missing = agent("missing");
    assert_eq!(store.get_agent(&missing.id).unwrap(), None);
    let err = store.delete_agent(&missing.id).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("agent {:?} not found", missing.id.to_string())
    );

    let mut all: Vec<_> = (0..12).map(|i| agent(&format!("n{i:02}"))).collect();
    for a in &all {
        store.put_agent(a.clone()).unwrap();
    }
    all[3].banned = true;
    all[3].x509_svid_serial = "02cd".into();
    store.put_agent(all[3].clone()).unwrap();
    assert_eq!(store.get_agent(&all[3].id).unwrap(), Some(all[3].clone()));

    let mut page = Page::first(5);
    let mut listed = Vec::new();
    let mut pages = 0;
    loop {
        let (items, next) = store.list_agents(page.clone()).unwrap();
        pages += 1;
        listed.extend(items);
        match next {
            Some(t) => page = page.next(t),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    all.sort_by_key(|a| a.id.to_string());
    assert_eq!(listed, all, "every agent once, in SPIFFE ID order");

    assert_eq!(store.delete_agent(&all[0].id).unwrap(), all[0]);
    assert_eq!(store.get_agent(&all[0].id).unwrap(), None);
    assert!(matches!(
        store.delete_agent(&all[0].id),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list_agents(Page::default()).unwrap().0.len(), 11);
}

/// Set, replace, list, delete bundles; the bytes come back unchanged.
pub(crate) fn bundle_crud(store: &dyn DataStore) {
    let (a, b) = (td("a.org"), td("b.org"));
    assert_eq!(store.get_bundle(&a).unwrap(), None);
    assert!(store.list_bundles().unwrap().is_empty());
    store.set_bundle(&b, br#"{"keys":[]}"#.to_vec()).unwrap();
    store.set_bundle(&a, vec![]).unwrap();
    store
        .set_bundle(&a, br#"{"spiffe_sequence":2}"#.to_vec())
        .unwrap();
    assert_eq!(
        store.get_bundle(&a).unwrap(),
        Some(br#"{"spiffe_sequence":2}"#.to_vec())
    );
    assert_eq!(
        store.list_bundles().unwrap(),
        vec![
            (a.clone(), br#"{"spiffe_sequence":2}"#.to_vec()),
            (b.clone(), br#"{"keys":[]}"#.to_vec()),
        ]
    );
    store.delete_bundle(&a).unwrap();
    assert_eq!(store.get_bundle(&a).unwrap(), None);
    let err = store.delete_bundle(&a).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bundle for trust domain \"a.org\" not found"
    );
    assert_eq!(store.list_bundles().unwrap().len(), 1);
}

/// Authorities round trip byte for byte, `put` replaces by id, deleting a missing one is no
/// error, and `Debug` hides the key.
pub(crate) fn authority_round_trip(store: &dyn DataStore) {
    assert!(store.list_authorities().unwrap().is_empty());
    let key = vec![0x5e, 0xc7, 0xe7, 0x4b, 0x0a, 0x11];
    let mut ca = Authority {
        id: "ca-1".into(),
        kind: AuthorityKind::X509Ca,
        cert_der: vec![0x30, 0x82, 1, 2, 3],
        chain_der: vec![vec![0x30, 9], vec![0x30, 8, 7]],
        roots_der: vec![vec![0x30, 6]],
        public_key_der: vec![0x30, 0x59, 1],
        private_key_pkcs8: key.clone(),
        not_before: 1_700_000_000,
        not_after: 1_700_086_400,
        state: AuthorityState::Prepared,
    };
    let jwt = Authority {
        id: "jwt-1".into(),
        kind: AuthorityKind::JwtKey,
        cert_der: vec![],
        chain_der: vec![],
        roots_der: vec![],
        public_key_der: vec![0x30, 0x59, 2],
        private_key_pkcs8: vec![0x99; 40],
        not_before: 1_700_000_000,
        not_after: 1_700_086_400,
        state: AuthorityState::Active,
    };
    let put = |a: Vec<Authority>| {
        store
            .write_authorities(AuthorityWrite {
                put: a,
                ..Default::default()
            })
            .unwrap()
    };
    let revision = store.revision().unwrap();
    put(vec![ca.clone(), jwt.clone()]);
    assert_eq!(
        store.list_authorities().unwrap(),
        vec![ca.clone(), jwt.clone()]
    );
    assert_eq!(
        store.revision().unwrap(),
        revision,
        "authorities alone do not move the revision"
    );
    ca.state = AuthorityState::Active;
    put(vec![ca.clone()]);
    let listed = store.list_authorities().unwrap();
    assert_eq!(listed, vec![ca.clone(), jwt.clone()]);

    let debug = format!("{:?} {:#?}", listed[0], listed);
    assert!(debug.contains("<redacted>"));
    for needle in ["94, 199, 231, 75", "5e, c7", "5ec7e74b", "Xsfn", "153, 153"] {
        assert!(
            !debug.contains(needle),
            "Debug leaks key material ({needle}): {debug}"
        );
    }

    let delete = |ids: &[&str]| {
        store
            .write_authorities(AuthorityWrite {
                delete: ids.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            })
            .unwrap()
    };
    delete(&["jwt-1"]);
    assert_eq!(store.list_authorities().unwrap(), vec![ca.clone()]);
    delete(&["jwt-1"]);
    assert_eq!(store.list_authorities().unwrap(), vec![ca]);
}

/// Authorities and the bundle that publishes them are written together: the bundle is stored,
/// the revision moves once, and a replaced record and a deleted one go in the same step.
pub(crate) fn authorities_and_bundle_in_one_write(store: &dyn DataStore) {
    let own = td("example.org");
    let record = |id: &str, state| Authority {
        id: id.into(),
        kind: AuthorityKind::JwtKey,
        cert_der: vec![],
        chain_der: vec![],
        roots_der: vec![],
        public_key_der: vec![0x30, 1],
        private_key_pkcs8: vec![0x42; 8],
        not_before: 1,
        not_after: 2,
        state,
    };
    store
        .write_authorities(AuthorityWrite {
            put: vec![record("old", AuthorityState::Prepared)],
            ..Default::default()
        })
        .unwrap();
    let revision = store.revision().unwrap();
    let doc = br#"{"keys":[],"spiffe_sequence":7}"#.to_vec();
    store
        .write_authorities(AuthorityWrite {
            put: vec![record("new", AuthorityState::Prepared)],
            delete: vec!["old".into()],
            bundle: Some((own.clone(), doc.clone())),
        })
        .unwrap();
    assert_eq!(store.revision().unwrap(), revision + 1);
    assert_eq!(store.get_bundle(&own).unwrap(), Some(doc));
    assert_eq!(
        store.list_authorities().unwrap(),
        vec![record("new", AuthorityState::Prepared)]
    );
    // An empty write changes nothing.
    store.write_authorities(AuthorityWrite::default()).unwrap();
    assert_eq!(store.revision().unwrap(), revision + 1);
}
