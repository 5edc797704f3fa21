//! A RunPodSandbox request checked before anything is made: hostname, namespaces, sysctls,
//! security profiles.
//! Runs in cairnd.

use super::*;

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
pub(super) const HOST_NAME_MAX: usize = 64;

/// A pod's hostname must fit the kernel's UTS name (empty means the node's, see
/// `runtime::pod_hostname`); kubelet already keeps it to a DNS label.
pub(super) fn check_hostname(hostname: &str, who: &str) -> Result<(), SpecError> {
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
