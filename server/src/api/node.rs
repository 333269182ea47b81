//! Agent-facing API: node attestation, agent SVID renewal and workload SVID signing.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use sigil_core::keys::{self, KeyError};
use sigil_core::x509::unix_secs;
use sigil_core::{SelectorSet, SpiffeId};
use sigil_proto::sigil::v1 as pb;
use tonic::{Code, Request, Response, Status};

use crate::agents;
use crate::api::caller::{self, Caller, serial_and_expiry};
use crate::convert::bundle_to_pb;
use crate::datastore::{AgentRecord, AgentUpdate, StoreError};
use crate::state::State;
use crate::status::ApiError;

/// Implements `sigil.v1.Node`.
#[derive(Clone, Debug)]
pub struct Node(pub Arc<State>);

/// The join-token node attestor's name, as in agent IDs.
pub const JOIN_TOKEN: &str = "join_token";

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

impl Node {
    /// Identifies the calling agent from its mTLS certificate and checks it is still allowed
    /// (see [`caller::authenticate`]).
    pub async fn authenticate<T>(&self, req: &Request<T>) -> Result<Caller, ApiError> {
        caller::authenticate(&self.0, req).await
    }

    fn agent_ttl(&self) -> Duration {
        self.0.cfg.default_x509_svid_ttl
    }
}

#[tonic::async_trait]
impl pb::node_server::Node for Node {
    async fn attest(
        &self,
        req: Request<pb::AttestRequest>,
    ) -> Result<Response<pb::AttestResponse>, Status> {
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
        let key = keys::parse_csr(&r.csr).map_err(|e| csr_error("csr", e))?;
        if token.is_empty()
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
        let chain = st
            .ca
            .sign_x509_svid(&key, &id, &[], self.agent_ttl(), now)
            .map_err(ApiError::from)?;
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
            created_at: unix_secs(now),
        };
        let now_s = unix_secs(now);
        let _w = st.write_lock.lock().await;
        // A banned agent stays banned: a new token with the same value must not re-admit it
        // (only deleting the record, i.e. eviction, does). Checked here before the write, and
        // again by the store in the transaction that consumes the token.
        let idc = id.clone();
        if let Some(existing) = st.store(move |s| s.get_agent(&idc)).await?
            && existing.banned
        {
            tracing::warn!(agent_id = %id, "node attestation refused: agent is banned");
            return Err(attestation_denied().into());
        }
        match st
            .store(move |s| s.attest_join_token(&token, now_s, record))
            .await
        {
            Ok(()) => {}
            Err(ApiError::Store(
                StoreError::NotFound(_) | StoreError::Expired(_) | StoreError::Refused(_),
            )) => {
                tracing::warn!("node attestation refused: bad join token");
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
        let key = keys::parse_csr(&req.into_inner().csr).map_err(|e| csr_error("csr", e))?;
        let chain = st
            .ca
            .sign_x509_svid(&key, &agent.id, &[], self.agent_ttl(), now)
            .map_err(ApiError::from)?;
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
        if params.len() > 500 {
            return Err(ApiError::invalid("params", "at most 500 CSRs per batch").into());
        }
        let sels: SelectorSet = agent.selectors.iter().cloned().collect();
        let authorized = st.registry.authorized(&agent.id, &sels);
        let now = st.now();
        let now_s = unix_secs(now);
        let mut results = Vec::with_capacity(params.len());
        for p in params {
            let fail = |code: Code, msg: String| pb::SignX509SvidResult {
                entry_id: p.entry_id.clone(),
                svid: None,
                error: msg,
                code: code as i32,
            };
            let Some(entry) = authorized.get(&p.entry_id) else {
                results.push(fail(
                    Code::PermissionDenied,
                    format!(
                        "entry_id: agent is not authorized for entry {:?}",
                        p.entry_id
                    ),
                ));
                continue;
            };
            if entry.expires_at != 0 && entry.expires_at <= now_s {
                results.push(fail(
                    Code::PermissionDenied,
                    "entry_id: entry has expired".into(),
                ));
                continue;
            }
            if entry.selectors.is_empty() {
                // Node aliases name agents, not workloads: no SVID is ever issued for them.
                results.push(fail(
                    Code::PermissionDenied,
                    "entry_id: entry is a node alias (no selectors) and cannot be issued".into(),
                ));
                continue;
            }
            let key = match keys::parse_csr(&p.csr) {
                Ok(k) => k,
                Err(e) => {
                    results.push(fail(Code::InvalidArgument, format!("csr: {e}")));
                    continue;
                }
            };
            let ttl = if entry.x509_svid_ttl == 0 {
                st.cfg.default_x509_svid_ttl
            } else {
                Duration::from_secs(entry.x509_svid_ttl)
            };
            match st
                .ca
                .sign_x509_svid(&key, &entry.spiffe_id, &entry.dns_names, ttl, now)
            {
                Ok(chain) => results.push(pb::SignX509SvidResult {
                    entry_id: p.entry_id.clone(),
                    svid: Some(svid_pb(&entry.spiffe_id, &chain)),
                    error: String::new(),
                    code: 0,
                }),
                Err(e) => {
                    tracing::error!(error = %e, entry_id = %p.entry_id, "signing failed");
                    results.push(fail(Code::Internal, "signing failed".into()));
                }
            }
        }
        Ok(Response::new(pb::BatchSignX509SvidResponse { results }))
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
        let minted = st
            .ca
            .jwt()
            .sign(
                &entry.spiffe_id,
                &r.audience,
                ttl,
                st.cfg.jwt_issuer.as_deref(),
                now,
            )
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
