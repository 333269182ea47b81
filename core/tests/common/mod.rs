//! Fixtures shared by the integration tests. Everything is generated at test time.
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use sigil_core::keys::{self, KeyType};
use sigil_core::x509::{self, CaSigner, LeafParams};
use sigil_core::{SpiffeId, TrustDomain};

pub const HOUR: Duration = Duration::from_secs(3600);

pub fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A fixed, whole-second issuance time so validity bounds can be compared exactly.
pub fn now() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// A copy of a key pair (KeyPair is not Clone).
pub fn clone_key(key: &KeyPair) -> KeyPair {
    keys::from_pkcs8(&key.serialize_der()).unwrap()
}

/// A CA: its certificate, its key, and the Sigil signer over them.
pub struct Ca {
    pub cert: CertificateDer<'static>,
    pub key: KeyPair,
    pub signer: CaSigner,
}

impl Ca {
    /// A self-signed root made by `x509::self_signed_ca`.
    pub fn root(name: &str, kind: KeyType, ttl: Duration, now: SystemTime) -> Self {
        let key = keys::generate(kind).unwrap();
        let cert = x509::self_signed_ca(&key, &td(name), ttl, now).unwrap();
        Self::wrap(cert, key, vec![])
    }

    /// An intermediate made by `parent.sign_intermediate`.
    pub fn intermediate(parent: &Ca, name: &str, ttl: Duration, now: SystemTime) -> Self {
        let key = keys::generate(KeyType::EcP256).unwrap();
        let cert = parent
            .signer
            .sign_intermediate(&key, &td(name), ttl, now)
            .unwrap();
        Self::wrap(cert, key, vec![])
    }

    pub fn wrap(
        cert: CertificateDer<'static>,
        key: KeyPair,
        upstream: Vec<CertificateDer<'static>>,
    ) -> Self {
        let signer = CaSigner::new(cert.clone(), clone_key(&key), upstream).unwrap();
        Self { cert, key, signer }
    }

    /// An rcgen issuer over this CA, for crafting certificates Sigil itself would never make.
    pub fn issuer(&self) -> Issuer<'static, KeyPair> {
        Issuer::from_ca_cert_der(&self.cert, clone_key(&self.key)).unwrap()
    }

    /// Signs a leaf SVID the normal way; returns the chain and the leaf's key.
    pub fn leaf(
        &self,
        spiffe_id: &str,
        now: SystemTime,
    ) -> (Vec<CertificateDer<'static>>, KeyPair) {
        let key = keys::generate(KeyType::EcP256).unwrap();
        let chain = self
            .signer
            .sign_leaf(&key, &leaf_params(spiffe_id, HOUR, now))
            .unwrap();
        (chain, key)
    }
}

pub fn leaf_params(spiffe_id: &str, ttl: Duration, now: SystemTime) -> LeafParams {
    LeafParams {
        spiffe_id: id(spiffe_id),
        dns_names: vec![],
        ttl,
        now,
        rsa_key: false,
    }
}

/// rcgen parameters of a well-formed leaf SVID, for tests to break one property at a time.
pub fn good_leaf_params(uri: &str, now: SystemTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    p.not_before = (now - Duration::from_secs(60)).into();
    p.not_after = (now + HOUR).into();
    p
}

/// rcgen parameters of a well-formed CA certificate for `name`.
pub fn good_ca_params(name: &str, now: SystemTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.subject_alt_names = vec![SanType::URI(format!("spiffe://{name}").try_into().unwrap())];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = (now - Duration::from_secs(60)).into();
    p.not_after = (now + 24 * HOUR).into();
    p
}

/// Signs `params` for a fresh key with `issuer`; returns the DER certificate and the key.
pub fn sign_with(
    params: &CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> (CertificateDer<'static>, KeyPair) {
    let key = keys::generate(KeyType::EcP256).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.der().clone(), key)
}

/// Self-signs `params` with a fresh key and wraps it as a CA.
pub fn self_signed(params: &CertificateParams) -> Ca {
    let key = keys::generate(KeyType::EcP256).unwrap();
    let cert = params.self_signed(&key).unwrap().der().clone();
    let issuer_key = clone_key(&key);
    // CaSigner accepts any certificate; `signer` is only used by tests that need it.
    let signer = CaSigner::new(cert.clone(), issuer_key, vec![]).unwrap();
    Ca { cert, key, signer }
}
