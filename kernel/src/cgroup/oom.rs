//! oom_score_adj: a container's wanted score clamped to what this process may set
//! (without CAP_SYS_RESOURCE not below its own, as containerd's restrict_oom_score_adj),
//! and written.

use super::*;

/// CAP_SYS_RESOURCE, needed to lower an oom_score_adj below one's own.
pub(super) const CAP_SYS_RESOURCE: u32 = 24;

/// Clamps an oom_score_adj for a container to what this process may set: a process
/// without CAP_SYS_RESOURCE cannot go below its own value (reads
/// /proc/self/oom_score_adj). Always within -1000..=1000.
pub fn clamp_oom_score_adj(wanted: i32) -> i32 {
    let wanted = wanted.clamp(-1000, 1000);
    if has_cap_sys_resource() {
        return wanted;
    }
    match own_oom_score_adj() {
        Some(own) => clamp_oom_score_adj_to(wanted, own),
        None => wanted,
    }
}

/// The pure part of [`clamp_oom_score_adj`]: `wanted`, but not below `own`.
pub fn clamp_oom_score_adj_to(wanted: i32, own: i32) -> i32 {
    wanted.clamp(-1000, 1000).max(own)
}

/// Writes /proc/<pid>/oom_score_adj.
pub fn set_oom_score_adj(pid: i32, value: i32) -> io::Result<()> {
    fs::write(format!("/proc/{pid}/oom_score_adj"), value.to_string())
}

pub(super) fn own_oom_score_adj() -> Option<i32> {
    fs::read_to_string("/proc/self/oom_score_adj")
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub(super) fn has_cap_sys_resource() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| cap_eff(&status))
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// The CapEff mask of a /proc/<pid>/status text.
pub(super) fn cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}
