//! The in-memory view of registration entries that the hot paths read: authorization of
//! signing requests and the sync stream. The store is the source of truth; every write goes to
//! the store first and is then applied here, and a `watch` channel announces the new revision.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use sigil_core::x509::unix_secs;
use sigil_core::{SelectorSet, SpiffeId};
use tokio::sync::watch;

use crate::datastore::Entry;

/// The entries an agent may obtain SVIDs for, keyed by entry ID.
pub type Authorized = Arc<HashMap<String, Arc<Entry>>>;

#[derive(Default)]
struct Index {
    entries: HashMap<String, Arc<Entry>>,
    by_parent: HashMap<SpiffeId, HashSet<String>>,
}

/// One agent's authorized set, with what it was computed for.
struct Cached {
    revision: u64,
    computed_at: i64,
    valid_until: i64,
    set: Authorized,
}

/// Entries in memory plus a revision broadcast.
pub struct Registry {
    index: RwLock<Index>,
    revision: watch::Sender<u64>,
    server_id: SpiffeId,
    authorized_cache: RwLock<HashMap<SpiffeId, Cached>>,
    closed: watch::Sender<bool>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("revision", &*self.revision.borrow())
            .finish()
    }
}

impl Registry {
    /// Builds the view from all stored entries at `revision`.
    pub fn new(entries: Vec<Entry>, revision: u64, server_id: SpiffeId) -> Self {
        let mut index = Index::default();
        for e in entries {
            insert(&mut index, Arc::new(e));
        }
        let (tx, _) = watch::channel(revision);
        Self {
            index: RwLock::new(index),
            revision: tx,
            server_id,
            authorized_cache: RwLock::new(HashMap::new()),
            closed: watch::channel(false).0,
        }
    }

    /// Ends every sync stream: the server is shutting down, and graceful shutdown waits for
    /// open streams, which would otherwise never finish.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once [`Registry::close`] was called.
    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Subscribes to revision changes (entries, agents, bundles).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// The latest applied revision.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Applies a created or updated entry and announces `revision`.
    pub fn upsert(&self, entry: Entry, revision: u64) {
        {
            let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
            remove(&mut idx, &entry.id);
            insert(&mut idx, Arc::new(entry));
        }
        self.bump(revision);
    }

    /// Applies a deletion and announces `revision`.
    pub fn remove(&self, id: &str, revision: u64) {
        {
            let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
            remove(&mut idx, id);
        }
        self.bump(revision);
    }

    /// Announces a change that is not an entry (agent, bundle).
    pub fn bump(&self, revision: u64) {
        self.revision.send_if_modified(|r| {
            if revision > *r {
                *r = revision;
                true
            } else {
                false
            }
        });
    }

    /// One entry by ID.
    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        idx.entries.get(id).cloned()
    }

    /// The entries `agent` may obtain now: those whose parent is the agent, or a node alias (an
    /// entry parented by the server whose selectors the agent's include), and transitively
    /// entries parented by any of those. Expired entries (`expires_at` passed) neither count
    /// nor authorize their children. Cached per agent until the next revision or the next
    /// expiry among the result.
    pub fn authorized(&self, agent: &SpiffeId, agent_selectors: &SelectorSet) -> Authorized {
        self.authorized_at(agent, agent_selectors, unix_secs(SystemTime::now()))
    }

    /// [`Registry::authorized`] at `now` (Unix seconds).
    pub fn authorized_at(
        &self,
        agent: &SpiffeId,
        agent_selectors: &SelectorSet,
        now: i64,
    ) -> Authorized {
        let rev = self.revision();
        if let Some(c) = self
            .authorized_cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            && c.revision == rev
            && now >= c.computed_at
            && now < c.valid_until
        {
            return Arc::clone(&c.set);
        }
        let walk = self.walk(agent, agent_selectors, now, u64::MAX);
        let set = Arc::new(walk.entries);
        let mut cache = self
            .authorized_cache
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(
            agent.clone(),
            Cached {
                revision: rev,
                computed_at: now,
                valid_until: walk.valid_until,
                set: Arc::clone(&set),
            },
        );
        set
    }

    /// The IDs of the entries `agent` held at store revision `since`, as far as they still
    /// exist unchanged and unexpired: those authorized through a chain of entries that are all
    /// at revision `since` or older. A chain that has not changed since then existed then, so
    /// the agent was sent every entry in it; an entry authorized through a newer link (a new
    /// node alias, a new parent) was not, however old the entry itself is. A resuming sync
    /// stream may send only these by ID.
    ///
    /// The agent's own selectors are taken as they are now: they change only when it attests
    /// again, and a freshly attested agent starts its sync from revision 0.
    pub fn held_at(
        &self,
        agent: &SpiffeId,
        agent_selectors: &SelectorSet,
        since: u64,
        now: i64,
    ) -> HashSet<String> {
        self.walk(agent, agent_selectors, now, since)
            .entries
            .into_keys()
            .collect()
    }

    /// Walks the authorization graph from `agent`, through entries that are unexpired at `now`
    /// and at revision `max_revision` or older.
    fn walk(
        &self,
        agent: &SpiffeId,
        agent_selectors: &SelectorSet,
        now: i64,
        max_revision: u64,
    ) -> Walk {
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        let usable = |e: &Entry| !e.is_expired(now) && e.revision <= max_revision;
        let mut valid_until = i64::MAX;
        let mut frontier: Vec<SpiffeId> = vec![agent.clone()];
        if let Some(ids) = idx.by_parent.get(&self.server_id) {
            for id in ids {
                if let Some(e) = idx.entries.get(id)
                    && usable(e)
                    && agent_selectors.matches_all(&e.selectors)
                {
                    if e.expires_at > 0 {
                        valid_until = valid_until.min(e.expires_at);
                    }
                    frontier.push(e.spiffe_id.clone());
                }
            }
        }
        let mut seen: HashSet<SpiffeId> = frontier.iter().cloned().collect();
        let mut out = HashMap::new();
        while let Some(parent) = frontier.pop() {
            let Some(children) = idx.by_parent.get(&parent) else {
                continue;
            };
            for id in children {
                let Some(e) = idx.entries.get(id) else {
                    continue;
                };
                if !usable(e) {
                    continue;
                }
                if e.expires_at > 0 {
                    valid_until = valid_until.min(e.expires_at);
                }
                out.insert(id.clone(), Arc::clone(e));
                if seen.insert(e.spiffe_id.clone()) {
                    frontier.push(e.spiffe_id.clone());
                }
            }
        }
        Walk {
            entries: out,
            valid_until,
        }
    }
}

/// What one walk of the authorization graph found.
struct Walk {
    entries: HashMap<String, Arc<Entry>>,
    /// The earliest expiry among the entries it went through: the result holds until then.
    valid_until: i64,
}

fn insert(idx: &mut Index, e: Arc<Entry>) {
    idx.by_parent
        .entry(e.parent_id.clone())
        .or_default()
        .insert(e.id.clone());
    idx.entries.insert(e.id.clone(), e);
}

fn remove(idx: &mut Index, id: &str) {
    if let Some(old) = idx.entries.remove(id)
        && let Some(set) = idx.by_parent.get_mut(&old.parent_id)
    {
        set.remove(id);
        if set.is_empty() {
            idx.by_parent.remove(&old.parent_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_core::Selector;

    fn entry(id: &str, spiffe: &str, parent: &str, sels: &[&str]) -> Entry {
        Entry {
            id: id.into(),
            spiffe_id: SpiffeId::parse(spiffe).unwrap(),
            parent_id: SpiffeId::parse(parent).unwrap(),
            selectors: sels.iter().map(|s| Selector::parse(s).unwrap()).collect(),
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            dns_names: vec![],
            federates_with: vec![],
            admin: false,
            downstream: false,
            hint: String::new(),
            expires_at: 0,
            created_at: 0,
            revision: 1,
        }
    }

    #[test]
    fn authorization_follows_parents_and_aliases() {
        let server = "spiffe://td/sigil/server";
        let agent = SpiffeId::parse("spiffe://td/sigil/agent/join_token/t1").unwrap();
        let entries = vec![
            entry(
                "direct",
                "spiffe://td/a",
                agent.to_string().as_str(),
                &["unix:uid:1"],
            ),
            entry(
                "alias",
                "spiffe://td/node/x",
                agent.to_string().as_str(),
                &[],
            ),
            entry(
                "via-alias",
                "spiffe://td/b",
                "spiffe://td/node/x",
                &["unix:uid:2"],
            ),
            entry(
                "sel-alias",
                "spiffe://td/cluster",
                server,
                &["k8s:cluster:c1"],
            ),
            entry(
                "via-sel",
                "spiffe://td/c",
                "spiffe://td/cluster",
                &["unix:uid:3"],
            ),
            entry(
                "other",
                "spiffe://td/d",
                "spiffe://td/sigil/agent/join_token/t2",
                &["unix:uid:4"],
            ),
        ];
        let reg = Registry::new(entries, 1, SpiffeId::parse(server).unwrap());
        let none = SelectorSet::new();
        let got = reg.authorized(&agent, &none);
        let mut ids: Vec<_> = got.keys().cloned().collect();
        ids.sort();
        assert_eq!(ids, ["alias", "direct", "via-alias"]);

        let sels: SelectorSet = [Selector::parse("k8s:cluster:c1").unwrap()]
            .into_iter()
            .collect();
        let got = reg.authorized(
            &SpiffeId::parse("spiffe://td/sigil/agent/x/y").unwrap(),
            &sels,
        );
        let mut ids: Vec<_> = got.keys().cloned().collect();
        ids.sort();
        assert_eq!(ids, ["via-sel"]);

        reg.remove("direct", 2);
        assert!(!reg.authorized(&agent, &none).contains_key("direct"));
    }

    #[test]
    fn expired_entries_authorize_nothing_and_the_cache_notices_expiry() {
        let server = "spiffe://td/sigil/server";
        let agent = SpiffeId::parse("spiffe://td/sigil/agent/join_token/t1").unwrap();
        let a = agent.to_string();
        let mut parent = entry("parent", "spiffe://td/x", &a, &["unix:uid:1"]);
        parent.expires_at = 1000;
        let mut later = entry("later", "spiffe://td/l", &a, &["unix:uid:1"]);
        later.expires_at = 2000;
        let entries = vec![
            parent,
            entry("child", "spiffe://td/c", "spiffe://td/x", &["unix:uid:2"]),
            later,
        ];
        let reg = Registry::new(entries, 1, SpiffeId::parse(server).unwrap());
        let none = SelectorSet::new();
        let ids = |now| {
            let mut v: Vec<_> = reg
                .authorized_at(&agent, &none, now)
                .keys()
                .cloned()
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids(999), ["child", "later", "parent"]);
        // Same revision, later time: the cached set is not reused past an expiry.
        assert_eq!(ids(1000), ["later"]);
        assert_eq!(ids(1999), ["later"]);
        assert!(ids(2000).is_empty());
    }

    #[test]
    fn held_at_counts_only_chains_that_existed_then() {
        let server = "spiffe://td/sigil/server";
        let agent = SpiffeId::parse("spiffe://td/sigil/agent/join_token/t1").unwrap();
        let a = agent.to_string();
        let mut old = entry("old", "spiffe://td/o", &a, &["unix:uid:1"]);
        old.revision = 2;
        // C (revision 3) hangs under X, which the agent only got at revision 9 through P.
        let mut c = entry("c", "spiffe://td/c", "spiffe://td/x", &["unix:uid:2"]);
        c.revision = 3;
        let mut p = entry("p", "spiffe://td/x", &a, &["unix:uid:1"]);
        p.revision = 9;
        // D (revision 4) hangs under an alias matched by the agent's selectors (revision 1).
        let mut alias = entry("alias", "spiffe://td/cluster", server, &["k8s:cluster:c1"]);
        alias.revision = 1;
        let mut d = entry("d", "spiffe://td/d", "spiffe://td/cluster", &["unix:uid:3"]);
        d.revision = 4;
        let reg = Registry::new(
            vec![old, c, p, alias, d],
            9,
            SpiffeId::parse(server).unwrap(),
        );
        let sels: SelectorSet = [Selector::parse("k8s:cluster:c1").unwrap()]
            .into_iter()
            .collect();
        let held = |since| {
            let mut v: Vec<_> = reg.held_at(&agent, &sels, since, 0).into_iter().collect();
            v.sort();
            v
        };
        assert_eq!(held(5), ["d", "old"]);
        assert_eq!(held(4), ["d", "old"]);
        assert_eq!(held(3), ["old"]);
        assert_eq!(held(2), ["old"]);
        assert_eq!(held(9), ["c", "d", "old", "p"]);
        assert_eq!(reg.authorized_at(&agent, &sels, 0).len(), 4);
    }
}
