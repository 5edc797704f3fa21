//! Exit records: the shim writes each process's end durably under
//! `<pod dir>/exits/<id>` (temp file, sync, rename), cairnd reads them, also those written
//! while it was down.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A process's end, as recorded on disk and reported to cairnd.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub exited_ns: i64,
    pub oom: bool,
}

/// Where the exit of container `id` is recorded.
pub fn exit_path(pod_dir: &Path, id: &str) -> PathBuf {
    pod_dir.join("exits").join(id)
}

/// An exit as written to disk: with why the process never ran its command, when it says
/// so (its `execve` failed after start).
#[derive(Debug, Serialize, Deserialize)]
struct ExitRecord {
    #[serde(flatten)]
    exit: Exit,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_failure: Option<String>,
}

/// Reads a recorded exit.
pub fn read_exit(pod_dir: &Path, id: &str) -> Option<Exit> {
    read_exit_record(pod_dir, id).map(|(exit, _)| exit)
}

/// Reads a recorded exit and, if the container's command never ran, why.
pub fn read_exit_record(pod_dir: &Path, id: &str) -> Option<(Exit, Option<String>)> {
    let bytes = std::fs::read(exit_path(pod_dir, id)).ok()?;
    let rec: ExitRecord = serde_json::from_slice(&bytes).ok()?;
    Some((rec.exit, rec.start_failure))
}

pub fn write_exit(
    pod_dir: &Path,
    id: &str,
    exit: &Exit,
    start_failure: Option<String>,
) -> std::io::Result<()> {
    use std::io::Write;
    let path = exit_path(pod_dir, id);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    let rec = ExitRecord {
        exit: *exit,
        start_failure,
    };
    f.write_all(&serde_json::to_vec(&rec).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)
}
