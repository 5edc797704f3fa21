//! Turns a CRI container request into the OCI runtime spec (`config.json`) that cairn's
//! launcher runs: the contract between cairnd and the per-pod shim.
//!
//! The spec carries the defaults kubelet expects from a containerd-like runtime: the
//! Docker/containerd default capability set, the usual `/proc`, `/dev`, `/sys` mounts, masked
//! and read-only kernel paths, runc's default device allow list, and the image's run
//! defaults (Entrypoint/Cmd, Env, WorkingDir, User) merged with what kubelet asked for.
//!
//! Security contexts are checked and turned into the spec here: capabilities, the seccomp
//! profile (cairn's RuntimeDefault from [`cairn_kernel::seccomp`], Unconfined, or a Localhost file
//! read and compiled now), AppArmor and SELinux requests (refused when they name a profile or
//! label: this node has neither), namespace options (conflicts refused; pid TARGET resolved by
//! the runtime through [`set_pid_namespace`]) and namespaced sysctls only
//! ([`validate_sysctls`]; [`validate_sandbox`] checks a RunPodSandbox request up front).
//!
//! Everything here is computed from its inputs, except a few reads of the host: the CRI
//! devices are `stat`ed for their type and numbers, a missing CRI mount source is created as a
//! directory (Docker's behaviour, which hostPath volumes rely on) and symlinks in mount sources
//! are resolved, `/sys/fs/cgroup` is probed to decide whether containers get a cgroup
//! namespace (cgroup v2 only), Localhost seccomp profiles are read, and cairnd's own bounding
//! set bounds what a privileged container gets. Privileged containers also get every device
//! node of the host's `/dev`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use cairn_kernel::caps::{capability_number, ALL_CAPABILITIES, DEFAULT_CAPABILITIES};
use cairn_kernel::devices::{default_device_rules, device_rule};
use cairn_proto::cri;
use cairn_snapshotter::manifest::ImageConfig;
use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxCapabilities, LinuxCpu, LinuxDevice, LinuxDeviceCgroup,
    LinuxDeviceType, LinuxHugepageLimit, LinuxIdMappingBuilder, LinuxMemory, LinuxNamespace,
    LinuxNamespaceType, LinuxResources, Mount, Process, Root, Spec, User, VERSION,
};

/// `PATH` given to containers whose image and CRI config set none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Cgroup parent used when the pod has none (e.g. a pod made by hand with crictl).
pub const DEFAULT_CGROUP_PARENT: &str = "/cairn";

/// Kernel paths hidden from non-privileged containers (unless CRI gives its own list).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Kernel paths read-only in non-privileged containers (unless CRI gives its own list).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Smallest memory limit accepted (a container below this cannot even start).
pub const MIN_MEMORY_LIMIT: i64 = 4 << 20;

/// Allowed range of `cpu_period`, in microseconds.
const CPU_PERIOD_RANGE: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;

/// Annotation keys cairn writes into every container spec.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

/// Overlayfs xattrs marking an opaque directory (the snapshotter writes the trusted one).
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// Why a spec could not be built. Messages name the container and the offending field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The CRI request or the image asks for something impossible or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Something the request names (a host device) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The node is not set up for what the request asks (a volume source on a mount that
    /// does not propagate, for a propagating mount).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A file could not be read or created.
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SpecError {
    fn io(context: impl Into<String>, path: &Path, source: io::Error) -> SpecError {
        SpecError::Io {
            context: context.into(),
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Everything about the pod the container spec needs (paths under the pod's run dir).
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    pub pod_id: String,
    pub hostname: String,
    /// Bind-mounted namespace files of the pod; `None` = the host's namespace.
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    /// `Some` = containers share the pod's pid namespace (`NamespaceMode::POD`);
    /// `None` and not `host_pid` = a new pid namespace per container.
    pub pidns: Option<PathBuf>,
    pub host_pid: bool,
    pub resolv_conf: Option<PathBuf>,
    pub hosts: PathBuf,
    pub hostname_file: PathBuf,
    /// The pod's shared `/dev/shm`; `None` = each container gets its own tmpfs.
    pub shm: Option<PathBuf>,
    /// From `LinuxPodSandboxConfig.cgroup_parent`.
    pub cgroup_parent: String,
    /// From `LinuxPodSandboxConfig.sysctls`.
    pub sysctls: HashMap<String, String>,
    /// The pod's user namespace (`userns_options` mode POD); `None` = the host's.
    pub userns: Option<PodUserns>,
}

/// A pod's user namespace: the bind-mounted namespace file and its id mappings, as
/// RunPodSandbox asked for them (validated by [`validate_sandbox`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodUserns {
    pub path: PathBuf,
    pub uids: Vec<cri::IdMapping>,
    pub gids: Vec<cri::IdMapping>,
}

/// The host id that container id `id` maps to.
pub fn host_id_of(maps: &[cri::IdMapping], id: u32) -> Option<u32> {
    maps.iter()
        .find(|m| id >= m.container_id && u64::from(id) < end(m.container_id, m.length))
        .map(|m| m.host_id + (id - m.container_id))
}

fn end(start: u32, length: u32) -> u64 {
    u64::from(start) + u64::from(length)
}

/// The user namespace RunPodSandbox asks for: `Some` only for mode POD.
pub fn requested_userns(config: &cri::PodSandboxConfig) -> Option<&cri::UserNamespace> {
    config
        .linux
        .as_ref()?
        .security_context
        .as_ref()?
        .namespace_options
        .as_ref()?
        .userns_options
        .as_ref()
        .filter(|u| u.mode == cri::NamespaceMode::Pod as i32)
}

/// The container being created.
#[derive(Debug)]
pub struct ContainerContext<'a> {
    pub id: &'a str,
    pub config: &'a cri::ContainerConfig,
    pub image: &'a ImageConfig,
    /// Files of the image's root filesystem, for /etc/passwd and /etc/group lookups: the
    /// snapshot's lower dirs, topmost first (a file is taken from the first dir that has it;
    /// a whiteout — char device 0/0 — or an opaque parent dir hides lower ones).
    pub rootfs_layers: &'a [PathBuf],
    /// Where the shim will mount the overlay (`spec.root.path`).
    pub rootfs: PathBuf,
    /// The container's cgroup, see [`cgroup_path`].
    pub cgroup_path: String,
}

/// The container's cgroup: `cgroup_parent/id`, absolute, with [`DEFAULT_CGROUP_PARENT`]
/// when the pod has no parent.
pub fn cgroup_path(cgroup_parent: &str, id: &str) -> String {
    let parent = cgroup_parent.trim_end_matches('/');
    let parent = if parent.is_empty() {
        DEFAULT_CGROUP_PARENT
    } else {
        parent
    };
    if parent.starts_with('/') {
        format!("{parent}/{id}")
    } else {
        format!("/{parent}/{id}")
    }
}

/// How errors name a container: `container "name" (id)`.
fn label(config: &cri::ContainerConfig, id: &str) -> String {
    let name = config.metadata.as_ref().map_or("", |m| m.name.as_str());
    match (name.is_empty(), id.is_empty()) {
        (false, false) => format!("container {name:?} ({id})"),
        (false, true) => format!("container {name:?}"),
        (true, false) => format!("container {id}"),
        (true, true) => "container".to_string(),
    }
}

fn invalid(who: &str, msg: impl std::fmt::Display) -> SpecError {
    SpecError::InvalidArgument(format!("{who}: {msg}"))
}

fn security_context(config: &cri::ContainerConfig) -> Option<&cri::LinuxContainerSecurityContext> {
    config.linux.as_ref()?.security_context.as_ref()
}

fn resources_of(config: &cri::ContainerConfig) -> Option<&cri::LinuxContainerResources> {
    config.linux.as_ref()?.resources.as_ref()
}

/// Builds the whole OCI runtime spec of a container.
pub fn build_spec(pod: &PodContext, c: &ContainerContext) -> Result<Spec, SpecError> {
    let who = label(c.config, c.id);
    let sc = security_context(c.config);
    let privileged = sc.is_some_and(|s| s.privileged);
    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);

    check_container_namespaces(pod, sc.and_then(|s| s.namespace_options.as_ref()), &who)?;
    check_apparmor(
        sc.and_then(|s| s.apparmor.as_ref()),
        sc.map_or("", legacy_apparmor),
        &who,
    )?;
    check_selinux(sc.and_then(|s| s.selinux_options.as_ref()), &who)?;
    validate_sysctls(&pod.sysctls, pod.netns.is_none(), pod.ipcns.is_none(), &who)?;
    let process = process(pod, c, &who, privileged)?;
    let bounding = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default();
    let seccomp = seccomp_profile(sc, privileged, &bounding, &who)?;
    let mounts = mounts(pod, c, &who, privileged, readonly_rootfs)?;
    let mut linux = linux(pod, c, &who, privileged)?;
    linux.set_seccomp(seccomp);

    let mut root = Root::default();
    root.set_path(c.rootfs.clone())
        .set_readonly(Some(readonly_rootfs));

    let mut annotations = HashMap::new();
    annotations.insert(
        ANNOTATION_CONTAINER_TYPE.to_string(),
        "container".to_string(),
    );
    annotations.insert(ANNOTATION_SANDBOX_ID.to_string(), pod.pod_id.clone());
    if let Some(meta) = &c.config.metadata {
        annotations.insert(ANNOTATION_CONTAINER_NAME.to_string(), meta.name.clone());
    }

    // Setting a hostname in the host's UTS namespace would rename the node.
    let hostname = pod.utsns.as_ref().map(|_| pod.hostname.clone());

    let mut spec = Spec::default();
    spec.set_version(VERSION.to_string())
        .set_root(Some(root))
        .set_mounts(Some(mounts))
        .set_process(Some(process))
        .set_hostname(hostname)
        .set_domainname(None)
        .set_hooks(None)
        .set_annotations(Some(annotations))
        .set_linux(Some(linux))
        .set_solaris(None)
        .set_windows(None)
        .set_vm(None)
        .set_zos(None);
    Ok(spec)
}

/// The `process` section: command, env, cwd, user, capabilities.
fn process(
    pod: &PodContext,
    c: &ContainerContext,
    who: &str,
    privileged: bool,
) -> Result<Process, SpecError> {
    let sc = security_context(c.config);
    let args = command(c.config, c.image)?;
    let mut env = environment(c.config, c.image, &pod.hostname);
    let cwd = working_dir(c.config, c.image, who)?;
    let (user, home) = resolve_user_and_home(c)?;
    // HOME from /etc/passwd when neither the image nor CRI set it.
    if !env.iter().any(|e| env_key(e) == "HOME") {
        env.push(format!("HOME={home}"));
    }
    let capabilities = capabilities(sc.and_then(|s| s.capabilities.as_ref()), privileged, who)?;
    let oom_score_adj = oom_score_adj(c.config, who)?;

    let mut process = Process::default();
    process
        .set_terminal(Some(c.config.tty))
        .set_console_size(None)
        .set_user(user)
        .set_args(Some(args))
        .set_command_line(None)
        .set_env(Some(env))
        .set_cwd(cwd)
        .set_capabilities(Some(capabilities))
        // No rlimits: the container inherits the shim's limits.
        .set_rlimits(None)
        .set_no_new_privileges(Some(sc.is_some_and(|s| s.no_new_privs)))
        .set_apparmor_profile(None)
        .set_oom_score_adj(oom_score_adj)
        .set_selinux_label(None)
        .set_io_priority(None)
        .set_scheduler(None)
        .set_exec_cpu_affinity(None);
    Ok(process)
}

/// The command kubelet expects: CRI command replaces the image Entrypoint, CRI args replace
/// Cmd; if CRI gives a command but no args, the image Cmd is not used (Docker semantics: a
/// command set drops the image's Cmd). Errors if the result is empty.
pub fn command(
    config: &cri::ContainerConfig,
    image: &ImageConfig,
) -> Result<Vec<String>, SpecError> {
    let run = &image.config;
    let argv: Vec<String> = if !config.command.is_empty() {
        config.command.iter().chain(&config.args).cloned().collect()
    } else {
        let entrypoint = run.entrypoint.iter().flatten();
        if config.args.is_empty() {
            entrypoint
                .chain(run.cmd.iter().flatten())
                .cloned()
                .collect()
        } else {
            entrypoint.chain(&config.args).cloned().collect()
        }
    };
    if argv.first().is_none_or(|arg0| arg0.is_empty()) {
        return Err(invalid(
            &label(config, ""),
            "no command: neither the CRI command/args nor the image's Entrypoint/Cmd give one",
        ));
    }
    Ok(argv)
}

/// Env: `HOSTNAME`, then the image's env, then the CRI envs, each overriding earlier ones by
/// key (in place); `PATH` defaulted if none sets it, `TERM=xterm` added for a tty.
pub fn environment(
    config: &cri::ContainerConfig,
    image: &ImageConfig,
    hostname: &str,
) -> Vec<String> {
    let mut env = vec![format!("HOSTNAME={hostname}")];
    for entry in &image.config.env {
        set_env(&mut env, entry.clone());
    }
    for kv in config.envs.iter().filter(|kv| !kv.key.is_empty()) {
        set_env(&mut env, format!("{}={}", kv.key, kv.value));
    }
    if !env.iter().any(|e| env_key(e) == "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if config.tty && !env.iter().any(|e| env_key(e) == "TERM") {
        env.push("TERM=xterm".to_string());
    }
    env
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(key, _)| key)
}

/// Replaces the entry with the same key, or appends.
fn set_env(env: &mut Vec<String>, entry: String) {
    let key = env_key(&entry);
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

/// CRI working_dir (must be absolute), else the image's WorkingDir, else `/`.
fn working_dir(
    config: &cri::ContainerConfig,
    image: &ImageConfig,
    who: &str,
) -> Result<PathBuf, SpecError> {
    if !config.working_dir.is_empty() {
        if !config.working_dir.starts_with('/') {
            return Err(invalid(
                who,
                format!("working_dir {:?} is not absolute", config.working_dir),
            ));
        }
        return Ok(PathBuf::from(&config.working_dir));
    }
    match image.config.working_dir.as_deref() {
        Some(dir) if dir.starts_with('/') => Ok(PathBuf::from(dir)),
        Some(dir) if !dir.is_empty() => Ok(Path::new("/").join(dir)),
        _ => Ok(PathBuf::from("/")),
    }
}

fn oom_score_adj(config: &cri::ContainerConfig, who: &str) -> Result<Option<i32>, SpecError> {
    let Some(adj) = resources_of(config).map(|r| r.oom_score_adj) else {
        return Ok(None);
    };
    if !(-1000..=1000).contains(&adj) {
        return Err(invalid(
            who,
            format!("resources.oom_score_adj {adj} out of range [-1000, 1000]"),
        ));
    }
    Ok(Some(adj as i32))
}

// ---------------------------------------------------------------------------------------------
// Users

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// One line of /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn db_lines(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(['+', '-']))
        .map(|l| l.split(':').collect())
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    db_lines(text)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: (*f.first()?).to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map(|h| h.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    db_lines(text)
        .filter_map(|f| {
            Some(GroupEntry {
                name: (*f.first()?).to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// A user or group as written: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Id {
    Num(u32),
    Name(String),
}

fn parse_id(s: &str) -> Id {
    match s.parse::<u32>() {
        Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => Id::Num(n),
        _ => Id::Name(s.to_string()),
    }
}

fn to_id(value: i64, who: &str, field: &str) -> Result<u32, SpecError> {
    u32::try_from(value).map_err(|_| invalid(who, format!("{field} {value} is not a valid id")))
}

/// The user and group the container asks for, before looking names up.
fn requested_user(c: &ContainerContext, who: &str) -> Result<(Option<Id>, Option<Id>), SpecError> {
    let sc = security_context(c.config);
    let group = match sc.and_then(|s| s.run_as_group.as_ref()) {
        Some(g) => Some(Id::Num(to_id(g.value, who, "run_as_group")?)),
        None => None,
    };
    let named = sc.is_some_and(|s| s.run_as_user.is_some() || !s.run_as_username.is_empty());
    if group.is_some() && !named {
        // As containerd and CRI-O: a group says nothing without the user it is for.
        return Err(invalid(
            who,
            "run_as_group is set without run_as_user or run_as_username",
        ));
    }
    if let Some(u) = sc.and_then(|s| s.run_as_user.as_ref()) {
        return Ok((Some(Id::Num(to_id(u.value, who, "run_as_user")?)), group));
    }
    if let Some(name) = sc
        .map(|s| s.run_as_username.as_str())
        .filter(|n| !n.is_empty())
    {
        return Ok((Some(Id::Name(name.to_string())), group));
    }
    let image_user = c.image.config.user.as_deref().unwrap_or("").trim();
    if image_user.is_empty() {
        return Ok((None, group));
    }
    let (user, image_group) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    if user.is_empty() || image_group.is_some_and(str::is_empty) {
        return Err(invalid(
            who,
            format!("image User {image_user:?} is malformed"),
        ));
    }
    Ok((Some(parse_id(user)), group.or(image_group.map(parse_id))))
}

/// User resolution: CRI run_as_user / run_as_username / run_as_group, else the image's User
/// ("uid", "uid:gid", "name", "name:group"); names are looked up in the image's /etc/passwd
/// and /etc/group through `rootfs_layers`. The gid defaults to the passwd entry's (or 0). The
/// additional gids are the primary gid, the groups of /etc/group listing the user (unless the
/// supplemental groups policy is Strict) and the CRI supplemental groups.
pub fn resolve_user(c: &ContainerContext) -> Result<User, SpecError> {
    resolve_user_and_home(c).map(|(user, _)| user)
}

/// [`resolve_user`] and the user's home directory: the passwd entry's, `/` when the
/// image does not know the uid or gives no home (as Docker and containerd do).
fn resolve_user_and_home(c: &ContainerContext) -> Result<(User, String), SpecError> {
    let who = label(c.config, c.id);
    let (user, group) = requested_user(c, &who)?;
    let passwd = read_layered(c.rootfs_layers, Path::new("etc/passwd"))?
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    let groups = read_layered(c.rootfs_layers, Path::new("etc/group"))?
        .map(|t| parse_group(&t))
        .unwrap_or_default();

    let (uid, entry) = match user {
        None => (0, passwd.iter().find(|p| p.uid == 0)),
        Some(Id::Num(uid)) => (uid, passwd.iter().find(|p| p.uid == uid)),
        Some(Id::Name(name)) => {
            let entry = passwd.iter().find(|p| p.name == name).ok_or_else(|| {
                invalid(
                    &who,
                    format!("user {name:?} not found in the image's /etc/passwd"),
                )
            })?;
            (entry.uid, Some(entry))
        }
    };
    let gid = match group {
        Some(Id::Num(gid)) => gid,
        Some(Id::Name(name)) => {
            groups
                .iter()
                .find(|g| g.name == name)
                .ok_or_else(|| {
                    invalid(
                        &who,
                        format!("group {name:?} not found in the image's /etc/group"),
                    )
                })?
                .gid
        }
        None => entry.map_or(0, |e| e.gid),
    };

    let mut additional = vec![gid];
    let sc = security_context(c.config);
    let strict = sc.is_some_and(|s| {
        s.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32
    });
    if let (Some(entry), false) = (entry, strict) {
        additional.extend(
            groups
                .iter()
                .filter(|g| g.members.contains(&entry.name))
                .map(|g| g.gid),
        );
    }
    for g in sc
        .map(|s| s.supplemental_groups.as_slice())
        .unwrap_or_default()
    {
        additional.push(to_id(*g, &who, "supplemental_groups")?);
    }
    let mut seen = HashSet::new();
    additional.retain(|g| seen.insert(*g));

    let mut out = User::default();
    out.set_uid(uid)
        .set_gid(gid)
        .set_additional_gids(Some(additional));
    let home = entry
        .map(|e| e.home.clone())
        .filter(|h| h.starts_with('/'))
        .unwrap_or_else(|| "/".to_string());
    Ok((out, home))
}

/// What one layer says about a path.
enum Probe {
    /// The layer has the file.
    File(PathBuf),
    /// The layer hides the path from lower layers (whiteout, opaque dir, non-dir parent).
    Hidden,
    /// The layer says nothing about it: look lower.
    Absent,
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    OPAQUE_XATTRS.iter().any(|name| {
        let mut buf = [0u8; 8];
        matches!(rustix::fs::lgetxattr(dir, *name, &mut buf[..]), Ok(n) if buf[..n] == *b"y")
    })
}

/// Looks `rel` (e.g. `etc/passwd`) up in one layer. Symlinks are not followed: a symlinked
/// file or parent counts as hiding the path (it could point anywhere, even out of the image).
fn probe(layer: &Path, rel: &Path) -> Result<Probe, SpecError> {
    let parts: Vec<_> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut path = layer.to_path_buf();
    let mut opaque_parent = false;
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(if opaque_parent {
                    Probe::Hidden
                } else {
                    Probe::Absent
                });
            }
            Err(e) => return Err(SpecError::io("read image file", &path, e)),
        };
        if is_whiteout(&meta) {
            return Ok(Probe::Hidden);
        }
        if i + 1 == parts.len() {
            return Ok(if meta.is_file() {
                Probe::File(path)
            } else {
                Probe::Hidden
            });
        }
        if !meta.is_dir() {
            return Ok(Probe::Hidden);
        }
        opaque_parent |= is_opaque(&path);
    }
    Ok(Probe::Absent)
}

/// Reads `rel` from the topmost layer that has it; `None` if no layer has it or one hides it.
fn read_layered(layers: &[PathBuf], rel: &Path) -> Result<Option<String>, SpecError> {
    for layer in layers {
        match probe(layer, rel)? {
            Probe::File(path) => {
                let bytes =
                    fs::read(&path).map_err(|e| SpecError::io("read image file", &path, e))?;
                return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
            }
            Probe::Hidden => return Ok(None),
            Probe::Absent => {}
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// Capabilities

fn parse_capability(name: &str, who: &str) -> Result<Capability, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse()
        .map_err(|_| invalid(who, format!("unknown capability {name:?}")))
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// The capabilities a privileged container, or CRI's "ALL", gets: those of cairnd's own
/// bounding set (as containerd does), since the kernel cannot grant a container more.
pub fn current_capabilities() -> Capabilities {
    static CURRENT: std::sync::OnceLock<Capabilities> = std::sync::OnceLock::new();
    CURRENT
        .get_or_init(|| {
            let bounding = fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    let line = s.lines().find(|l| l.starts_with("CapBnd:"))?;
                    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
                })
                .unwrap_or(u64::MAX);
            ALL_CAPABILITIES
                .into_iter()
                .filter(|c| bounding & (1u64 << capability_number(c)) != 0)
                .collect()
        })
        .clone()
}

/// The capability set: the default set (all when privileged) with CRI drops then adds applied.
/// "ALL" in add starts from every capability, "ALL" in drop from none.
fn capability_set(
    caps: Option<&cri::Capability>,
    privileged: bool,
    who: &str,
) -> Result<Capabilities, SpecError> {
    if privileged {
        return Ok(current_capabilities());
    }
    let (add, drop) = caps.map_or((&[][..], &[][..]), |c| {
        (
            c.add_capabilities.as_slice(),
            c.drop_capabilities.as_slice(),
        )
    });
    let mut set: Capabilities = if add.iter().any(|n| is_all(n)) {
        current_capabilities()
    } else {
        DEFAULT_CAPABILITIES.into_iter().collect()
    };
    if drop.iter().any(|n| is_all(n)) {
        set.clear();
    }
    for name in drop.iter().filter(|n| !is_all(n)) {
        set.remove(&parse_capability(name, who)?);
    }
    for name in add.iter().filter(|n| !is_all(n)) {
        set.insert(parse_capability(name, who)?);
    }
    Ok(set)
}

/// The process capabilities: the set in bounding, effective and permitted; CRI ambient
/// capabilities are added to every set (they need inheritable and permitted to work).
fn capabilities(
    caps: Option<&cri::Capability>,
    privileged: bool,
    who: &str,
) -> Result<LinuxCapabilities, SpecError> {
    let mut set = capability_set(caps, privileged, who)?;
    let ambient = caps
        .map(|c| c.add_ambient_capabilities.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|n| parse_capability(n, who))
        .collect::<Result<Capabilities, _>>()?;
    set.extend(ambient.iter().copied());
    let ambient = (!ambient.is_empty()).then_some(ambient);
    let mut out = LinuxCapabilities::default();
    out.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(ambient.clone())
        .set_ambient(ambient);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Mounts

fn mount(dest: &str, typ: &str, source: impl Into<PathBuf>, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest))
        .set_typ(Some(typ.to_string()))
        .set_source(Some(source.into()))
        .set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// Lexically normalised absolute path (`//a/./b/` -> `/a/b`), for comparing destinations.
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

fn propagation(value: i32, who: &str, dest: &str) -> Result<&'static str, SpecError> {
    match cri::MountPropagation::try_from(value) {
        Ok(cri::MountPropagation::PropagationPrivate) => Ok("rprivate"),
        Ok(cri::MountPropagation::PropagationHostToContainer) => Ok("rslave"),
        Ok(cri::MountPropagation::PropagationBidirectional) => Ok("rshared"),
        Err(_) => Err(invalid(
            who,
            format!("mount {dest}: unknown propagation {value}"),
        )),
    }
}

/// Makes sure a bind source exists (creating a missing one as a directory, as Docker did)
/// and resolves its symlinks.
fn bind_source(host_path: &str, who: &str, dest: &str) -> Result<PathBuf, SpecError> {
    if host_path.is_empty() {
        return Err(invalid(who, format!("mount {dest}: empty host_path")));
    }
    let path = Path::new(host_path);
    match fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(path)
                .map_err(|e| SpecError::io(format!("{who}: create mount source"), path, e))?;
        }
        Err(e) => return Err(SpecError::io(format!("{who}: stat mount source"), path, e)),
    }
    fs::canonicalize(path)
        .map_err(|e| SpecError::io(format!("{who}: resolve mount source"), path, e))
}

/// A propagating mount needs a source that propagates: for `rshared` (BIDIRECTIONAL) one on
/// a shared mount, for `rslave` (HOST_TO_CONTAINER) on a shared or slave mount; else the
/// mounts a user expects to see would silently not appear. containerd refuses these too.
fn check_source_propagates(
    source: &Path,
    prop: &str,
    who: &str,
    dest: &str,
) -> Result<(), SpecError> {
    let table = cairn_kernel::mountinfo::read()
        .map_err(|e| SpecError::io(format!("{who}: read"), Path::new("/proc/self/mountinfo"), e))?;
    let Some(mount) = cairn_kernel::mountinfo::mount_of(&table, source) else {
        return Ok(());
    };
    let ok = match prop {
        "rshared" => mount.is_shared(),
        _ => mount.is_shared() || mount.is_slave(),
    };
    if ok {
        return Ok(());
    }
    let (mode, needs) = match prop {
        "rshared" => ("bidirectional", "a shared mount"),
        _ => ("host-to-container", "a shared or slave mount"),
    };
    Err(SpecError::FailedPrecondition(format!(
        "{who}: mount {dest}: {mode} propagation needs its source {} on {needs}, but {} is \
         mounted private (make it shared, e.g. `mount --make-rshared {}`, as systemd does for /)",
        source.display(),
        mount.mount_point.display(),
        mount.mount_point.display()
    )))
}

/// The CRI mounts as OCI bind mounts, parents before children.
fn cri_mounts(config: &cri::ContainerConfig, who: &str) -> Result<Vec<(String, Mount)>, SpecError> {
    let mut out = Vec::new();
    for m in &config.mounts {
        if !m.container_path.starts_with('/') {
            return Err(invalid(
                who,
                format!(
                    "mount container_path {:?} is not absolute",
                    m.container_path
                ),
            ));
        }
        let dest = clean_path(&m.container_path);
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
            return Err(invalid(
                who,
                format!("mount {dest}: image volumes are not supported"),
            ));
        }
        if m.recursive_read_only && !m.readonly {
            return Err(invalid(
                who,
                format!("mount {dest}: recursive_read_only needs readonly"),
            ));
        }
        let prop = propagation(m.propagation, who, &dest)?;
        if m.recursive_read_only && prop != "rprivate" {
            return Err(invalid(
                who,
                format!("mount {dest}: recursive_read_only needs private propagation"),
            ));
        }
        let source = bind_source(&m.host_path, who, &dest)?;
        if prop != "rprivate" {
            check_source_propagates(&source, prop, who, &dest)?;
        }
        let access = match (m.readonly, m.recursive_read_only) {
            (true, true) => "rro",
            (true, false) => "ro",
            _ => "rw",
        };
        let mount = mount(&dest, "bind", source, &["rbind", prop, access]);
        out.push((dest, mount));
    }
    out.sort_by_key(|(dest, _)| dest.matches('/').count() - usize::from(dest == "/"));
    Ok(out)
}

/// All mounts: the system ones, /dev/shm, the pod's hostname/hosts/resolv.conf, then the CRI
/// mounts. A default mount is left out when a CRI mount has its destination (or, for mounts
/// under /dev, when CRI mounts /dev).
fn mounts(
    pod: &PodContext,
    c: &ContainerContext,
    who: &str,
    privileged: bool,
    readonly_rootfs: bool,
) -> Result<Vec<Mount>, SpecError> {
    let cri = cri_mounts(c.config, who)?;
    let covered: HashSet<&str> = cri.iter().map(|(dest, _)| dest.as_str()).collect();
    let sys_access = if privileged { "rw" } else { "ro" };
    let file_access = if readonly_rootfs { "ro" } else { "rw" };

    let mut defaults = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_access],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_access],
        ),
    ];
    defaults.push(match &pod.shm {
        Some(shm) => mount("/dev/shm", "bind", shm, &["rbind", "rprivate", "rw"]),
        None => mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    });
    let files = [
        ("/etc/hostname", Some(&pod.hostname_file)),
        ("/etc/hosts", Some(&pod.hosts)),
        ("/etc/resolv.conf", pod.resolv_conf.as_ref()),
    ];
    for (dest, source) in files {
        if let Some(source) = source {
            defaults.push(mount(
                dest,
                "bind",
                source,
                &["rbind", "rprivate", file_access],
            ));
        }
    }

    let dev_covered = covered.contains("/dev");
    let mut out: Vec<Mount> = defaults
        .into_iter()
        .filter(|m| {
            let dest = m.destination().to_string_lossy();
            let hidden =
                covered.contains(dest.as_ref()) || (dev_covered && dest.starts_with("/dev/"));
            !hidden
        })
        .collect();
    out.extend(cri.into_iter().map(|(_, m)| m));
    Ok(out)
}

/// The rootfs propagation the CRI mounts need: rshared for a bidirectional mount, rslave for
/// a host-to-container one, the launcher's default otherwise.
fn rootfs_propagation(config: &cri::ContainerConfig) -> Option<String> {
    let props: Vec<i32> = config.mounts.iter().map(|m| m.propagation).collect();
    if props.contains(&(cri::MountPropagation::PropagationBidirectional as i32)) {
        Some("rshared".to_string())
    } else if props.contains(&(cri::MountPropagation::PropagationHostToContainer as i32)) {
        Some("rslave".to_string())
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Linux: namespaces, resources, devices

fn namespace(typ: LinuxNamespaceType, path: Option<&PathBuf>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ).set_path(path.cloned());
    ns
}

/// The pid namespace: the container's own namespace option decides when kubelet sent one
/// (NODE = host, CONTAINER = new, POD = the pod's); otherwise the pod context does.
fn pid_namespace(pod: &PodContext, config: &cri::ContainerConfig) -> Option<LinuxNamespace> {
    let mode = security_context(config)
        .and_then(|s| s.namespace_options.as_ref())
        .map(|o| cri::NamespaceMode::try_from(o.pid).unwrap_or(cri::NamespaceMode::Pod));
    let own = || namespace(LinuxNamespaceType::Pid, None);
    match mode {
        Some(cri::NamespaceMode::Node) => None,
        Some(cri::NamespaceMode::Container) => Some(own()),
        // A placeholder: the runtime points it at the target's namespace, see
        // [`set_pid_namespace`].
        Some(cri::NamespaceMode::Target) => Some(own()),
        _ if pod.pidns.is_some() => Some(namespace(LinuxNamespaceType::Pid, pod.pidns.as_ref())),
        _ if pod.host_pid => None,
        _ => Some(own()),
    }
}

/// The container whose pid namespace a container with pid mode TARGET joins.
pub fn pid_target(config: &cri::ContainerConfig) -> Option<&str> {
    security_context(config)
        .and_then(|s| s.namespace_options.as_ref())
        .filter(|o| o.pid == cri::NamespaceMode::Target as i32)
        .map(|o| o.target_id.as_str())
        .filter(|t| !t.is_empty())
}

/// Makes the container join the pid namespace at `path` (for TARGET: the target container's
/// `/proc/<pid>/ns/pid`), replacing the spec's pid namespace entry.
pub fn set_pid_namespace(spec: &mut Spec, path: PathBuf) {
    let Some(namespaces) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    else {
        return;
    };
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Pid);
    namespaces.insert(0, namespace(LinuxNamespaceType::Pid, Some(&path)));
}

/// Whether the host runs the unified cgroup v2 hierarchy.
pub fn host_cgroup_v2() -> bool {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
    statfs("/sys/fs/cgroup").is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

fn namespaces(
    pod: &PodContext,
    c: &ContainerContext,
    privileged: bool,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let mut out = Vec::new();
    // The user namespace first: the pod's other namespaces belong to it.
    if let Some(u) = &pod.userns {
        out.push(namespace(LinuxNamespaceType::User, Some(&u.path)));
    }
    out.extend(pid_namespace(pod, c.config));
    let shared = [
        (LinuxNamespaceType::Network, &pod.netns),
        (LinuxNamespaceType::Ipc, &pod.ipcns),
        (LinuxNamespaceType::Uts, &pod.utsns),
    ];
    for (typ, path) in shared {
        if path.is_some() {
            out.push(namespace(typ, path.as_ref()));
        }
    }
    out.push(namespace(LinuxNamespaceType::Mount, None));
    // A cgroup namespace hides the host's hierarchy; only on v2, and not for privileged
    // containers (which may manage the host's cgroups).
    if !privileged && host_cgroup_v2() {
        out.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    Ok(out)
}

fn linux(
    pod: &PodContext,
    c: &ContainerContext,
    who: &str,
    privileged: bool,
) -> Result<Linux, SpecError> {
    let sc = security_context(c.config);
    let (devices, device_rules) = devices(c.config, who, privileged)?;
    let mut resources = resources(c.config, who)?;
    resources.set_devices(Some(device_rules));

    let (masked, readonly) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        let pick = |cri: Option<&Vec<String>>, default: &[&str]| match cri {
            Some(list) if !list.is_empty() => list.clone(),
            _ => default.iter().map(|p| p.to_string()).collect(),
        };
        (
            pick(sc.map(|s| &s.masked_paths), &MASKED_PATHS),
            pick(sc.map(|s| &s.readonly_paths), &READONLY_PATHS),
        )
    };
    let sysctl = (!pod.sysctls.is_empty()).then(|| pod.sysctls.clone());

    let oci_maps = |maps: &[cri::IdMapping]| {
        maps.iter()
            .map(|m| {
                LinuxIdMappingBuilder::default()
                    .host_id(m.host_id)
                    .container_id(m.container_id)
                    .size(m.length)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(who, format!("user namespace mappings: {e}")))
    };
    let mut linux = Linux::default();
    linux
        .set_uid_mappings(pod.userns.as_ref().map(|u| oci_maps(&u.uids)).transpose()?)
        .set_gid_mappings(pod.userns.as_ref().map(|u| oci_maps(&u.gids)).transpose()?)
        .set_sysctl(sysctl)
        .set_resources(Some(resources))
        .set_cgroups_path(Some(PathBuf::from(&c.cgroup_path)))
        .set_namespaces(Some(namespaces(pod, c, privileged)?))
        .set_devices(Some(devices))
        .set_seccomp(None)
        .set_rootfs_propagation(rootfs_propagation(c.config))
        .set_masked_paths(Some(masked))
        .set_readonly_paths(Some(readonly))
        .set_mount_label(None)
        .set_intel_rdt(None)
        .set_personality(None)
        .set_net_devices(None);
    Ok(linux)
}

// ---------------------------------------------------------------------------------------------
// Security profiles, sysctls, namespace options

/// A seccomp or AppArmor profile as CRI asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Profile {
    RuntimeDefault,
    Unconfined,
    Localhost(String),
}

fn profile_of(p: &cri::SecurityProfile, field: &str, who: &str) -> Result<Profile, SpecError> {
    use cri::security_profile::ProfileType;
    match ProfileType::try_from(p.profile_type) {
        Ok(ProfileType::RuntimeDefault) => Ok(Profile::RuntimeDefault),
        Ok(ProfileType::Unconfined) => Ok(Profile::Unconfined),
        Ok(ProfileType::Localhost) if p.localhost_ref.is_empty() => Err(invalid(
            who,
            format!("{field}: a Localhost profile needs localhost_ref"),
        )),
        Ok(ProfileType::Localhost) => Ok(Profile::Localhost(p.localhost_ref.clone())),
        Err(_) => Err(invalid(
            who,
            format!("{field}: unknown profile type {}", p.profile_type),
        )),
    }
}

/// The deprecated string fields: `runtime/default` (or `docker/default`), `unconfined`,
/// `localhost/<ref>`; empty = not said.
fn legacy_profile(value: &str, field: &str, who: &str) -> Result<Option<Profile>, SpecError> {
    match value {
        "" => Ok(None),
        "runtime/default" | "docker/default" => Ok(Some(Profile::RuntimeDefault)),
        "unconfined" => Ok(Some(Profile::Unconfined)),
        v => match v.strip_prefix("localhost/") {
            Some(r) if !r.is_empty() => Ok(Some(Profile::Localhost(r.to_string()))),
            _ => Err(invalid(
                who,
                format!("{field} {v:?} is not a known profile"),
            )),
        },
    }
}

/// The deprecated `apparmor_profile` field, still sent by older kubelets.
#[allow(deprecated)]
fn legacy_apparmor(s: &cri::LinuxContainerSecurityContext) -> &str {
    &s.apparmor_profile
}

/// The deprecated `seccomp_profile_path` field, still sent by older kubelets.
#[allow(deprecated)]
fn legacy_seccomp(s: &cri::LinuxContainerSecurityContext) -> &str {
    &s.seccomp_profile_path
}

#[allow(deprecated)]
fn legacy_sandbox_seccomp(s: &cri::LinuxSandboxSecurityContext) -> &str {
    &s.seccomp_profile_path
}

fn requested_profile(
    profile: Option<&cri::SecurityProfile>,
    legacy: &str,
    field: &str,
    legacy_field: &str,
    who: &str,
) -> Result<Option<Profile>, SpecError> {
    match profile {
        Some(p) => profile_of(p, field, who).map(Some),
        None => legacy_profile(legacy, legacy_field, who),
    }
}

/// The container's seccomp profile. None for privileged containers, for Unconfined and when
/// nothing is said (CRI defines no profile as unconfined, and containerd and CRI-O run such
/// containers so; kubelet says RuntimeDefault when the pod or the node's `seccompDefault`
/// asks for it); cairn's RuntimeDefault ([`cairn_kernel::seccomp::default_profile`] for the
/// container's capabilities) when asked for; a Localhost profile is read, checked and
/// compiled now, so that a missing or malformed file is an invalid request.
fn seccomp_profile(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
    caps: &Capabilities,
    who: &str,
) -> Result<Option<oci_spec::runtime::LinuxSeccomp>, SpecError> {
    let requested = requested_profile(
        sc.and_then(|s| s.seccomp.as_ref()),
        sc.map_or("", legacy_seccomp),
        "seccomp",
        "seccomp_profile_path",
        who,
    )?;
    if privileged {
        return Ok(None);
    }
    let profile = match requested.unwrap_or(Profile::Unconfined) {
        Profile::Unconfined => return Ok(None),
        Profile::RuntimeDefault => cairn_kernel::seccomp::default_profile(caps),
        Profile::Localhost(path) => localhost_seccomp(&path, caps, who)?,
    };
    Ok(Some(profile))
}

fn localhost_seccomp(
    path: &str,
    caps: &Capabilities,
    who: &str,
) -> Result<oci_spec::runtime::LinuxSeccomp, SpecError> {
    if !path.starts_with('/') {
        return Err(invalid(
            who,
            format!("seccomp profile {path:?} is not an absolute path"),
        ));
    }
    let profile =
        cairn_kernel::seccomp::load_profile(Path::new(path), caps).map_err(|e| invalid(who, e))?;
    cairn_kernel::seccomp::compile(&profile)
        .map_err(|e| invalid(who, format!("seccomp profile {path}: {e}")))?;
    Ok(profile)
}

/// Whether the kernel has AppArmor enabled.
fn apparmor_enabled() -> bool {
    fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|v| v.trim() == "Y")
}

/// AppArmor: cairn loads no AppArmor profile. Unconfined is fine; RuntimeDefault is accepted
/// and runs without a profile (logged once, as containerd does on a node without AppArmor);
/// a named profile cannot be honoured and is refused.
fn check_apparmor(
    profile: Option<&cri::SecurityProfile>,
    legacy: &str,
    who: &str,
) -> Result<(), SpecError> {
    let requested = requested_profile(profile, legacy, "apparmor", "apparmor_profile", who)?;
    match requested {
        None | Some(Profile::Unconfined) => Ok(()),
        Some(Profile::RuntimeDefault) => {
            static LOGGED: std::sync::Once = std::sync::Once::new();
            LOGGED.call_once(|| {
                tracing::info!(
                    "AppArmor is unavailable (not enabled on this node, or not supported by \
                     cairn): containers asking for the runtime/default AppArmor profile run \
                     without one"
                )
            });
            Ok(())
        }
        Some(Profile::Localhost(name)) => {
            let why = if apparmor_enabled() {
                "cairn does not load AppArmor profiles"
            } else {
                "AppArmor is not enabled on this node"
            };
            Err(invalid(
                who,
                format!("AppArmor profile {name:?} cannot be applied: {why}"),
            ))
        }
    }
}

/// SELinux: the node has no SELinux, so labels cannot be applied; asking for one is refused.
fn check_selinux(opt: Option<&cri::SeLinuxOption>, who: &str) -> Result<(), SpecError> {
    let Some(o) = opt else {
        return Ok(());
    };
    if o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty() {
        return Ok(());
    }
    let why = if Path::new("/sys/fs/selinux/enforce").exists() {
        "cairn does not apply SELinux labels"
    } else {
        "SELinux is not enabled on this node"
    };
    Err(invalid(
        who,
        format!(
            "SELinux options (user {:?}, role {:?}, type {:?}, level {:?}) cannot be applied: {why}",
            o.user, o.role, o.r#type, o.level
        ),
    ))
}

/// The namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SysctlNamespace {
    Network,
    Ipc,
}

/// Which namespace a sysctl (dotted `net.ipv4.ip_forward` or slashed
/// `net/ipv4/ip_forward`) lives in; None: not namespaced, it would change the host.
fn sysctl_namespace(name: &str) -> Option<SysctlNamespace> {
    let dotted = name.replace('/', ".");
    if dotted.starts_with("net.") {
        return Some(SysctlNamespace::Network);
    }
    let ipc = dotted.starts_with("kernel.shm")
        || dotted.starts_with("kernel.msg")
        || dotted == "kernel.sem"
        || dotted == "kernel.sem_next_id"
        || dotted.starts_with("fs.mqueue.");
    ipc.then_some(SysctlNamespace::Ipc)
}

/// Pod sysctls: only namespaced ones (`net.*`, `kernel.shm*`, `kernel.msg*`, `kernel.sem`,
/// `fs.mqueue.*`), and only for a namespace the pod owns (no `net.*` with the host's
/// network, no IPC ones with the host's IPC). Errors name the sysctl.
pub fn validate_sysctls(
    sysctls: &HashMap<String, String>,
    host_network: bool,
    host_ipc: bool,
    who: &str,
) -> Result<(), SpecError> {
    let mut names: Vec<&String> = sysctls.keys().collect();
    names.sort();
    for name in names {
        let value = &sysctls[name];
        let bad_name = name.is_empty()
            || name.starts_with(['.', '/'])
            || name.split(['.', '/']).any(|p| p.is_empty() || p == "..");
        if bad_name {
            return Err(invalid(who, format!("sysctl {name:?} is not a valid name")));
        }
        if value.contains(['\n', '\0']) {
            return Err(invalid(
                who,
                format!("sysctl {name}: value {value:?} has a newline or NUL"),
            ));
        }
        match sysctl_namespace(name) {
            None => {
                return Err(invalid(
                    who,
                    format!(
                        "sysctl {name} is not namespaced: setting it would change the host \
                         (allowed: net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)"
                    ),
                ))
            }
            Some(SysctlNamespace::Network) if host_network => {
                return Err(invalid(
                    who,
                    format!(
                        "sysctl {name} needs the pod's own network namespace (hostNetwork is set)"
                    ),
                ))
            }
            Some(SysctlNamespace::Ipc) if host_ipc => {
                return Err(invalid(
                    who,
                    format!("sysctl {name} needs the pod's own IPC namespace (hostIPC is set)"),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn mode_of(value: i32, field: &str, who: &str) -> Result<cri::NamespaceMode, SpecError> {
    cri::NamespaceMode::try_from(value).map_err(|_| {
        invalid(
            who,
            format!("namespace_options.{field}: unknown mode {value}"),
        )
    })
}

/// Most entries a uid_map or gid_map may have (the kernel's limit).
const MAX_ID_MAPPINGS: usize = 340;

/// A pod's user namespace request: mode NODE (the host's, as without one) or POD with
/// valid mappings; CONTAINER and TARGET are not modes kubelet uses for user namespaces.
fn check_userns(o: &cri::NamespaceOption, who: &str) -> Result<(), SpecError> {
    let Some(u) = &o.userns_options else {
        return Ok(());
    };
    match mode_of(u.mode, "userns_options.mode", who)? {
        cri::NamespaceMode::Node => Ok(()),
        cri::NamespaceMode::Pod => {
            check_id_mappings(&u.uids, "uids", who)?;
            check_id_mappings(&u.gids, "gids", who)
        }
        m => Err(invalid(
            who,
            format!(
                "namespace_options.userns_options.mode {} is not supported (NODE or POD)",
                m.as_str_name()
            ),
        )),
    }
}

/// One list of id mappings: not empty, at most [`MAX_ID_MAPPINGS`], every length above 0
/// and within the 32-bit id space, no two overlapping on the container side nor on the
/// host side, and container id 0 (the container's root) mapped.
pub fn check_id_mappings(maps: &[cri::IdMapping], field: &str, who: &str) -> Result<(), SpecError> {
    let what = format!("namespace_options.userns_options.{field}");
    if maps.is_empty() {
        return Err(invalid(
            who,
            format!("{what} is empty: mode POD needs mappings"),
        ));
    }
    if maps.len() > MAX_ID_MAPPINGS {
        return Err(invalid(
            who,
            format!(
                "{what} has {} entries, at most {MAX_ID_MAPPINGS}",
                maps.len()
            ),
        ));
    }
    let limit = u64::from(u32::MAX);
    for m in maps {
        let shown = format!(
            "{what} entry (container {}, host {}, length {})",
            m.container_id, m.host_id, m.length
        );
        if m.length == 0 {
            return Err(invalid(who, format!("{shown}: length must be above 0")));
        }
        if end(m.container_id, m.length) > limit || end(m.host_id, m.length) > limit {
            return Err(invalid(who, format!("{shown}: runs past the largest id")));
        }
    }
    for (i, a) in maps.iter().enumerate() {
        for b in &maps[i + 1..] {
            let overlap =
                |x: u32, y: u32| u64::from(x) < end(y, b.length) && u64::from(y) < end(x, a.length);
            let side = if overlap(a.container_id, b.container_id) {
                "container"
            } else if overlap(a.host_id, b.host_id) {
                "host"
            } else {
                continue;
            };
            return Err(invalid(
                who,
                format!(
                    "{what}: entries at container ids {} and {} overlap on the {side} side",
                    a.container_id, b.container_id
                ),
            ));
        }
    }
    if host_id_of(maps, 0).is_none() {
        return Err(invalid(
            who,
            format!("{what} does not map container id 0 (the container's root)"),
        ));
    }
    Ok(())
}

/// A container's user namespace request against its pod's: the pod's mode and the very
/// same mappings (kubelet repeats them on every CreateContainer), or nothing.
fn check_container_userns(
    pod: &PodContext,
    o: &cri::NamespaceOption,
    who: &str,
) -> Result<(), SpecError> {
    let Some(u) = &o.userns_options else {
        return Ok(());
    };
    check_userns(o, who)?;
    let asks_pod = u.mode == cri::NamespaceMode::Pod as i32;
    match &pod.userns {
        None if asks_pod => Err(invalid(
            who,
            "namespace_options.userns_options mode POD, but the pod was made without one \
             (user namespaces are made per pod, by RunPodSandbox)",
        )),
        None => Ok(()),
        Some(_) if !asks_pod => Err(invalid(
            who,
            "namespace_options.userns_options mode NODE conflicts with the pod, which has its \
             own user namespace",
        )),
        Some(p) if p.uids != u.uids || p.gids != u.gids => Err(invalid(
            who,
            "namespace_options.userns_options mappings differ from the pod's",
        )),
        Some(_) => Ok(()),
    }
}

/// A pod's namespace options: network and ipc POD or NODE, pid POD, NODE or CONTAINER (the
/// default per container); TARGET and target_id belong to containers.
fn check_pod_namespaces(o: &cri::NamespaceOption, who: &str) -> Result<(), SpecError> {
    use cri::NamespaceMode::{Container, Node, Pod};
    for (field, value) in [("network", o.network), ("ipc", o.ipc)] {
        let mode = mode_of(value, field, who)?;
        if !matches!(mode, Pod | Node) {
            return Err(invalid(
                who,
                format!(
                    "namespace_options.{field} {} is not allowed for a pod",
                    mode.as_str_name()
                ),
            ));
        }
    }
    let pid = mode_of(o.pid, "pid", who)?;
    if !matches!(pid, Pod | Node | Container) {
        return Err(invalid(
            who,
            format!(
                "namespace_options.pid {} is not allowed for a pod",
                pid.as_str_name()
            ),
        ));
    }
    if !o.target_id.is_empty() {
        return Err(invalid(
            who,
            "namespace_options.target_id is only for containers (pid TARGET)",
        ));
    }
    check_userns(o, who)?;
    let userns = o
        .userns_options
        .as_ref()
        .is_some_and(|u| u.mode == Pod as i32);
    let host = [("network", o.network), ("ipc", o.ipc), ("pid", o.pid)];
    if let Some((field, _)) = host.iter().find(|(_, v)| userns && *v == Node as i32) {
        return Err(invalid(
            who,
            format!(
                "namespace_options.{field} NODE cannot be combined with a user namespace \
                 (userns_options mode POD)"
            ),
        ));
    }
    Ok(())
}

/// A container's namespace options against its pod's: network and ipc are the pod's (a
/// container cannot have the host's in a pod that has its own); pid TARGET needs a
/// target_id and target_id needs TARGET.
fn check_container_namespaces(
    pod: &PodContext,
    opts: Option<&cri::NamespaceOption>,
    who: &str,
) -> Result<(), SpecError> {
    use cri::NamespaceMode::{Node, Pod, Target};
    let Some(o) = opts else {
        return Ok(());
    };
    let shared = [
        ("network", o.network, pod.netns.is_some()),
        ("ipc", o.ipc, pod.ipcns.is_some()),
    ];
    for (field, value, pod_owns) in shared {
        match mode_of(value, field, who)? {
            Node if pod_owns => {
                return Err(invalid(
                    who,
                    format!(
                        "namespace_options.{field} NODE conflicts with the pod, which has its own \
                         {field} namespace"
                    ),
                ))
            }
            Pod | Node => {}
            m => {
                return Err(invalid(
                    who,
                    format!(
                        "namespace_options.{field} {} is not allowed: containers share the pod's",
                        m.as_str_name()
                    ),
                ))
            }
        }
    }
    let pid = mode_of(o.pid, "pid", who)?;
    if pid == Target && o.target_id.is_empty() {
        return Err(invalid(
            who,
            "namespace_options.pid TARGET needs a target_id",
        ));
    }
    if pid != Target && !o.target_id.is_empty() {
        return Err(invalid(
            who,
            format!(
                "namespace_options.target_id {:?} is set but pid is {}, not TARGET",
                o.target_id,
                pid.as_str_name()
            ),
        ));
    }
    if pid == Node && pod.userns.is_some() {
        return Err(invalid(
            who,
            "namespace_options.pid NODE conflicts with the pod's user namespace",
        ));
    }
    check_container_userns(pod, o, who)
}

/// Checks what RunPodSandbox asks for before anything is made: namespace options, sysctls
/// (see [`validate_sysctls`]) and the sandbox's seccomp, AppArmor and SELinux requests (a
/// Localhost seccomp profile must exist and parse).
pub fn validate_sandbox(config: &cri::PodSandboxConfig) -> Result<(), SpecError> {
    let who = match &config.metadata {
        Some(m) => format!("pod sandbox \"{}/{}\"", m.namespace, m.name),
        None => "pod sandbox".to_string(),
    };
    check_hostname(&config.hostname, &who)?;
    let linux = config.linux.as_ref();
    let sc = linux.and_then(|l| l.security_context.as_ref());
    let ns = sc.and_then(|s| s.namespace_options.as_ref());
    if let Some(o) = ns {
        check_pod_namespaces(o, &who)?;
    }
    let is_node = |v: Option<i32>| v == Some(cri::NamespaceMode::Node as i32);
    if let Some(l) = linux {
        validate_sysctls(
            &l.sysctls,
            is_node(ns.map(|o| o.network)),
            is_node(ns.map(|o| o.ipc)),
            &who,
        )?;
    }
    let Some(s) = sc else {
        return Ok(());
    };
    let seccomp = requested_profile(
        s.seccomp.as_ref(),
        legacy_sandbox_seccomp(s),
        "seccomp",
        "seccomp_profile_path",
        &who,
    )?;
    if let (Some(Profile::Localhost(path)), false) = (seccomp, s.privileged) {
        let caps: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
        localhost_seccomp(&path, &caps, &who)?;
    }
    check_apparmor(s.apparmor.as_ref(), "", &who)?;
    check_selinux(s.selinux_options.as_ref(), &who)
}

/// The longest hostname the kernel takes (`HOST_NAME_MAX`).
const HOST_NAME_MAX: usize = 64;

/// A pod's hostname must fit the kernel's UTS name (empty means the node's, see
/// `runtime::pod_hostname`); kubelet already keeps it to a DNS label.
fn check_hostname(hostname: &str, who: &str) -> Result<(), SpecError> {
    if hostname.len() > HOST_NAME_MAX {
        return Err(SpecError::InvalidArgument(format!(
            "{who}: hostname {hostname:?} is {} bytes long, the kernel takes at most {HOST_NAME_MAX}",
            hostname.len()
        )));
    }
    if hostname
        .bytes()
        .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
    {
        return Err(SpecError::InvalidArgument(format!(
            "{who}: hostname {hostname:?} holds a NUL, slash or white space"
        )));
    }
    Ok(())
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
fn valid_cpuset(s: &str) -> bool {
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
fn resources(config: &cri::ContainerConfig, who: &str) -> Result<LinuxResources, SpecError> {
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

/// The device node of `meta`, placed at `dest`; `None` if it is not a device.
fn device_from(meta: &fs::Metadata, dest: &Path) -> Option<LinuxDevice> {
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = meta.rdev();
    let mut dev = LinuxDevice::default();
    dev.set_path(dest.to_path_buf())
        .set_typ(typ)
        .set_major(nix::sys::stat::major(rdev) as i64)
        .set_minor(nix::sys::stat::minor(rdev) as i64)
        .set_file_mode(Some(meta.mode() & 0o7777))
        .set_uid(Some(meta.uid()))
        .set_gid(Some(meta.gid()));
    Some(dev)
}

/// Directories of the host's /dev whose nodes privileged containers do not get.
const HOST_DEV_SKIP: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// Every device node under `dir` (not following symlinks), placed under `dest`.
fn devices_in(
    dir: &Path,
    dest: &Path,
    skip: &[&str],
    out: &mut Vec<LinuxDevice>,
) -> Result<(), SpecError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SpecError::io("list devices", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| SpecError::io("list devices", dir, e))?;
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SpecError::io("stat device", &path, e)),
        };
        if meta.is_dir() {
            devices_in(&path, &dest.join(&name), &[], out)?;
        } else if let Some(dev) = device_from(&meta, &dest.join(&name)) {
            out.push(dev);
        }
    }
    Ok(())
}

fn device_permissions(perms: &str, who: &str, host: &str) -> Result<String, SpecError> {
    if perms.is_empty() {
        return Ok("rwm".to_string());
    }
    if !perms.chars().all(|ch| matches!(ch, 'r' | 'w' | 'm')) {
        return Err(invalid(
            who,
            format!("device {host}: permissions {perms:?} are not a subset of \"rwm\""),
        ));
    }
    Ok(perms.to_string())
}

/// The device nodes to create (CRI devices, plus the host's for privileged containers) and
/// the device cgroup rules.
fn devices(
    config: &cri::ContainerConfig,
    who: &str,
    privileged: bool,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut nodes = Vec::new();
    let mut rules = if privileged {
        vec![device_rule(true, LinuxDeviceType::A, None, None, "rwm")]
    } else {
        default_device_rules()
    };
    for d in &config.devices {
        let perms = device_permissions(&d.permissions, who, &d.host_path)?;
        if d.host_path.is_empty() {
            return Err(invalid(who, "device with an empty host_path"));
        }
        let dest = if d.container_path.is_empty() {
            &d.host_path
        } else {
            &d.container_path
        };
        if !dest.starts_with('/') {
            return Err(invalid(
                who,
                format!("device container_path {dest:?} is not absolute"),
            ));
        }
        let host = Path::new(&d.host_path);
        let meta = match fs::metadata(host) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpecError::NotFound(format!(
                    "{who}: device {}: no such device on the host",
                    d.host_path
                )))
            }
            Err(e) => return Err(SpecError::io(format!("{who}: stat device"), host, e)),
        };
        let mut found = Vec::new();
        if meta.is_dir() {
            devices_in(host, Path::new(dest), &[], &mut found)?;
        } else {
            let dev = device_from(&meta, Path::new(dest)).ok_or_else(|| {
                invalid(who, format!("device {}: not a device node", d.host_path))
            })?;
            found.push(dev);
        }
        for dev in found {
            if !privileged {
                rules.push(device_rule(
                    true,
                    dev.typ(),
                    Some(dev.major()),
                    Some(dev.minor()),
                    &perms,
                ));
            }
            nodes.push(dev);
        }
    }
    if privileged {
        devices_in(
            Path::new("/dev"),
            Path::new("/dev"),
            &HOST_DEV_SKIP,
            &mut nodes,
        )?;
        nodes.retain(|d| d.path() != Path::new("/dev/console"));
    }
    let mut seen = HashSet::new();
    nodes.retain(|d| seen.insert(d.path().clone()));
    Ok((nodes, rules))
}

/// The signal that stops the container: the image's StopSignal (`SIGTERM`, `TERM`, `15`,
/// `SIGRTMIN+3`), SIGTERM when unset.
pub fn stop_signal(image: &ImageConfig) -> Result<i32, SpecError> {
    let Some(raw) = image
        .config
        .stop_signal
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    else {
        return Ok(libc::SIGTERM);
    };
    let bad = || SpecError::InvalidArgument(format!("image StopSignal {raw:?} is not a signal"));
    if let Ok(n) = raw.parse::<i32>() {
        return (1..=libc::SIGRTMAX())
            .contains(&n)
            .then_some(n)
            .ok_or_else(bad);
    }
    let upper = raw.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Some(rest) = name.strip_prefix("SIGRTMIN") {
        let offset = match rest.strip_prefix('+') {
            Some(n) => n.parse::<i32>().map_err(|_| bad())?,
            None if rest.is_empty() => 0,
            None => return Err(bad()),
        };
        let n = libc::SIGRTMIN() + offset;
        return (n <= libc::SIGRTMAX()).then_some(n).ok_or_else(bad);
    }
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use tempfile::TempDir;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn image(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        let mut img = ImageConfig::default();
        img.config.entrypoint = entrypoint.map(strs);
        img.config.cmd = cmd.map(strs);
        img
    }

    fn named(name: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            command: strs(&["/bin/app"]),
            ..Default::default()
        }
    }

    fn write(layer: &Path, rel: &str, content: &str) {
        let path = layer.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    /// A pod, a container config and an image, with paths in a temp dir.
    struct Fixture {
        tmp: TempDir,
        pod: PodContext,
        config: cri::ContainerConfig,
        image: ImageConfig,
        layers: Vec<PathBuf>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = TempDir::new().unwrap();
            let run = tmp.path().join("pod");
            let pod = PodContext {
                pod_id: "pod1".to_string(),
                hostname: "web-0".to_string(),
                netns: Some(run.join("ns/net")),
                ipcns: Some(run.join("ns/ipc")),
                utsns: Some(run.join("ns/uts")),
                pidns: None,
                host_pid: false,
                resolv_conf: Some(run.join("resolv.conf")),
                hosts: run.join("hosts"),
                hostname_file: run.join("hostname"),
                shm: Some(run.join("shm")),
                cgroup_parent: "/kubepods/pod1".to_string(),
                sysctls: HashMap::new(),
                userns: None,
            };
            Fixture {
                tmp,
                pod,
                config: named("app"),
                image: image(None, Some(&["sh"])),
                layers: Vec::new(),
            }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.tmp.path().join(rel)
        }

        fn ctx(&self) -> ContainerContext<'_> {
            ContainerContext {
                id: "c1",
                config: &self.config,
                image: &self.image,
                rootfs_layers: &self.layers,
                rootfs: self.path("bundle/rootfs"),
                cgroup_path: cgroup_path(&self.pod.cgroup_parent, "c1"),
            }
        }

        fn build(&self) -> Result<Spec, SpecError> {
            build_spec(&self.pod, &self.ctx())
        }

        fn sc(&mut self) -> &mut cri::LinuxContainerSecurityContext {
            self.config
                .linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
        }

        fn res(&mut self) -> &mut cri::LinuxContainerResources {
            self.config
                .linux
                .get_or_insert_with(Default::default)
                .resources
                .get_or_insert_with(Default::default)
        }

        /// Two layers: lower with passwd/group, upper overriding passwd.
        fn with_users(&mut self) {
            let lower = self.path("layers/lower");
            let upper = self.path("layers/upper");
            write(
                &lower,
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\n# comment\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\nbroken-line\n",
            );
            write(
                &lower,
                "etc/group",
                "root:x:0:\nalice:x:1000:\nbob:x:1001:\ndev:x:2000:alice,bob\naudio:x:3000:alice\nstaff:x:50:\n",
            );
            write(
                &upper,
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nalice:x:1500:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n",
            );
            self.layers = vec![upper, lower];
        }
    }

    /// uid, gid, additional gids.
    type Ids = (u32, u32, Vec<u32>);

    fn user_of(f: &Fixture) -> Result<Ids, SpecError> {
        let u = resolve_user(&f.ctx())?;
        Ok((
            u.uid(),
            u.gid(),
            u.additional_gids().clone().unwrap_or_default(),
        ))
    }

    fn err_msg<T: std::fmt::Debug>(r: Result<T, SpecError>) -> String {
        r.unwrap_err().to_string()
    }

    // --- command -----------------------------------------------------------------------------

    #[test]
    fn command_merge_table() {
        let ep: Option<&[&str]> = Some(&["/ep", "-x"]);
        let cmd: Option<&[&str]> = Some(&["cmd1"]);
        let images = [
            ("none", image(None, None)),
            ("ep", image(ep, None)),
            ("cmd", image(None, cmd)),
            ("ep+cmd", image(ep, cmd)),
        ];
        let cris: [(&str, &[&str], &[&str]); 4] = [
            ("none", &[], &[]),
            ("command", &["/c"], &[]),
            ("args", &[], &["a1", "a2"]),
            ("command+args", &["/c"], &["a1", "a2"]),
        ];
        let expect: [[Option<&[&str]>; 4]; 4] = [
            // image: none
            [
                None,
                Some(&["/c"]),
                Some(&["a1", "a2"]),
                Some(&["/c", "a1", "a2"]),
            ],
            // image: entrypoint
            [
                Some(&["/ep", "-x"]),
                Some(&["/c"]),
                Some(&["/ep", "-x", "a1", "a2"]),
                Some(&["/c", "a1", "a2"]),
            ],
            // image: cmd
            [
                Some(&["cmd1"]),
                Some(&["/c"]),
                Some(&["a1", "a2"]),
                Some(&["/c", "a1", "a2"]),
            ],
            // image: entrypoint + cmd
            [
                Some(&["/ep", "-x", "cmd1"]),
                Some(&["/c"]),
                Some(&["/ep", "-x", "a1", "a2"]),
                Some(&["/c", "a1", "a2"]),
            ],
        ];
        for (i, (iname, img)) in images.iter().enumerate() {
            for (j, (cname, command_, args)) in cris.iter().enumerate() {
                let config = cri::ContainerConfig {
                    command: strs(command_),
                    args: strs(args),
                    ..Default::default()
                };
                let got = command(&config, img);
                match expect[i][j] {
                    Some(want) => {
                        assert_eq!(got.unwrap(), strs(want), "image {iname} × cri {cname}")
                    }
                    None => assert!(
                        matches!(got, Err(SpecError::InvalidArgument(_))),
                        "image {iname} × cri {cname}: {got:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn command_empty_errors_name_the_container() {
        let mut config = named("web");
        config.command.clear();
        let msg = err_msg(command(&config, &image(None, None)));
        assert!(
            msg.contains("\"web\"") && msg.contains("no command"),
            "{msg}"
        );
        // An empty executable is as bad as none.
        let msg = err_msg(command(&config, &image(Some(&[""]), None)));
        assert!(msg.contains("no command"), "{msg}");
    }

    // --- environment ---------------------------------------------------------------------------

    #[test]
    fn env_override_and_path_default() {
        let mut img = image(None, Some(&["sh"]));
        img.config.env = strs(&["A=image", "B=keep", "EMPTY"]);
        let config = cri::ContainerConfig {
            envs: vec![
                cri::KeyValue {
                    key: "A".into(),
                    value: "cri".into(),
                },
                cri::KeyValue {
                    key: "C".into(),
                    value: "x=y".into(),
                },
                cri::KeyValue {
                    key: "EMPTY".into(),
                    value: "".into(),
                },
            ],
            ..Default::default()
        };
        let env = environment(&config, &img, "web-0");
        assert_eq!(
            env,
            strs(&[
                &format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=web-0",
                "A=cri",
                "B=keep",
                "EMPTY=",
                "C=x=y"
            ])
        );
    }

    #[test]
    fn env_keeps_image_path_and_adds_term_for_tty() {
        let mut img = image(None, Some(&["sh"]));
        img.config.env = strs(&["PATH=/opt/bin"]);
        let config = cri::ContainerConfig {
            tty: true,
            ..Default::default()
        };
        let env = environment(&config, &img, "h");
        assert_eq!(env, strs(&["HOSTNAME=h", "PATH=/opt/bin", "TERM=xterm"]));

        // CRI may override both PATH and HOSTNAME.
        let config = cri::ContainerConfig {
            envs: vec![
                cri::KeyValue {
                    key: "PATH".into(),
                    value: "/x".into(),
                },
                cri::KeyValue {
                    key: "HOSTNAME".into(),
                    value: "other".into(),
                },
            ],
            ..Default::default()
        };
        let env = environment(&config, &img, "h");
        assert_eq!(env, strs(&["HOSTNAME=other", "PATH=/x"]));
    }

    // --- users ---------------------------------------------------------------------------------

    #[test]
    fn user_defaults_to_root() {
        let mut f = Fixture::new();
        assert_eq!(user_of(&f).unwrap(), (0, 0, vec![0]));
        f.with_users();
        assert_eq!(user_of(&f).unwrap(), (0, 0, vec![0]));
    }

    #[test]
    fn user_names_looked_up_through_layers() {
        let mut f = Fixture::new();
        f.with_users();
        // passwd from the upper layer (alice is 1500 there), group from the lower one.
        f.image.config.user = Some("alice".into());
        assert_eq!(user_of(&f).unwrap(), (1500, 1000, vec![1000, 2000, 3000]));
        f.image.config.user = Some("bob".into());
        assert_eq!(user_of(&f).unwrap(), (1001, 1001, vec![1001, 2000]));
    }

    #[test]
    fn user_uid_gid_forms() {
        let mut f = Fixture::new();
        f.with_users();
        let cases: [(&str, Ids); 7] = [
            ("1500", (1500, 1000, vec![1000, 2000, 3000])),
            ("1500:50", (1500, 50, vec![50, 2000, 3000])),
            ("alice:audio", (1500, 3000, vec![3000, 2000])),
            ("1001:dev", (1001, 2000, vec![2000])),
            ("bob:7", (1001, 7, vec![7, 2000])),
            // A uid without a passwd entry: gid 0, no groups.
            ("4242", (4242, 0, vec![0])),
            ("4242:4243", (4242, 4243, vec![4243])),
        ];
        for (user, want) in cases {
            f.image.config.user = Some(user.into());
            assert_eq!(user_of(&f).unwrap(), want, "image user {user}");
        }
    }

    #[test]
    fn cri_user_overrides_image_user() {
        let mut f = Fixture::new();
        f.with_users();
        f.image.config.user = Some("bob".into());
        f.sc().run_as_user = Some(cri::Int64Value { value: 1500 });
        assert_eq!(user_of(&f).unwrap(), (1500, 1000, vec![1000, 2000, 3000]));

        f.sc().run_as_group = Some(cri::Int64Value { value: 77 });
        f.sc().supplemental_groups = vec![88, 2000];
        assert_eq!(user_of(&f).unwrap(), (1500, 77, vec![77, 2000, 3000, 88]));

        f.sc().supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
        assert_eq!(user_of(&f).unwrap(), (1500, 77, vec![77, 88, 2000]));

        let sc = f.sc();
        sc.run_as_user = None;
        sc.run_as_group = None;
        sc.supplemental_groups.clear();
        sc.supplemental_groups_policy = 0;
        sc.run_as_username = "alice".into();
        assert_eq!(user_of(&f).unwrap(), (1500, 1000, vec![1000, 2000, 3000]));

        // run_as_group without a user is refused, as by containerd and CRI-O.
        f.sc().run_as_username.clear();
        f.sc().run_as_group = Some(cri::Int64Value { value: 5 });
        let msg = err_msg(user_of(&f));
        assert!(
            msg.contains("run_as_group is set without run_as_user"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_user_or_group_errors() {
        let mut f = Fixture::new();
        f.with_users();
        f.image.config.user = Some("mallory".into());
        let msg = err_msg(user_of(&f));
        assert!(
            msg.contains("\"mallory\"") && msg.contains("/etc/passwd"),
            "{msg}"
        );
        assert!(msg.contains("\"app\" (c1)"), "{msg}");
        f.image.config.user = Some("alice:nogroup".into());
        let msg = err_msg(user_of(&f));
        assert!(
            msg.contains("\"nogroup\"") && msg.contains("/etc/group"),
            "{msg}"
        );
        f.image.config.user = Some(":5".into());
        assert!(matches!(user_of(&f), Err(SpecError::InvalidArgument(_))));
        f.image.config.user = None;
        f.sc().run_as_user = Some(cri::Int64Value { value: -1 });
        let msg = err_msg(user_of(&f));
        assert!(msg.contains("run_as_user"), "{msg}");
        // No layers at all: names cannot resolve.
        let mut f = Fixture::new();
        f.image.config.user = Some("alice".into());
        assert!(matches!(user_of(&f), Err(SpecError::InvalidArgument(_))));
    }

    /// Makes `path` an overlay whiteout; false if not permitted here (not root).
    fn whiteout(path: &Path) -> bool {
        use nix::sys::stat::{mknod, Mode, SFlag};
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        mknod(path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), 0).is_ok()
    }

    #[test]
    fn whiteout_hides_lower_file() {
        let mut f = Fixture::new();
        f.with_users();
        let top = f.path("layers/top");
        if !whiteout(&top.join("etc/group")) {
            eprintln!("skipped: cannot mknod a whiteout (needs CAP_MKNOD)");
            return;
        }
        f.layers.insert(0, top);
        f.image.config.user = Some("alice".into());
        // Groups are gone: only the primary gid remains.
        assert_eq!(user_of(&f).unwrap(), (1500, 1000, vec![1000]));
        f.image.config.user = Some("alice:dev".into());
        assert!(matches!(user_of(&f), Err(SpecError::InvalidArgument(_))));
    }

    #[test]
    fn opaque_dir_and_file_parent_hide_lower_files() {
        let mut f = Fixture::new();
        f.with_users();
        let top = f.path("layers/top");
        write(&top, "etc/other", "");
        let etc = top.join("etc");
        if rustix::fs::lsetxattr(
            &etc,
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .is_err()
        {
            eprintln!("skipped: cannot set trusted xattrs (needs CAP_SYS_ADMIN)");
        } else {
            f.layers.insert(0, top.clone());
            f.image.config.user = Some("alice".into());
            assert!(matches!(user_of(&f), Err(SpecError::InvalidArgument(_))));
            f.image.config.user = Some("1000".into());
            assert_eq!(user_of(&f).unwrap(), (1000, 0, vec![0]));
            f.layers.remove(0);
        }
        // A layer where /etc is a regular file hides everything below it.
        let flat = f.path("layers/flat");
        write(&flat, "etc", "not a dir");
        f.layers.insert(0, flat);
        f.image.config.user = Some("alice".into());
        assert!(matches!(user_of(&f), Err(SpecError::InvalidArgument(_))));
    }

    #[test]
    fn symlinked_passwd_is_not_followed() {
        let mut f = Fixture::new();
        f.with_users();
        let top = f.path("layers/top");
        fs::create_dir_all(top.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", top.join("etc/passwd")).unwrap();
        f.layers.insert(0, top);
        f.image.config.user = Some("alice".into());
        assert!(matches!(user_of(&f), Err(SpecError::InvalidArgument(_))));
    }

    // --- capabilities --------------------------------------------------------------------------

    fn caps_of(f: &Fixture) -> Result<BTreeSet<String>, SpecError> {
        let spec = f.build()?;
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        let bounding = caps.bounding().clone().unwrap();
        assert_eq!(caps.effective().as_ref(), Some(&bounding));
        assert_eq!(caps.permitted().as_ref(), Some(&bounding));
        Ok(bounding.iter().map(|c| c.to_string()).collect())
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const DEFAULT_NAMES: [&str; 14] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ];

    #[test]
    fn capabilities_default_add_drop() {
        let mut f = Fixture::new();
        assert_eq!(caps_of(&f).unwrap(), set(&DEFAULT_NAMES));

        f.sc().capabilities = Some(cri::Capability {
            add_capabilities: strs(&["CAP_SYS_ADMIN", "net_admin"]),
            drop_capabilities: strs(&["cap_net_raw", "MKNOD"]),
            ..Default::default()
        });
        let mut want = set(&DEFAULT_NAMES);
        want.remove("NET_RAW");
        want.remove("MKNOD");
        want.insert("SYS_ADMIN".into());
        want.insert("NET_ADMIN".into());
        assert_eq!(caps_of(&f).unwrap(), want);

        f.sc().capabilities = Some(cri::Capability {
            add_capabilities: strs(&["NET_BIND_SERVICE"]),
            drop_capabilities: strs(&["ALL"]),
            ..Default::default()
        });
        assert_eq!(caps_of(&f).unwrap(), set(&["NET_BIND_SERVICE"]));

        f.sc().capabilities = Some(cri::Capability {
            add_capabilities: strs(&["all"]),
            drop_capabilities: strs(&["SYS_ADMIN"]),
            ..Default::default()
        });
        let got = caps_of(&f).unwrap();
        assert_eq!(got.len(), current_capabilities().len() - 1);
        assert!(!got.contains("SYS_ADMIN"));

        f.sc().capabilities = Some(cri::Capability {
            drop_capabilities: strs(&["ALL"]),
            add_ambient_capabilities: strs(&["NET_BIND_SERVICE"]),
            ..Default::default()
        });
        let spec = f.build().unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        let nbs: Capabilities = [Capability::NetBindService].into_iter().collect();
        assert_eq!(caps.ambient().as_ref(), Some(&nbs));
        assert_eq!(caps.inheritable().as_ref(), Some(&nbs));
        assert_eq!(caps.permitted().as_ref(), Some(&nbs));
    }

    #[test]
    fn capabilities_privileged_and_unknown() {
        let mut f = Fixture::new();
        f.sc().capabilities = Some(cri::Capability {
            add_capabilities: strs(&["CAP_NOPE"]),
            ..Default::default()
        });
        let msg = err_msg(f.build());
        assert!(msg.contains("CAP_NOPE") && msg.contains("(c1)"), "{msg}");

        f.sc().capabilities = None;
        f.sc().privileged = true;
        assert_eq!(caps_of(&f).unwrap().len(), current_capabilities().len());
        let all: HashSet<_> = ALL_CAPABILITIES.iter().collect();
        assert_eq!(all.len(), ALL_CAPABILITIES.len(), "no duplicates");
        let numbers: HashSet<u32> = ALL_CAPABILITIES.iter().map(capability_number).collect();
        assert_eq!(numbers, (0..41).collect(), "one number each");
        // What cairnd holds bounds it (this machine's root may lack some).
        assert!(current_capabilities().len() <= ALL_CAPABILITIES.len());
        assert!(current_capabilities().contains(&Capability::SysAdmin));
    }

    // --- mounts --------------------------------------------------------------------------------

    fn mount_table(spec: &Spec) -> Vec<(String, String, String, Vec<String>)> {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.typ().clone().unwrap_or_default(),
                    m.source()
                        .as_ref()
                        .map(|s| s.display().to_string())
                        .unwrap_or_default(),
                    m.options().clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    fn dests(spec: &Spec) -> Vec<String> {
        mount_table(spec).into_iter().map(|m| m.0).collect()
    }

    #[test]
    fn mounts_order_and_options() {
        let f = Fixture::new();
        let spec = f.build().unwrap();
        let table = mount_table(&spec);
        let p = |rel: &str| f.path(rel).display().to_string();
        let want: Vec<(String, String, String, Vec<String>)> = vec![
            (
                "/proc",
                "proc",
                "proc".into(),
                strs(&["nosuid", "noexec", "nodev"]),
            ),
            (
                "/dev",
                "tmpfs",
                "tmpfs".into(),
                strs(&["nosuid", "strictatime", "mode=755", "size=65536k"]),
            ),
            (
                "/dev/pts",
                "devpts",
                "devpts".into(),
                strs(&[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ]),
            ),
            (
                "/dev/mqueue",
                "mqueue",
                "mqueue".into(),
                strs(&["nosuid", "noexec", "nodev"]),
            ),
            (
                "/sys",
                "sysfs",
                "sysfs".into(),
                strs(&["nosuid", "noexec", "nodev", "ro"]),
            ),
            (
                "/sys/fs/cgroup",
                "cgroup",
                "cgroup".into(),
                strs(&["nosuid", "noexec", "nodev", "relatime", "ro"]),
            ),
            (
                "/dev/shm",
                "bind",
                p("pod/shm"),
                strs(&["rbind", "rprivate", "rw"]),
            ),
            (
                "/etc/hostname",
                "bind",
                p("pod/hostname"),
                strs(&["rbind", "rprivate", "rw"]),
            ),
            (
                "/etc/hosts",
                "bind",
                p("pod/hosts"),
                strs(&["rbind", "rprivate", "rw"]),
            ),
            (
                "/etc/resolv.conf",
                "bind",
                p("pod/resolv.conf"),
                strs(&["rbind", "rprivate", "rw"]),
            ),
        ]
        .into_iter()
        .map(|(d, t, s, o)| (d.to_string(), t.to_string(), s, o))
        .collect();
        assert_eq!(table, want);
    }

    #[test]
    fn mounts_own_shm_readonly_rootfs_no_resolv() {
        let mut f = Fixture::new();
        f.pod.shm = None;
        f.pod.resolv_conf = None;
        f.sc().readonly_rootfs = true;
        let spec = f.build().unwrap();
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let table = mount_table(&spec);
        let shm = table.iter().find(|m| m.0 == "/dev/shm").unwrap();
        assert_eq!(shm.1, "tmpfs");
        assert!(shm.3.contains(&"size=65536k".to_string()), "{shm:?}");
        assert!(!table.iter().any(|m| m.0 == "/etc/resolv.conf"));
        let hosts = table.iter().find(|m| m.0 == "/etc/hosts").unwrap();
        assert_eq!(hosts.3, strs(&["rbind", "rprivate", "ro"]));
    }

    fn cri_mount(
        container: &str,
        host: &Path,
        readonly: bool,
        prop: cri::MountPropagation,
    ) -> cri::Mount {
        cri::Mount {
            container_path: container.to_string(),
            host_path: host.display().to_string(),
            readonly,
            selinux_relabel: true,
            propagation: prop as i32,
            ..Default::default()
        }
    }

    /// A tmpfs mounted at a path with the given propagation (MS_SHARED, MS_PRIVATE),
    /// unmounted on drop.
    struct TestMount(PathBuf);

    impl TestMount {
        fn new(path: &Path, propagation: nix::mount::MsFlags) -> TestMount {
            use nix::mount::{mount, MsFlags};
            fs::create_dir_all(path).unwrap();
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            let guard = TestMount(path.to_path_buf());
            mount(None::<&str>, path, None::<&str>, propagation, None::<&str>).unwrap();
            guard
        }
    }

    impl Drop for TestMount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn cri_mounts_propagation_order_and_cover() {
        use cri::MountPropagation::*;
        let mut f = Fixture::new();
        // Propagating mounts need a source on a shared mount.
        let _shared = TestMount::new(&f.path("host"), nix::mount::MsFlags::MS_SHARED);
        let data = f.path("host/data");
        let nested = f.path("host/nested");
        let hosts = f.path("host/etc-hosts");
        fs::create_dir_all(&data).unwrap();
        fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        std::os::unix::fs::symlink(&data, f.path("host/link")).unwrap();
        f.config.mounts = vec![
            cri_mount("/data/nested/", &nested, false, PropagationBidirectional),
            cri_mount(
                "/data",
                &f.path("host/link"),
                true,
                PropagationHostToContainer,
            ),
            cri_mount("/etc/hosts", &hosts, false, PropagationPrivate),
        ];
        let spec = f.build().unwrap();
        let table = mount_table(&spec);
        // The pod's /etc/hosts is left out: kubelet mounts its own.
        assert_eq!(
            dests(&spec),
            strs(&[
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/dev/shm",
                "/etc/hostname",
                "/etc/resolv.conf",
                "/data",
                "/data/nested",
                "/etc/hosts",
            ])
        );
        let by = |d: &str| table.iter().find(|m| m.0 == d).unwrap().clone();
        let data_mount = by("/data");
        assert_eq!(data_mount.1, "bind");
        // Symlinks in the source are resolved.
        assert_eq!(
            data_mount.2,
            fs::canonicalize(&data).unwrap().display().to_string()
        );
        assert_eq!(data_mount.3, strs(&["rbind", "rslave", "ro"]));
        assert_eq!(by("/etc/hosts").3, strs(&["rbind", "rprivate", "rw"]));
        assert_eq!(by("/data/nested").3, strs(&["rbind", "rshared", "rw"]));
        // A missing source is created as a directory.
        assert!(nested.is_dir());
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.rootfs_propagation().as_deref(), Some("rshared"));

        f.config.mounts.truncate(2);
        f.config.mounts.remove(0);
        let spec = f.build().unwrap();
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .rootfs_propagation()
                .as_deref(),
            Some("rslave")
        );
    }

    #[test]
    fn propagating_mounts_need_a_source_that_propagates() {
        use cri::MountPropagation::*;
        let mut f = Fixture::new();
        let _private = TestMount::new(&f.path("private"), nix::mount::MsFlags::MS_PRIVATE);
        let _slave = TestMount::new(&f.path("shared"), nix::mount::MsFlags::MS_SHARED);
        let slave_dir = f.path("slave");
        fs::create_dir_all(&slave_dir).unwrap();
        // A slave of the shared mount: bind it, then make the bind a slave.
        nix::mount::mount(
            Some(&f.path("shared")),
            &slave_dir,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let _slave_guard = TestMount(slave_dir.clone());
        nix::mount::mount(
            None::<&str>,
            &slave_dir,
            None::<&str>,
            nix::mount::MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .unwrap();
        let cases = [
            (
                "private",
                PropagationBidirectional,
                Some("bidirectional propagation"),
            ),
            (
                "private",
                PropagationHostToContainer,
                Some("host-to-container"),
            ),
            ("private", PropagationPrivate, None),
            ("slave", PropagationBidirectional, Some("a shared mount")),
            ("slave", PropagationHostToContainer, None),
            ("shared", PropagationBidirectional, None),
        ];
        for (dir, prop, refused) in cases {
            f.config.mounts = vec![cri_mount("/v", &f.path(dir), false, prop)];
            match (f.build(), refused) {
                (Ok(_), None) => {}
                (Err(SpecError::FailedPrecondition(m)), Some(why)) => {
                    assert!(
                        m.contains(why) && m.contains("mount /v"),
                        "{dir} {prop:?}: {m}"
                    );
                }
                (other, _) => panic!("{dir} {prop:?}: {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn cri_dev_mount_covers_dev_mounts() {
        let mut f = Fixture::new();
        let dev = f.path("host/dev");
        f.config.mounts = vec![cri_mount(
            "/dev",
            &dev,
            false,
            cri::MountPropagation::PropagationPrivate,
        )];
        let spec = f.build().unwrap();
        let d = dests(&spec);
        assert_eq!(
            d.iter().filter(|m| m.starts_with("/dev")).count(),
            1,
            "{d:?}"
        );
        assert_eq!(d.last().unwrap(), "/dev");
    }

    #[test]
    fn cri_mount_errors() {
        let mut f = Fixture::new();
        let src = f.path("host/x");
        f.config.mounts = vec![cri_mount(
            "data",
            &src,
            false,
            cri::MountPropagation::PropagationPrivate,
        )];
        let msg = err_msg(f.build());
        assert!(
            msg.contains("container_path") && msg.contains("\"data\"") && msg.contains("(c1)"),
            "{msg}"
        );

        f.config.mounts[0].container_path = "/data".into();
        f.config.mounts[0].propagation = 9;
        assert!(matches!(f.build(), Err(SpecError::InvalidArgument(_))));

        f.config.mounts[0].propagation = 0;
        f.config.mounts[0].recursive_read_only = true;
        assert!(matches!(f.build(), Err(SpecError::InvalidArgument(_))));
        f.config.mounts[0].readonly = true;
        let spec = f.build().unwrap();
        assert_eq!(
            mount_table(&spec).last().unwrap().3,
            strs(&["rbind", "rprivate", "rro"])
        );
    }

    #[test]
    fn privileged_sysfs_and_cgroupfs_are_writable() {
        let mut f = Fixture::new();
        f.sc().privileged = true;
        let spec = f.build().unwrap();
        for (dest, _, _, opts) in mount_table(&spec) {
            if dest == "/sys" || dest == "/sys/fs/cgroup" {
                assert!(opts.contains(&"rw".to_string()), "{dest}: {opts:?}");
            }
        }
    }

    // --- masked paths, devices -----------------------------------------------------------------

    #[test]
    fn masked_and_readonly_paths() {
        let mut f = Fixture::new();
        let spec = f.build().unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.masked_paths().as_ref().unwrap(), &strs(&MASKED_PATHS));
        assert_eq!(
            linux.readonly_paths().as_ref().unwrap(),
            &strs(&READONLY_PATHS)
        );

        f.sc().masked_paths = strs(&["/proc/kcore"]);
        let spec = f.build().unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.masked_paths().as_ref().unwrap(),
            &strs(&["/proc/kcore"])
        );
        assert_eq!(
            linux.readonly_paths().as_ref().unwrap(),
            &strs(&READONLY_PATHS)
        );

        f.sc().privileged = true;
        let spec = f.build().unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.masked_paths().as_ref().unwrap().is_empty());
        assert!(linux.readonly_paths().as_ref().unwrap().is_empty());
    }

    fn rules(spec: &Spec) -> Vec<String> {
        let linux = spec.linux().as_ref().unwrap();
        let res = linux.resources().as_ref().unwrap();
        res.devices()
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| format!("{} {r}", r.allow()))
            .collect()
    }

    #[test]
    fn default_device_rules_deny_first() {
        let f = Fixture::new();
        let spec = f.build().unwrap();
        assert_eq!(
            rules(&spec),
            strs(&[
                "false a *:* rwm",
                "true c *:* m",
                "true b *:* m",
                "true c 1:3 rwm",
                "true c 1:5 rwm",
                "true c 1:7 rwm",
                "true c 1:8 rwm",
                "true c 1:9 rwm",
                "true c 5:0 rwm",
                "true c 5:2 rwm",
                "true c 136:* rwm",
            ])
        );
        assert!(spec
            .linux()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn cri_devices() {
        let mut f = Fixture::new();
        f.config.devices = vec![cri::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }];
        let spec = f.build().unwrap();
        let devs = spec.linux().as_ref().unwrap().devices().clone().unwrap();
        assert_eq!(devs.len(), 1);
        let d = &devs[0];
        assert_eq!(d.path(), Path::new("/dev/mynull"));
        assert_eq!((d.typ(), d.major(), d.minor()), (LinuxDeviceType::C, 1, 3));
        assert_eq!(rules(&spec).last().unwrap(), "true c 1:3 rw");

        f.config.devices[0].host_path = "/dev/cairn-no-such-device".into();
        let err = f.build().unwrap_err();
        assert!(matches!(err, SpecError::NotFound(_)), "{err}");
        assert!(
            err.to_string().contains("/dev/cairn-no-such-device"),
            "{err}"
        );

        f.config.devices[0].host_path = "/dev/null".into();
        f.config.devices[0].permissions = "rwx".into();
        assert!(matches!(f.build(), Err(SpecError::InvalidArgument(_))));

        let file = f.path("plain");
        fs::write(&file, "").unwrap();
        f.config.devices[0].host_path = file.display().to_string();
        f.config.devices[0].permissions = String::new();
        assert!(matches!(f.build(), Err(SpecError::InvalidArgument(_))));
    }

    #[test]
    fn privileged_devices_allow_all() {
        let mut f = Fixture::new();
        f.sc().privileged = true;
        let spec = f.build().unwrap();
        assert_eq!(rules(&spec), strs(&["true a *:* rwm"]));
        let devs = spec.linux().as_ref().unwrap().devices().clone().unwrap();
        assert!(devs.iter().any(|d| d.path() == Path::new("/dev/null")));
        assert!(!devs.iter().any(|d| d.path().starts_with("/dev/pts")));
    }

    // --- resources -----------------------------------------------------------------------------

    #[test]
    fn resources_mapped() {
        let mut f = Fixture::new();
        f.pod
            .sysctls
            .insert("net.ipv4.ip_forward".into(), "1".into());
        *f.res() = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 256 << 20,
            memory_swap_limit_in_bytes: 512 << 20,
            oom_score_adj: 999,
            cpuset_cpus: "0-3,5".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 1 << 21,
            }],
            unified: [("memory.high".to_string(), "1000000".to_string())].into(),
        };
        let spec = f.build().unwrap();
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(999));
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/kubepods/pod1/c1"))
        );
        assert_eq!(linux.sysctl().as_ref().unwrap()["net.ipv4.ip_forward"], "1");
        let res = linux.resources().as_ref().unwrap();
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(50_000), Some(100_000))
        );
        assert_eq!(cpu.cpus().as_deref(), Some("0-3,5"));
        assert_eq!(cpu.mems().as_deref(), Some("0"));
        let mem = res.memory().as_ref().unwrap();
        assert_eq!(
            (mem.limit(), mem.swap()),
            (Some(256 << 20), Some(512 << 20))
        );
        let hp = &res.hugepage_limits().as_ref().unwrap()[0];
        assert_eq!((hp.page_size().as_str(), hp.limit()), ("2MB", 1 << 21));
        assert_eq!(res.unified().as_ref().unwrap()["memory.high"], "1000000");

        // Nothing set: no cpu or memory sections.
        *f.res() = Default::default();
        let spec = f.build().unwrap();
        let res = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert!(res.cpu().is_none() && res.memory().is_none());
        // Unlimited quota is kept.
        f.res().cpu_quota = -1;
        let spec = f.build().unwrap();
        let res = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(-1));
    }

    #[test]
    fn resource_validation_errors() {
        type Edit = fn(&mut cri::LinuxContainerResources);
        let cases: [(&str, Edit); 11] = [
            ("cpu_quota", |r| r.cpu_quota = -2),
            ("cpu_period", |r| r.cpu_period = 999),
            ("cpu_period", |r| r.cpu_period = 1_000_001),
            ("cpu_shares", |r| r.cpu_shares = -5),
            ("memory_limit_in_bytes", |r| {
                r.memory_limit_in_bytes = 1 << 20
            }),
            ("memory_limit_in_bytes", |r| r.memory_limit_in_bytes = -7),
            ("memory_swap_limit_in_bytes", |r| {
                r.memory_limit_in_bytes = 64 << 20;
                r.memory_swap_limit_in_bytes = 32 << 20;
            }),
            ("cpuset_cpus", |r| r.cpuset_cpus = "0-".into()),
            ("cpuset_cpus", |r| r.cpuset_cpus = "3-1".into()),
            ("cpuset_mems", |r| r.cpuset_mems = "a,b".into()),
            ("oom_score_adj", |r| r.oom_score_adj = 1001),
        ];
        for (field, edit) in cases {
            let mut f = Fixture::new();
            edit(f.res());
            let err = f.build().unwrap_err();
            assert!(
                matches!(err, SpecError::InvalidArgument(_)),
                "{field}: {err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(field) && msg.contains("\"app\" (c1)"),
                "{field}: {msg}"
            );
        }
        assert!(
            valid_cpuset("0")
                && valid_cpuset("0-0,2,4-7")
                && !valid_cpuset("")
                && !valid_cpuset("1,,2")
        );
        assert!(!valid_cpuset(" 1") && !valid_cpuset("+1") && !valid_cpuset("1-2-3"));
    }

    // --- namespaces, process, misc -------------------------------------------------------------

    fn ns_table(spec: &Spec) -> Vec<(String, Option<PathBuf>)> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ().to_string(), n.path().clone()))
            .collect()
    }

    #[test]
    fn namespaces_with_pod_paths() {
        let mut f = Fixture::new();
        let cgroup = host_cgroup_v2().then(|| ("cgroup".to_string(), None));
        let with_cgroup = |mut v: Vec<(String, Option<PathBuf>)>| {
            v.extend(cgroup.clone());
            v
        };
        let spec = f.build().unwrap();
        assert_eq!(
            ns_table(&spec),
            with_cgroup(vec![
                ("pid".into(), None),
                ("net".into(), Some(f.path("pod/ns/net"))),
                ("ipc".into(), Some(f.path("pod/ns/ipc"))),
                ("uts".into(), Some(f.path("pod/ns/uts"))),
                ("mnt".into(), None),
            ])
        );
        assert_eq!(spec.hostname().as_deref(), Some("web-0"));

        // Host network/ipc/uts and a shared pid namespace.
        f.pod.netns = None;
        f.pod.ipcns = None;
        f.pod.utsns = None;
        f.pod.pidns = Some(f.path("pod/ns/pid"));
        let spec = f.build().unwrap();
        assert_eq!(
            ns_table(&spec),
            with_cgroup(vec![
                ("pid".into(), Some(f.path("pod/ns/pid"))),
                ("mnt".into(), None)
            ])
        );
        assert_eq!(spec.hostname(), &None);

        // The container's own option wins: CONTAINER = a new pid namespace.
        f.sc().namespace_options = Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        });
        assert_eq!(ns_table(&f.build().unwrap())[0], ("pid".into(), None));

        // Host pid.
        f.sc().namespace_options = None;
        f.pod.pidns = None;
        f.pod.host_pid = true;
        assert_eq!(ns_table(&f.build().unwrap())[0].0, "mnt");
    }

    #[test]
    fn process_fields() {
        let mut f = Fixture::new();
        f.image.config.working_dir = Some("/srv".into());
        f.image.config.env = strs(&["A=1"]);
        f.config.tty = true;
        f.sc().no_new_privs = true;
        let spec = f.build().unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &strs(&["/bin/app"]));
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert!(p.env().as_ref().unwrap().contains(&"A=1".to_string()));
        assert!(p.rlimits().is_none());
        assert_eq!(
            spec.root().as_ref().unwrap().path(),
            &f.path("bundle/rootfs")
        );
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));

        f.config.working_dir = "/work".into();
        assert_eq!(
            f.build().unwrap().process().as_ref().unwrap().cwd(),
            Path::new("/work")
        );
        f.config.working_dir = "rel".into();
        let msg = err_msg(f.build());
        assert!(msg.contains("working_dir"), "{msg}");
        f.config.working_dir.clear();
        f.image.config.working_dir = None;
        assert_eq!(
            f.build().unwrap().process().as_ref().unwrap().cwd(),
            Path::new("/")
        );
    }

    /// oci-spec's Default impls fill fields containerd leaves empty (ambient caps
    /// AUDIT_WRITE/KILL/NET_BIND_SERVICE, no_new_privileges true, an rlimit NOFILE 1024):
    /// none of them may leak into a container's spec.
    #[test]
    fn no_defaults_leak_from_oci_spec() {
        let f = Fixture::new();
        let spec = f.build().unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(false));
        assert!(p.rlimits().is_none());
        let caps = p.capabilities().as_ref().unwrap();
        assert!(caps.ambient().is_none(), "{caps:?}");
        assert!(caps.inheritable().is_none(), "{caps:?}");
        let want: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
        assert_eq!(caps.bounding().as_ref(), Some(&want));
        assert_eq!(caps.effective().as_ref(), Some(&want));
        assert_eq!(caps.permitted().as_ref(), Some(&want));
        assert!(p.apparmor_profile().is_none() && p.selinux_label().is_none());
        assert!(p.scheduler().is_none() && p.io_priority().is_none());
        let env = p.env().as_ref().unwrap();
        assert!(!env.iter().any(|e| e.starts_with("TERM=")), "{env:?}");
        assert_eq!(spec.hostname().as_deref(), Some("web-0"));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.uid_mappings().is_none());
        assert!(linux.time_offsets().is_none() && linux.memory_policy().is_none());
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
        assert!(spec.hooks().is_none());
    }

    fn env_of(f: &Fixture) -> Vec<String> {
        f.build()
            .unwrap()
            .process()
            .as_ref()
            .unwrap()
            .env()
            .clone()
            .unwrap()
    }

    #[test]
    fn home_from_passwd_unless_set() {
        let mut f = Fixture::new();
        f.with_users();
        // root, from /etc/passwd.
        assert!(env_of(&f).contains(&"HOME=/root".to_string()));
        f.image.config.user = Some("bob".into());
        assert!(env_of(&f).contains(&"HOME=/home/bob".to_string()));
        // A uid the image does not know: /.
        f.image.config.user = Some("4242".into());
        assert!(env_of(&f).contains(&"HOME=/".to_string()));
        // No passwd at all: /.
        f.layers.clear();
        f.image.config.user = None;
        assert!(env_of(&f).contains(&"HOME=/".to_string()));
        // The image's HOME, then CRI's, win; only one HOME.
        f.with_users();
        f.image.config.env = strs(&["HOME=/img"]);
        assert!(env_of(&f).contains(&"HOME=/img".to_string()));
        f.config.envs = vec![cri::KeyValue {
            key: "HOME".into(),
            value: "/cri".into(),
        }];
        let env = env_of(&f);
        assert!(env.contains(&"HOME=/cri".to_string()));
        assert_eq!(env.iter().filter(|e| e.starts_with("HOME=")).count(), 1);
    }

    #[test]
    fn spec_serde_round_trip() {
        let mut f = Fixture::new();
        f.with_users();
        f.image.config.user = Some("alice".into());
        f.pod
            .sysctls
            .insert("kernel.shm_rmid_forced".into(), "1".into());
        f.res().memory_limit_in_bytes = 64 << 20;
        f.res().cpu_shares = 2;
        f.config.devices = vec![cri::Device {
            container_path: "/dev/zero2".into(),
            host_path: "/dev/zero".into(),
            permissions: "rwm".into(),
        }];
        let src = f.path("host/vol");
        f.config.mounts = vec![cri_mount(
            "/vol",
            &src,
            true,
            cri::MountPropagation::PropagationPrivate,
        )];
        let spec = f.build().unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["ociVersion"], VERSION);
        assert_eq!(value["process"]["user"]["uid"], 1500);
        assert_eq!(value["linux"]["cgroupsPath"], "/kubepods/pod1/c1");
        assert!(value["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("CAP_CHOWN")));
        assert_eq!(value["annotations"][ANNOTATION_SANDBOX_ID], "pod1");
    }

    #[test]
    fn cgroup_path_helper() {
        assert_eq!(
            cgroup_path("/kubepods/burstable/pod1", "c1"),
            "/kubepods/burstable/pod1/c1"
        );
        assert_eq!(cgroup_path("/kubepods/", "c1"), "/kubepods/c1");
        assert_eq!(cgroup_path("kubepods", "c1"), "/kubepods/c1");
        assert_eq!(cgroup_path("", "c1"), "/cairn/c1");
    }

    #[test]
    fn stop_signals() {
        let sig = |s: Option<&str>| {
            let mut img = ImageConfig::default();
            img.config.stop_signal = s.map(str::to_string);
            stop_signal(&img)
        };
        assert_eq!(sig(None).unwrap(), libc::SIGTERM);
        assert_eq!(sig(Some("SIGKILL")).unwrap(), libc::SIGKILL);
        assert_eq!(sig(Some("quit")).unwrap(), libc::SIGQUIT);
        assert_eq!(sig(Some("2")).unwrap(), 2);
        assert_eq!(sig(Some("SIGRTMIN+3")).unwrap(), libc::SIGRTMIN() + 3);
        assert!(sig(Some("SIGNOPE")).is_err());
        assert!(sig(Some("0")).is_err());
    }

    // --- seccomp, AppArmor, SELinux, sysctls, namespace options --------------------------------

    fn seccomp_of(spec: &Spec) -> Option<oci_spec::runtime::LinuxSeccomp> {
        spec.linux().as_ref().unwrap().seccomp().clone()
    }

    fn profile(kind: cri::security_profile::ProfileType, r: &str) -> Option<cri::SecurityProfile> {
        Some(cri::SecurityProfile {
            profile_type: kind as i32,
            localhost_ref: r.to_string(),
        })
    }

    #[test]
    #[allow(deprecated)]
    fn seccomp_profiles() {
        use cri::security_profile::ProfileType::*;
        let caps = |spec: &Spec| -> Capabilities {
            let p = spec.process().as_ref().unwrap();
            p.capabilities()
                .as_ref()
                .unwrap()
                .bounding()
                .clone()
                .unwrap()
        };
        // Nothing said: unconfined, as CRI defines it.
        let mut f = Fixture::new();
        let spec = f.build().unwrap();
        assert_eq!(seccomp_of(&spec), None);
        // RuntimeDefault: cairn's default for the container's capabilities.
        let want = cairn_kernel::seccomp::default_profile(&caps(&spec));
        f.sc().seccomp = profile(RuntimeDefault, "");
        assert_eq!(seccomp_of(&f.build().unwrap()), Some(want));
        // Capabilities shape it: CAP_SYS_ADMIN allows mount.
        f.sc().capabilities = Some(cri::Capability {
            add_capabilities: strs(&["SYS_ADMIN"]),
            ..Default::default()
        });
        let spec = f.build().unwrap();
        let names: Vec<String> = seccomp_of(&spec)
            .unwrap()
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|s| s.names().clone())
            .collect();
        assert!(names.contains(&"mount".to_string()));
        f.sc().capabilities = None;
        // Unconfined, and privileged whatever it asks: none.
        f.sc().seccomp = profile(Unconfined, "");
        assert_eq!(seccomp_of(&f.build().unwrap()), None);
        f.sc().seccomp = profile(RuntimeDefault, "");
        f.sc().privileged = true;
        assert_eq!(seccomp_of(&f.build().unwrap()), None);
        f.sc().privileged = false;
        // Localhost: the file, read now.
        let file = f.path("profile.json");
        fs::write(
            &file,
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let path = file.display().to_string();
        f.sc().seccomp = profile(Localhost, &path);
        let got = seccomp_of(&f.build().unwrap()).unwrap();
        assert_eq!(
            got.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
        );
        // The deprecated string field.
        f.sc().seccomp = None;
        f.sc().seccomp_profile_path = format!("localhost/{path}");
        assert_eq!(seccomp_of(&f.build().unwrap()), Some(got));
        f.sc().seccomp_profile_path = "unconfined".into();
        assert_eq!(seccomp_of(&f.build().unwrap()), None);
        f.sc().seccomp_profile_path = "runtime/default".into();
        assert!(seccomp_of(&f.build().unwrap()).is_some());

        // Bad requests: missing, malformed, relative, unsupported, unknown.
        fs::write(f.path("bad.json"), "{\"defaultAction\": ").unwrap();
        let bad = f.path("bad.json").display().to_string();
        let missing = f.path("missing.json").display().to_string();
        let cases: [(Option<cri::SecurityProfile>, &str, &str); 6] = [
            (profile(Localhost, &missing), "", "missing.json"),
            (profile(Localhost, &bad), "", "malformed"),
            (profile(Localhost, "rel.json"), "", "not an absolute path"),
            (profile(Localhost, ""), "", "localhost_ref"),
            (None, "localhost/", "seccomp_profile_path"),
            (None, "docker/strict", "docker/strict"),
        ];
        for (p, legacy, want) in cases {
            f.sc().seccomp = p;
            f.sc().seccomp_profile_path = legacy.into();
            let err = f.build().unwrap_err();
            assert!(matches!(err, SpecError::InvalidArgument(_)), "{err}");
            assert!(err.to_string().contains(want), "{want}: {err}");
            assert!(err.to_string().contains("(c1)"), "{err}");
        }
        f.sc().seccomp_profile_path.clear();
        fs::write(
            f.path("notify.json"),
            r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#,
        )
        .unwrap();
        f.sc().seccomp = profile(Localhost, &f.path("notify.json").display().to_string());
        assert!(err_msg(f.build()).contains("SCMP_ACT_NOTIFY"));
    }

    #[test]
    #[allow(deprecated)]
    fn apparmor_and_selinux() {
        use cri::security_profile::ProfileType::*;
        let mut f = Fixture::new();
        f.sc().apparmor = profile(RuntimeDefault, "");
        assert!(f
            .build()
            .unwrap()
            .process()
            .as_ref()
            .unwrap()
            .apparmor_profile()
            .is_none());
        f.sc().apparmor = profile(Unconfined, "");
        f.build().unwrap();
        f.sc().apparmor = profile(Localhost, "my-profile");
        let msg = err_msg(f.build());
        assert!(msg.contains("AppArmor profile \"my-profile\""), "{msg}");
        f.sc().apparmor = None;
        f.sc().apparmor_profile = "localhost/other".into();
        assert!(err_msg(f.build()).contains("\"other\""));
        f.sc().apparmor_profile = "runtime/default".into();
        f.build().unwrap();
        f.sc().apparmor_profile.clear();

        f.sc().selinux_options = Some(cri::SeLinuxOption::default());
        f.build().unwrap();
        f.sc().selinux_options = Some(cri::SeLinuxOption {
            r#type: "spc_t".into(),
            ..Default::default()
        });
        let err = f.build().unwrap_err();
        assert!(matches!(err, SpecError::InvalidArgument(_)));
        assert!(err.to_string().contains("SELinux") && err.to_string().contains("spc_t"));
    }

    fn sysctls(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sysctl_validation() {
        let ok = sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("kernel.shm_rmid_forced", "1"),
            ("kernel.shmmax", "1000000"),
            ("kernel.msgmax", "8192"),
            ("kernel.sem", "250 32000 100 128"),
            ("fs.mqueue.msg_max", "10"),
        ]);
        validate_sysctls(&ok, false, false, "pod").unwrap();
        let cases = [
            ("kernel.hostname", false, false, "not namespaced"),
            ("vm.swappiness", false, false, "not namespaced"),
            ("kernel.panic", false, false, "not namespaced"),
            ("fs.file-max", false, false, "not namespaced"),
            ("kernel.semaphore", false, false, "not namespaced"),
            ("net.core.somaxconn", true, false, "hostNetwork"),
            ("kernel.shmall", false, true, "hostIPC"),
            ("fs.mqueue.queues_max", false, true, "hostIPC"),
            ("net..x", false, false, "not a valid name"),
            ("net/../../kernel/x", false, false, "not a valid name"),
        ];
        for (name, host_net, host_ipc, want) in cases {
            let err = validate_sysctls(&sysctls(&[(name, "1")]), host_net, host_ipc, "pod x")
                .unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, SpecError::InvalidArgument(_)), "{msg}");
            assert!(msg.contains(name) && msg.contains(want), "{name}: {msg}");
        }
        let err = validate_sysctls(&sysctls(&[("net.x", "1\n2")]), false, false, "p");
        assert!(err.unwrap_err().to_string().contains("newline"));

        // At CreateContainer too, against the pod's namespaces.
        let mut f = Fixture::new();
        f.pod.sysctls = sysctls(&[("net.ipv4.ip_forward", "1")]);
        f.build().unwrap();
        f.pod.netns = None;
        assert!(err_msg(f.build()).contains("net.ipv4.ip_forward"));
        f.pod.sysctls = sysctls(&[("kernel.domainname", "x")]);
        assert!(err_msg(f.build()).contains("not namespaced"));
    }

    fn pod_config(
        ns: Option<cri::NamespaceOption>,
        sysctls: HashMap<String, String>,
    ) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                namespace: "prod".into(),
                ..Default::default()
            }),
            linux: Some(cri::LinuxPodSandboxConfig {
                sysctls,
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: ns,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn sandbox_validation() {
        use cri::NamespaceMode::*;
        let ns = |network: cri::NamespaceMode, pid: cri::NamespaceMode, ipc: cri::NamespaceMode| {
            Some(cri::NamespaceOption {
                network: network as i32,
                pid: pid as i32,
                ipc: ipc as i32,
                ..Default::default()
            })
        };
        validate_sandbox(&cri::PodSandboxConfig::default()).unwrap();
        validate_sandbox(&pod_config(ns(Node, Node, Node), HashMap::new())).unwrap();
        validate_sandbox(&pod_config(ns(Pod, Container, Pod), HashMap::new())).unwrap();
        let bad = [
            (ns(Container, Pod, Pod), "network CONTAINER"),
            (ns(Pod, Target, Pod), "pid TARGET"),
            (ns(Pod, Pod, Target), "ipc TARGET"),
            (
                Some(cri::NamespaceOption {
                    pid: 7,
                    ..Default::default()
                }),
                "unknown mode 7",
            ),
            (
                Some(cri::NamespaceOption {
                    target_id: "abc".into(),
                    ..Default::default()
                }),
                "target_id",
            ),
            (
                Some(cri::NamespaceOption {
                    userns_options: Some(userns(vec![idmap(100000, 0, 65536)], vec![])),
                    ..Default::default()
                }),
                "gids is empty",
            ),
            (
                Some(cri::NamespaceOption {
                    network: Node as i32,
                    userns_options: Some(standard_userns()),
                    ..Default::default()
                }),
                "network NODE cannot be combined with a user namespace",
            ),
            (
                Some(cri::NamespaceOption {
                    pid: Node as i32,
                    userns_options: Some(standard_userns()),
                    ..Default::default()
                }),
                "pid NODE cannot be combined",
            ),
            (
                Some(cri::NamespaceOption {
                    userns_options: Some(cri::UserNamespace {
                        mode: Container as i32,
                        ..standard_userns()
                    }),
                    ..Default::default()
                }),
                "mode CONTAINER is not supported",
            ),
        ];
        for (opts, want) in bad {
            let msg = err_msg(validate_sandbox(&pod_config(opts, HashMap::new())));
            assert!(
                msg.contains(want) && msg.contains("prod/web"),
                "{want}: {msg}"
            );
        }
        // Sysctls against the pod's namespace options.
        let net = sysctls(&[("net.ipv4.ip_forward", "1")]);
        validate_sandbox(&pod_config(None, net.clone())).unwrap();
        let msg = err_msg(validate_sandbox(&pod_config(ns(Node, Pod, Pod), net)));
        assert!(msg.contains("net.ipv4.ip_forward"), "{msg}");
        let msg = err_msg(validate_sandbox(&pod_config(
            None,
            sysctls(&[("kernel.msgmax", "1"), ("kernel.core_pattern", "x")]),
        )));
        assert!(msg.contains("kernel.core_pattern"), "{msg}");
        // The sandbox's own seccomp, AppArmor and SELinux requests.
        let mut config = pod_config(None, HashMap::new());
        let sc = config
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap();
        sc.seccomp = profile(
            cri::security_profile::ProfileType::Localhost,
            "/cairn/no/such/profile.json",
        );
        assert!(err_msg(validate_sandbox(&config)).contains("/cairn/no/such/profile.json"));
        let sc = config
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap();
        sc.seccomp = None;
        sc.apparmor = profile(cri::security_profile::ProfileType::Localhost, "x");
        assert!(err_msg(validate_sandbox(&config)).contains("AppArmor"));
    }

    #[test]
    fn container_namespace_options() {
        use cri::NamespaceMode::*;
        let mut f = Fixture::new();
        let set = |f: &mut Fixture, o: cri::NamespaceOption| {
            f.sc().namespace_options = Some(o);
        };
        // The pod's own network/ipc, or NODE with a host-network pod.
        set(&mut f, cri::NamespaceOption::default());
        f.build().unwrap();
        let conflicts = [
            (
                cri::NamespaceOption {
                    network: Node as i32,
                    ..Default::default()
                },
                "network NODE conflicts",
            ),
            (
                cri::NamespaceOption {
                    ipc: Node as i32,
                    ..Default::default()
                },
                "ipc NODE conflicts",
            ),
            (
                cri::NamespaceOption {
                    network: Container as i32,
                    ..Default::default()
                },
                "network CONTAINER",
            ),
            (
                cri::NamespaceOption {
                    pid: Target as i32,
                    ..Default::default()
                },
                "TARGET needs a target_id",
            ),
            (
                cri::NamespaceOption {
                    pid: Container as i32,
                    target_id: "other".into(),
                    ..Default::default()
                },
                "not TARGET",
            ),
            (
                cri::NamespaceOption {
                    userns_options: Some(standard_userns()),
                    ..Default::default()
                },
                "user namespaces are made per pod",
            ),
        ];
        for (o, want) in conflicts {
            set(&mut f, o);
            let err = f.build().unwrap_err();
            assert!(matches!(err, SpecError::InvalidArgument(_)), "{err}");
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
        f.pod.netns = None;
        set(
            &mut f,
            cri::NamespaceOption {
                network: Node as i32,
                ..Default::default()
            },
        );
        f.build().unwrap();

        // TARGET: a placeholder the runtime points at the target's namespace.
        set(
            &mut f,
            cri::NamespaceOption {
                pid: Target as i32,
                target_id: "c0".into(),
                ..Default::default()
            },
        );
        assert_eq!(pid_target(&f.config), Some("c0"));
        let mut spec = f.build().unwrap();
        set_pid_namespace(&mut spec, PathBuf::from("/proc/42/ns/pid"));
        let table = ns_table(&spec);
        assert_eq!(
            table[0],
            ("pid".to_string(), Some(PathBuf::from("/proc/42/ns/pid")))
        );
        assert_eq!(table.iter().filter(|(t, _)| t == "pid").count(), 1);
        set(&mut f, cri::NamespaceOption::default());
        assert_eq!(pid_target(&f.config), None);
    }

    fn idmap(host_id: u32, container_id: u32, length: u32) -> cri::IdMapping {
        cri::IdMapping {
            host_id,
            container_id,
            length,
        }
    }

    fn userns(uids: Vec<cri::IdMapping>, gids: Vec<cri::IdMapping>) -> cri::UserNamespace {
        cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids,
            gids,
        }
    }

    /// kubelet's usual request: container ids 0..65536 on host ids 100000..165536.
    fn standard_userns() -> cri::UserNamespace {
        userns(vec![idmap(100000, 0, 65536)], vec![idmap(100000, 0, 65536)])
    }

    #[test]
    fn id_mapping_validation() {
        let check = |maps: Vec<cri::IdMapping>| check_id_mappings(&maps, "uids", "pod");
        check(vec![idmap(100000, 0, 65536)]).unwrap();
        // Several ranges, in any order, none overlapping on either side.
        check(vec![idmap(300000, 1000, 10), idmap(100000, 0, 1000)]).unwrap();
        check(vec![idmap(0, 0, u32::MAX)]).unwrap();
        let bad = [
            (vec![], "is empty"),
            (vec![idmap(100000, 0, 0)], "length must be above 0"),
            (vec![idmap(100000, 1, 65535)], "does not map container id 0"),
            (vec![idmap(u32::MAX - 5, 0, 10)], "runs past the largest id"),
            (vec![idmap(0, 1, u32::MAX)], "runs past the largest id"),
            (
                vec![idmap(100000, 0, 65536), idmap(300000, 65535, 10)],
                "overlap on the container side",
            ),
            (
                vec![idmap(100000, 0, 1000), idmap(100500, 5000, 10)],
                "overlap on the host side",
            ),
            (
                vec![idmap(1, 0, 1); MAX_ID_MAPPINGS + 1],
                "entries, at most",
            ),
        ];
        for (maps, want) in bad {
            let msg = err_msg(check(maps.clone()));
            assert!(
                msg.contains(want) && msg.contains("uids"),
                "{maps:?}: {msg}"
            );
        }
        assert_eq!(host_id_of(&[idmap(100000, 0, 10)], 9), Some(100009));
        assert_eq!(host_id_of(&[idmap(100000, 0, 10)], 10), None);
    }

    #[test]
    fn sandbox_with_user_namespace() {
        let ns = |u: cri::UserNamespace| {
            Some(cri::NamespaceOption {
                userns_options: Some(u),
                ..Default::default()
            })
        };
        let config = pod_config(ns(standard_userns()), HashMap::new());
        validate_sandbox(&config).unwrap();
        assert_eq!(requested_userns(&config), Some(&standard_userns()));
        // Mode NODE: the host's user namespace, as without options.
        let node = cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            ..Default::default()
        };
        let config = pod_config(ns(node), HashMap::new());
        validate_sandbox(&config).unwrap();
        assert_eq!(requested_userns(&config), None);
        let overlapping = userns(
            vec![idmap(100000, 0, 65536), idmap(200000, 10, 1)],
            vec![idmap(100000, 0, 65536)],
        );
        let msg = err_msg(validate_sandbox(&pod_config(
            ns(overlapping),
            HashMap::new(),
        )));
        assert!(msg.contains("overlap") && msg.contains("prod/web"), "{msg}");
    }

    #[test]
    fn containers_in_a_pod_user_namespace() {
        use cri::NamespaceMode::*;
        let mut f = Fixture::new();
        let u = standard_userns();
        f.pod.userns = Some(PodUserns {
            path: f.path("pod/ns/user"),
            uids: u.uids.clone(),
            gids: u.gids.clone(),
        });
        // Without options (the pod's), or with the pod's own.
        let spec = f.build().unwrap();
        let table = ns_table(&spec);
        assert_eq!(table[0], ("user".to_string(), Some(f.path("pod/ns/user"))));
        let linux = spec.linux().as_ref().unwrap();
        for maps in [linux.uid_mappings(), linux.gid_mappings()] {
            let maps = maps.as_ref().unwrap();
            assert_eq!(maps.len(), 1);
            let m = &maps[0];
            assert_eq!(
                (m.container_id(), m.host_id(), m.size()),
                (0, 100000, 65536)
            );
        }
        f.sc().namespace_options = Some(cri::NamespaceOption {
            userns_options: Some(u.clone()),
            ..Default::default()
        });
        f.build().unwrap();
        let cases = [
            (
                cri::NamespaceOption {
                    userns_options: Some(userns(vec![idmap(200000, 0, 65536)], u.gids.clone())),
                    ..Default::default()
                },
                "differ from the pod's",
            ),
            (
                cri::NamespaceOption {
                    userns_options: Some(cri::UserNamespace {
                        mode: Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "NODE conflicts with the pod",
            ),
            (
                cri::NamespaceOption {
                    pid: Node as i32,
                    userns_options: Some(u.clone()),
                    ..Default::default()
                },
                "pid NODE conflicts with the pod's user namespace",
            ),
            (
                cri::NamespaceOption {
                    userns_options: Some(userns(
                        vec![idmap(100000, 0, 65536), idmap(100000, 1, 1)],
                        u.gids.clone(),
                    )),
                    ..Default::default()
                },
                "overlap",
            ),
        ];
        for (o, want) in cases {
            f.sc().namespace_options = Some(o);
            let err = f.build().unwrap_err();
            assert!(matches!(err, SpecError::InvalidArgument(_)), "{err}");
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
        // No user namespace: no mappings in the spec.
        f.pod.userns = None;
        f.sc().namespace_options = None;
        let spec = f.build().unwrap();
        assert!(spec.linux().as_ref().unwrap().uid_mappings().is_none());
        assert!(ns_table(&spec).iter().all(|(t, _)| t != "user"));
    }

    #[test]
    fn recursive_read_only_needs_private_propagation() {
        let mut f = Fixture::new();
        let src = f.path("host/ro");
        let mut m = cri_mount("/ro", &src, true, cri::MountPropagation::PropagationPrivate);
        m.recursive_read_only = true;
        f.config.mounts = vec![m.clone()];
        let spec = f.build().unwrap();
        let mount = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/ro"))
            .unwrap()
            .clone();
        assert!(mount
            .options()
            .as_ref()
            .unwrap()
            .contains(&"rro".to_string()));
        m.propagation = cri::MountPropagation::PropagationHostToContainer as i32;
        f.config.mounts = vec![m];
        assert!(err_msg(f.build()).contains("private propagation"));
    }
}
