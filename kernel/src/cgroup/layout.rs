//! How the cgroup filesystems are mounted on this node (v1, hybrid, pure v2), read from
//! the mount table.
//! Runs in cairnd (making cgroups, limits, stats) and cairn-shim (joining, killing, removing).

use super::*;

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
    pub(super) fn hierarchy_roots(&self) -> Vec<PathBuf> {
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
pub(super) fn v1_controllers(super_options: &str) -> Vec<String> {
    super_options
        .split(',')
        .filter(|opt| V1_CONTROLLERS.contains(opt) || opt.starts_with("name="))
        .map(str::to_string)
        .collect()
}
