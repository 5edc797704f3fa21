//! The container's namespaces: the pod's (net, ipc, uts, pid, user) joined, its own mount
//! and pid namespaces, pid TARGET, and the checks of the CRI namespace and user-namespace
//! options.
//! Runs in cairnd.

use super::*;

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

pub(super) fn end(start: u32, length: u32) -> u64 {
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

// Linux: namespaces, resources, devices

pub(super) fn namespace(typ: LinuxNamespaceType, path: Option<&PathBuf>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ).set_path(path.cloned());
    ns
}

/// The pid namespace: the container's own namespace option decides when kubelet sent one
/// (NODE = host, CONTAINER = new, POD = the pod's); otherwise the pod context does.
pub(super) fn pid_namespace(
    pod: &PodContext,
    config: &cri::ContainerConfig,
) -> Option<LinuxNamespace> {
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

pub(super) fn namespaces(
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

pub(super) fn mode_of(value: i32, field: &str, who: &str) -> Result<cri::NamespaceMode, SpecError> {
    cri::NamespaceMode::try_from(value).map_err(|_| {
        invalid(
            who,
            format!("namespace_options.{field}: unknown mode {value}"),
        )
    })
}

/// Most entries a uid_map or gid_map may have (the kernel's limit).
pub(super) const MAX_ID_MAPPINGS: usize = 340;

/// A pod's user namespace request: mode NODE (the host's, as without one) or POD with
/// valid mappings; CONTAINER and TARGET are not modes kubelet uses for user namespaces.
pub(super) fn check_userns(o: &cri::NamespaceOption, who: &str) -> Result<(), SpecError> {
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
pub(super) fn check_container_userns(
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
pub(super) fn check_pod_namespaces(o: &cri::NamespaceOption, who: &str) -> Result<(), SpecError> {
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
pub(super) fn check_container_namespaces(
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
