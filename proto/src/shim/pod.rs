//! A pod's run dir as the shim lays it out: the namespaces it creates pinned at
//! `ns/<kind>` (bind mounts, so CNI and `setns` reach them) and the pod's `/dev/shm` at
//! `shm`; whoever cleans up a pod unmounts them ([`release`]).
//! Shared by cairnd and cairn-shim: the contract between them.

use std::path::{Path, PathBuf};

use rustix::mount::{unmount, UnmountFlags};

/// Where a pod's namespace files and shm live under its run dir.
pub fn ns_path(pod_dir: &Path, kind: &str) -> PathBuf {
    pod_dir.join("ns").join(kind)
}

pub fn shm_path(pod_dir: &Path) -> PathBuf {
    pod_dir.join("shm")
}

/// Unmounts what the shim pinned under `pod_dir`; what is not mounted is skipped.
pub fn release(pod_dir: &Path) {
    for kind in ["net", "uts", "ipc", "pid", "user"] {
        let _ = unmount(ns_path(pod_dir, kind), UnmountFlags::DETACH);
    }
    let _ = unmount(shm_path(pod_dir), UnmountFlags::DETACH);
}
