//! Unit tests of seccomp: the default profile, profile files, the compiler (run on a
//! BPF interpreter of the tests' own) and real filters.

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
        let default = action_value(profile.default_action(), profile.default_errno_ret()).unwrap();
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
