//! Key generation and CSRs. Keys are made where they are used and never leave that process.

use rcgen::{
    CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PublicKeyData,
    SubjectPublicKeyInfo,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::prelude::FromDer;

/// Key algorithms Sigil generates. RSA keys cannot be generated with ring, so RSA is accepted
/// only where a key arrives from outside (an upstream authority or a CSR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: the default for CAs and workloads.
    #[default]
    EcP256,
    /// ECDSA on P-384 with SHA-384.
    EcP384,
}

impl KeyType {
    /// Parses the configuration spelling (`ec-p256`, `ec-p384`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ec-p256" => Some(Self::EcP256),
            "ec-p384" => Some(Self::EcP384),
            _ => None,
        }
    }
}

/// Errors from key handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The crypto library refused to generate or load a key.
    #[error("key error: {0}")]
    Crypto(String),
    /// A CSR could not be parsed.
    #[error("CSR is malformed")]
    MalformedCsr,
    /// A CSR's self-signature does not verify, so its sender does not hold the key.
    #[error("CSR signature is invalid")]
    BadCsrSignature,
    /// The CSR's key algorithm is not one we sign for.
    #[error("CSR key algorithm is not supported")]
    UnsupportedCsrKey,
}

/// Generates a fresh private key.
pub fn generate(kind: KeyType) -> Result<KeyPair, KeyError> {
    let alg = match kind {
        KeyType::EcP256 => &PKCS_ECDSA_P256_SHA256,
        KeyType::EcP384 => &PKCS_ECDSA_P384_SHA384,
    };
    KeyPair::generate_for(alg).map_err(|e| KeyError::Crypto(e.to_string()))
}

/// Loads a PKCS#8 DER private key (ECDSA P-256/P-384, RSA, Ed25519).
pub fn from_pkcs8(der: &[u8]) -> Result<KeyPair, KeyError> {
    KeyPair::try_from(der).map_err(|e| KeyError::Crypto(e.to_string()))
}

/// Builds a CSR for `key`. The subject is empty: the server decides the identity, so nothing in
/// the CSR but the public key is ever used.
pub fn csr_der(key: &KeyPair) -> Result<Vec<u8>, KeyError> {
    let params = CertificateParams::default();
    let mut params = params;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(key)
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
    Ok(csr.der().to_vec())
}

/// The public key of a CSR whose signature verified: the only part of a CSR the CA trusts.
///
/// The key's algorithm comes from the CSR's SubjectPublicKeyInfo, never from the algorithm the
/// CSR happens to be signed with (a P-256 key may sign its CSR with ecdsa-with-SHA384).
#[derive(Debug, Clone)]
pub struct CsrKey(SubjectPublicKeyInfo);

impl CsrKey {
    /// DER SubjectPublicKeyInfo of the key.
    pub fn spki_der(&self) -> Vec<u8> {
        self.0.subject_public_key_info()
    }

    /// True for RSA keys (their leaves also need keyEncipherment).
    pub fn is_rsa(&self) -> bool {
        let alg = PublicKeyData::algorithm(&self.0);
        alg == &rcgen::PKCS_RSA_SHA256
            || alg == &rcgen::PKCS_RSA_SHA384
            || alg == &rcgen::PKCS_RSA_SHA512
    }
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        PublicKeyData::algorithm(&self.0)
    }
}

/// Parses a DER CSR and verifies its signature (proof of possession of the key).
pub fn parse_csr(der: &[u8]) -> Result<CsrKey, KeyError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|_| KeyError::MalformedCsr)?;
    if !rest.is_empty() {
        return Err(KeyError::MalformedCsr);
    }
    csr.verify_signature().map_err(|e| match e {
        X509Error::SignatureUnsupportedAlgorithm => KeyError::UnsupportedCsrKey,
        _ => KeyError::BadCsrSignature,
    })?;
    let spki = SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|_| KeyError::UnsupportedCsrKey)?;
    Ok(CsrKey(spki))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_round_trip_and_tamper() {
        let key = generate(KeyType::EcP256).unwrap();
        let der = csr_der(&key).unwrap();
        let parsed = parse_csr(&der).unwrap();
        assert_eq!(parsed.der_bytes(), key.der_bytes());
        assert!(!parsed.is_rsa());

        let mut bad = der.clone();
        let n = bad.len();
        bad[n - 3] ^= 0x55;
        assert!(parse_csr(&bad).is_err());
        assert!(matches!(parse_csr(b"garbage"), Err(KeyError::MalformedCsr)));
    }

    #[test]
    fn p384_keys() {
        let key = generate(KeyType::EcP384).unwrap();
        let der = key.serialize_der();
        let back = from_pkcs8(&der).unwrap();
        assert_eq!(back.der_bytes(), key.der_bytes());
    }
}
