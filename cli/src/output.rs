//! Rendering of admin API messages: SPIRE-style `Label : value` blocks for people, JSON objects
//! for scripts, and the stdout writer both go through.
//!
//! prost messages do not derive `Serialize`, so JSON is spelled out field by field with the proto
//! field names; that also keeps the JSON contract visible in one place.

use std::io::Write;

use anyhow::Context;
use serde_json::{Value, json};
use sigil_proto::sigil::v1::{Agent, Entry, Selector};

/// Width of the label column, chosen so `Entry ID         : x` lines up exactly like SPIRE's.
const LABEL_WIDTH: usize = 16;

/// Writes text to stdout. A closed pipe (`sigil entry list | head`) ends output quietly instead
/// of panicking as `print!` would.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// Writes one pretty-printed JSON document and a newline to stdout.
pub fn emit_json(value: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding JSON output")?;
    text.push('\n');
    emit(&text)
}

/// One `Label : value` line, newline included.
pub fn line(label: &str, value: impl std::fmt::Display) -> String {
    format!("{label:<LABEL_WIDTH$} : {value}\n")
}

/// `Found 1 entry` / `Found 3 entries`: SPIRE's header, pluralised the same way.
pub fn found(n: usize, singular: &str, plural: &str) -> String {
    format!("Found {n} {}", if n == 1 { singular } else { plural })
}

/// Unix seconds as RFC 3339 UTC (`2024-05-01T12:00:00Z`); no time crate needed for one format.
pub fn format_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// `type:value`, the form operators type on the command line.
pub fn selector_text(s: &Selector) -> String {
    format!("{}:{}", s.r#type, s.value)
}

/// An entry as a SPIRE-style block, ending with a blank line.
pub fn entry_block(e: &Entry) -> String {
    let mut out = String::new();
    out.push_str(&line("Entry ID", &e.id));
    out.push_str(&line("SPIFFE ID", &e.spiffe_id));
    out.push_str(&line("Parent ID", &e.parent_id));
    out.push_str(&line("Revision", e.revision));
    if e.downstream {
        out.push_str(&line("Downstream", true));
    }
    out.push_str(&line("X509-SVID TTL", ttl_text(e.x509_svid_ttl)));
    out.push_str(&line("JWT-SVID TTL", ttl_text(e.jwt_svid_ttl)));
    let expiry = match e.expires_at {
        0 => "never".to_owned(),
        t => format_unix(t),
    };
    out.push_str(&line("Expiration time", expiry));
    if e.created_at != 0 {
        out.push_str(&line("Created at", format_unix(e.created_at)));
    }
    for s in &e.selectors {
        out.push_str(&line("Selector", selector_text(s)));
    }
    for td in &e.federates_with {
        out.push_str(&line("FederatesWith", td));
    }
    for name in &e.dns_names {
        out.push_str(&line("DNS name", name));
    }
    // Admin is rare; like SPIRE, only show it when set to keep blocks short.
    if e.admin {
        out.push_str(&line("Admin", true));
    }
    if !e.hint.is_empty() {
        out.push_str(&line("Hint", &e.hint));
    }
    out.push('\n');
    out
}

/// `Found N entries` followed by one block per entry.
pub fn entries_text(entries: &[Entry]) -> String {
    let mut out = found(entries.len(), "entry", "entries");
    out.push('\n');
    for e in entries {
        out.push_str(&entry_block(e));
    }
    out
}

/// An entry as a JSON object with the proto's field names.
pub fn entry_json(e: &Entry) -> Value {
    json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "parent_id": e.parent_id,
        "selectors": e.selectors.iter().map(selector_json).collect::<Vec<_>>(),
        "x509_svid_ttl": e.x509_svid_ttl,
        "jwt_svid_ttl": e.jwt_svid_ttl,
        "dns_names": e.dns_names,
        "federates_with": e.federates_with,
        "admin": e.admin,
        "downstream": e.downstream,
        "hint": e.hint,
        "expires_at": e.expires_at,
        "created_at": e.created_at,
        "revision": e.revision,
    })
}

/// `{"entries": [...]}`, the shape of a list answer.
pub fn entries_json(entries: &[Entry]) -> Value {
    json!({ "entries": entries.iter().map(entry_json).collect::<Vec<_>>() })
}

/// An agent as a block, ending with a blank line.
pub fn agent_block(a: &Agent) -> String {
    let mut out = String::new();
    out.push_str(&line("SPIFFE ID", &a.id));
    out.push_str(&line("Attestation type", &a.attestation_type));
    out.push_str(&line(
        "Expiration time",
        format_unix(a.x509_svid_expires_at),
    ));
    out.push_str(&line("Serial number", &a.x509_svid_serial));
    out.push_str(&line("Banned", a.banned));
    if a.created_at != 0 {
        out.push_str(&line("Created at", format_unix(a.created_at)));
    }
    for s in &a.selectors {
        out.push_str(&line("Selector", selector_text(s)));
    }
    out.push('\n');
    out
}

/// `Found N attested agents:`, a blank line, then one block per agent (SPIRE's layout).
pub fn agents_text(agents: &[Agent]) -> String {
    let mut out = found(agents.len(), "attested agent", "attested agents");
    out.push_str(":\n\n");
    for a in agents {
        out.push_str(&agent_block(a));
    }
    out
}

/// An agent as a JSON object with the proto's field names.
pub fn agent_json(a: &Agent) -> Value {
    json!({
        "id": a.id,
        "attestation_type": a.attestation_type,
        "x509_svid_serial": a.x509_svid_serial,
        "x509_svid_expires_at": a.x509_svid_expires_at,
        "selectors": a.selectors.iter().map(selector_json).collect::<Vec<_>>(),
        "banned": a.banned,
        "created_at": a.created_at,
    })
}

/// `{"agents": [...]}`, the shape of a list answer.
pub fn agents_json(agents: &[Agent]) -> Value {
    json!({ "agents": agents.iter().map(agent_json).collect::<Vec<_>>() })
}

fn selector_json(s: &Selector) -> Value {
    json!({ "type": s.r#type, "value": s.value })
}

/// SPIRE prints TTLs as plain seconds, and `default` for 0 (the server's configured value).
fn ttl_text(secs: i64) -> String {
    match secs {
        0 => "default".to_owned(),
        s => s.to_string(),
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`), valid for every i64 day count we can be handed.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(t: &str, v: &str) -> Selector {
        Selector {
            r#type: t.into(),
            value: v.into(),
        }
    }

    fn sample_entry() -> Entry {
        Entry {
            id: "e-1".into(),
            spiffe_id: "spiffe://example.org/web".into(),
            parent_id: "spiffe://example.org/sigil/agent/join_token/t".into(),
            selectors: vec![sel("unix", "uid:1000"), sel("unix", "gid:1000")],
            x509_svid_ttl: 3_600,
            jwt_svid_ttl: 0,
            dns_names: vec!["web.example.org".into()],
            federates_with: vec!["other.org".into()],
            admin: false,
            downstream: false,
            hint: String::new(),
            expires_at: 0,
            created_at: 0,
            revision: 7,
        }
    }

    #[test]
    fn entry_block_matches_spire_layout() {
        let want = "\
Entry ID         : e-1
SPIFFE ID        : spiffe://example.org/web
Parent ID        : spiffe://example.org/sigil/agent/join_token/t
Revision         : 7
X509-SVID TTL    : 3600
JWT-SVID TTL     : default
Expiration time  : never
Selector         : unix:uid:1000
Selector         : unix:gid:1000
FederatesWith    : other.org
DNS name         : web.example.org

";
        assert_eq!(entry_block(&sample_entry()), want);
    }

    #[test]
    fn optional_entry_lines_appear_when_set() {
        let mut e = sample_entry();
        e.admin = true;
        e.downstream = true;
        e.hint = "primary".into();
        e.expires_at = 1_700_000_000;
        let text = entry_block(&e);
        assert!(text.contains("Downstream       : true\n"), "{text}");
        assert!(text.contains("Admin            : true\n"), "{text}");
        assert!(text.contains("Hint             : primary\n"), "{text}");
        assert!(
            text.contains("Expiration time  : 2023-11-14T22:13:20Z\n"),
            "{text}"
        );
    }

    #[test]
    fn list_header_is_pluralised() {
        assert!(entries_text(&[]).starts_with("Found 0 entries\n"));
        assert!(entries_text(&[sample_entry()]).starts_with("Found 1 entry\nEntry ID"));
        let two = entries_text(&[sample_entry(), sample_entry()]);
        assert!(two.starts_with("Found 2 entries\n"));
        assert!(
            two.contains("web.example.org\n\nEntry ID"),
            "blank line between entries"
        );
        assert!(agents_text(&[]).starts_with("Found 0 attested agents:\n\n"));
    }

    #[test]
    fn entry_json_uses_proto_field_names() {
        let v = entry_json(&sample_entry());
        assert_eq!(v["id"], "e-1");
        assert_eq!(
            v["selectors"][0],
            json!({"type": "unix", "value": "uid:1000"})
        );
        assert_eq!(v["x509_svid_ttl"], 3_600);
        assert_eq!(v["revision"], 7);
        assert_eq!(v["federates_with"], json!(["other.org"]));
        assert_eq!(entries_json(&[]), json!({"entries": []}));
    }

    #[test]
    fn agent_rendering() {
        let a = Agent {
            id: "spiffe://example.org/sigil/agent/join_token/t".into(),
            attestation_type: "join_token".into(),
            x509_svid_serial: "1234".into(),
            x509_svid_expires_at: 0,
            selectors: vec![sel("join_token", "t")],
            banned: true,
            created_at: 0,
        };
        let text = agent_block(&a);
        assert!(text.starts_with("SPIFFE ID        : spiffe://example.org/sigil/agent/"));
        assert!(text.contains("Attestation type : join_token\n"));
        assert!(text.contains("Expiration time  : 1970-01-01T00:00:00Z\n"));
        assert!(text.contains("Banned           : true\n"));
        assert!(text.contains("Selector         : join_token:t\n"));
        assert_eq!(agent_json(&a)["banned"], true);
        assert_eq!(agents_json(&[a])["agents"][0]["x509_svid_serial"], "1234");
    }

    #[test]
    fn formats_unix_times() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(format_unix(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(format_unix(-1), "1969-12-31T23:59:59Z");
        // Extremes must not panic, whatever a peer sends.
        let _ = format_unix(i64::MAX);
        let _ = format_unix(i64::MIN);
    }
}
