//! Lets gRPC clients that send a Unix socket path as `:authority` use the Unix socket.
//!
//! gRPC core (Python grpcio, Ruby, PHP, C++), grpc-java and grpc-swift fill `:authority` from the
//! target when dialing `unix:PATH`; grpcio 1.85 sends the path percent-encoded
//! (`tmp%2Fhark%2Fharkd.sock`). h2 parses `:authority` as an `http::uri::Authority` and resets the
//! stream with PROTOCOL_ERROR when that fails (h2 `src/server.rs`, `Peer::convert_poll_message`;
//! hyperium/h2#487), and neither h2, hyper nor tonic has an option to relax it. This wrapper sits
//! between the accepted socket and the HTTP/2 server and repairs such requests:
//!
//! * client -> server bytes are followed as HTTP/2 frames (connection preface, 9-byte frame
//!   headers). Everything but HEADERS/CONTINUATION passes through unchanged; DATA payloads are
//!   streamed straight into the reader's buffer, never held;
//! * every header block (HEADERS + CONTINUATION*) is HPACK-decoded with a decoder that mirrors the
//!   client's encoder (its dynamic table and size updates). Blocks that need no change are forwarded
//!   byte for byte, so well-behaved clients (grpcurl, grpc-go, tonic) see no difference;
//! * from the first block whose `:authority` is not a valid URI authority, that value is replaced by
//!   `localhost`, and this block and every later one on the connection is re-encoded with literals
//!   that never touch the server's dynamic table (no shared state to keep in step with the client).
//!   Re-encoded blocks keep END_STREAM and the PRIORITY fields, drop padding, and are split into
//!   frames of at most 16 384 bytes (the smallest SETTINGS_MAX_FRAME_SIZE a peer can announce);
//! * server -> client bytes are untouched.
//!
//! Hostile or broken input never panics and is bounded ([`Limits`]). Before the first rewrite,
//! anything unexpected (no preface, HPACK error, oversized block, misplaced CONTINUATION) turns the
//! connection into a plain pipe, so h2 reports the error exactly as it would without the wrapper.
//! After a rewrite the client's blocks can no longer be relayed verbatim, so the read fails with
//! `InvalidData` and the connection closes (RFC 9113 makes these connection errors anyway).
//!
//! HPACK decoding uses the `loona-hpack` crate; the encoder here only writes literals.

use std::{
    fmt, io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The value that replaces an unusable `:authority`.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Largest frame payload we emit: the default (and minimum) SETTINGS_MAX_FRAME_SIZE.
const OUT_FRAME_MAX: usize = 16_384;
const READ_CHUNK: usize = 16 * 1024;

/// Bounds on what one connection may make the wrapper hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest header block as sent (all its HEADERS/CONTINUATION frames, with frame headers).
    pub max_block_bytes: usize,
    /// Largest decoded header list (RFC 9113 size: name + value + 32 per field).
    pub max_decoded_bytes: usize,
    /// Largest HPACK dynamic table the client may use: the SETTINGS_HEADER_TABLE_SIZE that the
    /// server announces (h2's default, 4096, unless the server sets `header_table_size`).
    pub header_table_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // hyper's server refuses header lists over 16 KiB by default; keep well above that so the
        // server, not this wrapper, is what a large but legal request runs into.
        Limits {
            max_block_bytes: 64 * 1024,
            max_decoded_bytes: 64 * 1024,
            header_table_size: 4096,
        }
    }
}

/// An `AsyncRead + AsyncWrite` wrapper for an accepted HTTP/2 server-side connection that replaces
/// an invalid `:authority` sent by the client with `localhost` (see the module docs).
pub struct AuthorityFix<T> {
    inner: T,
    rw: Rewriter,
    out: Vec<u8>,
    out_pos: usize,
    scratch: Box<[u8]>,
    eof: bool,
}

impl<T> AuthorityFix<T> {
    pub fn new(inner: T) -> Self {
        Self::with_limits(inner, Limits::default())
    }

    pub fn with_limits(inner: T, limits: Limits) -> Self {
        AuthorityFix {
            inner,
            rw: Rewriter::new(limits),
            out: Vec::new(),
            out_pos: 0,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// How many `:authority` values were replaced on this connection so far.
    pub fn rewrites(&self) -> u64 {
        self.rw.rewrites
    }
}

impl<T: fmt::Debug> fmt::Debug for AuthorityFix<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("inner", &self.inner)
            .field("reencoding", &self.rw.reencode)
            .field("rewrites", &self.rw.rewrites)
            .finish_non_exhaustive()
    }
}

/// tonic's per-connection info (Unix peer credentials, TCP addresses) comes from the inner stream.
impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.rw.failure() {
                return Poll::Ready(Err(e));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Bytes that pass unchanged (DATA and other payloads, or a connection we gave up on)
            // go straight into the caller's buffer.
            if let Some(limit) = this.rw.passthrough_len() {
                let limit = limit.min(buf.remaining());
                let mut direct = ReadBuf::new(buf.initialize_unfilled_to(limit));
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                if n == 0 {
                    this.eof = true;
                    continue;
                }
                this.rw.passed_through(n);
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let n = chunk.filled().len();
            if n == 0 {
                this.eof = true;
                this.rw.finish(&mut this.out);
                continue;
            }
            this.rw.feed(&this.scratch[..n], &mut this.out)?;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
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

// ===== the client -> server byte rewriter (no I/O) =====

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes of the connection preface seen.
    Preface(usize),
    /// Reading a 9-byte frame header.
    Head,
    /// Passing this many payload bytes of a frame that is not part of a header block.
    Skip(usize),
    /// Collecting this many more payload bytes of a HEADERS/CONTINUATION frame.
    Collect(usize),
    /// Plain pipe for the rest of the connection.
    Transparent,
    /// Gave up after a rewrite; every read fails.
    Failed,
}

/// A header block being collected.
struct Block {
    stream_id: u32,
    /// Flags of its HEADERS frame.
    flags: u8,
    priority: Option<[u8; 5]>,
    /// Its frames exactly as received.
    raw: Vec<u8>,
    /// Where the frame being collected starts in `raw`.
    frame_start: usize,
    /// The HPACK fragments, concatenated.
    fragment: Vec<u8>,
}

struct Rewriter {
    state: State,
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    /// Set by the first rewrite: from then on every block is re-encoded.
    reencode: bool,
    rewrites: u64,
    failure: String,
    limits: Limits,
}

enum Outcome {
    Continue,
    /// Something a compliant client does not send. `head_pending`: the frame header in
    /// `Rewriter::head` was not forwarded or collected yet.
    Anomaly {
        what: String,
        head_pending: bool,
    },
}

fn anomaly_at_head(what: impl Into<String>) -> Outcome {
    Outcome::Anomaly {
        what: what.into(),
        head_pending: true,
    }
}

fn anomaly_in_block(what: impl Into<String>) -> Outcome {
    Outcome::Anomaly {
        what: what.into(),
        head_pending: false,
    }
}

impl Rewriter {
    fn new(limits: Limits) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        // The client may use the protocol default (4096) until it has seen the server's SETTINGS.
        decoder.set_max_allowed_table_size(limits.header_table_size.max(4096));
        Rewriter {
            state: State::Preface(0),
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            block: None,
            decoder,
            reencode: false,
            rewrites: 0,
            failure: String::new(),
            limits,
        }
    }

    fn failure(&self) -> Option<io::Error> {
        (self.state == State::Failed)
            .then(|| io::Error::new(io::ErrorKind::InvalidData, self.failure.clone()))
    }

    /// Payload bytes that may be copied to the reader unexamined, if we are inside such a run.
    fn passthrough_len(&self) -> Option<usize> {
        match self.state {
            State::Skip(n) => Some(n),
            State::Transparent => Some(usize::MAX),
            _ => None,
        }
    }

    fn passed_through(&mut self, n: usize) {
        if let State::Skip(rest) = self.state {
            let rest = rest.saturating_sub(n);
            self.state = if rest == 0 {
                State::Head
            } else {
                State::Skip(rest)
            };
        }
    }

    /// End of input: forward a truncated frame as it was, unless we are re-encoding.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.reencode || !matches!(self.state, State::Head | State::Collect(_)) {
            return;
        }
        if let Some(b) = self.block.take() {
            out.extend_from_slice(&b.raw);
        }
        out.extend_from_slice(&self.head[..self.head_len]);
        self.head_len = 0;
    }

    /// Consumes `input`, appending what the server should read to `out`.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        while !input.is_empty() {
            let outcome = match self.state {
                State::Failed => {
                    return Err(self
                        .failure()
                        .unwrap_or_else(|| io::ErrorKind::InvalidData.into()));
                }
                State::Transparent => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                State::Preface(seen) => {
                    let take = (PREFACE.len() - seen).min(input.len());
                    let (now, rest) = input.split_at(take);
                    out.extend_from_slice(now);
                    input = rest;
                    if now != &PREFACE[seen..seen + take] {
                        // Not HTTP/2 with prior knowledge: nothing for us to do.
                        self.state = State::Transparent;
                    } else if seen + take == PREFACE.len() {
                        self.state = State::Head;
                    } else {
                        self.state = State::Preface(seen + take);
                    }
                    Outcome::Continue
                }
                State::Skip(n) => {
                    let take = n.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.passed_through(take);
                    Outcome::Continue
                }
                State::Head => {
                    let take = (FRAME_HEADER_LEN - self.head_len).min(input.len());
                    self.head[self.head_len..self.head_len + take].copy_from_slice(&input[..take]);
                    self.head_len += take;
                    input = &input[take..];
                    if self.head_len == FRAME_HEADER_LEN {
                        self.head_len = 0;
                        self.on_frame_head(out)
                    } else {
                        Outcome::Continue
                    }
                }
                State::Collect(n) => {
                    let take = n.min(input.len());
                    let Some(block) = self.block.as_mut() else {
                        return Err(self.fail("internal: collecting without a block".into()));
                    };
                    block.raw.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if take == n {
                        self.state = State::Head;
                        self.on_header_frame(out)
                    } else {
                        self.state = State::Collect(n - take);
                        Outcome::Continue
                    }
                }
            };
            if let Outcome::Anomaly { what, head_pending } = outcome {
                self.anomaly(&what, head_pending, out)?;
            }
        }
        Ok(())
    }

    /// A complete frame header is in `self.head` (not yet forwarded).
    fn on_frame_head(&mut self, out: &mut Vec<u8>) -> Outcome {
        let h = self.head;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (ty, flags) = (h[3], h[4]);
        let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let in_block = self.block.as_ref().map(|b| (b.stream_id, b.raw.len()));
        match (ty, in_block) {
            (TYPE_CONTINUATION, Some((id, _))) if id != stream_id => {
                anomaly_at_head("CONTINUATION for another stream")
            }
            (TYPE_CONTINUATION, None) => anomaly_at_head("CONTINUATION without HEADERS"),
            (_, Some(_)) if ty != TYPE_CONTINUATION => {
                anomaly_at_head(format!("frame type {ty:#x} inside a header block"))
            }
            (TYPE_HEADERS, None) if stream_id == 0 => anomaly_at_head("HEADERS on stream 0"),
            (TYPE_HEADERS | TYPE_CONTINUATION, held) => {
                let held = held.map_or(0, |(_, n)| n);
                if held + FRAME_HEADER_LEN + len > self.limits.max_block_bytes {
                    return anomaly_at_head(format!(
                        "header block over {} bytes",
                        self.limits.max_block_bytes
                    ));
                }
                let block = self.block.get_or_insert_with(|| Block {
                    stream_id,
                    flags,
                    priority: None,
                    raw: Vec::new(),
                    frame_start: 0,
                    fragment: Vec::new(),
                });
                block.frame_start = block.raw.len();
                block.raw.extend_from_slice(&h);
                if len == 0 {
                    self.on_header_frame(out)
                } else {
                    self.state = State::Collect(len);
                    Outcome::Continue
                }
            }
            _ => {
                out.extend_from_slice(&h);
                if len > 0 {
                    self.state = State::Skip(len);
                }
                Outcome::Continue
            }
        }
    }

    /// The current HEADERS/CONTINUATION frame is complete in `block.raw[frame_start..]`.
    fn on_header_frame(&mut self, out: &mut Vec<u8>) -> Outcome {
        let Some(block) = self.block.as_mut() else {
            return anomaly_in_block("internal: header frame without a block");
        };
        let Some(&[ty, flags]) = block.raw.get(block.frame_start + 3..block.frame_start + 5) else {
            return anomaly_in_block("internal: short frame header");
        };
        let mut start = block.frame_start + FRAME_HEADER_LEN;
        let mut end = block.raw.len();
        if ty == TYPE_HEADERS {
            let mut pad = 0;
            if flags & FLAG_PADDED != 0 {
                let Some(&p) = block.raw.get(start) else {
                    return anomaly_in_block("PADDED HEADERS without a pad length");
                };
                pad = usize::from(p);
                start += 1;
            }
            if flags & FLAG_PRIORITY != 0 {
                let Some(prio) = block.raw.get(start..start + 5) else {
                    return anomaly_in_block("PRIORITY HEADERS too short");
                };
                let mut p = [0; 5];
                p.copy_from_slice(prio);
                block.priority = Some(p);
                start += 5;
            }
            if start + pad > end {
                return anomaly_in_block("HEADERS padding longer than the payload");
            }
            end -= pad;
        }
        block.fragment.extend_from_slice(&block.raw[start..end]);
        if flags & FLAG_END_HEADERS == 0 {
            return Outcome::Continue;
        }
        match self.block.take() {
            Some(block) => self.on_block(block, out),
            None => Outcome::Continue,
        }
    }

    /// A whole header block was received.
    fn on_block(&mut self, block: Block, out: &mut Vec<u8>) -> Outcome {
        let limit = self.limits.max_decoded_bytes;
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        let mut too_big = false;
        let mut bad_authority = None;
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            size = size.saturating_add(name.len() + value.len() + 32);
            too_big |= size > limit;
            if too_big {
                return;
            }
            let replace = &name[..] == b":authority" && !is_valid_authority(&value);
            if replace && bad_authority.is_none() {
                bad_authority = Some(value.iter().take(80).copied().collect::<Vec<u8>>());
            }
            let value = if replace {
                REPLACEMENT_AUTHORITY.to_vec()
            } else {
                value.into_owned()
            };
            fields.push((name.into_owned(), value));
        });
        if let Err(e) = decoded {
            // Our decoder no longer mirrors the client's encoder.
            self.block = Some(block);
            return anomaly_in_block(format!("HPACK: {e}"));
        }
        if too_big {
            if self.reencode {
                return anomaly_in_block(format!("header list over {limit} bytes"));
            }
            // Decoding still succeeded, so the tables stay in step: let the server refuse it.
            out.extend_from_slice(&block.raw);
            return Outcome::Continue;
        }
        if let Some(original) = bad_authority {
            if !self.reencode {
                tracing::debug!(
                    authority = %String::from_utf8_lossy(&original),
                    "client sent an invalid :authority (a socket path?); using localhost from now on"
                );
            }
            self.reencode = true;
            self.rewrites += 1;
        }
        if !self.reencode {
            out.extend_from_slice(&block.raw);
            return Outcome::Continue;
        }
        let mut fragment = Vec::with_capacity(block.fragment.len() + 64);
        for (name, value) in &fields {
            encode_literal(&mut fragment, name, value);
        }
        emit_header_frames(out, block.stream_id, block.flags, block.priority, &fragment);
        Outcome::Continue
    }

    fn anomaly(&mut self, what: &str, head_pending: bool, out: &mut Vec<u8>) -> io::Result<()> {
        if self.reencode {
            return Err(self.fail(format!(
                "after an :authority rewrite the client sent {what}; closing"
            )));
        }
        tracing::trace!("h2 authority fix: {what}; passing the connection through");
        if let Some(b) = self.block.take() {
            out.extend_from_slice(&b.raw);
        }
        if head_pending {
            out.extend_from_slice(&self.head);
        }
        self.state = State::Transparent;
        Ok(())
    }

    fn fail(&mut self, why: String) -> io::Error {
        self.state = State::Failed;
        self.failure = why;
        io::Error::new(io::ErrorKind::InvalidData, self.failure.clone())
    }
}

/// What h2 accepts as `:authority`.
fn is_valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

// ===== HPACK literals and frames out =====

/// RFC 7541 Appendix A indices of names worth indexing.
fn static_name_index(name: &[u8]) -> Option<usize> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-encoding" => 16,
        b"authorization" => 23,
        b"content-length" => 28,
        b"content-type" => 31,
        b"user-agent" => 58,
        _ => return None,
    })
}

fn encode_integer(out: &mut Vec<u8>, pattern: u8, prefix_bits: u8, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(pattern | value as u8);
        return;
    }
    out.push(pattern | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// Literal without indexing (never indexed for credentials), so the server's table stays as is.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let pattern = if matches!(name, b"authorization" | b"cookie" | b"proxy-authorization") {
        0x10
    } else {
        0x00
    };
    match static_name_index(name) {
        Some(i) => encode_integer(out, pattern, 4, i),
        None => {
            out.push(pattern);
            encode_string(out, name);
        }
    }
    encode_string(out, value);
}

fn emit_header_frames(
    out: &mut Vec<u8>,
    stream_id: u32,
    headers_flags: u8,
    priority: Option<[u8; 5]>,
    fragment: &[u8],
) {
    let mut rest = fragment;
    let mut first = true;
    loop {
        let prio = if first { priority } else { None };
        let room = OUT_FRAME_MAX - prio.map_or(0, |p| p.len());
        let (chunk, tail) = rest.split_at(room.min(rest.len()));
        let (ty, mut flags) = if first {
            let f =
                (headers_flags & FLAG_END_STREAM) | if prio.is_some() { FLAG_PRIORITY } else { 0 };
            (TYPE_HEADERS, f)
        } else {
            (TYPE_CONTINUATION, 0)
        };
        if tail.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        let len = chunk.len() + prio.map_or(0, |p| p.len());
        out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[ty, flags]);
        out.extend_from_slice(&stream_id.to_be_bytes());
        if let Some(p) = prio {
            out.extend_from_slice(&p);
        }
        out.extend_from_slice(chunk);
        rest = tail;
        first = false;
        if rest.is_empty() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- helpers: a hand-rolled client ----

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[ty, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn settings() -> Vec<u8> {
        frame(0x4, 0, 0, &[])
    }

    /// Literal with incremental indexing, new name.
    fn lit_idx(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x40);
        encode_string(out, name);
        encode_string(out, value);
    }

    /// Literal with incremental indexing, name from the static table.
    fn lit_idx_name(out: &mut Vec<u8>, index: usize, value: &[u8]) {
        encode_integer(out, 0x40, 6, index);
        encode_string(out, value);
    }

    fn indexed(out: &mut Vec<u8>, index: usize) {
        encode_integer(out, 0x80, 7, index);
    }

    /// What grpcio sends first on `unix:/tmp/x/harkd.sock` (same representations it uses).
    fn grpcio_first_block(authority: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        lit_idx_name(&mut b, 4, b"/hark.v1.Hark/GetStatus"); // :path      -> dyn 62 after all
        lit_idx_name(&mut b, 1, authority); // :authority -> table
        indexed(&mut b, 3); // :method POST
        indexed(&mut b, 6); // :scheme http
        lit_idx_name(&mut b, 31, b"application/grpc");
        lit_idx(&mut b, b"te", b"trailers");
        b
    }

    fn rewrite_all(input: &[u8]) -> (Vec<u8>, io::Result<()>, Rewriter) {
        let mut rw = Rewriter::new(Limits::default());
        let mut out = Vec::new();
        let r = rw.feed(input, &mut out);
        (out, r, rw)
    }

    fn rewrite_bytewise(input: &[u8]) -> (Vec<u8>, io::Result<()>) {
        let mut rw = Rewriter::new(Limits::default());
        let mut out = Vec::new();
        for b in input {
            if let Err(e) = rw.feed(std::slice::from_ref(b), &mut out) {
                return (out, Err(e));
            }
        }
        (out, Ok(()))
    }

    /// Splits server-bound bytes into (type, flags, stream, payload) after the preface.
    fn parse_frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE));
        let mut rest = &bytes[PREFACE.len()..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            frames.push((rest[3], rest[4], id, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        frames
    }

    fn decode_blocks(frames: &[(u8, u8, u32, Vec<u8>)]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut dec = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut frag = Vec::new();
        for (ty, flags, _, p) in frames {
            if *ty != TYPE_HEADERS && *ty != TYPE_CONTINUATION {
                continue;
            }
            let mut p = &p[..];
            if *ty == TYPE_HEADERS {
                let mut pad = 0;
                if flags & FLAG_PADDED != 0 {
                    pad = usize::from(p[0]);
                    p = &p[1..];
                }
                if flags & FLAG_PRIORITY != 0 {
                    p = &p[5..];
                }
                p = &p[..p.len() - pad];
            }
            frag.extend_from_slice(p);
            if flags & FLAG_END_HEADERS != 0 {
                blocks.push(dec.decode(&frag).expect("our output decodes"));
                frag.clear();
            }
        }
        blocks
    }

    fn authority_of(block: &[(Vec<u8>, Vec<u8>)]) -> Option<Vec<u8>> {
        block
            .iter()
            .find(|(n, _)| n == b":authority")
            .map(|(_, v)| v.clone())
    }

    // ---- pure rewriter tests ----

    #[test]
    fn authority_validity_matches_h2() {
        assert!(is_valid_authority(b"localhost"));
        assert!(is_valid_authority(b"127.0.0.1:50051"));
        assert!(is_valid_authority(b"[::1]:1"));
        assert!(!is_valid_authority(b"tmp%2Fhark%2Fharkd.sock")); // grpcio >= 1.5x
        assert!(!is_valid_authority(b"/tmp/hark/harkd.sock")); // grpc-java, older grpc core
        assert!(!is_valid_authority(b""));
        assert!(!is_valid_authority(b"\xff"));
    }

    #[test]
    fn valid_authority_is_forwarded_byte_for_byte() {
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        // Huffman-coded value (RFC 7541 C.4.1 "www.example.com") exercises that decoder path.
        let mut b = vec![0x82, 0x86, 0x84, 0x41, 0x8c];
        b.extend([
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ]);
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0"));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &[0x82, 0x86, 0x84, 0xbe],
        ));
        let (out, r, rw) = rewrite_all(&input);
        r.unwrap();
        assert_eq!(out, input);
        assert_eq!(rw.rewrites, 0);
        assert_eq!(rewrite_bytewise(&input).0, input);
    }

    #[test]
    fn socket_path_authority_is_replaced_and_later_references_too() {
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &grpcio_first_block(b"tmp%2Fx%2Fharkd.sock"),
        ));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0"));
        // Second call on the channel: everything from the dynamic table (te=62, content-type=63,
        // :authority=64, :path=65).
        let mut b = Vec::new();
        for i in [65, 64, 3, 6, 63, 62] {
            indexed(&mut b, i);
        }
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &b,
        ));
        let (out, r, rw) = rewrite_all(&input);
        r.unwrap();
        assert_eq!(rw.rewrites, 2);
        let frames = parse_frames(&out);
        let blocks = decode_blocks(&frames);
        assert_eq!(blocks.len(), 2);
        for block in &blocks {
            assert_eq!(authority_of(block).as_deref(), Some(REPLACEMENT_AUTHORITY));
            assert!(block.contains(&(b":path".to_vec(), b"/hark.v1.Hark/GetStatus".to_vec())));
            assert!(block.contains(&(b"te".to_vec(), b"trailers".to_vec())));
        }
        // Flags: END_STREAM kept on the second HEADERS only; DATA untouched.
        assert_eq!(frames[1].0, TYPE_HEADERS);
        assert_eq!(frames[1].1, FLAG_END_HEADERS);
        assert_eq!(frames[2], (0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0".to_vec()));
        assert_eq!(frames[3].1, FLAG_END_HEADERS | FLAG_END_STREAM);
        assert_eq!(rewrite_bytewise(&input).0, out);
    }

    #[test]
    fn padded_priority_and_continuation_are_handled() {
        let mut input = PREFACE.to_vec();
        let block = grpcio_first_block(b"/tmp/x.sock");
        let (a, b) = block.split_at(7);
        // HEADERS: PADDED (pad 3) + PRIORITY, first part; CONTINUATION with the rest.
        let mut p = vec![3];
        p.extend([0x80, 0, 0, 0, 15]); // exclusive dependency on stream 0, weight 16
        p.extend(a);
        p.extend([0, 0, 0]);
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            1,
            &p,
        ));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b));
        let (out, r, _) = rewrite_all(&input);
        r.unwrap();
        let frames = parse_frames(&out);
        assert_eq!(frames.len(), 1);
        let (ty, flags, id, payload) = &frames[0];
        assert_eq!((*ty, *id), (TYPE_HEADERS, 1));
        assert_eq!(*flags, FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS);
        assert_eq!(&payload[..5], &[0x80, 0, 0, 0, 15]);
        let blocks = decode_blocks(&frames);
        assert_eq!(
            authority_of(&blocks[0]).as_deref(),
            Some(REPLACEMENT_AUTHORITY)
        );
        assert_eq!(rewrite_bytewise(&input).0, out);
    }

    #[test]
    fn large_blocks_are_split_into_16k_frames() {
        let mut input = PREFACE.to_vec();
        let mut block = grpcio_first_block(b"/tmp/x.sock");
        let big = vec![b'v'; 40_000];
        block.push(0x00); // literal without indexing, new name
        encode_string(&mut block, b"x-big");
        encode_string(&mut block, &big);
        let mut chunks = block.chunks(10_000);
        input.extend(frame(TYPE_HEADERS, 0, 1, chunks.next().unwrap()));
        let rest: Vec<_> = chunks.collect();
        for (i, c) in rest.iter().enumerate() {
            let f = if i + 1 == rest.len() {
                FLAG_END_HEADERS
            } else {
                0
            };
            input.extend(frame(TYPE_CONTINUATION, f, 1, c));
        }
        let (out, r, _) = rewrite_all(&input);
        r.unwrap();
        let frames = parse_frames(&out);
        assert!(frames.len() >= 3);
        assert!(frames.iter().all(|f| f.3.len() <= OUT_FRAME_MAX));
        assert!(frames[1..].iter().all(|f| f.0 == TYPE_CONTINUATION));
        let blocks = decode_blocks(&frames);
        assert!(blocks[0].contains(&(b"x-big".to_vec(), big)));
    }

    #[test]
    fn size_updates_follow_the_client() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &grpcio_first_block(b"a/b"),
        ));
        // Table size 0 then back to 4096 (evicts everything), then a fresh entry.
        let mut b = vec![0x20, 0x3f, 0xe1, 0x1f];
        lit_idx_name(&mut b, 1, b"c/d");
        b.extend([0x83, 0x86]);
        lit_idx_name(&mut b, 4, b"/p");
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &b,
        ));
        // 63 is now :authority c/d.
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            5,
            &[0xbf, 0x83, 0x86, 0xbe],
        ));
        let (out, r, rw) = rewrite_all(&input);
        r.unwrap();
        assert_eq!(rw.rewrites, 3);
        let blocks = decode_blocks(&parse_frames(&out));
        assert_eq!(
            blocks[2].iter().find(|(n, _)| n == b":path").unwrap().1,
            b"/p"
        );
        // Referencing the evicted entries fails the connection (we are re-encoding by then).
        let mut bad = input.clone();
        bad.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 7, &[0xc1]));
        let (_, r, _) = rewrite_all(&bad);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        // A size update beyond the advertised table size is refused too.
        let mut big = input.clone();
        big.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            7,
            &[0x3f, 0xe2, 0x1f, 0x82],
        ));
        assert!(rewrite_all(&big).1.is_err());
    }

    #[test]
    fn before_a_rewrite_anomalies_pass_through_unchanged() {
        let cases: Vec<Vec<u8>> = vec![
            // Not HTTP/2.
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            // HEADERS claiming 16 MiB: must not be buffered.
            [
                PREFACE.as_slice(),
                &[0xff, 0xff, 0xff, 0x1, 0x4, 0, 0, 0, 1],
                &[0x82; 100],
            ]
            .concat(),
            // Bad HPACK index.
            [
                PREFACE.as_slice(),
                &frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0x7f]),
                &settings(),
            ]
            .concat(),
            // Frame inside a header block.
            [
                PREFACE.as_slice(),
                &frame(TYPE_HEADERS, 0, 1, &[0x82]),
                &settings(),
                &settings(),
            ]
            .concat(),
            // CONTINUATION out of nowhere, and for another stream.
            [
                PREFACE.as_slice(),
                &frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]),
            ]
            .concat(),
            [
                PREFACE.as_slice(),
                &frame(TYPE_HEADERS, 0, 1, &[0x82]),
                &frame(TYPE_CONTINUATION, 4, 3, &[0x86]),
            ]
            .concat(),
            // Padding longer than the payload; HEADERS on stream 0.
            [
                PREFACE.as_slice(),
                &frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_PADDED, 1, &[9, 0x82]),
            ]
            .concat(),
            [
                PREFACE.as_slice(),
                &frame(TYPE_HEADERS, FLAG_END_HEADERS, 0, &[0x82]),
            ]
            .concat(),
        ];
        for input in cases {
            let (out, r, rw) = rewrite_all(&input);
            r.unwrap();
            assert_eq!(out, input);
            assert_eq!(rw.state, State::Transparent);
            assert!(rw.block.is_none());
            assert_eq!(rewrite_bytewise(&input).0, input);
        }
    }

    #[test]
    fn after_a_rewrite_anomalies_fail_the_connection() {
        let mut start = PREFACE.to_vec();
        start.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &grpcio_first_block(b"a/b"),
        ));
        let tails: Vec<Vec<u8>> = vec![
            vec![0xff, 0xff, 0xff, 0x1, 0x4, 0, 0, 0, 3],
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0xff, 0x7f]),
            [frame(TYPE_HEADERS, 0, 3, &[0x82]), settings()].concat(),
        ];
        for tail in tails {
            let (_, r, rw) = rewrite_all(&[start.clone(), tail].concat());
            assert!(r.is_err());
            assert!(rw.failure().is_some());
        }
    }

    #[test]
    fn truncated_input_is_forwarded_when_not_reencoding() {
        let mut input = PREFACE.to_vec();
        input.extend(&frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x82, 0x86, 0x84])[..10]);
        let (mut out, r, mut rw) = rewrite_all(&input);
        r.unwrap();
        rw.finish(&mut out);
        assert_eq!(out, input);
    }

    /// Random frame soup, fed in random pieces: never panics, never holds more than the limits,
    /// and the output does not depend on how the input was split.
    #[test]
    fn hostile_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..3000 {
            let mut input = PREFACE.to_vec();
            if round % 2 == 0 {
                input.extend(frame(
                    TYPE_HEADERS,
                    FLAG_END_HEADERS,
                    1,
                    &grpcio_first_block(b"x/y"),
                ));
            }
            for _ in 0..rnd() % 6 {
                let ty = [TYPE_HEADERS, TYPE_CONTINUATION, 0x0, 0x4, 0x8][(rnd() % 5) as usize];
                let flags = (rnd() & 0x2d) as u8;
                let id = (rnd() % 4) as u32;
                let len = (rnd() % 40) as usize;
                let mut payload: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
                if rnd() % 3 == 0 {
                    // Mostly valid HPACK now and then.
                    payload = [0x82, 0x86, 0x84, 0xbe, 0xbf, 0xc0, 0x20, 0x3f, 0xe1, 0x1f]
                        .iter()
                        .filter(|_| rnd() % 2 == 0)
                        .copied()
                        .collect();
                }
                let mut f = frame(ty, flags, id, &payload);
                if rnd() % 10 == 0 {
                    f[0] = rnd() as u8; // lie about the length
                }
                input.extend(f);
            }
            let (whole, r1, rw) = rewrite_all(&input);
            assert!(
                rw.block
                    .as_ref()
                    .is_none_or(|b| b.raw.len() <= Limits::default().max_block_bytes)
            );
            let mut rw2 = Rewriter::new(Limits::default());
            let mut pieces = Vec::new();
            let mut rest = &input[..];
            let mut r2 = Ok(());
            while !rest.is_empty() && r2.is_ok() {
                let n = 1 + (rnd() as usize % rest.len().min(17));
                r2 = rw2.feed(&rest[..n], &mut pieces);
                rest = &rest[n..];
            }
            assert_eq!(r1.is_ok(), r2.is_ok(), "round {round}");
            if r1.is_ok() {
                assert_eq!(whole, pieces, "round {round}");
            }
        }
    }

    /// Yields its bytes a few at a time, returning Pending in between.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        pending: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.pending = !self.pending;
            if self.pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.step = self.step % 7 + 1;
            let n = self
                .step
                .min(self.data.len() - self.pos)
                .min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_reader_matches_the_rewriter_for_any_read_sizes() {
        use tokio::io::AsyncReadExt as _;
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        input.extend(frame(0x0, 0, 1, &[7; 100])); // DATA before any header block
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &grpcio_first_block(b"tmp%2Fx"),
        ));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, &[9; 3000]));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            3,
            &[0xc1, 0xc0, 0x83, 0x86],
        ));
        let (expected, r, _) = rewrite_all(&input);
        r.unwrap();
        for caller_buf in [1, 3, 64, 100_000] {
            let mut fix = AuthorityFix::new(Trickle {
                data: input.clone(),
                pos: 0,
                step: caller_buf,
                pending: false,
            });
            let mut got = Vec::new();
            let mut buf = vec![0; caller_buf];
            loop {
                let n = fix.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, expected, "caller buffer {caller_buf}");
            assert_eq!(fix.rewrites(), 2);
        }
    }

    // ---- through a real h2 server ----

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    /// Sends `client_bytes` to an h2 server (wrapped or not) and returns the requests it accepted
    /// and the frame types + error codes of RST_STREAM frames it sent back.
    async fn through_h2(
        client_bytes: Vec<u8>,
        wrap: bool,
    ) -> (Vec<http::Request<h2::RecvStream>>, Vec<u32>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let srv = tokio::spawn(async move {
            let mut reqs = Vec::new();
            let mut builder = h2::server::Builder::new();
            builder.max_header_list_size(1 << 20);
            async fn run<T: AsyncRead + AsyncWrite + Unpin>(
                io: T,
                builder: h2::server::Builder,
                reqs: &mut Vec<http::Request<h2::RecvStream>>,
            ) {
                let Ok(mut conn) = builder.handshake::<_, bytes::Bytes>(io).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let _ = respond.send_response(http::Response::new(()), true);
                    reqs.push(req);
                }
            }
            if wrap {
                run(AuthorityFix::new(server), builder, &mut reqs).await;
            } else {
                run::<DuplexStream>(server, builder, &mut reqs).await;
            }
            reqs
        });
        client.write_all(&client_bytes).await.unwrap();
        // Read the server's frames for a moment, then hang up.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(300), client.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        drop(client);
        let reqs = srv.await.unwrap();
        let mut resets = Vec::new();
        let mut rest = &got[..];
        while rest.len() >= 9 {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            if rest[3] == 0x3 && len == 4 {
                resets.push(u32::from_be_bytes([rest[9], rest[10], rest[11], rest[12]]));
            }
            rest = &rest[(9 + len).min(rest.len())..];
        }
        (reqs, resets)
    }

    fn grpcio_like_connection() -> Vec<u8> {
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &grpcio_first_block(b"tmp%2Fx%2Fharkd.sock"),
        ));
        let mut b = Vec::new();
        for i in [65, 64, 3, 6, 63, 62] {
            indexed(&mut b, i);
        }
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &b,
        ));
        input
    }

    #[tokio::test]
    async fn h2_resets_socket_path_authority_without_the_fix() {
        let (reqs, resets) = through_h2(grpcio_like_connection(), false).await;
        assert!(reqs.is_empty());
        assert_eq!(resets, vec![1, 1]); // PROTOCOL_ERROR on both streams
    }

    #[tokio::test]
    async fn h2_accepts_them_with_the_fix() {
        let (reqs, resets) = through_h2(grpcio_like_connection(), true).await;
        assert!(resets.is_empty(), "{resets:?}");
        assert_eq!(reqs.len(), 2);
        for r in &reqs {
            assert_eq!(r.uri().authority().map(|a| a.as_str()), Some("localhost"));
            assert_eq!(r.uri().path(), "/hark.v1.Hark/GetStatus");
            assert_eq!(r.headers()["te"], "trailers");
        }
    }

    #[tokio::test]
    async fn h2_accepts_large_padded_continued_requests_with_the_fix() {
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        let mut block = grpcio_first_block(b"/tmp/x.sock");
        let big = vec![b'v'; 30_000];
        block.push(0x00);
        encode_string(&mut block, b"x-big");
        encode_string(&mut block, &big);
        let (a, rest) = block.split_at(16_000);
        let mut p = vec![2, 0, 0, 0, 0, 15];
        p.extend(a);
        p.extend([0, 0]);
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            1,
            &p,
        ));
        let (b, c) = rest.split_at(rest.len() / 2);
        input.extend(frame(TYPE_CONTINUATION, 0, 1, b));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, c));
        let (reqs, resets) = through_h2(input, true).await;
        assert!(resets.is_empty());
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].uri().authority().unwrap().as_str(), "localhost");
        assert_eq!(reqs[0].headers()["x-big"].len(), 30_000);
    }
}
