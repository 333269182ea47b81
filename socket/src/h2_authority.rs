//! Rewrites the HTTP/2 `:authority` of every request on a Unix-socket connection, so that gRPC
//! clients of every language stack are served.
//!
//! # Why this exists
//! On a Unix socket, gRPC stacks disagree on what to send as `:authority`: Go and Rust send
//! `localhost`, gRPC's C core (Python, C++, Ruby, PHP, C#) sends the percent-encoded socket path,
//! grpc-java sends the raw path. The `h2` crate under tonic parses `:authority` as a URI authority
//! and answers the last two with `RST_STREAM(PROTOCOL_ERROR)`, so every Python and Java workload
//! was refused (hyperium/h2 pull request 487 and grpc/grpc issue 38142 track it upstream). The
//! authority plays no part in Unix-socket security (the caller is identified by its kernel
//! credentials), so we replace it before h2 sees it; absent stays absent.
//!
//! # How
//! [`NormalizeAuthority`] wraps the accepted connection. The server-to-client direction passes
//! through untouched. In the client-to-server direction, every frame except `HEADERS` and
//! `CONTINUATION` passes through as received; a header block is gathered whole, decoded with the
//! client's HPACK context, `:authority` replaced by `localhost`, and re-encoded for h2 with a
//! dynamic table of size zero (announced once, so h2's table stays empty and in step with ours).
//! Nothing else changes: header names, values and order, `END_STREAM`, priority data. Padding is
//! dropped, which the protocol allows. Whatever h2 would refuse (an oversized frame, a frame on
//! stream 0, a stray `CONTINUATION`, another frame inside a header block, bad padding) is handed
//! to h2 as received so it answers with its own connection error; a block that does not decode,
//! or decodes to more than [`MAX_BLOCK`] bytes, is replaced by one h2 cannot decode either, so the
//! client gets h2's `GOAWAY` for a broken header block. After such a fault the rest of the input is dropped.
//!
//! # When to delete it
//! Once h2 accepts any `:authority` on the server side (the upstream fix tracked above) and tonic
//! depends on that release: then run the raw-client tests in this module's test file against a
//! plain listener, and if every authority form passes, remove the wrapper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE_LEN: usize = 24;
const HEAD_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame h2 accepts as tonic configures it (the RFC 9113 default, which every peer
/// must accept); re-encoded blocks are framed at this size too. A listener that raises
/// `SETTINGS_MAX_FRAME_SIZE` must raise this with it.
pub const MAX_FRAME_SIZE: usize = 16_384;
/// The HPACK table size h2 advertises (the RFC default), which bounds the client's encoder.
const CLIENT_TABLE_SIZE: usize = 4_096;
/// The largest header block, encoded or decoded (RFC 7541 sizes), that we gather; hyper refuses
/// header lists over 16 KiB anyway, so this only stops a client from making us buffer more.
pub const MAX_BLOCK: usize = 64 * 1024;
const READ_CHUNK: usize = 4 * 1024;
const AUTHORITY: &[u8] = b":authority";
const LOCALHOST: &[u8] = b"localhost";
/// HPACK "dynamic table size update" to 0 (RFC 7541 section 6.3).
const TABLE_SIZE_ZERO: u8 = 0x20;
/// HPACK "indexed header field" with index 0, which every decoder must refuse.
const UNDECODABLE: u8 = 0x80;

/// A server-side connection whose requests reach h2 with a `:authority` it accepts.
///
/// Wrap each accepted Unix-socket connection before handing it to tonic; connection info passes
/// through, so handlers see the inner stream's [`Connected::ConnectInfo`].
#[derive(Debug)]
pub struct NormalizeAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    input: BytesMut,
    output: BytesMut,
    eof: bool,
}

impl<S> NormalizeAuthority<S> {
    /// Wraps a freshly accepted connection (nothing read from it yet).
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(),
            input: BytesMut::new(),
            output: BytesMut::new(),
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for NormalizeAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                if this.output.is_empty() {
                    // Idle connections (held streams) should cost next to nothing.
                    this.output = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !this.input.is_empty() {
                this.rewriter.feed(&mut this.input, &mut this.output);
                if !this.output.is_empty() {
                    continue;
                }
            }
            if this.input.is_empty() {
                this.input = BytesMut::new();
            }
            // Read into the stack, not into `input`: a held connection waits in this read almost
            // all its life, and a buffer reserved for it would be heap held by every idle client.
            let mut chunk = [0u8; READ_CHUNK];
            let mut chunk = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let n = chunk.filled().len();
            this.input.extend_from_slice(chunk.filled());
            if n == 0 {
                // A partial frame left in `input` is as truncated for h2 as it was for us.
                this.eof = true;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NormalizeAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for NormalizeAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Where the client-to-server byte stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Inside the connection preface; this many bytes of it are still to come.
    Preface(usize),
    /// Between or inside frames.
    Frames,
    /// A fault was handed to h2; everything after it is dropped.
    Broken,
}

/// The 9-byte header of an HTTP/2 frame (RFC 9113 section 4.1).
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8]) -> Self {
        Self {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    fn write(&self, out: &mut BytesMut) {
        let len = u32::try_from(self.len).unwrap_or(u32::MAX).to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.extend_from_slice(&[self.kind, self.flags]);
        out.extend_from_slice(&self.stream.to_be_bytes());
    }
}

/// A `HEADERS` frame whose `CONTINUATION`s are still to come.
#[derive(Debug)]
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// Why a connection's input is handed to h2 as a fault.
#[derive(Debug, thiserror::Error)]
enum Fault {
    /// h2 refuses this frame by itself.
    #[error("frame h2 refuses ({0})")]
    Refused(&'static str),
    /// The header block does not decode with the client's HPACK context.
    #[error("undecodable header block: {0:?}")]
    Hpack(loona_hpack::decoder::DecoderError),
    /// The header block is larger than [`MAX_BLOCK`].
    #[error("header block over {MAX_BLOCK} bytes")]
    TooLarge,
}

/// The sans-I/O core: client bytes in, bytes for h2 out.
#[derive(Debug)]
pub(crate) struct Rewriter {
    phase: Phase,
    /// Payload bytes of the current pass-through frame still to come.
    passthrough: usize,
    open: Option<OpenBlock>,
    decoder: DebugOpaque<Decoder<'static>>,
    encoder: DebugOpaque<Encoder<'static>>,
    table_size_announced: bool,
}

/// Lets the HPACK codecs (which have no `Debug`) sit in `Debug` types.
struct DebugOpaque<T>(T);

impl<T> std::fmt::Debug for DebugOpaque<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

impl Rewriter {
    pub(crate) fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(CLIENT_TABLE_SIZE);
        let mut encoder = Encoder::new();
        encoder.set_max_table_size(0);
        Self {
            phase: Phase::Preface(PREFACE_LEN),
            passthrough: 0,
            open: None,
            decoder: DebugOpaque(decoder),
            encoder: DebugOpaque(encoder),
            table_size_announced: false,
        }
    }

    /// Consumes what it can of `input` (a partial frame stays there for the next call) and
    /// appends what h2 should read to `out`.
    pub(crate) fn feed(&mut self, input: &mut BytesMut, out: &mut BytesMut) {
        loop {
            match self.phase {
                Phase::Broken => {
                    input.clear();
                    return;
                }
                Phase::Preface(left) => {
                    let n = left.min(input.len());
                    if n == 0 {
                        return;
                    }
                    out.extend_from_slice(&input.split_to(n));
                    self.phase = if n == left {
                        Phase::Frames
                    } else {
                        Phase::Preface(left - n)
                    };
                }
                Phase::Frames if self.passthrough > 0 => {
                    let n = self.passthrough.min(input.len());
                    if n == 0 {
                        return;
                    }
                    out.extend_from_slice(&input.split_to(n));
                    self.passthrough -= n;
                }
                Phase::Frames => {
                    if input.len() < HEAD_LEN {
                        return;
                    }
                    let head = FrameHead::parse(&input[..HEAD_LEN]);
                    if head.kind != HEADERS && head.kind != CONTINUATION {
                        if self.open.is_some() {
                            self.refuse(input, out, "frame inside a header block");
                            continue;
                        }
                        out.extend_from_slice(&input.split_to(HEAD_LEN));
                        self.passthrough = head.len;
                        continue;
                    }
                    if head.len > MAX_FRAME_SIZE {
                        self.refuse(input, out, "frame over SETTINGS_MAX_FRAME_SIZE");
                        continue;
                    }
                    if head.stream == 0 {
                        self.refuse(input, out, "header block on stream 0");
                        continue;
                    }
                    if input.len() < HEAD_LEN + head.len {
                        input.reserve(HEAD_LEN + head.len - input.len());
                        return;
                    }
                    if let Err(fault) = self.block_frame(head, input, out) {
                        tracing::debug!(error = %fault, "ending HTTP/2 connection");
                    }
                }
            }
        }
    }

    /// Handles one whole `HEADERS` or `CONTINUATION` frame at the front of `input`.
    fn block_frame(
        &mut self,
        head: FrameHead,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), Fault> {
        let payload = &input[HEAD_LEN..HEAD_LEN + head.len];
        let continues_open = self.open.as_ref().map(|o| o.stream == head.stream);
        match (head.kind, continues_open) {
            (HEADERS, None) => {
                let Some((fragment, priority)) = split_headers_payload(head.flags, payload) else {
                    return Err(self.refuse(input, out, "bad padding or priority"));
                };
                self.open = Some(OpenBlock {
                    stream: head.stream,
                    end_stream: head.flags & END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                });
            }
            (CONTINUATION, Some(true)) => {
                if let Some(open) = self.open.as_mut() {
                    open.fragment.extend_from_slice(payload);
                }
            }
            (HEADERS, Some(_)) => return Err(self.refuse(input, out, "HEADERS inside a block")),
            _ => return Err(self.refuse(input, out, "CONTINUATION out of place")),
        }
        input.advance(HEAD_LEN + head.len);
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.fragment.len() > MAX_BLOCK)
        {
            self.undecodable(head.stream, out);
            return Err(Fault::TooLarge);
        }
        match self.open.take_if(|_| head.flags & END_HEADERS != 0) {
            Some(open) => self.rewrite(open, out),
            None => Ok(()),
        }
    }

    /// Decodes a whole block, replaces `:authority` and writes the block's frames for h2.
    fn rewrite(&mut self, open: OpenBlock, out: &mut BytesMut) -> Result<(), Fault> {
        let mut block = Vec::with_capacity(open.fragment.len() + 16);
        if !self.table_size_announced {
            block.push(TABLE_SIZE_ZERO);
            self.table_size_announced = true;
        }
        let mut decoded = 0usize;
        let encoder = &mut self.encoder.0;
        let plain = plain::without_huffman(&open.fragment);
        let fragment = plain.as_deref().unwrap_or(&open.fragment);
        let result = self.decoder.0.decode_with_cb(fragment, |name, value| {
            decoded += name.len() + value.len() + 32;
            if decoded > MAX_BLOCK {
                return;
            }
            let value: &[u8] = if name.as_ref() == AUTHORITY {
                LOCALHOST
            } else {
                &value
            };
            // Writing into a Vec cannot fail.
            let _ = encoder.encode_header_into((&name, value), &mut block);
        });
        if let Err(e) = result {
            self.undecodable(open.stream, out);
            return Err(Fault::Hpack(e));
        }
        if decoded > MAX_BLOCK {
            self.undecodable(open.stream, out);
            return Err(Fault::TooLarge);
        }
        write_block(out, &open, &block);
        Ok(())
    }

    /// Hands h2 whatever it needs to see to refuse the frame at the front of `input` itself: the
    /// open `HEADERS` (if any), then that frame as received.
    fn refuse(&mut self, input: &mut BytesMut, out: &mut BytesMut, why: &'static str) -> Fault {
        if let Some(open) = self.open.take() {
            let head = FrameHead {
                len: 0,
                kind: HEADERS,
                flags: 0,
                stream: open.stream,
            };
            head.write(out);
        }
        out.extend_from_slice(input);
        input.clear();
        self.phase = Phase::Broken;
        tracing::debug!(reason = why, "ending HTTP/2 connection");
        Fault::Refused(why)
    }

    /// Hands h2 a header block that no decoder accepts, so it ends the connection (h2 says
    /// `PROTOCOL_ERROR`).
    fn undecodable(&mut self, stream: u32, out: &mut BytesMut) {
        let head = FrameHead {
            len: 1,
            kind: HEADERS,
            flags: END_HEADERS,
            stream,
        };
        head.write(out);
        out.extend_from_slice(&[UNDECODABLE]);
        self.open = None;
        self.phase = Phase::Broken;
    }
}

/// The header-block fragment and priority data of a `HEADERS` payload, without padding; `None`
/// when the padding or priority fields do not fit (a `PROTOCOL_ERROR` for h2 to raise).
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(&[u8], Option<[u8; 5]>)> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&len, tail) = rest.split_first()?;
        pad = usize::from(len);
        rest = tail;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let (p, tail) = rest.split_first_chunk::<5>()?;
        priority = Some(*p);
        rest = tail;
    }
    let end = rest.len().checked_sub(pad)?;
    Some((&rest[..end], priority))
}

/// Writes `block` as one `HEADERS` frame and as many `CONTINUATION`s as [`MAX_FRAME_SIZE`] needs.
fn write_block(out: &mut BytesMut, open: &OpenBlock, block: &[u8]) {
    let priority_len = if open.priority.is_some() { 5 } else { 0 };
    let first = block.len().min(MAX_FRAME_SIZE - priority_len);
    let mut flags = if open.end_stream { END_STREAM } else { 0 };
    if open.priority.is_some() {
        flags |= PRIORITY;
    }
    if first == block.len() {
        flags |= END_HEADERS;
    }
    out.reserve(block.len() + HEAD_LEN + priority_len);
    FrameHead {
        len: first + priority_len,
        kind: HEADERS,
        flags,
        stream: open.stream,
    }
    .write(out);
    if let Some(p) = open.priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(&block[..first]);
    let mut rest = &block[first..];
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME_SIZE);
        let flags = if n == rest.len() { END_HEADERS } else { 0 };
        FrameHead {
            len: n,
            kind: CONTINUATION,
            flags,
            stream: open.stream,
        }
        .write(out);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

mod plain;
#[cfg(test)]
mod tests;
