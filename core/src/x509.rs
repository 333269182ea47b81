//! Building X.509 certificates: CA roots and intermediates, and leaf X.509-SVIDs that satisfy
//! the X509-SVID standard (one URI SAN, cA=false, critical key usage, both EKUs).

use std::time::{Duration, SystemTime};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::id::{SpiffeId, TrustDomain};

/// Backdating of `notBefore`, so peers with slightly slow clocks accept fresh certificates.
pub const CLOCK_SKEW: Duration = Duration::from_secs(10);

/// Errors from certificate construction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A DNS name is not a valid IA5 string.
    #[error("invalid dns name {0:?}")]
    DnsName(String),
    /// The issuer certificate could not be parsed.
    #[error("CA certificate is unusable: {0}")]
    BadIssuer(String),
    /// rcgen failed to serialize or sign.
    #[error("certificate signing failed: {0}")]
    Sign(String),
}

/// What a leaf X.509-SVID says: the identity and DNS names come from the registration entry.
#[derive(Clone, Debug)]
pub struct LeafParams {
    /// The one URI SAN.
    pub spiffe_id: SpiffeId,
    /// Extra DNS SANs; the first also becomes the subject CN, as SPIRE does.
    pub dns_names: Vec<String>,
    /// Lifetime from `now`.
    pub ttl: Duration,
    /// Issuance time (injected so tests control the clock).
    pub now: SystemTime,
    /// Whether the subject key is RSA (adds keyEncipherment).
    pub rsa_key: bool,
}

/// A CA that signs certificates: its key, its certificate and the chain above it.
pub struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    /// Certificates between this CA and the trust anchor (upstream intermediates), nearest first.
    upstream_chain: Vec<CertificateDer<'static>>,
    self_signed: bool,
    not_after: SystemTime,
}

impl std::fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSigner")
            .field("self_signed", &self.self_signed)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CaSigner {
    /// Wraps a CA certificate and its key. `upstream_chain` lists the intermediates above it.
    pub fn new(
        cert: CertificateDer<'static>,
        key: KeyPair,
        upstream_chain: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BuildError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| BuildError::BadIssuer(e.to_string()))?;
        // Sigil's CAs of one trust domain share a subject name, so an intermediate signed by the
        // root has issuer == subject too: only a signature by its own key makes a cert a root.
        let self_signed =
            parsed.subject() == parsed.issuer() && parsed.verify_signature(None).is_ok();
        let not_after = to_system_time(parsed.validity().not_after.timestamp());
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(BuildError::BadIssuer(
                "private key does not match the certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| BuildError::BadIssuer(e.to_string()))?;
        Ok(Self {
            issuer,
            cert,
            upstream_chain,
            self_signed,
            not_after,
        })
    }

    /// The CA's own certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// When the CA certificate expires; leaves are capped at this time.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Signs a leaf X.509-SVID for `public_key` and returns the chain to present: the leaf,
    /// then this CA and its upstream intermediates unless this CA is itself the root.
    pub fn sign_leaf(
        &self,
        public_key: &impl PublicKeyData,
        leaf: &LeafParams,
    ) -> Result<Vec<CertificateDer<'static>>, BuildError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = leaf.dns_names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.subject_alt_names.push(SanType::URI(
            leaf.spiffe_id
                .to_string()
                .try_into()
                .map_err(|_| BuildError::Sign("SPIFFE ID is not IA5".into()))?,
        ));
        for dns in &leaf.dns_names {
            let name = dns
                .clone()
                .try_into()
                .map_err(|_| BuildError::DnsName(dns.clone()))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        // With an empty subject, rcgen marks the SAN extension critical (RFC 5280 4.1.2.6).
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if leaf.rsa_key {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        if leaf.now >= self.not_after {
            return Err(BuildError::BadIssuer(
                "CA certificate has expired; it cannot sign".into(),
            ));
        }
        let not_after = add_clamped(leaf.now, leaf.ttl).min(self.not_after);
        params.not_before = to_offset(leaf.now.checked_sub(CLOCK_SKEW).unwrap_or(leaf.now));
        params.not_after = to_offset(not_after);
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| BuildError::Sign(e.to_string()))?;
        let mut chain = Vec::with_capacity(2 + self.upstream_chain.len());
        chain.push(cert.der().clone());
        if !self.self_signed {
            chain.push(self.cert.clone());
            chain.extend(self.upstream_chain.iter().cloned());
        }
        Ok(chain)
    }

    /// Signs a CA certificate for another key of this trust domain (an intermediate, e.g. a
    /// downstream or rotated CA).
    pub fn sign_intermediate(
        &self,
        public_key: &impl PublicKeyData,
        td: &TrustDomain,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<CertificateDer<'static>, BuildError> {
        if now >= self.not_after {
            return Err(BuildError::BadIssuer(
                "CA certificate has expired; it cannot sign".into(),
            ));
        }
        let mut params = ca_params(td, ttl, now)?;
        params.not_after = to_offset(add_clamped(now, ttl).min(self.not_after));
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| BuildError::Sign(e.to_string()))?;
        Ok(cert.der().clone())
    }
}

/// Creates a self-signed root CA certificate for `td` with `key`.
pub fn self_signed_ca(
    key: &KeyPair,
    td: &TrustDomain,
    ttl: Duration,
    now: SystemTime,
) -> Result<CertificateDer<'static>, BuildError> {
    let params = ca_params(td, ttl, now)?;
    let cert = params
        .self_signed(key)
        .map_err(|e| BuildError::Sign(e.to_string()))?;
    Ok(cert.der().clone())
}

fn ca_params(
    td: &TrustDomain,
    ttl: Duration,
    now: SystemTime,
) -> Result<CertificateParams, BuildError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Sigil");
    params
        .distinguished_name
        .push(DnType::CommonName, td.as_str());
    params.subject_alt_names.push(SanType::URI(
        td.id_string()
            .try_into()
            .map_err(|_| BuildError::Sign("trust domain ID is not IA5".into()))?,
    ));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = to_offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now));
    params.not_after = to_offset(add_clamped(now, ttl));
    Ok(params)
}

/// A random positive 128-bit serial number.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        // Keep the full 128 bits of width so the DER integer is never shortened.
        bytes[0] = 0x01;
    }
    SerialNumber::from_slice(&bytes)
}

/// 9999-12-31T23:59:59Z: the latest time X.509 (RFC 5280 4.1.2.5) and `time` can express.
const MAX_CERT_TIME: i64 = 253_402_300_799;

/// `t + d`, saturating at [`MAX_CERT_TIME`] instead of panicking on huge TTLs.
fn add_clamped(t: SystemTime, d: Duration) -> SystemTime {
    let max = SystemTime::UNIX_EPOCH + Duration::from_secs(MAX_CERT_TIME.unsigned_abs());
    t.checked_add(d).map_or(max, |end| end.min(max))
}

/// Whole seconds (certificates carry no fractions), clamped to what a certificate can hold.
fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix_secs(t).clamp(0, MAX_CERT_TIME))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Converts Unix seconds to a `SystemTime`, clamping negative values to the epoch.
pub fn to_system_time(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Unix seconds of a `SystemTime` (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
