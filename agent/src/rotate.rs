//! Issuance and rotation: every entry with selectors gets an SVID for a fresh key, renewed at
//! half its lifetime or when its entry changes. Requests are batched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sigil_core::keys;
use sigil_proto::sigil::v1 as pb;
use tokio::sync::watch;
use tonic::Code;

use crate::cache::{Cache, Entry, Snapshot, Svid};
use crate::node::NodeClient;

/// Most CSRs per signing RPC.
pub const BATCH: usize = 200;

/// When an SVID issued at `not_before` and expiring at `not_after` should be renewed.
pub fn renew_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life / 2
}

/// Entries needing a (new) SVID now, and the earliest future renewal time of the rest.
pub fn due(snap: &Snapshot, now: SystemTime) -> (Vec<Arc<Entry>>, Option<SystemTime>) {
    let mut out = Vec::new();
    let mut next: Option<SystemTime> = None;
    for e in snap.entries.values() {
        if e.selectors.is_empty() {
            continue; // node aliases: nothing runs as them on this node
        }
        match snap.svids.get(e.id.as_str()) {
            Some(s) if s.entry_revision == e.revision && s.renew_at > now => {
                next = Some(next.map_or(s.renew_at, |n| n.min(s.renew_at)));
            }
            _ => out.push(Arc::clone(e)),
        }
    }
    (out, next)
}

struct Pending {
    entry: Arc<Entry>,
    key_pkcs8: Vec<u8>,
}

async fn sign_batch(node: &NodeClient, batch: Vec<Arc<Entry>>) -> Result<Vec<Svid>, tonic::Status> {
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
    let mut out = Vec::new();
    for r in resp.results {
        let Some(p) = by_id.remove(&r.entry_id) else {
            continue;
        };
        if r.code != 0 {
            tracing::warn!(entry_id = %r.entry_id, error = %r.error, "server refused an SVID");
            continue;
        }
        let Some(svid) = r.svid else { continue };
        let Some(leaf) = svid.cert_chain.first() else {
            continue;
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
            continue;
        };
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
        out.push(Svid {
            entry_id: p.entry.id.clone(),
            entry_revision: p.entry.revision,
            spiffe_id: p.entry.spiffe_id.clone(),
            chain_der,
            certs,
            // Copied here so the long-lived key is not left pinning the blocking thread's
            // malloc arena (where key generation's scratch allocations were made).
            key_pkcs8: Bytes::copy_from_slice(&p.key_pkcs8),
            not_after,
            renew_at: renew_time(not_before, not_after),
            hint: p.entry.hint.clone(),
        });
    }
    Ok(out)
}

/// Runs issuance/rotation until shutdown.
pub async fn run(node: Arc<NodeClient>, cache: Arc<Cache>, mut shutdown: watch::Receiver<bool>) {
    let mut rx = cache.subscribe();
    let mut backoff = Duration::from_millis(200);
    loop {
        let snap = Arc::clone(&rx.borrow_and_update());
        let now = SystemTime::now();
        let (todo, next) = if snap.denied {
            (vec![], None)
        } else {
            due(&snap, now)
        };
        let mut failed = false;
        for chunk in todo.chunks(BATCH) {
            match sign_batch(&node, chunk.to_vec()).await {
                Ok(svids) => {
                    // Entries the server refused individually must not be retried in a tight loop.
                    failed |= svids.len() < chunk.len();
                    cache.put_svids(svids);
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
            // put_svids changed the snapshot; re-evaluate at once.
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
}
