//! gRPC services: agent-facing (`node`, `sync`) over mTLS and admin-facing (`admin`) on the
//! admin Unix socket.

pub mod admin;
pub mod node;
pub mod sync;
