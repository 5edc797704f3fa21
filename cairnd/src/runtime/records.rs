//! The records of pods and containers (typed, kept in a redb database in the state dir) and
//! their IDs.
//! Runs in cairnd.

use super::*;

pub(super) const PODS: &str = "pods";

pub(super) const CONTAINERS: &str = "containers";

/// The pod and container records' database, in the state dir.
pub(super) const RECORDS_DB: &str = "runtime.redb";

/// A pod as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    pub ready: bool,
    pub created_ns: i64,
    pub shim_pid: u32,
    pub dir: PathBuf,
}

/// A container as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: cri::ContainerConfig,
    pub image_id: String,
    pub image_ref: String,
    pub state: i32,
    pub created_ns: i64,
    pub started_ns: i64,
    pub finished_ns: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub log_path: String,
    pub pid: u32,
    pub stop_signal: i32,
    /// The container's cgroup (relative to the hierarchy roots), so that cairnd can kill
    /// and remove it itself when the pod's shim is gone.
    #[serde(default)]
    pub cgroup_path: String,
    /// The identity its process runs as (uid, gid, supplemental groups), as resolved
    /// from the CRI config and the image at creation.
    #[serde(default)]
    pub user: Option<cri::LinuxContainerUser>,
}

pub(super) fn new_id() -> String {
    let mut buf = [0u8; 32];
    if getrandom(&mut buf).is_err() {
        let t = now_ns().to_le_bytes();
        buf[..8].copy_from_slice(&t);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Opens the records' database, moving into it the records that older versions kept in
/// the image store's database. The move resumes at every start until none are left there
/// (a record already in the new database is kept), so an interrupted one loses nothing.
pub(super) fn open_records(state: &Path, image_store: &Store) -> anyhow::Result<Store> {
    let path = state.join(RECORDS_DB);
    let records =
        Store::open(&path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    for table in [PODS, CONTAINERS] {
        let moved = image_store.move_records(table, &records).map_err(|e| {
            anyhow::anyhow!("moving the {table} records to {}: {e}", path.display())
        })?;
        if moved > 0 {
            tracing::info!(
                table,
                moved,
                "moved records out of the image store's database"
            );
        }
    }
    Ok(records)
}
