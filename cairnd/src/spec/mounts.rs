//! The container's mounts: the system ones, /dev/shm, the pod's hostname/hosts/resolv.conf,
//! and the CRI mounts as binds with their propagation (a propagating source must itself
//! propagate).
//! Runs in cairnd.

use super::*;

// Mounts

pub(super) fn mount(dest: &str, typ: &str, source: impl Into<PathBuf>, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest))
        .set_typ(Some(typ.to_string()))
        .set_source(Some(source.into()))
        .set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// Lexically normalised absolute path (`//a/./b/` -> `/a/b`), for comparing destinations.
pub(super) fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

pub(super) fn propagation(value: i32, who: &str, dest: &str) -> Result<&'static str, SpecError> {
    match cri::MountPropagation::try_from(value) {
        Ok(cri::MountPropagation::PropagationPrivate) => Ok("rprivate"),
        Ok(cri::MountPropagation::PropagationHostToContainer) => Ok("rslave"),
        Ok(cri::MountPropagation::PropagationBidirectional) => Ok("rshared"),
        Err(_) => Err(invalid(
            who,
            format!("mount {dest}: unknown propagation {value}"),
        )),
    }
}

/// Makes sure a bind source exists (creating a missing one as a directory, as Docker did)
/// and resolves its symlinks.
pub(super) fn bind_source(host_path: &str, who: &str, dest: &str) -> Result<PathBuf, SpecError> {
    if host_path.is_empty() {
        return Err(invalid(who, format!("mount {dest}: empty host_path")));
    }
    let path = Path::new(host_path);
    match fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(path)
                .map_err(|e| SpecError::io(format!("{who}: create mount source"), path, e))?;
        }
        Err(e) => return Err(SpecError::io(format!("{who}: stat mount source"), path, e)),
    }
    fs::canonicalize(path)
        .map_err(|e| SpecError::io(format!("{who}: resolve mount source"), path, e))
}

/// A propagating mount needs a source that propagates: for `rshared` (BIDIRECTIONAL) one on
/// a shared mount, for `rslave` (HOST_TO_CONTAINER) on a shared or slave mount; else the
/// mounts a user expects to see would silently not appear. containerd refuses these too.
pub(super) fn check_source_propagates(
    source: &Path,
    prop: &str,
    who: &str,
    dest: &str,
) -> Result<(), SpecError> {
    let table = cairn_kernel::mountinfo::read()
        .map_err(|e| SpecError::io(format!("{who}: read"), Path::new("/proc/self/mountinfo"), e))?;
    let Some(mount) = cairn_kernel::mountinfo::mount_of(&table, source) else {
        return Ok(());
    };
    let ok = match prop {
        "rshared" => mount.is_shared(),
        _ => mount.is_shared() || mount.is_slave(),
    };
    if ok {
        return Ok(());
    }
    let (mode, needs) = match prop {
        "rshared" => ("bidirectional", "a shared mount"),
        _ => ("host-to-container", "a shared or slave mount"),
    };
    Err(SpecError::FailedPrecondition(format!(
        "{who}: mount {dest}: {mode} propagation needs its source {} on {needs}, but {} is \
         mounted private (make it shared, e.g. `mount --make-rshared {}`, as systemd does for /)",
        source.display(),
        mount.mount_point.display(),
        mount.mount_point.display()
    )))
}

/// The CRI mounts as OCI bind mounts, parents before children.
pub(super) fn cri_mounts(
    config: &cri::ContainerConfig,
    who: &str,
) -> Result<Vec<(String, Mount)>, SpecError> {
    let mut out = Vec::new();
    for m in &config.mounts {
        if !m.container_path.starts_with('/') {
            return Err(invalid(
                who,
                format!(
                    "mount container_path {:?} is not absolute",
                    m.container_path
                ),
            ));
        }
        let dest = clean_path(&m.container_path);
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
            return Err(invalid(
                who,
                format!("mount {dest}: image volumes are not supported"),
            ));
        }
        if m.recursive_read_only && !m.readonly {
            return Err(invalid(
                who,
                format!("mount {dest}: recursive_read_only needs readonly"),
            ));
        }
        let prop = propagation(m.propagation, who, &dest)?;
        if m.recursive_read_only && prop != "rprivate" {
            return Err(invalid(
                who,
                format!("mount {dest}: recursive_read_only needs private propagation"),
            ));
        }
        let source = bind_source(&m.host_path, who, &dest)?;
        if prop != "rprivate" {
            check_source_propagates(&source, prop, who, &dest)?;
        }
        let access = match (m.readonly, m.recursive_read_only) {
            (true, true) => "rro",
            (true, false) => "ro",
            _ => "rw",
        };
        let mount = mount(&dest, "bind", source, &["rbind", prop, access]);
        out.push((dest, mount));
    }
    out.sort_by_key(|(dest, _)| dest.matches('/').count() - usize::from(dest == "/"));
    Ok(out)
}

/// All mounts: the system ones, /dev/shm, the pod's hostname/hosts/resolv.conf, then the CRI
/// mounts. A default mount is left out when a CRI mount has its destination (or, for mounts
/// under /dev, when CRI mounts /dev).
pub(super) fn mounts(
    pod: &PodContext,
    c: &ContainerContext,
    who: &str,
    privileged: bool,
    readonly_rootfs: bool,
) -> Result<Vec<Mount>, SpecError> {
    let cri = cri_mounts(c.config, who)?;
    let covered: HashSet<&str> = cri.iter().map(|(dest, _)| dest.as_str()).collect();
    let sys_access = if privileged { "rw" } else { "ro" };
    let file_access = if readonly_rootfs { "ro" } else { "rw" };

    let mut defaults = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_access],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_access],
        ),
    ];
    defaults.push(match &pod.shm {
        Some(shm) => mount("/dev/shm", "bind", shm, &["rbind", "rprivate", "rw"]),
        None => mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    });
    let files = [
        ("/etc/hostname", Some(&pod.hostname_file)),
        ("/etc/hosts", Some(&pod.hosts)),
        ("/etc/resolv.conf", pod.resolv_conf.as_ref()),
    ];
    for (dest, source) in files {
        if let Some(source) = source {
            defaults.push(mount(
                dest,
                "bind",
                source,
                &["rbind", "rprivate", file_access],
            ));
        }
    }

    let dev_covered = covered.contains("/dev");
    let mut out: Vec<Mount> = defaults
        .into_iter()
        .filter(|m| {
            let dest = m.destination().to_string_lossy();
            let hidden =
                covered.contains(dest.as_ref()) || (dev_covered && dest.starts_with("/dev/"));
            !hidden
        })
        .collect();
    out.extend(cri.into_iter().map(|(_, m)| m));
    Ok(out)
}

/// The rootfs propagation the CRI mounts need: rshared for a bidirectional mount, rslave for
/// a host-to-container one, the launcher's default otherwise.
pub(super) fn rootfs_propagation(config: &cri::ContainerConfig) -> Option<String> {
    let props: Vec<i32> = config.mounts.iter().map(|m| m.propagation).collect();
    if props.contains(&(cri::MountPropagation::PropagationBidirectional as i32)) {
        Some("rshared".to_string())
    } else if props.contains(&(cri::MountPropagation::PropagationHostToContainer as i32)) {
        Some("rslave".to_string())
    } else {
        None
    }
}
