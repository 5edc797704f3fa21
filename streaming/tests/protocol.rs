//! Protocol tests of the streaming server against independent clients: the node scripts
//! in tests/js (spdy-transport for SPDY/3.1, ws for WebSocket) drive exec, attach and
//! port forward against a [`Server`] backed by a fake runtime. HTTP-level errors are
//! checked with raw requests.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use cairn_proto::cri::{AttachRequest, ExecRequest, PortForwardRequest};
use cairn_streaming::{Config, Server};
use common::{echo_server, FakeRuntime};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start_with(config: Config) -> (Server, Arc<AtomicBool>) {
    common::init_logging();
    let runtime = FakeRuntime::default();
    let cancelled = runtime.cancelled.clone();
    let server = Server::start(config, Arc::new(runtime)).await.unwrap();
    (server, cancelled)
}

async fn start() -> Server {
    start_with(Config::default()).await.0
}

fn exec_url(server: &Server, cmd: &[&str], stdin: bool, tty: bool) -> String {
    let req = ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    };
    server.get_exec(&req).unwrap().url
}

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Installs the clients' npm packages once (`npm ci`), or fails with a clear message.
fn ensure_clients() {
    static SETUP: Once = Once::new();
    SETUP.call_once(|| {
        for tool in ["node", "npm"] {
            let found = std::process::Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "`{tool}` not found: the streaming protocol tests need Node.js and npm \
                 (Debian packages nodejs and npm)"
            );
        }
        let dir = js_dir();
        if dir.join("node_modules/spdy-transport").is_dir() && dir.join("node_modules/ws").is_dir()
        {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("running npm ci");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    });
}

/// Runs a client script with `--json` and returns its JSON output.
async fn run_js(script: &str, args: &[&str]) -> Value {
    ensure_clients();
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg(js_dir().join(script))
            .args(args)
            .arg("--json")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("client finished within 60s")
    .expect("running node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if std::env::var_os("JS_DEBUG").is_some() {
        eprintln!("{script} {args:?} took {:?}\n{stderr}", started.elapsed());
    }
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("{script} {args:?}: bad output ({e}): {stdout}\nstderr: {stderr}")
    })
}

async fn exec_js(url: &str, extra: &[&str]) -> Value {
    let mut args = vec![url];
    args.extend_from_slice(extra);
    run_js("exec.js", &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_v4_reports_output_and_exit_codes() {
    let server = start().await;
    let out = exec_js(
        &exec_url(&server, &["echo", "hello", "world"], false, false),
        &[],
    )
    .await;
    assert_eq!(out["protocol"], "v4.channel.k8s.io");
    assert_eq!(out["stdout"], "hello world\n");
    assert_eq!(out["status"]["status"], "Success");
    assert_eq!(out["exitCode"], 0);

    let out = exec_js(&exec_url(&server, &["false3"], false, false), &[]).await;
    assert_eq!(out["exitCode"], 3, "{out}");
    assert_eq!(out["status"]["reason"], "NonZeroExitCode");
    assert_eq!(out["status"]["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(out["status"]["details"]["causes"][0]["message"], "3");

    let out = exec_js(&exec_url(&server, &["stderr", "oops"], false, false), &[]).await;
    assert_eq!(out["stderr"], "oops");
    assert_eq!(out["exitCode"], 0);

    let out = exec_js(&exec_url(&server, &["fail"], false, false), &[]).await;
    assert_eq!(out["status"]["reason"], "InternalError", "{out}");
    assert_eq!(out["status"]["code"], 500);
    let msg = out["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("error executing command in container: boom"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_stdin_eof_reaches_the_runtime() {
    let server = start().await;
    let url = exec_url(&server, &["cat"], true, false);
    let out = exec_js(&url, &["--stdin-text", "line one\nline two\n"]).await;
    assert_eq!(out["stdout"], "line one\nline two\n", "{out}");
    assert_eq!(out["exitCode"], 0);

    // An empty stdin still ends.
    let url = exec_url(&server, &["cat"], true, false);
    let out = exec_js(&url, &["--stdin-text", ""]).await;
    assert_eq!(out["stdout"], "");
    assert_eq!(out["exitCode"], 0);
}

/// The bytes exec.js sends for `--stdin-bytes n`.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + (i >> 8)) & 0xff) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_moves_megabytes_both_ways() {
    let server = start().await;
    let n = 3 * 1024 * 1024 + 17;
    let url = exec_url(&server, &["cat"], true, false);
    let out = exec_js(&url, &["--stdin-bytes", &n.to_string()]).await;
    assert_eq!(out["stdoutLength"], n as u64);
    assert_eq!(out["stdoutSha256"], hex::encode(Sha256::digest(pattern(n))));
    assert_eq!(out["exitCode"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_older_protocols() {
    let server = start().await;
    for proto in ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"] {
        let url = exec_url(&server, &["echo", proto], false, false);
        let out = exec_js(&url, &["--subprotocol", proto]).await;
        assert_eq!(out["protocol"], proto);
        assert_eq!(out["stdout"], format!("{proto}\n"));
        // Before v4, success leaves the error stream empty.
        assert_eq!(out["error"], "", "{out}");

        let url = exec_url(&server, &["false3"], false, false);
        let out = exec_js(&url, &["--subprotocol", proto]).await;
        assert_eq!(
            out["error"], "command terminated with non-zero exit code: exit status 3",
            "{out}"
        );
    }
    // The client's preference order wins; v5 is served as v4.
    let url = exec_url(&server, &["echo", "x"], false, false);
    let out = exec_js(
        &url,
        &[
            "--subprotocol",
            "v5.channel.k8s.io",
            "--subprotocol",
            "v4.channel.k8s.io",
        ],
    )
    .await;
    assert_eq!(out["protocol"], "v5.channel.k8s.io");
    assert_eq!(out["status"]["status"], "Success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_sessions_get_resize_events() {
    let server = start().await;
    let url = exec_url(&server, &["tty"], false, true);
    let out = exec_js(&url, &["--tty", "--resize", "80x24"]).await;
    assert_eq!(out["stdout"], "tty=true size=80x24\n", "{out}");

    let url = exec_url(&server, &["tty"], false, true);
    let out = exec_js(&url, &["--protocol", "ws", "--tty", "--resize", "100x40"]).await;
    assert_eq!(out["stdout"], "tty=true size=100x40\n", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_exec() {
    let server = start().await;
    // v5: stdin is closed with the close signal, exit status as JSON.
    let url = exec_url(&server, &["cat"], true, false);
    let out = exec_js(&url, &["--protocol", "ws", "--stdin-text", "through ws\n"]).await;
    assert_eq!(out["protocol"], "v5.channel.k8s.io");
    assert_eq!(out["stdout"], "through ws\n", "{out}");
    assert_eq!(out["status"]["status"], "Success");

    let url = exec_url(&server, &["false3"], false, false);
    let out = exec_js(
        &url,
        &["--protocol", "ws", "--subprotocol", "v4.channel.k8s.io"],
    )
    .await;
    assert_eq!(out["protocol"], "v4.channel.k8s.io");
    assert_eq!(out["exitCode"], 3, "{out}");

    let url = exec_url(&server, &["stderr", "to stderr"], false, false);
    let out = exec_js(
        &url,
        &[
            "--protocol",
            "ws",
            "--subprotocol",
            "v4.base64.channel.k8s.io",
        ],
    )
    .await;
    assert_eq!(out["protocol"], "v4.base64.channel.k8s.io");
    assert_eq!(out["stderr"], "to stderr", "{out}");
    assert_eq!(out["status"]["status"], "Success");

    for proto in ["channel.k8s.io", "base64.channel.k8s.io"] {
        let url = exec_url(&server, &["echo", "hi"], false, false);
        let out = exec_js(&url, &["--protocol", "ws", "--subprotocol", proto]).await;
        assert_eq!(out["protocol"], proto);
        assert_eq!(out["stdout"], "hi\n", "{out}");
        let url = exec_url(&server, &["false3"], false, false);
        let out = exec_js(&url, &["--protocol", "ws", "--subprotocol", proto]).await;
        assert_eq!(
            out["error"], "command terminated with non-zero exit code: exit status 3",
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_over_both_protocols() {
    let server = start().await;
    let attach = |stdin: bool| AttachRequest {
        container_id: "c1".into(),
        stdin,
        tty: false,
        stdout: true,
        stderr: true,
    };
    let url = server.get_attach(&attach(true)).unwrap().url;
    assert!(url.contains("/attach/"), "{url}");
    let out = exec_js(&url, &["--stdin-text", "input\n"]).await;
    assert_eq!(out["stdout"], "attached\ninput\n", "{out}");
    assert_eq!(out["status"]["status"], "Success");

    let url = server.get_attach(&attach(true)).unwrap().url;
    let out = exec_js(&url, &["--protocol", "ws", "--stdin-text", "ws input\n"]).await;
    assert_eq!(out["stdout"], "attached\nws input\n", "{out}");

    let mut missing = attach(false);
    missing.container_id = "nope".into();
    let url = server.get_attach(&missing).unwrap().url;
    let out = exec_js(&url, &[]).await;
    assert_eq!(out["status"]["reason"], "NotFound", "{out}");
    assert_eq!(out["status"]["code"], 404);
}

fn port_forward_url(server: &Server, ports: &[i32]) -> String {
    let req = PortForwardRequest {
        pod_sandbox_id: "pod1".into(),
        port: ports.to_vec(),
    };
    server.get_port_forward(&req).unwrap().url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_port_forward() {
    let server = start().await;
    let port = echo_server().await.to_string();
    let url = port_forward_url(&server, &[]);
    let out = run_js(
        "portforward.js",
        &[&url, &port, "ping through the pod", "--connections", "3"],
    )
    .await;
    assert_eq!(out["protocol"], "portforward.k8s.io");
    let conns = out["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 3);
    for c in conns {
        assert_eq!(c["data"], "ping through the pod", "{out}");
        assert_eq!(c["error"], "");
    }

    // Nothing listens on the port: the failure comes back on the error stream.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    let url = port_forward_url(&server, &[]);
    let out = run_js("portforward.js", &[&url, &dead_port, "x"]).await;
    let error = out["connections"][0]["error"].as_str().unwrap();
    let report: Value = serde_json::from_str(error.trim()).unwrap();
    let message = report["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("error forwarding port {dead_port} to pod pod1")),
        "{message}"
    );
    assert_eq!(report["closeConnection"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_port_forward() {
    let server = start().await;
    let port = echo_server().await;
    for proto in ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"] {
        let url = port_forward_url(&server, &[port.into()]);
        let out = run_js(
            "portforward.js",
            &[
                &url,
                &port.to_string(),
                "over a websocket",
                "--protocol",
                "ws",
                "--subprotocol",
                proto,
            ],
        )
        .await;
        assert_eq!(out["protocol"], proto);
        assert_eq!(out["connections"][0]["data"], "over a websocket", "{out}");
    }
    // Without ports in the CRI request, the query names them.
    let url = port_forward_url(&server, &[]);
    let out = run_js(
        "portforward.js",
        &[&url, &port.to_string(), "query port", "--protocol", "ws"],
    )
    .await;
    assert_eq!(out["connections"][0]["data"], "query port", "{out}");
}

/// Sends a raw request and returns the status line and the rest of the response.
async fn raw(server: &Server, request: String) -> (String, String) {
    let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let (status, rest) = response.split_once("\r\n").unwrap_or((&response, ""));
    (status.to_string(), rest.to_string())
}

fn upgrade_request(path: &str, protocols: &[&str]) -> String {
    let mut req =
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n");
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    req
}

fn path_of(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    rest[rest.find('/').unwrap()..].to_string()
}

#[tokio::test]
async fn http_errors() {
    let server = start().await;
    let (status, body) = raw(
        &server,
        upgrade_request("/exec/0123", &["v4.channel.k8s.io"]),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(body.ends_with("404 page not found\n"));

    // Protocol negotiation failure: 403 listing what the server accepts.
    let path = path_of(&exec_url(&server, &["echo"], false, false));
    let (status, body) = raw(&server, upgrade_request(&path, &["v9.channel.k8s.io"])).await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert!(
        body.contains("X-Accepted-Stream-Protocol-Versions: v4.channel.k8s.io\r\n"),
        "{body}"
    );
    // ...and the token is spent.
    let (status, _) = raw(&server, upgrade_request(&path, &["v4.channel.k8s.io"])).await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    let path = path_of(&exec_url(&server, &["echo"], false, false));
    let (status, _) = raw(&server, upgrade_request(&path, &[])).await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");

    let path = path_of(&exec_url(&server, &["echo"], false, false));
    let (status, _) = raw(
        &server,
        format!("DELETE {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");

    let path = path_of(&port_forward_url(&server, &[]));
    let (status, _) = raw(&server, upgrade_request(&path, &["v4.channel.k8s.io"])).await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
}

#[tokio::test]
async fn requests_are_validated() {
    let server = start().await;
    let ok = ExecRequest {
        container_id: "c1".into(),
        cmd: vec!["sh".into()],
        stdout: true,
        ..Default::default()
    };
    let url = server.get_exec(&ok).unwrap().url;
    assert!(
        url.starts_with(&format!("http://{}/exec/", server.local_addr())),
        "{url}"
    );
    let bad = [
        ExecRequest {
            container_id: String::new(),
            ..ok.clone()
        },
        ExecRequest {
            cmd: vec![],
            ..ok.clone()
        },
        ExecRequest {
            tty: true,
            stderr: true,
            ..ok.clone()
        },
        ExecRequest {
            stdout: false,
            ..ok.clone()
        },
    ];
    for req in bad {
        let err = server.get_exec(&req).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{req:?}");
    }
    let err = server
        .get_attach(&AttachRequest {
            container_id: "c1".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = server
        .get_port_forward(&PortForwardRequest::default())
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_cancels_the_runtime_call() {
    let (server, cancelled) = start_with(Config {
        // The idle timeout also ends sessions nobody talks on.
        stream_idle_timeout: Duration::from_millis(500),
        ..Config::default()
    })
    .await;
    for protocol in ["spdy", "ws"] {
        cancelled.store(false, Ordering::SeqCst);
        let url = exec_url(&server, &["sleep"], false, false);
        let out = exec_js(&url, &["--protocol", protocol]).await;
        // The server dropped the idle connection: no status reached the client.
        assert_eq!(out["error"], "", "{protocol}: {out}");
        for _ in 0..50 {
            if cancelled.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let dropped = cancelled.load(Ordering::SeqCst);
        assert!(dropped, "{protocol}: exec future was not dropped");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn clients_that_open_no_streams_are_dropped() {
    let (server, _) = start_with(Config {
        stream_creation_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let path = path_of(&exec_url(&server, &["echo"], false, false));
    let (status, rest) = raw(&server, upgrade_request(&path, &["v4.channel.k8s.io"])).await;
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
    assert!(
        rest.contains("X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"),
        "{rest}"
    );
}
