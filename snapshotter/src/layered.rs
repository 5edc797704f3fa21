//! Reading a file of an image as its container will see it, through the stacked layer
//! dirs of a snapshot (topmost first), without mounting them: a whiteout (a 0/0 character
//! device) or an opaque directory hides what lower layers have, as overlayfs does. This is
//! the read side of what [`crate::unpack`] writes (OCI whiteouts become those). cairnd
//! uses it for the image's /etc/passwd and /etc/group when it builds a container's spec.
//! Runs in cairnd.
//! Runs in cairnd (the image side).

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// The overlayfs xattr [`crate::unpack`] sets on an opaque directory.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// The opaque markers a layer may carry: the trusted one the unpacker writes, and the
/// user one of unprivileged overlay mounts.
const OPAQUE_XATTRS: [&str; 2] = [OPAQUE_XATTR, "user.overlay.opaque"];

/// A file of the image that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {} of the image: {source}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// What one layer says about a path.
enum Probe {
    /// The layer has the file.
    File(PathBuf),
    /// The layer hides the path from lower layers (whiteout, opaque dir, non-dir parent).
    Hidden,
    /// The layer says nothing about it: look lower.
    Absent,
}

/// Whether `meta` is an overlayfs whiteout.
pub fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether the directory `dir` is marked opaque.
pub fn is_opaque(dir: &Path) -> bool {
    OPAQUE_XATTRS.iter().any(|name| {
        let mut buf = [0u8; 8];
        matches!(rustix::fs::lgetxattr(dir, *name, &mut buf[..]), Ok(n) if buf[..n] == *b"y")
    })
}

/// Looks `rel` (e.g. `etc/passwd`) up in one layer. Symlinks are not followed: a symlinked
/// file or parent counts as hiding the path (it could point anywhere, even out of the image).
fn probe(layer: &Path, rel: &Path) -> Result<Probe, ReadError> {
    let parts: Vec<_> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut path = layer.to_path_buf();
    let mut opaque_parent = false;
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(if opaque_parent {
                    Probe::Hidden
                } else {
                    Probe::Absent
                });
            }
            Err(source) => return Err(ReadError { path, source }),
        };
        if is_whiteout(&meta) {
            return Ok(Probe::Hidden);
        }
        if i + 1 == parts.len() {
            return Ok(if meta.is_file() {
                Probe::File(path)
            } else {
                Probe::Hidden
            });
        }
        if !meta.is_dir() {
            return Ok(Probe::Hidden);
        }
        opaque_parent |= is_opaque(&path);
    }
    Ok(Probe::Absent)
}

/// The contents of `rel` in the topmost of `layers` that has it; `None` if no layer has
/// it or one above hides it.
pub fn read(layers: &[PathBuf], rel: &Path) -> Result<Option<Vec<u8>>, ReadError> {
    for layer in layers {
        match probe(layer, rel)? {
            Probe::File(path) => {
                return match fs::read(&path) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(source) => Err(ReadError { path, source }),
                };
            }
            Probe::Hidden => return Ok(None),
            Probe::Absent => {}
        }
    }
    Ok(None)
}
