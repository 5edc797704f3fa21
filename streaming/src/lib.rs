//! The Kubernetes CRI streaming server: serves the URLs that the CRI `Exec`, `Attach` and
//! `PortForward` calls return (`http://<addr>/exec/<token>`, `/attach/<token>`,
//! `/portforward/<token>`), speaking what kubelet, kubectl and crictl speak:
//!
//! * remote command (exec/attach) over SPDY/3.1, protocols `v5.channel.k8s.io` (same as
//!   v4 on SPDY), `v4.channel.k8s.io`, `v3.channel.k8s.io`, `v2.channel.k8s.io` and
//!   `channel.k8s.io`, and over WebSocket, subprotocols `v5.channel.k8s.io`,
//!   `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, `channel.k8s.io`,
//!   `base64.channel.k8s.io` (or none);
//! * port forwarding over SPDY/3.1 (`portforward.k8s.io`) and over WebSocket
//!   (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io` or none).
//!
//! The runtime side is the [`Runtime`] trait; [`Server`] hands out single-use URLs and
//! serves them.
//! Runs in cairnd (its streaming server).

mod cache;
mod http;
mod portforward;
mod remotecommand;
mod resize;
mod server;
pub mod spdy;
mod status;
mod wsmux;

use tokio::io::{AsyncRead, AsyncWrite};

pub use server::{Config, Server};

/// A terminal size sent by the client (on the resize stream) for TTY sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// The client's side of an exec or attach session, as the runtime sees it.
///
/// `stdin` reads what the client sends and ends (EOF) when the client closes its stdin.
/// Dropping (or shutting down) `stdout`/`stderr` tells the client that output is over.
pub struct Streams {
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Terminal size changes, for TTY sessions whose client sends them.
    pub resize: Option<tokio::sync::mpsc::Receiver<TerminalSize>>,
    pub tty: bool,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .field("tty", &self.tty)
            .finish()
    }
}

/// A bidirectional byte stream (the client's end of one forwarded connection).
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}

/// Why the runtime could not serve a request. The message reaches the client on the
/// error stream (as a `Failure` status for exec/attach).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The container or pod sandbox does not exist (or is not running).
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be served as asked.
    #[error("{0}")]
    InvalidArgument(String),
    /// An I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl StreamError {
    pub fn not_found(msg: impl Into<String>) -> StreamError {
        StreamError::NotFound(msg.into())
    }

    pub fn other(msg: impl Into<String>) -> StreamError {
        StreamError::Other(msg.into())
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> StreamError {
        StreamError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<std::io::Error> for StreamError {
    fn from(source: std::io::Error) -> StreamError {
        StreamError::Io {
            context: "stream I/O".into(),
            source,
        }
    }
}

/// What the streaming server needs from the container runtime.
///
/// If the client goes away while a call runs, its future is dropped (like kubelet
/// cancelling the request context): implementations clean up in `Drop`.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Runs `cmd` in the container with the streams; returns the exit code.
    async fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        streams: Streams,
    ) -> Result<i32, StreamError>;

    /// Attaches the streams to the container's main process until it exits or the client
    /// leaves.
    async fn attach(&self, container_id: &str, streams: Streams) -> Result<(), StreamError>;

    /// Connects to `port` inside the pod's network namespace and copies both ways.
    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        stream: Box<dyn AsyncStream>,
    ) -> Result<(), StreamError>;
}
