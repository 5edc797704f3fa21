//! Image manifests, indexes (manifest lists) and image configs, parsed from the
//! JSON a registry serves (OCI and Docker schema 2), plus platform matching to
//! pick an index entry and the layer compression implied by a media type.
//! Runs in cairnd (the image side).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The manifest media types cairn accepts, in preference order (for the
/// `Accept` header). Indexes come first so a multi-platform image is served as
/// one and the platform is chosen here.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const OCI_NONDISTRIBUTABLE_PREFIX: &str = "application/vnd.oci.image.layer.nondistributable.";

const SCHEMA1_REFUSAL: &str =
    "the image has a Docker schema 1 manifest: schema 1 manifests are not supported; \
     push the image again with a current client (Docker schema 2 or OCI)";

/// An operating system and CPU architecture, as in an index entry
/// (`linux/arm64/v8`). Architectures use Go's names (`amd64`, `arm64`, `386`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on: `linux` and the Go name of the CPU.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            other => other,
        };
        let (architecture, variant) = normalize_arch(arch, None);
        let variant = match (architecture.as_str(), variant) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v,
        };
        Platform {
            os: "linux".into(),
            architecture,
            variant,
        }
    }

    /// Parses `os/arch[/variant]` (`linux/amd64`, `linux/arm64/v8`,
    /// `linux/arm/v7`) and normalises architecture aliases (`x86_64`,
    /// `aarch64`, `armhf`, `armel`, `i386`).
    pub fn parse(s: &str) -> Result<Platform> {
        let invalid = || {
            Error::InvalidArgument(format!(
                "invalid platform {s:?}: expected os/arch[/variant]"
            ))
        };
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(invalid());
        }
        let valid = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        };
        if !parts.iter().all(|p| valid(p)) {
            return Err(invalid());
        }
        let variant = parts.get(2).map(|v| v.to_ascii_lowercase());
        let (architecture, variant) = normalize_arch(&parts[1].to_ascii_lowercase(), variant);
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture,
            variant,
        })
    }

    /// Whether a node of platform `self` can run an image built for `other`:
    /// same OS and architecture, and the same variant after defaults (arm64
    /// means v8, amd64 means v1, arm means v7), or for arm and amd64 a lower
    /// variant than the node's (an arm v7 node runs v6 and v5 images).
    pub fn matches(&self, other: &Platform) -> bool {
        match_rank(self, other).is_some()
    }

    /// OS, architecture and variant with defaults filled in, for comparison.
    fn key(&self) -> (String, String, Option<String>) {
        let (arch, variant) = normalize_arch(
            &self.architecture.to_ascii_lowercase(),
            self.variant.as_ref().map(|v| v.to_ascii_lowercase()),
        );
        let variant = match (arch.as_str(), variant) {
            ("arm64", None) => Some("v8".to_string()),
            ("amd64", None) => Some("v1".to_string()),
            (_, v) => v,
        };
        (self.os.to_ascii_lowercase(), arch, variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match self.variant.as_deref() {
            Some(v) if !v.is_empty() => write!(f, "/{v}"),
            _ => Ok(()),
        }
    }
}

/// Maps architecture aliases to Go's names and tidies the variant: an empty
/// variant is none, a bare number gets a `v`, arm defaults to v7, `armhf` is
/// arm v7 and `armel` arm v6 unless a variant is given.
fn normalize_arch(arch: &str, variant: Option<String>) -> (String, Option<String>) {
    let variant = variant.filter(|v| !v.is_empty()).map(|v| {
        if v.bytes().all(|b| b.is_ascii_digit()) {
            format!("v{v}")
        } else {
            v
        }
    });
    let (arch, default_variant) = match arch {
        "x86_64" | "x86-64" | "amd64" => ("amd64", None),
        "aarch64" | "arm64" => ("arm64", None),
        "armhf" | "armv7l" | "armv7" => ("arm", Some("v7")),
        "armel" | "armv6l" | "armv6" => ("arm", Some("v6")),
        "arm" => ("arm", Some("v7")),
        "i386" | "i486" | "i586" | "i686" | "x86" | "386" => ("386", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    };
    let variant = match (arch, variant) {
        ("arm64", Some(v)) if v == "v8.0" => Some("v8".to_string()),
        (_, Some(v)) => Some(v),
        (_, None) => default_variant.map(str::to_string),
    };
    (arch.to_string(), variant)
}

/// The numeric level of a `vN` variant.
fn variant_level(v: &str) -> Option<u32> {
    v.strip_prefix('v')?.parse().ok()
}

/// How well a candidate fits the node: `Some(0)` for an exact match, larger
/// for compatible but older variants, `None` when it cannot run.
fn match_rank(node: &Platform, candidate: &Platform) -> Option<u32> {
    let (os, arch, variant) = node.key();
    let (c_os, c_arch, c_variant) = candidate.key();
    if os != c_os || arch != c_arch || os.is_empty() || arch.is_empty() {
        return None;
    }
    if variant == c_variant {
        return Some(0);
    }
    if !matches!(arch.as_str(), "arm" | "amd64") {
        return None;
    }
    let node_level = variant_level(variant.as_deref()?)?;
    let candidate_level = variant_level(c_variant.as_deref()?)?;
    (candidate_level < node_level).then(|| node_level - candidate_level)
}

/// A pointer to content: a manifest in an index, a config or a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<Platform>,
    pub annotations: BTreeMap<String, String>,
}

/// A single-platform image manifest.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// What a manifest request returned: an image manifest or an index of them.
#[derive(Debug, Clone)]
pub enum Manifest {
    Image(ImageManifest),
    Index {
        media_type: String,
        manifests: Vec<Descriptor>,
    },
}

impl Manifest {
    /// The media type the manifest was parsed as.
    pub fn media_type(&self) -> &str {
        match self {
            Manifest::Image(m) => &m.media_type,
            Manifest::Index { media_type, .. } => media_type,
        }
    }
}

/// A descriptor as it appears in JSON; validated into [`Descriptor`].
#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default, deserialize_with = "null_default")]
    media_type: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default, deserialize_with = "null_default")]
    annotations: BTreeMap<String, String>,
}

impl RawDescriptor {
    /// Validates the descriptor; `what` names it in errors ("layer 2").
    fn validate(self, what: &str) -> Result<Descriptor> {
        let Some(digest) = self.digest else {
            return Err(Error::BadContent(format!("manifest {what} has no digest")));
        };
        let digest = Digest::parse(&digest)
            .map_err(|e| Error::BadContent(format!("manifest {what}: {e}")))?;
        let Some(size) = self.size else {
            return Err(Error::BadContent(format!(
                "manifest {what} ({digest}) has no size"
            )));
        };
        Ok(Descriptor {
            media_type: self.media_type,
            digest,
            size,
            platform: self.platform,
            annotations: self.annotations,
        })
    }
}

/// The fields of a manifest or index body that cairn reads.
#[derive(Deserialize)]
struct RawManifest {
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
}

/// Content types that say nothing about which manifest the body is.
fn is_generic_content_type(t: &str) -> bool {
    matches!(
        t,
        "" | "application/json" | "text/plain" | "application/octet-stream"
    )
}

fn is_index_type(t: &str) -> bool {
    t == OCI_INDEX || t == DOCKER_LIST
}

fn is_image_type(t: &str) -> bool {
    t == OCI_MANIFEST || t == DOCKER_MANIFEST
}

fn is_schema1_type(t: &str) -> bool {
    t == DOCKER_SCHEMA1 || t == DOCKER_SCHEMA1_SIGNED
}

/// Parses a manifest body. `content_type` is the registry's Content-Type
/// header; when it is missing or generic, the body's `mediaType` decides (and
/// failing that, its shape: `manifests` means an OCI index, `config` an OCI
/// image manifest).
pub fn parse_manifest(content_type: Option<&str>, body: &[u8]) -> Result<Manifest> {
    let header = content_type
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|t| !is_generic_content_type(t));
    if header.as_deref().is_some_and(is_schema1_type) {
        return Err(Error::InvalidArgument(SCHEMA1_REFUSAL.into()));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Error::BadContent(format!("manifest is not valid JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(Error::BadContent("manifest is not a JSON object".into()));
    };
    let schema_version = object.get("schemaVersion").and_then(|v| v.as_i64());
    let body_type = object.get("mediaType").and_then(|v| v.as_str());
    if schema_version == Some(1) || body_type.is_some_and(is_schema1_type) {
        return Err(Error::InvalidArgument(SCHEMA1_REFUSAL.into()));
    }
    if let Some(v) = schema_version.filter(|&v| v != 2) {
        return Err(Error::BadContent(format!(
            "unsupported manifest schemaVersion {v}"
        )));
    }
    let media_type = effective_media_type(header.as_deref(), body_type, object)?;
    let raw: RawManifest = serde_json::from_value(value)
        .map_err(|e| Error::BadContent(format!("malformed {media_type} manifest: {e}")))?;
    if is_index_type(&media_type) {
        return build_index(media_type, raw);
    }
    build_image(media_type, raw)
}

/// Decides the media type from the header (when specific), the body's
/// `mediaType`, or the body's shape.
fn effective_media_type(
    header: Option<&str>,
    body_type: Option<&str>,
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<String> {
    let chosen = match (header, body_type) {
        (Some(h), Some(b)) if h != b && is_known_type(h) && is_known_type(b) => {
            if is_index_type(h) != is_index_type(b) {
                return Err(Error::BadContent(format!(
                    "registry says the manifest is {h} but its body says {b}"
                )));
            }
            h.to_string()
        }
        (Some(h), _) => h.to_string(),
        (None, Some(b)) => b.to_string(),
        (None, None) if object.contains_key("manifests") => OCI_INDEX.to_string(),
        (None, None) if object.contains_key("config") => OCI_MANIFEST.to_string(),
        (None, None) => {
            return Err(Error::BadContent(
                "manifest has no mediaType and is neither an image manifest nor an index".into(),
            ))
        }
    };
    if !is_known_type(&chosen) {
        return Err(Error::InvalidArgument(format!(
            "unsupported manifest media type {chosen:?} (supported: {})",
            ACCEPTED_MANIFESTS.join(", ")
        )));
    }
    Ok(chosen)
}

fn is_known_type(t: &str) -> bool {
    is_index_type(t) || is_image_type(t)
}

fn build_index(media_type: String, raw: RawManifest) -> Result<Manifest> {
    let Some(entries) = raw.manifests else {
        return Err(Error::BadContent(format!(
            "{media_type} has no manifests list"
        )));
    };
    let manifests = entries
        .into_iter()
        .enumerate()
        .map(|(i, d)| d.validate(&format!("index entry {i}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(Manifest::Index {
        media_type,
        manifests,
    })
}

fn build_image(media_type: String, raw: RawManifest) -> Result<Manifest> {
    let Some(config) = raw.config else {
        return Err(Error::BadContent(format!("{media_type} has no config")));
    };
    let config = config.validate("config")?;
    let Some(layers) = raw.layers else {
        return Err(Error::BadContent(format!(
            "{media_type} has no layers list"
        )));
    };
    let layers = layers
        .into_iter()
        .enumerate()
        .map(|(i, d)| d.validate(&format!("layer {i}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(Manifest::Image(ImageManifest {
        media_type,
        config,
        layers,
    }))
}

/// Picks the index entry for `platform`: an exact match first, then compatible
/// ones (newest variant first), earlier entries winning ties. Entries without
/// a platform are ignored.
pub fn select_platform<'a>(
    manifests: &'a [Descriptor],
    platform: &Platform,
) -> Result<&'a Descriptor> {
    let best = manifests
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let rank = match_rank(platform, d.platform.as_ref()?)?;
            Some((rank, i, d))
        })
        .min_by_key(|&(rank, i, _)| (rank, i));
    if let Some((_, _, d)) = best {
        return Ok(d);
    }
    let mut available: Vec<String> = Vec::new();
    for p in manifests.iter().filter_map(|d| d.platform.as_ref()) {
        let p = p.to_string();
        if !available.contains(&p) {
            available.push(p);
        }
    }
    let available = if available.is_empty() {
        "none".to_string()
    } else {
        available.join(", ")
    };
    Err(Error::NotFound(format!(
        "no manifest for platform {platform} in the image index; available: {available}"
    )))
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a layer, from its media type. Foreign
/// (non-distributable) layers and unknown types are refused.
pub fn layer_compression(media_type: &str) -> Result<Compression> {
    match media_type {
        OCI_LAYER | DOCKER_LAYER => Ok(Compression::None),
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
        OCI_LAYER_ZSTD => Ok(Compression::Zstd),
        t if t == DOCKER_FOREIGN_LAYER || t.starts_with(OCI_NONDISTRIBUTABLE_PREFIX) => {
            Err(Error::InvalidArgument(format!(
                "layer media type {t:?}: foreign layers are not supported"
            )))
        }
        t => Err(Error::InvalidArgument(format!(
            "unsupported layer media type {t:?}"
        ))),
    }
}

/// What cairn needs from an image config (the blob the manifest's config
/// descriptor points at).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub config: RunConfig,
    #[serde(default, deserialize_with = "null_default")]
    pub rootfs: RootFs,
    #[serde(default, deserialize_with = "null_default")]
    pub history: Vec<serde_json::Value>,
}

/// The run defaults of an image (Docker's capitalised field names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "Env", default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(
        rename = "Entrypoint",
        default,
        deserialize_with = "string_or_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(
        rename = "Cmd",
        default,
        deserialize_with = "string_or_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "Labels", default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "ExposedPorts", default, deserialize_with = "null_default")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "Volumes", default, deserialize_with = "null_default")]
    pub volumes: BTreeMap<String, serde_json::Value>,
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_signal: Option<String>,
}

/// The layer list of an image config: `type` must be `layers`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub kind: String,
    #[serde(default, with = "digest_list")]
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    /// The diff IDs of the layers, bottom first (already validated by
    /// [`parse_config`]; kept fallible for callers that build configs by hand).
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        Ok(self.rootfs.diff_ids.clone())
    }
}

/// Parses and validates an image config: `rootfs.type` must be `layers` and
/// every diff ID must be a valid digest.
pub fn parse_config(body: &[u8]) -> Result<ImageConfig> {
    let config: ImageConfig = serde_json::from_slice(body)
        .map_err(|e| Error::BadContent(format!("invalid image config: {e}")))?;
    if config.rootfs.kind != "layers" {
        return Err(Error::BadContent(format!(
            "invalid image config: rootfs.type is {:?}, expected \"layers\"",
            config.rootfs.kind
        )));
    }
    Ok(config)
}

/// The image's user as CRI's ImageStatus reports it: a numeric user (with or
/// without a group) as a uid, otherwise the user name; the group is dropped.
pub fn image_user(config: &ImageConfig) -> (Option<i64>, String) {
    let user = config.config.user.as_deref().unwrap_or("");
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<u32>() {
        Ok(uid) => (Some(i64::from(uid)), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

/// Deserializes `null` as the type's default.
fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Deserializes a command as a list, also accepting a single string (older
/// Docker configs) and `null`.
fn string_or_list<'de, D>(d: D) -> std::result::Result<Option<Vec<String>>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(s)) => Some(vec![s]),
        Some(OneOrMany::Many(v)) => Some(v),
    })
}

/// Serde for a list of digests as their `sha256:<hex>` strings; `null` is an
/// empty list and an invalid digest is an error naming it.
mod digest_list {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::digest::Digest;

    pub fn serialize<S: Serializer>(digests: &[Digest], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(digests.iter().map(|d| d.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Digest>, D::Error> {
        let raw = Option::<Vec<String>>::deserialize(d)?.unwrap_or_default();
        raw.iter()
            .map(|s| Digest::parse(s).map_err(|e| D::Error::custom(format!("diff_ids: {e}"))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", std::iter::repeat_n(c, 64).collect::<String>())
    }

    fn image_json(media_type: Option<&str>, config_type: &str, layer_type: &str) -> String {
        let mt = media_type
            .map(|t| format!(r#""mediaType": "{t}","#))
            .unwrap_or_default();
        format!(
            r#"{{
  "schemaVersion": 2,
  {mt}
  "config": {{"mediaType": "{config_type}", "digest": "{}", "size": 1469}},
  "layers": [
    {{"mediaType": "{layer_type}", "digest": "{}", "size": 2220094}},
    {{"mediaType": "{layer_type}", "digest": "{}", "size": 32,
      "annotations": {{"org.opencontainers.image.title": "x"}}}}
  ]
}}"#,
            digest('c'),
            digest('1'),
            digest('2')
        )
    }

    fn index_json(media_type: &str, entry_type: &str) -> String {
        format!(
            r#"{{
  "schemaVersion": 2,
  "mediaType": "{media_type}",
  "manifests": [
    {{"mediaType": "{entry_type}", "digest": "{}", "size": 528,
      "platform": {{"architecture": "amd64", "os": "linux"}}}},
    {{"mediaType": "{entry_type}", "digest": "{}", "size": 528,
      "platform": {{"architecture": "arm64", "os": "linux", "variant": "v8"}}}},
    {{"mediaType": "{entry_type}", "digest": "{}", "size": 566,
      "annotations": {{"vnd.docker.reference.type": "attestation-manifest"}},
      "platform": {{"architecture": "unknown", "os": "unknown"}}}}
  ]
}}"#,
            digest('a'),
            digest('b'),
            digest('d')
        )
    }

    fn expect_image(m: Manifest) -> ImageManifest {
        match m {
            Manifest::Image(i) => i,
            other => panic!("expected an image manifest, got {other:?}"),
        }
    }

    fn expect_index(m: Manifest) -> (String, Vec<Descriptor>) {
        match m {
            Manifest::Index {
                media_type,
                manifests,
            } => (media_type, manifests),
            other => panic!("expected an index, got {other:?}"),
        }
    }

    #[test]
    fn parses_image_manifests() {
        let cases = [
            (
                OCI_MANIFEST,
                "application/vnd.oci.image.config.v1+json",
                OCI_LAYER_GZIP,
            ),
            (
                DOCKER_MANIFEST,
                "application/vnd.docker.container.image.v1+json",
                DOCKER_LAYER_GZIP,
            ),
        ];
        for (mt, config_type, layer_type) in cases {
            let body = image_json(Some(mt), config_type, layer_type);
            for header in [Some(mt), None, Some("application/json; charset=utf-8")] {
                let m = parse_manifest(header, body.as_bytes()).unwrap();
                assert_eq!(m.media_type(), mt);
                let m = expect_image(m);
                assert_eq!(m.config.media_type, config_type);
                assert_eq!(m.config.digest.to_string(), digest('c'));
                assert_eq!(m.config.size, 1469);
                assert_eq!(m.layers.len(), 2);
                assert_eq!(m.layers[0].digest.to_string(), digest('1'));
                assert_eq!(m.layers[0].size, 2220094);
                assert_eq!(m.layers[0].media_type, layer_type);
                assert_eq!(
                    m.layers[1]
                        .annotations
                        .get("org.opencontainers.image.title"),
                    Some(&"x".to_string())
                );
            }
        }
    }

    #[test]
    fn oci_manifest_without_media_type_field() {
        let body = image_json(None, "application/vnd.oci.image.config.v1+json", OCI_LAYER);
        let m = expect_image(parse_manifest(None, body.as_bytes()).unwrap());
        assert_eq!(m.media_type, OCI_MANIFEST);
        let m = expect_image(parse_manifest(Some(DOCKER_MANIFEST), body.as_bytes()).unwrap());
        assert_eq!(m.media_type, DOCKER_MANIFEST);
    }

    #[test]
    fn parses_indexes() {
        for (mt, entry) in [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)] {
            let body = index_json(mt, entry);
            for header in [Some(mt), None, Some("application/json")] {
                let (media_type, manifests) =
                    expect_index(parse_manifest(header, body.as_bytes()).unwrap());
                assert_eq!(media_type, mt);
                assert_eq!(manifests.len(), 3);
                assert_eq!(manifests[0].media_type, entry);
                assert_eq!(
                    manifests[1].platform,
                    Some(Platform {
                        os: "linux".into(),
                        architecture: "arm64".into(),
                        variant: Some("v8".into()),
                    })
                );
            }
        }
        let bare = format!(
            r#"{{"schemaVersion": 2, "manifests": [{{"mediaType": "{OCI_MANIFEST}", "digest": "{}", "size": 1}}]}}"#,
            digest('e')
        );
        let (media_type, manifests) = expect_index(parse_manifest(None, bare.as_bytes()).unwrap());
        assert_eq!(media_type, OCI_INDEX);
        assert_eq!(manifests[0].platform, None);
    }

    #[test]
    fn selects_platform_from_docker_list() {
        let body = index_json(DOCKER_LIST, DOCKER_MANIFEST);
        let (_, manifests) =
            expect_index(parse_manifest(Some(DOCKER_LIST), body.as_bytes()).unwrap());
        let amd64 = Platform::parse("linux/amd64").unwrap();
        assert_eq!(
            select_platform(&manifests, &amd64)
                .unwrap()
                .digest
                .to_string(),
            digest('a')
        );
        let arm64 = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(
            select_platform(&manifests, &arm64)
                .unwrap()
                .digest
                .to_string(),
            digest('b')
        );
        let arm64_bare = Platform::parse("linux/arm64").unwrap();
        assert_eq!(
            select_platform(&manifests, &arm64_bare)
                .unwrap()
                .digest
                .to_string(),
            digest('b')
        );
        let aarch64 = Platform::parse("linux/aarch64").unwrap();
        assert_eq!(
            select_platform(&manifests, &aarch64)
                .unwrap()
                .digest
                .to_string(),
            digest('b')
        );
    }

    fn desc(c: char, platform: Option<&str>) -> Descriptor {
        let platform = platform.map(|p| {
            let mut parts = p.split('/');
            Platform {
                os: parts.next().unwrap().into(),
                architecture: parts.next().unwrap().into(),
                variant: parts.next().map(str::to_string),
            }
        });
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::parse(&digest(c)).unwrap(),
            size: 1,
            platform,
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn arm_prefers_exact_variant_then_newest_compatible() {
        let list = vec![
            desc('5', Some("linux/arm/v5")),
            desc('6', Some("linux/arm/v6")),
            desc('7', Some("linux/arm/v7")),
            desc('8', Some("linux/arm64/v8")),
        ];
        let pick = |p: &str, l: &[Descriptor]| {
            select_platform(l, &Platform::parse(p).unwrap()).map(|d| d.digest.to_string())
        };
        assert_eq!(pick("linux/arm/v7", &list).unwrap(), digest('7'));
        assert_eq!(pick("linux/arm/v6", &list).unwrap(), digest('6'));
        assert_eq!(pick("linux/armhf", &list).unwrap(), digest('7'));
        assert_eq!(pick("linux/armel", &list).unwrap(), digest('6'));
        // Without an exact entry, the newest variant the node can run wins.
        assert_eq!(pick("linux/arm/v7", &list[..2]).unwrap(), digest('6'));
        assert_eq!(pick("linux/arm/v7", &list[..1]).unwrap(), digest('5'));
        // A v6 node cannot run v7.
        assert!(pick("linux/arm/v6", &list[2..]).is_err());
        // An arm entry without variant counts as v7.
        let no_variant = vec![desc('9', Some("linux/arm"))];
        assert_eq!(pick("linux/arm/v7", &no_variant).unwrap(), digest('9'));
    }

    #[test]
    fn amd64_variants() {
        let list = vec![
            desc('1', Some("linux/amd64")),
            desc('3', Some("linux/amd64/v3")),
        ];
        let pick = |p: &str| {
            select_platform(&list, &Platform::parse(p).unwrap())
                .unwrap()
                .digest
                .to_string()
        };
        assert_eq!(pick("linux/amd64"), digest('1'));
        assert_eq!(pick("linux/amd64/v1"), digest('1'));
        assert_eq!(pick("linux/amd64/v3"), digest('3'));
        assert_eq!(pick("linux/amd64/v2"), digest('1'));
        assert_eq!(pick("linux/x86_64"), digest('1'));
    }

    #[test]
    fn no_platform_match_lists_available() {
        let list = vec![
            desc('1', Some("linux/amd64")),
            desc('2', Some("linux/arm/v7")),
            desc('3', None),
            desc('4', Some("linux/amd64")),
        ];
        let err = select_platform(&list, &Platform::parse("linux/arm64/v8").unwrap()).unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "no manifest for platform linux/arm64/v8 in the image index; available: linux/amd64, linux/arm/v7"
        );
        let err = select_platform(&[desc('3', None)], &Platform::parse("linux/amd64").unwrap())
            .unwrap_err();
        assert!(err.to_string().ends_with("available: none"), "{err}");
        let err = select_platform(&list, &Platform::parse("windows/amd64").unwrap()).unwrap_err();
        assert!(matches!(err, Error::NotFound(_)));
    }

    #[test]
    fn refuses_schema1() {
        let body =
            br#"{"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": [], "history": []}"#;
        for header in [
            Some(DOCKER_SCHEMA1),
            Some(DOCKER_SCHEMA1_SIGNED),
            None,
            Some("application/json"),
        ] {
            let err = parse_manifest(header, body).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            assert!(
                err.to_string()
                    .contains("schema 1 manifests are not supported"),
                "{err}"
            );
            assert!(err.to_string().contains("push the image again"), "{err}");
        }
        // By header alone, even with a body that is not JSON.
        let err = parse_manifest(Some(DOCKER_SCHEMA1_SIGNED), b"not json").unwrap_err();
        assert!(err.to_string().contains("schema 1"), "{err}");
        // By the body's mediaType.
        let body = format!(r#"{{"mediaType": "{DOCKER_SCHEMA1}"}}"#);
        let err = parse_manifest(None, body.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("schema 1"), "{err}");
    }

    #[test]
    fn refuses_unknown_media_type() {
        let t = "application/vnd.example.thing.v1+json";
        let body = format!(r#"{{"schemaVersion": 2, "mediaType": "{t}", "config": {{}}}}"#);
        for header in [Some(t), None] {
            let err = parse_manifest(header, body.as_bytes()).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            assert!(err.to_string().contains(t), "{err}");
        }
        let body = image_json(Some(OCI_MANIFEST), "c", OCI_LAYER);
        let err = parse_manifest(Some(t), body.as_bytes()).unwrap_err();
        assert!(err.to_string().contains(t), "{err}");
    }

    #[test]
    fn refuses_malformed() {
        let bad_digest =
            image_json(Some(OCI_MANIFEST), "c", OCI_LAYER).replace(&digest('1'), "sha256:123");
        let no_config =
            format!(r#"{{"schemaVersion": 2, "mediaType": "{OCI_MANIFEST}", "layers": []}}"#);
        let no_layers = format!(
            r#"{{"schemaVersion": 2, "mediaType": "{OCI_MANIFEST}", "config": {{"mediaType": "c", "digest": "{}", "size": 1}}}}"#,
            digest('c')
        );
        let config_without_digest = format!(
            r#"{{"schemaVersion": 2, "mediaType": "{OCI_MANIFEST}", "config": {{"size": 1}}, "layers": []}}"#
        );
        let no_manifests = format!(r#"{{"schemaVersion": 2, "mediaType": "{OCI_INDEX}"}}"#);
        let bad_index_digest = index_json(OCI_INDEX, OCI_MANIFEST).replace(&digest('b'), "md5:00");
        let negative_size = image_json(Some(OCI_MANIFEST), "c", OCI_LAYER).replace("1469", "-1");
        let kind_mismatch = image_json(Some(OCI_MANIFEST), "c", OCI_LAYER);
        let cases: Vec<(Option<&str>, String)> = vec![
            (Some(OCI_MANIFEST), "{".into()),
            (None, "[]".into()),
            (None, "{}".into()),
            (Some(OCI_MANIFEST), bad_digest),
            (Some(OCI_MANIFEST), no_config),
            (None, no_layers),
            (None, config_without_digest),
            (None, no_manifests),
            (None, bad_index_digest),
            (None, negative_size),
            (Some(OCI_INDEX), kind_mismatch),
            (None, r#"{"schemaVersion": 3, "manifests": []}"#.into()),
            (None, r#"{"schemaVersion": 2, "manifests": {}}"#.into()),
        ];
        for (header, body) in cases {
            let err = parse_manifest(header, body.as_bytes()).unwrap_err();
            assert!(matches!(err, Error::BadContent(_)), "{body}: {err:?}");
        }
        let bad_digest =
            image_json(Some(OCI_MANIFEST), "c", OCI_LAYER).replace(&digest('2'), "sha256:zz");
        let err = parse_manifest(None, bad_digest.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("layer 1"), "{err}");
        assert!(err.to_string().contains("sha256:zz"), "{err}");
    }

    #[test]
    fn layer_compression_table() {
        let ok = [
            (OCI_LAYER, Compression::None),
            (OCI_LAYER_GZIP, Compression::Gzip),
            (OCI_LAYER_ZSTD, Compression::Zstd),
            (DOCKER_LAYER_GZIP, Compression::Gzip),
            (DOCKER_LAYER, Compression::None),
        ];
        for (t, c) in ok {
            assert_eq!(layer_compression(t).unwrap(), c, "{t}");
        }
        let foreign = [
            DOCKER_FOREIGN_LAYER,
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        ];
        for t in foreign {
            let err = layer_compression(t).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)));
            assert!(
                err.to_string().contains("foreign layers are not supported"),
                "{err}"
            );
        }
        for t in [
            "",
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/octet-stream",
        ] {
            let err = layer_compression(t).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)));
            assert!(err.to_string().contains(&format!("{t:?}")), "{err}");
        }
    }

    #[test]
    fn parses_config() {
        let body = format!(
            r#"{{
  "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
  "config": {{
    "User": "1000:1000", "Env": ["PATH=/usr/bin", "A=b"],
    "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "WorkingDir": "/app",
    "Labels": {{"maintainer": "me"}}, "ExposedPorts": {{"80/tcp": {{}}}},
    "Volumes": {{"/data": {{}}}}, "StopSignal": "SIGTERM", "Hostname": ""
  }},
  "rootfs": {{"type": "layers", "diff_ids": ["{}", "{}"]}},
  "history": [{{"created_by": "ADD file"}}]
}}"#,
            digest('1'),
            digest('2')
        );
        let c = parse_config(body.as_bytes()).unwrap();
        assert_eq!(c.os, "linux");
        assert_eq!(c.architecture, "amd64");
        assert_eq!(c.created.as_deref(), Some("2024-01-01T00:00:00Z"));
        assert_eq!(c.config.env, vec!["PATH=/usr/bin", "A=b"]);
        assert_eq!(
            c.config.entrypoint,
            Some(vec!["/bin/sh".to_string(), "-c".into()])
        );
        assert_eq!(c.config.cmd, Some(vec!["echo hi".to_string()]));
        assert_eq!(c.config.working_dir.as_deref(), Some("/app"));
        assert_eq!(c.config.labels["maintainer"], "me");
        assert!(c.config.exposed_ports.contains_key("80/tcp"));
        assert!(c.config.volumes.contains_key("/data"));
        assert_eq!(c.config.stop_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(c.rootfs.diff_ids.len(), 2);
        assert_eq!(c.rootfs.diff_ids[1].to_string(), digest('2'));
        assert_eq!(c.diff_ids().unwrap(), c.rootfs.diff_ids);
        assert_eq!(c.history.len(), 1);
        assert_eq!(image_user(&c), (Some(1000), String::new()));

        // Serializing keeps Docker's names and round-trips.
        let again = serde_json::to_vec(&c).unwrap();
        let text = String::from_utf8(again.clone()).unwrap();
        assert!(
            text.contains("\"Entrypoint\"") && text.contains("\"diff_ids\""),
            "{text}"
        );
        let c2 = parse_config(&again).unwrap();
        assert_eq!(c2.rootfs.diff_ids, c.rootfs.diff_ids);
        assert_eq!(c2.config.cmd, c.config.cmd);
    }

    #[test]
    fn config_tolerates_nulls() {
        let body = br#"{
  "architecture": "arm64", "variant": "v8", "os": "linux", "created": null, "author": null,
  "config": {"User": null, "Env": null, "Entrypoint": null, "Cmd": null, "WorkingDir": null,
             "Labels": null, "ExposedPorts": null, "Volumes": null, "StopSignal": null},
  "rootfs": {"type": "layers", "diff_ids": null},
  "history": null
}"#;
        let c = parse_config(body).unwrap();
        assert_eq!(c.variant.as_deref(), Some("v8"));
        assert!(c.config.env.is_empty());
        assert_eq!(c.config.entrypoint, None);
        assert!(c.config.labels.is_empty());
        assert!(c.rootfs.diff_ids.is_empty());
        assert!(c.history.is_empty());
        assert_eq!(image_user(&c), (None, String::new()));

        let c =
            parse_config(br#"{"config": null, "rootfs": {"type": "layers"}, "os": null}"#).unwrap();
        assert_eq!(c.os, "");
        assert!(c.config.cmd.is_none());

        // Old configs may have a string Cmd.
        let c = parse_config(br#"{"config": {"Cmd": "/bin/sh"}, "rootfs": {"type": "layers"}}"#)
            .unwrap();
        assert_eq!(c.config.cmd, Some(vec!["/bin/sh".to_string()]));
    }

    #[test]
    fn config_refuses_bad_rootfs() {
        let cases: Vec<&[u8]> = vec![
            b"{",
            b"{}",
            br#"{"rootfs": null}"#,
            br#"{"rootfs": {"type": "other", "diff_ids": []}}"#,
            br#"{"rootfs": {"type": "layers", "diff_ids": ["sha256:abc"]}}"#,
            br#"{"rootfs": {"type": "layers", "diff_ids": [1]}}"#,
        ];
        for body in cases {
            let err = parse_config(body).unwrap_err();
            assert!(matches!(err, Error::BadContent(_)), "{err:?}");
        }
        let err = parse_config(br#"{"rootfs": {"type": "layers", "diff_ids": ["sha256:abc"]}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("sha256:abc"), "{err}");
    }

    #[test]
    fn image_user_cases() {
        let with_user = |u: Option<&str>| ImageConfig {
            config: RunConfig {
                user: u.map(str::to_string),
                ..Default::default()
            },
            ..Default::default()
        };
        let cases = [
            (None, None, ""),
            (Some(""), None, ""),
            (Some("0"), Some(0), ""),
            (Some("1000"), Some(1000), ""),
            (Some("1000:1000"), Some(1000), ""),
            (Some("1000:staff"), Some(1000), ""),
            (Some("nobody"), None, "nobody"),
            (Some("www-data:www-data"), None, "www-data"),
            (Some(":100"), None, ""),
        ];
        for (user, uid, name) in cases {
            assert_eq!(
                image_user(&with_user(user)),
                (uid, name.to_string()),
                "{user:?}"
            );
        }
    }

    #[test]
    fn platform_parse_and_display() {
        let cases = [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("Linux/AMD64", "linux/amd64"),
            ("linux/arm64/v8", "linux/arm64/v8"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/8", "linux/arm64/v8"),
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/i386", "linux/386"),
            ("linux/s390x", "linux/s390x"),
            ("linux/ppc64le", "linux/ppc64le"),
            ("linux/riscv64", "linux/riscv64"),
        ];
        for (input, want) in cases {
            let p = Platform::parse(input).unwrap();
            assert_eq!(p.to_string(), want, "{input}");
            assert_eq!(Platform::parse(want).unwrap(), p, "{want}");
        }
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/",
            "linux/amd64/v1/x",
            "linux/am d64",
        ] {
            let err = Platform::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn platform_matching() {
        let p = |s: &str| Platform::parse(s).unwrap();
        let raw = |os: &str, arch: &str, v: Option<&str>| Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: v.map(str::to_string),
        };
        assert!(p("linux/amd64").matches(&raw("linux", "amd64", None)));
        assert!(p("linux/amd64").matches(&raw("linux", "amd64", Some("v1"))));
        assert!(p("linux/amd64").matches(&raw("linux", "x86_64", None)));
        assert!(!p("linux/amd64").matches(&raw("linux", "amd64", Some("v2"))));
        assert!(!p("linux/amd64").matches(&raw("windows", "amd64", None)));
        assert!(!p("linux/amd64").matches(&raw("linux", "arm64", None)));
        assert!(p("linux/arm64/v8").matches(&raw("linux", "arm64", None)));
        assert!(p("linux/arm64").matches(&raw("linux", "arm64", Some("v8"))));
        assert!(p("linux/arm64").matches(&raw("linux", "aarch64", Some(""))));
        assert!(!p("linux/arm64").matches(&raw("linux", "arm64", Some("v9"))));
        assert!(p("linux/arm/v7").matches(&raw("linux", "arm", Some("v6"))));
        assert!(p("linux/arm/v7").matches(&raw("linux", "arm", Some("v5"))));
        assert!(!p("linux/arm/v6").matches(&raw("linux", "arm", Some("v7"))));
        assert!(!p("linux/arm/v7").matches(&raw("linux", "arm64", None)));
        assert!(!p("linux/amd64").matches(&raw("", "", None)));
    }

    #[test]
    fn host_platform() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        assert!(!h.architecture.is_empty());
        assert!(h.matches(&h));
        if cfg!(target_arch = "x86_64") {
            assert_eq!(h.to_string(), "linux/amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(h.to_string(), "linux/arm64/v8");
        }
        // Display then parse gives the same platform back.
        assert_eq!(Platform::parse(&h.to_string()).unwrap(), h);
    }

    #[test]
    fn accepted_types() {
        assert_eq!(ACCEPTED_MANIFESTS.len(), 4);
        for t in ACCEPTED_MANIFESTS {
            assert!(is_known_type(t));
        }
    }
}
