//! The command tree, declared with clap's derive API.
//!
//! Raw strings stop here: SPIFFE IDs, trust domains, selectors and durations are parsed into
//! sigil-core types (or `Duration`) by clap, so a typo is reported with the flag that held it
//! before any socket is opened. The server still validates everything; this is for nicer errors.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sigil_core::{Selector, SpiffeId, TrustDomain};

use crate::duration;

/// `sigil`: operate a Sigil server and query a Sigil agent's Workload API.
#[derive(Debug, Parser)]
#[command(name = "sigil", version, about, propagate_version = true)]
pub struct Cli {
    /// Unix socket to talk to (a path, or unix:///path). Admin commands: the server's admin
    /// socket, else $SIGIL_ADMIN_SOCKET, else /tmp/sigil-server/private/api.sock. `agent api`
    /// commands: the agent's Workload API, else $SPIFFE_ENDPOINT_SOCKET, else
    /// /tmp/sigil-agent/public/api.sock.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help_heading = "Global options"
    )]
    pub socket: Option<String>,

    /// Output style: human-readable blocks, or JSON objects for scripts.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = OutputFormat::Human,
        help_heading = "Global options"
    )]
    pub output: OutputFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The global flags, split off the command so each command module receives only what it needs.
#[derive(Debug, Clone)]
pub struct Globals {
    /// `--socket` as given (a path or `unix:` URI); each command family picks its own fallback.
    pub socket: Option<String>,
    /// `--output`.
    pub output: OutputFormat,
}

impl Cli {
    /// Separates the global flags from the command to run.
    pub fn into_parts(self) -> (Globals, Command) {
        let globals = Globals {
            socket: self.socket,
            output: self.output,
        };
        (globals, self.command)
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// SPIRE-like `Label : value` blocks.
    #[value(alias = "pretty")]
    Human,
    /// One JSON document on stdout.
    Json,
}

/// Top-level command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage registration entries (server admin API).
    #[command(subcommand)]
    Entry(EntryCommand),
    /// Manage join tokens (server admin API).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage attested agents (server admin API), or query the Workload API (`agent api`).
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Show and manage trust bundles (server admin API).
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Server checks.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Rotate the server's signing authorities by hand (server admin API).
    #[command(subcommand, name = "localauthority")]
    LocalAuthority(LocalAuthorityCommand),
    /// Run a local server and agent with your uid registered, for development (Ctrl-C stops).
    Dev(DevArgs),
}

/// Flags of `sigil dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for the store, agent state, logs and (if the path is short) sockets. It is
    /// wiped at every start; a non-empty directory not made by `sigil dev` is refused.
    #[arg(long, value_name = "DIR", default_value = ".sigil-dev")]
    pub data_dir: PathBuf,
    /// Trust domain of the dev server [default: example.org, or that of --spiffe-id].
    #[arg(long, value_name = "TRUST_DOMAIN")]
    pub trust_domain: Option<TrustDomain>,
    /// SPIFFE ID registered for your uid [default: spiffe://<trust domain>/dev/<user name>].
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<SpiffeId>,
    /// Port of the server's agent API, on 127.0.0.1.
    #[arg(long, default_value_t = 18081)]
    pub port: u16,
    /// Give up if the server, the agent and your SVID are not ready within this long.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = duration::parse_positive
    )]
    pub timeout: Duration,
}

/// `sigil entry ...`
#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Create a registration entry.
    Create(EntryCreateArgs),
    /// Show one entry by ID.
    Show {
        /// Entry ID.
        id: String,
    },
    /// List entries, optionally filtered; follows pagination to the end.
    List(EntryListArgs),
    /// Change fields of an existing entry; fields not given keep their value.
    Update(EntryUpdateArgs),
    /// Delete an entry by ID.
    Delete {
        /// Entry ID.
        id: String,
    },
}

/// Flags of `entry create`.
#[derive(Debug, Args)]
pub struct EntryCreateArgs {
    /// SPIFFE ID the matching workloads receive.
    #[arg(long, value_name = "ID")]
    pub spiffe_id: SpiffeId,
    /// SPIFFE ID of the agent (or node alias entry) the workload must run under.
    #[arg(long, value_name = "ID")]
    pub parent_id: SpiffeId,
    /// A selector the workload must have, e.g. unix:uid:1000 (repeat for several).
    #[arg(long = "selector", value_name = "TYPE:VALUE", required = true)]
    pub selectors: Vec<Selector>,
    /// Use this entry ID instead of a server-assigned one.
    #[arg(long, value_name = "ID")]
    pub entry_id: Option<String>,
    /// Optional fields shared with `entry update`.
    #[command(flatten)]
    pub fields: EntryFields,
}

/// Flags of `entry update`: everything optional, given values replace the stored ones.
#[derive(Debug, Args)]
pub struct EntryUpdateArgs {
    /// ID of the entry to change.
    #[arg(long, value_name = "ID")]
    pub entry_id: String,
    /// New SPIFFE ID.
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<SpiffeId>,
    /// New parent ID.
    #[arg(long, value_name = "ID")]
    pub parent_id: Option<SpiffeId>,
    /// Replaces all selectors when given (repeat for several).
    #[arg(long = "selector", value_name = "TYPE:VALUE")]
    pub selectors: Vec<Selector>,
    /// Optional fields shared with `entry create`.
    #[command(flatten)]
    pub fields: EntryFields,
}

/// Entry fields that both create and update accept.
#[derive(Debug, Args)]
pub struct EntryFields {
    /// X.509-SVID lifetime (90s, 10m, 1h, 2h30m, 1d, or seconds); 0 means the server default.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub x509_svid_ttl: Option<Duration>,
    /// JWT-SVID lifetime; 0 means the server default.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub jwt_svid_ttl: Option<Duration>,
    /// DNS name to put in the X.509-SVID (repeat for several; on update, replaces all).
    #[arg(long = "dns-name", value_name = "NAME")]
    pub dns_names: Vec<String>,
    /// Trust domain whose bundle the workload also receives (repeat; on update, replaces all).
    #[arg(long = "federates-with", value_name = "TRUST_DOMAIN")]
    pub federates_with: Vec<TrustDomain>,
    /// Workloads of this entry may call the admin API (`--admin=false` to clear on update).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub admin: Option<bool>,
    /// Workloads of this entry may mint downstream CAs (`--downstream=false` to clear).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub downstream: Option<bool>,
    /// Hint telling a workload with several SVIDs which one this is (empty clears).
    #[arg(long, value_name = "TEXT")]
    pub hint: Option<String>,
    /// Unix seconds after which the entry is void; 0 means never.
    #[arg(long, value_name = "UNIX_SECS", value_parser = clap::value_parser!(i64).range(0..))]
    pub entry_expiry: Option<i64>,
}

/// Flags of `entry list`.
#[derive(Debug, Args)]
pub struct EntryListArgs {
    /// Only entries with this SPIFFE ID.
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<SpiffeId>,
    /// Only entries with this parent ID.
    #[arg(long, value_name = "ID")]
    pub parent_id: Option<SpiffeId>,
    /// Only entries holding this selector (repeat: entries holding all of them).
    #[arg(long = "selector", value_name = "TYPE:VALUE")]
    pub selectors: Vec<Selector>,
    /// Entries per request; 0 lets the server choose.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub page_size: u32,
}

/// `sigil token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a one-time join token for attesting a new agent.
    Generate(TokenGenerateArgs),
}

/// Flags of `token generate`.
#[derive(Debug, Args)]
pub struct TokenGenerateArgs {
    /// Also create a node alias entry with this SPIFFE ID for the agent that uses the token.
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<SpiffeId>,
    /// How long the token stays usable.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10m",
        value_parser = duration::parse_positive
    )]
    pub ttl: Duration,
    /// Use this token value instead of a random one (tests and scripted setups).
    #[arg(long, value_name = "VALUE")]
    pub token: Option<String>,
}

/// `sigil agent ...`: two families on one noun, as in SPIRE, but talking to different sockets.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Server-side agent management (admin socket).
    #[command(flatten)]
    Admin(AgentAdminCommand),
    /// Talk to the local agent's SPIFFE Workload API, as a workload would.
    #[command(subcommand)]
    Api(ApiCommand),
}

/// `sigil agent list|show|ban|evict`.
#[derive(Debug, Subcommand)]
pub enum AgentAdminCommand {
    /// List attested agents; follows pagination to the end.
    List,
    /// Show one attested agent.
    Show {
        /// The agent's SPIFFE ID.
        id: SpiffeId,
    },
    /// Ban an agent: it cannot renew or re-attest until its record is deleted.
    Ban {
        /// The agent's SPIFFE ID.
        id: SpiffeId,
    },
    /// Evict an agent: delete its record so it must attest again.
    Evict {
        /// The agent's SPIFFE ID.
        id: SpiffeId,
    },
}

/// `sigil agent api ...`
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Fetch SVIDs or bundles once.
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Print every X.509-SVID update until the stream ends or Ctrl-C.
    Watch,
    /// Validate credentials with the agent.
    #[command(subcommand)]
    Validate(ValidateCommand),
}

/// `sigil agent api fetch ...`
#[derive(Debug, Subcommand)]
pub enum FetchCommand {
    /// Fetch the caller's X.509-SVIDs and bundles.
    X509(FetchX509Args),
    /// Fetch JWT-SVIDs for an audience.
    Jwt(FetchJwtArgs),
    /// Fetch the JWT bundles (JWK sets) the caller should trust.
    #[command(name = "jwtbundles")]
    JwtBundles(TimeoutArg),
}

/// A bound on how long to wait for the agent's first answer.
#[derive(Debug, Args)]
pub struct TimeoutArg {
    /// Give up after this long.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = duration::parse_positive
    )]
    pub timeout: Duration,
}

/// Flags of `agent api fetch x509`.
#[derive(Debug, Args)]
pub struct FetchX509Args {
    /// Write svid.N.pem, svid.N.key, bundle.N.pem and federated_bundle.N.M.pem into DIR.
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,
    /// How long to wait.
    #[command(flatten)]
    pub timeout: TimeoutArg,
}

/// Flags of `agent api fetch jwt`.
#[derive(Debug, Args)]
pub struct FetchJwtArgs {
    /// Audience the token is for (repeat for several).
    #[arg(long = "audience", value_name = "AUDIENCE", required = true)]
    pub audiences: Vec<String>,
    /// Only this one of the caller's SPIFFE IDs.
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<SpiffeId>,
    /// How long to wait.
    #[command(flatten)]
    pub timeout: TimeoutArg,
}

/// `sigil agent api validate ...`
#[derive(Debug, Subcommand)]
pub enum ValidateCommand {
    /// Ask the agent whether a JWT-SVID is valid for an audience.
    Jwt(ValidateJwtArgs),
}

/// Flags of `agent api validate jwt`.
#[derive(Debug, Args)]
pub struct ValidateJwtArgs {
    /// The audience the token must carry.
    #[arg(long, value_name = "AUDIENCE")]
    pub audience: String,
    /// The JWT-SVID (compact serialization).
    #[arg(long, value_name = "TOKEN")]
    pub svid: String,
    /// How long to wait.
    #[command(flatten)]
    pub timeout: TimeoutArg,
}

/// Bundle document formats on stdin/stdout and in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BundleFormat {
    /// X.509 authorities as PEM `CERTIFICATE` blocks.
    Pem,
    /// The SPIFFE bundle JSON document (a JWK set).
    Spiffe,
}

/// `sigil bundle ...`
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Show this server's own trust bundle.
    Show {
        /// Document format.
        #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
        format: BundleFormat,
    },
    /// List the federated bundles.
    List {
        /// Document format.
        #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
        format: BundleFormat,
    },
    /// Create or replace the federated bundle of a trust domain.
    Set {
        /// Trust domain (spiffe://example.org or example.org).
        #[arg(long, value_name = "TRUST_DOMAIN")]
        id: TrustDomain,
        /// File holding the bundle; stdin when absent.
        #[arg(long, value_name = "FILE")]
        path: Option<PathBuf>,
        /// Format of the input.
        #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
        format: BundleFormat,
    },
    /// Delete the federated bundle of a trust domain.
    Delete {
        /// Trust domain (spiffe://example.org or example.org).
        #[arg(long, value_name = "TRUST_DOMAIN")]
        id: TrustDomain,
    },
}

/// `sigil localauthority ...`
#[derive(Debug, Subcommand)]
pub enum LocalAuthorityCommand {
    /// JWT-SVID signing keys.
    #[command(subcommand)]
    Jwt(LocalAuthorityJwtCommand),
    /// X.509 certificate authorities.
    #[command(subcommand)]
    X509(LocalAuthorityX509Command),
}

/// `sigil localauthority x509 ...`
#[derive(Debug, Subcommand)]
pub enum LocalAuthorityX509Command {
    /// Show the active and prepared X.509 CAs.
    Show,
    /// Create the next X.509 CA and publish its root in the bundle (it does not sign yet).
    Prepare,
    /// Make the prepared CA the signing one; the old root stays published until it expires.
    Activate {
        /// Only if the prepared CA has this ID (as printed by `prepare`).
        #[arg(long, value_name = "AUTHORITY_ID")]
        authority_id: Option<String>,
    },
}

/// `sigil localauthority jwt ...`
#[derive(Debug, Subcommand)]
pub enum LocalAuthorityJwtCommand {
    /// Show the active, prepared and old JWT signing keys.
    Show,
    /// Generate the next JWT signing key and publish it in the bundle (it does not sign yet).
    Prepare,
    /// Make the prepared key the signing key; the previous one stays published until it expires.
    Activate {
        /// Only if the prepared key has this ID (as printed by `prepare`).
        #[arg(long, value_name = "KEY_ID")]
        key_id: Option<String>,
    },
}

/// `sigil server ...`
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Check that the server answers and is serving; exit 0 when healthy.
    Healthcheck {
        /// Also print the trust domain and store revision.
        #[arg(long)]
        verbose: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sigil").chain(args.iter().copied()))
    }

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_subcommands() {
        let cli = parse(&["entry", "show", "abc", "--socket", "/s", "--output", "json"]).unwrap();
        assert_eq!(cli.socket.as_deref(), Some("/s"));
        assert_eq!(cli.output, OutputFormat::Json);
        let cli = parse(&["agent", "api", "fetch", "x509", "--socket", "unix:///a"]).unwrap();
        assert_eq!(cli.socket.as_deref(), Some("unix:///a"));
    }

    #[test]
    fn bad_values_name_their_flag() {
        let err = parse(&["token", "generate", "--ttl", "10x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--ttl"), "{err}");
        let err = parse(&[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://td/a",
            "--parent-id",
            "spiffe://td/p",
            "--selector",
            "nocolon",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--selector"), "{err}");
        let err = parse(&["agent", "show", "http://x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("scheme"), "{err}");
    }

    #[test]
    fn boolean_flags_take_optional_values() {
        let cli = parse(&[
            "entry",
            "update",
            "--entry-id",
            "e",
            "--admin",
            "--downstream=false",
        ])
        .unwrap();
        let Command::Entry(EntryCommand::Update(u)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(u.fields.admin, Some(true));
        assert_eq!(u.fields.downstream, Some(false));
        assert_eq!(u.fields.hint, None);
        assert!(u.selectors.is_empty());
    }
}
