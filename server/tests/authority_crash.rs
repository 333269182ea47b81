//! Crash safety of the signing authorities: a store that "crashes" (fails every write) after a
//! chosen number of writes stands in for a server killed at that point. After a restart on the
//! same sled files and an activation, everything the CA signs must validate against the bundle
//! the server publishes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use common::*;
use sigil_core::jwt;
use sigil_core::{SpiffeId, TrustDomain};
use sigil_proto::sigil::v1 as pb;
use sigil_server::datastore::{
    AgentRecord, AgentUpdate, Authority, AuthorityWrite, DataStore, Entry, EntryFilter, JoinToken,
    Page, SledStore, StoreError,
};

type LocalAuthority = pb::local_authority_client::LocalAuthorityClient<tonic::transport::Channel>;

/// A [`SledStore`] whose writes start failing once `left` reaches zero (negative: never), as if
/// the process had died right after the last write that went through. Reads keep working.
struct CrashingStore {
    inner: SledStore,
    left: AtomicI64,
}

impl CrashingStore {
    fn new(inner: SledStore) -> Self {
        Self {
            inner,
            left: AtomicI64::new(-1),
        }
    }

    /// Lets `n` more writes through, then fails every later one.
    fn crash_after(&self, n: i64) {
        self.left.store(n, Ordering::SeqCst);
    }

    fn write(&self) -> Result<(), StoreError> {
        let before = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(if n > 0 { n - 1 } else { n })
            })
            .unwrap_or(-1);
        if before == 0 {
            return Err(StoreError::Backend("injected crash".into()));
        }
        Ok(())
    }
}

impl DataStore for CrashingStore {
    fn create_entry(&self, entry: Entry) -> Result<Entry, StoreError> {
        self.write()?;
        self.inner.create_entry(entry)
    }
    fn update_entry(&self, entry: Entry) -> Result<Entry, StoreError> {
        self.write()?;
        self.inner.update_entry(entry)
    }
    fn delete_entry(&self, id: &str) -> Result<Entry, StoreError> {
        self.write()?;
        self.inner.delete_entry(id)
    }
    fn get_entry(&self, id: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get_entry(id)
    }
    fn list_entries(
        &self,
        filter: &EntryFilter,
        page: Page,
    ) -> Result<(Vec<Entry>, Option<String>), StoreError> {
        self.inner.list_entries(filter, page)
    }
    fn revision(&self) -> Result<u64, StoreError> {
        self.inner.revision()
    }
    fn create_join_token(&self, token: JoinToken, alias: Option<Entry>) -> Result<(), StoreError> {
        self.write()?;
        self.inner.create_join_token(token, alias)
    }
    fn attest_join_token(
        &self,
        token: &str,
        now: i64,
        agent: AgentRecord,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner.attest_join_token(token, now, agent)
    }
    fn prune_join_tokens(&self, now: i64) -> Result<usize, StoreError> {
        self.write()?;
        self.inner.prune_join_tokens(now)
    }
    fn get_join_token(&self, token: &str) -> Result<Option<JoinToken>, StoreError> {
        self.inner.get_join_token(token)
    }
    fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError> {
        self.inner.get_agent(id)
    }
    fn update_agent(
        &self,
        id: &SpiffeId,
        decide: &dyn Fn(&AgentRecord) -> Option<AgentRecord>,
    ) -> Result<AgentUpdate, StoreError> {
        self.write()?;
        self.inner.update_agent(id, decide)
    }
    fn prune_agents(&self, expired_before: i64) -> Result<Vec<SpiffeId>, StoreError> {
        self.write()?;
        self.inner.prune_agents(expired_before)
    }
    fn put_agent(&self, agent: AgentRecord) -> Result<(), StoreError> {
        self.write()?;
        self.inner.put_agent(agent)
    }
    fn list_agents(&self, page: Page) -> Result<(Vec<AgentRecord>, Option<String>), StoreError> {
        self.inner.list_agents(page)
    }
    fn delete_agent(&self, id: &SpiffeId) -> Result<AgentRecord, StoreError> {
        self.write()?;
        self.inner.delete_agent(id)
    }
    fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_bundle(td)
    }
    fn set_bundle(&self, td: &TrustDomain, bundle: Vec<u8>) -> Result<(), StoreError> {
        self.write()?;
        self.inner.set_bundle(td, bundle)
    }
    fn delete_bundle(&self, td: &TrustDomain) -> Result<(), StoreError> {
        self.write()?;
        self.inner.delete_bundle(td)
    }
    fn list_bundles(&self) -> Result<Vec<(TrustDomain, Vec<u8>)>, StoreError> {
        self.inner.list_bundles()
    }
    fn write_authorities(&self, write: AuthorityWrite) -> Result<(), StoreError> {
        self.write()?;
        self.inner.write_authorities(write)
    }
    fn list_authorities(&self) -> Result<Vec<Authority>, StoreError> {
        self.inner.list_authorities()
    }
}

/// A server on a [`CrashingStore`] over the sled files in `dir`; `None` when it did not
/// start (a crash during start-up).
async fn try_start_crashing(
    dir: &std::path::Path,
    arm: impl FnOnce(&CrashingStore),
) -> (Option<sigil_server::serve::Running>, Arc<CrashingStore>) {
    let cfg = config(dir, "");
    let store = Arc::new(CrashingStore::new(SledStore::open(&cfg.data_dir).unwrap()));
    arm(&store);
    let dyn_store: Arc<dyn DataStore> = Arc::clone(&store) as Arc<dyn DataStore>;
    let running = sigil_server::serve::start_with_store(cfg, dyn_store)
        .await
        .ok();
    (running, store)
}

/// A server on a [`CrashingStore`] that is not armed yet.
async fn start_crashing(
    dir: &std::path::Path,
) -> (Option<sigil_server::serve::Running>, Arc<CrashingStore>) {
    let (running, store) = try_start_crashing(dir, |_| {}).await;
    assert!(running.is_some(), "the server starts");
    (running, store)
}

/// Admin channel of a running server.
async fn admin_of(running: &Option<sigil_server::serve::Running>) -> tonic::transport::Channel {
    let socket = &running.as_ref().unwrap().admin_socket;
    sigil_server::client::admin_channel(socket).await.unwrap()
}

/// "Kills" the server: stops it and lets go of the sled files so a new one can open them.
async fn kill(running: Option<sigil_server::serve::Running>, store: Arc<CrashingStore>) {
    if let Some(running) = running {
        running.shutdown().await;
    }
    // Connection tasks may hold the state for a moment after shutdown returns.
    let deadline = std::time::Instant::now() + WAIT;
    let mut store = store;
    loop {
        match Arc::try_unwrap(store) {
            Ok(s) => {
                drop(s);
                return;
            }
            Err(s) => store = s,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store is still in use"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a plain server on the sled files in `dir` once the killed one has let go of them
/// (sled releases its lock from a background thread, a moment after the store is dropped).
async fn restart(dir: tempfile::TempDir) -> TestServer {
    let cfg = config(dir.path(), "");
    let deadline = std::time::Instant::now() + WAIT;
    let store = loop {
        match SledStore::open(&cfg.data_dir) {
            Ok(s) => break s,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let running = sigil_server::serve::start_with_store(cfg, Arc::new(store))
        .await
        .unwrap();
    let admin = sigil_server::client::admin_channel(&running.admin_socket)
        .await
        .unwrap();
    TestServer {
        running,
        admin,
        dir,
    }
}

/// What the restarted server signs validates against what it publishes: a new agent's SVID, a
/// workload SVID, and the server's own next SVID.
async fn everything_signed_validates(srv: &TestServer) {
    let roots = srv.roots().await;
    let agent = srv.attest().await;
    let chain: Vec<Vec<u8>> = agent.svid.cert_chain.clone();
    validate(&chain, &roots);
    let e = srv
        .create_entry(entry(
            &format!("spiffe://{TD}/after-crash"),
            &agent.id_str(),
        ))
        .await;
    let r = agent.sign(&e.id, csr()).await;
    assert_eq!(r.code, 0, "{}", r.error);
    validate(&r.svid.unwrap().cert_chain, &roots);
    let (server_chain, _) = srv
        .running
        .state
        .ca
        .server_svid(Duration::from_secs(60), SystemTime::now())
        .unwrap();
    let server_chain: Vec<Vec<u8>> = server_chain.iter().map(|c| c.to_vec()).collect();
    assert_eq!(validate(&server_chain, &roots), server_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_preparing_an_x509_ca_loses_no_root() {
    let dir = tempfile::tempdir().unwrap();
    let (running, store) = start_crashing(dir.path()).await;
    let admin = admin_of(&running).await;
    // The process dies right after the first write of the prepare step: whatever the caller
    // hears back does not matter.
    store.crash_after(1);
    let _ = LocalAuthority::new(admin)
        .prepare_x509_authority(pb::PrepareX509AuthorityRequest {})
        .await;
    kill(running, store).await;

    let srv = restart(dir).await;
    let mut la = LocalAuthority::new(srv.admin.clone());
    let st = la
        .get_x509_authority_state(pb::GetX509AuthorityStateRequest {})
        .await
        .unwrap()
        .into_inner();
    if let Some(p) = &st.prepared {
        assert!(
            srv.bundle().await.x509_authorities.contains(&p.certificate),
            "a stored prepared CA is published"
        );
    }
    la.activate_x509_authority(pb::ActivateX509AuthorityRequest::default())
        .await
        .unwrap();
    everything_signed_validates(&srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_the_first_start_loses_no_root() {
    let dir = tempfile::tempdir().unwrap();
    // The very first write is the creation of the CA (and the first JWT key): die after it,
    // whether or not the server came up.
    let (running, store) = try_start_crashing(dir.path(), |s| s.crash_after(1)).await;
    kill(running, store).await;

    let srv = restart(dir).await;
    everything_signed_validates(&srv).await;
    let bundle = own_jwt_bundle(&srv).await;
    assert!(
        !bundle.jwt_authorities.is_empty(),
        "the JWT key is published"
    );
}

async fn own_jwt_bundle(srv: &TestServer) -> sigil_core::Bundle {
    let b = srv.bundle().await;
    sigil_core::Bundle {
        trust_domain: td(),
        x509_authorities: b.x509_authorities,
        jwt_authorities: b
            .jwt_authorities
            .into_iter()
            .map(|k| sigil_core::JwtAuthority {
                key_id: k.key_id,
                public_key_der: k.public_key,
                expires_at: k.expires_at,
            })
            .collect(),
        sequence: b.sequence_number,
        refresh_hint: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_preparing_a_jwt_key_loses_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let (running, store) = start_crashing(dir.path()).await;
    let admin = admin_of(&running).await;
    store.crash_after(1);
    let _ = LocalAuthority::new(admin)
        .prepare_jwt_authority(pb::PrepareJwtAuthorityRequest {})
        .await;
    kill(running, store).await;

    let srv = restart(dir).await;
    let mut la = LocalAuthority::new(srv.admin.clone());
    la.activate_jwt_authority(pb::ActivateJwtAuthorityRequest::default())
        .await
        .unwrap();
    let agent = srv.attest().await;
    let e = srv
        .create_entry(entry(
            &format!("spiffe://{TD}/jwt-after-crash"),
            &agent.id_str(),
        ))
        .await;
    let token = agent
        .node
        .clone()
        .mint_jwt_svid(pb::MintJwtSvidRequest {
            entry_id: e.id.clone(),
            audience: vec!["aud".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let bundle = own_jwt_bundle(&srv).await;
    jwt::verify(&token, "aud", &[&bundle], unix_now()).expect("the token verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_authority_write_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (running, store) = start_crashing(dir.path()).await;
    let admin = admin_of(&running).await;
    let before = get_bundle(&admin).await;
    store.crash_after(0);
    let err = LocalAuthority::new(admin.clone())
        .prepare_x509_authority(pb::PrepareX509AuthorityRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    // Nothing changed in memory either: the bundle and the slots are as before.
    assert_eq!(get_bundle(&admin).await, before);
    let st = LocalAuthority::new(admin)
        .get_x509_authority_state(pb::GetX509AuthorityStateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(st.prepared.is_none());
    kill(running, store).await;

    let srv = restart(dir).await;
    assert_eq!(srv.bundle().await, before);
    everything_signed_validates(&srv).await;
}
