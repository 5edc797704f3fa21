//! The container's user: CRI run_as_user / run_as_username / run_as_group or the image's
//! `User`, names looked up in the image's /etc/passwd and /etc/group read through its
//! layers (whiteouts and opaque dirs honoured), supplemental groups, HOME.
//! Runs in cairnd.

use super::*;

// Users

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// One line of /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

pub(super) fn db_lines(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(['+', '-']))
        .map(|l| l.split(':').collect())
}

pub(super) fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
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

pub(super) fn parse_group(text: &str) -> Vec<GroupEntry> {
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
pub(super) enum Id {
    Num(u32),
    Name(String),
}

pub(super) fn parse_id(s: &str) -> Id {
    match s.parse::<u32>() {
        Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => Id::Num(n),
        _ => Id::Name(s.to_string()),
    }
}

pub(super) fn to_id(value: i64, who: &str, field: &str) -> Result<u32, SpecError> {
    u32::try_from(value).map_err(|_| invalid(who, format!("{field} {value} is not a valid id")))
}

/// The user and group the container asks for, before looking names up.
pub(super) fn requested_user(
    c: &ContainerContext,
    who: &str,
) -> Result<(Option<Id>, Option<Id>), SpecError> {
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

/// The container's user and home directory. The user: CRI run_as_user / run_as_username /
/// run_as_group, else the image's User ("uid", "uid:gid", "name", "name:group"); names are looked up in the image's /etc/passwd
/// and /etc/group through `rootfs_layers`. The gid defaults to the passwd entry's (or 0). The
/// additional gids are the primary gid, the groups of /etc/group listing the user (unless the
/// supplemental groups policy is Strict) and the CRI supplemental groups. The home: the
/// passwd entry's, `/` when the image does not know the uid or gives no home (as Docker
/// and containerd do).
pub(super) fn resolve_user_and_home(c: &ContainerContext) -> Result<(User, String), SpecError> {
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

/// Reads `rel` from the topmost layer that has it, as the container will see it;
/// `None` if no layer has it or one hides it.
pub(super) fn read_layered(layers: &[PathBuf], rel: &Path) -> Result<Option<String>, SpecError> {
    let bytes = cairn_snapshotter::layered::read(layers, rel)
        .map_err(|e| SpecError::io("read image file", &e.path, e.source))?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}
