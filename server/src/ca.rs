//! The certificate authority: which key signs, which roots are published, and signing itself.
//!
//! The CA key is created once (self-signed, or as an intermediate of a disk upstream authority),
//! persisted in the store and reused on restart. It never leaves this process.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::PublicKeyData;
use rustls_pki_types::CertificateDer;
use sigil_core::keys::{self, CsrKey, KeyError};
use sigil_core::x509::{self, BuildError, CaSigner, LeafParams, unix_secs};
use sigil_core::{Bundle, SpiffeId, TrustDomain};

use crate::config::{Config, DiskAuthority};
use crate::datastore::{Authority, AuthorityKind, AuthorityState, DataStore, StoreError};

/// Why the CA cannot start or sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Certificate construction failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Key handling failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The upstream authority's files are unusable.
    #[error("upstream authority: {0}")]
    Upstream(String),
    /// The stored bundle document is unreadable.
    #[error("stored bundle: {0}")]
    Bundle(String),
}

/// The signing CA and the trust bundle it belongs to.
pub struct Ca {
    td: TrustDomain,
    signer: RwLock<Arc<CaSigner>>,
    bundle: RwLock<Arc<Bundle>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.td)
            .finish()
    }
}

impl Ca {
    /// Loads the active CA from the store, or creates and persists one on first start (or when
    /// the stored one has expired).
    pub fn load_or_create(
        store: &dyn DataStore,
        cfg: &Config,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        let td = cfg.trust_domain.clone();
        let now_s = unix_secs(now);
        let active = store
            .list_authorities()?
            .into_iter()
            .filter(|a| a.kind == AuthorityKind::X509Ca && a.state == AuthorityState::Active)
            .filter(|a| a.not_after > now_s + 60)
            .max_by_key(|a| a.not_after);
        let mut bundle = match store.get_bundle(&td)? {
            Some(doc) => Bundle::from_spiffe_json(td.clone(), &doc)
                .map_err(|e| CaError::Bundle(e.to_string()))?,
            None => Bundle::new(td.clone()),
        };
        let signer = match active {
            Some(a) => {
                let key = keys::from_pkcs8(&a.private_key_pkcs8)?;
                let chain = a
                    .chain_der
                    .iter()
                    .map(|c| CertificateDer::from(c.clone()))
                    .collect();
                CaSigner::new(CertificateDer::from(a.cert_der), key, chain)?
            }
            None => {
                let (authority, roots) = match &cfg.upstream_authority {
                    None => self_signed(cfg, now)?,
                    Some(up) => from_upstream(&up.disk, cfg, now)?,
                };
                let key = keys::from_pkcs8(&authority.private_key_pkcs8)?;
                let chain = authority
                    .chain_der
                    .iter()
                    .map(|c| CertificateDer::from(c.clone()))
                    .collect();
                let signer =
                    CaSigner::new(CertificateDer::from(authority.cert_der.clone()), key, chain)?;
                for r in roots {
                    if !bundle.x509_authorities.contains(&r) {
                        bundle.x509_authorities.push(r);
                    }
                }
                bundle.sequence += 1;
                store.put_authority(authority)?;
                tracing::info!(trust_domain = %td, "created a new X.509 CA");
                signer
            }
        };
        prune_expired(&mut bundle, now);
        let doc = bundle
            .to_spiffe_json()
            .map_err(|e| CaError::Bundle(e.to_string()))?;
        store.set_bundle(&td, doc.into_bytes())?;
        Ok(Self {
            td,
            signer: RwLock::new(Arc::new(signer)),
            bundle: RwLock::new(Arc::new(bundle)),
        })
    }

    /// The trust domain this CA serves.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The current own-domain bundle.
    pub fn bundle(&self) -> Arc<Bundle> {
        Arc::clone(&self.bundle.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The roots of the own bundle, as rustls wants them.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.bundle()
            .x509_authorities
            .iter()
            .map(|d| CertificateDer::from(d.clone()))
            .collect()
    }

    fn signer(&self) -> Arc<CaSigner> {
        Arc::clone(&self.signer.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Signs an X.509-SVID for `id` over the CSR's public key. Only the key comes from the CSR.
    pub fn sign_x509_svid(
        &self,
        key: &CsrKey,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let params = LeafParams {
            spiffe_id: id.clone(),
            dns_names: dns_names.to_vec(),
            ttl,
            now,
            rsa_key: key.is_rsa(),
        };
        Ok(self.signer().sign_leaf(key, &params)?)
    }

    /// Issues the server's own TLS SVID with a fresh in-memory key; returns chain and PKCS#8 key.
    pub fn server_svid(
        &self,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, Vec<u8>), CaError> {
        let key = keys::generate(keys::KeyType::EcP256)?;
        let id = self
            .td
            .id_with_path("/sigil/server")
            .map_err(|e| CaError::Upstream(e.to_string()))?;
        let params = LeafParams {
            spiffe_id: id,
            dns_names: vec![],
            ttl,
            now,
            rsa_key: false,
        };
        let chain = self.signer().sign_leaf(&key, &params)?;
        Ok((chain, key.serialize_der()))
    }
}

fn prune_expired(bundle: &mut Bundle, now: SystemTime) {
    let now_s = unix_secs(now);
    bundle.x509_authorities.retain(|der| {
        x509_parser::parse_x509_certificate(der)
            .map(|(_, c)| c.validity().not_after.timestamp() > now_s)
            .unwrap_or(false)
    });
}

fn authority_record(
    cert: &CertificateDer<'_>,
    chain: Vec<Vec<u8>>,
    key: &rcgen::KeyPair,
    now: SystemTime,
    ttl: Duration,
) -> Authority {
    Authority {
        id: uuid::Uuid::new_v4().to_string(),
        kind: AuthorityKind::X509Ca,
        cert_der: cert.to_vec(),
        chain_der: chain,
        public_key_der: key.subject_public_key_info(),
        private_key_pkcs8: key.serialize_der(),
        not_before: unix_secs(now),
        not_after: unix_secs(now + ttl),
        state: AuthorityState::Active,
    }
}

fn self_signed(cfg: &Config, now: SystemTime) -> Result<(Authority, Vec<Vec<u8>>), CaError> {
    let key = keys::generate(cfg.ca_key_type)?;
    let cert = x509::self_signed_ca(&key, &cfg.trust_domain, cfg.ca_ttl, now)?;
    let roots = vec![cert.to_vec()];
    Ok((
        authority_record(&cert, vec![], &key, now, cfg.ca_ttl),
        roots,
    ))
}

fn read_pem(path: &std::path::Path) -> Result<Vec<pem::Pem>, CaError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CaError::Upstream(format!("{}: {e}", path.display())))?;
    pem::parse_many(text).map_err(|e| CaError::Upstream(format!("{}: {e}", path.display())))
}

fn from_upstream(
    disk: &DiskAuthority,
    cfg: &Config,
    now: SystemTime,
) -> Result<(Authority, Vec<Vec<u8>>), CaError> {
    let certs = read_pem(&disk.cert_file)?;
    let up_cert = certs
        .iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .ok_or_else(|| CaError::Upstream("cert_file holds no CERTIFICATE".into()))?
        .contents()
        .to_vec();
    let key_pem = read_pem(&disk.key_file)?;
    let up_key = key_pem
        .iter()
        .find(|p| p.tag() == "PRIVATE KEY")
        .ok_or_else(|| CaError::Upstream("key_file holds no PKCS#8 PRIVATE KEY".into()))?;
    let up_key = keys::from_pkcs8(up_key.contents())?;
    let roots: Vec<Vec<u8>> = match &disk.bundle_file {
        Some(p) => read_pem(p)?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| p.into_contents())
            .collect(),
        None => vec![up_cert.clone()],
    };
    if roots.is_empty() {
        return Err(CaError::Upstream("bundle_file holds no CERTIFICATE".into()));
    }
    let upstream = CaSigner::new(CertificateDer::from(up_cert.clone()), up_key, vec![])?;
    let key = keys::generate(cfg.ca_key_type)?;
    let cert = upstream.sign_intermediate(&key, &cfg.trust_domain, cfg.ca_ttl, now)?;
    // Present the upstream certificate in chains unless it is itself a published root.
    let chain = if roots.contains(&up_cert) {
        vec![]
    } else {
        vec![up_cert]
    };
    let ttl = cfg.ca_ttl.min(
        upstream
            .not_after()
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    );
    Ok((authority_record(&cert, chain, &key, now, ttl), roots))
}
