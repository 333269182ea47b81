//! Checking an X.509-SVID chain against a trust bundle, per the X509-SVID standard.

use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::id::SpiffeId;

/// Why a chain is not a valid X.509-SVID for a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// No certificates were presented.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// A certificate is not parseable DER.
    #[error("certificate {index} is malformed: {reason}")]
    Malformed {
        /// Position in the chain (0 = leaf).
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// The leaf has no URI SAN.
    #[error("leaf certificate has no URI SAN")]
    NoUriSan,
    /// The leaf has more than one URI SAN.
    #[error("leaf certificate has more than one URI SAN")]
    MultipleUriSans,
    /// The URI SAN is not a workload SPIFFE ID.
    #[error("leaf URI SAN is not a valid SPIFFE ID: {0}")]
    BadSpiffeId(String),
    /// The leaf says cA = true.
    #[error("leaf certificate must not be a CA")]
    LeafIsCa,
    /// The leaf has no key usage, or it is not critical, or lacks digitalSignature.
    #[error("leaf certificate must have a critical key usage with digitalSignature")]
    LeafKeyUsage,
    /// The leaf may sign certificates or CRLs.
    #[error("leaf certificate must not have keyCertSign or cRLSign")]
    LeafSignsCerts,
    /// The leaf's extended key usage lacks serverAuth or clientAuth.
    #[error("leaf extended key usage must include serverAuth and clientAuth")]
    LeafEku,
    /// An intermediate or the anchor is not a CA.
    #[error("certificate {0} in the chain is not a CA")]
    NotCa(usize),
    /// An intermediate or the anchor lacks keyCertSign.
    #[error("signing certificate {0} lacks keyCertSign")]
    MissingKeyCertSign(usize),
    /// The leaf is not yet valid or has expired.
    #[error("certificate has expired or is not yet valid")]
    Expired,
    /// No path to a certificate of the bundle.
    #[error("certificate does not chain to the trust bundle: {0}")]
    Untrusted(String),
}

/// Validates `chain` (leaf first) against the DER roots of the leaf's trust domain at `now` and
/// returns the leaf's SPIFFE ID.
pub fn validate_x509_svid(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<SpiffeId, SvidError> {
    let leaf_der = chain.first().ok_or(SvidError::EmptyChain)?;
    let leaf = parse(leaf_der, 0)?;
    let id = check_leaf(&leaf)?;
    for (i, der) in chain.iter().enumerate().skip(1) {
        check_signing_cert(&parse(der, i)?, i)?;
    }

    let anchors: Vec<_> = roots
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect();
    let ee = EndEntityCert::try_from(leaf_der).map_err(|e| SvidError::Malformed {
        index: 0,
        reason: e.to_string(),
    })?;
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| SvidError::Expired)?;
    let time = UnixTime::since_unix_epoch(secs);
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let intermediates: Vec<CertificateDer<'_>> = chain[1..].to_vec();
    let path = ee
        .verify_for_usage(
            algs,
            &anchors,
            &intermediates,
            time,
            KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                SvidError::Expired
            }
            other => SvidError::Untrusted(format!("{other:?}")),
        })?;

    // webpki does not insist on cA or keyCertSign for the anchor; the standard does. The roots
    // of one trust domain may share a subject name (rotation), so the anchor webpki used is
    // found by subject *and* key.
    let anchor = path.anchor();
    let anchor_index = chain.len();
    let root = roots
        .iter()
        .find(|r| {
            webpki::anchor_from_trusted_cert(r).is_ok_and(|a| {
                a.subject.as_ref() == anchor.subject.as_ref()
                    && a.subject_public_key_info.as_ref() == anchor.subject_public_key_info.as_ref()
            })
        })
        .ok_or_else(|| SvidError::Untrusted("trust anchor not found in the bundle".into()))?;
    check_signing_cert(&parse(root, anchor_index)?, anchor_index)?;
    Ok(id)
}

fn parse<'a>(der: &'a CertificateDer<'_>, index: usize) -> Result<X509Certificate<'a>, SvidError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| SvidError::Malformed {
            index,
            reason: e.to_string(),
        })
}

/// Returns the one workload SPIFFE ID of a leaf after checking the leaf-specific rules.
pub fn leaf_spiffe_id(der: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    check_leaf(&parse(der, 0)?)
}

/// URI SANs of a certificate, in order.
fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(u) = name {
                    out.push((*u).to_owned());
                }
            }
        }
    }
    out
}

fn check_leaf(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let uris = uri_sans(cert);
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUriSan),
        [one] => one,
        _ => return Err(SvidError::MultipleUriSans),
    };
    let id = SpiffeId::parse_workload(uri).map_err(|e| SvidError::BadSpiffeId(e.to_string()))?;
    if cert.is_ca() {
        return Err(SvidError::LeafIsCa);
    }
    let ku = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::KeyUsage(ku) => Some((e.critical, *ku)),
            _ => None,
        });
    match ku {
        Some((true, ku)) if ku.digital_signature() => {
            if ku.key_cert_sign() || ku.crl_sign() {
                return Err(SvidError::LeafSignsCerts);
            }
        }
        _ => return Err(SvidError::LeafKeyUsage),
    }
    if let Ok(Some(eku)) = cert.extended_key_usage()
        && !(eku.value.server_auth && eku.value.client_auth)
    {
        return Err(SvidError::LeafEku);
    }
    Ok(id)
}

fn check_signing_cert(cert: &X509Certificate<'_>, index: usize) -> Result<(), SvidError> {
    if !cert.is_ca() {
        return Err(SvidError::NotCa(index));
    }
    match cert.key_usage() {
        Ok(Some(ku)) if ku.value.key_cert_sign() => Ok(()),
        _ => Err(SvidError::MissingKeyCertSign(index)),
    }
}
