//! Where the programs' identities come from, and what they learn about their peer.

use std::sync::Arc;
use std::time::Duration;

use spiffe::x509_source::SvidPicker;
use spiffe::{SpiffeId, X509Source, X509SourceError, X509Svid};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Picks the SVID with one SPIFFE ID when the Workload API serves several to this process.
///
/// Without a picker the source uses the first SVID the agent sends (the Workload API's
/// "default" one). A process matching several registration entries receives all their SVIDs,
/// so a program that must present one particular identity names it.
#[derive(Debug, Clone)]
pub struct ById(pub SpiffeId);

impl SvidPicker for ById {
    fn pick_svid(&self, svids: &[Arc<X509Svid>]) -> Option<usize> {
        svids.iter().position(|svid| svid.spiffe_id() == &self.0)
    }
}

/// How to reach the Workload API and which SVID to use.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// Workload API endpoint (`unix:///path`); `None` reads `SPIFFE_ENDPOINT_SOCKET`.
    pub endpoint: Option<String>,
    /// Use the SVID with this ID; `None` uses the first one served.
    pub spiffe_id: Option<SpiffeId>,
    /// Give up when no usable SVID arrived within this long; `None` waits forever (the source
    /// retries while the agent answers PermissionDenied, e.g. until an entry is registered).
    pub initial_timeout: Option<Duration>,
}

/// Connects to the Workload API and waits for the first usable SVID and bundles.
///
/// The returned source keeps a stream open and swaps in rotated SVIDs and bundles as the agent
/// pushes them; configs built from it by `spiffe-rustls` read the current ones at each handshake.
pub async fn x509_source(options: SourceOptions) -> Result<X509Source, X509SourceError> {
    let mut builder = X509Source::builder();
    if let Some(endpoint) = options.endpoint {
        builder = builder.endpoint(endpoint);
    }
    if let Some(id) = options.spiffe_id {
        builder = builder.picker(ById(id));
    }
    if let Some(timeout) = options.initial_timeout {
        builder = builder.initial_sync_timeout(timeout);
    }
    builder.build().await
}

/// What a program knows about the other end of an authenticated connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The SPIFFE ID from the leaf certificate's URI SAN.
    pub spiffe_id: String,
    /// The leaf's serial number in hex: it changes at every rotation.
    pub serial: String,
    /// The leaf's expiry, e.g. `Nov 23 15:11:58 2026 +00:00`.
    pub expires: String,
}

/// Why the peer's certificate could not be described.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The TLS session carries no peer certificate (cannot happen after a successful mTLS
    /// handshake with `spiffe-rustls` configs, but the type allows it).
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The certificate does not parse or does not hold exactly one SPIFFE ID.
    #[error("unreadable peer certificate: {0}")]
    BadCertificate(String),
}

impl Peer {
    /// Describes the leaf of the peer's chain, as rustls reports it after a handshake.
    pub fn from_chain(
        chain: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    ) -> Result<Self, PeerError> {
        let leaf = chain
            .and_then(|c| c.first())
            .ok_or(PeerError::NoCertificate)?;
        let spiffe_id = spiffe::cert::spiffe_id_from_der(leaf)
            .map_err(|e| PeerError::BadCertificate(e.to_string()))?;
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|e| PeerError::BadCertificate(e.to_string()))?;
        Ok(Self {
            spiffe_id: spiffe_id.to_string(),
            serial: hex(cert.raw_serial()),
            expires: cert.validity().not_after.to_string(),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_certificate_is_an_error() {
        assert!(matches!(
            Peer::from_chain(None),
            Err(PeerError::NoCertificate)
        ));
        assert!(matches!(
            Peer::from_chain(Some(&[])),
            Err(PeerError::NoCertificate)
        ));
        let junk = rustls::pki_types::CertificateDer::from(vec![0x30, 0x00]);
        assert!(matches!(
            Peer::from_chain(Some(&[junk])),
            Err(PeerError::BadCertificate(_))
        ));
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }
}
