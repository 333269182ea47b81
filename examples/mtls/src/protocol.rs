//! The example's line protocol, over one mutually authenticated TLS connection.
//!
//! ```text
//! client: ping 7\n
//! server: pong 7 spiffe://example.org/demo/client\n
//! ```
//! The server echoes the SPIFFE ID it authenticated the client as, so the client can check that
//! the identity it meant to present is the one the server saw. A malformed request gets
//! `error <reason>\n` and the connection is closed. Lines are bounded by [`MAX_LINE`]: the peer
//! controls them.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// The longest line either side accepts, newline included.
pub const MAX_LINE: u64 = 1024;

/// A request line (`ping N`) without its newline, or `None` when it is not one.
pub fn parse_ping(line: &str) -> Option<u64> {
    line.strip_prefix("ping ")?.parse().ok()
}

/// The request line for sequence number `n`, newline included.
pub fn ping(n: u64) -> String {
    format!("ping {n}\n")
}

/// The answer line to `ping n` from a client authenticated as `client_id`, newline included.
pub fn pong(n: u64, client_id: &str) -> String {
    format!("pong {n} {client_id}\n")
}

/// An answer line (`pong N ID`) without its newline, as `(N, ID)`, or `None` when it is not one.
pub fn parse_pong(line: &str) -> Option<(u64, &str)> {
    let (n, id) = line.strip_prefix("pong ")?.split_once(' ')?;
    Some((n.parse().ok()?, id))
}

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The transport failed (this includes TLS alerts such as an authorization refusal).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No newline within [`MAX_LINE`] bytes, or the stream ended in the middle of a line.
    #[error("no end of line within {MAX_LINE} bytes or before the end of the stream")]
    Unterminated,
    /// The line is not UTF-8.
    #[error("line is not UTF-8")]
    NotUtf8,
}

/// Reads one newline-terminated line, without the newline; `Ok(None)` at a clean end of stream.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<String>, LineError> {
    let mut buf = Vec::new();
    let n = reader.take(MAX_LINE).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.pop() != Some(b'\n') {
        return Err(LineError::Unterminated);
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| LineError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(parse_ping(ping(7).trim_end()), Some(7));
        let line = pong(7, "spiffe://td/c");
        assert_eq!(parse_pong(line.trim_end()), Some((7, "spiffe://td/c")));
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in ["", "ping", "ping x", "ping -1", "PING 1", "ping 1 2"] {
            assert_eq!(parse_ping(bad), None, "{bad:?}");
        }
        for bad in ["pong 1", "pong x id", "error nope"] {
            assert_eq!(parse_pong(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn reads_bounded_lines() {
        let mut input: &[u8] = b"ping 1\nping 2\n";
        assert_eq!(
            read_line(&mut input).await.unwrap().as_deref(),
            Some("ping 1")
        );
        assert_eq!(
            read_line(&mut input).await.unwrap().as_deref(),
            Some("ping 2")
        );
        assert!(read_line(&mut input).await.unwrap().is_none());

        let long = vec![b'a'; 2 * MAX_LINE as usize];
        let mut input: &[u8] = &long;
        assert!(matches!(
            read_line(&mut input).await,
            Err(LineError::Unterminated)
        ));
        let mut input: &[u8] = b"truncated";
        assert!(matches!(
            read_line(&mut input).await,
            Err(LineError::Unterminated)
        ));
        let mut input: &[u8] = b"\xff\n";
        assert!(matches!(
            read_line(&mut input).await,
            Err(LineError::NotUtf8)
        ));
    }
}
