//! The overlay snapshotter: committed (read-only) snapshots, one per layer chain, and
//! active (writable) snapshots over them for containers.
//!
//! On disk a snapshot is `snapshots/<n>/fs` (plus `work/` for active ones), `<n>` a short
//! number so that overlay's option string stays small. A snapshot is built in a
//! `snapshots/tmp-*` directory and renamed into place only when complete, then recorded;
//! [`Snapshotter::open`] deletes anything on disk that has no record, so a crash at any
//! point leaves nothing a restart would mistake for whole.
//! Runs in cairnd (the image side).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cairn_kernel::overlay::OverlayMount;

use crate::error::{Error, Result};
use crate::store::{NewSnapshot, SnapshotKind, SnapshotRecord, Store};

/// Bytes and inodes a directory tree uses (each hard-linked inode counted once).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// A snapshot being built; deleted on drop unless committed.
pub struct TempSnapshot {
    dir: PathBuf,
    committed: bool,
}

impl TempSnapshot {
    /// The directory to unpack a layer into.
    pub fn fs(&self) -> PathBuf {
        self.dir.join("fs")
    }
}

impl Drop for TempSnapshot {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "removing temp snapshot");
                }
            }
        }
    }
}

/// The snapshotter over `<root>/snapshots`.
pub struct Snapshotter {
    dir: PathBuf,
    store: Arc<Store>,
}

use cairn_kernel::process::now_ns;

impl Snapshotter {
    /// Opens the snapshot dir, deleting temp dirs and dirs with no record (left by a crash).
    pub fn open(dir: &Path, store: Arc<Store>) -> Result<Snapshotter> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        let s = Snapshotter {
            dir: dir.to_path_buf(),
            store,
        };
        s.reconcile()?;
        Ok(s)
    }

    fn reconcile(&self) -> Result<()> {
        let known: std::collections::HashSet<String> = self
            .store
            .snapshots()?
            .iter()
            .map(|r| r.id.to_string())
            .collect();
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| Error::io("reading", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("reading", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if known.contains(&name) {
                continue;
            }
            tracing::info!(dir = %entry.path().display(), "removing incomplete snapshot");
            remove_tree(&entry.path())?;
        }
        Ok(())
    }

    fn snapshot_dir(&self, rec: &SnapshotRecord) -> PathBuf {
        self.dir.join(rec.id.to_string())
    }

    /// The `fs` dir of a snapshot.
    pub fn fs_dir(&self, rec: &SnapshotRecord) -> PathBuf {
        self.snapshot_dir(rec).join("fs")
    }

    pub fn get(&self, key: &str) -> Result<Option<SnapshotRecord>> {
        self.store.snapshot(key)
    }

    fn require(&self, key: &str) -> Result<SnapshotRecord> {
        self.get(key)?
            .ok_or_else(|| Error::NotFound(format!("snapshot {key} not found")))
    }

    /// A new temp dir to build a committed snapshot in.
    pub fn temp(&self) -> Result<TempSnapshot> {
        let dir = tempdir_in(&self.dir)?;
        let fs = dir.join("fs");
        std::fs::create_dir(&fs).map_err(|e| Error::io("creating", &fs, e))?;
        Ok(TempSnapshot {
            dir,
            committed: false,
        })
    }

    /// Lower dirs of the chain ending at `key`, topmost first.
    pub fn lowers(&self, key: &str) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut cur = Some(key.to_string());
        while let Some(k) = cur {
            let rec = self.require(&k)?;
            out.push(self.fs_dir(&rec));
            cur = rec.parent.clone();
        }
        Ok(out)
    }

    /// Moves a finished temp snapshot into place and records it under `key`.
    pub fn commit(
        &self,
        mut temp: TempSnapshot,
        key: &str,
        parent: Option<&str>,
    ) -> Result<SnapshotRecord> {
        if let Some(p) = parent {
            self.require(p)?;
        }
        if self.get(key)?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "snapshot {key} already exists"
            )));
        }
        let usage = usage(&temp.fs())?;
        let new = self.store.new_snapshot(key)?;
        let rec = SnapshotRecord {
            key: key.to_string(),
            id: new.id(),
            kind: SnapshotKind::Committed,
            parent: parent.map(str::to_string),
            bytes: usage.bytes,
            inodes: usage.inodes,
            created_ns: now_ns(),
        };
        self.place(new, &temp.dir, &rec)?;
        temp.committed = true;
        Ok(rec)
    }

    /// Renames a complete snapshot dir to its numbered place and records it (one
    /// transaction with the number). On failure nothing is recorded and `tmp` stays
    /// where it was, or is gone if it was renamed already.
    fn place(&self, new: NewSnapshot, tmp: &Path, rec: &SnapshotRecord) -> Result<()> {
        self.place_then(new, tmp, rec, || {})
    }

    /// [`place`](Self::place), calling `renamed` between the rename and the commit.
    fn place_then(
        &self,
        new: NewSnapshot,
        tmp: &Path,
        rec: &SnapshotRecord,
        renamed: impl FnOnce(),
    ) -> Result<()> {
        let dest = self.snapshot_dir(rec);
        std::fs::rename(tmp, &dest).map_err(|e| Error::io("renaming snapshot to", &dest, e))?;
        renamed();
        if let Err(e) = new.commit(rec) {
            let _ = remove_tree(&dest);
            return Err(e);
        }
        Ok(())
    }

    /// Creates a writable snapshot `key` over the committed chain ending at `parent`.
    pub fn prepare(&self, key: &str, parent: Option<&str>) -> Result<OverlayMount> {
        let mut mounts = None;
        self.prepare_then(key, parent, |m| mounts = Some(m.clone()))?;
        mounts.ok_or_else(|| Error::Internal(format!("snapshot {key}: no mounts")))
    }

    /// [`prepare`](Self::prepare) that hands the snapshot's overlay to `placed` as soon as
    /// its dirs are in place under their number, before the record's durable commit, so
    /// that the caller can start using it while the disk syncs. A crash before the commit
    /// leaves an unrecorded dir, which the next open removes; on an error returned after
    /// `placed` ran, the dirs are gone again.
    pub fn prepare_then(
        &self,
        key: &str,
        parent: Option<&str>,
        placed: impl FnOnce(&OverlayMount),
    ) -> Result<()> {
        if self.get(key)?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "snapshot {key} already exists"
            )));
        }
        if let Some(p) = parent {
            let rec = self.require(p)?;
            if rec.kind != SnapshotKind::Committed {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {p} is active: only committed snapshots can be parents"
                )));
            }
        }
        let tmp = tempdir_in(&self.dir)?;
        for sub in ["fs", "work"] {
            let d = tmp.join(sub);
            std::fs::create_dir(&d).map_err(|e| Error::io("creating", &d, e))?;
        }
        let lowers = match parent {
            Some(p) => self.lowers(p),
            None => Ok(Vec::new()),
        };
        let recorded = lowers.and_then(|lowers| {
            let new = self.store.new_snapshot(key)?;
            let rec = SnapshotRecord {
                key: key.to_string(),
                id: new.id(),
                kind: SnapshotKind::Active,
                parent: parent.map(str::to_string),
                bytes: 0,
                inodes: 0,
                created_ns: now_ns(),
            };
            let dir = self.snapshot_dir(&rec);
            self.place_then(new, &tmp, &rec, || {
                placed(&OverlayMount {
                    lowers,
                    upper: Some((dir.join("fs"), dir.join("work"))),
                })
            })
        });
        if let Err(e) = recorded {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
        Ok(())
    }

    /// The overlay a snapshot is mounted as.
    pub fn mounts(&self, key: &str) -> Result<OverlayMount> {
        let rec = self.require(key)?;
        match rec.kind {
            SnapshotKind::Committed => Ok(OverlayMount {
                lowers: self.lowers(key)?,
                upper: None,
            }),
            SnapshotKind::Active => {
                let dir = self.snapshot_dir(&rec);
                let lowers = match &rec.parent {
                    Some(p) => self.lowers(p)?,
                    None => Vec::new(),
                };
                Ok(OverlayMount {
                    lowers,
                    upper: Some((dir.join("fs"), dir.join("work"))),
                })
            }
        }
    }

    /// Removes a snapshot. Refused while another snapshot names it as parent.
    pub fn remove(&self, key: &str) -> Result<()> {
        let Some(rec) = self.get(key)? else {
            return Ok(());
        };
        if let Some(child) = self
            .store
            .snapshots()?
            .into_iter()
            .find(|s| s.parent.as_deref() == Some(key))
        {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is the parent of {}",
                child.key
            )));
        }
        // Forget first, then delete: a crash in between leaves an unrecorded dir,
        // which the next open removes.
        self.store.remove_snapshot(key)?;
        remove_tree(&self.snapshot_dir(&rec))
    }

    /// Bytes and inodes of one snapshot's own layer (not its parents).
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let rec = self.require(key)?;
        match rec.kind {
            SnapshotKind::Committed => Ok(Usage {
                bytes: rec.bytes,
                inodes: rec.inodes,
            }),
            SnapshotKind::Active => usage(&self.fs_dir(&rec)),
        }
    }

    pub fn list(&self) -> Result<Vec<SnapshotRecord>> {
        self.store.snapshots()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    for _ in 0..16 {
        let name = format!("tmp-{:016x}", rand_u64());
        let dir = parent.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("creating", dir, e)),
        }
    }
    Err(Error::Internal(format!(
        "no free temp name in {}",
        parent.display()
    )))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u128);
    h.finish()
}

/// Removes a directory tree, tolerating its absence.
pub fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", dir, e)),
    }
}

/// Measures a tree: allocated bytes (st_blocks) and inodes, hard links counted once.
pub fn usage(root: &Path) -> Result<Usage> {
    let mut seen = std::collections::HashSet::new();
    let mut u = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let md = std::fs::symlink_metadata(&dir).map_err(|e| Error::io("measuring", &dir, e))?;
        add(&mut u, &mut seen, &md);
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("measuring", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("measuring", &dir, e))?;
            let md = entry
                .metadata()
                .map_err(|e| Error::io("measuring", entry.path(), e))?;
            if md.is_dir() {
                stack.push(entry.path());
            } else {
                add(&mut u, &mut seen, &md);
            }
        }
    }
    Ok(u)
}

fn add(u: &mut Usage, seen: &mut std::collections::HashSet<(u64, u64)>, md: &std::fs::Metadata) {
    if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
        return;
    }
    u.inodes += 1;
    u.bytes += md.blocks() * 512;
}

/// Mounts an overlay at `target` ([`cairn_kernel::overlay::mount`]), with the
/// snapshotter's errors.
pub fn mount_overlay(m: &OverlayMount, target: &Path, readonly: bool) -> Result<()> {
    cairn_kernel::overlay::mount(m, target, readonly).map_err(|e| match e {
        cairn_kernel::overlay::OverlayError::Invalid(msg) => Error::InvalidArgument(msg),
        cairn_kernel::overlay::OverlayError::Mount { target, source } => {
            Error::io("mounting overlay at", &target, source)
        }
    })
}

/// Unmounts `target` (lazily if busy).
pub fn unmount(target: &Path) -> Result<()> {
    rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH)
        .map_err(|e| Error::io("unmounting", target, e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Snapshotter) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let s = Snapshotter::open(&dir.path().join("snapshots"), store).unwrap();
        (dir, s)
    }

    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = unmount(&self.0);
        }
    }

    #[test]
    fn commit_prepare_mount_and_copy_on_write() {
        let (dir, s) = open();
        let t = s.temp().unwrap();
        std::fs::write(t.fs().join("a"), b"lower").unwrap();
        s.commit(t, "c1", None).unwrap();
        let t = s.temp().unwrap();
        std::fs::write(t.fs().join("b"), b"second").unwrap();
        s.commit(t, "c2", Some("c1")).unwrap();
        let m = s.prepare("ctr", Some("c2")).unwrap();
        assert_eq!(m.lowers.len(), 2);
        let target = dir.path().join("mnt");
        std::fs::create_dir(&target).unwrap();
        mount_overlay(&m, &target, false).unwrap();
        let guard = Unmount(target.clone());
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"lower");
        std::fs::write(target.join("a"), b"changed").unwrap();
        drop(guard);
        // The layer is untouched; the change lives in the writable layer only.
        let c1 = s.get("c1").unwrap().unwrap();
        assert_eq!(std::fs::read(s.fs_dir(&c1).join("a")).unwrap(), b"lower");
        assert!(s.usage("ctr").unwrap().bytes > 0);
        assert!(matches!(s.remove("c1"), Err(Error::FailedPrecondition(_))));
        s.remove("ctr").unwrap();
        s.remove("c2").unwrap();
        s.remove("c1").unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    /// The overlay reaches the caller with its dirs in place and before the record is
    /// committed; a missing parent fails before anything is handed out or left behind.
    #[test]
    fn prepare_then_hands_out_the_dirs_before_the_commit() {
        let (_dir, s) = open();
        let t = s.temp().unwrap();
        s.commit(t, "base", None).unwrap();
        let mut seen = None;
        s.prepare_then("ctr", Some("base"), |m| {
            let (upper, work) = m.upper.clone().unwrap();
            assert!(upper.is_dir() && work.is_dir());
            assert!(
                s.get("ctr").unwrap().is_none(),
                "recorded before the commit"
            );
            seen = Some(m.clone());
        })
        .unwrap();
        let seen = seen.unwrap();
        let m = s.mounts("ctr").unwrap();
        assert_eq!((seen.lowers, seen.upper), (m.lowers, m.upper));
        let before: Vec<_> = std::fs::read_dir(s.dir()).unwrap().collect();
        let missing = s.prepare_then("ctr2", Some("nope"), |_| panic!("handed out"));
        assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
        let after: Vec<_> = std::fs::read_dir(s.dir()).unwrap().collect();
        assert_eq!(before.len(), after.len(), "a dir was left behind");
    }

    #[test]
    fn many_layers_mount() {
        let (dir, s) = open();
        let mut parent: Option<String> = None;
        for i in 0..128 {
            let t = s.temp().unwrap();
            std::fs::write(t.fs().join(format!("f{i}")), b"x").unwrap();
            let key = format!("layer-{i}");
            s.commit(t, &key, parent.as_deref()).unwrap();
            parent = Some(key);
        }
        let m = s.prepare("ctr", parent.as_deref()).unwrap();
        let target = dir.path().join("mnt");
        std::fs::create_dir(&target).unwrap();
        mount_overlay(&m, &target, false).unwrap();
        let _guard = Unmount(target.clone());
        assert!(target.join("f0").exists());
        assert!(target.join("f127").exists());
    }

    #[test]
    fn open_removes_unrecorded_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let snaps = dir.path().join("snapshots");
        let s = Snapshotter::open(&snaps, store.clone()).unwrap();
        let t = s.temp().unwrap();
        s.commit(t, "kept", None).unwrap();
        let t = s.temp().unwrap();
        std::mem::forget(t); // a crash mid-unpack
        std::fs::create_dir(snaps.join("999")).unwrap(); // renamed but never recorded
        drop(s);
        let s = Snapshotter::open(&snaps, store).unwrap();
        let names: Vec<_> = std::fs::read_dir(&snaps)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(s.get("kept").unwrap().is_some());
    }
}
