//! One server-side SPDY/3.1 session over an upgraded connection.
//!
//! A reader task parses frames, answers PINGs and feeds peer-initiated streams; a writer
//! task ships the frames the streams and the reader queue. Each stream the peer opens is
//! handed out as a [`SpdyStream`] (AsyncRead + AsyncWrite); the application replies to it
//! or resets it.
//!
//! Flow control: received data is acknowledged with WINDOW_UPDATE frames (per stream and,
//! as SPDY/3.1 adds, per connection) as the application consumes it, so peers that obey
//! windows keep sending. Outgoing data does not wait for the peer's window: the Go SPDY
//! stack kubelet/kubectl use never sends WINDOW_UPDATE, so a window-obeying sender would
//! stall after 64 KiB. Backpressure comes from the socket instead, through a bounded
//! output buffer. A stream whose unread input grows past [`MAX_STREAM_BUFFER`] pauses
//! the reader until the application catches up, like the Go stack does.
//! Runs in cairnd (its streaming server).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::frame::{goaway, rst, Frame, FLAG_FIN};
use super::headers::{Compressor, Decompressor, Headers};

/// Largest DATA payload this side sends in one frame.
pub const MAX_DATA_FRAME: usize = 16 * 1024;
/// Largest frame payload accepted from the peer.
pub const MAX_RECV_FRAME: usize = 1024 * 1024;
/// Unread bytes one stream may buffer before the reader stops reading the socket.
pub const MAX_STREAM_BUFFER: usize = 1024 * 1024;
/// SPDY/3.1 default window (stream and connection).
const DEFAULT_WINDOW: u32 = 64 * 1024;
/// Consumed bytes after which a WINDOW_UPDATE is sent.
const WINDOW_UPDATE_THRESHOLD: u32 = DEFAULT_WINDOW / 2;
/// Encoded bytes waiting for the socket beyond which stream writes wait.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// How long [`Session::close`] waits for the writer to flush and the peer to hang up.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Session settings.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// The connection is closed after this long without a frame in either direction.
    pub idle_timeout: Duration,
}

/// A running SPDY session. Dropping it tears the connection down at once; [`Session::close`]
/// ends it gracefully.
pub struct Session {
    shared: Arc<Shared>,
    incoming: mpsc::UnboundedReceiver<SpdyStream>,
    reader: JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer task when `State::out` gains bytes or the session closes.
    writer_wake: Notify,
    /// Wakes the reader when a stream's buffered input shrinks.
    space: Notify,
    /// Cancelled when the reader stops: the peer hung up, broke the protocol, or idled out.
    closed: CancellationToken,
    /// Milliseconds since `epoch` of the last frame written.
    last_write_ms: AtomicU64,
    epoch: Instant,
}

struct State {
    out: BytesMut,
    compressor: Compressor,
    write_waiters: Vec<Waker>,
    streams: HashMap<u32, StreamState>,
    /// Bytes consumed by the application not yet returned to the connection window.
    conn_unacked: u32,
    /// Highest stream id the peer opened.
    last_peer_stream: u32,
    /// GOAWAY queued: no further streams are accepted.
    going_away: bool,
    /// The writer exits once `out` is flushed.
    closing: bool,
    /// The connection is gone: writes fail, reads end.
    broken: bool,
}

#[derive(Default)]
struct StreamState {
    recv: VecDeque<Bytes>,
    recv_len: usize,
    remote_fin: bool,
    local_fin: bool,
    reset: bool,
    /// The application dropped its handle: input is discarded.
    released: bool,
    unacked: u32,
    read_waker: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state for teardown.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame (the caller holds the lock) and wakes the writer.
    fn queue(&self, st: &mut State, frame: &Frame) {
        if st.broken || st.closing {
            return;
        }
        frame.encode(&mut st.out);
        self.writer_wake.notify_one();
    }

    /// Queues a frame carrying a header block, compressing it in queue order.
    fn queue_with_headers(
        &self,
        st: &mut State,
        headers: &Headers,
        build: impl FnOnce(Bytes) -> Frame,
    ) {
        match st.compressor.compress(headers) {
            Ok(block) => {
                let frame = build(Bytes::from(block));
                self.queue(st, &frame);
            }
            Err(e) => tracing::warn!("spdy: cannot compress headers: {e}"),
        }
    }

    fn mark_broken(&self) {
        let mut st = self.lock();
        st.broken = true;
        for stream in st.streams.values_mut() {
            stream.remote_fin = true;
            if let Some(w) = stream.read_waker.take() {
                w.wake();
            }
        }
        for w in st.write_waiters.drain(..) {
            w.wake();
        }
        drop(st);
        self.space.notify_waiters();
        self.closed.cancel();
    }

    fn touch_write(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_write_ms.store(ms, Ordering::Relaxed);
    }
}

impl Session {
    /// Starts the session on `io`. `prefix` holds bytes already read past the HTTP upgrade
    /// request, which belong to the SPDY stream.
    pub fn start<S>(io: S, prefix: Bytes, config: SessionConfig) -> Session
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                out: BytesMut::new(),
                compressor: Compressor::new(),
                write_waiters: Vec::new(),
                streams: HashMap::new(),
                conn_unacked: 0,
                last_peer_stream: 0,
                going_away: false,
                closing: false,
                broken: false,
            }),
            writer_wake: Notify::new(),
            space: Notify::new(),
            closed: CancellationToken::new(),
            last_write_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let (rd, wr) = tokio::io::split(io);
        let (tx, incoming) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(shared.clone(), rd, prefix, tx, config));
        let writer = tokio::spawn(write_loop(shared.clone(), wr));
        Session {
            shared,
            incoming,
            reader,
            writer: Some(writer),
        }
    }

    /// The next stream the peer opened, or `None` once the connection is gone.
    pub async fn accept(&mut self) -> Option<SpdyStream> {
        self.incoming.recv().await
    }

    /// A token cancelled when the peer hangs up (or the connection fails or idles out).
    pub fn closed(&self) -> CancellationToken {
        self.shared.closed.clone()
    }

    /// Ends the session: half-closes every stream still open, sends GOAWAY, flushes, then
    /// waits (at most [`CLOSE_LINGER`]) for the peer to hang up before closing the socket,
    /// so that nothing in flight is lost to a reset or an early end of stream.
    pub async fn close(mut self) {
        {
            let mut st = self.shared.lock();
            let ids: Vec<u32> = st
                .streams
                .iter()
                .filter(|(_, s)| !s.local_fin && !s.reset)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(s) = st.streams.get_mut(&id) {
                    s.local_fin = true;
                }
                let fin = fin_frame(id);
                self.shared.queue(&mut st, &fin);
            }
            let frame = Frame::GoAway {
                last_good_stream_id: st.last_peer_stream,
                status: goaway::OK,
            };
            self.shared.queue(&mut st, &frame);
            st.going_away = true;
            st.closing = true;
        }
        self.shared.writer_wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = tokio::time::timeout(CLOSE_LINGER, writer).await;
        }
        let _ = tokio::time::timeout(CLOSE_LINGER, self.shared.closed.cancelled()).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
        self.shared.mark_broken();
    }
}

fn fin_frame(stream_id: u32) -> Frame {
    Frame::Data {
        stream_id,
        flags: FLAG_FIN,
        data: Bytes::new(),
    }
}

async fn write_loop<W: AsyncWrite>(shared: Arc<Shared>, wr: W) {
    tokio::pin!(wr);
    loop {
        let chunk = {
            let mut st = shared.lock();
            if st.broken {
                return;
            }
            let chunk = std::mem::take(&mut st.out);
            for w in st.write_waiters.drain(..) {
                w.wake();
            }
            if chunk.is_empty() && st.closing {
                break;
            }
            chunk
        };
        if chunk.is_empty() {
            shared.writer_wake.notified().await;
            continue;
        }
        if let Err(e) = wr.write_all(&chunk).await {
            tracing::debug!("spdy: write failed: {e}");
            shared.mark_broken();
            return;
        }
        shared.touch_write();
    }
    // No TCP half-close here: clients that parse asynchronously (spdy-transport) drop
    // frames still in their queue once the socket ends, so the peer hangs up first.
    let _ = wr.flush().await;
}

async fn read_loop<R: AsyncRead>(
    shared: Arc<Shared>,
    rd: R,
    prefix: Bytes,
    incoming: mpsc::UnboundedSender<SpdyStream>,
    config: SessionConfig,
) {
    tokio::pin!(rd);
    let mut reader = Reader {
        shared: shared.clone(),
        decompressor: Decompressor::new(),
        incoming,
    };
    let mut buf = BytesMut::from(&prefix[..]);
    let outcome = loop {
        match Frame::decode(&mut buf, MAX_RECV_FRAME) {
            Ok(Some(frame)) => {
                if let Err(e) = reader.handle(frame).await {
                    break Err(e);
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break Err(e.to_string()),
        }
        buf.reserve(16 * 1024);
        match read_some(&shared, &mut rd, &mut buf, config.idle_timeout).await {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    if let Err(e) = outcome {
        tracing::debug!("spdy: closing session: {e}");
        let mut st = shared.lock();
        let frame = Frame::GoAway {
            last_good_stream_id: st.last_peer_stream,
            status: goaway::PROTOCOL_ERROR,
        };
        shared.queue(&mut st, &frame);
        st.closing = true;
        drop(st);
        shared.writer_wake.notify_one();
    }
    // End every reader: the peer will send nothing more.
    let mut st = shared.lock();
    for stream in st.streams.values_mut() {
        stream.remote_fin = true;
        if let Some(w) = stream.read_waker.take() {
            w.wake();
        }
    }
    drop(st);
    shared.closed.cancel();
}

/// Reads into `buf`, enforcing the idle timeout (which writes also reset).
async fn read_some<R: AsyncRead>(
    shared: &Shared,
    rd: &mut Pin<&mut R>,
    buf: &mut BytesMut,
    idle: Duration,
) -> io::Result<usize> {
    let mut last_read = Instant::now();
    loop {
        let last_write =
            shared.epoch + Duration::from_millis(shared.last_write_ms.load(Ordering::Relaxed));
        let deadline = last_read.max(last_write) + idle;
        match tokio::time::timeout_at(deadline.into(), rd.read_buf(buf)).await {
            Ok(result) => return result,
            Err(_) => {
                let last_write = shared.epoch
                    + Duration::from_millis(shared.last_write_ms.load(Ordering::Relaxed));
                if last_write + idle > Instant::now() {
                    last_read = last_write;
                    continue;
                }
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ));
            }
        }
    }
}

/// The reader task's per-connection state.
struct Reader {
    shared: Arc<Shared>,
    decompressor: Decompressor,
    incoming: mpsc::UnboundedSender<SpdyStream>,
}

impl Reader {
    async fn handle(&mut self, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                header_block,
                ..
            } => {
                let headers = self
                    .decompressor
                    .decompress(&header_block)
                    .map_err(|e| format!("SYN_STREAM {stream_id}: {e}"))?;
                self.open_stream(stream_id, flags, headers);
            }
            Frame::SynReply { header_block, .. } | Frame::Headers { header_block, .. } => {
                // Never expected from a client, but the zlib context must stay in step.
                self.decompressor
                    .decompress(&header_block)
                    .map_err(|e| format!("header block: {e}"))?;
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => self.data(stream_id, flags, data).await,
            Frame::RstStream { stream_id, status } => self.reset(stream_id, status),
            Frame::Ping { id } => {
                // Peer-initiated pings (odd ids from a client) are echoed.
                if id & 1 == 1 {
                    let mut st = self.shared.lock();
                    self.shared.queue(&mut st, &Frame::Ping { id });
                }
            }
            Frame::GoAway { .. } => {
                self.shared.lock().going_away = true;
            }
            Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {}
        }
        Ok(())
    }

    fn open_stream(&mut self, id: u32, flags: u8, headers: Headers) {
        let mut st = self.shared.lock();
        if id & 1 == 0 || id <= st.last_peer_stream {
            tracing::debug!("spdy: refusing out-of-order stream id {id}");
            self.shared.queue(
                &mut st,
                &Frame::RstStream {
                    stream_id: id,
                    status: rst::PROTOCOL_ERROR,
                },
            );
            return;
        }
        st.last_peer_stream = id;
        if st.going_away {
            self.shared.queue(
                &mut st,
                &Frame::RstStream {
                    stream_id: id,
                    status: rst::REFUSED_STREAM,
                },
            );
            return;
        }
        st.streams.insert(
            id,
            StreamState {
                remote_fin: flags & FLAG_FIN != 0,
                ..StreamState::default()
            },
        );
        drop(st);
        let stream = SpdyStream {
            shared: self.shared.clone(),
            id,
            headers: Arc::new(headers),
        };
        // If nobody accepts streams any more, dropping the handle closes it.
        let _ = self.incoming.send(stream);
    }

    async fn data(&mut self, id: u32, flags: u8, data: Bytes) {
        let len = data.len() as u32;
        {
            let mut st = self.shared.lock();
            let accepted = match st.streams.get_mut(&id) {
                Some(s) if !s.released && !s.reset && !s.remote_fin => {
                    if !data.is_empty() {
                        s.recv_len += data.len();
                        s.recv.push_back(data);
                    }
                    if flags & FLAG_FIN != 0 {
                        s.remote_fin = true;
                    }
                    if let Some(w) = s.read_waker.take() {
                        w.wake();
                    }
                    true
                }
                _ => false,
            };
            if !accepted {
                // Discarded input still counts against the connection window.
                ack_connection(&self.shared, &mut st, len);
                return;
            }
        }
        self.wait_for_room(id).await;
    }

    /// Pauses reading while stream `id` holds too much unread input.
    async fn wait_for_room(&self, id: u32) {
        loop {
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.shared.lock();
                let full = st
                    .streams
                    .get(&id)
                    .is_some_and(|s| !s.released && !s.reset && s.recv_len > MAX_STREAM_BUFFER);
                if !full || st.broken {
                    return;
                }
            }
            notified.await;
        }
    }

    fn reset(&mut self, id: u32, status: u32) {
        tracing::debug!("spdy: peer reset stream {id} with status {status}");
        let mut st = self.shared.lock();
        if let Some(s) = st.streams.get_mut(&id) {
            s.reset = true;
            s.remote_fin = true;
            s.local_fin = true;
            if let Some(w) = s.read_waker.take() {
                w.wake();
            }
        }
        for w in st.write_waiters.drain(..) {
            w.wake();
        }
        drop(st);
        self.shared.space.notify_waiters();
    }
}

/// Returns consumed bytes to the connection-level window once enough accumulated.
fn ack_connection(shared: &Shared, st: &mut State, n: u32) {
    st.conn_unacked = st.conn_unacked.saturating_add(n);
    if st.conn_unacked >= WINDOW_UPDATE_THRESHOLD {
        let delta = std::mem::take(&mut st.conn_unacked);
        shared.queue(
            st,
            &Frame::WindowUpdate {
                stream_id: 0,
                delta,
            },
        );
    }
}

/// A stream the peer opened. Reading yields the peer's data until its FIN (EOF); writing
/// sends DATA frames; shutdown (or drop) sends FIN.
pub struct SpdyStream {
    shared: Arc<Shared>,
    id: u32,
    headers: Arc<Headers>,
}

impl std::fmt::Debug for SpdyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdyStream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish()
    }
}

impl SpdyStream {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The headers of the peer's SYN_STREAM.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Accepts the stream with a SYN_REPLY. Kubernetes' own server replies with no
    /// headers; `:status`/`:version` are added as SPDY's HTTP layering asks, since
    /// HTTP-minded clients (spdy-transport) refuse replies without them.
    pub fn reply(&self) {
        let mut headers = Headers::new();
        headers.push(":status", "200");
        headers.push(":version", "HTTP/1.1");
        let mut st = self.shared.lock();
        let id = self.id;
        self.shared
            .queue_with_headers(&mut st, &headers, |header_block| Frame::SynReply {
                stream_id: id,
                flags: 0,
                header_block,
            });
    }

    /// Aborts the stream in both directions with RST_STREAM `status`.
    pub fn reset(&self, status: u32) {
        let mut st = self.shared.lock();
        let Some(s) = st.streams.get_mut(&self.id) else {
            return;
        };
        if s.reset {
            return;
        }
        s.reset = true;
        s.local_fin = true;
        s.remote_fin = true;
        s.recv.clear();
        s.recv_len = 0;
        let frame = Frame::RstStream {
            stream_id: self.id,
            status,
        };
        self.shared.queue(&mut st, &frame);
        drop(st);
        self.shared.space.notify_waiters();
    }

    /// Half-closes the stream: sends FIN unless already sent.
    pub fn close_write(&self) {
        let mut st = self.shared.lock();
        let Some(s) = st.streams.get_mut(&self.id) else {
            return;
        };
        if s.local_fin || s.reset {
            return;
        }
        s.local_fin = true;
        self.shared.queue(&mut st, &fin_frame(self.id));
    }
}

impl AsyncRead for SpdyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = this.shared.lock();
        let state = &mut *st;
        let Some(s) = state.streams.get_mut(&this.id) else {
            return Poll::Ready(Ok(()));
        };
        if s.recv.is_empty() {
            if s.reset {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("SPDY stream {} was reset", this.id),
                )));
            }
            if s.remote_fin || state.broken {
                return Poll::Ready(Ok(()));
            }
            s.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut copied = 0;
        while buf.remaining() > 0 {
            let Some(front) = s.recv.front_mut() else {
                break;
            };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            copied += n;
            if n == front.len() {
                s.recv.pop_front();
            } else {
                let _ = front.split_to(n);
            }
        }
        s.recv_len -= copied;
        s.unacked = s.unacked.saturating_add(copied as u32);
        let stream_update = if s.unacked >= WINDOW_UPDATE_THRESHOLD && !s.remote_fin {
            Some(std::mem::take(&mut s.unacked))
        } else {
            None
        };
        if let Some(delta) = stream_update {
            let frame = Frame::WindowUpdate {
                stream_id: this.id,
                delta,
            };
            this.shared.queue(state, &frame);
        }
        ack_connection(&this.shared, state, copied as u32);
        drop(st);
        this.shared.space.notify_waiters();
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SpdyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut st = this.shared.lock();
        let closed = st
            .streams
            .get(&this.id)
            .is_none_or(|s| s.local_fin || s.reset);
        if st.broken || st.closing || closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("SPDY stream {} is closed", this.id),
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if st.out.len() >= OUTPUT_HIGH_WATER {
            st.write_waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(MAX_DATA_FRAME);
        let frame = Frame::Data {
            stream_id: this.id,
            flags: 0,
            data: Bytes::copy_from_slice(&buf[..n]),
        };
        this.shared.queue(&mut st, &frame);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close_write();
        Poll::Ready(Ok(()))
    }
}

impl Drop for SpdyStream {
    fn drop(&mut self) {
        self.close_write();
        let mut st = self.shared.lock();
        let state = &mut *st;
        let Some(s) = state.streams.get_mut(&self.id) else {
            return;
        };
        s.released = true;
        let unread = std::mem::take(&mut s.recv_len) as u32;
        s.recv.clear();
        if s.remote_fin {
            state.streams.remove(&self.id);
        }
        ack_connection(&self.shared, state, unread);
        drop(st);
        self.shared.space.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdy::frame::{Frame, FLAG_FIN};
    use tokio::io::{duplex, DuplexStream};

    /// A minimal client side: its own zlib contexts and frame codec over a duplex pipe.
    struct TestClient {
        io: DuplexStream,
        buf: BytesMut,
        compressor: Compressor,
        decompressor: Decompressor,
        next_id: u32,
    }

    impl TestClient {
        fn new(io: DuplexStream) -> TestClient {
            TestClient {
                io,
                buf: BytesMut::new(),
                compressor: Compressor::new(),
                decompressor: Decompressor::new(),
                next_id: 1,
            }
        }

        async fn send(&mut self, frame: Frame) {
            let mut out = BytesMut::new();
            frame.encode(&mut out);
            self.io.write_all(&out).await.unwrap();
        }

        async fn open(&mut self, pairs: &[(&str, &str)], flags: u8) -> u32 {
            let mut h = Headers::new();
            for (n, v) in pairs {
                h.push(n, v);
            }
            let id = self.next_id;
            self.next_id += 2;
            let header_block = Bytes::from(self.compressor.compress(&h).unwrap());
            self.send(Frame::SynStream {
                stream_id: id,
                associated_id: 0,
                priority: 0,
                slot: 0,
                flags,
                header_block,
            })
            .await;
            id
        }

        async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some(frame) = Frame::decode(&mut self.buf, usize::MAX).unwrap() {
                    if let Frame::SynReply { header_block, .. } = &frame {
                        self.decompressor.decompress(header_block).unwrap();
                    }
                    return Some(frame);
                }
                let n =
                    tokio::time::timeout(Duration::from_secs(5), self.io.read_buf(&mut self.buf))
                        .await
                        .expect("frame within 5s")
                        .unwrap();
                if n == 0 {
                    return None;
                }
            }
        }

        /// Collects frames until `stop` matches one (inclusive).
        async fn until(&mut self, stop: impl Fn(&Frame) -> bool) -> Vec<Frame> {
            let mut frames = Vec::new();
            while let Some(f) = self.next().await {
                let done = stop(&f);
                frames.push(f);
                if done {
                    break;
                }
            }
            frames
        }
    }

    fn start() -> (Session, TestClient) {
        let (a, b) = duplex(1 << 20);
        let session = Session::start(
            a,
            Bytes::new(),
            SessionConfig {
                idle_timeout: Duration::from_secs(60),
            },
        );
        (session, TestClient::new(b))
    }

    #[tokio::test]
    async fn streams_carry_data_both_ways() {
        let (mut session, mut client) = start();
        let id = client.open(&[("streamtype", "stdin")], 0).await;
        let mut stream = session.accept().await.unwrap();
        assert_eq!(stream.id(), id);
        assert_eq!(stream.headers().get("streamType"), Some("stdin"));
        stream.reply();
        let reply = client.next().await.unwrap();
        assert!(matches!(reply, Frame::SynReply { stream_id, .. } if stream_id == id));

        client
            .send(Frame::Data {
                stream_id: id,
                flags: 0,
                data: Bytes::from_static(b"hello "),
            })
            .await;
        client
            .send(Frame::Data {
                stream_id: id,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"world"),
            })
            .await;
        let mut got = String::new();
        stream.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello world");

        stream.write_all(b"answer").await.unwrap();
        stream.shutdown().await.unwrap();
        let frames = client
            .until(|f| matches!(f, Frame::Data { flags, .. } if flags & FLAG_FIN != 0))
            .await;
        let data: Vec<u8> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Data { data, .. } => Some(data.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(data, b"answer");
    }

    #[tokio::test]
    async fn pings_are_echoed_and_windows_updated() {
        let (mut session, mut client) = start();
        client.send(Frame::Ping { id: 7 }).await;
        assert_eq!(client.next().await, Some(Frame::Ping { id: 7 }));

        let id = client.open(&[("streamtype", "stdin")], 0).await;
        let mut stream = session.accept().await.unwrap();
        stream.reply();
        let payload = vec![7u8; 40 * 1024];
        client
            .send(Frame::Data {
                stream_id: id,
                flags: 0,
                data: Bytes::from(payload.clone()),
            })
            .await;
        let mut got = vec![0u8; payload.len()];
        stream.read_exact(&mut got).await.unwrap();
        let frames = client
            .until(|f| matches!(f, Frame::WindowUpdate { stream_id: 0, .. }))
            .await;
        assert!(frames.iter().any(|f| matches!(
            f,
            Frame::WindowUpdate { stream_id, delta } if *stream_id == id && *delta == 40 * 1024
        )));
        assert!(frames.iter().any(|f| matches!(
            f,
            Frame::WindowUpdate { stream_id: 0, delta } if *delta == 40 * 1024
        )));
    }

    #[tokio::test]
    async fn resets_and_bad_ids() {
        let (mut session, mut client) = start();
        let id = client.open(&[("streamtype", "stdout")], 0).await;
        let mut stream = session.accept().await.unwrap();
        client
            .send(Frame::RstStream {
                stream_id: id,
                status: rst::CANCEL,
            })
            .await;
        let err = loop {
            match stream.write_all(b"x").await {
                Ok(()) => tokio::task::yield_now().await,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);

        // A stream id that does not increase is refused.
        client.next_id = 1;
        client.open(&[("streamtype", "stdin")], 0).await;
        let frames = client.until(|f| matches!(f, Frame::RstStream { .. })).await;
        assert!(matches!(
            frames.last(),
            Some(Frame::RstStream {
                stream_id: 1,
                status: rst::PROTOCOL_ERROR
            })
        ));
    }

    #[tokio::test]
    async fn close_finishes_streams_and_sends_goaway() {
        let (mut session, mut client) = start();
        let id = client.open(&[("streamtype", "error")], 0).await;
        let stream = session.accept().await.unwrap();
        stream.reply();
        let closed = session.closed();
        let closing = tokio::spawn(session.close());
        let frames = client.until(|f| matches!(f, Frame::GoAway { .. })).await;
        assert!(frames.iter().any(|f| matches!(
            f,
            Frame::Data { stream_id, flags, .. } if *stream_id == id && flags & FLAG_FIN != 0
        )));
        // The server waits for the client to hang up first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!closing.is_finished());
        drop(client);
        closing.await.unwrap();
        assert!(closed.is_cancelled());
        drop(stream);
    }

    #[tokio::test]
    async fn peer_hangup_ends_reads() {
        let (mut session, mut client) = start();
        client.open(&[("streamtype", "stdin")], 0).await;
        let mut stream = session.accept().await.unwrap();
        drop(client);
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        session.closed().cancelled().await;
        assert!(session.accept().await.is_none());
    }

    #[tokio::test]
    async fn protocol_errors_end_the_session() {
        let (session, mut client) = start();
        // SPDY/2 control frame.
        client
            .io
            .write_all(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1])
            .await
            .unwrap();
        let frames = client.until(|f| matches!(f, Frame::GoAway { .. })).await;
        assert!(matches!(
            frames.last(),
            Some(Frame::GoAway {
                status: goaway::PROTOCOL_ERROR,
                ..
            })
        ));
        session.closed().cancelled().await;
    }

    #[tokio::test]
    async fn slow_readers_pause_the_connection_not_lose_data() {
        let (mut session, mut client) = start();
        let id = client.open(&[("streamtype", "stdin")], 0).await;
        let mut stream = session.accept().await.unwrap();
        let total = MAX_STREAM_BUFFER * 3;
        let sender = tokio::spawn(async move {
            let chunk = vec![1u8; 64 * 1024];
            for _ in 0..total / chunk.len() {
                client
                    .send(Frame::Data {
                        stream_id: id,
                        flags: 0,
                        data: Bytes::from(chunk.clone()),
                    })
                    .await;
            }
            client
                .send(Frame::Data {
                    stream_id: id,
                    flags: FLAG_FIN,
                    data: Bytes::new(),
                })
                .await;
            client
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), total);
        let _client = sender.await.unwrap();
    }
}
