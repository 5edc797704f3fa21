//! The metadata store: images, references, known manifests and snapshots, in one
//! embedded transactional database (`redb`). A record is written only after the thing it
//! describes is complete on disk, in the same transaction as everything it depends on, so
//! a crash leaves either the old state or the new one.
//! Runs in cairnd (the image side).

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const REFS: TableDefinition<&str, &str> = TableDefinition::new("refs");
const MANIFESTS: TableDefinition<&str, &str> = TableDefinition::new("manifests");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// One layer of an image as pulled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub diff_id: String,
    pub chain_id: String,
}

/// An image: its config digest is its ID.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The config digest (`sha256:...`), which is the image ID.
    pub id: String,
    /// The platform-specific manifest.
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub config_size: u64,
    pub layers: Vec<LayerRecord>,
    /// Bytes of the image as distributed: config plus compressed layers.
    pub size: u64,
    pub platform: String,
    /// When it was first stored, in nanoseconds since the epoch.
    pub created_ns: i64,
    #[serde(default)]
    pub pinned: bool,
}

impl ImageRecord {
    /// The chain ID of the top layer: the snapshot a container's rootfs stacks on.
    pub fn top_chain_id(&self) -> Option<&str> {
        self.layers.last().map(|l| l.chain_id.as_str())
    }
}

/// What a snapshot is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// An image layer, read-only, keyed by its chain ID.
    Committed,
    /// A container's writable layer, keyed by the container.
    Active,
}

/// A snapshot: a directory `snapshots/<id>/` with `fs/` (and `work/` for active ones).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub key: String,
    /// Numeric directory name: short paths keep overlay mount options short.
    pub id: u64,
    pub kind: SnapshotKind,
    pub parent: Option<String>,
    /// Bytes and inodes of `fs/` when committed (active snapshots are measured live).
    pub bytes: u64,
    pub inodes: u64,
    pub created_ns: i64,
}

/// The database.
pub struct Store {
    db: Database,
}

/// A snapshot being recorded (see [`Store::new_snapshot`]).
pub struct NewSnapshot {
    tx: redb::WriteTransaction,
    id: u64,
}

impl NewSnapshot {
    /// The snapshot's directory number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Records the snapshot (whose `id` must be [`NewSnapshot::id`]) and its number.
    pub fn commit(self, rec: &SnapshotRecord) -> Result<()> {
        if rec.id != self.id {
            return Err(Error::Internal(format!(
                "snapshot {}: recorded as {} but allocated {}",
                rec.key, rec.id, self.id
            )));
        }
        {
            let mut counters = self.tx.open_table(COUNTERS)?;
            counters.insert("snapshot", self.id)?;
            let mut t = self.tx.open_table(SNAPSHOTS)?;
            t.insert(rec.key.as_str(), encode(rec)?.as_slice())?;
        }
        self.tx.commit()?;
        Ok(())
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Store(format!("encode: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Store(format!("decode {what}: {e}")))
}

impl Store {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::create(path)
            .map_err(|e| Error::Store(format!("open {}: {e}", path.display())))?;
        let tx = db.begin_write()?;
        {
            tx.open_table(IMAGES)?;
            tx.open_table(REFS)?;
            tx.open_table(MANIFESTS)?;
            tx.open_table(SNAPSHOTS)?;
            tx.open_table(COUNTERS)?;
        }
        tx.commit()?;
        Ok(Store { db })
    }

    pub fn image(&self, id: &str) -> Result<Option<ImageRecord>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(IMAGES)?;
        match t.get(id)? {
            Some(v) => Ok(Some(decode(id, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(IMAGES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Every reference and the image ID it points at.
    pub fn refs(&self) -> Result<Vec<(String, String)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REFS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// The references pointing at one image.
    pub fn refs_of(&self, id: &str) -> Result<Vec<String>> {
        Ok(self
            .refs()?
            .into_iter()
            .filter(|(_, i)| i == id)
            .map(|(r, _)| r)
            .collect())
    }

    pub fn resolve_ref(&self, reference: &str) -> Result<Option<String>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REFS)?;
        Ok(t.get(reference)?.map(|v| v.value().to_string()))
    }

    /// The image a manifest or index digest is known to lead to on this node.
    pub fn manifest_image(&self, digest: &str) -> Result<Option<String>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MANIFESTS)?;
        Ok(t.get(digest)?.map(|v| v.value().to_string()))
    }

    /// Stores an image with its references and the manifest digests that lead to it, in
    /// one transaction. A reference that pointed at another image now points here.
    pub fn put_image(
        &self,
        image: &ImageRecord,
        refs: &[String],
        manifests: &[String],
    ) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut images = tx.open_table(IMAGES)?;
            let existing = images.get(image.id.as_str())?.map(|v| v.value().to_vec());
            let record = match existing {
                // Keep the first record (its creation time and pin) when re-tagging.
                Some(bytes) => bytes,
                None => encode(image)?,
            };
            images.insert(image.id.as_str(), record.as_slice())?;
            let mut r = tx.open_table(REFS)?;
            for name in refs {
                r.insert(name.as_str(), image.id.as_str())?;
            }
            let mut m = tx.open_table(MANIFESTS)?;
            for d in manifests {
                m.insert(d.as_str(), image.id.as_str())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes references; returns the image IDs left with no reference at all.
    pub fn remove_refs(&self, names: &[String]) -> Result<Vec<String>> {
        let tx = self.db.begin_write()?;
        let mut touched = Vec::new();
        {
            let mut r = tx.open_table(REFS)?;
            for name in names {
                if let Some(id) = r.remove(name.as_str())? {
                    touched.push(id.value().to_string());
                }
            }
        }
        tx.commit()?;
        let remaining = self.refs()?;
        touched.retain(|id| !remaining.iter().any(|(_, i)| i == id));
        touched.dedup();
        Ok(touched)
    }

    /// Removes an image, every reference to it and the manifests leading to it.
    pub fn remove_image(&self, id: &str) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut images = tx.open_table(IMAGES)?;
            images.remove(id)?;
            let mut refs = tx.open_table(REFS)?;
            refs.retain(|_, v| v != id)?;
            let mut m = tx.open_table(MANIFESTS)?;
            m.retain(|_, v| v != id)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn snapshot(&self, key: &str) -> Result<Option<SnapshotRecord>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SNAPSHOTS)?;
        match t.get(key)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Starts recording a new snapshot `key`: allocates its directory number and holds the
    /// database's write lock until [`NewSnapshot::commit`], which writes the counter and
    /// the record in one transaction (one sync). Dropping it records nothing. Fails with
    /// AlreadyExists if the key is taken.
    pub fn new_snapshot(&self, key: &str) -> Result<NewSnapshot> {
        let tx = self.db.begin_write()?;
        let id = {
            if tx.open_table(SNAPSHOTS)?.get(key)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {key} already exists"
                )));
            }
            let counters = tx.open_table(COUNTERS)?;
            let last = counters.get("snapshot")?.map(|v| v.value());
            last.unwrap_or(0) + 1
        };
        Ok(NewSnapshot { tx, id })
    }

    pub fn remove_snapshot(&self, key: &str) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(SNAPSHOTS)?;
            t.remove(key)?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Generic JSON records for the runtime side (pods, containers), in tables of their own.
impl Store {
    pub fn put_record<T: Serialize>(
        &self,
        table: &'static str,
        key: &str,
        value: &T,
    ) -> Result<()> {
        let def: TableDefinition<&str, &[u8]> = TableDefinition::new(table);
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(def)?;
            t.insert(key, encode(value)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn get_record<T: DeserializeOwned>(
        &self,
        table: &'static str,
        key: &str,
    ) -> Result<Option<T>> {
        let def: TableDefinition<&str, &[u8]> = TableDefinition::new(table);
        let tx = self.db.begin_read()?;
        let t = match tx.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match t.get(key)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn list_records<T: DeserializeOwned>(&self, table: &'static str) -> Result<Vec<T>> {
        let def: TableDefinition<&str, &[u8]> = TableDefinition::new(table);
        let tx = self.db.begin_read()?;
        let t = match tx.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    pub fn delete_record(&self, table: &'static str, key: &str) -> Result<()> {
        let def: TableDefinition<&str, &[u8]> = TableDefinition::new(table);
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(def)?;
            t.remove(key)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Moves every record of `table` into `to`: one transaction copies them all (a key
    /// `to` already holds keeps its record there), then one removes them from here. If
    /// interrupted, the records left here are moved by the next call. Returns how many
    /// records were found here.
    pub fn move_records(&self, table: &'static str, to: &Store) -> Result<usize> {
        let def: TableDefinition<&str, &[u8]> = TableDefinition::new(table);
        let rows = {
            let tx = self.db.begin_read()?;
            let t = match tx.open_table(def) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(e.into()),
            };
            let mut rows = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                rows.push((k.value().to_string(), v.value().to_vec()));
            }
            rows
        };
        if rows.is_empty() {
            return Ok(0);
        }
        let tx = to.db.begin_write()?;
        {
            let mut t = tx.open_table(def)?;
            for (key, value) in &rows {
                if t.get(key.as_str())?.is_none() {
                    t.insert(key.as_str(), value.as_slice())?;
                }
            }
        }
        tx.commit()?;
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(def)?;
            for (key, _) in &rows {
                t.remove(key.as_str())?;
            }
        }
        tx.commit()?;
        Ok(rows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str) -> ImageRecord {
        ImageRecord {
            id: id.into(),
            manifest_digest: "m".into(),
            manifest_media_type: "t".into(),
            config_size: 1,
            layers: vec![],
            size: 1,
            platform: "linux/amd64".into(),
            created_ns: 0,
            pinned: false,
        }
    }

    #[test]
    fn refs_move_and_images_stay_until_unreferenced() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        s.put_image(&image("a"), &["x:1".into(), "x:2".into()], &["ma".into()])
            .unwrap();
        s.put_image(&image("b"), &["x:2".into()], &[]).unwrap();
        assert_eq!(s.resolve_ref("x:2").unwrap().as_deref(), Some("b"));
        assert_eq!(s.refs_of("a").unwrap(), vec!["x:1".to_string()]);
        assert!(s.remove_refs(&["x:1".into()]).unwrap() == vec!["a".to_string()]);
        s.remove_image("a").unwrap();
        assert!(s.image("a").unwrap().is_none());
        assert!(s.manifest_image("ma").unwrap().is_none());
        assert!(s.image("b").unwrap().is_some());
    }

    #[test]
    fn snapshot_keys_are_unique_and_ids_grow() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let rec = |key: &str, id| SnapshotRecord {
            key: key.into(),
            id,
            kind: SnapshotKind::Committed,
            parent: None,
            bytes: 0,
            inodes: 0,
            created_ns: 0,
        };
        // Dropped: neither the number nor the key is taken.
        let a = s.new_snapshot("k").unwrap().id();
        let new = s.new_snapshot("k").unwrap();
        assert_eq!(new.id(), a);
        let k = rec("k", a);
        new.commit(&k).unwrap();
        assert!(matches!(s.new_snapshot("k"), Err(Error::AlreadyExists(_))));
        let new = s.new_snapshot("l").unwrap();
        let b = new.id();
        assert!(b > a);
        assert!(matches!(new.commit(&rec("l", a)), Err(Error::Internal(_))));
        drop(s);
        let s = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(s.snapshot("k").unwrap(), Some(k));
        assert!(s.snapshot("l").unwrap().is_none());
        assert_eq!(s.new_snapshot("l").unwrap().id(), b);
    }

    #[test]
    fn records_move_without_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        let old = Store::open(&dir.path().join("old")).unwrap();
        let new = Store::open(&dir.path().join("new")).unwrap();
        assert_eq!(old.move_records("pods", &new).unwrap(), 0);
        old.put_record("pods", "a", &"old a").unwrap();
        old.put_record("pods", "b", &"old b").unwrap();
        // As if an earlier move had copied `a` and then stopped.
        new.put_record("pods", "a", &"new a").unwrap();
        assert_eq!(old.move_records("pods", &new).unwrap(), 2);
        assert!(old.list_records::<String>("pods").unwrap().is_empty());
        let a: Option<String> = new.get_record("pods", "a").unwrap();
        let b: Option<String> = new.get_record("pods", "b").unwrap();
        assert_eq!(a.as_deref(), Some("new a"));
        assert_eq!(b.as_deref(), Some("old b"));
        assert_eq!(old.move_records("pods", &new).unwrap(), 0);
    }
}
