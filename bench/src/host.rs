//! Host fixtures of a benchmark run, each undone on drop: the hugetlb v1 hierarchy crun
//! needs on this VM, the private cgroup parent of the pods, and the private CNI network
//! (conf dir, IPAM dir, bridge) that cairn and containerd share. Plus process memory
//! readers (RSS, PSS), and finding and killing processes by command line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_tests::net::Bridge;
use serde_json::json;

/// Where Debian's CNI plugins live.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";

/// Size limit of the tmpfs each runtime's `state` dir is on (only what is written uses
/// memory).
pub const STATE_TMPFS_SIZE: &str = "2g";

/// The file name of the network list in the private CNI conf dir.
const LIST_FILE: &str = "10-bench.conflist";

const HUGETLB: &str = "/sys/fs/cgroup/hugetlb";

/// How long [`HugetlbMount`]'s drop waits for removed cgroups of the hierarchy to be
/// released before unmounting it.
const HUGETLB_SETTLE: Duration = Duration::from_secs(5);

/// The hugetlb controller mounted as a v1 hierarchy, if this run mounted it.
///
/// Dropped after the run's [`CgroupParent`] (so our cgroups in it are gone), it unmounts
/// only what it mounted, and only when no cgroup is left in the hierarchy: cgroups someone
/// else made in it meanwhile (a cairnd started while it was mounted) would otherwise live on
/// in a hidden hierarchy nobody can reach. Then it stays mounted, with a warning.
pub struct HugetlbMount {
    mounted: bool,
    made_dir: bool,
}

impl HugetlbMount {
    /// Mounts the hugetlb hierarchy at /sys/fs/cgroup/hugetlb when this host has the hybrid
    /// layout crun needs it for and nothing is mounted there yet.
    pub fn ensure() -> Result<HugetlbMount> {
        let mut guard = HugetlbMount {
            mounted: false,
            made_dir: false,
        };
        let dir = Path::new(HUGETLB);
        if dir.join("cgroup.procs").exists() || !hugetlb_v1_possible() {
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

    /// Whether unmounting leaves nothing behind: no cgroup below the root, waiting up to
    /// [`HUGETLB_SETTLE`] for just-removed ones to be released by the kernel.
    fn safe_to_unmount(&self) -> bool {
        let others: Vec<PathBuf> = entries(Path::new(HUGETLB))
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        if !others.is_empty() {
            eprintln!(
                "warning: leaving {HUGETLB} mounted: cgroups were made in it meanwhile: {others:?}"
            );
            return false;
        }
        let deadline = Instant::now() + HUGETLB_SETTLE;
        while hierarchy_cgroups("hugetlb").is_some_and(|n| n > 1) {
            if Instant::now() >= deadline {
                eprintln!("warning: leaving {HUGETLB} mounted: removed cgroups still in use");
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for HugetlbMount {
    fn drop(&mut self) {
        if !self.mounted || !self.safe_to_unmount() {
            return;
        }
        if let Err(e) = run("umount", &[HUGETLB]) {
            eprintln!("warning: cannot unmount {HUGETLB}: {e:#}");
            return;
        }
        if self.made_dir {
            let _ = std::fs::remove_dir(HUGETLB);
        }
    }
}

/// Whether hugetlb may need a v1 hierarchy: the host has the hybrid layout (not cgroup v2
/// alone at /sys/fs/cgroup, where crun is content) and the kernel has the controller.
fn hugetlb_v1_possible() -> bool {
    !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        && hierarchy_cgroups("hugetlb").is_some()
}

/// The number of cgroups in `controller`'s hierarchy (`num_cgroups` of /proc/cgroups);
/// None when the kernel has no such controller.
fn hierarchy_cgroups(controller: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/cgroups").ok()?;
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(controller))?;
    line.split_whitespace().nth(2)?.parse().ok()
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
    /// Retries for up to 2 s: a cgroup is busy until the last process killed in it exits.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = self.dirs();
            for dir in &left {
                remove_cgroup_tree(dir);
            }
            let left = self.dirs();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                eprintln!("warning: cannot remove cgroups {left:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
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

/// Where libcni (containerd's CNI library) caches ADD results: `<network>-<id>-<ifname>`.
const LIBCNI_RESULTS: &str = "/var/lib/cni/results";

/// A private CNI network list (bridge + host-local on 10.125.x.0/24, then loopback) in its
/// own conf dir, with its IPAM data dir; the bridge and its veths are deleted on drop, and
/// so are the results containerd cached for pods of this network that it never tore down
/// (an interrupted run).
pub struct CniNet {
    dir: tempfile::TempDir,
    name: String,
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
            name: format!("cairn-bench-{}", std::process::id()),
            bridge: Bridge::new(),
        };
        std::fs::create_dir(net.conf_dir()).context("cannot create the CNI conf dir")?;
        let subnet = format!("10.125.{}.0/24", std::process::id() % 250);
        let list = json!({
            "cniVersion": "1.0.0",
            "name": net.name,
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
        let path = net.list_path();
        let text = serde_json::to_string_pretty(&list).context("cannot encode the CNI list")?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(net)
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// The network list file in [`CniNet::conf_dir`].
    pub fn list_path(&self) -> PathBuf {
        self.conf_dir().join(LIST_FILE)
    }
}

impl Drop for CniNet {
    /// Removes libcni's cached results of this network's pods, and of their loopback
    /// (go-cni's own `cni-loopback` network, same sandbox id).
    fn drop(&mut self) {
        let prefix = format!("{}-", self.name);
        for path in entries(Path::new(LIBCNI_RESULTS)) {
            let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(id) = file
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix("-eth0"))
            else {
                continue;
            };
            let _ = std::fs::remove_file(
                Path::new(LIBCNI_RESULTS).join(format!("cni-loopback-{id}-lo")),
            );
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Mounts a private tmpfs of `size` on `dir` (the owner of `dir` unmounts it).
pub fn mount_tmpfs(dir: &Path, size: &str) -> Result<()> {
    let dir = dir
        .to_str()
        .context("a tmpfs mount point that is not UTF-8")?;
    let options = format!("size={size},mode=0711");
    run("mount", &["-t", "tmpfs", "-o", &options, "tmpfs", dir])
        .with_context(|| format!("cannot mount a tmpfs on {dir}"))
}

/// "tmpfs" when `path` is on a tmpfs, else "disk" (or "?" when it cannot be told).
pub fn fs_kind(path: &Path) -> &'static str {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return "?";
    };
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a buffer of the right type to fill.
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return "?";
    }
    if buf.f_type as i64 == TMPFS_MAGIC {
        "tmpfs"
    } else {
        "disk"
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

/// Processes named `exe` whose command line names a watched marker (a daemon's state dir),
/// SIGKILLed with everything below them on drop: what a daemon that died first left.
pub struct Leftovers {
    exe: &'static str,
    markers: Vec<String>,
}

impl Leftovers {
    pub fn new(exe: &'static str) -> Leftovers {
        Leftovers {
            exe,
            markers: Vec::new(),
        }
    }

    pub fn watch(&mut self, marker: &Path) {
        self.markers.push(marker.display().to_string());
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for marker in &self.markers {
            kill_tree(&processes(self.exe, marker));
        }
    }
}

/// SIGKILLs `roots` and every process below them, then waits up to 3 s for them to go.
pub fn kill_tree(roots: &[i32]) {
    let mut all = roots.to_vec();
    all.extend(descendants(roots));
    for pid in &all {
        // SAFETY: kill(2) on pids the caller found by command line, or below them.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while all.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process runs (zombies do not count).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.to_string()))
        .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
}

/// Every process below `roots`.
fn descendants(roots: &[i32]) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = entries(Path::new("/proc"))
        .into_iter()
        .filter_map(|p| p.file_name()?.to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(") ")?;
            Some((pid, rest.split_whitespace().nth(1)?.parse().ok()?))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = roots.to_vec();
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
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
