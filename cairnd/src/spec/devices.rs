//! The container's device nodes: the CRI devices (stat'ed on the host), every host device
//! for privileged containers, and their device cgroup rules.
//! Runs in cairnd.

use super::*;

/// The device node of `meta`, placed at `dest`; `None` if it is not a device.
pub(super) fn device_from(meta: &fs::Metadata, dest: &Path) -> Option<LinuxDevice> {
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = meta.rdev();
    let mut dev = LinuxDevice::default();
    dev.set_path(dest.to_path_buf())
        .set_typ(typ)
        .set_major(nix::sys::stat::major(rdev) as i64)
        .set_minor(nix::sys::stat::minor(rdev) as i64)
        .set_file_mode(Some(meta.mode() & 0o7777))
        .set_uid(Some(meta.uid()))
        .set_gid(Some(meta.gid()));
    Some(dev)
}

/// Directories of the host's /dev whose nodes privileged containers do not get.
pub(super) const HOST_DEV_SKIP: [&str; 7] =
    ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// Every device node under `dir` (not following symlinks), placed under `dest`.
pub(super) fn devices_in(
    dir: &Path,
    dest: &Path,
    skip: &[&str],
    out: &mut Vec<LinuxDevice>,
) -> Result<(), SpecError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SpecError::io("list devices", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| SpecError::io("list devices", dir, e))?;
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SpecError::io("stat device", &path, e)),
        };
        if meta.is_dir() {
            devices_in(&path, &dest.join(&name), &[], out)?;
        } else if let Some(dev) = device_from(&meta, &dest.join(&name)) {
            out.push(dev);
        }
    }
    Ok(())
}

pub(super) fn device_permissions(perms: &str, who: &str, host: &str) -> Result<String, SpecError> {
    if perms.is_empty() {
        return Ok("rwm".to_string());
    }
    if !perms.chars().all(|ch| matches!(ch, 'r' | 'w' | 'm')) {
        return Err(invalid(
            who,
            format!("device {host}: permissions {perms:?} are not a subset of \"rwm\""),
        ));
    }
    Ok(perms.to_string())
}

/// The device nodes to create (CRI devices, plus the host's for privileged containers) and
/// the device cgroup rules.
pub(super) fn devices(
    config: &cri::ContainerConfig,
    who: &str,
    privileged: bool,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut nodes = Vec::new();
    let mut rules = if privileged {
        vec![device_rule(true, LinuxDeviceType::A, None, None, "rwm")]
    } else {
        default_device_rules()
    };
    for d in &config.devices {
        let perms = device_permissions(&d.permissions, who, &d.host_path)?;
        if d.host_path.is_empty() {
            return Err(invalid(who, "device with an empty host_path"));
        }
        let dest = if d.container_path.is_empty() {
            &d.host_path
        } else {
            &d.container_path
        };
        if !dest.starts_with('/') {
            return Err(invalid(
                who,
                format!("device container_path {dest:?} is not absolute"),
            ));
        }
        let host = Path::new(&d.host_path);
        let meta = match fs::metadata(host) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpecError::NotFound(format!(
                    "{who}: device {}: no such device on the host",
                    d.host_path
                )))
            }
            Err(e) => return Err(SpecError::io(format!("{who}: stat device"), host, e)),
        };
        let mut found = Vec::new();
        if meta.is_dir() {
            devices_in(host, Path::new(dest), &[], &mut found)?;
        } else {
            let dev = device_from(&meta, Path::new(dest)).ok_or_else(|| {
                invalid(who, format!("device {}: not a device node", d.host_path))
            })?;
            found.push(dev);
        }
        for dev in found {
            if !privileged {
                rules.push(device_rule(
                    true,
                    dev.typ(),
                    Some(dev.major()),
                    Some(dev.minor()),
                    &perms,
                ));
            }
            nodes.push(dev);
        }
    }
    if privileged {
        devices_in(
            Path::new("/dev"),
            Path::new("/dev"),
            &HOST_DEV_SKIP,
            &mut nodes,
        )?;
        nodes.retain(|d| d.path() != Path::new("/dev/console"));
    }
    let mut seen = HashSet::new();
    nodes.retain(|d| seen.insert(d.path().clone()));
    Ok((nodes, rules))
}
