//! Tests of the container's mount-namespace setup (`child::setup_container`) that need no
//! root, and the [`Recorder`] they run it against: a [`Syscall`] that makes none of the
//! calls, writes each down as a [`Call`] and fails the calls it is told to. The plan is
//! built from an OCI spec as `create()` builds it, the rootfs is an empty temp dir (under
//! /tmp, so any user can make one), and the setup runs in the test process: its
//! unprivileged file-system calls (creating mount points, links) are real, in the temp
//! dir. The tests check the order of the steps and the arguments of the calls; the
//! root-only tests in `launch/tests.rs` check what the kernel makes of them.
//!
//! Paths in a [`Call`]: a path inside the rootfs dir is shown from the container's root
//! ("/data"; the rootfs itself is "/"), one outside it as "host:/the/path". Targets that
//! arrive as `/proc/self/fd/N` are shown as the file the descriptor is open on. After
//! `pivot_to_cwd` absolute paths name the container's files: they are shown as given, and
//! `stat` looks them up in the rootfs dir. Single-threaded: one recorder per test.

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use cairn_kernel::overlay::{OverlayError, OverlayMount};
use libc::c_ulong;
use oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceType, Spec};

use super::super::child::{setup_container, ChildIo, ChildStdio, Fail};
use super::super::plan;
use super::super::sys;
use super::super::tests::{mount, test_spec};
use super::Syscall;

/// One call the setup made, paths shown as described in the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Mount {
        source: Option<String>,
        target: String,
        fstype: Option<String>,
        flags: c_ulong,
        data: Option<String>,
    },
    MountFlags(String),
    MakeTreeReadonly(String),
    OpenTree {
        path: String,
        recursive: bool,
    },
    SetMountFlags {
        tree: String,
        flags: c_ulong,
    },
    /// The tree (shown as the path it was copied from) and where it goes.
    Attach {
        tree: String,
        at: String,
    },
    MountOverlay {
        target: String,
    },
    Fchdir(String),
    PivotToCwd {
        slave_old_root: bool,
    },
    WriteFile {
        path: String,
        value: String,
    },
    Sethostname(String),
    Setdomainname(String),
    Stat(String),
    Mknodat {
        path: String,
        mode: libc::mode_t,
        dev: libc::dev_t,
    },
    Fchownat {
        path: String,
        uid: u32,
        gid: u32,
    },
    Umask(libc::mode_t),
}

impl Call {
    /// Whether the call only asks (`mount_flags`, `stat`) and changes nothing.
    fn is_query(&self) -> bool {
        matches!(self, Call::MountFlags(_) | Call::Stat(_))
    }
}

/// A call to fail, and with which errno.
struct Rule {
    errno: i32,
    applies: Box<dyn Fn(&Call) -> bool>,
}

/// Records the calls of a setup whose rootfs is the directory `rootfs`.
struct Recorder {
    /// The rootfs dir, canonical (as descriptors' links show it).
    rootfs: PathBuf,
    calls: RefCell<Vec<Call>>,
    rules: RefCell<Vec<Rule>>,
    /// `pivot_to_cwd` succeeded: absolute paths are the container's.
    pivoted: Cell<bool>,
    /// What `mount_flags` answers for every mount.
    flags: Cell<c_ulong>,
}

impl Recorder {
    fn new(rootfs: &Path) -> Recorder {
        Recorder {
            rootfs: rootfs.canonicalize().expect("canonical rootfs path"),
            calls: RefCell::new(Vec::new()),
            rules: RefCell::new(Vec::new()),
            pivoted: Cell::new(false),
            flags: Cell::new(0),
        }
    }

    /// Every call so far, in order.
    fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// The calls so far that change something (without the queries).
    fn changes(&self) -> Vec<Call> {
        let calls = self.calls.borrow();
        calls.iter().filter(|c| !c.is_query()).cloned().collect()
    }

    /// Makes `mount_flags` answer `flags` (the per-mount flags a remount must keep).
    fn answer_mount_flags(&self, flags: c_ulong) {
        self.flags.set(flags);
    }

    /// Fails with `errno` every call for which `applies` is true (the call is recorded).
    fn fail_when(&self, errno: i32, applies: impl Fn(&Call) -> bool + 'static) {
        self.rules.borrow_mut().push(Rule {
            errno,
            applies: Box::new(applies),
        });
    }

    /// Fails the `n`-th mount (from 1) with `errno`.
    fn fail_nth_mount(&self, n: usize, errno: i32) {
        let seen = Cell::new(0);
        self.fail_when(errno, move |c| {
            if !matches!(c, Call::Mount { .. }) {
                return false;
            }
            seen.set(seen.get() + 1);
            seen.get() == n
        });
    }

    /// As without CAP_MKNOD: every `mknodat` fails with EPERM.
    fn deny_mknod(&self) {
        self.fail_when(libc::EPERM, |c| matches!(c, Call::Mknodat { .. }));
    }

    /// The host directories `dirs` are no mount points: making them private fails with
    /// EINVAL.
    fn not_mount_points(&self, dirs: &[&Path]) {
        let shown: Vec<String> = dirs.iter().map(|d| self.outside(d)).collect();
        self.fail_when(libc::EINVAL, move |c| match c {
            Call::Mount {
                source: None,
                target,
                flags,
                ..
            } => *flags == libc::MS_PRIVATE && shown.contains(target),
            _ => false,
        });
    }

    /// Writes `call` down; the error a rule asks for, if any.
    fn record(&self, call: Call) -> io::Result<()> {
        let rules = self.rules.borrow();
        let errno = rules.iter().find(|r| (r.applies)(&call)).map(|r| r.errno);
        self.calls.borrow_mut().push(call);
        errno.map_or(Ok(()), |e| Err(io::Error::from_raw_os_error(e)))
    }

    /// A real path, shown from the container's root if it is inside the rootfs dir.
    fn outside(&self, path: &Path) -> String {
        match path.strip_prefix(&self.rootfs) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => format!("host:{}", path.display()),
        }
    }

    /// The file descriptor `fd` is open on, shown like [`Recorder::outside`].
    fn fd(&self, fd: RawFd) -> String {
        if fd == libc::AT_FDCWD {
            return "<cwd>".into();
        }
        match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
            Ok(path) => self.outside(&path),
            Err(e) => format!("<fd {fd}: {e}>"),
        }
    }

    /// A path argument, shown as described in the module documentation.
    fn path(&self, path: &CStr) -> String {
        let bytes = path.to_bytes();
        if let Some(fd) = bytes.strip_prefix(b"/proc/self/fd/") {
            if let Some(fd) = std::str::from_utf8(fd).ok().and_then(|s| s.parse().ok()) {
                return self.fd(fd);
            }
        }
        let text = String::from_utf8_lossy(bytes).into_owned();
        if !text.starts_with('/') || self.pivoted.get() {
            return text;
        }
        self.outside(Path::new(&text))
    }

    /// `name` in the directory `dir`, shown like [`Recorder::fd`].
    fn at(&self, dir: RawFd, name: &CStr) -> String {
        let dir = self.fd(dir);
        let name = name.to_string_lossy();
        match (name.is_empty(), dir.ends_with('/')) {
            (true, _) => dir,
            (false, true) => format!("{dir}{name}"),
            (false, false) => format!("{dir}/{name}"),
        }
    }

    /// Where `path` is in this process: in the rootfs dir after the pivot.
    fn real(&self, path: &CStr) -> CString {
        let bytes = path.to_bytes();
        match bytes.strip_prefix(b"/") {
            Some(rel) if self.pivoted.get() => {
                let full = self
                    .rootfs
                    .join(Path::new(std::ffi::OsStr::from_bytes(rel)));
                CString::new(full.as_os_str().as_bytes()).expect("no NUL in a path")
            }
            _ => path.to_owned(),
        }
    }
}

fn text(s: Option<&CStr>) -> Option<String> {
    s.map(|s| s.to_string_lossy().into_owned())
}

impl Syscall for Recorder {
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()> {
        self.record(Call::Mount {
            source: source.map(|s| self.path(s)),
            target: self.path(target),
            fstype: text(fstype),
            flags,
            data: text(data),
        })
    }

    fn mount_flags(&self, path: &CStr) -> io::Result<c_ulong> {
        self.record(Call::MountFlags(self.path(path)))?;
        Ok(self.flags.get())
    }

    fn make_tree_readonly(&self, path: &CStr) -> io::Result<()> {
        self.record(Call::MakeTreeReadonly(self.path(path)))
    }

    fn open_tree(&self, path: &CStr, recursive: bool) -> io::Result<OwnedFd> {
        self.record(Call::OpenTree {
            path: self.path(path),
            recursive,
        })?;
        // A descriptor on the source stands for the detached copy.
        sys::open(&self.real(path), libc::O_PATH)
    }

    fn set_mount_flags(&self, tree: RawFd, flags: c_ulong) -> io::Result<()> {
        self.record(Call::SetMountFlags {
            tree: self.fd(tree),
            flags,
        })
    }

    fn attach(&self, tree: RawFd, dir: RawFd, path: &CStr) -> io::Result<()> {
        self.record(Call::Attach {
            tree: self.fd(tree),
            at: self.at(dir, path),
        })
    }

    fn mount_overlay(
        &self,
        _overlay: &OverlayMount,
        target: &Path,
        _readonly: bool,
    ) -> Result<(), OverlayError> {
        self.record(Call::MountOverlay {
            target: self.outside(target),
        })
        .map_err(|source| OverlayError::Mount {
            target: target.to_path_buf(),
            source,
        })
    }

    fn fchdir(&self, dir: RawFd) -> io::Result<()> {
        self.record(Call::Fchdir(self.fd(dir)))
    }

    fn pivot_to_cwd(&self, slave_old_root: bool) -> io::Result<()> {
        self.record(Call::PivotToCwd { slave_old_root })?;
        self.pivoted.set(true);
        Ok(())
    }

    fn write_file(&self, path: &CStr, value: &[u8]) -> io::Result<()> {
        self.record(Call::WriteFile {
            path: self.path(path),
            value: String::from_utf8_lossy(value).into_owned(),
        })
    }

    fn sethostname(&self, name: &CStr) -> io::Result<()> {
        self.record(Call::Sethostname(name.to_string_lossy().into_owned()))
    }

    fn setdomainname(&self, name: &CStr) -> io::Result<()> {
        self.record(Call::Setdomainname(name.to_string_lossy().into_owned()))
    }

    fn stat(&self, path: &CStr) -> io::Result<libc::stat> {
        self.record(Call::Stat(self.path(path)))?;
        sys::stat(&self.real(path))
    }

    fn mknodat(
        &self,
        dir: RawFd,
        name: &CStr,
        mode: libc::mode_t,
        dev: libc::dev_t,
    ) -> io::Result<()> {
        self.record(Call::Mknodat {
            path: self.at(dir, name),
            mode,
            dev,
        })
    }

    fn fchownat(&self, dir: RawFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
        self.record(Call::Fchownat {
            path: self.at(dir, name),
            uid,
            gid,
        })
    }

    fn umask(&self, mask: libc::mode_t) -> libc::mode_t {
        // Nothing to fail: umask cannot. The process's own mask is left alone (the
        // tests share it).
        let _ = self.record(Call::Umask(mask));
        0o022
    }
}

// The tests: each builds a spec on a fresh image and runs its setup against a recorder.

/// A temp dir (under /tmp, so any user can make one) holding an empty rootfs dir.
struct Image {
    /// Removed with the image.
    _dir: tempfile::TempDir,
    /// The canonical path of `rootfs/` in `dir`.
    root: PathBuf,
}

impl Image {
    fn new() -> Image {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().canonicalize().expect("canonical").join("rootfs");
        fs::create_dir(&root).expect("rootfs dir");
        Image { _dir: dir, root }
    }

    /// The canonical temp dir, which holds the rootfs.
    fn top(&self) -> &Path {
        self.root.parent().expect("rootfs has a parent")
    }

    /// A directory next to the rootfs (a bind mount source).
    fn host_dir(&self, name: &str) -> PathBuf {
        let path = self.top().join(name);
        fs::create_dir(&path).expect("host dir");
        path
    }

    /// Creates the directory `rel` in the rootfs.
    fn dir(&self, rel: &str) {
        fs::create_dir_all(self.root.join(rel)).expect("rootfs dir");
    }

    /// Creates the empty file `rel` in the rootfs.
    fn file(&self, rel: &str) {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("rootfs dir");
        File::create(path).expect("rootfs file");
    }

    /// containerd's spec for a CRI container on this rootfs.
    fn spec(&self) -> Spec {
        test_spec(&self.root, &["true"])
    }

    /// Recorder for this rootfs.
    fn recorder(&self) -> Recorder {
        Recorder::new(&self.root)
    }
}

/// Builds the plan of `spec` and runs the setup against `os`; its error message if it
/// failed. `stdio` as the children see it (only a terminal's path is used).
fn run_with(os: &Recorder, spec: &Spec, stdio: ChildStdio<'_>) -> Result<(), String> {
    let plan = plan::container(spec, None, &[], None, None, false).expect("plan");
    let null = File::open("/dev/null").expect("/dev/null");
    let io = ChildIo {
        report: null.as_raw_fd(),
        start: None,
        stdio,
        keep: &[],
    };
    setup_container(os, &plan, None, &io).map_err(|Fail(msg)| msg)
}

/// [`run_with`] with plain stdio.
fn run(os: &Recorder, spec: &Spec) -> Result<(), String> {
    let null = File::open("/dev/null").expect("/dev/null");
    let fd = null.as_raw_fd();
    run_with(os, spec, ChildStdio::Fds([fd; 3]))
}

fn host(path: &Path) -> String {
    format!("host:{}", path.display())
}

fn mount_call(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: c_ulong,
    data: Option<&str>,
) -> Call {
    Call::Mount {
        source: source.map(String::from),
        target: target.into(),
        fstype: fstype.map(String::from),
        flags,
        data: data.map(String::from),
    }
}

/// The remount that makes the mount at `target` read-only, keeping `kept`.
fn ro_remount(target: &str, kept: c_ulong) -> Call {
    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | kept;
    mount_call(None, target, None, flags, None)
}

/// The calls about the mount point `target` (mounts on it and the flag queries).
fn calls_at(os: &Recorder, target: &str) -> Vec<Call> {
    os.calls()
        .into_iter()
        .filter(|c| match c {
            Call::Mount { target: t, .. } | Call::MountFlags(t) => t == target,
            _ => false,
        })
        .collect()
}

/// The calls after `pivot_to_cwd`.
fn after_pivot(calls: &[Call]) -> &[Call] {
    let pivot = calls
        .iter()
        .position(|c| matches!(c, Call::PivotToCwd { .. }))
        .expect("a pivot_root");
    &calls[pivot + 1..]
}

/// Which step of the setup made `call`, knowing the spec's mount points and masked and
/// readonly paths, and whether the pivot came before.
fn step(call: &Call, pivoted: bool, spec: &Spec) -> String {
    let linux = spec.linux().as_ref().expect("linux");
    let listed = |list: &Option<Vec<String>>, t: &str| list.iter().flatten().any(|p| p == t);
    let is_dest = |t: &str| {
        spec.mounts()
            .iter()
            .flatten()
            .any(|m| m.destination() == Path::new(t))
    };
    let s = match call {
        Call::Umask(0) => "umask 0",
        Call::Mount {
            source: None,
            target,
            flags,
            ..
        } if !pivoted && target == "host:/" && flags & libc::MS_REC != 0 => "tree propagation",
        Call::Mount {
            source: Some(s),
            target,
            flags,
            ..
        } if !pivoted && s == "/" && target == "/" && flags & libc::MS_BIND != 0 => "rootfs bind",
        Call::Mount { target, .. } if !pivoted && is_dest(target) => {
            return format!("mount {target}")
        }
        Call::Mount {
            source: Some(s), ..
        } if !pivoted && s.starts_with("host:/dev/") => "devices",
        Call::Mknodat { .. } | Call::Fchownat { .. } => "devices",
        Call::Fchdir(dir) if dir == "/" => "fchdir",
        Call::PivotToCwd { .. } => "pivot_root",
        Call::WriteFile { path, .. } if path.starts_with("/proc/sys/") => "sysctls",
        Call::Mount { target, .. } if pivoted && listed(linux.masked_paths(), target) => {
            "masked paths"
        }
        Call::Mount { target, .. } if pivoted && listed(linux.readonly_paths(), target) => {
            "readonly paths"
        }
        Call::Sethostname(_) => "hostname",
        Call::Setdomainname(_) => "domainname",
        Call::Mount { target, flags, .. }
            if pivoted && target == "/" && flags & libc::MS_REMOUNT != 0 =>
        {
            "rootfs read-only"
        }
        Call::Mount { target, flags, .. }
            if pivoted && target == "/" && flags & libc::MS_REC != 0 =>
        {
            "final propagation"
        }
        other => return format!("unexpected {other:?}"),
    };
    s.into()
}

/// The steps of the recorded setup, in order, each once per run of consecutive calls.
fn steps(os: &Recorder, spec: &Spec) -> Vec<String> {
    let mut pivoted = false;
    let mut out: Vec<String> = Vec::new();
    for call in os.changes() {
        let s = step(&call, pivoted, spec);
        pivoted |= matches!(call, Call::PivotToCwd { .. });
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
    out
}

/// A spec with every step: a volume, a sysctl, masked and readonly paths that exist, a
/// domain name, a read-only root and a final propagation.
fn full_spec(img: &Image) -> Spec {
    let vol = img.host_dir("vol");
    img.file("proc/kcore");
    img.dir("proc/sys");
    let mut spec = img.spec();
    let mounts = spec.mounts_mut().as_mut().expect("mounts");
    mounts.push(mount("/data", "bind", &vol.to_string_lossy(), &["rbind"]));
    spec.set_domainname(Some("example.org".into()));
    spec.root_mut()
        .as_mut()
        .expect("root")
        .set_readonly(Some(true));
    let linux = spec.linux_mut().as_mut().expect("linux");
    linux.set_sysctl(Some([("kernel.shmmax".into(), "12345678".into())].into()));
    linux.set_rootfs_propagation(Some("unbindable".into()));
    linux.set_masked_paths(Some(vec!["/proc/kcore".into()]));
    linux.set_readonly_paths(Some(vec!["/proc/sys".into()]));
    spec
}

#[test]
fn the_steps_run_in_order() {
    let img = Image::new();
    let spec = full_spec(&img);
    let os = img.recorder();
    run(&os, &spec).expect("setup");
    let mut expected: Vec<String> = ["umask 0", "tree propagation", "rootfs bind"]
        .map(String::from)
        .to_vec();
    for m in spec.mounts().iter().flatten() {
        expected.push(format!("mount {}", m.destination().display()));
    }
    expected.extend(
        [
            "devices",
            "fchdir",
            "pivot_root",
            "sysctls",
            "masked paths",
            "readonly paths",
            "hostname",
            "domainname",
            "rootfs read-only",
            "final propagation",
        ]
        .map(String::from),
    );
    assert_eq!(steps(&os, &spec), expected, "{:#?}", os.changes());
    // The private tree first, the unbindable root last; the hostname of the spec.
    let changes = os.changes();
    let tree = libc::MS_REC | libc::MS_PRIVATE;
    assert_eq!(changes[1], mount_call(None, "host:/", None, tree, None));
    let last = libc::MS_REC | libc::MS_UNBINDABLE;
    assert_eq!(
        changes.last(),
        Some(&mount_call(None, "/", None, last, None))
    );
    assert!(changes.contains(&Call::Sethostname("cairn-test".into())));
    assert!(changes.contains(&Call::PivotToCwd {
        slave_old_root: false
    }));
}

#[test]
fn a_read_only_bind_is_a_bind_then_a_read_only_remount_keeping_locked_flags() {
    let img = Image::new();
    let vol = img.host_dir("vol");
    let mut spec = img.spec();
    let mounts = spec.mounts_mut().as_mut().expect("mounts");
    mounts.push(mount(
        "/data",
        "bind",
        &vol.to_string_lossy(),
        &["rbind", "ro"],
    ));
    let os = img.recorder();
    // What the kernel reports for the new bind: nosuid and nodev locked from the source's
    // mount must be repeated; atime flags are kept by the kernel when none is given.
    os.answer_mount_flags(libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME);
    run(&os, &spec).expect("setup");
    let bind = libc::MS_BIND | libc::MS_REC;
    assert_eq!(
        calls_at(&os, "/data"),
        [
            mount_call(Some(&host(&vol)), "/data", None, bind, None),
            Call::MountFlags("/data".into()),
            ro_remount("/data", libc::MS_NOSUID | libc::MS_NODEV),
        ]
    );
    assert!(img.root.join("data").is_dir(), "the mount point is made");
}

#[test]
fn a_read_only_fs_mount_is_mounted_writable_then_remounted_read_only() {
    let img = Image::new();
    // containerd's /sys: sysfs with nosuid, noexec, nodev, ro.
    let spec = img.spec();
    let os = img.recorder();
    let locked = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    os.answer_mount_flags(locked | libc::MS_RELATIME);
    run(&os, &spec).expect("setup");
    // Not MS_RDONLY at mount time: sysfs of a shared network namespace is one superblock
    // for every container of the pod, and would turn read-only for all of them.
    assert_eq!(
        calls_at(&os, "/sys"),
        [
            mount_call(Some("sysfs"), "/sys", Some("sysfs"), locked, None),
            Call::MountFlags("/sys".into()),
            ro_remount("/sys", locked),
        ]
    );
}

#[test]
fn masked_paths_hide_dirs_and_files_and_skip_missing_ones_readonly_paths_are_rebound() {
    let img = Image::new();
    img.dir("proc/acpi");
    img.file("proc/kcore");
    img.dir("proc/sys");
    let mut spec = img.spec();
    let linux = spec.linux_mut().as_mut().expect("linux");
    let paths = |p: &[&str]| Some(p.iter().map(|s| s.to_string()).collect());
    linux.set_masked_paths(paths(&["/proc/acpi", "/proc/kcore", "/proc/nosuch"]));
    linux.set_readonly_paths(paths(&["/proc/sys", "/proc/gone"]));
    let os = img.recorder();
    run(&os, &spec).expect("setup");
    let calls = os.calls();
    let mounts: Vec<&Call> = after_pivot(&calls)
        .iter()
        .filter(|c| matches!(c, Call::Mount { .. }))
        .collect();
    let rbind = libc::MS_BIND | libc::MS_REC;
    assert_eq!(
        mounts,
        [
            &mount_call(
                Some("tmpfs"),
                "/proc/acpi",
                Some("tmpfs"),
                libc::MS_RDONLY,
                None
            ),
            &mount_call(Some("/dev/null"), "/proc/kcore", None, libc::MS_BIND, None),
            &mount_call(Some("/proc/sys"), "/proc/sys", None, rbind, None),
            &ro_remount("/proc/sys", 0),
        ]
    );
    // The missing ones were looked at, in the container's root, and left alone.
    assert!(calls.contains(&Call::Stat("/proc/nosuch".into())));
    assert!(calls.contains(&Call::Stat("/proc/gone".into())));
}

#[test]
fn a_shared_rootfs_makes_only_the_mount_holding_it_private() {
    let img = Image::new();
    let mut spec = img.spec();
    let linux = spec.linux_mut().as_mut().expect("linux");
    linux.set_rootfs_propagation(Some("shared".into()));
    let os = img.recorder();
    // The temp dir is no mount point; its parent (/tmp) is taken to be one.
    os.not_mount_points(&[img.top()]);
    run(&os, &spec).expect("setup");
    let changes = os.changes();
    let parent = img.top().parent().expect("parent of the temp dir");
    let private = libc::MS_PRIVATE;
    let rbind = libc::MS_BIND | libc::MS_REC;
    assert_eq!(
        changes[..4],
        [
            Call::Umask(0),
            mount_call(None, &host(img.top()), None, private, None),
            mount_call(None, &host(parent), None, private, None),
            mount_call(Some("/"), "/", None, rbind, None),
        ]
    );
    // Nothing else on the host is touched: no recursive propagation of its tree.
    let on_host = changes.iter().filter(|c| match c {
        Call::Mount { target, .. } => target.starts_with("host:"),
        _ => false,
    });
    assert_eq!(on_host.count(), 2, "{changes:#?}");
    assert!(changes.contains(&Call::PivotToCwd {
        slave_old_root: true
    }));
    let shared = libc::MS_REC | libc::MS_SHARED;
    assert_eq!(
        changes.last(),
        Some(&mount_call(None, "/", None, shared, None))
    );
}

#[test]
fn a_failing_mount_stops_the_setup_and_names_the_mount() {
    let img = Image::new();
    let vol = img.host_dir("vol");
    let mut spec = img.spec();
    let mounts = spec.mounts_mut().as_mut().expect("mounts");
    mounts.push(mount("/data", "bind", &vol.to_string_lossy(), &["rbind"]));
    mounts.push(mount("/later", "tmpfs", "tmpfs", &[]));
    let os = img.recorder();
    os.fail_when(
        libc::EACCES,
        |c| matches!(c, Call::Mount { target, .. } if target == "/data"),
    );
    let err = run(&os, &spec).expect_err("the bind fails");
    assert_eq!(
        err,
        format!(
            "bind mount of {} at /data: Permission denied (os error 13)",
            vol.display()
        )
    );
    let calls = os.calls();
    assert!(
        matches!(calls.last(), Some(Call::Mount { target, .. }) if target == "/data"),
        "nothing after the failed mount: {calls:#?}"
    );
    assert!(!img.root.join("later").exists(), "no later mount point");
}

#[test]
fn a_failing_rootfs_bind_stops_the_setup_before_any_spec_mount() {
    let img = Image::new();
    let spec = img.spec();
    let os = img.recorder();
    // The first mount is the tree's propagation, the second the rootfs.
    os.fail_nth_mount(2, libc::ENOENT);
    let err = run(&os, &spec).expect_err("the rootfs bind fails");
    assert_eq!(
        err,
        format!(
            "bind-mounting the rootfs {}: No such file or directory (os error 2)",
            img.root.display()
        )
    );
    assert_eq!(os.changes().len(), 3, "{:#?}", os.changes());
    assert!(!img.root.join("proc").exists(), "no mount point made");
}

#[test]
fn a_failing_sysctl_stops_the_setup() {
    let img = Image::new();
    img.file("proc/kcore");
    let mut spec = img.spec();
    let linux = spec.linux_mut().as_mut().expect("linux");
    linux.set_sysctl(Some([("kernel.shmmax".into(), "12345678".into())].into()));
    let os = img.recorder();
    os.fail_when(libc::EROFS, |c| matches!(c, Call::WriteFile { .. }));
    let err = run(&os, &spec).expect_err("the sysctl fails");
    assert_eq!(
        err,
        "setting sysctl kernel.shmmax: Read-only file system (os error 30)"
    );
    let calls = os.calls();
    assert_eq!(
        after_pivot(&calls),
        [Call::WriteFile {
            path: "/proc/sys/kernel/shmmax".into(),
            value: "12345678".into()
        }],
        "nothing after the failed write"
    );
}

#[test]
fn a_mount_point_behind_a_dangling_absolute_link_is_made_inside_the_rootfs() {
    let img = Image::new();
    let vol = img.host_dir("vol");
    // The image's /evil points at a host path next to the rootfs, which does not exist.
    let outside = img.top().join("outside");
    symlink(&outside, img.root.join("evil")).expect("symlink");
    let before = listing(img.top());
    let mut spec = img.spec();
    let mounts = spec.mounts_mut().as_mut().expect("mounts");
    mounts.push(mount("/evil", "bind", &vol.to_string_lossy(), &["rbind"]));
    let os = img.recorder();
    run(&os, &spec).expect("setup");
    assert_eq!(listing(img.top()), before, "nothing new next to the rootfs");
    assert!(!outside.exists());
    // The link's target, taken from the container's root, was made in the rootfs.
    let inside = outside.strip_prefix("/").expect("absolute");
    assert!(img.root.join(inside).is_dir());
    let target = format!("/{}", inside.display());
    let bind = libc::MS_BIND | libc::MS_REC;
    assert_eq!(
        calls_at(&os, &target),
        [mount_call(Some(&host(&vol)), &target, None, bind, None)]
    );
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn without_mknod_devices_are_host_nodes_bound_onto_empty_files() {
    let img = Image::new();
    let mut spec = img.spec();
    let fuse = LinuxDeviceBuilder::default()
        .path("/dev/fuse")
        .typ(LinuxDeviceType::C)
        .major(10)
        .minor(229)
        .uid(1000u32)
        .build()
        .expect("device");
    let linux = spec.linux_mut().as_mut().expect("linux");
    linux.set_devices(Some(vec![fuse]));
    let os = img.recorder();
    os.deny_mknod();
    run(&os, &spec).expect("setup");
    let changes = os.changes();
    let devices = [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/fuse",
    ];
    for dev in devices {
        let i = changes
            .iter()
            .position(|c| matches!(c, Call::Mknodat { path, .. } if path == dev))
            .unwrap_or_else(|| panic!("no mknodat of {dev}: {changes:#?}"));
        let bind = mount_call(Some(&format!("host:{dev}")), dev, None, libc::MS_BIND, None);
        assert_eq!(
            changes.get(i + 1),
            Some(&bind),
            "{dev} is bound after EPERM"
        );
        let file = fs::symlink_metadata(img.root.join(&dev[1..])).expect("the mount point");
        assert!(file.is_file() && file.len() == 0, "{dev}: an empty file");
    }
    // A bound node keeps the host's owner: no chown.
    assert!(!changes.iter().any(|c| matches!(c, Call::Fchownat { .. })));
}

#[test]
fn devices_are_made_and_owned_as_the_spec_says() {
    let img = Image::new();
    let mut spec = img.spec();
    let fuse = LinuxDeviceBuilder::default()
        .path("/dev/fuse")
        .typ(LinuxDeviceType::C)
        .major(10)
        .minor(229)
        .file_mode(0o600u32)
        .uid(1000u32)
        .build()
        .expect("device");
    let linux = spec.linux_mut().as_mut().expect("linux");
    linux.set_devices(Some(vec![fuse]));
    let os = img.recorder();
    run(&os, &spec).expect("setup");
    let changes = os.changes();
    let made = Call::Mknodat {
        path: "/dev/fuse".into(),
        mode: libc::S_IFCHR | 0o600,
        dev: libc::makedev(10, 229),
    };
    let owned = Call::Fchownat {
        path: "/dev/fuse".into(),
        uid: 1000,
        gid: u32::MAX,
    };
    let i = changes.iter().position(|c| *c == made).expect("mknodat");
    assert_eq!(changes.get(i + 1), Some(&owned));
    let null = Call::Mknodat {
        path: "/dev/null".into(),
        mode: libc::S_IFCHR | 0o666,
        dev: libc::makedev(1, 3),
    };
    assert!(changes.contains(&null), "the default nodes: {changes:#?}");
}

#[test]
fn a_terminal_is_bound_onto_dev_console() {
    let img = Image::new();
    let spec = img.spec();
    let os = img.recorder();
    let slave: &CStr = c"/dev/pts/7";
    let null = File::open("/dev/null").expect("/dev/null");
    let stdio = ChildStdio::Terminal {
        slave: null.as_raw_fd(),
        path: slave,
    };
    run_with(&os, &spec, stdio).expect("setup");
    let changes = os.changes();
    let bind = mount_call(
        Some("host:/dev/pts/7"),
        "/dev/console",
        None,
        libc::MS_BIND,
        None,
    );
    let i = changes.iter().position(|c| *c == bind).expect("the bind");
    assert_eq!(changes.get(i + 1), Some(&Call::Fchdir("/".into())));
    assert!(img.root.join("dev/console").is_file());
}
