//! JWT-SVIDs (JWT-SVID.md): signing with ES256/ES384 keys and verification against the JWT
//! authorities of a bundle. Pure logic: the caller supplies the time and the bundles, so the
//! server (which signs) and the agent (which validates for workloads) share one implementation.
//!
//! Tokens are JWS compact serializations with the header `{"alg","kid","typ":"JWT"}` and the
//! claims `sub` (the SPIFFE ID), `aud` (always an array), `exp`, `iat` and, when configured,
//! `iss`. ECDSA signatures are the fixed-width `r || s` form JWS requires (RFC 7518 section 3.4),
//! never ASN.1 DER.
//!
//! Verification accepts only the SPIFFE allow-list (RS256/384/512, ES256/384/512,
//! PS256/384/512): `none` and the HMAC algorithms are refused before anything else is looked at,
//! so a forged token can never pick a "key" of its own. ES512 is on the allow-list but ring has
//! no P-521, so such tokens are refused as unverifiable rather than accepted unchecked.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{Map, Value};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::bundle::{Bundle, JwtAuthority};
use crate::id::{SpiffeId, TrustDomain};

/// Longest token accepted for verification. Real JWT-SVIDs are well under 2 KiB even with RSA
/// 4096 keys; the bound keeps a hostile caller from making us decode megabytes of base64.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Clock skew tolerated for `iat` and `nbf` (a token minted by a server whose clock runs a little
/// ahead is still accepted). `exp` gets no leeway: an expired token is expired.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// Length of generated key IDs (alphanumeric, as SPIRE's).
const KEY_ID_LEN: usize = 32;

/// Why a token cannot be signed or is not a valid JWT-SVID. Each variant is one reason a relying
/// party would want to see in a log; none of them echoes key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not a JWS compact serialization with base64url JSON parts.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// `alg` is missing or outside the SPIFFE allow-list (e.g. `none`, `HS256`).
    #[error(
        "token algorithm {0:?} is not allowed (allowed: RS256, RS384, RS512, ES256, ES384, ES512, PS256, PS384, PS512)"
    )]
    DisallowedAlgorithm(String),
    /// `alg` is on the allow-list but this implementation cannot verify it (ES512).
    #[error("token algorithm {0} cannot be verified by this implementation")]
    UnsupportedAlgorithm(JwtAlg),
    /// The header has no `kid`, so no bundle key can be chosen.
    #[error("token header has no key ID (kid)")]
    MissingKeyId,
    /// The header's `typ` is present but not `JWT` or `JOSE`.
    #[error("token header typ must be \"JWT\" or \"JOSE\"")]
    BadType,
    /// The header carries a member other than `alg`, `kid` and `typ` (such as `crit` or `jwk`).
    #[error("token header member {0:?} is not allowed in a JWT-SVID")]
    UnexpectedHeader(String),
    /// A required claim is missing or has the wrong JSON type.
    #[error("token claim {0:?} is missing or invalid")]
    BadClaim(&'static str),
    /// `sub` is not a SPIFFE ID naming a workload.
    #[error("token subject is not a workload SPIFFE ID: {0}")]
    BadSubject(String),
    /// No bundle for the subject's trust domain is known.
    #[error("no JWT bundle for trust domain {0}")]
    NoBundle(TrustDomain),
    /// The bundle of the subject's trust domain has no key with this `kid`.
    #[error("no JWT key with key ID {kid:?} in the bundle of {trust_domain}")]
    UnknownKeyId {
        /// The token's `kid`.
        kid: String,
        /// Whose bundle was searched.
        trust_domain: TrustDomain,
    },
    /// The key `kid` names is of another type than `alg` needs (e.g. an RSA key for ES256).
    #[error("key {kid:?} cannot verify {alg} signatures")]
    KeyAlgorithmMismatch {
        /// The token's `kid`.
        kid: String,
        /// The token's `alg`.
        alg: JwtAlg,
    },
    /// The signature does not verify: the token was altered or signed by another key.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is not in the future.
    #[error("token has expired")]
    Expired,
    /// `iat` is further in the future than the clock skew allows.
    #[error("token was issued in the future")]
    IssuedInFuture,
    /// `nbf` is further in the future than the clock skew allows.
    #[error("token is not yet valid")]
    NotYetValid,
    /// The requested audience is not among the token's `aud` values.
    #[error("audience {wanted:?} is not in the token audience {got:?}")]
    AudienceMismatch {
        /// The audience the caller asked about.
        wanted: String,
        /// The token's `aud`.
        got: Vec<String>,
    },
    /// The private key could not be loaded or used to sign.
    #[error("JWT signing key: {0}")]
    Key(String),
    /// The public key in a bundle is not a usable DER SubjectPublicKeyInfo.
    #[error("JWT key {0:?} in the bundle is unusable")]
    BadPublicKey(String),
}

/// JWS algorithms of the SPIFFE JWT-SVID allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwtAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// ECDSA P-521 with SHA-512 (allowed, but not verifiable here).
    Es512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
}

impl JwtAlg {
    /// Parses a header `alg`; `None` for anything off the allow-list (`none`, `HS256`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "ES512" => Self::Es512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            _ => return None,
        })
    }

    /// The JWS name, as it appears in `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Es512 => "ES512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
        }
    }
}

impl fmt::Display for JwtAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Key types the server can generate for signing JWT-SVIDs. ES512 is absent because common
/// clients (jsonwebtoken, hence rust-spiffe) cannot verify it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum JwtKeyType {
    /// ECDSA P-256, tokens signed ES256: the default, verifiable everywhere.
    #[default]
    Es256,
    /// ECDSA P-384, tokens signed ES384.
    Es384,
    /// RSA 2048, tokens signed RS256 (for relying parties that only take RSA).
    Rs256,
}

impl JwtKeyType {
    /// Parses the configuration spelling: `ES256`/`ES384`/`RS256` (any case) or
    /// `ec-p256`/`ec-p384`/`rsa-2048`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "es256" | "ec-p256" => Some(Self::Es256),
            "es384" | "ec-p384" => Some(Self::Es384),
            "rs256" | "rsa-2048" => Some(Self::Rs256),
            _ => None,
        }
    }

    /// The JWS algorithm tokens signed with such a key carry.
    pub fn alg(self) -> JwtAlg {
        match self {
            Self::Es256 => JwtAlg::Es256,
            Self::Es384 => JwtAlg::Es384,
            Self::Rs256 => JwtAlg::Rs256,
        }
    }

    /// The key type of a DER SubjectPublicKeyInfo this module produced (P-256, P-384 or RSA),
    /// e.g. to tell which algorithm a stored key signs with; `None` for any other key.
    pub fn of_public_key(spki_der: &[u8]) -> Option<Self> {
        if spki_der.starts_with(&[0x30, 0x82])
            && spki_der.get(4..4 + RSA_ALG_ID.len()) == Some(RSA_ALG_ID)
        {
            return Some(Self::Rs256);
        }
        [Self::Es256, Self::Es384].into_iter().find(|k| {
            let prefix = k.spki_prefix();
            let point = match k {
                Self::Es256 => 65,
                _ => 97,
            };
            spki_der.len() == prefix.len() + point && spki_der.starts_with(prefix)
        })
    }

    fn signing_alg(self) -> &'static signature::EcdsaSigningAlgorithm {
        match self {
            Self::Es384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            _ => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        }
    }

    /// DER prefix of the SubjectPublicKeyInfo (algorithm identifier and BIT STRING header) that
    /// precedes the uncompressed point.
    fn spki_prefix(self) -> &'static [u8] {
        match self {
            Self::Es256 | Self::Rs256 => &[
                0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
            ],
            Self::Es384 => &[
                0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
            ],
        }
    }
}

/// DER AlgorithmIdentifier of rsaEncryption (OID 1.2.840.113549.1.1.1, NULL parameters).
const RSA_ALG_ID: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// Wraps a PKCS#1 RSAPublicKey into a SubjectPublicKeyInfo.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
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
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    tlv(0x30, &[RSA_ALG_ID.to_vec(), tlv(0x03, &bits)].concat())
}

/// A fresh random key ID: 32 ASCII letters and digits, safe in headers, JWKS and file names.
pub fn new_key_id() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(KEY_ID_LEN)
        .map(char::from)
        .collect()
}

/// A freshly generated signing key: the PKCS#8 document to persist and its public half.
pub struct GeneratedKey {
    /// PKCS#8 DER private key (secret).
    pub pkcs8: Vec<u8>,
    /// DER SubjectPublicKeyInfo, for the bundle.
    pub public_key_der: Vec<u8>,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("pkcs8", &"<redacted>")
            .finish()
    }
}

/// Generates a JWT signing key of `kind`.
pub fn generate_key(kind: JwtKeyType) -> Result<GeneratedKey, JwtError> {
    let pkcs8 = if kind == JwtKeyType::Rs256 {
        crate::keys::generate(crate::keys::KeyType::Rsa2048)
            .map_err(|e| JwtError::Key(e.to_string()))?
            .serialize_der()
    } else {
        let rng = SystemRandom::new();
        EcdsaKeyPair::generate_pkcs8(kind.signing_alg(), &rng)
            .map_err(|_| JwtError::Key("key generation failed".into()))?
            .as_ref()
            .to_vec()
    };
    let signer = JwtSigner::from_pkcs8(String::new(), &pkcs8)?;
    Ok(GeneratedKey {
        public_key_der: signer.public_key_der(),
        pkcs8,
    })
}

/// The private half of a signing key.
enum SigningKey {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// The claims of a JWT-SVID to sign.
#[derive(Clone, Debug)]
pub struct JwtClaims<'a> {
    /// `sub`: the workload's SPIFFE ID.
    pub subject: &'a SpiffeId,
    /// `aud`: at least one audience.
    pub audience: &'a [String],
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// `iss`, when the server is configured with one.
    pub issuer: Option<&'a str>,
}

/// An ECDSA or RSA key that signs JWT-SVIDs under a key ID. Cheap to share behind an `Arc`;
/// signing takes `&self`.
pub struct JwtSigner {
    kind: JwtKeyType,
    kid: String,
    key: SigningKey,
    rng: SystemRandom,
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never prints key material.
        f.debug_struct("JwtSigner")
            .field("kid", &self.kid)
            .field("alg", &self.kind.alg())
            .finish()
    }
}

impl JwtSigner {
    /// Loads a PKCS#8 ECDSA P-256/P-384 or RSA key that will sign under `kid`.
    pub fn from_pkcs8(kid: String, pkcs8: &[u8]) -> Result<Self, JwtError> {
        let rng = SystemRandom::new();
        for kind in [JwtKeyType::Es256, JwtKeyType::Es384] {
            if let Ok(key) = EcdsaKeyPair::from_pkcs8(kind.signing_alg(), pkcs8, &rng) {
                return Ok(Self {
                    kind,
                    kid,
                    key: SigningKey::Ec(key),
                    rng,
                });
            }
        }
        if let Ok(key) = RsaKeyPair::from_pkcs8(pkcs8) {
            return Ok(Self {
                kind: JwtKeyType::Rs256,
                kid,
                key: SigningKey::Rsa(key),
                rng,
            });
        }
        Err(JwtError::Key(
            "not a PKCS#8 ECDSA P-256/P-384 or RSA private key".into(),
        ))
    }

    /// The `kid` tokens carry.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The `alg` tokens carry.
    pub fn alg(&self) -> JwtAlg {
        self.kind.alg()
    }

    /// The key type.
    pub fn key_type(&self) -> JwtKeyType {
        self.kind
    }

    /// DER SubjectPublicKeyInfo of the key, as bundles publish it.
    pub fn public_key_der(&self) -> Vec<u8> {
        match &self.key {
            SigningKey::Ec(k) => {
                let mut out = self.kind.spki_prefix().to_vec();
                out.extend_from_slice(k.public_key().as_ref());
                out
            }
            SigningKey::Rsa(k) => rsa_spki(k.public().as_ref()),
        }
    }

    /// Signs `claims` into a compact JWS.
    pub fn sign(&self, claims: &JwtClaims<'_>) -> Result<String, JwtError> {
        if claims.audience.is_empty() || claims.audience.iter().any(String::is_empty) {
            return Err(JwtError::BadClaim("aud"));
        }
        let header = serde_json::json!({
            "alg": self.alg().as_str(),
            "kid": self.kid,
            "typ": "JWT",
        });
        let mut payload = Map::new();
        payload.insert("sub".into(), claims.subject.to_string().into());
        payload.insert(
            "aud".into(),
            Value::Array(claims.audience.iter().cloned().map(Value::from).collect()),
        );
        payload.insert("exp".into(), claims.expires_at.into());
        payload.insert("iat".into(), claims.issued_at.into());
        if let Some(iss) = claims.issuer {
            payload.insert("iss".into(), iss.into());
        }
        let mut token = b64_json(&header)?;
        token.push('.');
        token.push_str(&b64_json(&Value::Object(payload))?);
        let sig = match &self.key {
            SigningKey::Ec(k) => k
                .sign(&self.rng, token.as_bytes())
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| JwtError::Key("signing failed".into()))?,
            SigningKey::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    token.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| JwtError::Key("signing failed".into()))?;
                sig
            }
        };
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(&sig));
        Ok(token)
    }
}

fn b64_json(v: &Value) -> Result<String, JwtError> {
    let bytes = serde_json::to_vec(v).map_err(|e| JwtError::Key(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A token that passed [`verify`].
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedJwt {
    /// `sub`.
    pub spiffe_id: SpiffeId,
    /// `kid` of the key that verified it.
    pub key_id: String,
    /// `alg` it was signed with.
    pub alg: JwtAlg,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// Every claim of the payload, as JSON.
    pub claims: Map<String, Value>,
}

/// The decoded, not yet verified, parts of a token.
#[derive(Debug)]
struct Parts<'a> {
    alg: JwtAlg,
    kid: String,
    claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn b64_decode(part: &str, what: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(format!("{what} is not base64url")))
}

fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, JwtError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed(format!("{what} is not a JSON object"))),
    }
}

fn split(token: &str) -> Result<Parts<'_>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLong);
    }
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(JwtError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let header = json_object(&b64_decode(h, "header")?, "header")?;
    // The algorithm is checked first: `none` and HMAC tokens go no further.
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let alg =
        JwtAlg::parse(alg_name).ok_or_else(|| JwtError::DisallowedAlgorithm(alg_name.into()))?;
    for name in header.keys() {
        if !matches!(name.as_str(), "alg" | "kid" | "typ") {
            return Err(JwtError::UnexpectedHeader(name.clone()));
        }
    }
    let kid = match header.get("kid") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        _ => return Err(JwtError::MissingKeyId),
    };
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if t == "JWT" || t == "JOSE" => {}
        Some(_) => return Err(JwtError::BadType),
    }
    let claims = json_object(&b64_decode(p, "payload")?, "payload")?;
    let signature = b64_decode(s, "signature")?;
    if signature.is_empty() {
        return Err(JwtError::BadSignature);
    }
    Ok(Parts {
        alg,
        kid,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

/// A NumericDate claim as whole seconds. Fractions are rounded down, so a fractional `exp` never
/// extends a token's lifetime.
fn numeric(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => {
            if let Some(i) = v.as_i64() {
                return Ok(Some(i));
            }
            match v.as_f64() {
                Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.floor() as i64)),
                _ => Err(JwtError::BadClaim(name)),
            }
        }
    }
}

fn audiences(claims: &Map<String, Value>) -> Result<Vec<String>, JwtError> {
    let aud = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtError::BadClaim("aud"))?,
        _ => return Err(JwtError::BadClaim("aud")),
    };
    if aud.is_empty() {
        return Err(JwtError::BadClaim("aud"));
    }
    Ok(aud)
}

/// The ring verification algorithm for `alg` with the key in `spki_der`, checking that the key
/// is of the kind `alg` needs, and the raw key bytes ring wants.
fn verifier(
    alg: JwtAlg,
    kid: &str,
    spki_der: &[u8],
) -> Result<(&'static dyn signature::VerificationAlgorithm, Vec<u8>), JwtError> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|_| JwtError::BadPublicKey(kid.to_owned()))?;
    let parsed = spki
        .parsed()
        .map_err(|_| JwtError::BadPublicKey(kid.to_owned()))?;
    let mismatch = || JwtError::KeyAlgorithmMismatch {
        kid: kid.to_owned(),
        alg,
    };
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let raw = spki.subject_public_key.data.to_vec();
    let alg_impl: &'static dyn signature::VerificationAlgorithm = match (alg, &parsed) {
        (JwtAlg::Es256, PublicKey::EC(_)) if curve.as_deref() == Some("1.2.840.10045.3.1.7") => {
            &signature::ECDSA_P256_SHA256_FIXED
        }
        (JwtAlg::Es384, PublicKey::EC(_)) if curve.as_deref() == Some("1.3.132.0.34") => {
            &signature::ECDSA_P384_SHA384_FIXED
        }
        (JwtAlg::Es512, _) => return Err(JwtError::UnsupportedAlgorithm(alg)),
        (JwtAlg::Rs256, PublicKey::RSA(_)) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (JwtAlg::Rs384, PublicKey::RSA(_)) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (JwtAlg::Rs512, PublicKey::RSA(_)) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (JwtAlg::Ps256, PublicKey::RSA(_)) => &signature::RSA_PSS_2048_8192_SHA256,
        (JwtAlg::Ps384, PublicKey::RSA(_)) => &signature::RSA_PSS_2048_8192_SHA384,
        (JwtAlg::Ps512, PublicKey::RSA(_)) => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return Err(mismatch()),
    };
    Ok((alg_impl, raw))
}

/// Verifies a JWT-SVID for `audience` at `now` (Unix seconds) against `bundles`: the key the
/// token's `kid` names must be in the JWT authorities of the bundle of the `sub`'s trust domain.
///
/// Checks, in order: size and structure, `alg` allow-list, header members, `sub`, key lookup,
/// signature, then `exp` (strictly in the future), `iat`/`nbf` (not beyond [`LEEWAY`] in the
/// future) and `aud` (contains `audience`). The claims are read for key lookup before the
/// signature is checked, but nothing from them is trusted until it verifies.
pub fn verify(
    token: &str,
    audience: &str,
    bundles: &[&Bundle],
    now: i64,
) -> Result<VerifiedJwt, JwtError> {
    let parts = split(token)?;
    let sub = parts
        .claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or(JwtError::BadClaim("sub"))?;
    let spiffe_id =
        SpiffeId::parse_workload(sub).map_err(|e| JwtError::BadSubject(e.to_string()))?;
    let td = spiffe_id.trust_domain();
    let bundle = bundles
        .iter()
        .find(|b| &b.trust_domain == td)
        .ok_or_else(|| JwtError::NoBundle(td.clone()))?;
    let key: &JwtAuthority = bundle
        .jwt_authorities
        .iter()
        .find(|a| a.key_id == parts.kid)
        .ok_or_else(|| JwtError::UnknownKeyId {
            kid: parts.kid.clone(),
            trust_domain: td.clone(),
        })?;
    let (alg_impl, raw) = verifier(parts.alg, &parts.kid, &key.public_key_der)?;
    signature::UnparsedPublicKey::new(alg_impl, raw)
        .verify(parts.signing_input.as_bytes(), &parts.signature)
        .map_err(|_| JwtError::BadSignature)?;

    let leeway = i64::try_from(LEEWAY.as_secs()).unwrap_or(0);
    let exp = numeric(&parts.claims, "exp")?.ok_or(JwtError::BadClaim("exp"))?;
    if now >= exp {
        return Err(JwtError::Expired);
    }
    if let Some(iat) = numeric(&parts.claims, "iat")?
        && iat > now.saturating_add(leeway)
    {
        return Err(JwtError::IssuedInFuture);
    }
    if let Some(nbf) = numeric(&parts.claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(JwtError::NotYetValid);
    }
    let aud = audiences(&parts.claims)?;
    if !aud.iter().any(|a| a == audience) {
        return Err(JwtError::AudienceMismatch {
            wanted: audience.to_owned(),
            got: aud,
        });
    }
    Ok(VerifiedJwt {
        spiffe_id,
        key_id: parts.kid,
        alg: parts.alg,
        expires_at: exp,
        claims: parts.claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn sub() -> SpiffeId {
        SpiffeId::parse("spiffe://example.org/workload").unwrap()
    }

    #[test]
    fn rs256_keys_sign_verifiable_tokens() {
        let k = generate_key(JwtKeyType::Rs256).unwrap();
        assert_eq!(
            JwtKeyType::of_public_key(&k.public_key_der),
            Some(JwtKeyType::Rs256)
        );
        let s = JwtSigner::from_pkcs8("rsa-kid".into(), &k.pkcs8).unwrap();
        assert_eq!(s.alg(), JwtAlg::Rs256);
        assert_eq!(s.public_key_der(), k.public_key_der);
        let sub = SpiffeId::parse("spiffe://example.org/w").unwrap();
        let aud = vec!["A".to_owned()];
        let token = s
            .sign(&JwtClaims {
                subject: &sub,
                audience: &aud,
                issued_at: NOW,
                expires_at: NOW + 300,
                issuer: None,
            })
            .unwrap();
        let mut b = Bundle::new(td());
        b.jwt_authorities.push(JwtAuthority {
            key_id: "rsa-kid".into(),
            public_key_der: k.public_key_der.clone(),
            expires_at: 0,
        });
        let v = verify(&token, "A", &[&b], NOW).unwrap();
        assert_eq!(v.alg, JwtAlg::Rs256);
        assert!(verify(&token, "B", &[&b], NOW).is_err());
        // The bundle document carries the RSA key as a JWK and reads back identically.
        let doc = b.to_spiffe_json().unwrap();
        let back = Bundle::from_spiffe_json(td(), doc.as_bytes()).unwrap();
        assert_eq!(back.jwt_authorities[0].public_key_der, k.public_key_der);
    }

    fn signer(kind: JwtKeyType) -> JwtSigner {
        let k = generate_key(kind).unwrap();
        JwtSigner::from_pkcs8(new_key_id(), &k.pkcs8).unwrap()
    }

    fn bundle_with(signers: &[&JwtSigner]) -> Bundle {
        let mut b = Bundle::new(td());
        for s in signers {
            b.jwt_authorities.push(JwtAuthority {
                key_id: s.key_id().to_owned(),
                public_key_der: s.public_key_der(),
                expires_at: 0,
            });
        }
        b
    }

    fn token(s: &JwtSigner, aud: &[&str], iat: i64, exp: i64) -> String {
        let aud: Vec<String> = aud.iter().map(|a| (*a).to_owned()).collect();
        s.sign(&JwtClaims {
            subject: &sub(),
            audience: &aud,
            issued_at: iat,
            expires_at: exp,
            issuer: None,
        })
        .unwrap()
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    /// A token with arbitrary header and payload and a given signature.
    fn raw(header: &Value, payload: &Value, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            b64(header),
            b64(payload),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    fn payload(aud: &str, iat: i64, exp: i64) -> Value {
        serde_json::json!({ "sub": sub().to_string(), "aud": [aud], "iat": iat, "exp": exp })
    }

    /// Signs `header.payload` with `s` (whatever the header claims).
    fn sign_raw(s: &JwtSigner, header: &Value, payload: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        let SigningKey::Ec(key) = &s.key else {
            panic!("test signer is ECDSA")
        };
        let sig = key.sign(&s.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    #[test]
    fn round_trip_es256_and_es384() {
        for kind in [JwtKeyType::Es256, JwtKeyType::Es384] {
            let s = signer(kind);
            let b = bundle_with(&[&s]);
            let t = token(&s, &["A", "B"], NOW, NOW + 300);
            let v = verify(&t, "B", &[&b], NOW).unwrap();
            assert_eq!(v.spiffe_id, sub());
            assert_eq!(v.key_id, s.key_id());
            assert_eq!(v.alg, kind.alg());
            assert_eq!(v.expires_at, NOW + 300);
            assert_eq!(v.claims["aud"], serde_json::json!(["A", "B"]));
            assert_eq!(v.claims["iat"], NOW);
            assert!(v.claims.get("iss").is_none());

            // Header exactly alg, kid, typ=JWT (JWT-4); fixed-width r||s signature.
            let mut parts = t.split('.');
            let header: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap())
                    .unwrap();
            assert_eq!(
                header,
                serde_json::json!({"alg": kind.alg().as_str(), "kid": s.key_id(), "typ": "JWT"})
            );
            let sig = URL_SAFE_NO_PAD.decode(parts.nth(1).unwrap()).unwrap();
            let want = if kind == JwtKeyType::Es256 { 64 } else { 96 };
            assert_eq!(sig.len(), want);
        }
    }

    #[test]
    fn issuer_is_emitted_when_set() {
        let s = signer(JwtKeyType::Es256);
        let aud = vec!["A".to_owned()];
        let t = s
            .sign(&JwtClaims {
                subject: &sub(),
                audience: &aud,
                issued_at: NOW,
                expires_at: NOW + 60,
                issuer: Some("https://issuer.example"),
            })
            .unwrap();
        let v = verify(&t, "A", &[&bundle_with(&[&s])], NOW).unwrap();
        assert_eq!(v.claims["iss"], "https://issuer.example");
    }

    #[test]
    fn signing_refuses_empty_audience() {
        let s = signer(JwtKeyType::Es256);
        for aud in [vec![], vec![String::new()]] {
            let r = s.sign(&JwtClaims {
                subject: &sub(),
                audience: &aud,
                issued_at: NOW,
                expires_at: NOW + 60,
                issuer: None,
            });
            assert_eq!(r, Err(JwtError::BadClaim("aud")));
        }
    }

    #[test]
    fn keys_reload_and_public_key_is_spki() {
        for kind in [JwtKeyType::Es256, JwtKeyType::Es384] {
            let k = generate_key(kind).unwrap();
            let s = JwtSigner::from_pkcs8("k".into(), &k.pkcs8).unwrap();
            assert_eq!(s.key_type(), kind);
            assert_eq!(JwtKeyType::of_public_key(&k.public_key_der), Some(kind));
            assert_eq!(s.public_key_der(), k.public_key_der);
            // The SPKI encodes to a JWK the bundle code understands.
            let mut b = Bundle::new(td());
            b.jwt_authorities.push(JwtAuthority {
                key_id: "k".into(),
                public_key_der: k.public_key_der.clone(),
                expires_at: 0,
            });
            let jwks: Value = serde_json::from_slice(&b.to_jwks_json().unwrap()).unwrap();
            assert_eq!(jwks["keys"][0]["kty"], "EC");
            assert_eq!(jwks["keys"][0]["use"], "jwt-svid");
        }
        assert_eq!(JwtKeyType::of_public_key(b"junk"), None);
        assert!(matches!(
            JwtSigner::from_pkcs8("k".into(), b"junk"),
            Err(JwtError::Key(_))
        ));
        let dbg = format!("{:?}", generate_key(JwtKeyType::Es256).unwrap());
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn key_ids_are_random_alphanumeric() {
        let a = new_key_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, new_key_id());
    }

    #[test]
    fn key_type_parse() {
        assert_eq!(JwtKeyType::parse("ES256"), Some(JwtKeyType::Es256));
        assert_eq!(JwtKeyType::parse("es384"), Some(JwtKeyType::Es384));
        assert_eq!(JwtKeyType::parse("ec-p256"), Some(JwtKeyType::Es256));
        assert_eq!(JwtKeyType::parse("ES512"), None);
        assert_eq!(JwtKeyType::parse("RS256"), Some(JwtKeyType::Rs256));
        assert_eq!(JwtKeyType::parse("PS256"), None);
        assert_eq!(JwtKeyType::default(), JwtKeyType::Es256);
        for a in [
            "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
        ] {
            assert_eq!(JwtAlg::parse(a).unwrap().as_str(), a);
        }
        for a in ["none", "HS256", "HS384", "HS512", "es256", ""] {
            assert_eq!(JwtAlg::parse(a), None, "{a}");
        }
    }

    #[test]
    fn wrong_audience_is_refused() {
        let s = signer(JwtKeyType::Es256);
        let t = token(&s, &["A"], NOW, NOW + 300);
        let e = verify(&t, "B", &[&bundle_with(&[&s])], NOW).unwrap_err();
        assert_eq!(
            e,
            JwtError::AudienceMismatch {
                wanted: "B".into(),
                got: vec!["A".into()]
            }
        );
        assert!(e.to_string().contains("\"B\""), "{e}");
    }

    #[test]
    fn single_string_audience_is_accepted() {
        let s = signer(JwtKeyType::Es256);
        let h = serde_json::json!({"alg": "ES256", "kid": s.key_id(), "typ": "JWT"});
        let p = serde_json::json!({"sub": sub().to_string(), "aud": "A", "exp": NOW + 60});
        let t = sign_raw(&s, &h, &p);
        verify(&t, "A", &[&bundle_with(&[&s])], NOW).unwrap();
        // typ may be JOSE or absent.
        for h in [
            serde_json::json!({"alg": "ES256", "kid": s.key_id(), "typ": "JOSE"}),
            serde_json::json!({"alg": "ES256", "kid": s.key_id()}),
        ] {
            verify(&sign_raw(&s, &h, &p), "A", &[&bundle_with(&[&s])], NOW).unwrap();
        }
    }

    #[test]
    fn expiry_and_issue_time() {
        let s = signer(JwtKeyType::Es256);
        let b = bundle_with(&[&s]);
        let t = token(&s, &["A"], NOW - 600, NOW - 300);
        assert_eq!(verify(&t, "A", &[&b], NOW), Err(JwtError::Expired));
        // exp == now is expired (no leeway on exp).
        let t = token(&s, &["A"], NOW - 60, NOW);
        assert_eq!(verify(&t, "A", &[&b], NOW), Err(JwtError::Expired));
        // iat a little ahead is tolerated, far ahead is not.
        let t = token(&s, &["A"], NOW + 10, NOW + 300);
        verify(&t, "A", &[&b], NOW).unwrap();
        let t = token(&s, &["A"], NOW + 3600, NOW + 7200);
        assert_eq!(verify(&t, "A", &[&b], NOW), Err(JwtError::IssuedInFuture));
        // nbf far ahead.
        let h = serde_json::json!({"alg": "ES256", "kid": s.key_id(), "typ": "JWT"});
        let mut p = payload("A", NOW, NOW + 7200);
        p["nbf"] = (NOW + 3600).into();
        assert_eq!(
            verify(&sign_raw(&s, &h, &p), "A", &[&b], NOW),
            Err(JwtError::NotYetValid)
        );
        // exp missing or not a number.
        let mut p = payload("A", NOW, NOW + 60);
        p.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            verify(&sign_raw(&s, &h, &p), "A", &[&b], NOW),
            Err(JwtError::BadClaim("exp"))
        );
        p["exp"] = "tomorrow".into();
        assert_eq!(
            verify(&sign_raw(&s, &h, &p), "A", &[&b], NOW),
            Err(JwtError::BadClaim("exp"))
        );
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let s = signer(JwtKeyType::Es256);
        let b = bundle_with(&[&s]);
        let t = token(&s, &["A"], NOW, NOW + 300);
        let (input, sig) = t.rsplit_once('.').unwrap();

        // Signature altered.
        let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig_bytes[10] ^= 1;
        let bad = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig_bytes));
        assert_eq!(verify(&bad, "A", &[&b], NOW), Err(JwtError::BadSignature));

        // Payload altered (another subject), original signature kept.
        let (h, _) = input.split_once('.').unwrap();
        let p = serde_json::json!({
            "sub": "spiffe://example.org/admin", "aud": ["A"], "iat": NOW, "exp": NOW + 300
        });
        let bad = format!("{h}.{}.{sig}", b64(&p));
        assert_eq!(verify(&bad, "A", &[&b], NOW), Err(JwtError::BadSignature));

        // Signed by another key that claims this kid.
        let other = signer(JwtKeyType::Es256);
        let hdr = serde_json::json!({"alg": "ES256", "kid": s.key_id(), "typ": "JWT"});
        let bad = sign_raw(&other, &hdr, &payload("A", NOW, NOW + 300));
        assert_eq!(verify(&bad, "A", &[&b], NOW), Err(JwtError::BadSignature));

        // Empty signature.
        assert_eq!(
            verify(&format!("{input}."), "A", &[&b], NOW),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn alg_none_and_hmac_forgeries_are_refused() {
        let s = signer(JwtKeyType::Es256);
        let b = bundle_with(&[&s]);
        let p = payload("A", NOW, NOW + 300);
        for alg in ["none", "None", "HS256", "HS384", "HS512", ""] {
            let h = serde_json::json!({"alg": alg, "kid": s.key_id(), "typ": "JWT"});
            // A forger's HMAC "signature" keyed with the public key bytes (key confusion).
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &s.public_key_der());
            let input = format!("{}.{}", b64(&h), b64(&p));
            let mac = ring::hmac::sign(&key, input.as_bytes());
            for t in [
                format!("{input}."),
                format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref())),
            ] {
                assert_eq!(
                    verify(&t, "A", &[&b], NOW),
                    Err(JwtError::DisallowedAlgorithm(alg.into())),
                    "{alg}"
                );
            }
        }
        // No alg at all.
        let h = serde_json::json!({"kid": s.key_id(), "typ": "JWT"});
        assert_eq!(
            verify(&raw(&h, &p, b"x"), "A", &[&b], NOW),
            Err(JwtError::DisallowedAlgorithm(String::new()))
        );
        // ES512 is allowed but not verifiable here.
        let h = serde_json::json!({"alg": "ES512", "kid": s.key_id(), "typ": "JWT"});
        assert_eq!(
            verify(&raw(&h, &p, &[1; 132]), "A", &[&b], NOW),
            Err(JwtError::UnsupportedAlgorithm(JwtAlg::Es512))
        );
    }

    #[test]
    fn alg_must_match_the_key() {
        let p256 = signer(JwtKeyType::Es256);
        let p384 = signer(JwtKeyType::Es384);
        let b = bundle_with(&[&p256, &p384]);
        let p = payload("A", NOW, NOW + 300);
        // A P-384 key named by a token that claims ES256, and an EC key claimed as RS256.
        for (alg, kid) in [("ES256", p384.key_id()), ("RS256", p256.key_id())] {
            let h = serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"});
            let e = verify(&sign_raw(&p384, &h, &p), "A", &[&b], NOW).unwrap_err();
            assert!(
                matches!(e, JwtError::KeyAlgorithmMismatch { .. }),
                "{alg}: {e}"
            );
        }
    }

    #[test]
    fn unknown_kid_and_missing_bundle() {
        let s = signer(JwtKeyType::Es256);
        let other = signer(JwtKeyType::Es256);
        let t = token(&s, &["A"], NOW, NOW + 300);
        let e = verify(&t, "A", &[&bundle_with(&[&other])], NOW).unwrap_err();
        assert_eq!(
            e,
            JwtError::UnknownKeyId {
                kid: s.key_id().into(),
                trust_domain: td()
            }
        );
        assert_eq!(verify(&t, "A", &[], NOW), Err(JwtError::NoBundle(td())));
        // A bundle of another trust domain holding the key does not count.
        let mut foreign = bundle_with(&[&s]);
        foreign.trust_domain = TrustDomain::new("other.org").unwrap();
        assert_eq!(
            verify(&t, "A", &[&foreign], NOW),
            Err(JwtError::NoBundle(td()))
        );
        // A corrupt key in the bundle.
        let mut b = bundle_with(&[&s]);
        b.jwt_authorities[0].public_key_der = vec![1, 2, 3];
        assert_eq!(
            verify(&t, "A", &[&b], NOW),
            Err(JwtError::BadPublicKey(s.key_id().into()))
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let s = signer(JwtKeyType::Es256);
        let b = bundle_with(&[&s]);
        let good = token(&s, &["A"], NOW, NOW + 300);
        let (h, rest) = good.split_once('.').unwrap();
        for t in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            &format!("{good}.x"),
            &format!("!!!.{rest}"),
            &format!("{}.{rest}", URL_SAFE_NO_PAD.encode(b"not json")),
            &format!("{}.{rest}", URL_SAFE_NO_PAD.encode(b"[1,2]")),
            &format!("{h}.@@@.sig"),
            &format!("{h}.{}.c2ln", URL_SAFE_NO_PAD.encode(b"\"str\"")),
            &format!("{h}.{}.%%", b64(&payload("A", NOW, NOW + 1))),
        ] {
            let e = verify(t, "A", &[&b], NOW).unwrap_err();
            assert!(matches!(e, JwtError::Malformed(_)), "{t:?}: {e:?}");
        }
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(verify(&huge, "A", &[&b], NOW), Err(JwtError::TooLong));
    }

    #[test]
    fn header_rules() {
        let s = signer(JwtKeyType::Es256);
        let b = bundle_with(&[&s]);
        let p = payload("A", NOW, NOW + 300);
        let cases = [
            (
                serde_json::json!({"alg": "ES256", "typ": "JWT"}),
                JwtError::MissingKeyId,
            ),
            (
                serde_json::json!({"alg": "ES256", "kid": "", "typ": "JWT"}),
                JwtError::MissingKeyId,
            ),
            (
                serde_json::json!({"alg": "ES256", "kid": 7, "typ": "JWT"}),
                JwtError::MissingKeyId,
            ),
            (
                serde_json::json!({"alg": "ES256", "kid": s.key_id(), "typ": "at+jwt"}),
                JwtError::BadType,
            ),
            (
                serde_json::json!({"alg": "ES256", "kid": s.key_id(), "typ": null}),
                JwtError::BadType,
            ),
            (
                serde_json::json!({"alg": "ES256", "kid": s.key_id(), "jku": "https://x"}),
                JwtError::UnexpectedHeader("jku".into()),
            ),
            (
                serde_json::json!({"alg": "ES256", "kid": s.key_id(), "crit": ["exp"]}),
                JwtError::UnexpectedHeader("crit".into()),
            ),
        ];
        for (h, want) in cases {
            assert_eq!(verify(&sign_raw(&s, &h, &p), "A", &[&b], NOW), Err(want));
        }
    }

    #[test]
    fn claim_rules() {
        let s = signer(JwtKeyType::Es256);
        let b = bundle_with(&[&s]);
        let h = serde_json::json!({"alg": "ES256", "kid": s.key_id(), "typ": "JWT"});
        let base = payload("A", NOW, NOW + 300);
        let with = |k: &str, v: Value| {
            let mut p = base.clone();
            p[k] = v;
            sign_raw(&s, &h, &p)
        };
        let without = |k: &str| {
            let mut p = base.clone();
            p.as_object_mut().unwrap().remove(k);
            sign_raw(&s, &h, &p)
        };
        assert_eq!(
            verify(&without("sub"), "A", &[&b], NOW),
            Err(JwtError::BadClaim("sub"))
        );
        assert_eq!(
            verify(&with("sub", 5.into()), "A", &[&b], NOW),
            Err(JwtError::BadClaim("sub"))
        );
        for bad_sub in ["spiffe://example.org", "https://example.org/w", "x"] {
            let e = verify(&with("sub", bad_sub.into()), "A", &[&b], NOW).unwrap_err();
            assert!(matches!(e, JwtError::BadSubject(_)), "{bad_sub}: {e:?}");
        }
        assert_eq!(
            verify(&without("aud"), "A", &[&b], NOW),
            Err(JwtError::BadClaim("aud"))
        );
        for bad_aud in [
            serde_json::json!([]),
            serde_json::json!([1]),
            serde_json::json!(7),
        ] {
            assert_eq!(
                verify(&with("aud", bad_aud), "A", &[&b], NOW),
                Err(JwtError::BadClaim("aud"))
            );
        }
        // iat absent is fine; fractional times are accepted.
        verify(&without("iat"), "A", &[&b], NOW).unwrap();
        verify(&with("exp", (NOW as f64 + 10.5).into()), "A", &[&b], NOW).unwrap();
        // Extra private claims are kept.
        let v = verify(&with("x-team", "blue".into()), "A", &[&b], NOW).unwrap();
        assert_eq!(v.claims["x-team"], "blue");
    }

    #[test]
    fn rsa_tokens_verify() {
        use rcgen::PublicKeyData;
        // Generated at test time (the `rsa` crate; ring signs with RSA but cannot generate keys).
        let generated = crate::keys::generate(crate::keys::KeyType::Rsa2048).unwrap();
        let pk8 = generated.serialize_der();
        let spki = generated.subject_public_key_info();
        let key = ring::signature::RsaKeyPair::from_pkcs8(&pk8).unwrap();
        let rng = SystemRandom::new();
        let mut b = Bundle::new(td());
        b.jwt_authorities.push(JwtAuthority {
            key_id: "rsa".into(),
            public_key_der: spki,
            expires_at: 0,
        });
        let p = payload("A", NOW, NOW + 300);
        let encodings: [(&str, &'static dyn signature::RsaEncoding); 6] = [
            ("RS256", &signature::RSA_PKCS1_SHA256),
            ("RS384", &signature::RSA_PKCS1_SHA384),
            ("RS512", &signature::RSA_PKCS1_SHA512),
            ("PS256", &signature::RSA_PSS_SHA256),
            ("PS384", &signature::RSA_PSS_SHA384),
            ("PS512", &signature::RSA_PSS_SHA512),
        ];
        for (alg, enc) in encodings {
            let h = serde_json::json!({"alg": alg, "kid": "rsa", "typ": "JWT"});
            let input = format!("{}.{}", b64(&h), b64(&p));
            let mut sig = vec![0; key.public().modulus_len()];
            key.sign(enc, &rng, input.as_bytes(), &mut sig).unwrap();
            let t = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
            let v = verify(&t, "A", &[&b], NOW).unwrap();
            assert_eq!(v.alg.as_str(), alg);
            // The same signature under another RSA alg name fails.
            let other = if alg.starts_with("RS") {
                "PS256"
            } else {
                "RS256"
            };
            let h2 = serde_json::json!({"alg": other, "kid": "rsa", "typ": "JWT"});
            let (_, rest) = t.split_once('.').unwrap();
            let forged = format!("{}.{rest}", b64(&h2));
            assert_eq!(
                verify(&forged, "A", &[&b], NOW),
                Err(JwtError::BadSignature),
                "{alg} as {other}"
            );
            // And an RSA key cannot verify an ES256 claim.
            let h3 = serde_json::json!({"alg": "ES256", "kid": "rsa", "typ": "JWT"});
            let forged = format!("{}.{rest}", b64(&h3));
            assert!(matches!(
                verify(&forged, "A", &[&b], NOW),
                Err(JwtError::KeyAlgorithmMismatch { .. })
            ));
        }
        // The RSA key also round-trips through the JWKS encoding.
        let back = Bundle::from_spiffe_json(td(), &b.to_jwks_json().unwrap()).unwrap();
        assert_eq!(
            back.jwt_authorities[0].public_key_der,
            b.jwt_authorities[0].public_key_der
        );
    }
}
