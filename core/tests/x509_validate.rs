//! Leaf X.509-SVIDs built by `x509` and checked by `validate` (rules X5-3..X5-10, X5-12, X5-13).

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use rcgen::{CustomExtension, DnType, IsCa, KeyUsagePurpose, SanType};
use rustls_pki_types::CertificateDer;
use sigil_core::keys::{self, KeyType};
use sigil_core::validate::{SvidError, leaf_spiffe_id, validate_x509_svid};
use sigil_core::x509::{self, BuildError, CLOCK_SKEW, CaSigner, LeafParams};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

const TD: &str = "example.org";
const WEB: &str = "spiffe://example.org/ns/prod/web";

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn unix(t: SystemTime) -> i64 {
    x509::unix_secs(t)
}

fn validate(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
) -> Result<sigil_core::SpiffeId, SvidError> {
    validate_x509_svid(chain, roots, SystemTime::now())
}

// ---------------------------------------------------------------------------------------------
// What sign_leaf produces
// ---------------------------------------------------------------------------------------------

#[test]
fn leaf_validates_and_returns_its_id() {
    let t = now();
    for kind in [KeyType::EcP256, KeyType::EcP384] {
        let ca = Ca::root(TD, kind, 24 * HOUR, t);
        let (chain, _key) = ca.leaf(WEB, t);
        assert_eq!(chain.len(), 1, "a root CA adds nothing to the chain");
        let got = validate(&chain, std::slice::from_ref(&ca.cert)).unwrap();
        assert_eq!(got, id(WEB));
        assert_eq!(got.to_string(), WEB);
        assert_eq!(leaf_spiffe_id(&chain[0]).unwrap(), id(WEB));
    }
}

#[test]
fn leaf_has_exactly_the_svid_extensions() {
    let t = now();
    let ca = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    let (chain, key) = ca.leaf(WEB, t);
    let leaf = parse(&chain[0]);

    // Empty subject, so the SAN extension is critical (X5-9), with exactly one URI SAN (X5-3).
    assert_eq!(leaf.subject().iter().count(), 0, "subject must be empty");
    let san = leaf
        .extensions()
        .iter()
        .find(|e| {
            matches!(
                e.parsed_extension(),
                ParsedExtension::SubjectAlternativeName(_)
            )
        })
        .expect("SAN extension");
    assert!(
        san.critical,
        "SAN must be critical when the subject is empty"
    );
    let ParsedExtension::SubjectAlternativeName(names) = san.parsed_extension() else {
        unreachable!()
    };
    assert_eq!(names.general_names.len(), 1);
    assert!(matches!(names.general_names[0], GeneralName::URI(u) if u == WEB));

    // cA = false, present explicitly (X5-5).
    let bc = leaf
        .basic_constraints()
        .unwrap()
        .expect("basic constraints");
    assert!(!bc.value.ca);
    assert!(!leaf.is_ca());

    // Critical key usage with digitalSignature only (X5-6, X5-7).
    let ku = leaf.key_usage().unwrap().expect("key usage");
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.non_repudiation());
    assert!(!ku.value.key_encipherment());
    assert!(!ku.value.data_encipherment());
    assert!(!ku.value.key_agreement());
    assert!(!ku.value.key_cert_sign());
    assert!(!ku.value.crl_sign());
    assert!(!ku.value.encipher_only());
    assert!(!ku.value.decipher_only());

    // Extended key usage serverAuth + clientAuth, nothing else (X5-8).
    let eku = leaf.extended_key_usage().unwrap().expect("EKU");
    assert!(eku.value.server_auth);
    assert!(eku.value.client_auth);
    assert!(!eku.value.any);
    assert!(!eku.value.code_signing);
    assert!(!eku.value.email_protection);
    assert!(!eku.value.time_stamping);
    assert!(!eku.value.ocsp_signing);
    assert!(eku.value.other.is_empty());

    // The certificate is for the key we asked for, and the issuer is the CA.
    assert_eq!(
        leaf.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
    assert_eq!(leaf.issuer(), parse(&ca.cert).subject());

    // Validity: backdated by CLOCK_SKEW, lifetime = ttl.
    assert_eq!(leaf.validity().not_before.timestamp(), unix(t - CLOCK_SKEW));
    assert_eq!(leaf.validity().not_after.timestamp(), unix(t + HOUR));
}

#[test]
fn serials_are_random_128_bit_and_positive() {
    let t = now();
    let ca = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        let (chain, _) = ca.leaf(WEB, t);
        let leaf = parse(&chain[0]);
        let serial = leaf.raw_serial().to_vec();
        assert_eq!(
            serial.len(),
            16,
            "serial {serial:02x?} is not 128 bits wide"
        );
        assert_eq!(serial[0] & 0x80, 0, "serial must be positive");
        assert_ne!(serial[0], 0, "serial must be minimally encoded");
        assert!(seen.insert(serial), "two leaves share a serial");
    }
    // The CA's own serial is random too.
    let ca2 = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    assert_ne!(parse(&ca.cert).raw_serial(), parse(&ca2.cert).raw_serial());
}

#[test]
fn leaf_not_after_is_capped_at_the_ca() {
    let t = now();
    let ca = Ca::root(TD, KeyType::EcP256, HOUR, t);
    assert_eq!(unix(ca.signer.not_after()), unix(t + HOUR));
    let key = keys::generate(KeyType::EcP256).unwrap();
    let chain = ca
        .signer
        .sign_leaf(&key, &leaf_params(WEB, 10 * HOUR, t))
        .unwrap();
    let leaf = parse(&chain[0]);
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        unix(ca.signer.not_after())
    );
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        parse(&ca.cert).validity().not_after.timestamp()
    );
    // A short leaf is not stretched.
    let chain = ca
        .signer
        .sign_leaf(&key, &leaf_params(WEB, Duration::from_secs(60), t))
        .unwrap();
    assert_eq!(
        parse(&chain[0]).validity().not_after.timestamp(),
        unix(t) + 60
    );
}

#[test]
fn expired_ca_refuses_to_sign() {
    let t = now();
    let ca = Ca::root(TD, KeyType::EcP256, HOUR, t);
    let key = keys::generate(KeyType::EcP256).unwrap();
    let err = ca
        .signer
        .sign_leaf(&key, &leaf_params(WEB, HOUR, t + 2 * HOUR))
        .unwrap_err();
    assert!(matches!(err, BuildError::BadIssuer(_)), "{err:?}");
    let err = ca
        .signer
        .sign_intermediate(&key, &td(TD), HOUR, t + 2 * HOUR)
        .unwrap_err();
    assert!(matches!(err, BuildError::BadIssuer(_)), "{err:?}");
}

#[test]
fn huge_ttls_saturate_instead_of_panicking() {
    let t = now();
    let key = keys::generate(KeyType::EcP256).unwrap();
    for ttl in [
        Duration::from_secs(20_000 * 365 * 24 * 3600),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ] {
        let cert = x509::self_signed_ca(&key, &td(TD), ttl, t).unwrap();
        let na = parse(&cert).validity().not_after.timestamp();
        assert_eq!(na, 253_402_300_799, "notAfter must be 9999-12-31T23:59:59Z");
        let ca = Ca::wrap(cert, clone_key(&key), vec![]);
        let leaf_key = keys::generate(KeyType::EcP256).unwrap();
        let chain = ca
            .signer
            .sign_leaf(&leaf_key, &leaf_params(WEB, ttl, t))
            .unwrap();
        assert_eq!(
            parse(&chain[0]).validity().not_after.timestamp(),
            253_402_300_799
        );
        validate(&chain, std::slice::from_ref(&ca.cert)).unwrap();
    }
}

#[test]
fn dns_names_become_sans_and_the_subject_cn() {
    let t = now();
    let ca = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    let key = keys::generate(KeyType::EcP256).unwrap();
    let mut p = leaf_params(WEB, HOUR, t);
    p.dns_names = vec!["web.example.org".into(), "web".into()];
    let chain = ca.signer.sign_leaf(&key, &p).unwrap();
    let leaf = parse(&chain[0]);
    let cn: Vec<_> = leaf
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cn, ["web.example.org"]);
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let dns: Vec<_> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(dns, ["web.example.org", "web"]);
    assert_eq!(
        validate(&chain, std::slice::from_ref(&ca.cert)).unwrap(),
        id(WEB)
    );

    p.dns_names = vec!["bücher.example".into()];
    assert!(matches!(
        ca.signer.sign_leaf(&key, &p),
        Err(BuildError::DnsName(_))
    ));
}

#[test]
fn rsa_subject_keys_also_get_key_encipherment() {
    let t = now();
    let ca = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    let key = keys::generate(KeyType::EcP256).unwrap();
    let mut p = leaf_params(WEB, HOUR, t);
    p.rsa_key = true;
    let chain = ca.signer.sign_leaf(&key, &p).unwrap();
    let leaf = parse(&chain[0]);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign() && !ku.crl_sign());
    validate(&chain, std::slice::from_ref(&ca.cert)).unwrap();
}

#[test]
fn ca_signer_rejects_a_key_that_is_not_the_certs() {
    let t = now();
    let ca = Ca::root(TD, KeyType::EcP256, HOUR, t);
    let other = keys::generate(KeyType::EcP256).unwrap();
    assert!(matches!(
        CaSigner::new(ca.cert.clone(), other, vec![]),
        Err(BuildError::BadIssuer(_))
    ));
    assert!(matches!(
        CaSigner::new(CertificateDer::from(vec![1, 2, 3]), ca.key, vec![]),
        Err(BuildError::BadIssuer(_))
    ));
}

#[test]
fn ca_certificates_follow_the_signing_rules() {
    let t = now();
    let root = Ca::root(TD, KeyType::EcP384, 24 * HOUR, t);
    let int = Ca::intermediate(&root, TD, 48 * HOUR, t);
    for der in [&root.cert, &int.cert] {
        let c = parse(der);
        assert!(c.is_ca());
        let ku = c.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(ku.value.key_cert_sign());
        let san = c.subject_alternative_name().unwrap().unwrap();
        assert!(matches!(
            san.value.general_names.as_slice(),
            [GeneralName::URI("spiffe://example.org")]
        ));
    }
    // The intermediate is signed by the root and capped at the root's notAfter.
    let ic = parse(&int.cert);
    assert!(
        ic.verify_signature(Some(parse(&root.cert).public_key()))
            .is_ok()
    );
    assert_eq!(
        ic.validity().not_after.timestamp(),
        unix(root.signer.not_after())
    );
}

// ---------------------------------------------------------------------------------------------
// Chains through intermediates
// ---------------------------------------------------------------------------------------------

#[test]
fn chain_through_an_intermediate_validates_against_the_root_only() {
    let t = now();
    let root = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    let int = Ca::intermediate(&root, TD, 12 * HOUR, t);
    let (chain, _) = int.leaf(WEB, t);
    assert_eq!(chain.len(), 2, "chain must be [leaf, intermediate]");
    assert_eq!(chain[1], int.cert);
    assert_eq!(
        parse(&chain[0]).issuer(),
        parse(&int.cert).subject(),
        "leaf is issued by the intermediate"
    );
    assert!(
        parse(&chain[0])
            .verify_signature(Some(parse(&int.cert).public_key()))
            .is_ok()
    );
    assert_eq!(
        validate(&chain, std::slice::from_ref(&root.cert)).unwrap(),
        id(WEB)
    );
    // Without the intermediate the leaf does not chain to the root.
    assert!(matches!(
        validate(&chain[..1], std::slice::from_ref(&root.cert)),
        Err(SvidError::Untrusted(_))
    ));
}

#[test]
fn chain_through_two_intermediates_includes_the_upstream_chain() {
    let t = now();
    let root = Ca::root(TD, KeyType::EcP384, 24 * HOUR, t);
    let int1 = Ca::intermediate(&root, TD, 12 * HOUR, t);
    let key2 = keys::generate(KeyType::EcP256).unwrap();
    let cert2 = int1
        .signer
        .sign_intermediate(&key2, &td(TD), 6 * HOUR, t)
        .unwrap();
    let int2 = Ca::wrap(cert2.clone(), key2, vec![int1.cert.clone()]);
    let (chain, _) = int2.leaf(WEB, t);
    assert_eq!(chain, vec![chain[0].clone(), cert2, int1.cert.clone()]);
    assert_eq!(
        validate(&chain, std::slice::from_ref(&root.cert)).unwrap(),
        id(WEB)
    );
}

#[test]
fn rotated_roots_with_the_same_name_are_told_apart() {
    // Two roots of one trust domain share their subject name. The anchor check must look at the
    // root that actually signed, not the first one with a matching name.
    let t = now();
    let good = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    let mut bad_params = good_ca_params(TD, t);
    bad_params.distinguished_name = rcgen::DistinguishedName::new();
    bad_params
        .distinguished_name
        .push(DnType::OrganizationName, "Sigil");
    bad_params.distinguished_name.push(DnType::CommonName, TD);
    bad_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let bad = self_signed(&bad_params);
    assert_eq!(parse(&bad.cert).subject(), parse(&good.cert).subject());

    let (chain, _) = good.leaf(WEB, t);
    assert_eq!(
        validate(&chain, &[bad.cert.clone(), good.cert.clone()]).unwrap(),
        id(WEB)
    );
    // And a rotated intermediate chains to the right one of several same-named roots.
    let good2 = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    let int = Ca::intermediate(&good2, TD, HOUR, t);
    let (chain, _) = int.leaf(WEB, t);
    assert_eq!(
        validate(&chain, &[good.cert.clone(), good2.cert.clone()]).unwrap(),
        id(WEB)
    );
}

// ---------------------------------------------------------------------------------------------
// Rejections, each with its own error
// ---------------------------------------------------------------------------------------------

#[test]
fn leaf_of_a_foreign_ca_is_untrusted() {
    let t = now();
    let ours = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    // Same trust domain name (so same subject), different key; and a different trust domain.
    for theirs in [
        Ca::root(TD, KeyType::EcP256, 24 * HOUR, t),
        Ca::root("evil.org", KeyType::EcP384, 24 * HOUR, t),
    ] {
        let (chain, _) = theirs.leaf(WEB, t);
        let err = validate(&chain, std::slice::from_ref(&ours.cert)).unwrap_err();
        assert!(matches!(err, SvidError::Untrusted(_)), "{err:?}");
    }
    // No roots at all.
    let (chain, _) = ours.leaf(WEB, t);
    assert!(matches!(
        validate(&chain, &[]),
        Err(SvidError::Untrusted(_))
    ));
}

#[test]
fn expired_and_not_yet_valid_leaves() {
    let t = now();
    let ca = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    let (chain, _) = ca.leaf(WEB, t);
    let roots = std::slice::from_ref(&ca.cert);
    let not_after = x509::to_system_time(parse(&chain[0]).validity().not_after.timestamp());
    // Inside the validity period, at both ends.
    validate_x509_svid(&chain, roots, t).unwrap();
    validate_x509_svid(&chain, roots, not_after).unwrap();
    assert_eq!(
        validate_x509_svid(&chain, roots, not_after + Duration::from_secs(1)),
        Err(SvidError::Expired)
    );
    assert_eq!(
        validate_x509_svid(&chain, roots, t + 2 * HOUR),
        Err(SvidError::Expired)
    );
    assert_eq!(
        validate_x509_svid(&chain, roots, t - CLOCK_SKEW - Duration::from_secs(1)),
        Err(SvidError::Expired)
    );
    assert_eq!(
        validate_x509_svid(&chain, roots, SystemTime::UNIX_EPOCH - HOUR),
        Err(SvidError::Expired)
    );
}

#[test]
fn expired_intermediate_is_expired() {
    let t = now();
    let root = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    // A crafted intermediate that expires before the leaf.
    let mut p = good_ca_params(TD, t);
    p.not_after = (t + Duration::from_secs(600)).into();
    let (int_cert, int_key) = sign_with(&p, &root.issuer());
    let int = Ca::wrap(int_cert, int_key, vec![]);
    let mut lp = good_leaf_params(WEB, t);
    lp.not_after = (t + HOUR).into();
    let (leaf, _) = sign_with(&lp, &int.issuer());
    let chain = [leaf, int.cert.clone()];
    validate_x509_svid(&chain, std::slice::from_ref(&root.cert), t).unwrap();
    assert_eq!(
        validate_x509_svid(
            &chain,
            std::slice::from_ref(&root.cert),
            t + Duration::from_secs(1200)
        ),
        Err(SvidError::Expired)
    );
}

/// Signs crafted leaf params with a fresh root and validates against that root.
fn validate_crafted(params: &rcgen::CertificateParams) -> Result<sigil_core::SpiffeId, SvidError> {
    let t = now();
    let ca = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    let (leaf, _) = sign_with(params, &ca.issuer());
    validate_x509_svid(&[leaf], &[ca.cert], t)
}

#[test]
fn crafted_good_leaf_is_accepted() {
    // The baseline for the crafted rejections below: only one property changes in each.
    assert_eq!(validate_crafted(&good_leaf_params(WEB, now())), Ok(id(WEB)));
}

#[test]
fn leaf_that_is_a_ca_is_rejected() {
    let mut p = good_leaf_params(WEB, now());
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    assert_eq!(validate_crafted(&p), Err(SvidError::LeafIsCa));
}

#[test]
fn leaf_with_two_uri_sans_is_rejected() {
    let mut p = good_leaf_params(WEB, now());
    p.subject_alt_names.push(SanType::URI(
        "spiffe://example.org/other".try_into().unwrap(),
    ));
    assert_eq!(validate_crafted(&p), Err(SvidError::MultipleUriSans));
    // Even the same URI twice.
    let mut p = good_leaf_params(WEB, now());
    p.subject_alt_names
        .push(SanType::URI(WEB.try_into().unwrap()));
    assert_eq!(validate_crafted(&p), Err(SvidError::MultipleUriSans));
}

#[test]
fn leaf_without_uri_san_is_rejected() {
    let mut p = good_leaf_params(WEB, now());
    p.subject_alt_names = vec![SanType::DnsName("web.example.org".try_into().unwrap())];
    p.distinguished_name.push(DnType::CommonName, "web");
    assert_eq!(validate_crafted(&p), Err(SvidError::NoUriSan));
    // No SAN extension at all.
    let mut p = good_leaf_params(WEB, now());
    p.subject_alt_names.clear();
    p.distinguished_name.push(DnType::CommonName, "web");
    assert_eq!(validate_crafted(&p), Err(SvidError::NoUriSan));
}

#[test]
fn leaf_with_a_bad_spiffe_id_is_rejected() {
    for uri in [
        "https://example.org/ns/web",
        "spiffe://example.org",
        "spiffe://Example.org/web",
        "spiffe://example.org/a//b",
        "spiffe://example.org/web?x=1",
    ] {
        let p = good_leaf_params(uri, now());
        let err = validate_crafted(&p).unwrap_err();
        assert!(matches!(err, SvidError::BadSpiffeId(_)), "{uri}: {err:?}");
    }
}

#[test]
fn leaf_that_signs_certificates_is_rejected() {
    let mut p = good_leaf_params(WEB, now());
    p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    assert_eq!(validate_crafted(&p), Err(SvidError::LeafSignsCerts));
    let mut p = good_leaf_params(WEB, now());
    p.key_usages.push(KeyUsagePurpose::CrlSign);
    assert_eq!(validate_crafted(&p), Err(SvidError::LeafSignsCerts));
}

#[test]
fn leaf_key_usage_must_be_critical_with_digital_signature() {
    // No key usage at all.
    let mut p = good_leaf_params(WEB, now());
    p.key_usages.clear();
    assert_eq!(validate_crafted(&p), Err(SvidError::LeafKeyUsage));
    // Key usage without digitalSignature.
    let mut p = good_leaf_params(WEB, now());
    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    assert_eq!(validate_crafted(&p), Err(SvidError::LeafKeyUsage));
    // digitalSignature, but the extension is not critical (rcgen always marks its own KU
    // critical, so write the extension by hand: BIT STRING with bit 0 set).
    let mut p = good_leaf_params(WEB, now());
    p.key_usages.clear();
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x02, 0x07, 0x80]);
    ext.set_criticality(false);
    p.custom_extensions.push(ext);
    assert_eq!(validate_crafted(&p), Err(SvidError::LeafKeyUsage));
}

#[test]
fn leaf_eku_needs_both_server_and_client_auth() {
    let mut p = good_leaf_params(WEB, now());
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    assert_eq!(validate_crafted(&p), Err(SvidError::LeafEku));
    let mut p = good_leaf_params(WEB, now());
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    assert_eq!(validate_crafted(&p), Err(SvidError::LeafEku));
    // Without an EKU extension the leaf is acceptable (X5-8 applies only when present).
    let mut p = good_leaf_params(WEB, now());
    p.extended_key_usages.clear();
    assert_eq!(validate_crafted(&p), Ok(id(WEB)));
}

#[test]
fn intermediate_that_is_not_a_ca_is_rejected() {
    let t = now();
    let root = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    let mut p = good_ca_params(TD, t);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    let (int_cert, int_key) = sign_with(&p, &root.issuer());
    let int = Ca::wrap(int_cert.clone(), int_key, vec![]);
    let (leaf, _) = sign_with(&good_leaf_params(WEB, t), &int.issuer());
    assert_eq!(
        validate_x509_svid(
            &[leaf.clone(), int_cert],
            std::slice::from_ref(&root.cert),
            t
        ),
        Err(SvidError::NotCa(1))
    );
    // Without basic constraints at all.
    let mut p = good_ca_params(TD, t);
    p.is_ca = IsCa::NoCa;
    let (int_cert, _) = sign_with(&p, &root.issuer());
    assert_eq!(
        validate_x509_svid(&[leaf, int_cert], std::slice::from_ref(&root.cert), t),
        Err(SvidError::NotCa(1))
    );
}

#[test]
fn intermediate_without_key_cert_sign_is_rejected() {
    let t = now();
    let root = Ca::root(TD, KeyType::EcP256, 24 * HOUR, t);
    let mut p = good_ca_params(TD, t);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    let (int_cert, int_key) = sign_with(&p, &root.issuer());
    let int = Ca::wrap(int_cert.clone(), int_key, vec![]);
    let (leaf, _) = sign_with(&good_leaf_params(WEB, t), &int.issuer());
    assert_eq!(
        validate_x509_svid(
            &[leaf.clone(), int_cert],
            std::slice::from_ref(&root.cert),
            t
        ),
        Err(SvidError::MissingKeyCertSign(1))
    );
    // No key usage extension at all.
    let mut p = good_ca_params(TD, t);
    p.key_usages.clear();
    let (int_cert, _) = sign_with(&p, &root.issuer());
    assert_eq!(
        validate_x509_svid(&[leaf, int_cert], std::slice::from_ref(&root.cert), t),
        Err(SvidError::MissingKeyCertSign(1))
    );
}

#[test]
fn root_without_key_cert_sign_is_rejected() {
    let t = now();
    let mut p = good_ca_params(TD, t);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    let root = self_signed(&p);
    let (leaf, _) = sign_with(&good_leaf_params(WEB, t), &root.issuer());
    assert_eq!(
        validate_x509_svid(
            std::slice::from_ref(&leaf),
            std::slice::from_ref(&root.cert),
            t
        ),
        Err(SvidError::MissingKeyCertSign(1))
    );
    // Through a good intermediate, the anchor index is after the intermediate.
    let int = Ca::intermediate(&root, TD, HOUR, t);
    let (chain, _) = int.leaf(WEB, t);
    assert_eq!(
        validate_x509_svid(&chain, std::slice::from_ref(&root.cert), t),
        Err(SvidError::MissingKeyCertSign(2))
    );
}

#[test]
fn root_that_is_not_a_ca_is_rejected() {
    let t = now();
    let mut p = good_ca_params(TD, t);
    p.is_ca = IsCa::ExplicitNoCa;
    let root = self_signed(&p);
    let (leaf, _) = sign_with(&good_leaf_params(WEB, t), &root.issuer());
    assert_eq!(
        validate_x509_svid(&[leaf], std::slice::from_ref(&root.cert), t),
        Err(SvidError::NotCa(1))
    );
}

#[test]
fn empty_and_malformed_chains() {
    let t = now();
    let ca = Ca::root(TD, KeyType::EcP256, HOUR, t);
    assert_eq!(
        validate_x509_svid(&[], std::slice::from_ref(&ca.cert), t),
        Err(SvidError::EmptyChain)
    );
    let junk = CertificateDer::from(b"not a certificate".to_vec());
    assert!(matches!(
        validate_x509_svid(
            std::slice::from_ref(&junk),
            std::slice::from_ref(&ca.cert),
            t
        ),
        Err(SvidError::Malformed { index: 0, .. })
    ));
    let (mut chain, _) = ca.leaf(WEB, t);
    chain.push(junk);
    assert!(matches!(
        validate_x509_svid(&chain, std::slice::from_ref(&ca.cert), t),
        Err(SvidError::Malformed { index: 1, .. })
    ));
}

#[test]
fn leaf_params_are_used_verbatim() {
    // LeafParams is plain data; a manual construction works like the helper.
    let t = now();
    let ca = Ca::root(TD, KeyType::EcP256, HOUR, t);
    let key = keys::generate(KeyType::EcP384).unwrap();
    let p = LeafParams {
        spiffe_id: id("spiffe://example.org/x"),
        dns_names: vec![],
        ttl: Duration::from_secs(120),
        now: t,
        rsa_key: false,
    };
    let chain = ca.signer.sign_leaf(&key, &p).unwrap();
    assert_eq!(
        validate_x509_svid(&chain, std::slice::from_ref(&ca.cert), t).unwrap(),
        id("spiffe://example.org/x")
    );
}
