//! The one place gRPC statuses become operator-facing text: `<Code>: <message>`.
//!
//! Commands let a `tonic::Status` travel inside `anyhow::Error` untouched (`?` is enough), and
//! batch RPCs turn a per-item `code` into the same shape, so every failure prints alike.

use tonic::{Code, Status};

/// A failed item of a batch RPC (`code != 0`), as an error that renders like a failed call.
pub fn item_failure(code: i32, message: &str) -> anyhow::Error {
    Status::new(Code::from_i32(code), message).into()
}

/// The text after `Error: ` for any failure: a status prints as `NotFound: <message>`, other
/// errors as their context chain, skipping links whose text an outer link already shows.
pub fn render(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        if let Some(status) = cause.downcast_ref::<Status>() {
            parts.push(status_text(status));
            // Whatever a status wraps (hyper, io) is already summarised in its message.
            break;
        }
        let text = cause.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// `Code: message`, with the code's name (`NotFound`) rather than its prose description.
fn status_text(status: &Status) -> String {
    let code = code_name(status.code());
    if status.message().is_empty() {
        code
    } else {
        format!("{code}: {}", status.message())
    }
}

/// The canonical gRPC name of a code, e.g. `PermissionDenied`.
pub fn code_name(code: Code) -> String {
    // Code's Debug output is exactly the variant name; Display is a sentence.
    format!("{code:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn status_renders_as_code_and_message() {
        let err: anyhow::Error = Status::not_found("entry \"x\" not found").into();
        assert_eq!(render(&err), "NotFound: entry \"x\" not found");
        let err: anyhow::Error = Status::unimplemented("").into();
        assert_eq!(render(&err), "Unimplemented");
    }

    #[test]
    fn item_codes_map_to_names() {
        assert_eq!(render(&item_failure(6, "exists")), "AlreadyExists: exists");
        assert_eq!(render(&item_failure(3, "bad")), "InvalidArgument: bad");
        assert_eq!(render(&item_failure(999, "?")), "Unknown: ?");
    }

    #[test]
    fn context_chain_is_joined_without_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(io).context("reading bundle.pem");
        assert_eq!(render(&err), "reading bundle.pem: no such file");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(io).context("cannot connect to /x: no such file");
        assert_eq!(render(&err), "cannot connect to /x: no such file");
        let err: anyhow::Result<()> = Err(Status::permission_denied("no")).context("fetching");
        assert_eq!(render(&err.unwrap_err()), "fetching: PermissionDenied: no");
    }
}
