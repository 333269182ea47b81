//! SPIFFE building blocks shared by every Sigil process. Pure logic: no sockets, no files.
//!
//! Layout:
//! - [`id`]: SPIFFE IDs and trust domain names, parsed once at the edge.
//! - [`selector`]: `type:value` selectors and entry matching.
//! - [`keys`]: key generation, CSRs and their verification.
//! - [`x509`]: building CA certificates and leaf X.509-SVIDs.
//! - [`validate`]: checking an X.509-SVID chain against a bundle.
//! - [`bundle`]: trust bundles in the SPIFFE JWK-set format and PEM.
//! - [`jwt`]: signing and verifying JWT-SVIDs.
//! - [`tls`]: rustls verifiers and certificate resolvers for SPIFFE authentication.
//! - [`rate_limit`]: token buckets per caller, bounded in memory.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod id;
pub mod jwt;
pub mod keys;
pub mod rate_limit;
pub mod selector;
pub mod tls;
pub mod validate;
pub mod x509;

pub use bundle::{Bundle, BundleError, JwtAuthority};
pub use id::{IdError, SpiffeId, TrustDomain};
pub use selector::{Selector, SelectorError, SelectorSet};
pub use validate::{SvidError, validate_x509_svid};
