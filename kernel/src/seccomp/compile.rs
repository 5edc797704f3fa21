//! The compiler: a profile into the classic BPF program of each architecture, a binary
//! search over system call numbers; compiled programs as plain bytes and a small cache.
//! Runs in cairnd (which compiles profiles); cairn-shim loads the compiled program.

use super::*;

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
pub(super) const CACHED_PROGRAMS: usize = 16;

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
pub(super) const PROGRAM_MAGIC: &[u8; 8] = b"cairnbf1";

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

pub(super) const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
pub(super) const BPF_JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA
pub(super) const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
pub(super) const BPF_JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
pub(super) const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
pub(super) const BPF_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
pub(super) const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
/// The kernel's limit on a filter's length.
pub(super) const BPF_MAXINSNS: usize = 4096;

pub(super) const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub(super) const RET_KILL_THREAD: u32 = 0x0000_0000;
pub(super) const RET_TRAP: u32 = 0x0003_0000;
pub(super) const RET_ERRNO: u32 = 0x0005_0000;
pub(super) const RET_TRACE: u32 = 0x7ff0_0000;
pub(super) const RET_LOG: u32 = 0x7ffc_0000;
pub(super) const RET_ALLOW: u32 = 0x7fff_0000;

pub(super) const FLAG_TSYNC: u32 = 1;
pub(super) const FLAG_LOG: u32 = 2;
pub(super) const FLAG_SPEC_ALLOW: u32 = 4;

/// Offsets in `struct seccomp_data`.
pub(super) const DATA_NR: u32 = 0;
pub(super) const DATA_ARCH: u32 = 4;
pub(super) const DATA_ARGS: u32 = 16;

pub(super) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub(super) const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub(super) const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
pub(super) const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
/// The bit x32 system call numbers carry on x86_64.
pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// An architecture the compiler can emit rules for.
pub(super) struct ArchTable {
    pub(super) audit: u32,
    pub(super) lookup: fn(&str) -> Option<u32>,
    /// x86_64: calls with the x32 bit are denied before any rule.
    pub(super) deny_x32: bool,
}

pub(super) fn x86_64_nr(name: &str) -> Option<u32> {
    syscalls::x86_64::Sysno::from_str(name)
        .ok()
        .map(|s| s.id() as u32)
}

pub(super) fn i386_nr(name: &str) -> Option<u32> {
    syscalls::x86::Sysno::from_str(name)
        .ok()
        .map(|s| s.id() as u32)
}

pub(super) fn aarch64_nr(name: &str) -> Option<u32> {
    syscalls::aarch64::Sysno::from_str(name)
        .ok()
        .map(|s| s.id() as u32)
}

pub(super) fn arm_nr(name: &str) -> Option<u32> {
    syscalls::arm::Sysno::from_str(name)
        .ok()
        .map(|s| s.id() as u32)
}

/// The tables the filter covers: the host's architecture always, its 32-bit companion when
/// the profile lists it. Architectures this host cannot run are ignored.
pub(super) fn arch_tables(listed: Option<&Vec<Arch>>) -> Vec<ArchTable> {
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
pub(super) fn action_value(
    action: LinuxSeccompAction,
    errno: Option<u32>,
) -> Result<u32, SeccompError> {
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
pub(super) enum To {
    /// The next instruction.
    Next,
    /// The instruction after this condition: it holds.
    Pass,
    /// The next rule of this system call: it does not hold.
    Fail,
}

pub(super) struct Op {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

pub(super) fn op(code: u16, k: u32, jt: To, jf: To) -> Op {
    Op { code, k, jt, jf }
}

pub(super) fn load(offset: u32) -> Op {
    op(BPF_LD_W_ABS, offset, To::Next, To::Next)
}

/// The offsets of an argument's low and high 32-bit words in `seccomp_data`.
pub(super) fn arg_words(index: usize) -> (u32, u32) {
    let base = DATA_ARGS + 8 * index as u32;
    if cfg!(target_endian = "little") {
        (base, base + 4)
    } else {
        (base + 4, base)
    }
}

/// The code testing one 64-bit argument condition (unsigned comparisons, as libseccomp).
pub(super) fn condition(a: &LinuxSeccompArg) -> Vec<Op> {
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

pub(super) fn insn(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

pub(super) fn short_jump(from: usize, to: usize, what: &str) -> Result<u8, SeccompError> {
    u8::try_from(to - from - 1).map_err(|_| error(format!("the rules for {what} are too long")))
}

/// One rule: its conditions (all must hold), then `ret action`; a failed condition falls
/// to the instruction after the rule.
pub(super) fn rule_code(
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

pub(super) fn rule_map<'p>(
    profile: &'p LinuxSeccomp,
    table: &ArchTable,
) -> Result<RuleMap<'p>, SeccompError> {
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
pub(super) fn call_body(
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

pub(super) fn same_code(a: &[libc::sock_filter], b: &[libc::sock_filter]) -> bool {
    let key = |i: &libc::sock_filter| (i.code, i.jt, i.jf, i.k);
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

/// Cuts the numbers 0..=u32::MAX into ranges, each starting at its number and running to the
/// next one's start, with the code its calls run; neighbours running the same code are one
/// range (bodies only jump forward inside themselves, so equal code decides equally).
pub(super) fn ranges(map: RuleMap<'_>, default: u32) -> Result<Vec<(u32, Body)>, SeccompError> {
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
pub(super) fn halves<T>(ranges: &[T]) -> (&[T], &[T]) {
    ranges.split_at(ranges.len() / 2)
}

/// The value of a body that only returns.
pub(super) fn lone_ret(body: &[libc::sock_filter]) -> Option<u32> {
    match body {
        [i] if i.code == BPF_RET_K => Some(i.k),
        _ => None,
    }
}

/// The longest an 8-bit conditional jump can reach: a search this long (pool included)
/// needs no `ja`.
pub(super) const SHORT_REACH: usize = 256;

/// A binary search over `ranges` (sorted, non-empty), the number in the accumulator; each
/// split is one `jge`. Small searches share their `ret` leaves (see [`pooled_search`]);
/// bigger ones split into two searches, the half short enough for the 8-bit offset of a
/// conditional jump laid out first, or a `ja` (32-bit offset) over the lower half when
/// neither is.
pub(super) fn search(ranges: &[(u32, Body)]) -> Body {
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
pub(super) fn ret_pool(ranges: &[(u32, Body)]) -> Vec<u32> {
    let mut pool = Vec::new();
    for v in ranges.iter().filter_map(|(_, b)| lone_ret(b)) {
        if !pool.contains(&v) {
            pool.push(v);
        }
    }
    pool
}

/// The length of [`pooled_search`]'s code before its pool.
pub(super) fn pooled_len(ranges: &[(u32, Body)]) -> usize {
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
pub(super) fn pooled_search(ranges: &[(u32, Body)], pool: &[u32]) -> Body {
    let pool_start = pooled_len(ranges);
    let mut out = Vec::with_capacity(pool_start + pool.len());
    emit_pooled(ranges, pool_start, pool, &mut out);
    out.extend(pool.iter().map(|v| insn(BPF_RET_K, *v, 0, 0)));
    out
}

/// Appends the split of `ranges` (at least two) and the code of its halves to `out`.
pub(super) fn emit_pooled(ranges: &[(u32, Body)], pool_start: usize, pool: &[u32], out: &mut Body) {
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
pub(super) fn arch_block(
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
