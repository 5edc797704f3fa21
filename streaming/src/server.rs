//! The HTTP side of the streaming server: the listener, the single-use URLs handed out
//! by the CRI calls, and routing each connection to exec, attach or port forward over
//! SPDY or WebSocket.
//! Runs in cairnd (its streaming server).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::cri::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest,
    PortForwardResponse,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::cache::{Cached, RequestCache, TOKEN_TTL};
use crate::http::{self, Request};
use crate::remotecommand::{self, Options, Target, Timeouts};
use crate::{portforward, Runtime};

/// Longest wait for a client's request head.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Streaming server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port. URLs name this address (an unspecified
    /// address such as 0.0.0.0 is advertised as loopback).
    pub addr: SocketAddr,
    /// Connections idle (no frame either way) this long are closed. kubelet uses 4 hours.
    pub stream_idle_timeout: Duration,
    /// How long a SPDY client has to open its streams. kubelet uses 30 seconds.
    pub stream_creation_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            stream_idle_timeout: Duration::from_secs(4 * 3600),
            stream_creation_timeout: Duration::from_secs(30),
        }
    }
}

/// A running streaming server. Dropping it (or [`Server::shutdown`]) stops the listener
/// and every session.
pub struct Server {
    local_addr: SocketAddr,
    base_url: String,
    cache: Arc<RequestCache>,
    accept_loop: JoinHandle<()>,
}

/// What each connection needs.
struct Shared {
    config: Config,
    runtime: Arc<dyn Runtime>,
    cache: Arc<RequestCache>,
}

impl Server {
    /// Binds `config.addr` and starts serving.
    pub async fn start(config: Config, runtime: Arc<dyn Runtime>) -> std::io::Result<Server> {
        let listener = TcpListener::bind(config.addr).await?;
        let local_addr = listener.local_addr()?;
        let cache = Arc::new(RequestCache::new(TOKEN_TTL));
        let shared = Arc::new(Shared {
            config,
            runtime,
            cache: cache.clone(),
        });
        let accept_loop = tokio::spawn(accept_loop(listener, shared));
        Ok(Server {
            local_addr,
            base_url: format!("http://{}", advertised(local_addr)),
            cache,
            accept_loop,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Validates an exec request and returns its URL.
    pub fn get_exec(&self, req: &ExecRequest) -> Result<ExecResponse, tonic::Status> {
        if req.container_id.is_empty() {
            return Err(invalid("missing required container_id"));
        }
        if req.cmd.is_empty() {
            return Err(invalid("missing required cmd"));
        }
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        let token = self.cache.insert(Cached::Exec(req.clone()))?;
        Ok(ExecResponse {
            url: self.url("exec", &token),
        })
    }

    /// Validates an attach request and returns its URL.
    pub fn get_attach(&self, req: &AttachRequest) -> Result<AttachResponse, tonic::Status> {
        if req.container_id.is_empty() {
            return Err(invalid("missing required container_id"));
        }
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        let token = self.cache.insert(Cached::Attach(req.clone()))?;
        Ok(AttachResponse {
            url: self.url("attach", &token),
        })
    }

    /// Validates a port-forward request and returns its URL.
    pub fn get_port_forward(
        &self,
        req: &PortForwardRequest,
    ) -> Result<PortForwardResponse, tonic::Status> {
        if req.pod_sandbox_id.is_empty() {
            return Err(invalid("missing required pod_sandbox_id"));
        }
        if let Some(port) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(invalid(&format!("invalid port {port}")));
        }
        let token = self.cache.insert(Cached::PortForward(req.clone()))?;
        Ok(PortForwardResponse {
            url: self.url("portforward", &token),
        })
    }

    /// Stops the listener and every session, and waits for them to go.
    pub async fn shutdown(mut self) {
        self.accept_loop.abort();
        let _ = (&mut self.accept_loop).await;
    }

    fn url(&self, kind: &str, token: &str) -> String {
        format!("{}/{kind}/{token}", self.base_url)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

fn invalid(msg: &str) -> tonic::Status {
    tonic::Status::invalid_argument(msg)
}

fn check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), tonic::Status> {
    if tty && stderr {
        return Err(invalid("tty and stderr cannot both be true"));
    }
    if !stdin && !stdout && !stderr {
        return Err(invalid("one of stdin, stdout, or stderr must be set"));
    }
    Ok(())
}

/// The host:port to put in URLs.
fn advertised(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connection tasks live in the set, so aborting this task ends them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((io, peer)) => {
                    let shared = shared.clone();
                    connections.spawn(async move { serve_connection(io, peer, shared).await });
                }
                Err(e) => {
                    tracing::warn!("streaming server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn serve_connection(mut io: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = io.set_nodelay(true);
    let (req, leftover) = match http::read_request(&mut io, REQUEST_HEAD_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("streaming server: bad request from {peer}: {e}");
            let _ = http::respond(&mut io, 400, &[], &format!("{e}\n")).await;
            return;
        }
    };
    tracing::debug!("streaming server: {} {} from {peer}", req.method, req.path);
    if req.method != "GET" && req.method != "POST" {
        let _ = http::respond(&mut io, 405, &[], "method not allowed\n").await;
        return;
    }
    let Some(cached) = lookup(&shared.cache, &req.path) else {
        let _ = http::respond(&mut io, 404, &[], "404 page not found\n").await;
        return;
    };
    match cached {
        Cached::Exec(r) => {
            let target = Target::Exec {
                container_id: r.container_id,
                cmd: r.cmd,
            };
            let opts = options(r.tty, r.stdin, r.stdout, r.stderr);
            serve_remote_command(io, req, leftover, shared, target, opts).await;
        }
        Cached::Attach(r) => {
            let target = Target::Attach {
                container_id: r.container_id,
            };
            let opts = options(r.tty, r.stdin, r.stdout, r.stderr);
            serve_remote_command(io, req, leftover, shared, target, opts).await;
        }
        Cached::PortForward(r) => serve_port_forward(io, req, leftover, shared, r).await,
    }
}

/// Consumes the token of `/exec/<t>`, `/attach/<t>` or `/portforward/<t>`; the cached
/// request must be of the path's kind.
fn lookup(cache: &RequestCache, path: &str) -> Option<Cached> {
    let rest = path.strip_prefix('/')?;
    let (kind, token) = rest.split_once('/')?;
    if token.is_empty() || token.contains('/') {
        return None;
    }
    let cached = cache.consume(token)?;
    let matches = matches!(
        (kind, &cached),
        ("exec", Cached::Exec(_))
            | ("attach", Cached::Attach(_))
            | ("portforward", Cached::PortForward(_))
    );
    matches.then_some(cached)
}

fn options(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Options {
    Options {
        stdin,
        stdout,
        // A TTY merges stderr into stdout.
        stderr: stderr && !tty,
        tty,
    }
}

async fn serve_remote_command(
    mut io: TcpStream,
    req: Request,
    leftover: bytes::Bytes,
    shared: Arc<Shared>,
    target: Target,
    opts: Options,
) {
    let runtime = shared.runtime.clone();
    if req.is_websocket() {
        let Some(protocol) = ws_handshake(&mut io, &req, remotecommand::WS_PROTOCOLS).await else {
            return;
        };
        let ws = remotecommand::websocket(io, leftover).await;
        let idle = shared.config.stream_idle_timeout;
        remotecommand::serve_ws(ws, &protocol, runtime, target, opts, idle).await;
        return;
    }
    let Some(protocol) = spdy_handshake(&mut io, &req, remotecommand::SPDY_PROTOCOLS).await else {
        return;
    };
    let timeouts = Timeouts {
        idle: shared.config.stream_idle_timeout,
        creation: shared.config.stream_creation_timeout,
    };
    remotecommand::serve_spdy(io, leftover, &protocol, runtime, target, opts, timeouts).await;
}

async fn serve_port_forward(
    mut io: TcpStream,
    req: Request,
    leftover: bytes::Bytes,
    shared: Arc<Shared>,
    cri: PortForwardRequest,
) {
    let runtime = shared.runtime.clone();
    if req.is_websocket() {
        let ports = match portforward::ws_ports(&cri.port, &req.query_values("port")) {
            Ok(ports) => ports,
            Err(e) => {
                let _ = http::respond(&mut io, 400, &[], &format!("{e}\n")).await;
                return;
            }
        };
        let Some(protocol) = ws_handshake(&mut io, &req, portforward::WS_PROTOCOLS).await else {
            return;
        };
        let ws = remotecommand::websocket(io, leftover).await;
        let idle = shared.config.stream_idle_timeout;
        portforward::serve_ws(ws, &protocol, runtime, cri.pod_sandbox_id, ports, idle).await;
        return;
    }
    let Some(protocol) = spdy_handshake(&mut io, &req, portforward::SPDY_PROTOCOLS).await else {
        return;
    };
    let config = &shared.config;
    portforward::serve_spdy(
        io,
        leftover,
        &protocol,
        runtime,
        cri.pod_sandbox_id,
        config.stream_idle_timeout,
        config.stream_creation_timeout,
    )
    .await;
}

/// Negotiates the `X-Stream-Protocol-Version` (the client's first choice the server
/// supports) and checks the SPDY/3.1 upgrade headers, answering the client on failure.
async fn spdy_handshake(io: &mut TcpStream, req: &Request, supported: &[&str]) -> Option<String> {
    let offered = req.header_list("x-stream-protocol-version");
    if offered.is_empty() {
        let msg = "unable to upgrade: X-Stream-Protocol-Version is required\n";
        let _ = http::respond(io, 400, &[], msg).await;
        return None;
    }
    let Some(protocol) = offered.iter().find(|p| supported.contains(&p.as_str())) else {
        let msg = format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}\n"
        );
        let accepted: Vec<(&str, &str)> = supported
            .iter()
            .map(|p| ("X-Accepted-Stream-Protocol-Versions", *p))
            .collect();
        let _ = http::respond(io, 403, &accepted, &msg).await;
        return None;
    };
    let upgrade_ok = req.has_token("connection", "upgrade")
        && req
            .header("upgrade")
            .is_some_and(|u| u.to_ascii_lowercase().contains("spdy/3.1"));
    if !upgrade_ok {
        let msg = "unable to upgrade: missing upgrade headers in request\n";
        let _ = http::respond(io, 400, &[], msg).await;
        return None;
    }
    Some(protocol.clone())
}

/// Negotiates the WebSocket subprotocol (the client's first choice the server supports;
/// none requested selects "") and sends the 101 answer.
async fn ws_handshake(io: &mut TcpStream, req: &Request, supported: &[&str]) -> Option<String> {
    let key = req.header("sec-websocket-key").map(str::trim);
    let version_ok = req.header("sec-websocket-version").map(str::trim) == Some("13");
    let Some(key) = key.filter(|k| !k.is_empty() && version_ok) else {
        let msg = "websocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13\n";
        let _ = http::respond(io, 400, &[("Sec-WebSocket-Version", "13")], msg).await;
        return None;
    };
    let offered = req.header_list("sec-websocket-protocol");
    let protocol = if offered.is_empty() {
        supported.contains(&"").then(String::new)
    } else {
        offered
            .iter()
            .find(|p| supported.contains(&p.as_str()))
            .cloned()
    };
    let Some(protocol) = protocol else {
        let msg = format!(
            "requested protocol(s) are not supported: {offered:?}; supports {supported:?}\n"
        );
        let _ = http::respond(io, 403, &[], &msg).await;
        return None;
    };
    let accept = derive_accept_key(key.as_bytes());
    let mut headers = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept.as_str()),
    ];
    if !protocol.is_empty() {
        headers.push(("Sec-WebSocket-Protocol", protocol.as_str()));
    }
    http::switch_protocols(io, &headers).await.ok()?;
    Some(protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_advertised_as_loopback() {
        let a: SocketAddr = "0.0.0.0:1234".parse().unwrap();
        assert_eq!(advertised(a).to_string(), "127.0.0.1:1234");
        let a: SocketAddr = "[::]:1234".parse().unwrap();
        assert_eq!(advertised(a).to_string(), "[::1]:1234");
        let a: SocketAddr = "10.1.2.3:1234".parse().unwrap();
        assert_eq!(advertised(a), a);
    }

    #[test]
    fn tokens_only_work_on_their_own_path() {
        let cache = RequestCache::new(TOKEN_TTL);
        let t = cache.insert(Cached::Exec(ExecRequest::default())).unwrap();
        assert!(lookup(&cache, &format!("/attach/{t}")).is_none());
        // Consumed by the failed attempt, like kubelet does.
        assert!(lookup(&cache, &format!("/exec/{t}")).is_none());
        let t = cache.insert(Cached::Exec(ExecRequest::default())).unwrap();
        assert!(lookup(&cache, &format!("/exec/{t}/x")).is_none());
        assert!(lookup(&cache, &format!("/exec/{t}")).is_some());
    }
}
