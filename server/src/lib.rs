//! Sigil server library: the certificate authority and control plane of a trust domain.
//!
//! Layout:
//! - [`config`]: the TOML configuration and its defaults.
//! - [`agents`]: the agent-record rules (accepted SVIDs, renewal, ban) as pure functions.
//! - [`datastore`]: the `DataStore` trait and its sled implementation.
//! - [`ca`]: the signing CA and the own trust bundle.
//! - [`jwt`]: JWT-SVID signing keys, their rotation and publication.
//! - [`registry`]: in-memory entries, agent authorization and change broadcast.
//! - [`api`]: gRPC services (agent-facing `Node` and sync, admin services).
//! - [`convert`]: wire <-> record conversion and input validation.
//! - [`status`]: the one mapping of errors to gRPC status codes.
//! - [`signing`]: admission and bounded execution of signing work.
//! - [`rate_limit`]: per-source-address limits on unauthenticated calls.
//! - [`prune`]: periodic removal of expired join tokens and long-expired agents.
//! - [`serve`]: wiring of listeners, TLS and background tasks.
#![forbid(unsafe_code)]

pub mod agents;
pub mod api;
pub mod ca;
pub mod client;
pub mod config;
pub mod convert;
pub mod datastore;
pub mod jwt;
pub mod prune;
pub mod rate_limit;
pub mod registry;
pub mod serve;
pub mod signing;
pub mod state;
pub mod status;
pub mod x509_rotation;
