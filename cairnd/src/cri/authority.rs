//! Lets every gRPC client through, whatever HTTP/2 `:authority` it sends (run by cairnd,
//! on each connection of the CRI socket).
//!
//! Over a unix socket, gRPC clients disagree on the `:authority` of their requests:
//! grpc-go before about 1.50 (kubelet ≤ 1.26, crictl 1.26) and grpc-java send the socket
//! path (`/run/cairn/cairn.sock`), gRPC C-core since 1.57 (Python `grpcio`) its
//! %-encoding, newer grpc-go `localhost`, some none at all. The `h2` crate under tonic
//! takes the authority as a URI authority and resets the stream (PROTOCOL_ERROR) when it
//! is not one, before any handler runs; containerd and CRI-O accept all of them.
//!
//! So the bytes a client sends pass through a [`Rewriter`] before `h2` reads them. It
//! follows the HTTP/2 framing, passes every frame through untouched except header blocks
//! (HEADERS and their CONTINUATIONs), which it decodes with the client's HPACK context
//! (`httlib-hpack`, whose table-driven Huffman decoder takes about 2 µs a request) and
//! encodes again as plain literals (no Huffman, no indexing, so `h2`'s own table stays
//! empty and the two decoders can never disagree), with an `:authority` that is not a
//! valid URI authority replaced by `localhost`. cairn uses the authority for nothing.
//! Anything the rewriter does not understand (not HTTP/2, a broken header block, a
//! framing error) switches it to passing bytes through as they are, so `h2` sees the
//! client's own bytes and answers the error as it always would.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length.
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload every HTTP/2 peer must accept (SETTINGS_MAX_FRAME_SIZE's
/// initial value); re-encoded blocks are split into frames of at most this.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this is not buffered: the rewriter steps aside and lets
/// `h2` enforce its own limits on the client's bytes.
const MAX_BLOCK: usize = 1 << 20;
/// What an unusable authority becomes.
const REPLACEMENT: &[u8] = b"localhost";

/// Where the rewriter is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside the connection preface, this many bytes of it still to come.
    Preface(usize),
    /// At the start of a frame.
    FrameHeader,
    /// Inside the payload of a frame passed through, this many bytes still to come.
    Payload(usize),
    /// Passing everything through unchanged from here on.
    Transparent,
}

/// A header block being collected from a HEADERS frame and its CONTINUATIONs.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    /// The frames exactly as received, for when the rewriter must step aside.
    original: Vec<u8>,
}

/// The byte-stream rewriter of a client's half of one HTTP/2 connection.
pub struct Rewriter {
    state: State,
    /// The client's HPACK context. Its dynamic table is as large as the encoder may
    /// assume: 4096 bytes, SETTINGS_HEADER_TABLE_SIZE's initial value, which h2 (under
    /// tonic) does not change.
    decoder: httlib_hpack::Decoder<'static>,
    pending: Option<PendingBlock>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    pub fn new() -> Self {
        Rewriter {
            state: State::Preface(PREFACE.len()),
            decoder: httlib_hpack::Decoder::default(),
            pending: None,
        }
    }

    /// Consumes what it can of `input` (bytes from the client, in order), appending what
    /// `h2` should read to `out`. Bytes of an incomplete frame stay in `input`.
    pub fn feed(&mut self, input: &mut BytesMut, out: &mut BytesMut) {
        while !input.is_empty() {
            match self.state {
                State::Transparent => {
                    out.extend_from_slice(&input.split());
                }
                State::Preface(left) => self.preface(left, input, out),
                State::Payload(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input.split_to(n));
                    self.state = match left - n {
                        0 => State::FrameHeader,
                        rest => State::Payload(rest),
                    };
                }
                State::FrameHeader => {
                    if !self.frame(input, out) {
                        return;
                    }
                }
            }
        }
    }

    /// Passes preface bytes through, stepping aside if the client is not speaking HTTP/2
    /// with prior knowledge.
    fn preface(&mut self, left: usize, input: &mut BytesMut, out: &mut BytesMut) {
        let n = left.min(input.len());
        let offset = PREFACE.len() - left;
        let matches = input[..n] == PREFACE[offset..offset + n];
        out.extend_from_slice(&input.split_to(n));
        self.state = match (matches, left - n) {
            (false, _) => State::Transparent,
            (true, 0) => State::FrameHeader,
            (true, rest) => State::Preface(rest),
        };
    }

    /// Handles the frame at the start of `input`. Returns false when more bytes are needed.
    fn frame(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> bool {
        if input.len() < FRAME_HEADER {
            return false;
        }
        let len =
            (usize::from(input[0]) << 16) | (usize::from(input[1]) << 8) | usize::from(input[2]);
        let kind = input[3];
        let flags = input[4];
        let stream_id = u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
        let is_block = kind == HEADERS || kind == CONTINUATION;
        if !is_block || len > MAX_BLOCK {
            if self.pending.is_some() || len > MAX_BLOCK {
                // A header block interrupted by another frame (a connection error for
                // h2), or one too large to hold: let h2 judge the client's own bytes.
                self.step_aside(out);
                return true;
            }
            out.extend_from_slice(&input.split_to(FRAME_HEADER));
            self.state = if len == 0 {
                State::FrameHeader
            } else {
                State::Payload(len)
            };
            return true;
        }
        if input.len() < FRAME_HEADER + len {
            return false;
        }
        let frame = input.split_to(FRAME_HEADER + len);
        let collected = match kind {
            HEADERS => self.headers(flags, stream_id, &frame),
            _ => self.continuation(stream_id, &frame),
        };
        if !collected {
            out.extend_from_slice(&frame);
            self.step_aside(out);
            return true;
        }
        if flags & END_HEADERS != 0 {
            self.finish_block(out);
        }
        true
    }

    /// Starts a header block from a HEADERS frame; false if the frame is malformed or a
    /// block is already open.
    fn headers(&mut self, flags: u8, stream_id: u32, frame: &[u8]) -> bool {
        if self.pending.is_some() {
            return false;
        }
        let Some((priority, fragment)) = split_headers_payload(flags, &frame[FRAME_HEADER..])
        else {
            return false;
        };
        self.pending = Some(PendingBlock {
            stream_id,
            end_stream: flags & END_STREAM != 0,
            priority,
            block: fragment.to_vec(),
            original: frame.to_vec(),
        });
        true
    }

    /// Adds a CONTINUATION to the open block; false if there is none for its stream.
    fn continuation(&mut self, stream_id: u32, frame: &[u8]) -> bool {
        let Some(pending) = self.pending.as_mut().filter(|p| p.stream_id == stream_id) else {
            return false;
        };
        if pending.block.len() + frame.len() > MAX_BLOCK {
            return false;
        }
        pending.block.extend_from_slice(&frame[FRAME_HEADER..]);
        pending.original.extend_from_slice(frame);
        true
    }

    /// Decodes the complete block and writes it again as HEADERS (+ CONTINUATION) frames.
    fn finish_block(&mut self, out: &mut BytesMut) {
        let Some(mut pending) = self.pending.take() else {
            return;
        };
        let mut fields = Vec::with_capacity(16);
        let mut block = std::mem::take(&mut pending.block);
        if self.decoder.decode(&mut block, &mut fields).is_err() {
            // The client's HPACK context is broken: h2 will say so on the same bytes.
            out.extend_from_slice(&pending.original);
            self.state = State::Transparent;
            return;
        }
        let mut encoded = Vec::with_capacity(pending.original.len() * 2);
        for (name, value, _flags) in &fields {
            let value: &[u8] = if name == b":authority" && !is_authority(value) {
                REPLACEMENT
            } else {
                value
            };
            encode_literal(&mut encoded, name, value);
        }
        write_block(out, &pending, &encoded);
    }

    /// Gives up rewriting: whatever of an open block was held back goes out as received.
    fn step_aside(&mut self, out: &mut BytesMut) {
        if let Some(pending) = self.pending.take() {
            out.extend_from_slice(&pending.original);
        }
        self.state = State::Transparent;
    }
}

/// The priority fields and the header block fragment of a HEADERS payload, without its
/// padding; None if the padding or priority fields do not fit.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, tail) = rest.split_first()?;
        pad = usize::from(n);
        rest = tail;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let fields: [u8; 5] = rest.get(..5)?.try_into().ok()?;
        priority = Some(fields);
        rest = &rest[5..];
    }
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

/// Whether `h2` takes `value` as the authority of a request URI.
fn is_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Appends one header field as "literal without indexing, new name" (RFC 7541 §6.2.2),
/// neither string Huffman-coded.
fn encode_literal(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.push(0);
    encode_string(dst, name);
    encode_string(dst, value);
}

/// An HPACK string literal without Huffman coding: its length as a 7-bit-prefix integer.
fn encode_string(dst: &mut Vec<u8>, s: &[u8]) {
    encode_integer(dst, s.len(), 7, 0);
    dst.extend_from_slice(s);
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1); `first` holds the bits above it.
fn encode_integer(dst: &mut Vec<u8>, mut value: usize, prefix_bits: u32, first: u8) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        // Fits the prefix: the cast keeps the value, which is below 2^prefix_bits.
        dst.push(first | value as u8);
        return;
    }
    dst.push(first | max as u8);
    value -= max;
    while value >= 0x80 {
        dst.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    dst.push(value as u8);
}

/// Writes `block` for `pending`'s stream as one HEADERS frame and as many CONTINUATIONs
/// as it takes, keeping END_STREAM and the priority fields, without padding.
fn write_block(out: &mut BytesMut, pending: &PendingBlock, block: &[u8]) {
    let priority_len = if pending.priority.is_some() { 5 } else { 0 };
    let first_len = block.len().min(MAX_FRAME - priority_len);
    let (first, mut rest) = block.split_at(first_len);
    let mut flags = 0;
    if pending.end_stream {
        flags |= END_STREAM;
    }
    if pending.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_header(
        out,
        priority_len + first.len(),
        HEADERS,
        flags,
        pending.stream_id,
    );
    if let Some(p) = pending.priority {
        out.put_slice(&p);
    }
    out.put_slice(first);
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME);
        let (chunk, tail) = rest.split_at(n);
        let flags = if tail.is_empty() { END_HEADERS } else { 0 };
        frame_header(out, chunk.len(), CONTINUATION, flags, pending.stream_id);
        out.put_slice(chunk);
        rest = tail;
    }
}

fn frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: u32) {
    // Frame lengths here are at most MAX_FRAME, far below the 24-bit limit.
    let len = len as u32;
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream_id);
}

/// A server-side connection whose reads go through a [`Rewriter`]; writes pass through.
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Bytes read from the client not yet consumed by the rewriter.
    raw: BytesMut,
    /// Rewritten bytes not yet handed to the reader.
    out: BytesMut,
    /// The client closed its side.
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::new(),
            raw: BytesMut::new(),
            out: BytesMut::new(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            this.raw.reserve(MAX_FRAME);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.raw
            ))?;
            if n == 0 {
                // End of stream: an incomplete frame still held goes to h2 as it came.
                this.eof = true;
                let rest = this.raw.split();
                this.out.extend_from_slice(&rest);
                continue;
            }
            this.rewriter.feed(&mut this.raw, &mut this.out);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
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

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Encoder = httlib_hpack::Encoder<'static>;
    type Decoder = httlib_hpack::Decoder<'static>;

    /// A request's header block as a client's encoder writes it: every field
    /// Huffman-coded and indexed (so a second request refers to the first's entries).
    fn request_block(encoder: &mut Encoder, authority: &[u8]) -> Vec<u8> {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        let flags = Encoder::HUFFMAN_NAME
            | Encoder::HUFFMAN_VALUE
            | Encoder::WITH_INDEXING
            | Encoder::BEST_FORMAT;
        let mut block = Vec::new();
        for (name, value) in fields {
            encoder
                .encode((name.to_vec(), value.to_vec(), flags), &mut block)
                .unwrap();
        }
        block
    }

    /// Every (name, value) of a block.
    fn decode(decoder: &mut Decoder, block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut fields = Vec::new();
        decoder.decode(&mut block.to_vec(), &mut fields).unwrap();
        fields.into_iter().map(|(n, v, _)| (n, v)).collect()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame_header(&mut out, payload.len(), kind, flags, stream);
        out.put_slice(payload);
        out.to_vec()
    }

    /// Splits `bytes` (after the preface) into frames: (type, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = (usize::from(bytes[0]) << 16)
                | (usize::from(bytes[1]) << 8)
                | usize::from(bytes[2]);
            let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    fn rewrite_all(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut r = Rewriter::new();
        let mut raw = BytesMut::new();
        let mut out = BytesMut::new();
        for piece in input.chunks(chunk) {
            raw.extend_from_slice(piece);
            r.feed(&mut raw, &mut out);
        }
        assert!(raw.is_empty(), "bytes left unconsumed");
        out.to_vec()
    }

    fn authority_of(decoder: &mut Decoder, block: &[u8]) -> Option<Vec<u8>> {
        let fields = decode(decoder, block);
        assert_eq!(fields.len(), 6, "every field kept");
        fields
            .into_iter()
            .find(|(n, _)| n == b":authority")
            .map(|(_, v)| v)
    }

    #[test]
    fn socket_paths_and_percent_encodings_become_localhost_across_requests() {
        for authority in [
            &b"/run/cairn/cairn.sock"[..],
            b"%2Frun%2Fcairn%2Fcairn.sock",
            b"unix:///run/x.sock",
        ] {
            let mut enc = Encoder::default();
            let mut input = PREFACE.to_vec();
            input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
            input.extend(frame(
                HEADERS,
                END_HEADERS,
                1,
                &request_block(&mut enc, authority),
            ));
            input.extend(frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]));
            // The second request refers to the first's dynamic-table entries.
            input.extend(frame(
                HEADERS,
                END_HEADERS,
                3,
                &request_block(&mut enc, authority),
            ));
            for chunk in [1, 7, 4096] {
                let out = rewrite_all(&input, chunk);
                let got = frames(&out);
                assert_eq!(got.len(), 4);
                assert_eq!((got[0].0, got[2].0, got[2].1), (0x4, 0x0, END_STREAM));
                // h2's decoder starts from an empty table and needs nothing in it.
                let mut h2 = Decoder::default();
                for (kind, flags, _, payload) in [&got[1], &got[3]] {
                    assert_eq!((*kind, *flags), (HEADERS, END_HEADERS));
                    assert_eq!(authority_of(&mut h2, payload).unwrap(), b"localhost");
                }
            }
        }
    }

    #[test]
    fn valid_authorities_and_other_fields_are_kept() {
        let mut enc = Encoder::default();
        let block = request_block(&mut enc, b"localhost:1234");
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        let got = frames(&rewrite_all(&input, 3));
        let fields = decode(&mut Decoder::default(), &got[0].3);
        let expected = decode(&mut Decoder::default(), &block);
        assert_eq!(fields, expected);
        assert_eq!(got[0].1, END_HEADERS | END_STREAM);
    }

    #[test]
    fn padding_priority_and_continuations_are_understood() {
        let mut enc = Encoder::default();
        let block = request_block(&mut enc, b"/a/b.sock");
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8]; // pad length
        payload.extend([0x80, 0, 0, 0, 16]); // exclusive dependency on 0, weight 16
        payload.extend(a);
        payload.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY, 5, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 5, b));
        let got = frames(&rewrite_all(&input, 5));
        assert_eq!(got.len(), 1);
        let (kind, flags, stream, payload) = &got[0];
        assert_eq!(
            (*kind, *flags, *stream),
            (HEADERS, PRIORITY | END_HEADERS, 5)
        );
        assert_eq!(payload[..5], [0x80, 0, 0, 0, 16]);
        let mut h2 = Decoder::default();
        assert_eq!(authority_of(&mut h2, &payload[5..]).unwrap(), b"localhost");
    }

    #[test]
    fn a_large_block_is_split_into_continuations() {
        let big = vec![b'x'; 40_000];
        let mut block = Vec::new();
        encode_literal(&mut block, b":authority", b"/s");
        encode_literal(&mut block, b"x-big", &big);
        let mut input = PREFACE.to_vec();
        // The client's own frames may be up to the size h2 advertised; one here.
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let got = frames(&rewrite_all(&input, 1000));
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|f| f.3.len() <= MAX_FRAME));
        assert_eq!(
            got.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(),
            [(HEADERS, 0), (CONTINUATION, 0), (CONTINUATION, END_HEADERS)]
        );
        let whole: Vec<u8> = got.iter().flat_map(|f| f.3.clone()).collect();
        let fields = decode(&mut Decoder::default(), &whole);
        assert_eq!(fields[0].1, b"localhost");
        assert_eq!(fields[1].1, big);
    }

    #[test]
    fn what_it_does_not_understand_passes_through_unchanged() {
        // Not HTTP/2 at all.
        let http1 = b"GET / HTTP/1.1\r\nHost: /x\r\n\r\n";
        assert_eq!(rewrite_all(http1, 2), http1);
        // A header block that does not decode (an index past both tables).
        let mut input = PREFACE.to_vec();
        let bad = frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f]);
        input.extend(&bad);
        input.extend(frame(0x0, 0, 1, b"rest"));
        assert_eq!(rewrite_all(&input, 4), input);
        // A block interrupted by another frame.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0x0, 0, 1, b"data"));
        assert_eq!(rewrite_all(&input, 64), input);
    }

    #[test]
    fn integers_follow_rfc7541() {
        // C.1.2: 1337 with a 5-bit prefix.
        let mut v = Vec::new();
        encode_integer(&mut v, 1337, 5, 0);
        assert_eq!(v, [31, 154, 10]);
        let mut v = Vec::new();
        encode_integer(&mut v, 10, 5, 0);
        assert_eq!(v, [10]);
        let mut v = Vec::new();
        encode_integer(&mut v, 127, 7, 0);
        assert_eq!(v, [127, 0]);
    }
}
