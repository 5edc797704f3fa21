//! A real kubelet drives cairnd: kubelet v1.20.2, built from Debian's `kubernetes` source
//! package by tests/setup.sh, runs standalone (no API server: static pods from a manifest
//! dir, `--container-runtime=remote`, CRI v1alpha2 only, grpc-go sending the socket path as
//! `:authority`) against a private cairnd with Debian's CNI plugins. What the test checks
//! is what kubelet does and reports (on its read-only port's `/pods`):
//!
//! * a host-network pod runs and turns Ready;
//! * a CNI pod whose init container writes into an `emptyDir` that the main container
//!   serves over HTTP, with an HTTP readiness probe and an exec liveness probe that pass,
//!   and a hostPort that reaches it from the host;
//! * a container that exits non-zero is restarted with back-off, its exit code reported;
//! * container logs land where kubelet asks (`/var/log/pods/...`) in the CRI format;
//! * deleting the manifests makes kubelet stop and remove everything, and nothing of the
//!   pods is left behind (sandboxes, containers, shims, mounts, veths, IPs).
//!
//! kubelet changes some host settings at start (sysctls such as `kernel.panic`); the test
//! puts them back, and removes the files kubelet writes outside its root dir (its
//! device-plugin dir under /var/lib/kubelet, its pods' logs under /var/log).

mod pods_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::cri;
use cairn_tests::cni::Network;
use cairn_tests::image::ImageConfig;
use cairn_tests::net::PortmapChains;
use cairn_tests::util::{free_port, stop_child};
use pods_common::*;
use serde_json::{json, Value};

const KUBELET_VERSION: &str = "v1.20.2";

/// The kubelet binary: `$CAIRN_KUBELET`, else where tests/setup.sh builds it.
fn kubelet_bin() -> PathBuf {
    let path = std::env::var_os("CAIRN_KUBELET")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(format!(
                "/var/cache/cairn-tests/kubelet-{KUBELET_VERSION}/kubelet"
            ))
        });
    assert!(
        path.is_file(),
        "{} is missing: run tests/setup.sh (it builds kubelet {KUBELET_VERSION} from \
         Debian's kubernetes source package), or set CAIRN_KUBELET",
        path.display()
    );
    path
}

/// Host sysctls kubelet sets at start (`setupKernelTunables`), put back on drop.
const KUBELET_SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// A standalone kubelet on private dirs; stopped and cleaned up after on drop.
struct Kubelet {
    child: Option<Child>,
    dir: tempfile::TempDir,
    read_only_port: u16,
    namespace: String,
    sysctls: Vec<(PathBuf, String)>,
    /// Whether /var/lib/kubelet (where kubelet 1.20 makes its device-plugin dir whatever
    /// its root dir) was there before.
    lib_existed: bool,
}

const KUBELET_LIB: &str = "/var/lib/kubelet";

impl Kubelet {
    fn start(socket: &Path, namespace: &str) -> Kubelet {
        let bin = kubelet_bin();
        let dir = tempfile::Builder::new()
            .prefix("cairn-kubelet-")
            .tempdir()
            .unwrap();
        let sysctls = KUBELET_SYSCTLS
            .iter()
            .map(|s| Path::new("/proc/sys").join(s))
            .filter_map(|p| std::fs::read_to_string(&p).ok().map(|v| (p, v)))
            .collect();
        let read_only_port = free_port();
        let root = dir.path().join("root");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&manifests).unwrap();
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "staticPodPath": manifests,
            "fileCheckFrequency": "1s",
            "syncFrequency": "5s",
            "address": "127.0.0.1",
            "port": free_port(),
            "readOnlyPort": read_only_port,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "authentication": {"anonymous": {"enabled": true}, "webhook": {"enabled": false}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": false,
            "enforceNodeAllocatable": [],
            "failSwapOn": false,
            "makeIPTablesUtilChains": false,
            "volumePluginDir": root.join("volume-plugins"),
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%"
            },
            "runtimeRequestTimeout": "2m",
        });
        let config_path = dir.path().join("kubelet-config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("kubelet.log")).unwrap();
        let lib_existed = Path::new(KUBELET_LIB).exists();
        let endpoint = format!("unix://{}", socket.display());
        let child = Command::new(bin)
            .arg(format!("--config={}", config_path.display()))
            .arg("--container-runtime=remote")
            .arg(format!("--container-runtime-endpoint={endpoint}"))
            .arg(format!("--image-service-endpoint={endpoint}"))
            .arg(format!("--root-dir={}", root.display()))
            .arg(format!("--cert-dir={}", dir.path().join("pki").display()))
            .arg("--hostname-override=cairn-kubelet-test")
            .arg("--v=3")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Kubelet {
            child: Some(child),
            dir,
            read_only_port,
            namespace: namespace.to_string(),
            sysctls,
            lib_existed,
        }
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .join("manifests")
            .join(format!("{name}.json"))
    }

    /// Writes a static pod manifest (written under a temp name, then renamed, so kubelet
    /// never reads half of one).
    fn add_pod(&self, pod: &Value) {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let tmp = self.dir.path().join(format!("{name}.tmp"));
        std::fs::write(&tmp, pod.to_string()).unwrap();
        std::fs::rename(&tmp, self.manifest_path(name)).unwrap();
    }

    fn remove_pod(&self, name: &str) {
        std::fs::remove_file(self.manifest_path(name)).unwrap();
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("kubelet.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn assert_running(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!("kubelet exited with {status}:\n{}", self.log());
        }
    }

    /// kubelet's view of its pods (`/pods` on the read-only port), by pod name, for this
    /// test's namespace.
    fn pods(&mut self) -> Vec<Value> {
        self.assert_running();
        let Ok(body) = http_get(self.read_only_port, "/pods") else {
            return Vec::new();
        };
        let Ok(list) = serde_json::from_str::<Value>(&body) else {
            return Vec::new();
        };
        list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p["metadata"]["namespace"] == self.namespace.as_str())
            .collect()
    }

    /// Waits until `check` holds for the pod named `name` (static pods are named
    /// `<name>-<node>`), returning it.
    fn wait_pod(&mut self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        let full = format!("{name}-cairn-kubelet-test");
        loop {
            let pods = self.pods();
            if let Some(p) = pods.iter().find(|p| p["metadata"]["name"] == full.as_str()) {
                if check(p) {
                    return p.clone();
                }
                if Instant::now() > deadline {
                    panic!(
                        "pod {name}: {what} not seen in 120 s; status: {:#}\nkubelet log:\n{}",
                        p["status"],
                        self.log()
                    );
                }
            } else if Instant::now() > deadline {
                panic!("pod {name} never listed by kubelet:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(5));
        }
        // kubelet bind-mounts its root dir onto itself (rshared).
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(self.dir.path().join("root"))
            .status();
        for (path, value) in &self.sysctls {
            let _ = std::fs::write(path, value.trim());
        }
        if !self.lib_existed {
            let _ = std::fs::remove_dir_all(KUBELET_LIB);
        }
        // The log dirs and links kubelet made for this test's pods.
        let prefix = format!("{}_", self.namespace);
        remove_matching(Path::new("/var/log/pods"), |n| n.starts_with(&prefix));
        let infix = format!("_{}_", self.namespace);
        remove_matching(Path::new("/var/log/containers"), |n| n.contains(&infix));
    }
}

fn remove_matching(dir: &Path, keep: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if keep(&e.file_name().to_string_lossy()) {
            let path = e.path();
            if path.is_dir() && !path.is_symlink() {
                let _ = std::fs::remove_dir_all(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// An HTTP/1.0 GET on 127.0.0.1:port; the body.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other(format!("no HTTP response: {text:?}")));
    };
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        return Err(std::io::Error::other(format!("HTTP error: {head}")));
    }
    Ok(body.to_string())
}

fn condition(pod: &Value, kind: &str) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

fn container_status<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

/// The private CNI network (bridge, host-local IPAM, portmap for hostPorts), and the
/// portmap chains it adds, removed on drop.
struct KubeletNet {
    net: Network,
    _portmap: PortmapChains,
}

impl KubeletNet {
    fn new() -> KubeletNet {
        let net = Network::new("cairn-kubelet", "10.125");
        net.write_value(
            "10-kubelet.conflist",
            &net.list_with(vec![Network::portmap_plugin()]),
        );
        KubeletNet {
            net,
            _portmap: PortmapChains::take(),
        }
    }
}

fn pod_manifest(name: &str, namespace: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

#[tokio::test]
async fn kubelet_runs_probes_restarts_and_removes_static_pods() {
    let KubeletNet { net, _portmap } = KubeletNet::new();
    let node = Node::with(ImageConfig::default(), &net.toml()).await;
    let namespace = format!("kubelet-test-{}", std::process::id());
    let mut kubelet = Kubelet::start(&node.d.socket(), &namespace);
    let image = node.image.clone();
    let host_port = free_port();

    kubelet.add_pod(&pod_manifest(
        "hostnet",
        &namespace,
        json!({
            "hostNetwork": true,
            "containers": [{
                "name": "main",
                "image": image,
                "imagePullPolicy": "Always",
                "command": ["sh", "-c", "echo hostnet-up; exec sleep 3600"],
                "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
            }]
        }),
    ));
    kubelet.add_pod(&pod_manifest(
        "web",
        &namespace,
        json!({
            "volumes": [{"name": "www", "emptyDir": {}}],
            "initContainers": [{
                "name": "init",
                "image": image,
                "imagePullPolicy": "Always",
                "command": ["sh", "-c", "echo served-from-emptydir > /www/index.html"],
                "volumeMounts": [{"name": "www", "mountPath": "/www"}],
            }],
            "containers": [{
                "name": "server",
                "image": image,
                "imagePullPolicy": "Always",
                "command": ["sh", "-c", "echo server-starting; exec httpd -f -p 8080 -h /www"],
                "ports": [{"containerPort": 8080, "hostPort": host_port}],
                "readinessProbe": {
                    "httpGet": {"path": "/index.html", "port": 8080},
                    "periodSeconds": 1
                },
                "livenessProbe": {
                    "exec": {"command": ["cat", "/www/index.html"]},
                    "periodSeconds": 1
                },
                "volumeMounts": [{"name": "www", "mountPath": "/www"}],
            }]
        }),
    ));
    kubelet.add_pod(&pod_manifest(
        "crash",
        &namespace,
        json!({
            "restartPolicy": "Always",
            "containers": [{
                "name": "crasher",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "echo crash-$(date +%s); exit 3"],
            }]
        }),
    ));

    // The host-network pod: running, its liveness probe passing (Ready).
    let hostnet = kubelet.wait_pod("hostnet", "Ready", |p| condition(p, "Ready"));
    assert_eq!(hostnet["status"]["phase"], "Running", "{hostnet:#}");

    // The CNI pod: the init container ran to completion first, the server turned Ready
    // through its HTTP readiness probe, its liveness probe passes (no restarts).
    let web = kubelet.wait_pod("web", "Ready", |p| condition(p, "Ready"));
    let init = &web["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["exitCode"], 0, "{web:#}");
    assert_eq!(
        init["state"]["terminated"]["reason"], "Completed",
        "{web:#}"
    );
    let ip = web["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(ip.starts_with(&net.prefix()), "pod IP from CNI: {web:#}");
    // Through the hostPort, from the host.
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        match http_get(host_port, "/index.html") {
            Ok(body) => break body,
            Err(e) if Instant::now() > deadline => panic!("hostPort {host_port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert_eq!(served, "served-from-emptydir\n");
    std::thread::sleep(Duration::from_secs(3));
    let web = kubelet.wait_pod("web", "Ready", |p| condition(p, "Ready"));
    let server = container_status(&web, "server").unwrap();
    assert_eq!(server["restartCount"], 0, "liveness passed: {web:#}");
    assert_eq!(server["ready"], true);

    // The crash-looping container: restarted with back-off, its exit code reported.
    let crash = kubelet.wait_pod("crash", "a restart", |p| {
        container_status(p, "crasher").is_some_and(|c| c["restartCount"].as_u64() >= Some(1))
    });
    let crasher = container_status(&crash, "crasher").unwrap();
    let last = &crasher["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 3, "{crash:#}");
    assert_eq!(last["reason"], "Error", "{crash:#}");
    assert!(crash["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .is_some_and(|id| id.starts_with("cairn://")));

    // Logs where kubelet asks, in the CRI format.
    let uid = web["metadata"]["uid"].as_str().unwrap();
    let web_logs =
        Path::new("/var/log/pods").join(format!("{namespace}_web-cairn-kubelet-test_{uid}"));
    let server_log = std::fs::read_to_string(web_logs.join("server/0.log")).unwrap();
    assert!(
        server_log
            .lines()
            .any(|l| l.ends_with(" stdout F server-starting")),
        "{server_log}"
    );
    let crash_uid = crash["metadata"]["uid"].as_str().unwrap();
    // One file per attempt (`<restart count>.log`); kubelet keeps the last dead one.
    let crash_logs = Path::new("/var/log/pods")
        .join(format!("{namespace}_crash-cairn-kubelet-test_{crash_uid}"))
        .join("crasher");
    let logs: Vec<(String, String)> = std::fs::read_dir(&crash_logs)
        .unwrap()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(e.path()).unwrap_or_default())
        })
        .collect();
    assert!(
        logs.iter()
            .any(|(name, text)| name.ends_with(".log") && text.contains(" stdout F crash-")),
        "{logs:?}"
    );

    // The pods deleted: kubelet stops and removes them, cairn keeps nothing.
    for name in ["hostnet", "web", "crash"] {
        kubelet.remove_pod(name);
    }
    let mut rt = node.rt().await;
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let pods = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items;
        let containers = rt
            .list_containers(cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
        if pods.is_empty() && containers.is_empty() {
            break;
        }
        kubelet.assert_running();
        assert!(
            Instant::now() < deadline,
            "kubelet left {} pods and {} containers in cairn:\n{}",
            pods.len(),
            containers.len(),
            kubelet.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(kubelet.pods().is_empty());
    assert!(
        net.bridge.ports().is_empty(),
        "veths left: {:?}",
        net.bridge.ports()
    );
    assert!(
        net.allocated().is_empty(),
        "IPs left: {:?}",
        net.allocated()
    );
    assert_clean_but_images(&node);
    drop(kubelet);
}

/// `assert_clean`, except that the images kubelet pulled stay (kubelet's image GC is off).
fn assert_clean_but_images(node: &Node) {
    let d = &node.d;
    let mounts = mounts_under(d.dir());
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    for sub in ["pods", "containers"] {
        let left = entries(&d.state().join(sub));
        assert!(left.is_empty(), "{sub} still has {left:?}");
    }
    assert!(shims_of(d).is_empty(), "shims left: {:?}", shims_of(d));
}
