//! Resource plans: the control files an OCI `LinuxResources` writes and in what order,
//! independent of the filesystem (the v1 and v2 translations are `v1` and `v2`).
//! Runs in cairnd (making cgroups, limits, stats) and cairn-shim (joining, killing, removing).

use super::*;

/// One control-file write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Setting {
    /// The controller (v1: which hierarchy) the file belongs to.
    pub(super) controller: &'static str,
    pub(super) file: String,
    pub(super) value: String,
    /// Skip silently when the file or hierarchy is absent.
    pub(super) optional: bool,
}

/// A write, or two writes that the kernel may accept in only one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    One(Setting),
    EitherOrder(Setting, Setting),
}

pub(super) fn setting(
    controller: &'static str,
    file: impl Into<String>,
    value: impl ToString,
) -> Setting {
    Setting {
        controller,
        file: file.into(),
        value: value.to_string(),
        optional: false,
    }
}

pub(super) fn optional(mut s: Setting) -> Setting {
    s.optional = true;
    s
}

/// Pushes one step for a pair where either may be absent.
pub(super) fn push_pair(steps: &mut Vec<Step>, a: Option<Setting>, b: Option<Setting>) {
    match (a, b) {
        (Some(a), Some(b)) => steps.push(Step::EitherOrder(a, b)),
        (Some(one), None) | (None, Some(one)) => steps.push(Step::One(one)),
        (None, None) => {}
    }
}

/// A non-zero value (CRI and OCI use 0 for "not set").
pub(super) fn set_i64(v: Option<i64>) -> Option<i64> {
    v.filter(|v| *v != 0)
}

pub(super) fn set_u64(v: Option<u64>) -> Option<u64> {
    v.filter(|v| *v != 0)
}

pub(super) fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

pub(super) fn push_cpuset(steps: &mut Vec<Step>, cpus: &Option<String>, mems: &Option<String>) {
    if let Some(cpus) = non_empty(cpus) {
        steps.push(Step::One(setting("cpuset", "cpuset.cpus", cpus)));
    }
    if let Some(mems) = non_empty(mems) {
        steps.push(Step::One(setting("cpuset", "cpuset.mems", mems)));
    }
}

pub(super) fn push_pids(steps: &mut Vec<Step>, r: &LinuxResources) {
    if let Some(pids) = r.pids() {
        let value = match pids.limit() {
            n if n > 0 => n.to_string(),
            _ => "max".to_string(),
        };
        steps.push(Step::One(setting("pids", "pids.max", value)));
    }
}

/// `hugetlb.<size>.<suffix>` for each limit, plus the reservation variant when present.
pub(super) fn push_hugetlb(
    steps: &mut Vec<Step>,
    r: &LinuxResources,
    suffix: &str,
) -> Result<(), String> {
    for limit in r.hugepage_limits().iter().flatten() {
        let size = limit.page_size();
        if !is_valid_page_size(size) {
            return Err(format!("invalid hugepage size {size:?}"));
        }
        let value = limit.limit().max(0);
        steps.push(Step::One(setting(
            "hugetlb",
            format!("hugetlb.{size}.{suffix}"),
            value,
        )));
        let rsvd = format!("hugetlb.{size}.rsvd.{suffix}");
        steps.push(Step::One(optional(setting("hugetlb", rsvd, value))));
    }
    Ok(())
}

/// A hugepage size as the kernel names it: digits then KB, MB or GB.
pub(super) fn is_valid_page_size(size: &str) -> bool {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &size[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "KB" | "MB" | "GB")
}

/// A unified key must name a file of this cgroup: `<controller>.<name>`, no `/` or `..`.
/// Returns the controller part.
pub(super) fn validate_unified_key(key: &str) -> Result<&'static str, String> {
    if key.is_empty() || key.contains('/') || key.contains("..") || key.contains('\0') {
        return Err(format!("invalid unified key {key:?}"));
    }
    let Some((controller, rest)) = key.split_once('.') else {
        return Err(format!(
            "invalid unified key {key:?}: expected <controller>.<file>"
        ));
    };
    if controller.is_empty() || rest.is_empty() {
        return Err(format!(
            "invalid unified key {key:?}: expected <controller>.<file>"
        ));
    }
    // `controller` only labels errors; keep a static name for the known ones.
    let known = V2_CONTROLLERS
        .iter()
        .chain(["cgroup", "misc", "rdma"].iter())
        .find(|c| **c == controller)
        .copied();
    Ok(known.unwrap_or("unified"))
}
