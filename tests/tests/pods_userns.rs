//! Pods with a user namespace (kubelet's `hostUsers: false`): container root is an
//! unprivileged host uid, the image's files show through idmapped layers with their own
//! owners, what the container writes lands in its upper dir under the mapped host ids,
//! host files stay out of its reach; bad mappings are refused and create nothing.

mod pods_common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cairn_proto::cri;
use pods_common::*;

/// The host ids of the tests' pods: container ids 0..65536 are host ids 100000..165536.
const HOST_BASE: u32 = 100_000;

fn map(host_id: u32, container_id: u32, length: u32) -> cri::IdMapping {
    cri::IdMapping {
        host_id,
        container_id,
        length,
    }
}

/// kubelet's request for a pod with `hostUsers: false`.
fn userns(uids: Vec<cri::IdMapping>, gids: Vec<cri::IdMapping>) -> cri::UserNamespace {
    cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids,
        gids,
    }
}

fn standard() -> cri::UserNamespace {
    userns(
        vec![map(HOST_BASE, 0, 65536)],
        vec![map(HOST_BASE, 0, 65536)],
    )
}

fn pod_with(node: &Node, name: &str, u: cri::UserNamespace) -> cri::PodSandboxConfig {
    let mut c = node.pod_config(name);
    let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    sc.namespace_options.as_mut().unwrap().userns_options = Some(u);
    c
}

/// A container config carrying the user namespace options, as kubelet sends them on every
/// CreateContainer of such a pod.
fn container_with(
    node: &Node,
    name: &str,
    cmd: &[&str],
    u: cri::UserNamespace,
) -> cri::ContainerConfig {
    let mut c = node.container_config(name, cmd);
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                userns_options: Some(u),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// Upper-dir copies of `rel` in the node's snapshots (the container's writable layer).
fn in_upper_dirs(node: &Node, rel: &str) -> Vec<PathBuf> {
    let snapshots = node.d.root().join("snapshots");
    entries(&snapshots)
        .into_iter()
        .map(|e| snapshots.join(e).join("fs").join(rel))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

/// A host dir with a root-only file, removed on drop.
struct HostDir(tempfile::TempDir);

impl HostDir {
    fn new() -> HostDir {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "host secret\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        HostDir(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

#[tokio::test]
async fn a_pod_with_a_user_namespace() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node
        .run_pod_with(&mut rt, pod_with(&node, "userns", standard()), "")
        .await;
    let pod_dir = node.d.state().join("pods").join(&pod);
    assert!(
        mounts_under(&pod_dir)
            .iter()
            .any(|m| m.ends_with("/ns/user")),
        "{:?}",
        mounts_under(&pod_dir)
    );

    // The container's own process: root inside, the pod's mappings.
    let show = "id; cat /proc/self/uid_map /proc/self/gid_map";
    let c = container_with(&node, "show", &["sh", "-c", show], standard());
    let id = node.run_config(&mut rt, &pod, c).await;
    let st = wait_exited(&mut rt, &id).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    let log = std::fs::read_to_string(node.log_of("userns", "show")).unwrap();
    assert!(log.contains("uid=0(root) gid=0(root)"), "{log}");
    let maps: Vec<Vec<&str>> = log
        .lines()
        .map(|l| {
            l.splitn(4, ' ')
                .nth(3)
                .unwrap_or("")
                .split_whitespace()
                .collect()
        })
        .filter(|f: &Vec<&str>| f.len() == 3 && f[0].parse::<u32>().is_ok())
        .collect();
    assert_eq!(maps, vec![vec!["0", "100000", "65536"]; 2], "{log}");

    // A running container, probed with exec (which joins the same user namespace).
    let host = HostDir::new();
    let mut c = container_with(&node, "app", &["sleep", "300"], standard());
    c.mounts = vec![cri::Mount {
        container_path: "/host".into(),
        host_path: host.path().display().to_string(),
        ..Default::default()
    }];
    let app = node.run_config(&mut rt, &pod, c).await;
    assert!(exec_out(&mut rt, &app, &["id"])
        .await
        .contains("uid=0(root)"));
    let uid_map = exec_out(&mut rt, &app, &["cat", "/proc/self/uid_map"]).await;
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"]
    );
    // Its cgroup (v1: the memory hierarchy; v2: the root of its namespace) is readable.
    let procs = exec_out(
        &mut rt,
        &app,
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/cgroup.procs 2>/dev/null || cat /sys/fs/cgroup/cgroup.procs",
        ],
    )
    .await;
    assert!(procs.lines().any(|l| l == "1"), "{procs:?}");

    // The image's files keep their owners as seen inside (idmapped layers).
    let owners = exec_out(
        &mut rt,
        &app,
        &[
            "ls",
            "-lnd",
            "/data/from-image.txt",
            "/bin/busybox",
            "/home/app",
            "/",
        ],
    )
    .await;
    // `ls` sorts its output: owners by path.
    let ids: std::collections::BTreeMap<&str, (&str, &str)> = owners
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[f.len() - 1], (f[2], f[3]))
        })
        .collect();
    let want = [
        ("/", ("0", "0")),
        ("/bin/busybox", ("0", "0")),
        ("/data/from-image.txt", ("0", "0")),
        ("/home/app", ("1000", "1000")),
    ];
    assert_eq!(ids, want.into_iter().collect(), "{owners}");

    // What it writes lands in its upper dir under the mapped host ids.
    exec_out(
        &mut rt,
        &app,
        &["sh", "-c", "echo hi > /data/written.txt && mkdir /made"],
    )
    .await;
    for rel in ["data/written.txt", "made"] {
        let found = in_upper_dirs(&node, rel);
        assert_eq!(found.len(), 1, "{rel}: {found:?}");
        let meta = found[0].symlink_metadata().unwrap();
        assert_eq!((meta.uid(), meta.gid()), (HOST_BASE, HOST_BASE), "{rel}");
    }
    // The copied-up /data dir too: no host root anywhere in the upper dir.
    let written = in_upper_dirs(&node, "data/written.txt");
    let data = written[0].parent().unwrap().metadata().unwrap();
    assert_eq!((data.uid(), data.gid()), (HOST_BASE, HOST_BASE));

    // Host files are out of reach: root's DAC override does not apply to ids outside the
    // mapping, which show as the overflow id.
    let r = exec(&mut rt, &app, &["cat", "/host/secret"]).await;
    assert_ne!(r.exit_code, 0, "read a host root-only file: {r:?}");
    let r = exec(&mut rt, &app, &["sh", "-c", "echo x > /host/new"]).await;
    assert_ne!(r.exit_code, 0, "wrote into a host root-owned dir: {r:?}");
    assert!(!host.path().join("new").exists());
    let listed = exec_out(&mut rt, &app, &["ls", "-ln", "/host/secret"]).await;
    let f: Vec<&str> = listed.split_whitespace().collect();
    assert_eq!((f[2], f[3]), ("65534", "65534"), "{listed}");

    // The container process itself runs as the mapped host uid.
    let pid = status_pid(&mut rt, &app).await;
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some("100000"),
        "{uid_line}"
    );

    // A pod sharing one pid namespace: its holder (pid 1) lives in the user namespace too.
    let mut config = pod_with(&node, "userns-pid", standard());
    let sc = config.linux.as_mut().unwrap().security_context.as_mut();
    sc.unwrap().namespace_options.as_mut().unwrap().pid = cri::NamespaceMode::Pod as i32;
    let shared = node.run_pod_with(&mut rt, config, "").await;
    let mut c = container_with(&node, "member", &["sleep", "300"], standard());
    let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    sc.namespace_options.as_mut().unwrap().pid = cri::NamespaceMode::Pod as i32;
    let member = node.run_config(&mut rt, &shared, c).await;
    let seen = exec_out(&mut rt, &member, &["sh", "-c", "cat /proc/1/comm; id -u"]).await;
    assert_eq!(seen, "pause\n0");
    let holder_uid = std::fs::read_to_string(format!(
        "/proc/{}/status",
        status_pid(&mut rt, &member).await
    ))
    .unwrap();
    assert!(holder_uid.contains("\nUid:\t100000\t"), "{holder_uid}");

    remove_pod(&mut rt, &shared).await;
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

/// The host pid of a running container, from its verbose status.
async fn status_pid(rt: &mut Rt, id: &str) -> i32 {
    let resp = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    info["pid"].as_i64().unwrap() as i32
}

fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) -> String {
    let status = r.expect_err(what);
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{what}: {status:?}"
    );
    status.message().to_string()
}

#[tokio::test]
async fn bad_user_namespace_input_is_refused_and_creates_nothing() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let ids = vec![map(HOST_BASE, 0, 65536)];
    let pod_cases = [
        (
            "overlapping uids",
            userns(
                vec![map(HOST_BASE, 0, 65536), map(300_000, 1000, 10)],
                ids.clone(),
            ),
            "overlap",
        ),
        (
            "overlapping host gids",
            userns(
                ids.clone(),
                vec![map(HOST_BASE, 0, 1000), map(HOST_BASE + 500, 5000, 10)],
            ),
            "overlap",
        ),
        (
            "no root",
            userns(vec![map(HOST_BASE, 1, 65535)], ids.clone()),
            "container id 0",
        ),
        (
            "empty length",
            userns(ids.clone(), vec![map(HOST_BASE, 0, 0)]),
            "length",
        ),
        (
            "mode CONTAINER",
            cri::UserNamespace {
                mode: cri::NamespaceMode::Container as i32,
                ..standard()
            },
            "CONTAINER",
        ),
    ];
    for (what, u, want) in pod_cases {
        let r = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_with(&node, "refused", u)),
                runtime_handler: String::new(),
            })
            .await;
        let msg = refused(r, what);
        assert!(msg.contains(want), "{what}: {msg}");
    }
    let mut host_net = pod_with(&node, "refused", standard());
    let sc = host_net
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    sc.namespace_options.as_mut().unwrap().network = cri::NamespaceMode::Node as i32;
    let r = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(host_net),
            runtime_handler: String::new(),
        })
        .await;
    assert!(refused(r, "host network").contains("network NODE"));
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    assert!(entries(&node.d.state().join("pods")).is_empty());

    // Containers must repeat their pod's mappings.
    let pod = node
        .run_pod_with(&mut rt, pod_with(&node, "mapped", standard()), "")
        .await;
    let container_cases = [
        (
            "other mappings",
            userns(vec![map(200_000, 0, 65536)], ids.clone()),
            "differ",
        ),
        (
            "mode NODE",
            cri::UserNamespace {
                mode: cri::NamespaceMode::Node as i32,
                ..Default::default()
            },
            "NODE",
        ),
        (
            "overlapping",
            userns(vec![map(HOST_BASE, 0, 65536), map(HOST_BASE, 1, 1)], ids),
            "overlap",
        ),
    ];
    for (what, u, want) in container_cases {
        let c = container_with(&node, "refused", &["true"], u);
        let msg = refused(node.create(&mut rt, &pod, c).await, what);
        assert!(msg.contains(want), "{what}: {msg}");
    }
    assert_no_containers(&mut rt, &node).await;

    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}
