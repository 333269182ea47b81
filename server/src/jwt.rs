//! The server's JWT-SVID signing keys: creation, rotation, publication and minting.
//!
//! Keys follow SPIRE's schedule. Each key lives `ca_ttl`; the next key is *prepared* (generated,
//! persisted and published in the own bundle with `use: jwt-svid`) at half the active key's
//! life, and *activated* (starts signing) when a sixth of the active key's life remains. The key
//! it replaces becomes *old*: it stays published until its own end of validity, and because no
//! token outlives the key that signed it (`exp` is capped at the key's `not_after`), every token
//! it signed has expired by the time it leaves the bundle. Operators can prepare and activate by
//! hand through the `LocalAuthority` admin service.
//!
//! Keys are persisted as [`Authority`] records of kind [`AuthorityKind::JwtKey`] whose `id` is
//! the `kid`; the private key lives only in the store (sled files are 0600 in a 0700 directory)
//! and in this process's memory, and is never logged.
//!
//! Every change of the published set is stored by the CA together with the bundle document
//! that publishes it, in one transaction (a new bundle sequence number, a new store revision),
//! and the revision is then announced to the registry
//! ([`crate::x509_rotation::publish`]), so each agent's sync stream pushes the new bundle.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use sigil_core::jwt::{self, JwtClaims, JwtKeyType, JwtSigner};
use sigil_core::x509::unix_secs;
use sigil_core::{JwtAuthority, SpiffeId};
use sigil_proto::sigil::v1 as pb;
use tokio::sync::watch;

use crate::ca::CaError;
use crate::datastore::{Authority, AuthorityKind, AuthorityState, AuthorityWrite, DataStore};
use crate::state::State;
use crate::status::ApiError;

/// Longest a prepared key waits, once its activation time has come, so that agents have had a
/// chance to receive it through sync before anything it signs reaches a relying party. Capped at
/// a twelfth of the key lifetime for very short test lifetimes.
const PUBLISH_GRACE_SECS: i64 = 60;

/// How often the rotation task looks at the schedule at most (it wakes earlier when an event is
/// due sooner).
const MAX_TICK: Duration = Duration::from_secs(60);

/// The signing key in use.
struct ActiveKey {
    signer: JwtSigner,
    not_after: i64,
}

/// The live JWT key records and the signer of the active one.
#[derive(Clone, Default)]
struct KeySet {
    /// Every live key (prepared, active, old), in no particular order.
    records: Vec<Authority>,
    active: Option<Arc<ActiveKey>>,
}

/// A JWT-SVID as minted for an agent.
#[derive(Clone, Debug)]
pub struct MintedJwt {
    /// Compact JWS.
    pub token: String,
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// `exp`, Unix seconds (never after the signing key's end of validity).
    pub expires_at: i64,
}

/// One key as the admin API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// `kid`.
    pub key_id: String,
    /// DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// `ES256` or `ES384`.
    pub algorithm: &'static str,
}

/// The rotation state as the admin API reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeysInfo {
    /// The key signing now.
    pub active: Option<KeyInfo>,
    /// The key published to sign next.
    pub prepared: Option<KeyInfo>,
    /// Keys no longer signing but still published, oldest first.
    pub old: Vec<KeyInfo>,
}

/// The server's JWT signing keys.
pub struct JwtKeys {
    key_type: JwtKeyType,
    lifetime: Duration,
    set: RwLock<KeySet>,
    /// Serializes rotation steps (the automatic task and admin calls). The CA's commit lock is
    /// always taken first.
    update: Mutex<()>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("key_type", &self.key_type)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn new_record(
    kind: JwtKeyType,
    lifetime: Duration,
    now: i64,
    state: AuthorityState,
) -> Result<Authority, CaError> {
    let key = jwt::generate_key(kind)?;
    Ok(Authority {
        id: jwt::new_key_id(),
        kind: AuthorityKind::JwtKey,
        cert_der: vec![],
        chain_der: vec![],
        roots_der: vec![],
        public_key_der: key.public_key_der,
        private_key_pkcs8: key.pkcs8,
        not_before: now,
        not_after: now.saturating_add(secs(lifetime)),
        state,
    })
}

fn set_state(records: &mut [Authority], i: usize, state: AuthorityState, ch: &mut AuthorityWrite) {
    records[i].state = state;
    ch.put.push(records[i].clone());
}

fn find(records: &[Authority], state: AuthorityState) -> Option<usize> {
    records
        .iter()
        .enumerate()
        .filter(|(_, a)| a.state == state)
        .max_by_key(|(_, a)| (a.not_before, a.id.clone()))
        .map(|(i, _)| i)
}

fn grace(life: i64) -> i64 {
    PUBLISH_GRACE_SECS.min(life / 12)
}

/// One step of the automatic schedule on `records`: drop ended keys, make sure one key is
/// active, prepare the next at half life, activate it when a sixth of the life remains.
fn rotate_records(
    records: &mut Vec<Authority>,
    kind: JwtKeyType,
    lifetime: Duration,
    now: i64,
) -> Result<AuthorityWrite, CaError> {
    let mut ch = AuthorityWrite::default();
    records.retain(|a| {
        let live = a.not_after > now;
        if !live {
            ch.delete.push(a.id.clone());
        }
        live
    });
    // Exactly one active and at most one prepared key; extras are the leftovers of a crash.
    if let Some(keep) = find(records, AuthorityState::Active) {
        let extra: Vec<usize> = (0..records.len())
            .filter(|&i| i != keep && records[i].state == AuthorityState::Active)
            .collect();
        for i in extra {
            set_state(records, i, AuthorityState::Old, &mut ch);
        }
    }
    if let Some(keep) = find(records, AuthorityState::Prepared) {
        let keep_id = records[keep].id.clone();
        records.retain(|a| {
            let extra = a.state == AuthorityState::Prepared && a.id != keep_id;
            if extra {
                ch.delete.push(a.id.clone());
            }
            !extra
        });
    }
    let active = find(records, AuthorityState::Active);
    let prepared = find(records, AuthorityState::Prepared);
    match (active, prepared) {
        (None, Some(p)) => set_state(records, p, AuthorityState::Active, &mut ch),
        (None, None) => {
            let a = new_record(kind, lifetime, now, AuthorityState::Active)?;
            tracing::info!(key_id = %a.id, "created a JWT signing key");
            ch.put.push(a.clone());
            records.push(a);
        }
        (Some(a), None) => {
            let (nb, na) = (records[a].not_before, records[a].not_after);
            if now >= nb + (na - nb) / 2 {
                let p = new_record(kind, lifetime, now, AuthorityState::Prepared)?;
                tracing::info!(key_id = %p.id, "prepared the next JWT signing key");
                ch.put.push(p.clone());
                records.push(p);
            }
        }
        (Some(a), Some(p)) => {
            let (nb, na) = (records[a].not_before, records[a].not_after);
            let life = na - nb;
            if now >= na - life / 6 && now >= records[p].not_before + grace(life) {
                tracing::info!(
                    key_id = %records[p].id, previous = %records[a].id,
                    "activated the prepared JWT signing key"
                );
                set_state(records, a, AuthorityState::Old, &mut ch);
                set_state(records, p, AuthorityState::Active, &mut ch);
            }
        }
    }
    Ok(ch)
}

fn info(a: &Authority) -> KeyInfo {
    KeyInfo {
        key_id: a.id.clone(),
        public_key_der: a.public_key_der.clone(),
        created_at: a.not_before,
        expires_at: a.not_after,
        algorithm: JwtKeyType::of_public_key(&a.public_key_der)
            .map_or("unknown", |k| k.alg().as_str()),
    }
}

/// Stores one key change together with the bundle that publishes the resulting keys (the CA
/// does it, in one transaction); see [`crate::ca::Ca::jwt_rotate`].
pub trait Persist: FnOnce(AuthorityWrite, Vec<JwtAuthority>) -> Result<(), CaError> {}

impl<F: FnOnce(AuthorityWrite, Vec<JwtAuthority>) -> Result<(), CaError>> Persist for F {}

/// The keys to publish for `records`: every live key, prepared ones included, oldest first.
fn published_of(records: &[Authority]) -> Vec<JwtAuthority> {
    let mut records: Vec<&Authority> = records.iter().collect();
    records.sort_by(|a, b| (a.not_before, &a.id).cmp(&(b.not_before, &b.id)));
    records
        .into_iter()
        .map(|a| JwtAuthority {
            key_id: a.id.clone(),
            public_key_der: a.public_key_der.clone(),
            expires_at: a.not_after,
        })
        .collect()
}

impl JwtKeys {
    /// Takes the stored key `records` and brings them up to date with the schedule at `now`
    /// (on first start this creates and activates the first key). Returns the keys and the
    /// store writes that made them so, which the caller stores with the bundle before anything
    /// is signed.
    pub fn load(
        mut records: Vec<Authority>,
        key_type: JwtKeyType,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<(Self, AuthorityWrite), CaError> {
        let changes = rotate_records(&mut records, key_type, lifetime, unix_secs(now))?;
        let keys = Self {
            key_type,
            lifetime,
            set: RwLock::new(KeySet::default()),
            update: Mutex::new(()),
        };
        keys.install(records)?;
        Ok((keys, changes))
    }

    fn snapshot(&self) -> KeySet {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes `records` (and the signer of their active key) current in memory.
    fn install(&self, records: Vec<Authority>) -> Result<(), CaError> {
        let active = match find(&records, AuthorityState::Active) {
            Some(i) => {
                let a = &records[i];
                Some(Arc::new(ActiveKey {
                    signer: JwtSigner::from_pkcs8(a.id.clone(), &a.private_key_pkcs8)?,
                    not_after: a.not_after,
                }))
            }
            None => None,
        };
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = KeySet { records, active };
        Ok(())
    }

    /// Stores `changes` with the bundle publishing `records` (through `persist`), then makes
    /// `records` current. The active signer is built first, so a key that cannot sign is never
    /// stored as active.
    fn commit(
        &self,
        records: Vec<Authority>,
        changes: AuthorityWrite,
        persist: impl Persist,
    ) -> Result<(), CaError> {
        if let Some(i) = find(&records, AuthorityState::Active) {
            JwtSigner::from_pkcs8(records[i].id.clone(), &records[i].private_key_pkcs8)?;
        }
        persist(changes, published_of(&records))?;
        self.install(records)
    }

    /// Runs one step of the automatic schedule; true when the published keys changed.
    pub fn rotate(&self, now: SystemTime, persist: impl Persist) -> Result<bool, CaError> {
        let _u = self.update.lock().unwrap_or_else(|p| p.into_inner());
        let mut records = self.snapshot().records;
        let ch = rotate_records(&mut records, self.key_type, self.lifetime, unix_secs(now))?;
        if ch.is_empty() {
            return Ok(false);
        }
        self.commit(records, ch, persist)?;
        Ok(true)
    }

    /// Generates and publishes the next key by hand. A prepared key that was never activated is
    /// discarded (it never signed anything).
    pub fn prepare(&self, now: SystemTime, persist: impl Persist) -> Result<KeyInfo, CaError> {
        let _u = self.update.lock().unwrap_or_else(|p| p.into_inner());
        let mut records = self.snapshot().records;
        let mut ch = AuthorityWrite::default();
        records.retain(|a| {
            let replaced = a.state == AuthorityState::Prepared;
            if replaced {
                ch.delete.push(a.id.clone());
            }
            !replaced
        });
        let p = new_record(
            self.key_type,
            self.lifetime,
            unix_secs(now),
            AuthorityState::Prepared,
        )?;
        let out = info(&p);
        ch.put.push(p.clone());
        records.push(p);
        self.commit(records, ch, persist)?;
        tracing::info!(key_id = %out.key_id, "prepared a JWT signing key (by hand)");
        Ok(out)
    }

    /// Makes the prepared key the signing key by hand; the previous one becomes old and stays
    /// published until it ends. With `key_id`, the prepared key must be that one, so an operator
    /// never activates a key someone else prepared meanwhile.
    pub fn activate(
        &self,
        key_id: Option<&str>,
        persist: impl Persist,
    ) -> Result<KeyInfo, ApiError> {
        let _u = self.update.lock().unwrap_or_else(|p| p.into_inner());
        let mut records = self.snapshot().records;
        let Some(p) = find(&records, AuthorityState::Prepared) else {
            return Err(ApiError::FailedPrecondition(
                "no JWT key is prepared; prepare one first".into(),
            ));
        };
        if let Some(want) = key_id
            && records[p].id != want
        {
            return Err(ApiError::FailedPrecondition(format!(
                "key_id: the prepared JWT key is {:?}, not {want:?}",
                records[p].id
            )));
        }
        let mut ch = AuthorityWrite::default();
        if let Some(a) = find(&records, AuthorityState::Active) {
            set_state(&mut records, a, AuthorityState::Old, &mut ch);
        }
        set_state(&mut records, p, AuthorityState::Active, &mut ch);
        let out = info(&records[p]);
        self.commit(records, ch, persist).map_err(ApiError::from)?;
        tracing::info!(key_id = %out.key_id, "activated a JWT signing key (by hand)");
        Ok(out)
    }

    /// The keys to publish in the bundle: every live key, prepared ones included, oldest first.
    pub fn published(&self) -> Vec<JwtAuthority> {
        published_of(&self.snapshot().records)
    }

    /// The rotation state.
    pub fn info(&self) -> KeysInfo {
        let set = self.snapshot();
        let mut out = KeysInfo::default();
        let mut old: Vec<&Authority> = Vec::new();
        for a in &set.records {
            match a.state {
                AuthorityState::Active => out.active = Some(info(a)),
                AuthorityState::Prepared => out.prepared = Some(info(a)),
                AuthorityState::Old => old.push(a),
            }
        }
        old.sort_by_key(|a| a.not_before);
        out.old = old.into_iter().map(info).collect();
        out
    }

    /// When the schedule next needs attention (Unix seconds).
    pub fn next_event(&self, now: SystemTime) -> i64 {
        let now = unix_secs(now);
        let set = self.snapshot();
        let mut next = set.records.iter().map(|a| a.not_after).min().unwrap_or(now);
        let active = find(&set.records, AuthorityState::Active).map(|i| &set.records[i]);
        let prepared = find(&set.records, AuthorityState::Prepared).map(|i| &set.records[i]);
        match (active, prepared) {
            (Some(a), None) => next = next.min(a.not_before + (a.not_after - a.not_before) / 2),
            (Some(a), Some(p)) => {
                let life = a.not_after - a.not_before;
                next = next.min((a.not_after - life / 6).max(p.not_before + grace(life)));
            }
            (None, _) => next = now,
        }
        next
    }

    /// Signs a JWT-SVID for `id` with the active key. The lifetime is `ttl`, cut short so the
    /// token never outlives the key (which is published until then).
    pub fn sign(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
        issuer: Option<&str>,
        now: SystemTime,
    ) -> Result<MintedJwt, CaError> {
        let active = self
            .set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .active
            .clone()
            .ok_or_else(|| CaError::Upstream("no active JWT signing key".into()))?;
        let issued_at = unix_secs(now);
        let expires_at = issued_at.saturating_add(secs(ttl)).min(active.not_after);
        if expires_at <= issued_at {
            return Err(CaError::Upstream(
                "the active JWT signing key has expired".into(),
            ));
        }
        let token = active.signer.sign(&JwtClaims {
            subject: id,
            audience,
            issued_at,
            expires_at,
            issuer,
        })?;
        Ok(MintedJwt {
            token,
            issued_at,
            expires_at,
        })
    }
}

/// True when two key lists publish the same keys (ignoring the expiry metadata that the SPIFFE
/// bundle document does not carry).
pub fn same_keys(a: &[JwtAuthority], b: &[JwtAuthority]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.key_id == y.key_id && x.public_key_der == y.public_key_der)
}

/// Runs a key operation on the blocking pool (store writes fsync; key generation is CPU work).
async fn blocking<T, F>(st: &State, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn DataStore, &crate::ca::Ca) -> Result<T, ApiError> + Send + 'static,
{
    let store = Arc::clone(&st.store);
    let ca = Arc::clone(&st.ca);
    tokio::task::spawn_blocking(move || f(store.as_ref(), &ca))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// One automatic rotation step, announced when it changed anything. The keys and the bundle
/// publishing them were stored together by the CA.
pub async fn rotate(st: &State) -> Result<(), ApiError> {
    let _w = st.write_lock.lock().await;
    let now = st.now();
    let changed = blocking(st, move |s, ca| Ok(ca.jwt_rotate(s, now)?)).await?;
    if changed {
        crate::x509_rotation::publish(st).await?;
    }
    Ok(())
}

/// Prepares the next key by hand (admin API) and publishes it.
pub async fn prepare(st: &State) -> Result<KeysInfo, ApiError> {
    let _w = st.write_lock.lock().await;
    let now = st.now();
    blocking(st, move |s, ca| Ok(ca.jwt_prepare(s, now)?)).await?;
    crate::x509_rotation::publish(st).await?;
    Ok(st.ca.jwt().info())
}

/// Activates the prepared key by hand (admin API).
pub async fn activate(st: &State, key_id: Option<String>) -> Result<KeysInfo, ApiError> {
    let _w = st.write_lock.lock().await;
    blocking(st, move |s, ca| ca.jwt_activate(s, key_id.as_deref())).await?;
    crate::x509_rotation::publish(st).await?;
    Ok(st.ca.jwt().info())
}

/// Runs the rotation schedule until `shutdown` flips.
pub async fn run(st: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let now = st.now();
        let wait = st.ca.jwt().next_event(now) - unix_secs(now);
        let wait = Duration::from_secs(u64::try_from(wait).unwrap_or(0))
            .clamp(Duration::from_secs(1), MAX_TICK);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = rotate(&st).await {
            tracing::error!(error = %e, "JWT key rotation failed; retrying");
        }
    }
}

/// Longest audience value accepted, and most audiences per token: generous for real use.
const MAX_AUDIENCE_LEN: usize = 512;
const MAX_AUDIENCES: usize = 16;
/// Most bytes the audience takes in the token's JSON payload, escapes included, so a token
/// stays well below [`jwt::MAX_TOKEN_LEN`] (which every verifier, ours included, enforces).
/// The per-value limits alone did not: JSON escapes a control character in six bytes.
const MAX_AUDIENCE_JSON_LEN: usize = 8 * 1024;

/// Checks the audience of a mint request: at least one, none empty.
pub fn check_audience(audience: &[String]) -> Result<(), ApiError> {
    if audience.is_empty() {
        return Err(ApiError::invalid("audience", "at least one is required"));
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(ApiError::invalid(
            "audience",
            format!("at most {MAX_AUDIENCES} values"),
        ));
    }
    if audience.iter().any(String::is_empty) {
        return Err(ApiError::invalid("audience", "values must not be empty"));
    }
    if audience.iter().any(|a| a.len() > MAX_AUDIENCE_LEN) {
        return Err(ApiError::invalid(
            "audience",
            format!("values must be at most {MAX_AUDIENCE_LEN} bytes"),
        ));
    }
    let encoded = serde_json::to_string(audience).map_or(usize::MAX, |j| j.len());
    if encoded > MAX_AUDIENCE_JSON_LEN {
        return Err(ApiError::invalid(
            "audience",
            format!("takes {encoded} bytes in the token, more than {MAX_AUDIENCE_JSON_LEN}"),
        ));
    }
    Ok(())
}

/// A key on the admin wire.
pub fn key_info_to_pb(k: &KeyInfo) -> pb::JwtAuthorityInfo {
    pb::JwtAuthorityInfo {
        key_id: k.key_id.clone(),
        public_key: k.public_key_der.clone(),
        created_at: k.created_at,
        expires_at: k.expires_at,
        algorithm: k.algorithm.to_owned(),
    }
}

/// The rotation state on the admin wire.
pub fn keys_info_to_pb(i: &KeysInfo, bundle_sequence: u64) -> pb::JwtAuthorityState {
    pb::JwtAuthorityState {
        active: i.active.as_ref().map(key_info_to_pb),
        prepared: i.prepared.as_ref().map(key_info_to_pb),
        old: i.old.iter().map(key_info_to_pb).collect(),
        bundle_sequence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    const T0: i64 = 1_700_000_000;

    fn step(records: &mut Vec<Authority>, now: i64) -> AuthorityWrite {
        rotate_records(records, JwtKeyType::Es256, Duration::from_secs(DAY), now).unwrap()
    }

    fn states(records: &[Authority]) -> Vec<(AuthorityState, i64)> {
        let mut v: Vec<_> = records.iter().map(|a| (a.state, a.not_before)).collect();
        v.sort_by_key(|x| x.1);
        v
    }

    #[test]
    fn schedule_follows_spire() {
        let day = DAY as i64;
        let mut r = Vec::new();
        // First start: one active key.
        let ch = step(&mut r, T0);
        assert_eq!(ch.put.len(), 1);
        assert_eq!(states(&r), vec![(AuthorityState::Active, T0)]);
        // Nothing happens before half life.
        assert!(step(&mut r, T0 + day / 2 - 1).is_empty());
        // At half life the next key is prepared.
        let half = T0 + day / 2;
        step(&mut r, half);
        assert_eq!(
            states(&r),
            vec![
                (AuthorityState::Active, T0),
                (AuthorityState::Prepared, half)
            ]
        );
        // Still the same until a sixth of the life remains.
        let act = T0 + day - day / 6;
        assert!(step(&mut r, act - 1).is_empty());
        let ch = step(&mut r, act);
        assert_eq!(ch.put.len(), 2);
        assert_eq!(
            states(&r),
            vec![(AuthorityState::Old, T0), (AuthorityState::Active, half)]
        );
        // The old key stays until its end, then goes.
        assert!(step(&mut r, T0 + day - 1).is_empty());
        let ch = step(&mut r, T0 + day);
        assert_eq!(ch.delete.len(), 1);
        // ... which is also the new key's half life, so the one after it is prepared.
        assert_eq!(
            states(&r),
            vec![
                (AuthorityState::Active, half),
                (AuthorityState::Prepared, T0 + day)
            ]
        );
    }

    #[test]
    fn activation_waits_for_publication_grace() {
        let day = DAY as i64;
        let mut r = Vec::new();
        step(&mut r, T0);
        // The server was down past the activation point: the key is prepared late and only
        // activated once it has been published for the grace period.
        let late = T0 + day - day / 12;
        step(&mut r, late);
        assert_eq!(r.len(), 2);
        assert!(step(&mut r, late + PUBLISH_GRACE_SECS - 1).is_empty());
        step(&mut r, late + PUBLISH_GRACE_SECS);
        assert_eq!(
            states(&r),
            vec![(AuthorityState::Old, T0), (AuthorityState::Active, late)]
        );
    }

    #[test]
    fn recovers_from_expired_and_duplicate_keys() {
        let day = DAY as i64;
        let mut r = Vec::new();
        step(&mut r, T0);
        // Everything expired while the server was off: a new key becomes active at once.
        let ch = step(&mut r, T0 + 3 * day);
        assert_eq!(ch.delete.len(), 1);
        assert_eq!(states(&r), vec![(AuthorityState::Active, T0 + 3 * day)]);
        // Two active and two prepared records (a crash mid-rotation): one of each survives.
        let mut r = Vec::new();
        step(&mut r, T0);
        let mut dup = r[0].clone();
        dup.id = "dup".into();
        dup.not_before = T0 + 1;
        r.push(dup);
        for (id, nb) in [("p1", T0 + 2), ("p2", T0 + 3)] {
            let mut p = r[0].clone();
            p.id = id.into();
            p.not_before = nb;
            p.state = AuthorityState::Prepared;
            r.push(p);
        }
        let ch = step(&mut r, T0 + 10);
        assert_eq!(ch.delete, vec!["p1".to_owned()]);
        let active: Vec<_> = r
            .iter()
            .filter(|a| a.state == AuthorityState::Active)
            .collect();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].id, "dup");
    }

    #[test]
    fn audience_rules() {
        assert!(check_audience(&["a".into()]).is_ok());
        for bad in [
            vec![],
            vec![String::new()],
            vec!["a".into(), String::new()],
            vec!["x".repeat(MAX_AUDIENCE_LEN + 1)],
            vec!["a".into(); MAX_AUDIENCES + 1],
        ] {
            let e = check_audience(&bad).unwrap_err();
            assert!(e.to_string().starts_with("audience:"), "{e}");
        }
    }

    /// Found by the `node_requests` fuzz target's property "an accepted audience list yields a
    /// token valid for each audience": 16 values of 512 control characters passed the
    /// per-value limits, but JSON escapes each character in six bytes, and the minted token was
    /// longer than any verifier (ours included) accepts.
    #[test]
    fn an_accepted_audience_always_fits_a_verifiable_token() {
        let escaped: Vec<String> = (0..MAX_AUDIENCES)
            .map(|i| format!("{}{i}", "\u{1}".repeat(MAX_AUDIENCE_LEN - 2)))
            .collect();
        let e = check_audience(&escaped).unwrap_err();
        assert!(e.to_string().starts_with("audience:"), "{e}");

        let key = jwt::generate_key(jwt::JwtKeyType::Es256).unwrap();
        let signer = jwt::JwtSigner::from_pkcs8("k".into(), &key.pkcs8).unwrap();
        let mut bundle = sigil_core::Bundle::new(sigil_core::TrustDomain::new("td").unwrap());
        bundle.jwt_authorities.push(sigil_core::JwtAuthority {
            key_id: "k".into(),
            public_key_der: key.public_key_der,
            expires_at: 0,
        });
        let sub =
            sigil_core::SpiffeId::parse(&format!("spiffe://td/{}", "s".repeat(2000))).unwrap();
        // The largest audiences still accepted: plain values, and values full of quotes.
        let plain: Vec<String> = (0..MAX_AUDIENCES).map(|i| format!("{i:0>480}")).collect();
        let quoted: Vec<String> = (0..MAX_AUDIENCES)
            .map(|i| format!("{i}{}", "\"".repeat(240)))
            .collect();
        for audience in [plain, quoted] {
            check_audience(&audience).unwrap();
            let token = signer
                .sign(&jwt::JwtClaims {
                    subject: &sub,
                    audience: &audience,
                    issued_at: 1,
                    expires_at: 2,
                    issuer: Some("https://issuer.example.org"),
                })
                .unwrap();
            jwt::verify(&token, &audience[0], &[&bundle], 1).unwrap();
        }
    }
}
