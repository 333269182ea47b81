//! Making CA records: a self-signed root or an intermediate of the disk upstream authority,
//! and the roots each chains to.

use std::time::{Duration, SystemTime};

use rcgen::PublicKeyData;
use rustls_pki_types::CertificateDer;
use sigil_core::keys;
use sigil_core::x509::{self, CaSigner, unix_secs};

use super::CaError;
use crate::config::{Config, DiskAuthority};
use crate::datastore::{Authority, AuthorityKind, AuthorityState};

/// Makes a new CA record (self-signed or from the upstream authority), its roots in
/// `roots_der`.
pub(super) fn new_authority(
    cfg: &Config,
    now: SystemTime,
    state: AuthorityState,
) -> Result<Authority, CaError> {
    let mut authority = match &cfg.upstream_authority {
        None => self_signed(cfg, now)?,
        Some(up) => from_upstream(&up.disk, cfg, now)?,
    };
    authority.state = state;
    Ok(authority)
}

/// The roots a CA record chains to. Records written before they carried their roots: a
/// self-signed CA is its own root, an upstream-signed one chains to the configured upstream
/// roots.
pub(super) fn roots_of(a: &Authority, cfg: &Config) -> Result<Vec<Vec<u8>>, CaError> {
    if !a.roots_der.is_empty() {
        return Ok(a.roots_der.clone());
    }
    if is_self_signed(&a.cert_der) {
        return Ok(vec![a.cert_der.clone()]);
    }
    match &cfg.upstream_authority {
        Some(up) => Ok(upstream_files(&up.disk)?.roots),
        None => {
            tracing::warn!(
                authority_id = %a.id,
                "an upstream-signed X.509 CA is stored but no upstream_authority is configured: \
                 its roots cannot be checked"
            );
            Ok(vec![])
        }
    }
}

/// Signed by its own key (issuer == subject alone is not enough: Sigil's CAs of one trust
/// domain share a subject name).
fn is_self_signed(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der)
        .is_ok_and(|(_, c)| c.subject() == c.issuer() && c.verify_signature(None).is_ok())
}

fn authority_record(
    cert: &CertificateDer<'_>,
    chain: Vec<Vec<u8>>,
    roots: Vec<Vec<u8>>,
    key: &rcgen::KeyPair,
    now: SystemTime,
    ttl: Duration,
) -> Authority {
    Authority {
        id: uuid::Uuid::new_v4().to_string(),
        kind: AuthorityKind::X509Ca,
        cert_der: cert.to_vec(),
        chain_der: chain,
        roots_der: roots,
        public_key_der: key.subject_public_key_info(),
        private_key_pkcs8: key.serialize_der(),
        not_before: unix_secs(now),
        not_after: unix_secs(now + ttl),
        state: AuthorityState::Active,
    }
}

fn self_signed(cfg: &Config, now: SystemTime) -> Result<Authority, CaError> {
    let key = keys::generate(cfg.ca_key_type)?;
    let cert = x509::self_signed_ca(&key, &cfg.trust_domain, cfg.ca_ttl, now)?;
    let roots = vec![cert.to_vec()];
    Ok(authority_record(
        &cert,
        vec![],
        roots,
        &key,
        now,
        cfg.ca_ttl,
    ))
}

fn read_pem(path: &std::path::Path) -> Result<Vec<pem::Pem>, CaError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CaError::Upstream(format!("{}: {e}", path.display())))?;
    pem::parse_many(text).map_err(|e| CaError::Upstream(format!("{}: {e}", path.display())))
}

/// The upstream authority's certificate and the roots it chains to (`bundle_file`, or the
/// certificate itself).
struct UpstreamFiles {
    cert: Vec<u8>,
    roots: Vec<Vec<u8>>,
}

fn upstream_files(disk: &DiskAuthority) -> Result<UpstreamFiles, CaError> {
    let certs = read_pem(&disk.cert_file)?;
    let cert = certs
        .iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .ok_or_else(|| CaError::Upstream("cert_file holds no CERTIFICATE".into()))?
        .contents()
        .to_vec();
    let roots: Vec<Vec<u8>> = match &disk.bundle_file {
        Some(p) => read_pem(p)?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| p.into_contents())
            .collect(),
        None => vec![cert.clone()],
    };
    if roots.is_empty() {
        return Err(CaError::Upstream("bundle_file holds no CERTIFICATE".into()));
    }
    Ok(UpstreamFiles { cert, roots })
}

fn from_upstream(
    disk: &DiskAuthority,
    cfg: &Config,
    now: SystemTime,
) -> Result<Authority, CaError> {
    let UpstreamFiles {
        cert: up_cert,
        roots,
    } = upstream_files(disk)?;
    let key_pem = read_pem(&disk.key_file)?;
    let up_key = key_pem
        .iter()
        .find(|p| p.tag() == "PRIVATE KEY")
        .ok_or_else(|| CaError::Upstream("key_file holds no PKCS#8 PRIVATE KEY".into()))?;
    let up_key = keys::from_pkcs8(up_key.contents())?;
    let upstream = CaSigner::new(CertificateDer::from(up_cert.clone()), up_key, vec![])?;
    let key = keys::generate(cfg.ca_key_type)?;
    let cert = upstream.sign_intermediate(&key, &cfg.trust_domain, cfg.ca_ttl, now)?;
    // Present the upstream certificate in chains unless it is itself a published root.
    let chain = if roots.contains(&up_cert) {
        vec![]
    } else {
        vec![up_cert]
    };
    let ttl = cfg.ca_ttl.min(
        upstream
            .not_after()
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    );
    Ok(authority_record(&cert, chain, roots, &key, now, ttl))
}
