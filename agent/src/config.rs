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
    workload_api_threads: Option<usize>,
    max_concurrent_streams: Option<u32>,
    workload_api_rate_limit: Option<u32>,
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
    /// Threads serving the Workload API and SDS socket, apart from the agent's other work.
    /// Default [`DEFAULT_WORKLOAD_API_THREADS`].
    pub workload_api_threads: usize,
    /// HTTP/2 streams one connection to the Workload API socket may have open at once.
    /// Default [`DEFAULT_MAX_CONCURRENT_STREAMS`].
    pub max_concurrent_streams: u32,
    /// Workload API and SDS calls per second allowed per calling user (uid), excess answered
    /// Unavailable; 0 (the default) is no limit.
    pub workload_api_rate_limit: u32,
    /// Envoy SDS settings (`[sds]`).
    pub sds: SdsConfig,
}

/// One thread serves the Workload API by default: a cached fetch is a few microseconds of work
/// between two socket wake-ups, and handing requests between threads cost more CPU per fetch
/// than the second thread gave back (README, "Why one Workload API thread").
pub const DEFAULT_WORKLOAD_API_THREADS: usize = 1;

/// Enough for an Envoy with hundreds of SDS subscriptions on one connection; a workload needs
/// a handful.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;

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
            workload_api_threads: match f.workload_api_threads {
                None => DEFAULT_WORKLOAD_API_THREADS,
                Some(n @ 1..=256) => n,
                Some(n) => {
                    return Err(ConfigError::Invalid {
                        key: "workload_api_threads",
                        reason: format!("{n} is not between 1 and 256"),
                    });
                }
            },
            max_concurrent_streams: match f.max_concurrent_streams {
                None => DEFAULT_MAX_CONCURRENT_STREAMS,
                Some(0) => {
                    return Err(ConfigError::Invalid {
                        key: "max_concurrent_streams",
                        reason: "must be at least 1".into(),
                    });
                }
                Some(n) => n,
            },
            workload_api_rate_limit: f.workload_api_rate_limit.unwrap_or(0),
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
    fn socket_limits_defaults_and_bounds() {
        let td = "trust_domain = \"example.org\"\n";
        let c = Config::from_toml(td, Overrides::default()).unwrap();
        assert_eq!(c.workload_api_threads, DEFAULT_WORKLOAD_API_THREADS);
        assert_eq!(c.max_concurrent_streams, DEFAULT_MAX_CONCURRENT_STREAMS);
        assert_eq!(c.workload_api_rate_limit, 0);
        let t = format!(
            "{td}workload_api_threads = 4\nmax_concurrent_streams = 8\nworkload_api_rate_limit = 50"
        );
        let c = Config::from_toml(&t, Overrides::default()).unwrap();
        assert_eq!(
            (
                c.workload_api_threads,
                c.max_concurrent_streams,
                c.workload_api_rate_limit
            ),
            (4, 8, 50)
        );
        for (bad, key) in [
            ("workload_api_threads = 0", "workload_api_threads"),
            ("workload_api_threads = 1000", "workload_api_threads"),
            ("max_concurrent_streams = 0", "max_concurrent_streams"),
        ] {
            match Config::from_toml(&format!("{td}{bad}"), Overrides::default()) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(
            Config::from_toml(
                &format!("{td}workload_api_rate_limit = -1"),
                Overrides::default()
            ),
            Err(ConfigError::Parse(_))
        ));
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
