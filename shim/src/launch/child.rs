//! The code that runs in the forked children, between `fork` and `execve`.
//!
//! The middle child joins the cgroup v1 hierarchies and the namespaces (the user
//! namespace first, after mounting the rootfs with idmapped layers while still in the
//! host's), creates the new ones and clones the container process into the cgroup2 dir
//! (an exec'd process joins the rest itself: [`run_exec`]). The container process (the
//! grandchild) makes its cgroup namespace, sets up its mount namespace and root, switches
//! user and capabilities, reports "ready" and blocks until the shim says start, then
//! execs (or, without a start pipe, execs right away). Nothing here logs or takes a lock:
//! failures travel to the shim as short messages over the report pipe (see [`send`]),
//! then the child `_exit`s.
//!
//! The container's mount-namespace setup ([`setup_container`]) makes its privileged calls
//! through a [`Syscall`] ([`LinuxSyscall`] for real), so that tests can record them
//! without root (`syscall/tests.rs`).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;

use libc::{c_int, c_ulong, pid_t};
use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::plan::{
    v2_join, CgroupBind, CgroupJoin, ContainerPlan, DevicePlan, ExecPlan, MountKind, MountPlan,
    NsJoin, ProcessPlan, RootfsPlan, UsernsPlan, BIND_REMOUNT_FLAGS,
};
use super::sys::{self, cvt, FdPath};
use super::syscall::{LinuxSyscall, Syscall};

/// Report record tags: middle child → shim.
pub(super) const TAG_PID: u8 = b'P';
/// Container process → shim: set up, waiting for start. The payload is empty when the
/// executable was found, else the message its start will fail with.
pub(super) const TAG_READY: u8 = b'R';
/// Either child → shim: setup failed (the text says what); the child has exited.
pub(super) const TAG_ERROR: u8 = b'E';
/// Container process → shim, after start (or after setup, without a start pipe): the
/// command could not be executed.
pub(super) const TAG_EXEC: u8 = b'X';
/// Longest message payload; a record (5-byte header + payload) stays below PIPE_BUF, so
/// each is written atomically even when both children write.
pub(super) const MAX_MESSAGE: usize = 3072;

/// Writes one record `[tag, len as u32 le, payload]` in a single write.
pub(super) fn send(fd: RawFd, tag: u8, payload: &[u8]) {
    let n = payload.len().min(MAX_MESSAGE);
    let mut buf = [0u8; 5 + MAX_MESSAGE];
    buf[0] = tag;
    buf[1..5].copy_from_slice(&(n as u32).to_le_bytes());
    buf[5..5 + n].copy_from_slice(&payload[..n]);
    // Nothing to do if the shim is gone.
    let _ = sys::write_all(fd, &buf[..5 + n]);
}

/// A setup failure: the message the shim shows.
pub(super) struct Fail(pub(super) String);

trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Fail>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Fail> {
        self.map_err(|e| Fail(format!("{}: {e}", what())))
    }
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// The container's stdio as the children see it.
pub(super) enum ChildStdio<'a> {
    Fds([RawFd; 3]),
    /// The pty slave (opened by the shim) and its host path (bound onto /dev/console).
    Terminal {
        slave: RawFd,
        path: &'a CStr,
    },
}

/// The descriptors shared by the shim and its children.
pub(super) struct ChildIo<'a> {
    /// Write end of the report pipe.
    pub(super) report: RawFd,
    /// Read end of the start pipe; None: no handshake, the process execs once set up.
    pub(super) start: Option<RawFd>,
    pub(super) stdio: ChildStdio<'a>,
    /// Every descriptor the children need (sorted); all others are closed.
    pub(super) keep: &'a [RawFd],
}

/// The middle child of a container: called right after the first fork; never returns.
pub(super) fn run_middle(plan: &ContainerPlan<'_>, io: &ChildIo<'_>) -> ! {
    sys::close_fds_except(io.keep);
    sys::reset_signal_handlers();
    // A panic must never unwind back into the shim's code in a forked copy of it.
    let forked = std::panic::catch_unwind(AssertUnwindSafe(|| middle_create(plan, io)));
    match forked {
        Ok(Ok(pid)) => {
            send(io.report, TAG_PID, pid.to_string().as_bytes());
            sys::exit(0)
        }
        Ok(Err(Fail(msg))) => {
            send(io.report, TAG_ERROR, msg.as_bytes());
            sys::exit(1)
        }
        Err(_) => report_panic(io),
    }
}

/// oom_score_adj and the cgroup v1 hierarchies, while still in the host's user namespace.
/// The cgroup2 directory is joined when the process is forked ([`fork_into_v2`],
/// [`exec_into_v2`]).
fn enter_host(oom: &Option<String>, cgroups: &[CgroupJoin]) -> Result<(), Fail> {
    if let Some(v) = oom {
        sys::write_file(c"/proc/self/oom_score_adj", v.as_bytes())
            .ctx(|| format!("setting oom_score_adj to {v}"))?;
    }
    for cg in cgroups {
        if let CgroupJoin::V1 { tasks, dir } = cg {
            // "0": the writing thread, which is the whole (single-threaded) process.
            sys::write_all(tasks.as_raw_fd(), b"0")
                .ctx(|| format!("joining the cgroup {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Moves this (single-threaded) process into the cgroup2 directory by writing to its
/// `cgroup.procs`: the fallback of [`fork_into_v2`], and the way in before joining a pod's
/// user namespace.
fn join_v2_by_write(cg: &CgroupJoin) -> Result<(), Fail> {
    let CgroupJoin::V2 { procs, dir, .. } = cg else {
        return Ok(());
    };
    sys::write_all(procs.as_raw_fd(), b"0").ctx(|| format!("joining the cgroup {}", dir.display()))
}

/// What [`fork_into_v2`] returns in the child: the cgroup2 directory it still has to join
/// (clone3 could not put it there), if any.
type Pending<'p> = Option<&'p CgroupJoin>;

/// Forks the container process straight into the cgroup2 directory `v2` (if any), or with
/// a plain fork when the kernel cannot (the child then joins by writing; see
/// [`join_v2_by_write`]). Signals stay blocked in the child, as they are here since the
/// first fork.
fn fork_into_v2(v2: Option<&CgroupJoin>) -> Result<(pid_t, Pending<'_>), Fail> {
    if let Some(cg @ CgroupJoin::V2 { dir_fd, .. }) = v2 {
        if let Ok(pid) = sys::fork_into_cgroup(dir_fd.as_raw_fd(), false) {
            return Ok((pid, None));
        }
        return Ok((fork_plain()?, Some(cg)));
    }
    Ok((fork_plain()?, None))
}

/// Joins a (pod's) user namespace and becomes its root: the container's setup then
/// creates files as that root, and the later switch to the spec's user happens inside.
fn join_userns(ns: &NsJoin) -> Result<(), Fail> {
    // SAFETY: setns on a namespace file descriptor we hold; this process is single-threaded.
    cvt(unsafe { libc::setns(ns.fd.as_raw_fd(), ns.nstype) })
        .ctx(|| format!("joining {}", ns.what))?;
    // SAFETY: plain id changes; 0 is mapped (checked when the spec was built).
    cvt(unsafe { libc::setresgid(0, 0, 0) }).ctx(|| format!("becoming gid 0 in {}", ns.what))?;
    // SAFETY: as above.
    cvt(unsafe { libc::setresuid(0, 0, 0) }).ctx(|| format!("becoming uid 0 in {}", ns.what))?;
    Ok(())
}

/// Joins the namespaces that have a path (the user namespace is joined before).
fn join_namespaces(join: &[NsJoin]) -> Result<(), Fail> {
    for ns in join {
        // SAFETY: setns on a namespace file descriptor we hold.
        cvt(unsafe { libc::setns(ns.fd.as_raw_fd(), ns.nstype) })
            .ctx(|| format!("joining {}", ns.what))?;
    }
    Ok(())
}

fn fork_plain() -> Result<pid_t, Fail> {
    // Single-threaded here; signals are still blocked from the first fork.
    // SAFETY: plain fork of a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Fail(format!(
            "forking the container process: {}",
            last_error()
        )));
    }
    Ok(pid)
}

/// What the middle child of a container in a user namespace prepares while still in the
/// host's user namespace, for the container process to attach in its own mount namespace
/// (made inside the user namespace, where the host's paths may not be reachable).
pub(super) struct Premounted {
    /// A detached copy of the mounted rootfs.
    rootfs: OwnedFd,
    /// For each of `plan.mounts`: detached copies of its sources (one for a bind mount,
    /// one per hierarchy for the cgroup v1 tmpfs, none for other filesystems).
    binds: Vec<Vec<OwnedFd>>,
}

/// Mounts the rootfs of a container in a user namespace, in a mount namespace of the
/// middle child's own: each lower layer (or a plain rootfs dir) becomes an idmapped mount
/// of itself, then the overlay goes on top. Takes detached copies of it and of the bind
/// mount sources, and moves the cwd onto the rootfs (where it is attached later).
fn premount(plan: &ContainerPlan<'_>, userns: &UsernsPlan) -> Result<Premounted, Fail> {
    let rootfs = &plan.rootfs;
    // SAFETY: unshare with a CLONE_NEW* flag only.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNS) })
        .ctx(|| "creating the mount namespace that prepares the rootfs".into())?;
    set_tree_propagation(&LinuxSyscall, rootfs)?;
    for (path, shown) in &userns.idmap {
        sys::idmap_in_place(path, userns.join.fd.as_raw_fd()).map_err(|e| {
            Fail(format!(
                "idmapping {} for the pod's user namespace: {e}; this kernel or filesystem \
                 does not allow idmapped mounts there, and cairn does not chown image layers, \
                 so pods with a user namespace cannot run on this host",
                shown.display()
            ))
        })?;
    }
    if let Some(overlay) = rootfs.overlay {
        cairn_kernel::overlay::mount(overlay, &rootfs.display, false).map_err(|e| {
            Fail(format!(
                "mounting the container rootfs over idmapped layers: {e}"
            ))
        })?;
    }
    let tree = sys::open_tree(&rootfs.path, true)
        .ctx(|| format!("copying the rootfs mount {}", rootfs.display.display()))?;
    // SAFETY: chdir to a NUL-terminated path.
    cvt(unsafe { libc::chdir(rootfs.path.as_ptr()) })
        .ctx(|| format!("entering the rootfs {}", rootfs.display.display()))?;
    let mut binds = Vec::with_capacity(plan.mounts.len());
    for m in &plan.mounts {
        binds.push(match &m.kind {
            MountKind::Bind { source, recursive } => vec![sys::open_tree(source, *recursive)
                .ctx(|| format!("copying the source of the {}", m.describe))?],
            MountKind::CgroupV1 { hierarchies } => hierarchies
                .iter()
                .map(|h| cgroup_tree(&LinuxSyscall, h, m.flags))
                .collect::<Result<_, _>>()?,
            MountKind::Fs { .. } => Vec::new(),
        });
    }
    Ok(Premounted {
        rootfs: tree,
        binds,
    })
}

fn middle_create(plan: &ContainerPlan<'_>, io: &ChildIo<'_>) -> Result<pid_t, Fail> {
    enter_host(&plan.oom_score_adj, &plan.cgroups)?;
    let mut v2 = v2_join(&plan.cgroups);
    let premounted = match &plan.userns {
        Some(userns) => {
            // The namespace's root may not write the host's cgroups: join first.
            if let Some(cg) = v2.take() {
                join_v2_by_write(cg)?;
            }
            let p = premount(plan, userns)?;
            join_userns(&userns.join)?;
            Some(p)
        }
        None => None,
    };
    join_namespaces(&plan.join)?;
    // The cgroup namespace is made by the container process, once it is in its cgroups:
    // its root is the cgroup of whoever creates it.
    let unshare = plan.unshare & !libc::CLONE_NEWCGROUP;
    // SAFETY: unshare with CLONE_NEW* flags only.
    cvt(unsafe { libc::unshare(unshare) }).ctx(|| "creating the container's namespaces".into())?;
    let (pid, pending) = fork_into_v2(v2)?;
    if pid == 0 {
        let exe = pending
            .map_or(Ok(()), join_v2_by_write)
            .and_then(|()| new_cgroup_namespace(plan.unshare))
            .and_then(|()| setup_container(&LinuxSyscall, plan, premounted.as_ref(), io))
            .and_then(|()| prepare_process(&plan.process, io));
        finish(&plan.process, exe, io)
    }
    Ok(pid)
}

/// The container's cgroup namespace, if the spec asks for a new one.
fn new_cgroup_namespace(unshare: c_int) -> Result<(), Fail> {
    if unshare & libc::CLONE_NEWCGROUP == 0 {
        return Ok(());
    }
    // SAFETY: unshare with a CLONE_NEW* flag only.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) })
        .ctx(|| "creating the container's cgroup namespace".into())
        .map(drop)
}

/// An exec'd process, forked by the shim straight into the target's pid namespace: joins
/// the cgroups and the other namespaces, sets the process up and execs (after start, with
/// a start pipe). Never returns.
pub(super) fn run_exec(plan: &ExecPlan, io: &ChildIo<'_>) -> ! {
    sys::close_fds_except(io.keep);
    sys::reset_signal_handlers();
    // A panic must never unwind back into the shim's code in a forked copy of it.
    let forked = std::panic::catch_unwind(AssertUnwindSafe(|| {
        exec_into_v2(plan, io)?;
        enter_host(&plan.oom_score_adj, &plan.cgroups)?;
        if let Some(userns) = &plan.userns {
            join_userns(userns)?;
        }
        join_namespaces(&plan.join)?;
        prepare_process(&plan.process, io)
    }));
    match forked {
        Ok(exe) => finish(&plan.process, exe, io),
        Err(_) => report_panic(io),
    }
}

/// Puts the exec'd process into the cgroup2 directory, if the plan has one. The shim
/// (multi-threaded) cannot clone straight into a cgroup, so it forked this process in its
/// own pid namespace (see `launch::spawn`): this one points its children at the
/// container's pid namespace, clones the exec'd process into the cgroup as a child of the
/// shim (`CLONE_PARENT`), reports its pid (a host pid, as this process is in the shim's
/// namespace) and exits; the child returns from here and goes on. The shim reaps this
/// process before it waits for the other. Without clone3 (kernels before 5.7) the child is
/// cloned without the cgroup and joins by writing.
fn exec_into_v2(plan: &ExecPlan, io: &ChildIo<'_>) -> Result<(), Fail> {
    let Some(cg @ CgroupJoin::V2 { dir_fd, .. }) = v2_join(&plan.cgroups) else {
        return Ok(());
    };
    if let Some(ns) = &plan.pid_ns {
        sys::setns(ns.fd.as_raw_fd(), libc::CLONE_NEWPID).ctx(|| format!("joining {}", ns.what))?;
    }
    let (pid, pending) = match sys::fork_into_cgroup(dir_fd.as_raw_fd(), true) {
        Ok(pid) => (pid, None),
        Err(_) => (
            sys::fork_sibling().ctx(|| "forking the exec'd process".into())?,
            Some(cg),
        ),
    };
    if pid > 0 {
        send(io.report, TAG_PID, pid.to_string().as_bytes());
        sys::exit(0)
    }
    pending.map_or(Ok(()), join_v2_by_write)
}

/// The executable found on PATH, or the message to report when started.
type Exe<'p> = Result<&'p CStr, String>;

/// Reports the setup result, waits for start (if there is a start pipe) and execs. Never
/// returns.
fn finish(p: &ProcessPlan, exe: Result<Exe<'_>, Fail>, io: &ChildIo<'_>) -> ! {
    let exe = match exe {
        Ok(exe) => exe,
        Err(Fail(msg)) => {
            send(io.report, TAG_ERROR, msg.as_bytes());
            sys::exit(1)
        }
    };
    // The seccomp filter goes in after every setup step, so that none depends on what it
    // allows. With a start handshake it goes in while the process waits for start (the
    // kernel's check and JIT of the filter overlap the answer to Create and the call to
    // Start): as runc does before its exec FIFO, that needs the profile to allow read
    // (the start pipe) and execve. A failure is reported at start.
    let confined = match io.start {
        Some(start) => {
            let lookup = match &exe {
                Ok(_) => &b""[..],
                Err(msg) => msg.as_bytes(),
            };
            send(io.report, TAG_READY, lookup);
            let confined = confine(p);
            sys::unblock_signals();
            match sys::read_byte(start) {
                Ok(Some(_)) => {}
                // The shim dropped the container without starting it.
                Ok(None) => sys::exit(1),
                Err(e) => {
                    let msg =
                        format!("waiting for start: {e} (does the seccomp profile deny read?)");
                    send(io.report, TAG_EXEC, msg.as_bytes());
                    sys::exit(1)
                }
            }
            confined
        }
        None => {
            sys::unblock_signals();
            confine(p)
        }
    };
    if let Err(Fail(msg)) = confined {
        send(io.report, TAG_EXEC, msg.as_bytes());
        sys::exit(1)
    }
    let path = match exe {
        Ok(path) => path,
        Err(msg) => {
            send(io.report, TAG_EXEC, msg.as_bytes());
            sys::exit(127)
        }
    };
    // SAFETY: path, argv and envp are NUL-terminated strings / NULL-terminated arrays.
    unsafe { libc::execve(path.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr()) };
    let e = last_error();
    let msg = format!("exec: {:?}: {}", p.name, sys::errno_text(&e));
    send(io.report, TAG_EXEC, msg.as_bytes());
    sys::exit(if e.raw_os_error() == Some(libc::ENOENT) {
        127
    } else {
        126
    })
}

/// The container's root: the overlay (or a bind of the plain rootfs dir) mounted at the
/// rootfs path, or in a user namespace the premounted copy attached onto the cwd (the
/// rootfs path, reached without walking host dirs the namespace's root may not search).
/// Returns the rootfs opened.
fn mount_rootfs(
    os: &impl Syscall,
    plan: &ContainerPlan<'_>,
    premounted: Option<&Premounted>,
) -> Result<OwnedFd, Fail> {
    let rootfs = &plan.rootfs;
    if let Some(p) = premounted {
        os.attach(p.rootfs.as_raw_fd(), libc::AT_FDCWD, c".")
            .ctx(|| format!("attaching the rootfs at {}", rootfs.display.display()))?;
        return p
            .rootfs
            .try_clone()
            .ctx(|| "duplicating the rootfs descriptor".into());
    }
    match rootfs.overlay {
        Some(overlay) => os
            .mount_overlay(overlay, &rootfs.display, false)
            .map_err(|e| Fail(format!("mounting the container rootfs: {e}")))?,
        None => os
            .mount(
                Some(&rootfs.path),
                &rootfs.path,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )
            .ctx(|| format!("bind-mounting the rootfs {}", rootfs.display.display()))?,
    }
    sys::open(&rootfs.path, libc::O_PATH | libc::O_DIRECTORY)
        .ctx(|| format!("opening the rootfs {}", rootfs.display.display()))
}

/// Sets the propagation of the new mount namespace's tree (recursively private or slave),
/// or, for a shared rootfs, leaves it as the host has it and makes private only the mount
/// that holds the rootfs path (the first of its ancestors that is a mount point:
/// MS_PRIVATE on a directory that is none fails with EINVAL), as runc does.
fn set_tree_propagation(os: &impl Syscall, rootfs: &RootfsPlan<'_>) -> Result<(), Fail> {
    if rootfs.propagation != 0 {
        return os
            .mount(None, c"/", None, libc::MS_REC | rootfs.propagation, None)
            .ctx(|| "setting the propagation of the container's mount tree".into());
    }
    for parent in &rootfs.parents {
        match os.mount(None, parent, None, libc::MS_PRIVATE, None) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(e) => {
                return Err(e).ctx(|| format!("making the mount of {parent:?} private"));
            }
        }
    }
    Err(Fail(format!(
        "no mount holds the rootfs {}",
        rootfs.display.display()
    )))
}

/// Mount namespace, root filesystem, /dev, pivot_root, masked and readonly paths, sysctls,
/// hostname. Every privileged call goes through `os` ([`LinuxSyscall`] for real).
pub(super) fn setup_container(
    os: &impl Syscall,
    plan: &ContainerPlan<'_>,
    premounted: Option<&Premounted>,
    io: &ChildIo<'_>,
) -> Result<(), Fail> {
    // Device nodes and mount points get exactly their modes.
    os.umask(0);
    let rootfs = &plan.rootfs;
    set_tree_propagation(os, rootfs)?;
    let root = mount_rootfs(os, plan, premounted)?;
    for (i, m) in plan.mounts.iter().enumerate() {
        let trees = premounted
            .and_then(|p| p.binds.get(i))
            .map_or(&[][..], Vec::as_slice);
        mount_one(os, &root, m, trees, rootfs.propagation == libc::MS_PRIVATE)?;
    }
    make_devices(os, &root, &plan.devices)?;
    if plan.manage_dev {
        dev_links(&root, plan.has_devpts)?;
        if let ChildStdio::Terminal { path, .. } = io.stdio {
            bind_console(os, &root, path)?;
        }
    }
    os.fchdir(root.as_raw_fd())
        .ctx(|| "entering the rootfs".into())?;
    drop(root);
    // In a tree left shared, the old root is made a slave before it is detached, so the
    // detach cannot propagate to the host's mounts.
    os.pivot_to_cwd(rootfs.propagation == 0)
        .ctx(|| format!("pivot_root to {}", rootfs.display.display()))?;
    // From here on, paths are inside the container.
    for s in &plan.sysctls {
        os.write_file(&s.path, &s.value)
            .ctx(|| format!("setting sysctl {}", s.key))?;
    }
    mask_paths(os, &plan.masked)?;
    readonly_paths(os, &plan.readonly)?;
    if let Some(name) = &plan.hostname {
        os.sethostname(name)
            .ctx(|| format!("setting the hostname to {name:?}"))?;
    }
    if let Some(name) = &plan.domainname {
        os.setdomainname(name)
            .ctx(|| format!("setting the domain name to {name:?}"))?;
    }
    if rootfs.readonly {
        remount_readonly(os, c"/").ctx(|| "making the rootfs read-only".into())?;
    }
    if let Some(p) = rootfs.final_propagation {
        os.mount(None, c"/", None, libc::MS_REC | p, None)
            .ctx(|| "setting the rootfs propagation".into())?;
    }
    Ok(())
}

/// Opens `path` below `root` as an O_PATH descriptor; symlinks resolve inside `root`.
fn resolve(root: &OwnedFd, path: &CStr) -> io::Result<OwnedFd> {
    rustix::fs::openat2(
        root,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(io::Error::from)
}

fn is_enoent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// Opens `path` below `root`, creating what is missing (directories, and an empty file as
/// the last component when `last_as_file`), never leaving the root whatever links the
/// image holds.
fn ensure_path(root: &OwnedFd, path: &CStr, last_as_file: bool) -> io::Result<OwnedFd> {
    match resolve(root, path) {
        Ok(fd) => Ok(fd),
        Err(e) if !is_enoent(&e) => Err(e),
        Err(_) => create_path(root, path.to_bytes(), last_as_file, MAX_LINKS),
    }
}

/// How many dangling symlinks a mount point path may go through.
const MAX_LINKS: u32 = 40;

fn to_cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The slow path of [`ensure_path`]: walks `path` one component at a time and creates the
/// missing ones. A dangling symlink is followed, inside the root, and its target created.
fn create_path(
    root: &OwnedFd,
    path: &[u8],
    last_as_file: bool,
    links_left: u32,
) -> io::Result<OwnedFd> {
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    let mut parent = resolve(root, c".")?;
    let mut done: Vec<u8> = Vec::with_capacity(path.len());
    for (i, part) in parts.iter().enumerate() {
        let mut prefix = done.clone();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(part);
        let prefix_c = to_cstring(&prefix)?;
        match resolve(root, &prefix_c) {
            Ok(fd) => {
                parent = fd;
                done = prefix;
                continue;
            }
            Err(e) if !is_enoent(&e) => return Err(e),
            Err(_) => {}
        }
        let name = to_cstring(part)?;
        if let Some(target) = read_link_at(&parent, &name) {
            if links_left == 0 {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            // Absolute targets are relative to the container root.
            let mut next = if target.first() == Some(&b'/') {
                Vec::new()
            } else {
                done
            };
            for piece in std::iter::once(&target[..]).chain(parts[i + 1..].iter().copied()) {
                next.push(b'/');
                next.extend_from_slice(piece);
            }
            return create_path(root, &next, last_as_file, links_left - 1);
        }
        make_entry(&parent, &name, i + 1 == parts.len() && last_as_file)?;
        parent = resolve(root, &prefix_c)?;
        done = prefix;
    }
    Ok(parent)
}

/// The target of the symlink `name` in `dir`; None if it is not a symlink.
fn read_link_at(dir: &OwnedFd, name: &CStr) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf is writable for its length; name is NUL-terminated.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n > 0 && n < buf.len())?;
    buf.truncate(n);
    Some(buf)
}

/// Creates the directory (or empty file) `name` in `dir`; an existing entry is fine.
fn make_entry(dir: &OwnedFd, name: &CStr, as_file: bool) -> io::Result<()> {
    let dirfd = dir.as_raw_fd();
    let r = if as_file {
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: name is NUL-terminated; dirfd is a directory we hold.
        let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags, 0o644 as libc::c_uint) };
        if fd >= 0 {
            // SAFETY: closing the descriptor just opened.
            unsafe { libc::close(fd) };
        }
        fd
    } else {
        // SAFETY: as above.
        unsafe { libc::mkdirat(dirfd, name.as_ptr(), 0o755) }
    };
    if r < 0 {
        let e = last_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// The flags a bind remount of the mount at `path` must keep (a remount may not clear a
/// locked flag; atime flags are kept by the kernel when none is given).
fn kept_flags(os: &impl Syscall, path: &CStr) -> io::Result<c_ulong> {
    let keep = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    Ok(os.mount_flags(path)? & keep)
}

/// Remounts the mount at `path` read-only, keeping its other locked flags.
fn remount_readonly(os: &impl Syscall, path: &CStr) -> io::Result<()> {
    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | kept_flags(os, path)?;
    os.mount(None, path, None, flags, None)
}

/// A detached copy of the container's directory in one cgroup hierarchy, with the
/// per-mount flags of the spec's cgroup mount (read-only, nosuid, ...).
fn cgroup_tree(os: &impl Syscall, h: &CgroupBind, flags: c_ulong) -> Result<OwnedFd, Fail> {
    let describe = || {
        format!(
            "copying the cgroup directory {}",
            h.source.to_string_lossy()
        )
    };
    let tree = os.open_tree(&h.source, false).ctx(describe)?;
    os.set_mount_flags(tree.as_raw_fd(), flags).ctx(describe)?;
    Ok(tree)
}

/// The cgroup v1 view at `point`: a tmpfs with the container's directory of each
/// hierarchy (`trees`, detached copies made beforehand, or made here), links for
/// controllers mounted together, then read-only if the spec says so.
fn mount_cgroup_v1(
    os: &impl Syscall,
    root: &OwnedFd,
    point: &OwnedFd,
    m: &MountPlan,
    hierarchies: &[CgroupBind],
    trees: &[OwnedFd],
) -> Result<(), Fail> {
    let target = FdPath::new(point.as_raw_fd());
    let flags = m.flags & !libc::MS_RDONLY;
    os.mount(
        Some(c"tmpfs"),
        target.as_cstr(),
        Some(c"tmpfs"),
        flags,
        Some(c"mode=755"),
    )
    .ctx(|| m.describe.clone())?;
    let top = resolve(root, &m.dest.full).ctx(|| format!("reopening the {}", m.describe))?;
    for (i, h) in hierarchies.iter().enumerate() {
        let made;
        let tree = match trees.get(i) {
            Some(tree) => tree,
            None => {
                made = cgroup_tree(os, h, m.flags)?;
                &made
            }
        };
        let name = h.name.to_string_lossy();
        make_entry(&top, &h.name, false)
            .and_then(|()| os.attach(tree.as_raw_fd(), top.as_raw_fd(), &h.name))
            .ctx(|| format!("mounting cgroup hierarchy {name} in the {}", m.describe))?;
        for alias in &h.aliases {
            // SAFETY: NUL-terminated strings; top is a directory we hold.
            let r = unsafe { libc::symlinkat(h.name.as_ptr(), top.as_raw_fd(), alias.as_ptr()) };
            let e = last_error();
            if r < 0 && e.raw_os_error() != Some(libc::EEXIST) {
                return Err(Fail(format!(
                    "linking {} to cgroup hierarchy {name}: {e}",
                    alias.to_string_lossy()
                )));
            }
        }
    }
    if m.flags & libc::MS_RDONLY != 0 {
        let top = FdPath::new(top.as_raw_fd());
        remount_readonly(os, top.as_cstr())
            .ctx(|| format!("making the {} read-only", m.describe))?;
    }
    Ok(())
}

/// Mounts `m` below `root`; a bind mount attaches `trees[0]` (a detached copy of its
/// source) when given. `tree_private`: every mount of the namespace was made private, so a
/// new mount is private already and asking for (r)private changes nothing.
fn mount_one(
    os: &impl Syscall,
    root: &OwnedFd,
    m: &MountPlan,
    trees: &[OwnedFd],
    tree_private: bool,
) -> Result<(), Fail> {
    let point = ensure_path(root, &m.dest.full, m.as_file)
        .ctx(|| format!("creating the mount point of the {}", m.describe))?;
    let target = FdPath::new(point.as_raw_fd());
    let mut bind_flags = 0;
    match (&m.kind, trees.first()) {
        (MountKind::CgroupV1 { hierarchies }, _) => {
            return mount_cgroup_v1(os, root, &point, m, hierarchies, trees);
        }
        (MountKind::Bind { .. }, Some(tree)) => {
            os.attach(tree.as_raw_fd(), point.as_raw_fd(), c"")
                .ctx(|| m.describe.clone())?;
            bind_flags = m.flags & BIND_REMOUNT_FLAGS;
        }
        (MountKind::Bind { source, recursive }, None) => {
            let rec = if *recursive { libc::MS_REC } else { 0 };
            os.mount(
                Some(source),
                target.as_cstr(),
                None,
                libc::MS_BIND | rec,
                None,
            )
            .ctx(|| m.describe.clone())?;
            bind_flags = m.flags & BIND_REMOUNT_FLAGS;
        }
        // Read-only is applied to the mount, not at mount time: a superblock shared with
        // other mounts (sysfs of the pod's network namespace, cgroup2, mqueue) would
        // otherwise turn read-only for every container of the pod.
        (MountKind::Fs { fstype, source }, _) => os
            .mount(
                Some(source),
                target.as_cstr(),
                Some(fstype),
                m.flags & !libc::MS_RDONLY,
                m.data.as_deref(),
            )
            .ctx(|| m.describe.clone())?,
    }
    let fs_readonly = matches!(m.kind, MountKind::Fs { .. }) && m.flags & libc::MS_RDONLY != 0;
    let propagation: &[c_ulong] = match tree_private
        && m.propagation
            .iter()
            .all(|&p| p & !libc::MS_REC == libc::MS_PRIVATE)
    {
        true => &[],
        false => &m.propagation,
    };
    if bind_flags == 0 && !fs_readonly && !m.recursive_ro && propagation.is_empty() {
        return Ok(());
    }
    // The mount just made, reached afresh (the old descriptor is the directory below it).
    let top = resolve(root, &m.dest.full).ctx(|| format!("reopening the {}", m.describe))?;
    let top = FdPath::new(top.as_raw_fd());
    let top = top.as_cstr();
    if bind_flags != 0 {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | bind_flags;
        kept_flags(os, top)
            .and_then(|keep| os.mount(None, top, None, flags | keep, None))
            .ctx(|| format!("applying the options of the {}", m.describe))?;
    }
    if fs_readonly {
        remount_readonly(os, top).ctx(|| format!("making the {} read-only", m.describe))?;
    }
    if m.recursive_ro {
        match os.make_tree_readonly(top) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => remount_readonly(os, top),
            other => other,
        }
        .ctx(|| format!("making the {} read-only", m.describe))?;
    }
    for &p in propagation {
        os.mount(None, top, None, p, None)
            .ctx(|| format!("setting the propagation of the {}", m.describe))?;
    }
    Ok(())
}

/// Creates the spec's (and the default) device nodes, owned as the spec says.
fn make_devices(os: &impl Syscall, root: &OwnedFd, devices: &[DevicePlan]) -> Result<(), Fail> {
    for d in devices {
        let name = &d.path.name;
        let parent = ensure_path(root, &d.path.parent, false)
            .ctx(|| format!("creating the directory of device {}", d.path.display))?;
        if let Err(e) = os.mknodat(parent.as_raw_fd(), name, d.mode, d.dev) {
            match e.raw_os_error() {
                Some(libc::EEXIST) => continue,
                Some(libc::EPERM) => {
                    bind_device(os, root, d)?;
                    continue;
                }
                _ => return Err(Fail(format!("creating device {}: {e}", d.path.display))),
            }
        }
        if d.uid.is_some() || d.gid.is_some() {
            let uid = d.uid.unwrap_or(u32::MAX);
            let gid = d.gid.unwrap_or(u32::MAX);
            os.fchownat(parent.as_raw_fd(), name, uid, gid)
                .ctx(|| format!("changing the owner of device {}", d.path.display))?;
        }
    }
    Ok(())
}

/// Without CAP_MKNOD: bind the host's node onto an empty file.
fn bind_device(os: &impl Syscall, root: &OwnedFd, d: &DevicePlan) -> Result<(), Fail> {
    let file = ensure_path(root, &d.path.full, true)
        .ctx(|| format!("creating device {}", d.path.display))?;
    let target = FdPath::new(file.as_raw_fd());
    os.mount(Some(&d.host), target.as_cstr(), None, libc::MS_BIND, None)
        .ctx(|| format!("bind-mounting device {}", d.path.display))
}

fn dev_links(root: &OwnedFd, has_devpts: bool) -> Result<(), Fail> {
    let dev = resolve(root, c"dev").ctx(|| "opening /dev".into())?;
    let links: [(&CStr, &CStr); 6] = [
        (c"/proc/self/fd", c"fd"),
        (c"/proc/self/fd/0", c"stdin"),
        (c"/proc/self/fd/1", c"stdout"),
        (c"/proc/self/fd/2", c"stderr"),
        (c"/proc/kcore", c"core"),
        (c"pts/ptmx", c"ptmx"),
    ];
    for (target, name) in links {
        if name == c"ptmx" && !has_devpts {
            continue;
        }
        // SAFETY: NUL-terminated strings; dev is a directory we hold.
        let r = unsafe { libc::symlinkat(target.as_ptr(), dev.as_raw_fd(), name.as_ptr()) };
        if r < 0 {
            let e = last_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(Fail(format!(
                    "creating /dev/{}: {e}",
                    name.to_string_lossy()
                )));
            }
        }
    }
    Ok(())
}

/// Binds the terminal's slave onto /dev/console.
fn bind_console(os: &impl Syscall, root: &OwnedFd, slave_path: &CStr) -> Result<(), Fail> {
    let dev = resolve(root, c"dev").ctx(|| "opening /dev".into())?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: NUL-terminated name; dev is a directory we hold.
    let fd = unsafe {
        libc::openat(
            dev.as_raw_fd(),
            c"console".as_ptr(),
            flags,
            0o620 as libc::c_uint,
        )
    };
    cvt(fd).ctx(|| "creating /dev/console".into())?;
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(fd) };
    let console = resolve(root, c"dev/console").ctx(|| "opening /dev/console".into())?;
    let target = FdPath::new(console.as_raw_fd());
    os.mount(
        Some(slave_path),
        target.as_cstr(),
        None,
        libc::MS_BIND,
        None,
    )
    .ctx(|| "bind-mounting the terminal on /dev/console".into())
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Hides each path: an empty read-only tmpfs over directories, /dev/null over files.
fn mask_paths(os: &impl Syscall, paths: &[CString]) -> Result<(), Fail> {
    for p in paths {
        let st = match os.stat(p) {
            Ok(st) => st,
            Err(e) if is_enoent(&e) => continue,
            Err(e) => return Err(Fail(format!("masking {p:?}: {e}"))),
        };
        let r = if is_dir(&st) {
            os.mount(Some(c"tmpfs"), p, Some(c"tmpfs"), libc::MS_RDONLY, None)
        } else {
            os.mount(Some(c"/dev/null"), p, None, libc::MS_BIND, None)
        };
        r.ctx(|| format!("masking {p:?}"))?;
    }
    Ok(())
}

/// Makes each path a read-only bind of itself.
fn readonly_paths(os: &impl Syscall, paths: &[CString]) -> Result<(), Fail> {
    for p in paths {
        match os.stat(p) {
            Ok(_) => {}
            Err(e) if is_enoent(&e) => continue,
            Err(e) => return Err(Fail(format!("making {p:?} read-only: {e}"))),
        }
        os.mount(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None)
            .and_then(|()| remount_readonly(os, p))
            .ctx(|| format!("making {p:?} read-only"))?;
    }
    Ok(())
}

/// The process part shared by create and exec: session and terminal, limits, cwd, user and
/// capabilities, no_new_privs, umask, the executable lookup and stdio.
fn prepare_process<'p>(p: &'p ProcessPlan, io: &ChildIo<'_>) -> Result<Exe<'p>, Fail> {
    // SAFETY: setsid has no arguments; a fresh fork is never a process-group leader.
    cvt(unsafe { libc::setsid() }).ctx(|| "starting a session".into())?;
    if let ChildStdio::Terminal { slave, .. } = io.stdio {
        // SAFETY: ioctl on the terminal descriptor we hold.
        cvt(unsafe { libc::ioctl(slave, libc::TIOCSCTTY, 0) })
            .ctx(|| "taking the terminal as controlling terminal".into())?;
    }
    for r in &p.rlimits {
        // SAFETY: limit is a valid rlimit.
        cvt(unsafe { libc::setrlimit(r.resource as _, &r.limit) })
            .ctx(|| format!("setting {}", r.name))?;
    }
    // SAFETY: cwd is NUL-terminated.
    cvt(unsafe { libc::chdir(p.cwd.as_ptr()) })
        .ctx(|| format!("changing to the working directory {:?}", p.cwd))?;
    switch_user(p)?;
    if p.no_new_privs {
        sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).ctx(|| "setting no_new_privs".into())?;
    }
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(p.umask) };
    let exe = find_executable(p);
    redirect_stdio(io)?;
    Ok(exe)
}

/// Bit of CAP_SYS_ADMIN in capability masks.
const CAP_SYS_ADMIN_BIT: u64 = 1 << 21;

/// Supplementary groups, gid, uid, keeping the capabilities the spec asks for (plus
/// CAP_SYS_ADMIN until the seccomp filter is in, see [`confine`]).
fn switch_user(p: &ProcessPlan) -> Result<(), Fail> {
    let hold_admin = p.seccomp_needs_admin();
    if let Some(caps) = &p.caps {
        for cap in 0..=caps.last_cap {
            if caps.bounding & (1u64 << cap) == 0 {
                sys::prctl(libc::PR_CAPBSET_DROP, cap as c_ulong, 0)
                    .ctx(|| format!("dropping capability {cap} from the bounding set"))?;
            }
        }
    }
    if p.uid != 0 && (p.caps.is_some() || hold_admin) {
        sys::prctl(libc::PR_SET_KEEPCAPS, 1, 0).ctx(|| "setting keepcaps".into())?;
    }
    // SAFETY: groups is valid for its length.
    cvt(unsafe { libc::setgroups(p.groups.len(), p.groups.as_ptr()) })
        .ctx(|| format!("setting the supplementary groups {:?}", p.groups))?;
    // SAFETY: plain id syscalls.
    cvt(unsafe { libc::setresgid(p.gid, p.gid, p.gid) })
        .ctx(|| format!("setting gid {}", p.gid))?;
    // SAFETY: as above.
    cvt(unsafe { libc::setresuid(p.uid, p.uid, p.uid) })
        .ctx(|| format!("setting uid {}", p.uid))?;
    if !hold_admin {
        return set_final_capabilities(p);
    }
    match &p.caps {
        Some(caps) => sys::capset(
            caps.effective | CAP_SYS_ADMIN_BIT,
            caps.permitted | CAP_SYS_ADMIN_BIT,
            caps.inheritable,
        ),
        // Root without a capability list keeps everything anyway.
        None if p.uid == 0 => Ok(()),
        None => sys::capset(CAP_SYS_ADMIN_BIT, CAP_SYS_ADMIN_BIT, 0),
    }
    .ctx(|| "keeping CAP_SYS_ADMIN to load the seccomp filter".into())
}

/// Installs the seccomp filter, then (if CAP_SYS_ADMIN was kept for it) sets the final
/// capabilities. Runs after start, right before execve: only these calls and execve need
/// to be allowed by the filter.
fn confine(p: &ProcessPlan) -> Result<(), Fail> {
    let Some(program) = &p.seccomp else {
        return Ok(());
    };
    sys::seccomp_filter(program.instructions(), program.flags())
        .ctx(|| "loading the seccomp filter".into())?;
    if !p.seccomp_needs_admin() {
        return Ok(());
    }
    match &p.caps {
        Some(_) => set_final_capabilities(p),
        None if p.uid == 0 => Ok(()),
        None => sys::capset(0, 0, 0).ctx(|| "dropping CAP_SYS_ADMIN".into()),
    }
}

/// The capability sets of the spec, and its ambient capabilities.
fn set_final_capabilities(p: &ProcessPlan) -> Result<(), Fail> {
    let Some(caps) = &p.caps else {
        return Ok(());
    };
    sys::capset(caps.effective, caps.permitted, caps.inheritable)
        .ctx(|| "setting the capabilities".into())?;
    sys::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong,
        0,
    )
    .ctx(|| "clearing the ambient capabilities".into())?;
    for cap in 0..=caps.last_cap {
        if caps.ambient & (1u64 << cap) != 0 {
            sys::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as c_ulong,
                cap as c_ulong,
            )
            .ctx(|| {
                format!("raising ambient capability {cap} (it must be permitted and inheritable)")
            })?;
        }
    }
    Ok(())
}

/// Finds the executable like Go's `exec.LookPath` (which gives the messages containerd
/// users know), inside the container, as the container user.
fn find_executable(p: &ProcessPlan) -> Exe<'_> {
    if !p.search_path {
        let Some(path) = p.candidates.first() else {
            return Err(format!("exec: {:?}: no such file", p.name));
        };
        return match check_executable(path) {
            Ok(()) => Ok(path),
            Err(why) => Err(format!("exec: {:?}: {why}", p.name)),
        };
    }
    p.candidates
        .iter()
        .find(|c| check_executable(c).is_ok())
        .map(|c| c.as_c_str())
        .ok_or_else(|| format!("exec: {:?}: executable file not found in $PATH", p.name))
}

fn check_executable(path: &CStr) -> Result<(), String> {
    let st = sys::stat(path)
        .map_err(|e| format!("stat {}: {}", path.to_string_lossy(), sys::errno_text(&e)))?;
    if is_dir(&st) {
        return Err("is a directory".into());
    }
    // SAFETY: path is NUL-terminated.
    let r = unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), libc::X_OK, libc::AT_EACCESS) };
    if r < 0 {
        return Err(sys::errno_text(&last_error()));
    }
    Ok(())
}

/// Puts the container's stdio on 0, 1 and 2 (via copies above 9, so that no source is
/// overwritten before it is used).
fn redirect_stdio(io: &ChildIo<'_>) -> Result<(), Fail> {
    let sources = match io.stdio {
        ChildStdio::Fds(fds) => fds,
        ChildStdio::Terminal { slave, .. } => [slave; 3],
    };
    let mut copies: [c_int; 3] = [0; 3];
    for (copy, src) in copies.iter_mut().zip(sources) {
        // SAFETY: fcntl on a descriptor we hold.
        *copy = cvt(unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 10) })
            .ctx(|| "duplicating the stdio descriptors".into())?;
    }
    for (target, copy) in copies.into_iter().enumerate() {
        // SAFETY: dup2 onto 0..2.
        cvt(unsafe { libc::dup2(copy, target as c_int) }).ctx(|| "setting up stdio".into())?;
    }
    // The caller's descriptors themselves must not leak into the container.
    for src in sources.into_iter().filter(|&fd| fd > 2) {
        // SAFETY: fcntl on a descriptor we hold.
        unsafe { libc::fcntl(src, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Tells the shim that the child's setup panicked (caught), and exits.
fn report_panic(io: &ChildIo<'_>) -> ! {
    send(
        io.report,
        TAG_ERROR,
        b"internal error: the launcher panicked",
    );
    sys::exit(1)
}
