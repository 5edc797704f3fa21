//! What the pod tests (`pods*.rs`) share: a node (registry + cairnd + a pulled busybox
//! image), CRI helpers, and checks that nothing of a pod was left behind.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_proto::cri;
use cairn_tests::image::fixtures::busybox_base;
use cairn_tests::image::{push_image, ImageConfig, ImageSpec, Layer};
use cairn_tests::{Cairnd, Registry, RegistryOptions};
use tonic::transport::Channel;

pub type Rt = cri::runtime_service_client::RuntimeServiceClient<Channel>;

/// Applets the tests need beyond those of `busybox_base`.
const MORE_APPLETS: &[&str] = &[
    "tail", "seq", "kill", "pwd", "yes", "sed", "cut", "mkdir", "umount", "httpd", "date",
];

/// A registry with the test image, and a cairnd that pulled it.
pub struct Node {
    pub registry: Registry,
    pub d: Cairnd,
    pub image: String,
    pub logs: tempfile::TempDir,
    /// The cgroup parent of this node's pods (private to the test); whatever cairn left
    /// there is removed on drop, after the daemon and its processes are gone.
    pub cgroups: CgroupParentGuard,
}

/// The test image: busybox_base plus a layer with `/data/from-image.txt`, an executable
/// file `execve` refuses (`/data/not-a-program`: no ELF, no `#!`) and more applets.
pub fn test_image(config: ImageConfig) -> ImageSpec {
    let mut extra = Layer::new()
        .dir("data", 0o755)
        .file("data/from-image.txt", "image\n", 0o644)
        .file("data/not-a-program", "not a program\n", 0o755);
    for applet in MORE_APPLETS {
        extra = extra.symlink(&format!("bin/{applet}"), "busybox");
    }
    ImageSpec::new(vec![busybox_base().unwrap(), extra]).config(config)
}

impl Node {
    /// A node with the default image config and cairnd's default settings.
    pub async fn new() -> Node {
        Node::with(ImageConfig::default(), "").await
    }

    /// A node whose image has `config` and whose cairnd gets `extra_toml`.
    pub async fn with(config: ImageConfig, extra_toml: &str) -> Node {
        Node::on(config, Cairnd::start(extra_toml).unwrap()).await
    }

    /// A node whose cairnd keeps its state on a tmpfs made shared (`mount --make-rshared`),
    /// as under /run on a systemd host, where a mount leaking out of a container's mount
    /// namespace would show.
    pub async fn with_shared_state() -> Node {
        let d = Cairnd::start_with_tmpfs_state("256m", "").unwrap();
        let st = std::process::Command::new("mount")
            .arg("--make-rshared")
            .arg(d.state())
            .status()
            .unwrap();
        assert!(st.success(), "mount --make-rshared {}", d.state().display());
        Node::on(ImageConfig::default(), d).await
    }

    /// A node on a running cairnd, which pulls the test image with `config`.
    async fn on(config: ImageConfig, d: Cairnd) -> Node {
        let registry = Registry::start(RegistryOptions::plain()).unwrap();
        push_image(&registry, &test_image(config), "pods/busybox:1").unwrap();
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
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Node {
            registry,
            d,
            image,
            logs: tempfile::tempdir().unwrap(),
            cgroups: CgroupParentGuard(format!("/cairn-test-{}-{n}", std::process::id())),
        }
    }

    pub async fn rt(&self) -> Rt {
        self.d.runtime_client().await.unwrap()
    }

    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
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
            // kubelet's defaults: a pid namespace per container.
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroups.0.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `pod_config` with the pod's pid namespace mode.
    pub fn pod_config_pid(&self, name: &str, mode: cri::NamespaceMode) -> cri::PodSandboxConfig {
        let mut c = self.pod_config(name);
        let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
        sc.namespace_options.as_mut().unwrap().pid = mode as i32;
        c
    }

    /// The container's cgroup directory: in a v1 controller's hierarchy, or (on a pure
    /// cgroup v2 host) its one directory, whatever the controller.
    pub fn cgroup_dir(&self, controller: &str, id: &str) -> PathBuf {
        hierarchy_root(controller)
            .join(self.cgroups.0.trim_start_matches('/'))
            .join(id)
    }

    pub async fn run_pod(&self, rt: &mut Rt, name: &str) -> String {
        self.run_pod_with(rt, self.pod_config(name), "").await
    }

    pub async fn run_pod_with(
        &self,
        rt: &mut Rt,
        config: cri::PodSandboxConfig,
        handler: &str,
    ) -> String {
        rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id
    }

    pub fn container_config(&self, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
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

    pub async fn create(
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

    pub async fn run(&self, rt: &mut Rt, pod: &str, name: &str, cmd: &[&str]) -> String {
        self.run_config(rt, pod, self.container_config(name, cmd))
            .await
    }

    pub async fn run_config(&self, rt: &mut Rt, pod: &str, config: cri::ContainerConfig) -> String {
        let id = self.create(rt, pod, config).await.unwrap();
        start(rt, &id).await;
        id
    }

    pub fn log_of(&self, pod: &str, name: &str) -> PathBuf {
        self.logs.path().join(pod).join(format!("{name}.log"))
    }
}

pub async fn start(rt: &mut Rt, id: &str) {
    rt.start_container(cri::StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap();
}

pub async fn status(rt: &mut Rt, id: &str) -> cri::ContainerStatus {
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

pub async fn pod_status(rt: &mut Rt, id: &str) -> cri::PodSandboxStatus {
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

pub async fn wait_exited(rt: &mut Rt, id: &str) -> cri::ContainerStatus {
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

pub async fn exec(rt: &mut Rt, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
    rt.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 10,
    })
    .await
    .unwrap()
    .into_inner()
}

/// `exec` that must succeed; returns its stdout, trimmed.
pub async fn exec_out(rt: &mut Rt, id: &str, cmd: &[&str]) -> String {
    let r = exec(rt, id, cmd).await;
    assert_eq!(r.exit_code, 0, "{cmd:?}: {r:?}");
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

/// Refused creates left nothing: no container listed, no container run dir.
pub async fn assert_no_containers(rt: &mut Rt, node: &Node) {
    let containers = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "{containers:?}");
    assert!(entries(&node.d.state().join("containers")).is_empty());
}

pub async fn remove_pod(rt: &mut Rt, pod: &str) {
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

pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Entries of a directory (empty if it does not exist).
pub fn entries(dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// Pids of the `cairn-shim` processes serving pods under this daemon's state dir (and of
/// their forked children not yet exec'd, which carry the same command line).
pub fn shims_of(d: &Cairnd) -> Vec<i32> {
    let state = d.state().display().to_string();
    let mut out = Vec::new();
    for e in entries(Path::new("/proc")) {
        let Ok(pid) = e.to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_shim = args.first().is_some_and(|a| a.ends_with("cairn-shim"));
        if is_shim && args.iter().any(|a| a.starts_with(&state)) {
            out.push(pid);
        }
    }
    out
}

/// Nothing of the node's pods is left: no mounts under the daemon's dirs, no pod or
/// container run dirs, no cgroups under the node's cgroup parent, no shim process, only
/// the image's layers.
pub fn assert_clean(node: &Node) {
    let d = &node.d;
    assert!(
        mounts_under(d.dir()).is_empty(),
        "mounts left: {:?}",
        mounts_under(d.dir())
    );
    for sub in ["pods", "containers"] {
        let dir = d.state().join(sub);
        let left = entries(&dir);
        assert!(left.is_empty(), "{} still has {left:?}", dir.display());
    }
    let cgroups = cgroups_under(&node.cgroups.0);
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    assert!(shims_of(d).is_empty(), "shims left: {:?}", shims_of(d));
    let snapshots = entries(&d.root().join("snapshots"));
    assert_eq!(
        snapshots.len(),
        2,
        "only the image's two layers remain: {snapshots:?}"
    );
}

/// Removes cgroups a failed test may have left under `parent` (a private cgroup parent),
/// deepest first, and the parent itself. Used by tests' drop guards.
pub struct CgroupParentGuard(pub String);

impl Drop for CgroupParentGuard {
    fn drop(&mut self) {
        for root in hierarchy_roots() {
            let dir = root.join(self.0.trim_start_matches('/'));
            for child in entries(&dir) {
                let _ = std::fs::remove_dir(dir.join(child));
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Whether the host's `/sys/fs/cgroup` is a cgroup2 mount (pure v2, as production nodes
/// boot; the hybrid layout has a tmpfs there with a hierarchy per directory).
pub fn host_cgroup_v2() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup"))
        .is_some_and(|l| l.contains(" - cgroup2 "))
}

/// The root of the hierarchy that holds `controller`: `/sys/fs/cgroup` itself on pure v2.
pub fn hierarchy_root(controller: &str) -> PathBuf {
    match host_cgroup_v2() {
        true => PathBuf::from("/sys/fs/cgroup"),
        false => Path::new("/sys/fs/cgroup").join(controller),
    }
}

/// The root of every cgroup hierarchy: each directory under `/sys/fs/cgroup` on v1 and
/// hybrid hosts (the cgroup2 one among them), `/sys/fs/cgroup` itself on pure v2.
pub fn hierarchy_roots() -> Vec<PathBuf> {
    if host_cgroup_v2() {
        return vec![PathBuf::from("/sys/fs/cgroup")];
    }
    entries(Path::new("/sys/fs/cgroup"))
        .into_iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c))
        .collect()
}

/// Cgroup directories below `parent` (relative to the hierarchy roots) in every
/// hierarchy mounted under /sys/fs/cgroup.
pub fn cgroups_under(parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in hierarchy_roots() {
        let dir = root.join(parent.trim_start_matches('/'));
        for child in entries(&dir) {
            let p = dir.join(child);
            if p.is_dir() {
                out.push(p);
            }
        }
    }
    out
}

/// The pid of the pod's shim, from the verbose PodSandboxStatus.
pub async fn shim_pid(rt: &mut Rt, pod: &str) -> i32 {
    let resp = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    info["shimPid"].as_i64().unwrap() as i32
}

/// Whether the process is dead: gone, or a zombie waiting for whoever adopted it (on
/// this VM, pid 1 reaps adopted orphans only now and then).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

/// Waits up to 5 s for `pid` to be dead.
pub async fn assert_process_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
