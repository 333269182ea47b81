//! Wiring: joins the server, starts sync and rotation, and serves the Workload API on the
//! public socket and health on the admin socket until shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use sigil_proto::sigil::v1 as pb;
use sigil_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::attestation::WorkloadAttestor;
use crate::attestation::{UnixAttestor, UnixAttestorConfig};
use crate::cache::Cache;
use crate::config::Config;
use crate::node::{NodeClient, NodeError};
use crate::sds::Sds;
use crate::workload_api::{Attestor, WorkloadApi};

/// HTTP/2 streams one connection to the admin socket may have open at once: it serves health
/// checks, so a client that opens more waits rather than piling up work.
pub const ADMIN_MAX_CONCURRENT_STREAMS: u32 = 32;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Joining the server failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A socket could not be created safely (the error names the path at fault).
    #[error(transparent)]
    Socket(#[from] sigil_socket::BindError),
    /// The threads serving the Workload API could not be started.
    #[error("starting the Workload API runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The Workload API socket: any local user may connect (each caller is attested).
const PUBLIC_SOCKET: sigil_socket::SocketSpec = sigil_socket::SocketSpec {
    dir_mode: 0o755,
    socket_mode: 0o777,
    role: "agent",
};

/// The admin (health) socket: only the agent's own user.
const ADMIN_SOCKET: sigil_socket::SocketSpec = sigil_socket::SocketSpec {
    dir_mode: 0o700,
    socket_mode: 0o600,
    role: "agent",
};

/// A running agent.
#[derive(Debug)]
pub struct Running {
    /// Workload API socket.
    pub socket_path: PathBuf,
    /// The agent's SPIFFE ID.
    pub agent_id: String,
    /// Agent state (for in-process tests).
    pub cache: Arc<Cache>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops every task and listener.
    pub async fn shutdown(self) {
        // Open Workload API/SDS streams never end on their own; graceful shutdown waits for them.
        self.cache.close();
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Health service on the admin socket.
#[derive(Debug, Clone)]
struct Health {
    cache: Arc<Cache>,
    td: String,
}

#[tonic::async_trait]
impl pb::health_server::Health for Health {
    async fn check(
        &self,
        _r: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        let s = self.cache.current();
        if s.denied {
            return Err(Status::unavailable(
                "the server refused this agent (banned or evicted)",
            ));
        }
        Ok(Response::new(pb::HealthCheckResponse {
            serving: s.bundle.is_some(),
            trust_domain: self.td.clone(),
            revision: s.revision,
        }))
    }
}

/// Starts the agent with `cfg`.
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    let socket_path = cfg.socket_path.clone();
    let admin_path = cfg.admin_socket_path.clone();
    let attestor_cfg = UnixAttestorConfig {
        discover_workload_path: cfg.discover_workload_path,
        hash_binary: cfg.workload_binary_sha256,
    };
    let td = cfg.trust_domain.to_string();
    let sds_cfg = cfg.sds.clone();
    let (api_threads, max_streams, rate_limit) = (
        cfg.workload_api_threads,
        cfg.max_concurrent_streams,
        cfg.workload_api_rate_limit,
    );
    // Bind first so a second agent on the same socket fails before touching the server.
    let listener = sigil_socket::bind(&socket_path, PUBLIC_SOCKET)?
        .into_std()
        .map_err(StartError::Runtime)?;
    let admin_listener = sigil_socket::bind(&admin_path, ADMIN_SOCKET)?;

    let (node, bundle) = NodeClient::establish(cfg).await?;
    let node = Arc::new(node);
    let agent_id = node.agent_id().map(|i| i.to_string()).unwrap_or_default();
    let cache = Arc::new(Cache::new());
    cache.set_bundle(bundle);

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(crate::sync::run(
        Arc::clone(&node),
        Arc::clone(&cache),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::rotate::run(
        Arc::clone(&node),
        Arc::clone(&cache),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(renew_agent(
        Arc::clone(&node),
        Arc::clone(&cache),
        shutdown_rx.clone(),
    )));

    let attestors: Vec<Box<dyn WorkloadAttestor>> = vec![Box::new(UnixAttestor::new(attestor_cfg))];
    let attestor = Attestor::new(attestors).with_rate_limit(rate_limit);
    let api = WorkloadApi::new(Arc::clone(&cache), attestor.clone()).with_jwt(Arc::new(
        crate::jwt::JwtSvids::new(Arc::clone(&node), crate::jwt::DEFAULT_CAPACITY),
    ));
    // SDS shares the socket and the attestation: Envoy is just another workload.
    let sds = Sds::new(Arc::clone(&cache), attestor, sds_cfg);
    let mut sd = shutdown_rx.clone();
    let serve = move || async move {
        // Registered with the runtime that serves it, so accepts wake that runtime directly.
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "Workload API socket could not be served");
                return;
            }
        };
        let r = tonic::transport::Server::builder()
            .max_concurrent_streams(max_streams)
            .add_service(SpiffeWorkloadApiServer::new(api))
            .add_service(sds.into_service())
            .serve_with_incoming_shutdown(
                sigil_socket::normalized(crate::peer::incoming(listener)),
                async move {
                    let _ = sd.changed().await;
                },
            )
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "Workload API stopped");
        }
    };
    tasks.push(crate::api_runtime::spawn(api_threads, serve)?);
    let health = Health {
        cache: Arc::clone(&cache),
        td,
    };
    let mut sd = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .max_concurrent_streams(ADMIN_MAX_CONCURRENT_STREAMS)
            .add_service(pb::health_server::HealthServer::new(health))
            .serve_with_incoming_shutdown(
                sigil_socket::normalized(tokio_stream::wrappers::UnixListenerStream::new(
                    admin_listener,
                )),
                async move {
                    let _ = sd.changed().await;
                },
            )
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "admin API stopped");
        }
    }));
    tracing::info!(agent_id = %agent_id, socket = %socket_path.display(), "sigil-agent serving the Workload API");
    Ok(Running {
        socket_path,
        agent_id,
        cache,
        shutdown,
        tasks,
    })
}

/// Renews the agent SVID at half-life; retries with backoff on failure.
async fn renew_agent(
    node: Arc<NodeClient>,
    cache: Arc<Cache>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let wait = node
            .renew_at()
            .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
            .unwrap_or(std::time::Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        if cache.is_denied() {
            return;
        }
        if let Err(e) = node.renew().await {
            tracing::warn!(error = %e, "agent SVID renewal failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
