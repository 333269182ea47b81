//! SPIFFE IDs and trust domain names, parsed once at the edge (SPIFFE-ID.md section 2).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest trust domain name the standard allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest SPIFFE ID the standard allows, in bytes.
pub const MAX_ID_LEN: usize = 2048;

const SCHEME: &str = "spiffe://";

/// Why a string is not a SPIFFE ID or trust domain name; each variant is one rule of the standard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The string is empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The scheme is missing or is not lowercase `spiffe://`.
    #[error("scheme must be \"spiffe://\" (lowercase)")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// Trust domain holds a character other than `a-z 0-9 . - _`.
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
    )]
    BadTrustDomainChar,
    /// Trust domain carries `user@` information.
    #[error("trust domain must not contain user info")]
    UserInfo,
    /// Trust domain carries a `:port`.
    #[error("trust domain must not contain a port")]
    Port,
    /// Trust domain longer than 255 bytes.
    #[error("trust domain is longer than 255 bytes")]
    TrustDomainTooLong,
    /// A path segment is empty (`//` in the path).
    #[error("path cannot contain empty segments")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("path cannot contain dot segments")]
    DotSegment,
    /// The path ends with `/`.
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    /// A path segment holds a character other than `a-z A-Z 0-9 . - _`.
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
    )]
    BadPathChar,
    /// A `?query` part is present.
    #[error("SPIFFE ID must not contain a query")]
    Query,
    /// A `#fragment` part is present.
    #[error("SPIFFE ID must not contain a fragment")]
    Fragment,
    /// A `%` escape is present.
    #[error("SPIFFE ID must not contain percent-encoded characters")]
    PercentEncoded,
    /// The whole ID is longer than 2048 bytes.
    #[error("SPIFFE ID is longer than 2048 bytes")]
    TooLong,
    /// A workload ID was required but the ID has no path.
    #[error("SPIFFE ID has no path but a workload identity needs one")]
    MissingPath,
    /// A trust domain ID was required but the ID has a path.
    #[error("SPIFFE ID of a trust domain must not have a path")]
    UnexpectedPath,
    /// A path to build an ID from does not start with `/`.
    #[error("path must start with \"/\"")]
    RelativePath,
}

/// A trust domain name such as `example.org`: the root of trust of a set of SPIFFE IDs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare name (`example.org`) or a trust domain ID (`spiffe://example.org`).
    pub fn new(s: &str) -> Result<Self, IdError> {
        if s.starts_with(SCHEME) || s.to_ascii_lowercase().starts_with(SCHEME) {
            let id = SpiffeId::parse(s)?;
            if !id.path().is_empty() {
                return Err(IdError::UnexpectedPath);
            }
            return Ok(id.td);
        }
        validate_trust_domain(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The bare name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>`, used as bundle-map key.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }

    /// Builds a workload ID in this trust domain from an absolute path such as `/ns/web`.
    ///
    /// The path must start with `/`: pasted after the name, `evil.org/x` would otherwise give
    /// an ID in trust domain `example.orgevil.org` (found by fuzzing).
    pub fn id_with_path(&self, path: &str) -> Result<SpiffeId, IdError> {
        if path.is_empty() {
            return Err(IdError::MissingPath);
        }
        if !path.starts_with('/') {
            return Err(IdError::RelativePath);
        }
        let id = SpiffeId::parse(&format!("{SCHEME}{}{path}", self.0))?;
        Ok(id)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A syntactically valid SPIFFE ID, `spiffe://<trust domain><path>`, in canonical form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    td: TrustDomain,
    path: String,
}

impl SpiffeId {
    /// Parses any SPIFFE ID, with or without a path.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(IdError::WrongScheme)?;
        if rest.contains('#') {
            return Err(IdError::Fragment);
        }
        if rest.contains('?') {
            return Err(IdError::Query);
        }
        if rest.contains('%') {
            return Err(IdError::PercentEncoded);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(Self {
            td: TrustDomain(td.to_owned()),
            path: path.to_owned(),
        })
    }

    /// Parses an ID that must name a workload (non-empty path), as leaf SVIDs and JWT `sub` need.
    pub fn parse_workload(s: &str) -> Result<Self, IdError> {
        let id = Self::parse(s)?;
        if id.path.is_empty() {
            return Err(IdError::MissingPath);
        }
        Ok(id)
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True when this ID names a trust domain rather than a workload.
    pub fn is_trust_domain_id(&self) -> bool {
        self.path.is_empty()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.td.0, self.path)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    if td.contains('@') {
        return Err(IdError::UserInfo);
    }
    if td.contains(':') {
        return Err(IdError::Port);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong);
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(IdError::BadTrustDomainChar);
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        // "/" alone is both an empty segment and a trailing slash; report the trailing slash.
        return Err(IdError::TrailingSlash);
    }
    for seg in path[1..].split('/') {
        if seg.is_empty() {
            return Err(IdError::EmptySegment);
        }
        if seg == "." || seg == ".." {
            return Err(IdError::DotSegment);
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(IdError::BadPathChar);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/workload",
            "spiffe://a-b_c.0/x/Y.z/a_b-c",
            "spiffe://td/..a/.b/c..",
        ] {
            let id = SpiffeId::parse(s).unwrap();
            assert_eq!(id.to_string(), s);
        }
        let id = SpiffeId::parse("spiffe://example.org/ns/web").unwrap();
        assert_eq!(id.trust_domain().as_str(), "example.org");
        assert_eq!(id.path(), "/ns/web");
    }

    #[test]
    fn each_rule_has_its_error() {
        let cases: &[(&str, IdError)] = &[
            ("", IdError::Empty),
            ("SPIFFE://example.org/a", IdError::WrongScheme),
            ("http://example.org/a", IdError::WrongScheme),
            ("spiffe:/example.org/a", IdError::WrongScheme),
            ("spiffe://", IdError::MissingTrustDomain),
            ("spiffe:///path", IdError::MissingTrustDomain),
            ("spiffe://Example.org/a", IdError::BadTrustDomainChar),
            ("spiffe://exa mple.org", IdError::BadTrustDomainChar),
            ("spiffe://user@example.org/a", IdError::UserInfo),
            ("spiffe://example.org:8080/a", IdError::Port),
            ("spiffe://example.org//a", IdError::EmptySegment),
            ("spiffe://example.org/a//b", IdError::EmptySegment),
            ("spiffe://example.org/./a", IdError::DotSegment),
            ("spiffe://example.org/a/..", IdError::DotSegment),
            ("spiffe://example.org/a/", IdError::TrailingSlash),
            ("spiffe://example.org/", IdError::TrailingSlash),
            ("spiffe://example.org/a b", IdError::BadPathChar),
            ("spiffe://example.org/a*", IdError::BadPathChar),
            ("spiffe://example.org/a?x=1", IdError::Query),
            ("spiffe://example.org/a#f", IdError::Fragment),
            ("spiffe://example.org/a%20b", IdError::PercentEncoded),
        ];
        for (s, want) in cases {
            assert_eq!(SpiffeId::parse(s).unwrap_err(), *want, "input {s:?}");
        }
        let long_td = format!("spiffe://{}/a", "a".repeat(256));
        assert_eq!(
            SpiffeId::parse(&long_td).unwrap_err(),
            IdError::TrustDomainTooLong
        );
        let ok_td = format!("spiffe://{}/a", "a".repeat(255));
        assert!(SpiffeId::parse(&ok_td).is_ok());
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        assert_eq!(SpiffeId::parse(&long).unwrap_err(), IdError::TooLong);
    }

    #[test]
    fn workload_and_trust_domain_ids() {
        assert_eq!(
            SpiffeId::parse_workload("spiffe://example.org").unwrap_err(),
            IdError::MissingPath
        );
        assert!(SpiffeId::parse_workload("spiffe://example.org/a").is_ok());
        assert_eq!(
            TrustDomain::new("spiffe://example.org").unwrap().as_str(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org/a").unwrap_err(),
            IdError::UnexpectedPath
        );
        assert_eq!(
            TrustDomain::new("Example.org").unwrap_err(),
            IdError::BadTrustDomainChar
        );
        assert_eq!(
            TrustDomain::new("").unwrap_err(),
            IdError::MissingTrustDomain
        );
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(td.id_string(), "spiffe://example.org");
        assert_eq!(
            td.id_with_path("/x/y").unwrap().to_string(),
            "spiffe://example.org/x/y"
        );
    }

    /// Fuzzer finding (fuzz target `spiffe_id`): a path without its leading `/` was pasted
    /// after the trust domain name and moved the ID into another trust domain.
    #[test]
    fn id_with_path_stays_in_its_trust_domain() {
        let td = TrustDomain::new("example.org").unwrap();
        for (path, err) in [
            ("spiffe/example.orgrg", IdError::RelativePath),
            ("evil.org/x", IdError::RelativePath),
            ("rg", IdError::RelativePath),
            ("", IdError::MissingPath),
        ] {
            assert_eq!(td.id_with_path(path).unwrap_err(), err, "{path:?}");
        }
        let id = td.id_with_path("/a/b").unwrap();
        assert_eq!((id.trust_domain(), id.path()), (&td, "/a/b"));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn display_parse_round_trip(
                td in "[a-z0-9._-]{1,40}",
                segs in proptest::collection::vec("[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,12}", 0..6),
            ) {
                let path: String = segs.iter().map(|s| format!("/{s}")).collect();
                let s = format!("spiffe://{td}{path}");
                let id = SpiffeId::parse(&s).unwrap();
                prop_assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id.clone());
                prop_assert_eq!(id.to_string(), s);
            }

            #[test]
            fn never_panics(s in "\\PC{0,80}") {
                let _ = SpiffeId::parse(&s);
                let _ = TrustDomain::new(&s);
            }
        }
    }
}
