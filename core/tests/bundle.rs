//! SPIFFE bundle documents and PEM bundles (rules BND-1, BND-2, BND-4..BND-7).

mod common;

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use proptest::prelude::*;
use rcgen::PublicKeyData;
use serde_json::{Value, json};
use sigil_core::keys::{self, KeyType};
use sigil_core::{Bundle, BundleError, JwtAuthority};

const TD: &str = "example.org";

/// A pool of CA certificates and JWT public keys, made once per test binary.
struct Pool {
    cas: Vec<Vec<u8>>,
    jwt_keys: Vec<Vec<u8>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let t = now();
        let kinds = [KeyType::EcP256, KeyType::EcP384];
        let cas = kinds
            .iter()
            .cycle()
            .take(6)
            .map(|k| Ca::root(TD, *k, 24 * HOUR, t).cert.to_vec())
            .collect();
        let jwt_keys = kinds
            .iter()
            .cycle()
            .take(6)
            .map(|k| keys::generate(*k).unwrap().subject_public_key_info())
            .collect();
        Pool { cas, jwt_keys }
    })
}

fn sample() -> Bundle {
    let p = pool();
    let mut b = Bundle::new(td(TD));
    b.x509_authorities = vec![p.cas[0].clone(), p.cas[1].clone()]; // P-256, P-384
    b.jwt_authorities = vec![
        JwtAuthority {
            key_id: "k-p256".into(),
            public_key_der: p.jwt_keys[0].clone(),
            expires_at: 0,
        },
        JwtAuthority {
            key_id: "k-p384".into(),
            public_key_der: p.jwt_keys[1].clone(),
            expires_at: 0,
        },
    ];
    b.sequence = 42;
    b.refresh_hint = Some(300);
    b
}

fn doc(b: &Bundle) -> Value {
    serde_json::from_str(&b.to_spiffe_json().unwrap()).unwrap()
}

fn decode(v: &Value) -> Result<Bundle, BundleError> {
    Bundle::from_spiffe_json(td(TD), v.to_string().as_bytes())
}

fn key_error_at(r: Result<Bundle, BundleError>, want: usize) {
    match r {
        Err(BundleError::Key { index, .. }) => assert_eq!(index, want),
        other => panic!("expected a key error at {want}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn spiffe_json_round_trip() {
    let b = sample();
    let text = b.to_spiffe_json().unwrap();
    let back = Bundle::from_spiffe_json(td(TD), text.as_bytes()).unwrap();
    assert_eq!(back, b);
    // Encoding is deterministic.
    assert_eq!(back.to_spiffe_json().unwrap(), text);
}

/// Fuzzer finding (fuzz target `bundle_json`): a zero refresh hint decoded as `Some(0)`, which
/// encodes as no hint, so the bundle changed on a round trip. BND-7: a hint is positive, and a
/// zero one means none (as the admin API already reads it).
#[test]
fn zero_refresh_hint_means_none() {
    let input = br#"{"keys":[],"spiffe_refresh_hint":0}"#;
    let b = Bundle::from_spiffe_json(td(TD), input).unwrap();
    assert_eq!(b.refresh_hint, None);
    let back = Bundle::from_spiffe_json(td(TD), b.to_spiffe_json().unwrap().as_bytes()).unwrap();
    assert_eq!(back, b);
}

#[test]
fn expires_at_is_not_carried() {
    let mut b = sample();
    b.jwt_authorities[0].expires_at = 1_900_000_000;
    let back = Bundle::from_spiffe_json(td(TD), b.to_spiffe_json().unwrap().as_bytes()).unwrap();
    assert_eq!(back.jwt_authorities[0].expires_at, 0);
    assert_eq!(
        back.jwt_authorities[0].public_key_der,
        b.jwt_authorities[0].public_key_der
    );
}

#[test]
fn empty_bundle_round_trip() {
    let b = Bundle::new(td(TD));
    let v = doc(&b);
    assert_eq!(v["keys"], json!([]));
    assert_eq!(v["spiffe_sequence"], json!(0));
    assert!(v.get("spiffe_refresh_hint").is_none());
    assert_eq!(decode(&v).unwrap(), b);
}

#[test]
fn zero_refresh_hint_is_not_emitted() {
    // BND-7: the refresh hint, when present, is positive.
    let mut b = Bundle::new(td(TD));
    b.refresh_hint = Some(0);
    assert!(doc(&b).get("spiffe_refresh_hint").is_none());
}

#[test]
fn decoded_trust_domain_is_the_callers() {
    let b = sample();
    let back =
        Bundle::from_spiffe_json(td("other.org"), b.to_spiffe_json().unwrap().as_bytes()).unwrap();
    assert_eq!(back.trust_domain, td("other.org"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn spiffe_json_round_trip_prop(
        cas in proptest::collection::vec(0usize..6, 0..6),
        jwts in proptest::collection::vec((0usize..6, "[A-Za-z0-9_.-]{1,24}"), 0..6),
        sequence in any::<u64>(),
        refresh_hint in proptest::option::of(1u64..),
    ) {
        let p = pool();
        let mut b = Bundle::new(td(TD));
        b.x509_authorities = cas.iter().map(|i| p.cas[*i].clone()).collect();
        b.jwt_authorities = jwts
            .iter()
            .map(|(i, kid)| JwtAuthority {
                key_id: kid.clone(),
                public_key_der: p.jwt_keys[*i].clone(),
                expires_at: 0,
            })
            .collect();
        b.sequence = sequence;
        b.refresh_hint = refresh_hint;
        let text = b.to_spiffe_json().unwrap();
        let back = Bundle::from_spiffe_json(td(TD), text.as_bytes()).unwrap();
        prop_assert_eq!(&back, &b);

        let v: Value = serde_json::from_str(&text).unwrap();
        check_spiffe_shape(&v);
        prop_assert_eq!(v["spiffe_sequence"].as_u64(), Some(sequence));
        prop_assert_eq!(v.get("spiffe_refresh_hint").and_then(Value::as_u64), refresh_hint);

        let jwks: Value = serde_json::from_slice(&b.to_jwks_json().unwrap()).unwrap();
        prop_assert_eq!(jwks["keys"].as_array().unwrap().len(), b.jwt_authorities.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Shape of the documents
// ---------------------------------------------------------------------------------------------

/// BND-4..BND-7 on a whole document.
fn check_spiffe_shape(v: &Value) {
    let keys = v["keys"].as_array().expect("keys array (BND-1)");
    for k in keys {
        let k = k.as_object().expect("key is an object");
        assert!(k.get("kty").and_then(Value::as_str).is_some(), "kty: {k:?}");
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(!k.contains_key(private), "private member {private}");
        }
        match k.get("use").and_then(Value::as_str) {
            Some("x509-svid") => {
                let x5c = k["x5c"].as_array().expect("x5c array");
                assert_eq!(x5c.len(), 1, "BND-5: exactly one certificate");
                assert!(!k.contains_key("kid"), "BND-5: x509-svid keys have no kid");
                let der = STANDARD.decode(x5c[0].as_str().unwrap()).unwrap();
                let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
                assert!(cert.is_ca(), "BND-5: x5c holds a CA certificate");
            }
            Some("jwt-svid") => {
                let kid = k.get("kid").and_then(Value::as_str).expect("BND-6: kid");
                assert!(!kid.is_empty());
                assert!(!k.contains_key("x5c"));
            }
            other => panic!("BND-4: use must be x509-svid or jwt-svid, got {other:?}"),
        }
    }
    assert!(
        v["spiffe_sequence"].is_u64(),
        "BND-7: sequence is an integer"
    );
    if let Some(h) = v.get("spiffe_refresh_hint") {
        assert!(h.as_u64().is_some_and(|h| h > 0), "BND-7: hint positive");
    }
}

#[test]
fn spiffe_json_shape() {
    let b = sample();
    let v = doc(&b);
    check_spiffe_shape(&v);
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 4);
    assert_eq!(v["spiffe_sequence"], json!(42));
    assert_eq!(v["spiffe_refresh_hint"], json!(300));

    let x509: Vec<_> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    assert_eq!(x509.len(), 2);
    for (k, der) in x509.iter().zip(&b.x509_authorities) {
        assert_eq!(k["x5c"][0].as_str().unwrap(), STANDARD.encode(der));
    }
    // The x509-svid JWK's public parameters are those of the certificate's key.
    assert_eq!(x509[0]["kty"], "EC");
    assert_eq!(x509[0]["crv"], "P-256");
    assert_eq!(x509[1]["crv"], "P-384");
    let (_, cert) = x509_parser::parse_x509_certificate(&b.x509_authorities[0]).unwrap();
    let point = cert.public_key().subject_public_key.data.to_vec();
    let x = URL_SAFE_NO_PAD
        .decode(x509[0]["x"].as_str().unwrap())
        .unwrap();
    let y = URL_SAFE_NO_PAD
        .decode(x509[0]["y"].as_str().unwrap())
        .unwrap();
    assert_eq!([&[4u8][..], &x, &y].concat(), point);

    let jwt: Vec<_> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!(jwt.len(), 2);
    assert_eq!(jwt[0]["kid"], "k-p256");
    assert_eq!(jwt[0]["crv"], "P-256");
    assert_eq!(jwt[1]["kid"], "k-p384");
    assert_eq!(jwt[1]["crv"], "P-384");
    for (k, len) in [(jwt[0], 32), (jwt[1], 48)] {
        assert_eq!(k["kty"], "EC");
        for c in ["x", "y"] {
            let s = k[c].as_str().unwrap();
            assert!(!s.contains('='), "base64url without padding");
            assert_eq!(URL_SAFE_NO_PAD.decode(s).unwrap().len(), len);
        }
    }
}

#[test]
fn jwks_has_only_jwt_svid_keys() {
    let b = sample();
    let v: Value = serde_json::from_slice(&b.to_jwks_json().unwrap()).unwrap();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let mut kids = std::collections::HashSet::new();
    for k in keys {
        assert_eq!(k["use"], "jwt-svid");
        assert!(k.get("x5c").is_none());
        assert!(k["kty"].is_string());
        assert!(kids.insert(k["kid"].as_str().unwrap().to_owned()));
    }
    // The JWKS decodes as a plain JWK set to the same JWT authorities.
    let back = decode(&v).unwrap();
    assert!(back.x509_authorities.is_empty());
    assert_eq!(back.jwt_authorities, b.jwt_authorities);
    // A bundle without JWT keys serves an empty set.
    let mut only_x509 = sample();
    only_x509.jwt_authorities.clear();
    let v: Value = serde_json::from_slice(&only_x509.to_jwks_json().unwrap()).unwrap();
    assert_eq!(v, json!({ "keys": [] }));
}

#[test]
fn rsa_jwk_round_trips_through_spki() {
    // ring cannot generate RSA keys, so the modulus here is random bytes: the JWK <-> SPKI
    // conversion is structural and never checks that n is a product of primes. The top bit
    // is set so the DER INTEGER needs a leading zero, and 256 bytes need a long-form length.
    let mut n = vec![0u8; 256];
    for (i, b) in n.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    n[0] = 0xc3;
    let jwk = json!({
        "kty": "RSA", "use": "jwt-svid", "kid": "rsa-1",
        "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB",
    });
    let b = decode(&json!({ "keys": [jwk] })).unwrap();
    let spki = &b.jwt_authorities[0].public_key_der;
    let (rest, parsed) =
        <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(
            spki,
        )
        .unwrap();
    assert!(rest.is_empty());
    match parsed.parsed().unwrap() {
        x509_parser::public_key::PublicKey::RSA(rsa) => {
            assert_eq!(rsa.try_exponent().unwrap(), 65537);
            let m = rsa.modulus;
            assert_eq!(&m[m.len() - 256..], &n[..]);
        }
        other => panic!("not RSA: {other:?}"),
    }
    // rcgen reads the rebuilt SPKI as an RSA key too.
    rcgen::SubjectPublicKeyInfo::from_der(spki).unwrap();
    let v = doc(&b);
    assert_eq!(v["keys"][0], jwk);
}

#[test]
fn keys_for_other_uses_are_skipped() {
    let b = sample();
    let mut v = doc(&b);
    let keys = v["keys"].as_array_mut().unwrap();
    let mut enc = keys[2].clone();
    enc["use"] = json!("enc");
    keys.push(enc);
    let mut no_use = keys[2].clone();
    no_use.as_object_mut().unwrap().remove("use");
    keys.push(no_use);
    assert_eq!(decode(&v).unwrap(), b);
}

// ---------------------------------------------------------------------------------------------
// Malformed documents
// ---------------------------------------------------------------------------------------------

#[test]
fn from_spiffe_json_errors() {
    let td = td(TD);
    for bad in [
        &b"not json"[..],
        b"",
        b"[1,2]",
        b"{\"keys\": 5}",
        b"{}",
        b"{\"keys\": {}}",
    ] {
        let r = Bundle::from_spiffe_json(td.clone(), bad);
        assert!(matches!(r, Err(BundleError::Json(_))), "{bad:?}: {r:?}");
    }

    let good = doc(&sample());
    let x509_key = good["keys"][0].clone();
    let jwt_key = good["keys"][2].clone();

    // x509-svid without x5c (index 1: the first key is fine).
    let mut k = x509_key.clone();
    k.as_object_mut().unwrap().remove("x5c");
    key_error_at(decode(&json!({ "keys": [x509_key.clone(), k] })), 1);

    // x5c that is not an array, or empty.
    let mut k = x509_key.clone();
    k["x5c"] = k["x5c"][0].clone();
    key_error_at(decode(&json!({ "keys": [k] })), 0);
    let mut k = x509_key.clone();
    k["x5c"] = json!([]);
    key_error_at(decode(&json!({ "keys": [k] })), 0);

    // Two certificates in x5c.
    let mut k = x509_key.clone();
    let second = good["keys"][1]["x5c"][0].clone();
    k["x5c"].as_array_mut().unwrap().push(second);
    key_error_at(decode(&json!({ "keys": [k] })), 0);

    // x5c that is not base64, or base64 of something that is not a certificate.
    let mut k = x509_key.clone();
    k["x5c"] = json!(["%%%"]);
    key_error_at(decode(&json!({ "keys": [k] })), 0);
    let mut k = x509_key.clone();
    k["x5c"] = json!([STANDARD.encode(b"not a certificate")]);
    assert!(matches!(
        decode(&json!({ "keys": [k] })),
        Err(BundleError::Der(_))
    ));

    // jwt-svid without kid.
    let mut k = jwt_key.clone();
    k.as_object_mut().unwrap().remove("kid");
    key_error_at(decode(&json!({ "keys": [jwt_key.clone(), k] })), 1);

    // Missing kty, on either kind of key.
    for good_key in [&x509_key, &jwt_key] {
        let mut k = good_key.clone();
        k.as_object_mut().unwrap().remove("kty");
        key_error_at(decode(&json!({ "keys": [k] })), 0);
    }

    // jwt-svid keys with unusable key material.
    let mut k = jwt_key.clone();
    k["crv"] = json!("P-521");
    key_error_at(decode(&json!({ "keys": [k] })), 0);
    let mut k = jwt_key.clone();
    k["x"] = json!(URL_SAFE_NO_PAD.encode([1u8; 31]));
    key_error_at(decode(&json!({ "keys": [k] })), 0);
    let mut k = jwt_key.clone();
    k.as_object_mut().unwrap().remove("y");
    key_error_at(decode(&json!({ "keys": [k] })), 0);
    let mut k = jwt_key.clone();
    k["kty"] = json!("oct");
    key_error_at(decode(&json!({ "keys": [k] })), 0);
}

#[test]
fn encoding_rejects_unusable_authorities() {
    let mut b = Bundle::new(td(TD));
    b.x509_authorities = vec![b"not a certificate".to_vec()];
    assert!(matches!(b.to_spiffe_json(), Err(BundleError::Der(_))));
    let mut b = Bundle::new(td(TD));
    b.jwt_authorities = vec![JwtAuthority {
        key_id: "k".into(),
        public_key_der: b"not a key".to_vec(),
        expires_at: 0,
    }];
    assert!(matches!(b.to_spiffe_json(), Err(BundleError::Der(_))));
    assert!(matches!(b.to_jwks_json(), Err(BundleError::Der(_))));
}

// ---------------------------------------------------------------------------------------------
// PEM
// ---------------------------------------------------------------------------------------------

#[test]
fn pem_round_trip() {
    let b = sample();
    let text = b.to_pem();
    assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), 2);
    let back = Bundle::from_pem(td(TD), &text).unwrap();
    assert_eq!(back.trust_domain, td(TD));
    assert_eq!(back.x509_authorities, b.x509_authorities);
    assert!(back.jwt_authorities.is_empty());

    // Other blocks around the certificates are ignored.
    let key = keys::generate(KeyType::EcP256).unwrap();
    let mixed = format!("{}\n{text}", key.serialize_pem());
    let back = Bundle::from_pem(td(TD), &mixed).unwrap();
    assert_eq!(back.x509_authorities, b.x509_authorities);
}

#[test]
fn from_pem_without_certificates_errors() {
    for text in [
        "",
        "just some text\n",
        &keys::generate(KeyType::EcP256).unwrap().serialize_pem(),
    ] {
        let r = Bundle::from_pem(td(TD), text);
        assert!(matches!(r, Err(BundleError::Pem(_))), "{text:?}: {r:?}");
    }
    let junk = pem::encode(&pem::Pem::new("CERTIFICATE", b"junk".to_vec()));
    assert!(matches!(
        Bundle::from_pem(td(TD), &junk),
        Err(BundleError::Der(_))
    ));
}
