//! Wiring: opens the store, loads the CA, and serves the agent API (mTLS over TCP) and the admin
//! API (Unix socket) until shutdown. The caller can bind port 0; the bound address is returned.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sigil_core::tls::{self, Authorizer, SvidResolver, TrustStore};
use sigil_proto::sigil::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};

use crate::api::admin::Admin;
use crate::api::node::Node;
use crate::ca::{Ca, CaError};
use crate::config::Config;
use crate::datastore::{DataStore, EntryFilter, Page, SledStore, StoreError};
use crate::rate_limit::AddressLimiter;
use crate::registry::Registry;
use crate::signing::Signer;
use crate::state::State;

/// HTTP/2 streams one client connection may have open at once, on every listener: one agent
/// connection carries its sync stream and its signing calls, and a client opening more waits
/// for a free stream instead of piling work onto the server.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Store failure.
    #[error("data store: {0}")]
    Store(#[from] StoreError),
    /// CA failure.
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    /// Socket or file failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS configuration failure.
    #[error("TLS: {0}")]
    Tls(String),
    /// The admin socket could not be created safely (the error names the path at fault).
    #[error("admin socket: {0}")]
    Socket(#[from] sigil_socket::BindError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// Where the agent API listens.
    pub addr: SocketAddr,
    /// The admin socket.
    pub admin_socket: PathBuf,
    /// Shared state (for in-process tests and benches).
    pub state: Arc<State>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops serving and waits for the listeners to close.
    pub async fn shutdown(self) {
        // Sync streams never end on their own; graceful shutdown waits for them.
        self.state.registry.close();
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The admin socket: only the server's own user may connect (it is the operator's API).
const ADMIN_SOCKET: sigil_socket::SocketSpec = sigil_socket::SocketSpec {
    dir_mode: 0o700,
    socket_mode: 0o600,
    role: "server",
};

async fn load_entries(
    store: Arc<dyn DataStore>,
) -> Result<(Vec<crate::datastore::Entry>, u64), StoreError> {
    tokio::task::spawn_blocking(move || {
        let rev = store.revision()?;
        let mut all = Vec::new();
        let mut page = Page {
            size: Page::MAX_SIZE,
            token: None,
        };
        loop {
            let (mut batch, next) = store.list_entries(&EntryFilter::default(), page.clone())?;
            all.append(&mut batch);
            match next {
                Some(t) => page.token = Some(t),
                None => break,
            }
        }
        Ok((all, rev))
    })
    .await
    .map_err(|e| StoreError::Backend(e.to_string()))?
}

/// Starts the server with `cfg` and returns once both listeners accept connections.
pub async fn start(cfg: Config) -> Result<Running, ServeError> {
    let dir = cfg.data_dir.clone();
    let store: Arc<dyn DataStore> = Arc::new(
        tokio::task::spawn_blocking(move || SledStore::open(&dir))
            .await
            .map_err(|e| ServeError::Tls(e.to_string()))??,
    );
    start_with_store(cfg, store).await
}

/// Starts the server on an already opened `store` (`cfg.data_dir` is not opened): the seam
/// through which tests put a fault-injecting store in front of the real one.
pub async fn start_with_store(
    cfg: Config,
    store: Arc<dyn DataStore>,
) -> Result<Running, ServeError> {
    let now = std::time::SystemTime::now();
    let ca = Arc::new(Ca::load_or_create(store.as_ref(), &cfg, now)?);
    let (entries, rev) = load_entries(Arc::clone(&store)).await?;
    let server_id = cfg
        .trust_domain
        .id_with_path("/sigil/server")
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let registry = Arc::new(Registry::new(entries, rev, server_id.clone()));

    let resolver = Arc::new(SvidResolver::new());
    let trust = TrustStore::new();
    trust.set(cfg.trust_domain.clone(), ca.roots());
    let svid_ttl = cfg.default_x509_svid_ttl;
    install_server_svid(&ca, &resolver, svid_ttl)?;
    let tls_cfg = tls::server_config(
        Arc::clone(&resolver),
        trust.clone(),
        Authorizer::MemberOf(cfg.trust_domain.clone()),
        false,
    )
    .map_err(|e| ServeError::Tls(e.to_string()))?;

    let listener = TcpListener::bind(cfg.bind_address)
        .await
        .map_err(io(format!("binding {}", cfg.bind_address)))?;
    let addr = listener.local_addr().map_err(io("local_addr"))?;
    let admin_listener = sigil_socket::bind(&cfg.admin_socket_path, ADMIN_SOCKET)?;

    let admin_socket = cfg.admin_socket_path.clone();
    let signer = Signer::new(cfg.max_pending_signatures, Signer::threads());
    let attest_limiter =
        (cfg.attestation_rate_limit > 0).then(|| AddressLimiter::new(cfg.attestation_rate_limit));
    let state = Arc::new(State {
        cfg,
        store,
        ca: Arc::clone(&ca),
        registry,
        write_lock: tokio::sync::Mutex::new(()),
        server_id,
        trust: trust.clone(),
        signer,
        attest_limiter,
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // Agent API over mTLS: handshakes run in their own tasks so a slow peer blocks nobody.
    let (conn_tx, conn_rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(Arc::new(tls_cfg));
    let mut sd = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                },
                _ = sd.changed() => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let conn_tx = conn_tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = conn_tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    }));
    let node = Node(Arc::clone(&state));
    let mut sd = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .add_service(pb::node_server::NodeServer::new(node))
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
                let _ = sd.changed().await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "agent API stopped");
        }
    }));

    let admin = Admin(Arc::clone(&state));
    let mut sd = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .add_service(pb::entries_server::EntriesServer::new(admin.clone()))
            .add_service(pb::tokens_server::TokensServer::new(admin.clone()))
            .add_service(pb::agents_server::AgentsServer::new(admin.clone()))
            .add_service(pb::bundles_server::BundlesServer::new(admin.clone()))
            .add_service(pb::local_authority_server::LocalAuthorityServer::new(
                admin.clone(),
            ))
            .add_service(pb::health_server::HealthServer::new(admin))
            .serve_with_incoming_shutdown(
                sigil_socket::normalized(UnixListenerStream::new(admin_listener)),
                async move {
                    let _ = sd.changed().await;
                },
            )
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "admin API stopped");
        }
    }));

    // Rotate the X.509 CA on its prepare/activate schedule.
    tasks.push(tokio::spawn(crate::x509_rotation::run(
        Arc::clone(&state),
        shutdown_rx.clone(),
    )));

    // Rotate the JWT signing keys on their prepare/activate schedule.
    tasks.push(tokio::spawn(crate::jwt::run(
        Arc::clone(&state),
        shutdown_rx.clone(),
    )));

    // Prune expired join tokens (and, if configured, long-expired agents).
    tasks.push(tokio::spawn(crate::prune::run(
        Arc::clone(&state),
        shutdown_rx.clone(),
    )));

    // Renew the server's own SVID at half its lifetime, without touching the listener.
    let mut sd = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(svid_ttl / 2) => {}
                _ = sd.changed() => break,
            }
            if let Err(e) = install_server_svid(&ca, &resolver, svid_ttl) {
                tracing::error!(error = %e, "renewing the server SVID failed");
            }
        }
    }));

    tracing::info!(%addr, admin_socket = %admin_socket.display(), "sigil-server listening");
    Ok(Running {
        addr,
        admin_socket,
        state,
        shutdown: shutdown_tx,
        tasks,
    })
}

fn install_server_svid(ca: &Ca, resolver: &SvidResolver, ttl: Duration) -> Result<(), ServeError> {
    let (chain, key) = ca.server_svid(ttl, std::time::SystemTime::now())?;
    resolver
        .set(chain, &key)
        .map_err(|e| ServeError::Tls(e.to_string()))
}
