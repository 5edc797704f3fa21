//! A cgroup's statistics (CPU, memory, pids, OOM kills), on v1 and v2.
//! Runs in cairnd (making cgroups, limits, stats) and cairn-shim (joining, killing, removing).

use super::*;

/// Resource statistics of one cgroup (its whole subtree, as the kernel counts them).
#[derive(Debug, Default, Clone)]
pub struct CgroupStats {
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub memory_usage: u64,
    /// usage - inactive_file, floored at 0, as kubelet/cadvisor compute it.
    pub memory_working_set: u64,
    /// v1 total_rss, v2 anon.
    pub memory_rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub pids: u64,
    /// None when unlimited.
    pub memory_limit: Option<u64>,
}

impl Cgroup {
    /// CPU, memory and pid statistics. Counters of controllers that are not available
    /// read as 0 (`pids` then counts the processes of the subtree).
    pub fn stats(&self) -> Result<CgroupStats> {
        if !self.exists() {
            return Err(self.not_found(&self.first_dir()));
        }
        let (mut stats, inactive_file) = match &self.layout {
            Layout::V1 { .. } => self.stats_v1()?,
            Layout::V2 { .. } => self.stats_v2()?,
        };
        stats.memory_working_set = stats.memory_usage.saturating_sub(inactive_file);
        Ok(stats)
    }

    /// The stats but the working set, and the inactive_file count to derive it from.
    fn stats_v1(&self) -> Result<(CgroupStats, u64)> {
        let mut st = CgroupStats::default();
        let mut inactive_file = 0;
        if let Some(dir) = self.controller_dir("cpuacct") {
            st.cpu_usage_ns = read_u64(&dir.join("cpuacct.usage"))?.unwrap_or(0);
            let user = read_u64(&dir.join("cpuacct.usage_user"))?;
            let sys = read_u64(&dir.join("cpuacct.usage_sys"))?;
            match (user, sys) {
                (Some(user), Some(sys)) => {
                    st.cpu_user_ns = user;
                    st.cpu_system_ns = sys;
                }
                _ => {
                    let keyed = read_keyed(&dir.join("cpuacct.stat"))?.unwrap_or_default();
                    let ns_per_tick = 1_000_000_000 / clock_ticks_per_second();
                    st.cpu_user_ns = keyed.get("user").copied().unwrap_or(0) * ns_per_tick;
                    st.cpu_system_ns = keyed.get("system").copied().unwrap_or(0) * ns_per_tick;
                }
            }
        }
        if let Some(dir) = self.controller_dir("memory") {
            st.memory_usage = read_u64(&dir.join("memory.usage_in_bytes"))?.unwrap_or(0);
            st.memory_limit = read_u64(&dir.join("memory.limit_in_bytes"))?
                .filter(|limit| *limit < V1_UNLIMITED_THRESHOLD);
            let keyed = read_keyed(&dir.join("memory.stat"))?.unwrap_or_default();
            let get = |key: &str| keyed.get(key).copied().unwrap_or(0);
            st.memory_rss = get("total_rss");
            st.page_faults = get("total_pgfault");
            st.major_page_faults = get("total_pgmajfault");
            inactive_file = get("total_inactive_file");
        }
        st.pids = self.pids_current()?;
        Ok((st, inactive_file))
    }

    fn stats_v2(&self) -> Result<(CgroupStats, u64)> {
        let mut st = CgroupStats::default();
        let Some(dir) = self.v2_dir() else {
            return Ok((st, 0));
        };
        let cpu = read_keyed(&dir.join("cpu.stat"))?.unwrap_or_default();
        let usec = |key: &str| cpu.get(key).copied().unwrap_or(0).saturating_mul(1000);
        st.cpu_usage_ns = usec("usage_usec");
        st.cpu_user_ns = usec("user_usec");
        st.cpu_system_ns = usec("system_usec");
        st.memory_usage = read_u64(&dir.join("memory.current"))?.unwrap_or(0);
        st.memory_limit = read_u64(&dir.join("memory.max"))?;
        let mem = read_keyed(&dir.join("memory.stat"))?.unwrap_or_default();
        let get = |key: &str| mem.get(key).copied().unwrap_or(0);
        st.memory_rss = get("anon");
        st.page_faults = get("pgfault");
        st.major_page_faults = get("pgmajfault");
        let inactive_file = get("inactive_file");
        st.pids = self.pids_current()?;
        Ok((st, inactive_file))
    }

    fn pids_current(&self) -> Result<u64> {
        if let Some(dir) = self.controller_dir("pids") {
            if let Some(n) = read_u64(&dir.join("pids.current"))? {
                return Ok(n);
            }
        }
        Ok(self.subtree_procs()?.len() as u64)
    }

    /// How many processes the kernel's OOM killer killed in this cgroup: v1
    /// `memory.oom_control`, v2 `memory.events`, line `oom_kill N`. 0 when the memory
    /// controller is not available.
    pub fn oom_kills(&self) -> Result<u64> {
        let file = match self.layout {
            Layout::V1 { .. } => "memory.oom_control",
            Layout::V2 { .. } => "memory.events",
        };
        let Some(dir) = self.controller_dir("memory") else {
            return Ok(0);
        };
        if !dir.is_dir() {
            return Err(self.not_found(&dir));
        }
        let keyed = read_keyed(&dir.join(file))?.unwrap_or_default();
        Ok(keyed.get("oom_kill").copied().unwrap_or(0))
    }
}
