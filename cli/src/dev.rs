//! `sigil dev`: a complete local Sigil in one command, for trying it out and for developing
//! workloads against the Workload API.
//!
//! It starts `sigil-server` and `sigil-agent` (found next to this `sigil`) as child processes on
//! the embedded sled store, attests the agent with a fresh join token whose node alias is
//! `spiffe://<td>/dev-node`, registers the invoking user's uid as `spiffe://<td>/dev/<user>`,
//! and waits until the Workload API serves that identity to `sigil dev` itself, fetched exactly
//! as a workload would. Then it prints how to use it and a line containing `ready`, and
//! supervises the children until SIGINT, SIGTERM or SIGHUP, when it stops the agent and then the
//! server. If either child dies, it says so, quoting the child's log, and stops the other.
//!
//! The data directory (default `.sigil-dev`) is wiped at each start: every run is fresh, and
//! state from an older build cannot get in the way.
//!
//! Layout:
//! - [`layout`]: what lives where, finding the binaries, and the lock that makes a second
//!   `sigil dev` on the same directory explain itself.
//! - [`procs`]: the child processes (own process group, log files, SIGTERM then SIGKILL).
//! - [`probe`]: waiting for the server and for the SVID; registering the dev identity.

mod layout;
mod probe;
mod procs;

use std::ffi::OsStr;

use anyhow::{Context, Result, bail};
use sigil_core::{SpiffeId, TrustDomain};
use sigil_proto::sigil::v1 as pb;
use sigil_proto::sigil::v1::bundles_client::BundlesClient;
use sigil_proto::sigil::v1::tokens_client::TokensClient;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;

use self::layout::{Binaries, DirLock, Layout};
use self::procs::Proc;
use crate::args::{DevArgs, Globals};
use crate::{bundle, output};

/// Path of the node alias every dev agent gets, and the parent ID of the entries it serves.
const NODE_ALIAS_PATH: &str = "/dev-node";
/// Join tokens are used within seconds here; a short life limits a leaked one.
const TOKEN_TTL_SECS: i64 = 600;
/// How long after a child's exit a stop signal still counts as its cause.
const SIGNAL_RACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs `sigil dev` until a stop signal or a child's death.
pub async fn run(globals: &Globals, args: DevArgs) -> Result<()> {
    if globals.socket.is_some() {
        bail!(
            "--socket does not apply to `sigil dev`: it creates its own sockets (see --data-dir)"
        );
    }
    let uid = nix::unistd::getuid().as_raw();
    let user = user_segment(uid);
    let (trust_domain, spiffe_id) = identity(args.trust_domain, args.spiffe_id, &user)?;
    let alias = trust_domain.id_with_path(NODE_ALIAS_PATH)?;
    if spiffe_id == alias {
        bail!("--spiffe-id {spiffe_id} is the agent's node alias; choose another ID");
    }
    let bins = Binaries::locate()?;
    let layout = Layout::new(&args.data_dir, uid)?;
    let mut lock = DirLock::acquire(&layout)?;
    layout::ensure_port_free(args.port)?;
    layout::wipe(&layout)?;
    let plan = Plan {
        layout,
        bins,
        trust_domain,
        spiffe_id,
        alias,
        uid,
        port: args.port,
    };

    let mut stop = StopSignals::new()?;
    let mut children = Children::default();
    let deadline = Instant::now() + args.timeout;
    let started = tokio::select! {
        // A Ctrl-C also reaches the children: report it as the stop it is, not as their death.
        biased;
        name = stop.recv() => {
            eprintln!("{name} received during startup; stopping.");
            Ok(None)
        }
        ready = start(&plan, &mut children, &mut lock, deadline) => ready.map(Some),
    };
    let outcome = match started {
        Ok(Some(ready)) => match output::emit(&ready_text(&plan, &children, &ready)) {
            Ok(()) => children.supervise(&mut stop).await,
            Err(e) => Err(e),
        },
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    children.stop_all().await;
    outcome
}

/// Everything decided before the first process starts.
struct Plan {
    layout: Layout,
    bins: Binaries,
    trust_domain: TrustDomain,
    spiffe_id: SpiffeId,
    alias: SpiffeId,
    uid: u32,
    port: u16,
}

/// What the ready message reports.
struct Ready {
    /// Expiry of the dev identity's X.509-SVID, Unix seconds.
    not_after: i64,
}

/// The children started so far.
#[derive(Default)]
struct Children {
    server: Option<Proc>,
    agent: Option<Proc>,
}

impl Children {
    /// Waits for a stop signal (Ok) or a child's death (Err).
    async fn supervise(&mut self, stop: &mut StopSignals) -> Result<()> {
        let (Some(server), Some(agent)) = (self.server.as_mut(), self.agent.as_mut()) else {
            bail!("internal error: supervising before both processes started");
        };
        let died = tokio::select! {
            biased;
            name = stop.recv() => {
                eprintln!("{name} received; stopping.");
                return Ok(());
            }
            err = server.exited() => err,
            err = agent.exited() => err,
        };
        // A Ctrl-C in the terminal reaches the children too (they share our process group), and
        // one of them may exit before we see the signal: that is a stop, not a failure.
        match tokio::time::timeout(SIGNAL_RACE, stop.recv()).await {
            Ok(name) => {
                eprintln!("{name} received; stopping.");
                Ok(())
            }
            Err(_) => Err(died),
        }
    }

    /// Stops the agent first (so it does not log a lost server), then the server.
    async fn stop_all(&mut self) {
        for proc in [self.agent.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let name = proc.name;
            match proc.stop().await {
                Ok(how) => eprintln!("{name} {how}."),
                Err(e) => eprintln!("{name}: could not stop it: {e:#}"),
            }
        }
    }
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP (terminal closed) all mean "stop".
struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    fn new() -> Result<Self> {
        let install = |kind| signal(kind).context("installing a signal handler");
        Ok(Self {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
            hup: install(SignalKind::hangup())?,
        })
    }

    /// The name of the next stop signal.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// Starts the server, sets it up through its admin API (bundle, join token, the dev entry),
/// starts the agent, and waits until the Workload API serves the dev identity.
async fn start(
    plan: &Plan,
    children: &mut Children,
    lock: &mut DirLock,
    deadline: Instant,
) -> Result<Ready> {
    let l = &plan.layout;
    let td = plan.trust_domain.to_string();
    let bind = format!("127.0.0.1:{}", plan.port);
    let admin = l.admin_socket();
    let server_data = l.server_data();
    let server_args: [&OsStr; 9] = [
        "run".as_ref(),
        "--trust-domain".as_ref(),
        td.as_ref(),
        "--bind-address".as_ref(),
        bind.as_ref(),
        "--data-dir".as_ref(),
        server_data.as_os_str(),
        "--admin-socket-path".as_ref(),
        admin.as_os_str(),
    ];
    let server = children.server.insert(Proc::spawn(
        "sigil-server",
        &plan.bins.server,
        &server_args,
        &l.data_dir.join("server.log"),
    )?);
    lock.record(&[
        ("sigil-dev", std::process::id()),
        ("sigil-server", server.pid),
    ])?;
    let channel = probe::wait_for_server(server, &admin, deadline).await?;

    // The agent authenticates the server with this bundle until its first sync.
    let bundle = BundlesClient::new(channel.clone())
        .get_bundle(pb::GetBundleRequest {})
        .await?
        .into_inner();
    std::fs::write(l.bundle(), bundle::from_proto(&bundle)?.to_pem())
        .with_context(|| format!("writing {}", l.bundle().display()))?;
    let token = TokensClient::new(channel.clone())
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl: TOKEN_TTL_SECS,
            agent_alias_spiffe_id: plan.alias.to_string(),
            token: String::new(),
        })
        .await?
        .into_inner()
        .value;
    probe::register(channel, &plan.spiffe_id, &plan.alias, plan.uid).await?;

    let bundle_path = l.bundle();
    let agent_data = l.agent_data();
    let socket = l.workload_socket();
    let agent_admin = l.agent_admin_socket();
    let agent_args: [&OsStr; 15] = [
        "run".as_ref(),
        "--trust-domain".as_ref(),
        td.as_ref(),
        "--server-address".as_ref(),
        bind.as_ref(),
        "--trust-bundle-path".as_ref(),
        bundle_path.as_os_str(),
        "--join-token".as_ref(),
        token.as_ref(),
        "--data-dir".as_ref(),
        agent_data.as_os_str(),
        "--socket-path".as_ref(),
        socket.as_os_str(),
        "--admin-socket-path".as_ref(),
        agent_admin.as_os_str(),
    ];
    let agent = children.agent.insert(Proc::spawn(
        "sigil-agent",
        &plan.bins.agent,
        &agent_args,
        &l.data_dir.join("agent.log"),
    )?);
    lock.record(&[
        ("sigil-dev", std::process::id()),
        (
            "sigil-server",
            children.server.as_ref().map_or(0, |p| p.pid),
        ),
        ("sigil-agent", agent.pid),
    ])?;
    let not_after = probe::wait_for_svid(agent, &socket, &plan.spiffe_id, deadline).await?;
    Ok(Ready { not_after })
}

/// The trust domain and dev SPIFFE ID from the flags: `--spiffe-id` alone implies its trust
/// domain; neither gives `spiffe://example.org/dev/<user>`.
fn identity(
    trust_domain: Option<TrustDomain>,
    spiffe_id: Option<SpiffeId>,
    user: &str,
) -> Result<(TrustDomain, SpiffeId)> {
    match (trust_domain, spiffe_id) {
        (Some(td), Some(id)) if id.trust_domain() != &td => bail!(
            "--spiffe-id {id} is not in --trust-domain {td}; give one of them, or matching ones"
        ),
        (_, Some(id)) if id.is_trust_domain_id() => {
            bail!("--spiffe-id {id} names a trust domain, not a workload: add a path")
        }
        (_, Some(id)) => Ok((id.trust_domain().clone(), id)),
        (td, None) => {
            let td = match td {
                Some(td) => td,
                None => TrustDomain::new("example.org")?,
            };
            let id = td.id_with_path(&format!("/dev/{user}"))?;
            Ok((td, id))
        }
    }
}

/// The invoking user's name as a SPIFFE path segment (letters, digits, `.`, `-`, `_`).
fn user_segment(uid: u32) -> String {
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();
    sanitize_segment(&name, uid)
}

fn sanitize_segment(name: &str, uid: u32) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.is_empty() || clean == "." || clean == ".." {
        format!("uid-{uid}")
    } else {
        clean
    }
}

fn ready_text(plan: &Plan, children: &Children, ready: &Ready) -> String {
    let l = &plan.layout;
    let sigil = &plan.bins.sigil;
    let pid = |p: &Option<Proc>| p.as_ref().map_or(0, |p| p.pid);
    let example_uid = if plan.uid == 1001 { 1002 } else { 1001 };
    let td = &plan.trust_domain;
    format!(
        "\
Sigil dev environment for trust domain {td}
  sigil-server  pid {server_pid}, agent API on 127.0.0.1:{port}, log {server_log}
  sigil-agent   pid {agent_pid}, node alias {alias}, log {agent_log}
  data          {data} (wiped at every start)

Workload API socket: {socket}
Your identity:       {id} (workloads running as uid {uid})
  X.509-SVID valid until {expiry}; the agent renews it at half its lifetime.

In another shell:
  export SPIFFE_ENDPOINT_SOCKET=unix://{socket}
  export SIGIL_ADMIN_SOCKET={admin}
  {sigil} agent api fetch x509     # your X.509-SVID and bundle (--write DIR saves them as PEM)
  {sigil} agent api watch          # every update as it happens, e.g. rotation (Ctrl-C ends)
  # register more workloads, e.g. everything running as uid {example_uid}:
  {sigil} entry create --parent-id {alias} --spiffe-id spiffe://{td}/dev/uid-{example_uid} --selector unix:uid:{example_uid}
  {sigil} entry list

sigil dev is ready. Ctrl-C stops the server and the agent.
",
        server_pid = pid(&children.server),
        agent_pid = pid(&children.agent),
        port = plan.port,
        server_log = l.server_log().display(),
        agent_log = l.agent_log().display(),
        alias = plan.alias,
        data = l.data_dir.display(),
        socket = l.workload_socket().display(),
        admin = l.admin_socket().display(),
        id = plan.spiffe_id,
        uid = plan.uid,
        expiry = output::format_unix(ready.not_after),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_become_path_segments() {
        assert_eq!(sanitize_segment("alice", 1000), "alice");
        assert_eq!(sanitize_segment("a.b-c_d9", 1000), "a.b-c_d9");
        assert_eq!(sanitize_segment("DOMAIN\\bob smith", 7), "DOMAIN-bob-smith");
        assert_eq!(sanitize_segment("", 7), "uid-7");
        assert_eq!(sanitize_segment("..", 7), "uid-7");
    }

    #[test]
    fn identity_defaults_and_conflicts() {
        let (td, id) = identity(None, None, "alice").unwrap();
        assert_eq!(td.to_string(), "example.org");
        assert_eq!(id.to_string(), "spiffe://example.org/dev/alice");

        let td_flag: TrustDomain = "corp.test".parse().unwrap();
        let (_, id) = identity(Some(td_flag.clone()), None, "alice").unwrap();
        assert_eq!(id.to_string(), "spiffe://corp.test/dev/alice");

        let mine: SpiffeId = "spiffe://corp.test/me".parse().unwrap();
        let (td, id) = identity(None, Some(mine.clone()), "alice").unwrap();
        assert_eq!((td.to_string(), id), ("corp.test".to_owned(), mine.clone()));
        assert!(identity(Some(td_flag), Some(mine), "alice").is_ok());

        let other: TrustDomain = "other.test".parse().unwrap();
        let err = identity(
            Some(other),
            Some("spiffe://corp.test/me".parse().unwrap()),
            "a",
        );
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("not in --trust-domain")
        );
        let err = identity(None, Some("spiffe://corp.test".parse().unwrap()), "a");
        assert!(err.unwrap_err().to_string().contains("add a path"));
    }
}
