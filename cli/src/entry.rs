//! `sigil entry ...`: registration entries through the server's `Entries` admin service.
//!
//! Create and update go through the batch RPCs with a single item; a non-zero per-item code is
//! reported exactly like a failed call.

use anyhow::{Result, bail};
use sigil_proto::sigil::v1::entries_client::EntriesClient;
use sigil_proto::sigil::v1::{
    BatchCreateEntryRequest, BatchDeleteEntryRequest, BatchEntryResponse, BatchUpdateEntryRequest,
    Entry, GetEntryRequest, ListEntriesRequest,
};
use tonic::transport::Channel;

use crate::args::{
    EntryCommand, EntryCreateArgs, EntryFields, EntryUpdateArgs, Globals, OutputFormat,
};
use crate::{connect, duration, output, status};

/// Runs one `entry` subcommand against the admin socket.
pub async fn run(globals: &Globals, cmd: EntryCommand) -> Result<()> {
    // Refuse an empty update before touching the socket: it is a usage mistake, not a failure.
    if let EntryCommand::Update(args) = &cmd
        && !changes_something(args)
    {
        bail!("nothing to update: give at least one field flag besides --entry-id");
    }
    let mut client = EntriesClient::new(connect::admin(globals).await?);
    let out = globals.output;
    match cmd {
        EntryCommand::Create(args) => {
            let request = BatchCreateEntryRequest {
                entries: vec![new_entry(args)],
            };
            let response = client.batch_create_entry(request).await?.into_inner();
            print_entry(out, &single_result(response)?)
        }
        EntryCommand::Show { id } => {
            let entry = client.get_entry(GetEntryRequest { id }).await?.into_inner();
            match out {
                OutputFormat::Human => output::emit(&output::entries_text(&[entry])),
                OutputFormat::Json => output::emit_json(&output::entry_json(&entry)),
            }
        }
        EntryCommand::List(args) => {
            let filter = ListEntriesRequest {
                by_spiffe_id: args.spiffe_id.map(|id| id.to_string()).unwrap_or_default(),
                by_parent_id: args.parent_id.map(|id| id.to_string()).unwrap_or_default(),
                by_selectors: args.selectors.iter().map(proto_selector).collect(),
                page_size: args.page_size,
                page_token: String::new(),
            };
            let entries = list_all(&mut client, filter).await?;
            match out {
                OutputFormat::Human => output::emit(&output::entries_text(&entries)),
                OutputFormat::Json => output::emit_json(&output::entries_json(&entries)),
            }
        }
        EntryCommand::Update(args) => {
            let request = GetEntryRequest {
                id: args.entry_id.clone(),
            };
            let mut entry = client.get_entry(request).await?.into_inner();
            apply_update(&mut entry, args);
            let request = BatchUpdateEntryRequest {
                entries: vec![entry],
            };
            let response = client.batch_update_entry(request).await?.into_inner();
            print_entry(out, &single_result(response)?)
        }
        EntryCommand::Delete { id } => {
            let request = BatchDeleteEntryRequest {
                ids: vec![id.clone()],
            };
            let response = client.batch_delete_entry(request).await?.into_inner();
            let Some(result) = response.results.first() else {
                bail!("server returned no result for the deletion");
            };
            if result.code != 0 {
                return Err(status::item_failure(result.code, &result.message));
            }
            match out {
                OutputFormat::Human => output::emit(&format!("Deleted entry with ID: {id}\n")),
                OutputFormat::Json => output::emit_json(&serde_json::json!({ "id": id })),
            }
        }
    }
}

/// Converts a parsed selector to its wire form.
pub fn proto_selector(s: &sigil_core::Selector) -> sigil_proto::sigil::v1::Selector {
    sigil_proto::sigil::v1::Selector {
        r#type: s.kind().to_owned(),
        value: s.value().to_owned(),
    }
}

fn print_entry(out: OutputFormat, entry: &Entry) -> Result<()> {
    match out {
        OutputFormat::Human => output::emit(&output::entry_block(entry)),
        OutputFormat::Json => output::emit_json(&output::entry_json(entry)),
    }
}

/// The one item of a single-entry batch answer, or its failure as an error.
fn single_result(response: BatchEntryResponse) -> Result<Entry> {
    let Some(result) = response.results.into_iter().next() else {
        bail!("server returned no result for the entry");
    };
    if result.code != 0 {
        return Err(status::item_failure(result.code, &result.message));
    }
    match result.entry {
        Some(entry) => Ok(entry),
        None => bail!("server reported success but returned no entry"),
    }
}

async fn list_all(
    client: &mut EntriesClient<Channel>,
    mut request: ListEntriesRequest,
) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    loop {
        let page = client.list_entries(request.clone()).await?.into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return Ok(entries);
        }
        // A server that hands back the token it was given would keep us looping forever.
        if page.next_page_token == request.page_token {
            bail!("server returned the same page token twice; stopping");
        }
        request.page_token = page.next_page_token;
    }
}

fn new_entry(args: EntryCreateArgs) -> Entry {
    let mut entry = Entry {
        id: args.entry_id.unwrap_or_default(),
        spiffe_id: args.spiffe_id.to_string(),
        parent_id: args.parent_id.to_string(),
        selectors: args.selectors.iter().map(proto_selector).collect(),
        ..Entry::default()
    };
    apply_fields(&mut entry, args.fields);
    entry
}

fn changes_something(args: &EntryUpdateArgs) -> bool {
    let f = &args.fields;
    args.spiffe_id.is_some()
        || args.parent_id.is_some()
        || !args.selectors.is_empty()
        || f.x509_svid_ttl.is_some()
        || f.jwt_svid_ttl.is_some()
        || !f.dns_names.is_empty()
        || !f.federates_with.is_empty()
        || f.admin.is_some()
        || f.downstream.is_some()
        || f.hint.is_some()
        || f.entry_expiry.is_some()
}

/// Replaces the fields the operator gave; `id`, `revision` and `created_at` stay as fetched so
/// the server can match the entry (and detect a concurrent change by revision).
fn apply_update(entry: &mut Entry, args: EntryUpdateArgs) {
    if let Some(id) = args.spiffe_id {
        entry.spiffe_id = id.to_string();
    }
    if let Some(id) = args.parent_id {
        entry.parent_id = id.to_string();
    }
    if !args.selectors.is_empty() {
        entry.selectors = args.selectors.iter().map(proto_selector).collect();
    }
    apply_fields(entry, args.fields);
}

fn apply_fields(entry: &mut Entry, f: EntryFields) {
    if let Some(ttl) = f.x509_svid_ttl {
        entry.x509_svid_ttl = duration::secs_i64(ttl);
    }
    if let Some(ttl) = f.jwt_svid_ttl {
        entry.jwt_svid_ttl = duration::secs_i64(ttl);
    }
    if !f.dns_names.is_empty() {
        entry.dns_names = f.dns_names;
    }
    if !f.federates_with.is_empty() {
        // The wire carries bare trust domain names; the flag accepts either spelling.
        entry.federates_with = f
            .federates_with
            .iter()
            .map(|td| td.as_str().to_owned())
            .collect();
    }
    if let Some(admin) = f.admin {
        entry.admin = admin;
    }
    if let Some(downstream) = f.downstream {
        entry.downstream = downstream;
    }
    if let Some(hint) = f.hint {
        entry.hint = hint;
    }
    if let Some(expiry) = f.entry_expiry {
        entry.expires_at = expiry;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;
    use sigil_proto::sigil::v1::{EntryResult, Selector};

    fn command(args: &[&str]) -> EntryCommand {
        let cli =
            Cli::try_parse_from(std::iter::once("sigil").chain(args.iter().copied())).unwrap();
        match cli.command {
            Command::Entry(cmd) => cmd,
            other => panic!("not an entry command: {other:?}"),
        }
    }

    #[test]
    fn create_flags_fill_the_entry() {
        let EntryCommand::Create(args) = command(&[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/web",
            "--parent-id",
            "spiffe://example.org/agent",
            "--selector",
            "unix:uid:1000",
            "--selector",
            "k8s:pod-label:app:web",
            "--x509-svid-ttl",
            "1h",
            "--jwt-svid-ttl",
            "5m",
            "--dns-name",
            "web",
            "--federates-with",
            "spiffe://other.org",
            "--admin",
            "--hint",
            "h",
            "--entry-expiry",
            "1700000000",
            "--entry-id",
            "fixed",
        ]) else {
            panic!("not create");
        };
        let e = new_entry(args);
        assert_eq!(e.id, "fixed");
        assert_eq!(e.spiffe_id, "spiffe://example.org/web");
        assert_eq!(e.parent_id, "spiffe://example.org/agent");
        assert_eq!(
            e.selectors,
            vec![
                Selector {
                    r#type: "unix".into(),
                    value: "uid:1000".into()
                },
                Selector {
                    r#type: "k8s".into(),
                    value: "pod-label:app:web".into()
                },
            ]
        );
        assert_eq!((e.x509_svid_ttl, e.jwt_svid_ttl), (3_600, 300));
        assert_eq!(e.dns_names, vec!["web"]);
        assert_eq!(e.federates_with, vec!["other.org"]);
        assert!(e.admin && !e.downstream);
        assert_eq!(e.hint, "h");
        assert_eq!(e.expires_at, 1_700_000_000);
    }

    #[test]
    fn create_requires_a_selector() {
        let err = Cli::try_parse_from([
            "sigil",
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://td/a",
            "--parent-id",
            "spiffe://td/p",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--selector"), "{err}");
    }

    #[test]
    fn update_replaces_only_given_fields() {
        let mut entry = Entry {
            id: "e".into(),
            spiffe_id: "spiffe://example.org/old".into(),
            parent_id: "spiffe://example.org/agent".into(),
            selectors: vec![Selector {
                r#type: "unix".into(),
                value: "uid:1".into(),
            }],
            x509_svid_ttl: 60,
            dns_names: vec!["keep".into()],
            admin: true,
            hint: "keep".into(),
            revision: 9,
            ..Entry::default()
        };
        let EntryCommand::Update(args) = command(&[
            "entry",
            "update",
            "--entry-id",
            "e",
            "--spiffe-id",
            "spiffe://example.org/new",
            "--jwt-svid-ttl",
            "90s",
            "--admin=false",
        ]) else {
            panic!("not update");
        };
        assert!(changes_something(&args));
        apply_update(&mut entry, args);
        assert_eq!(entry.spiffe_id, "spiffe://example.org/new");
        assert_eq!(entry.parent_id, "spiffe://example.org/agent");
        assert_eq!(entry.selectors.len(), 1);
        assert_eq!((entry.x509_svid_ttl, entry.jwt_svid_ttl), (60, 90));
        assert_eq!(entry.dns_names, vec!["keep"]);
        assert!(!entry.admin);
        assert_eq!(entry.hint, "keep");
        assert_eq!(
            entry.revision, 9,
            "revision travels back for the server's check"
        );
    }

    #[test]
    fn update_without_fields_is_refused() {
        let EntryCommand::Update(args) = command(&["entry", "update", "--entry-id", "e"]) else {
            panic!("not update");
        };
        assert!(!changes_something(&args));
    }

    #[test]
    fn item_codes_become_errors() {
        let failed = BatchEntryResponse {
            results: vec![EntryResult {
                entry: None,
                code: 6,
                message: "similar entry".into(),
            }],
        };
        let err = single_result(failed).unwrap_err();
        assert_eq!(status::render(&err), "AlreadyExists: similar entry");
        let empty = BatchEntryResponse { results: vec![] };
        assert!(single_result(empty).is_err());
        let ok = BatchEntryResponse {
            results: vec![EntryResult {
                entry: Some(Entry::default()),
                code: 0,
                message: String::new(),
            }],
        };
        assert!(single_result(ok).is_ok());
    }
}
