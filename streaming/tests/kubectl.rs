//! Interoperability with the real Kubernetes client stack: `kubectl exec` and
//! `kubectl port-forward` (client-go's SPDY and WebSocket clients) talk to a fake API
//! server that, like kubelet, answers the pod lookup and proxies the streaming request
//! to the CRI streaming URL. Skipped (with a message) when kubectl is not installed.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cairn_proto::cri::{AttachRequest, ExecRequest, PortForwardRequest};
use cairn_streaming::{Config, Server};
use common::{echo_server, FakeRuntime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

fn kubectl_available() -> bool {
    let found = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "kubectl is not installed: run tests/setup.sh (Debian's kubernetes-client)"
    );
    found
}

/// One request head read off a client connection.
struct Head {
    method: String,
    path: String,
    query: String,
    raw_headers: Vec<(String, String)>,
}

async fn read_head(conn: &mut TcpStream, buf: &mut BytesMut) -> Option<Head> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = req.parse(buf) {
            let target = req.path.unwrap_or("/").to_string();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let head = Head {
                method: req.method.unwrap_or("GET").to_string(),
                path: path.to_string(),
                query: query.to_string(),
                raw_headers: req
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
            let _ = buf.split_to(len);
            return Some(head);
        }
        if conn.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

fn query_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| {
            let v = v.replace('+', " ");
            // kubectl only percent-encodes what our commands do not contain, bar spaces.
            v.replace("%20", " ").replace("%2F", "/")
        })
        .collect()
}

fn flag(query: &str, key: &str) -> bool {
    query_values(query, key)
        .iter()
        .any(|v| v == "true" || v == "1")
}

const POD: &str = "/api/v1/namespaces/default/pods/p1";

fn json_response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Answers kubectl like an API server would, for pod `p1` only.
async fn api_connection(mut conn: TcpStream, server: Arc<Server>) {
    let mut buf = BytesMut::new();
    while let Some(head) = read_head(&mut conn, &mut buf).await {
        let body = match head.path.as_str() {
            "/version" => r#"{"major":"1","minor":"32","gitVersion":"v1.32.4"}"#.to_string(),
            "/api" => r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]}"#.to_string(),
            "/api/v1" => r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]},{"name":"pods/exec","singularName":"","namespaced":true,"kind":"PodExecOptions","verbs":["create","get"]},{"name":"pods/attach","singularName":"","namespaced":true,"kind":"PodAttachOptions","verbs":["create","get"]},{"name":"pods/portforward","singularName":"","namespaced":true,"kind":"PodPortForwardOptions","verbs":["create","get"]}]}"#.to_string(),
            "/apis" => r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#.to_string(),
            POD => r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p1","namespace":"default","uid":"u1"},"spec":{"containers":[{"name":"c1","image":"x"}]},"status":{"phase":"Running"}}"#.to_string(),
            p if p.starts_with(POD) => {
                return proxy(conn, head, buf, &server).await;
            }
            _ => {
                let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
                let _ = conn.write_all(json_response("404 Not Found", body).as_bytes()).await;
                continue;
            }
        };
        if conn
            .write_all(json_response("200 OK", &body).as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Turns a pod subresource request into a CRI request, then forwards the client's
/// connection to the streaming URL, as kubelet does.
async fn proxy(mut conn: TcpStream, head: Head, rest: BytesMut, server: &Server) {
    let q = &head.query;
    let url = match head.path.strip_prefix(POD) {
        Some("/exec") => {
            let req = ExecRequest {
                container_id: "c1".into(),
                cmd: query_values(q, "command"),
                tty: flag(q, "tty"),
                stdin: flag(q, "stdin"),
                stdout: flag(q, "stdout"),
                stderr: flag(q, "stderr"),
            };
            server.get_exec(&req).unwrap().url
        }
        Some("/attach") => {
            let req = AttachRequest {
                container_id: "c1".into(),
                tty: flag(q, "tty"),
                stdin: flag(q, "stdin"),
                stdout: flag(q, "stdout"),
                stderr: flag(q, "stderr"),
            };
            server.get_attach(&req).unwrap().url
        }
        Some("/portforward") => {
            let req = PortForwardRequest {
                pod_sandbox_id: "pod1".into(),
                port: vec![],
            };
            server.get_port_forward(&req).unwrap().url
        }
        _ => return,
    };
    let path = &url[url.find("//").unwrap() + 2..];
    let path = &path[path.find('/').unwrap()..];
    let mut forwarded = format!("{} {path} HTTP/1.1\r\n", head.method);
    for (name, value) in &head.raw_headers {
        forwarded.push_str(&format!("{name}: {value}\r\n"));
    }
    forwarded.push_str("\r\n");
    let mut upstream = TcpStream::connect(server.local_addr()).await.unwrap();
    upstream.write_all(forwarded.as_bytes()).await.unwrap();
    upstream.write_all(&rest).await.unwrap();
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
}

async fn fake_api_server(server: Arc<Server>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(api_connection(conn, server.clone()));
        }
    });
    addr
}

struct Kubectl {
    api: SocketAddr,
    cache: tempfile::TempDir,
}

impl Kubectl {
    fn command(&self, websockets: bool) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg(format!("--server=http://{}", self.api))
            .arg(format!("--cache-dir={}", self.cache.path().display()))
            .arg("--request-timeout=20s")
            .env("KUBECONFIG", self.cache.path().join("no-kubeconfig"))
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets.to_string())
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `kubectl exec p1 -c c1 <flags> -- <cmd>`; returns (exit code, stdout, stderr).
    async fn exec(
        &self,
        websockets: bool,
        flags: &[&str],
        cmd: &[&str],
        stdin: &[u8],
    ) -> (i32, String, String) {
        let mut c = self.command(websockets);
        c.args(["exec", "p1", "-c", "c1"])
            .args(flags)
            .arg("--")
            .args(cmd);
        let mut child = c.spawn().expect("running kubectl");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).await.unwrap();
        drop(input);
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("kubectl exec finished within 30s")
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_port_forward() {
    if !kubectl_available() {
        return;
    }
    common::init_logging();
    let server = Server::start(Config::default(), Arc::new(FakeRuntime::default()))
        .await
        .unwrap();
    let server = Arc::new(server);
    let kubectl = Kubectl {
        api: fake_api_server(server.clone()).await,
        cache: tempfile::tempdir().unwrap(),
    };

    for websockets in [false, true] {
        let proto = if websockets { "websocket" } else { "spdy" };
        let (code, out, err) = kubectl
            .exec(websockets, &[], &["echo", "hello", proto], b"")
            .await;
        assert_eq!(
            (code, out.as_str()),
            (0, format!("hello {proto}\n").as_str()),
            "{proto}: {err}"
        );

        let (code, _, err) = kubectl.exec(websockets, &[], &["false3"], b"").await;
        assert_eq!(code, 3, "{proto}: {err}");
        assert!(
            err.contains("command terminated with exit code 3"),
            "{proto}: {err}"
        );

        let (code, out, err) = kubectl
            .exec(websockets, &["-i"], &["cat"], b"piped\ninput\n")
            .await;
        assert_eq!(
            (code, out.as_str()),
            (0, "piped\ninput\n"),
            "{proto}: {err}"
        );

        let (code, out, err) = kubectl
            .exec(websockets, &[], &["stderr", "to stderr"], b"")
            .await;
        assert_eq!((code, out.as_str()), (0, ""), "{proto}: {err}");
        assert!(err.contains("to stderr"), "{proto}: {err}");
    }

    // Port forward over SPDY: kubectl listens locally and forwards to the pod's port.
    let echo = echo_server().await;
    let mut pf = kubectl.command(false);
    pf.args(["port-forward", "p1", &format!(":{echo}")]);
    let mut child = pf.spawn().expect("running kubectl port-forward");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let local = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // "Forwarding from 127.0.0.1:41234 -> 39999"
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                return rest.split(' ').next().unwrap().parse::<u16>().unwrap();
            }
        }
        panic!("kubectl port-forward ended without forwarding");
    })
    .await
    .expect("kubectl port-forward listening within 20s");
    for round in 0..3 {
        let mut conn = TcpStream::connect(("127.0.0.1", local)).await.unwrap();
        let msg = format!("round {round} through kubectl");
        conn.write_all(msg.as_bytes()).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut got))
            .await
            .expect("echo within 10s")
            .unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), msg);
    }
    let _ = child.kill().await;
}
