//! cgroup v2: an OCI `LinuxResources` as the unified hierarchy's files, and the
//! controllers enabled down a subtree.
//! Runs in cairnd (making cgroups, limits, stats) and cairn-shim (joining, killing, removing).

use super::*;

/// The cgroup v2 writes for a LinuxResources; `unified` entries come last.
pub(super) fn plan_v2(r: &LinuxResources) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    if let Some(cpu) = r.cpu() {
        if let Some(weight) = set_u64(cpu.shares()).map(shares_to_weight) {
            steps.push(Step::One(setting("cpu", "cpu.weight", weight)));
        }
        if let Some(max) = v2_cpu_max(cpu.quota(), cpu.period()) {
            steps.push(Step::One(setting("cpu", "cpu.max", max)));
        }
        if let Some(burst) = cpu.burst() {
            steps.push(Step::One(setting("cpu", "cpu.max.burst", burst)));
        }
        if let Some(idle) = cpu.idle() {
            steps.push(Step::One(setting("cpu", "cpu.idle", idle)));
        }
        if set_u64(cpu.realtime_period()).is_some() || set_i64(cpu.realtime_runtime()).is_some() {
            return Err("realtime CPU limits are not supported on cgroup v2".to_string());
        }
        push_cpuset(&mut steps, cpu.cpus(), cpu.mems());
    }
    if let Some(mem) = r.memory() {
        let limit = set_i64(mem.limit());
        if let Some(l) = limit {
            steps.push(Step::One(setting("memory", "memory.max", v2_max(l))));
        }
        if let Some(swap) = v2_swap_max(limit, mem.swap())? {
            steps.push(Step::One(optional(setting(
                "memory",
                "memory.swap.max",
                swap,
            ))));
        }
        if let Some(reservation) = set_i64(mem.reservation()) {
            steps.push(Step::One(setting(
                "memory",
                "memory.low",
                v2_max(reservation),
            )));
        }
        if mem.swappiness().is_some() || mem.disable_oom_killer() == Some(true) {
            tracing::debug!(
                "swappiness and disable_oom_killer have no cgroup v2 equivalent, ignored"
            );
        }
    }
    push_pids(&mut steps, r);
    push_hugetlb(&mut steps, r, "max")?;
    if let Some(unified) = r.unified() {
        let mut keys: Vec<_> = unified.iter().collect();
        keys.sort();
        for (key, value) in keys {
            let controller = validate_unified_key(key)?;
            steps.push(Step::One(setting(controller, key.as_str(), value)));
        }
    }
    Ok(steps)
}

/// cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The v2 `cpu.max` line: `"<quota|max> <period>"`, or None when neither is set.
pub(super) fn v2_cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
    let quota = set_i64(quota);
    let period = set_u64(period);
    if quota.is_none() && period.is_none() {
        return None;
    }
    let period = period.unwrap_or(DEFAULT_CFS_PERIOD_US);
    match quota {
        Some(q) if q > 0 => Some(format!("{q} {period}")),
        _ => Some(format!("max {period}")),
    }
}

/// A v2 byte limit: negative means "max".
pub(super) fn v2_max(value: i64) -> String {
    if value < 0 {
        "max".to_string()
    } else {
        value.to_string()
    }
}

/// OCI's swap is memory+swap; v2's memory.swap.max is swap alone.
pub(super) fn v2_swap_max(limit: Option<i64>, swap: Option<i64>) -> Result<Option<String>, String> {
    let Some(swap) = set_i64(swap) else {
        return Ok(None);
    };
    if swap < 0 {
        return Ok(Some("max".to_string()));
    }
    match limit {
        None => Err(format!("a memory+swap limit ({swap}) needs a memory limit")),
        Some(l) if l < 0 => Err(format!(
            "a memory+swap limit ({swap}) needs a finite memory limit"
        )),
        Some(l) if swap < l => Err(format!(
            "memory+swap limit {swap} is below the memory limit {l}"
        )),
        Some(l) => Ok(Some((swap - l).to_string())),
    }
}

/// v2: whether every controller cairn uses that `dir` offers is on for its children.
pub(super) fn controllers_on(dir: &Path) -> bool {
    let read = |name: &str| read_opt(&dir.join(name)).ok().flatten();
    let (Some(available), Some(enabled)) =
        (read("cgroup.controllers"), read("cgroup.subtree_control"))
    else {
        return false;
    };
    let enabled: BTreeSet<&str> = enabled.split_whitespace().collect();
    available
        .split_whitespace()
        .filter(|c| V2_CONTROLLERS.contains(c))
        .all(|c| enabled.contains(c))
}

/// v2: whether `controller` is available to the cgroup at `dir` (listed in its
/// `cgroup.controllers`; an unreadable list counts as available, so the caller reports
/// the missing file).
pub(super) fn v2_controller_available(dir: &Path, controller: &str) -> bool {
    match read_opt(&dir.join("cgroup.controllers")) {
        Ok(Some(list)) => list.split_whitespace().any(|c| c == controller),
        _ => true,
    }
}

/// v2: enables the controllers cairn uses in `dir`'s `cgroup.subtree_control`, those
/// that `cgroup.controllers` offers and are not on yet. Failures are logged, not fatal:
/// a limit that then cannot be set fails in `apply` with the file named.
pub(super) fn enable_v2_controllers(dir: &Path) -> Result<()> {
    let Some(available) = read_opt(&dir.join("cgroup.controllers"))? else {
        return Ok(());
    };
    let control = dir.join("cgroup.subtree_control");
    let Some(enabled) = read_opt(&control)? else {
        return Ok(());
    };
    let available: BTreeSet<&str> = available.split_whitespace().collect();
    let enabled: BTreeSet<&str> = enabled.split_whitespace().collect();
    let wanted: Vec<&str> = V2_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| available.contains(c) && !enabled.contains(c))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let all = wanted
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    if write_file(&control, &all).is_ok() {
        return Ok(());
    }
    for controller in wanted {
        if let Err(err) = write_file(&control, &format!("+{controller}")) {
            tracing::warn!(%err, "cannot enable a cgroup v2 controller");
        }
    }
    Ok(())
}
