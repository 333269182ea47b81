//! `sigil localauthority jwt|x509 show|prepare|activate`: manual rotation of the JWT signing keys
//! and the X.509 CA through the server's `LocalAuthority` admin service, as SPIRE's
//! `spire-server localauthority jwt|x509 ...`.
//!
//! The server rotates on its own schedule (prepare at half the active key's life, activate when a
//! sixth remains); these commands force it, e.g. after a suspected key compromise: `prepare`,
//! wait until relying parties have the new key (agents get it within seconds through sync), then
//! `activate --key-id <the prepared key>`.

use anyhow::Result;
use serde_json::{Value, json};
use sigil_proto::sigil::v1 as pb;
use sigil_proto::sigil::v1::local_authority_client::LocalAuthorityClient;

use crate::args::{
    Globals, LocalAuthorityCommand, LocalAuthorityJwtCommand, LocalAuthorityX509Command,
    OutputFormat,
};
use crate::connect;
use crate::output::{self, format_unix, line};

/// Runs one `localauthority` subcommand against the admin socket.
pub async fn run(globals: &Globals, cmd: LocalAuthorityCommand) -> Result<()> {
    let mut client = LocalAuthorityClient::new(connect::admin(globals).await?);
    let cmd = match cmd {
        LocalAuthorityCommand::Jwt(cmd) => cmd,
        LocalAuthorityCommand::X509(cmd) => return run_x509(globals, &mut client, cmd).await,
    };
    let (state, headline) = match cmd {
        LocalAuthorityJwtCommand::Show => (
            client
                .get_jwt_authority_state(pb::GetJwtAuthorityStateRequest {})
                .await?
                .into_inner(),
            None,
        ),
        LocalAuthorityJwtCommand::Prepare => (
            client
                .prepare_jwt_authority(pb::PrepareJwtAuthorityRequest {})
                .await?
                .into_inner(),
            Some("Prepared JWT authority (published, not yet signing)."),
        ),
        LocalAuthorityJwtCommand::Activate { key_id } => (
            client
                .activate_jwt_authority(pb::ActivateJwtAuthorityRequest {
                    key_id: key_id.unwrap_or_default(),
                })
                .await?
                .into_inner(),
            Some("Activated JWT authority (now signing)."),
        ),
    };
    emit(
        globals,
        headline,
        || describe(&state),
        || state_json(&state),
    )
}

/// Prints a rotation state: an optional headline and SPIRE-like blocks, or JSON.
fn emit(
    globals: &Globals,
    headline: Option<&str>,
    human: impl FnOnce() -> String,
    json: impl FnOnce() -> Value,
) -> Result<()> {
    match globals.output {
        OutputFormat::Human => {
            let mut text = String::new();
            if let Some(h) = headline {
                text.push_str(h);
                text.push_str("\n\n");
            }
            text.push_str(&human());
            output::emit(&text)
        }
        OutputFormat::Json => output::emit_json(&json()),
    }
}

async fn run_x509(
    globals: &Globals,
    client: &mut LocalAuthorityClient<tonic::transport::Channel>,
    cmd: LocalAuthorityX509Command,
) -> Result<()> {
    let (state, headline) = match cmd {
        LocalAuthorityX509Command::Show => (
            client
                .get_x509_authority_state(pb::GetX509AuthorityStateRequest {})
                .await?
                .into_inner(),
            None,
        ),
        LocalAuthorityX509Command::Prepare => (
            client
                .prepare_x509_authority(pb::PrepareX509AuthorityRequest {})
                .await?
                .into_inner(),
            Some("Prepared X.509 authority (published, not yet signing)."),
        ),
        LocalAuthorityX509Command::Activate { authority_id } => (
            client
                .activate_x509_authority(pb::ActivateX509AuthorityRequest {
                    authority_id: authority_id.unwrap_or_default(),
                })
                .await?
                .into_inner(),
            Some("Activated X.509 authority (now signing)."),
        ),
    };
    emit(
        globals,
        headline,
        || describe_x509(&state),
        || x509_json(&state),
    )
}

fn x509_block(title: &str, a: Option<&pb::X509AuthorityInfo>) -> String {
    let mut out = format!("{title}:\n");
    match a {
        None => out.push_str("  (none)\n"),
        Some(a) => {
            for l in [
                line("  Authority ID", &a.authority_id),
                line("  Not before", format_unix(a.not_before)),
                line("  Not after", format_unix(a.not_after)),
            ] {
                out.push_str(&l);
            }
        }
    }
    out
}

/// The X.509 rotation state as SPIRE-like blocks.
pub fn describe_x509(s: &pb::X509AuthorityState) -> String {
    let mut out = x509_block("Active X.509 authority", s.active.as_ref());
    out.push('\n');
    out.push_str(&x509_block("Prepared X.509 authority", s.prepared.as_ref()));
    out.push('\n');
    out.push_str(&line("Bundle sequence", s.bundle_sequence));
    out
}

/// The X.509 rotation state as JSON for scripts.
pub fn x509_json(s: &pb::X509AuthorityState) -> Value {
    use base64::Engine as _;
    let one = |a: &pb::X509AuthorityInfo| {
        json!({
            "authority_id": a.authority_id,
            "certificate": base64::engine::general_purpose::STANDARD.encode(&a.certificate),
            "not_before": a.not_before,
            "not_after": a.not_after,
        })
    };
    json!({
        "active": s.active.as_ref().map(one),
        "prepared": s.prepared.as_ref().map(one),
        "bundle_sequence": s.bundle_sequence,
    })
}

fn block(title: &str, k: Option<&pb::JwtAuthorityInfo>) -> String {
    let mut out = format!("{title}:\n");
    match k {
        None => out.push_str("  (none)\n"),
        Some(k) => {
            for l in [
                line("  Key ID", &k.key_id),
                line("  Algorithm", &k.algorithm),
                line("  Created at", format_unix(k.created_at)),
                line("  Expires at", format_unix(k.expires_at)),
            ] {
                out.push_str(&l);
            }
        }
    }
    out
}

/// The rotation state as SPIRE-like blocks.
pub fn describe(s: &pb::JwtAuthorityState) -> String {
    let mut out = block("Active JWT authority", s.active.as_ref());
    out.push('\n');
    out.push_str(&block("Prepared JWT authority", s.prepared.as_ref()));
    for k in &s.old {
        out.push('\n');
        out.push_str(&block("Old JWT authority", Some(k)));
    }
    out.push('\n');
    out.push_str(&line("Bundle sequence", s.bundle_sequence));
    out
}

fn key_json(k: &pb::JwtAuthorityInfo) -> Value {
    use base64::Engine as _;
    json!({
        "key_id": k.key_id,
        "algorithm": k.algorithm,
        "public_key": base64::engine::general_purpose::STANDARD.encode(&k.public_key),
        "created_at": k.created_at,
        "expires_at": k.expires_at,
    })
}

/// The rotation state as JSON for scripts.
pub fn state_json(s: &pb::JwtAuthorityState) -> Value {
    json!({
        "active": s.active.as_ref().map(key_json),
        "prepared": s.prepared.as_ref().map(key_json),
        "old": s.old.iter().map(key_json).collect::<Vec<_>>(),
        "bundle_sequence": s.bundle_sequence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x509_state_renders_both_slots() {
        let a = |id: &str| pb::X509AuthorityInfo {
            authority_id: id.into(),
            certificate: vec![1, 2, 3],
            not_before: 0,
            not_after: 86400,
        };
        let s = pb::X509AuthorityState {
            active: Some(a("ca-1")),
            prepared: None,
            bundle_sequence: 4,
        };
        let text = describe_x509(&s);
        assert!(
            text.contains("ca-1") && text.contains("(none)") && text.contains('4'),
            "{text}"
        );
        let j = x509_json(&pb::X509AuthorityState {
            prepared: Some(a("ca-2")),
            ..s
        });
        assert_eq!(j["prepared"]["authority_id"], "ca-2");
        assert_eq!(j["active"]["certificate"], "AQID");
    }

    fn key(id: &str) -> pb::JwtAuthorityInfo {
        pb::JwtAuthorityInfo {
            key_id: id.into(),
            public_key: vec![1, 2, 3],
            created_at: 0,
            expires_at: 86_400,
            algorithm: "ES256".into(),
        }
    }

    #[test]
    fn renders_every_key() {
        let s = pb::JwtAuthorityState {
            active: Some(key("act")),
            prepared: None,
            old: vec![key("old1")],
            bundle_sequence: 7,
        };
        let text = describe(&s);
        assert!(text.contains("Active JWT authority:\n  Key ID"), "{text}");
        assert!(text.contains("act"));
        assert!(text.contains("Prepared JWT authority:\n  (none)"), "{text}");
        assert!(text.contains("Old JWT authority:"));
        assert!(text.contains("old1"));
        assert!(text.contains("1970-01-02T00:00:00Z"));
        let v = state_json(&s);
        assert_eq!(v["active"]["key_id"], "act");
        assert_eq!(v["prepared"], Value::Null);
        assert_eq!(v["old"][0]["public_key"], "AQID");
        assert_eq!(v["bundle_sequence"], 7);
    }
}
