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
//! Its parts: the [`Layout`] (`layout`), what a resource request writes where (`plan`,
//! with the `v1` and `v2` translations), the control-file reads and writes (`files`),
//! statistics (`stats`), and oom_score_adj clamping (`oom`). cairnd makes and limits
//! containers' cgroups through [`Cgroup`]; the shim joins them, reads their stats and
//! kills what is left in them through the same interface.

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

mod files;
mod layout;
mod oom;
mod plan;
mod stats;
#[cfg(test)]
mod tests;
mod v1;
mod v2;

pub use layout::Layout;
pub use oom::{clamp_oom_score_adj, clamp_oom_score_adj_to, set_oom_score_adj};
pub use stats::CgroupStats;
pub use v2::shares_to_weight;

use files::*;
#[cfg(test)]
use oom::*;
use plan::*;
use v1::*;
use v2::*;

/// A cgroup path relative to the hierarchy roots, e.g.
/// `kubepods/besteffort/pod<uid>/<container id>`, on a given [`Layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    layout: Layout,
    path: PathBuf,
    name: String,
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
