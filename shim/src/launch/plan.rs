//! Turns an OCI runtime spec into a launch plan before anything forks: every string made
//! a C string, every host file (namespace, cgroup, mount source, rootfs) opened or checked,
//! every option parsed, the seccomp profile compiled to BPF. The forked children then only
//! read the plan and make system calls, and most spec mistakes are reported by `create()`
//! itself, naming the offending field. The one host-side action here: the spec's device
//! rules are written into the container's cgroup v1 `devices` hierarchy and, where the
//! container has a cgroup2 directory, attached to it as a device program.
//!
//! Runs in cairn-shim.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::raw::c_char;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cairn_kernel::devices::DeviceRulesError;
use cairn_kernel::overlay::OverlayMount;
use libc::{c_int, c_ulong};
use oci_spec::runtime::{
    Capabilities, Linux, LinuxCapabilities, LinuxDeviceType, LinuxIdMapping, LinuxNamespace,
    LinuxNamespaceType, LinuxSeccomp, Mount, PosixRlimitType, Process, Spec,
};

use super::LaunchError;

/// The PATH used to find the executable when the process environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A namespace to `setns` into, opened on the host.
pub(super) struct NsJoin {
    pub(super) fd: OwnedFd,
    pub(super) nstype: c_int,
    /// "the network namespace /run/cairn/pods/x/net", for error messages.
    pub(super) what: String,
}

/// The pod's user namespace, joined before every other namespace.
pub(super) struct UsernsPlan {
    pub(super) join: NsJoin,
    /// Directories the middle child replaces by idmapped mounts of themselves (the
    /// overlay's lower layers, or a plain rootfs dir) before it mounts the rootfs, still
    /// in the host's user namespace.
    pub(super) idmap: Vec<(CString, PathBuf)>,
}

/// How the process joins one cgroup, prepared on the host. Neither way takes the kernel's
/// global threadgroup lock, whose write side waits for an RCU grace period (10-20 ms on an
/// idle host) whenever a whole process moves through `cgroup.procs`.
pub(super) enum CgroupJoin {
    /// A cgroup v1 hierarchy: the process, single-threaded, writes "0" to `tasks`, which
    /// moves only the writing thread (kernels before 5.19 take the lock anyway; correct,
    /// only slower).
    V1 { tasks: OwnedFd, dir: PathBuf },
    /// The cgroup2 directory: the process is cloned straight into it (clone3 with
    /// `CLONE_INTO_CGROUP`, which only reads the lock). Where that cannot be used (no
    /// clone3, a pod user namespace whose root may not write the host's cgroups) the
    /// process writes "0" to `procs` instead.
    V2 {
        dir_fd: OwnedFd,
        procs: OwnedFd,
        dir: PathBuf,
    },
}

impl CgroupJoin {
    /// The cgroup directory.
    pub(super) fn dir(&self) -> &Path {
        match self {
            CgroupJoin::V1 { dir, .. } | CgroupJoin::V2 { dir, .. } => dir,
        }
    }

    fn fds(&self) -> Vec<RawFd> {
        match self {
            CgroupJoin::V1 { tasks, .. } => vec![tasks.as_raw_fd()],
            CgroupJoin::V2 { dir_fd, procs, .. } => vec![dir_fd.as_raw_fd(), procs.as_raw_fd()],
        }
    }
}

/// The cgroup2 join among `cgroups`, if any.
pub(super) fn v2_join(cgroups: &[CgroupJoin]) -> Option<&CgroupJoin> {
    cgroups.iter().find(|c| matches!(c, CgroupJoin::V2 { .. }))
}

/// Everything `create()` needs, prepared.
pub(super) struct ContainerPlan<'a> {
    pub(super) cgroups: Vec<CgroupJoin>,
    /// Set when the spec's user namespace has a path: joined first, see [`UsernsPlan`].
    pub(super) userns: Option<UsernsPlan>,
    pub(super) join: Vec<NsJoin>,
    /// CLONE_NEW* flags for the namespaces to create (always includes CLONE_NEWNS).
    pub(super) unshare: c_int,
    pub(super) oom_score_adj: Option<String>,
    pub(super) rootfs: RootfsPlan<'a>,
    pub(super) mounts: Vec<MountPlan>,
    /// /dev is a tmpfs of ours: create the default nodes and links in it.
    pub(super) manage_dev: bool,
    pub(super) has_devpts: bool,
    pub(super) devices: Vec<DevicePlan>,
    pub(super) masked: Vec<CString>,
    pub(super) readonly: Vec<CString>,
    pub(super) sysctls: Vec<Sysctl>,
    /// Set only when the uts namespace is a new one.
    pub(super) hostname: Option<CString>,
    pub(super) domainname: Option<CString>,
    pub(super) process: ProcessPlan,
}

impl ContainerPlan<'_> {
    /// Descriptors the children need (all others are closed in them).
    pub(super) fn fds(&self) -> Vec<RawFd> {
        let cg = self.cgroups.iter().flat_map(CgroupJoin::fds);
        let user = self.userns.iter().map(|u| u.join.fd.as_raw_fd());
        cg.chain(user)
            .chain(self.join.iter().map(|n| n.fd.as_raw_fd()))
            .collect()
    }
}

/// Everything `exec()` needs, prepared.
pub(super) struct ExecPlan {
    pub(super) cgroups: Vec<CgroupJoin>,
    /// The target's user namespace when it is not the shim's, joined first.
    pub(super) userns: Option<NsJoin>,
    /// The target's pid namespace when it is not the shim's: the exec'd process is forked
    /// into it (by the shim, or by the child that clones it into the cgroup2 dir).
    pub(super) pid_ns: Option<NsJoin>,
    /// The target's other namespaces, the mount namespace last.
    pub(super) join: Vec<NsJoin>,
    pub(super) oom_score_adj: Option<String>,
    pub(super) process: ProcessPlan,
}

impl ExecPlan {
    pub(super) fn fds(&self) -> Vec<RawFd> {
        let cg = self.cgroups.iter().flat_map(CgroupJoin::fds);
        let user = self.userns.iter().map(|n| n.fd.as_raw_fd());
        let pid = self.pid_ns.iter().map(|n| n.fd.as_raw_fd());
        cg.chain(user)
            .chain(pid)
            .chain(self.join.iter().map(|n| n.fd.as_raw_fd()))
            .collect()
    }
}

pub(super) struct RootfsPlan<'a> {
    pub(super) path: CString,
    pub(super) display: PathBuf,
    pub(super) overlay: Option<&'a OverlayMount>,
    pub(super) readonly: bool,
    /// MS_PRIVATE or MS_SLAVE, applied recursively to the whole tree before mounting; 0
    /// for a shared rootfs, whose tree is left as the host has it so that binds of the
    /// host's shared mounts join their peer groups (bidirectional volumes), as runc does.
    pub(super) propagation: c_ulong,
    /// With `propagation` 0: the rootfs path's ancestors, nearest first. The first that
    /// is a mount point (the mount holding the rootfs) is made private before the rootfs
    /// is mounted, so that the container's own mounts never reach the host.
    pub(super) parents: Vec<CString>,
    /// MS_SHARED or MS_UNBINDABLE, applied recursively to the new root at the end.
    pub(super) final_propagation: Option<c_ulong>,
}

/// A path below the container root, relative to it and lexically clean.
pub(super) struct RelPath {
    /// "/dev/pts", for messages.
    pub(super) display: String,
    /// "dev/pts".
    pub(super) full: CString,
    /// "dev" ("." for a top-level entry).
    pub(super) parent: CString,
    /// "pts".
    pub(super) name: CString,
}

impl RelPath {
    fn new(path: &Path, what: &str) -> Result<RelPath, LaunchError> {
        let mut parts: Vec<&OsStr> = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(n) => parts.push(n),
                Component::ParentDir => {
                    parts.pop();
                }
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        let Some((name, dirs)) = parts.split_last() else {
            return Err(invalid(format!(
                "{what} {:?} is not a path below the container root",
                path.display()
            )));
        };
        let join = |parts: &[&OsStr]| {
            let bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
            bytes.join(&b'/')
        };
        let full = join(&parts);
        let parent = if dirs.is_empty() {
            b".".to_vec()
        } else {
            join(dirs)
        };
        Ok(RelPath {
            display: format!("/{}", String::from_utf8_lossy(&full)),
            full: cstring(full, what)?,
            parent: cstring(parent, what)?,
            name: cstring(name.as_bytes(), what)?,
        })
    }
}

pub(super) enum MountKind {
    Bind {
        source: CString,
        recursive: bool,
    },
    Fs {
        fstype: CString,
        source: CString,
    },
    /// `/sys/fs/cgroup` on a cgroup v1 (or hybrid) host: a tmpfs holding a bind mount of
    /// the container's own directory in each hierarchy, named as on the host, as runc does.
    /// Programs that read their limits there (JVMs, Go and .NET runtimes) find them.
    CgroupV1 {
        hierarchies: Vec<CgroupBind>,
    },
}

/// One cgroup v1 hierarchy (or the hybrid layout's cgroup2 mount) shown in a container.
pub(super) struct CgroupBind {
    /// The host mount point's name ("memory", "cpu,cpuacct", "unified").
    pub(super) name: CString,
    /// The container's directory in that hierarchy, on the host.
    pub(super) source: CString,
    /// Symlinks to `name` for controllers mounted together ("cpu", "cpuacct").
    pub(super) aliases: Vec<CString>,
}

pub(super) struct MountPlan {
    pub(super) dest: RelPath,
    pub(super) kind: MountKind,
    pub(super) flags: c_ulong,
    pub(super) data: Option<CString>,
    pub(super) propagation: Vec<c_ulong>,
    /// "rro": make the bind and everything below it read-only.
    pub(super) recursive_ro: bool,
    /// The mount point must be a file (the bind source is not a directory).
    pub(super) as_file: bool,
    /// "proc mount at /proc", "bind mount of /var/x at /data", for messages.
    pub(super) describe: String,
}

pub(super) struct DevicePlan {
    pub(super) path: RelPath,
    /// The same node on the host, bind-mounted when mknod is not permitted.
    pub(super) host: CString,
    pub(super) mode: libc::mode_t,
    pub(super) dev: libc::dev_t,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
}

pub(super) struct Sysctl {
    pub(super) key: String,
    pub(super) path: CString,
    pub(super) value: Vec<u8>,
}

/// A NULL-terminated array of C strings (argv, envp), with its strings.
pub(super) struct CArray {
    _strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CArray {
    fn new(strings: Vec<CString>) -> CArray {
        let ptrs = strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        CArray {
            _strings: strings,
            ptrs,
        }
    }

    pub(super) fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

pub(super) struct CapPlan {
    pub(super) bounding: u64,
    pub(super) effective: u64,
    pub(super) permitted: u64,
    pub(super) inheritable: u64,
    pub(super) ambient: u64,
    pub(super) last_cap: u32,
}

/// The process part, shared by `create()` and `exec()`.
pub(super) struct ProcessPlan {
    /// args[0] as given, for messages.
    pub(super) name: String,
    pub(super) argv: CArray,
    pub(super) envp: CArray,
    /// Where to look for the executable: `name` itself, or each PATH entry joined with it.
    pub(super) candidates: Vec<CString>,
    pub(super) search_path: bool,
    pub(super) cwd: CString,
    pub(super) uid: libc::uid_t,
    pub(super) gid: libc::gid_t,
    pub(super) groups: Vec<libc::gid_t>,
    pub(super) umask: libc::mode_t,
    /// None: the spec says nothing about capabilities; they are left as inherited.
    pub(super) caps: Option<CapPlan>,
    pub(super) no_new_privs: bool,
    pub(super) rlimits: Vec<Rlimit>,
    /// The seccomp filter to install right before execve, compiled in the caller so that
    /// the child only hands it to the kernel.
    pub(super) seccomp: Option<Arc<cairn_kernel::seccomp::Program>>,
}

impl ProcessPlan {
    /// Loading the filter needs CAP_SYS_ADMIN when no_new_privs is off: the process then
    /// keeps it in its effective set until the filter is in, and drops it right after.
    pub(super) fn seccomp_needs_admin(&self) -> bool {
        self.seccomp.is_some() && !self.no_new_privs
    }
}

pub(super) struct Rlimit {
    pub(super) resource: c_int,
    pub(super) limit: libc::rlimit,
    /// "RLIMIT_NOFILE", for messages.
    pub(super) name: String,
}

fn invalid(msg: impl Into<String>) -> LaunchError {
    LaunchError::InvalidSpec(msg.into())
}

fn cstring(bytes: impl Into<Vec<u8>>, what: &str) -> Result<CString, LaunchError> {
    CString::new(bytes).map_err(|_| invalid(format!("{what} contains a NUL byte")))
}

fn path_cstring(path: &Path, what: &str) -> Result<CString, LaunchError> {
    cstring(path.as_os_str().as_bytes(), what)
}

fn host_io(context: String, source: std::io::Error) -> LaunchError {
    LaunchError::Io { context, source }
}

/// Prepares `create()`.
pub(super) fn container<'a>(
    spec: &Spec,
    overlay: Option<&'a OverlayMount>,
    cgroup_dirs: &[PathBuf],
    oom_score_adj: Option<i32>,
    compiled_seccomp: Option<Arc<cairn_kernel::seccomp::Program>>,
    device_rules_installed: bool,
) -> Result<ContainerPlan<'a>, LaunchError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("the spec has no process"))?;
    let linux = spec.linux().as_ref();
    let namespaces = linux.and_then(|l| l.namespaces().as_deref()).unwrap_or(&[]);
    let (userns, join, unshare, new_uts) = namespaces_plan(namespaces)?;
    let mut mounts = spec
        .mounts()
        .iter()
        .flatten()
        .map(mount_plan)
        .collect::<Result<Vec<_>, _>>()?;
    for m in &mut mounts {
        if let MountKind::CgroupV1 { hierarchies } = &mut m.kind {
            let path = linux.and_then(|l| l.cgroups_path().as_deref());
            *hierarchies = cgroup_binds(cgroup_dirs, path)?;
        }
    }
    let manage_dev = mounts
        .iter()
        .any(|m| m.dest.display == "/dev" && matches!(m.kind, MountKind::Fs { .. }));
    let has_devpts = mounts.iter().any(|m| m.dest.display == "/dev/pts");
    let name_if_new = |name: &Option<String>, what: &str| match name {
        Some(n) if new_uts && !n.is_empty() => cstring(n.as_bytes(), what).map(Some),
        _ => Ok(None),
    };
    let cgroups = cgroup_plan(cgroup_dirs)?;
    if !device_rules_installed {
        let dirs: Vec<&Path> = cgroups.iter().map(CgroupJoin::dir).collect();
        apply_device_rules(&dirs, linux)?;
    }
    let rootfs = rootfs_plan(spec, linux, overlay)?;
    let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
        Some(_) if compiled_seccomp.is_some() => compiled_seccomp,
        profile => compile_seccomp(profile)?,
    };
    let userns = match userns {
        Some(join) => Some(userns_plan(join, linux, &rootfs)?),
        None => None,
    };
    Ok(ContainerPlan {
        cgroups,
        userns,
        join,
        unshare,
        oom_score_adj: oom_score_adj
            .or_else(|| process.oom_score_adj())
            .map(|v| v.to_string()),
        rootfs,
        devices: devices_plan(linux, manage_dev)?,
        mounts,
        manage_dev,
        has_devpts,
        masked: container_paths(linux.and_then(|l| l.masked_paths().as_ref()), "masked path")?,
        readonly: container_paths(
            linux.and_then(|l| l.readonly_paths().as_ref()),
            "readonly path",
        )?,
        sysctls: sysctl_plan(linux)?,
        hostname: name_if_new(spec.hostname(), "hostname")?,
        domainname: name_if_new(spec.domainname(), "domainname")?,
        process: process_plan(process, seccomp)?,
    })
}

/// Prepares `exec()` into the container whose init is `target`, under `seccomp` (the
/// container's compiled filter) if given.
pub(super) fn exec(
    target: i32,
    process: &Process,
    seccomp: Option<Arc<cairn_kernel::seccomp::Program>>,
    cgroup_dirs: &[PathBuf],
) -> Result<ExecPlan, LaunchError> {
    if target <= 0 {
        return Err(invalid(format!("bad container pid {target}")));
    }
    let proc_dir = PathBuf::from(format!("/proc/{target}"));
    let user = proc_dir.join("ns/user");
    let userns = if same_file(&user, Path::new("/proc/self/ns/user")) {
        None
    } else {
        let file = File::open(&user).map_err(|e| {
            host_io(
                format!(
                    "opening {} (is container process {target} running?)",
                    user.display()
                ),
                e,
            )
        })?;
        Some(NsJoin {
            fd: file.into(),
            nstype: libc::CLONE_NEWUSER,
            what: format!("the user namespace of process {target}"),
        })
    };
    let kinds = [
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("pid", libc::CLONE_NEWPID),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("mnt", libc::CLONE_NEWNS),
    ];
    let mut join = Vec::with_capacity(kinds.len());
    let mut pid_ns = None;
    for (name, nstype) in kinds {
        let path = proc_dir.join("ns").join(name);
        // Ours already (the host's pid namespace, or no cgroup namespace): nothing to join.
        let optional = matches!(nstype, libc::CLONE_NEWCGROUP | libc::CLONE_NEWPID);
        if optional && same_file(&path, &Path::new("/proc/self/ns").join(name)) {
            continue;
        }
        let file = File::open(&path).map_err(|e| {
            host_io(
                format!(
                    "opening {} (is container process {target} running?)",
                    path.display()
                ),
                e,
            )
        })?;
        let ns = NsJoin {
            fd: file.into(),
            nstype,
            what: format!("the {name} namespace of process {target}"),
        };
        match nstype {
            libc::CLONE_NEWPID => pid_ns = Some(ns),
            _ => join.push(ns),
        }
    }
    let oom_score_adj = std::fs::read_to_string(proc_dir.join("oom_score_adj"))
        .ok()
        .map(|s| s.trim().to_string());
    Ok(ExecPlan {
        cgroups: cgroup_plan(cgroup_dirs)?,
        userns,
        pid_ns,
        join,
        oom_score_adj,
        process: process_plan(process, seccomp)?,
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// What [`namespaces_plan`] found: the user namespace to join, the other namespaces to
/// join, the CLONE_NEW* flags of those to create, and whether the uts one is new.
type NamespacesPlan = (Option<NsJoin>, Vec<NsJoin>, c_int, bool);

/// Namespaces to join (those with a path) and the CLONE_NEW* flags of those to create.
/// A user namespace can only be joined (the pod's, made by its shim), not created.
fn namespaces_plan(list: &[LinuxNamespace]) -> Result<NamespacesPlan, LaunchError> {
    let mut userns = None;
    let mut join = Vec::new();
    let mut unshare = libc::CLONE_NEWNS;
    let mut new_uts = false;
    for ns in list {
        let (nstype, name) = match ns.typ() {
            LinuxNamespaceType::Network => (libc::CLONE_NEWNET, "network"),
            LinuxNamespaceType::Ipc => (libc::CLONE_NEWIPC, "ipc"),
            LinuxNamespaceType::Uts => (libc::CLONE_NEWUTS, "uts"),
            LinuxNamespaceType::Pid => (libc::CLONE_NEWPID, "pid"),
            LinuxNamespaceType::Cgroup => (libc::CLONE_NEWCGROUP, "cgroup"),
            LinuxNamespaceType::Mount if ns.path().is_none() => continue,
            LinuxNamespaceType::Mount => {
                return Err(LaunchError::Unsupported(
                    "joining an existing mount namespace".into(),
                ))
            }
            LinuxNamespaceType::User if ns.path().is_none() => {
                return Err(LaunchError::Unsupported(
                    "creating a user namespace (a user namespace needs a path to join)".into(),
                ))
            }
            LinuxNamespaceType::User => (libc::CLONE_NEWUSER, "user"),
            LinuxNamespaceType::Time => {
                return Err(LaunchError::Unsupported("time namespaces".into()))
            }
        };
        let Some(path) = ns.path() else {
            unshare |= nstype;
            new_uts |= nstype == libc::CLONE_NEWUTS;
            continue;
        };
        let file = File::open(path).map_err(|e| {
            host_io(
                format!("opening the {name} namespace {}", path.display()),
                e,
            )
        })?;
        let ns = NsJoin {
            fd: file.into(),
            nstype,
            what: format!("the {name} namespace {}", path.display()),
        };
        if nstype == libc::CLONE_NEWUSER {
            if userns.is_some() {
                return Err(invalid("the spec lists two user namespaces"));
            }
            userns = Some(ns);
        } else {
            join.push(ns);
        }
    }
    Ok((userns, join, unshare, new_uts))
}

/// The host id that container id 0 maps to in `maps`.
fn host_root_id(maps: Option<&Vec<LinuxIdMapping>>) -> Option<u32> {
    maps?
        .iter()
        .find(|m| m.container_id() == 0 && m.size() > 0)
        .map(|m| m.host_id())
}

/// Prepares a container in a user namespace: which dirs get idmapped (the overlay's lower
/// layers, shared between containers and owned by the host's ids, are shown through the
/// namespace's mappings; a plain rootfs dir likewise), and the overlay's upper dir — the
/// container's own, empty — is handed to the namespace's root, so that the container's
/// root owns its `/` and what it writes lands in the upper dir under its host ids.
fn userns_plan(
    join: NsJoin,
    linux: Option<&Linux>,
    rootfs: &RootfsPlan<'_>,
) -> Result<UsernsPlan, LaunchError> {
    let uid = host_root_id(linux.and_then(|l| l.uid_mappings().as_ref()));
    let gid = host_root_id(linux.and_then(|l| l.gid_mappings().as_ref()));
    let (Some(uid), Some(gid)) = (uid, gid) else {
        return Err(invalid(
            "a container in a user namespace needs linux.uidMappings and linux.gidMappings \
             that map container id 0",
        ));
    };
    let dirs: Vec<&Path> = match rootfs.overlay {
        Some(o) => o.lowers.iter().map(PathBuf::as_path).collect(),
        None => vec![rootfs.display.as_path()],
    };
    let idmap = dirs
        .into_iter()
        .map(|d| Ok((path_cstring(d, "rootfs layer")?, d.to_path_buf())))
        .collect::<Result<Vec<_>, LaunchError>>()?;
    if let Some((upper, _)) = rootfs.overlay.and_then(|o| o.upper.as_ref()) {
        std::os::unix::fs::chown(upper, Some(uid), Some(gid)).map_err(|e| {
            host_io(
                format!(
                    "handing the container's upper dir {} to host uid {uid} gid {gid}",
                    upper.display()
                ),
                e,
            )
        })?;
    }
    Ok(UsernsPlan { join, idmap })
}

fn cgroup_plan(dirs: &[PathBuf]) -> Result<Vec<CgroupJoin>, LaunchError> {
    dirs.iter().map(|dir| cgroup_join(dir)).collect()
}

/// Prepares joining the cgroup directory `dir` (a path to its `cgroup.procs` is taken as
/// the directory), the way its hierarchy allows: see [`CgroupJoin`].
fn cgroup_join(dir: &Path) -> Result<CgroupJoin, LaunchError> {
    let dir = match dir.ends_with("cgroup.procs") {
        true => dir.parent().unwrap_or(dir).to_path_buf(),
        false => dir.to_path_buf(),
    };
    let open_write = |name: &str| {
        let path = dir.join(name);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|e| host_io(format!("opening {} to join the cgroup", path.display()), e))
    };
    if !cairn_kernel::devfilter::is_cgroup2(&dir) {
        return Ok(CgroupJoin::V1 {
            tasks: open_write("tasks")?,
            dir,
        });
    }
    let dir_fd = File::open(&dir)
        .map(OwnedFd::from)
        .map_err(|e| host_io(format!("opening the cgroup {}", dir.display()), e))?;
    Ok(CgroupJoin::V2 {
        dir_fd,
        procs: open_write("cgroup.procs")?,
        dir,
    })
}

/// Installs the spec's device rules (`linux.resources.devices`) in the container's
/// cgroup dirs before the process joins them ([`cairn_kernel::devices::install`]).
pub(super) fn apply_device_rules(dirs: &[&Path], linux: Option<&Linux>) -> Result<(), LaunchError> {
    let Some(rules) = linux
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().as_deref())
    else {
        return Ok(());
    };
    cairn_kernel::devices::install(dirs, rules).map_err(|e| match e {
        DeviceRulesError::InvalidRule(m) => invalid(format!("linux.resources.devices: {m}")),
        DeviceRulesError::Io { context, source } => LaunchError::Io { context, source },
    })
}

fn rootfs_plan<'a>(
    spec: &Spec,
    linux: Option<&Linux>,
    overlay: Option<&'a OverlayMount>,
) -> Result<RootfsPlan<'a>, LaunchError> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("the spec has no root"))?;
    let path = root.path();
    let meta = std::fs::metadata(path)
        .map_err(|e| host_io(format!("container rootfs {}", path.display()), e))?;
    if !meta.is_dir() {
        return Err(invalid(format!(
            "container rootfs {} is not a directory",
            path.display()
        )));
    }
    let propagation = linux.and_then(|l| l.rootfs_propagation().as_deref());
    let (propagation, final_propagation) = match propagation.unwrap_or("") {
        "" | "private" | "rprivate" => (libc::MS_PRIVATE, None),
        "slave" | "rslave" => (libc::MS_SLAVE, None),
        "shared" | "rshared" => (0, Some(libc::MS_SHARED)),
        "unbindable" | "runbindable" => (libc::MS_PRIVATE, Some(libc::MS_UNBINDABLE)),
        other => return Err(invalid(format!("unknown rootfsPropagation {other:?}"))),
    };
    let parents = match propagation {
        0 => path
            .ancestors()
            .skip(1)
            .map(|p| path_cstring(p, "root path"))
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    Ok(RootfsPlan {
        parents,
        path: path_cstring(path, "root path")?,
        display: path.clone(),
        overlay,
        readonly: root.readonly().unwrap_or(false),
        propagation,
        final_propagation,
    })
}

const FLAG_OPTIONS: &[(&str, c_ulong, bool)] = &[
    ("ro", libc::MS_RDONLY, true),
    ("rw", libc::MS_RDONLY, false),
    ("nosuid", libc::MS_NOSUID, true),
    ("suid", libc::MS_NOSUID, false),
    ("nodev", libc::MS_NODEV, true),
    ("dev", libc::MS_NODEV, false),
    ("noexec", libc::MS_NOEXEC, true),
    ("exec", libc::MS_NOEXEC, false),
    ("sync", libc::MS_SYNCHRONOUS, true),
    ("async", libc::MS_SYNCHRONOUS, false),
    ("dirsync", libc::MS_DIRSYNC, true),
    ("mand", libc::MS_MANDLOCK, true),
    ("nomand", libc::MS_MANDLOCK, false),
    ("noatime", libc::MS_NOATIME, true),
    ("atime", libc::MS_NOATIME, false),
    ("nodiratime", libc::MS_NODIRATIME, true),
    ("diratime", libc::MS_NODIRATIME, false),
    ("relatime", libc::MS_RELATIME, true),
    ("norelatime", libc::MS_RELATIME, false),
    ("strictatime", libc::MS_STRICTATIME, true),
    ("nostrictatime", libc::MS_STRICTATIME, false),
    ("silent", libc::MS_SILENT, true),
    ("loud", libc::MS_SILENT, false),
];

const PROPAGATION_OPTIONS: &[(&str, c_ulong)] = &[
    ("private", libc::MS_PRIVATE),
    ("rprivate", libc::MS_PRIVATE | libc::MS_REC),
    ("shared", libc::MS_SHARED),
    ("rshared", libc::MS_SHARED | libc::MS_REC),
    ("slave", libc::MS_SLAVE),
    ("rslave", libc::MS_SLAVE | libc::MS_REC),
    ("unbindable", libc::MS_UNBINDABLE),
    ("runbindable", libc::MS_UNBINDABLE | libc::MS_REC),
];

/// Per-mount flags a bind mount can change by remounting.
pub(super) const BIND_REMOUNT_FLAGS: c_ulong = libc::MS_RDONLY
    | libc::MS_NOSUID
    | libc::MS_NODEV
    | libc::MS_NOEXEC
    | libc::MS_NOATIME
    | libc::MS_NODIRATIME
    | libc::MS_RELATIME
    | libc::MS_STRICTATIME;

fn mount_plan(m: &Mount) -> Result<MountPlan, LaunchError> {
    let dest = RelPath::new(m.destination(), "mount destination")?;
    let typ = m.typ().as_deref().unwrap_or("");
    let mut flags: c_ulong = 0;
    let mut data: Vec<&str> = Vec::new();
    let mut propagation = Vec::new();
    let mut bind: Option<bool> = (typ == "bind").then_some(false);
    let mut recursive_ro = false;
    for opt in m.options().iter().flatten().map(String::as_str) {
        if let Some(&(_, flag, set)) = FLAG_OPTIONS.iter().find(|(n, _, _)| *n == opt) {
            if set {
                flags |= flag;
            } else {
                flags &= !flag;
            }
            continue;
        }
        if let Some(&(_, p)) = PROPAGATION_OPTIONS.iter().find(|(n, _)| *n == opt) {
            propagation.push(p);
            continue;
        }
        match opt {
            "bind" => bind = Some(bind.unwrap_or(false)),
            "rbind" => bind = Some(true),
            "rro" => recursive_ro = true,
            "idmap" | "ridmap" => {
                return Err(LaunchError::Unsupported(format!(
                    "idmapped mount at {}",
                    dest.display
                )))
            }
            "" | "defaults" | "remount" | "tmpcopyup" => {}
            o if o.starts_with("X-") => {}
            o => data.push(o),
        }
    }
    let source = m.source().as_deref();
    let kind;
    let describe;
    let mut as_file = false;
    if let Some(recursive) = bind {
        let source = source
            .ok_or_else(|| invalid(format!("bind mount at {} has no source", dest.display)))?;
        let meta = std::fs::metadata(source).map_err(|e| {
            host_io(
                format!(
                    "bind mount source {} for {}",
                    source.display(),
                    dest.display
                ),
                e,
            )
        })?;
        as_file = !meta.is_dir();
        describe = format!("bind mount of {} at {}", source.display(), dest.display);
        kind = MountKind::Bind {
            source: path_cstring(source, "mount source")?,
            recursive,
        };
    } else {
        if typ.is_empty() {
            return Err(invalid(format!("mount at {} has no type", dest.display)));
        }
        describe = format!("{typ} mount at {}", dest.display);
        kind = match typ {
            "cgroup" if !host_cgroup2() => MountKind::CgroupV1 {
                hierarchies: Vec::new(),
            },
            "cgroup" => MountKind::Fs {
                fstype: c"cgroup2".into(),
                source: c"cgroup2".into(),
            },
            _ => MountKind::Fs {
                fstype: cstring(typ, "mount type")?,
                source: match source {
                    Some(s) => path_cstring(s, "mount source")?,
                    None => cstring(typ, "mount type")?,
                },
            },
        };
    }
    let data = if data.is_empty() || matches!(kind, MountKind::Bind { .. }) {
        None
    } else {
        Some(cstring(data.join(","), "mount options")?)
    };
    Ok(MountPlan {
        dest,
        kind,
        flags,
        data,
        propagation,
        recursive_ro,
        as_file,
        describe,
    })
}

/// The hierarchies a container sees under `/sys/fs/cgroup` on a v1 host: for each of its
/// cgroup directories (`<mount point>/<cgroups_path>`), the mount point's name and the
/// directory. Without a cgroups path (nothing to show) the tmpfs stays empty.
fn cgroup_binds(
    dirs: &[PathBuf],
    cgroups_path: Option<&Path>,
) -> Result<Vec<CgroupBind>, LaunchError> {
    let Some(rel) = cgroups_path.map(|p| p.strip_prefix("/").unwrap_or(p)) else {
        return Ok(Vec::new());
    };
    let depth = rel.components().count();
    let mut binds: Vec<CgroupBind> = Vec::new();
    for dir in dirs.iter().filter(|d| d.ends_with(rel)) {
        let Some(name) = dir.ancestors().nth(depth).and_then(Path::file_name) else {
            continue;
        };
        let name_bytes = name.as_bytes();
        if binds.iter().any(|b| b.name.as_bytes() == name_bytes) {
            continue;
        }
        let parts: Vec<&[u8]> = name_bytes.split(|&b| b == b',').collect();
        let aliases = match parts.len() {
            1 => Vec::new(),
            _ => parts
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(|p| cstring(p, "cgroup hierarchy name"))
                .collect::<Result<_, _>>()?,
        };
        binds.push(CgroupBind {
            name: cstring(name_bytes, "cgroup hierarchy name")?,
            source: path_cstring(dir, "cgroup directory")?,
            aliases,
        });
    }
    Ok(binds)
}

/// Whether the host's /sys/fs/cgroup is the cgroup v2 unified hierarchy.
fn host_cgroup2() -> bool {
    static V2: OnceLock<bool> = OnceLock::new();
    *V2.get_or_init(|| {
        // SAFETY: statfs is plain data and a valid out pointer.
        unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            libc::statfs(c"/sys/fs/cgroup".as_ptr(), &mut st) == 0
                && st.f_type as u64 == libc::CGROUP2_SUPER_MAGIC as u64
        }
    })
}

const DEFAULT_DEVICES: [(&str, u32, u32); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

fn devices_plan(linux: Option<&Linux>, manage_dev: bool) -> Result<Vec<DevicePlan>, LaunchError> {
    let listed = linux.and_then(|l| l.devices().as_deref()).unwrap_or(&[]);
    let listed_paths: HashSet<&Path> = listed.iter().map(|d| d.path().as_path()).collect();
    let mut out = Vec::new();
    if manage_dev {
        for (path, major, minor) in DEFAULT_DEVICES {
            if listed_paths.contains(Path::new(path)) {
                continue;
            }
            out.push(DevicePlan {
                path: RelPath::new(Path::new(path), "device")?,
                host: cstring(path, "device")?,
                mode: libc::S_IFCHR | 0o666,
                dev: libc::makedev(major, minor),
                uid: None,
                gid: None,
            });
        }
    }
    for d in listed {
        let path = d.path();
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(invalid(format!("device {} has type \"a\"", path.display())))
            }
        };
        let number = |n: i64| {
            u32::try_from(n)
                .map_err(|_| invalid(format!("device {}: bad number {n}", path.display())))
        };
        out.push(DevicePlan {
            path: RelPath::new(path, "device")?,
            host: path_cstring(path, "device")?,
            mode: kind | (d.file_mode().unwrap_or(0o666) & 0o7777),
            dev: libc::makedev(number(d.major())?, number(d.minor())?),
            uid: d.uid(),
            gid: d.gid(),
        });
    }
    Ok(out)
}

fn container_paths(paths: Option<&Vec<String>>, what: &str) -> Result<Vec<CString>, LaunchError> {
    paths
        .into_iter()
        .flatten()
        .map(|p| {
            if !p.starts_with('/') {
                return Err(invalid(format!("{what} {p:?} is not absolute")));
            }
            cstring(p.as_bytes(), what)
        })
        .collect()
}

fn sysctl_plan(linux: Option<&Linux>) -> Result<Vec<Sysctl>, LaunchError> {
    let Some(map) = linux.and_then(|l| l.sysctl().as_ref()) else {
        return Ok(Vec::new());
    };
    map.iter()
        .map(|(key, value)| {
            let rel = if key.contains('/') {
                key.clone()
            } else {
                key.replace('.', "/")
            };
            if rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(invalid(format!("bad sysctl name {key:?}")));
            }
            Ok(Sysctl {
                key: key.clone(),
                path: cstring(format!("/proc/sys/{rel}"), "sysctl name")?,
                value: value.as_bytes().to_vec(),
            })
        })
        .collect()
}

/// Prepares the process part (args, env, PATH lookup list, user, capabilities, limits,
/// seccomp filter).
pub(super) fn process_plan(
    p: &Process,
    seccomp: Option<Arc<cairn_kernel::seccomp::Program>>,
) -> Result<ProcessPlan, LaunchError> {
    let args = p
        .args()
        .as_deref()
        .filter(|a| a.first().is_some_and(|a0| !a0.is_empty()))
        .ok_or_else(|| invalid("process.args is empty"))?;
    let name = args[0].clone();
    let argv = args
        .iter()
        .map(|a| cstring(a.as_bytes(), "process argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let env = p.env().as_deref().unwrap_or(&[]);
    let envp = env
        .iter()
        .map(|e| cstring(e.as_bytes(), "environment variable"))
        .collect::<Result<Vec<_>, _>>()?;
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let search_path = !name.contains('/');
    let candidates = if search_path {
        path_var
            .split(':')
            .map(|dir| {
                let dir = if dir.is_empty() { "." } else { dir };
                cstring(format!("{dir}/{name}"), "PATH entry")
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![cstring(name.as_bytes(), "process argument")?]
    };
    let cwd = p.cwd();
    if !cwd.is_absolute() {
        return Err(invalid(format!(
            "process.cwd {} is not absolute",
            cwd.display()
        )));
    }
    let user = p.user();
    let caps = p.capabilities().as_ref().map(cap_plan).transpose()?;
    let rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| Rlimit {
            resource: rlimit_resource(r.typ()),
            limit: libc::rlimit {
                rlim_cur: r.soft(),
                rlim_max: r.hard(),
            },
            name: r.typ().to_string(),
        })
        .collect();
    Ok(ProcessPlan {
        name,
        argv: CArray::new(argv),
        envp: CArray::new(envp),
        candidates,
        search_path,
        cwd: path_cstring(cwd, "process.cwd")?,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask().unwrap_or(0o022) & 0o777,
        caps,
        no_new_privs: p.no_new_privileges().unwrap_or(false),
        rlimits,
        seccomp,
    })
}

/// Compiles the spec's `linux.seccomp` profile, if any, to BPF.
pub(super) fn compile_seccomp(
    profile: Option<&LinuxSeccomp>,
) -> Result<Option<Arc<cairn_kernel::seccomp::Program>>, LaunchError> {
    let program = profile.map(cairn_kernel::seccomp::compile).transpose();
    let program = program.map_err(|e| invalid(format!("linux.seccomp: {e}")))?;
    Ok(program.map(Arc::new))
}

fn rlimit_resource(t: PosixRlimitType) -> c_int {
    let r = match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    };
    r as c_int
}

fn cap_plan(c: &LinuxCapabilities) -> Result<CapPlan, LaunchError> {
    let last_cap = last_cap()?;
    let mask = if last_cap >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    };
    let bits = |set: &Option<Capabilities>| {
        set.iter().flatten().fold(0u64, |acc, cap| {
            acc | (1u64 << cairn_kernel::caps::capability_number(cap))
        }) & mask
    };
    Ok(CapPlan {
        bounding: bits(c.bounding()),
        effective: bits(c.effective()),
        permitted: bits(c.permitted()),
        inheritable: bits(c.inheritable()),
        ambient: bits(c.ambient()),
        last_cap,
    })
}

/// The highest capability number the running kernel knows.
fn last_cap() -> Result<u32, LaunchError> {
    static LAST: OnceLock<u32> = OnceLock::new();
    if let Some(v) = LAST.get() {
        return Ok(*v);
    }
    let path = "/proc/sys/kernel/cap_last_cap";
    let text = std::fs::read_to_string(path).map_err(|e| host_io(format!("reading {path}"), e))?;
    let v = text
        .trim()
        .parse::<u32>()
        .map_err(|_| invalid(format!("{path} holds {text:?}")))?;
    Ok(*LAST.get_or_init(|| v))
}
