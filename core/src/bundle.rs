//! Trust bundles: the X.509 and JWT authorities of one trust domain, in the SPIFFE bundle
//! format (a JWK set) and as PEM.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::id::TrustDomain;

const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

/// Why a bundle document is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Not JSON, or not a JWK set.
    #[error("bundle document is not a JWK set: {0}")]
    Json(String),
    /// A key lacks a member the SPIFFE bundle format requires.
    #[error("bundle key {index}: {reason}")]
    Key {
        /// Position in `keys`.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A certificate or public key is not parseable DER.
    #[error("bundle holds an unparseable certificate or key: {0}")]
    Der(String),
    /// PEM input without a usable CERTIFICATE block.
    #[error("PEM input is malformed: {0}")]
    Pem(String),
}

/// A JWT signing public key published in a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtAuthority {
    /// The `kid` a token names to pick this key.
    pub key_id: String,
    /// DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
    /// Unix seconds after which no token signed by it is valid (0 = unknown).
    pub expires_at: i64,
}

/// The trust anchors of one trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Whose anchors these are.
    pub trust_domain: TrustDomain,
    /// DER CA certificates that X.509-SVIDs of this domain chain to.
    pub x509_authorities: Vec<Vec<u8>>,
    /// Keys JWT-SVIDs of this domain are signed with.
    pub jwt_authorities: Vec<JwtAuthority>,
    /// Increases on every change (`spiffe_sequence`).
    pub sequence: u64,
    /// How often consumers should refetch, in seconds (`spiffe_refresh_hint`).
    pub refresh_hint: Option<u64>,
}

impl Bundle {
    /// An empty bundle for `td`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence: 0,
            refresh_hint: None,
        }
    }

    /// Encodes the SPIFFE bundle document.
    pub fn to_spiffe_json(&self) -> Result<String, BundleError> {
        let mut keys = Vec::new();
        for der in &self.x509_authorities {
            let (_, cert) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| BundleError::Der(e.to_string()))?;
            let mut jwk = public_jwk(cert.public_key())?;
            jwk.insert("use".into(), "x509-svid".into());
            jwk.insert(
                "x5c".into(),
                Value::Array(vec![STANDARD.encode(der).into()]),
            );
            keys.push(Value::Object(jwk));
        }
        keys.extend(self.jwt_keys_json()?);
        let mut doc = Map::new();
        doc.insert("keys".into(), Value::Array(keys));
        doc.insert("spiffe_sequence".into(), self.sequence.into());
        // BND-7: the refresh hint, when present, is positive; a zero hint is left out.
        if let Some(h) = self.refresh_hint.filter(|h| *h > 0) {
            doc.insert("spiffe_refresh_hint".into(), h.into());
        }
        serde_json::to_string_pretty(&Value::Object(doc))
            .map_err(|e| BundleError::Json(e.to_string()))
    }

    /// Encodes only the JWT authorities as a JWK set, as the Workload API's FetchJWTBundles
    /// serves them.
    pub fn to_jwks_json(&self) -> Result<Vec<u8>, BundleError> {
        let doc = serde_json::json!({ "keys": self.jwt_keys_json()? });
        serde_json::to_vec(&doc).map_err(|e| BundleError::Json(e.to_string()))
    }

    fn jwt_keys_json(&self) -> Result<Vec<Value>, BundleError> {
        let mut keys = Vec::new();
        for a in &self.jwt_authorities {
            let (_, spki) = <SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(
                &a.public_key_der,
            )
            .map_err(|e| BundleError::Der(e.to_string()))?;
            let mut jwk = public_jwk(&spki)?;
            jwk.insert("use".into(), "jwt-svid".into());
            jwk.insert("kid".into(), a.key_id.clone().into());
            keys.push(Value::Object(jwk));
        }
        Ok(keys)
    }

    /// Decodes a SPIFFE bundle document (or a plain JWK set) for `td`.
    pub fn from_spiffe_json(trust_domain: TrustDomain, doc: &[u8]) -> Result<Self, BundleError> {
        let v: Value = serde_json::from_slice(doc).map_err(|e| BundleError::Json(e.to_string()))?;
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| BundleError::Json("missing \"keys\" array".into()))?;
        let mut b = Self::new(trust_domain);
        b.sequence = v
            .get("spiffe_sequence")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        // BND-7: a hint is positive; zero is read as no hint, so a round trip keeps the bundle.
        b.refresh_hint = v
            .get("spiffe_refresh_hint")
            .and_then(Value::as_u64)
            .filter(|h| *h > 0);
        for (index, k) in keys.iter().enumerate() {
            let err = |reason: &str| BundleError::Key {
                index,
                reason: reason.to_owned(),
            };
            if k.get("kty").and_then(Value::as_str).is_none() {
                return Err(err("missing kty"));
            }
            match k.get("use").and_then(Value::as_str) {
                Some("x509-svid") => {
                    let x5c = k
                        .get("x5c")
                        .and_then(Value::as_array)
                        .ok_or_else(|| err("x509-svid key without x5c"))?;
                    let [one] = x5c.as_slice() else {
                        return Err(err("x5c must hold exactly one certificate"));
                    };
                    let der = one
                        .as_str()
                        .and_then(|s| STANDARD.decode(s).ok())
                        .ok_or_else(|| err("x5c is not base64"))?;
                    x509_parser::parse_x509_certificate(&der)
                        .map_err(|e| BundleError::Der(e.to_string()))?;
                    b.x509_authorities.push(der);
                }
                Some("jwt-svid") => {
                    let kid = k
                        .get("kid")
                        .and_then(Value::as_str)
                        .ok_or_else(|| err("jwt-svid key without kid"))?;
                    let public_key_der = spki_from_jwk(k).map_err(|r| err(&r))?;
                    b.jwt_authorities.push(JwtAuthority {
                        key_id: kid.to_owned(),
                        public_key_der,
                        expires_at: 0,
                    });
                }
                // Keys for other uses are not ours to interpret; skip them.
                _ => {}
            }
        }
        Ok(b)
    }

    /// The X.509 authorities as concatenated PEM CERTIFICATE blocks.
    pub fn to_pem(&self) -> String {
        self.x509_authorities
            .iter()
            .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone())))
            .collect()
    }

    /// Reads X.509 authorities from PEM CERTIFICATE blocks.
    pub fn from_pem(trust_domain: TrustDomain, text: &str) -> Result<Self, BundleError> {
        let blocks = pem::parse_many(text).map_err(|e| BundleError::Pem(e.to_string()))?;
        let mut b = Self::new(trust_domain);
        for p in blocks {
            if p.tag() != "CERTIFICATE" {
                continue;
            }
            x509_parser::parse_x509_certificate(p.contents())
                .map_err(|e| BundleError::Der(e.to_string()))?;
            b.x509_authorities.push(p.into_contents());
        }
        if b.x509_authorities.is_empty() {
            return Err(BundleError::Pem("no CERTIFICATE block".into()));
        }
        Ok(b)
    }
}

fn public_jwk(spki: &SubjectPublicKeyInfo<'_>) -> Result<Map<String, Value>, BundleError> {
    let mut m = Map::new();
    match spki.parsed().map_err(|e| BundleError::Der(e.to_string()))? {
        PublicKey::EC(point) => {
            let curve_oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            let (crv, len) = match curve_oid.as_str() {
                OID_P256 => ("P-256", 32),
                OID_P384 => ("P-384", 48),
                other => return Err(BundleError::Der(format!("unsupported curve {other}"))),
            };
            let data = point.data();
            if data.len() != 1 + 2 * len || data[0] != 4 {
                return Err(BundleError::Der("EC point is not uncompressed".into()));
            }
            m.insert("kty".into(), "EC".into());
            m.insert("crv".into(), crv.into());
            m.insert("x".into(), URL_SAFE_NO_PAD.encode(&data[1..=len]).into());
            m.insert("y".into(), URL_SAFE_NO_PAD.encode(&data[1 + len..]).into());
        }
        PublicKey::RSA(rsa) => {
            m.insert("kty".into(), "RSA".into());
            m.insert(
                "n".into(),
                URL_SAFE_NO_PAD.encode(strip_zeros(rsa.modulus)).into(),
            );
            m.insert(
                "e".into(),
                URL_SAFE_NO_PAD.encode(strip_zeros(rsa.exponent)).into(),
            );
        }
        _ => return Err(BundleError::Der("unsupported public key type".into())),
    }
    Ok(m)
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

fn b64field(k: &Value, name: &str) -> Result<Vec<u8>, String> {
    k.get(name)
        .and_then(Value::as_str)
        .and_then(|s| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
        .ok_or_else(|| format!("missing or non-base64url {name}"))
}

/// Rebuilds a DER SubjectPublicKeyInfo from a public JWK (EC P-256/P-384 or RSA).
fn spki_from_jwk(k: &Value) -> Result<Vec<u8>, String> {
    match k.get("kty").and_then(Value::as_str) {
        Some("EC") => {
            let (curve, len): (&[u8], usize) = match k.get("crv").and_then(Value::as_str) {
                Some("P-256") => (
                    &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
                    32,
                ),
                Some("P-384") => (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22], 48),
                _ => return Err("unsupported EC curve".into()),
            };
            let (x, y) = (b64field(k, "x")?, b64field(k, "y")?);
            if x.len() != len || y.len() != len {
                return Err("EC coordinates have the wrong length".into());
            }
            let ec_oid = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
            let alg = der_tlv(0x30, &[&ec_oid[..], curve].concat());
            let mut point = vec![0x00, 0x04];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Ok(der_tlv(0x30, &[alg, der_tlv(0x03, &point)].concat()))
        }
        Some("RSA") => {
            let (n, e) = (b64field(k, "n")?, b64field(k, "e")?);
            let rsa_oid = [
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
            ];
            let alg = der_tlv(0x30, &rsa_oid);
            let key = der_tlv(0x30, &[der_uint(&n), der_uint(&e)].concat());
            let mut bits = vec![0x00];
            bits.extend_from_slice(&key);
            Ok(der_tlv(0x30, &[alg, der_tlv(0x03, &bits)].concat()))
        }
        _ => Err("unsupported kty".into()),
    }
}

fn der_uint(v: &[u8]) -> Vec<u8> {
    let v = strip_zeros(v);
    let mut body = Vec::with_capacity(v.len() + 1);
    if v.first().is_none_or(|b| b & 0x80 != 0) {
        body.push(0);
    }
    body.extend_from_slice(v);
    der_tlv(0x02, &body)
}

fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = body.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(body);
    out
}
