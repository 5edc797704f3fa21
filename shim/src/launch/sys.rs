//! Thin system-call wrappers for the launcher. Everything here may run between `fork` and
//! `execve` in a child of a multi-threaded process: no locks, no logging; errors are plain
//! `io::Error`s built from errno.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libc::{c_int, c_ulong, pid_t};

/// Turns a `-1` return into the errno as an `io::Error`.
pub(super) fn cvt(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Leaves the process immediately, without running atexit handlers or destructors.
pub(super) fn exit(code: c_int) -> ! {
    // SAFETY: _exit never returns and touches no process state we care about.
    unsafe { libc::_exit(code) }
}

/// A close-on-exec pipe `(read, write)` whose ends are never 0, 1 or 2 (a child dup2()s
/// its stdio over those numbers).
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds is a valid array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// Moves `fd` to a number above 2 if it is one of the stdio numbers.
pub(super) fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: fcntl on a descriptor we own.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Opens `path` with `flags | O_CLOEXEC`.
pub(super) fn open(path: &CStr, flags: c_int) -> io::Result<OwnedFd> {
    // SAFETY: path is NUL-terminated.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: open returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes all of `buf`, retrying on EINTR and short writes.
pub(super) fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Opens `path` for writing and writes `value` to it (procfs and cgroupfs files).
pub(super) fn write_file(path: &CStr, value: &[u8]) -> io::Result<()> {
    let fd = open(path, libc::O_WRONLY)?;
    write_all(fd.as_raw_fd(), value)
}

/// Reads one byte; `None` at end of file.
pub(super) fn read_byte(fd: RawFd) -> io::Result<Option<u8>> {
    let mut b = 0u8;
    loop {
        // SAFETY: reading one byte into a local.
        let n = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
        match n {
            0 => return Ok(None),
            1 => return Ok(Some(b)),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// `fork()` with every signal blocked across the call, so that no handler of the parent
/// runs in the child. Returns 0 in the child, whose signals stay blocked until
/// [`unblock_signals`]; the parent's mask is restored.
pub(super) fn fork() -> io::Result<pid_t> {
    // SAFETY: sigset_t is plain data; the calls only read and write these locals.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::fork();
        if pid != 0 {
            let err = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                return Err(err);
            }
        }
        Ok(pid)
    }
}

/// `clone3(2)`'s `CLONE_INTO_CGROUP` (not in every libc version).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to its `cgroup` field (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Forks like `fork(2)` (a copy of this process continuing on a copy of this stack), with
/// the child born in the cgroup2 directory `cgroup` (`clone3` with `CLONE_INTO_CGROUP`).
/// With `parent_is_ours` the child is a child of this process's parent (`CLONE_PARENT`),
/// not of this process. Returns 0 in the child.
///
/// For a single-threaded caller only (a child of the shim): no fork handlers run, which
/// is safe only when no other thread can hold a lock the child might take. Fails with
/// ENOSYS, E2BIG or EINVAL on kernels without clone3 or `CLONE_INTO_CGROUP` (before 5.7).
pub(super) fn fork_into_cgroup(cgroup: RawFd, parent_is_ours: bool) -> io::Result<pid_t> {
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup as u64,
        ..CloneArgs::default()
    };
    if parent_is_ours {
        // The child's exit signal is then this process's own (SIGCHLD); clone3 wants 0 here.
        args.flags |= libc::CLONE_PARENT as u64;
        args.exit_signal = 0;
    }
    // SAFETY: args is a valid clone_args of the size passed; without CLONE_VM the child
    // gets its own copy of memory and returns here like a forked child.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    cvt_long(r).map(|pid| pid as pid_t)
}

/// `clone(CLONE_PARENT)`, fork-like: the fallback of [`fork_into_cgroup`] on kernels
/// without clone3. Returns 0 in the child, which is a child of this process's parent.
/// Single-threaded callers only, as for [`fork_into_cgroup`].
pub(super) fn fork_sibling() -> io::Result<pid_t> {
    let flags = libc::CLONE_PARENT as c_ulong;
    // SAFETY: without CLONE_VM and with no new stack the child gets its own copy of memory
    // and returns here like a forked child; the other arguments are unused.
    let r = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    cvt_long(r).map(|pid| pid as pid_t)
}

/// `setns(2)`: joins the namespace `fd` refers to (for a pid namespace: the calling
/// thread's future children's).
pub(super) fn setns(fd: RawFd, nstype: c_int) -> io::Result<()> {
    // SAFETY: setns on a descriptor the caller holds.
    cvt(unsafe { libc::setns(fd, nstype) }).map(drop)
}

/// Resets every signal disposition to the default (ignored signals stay ignored across
/// execve otherwise: Rust programs ignore SIGPIPE).
pub(super) fn reset_signal_handlers() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: setting the default disposition; errors (reserved signals) are ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// Unblocks every signal of the calling thread.
pub(super) fn unblock_signals() {
    // SAFETY: an empty set from sigemptyset.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// Closes every descriptor from 3 up, except those in `keep` (sorted ascending).
pub(super) fn close_fds_except(keep: &[RawFd]) {
    let mut low: u32 = 3;
    for &fd in keep {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd < low {
            continue;
        }
        if fd > low {
            close_range(low, fd - 1);
        }
        low = fd + 1;
    }
    close_range(low, u32::MAX);
}

fn close_range(low: u32, high: u32) {
    // SAFETY: close_range only closes descriptors; nothing in this process uses them any more.
    let r = unsafe { libc::syscall(libc::SYS_close_range, low, high, 0u32) };
    if r < 0 {
        // Kernels before 5.9: close one by one up to a sane bound.
        for fd in low..high.min(65536) {
            // SAFETY: as above.
            unsafe { libc::close(fd as c_int) };
        }
    }
}

/// Waits for `pid` to exit and reaps it; returns the raw wait status.
pub(super) fn waitpid(pid: pid_t) -> io::Result<c_int> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Waits until `pid` has exited without reaping it (its parent's reaper still gets the
/// exit status). Returns at once if it is not our child (any more).
pub(super) fn wait_exited(pid: pid_t) {
    loop {
        // SAFETY: siginfo_t is plain data and a valid out pointer.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// A human description of a wait status.
pub(super) fn describe_status(status: c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status:#x}")
    }
}

/// `mount(2)` with optional source, type and data.
pub(super) fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is NUL-terminated or null.
    cvt(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    })
    .map(drop)
}

/// `stat(2)` of `path`, following symlinks.
pub(super) fn stat(path: &CStr) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data and a valid out pointer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        cvt(libc::stat(path.as_ptr(), &mut st))?;
        Ok(st)
    }
}

/// The per-mount flags of the mount at `path` that a bind remount must repeat (a remount
/// that would clear a locked flag fails).
pub(super) fn mount_flags(path: &CStr) -> io::Result<c_ulong> {
    // SAFETY: statvfs is plain data and a valid out pointer.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        cvt(libc::statvfs(path.as_ptr(), &mut st))?;
        st
    };
    let map = [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    Ok(map
        .iter()
        .filter(|(st_flag, _)| st.f_flag & st_flag != 0)
        .fold(0, |acc, (_, ms)| acc | ms))
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Makes the mount at `path` and every mount below it read-only (`mount_setattr`, 5.12+).
pub(super) fn make_tree_readonly(path: &CStr) -> io::Result<()> {
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: attr is a valid mount_attr of the size passed.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// Sets the per-mount flags among `flags` (`MS_RDONLY`, `MS_NOSUID`, `MS_NODEV`,
/// `MS_NOEXEC`, `MS_NOATIME`) on the detached mount `tree` (`mount_setattr`, 5.12+).
pub(super) fn set_mount_flags(tree: RawFd, flags: c_ulong) -> io::Result<()> {
    const MAP: [(c_ulong, u64); 5] = [
        (libc::MS_RDONLY, 0x1),
        (libc::MS_NOSUID, 0x2),
        (libc::MS_NODEV, 0x4),
        (libc::MS_NOEXEC, 0x8),
        (libc::MS_NOATIME, 0x10),
    ];
    const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
    let attr_set = MAP
        .iter()
        .filter(|(ms, _)| flags & ms != 0)
        .fold(0, |acc, (_, attr)| acc | attr);
    if attr_set == 0 {
        return Ok(());
    }
    let attr = MountAttr {
        attr_set,
        // Setting an atime mode means clearing the others first.
        attr_clr: if attr_set & 0x10 != 0 {
            MOUNT_ATTR_ATIME_MASK
        } else {
            0
        },
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: attr is a valid mount_attr of the size passed; the empty path names `tree`.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// A detached copy of the mount tree at `path` (`open_tree` with `OPEN_TREE_CLONE`; with
/// `recursive`, the mounts below it too), to attach elsewhere with [`attach`], possibly in
/// another mount namespace.
pub(super) fn open_tree(path: &CStr, recursive: bool) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: path is NUL-terminated.
    let fd = cvt_long(unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags)
    })?;
    // SAFETY: open_tree returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Attaches the detached tree `tree` onto `path` relative to `dir` (`dir` itself when
/// `path` is empty): `move_mount`.
pub(super) fn attach(tree: RawFd, dir: RawFd, path: &CStr) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    let mut flags = MOVE_MOUNT_F_EMPTY_PATH;
    if path.is_empty() {
        flags |= MOVE_MOUNT_T_EMPTY_PATH;
    }
    // SAFETY: NUL-terminated paths and descriptors the caller holds.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            dir,
            path.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// Replaces the directory `path` (in the caller's mount namespace) by an idmapped bind
/// mount of itself that shows its files through the id mappings of the user namespace
/// `userns`: a detached clone gets `MOUNT_ATTR_IDMAP` (kernel 5.12+, and a filesystem
/// that allows it) and goes back on `path`.
pub(super) fn idmap_in_place(path: &CStr, userns: RawFd) -> io::Result<()> {
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    let tree = open_tree(path, false)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns as u64,
    };
    // SAFETY: attr is a valid mount_attr of the size passed; "" with AT_EMPTY_PATH means
    // the descriptor itself.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    attach(tree.as_raw_fd(), libc::AT_FDCWD, path)
}

/// `pivot_root(".", ".")` then detach the old root stacked on the new one; the calling
/// process's cwd must be the new root (a mount point). With `slave_old_root` (a tree left
/// shared with the host's), the old root is made a slave first, reached through a
/// descriptor taken before the pivot (after it, "." names the new root to mount(2)), so
/// that its detach cannot propagate to the host's mounts, as runc does.
pub(super) fn pivot_to_cwd(slave_old_root: bool) -> io::Result<()> {
    let dot = c".";
    let old_root = match slave_old_root {
        true => Some(open(c"/", libc::O_PATH | libc::O_DIRECTORY)?),
        false => None,
    };
    // SAFETY: NUL-terminated paths.
    cvt_long(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) })?;
    if let Some(old) = old_root {
        // SAFETY: fchdir on a directory descriptor we hold.
        cvt(unsafe { libc::fchdir(old.as_raw_fd()) })?;
        mount(None, dot, None, libc::MS_SLAVE | libc::MS_REC, None)?;
    }
    // SAFETY: as above.
    cvt(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::chdir(c"/".as_ptr()) }).map(drop)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets the calling thread's effective, permitted and inheritable capability sets.
pub(super) fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |v: u64, i: u32| (v >> (32 * i)) as u32;
    let data = [0, 1].map(|i| CapData {
        effective: half(effective, i),
        permitted: half(permitted, i),
        inheritable: half(inheritable, i),
    });
    // SAFETY: header and a two-element data array, as capset(2) version 3 wants.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    })
    .map(drop)
}

/// Installs a seccomp BPF filter on the calling thread (`seccomp(SECCOMP_SET_MODE_FILTER)`).
/// The caller needs no_new_privs or CAP_SYS_ADMIN.
pub(super) fn seccomp_filter(instructions: &[libc::sock_filter], flags: u32) -> io::Result<()> {
    const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
    let len = u16::try_from(instructions.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = libc::sock_fprog {
        len,
        filter: instructions.as_ptr().cast_mut(),
    };
    // SAFETY: prog points at `len` instructions that outlive the call; the kernel copies them.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags as libc::c_uint,
            &prog as *const libc::sock_fprog,
        )
    })
    .map(drop)
}

/// `prctl` with up to four integer arguments.
pub(super) fn prctl(option: c_int, a: c_ulong, b: c_ulong) -> io::Result<()> {
    // SAFETY: the options used here take integer arguments only.
    cvt(unsafe { libc::prctl(option, a, b, 0 as c_ulong, 0 as c_ulong) }).map(drop)
}

/// The text of an OS error in Go's style (lower-case, no "(os error N)"), as containerd
/// users know it from runc: `no such file or directory`.
pub(super) fn errno_text(e: &io::Error) -> String {
    let Some(code) = e.raw_os_error() else {
        return e.to_string();
    };
    let mut buf = [0 as libc::c_char; 128];
    // SAFETY: buf is writable for its length; the XSI/GNU variants both NUL-terminate.
    let text = unsafe {
        if libc::strerror_r(code, buf.as_mut_ptr(), buf.len()) != 0 {
            return e.to_string();
        }
        CStr::from_ptr(buf.as_ptr())
    };
    let mut s = text.to_string_lossy().into_owned();
    if let Some(first) = s.get(..1) {
        let lower = first.to_ascii_lowercase();
        s.replace_range(..1, &lower);
    }
    s
}

/// `/proc/self/fd/<fd>` as a C string, without allocating: the path through which
/// `mount(2)` reaches exactly the file a descriptor was opened on.
pub(super) struct FdPath {
    buf: [u8; 32],
}

impl FdPath {
    pub(super) fn new(fd: RawFd) -> FdPath {
        const PREFIX: &[u8] = b"/proc/self/fd/";
        let mut buf = [0u8; 32];
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        let mut digits = [0u8; 12];
        let mut n = fd.unsigned_abs();
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            buf[PREFIX.len() + i] = digits[len - 1 - i];
        }
        FdPath { buf }
    }

    pub(super) fn as_cstr(&self) -> &CStr {
        // The buffer always holds a NUL after the digits (32 > 14 + 10).
        CStr::from_bytes_until_nul(&self.buf).unwrap_or(c"/proc/self/fd")
    }
}
