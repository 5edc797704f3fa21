//! Host fixtures of a benchmark run, each undone on drop: the hugetlb v1 hierarchy crun
//! needs on this VM, the private cgroup parent of the pods, and the private CNI network
//! (conf dir, IPAM dir, bridge) that cairn and containerd share. Plus process memory
//! readers (RSS, PSS) and finding processes by command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_tests::net::Bridge;
use serde_json::json;

/// Where Debian's CNI plugins live.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";

const HUGETLB: &str = "/sys/fs/cgroup/hugetlb";

/// The hugetlb controller mounted as a v1 hierarchy, if this run mounted it.
pub struct HugetlbMount {
    mounted: bool,
    made_dir: bool,
}

impl HugetlbMount {
    /// Mounts the hugetlb hierarchy at /sys/fs/cgroup/hugetlb unless something is there.
    pub fn ensure() -> Result<HugetlbMount> {
        let mut guard = HugetlbMount {
            mounted: false,
            made_dir: false,
        };
        let dir = Path::new(HUGETLB);
        if dir.join("cgroup.procs").exists() {
            return Ok(guard);
        }
        if !dir.exists() {
            std::fs::create_dir(dir).with_context(|| format!("cannot create {HUGETLB}"))?;
            guard.made_dir = true;
        }
        run(
            "mount",
            &["-t", "cgroup", "-o", "hugetlb", "cgroup", HUGETLB],
        )?;
        guard.mounted = true;
        Ok(guard)
    }
}

impl Drop for HugetlbMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = run("umount", &[HUGETLB]);
        }
        if self.made_dir {
            let _ = std::fs::remove_dir(HUGETLB);
        }
    }
}

/// A private cgroup parent (`/cairn-bench-<pid>`); on drop every cgroup left below it, in
/// every hierarchy under /sys/fs/cgroup, is removed deepest first, then the parent.
pub struct CgroupParent(pub String);

impl CgroupParent {
    pub fn new() -> CgroupParent {
        CgroupParent(format!("/cairn-bench-{}", std::process::id()))
    }

    /// The directories of this parent in every mounted hierarchy.
    fn dirs(&self) -> Vec<PathBuf> {
        entries(Path::new("/sys/fs/cgroup"))
            .into_iter()
            .map(|c| c.join(self.0.trim_start_matches('/')))
            .filter(|d| d.is_dir())
            .collect()
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for dir in self.dirs() {
            remove_cgroup_tree(&dir);
        }
    }
}

/// Removes a cgroup directory and its children (only directories: cgroupfs files vanish
/// with them).
fn remove_cgroup_tree(dir: &Path) {
    for child in entries(dir) {
        if child.is_dir() {
            remove_cgroup_tree(&child);
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The full paths of the entries of `dir` (empty if it cannot be read).
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// A private CNI network list (bridge + host-local on 10.125.x.0/24, then loopback) in its
/// own conf dir, with its IPAM data dir; the bridge and its veths are deleted on drop.
pub struct CniNet {
    dir: tempfile::TempDir,
    pub bridge: Bridge,
}

impl CniNet {
    pub fn new() -> Result<CniNet> {
        if !Path::new(CNI_PLUGINS).join("bridge").exists() {
            bail!("{CNI_PLUGINS}/bridge is missing: apt-get install containernetworking-plugins");
        }
        let dir = tempfile::Builder::new()
            .prefix("cairn-bench-cni-")
            .tempdir()
            .context("cannot create the CNI temp dir")?;
        let net = CniNet {
            dir,
            bridge: Bridge::new(),
        };
        std::fs::create_dir(net.conf_dir()).context("cannot create the CNI conf dir")?;
        let subnet = format!("10.125.{}.0/24", std::process::id() % 250);
        let list = json!({
            "cniVersion": "1.0.0",
            "name": format!("cairn-bench-{}", std::process::id()),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": net.bridge.name,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": subnet}]],
                        "dataDir": net.dir.path().join("ipam"),
                    }
                },
                {"type": "loopback"}
            ]
        });
        let path = net.conf_dir().join("10-bench.conflist");
        let text = serde_json::to_string_pretty(&list).context("cannot encode the CNI list")?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(net)
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }
}

/// Runs a command; fails with its stderr (the test harness's runner, output dropped).
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    cairn_tests::net::sh(program, args).map(drop)
}

/// The command line of a process, split at NULs.
fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Pids of processes whose executable name ends with `exe` and one of whose arguments
/// contains `marker` (a daemon's socket or state dir).
pub fn processes(exe: &str, marker: &str) -> Vec<i32> {
    entries(Path::new("/proc"))
        .into_iter()
        .filter_map(|p| p.file_name()?.to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let args = cmdline(pid);
            args.first().is_some_and(|a| a.ends_with(exe))
                && args.iter().skip(1).any(|a| a.contains(marker))
        })
        .collect()
}

/// A `kB` field of a /proc file (`VmRSS:` of status, `Pss:` of smaps_rollup), in kB.
fn kb_field(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident set size of a process in kB.
pub fn rss_kb(pid: i32) -> Option<u64> {
    kb_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Proportional set size of a process in kB.
pub fn pss_kb(pid: i32) -> Option<u64> {
    kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}
