//! One layer's trip from compressed bytes to an unpacked directory: digest check →
//! decompress (gzip, zstd, none) → diff-ID check → unpack, in a single streaming pass
//! with no temporary copy of the layer on disk.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};
use crate::manifest::Compression;
use crate::unpack::{unpack_layer, UnpackStats};

/// What a layer must turn out to be.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub digest: Digest,
    pub size: u64,
    pub compression: Compression,
    pub diff_id: Digest,
}

/// Streams `compressed` through verification and decompression into `target`.
/// Any mismatch, truncation or unsafe entry is an error; the caller discards `target`.
pub fn apply_layer<R: Read>(
    compressed: R,
    spec: &LayerSpec,
    target: &Path,
    parents: &[PathBuf],
) -> Result<UnpackStats> {
    let mut outer = HashingReader::new(compressed);
    let (stats, diff) = {
        let decoder: Box<dyn Read + '_> = match spec.compression {
            Compression::None => Box::new(&mut outer),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut outer)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(&mut outer)
                    .map_err(|e| bad(spec, format!("zstd: {e}")))?,
            ),
        };
        let mut inner = HashingReader::new(decoder);
        let stats = unpack_layer(&mut inner, target, parents).map_err(|e| refine(e, spec))?;
        // The tar's end-of-archive padding and anything after it still counts for the diff ID.
        let (diff, _) = inner.finish().map_err(|e| read_error(e, spec))?;
        (stats, diff)
    };
    let (digest, size) = outer.finish().map_err(|e| read_error(e, spec))?;
    if digest != spec.digest {
        return Err(bad(
            spec,
            format!("digest mismatch: got {digest} ({size} bytes)"),
        ));
    }
    if spec.size != 0 && size != spec.size {
        return Err(bad(
            spec,
            format!("size mismatch: expected {}, got {size}", spec.size),
        ));
    }
    if diff != spec.diff_id {
        return Err(bad(
            spec,
            format!("diff ID mismatch: expected {}, got {diff}", spec.diff_id),
        ));
    }
    Ok(stats)
}

fn bad(spec: &LayerSpec, msg: String) -> Error {
    Error::BadContent(format!("layer {}: {msg}", spec.digest))
}

/// An error while reading: the stream's own error (registry gone, digest) when it has one,
/// a truncated or corrupt layer otherwise.
fn read_error(e: std::io::Error, spec: &LayerSpec) -> Error {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<StreamError>()) {
        return inner.0.clone_kind(spec);
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad(spec, "truncated layer".into()),
        _ => bad(spec, format!("corrupt layer: {e}")),
    }
}

/// Unpack errors caused by the reader are reported as the reader's error.
fn refine(e: Error, spec: &LayerSpec) -> Error {
    match e {
        Error::Io { source, .. }
            if source
                .get_ref()
                .is_some_and(|i| i.downcast_ref::<StreamError>().is_some()) =>
        {
            read_error(source, spec)
        }
        other => other,
    }
}

/// An error from the network side of a stream, carried through `std::io::Read`.
#[derive(Debug)]
pub struct StreamError(pub Error);

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StreamError {}

impl Error {
    fn clone_kind(&self, spec: &LayerSpec) -> Error {
        let msg = format!("layer {}: {self}", spec.digest);
        match self {
            Error::BadContent(_) => Error::BadContent(msg),
            Error::NotFound(_) => Error::NotFound(msg),
            Error::Unauthenticated(_) => Error::Unauthenticated(msg),
            _ => Error::Unavailable(msg),
        }
    }
}

/// A blocking reader over chunks sent from an async task.
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::result::Result<Bytes, Error>>,
    current: Bytes,
    done: bool,
}

impl ChannelReader {
    pub fn new(rx: tokio::sync::mpsc::Receiver<std::result::Result<Bytes, Error>>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
            done: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(std::io::Error::other(StreamError(e)));
                }
                None => self.done = true,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}
