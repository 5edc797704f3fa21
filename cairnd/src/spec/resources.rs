//! The container's cgroup limits from CRI resources (CPU shares and quota, cpuset, memory,
//! pids, hugepages, unified), checked, at creation and for UpdateContainerResources.
//! Runs in cairnd.

use super::*;

/// Smallest memory limit accepted (a container below this cannot even start).
pub const MIN_MEMORY_LIMIT: i64 = 4 << 20;

/// Allowed range of `cpu_period`, in microseconds.
pub(super) const CPU_PERIOD_RANGE: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;

pub(super) fn resources_of(config: &cri::ContainerConfig) -> Option<&cri::LinuxContainerResources> {
    config.linux.as_ref()?.resources.as_ref()
}

/// The cgroup resources of a running container's new limits (UpdateContainerResources),
/// validated as at creation.
pub fn update_resources(
    r: &cri::LinuxContainerResources,
    who: &str,
) -> Result<LinuxResources, SpecError> {
    let config = cri::ContainerConfig {
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(r.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut out = resources(&config, who)?;
    // Device rules belong to creation; an update only changes limits.
    out.set_devices(None);
    Ok(out)
}

/// Whether `s` is a cpuset list such as `0-3,5,7-8`.
pub(super) fn valid_cpuset(s: &str) -> bool {
    let number = |n: &str| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u32>().is_ok()
    };
    s.split(',').all(|item| match item.split_once('-') {
        Some((lo, hi)) => {
            number(lo) && number(hi) && lo.parse::<u32>().ok() <= hi.parse::<u32>().ok()
        }
        None => number(item),
    })
}

/// CPU and memory limits, validated.
pub(super) fn resources(
    config: &cri::ContainerConfig,
    who: &str,
) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResources::default();
    let Some(r) = resources_of(config) else {
        return Ok(out);
    };
    let field = |name: &str, msg: String| invalid(who, format!("resources.{name} {msg}"));

    let mut cpu = LinuxCpu::default();
    if r.cpu_shares < 0 {
        return Err(field("cpu_shares", format!("{} is negative", r.cpu_shares)));
    }
    if r.cpu_shares > 0 {
        cpu.set_shares(Some(r.cpu_shares as u64));
    }
    if r.cpu_quota < -1 {
        return Err(field("cpu_quota", format!("{} is negative", r.cpu_quota)));
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_period != 0 {
        if !CPU_PERIOD_RANGE.contains(&r.cpu_period) {
            return Err(field(
                "cpu_period",
                format!("{} out of range [1000, 1000000]", r.cpu_period),
            ));
        }
        cpu.set_period(Some(r.cpu_period as u64));
    }
    for (name, value) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        if !value.is_empty() && !valid_cpuset(value) {
            return Err(field(name, format!("{value:?} is not a valid cpu list")));
        }
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }

    let mut memory = LinuxMemory::default();
    let limit = r.memory_limit_in_bytes;
    if limit < -1 || (limit > 0 && limit < MIN_MEMORY_LIMIT) {
        return Err(field(
            "memory_limit_in_bytes",
            format!("{limit} is below the minimum of {MIN_MEMORY_LIMIT} bytes"),
        ));
    }
    if limit != 0 {
        memory.set_limit(Some(limit));
    }
    let swap = r.memory_swap_limit_in_bytes;
    if swap < -1 || (swap > 0 && limit > 0 && swap < limit) {
        return Err(field(
            "memory_swap_limit_in_bytes",
            format!("{swap} is below the memory limit {limit} (it counts memory + swap)"),
        ));
    }
    if swap != 0 {
        memory.set_swap(Some(swap));
    }
    if memory != LinuxMemory::default() {
        out.set_memory(Some(memory));
    }

    let mut hugepages = Vec::new();
    for h in &r.hugepage_limits {
        if h.page_size.is_empty() {
            return Err(field(
                "hugepage_limits",
                "has an empty page_size".to_string(),
            ));
        }
        let limit = i64::try_from(h.limit).map_err(|_| {
            field(
                "hugepage_limits",
                format!("{} limit {} too large", h.page_size, h.limit),
            )
        })?;
        let mut hp = LinuxHugepageLimit::default();
        hp.set_page_size(h.page_size.clone()).set_limit(limit);
        hugepages.push(hp);
    }
    if !hugepages.is_empty() {
        out.set_hugepage_limits(Some(hugepages));
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(r.unified.clone()));
    }
    Ok(out)
}
