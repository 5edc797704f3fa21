//! Kubernetes channel multiplexing over one WebSocket (`channel.k8s.io` and relatives):
//! every message starts with its channel number, as a raw byte (binary protocols) or as
//! an ASCII digit followed by base64 data (`base64.channel.k8s.io` protocols).
//! `v5.channel.k8s.io` adds a close signal: the message `[255, channel]` half-closes
//! `channel`.
//!
//! A reader task routes incoming messages to per-channel inputs (pipes the application
//! reads, or resize decoders); a writer task sends what [`WsWriter`]s and [`WsMux::send`]
//! queue, in order.
//! Runs in cairnd (its streaming server).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{
    AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, SimplexStream, WriteHalf,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::{CancellationToken, PollSender};

use crate::resize::ResizeDecoder;
use crate::TerminalSize;

/// The v5 close signal's channel byte.
pub const CLOSE_SIGNAL: u8 = 255;
/// Largest payload put in one message.
const MAX_MESSAGE: usize = 32 * 1024;
/// Buffer of each input pipe.
const PIPE_BUFFER: usize = 64 * 1024;
/// How long [`WsMux::close`] waits for the close handshake.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// How channel data is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Binary messages: channel byte, then raw data.
    Binary,
    /// Text messages: channel digit, then base64 data.
    Base64,
}

impl Codec {
    fn encode(self, channel: u8, data: &[u8]) -> Message {
        match self {
            Codec::Binary => {
                let mut msg = Vec::with_capacity(data.len() + 1);
                msg.push(channel);
                msg.extend_from_slice(data);
                Message::Binary(Bytes::from(msg))
            }
            Codec::Base64 => {
                let mut msg = String::with_capacity(data.len() * 4 / 3 + 5);
                msg.push(char::from(b'0'.wrapping_add(channel)));
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut msg);
                Message::text(msg)
            }
        }
    }

    /// Splits a message into channel and payload; `None` for malformed messages.
    fn decode(self, msg: &[u8]) -> Option<(u8, Vec<u8>)> {
        let (&first, rest) = msg.split_first()?;
        match self {
            Codec::Binary => Some((first, rest.to_vec())),
            Codec::Base64 => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()?;
                Some((first.wrapping_sub(b'0'), data))
            }
        }
    }
}

/// Where the data of one incoming channel goes.
pub enum Input {
    /// Written to a pipe; closing the channel (or the connection) ends the pipe.
    Pipe(WriteHalf<SimplexStream>),
    /// Decoded as resize events.
    Resize(mpsc::Sender<TerminalSize>),
}

/// A pipe for an [`Input::Pipe`] channel: give the reading end to the application.
pub fn input_pipe() -> (ReadHalf<SimplexStream>, Input) {
    let (r, w) = tokio::io::simplex(PIPE_BUFFER);
    (r, Input::Pipe(w))
}

enum Outgoing {
    Message(Message),
    Close,
}

/// A multiplexed WebSocket connection.
pub struct WsMux {
    out: mpsc::Sender<Outgoing>,
    codec: Codec,
    closed: CancellationToken,
    reader: JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
}

impl WsMux {
    /// Starts the reader and writer tasks. `close_signal` enables the v5 close message;
    /// the connection ends after `idle` without a message either way.
    pub fn start<S>(
        ws: WebSocketStream<S>,
        codec: Codec,
        close_signal: bool,
        inputs: HashMap<u8, Input>,
        idle: Duration,
    ) -> WsMux
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, stream) = ws.split();
        let (out, rx) = mpsc::channel(64);
        let closed = CancellationToken::new();
        let activity = Arc::new(Activity::new());
        let reader = tokio::spawn(read_loop(
            stream,
            ReadConfig {
                codec,
                close_signal,
                idle,
            },
            inputs,
            closed.clone(),
            activity.clone(),
        ));
        let writer = tokio::spawn(write_loop(sink, rx, activity));
        WsMux {
            out,
            codec,
            closed,
            reader,
            writer: Some(writer),
        }
    }

    /// An AsyncWrite that sends its data on `channel`.
    pub fn writer(&self, channel: u8) -> WsWriter {
        WsWriter {
            tx: PollSender::new(self.out.clone()),
            channel,
            codec: self.codec,
        }
    }

    /// Sends one message on `channel` (an empty `data` sends the channel byte alone).
    pub async fn send(&self, channel: u8, data: &[u8]) -> io::Result<()> {
        let msg = self.codec.encode(channel, data);
        self.out
            .send(Outgoing::Message(msg))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed"))
    }

    /// Cancelled when the client closes the WebSocket or the connection breaks.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Sends a normal close after everything queued, then waits (briefly) for the
    /// client's close reply.
    pub async fn close(mut self) {
        let _ = self.out.send(Outgoing::Close).await;
        if let Some(writer) = self.writer.take() {
            let _ = tokio::time::timeout(CLOSE_LINGER, writer).await;
        }
        let _ = tokio::time::timeout(CLOSE_LINGER, self.closed.cancelled()).await;
    }
}

impl Drop for WsMux {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
        self.closed.cancel();
    }
}

/// When a message last went out, for the idle timeout.
struct Activity {
    epoch: Instant,
    last_write_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_write_ms: AtomicU64::new(0),
        }
    }

    fn wrote(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_write_ms.store(ms, Ordering::Relaxed);
    }

    fn last_write(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_write_ms.load(Ordering::Relaxed))
    }
}

async fn write_loop<S>(mut sink: S, mut rx: mpsc::Receiver<Outgoing>, activity: Arc<Activity>)
where
    S: futures::Sink<Message> + Unpin,
{
    while let Some(item) = rx.recv().await {
        match item {
            Outgoing::Message(msg) => {
                if sink.send(msg).await.is_err() {
                    return;
                }
                activity.wrote();
            }
            Outgoing::Close => {
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                let _ = sink.flush().await;
                return;
            }
        }
    }
}

struct ReadConfig {
    codec: Codec,
    close_signal: bool,
    idle: Duration,
}

async fn read_loop<S>(
    mut stream: S,
    config: ReadConfig,
    mut inputs: HashMap<u8, Input>,
    closed: CancellationToken,
    activity: Arc<Activity>,
) where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut decoders: HashMap<u8, ResizeDecoder> = HashMap::new();
    let mut last_read = Instant::now();
    loop {
        let deadline = last_read.max(activity.last_write()) + config.idle;
        let msg = match tokio::time::timeout_at(deadline.into(), stream.next()).await {
            Ok(Some(Ok(msg))) => msg,
            Ok(_) => break,
            Err(_) if activity.last_write() + config.idle > Instant::now() => continue,
            Err(_) => {
                tracing::debug!("websocket: closing idle connection");
                break;
            }
        };
        last_read = Instant::now();
        let data = match &msg {
            Message::Binary(b) => &b[..],
            Message::Text(t) => t.as_bytes(),
            Message::Close(_) => break,
            _ => continue,
        };
        if data.is_empty() {
            continue;
        }
        if config.close_signal && data[0] == CLOSE_SIGNAL {
            if let Some(input) = data.get(1).and_then(|c| inputs.remove(c)) {
                close_input(input).await;
            }
            continue;
        }
        let Some((channel, payload)) = config.codec.decode(data) else {
            tracing::debug!("websocket: dropping malformed message");
            continue;
        };
        deliver(&mut inputs, &mut decoders, channel, payload).await;
    }
    // The client is gone: EOF on every input.
    for (_, input) in inputs.drain() {
        close_input(input).await;
    }
    closed.cancel();
}

/// Ends an input: the application reads EOF from its pipe (a simplex pipe needs an
/// explicit shutdown; dropping its write half is not enough).
async fn close_input(input: Input) {
    if let Input::Pipe(mut w) = input {
        let _ = w.shutdown().await;
    }
}

async fn deliver(
    inputs: &mut HashMap<u8, Input>,
    decoders: &mut HashMap<u8, ResizeDecoder>,
    channel: u8,
    payload: Vec<u8>,
) {
    if payload.is_empty() {
        return;
    }
    let keep = match inputs.get_mut(&channel) {
        None => return,
        Some(Input::Pipe(w)) => w.write_all(&payload).await.is_ok(),
        Some(Input::Resize(tx)) => {
            let decoder = decoders.entry(channel).or_default();
            match decoder.feed(&payload) {
                Ok(events) => {
                    let mut ok = true;
                    for size in events {
                        ok = ok && tx.send(size).await.is_ok();
                    }
                    ok
                }
                Err(_) => false,
            }
        }
    };
    if !keep {
        if let Some(input) = inputs.remove(&channel) {
            close_input(input).await;
        }
    }
}

/// Sends what is written to it on one channel of a [`WsMux`].
pub struct WsWriter {
    tx: PollSender<Outgoing>,
    channel: u8,
    codec: Codec,
}

impl AsyncWrite for WsWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let broken = || io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed");
        ready!(self.tx.poll_reserve(cx)).map_err(|_| broken())?;
        let n = buf.len().min(MAX_MESSAGE);
        let msg = self.codec.encode(self.channel, &buf[..n]);
        self.tx
            .send_item(Outgoing::Message(msg))
            .map_err(|_| broken())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A read side and a write side as one bidirectional stream.
pub struct Joined<R, W> {
    pub read: R,
    pub write: W,
}

impl<R: AsyncRead + Unpin, W: Unpin> AsyncRead for Joined<R, W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R: Unpin, W: AsyncWrite + Unpin> AsyncWrite for Joined<R, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs() {
        let msg = Codec::Binary.encode(1, b"hi");
        assert_eq!(msg, Message::Binary(Bytes::from_static(b"\x01hi")));
        assert_eq!(Codec::Binary.decode(b"\x00abc"), Some((0, b"abc".to_vec())));
        let msg = Codec::Base64.encode(1, b"foo\n");
        assert_eq!(msg, Message::text("1Zm9vCg=="));
        assert_eq!(
            Codec::Base64.decode(b"0Zm9vCg=="),
            Some((0, b"foo\n".to_vec()))
        );
        assert_eq!(Codec::Base64.decode(b"0!!"), None);
        assert_eq!(Codec::Binary.decode(b""), None);
    }
}
