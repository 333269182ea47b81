//! `sigil`: the operator and workload command line of Sigil.
//!
//! Layout:
//! - [`args`]: the clap command tree; raw strings become SPIFFE types here.
//! - [`connect`]: socket resolution (`--socket`, environment, defaults) and Unix-socket channels.
//! - [`status`]: the one place gRPC statuses become `Error: <Code>: <message>` text.
//! - [`output`]: human blocks and JSON for admin messages, and the stdout writer.
//! - [`duration`]: `90s` / `2h30m` / `1d` parsing.
//! - [`entry`], [`token`], [`agent_admin`], [`bundle`], [`health`]: server admin commands.
//! - [`localauthority`]: manual JWT signing key rotation (server admin API).
//! - [`workload`], [`x509`]: `agent api` commands against the SPIFFE Workload API.
//! - [`dev`]: `sigil dev`, a local server and agent as child processes, for development.
//!
//! Exit codes: 0 on success, 1 on any failure (printed to stderr), 2 on a usage error (clap).
#![forbid(unsafe_code)]

mod agent_admin;
mod args;
mod bundle;
mod connect;
mod dev;
mod duration;
mod entry;
mod health;
mod localauthority;
mod output;
mod status;
mod token;
mod workload;
mod x509;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{AgentCommand, Cli, Command, Globals};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let (globals, command) = Cli::parse().into_parts();
    match run(&globals, command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {}", status::render(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run(globals: &Globals, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Entry(cmd) => entry::run(globals, cmd).await,
        Command::Token(cmd) => token::run(globals, cmd).await,
        Command::Agent(AgentCommand::Admin(cmd)) => agent_admin::run(globals, cmd).await,
        Command::Agent(AgentCommand::Api(cmd)) => workload::run(globals, cmd).await,
        Command::Bundle(cmd) => bundle::run(globals, cmd).await,
        Command::Server(cmd) => health::run(globals, cmd).await,
        Command::LocalAuthority(cmd) => localauthority::run(globals, cmd).await,
        Command::Dev(args) => dev::run(globals, args).await,
    }
}
