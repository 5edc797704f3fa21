//! Unit tests of the layer unpacker.

use super::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use tar::{Builder, Header};

const MTIME: u64 = 1_600_000_000;

/// A layer tar built in memory.
struct Layer(Builder<Vec<u8>>);

fn header(kind: EntryType, mode: u32, owner: (u64, u64), mtime: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(owner.0);
    h.set_gid(owner.1);
    h.set_mtime(mtime);
    h.set_size(0);
    h
}

impl Layer {
    fn new() -> Self {
        Layer(Builder::new(Vec::new()))
    }
    fn add(mut self, mut h: Header, path: &str, data: &[u8]) -> Self {
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    fn file(self, path: &str, data: &[u8]) -> Self {
        self.add(header(EntryType::Regular, 0o644, (0, 0), MTIME), path, data)
    }
    fn dir(self, path: &str) -> Self {
        self.add(
            header(EntryType::Directory, 0o755, (0, 0), MTIME),
            path,
            b"",
        )
    }
    fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
        let mut h = header(kind, 0o777, (0, 0), MTIME);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    fn node(self, kind: EntryType, path: &str, mode: u32, dev: (u32, u32)) -> Self {
        let mut h = header(kind, mode, (0, 0), MTIME);
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
        self.add(h, path, b"")
    }
    fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        self.0
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }
    /// An entry with a name and link name written verbatim (the builder refuses bad ones).
    fn raw(mut self, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> Self {
        let mut h = header(kind, 0o644, (0, 0), MTIME);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn unpack(tar: &[u8], root: &Path) -> Result<UnpackStats> {
    unpack_layer(tar, root, &[])
}

fn bad_content(result: Result<UnpackStats>, needle: &str) {
    match result {
        Err(Error::BadContent(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected BadContent({needle}), got {other:?}"),
    }
}

fn meta(path: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(path).unwrap()
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    let n = rfs::lgetxattr(path, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[test]
fn unpack_regular_files_keep_contents_mode_owner_mtime() {
    let root = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..3 * COPY_BUFFER + 17).map(|i| (i % 251) as u8).collect();
    let tar = Layer::new()
        .add(
            header(EntryType::Regular, 0o4755, (0, 0), 1234),
            "bin/su",
            b"su",
        )
        .add(
            header(EntryType::Regular, 0o2750, (1000, 2000), 5678),
            "a/sgid",
            b"x",
        )
        .add(
            header(EntryType::Directory, 0o1777, (0, 0), 99),
            "tmp/",
            b"",
        )
        .file("big", &big)
        .file("empty", b"")
        .finish();
    let stats = unpack(&tar, root.path()).unwrap();
    assert_eq!(stats.entries, 5);
    assert_eq!(stats.bytes, big.len() as u64 + 3);
    let su = meta(&root.path().join("bin/su"));
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(su.mtime(), 1234);
    let sgid = meta(&root.path().join("a/sgid"));
    assert_eq!(sgid.permissions().mode() & 0o7777, 0o2750);
    assert_eq!((sgid.uid(), sgid.gid()), (1000, 2000));
    assert_eq!(std::fs::read(root.path().join("a/sgid")).unwrap(), b"x");
    let tmp = meta(&root.path().join("tmp"));
    assert!(tmp.is_dir());
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    assert_eq!(tmp.mtime(), 99);
    assert_eq!(std::fs::read(root.path().join("big")).unwrap(), big);
    assert_eq!(meta(&root.path().join("empty")).len(), 0);
}

#[test]
fn unpack_directory_metadata_survives_children() {
    let root = tempfile::tempdir().unwrap();
    let tar = Layer::new()
        .add(header(EntryType::Directory, 0o750, (5, 6), 1000), "d/", b"")
        .add(
            header(EntryType::Directory, 0o555, (0, 0), 2000),
            "d/sub/",
            b"",
        )
        .file("d/f", b"1")
        .file("d/sub/g", b"2")
        .dir("d/sub/deeper/")
        .file("d/sub/deeper/h", b"3")
        .finish();
    unpack(&tar, root.path()).unwrap();
    let d = meta(&root.path().join("d"));
    assert_eq!((d.uid(), d.gid(), d.mtime()), (5, 6, 1000));
    assert_eq!(d.permissions().mode() & 0o7777, 0o750);
    let sub = meta(&root.path().join("d/sub"));
    assert_eq!(
        (sub.mtime(), sub.permissions().mode() & 0o7777),
        (2000, 0o555)
    );
    assert_eq!(
        meta(&root.path().join("d/sub/deeper")).mtime(),
        MTIME as i64
    );
}

#[test]
fn unpack_symlinks_kept_verbatim() {
    let root = tempfile::tempdir().unwrap();
    let mut h = header(EntryType::Symlink, 0o777, (7, 8), 4321);
    let mut b = Builder::new(Vec::new());
    b.append_link(&mut h, "var/run", "/run").unwrap();
    let tar = Layer(b).link(EntryType::Symlink, "rel", "../x/y").finish();
    unpack(&tar, root.path()).unwrap();
    let run = root.path().join("var/run");
    assert_eq!(std::fs::read_link(&run).unwrap(), Path::new("/run"));
    let m = meta(&run);
    assert!(m.file_type().is_symlink());
    assert_eq!((m.uid(), m.gid(), m.mtime()), (7, 8, 4321));
    let rel = std::fs::read_link(root.path().join("rel")).unwrap();
    assert_eq!(rel, Path::new("../x/y"));
}

#[test]
fn unpack_hard_links_share_inode() {
    let root = tempfile::tempdir().unwrap();
    let tar = Layer::new()
        .file("a/orig", b"data")
        .link(EntryType::Symlink, "a/sym", "orig")
        .link(EntryType::Link, "b/link", "a/orig")
        .link(EntryType::Link, "./b/symlink", "./a/sym")
        .link(EntryType::Link, "a/orig", "a/orig")
        .finish();
    unpack(&tar, root.path()).unwrap();
    let orig = meta(&root.path().join("a/orig"));
    let link = meta(&root.path().join("b/link"));
    assert_eq!(orig.ino(), link.ino());
    assert_eq!(orig.nlink(), 2);
    let sym = meta(&root.path().join("b/symlink"));
    assert!(sym.file_type().is_symlink());
    assert_eq!(sym.ino(), meta(&root.path().join("a/sym")).ino());
}

#[test]
fn unpack_device_nodes_and_fifos() {
    let root = tempfile::tempdir().unwrap();
    let mut fifo = header(EntryType::Fifo, 0o620, (3, 4), 777);
    fifo.set_device_major(0).unwrap();
    fifo.set_device_minor(0).unwrap();
    let tar = Layer::new()
        .node(EntryType::Char, "dev/null", 0o666, (1, 3))
        .node(EntryType::Block, "dev/loop0", 0o660, (7, 0))
        .add(fifo, "run/fifo", b"")
        .finish();
    unpack(&tar, root.path()).unwrap();
    let null = meta(&root.path().join("dev/null"));
    assert!(null.file_type().is_char_device());
    assert_eq!((rfs::major(null.rdev()), rfs::minor(null.rdev())), (1, 3));
    assert_eq!(null.permissions().mode() & 0o7777, 0o666);
    let lp = meta(&root.path().join("dev/loop0"));
    assert!(lp.file_type().is_block_device());
    assert_eq!((rfs::major(lp.rdev()), rfs::minor(lp.rdev())), (7, 0));
    let f = meta(&root.path().join("run/fifo"));
    assert!(f.file_type().is_fifo());
    assert_eq!(f.permissions().mode() & 0o7777, 0o620);
    assert_eq!((f.uid(), f.gid(), f.mtime()), (3, 4, 777));
}

#[test]
fn unpack_xattrs_from_pax_without_overlay_ones() {
    let root = tempfile::tempdir().unwrap();
    let tar = Layer::new()
        .pax(&[
            ("SCHILY.xattr.user.color", b"blue"),
            ("SCHILY.xattr.trusted.bin", b"\x00\x01\xff"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ])
        .add(
            header(EntryType::Regular, 0o4755, (10, 10), MTIME),
            "f",
            b"x",
        )
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.d", b"1"),
        ])
        .dir("d/")
        .pax(&[("SCHILY.xattr.trusted.s", b"link")])
        .link(EntryType::Symlink, "s", "f")
        .pax(&[("SCHILY.xattr.trusted.p", b"pipe")])
        .node(EntryType::Fifo, "p", 0o600, (0, 0))
        .finish();
    unpack(&tar, root.path()).unwrap();
    let f = root.path().join("f");
    assert_eq!(xattr(&f, "user.color").unwrap(), b"blue");
    assert_eq!(xattr(&f, "trusted.bin").unwrap(), b"\x00\x01\xff");
    assert_eq!(xattr(&f, "trusted.overlay.redirect"), None);
    assert_eq!(meta(&f).permissions().mode() & 0o7777, 0o4755);
    let d = root.path().join("d");
    assert_eq!(xattr(&d, "user.d").unwrap(), b"1");
    assert_eq!(xattr(&d, "trusted.overlay.opaque"), None);
    assert_eq!(xattr(&d, "user.overlay.opaque"), None);
    assert_eq!(xattr(&root.path().join("s"), "trusted.s").unwrap(), b"link");
    assert_eq!(xattr(&root.path().join("p"), "trusted.p").unwrap(), b"pipe");
}

#[test]
fn unpack_long_names_prefixes_and_pax_times() {
    let root = tempfile::tempdir().unwrap();
    let gnu_long = format!("gnu/{}/file", "g".repeat(150));
    let pax_long = format!("pax/{}/file", "p".repeat(200));
    let long_target = format!("/{}", "t".repeat(150));
    let tar = Layer::new()
        .add(header(EntryType::Directory, 0o700, (0, 0), 5), "./", b"")
        .file(&gnu_long, b"gnu")
        .pax(&[("path", pax_long.as_bytes()), ("mtime", b"1700000000.25")])
        .raw(EntryType::Regular, b"short-pax-name", b"", b"pax")
        .link(EntryType::Symlink, "long-link", &long_target)
        .file("./dot/file", b"dot")
        .dir("trailing/")
        .raw(EntryType::Regular, b"v7dir/", b"", b"")
        .finish();
    unpack(&tar, root.path()).unwrap();
    assert_eq!(std::fs::read(root.path().join(&gnu_long)).unwrap(), b"gnu");
    let pax = root.path().join(&pax_long);
    assert_eq!(std::fs::read(&pax).unwrap(), b"pax");
    assert_eq!(
        (meta(&pax).mtime(), meta(&pax).mtime_nsec()),
        (1_700_000_000, 250_000_000)
    );
    assert!(!root.path().join("short-pax-name").exists());
    let target = std::fs::read_link(root.path().join("long-link")).unwrap();
    assert_eq!(target, Path::new(&long_target));
    assert_eq!(std::fs::read(root.path().join("dot/file")).unwrap(), b"dot");
    assert!(meta(&root.path().join("trailing")).is_dir());
    assert!(meta(&root.path().join("v7dir")).is_dir());
    let r = meta(root.path());
    assert_eq!((r.permissions().mode() & 0o7777, r.mtime()), (0o700, 5));
}

#[test]
fn unpack_pax_time_parsing() {
    let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec));
    assert_eq!(t("12"), Some((12, 0)));
    assert_eq!(t("12.5"), Some((12, 500_000_000)));
    assert_eq!(t("12.1234567891"), Some((12, 123_456_789)));
    assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
    assert_eq!(t("x"), None);
    assert_eq!(t("1.x"), None);
}

#[test]
fn unpack_whiteouts_become_char_devices() {
    let root = tempfile::tempdir().unwrap();
    let tar = Layer::new()
        .file("a/x", b"lower in same layer")
        .dir("a/tree/")
        .file("a/tree/leaf", b"")
        .file("a/.wh.x", b"")
        .file("a/.wh.tree", b"")
        .file("b/c/.wh.gone", b"")
        .dir(".wh..wh.plnk/")
        .file(".wh..wh.plnk/123.4", b"")
        .file("a/.wh..wh.aufs", b"")
        .finish();
    let stats = unpack(&tar, root.path()).unwrap();
    assert_eq!(stats.entries, 9);
    for path in ["a/x", "a/tree", "b/c/gone"] {
        let m = meta(&root.path().join(path));
        assert!(m.file_type().is_char_device(), "{path}");
        assert_eq!(m.rdev(), 0, "{path}");
    }
    let names = |p: &str| {
        let mut v: Vec<_> = std::fs::read_dir(root.path().join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("a"), ["tree", "x"]);
    assert_eq!(names(""), ["a", "b"]);
}

#[test]
fn unpack_opaque_marker_sets_xattr() {
    let root = tempfile::tempdir().unwrap();
    let tar = Layer::new()
        .dir("o/")
        .file("o/.wh..wh..opq", b"")
        .file("o/kept", b"")
        .file("p/q/.wh..wh..opq", b"")
        .finish();
    unpack(&tar, root.path()).unwrap();
    assert_eq!(
        xattr(&root.path().join("o"), OVERLAY_OPAQUE_XATTR).unwrap(),
        b"y"
    );
    assert_eq!(
        xattr(&root.path().join("p/q"), OVERLAY_OPAQUE_XATTR).unwrap(),
        b"y"
    );
    assert_eq!(xattr(&root.path().join("p"), OVERLAY_OPAQUE_XATTR), None);
    assert!(root.path().join("o/kept").exists());
    assert!(!root.path().join("o/.wh..wh..opq").exists());
}

#[test]
fn unpack_replaces_existing_entries() {
    let root = tempfile::tempdir().unwrap();
    let tar = Layer::new()
        .dir("r/")
        .file("r/child", b"c")
        .add(header(EntryType::Directory, 0o700, (9, 9), 50), "r/", b"")
        .dir("gone/")
        .dir("gone/deep/")
        .file("gone/deep/f", b"")
        .file("gone", b"now a file")
        .file("s", b"was a file")
        .dir("s/")
        .file("l", b"old")
        .link(EntryType::Symlink, "l", "/etc/passwd")
        .link(EntryType::Symlink, "m", "/etc/passwd")
        .file("m", b"not through the link")
        .finish();
    unpack(&tar, root.path()).unwrap();
    let r = meta(&root.path().join("r"));
    assert_eq!(
        (r.uid(), r.mtime(), r.permissions().mode() & 0o7777),
        (9, 50, 0o700)
    );
    assert_eq!(std::fs::read(root.path().join("r/child")).unwrap(), b"c");
    assert_eq!(
        std::fs::read(root.path().join("gone")).unwrap(),
        b"now a file"
    );
    assert!(meta(&root.path().join("s")).is_dir());
    assert!(meta(&root.path().join("l")).file_type().is_symlink());
    assert_eq!(
        std::fs::read(root.path().join("m")).unwrap(),
        b"not through the link"
    );
    assert!(meta(&root.path().join("m")).is_file());
}

#[test]
fn unpack_missing_parents_copy_lower_metadata() {
    let base = tempfile::tempdir().unwrap();
    let (top, bottom, root) = (
        base.path().join("top"),
        base.path().join("bottom"),
        base.path().join("root"),
    );
    for d in [&top, &bottom, &root] {
        std::fs::create_dir(d).unwrap();
    }
    // bottom: usr/lib 0750 3:4 with xattrs; w/ a directory hidden by a whiteout in top.
    let lib = bottom.join("usr/lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o750)).unwrap();
    rustix::fs::chown(&lib, Some(Uid::from_raw(3)), Some(Gid::from_raw(4))).unwrap();
    rfs::setxattr(&lib, "user.k", b"v", XattrFlags::empty()).unwrap();
    rfs::setxattr(&lib, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty()).unwrap();
    let t = Timespec {
        tv_sec: 12345,
        tv_nsec: 6,
    };
    rfs::utimensat(rfs::CWD, &lib, &timestamps(t), AtFlags::empty()).unwrap();
    std::fs::create_dir(bottom.join("w")).unwrap();
    std::fs::set_permissions(bottom.join("w"), std::fs::Permissions::from_mode(0o700)).unwrap();
    rfs::mknodat(
        rfs::CWD,
        top.join("w"),
        FileType::CharacterDevice,
        Mode::empty(),
        0,
    )
    .unwrap();

    let tar = Layer::new()
        .file("usr/lib/x", b"")
        .file("new/dir/f", b"")
        .file("w/f", b"")
        .finish();
    unpack_layer(&tar[..], &root, &[top.clone(), bottom.clone()]).unwrap();
    let m = meta(&root.join("usr/lib"));
    assert_eq!(m.permissions().mode() & 0o7777, 0o750);
    assert_eq!(
        (m.uid(), m.gid(), m.mtime(), m.mtime_nsec()),
        (3, 4, 12345, 6)
    );
    assert_eq!(xattr(&root.join("usr/lib"), "user.k").unwrap(), b"v");
    assert_eq!(xattr(&root.join("usr/lib"), OVERLAY_OPAQUE_XATTR), None);
    let usr = meta(&root.join("usr"));
    assert_eq!(usr.mtime(), meta(&bottom.join("usr")).mtime());
    for path in ["new", "new/dir", "w"] {
        let m = meta(&root.join(path));
        assert_eq!(m.permissions().mode() & 0o7777, 0o755, "{path}");
        assert_eq!((m.uid(), m.gid()), (0, 0), "{path}");
    }
}

#[test]
fn unpack_rejects_unsafe_names() {
    let cases: [(&[u8], &str); 6] = [
        (b"../escape", "`..`"),
        (b"a/../../escape", "`..`"),
        (b"/../escape", "`..`"),
        (b"", "empty"),
        (b"a/.wh...", "whiteout"),
        (b".wh..", "whiteout"),
    ];
    for (name, why) in cases {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let tar = Layer::new()
            .raw(EntryType::Regular, name, b"", b"x")
            .finish();
        bad_content(unpack(&tar, &root), why);
        assert!(!base.path().join("escape").exists());
    }
    let root = tempfile::tempdir().unwrap();
    let tar = Layer::new()
        .raw(EntryType::Symlink, b"./", b"x", b"")
        .finish();
    bad_content(unpack(&tar, root.path()), "root must be a directory");
}

#[test]
fn unpack_names_with_a_leading_slash_or_dot_slash_land_below_the_root() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let tar = Layer::new()
        .raw(EntryType::Directory, b"/etc/", b"", b"")
        .raw(
            EntryType::Regular,
            b"/etc/passwd",
            b"",
            b"root:x:0:0::/:/bin/sh\n",
        )
        .raw(EntryType::Regular, b"./etc/group", b"", b"root:x:0:\n")
        .raw(EntryType::Regular, b"//etc//hosts", b"", b"h")
        .raw(EntryType::Link, b"./etc/passwd-", b"/etc/passwd", b"")
        .raw(EntryType::Link, b"/etc/group-", b"./etc/group", b"")
        .finish();
    unpack(&tar, &root).unwrap();
    assert_eq!(
        std::fs::read(root.join("etc/passwd")).unwrap(),
        b"root:x:0:0::/:/bin/sh\n"
    );
    assert_eq!(
        std::fs::read(root.join("etc/group")).unwrap(),
        b"root:x:0:\n"
    );
    assert_eq!(std::fs::read(root.join("etc/hosts")).unwrap(), b"h");
    let ino = |p: &str| meta(&root.join(p)).ino();
    assert_eq!(ino("etc/passwd-"), ino("etc/passwd"));
    assert_eq!(ino("etc/group-"), ino("etc/group"));
    // Nothing outside the root.
    assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 1);
}

#[test]
fn unpack_takes_a_tar_cut_right_after_its_last_data() {
    let full = Layer::new()
        .file("a", &[7u8; 700])
        .file("b", b"last")
        .finish();
    // Entries: a's header at 0, its data 512..1212, padded to 1536; b's header at
    // 1536, its data at 2048..2052, padded to 2560; two zero blocks.
    let cases = [
        (2560, true),  // no end-of-archive blocks
        (2052, true),  // and no padding after the last data
        (2051, false), // in the last data
        (2100, false), // in the padding
        (1800, false), // in a header
    ];
    for (cut, whole) in cases {
        let root = tempfile::tempdir().unwrap();
        let result = unpack(&full[..cut], root.path());
        if whole {
            result.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!(std::fs::read(root.path().join("b")).unwrap(), b"last");
            assert_eq!(std::fs::read(root.path().join("a")).unwrap(), [7u8; 700]);
        } else {
            bad_content(result, "truncated");
        }
    }
    // A digest mismatch the reader reports at its end still wins.
    let root = tempfile::tempdir().unwrap();
    let failing = Failing {
        data: std::io::Cursor::new(full[..2052].to_vec()),
        err: Some(Box::new(|| {
            io::Error::other(Error::BadContent("digest mismatch".into()))
        })),
    };
    bad_content(unpack_layer(failing, root.path(), &[]), "digest mismatch");
}

#[test]
fn unpack_symlink_to_outside_cannot_redirect() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    let inner = target.trim_start_matches('/');

    // The link's target mirrored inside the root: the write lands there.
    let root = tempfile::tempdir().unwrap();
    let tar = Layer::new()
        .dir(&format!("{inner}/"))
        .link(EntryType::Symlink, "evil", &target)
        .file("evil/pwned", b"x")
        .finish();
    unpack(&tar, root.path()).unwrap();
    assert!(root.path().join(inner).join("pwned").is_file());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

    // Not mirrored: refused.
    let root = tempfile::tempdir().unwrap();
    let tar = Layer::new()
        .link(EntryType::Symlink, "evil", &target)
        .file("evil/pwned", b"x")
        .finish();
    bad_content(unpack(&tar, root.path()), "dangling symlink");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

    // Deeper below a link to outside, and whiteouts / opaque markers through it.
    let root = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("victim"), b"keep").unwrap();
    let tar = Layer::new()
        .dir(&format!("{inner}/"))
        .link(EntryType::Symlink, "evil", &target)
        .file("evil/.wh.victim", b"")
        .file("evil/.wh..wh..opq", b"")
        .finish();
    unpack(&tar, root.path()).unwrap();
    assert_eq!(
        std::fs::read(outside.path().join("victim")).unwrap(),
        b"keep"
    );
    assert_eq!(xattr(outside.path(), OVERLAY_OPAQUE_XATTR), None);
    assert!(meta(&root.path().join(inner).join("victim"))
        .file_type()
        .is_char_device());
}

#[test]
fn unpack_symlink_up_stays_in_root() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("a/b/root");
    std::fs::create_dir_all(&root).unwrap();
    let tar = Layer::new()
        .link(EntryType::Symlink, "up", "../../..")
        .file("up/pwned", b"x")
        .link(EntryType::Symlink, "dir/up2", "../../../../..")
        .file("dir/up2/pwned2", b"y")
        .finish();
    unpack(&tar, &root).unwrap();
    assert_eq!(std::fs::read(root.join("pwned")).unwrap(), b"x");
    assert_eq!(std::fs::read(root.join("pwned2")).unwrap(), b"y");
    for dir in ["", "a", "a/b"] {
        assert!(!base.path().join(dir).join("pwned").exists());
        assert!(!base.path().join(dir).join("pwned2").exists());
    }
    assert!(std::fs::read_link(root.join("up")).is_ok());
}

#[test]
fn unpack_rejects_hard_link_escapes() {
    let cases: [(&[u8], &str); 6] = [
        (b"/etc/passwd", "not in the layer"),
        (b"/../x", "`..`"),
        (b"../x", "`..`"),
        (b"missing", "not in the layer"),
        (b"dir", "directory"),
        (b"lnk/passwd", "not in the layer"),
    ];
    for (target, why) in cases {
        let root = tempfile::tempdir().unwrap();
        let tar = Layer::new()
            .dir("dir/")
            .link(EntryType::Symlink, "lnk", "/etc")
            .raw(EntryType::Link, b"h", target, b"")
            .finish();
        bad_content(unpack(&tar, root.path()), why);
        assert!(!root.path().join("h").exists());
    }
}

/// Yields `data`, then fails with `err` (or succeeds with EOF if `None`).
struct Failing {
    data: std::io::Cursor<Vec<u8>>,
    err: Option<Box<dyn Fn() -> io::Error>>,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.data.read(buf)? {
            0 if !buf.is_empty() => self.err.as_ref().map_or(Ok(0), |e| Err(e())),
            n => Ok(n),
        }
    }
}

#[test]
fn unpack_reader_errors_surface() {
    let tar = Layer::new()
        .file("a", &[7u8; 5000])
        .file("b", b"b")
        .finish();
    let failing = |cut: usize, err: Box<dyn Fn() -> io::Error>| Failing {
        data: std::io::Cursor::new(tar[..cut].to_vec()),
        err: Some(err),
    };
    let mismatch = || -> Box<dyn Fn() -> io::Error> {
        Box::new(|| io::Error::other(Error::BadContent("digest mismatch".into())))
    };
    // Mid data, mid header, and after the end-of-archive marker (drained).
    for cut in [1000, 512 * 11 + 100, tar.len()] {
        let root = tempfile::tempdir().unwrap();
        bad_content(
            unpack_layer(failing(cut, mismatch()), root.path(), &[]),
            "digest mismatch",
        );
    }
    let root = tempfile::tempdir().unwrap();
    let reset = Box::new(|| io::Error::from(io::ErrorKind::ConnectionReset));
    match unpack_layer(failing(1000, reset), root.path(), &[]) {
        Err(Error::Io { source, .. }) => {
            assert_eq!(source.kind(), io::ErrorKind::ConnectionReset)
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn unpack_truncated_layers_fail() {
    let tar = Layer::new()
        .file("a", &[7u8; 5000])
        .file("b", b"b")
        .finish();
    // Mid data of a, mid the header of b, mid the padding after b's data (a cut right
    // after it is a whole tar: unpack_takes_a_tar_cut_right_after_its_last_data).
    for cut in [512 + 100, 512 * 11 + 100, 512 * 12 + 2] {
        let root = tempfile::tempdir().unwrap();
        bad_content(unpack(&tar[..cut], root.path()), "truncated");
    }
    // Not a tar at all.
    let root = tempfile::tempdir().unwrap();
    bad_content(unpack(&[1u8; 1024], root.path()), "malformed");
    // A missing end-of-archive marker is tolerated, as by other runtimes.
    let root = tempfile::tempdir().unwrap();
    let stats = unpack(&tar[..512 * 13], root.path()).unwrap();
    assert_eq!(stats.entries, 2);
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

fn mount(fs: &str, target: &Path, options: &str) -> Mounted {
    let options = CString::new(options).unwrap();
    rustix::mount::mount(
        fs,
        target,
        fs,
        rustix::mount::MountFlags::empty(),
        &*options,
    )
    .unwrap();
    Mounted(target.to_owned())
}

#[test]
fn unpack_full_filesystem_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let _mounted = mount("tmpfs", dir.path(), "size=256k");
    let tar = Layer::new().file("big", &vec![1u8; 2 << 20]).finish();
    match unpack(&tar, dir.path()) {
        Err(Error::ResourceExhausted(m)) => assert!(m.contains("big"), "{m}"),
        other => panic!("expected ResourceExhausted, got {other:?}"),
    }
}

#[test]
fn unpack_overlay_mount_shows_merged_view() {
    let base = tempfile::tempdir().unwrap();
    let dirs = ["lower", "upper", "work", "merged"].map(|d| base.path().join(d));
    for d in &dirs {
        std::fs::create_dir(d).unwrap();
    }
    let [lower, upper, work, merged] = &dirs;
    let layer1 = Layer::new()
        .add(header(EntryType::Directory, 0o750, (0, 0), 1), "a/", b"")
        .file("a/keep", b"keep")
        .file("a/gone", b"gone")
        .dir("opq/")
        .file("opq/lower1", b"")
        .file("opq/lower2", b"")
        .dir("replaced/")
        .file("replaced/old", b"")
        .finish();
    unpack_layer(&layer1[..], lower, &[]).unwrap();
    let layer2 = Layer::new()
        .file("a/.wh.gone", b"")
        .dir("opq/")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"new")
        .file("hl/orig", b"shared")
        .link(EntryType::Link, "hl/link", "hl/orig")
        .node(EntryType::Char, "dev/null", 0o666, (1, 3))
        .file(".wh.replaced", b"")
        .file("replaced", b"now a file")
        .finish();
    unpack_layer(&layer2[..], upper, std::slice::from_ref(lower)).unwrap();
    // The implicit upper "a" copied the lower one's mode.
    assert_eq!(meta(&upper.join("a")).permissions().mode() & 0o7777, 0o750);

    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let _mounted = mount("overlay", merged, &options);
    assert_eq!(std::fs::read(merged.join("a/keep")).unwrap(), b"keep");
    assert!(!merged.join("a/gone").exists());
    let mut opq: Vec<_> = std::fs::read_dir(merged.join("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    opq.sort();
    assert_eq!(opq, ["new"]);
    let (orig, link) = (meta(&merged.join("hl/orig")), meta(&merged.join("hl/link")));
    assert_eq!(orig.ino(), link.ino());
    assert_eq!(std::fs::read(merged.join("hl/link")).unwrap(), b"shared");
    let null = meta(&merged.join("dev/null"));
    assert!(null.file_type().is_char_device());
    assert_eq!((rfs::major(null.rdev()), rfs::minor(null.rdev())), (1, 3));
    assert_eq!(
        std::fs::read(merged.join("replaced")).unwrap(),
        b"now a file"
    );
}

/// Throughput check: `cargo test --release -p cairn-snapshotter --lib unpack_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn unpack_speed() {
    let mut layer = Layer::new();
    let chunk: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    for d in 0..100 {
        layer = layer.dir(&format!("d{d}/"));
        for f in 0..20 {
            layer = layer.file(&format!("d{d}/f{f}"), &chunk);
        }
    }
    let mut small = Layer::new();
    for d in 0..200 {
        small = small.dir(&format!("s{d}/"));
        for f in 0..100 {
            small = small.file(&format!("s{d}/f{f}"), &chunk[..1000]);
        }
    }
    for tar in [layer.finish(), small.finish()] {
        let root = tempfile::tempdir_in("/var/tmp").unwrap();
        let start = std::time::Instant::now();
        let stats = unpack(&tar, root.path()).unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{} entries, {} MB in {secs:.2}s: {:.0} MB/s, {:.0} entries/s",
            stats.entries,
            stats.bytes / 1_000_000,
            stats.bytes as f64 / 1e6 / secs,
            stats.entries as f64 / secs
        );
    }
}

#[test]
fn what_unpack_hides_the_layered_read_does_not_see() {
    // Three layers as a snapshot stacks them: the lowest has the files, the middle one
    // deletes one (OCI whiteout) and replaces a dir (opaque marker), the top one is empty.
    let base = tempfile::tempdir().unwrap();
    let layer = |name: &str, tar: Vec<u8>| {
        let dir = base.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        unpack(&tar, &dir).unwrap();
        dir
    };
    let lowest = layer(
        "lowest",
        Layer::new()
            .dir("etc/")
            .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
            .file("etc/group", b"root:x:0:\n")
            .dir("etc/conf/")
            .file("etc/conf/old", b"old")
            .finish(),
    );
    let middle = layer(
        "middle",
        Layer::new()
            .dir("etc/")
            .file("etc/.wh.group", b"")
            .dir("etc/conf/")
            .file("etc/conf/.wh..wh..opq", b"")
            .file("etc/conf/new", b"new")
            .finish(),
    );
    let top = layer("top", Layer::new().dir("etc/").finish());
    let layers = [top, middle, lowest];
    let read = |rel: &str| crate::layered::read(&layers, Path::new(rel)).unwrap();
    assert_eq!(
        read("etc/passwd").as_deref(),
        Some(&b"root:x:0:0::/root:/bin/sh\n"[..])
    );
    assert_eq!(read("etc/group"), None, "whiteout");
    assert_eq!(read("etc/conf/old"), None, "below an opaque dir");
    assert_eq!(read("etc/conf/new").as_deref(), Some(&b"new"[..]));
    assert_eq!(read("etc/absent"), None);
}
