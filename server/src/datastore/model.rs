//! The records the server stores. They are plain data, independent of any storage engine, and
//! serialize with serde so a backend can encode them however suits it.
//!
//! Adding a field later: give it `#[serde(default)]` so records written by an older server still
//! decode; a change that cannot be expressed that way bumps the backend's version byte.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sigil_core::{Selector, SpiffeId, TrustDomain};

/// A registration entry: the rule "a workload (or node) under `parent_id` whose selectors include
/// all of `selectors` gets the identity `spiffe_id`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Stable identifier; the store assigns a UUIDv4 when it is created empty.
    pub id: String,
    /// The identity granted.
    pub spiffe_id: SpiffeId,
    /// The agent (or node alias, or server) that may issue this identity.
    pub parent_id: SpiffeId,
    /// What the workload must be attested with; kept sorted and deduplicated by the store so that
    /// equal sets compare equal.
    pub selectors: Vec<Selector>,
    /// X.509-SVID lifetime in seconds; 0 means the server default.
    pub x509_svid_ttl: u64,
    /// JWT-SVID lifetime in seconds; 0 means the server default.
    pub jwt_svid_ttl: u64,
    /// DNS SANs added to the X.509-SVID.
    pub dns_names: Vec<String>,
    /// Foreign trust domains whose bundles the workload also receives.
    pub federates_with: Vec<TrustDomain>,
    /// The workload may call the server's admin API.
    pub admin: bool,
    /// The workload is a downstream server that may mint its own intermediate CA.
    pub downstream: bool,
    /// Free-form hint passed to workloads to tell several identities apart.
    pub hint: String,
    /// When the entry stops applying, in unix seconds; 0 means never.
    pub expires_at: i64,
    /// When the entry was created, in unix seconds; set by the caller, kept by updates.
    pub created_at: i64,
    /// The store revision of the last write to this entry; assigned by the store.
    pub revision: u64,
}

impl Entry {
    /// True once `expires_at` (if set) has come: an expired entry authorizes nothing, is not
    /// synced and gets no new SVID.
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }

    /// `ttl` cut short so an SVID issued at `now` ends no later than the entry does (an SVID
    /// must not outlive the registration that granted it). Zero when the entry has expired.
    pub fn capped_ttl(&self, ttl: Duration, now: SystemTime) -> Duration {
        if self.expires_at == 0 {
            return ttl;
        }
        let end =
            SystemTime::UNIX_EPOCH + Duration::from_secs(self.expires_at.max(0).unsigned_abs());
        ttl.min(end.duration_since(now).unwrap_or(Duration::ZERO))
    }

    /// Sorts and deduplicates the selectors, so `[b, a, a]` and `[a, b]` are the same set both
    /// for equality and for the store's uniqueness rule.
    pub fn normalize_selectors(&mut self) {
        self.selectors.sort();
        self.selectors.dedup();
    }
}

/// An attested agent (node): what it proved at attestation and the SVID it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent's SPIFFE ID, e.g. `spiffe://example.org/sigil/agent/join_token/<uuid>`.
    pub id: SpiffeId,
    /// Which node attestor vouched for it, e.g. `join_token`.
    pub attestation_type: String,
    /// Serial number of the agent's current (newest) X.509-SVID: the only one the server accepts
    /// once the agent has presented it, so a stolen or superseded agent SVID stops working.
    pub x509_svid_serial: String,
    /// When that SVID expires, in unix seconds.
    pub x509_svid_expires_at: i64,
    /// Serial of the SVID the last renewal replaced, still accepted until the agent first
    /// presents the current one or until `previous_x509_svid_accepted_until`, so an agent can
    /// switch connections, or retry a renewal whose reply it lost, without being locked out.
    /// Empty when there is none.
    #[serde(default)]
    pub previous_x509_svid_serial: String,
    /// End of that overlap, in unix seconds; meaningless when there is no previous serial.
    #[serde(default)]
    pub previous_x509_svid_accepted_until: i64,
    /// Node selectors produced by attestation, used to resolve node-alias entries.
    pub selectors: Vec<Selector>,
    /// A banned agent may not renew or re-attest until an operator deletes the record.
    pub banned: bool,
    /// When the agent first attested, in unix seconds.
    pub created_at: i64,
}

/// A single-use join token an operator hands to a node so its agent can attest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// The secret value itself.
    pub token: String,
    /// When it stops being accepted, in unix seconds.
    pub expires_at: i64,
}

/// What a signing authority signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthorityKind {
    /// An X.509 CA that signs X.509-SVIDs.
    X509Ca,
    /// A key that signs JWT-SVIDs.
    JwtKey,
}

/// Where an authority is in its rotation life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthorityState {
    /// Published in the bundle but not yet signing, so relying parties learn it in advance.
    Prepared,
    /// The one currently signing.
    Active,
    /// No longer signing; kept in the bundle until everything it signed has expired.
    Old,
}

/// A CA certificate or JWT signing key together with its private key, persisted so a restarted
/// server keeps signing with the same authority. `Debug` never prints the private key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authority {
    /// Stable identifier (for JWT keys, the `kid`).
    pub id: String,
    /// X.509 CA or JWT key.
    pub kind: AuthorityKind,
    /// DER certificate of an X.509 CA; empty for a JWT key.
    #[serde(with = "b64")]
    pub cert_der: Vec<u8>,
    /// Upstream certificates above `cert_der`, nearest first; empty for a self-signed root.
    #[serde(with = "b64_vec")]
    pub chain_der: Vec<Vec<u8>>,
    /// The trust anchors `cert_der` chains to (itself when self-signed), which must be in the
    /// own bundle for as long as this CA can sign; start-up puts back any that are missing.
    /// Empty for JWT keys and for records written before this field existed.
    #[serde(default, with = "b64_vec")]
    pub roots_der: Vec<Vec<u8>>,
    /// DER SubjectPublicKeyInfo of the key.
    #[serde(with = "b64")]
    pub public_key_der: Vec<u8>,
    /// PKCS#8 DER private key. Secret: the reason the sled directory is 0700 and its files 0600.
    #[serde(with = "b64")]
    pub private_key_pkcs8: Vec<u8>,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// Rotation state.
    pub state: AuthorityState,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written by hand so that logging an authority can never leak its private key.
        f.debug_struct("Authority")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("cert_der", &format_args!("<{} bytes>", self.cert_der.len()))
            .field(
                "chain_der",
                &format_args!("<{} certificates>", self.chain_der.len()),
            )
            .field(
                "roots_der",
                &format_args!("<{} certificates>", self.roots_der.len()),
            )
            .field(
                "public_key_der",
                &format_args!("<{} bytes>", self.public_key_der.len()),
            )
            .field("private_key_pkcs8", &format_args!("<redacted>"))
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("state", &self.state)
            .finish()
    }
}

/// Byte strings as base64 text: a third of the size of serde_json's array of numbers.
mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// A list of byte strings as a list of base64 texts.
mod b64_vec {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(list.len()))?;
        for bytes in list {
            seq.serialize_element(&STANDARD.encode(bytes))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .into_iter()
            .map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> Authority {
        Authority {
            id: "a1".into(),
            kind: AuthorityKind::X509Ca,
            cert_der: vec![1, 2, 3],
            chain_der: vec![vec![4, 5], vec![6]],
            roots_der: vec![vec![9]],
            public_key_der: vec![7, 8],
            private_key_pkcs8: vec![0xde, 0xad, 0xbe, 0xef],
            not_before: 10,
            not_after: 20,
            state: AuthorityState::Prepared,
        }
    }

    #[test]
    fn authority_json_round_trip_uses_base64() {
        let a = authority();
        let json = serde_json::to_string(&a).unwrap();
        assert!(
            json.contains("\"private_key_pkcs8\":\"3q2+7w==\""),
            "{json}"
        );
        assert!(json.contains("\"chain_der\":[\"BAU=\",\"Bg==\"]"), "{json}");
        assert_eq!(serde_json::from_str::<Authority>(&json).unwrap(), a);
    }

    #[test]
    fn authority_written_before_roots_der_still_decodes() {
        let mut a = authority();
        let mut json: serde_json::Value = serde_json::to_value(&a).unwrap();
        json.as_object_mut().unwrap().remove("roots_der");
        a.roots_der.clear();
        assert_eq!(serde_json::from_value::<Authority>(json).unwrap(), a);
    }

    #[test]
    fn authority_debug_redacts_private_key() {
        let dbg = format!("{:?} {:#?}", authority(), authority());
        assert!(dbg.contains("<redacted>"));
        assert!(!dbg.contains("222"), "{dbg}");
        assert!(!dbg.contains("3q2+7w"), "{dbg}");
    }

    #[test]
    fn expiry_and_ttl_cap() {
        let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
        let mut e = Entry {
            id: String::new(),
            spiffe_id: id.clone(),
            parent_id: id,
            selectors: vec![],
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            dns_names: vec![],
            federates_with: vec![],
            admin: false,
            downstream: false,
            hint: String::new(),
            expires_at: 0,
            created_at: 0,
            revision: 0,
        };
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let hour = Duration::from_secs(3600);
        // No expiry: never expired, the TTL stands.
        assert!(!e.is_expired(i64::MAX));
        assert_eq!(e.capped_ttl(hour, at(1000)), hour);
        e.expires_at = 1600;
        assert!(!e.is_expired(1599));
        assert!(e.is_expired(1600));
        assert_eq!(e.capped_ttl(hour, at(1000)), Duration::from_secs(600));
        assert_eq!(
            e.capped_ttl(hour, at(1000) + Duration::from_millis(250)),
            Duration::from_millis(599_750),
            "the SVID ends exactly at the expiry, not a fraction of a second after"
        );
        assert_eq!(
            e.capped_ttl(Duration::from_secs(60), at(1000)),
            Duration::from_secs(60)
        );
        assert_eq!(e.capped_ttl(hour, at(1600)), Duration::ZERO);
        assert_eq!(e.capped_ttl(hour, at(2000)), Duration::ZERO);
    }

    #[test]
    fn normalize_sorts_and_dedups() {
        let s = |v: &str| Selector::parse(v).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
        let mut e = Entry {
            id: String::new(),
            spiffe_id: id.clone(),
            parent_id: id,
            selectors: vec![s("unix:uid:1"), s("k8s:ns:a"), s("unix:uid:1")],
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            dns_names: vec![],
            federates_with: vec![],
            admin: false,
            downstream: false,
            hint: String::new(),
            expires_at: 0,
            created_at: 0,
            revision: 0,
        };
        e.normalize_selectors();
        assert_eq!(e.selectors, vec![s("k8s:ns:a"), s("unix:uid:1")]);
    }
}
