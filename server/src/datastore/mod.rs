//! The server's storage layer: one narrow [`DataStore`] trait and its backends.
//!
//! Everything the server persists (registration entries, attested agents, join tokens, trust
//! bundles, CA authorities) goes through [`DataStore`], so a shared SQL backend can later serve
//! several servers behind one address without touching callers. The trait deliberately exposes
//! no engine types, is grouped by aggregate, and paginates every list that can grow with the
//! size of a deployment (SPIRE's unpaginated, 51-method interface is the cautionary tale).
//!
//! Layout:
//! - [`model`]: the records that are stored.
//! - [`SledStore`] (`sled_store`): the embedded default backend, on sled 0.34.
//! - `conformance` (tests only): the behaviour every backend must show, written against the
//!   trait so each new backend runs the same suite.
//!
//! # Contract every backend keeps
//! - An acknowledged write is durable: it has reached stable storage before the method returns.
//! - A write touching several records is atomic: on any error nothing is written. The one
//!   documented exception is [`DataStore::attest_join_token`], which deletes an expired token
//!   even though it reports [`StoreError::Expired`].
//! - Agent records change by check-and-set ([`DataStore::update_agent`]): the decision and
//!   the write happen in one transaction against the stored record, so a renewal can never
//!   undo a concurrent ban or recreate an evicted agent.
//! - A store-wide revision counter ([`DataStore::revision`]) increases by one in the same
//!   transaction as every entry, agent and bundle write, so the server can stream changes to
//!   agents in order.
//!
//! # Encoding (sled backend)
//! Records are stored as one version byte (currently `1`) followed by their JSON (serde_json)
//! form; byte strings inside records are base64. Bundles, which are already SPIFFE bundle JSON
//! documents produced elsewhere, are stored as the version byte followed by the document
//! unchanged. The version byte lets the format evolve: a reader that meets an unknown version
//! reports [`StoreError::Corrupt`] instead of misreading the record.

pub mod model;
mod sled_store;

#[cfg(test)]
pub(crate) mod conformance;

pub use model::{AgentRecord, Authority, AuthorityKind, AuthorityState, Entry, JoinToken};
pub use sled_store::SledStore;

use sigil_core::{Selector, SpiffeId, TrustDomain};

/// Why a storage operation failed. Callers map these to wire errors (e.g. in the API's
/// `status.rs`); the messages name the record involved but never secrets such as join tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record to read, change or consume does not exist, e.g. `entry "abc" not found`.
    #[error("{0} not found")]
    NotFound(String),
    /// A record with the same key, or an entry with the same identity triple, already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The record exists but its expiry time has passed (join tokens).
    #[error("{0} has expired")]
    Expired(String),
    /// A stored record could not be decoded: unknown version byte, bad JSON or a bad key.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The storage engine itself failed (I/O, lock held by another process, ...).
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The stored state forbids the write, e.g. a banned agent re-attesting; nothing was
    /// written. The message says why and never holds a secret.
    #[error("{0}")]
    Refused(String),
}

/// What [`DataStore::update_agent`] did. The stored record a decision was based on comes back
/// either way, so a caller whose change was declined can say why (banned, superseded SVID).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentUpdate {
    /// The decision returned a new record, which is now stored (with a new revision).
    Written(AgentRecord),
    /// The decision declined the change; this is the stored record, unchanged.
    Declined(AgentRecord),
}

/// Shorthand for results of storage operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which slice of a list to return. Lists are ordered by the record's key (entry ID, agent
/// SPIFFE ID); the token is opaque to callers and is only ever one we handed out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Most records to return; 0 means [`Page::DEFAULT_SIZE`], larger than [`Page::MAX_SIZE`]
    /// is capped, so one reply stays well below gRPC's 4 MiB message limit.
    pub size: u32,
    /// The `next page token` of the previous call, or `None` for the first page.
    pub token: Option<String>,
}

impl Page {
    /// Page size used when the caller asks for 0.
    pub const DEFAULT_SIZE: u32 = 500;
    /// Largest page size honoured.
    pub const MAX_SIZE: u32 = 1000;

    /// The first page of `size` records, for callers that start a listing.
    pub fn first(size: u32) -> Self {
        Self { size, token: None }
    }

    /// The page after the one that returned `token`, keeping the same size.
    pub fn next(&self, token: String) -> Self {
        Self {
            size: self.size,
            token: Some(token),
        }
    }

    /// How many records this page holds at most, after defaulting and capping.
    pub fn limit(&self) -> usize {
        let size = match self.size {
            0 => Self::DEFAULT_SIZE,
            n => n.min(Self::MAX_SIZE),
        };
        // u32 always fits in usize on the 32- and 64-bit targets we build for.
        size as usize
    }
}

/// One atomic change of [`DataStore::write_authorities`]: authorities to store and remove, and
/// the own bundle document that publishes the result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthorityWrite {
    /// Inserted or replaced, keyed by `id`.
    pub put: Vec<Authority>,
    /// Removed (ended keys, prepared ones replaced before they signed).
    pub delete: Vec<String>,
    /// The trust domain's bundle document, written in the same transaction.
    pub bundle: Option<(TrustDomain, Vec<u8>)>,
}

impl AuthorityWrite {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty() && self.bundle.is_none()
    }
}

/// Which entries [`DataStore::list_entries`] returns; all set conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryFilter {
    /// Only entries with exactly this SPIFFE ID.
    pub by_spiffe_id: Option<SpiffeId>,
    /// Only entries with exactly this parent ID (e.g. an agent fetching what it may issue).
    pub by_parent_id: Option<SpiffeId>,
    /// Only entries whose selectors include every one of these; empty means no condition.
    pub by_selectors: Vec<Selector>,
}

impl EntryFilter {
    /// True when `entry` satisfies every condition; shared so all backends filter alike.
    pub fn matches(&self, entry: &Entry) -> bool {
        self.by_spiffe_id
            .as_ref()
            .is_none_or(|id| *id == entry.spiffe_id)
            && self
                .by_parent_id
                .as_ref()
                .is_none_or(|id| *id == entry.parent_id)
            && self
                .by_selectors
                .iter()
                .all(|s| entry.selectors.contains(s))
    }
}

/// Everything the server persists, grouped by aggregate. Methods are synchronous because the
/// default engine is; async callers wrap them in `tokio::task::spawn_blocking`.
///
/// Implementations must keep the contract in the [module docs](self) and pass the conformance
/// suite.
pub trait DataStore: Send + Sync + 'static {
    // --- registration entries ---

    /// Stores a new entry. Assigns a UUIDv4 `id` when it is empty, sorts and deduplicates the
    /// selectors, and sets `revision` to the new store revision; `created_at` is the caller's.
    /// [`StoreError::AlreadyExists`] when the ID is taken or another entry has the same SPIFFE
    /// ID, parent ID and selector set (in any order).
    fn create_entry(&self, entry: Entry) -> Result<Entry>;

    /// Replaces the entry with the same `id`, keeping its stored `created_at` and assigning a new
    /// revision. [`StoreError::NotFound`] if there is none; the uniqueness rule of
    /// [`create_entry`](Self::create_entry) is checked again.
    fn update_entry(&self, entry: Entry) -> Result<Entry>;

    /// Removes an entry and returns it as it was. [`StoreError::NotFound`] if there is none.
    fn delete_entry(&self, id: &str) -> Result<Entry>;

    /// The entry with this ID, if any.
    fn get_entry(&self, id: &str) -> Result<Option<Entry>>;

    /// One page of the entries matching `filter`, ordered by ID, and the token of the next page
    /// (`None` when this was the last).
    fn list_entries(
        &self,
        filter: &EntryFilter,
        page: Page,
    ) -> Result<(Vec<Entry>, Option<String>)>;

    // --- revision ---

    /// The store-wide revision: 0 for an empty store, then one more per entry, agent or bundle
    /// write. Agents use it to ask for "everything after revision N".
    fn revision(&self) -> Result<u64>;

    // --- join tokens ---

    /// Stores a join token and, in the same transaction, its optional node-alias entry (created as
    /// by [`create_entry`](Self::create_entry)). [`StoreError::AlreadyExists`] if the token
    /// exists or the alias is a duplicate; then neither is stored.
    fn create_join_token(&self, token: JoinToken, alias: Option<Entry>) -> Result<()>;

    /// The join token with this value, if any, without consuming it: attestation checks the
    /// token before it does any expensive work, and consumes it later with
    /// [`attest_join_token`](Self::attest_join_token), which checks it again.
    fn get_join_token(&self, token: &str) -> Result<Option<JoinToken>>;

    /// Consumes a join token for an attesting agent: in one transaction the token is checked,
    /// deleted (tokens are single use) and `agent` is inserted or replaces an earlier record.
    /// [`StoreError::NotFound`] if the token does not exist (or was already used);
    /// [`StoreError::Expired`] if `expires_at <= now`, in which case the token is deleted
    /// anyway and no agent is written; [`StoreError::Refused`] if a banned record with the same
    /// ID is stored, in which case nothing is written and the token stays (a ban survives
    /// re-attestation; only deleting the record lifts it).
    fn attest_join_token(&self, token: &str, now: i64, agent: AgentRecord) -> Result<()>;

    /// Deletes every join token with `expires_at <= now`; returns how many were deleted.
    fn prune_join_tokens(&self, now: i64) -> Result<usize>;

    // --- agents ---

    /// The attested agent with this SPIFFE ID, if any.
    fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>>;

    /// Inserts or replaces an agent record unconditionally: only for seeding a store (tests,
    /// restores). Request paths never call it: a blind write based on an earlier read would
    /// undo a concurrent ban or eviction; they use [`update_agent`](Self::update_agent).
    fn put_agent(&self, agent: AgentRecord) -> Result<()>;

    /// Check-and-set update of one agent record (renewal, ban, SVID activation): in one
    /// transaction the stored record is read and handed to `decide`; if it returns a record,
    /// that record (keeping the stored ID) replaces the stored one and the revision advances,
    /// if it returns `None` nothing is written. A concurrent ban or eviction therefore either
    /// happens before (and `decide` sees it) or after, never in between.
    /// [`StoreError::NotFound`] if no record is stored: an update never recreates an evicted
    /// agent. `decide` may run more than once (a backend retries on conflict), so it must be a
    /// pure function of the record it is given.
    fn update_agent(
        &self,
        id: &SpiffeId,
        decide: &dyn Fn(&AgentRecord) -> Option<AgentRecord>,
    ) -> Result<AgentUpdate>;

    /// Deletes every agent that is not banned and whose SVID expired at or before
    /// `expired_before` (unix seconds), each re-checked in the transaction that removes it, so
    /// a renewal that lands first keeps its agent. Banned records are kept: deleting one would
    /// lift the ban. Returns the IDs removed.
    fn prune_agents(&self, expired_before: i64) -> Result<Vec<SpiffeId>>;

    /// One page of agents ordered by SPIFFE ID, and the token of the next page.
    fn list_agents(&self, page: Page) -> Result<(Vec<AgentRecord>, Option<String>)>;

    /// Removes an agent and returns it as it was. [`StoreError::NotFound`] if there is none.
    fn delete_agent(&self, id: &SpiffeId) -> Result<AgentRecord>;

    // --- bundles ---

    /// The SPIFFE bundle document stored for a trust domain, if any.
    fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Vec<u8>>>;

    /// Inserts or replaces a trust domain's bundle document (stored opaque).
    fn set_bundle(&self, td: &TrustDomain, bundle: Vec<u8>) -> Result<()>;

    /// Removes a trust domain's bundle. [`StoreError::NotFound`] if there is none.
    fn delete_bundle(&self, td: &TrustDomain) -> Result<()>;

    /// Every stored bundle, ordered by trust domain name. Not paginated: a server federates with
    /// a handful of trust domains, not thousands.
    fn list_bundles(&self) -> Result<Vec<(TrustDomain, Vec<u8>)>>;

    // --- authorities ---

    /// Applies one change to the signing authorities and, when given, the own bundle that
    /// publishes them, in one transaction: a crash can never leave a stored authority that can
    /// sign without its roots or keys in the stored bundle. Records in `put` are inserted or
    /// replaced by `id`; IDs in `delete` that do not exist are skipped (rotation may delete a
    /// record a crash already removed). The revision increases when the bundle is written.
    fn write_authorities(&self, write: AuthorityWrite) -> Result<()>;

    /// Every stored authority, ordered by ID. Not paginated: rotation keeps at most a few.
    fn list_authorities(&self) -> Result<Vec<Authority>>;
}
