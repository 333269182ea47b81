//! `sigil agent api ...`: the SPIFFE Workload API, called exactly as a workload would call it.
//!
//! Every request carries the `workload.spiffe.io: true` metadata the standard requires; the
//! agent rejects calls without it. The agent may not implement every method yet: whatever status
//! it answers is printed as `Error: <Code>: <message>`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use sigil_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest, X509svidResponse,
};
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::args::{ApiCommand, FetchCommand, FetchJwtArgs, FetchX509Args, Globals, OutputFormat};
use crate::args::{ValidateCommand, ValidateJwtArgs};
use crate::output::{self, format_unix};
use crate::{connect, x509};

type Interceptor = fn(Request<()>) -> Result<Request<()>, Status>;
type Client = SpiffeWorkloadApiClient<InterceptedService<Channel, Interceptor>>;

/// Runs one `agent api` subcommand against the Workload API socket.
pub async fn run(globals: &Globals, cmd: ApiCommand) -> Result<()> {
    let path = connect::workload_socket(globals.socket.as_deref())?;
    let out = globals.output;
    match cmd {
        ApiCommand::Fetch(FetchCommand::X509(args)) => fetch_x509(&path, out, args).await,
        ApiCommand::Fetch(FetchCommand::Jwt(args)) => fetch_jwt(&path, out, args).await,
        ApiCommand::Fetch(FetchCommand::JwtBundles(t)) => {
            fetch_jwt_bundles(&path, out, t.timeout).await
        }
        ApiCommand::Watch => watch(&path, out).await,
        ApiCommand::Validate(ValidateCommand::Jwt(args)) => validate_jwt(&path, out, args).await,
    }
}

async fn fetch_x509(path: &Path, out: OutputFormat, args: FetchX509Args) -> Result<()> {
    let started = Instant::now();
    let resp = within(args.timeout.timeout, path, async {
        let mut client = client(path).await?;
        let mut stream = client
            .fetch_x509svid(X509svidRequest {})
            .await?
            .into_inner();
        stream
            .message()
            .await?
            .ok_or_else(|| anyhow!("the agent closed the stream without sending SVIDs"))
    })
    .await?;
    let elapsed = started.elapsed();
    let files = match &args.write {
        Some(dir) => x509::write_files(dir, &resp)?,
        None => Vec::new(),
    };
    match out {
        OutputFormat::Human => {
            let mut text = x509::describe(&resp, elapsed)?;
            for file in &files {
                text.push_str(&format!("Wrote {}\n", file.display()));
            }
            output::emit(&text)
        }
        OutputFormat::Json => output::emit_json(&x509::summary_json(&resp, &files)?),
    }
}

async fn watch(path: &Path, out: OutputFormat) -> Result<()> {
    let mut client = client(path).await?;
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await?
        .into_inner();
    // Registered now, not on first poll: a Ctrl-C right after the first update must end the
    // watch cleanly instead of killing the process.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut update = 0u64;
    loop {
        let message = tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            message = stream.message() => message?,
        };
        let Some(resp) = message else {
            eprintln!("The agent closed the stream.");
            return Ok(());
        };
        update += 1;
        let received_ms = unix_millis(SystemTime::now());
        match out {
            OutputFormat::Human => output::emit(&watch_block(update, received_ms, &resp))?,
            // One compact object per line, so `jq` can consume the stream as it comes.
            OutputFormat::Json => output::emit(&format!("{}\n", watch_json(received_ms, &resp)))?,
        }
    }
}

async fn fetch_jwt(path: &Path, out: OutputFormat, args: FetchJwtArgs) -> Result<()> {
    let request = JwtsvidRequest {
        audience: args.audiences,
        spiffe_id: args.spiffe_id.map(|id| id.to_string()).unwrap_or_default(),
    };
    let resp = within(args.timeout.timeout, path, async {
        Ok(client(path)
            .await?
            .fetch_jwtsvid(request)
            .await?
            .into_inner())
    })
    .await?;
    match out {
        OutputFormat::Human => {
            let mut text = String::new();
            for svid in &resp.svids {
                text.push_str(&format!("token({}):\n\t{}\n", svid.spiffe_id, svid.svid));
                if !svid.hint.is_empty() {
                    text.push_str(&format!("hint({}):\n\t{}\n", svid.spiffe_id, svid.hint));
                }
            }
            output::emit(&text)
        }
        OutputFormat::Json => {
            let svids: Vec<Value> = resp
                .svids
                .iter()
                .map(|s| json!({ "spiffe_id": s.spiffe_id, "svid": s.svid, "hint": s.hint }))
                .collect();
            output::emit_json(&json!({ "svids": svids }))
        }
    }
}

async fn fetch_jwt_bundles(path: &Path, out: OutputFormat, timeout: Duration) -> Result<()> {
    let resp = within(timeout, path, async {
        let mut client = client(path).await?;
        let mut stream = client
            .fetch_jwt_bundles(JwtBundlesRequest {})
            .await?
            .into_inner();
        stream
            .message()
            .await?
            .ok_or_else(|| anyhow!("the agent closed the stream without sending bundles"))
    })
    .await?;
    let bundles: BTreeMap<&String, &[u8]> = resp
        .bundles
        .iter()
        .map(|(td, jwks)| (td, &jwks[..]))
        .collect();
    match out {
        OutputFormat::Human => {
            let mut text = String::new();
            for (td, jwks) in bundles {
                text.push_str(&format!(
                    "bundle({td}):\n\t{}\n",
                    String::from_utf8_lossy(jwks)
                ));
            }
            output::emit(&text)
        }
        OutputFormat::Json => {
            let map: serde_json::Map<String, Value> = bundles
                .into_iter()
                .map(|(td, jwks)| (td.clone(), jwks_json(jwks)))
                .collect();
            output::emit_json(&json!({ "bundles": map }))
        }
    }
}

async fn validate_jwt(path: &Path, out: OutputFormat, args: ValidateJwtArgs) -> Result<()> {
    let request = ValidateJwtsvidRequest {
        audience: args.audience,
        svid: args.svid,
    };
    let resp = within(args.timeout.timeout, path, async {
        Ok(client(path)
            .await?
            .validate_jwtsvid(request)
            .await?
            .into_inner())
    })
    .await?;
    let claims = resp.claims.as_ref().map_or(Value::Null, struct_json);
    match out {
        OutputFormat::Human => output::emit(&format!(
            "SVID is valid.\nSPIFFE ID : {}\nClaims    : {claims}\n",
            resp.spiffe_id
        )),
        OutputFormat::Json => {
            output::emit_json(&json!({ "spiffe_id": resp.spiffe_id, "claims": claims }))
        }
    }
}

async fn client(path: &Path) -> Result<Client> {
    let channel = connect::workload_channel(path).await?;
    Ok(SpiffeWorkloadApiClient::with_interceptor(
        channel,
        add_workload_header as Interceptor,
    ))
}

/// Adds the metadata the Workload API standard requires on every call (a guard against SSRF:
/// a browser or proxy tricked into calling the socket cannot set it).
fn add_workload_header(mut request: Request<()>) -> Result<Request<()>, Status> {
    let key = MetadataKey::from_bytes(sigil_proto::WORKLOAD_HEADER.as_bytes())
        .map_err(|_| Status::internal("invalid Workload API header name"))?;
    request
        .metadata_mut()
        .insert(key, MetadataValue::from_static("true"));
    Ok(request)
}

/// Bounds connect + call + first message, naming the socket when the agent is too slow.
async fn within<T>(
    timeout: Duration,
    path: &Path,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => bail!(
            "timed out after {} waiting for the Workload API at {}",
            crate::duration::format_secs(timeout.as_secs()),
            PathBuf::from(path).display()
        ),
    }
}

fn watch_block(update: u64, received_ms: i64, resp: &X509svidResponse) -> String {
    let n = resp.svids.len();
    let mut out = format!(
        "Update #{update} received at {}: {n} SVID{}\n",
        format_unix_millis(received_ms),
        if n == 1 { "" } else { "s" }
    );
    for svid in &resp.svids {
        let expiry =
            leaf_expiry(&svid.x509_svid).map_or_else(|e| format!("unreadable ({e})"), format_unix);
        out.push_str(&format!("  {}  expires {expiry}\n", svid.spiffe_id));
    }
    let mut federated: Vec<&String> = resp.federated_bundles.keys().collect();
    federated.sort();
    if !federated.is_empty() {
        let names: Vec<&str> = federated.iter().map(|s| s.as_str()).collect();
        out.push_str(&format!("  federated bundles: {}\n", names.join(", ")));
    }
    out.push('\n');
    out
}

fn watch_json(received_ms: i64, resp: &X509svidResponse) -> Value {
    let svids: Vec<Value> = resp
        .svids
        .iter()
        .map(|s| json!({ "spiffe_id": s.spiffe_id, "not_after": leaf_expiry(&s.x509_svid).ok() }))
        .collect();
    let mut federated: Vec<&String> = resp.federated_bundles.keys().collect();
    federated.sort();
    json!({ "received_at_ms": received_ms, "svids": svids, "federated_bundles": federated })
}

fn leaf_expiry(chain: &[u8]) -> Result<i64> {
    let certs = x509::split_certs(chain)?;
    let leaf = certs.first().ok_or_else(|| anyhow!("no certificate"))?;
    Ok(x509::validity(leaf)?.not_after)
}

fn unix_millis(t: SystemTime) -> i64 {
    // A clock before 1970 is a broken host; report it as the epoch rather than fail a watch.
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `2024-05-01T12:00:00.123Z`: watch output wants sub-second times to show update latency.
fn format_unix_millis(ms: i64) -> String {
    let secs = format_unix(ms.div_euclid(1_000));
    let base = secs.strip_suffix('Z').unwrap_or(&secs);
    format!("{base}.{:03}Z", ms.rem_euclid(1_000))
}

/// A JWKS document as JSON, or base64 when the agent sent something that is not JSON.
fn jwks_json(bytes: &[u8]) -> Value {
    use base64::Engine as _;
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)))
}

/// A protobuf `Struct` (the claims) as plain JSON.
fn struct_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => number_json(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_json).collect()),
    }
}

/// Struct numbers are doubles; print whole ones (`exp`, `iat`) as integers, as JWTs carry them.
fn number_json(n: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer below is exact in f64.
    if n.fract() == 0.0 && n.abs() < EXACT {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::value::Kind;
    use sigil_proto::workload::X509svid;

    fn pv(kind: Kind) -> prost_types::Value {
        prost_types::Value { kind: Some(kind) }
    }

    #[test]
    fn claims_become_plain_json() {
        let mut fields = BTreeMap::new();
        fields.insert(
            "sub".to_owned(),
            pv(Kind::StringValue("spiffe://td/a".into())),
        );
        fields.insert("exp".to_owned(), pv(Kind::NumberValue(1_700_000_000.0)));
        fields.insert("ratio".to_owned(), pv(Kind::NumberValue(0.5)));
        fields.insert("nan".to_owned(), pv(Kind::NumberValue(f64::NAN)));
        fields.insert(
            "aud".to_owned(),
            pv(Kind::ListValue(prost_types::ListValue {
                values: vec![pv(Kind::StringValue("x".into()))],
            })),
        );
        fields.insert("none".to_owned(), prost_types::Value { kind: None });
        let v = struct_json(&prost_types::Struct { fields });
        assert_eq!(
            v,
            json!({"sub": "spiffe://td/a", "exp": 1_700_000_000, "ratio": 0.5, "nan": null,
                   "aud": ["x"], "none": null})
        );
        assert!(!v.to_string().contains("1700000000.0"));
    }

    #[test]
    fn header_is_added() {
        let req = add_workload_header(Request::new(())).unwrap();
        let value = req.metadata().get(sigil_proto::WORKLOAD_HEADER).unwrap();
        assert_eq!(value.to_str().unwrap(), "true");
    }

    #[test]
    fn millisecond_times() {
        assert_eq!(format_unix_millis(1_500), "1970-01-01T00:00:01.500Z");
        assert_eq!(format_unix_millis(-1), "1969-12-31T23:59:59.999Z");
        let t = UNIX_EPOCH + Duration::from_millis(42);
        assert_eq!(unix_millis(t), 42);
    }

    #[test]
    fn watch_block_lists_ids() {
        let mut resp = X509svidResponse {
            svids: vec![X509svid {
                spiffe_id: "spiffe://td/a".into(),
                x509_svid: vec![0x30, 0x00].into(),
                ..X509svid::default()
            }],
            ..X509svidResponse::default()
        };
        resp.federated_bundles
            .insert("spiffe://b.org".into(), Default::default());
        resp.federated_bundles
            .insert("spiffe://a.org".into(), Default::default());
        let text = watch_block(3, 1_000, &resp);
        assert!(text.starts_with("Update #3 received at 1970-01-01T00:00:01.000Z: 1 SVID\n"));
        assert!(
            text.contains("  spiffe://td/a  expires unreadable ("),
            "{text}"
        );
        assert!(
            text.contains("federated bundles: spiffe://a.org, spiffe://b.org\n"),
            "{text}"
        );
        let v = watch_json(1_000, &resp);
        assert_eq!(v["svids"][0]["not_after"], Value::Null);
        assert_eq!(
            v["federated_bundles"],
            json!(["spiffe://a.org", "spiffe://b.org"])
        );
    }

    #[test]
    fn jwks_passthrough() {
        assert_eq!(jwks_json(br#"{"keys":[]}"#), json!({"keys": []}));
        assert_eq!(jwks_json(&[0xff]), json!("/w=="));
    }

    #[tokio::test]
    async fn unreachable_agent_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let err = within(Duration::from_secs(5), &path, async {
            client(&path).await.map(|_| ())
        })
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
