//! The image side end to end, through cairnd's CRI socket, against Debian's
//! `docker-registry`: pulls (formats, compressions, platforms, auth, TLS, mirrors), the
//! store's answers (list, status, remove, fs info, du), sharing, and faults that must
//! leave the store exactly as it was.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_proto::cri;
use cairn_tests::image::fixtures::{busybox_base, many_layers, multi_layer, sized};
use cairn_tests::image::{push, push_image, push_index, PushOptions};
use cairn_tests::image::{Compression, Format, ImageSpec, Layer, MultiPlatform, Platform};
use cairn_tests::{free_port, Cairnd, Registry, RegistryOptions};
use tonic::Code;

type Images = cri::image_service_client::ImageServiceClient<tonic::transport::Channel>;

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn pull(c: &mut Images, image: &str) -> Result<String, tonic::Status> {
    pull_auth(c, image, None).await
}

async fn pull_auth(
    c: &mut Images,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    c.pull_image(cri::PullImageRequest {
        image: spec(image),
        auth,
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

async fn list(c: &mut Images) -> Vec<cri::Image> {
    c.list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
}

async fn status(c: &mut Images, image: &str) -> cri::ImageStatusResponse {
    c.image_status(cri::ImageStatusRequest {
        image: spec(image),
        verbose: true,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn remove(c: &mut Images, image: &str) -> Result<(), tonic::Status> {
    c.remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await
        .map(|_| ())
}

/// Entries of the daemon's snapshot dir: committed snapshots only, never a `tmp-*`.
fn snapshot_dirs(d: &Cairnd) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(d.root().join("snapshots"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The overlay lower dirs of an image, from ImageStatus's verbose info.
async fn lowers(c: &mut Images, image: &str) -> Vec<PathBuf> {
    let st = status(c, image).await;
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    info["snapshotDirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v.as_str().unwrap()))
        .collect()
}

/// A read-only overlay of an image's layers, unmounted on drop.
struct View {
    dir: tempfile::TempDir,
}

impl View {
    fn mount(lowers: &[PathBuf]) -> View {
        let dir = tempfile::tempdir().unwrap();
        let m = cairn_snapshotter::snapshot::OverlayMount {
            lowers: lowers.to_vec(),
            upper: None,
        };
        cairn_snapshotter::snapshot::mount_overlay(&m, dir.path(), true).unwrap();
        View { dir }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let _ = cairn_snapshotter::snapshot::unmount(self.dir.path());
    }
}

fn registry() -> Registry {
    Registry::start(RegistryOptions::plain()).unwrap()
}

fn small_image(marker: &str) -> ImageSpec {
    ImageSpec::new(vec![
        busybox_base().unwrap(),
        Layer::new().file(&format!("etc/{marker}"), marker, 0o644),
    ])
}

#[tokio::test]
async fn version_status_and_runtime_config_on_v1_and_v1alpha2() {
    let d = Cairnd::start("").unwrap();
    let mut rt = d.runtime_client().await.unwrap();
    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "cairn");
    assert_eq!(v.runtime_api_version, "v1");
    let st = rt
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let conds = st.status.unwrap().conditions;
    let runtime = conds.iter().find(|c| c.r#type == "RuntimeReady").unwrap();
    let network = conds.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(runtime.status);
    assert!(!network.status);
    assert!(!network.reason.is_empty());
    let rc = rt
        .runtime_config(cri::RuntimeConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );

    let mut alpha = d.runtime_client_alpha().await.unwrap();
    let v = alpha
        .version(cairn_proto::cri_alpha::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "cairn");
    let mut alpha_images = d.image_client_alpha().await.unwrap();
    let imgs = alpha_images
        .list_images(cairn_proto::cri_alpha::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(imgs.images.is_empty());

    let meta = std::fs::metadata(d.socket()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
}

#[tokio::test]
async fn pulls_a_multi_layer_image_with_every_entry_kind() {
    let reg = registry();
    let built = push_image(&reg, &multi_layer().unwrap(), "app/multi:v1").unwrap();
    let d = Cairnd::start("").unwrap();
    let mut c = d.image_client().await.unwrap();
    let name = reg.reference("app/multi:v1");
    let id = pull(&mut c, &name).await.unwrap();
    assert_eq!(id, built.image_id());

    let images = list(&mut c).await;
    assert_eq!(images.len(), 1);
    let img = &images[0];
    assert_eq!(img.id, built.image_id());
    assert_eq!(img.repo_tags, vec![name.clone()]);
    assert_eq!(
        img.repo_digests,
        vec![format!(
            "{}/app/multi@{}",
            reg.host(),
            built.manifest_digest()
        )]
    );
    assert_eq!(img.size, built.config.size + built.layers_size());

    // Status by tag, by ID, by short ID and by digest all find it.
    let keys: [String; 4] = [
        name.clone(),
        built.image_id().to_string(),
        built.image_id()[7..19].to_string(),
        img.repo_digests[0].clone(),
    ];
    for key in keys {
        let st = status(&mut c, &key).await;
        assert_eq!(st.image.unwrap().id, built.image_id(), "status of {key}");
    }
    let missing = status(&mut c, "nosuch/image:tag").await;
    assert!(missing.image.is_none());

    // The unpacked tree, seen through overlay as a container would see it.
    let lowers = lowers(&mut c, &name).await;
    assert_eq!(lowers.len(), built.layers.len());
    let view = View::mount(&lowers);
    assert!(view.path("bin/busybox").is_file());
    multi_layer_expectations(&view);
}

/// What `fixtures::multi_layer` promises, checked on a mounted view.
fn multi_layer_expectations(view: &View) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = |p: &str| std::fs::symlink_metadata(view.path(p)).unwrap();
    assert!(view.path("data/hello.txt").is_file());
    // Hard link: one inode.
    assert_eq!(md("data/hello.txt").ino(), md("data/hello-link.txt").ino());
    assert!(md("data/hello-symlink").file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(view.path("data/hello-symlink")).unwrap(),
        PathBuf::from("hello.txt")
    );
    // Owner and mode.
    let owned = md("data/owned.txt");
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1000, 1000, 0o640)
    );
    assert_eq!(md("data/script.sh").mode() & 0o777, 0o755);
    // Device node.
    let null = md("data/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    // xattr.
    let mut buf = [0u8; 8];
    let path = std::ffi::CString::new(view.path("data/xattr.txt").display().to_string()).unwrap();
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"user.cairn".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 1, "xattr user.cairn kept");
    assert_eq!(buf[0], b'1');
    // Whiteout and opaque dir.
    assert!(std::fs::symlink_metadata(view.path("data/to-delete.txt")).is_err());
    let mut opaque: Vec<String> = std::fs::read_dir(view.path("data/opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    opaque.sort();
    assert_eq!(opaque, vec!["new.txt"]);
    assert!(view.path("data/keep/kept.txt").is_file());
    assert!(view.path("data/layer3.txt").is_file());
    // mtimes are kept (the builder's fixed mtime, not "now").
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(md("data/hello.txt").mtime() < now - 3600);
}

#[tokio::test]
async fn docker_zstd_and_uncompressed_formats() {
    let reg = registry();
    let cases = [
        ("fmt/docker-gzip", Format::Docker, Compression::Gzip),
        ("fmt/docker-plain", Format::Docker, Compression::None),
        ("fmt/oci-zstd", Format::Oci, Compression::Zstd),
        ("fmt/oci-plain", Format::Oci, Compression::None),
    ];
    let d = Cairnd::start("").unwrap();
    let mut c = d.image_client().await.unwrap();
    for (name, format, compression) in cases {
        let image = small_image(name.rsplit('/').next().unwrap())
            .format(format)
            .compression(compression);
        let built = push_image(&reg, &image, &format!("{name}:1")).unwrap();
        let id = pull(&mut c, &reg.reference(&format!("{name}:1")))
            .await
            .unwrap();
        assert_eq!(id, built.image_id(), "{name}");
        let view = View::mount(&lowers(&mut c, &reg.reference(&format!("{name}:1"))).await);
        let marker = name.rsplit('/').next().unwrap();
        assert_eq!(
            std::fs::read_to_string(view.path(&format!("etc/{marker}"))).unwrap(),
            marker
        );
    }
    // The base layer is the same uncompressed tar in all four: one diff ID, one chain,
    // stored once although it arrived in three encodings.
    let du = d.cairnctl(&["du"]);
    assert!(du.status.success());
    assert_eq!(list(&mut c).await.len(), 4);
    assert_eq!(
        snapshot_dirs(&d).len(),
        5,
        "1 shared base + 4 marker layers"
    );
}

#[tokio::test]
async fn index_resolves_to_the_node_platform_or_the_configured_one() {
    let reg = registry();
    let multi = MultiPlatform::new(vec![busybox_base().unwrap()]);
    let built = push_index(&reg, &multi, "multi/arch:1").unwrap();
    let name = reg.reference("multi/arch:1");

    let d = Cairnd::start("[image]\nplatform = \"linux/amd64\"").unwrap();
    let mut c = d.image_client().await.unwrap();
    let id = pull(&mut c, &name).await.unwrap();
    assert_eq!(
        id,
        built.image(&Platform::linux_amd64()).unwrap().image_id()
    );
    let view = View::mount(&lowers(&mut c, &name).await);
    assert_eq!(
        std::fs::read_to_string(view.path("platform"))
            .unwrap()
            .trim(),
        "linux/amd64"
    );
    // RepoDigests name the index, as containerd reports them.
    let img = &list(&mut c).await[0];
    assert_eq!(
        img.repo_digests,
        vec![format!("{}/multi/arch@{}", reg.host(), built.digest())]
    );
    drop(view);

    let arm = Cairnd::start("[image]\nplatform = \"linux/arm64/v8\"").unwrap();
    let mut c = arm.image_client().await.unwrap();
    let id = pull(&mut c, &name).await.unwrap();
    assert_eq!(
        id,
        built.image(&Platform::linux_arm64_v8()).unwrap().image_id()
    );

    // A Docker manifest list resolves the same way.
    let docker = MultiPlatform::new(vec![busybox_base().unwrap()]).format(Format::Docker);
    let built_list = push_index(&reg, &docker, "multi/docker:1").unwrap();
    let id = pull(&mut c, &reg.reference("multi/docker:1"))
        .await
        .unwrap();
    assert_eq!(
        id,
        built_list
            .image(&Platform::linux_arm64_v8())
            .unwrap()
            .image_id()
    );

    let s390 = Cairnd::start("[image]\nplatform = \"linux/s390x\"").unwrap();
    let mut c = s390.image_client().await.unwrap();
    let err = pull(&mut c, &name).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("linux/s390x"), "{}", err.message());
    assert!(list(&mut c).await.is_empty());
}

#[tokio::test]
async fn second_tag_shares_everything_and_present_image_costs_one_manifest_request() {
    let reg = registry();
    let image = small_image("tagged");
    let built = push_image(&reg, &image, "shared/app:one").unwrap();
    push_image(&reg, &image, "shared/app:two").unwrap();
    let other = push_image(&reg, &small_image("other"), "shared/other:1").unwrap();
    let d = Cairnd::start("").unwrap();
    let mut c = d.image_client().await.unwrap();

    pull(&mut c, &reg.reference("shared/app:one"))
        .await
        .unwrap();
    let blobs_after_first = reg.count_requests("GET", "/blobs/");
    pull(&mut c, &reg.reference("shared/app:two"))
        .await
        .unwrap();
    let images = list(&mut c).await;
    assert_eq!(images.len(), 1, "a second tag is not a copy");
    let mut tags = images[0].repo_tags.clone();
    tags.sort();
    assert_eq!(
        tags,
        vec![
            reg.reference("shared/app:one"),
            reg.reference("shared/app:two")
        ]
    );
    assert_eq!(reg.count_requests("GET", "/blobs/"), blobs_after_first);

    // Already present: exactly one more manifest request and no blob request.
    let manifests = reg.count_requests("GET", "/manifests/");
    pull(&mut c, &reg.reference("shared/app:one"))
        .await
        .unwrap();
    assert_eq!(reg.count_requests("GET", "/manifests/"), manifests + 1);
    assert_eq!(reg.count_requests("GET", "/blobs/"), blobs_after_first);

    // By digest, and by name:tag@digest: the same image, no download.
    let by_digest = format!("{}/shared/app@{}", reg.host(), built.manifest_digest());
    assert_eq!(pull(&mut c, &by_digest).await.unwrap(), built.image_id());
    let tagged_digest = format!("{}/shared/app:one@{}", reg.host(), built.manifest_digest());
    assert_eq!(
        pull(&mut c, &tagged_digest).await.unwrap(),
        built.image_id()
    );
    assert_eq!(reg.count_requests("GET", "/blobs/"), blobs_after_first);
    assert_eq!(list(&mut c).await[0].repo_digests, vec![by_digest.clone()]);

    // A second image on the same base shares its layer: 3 snapshots, not 4.
    pull(&mut c, &reg.reference("shared/other:1"))
        .await
        .unwrap();
    assert_eq!(snapshot_dirs(&d).len(), 3);
    let base = &built.layers[0].digest;
    let base_gets = reg
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.uri.ends_with(base.as_str()))
        .count();
    assert_eq!(base_gets, 1, "the shared base layer is downloaded once");
    assert_eq!(other.layers[0].digest, *base);

    let du = d.cairnctl(&["du"]);
    let text = String::from_utf8_lossy(&du.stdout);
    assert!(du.status.success(), "{text}");
    assert!(text.contains("SHARED"), "{text}");
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_share_one_download() {
    let reg = registry();
    let built = push_image(&reg, &sized(6 << 20, 3), "conc/big:1").unwrap();
    let d = Cairnd::start("").unwrap();
    let name = reg.reference("conc/big:1");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = d.image_client().await.unwrap();
        let n = name.clone();
        tasks.push(tokio::spawn(async move { pull(&mut c, &n).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), built.image_id());
    }
    for layer in &built.layers {
        let gets = reg
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.uri.ends_with(layer.digest.as_str()))
            .count();
        assert_eq!(gets, 1, "layer {} fetched {gets} times", layer.digest);
    }
}

#[tokio::test]
async fn remove_by_tag_digest_and_id_then_garbage_is_collected() {
    let reg = registry();
    let image = small_image("rm");
    let built = push_image(&reg, &image, "rm/app:a").unwrap();
    push_image(&reg, &image, "rm/app:b").unwrap();
    let d = Cairnd::start("").unwrap();
    let mut c = d.image_client().await.unwrap();
    let (a, b) = (reg.reference("rm/app:a"), reg.reference("rm/app:b"));
    pull(&mut c, &a).await.unwrap();
    pull(&mut c, &b).await.unwrap();
    let fs_before = fs_used(&mut c).await;
    assert!(fs_before.0 > 0 && fs_before.1 > 0);

    // By one tag of two: the image goes with every tag, as under containerd.
    let images = list(&mut c).await;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].repo_tags.len(), 2);
    let digest_ref = images[0].repo_digests[0].clone();
    remove(&mut c, &a).await.unwrap();
    assert!(list(&mut c).await.is_empty());
    assert!(snapshot_dirs(&d).is_empty());
    // Idempotent, as kubelet retries: by either tag, the digest, or the ID; and an ID
    // no image ever had (critest's idempotence spec).
    let never = "0".repeat(64);
    let never_digest = format!("sha256:{never}");
    for name in [
        &a,
        &b,
        &digest_ref,
        &built.image_id().to_string(),
        &never,
        &never_digest,
    ] {
        remove(&mut c, name).await.unwrap();
    }

    // By digest: the image goes, with its layers and content.
    pull(&mut c, &a).await.unwrap();
    pull(&mut c, &b).await.unwrap();
    remove(&mut c, &digest_ref).await.unwrap();
    assert!(list(&mut c).await.is_empty());
    assert!(snapshot_dirs(&d).is_empty());
    let (bytes, _) = fs_used(&mut c).await;
    assert!(bytes < fs_before.0);

    // By ID.
    pull(&mut c, &a).await.unwrap();
    remove(&mut c, built.image_id()).await.unwrap();
    assert!(list(&mut c).await.is_empty());
    assert!(snapshot_dirs(&d).is_empty());
    let blobs = d.root().join("content/blobs/sha256");
    assert_eq!(
        std::fs::read_dir(blobs).unwrap().count(),
        0,
        "content collected"
    );

    // ListImages filter.
    pull(&mut c, &a).await.unwrap();
    let filtered = c
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter { image: spec(&a) }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    let none = c
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec("nosuch:tag"),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(none.is_empty());
}

async fn fs_used(c: &mut Images) -> (u64, u64) {
    let r = c
        .image_fs_info(cri::ImageFsInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    let fs = &r.image_filesystems[0];
    (
        fs.used_bytes.as_ref().unwrap().value,
        fs.inodes_used.as_ref().unwrap().value,
    )
}

#[tokio::test]
async fn basic_auth_over_tls_with_a_custom_ca() {
    let reg = Registry::start(RegistryOptions::tls().with_auth("alice", "s3cret")).unwrap();
    push_image(&reg, &small_image("auth"), "private/app:1").unwrap();
    let ca = reg.ca_pem_path().unwrap();
    let host = reg.host();
    let name = reg.reference("private/app:1");
    let trusted = format!(
        "[image]\ninsecure_localhost = false\n[registries.\"{host}\"]\nca_file = \"{}\"\n",
        ca.display()
    );
    let d = Cairnd::start(&trusted).unwrap();
    let mut c = d.image_client().await.unwrap();

    let err = pull(&mut c, &name).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "no credentials: {err:?}");
    let wrong = cri::AuthConfig {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull_auth(&mut c, &name, Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "wrong password: {err:?}");
    assert!(list(&mut c).await.is_empty());
    assert!(snapshot_dirs(&d).is_empty());

    let right = cri::AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    pull_auth(&mut c, &name, Some(right)).await.unwrap();
    // `auth` (base64 user:password), as kubelet sends from a docker config.
    remove(&mut c, &name).await.unwrap();
    let encoded = cri::AuthConfig {
        auth: "YWxpY2U6czNjcmV0".into(),
        ..Default::default()
    };
    pull_auth(&mut c, &name, Some(encoded)).await.unwrap();

    // Without the CA and without insecure, TLS verification fails.
    let untrusted = Cairnd::start("[image]\ninsecure_localhost = false\n").unwrap();
    let mut c = untrusted.image_client().await.unwrap();
    let right = cri::AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    let err = pull_auth(&mut c, &name, Some(right.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // Marked insecure: TLS without verification works.
    let insecure = Cairnd::start(&format!(
        "[image]\ninsecure_localhost = false\n[registries.\"{host}\"]\ninsecure = true\n"
    ))
    .unwrap();
    let mut c = insecure.image_client().await.unwrap();
    pull_auth(&mut c, &name, Some(right)).await.unwrap();
    // Credentials from the config when CRI gives none.
    let configured = Cairnd::start(&format!(
        "[registries.\"{host}\"]\nca_file = \"{}\"\nusername = \"alice\"\npassword = \"s3cret\"\n",
        ca.display()
    ))
    .unwrap();
    let mut c = configured.image_client().await.unwrap();
    pull(&mut c, &name).await.unwrap();
}

#[tokio::test]
async fn mirrors_serve_docker_hub_k8s_and_gcr_names_with_fallback() {
    let mirror = registry();
    let image = small_image("mirrored");
    let built = push_image(&mirror, &image, "library/busybox:latest").unwrap();
    push_image(&mirror, &image, "pause:3.9").unwrap();
    push_image(&mirror, &image, "distroless/static:nonroot").unwrap();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let live = format!("http://{}", mirror.host());
    let mut config = String::new();
    for host in ["docker.io", "registry.k8s.io", "gcr.io"] {
        config.push_str(&format!(
            "[registries.\"{host}\"]\nmirrors = [\"{dead}\", \"{live}\"]\n"
        ));
    }
    let d = Cairnd::start(&config).unwrap();
    let mut c = d.image_client().await.unwrap();
    assert_eq!(pull(&mut c, "busybox").await.unwrap(), built.image_id());
    pull(&mut c, "registry.k8s.io/pause:3.9").await.unwrap();
    pull(&mut c, "gcr.io/distroless/static:nonroot")
        .await
        .unwrap();
    let mut tags = list(&mut c).await[0].repo_tags.clone();
    tags.sort();
    assert_eq!(
        tags,
        vec![
            "docker.io/library/busybox:latest",
            "gcr.io/distroless/static:nonroot",
            "registry.k8s.io/pause:3.9",
        ]
    );

    // The registry itself is the fallback when every mirror fails.
    let upstream = registry();
    push_image(&upstream, &small_image("up"), "up/app:1").unwrap();
    let d = Cairnd::start(&format!(
        "[registries.\"{}\"]\nmirrors = [\"{dead}\"]\n",
        upstream.host()
    ))
    .unwrap();
    let mut c = d.image_client().await.unwrap();
    pull(&mut c, &upstream.reference("up/app:1")).await.unwrap();
}

/// Every failure must leave the store as it was: no image, no snapshot, no temp dir.
async fn assert_untouched(d: &Cairnd, c: &mut Images, before: &[String]) {
    assert_eq!(snapshot_dirs(d), before, "snapshots changed");
    let _ = c;
}

#[tokio::test]
async fn bad_names_missing_images_and_a_dead_registry() {
    let reg = registry();
    push_image(&reg, &small_image("ok"), "exists/app:1").unwrap();
    let d = Cairnd::start("").unwrap();
    let mut c = d.image_client().await.unwrap();

    for (name, code) in [
        (reg.reference("nosuch/repo:1"), Code::NotFound),
        (reg.reference("exists/app:nosuchtag"), Code::NotFound),
        ("UPPER/Case".to_string(), Code::InvalidArgument),
        ("a b".to_string(), Code::InvalidArgument),
        ("".to_string(), Code::InvalidArgument),
        (
            format!("{}/x@sha256:1234", reg.host()),
            Code::InvalidArgument,
        ),
    ] {
        let err = pull(&mut c, &name).await.unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err:?}");
        if !name.is_empty() {
            assert!(
                err.message().contains(name.split(':').next().unwrap()),
                "{}",
                err.message()
            );
        }
        assert_untouched(&d, &mut c, &[]).await;
    }

    let down = format!("127.0.0.1:{}/some/app:1", free_port());
    let started = Instant::now();
    let err = pull(&mut c, &down).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_untouched(&d, &mut c, &[]).await;

    // And the next good pull works.
    pull(&mut c, &reg.reference("exists/app:1")).await.unwrap();
}

#[tokio::test]
async fn corrupt_and_truncated_layers_are_refused() {
    let reg = registry();
    let built = push_image(
        &reg,
        &small_image("corrupt").compression(Compression::Gzip),
        "bad/app:1",
    )
    .unwrap();
    let name = reg.reference("bad/app:1");
    let layer = &built.layers[1].digest;
    let data = reg.blob_data_path(layer);
    let original = std::fs::read(&data).unwrap();
    let d = Cairnd::start("").unwrap();
    let mut c = d.image_client().await.unwrap();

    // A flipped byte: the digest does not match.
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    std::fs::write(&data, &flipped).unwrap();
    let err = pull(&mut c, &name).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains(layer.as_str()), "{}", err.message());
    assert!(list(&mut c).await.is_empty());
    // The base layer may have been committed (it is whole and verified); nothing else.
    assert!(snapshot_dirs(&d).len() <= 1);
    assert!(!snapshot_dirs(&d).iter().any(|n| n.starts_with("tmp-")));

    // Truncated.
    std::fs::write(&data, &original[..original.len() / 2]).unwrap();
    let err = pull(&mut c, &name).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DataLoss | Code::Unavailable),
        "{err:?}"
    );
    assert!(list(&mut c).await.is_empty());
    assert!(!snapshot_dirs(&d).iter().any(|n| n.starts_with("tmp-")));

    // Repaired: the pull works.
    std::fs::write(&data, &original).unwrap();
    assert_eq!(pull(&mut c, &name).await.unwrap(), built.image_id());
}

/// Writes an OCI layout whose single layer is `tar` (gzip) with `layer_media_type`.
fn raw_layout(dir: &Path, tar: &[u8], layer_media_type: &str) {
    use sha2::Digest as _;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> (String, u64) {
        let hex = hex::encode(sha2::Sha256::digest(data));
        std::fs::write(blobs.join(&hex), data).unwrap();
        (format!("sha256:{hex}"), data.len() as u64)
    };
    let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(tar)));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar).unwrap();
    let (ld, ls) = put(&gz.finish().unwrap());
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "config": {}
    });
    let (cd, cs) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": layer_media_type, "digest": ld, "size": ls}]
    });
    let (md, ms) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": "raw"}
        }]
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// A tar with raw entry names (the tar crate's builder refuses `..`, which is the point).
fn evil_tar(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let raw = &mut h.as_old_mut().name;
            raw.fill(0);
            raw[..name.len()].copy_from_slice(name.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_mtime(1);
        let data: &[u8] = if *kind == tar::EntryType::Regular {
            b"pwned\n"
        } else {
            b""
        };
        h.set_size(data.len() as u64);
        if !link.is_empty() {
            let raw = &mut h.as_old_mut().linkname;
            raw.fill(0);
            raw[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test]
async fn escaping_layers_and_unknown_media_types_are_refused() {
    let reg = registry();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("victim");
    std::fs::create_dir(&target).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "evil/dotdot",
            evil_tar(&[(
                "../../../../../../tmp/cairn-escape-dotdot",
                tar::EntryType::Regular,
                "",
            )]),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "evil/absolute",
            evil_tar(&[("/tmp/cairn-escape-abs", tar::EntryType::Regular, "")]),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "evil/hardlink",
            evil_tar(&[(
                "passwd",
                tar::EntryType::Link,
                "../../../../../../etc/passwd",
            )]),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "evil/unknown",
            evil_tar(&[("fine", tar::EntryType::Regular, "")]),
            "application/vnd.example.unknown+tar",
        ),
    ];
    let d = Cairnd::start("").unwrap();
    let mut c = d.image_client().await.unwrap();
    for (name, tar, media_type) in cases {
        let layout = tempfile::tempdir().unwrap();
        raw_layout(layout.path(), &tar, media_type);
        let opts = PushOptions::for_registry(&reg, Format::Oci, false);
        push(
            layout.path(),
            "raw",
            &reg.reference(&format!("{name}:1")),
            &opts,
        )
        .unwrap();
        let err = pull(&mut c, &reg.reference(&format!("{name}:1")))
            .await
            .unwrap_err();
        let expected = if name.ends_with("unknown") {
            Code::InvalidArgument
        } else {
            Code::DataLoss
        };
        assert_eq!(err.code(), expected, "{name}: {err:?}");
        assert!(list(&mut c).await.is_empty());
        assert!(
            snapshot_dirs(&d).is_empty(),
            "{name}: {:?}",
            snapshot_dirs(&d)
        );
    }
    assert!(!Path::new("/tmp/cairn-escape-dotdot").exists());
    assert!(!Path::new("/tmp/cairn-escape-abs").exists());

    // A symlink that points out, then a write through it: lands inside the snapshot.
    let mut layer = Layer::new().symlink("evil", &target.display().to_string());
    layer = layer.file("evil/pwned", "x", 0o644);
    let image = ImageSpec::new(vec![layer]);
    if let Ok(built) = push_image(&reg, &image, "evil/symlink:1") {
        let r = pull(&mut c, &reg.reference("evil/symlink:1")).await;
        assert!(
            std::fs::read_dir(&target).unwrap().next().is_none(),
            "wrote outside"
        );
        if let Ok(id) = r {
            assert_eq!(id, built.image_id());
        }
    }
}

#[tokio::test]
async fn a_full_image_filesystem_fails_cleanly() {
    let reg = registry();
    push_image(&reg, &sized(24 << 20, 2), "big/app:1").unwrap();
    push_image(&reg, &small_image("small"), "small/app:1").unwrap();
    let d = Cairnd::start_with_root(Some("8m"), "").unwrap();
    let mut c = d.image_client().await.unwrap();
    let err = pull(&mut c, &reg.reference("big/app:1")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(list(&mut c).await.is_empty());
    assert!(!snapshot_dirs(&d).iter().any(|n| n.starts_with("tmp-")));
    pull(&mut c, &reg.reference("small/app:1")).await.unwrap();
}

#[tokio::test]
async fn kill_9_in_the_middle_of_a_pull_leaves_nothing_half_done() {
    let reg = registry();
    let built = push_image(&reg, &sized(160 << 20, 4), "crash/app:1").unwrap();
    let name = reg.reference("crash/app:1");
    let mut d = Cairnd::start("").unwrap();
    let mut c = d.image_client().await.unwrap();
    let n = name.clone();
    let pulling = tokio::spawn(async move { pull(&mut c, &n).await });
    // Wait until unpacking is under way, then kill the daemon.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !snapshot_dirs(&d).iter().any(|n| n.starts_with("tmp-")) {
        assert!(
            Instant::now() < deadline,
            "the pull never started unpacking"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.kill9();
    let _ = pulling.await;
    d.restart().unwrap();
    let mut c = d.image_client().await.unwrap();
    assert!(list(&mut c).await.is_empty());
    assert!(
        !snapshot_dirs(&d).iter().any(|n| n.starts_with("tmp-")),
        "{:?}",
        snapshot_dirs(&d)
    );
    assert_eq!(pull(&mut c, &name).await.unwrap(), built.image_id());
    let st = status(&mut c, &name).await;
    assert!(st.image.is_some());
}

#[tokio::test]
async fn an_image_of_128_layers_mounts() {
    let reg = registry();
    let built = push_image(&reg, &many_layers(128).unwrap(), "deep/app:1").unwrap();
    let d = Cairnd::start("").unwrap();
    let mut c = d.image_client().await.unwrap();
    let name = reg.reference("deep/app:1");
    assert_eq!(pull(&mut c, &name).await.unwrap(), built.image_id());
    let lowers = lowers(&mut c, &name).await;
    assert_eq!(lowers.len(), 128);
    let view = View::mount(&lowers);
    let count = std::fs::read_dir(view.path("layers"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert!(count >= 127, "files of all layers visible: {count}");
}

#[tokio::test]
async fn cairnctl_pulls_lists_inspects_imports_and_removes() {
    let reg = registry();
    let image = small_image("ctl");
    let built = push_image(&reg, &image, "ctl/app:1").unwrap();
    let d = Cairnd::start("").unwrap();
    let name = reg.reference("ctl/app:1");

    let out = d.cairnctl(&["image", "pull", &name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("unpacked"), "progress lines: {err}");
    assert!(err.contains(built.image_id()), "{err}");

    let out = d.cairnctl(&["image", "ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}/ctl/app", reg.host())), "{text}");
    assert!(text.contains(&built.image_id()[7..19]), "{text}");

    let out = d.cairnctl(&["image", "inspect", &name]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"]["id"], built.image_id());

    let out = d.cairnctl(&["image", "rm", &name]);
    assert!(out.status.success());
    let out = d.cairnctl(&["image", "inspect", &name]);
    assert!(!out.status.success());

    // Import of an OCI layout directory and of a tar archive of it.
    let layout = tempfile::tempdir().unwrap();
    let built = image.write(layout.path(), "v9").unwrap();
    let out = d.cairnctl(&[
        "image",
        "import",
        &layout.path().display().to_string(),
        "--name",
        "imported/app",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = d.image_client().await.unwrap();
    let st = status(&mut c, "imported/app:v9").await;
    assert_eq!(st.image.unwrap().id, built.image_id());

    let archive = tempfile::NamedTempFile::new().unwrap();
    {
        let mut t = tar::Builder::new(std::fs::File::create(archive.path()).unwrap());
        t.append_dir_all(".", layout.path()).unwrap();
        t.finish().unwrap();
    }
    remove(&mut c, built.image_id()).await.unwrap();
    let out = d.cairnctl(&[
        "image",
        "import",
        &archive.path().display().to_string(),
        "--name",
        "archived/app",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        status(&mut c, "archived/app:v9").await.image.unwrap().id,
        built.image_id()
    );

    // A docker-save archive: manifest.json, config, uncompressed layer tars.
    let save = tempfile::tempdir().unwrap();
    let mut layer_files = Vec::new();
    for (i, l) in image.layers.iter().enumerate() {
        let f = format!("layer{i}/layer.tar");
        std::fs::create_dir_all(save.path().join(format!("layer{i}"))).unwrap();
        std::fs::write(save.path().join(&f), l.tar()).unwrap();
        layer_files.push(f);
    }
    let config = cairn_tests::image::read_blob(layout.path(), &built.config.digest).unwrap();
    std::fs::write(save.path().join("config.json"), &config).unwrap();
    let manifest = serde_json::json!([{
        "Config": "config.json", "RepoTags": ["saved/app:1"], "Layers": layer_files
    }]);
    std::fs::write(save.path().join("manifest.json"), manifest.to_string()).unwrap();
    let out = d.cairnctl(&["image", "import", &save.path().display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = status(&mut c, "docker.io/saved/app:1").await;
    assert_eq!(st.image.unwrap().id, built.image_id());

    let out = d.cairnctl(&["image", "import", "/nonexistent/archive.tar"]);
    assert!(!out.status.success());

    let du = d.cairnctl(&["du"]);
    assert!(du.status.success());
    let _ = BTreeMap::<String, String>::new();
}

#[tokio::test]
async fn layer_tars_as_real_tools_write_them_are_taken() {
    // Names with a leading `/` (and a hard link to one), names with `./`, and a last layer
    // that ends right after its last file's data (no padding, no end-of-archive blocks).
    let slash = Layer::new()
        .dir("/etc", 0o755)
        .file("/etc/from-slash", "slash\n", 0o644)
        .hardlink("/etc/slash-link", "/etc/from-slash")
        .names_prefixed("/");
    let dot = Layer::new()
        .dir("srv", 0o755)
        .file("srv/from-dot", "dot\n", 0o644)
        .names_prefixed("./");
    let cut = Layer::new()
        .dir("opt", 0o755)
        .file("opt/last", "no padding after me", 0o644)
        .cut_after_last_data();
    let reg = registry();
    let image = ImageSpec::new(vec![busybox_base().unwrap(), slash, dot, cut]);
    let built = push_image(&reg, &image, "quirks/app:1").unwrap();
    let d = Cairnd::start("").unwrap();
    let mut c = d.image_client().await.unwrap();
    let name = reg.reference("quirks/app:1");
    assert_eq!(pull(&mut c, &name).await.unwrap(), built.image_id());

    let view = View::mount(&lowers(&mut c, &name).await);
    let read = |p: &str| std::fs::read_to_string(view.path(p)).unwrap();
    assert_eq!(read("etc/from-slash"), "slash\n");
    assert_eq!(read("etc/slash-link"), "slash\n");
    assert_eq!(read("srv/from-dot"), "dot\n");
    assert_eq!(read("opt/last"), "no padding after me");
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::metadata(view.path(p)).unwrap().ino();
    assert_eq!(ino("etc/slash-link"), ino("etc/from-slash"));
    drop(view);

    // `..` still escapes nothing: such a layer is refused and leaves nothing.
    let escaping = Layer::new()
        .file("../escape", "x", 0o644)
        .names_prefixed("/");
    let bad = ImageSpec::new(vec![busybox_base().unwrap(), escaping]);
    push_image(&reg, &bad, "quirks/bad:1").unwrap();
    let before = snapshot_dirs(&d);
    let err = pull(&mut c, &reg.reference("quirks/bad:1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains("`..`"), "{err:?}");
    assert_eq!(snapshot_dirs(&d), before);
}

#[tokio::test]
async fn removing_an_image_by_one_name_removes_it_from_every_registry() {
    // The same image in two registries, two tags in one of them: one image, three tags.
    let (one, two) = (registry(), registry());
    let image = small_image("everywhere");
    let built = push_image(&one, &image, "shared/app:a").unwrap();
    push_image(&one, &image, "shared/app:b").unwrap();
    push_image(&two, &image, "mirror/app:c").unwrap();
    let d = Cairnd::start("").unwrap();
    let mut c = d.image_client().await.unwrap();
    let names = [
        one.reference("shared/app:a"),
        one.reference("shared/app:b"),
        two.reference("mirror/app:c"),
    ];
    for name in &names {
        assert_eq!(pull(&mut c, name).await.unwrap(), built.image_id());
    }
    let images = list(&mut c).await;
    assert_eq!(images.len(), 1, "one image: {images:?}");
    let mut tags = images[0].repo_tags.clone();
    tags.sort();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(tags, want);
    // The same ID from every name, ImageStatus and ListImages.
    for name in &names {
        let st = status(&mut c, name).await.image.unwrap();
        assert_eq!(st.id, built.image_id());
    }
    remove(&mut c, &names[2]).await.unwrap();
    assert!(list(&mut c).await.is_empty());
    for name in &names {
        assert!(
            status(&mut c, name).await.image.is_none(),
            "{name} still resolves"
        );
    }
    assert!(snapshot_dirs(&d).is_empty());
}
