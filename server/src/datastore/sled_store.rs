//! The embedded default [`DataStore`]: sled 0.34, one tree per kind of record.
//!
//! Trees: `entries` (id → entry), `entries_by_parent` and `entries_by_spiffe_id`
//! (`<spiffe id>\0<entry id>` → empty), `entries_unique` (JSON of the (SPIFFE ID, parent ID,
//! sorted selectors) triple → entry id), `agents` (SPIFFE ID → record), `join_tokens` (token →
//! record), `bundles` (trust domain name → document), `authorities` (id → record) and `meta`
//! (the revision counter). Values are encoded as described in the [module docs](super).
//!
//! Every change that touches more than one tree is one sled transaction, and every successful
//! write ends with `Db::flush` (an fsync), so an acknowledged write survives a crash.
//!
//! Reads that scan (lists) are not transactional: sled cannot scan inside a transaction. A list
//! racing a write may see the entry index and the entry record at slightly different moments;
//! every listed entry is re-checked against the filter, so the result is never wrong, at worst
//! one write stale.

mod codec;
mod entries;
mod permissions;
#[cfg(test)]
mod tests;

use std::path::Path;

use sigil_core::{SpiffeId, TrustDomain};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{IVec, Transactional, Tree};

use self::codec::{backend, decode, decode_bundle, encode, encode_bundle, key_str};
use self::entries::EntryTrees;
use self::permissions::{create_private_dir, restrict_permissions};
use super::{
    AgentRecord, AgentUpdate, Authority, AuthorityWrite, DataStore, Entry, EntryFilter, JoinToken,
    Page, Result, StoreError,
};

/// Result type of the closures run inside a sled transaction; `Abort` carries our error.
type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

/// Key of the store-wide revision counter in the `meta` tree (big-endian u64).
const REVISION_KEY: &[u8] = b"revision";

/// A [`DataStore`] in a local sled database directory. Cheap to share behind an `Arc`; sled does
/// its own locking, and a second process opening the same directory gets a
/// [`StoreError::Backend`] error.
pub struct SledStore {
    db: sled::Db,
    entries: Tree,
    entries_by_parent: Tree,
    entries_by_spiffe_id: Tree,
    entries_unique: Tree,
    agents: Tree,
    join_tokens: Tree,
    bundles: Tree,
    authorities: Tree,
    meta: Tree,
}

impl SledStore {
    /// Opens (creating if needed) the database in `dir`.
    ///
    /// The directory will hold the CA private key, so it is created (or forced) to mode 0700 and,
    /// once sled has created its files, every file in it is set to 0600 and every subdirectory
    /// to 0700. The directory mode is what really protects files sled creates later (snapshots,
    /// blobs) with the process umask; the file modes keep the key private if the directory is
    /// ever copied or loosened.
    pub fn open(dir: &Path) -> Result<SledStore> {
        create_private_dir(dir)?;
        let db = sled::Config::new().path(dir).open().map_err(backend)?;
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let store = SledStore {
            entries: tree("entries")?,
            entries_by_parent: tree("entries_by_parent")?,
            entries_by_spiffe_id: tree("entries_by_spiffe_id")?,
            entries_unique: tree("entries_unique")?,
            agents: tree("agents")?,
            join_tokens: tree("join_tokens")?,
            bundles: tree("bundles")?,
            authorities: tree("authorities")?,
            meta: tree("meta")?,
            db,
        };
        store.flush()?;
        restrict_permissions(dir)?;
        Ok(store)
    }

    /// Makes everything committed so far durable; called after every successful write.
    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    /// Turns a transaction's outcome into ours and, when it committed, flushes it to disk.
    fn finish<T>(
        &self,
        outcome: std::result::Result<T, TransactionError<StoreError>>,
    ) -> Result<T> {
        let value = outcome.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => backend(e),
        })?;
        self.flush()?;
        Ok(value)
    }

    /// The entry trees plus `meta`, as one transactional unit, for entry writes.
    fn entry_trees(&self) -> (&Tree, &Tree, &Tree, &Tree, &Tree) {
        (
            &self.entries,
            &self.entries_by_parent,
            &self.entries_by_spiffe_id,
            &self.entries_unique,
            &self.meta,
        )
    }
}

/// Increments the revision counter inside a transaction and returns the new value.
fn bump_revision(meta: &TransactionalTree) -> TxResult<u64> {
    let current = match meta.get(REVISION_KEY)? {
        Some(v) => abort_on(codec::decode_u64("revision counter", &v))?,
        None => 0,
    };
    let next = current.checked_add(1).ok_or_else(|| {
        ConflictableTransactionError::Abort(StoreError::Corrupt("revision counter overflow".into()))
    })?;
    meta.insert(REVISION_KEY, &next.to_be_bytes()[..])?;
    Ok(next)
}

/// Lifts one of our errors into a transaction abort, so `?` works inside closures.
fn abort_on<T>(r: Result<T>) -> TxResult<T> {
    r.map_err(ConflictableTransactionError::Abort)
}

/// Walks `tree` in key order from just after `page.token` while keys start with `prefix`,
/// keeping what `visit` returns as `Some((key, item))` (the key becomes the next token).
/// Returns a token only when at least one more item would follow, so there is never an empty
/// last page.
fn paginate<T>(
    tree: &Tree,
    prefix: &[u8],
    page: &Page,
    mut visit: impl FnMut(&[u8], &IVec) -> Result<Option<(String, T)>>,
) -> Result<(Vec<T>, Option<String>)> {
    let limit = page.limit();
    let mut start = prefix.to_vec();
    if let Some(token) = &page.token {
        // `token` + NUL is the smallest key strictly greater than `token`.
        start.extend_from_slice(token.as_bytes());
        start.push(0);
    }
    let mut items = Vec::new();
    let mut last_key = None;
    for kv in tree.range(start..) {
        let (key, value) = kv.map_err(backend)?;
        let Some(suffix) = key.strip_prefix(prefix) else {
            break;
        };
        if let Some((key, item)) = visit(suffix, &value)? {
            if items.len() == limit {
                return Ok((items, last_key));
            }
            items.push(item);
            last_key = Some(key);
        }
    }
    Ok((items, None))
}

impl DataStore for SledStore {
    fn create_entry(&self, entry: Entry) -> Result<Entry> {
        let entry = entries::prepare_new(entry);
        let outcome = self
            .entry_trees()
            .transaction(|(e, p, s, u, m)| EntryTrees::new(e, p, s, u, m).create(&entry));
        self.finish(outcome)
    }

    fn update_entry(&self, entry: Entry) -> Result<Entry> {
        let mut entry = entry;
        entry.normalize_selectors();
        let outcome = self
            .entry_trees()
            .transaction(|(e, p, s, u, m)| EntryTrees::new(e, p, s, u, m).update(&entry));
        self.finish(outcome)
    }

    fn delete_entry(&self, id: &str) -> Result<Entry> {
        let outcome = self
            .entry_trees()
            .transaction(|(e, p, s, u, m)| EntryTrees::new(e, p, s, u, m).delete(id));
        self.finish(outcome)
    }

    fn get_entry(&self, id: &str) -> Result<Option<Entry>> {
        let what = || format!("entry {id:?}");
        match self.entries.get(id.as_bytes()).map_err(backend)? {
            Some(v) => Ok(Some(decode(&what(), &v)?)),
            None => Ok(None),
        }
    }

    fn list_entries(
        &self,
        filter: &EntryFilter,
        page: Page,
    ) -> Result<(Vec<Entry>, Option<String>)> {
        let keep = |id: String, entry: Entry| filter.matches(&entry).then_some((id, entry));
        // Prefer the most selective index; the selector condition is a filter on top.
        let index = match (&filter.by_spiffe_id, &filter.by_parent_id) {
            (Some(id), _) => Some((&self.entries_by_spiffe_id, id)),
            (None, Some(id)) => Some((&self.entries_by_parent, id)),
            (None, None) => None,
        };
        match index {
            Some((tree, owner)) => paginate(tree, &entries::index_prefix(owner), &page, |k, _| {
                let id = key_str("entry index", k)?;
                Ok(self.get_entry(&id)?.and_then(|e| keep(id, e)))
            }),
            None => paginate(&self.entries, b"", &page, |k, v| {
                let id = key_str("entry", k)?;
                let entry = decode(&format!("entry {id:?}"), v)?;
                Ok(keep(id, entry))
            }),
        }
    }

    fn revision(&self) -> Result<u64> {
        match self.meta.get(REVISION_KEY).map_err(backend)? {
            Some(v) => codec::decode_u64("revision counter", &v),
            None => Ok(0),
        }
    }

    fn create_join_token(&self, token: JoinToken, alias: Option<Entry>) -> Result<()> {
        let alias = alias.map(entries::prepare_new);
        let value = encode("join token", &token)?;
        let (e, p, s, u, m) = self.entry_trees();
        let outcome =
            (&self.join_tokens, e, p, s, u, m).transaction(|(t, e, p, s, u, m)| -> TxResult<()> {
                if t.get(token.token.as_bytes())?.is_some() {
                    // Never echo the token: error messages end up in logs.
                    return sled::transaction::abort(StoreError::AlreadyExists(
                        "join token".into(),
                    ));
                }
                if let Some(alias) = &alias {
                    EntryTrees::new(e, p, s, u, m).create(alias)?;
                }
                t.insert(token.token.as_bytes(), value.clone())?;
                Ok(())
            });
        self.finish(outcome)
    }

    fn get_join_token(&self, token: &str) -> Result<Option<JoinToken>> {
        match self.join_tokens.get(token.as_bytes()).map_err(backend)? {
            Some(v) => Ok(Some(decode("join token", &v)?)),
            None => Ok(None),
        }
    }

    fn attest_join_token(&self, token: &str, now: i64, agent: AgentRecord) -> Result<()> {
        let what = format!("agent {:?}", agent.id.to_string());
        let value = encode(&what, &agent)?;
        let agent_key = agent.id.to_string();
        let tx = (&self.join_tokens, &self.agents, &self.meta);
        let outcome = tx.transaction(|(t, a, m)| -> TxResult<Result<()>> {
            let Some(stored) = t.get(token.as_bytes())? else {
                return sled::transaction::abort(StoreError::NotFound("join token".into()));
            };
            if let Some(existing) = a.get(agent_key.as_bytes())? {
                let existing: AgentRecord = abort_on(decode(&what, &existing))?;
                if existing.banned {
                    // The agent ID holds the token value: keep it out of the message.
                    return sled::transaction::abort(StoreError::Refused(
                        "the agent is banned".into(),
                    ));
                }
            }
            let stored: JoinToken = abort_on(decode("join token", &stored))?;
            t.remove(token.as_bytes())?;
            if stored.expires_at <= now {
                // Commit the deletion of the useless token, but still report the failure.
                return Ok(Err(StoreError::Expired("join token".into())));
            }
            a.insert(agent_key.as_bytes(), value.clone())?;
            bump_revision(m)?;
            Ok(Ok(()))
        });
        self.finish(outcome)?
    }

    fn prune_join_tokens(&self, now: i64) -> Result<usize> {
        let mut expired = Vec::new();
        for kv in self.join_tokens.iter() {
            let (key, value) = kv.map_err(backend)?;
            let token: JoinToken = decode("join token", &value)?;
            if token.expires_at <= now {
                expired.push(key);
            }
        }
        if expired.is_empty() {
            return Ok(0);
        }
        let outcome = self.join_tokens.transaction(|t| -> TxResult<usize> {
            let mut removed = 0;
            for key in &expired {
                // Tokens are never rewritten, so one still present is still expired.
                if t.remove(key)?.is_some() {
                    removed += 1;
                }
            }
            Ok(removed)
        });
        self.finish(outcome)
    }

    fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>> {
        let key = id.to_string();
        match self.agents.get(key.as_bytes()).map_err(backend)? {
            Some(v) => Ok(Some(decode(&format!("agent {key:?}"), &v)?)),
            None => Ok(None),
        }
    }

    fn put_agent(&self, agent: AgentRecord) -> Result<()> {
        let key = agent.id.to_string();
        let value = encode(&format!("agent {key:?}"), &agent)?;
        let outcome = (&self.agents, &self.meta).transaction(|(a, m)| -> TxResult<()> {
            a.insert(key.as_bytes(), value.clone())?;
            bump_revision(m)?;
            Ok(())
        });
        self.finish(outcome)
    }

    fn update_agent(
        &self,
        id: &SpiffeId,
        decide: &dyn Fn(&AgentRecord) -> Option<AgentRecord>,
    ) -> Result<AgentUpdate> {
        let key = id.to_string();
        let what = format!("agent {key:?}");
        let outcome = (&self.agents, &self.meta).transaction(|(a, m)| -> TxResult<AgentUpdate> {
            let Some(raw) = a.get(key.as_bytes())? else {
                return sled::transaction::abort(StoreError::NotFound(what.clone()));
            };
            let stored: AgentRecord = abort_on(decode(&what, &raw))?;
            let Some(mut next) = decide(&stored) else {
                return Ok(AgentUpdate::Declined(stored));
            };
            // The key is the ID: a decision cannot move a record to another agent.
            next.id = stored.id;
            a.insert(key.as_bytes(), abort_on(encode(&what, &next))?)?;
            bump_revision(m)?;
            Ok(AgentUpdate::Written(next))
        });
        self.finish(outcome)
    }

    fn prune_agents(&self, expired_before: i64) -> Result<Vec<SpiffeId>> {
        let prunable = |a: &AgentRecord| !a.banned && a.x509_svid_expires_at <= expired_before;
        let mut candidates = Vec::new();
        for kv in self.agents.iter() {
            let (key, value) = kv.map_err(backend)?;
            let name = key_str("agent", &key)?;
            let agent: AgentRecord = decode(&format!("agent {name:?}"), &value)?;
            if prunable(&agent) {
                candidates.push((key, agent.id));
            }
        }
        let mut removed = Vec::new();
        for (key, id) in candidates {
            let what = format!("agent {:?}", id.to_string());
            let outcome = (&self.agents, &self.meta).transaction(|(a, m)| -> TxResult<bool> {
                let Some(raw) = a.get(&key)? else {
                    return Ok(false);
                };
                // Re-checked here: a renewal or ban since the scan keeps the agent.
                if !prunable(&abort_on(decode::<AgentRecord>(&what, &raw))?) {
                    return Ok(false);
                }
                a.remove(&key)?;
                bump_revision(m)?;
                Ok(true)
            });
            if self.finish(outcome)? {
                removed.push(id);
            }
        }
        Ok(removed)
    }

    fn list_agents(&self, page: Page) -> Result<(Vec<AgentRecord>, Option<String>)> {
        paginate(&self.agents, b"", &page, |k, v| {
            let key = key_str("agent", k)?;
            let agent = decode(&format!("agent {key:?}"), v)?;
            Ok(Some((key, agent)))
        })
    }

    fn delete_agent(&self, id: &SpiffeId) -> Result<AgentRecord> {
        let key = id.to_string();
        let what = format!("agent {key:?}");
        let outcome = (&self.agents, &self.meta).transaction(|(a, m)| -> TxResult<AgentRecord> {
            let Some(old) = a.remove(key.as_bytes())? else {
                return sled::transaction::abort(StoreError::NotFound(what.clone()));
            };
            let old = abort_on(decode(&what, &old))?;
            bump_revision(m)?;
            Ok(old)
        });
        self.finish(outcome)
    }

    fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Vec<u8>>> {
        match self.bundles.get(td.as_str().as_bytes()).map_err(backend)? {
            Some(v) => Ok(Some(decode_bundle(td, &v)?)),
            None => Ok(None),
        }
    }

    fn set_bundle(&self, td: &TrustDomain, bundle: Vec<u8>) -> Result<()> {
        let value = encode_bundle(&bundle);
        let outcome = (&self.bundles, &self.meta).transaction(|(b, m)| -> TxResult<()> {
            b.insert(td.as_str().as_bytes(), value.clone())?;
            bump_revision(m)?;
            Ok(())
        });
        self.finish(outcome)
    }

    fn delete_bundle(&self, td: &TrustDomain) -> Result<()> {
        let outcome = (&self.bundles, &self.meta).transaction(|(b, m)| -> TxResult<()> {
            if b.remove(td.as_str().as_bytes())?.is_none() {
                let what = format!("bundle for trust domain {:?}", td.as_str());
                return sled::transaction::abort(StoreError::NotFound(what));
            }
            bump_revision(m)?;
            Ok(())
        });
        self.finish(outcome)
    }

    fn list_bundles(&self) -> Result<Vec<(TrustDomain, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.bundles.iter() {
            let (key, value) = kv.map_err(backend)?;
            let name = key_str("bundle", &key)?;
            let td = TrustDomain::new(&name)
                .map_err(|e| StoreError::Corrupt(format!("bundle key {name:?}: {e}")))?;
            let bundle = decode_bundle(&td, &value)?;
            out.push((td, bundle));
        }
        Ok(out)
    }

    fn write_authorities(&self, write: AuthorityWrite) -> Result<()> {
        if write.is_empty() {
            return Ok(());
        }
        let mut put = Vec::with_capacity(write.put.len());
        for a in &write.put {
            put.push((a.id.clone(), encode(&format!("authority {:?}", a.id), a)?));
        }
        let bundle = write
            .bundle
            .as_ref()
            .map(|(td, doc)| (td.as_str().as_bytes().to_vec(), encode_bundle(doc)));
        let tx = (&self.authorities, &self.bundles, &self.meta);
        let outcome = tx.transaction(|(a, b, m)| -> TxResult<()> {
            for (id, value) in &put {
                a.insert(id.as_bytes(), value.clone())?;
            }
            for id in &write.delete {
                a.remove(id.as_bytes())?;
            }
            if let Some((key, value)) = &bundle {
                b.insert(key.clone(), value.clone())?;
                bump_revision(m)?;
            }
            Ok(())
        });
        self.finish(outcome)
    }

    fn list_authorities(&self) -> Result<Vec<Authority>> {
        let mut out = Vec::new();
        for kv in self.authorities.iter() {
            let (key, value) = kv.map_err(backend)?;
            let id = key_str("authority", &key)?;
            out.push(decode(&format!("authority {id:?}"), &value)?);
        }
        Ok(out)
    }
}
