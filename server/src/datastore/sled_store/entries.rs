//! Registration entry writes: the record plus its three index trees, always changed together
//! inside one transaction.

use sigil_core::SpiffeId;
use sled::transaction::{TransactionalTree, abort};

use super::codec::{decode, encode};
use super::{TxResult, abort_on, bump_revision};
use crate::datastore::{Entry, Result, StoreError};

/// Readies a new entry for storage: selectors sorted and deduplicated, a UUIDv4 when the caller
/// left the id empty. Done before the transaction so a retried closure reuses the same id.
pub(super) fn prepare_new(mut entry: Entry) -> Entry {
    entry.normalize_selectors();
    if entry.id.is_empty() {
        entry.id = uuid::Uuid::new_v4().to_string();
    }
    entry
}

/// Key prefix of all index rows owned by `owner` (a SPIFFE ID or parent ID). SPIFFE IDs cannot
/// contain NUL, so the separator is unambiguous and rows sort by entry id within an owner.
pub(super) fn index_prefix(owner: &SpiffeId) -> Vec<u8> {
    format!("{owner}\0").into_bytes()
}

fn index_key(owner: &SpiffeId, id: &str) -> Vec<u8> {
    let mut key = index_prefix(owner);
    key.extend_from_slice(id.as_bytes());
    key
}

/// Key of the uniqueness index: the JSON array (SPIFFE ID, parent ID, sorted selectors), which
/// is unambiguous whatever characters selector values hold.
fn unique_key(entry: &Entry) -> Result<Vec<u8>> {
    serde_json::to_vec(&(&entry.spiffe_id, &entry.parent_id, &entry.selectors))
        .map_err(|e| StoreError::Backend(format!("cannot encode entry uniqueness key: {e}")))
}

fn what(id: &str) -> String {
    format!("entry {id:?}")
}

/// The transactional views of the entry trees and the revision counter.
pub(super) struct EntryTrees<'a> {
    entries: &'a TransactionalTree,
    by_parent: &'a TransactionalTree,
    by_spiffe_id: &'a TransactionalTree,
    unique: &'a TransactionalTree,
    meta: &'a TransactionalTree,
}

impl<'a> EntryTrees<'a> {
    /// Groups the views in the order `SledStore::entry_trees` lists the trees.
    pub(super) fn new(
        entries: &'a TransactionalTree,
        by_parent: &'a TransactionalTree,
        by_spiffe_id: &'a TransactionalTree,
        unique: &'a TransactionalTree,
        meta: &'a TransactionalTree,
    ) -> Self {
        Self {
            entries,
            by_parent,
            by_spiffe_id,
            unique,
            meta,
        }
    }

    /// Inserts an entry prepared by [`prepare_new`], failing if its id or its identity triple is
    /// taken.
    pub(super) fn create(&self, entry: &Entry) -> TxResult<Entry> {
        if self.entries.get(entry.id.as_bytes())?.is_some() {
            return abort(StoreError::AlreadyExists(what(&entry.id)));
        }
        let unique = abort_on(unique_key(entry))?;
        if let Some(owner) = self.unique.get(&unique)? {
            return abort(duplicate(&owner));
        }
        let mut stored = entry.clone();
        stored.revision = bump_revision(self.meta)?;
        self.insert(&stored, unique)?;
        Ok(stored)
    }

    /// Replaces an existing entry (selectors already normalized), keeping its `created_at`.
    pub(super) fn update(&self, entry: &Entry) -> TxResult<Entry> {
        let old = self.get(&entry.id)?;
        let unique = abort_on(unique_key(entry))?;
        if let Some(owner) = self.unique.get(&unique)?
            && owner != entry.id.as_bytes()
        {
            return abort(duplicate(&owner));
        }
        self.remove(&old)?;
        let mut stored = entry.clone();
        stored.created_at = old.created_at;
        stored.revision = bump_revision(self.meta)?;
        self.insert(&stored, unique)?;
        Ok(stored)
    }

    /// Removes an entry and its index rows, returning it as it was stored.
    pub(super) fn delete(&self, id: &str) -> TxResult<Entry> {
        let old = self.get(id)?;
        self.remove(&old)?;
        bump_revision(self.meta)?;
        Ok(old)
    }

    fn get(&self, id: &str) -> TxResult<Entry> {
        match self.entries.get(id.as_bytes())? {
            Some(v) => abort_on(decode(&what(id), &v)),
            None => abort(StoreError::NotFound(what(id))),
        }
    }

    fn insert(&self, entry: &Entry, unique: Vec<u8>) -> TxResult<()> {
        let value = abort_on(encode(&what(&entry.id), entry))?;
        self.entries.insert(entry.id.as_bytes(), value)?;
        self.by_parent
            .insert(index_key(&entry.parent_id, &entry.id), &[][..])?;
        self.by_spiffe_id
            .insert(index_key(&entry.spiffe_id, &entry.id), &[][..])?;
        self.unique.insert(unique, entry.id.as_bytes())?;
        Ok(())
    }

    fn remove(&self, entry: &Entry) -> TxResult<()> {
        self.entries.remove(entry.id.as_bytes())?;
        self.by_parent
            .remove(index_key(&entry.parent_id, &entry.id))?;
        self.by_spiffe_id
            .remove(index_key(&entry.spiffe_id, &entry.id))?;
        self.unique.remove(abort_on(unique_key(entry))?)?;
        Ok(())
    }
}

/// The error for a second entry with an existing (SPIFFE ID, parent ID, selectors) triple.
fn duplicate(owner: &[u8]) -> StoreError {
    StoreError::AlreadyExists(format!(
        "entry {:?} with the same SPIFFE ID, parent ID and selectors",
        String::from_utf8_lossy(owner)
    ))
}
