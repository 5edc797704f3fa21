//! Cgroup statistics as the shim reports them: JSON in the Task API's
//! `StatsResponse.stats`.
//! Shared by cairnd and cairn-shim: the contract between them.

use serde::{Deserialize, Serialize};

/// Cgroup statistics as the shim reports them (JSON in `StatsResponse.stats`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct StatsJson {
    pub cpu_usage_ns: u64,
    pub memory_usage: u64,
    pub memory_working_set: u64,
    pub memory_rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub pids: u64,
}

impl From<&cairn_kernel::cgroup::CgroupStats> for StatsJson {
    fn from(s: &cairn_kernel::cgroup::CgroupStats) -> Self {
        StatsJson {
            cpu_usage_ns: s.cpu_usage_ns,
            memory_usage: s.memory_usage,
            memory_working_set: s.memory_working_set,
            memory_rss: s.memory_rss,
            page_faults: s.page_faults,
            major_page_faults: s.major_page_faults,
            pids: s.pids,
        }
    }
}
