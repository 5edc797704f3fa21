//! Tests of the launcher. They run as root and build each container's rootfs from
//! /bin/busybox (Debian's busybox-static) in a temp dir. Every process made is reaped;
//! nothing is unmounted by hand (the container's mounts die with its mount namespace),
//! and each test checks that none of its mounts leaked into the test process.
//! [`Fixture`] and [`process`] serve the shim's own tests too.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_kernel::overlay::OverlayMount;
use oci_spec::runtime::{
    get_default_maskedpaths, get_default_readonly_paths, Capabilities, Capability, LinuxBuilder,
    LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, Process,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::*;

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "id", "hostname", "sleep", "pwd", "env", "readlink", "mount", "ps",
    "test", "true", "touch", "wc", "grep", "unshare", "head",
];

/// containerd's default capability set for CRI containers.
const CRI_CAPS: &[Capability] = &cairn_kernel::caps::DEFAULT_CAPABILITIES;

/// A temp dir holding a busybox rootfs at `rootfs/`.
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
}

impl Fixture {
    /// Makes the test process a child subreaper too (the launcher needs it).
    pub(crate) fn new() -> Fixture {
        become_subreaper();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        make_rootfs(&root);
        Fixture { dir, root }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A spec running `args` in a new pid, ipc, uts, mount and cgroup namespace.
    pub(crate) fn spec(&self, args: &[&str]) -> Spec {
        test_spec(&self.root, args)
    }

    /// No mount of the test leaked into the test process's mount namespace.
    fn assert_no_mounts(&self) {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let leaked: Vec<&str> = info
            .lines()
            .filter(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|mp| Path::new(mp).starts_with(self.dir.path()))
            })
            .collect();
        assert!(leaked.is_empty(), "mounts leaked: {leaked:#?}");
    }
}

fn become_subreaper() {
    // SAFETY: prctl with an integer argument.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

fn make_rootfs(root: &Path) {
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/app",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
}

fn caps(list: &[Capability]) -> LinuxCapabilities {
    let set: Capabilities = list.iter().copied().collect();
    LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set.clone())
        .inheritable(set)
        .ambient(Capabilities::new())
        .build()
        .unwrap()
}

pub(super) fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

/// The mounts containerd gives a CRI container.
fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

fn namespaces(types: &[LinuxNamespaceType]) -> Vec<LinuxNamespace> {
    types
        .iter()
        .map(|&t| LinuxNamespaceBuilder::default().typ(t).build().unwrap())
        .collect()
}

/// A root process with CRI's default capabilities.
pub(crate) fn process(args: &[&str]) -> Process {
    ProcessBuilder::default()
        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
            "HOME=/root".to_string(),
        ])
        .cwd("/")
        .user(UserBuilder::default().uid(0u32).gid(0u32).build().unwrap())
        .capabilities(caps(CRI_CAPS))
        .build()
        .unwrap()
}

/// A spec running `args` on the rootfs `root`: new pid, ipc, uts, mount and cgroup
/// namespaces, containerd's default mounts and masked and readonly paths, hostname
/// "cairn-test".
pub(super) fn test_spec(root: &Path, args: &[&str]) -> Spec {
    use LinuxNamespaceType::*;
    let linux = LinuxBuilder::default()
        .namespaces(namespaces(&[Pid, Ipc, Uts, Mount, Cgroup]))
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()
        .unwrap();
    SpecBuilder::default()
        .root(
            RootBuilder::default()
                .path(root)
                .readonly(false)
                .build()
                .unwrap(),
        )
        .hostname("cairn-test")
        .mounts(default_mounts())
        .process(process(args))
        .linux(linux)
        .build()
        .unwrap()
}

fn proc_mut(spec: &mut Spec) -> &mut Process {
    spec.process_mut().as_mut().unwrap()
}

fn read_all(fd: OwnedFd) -> String {
    let mut s = String::new();
    File::from(fd).read_to_string(&mut s).unwrap();
    s
}

/// Reaps `pid`; its exit code (128 + signal when killed).
fn wait(pid: i32) -> i32 {
    let status = sys::waitpid(pid).unwrap();
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

fn pipes() -> (OwnedFd, OwnedFd, Stdio) {
    let (out_r, out_w) = sys::pipe().unwrap();
    let (err_r, err_w) = sys::pipe().unwrap();
    let stdio = Stdio::Pipes {
        stdin: None,
        stdout: out_w,
        stderr: err_w,
    };
    (out_r, err_r, stdio)
}

/// Options for creating `spec` as it is, output to /dev/null, no cgroups.
fn silent(spec: &Spec) -> CreateOptions<'_> {
    CreateOptions {
        spec,
        overlay: None,
        cgroup_dirs: Vec::new(),
        stdio: Stdio::Pipes {
            stdin: None,
            stdout: dev_null(),
            stderr: dev_null(),
        },
        oom_score_adj: None,
        seccomp: None,
        device_rules_installed: false,
    }
}

fn dev_null() -> OwnedFd {
    File::options()
        .write(true)
        .open("/dev/null")
        .unwrap()
        .into()
}

#[derive(Debug)]
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(spec: &Spec) -> Output {
    run_with(spec, None, Vec::new())
}

fn run_with(spec: &Spec, overlay: Option<&OverlayMount>, cgroup_dirs: Vec<PathBuf>) -> Output {
    let (out_r, err_r, stdio) = pipes();
    let created = create(CreateOptions {
        spec,
        overlay,
        cgroup_dirs,
        stdio,
        oom_score_adj: None,
        seccomp: None,
        device_rules_installed: false,
    })
    .unwrap();
    let pid = created.pid;
    created.start().unwrap();
    let stdout = read_all(out_r);
    let stderr = read_all(err_r);
    Output {
        code: wait(pid),
        stdout,
        stderr,
    }
}

#[test]
fn echo_to_stdout_pipe() {
    let fx = Fixture::new();
    let out = run(&fx.spec(&["echo", "hello", "world"]));
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "hello world\n");
    assert_eq!(out.stderr, "");
    fx.assert_no_mounts();
}

#[test]
fn exit_code_propagates() {
    let fx = Fixture::new();
    let out = run(&fx.spec(&["sh", "-c", "echo oops >&2; exit 3"]));
    assert_eq!(out.code, 3);
    assert_eq!(out.stderr, "oops\n");
    fx.assert_no_mounts();
}

#[test]
fn pid_is_one_in_new_pid_namespace() {
    let fx = Fixture::new();
    let out = run(&fx.spec(&["sh", "-c", "echo $$"]));
    assert_eq!(out.stdout.trim(), "1", "{out:?}");
    fx.assert_no_mounts();
}

#[test]
fn hostname_in_new_uts_namespace() {
    let fx = Fixture::new();
    let out = run(&fx.spec(&["hostname"]));
    assert_eq!(out.stdout.trim(), "cairn-test", "{out:?}");
    assert_ne!(
        fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "cairn-test"
    );
    fx.assert_no_mounts();
}

/// A helper process holding new uts and net namespaces (hostname "pod-host"), bound onto
/// files the way cairn's shim keeps a pod's namespaces.
struct PodNamespaces {
    uts: PathBuf,
    net: PathBuf,
    mounted: Vec<CString>,
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling the helper we forked.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
        let _ = sys::waitpid(self.0);
    }
}

impl PodNamespaces {
    fn new(dir: &Path) -> PodNamespaces {
        let (ready_r, ready_w) = sys::pipe().unwrap();
        // SAFETY: the child only makes raw system calls, then waits to be killed.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: plain system calls in the forked child.
            unsafe {
                let ok = libc::unshare(libc::CLONE_NEWUTS | libc::CLONE_NEWNET) == 0
                    && libc::sethostname(c"pod-host".as_ptr(), 8) == 0;
                if ok {
                    libc::write(ready_w.as_raw_fd(), b"1".as_ptr().cast(), 1);
                    loop {
                        libc::pause();
                    }
                }
                libc::_exit(1);
            }
        }
        let helper = KillOnDrop(pid);
        drop(ready_w);
        assert_eq!(sys::read_byte(ready_r.as_raw_fd()).unwrap(), Some(b'1'));
        let mut pod = PodNamespaces {
            uts: dir.join("uts"),
            net: dir.join("net"),
            mounted: Vec::new(),
        };
        for (ns, file) in [("uts", pod.uts.clone()), ("net", pod.net.clone())] {
            File::create(&file).unwrap();
            let src = CString::new(format!("/proc/{pid}/ns/{ns}")).unwrap();
            let dst = CString::new(file.as_os_str().as_bytes()).unwrap();
            sys::mount(Some(&src), &dst, None, libc::MS_BIND, None).unwrap();
            pod.mounted.push(dst);
        }
        drop(helper);
        pod
    }
}

impl Drop for PodNamespaces {
    fn drop(&mut self) {
        for m in &self.mounted {
            // SAFETY: unmounting the binds made above.
            unsafe { libc::umount2(m.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[test]
fn joins_existing_uts_and_net_namespaces() {
    use LinuxNamespaceType::*;
    let fx = Fixture::new();
    let pod = PodNamespaces::new(fx.dir.path());
    let mut spec = fx.spec(&["sh", "-c", "hostname; readlink /proc/self/ns/net"]);
    let mut ns = namespaces(&[Pid, Ipc, Mount]);
    for (typ, path) in [(Uts, &pod.uts), (Network, &pod.net)] {
        let joined = LinuxNamespaceBuilder::default()
            .typ(typ)
            .path(path.clone())
            .build()
            .unwrap();
        ns.push(joined);
    }
    spec.linux_mut().as_mut().unwrap().set_namespaces(Some(ns));
    let out = run(&spec);
    let net_ino = fs::metadata(&pod.net).unwrap().ino();
    assert_eq!(
        out.stdout,
        format!("pod-host\nnet:[{net_ino}]\n"),
        "{out:?}"
    );
    drop(pod);
    fx.assert_no_mounts();
}

#[test]
fn cwd_and_env() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sh", "-c", "pwd; echo $FOO"]);
    let p = proc_mut(&mut spec);
    p.set_cwd("/tmp".into());
    p.set_env(Some(vec!["PATH=/bin".into(), "FOO=bar baz".into()]));
    let out = run(&spec);
    assert_eq!(out.stdout, "/tmp\nbar baz\n", "{out:?}");
    fx.assert_no_mounts();
}

#[test]
fn missing_cwd_fails_create() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["true"]);
    proc_mut(&mut spec).set_cwd("/nowhere".into());
    let err = create(silent(&spec)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/nowhere"), "{msg}");
    assert!(matches!(err, LaunchError::Setup(_)), "{err:?}");
    fx.assert_no_mounts();
}

#[test]
fn runs_as_user() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["id"]);
    let user = UserBuilder::default()
        .uid(1000u32)
        .gid(1000u32)
        .additional_gids(vec![1000u32])
        .build()
        .unwrap();
    proc_mut(&mut spec).set_user(user);
    let out = run(&spec);
    assert_eq!(
        out.stdout.trim(),
        "uid=1000(app) gid=1000(app) groups=1000(app)",
        "{out:?}"
    );
    fx.assert_no_mounts();
}

fn status_field(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    let hex = line.split_whitespace().nth(1).unwrap();
    u64::from_str_radix(hex, 16).unwrap()
}

#[test]
fn capabilities_are_dropped() {
    let fx = Fixture::new();
    let wanted = [
        Capability::Chown,
        Capability::Kill,
        Capability::NetBindService,
    ];
    let bits = (1 << 0) | (1 << 5) | (1 << 10);

    let mut spec = fx.spec(&["cat", "/proc/self/status"]);
    proc_mut(&mut spec).set_capabilities(Some(caps(&wanted)));
    let out = run(&spec);
    assert_eq!(status_field(&out.stdout, "CapEff:"), bits, "{out:?}");
    assert_eq!(status_field(&out.stdout, "CapBnd:"), bits);

    // A non-root user keeps only its ambient set across execve.
    let mut spec = fx.spec(&["cat", "/proc/self/status"]);
    let mut c = caps(&wanted);
    c.set_ambient(Some([Capability::NetBindService].into_iter().collect()));
    let p = proc_mut(&mut spec);
    p.set_capabilities(Some(c));
    p.set_user(
        UserBuilder::default()
            .uid(1000u32)
            .gid(1000u32)
            .build()
            .unwrap(),
    );
    p.set_no_new_privileges(Some(true));
    let out = run(&spec);
    assert_eq!(status_field(&out.stdout, "CapEff:"), 1 << 10, "{out:?}");
    assert_eq!(status_field(&out.stdout, "NoNewPrivs:"), 1);
    fx.assert_no_mounts();
}

#[test]
fn masked_and_readonly_paths() {
    let fx = Fixture::new();
    // (This kernel has no /proc/kcore: a missing masked path is skipped.)
    let script =
        "wc -c < /proc/timer_list; ls -A /proc/acpi | wc -l; ls -A /sys/firmware | wc -l; \
                  echo x > /proc/sys/kernel/hostname && echo wrote || echo refused; \
                  grep -c ' /proc/sys proc ro,' /proc/self/mounts";
    let out = run(&fx.spec(&["sh", "-c", script]));
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    assert!(
        fs::metadata("/proc/timer_list").is_ok(),
        "the test expects /proc/timer_list on the host"
    );
    assert_eq!(lines, ["0", "0", "0", "refused", "1"], "{out:?}");
    fx.assert_no_mounts();
}

#[test]
fn dev_nodes_and_links() {
    let fx = Fixture::new();
    let script = "for d in null zero full random urandom tty; do test -c /dev/$d || echo no $d; done; \
                  readlink /dev/fd; readlink /dev/stdin; readlink /dev/ptmx; test -d /dev/pts && test -d /dev/shm && echo dirs; \
                  echo hi > /dev/null && echo null-ok";
    let out = run(&fx.spec(&["sh", "-c", script]));
    assert_eq!(
        out.stdout, "/proc/self/fd\n/proc/self/fd/0\npts/ptmx\ndirs\nnull-ok\n",
        "{out:?}"
    );
    // The devices went to the container's /dev tmpfs, not into the image.
    assert!(!fx.root.join("dev/null").exists());
    fx.assert_no_mounts();
}

#[test]
fn missing_command_fails_at_start() {
    let fx = Fixture::new();
    let spec = fx.spec(&["nosuch", "arg"]);
    let created = create(silent(&spec)).unwrap();
    let pid = created.pid;
    let err = created.start().unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"exec: "nosuch": executable file not found in $PATH"#
    );
    assert_eq!(wait(pid), 127);

    let spec = fx.spec(&["/etc/passwd"]);
    let created = create(silent(&spec)).unwrap();
    let pid = created.pid;
    let err = created.start().unwrap_err().to_string();
    assert_eq!(err, r#"exec: "/etc/passwd": permission denied"#);
    wait(pid);
    fx.assert_no_mounts();
}

fn create_err(spec: &Spec) -> LaunchError {
    create(silent(spec)).unwrap_err()
}

#[test]
fn spec_errors_name_the_field() {
    use LinuxNamespaceType::*;
    let fx = Fixture::new();
    let mut spec = fx.spec(&["true"]);
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_namespaces(Some(namespaces(&[Pid, Mount, User])));
    let err = create_err(&spec);
    assert!(matches!(err, LaunchError::Unsupported(_)), "{err}");

    let mut spec = fx.spec(&["true"]);
    let missing = fx.path("missing");
    let mounts = spec.mounts_mut().as_mut().unwrap();
    mounts.push(mount(
        "/data",
        "bind",
        missing.to_str().unwrap(),
        &["rbind"],
    ));
    let msg = create_err(&spec).to_string();
    assert!(
        msg.contains(missing.to_str().unwrap()) && msg.contains("/data"),
        "{msg}"
    );

    let mut spec = fx.spec(&["true"]);
    proc_mut(&mut spec).set_args(Some(Vec::new()));
    assert!(create_err(&spec).to_string().contains("process.args"));

    let mut spec = fx.spec(&["true"]);
    spec.root_mut().as_mut().unwrap().set_path(fx.path("nope"));
    assert!(create_err(&spec).to_string().contains("rootfs"));
    fx.assert_no_mounts();
}

#[test]
fn dropped_without_start_exits() {
    let fx = Fixture::new();
    let spec = fx.spec(&["sh", "-c", "echo ran"]);
    let (out_r, err_r, stdio) = pipes();
    let created = create(CreateOptions {
        spec: &spec,
        overlay: None,
        cgroup_dirs: Vec::new(),
        stdio,
        oom_score_adj: None,
        seccomp: None,
        device_rules_installed: false,
    })
    .unwrap();
    let pid = created.pid;
    drop(created);
    assert_eq!(wait(pid), 1);
    assert_eq!(read_all(out_r), "");
    drop(err_r);
    fx.assert_no_mounts();
}

#[test]
fn bind_mounts_read_only() {
    let fx = Fixture::new();
    let vol = fx.path("vol");
    fs::create_dir(&vol).unwrap();
    fs::write(vol.join("f"), "hello\n").unwrap();
    let file = fx.path("hosts");
    fs::write(&file, "127.0.0.1 localhost\n").unwrap();
    let script = "cat /data/f; touch /data/new 2>/dev/null && echo writable || echo readonly; \
                  cat /etc/hosts; touch /rw/new && echo rw-ok";
    let mut spec = fx.spec(&["sh", "-c", script]);
    let rw = fx.path("rw");
    fs::create_dir(&rw).unwrap();
    let mounts = spec.mounts_mut().as_mut().unwrap();
    mounts.push(mount(
        "/data",
        "bind",
        vol.to_str().unwrap(),
        &["rbind", "rro"],
    ));
    mounts.push(mount(
        "/etc/hosts",
        "bind",
        file.to_str().unwrap(),
        &["rbind", "ro"],
    ));
    mounts.push(mount(
        "/rw",
        "bind",
        rw.to_str().unwrap(),
        &["rbind", "rprivate"],
    ));
    let out = run(&spec);
    assert_eq!(
        out.stdout, "hello\nreadonly\n127.0.0.1 localhost\nrw-ok\n",
        "{out:?}"
    );
    assert!(!vol.join("new").exists());
    assert!(rw.join("new").exists());
    // Mount points were created in the rootfs: a directory and an empty file.
    assert!(fx.root.join("data").is_dir());
    assert_eq!(fs::metadata(fx.root.join("etc/hosts")).unwrap().len(), 0);
    fx.assert_no_mounts();
}

#[test]
fn mount_point_symlink_stays_inside_rootfs() {
    let fx = Fixture::new();
    // An image whose /evil points at a host path: the mount must land inside the rootfs.
    let outside = fx.path("outside");
    fs::create_dir(&outside).unwrap();
    symlink(&outside, fx.root.join("evil")).unwrap();
    let vol = fx.path("vol");
    fs::create_dir(&vol).unwrap();
    fs::write(vol.join("f"), "in\n").unwrap();
    let mut spec = fx.spec(&["cat", "/evil/f"]);
    let mounts = spec.mounts_mut().as_mut().unwrap();
    mounts.push(mount("/evil", "bind", vol.to_str().unwrap(), &["rbind"]));
    let out = run(&spec);
    assert_eq!(out.stdout, "in\n", "{out:?}");
    // The link's target was resolved under the rootfs and created there.
    assert!(fx.root.join(outside.strip_prefix("/").unwrap()).is_dir());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    fx.assert_no_mounts();
}

#[test]
fn readonly_rootfs() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "touch /x 2>/dev/null && echo rw || echo ro; touch /dev/shm/y && echo shm-ok",
    ]);
    spec.root_mut().as_mut().unwrap().set_readonly(Some(true));
    let out = run(&spec);
    assert_eq!(out.stdout, "ro\nshm-ok\n", "{out:?}");
    fx.assert_no_mounts();
}

#[test]
fn sysctls_and_rlimits() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sh", "-c", "cat /proc/sys/kernel/shmmax; ulimit -n"]);
    let sysctl = [("kernel.shmmax".to_string(), "12345678".to_string())];
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_sysctl(Some(sysctl.into_iter().collect()));
    let limit = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(321u64)
        .hard(654u64)
        .build()
        .unwrap();
    proc_mut(&mut spec).set_rlimits(Some(vec![limit]));
    let out = run(&spec);
    assert_eq!(out.stdout, "12345678\n321\n", "{out:?}");
    fx.assert_no_mounts();
}

#[test]
fn overlay_rootfs_writes_to_upper() {
    let fx = Fixture::new();
    let (upper, work, merged) = (fx.path("upper"), fx.path("work"), fx.path("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    let overlay = OverlayMount {
        lowers: vec![fx.root.clone()],
        upper: Some((upper.clone(), work.clone())),
    };
    let mut spec = test_spec(&merged, &["sh", "-c", "echo data > /written; cat /written"]);
    spec.set_hostname(Some("overlay".into()));
    let out = run_with(&spec, Some(&overlay), Vec::new());
    assert_eq!(out.stdout, "data\n", "{out:?}");
    assert_eq!(fs::read_to_string(upper.join("written")).unwrap(), "data\n");
    assert!(!fx.root.join("written").exists());
    // Nothing is mounted on the host: the merged dir is still an empty directory.
    assert_eq!(fs::read_dir(&merged).unwrap().count(), 0);
    fx.assert_no_mounts();
}

/// A user namespace of its own, held by a `sleep` in it, mapping container ids 0..65536 to
/// host ids 100000..165536; the holder is killed and reaped on drop.
struct UserNs(std::process::Child);

impl UserNs {
    const MAP: &'static str = "0 100000 65536\n";

    fn new() -> UserNs {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("/bin/busybox");
        cmd.args(["sleep", "60"]);
        // SAFETY: unshare is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| match libc::unshare(libc::CLONE_NEWUSER) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        let holder = UserNs(cmd.spawn().unwrap());
        for file in ["uid_map", "gid_map"] {
            fs::write(format!("/proc/{}/{file}", holder.0.id()), Self::MAP).unwrap();
        }
        holder
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/user", self.0.id()))
    }
}

impl Drop for UserNs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn id_mappings() -> Vec<oci_spec::runtime::LinuxIdMapping> {
    vec![oci_spec::runtime::LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(100000u32)
        .size(65536u32)
        .build()
        .unwrap()]
}

#[test]
fn joins_a_user_namespace_over_idmapped_layers() {
    use LinuxNamespaceType::*;
    let fx = Fixture::new();
    let userns = UserNs::new();
    let (upper, work, merged) = (fx.path("upper"), fx.path("work"), fx.path("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    let overlay = OverlayMount {
        lowers: vec![fx.root.clone()],
        upper: Some((upper.clone(), work.clone())),
    };
    let script = "id -u; cat /proc/self/uid_map; ls -ln /bin/busybox; \
                  echo data > /written; ls -ln /written";
    let mut spec = test_spec(&merged, &["sh", "-c", script]);
    let mut ns = vec![LinuxNamespaceBuilder::default()
        .typ(User)
        .path(userns.path())
        .build()
        .unwrap()];
    ns.extend(namespaces(&[Pid, Ipc, Uts, Network, Mount, Cgroup]));
    let linux = spec.linux_mut().as_mut().unwrap();
    linux
        .set_namespaces(Some(ns))
        .set_uid_mappings(Some(id_mappings()))
        .set_gid_mappings(Some(id_mappings()));
    let out = run_with(&spec, Some(&overlay), Vec::new());
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0"], "{out:?}");
    assert_eq!(lines[1], ["0", "100000", "65536"], "{out:?}");
    // The layer's root-owned files show as root's inside; what the container's root
    // writes lands in the upper dir under host uid 100000, the upper dir too.
    assert_eq!((lines[2][2], lines[2][3]), ("0", "0"), "{out:?}");
    assert_eq!((lines[3][2], lines[3][3]), ("0", "0"), "{out:?}");
    let written = fs::metadata(upper.join("written")).unwrap();
    assert_eq!((written.uid(), written.gid()), (100000, 100000));
    assert_eq!(fs::metadata(&upper).unwrap().uid(), 100000);
    assert_eq!(fs::metadata(fx.root.join("bin/busybox")).unwrap().uid(), 0);
    assert_eq!(fs::read_dir(&merged).unwrap().count(), 0);
    fx.assert_no_mounts();

    // A user namespace needs mappings that map container id 0.
    let linux = spec.linux_mut().as_mut().unwrap();
    linux.set_uid_mappings(None);
    let err = create_err(&spec);
    assert!(matches!(err, LaunchError::InvalidSpec(_)), "{err}");
    assert!(err.to_string().contains("uidMappings"), "{err}");
}

struct RmdirOnDrop(PathBuf);

impl Drop for RmdirOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn exec_joins_a_containers_user_and_pid_namespaces() {
    use LinuxNamespaceType::*;
    let fx = Fixture::new();
    let userns = UserNs::new();
    let (upper, work, merged) = (fx.path("upper"), fx.path("work"), fx.path("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    let overlay = OverlayMount {
        lowers: vec![fx.root.clone()],
        upper: Some((upper, work)),
    };
    let mut spec = test_spec(&merged, &["sleep", "30"]);
    let mut ns = vec![LinuxNamespaceBuilder::default()
        .typ(User)
        .path(userns.path())
        .build()
        .unwrap()];
    ns.extend(namespaces(&[Pid, Ipc, Uts, Network, Mount, Cgroup]));
    let linux = spec.linux_mut().as_mut().unwrap();
    linux
        .set_namespaces(Some(ns))
        .set_uid_mappings(Some(id_mappings()))
        .set_gid_mappings(Some(id_mappings()));
    let created = create(CreateOptions {
        overlay: Some(&overlay),
        ..silent(&spec)
    })
    .unwrap();
    let pid = created.pid;
    let _container = KillOnDrop(pid);
    created.start().unwrap();

    let p = process(&["sh", "-c", "id -u; cat /proc/self/uid_map; echo $$; ps"]);
    let (out_r, err_r, stdio) = pipes();
    let running = exec_now(pid, &p, None, &[], stdio).unwrap();
    let stdout = read_all(out_r);
    let stderr = read_all(err_r);
    assert_eq!(wait(running.pid), 0, "{stdout}{stderr}");
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0"], "{stdout}");
    assert_eq!(lines[1], ["0", "100000", "65536"], "{stdout}");
    // In the container's pid namespace, beside its init.
    assert_ne!(lines[2], ["1"], "{stdout}");
    assert!(stdout.contains("sleep 30"), "{stdout}");
    // This thread's children are born in its own pid namespace again.
    let ns_of = |p: &str| fs::read_link(p).unwrap();
    assert_eq!(
        ns_of("/proc/thread-self/ns/pid_for_children"),
        ns_of("/proc/self/ns/pid")
    );
}

/// Test cgroups, one per hierarchy this machine has of the two kinds (a v1 `pids`
/// hierarchy and the cgroup2 one), removed on drop: (dirs, their removal guards).
fn test_cgroups(name: &str) -> (Vec<PathBuf>, Vec<RmdirOnDrop>) {
    let v1 = Path::new("/sys/fs/cgroup/pids");
    let roots = [Some(v1.to_path_buf()), cgroup2_root()];
    let dirs: Vec<PathBuf> = roots
        .into_iter()
        .flatten()
        .filter(|r| r.join("cgroup.procs").exists())
        .map(|r| r.join(format!("{name}-{}", std::process::id())))
        .collect();
    let guards = dirs
        .iter()
        .map(|d| {
            fs::create_dir(d).unwrap();
            RmdirOnDrop(d.clone())
        })
        .collect();
    (dirs, guards)
}

/// The lines of a /proc/<pid>/cgroup text, one per joined hierarchy, for `dirs`: the
/// path each should show, from the hierarchy root (or "/" inside a cgroup namespace).
fn expected_cgroup_lines(dirs: &[PathBuf], in_namespace: bool) -> Vec<String> {
    dirs.iter()
        .map(|d| {
            let leaf = d.file_name().unwrap().to_string_lossy();
            let hierarchy = match cairn_kernel::devfilter::is_cgroup2(d) {
                true => "0::".to_string(),
                false => ":pids:".to_string(),
            };
            match in_namespace {
                true => format!("{hierarchy}/\n"),
                false => format!("{hierarchy}/{leaf}\n"),
            }
        })
        .collect()
}

/// The container process and an exec'd one join every cgroup given: the v1 hierarchies
/// through `tasks`, the cgroup2 dir by being cloned into it (the exec'd process through
/// an intermediate, whose pid must not be the one returned); a cgroup namespace, made
/// once the process is in its cgroups, shows each of them as `/`.
#[test]
fn joins_v1_and_cgroup2_cgroups() {
    use LinuxNamespaceType::*;
    let (dirs, _guards) = test_cgroups("cairn-launch-test");
    assert!(
        !dirs.is_empty(),
        "this test needs root and a cgroup hierarchy"
    );
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sleep", "30"]);
    let linux = spec.linux_mut().as_mut().unwrap();
    linux.set_namespaces(Some(namespaces(&[Pid, Ipc, Uts, Mount])));
    let created = create(CreateOptions {
        cgroup_dirs: dirs.clone(),
        ..silent(&spec)
    })
    .unwrap();
    let pid = created.pid;
    let _container = KillOnDrop(pid);
    created.start().unwrap();
    let seen = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in expected_cgroup_lines(&dirs, false) {
        assert!(seen.contains(&line), "{line:?} in {seen}");
    }
    // Exec'd processes, with and without a start handshake; the exit code tells the
    // exec'd process from an intermediate (which exits 0).
    let p = process(&["sh", "-c", "cat /proc/self/cgroup; exit 7"]);
    let (out_r, _err_r, stdio) = pipes();
    let running = exec_now(pid, &p, None, &dirs, stdio).unwrap();
    let seen = read_all(out_r);
    assert_eq!(
        wait(running.pid),
        7,
        "the returned pid is the exec'd process"
    );
    for line in expected_cgroup_lines(&dirs, false) {
        assert!(seen.contains(&line), "exec_now: {line:?} in {seen}");
    }
    let (out_r, _err_r, stdio) = pipes();
    let held = exec(pid, &p, None, &dirs, stdio).unwrap();
    let exec_pid = held.pid;
    held.start().unwrap();
    let seen = read_all(out_r);
    assert_eq!(wait(exec_pid), 7, "the returned pid is the exec'd process");
    for line in expected_cgroup_lines(&dirs, false) {
        assert!(seen.contains(&line), "exec: {line:?} in {seen}");
    }
    drop(_container);

    let mut spec = fx.spec(&["cat", "/proc/self/cgroup"]);
    let linux = spec.linux_mut().as_mut().unwrap();
    linux.set_namespaces(Some(namespaces(&[Pid, Ipc, Uts, Mount, Cgroup])));
    let out = run_with(&spec, None, dirs.clone());
    for line in expected_cgroup_lines(&dirs, true) {
        assert!(out.stdout.contains(&line), "cgroupns: {line:?} in {out:?}");
    }
    fx.assert_no_mounts();
}

#[test]
fn terminal() {
    let fx = Fixture::new();
    let spec = fx.spec(&[
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo tty; test -c /dev/console && echo console",
    ]);
    let mut created = create(CreateOptions {
        stdio: Stdio::Terminal,
        ..silent(&spec)
    })
    .unwrap();
    let master = File::from(created.pty_master.take().unwrap());
    let pid = created.pid;
    created.start().unwrap();
    let mut out = Vec::new();
    let mut master = master;
    let mut buf = [0u8; 1024];
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("reading the terminal: {e}"),
        }
    }
    assert_eq!(wait(pid), 0);
    assert_eq!(String::from_utf8_lossy(&out), "tty\r\nconsole\r\n");
    fx.assert_no_mounts();
}

#[test]
fn exec_joins_running_container() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sleep", "30"]);
    spec.set_hostname(Some("exec-host".into()));
    let created = create(silent(&spec)).unwrap();
    let pid = created.pid;
    let _container = KillOnDrop(pid);
    created.start().unwrap();

    let p = process(&["sh", "-c", "hostname; echo $$; ps; pwd"]);
    let mut p = p;
    p.set_cwd("/tmp".into());
    let (out_r, err_r, stdio) = pipes();
    let execd = exec(pid, &p, None, &[], stdio).unwrap();
    let epid = execd.pid;
    execd.start().unwrap();
    let stdout = read_all(out_r);
    let stderr = read_all(err_r);
    assert_eq!(wait(epid), 0, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "exec-host", "{stdout}");
    assert_ne!(lines[1], "1", "{stdout}");
    assert!(
        lines.iter().any(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some("1") && l.contains("sleep 30")
        }),
        "{stdout}"
    );
    assert_eq!(lines.last(), Some(&"/tmp"));

    // A missing command fails at start, like create.
    let p = process(&["nosuch"]);
    let execd = exec(
        pid,
        &p,
        None,
        &[],
        Stdio::Pipes {
            stdin: None,
            stdout: dev_null(),
            stderr: dev_null(),
        },
    )
    .unwrap();
    let epid = execd.pid;
    let err = execd.start().unwrap_err().to_string();
    assert!(
        err.contains(r#""nosuch": executable file not found"#),
        "{err}"
    );
    assert_eq!(wait(epid), 127);
    fx.assert_no_mounts();
}

#[test]
fn exec_now_runs_without_a_start_and_keeps_the_status_of_a_fast_exit() {
    let fx = Fixture::new();
    let spec = fx.spec(&["sleep", "30"]);
    let created = create(silent(&spec)).unwrap();
    let pid = created.pid;
    let _container = KillOnDrop(pid);
    created.start().unwrap();

    // Output and exit code, with nothing between the call and execve.
    let p = process(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
    let (out_r, err_r, stdio) = pipes();
    let running = exec_now(pid, &p, None, &[], stdio).unwrap();
    assert_eq!(read_all(out_r), "out\n");
    assert_eq!(read_all(err_r), "err\n");
    assert_eq!(wait(running.pid), 3);

    // A process that exits at once is not lost: its status waits for its pid.
    let p = process(&["true"]);
    let running = exec_now(
        pid,
        &p,
        None,
        &[],
        Stdio::Pipes {
            stdin: None,
            stdout: dev_null(),
            stderr: dev_null(),
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(wait(running.pid), 0);

    // A missing command: the same message as `start` (the process is reaped already).
    let p = process(&["nosuch"]);
    let err = exec_now(
        pid,
        &p,
        None,
        &[],
        Stdio::Pipes {
            stdin: None,
            stdout: dev_null(),
            stderr: dev_null(),
        },
    )
    .unwrap_err();
    assert!(matches!(err, LaunchError::Exec(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        r#"exec: "nosuch": executable file not found in $PATH"#
    );

    // A setup failure names the step.
    let mut p = process(&["true"]);
    p.set_cwd("/no/such/dir".into());
    let err = exec_now(
        pid,
        &p,
        None,
        &[],
        Stdio::Pipes {
            stdin: None,
            stdout: dev_null(),
            stderr: dev_null(),
        },
    )
    .unwrap_err();
    assert!(matches!(err, LaunchError::Setup(_)), "{err:?}");
    assert!(err.to_string().contains("/no/such/dir"), "{err}");
    fx.assert_no_mounts();
}

fn summarize(label: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let n = times.len();
    println!(
        "{label}: min {:.2} ms, median {:.2} ms, max {:.2} ms over {n} runs",
        ms(times[0]),
        ms(times[n / 2]),
        ms(times[n - 1]),
    );
}

/// Prints (does not assert) the create+start wall time of `true`.
#[test]
fn create_start_timing() {
    let fx = Fixture::new();
    let bind_spec = fx.spec(&["true"]);
    let (upper, work, merged) = (fx.path("upper"), fx.path("work"), fx.path("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    let overlay = OverlayMount {
        lowers: vec![fx.root.clone()],
        upper: Some((upper, work)),
    };
    let overlay_spec = test_spec(&merged, &["true"]);
    for (label, spec, overlay) in [
        ("bind rootfs", &bind_spec, None),
        ("overlay rootfs", &overlay_spec, Some(&overlay)),
    ] {
        let mut create_times = Vec::new();
        let mut total_times = Vec::new();
        for _ in 0..20 {
            let t0 = Instant::now();
            let created = create(CreateOptions {
                overlay,
                ..silent(spec)
            })
            .unwrap();
            let t1 = Instant::now();
            let pid = created.pid;
            created.start().unwrap();
            let t2 = Instant::now();
            assert_eq!(wait(pid), 0);
            create_times.push(t1 - t0);
            total_times.push(t2 - t0);
        }
        summarize(&format!("{label}: create"), create_times);
        summarize(&format!("{label}: create+start"), total_times);
    }
    fx.assert_no_mounts();
}

/// The RuntimeDefault profile of a container with `caps`.
fn default_seccomp(caps: &[Capability]) -> oci_spec::runtime::LinuxSeccomp {
    cairn_kernel::seccomp::default_profile(&caps.iter().copied().collect())
}

const CAP_SYS_ADMIN_BIT: u64 = 1 << 21;

/// Runs `sh -c script` under the default profile as `uid`, with `no_new_privs`.
fn run_confined(fx: &Fixture, uid: u32, no_new_privs: bool, script: &str) -> Output {
    let mut spec = fx.spec(&["sh", "-c", script]);
    let p = proc_mut(&mut spec);
    p.set_user(UserBuilder::default().uid(uid).gid(uid).build().unwrap());
    p.set_no_new_privileges(Some(no_new_privs));
    let linux = spec.linux_mut().as_mut().unwrap();
    linux.set_seccomp(Some(default_seccomp(CRI_CAPS)));
    run(&spec)
}

#[test]
fn seccomp_filter_is_installed_last() {
    let fx = Fixture::new();
    let script = "grep -E '^(Seccomp|NoNewPrivs|CapEff)' /proc/self/status; \
                  unshare -U true 2>&1; echo unshare=$?";
    let cri_bits = status_field(
        &run(&fx.spec(&["cat", "/proc/self/status"])).stdout,
        "CapEff:",
    );
    assert_eq!(cri_bits & CAP_SYS_ADMIN_BIT, 0);
    // Root and a user, with and without no_new_privs: the filter is in, creating a user
    // namespace (no capability needed) is refused with EPERM, and CAP_SYS_ADMIN, kept to
    // load the filter without no_new_privs, is gone (a user has no effective set left
    // after execve).
    for (uid, nnp) in [(0, false), (1000, false), (0, true), (1000, true)] {
        let out = run_confined(&fx, uid, nnp, script);
        let o = &out.stdout;
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(status_field(o, "Seccomp:"), 2, "{out:?}");
        assert_eq!(status_field(o, "NoNewPrivs:"), u64::from(nnp), "{out:?}");
        let want = if uid == 0 { cri_bits } else { 0 };
        assert_eq!(status_field(o, "CapEff:"), want, "uid {uid}: {out:?}");
        assert!(o.contains("Operation not permitted"), "{out:?}");
        assert!(o.contains("unshare=1"), "{out:?}");
    }
    // Without a profile, the same call is not refused by seccomp.
    let mut spec = fx.spec(&["sh", "-c", script]);
    proc_mut(&mut spec).set_user(UserBuilder::default().uid(0u32).gid(0u32).build().unwrap());
    let out = run(&spec);
    assert_eq!(status_field(&out.stdout, "Seccomp:"), 0, "{out:?}");
    assert!(out.stdout.contains("unshare=0"), "{out:?}");
    fx.assert_no_mounts();
}

/// The filter goes in while the process waits for start, so a profile that denies
/// `read` (of the start pipe) fails the start with a message that says so, not silently.
#[test]
fn a_profile_denying_read_fails_the_start_clearly() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["true"]);
    let deny_read = cairn_kernel::seccomp::profile_denying(&["read"]);
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_seccomp(Some(deny_read));
    let created = create(silent(&spec)).unwrap();
    let pid = created.pid;
    let err = created.start().unwrap_err();
    assert!(matches!(err, LaunchError::Exec(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("does the seccomp profile deny read?"),
        "{err}"
    );
    assert_eq!(wait(pid), 1);
    fx.assert_no_mounts();
}

#[test]
fn exec_gets_the_containers_filter() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sleep", "30"]);
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_seccomp(Some(default_seccomp(CRI_CAPS)));
    let created = create(silent(&spec)).unwrap();
    let pid = created.pid;
    let _container = KillOnDrop(pid);
    let seccomp = created.seccomp.clone();
    assert!(seccomp.is_some());
    created.start().unwrap();
    let p = process(&[
        "sh",
        "-c",
        "grep Seccomp: /proc/self/status; unshare -U true",
    ]);
    let (out_r, err_r, stdio) = pipes();
    let execd = exec(pid, &p, seccomp, &[], stdio).unwrap();
    let epid = execd.pid;
    execd.start().unwrap();
    let stdout = read_all(out_r);
    let stderr = read_all(err_r);
    assert_eq!(wait(epid), 1, "{stdout}{stderr}");
    assert_eq!(status_field(&stdout, "Seccomp:"), 2, "{stdout}");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
}

#[test]
fn bad_seccomp_profile_fails_create() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["true"]);
    let notify = cairn_kernel::seccomp::parse_profile(
        br#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#,
        &Capabilities::new(),
    )
    .unwrap();
    spec.linux_mut().as_mut().unwrap().set_seccomp(Some(notify));
    let err = create_err(&spec);
    assert!(matches!(err, LaunchError::InvalidSpec(_)), "{err}");
    assert!(err.to_string().contains("linux.seccomp"), "{err}");
}

#[test]
fn device_rules_as_the_v1_controller_reads_them() {
    let lines: Vec<Option<String>> = cairn_kernel::devices::default_device_rules()
        .iter()
        .map(cairn_kernel::devices::v1_line)
        .collect();
    assert_eq!(lines[0].as_deref(), Some("a"));
    assert_eq!(lines[1].as_deref(), Some("c *:* m"));
    assert_eq!(lines[3].as_deref(), Some("c 1:3 rwm"));
    assert_eq!(lines.last().unwrap().as_deref(), Some("c 136:* rwm"));
}

/// A default container may create any device node (CAP_MKNOD) but open only the allowed
/// ones: the rules are in its v1 devices cgroup.
#[test]
fn device_cgroup_limits_what_nodes_open() {
    let devices = Path::new("/sys/fs/cgroup/devices");
    assert!(
        devices.join("devices.allow").exists(),
        "this test needs the cgroup v1 devices hierarchy (a v1 or hybrid host)"
    );
    let fx = Fixture::new();
    let dir = devices.join(format!("cairn-launch-test-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir(&self.0);
        }
    }
    let _guard = RemoveDir(dir.clone());
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem; echo mem=$?; head -c 1 /dev/zero | wc -c",
    ]);
    let mut resources = oci_spec::runtime::LinuxResources::default();
    resources.set_devices(Some(cairn_kernel::devices::default_device_rules()));
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_resources(Some(resources));
    let out = run_with(&spec, None, vec![dir.clone()]);
    assert!(out.stdout.contains("mem=1"), "{out:?}");
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");
    assert!(
        out.stdout.trim_end().ends_with('1'),
        "/dev/zero is readable: {out:?}"
    );
    let list = fs::read_to_string(dir.join("devices.list")).unwrap();
    assert!(
        list.contains("c 1:5 rwm") && !list.contains("a *:* rwm"),
        "{list}"
    );
}

/// Two containers of one pod (one network namespace, so one sysfs superblock): the first
/// mounts /sys read-only, the second read-write; each gets what it asked for.
#[test]
fn read_only_sysfs_stays_per_container() {
    use LinuxNamespaceType::*;
    let fx = Fixture::new();
    let pod = PodNamespaces::new(fx.dir.path());
    let spec_with_sys = |access: &str| {
        let mut spec = fx.spec(&["sh", "-c", "grep ' /sys ' /proc/mounts"]);
        let mut ns = namespaces(&[Pid, Ipc, Mount]);
        let net = LinuxNamespaceBuilder::default()
            .typ(Network)
            .path(pod.net.clone())
            .build()
            .unwrap();
        ns.push(net);
        spec.linux_mut().as_mut().unwrap().set_namespaces(Some(ns));
        let mut mounts = default_mounts();
        for m in &mut mounts {
            if m.destination() == Path::new("/sys") {
                m.set_options(Some(
                    ["nosuid", "noexec", "nodev", access]
                        .map(String::from)
                        .to_vec(),
                ));
            }
        }
        spec.set_mounts(Some(mounts));
        spec
    };
    let ro = run(&spec_with_sys("ro"));
    assert!(ro.stdout.contains(" ro,"), "{ro:?}");
    let rw = run(&spec_with_sys("rw"));
    assert!(rw.stdout.contains(" rw,"), "{rw:?}");
    drop(pod);
    fx.assert_no_mounts();
}

/// The cgroup2 hierarchy of this machine: the root on pure v2, the hybrid layout's
/// controller-less mount otherwise.
fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| cairn_kernel::devfilter::is_cgroup2(p))
}

/// On the cgroup2 hierarchy the device rules become a device program attached to the
/// container's cgroup before it joins: here only that program guards the devices (no v1
/// `devices` cgroup is given), and it denies reading /dev/null while writing it, reading
/// /dev/zero and mknod stay allowed.
#[test]
fn device_program_limits_what_nodes_open_on_cgroup2() {
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};
    let root = cgroup2_root().expect("this test needs root and a cgroup2 hierarchy");
    let fx = Fixture::new();
    let dir = root.join(format!("cairn-launch-bpf-test-{}", std::process::id()));
    fs::create_dir(&dir).unwrap();
    let _rmdir = RmdirOnDrop(dir.clone());
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "cat /dev/null; echo null_read=$?; echo x > /dev/null; echo null_write=$?; \
         mknod /tmp/mem c 1 1; echo mknod=$?; cat /tmp/mem; echo mem=$?; \
         head -c 3 /dev/zero | wc -c",
    ]);
    let mut rules = cairn_kernel::devices::default_device_rules();
    rules.push(
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .typ(LinuxDeviceType::C)
            .major(1)
            .minor(3)
            .access("r")
            .build()
            .unwrap(),
    );
    let mut resources = oci_spec::runtime::LinuxResources::default();
    resources.set_devices(Some(rules));
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_resources(Some(resources));
    let out = run_with(&spec, None, vec![dir.clone()]);
    assert_eq!(cairn_kernel::devfilter::attached(&dir).unwrap().len(), 1);
    for want in ["null_read=1", "null_write=0", "mknod=0", "mem=1"] {
        assert!(out.stdout.contains(want), "{want}: {out:?}");
    }
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");
    assert!(out.stdout.trim_end().ends_with('3'), "/dev/zero: {out:?}");
    fx.assert_no_mounts();
}

/// A privileged container's rules allow everything: no program is attached.
#[test]
fn allow_all_device_rules_attach_no_program() {
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};
    let root = cgroup2_root().expect("this test needs root and a cgroup2 hierarchy");
    let fx = Fixture::new();
    let dir = root.join(format!("cairn-launch-bpf-all-{}", std::process::id()));
    fs::create_dir(&dir).unwrap();
    let _rmdir = RmdirOnDrop(dir.clone());
    let mut spec = fx.spec(&["cat", "/dev/null"]);
    let all = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::A)
        .access("rwm")
        .build()
        .unwrap();
    let mut resources = oci_spec::runtime::LinuxResources::default();
    resources.set_devices(Some(vec![all]));
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_resources(Some(resources));
    let out = run_with(&spec, None, vec![dir.clone()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(cairn_kernel::devfilter::attached(&dir).unwrap().is_empty());
    fx.assert_no_mounts();
}
