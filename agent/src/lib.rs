//! Sigil agent library: node attestation, SVID cache and rotation, workload attestation and
//! the SPIFFE Workload API.
//!
//! Layout:
//! - [`config`]: the TOML configuration and its defaults.
//! - [`node`]: the agent's own identity and its mTLS channel to the server.
//! - [`data_dir`]: the identity and roots kept in `data_dir`, written crash-safely.
//! - [`sync`]: the push-sync stream from the server, applied to the cache.
//! - [`cache`]: entries, SVIDs and bundles as watchable snapshots.
//! - [`rotate`]: issuing and renewing workload SVIDs.
//! - [`verify`]: checking every SVID the server returns before it is served.
//! - [`peer`], [`attestation`]: who is calling the socket.
//! - [`workload_api`]: the SPIFFE Workload API service.
//! - [`jwt`]: JWT-SVIDs: minting through the server, the token cache, validation.
//! - [`sds`]: Envoy's Secret Discovery Service (SDS v3) on the same socket.
//! - [`serve`]: wiring of sockets and background tasks.
#![forbid(unsafe_code)]

mod api_runtime;
pub mod attestation;
pub mod cache;
pub mod config;
pub mod data_dir;
pub mod jwt;
pub mod node;
pub mod peer;
mod procfs;
pub mod rotate;
pub mod sds;
pub mod serve;
pub mod sync;
pub mod verify;
pub mod workload_api;
