//! CRI streaming through cairnd: `Exec`, `Attach` and `PortForward` return URLs of
//! cairnd's streaming server, and independent clients (npm `spdy-transport` and `ws`,
//! driven by the scripts in streaming/tests/js) use them as kubectl would through
//! kubelet: SPDY/3.1 and WebSocket, stdin, stdout, stderr, tty with resize, exit codes,
//! stdin_once, and a TCP connection into the pod's network namespace.
//!
//! Needs node and npm (Debian `nodejs npm`); the scripts' modules are installed with
//! `npm ci` on first use.

mod pods_common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use cairn_proto::cri;
use pods_common::*;
use serde_json::Value;
use tonic::Code;

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../streaming/tests/js")
}

/// Installs the clients' npm modules once per test binary.
fn npm_ci() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dir = js_dir();
        if dir.join("node_modules/ws").exists() && dir.join("node_modules/spdy-transport").exists()
        {
            return;
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("npm is needed (Debian: nodejs npm)");
        assert!(
            out.status.success(),
            "npm ci in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Runs a client script with `--json` and returns what it printed.
async fn client(script: &str, args: &[&str]) -> Value {
    npm_ci();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(js_dir().join(script)).args(args).arg("--json");
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("client timed out")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{script} {args:?}: {e}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

async fn exec_url(rt: &mut Rt, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> String {
    rt.exec(cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

async fn attach_url(rt: &mut Rt, id: &str, stdin: bool, output: bool) -> String {
    rt.attach(cri::AttachRequest {
        container_id: id.into(),
        stdin,
        tty: false,
        stdout: output,
        stderr: output,
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

/// The bytes `exec.js --stdin-bytes n` sends.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + (i >> 8)) & 0xff) as u8).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// No FIFO dir of a session is left in the container's bundle.
fn assert_no_sessions(node: &Node, id: &str) {
    let bundle = node.d.state().join("containers").join(id);
    let left: Vec<_> = entries(&bundle)
        .into_iter()
        .filter(|e| e.to_string_lossy().starts_with("io-"))
        .collect();
    assert!(
        left.is_empty(),
        "session dirs left in {}: {left:?}",
        bundle.display()
    );
}

#[tokio::test]
async fn exec_over_spdy_and_websocket_with_stdin_tty_and_exit_codes() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "exec").await;
    let c = node.run(&mut rt, &pod, "main", &["sleep", "300"]).await;

    let script = ["sh", "-c", "echo out; echo err >&2; exit 3"];
    for protocol in ["spdy", "ws"] {
        let url = exec_url(&mut rt, &c, &script, false, false).await;
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let r = client("exec.js", &[&url, "--protocol", protocol]).await;
        assert_eq!(text(&r, "stdout"), "out\n", "{protocol}: {r}");
        assert_eq!(text(&r, "stderr"), "err\n", "{protocol}: {r}");
        assert_eq!(r["exitCode"], 3, "{protocol}: {r}");
        // A URL is good for one session only.
        let again = client("exec.js", &[&url, "--protocol", protocol]).await;
        assert!(
            text(&again, "failed").contains("404"),
            "{protocol}: {again}"
        );
    }

    // stdin to end of file, through a big payload both ways.
    let n = 300_000;
    for protocol in ["spdy", "ws"] {
        let url = exec_url(&mut rt, &c, &["cat"], false, true).await;
        let r = client(
            "exec.js",
            &[
                &url,
                "--protocol",
                protocol,
                "--stdin-bytes",
                &n.to_string(),
            ],
        )
        .await;
        assert_eq!(r["stdoutLength"], n, "{protocol}: {r}");
        assert_eq!(
            text(&r, "stdoutSha256"),
            sha256_hex(&pattern(n)),
            "{protocol}"
        );
        assert_eq!(r["exitCode"], 0, "{protocol}: {r}");
    }

    // A terminal: the exec's own, sized by the client's resize.
    let url = exec_url(
        &mut rt,
        &c,
        &[
            "sh",
            "-c",
            "sleep 0.5; busybox stty size; test -t 0 && test -t 1 && echo on-a-tty",
        ],
        true,
        false,
    )
    .await;
    let r = client("exec.js", &[&url, "--tty", "--resize", "100x30"]).await;
    let out = text(&r, "stdout");
    assert!(out.contains("30 100"), "{r}");
    assert!(out.contains("on-a-tty\r\n"), "{r}");
    assert_eq!(r["exitCode"], 0, "{r}");

    // Input over a terminal; its end reaches the command as the terminal's end of file.
    let url = exec_url(&mut rt, &c, &["cat"], true, true).await;
    let r = client("exec.js", &[&url, "--tty", "--stdin-text", "typed\n"]).await;
    assert!(text(&r, "stdout").contains("typed\r\n"), "{r}");
    assert_eq!(r["exitCode"], 0, "{r}");

    // A client that goes away takes its exec with it.
    let url = exec_url(&mut rt, &c, &["sleep", "777"], false, false).await;
    let r = client("exec.js", &[&url, "--timeout", "1000"]).await;
    assert!(text(&r, "failed").contains("timed out"), "{r}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while exec_out(&mut rt, &c, &["ps"]).await.contains("sleep 777") {
        assert!(Instant::now() < deadline, "the exec outlived its client");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // So does an ExecSync whose caller gives up (kubelet's own deadline).
    let sync = rt.exec_sync(cri::ExecSyncRequest {
        container_id: c.clone(),
        cmd: vec!["sleep".into(), "778".into()],
        timeout: 0,
    });
    assert!(tokio::time::timeout(Duration::from_millis(1500), sync)
        .await
        .is_err());
    let deadline = Instant::now() + Duration::from_secs(10);
    while exec_out(&mut rt, &c, &["ps"]).await.contains("sleep 778") {
        assert!(
            Instant::now() < deadline,
            "the ExecSync outlived its caller"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A command that does not exist: the status says why.
    let url = exec_url(&mut rt, &c, &["no-such-command"], false, false).await;
    let r = client("exec.js", &[&url]).await;
    assert!(r.to_string().contains("no-such-command"), "{r}");

    assert_no_sessions(&node, &c);
    // The container itself was never disturbed.
    assert_eq!(
        status(&mut rt, &c).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

#[tokio::test]
async fn attach_with_stdin_once_and_with_stdin_kept_open() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "attach").await;

    // stdin_once: the first attach's end of input is the container's.
    let mut once = node.container_config("once", &["cat"]);
    once.stdin = true;
    once.stdin_once = true;
    let once = node.run_config(&mut rt, &pod, once).await;
    let url = attach_url(&mut rt, &once, true, true).await;
    let r = client("exec.js", &[&url, "--stdin-text", "hello\n"]).await;
    assert_eq!(text(&r, "stdout"), "hello\n", "{r}");
    let st = wait_exited(&mut rt, &once).await;
    assert_eq!(st.exit_code, 0);
    let log = std::fs::read_to_string(node.log_of("attach", "once")).unwrap();
    assert!(log.contains(" stdout F hello\n"), "{log}");

    // The same over a terminal: the end of the first attach's input is the terminal's
    // end of file.
    let mut tty = node.container_config("tty-once", &["cat"]);
    tty.stdin = true;
    tty.stdin_once = true;
    tty.tty = true;
    let tty = node.run_config(&mut rt, &pod, tty).await;
    let url = rt
        .attach(cri::AttachRequest {
            container_id: tty.clone(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let r = client("exec.js", &[&url, "--tty", "--stdin-text", "typed\n"]).await;
    assert!(text(&r, "stdout").contains("typed"), "{r}");
    let st = wait_exited(&mut rt, &tty).await;
    assert_eq!(st.exit_code, 0, "{st:?}");

    // Without stdin_once, the container's stdin stays open across attaches.
    let mut open = node.container_config(
        "open",
        &["sh", "-c", "while read l; do echo got $l; done; echo eof"],
    );
    open.stdin = true;
    let open = node.run_config(&mut rt, &pod, open).await;
    let log_path = node.log_of("attach", "open");
    for word in ["one", "two"] {
        let url = attach_url(&mut rt, &open, true, false).await;
        let input = format!("{word}\n");
        let r = client(
            "exec.js",
            &[&url, "--stdin-text", &input, "--no-stdout", "--no-stderr"],
        )
        .await;
        assert!(r.get("failed").is_none(), "{r}");
        wait_for_log(&log_path, &format!("got {word}")).await;
        assert_eq!(
            status(&mut rt, &open).await.state,
            cri::ContainerState::ContainerRunning as i32,
            "stdin closed after an attach without stdin_once"
        );
    }

    // Attaching stdin to a container created without it is refused.
    let plain = node.run(&mut rt, &pod, "plain", &["sleep", "300"]).await;
    let err = rt
        .attach(cri::AttachRequest {
            container_id: plain.clone(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(&plain), "{err:?}");

    for id in [&once, &tty, &open, &plain] {
        assert_no_sessions(&node, id);
    }
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

async fn wait_for_log(path: &std::path::Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} lacks {text:?}: {log}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bad_streaming_requests_get_clear_errors() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "bad").await;
    let c = node.run(&mut rt, &pod, "main", &["sleep", "300"]).await;
    let done = node.run(&mut rt, &pod, "done", &["true"]).await;
    wait_exited(&mut rt, &done).await;

    let exec = |id: &str, cmd: &[&str], tty: bool, stderr: bool| cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin: false,
        stdout: true,
        stderr,
    };
    let cases = [
        (exec("nosuch", &["true"], false, true), Code::NotFound),
        (
            exec(&done, &["true"], false, true),
            Code::FailedPrecondition,
        ),
        (exec(&c, &[], false, true), Code::InvalidArgument),
        (exec(&c, &["true"], true, true), Code::InvalidArgument),
    ];
    for (req, code) in cases {
        let err = rt.exec(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
    }
    let err = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "nosuch".into(),
            port: vec![80],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // A made-up token is not a session.
    let url = exec_url(&mut rt, &c, &["true"], false, false).await;
    let (base, _) = url.rsplit_once('/').unwrap();
    let r = client("exec.js", &[&format!("{base}/not-a-token")]).await;
    assert!(text(&r, "failed").contains("404"), "{r}");

    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

#[tokio::test]
async fn port_forward_reaches_the_pods_own_loopback() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "fwd").await;
    // An echo server on the pod's loopback only (its own network namespace).
    node.run(
        &mut rt,
        &pod,
        "echo",
        &["nc", "-ll", "-p", "8080", "-e", "cat"],
    )
    .await;
    let port = "8080";
    let url_for = |rt: &mut Rt| {
        let mut rt = rt.clone();
        let pod = pod.clone();
        async move {
            rt.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod,
                port: vec![8080],
            })
            .await
            .unwrap()
            .into_inner()
            .url
        }
    };
    // The listener may need a moment to come up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let url = url_for(&mut rt).await;
        let r = client(
            "portforward.js",
            &[
                &url,
                port,
                "ping",
                "--protocol",
                "spdy",
                "--connections",
                "2",
            ],
        )
        .await;
        let conns = r["connections"].as_array().cloned().unwrap_or_default();
        if conns.len() == 2 && conns.iter().all(|c| c["data"] == "ping") {
            break;
        }
        assert!(Instant::now() < deadline, "spdy port-forward: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = url_for(&mut rt).await;
    let r = client("portforward.js", &[&url, port, "pong", "--protocol", "ws"]).await;
    assert_eq!(r["connections"][0]["data"], "pong", "ws port-forward: {r}");

    // Nothing listens on another port: the client hears why on the error stream.
    let url = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8081],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let r = client("portforward.js", &[&url, "8081", "x", "--protocol", "spdy"]).await;
    let error = r["connections"][0]["error"].to_string();
    assert!(error.contains("8081"), "{r}");

    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}
