//! Pushing layouts to a registry with `skopeo copy --preserve-digests`, and reading
//! manifests back with `skopeo inspect --raw`.
//!
//! skopeo's `oci:` transport only accepts OCI media types in a layout's `index.json`, so a
//! Docker-format tag is first staged as skopeo's `dir:` format (`manifest.json`,
//! `<hex>.manifest.json` per list instance, blobs named by hex digest, hard-linked).
//! `--preserve-digests` makes skopeo refuse any change (conversion, recompression), so the
//! registry ends up serving exactly the bytes the builder wrote.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde_json::Value;
use tempfile::TempDir;

use super::{
    blob_path, layout_digests, read_blob, BuiltImage, BuiltIndex, Format, ImageSpec, MultiPlatform,
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
};
use crate::registry::Registry;
use crate::util::run_checked;

/// How [`push`] talks to the destination registry.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Copy every image of an index (`skopeo copy --all`).
    pub all_platforms: bool,
    /// Manifest format at the destination; must match the layout's (digests are preserved,
    /// so skopeo may not convert).
    pub format: Format,
    /// `--dest-creds user:pass`.
    pub creds: Option<(String, String)>,
    /// `--dest-cert-dir`: a directory with `ca.crt` (see [`Registry::cert_dir`]).
    pub tls_ca_dir: Option<PathBuf>,
    /// `--dest-tls-verify`; `false` also allows plain HTTP.
    pub tls_verify: bool,
}

impl PushOptions {
    /// Options that reach `registry`: its credentials, and its CA with verification when it
    /// serves TLS (plain HTTP otherwise).
    pub fn for_registry(registry: &Registry, format: Format, all_platforms: bool) -> PushOptions {
        PushOptions {
            all_platforms,
            format,
            creds: registry
                .credentials()
                .map(|(u, p)| (u.to_string(), p.to_string())),
            tls_ca_dir: registry.cert_dir(),
            tls_verify: registry.is_tls(),
        }
    }
}

/// `skopeo copy --preserve-digests oci:LAYOUT:TAG docker://DEST`. `dest` is
/// `host/repo:tag` (a `docker://` prefix is accepted).
pub fn push(layout: &Path, tag: &str, dest: &str, opts: &PushOptions) -> anyhow::Result<()> {
    let dest = dest.strip_prefix("docker://").unwrap_or(dest);
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--quiet", "--preserve-digests"])
        .args(["--format", opts.format.skopeo_name()])
        .arg(format!("--dest-tls-verify={}", opts.tls_verify));
    if opts.all_platforms {
        cmd.arg("--all");
    }
    if let Some((user, pass)) = &opts.creds {
        cmd.arg("--dest-creds").arg(format!("{user}:{pass}"));
    }
    if let Some(dir) = &opts.tls_ca_dir {
        cmd.arg("--dest-cert-dir").arg(dir);
    }
    let staged = stage_docker_tag(layout, tag)?;
    let source = match &staged {
        Some(dir) => format!("dir:{}", dir.path().display()),
        None => format!("oci:{}:{tag}", layout.display()),
    };
    cmd.arg(source).arg(format!("docker://{dest}"));
    run_checked(&mut cmd)
        .with_context(|| format!("cannot push {}:{tag} to {dest}", layout.display()))?;
    Ok(())
}

/// Writes `spec` into a temp layout and pushes it to `registry` as `name` (`repo:tag`).
pub fn push_image(registry: &Registry, spec: &ImageSpec, name: &str) -> anyhow::Result<BuiltImage> {
    let layout = tempfile::tempdir().context("cannot create a layout temp dir")?;
    let built = spec.write(layout.path(), "push")?;
    let opts = PushOptions::for_registry(registry, spec.format, false);
    push(layout.path(), "push", &registry.reference(name), &opts)?;
    Ok(built)
}

/// Writes `multi` into a temp layout and pushes the index and all images as `name`.
pub fn push_index(
    registry: &Registry,
    multi: &MultiPlatform,
    name: &str,
) -> anyhow::Result<BuiltIndex> {
    let layout = tempfile::tempdir().context("cannot create a layout temp dir")?;
    let built = multi.write(layout.path(), "push")?;
    let opts = PushOptions::for_registry(registry, multi.format, true);
    push(layout.path(), "push", &registry.reference(name), &opts)?;
    Ok(built)
}

/// `skopeo inspect --raw` of `name` (`repo:tag` or `repo@digest`) on `registry`: the
/// manifest or index bytes exactly as the registry serves them.
pub fn inspect_raw(registry: &Registry, name: &str) -> anyhow::Result<Vec<u8>> {
    let reference = registry.reference(name);
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "inspect", "--raw"]);
    match registry.cert_dir() {
        Some(dir) => cmd.arg("--cert-dir").arg(dir),
        None => cmd.arg("--tls-verify=false"),
    };
    if let Some((user, pass)) = registry.credentials() {
        cmd.arg("--creds").arg(format!("{user}:{pass}"));
    }
    cmd.arg(format!("docker://{reference}"));
    let out = run_checked(&mut cmd).with_context(|| format!("cannot inspect {reference}"))?;
    Ok(out.stdout)
}

/// For a tag with Docker media types, a `dir:` copy skopeo can read; `None` for OCI tags.
fn stage_docker_tag(layout: &Path, tag: &str) -> anyhow::Result<Option<TempDir>> {
    let top = layout_digests(layout, tag)?;
    if top.media_type != DOCKER_MANIFEST && top.media_type != DOCKER_MANIFEST_LIST {
        return Ok(None);
    }
    let dir = tempfile::tempdir().context("cannot create a dir: staging temp dir")?;
    let stage = dir.path();
    write(stage.join("version"), b"Directory Transport Version: 1.1\n")?;
    let top_bytes = read_blob(layout, &top.digest)?;
    write(stage.join("manifest.json"), &top_bytes)?;
    let mut manifests = Vec::new();
    if top.media_type == DOCKER_MANIFEST_LIST {
        let list = parse(&top_bytes, &top.digest)?;
        for entry in list["manifests"].as_array().into_iter().flatten() {
            let digest = entry["digest"]
                .as_str()
                .context("manifest list entry without digest")?;
            let bytes = read_blob(layout, digest)?;
            write(
                stage.join(format!("{}.manifest.json", hex_of(digest))),
                &bytes,
            )?;
            manifests.push(parse(&bytes, digest)?);
        }
    } else {
        manifests.push(parse(&top_bytes, &top.digest)?);
    }
    for manifest in &manifests {
        let config = manifest["config"]["digest"].as_str();
        let layers = manifest["layers"].as_array().into_iter().flatten();
        let digests = config
            .into_iter()
            .chain(layers.filter_map(|l| l["digest"].as_str()));
        for digest in digests {
            link_or_copy(&blob_path(layout, digest), &stage.join(hex_of(digest)))?;
        }
    }
    Ok(Some(dir))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn parse(bytes: &[u8], digest: &str) -> anyhow::Result<Value> {
    serde_json::from_slice(bytes).with_context(|| format!("manifest {digest} is not JSON"))
}

fn write(path: PathBuf, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() || std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}
