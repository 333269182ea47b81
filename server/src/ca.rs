//! The certificate authority: which key signs, which roots are published, and signing itself.
//!
//! The CA key is created once (self-signed, or as an intermediate of a disk upstream authority),
//! persisted in the store and reused on restart. It never leaves this process. Rotation follows
//! SPIRE's schedule: the next CA is prepared (and published in the bundle, so relying parties
//! learn it before it signs anything) at half the active CA's life and activated when a sixth of
//! it remains; old roots stay in the bundle until they expire.
//!
//! Every change to the authorities (X.509 CAs and JWT keys) is stored in one transaction with
//! the own bundle that publishes it ([`DataStore::write_authorities`]), so a crash cannot leave
//! an authority that can sign without its root or key in the stored bundle. Start-up checks it
//! anyway: the roots of every stored CA that can sign and every live JWT key are put back into
//! the bundle if missing (a store written by an older server may lack them).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use sigil_core::keys::{self, CsrKey, KeyError};
use sigil_core::x509::{BuildError, CaSigner, LeafParams, unix_secs};
use sigil_core::{Bundle, SpiffeId, TrustDomain};

use crate::config::Config;
use crate::datastore::{
    Authority, AuthorityKind, AuthorityState, AuthorityWrite, DataStore, StoreError,
};
use crate::jwt::{JwtKeys, KeyInfo};

mod build;

use self::build::{new_authority, roots_of};
use crate::status::ApiError;

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
    /// Serializes authority changes: each reads the bundle, stores the change together with the
    /// next bundle, then installs it. Taken before the JWT keys' own lock.
    commit: Mutex<()>,
    jwt: JwtKeys,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.td)
            .finish()
    }
}

/// True when two bundles publish the same authorities (the sequence aside, and the JWT expiry
/// metadata that the SPIFFE bundle document does not carry).
fn same_content(a: &Bundle, b: &Bundle) -> bool {
    a.x509_authorities == b.x509_authorities
        && crate::jwt::same_keys(&a.jwt_authorities, &b.jwt_authorities)
        && a.refresh_hint == b.refresh_hint
}

fn newest(records: &[Authority], state: AuthorityState, now_s: i64) -> Option<Authority> {
    records
        .iter()
        .filter(|a| a.kind == AuthorityKind::X509Ca && a.state == state)
        .filter(|a| a.not_after > now_s + 60)
        .max_by_key(|a| a.not_after)
        .cloned()
}

impl Ca {
    /// Loads the active CA from the store, or creates one on first start (or when the stored
    /// one has expired), brings the JWT keys up to date, and reconciles the own bundle with
    /// every stored authority that can sign. Whatever had to change is stored in one
    /// transaction before anything is served.
    pub fn load_or_create(
        store: &dyn DataStore,
        cfg: &Config,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        let td = cfg.trust_domain.clone();
        let now_s = unix_secs(now);
        let records = store.list_authorities()?;
        let stored = match store.get_bundle(&td)? {
            Some(doc) => Some(
                Bundle::from_spiffe_json(td.clone(), &doc)
                    .map_err(|e| CaError::Bundle(e.to_string()))?,
            ),
            None => None,
        };
        let mut bundle = stored.clone().unwrap_or_else(|| Bundle::new(td.clone()));
        let mut write = AuthorityWrite::default();
        let active = match newest(&records, AuthorityState::Active, now_s) {
            Some(a) => a,
            None => {
                let authority = new_authority(cfg, now, AuthorityState::Active)?;
                write.put.push(authority.clone());
                tracing::info!(trust_domain = %td, "created a new X.509 CA");
                authority
            }
        };
        let signer = signer_of(&active)?;
        let prepared = newest(&records, AuthorityState::Prepared, now_s);
        for a in std::iter::once(&active).chain(prepared.as_ref()) {
            let roots = roots_of(a, cfg)?;
            if add_roots(&mut bundle, &roots) {
                tracing::warn!(
                    authority_id = %a.id,
                    "the own bundle lacked the root of a stored X.509 CA; published it"
                );
            }
        }
        // JWT keys: brought up to date with the schedule and published (before any of them
        // signs: nothing is served before this bundle is stored).
        let jwt_records = records
            .into_iter()
            .filter(|a| a.kind == AuthorityKind::JwtKey)
            .collect();
        let (jwt, jwt_write) = JwtKeys::load(jwt_records, cfg.jwt_key_type, cfg.ca_ttl, now)?;
        write.put.extend(jwt_write.put);
        write.delete.extend(jwt_write.delete);
        bundle.jwt_authorities = jwt.published();
        prune_expired(&mut bundle, now);
        if let Some(old) = &stored {
            bundle.sequence = old.sequence;
        }
        if stored
            .as_ref()
            .is_none_or(|old| !same_content(old, &bundle))
        {
            bundle.sequence += 1;
            write.bundle = Some((td.clone(), bundle_doc(&bundle)?));
        }
        store.write_authorities(write)?;
        Ok(Self {
            td,
            cfg: cfg.clone(),
            x509: RwLock::new(X509Slots { active, prepared }),
            signer: RwLock::new(Arc::new(signer)),
            bundle: RwLock::new(Arc::new(bundle)),
            commit: Mutex::new(()),
            jwt,
        })
    }

    /// The JWT-SVID signing keys.
    pub fn jwt(&self) -> &JwtKeys {
        &self.jwt
    }

    fn lock_commit(&self) -> std::sync::MutexGuard<'_, ()> {
        self.commit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `write` together with the bundle that `f` makes of the current one, in one
    /// transaction, then installs that bundle. When `f` changed the bundle its sequence number
    /// goes up by one (agents' sync streams compare it). The caller holds `self.commit`; it
    /// announces the new store revision afterwards (see [`crate::x509_rotation::publish`]).
    fn persist(
        &self,
        store: &dyn DataStore,
        mut write: AuthorityWrite,
        f: impl FnOnce(&mut Bundle),
    ) -> Result<bool, CaError> {
        let cur = self.bundle();
        let mut next = Bundle::clone(&cur);
        f(&mut next);
        next.sequence = cur.sequence;
        let changed = next != *cur;
        if changed {
            next.sequence += 1;
            write.bundle = Some((self.td.clone(), bundle_doc(&next)?));
        }
        store.write_authorities(write)?;
        if changed {
            *self.bundle.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        }
        Ok(changed)
    }

    /// Stores a JWT key change with the bundle publishing the resulting keys.
    fn persist_jwt(
        &self,
        store: &dyn DataStore,
        write: AuthorityWrite,
        keys: Vec<sigil_core::JwtAuthority>,
    ) -> Result<(), CaError> {
        self.persist(store, write, |b| b.jwt_authorities = keys)
            .map(|_| ())
    }

    /// One step of the JWT key schedule; true when the published keys changed.
    pub fn jwt_rotate(&self, store: &dyn DataStore, now: SystemTime) -> Result<bool, CaError> {
        let _c = self.lock_commit();
        self.jwt
            .rotate(now, |w, keys| self.persist_jwt(store, w, keys))
    }

    /// Generates and publishes the next JWT key by hand.
    pub fn jwt_prepare(&self, store: &dyn DataStore, now: SystemTime) -> Result<KeyInfo, CaError> {
        let _c = self.lock_commit();
        self.jwt
            .prepare(now, |w, keys| self.persist_jwt(store, w, keys))
    }

    /// Makes the prepared JWT key the signing key by hand.
    pub fn jwt_activate(
        &self,
        store: &dyn DataStore,
        key_id: Option<&str>,
    ) -> Result<KeyInfo, ApiError> {
        let _c = self.lock_commit();
        self.jwt
            .activate(key_id, |w, keys| self.persist_jwt(store, w, keys))
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
        let mut changed = self.prune(store, now)?;
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
    fn prune(&self, store: &dyn DataStore, now: SystemTime) -> Result<bool, CaError> {
        let _c = self.lock_commit();
        self.persist(store, AuthorityWrite::default(), |b| prune_expired(b, now))
    }

    /// Creates the next CA and publishes its root in the same store transaction; it does not
    /// sign until activated. A prepared CA that was never activated is replaced (it never
    /// signed anything).
    pub fn x509_prepare(
        &self,
        store: &dyn DataStore,
        now: SystemTime,
    ) -> Result<Authority, CaError> {
        let _c = self.lock_commit();
        let authority = new_authority(&self.cfg, now, AuthorityState::Prepared)?;
        signer_of(&authority)?;
        let write = AuthorityWrite {
            put: vec![authority.clone()],
            delete: self
                .x509_slots()
                .prepared
                .map(|a| a.id)
                .into_iter()
                .collect(),
            bundle: None,
        };
        self.persist(store, write, |b| {
            add_roots(b, &authority.roots_der);
        })?;
        self.x509
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .prepared = Some(authority.clone());
        tracing::info!(authority_id = %authority.id, "prepared the next X.509 CA");
        Ok(authority)
    }

    /// Makes the prepared CA the signing one; the previous one becomes Old and its root stays
    /// published until it expires. `expect_id` guards against activating someone else's CA.
    /// Both state changes are one store write, with the bundle re-checked to hold the new CA's
    /// roots.
    pub fn x509_activate(
        &self,
        store: &dyn DataStore,
        expect_id: Option<&str>,
    ) -> Result<Authority, CaError> {
        let _c = self.lock_commit();
        let slots = self.x509_slots();
        let mut next = slots.prepared.ok_or(CaError::NothingPrepared)?;
        if let Some(want) = expect_id.filter(|w| !w.is_empty())
            && want != next.id
        {
            return Err(CaError::NothingPrepared);
        }
        let signer = signer_of(&next)?;
        let roots = roots_of(&next, &self.cfg)?;
        next.state = AuthorityState::Active;
        let mut old = slots.active;
        old.state = AuthorityState::Old;
        let write = AuthorityWrite {
            put: vec![next.clone(), old],
            ..Default::default()
        };
        self.persist(store, write, |b| {
            add_roots(b, &roots);
        })?;
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

/// Adds the `roots` missing from `bundle`; true when any was.
fn add_roots(bundle: &mut Bundle, roots: &[Vec<u8>]) -> bool {
    let mut changed = false;
    for r in roots {
        if !bundle.x509_authorities.contains(r) {
            bundle.x509_authorities.push(r.clone());
            changed = true;
        }
    }
    changed
}

fn bundle_doc(bundle: &Bundle) -> Result<Vec<u8>, CaError> {
    bundle
        .to_spiffe_json()
        .map(String::into_bytes)
        .map_err(|e| CaError::Bundle(e.to_string()))
}

fn prune_expired(bundle: &mut Bundle, now: SystemTime) {
    let now_s = unix_secs(now);
    bundle.x509_authorities.retain(|der| {
        x509_parser::parse_x509_certificate(der)
            .map(|(_, c)| c.validity().not_after.timestamp() > now_s)
            .unwrap_or(false)
    });
}
