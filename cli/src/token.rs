//! `sigil token generate`: one-time join tokens through the server's `Tokens` admin service.

use anyhow::Result;
use serde_json::json;
use sigil_proto::sigil::v1::tokens_client::TokensClient;
use sigil_proto::sigil::v1::{CreateJoinTokenRequest, JoinToken};

use crate::args::{Globals, OutputFormat, TokenCommand};
use crate::{connect, duration, output};

/// Runs one `token` subcommand against the admin socket.
pub async fn run(globals: &Globals, cmd: TokenCommand) -> Result<()> {
    let TokenCommand::Generate(args) = cmd;
    let mut client = TokensClient::new(connect::admin(globals).await?);
    let request = CreateJoinTokenRequest {
        ttl: duration::secs_i64(args.ttl),
        agent_alias_spiffe_id: args.spiffe_id.map(|id| id.to_string()).unwrap_or_default(),
        token: args.token.unwrap_or_default(),
    };
    let token = client.create_join_token(request).await?.into_inner();
    match globals.output {
        OutputFormat::Human => output::emit(&token_text(&token)),
        OutputFormat::Json => output::emit_json(&json!({
            "value": token.value,
            "expires_at": token.expires_at,
        })),
    }
}

/// `Token: <value>` first, so `awk '/^Token:/ {print $2}'` keeps working as it does with SPIRE.
fn token_text(token: &JoinToken) -> String {
    let mut out = format!("Token: {}\n", token.value);
    if token.expires_at != 0 {
        out.push_str(&format!(
            "Expires at: {}\n",
            output::format_unix(token.expires_at)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_printed_first() {
        let t = JoinToken {
            value: "abc".into(),
            expires_at: 600,
        };
        assert_eq!(
            token_text(&t),
            "Token: abc\nExpires at: 1970-01-01T00:10:00Z\n"
        );
        let t = JoinToken {
            value: "abc".into(),
            expires_at: 0,
        };
        assert_eq!(token_text(&t), "Token: abc\n");
    }
}
