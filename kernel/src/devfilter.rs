//! Device access control on the cgroup2 hierarchy. cgroup v2 has no `devices`
//! controller: the kernel asks the BPF_PROG_TYPE_CGROUP_DEVICE programs attached to a
//! cgroup (and its ancestors) whether a process may create (mknod), read or write a
//! device node. This module turns the ordered OCI device rules
//! (`linux.resources.devices`) into such a program, loads it and attaches it to a
//! cgroup2 directory.
//!
//! Semantics, as the v1 `devices` controller applies the same list: the rules are read
//! in order and a later rule overrides an earlier one for the accesses it names (last
//! match wins, per access bit); a type `a` rule matches every device and every access,
//! so a leading deny-all makes the default "deny". Before any rule, everything is
//! allowed (as in a fresh v1 cgroup under an unrestricted parent). Fifo rules (type
//! `p`) are ignored, as the kernel does not check fifos.
//!
//! The program sees `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`
//! where the low 16 bits of `access_type` are the device type (block 1, char 2) and the
//! high 16 bits the access (mknod 1, read 2, write 4), and returns 1 to allow, 0 to deny.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// `BPF_DEVCG_DEV_BLOCK`.
pub const DEV_BLOCK: u32 = 1;
/// `BPF_DEVCG_DEV_CHAR`.
pub const DEV_CHAR: u32 = 2;
/// `BPF_DEVCG_ACC_MKNOD`.
pub const ACC_MKNOD: u32 = 1;
/// `BPF_DEVCG_ACC_READ`.
pub const ACC_READ: u32 = 2;
/// `BPF_DEVCG_ACC_WRITE`.
pub const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const LOG_SIZE: usize = 64 * 1024;

/// Why a device filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum DevFilterError {
    /// A rule the program cannot express (bad access letters, numbers out of range).
    #[error("invalid device rule {rule}: {reason}")]
    InvalidRule { rule: String, reason: String },
    /// A system call failed; `context` names the cgroup or the step.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

// ---------------------------------------------------------------------------------------
// Instructions
// ---------------------------------------------------------------------------------------

/// One eBPF instruction (`struct bpf_insn`): opcode, dst/src registers, offset, immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst in the low nibble, src in the high nibble.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used (class | op | source).
const LDX_MEM_W: u8 = 0x61;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const JMP_JEQ_K: u8 = 0x15;
const JMP_JNE_K: u8 = 0x55;
const JMP_EXIT: u8 = 0x95;

// Registers: r1 the context on entry; then the decoded request.
const R0: u8 = 0;
const R1: u8 = 1;
const R_TYPE: u8 = 2;
const R_ACC: u8 = 3;
const R_MAJOR: u8 = 4;
const R_MINOR: u8 = 5;
const R_TMP: u8 = 6;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

fn mov_k(dst: u8, imm: i32) -> Insn {
    insn(ALU64_MOV_K, dst, 0, 0, imm)
}

fn exit_with(value: i32) -> [Insn; 2] {
    [mov_k(R0, value), insn(JMP_EXIT, 0, 0, 0, 0)]
}

// ---------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------

/// One device rule, decoded: None fields are wildcards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    allow: bool,
    typ: Option<u32>,
    major: Option<i32>,
    minor: Option<i32>,
    access: u32,
}

impl Rule {
    /// True when the rule matches every request.
    fn matches_all(&self) -> bool {
        self.typ.is_none() && self.major.is_none() && self.minor.is_none() && self.access == ACC_ALL
    }
}

fn describe(rule: &LinuxDeviceCgroup) -> String {
    format!(
        "{{allow: {}, type: {:?}, major: {:?}, minor: {:?}, access: {:?}}}",
        rule.allow(),
        rule.typ(),
        rule.major(),
        rule.minor(),
        rule.access()
    )
}

/// Decodes an OCI rule; None for rules the kernel never consults (fifos).
fn decode(rule: &LinuxDeviceCgroup) -> Result<Option<Rule>, DevFilterError> {
    let invalid = |reason: String| DevFilterError::InvalidRule {
        rule: describe(rule),
        reason,
    };
    let typ = match rule.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => {
            return Ok(Some(Rule {
                allow: rule.allow(),
                typ: None,
                major: None,
                minor: None,
                access: ACC_ALL,
            }))
        }
        LinuxDeviceType::B => DEV_BLOCK,
        LinuxDeviceType::C | LinuxDeviceType::U => DEV_CHAR,
        LinuxDeviceType::P => return Ok(None),
    };
    let number = |n: Option<i64>, what: &str| -> Result<Option<i32>, DevFilterError> {
        match n {
            None | Some(-1) => Ok(None),
            Some(n) => i32::try_from(n)
                .ok()
                .filter(|n| *n >= 0)
                .map(Some)
                .ok_or_else(|| invalid(format!("{what} {n} out of range"))),
        }
    };
    let mut access = 0;
    for c in rule.access().as_deref().unwrap_or("rwm").chars() {
        access |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            other => return Err(invalid(format!("unknown access {other:?}"))),
        };
    }
    Ok(Some(Rule {
        allow: rule.allow(),
        typ: Some(typ),
        major: number(rule.major(), "major")?,
        minor: number(rule.minor(), "minor")?,
        access,
    }))
}

// ---------------------------------------------------------------------------------------
// Code generation
// ---------------------------------------------------------------------------------------

/// The program for `rules`, or None when it would allow everything (no rules, or a last
/// allow-all): then nothing needs attaching.
///
/// Shape: decode the context into registers, then one block per rule from the last to
/// the first. `R_ACC` holds the requested accesses not yet decided. A block whose rule
/// matches the device and names one of those accesses denies outright (a deny rule), or
/// marks its accesses decided and allows once none is left (an allow rule). Past the
/// first rule, undecided accesses are allowed.
pub fn compile(rules: &[LinuxDeviceCgroup]) -> Result<Option<Vec<Insn>>, DevFilterError> {
    let mut decoded = Vec::with_capacity(rules.len());
    for rule in rules {
        decoded.extend(decode(rule)?);
    }
    if decoded.last().is_none_or(|r| r.allow && r.matches_all()) {
        return Ok(None);
    }
    let mut prog = prologue();
    for rule in decoded.iter().rev() {
        if rule.matches_all() {
            // Everything still undecided gets this rule's verdict; nothing after it runs.
            prog.extend(exit_with(i32::from(rule.allow)));
            return Ok(Some(prog));
        }
        prog.extend(rule_block(rule));
    }
    prog.extend(exit_with(1));
    Ok(Some(prog))
}

/// Loads the context fields into R_TYPE, R_ACC, R_MAJOR, R_MINOR.
fn prologue() -> Vec<Insn> {
    vec![
        insn(LDX_MEM_W, R_TYPE, R1, 0, 0),
        insn(ALU64_MOV_X, R_ACC, R_TYPE, 0, 0),
        insn(ALU64_AND_K, R_TYPE, 0, 0, 0xffff),
        insn(ALU64_RSH_K, R_ACC, 0, 0, 16),
        insn(LDX_MEM_W, R_MAJOR, R1, 4, 0),
        insn(LDX_MEM_W, R_MINOR, R1, 8, 0),
    ]
}

/// A placeholder for "jump to the end of this block"; patched by [`rule_block`].
const TO_END: i16 = i16::MIN;

fn rule_block(rule: &Rule) -> Vec<Insn> {
    let mut block = Vec::new();
    let checks = [
        (R_TYPE, rule.typ.map(|t| t as i32)),
        (R_MAJOR, rule.major),
        (R_MINOR, rule.minor),
    ];
    for (reg, value) in checks {
        if let Some(v) = value {
            block.push(insn(JMP_JNE_K, reg, 0, TO_END, v));
        }
    }
    block.push(insn(ALU64_MOV_X, R_TMP, R_ACC, 0, 0));
    block.push(insn(ALU64_AND_K, R_TMP, 0, 0, rule.access as i32));
    block.push(insn(JMP_JEQ_K, R_TMP, 0, TO_END, 0));
    if rule.allow {
        block.push(insn(ALU64_AND_K, R_ACC, 0, 0, !rule.access as i32));
        block.push(insn(JMP_JNE_K, R_ACC, 0, TO_END, 0));
        block.extend(exit_with(1));
    } else {
        block.extend(exit_with(0));
    }
    let len = block.len();
    for (i, ins) in block.iter_mut().enumerate() {
        if ins.off == TO_END {
            // Jumps are relative to the next instruction.
            ins.off = (len - i - 1) as i16;
        }
    }
    block
}

// ---------------------------------------------------------------------------------------
// Kernel
// ---------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, initialized bpf_attr prefix of the size passed; pointers
    // inside it point at buffers that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// Loads a device program; the verifier's log is in the error when it refuses it. The
/// log is only asked for when a first load (without one) fails.
pub fn load(prog: &[Insn]) -> Result<OwnedFd, DevFilterError> {
    if let Ok(fd) = load_logging(prog, None) {
        return Ok(fd);
    }
    let mut log = vec![0u8; LOG_SIZE];
    load_logging(prog, Some(&mut log)).map_err(|source| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        DevFilterError::Io {
            context: format!(
                "loading the device cgroup program (verifier: {})",
                text.trim()
            ),
            source,
        }
    })
}

/// One BPF_PROG_LOAD of a device program, with the verifier writing its log into `log`
/// if given.
fn load_logging(prog: &[Insn], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let license = CString::from(c"Apache-2.0");
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"cairn_dev\0");
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        prog_name: name,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn open_dir(dir: &Path) -> Result<File, DevFilterError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|source| DevFilterError::Io {
            context: format!("opening cgroup {}", dir.display()),
            source,
        })
}

/// Attaches a loaded device program to the cgroup2 directory `dir` (alongside any other
/// program there, BPF_F_ALLOW_MULTI). It stays attached until the cgroup is removed.
pub fn attach(dir: &Path, prog: &OwnedFd) -> Result<(), DevFilterError> {
    let cgroup = open_dir(dir)?;
    let mut attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|source| DevFilterError::Io {
        context: format!("attaching the device program to cgroup {}", dir.display()),
        source,
    })?;
    Ok(())
}

/// Compiles `rules`, loads the program and attaches it to the cgroup2 directory `dir`.
/// Returns false when the rules allow everything (nothing is attached).
pub fn install(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<bool, DevFilterError> {
    let Some(prog) = compile(rules)? else {
        return Ok(false);
    };
    let fd = load(&prog)?;
    attach(dir, &fd)?;
    Ok(true)
}

/// The ids of the device programs attached directly to the cgroup2 directory `dir`.
pub fn attached(dir: &Path) -> Result<Vec<u32>, DevFilterError> {
    let cgroup = open_dir(dir)?;
    let mut ids = vec![0u32; 64];
    let mut attr = ProgQueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr).map_err(|source| DevFilterError::Io {
        context: format!("querying the device programs of cgroup {}", dir.display()),
        source,
    })?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// True when `dir` is on a cgroup2 filesystem.
pub fn is_cgroup2(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .map(|st| st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    /// Runs a device program on one request, as the kernel would; also checks that
    /// every jump goes forward and stays inside the program.
    fn interpret(prog: &[Insn], typ: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | typ, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..prog.len() {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            let imm = i.imm as i64 as u64;
            let mut next = pc + 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, R1 as usize);
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                ALU64_MOV_K => r[dst] = imm,
                ALU64_MOV_X => r[dst] = r[src],
                ALU64_AND_K => r[dst] &= imm,
                ALU64_RSH_K => r[dst] >>= imm,
                JMP_JEQ_K | JMP_JNE_K => {
                    assert!(i.off >= 0, "backward jump at {pc}");
                    if (r[dst] == imm) == (i.code == JMP_JEQ_K) {
                        next += i.off as usize;
                    }
                }
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x} at {pc}"),
            }
            assert!(next < prog.len(), "jump out of the program at {pc}");
            pc = next;
        }
        panic!("no exit");
    }

    /// The rules' meaning, written directly: per requested access bit, the last rule
    /// that matches the device and names the bit decides; allowed before any rule.
    fn model(rules: &[LinuxDeviceCgroup], typ: u32, access: u32, major: u32, minor: u32) -> u64 {
        let decoded: Vec<Rule> = rules.iter().filter_map(|r| decode(r).unwrap()).collect();
        for bit in [ACC_MKNOD, ACC_READ, ACC_WRITE] {
            if access & bit == 0 {
                continue;
            }
            let verdict = decoded
                .iter()
                .rev()
                .find(|r| {
                    r.access & bit != 0
                        && r.typ.is_none_or(|t| t == typ)
                        && r.major.is_none_or(|m| m as u32 == major)
                        && r.minor.is_none_or(|m| m as u32 == minor)
                })
                .is_none_or(|r| r.allow);
            if !verdict {
                return 0;
            }
        }
        1
    }

    fn check_against_model(rules: &[LinuxDeviceCgroup]) {
        let prog = compile(rules).unwrap();
        for typ in [DEV_BLOCK, DEV_CHAR] {
            for access in 1..=ACC_ALL {
                for major in [0, 1, 5, 8, 136] {
                    for minor in [0, 1, 2, 3, 5, 9] {
                        let want = model(rules, typ, access, major, minor);
                        let got = prog
                            .as_ref()
                            .map_or(1, |p| interpret(p, typ, access, major, minor));
                        assert_eq!(got, want, "type {typ} access {access} {major}:{minor}");
                    }
                }
            }
        }
    }

    fn allowed(prog: &[Insn], typ: u32, access: u32, major: u32, minor: u32) -> bool {
        interpret(prog, typ, access, major, minor) == 1
    }

    #[test]
    fn default_rules_allow_only_the_standard_devices() {
        let rules = crate::devices::default_device_rules();
        let prog = compile(&rules).unwrap().unwrap();
        let rw = ACC_READ | ACC_WRITE;
        assert!(allowed(&prog, DEV_CHAR, rw, 1, 3)); // /dev/null
        assert!(allowed(&prog, DEV_CHAR, ACC_READ, 1, 9)); // /dev/urandom
        assert!(allowed(&prog, DEV_CHAR, rw, 136, 4)); // a pty
        assert!(allowed(&prog, DEV_CHAR, ACC_MKNOD, 1, 1)); // mknod of anything
        assert!(allowed(&prog, DEV_BLOCK, ACC_MKNOD, 8, 0));
        assert!(!allowed(&prog, DEV_CHAR, ACC_READ, 1, 1)); // /dev/mem
        assert!(!allowed(&prog, DEV_BLOCK, ACC_READ, 8, 0)); // the host's disk
        assert!(!allowed(&prog, DEV_BLOCK, ACC_WRITE, 8, 0));
        assert!(!allowed(&prog, DEV_CHAR, ACC_MKNOD | ACC_READ, 1, 1));
        check_against_model(&rules);
    }

    #[test]
    fn later_rules_override_earlier_ones_per_access() {
        use LinuxDeviceType::{A, B, C};
        let cases = vec![
            vec![
                rule(false, A, None, None, "rwm"),
                rule(true, C, Some(1), Some(3), "rwm"),
                rule(false, C, Some(1), Some(3), "w"),
            ],
            vec![rule(false, C, Some(1), None, "rw")],
            vec![
                rule(true, C, Some(1), Some(3), "r"),
                rule(false, A, None, None, "rwm"),
                rule(true, B, None, Some(0), "m"),
            ],
            vec![
                rule(false, A, None, None, "rwm"),
                rule(true, A, None, None, "rwm"),
                rule(false, C, Some(5), Some(0), "r"),
            ],
        ];
        for rules in &cases {
            check_against_model(rules);
        }
        let prog = compile(&cases[0]).unwrap().unwrap();
        assert!(allowed(&prog, DEV_CHAR, ACC_READ, 1, 3));
        assert!(!allowed(&prog, DEV_CHAR, ACC_WRITE, 1, 3));
        assert!(!allowed(&prog, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3));
        let prog = compile(&cases[1]).unwrap().unwrap();
        assert!(!allowed(&prog, DEV_CHAR, ACC_READ, 1, 7));
        assert!(allowed(&prog, DEV_CHAR, ACC_MKNOD, 1, 7));
        assert!(allowed(&prog, DEV_BLOCK, ACC_READ, 1, 7));
    }

    #[test]
    fn allow_all_needs_no_program() {
        use LinuxDeviceType::{A, C, P};
        assert!(compile(&[]).unwrap().is_none());
        let privileged = [rule(true, A, None, None, "rwm")];
        assert!(compile(&privileged).unwrap().is_none());
        let after_deny = [
            rule(false, C, Some(1), Some(1), "rwm"),
            rule(true, A, None, None, "rwm"),
            rule(false, P, None, None, "rwm"),
        ];
        assert!(compile(&after_deny).unwrap().is_none());
        let deny_all = compile(&[rule(false, A, None, None, "rwm")])
            .unwrap()
            .unwrap();
        assert_eq!(deny_all.len(), 8); // prologue + "return 0"
        assert!(!allowed(&deny_all, DEV_CHAR, ACC_MKNOD, 1, 3));
    }

    #[test]
    fn bad_rules_are_refused() {
        use LinuxDeviceType::C;
        let err = compile(&[rule(false, C, Some(1), Some(3), "rx")]).unwrap_err();
        assert!(err.to_string().contains("unknown access 'x'"), "{err}");
        let err = compile(&[rule(false, C, Some(1 << 40), None, "r")]).unwrap_err();
        assert!(err.to_string().contains("major"), "{err}");
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// Loads the default program for real (the verifier accepts it), attaches it to a
    /// fresh cgroup2 directory and finds it there.
    #[test]
    fn loads_and_attaches_to_a_cgroup2_dir() {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|p| is_cgroup2(p));
        let (Some(root), true) = (root, is_root()) else {
            panic!("this test needs root and a cgroup2 hierarchy (pure v2 or hybrid)");
        };
        let dir = root.join(format!("cairn-devfilter-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        struct Rmdir<'a>(&'a Path);
        impl Drop for Rmdir<'_> {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(self.0);
            }
        }
        let _rmdir = Rmdir(&dir);
        assert!(attached(&dir).unwrap().is_empty());
        assert!(install(&dir, &crate::devices::default_device_rules()).unwrap());
        assert_eq!(attached(&dir).unwrap().len(), 1);
        let everything = [rule(true, LinuxDeviceType::A, None, None, "rwm")];
        assert!(!install(&dir, &everything).unwrap());
        assert_eq!(attached(&dir).unwrap().len(), 1);
    }
}
