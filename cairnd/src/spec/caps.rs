//! The container's capabilities: the default set, CRI add/drop (with or without `CAP_`,
//! `ALL`), privileged containers bounded by cairnd's own set.
//! Runs in cairnd.

use super::*;

// Capabilities

pub(super) fn parse_capability(name: &str, who: &str) -> Result<Capability, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse()
        .map_err(|_| invalid(who, format!("unknown capability {name:?}")))
}

pub(super) fn is_all(name: &str) -> bool {
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
pub(super) fn capability_set(
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
pub(super) fn capabilities(
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
