//! `mtls-server`: answers `ping N` with `pong N <client id>` over mutual TLS, presenting an
//! X.509-SVID from the Workload API and accepting only the client SPIFFE IDs it was told to.
//!
//! ```text
//! mtls-server --listen 127.0.0.1:8443 --authorize spiffe://example.org/demo/client
//! ```
//! Rotation needs no restart: the `X509Source` follows the agent's updates and every new
//! handshake uses the current SVID and bundle.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use sigil_example_mtls::identity::{self, Peer, SourceOptions};
use sigil_example_mtls::protocol;
use spiffe::SpiffeId;
use spiffe_rustls::{authorizer, mtls_server};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;

/// A slow or silent peer must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// mTLS echo server taking its identity from the SPIFFE Workload API.
#[derive(Debug, Parser)]
#[command(name = "mtls-server", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// SPIFFE ID of a client allowed to connect (repeat for several).
    #[arg(long = "authorize", value_name = "SPIFFE_ID", required = true)]
    authorize: Vec<SpiffeId>,
    /// Present the SVID with this SPIFFE ID (when the Workload API serves several); default:
    /// the first one served.
    #[arg(long, value_name = "SPIFFE_ID")]
    spiffe_id: Option<SpiffeId>,
    /// Workload API endpoint (unix:///path); default: $SPIFFE_ENDPOINT_SOCKET.
    #[arg(long, value_name = "URI")]
    socket: Option<String>,
    /// Seconds to wait for a first SVID before giving up (0: wait forever).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    wait: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let source = identity::x509_source(SourceOptions {
        endpoint: args.socket,
        spiffe_id: args.spiffe_id,
        initial_timeout: (args.wait > 0).then(|| Duration::from_secs(args.wait)),
    })
    .await
    .context("getting an X.509-SVID from the Workload API")?;
    let me = source
        .svid()
        .context("no usable SVID")?
        .spiffe_id()
        .to_string();
    let config = mtls_server(source.clone())
        .authorize(authorizer::exact(args.authorize.clone())?)
        .build()
        .context("building the TLS configuration")?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let allowed: Vec<String> = args.authorize.iter().map(ToString::to_string).collect();
    println!(
        "mtls-server: {me} listening on {addr}, authorizing {}",
        allowed.join(", ")
    );

    let mut term = signal(SignalKind::terminate())?;
    loop {
        let (tcp, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("mtls-server: accept failed: {e}");
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(acceptor, tcp).await {
                eprintln!("mtls-server: connection from {from}: {e:#}");
            }
        });
    }
    println!("mtls-server: shutting down");
    source.shutdown().await;
    Ok(())
}

/// One connection: handshake (the authorizer refuses unknown clients here), then requests until
/// the client closes.
async fn serve(acceptor: TlsAcceptor, tcp: TcpStream) -> Result<()> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake failed")?;
    let client = Peer::from_chain(tls.get_ref().1.peer_certificates())?;
    let mut conn = BufReader::new(tls);
    loop {
        let line = tokio::time::timeout(IDLE_TIMEOUT, protocol::read_line(&mut conn))
            .await
            .context("idle timeout")?;
        let reply = match line {
            Ok(None) => break,
            Ok(Some(line)) => match protocol::parse_ping(&line) {
                Some(n) => {
                    println!(
                        "mtls-server: ping {n} from {} (cert serial {}, expires {})",
                        client.spiffe_id, client.serial, client.expires
                    );
                    protocol::pong(n, &client.spiffe_id)
                }
                None => "error expected `ping N`\n".to_owned(),
            },
            Err(e) => format!("error {e}\n"),
        };
        conn.get_mut().write_all(reply.as_bytes()).await?;
        if reply.starts_with("error") {
            break;
        }
    }
    conn.get_mut().shutdown().await.ok();
    Ok(())
}
