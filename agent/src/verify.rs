//! Checking what the server returns before anything is served from it.
//!
//! The agent asked for an SVID for one entry, over a key it generated; the answer must be exactly
//! that: the entry's SPIFFE ID, that public key, and a chain (or a JWT signature) that relying
//! parties will accept with the bundle this agent hands out. A server bug, a mix-up between
//! entries in a batch, or a server that was tampered with must never give a workload someone
//! else's identity or a credential nobody trusts, so an answer that fails any check is refused
//! (logged, not served, retried later with back-off).

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use serde_json::Value;
use sigil_core::jwt::{JwtError, VerifiedJwt};
use sigil_core::{Bundle, SpiffeId, SvidError};

/// Why an SVID from the server is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The agent holds no bundle of its own trust domain yet, so nothing can be checked.
    #[error("no trust bundle of the own trust domain to check it against")]
    NoBundle,
    /// The chain is not a valid X.509-SVID for the own bundle.
    #[error("{0}")]
    Chain(#[from] SvidError),
    /// The SVID names another identity than the entry grants.
    #[error("the SVID is for {got}, the entry grants {want}")]
    WrongId {
        /// What the SVID says.
        got: String,
        /// What the entry grants.
        want: SpiffeId,
    },
    /// The leaf certifies another key than the one the agent sent in its CSR.
    #[error("the leaf certifies another public key than the agent's CSR")]
    WrongKey,
    /// The token does not verify against the own JWT bundle.
    #[error("{0}")]
    Jwt(#[from] JwtError),
    /// The token lacks one of the requested audiences.
    #[error("the token's audience lacks {0:?}")]
    Audience(String),
}

/// Checks an X.509-SVID chain (leaf first) issued for an entry granting `want`, over the key
/// whose DER SubjectPublicKeyInfo is `spki`, against the own bundle at `now`.
pub fn x509_svid(
    chain: &[CertificateDer<'_>],
    want: &SpiffeId,
    spki: &[u8],
    bundle: Option<&Bundle>,
    now: SystemTime,
) -> Result<(), VerifyError> {
    let bundle = bundle
        .filter(|b| &b.trust_domain == want.trust_domain())
        .ok_or(VerifyError::NoBundle)?;
    let roots: Vec<CertificateDer<'_>> = bundle
        .x509_authorities
        .iter()
        .map(|r| CertificateDer::from(r.as_slice()))
        .collect();
    let got = sigil_core::validate_x509_svid(chain, &roots, now)?;
    if &got != want {
        return Err(VerifyError::WrongId {
            got: got.to_string(),
            want: want.clone(),
        });
    }
    // validate_x509_svid parsed the leaf already; it is there and well-formed.
    let leaf_spki = chain
        .first()
        .and_then(|l| x509_parser::parse_x509_certificate(l).ok())
        .map(|(_, c)| c.public_key().raw.to_vec());
    if leaf_spki.as_deref() != Some(spki) {
        return Err(VerifyError::WrongKey);
    }
    Ok(())
}

/// Checks a JWT-SVID minted for an entry granting `want` for every one of `audience`, against
/// the own bundle's JWT keys at `now` (Unix seconds). Returns what it verified, so callers use
/// the checked `exp` rather than what the server said beside the token.
pub fn jwt_svid(
    token: &str,
    want: &SpiffeId,
    audience: &[String],
    bundle: Option<&Bundle>,
    now: i64,
) -> Result<VerifiedJwt, VerifyError> {
    let bundle = bundle
        .filter(|b| &b.trust_domain == want.trust_domain())
        .ok_or(VerifyError::NoBundle)?;
    let first = audience
        .first()
        .ok_or_else(|| VerifyError::Audience(String::new()))?;
    let verified = sigil_core::jwt::verify(token, first, &[bundle], now)?;
    if &verified.spiffe_id != want {
        return Err(VerifyError::WrongId {
            got: verified.spiffe_id.to_string(),
            want: want.clone(),
        });
    }
    let aud: Vec<&str> = match verified.claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if let Some(missing) = audience.iter().find(|a| !aud.contains(&a.as_str())) {
        return Err(VerifyError::Audience(missing.clone()));
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::PublicKeyData;
    use sigil_core::jwt::{JwtClaims, JwtKeyType, JwtSigner};
    use sigil_core::keys::{self, KeyType};
    use sigil_core::x509::{self, CaSigner, LeafParams, unix_secs};
    use sigil_core::{JwtAuthority, TrustDomain};

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    /// A CA of the own trust domain and the bundle that publishes it.
    fn new_ca() -> (CaSigner, Bundle) {
        let key = keys::generate(KeyType::EcP256).unwrap();
        let now = SystemTime::now();
        let cert = x509::self_signed_ca(&key, &td(), Duration::from_secs(3600), now).unwrap();
        let mut bundle = Bundle::new(td());
        bundle.x509_authorities.push(cert.to_vec());
        (CaSigner::new(cert, key, vec![]).unwrap(), bundle)
    }

    fn leaf(
        ca: &CaSigner,
        key: &rcgen::KeyPair,
        spiffe_id: &SpiffeId,
    ) -> Vec<CertificateDer<'static>> {
        let csr = keys::parse_csr(&keys::csr_der(key).unwrap()).unwrap();
        let params = LeafParams {
            spiffe_id: spiffe_id.clone(),
            dns_names: vec![],
            ttl: Duration::from_secs(600),
            now: SystemTime::now(),
            rsa_key: false,
        };
        ca.sign_leaf(&csr, &params).unwrap()
    }

    #[test]
    fn x509_svid_must_be_the_entry_the_key_and_the_bundle() {
        let (ca, bundle) = new_ca();
        let (other_ca, _) = new_ca();
        let want = id("spiffe://example.org/api");
        let key = keys::generate(KeyType::EcP256).unwrap();
        let spki = key.subject_public_key_info();
        let now = SystemTime::now();

        let good = leaf(&ca, &key, &want);
        assert_eq!(x509_svid(&good, &want, &spki, Some(&bundle), now), Ok(()));

        let wrong_id = leaf(&ca, &key, &id("spiffe://example.org/admin"));
        assert!(matches!(
            x509_svid(&wrong_id, &want, &spki, Some(&bundle), now),
            Err(VerifyError::WrongId { .. })
        ));

        let stranger = keys::generate(KeyType::EcP256).unwrap();
        let wrong_key = leaf(&ca, &stranger, &want);
        assert_eq!(
            x509_svid(&wrong_key, &want, &spki, Some(&bundle), now),
            Err(VerifyError::WrongKey)
        );

        let untrusted = leaf(&other_ca, &key, &want);
        assert!(matches!(
            x509_svid(&untrusted, &want, &spki, Some(&bundle), now),
            Err(VerifyError::Chain(SvidError::Untrusted(_)))
        ));

        assert_eq!(
            x509_svid(&good, &want, &spki, None, now),
            Err(VerifyError::NoBundle)
        );
        let foreign = Bundle {
            trust_domain: TrustDomain::new("other.org").unwrap(),
            ..bundle.clone()
        };
        assert_eq!(
            x509_svid(&good, &want, &spki, Some(&foreign), now),
            Err(VerifyError::NoBundle)
        );
        assert!(matches!(
            x509_svid(&[], &want, &spki, Some(&bundle), now),
            Err(VerifyError::Chain(SvidError::EmptyChain))
        ));
        assert!(matches!(
            x509_svid(
                &good,
                &want,
                &spki,
                Some(&bundle),
                now + Duration::from_secs(3600)
            ),
            Err(VerifyError::Chain(SvidError::Expired))
        ));
    }

    fn signer(kid: &str) -> (JwtSigner, JwtAuthority) {
        let k = sigil_core::jwt::generate_key(JwtKeyType::Es256).unwrap();
        let authority = JwtAuthority {
            key_id: kid.into(),
            public_key_der: k.public_key_der.clone(),
            expires_at: 0,
        };
        (
            JwtSigner::from_pkcs8(kid.into(), &k.pkcs8).unwrap(),
            authority,
        )
    }

    fn mint(s: &JwtSigner, sub: &SpiffeId, aud: &[&str], now: i64) -> String {
        let audience: Vec<String> = aud.iter().map(|a| (*a).to_owned()).collect();
        s.sign(&JwtClaims {
            subject: sub,
            audience: &audience,
            issued_at: now,
            expires_at: now + 300,
            issuer: None,
        })
        .unwrap()
    }

    #[test]
    fn jwt_svid_must_be_the_entry_the_audience_and_the_bundle() {
        let (published, key) = signer("k1");
        let (rogue, _) = signer("k2");
        let mut bundle = Bundle::new(td());
        bundle.jwt_authorities.push(key);
        let want = id("spiffe://example.org/api");
        let aud = vec!["a".to_owned(), "b".to_owned()];
        let now = unix_secs(SystemTime::now());

        let good = mint(&published, &want, &["a", "b"], now);
        let v = jwt_svid(&good, &want, &aud, Some(&bundle), now).unwrap();
        assert_eq!(v.expires_at, now + 300);

        let other = mint(
            &published,
            &id("spiffe://example.org/admin"),
            &["a", "b"],
            now,
        );
        assert!(matches!(
            jwt_svid(&other, &want, &aud, Some(&bundle), now),
            Err(VerifyError::WrongId { .. })
        ));
        let narrow = mint(&published, &want, &["a"], now);
        assert_eq!(
            jwt_svid(&narrow, &want, &aud, Some(&bundle), now).unwrap_err(),
            VerifyError::Audience("b".into())
        );
        let unpublished = mint(&rogue, &want, &["a", "b"], now);
        assert!(matches!(
            jwt_svid(&unpublished, &want, &aud, Some(&bundle), now),
            Err(VerifyError::Jwt(_))
        ));
        assert_eq!(
            jwt_svid(&good, &want, &aud, None, now).unwrap_err(),
            VerifyError::NoBundle
        );
        assert!(matches!(
            jwt_svid(&good, &want, &aud, Some(&bundle), now + 301),
            Err(VerifyError::Jwt(_))
        ));
    }
}
