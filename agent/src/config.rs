//! Agent configuration: a TOML file whose every key has a default, overridable by flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sigil_core::TrustDomain;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax error or unknown key (the message names it).
    #[error("parsing config: {0}")]
    Parse(String),
    /// A value is unusable; the message names the key.
    #[error("invalid config value for {key}: {reason}")]
    Invalid {
        /// Offending key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    trust_domain: Option<String>,
    server_address: Option<String>,
    trust_bundle_path: Option<PathBuf>,
    insecure_bootstrap: Option<bool>,
    join_token: Option<String>,
    data_dir: Option<PathBuf>,
    socket_path: Option<PathBuf>,
    admin_socket_path: Option<PathBuf>,
    log_level: Option<String>,
    log_format: Option<String>,
    discover_workload_path: Option<bool>,
    workload_binary_sha256: Option<bool>,
    sds: Option<FileSds>,
}

/// The `[sds]` table, named as in SPIRE's agent `sds` block so SPIRE users can carry settings over.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSds {
    default_svid_name: Option<String>,
    default_bundle_name: Option<String>,
    default_all_bundles_name: Option<String>,
    disable_spiffe_cert_validation: Option<bool>,
}

/// Envoy SDS resource names and validation style (the `[sds]` table). Envoy configs written for
/// SPIRE name these resources, so the defaults are SPIRE's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdsConfig {
    /// Resource name of the caller's default X.509-SVID (`tls_certificate`). Default `default`.
    pub default_svid_name: String,
    /// Resource name of the own trust domain bundle (`validation_context`). Default `ROOTCA`.
    pub default_bundle_name: String,
    /// Resource name of own plus federated bundles as a SPIFFE validator. Default `ALL`.
    pub default_all_bundles_name: String,
    /// Never answer with Envoy's SPIFFE certificate validator for `ROOTCA` and trust domain
    /// names, even to Envoy 1.18+ (plain `trusted_ca` instead). Default false.
    pub disable_spiffe_cert_validation: bool,
}

impl Default for SdsConfig {
    fn default() -> Self {
        Self {
            default_svid_name: "default".into(),
            default_bundle_name: "ROOTCA".into(),
            default_all_bundles_name: "ALL".into(),
            disable_spiffe_cert_validation: false,
        }
    }
}

impl SdsConfig {
    fn from_file(f: Option<FileSds>) -> Result<Self, ConfigError> {
        let f = f.unwrap_or_default();
        let d = Self::default();
        let c = Self {
            default_svid_name: f.default_svid_name.unwrap_or(d.default_svid_name),
            default_bundle_name: f.default_bundle_name.unwrap_or(d.default_bundle_name),
            default_all_bundles_name: f
                .default_all_bundles_name
                .unwrap_or(d.default_all_bundles_name),
            disable_spiffe_cert_validation: f
                .disable_spiffe_cert_validation
                .unwrap_or(d.disable_spiffe_cert_validation),
        };
        // A name that is empty, a SPIFFE ID or shared by two resources would make requests
        // ambiguous.
        let names = [
            ("sds.default_svid_name", &c.default_svid_name),
            ("sds.default_bundle_name", &c.default_bundle_name),
            ("sds.default_all_bundles_name", &c.default_all_bundles_name),
        ];
        for (i, (key, name)) in names.iter().enumerate() {
            let reason = if name.is_empty() {
                "must not be empty"
            } else if name.starts_with("spiffe://") {
                "must not be a SPIFFE ID (those name specific SVIDs and bundles)"
            } else if names[..i].iter().any(|(_, other)| other == name) {
                "must differ from the other SDS resource names"
            } else {
                continue;
            };
            return Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            });
        }
        Ok(c)
    }
}

/// Default Workload API socket, as SPIRE's.
pub const DEFAULT_SOCKET: &str = "/tmp/sigil-agent/public/api.sock";
/// Default agent admin (health) socket.
pub const DEFAULT_ADMIN_SOCKET: &str = "/tmp/sigil-agent/private/admin.sock";

/// Validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Trust domain of the server (required).
    pub trust_domain: TrustDomain,
    /// `host:port` of the server. Default `127.0.0.1:8081`.
    pub server_address: String,
    /// PEM bundle used to authenticate the server before the first sync.
    pub trust_bundle_path: Option<PathBuf>,
    /// Skip server authentication at bootstrap (development only).
    pub insecure_bootstrap: bool,
    /// Join token for the first attestation.
    pub join_token: Option<String>,
    /// Where the agent SVID, key and bundle are kept. Default `./.data/agent`.
    pub data_dir: PathBuf,
    /// Workload API socket. Default [`DEFAULT_SOCKET`].
    pub socket_path: PathBuf,
    /// Admin (health) socket. Default [`DEFAULT_ADMIN_SOCKET`].
    pub admin_socket_path: PathBuf,
    /// tracing filter. Default `info`.
    pub log_level: String,
    /// `text` (default) or `json`.
    pub log_json: bool,
    /// Emit `unix:path` selectors. Default true.
    pub discover_workload_path: bool,
    /// Emit `unix:sha256` selectors. Default true.
    pub workload_binary_sha256: bool,
    /// Envoy SDS settings (`[sds]`).
    pub sds: SdsConfig,
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--trust-domain`.
    pub trust_domain: Option<String>,
    /// `--server-address`.
    pub server_address: Option<String>,
    /// `--trust-bundle-path`.
    pub trust_bundle_path: Option<PathBuf>,
    /// `--insecure-bootstrap`.
    pub insecure_bootstrap: bool,
    /// `--join-token`.
    pub join_token: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--socket-path`.
    pub socket_path: Option<PathBuf>,
    /// `--admin-socket-path`.
    pub admin_socket_path: Option<PathBuf>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
}

impl Config {
    /// Loads `path` (if given) and applies `overrides`.
    pub fn load(path: Option<&Path>, o: Overrides) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml(&text, o)
    }

    /// Parses TOML text and applies `overrides`.
    pub fn from_toml(text: &str, o: Overrides) -> Result<Self, ConfigError> {
        let f: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let td = o
            .trust_domain
            .or(f.trust_domain)
            .ok_or(ConfigError::Invalid {
                key: "trust_domain",
                reason: "is required".into(),
            })?;
        let trust_domain = TrustDomain::new(&td).map_err(|e| ConfigError::Invalid {
            key: "trust_domain",
            reason: e.to_string(),
        })?;
        let log_json = match o.log_format.or(f.log_format).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "log_format",
                    reason: format!("{other:?} is not text or json"),
                });
            }
        };
        let server_address = o
            .server_address
            .or(f.server_address)
            .unwrap_or_else(|| "127.0.0.1:8081".into());
        if !server_address.contains(':') {
            return Err(ConfigError::Invalid {
                key: "server_address",
                reason: format!("{server_address:?} is not host:port"),
            });
        }
        let cfg = Self {
            trust_domain,
            server_address,
            trust_bundle_path: o.trust_bundle_path.or(f.trust_bundle_path),
            insecure_bootstrap: o.insecure_bootstrap || f.insecure_bootstrap.unwrap_or(false),
            join_token: o.join_token.or(f.join_token),
            data_dir: o
                .data_dir
                .or(f.data_dir)
                .unwrap_or_else(|| PathBuf::from(".data/agent")),
            socket_path: o
                .socket_path
                .or(f.socket_path)
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            admin_socket_path: o
                .admin_socket_path
                .or(f.admin_socket_path)
                .unwrap_or_else(|| DEFAULT_ADMIN_SOCKET.into()),
            log_level: o.log_level.or(f.log_level).unwrap_or_else(|| "info".into()),
            log_json,
            discover_workload_path: f.discover_workload_path.unwrap_or(true),
            workload_binary_sha256: f.workload_binary_sha256.unwrap_or(true),
            sds: SdsConfig::from_file(f.sds)?,
        };
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_toml("trust_domain = \"example.org\"", Overrides::default()).unwrap();
        assert_eq!(c.socket_path, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.server_address, "127.0.0.1:8081");
        assert!(!c.insecure_bootstrap);
        let o = Overrides {
            socket_path: Some("/x.sock".into()),
            ..Default::default()
        };
        let c = Config::from_toml("trust_domain = \"example.org\"", o).unwrap();
        assert_eq!(c.socket_path, PathBuf::from("/x.sock"));
    }

    #[test]
    fn example_config_parses() {
        let c = Config::from_toml(
            include_str!("../../deploy/agent.toml"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.trust_domain.as_str(), "example.org");
        assert_eq!(c.socket_path, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn sds_defaults_and_table() {
        let c = Config::from_toml("trust_domain = \"example.org\"", Overrides::default()).unwrap();
        assert_eq!(c.sds, SdsConfig::default());
        assert_eq!(c.sds.default_svid_name, "default");
        assert_eq!(c.sds.default_bundle_name, "ROOTCA");
        assert_eq!(c.sds.default_all_bundles_name, "ALL");
        assert!(!c.sds.disable_spiffe_cert_validation);
        let t = "trust_domain = \"example.org\"\n[sds]\ndefault_svid_name = \"svid\"\n\
                 default_bundle_name = \"ca\"\ndefault_all_bundles_name = \"every\"\n\
                 disable_spiffe_cert_validation = true";
        let c = Config::from_toml(t, Overrides::default()).unwrap();
        assert_eq!(
            c.sds,
            SdsConfig {
                default_svid_name: "svid".into(),
                default_bundle_name: "ca".into(),
                default_all_bundles_name: "every".into(),
                disable_spiffe_cert_validation: true,
            }
        );
    }

    #[test]
    fn sds_names_must_be_distinct_plain_names() {
        for (t, key) in [
            ("[sds]\ndefault_svid_name = \"\"", "sds.default_svid_name"),
            (
                "[sds]\ndefault_bundle_name = \"ALL\"",
                "sds.default_all_bundles_name",
            ),
            (
                "[sds]\ndefault_bundle_name = \"spiffe://example.org\"",
                "sds.default_bundle_name",
            ),
            ("[sds]\nnope = 1", "nope"),
        ] {
            let text = format!("trust_domain = \"example.org\"\n{t}");
            let e = Config::from_toml(&text, Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{t}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        for (t, key) in [
            ("trust_domain = \"a\"\nnope = 1", "nope"),
            ("", "trust_domain"),
            ("trust_domain = \"a\"\nlog_format = \"xml\"", "log_format"),
            (
                "trust_domain = \"a\"\nserver_address = \"host\"",
                "server_address",
            ),
        ] {
            let e = Config::from_toml(t, Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{t}: {e}");
        }
    }
}
