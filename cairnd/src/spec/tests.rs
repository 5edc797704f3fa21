//! Unit tests of the spec builder.

use super::*;
use std::collections::BTreeSet;
use tempfile::TempDir;

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn image(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
    let mut img = ImageConfig::default();
    img.config.entrypoint = entrypoint.map(strs);
    img.config.cmd = cmd.map(strs);
    img
}

fn named(name: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        command: strs(&["/bin/app"]),
        ..Default::default()
    }
}

fn write(layer: &Path, rel: &str, content: &str) {
    let path = layer.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// A pod, a container config and an image, with paths in a temp dir.
struct Fixture {
    tmp: TempDir,
    pod: PodContext,
    config: cri::ContainerConfig,
    image: ImageConfig,
    layers: Vec<PathBuf>,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = TempDir::new().unwrap();
        let run = tmp.path().join("pod");
        let pod = PodContext {
            pod_id: "pod1".to_string(),
            hostname: "web-0".to_string(),
            netns: Some(run.join("ns/net")),
            ipcns: Some(run.join("ns/ipc")),
            utsns: Some(run.join("ns/uts")),
            pidns: None,
            host_pid: false,
            resolv_conf: Some(run.join("resolv.conf")),
            hosts: run.join("hosts"),
            hostname_file: run.join("hostname"),
            shm: Some(run.join("shm")),
            cgroup_parent: "/kubepods/pod1".to_string(),
            sysctls: HashMap::new(),
            userns: None,
        };
        Fixture {
            tmp,
            pod,
            config: named("app"),
            image: image(None, Some(&["sh"])),
            layers: Vec::new(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn ctx(&self) -> ContainerContext<'_> {
        ContainerContext {
            id: "c1",
            config: &self.config,
            image: &self.image,
            rootfs_layers: &self.layers,
            rootfs: self.path("bundle/rootfs"),
            cgroup_path: cgroup_path(&self.pod.cgroup_parent, "c1"),
        }
    }

    fn build(&self) -> Result<Spec, SpecError> {
        build_spec(&self.pod, &self.ctx())
    }

    fn sc(&mut self) -> &mut cri::LinuxContainerSecurityContext {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    fn res(&mut self) -> &mut cri::LinuxContainerResources {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default)
    }

    /// Two layers: lower with passwd/group, upper overriding passwd.
    fn with_users(&mut self) {
        let lower = self.path("layers/lower");
        let upper = self.path("layers/upper");
        write(
            &lower,
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\n# comment\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\nbroken-line\n",
        );
        write(
            &lower,
            "etc/group",
            "root:x:0:\nalice:x:1000:\nbob:x:1001:\ndev:x:2000:alice,bob\naudio:x:3000:alice\nstaff:x:50:\n",
        );
        write(
            &upper,
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1500:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n",
        );
        self.layers = vec![upper, lower];
    }
}

/// uid, gid, additional gids.
type Ids = (u32, u32, Vec<u32>);

fn user_of(f: &Fixture) -> Result<Ids, SpecError> {
    let (u, _) = resolve_user_and_home(&f.ctx())?;
    Ok((
        u.uid(),
        u.gid(),
        u.additional_gids().clone().unwrap_or_default(),
    ))
}

fn err_msg<T: std::fmt::Debug>(r: Result<T, SpecError>) -> String {
    r.unwrap_err().to_string()
}

// --- command -----------------------------------------------------------------------------

#[test]
fn command_merge_table() {
    let ep: Option<&[&str]> = Some(&["/ep", "-x"]);
    let cmd: Option<&[&str]> = Some(&["cmd1"]);
    let images = [
        ("none", image(None, None)),
        ("ep", image(ep, None)),
        ("cmd", image(None, cmd)),
        ("ep+cmd", image(ep, cmd)),
    ];
    let cris: [(&str, &[&str], &[&str]); 4] = [
        ("none", &[], &[]),
        ("command", &["/c"], &[]),
        ("args", &[], &["a1", "a2"]),
        ("command+args", &["/c"], &["a1", "a2"]),
    ];
    let expect: [[Option<&[&str]>; 4]; 4] = [
        // image: none
        [
            None,
            Some(&["/c"]),
            Some(&["a1", "a2"]),
            Some(&["/c", "a1", "a2"]),
        ],
        // image: entrypoint
        [
            Some(&["/ep", "-x"]),
            Some(&["/c"]),
            Some(&["/ep", "-x", "a1", "a2"]),
            Some(&["/c", "a1", "a2"]),
        ],
        // image: cmd
        [
            Some(&["cmd1"]),
            Some(&["/c"]),
            Some(&["a1", "a2"]),
            Some(&["/c", "a1", "a2"]),
        ],
        // image: entrypoint + cmd
        [
            Some(&["/ep", "-x", "cmd1"]),
            Some(&["/c"]),
            Some(&["/ep", "-x", "a1", "a2"]),
            Some(&["/c", "a1", "a2"]),
        ],
    ];
    for (i, (iname, img)) in images.iter().enumerate() {
        for (j, (cname, command_, args)) in cris.iter().enumerate() {
            let config = cri::ContainerConfig {
                command: strs(command_),
                args: strs(args),
                ..Default::default()
            };
            let got = command(&config, img);
            match expect[i][j] {
                Some(want) => {
                    assert_eq!(got.unwrap(), strs(want), "image {iname} × cri {cname}")
                }
                None => assert!(
                    matches!(got, Err(SpecError::InvalidArgument(_))),
                    "image {iname} × cri {cname}: {got:?}"
                ),
            }
        }
    }
}

#[test]
fn command_empty_errors_name_the_container() {
    let mut config = named("web");
    config.command.clear();
    let msg = err_msg(command(&config, &image(None, None)));
    assert!(
        msg.contains("\"web\"") && msg.contains("no command"),
        "{msg}"
    );
    // An empty executable is as bad as none.
    let msg = err_msg(command(&config, &image(Some(&[""]), None)));
    assert!(msg.contains("no command"), "{msg}");
}

// --- environment ---------------------------------------------------------------------------

#[test]
fn env_override_and_path_default() {
    let mut img = image(None, Some(&["sh"]));
    img.config.env = strs(&["A=image", "B=keep", "EMPTY"]);
    let config = cri::ContainerConfig {
        envs: vec![
            cri::KeyValue {
                key: "A".into(),
                value: "cri".into(),
            },
            cri::KeyValue {
                key: "C".into(),
                value: "x=y".into(),
            },
            cri::KeyValue {
                key: "EMPTY".into(),
                value: "".into(),
            },
        ],
        ..Default::default()
    };
    let env = environment(&config, &img, "web-0");
    assert_eq!(
        env,
        strs(&[
            &format!("PATH={DEFAULT_PATH}"),
            "HOSTNAME=web-0",
            "A=cri",
            "B=keep",
            "EMPTY=",
            "C=x=y"
        ])
    );
}

#[test]
fn env_keeps_image_path_and_adds_term_for_tty() {
    let mut img = image(None, Some(&["sh"]));
    img.config.env = strs(&["PATH=/opt/bin"]);
    let config = cri::ContainerConfig {
        tty: true,
        ..Default::default()
    };
    let env = environment(&config, &img, "h");
    assert_eq!(env, strs(&["HOSTNAME=h", "PATH=/opt/bin", "TERM=xterm"]));

    // CRI may override both PATH and HOSTNAME.
    let config = cri::ContainerConfig {
        envs: vec![
            cri::KeyValue {
                key: "PATH".into(),
                value: "/x".into(),
            },
            cri::KeyValue {
                key: "HOSTNAME".into(),
                value: "other".into(),
            },
        ],
        ..Default::default()
    };
    let env = environment(&config, &img, "h");
    assert_eq!(env, strs(&["HOSTNAME=other", "PATH=/x"]));
}

// --- users ---------------------------------------------------------------------------------

#[test]
fn user_defaults_to_root() {
    let mut f = Fixture::new();
    assert_eq!(user_of(&f).unwrap(), (0, 0, vec![0]));
    f.with_users();
    assert_eq!(user_of(&f).unwrap(), (0, 0, vec![0]));
}

#[test]
fn user_names_looked_up_through_layers() {
    let mut f = Fixture::new();
    f.with_users();
    // passwd from the upper layer (alice is 1500 there), group from the lower one.
    f.image.config.user = Some("alice".into());
    assert_eq!(user_of(&f).unwrap(), (1500, 1000, vec![1000, 2000, 3000]));
    f.image.config.user = Some("bob".into());
    assert_eq!(user_of(&f).unwrap(), (1001, 1001, vec![1001, 2000]));
}

#[test]
fn user_uid_gid_forms() {
    let mut f = Fixture::new();
    f.with_users();
    let cases: [(&str, Ids); 7] = [
        ("1500", (1500, 1000, vec![1000, 2000, 3000])),
        ("1500:50", (1500, 50, vec![50, 2000, 3000])),
        ("alice:audio", (1500, 3000, vec![3000, 2000])),
        ("1001:dev", (1001, 2000, vec![2000])),
        ("bob:7", (1001, 7, vec![7, 2000])),
        // A uid without a passwd entry: gid 0, no groups.
        ("4242", (4242, 0, vec![0])),
        ("4242:4243", (4242, 4243, vec![4243])),
    ];
    for (user, want) in cases {
        f.image.config.user = Some(user.into());
        assert_eq!(user_of(&f).unwrap(), want, "image user {user}");
    }
}

#[test]
fn cri_user_overrides_image_user() {
    let mut f = Fixture::new();
    f.with_users();
    f.image.config.user = Some("bob".into());
    f.sc().run_as_user = Some(cri::Int64Value { value: 1500 });
    assert_eq!(user_of(&f).unwrap(), (1500, 1000, vec![1000, 2000, 3000]));

    f.sc().run_as_group = Some(cri::Int64Value { value: 77 });
    f.sc().supplemental_groups = vec![88, 2000];
    assert_eq!(user_of(&f).unwrap(), (1500, 77, vec![77, 2000, 3000, 88]));

    f.sc().supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
    assert_eq!(user_of(&f).unwrap(), (1500, 77, vec![77, 88, 2000]));

    let sc = f.sc();
    sc.run_as_user = None;
    sc.run_as_group = None;
    sc.supplemental_groups.clear();
    sc.supplemental_groups_policy = 0;
    sc.run_as_username = "alice".into();
    assert_eq!(user_of(&f).unwrap(), (1500, 1000, vec![1000, 2000, 3000]));

    // run_as_group without a user is refused, as by containerd and CRI-O.
    f.sc().run_as_username.clear();
    f.sc().run_as_group = Some(cri::Int64Value { value: 5 });
    let msg = err_msg(user_of(&f));
    assert!(
        msg.contains("run_as_group is set without run_as_user"),
        "{msg}"
    );
}

#[test]
fn unknown_user_or_group_errors() {
    let mut f = Fixture::new();
    f.with_users();
    f.image.config.user = Some("mallory".into());
    let msg = err_msg(user_of(&f));
    assert!(
        msg.contains("\"mallory\"") && msg.contains("/etc/passwd"),
        "{msg}"
    );
    assert!(msg.contains("\"app\" (c1)"), "{msg}");
    f.image.config.user = Some("alice:nogroup".into());
    let msg = err_msg(user_of(&f));
    assert!(
        msg.contains("\"nogroup\"") && msg.contains("/etc/group"),
        "{msg}"
    );
    f.image.config.user = Some(":5".into());
    assert!(matches!(user_of(&f), Err(SpecError::InvalidArgument(_))));
    f.image.config.user = None;
    f.sc().run_as_user = Some(cri::Int64Value { value: -1 });
    let msg = err_msg(user_of(&f));
    assert!(msg.contains("run_as_user"), "{msg}");
    // No layers at all: names cannot resolve.
    let mut f = Fixture::new();
    f.image.config.user = Some("alice".into());
    assert!(matches!(user_of(&f), Err(SpecError::InvalidArgument(_))));
}

/// Makes `path` an overlay whiteout; false if not permitted here (not root).
fn whiteout(path: &Path) -> bool {
    use nix::sys::stat::{mknod, Mode, SFlag};
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    mknod(path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), 0).is_ok()
}

#[test]
fn whiteout_hides_lower_file() {
    let mut f = Fixture::new();
    f.with_users();
    let top = f.path("layers/top");
    assert!(
        whiteout(&top.join("etc/group")),
        "this test needs CAP_MKNOD (root) to make a whiteout"
    );
    f.layers.insert(0, top);
    f.image.config.user = Some("alice".into());
    // Groups are gone: only the primary gid remains.
    assert_eq!(user_of(&f).unwrap(), (1500, 1000, vec![1000]));
    f.image.config.user = Some("alice:dev".into());
    assert!(matches!(user_of(&f), Err(SpecError::InvalidArgument(_))));
}

#[test]
fn opaque_dir_and_file_parent_hide_lower_files() {
    let mut f = Fixture::new();
    f.with_users();
    let top = f.path("layers/top");
    write(&top, "etc/other", "");
    let etc = top.join("etc");
    rustix::fs::lsetxattr(
        &etc,
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("this test needs CAP_SYS_ADMIN (root) to set trusted xattrs");
    f.layers.insert(0, top.clone());
    f.image.config.user = Some("alice".into());
    assert!(matches!(user_of(&f), Err(SpecError::InvalidArgument(_))));
    f.image.config.user = Some("1000".into());
    assert_eq!(user_of(&f).unwrap(), (1000, 0, vec![0]));
    f.layers.remove(0);
    // A layer where /etc is a regular file hides everything below it.
    let flat = f.path("layers/flat");
    write(&flat, "etc", "not a dir");
    f.layers.insert(0, flat);
    f.image.config.user = Some("alice".into());
    assert!(matches!(user_of(&f), Err(SpecError::InvalidArgument(_))));
}

#[test]
fn symlinked_passwd_is_not_followed() {
    let mut f = Fixture::new();
    f.with_users();
    let top = f.path("layers/top");
    fs::create_dir_all(top.join("etc")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", top.join("etc/passwd")).unwrap();
    f.layers.insert(0, top);
    f.image.config.user = Some("alice".into());
    assert!(matches!(user_of(&f), Err(SpecError::InvalidArgument(_))));
}

// --- capabilities --------------------------------------------------------------------------

fn caps_of(f: &Fixture) -> Result<BTreeSet<String>, SpecError> {
    let spec = f.build()?;
    let caps = spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    let bounding = caps.bounding().clone().unwrap();
    assert_eq!(caps.effective().as_ref(), Some(&bounding));
    assert_eq!(caps.permitted().as_ref(), Some(&bounding));
    Ok(bounding.iter().map(|c| c.to_string()).collect())
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const DEFAULT_NAMES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

#[test]
fn capabilities_default_add_drop() {
    let mut f = Fixture::new();
    assert_eq!(caps_of(&f).unwrap(), set(&DEFAULT_NAMES));

    f.sc().capabilities = Some(cri::Capability {
        add_capabilities: strs(&["CAP_SYS_ADMIN", "net_admin"]),
        drop_capabilities: strs(&["cap_net_raw", "MKNOD"]),
        ..Default::default()
    });
    let mut want = set(&DEFAULT_NAMES);
    want.remove("NET_RAW");
    want.remove("MKNOD");
    want.insert("SYS_ADMIN".into());
    want.insert("NET_ADMIN".into());
    assert_eq!(caps_of(&f).unwrap(), want);

    f.sc().capabilities = Some(cri::Capability {
        add_capabilities: strs(&["NET_BIND_SERVICE"]),
        drop_capabilities: strs(&["ALL"]),
        ..Default::default()
    });
    assert_eq!(caps_of(&f).unwrap(), set(&["NET_BIND_SERVICE"]));

    f.sc().capabilities = Some(cri::Capability {
        add_capabilities: strs(&["all"]),
        drop_capabilities: strs(&["SYS_ADMIN"]),
        ..Default::default()
    });
    let got = caps_of(&f).unwrap();
    assert_eq!(got.len(), current_capabilities().len() - 1);
    assert!(!got.contains("SYS_ADMIN"));

    f.sc().capabilities = Some(cri::Capability {
        drop_capabilities: strs(&["ALL"]),
        add_ambient_capabilities: strs(&["NET_BIND_SERVICE"]),
        ..Default::default()
    });
    let spec = f.build().unwrap();
    let caps = spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    let nbs: Capabilities = [Capability::NetBindService].into_iter().collect();
    assert_eq!(caps.ambient().as_ref(), Some(&nbs));
    assert_eq!(caps.inheritable().as_ref(), Some(&nbs));
    assert_eq!(caps.permitted().as_ref(), Some(&nbs));
}

#[test]
fn capabilities_privileged_and_unknown() {
    let mut f = Fixture::new();
    f.sc().capabilities = Some(cri::Capability {
        add_capabilities: strs(&["CAP_NOPE"]),
        ..Default::default()
    });
    let msg = err_msg(f.build());
    assert!(msg.contains("CAP_NOPE") && msg.contains("(c1)"), "{msg}");

    f.sc().capabilities = None;
    f.sc().privileged = true;
    assert_eq!(caps_of(&f).unwrap().len(), current_capabilities().len());
    let all: HashSet<_> = ALL_CAPABILITIES.iter().collect();
    assert_eq!(all.len(), ALL_CAPABILITIES.len(), "no duplicates");
    let numbers: HashSet<u32> = ALL_CAPABILITIES.iter().map(capability_number).collect();
    assert_eq!(numbers, (0..41).collect(), "one number each");
    // What cairnd holds bounds it (this machine's root may lack some).
    assert!(current_capabilities().len() <= ALL_CAPABILITIES.len());
    assert!(current_capabilities().contains(&Capability::SysAdmin));
}

// --- mounts --------------------------------------------------------------------------------

fn mount_table(spec: &Spec) -> Vec<(String, String, String, Vec<String>)> {
    spec.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m.destination().display().to_string(),
                m.typ().clone().unwrap_or_default(),
                m.source()
                    .as_ref()
                    .map(|s| s.display().to_string())
                    .unwrap_or_default(),
                m.options().clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn dests(spec: &Spec) -> Vec<String> {
    mount_table(spec).into_iter().map(|m| m.0).collect()
}

#[test]
fn mounts_order_and_options() {
    let f = Fixture::new();
    let spec = f.build().unwrap();
    let table = mount_table(&spec);
    let p = |rel: &str| f.path(rel).display().to_string();
    let want: Vec<(String, String, String, Vec<String>)> = vec![
        (
            "/proc",
            "proc",
            "proc".into(),
            strs(&["nosuid", "noexec", "nodev"]),
        ),
        (
            "/dev",
            "tmpfs",
            "tmpfs".into(),
            strs(&["nosuid", "strictatime", "mode=755", "size=65536k"]),
        ),
        (
            "/dev/pts",
            "devpts",
            "devpts".into(),
            strs(&[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ]),
        ),
        (
            "/dev/mqueue",
            "mqueue",
            "mqueue".into(),
            strs(&["nosuid", "noexec", "nodev"]),
        ),
        (
            "/sys",
            "sysfs",
            "sysfs".into(),
            strs(&["nosuid", "noexec", "nodev", "ro"]),
        ),
        (
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup".into(),
            strs(&["nosuid", "noexec", "nodev", "relatime", "ro"]),
        ),
        (
            "/dev/shm",
            "bind",
            p("pod/shm"),
            strs(&["rbind", "rprivate", "rw"]),
        ),
        (
            "/etc/hostname",
            "bind",
            p("pod/hostname"),
            strs(&["rbind", "rprivate", "rw"]),
        ),
        (
            "/etc/hosts",
            "bind",
            p("pod/hosts"),
            strs(&["rbind", "rprivate", "rw"]),
        ),
        (
            "/etc/resolv.conf",
            "bind",
            p("pod/resolv.conf"),
            strs(&["rbind", "rprivate", "rw"]),
        ),
    ]
    .into_iter()
    .map(|(d, t, s, o)| (d.to_string(), t.to_string(), s, o))
    .collect();
    assert_eq!(table, want);
}

#[test]
fn mounts_own_shm_readonly_rootfs_no_resolv() {
    let mut f = Fixture::new();
    f.pod.shm = None;
    f.pod.resolv_conf = None;
    f.sc().readonly_rootfs = true;
    let spec = f.build().unwrap();
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    let table = mount_table(&spec);
    let shm = table.iter().find(|m| m.0 == "/dev/shm").unwrap();
    assert_eq!(shm.1, "tmpfs");
    assert!(shm.3.contains(&"size=65536k".to_string()), "{shm:?}");
    assert!(!table.iter().any(|m| m.0 == "/etc/resolv.conf"));
    let hosts = table.iter().find(|m| m.0 == "/etc/hosts").unwrap();
    assert_eq!(hosts.3, strs(&["rbind", "rprivate", "ro"]));
}

fn cri_mount(
    container: &str,
    host: &Path,
    readonly: bool,
    prop: cri::MountPropagation,
) -> cri::Mount {
    cri::Mount {
        container_path: container.to_string(),
        host_path: host.display().to_string(),
        readonly,
        selinux_relabel: true,
        propagation: prop as i32,
        ..Default::default()
    }
}

/// A tmpfs mounted at a path with the given propagation (MS_SHARED, MS_PRIVATE),
/// unmounted on drop.
struct TestMount(PathBuf);

impl TestMount {
    fn new(path: &Path, propagation: nix::mount::MsFlags) -> TestMount {
        use nix::mount::{mount, MsFlags};
        fs::create_dir_all(path).unwrap();
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let guard = TestMount(path.to_path_buf());
        mount(None::<&str>, path, None::<&str>, propagation, None::<&str>).unwrap();
        guard
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn cri_mounts_propagation_order_and_cover() {
    use cri::MountPropagation::*;
    let mut f = Fixture::new();
    // Propagating mounts need a source on a shared mount.
    let _shared = TestMount::new(&f.path("host"), nix::mount::MsFlags::MS_SHARED);
    let data = f.path("host/data");
    let nested = f.path("host/nested");
    let hosts = f.path("host/etc-hosts");
    fs::create_dir_all(&data).unwrap();
    fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    std::os::unix::fs::symlink(&data, f.path("host/link")).unwrap();
    f.config.mounts = vec![
        cri_mount("/data/nested/", &nested, false, PropagationBidirectional),
        cri_mount(
            "/data",
            &f.path("host/link"),
            true,
            PropagationHostToContainer,
        ),
        cri_mount("/etc/hosts", &hosts, false, PropagationPrivate),
    ];
    let spec = f.build().unwrap();
    let table = mount_table(&spec);
    // The pod's /etc/hosts is left out: kubelet mounts its own.
    assert_eq!(
        dests(&spec),
        strs(&[
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/dev/shm",
            "/etc/hostname",
            "/etc/resolv.conf",
            "/data",
            "/data/nested",
            "/etc/hosts",
        ])
    );
    let by = |d: &str| table.iter().find(|m| m.0 == d).unwrap().clone();
    let data_mount = by("/data");
    assert_eq!(data_mount.1, "bind");
    // Symlinks in the source are resolved.
    assert_eq!(
        data_mount.2,
        fs::canonicalize(&data).unwrap().display().to_string()
    );
    assert_eq!(data_mount.3, strs(&["rbind", "rslave", "ro"]));
    assert_eq!(by("/etc/hosts").3, strs(&["rbind", "rprivate", "rw"]));
    assert_eq!(by("/data/nested").3, strs(&["rbind", "rshared", "rw"]));
    // A missing source is created as a directory.
    assert!(nested.is_dir());
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.rootfs_propagation().as_deref(), Some("rshared"));

    f.config.mounts.truncate(2);
    f.config.mounts.remove(0);
    let spec = f.build().unwrap();
    assert_eq!(
        spec.linux()
            .as_ref()
            .unwrap()
            .rootfs_propagation()
            .as_deref(),
        Some("rslave")
    );
}

#[test]
fn propagating_mounts_need_a_source_that_propagates() {
    use cri::MountPropagation::*;
    let mut f = Fixture::new();
    let _private = TestMount::new(&f.path("private"), nix::mount::MsFlags::MS_PRIVATE);
    let _slave = TestMount::new(&f.path("shared"), nix::mount::MsFlags::MS_SHARED);
    let slave_dir = f.path("slave");
    fs::create_dir_all(&slave_dir).unwrap();
    // A slave of the shared mount: bind it, then make the bind a slave.
    nix::mount::mount(
        Some(&f.path("shared")),
        &slave_dir,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let _slave_guard = TestMount(slave_dir.clone());
    nix::mount::mount(
        None::<&str>,
        &slave_dir,
        None::<&str>,
        nix::mount::MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .unwrap();
    let cases = [
        (
            "private",
            PropagationBidirectional,
            Some("bidirectional propagation"),
        ),
        (
            "private",
            PropagationHostToContainer,
            Some("host-to-container"),
        ),
        ("private", PropagationPrivate, None),
        ("slave", PropagationBidirectional, Some("a shared mount")),
        ("slave", PropagationHostToContainer, None),
        ("shared", PropagationBidirectional, None),
    ];
    for (dir, prop, refused) in cases {
        f.config.mounts = vec![cri_mount("/v", &f.path(dir), false, prop)];
        match (f.build(), refused) {
            (Ok(_), None) => {}
            (Err(SpecError::FailedPrecondition(m)), Some(why)) => {
                assert!(
                    m.contains(why) && m.contains("mount /v"),
                    "{dir} {prop:?}: {m}"
                );
            }
            (other, _) => panic!("{dir} {prop:?}: {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn cri_dev_mount_covers_dev_mounts() {
    let mut f = Fixture::new();
    let dev = f.path("host/dev");
    f.config.mounts = vec![cri_mount(
        "/dev",
        &dev,
        false,
        cri::MountPropagation::PropagationPrivate,
    )];
    let spec = f.build().unwrap();
    let d = dests(&spec);
    assert_eq!(
        d.iter().filter(|m| m.starts_with("/dev")).count(),
        1,
        "{d:?}"
    );
    assert_eq!(d.last().unwrap(), "/dev");
}

#[test]
fn cri_mount_errors() {
    let mut f = Fixture::new();
    let src = f.path("host/x");
    f.config.mounts = vec![cri_mount(
        "data",
        &src,
        false,
        cri::MountPropagation::PropagationPrivate,
    )];
    let msg = err_msg(f.build());
    assert!(
        msg.contains("container_path") && msg.contains("\"data\"") && msg.contains("(c1)"),
        "{msg}"
    );

    f.config.mounts[0].container_path = "/data".into();
    f.config.mounts[0].propagation = 9;
    assert!(matches!(f.build(), Err(SpecError::InvalidArgument(_))));

    f.config.mounts[0].propagation = 0;
    f.config.mounts[0].recursive_read_only = true;
    assert!(matches!(f.build(), Err(SpecError::InvalidArgument(_))));
    f.config.mounts[0].readonly = true;
    let spec = f.build().unwrap();
    assert_eq!(
        mount_table(&spec).last().unwrap().3,
        strs(&["rbind", "rprivate", "rro"])
    );
}

#[test]
fn privileged_sysfs_and_cgroupfs_are_writable() {
    let mut f = Fixture::new();
    f.sc().privileged = true;
    let spec = f.build().unwrap();
    for (dest, _, _, opts) in mount_table(&spec) {
        if dest == "/sys" || dest == "/sys/fs/cgroup" {
            assert!(opts.contains(&"rw".to_string()), "{dest}: {opts:?}");
        }
    }
}

// --- masked paths, devices -----------------------------------------------------------------

#[test]
fn masked_and_readonly_paths() {
    let mut f = Fixture::new();
    let spec = f.build().unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.masked_paths().as_ref().unwrap(), &strs(&MASKED_PATHS));
    assert_eq!(
        linux.readonly_paths().as_ref().unwrap(),
        &strs(&READONLY_PATHS)
    );

    f.sc().masked_paths = strs(&["/proc/kcore"]);
    let spec = f.build().unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.masked_paths().as_ref().unwrap(),
        &strs(&["/proc/kcore"])
    );
    assert_eq!(
        linux.readonly_paths().as_ref().unwrap(),
        &strs(&READONLY_PATHS)
    );

    f.sc().privileged = true;
    let spec = f.build().unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert!(linux.masked_paths().as_ref().unwrap().is_empty());
    assert!(linux.readonly_paths().as_ref().unwrap().is_empty());
}

fn rules(spec: &Spec) -> Vec<String> {
    let linux = spec.linux().as_ref().unwrap();
    let res = linux.resources().as_ref().unwrap();
    res.devices()
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| format!("{} {r}", r.allow()))
        .collect()
}

#[test]
fn default_device_rules_deny_first() {
    let f = Fixture::new();
    let spec = f.build().unwrap();
    assert_eq!(
        rules(&spec),
        strs(&[
            "false a *:* rwm",
            "true c *:* m",
            "true b *:* m",
            "true c 1:3 rwm",
            "true c 1:5 rwm",
            "true c 1:7 rwm",
            "true c 1:8 rwm",
            "true c 1:9 rwm",
            "true c 5:0 rwm",
            "true c 5:2 rwm",
            "true c 136:* rwm",
        ])
    );
    assert!(spec
        .linux()
        .as_ref()
        .unwrap()
        .devices()
        .as_ref()
        .unwrap()
        .is_empty());
}

#[test]
fn cri_devices() {
    let mut f = Fixture::new();
    f.config.devices = vec![cri::Device {
        container_path: "/dev/mynull".into(),
        host_path: "/dev/null".into(),
        permissions: "rw".into(),
    }];
    let spec = f.build().unwrap();
    let devs = spec.linux().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(devs.len(), 1);
    let d = &devs[0];
    assert_eq!(d.path(), Path::new("/dev/mynull"));
    assert_eq!((d.typ(), d.major(), d.minor()), (LinuxDeviceType::C, 1, 3));
    assert_eq!(rules(&spec).last().unwrap(), "true c 1:3 rw");

    f.config.devices[0].host_path = "/dev/cairn-no-such-device".into();
    let err = f.build().unwrap_err();
    assert!(matches!(err, SpecError::NotFound(_)), "{err}");
    assert!(
        err.to_string().contains("/dev/cairn-no-such-device"),
        "{err}"
    );

    f.config.devices[0].host_path = "/dev/null".into();
    f.config.devices[0].permissions = "rwx".into();
    assert!(matches!(f.build(), Err(SpecError::InvalidArgument(_))));

    let file = f.path("plain");
    fs::write(&file, "").unwrap();
    f.config.devices[0].host_path = file.display().to_string();
    f.config.devices[0].permissions = String::new();
    assert!(matches!(f.build(), Err(SpecError::InvalidArgument(_))));
}

#[test]
fn privileged_devices_allow_all() {
    let mut f = Fixture::new();
    f.sc().privileged = true;
    let spec = f.build().unwrap();
    assert_eq!(rules(&spec), strs(&["true a *:* rwm"]));
    let devs = spec.linux().as_ref().unwrap().devices().clone().unwrap();
    assert!(devs.iter().any(|d| d.path() == Path::new("/dev/null")));
    assert!(!devs.iter().any(|d| d.path().starts_with("/dev/pts")));
}

// --- resources -----------------------------------------------------------------------------

#[test]
fn resources_mapped() {
    let mut f = Fixture::new();
    f.pod
        .sysctls
        .insert("net.ipv4.ip_forward".into(), "1".into());
    *f.res() = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 256 << 20,
        memory_swap_limit_in_bytes: 512 << 20,
        oom_score_adj: 999,
        cpuset_cpus: "0-3,5".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![cri::HugepageLimit {
            page_size: "2MB".into(),
            limit: 1 << 21,
        }],
        unified: [("memory.high".to_string(), "1000000".to_string())].into(),
    };
    let spec = f.build().unwrap();
    assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(999));
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/kubepods/pod1/c1"))
    );
    assert_eq!(linux.sysctl().as_ref().unwrap()["net.ipv4.ip_forward"], "1");
    let res = linux.resources().as_ref().unwrap();
    let cpu = res.cpu().as_ref().unwrap();
    assert_eq!(
        (cpu.shares(), cpu.quota(), cpu.period()),
        (Some(512), Some(50_000), Some(100_000))
    );
    assert_eq!(cpu.cpus().as_deref(), Some("0-3,5"));
    assert_eq!(cpu.mems().as_deref(), Some("0"));
    let mem = res.memory().as_ref().unwrap();
    assert_eq!(
        (mem.limit(), mem.swap()),
        (Some(256 << 20), Some(512 << 20))
    );
    let hp = &res.hugepage_limits().as_ref().unwrap()[0];
    assert_eq!((hp.page_size().as_str(), hp.limit()), ("2MB", 1 << 21));
    assert_eq!(res.unified().as_ref().unwrap()["memory.high"], "1000000");

    // Nothing set: no cpu or memory sections.
    *f.res() = Default::default();
    let spec = f.build().unwrap();
    let res = spec.linux().as_ref().unwrap().resources().clone().unwrap();
    assert!(res.cpu().is_none() && res.memory().is_none());
    // Unlimited quota is kept.
    f.res().cpu_quota = -1;
    let spec = f.build().unwrap();
    let res = spec.linux().as_ref().unwrap().resources().clone().unwrap();
    assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(-1));
}

#[test]
fn resource_validation_errors() {
    type Edit = fn(&mut cri::LinuxContainerResources);
    let cases: [(&str, Edit); 11] = [
        ("cpu_quota", |r| r.cpu_quota = -2),
        ("cpu_period", |r| r.cpu_period = 999),
        ("cpu_period", |r| r.cpu_period = 1_000_001),
        ("cpu_shares", |r| r.cpu_shares = -5),
        ("memory_limit_in_bytes", |r| {
            r.memory_limit_in_bytes = 1 << 20
        }),
        ("memory_limit_in_bytes", |r| r.memory_limit_in_bytes = -7),
        ("memory_swap_limit_in_bytes", |r| {
            r.memory_limit_in_bytes = 64 << 20;
            r.memory_swap_limit_in_bytes = 32 << 20;
        }),
        ("cpuset_cpus", |r| r.cpuset_cpus = "0-".into()),
        ("cpuset_cpus", |r| r.cpuset_cpus = "3-1".into()),
        ("cpuset_mems", |r| r.cpuset_mems = "a,b".into()),
        ("oom_score_adj", |r| r.oom_score_adj = 1001),
    ];
    for (field, edit) in cases {
        let mut f = Fixture::new();
        edit(f.res());
        let err = f.build().unwrap_err();
        assert!(
            matches!(err, SpecError::InvalidArgument(_)),
            "{field}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(field) && msg.contains("\"app\" (c1)"),
            "{field}: {msg}"
        );
    }
    assert!(
        valid_cpuset("0")
            && valid_cpuset("0-0,2,4-7")
            && !valid_cpuset("")
            && !valid_cpuset("1,,2")
    );
    assert!(!valid_cpuset(" 1") && !valid_cpuset("+1") && !valid_cpuset("1-2-3"));
}

// --- namespaces, process, misc -------------------------------------------------------------

fn ns_table(spec: &Spec) -> Vec<(String, Option<PathBuf>)> {
    spec.linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| (n.typ().to_string(), n.path().clone()))
        .collect()
}

#[test]
fn namespaces_with_pod_paths() {
    let mut f = Fixture::new();
    let cgroup = host_cgroup_v2().then(|| ("cgroup".to_string(), None));
    let with_cgroup = |mut v: Vec<(String, Option<PathBuf>)>| {
        v.extend(cgroup.clone());
        v
    };
    let spec = f.build().unwrap();
    assert_eq!(
        ns_table(&spec),
        with_cgroup(vec![
            ("pid".into(), None),
            ("net".into(), Some(f.path("pod/ns/net"))),
            ("ipc".into(), Some(f.path("pod/ns/ipc"))),
            ("uts".into(), Some(f.path("pod/ns/uts"))),
            ("mnt".into(), None),
        ])
    );
    assert_eq!(spec.hostname().as_deref(), Some("web-0"));

    // Host network/ipc/uts and a shared pid namespace.
    f.pod.netns = None;
    f.pod.ipcns = None;
    f.pod.utsns = None;
    f.pod.pidns = Some(f.path("pod/ns/pid"));
    let spec = f.build().unwrap();
    assert_eq!(
        ns_table(&spec),
        with_cgroup(vec![
            ("pid".into(), Some(f.path("pod/ns/pid"))),
            ("mnt".into(), None)
        ])
    );
    assert_eq!(spec.hostname(), &None);

    // The container's own option wins: CONTAINER = a new pid namespace.
    f.sc().namespace_options = Some(cri::NamespaceOption {
        pid: cri::NamespaceMode::Container as i32,
        ..Default::default()
    });
    assert_eq!(ns_table(&f.build().unwrap())[0], ("pid".into(), None));

    // Host pid.
    f.sc().namespace_options = None;
    f.pod.pidns = None;
    f.pod.host_pid = true;
    assert_eq!(ns_table(&f.build().unwrap())[0].0, "mnt");
}

#[test]
fn process_fields() {
    let mut f = Fixture::new();
    f.image.config.working_dir = Some("/srv".into());
    f.image.config.env = strs(&["A=1"]);
    f.config.tty = true;
    f.sc().no_new_privs = true;
    let spec = f.build().unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &strs(&["/bin/app"]));
    assert_eq!(p.cwd(), Path::new("/srv"));
    assert_eq!(p.terminal(), Some(true));
    assert_eq!(p.no_new_privileges(), Some(true));
    assert!(p.env().as_ref().unwrap().contains(&"A=1".to_string()));
    assert!(p.rlimits().is_none());
    assert_eq!(
        spec.root().as_ref().unwrap().path(),
        &f.path("bundle/rootfs")
    );
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));

    f.config.working_dir = "/work".into();
    assert_eq!(
        f.build().unwrap().process().as_ref().unwrap().cwd(),
        Path::new("/work")
    );
    f.config.working_dir = "rel".into();
    let msg = err_msg(f.build());
    assert!(msg.contains("working_dir"), "{msg}");
    f.config.working_dir.clear();
    f.image.config.working_dir = None;
    assert_eq!(
        f.build().unwrap().process().as_ref().unwrap().cwd(),
        Path::new("/")
    );
}

/// oci-spec's Default impls fill fields containerd leaves empty (ambient caps
/// AUDIT_WRITE/KILL/NET_BIND_SERVICE, no_new_privileges true, an rlimit NOFILE 1024):
/// none of them may leak into a container's spec.
#[test]
fn no_defaults_leak_from_oci_spec() {
    let f = Fixture::new();
    let spec = f.build().unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.no_new_privileges(), Some(false));
    assert!(p.rlimits().is_none());
    let caps = p.capabilities().as_ref().unwrap();
    assert!(caps.ambient().is_none(), "{caps:?}");
    assert!(caps.inheritable().is_none(), "{caps:?}");
    let want: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
    assert_eq!(caps.bounding().as_ref(), Some(&want));
    assert_eq!(caps.effective().as_ref(), Some(&want));
    assert_eq!(caps.permitted().as_ref(), Some(&want));
    assert!(p.apparmor_profile().is_none() && p.selinux_label().is_none());
    assert!(p.scheduler().is_none() && p.io_priority().is_none());
    let env = p.env().as_ref().unwrap();
    assert!(!env.iter().any(|e| e.starts_with("TERM=")), "{env:?}");
    assert_eq!(spec.hostname().as_deref(), Some("web-0"));
    let linux = spec.linux().as_ref().unwrap();
    assert!(linux.uid_mappings().is_none());
    assert!(linux.time_offsets().is_none() && linux.memory_policy().is_none());
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
    assert!(spec.hooks().is_none());
}

fn env_of(f: &Fixture) -> Vec<String> {
    f.build()
        .unwrap()
        .process()
        .as_ref()
        .unwrap()
        .env()
        .clone()
        .unwrap()
}

#[test]
fn home_from_passwd_unless_set() {
    let mut f = Fixture::new();
    f.with_users();
    // root, from /etc/passwd.
    assert!(env_of(&f).contains(&"HOME=/root".to_string()));
    f.image.config.user = Some("bob".into());
    assert!(env_of(&f).contains(&"HOME=/home/bob".to_string()));
    // A uid the image does not know: /.
    f.image.config.user = Some("4242".into());
    assert!(env_of(&f).contains(&"HOME=/".to_string()));
    // No passwd at all: /.
    f.layers.clear();
    f.image.config.user = None;
    assert!(env_of(&f).contains(&"HOME=/".to_string()));
    // The image's HOME, then CRI's, win; only one HOME.
    f.with_users();
    f.image.config.env = strs(&["HOME=/img"]);
    assert!(env_of(&f).contains(&"HOME=/img".to_string()));
    f.config.envs = vec![cri::KeyValue {
        key: "HOME".into(),
        value: "/cri".into(),
    }];
    let env = env_of(&f);
    assert!(env.contains(&"HOME=/cri".to_string()));
    assert_eq!(env.iter().filter(|e| e.starts_with("HOME=")).count(), 1);
}

#[test]
fn spec_serde_round_trip() {
    let mut f = Fixture::new();
    f.with_users();
    f.image.config.user = Some("alice".into());
    f.pod
        .sysctls
        .insert("kernel.shm_rmid_forced".into(), "1".into());
    f.res().memory_limit_in_bytes = 64 << 20;
    f.res().cpu_shares = 2;
    f.config.devices = vec![cri::Device {
        container_path: "/dev/zero2".into(),
        host_path: "/dev/zero".into(),
        permissions: "rwm".into(),
    }];
    let src = f.path("host/vol");
    f.config.mounts = vec![cri_mount(
        "/vol",
        &src,
        true,
        cri::MountPropagation::PropagationPrivate,
    )];
    let spec = f.build().unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    let back: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["ociVersion"], VERSION);
    assert_eq!(value["process"]["user"]["uid"], 1500);
    assert_eq!(value["linux"]["cgroupsPath"], "/kubepods/pod1/c1");
    assert!(value["process"]["capabilities"]["bounding"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("CAP_CHOWN")));
    assert_eq!(value["annotations"][ANNOTATION_SANDBOX_ID], "pod1");
}

#[test]
fn cgroup_path_helper() {
    assert_eq!(
        cgroup_path("/kubepods/burstable/pod1", "c1"),
        "/kubepods/burstable/pod1/c1"
    );
    assert_eq!(cgroup_path("/kubepods/", "c1"), "/kubepods/c1");
    assert_eq!(cgroup_path("kubepods", "c1"), "/kubepods/c1");
    assert_eq!(cgroup_path("", "c1"), "/cairn/c1");
}

#[test]
fn stop_signals() {
    let sig = |s: Option<&str>| {
        let mut img = ImageConfig::default();
        img.config.stop_signal = s.map(str::to_string);
        stop_signal(&img)
    };
    assert_eq!(sig(None).unwrap(), libc::SIGTERM);
    assert_eq!(sig(Some("SIGKILL")).unwrap(), libc::SIGKILL);
    assert_eq!(sig(Some("quit")).unwrap(), libc::SIGQUIT);
    assert_eq!(sig(Some("2")).unwrap(), 2);
    assert_eq!(sig(Some("SIGRTMIN+3")).unwrap(), libc::SIGRTMIN() + 3);
    assert!(sig(Some("SIGNOPE")).is_err());
    assert!(sig(Some("0")).is_err());
}

// --- seccomp, AppArmor, SELinux, sysctls, namespace options --------------------------------

fn seccomp_of(spec: &Spec) -> Option<oci_spec::runtime::LinuxSeccomp> {
    spec.linux().as_ref().unwrap().seccomp().clone()
}

fn profile(kind: cri::security_profile::ProfileType, r: &str) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: r.to_string(),
    })
}

#[test]
#[allow(deprecated)]
fn seccomp_profiles() {
    use cri::security_profile::ProfileType::*;
    let caps = |spec: &Spec| -> Capabilities {
        let p = spec.process().as_ref().unwrap();
        p.capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap()
    };
    // Nothing said: unconfined, as CRI defines it.
    let mut f = Fixture::new();
    let spec = f.build().unwrap();
    assert_eq!(seccomp_of(&spec), None);
    // RuntimeDefault: cairn's default for the container's capabilities.
    let want = cairn_kernel::seccomp::default_profile(&caps(&spec));
    f.sc().seccomp = profile(RuntimeDefault, "");
    assert_eq!(seccomp_of(&f.build().unwrap()), Some(want));
    // Capabilities shape it: CAP_SYS_ADMIN allows mount.
    f.sc().capabilities = Some(cri::Capability {
        add_capabilities: strs(&["SYS_ADMIN"]),
        ..Default::default()
    });
    let spec = f.build().unwrap();
    let names: Vec<String> = seccomp_of(&spec)
        .unwrap()
        .syscalls()
        .iter()
        .flatten()
        .flat_map(|s| s.names().clone())
        .collect();
    assert!(names.contains(&"mount".to_string()));
    f.sc().capabilities = None;
    // Unconfined, and privileged whatever it asks: none.
    f.sc().seccomp = profile(Unconfined, "");
    assert_eq!(seccomp_of(&f.build().unwrap()), None);
    f.sc().seccomp = profile(RuntimeDefault, "");
    f.sc().privileged = true;
    assert_eq!(seccomp_of(&f.build().unwrap()), None);
    f.sc().privileged = false;
    // Localhost: the file, read now.
    let file = f.path("profile.json");
    fs::write(
        &file,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let path = file.display().to_string();
    f.sc().seccomp = profile(Localhost, &path);
    let got = seccomp_of(&f.build().unwrap()).unwrap();
    assert_eq!(
        got.default_action(),
        oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
    );
    // The deprecated string field.
    f.sc().seccomp = None;
    f.sc().seccomp_profile_path = format!("localhost/{path}");
    assert_eq!(seccomp_of(&f.build().unwrap()), Some(got));
    f.sc().seccomp_profile_path = "unconfined".into();
    assert_eq!(seccomp_of(&f.build().unwrap()), None);
    f.sc().seccomp_profile_path = "runtime/default".into();
    assert!(seccomp_of(&f.build().unwrap()).is_some());

    // Bad requests: missing, malformed, relative, unsupported, unknown.
    fs::write(f.path("bad.json"), "{\"defaultAction\": ").unwrap();
    let bad = f.path("bad.json").display().to_string();
    let missing = f.path("missing.json").display().to_string();
    let cases: [(Option<cri::SecurityProfile>, &str, &str); 6] = [
        (profile(Localhost, &missing), "", "missing.json"),
        (profile(Localhost, &bad), "", "malformed"),
        (profile(Localhost, "rel.json"), "", "not an absolute path"),
        (profile(Localhost, ""), "", "localhost_ref"),
        (None, "localhost/", "seccomp_profile_path"),
        (None, "docker/strict", "docker/strict"),
    ];
    for (p, legacy, want) in cases {
        f.sc().seccomp = p;
        f.sc().seccomp_profile_path = legacy.into();
        let err = f.build().unwrap_err();
        assert!(matches!(err, SpecError::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains(want), "{want}: {err}");
        assert!(err.to_string().contains("(c1)"), "{err}");
    }
    f.sc().seccomp_profile_path.clear();
    fs::write(
        f.path("notify.json"),
        r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#,
    )
    .unwrap();
    f.sc().seccomp = profile(Localhost, &f.path("notify.json").display().to_string());
    assert!(err_msg(f.build()).contains("SCMP_ACT_NOTIFY"));
}

#[test]
#[allow(deprecated)]
fn apparmor_and_selinux() {
    use cri::security_profile::ProfileType::*;
    let mut f = Fixture::new();
    f.sc().apparmor = profile(RuntimeDefault, "");
    assert!(f
        .build()
        .unwrap()
        .process()
        .as_ref()
        .unwrap()
        .apparmor_profile()
        .is_none());
    f.sc().apparmor = profile(Unconfined, "");
    f.build().unwrap();
    f.sc().apparmor = profile(Localhost, "my-profile");
    let msg = err_msg(f.build());
    assert!(msg.contains("AppArmor profile \"my-profile\""), "{msg}");
    f.sc().apparmor = None;
    f.sc().apparmor_profile = "localhost/other".into();
    assert!(err_msg(f.build()).contains("\"other\""));
    f.sc().apparmor_profile = "runtime/default".into();
    f.build().unwrap();
    f.sc().apparmor_profile.clear();

    f.sc().selinux_options = Some(cri::SeLinuxOption::default());
    f.build().unwrap();
    f.sc().selinux_options = Some(cri::SeLinuxOption {
        r#type: "spc_t".into(),
        ..Default::default()
    });
    let err = f.build().unwrap_err();
    assert!(matches!(err, SpecError::InvalidArgument(_)));
    assert!(err.to_string().contains("SELinux") && err.to_string().contains("spc_t"));
}

fn sysctls(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn sysctl_validation() {
    let ok = sysctls(&[
        ("net.ipv4.ip_forward", "1"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("kernel.shm_rmid_forced", "1"),
        ("kernel.shmmax", "1000000"),
        ("kernel.msgmax", "8192"),
        ("kernel.sem", "250 32000 100 128"),
        ("fs.mqueue.msg_max", "10"),
    ]);
    validate_sysctls(&ok, false, false, "pod").unwrap();
    let cases = [
        ("kernel.hostname", false, false, "not namespaced"),
        ("vm.swappiness", false, false, "not namespaced"),
        ("kernel.panic", false, false, "not namespaced"),
        ("fs.file-max", false, false, "not namespaced"),
        ("kernel.semaphore", false, false, "not namespaced"),
        ("net.core.somaxconn", true, false, "hostNetwork"),
        ("kernel.shmall", false, true, "hostIPC"),
        ("fs.mqueue.queues_max", false, true, "hostIPC"),
        ("net..x", false, false, "not a valid name"),
        ("net/../../kernel/x", false, false, "not a valid name"),
    ];
    for (name, host_net, host_ipc, want) in cases {
        let err =
            validate_sysctls(&sysctls(&[(name, "1")]), host_net, host_ipc, "pod x").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SpecError::InvalidArgument(_)), "{msg}");
        assert!(msg.contains(name) && msg.contains(want), "{name}: {msg}");
    }
    let err = validate_sysctls(&sysctls(&[("net.x", "1\n2")]), false, false, "p");
    assert!(err.unwrap_err().to_string().contains("newline"));

    // At CreateContainer too, against the pod's namespaces.
    let mut f = Fixture::new();
    f.pod.sysctls = sysctls(&[("net.ipv4.ip_forward", "1")]);
    f.build().unwrap();
    f.pod.netns = None;
    assert!(err_msg(f.build()).contains("net.ipv4.ip_forward"));
    f.pod.sysctls = sysctls(&[("kernel.domainname", "x")]);
    assert!(err_msg(f.build()).contains("not namespaced"));
}

fn pod_config(
    ns: Option<cri::NamespaceOption>,
    sysctls: HashMap<String, String>,
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            namespace: "prod".into(),
            ..Default::default()
        }),
        linux: Some(cri::LinuxPodSandboxConfig {
            sysctls,
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: ns,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn sandbox_validation() {
    use cri::NamespaceMode::*;
    let ns = |network: cri::NamespaceMode, pid: cri::NamespaceMode, ipc: cri::NamespaceMode| {
        Some(cri::NamespaceOption {
            network: network as i32,
            pid: pid as i32,
            ipc: ipc as i32,
            ..Default::default()
        })
    };
    validate_sandbox(&cri::PodSandboxConfig::default()).unwrap();
    validate_sandbox(&pod_config(ns(Node, Node, Node), HashMap::new())).unwrap();
    validate_sandbox(&pod_config(ns(Pod, Container, Pod), HashMap::new())).unwrap();
    let bad = [
        (ns(Container, Pod, Pod), "network CONTAINER"),
        (ns(Pod, Target, Pod), "pid TARGET"),
        (ns(Pod, Pod, Target), "ipc TARGET"),
        (
            Some(cri::NamespaceOption {
                pid: 7,
                ..Default::default()
            }),
            "unknown mode 7",
        ),
        (
            Some(cri::NamespaceOption {
                target_id: "abc".into(),
                ..Default::default()
            }),
            "target_id",
        ),
        (
            Some(cri::NamespaceOption {
                userns_options: Some(userns(vec![idmap(100000, 0, 65536)], vec![])),
                ..Default::default()
            }),
            "gids is empty",
        ),
        (
            Some(cri::NamespaceOption {
                network: Node as i32,
                userns_options: Some(standard_userns()),
                ..Default::default()
            }),
            "network NODE cannot be combined with a user namespace",
        ),
        (
            Some(cri::NamespaceOption {
                pid: Node as i32,
                userns_options: Some(standard_userns()),
                ..Default::default()
            }),
            "pid NODE cannot be combined",
        ),
        (
            Some(cri::NamespaceOption {
                userns_options: Some(cri::UserNamespace {
                    mode: Container as i32,
                    ..standard_userns()
                }),
                ..Default::default()
            }),
            "mode CONTAINER is not supported",
        ),
    ];
    for (opts, want) in bad {
        let msg = err_msg(validate_sandbox(&pod_config(opts, HashMap::new())));
        assert!(
            msg.contains(want) && msg.contains("prod/web"),
            "{want}: {msg}"
        );
    }
    // Sysctls against the pod's namespace options.
    let net = sysctls(&[("net.ipv4.ip_forward", "1")]);
    validate_sandbox(&pod_config(None, net.clone())).unwrap();
    let msg = err_msg(validate_sandbox(&pod_config(ns(Node, Pod, Pod), net)));
    assert!(msg.contains("net.ipv4.ip_forward"), "{msg}");
    let msg = err_msg(validate_sandbox(&pod_config(
        None,
        sysctls(&[("kernel.msgmax", "1"), ("kernel.core_pattern", "x")]),
    )));
    assert!(msg.contains("kernel.core_pattern"), "{msg}");
    // The sandbox's own seccomp, AppArmor and SELinux requests.
    let mut config = pod_config(None, HashMap::new());
    let sc = config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    sc.seccomp = profile(
        cri::security_profile::ProfileType::Localhost,
        "/cairn/no/such/profile.json",
    );
    assert!(err_msg(validate_sandbox(&config)).contains("/cairn/no/such/profile.json"));
    let sc = config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    sc.seccomp = None;
    sc.apparmor = profile(cri::security_profile::ProfileType::Localhost, "x");
    assert!(err_msg(validate_sandbox(&config)).contains("AppArmor"));
}

#[test]
fn container_namespace_options() {
    use cri::NamespaceMode::*;
    let mut f = Fixture::new();
    let set = |f: &mut Fixture, o: cri::NamespaceOption| {
        f.sc().namespace_options = Some(o);
    };
    // The pod's own network/ipc, or NODE with a host-network pod.
    set(&mut f, cri::NamespaceOption::default());
    f.build().unwrap();
    let conflicts = [
        (
            cri::NamespaceOption {
                network: Node as i32,
                ..Default::default()
            },
            "network NODE conflicts",
        ),
        (
            cri::NamespaceOption {
                ipc: Node as i32,
                ..Default::default()
            },
            "ipc NODE conflicts",
        ),
        (
            cri::NamespaceOption {
                network: Container as i32,
                ..Default::default()
            },
            "network CONTAINER",
        ),
        (
            cri::NamespaceOption {
                pid: Target as i32,
                ..Default::default()
            },
            "TARGET needs a target_id",
        ),
        (
            cri::NamespaceOption {
                pid: Container as i32,
                target_id: "other".into(),
                ..Default::default()
            },
            "not TARGET",
        ),
        (
            cri::NamespaceOption {
                userns_options: Some(standard_userns()),
                ..Default::default()
            },
            "user namespaces are made per pod",
        ),
    ];
    for (o, want) in conflicts {
        set(&mut f, o);
        let err = f.build().unwrap_err();
        assert!(matches!(err, SpecError::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
    f.pod.netns = None;
    set(
        &mut f,
        cri::NamespaceOption {
            network: Node as i32,
            ..Default::default()
        },
    );
    f.build().unwrap();

    // TARGET: a placeholder the runtime points at the target's namespace.
    set(
        &mut f,
        cri::NamespaceOption {
            pid: Target as i32,
            target_id: "c0".into(),
            ..Default::default()
        },
    );
    assert_eq!(pid_target(&f.config), Some("c0"));
    let mut spec = f.build().unwrap();
    set_pid_namespace(&mut spec, PathBuf::from("/proc/42/ns/pid"));
    let table = ns_table(&spec);
    assert_eq!(
        table[0],
        ("pid".to_string(), Some(PathBuf::from("/proc/42/ns/pid")))
    );
    assert_eq!(table.iter().filter(|(t, _)| t == "pid").count(), 1);
    set(&mut f, cri::NamespaceOption::default());
    assert_eq!(pid_target(&f.config), None);
}

fn idmap(host_id: u32, container_id: u32, length: u32) -> cri::IdMapping {
    cri::IdMapping {
        host_id,
        container_id,
        length,
    }
}

fn userns(uids: Vec<cri::IdMapping>, gids: Vec<cri::IdMapping>) -> cri::UserNamespace {
    cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids,
        gids,
    }
}

/// kubelet's usual request: container ids 0..65536 on host ids 100000..165536.
fn standard_userns() -> cri::UserNamespace {
    userns(vec![idmap(100000, 0, 65536)], vec![idmap(100000, 0, 65536)])
}

#[test]
fn id_mapping_validation() {
    let check = |maps: Vec<cri::IdMapping>| check_id_mappings(&maps, "uids", "pod");
    check(vec![idmap(100000, 0, 65536)]).unwrap();
    // Several ranges, in any order, none overlapping on either side.
    check(vec![idmap(300000, 1000, 10), idmap(100000, 0, 1000)]).unwrap();
    check(vec![idmap(0, 0, u32::MAX)]).unwrap();
    let bad = [
        (vec![], "is empty"),
        (vec![idmap(100000, 0, 0)], "length must be above 0"),
        (vec![idmap(100000, 1, 65535)], "does not map container id 0"),
        (vec![idmap(u32::MAX - 5, 0, 10)], "runs past the largest id"),
        (vec![idmap(0, 1, u32::MAX)], "runs past the largest id"),
        (
            vec![idmap(100000, 0, 65536), idmap(300000, 65535, 10)],
            "overlap on the container side",
        ),
        (
            vec![idmap(100000, 0, 1000), idmap(100500, 5000, 10)],
            "overlap on the host side",
        ),
        (
            vec![idmap(1, 0, 1); MAX_ID_MAPPINGS + 1],
            "entries, at most",
        ),
    ];
    for (maps, want) in bad {
        let msg = err_msg(check(maps.clone()));
        assert!(
            msg.contains(want) && msg.contains("uids"),
            "{maps:?}: {msg}"
        );
    }
    assert_eq!(host_id_of(&[idmap(100000, 0, 10)], 9), Some(100009));
    assert_eq!(host_id_of(&[idmap(100000, 0, 10)], 10), None);
}

#[test]
fn sandbox_with_user_namespace() {
    let ns = |u: cri::UserNamespace| {
        Some(cri::NamespaceOption {
            userns_options: Some(u),
            ..Default::default()
        })
    };
    let config = pod_config(ns(standard_userns()), HashMap::new());
    validate_sandbox(&config).unwrap();
    assert_eq!(requested_userns(&config), Some(&standard_userns()));
    // Mode NODE: the host's user namespace, as without options.
    let node = cri::UserNamespace {
        mode: cri::NamespaceMode::Node as i32,
        ..Default::default()
    };
    let config = pod_config(ns(node), HashMap::new());
    validate_sandbox(&config).unwrap();
    assert_eq!(requested_userns(&config), None);
    let overlapping = userns(
        vec![idmap(100000, 0, 65536), idmap(200000, 10, 1)],
        vec![idmap(100000, 0, 65536)],
    );
    let msg = err_msg(validate_sandbox(&pod_config(
        ns(overlapping),
        HashMap::new(),
    )));
    assert!(msg.contains("overlap") && msg.contains("prod/web"), "{msg}");
}

#[test]
fn containers_in_a_pod_user_namespace() {
    use cri::NamespaceMode::*;
    let mut f = Fixture::new();
    let u = standard_userns();
    f.pod.userns = Some(PodUserns {
        path: f.path("pod/ns/user"),
        uids: u.uids.clone(),
        gids: u.gids.clone(),
    });
    // Without options (the pod's), or with the pod's own.
    let spec = f.build().unwrap();
    let table = ns_table(&spec);
    assert_eq!(table[0], ("user".to_string(), Some(f.path("pod/ns/user"))));
    let linux = spec.linux().as_ref().unwrap();
    for maps in [linux.uid_mappings(), linux.gid_mappings()] {
        let maps = maps.as_ref().unwrap();
        assert_eq!(maps.len(), 1);
        let m = &maps[0];
        assert_eq!(
            (m.container_id(), m.host_id(), m.size()),
            (0, 100000, 65536)
        );
    }
    f.sc().namespace_options = Some(cri::NamespaceOption {
        userns_options: Some(u.clone()),
        ..Default::default()
    });
    f.build().unwrap();
    let cases = [
        (
            cri::NamespaceOption {
                userns_options: Some(userns(vec![idmap(200000, 0, 65536)], u.gids.clone())),
                ..Default::default()
            },
            "differ from the pod's",
        ),
        (
            cri::NamespaceOption {
                userns_options: Some(cri::UserNamespace {
                    mode: Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
            "NODE conflicts with the pod",
        ),
        (
            cri::NamespaceOption {
                pid: Node as i32,
                userns_options: Some(u.clone()),
                ..Default::default()
            },
            "pid NODE conflicts with the pod's user namespace",
        ),
        (
            cri::NamespaceOption {
                userns_options: Some(userns(
                    vec![idmap(100000, 0, 65536), idmap(100000, 1, 1)],
                    u.gids.clone(),
                )),
                ..Default::default()
            },
            "overlap",
        ),
    ];
    for (o, want) in cases {
        f.sc().namespace_options = Some(o);
        let err = f.build().unwrap_err();
        assert!(matches!(err, SpecError::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
    // No user namespace: no mappings in the spec.
    f.pod.userns = None;
    f.sc().namespace_options = None;
    let spec = f.build().unwrap();
    assert!(spec.linux().as_ref().unwrap().uid_mappings().is_none());
    assert!(ns_table(&spec).iter().all(|(t, _)| t != "user"));
}

#[test]
fn recursive_read_only_needs_private_propagation() {
    let mut f = Fixture::new();
    let src = f.path("host/ro");
    let mut m = cri_mount("/ro", &src, true, cri::MountPropagation::PropagationPrivate);
    m.recursive_read_only = true;
    f.config.mounts = vec![m.clone()];
    let spec = f.build().unwrap();
    let mount = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/ro"))
        .unwrap()
        .clone();
    assert!(mount
        .options()
        .as_ref()
        .unwrap()
        .contains(&"rro".to_string()));
    m.propagation = cri::MountPropagation::PropagationHostToContainer as i32;
    f.config.mounts = vec![m];
    assert!(err_msg(f.build()).contains("private propagation"));
}
