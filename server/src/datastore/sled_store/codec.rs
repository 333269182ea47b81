//! How records become sled values: a version byte, then JSON (or the raw bundle document).

use serde::Serialize;
use serde::de::DeserializeOwned;
use sigil_core::TrustDomain;

use crate::datastore::{Result, StoreError};

/// The only encoding so far. A future format gets a new byte; readers reject bytes they do not
/// know rather than guess.
const FORMAT_VERSION: u8 = 1;

/// Wraps a sled error; its text is all callers need, and the engine type must not escape.
pub(super) fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Encodes a record as the version byte followed by its JSON. `what` names it in errors.
pub(super) fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    let mut out = vec![FORMAT_VERSION];
    serde_json::to_writer(&mut out, value)
        .map_err(|e| StoreError::Backend(format!("cannot encode {what}: {e}")))?;
    Ok(out)
}

/// Decodes what [`encode`] wrote; anything else is [`StoreError::Corrupt`].
pub(super) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    let body = strip_version(what, bytes)?;
    serde_json::from_slice(body).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// A bundle document is already JSON produced elsewhere; it is stored unchanged after the byte.
pub(super) fn encode_bundle(document: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(document.len() + 1);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(document);
    out
}

/// Reverses [`encode_bundle`].
pub(super) fn decode_bundle(td: &TrustDomain, bytes: &[u8]) -> Result<Vec<u8>> {
    let what = format!("bundle for trust domain {:?}", td.as_str());
    Ok(strip_version(&what, bytes)?.to_vec())
}

/// Decodes the big-endian u64 of the revision counter.
pub(super) fn decode_u64(what: &str, bytes: &[u8]) -> Result<u64> {
    let raw: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what}: {} bytes, want 8", bytes.len())))?;
    Ok(u64::from_be_bytes(raw))
}

/// A tree key that we wrote from a `String`, back as a `String`.
pub(super) fn key_str(what: &str, key: &[u8]) -> Result<String> {
    String::from_utf8(key.to_vec())
        .map_err(|_| StoreError::Corrupt(format!("{what} key is not UTF-8: {key:?}")))
}

fn strip_version<'a>(what: &str, bytes: &'a [u8]) -> Result<&'a [u8]> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => Ok(body),
        Some((v, _)) => Err(StoreError::Corrupt(format!(
            "{what}: unknown format version {v}"
        ))),
        None => Err(StoreError::Corrupt(format!("{what}: empty value"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_checks() {
        let v = encode("x", &vec!["a".to_string()]).unwrap();
        assert_eq!(v[0], 1);
        assert_eq!(&v[1..], br#"["a"]"#);
        assert_eq!(
            decode::<Vec<String>>("x", &v).unwrap(),
            vec!["a".to_string()]
        );

        let mut future = v.clone();
        future[0] = 2;
        let err = decode::<Vec<String>>("entry \"e\"", &future).unwrap_err();
        assert_eq!(
            err,
            StoreError::Corrupt("entry \"e\": unknown format version 2".into())
        );
        assert!(matches!(
            decode::<Vec<String>>("x", &[]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode::<Vec<String>>("x", b"\x01{"),
            Err(StoreError::Corrupt(_))
        ));

        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(decode_bundle(&td, &encode_bundle(b"{}")).unwrap(), b"{}");
        assert!(matches!(
            decode_u64("r", &[1, 2]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
