//! Who is calling the agent-facing API: the agent behind the mTLS client certificate, checked
//! against its stored record on every call (attested, not banned, and presenting the agent's
//! current SVID or, during the overlap after a renewal, the previous one).

use rustls_pki_types::CertificateDer;
use sigil_core::SpiffeId;
use sigil_core::x509::unix_secs;
use tonic::Request;

use crate::agents::{self, SvidStanding};
use crate::datastore::{AgentRecord, AgentUpdate, StoreError};
use crate::state::State;
use crate::status::ApiError;

/// Why a cryptographically valid agent SVID is refused: it is not the agent's current one.
pub const SUPERSEDED: &str = "this agent SVID has been superseded (renewed, or the agent was \
                              evicted and attested again); present the agent's current SVID";

/// The agent behind a call.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The agent's record as read when the call was authenticated.
    pub agent: AgentRecord,
    /// Serial of the agent SVID the call presented (as `x509_parser` renders serials).
    pub serial: String,
}

/// Serial and notAfter (unix seconds) of a certificate; empty and 0 if it does not parse.
pub fn serial_and_expiry(leaf: &CertificateDer<'_>) -> (String, i64) {
    match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, c)) => (c.raw_serial_as_string(), c.validity().not_after.timestamp()),
        Err(_) => (String::new(), 0),
    }
}

/// The refusal for an agent record that is gone.
pub fn not_attested(id: &SpiffeId) -> ApiError {
    ApiError::PermissionDenied(format!("agent {id} is not attested (evicted?)"))
}

/// The refusal for a banned agent.
pub fn banned(id: &SpiffeId) -> ApiError {
    ApiError::PermissionDenied(format!("agent {id} is banned"))
}

/// Why `agent` refuses the SVID `serial` at `now`, if it does.
pub fn refusal(agent: &AgentRecord, serial: &str, now: i64) -> Option<ApiError> {
    if agent.banned {
        return Some(banned(&agent.id));
    }
    (agents::standing(agent, serial, now) == SvidStanding::Superseded)
        .then(|| ApiError::Unauthenticated(SUPERSEDED.into()))
}

/// Identifies the calling agent from its mTLS certificate and checks it is still allowed.
/// The first call with a renewed SVID ends the previous one's overlap.
pub async fn authenticate<T>(st: &State, req: &Request<T>) -> Result<Caller, ApiError> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| ApiError::Unauthenticated("an agent SVID is required".into()))?;
    let id = sigil_core::tls::peer_id(&certs)
        .ok_or_else(|| ApiError::Unauthenticated("peer certificate has no SPIFFE ID".into()))?;
    if id.trust_domain() != &st.cfg.trust_domain || !id.path().starts_with("/sigil/agent/") {
        return Err(ApiError::PermissionDenied(format!("{id} is not an agent")));
    }
    let serial = certs
        .first()
        .map(|leaf| serial_and_expiry(leaf).0)
        .unwrap_or_default();
    // A point read of a small, cached sled tree: done inline. A hop to the blocking pool
    // here cost ~40-60 µs of CPU per request (as much as half the signature work); see
    // server/benches/sign.rs.
    let agent = st.store.get_agent(&id)?.ok_or_else(|| not_attested(&id))?;
    let now = unix_secs(st.now());
    if let Some(refused) = refusal(&agent, &serial, now) {
        tracing::warn!(agent_id = %id, %serial, error = %refused, "agent call refused");
        return Err(refused);
    }
    if !agent.previous_x509_svid_serial.is_empty() && agent.x509_svid_serial == serial {
        switch_over(st, &id, &serial).await?;
    }
    Ok(Caller { agent, serial })
}

/// Drops the previous SVID once the agent has presented the current one. Announced to sync
/// streams, so one still running on the previous SVID ends.
async fn switch_over(st: &State, id: &SpiffeId, serial: &str) -> Result<(), ApiError> {
    let _w = st.write_lock.lock().await;
    let (idc, serial) = (id.clone(), serial.to_owned());
    let update = st
        .store(move |s| s.update_agent(&idc, &|cur| agents::switched(cur, &serial)))
        .await
        .map_err(|e| match e {
            ApiError::Store(StoreError::NotFound(_)) => not_attested(id),
            e => e,
        })?;
    if let AgentUpdate::Written(_) = update {
        let rev = st.store(|s| s.revision()).await?;
        st.registry.bump(rev);
        tracing::info!(agent_id = %id, "agent switched to its renewed SVID");
    }
    Ok(())
}
