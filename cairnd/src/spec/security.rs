//! Security profiles and sysctls: seccomp (RuntimeDefault, Localhost, Unconfined; none
//! means unconfined), AppArmor and SELinux requests (this node has neither), namespaced
//! sysctls only.
//! Runs in cairnd.

use super::*;

// Security profiles, sysctls, namespace options

/// A seccomp or AppArmor profile as CRI asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Profile {
    RuntimeDefault,
    Unconfined,
    Localhost(String),
}

pub(super) fn profile_of(
    p: &cri::SecurityProfile,
    field: &str,
    who: &str,
) -> Result<Profile, SpecError> {
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
pub(super) fn legacy_profile(
    value: &str,
    field: &str,
    who: &str,
) -> Result<Option<Profile>, SpecError> {
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
pub(super) fn legacy_apparmor(s: &cri::LinuxContainerSecurityContext) -> &str {
    &s.apparmor_profile
}

/// The deprecated `seccomp_profile_path` field, still sent by older kubelets.
#[allow(deprecated)]
pub(super) fn legacy_seccomp(s: &cri::LinuxContainerSecurityContext) -> &str {
    &s.seccomp_profile_path
}

#[allow(deprecated)]
pub(super) fn legacy_sandbox_seccomp(s: &cri::LinuxSandboxSecurityContext) -> &str {
    &s.seccomp_profile_path
}

pub(super) fn requested_profile(
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
pub(super) fn seccomp_profile(
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

pub(super) fn localhost_seccomp(
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
pub(super) fn apparmor_enabled() -> bool {
    fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|v| v.trim() == "Y")
}

/// AppArmor: cairn loads no AppArmor profile. Unconfined is fine; RuntimeDefault is accepted
/// and runs without a profile (logged once, as containerd does on a node without AppArmor);
/// a named profile cannot be honoured and is refused.
pub(super) fn check_apparmor(
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
pub(super) fn check_selinux(opt: Option<&cri::SeLinuxOption>, who: &str) -> Result<(), SpecError> {
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
pub(super) enum SysctlNamespace {
    Network,
    Ipc,
}

/// Which namespace a sysctl (dotted `net.ipv4.ip_forward` or slashed
/// `net/ipv4/ip_forward`) lives in; None: not namespaced, it would change the host.
pub(super) fn sysctl_namespace(name: &str) -> Option<SysctlNamespace> {
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
