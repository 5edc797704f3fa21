//! One layer's trip from compressed bytes to an unpacked directory: digest check →
//! decompress (gzip, zstd, none) → diff-ID check → unpack, in a single streaming pass
//! with no temporary copy of the layer on disk.
//!
//! Every failure on the reading side travels through `std::io::Read` as an
//! `io::Error::other(crate::Error)`, which the unpacker hands back unchanged, so a
//! registry that goes away stays `Unavailable` and corrupt data stays `BadContent`.
//! Runs in cairnd (the image side).

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
        let mut inner = HashingReader::new(Typed {
            inner: decoder,
            spec,
        });
        let stats = unpack_layer(&mut inner, target, parents).map_err(|e| name_layer(e, spec))?;
        // The unpacker reads to the end, so the diff ID covers the whole tar.
        let (diff, _) = inner.finish().map_err(|e| typed(e, spec))?;
        (stats, diff)
    };
    let (digest, size) = outer.finish().map_err(|e| typed(e, spec))?;
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

/// Makes sure an error names the layer it happened in.
fn name_layer(e: Error, spec: &LayerSpec) -> Error {
    let digest = spec.digest.to_string();
    if e.to_string().contains(&digest) {
        return e;
    }
    e.context(format!("layer {digest}"))
}

fn bad(spec: &LayerSpec, msg: String) -> Error {
    Error::BadContent(format!("layer {}: {msg}", spec.digest))
}

/// The typed error inside an I/O error, or what a raw one means for a layer: a short read
/// is a truncated layer, anything else a corrupt one.
fn typed(e: std::io::Error, spec: &LayerSpec) -> Error {
    if e.get_ref().is_some_and(|i| i.is::<Error>()) {
        if let Some(Ok(inner)) = e.into_inner().map(|i| i.downcast::<Error>()) {
            return *inner;
        }
        return bad(spec, "unreadable layer".into());
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad(spec, "truncated layer".into()),
        _ => bad(spec, format!("corrupt layer: {e}")),
    }
}

/// Gives every error from the decompressing side a type the unpacker passes through.
struct Typed<'a, R> {
    inner: R,
    spec: &'a LayerSpec,
}

impl<R: Read> Read for Typed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| std::io::Error::other(typed(e, self.spec)))
    }
}

/// A blocking reader over chunks sent from an async task; a chunk that is an error
/// ends the stream with that error.
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
                    return Err(std::io::Error::other(e));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn layer_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path("hello").unwrap();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h.set_cksum();
        b.append(&h, &b"hello"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn spec_for(compressed: &[u8], tar: &[u8], c: Compression) -> LayerSpec {
        LayerSpec {
            digest: Digest::of(compressed),
            size: compressed.len() as u64,
            compression: c,
            diff_id: Digest::of(tar),
        }
    }

    #[test]
    fn good_layers_unpack_in_every_compression() {
        let tar = layer_tar();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        for (data, c) in [
            (tar.clone(), Compression::None),
            (gzip(&tar), Compression::Gzip),
            (zst, Compression::Zstd),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let spec = spec_for(&data, &tar, c);
            apply_layer(&data[..], &spec, dir.path(), &[]).unwrap();
            assert_eq!(std::fs::read(dir.path().join("hello")).unwrap(), b"hello");
        }
    }

    #[test]
    fn corrupt_truncated_and_mismatched_layers_are_bad_content() {
        let tar = layer_tar();
        let gz = gzip(&tar);
        let spec = spec_for(&gz, &tar, Compression::Gzip);
        let mut flipped = gz.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        let truncated = &gz[..gz.len() / 2];
        for data in [&flipped[..], truncated] {
            let dir = tempfile::tempdir().unwrap();
            let err = apply_layer(data, &spec, dir.path(), &[]).unwrap_err();
            assert!(matches!(err, Error::BadContent(_)), "{err:?}");
            assert!(err.to_string().contains(&spec.digest.to_string()));
        }
        let mut wrong_diff = spec.clone();
        wrong_diff.diff_id = Digest::of(b"other");
        let dir = tempfile::tempdir().unwrap();
        let err = apply_layer(&gz[..], &wrong_diff, dir.path(), &[]).unwrap_err();
        assert!(err.to_string().contains("diff ID mismatch"), "{err}");
    }

    #[test]
    fn stream_errors_keep_their_kind() {
        let tar = layer_tar();
        let spec = spec_for(&tar, &tar, Compression::None);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Ok(Bytes::copy_from_slice(&tar[..100])))
            .unwrap();
        tx.try_send(Err(Error::Unavailable("registry went away".into())))
            .unwrap();
        drop(tx);
        let dir = tempfile::tempdir().unwrap();
        let err = apply_layer(ChannelReader::new(rx), &spec, dir.path(), &[]).unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    }
}
