//! Agent-facing API: node attestation, agent SVID renewal and workload SVID signing.
//!
//! Every signature (and the CSR verification before it) runs through the server's
//! [`Signer`](crate::signing::Signer): admitted within a global bound, off the async workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use sigil_core::keys::{self, KeyError};
use sigil_core::x509::unix_secs;
use sigil_core::{SelectorSet, SpiffeId};
use sigil_proto::sigil::v1 as pb;
use tonic::{Code, Request, Response, Status};

use crate::agents;
use crate::api::caller::{self, Caller, serial_and_expiry};
use crate::ca::Ca;
use crate::config::MAX_BATCH;
use crate::convert::bundle_to_pb;
use crate::datastore::{AgentRecord, AgentUpdate, Entry, StoreError};
use crate::state::State;
use crate::status::ApiError;

/// Implements `sigil.v1.Node`.
#[derive(Clone, Debug)]
pub struct Node(pub Arc<State>);

/// The join-token node attestor's name, as in agent IDs.
pub const JOIN_TOKEN: &str = "join_token";

/// Longest join token accepted, as the admin API allows when creating one.
const MAX_TOKEN_LEN: usize = 128;

/// The one answer to every failed attestation: callers learn nothing about why.
fn attestation_denied() -> ApiError {
    ApiError::PermissionDenied("join token is invalid, expired or already used".into())
}

fn csr_error(field: &'static str, e: KeyError) -> ApiError {
    ApiError::invalid(field, e)
}

fn svid_pb(id: &SpiffeId, chain: &[CertificateDer<'static>]) -> pb::X509Svid {
    let expires_at = chain.first().map(|c| serial_and_expiry(c).1).unwrap_or(0);
    pb::X509Svid {
        spiffe_id: id.to_string(),
        cert_chain: chain.iter().map(|c| c.to_vec()).collect(),
        expires_at,
    }
}

/// Verifies an agent's CSR and signs its SVID; run on the signer.
fn sign_agent_svid(
    ca: &Ca,
    csr: &[u8],
    id: &SpiffeId,
    ttl: Duration,
    now: std::time::SystemTime,
) -> Result<Vec<CertificateDer<'static>>, ApiError> {
    let key = keys::parse_csr(csr).map_err(|e| csr_error("csr", e))?;
    Ok(ca.sign_x509_svid(&key, id, &[], ttl, now)?)
}

/// A workload CSR for an entry that passed authorization.
struct SignJob {
    entry_id: String,
    entry: Arc<Entry>,
    csr: Vec<u8>,
}

fn item_failure(entry_id: String, code: Code, error: String) -> pb::SignX509SvidResult {
    pb::SignX509SvidResult {
        entry_id,
        svid: None,
        error,
        code: code as i32,
    }
}

/// Verifies one workload CSR and signs its SVID; run on the signer.
fn sign_workload_svid(
    ca: &Ca,
    job: SignJob,
    default_ttl: Duration,
    now: std::time::SystemTime,
) -> pb::SignX509SvidResult {
    let key = match keys::parse_csr(&job.csr) {
        Ok(k) => k,
        Err(e) => return item_failure(job.entry_id, Code::InvalidArgument, format!("csr: {e}")),
    };
    let entry = &job.entry;
    let ttl = if entry.x509_svid_ttl == 0 {
        default_ttl
    } else {
        Duration::from_secs(entry.x509_svid_ttl)
    };
    let ttl = entry.capped_ttl(ttl, now);
    match ca.sign_x509_svid(&key, &entry.spiffe_id, &entry.dns_names, ttl, now) {
        Ok(chain) => pb::SignX509SvidResult {
            svid: Some(svid_pb(&entry.spiffe_id, &chain)),
            entry_id: job.entry_id,
            error: String::new(),
            code: 0,
        },
        Err(e) => {
            tracing::error!(error = %e, entry_id = %job.entry_id, "signing failed");
            item_failure(job.entry_id, Code::Internal, "signing failed".into())
        }
    }
}

impl Node {
    /// Identifies the calling agent from its mTLS certificate and checks it is still allowed
    /// (see [`caller::authenticate`]).
    pub async fn authenticate<T>(&self, req: &Request<T>) -> Result<Caller, ApiError> {
        caller::authenticate(&self.0, req).await
    }

    fn agent_ttl(&self) -> Duration {
        self.0.cfg.default_x509_svid_ttl
    }

    /// Refuses an attestation from a source address over its rate limit.
    fn rate_limit<T>(&self, req: &Request<T>) -> Result<(), ApiError> {
        let (Some(limiter), Some(peer)) = (&self.0.attest_limiter, req.remote_addr()) else {
            return Ok(());
        };
        if limiter.allow(peer.ip(), Instant::now()) {
            return Ok(());
        }
        // Debug only: a flood must not become a log flood.
        tracing::debug!(%peer, "node attestation rate-limited");
        Err(ApiError::ResourceExhausted(
            "too many attestations from this address; retry later".into(),
        ))
    }

    /// The cheap, read-only checks of an attestation, before any CSR verification, signing
    /// or write: the token exists, is unexpired, and does not re-admit a banned agent.
    fn precheck_token(&self, token: &str, id: &SpiffeId, now: i64) -> Result<(), ApiError> {
        let st = &self.0;
        match st.store.get_join_token(token)? {
            Some(t) if t.expires_at > now => {}
            _ => {
                tracing::warn!("node attestation refused: bad join token");
                return Err(attestation_denied());
            }
        }
        if st.store.get_agent(id)?.is_some_and(|a| a.banned) {
            tracing::warn!(agent_id = %id, "node attestation refused: agent is banned");
            return Err(attestation_denied());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::node_server::Node for Node {
    async fn attest(
        &self,
        req: Request<pb::AttestRequest>,
    ) -> Result<Response<pb::AttestResponse>, Status> {
        self.rate_limit(&req)?;
        let st = &self.0;
        let r = req.into_inner();
        if r.attestation_type != JOIN_TOKEN {
            return Err(ApiError::invalid(
                "attestation_type",
                format!(
                    "{:?} is not supported (supported: join_token)",
                    r.attestation_type
                ),
            )
            .into());
        }
        let token = String::from_utf8(r.attestation_data)
            .map_err(|_| ApiError::invalid("attestation_data", "join token is not UTF-8"))?;
        if token.is_empty()
            || token.len() > MAX_TOKEN_LEN
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(attestation_denied().into());
        }
        let id = st
            .cfg
            .trust_domain
            .id_with_path(&format!("/sigil/agent/{JOIN_TOKEN}/{token}"))
            .map_err(|_| attestation_denied())?;
        let now = st.now();
        let now_s = unix_secs(now);
        self.precheck_token(&token, &id, now_s)?;

        let (ca, idc, ttl, csr) = (Arc::clone(&st.ca), id.clone(), self.agent_ttl(), r.csr);
        let chain = st
            .signer
            .run(1, move || sign_agent_svid(&ca, &csr, &idc, ttl, now))
            .await
            .map_err(ApiError::from)??;
        let (serial, expires) = chain.first().map(serial_and_expiry).unwrap_or_default();
        let record = AgentRecord {
            id: id.clone(),
            attestation_type: JOIN_TOKEN.into(),
            x509_svid_serial: serial,
            x509_svid_expires_at: expires,
            previous_x509_svid_serial: String::new(),
            previous_x509_svid_accepted_until: 0,
            selectors: vec![],
            banned: false,
            created_at: now_s,
        };
        // The store checks the token and the ban again, in the transaction that consumes the
        // token; the lock keeps revisions announced in store order.
        let _w = st.write_lock.lock().await;
        match st
            .store(move |s| s.attest_join_token(&token, now_s, record))
            .await
        {
            Ok(()) => {}
            Err(ApiError::Store(
                StoreError::NotFound(_) | StoreError::Expired(_) | StoreError::Refused(_),
            )) => {
                tracing::warn!(agent_id = %id, "node attestation refused at commit");
                return Err(attestation_denied().into());
            }
            Err(e) => return Err(e.into()),
        }
        let rev = st.store(|s| s.revision()).await?;
        st.registry.bump(rev);
        tracing::info!(agent_id = %id, "agent attested");
        Ok(Response::new(pb::AttestResponse {
            svid: Some(svid_pb(&id, &chain)),
            bundle: Some(bundle_to_pb(&st.ca.bundle())),
        }))
    }

    async fn renew_agent(
        &self,
        req: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::RenewAgentResponse>, Status> {
        let Caller { agent, serial } = self.authenticate(&req).await?;
        let st = &self.0;
        let now = st.now();
        let (ca, id, ttl, csr) = (
            Arc::clone(&st.ca),
            agent.id.clone(),
            self.agent_ttl(),
            req.into_inner().csr,
        );
        let chain = st
            .signer
            .run(1, move || sign_agent_svid(&ca, &csr, &id, ttl, now))
            .await
            .map_err(ApiError::from)??;
        let (new_serial, expires_at) = chain.first().map(serial_and_expiry).unwrap_or_default();
        let issued = agents::Issued {
            serial: new_serial,
            expires_at,
        };
        let now_s = unix_secs(now);
        let overlap = i64::try_from(st.cfg.agent_svid_overlap.as_secs()).unwrap_or(i64::MAX);
        // Check-and-set against the stored record: a ban or eviction that landed since the
        // call was authenticated wins, and the new SVID is never handed out.
        let id = agent.id.clone();
        let idc = id.clone();
        let update = st
            .store(move |s| {
                s.update_agent(&idc, &|cur| {
                    agents::renewed(cur, &serial, &issued, now_s, overlap)
                })
            })
            .await
            .map_err(|e| match e {
                ApiError::Store(StoreError::NotFound(_)) => caller::not_attested(&id),
                e => e,
            })?;
        if let AgentUpdate::Declined(cur) = update {
            let refused = if cur.banned {
                caller::banned(&id)
            } else {
                ApiError::Unauthenticated(caller::SUPERSEDED.into())
            };
            tracing::warn!(agent_id = %id, error = %refused, "agent SVID renewal refused");
            return Err(refused.into());
        }
        tracing::info!(agent_id = %id, "agent SVID renewed");
        Ok(Response::new(pb::RenewAgentResponse {
            svid: Some(svid_pb(&id, &chain)),
        }))
    }

    async fn batch_sign_x509_svid(
        &self,
        req: Request<pb::BatchSignX509SvidRequest>,
    ) -> Result<Response<pb::BatchSignX509SvidResponse>, Status> {
        let agent = self.authenticate(&req).await?.agent;
        let st = &self.0;
        let params = req.into_inner().params;
        if params.is_empty() {
            return Err(ApiError::invalid("params", "at least one CSR is required").into());
        }
        if params.len() > MAX_BATCH as usize {
            return Err(
                ApiError::invalid("params", format!("at most {MAX_BATCH} CSRs per batch")).into(),
            );
        }
        let sels: SelectorSet = agent.selectors.iter().cloned().collect();
        let authorized = st.registry.authorized(&agent.id, &sels);
        let now = st.now();
        let now_s = unix_secs(now);
        // Authorization is cheap and done here; CSR verification and signing of what passed
        // run as one admitted job on the signer. Results keep the request's order.
        let mut results: Vec<Option<pb::SignX509SvidResult>> = Vec::with_capacity(params.len());
        let mut jobs = Vec::new();
        for p in params {
            let refused = |msg: &str| {
                Some(item_failure(
                    p.entry_id.clone(),
                    Code::PermissionDenied,
                    msg.into(),
                ))
            };
            let Some(entry) = authorized.get(&p.entry_id) else {
                results.push(refused(&format!(
                    "entry_id: agent is not authorized for entry {:?}",
                    p.entry_id
                )));
                continue;
            };
            if entry.expires_at != 0 && entry.expires_at <= now_s {
                results.push(refused("entry_id: entry has expired"));
                continue;
            }
            if entry.selectors.is_empty() {
                // Node aliases name agents, not workloads: no SVID is ever issued for them.
                results.push(refused(
                    "entry_id: entry is a node alias (no selectors) and cannot be issued",
                ));
                continue;
            }
            jobs.push((
                results.len(),
                SignJob {
                    entry_id: p.entry_id,
                    entry: Arc::clone(entry),
                    csr: p.csr,
                },
            ));
            results.push(None);
        }
        if !jobs.is_empty() {
            let (ca, default_ttl) = (Arc::clone(&st.ca), st.cfg.default_x509_svid_ttl);
            // At most MAX_BATCH jobs, so the count fits.
            let count = u32::try_from(jobs.len()).unwrap_or(MAX_BATCH);
            let signed = st
                .signer
                .run(count, move || {
                    jobs.into_iter()
                        .map(|(at, job)| (at, sign_workload_svid(&ca, job, default_ttl, now)))
                        .collect::<Vec<_>>()
                })
                .await
                .map_err(ApiError::from)?;
            for (at, r) in signed {
                results[at] = Some(r);
            }
        }
        Ok(Response::new(pb::BatchSignX509SvidResponse {
            results: results.into_iter().flatten().collect(),
        }))
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<pb::MintJwtSvidRequest>,
    ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
        let agent = self.authenticate(&req).await?.agent;
        let st = &self.0;
        let r = req.into_inner();
        crate::jwt::check_audience(&r.audience)?;
        let sels: SelectorSet = agent.selectors.iter().cloned().collect();
        let authorized = st.registry.authorized(&agent.id, &sels);
        let Some(entry) = authorized.get(&r.entry_id) else {
            return Err(ApiError::PermissionDenied(format!(
                "entry_id: agent is not authorized for entry {:?}",
                r.entry_id
            ))
            .into());
        };
        let now = st.now();
        if entry.expires_at != 0 && entry.expires_at <= unix_secs(now) {
            return Err(ApiError::PermissionDenied("entry_id: entry has expired".into()).into());
        }
        if entry.selectors.is_empty() {
            // As for X.509: node aliases name agents, not workloads.
            return Err(ApiError::PermissionDenied(
                "entry_id: entry is a node alias (no selectors) and cannot be issued".into(),
            )
            .into());
        }
        let ttl = if entry.jwt_svid_ttl == 0 {
            st.cfg.default_jwt_svid_ttl
        } else {
            Duration::from_secs(entry.jwt_svid_ttl)
        };
        let ttl = entry.capped_ttl(ttl, now);
        let (ca, issuer, spiffe_id) = (
            Arc::clone(&st.ca),
            st.cfg.jwt_issuer.clone(),
            entry.spiffe_id.clone(),
        );
        let audience = r.audience;
        let minted = st
            .signer
            .run(1, move || {
                ca.jwt()
                    .sign(&spiffe_id, &audience, ttl, issuer.as_deref(), now)
            })
            .await
            .map_err(ApiError::from)?
            .map_err(ApiError::from)?;
        tracing::debug!(entry_id = %r.entry_id, spiffe_id = %entry.spiffe_id, "JWT-SVID minted");
        Ok(Response::new(pb::MintJwtSvidResponse {
            spiffe_id: entry.spiffe_id.to_string(),
            token: minted.token,
            expires_at: minted.expires_at,
            issued_at: minted.issued_at,
        }))
    }

    type SyncStream = crate::api::sync::SyncStream;

    async fn sync(
        &self,
        req: Request<pb::SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let caller = self.authenticate(&req).await?;
        let last = req.into_inner().last_revision;
        Ok(Response::new(crate::api::sync::start(
            Arc::clone(&self.0),
            caller,
            last,
        )))
    }
}
