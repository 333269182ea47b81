//! Server configuration: a TOML file whose every key has a default, overridable by flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sigil_core::TrustDomain;
use sigil_core::jwt::JwtKeyType;
use sigil_core::keys::KeyType;

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
    /// A value is out of range; the message names the key.
    #[error("invalid config value for {key}: {reason}")]
    Invalid {
        /// Offending key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The `[upstream_authority.disk]` table: an existing CA that signs our intermediate.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskAuthority {
    /// PEM certificate of the upstream CA.
    pub cert_file: PathBuf,
    /// PEM PKCS#8 private key of the upstream CA.
    pub key_file: PathBuf,
    /// PEM roots to publish as our trust bundle (defaults to `cert_file`).
    #[serde(default)]
    pub bundle_file: Option<PathBuf>,
}

/// The `upstream_authority` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAuthority {
    /// Disk-based upstream CA.
    pub disk: DiskAuthority,
}

/// Raw file contents; every field optional so defaults apply.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    trust_domain: Option<String>,
    bind_address: Option<String>,
    admin_socket_path: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    ca_key_type: Option<String>,
    ca_ttl: Option<String>,
    default_x509_svid_ttl: Option<String>,
    default_jwt_svid_ttl: Option<String>,
    jwt_issuer: Option<String>,
    jwt_key_type: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    upstream_authority: Option<UpstreamAuthority>,
    agent_svid_overlap: Option<String>,
    attestation_rate_limit: Option<u32>,
    max_pending_signatures: Option<u32>,
    prune_interval: Option<String>,
    prune_attested_agents_expired_for: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Trust domain this server is the CA of (required).
    pub trust_domain: TrustDomain,
    /// Agent-facing gRPC listener. Default `0.0.0.0:8081`.
    pub bind_address: SocketAddr,
    /// Admin API socket. Default `/tmp/sigil-server/private/api.sock`.
    pub admin_socket_path: PathBuf,
    /// Where the sled store lives. Default `./.data/server`.
    pub data_dir: PathBuf,
    /// CA key algorithm. Default `ec-p256`.
    pub ca_key_type: KeyType,
    /// Lifetime of a self-signed CA. Default 24h.
    pub ca_ttl: Duration,
    /// X.509-SVID lifetime when an entry sets none. Default 1h.
    pub default_x509_svid_ttl: Duration,
    /// JWT-SVID lifetime when an entry sets none. Default 5m.
    pub default_jwt_svid_ttl: Duration,
    /// `iss` claim of JWT-SVIDs; none by default.
    pub jwt_issuer: Option<String>,
    /// Key type of the JWT-SVID signing keys (`ES256`, `ES384` or `RS256`). Default `ES256`.
    pub jwt_key_type: JwtKeyType,
    /// tracing filter. Default `info`.
    pub log_level: String,
    /// Default text.
    pub log_format: LogFormat,
    /// Optional upstream CA.
    pub upstream_authority: Option<UpstreamAuthority>,
    /// How long an agent's previous SVID stays accepted after a renewal, unless the agent
    /// presents the new one first. Default 5m.
    pub agent_svid_overlap: Duration,
    /// Node attestations accepted per second per source address (IPv6: per /64), in bursts of
    /// the same size; 0 turns the limit off. Default 1, as SPIRE's.
    pub attestation_rate_limit: u32,
    /// Most signatures admitted at once (being signed or waiting); beyond it signing calls are
    /// refused with RESOURCE_EXHAUSTED. At least [`MAX_BATCH`]. Default 4096.
    pub max_pending_signatures: u32,
    /// How often expired join tokens (and, if enabled, long-expired agents) are pruned.
    /// Default 10m.
    pub prune_interval: Duration,
    /// Agents whose SVID expired longer ago than this are deleted by the pruner (banned ones
    /// never are). Off by default, as SPIRE's `prune_attested_nodes_expired_for`.
    pub prune_attested_agents_expired_for: Option<Duration>,
}

/// Most CSRs in one `BatchSignX509Svid` call.
pub const MAX_BATCH: u32 = 500;

/// Command-line values that take precedence over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--trust-domain`.
    pub trust_domain: Option<String>,
    /// `--bind-address`.
    pub bind_address: Option<String>,
    /// `--admin-socket-path`.
    pub admin_socket_path: Option<PathBuf>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
}

/// Default agent-facing address, as SPIRE's.
pub const DEFAULT_BIND: &str = "0.0.0.0:8081";
/// Default admin socket path, mirroring SPIRE's layout.
pub const DEFAULT_ADMIN_SOCKET: &str = "/tmp/sigil-server/private/api.sock";

impl Config {
    /// Loads `path` (if given) and applies `overrides`.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml(&text, overrides)
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
        let bind = o
            .bind_address
            .or(f.bind_address)
            .unwrap_or_else(|| DEFAULT_BIND.into());
        let bind_address = bind.parse().map_err(|e| ConfigError::Invalid {
            key: "bind_address",
            reason: format!("{bind:?}: {e}"),
        })?;
        let ca_key_type = match f.ca_key_type.as_deref() {
            None => KeyType::EcP256,
            Some(s) => KeyType::parse(s).ok_or_else(|| ConfigError::Invalid {
                key: "ca_key_type",
                reason: format!("{s:?} is not one of ec-p256, ec-p384, rsa-2048"),
            })?,
        };
        let jwt_key_type = match f.jwt_key_type.as_deref() {
            None => JwtKeyType::Es256,
            Some(s) => JwtKeyType::parse(s).ok_or_else(|| ConfigError::Invalid {
                key: "jwt_key_type",
                reason: jwt_key_type_refusal(s),
            })?,
        };
        let log_format = match o.log_format.or(f.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "log_format",
                    reason: format!("{other:?} is not text or json"),
                });
            }
        };
        let cfg = Self {
            trust_domain,
            bind_address,
            admin_socket_path: o
                .admin_socket_path
                .or(f.admin_socket_path)
                .unwrap_or_else(|| DEFAULT_ADMIN_SOCKET.into()),
            data_dir: o
                .data_dir
                .or(f.data_dir)
                .unwrap_or_else(|| PathBuf::from(".data/server")),
            ca_key_type,
            ca_ttl: duration(
                "ca_ttl",
                f.ca_ttl.as_deref(),
                Duration::from_secs(24 * 3600),
            )?,
            default_x509_svid_ttl: duration(
                "default_x509_svid_ttl",
                f.default_x509_svid_ttl.as_deref(),
                Duration::from_secs(3600),
            )?,
            default_jwt_svid_ttl: duration(
                "default_jwt_svid_ttl",
                f.default_jwt_svid_ttl.as_deref(),
                Duration::from_secs(300),
            )?,
            jwt_issuer: f.jwt_issuer.filter(|i| !i.is_empty()),
            jwt_key_type,
            log_level: o.log_level.or(f.log_level).unwrap_or_else(|| "info".into()),
            log_format,
            upstream_authority: f.upstream_authority,
            agent_svid_overlap: duration(
                "agent_svid_overlap",
                f.agent_svid_overlap.as_deref(),
                Duration::from_secs(300),
            )?,
            attestation_rate_limit: f.attestation_rate_limit.unwrap_or(1),
            max_pending_signatures: f.max_pending_signatures.unwrap_or(4096),
            prune_interval: duration(
                "prune_interval",
                f.prune_interval.as_deref(),
                Duration::from_secs(600),
            )?,
            prune_attested_agents_expired_for: f
                .prune_attested_agents_expired_for
                .as_deref()
                .map(|v| duration("prune_attested_agents_expired_for", Some(v), Duration::ZERO))
                .transpose()?,
        };
        if cfg.max_pending_signatures < MAX_BATCH {
            return Err(ConfigError::Invalid {
                key: "max_pending_signatures",
                reason: format!("must be at least {MAX_BATCH} (one full signing batch)"),
            });
        }
        if cfg.default_x509_svid_ttl >= cfg.ca_ttl {
            return Err(ConfigError::Invalid {
                key: "default_x509_svid_ttl",
                reason: "must be shorter than ca_ttl".into(),
            });
        }
        Ok(cfg)
    }
}

/// Why a `jwt_key_type` value is refused, with the reason for the ones people expect to work.
fn jwt_key_type_refusal(s: &str) -> String {
    let upper = s.to_ascii_uppercase();
    if upper == "ES512" {
        format!(
            "{s:?} is not offered: common JWT clients cannot verify ES512; use ES256, ES384 or RS256"
        )
    } else {
        format!("{s:?} is not one of ES256, ES384, RS256")
    }
}

fn duration(
    key: &'static str,
    v: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => match parse_duration(s) {
            Some(d) if !d.is_zero() => Ok(d),
            _ => Err(ConfigError::Invalid {
                key,
                reason: format!("{s:?} is not a positive duration like 90s, 10m, 1h"),
            }),
        },
    }
}

/// Parses `90s`, `10m`, `1h`, `2h30m`, `1d` or bare seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::from_toml("trust_domain = \"example.org\"", Overrides::default()).unwrap();
        assert_eq!(c.bind_address.to_string(), "0.0.0.0:8081");
        assert_eq!(c.ca_ttl, Duration::from_secs(86400));
        assert_eq!(c.default_x509_svid_ttl, Duration::from_secs(3600));
        assert_eq!(c.default_jwt_svid_ttl, Duration::from_secs(300));
        assert_eq!(c.ca_key_type, KeyType::EcP256);
        assert_eq!(c.jwt_key_type, JwtKeyType::Es256);
        assert_eq!(c.jwt_issuer, None);
        assert_eq!(c.admin_socket_path, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert_eq!(c.agent_svid_overlap, Duration::from_secs(300));
        assert_eq!(c.attestation_rate_limit, 1);
        assert_eq!(c.max_pending_signatures, 4096);
        assert_eq!(c.prune_interval, Duration::from_secs(600));
        assert_eq!(c.prune_attested_agents_expired_for, None);
    }

    #[test]
    fn hardening_keys() {
        let c = Config::from_toml(
            "trust_domain = \"a\"\nagent_svid_overlap = \"30s\"\nattestation_rate_limit = 0\n\
             max_pending_signatures = 500\nprune_interval = \"1m\"\n\
             prune_attested_agents_expired_for = \"7d\"",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.agent_svid_overlap, Duration::from_secs(30));
        assert_eq!(c.attestation_rate_limit, 0);
        assert_eq!(c.max_pending_signatures, 500);
        assert_eq!(c.prune_interval, Duration::from_secs(60));
        assert_eq!(
            c.prune_attested_agents_expired_for,
            Some(Duration::from_secs(7 * 86400))
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("trust_domain = \"a\"\nbogus = 1", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (toml, key) in [
            ("trust_domain = \"Bad TD\"", "trust_domain"),
            ("trust_domain = \"a\"\nca_ttl = \"soon\"", "ca_ttl"),
            ("trust_domain = \"a\"\nca_key_type = \"dsa\"", "ca_key_type"),
            (
                "trust_domain = \"a\"\njwt_key_type = \"PS256\"",
                "jwt_key_type",
            ),
            (
                "trust_domain = \"a\"\njwt_key_type = \"ES512\"",
                "jwt_key_type",
            ),
            (
                "trust_domain = \"a\"\njwt_key_type = \"HS256\"",
                "jwt_key_type",
            ),
            (
                "trust_domain = \"a\"\nbind_address = \"nowhere\"",
                "bind_address",
            ),
            ("", "trust_domain"),
            (
                "trust_domain = \"a\"\nmax_pending_signatures = 499",
                "max_pending_signatures",
            ),
            (
                "trust_domain = \"a\"\nagent_svid_overlap = \"0s\"",
                "agent_svid_overlap",
            ),
            (
                "trust_domain = \"a\"\nprune_attested_agents_expired_for = \"soon\"",
                "prune_attested_agents_expired_for",
            ),
            (
                "trust_domain = \"a\"\nattestation_rate_limit = -1",
                "attestation_rate_limit",
            ),
        ] {
            let e = Config::from_toml(toml, Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn jwt_keys() {
        let c = Config::from_toml(
            "trust_domain = \"a\"\njwt_key_type = \"ES384\"\njwt_issuer = \"https://a\"",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.jwt_key_type, JwtKeyType::Es384);
        assert_eq!(c.jwt_issuer.as_deref(), Some("https://a"));
        let c = Config::from_toml(
            "trust_domain = \"a\"\njwt_key_type = \"RS256\"",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.jwt_key_type, JwtKeyType::Rs256);
        let e = Config::from_toml(
            "trust_domain = \"a\"\njwt_key_type = \"PS256\"",
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("RS256"), "{e}");
    }

    #[test]
    fn flags_override_file() {
        let o = Overrides {
            trust_domain: Some("b.org".into()),
            bind_address: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let c = Config::from_toml("trust_domain = \"a.org\"", o).unwrap();
        assert_eq!(c.trust_domain.as_str(), "b.org");
        assert_eq!(c.bind_address.port(), 0);
    }

    #[test]
    fn example_config_parses() {
        let c = Config::from_toml(
            include_str!("../../deploy/server.toml"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.trust_domain.as_str(), "example.org");
        assert_eq!(c.ca_ttl, Duration::from_secs(86400));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h30m"), Some(Duration::from_secs(9000)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5m3"), None);
    }
}
