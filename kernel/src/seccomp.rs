//! Seccomp for containers: cairn's RuntimeDefault profile, Localhost profiles read from JSON
//! files (the OCI `linux.seccomp` format or Docker's, with `archMap` and `includes` /
//! `excludes`), and the compiler that turns a profile into the classic BPF program the
//! kernel runs on every system call.
//!
//! A compiled [`Program`] is plain data: the launcher compiles before it forks, and the
//! forked child only hands the instructions to `seccomp(2)`, allocating nothing.
//!
//! The program of each architecture is a binary search over ranges of system call numbers
//! (a dozen instructions to any decision), not a chain of one test per call: when a filter
//! is attached the kernel JIT-compiles it and runs it for every number of every
//! architecture, and a chain made that cost over a millisecond per container start or exec.
//!
//! The RuntimeDefault profile is an allow list: every system call not named returns EPERM.
//! It leaves out what would let a container reach beyond its namespaces (mounts, new
//! namespaces, kernel modules, the keyring, kexec, the clock, swap, raw I/O ports, BPF,
//! perf, handle-based opens, io_uring...); several of those come back when the container
//! holds the capability that governs them (CAP_SYS_ADMIN, CAP_SYS_TIME, CAP_SYS_MODULE, ...),
//! as with containerd's default.
//!
//! Supported architectures: the host's own and its 32-bit companion (x86_64 with i386,
//! aarch64 with arm). x32 system calls on x86_64 are always denied: no container image
//! ships x32 binaries, and letting them through would bypass the rules written for the
//! 64-bit numbers.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg,
    LinuxSeccompArgBuilder, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;

/// Why a profile could not be read or compiled; the message names the file or the rule.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SeccompError(pub String);

fn error(msg: impl Into<String>) -> SeccompError {
    SeccompError(msg.into())
}

// ---------------------------------------------------------------------------------------------
// The RuntimeDefault profile

/// System calls every container may make: files, memory, processes and threads, signals,
/// timers, IPC, sockets, identity (the kernel still checks the capabilities these need).
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
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
const ALLOWED_WITH_CAPABILITY: &[(Capability, &[&str])] = &[
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
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The clone(2) flags that make new namespaces.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

fn syscall_rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect())
        .set_action(action)
        .set_errno_ret(None)
        .set_args(None);
    s
}

fn arg(
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

// ---------------------------------------------------------------------------------------------
// Profile files

/// A profile file: the OCI `linux.seccomp` object, or Docker's format (which adds `archMap`,
/// `name`, `includes`, `excludes`, `comment`). Unknown fields are ignored, as Docker does.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    arch_map: Option<Vec<FileArchMap>>,
    #[serde(default)]
    flags: Option<Vec<String>>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    listener_metadata: Option<String>,
    #[serde(default)]
    syscalls: Option<Vec<FileSyscall>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileSyscall {
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<FileArg>>,
    #[serde(default)]
    includes: Option<FileFilter>,
    #[serde(default)]
    excludes: Option<FileFilter>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileArg {
    index: usize,
    value: u64,
    #[serde(default)]
    value_two: Option<u64>,
    op: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileFilter {
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// Reads a Localhost profile file for a container holding `caps`. A missing, unreadable or
/// malformed file is an error naming it.
pub fn load_profile(path: &Path, caps: &Capabilities) -> Result<LinuxSeccomp, SeccompError> {
    let bytes = std::fs::read(path)
        .map_err(|e| error(format!("seccomp profile {}: {e}", path.display())))?;
    parse_profile(&bytes, caps)
        .map_err(|e| error(format!("seccomp profile {}: {}", path.display(), e.0)))
}

/// Parses a profile (OCI or Docker JSON). Docker's conditional rules are resolved here:
/// `includes` / `excludes` against `caps`, the host architecture and the running kernel.
pub fn parse_profile(json: &[u8], caps: &Capabilities) -> Result<LinuxSeccomp, SeccompError> {
    let file: FileProfile =
        serde_json::from_slice(json).map_err(|e| error(format!("malformed JSON: {e}")))?;
    let kernel = kernel_version();
    let mut rules = Vec::new();
    for (i, s) in file.syscalls.iter().flatten().enumerate() {
        let included = s
            .includes
            .as_ref()
            .is_none_or(|f| filter_matches(f, caps, kernel, true));
        let excluded = s
            .excludes
            .as_ref()
            .is_some_and(|f| filter_matches(f, caps, kernel, false));
        let rule = file_rule(s).map_err(|e| error(format!("syscalls[{i}]: {}", e.0)))?;
        if included && !excluded {
            rules.push(rule);
        }
    }
    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(parse_action(&file.default_action)?)
        .set_default_errno_ret(file.default_errno_ret)
        .set_architectures(file_architectures(&file)?)
        .set_flags(match &file.flags {
            Some(flags) => Some(
                flags
                    .iter()
                    .map(|f| parse_flag(f))
                    .collect::<Result<_, _>>()?,
            ),
            None => None,
        })
        .set_listener_path(file.listener_path.as_ref().map(Into::into))
        .set_listener_metadata(file.listener_metadata.clone())
        .set_syscalls(Some(rules));
    Ok(profile)
}

fn file_rule(s: &FileSyscall) -> Result<LinuxSyscall, SeccompError> {
    let mut names: Vec<String> = s.names.clone().unwrap_or_default();
    names.extend(s.name.clone());
    names.retain(|n| !n.is_empty());
    if names.is_empty() {
        return Err(error("no syscall names"));
    }
    let mut args = Vec::new();
    for a in s.args.iter().flatten() {
        if a.index > 5 {
            return Err(error(format!("argument index {} is above 5", a.index)));
        }
        args.push(arg(a.index, parse_operator(&a.op)?, a.value, a.value_two));
    }
    let mut rule = LinuxSyscall::default();
    rule.set_names(names)
        .set_action(parse_action(&s.action)?)
        .set_errno_ret(s.errno_ret)
        .set_args((!args.is_empty()).then_some(args));
    Ok(rule)
}

fn parse_action(s: &str) -> Result<LinuxSeccompAction, SeccompError> {
    LinuxSeccompAction::from_str(s).map_err(|_| error(format!("unknown action {s:?}")))
}

fn parse_operator(s: &str) -> Result<LinuxSeccompOperator, SeccompError> {
    LinuxSeccompOperator::from_str(s).map_err(|_| error(format!("unknown operator {s:?}")))
}

fn parse_flag(s: &str) -> Result<LinuxSeccompFilterFlag, SeccompError> {
    LinuxSeccompFilterFlag::from_str(s).map_err(|_| error(format!("unknown flag {s:?}")))
}

fn parse_arch(s: &str) -> Result<Arch, SeccompError> {
    Arch::from_str(s).map_err(|_| error(format!("unknown architecture {s:?}")))
}

/// `architectures`, or with Docker's `archMap` the entry of the host's architecture and its
/// sub-architectures.
fn file_architectures(file: &FileProfile) -> Result<Option<Vec<Arch>>, SeccompError> {
    let mut out = Vec::new();
    for a in file.architectures.iter().flatten() {
        out.push(parse_arch(a)?);
    }
    let native = host_architectures()[0];
    for entry in file.arch_map.iter().flatten() {
        let arch = parse_arch(&entry.architecture)?;
        let subs = entry
            .sub_architectures
            .iter()
            .flatten()
            .map(|s| parse_arch(s))
            .collect::<Result<Vec<_>, _>>()?;
        if arch == native {
            out.push(arch);
            out.extend(subs);
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Whether a Docker `includes` (all conditions must hold) or `excludes` (any condition
/// excludes) filter matches this container and host.
fn filter_matches(f: &FileFilter, caps: &Capabilities, kernel: (u32, u32), all: bool) -> bool {
    let mut tests: Vec<bool> = Vec::new();
    if let Some(list) = f.caps.as_ref().filter(|l| !l.is_empty()) {
        let held = |name: &String| {
            let upper = name.trim().to_ascii_uppercase();
            let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
            bare.parse::<Capability>().is_ok_and(|c| caps.contains(&c))
        };
        tests.push(if all {
            list.iter().all(held)
        } else {
            list.iter().any(held)
        });
    }
    if let Some(list) = f.arches.as_ref().filter(|l| !l.is_empty()) {
        tests.push(list.iter().any(|a| is_host_arch_name(a)));
    }
    if let Some(min) = f.min_kernel.as_deref().filter(|m| !m.is_empty()) {
        tests.push(parse_version(min).is_some_and(|m| kernel >= m));
    }
    if all {
        tests.iter().all(|t| *t)
    } else {
        tests.iter().any(|t| *t)
    }
}

/// The names Docker profiles give the host's architecture (Go's and the kernel's).
fn is_host_arch_name(name: &str) -> bool {
    let names: &[&str] = if cfg!(target_arch = "aarch64") {
        &["arm64", "aarch64", "SCMP_ARCH_AARCH64"]
    } else {
        &["amd64", "x86_64", "SCMP_ARCH_X86_64"]
    };
    names.contains(&name)
}

fn parse_version(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| {
        let digits: String = m.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })?;
    Some((major, minor))
}

/// The running kernel's (major, minor).
fn kernel_version() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|r| parse_version(&r))
        .unwrap_or((0, 0))
}

// ---------------------------------------------------------------------------------------------
// The compiler

/// A compiled filter: BPF instructions and the `seccomp(2)` flags to install them with.
#[derive(Debug, Clone)]
pub struct Program {
    instructions: Vec<libc::sock_filter>,
    flags: u32,
}

/// The compiled programs of the profiles seen last, so that containers with the same
/// profile (nearly all: RuntimeDefault for the default capabilities) share one compile.
#[derive(Default)]
pub struct ProgramCache {
    /// (profile, its program as bytes), the most recently used last.
    entries: std::sync::Mutex<Vec<(LinuxSeccomp, std::sync::Arc<Vec<u8>>)>>,
}

/// How many profiles a [`ProgramCache`] keeps.
const CACHED_PROGRAMS: usize = 16;

impl ProgramCache {
    /// The program of `profile` as [`Program::to_bytes`], compiled on first use.
    pub fn bytes(&self, profile: &LinuxSeccomp) -> Result<std::sync::Arc<Vec<u8>>, SeccompError> {
        let lock = || self.entries.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut entries = lock();
            if let Some(i) = entries.iter().position(|(p, _)| p == profile) {
                let hit = entries.remove(i);
                let bytes = hit.1.clone();
                entries.push(hit);
                return Ok(bytes);
            }
        }
        let bytes = std::sync::Arc::new(compile(profile)?.to_bytes());
        let mut entries = lock();
        if entries.len() >= CACHED_PROGRAMS {
            entries.remove(0);
        }
        entries.push((profile.clone(), bytes.clone()));
        Ok(bytes)
    }
}

/// The start of a program's bytes (see [`Program::to_bytes`]), with the format version.
const PROGRAM_MAGIC: &[u8; 8] = b"cairnbf1";

impl Program {
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.instructions
    }

    /// SECCOMP_FILTER_FLAG_* bits.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// The program as bytes, for the launcher of another process (cairnd compiles, the
    /// pod's shim installs): the magic, the flags and the instruction count (u32 LE each),
    /// then each instruction (code u16 LE, jt, jf, k u32 LE).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * self.instructions.len());
        out.extend_from_slice(PROGRAM_MAGIC);
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&(self.instructions.len() as u32).to_le_bytes());
        for i in &self.instructions {
            out.extend_from_slice(&i.code.to_le_bytes());
            out.extend_from_slice(&[i.jt, i.jf]);
            out.extend_from_slice(&i.k.to_le_bytes());
        }
        out
    }

    /// A program from [`Program::to_bytes`]; the kernel checks the instructions themselves
    /// when the filter is installed.
    pub fn from_bytes(bytes: &[u8]) -> Result<Program, SeccompError> {
        let bad = |why: &str| error(format!("compiled seccomp program: {why}"));
        let rest = bytes
            .strip_prefix(PROGRAM_MAGIC.as_slice())
            .ok_or_else(|| bad("unknown format"))?;
        let (head, code) = rest.split_at_checked(8).ok_or_else(|| bad("truncated"))?;
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let (flags, count) = (word(&head[..4]), word(&head[4..]) as usize);
        if count == 0 || count > BPF_MAXINSNS || code.len() != count * 8 {
            return Err(bad("wrong length"));
        }
        let instructions = code
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: word(&c[4..]),
            })
            .collect();
        Ok(Program {
            instructions,
            flags,
        })
    }
}

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
/// The kernel's limit on a filter's length.
const BPF_MAXINSNS: usize = 4096;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

const FLAG_TSYNC: u32 = 1;
const FLAG_LOG: u32 = 2;
const FLAG_SPEC_ALLOW: u32 = 4;

/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARGS: u32 = 16;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
/// The bit x32 system call numbers carry on x86_64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// An architecture the compiler can emit rules for.
struct ArchTable {
    audit: u32,
    lookup: fn(&str) -> Option<u32>,
    /// x86_64: calls with the x32 bit are denied before any rule.
    deny_x32: bool,
}

fn x86_64_nr(name: &str) -> Option<u32> {
    syscalls::x86_64::Sysno::from_str(name)
        .ok()
        .map(|s| s.id() as u32)
}

fn i386_nr(name: &str) -> Option<u32> {
    syscalls::x86::Sysno::from_str(name)
        .ok()
        .map(|s| s.id() as u32)
}

fn aarch64_nr(name: &str) -> Option<u32> {
    syscalls::aarch64::Sysno::from_str(name)
        .ok()
        .map(|s| s.id() as u32)
}

fn arm_nr(name: &str) -> Option<u32> {
    syscalls::arm::Sysno::from_str(name)
        .ok()
        .map(|s| s.id() as u32)
}

/// The tables the filter covers: the host's architecture always, its 32-bit companion when
/// the profile lists it. Architectures this host cannot run are ignored.
fn arch_tables(listed: Option<&Vec<Arch>>) -> Vec<ArchTable> {
    let has = |a: Arch| listed.is_some_and(|l| l.contains(&a));
    let mut out = Vec::new();
    if cfg!(target_arch = "aarch64") {
        out.push(ArchTable {
            audit: AUDIT_ARCH_AARCH64,
            lookup: aarch64_nr,
            deny_x32: false,
        });
        if has(Arch::ScmpArchArm) {
            out.push(ArchTable {
                audit: AUDIT_ARCH_ARM,
                lookup: arm_nr,
                deny_x32: false,
            });
        }
    } else {
        out.push(ArchTable {
            audit: AUDIT_ARCH_X86_64,
            lookup: x86_64_nr,
            deny_x32: true,
        });
        if has(Arch::ScmpArchX86) {
            out.push(ArchTable {
                audit: AUDIT_ARCH_I386,
                lookup: i386_nr,
                deny_x32: false,
            });
        }
    }
    out
}

/// The return value of an action.
fn action_value(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, SeccompError> {
    let data = |default: u32| -> Result<u32, SeccompError> {
        let v = errno.unwrap_or(default);
        if v > 4095 {
            return Err(error(format!("errnoRet {v} is above 4095")));
        }
        Ok(v)
    };
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | data(libc::EPERM as u32)?,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | data(0)?,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(error("SCMP_ACT_NOTIFY (a seccomp agent) is not supported"))
        }
    })
}

/// Where a jump inside a condition goes.
#[derive(Clone, Copy)]
enum To {
    /// The next instruction.
    Next,
    /// The instruction after this condition: it holds.
    Pass,
    /// The next rule of this system call: it does not hold.
    Fail,
}

struct Op {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

fn op(code: u16, k: u32, jt: To, jf: To) -> Op {
    Op { code, k, jt, jf }
}

fn load(offset: u32) -> Op {
    op(BPF_LD_W_ABS, offset, To::Next, To::Next)
}

/// The offsets of an argument's low and high 32-bit words in `seccomp_data`.
fn arg_words(index: usize) -> (u32, u32) {
    let base = DATA_ARGS + 8 * index as u32;
    if cfg!(target_endian = "little") {
        (base, base + 4)
    } else {
        (base + 4, base)
    }
}

/// The code testing one 64-bit argument condition (unsigned comparisons, as libseccomp).
fn condition(a: &LinuxSeccompArg) -> Vec<Op> {
    use LinuxSeccompOperator::*;
    use To::{Fail, Next, Pass};
    let (lo, hi) = arg_words(a.index());
    let value = a.value();
    let (v_hi, v_lo) = ((value >> 32) as u32, value as u32);
    match a.op() {
        ScmpCmpEq => vec![
            load(hi),
            op(BPF_JEQ_K, v_hi, Next, Fail),
            load(lo),
            op(BPF_JEQ_K, v_lo, Pass, Fail),
        ],
        ScmpCmpNe => vec![
            load(hi),
            op(BPF_JEQ_K, v_hi, Next, Pass),
            load(lo),
            op(BPF_JEQ_K, v_lo, Fail, Pass),
        ],
        ScmpCmpGt | ScmpCmpGe => vec![
            load(hi),
            op(BPF_JGT_K, v_hi, Pass, Next),
            op(BPF_JEQ_K, v_hi, Next, Fail),
            load(lo),
            op(
                if a.op() == ScmpCmpGt {
                    BPF_JGT_K
                } else {
                    BPF_JGE_K
                },
                v_lo,
                Pass,
                Fail,
            ),
        ],
        // LT is "not GE", LE is "not GT".
        ScmpCmpLt | ScmpCmpLe => vec![
            load(hi),
            op(BPF_JGT_K, v_hi, Fail, Next),
            op(BPF_JEQ_K, v_hi, Next, Pass),
            load(lo),
            op(
                if a.op() == ScmpCmpLe {
                    BPF_JGT_K
                } else {
                    BPF_JGE_K
                },
                v_lo,
                Fail,
                Pass,
            ),
        ],
        ScmpCmpMaskedEq => {
            let want = a.value_two().unwrap_or(0);
            vec![
                load(hi),
                op(BPF_AND_K, v_hi, Next, Next),
                op(BPF_JEQ_K, (want >> 32) as u32, Next, Fail),
                load(lo),
                op(BPF_AND_K, v_lo, Next, Next),
                op(BPF_JEQ_K, want as u32, Pass, Fail),
            ]
        }
    }
}

fn insn(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn short_jump(from: usize, to: usize, what: &str) -> Result<u8, SeccompError> {
    u8::try_from(to - from - 1).map_err(|_| error(format!("the rules for {what} are too long")))
}

/// One rule: its conditions (all must hold), then `ret action`; a failed condition falls
/// to the instruction after the rule.
fn rule_code(
    args: &[LinuxSeccompArg],
    action: u32,
    what: &str,
) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let blocks: Vec<Vec<Op>> = args.iter().map(condition).collect();
    let total = blocks.iter().map(Vec::len).sum::<usize>() + 1;
    let mut out = Vec::with_capacity(total);
    for block in &blocks {
        let end = out.len() + block.len();
        for o in block {
            let here = out.len();
            let target = |t: To| match t {
                To::Next => Ok(0),
                To::Pass => short_jump(here, end, what),
                To::Fail => short_jump(here, total, what),
            };
            out.push(insn(o.code, o.k, target(o.jt)?, target(o.jf)?));
        }
    }
    out.push(insn(BPF_RET_K, action, 0, 0));
    Ok(out)
}

/// The rules of one architecture: system call number -> (rules in profile order, whether an
/// unconditional rule ends the list).
type RuleMap<'p> = BTreeMap<u32, (Vec<(&'p [LinuxSeccompArg], u32)>, bool)>;

fn rule_map<'p>(profile: &'p LinuxSeccomp, table: &ArchTable) -> Result<RuleMap<'p>, SeccompError> {
    let mut map: RuleMap<'p> = BTreeMap::new();
    for (i, s) in profile.syscalls().iter().flatten().enumerate() {
        let action = action_value(s.action(), s.errno_ret())
            .map_err(|e| error(format!("syscalls[{i}]: {}", e.0)))?;
        let args = s.args().as_deref().unwrap_or(&[]);
        if let Some(bad) = args.iter().find(|a| a.index() > 5) {
            return Err(error(format!(
                "syscalls[{i}]: argument index {} is above 5",
                bad.index()
            )));
        }
        // Names this architecture does not have are skipped, as runc does.
        for nr in s.names().iter().filter_map(|n| (table.lookup)(n)) {
            let (rules, closed) = map.entry(nr).or_default();
            if *closed {
                continue;
            }
            rules.push((args, action));
            *closed = args.is_empty();
        }
    }
    Ok(map)
}

/// What the calls of one range of numbers run: the rule chain of one call, or `ret default`
/// for the numbers no rule names.
type Body = Vec<libc::sock_filter>;

/// The code of one call: its rules in order, then the default unless an unconditional rule
/// ends the list.
fn call_body(
    nr: u32,
    rules: &[(&[LinuxSeccompArg], u32)],
    closed: bool,
    default: u32,
) -> Result<Body, SeccompError> {
    let what = format!("system call {nr}");
    let mut body = Vec::new();
    for (args, action) in rules {
        body.extend(rule_code(args, *action, &what)?);
    }
    if !closed {
        body.push(insn(BPF_RET_K, default, 0, 0));
    }
    Ok(body)
}

fn same_code(a: &[libc::sock_filter], b: &[libc::sock_filter]) -> bool {
    let key = |i: &libc::sock_filter| (i.code, i.jt, i.jf, i.k);
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

/// Cuts the numbers 0..=u32::MAX into ranges, each starting at its number and running to the
/// next one's start, with the code its calls run; neighbours running the same code are one
/// range (bodies only jump forward inside themselves, so equal code decides equally).
fn ranges(map: RuleMap<'_>, default: u32) -> Result<Vec<(u32, Body)>, SeccompError> {
    let mut out: Vec<(u32, Body)> = Vec::new();
    let mut push = |start: u32, body: Body| match out.last() {
        Some((_, last)) if same_code(last, &body) => {}
        _ => out.push((start, body)),
    };
    // The first number not covered yet (none once u32::MAX is).
    let mut next = Some(0u32);
    for (nr, (rules, closed)) in map {
        if let Some(gap) = next.filter(|n| *n < nr) {
            push(gap, vec![insn(BPF_RET_K, default, 0, 0)]);
        }
        push(nr, call_body(nr, &rules, closed, default)?);
        next = nr.checked_add(1);
    }
    if let Some(n) = next {
        push(n, vec![insn(BPF_RET_K, default, 0, 0)]);
    }
    Ok(out)
}

/// The two halves a search splits `ranges` into (at least two ranges).
fn halves<T>(ranges: &[T]) -> (&[T], &[T]) {
    ranges.split_at(ranges.len() / 2)
}

/// The value of a body that only returns.
fn lone_ret(body: &[libc::sock_filter]) -> Option<u32> {
    match body {
        [i] if i.code == BPF_RET_K => Some(i.k),
        _ => None,
    }
}

/// The longest an 8-bit conditional jump can reach: a search this long (pool included)
/// needs no `ja`.
const SHORT_REACH: usize = 256;

/// A binary search over `ranges` (sorted, non-empty), the number in the accumulator; each
/// split is one `jge`. Small searches share their `ret` leaves (see [`pooled_search`]);
/// bigger ones split into two searches, the half short enough for the 8-bit offset of a
/// conditional jump laid out first, or a `ja` (32-bit offset) over the lower half when
/// neither is.
fn search(ranges: &[(u32, Body)]) -> Body {
    if let [(_, body)] = ranges {
        return body.clone();
    }
    let pool = ret_pool(ranges);
    if pooled_len(ranges) + pool.len() <= SHORT_REACH {
        return pooled_search(ranges, &pool);
    }
    let (below, above) = halves(ranges);
    let split = above[0].0;
    let (lo, hi) = (search(below), search(above));
    let mut out = Vec::with_capacity(lo.len() + hi.len() + 2);
    if let Ok(skip) = u8::try_from(hi.len()) {
        out.push(insn(BPF_JGE_K, split, 0, skip));
        out.extend(hi);
        out.extend(lo);
    } else if let Ok(skip) = u8::try_from(lo.len()) {
        out.push(insn(BPF_JGE_K, split, skip, 0));
        out.extend(lo);
        out.extend(hi);
    } else {
        out.push(insn(BPF_JGE_K, split, 0, 1));
        out.push(insn(BPF_JMP_JA, lo.len() as u32, 0, 0));
        out.extend(lo);
        out.extend(hi);
    }
    out
}

/// The distinct values of the bodies of `ranges` that only return, in order of appearance.
fn ret_pool(ranges: &[(u32, Body)]) -> Vec<u32> {
    let mut pool = Vec::new();
    for v in ranges.iter().filter_map(|(_, b)| lone_ret(b)) {
        if !pool.contains(&v) {
            pool.push(v);
        }
    }
    pool
}

/// The length of [`pooled_search`]'s code before its pool.
fn pooled_len(ranges: &[(u32, Body)]) -> usize {
    if let [(_, body)] = ranges {
        return if lone_ret(body).is_some() {
            0
        } else {
            body.len()
        };
    }
    let (below, above) = halves(ranges);
    1 + pooled_len(below) + pooled_len(above)
}

/// A search whose splits jump straight to one shared `ret` per value (the pool, after the
/// code) instead of to a `ret` of their own; the caller keeps it within [`SHORT_REACH`].
fn pooled_search(ranges: &[(u32, Body)], pool: &[u32]) -> Body {
    let pool_start = pooled_len(ranges);
    let mut out = Vec::with_capacity(pool_start + pool.len());
    emit_pooled(ranges, pool_start, pool, &mut out);
    out.extend(pool.iter().map(|v| insn(BPF_RET_K, *v, 0, 0)));
    out
}

/// Appends the split of `ranges` (at least two) and the code of its halves to `out`.
fn emit_pooled(ranges: &[(u32, Body)], pool_start: usize, pool: &[u32], out: &mut Body) {
    let (below, above) = halves(ranges);
    let here = out.len();
    out.push(insn(BPF_JGE_K, above[0].0, 0, 0));
    // Where a half starts: its pool entry if it only returns, else its code.
    let place = |half: &[(u32, Body)], out: &mut Body| -> usize {
        match half {
            [(_, body)] => match lone_ret(body) {
                Some(v) => pool_start + pool.iter().position(|p| *p == v).unwrap_or(0),
                None => {
                    out.extend_from_slice(body);
                    out.len() - body.len()
                }
            },
            _ => {
                let at = out.len();
                emit_pooled(half, pool_start, pool, out);
                at
            }
        }
    };
    let lo = place(below, out);
    let hi = place(above, out);
    // Within SHORT_REACH, every offset fits in 8 bits.
    out[here].jt = (hi - here - 1) as u8;
    out[here].jf = (lo - here - 1) as u8;
}

/// The block of one architecture: load the number, deny x32 calls, then a binary search
/// over the numbers that ends in the rules of the call (or the default).
fn arch_block(
    profile: &LinuxSeccomp,
    table: &ArchTable,
    default: u32,
    deny: u32,
) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let mut out = vec![insn(BPF_LD_W_ABS, DATA_NR, 0, 0)];
    if table.deny_x32 {
        out.push(insn(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1));
        out.push(insn(BPF_RET_K, deny, 0, 0));
    }
    out.extend(search(&ranges(rule_map(profile, table)?, default)?));
    Ok(out)
}

/// Compiles a profile for this host. Errors name the rule at fault: an unsupported action
/// (SCMP_ACT_NOTIFY), an argument index above 5, an errno above 4095, a program too long.
pub fn compile(profile: &LinuxSeccomp) -> Result<Program, SeccompError> {
    let default = action_value(profile.default_action(), profile.default_errno_ret())
        .map_err(|e| error(format!("defaultAction: {}", e.0)))?;
    // What x32 calls get: the default when it denies, EPERM when it allows.
    let deny = if matches!(default, RET_ALLOW | RET_LOG) {
        RET_ERRNO | libc::EPERM as u32
    } else {
        default
    };
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return Err(error(
            "seccomp filters are only compiled for x86_64 and aarch64 hosts",
        ));
    }
    let tables = arch_tables(profile.architectures().as_ref());
    let blocks = tables
        .iter()
        .map(|t| arch_block(profile, t, default, deny))
        .collect::<Result<Vec<_>, _>>()?;
    // Dispatch on the architecture: `jeq arch; ja block` pairs, then kill for any other.
    let mut out = vec![insn(BPF_LD_W_ABS, DATA_ARCH, 0, 0)];
    let dispatch_len = 1 + 2 * tables.len() + 1;
    let mut block_start = dispatch_len;
    for (table, block) in tables.iter().zip(&blocks) {
        out.push(insn(BPF_JEQ_K, table.audit, 0, 1));
        let here = out.len();
        out.push(insn(BPF_JMP_JA, (block_start - here - 1) as u32, 0, 0));
        block_start += block.len();
    }
    out.push(insn(BPF_RET_K, RET_KILL_PROCESS, 0, 0));
    for block in blocks {
        out.extend(block);
    }
    if out.len() > BPF_MAXINSNS {
        return Err(error(format!(
            "the profile compiles to {} instructions, more than the kernel's {BPF_MAXINSNS}",
            out.len()
        )));
    }
    let mut flags = 0;
    for f in profile.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FLAG_SPEC_ALLOW,
            // Only meaningful with a notification listener, which cairn does not create.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        };
    }
    Ok(Program {
        instructions: out,
        flags,
    })
}

/// A profile that allows everything but `names`, which fail with EPERM (for tests, here
/// and in the shim's launcher and Task service).
pub fn profile_denying(names: &[&str]) -> LinuxSeccomp {
    use oci_spec::runtime::{LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder};
    let rule = LinuxSyscallBuilder::default()
        .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(1u32)
        .build()
        .expect("a valid syscall rule");
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![rule])
        .build()
        .expect("a valid profile")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Runs a program on one `seccomp_data` like the kernel does (the subset of classic BPF
    /// the compiler emits).
    fn run(p: &Program, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        execute(p, arch, nr, args).0
    }

    /// Runs a program: its decision, and how many instructions ran before the first load of
    /// an argument (all of them if none was loaded), which is the part the kernel emulates
    /// for every system call number when the filter is attached.
    fn execute(p: &Program, arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let prog = p.instructions();
        let (mut pc, mut acc) = (0usize, 0u32);
        let (mut steps, mut before_args) = (0usize, None);
        loop {
            let i = prog[pc];
            pc += 1;
            steps += 1;
            let jump = |cond: bool| if cond { i.jt as usize } else { i.jf as usize };
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    if i.k >= DATA_ARGS && before_args.is_none() {
                        before_args = Some(steps);
                    }
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                BPF_AND_K => acc &= i.k,
                BPF_JMP_JA => pc += i.k as usize,
                BPF_JEQ_K => pc += jump(acc == i.k),
                BPF_JGT_K => pc += jump(acc > i.k),
                BPF_JGE_K => pc += jump(acc >= i.k),
                BPF_RET_K => return (i.k, before_args.unwrap_or(steps)),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn programs_cross_as_bytes_and_bad_bytes_are_refused() {
        let p = compile(&default_profile(&default_caps())).unwrap();
        let back = Program::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(back.flags(), p.flags());
        let same = |a: &libc::sock_filter, b: &libc::sock_filter| {
            (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k)
        };
        assert_eq!(back.instructions().len(), p.instructions().len());
        assert!(back
            .instructions()
            .iter()
            .zip(p.instructions())
            .all(|(a, b)| same(a, b)));
        let bytes = p.to_bytes();
        for bad in [
            &bytes[..bytes.len() - 1],
            &bytes[..12],
            &b"cairnbf0"[..],
            &b""[..],
        ] {
            let e = Program::from_bytes(bad).unwrap_err();
            assert!(e.0.starts_with("compiled seccomp program:"), "{e}");
        }
        let mut empty = bytes[..16].to_vec();
        empty[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert!(Program::from_bytes(&empty).is_err());
    }

    /// What the kernel's checker demands of a classic BPF program: every jump lands inside
    /// it, and it ends in a return.
    fn assert_well_formed(p: &Program) {
        let prog = p.instructions();
        assert!(prog.len() <= BPF_MAXINSNS);
        assert_eq!(prog.last().map(|i| i.code), Some(BPF_RET_K));
        for (pc, i) in prog.iter().enumerate() {
            let targets = match i.code {
                BPF_JMP_JA => vec![i.k as usize],
                BPF_JEQ_K | BPF_JGT_K | BPF_JGE_K => vec![i.jt as usize, i.jf as usize],
                _ => vec![],
            };
            for t in targets {
                assert!(pc + 1 + t < prog.len(), "jump at {pc} leaves the program");
            }
        }
    }

    fn nr(name: &str) -> u32 {
        x86_64_nr(name).unwrap()
    }

    fn default_caps() -> Capabilities {
        crate::caps::DEFAULT_CAPABILITIES.into_iter().collect()
    }

    fn x86(p: &Program, name: &str, args: [u64; 6]) -> u32 {
        run(p, AUDIT_ARCH_X86_64, nr(name), args)
    }

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn default_profile_decisions() {
        let p = compile(&default_profile(&default_caps())).unwrap();
        let none = [0u64; 6];
        for name in [
            "read",
            "write",
            "openat",
            "execve",
            "clone",
            "socket",
            "exit_group",
        ] {
            assert_eq!(x86(&p, name, none), RET_ALLOW, "{name}");
        }
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "request_key",
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "reboot",
            "swapon",
            "settimeofday",
            "clock_settime",
            "bpf",
            "perf_event_open",
            "open_by_handle_at",
            "name_to_handle_at",
            "userfaultfd",
            "io_uring_setup",
            "pivot_root",
            "sethostname",
            "acct",
            "iopl",
            "ioperm",
            "fsopen",
            "move_mount",
            "open_tree",
            "syslog",
            "_sysctl",
            "kcmp",
            "process_vm_readv",
            "vhangup",
            "mbind",
            "lookup_dcookie",
            "quotactl",
        ] {
            assert_eq!(x86(&p, name, none), EPERM, "{name}");
        }
        // chroot: CAP_SYS_CHROOT is a default capability.
        assert_eq!(x86(&p, "chroot", none), RET_ALLOW);
        // clone with namespace flags is denied, clone3 says ENOSYS.
        let newns = [libc::CLONE_NEWNS as u64 | 17, 0, 0, 0, 0, 0];
        assert_eq!(x86(&p, "clone", newns), EPERM);
        let newuser = [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0];
        assert_eq!(x86(&p, "clone", newuser), EPERM);
        let thread = [(libc::CLONE_VM | libc::CLONE_THREAD) as u64, 0, 0, 0, 0, 0];
        assert_eq!(x86(&p, "clone", thread), RET_ALLOW);
        assert_eq!(x86(&p, "clone3", none), RET_ERRNO | libc::ENOSYS as u32);
        // personality: the usual ones and the query only.
        for (value, want) in [
            (0u64, RET_ALLOW),
            (0x8, RET_ALLOW),
            (0xffff_ffff, RET_ALLOW),
            (0x0040_0000, EPERM), // READ_IMPLIES_EXEC
            (0x1_0000_0000, EPERM),
        ] {
            assert_eq!(
                x86(&p, "personality", [value, 0, 0, 0, 0, 0]),
                want,
                "{value:#x}"
            );
        }
        // Unknown numbers get the default; x32 calls are denied; other arches are killed.
        assert_eq!(run(&p, AUDIT_ARCH_X86_64, 999, none), EPERM);
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | nr("read"), none),
            EPERM
        );
        assert_eq!(run(&p, AUDIT_ARCH_AARCH64, 63, none), RET_KILL_PROCESS);
        // The i386 table: its own numbers.
        let i386 = |name: &str| run(&p, AUDIT_ARCH_I386, i386_nr(name).unwrap(), none);
        assert_eq!(i386("read"), RET_ALLOW);
        assert_eq!(i386("socketcall"), RET_ALLOW);
        assert_eq!(i386("mount"), EPERM);
        assert_eq!(i386("keyctl"), EPERM);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn capabilities_open_their_calls() {
        let mut caps = default_caps();
        caps.insert(Capability::SysAdmin);
        caps.insert(Capability::SysTime);
        caps.remove(&Capability::SysChroot);
        let p = compile(&default_profile(&caps)).unwrap();
        let none = [0u64; 6];
        for name in ["mount", "unshare", "setns", "bpf", "clone3", "settimeofday"] {
            assert_eq!(x86(&p, name, none), RET_ALLOW, "{name}");
        }
        let newns = [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0];
        assert_eq!(x86(&p, "clone", newns), RET_ALLOW);
        assert_eq!(x86(&p, "chroot", none), EPERM);
        assert_eq!(x86(&p, "init_module", none), EPERM);
    }

    /// Every system call of the x86_64 and aarch64 tables has been decided on: allowed,
    /// allowed with a capability or with conditions, or denied on purpose.
    #[test]
    fn every_known_call_is_classified() {
        const DENIED: &[&str] = &[
            "_sysctl",
            "add_key",
            "afs_syscall",
            "create_module",
            "epoll_ctl_old",
            "epoll_wait_old",
            "get_kernel_syms",
            "getpmsg",
            "io_uring_enter",
            "io_uring_register",
            "io_uring_setup",
            "kexec_file_load",
            "kexec_load",
            "keyctl",
            "listmount",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "memfd_secret",
            "nfsservctl",
            "putpmsg",
            "query_module",
            "request_key",
            "security",
            "statmount",
            "sysfs",
            "tuxcall",
            "uselib",
            "ustat",
            "vserver",
            // Conditional rules of their own.
            "personality",
            "clone",
            "clone3",
        ];
        let mut decided: std::collections::HashSet<&str> = ALLOWED.iter().copied().collect();
        for (_, names) in ALLOWED_WITH_CAPABILITY {
            decided.extend(names.iter().copied());
        }
        decided.extend(DENIED);
        let x64 = syscalls::x86_64::Sysno::iter().map(|s| s.name());
        let a64 = syscalls::aarch64::Sysno::iter().map(|s| s.name());
        let missing: Vec<&str> = x64.chain(a64).filter(|n| !decided.contains(n)).collect();
        assert!(missing.is_empty(), "not classified: {missing:?}");
        let allowed: std::collections::HashSet<&str> = ALLOWED.iter().copied().collect();
        let both: Vec<&&str> = DENIED.iter().filter(|n| allowed.contains(*n)).collect();
        assert!(both.is_empty(), "allowed and denied: {both:?}");
    }

    fn profile(json: &str) -> Result<LinuxSeccomp, SeccompError> {
        parse_profile(json.as_bytes(), &default_caps())
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn oci_and_docker_files() {
        // OCI format: a deny list.
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                              "errnoRet": 13},
                             {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                              "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap();
        let p = compile(&p).unwrap();
        assert_eq!(x86(&p, "mkdir", [0; 6]), RET_ERRNO | 13);
        assert_eq!(x86(&p, "read", [0; 6]), RET_ALLOW);
        assert_eq!(x86(&p, "kill", [1, 9, 0, 0, 0, 0]), EPERM);
        assert_eq!(x86(&p, "kill", [1, 15, 0, 0, 0, 0]), RET_ALLOW);
        // An allow-all default still denies x32 calls.
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | nr("kill"), [0; 6]),
            EPERM
        );

        // Docker format: archMap, single "name", includes/excludes, comments.
        let docker = r#"{
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
            "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                         "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                        {"architecture": "SCMP_ARCH_AARCH64",
                         "subArchitectures": ["SCMP_ARCH_ARM"]}],
            "syscalls": [
                {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW",
                 "args": [], "comment": "", "includes": {}, "excludes": {}},
                {"name": "getpid", "action": "SCMP_ACT_ALLOW", "args": null},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["chroot"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_CHROOT"], "arches": ["amd64"],
                              "minKernel": "4.8"}},
                {"names": ["kill"], "action": "SCMP_ACT_ALLOW",
                 "excludes": {"caps": ["CAP_KILL"]}},
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"minKernel": "99.0"}},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0,
                           "op": "SCMP_CMP_MASKED_EQ"}]}
            ]}"#;
        let parsed = profile(docker).unwrap();
        assert_eq!(
            parsed.architectures().as_ref().unwrap(),
            &vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
        let p = compile(&parsed).unwrap();
        let enosys = RET_ERRNO | 38;
        assert_eq!(x86(&p, "read", [0; 6]), RET_ALLOW);
        assert_eq!(x86(&p, "getpid", [0; 6]), RET_ALLOW);
        assert_eq!(x86(&p, "mount", [0; 6]), enosys);
        assert_eq!(x86(&p, "chroot", [0; 6]), RET_ALLOW);
        assert_eq!(x86(&p, "kill", [0; 6]), enosys);
        assert_eq!(x86(&p, "ptrace", [0; 6]), enosys);
        assert_eq!(x86(&p, "clone", [0x11, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(x86(&p, "clone", [0x1000_0000, 0, 0, 0, 0, 0]), enosys);
    }

    #[test]
    fn comparisons_are_64_bit() {
        use LinuxSeccompOperator::*;
        let cases: [(LinuxSeccompOperator, u64, u64, bool); 16] = [
            (ScmpCmpEq, 5, 5, true),
            (ScmpCmpEq, 5, 5 | 1 << 32, false),
            (ScmpCmpNe, 5, 5 | 1 << 32, true),
            (ScmpCmpNe, 5, 5, false),
            (ScmpCmpGt, 1 << 32, (1 << 32) + 1, true),
            (ScmpCmpGt, 1 << 32, 0xffff_ffff, false),
            (ScmpCmpGt, 7, 7, false),
            (ScmpCmpGe, 7, 7, true),
            (ScmpCmpGe, 1 << 33, 1 << 32, false),
            (ScmpCmpLt, 1 << 32, 0xffff_ffff, true),
            (ScmpCmpLt, 7, 7, false),
            (ScmpCmpLt, 7, 1 << 32, false),
            (ScmpCmpLe, 7, 7, true),
            (ScmpCmpLe, 7, 8, false),
            (ScmpCmpLe, 1 << 32, 5, true),
            (ScmpCmpGt, 0, u64::MAX, true),
        ];
        for (operator, value, actual, holds) in cases {
            let mut rule = syscall_rule(&["kill"], LinuxSeccompAction::ScmpActErrno);
            rule.set_args(Some(vec![arg(2, operator, value, None)]));
            let mut p = LinuxSeccomp::default();
            p.set_default_action(LinuxSeccompAction::ScmpActAllow)
                .set_syscalls(Some(vec![rule]));
            let p = compile(&p).unwrap();
            let kill = host_architectures()[0];
            let (audit, nr) = if kill == Arch::ScmpArchAarch64 {
                (AUDIT_ARCH_AARCH64, aarch64_nr("kill").unwrap())
            } else {
                (AUDIT_ARCH_X86_64, x86_64_nr("kill").unwrap())
            };
            let got = run(&p, audit, nr, [0, 0, actual, 0, 0, 0]);
            let want = if holds { EPERM } else { RET_ALLOW };
            assert_eq!(got, want, "{operator:?} {value:#x} against {actual:#x}");
        }
        // Masked equality: (arg & value) == valueTwo.
        let mut rule = syscall_rule(&["kill"], LinuxSeccompAction::ScmpActErrno);
        rule.set_args(Some(vec![arg(0, ScmpCmpMaskedEq, 0xf0, Some(0x30))]));
        let mut p = LinuxSeccomp::default();
        p.set_syscalls(Some(vec![rule]));
        let p = compile(&p).unwrap();
        let (audit, nr) = if cfg!(target_arch = "aarch64") {
            (AUDIT_ARCH_AARCH64, aarch64_nr("kill").unwrap())
        } else {
            (AUDIT_ARCH_X86_64, x86_64_nr("kill").unwrap())
        };
        assert_eq!(run(&p, audit, nr, [0x3f, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&p, audit, nr, [0x4f, 0, 0, 0, 0, 0]), RET_ALLOW);
    }

    #[test]
    fn bad_profiles_are_refused() {
        let cases = [
            ("", "malformed JSON"),
            ("{", "malformed JSON"),
            ("{}", "malformed JSON"),
            (r#"{"defaultAction": "SCMP_ACT_NOPE"}"#, "unknown action"),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}"#,
                "unknown architecture",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}"#,
                "unknown flag",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}"#,
                "no syscall names",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"],
                    "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1,
                    "op": "SCMP_CMP_EQ"}]}]}"#,
                "argument index 6",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"],
                    "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1,
                    "op": "SCMP_CMP_ALMOST"}]}]}"#,
                "unknown operator",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": 3}"#,
                "malformed JSON",
            ),
        ];
        for (json, want) in cases {
            let err = profile(json).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
        // Compile-time refusals.
        let notify = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"],
                "action": "SCMP_ACT_NOTIFY"}]}"#,
        )
        .unwrap();
        let err = compile(&notify).unwrap_err().to_string();
        assert!(err.contains("SCMP_ACT_NOTIFY"), "{err}");
        let big_errno =
            profile(r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5000}"#).unwrap();
        let err = compile(&big_errno).unwrap_err().to_string();
        assert!(err.contains("5000"), "{err}");
        // Files: missing, then malformed, each named.
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let err = load_profile(&missing, &default_caps())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.json"), "{err}");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "not json").unwrap();
        let err = load_profile(&bad, &default_caps()).unwrap_err().to_string();
        assert!(
            err.contains("bad.json") && err.contains("malformed"),
            "{err}"
        );
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("6.18.44-fc-v445"), Some((6, 18)));
        assert_eq!(parse_version("4.8"), Some((4, 8)));
        assert_eq!(parse_version("5"), Some((5, 0)));
        assert_eq!(parse_version("5.10-rc1"), Some((5, 10)));
        assert_eq!(parse_version("x"), None);
        assert!(kernel_version() >= (4, 8));
    }

    /// Installs `p` in a forked child (with no_new_privs) and returns the errno `probe` saw
    /// there (0: the call succeeded).
    fn errno_in_child(p: &Program, probe: fn() -> libc::c_long) -> i32 {
        // SAFETY: the child only makes raw system calls and _exits.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let prog = libc::sock_fprog {
                    len: p.instructions().len() as u16,
                    filter: p.instructions().as_ptr() as *mut libc::sock_filter,
                };
                if libc::syscall(libc::SYS_seccomp, 1, p.flags(), &prog) != 0 {
                    libc::_exit(200);
                }
                let r = probe();
                let code = if r < 0 { *libc::__errno_location() } else { 0 };
                libc::_exit(code.min(199));
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert!(libc::WIFEXITED(status), "status {status:#x}");
            libc::WEXITSTATUS(status)
        }
    }

    #[test]
    fn the_kernel_runs_the_default_profile() {
        let p = compile(&default_profile(&default_caps())).unwrap();
        // SAFETY (all probes): plain system calls with harmless arguments.
        let unshare_user: fn() -> libc::c_long =
            || unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER) };
        let keyctl: fn() -> libc::c_long = || unsafe {
            libc::syscall(libc::SYS_keyctl, 0 /* GET_KEYRING_ID */, -3, 0)
        };
        let getpid: fn() -> libc::c_long = || unsafe { libc::syscall(libc::SYS_getpid) };
        let clone3: fn() -> libc::c_long =
            || unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
        assert_eq!(errno_in_child(&p, unshare_user), libc::EPERM);
        assert_eq!(errno_in_child(&p, keyctl), libc::EPERM);
        assert_eq!(errno_in_child(&p, getpid), 0);
        assert_eq!(errno_in_child(&p, clone3), libc::ENOSYS);
        // The same probe without a filter is not refused by seccomp.
        let allow_all = {
            let mut s = LinuxSeccomp::default();
            s.set_default_action(LinuxSeccompAction::ScmpActAllow);
            compile(&s).unwrap()
        };
        assert_ne!(errno_in_child(&allow_all, keyctl), libc::EPERM);
    }

    /// The architectures the decision tests try: both of x86 and of arm, and none.
    const ARCHES: [u32; 5] = [
        AUDIT_ARCH_X86_64,
        AUDIT_ARCH_I386,
        AUDIT_ARCH_AARCH64,
        AUDIT_ARCH_ARM,
        0,
    ];

    /// The system call numbers the decision tests try: every plausible one, the same with
    /// the x32 bit, and the extremes.
    fn numbers() -> impl Iterator<Item = u32> {
        (0..=600u32)
            .flat_map(|nr| [nr, nr | X32_SYSCALL_BIT])
            .chain([X32_SYSCALL_BIT - 1, 0x8000_0000, u32::MAX])
    }

    /// Whether a condition holds for an argument's value, straight from its definition.
    fn holds(a: &LinuxSeccompArg, v: u64) -> bool {
        use LinuxSeccompOperator::*;
        let value = a.value();
        match a.op() {
            ScmpCmpEq => v == value,
            ScmpCmpNe => v != value,
            ScmpCmpGt => v > value,
            ScmpCmpGe => v >= value,
            ScmpCmpLt => v < value,
            ScmpCmpLe => v <= value,
            ScmpCmpMaskedEq => v & value == a.value_two().unwrap_or(0),
        }
    }

    /// The rules naming each system call number, in profile order.
    type ByNumber<'p> = HashMap<u32, Vec<&'p LinuxSyscall>>;

    /// The decisions a profile asks for, worked out without compiling it.
    struct Reference<'p> {
        default: u32,
        /// Per covered architecture: its audit value, whether it denies x32 numbers, and its
        /// rules by number.
        arches: Vec<(u32, bool, ByNumber<'p>)>,
    }

    impl<'p> Reference<'p> {
        fn new(profile: &'p LinuxSeccomp) -> Self {
            let default =
                action_value(profile.default_action(), profile.default_errno_ret()).unwrap();
            let mut arches = Vec::new();
            for table in arch_tables(profile.architectures().as_ref()) {
                let mut by_nr = ByNumber::new();
                for s in profile.syscalls().iter().flatten() {
                    let mut nrs: Vec<u32> =
                        s.names().iter().filter_map(|n| (table.lookup)(n)).collect();
                    nrs.dedup();
                    for nr in nrs {
                        by_nr.entry(nr).or_default().push(s);
                    }
                }
                arches.push((table.audit, table.deny_x32, by_nr));
            }
            Reference { default, arches }
        }

        /// The rules naming `nr`, `None` for an architecture the profile does not cover.
        fn rules(&self, arch: u32, nr: u32) -> Option<&[&'p LinuxSyscall]> {
            let (_, _, by_nr) = self.arches.iter().find(|(a, ..)| *a == arch)?;
            Some(by_nr.get(&nr).map_or(&[], Vec::as_slice))
        }

        /// Kill on an architecture the filter does not cover, deny numbers from the x32 bit
        /// up on x86_64, else the first rule naming the call whose conditions all hold, else
        /// the default.
        fn decide(&self, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
            let Some((_, deny_x32, _)) = self.arches.iter().find(|(a, ..)| *a == arch) else {
                return RET_KILL_PROCESS;
            };
            if *deny_x32 && nr >= X32_SYSCALL_BIT {
                return if matches!(self.default, RET_ALLOW | RET_LOG) {
                    EPERM
                } else {
                    self.default
                };
            }
            for s in self.rules(arch, nr).into_iter().flatten() {
                if s.args().iter().flatten().all(|a| holds(a, args[a.index()])) {
                    return action_value(s.action(), s.errno_ret()).unwrap();
                }
            }
            self.default
        }
    }

    /// Argument vectors that probe the conditions of `rules`: for each rule, one vector
    /// meeting all its conditions, then each condition's argument moved across the
    /// condition's boundaries.
    fn probes(rules: &[&LinuxSyscall]) -> Vec<[u64; 6]> {
        use LinuxSeccompOperator::*;
        let mut out = vec![[0; 6], [u64::MAX; 6]];
        for s in rules {
            let conds = s.args().as_deref().unwrap_or(&[]);
            let mut base = [0u64; 6];
            for a in conds {
                let v = a.value();
                base[a.index()] = match a.op() {
                    ScmpCmpNe => v ^ 1,
                    ScmpCmpGt => v.saturating_add(1),
                    ScmpCmpLt => v.saturating_sub(1),
                    ScmpCmpMaskedEq => a.value_two().unwrap_or(0),
                    ScmpCmpEq | ScmpCmpGe | ScmpCmpLe => v,
                };
            }
            out.push(base);
            for a in conds {
                let (v, two) = (a.value(), a.value_two().unwrap_or(0));
                for candidate in [
                    v.wrapping_sub(1),
                    v,
                    v.wrapping_add(1),
                    v ^ 1 << 32,
                    v ^ 1,
                    two,
                    two | !v,
                    two ^ (v & v.wrapping_neg()),
                    0,
                    u64::MAX,
                ] {
                    let mut probe = base;
                    probe[a.index()] = candidate;
                    out.push(probe);
                }
            }
        }
        out
    }

    /// Compiles `profile` and checks the program's decision against the [`Reference`] for
    /// every architecture, number and probe; returns the program.
    fn assert_decides_like_reference(profile: &LinuxSeccomp) -> Program {
        let p = compile(profile).unwrap();
        assert_well_formed(&p);
        let reference = Reference::new(profile);
        for arch in ARCHES {
            for nr in numbers() {
                let rules = reference.rules(arch, nr).unwrap_or(&[]);
                for a in probes(rules) {
                    let (got, want) = (run(&p, arch, nr, a), reference.decide(arch, nr, a));
                    assert_eq!(got, want, "arch {arch:#x} nr {nr:#x} args {a:x?}");
                }
            }
        }
        p
    }

    fn all_caps() -> Capabilities {
        let mut caps = default_caps();
        caps.extend(ALLOWED_WITH_CAPABILITY.iter().map(|(c, _)| *c));
        caps
    }

    /// A profile for the host's architecture of conditional rules over every allowed name:
    /// each operator, one or two conditions, several actions, unconditional rules shadowing
    /// later ones, names sharing a rule, and one call with a chain of rules longer than a
    /// conditional jump reaches.
    fn conditional_profile(default: LinuxSeccompAction) -> LinuxSeccomp {
        use LinuxSeccompAction::*;
        use LinuxSeccompOperator::*;
        const OPS: [LinuxSeccompOperator; 7] = [
            ScmpCmpEq,
            ScmpCmpNe,
            ScmpCmpGt,
            ScmpCmpGe,
            ScmpCmpLt,
            ScmpCmpLe,
            ScmpCmpMaskedEq,
        ];
        let rule = |names: &[&str], i: usize, args: Vec<LinuxSeccompArg>| {
            let (action, errno) = match i % 4 {
                0 => (ScmpActErrno, Some(i as u32 % 4000 + 1)),
                1 => (ScmpActAllow, None),
                2 => (ScmpActLog, None),
                _ => (ScmpActTrace, Some(i as u32 % 7)),
            };
            let mut r = syscall_rule(names, action);
            r.set_errno_ret(errno)
                .set_args((!args.is_empty()).then_some(args));
            r
        };
        let mut rules = Vec::new();
        let names = ALLOWED.iter().filter(|n| !n.starts_with("exit"));
        let names: Vec<&str> = names.copied().collect();
        for (i, chunk) in names.chunks(3).enumerate() {
            let value = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (i % 61);
            let mut args = vec![arg(
                i % 6,
                OPS[i % 7],
                value,
                Some(value & 0xf0f0_0ff0_000f),
            )];
            if i % 3 == 0 {
                args.push(arg((i + 1) % 6, OPS[(i + 3) % 7], value >> 20, Some(0)));
            }
            rules.push(rule(chunk, i, args));
            if i % 5 == 0 {
                rules.push(rule(&chunk[..1], i + 1, vec![]));
                rules.push(rule(&chunk[..1], i + 2, vec![arg(0, ScmpCmpEq, 0, None)]));
            }
        }
        for j in 0..60 {
            rules.push(rule(
                &["exit_group"],
                j,
                vec![arg(0, ScmpCmpEq, j as u64, None)],
            ));
        }
        let mut profile = LinuxSeccomp::default();
        profile
            .set_default_action(default)
            .set_architectures(Some(host_architectures()[..1].to_vec()))
            .set_syscalls(Some(rules));
        profile
    }

    #[test]
    fn default_profiles_decide_like_the_reference() {
        for caps in [default_caps(), all_caps(), Capabilities::new()] {
            assert_decides_like_reference(&default_profile(&caps));
        }
    }

    #[test]
    fn conditional_profiles_decide_like_the_reference() {
        use LinuxSeccompAction::*;
        for default in [ScmpActErrno, ScmpActAllow, ScmpActKillProcess] {
            let p = assert_decides_like_reference(&conditional_profile(default));
            // Long enough that the search needs `ja` beyond the architecture dispatch.
            let far = p.instructions().iter().filter(|i| i.code == BPF_JMP_JA);
            assert!(far.count() > 3, "{} instructions", p.instructions().len());
        }
    }

    /// The kernel takes the long conditional profile (jumps over 255 instructions).
    #[test]
    fn the_kernel_takes_long_searches() {
        let p = compile(&conditional_profile(LinuxSeccompAction::ScmpActAllow)).unwrap();
        // SAFETY: a plain system call.
        let getppid: fn() -> libc::c_long = || unsafe { libc::syscall(libc::SYS_getppid) };
        assert_ne!(errno_in_child(&p, getppid), 200, "seccomp() refused it");
    }

    /// The default program is a search, not a chain: no system call number runs more than a
    /// few instructions before its decision (or its first argument check).
    #[test]
    fn default_searches_are_short() {
        for caps in [default_caps(), all_caps()] {
            let p = compile(&default_profile(&caps)).unwrap();
            let longest = ARCHES
                .iter()
                .flat_map(|a| numbers().map(move |nr| (*a, nr)))
                .map(|(arch, nr)| execute(&p, arch, nr, [0; 6]).1)
                .max()
                .unwrap();
            assert!(longest < 24, "{longest} instructions on the longest path");
            assert!(p.instructions().len() < 512, "{}", p.instructions().len());
        }
    }

    #[test]
    fn long_rules_compile_or_say_why() {
        use LinuxSeccompAction::ScmpActErrno;
        use LinuxSeccompOperator::ScmpCmpEq;
        let profile = |rules: Vec<LinuxSyscall>| {
            let mut p = LinuxSeccomp::default();
            p.set_default_action(LinuxSeccompAction::ScmpActAllow)
                .set_syscalls(Some(rules));
            p
        };
        let conditional = |count: usize, conds: usize| {
            (0..count)
                .map(|j| {
                    let mut r = syscall_rule(&["kill"], ScmpActErrno);
                    let args = (0..conds).map(|c| arg(c % 6, ScmpCmpEq, (j + c) as u64, None));
                    r.set_args(Some(args.collect()));
                    r
                })
                .collect::<Vec<_>>()
        };
        // A long chain of rules for one call is fine.
        let p = compile(&profile(conditional(100, 1))).unwrap();
        assert_well_formed(&p);
        let kill = host_architectures()[0];
        let (audit, nr) = if kill == Arch::ScmpArchAarch64 {
            (AUDIT_ARCH_AARCH64, aarch64_nr("kill").unwrap())
        } else {
            (AUDIT_ARCH_X86_64, x86_64_nr("kill").unwrap())
        };
        assert_eq!(run(&p, audit, nr, [99, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&p, audit, nr, [100, 0, 0, 0, 0, 0]), RET_ALLOW);
        // One rule whose conditions a conditional jump cannot skip is not.
        let err = compile(&profile(conditional(1, 70)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("the rules for system call {nr} are too long")),
            "{err}"
        );
        // Nor is a program longer than the kernel takes.
        let err = compile(&profile(conditional(1000, 1)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than the kernel's 4096"), "{err}");
    }
}
