//! `sigil-agent`: parses flags and config, then runs the agent until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sigil_agent::config::{Config, DEFAULT_ADMIN_SOCKET, Overrides};

#[derive(Parser)]
#[command(
    name = "sigil-agent",
    version,
    about = "Sigil node agent: SPIFFE Workload API"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at startup
enum Cmd {
    /// Run the agent.
    Run {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `trust_domain`.
        #[arg(long)]
        trust_domain: Option<String>,
        /// Overrides `server_address` (host:port).
        #[arg(long)]
        server_address: Option<String>,
        /// Overrides `trust_bundle_path`.
        #[arg(long)]
        trust_bundle_path: Option<PathBuf>,
        /// Development only: do not authenticate the server during node attestation.
        #[arg(long)]
        insecure_bootstrap: bool,
        /// Overrides `join_token`.
        #[arg(long)]
        join_token: Option<String>,
        /// Overrides `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Overrides `socket_path`.
        #[arg(long)]
        socket_path: Option<PathBuf>,
        /// Overrides `admin_socket_path`.
        #[arg(long)]
        admin_socket_path: Option<PathBuf>,
        /// Overrides `log_level`.
        #[arg(long)]
        log_level: Option<String>,
        /// Overrides `log_format` (text|json).
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Check that a running agent is healthy (exit code 0) via its admin socket.
    Healthcheck {
        /// Admin socket path.
        #[arg(long, default_value = DEFAULT_ADMIN_SOCKET)]
        socket: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run {
            config,
            trust_domain,
            server_address,
            trust_bundle_path,
            insecure_bootstrap,
            join_token,
            data_dir,
            socket_path,
            admin_socket_path,
            log_level,
            log_format,
        } => {
            let o = Overrides {
                trust_domain,
                server_address,
                trust_bundle_path,
                insecure_bootstrap,
                join_token,
                data_dir,
                socket_path,
                admin_socket_path,
                log_level,
                log_format,
            };
            let cfg = Config::load(config.as_deref(), o)?;
            let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let b = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            if cfg.log_json {
                b.json().init();
            } else {
                b.init();
            }
            let running = sigil_agent::serve::start(cfg)
                .await
                .context("starting agent")?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            running.shutdown().await;
            Ok(())
        }
        Cmd::Healthcheck { socket } => {
            let path = socket.clone();
            let ch = tonic::transport::Endpoint::from_static("http://agent.sock")
                .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                    let p = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(p).await?,
                        ))
                    }
                }))
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            let r = sigil_proto::sigil::v1::health_client::HealthClient::new(ch)
                .check(sigil_proto::sigil::v1::HealthCheckRequest {})
                .await
                .context("agent is unhealthy")?
                .into_inner();
            if !r.serving {
                anyhow::bail!("agent is up but has no trust bundle yet");
            }
            println!("Agent is healthy.");
            Ok(())
        }
    }
}
