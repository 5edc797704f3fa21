//! Unit tests of the lifecycle over a fake machine ([`fake_host::FakeHost`]): real
//! records, a real image store and snapshotter in a temp dir, the real ttrpc Task API,
//! and an in-process shim that records what it is asked and fails when told. They check
//! what kubelet relies on: validation before anything is made, cleanup on failure
//! (nothing recorded, no layer, no bundle, the name free again), idempotent stop and
//! remove, and what a lost shim leaves. No root needed.

mod fake_host;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_proto::cri;
use cairn_snapshotter::image::{ImageService, ImageServiceConfig};
use cairn_snapshotter::manifest::Platform;
use cairn_snapshotter::registry::RegistrySettings;
use cairn_snapshotter::store::SnapshotKind;
use containerd_shim_protos::ttrpc;
use sha2::{Digest, Sha256};

use super::Runtime;
use crate::cni::CniConfig;
use crate::error::Code;
use fake_host::FakeHost;

const IMAGE: &str = "registry.test/unit/app:1";

/// A runtime on a fake machine, its store and state in a temp dir.
struct Node {
    rt: Arc<Runtime>,
    host: Arc<FakeHost>,
    dir: tempfile::TempDir,
}

impl Node {
    async fn new() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let images = ImageService::open(ImageServiceConfig {
            root: dir.path().join("root"),
            platform: Platform::host(),
            max_concurrent_downloads: 1,
            registries: RegistrySettings::default(),
        })
        .expect("image store");
        let layout = write_image_layout(&dir.path().join("layout"));
        images
            .import(&layout, Some(IMAGE))
            .await
            .expect("importing the test image");
        let host = Arc::new(FakeHost::default());
        let mut cni = CniConfig::new(dir.path().join("cni"));
        cni.conf_dirs = vec![dir.path().join("net.d")];
        let rt = Runtime::on_host(
            images,
            &dir.path().join("state"),
            BTreeMap::new(),
            cni,
            host.clone(),
            None,
        )
        .expect("runtime");
        Node { rt, host, dir }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    async fn pod(&self, name: &str) -> String {
        self.rt
            .run_pod(pod_config(name), String::new())
            .await
            .expect("RunPodSandbox")
    }

    /// Writable layers in the snapshotter.
    fn writable_layers(&self) -> Vec<String> {
        self.rt
            .images
            .snapshotter()
            .list()
            .expect("snapshots")
            .into_iter()
            .filter(|s| s.kind == SnapshotKind::Active)
            .map(|s| s.key)
            .collect()
    }

    /// Entries of a dir of the state dir ("pods", "containers").
    fn entries(&self, sub: &str) -> Vec<String> {
        std::fs::read_dir(self.state().join(sub))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Nothing of any container is left: no record, no layer, no bundle.
    fn assert_no_container(&self) {
        assert_eq!(self.rt.containers().expect("containers").len(), 0);
        assert_eq!(self.writable_layers(), Vec::<String>::new());
        assert_eq!(self.entries("containers"), Vec::<String>::new());
    }
}

fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "unit".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: "unit-pod".into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["/bin/app".into()],
        ..Default::default()
    }
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An OCI layout with one image: a layer with /bin/app and /etc/passwd, owned by the
/// test's own user (so that unpacking needs no root).
fn write_image_layout(dir: &Path) -> PathBuf {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout dir");
    let put = |data: &[u8]| {
        let d = sha256(data);
        std::fs::write(blobs.join(&d), data).expect("blob");
        (format!("sha256:{d}"), data.len())
    };
    let layer = layer_tar();
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::json!({
        "architecture": Platform::host().architecture,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/app"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    dir.to_path_buf()
}

fn layer_tar() -> Vec<u8> {
    let uid = u64::from(nix::unistd::geteuid().as_raw());
    let gid = u64::from(nix::unistd::getegid().as_raw());
    let mut b = tar::Builder::new(Vec::new());
    let mut entry = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, path, data).expect("tar entry");
    };
    entry("bin/", tar::EntryType::Directory, 0o755, b"");
    entry("bin/app", tar::EntryType::Regular, 0o755, b"#!/bin/sh\n");
    entry("etc/", tar::EntryType::Directory, 0o755, b"");
    entry(
        "etc/passwd",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n",
    );
    b.into_inner().expect("tar")
}

fn is_code(e: &crate::error::Error, code: Code) -> bool {
    e.code() == code
}

#[tokio::test]
async fn a_pod_gets_a_shim_with_its_namespaces_and_id_maps() {
    let node = Node::new().await;
    let mut config = pod_config("userns");
    let linux = config.linux.get_or_insert_with(Default::default);
    let opts = linux
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default);
    // A pod network (no CNI config here: loopback only), as user namespaces need.
    opts.network = cri::NamespaceMode::Pod as i32;
    opts.pid = cri::NamespaceMode::Pod as i32;
    opts.userns_options = Some(cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids: vec![cri::IdMapping {
            container_id: 0,
            host_id: 100_000,
            length: 65_536,
        }],
        gids: vec![cri::IdMapping {
            container_id: 0,
            host_id: 200_000,
            length: 65_536,
        }],
    });
    let id = node
        .rt
        .run_pod(config, String::new())
        .await
        .expect("RunPodSandbox");
    let pod = node.rt.pod(&id).expect("the pod's record");
    assert!(pod.ready);
    let dir = pod.dir.display().to_string();
    assert_eq!(
        node.host.calls_of("start_shim"),
        vec![format!(
            "start_shim {id} {dir} unit-pod --share-pid \
             --uid-map 0:100000:65536 --gid-map 0:200000:65536"
        )]
    );
    assert!(
        pod.dir.join("hostname").is_file(),
        "the pod's files are written"
    );
}

#[tokio::test]
async fn a_too_long_hostname_is_refused_before_anything_is_made() {
    let node = Node::new().await;
    let mut config = pod_config("long");
    config.hostname = "h".repeat(65);
    let e = node
        .rt
        .run_pod(config, String::new())
        .await
        .expect_err("a 65-byte hostname");
    assert!(is_code(&e, Code::InvalidArgument), "{e:?}");
    assert!(e.message().contains("hostname"), "{}", e.message());
    assert_eq!(node.host.calls(), Vec::<String>::new());
    assert_eq!(node.rt.pods().expect("pods").len(), 0);
    assert_eq!(node.entries("pods"), Vec::<String>::new());
}

#[tokio::test]
async fn a_shim_that_does_not_start_leaves_no_pod_and_the_name_free() {
    let node = Node::new().await;
    node.host.shims_fail(Some("no such binary"));
    let e = node
        .rt
        .run_pod(pod_config("web"), String::new())
        .await
        .expect_err("the shim fails");
    assert!(is_code(&e, Code::Internal), "{e:?}");
    assert!(e.message().contains("no such binary"), "{}", e.message());
    assert_eq!(node.rt.pods().expect("pods").len(), 0);
    assert_eq!(node.entries("pods"), Vec::<String>::new());
    node.host.shims_fail(None);
    node.pod("web").await;
    assert_eq!(node.rt.pods().expect("pods").len(), 1);
}

#[tokio::test]
async fn a_shim_that_started_but_does_not_answer_is_killed_and_nothing_is_left() {
    let node = Node::new().await;
    node.host.connects_fail(true);
    let e = node
        .rt
        .run_pod(pod_config("web"), String::new())
        .await
        .expect_err("the shim does not answer");
    assert!(is_code(&e, Code::Unavailable), "{e:?}");
    let calls = node.host.calls();
    assert!(calls.contains(&"kill_shim".to_string()), "{calls:?}");
    assert_eq!(node.host.running_shims(), 0);
    assert_eq!(node.rt.pods().expect("pods").len(), 0);
    assert_eq!(node.entries("pods"), Vec::<String>::new());
    node.host.connects_fail(false);
    node.pod("web").await;
}

#[tokio::test]
async fn create_refuses_bad_configs_before_the_shim_is_asked() {
    let node = Node::new().await;
    let pod = node.pod("p").await;
    let mut no_meta = container_config("c");
    no_meta.metadata = None;
    let mut no_image = container_config("c");
    no_image.image = None;
    let mut unknown_image = container_config("c");
    unknown_image.image = Some(cri::ImageSpec {
        image: "registry.test/unit/absent:1".into(),
        ..Default::default()
    });
    let mut group_without_user = container_config("c");
    group_without_user.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 5 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let cases = [
        (no_meta, Code::InvalidArgument, "metadata"),
        (no_image, Code::InvalidArgument, "image is required"),
        (unknown_image, Code::NotFound, "registry.test/unit/absent:1"),
        (group_without_user, Code::InvalidArgument, "run_as_group"),
    ];
    for (config, code, says) in cases {
        let e = node
            .rt
            .create_container(&pod, config)
            .await
            .expect_err(says);
        assert!(is_code(&e, code), "{says}: {e:?}");
        assert!(e.message().contains(says), "{says}: {}", e.message());
        node.assert_no_container();
    }
    assert_eq!(node.host.calls_of("create"), Vec::<String>::new());
}

#[tokio::test]
async fn a_create_the_shim_refuses_leaves_nothing_and_the_name_can_be_reused() {
    let node = Node::new().await;
    let pod = node.pod("p").await;
    node.host.fail_next("create", ttrpc::Code::INVALID_ARGUMENT);
    let e = node
        .rt
        .create_container(&pod, container_config("app"))
        .await
        .expect_err("the shim refuses");
    assert!(is_code(&e, Code::InvalidArgument), "{e:?}");
    assert!(
        e.message().contains("creating container"),
        "{}",
        e.message()
    );
    let created = node.host.calls_of("create ");
    assert_eq!(created.len(), 1);
    let id = created[0].trim_start_matches("create ").to_string();
    // The shim is told to forget it, and everything cairnd made is gone.
    let calls = node.host.calls();
    assert!(calls.contains(&format!("kill {id} 9")), "{calls:?}");
    assert!(calls.contains(&format!("delete {id}")), "{calls:?}");
    node.assert_no_container();
    // kubelet's retry with the same name and attempt works.
    let id2 = node
        .rt
        .create_container(&pod, container_config("app"))
        .await
        .expect("the retry");
    let c = node.rt.container(&id2).expect("its record");
    assert_eq!(c.state, cri::ContainerState::ContainerCreated as i32);
    assert_eq!(node.writable_layers(), vec![id2.clone()]);
    assert_eq!(node.entries("containers"), vec![id2]);
}

#[tokio::test]
async fn the_same_name_and_attempt_twice_is_already_exists() {
    let node = Node::new().await;
    let pod = node.pod("p").await;
    let first = node
        .rt
        .create_container(&pod, container_config("app"))
        .await
        .expect("first");
    let e = node
        .rt
        .create_container(&pod, container_config("app"))
        .await
        .expect_err("second");
    assert!(is_code(&e, Code::AlreadyExists), "{e:?}");
    assert!(e.message().contains(&first), "{}", e.message());
    assert_eq!(node.rt.containers().expect("containers").len(), 1);
    assert_eq!(node.writable_layers(), vec![first]);
}

#[tokio::test]
async fn a_failed_start_is_recorded_as_start_error() {
    let node = Node::new().await;
    let pod = node.pod("p").await;
    let id = node
        .rt
        .create_container(&pod, container_config("app"))
        .await
        .expect("create");
    node.host
        .fail_next("start", ttrpc::Code::FAILED_PRECONDITION);
    let e = node.rt.start_container(&id).await.expect_err("start fails");
    assert!(is_code(&e, Code::FailedPrecondition), "{e:?}");
    let c = node.rt.container(&id).expect("record kept");
    assert_eq!(c.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(c.reason, "StartError");
    assert_eq!(c.exit_code, 128);
    assert!(c.message.contains("start failed"), "{}", c.message);
    // Starting it again is refused: it is not in the created state.
    let again = node.rt.start_container(&id).await.expect_err("again");
    assert!(is_code(&again, Code::FailedPrecondition), "{again:?}");
}

#[tokio::test]
async fn stop_and_remove_are_idempotent() {
    let node = Node::new().await;
    let unknown = "0".repeat(64);
    node.rt
        .stop_container(&unknown, 0)
        .await
        .expect("stop unknown");
    node.rt
        .remove_container(&unknown)
        .await
        .expect("remove unknown");
    node.rt.stop_pod(&unknown).await.expect("stop unknown pod");
    node.rt
        .remove_pod(&unknown)
        .await
        .expect("remove unknown pod");
    let pod = node.pod("p").await;
    let id = node
        .rt
        .create_container(&pod, container_config("app"))
        .await
        .expect("create");
    node.rt.start_container(&id).await.expect("start");
    node.rt.stop_container(&id, 0).await.expect("stop");
    let c = node.rt.container(&id).expect("record");
    assert_eq!(c.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(c.exit_code, 137);
    let kills = node.host.calls_of("kill ");
    node.rt.stop_container(&id, 0).await.expect("stop again");
    assert_eq!(
        node.host.calls_of("kill "),
        kills,
        "a stopped container is not killed again"
    );
    node.rt.remove_container(&id).await.expect("remove");
    node.rt.remove_container(&id).await.expect("remove again");
    node.assert_no_container();
}

#[tokio::test]
async fn removing_a_pod_removes_its_containers_its_dir_and_its_shim() {
    let node = Node::new().await;
    let pod = node.pod("p").await;
    let running = node
        .rt
        .create_container(&pod, container_config("a"))
        .await
        .expect("create a");
    node.rt.start_container(&running).await.expect("start a");
    let created = node
        .rt
        .create_container(&pod, container_config("b"))
        .await
        .expect("create b");
    node.rt.remove_pod(&pod).await.expect("RemovePodSandbox");
    // Each container is killed, then the shim is asked to exit (it deletes what it
    // holds), then killed if it did not.
    let calls = node.host.calls();
    let at = |call: &str| {
        calls
            .iter()
            .position(|c| c == call)
            .unwrap_or_else(|| panic!("no {call:?} in {calls:?}"))
    };
    let shutdown = at("shutdown");
    for id in [&running, &created] {
        assert!(at(&format!("kill {id} 9")) < shutdown, "{calls:?}");
    }
    assert!(shutdown < at("kill_shim"), "{calls:?}");
    assert_eq!(node.host.running_shims(), 0);
    node.assert_no_container();
    assert_eq!(node.rt.pods().expect("pods").len(), 0);
    assert_eq!(node.entries("pods"), Vec::<String>::new());
    node.rt.remove_pod(&pod).await.expect("again");
}

#[tokio::test]
async fn a_lost_shim_leaves_the_pod_not_ready_and_its_containers_exited() {
    let node = Node::new().await;
    let pod = node.pod("p").await;
    let id = node
        .rt
        .create_container(&pod, container_config("app"))
        .await
        .expect("create");
    node.rt.start_container(&id).await.expect("start");
    node.host.crash(&pod);
    let mut events = node.rt.subscribe();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let c = node.rt.container(&id).expect("record");
        if c.state == cri::ContainerState::ContainerExited as i32 {
            assert_eq!(c.exit_code, 255);
            assert!(
                c.message.contains("shim exited unexpectedly"),
                "{}",
                c.message
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the exit was never recorded"
        );
        let _ = tokio::time::timeout_at(deadline, events.recv()).await;
    }
    assert!(!node.rt.pod(&pod).expect("pod").ready);
    // What cairnd does in the shim's stead: the namespaces released.
    let dir = node.rt.pod(&pod).expect("pod").dir;
    assert!(
        node.host
            .calls()
            .contains(&format!("release {}", dir.display())),
        "{:?}",
        node.host.calls()
    );
    // And kubelet's clean-up works with the shim gone.
    node.rt.stop_pod(&pod).await.expect("StopPodSandbox");
    node.rt.remove_pod(&pod).await.expect("RemovePodSandbox");
    node.assert_no_container();
}
