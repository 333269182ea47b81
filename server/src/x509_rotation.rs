//! Driving X.509 CA rotation: the automatic schedule and the admin operations, each followed by
//! publication of the own bundle (store, sync to agents, the listener's trust store).

use std::sync::Arc;
use std::time::Duration;

use sigil_core::x509::unix_secs;
use sigil_proto::sigil::v1 as pb;
use tokio::sync::watch;

use crate::ca::{Ca, CaError};
use crate::datastore::{Authority, DataStore};
use crate::state::State;
use crate::status::ApiError;

/// Longest sleep between schedule checks, so clock jumps are noticed.
const MAX_TICK: Duration = Duration::from_secs(600);

/// Runs a CA operation on the blocking pool: store writes fsync and key generation is CPU work.
async fn blocking<T, F>(st: &State, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn DataStore, &Ca) -> Result<T, CaError> + Send + 'static,
{
    let store = Arc::clone(&st.store);
    let ca = Arc::clone(&st.ca);
    tokio::task::spawn_blocking(move || f(store.as_ref(), &ca))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)
}

/// Persists the own bundle when its sequence moved past what the store holds, announces the new
/// revision to agents' sync streams, and updates the roots the listener trusts. The caller holds
/// `st.write_lock`.
pub async fn publish(st: &State) -> Result<(), ApiError> {
    let bundle = st.ca.bundle();
    let td = st.cfg.trust_domain.clone();
    let td2 = td.clone();
    let stored_seq = st
        .store(move |s| s.get_bundle(&td2))
        .await?
        .and_then(|doc| sigil_core::Bundle::from_spiffe_json(td.clone(), &doc).ok())
        .map(|b| b.sequence);
    st.trust.set(td.clone(), st.ca.roots());
    if stored_seq == Some(bundle.sequence) {
        return Ok(());
    }
    let doc = bundle
        .to_spiffe_json()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    st.store(move |s| s.set_bundle(&td, doc.into_bytes()))
        .await?;
    let rev = st.store(|s| s.revision()).await?;
    st.registry.bump(rev);
    tracing::info!(
        sequence = bundle.sequence,
        x509_roots = bundle.x509_authorities.len(),
        "own bundle updated"
    );
    Ok(())
}

/// One automatic step, published when it changed anything.
pub async fn rotate(st: &State) -> Result<(), ApiError> {
    let _w = st.write_lock.lock().await;
    let now = st.now();
    if blocking(st, move |s, ca| ca.x509_rotate(s, now)).await? {
        publish(st).await?;
    }
    Ok(())
}

/// Runs the rotation schedule until `shutdown` flips.
pub async fn run(st: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let wait = st.ca.x509_next_event() - unix_secs(st.now());
        let wait = Duration::from_secs(u64::try_from(wait).unwrap_or(0))
            .clamp(Duration::from_secs(1), MAX_TICK);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = rotate(&st).await {
            tracing::error!(error = %e, "X.509 CA rotation failed; retrying");
        }
    }
}

fn info(a: &Authority) -> pb::X509AuthorityInfo {
    pb::X509AuthorityInfo {
        authority_id: a.id.clone(),
        certificate: a.cert_der.clone(),
        not_before: a.not_before,
        not_after: a.not_after,
    }
}

/// The admin view of the X.509 authorities.
pub fn state(st: &State) -> pb::X509AuthorityState {
    let slots = st.ca.x509_slots();
    pb::X509AuthorityState {
        active: Some(info(&slots.active)),
        prepared: slots.prepared.as_ref().map(info),
        bundle_sequence: st.ca.bundle().sequence,
    }
}

/// Prepares the next CA by hand and publishes its root.
pub async fn prepare(st: &State) -> Result<pb::X509AuthorityState, ApiError> {
    let _w = st.write_lock.lock().await;
    let now = st.now();
    blocking(st, move |s, ca| ca.x509_prepare(s, now)).await?;
    publish(st).await?;
    Ok(state(st))
}

/// Activates the prepared CA by hand.
pub async fn activate(st: &State, id: String) -> Result<pb::X509AuthorityState, ApiError> {
    let _w = st.write_lock.lock().await;
    blocking(st, move |s, ca| ca.x509_activate(s, Some(&id))).await?;
    publish(st).await?;
    Ok(state(st))
}
