//! Test images built in Rust and written as OCI image layouts, pushed with `skopeo copy`.
//!
//! * [`Layer`]: a tar layer described entry by entry (dirs, files, symlinks, hard links,
//!   devices, fifos, whiteouts, opaque markers, xattrs as PAX `SCHILY.xattr.*` records).
//!   Layers are deterministic: the same description always gives the same bytes and digests.
//! * [`ImageSpec`]: layers + config + platform + [`Compression`] + [`Format`] (OCI or Docker
//!   media types); [`ImageSpec::write`] writes it into an OCI layout under a tag.
//! * [`MultiPlatform`]: an OCI index (or Docker manifest list) with one image per platform,
//!   each carrying `/platform` with its platform string (`linux/arm64/v8`).
//! * [`push`] copies a tag of a layout to a registry with `skopeo copy --preserve-digests`,
//!   so what the registry serves has exactly the digests this module computed;
//!   [`push_image`] / [`push_index`] do write + push against a
//!   [`Registry`](crate::registry::Registry) in one call.
//! * [`fixtures`]: ready-made images (busybox base, multi-layer, many layers, sized).
//!
//! Layer blobs are streamed to disk (tar -> diff_id hash -> compressor -> digest hash ->
//! file), so multi-GiB images for benchmarks need no memory.

pub mod fixtures;
mod push;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub use fixtures::busybox_base;
pub use push::{inspect_raw, push, push_image, push_index, PushOptions};

/// mtime of every entry unless set otherwise (2023-11-14).
pub const DEFAULT_MTIME: u64 = 1_700_000_000;
/// `created` of every image config.
pub const CREATED: &str = "2024-01-01T00:00:00Z";

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker image manifest v2 schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Annotation naming a tag in a layout's `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// How layer blobs are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

/// Which media types manifests, configs and layers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `application/vnd.oci.image.*`.
    #[default]
    Oci,
    /// `application/vnd.docker.*` (manifest v2 schema 2); no zstd.
    Docker,
}

impl Format {
    fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }

    fn index_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        }
    }

    fn config_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }

    fn layer_type(self, c: Compression) -> anyhow::Result<&'static str> {
        Ok(match (self, c) {
            (Format::Oci, Compression::None) => OCI_LAYER_TAR,
            (Format::Oci, Compression::Gzip) => OCI_LAYER_GZIP,
            (Format::Oci, Compression::Zstd) => OCI_LAYER_ZSTD,
            (Format::Docker, Compression::None) => DOCKER_LAYER_TAR,
            (Format::Docker, Compression::Gzip) => DOCKER_LAYER_GZIP,
            (Format::Docker, Compression::Zstd) => bail!("Docker format has no zstd layers"),
        })
    }

    /// skopeo's `--format` value.
    fn skopeo_name(self) -> &'static str {
        match self {
            Format::Oci => "oci",
            Format::Docker => "v2s2",
        }
    }
}

/// Mode, owner, mtime and xattrs of a layer entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Extended attributes, written as PAX `SCHILY.xattr.<key>` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    /// `mode`, owned by root, [`DEFAULT_MTIME`], no xattrs.
    pub fn mode(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            xattrs: Vec::new(),
        }
    }

    /// Sets the owner.
    pub fn owner(mut self, uid: u64, gid: u64) -> Meta {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Sets the mtime (seconds since the epoch).
    pub fn mtime(mut self, mtime: u64) -> Meta {
        self.mtime = mtime;
        self
    }

    /// Adds an extended attribute, e.g. `xattr("user.cairn", b"1")`.
    pub fn xattr(mut self, key: &str, value: &[u8]) -> Meta {
        self.xattrs.push((key.to_string(), value.to_vec()));
        self
    }
}

/// Bytes of a regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Bytes(Arc<Vec<u8>>),
    /// `len` pseudo-random bytes from `seed` (incompressible, generated while writing).
    Random {
        seed: u64,
        len: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File(Content),
    Symlink(String),
    Hardlink(String),
    CharDevice { major: u32, minor: u32 },
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    path: String,
    kind: Kind,
    meta: Meta,
}

/// One image layer, described entry by entry in archive order.
///
/// Paths are relative to the image root; a leading `/` is dropped. Parent directories are
/// not added implicitly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    entries: Vec<Entry>,
    quirks: TarQuirks,
}

/// How some real image tools write layer tars, which a runtime must take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TarQuirks {
    /// Written verbatim before every name and hard-link target: `/` or `./`.
    name_prefix: &'static str,
    /// The tar ends right after the last entry's data: no padding, no end-of-archive.
    cut_after_last_data: bool,
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Layer {
        Layer::default()
    }

    /// Writes every name and hard-link target with `prefix` (`"/"` or `"./"`) in front,
    /// as some image builders do (names of at most 100 bytes).
    pub fn names_prefixed(mut self, prefix: &'static str) -> Layer {
        self.quirks.name_prefix = prefix;
        self
    }

    /// Ends the tar right after the last entry's data, without its padding and without
    /// the end-of-archive blocks (the last entry must be a regular file).
    pub fn cut_after_last_data(mut self) -> Layer {
        self.quirks.cut_after_last_data = true;
        self
    }

    fn push(mut self, path: &str, kind: Kind, meta: Meta) -> Layer {
        let path = path.trim_start_matches('/').to_string();
        self.entries.push(Entry { path, kind, meta });
        self
    }

    /// A directory owned by root.
    pub fn dir(self, path: &str, mode: u32) -> Layer {
        self.dir_meta(path, Meta::mode(mode))
    }

    /// A directory with full metadata.
    pub fn dir_meta(self, path: &str, meta: Meta) -> Layer {
        self.push(path, Kind::Dir, meta)
    }

    /// A regular file owned by root.
    pub fn file(self, path: &str, data: impl AsRef<[u8]>, mode: u32) -> Layer {
        self.file_meta(path, data, Meta::mode(mode))
    }

    /// A regular file with full metadata (owner, mtime, xattrs).
    pub fn file_meta(self, path: &str, data: impl AsRef<[u8]>, meta: Meta) -> Layer {
        let content = Content::Bytes(Arc::new(data.as_ref().to_vec()));
        self.push(path, Kind::File(content), meta)
    }

    /// A regular file sharing already loaded bytes (no copy).
    pub fn file_shared(self, path: &str, data: Arc<Vec<u8>>, meta: Meta) -> Layer {
        self.push(path, Kind::File(Content::Bytes(data)), meta)
    }

    /// A 0644 file of `len` incompressible pseudo-random bytes determined by `seed`.
    pub fn random_file(self, path: &str, len: u64, seed: u64) -> Layer {
        let content = Content::Random { seed, len };
        self.push(path, Kind::File(content), Meta::mode(0o644))
    }

    /// A symbolic link to `target` (kept verbatim, may be absolute or relative).
    pub fn symlink(self, path: &str, target: &str) -> Layer {
        self.push(path, Kind::Symlink(target.to_string()), Meta::mode(0o777))
    }

    /// A hard link to the earlier entry `target` (an archive path; a leading `/` is dropped).
    pub fn hardlink(self, path: &str, target: &str) -> Layer {
        let target = target.trim_start_matches('/').to_string();
        self.push(path, Kind::Hardlink(target), Meta::mode(0o644))
    }

    /// A character device node.
    pub fn char_device(self, path: &str, major: u32, minor: u32, mode: u32) -> Layer {
        self.push(path, Kind::CharDevice { major, minor }, Meta::mode(mode))
    }

    /// A named pipe.
    pub fn fifo(self, path: &str, mode: u32) -> Layer {
        self.push(path, Kind::Fifo, Meta::mode(mode))
    }

    /// Deletes `path` of a lower layer: adds the empty file `dir/.wh.name`.
    pub fn whiteout(self, path: &str) -> Layer {
        let path = path.trim_start_matches('/').trim_end_matches('/');
        let marker = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.push(&marker, Kind::File(empty()), Meta::mode(0o644))
    }

    /// Hides everything lower layers have in directory `dir`: adds `dir/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> Layer {
        let dir = dir.trim_start_matches('/').trim_end_matches('/');
        let marker = format!("{dir}/.wh..wh..opq");
        self.push(&marker, Kind::File(empty()), Meta::mode(0o644))
    }

    /// Adds an xattr to the most recent entry at `path`.
    ///
    /// # Panics
    /// If the layer has no entry at `path` (a mistake in the test's description).
    pub fn xattr(mut self, path: &str, key: &str, value: &[u8]) -> Layer {
        let path = path.trim_start_matches('/');
        let entry = self.entries.iter_mut().rev().find(|e| e.path == path);
        let Some(entry) = entry else {
            panic!("Layer::xattr: no entry {path}");
        };
        entry.meta.xattrs.push((key.to_string(), value.to_vec()));
        self
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the layer has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the uncompressed tar to `w` and returns `w`.
    pub fn write_tar<W: Write>(&self, mut w: W) -> io::Result<W> {
        if self.quirks == TarQuirks::default() {
            let mut builder = tar::Builder::new(w);
            for entry in &self.entries {
                append_entry(&mut builder, entry, "")?;
            }
            return builder.into_inner();
        }
        let mut builder = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            append_entry(&mut builder, entry, self.quirks.name_prefix)?;
        }
        let mut bytes = builder.into_inner()?;
        if self.quirks.cut_after_last_data {
            let last = match self.entries.last().map(|e| &e.kind) {
                Some(Kind::File(Content::Bytes(data))) => data.len(),
                _ => return Err(io::Error::other("cut_after_last_data needs a last file")),
            };
            let padding = (512 - last % 512) % 512;
            bytes.truncate(bytes.len() - 1024 - padding);
        }
        w.write_all(&bytes)?;
        Ok(w)
    }

    /// The uncompressed tar bytes.
    pub fn tar(&self) -> Vec<u8> {
        self.write_tar(Vec::new())
            .expect("writing a tar into memory cannot fail")
    }

    /// `sha256:HEX` of the uncompressed tar.
    pub fn diff_id(&self) -> String {
        let sink = HashWriter::new(io::sink());
        let sink = self
            .write_tar(sink)
            .expect("writing a tar into a hasher cannot fail");
        sink.digest()
    }

    /// The tar compressed with `c`.
    pub fn compressed(&self, c: Compression) -> Vec<u8> {
        let enc = Encoder::new(c, Vec::new()).expect("in-memory encoder");
        let enc = self
            .write_tar(enc)
            .expect("writing a tar into memory cannot fail");
        enc.finish().expect("finishing an in-memory encoder")
    }
}

fn empty() -> Content {
    Content::Bytes(Arc::new(Vec::new()))
}

/// Appends one entry (and its PAX xattr records) to the archive; with a `prefix`, its name
/// (and link target) go into the header verbatim with the prefix in front.
fn append_entry<W: Write>(b: &mut tar::Builder<W>, e: &Entry, prefix: &str) -> io::Result<()> {
    if !prefix.is_empty() {
        return append_raw(b, e, prefix);
    }
    if !e.meta.xattrs.is_empty() {
        let keys: Vec<String> = e
            .meta
            .xattrs
            .iter()
            .map(|(k, _)| format!("SCHILY.xattr.{k}"))
            .collect();
        let records = keys
            .iter()
            .zip(&e.meta.xattrs)
            .map(|(k, (_, v))| (k.as_str(), v.as_slice()));
        b.append_pax_extensions(records)?;
    }
    let mut h = tar::Header::new_ustar();
    h.set_mode(e.meta.mode);
    h.set_uid(e.meta.uid);
    h.set_gid(e.meta.gid);
    h.set_mtime(e.meta.mtime);
    h.set_size(0);
    match &e.kind {
        Kind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            b.append_data(&mut h, &e.path, io::empty())
        }
        Kind::File(Content::Bytes(data)) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, &e.path, data.as_slice())
        }
        Kind::File(Content::Random { seed, len }) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(*len);
            b.append_data(&mut h, &e.path, RandomReader::new(*seed, *len))
        }
        Kind::Symlink(target) => {
            h.set_entry_type(tar::EntryType::Symlink);
            b.append_link(&mut h, &e.path, target)
        }
        Kind::Hardlink(target) => {
            h.set_entry_type(tar::EntryType::Link);
            b.append_link(&mut h, &e.path, target)
        }
        Kind::CharDevice { major, minor } => {
            h.set_entry_type(tar::EntryType::Char);
            h.set_device_major(*major)?;
            h.set_device_minor(*minor)?;
            b.append_data(&mut h, &e.path, io::empty())
        }
        Kind::Fifo => {
            h.set_entry_type(tar::EntryType::Fifo);
            b.append_data(&mut h, &e.path, io::empty())
        }
    }
}

/// An entry whose names the tar crate would refuse or rewrite (`/x`, `./x`), written
/// straight into a ustar header.
fn append_raw<W: Write>(b: &mut tar::Builder<W>, e: &Entry, prefix: &str) -> io::Result<()> {
    let name = format!("{prefix}{}", e.path);
    let mut h = tar::Header::new_ustar();
    if name.len() > 100 {
        return Err(io::Error::other(format!("{name}: too long for a raw name")));
    }
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_mode(e.meta.mode);
    h.set_uid(e.meta.uid);
    h.set_gid(e.meta.gid);
    h.set_mtime(e.meta.mtime);
    h.set_size(0);
    let data: &[u8] = match &e.kind {
        Kind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            &[]
        }
        Kind::File(Content::Bytes(data)) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            data
        }
        Kind::Hardlink(target) | Kind::Symlink(target) if target.len() + prefix.len() > 100 => {
            return Err(io::Error::other(format!(
                "{target}: too long for a raw link"
            )));
        }
        Kind::Hardlink(target) => {
            let target = format!("{prefix}{target}");
            h.set_entry_type(tar::EntryType::Link);
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            &[]
        }
        Kind::Symlink(target) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            &[]
        }
        _ => return Err(io::Error::other("raw names: dirs, files and links only")),
    };
    h.set_cksum();
    b.append(&h, data)
}

/// Incompressible bytes from a SplitMix64 generator: fast and the same for the same seed.
pub struct RandomReader {
    state: u64,
    remaining: u64,
    buf: [u8; 8],
    buf_pos: usize,
}

impl RandomReader {
    /// `len` bytes determined by `seed`.
    pub fn new(seed: u64, len: u64) -> RandomReader {
        RandomReader {
            state: seed,
            remaining: len,
            buf: [0; 8],
            buf_pos: 8,
        }
    }

    fn next_word(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Read for RandomReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let want = out
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let mut n = 0;
        while n < want && self.buf_pos < 8 {
            out[n] = self.buf[self.buf_pos];
            self.buf_pos += 1;
            n += 1;
        }
        while want - n >= 8 {
            let word = self.next_word().to_le_bytes();
            out[n..n + 8].copy_from_slice(&word);
            n += 8;
        }
        if n < want {
            self.buf = self.next_word().to_le_bytes();
            self.buf_pos = 0;
            while n < want {
                out[n] = self.buf[self.buf_pos];
                self.buf_pos += 1;
                n += 1;
            }
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A writer that hashes (SHA-256) and counts what passes through it.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W> HashWriter<W> {
    fn new(inner: W) -> HashWriter<W> {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A compressor for one [`Compression`].
enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn new(c: Compression, w: W) -> io::Result<Encoder<W>> {
        Ok(match c {
            Compression::None => Encoder::Plain(w),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::fast(),
            )),
            Compression::Zstd => Encoder::Zstd(zstd::Encoder::new(w, 3)?),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// A content descriptor: media type, digest, size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    /// `sha256:HEX`.
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn to_json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

/// An OS/architecture/variant triple.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/amd64`.
    pub fn linux_amd64() -> Platform {
        Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
        }
    }

    /// `linux/arm64/v8`.
    pub fn linux_arm64_v8() -> Platform {
        Platform {
            os: "linux".into(),
            arch: "arm64".into(),
            variant: Some("v8".into()),
        }
    }

    /// The platform of this machine in OCI terms (`x86_64` is `amd64`, `aarch64` is `arm64/v8`).
    pub fn host() -> Platform {
        match std::env::consts::ARCH {
            "aarch64" => Platform::linux_arm64_v8(),
            "x86_64" => Platform::linux_amd64(),
            other => Platform {
                os: "linux".into(),
                arch: other.into(),
                variant: None,
            },
        }
    }

    /// The other platform of the two [`MultiPlatform`] uses by default (the one that is
    /// not [`Platform::host`]).
    pub fn foreign() -> Platform {
        if Platform::host() == Platform::linux_amd64() {
            Platform::linux_arm64_v8()
        } else {
            Platform::linux_amd64()
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({ "os": self.os, "architecture": self.arch });
        if let Some(variant) = &self.variant {
            v["variant"] = json!(variant);
        }
        v
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// The runtime part of an image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub user: String,
    pub workdir: String,
    pub labels: BTreeMap<String, String>,
}

/// `PATH` every image gets by default.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Default for ImageConfig {
    /// `Env` = [`DEFAULT_PATH`], `Cmd` = `["sh"]`, nothing else.
    fn default() -> ImageConfig {
        ImageConfig {
            entrypoint: Vec::new(),
            cmd: vec!["sh".into()],
            env: vec![DEFAULT_PATH.into()],
            user: String::new(),
            workdir: String::new(),
            labels: BTreeMap::new(),
        }
    }
}

impl ImageConfig {
    fn to_json(&self) -> Value {
        let mut c = json!({ "Env": self.env, "Cmd": self.cmd });
        if !self.entrypoint.is_empty() {
            c["Entrypoint"] = json!(self.entrypoint);
        }
        if !self.user.is_empty() {
            c["User"] = json!(self.user);
        }
        if !self.workdir.is_empty() {
            c["WorkingDir"] = json!(self.workdir);
        }
        if !self.labels.is_empty() {
            c["Labels"] = json!(self.labels);
        }
        c
    }
}

/// Everything needed to write one single-platform image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub layers: Vec<Layer>,
    pub compression: Compression,
    pub config: ImageConfig,
    pub platform: Platform,
    pub format: Format,
}

/// What [`ImageSpec::write`] wrote: every digest a test may compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub manifest: Descriptor,
    /// The config blob; its digest is the image ID.
    pub config: Descriptor,
    /// Layer blobs, base first.
    pub layers: Vec<Descriptor>,
    /// `sha256` of each uncompressed layer tar, base first.
    pub diff_ids: Vec<String>,
    pub platform: Platform,
    pub format: Format,
}

impl BuiltImage {
    /// The image ID: the config digest.
    pub fn image_id(&self) -> &str {
        &self.config.digest
    }

    /// The manifest digest (what `name@digest` references).
    pub fn manifest_digest(&self) -> &str {
        &self.manifest.digest
    }

    /// Sum of the compressed layer sizes.
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

impl ImageSpec {
    /// `layers` with gzip, the default config, the host platform and OCI media types.
    pub fn new(layers: Vec<Layer>) -> ImageSpec {
        ImageSpec {
            layers,
            compression: Compression::Gzip,
            config: ImageConfig::default(),
            platform: Platform::host(),
            format: Format::Oci,
        }
    }

    /// Sets the layer compression.
    pub fn compression(mut self, c: Compression) -> ImageSpec {
        self.compression = c;
        self
    }

    /// Sets the media-type family.
    pub fn format(mut self, f: Format) -> ImageSpec {
        self.format = f;
        self
    }

    /// Sets the platform.
    pub fn platform(mut self, p: Platform) -> ImageSpec {
        self.platform = p;
        self
    }

    /// Replaces the runtime config.
    pub fn config(mut self, c: ImageConfig) -> ImageSpec {
        self.config = c;
        self
    }

    /// Writes the image into the OCI layout at `layout` (created if missing) and points
    /// `tag` in its `index.json` at the manifest (replacing an older entry of that tag).
    pub fn write(&self, layout: &Path, tag: &str) -> anyhow::Result<BuiltImage> {
        init_layout(layout)?;
        let built = self.write_blobs(layout)?;
        set_tag(layout, tag, &built.manifest)?;
        Ok(built)
    }

    /// Writes layers, config and manifest blobs; leaves `index.json` alone.
    fn write_blobs(&self, layout: &Path) -> anyhow::Result<BuiltImage> {
        let layer_type = self.format.layer_type(self.compression)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        let mut diff_ids = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (digest, size, diff_id) = write_layer_blob(layout, layer, self.compression)
                .with_context(|| format!("cannot write layer {i} into {}", layout.display()))?;
            layers.push(Descriptor {
                media_type: layer_type.to_string(),
                digest,
                size,
            });
            diff_ids.push(diff_id);
        }
        let config_json = self.config_json(&diff_ids);
        let config = write_json_blob(layout, self.format.config_type(), &config_json)?;
        let manifest_json = json!({
            "schemaVersion": 2,
            "mediaType": self.format.manifest_type(),
            "config": config.to_json(),
            "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        });
        let manifest = write_json_blob(layout, self.format.manifest_type(), &manifest_json)?;
        Ok(BuiltImage {
            manifest,
            config,
            layers,
            diff_ids,
            platform: self.platform.clone(),
            format: self.format,
        })
    }

    fn config_json(&self, diff_ids: &[String]) -> Value {
        let history: Vec<Value> = (0..diff_ids.len())
            .map(|i| json!({ "created": CREATED, "created_by": format!("cairn-tests layer {i}") }))
            .collect();
        let mut v = json!({
            "created": CREATED,
            "architecture": self.platform.arch,
            "os": self.platform.os,
            "config": self.config.to_json(),
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        });
        if let Some(variant) = &self.platform.variant {
            v["variant"] = json!(variant);
        }
        v
    }
}

/// An index (OCI) or manifest list (Docker) with one image per platform; each image is
/// `base` plus a layer holding `/platform` with its platform string (e.g. `linux/arm64/v8`,
/// no newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiPlatform {
    pub base: Vec<Layer>,
    /// Defaults to `linux/amd64` and `linux/arm64/v8`, in that order.
    pub platforms: Vec<Platform>,
    pub compression: Compression,
    pub format: Format,
    pub config: ImageConfig,
}

/// What [`MultiPlatform::write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltIndex {
    /// The index / manifest list itself.
    pub index: Descriptor,
    /// One image per platform, in [`MultiPlatform::platforms`] order.
    pub images: Vec<BuiltImage>,
}

impl BuiltIndex {
    /// The index digest.
    pub fn digest(&self) -> &str {
        &self.index.digest
    }

    /// The image for `platform` (e.g. `&Platform::host()`).
    pub fn image(&self, platform: &Platform) -> Option<&BuiltImage> {
        self.images.iter().find(|i| &i.platform == platform)
    }
}

impl MultiPlatform {
    /// `base` for linux/amd64 and linux/arm64/v8, gzip, OCI.
    pub fn new(base: Vec<Layer>) -> MultiPlatform {
        MultiPlatform {
            base,
            platforms: vec![Platform::linux_amd64(), Platform::linux_arm64_v8()],
            compression: Compression::Gzip,
            format: Format::Oci,
            config: ImageConfig::default(),
        }
    }

    /// Sets the media-type family.
    pub fn format(mut self, f: Format) -> MultiPlatform {
        self.format = f;
        self
    }

    /// Sets the layer compression.
    pub fn compression(mut self, c: Compression) -> MultiPlatform {
        self.compression = c;
        self
    }

    /// The single-platform spec for `platform`.
    pub fn spec_for(&self, platform: &Platform) -> ImageSpec {
        let mut layers = self.base.clone();
        layers.push(Layer::new().file("platform", platform.to_string(), 0o644));
        ImageSpec {
            layers,
            compression: self.compression,
            config: self.config.clone(),
            platform: platform.clone(),
            format: self.format,
        }
    }

    /// Writes all images and the index into the layout at `layout` under `tag`.
    pub fn write(&self, layout: &Path, tag: &str) -> anyhow::Result<BuiltIndex> {
        init_layout(layout)?;
        let mut images = Vec::with_capacity(self.platforms.len());
        for platform in &self.platforms {
            images.push(self.spec_for(platform).write_blobs(layout)?);
        }
        let manifests: Vec<Value> = images
            .iter()
            .map(|img| {
                let mut d = img.manifest.to_json();
                d["platform"] = img.platform.to_json();
                d
            })
            .collect();
        let index_json = json!({
            "schemaVersion": 2,
            "mediaType": self.format.index_type(),
            "manifests": manifests,
        });
        let index = write_json_blob(layout, self.format.index_type(), &index_json)?;
        set_tag(layout, tag, &index)?;
        Ok(BuiltIndex { index, images })
    }
}

/// Creates `layout/oci-layout`, `layout/blobs/sha256` and an empty `index.json` if missing.
fn init_layout(layout: &Path) -> anyhow::Result<()> {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)
        .with_context(|| format!("cannot create {}", blobs.display()))?;
    let marker = layout.join("oci-layout");
    if !marker.exists() {
        std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .with_context(|| format!("cannot write {}", marker.display()))?;
    }
    let index = layout.join("index.json");
    if !index.exists() {
        write_index(
            layout,
            &json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] }),
        )?;
    }
    Ok(())
}

fn read_index(layout: &Path) -> anyhow::Result<Value> {
    let path = layout.join("index.json");
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
}

fn write_index(layout: &Path, index: &Value) -> anyhow::Result<()> {
    let path = layout.join("index.json");
    let bytes = serde_json::to_vec(index).context("cannot serialize index.json")?;
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Points `tag` at `desc` in the layout's `index.json`, dropping an older entry of `tag`.
fn set_tag(layout: &Path, tag: &str, desc: &Descriptor) -> anyhow::Result<()> {
    let mut index = read_index(layout)?;
    let mut manifests = match index["manifests"].take() {
        Value::Array(list) => list,
        _ => Vec::new(),
    };
    manifests.retain(|m| m["annotations"][REF_NAME].as_str() != Some(tag));
    let mut entry = desc.to_json();
    entry["annotations"] = json!({ REF_NAME: tag });
    manifests.push(entry);
    index["manifests"] = Value::Array(manifests);
    write_index(layout, &index)
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    layout.join("blobs/sha256").join(hex)
}

/// Reads blob `digest` from the layout.
pub fn read_blob(layout: &Path, digest: &str) -> anyhow::Result<Vec<u8>> {
    let path = blob_path(layout, digest);
    std::fs::read(&path).with_context(|| format!("cannot read blob {digest} at {}", path.display()))
}

/// Writes `value` as a JSON blob and returns its descriptor.
fn write_json_blob(layout: &Path, media_type: &str, value: &Value) -> anyhow::Result<Descriptor> {
    let bytes = serde_json::to_vec(value).context("cannot serialize a JSON blob")?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let path = blob_path(layout, &digest);
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Descriptor {
        media_type: media_type.to_string(),
        digest,
        size: bytes.len() as u64,
    })
}

/// Streams `layer` through the compressor into a blob; returns (digest, size, diff_id).
fn write_layer_blob(
    layout: &Path,
    layer: &Layer,
    c: Compression,
) -> anyhow::Result<(String, u64, String)> {
    let blobs = layout.join("blobs/sha256");
    let tmp = tempfile::NamedTempFile::new_in(&blobs)
        .with_context(|| format!("cannot create a temp file in {}", blobs.display()))?;
    let file = tmp.reopen().context("cannot reopen the layer temp file")?;
    let compressed = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
    let uncompressed = HashWriter::new(Encoder::new(c, compressed)?);
    let uncompressed = layer.write_tar(uncompressed)?;
    let diff_id = uncompressed.digest();
    let mut compressed = uncompressed.inner.finish()?;
    compressed.flush()?;
    let digest = compressed.digest();
    let size = compressed.len;
    let dest = blob_path(layout, &digest);
    tmp.persist(&dest)
        .with_context(|| format!("cannot move the layer blob to {}", dest.display()))?;
    Ok((digest, size, diff_id))
}

/// Digests of one tag of a layout, as [`layout_digests`] reads them back from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutDigests {
    /// Media type of what the tag points at (manifest or index).
    pub media_type: String,
    /// Digest of the manifest or index.
    pub digest: String,
    /// The config digest (image ID) when the tag is a single image; `None` for an index.
    pub config: Option<String>,
}

/// Reads `tag` from the layout's `index.json` (and its manifest, for the config digest).
pub fn layout_digests(layout: &Path, tag: &str) -> anyhow::Result<LayoutDigests> {
    let index = read_index(layout)?;
    let empty = Vec::new();
    let manifests = index["manifests"].as_array().unwrap_or(&empty);
    let Some(desc) = manifests
        .iter()
        .find(|m| m["annotations"][REF_NAME].as_str() == Some(tag))
    else {
        bail!("tag {tag} not in {}/index.json", layout.display());
    };
    let media_type = desc["mediaType"].as_str().unwrap_or_default().to_string();
    let Some(digest) = desc["digest"].as_str() else {
        bail!("tag {tag} in {}/index.json has no digest", layout.display());
    };
    let config = if media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST {
        None
    } else {
        let manifest: Value = serde_json::from_slice(&read_blob(layout, digest)?)
            .with_context(|| format!("manifest {digest} is not JSON"))?;
        manifest["config"]["digest"].as_str().map(str::to_string)
    };
    Ok(LayoutDigests {
        media_type,
        digest: digest.to_string(),
        config,
    })
}

/// The manifest or index digest `tag` points at.
pub fn layout_digest(layout: &Path, tag: &str) -> anyhow::Result<String> {
    Ok(layout_digests(layout, tag)?.digest)
}

/// The config digest (image ID) of single-image `tag`.
pub fn layout_image_id(layout: &Path, tag: &str) -> anyhow::Result<String> {
    layout_digests(layout, tag)?
        .config
        .with_context(|| format!("tag {tag} in {} is an index", layout.display()))
}

/// `sha256:HEX` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Layer {
        Layer::new()
            .dir("data", 0o755)
            .file("data/a.txt", "a\n", 0o644)
            .file_meta(
                "data/x",
                "x",
                Meta::mode(0o600)
                    .owner(1000, 1000)
                    .xattr("user.cairn", b"1"),
            )
            .symlink("data/s", "a.txt")
            .hardlink("data/h", "data/a.txt")
            .char_device("data/null", 1, 3, 0o666)
            .fifo("data/fifo", 0o600)
            .whiteout("data/gone")
            .opaque("data/op")
            .random_file("data/r", 10_000, 7)
    }

    #[test]
    fn layers_are_reproducible() {
        assert_eq!(sample().tar(), sample().tar());
        assert_eq!(sample().diff_id(), sha256_digest(&sample().tar()));
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(sample().compressed(c), sample().compressed(c));
        }
        let other = sample().file("data/b", "b", 0o644);
        assert_ne!(other.diff_id(), sample().diff_id());
    }

    #[test]
    fn tar_has_every_entry_kind() {
        let tar = sample().tar();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            if path == "data/x" {
                let pax: Vec<(String, Vec<u8>)> = entry
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|e| {
                        let e = e.unwrap();
                        (e.key().unwrap().to_string(), e.value_bytes().to_vec())
                    })
                    .collect();
                assert_eq!(
                    pax,
                    vec![("SCHILY.xattr.user.cairn".to_string(), b"1".to_vec())]
                );
                assert_eq!(entry.header().uid().unwrap(), 1000);
            }
            if path == "data/null" {
                assert_eq!(entry.header().device_major().unwrap(), Some(1));
                assert_eq!(entry.header().device_minor().unwrap(), Some(3));
            }
            if path == "data/h" {
                assert_eq!(
                    entry.link_name().unwrap().unwrap().to_str(),
                    Some("data/a.txt")
                );
            }
            if path == "data/r" {
                let mut buf = Vec::new();
                entry.read_to_end(&mut buf).unwrap();
                assert_eq!(buf.len(), 10_000);
            }
            seen.push((path, kind));
        }
        let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "data",
                "data/a.txt",
                "data/x",
                "data/s",
                "data/h",
                "data/null",
                "data/fifo",
                "data/.wh.gone",
                "data/op/.wh..wh..opq",
                "data/r"
            ]
        );
        assert_eq!(seen[3].1, tar::EntryType::Symlink);
        assert_eq!(seen[4].1, tar::EntryType::Link);
        assert_eq!(seen[5].1, tar::EntryType::Char);
        assert_eq!(seen[6].1, tar::EntryType::Fifo);
    }

    #[test]
    fn compressed_layers_decompress_to_the_tar() {
        let layer = sample();
        let tar = layer.tar();
        let mut gz = Vec::new();
        flate2::read::GzDecoder::new(layer.compressed(Compression::Gzip).as_slice())
            .read_to_end(&mut gz)
            .unwrap();
        assert_eq!(gz, tar);
        let zst = zstd::decode_all(layer.compressed(Compression::Zstd).as_slice()).unwrap();
        assert_eq!(zst, tar);
        assert_eq!(layer.compressed(Compression::None), tar);
    }

    #[test]
    fn random_content_is_deterministic_and_incompressible() {
        let mut a = Vec::new();
        RandomReader::new(1, 100_003).read_to_end(&mut a).unwrap();
        let mut b = Vec::new();
        let mut r = RandomReader::new(1, 100_003);
        let mut chunk = [0u8; 7];
        loop {
            let n = r.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            b.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(a, b);
        assert_eq!(a.len(), 100_003);
        let z = zstd::encode_all(a.as_slice(), 3).unwrap();
        assert!(z.len() > 99_000, "compressed to {}", z.len());
    }

    #[test]
    fn write_layout_and_read_back_digests() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ImageSpec::new(vec![sample(), Layer::new().file("b", "b", 0o644)])
            .compression(Compression::Zstd);
        let built = spec.write(dir.path(), "v1").unwrap();
        let again = spec.write(dir.path(), "v1").unwrap();
        assert_eq!(built, again);
        let d = layout_digests(dir.path(), "v1").unwrap();
        assert_eq!(d.digest, built.manifest.digest);
        assert_eq!(d.config.as_deref(), Some(built.image_id()));
        assert_eq!(d.media_type, OCI_MANIFEST);
        assert_eq!(built.diff_ids[0], sample().diff_id());
        assert_eq!(built.layers[0].media_type, OCI_LAYER_ZSTD);
        let blob = read_blob(dir.path(), &built.layers[0].digest).unwrap();
        assert_eq!(sha256_digest(&blob), built.layers[0].digest);
        assert_eq!(blob.len() as u64, built.layers[0].size);
        let manifest = read_blob(dir.path(), built.manifest_digest()).unwrap();
        assert_eq!(sha256_digest(&manifest), built.manifest.digest);
        let config: Value =
            serde_json::from_slice(&read_blob(dir.path(), built.image_id()).unwrap()).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][1], json!(built.diff_ids[1]));
        // A second tag in the same layout keeps the first.
        let other = ImageSpec::new(vec![Layer::new().file("c", "c", 0o644)]);
        other.write(dir.path(), "v2").unwrap();
        assert_eq!(
            layout_digest(dir.path(), "v1").unwrap(),
            built.manifest.digest
        );
    }

    #[test]
    fn docker_format_refuses_zstd() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ImageSpec::new(vec![sample()])
            .format(Format::Docker)
            .compression(Compression::Zstd);
        assert!(spec.write(dir.path(), "x").is_err());
    }

    #[test]
    fn multi_platform_index() {
        let dir = tempfile::tempdir().unwrap();
        let built = MultiPlatform::new(vec![sample()])
            .format(Format::Docker)
            .write(dir.path(), "multi")
            .unwrap();
        let d = layout_digests(dir.path(), "multi").unwrap();
        assert_eq!(d.media_type, DOCKER_MANIFEST_LIST);
        assert_eq!(d.config, None);
        let index: Value =
            serde_json::from_slice(&read_blob(dir.path(), built.digest()).unwrap()).unwrap();
        assert_eq!(index["manifests"][1]["platform"]["variant"], json!("v8"));
        let arm = built.image(&Platform::linux_arm64_v8()).unwrap();
        assert_eq!(arm.manifest.media_type, DOCKER_MANIFEST);
        assert_ne!(arm.image_id(), built.images[0].image_id());
    }
}
