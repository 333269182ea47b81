//! Generated protobuf and gRPC code shared by Sigil's server, agent and CLI.
//!
//! - [`workload`]: the SPIFFE Workload API, wire-identical to the public standard.
//! - [`sigil::v1`]: Sigil's own server API (agent-facing `Node`, admin-facing services).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod codec;

/// The SPIFFE Workload API (`SpiffeWorkloadAPI`, no proto package).
pub mod workload {
    tonic::include_proto!("_");
}

/// Sigil's own API namespace.
pub mod sigil {
    /// Version 1 of the server API.
    pub mod v1 {
        tonic::include_proto!("sigil.v1");
    }
}

/// Metadata key every Workload API request must carry with value `true`.
pub const WORKLOAD_HEADER: &str = "workload.spiffe.io";
