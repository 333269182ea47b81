//! The behaviour every [`DataStore`] backend must show, written only against the trait.
//!
//! A backend runs the whole suite with one line in its tests module:
//!
//! ```ignore
//! crate::datastore::conformance::datastore_conformance_tests!(fresh_store());
//! ```
//!
//! where `fresh_store()` returns `(guard, store)`: an empty store plus whatever must outlive it
//! (a temp directory, a scratch database). Each case becomes its own `#[test]` on its own fresh
//! store. Cases never assume a starting revision of 0 or any record order beyond the documented
//! key order, so a SQL backend can pass them unchanged.

mod agents;
mod entries;
mod records;

pub(crate) use agents::*;
pub(crate) use entries::*;
pub(crate) use records::*;

use sigil_core::{Selector, SpiffeId, TrustDomain};

use super::{AgentRecord, DataStore, Entry, EntryFilter, Page};

/// Expands to one `#[test]` per conformance case, each on a store from `$fresh`.
macro_rules! datastore_conformance_tests {
    ($fresh:expr) => {
        $crate::datastore::conformance::datastore_conformance_tests!(@cases $fresh;
            entry_crud,
            entry_duplicates_rejected,
            entry_unknown_id_not_found,
            entry_list_filters,
            entry_pagination,
            revision_tracks_every_write,
            concurrent_writes_get_distinct_revisions,
            join_token_single_use,
            join_token_expired,
            join_token_alias_is_atomic,
            join_token_prune,
            agent_crud_and_pagination,
            agent_update_is_check_and_set,
            join_token_get_is_read_only,
            banned_agent_cannot_reattest,
            agent_prune,
            bundle_crud,
            authority_round_trip,
            authorities_and_bundle_in_one_write,
        );
    };
    (@cases $fresh:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let (_guard, store) = $fresh;
                $crate::datastore::conformance::$case(&store);
            }
        )*
    };
}
pub(crate) use datastore_conformance_tests;

pub(crate) fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

pub(crate) fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

pub(crate) fn td(s: &str) -> TrustDomain {
    TrustDomain::new(s).unwrap()
}

/// A new entry with an empty id (the store assigns one) and every optional field set, so a
/// round trip proves they are all stored.
pub(crate) fn entry(spiffe_id: &str, parent_id: &str, selectors: &[&str]) -> Entry {
    Entry {
        id: String::new(),
        spiffe_id: id(spiffe_id),
        parent_id: id(parent_id),
        selectors: selectors.iter().map(|s| sel(s)).collect(),
        x509_svid_ttl: 3600,
        jwt_svid_ttl: 300,
        dns_names: vec!["web.example.org".into()],
        federates_with: vec![td("other.org")],
        admin: false,
        downstream: true,
        hint: "web".into(),
        expires_at: 0,
        created_at: 1_700_000_000,
        revision: 0,
    }
}

pub(crate) fn agent(path: &str) -> AgentRecord {
    AgentRecord {
        id: id(&format!("spiffe://example.org/sigil/agent/{path}")),
        attestation_type: "join_token".into(),
        x509_svid_serial: "01ab".into(),
        x509_svid_expires_at: 1_700_003_600,
        previous_x509_svid_serial: String::new(),
        previous_x509_svid_accepted_until: 0,
        selectors: vec![sel("join_token:abc")],
        banned: false,
        created_at: 1_700_000_000,
    }
}

/// Reads every page of `list_entries`, checking the paging rules on the way.
fn all_entries(store: &dyn DataStore, filter: &EntryFilter, size: u32) -> Vec<Entry> {
    let mut page = Page::first(size);
    let mut out = Vec::new();
    loop {
        let (items, next) = store.list_entries(filter, page.clone()).unwrap();
        assert!(items.len() <= page.limit());
        out.extend(items.iter().cloned());
        match next {
            Some(token) => {
                assert_eq!(items.len(), page.limit(), "a page before the last is full");
                page = page.next(token);
            }
            None => return out,
        }
    }
}
