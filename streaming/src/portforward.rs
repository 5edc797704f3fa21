//! Port forwarding, over SPDY/3.1 (`portforward.k8s.io`) or WebSocket.
//!
//! SPDY: every forwarded connection is a pair of client streams sharing a `requestID`
//! header: `streamType: data` carries the bytes, `streamType: error` carries a failure
//! report; both name the pod port in a `port` header. One SPDY connection carries any
//! number of pairs, until the client hangs up.
//!
//! WebSocket: the ports come from the request; port number i gets channel 2i for data and
//! 2i+1 for errors, and the server starts both with the port as two little-endian bytes.
//! Runs in cairnd (its streaming server).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;

use crate::http;
use crate::spdy::frame::rst;
use crate::spdy::{Session, SessionConfig, SpdyStream};
use crate::wsmux::{self, Codec, Joined, WsMux};
use crate::{Runtime, StreamError};

/// SPDY port-forward protocols.
pub const SPDY_PROTOCOLS: &[&str] = &["portforward.k8s.io"];
/// WebSocket port-forward subprotocols ("" stands for none requested).
pub const WS_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v4.base64.channel.k8s.io", ""];

/// What the error stream carries when forwarding fails (newer clients parse it; older
/// ones print it).
#[derive(Serialize)]
struct ErrorReport<'a> {
    #[serde(rename = "closeConnection", skip_serializing_if = "std::ops::Not::not")]
    close_connection: bool,
    message: &'a str,
}

fn report(port: u16, pod: &str, err: &StreamError) -> Vec<u8> {
    let message = format!("error forwarding port {port} to pod {pod}, uid : {err}");
    tracing::warn!("{message}");
    // A reset or broken pipe on the pod side ends this connection only.
    let close_connection = !matches!(
        err,
        StreamError::Io { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
    );
    let mut out = serde_json::to_vec(&ErrorReport {
        close_connection,
        message: &message,
    })
    .unwrap_or_else(|_| message.clone().into_bytes());
    out.push(b'\n');
    out
}

/// One forwarded connection being assembled.
struct Pair {
    data: Option<SpdyStream>,
    error: Option<SpdyStream>,
    deadline: Instant,
}

/// Serves port forwarding over SPDY for `pod` (the caller negotiated the protocol).
pub async fn serve_spdy(
    mut io: TcpStream,
    leftover: Bytes,
    protocol: &str,
    runtime: Arc<dyn Runtime>,
    pod: String,
    idle: Duration,
    creation: Duration,
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
    if upgraded.is_err() {
        return;
    }
    let mut session = Session::start(io, leftover, SessionConfig { idle_timeout: idle });
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    let pod: Arc<str> = pod.into();
    loop {
        let next_deadline = pairs.values().map(|p| p.deadline).min();
        tokio::select! {
            stream = session.accept() => {
                let Some(stream) = stream else { break };
                if let Some(pair) = add_stream(&mut pairs, stream, creation).await {
                    let runtime = runtime.clone();
                    let pod = pod.clone();
                    forwards.spawn(async move { forward(runtime, &pod, pair).await });
                }
            }
            _ = sleep_until(next_deadline) => expire(&mut pairs).await,
            Some(_) = forwards.join_next() => {}
        }
    }
    // The client hung up: abort forwards still running (dropping the set does).
    drop(forwards);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Validates and files a new stream; returns the pair it completes, if any.
async fn add_stream(
    pairs: &mut HashMap<String, Pair>,
    stream: SpdyStream,
    creation: Duration,
) -> Option<(u16, SpdyStream, SpdyStream)> {
    let kind = match validate(&stream) {
        Ok(kind) => kind,
        Err(e) => {
            tracing::debug!("port forward: rejecting stream {}: {e}", stream.id());
            stream.reset(rst::CANCEL);
            return None;
        }
    };
    stream.reply();
    let request_id = request_id(&stream, kind);
    let pair = pairs.entry(request_id.clone()).or_insert_with(|| Pair {
        data: None,
        error: None,
        deadline: Instant::now() + creation,
    });
    let slot = if kind == "data" {
        &mut pair.data
    } else {
        &mut pair.error
    };
    if slot.is_some() {
        let msg = format!(
            "error processing stream for request {request_id}: {kind} stream already assigned"
        );
        tracing::debug!("port forward: {msg}");
        if let Some(err) = pair.error.as_mut() {
            let _ = err.write_all(msg.as_bytes()).await;
        }
        return None;
    }
    *slot = Some(stream);
    if pair.data.is_none() || pair.error.is_none() {
        return None;
    }
    let pair = pairs.remove(&request_id)?;
    let (data, error) = (pair.data?, pair.error?);
    let port = port_of(&data)?;
    Some((port, data, error))
}

/// Checks the `port` and `streamType` headers; returns the stream type.
fn validate(stream: &SpdyStream) -> Result<&'static str, String> {
    let port = stream
        .headers()
        .get("port")
        .ok_or("\"port\" header is required")?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        Ok(_) => return Err(format!("port {port:?} must be > 0")),
        Err(e) => return Err(format!("unable to parse {port:?} as a port: {e}")),
    }
    match stream.headers().get("streamtype") {
        Some("data") => Ok("data"),
        Some("error") => Ok("error"),
        Some(other) => Err(format!("invalid stream type {other:?}")),
        None => Err("\"streamType\" header is required".into()),
    }
}

fn port_of(stream: &SpdyStream) -> Option<u16> {
    stream.headers().get("port")?.parse().ok()
}

/// The pair a stream belongs to: its `requestID` header, or for old clients that do not
/// send one, a guess from the stream id (the error stream is opened just before its data
/// stream).
fn request_id(stream: &SpdyStream, kind: &str) -> String {
    if let Some(id) = stream.headers().get("requestid") {
        return id.to_string();
    }
    let id = stream.id();
    match kind {
        "data" => id.saturating_sub(2).to_string(),
        _ => id.to_string(),
    }
}

/// Drops pairs whose second stream did not come in time, telling the client.
async fn expire(pairs: &mut HashMap<String, Pair>) {
    let now = Instant::now();
    let expired: Vec<String> = pairs
        .iter()
        .filter(|(_, p)| p.deadline <= now)
        .map(|(id, _)| id.clone())
        .collect();
    for id in expired {
        let Some(pair) = pairs.remove(&id) else {
            continue;
        };
        let msg = format!("timed out waiting for streams of request {id}");
        tracing::debug!("port forward: {msg}");
        if let Some(mut err) = pair.error {
            let _ = err.write_all(msg.as_bytes()).await;
        }
    }
}

async fn forward(runtime: Arc<dyn Runtime>, pod: &str, pair: (u16, SpdyStream, SpdyStream)) {
    let (port, data, mut error) = pair;
    if let Err(e) = runtime.port_forward(pod, port, Box::new(data)).await {
        let _ = error.write_all(&report(port, pod, &e)).await;
    }
    let _ = error.shutdown().await;
}

/// Serves port forwarding over WebSocket for `ports` of `pod`.
pub async fn serve_ws(
    ws: WebSocketStream<TcpStream>,
    protocol: &str,
    runtime: Arc<dyn Runtime>,
    pod: String,
    ports: Vec<u16>,
    idle: Duration,
) {
    let codec = if protocol.contains("base64") {
        Codec::Base64
    } else {
        Codec::Binary
    };
    let mut inputs = HashMap::new();
    let mut reads = Vec::new();
    for i in 0..ports.len() {
        let (read, input) = wsmux::input_pipe();
        inputs.insert(data_channel(i), input);
        reads.push(read);
    }
    let mux = WsMux::start(ws, codec, false, inputs, idle);
    for (i, port) in ports.iter().enumerate() {
        let prefix = port.to_le_bytes();
        let sent = mux.send(data_channel(i), &prefix).await.is_ok()
            && mux.send(data_channel(i) + 1, &prefix).await.is_ok();
        if !sent {
            return;
        }
    }
    let mut forwards = JoinSet::new();
    for (i, (port, read)) in ports.iter().copied().zip(reads).enumerate() {
        let stream = Joined {
            read,
            write: mux.writer(data_channel(i)),
        };
        let mut error = mux.writer(data_channel(i) + 1);
        let runtime = runtime.clone();
        let pod = pod.clone();
        forwards.spawn(async move {
            if let Err(e) = runtime.port_forward(&pod, port, Box::new(stream)).await {
                let _ = error.write_all(&report(port, &pod, &e)).await;
            }
        });
    }
    let closed = mux.closed();
    let all_done = async { while forwards.join_next().await.is_some() {} };
    tokio::select! {
        _ = all_done => mux.close().await,
        _ = closed.cancelled() => {}
    }
}

fn data_channel(index: usize) -> u8 {
    (index * 2) as u8
}

/// Ports for a WebSocket port forward: the CRI request's, else the `port` query values
/// (comma-separated lists allowed).
pub fn ws_ports(cri_ports: &[i32], query: &[String]) -> Result<Vec<u16>, String> {
    let ports = if cri_ports.is_empty() {
        query_ports(query)?
    } else {
        cri_ports
            .iter()
            .map(|p| {
                u16::try_from(*p)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or(format!("invalid port {p}"))
            })
            .collect::<Result<Vec<u16>, String>>()?
    };
    // Channel numbers are one byte and each port takes two.
    if ports.len() > 128 {
        return Err(format!("{} ports requested, at most 128 fit", ports.len()));
    }
    Ok(ports)
}

fn query_ports(query: &[String]) -> Result<Vec<u16>, String> {
    if query.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    let mut ports = Vec::new();
    for value in query {
        for p in value.split(',') {
            match p.trim().parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(format!("unable to parse {p:?} as a port")),
            }
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_from_request_or_query() {
        assert_eq!(ws_ports(&[80, 8080], &[]).unwrap(), vec![80, 8080]);
        assert!(ws_ports(&[0], &[]).is_err());
        assert!(ws_ports(&[70000], &[]).is_err());
        assert_eq!(
            ws_ports(&[], &["80,81".into(), "82".into()]).unwrap(),
            vec![80, 81, 82]
        );
        assert!(ws_ports(&[], &[]).is_err());
        assert!(ws_ports(&[], &["x".into()]).is_err());
    }

    #[test]
    fn error_reports() {
        let err = StreamError::other("connection refused");
        let text = String::from_utf8(report(80, "pod1", &err)).unwrap();
        assert_eq!(
            text,
            "{\"closeConnection\":true,\"message\":\"error forwarding port 80 to pod pod1, uid : connection refused\"}\n"
        );
        let reset = StreamError::io(
            "copying",
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        );
        let text = String::from_utf8(report(80, "pod1", &reset)).unwrap();
        assert!(text.starts_with("{\"message\":"), "{text}");
    }
}
