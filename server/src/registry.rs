//! The in-memory view of registration entries that the hot paths read: authorization of
//! signing requests and the sync stream. The store is the source of truth; every write goes to
//! the store first and is then applied here, and a `watch` channel announces the new revision.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

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

/// Entries in memory plus a revision broadcast.
pub struct Registry {
    index: RwLock<Index>,
    revision: watch::Sender<u64>,
    server_id: SpiffeId,
    authorized_cache: RwLock<HashMap<SpiffeId, (u64, Authorized)>>,
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

    /// The entries `agent` may obtain: those whose parent is the agent, or a node alias (an
    /// entry parented by the server whose selectors the agent's include), and transitively
    /// entries parented by any of those. Cached per agent until the next revision.
    pub fn authorized(&self, agent: &SpiffeId, agent_selectors: &SelectorSet) -> Authorized {
        let rev = self.revision();
        if let Some((r, set)) = self
            .authorized_cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            && *r == rev
        {
            return Arc::clone(set);
        }
        let set = Arc::new(self.compute_authorized(agent, agent_selectors));
        let mut cache = self
            .authorized_cache
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(agent.clone(), (rev, Arc::clone(&set)));
        set
    }

    fn compute_authorized(
        &self,
        agent: &SpiffeId,
        agent_selectors: &SelectorSet,
    ) -> HashMap<String, Arc<Entry>> {
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        let mut frontier: Vec<SpiffeId> = vec![agent.clone()];
        if let Some(ids) = idx.by_parent.get(&self.server_id) {
            for id in ids {
                if let Some(e) = idx.entries.get(id)
                    && agent_selectors.matches_all(&e.selectors)
                {
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
                out.insert(id.clone(), Arc::clone(e));
                if seen.insert(e.spiffe_id.clone()) {
                    frontier.push(e.spiffe_id.clone());
                }
            }
        }
        out
    }
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
}
