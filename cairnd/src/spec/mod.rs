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
//! Runs in cairnd.

use std::collections::{HashMap, HashSet};

use std::fs;

use std::io;

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use std::path::{Path, PathBuf};

use cairn_kernel::caps::{capability_number, ALL_CAPABILITIES, DEFAULT_CAPABILITIES};

use cairn_kernel::devices::{default_device_rules, device_rule};

use cairn_proto::cri;

use cairn_snapshotter::manifest::ImageConfig;

use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxCapabilities, LinuxCpu, LinuxDevice, LinuxDeviceCgroup,
    LinuxDeviceType, LinuxHugepageLimit, LinuxIdMappingBuilder, LinuxMemory, LinuxNamespace,
    LinuxNamespaceType, LinuxResources, Mount, Process, Root, Spec, User, VERSION,
};

mod caps;
mod devices;
mod mounts;
mod namespaces;
mod resources;
mod sandbox;
mod security;
#[cfg(test)]
mod tests;
mod user;

pub use namespaces::{pid_target, requested_userns, set_pid_namespace, PodUserns};
pub use resources::update_resources;
pub use sandbox::validate_sandbox;

use caps::*;
use devices::*;
use mounts::*;
use namespaces::*;
use resources::*;
use security::*;
use user::*;

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

/// Annotation keys cairn writes into every container spec.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

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
