//! Image import for nodes without a registry: an OCI image layout directory, or a tar
//! archive holding an OCI layout or a `docker save` image. Layers go through the same
//! verify → decompress → unpack path as a pull.
//! Runs in cairnd (the image side).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::digest::{chain_ids, Digest};
use crate::error::{Error, Result};
use crate::image::{Image, ImageService, LayerSource};
use crate::layer::LayerSpec;
use crate::manifest::{self, Compression, Manifest};
use crate::reference::Reference;
use crate::store::{ImageRecord, LayerRecord};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// `docker save`'s manifest.json entry.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// One image found in an archive, ready to unpack.
struct Found {
    manifest_digest: Digest,
    manifest_media_type: String,
    manifest_body: Vec<u8>,
    config_digest: Digest,
    config_body: Vec<u8>,
    layers: Vec<(LayerSpec, String)>,
    paths: HashMap<String, PathBuf>,
    names: Vec<String>,
}

/// A temp dir removed on drop.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl ImageService {
    /// Imports every image of an OCI layout dir or an archive at `path`. `name` names
    /// images the archive leaves unnamed (or gives a repository to bare tags).
    pub async fn import(&self, path: &Path, name: Option<&str>) -> Result<Vec<Image>> {
        let md = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::NotFound(format!("import: {} not found", path.display()))
            }
            _ => Error::io("import: reading", path, e),
        })?;
        let _extracted;
        let dir = if md.is_dir() {
            path.to_path_buf()
        } else {
            let tmp = self.root().join(format!("import-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
            _extracted = TempDir(tmp.clone());
            let archive = path.to_path_buf();
            let dest = tmp.clone();
            tokio::task::spawn_blocking(move || extract(&archive, &dest))
                .await
                .map_err(|e| Error::Internal(format!("extract task: {e}")))??;
            tmp
        };
        let found = if dir.join("index.json").exists() {
            self.scan_oci_layout(&dir, name)?
        } else if dir.join("manifest.json").exists() {
            scan_docker_save(&dir, name)?
        } else {
            return Err(Error::InvalidArgument(format!(
                "import: {} is neither an OCI layout (index.json) nor a docker save archive (manifest.json)",
                path.display()
            )));
        };
        if found.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "import: {} holds no image",
                path.display()
            )));
        }
        let mut out = Vec::new();
        for f in found {
            out.push(self.store_found(f).await?);
        }
        Ok(out)
    }

    fn scan_oci_layout(&self, dir: &Path, name: Option<&str>) -> Result<Vec<Found>> {
        let index_body = read(&dir.join("index.json"))?;
        let Manifest::Index { manifests, .. } =
            manifest::parse_manifest(Some(manifest::OCI_INDEX), &index_body)?
        else {
            return Err(Error::InvalidArgument(
                "import: index.json is not an image index".into(),
            ));
        };
        let blobs = dir.join("blobs").join("sha256");
        let mut out = Vec::new();
        for desc in &manifests {
            let mut names = Vec::new();
            let annotated = desc
                .annotations
                .get(CONTAINERD_NAME)
                .or_else(|| desc.annotations.get(REF_NAME));
            if let Some(n) = annotated {
                names.push(full_name(n, name)?);
            } else if let Some(n) = name {
                names.push(Reference::parse(n)?.to_string());
            }
            let body = read(&blobs.join(desc.digest.hex()))?;
            check(&desc.digest, &body)?;
            let (mdigest, mbody) = match manifest::parse_manifest(Some(&desc.media_type), &body)? {
                Manifest::Image(_) => (desc.digest.clone(), body),
                Manifest::Index {
                    manifests: inner, ..
                } => {
                    let chosen = manifest::select_platform(&inner, self.platform())?;
                    let b = read(&blobs.join(chosen.digest.hex()))?;
                    check(&chosen.digest, &b)?;
                    (chosen.digest.clone(), b)
                }
            };
            let Manifest::Image(m) = manifest::parse_manifest(None, &mbody)? else {
                return Err(Error::InvalidArgument(format!(
                    "import: {mdigest} is a nested index"
                )));
            };
            let config_body = read(&blobs.join(m.config.digest.hex()))?;
            check(&m.config.digest, &config_body)?;
            let config = manifest::parse_config(&config_body)?;
            let diff_ids = config.diff_ids()?;
            if diff_ids.len() != m.layers.len() {
                return Err(Error::BadContent(format!(
                    "import: manifest {mdigest} has {} layers, config lists {} diff IDs",
                    m.layers.len(),
                    diff_ids.len()
                )));
            }
            let mut layers = Vec::new();
            let mut paths = HashMap::new();
            for (l, diff) in m.layers.iter().zip(diff_ids) {
                let spec = LayerSpec {
                    digest: l.digest.clone(),
                    size: l.size,
                    compression: manifest::layer_compression(&l.media_type)?,
                    diff_id: diff,
                };
                paths.insert(l.digest.to_string(), blobs.join(l.digest.hex()));
                layers.push((spec, l.media_type.clone()));
            }
            out.push(Found {
                manifest_digest: mdigest,
                manifest_media_type: m.media_type.clone(),
                manifest_body: mbody,
                config_digest: m.config.digest.clone(),
                config_body,
                layers,
                paths,
                names,
            });
        }
        Ok(out)
    }

    async fn store_found(&self, f: Found) -> Result<Image> {
        let specs: Vec<LayerSpec> = f.layers.iter().map(|(s, _)| s.clone()).collect();
        let diffs: Vec<Digest> = specs.iter().map(|s| s.diff_id.clone()).collect();
        let chains = chain_ids(&diffs);
        let source = LayerSource::Local {
            paths: Arc::new(f.paths),
        };
        self.unpack_layers_locked(&source, &specs, &chains).await?;
        self.content_store()
            .write(&f.config_digest, &f.config_body)?;
        self.content_store()
            .write(&f.manifest_digest, &f.manifest_body)?;
        let layers: Vec<LayerRecord> = f
            .layers
            .iter()
            .zip(&chains)
            .map(|((s, mt), c)| LayerRecord {
                digest: s.digest.to_string(),
                media_type: mt.clone(),
                size: s.size,
                diff_id: s.diff_id.to_string(),
                chain_id: c.to_string(),
            })
            .collect();
        let record = ImageRecord {
            id: f.config_digest.to_string(),
            manifest_digest: f.manifest_digest.to_string(),
            manifest_media_type: f.manifest_media_type,
            config_size: f.config_body.len() as u64,
            size: f.config_body.len() as u64 + layers.iter().map(|l| l.size).sum::<u64>(),
            layers,
            platform: self.platform().to_string(),
            created_ns: time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64,
            pinned: false,
        };
        self.store_handle()
            .put_image(&record, &f.names, &[f.manifest_digest.to_string()])?;
        self.image(&record.id)
    }
}

/// A name from an archive: a full reference, or a bare tag completed with `name`'s repository.
fn full_name(annotated: &str, name: Option<&str>) -> Result<String> {
    let looks_like_tag =
        !annotated.contains('/') && !annotated.contains(':') && !annotated.contains('@');
    match (looks_like_tag, name) {
        (true, Some(n)) => {
            let base = Reference::parse(n)?;
            Ok(Reference::parse(&format!("{}:{annotated}", base.name()))?.to_string())
        }
        _ => Ok(Reference::parse(annotated)?.to_string()),
    }
}

fn scan_docker_save(dir: &Path, name: Option<&str>) -> Result<Vec<Found>> {
    let entries: Vec<DockerSaveEntry> = serde_json::from_slice(&read(&dir.join("manifest.json"))?)
        .map_err(|e| Error::InvalidArgument(format!("import: manifest.json: {e}")))?;
    let mut out = Vec::new();
    for e in entries {
        let config_body = read(&inside(dir, &e.config)?)?;
        let config_digest = Digest::of(&config_body);
        let config = manifest::parse_config(&config_body)?;
        let diff_ids = config.diff_ids()?;
        if diff_ids.len() != e.layers.len() {
            return Err(Error::BadContent(format!(
                "import: {} lists {} layers, its config {} diff IDs",
                e.config,
                e.layers.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        let mut paths = HashMap::new();
        let mut manifest_layers = Vec::new();
        for (file, diff) in e.layers.iter().zip(diff_ids) {
            let p = inside(dir, file)?;
            let (compression, digest, size) = describe_file(&p)?;
            let media_type = match compression {
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            };
            manifest_layers.push(serde_json::json!({
                "mediaType": media_type, "digest": digest.to_string(), "size": size
            }));
            paths.insert(digest.to_string(), p);
            layers.push((
                LayerSpec {
                    digest,
                    size,
                    compression,
                    diff_id: diff,
                },
                media_type.to_string(),
            ));
        }
        let manifest_body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.to_string(),
                "size": config_body.len(),
            },
            "layers": manifest_layers,
        }))
        .map_err(|e| Error::Internal(format!("encoding manifest: {e}")))?;
        let mut names = Vec::new();
        for t in e.repo_tags.unwrap_or_default() {
            names.push(Reference::parse(&t)?.to_string());
        }
        if names.is_empty() {
            if let Some(n) = name {
                names.push(Reference::parse(n)?.to_string());
            }
        }
        out.push(Found {
            manifest_digest: Digest::of(&manifest_body),
            manifest_media_type: manifest::OCI_MANIFEST.to_string(),
            manifest_body,
            config_digest,
            config_body,
            layers,
            paths,
            names,
        });
    }
    Ok(out)
}

/// Compression (by magic number), digest and size of a layer file.
fn describe_file(p: &Path) -> Result<(Compression, Digest, u64)> {
    let mut f = std::fs::File::open(p).map_err(|e| Error::io("opening", p, e))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| Error::io("reading", p, e))?;
    let compression = match &magic[..n] {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    };
    let f = std::fs::File::open(p).map_err(|e| Error::io("opening", p, e))?;
    let (digest, size) =
        crate::digest::HashingReader::new(std::io::BufReader::with_capacity(1 << 20, f))
            .finish()
            .map_err(|e| Error::io("reading", p, e))?;
    Ok((compression, digest, size))
}

/// A path named by an archive's manifest, which must stay inside the archive.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    let safe = p.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if !safe {
        return Err(Error::InvalidArgument(format!(
            "import: path {rel:?} leaves the archive"
        )));
    }
    Ok(dir.join(p))
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::InvalidArgument(format!("import: {} is missing", p.display()))
        }
        _ => Error::io("reading", p, e),
    })
}

fn check(d: &Digest, body: &[u8]) -> Result<()> {
    let got = Digest::of(body);
    if got != *d {
        return Err(Error::BadContent(format!(
            "import: blob {d} has digest {got}"
        )));
    }
    Ok(())
}

/// Extracts an archive (plain or gzip-compressed tar) into `dest`; the tar crate refuses
/// entries that would land outside it.
fn extract(archive: &Path, dest: &Path) -> Result<()> {
    let mut f = std::fs::File::open(archive).map_err(|e| Error::io("opening", archive, e))?;
    let mut magic = [0u8; 2];
    let n = f
        .read(&mut magic)
        .map_err(|e| Error::io("reading", archive, e))?;
    let f = std::fs::File::open(archive).map_err(|e| Error::io("opening", archive, e))?;
    let reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b] => Box::new(flate2::read::MultiGzDecoder::new(f)),
        _ => Box::new(f),
    };
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(false);
    tar.unpack(dest).map_err(|e| {
        Error::InvalidArgument(format!(
            "import: {} is not a readable tar archive: {e}",
            archive.display()
        ))
    })
}
