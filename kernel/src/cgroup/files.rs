//! Reads and writes of control files and cgroup directories.
//! Runs in cairnd (making cgroups, limits, stats) and cairn-shim (joining, killing, removing).

use super::*;

/// Writes a control file in one write(2); the file must exist.
pub(super) fn write_file(path: &Path, value: &str) -> Result<()> {
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
pub(super) fn read_opt(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path, e)),
    }
}

/// Reads a one-number file; "max" reads as None, as does a missing file.
pub(super) fn read_u64(path: &Path) -> Result<Option<u64>> {
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
pub(super) fn read_keyed(path: &Path) -> Result<Option<BTreeMap<String, u64>>> {
    Ok(read_opt(path)?.map(|text| parse_keyed(&text)))
}

/// Parses `key value` lines, skipping any line that is not a key and a u64.
pub(super) fn parse_keyed(text: &str) -> BTreeMap<String, u64> {
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
pub(super) fn read_procs(path: &Path) -> Result<Option<Vec<i32>>> {
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
pub(super) fn collect_subtree_procs(dir: &Path, out: &mut BTreeSet<i32>) -> Result<()> {
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
pub(super) fn child_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
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
pub(super) fn make_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io_err("create cgroup", dir, e)),
    }
}

/// v1 cpuset: a new cgroup starts with empty cpus/mems and refuses tasks until they are
/// set; copy them from the parent.
pub(super) fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<()> {
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

/// Removes a cgroup directory, the cgroups below it first.
pub(super) fn remove_tree(dir: &Path) -> Result<()> {
    for child in child_dirs(dir)? {
        remove_tree(&child)?;
    }
    remove_dir_retrying(dir)
}

/// `rmdir` with a few retries on EBUSY (processes that are still exiting); gone is fine.
pub(super) fn remove_dir_retrying(dir: &Path) -> Result<()> {
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
pub(super) fn signal_all(pids: &[i32]) {
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
pub(super) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}
