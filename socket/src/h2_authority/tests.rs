//! Two layers: the sans-I/O [`Rewriter`] on hand-built frames, and a real tonic server behind
//! [`NormalizeAuthority`] on a real Unix socket, driven by a raw HTTP/2 client that sends what
//! each gRPC stack sends.

use super::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sigil_proto::sigil::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const PROTOCOL_ERROR: u32 = 0x1;
const HEALTH: &str = "/sigil.v1.Health/Check";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    FrameHead {
        len: payload.len(),
        kind,
        flags,
        stream,
    }
    .write(&mut out);
    out.extend_from_slice(payload);
    out.to_vec()
}

/// A gRPC request's headers with the given `:authority` (none when `None`).
fn grpc_headers(path: &str, authority: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut h: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
    ];
    if let Some(a) = authority {
        h.push((b":authority".to_vec(), a.to_vec()));
    }
    h.extend([
        (b"te".to_vec(), b"trailers".to_vec()),
        (b"content-type".to_vec(), b"application/grpc".to_vec()),
        (b"x-echo".to_vec(), b"kept as sent".to_vec()),
        (b"workload.spiffe.io".to_vec(), b"true".to_vec()),
    ]);
    h
}

fn encode(enc: &mut Encoder<'static>, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    enc.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
}

/// An empty gRPC message (5-byte length prefix, no body) ending the request stream.
fn empty_message(stream: u32) -> Vec<u8> {
    frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 0])
}

/// Frames parsed back out of the rewriter's output.
fn parse_frames(mut b: &[u8]) -> Vec<(FrameHead, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let head = FrameHead::parse(&b[..HEAD_LEN]);
        out.push((head, b[HEAD_LEN..HEAD_LEN + head.len].to_vec()));
        b = &b[HEAD_LEN + head.len..];
    }
    out
}

/// Runs `input` through a rewriter, `chunk` bytes at a time.
fn rewrite_all(input: &[u8], chunk: usize) -> Vec<u8> {
    let mut rw = Rewriter::new();
    let mut pending = BytesMut::new();
    let mut out = BytesMut::new();
    for piece in input.chunks(chunk) {
        pending.extend_from_slice(piece);
        rw.feed(&mut pending, &mut out);
    }
    out.to_vec()
}

/// Decodes every header block of rewritten output, as h2 would (one HPACK context).
fn decoded_blocks(output: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut dec = Decoder::new();
    let mut blocks = Vec::new();
    let mut block = Vec::new();
    for (head, payload) in parse_frames(&output[PREFACE_LEN..]) {
        if head.kind == HEADERS || head.kind == CONTINUATION {
            let skip = if head.flags & PRIORITY != 0 { 5 } else { 0 };
            block.extend_from_slice(&payload[skip..]);
            if head.flags & END_HEADERS != 0 {
                blocks.push(dec.decode(&block).unwrap());
                block.clear();
            }
        }
    }
    blocks
}

fn authority_of(block: &[(Vec<u8>, Vec<u8>)]) -> Option<&[u8]> {
    block
        .iter()
        .find(|(n, _)| n == b":authority")
        .map(|(_, v)| &v[..])
}

#[test]
fn every_authority_form_becomes_localhost_and_nothing_else_changes() {
    let forms: [Option<&[u8]>; 5] = [
        None,
        Some(b"localhost"),
        Some(b"%2Ftmp%2Fsigil-agent%2Fpublic%2Fapi.sock"),
        Some(b"/tmp/sigil-agent/public/api.sock"),
        Some(b"\x00 \xff{}[]@@:::not an authority"),
    ];
    for form in forms {
        let mut enc = Encoder::new();
        let sent = grpc_headers(HEALTH, form);
        let mut input = PREFACE.to_vec();
        input.extend(frame(SETTINGS, 0, 0, &[]));
        input.extend(frame(HEADERS, END_HEADERS, 1, &encode(&mut enc, &sent)));
        input.extend(empty_message(1));
        for chunk in [1, 7, 4096] {
            let out = rewrite_all(&input, chunk);
            assert_eq!(&out[..PREFACE_LEN], PREFACE);
            let blocks = decoded_blocks(&out);
            assert_eq!(blocks.len(), 1);
            let want: Vec<_> = sent
                .iter()
                .map(|(n, v)| {
                    let v = if n == b":authority" {
                        b"localhost".to_vec()
                    } else {
                        v.clone()
                    };
                    (n.clone(), v)
                })
                .collect();
            assert_eq!(blocks[0], want, "form {form:?}, chunk {chunk}");
            let frames = parse_frames(&out[PREFACE_LEN..]);
            let kinds: Vec<u8> = frames.iter().map(|(h, _)| h.kind).collect();
            assert_eq!(kinds, [SETTINGS, HEADERS, DATA]);
            assert_eq!(frames[2].1, [0, 0, 0, 0, 0]);
            assert_eq!(frames[2].0.flags, END_STREAM);
        }
    }
}

/// RFC 7541 appendix C.4: Huffman-coded requests that index `:authority` into the dynamic table
/// and then refer to it by index.
#[test]
fn huffman_and_dynamic_table_references_are_followed() {
    let first = [
        0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90,
        0xf4, 0xff,
    ];
    let second = [
        0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
    ];
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &first));
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
    let blocks = decoded_blocks(&rewrite_all(&input, 3));
    assert_eq!(blocks.len(), 2);
    assert_eq!(authority_of(&blocks[0]), Some(&b"localhost"[..]));
    assert_eq!(authority_of(&blocks[1]), Some(&b"localhost"[..]));
    assert!(blocks[1].contains(&(b"cache-control".to_vec(), b"no-cache".to_vec())));
    assert!(blocks[1].contains(&(b":path".to_vec(), b"/".to_vec())));
}

#[test]
fn continuation_frames_are_joined_and_reframed() {
    let mut enc = Encoder::new();
    let block = encode(&mut enc, &grpc_headers(HEALTH, Some(b"/raw/path.sock")));
    let (a, rest) = block.split_at(5);
    let (b, c) = rest.split_at(9);
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, END_STREAM, 1, a));
    input.extend(frame(CONTINUATION, 0, 1, b));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
    let out = rewrite_all(&input, 2);
    let frames = parse_frames(&out[PREFACE_LEN..]);
    assert_eq!(frames.len(), 1, "a small block is one HEADERS frame");
    assert_eq!(frames[0].0.flags, END_STREAM | END_HEADERS);
    assert_eq!(
        authority_of(&decoded_blocks(&out)[0]),
        Some(&b"localhost"[..])
    );
}

#[test]
fn a_large_block_is_split_into_continuations() {
    let mut enc = Encoder::new();
    let mut headers = grpc_headers(HEALTH, Some(b"/x.sock"));
    for i in 0..3 {
        headers.push((format!("x-big-{i}").into_bytes(), vec![b'a'; 9_000]));
    }
    let block = encode(&mut enc, &headers);
    let mut input = PREFACE.to_vec();
    let (a, rest) = block.split_at(MAX_FRAME_SIZE);
    input.extend(frame(HEADERS, 0, 1, a));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, rest));
    let out = rewrite_all(&input, 4096);
    let frames = parse_frames(&out[PREFACE_LEN..]);
    assert!(frames.len() >= 2);
    assert!(frames.iter().all(|(h, _)| h.len <= MAX_FRAME_SIZE));
    assert_eq!(frames[0].0.kind, HEADERS);
    assert!(frames[1..].iter().all(|(h, _)| h.kind == CONTINUATION));
    assert_eq!(
        frames
            .iter()
            .filter(|(h, _)| h.flags & END_HEADERS != 0)
            .count(),
        1
    );
    let blocks = decoded_blocks(&out);
    assert_eq!(blocks[0].len(), headers.len());
    assert_eq!(authority_of(&blocks[0]), Some(&b"localhost"[..]));
}

#[test]
fn padding_is_dropped_and_priority_kept() {
    let mut enc = Encoder::new();
    let block = encode(&mut enc, &grpc_headers(HEALTH, Some(b"%2Fa.sock")));
    let priority = [0x80, 0, 0, 0, 0x00, 0x0f];
    let mut payload = vec![7u8];
    payload.extend_from_slice(&priority[..5]);
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0u8; 7]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, END_HEADERS | PADDED | PRIORITY, 1, &payload));
    let out = rewrite_all(&input, 5);
    let frames = parse_frames(&out[PREFACE_LEN..]);
    assert_eq!(frames[0].0.flags, END_HEADERS | PRIORITY);
    assert_eq!(&frames[0].1[..5], &priority[..5]);
    assert_eq!(
        authority_of(&decoded_blocks(&out)[0]),
        Some(&b"localhost"[..])
    );
}

#[test]
fn a_dynamic_table_heavy_client_stays_in_step() {
    let mut enc = Encoder::new();
    let mut input = PREFACE.to_vec();
    let mut sent = Vec::new();
    for i in 0..200u32 {
        let mut h = grpc_headers(HEALTH, Some(format!("/sock/{}", i % 7).as_bytes()));
        h.push((b"x-request".to_vec(), format!("{}", i % 13).into_bytes()));
        h.push((
            format!("x-n{}", i % 31).into_bytes(),
            vec![b'v'; (i % 90) as usize],
        ));
        // Shrinking and regrowing the table mid-connection (RFC 7541 section 4.2).
        let mut block = match i {
            100 => {
                enc.set_max_table_size(64);
                vec![0x3f, 0x21]
            }
            101 => {
                enc.set_max_table_size(4096);
                vec![0x3f, 0xe1, 0x1f]
            }
            _ => Vec::new(),
        };
        block.extend(encode(&mut enc, &h));
        input.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
        input.extend(empty_message(2 * i + 1));
        sent.push(h);
    }
    let blocks = decoded_blocks(&rewrite_all(&input, 1000));
    assert_eq!(blocks.len(), sent.len());
    for (got, want) in blocks.iter().zip(&sent) {
        assert_eq!(got.len(), want.len());
        assert_eq!(authority_of(got), Some(&b"localhost"[..]));
        for ((gn, gv), (wn, wv)) in got.iter().zip(want) {
            assert_eq!(gn, wn);
            if gn != b":authority" {
                assert_eq!(gv, wv);
            }
        }
    }
}

#[test]
fn undecodable_blocks_become_a_block_h2_refuses() {
    let cases: [&[u8]; 3] = [
        &[0x80],                   // index 0
        &[0xff, 0xff, 0xff, 0x7f], // index far past both tables
        &[0x40, 0x85, 0xff],       // Huffman string shorter than its length
    ];
    for block in cases {
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, block));
        input.extend(empty_message(1));
        let out = rewrite_all(&input, 4096);
        let frames = parse_frames(&out[PREFACE_LEN..]);
        assert_eq!(frames.len(), 1, "input after the fault is dropped");
        assert_eq!(frames[0].0.kind, HEADERS);
        assert_eq!(frames[0].1, [UNDECODABLE]);
    }
}

#[test]
fn a_table_size_above_the_advertised_one_is_refused() {
    // Size update to 8192 (> 4096 that h2 advertises).
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x3f, 0x82]));
    let frames = parse_frames(&rewrite_all(&input, 4096)[PREFACE_LEN..]);
    assert_eq!(frames[0].1, [UNDECODABLE]);
}

#[test]
fn frames_h2_refuses_reach_it_as_sent() {
    let mut enc = Encoder::new();
    let block = encode(&mut enc, &grpc_headers(HEALTH, None));
    let stray = frame(CONTINUATION, END_HEADERS, 1, &block);
    let on_zero = frame(HEADERS, END_HEADERS, 0, &block);
    let bad_pad = frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 1, 2]);
    for bad in [stray, on_zero, bad_pad] {
        let mut input = PREFACE.to_vec();
        input.extend(&bad);
        input.extend(empty_message(1));
        let out = rewrite_all(&input, 4096);
        assert_eq!(&out[PREFACE_LEN..PREFACE_LEN + bad.len()], &bad[..]);
    }
    // Another frame inside a block: h2 sees the open HEADERS, then the intruder.
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, 0, 1, &block[..3]));
    input.extend(frame(SETTINGS, 0, 0, &[]));
    let frames = parse_frames(&rewrite_all(&input, 4096)[PREFACE_LEN..]);
    assert_eq!(frames[0].0.kind, HEADERS);
    assert_eq!(frames[0].0.flags & END_HEADERS, 0);
    assert_eq!(frames[1].0.kind, SETTINGS);
}

#[test]
fn oversized_blocks_and_decompression_bombs_are_cut_off() {
    // A block that keeps growing through CONTINUATIONs.
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, 0, 1, &[0x82]));
    for _ in 0..5 {
        input.extend(frame(CONTINUATION, 0, 1, &[0x82; MAX_FRAME_SIZE]));
    }
    let frames = parse_frames(&rewrite_all(&input, 4096)[PREFACE_LEN..]);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].1, [UNDECODABLE]);

    // A small block that decodes to megabytes: one 4000-byte entry, then 8000 references to it.
    let mut enc = Encoder::new();
    let seed = encode(&mut enc, &[(b"x-bomb".to_vec(), vec![b'b'; 4000])]);
    let mut block = seed.clone();
    block.extend(std::iter::repeat_n(0x80 | 62, 8000));
    let mut input = PREFACE.to_vec();
    let (a, rest) = block.split_at(MAX_FRAME_SIZE.min(block.len()));
    input.extend(frame(
        HEADERS,
        if rest.is_empty() { END_HEADERS } else { 0 },
        1,
        a,
    ));
    if !rest.is_empty() {
        input.extend(frame(CONTINUATION, END_HEADERS, 1, rest));
    }
    let frames = parse_frames(&rewrite_all(&input, 4096)[PREFACE_LEN..]);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].1, [UNDECODABLE]);
}

#[test]
fn other_frames_pass_through_byte_for_byte() {
    let mut enc = Encoder::new();
    let mut input = PREFACE.to_vec();
    let settings = frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]);
    let big_data = frame(DATA, 0, 1, &vec![0x5a; 16_000]);
    input.extend(&settings);
    input.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &encode(&mut enc, &grpc_headers(HEALTH, None)),
    ));
    input.extend(&big_data);
    input.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &encode(&mut enc, &[(b"x-trailer".to_vec(), b"1".to_vec())]),
    ));
    let out = rewrite_all(&input, 333);
    let frames = parse_frames(&out[PREFACE_LEN..]);
    assert_eq!(frames[0].1, settings[HEAD_LEN..]);
    assert_eq!(frames[2].1, big_data[HEAD_LEN..]);
    let blocks = decoded_blocks(&out);
    assert_eq!(authority_of(&blocks[0]), None, "absent stays absent");
    assert_eq!(blocks[1], [(b"x-trailer".to_vec(), b"1".to_vec())]);
    assert_eq!(frames[3].0.flags, END_HEADERS | END_STREAM);
}

// ---- A real tonic server behind the wrapper, and a raw HTTP/2 client. ----

/// Answers health checks with the request's `x-echo` metadata, counting calls.
#[derive(Clone, Default)]
struct Echo(Arc<AtomicUsize>);

#[tonic::async_trait]
impl pb::health_server::Health for Echo {
    async fn check(
        &self,
        r: tonic::Request<pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<pb::HealthCheckResponse>, tonic::Status> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let echo = r
            .metadata()
            .get("x-echo")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Ok(tonic::Response::new(pb::HealthCheckResponse {
            serving: true,
            trust_domain: echo,
            revision: 0,
        }))
    }
}

struct TestServer {
    _dir: tempfile::TempDir,
    path: PathBuf,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(wrapped: bool) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grpc.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let echo = Echo::default();
    let calls = Arc::clone(&echo.0);
    let router =
        tonic::transport::Server::builder().add_service(pb::health_server::HealthServer::new(echo));
    let task = if wrapped {
        let incoming = UnixListenerStream::new(listener).map(|c| c.map(NormalizeAuthority::new));
        tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        })
    } else {
        tokio::spawn(async move {
            let _ = router
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await;
        })
    };
    TestServer {
        _dir: dir,
        path,
        calls,
        task,
    }
}

/// What the server answered on a raw connection.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Trailers arrived: `grpc-status` and the echoed metadata.
    Grpc { status: String, echo: String },
    /// `RST_STREAM` with this error code.
    Reset(u32),
    /// `GOAWAY` with this error code.
    GoAway(u32),
}

/// A client that writes frames as given and reads the server's answer to stream `stream`.
struct RawClient {
    sock: UnixStream,
    dec: Decoder<'static>,
}

impl RawClient {
    async fn connect(path: &Path) -> Self {
        let mut sock = UnixStream::connect(path).await.unwrap();
        sock.write_all(PREFACE).await.unwrap();
        sock.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        Self {
            sock,
            dec: Decoder::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    async fn read_frame(&mut self) -> Option<(FrameHead, Vec<u8>)> {
        let mut head = [0u8; HEAD_LEN];
        self.sock.read_exact(&mut head).await.ok()?;
        let head = FrameHead::parse(&head);
        let mut payload = vec![0; head.len];
        self.sock.read_exact(&mut payload).await.ok()?;
        Some((head, payload))
    }

    async fn answer(&mut self, stream: u32) -> Answer {
        let mut echo = String::new();
        let fut = async {
            loop {
                let Some((head, payload)) = self.read_frame().await else {
                    return Answer::GoAway(u32::MAX);
                };
                match head.kind {
                    SETTINGS if head.flags & 0x1 == 0 => {
                        let _ = self.sock.write_all(&frame(SETTINGS, 0x1, 0, &[])).await;
                    }
                    GOAWAY => {
                        return Answer::GoAway(u32::from_be_bytes(
                            payload[4..8].try_into().unwrap(),
                        ));
                    }
                    RST_STREAM if head.stream == stream => {
                        return Answer::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                    }
                    DATA if head.stream == stream && payload.len() > 5 => {
                        use prost::Message;
                        let resp = pb::HealthCheckResponse::decode(&payload[5..]).unwrap();
                        echo = resp.trust_domain;
                    }
                    HEADERS if head.stream == stream => {
                        let headers = self.dec.decode(&payload).unwrap();
                        if let Some((_, v)) = headers.iter().find(|(n, _)| n == b"grpc-status") {
                            return Answer::Grpc {
                                status: String::from_utf8_lossy(v).into_owned(),
                                echo: echo.clone(),
                            };
                        }
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), fut)
            .await
            .expect("server answered")
    }
}

fn ok() -> Answer {
    Answer::Grpc {
        status: "0".into(),
        echo: "kept as sent".into(),
    }
}

fn health_request(enc: &mut Encoder<'static>, stream: u32, authority: Option<&[u8]>) -> Vec<u8> {
    let mut bytes = frame(
        HEADERS,
        END_HEADERS,
        stream,
        &encode(enc, &grpc_headers(HEALTH, authority)),
    );
    bytes.extend(empty_message(stream));
    bytes
}

#[tokio::test]
async fn raw_client_every_authority_form_is_served() {
    let server = serve(true).await;
    let forms: [Option<&[u8]>; 5] = [
        None,
        Some(b"localhost"),
        Some(b"%2Ftmp%2Fsigil-agent%2Fpublic%2Fapi.sock"),
        Some(b"/tmp/sigil-agent/public/api.sock"),
        Some(b"\x01\x7f weird \xfe bytes"),
    ];
    for form in forms {
        let mut c = RawClient::connect(&server.path).await;
        let mut enc = Encoder::new();
        c.send(&health_request(&mut enc, 1, form)).await;
        assert_eq!(c.answer(1).await, ok(), "authority {form:?}");
        // A second request on the same connection uses the client's dynamic table.
        c.send(&health_request(&mut enc, 3, form)).await;
        assert_eq!(
            c.answer(3).await,
            ok(),
            "authority {form:?}, second request"
        );
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 10);
}

/// Without the wrapper, h2 refuses the path forms: the bug this module exists for.
#[tokio::test]
async fn raw_client_unwrapped_server_refuses_path_authorities() {
    let server = serve(false).await;
    for form in [&b"/tmp/a.sock"[..], b"\x01 weird"] {
        let mut c = RawClient::connect(&server.path).await;
        c.send(&health_request(&mut Encoder::new(), 1, Some(form)))
            .await;
        assert_eq!(c.answer(1).await, Answer::Reset(PROTOCOL_ERROR));
    }
    let mut c = RawClient::connect(&server.path).await;
    c.send(&health_request(&mut Encoder::new(), 1, Some(b"localhost")))
        .await;
    assert_eq!(c.answer(1).await, ok());
}

#[tokio::test]
async fn raw_client_continuation_padding_and_priority() {
    let server = serve(true).await;
    let mut c = RawClient::connect(&server.path).await;
    let mut enc = Encoder::new();
    let block = encode(&mut enc, &grpc_headers(HEALTH, Some(b"/raw.sock")));
    let mut first = vec![3u8, 0, 0, 0, 0, 16];
    first.extend_from_slice(&block[..4]);
    first.extend_from_slice(&[0, 0, 0]);
    c.send(&frame(HEADERS, PADDED | PRIORITY, 1, &first)).await;
    c.send(&frame(CONTINUATION, 0, 1, &block[4..10])).await;
    c.send(&frame(CONTINUATION, END_HEADERS, 1, &block[10..]))
        .await;
    c.send(&empty_message(1)).await;
    assert_eq!(c.answer(1).await, ok());
}

#[tokio::test]
async fn raw_client_malformed_block_gets_an_http2_error_and_the_server_lives_on() {
    let server = serve(true).await;
    let mut c = RawClient::connect(&server.path).await;
    c.send(&frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0x7f]))
        .await;
    // h2 answers every HPACK failure with a connection-level PROTOCOL_ERROR.
    assert_eq!(c.answer(1).await, Answer::GoAway(PROTOCOL_ERROR));

    let mut c = RawClient::connect(&server.path).await;
    c.send(&frame(HEADERS, 0, 1, &[0x83])).await;
    c.send(&frame(SETTINGS, 0, 0, &[])).await;
    assert_eq!(c.answer(1).await, Answer::GoAway(PROTOCOL_ERROR));

    let mut c = RawClient::connect(&server.path).await;
    c.send(&health_request(&mut Encoder::new(), 1, Some(b"%2Fa")))
        .await;
    assert_eq!(c.answer(1).await, ok());
}

/// A real client stack (the `h2` crate: Huffman strings, dynamic table) through the wrapper.
#[tokio::test]
async fn h2_client_many_requests_on_one_connection() {
    let server = serve(true).await;
    let sock = UnixStream::connect(&server.path).await.unwrap();
    let (mut client, conn) = h2::client::handshake(sock).await.unwrap();
    tokio::spawn(conn);
    for i in 0..50 {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{HEALTH}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-echo", format!("call {i}"))
            .body(())
            .unwrap();
        let (resp, mut body) = client.send_request(req, false).unwrap();
        body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            data.extend_from_slice(&chunk.unwrap());
        }
        let trailers = body.trailers().await.unwrap().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        use prost::Message;
        let msg = pb::HealthCheckResponse::decode(&data[5..]).unwrap();
        assert_eq!(msg.trust_domain, format!("call {i}"));
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 50);
}
