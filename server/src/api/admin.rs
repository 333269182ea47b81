//! Admin API: registration entries, join tokens, agents, bundles, health.

use std::sync::Arc;

use sigil_core::x509::unix_secs;
use sigil_core::{SpiffeId, TrustDomain};
use sigil_proto::sigil::v1 as pb;
use tonic::{Request, Response, Status};

use crate::convert::{
    agent_to_pb, bundle_from_pb, bundle_to_pb, entry_from_pb, entry_to_pb, selectors_from_pb,
};
use crate::datastore::{AgentUpdate, EntryFilter, JoinToken, Page};
use crate::state::State;
use crate::status::ApiError;

/// Implements every admin service over shared state.
#[derive(Clone, Debug)]
pub struct Admin(pub Arc<State>);

fn code_of(e: &ApiError) -> i32 {
    e.code() as i32
}

fn page(size: u32, token: String) -> Page {
    Page {
        size,
        token: (!token.is_empty()).then_some(token),
    }
}

impl Admin {
    async fn create_one(&self, e: pb::Entry) -> Result<pb::Entry, ApiError> {
        let st = &self.0;
        let mut entry = entry_from_pb(e, &st.cfg.trust_domain)?;
        entry.created_at = unix_secs(st.now());
        let _w = st.write_lock.lock().await;
        let created = st.store(move |s| s.create_entry(entry)).await?;
        st.registry.upsert(created.clone(), created.revision);
        tracing::info!(entry_id = %created.id, spiffe_id = %created.spiffe_id, "entry created");
        Ok(entry_to_pb(&created))
    }

    async fn update_one(&self, e: pb::Entry) -> Result<pb::Entry, ApiError> {
        let st = &self.0;
        if e.id.is_empty() {
            return Err(ApiError::invalid("id", "is required"));
        }
        let entry = entry_from_pb(e, &st.cfg.trust_domain)?;
        let _w = st.write_lock.lock().await;
        let updated = st.store(move |s| s.update_entry(entry)).await?;
        st.registry.upsert(updated.clone(), updated.revision);
        tracing::info!(entry_id = %updated.id, "entry updated");
        Ok(entry_to_pb(&updated))
    }

    async fn delete_one(&self, id: String) -> Result<(), ApiError> {
        let st = &self.0;
        if id.is_empty() {
            return Err(ApiError::invalid("ids", "an entry id is empty"));
        }
        let _w = st.write_lock.lock().await;
        let idc = id.clone();
        st.store(move |s| s.delete_entry(&idc)).await?;
        let rev = st.store(|s| s.revision()).await?;
        st.registry.remove(&id, rev);
        tracing::info!(entry_id = %id, "entry deleted");
        Ok(())
    }

    fn agent_id(id: &str) -> Result<SpiffeId, ApiError> {
        SpiffeId::parse_workload(id).map_err(|e| ApiError::invalid("id", e))
    }
}

fn entry_result(r: Result<pb::Entry, ApiError>) -> pb::EntryResult {
    match r {
        Ok(entry) => pb::EntryResult {
            entry: Some(entry),
            code: 0,
            message: String::new(),
        },
        Err(e) => pb::EntryResult {
            entry: None,
            code: code_of(&e),
            message: Status::from(e).message().to_owned(),
        },
    }
}

#[tonic::async_trait]
impl pb::entries_server::Entries for Admin {
    async fn batch_create_entry(
        &self,
        req: Request<pb::BatchCreateEntryRequest>,
    ) -> Result<Response<pb::BatchEntryResponse>, Status> {
        let mut results = Vec::new();
        for e in req.into_inner().entries {
            results.push(entry_result(self.create_one(e).await));
        }
        Ok(Response::new(pb::BatchEntryResponse { results }))
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(ApiError::invalid("id", "is required").into());
        }
        let idc = id.clone();
        match self.0.store(move |s| s.get_entry(&idc)).await? {
            Some(e) => Ok(Response::new(entry_to_pb(&e))),
            None => Err(Status::not_found(format!("entry {id:?} not found"))),
        }
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let r = req.into_inner();
        let by_spiffe_id = (!r.by_spiffe_id.is_empty())
            .then(|| {
                SpiffeId::parse(&r.by_spiffe_id).map_err(|e| ApiError::invalid("by_spiffe_id", e))
            })
            .transpose()?;
        let by_parent_id = (!r.by_parent_id.is_empty())
            .then(|| {
                SpiffeId::parse(&r.by_parent_id).map_err(|e| ApiError::invalid("by_parent_id", e))
            })
            .transpose()?;
        let by_selectors = selectors_from_pb(&r.by_selectors).map_err(|_| {
            ApiError::invalid("by_selectors", "each selector needs a type and a value")
        })?;
        let filter = EntryFilter {
            by_spiffe_id,
            by_parent_id,
            by_selectors,
        };
        let pg = page(r.page_size, r.page_token);
        let (entries, next) = self.0.store(move |s| s.list_entries(&filter, pg)).await?;
        Ok(Response::new(pb::ListEntriesResponse {
            entries: entries.iter().map(entry_to_pb).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn batch_update_entry(
        &self,
        req: Request<pb::BatchUpdateEntryRequest>,
    ) -> Result<Response<pb::BatchEntryResponse>, Status> {
        let mut results = Vec::new();
        for e in req.into_inner().entries {
            results.push(entry_result(self.update_one(e).await));
        }
        Ok(Response::new(pb::BatchEntryResponse { results }))
    }

    async fn batch_delete_entry(
        &self,
        req: Request<pb::BatchDeleteEntryRequest>,
    ) -> Result<Response<pb::BatchDeleteEntryResponse>, Status> {
        let mut results = Vec::new();
        for id in req.into_inner().ids {
            let r = self.delete_one(id.clone()).await;
            results.push(match r {
                Ok(()) => pb::DeleteResult {
                    id,
                    code: 0,
                    message: String::new(),
                },
                Err(e) => pb::DeleteResult {
                    id,
                    code: code_of(&e),
                    message: Status::from(e).message().to_owned(),
                },
            });
        }
        Ok(Response::new(pb::BatchDeleteEntryResponse { results }))
    }
}

/// Join tokens are path segments of the agent ID, so they are restricted to safe characters.
fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[tonic::async_trait]
impl pb::tokens_server::Tokens for Admin {
    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        let st = &self.0;
        let r = req.into_inner();
        if r.ttl < 0 || r.ttl > 365 * 24 * 3600 {
            return Err(
                ApiError::invalid("ttl", "must be between 0 and one year (seconds)").into(),
            );
        }
        let ttl = if r.ttl == 0 { 600 } else { r.ttl };
        let token = if r.token.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else if valid_token(&r.token) {
            r.token
        } else {
            return Err(ApiError::invalid(
                "token",
                "may hold only letters, digits, '-' and '_' (max 128)",
            )
            .into());
        };
        let now = unix_secs(st.now());
        let agent_id = st
            .cfg
            .trust_domain
            .id_with_path(&format!("/sigil/agent/join_token/{token}"))
            .map_err(|e| ApiError::invalid("token", e))?;
        let alias = if r.agent_alias_spiffe_id.is_empty() {
            None
        } else {
            let id = SpiffeId::parse_workload(&r.agent_alias_spiffe_id)
                .map_err(|e| ApiError::invalid("agent_alias_spiffe_id", e))?;
            if id.trust_domain() != &st.cfg.trust_domain {
                return Err(ApiError::invalid(
                    "agent_alias_spiffe_id",
                    "must be in the server's trust domain",
                )
                .into());
            }
            if crate::convert::is_reserved(&id) {
                return Err(ApiError::invalid(
                    "agent_alias_spiffe_id",
                    crate::convert::RESERVED_MSG,
                )
                .into());
            }
            Some(crate::datastore::Entry {
                id: String::new(),
                spiffe_id: id,
                parent_id: agent_id,
                selectors: vec![],
                x509_svid_ttl: 0,
                jwt_svid_ttl: 0,
                dns_names: vec![],
                federates_with: vec![],
                admin: false,
                downstream: false,
                hint: String::new(),
                expires_at: 0,
                created_at: now,
                revision: 0,
            })
        };
        let jt = JoinToken {
            token: token.clone(),
            expires_at: now + ttl,
        };
        let _w = st.write_lock.lock().await;
        let has_alias = alias.is_some();
        st.store(move |s| s.create_join_token(jt, alias)).await?;
        if has_alias {
            // The alias entry's ID is store-assigned; reload it to index it.
            let filter = EntryFilter {
                by_parent_id: Some(
                    st.cfg
                        .trust_domain
                        .id_with_path(&format!("/sigil/agent/join_token/{token}"))
                        .map_err(|e| ApiError::invalid("token", e))?,
                ),
                ..Default::default()
            };
            let (entries, _) = st
                .store(move |s| s.list_entries(&filter, Page::default()))
                .await?;
            for e in entries {
                let rev = e.revision;
                st.registry.upsert(e, rev);
            }
        }
        tracing::info!(expires_at = now + ttl, "join token created");
        Ok(Response::new(pb::JoinToken {
            value: token,
            expires_at: now + ttl,
        }))
    }
}

#[tonic::async_trait]
impl pb::agents_server::Agents for Admin {
    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let r = req.into_inner();
        let pg = page(r.page_size, r.page_token);
        let (agents, next) = self.0.store(move |s| s.list_agents(pg)).await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.iter().map(agent_to_pb).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn get_agent(
        &self,
        req: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = Self::agent_id(&req.into_inner().id)?;
        let idc = id.clone();
        match self.0.store(move |s| s.get_agent(&idc)).await? {
            Some(a) => Ok(Response::new(agent_to_pb(&a))),
            None => Err(Status::not_found(format!("agent {id} not found"))),
        }
    }

    async fn ban_agent(
        &self,
        req: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let st = &self.0;
        let id = Self::agent_id(&req.into_inner().id)?;
        let _w = st.write_lock.lock().await;
        let idc = id.clone();
        // Check-and-set, like every agent-record change: a concurrent renewal cannot undo it.
        let agent = match st
            .store(move |s| s.update_agent(&idc, &crate::agents::banned))
            .await?
        {
            AgentUpdate::Written(a) => {
                let rev = st.store(|s| s.revision()).await?;
                st.registry.bump(rev);
                tracing::warn!(agent_id = %id, "agent banned");
                a
            }
            AgentUpdate::Declined(a) => a,
        };
        Ok(Response::new(agent_to_pb(&agent)))
    }

    async fn evict_agent(
        &self,
        req: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::EvictAgentResponse>, Status> {
        let st = &self.0;
        let id = Self::agent_id(&req.into_inner().id)?;
        let _w = st.write_lock.lock().await;
        st.store(move |s| s.delete_agent(&id)).await?;
        let rev = st.store(|s| s.revision()).await?;
        st.registry.bump(rev);
        Ok(Response::new(pb::EvictAgentResponse {}))
    }
}

#[tonic::async_trait]
impl pb::bundles_server::Bundles for Admin {
    async fn get_bundle(
        &self,
        _req: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::Bundle>, Status> {
        Ok(Response::new(bundle_to_pb(&self.0.ca.bundle())))
    }

    async fn list_federated_bundles(
        &self,
        _req: Request<pb::ListFederatedBundlesRequest>,
    ) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        let own = self.0.cfg.trust_domain.clone();
        let all = self.0.store(|s| s.list_bundles()).await?;
        let mut bundles = Vec::new();
        for (td, doc) in all {
            if td == own {
                continue;
            }
            let b = sigil_core::Bundle::from_spiffe_json(td, &doc)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            bundles.push(bundle_to_pb(&b));
        }
        Ok(Response::new(pb::ListFederatedBundlesResponse { bundles }))
    }

    async fn set_federated_bundle(
        &self,
        req: Request<pb::Bundle>,
    ) -> Result<Response<pb::Bundle>, Status> {
        let st = &self.0;
        let b = bundle_from_pb(req.into_inner())?;
        if b.trust_domain == st.cfg.trust_domain {
            return Err(ApiError::invalid(
                "trust_domain",
                "cannot overwrite the server's own bundle",
            )
            .into());
        }
        let doc = b
            .to_spiffe_json()
            .map_err(|e| ApiError::invalid("x509_authorities", e))?;
        let td = b.trust_domain.clone();
        let _w = st.write_lock.lock().await;
        st.store(move |s| s.set_bundle(&td, doc.into_bytes()))
            .await?;
        let rev = st.store(|s| s.revision()).await?;
        st.registry.bump(rev);
        tracing::info!(trust_domain = %b.trust_domain, "federated bundle set");
        Ok(Response::new(bundle_to_pb(&b)))
    }

    async fn delete_federated_bundle(
        &self,
        req: Request<pb::DeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::DeleteFederatedBundleResponse>, Status> {
        let st = &self.0;
        let td = TrustDomain::new(&req.into_inner().trust_domain)
            .map_err(|e| ApiError::invalid("trust_domain", e))?;
        if td == st.cfg.trust_domain {
            return Err(
                ApiError::invalid("trust_domain", "cannot delete the server's own bundle").into(),
            );
        }
        let _w = st.write_lock.lock().await;
        st.store(move |s| s.delete_bundle(&td)).await?;
        let rev = st.store(|s| s.revision()).await?;
        st.registry.bump(rev);
        Ok(Response::new(pb::DeleteFederatedBundleResponse {}))
    }
}

#[tonic::async_trait]
impl pb::health_server::Health for Admin {
    async fn check(
        &self,
        _req: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        let rev = self.0.store(|s| s.revision()).await?;
        Ok(Response::new(pb::HealthCheckResponse {
            serving: true,
            trust_domain: self.0.cfg.trust_domain.to_string(),
            revision: rev,
        }))
    }
}
