//! Conversions between wire messages and stored records. Raw strings from the wire are parsed
//! here, and every rejection names the offending field.

use sigil_core::{Bundle, JwtAuthority, Selector, SpiffeId, TrustDomain};
use sigil_proto::sigil::v1 as pb;

use crate::datastore::{AgentRecord, Entry};
use crate::status::ApiError;

/// Longest accepted TTL (one year): longer is surely a unit mistake.
const MAX_TTL_SECS: i64 = 365 * 24 * 3600;

/// Parses a wire entry for create/update. `td` is the server's trust domain: entries may only
/// name IDs inside it.
pub fn entry_from_pb(e: pb::Entry, td: &TrustDomain) -> Result<Entry, ApiError> {
    let spiffe_id = SpiffeId::parse_workload(&e.spiffe_id)
        .map_err(|err| ApiError::invalid("spiffe_id", err))?;
    if spiffe_id.trust_domain() != td {
        return Err(ApiError::invalid(
            "spiffe_id",
            format!("must be in trust domain {td}"),
        ));
    }
    if is_reserved(&spiffe_id) {
        return Err(ApiError::invalid("spiffe_id", RESERVED_MSG));
    }
    let parent_id =
        SpiffeId::parse(&e.parent_id).map_err(|err| ApiError::invalid("parent_id", err))?;
    if parent_id.trust_domain() != td {
        return Err(ApiError::invalid(
            "parent_id",
            format!("must be in trust domain {td}"),
        ));
    }
    if e.selectors.is_empty() {
        return Err(ApiError::invalid(
            "selectors",
            "at least one selector is required",
        ));
    }
    let selectors = selectors_from_pb(&e.selectors)?;
    let ttl = |field: &'static str, v: i64| -> Result<u64, ApiError> {
        if !(0..=MAX_TTL_SECS).contains(&v) {
            return Err(ApiError::invalid(
                field,
                format!("{v} is not between 0 and {MAX_TTL_SECS} seconds"),
            ));
        }
        Ok(v as u64)
    };
    for d in &e.dns_names {
        if !valid_dns_name(d) {
            return Err(ApiError::invalid(
                "dns_names",
                format!("{d:?} is not a valid DNS name"),
            ));
        }
    }
    let federates_with = e
        .federates_with
        .iter()
        .map(|t| TrustDomain::new(t).map_err(|err| ApiError::invalid("federates_with", err)))
        .collect::<Result<Vec<_>, _>>()?;
    if federates_with.iter().any(|f| f == td) {
        return Err(ApiError::invalid(
            "federates_with",
            "must not name the own trust domain",
        ));
    }
    if e.hint.len() > 1024 {
        return Err(ApiError::invalid("hint", "longer than 1024 bytes"));
    }
    if e.expires_at < 0 {
        return Err(ApiError::invalid("expires_at", "must not be negative"));
    }
    Ok(Entry {
        id: e.id,
        spiffe_id,
        parent_id,
        selectors,
        x509_svid_ttl: ttl("x509_svid_ttl", e.x509_svid_ttl)?,
        jwt_svid_ttl: ttl("jwt_svid_ttl", e.jwt_svid_ttl)?,
        dns_names: e.dns_names,
        federates_with,
        admin: e.admin,
        downstream: e.downstream,
        hint: e.hint,
        expires_at: e.expires_at,
        created_at: 0,
        revision: 0,
    })
}

/// Why a reserved ID is refused as an entry's (or a node alias's) identity.
pub const RESERVED_MSG: &str =
    "the /sigil/ namespace is reserved for Sigil's own server and agent identities";

/// True for IDs under `/sigil`, which name the server and agents: an entry granting one would
/// let a workload impersonate the server or another agent.
pub fn is_reserved(id: &SpiffeId) -> bool {
    id.path() == "/sigil" || id.path().starts_with("/sigil/")
}

/// Parses wire selectors, naming the field on error.
pub fn selectors_from_pb(sels: &[pb::Selector]) -> Result<Vec<Selector>, ApiError> {
    sels.iter()
        .map(|s| {
            Selector::new(&s.r#type, &s.value).map_err(|err| ApiError::invalid("selectors", err))
        })
        .collect()
}

fn valid_dns_name(d: &str) -> bool {
    let d = d.strip_prefix("*.").unwrap_or(d);
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A stored entry on the wire.
pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    pb::Entry {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e.parent_id.to_string(),
        selectors: e.selectors.iter().map(selector_to_pb).collect(),
        x509_svid_ttl: i64::try_from(e.x509_svid_ttl).unwrap_or(i64::MAX),
        jwt_svid_ttl: i64::try_from(e.jwt_svid_ttl).unwrap_or(i64::MAX),
        dns_names: e.dns_names.clone(),
        federates_with: e.federates_with.iter().map(|t| t.to_string()).collect(),
        admin: e.admin,
        downstream: e.downstream,
        hint: e.hint.clone(),
        expires_at: e.expires_at,
        created_at: e.created_at,
        revision: e.revision,
    }
}

/// A selector on the wire.
pub fn selector_to_pb(s: &Selector) -> pb::Selector {
    pb::Selector {
        r#type: s.kind().to_owned(),
        value: s.value().to_owned(),
    }
}

/// An agent record on the wire.
pub fn agent_to_pb(a: &AgentRecord) -> pb::Agent {
    pb::Agent {
        id: a.id.to_string(),
        attestation_type: a.attestation_type.clone(),
        x509_svid_serial: a.x509_svid_serial.clone(),
        x509_svid_expires_at: a.x509_svid_expires_at,
        selectors: a.selectors.iter().map(selector_to_pb).collect(),
        banned: a.banned,
        created_at: a.created_at,
    }
}

/// A bundle on the wire.
pub fn bundle_to_pb(b: &Bundle) -> pb::Bundle {
    pb::Bundle {
        trust_domain: b.trust_domain.to_string(),
        x509_authorities: b.x509_authorities.clone(),
        jwt_authorities: b
            .jwt_authorities
            .iter()
            .map(|j| pb::JwtKey {
                key_id: j.key_id.clone(),
                public_key: j.public_key_der.clone(),
                expires_at: j.expires_at,
            })
            .collect(),
        sequence_number: b.sequence,
        refresh_hint: b
            .refresh_hint
            .and_then(|h| i64::try_from(h).ok())
            .unwrap_or(0),
    }
}

/// Parses a wire bundle (for federation), checking every certificate parses.
pub fn bundle_from_pb(b: pb::Bundle) -> Result<Bundle, ApiError> {
    let td = TrustDomain::new(&b.trust_domain).map_err(|e| ApiError::invalid("trust_domain", e))?;
    if b.x509_authorities.is_empty() && b.jwt_authorities.is_empty() {
        return Err(ApiError::invalid(
            "x509_authorities",
            "bundle holds no authorities",
        ));
    }
    for (i, der) in b.x509_authorities.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| ApiError::invalid("x509_authorities", format!("certificate {i}: {e}")))?;
        if !cert.is_ca() {
            return Err(ApiError::invalid(
                "x509_authorities",
                format!("certificate {i} is not a CA"),
            ));
        }
    }
    if b.refresh_hint < 0 {
        return Err(ApiError::invalid("refresh_hint", "must not be negative"));
    }
    Ok(Bundle {
        trust_domain: td,
        x509_authorities: b.x509_authorities,
        jwt_authorities: b
            .jwt_authorities
            .into_iter()
            .map(|j| JwtAuthority {
                key_id: j.key_id,
                public_key_der: j.public_key,
                expires_at: j.expires_at,
            })
            .collect(),
        sequence: b.sequence_number,
        refresh_hint: u64::try_from(b.refresh_hint).ok().filter(|h| *h > 0),
    })
}
