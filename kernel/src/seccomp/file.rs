//! Localhost profiles: the JSON of OCI `linux.seccomp` or Docker's format (`archMap`,
//! `includes`/`excludes` by capability, architecture and kernel version), read into an
//! OCI `LinuxSeccomp`.
//! Runs in cairnd (which compiles profiles); cairn-shim loads the compiled program.

use super::*;

/// A profile file: the OCI `linux.seccomp` object, or Docker's format (which adds `archMap`,
/// `name`, `includes`, `excludes`, `comment`). Unknown fields are ignored, as Docker does.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FileProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    arch_map: Option<Vec<FileArchMap>>,
    #[serde(default)]
    flags: Option<Vec<String>>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    listener_metadata: Option<String>,
    #[serde(default)]
    syscalls: Option<Vec<FileSyscall>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FileArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FileSyscall {
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<FileArg>>,
    #[serde(default)]
    includes: Option<FileFilter>,
    #[serde(default)]
    excludes: Option<FileFilter>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FileArg {
    index: usize,
    value: u64,
    #[serde(default)]
    value_two: Option<u64>,
    op: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FileFilter {
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// Reads a Localhost profile file for a container holding `caps`. A missing, unreadable or
/// malformed file is an error naming it.
pub fn load_profile(path: &Path, caps: &Capabilities) -> Result<LinuxSeccomp, SeccompError> {
    let bytes = std::fs::read(path)
        .map_err(|e| error(format!("seccomp profile {}: {e}", path.display())))?;
    parse_profile(&bytes, caps)
        .map_err(|e| error(format!("seccomp profile {}: {}", path.display(), e.0)))
}

/// Parses a profile (OCI or Docker JSON). Docker's conditional rules are resolved here:
/// `includes` / `excludes` against `caps`, the host architecture and the running kernel.
pub fn parse_profile(json: &[u8], caps: &Capabilities) -> Result<LinuxSeccomp, SeccompError> {
    let file: FileProfile =
        serde_json::from_slice(json).map_err(|e| error(format!("malformed JSON: {e}")))?;
    let kernel = kernel_version();
    let mut rules = Vec::new();
    for (i, s) in file.syscalls.iter().flatten().enumerate() {
        let included = s
            .includes
            .as_ref()
            .is_none_or(|f| filter_matches(f, caps, kernel, true));
        let excluded = s
            .excludes
            .as_ref()
            .is_some_and(|f| filter_matches(f, caps, kernel, false));
        let rule = file_rule(s).map_err(|e| error(format!("syscalls[{i}]: {}", e.0)))?;
        if included && !excluded {
            rules.push(rule);
        }
    }
    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(parse_action(&file.default_action)?)
        .set_default_errno_ret(file.default_errno_ret)
        .set_architectures(file_architectures(&file)?)
        .set_flags(match &file.flags {
            Some(flags) => Some(
                flags
                    .iter()
                    .map(|f| parse_flag(f))
                    .collect::<Result<_, _>>()?,
            ),
            None => None,
        })
        .set_listener_path(file.listener_path.as_ref().map(Into::into))
        .set_listener_metadata(file.listener_metadata.clone())
        .set_syscalls(Some(rules));
    Ok(profile)
}

pub(super) fn file_rule(s: &FileSyscall) -> Result<LinuxSyscall, SeccompError> {
    let mut names: Vec<String> = s.names.clone().unwrap_or_default();
    names.extend(s.name.clone());
    names.retain(|n| !n.is_empty());
    if names.is_empty() {
        return Err(error("no syscall names"));
    }
    let mut args = Vec::new();
    for a in s.args.iter().flatten() {
        if a.index > 5 {
            return Err(error(format!("argument index {} is above 5", a.index)));
        }
        args.push(arg(a.index, parse_operator(&a.op)?, a.value, a.value_two));
    }
    let mut rule = LinuxSyscall::default();
    rule.set_names(names)
        .set_action(parse_action(&s.action)?)
        .set_errno_ret(s.errno_ret)
        .set_args((!args.is_empty()).then_some(args));
    Ok(rule)
}

pub(super) fn parse_action(s: &str) -> Result<LinuxSeccompAction, SeccompError> {
    LinuxSeccompAction::from_str(s).map_err(|_| error(format!("unknown action {s:?}")))
}

pub(super) fn parse_operator(s: &str) -> Result<LinuxSeccompOperator, SeccompError> {
    LinuxSeccompOperator::from_str(s).map_err(|_| error(format!("unknown operator {s:?}")))
}

pub(super) fn parse_flag(s: &str) -> Result<LinuxSeccompFilterFlag, SeccompError> {
    LinuxSeccompFilterFlag::from_str(s).map_err(|_| error(format!("unknown flag {s:?}")))
}

pub(super) fn parse_arch(s: &str) -> Result<Arch, SeccompError> {
    Arch::from_str(s).map_err(|_| error(format!("unknown architecture {s:?}")))
}

/// `architectures`, or with Docker's `archMap` the entry of the host's architecture and its
/// sub-architectures.
pub(super) fn file_architectures(file: &FileProfile) -> Result<Option<Vec<Arch>>, SeccompError> {
    let mut out = Vec::new();
    for a in file.architectures.iter().flatten() {
        out.push(parse_arch(a)?);
    }
    let native = host_architectures()[0];
    for entry in file.arch_map.iter().flatten() {
        let arch = parse_arch(&entry.architecture)?;
        let subs = entry
            .sub_architectures
            .iter()
            .flatten()
            .map(|s| parse_arch(s))
            .collect::<Result<Vec<_>, _>>()?;
        if arch == native {
            out.push(arch);
            out.extend(subs);
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Whether a Docker `includes` (all conditions must hold) or `excludes` (any condition
/// excludes) filter matches this container and host.
pub(super) fn filter_matches(
    f: &FileFilter,
    caps: &Capabilities,
    kernel: (u32, u32),
    all: bool,
) -> bool {
    let mut tests: Vec<bool> = Vec::new();
    if let Some(list) = f.caps.as_ref().filter(|l| !l.is_empty()) {
        let held = |name: &String| {
            let upper = name.trim().to_ascii_uppercase();
            let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
            bare.parse::<Capability>().is_ok_and(|c| caps.contains(&c))
        };
        tests.push(if all {
            list.iter().all(held)
        } else {
            list.iter().any(held)
        });
    }
    if let Some(list) = f.arches.as_ref().filter(|l| !l.is_empty()) {
        tests.push(list.iter().any(|a| is_host_arch_name(a)));
    }
    if let Some(min) = f.min_kernel.as_deref().filter(|m| !m.is_empty()) {
        tests.push(parse_version(min).is_some_and(|m| kernel >= m));
    }
    if all {
        tests.iter().all(|t| *t)
    } else {
        tests.iter().any(|t| *t)
    }
}

/// The names Docker profiles give the host's architecture (Go's and the kernel's).
pub(super) fn is_host_arch_name(name: &str) -> bool {
    let names: &[&str] = if cfg!(target_arch = "aarch64") {
        &["arm64", "aarch64", "SCMP_ARCH_AARCH64"]
    } else {
        &["amd64", "x86_64", "SCMP_ARCH_X86_64"]
    };
    names.contains(&name)
}

pub(super) fn parse_version(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| {
        let digits: String = m.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })?;
    Some((major, minor))
}

/// The running kernel's (major, minor).
pub(super) fn kernel_version() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|r| parse_version(&r))
        .unwrap_or((0, 0))
}
