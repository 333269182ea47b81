//! JWT-SVIDs on the agent: minted by the server per (entry, audience set), cached and reused
//! until half their lifetime has passed, and validated for workloads against the JWT bundles the
//! agent holds (own trust domain plus the workload's federated ones).
//!
//! The server signs; the agent never holds a JWT signing key, but checks every token it is given
//! ([`crate::verify::jwt_svid`]: the entry's SPIFFE ID, every requested audience, a signature by
//! a key of the own JWT bundle) before caching or serving it. Verification is
//! [`sigil_core::jwt::verify`], the same code the server's tests use, so the two cannot disagree
//! on what a valid JWT-SVID is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prost_types::value::Kind;
use serde_json::Value;
use sigil_core::jwt::{JwtError, VerifiedJwt};
use sigil_core::x509::unix_secs;
use sigil_core::{Bundle, SelectorSet, SpiffeId};
use sigil_proto::sigil::v1 as pb;
use sigil_proto::workload as wl;
use tonic::{Code, Status};

use crate::cache::{Entry, Snapshot};
use crate::node::NodeClient;

/// Default bound on cached tokens; the oldest is evicted beyond it.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// What a cached token was minted for: the entry (at its revision, so an edited entry gets a
/// fresh token) and the sorted, deduplicated audience set.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CacheKey {
    entry_id: String,
    revision: u64,
    audience: Vec<String>,
}

impl CacheKey {
    /// The key for `entry` and `audience` (in any order, duplicates allowed).
    pub fn new(entry: &Entry, audience: &[String]) -> Self {
        Self {
            entry_id: entry.id.clone(),
            revision: entry.revision,
            audience: normalize(audience),
        }
    }

    /// The audience set tokens for this key carry.
    pub fn audience(&self) -> &[String] {
        &self.audience
    }
}

/// Sorted and deduplicated, so `[b, a, a]` and `[a, b]` share a token.
fn normalize(audience: &[String]) -> Vec<String> {
    let mut v = audience.to_vec();
    v.sort();
    v.dedup();
    v
}

/// A minted JWT-SVID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedJwt {
    /// `sub`.
    pub spiffe_id: String,
    /// The compact JWS.
    pub token: String,
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
}

impl CachedJwt {
    /// True until half the token's lifetime has passed: after that a fresh one is minted, so a
    /// workload never receives a token about to expire.
    pub fn fresh(&self, now: i64) -> bool {
        let half = (self.expires_at - self.issued_at) / 2;
        now < self.issued_at.saturating_add(half.max(0))
    }
}

struct Slot {
    seq: u64,
    jwt: Arc<CachedJwt>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<CacheKey, Slot>,
    /// Insertion order, for evicting the oldest.
    order: BTreeMap<u64, CacheKey>,
    next_seq: u64,
}

/// A bounded cache of JWT-SVIDs keyed by [`CacheKey`].
pub struct JwtCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl std::fmt::Debug for JwtCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtCache")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl JwtCache {
    /// An empty cache holding at most `capacity` tokens (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached token for `key` if it is still [fresh](CachedJwt::fresh) at `now`; a stale one
    /// is dropped.
    pub fn get(&self, key: &CacheKey, now: i64) -> Option<Arc<CachedJwt>> {
        let mut inner = self.lock();
        let slot = inner.map.get(key)?;
        if slot.jwt.fresh(now) {
            return Some(Arc::clone(&slot.jwt));
        }
        let seq = slot.seq;
        inner.map.remove(key);
        inner.order.remove(&seq);
        None
    }

    /// Stores `jwt` under `key`, evicting the oldest tokens beyond the capacity.
    pub fn insert(&self, key: CacheKey, jwt: Arc<CachedJwt>) {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if let Some(old) = inner.map.insert(key.clone(), Slot { seq, jwt }) {
            inner.order.remove(&old.seq);
        }
        inner.order.insert(seq, key);
        while inner.map.len() > self.capacity {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            inner.map.remove(&oldest);
        }
    }

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Mints JWT-SVIDs through the server and caches them.
pub struct JwtSvids {
    node: Arc<NodeClient>,
    cache: JwtCache,
}

impl std::fmt::Debug for JwtSvids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvids")
            .field("cache", &self.cache)
            .finish()
    }
}

/// A server refusal as the workload sees it: the code is kept (PermissionDenied when the server
/// no longer authorizes the entry, Unavailable when it cannot be reached), the message says what
/// failed.
fn mint_error(id: &SpiffeId, s: &Status) -> Status {
    let code = match s.code() {
        Code::PermissionDenied => Code::PermissionDenied,
        Code::InvalidArgument => Code::InvalidArgument,
        _ => Code::Unavailable,
    };
    Status::new(
        code,
        format!("could not mint a JWT-SVID for {id}: {}", s.message()),
    )
}

impl JwtSvids {
    /// Mints through `node`, caching up to `capacity` tokens.
    pub fn new(node: Arc<NodeClient>, capacity: usize) -> Self {
        Self {
            node,
            cache: JwtCache::new(capacity),
        }
    }

    /// The token cache (for tests and metrics).
    pub fn cache(&self) -> &JwtCache {
        &self.cache
    }

    /// A token for `entry` and `audience`: the cached one while fresh, else a new one from the
    /// server, checked against the own bundle `own` before it is cached or served.
    pub async fn fetch(
        &self,
        entry: &Entry,
        audience: &[String],
        own: Option<&Bundle>,
    ) -> Result<Arc<CachedJwt>, Status> {
        let key = CacheKey::new(entry, audience);
        let now = unix_secs(SystemTime::now());
        if let Some(hit) = self.cache.get(&key, now) {
            return Ok(hit);
        }
        let resp = self
            .node
            .client()
            .mint_jwt_svid(pb::MintJwtSvidRequest {
                entry_id: entry.id.clone(),
                audience: key.audience().to_vec(),
            })
            .await
            .map_err(|s| mint_error(&entry.spiffe_id, &s))?
            .into_inner();
        if resp.spiffe_id != entry.spiffe_id.to_string() || resp.token.is_empty() {
            return Err(Status::unavailable(format!(
                "the server answered a JWT-SVID request for {} with another identity",
                entry.spiffe_id
            )));
        }
        let verified =
            crate::verify::jwt_svid(&resp.token, &entry.spiffe_id, key.audience(), own, now)
                .map_err(|e| {
                    tracing::error!(
                        entry_id = %entry.id, spiffe_id = %entry.spiffe_id, reason = %e,
                        "the server returned a JWT-SVID that fails verification; not serving it"
                    );
                    Status::unavailable(format!(
                        "the server's JWT-SVID for {} failed verification: {e}",
                        entry.spiffe_id
                    ))
                })?;
        let jwt = Arc::new(CachedJwt {
            spiffe_id: resp.spiffe_id,
            token: resp.token,
            // The checked `exp`, not what the server said beside the token.
            issued_at: resp.issued_at.min(now),
            expires_at: verified.expires_at,
        });
        self.cache.insert(key, Arc::clone(&jwt));
        Ok(jwt)
    }

    /// FetchJWTSVID for a caller with `selectors`: one token per identity it holds (default
    /// first, hints unique), or only `want` when given. PermissionDenied when the caller holds
    /// no identity or not `want`.
    pub async fn fetch_for(
        &self,
        snap: &Snapshot,
        selectors: &SelectorSet,
        want: Option<&SpiffeId>,
        audience: &[String],
    ) -> Result<Vec<wl::Jwtsvid>, Status> {
        let entries = if snap.denied {
            Vec::new()
        } else {
            snap.matching_entries(selectors)
        };
        if entries.is_empty() {
            return Err(Status::permission_denied("no identity issued"));
        }
        let mut hints = HashSet::new();
        let entries: Vec<Arc<Entry>> = entries
            .into_iter()
            .filter(|e| want.is_none_or(|w| *w == e.spiffe_id))
            .filter(|e| e.hint.is_empty() || hints.insert(e.hint.clone()))
            .collect();
        let chosen = match (want, entries.len()) {
            (Some(w), 0) => {
                return Err(Status::permission_denied(format!(
                    "no identity issued for {w}"
                )));
            }
            // Several entries may grant the same SPIFFE ID; one token answers for it.
            (Some(_), _) => entries.into_iter().take(1).collect(),
            (None, _) => entries,
        };
        let own = snap.bundle.as_ref().map(|b| &b.bundle);
        let tokens =
            futures::future::try_join_all(chosen.iter().map(|e| self.fetch(e, audience, own)))
                .await?;
        Ok(chosen
            .iter()
            .zip(tokens)
            .map(|(e, t)| wl::Jwtsvid {
                spiffe_id: t.spiffe_id.clone(),
                svid: t.token.clone(),
                hint: e.hint.clone(),
            })
            .collect())
    }
}

/// ValidateJWTSVID: checks `token` for `audience` with the JWT bundles a caller with `selectors`
/// trusts (the own bundle and the federated bundles of its entries) at `now` (Unix seconds).
pub fn validate(
    snap: &Snapshot,
    selectors: &SelectorSet,
    token: &str,
    audience: &str,
    now: i64,
) -> Result<VerifiedJwt, JwtError> {
    let view = snap.view(selectors);
    let bundles: Vec<&Bundle> = view
        .bundle
        .iter()
        .chain(view.federated.iter())
        .map(|b| &b.bundle)
        .collect();
    sigil_core::jwt::verify(token, audience, &bundles, now)
}

/// JSON claims as the `google.protobuf.Struct` ValidateJWTSVID returns.
pub fn claims_struct(claims: &serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: claims
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect(),
    }
}

fn json_value(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        // Struct numbers are doubles; JWT times fit them exactly.
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_value).collect(),
        }),
        Value::Object(m) => Kind::StructValue(claims_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, revision: u64) -> Entry {
        Entry {
            id: id.into(),
            spiffe_id: SpiffeId::parse("spiffe://example.org/w").unwrap(),
            selectors: vec![],
            federates_with: vec![],
            hint: String::new(),
            revision,
            created_at: 0,
        }
    }

    fn jwt(iat: i64, exp: i64) -> Arc<CachedJwt> {
        Arc::new(CachedJwt {
            spiffe_id: "spiffe://example.org/w".into(),
            token: format!("t{iat}"),
            issued_at: iat,
            expires_at: exp,
        })
    }

    #[test]
    fn key_normalizes_audience_and_tracks_revision() {
        let e = entry("e1", 1);
        let a = CacheKey::new(&e, &["b".into(), "a".into(), "a".into()]);
        let b = CacheKey::new(&e, &["a".into(), "b".into()]);
        assert_eq!(a, b);
        assert_eq!(a.audience(), ["a", "b"]);
        assert_ne!(a, CacheKey::new(&entry("e1", 2), &["a".into(), "b".into()]));
        assert_ne!(a, CacheKey::new(&entry("e2", 1), &["a".into(), "b".into()]));
        assert_ne!(a, CacheKey::new(&e, &["a".into()]));
    }

    #[test]
    fn tokens_are_reused_until_half_life() {
        let c = JwtCache::new(10);
        let k = CacheKey::new(&entry("e", 1), &["a".into()]);
        c.insert(k.clone(), jwt(1000, 1300));
        assert_eq!(c.get(&k, 1000).unwrap().token, "t1000");
        assert!(c.get(&k, 1149).is_some());
        assert!(c.get(&k, 1150).is_none(), "stale at half life");
        assert!(c.is_empty(), "a stale token is dropped");
    }

    #[test]
    fn cache_is_bounded_and_evicts_oldest() {
        let c = JwtCache::new(3);
        let keys: Vec<CacheKey> = (0..5)
            .map(|i| CacheKey::new(&entry("e", 1), &[format!("aud{i}")]))
            .collect();
        for k in &keys {
            c.insert(k.clone(), jwt(1000, 2000));
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&keys[0], 1000).is_none());
        assert!(c.get(&keys[1], 1000).is_none());
        for k in &keys[2..] {
            assert!(c.get(k, 1000).is_some());
        }
        // Replacing a key refreshes its place in the order.
        c.insert(keys[2].clone(), jwt(1001, 2000));
        c.insert(
            CacheKey::new(&entry("x", 1), &["z".into()]),
            jwt(1000, 2000),
        );
        assert_eq!(c.len(), 3);
        assert!(c.get(&keys[2], 1001).is_some());
        assert!(c.get(&keys[3], 1000).is_none());
    }

    #[test]
    fn claims_become_a_struct() {
        let claims: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"sub":"spiffe://example.org/w","aud":["a","b"],"exp":1700000000,"x":{"y":true,"z":null}}"#,
        )
        .unwrap();
        let s = claims_struct(&claims);
        assert_eq!(
            s.fields["sub"].kind,
            Some(Kind::StringValue("spiffe://example.org/w".into()))
        );
        assert_eq!(
            s.fields["exp"].kind,
            Some(Kind::NumberValue(1_700_000_000.0))
        );
        let Some(Kind::ListValue(aud)) = &s.fields["aud"].kind else {
            panic!("aud is not a list");
        };
        assert_eq!(aud.values.len(), 2);
        let Some(Kind::StructValue(x)) = &s.fields["x"].kind else {
            panic!("x is not a struct");
        };
        assert_eq!(x.fields["y"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(x.fields["z"].kind, Some(Kind::NullValue(0)));
    }
}
