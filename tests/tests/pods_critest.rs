//! The behaviours cri-tools' critest checks where the CRI leaves room and containerd and
//! CRI-O agree, each through cairnd's socket: pod hostnames, `run_as_group` without a
//! user, mount propagation both ways, and what `Status` advertises (read by an
//! independent client, PyPI's grpcio, as kubelet ≥ 1.30 and critest read it).

mod pods_common;

use std::path::{Path, PathBuf};

use cairn_proto::cri;
use cairn_tests::clients::{Authority, Client};
use pods_common::*;
use tonic::Code;

fn node_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test]
async fn pod_hostnames_are_the_asked_one_or_the_nodes() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    // Exactly the kernel's 64 bytes: taken.
    let longest = "h".repeat(64);
    let mut config = node.pod_config("longest");
    config.hostname = longest.clone();
    let pod = node.run_pod_with(&mut rt, config, "").await;
    let id = node.run(&mut rt, &pod, "c", &["sleep", "300"]).await;
    assert_eq!(exec_out(&mut rt, &id, &["hostname"]).await, longest);
    assert_eq!(
        exec_out(&mut rt, &id, &["cat", "/etc/hostname"]).await,
        longest
    );
    remove_pod(&mut rt, &pod).await;

    // None asked for: the node's, also in /etc/hostname and $HOSTNAME.
    let mut config = node.pod_config("unnamed");
    config.hostname.clear();
    let pod = node.run_pod_with(&mut rt, config, "").await;
    let id = node
        .run(
            &mut rt,
            &pod,
            "c",
            &["sh", "-c", "echo $HOSTNAME; sleep 300"],
        )
        .await;
    assert_eq!(exec_out(&mut rt, &id, &["hostname"]).await, node_hostname());
    assert_eq!(
        exec_out(&mut rt, &id, &["cat", "/etc/hostname"]).await,
        node_hostname()
    );
    remove_pod(&mut rt, &pod).await;

    // 65 bytes: InvalidArgument naming it, and nothing made.
    let mut config = node.pod_config("too-long");
    config.hostname = "h".repeat(65);
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(&"h".repeat(65)), "{err:?}");
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    assert_clean(&node);
}

#[tokio::test]
async fn run_as_group_without_a_user_is_refused() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "group").await;
    let mut c = node.container_config("grouped", &["sleep", "300"]);
    let sc = c
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default);
    sc.run_as_group = Some(cri::Int64Value { value: 1000 });
    let err = node.create(&mut rt, &pod, c.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("run_as_group"), "{err:?}");
    assert!(err.message().contains("grouped"), "{err:?}");
    // With the user it is for: runs as both.
    let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    sc.run_as_user = Some(cri::Int64Value { value: 1000 });
    let id = node.run_config(&mut rt, &pod, c).await;
    assert_eq!(exec_out(&mut rt, &id, &["id", "-u"]).await, "1000");
    assert_eq!(exec_out(&mut rt, &id, &["id", "-g"]).await, "1000");
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

/// A tmpfs on the host at a temp dir, made shared (or left private), unmounted on drop
/// with everything mounted under it.
struct HostMount {
    dir: tempfile::TempDir,
}

impl HostMount {
    fn new(shared: bool) -> HostMount {
        let dir = tempfile::tempdir().unwrap();
        run(&["mount", "-t", "tmpfs", "tmpfs"], dir.path());
        let guard = HostMount { dir };
        let mode = if shared {
            "--make-rshared"
        } else {
            "--make-rprivate"
        };
        run(&["mount", mode], guard.path());
        guard
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-R", "-l"])
            .arg(self.path())
            .status();
    }
}

fn run(args: &[&str], path: &Path) {
    let st = std::process::Command::new(args[0])
        .args(&args[1..])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "{args:?} {}", path.display());
}

fn host_mounted(path: &Path) -> bool {
    let want = path.display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

fn volume(host: &Path, container: &str, prop: cri::MountPropagation) -> cri::Mount {
    cri::Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        propagation: prop as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn bidirectional_and_host_to_container_mounts_propagate() {
    use cri::MountPropagation::*;
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let mut config = node.pod_config("propagation");
    config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = true;
    let pod = node.run_pod_with(&mut rt, config, "").await;
    let shared = HostMount::new(true);
    let both = shared.path().join("both");
    let down = shared.path().join("down");
    std::fs::create_dir_all(&both).unwrap();
    std::fs::create_dir_all(&down).unwrap();
    let mut c = node.container_config("mounter", &["sleep", "300"]);
    c.mounts = vec![
        volume(&both, "/both", PropagationBidirectional),
        volume(&down, "/down", PropagationHostToContainer),
    ];
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = node.run_config(&mut rt, &pod, c).await;

    // Made in the container under the bidirectional volume: seen on the host.
    let sh = |cmd: &str| vec!["sh".to_string(), "-c".to_string(), cmd.to_string()];
    let r = exec_cmd(
        &mut rt,
        &id,
        sh("mkdir -p /both/in && mount -t tmpfs inner /both/in && echo hi > /both/in/f"),
    )
    .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let from_container = both.join("in");
    if !host_mounted(&from_container) {
        let inside = exec_out(&mut rt, &id, &["cat", "/proc/self/mountinfo"]).await;
        let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        panic!("not propagated to the host; container:\n{inside}\nhost:\n{host}");
    }
    assert_eq!(
        std::fs::read_to_string(from_container.join("f")).unwrap(),
        "hi\n"
    );

    // Made on the host under either volume: seen in the container.
    for (dir, inside) in [(&both, "/both"), (&down, "/down")] {
        let target: PathBuf = dir.join("host");
        std::fs::create_dir_all(&target).unwrap();
        run(&["mount", "-t", "tmpfs", "hostmade"], &target);
        std::fs::write(target.join("g"), "from host\n").unwrap();
        let seen = exec_out(&mut rt, &id, &["cat", &format!("{inside}/host/g")]).await;
        assert_eq!(seen, "from host", "{inside}");
    }
    // Made in the container under the host-to-container volume: stays there.
    let r = exec_cmd(
        &mut rt,
        &id,
        sh("mkdir -p /down/in && mount -t tmpfs inner /down/in"),
    )
    .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(
        !host_mounted(&down.join("in")),
        "a host-to-container mount propagated up"
    );
    remove_pod(&mut rt, &pod).await;

    // A source on a private mount cannot propagate: refused, saying why.
    let private = HostMount::new(false);
    let pod = node.run_pod(&mut rt, "private").await;
    for prop in [PropagationBidirectional, PropagationHostToContainer] {
        let mut c = node.container_config("private", &["sleep", "300"]);
        c.mounts = vec![volume(private.path(), "/v", prop)];
        let err = node.create(&mut rt, &pod, c).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{prop:?}: {err:?}");
        assert!(err.message().contains("mount /v"), "{err:?}");
        assert!(err.message().contains("make-rshared"), "{err:?}");
    }
    remove_pod(&mut rt, &pod).await;
    drop(shared);
    assert_clean(&node);
}

#[tokio::test]
async fn a_shared_rootfs_leaks_no_mount_to_the_host() {
    use cri::MountPropagation::*;
    // The state dir (where the bundles and their rootfs are) on a shared mount, as /run
    // is under systemd: the container's own mounts must stay in its namespace.
    let node = Node::with_shared_state().await;
    let mut rt = node.rt().await;
    let shared = HostMount::new(true);
    let pod = node.run_pod(&mut rt, "leak").await;
    let mounts_in_state = || -> Vec<String> {
        let state = node.d.state().display().to_string();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
            .filter(|p| p.starts_with(&format!("{state}/")))
            .collect()
    };
    let before = mounts_in_state();
    let mut c = node.container_config("shared-root", &["sleep", "300"]);
    c.mounts = vec![volume(shared.path(), "/both", PropagationBidirectional)];
    let id = node.run_config(&mut rt, &pod, c).await;
    assert_eq!(
        exec_out(&mut rt, &id, &["cat", "/etc/hostname"]).await,
        "leak"
    );
    // Nothing of the container's (overlay, /proc, /dev, binds) reached the host, and the
    // detach of the old root took nothing of the host's with it.
    assert_eq!(mounts_in_state(), before);
    assert!(host_mounted(shared.path()));
    remove_pod(&mut rt, &pod).await;
    let left: Vec<String> = mounts_in_state()
        .into_iter()
        .filter(|p| p.contains("/pods/") || p.contains("/containers/"))
        .collect();
    assert!(left.is_empty(), "left: {left:?}");
}

#[tokio::test]
async fn a_passed_client_deadline_is_deadline_exceeded() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "deadline").await;
    let id = node.run(&mut rt, &pod, "c", &["sleep", "300"]).await;
    // No CRI timeout, a gRPC deadline of 300 ms (the `grpc-timeout` header critest's and
    // kubelet's contexts send), from a client that does not enforce it itself: the server
    // answers DEADLINE_EXCEEDED, as grpc-go servers do, not CANCELLED.
    let req = cri::ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec!["sleep".into(), "30".into()],
        timeout: 0,
    };
    let started = std::time::Instant::now();
    let (status, message) = raw_call(
        &node.d.socket(),
        "/runtime.v1.RuntimeService/ExecSync",
        &prost::Message::encode_to_vec(&req),
        Some("300m"),
    )
    .await;
    assert_eq!(status, Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("ExecSync"), "{message}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The command went with the call.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ps = exec_out(&mut rt, &id, &["ps", "-o", "args"]).await;
        if !ps.lines().any(|l| l.trim() == "sleep 30") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sleep 30 still runs: {ps}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

/// One unary gRPC call over a bare HTTP/2 connection (no `:authority`, `grpc-timeout` as
/// given and not enforced here); the `grpc-status` and `grpc-message` the server answers.
async fn raw_call(
    socket: &Path,
    path: &str,
    message: &[u8],
    grpc_timeout: Option<&str>,
) -> (i32, String) {
    let io = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (client, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = grpc_timeout {
        req = req.header("grpc-timeout", t);
    }
    let (response, mut body) = client.send_request(req.body(()).unwrap(), false).unwrap();
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    body.send_data(bytes::Bytes::from(frame), true).unwrap();
    let response = response.await.unwrap();
    let (head, mut body) = response.into_parts();
    // A trailers-only answer carries the status in the headers.
    let mut fields = head.headers;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if let Some(trailers) = body.trailers().await.unwrap() {
        fields.extend(trailers);
    }
    let status = fields
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    let message = fields
        .get("grpc-message")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    (status, message)
}

async fn exec_cmd(rt: &mut Rt, id: &str, cmd: Vec<String>) -> cri::ExecSyncResponse {
    rt.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd,
        timeout: 10,
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn status_advertises_handlers_and_features_to_an_independent_client() {
    let toml = "[runtimes.runc]\ntype = \"oci\"\npath = \"/usr/sbin/runc\"\n";
    let d = cairn_tests::Cairnd::start(toml).unwrap();
    let python = Client::python().unwrap();
    let status = python
        .call(
            &d.socket(),
            "v1",
            Authority::Default,
            "RuntimeService/Status",
            &serde_json::json!({"verbose": false}),
        )
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        status["features"]["supplemental_groups_policy"], true,
        "{status}"
    );
    let handlers = status["runtime_handlers"].as_array().unwrap();
    let features = |name: &str| {
        handlers
            .iter()
            .find(|h| h["name"] == name)
            .unwrap_or_else(|| panic!("no handler {name:?} in {status}"))["features"]
            .clone()
    };
    for builtin in ["", "cairn"] {
        let f = features(builtin);
        assert_eq!(f["user_namespaces"], true, "{builtin:?}: {f}");
        assert_eq!(f["recursive_read_only_mounts"], true, "{builtin:?}: {f}");
    }
    let runc = features("runc");
    assert_eq!(runc["user_namespaces"], false, "{runc}");
    assert_eq!(runc["recursive_read_only_mounts"], false, "{runc}");
    let conditions = status["status"]["conditions"].as_array().unwrap();
    assert!(conditions
        .iter()
        .any(|c| c["type"] == "RuntimeReady" && c["status"] == true));
}
