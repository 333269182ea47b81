//! The certificate authority: which key signs, which roots are published, and signing itself.
//!
//! The CA key is created once (self-signed, or as an intermediate of a disk upstream authority),
//! persisted in the store and reused on restart. It never leaves this process. Rotation follows
//! SPIRE's schedule: the next CA is prepared (and published in the bundle, so relying parties
//! learn it before it signs anything) at half the active CA's life and activated when a sixth of
//! it remains; old roots stay in the bundle until they expire.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::PublicKeyData;
use rustls_pki_types::CertificateDer;
use sigil_core::keys::{self, CsrKey, KeyError};
use sigil_core::x509::{self, BuildError, CaSigner, LeafParams, unix_secs};
use sigil_core::{Bundle, SpiffeId, TrustDomain};

use crate::config::{Config, DiskAuthority};
use crate::datastore::{Authority, AuthorityKind, AuthorityState, DataStore, StoreError};
use crate::jwt::JwtKeys;

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
    /// Activation was asked for but no (or another) CA is prepared.
    #[error("no X.509 CA with that ID is prepared")]
    NothingPrepared,
    /// A JWT signing key could not be generated, loaded or used.
    #[error(transparent)]
    Jwt(#[from] sigil_core::jwt::JwtError),
}

/// The X.509 authorities: the one signing and the one prepared to sign next.
#[derive(Debug, Clone)]
pub struct X509Slots {
    /// Signing now.
    pub active: Authority,
    /// Published, not signing yet.
    pub prepared: Option<Authority>,
}

/// The signing CA and the trust bundle it belongs to.
pub struct Ca {
    td: TrustDomain,
    cfg: Config,
    x509: RwLock<X509Slots>,
    signer: RwLock<Arc<CaSigner>>,
    bundle: RwLock<Arc<Bundle>>,
    jwt: JwtKeys,
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
        let (signer, active) = match active {
            Some(a) => (signer_of(&a)?, a),
            None => {
                let authority = new_authority(cfg, &mut bundle, now, AuthorityState::Active)?;
                store.put_authority(authority.clone())?;
                tracing::info!(trust_domain = %td, "created a new X.509 CA");
                (signer_of(&authority)?, authority)
            }
        };
        let prepared = store
            .list_authorities()?
            .into_iter()
            .filter(|a| a.kind == AuthorityKind::X509Ca && a.state == AuthorityState::Prepared)
            .filter(|a| a.not_after > now_s + 60)
            .max_by_key(|a| a.not_after);
        // JWT keys: brought up to date with the rotation schedule and published (before any of
        // them signs: nothing is served before this bundle is stored).
        let jwt = JwtKeys::load(store, cfg.jwt_key_type, cfg.ca_ttl, now)?;
        let published = jwt.published();
        if !crate::jwt::same_keys(&bundle.jwt_authorities, &published) {
            bundle.sequence += 1;
        }
        bundle.jwt_authorities = published;
        prune_expired(&mut bundle, now);
        let doc = bundle
            .to_spiffe_json()
            .map_err(|e| CaError::Bundle(e.to_string()))?;
        store.set_bundle(&td, doc.into_bytes())?;
        Ok(Self {
            td,
            cfg: cfg.clone(),
            x509: RwLock::new(X509Slots { active, prepared }),
            signer: RwLock::new(Arc::new(signer)),
            bundle: RwLock::new(Arc::new(bundle)),
            jwt,
        })
    }

    /// The JWT-SVID signing keys.
    pub fn jwt(&self) -> &JwtKeys {
        &self.jwt
    }

    /// Changes the own bundle with `f`. When that changed anything, the sequence number goes up
    /// by one (agents' sync streams compare it) and the new bundle is returned; the caller
    /// persists it and announces the store revision (see [`crate::jwt::publish`]).
    pub fn update_bundle(&self, f: impl FnOnce(&mut Bundle)) -> Arc<Bundle> {
        let mut cur = self.bundle.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Bundle::clone(&cur);
        f(&mut next);
        next.sequence = cur.sequence;
        if next != **cur {
            next.sequence = cur.sequence + 1;
            *cur = Arc::new(next);
        }
        Arc::clone(&cur)
    }

    /// The X.509 authorities (for the admin API).
    pub fn x509_slots(&self) -> X509Slots {
        self.x509.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Unix seconds of the next scheduled X.509 rotation step.
    pub fn x509_next_event(&self) -> i64 {
        let slots = self.x509_slots();
        let (prepare_at, activate_at) = schedule(&slots.active);
        if slots.prepared.is_none() {
            prepare_at
        } else {
            activate_at
        }
    }

    /// One step of the automatic schedule; true when the bundle or the signer changed.
    pub fn x509_rotate(&self, store: &dyn DataStore, now: SystemTime) -> Result<bool, CaError> {
        let slots = self.x509_slots();
        let (prepare_at, activate_at) = schedule(&slots.active);
        let now_s = unix_secs(now);
        let mut changed = self.prune(now);
        if slots.prepared.is_none() && now_s >= prepare_at {
            self.x509_prepare(store, now)?;
            changed = true;
        } else if slots.prepared.is_some() && now_s >= activate_at {
            self.x509_activate(store, None)?;
            changed = true;
        }
        Ok(changed)
    }

    /// Drops expired roots from the bundle; true when any went.
    fn prune(&self, now: SystemTime) -> bool {
        let before = self.bundle().sequence;
        self.update_bundle(|b| prune_expired(b, now)).sequence != before
    }

    /// Creates the next CA and publishes its root; it does not sign until activated. A prepared
    /// CA that was never activated is replaced (it never signed anything).
    pub fn x509_prepare(
        &self,
        store: &dyn DataStore,
        now: SystemTime,
    ) -> Result<Authority, CaError> {
        let mut bundle = Bundle::clone(&self.bundle());
        let authority = new_authority(&self.cfg, &mut bundle, now, AuthorityState::Prepared)?;
        signer_of(&authority)?;
        store.put_authority(authority.clone())?;
        if let Some(old) = self.x509_slots().prepared {
            store.delete_authority(&old.id)?;
        }
        self.update_bundle(|b| b.x509_authorities = bundle.x509_authorities);
        self.x509
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .prepared = Some(authority.clone());
        tracing::info!(authority_id = %authority.id, "prepared the next X.509 CA");
        Ok(authority)
    }

    /// Makes the prepared CA the signing one; the previous one becomes Old and its root stays
    /// published until it expires. `expect_id` guards against activating someone else's CA.
    pub fn x509_activate(
        &self,
        store: &dyn DataStore,
        expect_id: Option<&str>,
    ) -> Result<Authority, CaError> {
        let slots = self.x509_slots();
        let mut next = slots.prepared.ok_or(CaError::NothingPrepared)?;
        if let Some(want) = expect_id.filter(|w| !w.is_empty())
            && want != next.id
        {
            return Err(CaError::NothingPrepared);
        }
        let signer = signer_of(&next)?;
        next.state = AuthorityState::Active;
        let mut old = slots.active;
        old.state = AuthorityState::Old;
        store.put_authority(next.clone())?;
        store.put_authority(old)?;
        *self.signer.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(signer);
        *self.x509.write().unwrap_or_else(|p| p.into_inner()) = X509Slots {
            active: next.clone(),
            prepared: None,
        };
        tracing::info!(authority_id = %next.id, "activated the next X.509 CA");
        Ok(next)
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

/// Prepare at half life, activate when a sixth remains (SPIRE's schedule).
fn schedule(active: &Authority) -> (i64, i64) {
    let life = (active.not_after - active.not_before).max(0);
    (active.not_before + life / 2, active.not_after - life / 6)
}

fn signer_of(a: &Authority) -> Result<CaSigner, CaError> {
    let key = keys::from_pkcs8(&a.private_key_pkcs8)?;
    let chain = a
        .chain_der
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    Ok(CaSigner::new(
        CertificateDer::from(a.cert_der.clone()),
        key,
        chain,
    )?)
}

/// Makes a new CA record (self-signed or from the upstream authority) and adds its roots to
/// `bundle`, bumping the sequence when that changed it.
fn new_authority(
    cfg: &Config,
    bundle: &mut Bundle,
    now: SystemTime,
    state: AuthorityState,
) -> Result<Authority, CaError> {
    let (mut authority, roots) = match &cfg.upstream_authority {
        None => self_signed(cfg, now)?,
        Some(up) => from_upstream(&up.disk, cfg, now)?,
    };
    authority.state = state;
    let mut changed = false;
    for r in roots {
        if !bundle.x509_authorities.contains(&r) {
            bundle.x509_authorities.push(r);
            changed = true;
        }
    }
    if changed {
        bundle.sequence += 1;
    }
    Ok(authority)
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
