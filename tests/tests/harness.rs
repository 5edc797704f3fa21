//! Round trips through the harness itself (no cairnd needed): images built in Rust are
//! pushed with skopeo to a private registry and read back; what the registry serves must
//! have exactly the media types and digests the builder computed.

use std::time::Duration;

use cairn_tests::image::{
    self, fixtures, inspect_raw, push_image, push_index, sha256_digest, BuiltImage, Compression,
    Format, ImageSpec, Layer, MultiPlatform, Platform,
};
use cairn_tests::{free_port, Registry, RegistryOptions};
use serde_json::Value;

/// Fetches `name` from the registry and checks it is byte-for-byte the built manifest.
fn check_manifest(reg: &Registry, name: &str, built: &BuiltImage) -> Value {
    let raw = inspect_raw(reg, name).unwrap();
    assert_eq!(
        sha256_digest(&raw),
        built.manifest.digest,
        "manifest of {name}"
    );
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], built.manifest.media_type.as_str());
    assert_eq!(manifest["config"]["digest"], built.image_id());
    assert_eq!(
        manifest["config"]["mediaType"],
        built.config.media_type.as_str()
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), built.layers.len());
    for (got, want) in layers.iter().zip(&built.layers) {
        assert_eq!(got["digest"], want.digest.as_str());
        assert_eq!(got["mediaType"], want.media_type.as_str());
        assert_eq!(got["size"], want.size);
    }
    manifest
}

#[test]
fn oci_gzip_multi_layer_round_trip() {
    let reg = Registry::start(RegistryOptions::plain()).unwrap();
    let spec = fixtures::multi_layer().unwrap();
    let built = push_image(&reg, &spec, "multi:v1").unwrap();
    assert_eq!(built.layers.len(), 3);
    assert!(built
        .layers
        .iter()
        .all(|l| l.media_type == image::OCI_LAYER_GZIP));
    check_manifest(&reg, "multi:v1", &built);
    // Also by digest.
    check_manifest(&reg, &format!("multi@{}", built.manifest_digest()), &built);
    // The layer blob the registry stores is the one we built.
    let stored = std::fs::read(reg.blob_data_path(&built.layers[1].digest)).unwrap();
    assert_eq!(sha256_digest(&stored), built.layers[1].digest);
    // skopeo fetched the manifest twice; the access log shows it.
    let n = reg.wait_for_requests("GET", "/v2/multi/manifests/", 2, Duration::from_secs(2));
    assert!(n >= 2, "manifest GETs: {n}\n{}", reg.log());
    assert!(reg.count_requests("PUT", "/v2/multi/manifests/v1") >= 1);
}

#[test]
fn zstd_layers_arrive_as_zstd() {
    let reg = Registry::start(RegistryOptions::plain()).unwrap();
    let spec =
        ImageSpec::new(vec![fixtures::busybox_base().unwrap()]).compression(Compression::Zstd);
    let built = push_image(&reg, &spec, "zstd:v1").unwrap();
    let manifest = check_manifest(&reg, "zstd:v1", &built);
    assert_eq!(manifest["layers"][0]["mediaType"], image::OCI_LAYER_ZSTD);
    let stored = std::fs::read(reg.blob_data_path(&built.layers[0].digest)).unwrap();
    assert_eq!(&stored[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
}

#[test]
fn docker_format_round_trip() {
    let reg = Registry::start(RegistryOptions::plain()).unwrap();
    let base = fixtures::busybox_base().unwrap();
    let gz = ImageSpec::new(vec![base.clone()]).format(Format::Docker);
    let built = push_image(&reg, &gz, "docker:gzip").unwrap();
    let manifest = check_manifest(&reg, "docker:gzip", &built);
    assert_eq!(manifest["mediaType"], image::DOCKER_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], image::DOCKER_CONFIG);
    assert_eq!(manifest["layers"][0]["mediaType"], image::DOCKER_LAYER_GZIP);

    let plain = ImageSpec::new(vec![base, Layer::new().file("x", "x\n", 0o644)])
        .format(Format::Docker)
        .compression(Compression::None);
    let built = push_image(&reg, &plain, "docker:plain").unwrap();
    let manifest = check_manifest(&reg, "docker:plain", &built);
    assert_eq!(manifest["layers"][1]["mediaType"], image::DOCKER_LAYER_TAR);
    assert_eq!(built.layers[1].digest, built.diff_ids[1]);
}

#[test]
fn multi_platform_round_trip() {
    let reg = Registry::start(RegistryOptions::plain()).unwrap();
    let base = vec![fixtures::busybox_base().unwrap()];
    for (format, list_type, name) in [
        (Format::Oci, image::OCI_INDEX, "multiarch:oci"),
        (
            Format::Docker,
            image::DOCKER_MANIFEST_LIST,
            "multiarch:docker",
        ),
    ] {
        let multi = MultiPlatform::new(base.clone()).format(format);
        let built = push_index(&reg, &multi, name).unwrap();
        let raw = inspect_raw(&reg, name).unwrap();
        assert_eq!(sha256_digest(&raw), built.digest(), "{name}");
        let index: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(index["mediaType"], list_type);
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1]["platform"]["architecture"], "arm64");
        assert_eq!(entries[1]["platform"]["variant"], "v8");
        let repo = name.split(':').next().unwrap();
        for img in &built.images {
            check_manifest(&reg, &format!("{repo}@{}", img.manifest_digest()), img);
        }
        let host = built.image(&Platform::host()).unwrap();
        let foreign = built.image(&Platform::foreign()).unwrap();
        assert_ne!(host.image_id(), foreign.image_id());
    }
}

#[test]
fn many_layers_round_trip() {
    let reg = Registry::start(RegistryOptions::plain()).unwrap();
    let spec = fixtures::many_layers(128).unwrap();
    let built = push_image(&reg, &spec, "many:128").unwrap();
    assert_eq!(built.layers.len(), 128);
    check_manifest(&reg, "many:128", &built);
}

#[test]
fn tls_and_auth_registry() {
    let opts = RegistryOptions::tls().with_auth("cairn", "s3cret");
    let reg = Registry::start(opts).unwrap();
    assert!(reg.url().starts_with("https://"));
    // The server certificate is a leaf signed by the CA (rustls refuses a CA as end entity).
    let ca = reg.ca_pem_path().unwrap();
    let leaf = ca.with_file_name("cert.pem");
    let verify = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca)
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    let ext = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "basicConstraints", "-in"])
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ext.stdout).contains("CA:FALSE"),
        "{ext:?}"
    );
    let spec = ImageSpec::new(vec![Layer::new().file("hello", "hi\n", 0o644)]);
    let built = push_image(&reg, &spec, "private/hello:v1").unwrap();
    check_manifest(&reg, "private/hello:v1", &built);

    // Without credentials the registry says 401.
    let layout = tempfile::tempdir().unwrap();
    spec.write(layout.path(), "t").unwrap();
    let mut no_creds = image::PushOptions::for_registry(&reg, Format::Oci, false);
    no_creds.creds = None;
    let err =
        image::push(layout.path(), "t", &reg.reference("private/x:1"), &no_creds).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("authentication required") || msg.contains("unauthorized"),
        "{msg}"
    );
    assert!(reg.requests().iter().any(|r| r.status == 401));
}

#[test]
fn plain_registry_accepts_auth() {
    let reg = Registry::start(RegistryOptions::plain().with_auth("u", "p")).unwrap();
    let spec = ImageSpec::new(vec![Layer::new().file("a", "a", 0o644)]);
    let built = push_image(&reg, &spec, "auth:plain").unwrap();
    check_manifest(&reg, "auth:plain", &built);
}

#[test]
fn registry_is_stopped_and_removed_on_drop() {
    let reg = Registry::start(RegistryOptions::plain()).unwrap();
    let pid = reg.pid();
    let dir = reg.storage_dir();
    let port = reg.port();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(reg);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn free_port_has_nobody_listening() {
    let port = free_port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
