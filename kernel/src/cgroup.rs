//! Cgroups for pods and containers with the cgroupfs driver.
//!
//! [`Layout`] says how the cgroup filesystems are mounted on this node: cgroup v1 (one
//! hierarchy per controller or group of controllers, possibly with an empty cgroup2 "unified"
//! mount next to them: the hybrid layout) or pure cgroup v2 (one tree at `/sys/fs/cgroup`).
//! [`Cgroup`] is one cgroup, named by its path relative to the hierarchy roots (the CRI
//! `cgroup_parent` plus a leaf), and does the work on it: create, apply an OCI
//! [`LinuxResources`], add processes, read statistics and OOM kills, kill everything
//! inside, delete. Nothing here execs another program: it is all reads and writes of
//! control files, `mkdir`, `rmdir` and `kill(2)`.
//!
//! The oom_score_adj helpers at the bottom clamp a container's wanted score to what this
//! process may set and write it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

/// Where cgroup filesystems live by convention (pure v2 when this is a cgroup2 mount).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The v1 controller names we recognise in the super options of a `cgroup` mount.
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "debug",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// The v2 controllers `create` enables in the ancestors of a new cgroup, when available.
const V2_CONTROLLERS: &[&str] = &["cpuset", "cpu", "io", "memory", "hugetlb", "pids"];

/// The CFS period the kernel uses when none is given (microseconds).
const DEFAULT_CFS_PERIOD_US: u64 = 100_000;

/// v1 reports "no memory limit" as a huge number (PAGE_COUNTER_MAX pages); anything at
/// or above this is taken as unlimited.
const V1_UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// How long `kill_all` keeps signalling before it gives up.
const KILL_TIMEOUT: Duration = Duration::from_secs(3);

/// How long `kill_all` waits for a v1 freezer to report FROZEN.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many times `delete` tries an `rmdir` that fails with EBUSY (sleeping 1, 2, 4... ms,
/// half a second in all).
const RMDIR_ATTEMPTS: u32 = 10;

/// Waits between polls of the kernel's state: short at first, since most waits here (a
/// freezer reaching FROZEN, killed processes leaving their cgroup) end within a
/// millisecond, then doubling up to `max`, so a long wait does not spin.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, max }
    }

    fn sleep(&mut self) {
        sleep(self.next);
        self.next = (self.next * 2).min(self.max);
    }
}

/// What went wrong; every message names the cgroup and, where there is one, the file.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup filesystem is mounted.
    #[error("no cgroup filesystem is mounted (according to {})", path.display())]
    NotMounted { path: PathBuf },
    /// The cgroup path given to [`Cgroup::new`] is not acceptable.
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// The cgroup directory does not exist (it was never created, or was deleted).
    #[error("cgroup {cgroup} does not exist ({} is missing)", path.display())]
    NotFound { cgroup: String, path: PathBuf },
    /// A local I/O error, with what we were doing and on which file.
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing a value to a control file failed.
    #[error("write {value:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    /// A control file held something we could not parse.
    #[error("parse {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    /// A limit's file is absent from a controller the cgroup has (a hugepage size the
    /// kernel does not support, say).
    #[error("cgroup {cgroup}: controller {controller} has no {file}: the kernel does not support this limit")]
    ControllerMissing {
        cgroup: String,
        controller: String,
        file: String,
    },
    /// The resources (or a pid) asked for make no sense.
    #[error("cgroup {cgroup}: {reason}")]
    Invalid { cgroup: String, reason: String },
    /// Processes survived `kill_all`.
    #[error("cgroup {cgroup}: processes {pids:?} still running after SIGKILL")]
    StillPopulated { cgroup: String, pids: Vec<i32> },
}

type Result<T, E = CgroupError> = std::result::Result<T, E>;

fn io_err(context: &'static str, path: &Path, source: io::Error) -> CgroupError {
    CgroupError::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------

/// How the cgroup filesystems are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1: controller name (`"cpu"`, `"memory"`, named hierarchies as
    /// `"name=systemd"`) to its hierarchy's mount point. Controllers mounted together
    /// (`cpu,cpuacct`) map to the same mount point. `unified` is the cgroup2 mount of a
    /// hybrid layout, if there is one; cairn does not place processes there.
    V1 {
        mounts: BTreeMap<String, PathBuf>,
        unified: Option<PathBuf>,
    },
    /// Pure cgroup v2: one tree rooted at `root`.
    V2 { root: PathBuf },
}

impl Layout {
    /// Reads /proc/self/mountinfo and works out the layout.
    pub fn detect() -> Result<Layout> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(|e| io_err("read", path, e))?;
        Self::detect_from(&text).map_err(|err| match err {
            CgroupError::NotMounted { .. } => CgroupError::NotMounted {
                path: path.to_path_buf(),
            },
            other => other,
        })
    }

    /// Works out the layout from the text of a mountinfo file: pure v2 when
    /// `/sys/fs/cgroup` itself is a cgroup2 mount; v1 (hybrid when a cgroup2 mount is
    /// also present) when any v1 hierarchy is mounted; otherwise v2 at the first cgroup2
    /// mount found.
    pub fn detect_from(mountinfo: &str) -> Result<Layout> {
        let mut mounts = BTreeMap::new();
        let mut v2_mounts = Vec::new();
        let mut root_is_v2 = false;
        for entry in mountinfo.lines().filter_map(crate::mountinfo::parse_line) {
            if entry.mount_point == Path::new(CGROUP_ROOT) {
                // A later mount on the same point hides the earlier one.
                root_is_v2 = entry.fstype == "cgroup2";
            }
            match entry.fstype.as_str() {
                "cgroup2" => v2_mounts.push(entry.mount_point),
                "cgroup" => {
                    for controller in v1_controllers(&entry.super_options) {
                        mounts
                            .entry(controller)
                            .or_insert_with(|| entry.mount_point.clone());
                    }
                }
                _ => {}
            }
        }
        if root_is_v2 {
            return Ok(Layout::V2 {
                root: PathBuf::from(CGROUP_ROOT),
            });
        }
        if !mounts.is_empty() {
            let unified = v2_mounts
                .iter()
                .find(|p| p.starts_with(CGROUP_ROOT))
                .or(v2_mounts.first())
                .cloned();
            return Ok(Layout::V1 { mounts, unified });
        }
        match v2_mounts.into_iter().next() {
            Some(root) => Ok(Layout::V2 { root }),
            None => Err(CgroupError::NotMounted {
                path: PathBuf::from("mountinfo"),
            }),
        }
    }

    /// True for pure cgroup v2 (false for v1 and hybrid).
    pub fn is_v2(&self) -> bool {
        matches!(self, Layout::V2 { .. })
    }

    /// True for a v1 layout with a cgroup2 mount next to it.
    pub fn is_hybrid(&self) -> bool {
        matches!(
            self,
            Layout::V1 {
                unified: Some(_),
                ..
            }
        )
    }

    /// The cgroup2 mount of a hybrid layout, or the root of a v2 one.
    pub fn unified(&self) -> Option<&Path> {
        match self {
            Layout::V1 { unified, .. } => unified.as_deref(),
            Layout::V2 { root } => Some(root),
        }
    }

    /// The mount point of a v1 controller's hierarchy (None on v2 or when not mounted).
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        match self {
            Layout::V1 { mounts, .. } => mounts.get(controller).map(PathBuf::as_path),
            Layout::V2 { .. } => None,
        }
    }

    /// Every distinct hierarchy root: one per v1 mount plus the hybrid layout's cgroup2
    /// mount (where device programs are attached), or the v2 root.
    fn hierarchy_roots(&self) -> Vec<PathBuf> {
        match self {
            Layout::V1 { mounts, unified } => mounts
                .values()
                .chain(unified.iter())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            Layout::V2 { root } => vec![root.clone()],
        }
    }
}

/// The controllers (and `name=` hierarchies) named in a v1 mount's super options.
fn v1_controllers(super_options: &str) -> Vec<String> {
    super_options
        .split(',')
        .filter(|opt| V1_CONTROLLERS.contains(opt) || opt.starts_with("name="))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Cgroup
// ---------------------------------------------------------------------------------------

/// A cgroup path relative to the hierarchy roots, e.g.
/// `kubepods/besteffort/pod<uid>/<container id>`, on a given [`Layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    layout: Layout,
    path: PathBuf,
    name: String,
}

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
    /// Names a cgroup; creates nothing. The path must be relative to the hierarchy roots
    /// (a single leading `/`, as kubelet's cgroupfs parents have, is accepted and means
    /// the same), with no empty, `.` or `..` components.
    pub fn new(layout: &Layout, path: &str) -> Result<Cgroup> {
        let relative = validate_path(path)?;
        Ok(Cgroup {
            layout: layout.clone(),
            path: PathBuf::from(relative),
            name: relative.to_string(),
        })
    }

    /// The cgroup `name` directly below this one (e.g. a container under its pod).
    pub fn child(&self, name: &str) -> Result<Cgroup> {
        if name.contains('/') {
            return Err(CgroupError::InvalidPath {
                path: name.to_string(),
                reason: "a child name must be a single component",
            });
        }
        Cgroup::new(&self.layout, &format!("{}/{}", self.name, name))
    }

    /// The path relative to the hierarchy roots.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The layout this cgroup lives on.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The directory to pass to clone3(CLONE_INTO_CGROUP) on v2 (None on v1).
    pub fn v2_dir(&self) -> Option<PathBuf> {
        match &self.layout {
            Layout::V2 { root } => Some(root.join(&self.path)),
            Layout::V1 { .. } => None,
        }
    }

    /// The cgroup's directory in the cgroup2 hierarchy, where the kernel runs the device
    /// programs of [`crate::devfilter`]: the v2 dir, or on a hybrid layout the dir in its
    /// (controller-less) cgroup2 mount. None on v1 without a cgroup2 mount.
    pub fn device_dir(&self) -> Option<PathBuf> {
        match &self.layout {
            Layout::V2 { root } => Some(root.join(&self.path)),
            Layout::V1 { unified, .. } => unified.as_ref().map(|u| u.join(&self.path)),
        }
    }

    /// True when the cgroup directory exists in at least one hierarchy.
    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.is_dir())
    }

    /// The cgroup's directory in every hierarchy. The hybrid layout's cgroup2 dir is left
    /// out when it could not be created (see [`Cgroup::create`]).
    fn dirs(&self) -> Vec<PathBuf> {
        let hybrid_dir = match &self.layout {
            Layout::V1 { unified, .. } => unified.as_ref().map(|u| u.join(&self.path)),
            Layout::V2 { .. } => None,
        };
        self.layout
            .hierarchy_roots()
            .into_iter()
            .map(|root| root.join(&self.path))
            .filter(|dir| hybrid_dir.as_ref() != Some(dir) || dir.is_dir())
            .collect()
    }

    /// The cgroup's directory in the hierarchy of a v1 controller (v2: the one dir).
    fn controller_dir(&self, controller: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1 { mounts, .. } => mounts.get(controller).map(|m| m.join(&self.path)),
            Layout::V2 { root } => Some(root.join(&self.path)),
        }
    }

    fn not_found(&self, path: &Path) -> CgroupError {
        CgroupError::NotFound {
            cgroup: self.name.clone(),
            path: path.to_path_buf(),
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> CgroupError {
        CgroupError::Invalid {
            cgroup: self.name.clone(),
            reason: reason.into(),
        }
    }

    // ---- create -------------------------------------------------------------------------

    /// Creates the cgroup (and its missing ancestors) in every hierarchy. On v1 an empty
    /// `cpuset.cpus`/`cpuset.mems` is filled from the parent at every level; on v2 the
    /// controllers cairn uses are enabled in `cgroup.subtree_control` of each ancestor
    /// where they are available (the rest are skipped). On a hybrid layout the cgroup is
    /// made in the cgroup2 mount too, for device programs; failing that is only logged.
    pub fn create(&self) -> Result<()> {
        match &self.layout {
            Layout::V1 { mounts, unified } => {
                let cpuset_root = mounts.get("cpuset");
                for root in self.layout.hierarchy_roots() {
                    let is_cpuset = cpuset_root == Some(&root);
                    let created = self.create_v1_in(&root, is_cpuset);
                    match created {
                        Err(err) if unified.as_ref() == Some(&root) => {
                            tracing::warn!(cgroup = %self.name, %err, "cannot create the cgroup in the hybrid cgroup2 hierarchy; no device program for it");
                        }
                        other => other?,
                    }
                }
                Ok(())
            }
            Layout::V2 { root } => self.create_v2(root),
        }
    }

    fn create_v1_in(&self, root: &Path, is_cpuset: bool) -> Result<()> {
        // Most often only the leaf is missing: one mkdir, not one per level.
        let leaf = root.join(&self.path);
        if let (Some(parent), Ok(())) = (leaf.parent(), fs::create_dir(&leaf)) {
            if is_cpuset {
                inherit_cpuset(parent, &leaf)?;
            }
            return Ok(());
        }
        let mut dir = root.to_path_buf();
        for component in self.path.iter() {
            let parent = dir.clone();
            dir.push(component);
            make_dir(&dir)?;
            if is_cpuset {
                inherit_cpuset(&parent, &dir)?;
            }
        }
        Ok(())
    }

    fn create_v2(&self, root: &Path) -> Result<()> {
        // Most often the parent exists with every controller cairn uses on: one mkdir.
        let leaf = root.join(&self.path);
        if leaf.parent().is_some_and(controllers_on) && fs::create_dir(&leaf).is_ok() {
            return Ok(());
        }
        let mut dir = root.to_path_buf();
        for component in self.path.iter() {
            enable_v2_controllers(&dir)?;
            dir.push(component);
            make_dir(&dir)?;
        }
        Ok(())
    }

    // ---- apply --------------------------------------------------------------------------

    /// Writes the limits of an OCI `LinuxResources` into the cgroup's control files.
    /// Used both at creation and for UpdateContainerResources. Devices, block I/O,
    /// network and RDMA settings are not handled here.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        let steps = match &self.layout {
            Layout::V1 { .. } => plan_v1(r).map_err(|reason| self.invalid(reason))?,
            Layout::V2 { .. } => plan_v2(r).map_err(|reason| self.invalid(reason))?,
        };
        if r.devices().as_ref().is_some_and(|d| !d.is_empty()) || r.block_io().is_some() {
            tracing::debug!(cgroup = %self.name, "device and block I/O cgroup settings are not applied");
        }
        for step in &steps {
            self.run_step(step)?;
        }
        Ok(())
    }

    fn run_step(&self, step: &Step) -> Result<()> {
        match step {
            Step::One(setting) => self.write_setting(setting),
            Step::EitherOrder(a, b) => {
                let first = match self.write_setting(a) {
                    Ok(()) => return self.write_setting(b),
                    Err(err) => err,
                };
                // The kernel refuses some intermediate states (memory above memory+swap,
                // ...): try the other order before giving up with the first error.
                if self.write_setting(b).is_err() {
                    return Err(first);
                }
                self.write_setting(a)
            }
        }
    }

    /// Where a setting goes. None when the node lacks its controller (no v1 hierarchy, or
    /// not available to this cgroup2 dir): as runc does, such a limit is skipped with a
    /// debug line, since kubelet sends some (hugetlb) for every container whatever the
    /// node has. None too when the file is absent and the setting is optional. A file
    /// absent from a controller the node has (a hugepage size the kernel lacks) is an
    /// error, as is a value the kernel refuses.
    fn setting_path(&self, s: &Setting) -> Result<Option<PathBuf>> {
        let Some(dir) = self.controller_dir(s.controller) else {
            return Ok(self.skip_missing_controller(s));
        };
        if !dir.is_dir() {
            return Err(self.not_found(&dir));
        }
        let path = dir.join(&s.file);
        if path.exists() {
            return Ok(Some(path));
        }
        if s.optional {
            tracing::debug!(cgroup = %self.name, file = %s.file, "optional cgroup file absent, skipped");
            return Ok(None);
        }
        if matches!(self.layout, Layout::V2 { .. }) && !v2_controller_available(&dir, s.controller)
        {
            return Ok(self.skip_missing_controller(s));
        }
        Err(CgroupError::ControllerMissing {
            cgroup: self.name.clone(),
            controller: s.controller.to_string(),
            file: s.file.clone(),
        })
    }

    fn skip_missing_controller(&self, s: &Setting) -> Option<PathBuf> {
        tracing::debug!(
            cgroup = %self.name,
            controller = s.controller,
            file = %s.file,
            "the node has no such cgroup controller: limit skipped"
        );
        None
    }

    fn write_setting(&self, s: &Setting) -> Result<()> {
        match self.setting_path(s)? {
            Some(path) => write_file(&path, &s.value),
            None => Ok(()),
        }
    }

    // ---- processes ----------------------------------------------------------------------

    /// The directory of this cgroup in every hierarchy, for a launcher that puts the new
    /// process into the cgroup itself.
    pub fn join_dirs(&self) -> Vec<PathBuf> {
        self.dirs()
    }

    /// Moves a process into the cgroup (its `cgroup.procs` in every hierarchy).
    pub fn add_process(&self, pid: i32) -> Result<()> {
        if pid <= 0 {
            return Err(self.invalid(format!("refusing to add pid {pid}")));
        }
        for dir in self.dirs() {
            if !dir.is_dir() {
                return Err(self.not_found(&dir));
            }
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes directly in this cgroup (not its children), sorted. On v1 the
    /// union over all hierarchies.
    pub fn procs(&self) -> Result<Vec<i32>> {
        let mut all = BTreeSet::new();
        let mut found = false;
        for dir in self.dirs() {
            let Some(pids) = read_procs(&dir.join("cgroup.procs"))? else {
                continue;
            };
            found = true;
            all.extend(pids);
        }
        if !found {
            return Err(self.not_found(&self.first_dir()));
        }
        Ok(all.into_iter().collect())
    }

    /// The processes in this cgroup and every cgroup below it, in every hierarchy.
    fn subtree_procs(&self) -> Result<Vec<i32>> {
        let mut all = BTreeSet::new();
        for dir in self.dirs() {
            collect_subtree_procs(&dir, &mut all)?;
        }
        Ok(all.into_iter().collect())
    }

    fn first_dir(&self) -> PathBuf {
        self.dirs()
            .into_iter()
            .next()
            .unwrap_or_else(|| self.path.clone())
    }

    // ---- statistics ---------------------------------------------------------------------

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

    // ---- kill and delete ----------------------------------------------------------------

    /// Kills every process in the cgroup and below it, and waits (bounded) until they are
    /// gone. v2 uses `cgroup.kill` when the kernel has it; otherwise each pid gets
    /// SIGKILL until none is left (on v1 with the cgroup frozen first, so nothing forks
    /// in between). Never signals this process itself. A missing cgroup is fine.
    pub fn kill_all(&self) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        if let Some(dir) = self.v2_dir() {
            let kill_file = dir.join("cgroup.kill");
            if kill_file.exists() {
                write_file(&kill_file, "1")?;
            }
            return self.signal_until_empty();
        }
        if let Err(err) = self.kill_frozen_v1() {
            tracing::warn!(cgroup = %self.name, %err, "freezer not usable, killing unfrozen");
        }
        self.signal_until_empty()
    }

    /// v1: freeze, SIGKILL everyone, thaw (frozen tasks only die once thawed).
    fn kill_frozen_v1(&self) -> Result<()> {
        let Some(dir) = self.controller_dir("freezer").filter(|d| d.is_dir()) else {
            return Ok(());
        };
        let state = dir.join("freezer.state");
        if !state.exists() {
            return Ok(());
        }
        write_file(&state, "FROZEN")?;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        let mut backoff = Backoff::new(Duration::from_micros(50), Duration::from_millis(5));
        while Instant::now() < deadline {
            if read_opt(&state)?.is_some_and(|s| s.trim() == "FROZEN") {
                break;
            }
            backoff.sleep();
        }
        let signalled = self.subtree_procs().map(|pids| signal_all(&pids));
        let thawed = write_file(&state, "THAWED");
        signalled?;
        thawed
    }

    /// Sends SIGKILL to every process of the subtree until there is none, or the time is up.
    fn signal_until_empty(&self) -> Result<()> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        let mut backoff = Backoff::new(Duration::from_micros(100), Duration::from_millis(10));
        loop {
            let pids = self.subtree_procs()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::StillPopulated {
                    cgroup: self.name.clone(),
                    pids,
                });
            }
            signal_all(&pids);
            backoff.sleep();
        }
    }

    /// Removes the cgroup in every hierarchy, cgroups below it first. An `rmdir` that
    /// fails with EBUSY is retried a few times; a cgroup that is already gone is fine.
    pub fn delete(&self) -> Result<()> {
        for dir in self.dirs() {
            remove_tree(&dir)?;
        }
        Ok(())
    }
}

/// Checks a cgroup path and returns it without its leading `/`.
fn validate_path(path: &str) -> Result<&str> {
    let invalid = |reason| CgroupError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    let relative = path.strip_prefix('/').unwrap_or(path);
    if relative.is_empty() {
        return Err(invalid("the hierarchy root cannot be managed"));
    }
    if relative.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    for component in relative.split('/') {
        match component {
            "" => return Err(invalid("empty component (absolute path or `//`)")),
            "." | ".." => return Err(invalid("`.` and `..` are not allowed")),
            _ => {}
        }
    }
    Ok(relative)
}

// ---------------------------------------------------------------------------------------
// Resource plans: what to write where, independent of the filesystem
// ---------------------------------------------------------------------------------------

/// One control-file write.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    /// The controller (v1: which hierarchy) the file belongs to.
    controller: &'static str,
    file: String,
    value: String,
    /// Skip silently when the file or hierarchy is absent.
    optional: bool,
}

/// A write, or two writes that the kernel may accept in only one order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    One(Setting),
    EitherOrder(Setting, Setting),
}

fn setting(controller: &'static str, file: impl Into<String>, value: impl ToString) -> Setting {
    Setting {
        controller,
        file: file.into(),
        value: value.to_string(),
        optional: false,
    }
}

fn optional(mut s: Setting) -> Setting {
    s.optional = true;
    s
}

/// Pushes one step for a pair where either may be absent.
fn push_pair(steps: &mut Vec<Step>, a: Option<Setting>, b: Option<Setting>) {
    match (a, b) {
        (Some(a), Some(b)) => steps.push(Step::EitherOrder(a, b)),
        (Some(one), None) | (None, Some(one)) => steps.push(Step::One(one)),
        (None, None) => {}
    }
}

/// A non-zero value (CRI and OCI use 0 for "not set").
fn set_i64(v: Option<i64>) -> Option<i64> {
    v.filter(|v| *v != 0)
}

fn set_u64(v: Option<u64>) -> Option<u64> {
    v.filter(|v| *v != 0)
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The cgroup v1 writes for a LinuxResources.
fn plan_v1(r: &LinuxResources) -> Result<Vec<Step>, String> {
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

/// The cgroup v2 writes for a LinuxResources; `unified` entries come last.
fn plan_v2(r: &LinuxResources) -> Result<Vec<Step>, String> {
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

fn push_cpuset(steps: &mut Vec<Step>, cpus: &Option<String>, mems: &Option<String>) {
    if let Some(cpus) = non_empty(cpus) {
        steps.push(Step::One(setting("cpuset", "cpuset.cpus", cpus)));
    }
    if let Some(mems) = non_empty(mems) {
        steps.push(Step::One(setting("cpuset", "cpuset.mems", mems)));
    }
}

fn push_pids(steps: &mut Vec<Step>, r: &LinuxResources) {
    if let Some(pids) = r.pids() {
        let value = match pids.limit() {
            n if n > 0 => n.to_string(),
            _ => "max".to_string(),
        };
        steps.push(Step::One(setting("pids", "pids.max", value)));
    }
}

/// `hugetlb.<size>.<suffix>` for each limit, plus the reservation variant when present.
fn push_hugetlb(steps: &mut Vec<Step>, r: &LinuxResources, suffix: &str) -> Result<(), String> {
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
fn is_valid_page_size(size: &str) -> bool {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &size[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "KB" | "MB" | "GB")
}

/// A unified key must name a file of this cgroup: `<controller>.<name>`, no `/` or `..`.
/// Returns the controller part.
fn validate_unified_key(key: &str) -> Result<&'static str, String> {
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

/// cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The v2 `cpu.max` line: `"<quota|max> <period>"`, or None when neither is set.
fn v2_cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
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
fn v2_max(value: i64) -> String {
    if value < 0 {
        "max".to_string()
    } else {
        value.to_string()
    }
}

/// OCI's swap is memory+swap; v2's memory.swap.max is swap alone.
fn v2_swap_max(limit: Option<i64>, swap: Option<i64>) -> Result<Option<String>, String> {
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

// ---------------------------------------------------------------------------------------
// Filesystem helpers
// ---------------------------------------------------------------------------------------

/// Writes a control file in one write(2); the file must exist.
fn write_file(path: &Path, value: &str) -> Result<()> {
    use std::io::Write as _;
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)?;
        file.write_all(value.as_bytes())
    };
    write().map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// Reads a file; None when it does not exist.
fn read_opt(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path, e)),
    }
}

/// Reads a one-number file; "max" reads as None, as does a missing file.
fn read_u64(path: &Path) -> Result<Option<u64>> {
    let Some(text) = read_opt(path)? else {
        return Ok(None);
    };
    let text = text.trim();
    if text == "max" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        reason: format!("expected a number, found {text:?}"),
    })
}

/// Reads a flat keyed file (`key value` lines); None when it does not exist.
fn read_keyed(path: &Path) -> Result<Option<BTreeMap<String, u64>>> {
    Ok(read_opt(path)?.map(|text| parse_keyed(&text)))
}

/// Parses `key value` lines, skipping any line that is not a key and a u64.
fn parse_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let key = fields.next()?;
            let value = fields.next()?.parse().ok()?;
            Some((key.to_string(), value))
        })
        .collect()
}

/// Reads a `cgroup.procs` file; None when it does not exist.
fn read_procs(path: &Path) -> Result<Option<Vec<i32>>> {
    let Some(text) = read_opt(path)? else {
        return Ok(None);
    };
    let mut pids = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let pid = line.parse().map_err(|_| CgroupError::Parse {
            path: path.to_path_buf(),
            reason: format!("expected a pid, found {line:?}"),
        })?;
        pids.push(pid);
    }
    Ok(Some(pids))
}

/// Adds the pids of `dir` and every cgroup below it.
fn collect_subtree_procs(dir: &Path, out: &mut BTreeSet<i32>) -> Result<()> {
    let Some(pids) = read_procs(&dir.join("cgroup.procs"))? else {
        return Ok(());
    };
    out.extend(pids);
    for child in child_dirs(dir)? {
        collect_subtree_procs(&child, out)?;
    }
    Ok(())
}

/// The subdirectories (child cgroups) of a cgroup directory; none if it is gone.
fn child_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir, e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err("list", dir, e))?;
        let file_type = entry
            .file_type()
            .map_err(|e| io_err("stat", &entry.path(), e))?;
        if file_type.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// `mkdir`, where an existing directory is fine.
fn make_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io_err("create cgroup", dir, e)),
    }
}

/// v1 cpuset: a new cgroup starts with empty cpus/mems and refuses tasks until they are
/// set; copy them from the parent.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = read_opt(&dir.join(file))?.unwrap_or_default();
        if !own.trim().is_empty() {
            continue;
        }
        let from = parent.join(file);
        let inherited = read_opt(&from)?.unwrap_or_default();
        let inherited = inherited.trim();
        if inherited.is_empty() {
            return Err(CgroupError::Parse {
                path: from,
                reason: "empty, nothing to inherit".to_string(),
            });
        }
        write_file(&dir.join(file), inherited)?;
    }
    Ok(())
}

/// v2: whether every controller cairn uses that `dir` offers is on for its children.
fn controllers_on(dir: &Path) -> bool {
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
fn v2_controller_available(dir: &Path, controller: &str) -> bool {
    match read_opt(&dir.join("cgroup.controllers")) {
        Ok(Some(list)) => list.split_whitespace().any(|c| c == controller),
        _ => true,
    }
}

/// v2: enables the controllers cairn uses in `dir`'s `cgroup.subtree_control`, those
/// that `cgroup.controllers` offers and are not on yet. Failures are logged, not fatal:
/// a limit that then cannot be set fails in `apply` with the file named.
fn enable_v2_controllers(dir: &Path) -> Result<()> {
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

/// Removes a cgroup directory, the cgroups below it first.
fn remove_tree(dir: &Path) -> Result<()> {
    for child in child_dirs(dir)? {
        remove_tree(&child)?;
    }
    remove_dir_retrying(dir)
}

/// `rmdir` with a few retries on EBUSY (processes that are still exiting); gone is fine.
fn remove_dir_retrying(dir: &Path) -> Result<()> {
    let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(256));
    for attempt in 1..=RMDIR_ATTEMPTS {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < RMDIR_ATTEMPTS => {
                backoff.sleep();
            }
            Err(e) => return Err(io_err("remove cgroup", dir, e)),
        }
    }
    Ok(())
}

/// SIGKILL to each pid; never to this process or a non-positive pid.
fn signal_all(pids: &[i32]) {
    let me = std::process::id() as i32;
    for &pid in pids.iter().filter(|p| **p > 0 && **p != me) {
        if let Err(err) = kill(Pid::from_raw(pid), Signal::SIGKILL) {
            if err != nix::errno::Errno::ESRCH {
                tracing::warn!(pid, %err, "cannot kill a process of a cgroup");
            }
        }
    }
}

/// USER_HZ, the unit of v1 `cpuacct.stat`.
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

// ---------------------------------------------------------------------------------------
// oom_score_adj
// ---------------------------------------------------------------------------------------

/// CAP_SYS_RESOURCE, needed to lower an oom_score_adj below one's own.
const CAP_SYS_RESOURCE: u32 = 24;

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

fn own_oom_score_adj() -> Option<i32> {
    fs::read_to_string("/proc/self/oom_score_adj")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn has_cap_sys_resource() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| cap_eff(&status))
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// The CapEff mask of a /proc/<pid>/status text.
fn cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
        LinuxResourcesBuilder,
    };
    use std::collections::HashMap;
    use std::io::Write as _;
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MIB: i64 = 1 << 20;

    /// This machine's cgroup mounts (hybrid: v1 hierarchies plus an empty cgroup2).
    const HYBRID: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A systemd node on pure cgroup v2.
    const PURE_V2: &str = "\
21 26 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 21 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
31 21 0:27 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
";

    /// An older v1-only node with co-mounted controllers.
    const V1_ONLY: &str = "\
24 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 24 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
29 24 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
30 24 0:28 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,net_cls,net_prio
31 24 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
32 24 0:30 / /sys/fs/cgroup/hugetlb rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,hugetlb
33 24 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
";

    static NEXT: AtomicUsize = AtomicUsize::new(0);

    fn unique_name() -> String {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        format!("cairn-test-{}-{n}", std::process::id())
    }

    /// Kills the test's processes and deletes its cgroup, also when the test fails.
    struct Guard {
        cgroup: Cgroup,
        children: Vec<Child>,
    }

    impl Guard {
        fn new(cgroup: &Cgroup) -> Guard {
            Guard {
                cgroup: cgroup.clone(),
                children: Vec::new(),
            }
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            for child in &mut self.children {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = self.cgroup.kill_all();
            if let Err(err) = self.cgroup.delete() {
                eprintln!("cleanup: {err}");
            }
        }
    }

    /// Disables again the controllers a test enabled in a v2 root's subtree_control.
    struct SubtreeRestore {
        control: PathBuf,
        before: BTreeSet<String>,
    }

    impl SubtreeRestore {
        fn new(root: &Path) -> SubtreeRestore {
            let control = root.join("cgroup.subtree_control");
            let before = words(&fs::read_to_string(&control).unwrap_or_default());
            SubtreeRestore { control, before }
        }
    }

    impl Drop for SubtreeRestore {
        fn drop(&mut self) {
            let now = words(&fs::read_to_string(&self.control).unwrap_or_default());
            for added in now.difference(&self.before) {
                let _ = fs::write(&self.control, format!("-{added}"));
            }
        }
    }

    fn words(text: &str) -> BTreeSet<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    /// Starts `script` under busybox sh, held at a `read` until [`release`], so that it
    /// can be put into a cgroup before it allocates or forks anything.
    fn spawn_held(script: &str) -> Child {
        Command::new("/bin/busybox")
            .args(["sh", "-c", &format!("read go; {script}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn release(child: &mut Child) {
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// This machine's layout when it is v1 (or hybrid) with the hierarchies the tests use.
    fn v1_layout() -> Layout {
        let layout = Layout::detect().expect("a cgroup filesystem is mounted");
        let needed = ["cpu", "cpuacct", "cpuset", "memory", "pids", "freezer"];
        let ok = is_root() && needed.iter().all(|c| layout.v1_mount(c).is_some());
        assert!(
            ok,
            "this test needs root and the cgroup v1 hierarchies {needed:?} (a v1 or hybrid host)"
        );
        layout
    }

    fn read_trimmed(path: &Path) -> String {
        fs::read_to_string(path).unwrap().trim().to_string()
    }

    fn assert_gone(cgroup: &Cgroup) {
        for dir in cgroup.dirs() {
            assert!(!dir.exists(), "{} was left behind", dir.display());
        }
    }

    fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(value) = probe() {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            sleep(Duration::from_millis(20));
        }
    }

    // ---- layout -------------------------------------------------------------------------

    #[test]
    fn detects_this_machines_hybrid_layout() {
        let layout = Layout::detect_from(HYBRID).unwrap();
        assert!(!layout.is_v2());
        assert!(layout.is_hybrid());
        assert_eq!(layout.unified(), Some(Path::new("/sys/fs/cgroup/unified")));
        let Layout::V1 { mounts, .. } = &layout else {
            panic!("expected v1, got {layout:?}");
        };
        let names: Vec<&str> = mounts.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "blkio",
                "cpu",
                "cpuacct",
                "cpuset",
                "devices",
                "freezer",
                "memory",
                "name=systemd",
                "pids"
            ]
        );
        assert_eq!(
            layout.v1_mount("cpu"),
            Some(Path::new("/sys/fs/cgroup/cpu"))
        );
        assert_eq!(layout.v1_mount("hugetlb"), None);
        // Nine v1 hierarchies and the cgroup2 one.
        assert_eq!(layout.hierarchy_roots().len(), 10);
    }

    #[test]
    fn detects_pure_v2() {
        let layout = Layout::detect_from(PURE_V2).unwrap();
        assert_eq!(
            layout,
            Layout::V2 {
                root: PathBuf::from("/sys/fs/cgroup")
            }
        );
        assert!(layout.is_v2());
        assert!(!layout.is_hybrid());
    }

    #[test]
    fn detects_v1_only_with_comounted_controllers() {
        let layout = Layout::detect_from(V1_ONLY).unwrap();
        assert!(!layout.is_v2());
        assert!(!layout.is_hybrid());
        let comounted = Path::new("/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(layout.v1_mount("cpu"), Some(comounted));
        assert_eq!(layout.v1_mount("cpuacct"), Some(comounted));
        assert_eq!(
            layout.v1_mount("net_prio"),
            Some(Path::new("/sys/fs/cgroup/net_cls,net_prio"))
        );
        assert_eq!(
            layout.v1_mount("name=systemd"),
            Some(Path::new("/sys/fs/cgroup/systemd"))
        );
        // Six distinct hierarchies; "xattr" and "rw" are not controllers.
        assert_eq!(layout.hierarchy_roots().len(), 6);
        assert!(layout.v1_mount("xattr").is_none());
    }

    #[test]
    fn detect_edge_cases() {
        assert!(matches!(
            Layout::detect_from("27 1 254:0 / / rw - ext4 /dev/vda rw\n"),
            Err(CgroupError::NotMounted { .. })
        ));
        // cgroup2 somewhere else and no v1: v2 rooted there.
        let elsewhere = "41 31 0:38 / /run/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Layout::detect_from(elsewhere).unwrap(),
            Layout::V2 {
                root: PathBuf::from("/run/my cgroup")
            }
        );
        // /sys/fs/cgroup overmounted by cgroup2 after a tmpfs: the last mount wins.
        let over = format!("{HYBRID}50 23 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        assert!(Layout::detect_from(&over).unwrap().is_v2());
        assert!(Layout::detect().is_ok());
    }

    // ---- paths and plans ----------------------------------------------------------------

    #[test]
    fn cgroup_paths_are_validated() {
        let layout = Layout::detect_from(PURE_V2).unwrap();
        let ok = Cgroup::new(&layout, "kubepods/besteffort/pod1/abc").unwrap();
        assert_eq!(ok.path(), Path::new("kubepods/besteffort/pod1/abc"));
        assert_eq!(
            ok.v2_dir(),
            Some(PathBuf::from("/sys/fs/cgroup/kubepods/besteffort/pod1/abc"))
        );
        // kubelet's cgroupfs parents start with '/': same place.
        let slash = Cgroup::new(&layout, "/kubepods/pod1").unwrap();
        assert_eq!(slash.path(), Path::new("kubepods/pod1"));
        assert_eq!(
            slash.child("c1").unwrap().path(),
            Path::new("kubepods/pod1/c1")
        );
        for bad in [
            "", "/", "//etc", "a//b", "a/", "../x", "a/../b", "a/./b", "a\0b",
        ] {
            assert!(
                matches!(
                    Cgroup::new(&layout, bad),
                    Err(CgroupError::InvalidPath { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(slash.child("a/b").is_err());
        assert!(slash.child("..").is_err());
        let v1 = Layout::detect_from(HYBRID).unwrap();
        assert_eq!(Cgroup::new(&v1, "x").unwrap().v2_dir(), None);
    }

    #[test]
    fn shares_convert_to_weight() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1), 1);
        assert_eq!(shares_to_weight(512), 20);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1 << 40), 10_000);
    }

    #[test]
    fn v2_cpu_max_and_swap_values() {
        assert_eq!(v2_cpu_max(None, None), None);
        assert_eq!(v2_cpu_max(Some(0), Some(0)), None);
        assert_eq!(
            v2_cpu_max(Some(50_000), Some(100_000)).unwrap(),
            "50000 100000"
        );
        assert_eq!(v2_cpu_max(Some(-1), Some(100_000)).unwrap(), "max 100000");
        assert_eq!(v2_cpu_max(Some(20_000), None).unwrap(), "20000 100000");
        assert_eq!(v2_cpu_max(None, Some(50_000)).unwrap(), "max 50000");

        assert_eq!(v2_swap_max(Some(64), None).unwrap(), None);
        assert_eq!(v2_swap_max(Some(64), Some(0)).unwrap(), None);
        assert_eq!(v2_swap_max(Some(64), Some(-1)).unwrap().unwrap(), "max");
        assert_eq!(v2_swap_max(Some(64), Some(64)).unwrap().unwrap(), "0");
        assert_eq!(v2_swap_max(Some(64), Some(100)).unwrap().unwrap(), "36");
        assert!(v2_swap_max(Some(64), Some(32)).is_err());
        assert!(v2_swap_max(None, Some(32)).is_err());
        assert!(v2_swap_max(Some(-1), Some(32)).is_err());
    }

    #[test]
    fn v1_plan_orders_pairs_and_rejects_unified() {
        let r = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(-1i64)
                    .period(100_000u64)
                    .build()
                    .unwrap(),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 * MIB)
                    .swap(128 * MIB)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(0i64).build().unwrap())
            .build()
            .unwrap();
        let steps = plan_v1(&r).unwrap();
        assert_eq!(steps[0], Step::One(setting("cpu", "cpu.shares", 512)));
        assert_eq!(
            steps[1],
            Step::EitherOrder(
                setting("cpu", "cpu.cfs_period_us", 100_000),
                setting("cpu", "cpu.cfs_quota_us", -1)
            )
        );
        assert_eq!(
            steps[2],
            Step::EitherOrder(
                setting("memory", "memory.limit_in_bytes", 64 * MIB),
                optional(setting("memory", "memory.memsw.limit_in_bytes", 128 * MIB))
            )
        );
        assert_eq!(steps[3], Step::One(setting("pids", "pids.max", "max")));
        assert_eq!(steps.len(), 4);

        let mut bad = r.clone();
        bad.set_unified(Some(HashMap::from([(
            "memory.high".to_string(),
            "1".to_string(),
        )])));
        assert!(plan_v1(&bad).is_err());
        let mut below = r;
        below.set_memory(Some(
            LinuxMemoryBuilder::default()
                .limit(64 * MIB)
                .swap(32 * MIB)
                .build()
                .unwrap(),
        ));
        assert!(plan_v1(&below)
            .unwrap_err()
            .contains("below the memory limit"));
    }

    #[test]
    fn unified_keys_and_page_sizes_are_validated() {
        assert_eq!(validate_unified_key("memory.high").unwrap(), "memory");
        assert_eq!(validate_unified_key("cgroup.freeze").unwrap(), "cgroup");
        assert_eq!(validate_unified_key("foo.bar").unwrap(), "unified");
        for bad in [
            "",
            "memory",
            ".high",
            "memory.",
            "../memory.max",
            "a/b.c",
            "memory..x",
        ] {
            assert!(validate_unified_key(bad).is_err(), "{bad:?} accepted");
        }
        assert!(is_valid_page_size("2MB"));
        assert!(is_valid_page_size("1GB"));
        assert!(is_valid_page_size("64KB"));
        for bad in ["", "MB", "2", "2mb", "2MB/x", "../2MB", "2TB"] {
            assert!(!is_valid_page_size(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn keyed_files_parse() {
        let parsed = parse_keyed("usage_usec 10\nuser_usec 7\nbogus\nname notanumber\n");
        assert_eq!(parsed.get("usage_usec"), Some(&10));
        assert_eq!(parsed.get("user_usec"), Some(&7));
        assert_eq!(parsed.len(), 2);
    }

    #[test]
    fn oom_score_adj_is_clamped() {
        assert_eq!(clamp_oom_score_adj_to(-998, -999), -998);
        assert_eq!(clamp_oom_score_adj_to(-1000, -999), -999);
        assert_eq!(clamp_oom_score_adj_to(-997, 0), 0);
        assert_eq!(clamp_oom_score_adj_to(1000, 0), 1000);
        assert_eq!(clamp_oom_score_adj_to(5000, 0), 1000);
        assert_eq!(clamp_oom_score_adj_to(-5000, -1000), -1000);
        assert_eq!(
            cap_eff("Name:\tx\nCapEff:\t000001fffeffffff\n"),
            Some(0x1ff_feff_ffff)
        );
        assert_eq!(cap_eff("Name:\tx\n"), None);
        // This VM: no CAP_SYS_RESOURCE, own score 0 (or whatever it is): never below own.
        let own = own_oom_score_adj().unwrap();
        if !has_cap_sys_resource() {
            assert_eq!(clamp_oom_score_adj(-999), own.max(-999));
        }
        assert_eq!(clamp_oom_score_adj(1000), 1000);
    }

    #[test]
    fn set_oom_score_adj_on_a_child() {
        let mut child = Command::new("/bin/busybox")
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let result = set_oom_score_adj(pid, 500);
        let read = fs::read_to_string(format!("/proc/{pid}/oom_score_adj"));
        let _ = child.kill();
        let _ = child.wait();
        result.unwrap();
        assert_eq!(read.unwrap().trim(), "500");
    }

    // ---- v2 writes against a fake tree --------------------------------------------------

    #[test]
    fn v2_resources_are_written_to_the_right_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma\n",
        )
        .unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        let layout = Layout::V2 {
            root: root.to_path_buf(),
        };
        let cg = Cgroup::new(&layout, "kubepods/pod1/ctr1").unwrap();
        cg.create().unwrap();
        let dir = cg.v2_dir().unwrap();
        assert!(dir.is_dir());
        assert_eq!(
            read_trimmed(&root.join("cgroup.subtree_control")),
            "+cpuset +cpu +io +memory +hugetlb +pids"
        );
        let files = [
            "cpu.weight",
            "cpu.max",
            "memory.max",
            "memory.swap.max",
            "memory.high",
            "pids.max",
            "cpuset.cpus",
            "cpuset.mems",
            "hugetlb.2MB.max",
        ];
        for file in files {
            fs::write(dir.join(file), "").unwrap();
        }
        let read = |file: &str| read_trimmed(&dir.join(file));

        let r = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("0-1")
                    .mems("0")
                    .build()
                    .unwrap(),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 * MIB)
                    .swap(96 * MIB)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(20i64).build().unwrap())
            .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
                .page_size("2MB")
                .limit(4 * MIB)
                .build()
                .unwrap()])
            .unified(HashMap::from([(
                "memory.high".to_string(),
                "50000000".to_string(),
            )]))
            .build()
            .unwrap();
        cg.apply(&r).unwrap();
        assert_eq!(read("cpu.weight"), "20");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("memory.max"), (64 * MIB).to_string());
        assert_eq!(read("memory.swap.max"), (32 * MIB).to_string());
        assert_eq!(read("memory.high"), "50000000");
        assert_eq!(read("pids.max"), "20");
        assert_eq!(read("cpuset.cpus"), "0-1");
        assert_eq!(read("cpuset.mems"), "0");
        assert_eq!(read("hugetlb.2MB.max"), (4 * MIB).to_string());

        // Update: lift the limits.
        let lifted = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(-1i64)
                    .period(100_000u64)
                    .build()
                    .unwrap(),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(-1i64)
                    .swap(-1i64)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(-1i64).build().unwrap())
            .build()
            .unwrap();
        cg.apply(&lifted).unwrap();
        assert_eq!(read("cpu.max"), "max 100000");
        assert_eq!(read("memory.max"), "max");
        assert_eq!(read("memory.swap.max"), "max");
        assert_eq!(read("pids.max"), "max");

        // A hugepage size whose file is absent: a clear error naming controller and file.
        let gigantic = LinuxResourcesBuilder::default()
            .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
                .page_size("1GB")
                .limit(1i64 << 30)
                .build()
                .unwrap()])
            .build()
            .unwrap();
        let err = cg.apply(&gigantic).unwrap_err();
        assert!(
            matches!(err, CgroupError::ControllerMissing { .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("hugetlb.1GB.max") && message.contains("kubepods/pod1/ctr1"));
        // No hugetlb controller for this cgroup at all: skipped, as runc does.
        fs::write(
            dir.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        cg.apply(&gigantic).unwrap();

        // Unified keys may not leave the directory.
        for key in ["../memory.max", "memory/../../x.max"] {
            let escape = LinuxResourcesBuilder::default()
                .unified(HashMap::from([(key.to_string(), "1".to_string())]))
                .build()
                .unwrap();
            assert!(matches!(
                cg.apply(&escape),
                Err(CgroupError::Invalid { .. })
            ));
        }
        // Swap without a memory limit is refused on v2.
        let swap_only = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().swap(MIB).build().unwrap())
            .build()
            .unwrap();
        assert!(matches!(
            cg.apply(&swap_only),
            Err(CgroupError::Invalid { .. })
        ));

        // A cgroup that was never created.
        let missing = Cgroup::new(&layout, "kubepods/pod1/nope").unwrap();
        assert!(matches!(
            missing.apply(&r),
            Err(CgroupError::NotFound { .. })
        ));
        assert!(!missing.exists());
    }

    #[test]
    fn v2_stats_are_read_from_a_fake_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::V2 {
            root: tmp.path().to_path_buf(),
        };
        let cg = Cgroup::new(&layout, "pod/ctr").unwrap();
        cg.create().unwrap();
        let dir = cg.v2_dir().unwrap();
        let put = |file: &str, text: &str| fs::write(dir.join(file), text).unwrap();
        put("cgroup.procs", "");
        put(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n",
        );
        put("memory.current", "10000\n");
        put("memory.max", "max\n");
        put(
            "memory.stat",
            "anon 4000\nfile 6000\ninactive_file 2500\npgfault 77\npgmajfault 3\n",
        );
        put("memory.events", "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n");
        put("pids.current", "4\n");
        let st = cg.stats().unwrap();
        assert_eq!(st.cpu_usage_ns, 1_500_000);
        assert_eq!(st.cpu_user_ns, 1_000_000);
        assert_eq!(st.cpu_system_ns, 500_000);
        assert_eq!(st.memory_usage, 10_000);
        assert_eq!(st.memory_working_set, 7_500);
        assert_eq!(st.memory_rss, 4_000);
        assert_eq!(st.page_faults, 77);
        assert_eq!(st.major_page_faults, 3);
        assert_eq!(st.pids, 4);
        assert_eq!(st.memory_limit, None);
        assert_eq!(cg.oom_kills().unwrap(), 2);

        // Working set floors at 0; a numeric limit is reported.
        put("memory.stat", "inactive_file 20000\n");
        put("memory.max", "67108864\n");
        let st = cg.stats().unwrap();
        assert_eq!(st.memory_working_set, 0);
        assert_eq!(st.memory_limit, Some(64 << 20));

        put("pids.current", "many\n");
        assert!(matches!(cg.stats(), Err(CgroupError::Parse { .. })));
    }

    // ---- real cgroups on this machine ---------------------------------------------------

    #[test]
    fn v1_create_apply_stats_update_kill_delete() {
        let layout = v1_layout();
        let cg = Cgroup::new(&layout, &unique_name()).unwrap();
        let mut guard = Guard::new(&cg);
        cg.create().unwrap();
        assert!(cg.exists());
        for dir in cg.dirs() {
            assert!(dir.is_dir(), "{} not created", dir.display());
        }
        if let Some(dir) = cg.device_dir() {
            assert!(
                dir.is_dir(),
                "{} (hybrid cgroup2) not created",
                dir.display()
            );
            assert!(cg.join_dirs().contains(&dir));
        }
        let file = |controller: &str, name: &str| cg.controller_dir(controller).unwrap().join(name);
        let read = |controller: &str, name: &str| read_trimmed(&file(controller, name));
        assert!(!read("cpuset", "cpuset.cpus").is_empty());
        assert!(!read("cpuset", "cpuset.mems").is_empty());

        let r = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("0")
                    .build()
                    .unwrap(),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 * MIB)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(20i64).build().unwrap())
            .build()
            .unwrap();
        cg.apply(&r).unwrap();
        assert_eq!(read("cpu", "cpu.shares"), "512");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (64 * MIB).to_string()
        );
        assert_eq!(read("pids", "pids.max"), "20");
        assert_eq!(read("cpuset", "cpuset.cpus"), "0");

        // A hugepage limit on a node without the hugetlb hierarchy is skipped (kubelet
        // sends one for every container), the other limits applied.
        if layout.v1_mount("hugetlb").is_none() {
            let huge = LinuxResourcesBuilder::default()
                .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
                    .page_size("2MB")
                    .limit(0)
                    .build()
                    .unwrap()])
                .pids(LinuxPidsBuilder::default().limit(21).build().unwrap())
                .build()
                .unwrap();
            cg.apply(&huge).unwrap();
            assert_eq!(read("pids", "pids.max"), "21");
        }

        guard.children.push(spawn_held("exec sleep 30"));
        let pid = guard.children[0].id() as i32;
        cg.add_process(pid).unwrap();
        release(&mut guard.children[0]);
        assert!(cg.procs().unwrap().contains(&pid));
        let stats = wait_for("memory to be charged", || {
            let st = cg.stats().unwrap();
            (st.memory_usage > 0).then_some(st)
        });
        assert!(stats.pids >= 1, "{stats:?}");
        assert_eq!(stats.memory_limit, Some(64 << 20));
        assert!(stats.memory_working_set <= stats.memory_usage);
        assert_eq!(cg.oom_kills().unwrap(), 0);

        // UpdateContainerResources: raise memory (and memory+swap, which must go first).
        let memsw = file("memory", "memory.memsw.limit_in_bytes");
        let update = |limit: i64, swap: i64| {
            let r = LinuxResourcesBuilder::default()
                .memory(
                    LinuxMemoryBuilder::default()
                        .limit(limit)
                        .swap(swap)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap();
            cg.apply(&r).unwrap();
            assert_eq!(read("memory", "memory.limit_in_bytes"), limit.to_string());
            if memsw.exists() {
                assert_eq!(read_trimmed(&memsw), swap.to_string());
            }
        };
        update(128 * MIB, 256 * MIB);
        update(512 * MIB, 512 * MIB);
        update(96 * MIB, 96 * MIB);
        assert_eq!(cg.stats().unwrap().memory_limit, Some(96 << 20));

        cg.kill_all().unwrap();
        assert!(cg.procs().unwrap().is_empty());
        let status = guard.children[0].wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        cg.delete().unwrap();
        assert!(!cg.exists());
        cg.delete().unwrap(); // idempotent
        cg.kill_all().unwrap();
        assert!(matches!(cg.procs(), Err(CgroupError::NotFound { .. })));
        drop(guard);
        assert_gone(&cg);
    }

    #[test]
    fn v1_pids_limit_is_enforced() {
        let layout = v1_layout();
        let cg = Cgroup::new(&layout, &unique_name()).unwrap();
        let mut guard = Guard::new(&cg);
        cg.create().unwrap();
        let r = LinuxResourcesBuilder::default()
            .pids(LinuxPidsBuilder::default().limit(3i64).build().unwrap())
            .build()
            .unwrap();
        cg.apply(&r).unwrap();
        guard.children.push(spawn_held(
            "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait",
        ));
        let pid = guard.children[0].id() as i32;
        cg.add_process(pid).unwrap();
        release(&mut guard.children[0]);

        let pids_dir = cg.controller_dir("pids").unwrap();
        let mut most = 0;
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            let n = cg.procs().unwrap().len();
            assert!(n <= 3, "{n} processes in a cgroup with pids.max=3");
            most = most.max(n);
            sleep(Duration::from_millis(20));
        }
        assert!(most >= 1);
        let events = parse_keyed(&fs::read_to_string(pids_dir.join("pids.events")).unwrap());
        assert!(
            events.get("max").copied().unwrap_or(0) > 0,
            "no fork was refused: {events:?}"
        );
        assert!(cg.stats().unwrap().pids <= 3);

        cg.kill_all().unwrap();
        assert!(cg.procs().unwrap().is_empty());
        cg.delete().unwrap();
        drop(guard);
        assert_gone(&cg);
    }

    #[test]
    fn v1_delete_removes_children_deepest_first() {
        let layout = v1_layout();
        let top = Cgroup::new(&layout, &unique_name()).unwrap();
        let guard = Guard::new(&top);
        let leaf = top.child("pod").unwrap().child("ctr").unwrap();
        leaf.create().unwrap();
        assert!(leaf.exists());
        // cpuset filled at every level.
        let cpuset_leaf = leaf.controller_dir("cpuset").unwrap();
        assert!(!read_trimmed(&cpuset_leaf.join("cpuset.cpus")).is_empty());
        top.delete().unwrap();
        assert!(!leaf.exists());
        drop(guard);
        assert_gone(&top);
    }

    #[test]
    fn v2_unified_create_add_kill_delete() {
        let layout = Layout::detect().ok();
        let root = match &layout {
            Some(
                l @ Layout::V1 {
                    unified: Some(_), ..
                },
            ) if is_root() => l.unified().unwrap().to_path_buf(),
            _ => panic!("this test needs root and a hybrid cgroup layout"),
        };
        let v2 = Layout::V2 { root: root.clone() };
        let _restore = SubtreeRestore::new(&root);
        let top = Cgroup::new(&v2, &unique_name()).unwrap();
        let mut guard = Guard::new(&top);
        let cg = top.child("ctr").unwrap();
        cg.create().unwrap();
        assert!(cg.exists());
        assert_eq!(cg.v2_dir(), Some(root.join(cg.path())));

        // The signal loop (the path for kernels without cgroup.kill).
        guard.children.push(spawn_held("exec sleep 30"));
        let first = guard.children[0].id() as i32;
        cg.add_process(first).unwrap();
        release(&mut guard.children[0]);
        assert_eq!(cg.procs().unwrap(), vec![first]);
        assert!(top.procs().unwrap().is_empty());
        let st = top.stats().unwrap();
        assert_eq!(st.pids, 1, "{st:?}");
        cg.signal_until_empty().unwrap();
        assert_eq!(
            guard.children[0].wait().unwrap().signal(),
            Some(libc::SIGKILL)
        );

        // cgroup.kill, through the parent.
        guard.children.push(spawn_held("exec sleep 30"));
        guard.children.push(spawn_held("exec sleep 30"));
        for child in &mut guard.children[1..] {
            cg.add_process(child.id() as i32).unwrap();
            release(child);
        }
        assert_eq!(cg.procs().unwrap().len(), 2);
        assert_eq!(cg.oom_kills().unwrap(), 0);
        top.kill_all().unwrap();
        assert!(cg.procs().unwrap().is_empty());
        for child in &mut guard.children[1..] {
            assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        }

        top.delete().unwrap();
        assert!(!cg.exists());
        assert!(!top.exists());
        top.delete().unwrap();
        drop(guard);
        assert_gone(&top);
    }

    #[test]
    fn add_process_refuses_non_positive_pids() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::V2 {
            root: tmp.path().to_path_buf(),
        };
        let cg = Cgroup::new(&layout, "x").unwrap();
        cg.create().unwrap();
        assert!(matches!(
            cg.add_process(0),
            Err(CgroupError::Invalid { .. })
        ));
        assert!(matches!(
            cg.add_process(-1),
            Err(CgroupError::Invalid { .. })
        ));
    }
}
