//! Shared state of a running server, handed to every API service.

use std::sync::Arc;
use std::time::SystemTime;

use sigil_core::SpiffeId;

use crate::ca::Ca;
use crate::config::Config;
use crate::datastore::{DataStore, StoreError};
use crate::rate_limit::AddressLimiter;
use crate::registry::Registry;
use crate::signing::Signer;
use crate::status::ApiError;

/// Everything the API handlers share.
pub struct State {
    /// Validated configuration.
    pub cfg: Config,
    /// Durable store (source of truth).
    pub store: Arc<dyn DataStore>,
    /// The CA.
    pub ca: Arc<Ca>,
    /// In-memory entry index and change broadcast.
    pub registry: Arc<Registry>,
    /// Serializes writes so the registry applies them in store order.
    pub write_lock: tokio::sync::Mutex<()>,
    /// `spiffe://<td>/sigil/server`.
    pub server_id: SpiffeId,
    /// Roots the agent-facing TLS listener trusts; updated when the own bundle's roots change.
    pub trust: sigil_core::tls::TrustStore,
    /// Admission and execution of signing work.
    pub signer: Signer,
    /// Per-source-address limit on node attestation; `None` when turned off.
    pub attest_limiter: Option<AddressLimiter>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("trust_domain", &self.cfg.trust_domain)
            .finish()
    }
}

impl State {
    /// Runs a store operation on the blocking pool (sled writes fsync).
    pub async fn store<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn DataStore) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(ApiError::from)
    }

    /// Current time (one place, so a test clock could be injected later).
    pub fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
