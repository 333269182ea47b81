//! What a set of SDS resource names means for one workload: which of its SVIDs and bundles they
//! name, rendered as Envoy `Secret`s. Pure functions of a [`WorkloadView`], so every rule (names,
//! entitlement, validator style) is tested here without sockets.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Node, TypedExtensionConfig, data_source,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use envoy_types::pb::google::protobuf::{Any, value};
use prost::{Message, Name};
use sigil_core::SpiffeId;

use crate::cache::{BundleView, Svid, WorkloadView};
use crate::config::SdsConfig;

/// Name of Envoy's SPIFFE certificate validator extension.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

/// Node metadata key with which one Envoy overrides `disable_spiffe_cert_validation` (as in
/// SPIRE), e.g. an old Envoy build that reports a recent version.
pub const DISABLE_VALIDATOR_METADATA: &str = "disable_spiffe_cert_validation";

/// The resource names a client asked for. Empty means every resource the workload holds (xDS
/// wildcard); a set, because xDS subscriptions are unordered and duplicates mean nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription(BTreeSet<String>);

impl Subscription {
    /// The subscription of a request's `resource_names` (empty strings ignored, as SPIRE does).
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        Self(
            names
                .iter()
                .map(AsRef::as_ref)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// True when every resource is wanted.
    pub fn is_wildcard(&self) -> bool {
        self.0.is_empty()
    }

    /// The names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Whether some requested resource is an SVID, so an answer before the workload's first SVID
    /// is issued would be missing it.
    fn wants_svid(&self, cfg: &SdsConfig) -> bool {
        self.is_wildcard()
            || self.names().any(|n| {
                n == cfg.default_svid_name
                    || SpiffeId::parse(n).is_ok_and(|id| !id.is_trust_domain_id())
            })
    }
}

/// How bundles are expressed for one Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// `trusted_ca`: understood by every Envoy, but it cannot tie a CA to its trust domain, so
    /// `ALL` (several trust domains) cannot be served this way.
    TrustedCa,
    /// Envoy's SPIFFE certificate validator (Envoy 1.18+), which checks that a peer's trust
    /// domain is the one whose CA signed it.
    SpiffeValidator,
}

impl Validation {
    /// SPIRE's rule: the SPIFFE validator for Envoy 1.18 or later (from the node's build version)
    /// unless disabled by the agent config or by the node's `disable_spiffe_cert_validation`
    /// metadata, which wins when it is a boolean (or `"true"`/`"false"`).
    pub fn for_node(node: Option<&Node>, cfg: &SdsConfig) -> Self {
        let Some(node) = node else {
            return Self::TrustedCa;
        };
        let disabled = node
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(DISABLE_VALIDATOR_METADATA))
            .and_then(|v| match v.kind.as_ref()? {
                value::Kind::BoolValue(b) => Some(*b),
                value::Kind::StringValue(s) => s.parse::<bool>().ok(),
                _ => None,
            })
            .unwrap_or(cfg.disable_spiffe_cert_validation);
        let recent = match &node.user_agent_version_type {
            Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
                .version
                .as_ref()
                .is_some_and(|v| (v.major_number, v.minor_number) >= (1, 18)),
            _ => false,
        };
        if recent && !disabled {
            Self::SpiffeValidator
        } else {
            Self::TrustedCa
        }
    }
}

/// False while the workload's first SVID is still being issued and the subscription asks for an
/// SVID: answering then would leave Envoy without its certificate until the next change.
pub fn ready(view: &WorkloadView, sub: &Subscription, cfg: &SdsConfig) -> bool {
    !view.svids.is_empty() || view.pending == 0 || !sub.wants_svid(cfg)
}

/// The Secrets `sub` names for the workload `view`, each at most once. Names the workload holds
/// nothing for are left out; so is `ALL` for an Envoy that cannot take the SPIFFE validator.
pub fn render(
    view: &WorkloadView,
    sub: &Subscription,
    cfg: &SdsConfig,
    validation: Validation,
) -> Vec<Secret> {
    if sub.is_wildcard() {
        return render_all(view, validation);
    }
    sub.names()
        .filter_map(|name| render_one(view, name, cfg, validation))
        .collect()
}

fn render_one(
    view: &WorkloadView,
    name: &str,
    cfg: &SdsConfig,
    validation: Validation,
) -> Option<Secret> {
    if name == cfg.default_svid_name {
        return view.svids.first().map(|s| tls_certificate(name, s));
    }
    if name == cfg.default_bundle_name {
        return view.bundle.as_ref().map(|b| bundle(name, b, validation));
    }
    if name == cfg.default_all_bundles_name {
        return match validation {
            Validation::SpiffeValidator => Some(spiffe_validator(name, bundles(view))),
            Validation::TrustedCa => {
                tracing::debug!(
                    name,
                    "not serving all bundles to an Envoy without the SPIFFE validator"
                );
                None
            }
        };
    }
    let id = SpiffeId::parse(name).ok()?;
    if id.is_trust_domain_id() {
        bundles(view)
            .find(|b| &b.bundle.trust_domain == id.trust_domain())
            .map(|b| bundle(name, b, validation))
    } else {
        view.svids
            .iter()
            .find(|s| s.spiffe_id == id)
            .map(|s| tls_certificate(name, s))
    }
}

/// Every bundle by trust domain ID, then every SVID by SPIFFE ID (the first SVID of an ID only:
/// names are unique in a response).
fn render_all(view: &WorkloadView, validation: Validation) -> Vec<Secret> {
    let mut out: Vec<Secret> = bundles(view)
        .map(|b| bundle(&b.bundle.trust_domain.id_string(), b, validation))
        .collect();
    let mut seen = BTreeSet::new();
    for s in &view.svids {
        let name = s.spiffe_id.to_string();
        if seen.insert(name.clone()) {
            out.push(tls_certificate(&name, s));
        }
    }
    out
}

/// Own bundle first, then the federated bundles the workload is entitled to.
fn bundles(view: &WorkloadView) -> impl Iterator<Item = &BundleView> {
    view.bundle
        .iter()
        .chain(view.federated.iter())
        .map(AsRef::as_ref)
}

fn pem_blocks<'a>(tag: &str, ders: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    // LF line endings: what Envoy's own examples and SPIRE's PEM look like.
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    ders.into_iter()
        .map(|der| pem::encode_config(&pem::Pem::new(tag, der.to_vec()), config))
        .collect::<String>()
        .into_bytes()
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        ..Default::default()
    })
}

fn bundle_pem(b: &BundleView) -> Vec<u8> {
    pem_blocks(
        "CERTIFICATE",
        b.bundle.x509_authorities.iter().map(Vec::as_slice),
    )
}

fn tls_certificate(name: &str, svid: &Svid) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(pem_blocks(
                "CERTIFICATE",
                svid.certs.iter().map(AsRef::as_ref),
            )),
            private_key: inline(pem_blocks("PRIVATE KEY", [svid.key_pkcs8.as_ref()])),
            ..Default::default()
        })),
    }
}

fn bundle(name: &str, b: &BundleView, validation: Validation) -> Secret {
    match validation {
        Validation::SpiffeValidator => spiffe_validator(name, std::iter::once(b)),
        Validation::TrustedCa => Secret {
            name: name.to_owned(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(bundle_pem(b)),
                    ..Default::default()
                },
            )),
        },
    }
}

fn spiffe_validator<'a>(name: &str, bundles: impl Iterator<Item = &'a BundleView>) -> Secret {
    let trust_domains = bundles
        .map(|b| spiffe_cert_validator_config::TrustDomain {
            // The validator wants the bare name (`example.org`), not the ID.
            name: b.bundle.trust_domain.as_str().to_owned(),
            trust_bundle: inline(bundle_pem(b)),
            ..Default::default()
        })
        .collect();
    let config = SpiffeCertValidatorConfig {
        trust_domains,
        ..Default::default()
    };
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                custom_validator_config: Some(TypedExtensionConfig {
                    name: SPIFFE_VALIDATOR.to_owned(),
                    typed_config: Some(pack(&config)),
                }),
                ..Default::default()
            },
        )),
    }
}

/// Packs a message into `google.protobuf.Any`.
pub fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use bytes::Bytes;
    use envoy_types::pb::envoy::config::core::v3::BuildVersion;
    use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
    use envoy_types::pb::google::protobuf::{Struct, Value};
    use sigil_core::{Bundle, TrustDomain};

    use super::*;

    fn bundle_of(td: &str, der: &[u8]) -> Arc<BundleView> {
        let mut b = Bundle::new(TrustDomain::new(td).unwrap());
        b.x509_authorities.push(der.to_vec());
        Arc::new(BundleView::new(b))
    }

    fn svid(id: &str, leaf: &[u8]) -> Arc<Svid> {
        Arc::new(Svid {
            entry_id: id.into(),
            entry_revision: 1,
            spiffe_id: SpiffeId::parse(id).unwrap(),
            chain_der: Bytes::copy_from_slice(leaf),
            certs: vec![Bytes::copy_from_slice(leaf), Bytes::from_static(b"int")],
            key_pkcs8: Bytes::from_static(b"key"),
            not_after: SystemTime::now(),
            renew_at: SystemTime::now(),
            hint: String::new(),
        })
    }

    fn view() -> WorkloadView {
        WorkloadView {
            svids: vec![
                svid("spiffe://example.org/a", b"leaf-a"),
                svid("spiffe://example.org/b", b"leaf-b"),
                svid("spiffe://example.org/a", b"leaf-a2"),
            ],
            pending: 0,
            federated: vec![bundle_of("other.org", b"ca-other")],
            bundle: Some(bundle_of("example.org", b"ca-own")),
        }
    }

    fn node(major: u32, minor: u32) -> Node {
        Node {
            id: "n".into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentBuildVersion(
                BuildVersion {
                    version: Some(SemanticVersion {
                        major_number: major,
                        minor_number: minor,
                        patch: 0,
                    }),
                    metadata: None,
                },
            )),
            ..Default::default()
        }
    }

    fn names(secrets: &[Secret]) -> Vec<&str> {
        secrets.iter().map(|s| s.name.as_str()).collect()
    }

    fn pem_der(bytes: &[u8]) -> Vec<Vec<u8>> {
        pem::parse_many(bytes)
            .unwrap()
            .into_iter()
            .map(pem::Pem::into_contents)
            .collect()
    }

    fn inline_bytes(d: &Option<DataSource>) -> &[u8] {
        match d.as_ref().and_then(|d| d.specifier.as_ref()) {
            Some(data_source::Specifier::InlineBytes(b)) => b,
            other => panic!("not inline bytes: {other:?}"),
        }
    }

    fn validator_domains(s: &Secret) -> Vec<(String, Vec<Vec<u8>>)> {
        let Some(secret::Type::ValidationContext(vc)) = &s.r#type else {
            panic!("not a validation context: {s:?}");
        };
        let tc = vc.custom_validator_config.as_ref().unwrap();
        assert_eq!(tc.name, SPIFFE_VALIDATOR);
        let any = tc.typed_config.as_ref().unwrap();
        assert_eq!(any.type_url, SpiffeCertValidatorConfig::type_url());
        let cfg = SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap();
        cfg.trust_domains
            .iter()
            .map(|t| (t.name.clone(), pem_der(inline_bytes(&t.trust_bundle))))
            .collect()
    }

    #[test]
    fn default_is_first_svid_as_pem() {
        let cfg = SdsConfig::default();
        let out = render(
            &view(),
            &Subscription::new(&["default"]),
            &cfg,
            Validation::TrustedCa,
        );
        assert_eq!(names(&out), ["default"]);
        let Some(secret::Type::TlsCertificate(tc)) = &out[0].r#type else {
            panic!("not a tls_certificate");
        };
        let chain = inline_bytes(&tc.certificate_chain);
        assert!(chain.starts_with(b"-----BEGIN CERTIFICATE-----\n"));
        assert!(!chain.contains(&b'\r'));
        assert_eq!(pem_der(chain), [b"leaf-a".to_vec(), b"int".to_vec()]);
        let key = pem::parse(inline_bytes(&tc.private_key)).unwrap();
        assert_eq!(key.tag(), "PRIVATE KEY");
        assert_eq!(key.contents(), b"key");
    }

    #[test]
    fn named_resources_and_absent_ones() {
        let cfg = SdsConfig::default();
        let sub = Subscription::new(&[
            "spiffe://example.org/b",
            "spiffe://other.org",
            "ROOTCA",
            "spiffe://example.org/not-mine",
            "spiffe://unfederated.org",
            "nonsense",
            "",
        ]);
        let out = render(&view(), &sub, &cfg, Validation::TrustedCa);
        assert_eq!(
            names(&out),
            ["ROOTCA", "spiffe://example.org/b", "spiffe://other.org"]
        );
        let Some(secret::Type::ValidationContext(vc)) = &out[0].r#type else {
            panic!("not a validation context");
        };
        assert_eq!(pem_der(inline_bytes(&vc.trusted_ca)), [b"ca-own".to_vec()]);
    }

    #[test]
    fn wildcard_names_everything_by_id() {
        let out = render(
            &view(),
            &Subscription::default(),
            &SdsConfig::default(),
            Validation::TrustedCa,
        );
        assert_eq!(
            names(&out),
            [
                "spiffe://example.org",
                "spiffe://other.org",
                "spiffe://example.org/a",
                "spiffe://example.org/b"
            ]
        );
    }

    #[test]
    fn all_needs_the_spiffe_validator() {
        let cfg = SdsConfig::default();
        let sub = Subscription::new(&["ALL"]);
        assert!(render(&view(), &sub, &cfg, Validation::TrustedCa).is_empty());
        let out = render(&view(), &sub, &cfg, Validation::SpiffeValidator);
        assert_eq!(
            validator_domains(&out[0]),
            [
                ("example.org".to_owned(), vec![b"ca-own".to_vec()]),
                ("other.org".to_owned(), vec![b"ca-other".to_vec()])
            ]
        );
        let out = render(
            &view(),
            &Subscription::new(&["ROOTCA"]),
            &cfg,
            Validation::SpiffeValidator,
        );
        assert_eq!(
            validator_domains(&out[0]),
            [("example.org".to_owned(), vec![b"ca-own".to_vec()])]
        );
    }

    #[test]
    fn configured_names() {
        let cfg = SdsConfig {
            default_svid_name: "svid".into(),
            default_bundle_name: "ca".into(),
            default_all_bundles_name: "every".into(),
            disable_spiffe_cert_validation: false,
        };
        let sub = Subscription::new(&["svid", "ca", "every", "default", "ROOTCA"]);
        let out = render(&view(), &sub, &cfg, Validation::SpiffeValidator);
        assert_eq!(names(&out), ["ca", "every", "svid"]);
    }

    #[test]
    fn validator_choice() {
        let cfg = SdsConfig::default();
        assert_eq!(Validation::for_node(None, &cfg), Validation::TrustedCa);
        for (major, minor, want) in [
            (1, 17, Validation::TrustedCa),
            (1, 18, Validation::SpiffeValidator),
            (1, 30, Validation::SpiffeValidator),
            (2, 0, Validation::SpiffeValidator),
            (0, 99, Validation::TrustedCa),
        ] {
            assert_eq!(
                Validation::for_node(Some(&node(major, minor)), &cfg),
                want,
                "{major}.{minor}"
            );
        }
        let no_version = Node {
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion("1.30".into())),
            ..Default::default()
        };
        assert_eq!(
            Validation::for_node(Some(&no_version), &cfg),
            Validation::TrustedCa
        );
        let disabled = SdsConfig {
            disable_spiffe_cert_validation: true,
            ..SdsConfig::default()
        };
        assert_eq!(
            Validation::for_node(Some(&node(1, 30)), &disabled),
            Validation::TrustedCa
        );
        // Node metadata overrides the agent setting either way.
        let with_meta = |v: value::Kind| {
            let mut n = node(1, 30);
            n.metadata = Some(Struct {
                fields: [(
                    DISABLE_VALIDATOR_METADATA.to_owned(),
                    Value { kind: Some(v) },
                )]
                .into(),
            });
            n
        };
        let n = with_meta(value::Kind::BoolValue(true));
        assert_eq!(Validation::for_node(Some(&n), &cfg), Validation::TrustedCa);
        let n = with_meta(value::Kind::StringValue("false".into()));
        assert_eq!(
            Validation::for_node(Some(&n), &disabled),
            Validation::SpiffeValidator
        );
        let n = with_meta(value::Kind::NumberValue(1.0));
        assert_eq!(
            Validation::for_node(Some(&n), &cfg),
            Validation::SpiffeValidator
        );
    }

    #[test]
    fn readiness_waits_only_for_wanted_svids() {
        let cfg = SdsConfig::default();
        let mut v = view();
        v.svids.clear();
        v.pending = 1;
        assert!(!ready(&v, &Subscription::new(&["default"]), &cfg));
        assert!(!ready(&v, &Subscription::default(), &cfg));
        assert!(!ready(
            &v,
            &Subscription::new(&["spiffe://example.org/a"]),
            &cfg
        ));
        assert!(ready(&v, &Subscription::new(&["ROOTCA"]), &cfg));
        assert!(ready(
            &v,
            &Subscription::new(&["spiffe://example.org"]),
            &cfg
        ));
        v.pending = 0;
        assert!(ready(&v, &Subscription::new(&["default"]), &cfg));
    }
}
