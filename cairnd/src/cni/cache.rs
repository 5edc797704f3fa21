//! The on-disk record of a pod's network attachment: `<cache dir>/<pod id>/<network>.json`,
//! written before ADD runs (so a crash half-way leaves something for DEL to find) and
//! again with the ADD result, always atomically (temp file, rename). It keeps the
//! network list and capability args ADD used, so DEL runs the same plugins with the same
//! inputs and prevResult even after a restart or a change of the conf dir.
//!
//! Entries are not fsynced: a crash of cairnd (or of the shim) leaves the page cache, and
//! with it every renamed entry, intact. Only a power loss could lose one, and then the
//! plugins' own state (host-local's lease files, written without fsync) is no safer; two
//! fsyncs of file and dir per write cost several milliseconds per pod on a busy disk.
//! Runs in cairnd.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the cache keeps for one pod on one network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub kind: String,
    pub container_id: String,
    pub network: String,
    pub if_name: String,
    pub cni_args: String,
    /// The network list, as [`super::conf::NetworkList::to_json`] writes it.
    pub config: Value,
    /// All capability args of the pod; each plugin gets those it declares.
    pub capability_args: Value,
    /// The final ADD result; `None` while ADD runs (or if it crashed).
    pub result: Option<Value>,
}

pub const KIND: &str = "cairn-cni-attachment/v1";

/// The cache entries of one pod.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
        }
    }

    fn pod_dir(&self, pod_id: &str) -> PathBuf {
        self.dir.join(pod_id)
    }

    pub fn path(&self, pod_id: &str, network: &str) -> PathBuf {
        self.pod_dir(pod_id).join(format!("{network}.json"))
    }

    /// Writes `a` atomically in place of any previous entry.
    pub fn store(&self, a: &Attachment) -> Result<(), (PathBuf, String)> {
        let path = self.path(&a.container_id, &a.network);
        let dir = self.pod_dir(&a.container_id);
        let fail = |what: &str, e: std::io::Error| (path.clone(), format!("{what}: {e}"));
        std::fs::create_dir_all(&dir).map_err(|e| fail("creating dir", e))?;
        let bytes = serde_json::to_vec_pretty(a).map_err(|e| (path.clone(), e.to_string()))?;
        let tmp = dir.join(format!(".{}.json.tmp", a.network));
        let mut f = std::fs::File::create(&tmp).map_err(|e| fail("creating temp file", e))?;
        f.write_all(&bytes)
            .map_err(|e| fail("writing temp file", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| fail("renaming temp file", e))
    }

    /// The pod's entries, in network name order. Unreadable entries are errors: DEL must
    /// not silently forget an attachment.
    pub fn load(&self, pod_id: &str) -> Result<Vec<Attachment>, (PathBuf, String)> {
        let dir = self.pod_dir(pod_id);
        let read = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err((dir, e.to_string())),
        };
        let mut paths: Vec<PathBuf> = read
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).map_err(|e| (p.clone(), e.to_string()))?;
                let a: Attachment =
                    serde_json::from_slice(&bytes).map_err(|e| (p.clone(), e.to_string()))?;
                if a.kind != KIND {
                    return Err((p, format!("unknown kind {:?}", a.kind)));
                }
                Ok(a)
            })
            .collect()
    }

    /// Whether the pod has a dir of entries (it goes with its last entry); an unreadable
    /// dir counts as having some.
    pub fn has_entries(&self, pod_id: &str) -> bool {
        match std::fs::symlink_metadata(self.pod_dir(pod_id)) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        }
    }

    /// Removes one entry, and the pod's dir once it is empty.
    pub fn remove(&self, pod_id: &str, network: &str) -> Result<(), (PathBuf, String)> {
        let path = self.path(pod_id, network);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err((path, e.to_string())),
        }
        let dir = self.pod_dir(pod_id);
        let _ = std::fs::remove_file(dir.join(format!(".{network}.json.tmp")));
        // Fails while other entries remain, which is what we want.
        let _ = std::fs::remove_dir(&dir);
        Ok(())
    }

    /// Removes every entry of the pod, readable or not.
    pub fn purge(&self, pod_id: &str) -> Result<(), (PathBuf, String)> {
        let dir = self.pod_dir(pod_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err((dir, e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pod: &str, net: &str) -> Attachment {
        Attachment {
            kind: KIND.into(),
            container_id: pod.into(),
            network: net.into(),
            if_name: "eth0".into(),
            cni_args: "IgnoreUnknown=1".into(),
            config: serde_json::json!({"name": net}),
            capability_args: serde_json::json!({}),
            result: None,
        }
    }

    #[test]
    fn stores_loads_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        assert!(cache.load("p1").unwrap().is_empty());
        assert!(!cache.has_entries("p1"));
        let mut a = entry("p1", "net-b");
        cache.store(&a).unwrap();
        a.result = Some(serde_json::json!({"ips": []}));
        cache.store(&a).unwrap();
        cache.store(&entry("p1", "net-a")).unwrap();
        let got = cache.load("p1").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].network, "net-a");
        assert_eq!(got[1], a);
        cache.remove("p1", "net-a").unwrap();
        cache.remove("p1", "net-a").unwrap();
        assert!(dir.path().join("p1").exists());
        assert!(cache.has_entries("p1"));
        cache.remove("p1", "net-b").unwrap();
        assert!(!dir.path().join("p1").exists());
        assert!(!cache.has_entries("p1"));
    }

    #[test]
    fn a_corrupt_entry_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p1")).unwrap();
        std::fs::write(dir.path().join("p1/n.json"), "{").unwrap();
        let cache = Cache::new(dir.path());
        let (path, _) = cache.load("p1").unwrap_err();
        assert!(path.ends_with("p1/n.json"));
        cache.purge("p1").unwrap();
        cache.purge("p1").unwrap();
        assert!(cache.load("p1").unwrap().is_empty());
    }
}
