//! Key generation and CSRs. Keys are made where they are used and never leave that process.

use rcgen::{
    CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PublicKeyData,
    SubjectPublicKeyInfo,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::prelude::FromDer;

/// Key algorithms Sigil generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: the default for CAs and workloads.
    #[default]
    EcP256,
    /// ECDSA on P-384 with SHA-384.
    EcP384,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256 signatures (generated with the `rsa` crate, since ring
    /// cannot generate RSA keys; ring still does the signing).
    Rsa2048,
}

impl KeyType {
    /// Parses the configuration spelling (`ec-p256`, `ec-p384`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ec-p256" => Some(Self::EcP256),
            "ec-p384" => Some(Self::EcP384),
            "rsa-2048" => Some(Self::Rsa2048),
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
        KeyType::Rsa2048 => return generate_rsa(2048),
    };
    KeyPair::generate_for(alg).map_err(|e| KeyError::Crypto(e.to_string()))
}

fn generate_rsa(bits: usize) -> Result<KeyPair, KeyError> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rand_core06::OsRng, bits)
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
    let der = key
        .to_pkcs8_der()
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
    KeyPair::from_pkcs8_der_and_sign_algo(&der.as_bytes().into(), &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| KeyError::Crypto(e.to_string()))
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

    /// DER TLV with a definite length.
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match body.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(body);
        out
    }

    const ECDSA_WITH_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    const ECDSA_WITH_SHA384: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];

    /// ECDSA by hand, so tests can pair any curve with any hash (ring signs only P-256/SHA-256
    /// and P-384/SHA-384). `key` is an rcgen key pair; `digest` the message hash.
    fn ecdsa_sign(key: &KeyPair, digest: &[u8]) -> Vec<u8> {
        use x509_parser::num_bigint::BigUint;
        let (order_hex, len) = if key.algorithm() == &PKCS_ECDSA_P256_SHA256 {
            (
                "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551",
                32,
            )
        } else {
            (
                "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf\
                 581a0db248b0a77aecec196accc52973",
                48,
            )
        };
        let n = BigUint::parse_bytes(order_hex.as_bytes(), 16).unwrap();
        // The private scalar sits in the PKCS#8 ECPrivateKey after `02 01 01 04 <len>`.
        let scalar = |k: &KeyPair| {
            let der = k.serialize_der();
            let at = der
                .windows(5)
                .position(|w| w == [0x02, 0x01, 0x01, 0x04, len as u8])
                .unwrap();
            BigUint::from_bytes_be(&der[at + 5..at + 5 + len])
        };
        let d = scalar(key);
        // A fresh key pair is a nonce k together with the point kG.
        let eph = KeyPair::generate_for(key.algorithm()).unwrap();
        let k = scalar(&eph);
        let r = BigUint::from_bytes_be(&eph.public_key_raw()[1..=len]) % &n;
        let e = BigUint::from_bytes_be(&digest[..digest.len().min(len)]);
        let k_inv = k.modpow(&(&n - 2u32), &n);
        let s = (k_inv * ((e + &r * d) % &n)) % &n;
        let int = |v: &BigUint| {
            let mut b = v.to_bytes_be();
            if b[0] & 0x80 != 0 {
                b.insert(0, 0);
            }
            tlv(0x02, &b)
        };
        tlv(0x30, &[int(&r), int(&s)].concat())
    }

    /// A CSR for `spki` with an empty subject, signed by `signer` with `hash`, labelled
    /// `sig_alg`: lets tests pick curve/hash combinations rcgen does not produce.
    fn hand_made_csr(
        spki: &[u8],
        signer: &KeyPair,
        hash: &'static ring::digest::Algorithm,
        sig_alg: &[u8],
    ) -> Vec<u8> {
        let info = tlv(
            0x30,
            &[&[0x02, 0x01, 0x00][..], &[0x30, 0x00], spki, &[0xa0, 0x00]].concat(),
        );
        let sig = ecdsa_sign(signer, ring::digest::digest(hash, &info).as_ref());
        let mut bits = vec![0x00];
        bits.extend_from_slice(&sig);
        tlv(0x30, &[info, tlv(0x30, sig_alg), tlv(0x03, &bits)].concat())
    }

    #[test]
    fn hand_made_csrs_verify() {
        // The builder itself is sound: the usual pairings are accepted.
        use ring::digest::{SHA256, SHA384};
        for (kind, hash, oid) in [
            (KeyType::EcP256, &SHA256, ECDSA_WITH_SHA256),
            (KeyType::EcP384, &SHA384, ECDSA_WITH_SHA384),
        ] {
            let key = generate(kind).unwrap();
            let spki = key.subject_public_key_info();
            let parsed = parse_csr(&hand_made_csr(&spki, &key, hash, oid)).unwrap();
            assert_eq!(parsed.spki_der(), spki);
        }
    }

    #[test]
    fn csr_key_algorithm_comes_from_the_key_not_the_signature() {
        use ring::digest::{SHA256, SHA384};
        // A P-256 key signing its CSR with SHA-384 (allowed, and what some tools do).
        let key = generate(KeyType::EcP256).unwrap();
        let spki = key.subject_public_key_info();
        let parsed = parse_csr(&hand_made_csr(&spki, &key, &SHA384, ECDSA_WITH_SHA384)).unwrap();
        assert_eq!(parsed.spki_der(), spki, "a P-256 key stays a P-256 key");
        assert_eq!(PublicKeyData::algorithm(&parsed), &PKCS_ECDSA_P256_SHA256);
        // And a P-384 key signing with SHA-256.
        let key = generate(KeyType::EcP384).unwrap();
        let spki = key.subject_public_key_info();
        let parsed = parse_csr(&hand_made_csr(&spki, &key, &SHA256, ECDSA_WITH_SHA256)).unwrap();
        assert_eq!(parsed.spki_der(), spki);
        assert_eq!(PublicKeyData::algorithm(&parsed), &PKCS_ECDSA_P384_SHA384);
        assert!(!parsed.is_rsa());
    }

    #[test]
    fn csr_signed_by_another_key_is_refused() {
        use ring::digest::SHA256;
        let claimed = generate(KeyType::EcP256).unwrap();
        let signer = generate(KeyType::EcP256).unwrap();
        let csr = hand_made_csr(
            &claimed.subject_public_key_info(),
            &signer,
            &SHA256,
            ECDSA_WITH_SHA256,
        );
        assert!(matches!(parse_csr(&csr), Err(KeyError::BadCsrSignature)));
        // Right key, wrong hash label.
        let csr = hand_made_csr(
            &claimed.subject_public_key_info(),
            &claimed,
            &SHA256,
            ECDSA_WITH_SHA384,
        );
        assert!(matches!(parse_csr(&csr), Err(KeyError::BadCsrSignature)));
    }

    #[test]
    fn tampered_csrs_are_refused() {
        for kind in [KeyType::EcP256, KeyType::EcP384] {
            let key = generate(kind).unwrap();
            let der = csr_der(&key).unwrap();
            assert_eq!(
                parse_csr(&der).unwrap().spki_der(),
                key.subject_public_key_info()
            );

            // Last byte of the signature: still well-formed DER, wrong signature.
            let mut bad = der.clone();
            *bad.last_mut().unwrap() ^= 0x01;
            assert!(matches!(parse_csr(&bad), Err(KeyError::BadCsrSignature)));

            // A byte of the public key: the signature no longer matches what was signed.
            let spki = key.subject_public_key_info();
            let at = der.windows(spki.len()).position(|w| w == spki).unwrap();
            let mut bad = der.clone();
            bad[at + spki.len() - 1] ^= 0x01;
            assert!(matches!(parse_csr(&bad), Err(KeyError::BadCsrSignature)));

            // Truncated, or with bytes after the CSR.
            assert!(matches!(
                parse_csr(&der[..der.len() - 1]),
                Err(KeyError::MalformedCsr)
            ));
            let mut long = der.clone();
            long.push(0);
            assert!(matches!(parse_csr(&long), Err(KeyError::MalformedCsr)));
            assert!(matches!(parse_csr(&[]), Err(KeyError::MalformedCsr)));
        }
    }

    #[test]
    fn key_type_parse() {
        assert_eq!(KeyType::parse("ec-p256"), Some(KeyType::EcP256));
        assert_eq!(KeyType::parse("ec-p384"), Some(KeyType::EcP384));
        assert_eq!(KeyType::parse("rsa-2048"), Some(KeyType::Rsa2048));
        assert_eq!(KeyType::parse("rsa-4096"), None);
        assert_eq!(KeyType::default(), KeyType::EcP256);
        assert!(from_pkcs8(b"junk").is_err());
    }

    #[test]
    fn rsa_keys_sign_csrs() {
        let key = generate(KeyType::Rsa2048).unwrap();
        let parsed = parse_csr(&csr_der(&key).unwrap()).unwrap();
        assert!(parsed.is_rsa());

        // An RSA CA issues a leaf that validates against it.
        let td = crate::TrustDomain::new("example.org").unwrap();
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(86400);
        let cert = crate::x509::self_signed_ca(&key, &td, day, now).unwrap();
        let ca = crate::x509::CaSigner::new(cert.clone(), key, vec![]).unwrap();
        let leaf_key = generate(KeyType::EcP256).unwrap();
        let params = crate::x509::LeafParams {
            spiffe_id: td.id_with_path("/w").unwrap(),
            dns_names: vec![],
            ttl: std::time::Duration::from_secs(60),
            now,
            rsa_key: false,
        };
        let chain = ca.sign_leaf(&leaf_key, &params).unwrap();
        let id = crate::validate_x509_svid(&chain, &[cert], now).unwrap();
        assert_eq!(id.path(), "/w");
    }

    #[test]
    fn p384_keys() {
        let key = generate(KeyType::EcP384).unwrap();
        let der = key.serialize_der();
        let back = from_pkcs8(&der).unwrap();
        assert_eq!(back.der_bytes(), key.der_bytes());
    }
}
