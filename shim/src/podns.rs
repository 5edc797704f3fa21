//! The pod's namespaces, made and held by its shim: a new network namespace (loopback
//! up), IPC and UTS namespaces (hostname set), each bind-mounted under the pod's run dir
//! so that CNI plugins and `setns` reach them by path, and the pod's shared `/dev/shm`.
//! Host namespaces are used where the pod asks for them. No pause container.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Which namespaces the pod gets of its own.
#[derive(Debug, Clone, Default)]
pub struct PodNamespaces {
    pub host_network: bool,
    pub host_ipc: bool,
    pub hostname: String,
}

/// Where a pod's namespace files and shm live under its run dir.
pub fn ns_path(pod_dir: &Path, kind: &str) -> PathBuf {
    pod_dir.join("ns").join(kind)
}

pub fn shm_path(pod_dir: &Path) -> PathBuf {
    pod_dir.join("shm")
}

/// Creates the pod's namespaces in the calling process (which must not have started any
/// thread yet) and pins them under `pod_dir`. The UTS namespace follows the network
/// one: a host-network pod keeps the node's hostname, as kubelet expects.
pub fn create(pod_dir: &Path, ns: &PodNamespaces) -> Result<(), String> {
    let mut flags = CloneFlags::empty();
    if !ns.host_network {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    if !ns.host_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if !flags.is_empty() {
        unshare(flags).map_err(|e| format!("unshare pod namespaces: {e}"))?;
    }
    std::fs::create_dir_all(pod_dir.join("ns")).map_err(|e| format!("creating ns dir: {e}"))?;
    if !ns.host_network {
        nix::unistd::sethostname(&ns.hostname)
            .map_err(|e| format!("sethostname {:?}: {e}", ns.hostname))?;
        loopback_up()?;
        pin(pod_dir, "net")?;
        pin(pod_dir, "uts")?;
    }
    if !ns.host_ipc {
        pin(pod_dir, "ipc")?;
        let shm = shm_path(pod_dir);
        std::fs::create_dir_all(&shm).map_err(|e| format!("creating {}: {e}", shm.display()))?;
        mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .map_err(|e| format!("mounting pod shm at {}: {e}", shm.display()))?;
    }
    Ok(())
}

/// Bind-mounts this thread's namespace of `kind` onto `<pod_dir>/ns/<kind>`.
fn pin(pod_dir: &Path, kind: &str) -> Result<(), String> {
    let target = ns_path(pod_dir, kind);
    std::fs::File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    let source = format!("/proc/thread-self/ns/{kind}");
    mount(
        Some(source.as_str()),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("pinning {kind} namespace at {}: {e}", target.display()))
}

/// Unmounts what [`create`] mounted; what is not mounted is skipped.
pub fn release(pod_dir: &Path) {
    for kind in ["net", "uts", "ipc"] {
        let _ = umount2(&ns_path(pod_dir, kind), MntFlags::MNT_DETACH);
    }
    let _ = umount2(&shm_path(pod_dir), MntFlags::MNT_DETACH);
}

/// Sets IFF_UP on `lo` with an ioctl (no `ip` binary on the start path).
fn loopback_up() -> Result<(), String> {
    // SAFETY: plain socket/ioctl calls with a zeroed, correctly sized ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut result = Ok(());
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            result = Err(format!(
                "SIOCGIFFLAGS lo: {}",
                std::io::Error::last_os_error()
            ));
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
                result = Err(format!(
                    "SIOCSIFFLAGS lo: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        libc::close(fd);
        result
    }
}
