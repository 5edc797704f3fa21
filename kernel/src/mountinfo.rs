//! The mount table of the calling process's mount namespace (`/proc/self/mountinfo`), as
//! cairnd reads it: where the cgroup hierarchies are mounted, and whether the mount
//! holding a volume's source propagates, for the CRI mount propagation modes.

use std::path::{Path, PathBuf};

/// One line of mountinfo, the fields cairn uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// The optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
    pub fstype: String,
    pub super_options: String,
}

impl MountEntry {
    /// Whether the mount is in a peer group (mounts under it propagate to its peers).
    pub fn is_shared(&self) -> bool {
        self.optional.iter().any(|f| f.starts_with("shared:"))
    }

    /// Whether the mount receives propagation from a master (a slave mount).
    pub fn is_slave(&self) -> bool {
        self.optional.iter().any(|f| f.starts_with("master:"))
    }
}

/// The mount table of this process's mount namespace.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_line).collect())
}

/// The mount `path` (absolute, symlinks resolved) is on: the last-mounted entry whose
/// mount point is the longest prefix of it.
pub fn mount_of<'a>(table: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    table
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.components().count(), *i))
        .map(|(_, m)| m)
}

/// Splits one mountinfo line: `id parent dev root mount-point options [optional...] -
/// fstype source super-options`.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut left = left.split(' ');
    let mount_point = left.nth(4)?;
    let _options = left.next()?;
    let optional = left.map(str::to_string).collect();
    let mut right = right.split(' ');
    let fstype = right.next()?.to_string();
    let _source = right.next()?;
    let super_options = right.next().unwrap_or("").to_string();
    Some(MountEntry {
        mount_point: PathBuf::from(unescape(mount_point)),
        optional,
        fstype,
        super_options,
    })
}

/// Undoes the octal escapes (`\040` for a space) the kernel uses in mountinfo paths.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(value) = octal_escape(&bytes[i..]) {
            out.push(value);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte of a `\\NNN` escape at the start of `bytes`, if there is one.
fn octal_escape(bytes: &[u8]) -> Option<u8> {
    let [b'\\', a, b, c, ..] = *bytes else {
        return None;
    };
    let digit = |d: u8| (b'0'..=b'7').contains(&d).then(|| u32::from(d - b'0'));
    let value = digit(a)? * 64 + digit(b)? * 8 + digit(c)?;
    u8::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
        assert_eq!(unescape(r"/not\999octal"), r"/not\999octal");
    }

    #[test]
    fn optional_fields_and_the_mount_of_a_path() {
        let table: Vec<MountEntry> = [
            "22 1 8:1 / / rw,relatime - ext4 /dev/vda rw",
            "30 22 0:5 / /mnt/vol rw shared:7 - tmpfs tmpfs rw",
            "31 30 0:6 / /mnt/vol/sub rw master:7 - tmpfs tmpfs rw",
            "32 22 0:7 / /mnt/vol\\040x rw shared:9 master:2 - tmpfs tmpfs rw",
        ]
        .into_iter()
        .filter_map(parse_line)
        .collect();
        assert_eq!(table.len(), 4);
        assert!(table[0].optional.is_empty() && !table[0].is_shared());
        assert!(table[1].is_shared() && !table[1].is_slave());
        assert!(table[3].is_shared() && table[3].is_slave());
        let of = |p: &str| mount_of(&table, Path::new(p)).unwrap().mount_point.clone();
        assert_eq!(of("/mnt/vol/a"), Path::new("/mnt/vol"));
        assert_eq!(of("/mnt/vol/sub/b"), Path::new("/mnt/vol/sub"));
        assert_eq!(of("/mnt/volume"), Path::new("/"));
        assert_eq!(of("/mnt/vol x/y"), Path::new("/mnt/vol x"));
        assert_eq!(table[1].fstype, "tmpfs");
    }
}
