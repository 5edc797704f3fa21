//! Exec and attach sessions ("remote command"), over SPDY/3.1 or WebSocket.
//!
//! SPDY: the client opens one stream per standard stream, named by its `streamType`
//! header (`error`, `stdin`, `stdout`, `stderr`, and `resize` for TTYs from v3 on). The
//! server waits for all of them, runs the command, writes the outcome on the error
//! stream (a JSON `metav1.Status` from v4 on, the failure message before) and closes.
//!
//! WebSocket: channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize in one socket.
//! Runs in cairnd (its streaming server).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::http;
use crate::resize;
use crate::spdy::{Session, SessionConfig, SpdyStream};
use crate::status::Status;
use crate::wsmux::{self, Codec, Input, WsMux};
use crate::{Runtime, Streams, TerminalSize};

/// SPDY remote command protocols, most preferred first (v5 is v4 on SPDY).
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// WebSocket remote command subprotocols ("" stands for none requested).
pub const WS_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "",
];

const CHANNEL_STDIN: u8 = 0;
const CHANNEL_STDOUT: u8 = 1;
const CHANNEL_STDERR: u8 = 2;
const CHANNEL_ERROR: u8 = 3;
const CHANNEL_RESIZE: u8 = 4;

/// Capacity of the resize event queue given to the runtime.
const RESIZE_QUEUE: usize = 8;

/// What to run.
#[derive(Debug, Clone)]
pub enum Target {
    Exec {
        container_id: String,
        cmd: Vec<String>,
    },
    Attach {
        container_id: String,
    },
}

/// Which standard streams the CRI request asked for.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Timeouts of one session.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub idle: Duration,
    pub creation: Duration,
}

/// Protocol version of a SPDY remote command session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    V1,
    V2,
    V3,
    V4,
}

impl Version {
    fn of(protocol: &str) -> Version {
        match protocol {
            "v5.channel.k8s.io" | "v4.channel.k8s.io" => Version::V4,
            "v3.channel.k8s.io" => Version::V3,
            "v2.channel.k8s.io" => Version::V2,
            _ => Version::V1,
        }
    }
}

/// Runs the target with `streams`; `None` when the client left first.
async fn run(
    runtime: &Arc<dyn Runtime>,
    target: &Target,
    streams: Streams,
    client_gone: tokio_util::sync::CancellationToken,
) -> Option<Status> {
    let work = async {
        match target {
            Target::Exec { container_id, cmd } => {
                match runtime.exec(container_id, cmd.clone(), streams).await {
                    Ok(code) => Status::exit_code(code),
                    Err(e) => {
                        tracing::warn!("exec in container {container_id} failed: {e}");
                        Status::error("error executing command in container", &e)
                    }
                }
            }
            Target::Attach { container_id } => match runtime.attach(container_id, streams).await {
                Ok(()) => Status::success(),
                Err(e) => {
                    tracing::warn!("attach to container {container_id} failed: {e}");
                    Status::error("error attaching to container", &e)
                }
            },
        }
    };
    tokio::select! {
        status = work => Some(status),
        _ = client_gone.cancelled() => {
            tracing::debug!("streaming client left; cancelling {target:?}");
            None
        }
    }
}

/// Serves a remote command over SPDY: `protocol` was negotiated by the caller, which also
/// checked the upgrade headers.
pub async fn serve_spdy(
    mut io: TcpStream,
    leftover: Bytes,
    protocol: &str,
    runtime: Arc<dyn Runtime>,
    target: Target,
    opts: Options,
    timeouts: Timeouts,
) {
    let upgraded = http::switch_protocols(
        &mut io,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", protocol),
        ],
    )
    .await;
    if let Err(e) = upgraded {
        tracing::debug!("spdy upgrade failed: {e}");
        return;
    }
    let version = Version::of(protocol);
    let mut session = Session::start(
        io,
        leftover,
        SessionConfig {
            idle_timeout: timeouts.idle,
        },
    );
    let expected = expected_streams(opts, version);
    let got =
        tokio::time::timeout(timeouts.creation, collect_streams(&mut session, &expected)).await;
    let (mut by_type, unused) = match got {
        Ok(Some(streams)) => streams,
        Ok(None) => return,
        Err(_) => {
            tracing::warn!("timed out waiting for client to create streams");
            return;
        }
    };
    let Some(error_stream) = by_type.remove("error") else {
        return;
    };
    let stdin = by_type.remove("stdin");
    if version == Version::V1 {
        // Protocol v1 servers half-close stdin right away; clients expect it.
        if let Some(s) = &stdin {
            s.close_write();
        }
    }
    let (resize_rx, resize_task) = match by_type.remove("resize") {
        Some(stream) if opts.tty => {
            let (tx, rx) = mpsc::channel::<TerminalSize>(RESIZE_QUEUE);
            (Some(rx), Some(tokio::spawn(resize::pump(stream, tx))))
        }
        _ => (None, None),
    };
    let streams = Streams {
        stdin: stdin.map(|s| Box::new(s) as _),
        stdout: by_type.remove("stdout").map(|s| Box::new(s) as _),
        stderr: by_type.remove("stderr").map(|s| Box::new(s) as _),
        resize: resize_rx,
        tty: opts.tty,
    };
    let status = run(&runtime, &target, streams, session.closed()).await;
    if let Some(task) = resize_task {
        task.abort();
    }
    let Some(status) = status else {
        return;
    };
    write_status_spdy(error_stream, &status, version).await;
    drop((by_type, unused));
    session.close().await;
}

async fn write_status_spdy(mut stream: SpdyStream, status: &Status, version: Version) {
    let bytes = if version >= Version::V4 {
        status.to_json()
    } else {
        status.to_text()
    };
    if !bytes.is_empty() {
        let _ = stream.write_all(&bytes).await;
    }
    let _ = stream.shutdown().await;
}

/// The stream types the client must open for `opts`.
fn expected_streams(opts: Options, version: Version) -> Vec<&'static str> {
    let mut expected = vec!["error"];
    if opts.stdin {
        expected.push("stdin");
    }
    if opts.stdout {
        expected.push("stdout");
    }
    if opts.stderr {
        expected.push("stderr");
    }
    if opts.tty && version >= Version::V3 {
        expected.push("resize");
    }
    expected
}

/// Accepts (replies to) the client's streams until every expected type arrived. Streams
/// of other types (or duplicates) are accepted and returned apart, to stay open unused
/// until the session ends. `None` if the client hung up.
async fn collect_streams(
    session: &mut Session,
    expected: &[&'static str],
) -> Option<(HashMap<&'static str, SpdyStream>, Vec<SpdyStream>)> {
    let mut found: HashMap<&'static str, SpdyStream> = HashMap::new();
    let mut extra = Vec::new();
    while found.len() < expected.len() {
        let stream = session.accept().await?;
        stream.reply();
        let kind = stream.headers().get("streamtype").unwrap_or("").to_string();
        match expected.iter().find(|t| **t == kind) {
            Some(t) if !found.contains_key(t) => {
                found.insert(t, stream);
            }
            _ => {
                tracing::debug!("ignoring unexpected stream type {kind:?}");
                extra.push(stream);
            }
        }
    }
    Some((found, extra))
}

/// Serves a remote command over WebSocket, `protocol` being the negotiated subprotocol
/// ("" if the client asked for none).
pub async fn serve_ws(
    ws: WebSocketStream<TcpStream>,
    protocol: &str,
    runtime: Arc<dyn Runtime>,
    target: Target,
    opts: Options,
    idle: Duration,
) {
    let codec = if protocol.contains("base64") {
        Codec::Base64
    } else {
        Codec::Binary
    };
    let json_status = protocol.starts_with("v4.") || protocol.starts_with("v5.");
    let close_signal = protocol == "v5.channel.k8s.io";

    let mut inputs = HashMap::new();
    let stdin = opts.stdin.then(|| {
        let (read, input) = wsmux::input_pipe();
        inputs.insert(CHANNEL_STDIN, input);
        read
    });
    let resize_rx = opts.tty.then(|| {
        let (tx, rx) = mpsc::channel(RESIZE_QUEUE);
        inputs.insert(CHANNEL_RESIZE, Input::Resize(tx));
        rx
    });
    let mux = WsMux::start(ws, codec, close_signal, inputs, idle);

    // An empty message on the first writable channel tells the client it is connected.
    let first = if opts.stdout {
        CHANNEL_STDOUT
    } else if opts.stderr {
        CHANNEL_STDERR
    } else {
        CHANNEL_ERROR
    };
    if mux.send(first, &[]).await.is_err() {
        return;
    }
    let streams = Streams {
        stdin: stdin.map(|r| Box::new(r) as _),
        stdout: opts
            .stdout
            .then(|| Box::new(mux.writer(CHANNEL_STDOUT)) as _),
        stderr: opts
            .stderr
            .then(|| Box::new(mux.writer(CHANNEL_STDERR)) as _),
        resize: resize_rx,
        tty: opts.tty,
    };
    let Some(status) = run(&runtime, &target, streams, mux.closed()).await else {
        return;
    };
    let bytes = if json_status {
        status.to_json()
    } else {
        status.to_text()
    };
    if !bytes.is_empty() {
        let _ = mux.send(CHANNEL_ERROR, &bytes).await;
    }
    mux.close().await;
}

/// Starts a WebSocket over an upgraded connection.
pub async fn websocket(io: TcpStream, leftover: Bytes) -> WebSocketStream<TcpStream> {
    WebSocketStream::from_partially_read(io, leftover.to_vec(), Role::Server, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_expected_streams() {
        assert_eq!(Version::of("v5.channel.k8s.io"), Version::V4);
        assert_eq!(Version::of("channel.k8s.io"), Version::V1);
        let opts = Options {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        assert_eq!(
            expected_streams(opts, Version::V4),
            vec!["error", "stdin", "stdout", "resize"]
        );
        assert_eq!(
            expected_streams(opts, Version::V2),
            vec!["error", "stdin", "stdout"]
        );
    }
}
