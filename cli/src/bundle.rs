//! `sigil bundle ...`: trust bundles through the server's `Bundles` admin service.
//!
//! Documents are encoded and decoded by `sigil_core::bundle`, the same code the server uses to
//! publish bundles, so the CLI cannot drift from the SPIFFE format the server speaks. This file
//! only converts between that type and the wire message, and does the file/stdin plumbing.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sigil_core::TrustDomain;
use sigil_core::bundle::{Bundle, JwtAuthority};
use sigil_proto::sigil::v1 as pb;
use sigil_proto::sigil::v1::bundles_client::BundlesClient;

use crate::args::{BundleCommand, BundleFormat, Globals, OutputFormat};
use crate::{connect, output};

/// Runs one `bundle` subcommand against the admin socket.
pub async fn run(globals: &Globals, cmd: BundleCommand) -> Result<()> {
    let mut client = BundlesClient::new(connect::admin(globals).await?);
    let out = globals.output;
    match cmd {
        BundleCommand::Show { format } => {
            let bundle = client
                .get_bundle(pb::GetBundleRequest {})
                .await?
                .into_inner();
            match out {
                OutputFormat::Human => output::emit(&document(&from_proto(&bundle)?, format)?),
                OutputFormat::Json => output::emit_json(&bundle_json(&bundle)),
            }
        }
        BundleCommand::List { format } => {
            let request = pb::ListFederatedBundlesRequest {};
            let mut bundles = client
                .list_federated_bundles(request)
                .await?
                .into_inner()
                .bundles;
            bundles.sort_by(|a, b| a.trust_domain.cmp(&b.trust_domain));
            match out {
                OutputFormat::Human => {
                    let mut text = String::new();
                    for b in &bundles {
                        let bundle = from_proto(b)?;
                        text.push_str(&banner(&bundle.trust_domain));
                        text.push_str(&document(&bundle, format)?);
                        text.push('\n');
                    }
                    output::emit(&text)
                }
                OutputFormat::Json => {
                    let list: Vec<Value> = bundles.iter().map(bundle_json).collect();
                    output::emit_json(&json!({ "bundles": list }))
                }
            }
        }
        BundleCommand::Set { id, path, format } => {
            let input = read_input(path.as_deref())?;
            let source = path
                .as_ref()
                .map_or("stdin".to_owned(), |p| p.display().to_string());
            let bundle = parse_document(id, &input, format)
                .with_context(|| format!("reading the bundle from {source}"))?;
            let stored = client
                .set_federated_bundle(to_proto(&bundle))
                .await?
                .into_inner();
            match out {
                OutputFormat::Human => output::emit("Bundle set.\n"),
                OutputFormat::Json => output::emit_json(&bundle_json(&stored)),
            }
        }
        BundleCommand::Delete { id } => {
            let request = pb::DeleteFederatedBundleRequest {
                trust_domain: id.as_str().to_owned(),
            };
            client.delete_federated_bundle(request).await?;
            match out {
                OutputFormat::Human => output::emit("Bundle deleted.\n"),
                OutputFormat::Json => output::emit_json(&json!({ "trust_domain": id.as_str() })),
            }
        }
    }
}

/// The wire bundle as sigil-core's type; a trust domain the server should never send is an error.
pub fn from_proto(b: &pb::Bundle) -> Result<Bundle> {
    let trust_domain = TrustDomain::new(&b.trust_domain)
        .with_context(|| format!("server sent an invalid trust domain {:?}", b.trust_domain))?;
    Ok(Bundle {
        trust_domain,
        x509_authorities: b.x509_authorities.clone(),
        jwt_authorities: b
            .jwt_authorities
            .iter()
            .map(|k| JwtAuthority {
                key_id: k.key_id.clone(),
                public_key_der: k.public_key.clone(),
                expires_at: k.expires_at,
            })
            .collect(),
        sequence: b.sequence_number,
        // The wire uses 0 for "no hint"; a negative one is nonsense and treated the same.
        refresh_hint: u64::try_from(b.refresh_hint).ok().filter(|h| *h > 0),
    })
}

/// sigil-core's bundle as the wire message, with the bare trust domain name the proto expects.
pub fn to_proto(b: &Bundle) -> pb::Bundle {
    pb::Bundle {
        trust_domain: b.trust_domain.as_str().to_owned(),
        x509_authorities: b.x509_authorities.clone(),
        jwt_authorities: b
            .jwt_authorities
            .iter()
            .map(|a| pb::JwtKey {
                key_id: a.key_id.clone(),
                public_key: a.public_key_der.clone(),
                expires_at: a.expires_at,
            })
            .collect(),
        sequence_number: b.sequence,
        refresh_hint: b
            .refresh_hint
            .map_or(0, |h| i64::try_from(h).unwrap_or(i64::MAX)),
    }
}

/// The wire bundle as JSON with the proto's field names; DER as standard base64.
pub fn bundle_json(b: &pb::Bundle) -> Value {
    let jwt: Vec<Value> = b
        .jwt_authorities
        .iter()
        .map(|k| {
            json!({
                "key_id": k.key_id,
                "public_key": STANDARD.encode(&k.public_key),
                "expires_at": k.expires_at,
            })
        })
        .collect();
    let x509: Vec<String> = b
        .x509_authorities
        .iter()
        .map(|d| STANDARD.encode(d))
        .collect();
    json!({
        "trust_domain": b.trust_domain,
        "x509_authorities": x509,
        "jwt_authorities": jwt,
        "sequence_number": b.sequence_number,
        "refresh_hint": b.refresh_hint,
    })
}

/// The bundle as a document in the chosen format, newline-terminated.
fn document(bundle: &Bundle, format: BundleFormat) -> Result<String> {
    let mut text = match format {
        BundleFormat::Pem => bundle.to_pem(),
        BundleFormat::Spiffe => bundle
            .to_spiffe_json()
            .with_context(|| format!("encoding the bundle of {}", bundle.trust_domain))?,
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Decodes a document given on the command line for trust domain `td`.
fn parse_document(td: TrustDomain, input: &[u8], format: BundleFormat) -> Result<Bundle> {
    match format {
        BundleFormat::Spiffe => Ok(Bundle::from_spiffe_json(td, input)?),
        BundleFormat::Pem => {
            let text = std::str::from_utf8(input).context("PEM input is not UTF-8 text")?;
            Ok(Bundle::from_pem(td, text)?)
        }
    }
}

/// SPIRE's `bundle list` separator, so each bundle's owner is obvious in a long listing.
fn banner(td: &TrustDomain) -> String {
    let stars = "*".repeat(40);
    format!("{stars}\n* {}\n{stars}\n", td.id_string())
}

fn read_input(path: Option<&Path>) -> Result<Vec<u8>> {
    match path {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display())),
        None => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!(
                    "Reading the bundle from stdin (end with Ctrl-D); use --path FILE instead."
                );
            }
            let mut buf = Vec::new();
            stdin.read_to_end(&mut buf).context("reading stdin")?;
            Ok(buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, PublicKeyData};

    fn ca_der() -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn sample() -> pb::Bundle {
        let jwt_key = KeyPair::generate().unwrap();
        pb::Bundle {
            trust_domain: "example.org".into(),
            x509_authorities: vec![ca_der()],
            jwt_authorities: vec![pb::JwtKey {
                key_id: "k1".into(),
                public_key: jwt_key.subject_public_key_info(),
                expires_at: 1_700_000_000,
            }],
            sequence_number: 3,
            refresh_hint: 300,
        }
    }

    #[test]
    fn proto_round_trip() {
        let wire = sample();
        let core = from_proto(&wire).unwrap();
        assert_eq!(core.trust_domain.as_str(), "example.org");
        assert_eq!(core.refresh_hint, Some(300));
        assert_eq!(core.jwt_authorities[0].key_id, "k1");
        assert_eq!(to_proto(&core), wire);

        let mut no_hint = sample();
        no_hint.refresh_hint = -5;
        assert_eq!(from_proto(&no_hint).unwrap().refresh_hint, None);
        let mut bad = sample();
        bad.trust_domain = "Bad Domain".into();
        assert!(from_proto(&bad).is_err());
    }

    #[test]
    fn documents_round_trip_through_core() {
        let core = from_proto(&sample()).unwrap();
        let td = TrustDomain::new("spiffe://example.org").unwrap();

        let pem_doc = document(&core, BundleFormat::Pem).unwrap();
        assert!(pem_doc.contains("-----BEGIN CERTIFICATE-----"));
        let back = parse_document(td.clone(), pem_doc.as_bytes(), BundleFormat::Pem).unwrap();
        assert_eq!(back.x509_authorities, core.x509_authorities);

        let json_doc = document(&core, BundleFormat::Spiffe).unwrap();
        let v: Value = serde_json::from_str(&json_doc).unwrap();
        assert_eq!(v["keys"][0]["use"], "x509-svid");
        assert_eq!(v["keys"][1]["use"], "jwt-svid");
        assert_eq!(v["keys"][1]["kid"], "k1");
        let back = parse_document(td.clone(), json_doc.as_bytes(), BundleFormat::Spiffe).unwrap();
        assert_eq!(back.x509_authorities, core.x509_authorities);
        assert_eq!(
            back.jwt_authorities[0].public_key_der,
            core.jwt_authorities[0].public_key_der
        );
        assert_eq!(back.sequence, 3);

        assert!(parse_document(td.clone(), b"not pem", BundleFormat::Pem).is_err());
        assert!(parse_document(td.clone(), &[0xff, 0xfe], BundleFormat::Pem).is_err());
        assert!(parse_document(td, b"{}", BundleFormat::Spiffe).is_err());
    }

    #[test]
    fn json_and_banner() {
        let wire = sample();
        let v = bundle_json(&wire);
        assert_eq!(v["trust_domain"], "example.org");
        assert_eq!(v["sequence_number"], 3);
        assert_eq!(v["refresh_hint"], 300);
        assert_eq!(v["jwt_authorities"][0]["key_id"], "k1");
        let der = STANDARD
            .decode(v["x509_authorities"][0].as_str().unwrap())
            .unwrap();
        assert_eq!(der, wire.x509_authorities[0]);
        let td = TrustDomain::new("example.org").unwrap();
        let stars = "*".repeat(40);
        assert_eq!(
            banner(&td),
            format!("{stars}\n* spiffe://example.org\n{stars}\n")
        );
    }
}
