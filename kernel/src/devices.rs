//! Device access rules of a container's cgroup (OCI `linux.resources.devices`): runc's
//! default list, and their installation before any process joins the cgroup, into the v1
//! `devices` controller where there is one, else as a cgroup2 device program
//! ([`crate::devfilter`]). cairnd installs them when it makes the cgroup; the shim's
//! launcher does for a cgroup it makes itself.

use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::devfilter::{self, DevFilterError};

/// Why device rules could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceRulesError {
    /// A rule the device program cannot express.
    #[error("{0}")]
    InvalidRule(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// One OCI device cgroup rule.
pub fn device_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(allow)
        .set_typ(Some(typ))
        .set_major(major)
        .set_minor(minor)
        .set_access(Some(access.to_string()));
    rule
}

/// runc's default device rules: deny everything, then allow mknod of any device and the
/// use of null, zero, full, random, urandom, tty, ptmx and the pty slaves.
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{A, B, C};
    vec![
        device_rule(false, A, None, None, "rwm"),
        device_rule(true, C, None, None, "m"),
        device_rule(true, B, None, None, "m"),
        device_rule(true, C, Some(1), Some(3), "rwm"),
        device_rule(true, C, Some(1), Some(5), "rwm"),
        device_rule(true, C, Some(1), Some(7), "rwm"),
        device_rule(true, C, Some(1), Some(8), "rwm"),
        device_rule(true, C, Some(1), Some(9), "rwm"),
        device_rule(true, C, Some(5), Some(0), "rwm"),
        device_rule(true, C, Some(5), Some(2), "rwm"),
        device_rule(true, C, Some(136), None, "rwm"),
    ]
}

/// Installs `rules` in the cgroup whose directories (one per hierarchy) are `dirs`. With
/// CAP_MKNOD a container may create any node, and these rules decide which ones it may
/// open. On cgroup v1 (and the hybrid layout) they are written, in order, into the
/// `devices` hierarchy (the first rule denies everything, "a"), and the hybrid layout's
/// controller-less cgroup2 dir gets no program (it would only check them a second time,
/// at the cost of a BPF load per container). Without a v1 `devices` hierarchy (pure v2)
/// they are compiled to a device program attached to the cgroup2 dir; rules that allow
/// everything attach nothing. No rules: nothing to do.
pub fn install(dirs: &[&Path], rules: &[LinuxDeviceCgroup]) -> Result<(), DeviceRulesError> {
    if rules.is_empty() {
        return Ok(());
    }
    if let Some(dir) = dirs.iter().find(|d| d.join("devices.allow").exists()) {
        return write_v1(dir, rules);
    }
    for dir in dirs.iter().filter(|d| devfilter::is_cgroup2(d)) {
        devfilter::install(dir, rules).map_err(|e| match e {
            DevFilterError::InvalidRule { .. } => DeviceRulesError::InvalidRule(e.to_string()),
            DevFilterError::Io { context, source } => DeviceRulesError::Io { context, source },
        })?;
    }
    Ok(())
}

/// Writes device rules into a cgroup v1 `devices` directory.
fn write_v1(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), DeviceRulesError> {
    for rule in rules {
        let file = if rule.allow() {
            "devices.allow"
        } else {
            "devices.deny"
        };
        let Some(line) = v1_line(rule) else {
            continue;
        };
        let path = dir.join(file);
        std::fs::write(&path, &line).map_err(|source| DeviceRulesError::Io {
            context: format!("writing {line:?} to {}", path.display()),
            source,
        })?;
    }
    Ok(())
}

/// A device rule as the v1 devices controller reads it: `c 1:3 rwm`, `b *:* m`, `a`; None
/// for fifos, which the controller does not govern.
pub fn v1_line(rule: &LinuxDeviceCgroup) -> Option<String> {
    let typ = match rule.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => return Some("a".to_string()),
        LinuxDeviceType::B => 'b',
        LinuxDeviceType::C | LinuxDeviceType::U => 'c',
        LinuxDeviceType::P => return None,
    };
    let number = |n: Option<i64>| n.map_or("*".to_string(), |n| n.to_string());
    let access = rule.access().as_deref().unwrap_or("rwm");
    Some(format!(
        "{typ} {}:{} {access}",
        number(rule.major()),
        number(rule.minor())
    ))
}
