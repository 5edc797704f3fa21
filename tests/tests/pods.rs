//! Pods and containers end to end through cairnd's CRI socket: the lifecycle kubelet
//! drives, logs, exec, copy-on-write as a user sees it, restart survival, bad input, and
//! no leaks. Images come from a private registry built from busybox-static.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_proto::cri;
use cairn_tests::image::fixtures::busybox_base;
use cairn_tests::image::{push_image, ImageSpec, Layer};
use cairn_tests::{Cairnd, Registry, RegistryOptions};
use tonic::transport::Channel;
use tonic::Code;

type Rt = cri::runtime_service_client::RuntimeServiceClient<Channel>;

struct Node {
    _registry: Registry,
    d: Cairnd,
    image: String,
    logs: tempfile::TempDir,
}

impl Node {
    async fn new() -> Node {
        let registry = Registry::start(RegistryOptions::plain()).unwrap();
        let spec = ImageSpec::new(vec![
            busybox_base().unwrap(),
            Layer::new()
                .dir("data", 0o755)
                .file("data/from-image.txt", "image\n", 0o644),
        ]);
        push_image(&registry, &spec, "pods/busybox:1").unwrap();
        let d = Cairnd::start("").unwrap();
        let image = registry.reference("pods/busybox:1");
        let mut images = d.image_client().await.unwrap();
        images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        Node {
            _registry: registry,
            d,
            image,
            logs: tempfile::tempdir().unwrap(),
        }
    }

    async fn rt(&self) -> Rt {
        self.d.runtime_client().await.unwrap()
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "test".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.logs.path().join(name).display().to_string(),
            labels: HashMap::from([("app".to_string(), name.to_string())]),
            ..Default::default()
        }
    }

    async fn run_pod(&self, rt: &mut Rt, name: &str) -> String {
        rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(self.pod_config(name)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id
    }

    fn container_config(&self, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        }
    }

    async fn create(
        &self,
        rt: &mut Rt,
        pod: &str,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().container_id)
    }

    async fn run(&self, rt: &mut Rt, pod: &str, name: &str, cmd: &[&str]) -> String {
        let id = self
            .create(rt, pod, self.container_config(name, cmd))
            .await
            .unwrap();
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        id
    }

    fn log_of(&self, pod: &str, name: &str) -> PathBuf {
        self.logs.path().join(pod).join(format!("{name}.log"))
    }
}

async fn status(rt: &mut Rt, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

async fn wait_exited(rt: &mut Rt, id: &str) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(rt, id).await;
        if st.state == cri::ContainerState::ContainerExited as i32 {
            return st;
        }
        assert!(Instant::now() < deadline, "container {id} did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn exec(rt: &mut Rt, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
    rt.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 10,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn remove_pod(rt: &mut Rt, pod: &str) {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap();
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Nothing of the pod is left: no mounts under the daemon's dirs, no pod or container
/// run dirs, no cgroups of the containers, no shim process.
fn assert_clean(d: &Cairnd, containers: &[String]) {
    assert!(
        mounts_under(d.dir()).is_empty(),
        "mounts left: {:?}",
        mounts_under(d.dir())
    );
    for sub in ["pods", "containers"] {
        let dir = d.state().join(sub);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{} still has {left:?}", dir.display());
    }
    for id in containers {
        for ctrl in ["memory", "pids", "cpu"] {
            let p = PathBuf::from(format!("/sys/fs/cgroup/{ctrl}/cairn/{id}"));
            assert!(!p.exists(), "cgroup {} left", p.display());
        }
    }
    let snapshots: Vec<_> = std::fs::read_dir(d.root().join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        snapshots.len(),
        2,
        "only the image's two layers remain: {snapshots:?}"
    );
}

#[tokio::test]
async fn a_container_runs_logs_exits_and_is_removed() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "life").await;

    let id = node
        .run(
            &mut rt,
            &pod,
            "hello",
            &[
                "sh",
                "-c",
                "echo out-line; echo err-line >&2; printf partial; exit 3",
            ],
        )
        .await;
    let st = wait_exited(&mut rt, &id).await;
    assert_eq!(st.exit_code, 3);
    assert_eq!(st.reason, "Error");
    assert!(st.started_at > 0 && st.finished_at >= st.started_at);
    assert_eq!(
        st.log_path,
        node.log_of("life", "hello").display().to_string()
    );

    // CRI log format.
    let log = std::fs::read_to_string(node.log_of("life", "hello")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F out-line")),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stderr F err-line")),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout P partial")),
        "{log}"
    );
    for l in &lines {
        let ts = l.split(' ').next().unwrap();
        assert!(ts.ends_with('Z') && ts.contains('T'), "{l}");
    }

    // A zero exit is Completed.
    let ok = node.run(&mut rt, &pod, "ok", &["true"]).await;
    let st = wait_exited(&mut rt, &ok).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));

    // Lists with filters.
    let all = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(all.len(), 2);
    let by_pod = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerExited as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(by_pod.len(), 2);
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: HashMap::from([("app".to_string(), "life".to_string())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);

    // Remove is idempotent.
    for _ in 0..2 {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    }
    let err = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    remove_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node.d, &[id, ok]);
}

#[tokio::test]
async fn exec_sync_stop_with_grace_and_namespaces() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "execpod").await;
    // PID 1 of a pid namespace has no default signal actions: the shell exits on TERM
    // because it traps it.
    let id = node
        .run(
            &mut rt,
            &pod,
            "sleeper",
            &["sh", "-c", "trap 'exit 143' TERM; sleep 300 & wait"],
        )
        .await;
    assert_eq!(
        status(&mut rt, &id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    let r = exec(
        &mut rt,
        &id,
        &["sh", "-c", "echo $(hostname); echo oops >&2; exit 4"],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "execpod");
    assert_eq!(String::from_utf8_lossy(&r.stderr).trim(), "oops");
    assert_eq!(r.exit_code, 4);
    // Same pid namespace as the container: its pid 1 is the shell.
    let r = exec(&mut rt, &id, &["cat", "/proc/1/cmdline"]).await;
    assert!(
        String::from_utf8_lossy(&r.stdout).starts_with("sh"),
        "{r:?}"
    );
    // A timeout kills the command.
    let started = Instant::now();
    let err = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Two containers of one pod share the network: one listens, the other connects.
    let server = node
        .run(
            &mut rt,
            &pod,
            "server",
            &["sh", "-c", "echo pong | nc -l -p 7777"],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = exec(&mut rt, &id, &["sh", "-c", "nc 127.0.0.1 7777 </dev/null"]).await;
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "pong", "{r:?}");

    // Stop: SIGTERM ends it within the grace period.
    let started = Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let st = status(&mut rt, &id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 128 + 15);
    // Stopping again is fine.
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .unwrap();

    // A shell that traps SIGTERM is killed after the grace period.
    let stubborn = node
        .run(
            &mut rt,
            &pod,
            "stubborn",
            &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: stubborn.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(status(&mut rt, &stubborn).await.exit_code, 137);

    remove_pod(&mut rt, &pod).await;
    assert_clean(&node.d, &[id, server, stubborn]);
}

#[tokio::test]
async fn copy_on_write_as_a_user_sees_it() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "cow").await;
    let volume = tempfile::tempdir().unwrap();
    let with_volume = |name: &str| {
        let mut c = node.container_config(name, &["sleep", "300"]);
        c.mounts = vec![cri::Mount {
            container_path: "/vol".into(),
            host_path: volume.path().display().to_string(),
            ..Default::default()
        }];
        c
    };
    let a = node.create(&mut rt, &pod, with_volume("a")).await.unwrap();
    let b = node.create(&mut rt, &pod, with_volume("b")).await.unwrap();
    for id in [&a, &b] {
        rt.start_container(cri::StartContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    // Written in one, not seen in the other.
    exec(&mut rt, &a, &["sh", "-c", "echo mine > /data/new.txt"]).await;
    let r = exec(&mut rt, &b, &["cat", "/data/new.txt"]).await;
    assert_ne!(r.exit_code, 0);
    // Changing an image file copies it up; the image layer is untouched.
    exec(
        &mut rt,
        &a,
        &["sh", "-c", "echo changed > /data/from-image.txt"],
    )
    .await;
    let r = exec(&mut rt, &b, &["cat", "/data/from-image.txt"]).await;
    assert_eq!(String::from_utf8_lossy(&r.stdout), "image\n");
    // Deleting an image file hides it in that container only.
    exec(&mut rt, &a, &["busybox", "rm", "/bin/wc"]).await;
    assert_ne!(
        exec(&mut rt, &a, &["test", "-e", "/bin/wc"])
            .await
            .exit_code,
        0
    );
    assert_eq!(
        exec(&mut rt, &b, &["test", "-e", "/bin/wc"])
            .await
            .exit_code,
        0
    );
    // The volume is shared and outlives the container.
    exec(&mut rt, &a, &["sh", "-c", "echo kept > /vol/data.txt"]).await;
    assert_eq!(
        String::from_utf8_lossy(&exec(&mut rt, &b, &["cat", "/vol/data.txt"]).await.stdout),
        "kept\n"
    );
    // The writable layer has a size; removing the container discards it.
    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: a.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.writable_layer.unwrap().used_bytes.unwrap().value > 0);
    assert!(stats.memory.unwrap().working_set_bytes.is_some());
    rt.stop_container(cri::StopContainerRequest {
        container_id: a.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: a.clone(),
    })
    .await
    .unwrap();
    let a2 = node
        .create(&mut rt, &pod, {
            let mut c = with_volume("a");
            c.metadata.as_mut().unwrap().attempt = 1;
            c
        })
        .await
        .unwrap();
    rt.start_container(cri::StartContainerRequest {
        container_id: a2.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        exec(&mut rt, &a2, &["test", "-e", "/data/new.txt"])
            .await
            .exit_code,
        1
    );
    assert_eq!(
        String::from_utf8_lossy(&exec(&mut rt, &a2, &["cat", "/vol/data.txt"]).await.stdout),
        "kept\n"
    );
    assert_eq!(
        std::fs::read_to_string(volume.path().join("data.txt")).unwrap(),
        "kept\n"
    );
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node.d, &[a, b, a2]);
}

#[tokio::test]
async fn bad_input_is_refused_and_leaves_nothing() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "bad").await;

    // Name reuse.
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(node.pod_config("bad")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // Unknown pod and container.
    let err = node
        .create(&mut rt, "nosuchpod", node.container_config("x", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = rt
        .start_container(cri::StartContainerRequest {
            container_id: "nosuch".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "nosuch".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Image not present.
    let mut c = node.container_config("noimage", &["true"]);
    c.image.as_mut().unwrap().image = "127.0.0.1:1/not/pulled:1".into();
    let err = node.create(&mut rt, &pod, c).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("not/pulled"), "{}", err.message());

    // A command not in the image: create works, start fails naming it.
    let id = node
        .create(
            &mut rt,
            &pod,
            node.container_config("nocmd", &["/no/such/binary"]),
        )
        .await
        .unwrap();
    let err = rt
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("/no/such/binary"),
        "{}",
        err.message()
    );
    let st = status(&mut rt, &id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.reason, "StartError");
    assert!(st.message.contains("/no/such/binary"));

    // Invalid resources.
    let mut c = node.container_config("badres", &["true"]);
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_period: 5,
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = node.create(&mut rt, &pod, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A container in a stopped pod.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let err = node
        .create(&mut rt, &pod, node.container_config("late", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let left = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    assert_clean(&node.d, &[id]);
}

#[tokio::test]
async fn containers_survive_a_daemon_kill_9() {
    let mut node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "survivor").await;
    let long = node.run(&mut rt, &pod, "long", &["sleep", "300"]).await;
    let short = node
        .run(
            &mut rt,
            &pod,
            "short",
            &["sh", "-c", "sleep 2; echo done; exit 7"],
        )
        .await;
    let pid_before = exec(&mut rt, &long, &["cat", "/proc/1/stat"]).await.stdout;

    node.d.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await; // "short" exits meanwhile
    node.d.restart().unwrap();
    let mut rt = node.rt().await;

    let st = status(&mut rt, &long).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    // The very same process.
    assert_eq!(
        exec(&mut rt, &long, &["cat", "/proc/1/stat"]).await.stdout,
        pid_before
    );
    let st = wait_exited(&mut rt, &short).await;
    assert_eq!(st.exit_code, 7);
    assert!(st.finished_at > st.started_at);
    let log = std::fs::read_to_string(node.log_of("survivor", "short")).unwrap();
    assert!(log.contains(" stdout F done"), "{log}");

    remove_pod(&mut rt, &pod).await;
    assert_clean(&node.d, &[long, short]);
}
