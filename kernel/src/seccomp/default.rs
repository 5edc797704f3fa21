//! cairn's RuntimeDefault profile: an allow list (everything else EPERM), with the
//! calls a capability governs allowed when the container holds it, as containerd's.
//! Runs in cairnd (which compiles profiles); cairn-shim loads the compiled program.

use super::*;

/// System calls every container may make: files, memory, processes and threads, signals,
/// timers, IPC, sockets, identity (the kernel still checks the capabilities these need).
#[rustfmt::skip]
pub(super) const ALLOWED: &[&str] = &[
    // Files and directories.
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range",
    "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64",
    "arm_fadvise64_64", "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "file_getattr", "file_setattr",
    "flock", "fstat", "fstat64", "fstatat", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futimesat", "getcwd", "getdents", "getdents64", "lchown", "lchown32",
    "link", "linkat", "_llseek", "lseek", "lstat", "lstat64", "mkdir", "mkdirat", "mknod",
    "mknodat", "newfstatat", "oldfstat", "oldlstat", "oldstat", "open", "openat", "openat2",
    "pread64", "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead",
    "readdir", "readlink", "readlinkat", "readv", "rename", "renameat", "renameat2", "rmdir",
    "sendfile", "sendfile64", "splice", "stat", "stat64", "statfs", "statfs64", "statx",
    "symlink", "symlinkat", "sync", "sync_file_range", "sync_file_range2",
    "arm_sync_file_range", "syncfs", "tee", "truncate", "truncate64", "umask", "unlink",
    "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vmsplice", "write",
    "writev",
    // Extended attributes.
    "fgetxattr", "flistxattr", "fremovexattr", "fsetxattr", "getxattr", "getxattrat",
    "lgetxattr", "listxattr", "listxattrat", "llistxattr", "lremovexattr", "lsetxattr",
    "removexattr", "removexattrat", "setxattr", "setxattrat",
    // Waiting on descriptors, events, inotify, asynchronous I/O.
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "eventfd", "eventfd2", "fanotify_mark", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "io_setup", "io_submit", "ioctl", "_newselect",
    "pipe", "pipe2", "poll", "ppoll", "ppoll_time64", "pselect6", "pselect6_time64", "select",
    "signalfd", "signalfd4", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64",
    // Memory.
    "brk", "cachestat", "madvise", "map_shadow_stack", "membarrier", "memfd_create", "mincore",
    "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mremap", "mseal", "msync",
    "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect",
    "process_madvise", "process_mrelease", "remap_file_pages",
    // Processes and threads (clone and personality have rules of their own).
    "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork",
    "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake",
    "get_robust_list", "get_thread_area", "getcpu", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getrandom", "getrlimit", "getrusage", "getsid", "gettid", "ioprio_get",
    "ioprio_set", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "modify_ldt", "pidfd_getfd", "pidfd_open", "pidfd_send_signal",
    "prctl", "prlimit64", "ptrace", "restart_syscall", "rseq", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "seccomp", "set_robust_list", "set_thread_area", "set_tid_address",
    "setpgid", "setpriority", "setrlimit", "setsid", "sysinfo", "tgkill", "times", "tkill",
    "ugetrlimit", "uname", "uprobe", "uretprobe", "vfork", "wait4", "waitid", "waitpid",
    "breakpoint", "cacheflush", "set_tls",
    // Users and groups.
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
    "getgroups32", "getresgid", "getresgid32", "getresuid", "getresuid32", "getuid",
    "getuid32", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setuid", "setuid32",
    // Signals, sleeping, timers, reading the clock.
    "adjtimex", "alarm", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "getitimer",
    "gettimeofday", "nanosleep", "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "setitimer", "sigaction", "sigaltstack",
    "signal", "sigpending", "sigprocmask", "sigreturn", "sigsuspend", "sgetmask", "ssetmask",
    "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64",
    // System V and POSIX IPC (namespaced with the pod's ipc namespace).
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl",
    "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
    // Sockets.
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg",
    "sendmsg", "sendto", "setsockopt", "shutdown", "socket", "socketcall", "socketpair",
];

/// System calls allowed only to containers holding a capability (on top of the kernel's own
/// check of that capability).
#[rustfmt::skip]
pub(super) const ALLOWED_WITH_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie",
            "mount", "mount_setattr", "move_mount", "name_to_handle_at", "open_tree",
            "open_tree_attr", "perf_event_open", "pivot_root", "quotactl", "quotactl_fd",
            "setdomainname", "sethostname", "setns", "swapoff", "swapon", "syslog", "umount",
            "umount2", "unshare",
        ],
    ),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "finit_module", "init_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "process_vm_readv",
            "process_vm_writev",
            "userfaultfd",
        ],
    ),
    (Capability::SysRawio, &["ioperm", "iopl"]),
    (
        Capability::SysTime,
        &[
            "clock_adjtime",
            "clock_adjtime64",
            "clock_settime",
            "clock_settime64",
            "settimeofday",
            "stime",
        ],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "migrate_pages",
            "move_pages",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (Capability::Syslog, &["syslog"]),
];

/// Kernel personalities a container may switch to (plain Linux, 2.6-style uname, 32-bit, both)
/// or query (0xffffffff).
pub(super) const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The clone(2) flags that make new namespaces.
pub(super) const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

pub(super) fn syscall_rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect())
        .set_action(action)
        .set_errno_ret(None)
        .set_args(None);
    s
}

pub(super) fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSeccompArg {
    let b = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    let b = match value_two {
        Some(v) => b.value_two(v),
        None => b,
    };
    // Every field is given (value_two is optional): building cannot fail.
    b.build().unwrap_or_default()
}

/// The architectures a profile made on this host covers: the native one and its 32-bit
/// companion (and x32 on x86_64, whose calls the compiler denies).
pub fn host_architectures() -> Vec<Arch> {
    if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    }
}

/// cairn's RuntimeDefault profile for a container with the capabilities `caps` (its bounding
/// set): EPERM for everything but [`ALLOWED`], personality switches to the usual
/// personalities, clone without namespace flags, clone3 answered with ENOSYS (so that the C
/// library falls back to clone, whose flags can be checked), and the capability-gated calls
/// of the capabilities held.
pub fn default_profile(caps: &Capabilities) -> LinuxSeccomp {
    use LinuxSeccompAction::{ScmpActAllow, ScmpActErrno};
    let mut rules = vec![syscall_rule(ALLOWED, ScmpActAllow)];
    for value in PERSONALITIES {
        let mut r = syscall_rule(&["personality"], ScmpActAllow);
        r.set_args(Some(vec![arg(
            0,
            LinuxSeccompOperator::ScmpCmpEq,
            value,
            None,
        )]));
        rules.push(r);
    }
    if caps.contains(&Capability::SysAdmin) {
        rules.push(syscall_rule(&["clone", "clone3"], ScmpActAllow));
    } else {
        let mut clone = syscall_rule(&["clone"], ScmpActAllow);
        clone.set_args(Some(vec![arg(
            0,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            CLONE_NAMESPACE_FLAGS,
            Some(0),
        )]));
        rules.push(clone);
        let mut clone3 = syscall_rule(&["clone3"], ScmpActErrno);
        clone3.set_errno_ret(Some(libc::ENOSYS as u32));
        rules.push(clone3);
    }
    for (cap, names) in ALLOWED_WITH_CAPABILITY {
        if caps.contains(cap) {
            rules.push(syscall_rule(names, ScmpActAllow));
        }
    }
    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(ScmpActErrno)
        .set_default_errno_ret(Some(libc::EPERM as u32))
        .set_architectures(Some(host_architectures()))
        .set_flags(None)
        .set_listener_path(None)
        .set_listener_metadata(None)
        .set_syscalls(Some(rules));
    profile
}
