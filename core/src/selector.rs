//! Selectors (`type:value`) and the rule that decides whether an entry applies to a workload.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// No `:` separating type and value.
    #[error("selector {0:?} must have the form type:value")]
    MissingSeparator(String),
    /// The part before the first `:` is empty.
    #[error("selector {0:?} has an empty type")]
    EmptyType(String),
    /// The part after the first `:` is empty.
    #[error("selector {0:?} has an empty value")]
    EmptyValue(String),
    /// The type holds characters other than ASCII letters, digits, `_` and `-`.
    #[error("selector type {0:?} may hold only letters, digits, '_' and '-'")]
    BadType(String),
}

/// One property of a workload or node, e.g. `unix:uid:1000` (type `unix`, value `uid:1000`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: String,
    value: String,
}

impl Selector {
    /// Builds a selector from its two halves; the value may itself contain colons.
    pub fn new(kind: &str, value: &str) -> Result<Self, SelectorError> {
        let whole = format!("{kind}:{value}");
        if kind.is_empty() {
            return Err(SelectorError::EmptyType(whole));
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(whole));
        }
        if !kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(SelectorError::BadType(kind.to_owned()));
        }
        Ok(Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }

    /// Parses `type:value`, splitting at the first colon only.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| SelectorError::MissingSeparator(s.to_owned()))?;
        Self::new(kind, value)
    }

    /// The attestor type, e.g. `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The attestor-specific value, e.g. `uid:1000`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({self})")
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The selectors a workload or node was attested with, as a set for containment checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectorSet(BTreeSet<Selector>);

impl SelectorSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one selector.
    pub fn insert(&mut self, s: Selector) {
        self.0.insert(s);
    }

    /// True when `s` is in the set.
    pub fn contains(&self, s: &Selector) -> bool {
        self.0.contains(s)
    }

    /// An entry applies when every one of its selectors is among the attested ones. An entry
    /// without selectors never matches: it would otherwise hand its identity to everyone.
    pub fn matches_all(&self, entry_selectors: &[Selector]) -> bool {
        !entry_selectors.is_empty() && entry_selectors.iter().all(|s| self.0.contains(s))
    }

    /// Iterates in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = &Selector> {
        self.0.iter()
    }

    /// Number of selectors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no selectors.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Selector> for SelectorSet {
    fn from_iter<I: IntoIterator<Item = Selector>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    #[test]
    fn parse_keeps_colons_in_value() {
        let s = sel("k8s:pod-label:app:web");
        assert_eq!(s.kind(), "k8s");
        assert_eq!(s.value(), "pod-label:app:web");
        assert_eq!(s.to_string(), "k8s:pod-label:app:web");
    }

    #[test]
    fn parse_errors() {
        assert!(matches!(
            Selector::parse("unix"),
            Err(SelectorError::MissingSeparator(_))
        ));
        assert!(matches!(
            Selector::parse(":uid:1"),
            Err(SelectorError::EmptyType(_))
        ));
        assert!(matches!(
            Selector::parse("unix:"),
            Err(SelectorError::EmptyValue(_))
        ));
        assert!(matches!(
            Selector::parse("un ix:uid:1"),
            Err(SelectorError::BadType(_))
        ));
    }

    #[test]
    fn subset_matching() {
        let workload: SelectorSet = ["unix:uid:1000", "unix:gid:1000", "unix:path:/bin/x"]
            .into_iter()
            .map(sel)
            .collect();
        assert!(workload.matches_all(&[sel("unix:uid:1000")]));
        assert!(workload.matches_all(&[sel("unix:uid:1000"), sel("unix:gid:1000")]));
        assert!(!workload.matches_all(&[sel("unix:uid:1000"), sel("unix:gid:0")]));
        assert!(!workload.matches_all(&[sel("unix:uid:0")]));
        assert!(!workload.matches_all(&[]));
        // Values compare exactly: a prefix is not a match.
        assert!(!workload.matches_all(&[sel("unix:uid:100")]));
    }
}
