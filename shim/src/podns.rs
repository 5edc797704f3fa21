//! The pod's namespaces, made and held by its shim: a new network namespace (loopback
//! up), IPC and UTS namespaces (hostname set), each bind-mounted under the pod's run dir
//! so that CNI plugins and `setns` reach them by path, and the pod's shared `/dev/shm`.
//! Host namespaces are used where the pod asks for them. No pause container.
//!
//! When the pod shares one pid namespace among its containers (`NamespaceMode::POD`),
//! the shim forks a tiny holder process that is pid 1 of that namespace: a pid
//! namespace lives only as long as its init, and its init must reap the orphans of the
//! containers. The holder is a copy of the shim made before the shim starts any thread;
//! it does nothing but reap, and dies with the shim (parent-death signal).

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Which namespaces the pod gets of its own.
#[derive(Debug, Clone, Default)]
pub struct PodNamespaces {
    pub host_network: bool,
    pub host_ipc: bool,
    /// One pid namespace for all the pod's containers, held by a holder process.
    pub share_pid: bool,
    pub hostname: String,
}

/// What [`create`] made that the shim must keep track of.
#[derive(Debug, Default)]
pub struct Created {
    /// The pid of the pod's pid namespace holder (its pid 1), when the pod shares one.
    pub pid_holder: Option<i32>,
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
pub fn create(pod_dir: &Path, ns: &PodNamespaces) -> Result<Created, String> {
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
    let mut created = Created::default();
    if ns.share_pid {
        let holder = fork_pid_holder()?;
        created.pid_holder = Some(holder);
        pin_from(pod_dir, "pid", &format!("/proc/{holder}/ns/pid"))?;
    }
    Ok(created)
}

/// Forks the holder of a new pid namespace (its pid 1) and returns its pid. The calling
/// process keeps its own pid namespace for the children it makes later.
fn fork_pid_holder() -> Result<i32, String> {
    let own = std::fs::File::open("/proc/self/ns/pid")
        .map_err(|e| format!("opening /proc/self/ns/pid: {e}"))?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare pid namespace: {e}"))?;
    // SAFETY: the caller is single-threaded (see `create`); the child only makes
    // async-signal-safe calls and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        holder_main();
    }
    let forked = if pid < 0 {
        Err(format!(
            "forking the pod's pid namespace holder: {}",
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(pid)
    };
    // Back to our own pid namespace for the containers' launcher children.
    nix::sched::setns(&own, CloneFlags::CLONE_NEWPID)
        .map_err(|e| format!("returning to the shim's pid namespace: {e}"))?;
    forked
}

extern "C" fn on_sigchld(_: libc::c_int) {}

/// pid 1 of the pod's pid namespace: reaps whatever is reparented to it, until SIGKILL
/// (sent by the kernel when the shim dies, or by the shim when the pod stops).
fn holder_main() -> ! {
    // SAFETY: plain system calls on our own process, with valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_NAME, c"pause".as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        libc::chdir(c"/".as_ptr());
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &chld, std::ptr::null_mut());
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigchld as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut());
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        loop {
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            // Atomically unblocks SIGCHLD and sleeps until one arrives.
            libc::sigsuspend(&none);
        }
    }
}

/// Bind-mounts this thread's namespace of `kind` onto `<pod_dir>/ns/<kind>`.
fn pin(pod_dir: &Path, kind: &str) -> Result<(), String> {
    pin_from(pod_dir, kind, &format!("/proc/thread-self/ns/{kind}"))
}

/// Bind-mounts the namespace file `source` onto `<pod_dir>/ns/<kind>`.
fn pin_from(pod_dir: &Path, kind: &str, source: &str) -> Result<(), String> {
    let target = ns_path(pod_dir, kind);
    std::fs::File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    mount(
        Some(source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("pinning {kind} namespace at {}: {e}", target.display()))
}

/// Unmounts what [`create`] mounted; what is not mounted is skipped.
pub fn release(pod_dir: &Path) {
    for kind in ["net", "uts", "ipc", "pid"] {
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
