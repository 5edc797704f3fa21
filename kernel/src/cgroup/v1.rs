//! cgroup v1: an OCI `LinuxResources` as the v1 controllers' files.
//! Runs in cairnd (making cgroups, limits, stats) and cairn-shim (joining, killing, removing).

use super::*;

/// The cgroup v1 writes for a LinuxResources.
pub(super) fn plan_v1(r: &LinuxResources) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    if let Some(cpu) = r.cpu() {
        if let Some(shares) = set_u64(cpu.shares()) {
            steps.push(Step::One(setting("cpu", "cpu.shares", shares)));
        }
        let period = set_u64(cpu.period()).map(|p| setting("cpu", "cpu.cfs_period_us", p));
        let quota = set_i64(cpu.quota()).map(|q| setting("cpu", "cpu.cfs_quota_us", q.max(-1)));
        push_pair(&mut steps, period, quota);
        let rt_period =
            set_u64(cpu.realtime_period()).map(|p| setting("cpu", "cpu.rt_period_us", p));
        let rt_runtime =
            set_i64(cpu.realtime_runtime()).map(|q| setting("cpu", "cpu.rt_runtime_us", q.max(-1)));
        push_pair(&mut steps, rt_period, rt_runtime);
        if let Some(burst) = cpu.burst() {
            steps.push(Step::One(setting("cpu", "cpu.cfs_burst_us", burst)));
        }
        if let Some(idle) = cpu.idle() {
            steps.push(Step::One(setting("cpu", "cpu.idle", idle)));
        }
        push_cpuset(&mut steps, cpu.cpus(), cpu.mems());
    }
    if let Some(mem) = r.memory() {
        let limit = set_i64(mem.limit());
        let swap = set_i64(mem.swap());
        if let (Some(l), Some(s)) = (limit, swap) {
            if l > 0 && s > 0 && s < l {
                return Err(format!(
                    "memory+swap limit {s} is below the memory limit {l}"
                ));
            }
        }
        let limit = limit.map(|l| setting("memory", "memory.limit_in_bytes", l.max(-1)));
        let swap =
            swap.map(|s| optional(setting("memory", "memory.memsw.limit_in_bytes", s.max(-1))));
        push_pair(&mut steps, limit, swap);
        if let Some(reservation) = set_i64(mem.reservation()) {
            let value = reservation.max(-1);
            steps.push(Step::One(setting(
                "memory",
                "memory.soft_limit_in_bytes",
                value,
            )));
        }
        if let Some(swappiness) = mem.swappiness() {
            if swappiness > 100 {
                return Err(format!("swappiness {swappiness} is above 100"));
            }
            steps.push(Step::One(setting(
                "memory",
                "memory.swappiness",
                swappiness,
            )));
        }
        if mem.disable_oom_killer() == Some(true) {
            steps.push(Step::One(setting("memory", "memory.oom_control", 1)));
        }
    }
    push_pids(&mut steps, r);
    push_hugetlb(&mut steps, r, "limit_in_bytes")?;
    if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err("unified (cgroup v2) resources cannot be set on cgroup v1".to_string());
    }
    Ok(steps)
}
