//! What `agent api fetch x509` shows and writes: certificate validity from the DER the agent
//! sent, and the `--write` files (PEM chain, PKCS#8 key, bundles) in SPIRE's naming scheme.
//!
//! The private key is only ever written to a 0600 file; it is never printed or put in JSON.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use sigil_proto::workload::X509svidResponse;

use crate::output::format_unix;

/// Validity window of one certificate, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// `notBefore`.
    pub not_before: i64,
    /// `notAfter`.
    pub not_after: i64,
}

/// Splits concatenated DER certificates (the Workload API's encoding) and checks each parses.
pub fn split_certs(mut der: &[u8]) -> Result<Vec<&[u8]>> {
    let mut certs = Vec::new();
    while !der.is_empty() {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow!("malformed certificate #{}: {e}", certs.len() + 1))?;
        certs.push(cert.as_raw());
        der = rest;
    }
    Ok(certs)
}

/// The validity window of one DER certificate.
pub fn validity(der: &[u8]) -> Result<Validity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("malformed certificate: {e}"))?;
    let v = cert.validity();
    Ok(Validity {
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
    })
}

/// Certificates as LF-terminated PEM `CERTIFICATE` blocks (the pem crate defaults to CRLF).
pub fn certs_pem(certs: &[&[u8]]) -> String {
    let blocks: Vec<pem::Pem> = certs
        .iter()
        .map(|c| pem::Pem::new("CERTIFICATE", *c))
        .collect();
    pem::encode_many_config(&blocks, lf())
}

/// The human report: per SVID its ID, leaf validity, hint, intermediates and trust bundle CAs,
/// then the federated bundles.
pub fn describe(resp: &X509svidResponse, elapsed: Duration) -> Result<String> {
    let n = resp.svids.len();
    let mut out = format!(
        "Received {n} svid{} after {elapsed:?}\n\n",
        if n == 1 { "" } else { "s" }
    );
    for (i, svid) in resp.svids.iter().enumerate() {
        let context = || format!("SVID #{i} ({})", svid.spiffe_id);
        let chain = split_certs(&svid.x509_svid).with_context(context)?;
        let Some((leaf, intermediates)) = chain.split_first() else {
            bail!("{}: the agent sent no certificate", context());
        };
        let leaf = validity(leaf).with_context(context)?;
        out.push_str(&field("SPIFFE ID", &svid.spiffe_id));
        out.push_str(&field("SVID Valid After", format_unix(leaf.not_before)));
        out.push_str(&field("SVID Valid Until", format_unix(leaf.not_after)));
        if !svid.hint.is_empty() {
            out.push_str(&field("Hint", &svid.hint));
        }
        for (j, cert) in intermediates.iter().enumerate() {
            let v = validity(cert).with_context(context)?;
            out.push_str(&field(
                &format!("Intermediate #{} Valid After", j + 1),
                format_unix(v.not_before),
            ));
            out.push_str(&field(
                &format!("Intermediate #{} Valid Until", j + 1),
                format_unix(v.not_after),
            ));
        }
        let cas = split_certs(&svid.bundle).with_context(context)?;
        out.push_str(&field("CA count", cas.len()));
        for (j, cert) in cas.iter().enumerate() {
            let v = validity(cert).with_context(context)?;
            out.push_str(&field(
                &format!("CA #{} Valid After", j + 1),
                format_unix(v.not_before),
            ));
            out.push_str(&field(
                &format!("CA #{} Valid Until", j + 1),
                format_unix(v.not_after),
            ));
        }
        out.push('\n');
    }
    for (td, bundle) in sorted_federated(resp) {
        let count = split_certs(bundle)
            .with_context(|| format!("federated bundle {td}"))?
            .len();
        out.push_str(&field("Federated bundle", format!("{td} ({count} CAs)")));
    }
    Ok(out)
}

/// The JSON report: everything [`describe`] shows, never the key.
pub fn summary_json(resp: &X509svidResponse, files: &[PathBuf]) -> Result<Value> {
    let mut svids = Vec::new();
    for (i, svid) in resp.svids.iter().enumerate() {
        let context = || format!("SVID #{i} ({})", svid.spiffe_id);
        let chain = split_certs(&svid.x509_svid).with_context(context)?;
        let Some(leaf) = chain.first() else {
            bail!("{}: the agent sent no certificate", context());
        };
        let leaf = validity(leaf).with_context(context)?;
        let cas = split_certs(&svid.bundle).with_context(context)?;
        svids.push(json!({
            "spiffe_id": svid.spiffe_id,
            "hint": svid.hint,
            "not_before": leaf.not_before,
            "not_after": leaf.not_after,
            "chain_length": chain.len(),
            "bundle_ca_count": cas.len(),
        }));
    }
    let mut federated = serde_json::Map::new();
    for (td, bundle) in sorted_federated(resp) {
        let count = split_certs(bundle)
            .with_context(|| format!("federated bundle {td}"))?
            .len();
        federated.insert(td.clone(), json!({ "ca_count": count }));
    }
    let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    Ok(json!({ "svids": svids, "federated_bundles": federated, "files": files }))
}

/// Writes `svid.N.pem`, `svid.N.key`, `bundle.N.pem` and `federated_bundle.N.M.pem` (M in
/// trust-domain order, so names are stable across runs) into `dir`; returns the paths written.
pub fn write_files(dir: &Path, resp: &X509svidResponse) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let federated: Vec<(&String, Vec<&[u8]>)> = sorted_federated(resp)
        .into_iter()
        .map(|(td, der)| {
            Ok((
                td,
                split_certs(der).with_context(|| format!("federated bundle {td}"))?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut written = Vec::new();
    for (i, svid) in resp.svids.iter().enumerate() {
        let context = || format!("SVID #{i} ({})", svid.spiffe_id);
        let chain = split_certs(&svid.x509_svid).with_context(context)?;
        if svid.x509_svid_key.is_empty() {
            bail!("{}: the agent sent no private key", context());
        }
        let key = pem::encode_config(&pem::Pem::new("PRIVATE KEY", &svid.x509_svid_key[..]), lf());
        let bundle = split_certs(&svid.bundle).with_context(context)?;

        let mut files = vec![
            (format!("svid.{i}.pem"), certs_pem(&chain), PUBLIC_MODE),
            (format!("svid.{i}.key"), key, PRIVATE_MODE),
            (format!("bundle.{i}.pem"), certs_pem(&bundle), PUBLIC_MODE),
        ];
        for (j, (_, certs)) in federated.iter().enumerate() {
            files.push((
                format!("federated_bundle.{i}.{j}.pem"),
                certs_pem(certs),
                PUBLIC_MODE,
            ));
        }
        for (name, contents, mode) in files {
            let path = dir.join(name);
            write_new(&path, contents.as_bytes(), mode)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Certificates and bundles are public; the key is readable by its owner only.
const PUBLIC_MODE: u32 = 0o644;
const PRIVATE_MODE: u32 = 0o600;

/// Replaces `path` with a freshly created file of the given mode. Removing first matters: an
/// existing file would keep its old, possibly wider, mode, and `create_new` (O_EXCL) refuses to
/// follow a symlink planted in its place. The mode is set at creation, never by a later chmod,
/// so the key is not readable by others even for an instant.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("replacing {}", path.display())),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn sorted_federated(resp: &X509svidResponse) -> Vec<(&String, &[u8])> {
    let mut v: Vec<(&String, &[u8])> = resp
        .federated_bundles
        .iter()
        .map(|(td, der)| (td, &der[..]))
        .collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

fn field(label: &str, value: impl std::fmt::Display) -> String {
    format!("{:<20} {value}\n", format!("{label}:"))
}

fn lf() -> pem::EncodeConfig {
    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, date_time_ymd};
    use sigil_proto::workload::X509svid;
    use std::os::unix::fs::PermissionsExt;

    struct Fixture {
        leaf: Vec<u8>,
        ca: Vec<u8>,
        key: Vec<u8>,
    }

    fn fixture() -> Fixture {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.not_before = date_time_ymd(2024, 1, 1);
        ca_params.not_after = date_time_ymd(2025, 1, 1);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec![]).unwrap();
        leaf_params.not_before = date_time_ymd(2024, 6, 1);
        leaf_params.not_after = date_time_ymd(2024, 6, 2);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        Fixture {
            leaf: leaf.der().to_vec(),
            ca: ca.der().to_vec(),
            key: leaf_key.serialize_der(),
        }
    }

    fn response(f: &Fixture) -> X509svidResponse {
        let mut resp = X509svidResponse {
            svids: vec![X509svid {
                spiffe_id: "spiffe://example.org/web".into(),
                x509_svid: f.leaf.clone().into(),
                x509_svid_key: f.key.clone().into(),
                bundle: f.ca.clone().into(),
                hint: "internal".into(),
            }],
            ..X509svidResponse::default()
        };
        resp.federated_bundles.insert(
            "spiffe://z.org".into(),
            [f.ca.clone(), f.ca.clone()].concat().into(),
        );
        resp.federated_bundles
            .insert("spiffe://a.org".into(), f.ca.clone().into());
        resp
    }

    #[test]
    fn splits_concatenated_der() {
        let f = fixture();
        let both = [f.leaf.clone(), f.ca.clone()].concat();
        let certs = split_certs(&both).unwrap();
        assert_eq!(certs, vec![f.leaf.as_slice(), f.ca.as_slice()]);
        assert!(split_certs(&[]).unwrap().is_empty());
        let err = split_certs(&[&f.leaf[..], &[0x30, 0x01]].concat()).unwrap_err();
        assert!(err.to_string().contains("certificate #2"), "{err}");
    }

    #[test]
    fn describes_without_the_key() {
        let f = fixture();
        let text = describe(&response(&f), Duration::from_millis(3)).unwrap();
        assert!(text.starts_with("Received 1 svid after 3ms\n\n"), "{text}");
        assert!(
            text.contains("SPIFFE ID:           spiffe://example.org/web\n"),
            "{text}"
        );
        assert!(
            text.contains("SVID Valid After:    2024-06-01T00:00:00Z\n"),
            "{text}"
        );
        assert!(
            text.contains("SVID Valid Until:    2024-06-02T00:00:00Z\n"),
            "{text}"
        );
        assert!(text.contains("Hint:                internal\n"), "{text}");
        assert!(text.contains("CA count:            1\n"), "{text}");
        assert!(
            text.contains("CA #1 Valid Until:   2025-01-01T00:00:00Z\n"),
            "{text}"
        );
        let a = text.find("spiffe://a.org (1 CAs)").unwrap();
        let z = text.find("spiffe://z.org (2 CAs)").unwrap();
        assert!(a < z, "federated bundles sorted");
        assert!(!text.contains("PRIVATE"));

        let v = summary_json(&response(&f), &[]).unwrap();
        assert_eq!(v["svids"][0]["not_after"], 1_717_286_400);
        assert_eq!(v["federated_bundles"]["spiffe://z.org"]["ca_count"], 2);
        assert!(!v.to_string().contains("PRIVATE"));
    }

    #[test]
    fn writes_files_with_private_key_mode() {
        let f = fixture();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // A stale, world-readable key must be replaced, not reused with its old mode.
        fs::create_dir(&out).unwrap();
        fs::write(out.join("svid.0.key"), "old").unwrap();
        fs::set_permissions(out.join("svid.0.key"), fs::Permissions::from_mode(0o644)).unwrap();

        let written = write_files(&out, &response(&f)).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "svid.0.pem",
                "svid.0.key",
                "bundle.0.pem",
                "federated_bundle.0.0.pem",
                "federated_bundle.0.1.pem"
            ]
        );
        let key_mode = fs::metadata(out.join("svid.0.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let key = fs::read_to_string(out.join("svid.0.key")).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{key}");
        assert!(!key.contains('\r'));
        let parsed = pem::parse(&key).unwrap();
        assert_eq!(parsed.contents(), f.key.as_slice());
        let chain = pem::parse_many(fs::read(out.join("svid.0.pem")).unwrap()).unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].contents(), f.leaf.as_slice());
        let fed = pem::parse_many(fs::read(out.join("federated_bundle.0.1.pem")).unwrap()).unwrap();
        assert_eq!(
            fed.len(),
            2,
            "index 1 is spiffe://z.org, sorted after a.org"
        );
    }

    #[test]
    fn missing_key_is_an_error() {
        let f = fixture();
        let mut resp = response(&f);
        resp.svids[0].x509_svid_key.clear();
        let dir = tempfile::tempdir().unwrap();
        let err = write_files(dir.path(), &resp).unwrap_err();
        assert!(err.to_string().contains("no private key"), "{err}");
    }
}
