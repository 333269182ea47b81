//! Issuance and rotation: every entry with selectors gets an SVID for a fresh key, renewed at
//! half its lifetime or when its entry changes. Requests are batched. Every SVID the server
//! returns is checked ([`crate::verify`]) before it is served; an entry the server refuses (or
//! answers with an SVID that fails the checks) is asked for again only after a back-off that
//! doubles per refusal, so a refused entry is not re-requested every few seconds forever.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rcgen::PublicKeyData;
use rustls_pki_types::CertificateDer;
use sigil_core::{Bundle, keys};
use sigil_proto::sigil::v1 as pb;
use tokio::sync::watch;
use tonic::Code;

use crate::cache::{Cache, Entry, Snapshot, Svid};
use crate::node::NodeClient;

/// Most CSRs per signing RPC.
pub const BATCH: usize = 200;

/// Wait before asking again for an entry after its first refusal.
pub const REFUSAL_FIRST: Duration = Duration::from_secs(2);

/// Longest wait between two requests for an entry that keeps being refused.
pub const REFUSAL_MAX: Duration = Duration::from_secs(300);

/// When an SVID issued at `not_before` and expiring at `not_after` should be renewed.
pub fn renew_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life / 2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    revision: u64,
    delay: Duration,
    retry_at: SystemTime,
}

/// Entries the server refused, and when each may be asked for again. A new revision of the
/// entry (the operator changed it) ends the wait at once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Refusals(HashMap<String, Refusal>);

impl Refusals {
    /// Records a refusal of `entry` at `now` and returns when to ask again: after
    /// [`REFUSAL_FIRST`], doubled for every further refusal of the same revision, at most
    /// [`REFUSAL_MAX`].
    pub fn refuse(&mut self, entry: &Entry, now: SystemTime) -> SystemTime {
        let delay = match self.0.get(&entry.id) {
            Some(r) if r.revision == entry.revision => (r.delay * 2).min(REFUSAL_MAX),
            _ => REFUSAL_FIRST,
        };
        let retry_at = now + delay;
        self.0.insert(
            entry.id.clone(),
            Refusal {
                revision: entry.revision,
                delay,
                retry_at,
            },
        );
        retry_at
    }

    /// The server issued an SVID for `entry_id`: no more waiting for it.
    pub fn accept(&mut self, entry_id: &str) {
        self.0.remove(entry_id);
    }

    /// When `entry` may be asked for again, while it must still wait at `now`.
    pub fn waiting(&self, entry: &Entry, now: SystemTime) -> Option<SystemTime> {
        self.0
            .get(&entry.id)
            .filter(|r| r.revision == entry.revision && r.retry_at > now)
            .map(|r| r.retry_at)
    }

    /// Forgets entries `snap` no longer has.
    pub fn retain(&mut self, snap: &Snapshot) {
        self.0.retain(|id, _| snap.entries.contains_key(id));
    }
}

/// Entries needing a (new) SVID now, and the earliest future time something is due: a renewal,
/// or the end of a refused entry's wait.
pub fn due(
    snap: &Snapshot,
    now: SystemTime,
    refusals: &Refusals,
) -> (Vec<Arc<Entry>>, Option<SystemTime>) {
    let mut out = Vec::new();
    let mut next: Option<SystemTime> = None;
    let mut later = |t: SystemTime| next = Some(next.map_or(t, |n: SystemTime| n.min(t)));
    for e in snap.entries.values() {
        if e.selectors.is_empty() {
            continue; // node aliases: nothing runs as them on this node
        }
        match snap.svids.get(e.id.as_str()) {
            Some(s) if s.entry_revision == e.revision && s.renew_at > now => later(s.renew_at),
            _ => match refusals.waiting(e, now) {
                Some(t) => later(t),
                None => out.push(Arc::clone(e)),
            },
        }
    }
    (out, next)
}

struct Pending {
    entry: Arc<Entry>,
    key_pkcs8: Vec<u8>,
    /// DER SubjectPublicKeyInfo of the key, which the returned leaf must certify.
    spki: Vec<u8>,
}

/// What one signing RPC gave: SVIDs that passed the checks, and entries that got none.
struct Signed {
    svids: Vec<Svid>,
    refused: Vec<Arc<Entry>>,
}

/// Turns one per-entry result into an SVID after checking it against what was asked.
fn accept_svid(p: &Pending, svid: pb::X509Svid, bundle: Option<&Bundle>) -> Result<Svid, String> {
    let certs: Vec<CertificateDer<'_>> = svid
        .cert_chain
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    crate::verify::x509_svid(
        &certs,
        &p.entry.spiffe_id,
        &p.spki,
        bundle,
        SystemTime::now(),
    )
    .map_err(|e| e.to_string())?;
    let leaf = svid.cert_chain.first().ok_or("empty chain")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    // notBefore is backdated for clock skew; the lifetime that matters starts now.
    let not_before = SystemTime::now();
    let not_after = sigil_core::x509::to_system_time(cert.validity().not_after.timestamp());
    // One buffer for the chain; the per-certificate views share it (no second copy of every
    // certificate in memory: the cache holds one SVID per entry, possibly tens of thousands).
    let lens: Vec<usize> = svid.cert_chain.iter().map(Vec::len).collect();
    let chain_der = Bytes::from(if svid.cert_chain.len() == 1 {
        svid.cert_chain.into_iter().next().unwrap_or_default()
    } else {
        svid.cert_chain.concat()
    });
    let mut certs = Vec::with_capacity(lens.len());
    let mut at = 0;
    for len in lens {
        certs.push(chain_der.slice(at..at + len));
        at += len;
    }
    Ok(Svid {
        entry_id: p.entry.id.clone(),
        entry_revision: p.entry.revision,
        spiffe_id: p.entry.spiffe_id.clone(),
        chain_der,
        certs,
        // Copied here so the long-lived key is not left pinning the blocking thread's malloc
        // arena (where key generation's scratch allocations were made).
        key_pkcs8: Bytes::copy_from_slice(&p.key_pkcs8),
        not_after,
        renew_at: renew_time(not_before, not_after),
        hint: p.entry.hint.clone(),
    })
}

async fn sign_batch(
    node: &NodeClient,
    batch: Vec<Arc<Entry>>,
    bundle: Option<&Bundle>,
) -> Result<Signed, tonic::Status> {
    let all = batch.clone();
    // Key generation is CPU work; keep it off the async workers.
    let prepared = tokio::task::spawn_blocking(move || {
        batch
            .into_iter()
            .filter_map(|entry| {
                let key = keys::generate(keys::KeyType::EcP256).ok()?;
                let csr = keys::csr_der(&key).ok()?;
                Some((
                    Pending {
                        entry,
                        key_pkcs8: key.serialize_der(),
                        spki: key.subject_public_key_info(),
                    },
                    csr,
                ))
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let params = prepared
        .iter()
        .map(|(p, csr)| pb::SignX509SvidParam {
            entry_id: p.entry.id.clone(),
            csr: csr.clone(),
        })
        .collect();
    let resp = node
        .client()
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest { params })
        .await?
        .into_inner();
    let mut by_id: HashMap<String, Pending> = prepared
        .into_iter()
        .map(|(p, _)| (p.entry.id.clone(), p))
        .collect();
    let mut svids = Vec::new();
    for r in resp.results {
        let Some(p) = by_id.remove(&r.entry_id) else {
            continue;
        };
        if r.code != 0 {
            tracing::warn!(entry_id = %r.entry_id, error = %r.error, "server refused an SVID");
            continue;
        }
        let Some(svid) = r.svid else { continue };
        match accept_svid(&p, svid, bundle) {
            Ok(s) => svids.push(s),
            Err(reason) => tracing::error!(
                entry_id = %p.entry.id, spiffe_id = %p.entry.spiffe_id, %reason,
                "the server returned an SVID that fails verification; not serving it"
            ),
        }
    }
    let issued: std::collections::HashSet<&str> =
        svids.iter().map(|s| s.entry_id.as_str()).collect();
    let refused = all
        .into_iter()
        .filter(|e| !issued.contains(e.id.as_str()))
        .collect();
    Ok(Signed { svids, refused })
}

/// Runs issuance/rotation until shutdown.
pub async fn run(node: Arc<NodeClient>, cache: Arc<Cache>, mut shutdown: watch::Receiver<bool>) {
    let mut rx = cache.subscribe();
    let mut backoff = Duration::from_millis(200);
    let mut refusals = Refusals::default();
    loop {
        let snap = Arc::clone(&rx.borrow_and_update());
        let now = SystemTime::now();
        refusals.retain(&snap);
        let (todo, next) = if snap.denied {
            (vec![], None)
        } else {
            due(&snap, now, &refusals)
        };
        let bundle = snap.bundle.as_ref().map(|b| &b.bundle);
        let mut failed = false;
        for chunk in todo.chunks(BATCH) {
            match sign_batch(&node, chunk.to_vec(), bundle).await {
                Ok(signed) => {
                    for s in &signed.svids {
                        refusals.accept(&s.entry_id);
                    }
                    for e in &signed.refused {
                        let retry_at = refusals.refuse(e, now);
                        tracing::debug!(entry_id = %e.id, ?retry_at, "no SVID for the entry; backing off");
                    }
                    cache.put_svids(signed.svids);
                }
                Err(s) if s.code() == Code::PermissionDenied => {
                    tracing::error!(reason = %s.message(), "server refused this agent: no identities will be served");
                    cache.deny();
                    failed = true;
                    break;
                }
                Err(s) => {
                    tracing::warn!(error = %s.message(), "SVID signing failed; will retry");
                    failed = true;
                    break;
                }
            }
        }
        if !todo.is_empty() && !failed {
            backoff = Duration::from_millis(200);
            // put_svids changed the snapshot, refused entries now wait: re-evaluate at once.
            continue;
        }
        let wait = if failed {
            let w = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            w
        } else {
            next.and_then(|t| t.duration_since(now).ok())
                .unwrap_or(Duration::from_secs(3600))
        };
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_half_life() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            renew_time(t0, t0 + Duration::from_secs(3600)),
            t0 + Duration::from_secs(1800)
        );
        assert_eq!(renew_time(t0, t0), t0);
        assert_eq!(
            renew_time(t0 + Duration::from_secs(5), t0),
            t0 + Duration::from_secs(5)
        );
    }

    fn entry(id: &str, revision: u64) -> Arc<Entry> {
        Arc::new(Entry {
            id: id.into(),
            spiffe_id: sigil_core::SpiffeId::parse(&format!("spiffe://example.org/{id}")).unwrap(),
            selectors: vec![sigil_core::Selector::parse("unix:uid:1").unwrap()],
            federates_with: vec![],
            hint: String::new(),
            revision,
            created_at: 0,
        })
    }

    fn snapshot(entries: &[Arc<Entry>]) -> Snapshot {
        Snapshot {
            entries: Arc::new(
                entries
                    .iter()
                    .map(|e| (e.id.clone(), Arc::clone(e)))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn refusals_back_off_exponentially_and_reset_on_change() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Duration::from_secs;
        let a = entry("a", 1);
        let mut r = Refusals::default();
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..10 {
            let at = r.refuse(&a, now);
            waits.push(at.duration_since(now).unwrap().as_secs());
            assert_eq!(r.waiting(&a, now), Some(at));
            assert_eq!(r.waiting(&a, at - s(1)), Some(at));
            assert_eq!(r.waiting(&a, at), None, "due again at its time");
            now = at;
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        // A new revision of the entry is asked for at once, and starts over if refused.
        let a2 = entry("a", 2);
        assert_eq!(r.waiting(&a2, now), None);
        assert_eq!(r.refuse(&a2, now), now + REFUSAL_FIRST);
        // Success forgets the entry; so does its removal.
        r.accept("a");
        assert_eq!(r.waiting(&a2, now), None);
        r.refuse(&a2, now);
        r.retain(&snapshot(&[]));
        assert_eq!(r, Refusals::default());
    }

    #[test]
    fn due_skips_entries_waiting_after_a_refusal() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (a, b) = (entry("a", 1), entry("b", 1));
        let snap = snapshot(&[Arc::clone(&a), Arc::clone(&b)]);
        let mut r = Refusals::default();
        let (todo, next) = due(&snap, t0, &r);
        assert_eq!(todo.len(), 2);
        assert_eq!(next, None);
        let retry = r.refuse(&a, t0);
        let (todo, next) = due(&snap, t0, &r);
        assert_eq!(
            todo.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(next, Some(retry), "the loop wakes when the wait ends");
        let (todo, _) = due(&snap, retry, &r);
        assert_eq!(todo.len(), 2);
    }
}
