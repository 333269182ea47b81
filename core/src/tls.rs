//! rustls integration for SPIFFE authentication: peers are trusted by chaining to the bundle of
//! their trust domain and by their SPIFFE ID, never by hostname.
//!
//! Trust anchors ([`TrustStore`]) and our own SVID ([`SvidResolver`]) are shared, swappable
//! handles, so rotation takes effect on the next handshake without rebuilding listeners.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::id::{SpiffeId, TrustDomain};
use crate::validate::{SvidError, leaf_spiffe_id, validate_x509_svid};

/// The crypto provider every Sigil TLS config uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Decides whether an authenticated peer SPIFFE ID may talk to us.
#[derive(Clone)]
pub enum Authorizer {
    /// Any ID that chains to a trusted bundle.
    Any,
    /// Exactly this ID.
    Exact(SpiffeId),
    /// One of these IDs.
    OneOf(Vec<SpiffeId>),
    /// Any ID in this trust domain.
    MemberOf(TrustDomain),
    /// A custom rule.
    Predicate(Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>),
}

impl Authorizer {
    /// True when `id` is allowed.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(want) => want == id,
            Self::OneOf(ids) => ids.contains(id),
            Self::MemberOf(td) => id.trust_domain() == td,
            Self::Predicate(f) => f(id),
        }
    }
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("Any"),
            Self::Exact(id) => write!(f, "Exact({id})"),
            Self::OneOf(ids) => write!(f, "OneOf({ids:?})"),
            Self::MemberOf(td) => write!(f, "MemberOf({td})"),
            Self::Predicate(_) => f.write_str("Predicate"),
        }
    }
}

/// DER roots per trust domain, shared between TLS configs and updated on bundle changes.
#[derive(Clone, Default, Debug)]
pub struct TrustStore(Arc<RwLock<Arc<RootMap>>>);

type RootMap = HashMap<TrustDomain, Vec<CertificateDer<'static>>>;

impl TrustStore {
    /// An empty store: nothing is trusted until [`TrustStore::set`] is called.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the roots of one trust domain.
    pub fn set(&self, td: TrustDomain, roots: Vec<CertificateDer<'static>>) {
        let mut guard = self.0.write().unwrap_or_else(|p| p.into_inner());
        let mut map = HashMap::clone(&guard);
        map.insert(td, roots);
        *guard = Arc::new(map);
    }

    /// Drops a trust domain.
    pub fn remove(&self, td: &TrustDomain) {
        let mut guard = self.0.write().unwrap_or_else(|p| p.into_inner());
        let mut map = HashMap::clone(&guard);
        map.remove(td);
        *guard = Arc::new(map);
    }

    /// The roots of `td`, if any.
    pub fn roots(&self, td: &TrustDomain) -> Option<Vec<CertificateDer<'static>>> {
        let guard = self.0.read().unwrap_or_else(|p| p.into_inner());
        guard.get(td).cloned()
    }

    /// Validates a peer chain against the roots of the leaf's own trust domain.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<SpiffeId, SvidError> {
        let leaf = chain.first().ok_or(SvidError::EmptyChain)?;
        let id = leaf_spiffe_id(leaf)?;
        let map = Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()));
        let roots = map.get(id.trust_domain()).ok_or_else(|| {
            SvidError::Untrusted(format!("no bundle for trust domain {}", id.trust_domain()))
        })?;
        validate_x509_svid(chain, roots, now)
    }
}

/// Our own current SVID for TLS, swappable at rotation.
#[derive(Default)]
pub struct SvidResolver(RwLock<Option<Arc<CertifiedKey>>>);

impl fmt::Debug for SvidResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SvidResolver(<key redacted>)")
    }
}

impl SvidResolver {
    /// A resolver with no SVID yet (handshakes needing one fail until [`SvidResolver::set`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs a chain (leaf first) and its PKCS#8 DER private key. Fails, keeping the
    /// previous SVID, when the chain is empty or the key is not the leaf's.
    pub fn set(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: &[u8],
    ) -> Result<(), rustls::Error> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
        let ck = CertifiedKey::from_der(chain, key, &provider())?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(ck));
        Ok(())
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl rustls::server::ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for SvidResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

fn to_rustls(e: SvidError) -> rustls::Error {
    let ce = match e {
        SvidError::Expired => CertificateError::Expired,
        SvidError::Untrusted(_) => CertificateError::UnknownIssuer,
        SvidError::Malformed { .. } => CertificateError::BadEncoding,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

fn unix_to_system(now: UnixTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

fn check_peer(
    trust: &TrustStore,
    authorizer: &Authorizer,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    let id = trust
        .verify(&chain, unix_to_system(now))
        .map_err(to_rustls)?;
    if !authorizer.allows(&id) {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ));
    }
    Ok(())
}

/// Client-side verifier of a server's X.509-SVID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    trust: TrustStore,
    authorizer: Authorizer,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// Trusts servers whose SVID chains to `trust` and whose ID `authorizer` allows.
    pub fn new(trust: TrustStore, authorizer: Authorizer) -> Self {
        Self {
            trust,
            authorizer,
            algs: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_peer(
            &self.trust,
            &self.authorizer,
            end_entity,
            intermediates,
            now,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Server-side verifier of a client's X.509-SVID.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    trust: TrustStore,
    authorizer: Authorizer,
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeClientVerifier {
    /// Trusts clients whose SVID chains to `trust` and whose ID `authorizer` allows. With
    /// `mandatory` false, clients without a certificate are let through (the application must
    /// then check, e.g. for node attestation before an agent has an SVID).
    pub fn new(trust: TrustStore, authorizer: Authorizer, mandatory: bool) -> Self {
        Self {
            trust,
            authorizer,
            mandatory,
            algs: provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_peer(
            &self.trust,
            &self.authorizer,
            end_entity,
            intermediates,
            now,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A server config that presents `svid` and authenticates clients by SPIFFE ID. ALPN is h2 so
/// it can carry gRPC.
pub fn server_config(
    svid: Arc<SvidResolver>,
    trust: TrustStore,
    authorizer: Authorizer,
    client_auth_mandatory: bool,
) -> Result<ServerConfig, rustls::Error> {
    let verifier = SpiffeClientVerifier::new(trust, authorizer, client_auth_mandatory);
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(svid);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A client config that authenticates the server by SPIFFE ID and presents `svid` when given.
pub fn client_config(
    svid: Option<Arc<SvidResolver>>,
    trust: TrustStore,
    authorizer: Authorizer,
) -> Result<ClientConfig, rustls::Error> {
    let verifier = SpiffeServerVerifier::new(trust, authorizer);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut cfg = match svid {
        Some(r) => builder.with_client_cert_resolver(r),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// The SPIFFE ID of a peer's leaf certificate, for handlers that authorize per call.
pub fn peer_id(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    certs.first().and_then(|c| leaf_spiffe_id(c).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn authorizers() {
        let web = id("spiffe://example.org/web");
        let db = id("spiffe://example.org/db");
        let foreign = id("spiffe://other.org/web");
        let td = TrustDomain::new("example.org").unwrap();

        assert!(Authorizer::Any.allows(&foreign));
        assert!(Authorizer::Exact(web.clone()).allows(&web));
        assert!(!Authorizer::Exact(web.clone()).allows(&db));
        assert!(!Authorizer::Exact(web.clone()).allows(&foreign));
        let one_of = Authorizer::OneOf(vec![web.clone(), db.clone()]);
        assert!(one_of.allows(&web) && one_of.allows(&db) && !one_of.allows(&foreign));
        assert!(!Authorizer::OneOf(vec![]).allows(&web));
        let member = Authorizer::MemberOf(td);
        assert!(member.allows(&web) && member.allows(&db) && !member.allows(&foreign));
        let pred = Authorizer::Predicate(Arc::new(|i: &SpiffeId| i.path() == "/db"));
        assert!(pred.allows(&db) && !pred.allows(&web));
        assert_eq!(format!("{pred:?}"), "Predicate");
        assert_eq!(
            format!("{:?}", Authorizer::Exact(web)),
            "Exact(spiffe://example.org/web)"
        );
    }

    #[test]
    fn empty_trust_store_trusts_nothing() {
        let store = TrustStore::new();
        let td = TrustDomain::new("example.org").unwrap();
        assert!(store.roots(&td).is_none());
        store.set(td.clone(), vec![]);
        assert_eq!(store.roots(&td), Some(vec![]));
        assert_eq!(
            store.verify(&[], SystemTime::now()),
            Err(SvidError::EmptyChain)
        );
        // Clones share the roots.
        let clone = store.clone();
        store.remove(&td);
        assert!(clone.roots(&td).is_none());
    }

    #[test]
    fn resolver_debug_redacts_the_key() {
        assert_eq!(
            format!("{:?}", SvidResolver::new()),
            "SvidResolver(<key redacted>)"
        );
        assert!(!rustls::client::ResolvesClientCert::has_certs(
            &SvidResolver::new()
        ));
    }
}
