//! The agent's link to the server: its own identity (agent SVID, kept in `data_dir` so a
//! restart does not re-attest; see [`crate::data_dir`]), node attestation with a join token,
//! renewal, and the mTLS channel every server call uses.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::SystemTime;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sigil_core::tls::{self, Authorizer, SvidResolver, TrustStore};
use sigil_core::{Bundle, SpiffeId, TrustDomain, keys};
use sigil_proto::sigil::v1 as pb;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::config::Config;
use crate::data_dir::{self, DataDirError, Paths, pem_chain, read_pem_certs, write_file};

/// Why the agent could not reach or join the server.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// File I/O in data_dir.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// No way to trust the server at bootstrap.
    #[error(
        "no trust bundle: set trust_bundle_path (or insecure_bootstrap = true for development)"
    )]
    NoBootstrapTrust,
    /// No usable agent SVID on disk and no join token to get one.
    #[error("the agent has no usable SVID and no join_token is configured")]
    NoJoinToken,
    /// Reading or writing the agent's files in data_dir failed.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The identity in data_dir cannot be used and attesting again failed: the agent cannot
    /// start until an operator gives it a new join token (the message says so).
    #[error(
        "the stored agent identity is unusable ({reason}) and attesting again failed ({attest}). \
         A join token is single use, so the one the agent first attested with cannot be used \
         again. To recover: create a new join token (`sigil token generate`), set `join_token` \
         to it and restart the agent; it attests as a new agent and replaces the stored files \
         (then `sigil agent evict` the old agent ID)"
    )]
    UnusableIdentity {
        /// Why the stored identity is unusable.
        reason: DataDirError,
        /// Why attesting again failed.
        attest: Box<NodeError>,
    },
    /// The server refused.
    #[error("server refused: {0}")]
    Refused(tonic::Status),
    /// Connecting failed.
    #[error("connecting to the server: {0}")]
    Connect(String),
    /// Local crypto failure.
    #[error("crypto: {0}")]
    Crypto(String),
    /// A reply was unusable.
    #[error("bad reply from server: {0}")]
    BadReply(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

/// The agent's own X.509-SVID.
#[derive(Clone)]
pub struct AgentIdentity {
    /// e.g. `spiffe://td/sigil/agent/join_token/<token>`.
    pub id: SpiffeId,
    /// DER chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER key.
    pub key_pkcs8: Vec<u8>,
    /// Leaf validity.
    pub not_before: SystemTime,
    /// Leaf expiry.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("id", &self.id)
            .finish()
    }
}

impl AgentIdentity {
    fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Vec<u8>,
    ) -> Result<Self, NodeError> {
        let leaf = chain
            .first()
            .ok_or_else(|| NodeError::BadReply("empty chain".into()))?;
        let id = sigil_core::validate::leaf_spiffe_id(leaf)
            .map_err(|e| NodeError::BadReply(e.to_string()))?;
        let (_, c) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| NodeError::BadReply(e.to_string()))?;
        Ok(Self {
            id,
            // notBefore is backdated for clock skew; undo that for renewal timing.
            not_before: sigil_core::x509::to_system_time(c.validity().not_before.timestamp())
                + sigil_core::x509::CLOCK_SKEW,
            not_after: sigil_core::x509::to_system_time(c.validity().not_after.timestamp()),
            chain,
            key_pkcs8,
        })
    }

    /// Midpoint of the validity period.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }
}

/// Holds the agent identity, the server trust store and the channel to the server.
pub struct NodeClient {
    cfg: Config,
    paths: Paths,
    /// Presents the agent SVID on every new TLS connection.
    pub resolver: Arc<SvidResolver>,
    /// Roots used to authenticate the server (own trust domain).
    pub trust: TrustStore,
    identity: std::sync::RwLock<Option<AgentIdentity>>,
    /// TLS for every connection to the server; presents whatever `resolver` holds.
    tls: rustls::ClientConfig,
    /// Replaced after each renewal, so new calls go out on a connection that presents the new
    /// SVID (an HTTP/2 connection keeps the certificate it was opened with).
    channel: std::sync::RwLock<Channel>,
    /// Counts renewals; long-lived streams reopen on the new channel when it changes.
    renewals: watch::Sender<u64>,
    server_id: SpiffeId,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient")
            .field("server", &self.cfg.server_address)
            .finish()
    }
}

/// Accepts any server certificate: only for `insecure_bootstrap` development setups.
#[derive(Debug)]
struct InsecureVerifier(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for InsecureVerifier {
    fn verify_server_cert(
        &self,
        _e: &CertificateDer<'_>,
        _i: &[CertificateDer<'_>],
        _n: &ServerName<'_>,
        _o: &[u8],
        _t: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A lazily connecting channel to `addr` with `tls`; reconnects on its own after failures.
fn channel(addr: &str, tls: rustls::ClientConfig) -> Result<Channel, NodeError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let target = addr.to_owned();
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| NodeError::Connect(e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(
        ep.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from("sigil-server").map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        })),
    )
}

fn own_roots(b: &Bundle) -> Vec<CertificateDer<'static>> {
    b.x509_authorities
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect()
}

impl NodeClient {
    /// Loads the persisted identity or attests with the join token, then builds the channel.
    pub async fn establish(cfg: Config) -> Result<(Self, Bundle), NodeError> {
        fs::create_dir_all(&cfg.data_dir)
            .map_err(io(format!("creating {}", cfg.data_dir.display())))?;
        fs::set_permissions(&cfg.data_dir, fs::Permissions::from_mode(0o700))
            .map_err(io("chmod data_dir"))?;
        let paths = Paths::new(&cfg.data_dir);
        let server_id = cfg
            .trust_domain
            .id_with_path("/sigil/server")
            .map_err(|e| NodeError::Crypto(e.to_string()))?;
        let td = cfg.trust_domain.clone();

        let (identity, roots) = match load_stored(&paths, &td, SystemTime::now()) {
            Ok(Some(x)) => {
                tracing::info!(agent_id = %x.0.id, "reusing stored agent SVID (no re-attestation)");
                x
            }
            Ok(None) => {
                let (identity, bundle) = attest(&cfg, &paths, &server_id).await?;
                (identity, own_roots(&bundle))
            }
            Err(reason) => {
                tracing::warn!(error = %reason, "stored agent identity unusable; attesting again");
                match attest(&cfg, &paths, &server_id).await {
                    Ok((identity, bundle)) => (identity, own_roots(&bundle)),
                    Err(e) => {
                        return Err(NodeError::UnusableIdentity {
                            reason,
                            attest: Box::new(e),
                        });
                    }
                }
            }
        };
        let mut bundle = Bundle::new(td.clone());
        bundle.x509_authorities = roots.iter().map(|c| c.to_vec()).collect();

        let resolver = Arc::new(SvidResolver::new());
        resolver
            .set(identity.chain.clone(), &identity.key_pkcs8)
            .map_err(|e| NodeError::Crypto(e.to_string()))?;
        let trust = TrustStore::new();
        trust.set(td, roots);
        let tls = tls::client_config(
            Some(Arc::clone(&resolver)),
            trust.clone(),
            Authorizer::Exact(server_id.clone()),
        )
        .map_err(|e| NodeError::Crypto(e.to_string()))?;
        let channel = channel(&cfg.server_address, tls.clone())?;
        Ok((
            Self {
                cfg,
                paths,
                resolver,
                trust,
                identity: std::sync::RwLock::new(Some(identity)),
                tls,
                channel: std::sync::RwLock::new(channel),
                renewals: watch::channel(0).0,
                server_id,
            },
            bundle,
        ))
    }

    /// A client for the server's agent-facing API, on the connection for the current SVID.
    pub fn client(&self) -> pb::node_client::NodeClient<Channel> {
        let channel = self
            .channel
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        pb::node_client::NodeClient::new(channel)
    }

    /// Changes after every renewal of the agent SVID: a long-lived stream opened before it
    /// presents the previous SVID, which the server accepts only briefly, so it reopens.
    pub fn renewals(&self) -> watch::Receiver<u64> {
        self.renewals.subscribe()
    }

    /// The agent's SPIFFE ID.
    pub fn agent_id(&self) -> Option<SpiffeId> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|i| i.id.clone())
    }

    /// When the agent SVID should be renewed.
    pub fn renew_at(&self) -> Option<SystemTime> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(AgentIdentity::renew_at)
    }

    /// The server's SPIFFE ID.
    pub fn server_id(&self) -> &SpiffeId {
        &self.server_id
    }

    /// Renews the agent SVID with a fresh key and persists it.
    pub async fn renew(&self) -> Result<(), NodeError> {
        let key =
            keys::generate(keys::KeyType::EcP256).map_err(|e| NodeError::Crypto(e.to_string()))?;
        let csr = keys::csr_der(&key).map_err(|e| NodeError::Crypto(e.to_string()))?;
        let resp = self
            .client()
            .renew_agent(pb::RenewAgentRequest { csr })
            .await
            .map_err(NodeError::Refused)?
            .into_inner();
        let svid = resp
            .svid
            .ok_or_else(|| NodeError::BadReply("no svid".into()))?;
        let chain: Vec<_> = svid
            .cert_chain
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let identity = AgentIdentity::from_parts(chain, key.serialize_der())?;
        persist_identity(&self.paths, &identity)?;
        self.resolver
            .set(identity.chain.clone(), &identity.key_pkcs8)
            .map_err(|e| NodeError::Crypto(e.to_string()))?;
        // New connections present the new SVID; the old connection closes once the calls and
        // streams still on it end (the sync stream reopens on `renewals`).
        let mut tls = self.tls.clone();
        // A fresh session cache too: a resumed TLS session carries the client certificate of
        // the handshake that created it, so resuming would present the previous SVID again.
        tls.resumption = rustls::client::Resumption::in_memory_sessions(32);
        let fresh = channel(&self.cfg.server_address, tls)?;
        *self.channel.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        tracing::info!(agent_id = %identity.id, "agent SVID renewed");
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = Some(identity);
        self.renewals.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Updates the roots used to authenticate the server and persists them for restarts.
    pub fn update_trust(&self, bundle: &Bundle) {
        if bundle.trust_domain != self.cfg.trust_domain || bundle.x509_authorities.is_empty() {
            return;
        }
        let roots = own_roots(bundle);
        if let Err(e) = write_file(&self.paths.bundle, pem_chain(&roots).as_bytes(), 0o600) {
            tracing::warn!(error = %e, "persisting the bundle failed");
        }
        self.trust.set(self.cfg.trust_domain.clone(), roots);
    }

    /// The configured trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.cfg.trust_domain
    }
}

/// Key and chain in one file, replaced whole: a crash never leaves one without the other.
fn persist_identity(paths: &Paths, id: &AgentIdentity) -> Result<(), NodeError> {
    Ok(data_dir::store_identity(paths, &id.chain, &id.key_pkcs8)?)
}

/// The stored identity and roots if they can serve now: `Ok(None)` on a first start, an error
/// when something is stored but unusable (then the caller attests again, or explains).
fn load_stored(
    paths: &Paths,
    td: &TrustDomain,
    now: SystemTime,
) -> Result<Option<(AgentIdentity, Vec<CertificateDer<'static>>)>, DataDirError> {
    let Some(stored) = data_dir::load_identity(paths)? else {
        return Ok(None);
    };
    let path = || paths.identity.clone();
    let identity = AgentIdentity::from_parts(stored.chain, stored.key_pkcs8).map_err(|e| {
        DataDirError::Malformed {
            path: path(),
            reason: match e {
                NodeError::BadReply(m) => m,
                other => other.to_string(),
            },
        }
    })?;
    if identity.id.trust_domain() != td {
        return Err(DataDirError::OtherTrustDomain {
            path: path(),
            id: identity.id,
        });
    }
    if identity.not_after <= now {
        return Err(DataDirError::Expired { path: path() });
    }
    Ok(Some((identity, stored.roots)))
}

/// How many times a busy server (RESOURCE_EXHAUSTED) is asked again to attest.
const ATTEST_RETRIES: u32 = 8;

/// Wait before retry `attempt` (0-based): 1 s doubling to 10 s, about a minute in all. The server's
/// default limit is one attestation per second per address.
fn attest_backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_secs((1u64 << attempt.min(4)).min(10))
}

async fn attest(
    cfg: &Config,
    paths: &Paths,
    server_id: &SpiffeId,
) -> Result<(AgentIdentity, Bundle), NodeError> {
    let token = cfg.join_token.clone().ok_or(NodeError::NoJoinToken)?;
    let tls = if let Some(p) = &cfg.trust_bundle_path {
        let roots = read_pem_certs(p)?;
        if roots.is_empty() {
            return Err(NodeError::NoBootstrapTrust);
        }
        let trust = TrustStore::new();
        trust.set(cfg.trust_domain.clone(), roots);
        tls::client_config(None, trust, Authorizer::Exact(server_id.clone()))
            .map_err(|e| NodeError::Crypto(e.to_string()))?
    } else if cfg.insecure_bootstrap {
        tracing::warn!(
            "INSECURE BOOTSTRAP: the server is not authenticated for node attestation; \
             use trust_bundle_path outside development"
        );
        let mut c = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| NodeError::Crypto(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(InsecureVerifier(
                tls::provider().signature_verification_algorithms,
            )))
            .with_no_client_auth();
        c.alpn_protocols = vec![b"h2".to_vec()];
        c
    } else {
        return Err(NodeError::NoBootstrapTrust);
    };
    let ch = channel(&cfg.server_address, tls)?;
    let key =
        keys::generate(keys::KeyType::EcP256).map_err(|e| NodeError::Crypto(e.to_string()))?;
    let csr = keys::csr_der(&key).map_err(|e| NodeError::Crypto(e.to_string()))?;
    let req = pb::AttestRequest {
        attestation_type: "join_token".into(),
        attestation_data: token.into_bytes(),
        csr,
    };
    let mut client = pb::node_client::NodeClient::new(ch);
    let mut attempt = 0;
    let resp = loop {
        match client.attest(req.clone()).await {
            Ok(r) => break r.into_inner(),
            // Rate-limited (per address: several nodes behind one NAT) or the CA is saturated:
            // the token is not spent, so wait and try again.
            Err(s) if s.code() == tonic::Code::ResourceExhausted && attempt < ATTEST_RETRIES => {
                let wait = attest_backoff(attempt);
                attempt += 1;
                tracing::warn!(reason = %s.message(), ?wait, "server busy; retrying node attestation");
                tokio::time::sleep(wait).await;
            }
            Err(s) => return Err(NodeError::Refused(s)),
        }
    };
    let svid = resp
        .svid
        .ok_or_else(|| NodeError::BadReply("no svid".into()))?;
    let pbb = resp
        .bundle
        .ok_or_else(|| NodeError::BadReply("no bundle".into()))?;
    let chain: Vec<_> = svid
        .cert_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let identity = AgentIdentity::from_parts(chain, key.serialize_der())?;
    let mut bundle = Bundle::new(cfg.trust_domain.clone());
    bundle.x509_authorities = pbb.x509_authorities;
    bundle.sequence = pbb.sequence_number;
    // Roots first: the identity file is the commit point, so an identity on disk always has
    // the roots to authenticate the server beside it.
    write_file(
        &paths.bundle,
        pem_chain(&own_roots(&bundle)).as_bytes(),
        0o600,
    )?;
    persist_identity(paths, &identity)?;
    tracing::info!(agent_id = %identity.id, "node attested with join token");
    Ok((identity, bundle))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn attestation_backoff_doubles_to_ten_seconds() {
        let waits: Vec<u64> = (0..ATTEST_RETRIES)
            .map(|a| attest_backoff(a).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10, 10, 10]);
        assert_eq!(attest_backoff(40), Duration::from_secs(10));
    }
}
