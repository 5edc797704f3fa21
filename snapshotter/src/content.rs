//! The content store: manifests, indexes and configs by digest, under
//! `content/blobs/sha256/<hex>`. Writes go to `content/ingest/` first and are renamed into
//! place only after their digest checked out; the ingest dir is emptied on open.
//! Layer blobs are not kept: they are streamed straight into the unpacker.
//! Runs in cairnd (the image side).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::snapshot::{remove_tree, Usage};

pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    pub fn open(dir: &Path) -> Result<ContentStore> {
        let blobs = dir.join("blobs").join("sha256");
        let ingest = dir.join("ingest");
        remove_tree(&ingest)?;
        for d in [&blobs, &ingest] {
            std::fs::create_dir_all(d).map_err(|e| Error::io("creating", d, e))?;
        }
        Ok(ContentStore { blobs, ingest })
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.hex())
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).exists()
    }

    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.path(d);
        std::fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("content {d} not found")),
            _ => Error::io("reading", &p, e),
        })
    }

    /// Stores `data` under `d` after checking that it hashes to `d`.
    pub fn write(&self, d: &Digest, data: &[u8]) -> Result<()> {
        let got = Digest::of(data);
        if got != *d {
            return Err(Error::BadContent(format!(
                "content {d}: digest mismatch, got {got}"
            )));
        }
        if self.has(d) {
            return Ok(());
        }
        let tmp = self
            .ingest
            .join(format!("{}.{}", d.hex(), std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
            f.write_all(data)
                .map_err(|e| Error::io("writing", &tmp, e))?;
            f.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
            let dest = self.path(d);
            std::fs::rename(&tmp, &dest).map_err(|e| Error::io("renaming to", &dest, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    pub fn remove(&self, d: &Digest) -> Result<()> {
        let p = self.path(d);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", &p, e)),
        }
    }

    /// Every stored digest (files with names that are not digests are ignored).
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        let entries =
            std::fs::read_dir(&self.blobs).map_err(|e| Error::io("reading", &self.blobs, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("reading", &self.blobs, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(d) = Digest::parse(&format!("sha256:{name}")) {
                out.push(d);
            }
        }
        Ok(out)
    }

    pub fn usage(&self) -> Result<Usage> {
        crate::snapshot::usage(&self.blobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_checks_digest_and_open_clears_ingest() {
        let dir = tempfile::tempdir().unwrap();
        let c = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"config");
        assert!(c.write(&Digest::of(b"other"), b"config").is_err());
        c.write(&d, b"config").unwrap();
        assert_eq!(c.read(&d).unwrap(), b"config");
        assert_eq!(c.list().unwrap(), vec![d.clone()]);
        std::fs::write(dir.path().join("ingest").join("partial"), b"x").unwrap();
        let c = ContentStore::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
        c.remove(&d).unwrap();
        assert!(matches!(c.read(&d), Err(Error::NotFound(_))));
    }
}
