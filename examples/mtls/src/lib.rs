//! Shared code of the `mtls-server` and `mtls-client` example programs.
//!
//! The two programs take their identities from the SPIFFE Workload API with the public `spiffe`
//! crate (an `X509Source` that follows SVID and bundle rotation on its own) and build their rustls
//! configurations with `spiffe-rustls`, so every new TLS handshake presents the newest SVID and
//! checks the peer against the newest bundle. Nothing here knows about Sigil: the same programs
//! work against a SPIRE agent.
//!
//! Layout:
//! - [`protocol`]: the line protocol (`ping N` / `pong N <client id>`), parsing and formatting.
//! - [`identity`]: building the `X509Source` (endpoint, SVID choice by SPIFFE ID) and reading
//!   the peer's identity off an established connection.
#![forbid(unsafe_code)]

pub mod identity;
pub mod protocol;
