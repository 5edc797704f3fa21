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
//!
//! A pod that asks for a user namespace (id maps given) gets one that owns its network,
//! IPC, UTS (and shared pid) namespaces: the shim clones a child into all of them at once,
//! writes the child's `uid_map` and `gid_map` from outside, as its parent, lets it set the
//! hostname and bring loopback up, and pins the namespaces (the user one at `ns/user`).
//! The shim itself stays in the host's namespaces. With a shared pid namespace that child
//! is its pid 1, the holder; otherwise it is killed once its namespaces are pinned.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use cairn_proto::shim::pod::{ns_path, shm_path};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Which namespaces the pod gets of its own.
#[derive(Debug, Clone, Default)]
pub struct PodNamespaces {
    pub host_network: bool,
    pub host_ipc: bool,
    /// One pid namespace for all the pod's containers, held by a holder process.
    pub share_pid: bool,
    pub hostname: String,
    /// A user namespace of the pod's own, with these maps; `None` = the host's.
    pub userns: Option<UsernsMaps>,
}

/// One line of a `uid_map` or `gid_map`: `length` ids from `container` up map to host
/// ids from `host` up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub container: u32,
    pub host: u32,
    pub length: u32,
}

impl IdMap {
    /// Parses `container:host:length`.
    pub fn parse(s: &str) -> Result<IdMap, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [c, h, l] = parts.as_slice() else {
            return Err(format!("{s:?} is not container:host:length"));
        };
        let num = |v: &str| v.parse::<u32>().map_err(|e| format!("{s:?}: {v:?}: {e}"));
        Ok(IdMap {
            container: num(c)?,
            host: num(h)?,
            length: num(l)?,
        })
    }

    fn host_of(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.container)?;
        (offset < self.length).then(|| self.host.saturating_add(offset))
    }
}

/// The pod's user namespace maps (validated by cairnd before the shim starts).
#[derive(Debug, Clone, Default)]
pub struct UsernsMaps {
    pub uids: Vec<IdMap>,
    pub gids: Vec<IdMap>,
}

impl UsernsMaps {
    /// The host uid and gid of the pod's root (container id 0).
    pub fn host_root(&self) -> Option<(u32, u32)> {
        let of = |maps: &[IdMap]| maps.iter().find_map(|m| m.host_of(0));
        Some((of(&self.uids)?, of(&self.gids)?))
    }
}

/// The text written to `/proc/<pid>/uid_map` (or `gid_map`): one line per map.
fn map_text(maps: &[IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container, m.host, m.length))
        .collect()
}

/// What [`create`] made that the shim must keep track of.
#[derive(Debug, Default)]
pub struct Created {
    /// The pid of the pod's pid namespace holder (its pid 1), when the pod shares one.
    pub pid_holder: Option<i32>,
}

/// Creates the pod's namespaces in the calling process (which must not have started any
/// thread yet) and pins them under `pod_dir`. The UTS namespace follows the network
/// one: a host-network pod keeps the node's hostname, as kubelet expects.
pub fn create(pod_dir: &Path, ns: &PodNamespaces) -> Result<Created, String> {
    if let Some(maps) = &ns.userns {
        return create_in_userns(pod_dir, ns, maps);
    }
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
        mount_shm(pod_dir, None)?;
    }
    let mut created = Created::default();
    if ns.share_pid {
        let holder = fork_pid_holder()?;
        created.pid_holder = Some(holder);
        pin_from(pod_dir, "pid", &format!("/proc/{holder}/ns/pid"))?;
    }
    Ok(created)
}

/// The pod's shared `/dev/shm`, a tmpfs owned by `owner` (host uid, gid) if given.
fn mount_shm(pod_dir: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    let shm = shm_path(pod_dir);
    std::fs::create_dir_all(&shm).map_err(|e| format!("creating {}: {e}", shm.display()))?;
    let mut options = "mode=1777,size=65536k".to_string();
    if let Some((uid, gid)) = owner {
        options.push_str(&format!(",uid={uid},gid={gid}"));
    }
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(|e| format!("mounting pod shm at {}: {e}", shm.display()))
}

/// [`create`] for a pod with a user namespace (see the module doc).
fn create_in_userns(
    pod_dir: &Path,
    ns: &PodNamespaces,
    maps: &UsernsMaps,
) -> Result<Created, String> {
    if ns.host_network || ns.host_ipc {
        return Err("a user namespace needs the pod's own network and ipc namespaces".into());
    }
    let owner = maps
        .host_root()
        .ok_or("the user namespace maps do not map container id 0")?;
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (go_r, go_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    let mut flags =
        libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if ns.share_pid {
        flags |= libc::CLONE_NEWPID;
    }
    // SAFETY: a fork-like clone (no new stack, SIGCHLD on exit) of a process with a single
    // thread (see `create`); the child never returns.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags | libc::SIGCHLD, 0, 0, 0, 0) };
    if pid == 0 {
        drop((go_w, done_r));
        userns_child(go_r, done_w, ns);
    }
    drop((go_r, done_w));
    if pid < 0 {
        return Err(format!(
            "cloning into the pod's new user namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    let pid = pid as i32;
    let made = setup_userns(pod_dir, ns, maps, pid, go_w, done_r);
    let made = made.and_then(|()| mount_shm(pod_dir, Some(owner)));
    if made.is_err() || !ns.share_pid {
        // SAFETY: the child is ours; kill and reap it.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    made.map(|()| Created {
        pid_holder: ns.share_pid.then_some(pid),
    })
}

/// The shim's part: writes the child's id maps, lets it go, waits for its word, pins its
/// namespaces.
fn setup_userns(
    pod_dir: &Path,
    ns: &PodNamespaces,
    maps: &UsernsMaps,
    pid: i32,
    go: OwnedFd,
    done: OwnedFd,
) -> Result<(), String> {
    for (file, list) in [("uid_map", &maps.uids), ("gid_map", &maps.gids)] {
        let path = format!("/proc/{pid}/{file}");
        // One write: the kernel takes the whole map at once or not at all.
        std::fs::write(&path, map_text(list)).map_err(|e| format!("writing {path}: {e}"))?;
    }
    std::fs::File::from(go)
        .write_all(b"g")
        .map_err(|e| format!("releasing the pod's namespace child: {e}"))?;
    let mut word = String::new();
    std::fs::File::from(done)
        .read_to_string(&mut word)
        .map_err(|e| format!("reading the pod's namespace child: {e}"))?;
    if word != "ok" {
        return Err(if word.is_empty() {
            "the pod's namespace child died".to_string()
        } else {
            word
        });
    }
    std::fs::create_dir_all(pod_dir.join("ns")).map_err(|e| format!("creating ns dir: {e}"))?;
    let mut kinds = vec!["user", "net", "uts", "ipc"];
    if ns.share_pid {
        kinds.push("pid");
    }
    for kind in kinds {
        pin_from(pod_dir, kind, &format!("/proc/{pid}/ns/{kind}"))?;
    }
    Ok(())
}

/// The child cloned into the pod's new namespaces: once its maps are written, sets the
/// hostname and brings loopback up, says "ok" (or why not), then is the pid namespace's
/// holder or waits to be killed. Never returns.
fn userns_child(go: OwnedFd, done: OwnedFd, ns: &PodNamespaces) -> ! {
    // SAFETY: prctl on ourselves with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut byte = [0u8; 1];
    if !matches!(std::fs::File::from(go).read(&mut byte), Ok(1)) {
        // SAFETY: leaving without running the shim's exit handlers.
        unsafe { libc::_exit(1) };
    }
    let set_up = nix::unistd::sethostname(&ns.hostname)
        .map_err(|e| format!("sethostname {:?}: {e}", ns.hostname))
        .and_then(|()| loopback_up());
    let word = match set_up {
        Ok(()) => "ok".to_string(),
        Err(e) => e,
    };
    let _ = std::fs::File::from(done).write_all(word.as_bytes());
    if ns.share_pid {
        holder_main();
    }
    loop {
        // SAFETY: pause has no arguments; SIGKILL ends it.
        unsafe { libc::pause() };
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_parse_and_render() {
        let m = IdMap::parse("0:100000:65536").unwrap();
        assert_eq!(
            m,
            IdMap {
                container: 0,
                host: 100000,
                length: 65536
            }
        );
        for bad in ["", "0:1", "0:1:2:3", "a:1:2", "0:-1:2", "0:1:4294967296"] {
            assert!(IdMap::parse(bad).is_err(), "{bad:?}");
        }
        let maps = UsernsMaps {
            uids: vec![IdMap::parse("1000:300000:10").unwrap(), m],
            gids: vec![IdMap::parse("0:200000:1").unwrap()],
        };
        assert_eq!(map_text(&maps.uids), "1000 300000 10\n0 100000 65536\n");
        assert_eq!(maps.host_root(), Some((100000, 200000)));
        let no_root = UsernsMaps {
            uids: vec![IdMap::parse("1:100000:10").unwrap()],
            gids: maps.gids.clone(),
        };
        assert_eq!(no_root.host_root(), None);
    }
}
