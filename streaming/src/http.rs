//! Just enough HTTP/1.1 for the streaming endpoints: read one request head, then answer
//! with a plain-text response or a `101 Switching Protocols` upgrade.
//! Runs in cairnd (its streaming server).

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All comma-separated values of every `name` header, trimmed, empty ones dropped.
    pub fn header_list(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// Whether header `name` lists `token` (case-insensitive), as `Connection: upgrade`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_list(name)
            .iter()
            .any(|v| v.eq_ignore_ascii_case(token))
    }

    /// Values of query parameter `key`, percent-decoded.
    pub fn query_values(&self, key: &str) -> Vec<String> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .filter(|(k, _)| percent_decode(k) == key)
            .map(|(_, v)| percent_decode(v))
            .collect()
    }

    /// Whether this is a WebSocket upgrade request.
    pub fn is_websocket(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket"))
            && self.has_token("connection", "upgrade")
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' if i + 2 < bytes.len() => std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
            _ => None,
        };
        match (decoded, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one request head. Returns it with the bytes already read past it (the start of
/// whatever protocol the connection upgrades to).
pub async fn read_request<S: AsyncRead + Unpin>(
    io: &mut S,
    timeout: Duration,
) -> io::Result<(Request, Bytes)> {
    tokio::time::timeout(timeout, read_head(io))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out reading request"))?
}

async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<(Request, Bytes)> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the request head ended",
            ));
        }
        if let Some((request, len)) = parse_head(&buf)? {
            let rest = buf.split_off(len).freeze();
            return Ok((request, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
}

fn parse_head(buf: &[u8]) -> io::Result<Option<(Request, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad request head: {e}"),
            ))
        }
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = Request {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    };
    Ok(Some((request, len)))
}

/// Writes a complete plain-text response and shuts the connection's write side.
pub async fn respond<S: AsyncWrite + Unpin>(
    io: &mut S,
    status: u16,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    io.write_all(head.as_bytes()).await?;
    io.flush().await?;
    io.shutdown().await
}

/// Writes a `101 Switching Protocols` response with `headers`.
pub async fn switch_protocols<S: AsyncWrite + Unpin>(
    io: &mut S,
    headers: &[(&str, &str)],
) -> io::Result<()> {
    let mut head = String::from("HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    io.write_all(head.as_bytes()).await?;
    io.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_a_head_and_keeps_what_follows() {
        let raw = b"POST /exec/abc?port=80&port=8080,9090&x=a%20b HTTP/1.1\r\n\
            Host: 127.0.0.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: SPDY/3.1\r\n\
            X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\
            X-Stream-Protocol-Version: v3.channel.k8s.io, channel.k8s.io\r\n\r\n\x80\x03";
        let mut io = &raw[..];
        let (req, rest) = read_request(&mut io, Duration::from_secs(1)).await.unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/exec/abc");
        assert_eq!(&rest[..], b"\x80\x03");
        assert!(req.has_token("connection", "upgrade"));
        assert!(!req.is_websocket());
        assert_eq!(
            req.header_list("x-stream-protocol-version"),
            vec!["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]
        );
        assert_eq!(req.query_values("port"), vec!["80", "8080,9090"]);
        assert_eq!(req.query_values("x"), vec!["a b"]);
    }

    #[tokio::test]
    async fn refuses_garbage_and_truncation() {
        let mut io = &b"\x16\x03\x01 not http\r\n\r\n"[..];
        assert!(read_request(&mut io, Duration::from_secs(1)).await.is_err());
        let mut io = &b"GET / HTTP/1.1\r\nHost: x\r\n"[..];
        let err = read_request(&mut io, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Cb"), "a,b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
