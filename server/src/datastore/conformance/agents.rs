//! Conformance cases for the agent lifecycle rules: check-and-set updates, read-only token
//! lookup, bans surviving re-attestation, and pruning of long-expired agents.

use super::agent;
use crate::datastore::{AgentUpdate, DataStore, JoinToken, StoreError};

fn token(value: &str, expires_at: i64) -> JoinToken {
    JoinToken {
        token: value.into(),
        expires_at,
    }
}

/// An update sees the stored record, writes what the decision returns (keeping the ID), and
/// neither recreates a missing record nor writes anything when the decision declines.
pub(crate) fn agent_update_is_check_and_set(store: &dyn DataStore) {
    let a = agent("n1");
    let revision = store.revision().unwrap();
    let err = store
        .update_agent(&a.id, &|cur| Some(cur.clone()))
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(store.get_agent(&a.id).unwrap(), None, "never recreated");
    assert_eq!(store.revision().unwrap(), revision);

    store.put_agent(a.clone()).unwrap();
    let revision = store.revision().unwrap();
    let declined = store.update_agent(&a.id, &|_| None).unwrap();
    assert_eq!(declined, AgentUpdate::Declined(a.clone()));
    assert_eq!(
        store.revision().unwrap(),
        revision,
        "a decline writes nothing"
    );

    let other = agent("elsewhere");
    let written = store
        .update_agent(&a.id, &|cur| {
            let mut next = cur.clone();
            next.banned = true;
            // A decision cannot move the record to another key.
            next.id = other.id.clone();
            Some(next)
        })
        .unwrap();
    let mut want = a.clone();
    want.banned = true;
    assert_eq!(written, AgentUpdate::Written(want.clone()));
    assert_eq!(store.get_agent(&a.id).unwrap(), Some(want));
    assert_eq!(store.get_agent(&other.id).unwrap(), None);
    assert_eq!(store.revision().unwrap(), revision + 1);

    // Read-modify-write from several threads at once loses no update.
    const THREADS: i64 = 4;
    const EACH: i64 = 25;
    let start = store
        .get_agent(&a.id)
        .unwrap()
        .unwrap()
        .x509_svid_expires_at;
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..EACH {
                    store
                        .update_agent(&a.id, &|cur| {
                            let mut next = cur.clone();
                            next.x509_svid_expires_at += 1;
                            Some(next)
                        })
                        .unwrap();
                }
            });
        }
    });
    let end = store
        .get_agent(&a.id)
        .unwrap()
        .unwrap()
        .x509_svid_expires_at;
    assert_eq!(end, start + THREADS * EACH);
}

/// Looking a token up neither consumes it nor hides an expired one (the caller decides).
pub(crate) fn join_token_get_is_read_only(store: &dyn DataStore) {
    assert_eq!(store.get_join_token("nope").unwrap(), None);
    store.create_join_token(token("t1", 100), None).unwrap();
    let revision = store.revision().unwrap();
    for _ in 0..2 {
        assert_eq!(store.get_join_token("t1").unwrap(), Some(token("t1", 100)));
    }
    assert_eq!(store.revision().unwrap(), revision);
    store
        .attest_join_token("t1", 99, agent("join_token/t1"))
        .unwrap();
    assert_eq!(store.get_join_token("t1").unwrap(), None, "consumed");
}

/// A banned agent cannot re-attest with a new token of the same value; the token survives.
pub(crate) fn banned_agent_cannot_reattest(store: &dyn DataStore) {
    let mut a = agent("join_token/t1");
    a.banned = true;
    store.put_agent(a.clone()).unwrap();
    store.create_join_token(token("t1", 100), None).unwrap();
    let revision = store.revision().unwrap();
    let mut fresh = a.clone();
    fresh.banned = false;
    fresh.x509_svid_serial = "ffff".into();
    let err = store
        .attest_join_token("t1", 50, fresh.clone())
        .unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "{err}");
    assert!(!err.to_string().contains("t1"), "no token in {err}");
    assert_eq!(store.get_agent(&a.id).unwrap(), Some(a.clone()));
    assert_eq!(store.revision().unwrap(), revision);
    assert_eq!(store.get_join_token("t1").unwrap(), Some(token("t1", 100)));

    // Eviction (deleting the record) is what lifts a ban.
    store.delete_agent(&a.id).unwrap();
    store.attest_join_token("t1", 50, fresh.clone()).unwrap();
    assert_eq!(store.get_agent(&a.id).unwrap(), Some(fresh));
}

/// Pruning removes exactly the unbanned agents whose SVID expired at or before the cutoff.
pub(crate) fn agent_prune(store: &dyn DataStore) {
    assert!(store.prune_agents(i64::MAX).unwrap().is_empty());
    let mut old = agent("old");
    old.x509_svid_expires_at = 100;
    let mut edge = agent("edge");
    edge.x509_svid_expires_at = 200;
    let mut fresh = agent("fresh");
    fresh.x509_svid_expires_at = 201;
    let mut banned = agent("banned");
    banned.x509_svid_expires_at = 50;
    banned.banned = true;
    for a in [&old, &edge, &fresh, &banned] {
        store.put_agent(a.clone()).unwrap();
    }
    let revision = store.revision().unwrap();
    let mut removed = store.prune_agents(200).unwrap();
    removed.sort_by_key(ToString::to_string);
    assert_eq!(removed, vec![edge.id.clone(), old.id.clone()]);
    assert_eq!(store.revision().unwrap(), revision + 2);
    for gone in [&old, &edge] {
        assert_eq!(store.get_agent(&gone.id).unwrap(), None);
    }
    for kept in [&fresh, &banned] {
        assert_eq!(store.get_agent(&kept.id).unwrap().as_ref(), Some(kept));
    }
    assert!(store.prune_agents(200).unwrap().is_empty());
}
