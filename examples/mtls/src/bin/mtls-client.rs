//! `mtls-client`: sends `ping N` requests to `mtls-server` over mutual TLS, presenting an
//! X.509-SVID from the Workload API and accepting only the server SPIFFE ID it was told to.
//!
//! ```text
//! mtls-client --connect 127.0.0.1:8443 --authorize spiffe://example.org/demo/server --count 5
//! ```
//! Exits non-zero if any request failed. With `--count` > `--per-connection`, it opens new
//! connections along the way, each handshake using the SVID current at that moment: this is how
//! the end-to-end tests show rotation without restarts.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rustls::pki_types::ServerName;
use sigil_example_mtls::identity::{self, Peer, SourceOptions};
use sigil_example_mtls::protocol;
use spiffe::{SpiffeId, X509Source};
use spiffe_rustls::{authorizer, mtls_client};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Bound on connect + handshake + one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// mTLS client taking its identity from the SPIFFE Workload API.
#[derive(Debug, Parser)]
#[command(name = "mtls-client", version)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    connect: String,
    /// SPIFFE ID the server must have (repeat to accept several).
    #[arg(long = "authorize", value_name = "SPIFFE_ID", required = true)]
    authorize: Vec<SpiffeId>,
    /// Present the SVID with this SPIFFE ID (when the Workload API serves several); default:
    /// the first one served.
    #[arg(long, value_name = "SPIFFE_ID")]
    spiffe_id: Option<SpiffeId>,
    /// Workload API endpoint (unix:///path); default: $SPIFFE_ENDPOINT_SOCKET.
    #[arg(long, value_name = "URI")]
    socket: Option<String>,
    /// Number of requests.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Pause between requests, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Requests per connection before reconnecting (a new TLS handshake).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    per_connection: u64,
    /// Seconds to wait for a first SVID before giving up (0: wait forever).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    wait: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let source = identity::x509_source(SourceOptions {
        endpoint: args.socket.clone(),
        spiffe_id: args.spiffe_id.clone(),
        initial_timeout: (args.wait > 0).then(|| Duration::from_secs(args.wait)),
    })
    .await
    .context("getting an X.509-SVID from the Workload API")?;
    let config = mtls_client(source.clone())
        .authorize(authorizer::exact(args.authorize.clone())?)
        .build()
        .context("building the TLS configuration")?;
    let connector = TlsConnector::from(Arc::new(config));

    let mut failures = 0u64;
    let mut conn: Option<(Connection, u64)> = None;
    for n in 1..=args.count {
        if n > 1 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
        let reuse = matches!(&conn, Some((_, used)) if *used < args.per_connection);
        if !reuse {
            conn = None;
        }
        let result = tokio::time::timeout(
            REQUEST_TIMEOUT,
            request(&connector, &source, &args.connect, &mut conn, n),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
        match result {
            Ok(line) => println!("{line}"),
            Err(e) => {
                failures += 1;
                conn = None;
                eprintln!("mtls-client: request {n} failed: {e:#}");
            }
        }
    }
    source.shutdown().await;
    if failures > 0 {
        bail!("{failures} of {} requests failed", args.count);
    }
    println!("mtls-client: {} requests ok", args.count);
    Ok(())
}

struct Connection {
    stream: BufReader<TlsStream<TcpStream>>,
    server: Peer,
    me: String,
}

/// Sends `ping n` (connecting first if needed) and checks the answer; returns the line to print.
async fn request(
    connector: &TlsConnector,
    source: &X509Source,
    addr: &str,
    conn: &mut Option<(Connection, u64)>,
    n: u64,
) -> Result<String> {
    if conn.is_none() {
        *conn = Some((connect(connector, source, addr).await?, 0));
    }
    let Some((c, used)) = conn.as_mut() else {
        bail!("no connection");
    };
    *used += 1;
    c.stream
        .get_mut()
        .write_all(protocol::ping(n).as_bytes())
        .await?;
    // With TLS 1.3 the server checks our certificate after our side of the handshake is done,
    // so a refusal arrives here, as an alert, rather than from `connect`.
    let line = protocol::read_line(&mut c.stream)
        .await?
        .context("the server closed the connection")?;
    let Some((got, seen_as)) = protocol::parse_pong(&line) else {
        bail!("unexpected answer {line:?}");
    };
    if got != n || seen_as != c.me {
        bail!("answer {line:?} does not match ping {n} from {}", c.me);
    }
    Ok(format!(
        "pong {n} {seen_as} from {} (server cert serial {}, expires {})",
        c.server.spiffe_id, c.server.serial, c.server.expires
    ))
}

async fn connect(connector: &TlsConnector, source: &X509Source, addr: &str) -> Result<Connection> {
    // The SVID the handshake is about to present (the source's current one).
    let me = source
        .svid()
        .context("no usable SVID")?
        .spiffe_id()
        .to_string();
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    // rustls wants a server name; SPIFFE authentication ignores it (the peer is checked by its
    // SPIFFE ID against --authorize instead).
    let name = ServerName::try_from("mtls-server.invalid")?;
    let tls = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let server = Peer::from_chain(tls.get_ref().1.peer_certificates())?;
    Ok(Connection {
        stream: BufReader::new(tls),
        server,
        me,
    })
}
