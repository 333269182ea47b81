//! `sigil-server`: parses flags and config, then runs the server until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sigil_server::config::{Config, LogFormat, Overrides};

#[derive(Parser)]
#[command(
    name = "sigil-server",
    version,
    about = "Sigil certificate authority and control plane"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Run {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `trust_domain`.
        #[arg(long)]
        trust_domain: Option<String>,
        /// Overrides `bind_address`.
        #[arg(long)]
        bind_address: Option<String>,
        /// Overrides `admin_socket_path`.
        #[arg(long)]
        admin_socket_path: Option<PathBuf>,
        /// Overrides `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Overrides `log_level`.
        #[arg(long)]
        log_level: Option<String>,
        /// Overrides `log_format` (text|json).
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Check that a running server answers on its admin socket.
    Healthcheck {
        /// Admin socket path.
        #[arg(long, default_value = sigil_server::config::DEFAULT_ADMIN_SOCKET)]
        socket: PathBuf,
    },
}

fn init_logs(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run {
            config,
            trust_domain,
            bind_address,
            admin_socket_path,
            data_dir,
            log_level,
            log_format,
        } => {
            let o = Overrides {
                trust_domain,
                bind_address,
                admin_socket_path,
                data_dir,
                log_level,
                log_format,
            };
            let cfg = Config::load(config.as_deref(), o)?;
            init_logs(&cfg);
            // Everything this process creates (store files, sockets) is private by default.
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            let running = sigil_server::serve::start(cfg)
                .await
                .context("starting server")?;
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
            let ch = sigil_server::client::admin_channel(&socket).await?;
            let mut c = sigil_proto::sigil::v1::health_client::HealthClient::new(ch);
            let r = c
                .check(sigil_proto::sigil::v1::HealthCheckRequest {})
                .await
                .context("health check failed")?;
            println!(
                "Server is healthy (trust domain {}).",
                r.into_inner().trust_domain
            );
            Ok(())
        }
    }
}
