//! cairn's conventions on the Task API's messages: `CreateTaskRequest.bundle` holds the
//! OCI `config.json` (and [`SECCOMP_PROGRAM`]); `rootfs[0]` is an overlay mount
//! (`lowerdir=a:b`, `upperdir=`, `workdir=`: [`overlay_to`], [`overlay_from`]); `stdout`
//! is the CRI log path. `ExecProcessRequest.spec` is the JSON OCI `Process`, and its
//! `stdout`/`stderr` are files the exec writes to directly. `UpdateTaskRequest.resources`
//! is JSON `LinuxResources`; its annotations [`REOPEN_LOG`] and [`ATTACH`] reopen the log
//! or attach FIFOs instead. The OCI spec's annotation [`STDIN_ONCE`] closes stdin after
//! the first attach.

use std::path::PathBuf;

use cairn_kernel::overlay::OverlayMount;
use serde::{Deserialize, Serialize};

/// Annotation on `Update` that reopens the container's log file.
pub const REOPEN_LOG: &str = "io.cairn.reopen-log";

/// The file in a bundle that holds the compiled program of its config's `linux.seccomp`
/// ([`cairn_kernel::seccomp::Program::to_bytes`]), written by cairnd, which compiles each profile
/// once; without it the built-in launcher compiles the profile itself.
pub const SECCOMP_PROGRAM: &str = "seccomp.bpf";

/// `UpdateTaskRequest` annotation whose value (JSON [`AttachPaths`]) attaches FIFOs to a
/// running container's streams.
pub const ATTACH: &str = "io.cairn.attach";

/// OCI spec annotation: the container's stdin closes after the first attach ends.
pub const STDIN_ONCE: &str = "io.cairn.stdin-once";

/// The FIFOs of one attach; an empty path leaves that stream out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

/// The overlay described by a Task API mount (`lowerdir=a:b`, `upperdir=`, `workdir=`).
pub fn overlay_from(
    m: &containerd_shim_protos::types::mount::Mount,
) -> Result<OverlayMount, String> {
    if m.type_ != "overlay" {
        return Err(format!(
            "rootfs mount type {:?}: only overlay is supported",
            m.type_
        ));
    }
    let mut lowers = Vec::new();
    let (mut upper, mut work) = (None, None);
    for opt in &m.options {
        if let Some(l) = opt.strip_prefix("lowerdir=") {
            lowers.extend(l.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
        } else if let Some(u) = opt.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(u));
        } else if let Some(w) = opt.strip_prefix("workdir=") {
            work = Some(PathBuf::from(w));
        }
    }
    let upper = match (upper, work) {
        (Some(u), Some(w)) => Some((u, w)),
        (None, None) => None,
        _ => return Err("rootfs overlay needs both upperdir and workdir".into()),
    };
    Ok(OverlayMount { lowers, upper })
}

/// The Task API mount for an overlay.
pub fn overlay_to(m: &OverlayMount) -> containerd_shim_protos::types::mount::Mount {
    let lowers: Vec<String> = m.lowers.iter().map(|p| p.display().to_string()).collect();
    let mut options = vec![format!("lowerdir={}", lowers.join(":"))];
    if let Some((u, w)) = &m.upper {
        options.push(format!("upperdir={}", u.display()));
        options.push(format!("workdir={}", w.display()));
    }
    containerd_shim_protos::types::mount::Mount {
        type_: "overlay".into(),
        source: "overlay".into(),
        options,
        ..Default::default()
    }
}
