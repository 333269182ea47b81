//! Where the two sockets are and how to open a gRPC channel over them.
//!
//! Admin commands talk to the server's admin socket; `agent api` commands talk to the agent's
//! Workload API socket. Both are Unix sockets, so the channel's HTTP authority is a placeholder
//! and the connector ignores the URI.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::args::Globals;

/// Where `sigil-server` listens for admin calls unless told otherwise (SPIRE's layout).
pub const DEFAULT_ADMIN_SOCKET: &str = "/tmp/sigil-server/private/api.sock";
/// Environment variable naming the admin socket when `--socket` is absent.
pub const ADMIN_SOCKET_ENV: &str = "SIGIL_ADMIN_SOCKET";
/// Where `sigil-agent` serves the Workload API unless told otherwise (SPIRE's layout).
pub const DEFAULT_WORKLOAD_SOCKET: &str = "/tmp/sigil-agent/public/api.sock";
/// The SPIFFE-standard variable naming the Workload API endpoint, honoured by every SPIFFE client.
pub const WORKLOAD_SOCKET_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// A Unix socket dial can only hang on a wedged peer; fail fast rather than leave a shell waiting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on each admin call (one page of a listing, one batch): generous for a store write with
/// fsync, short enough that a wedged server does not hang a script. Workload API channels get no
/// such bound because `watch` holds a stream open indefinitely; those commands use `--timeout`.
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a socket address (flag or `SPIFFE_ENDPOINT_SOCKET`) is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// Empty string.
    Empty,
    /// `tcp://` or another scheme: Sigil serves its APIs on Unix sockets only.
    UnsupportedScheme(String),
    /// `unix://host/path`: the SPIFFE Workload Endpoint spec forbids an authority.
    Authority,
    /// `unix:relative`: a URI path must be absolute.
    RelativePath,
    /// `?query` or `#fragment` in a `unix:` URI.
    QueryOrFragment,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("socket address is empty"),
            Self::UnsupportedScheme(s) => {
                write!(
                    f,
                    "scheme {s:?} is not supported; use unix:///path or a plain path"
                )
            }
            Self::Authority => {
                f.write_str("unix socket URI must not have an authority (unix:///path)")
            }
            Self::RelativePath => f.write_str("unix socket URI path must be absolute"),
            Self::QueryOrFragment => {
                f.write_str("unix socket URI must not have a query or fragment")
            }
        }
    }
}

impl std::error::Error for AddressError {}

/// Turns `unix:///path`, `unix:/path` or a plain filesystem path into the path to dial.
pub fn parse_socket_address(addr: &str) -> Result<PathBuf, AddressError> {
    if addr.is_empty() {
        return Err(AddressError::Empty);
    }
    let Some(rest) = addr.strip_prefix("unix:") else {
        if let Some((scheme, _)) = addr.split_once("://") {
            return Err(AddressError::UnsupportedScheme(scheme.to_owned()));
        }
        // A plain path is taken as-is, relative or not, like any other file argument.
        return Ok(PathBuf::from(addr));
    };
    if rest.contains('?') || rest.contains('#') {
        return Err(AddressError::QueryOrFragment);
    }
    let path = match rest.strip_prefix("//") {
        Some(after_authority) if after_authority.starts_with('/') => after_authority,
        Some(_) => return Err(AddressError::Authority),
        None => rest,
    };
    if !path.starts_with('/') {
        return Err(AddressError::RelativePath);
    }
    Ok(PathBuf::from(path))
}

/// The admin socket: `--socket`, else `$SIGIL_ADMIN_SOCKET`, else the default.
pub fn admin_socket(flag: Option<&str>) -> anyhow::Result<PathBuf> {
    resolve(
        flag,
        ADMIN_SOCKET_ENV,
        std::env::var(ADMIN_SOCKET_ENV).ok(),
        DEFAULT_ADMIN_SOCKET,
    )
}

/// The Workload API socket: `--socket`, else `$SPIFFE_ENDPOINT_SOCKET`, else the default.
pub fn workload_socket(flag: Option<&str>) -> anyhow::Result<PathBuf> {
    let env = std::env::var(WORKLOAD_SOCKET_ENV).ok();
    resolve(flag, WORKLOAD_SOCKET_ENV, env, DEFAULT_WORKLOAD_SOCKET)
}

/// Resolves the admin socket from the global flags and connects to it.
pub async fn admin(globals: &Globals) -> anyhow::Result<Channel> {
    let path = admin_socket(globals.socket.as_deref())?;
    admin_channel(&path).await
}

/// Opens a channel to the server's admin socket; a failure names the path and how to change it.
pub async fn admin_channel(path: &Path) -> anyhow::Result<Channel> {
    unix_channel(path, Some(ADMIN_REQUEST_TIMEOUT))
        .await
        .map_err(|e| {
            anyhow!(
                "cannot connect to the Sigil server admin socket {}: {} \
             (is sigil-server running? set --socket or ${ADMIN_SOCKET_ENV})",
                path.display(),
                root_cause(&e)
            )
        })
}

/// Opens a channel to the agent's Workload API socket; a failure names the path.
pub async fn workload_channel(path: &Path) -> anyhow::Result<Channel> {
    unix_channel(path, None).await.map_err(|e| {
        anyhow!(
            "cannot connect to the Workload API socket {}: {} \
             (is sigil-agent running? set --socket or ${WORKLOAD_SOCKET_ENV})",
            path.display(),
            root_cause(&e)
        )
    })
}

async fn unix_channel(
    path: &Path,
    request_timeout: Option<Duration>,
) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is never dialled: the connector below ignores it and opens the Unix socket.
    let mut endpoint = Endpoint::from_static("http://[::]:50051").connect_timeout(CONNECT_TIMEOUT);
    if let Some(timeout) = request_timeout {
        endpoint = endpoint.timeout(timeout);
    }
    endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
}

fn resolve(
    flag: Option<&str>,
    env_name: &str,
    env_value: Option<String>,
    default: &str,
) -> anyhow::Result<PathBuf> {
    if let Some(flag) = flag {
        return parse_socket_address(flag).map_err(|e| anyhow!("invalid --socket {flag:?}: {e}"));
    }
    // An empty variable is treated as unset, as shells make `VAR=` easy to leave behind.
    match env_value.filter(|v| !v.is_empty()) {
        Some(v) => parse_socket_address(&v).map_err(|e| anyhow!("invalid ${env_name} {v:?}: {e}")),
        None => Ok(PathBuf::from(default)),
    }
}

/// The innermost error's text: tonic wraps the useful `io::Error` in a generic "transport error".
fn root_cause(e: &(dyn StdError + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoint_forms() {
        let ok = [
            ("unix:///tmp/agent.sock", "/tmp/agent.sock"),
            ("unix:/tmp/agent.sock", "/tmp/agent.sock"),
            ("/tmp/agent.sock", "/tmp/agent.sock"),
            ("relative/agent.sock", "relative/agent.sock"),
            ("unix:///run/a b/api.sock", "/run/a b/api.sock"),
        ];
        for (input, want) in ok {
            assert_eq!(
                parse_socket_address(input),
                Ok(PathBuf::from(want)),
                "input {input:?}"
            );
        }
        let bad = [
            ("", AddressError::Empty),
            (
                "tcp://127.0.0.1:8081",
                AddressError::UnsupportedScheme("tcp".into()),
            ),
            ("unix://host/tmp/a.sock", AddressError::Authority),
            ("unix://", AddressError::Authority),
            ("unix:tmp/a.sock", AddressError::RelativePath),
            ("unix:", AddressError::RelativePath),
            ("unix:///tmp/a.sock?x=1", AddressError::QueryOrFragment),
            ("unix:///tmp/a.sock#f", AddressError::QueryOrFragment),
        ];
        for (input, want) in bad {
            assert_eq!(parse_socket_address(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn flag_beats_env_beats_default() {
        let env = Some("unix:///env.sock".to_owned());
        let p = resolve(Some("/flag.sock"), "E", env.clone(), "/default.sock").unwrap();
        assert_eq!(p, PathBuf::from("/flag.sock"));
        let p = resolve(None, "E", env, "/default.sock").unwrap();
        assert_eq!(p, PathBuf::from("/env.sock"));
        let p = resolve(None, "E", Some(String::new()), "/default.sock").unwrap();
        assert_eq!(p, PathBuf::from("/default.sock"));
        let p = resolve(None, "E", None, "/default.sock").unwrap();
        assert_eq!(p, PathBuf::from("/default.sock"));
        let err = resolve(
            None,
            "SPIFFE_ENDPOINT_SOCKET",
            Some("tcp://x:1".into()),
            "/d",
        )
        .unwrap_err();
        assert!(err.to_string().contains("$SPIFFE_ENDPOINT_SOCKET"), "{err}");
    }

    #[tokio::test]
    async fn connection_failure_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.sock");
        let err = admin_channel(&path).await.unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("No such file or directory"), "{err}");
    }
}
