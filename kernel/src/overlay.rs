//! Overlay mounts of a snapshot's layers: what the snapshotter (cairnd) uses for
//! read-only views and the shim's launcher for a container's rootfs.
//! Runs in cairnd and cairn-shim.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// What an overlay mount of a snapshot needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    /// Lower dirs, topmost first (overlay's order).
    pub lowers: Vec<PathBuf>,
    /// Writable upper and work dirs; None for a read-only view of a committed snapshot.
    pub upper: Option<(PathBuf, PathBuf)>,
}

/// Why an overlay could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{0}")]
    Invalid(String),
    #[error("mounting overlay at {}: {source}", target.display())]
    Mount {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Mounts an overlay at `target`. Uses the new mount API with one `lowerdir+` per layer
/// (no length limit, kernel 6.8+); falls back to mount(2) with a single option string.
pub fn mount(m: &OverlayMount, target: &Path, readonly: bool) -> Result<(), OverlayError> {
    if m.lowers.is_empty() {
        return Err(OverlayError::Invalid(format!(
            "overlay at {}: no lower layer",
            target.display()
        )));
    }
    match mount_with_fsconfig(m, target, readonly) {
        Ok(()) => Ok(()),
        // No logging here: the launcher calls this in a forked child.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) => {
            mount_legacy(m, target, readonly)
        }
        Err(source) => Err(OverlayError::Mount {
            target: target.to_path_buf(),
            source,
        }),
    }
}

fn mount_with_fsconfig(m: &OverlayMount, target: &Path, readonly: bool) -> std::io::Result<()> {
    use rustix::mount::*;
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for lower in &m.lowers {
        fsconfig_set_string(&fs, "lowerdir+", lower.as_path())?;
    }
    if let Some((upper, work)) = &m.upper {
        fsconfig_set_string(&fs, "upperdir", upper.as_path())?;
        fsconfig_set_string(&fs, "workdir", work.as_path())?;
    }
    fsconfig_set_string(&fs, "index", "off")?;
    fsconfig_create(&fs)?;
    let attrs = if readonly || m.upper.is_none() {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        MountAttrFlags::empty()
    };
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
    move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

fn mount_legacy(m: &OverlayMount, target: &Path, readonly: bool) -> Result<(), OverlayError> {
    let lowers: Vec<String> = m.lowers.iter().map(|p| p.display().to_string()).collect();
    let mut data = format!("lowerdir={}", lowers.join(":"));
    if let Some((upper, work)) = &m.upper {
        data.push_str(&format!(
            ",upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
    }
    let data = CString::new(data)
        .map_err(|_| OverlayError::Invalid("overlay options contain a NUL byte".into()))?;
    let mut flags = rustix::mount::MountFlags::empty();
    if readonly || m.upper.is_none() {
        flags |= rustix::mount::MountFlags::RDONLY;
    }
    rustix::mount::mount("overlay", target, "overlay", flags, Some(data.as_c_str())).map_err(|e| {
        OverlayError::Mount {
            target: target.to_path_buf(),
            source: e.into(),
        }
    })
}
