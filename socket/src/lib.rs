//! What every Sigil process needs to serve gRPC on a Unix socket.
//!
//! Layout:
//! - [`bind`]: creating the socket file without trusting directories other users control
//!   (StrictModes-style ownership and mode checks, no symlinks, chmod only what we create).
//! - [`h2_authority`]: a connection wrapper that rewrites the HTTP/2 `:authority` of each request
//!   before tonic's HTTP/2 stack sees it, so clients of every gRPC stack (C core, Java, Go, Rust)
//!   are served.
#![forbid(unsafe_code)]

pub mod bind;
pub mod h2_authority;

pub use bind::{BindError, SocketSpec, bind};
pub use h2_authority::NormalizeAuthority;

use tokio_stream::{Stream, StreamExt};

/// Wraps every connection of a listener's accept stream in [`NormalizeAuthority`]: what each
/// Unix-socket gRPC listener hands to tonic's `serve_with_incoming`.
pub fn normalized<S, E>(
    incoming: impl Stream<Item = Result<S, E>>,
) -> impl Stream<Item = Result<NormalizeAuthority<S>, E>> {
    incoming.map(|conn| conn.map(NormalizeAuthority::new))
}
