//! Driving X.509 CA rotation: the automatic schedule and the admin operations, each followed by
//! publication of the own bundle (stored with the authorities by the CA; announced here to
//! agents' sync streams and the listener's trust store).

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

/// Announces a change of the own bundle, which the CA stored together with the authorities it
/// publishes: the new store revision goes to agents' sync streams, the roots to the trust store
/// of the listener. The caller holds `st.write_lock`.
pub async fn publish(st: &State) -> Result<(), ApiError> {
    let bundle = st.ca.bundle();
    st.trust.set(st.cfg.trust_domain.clone(), st.ca.roots());
    let rev = st.store(|s| s.revision()).await?;
    st.registry.bump(rev);
    tracing::info!(
        sequence = bundle.sequence,
        x509_roots = bundle.x509_authorities.len(),
        jwt_keys = bundle.jwt_authorities.len(),
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
