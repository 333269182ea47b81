//! SPIFFE building blocks shared by every Sigil process. Pure logic: no sockets, no files.
//!
//! Layout:
//! - [`id`]: SPIFFE IDs and trust domain names, parsed once at the edge.
//! - [`selector`]: `type:value` selectors and entry matching.
#![forbid(unsafe_code)]

pub mod id;
pub mod selector;

pub use id::{IdError, SpiffeId, TrustDomain};
pub use selector::{Selector, SelectorError, SelectorSet};
