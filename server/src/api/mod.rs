//! gRPC services: agent-facing (`node`, `sync`) over mTLS and admin-facing (`admin`,
//! `localauthority`) on the admin Unix socket.

pub mod admin;
pub mod caller;
pub mod localauthority;
pub mod node;
pub mod sync;
