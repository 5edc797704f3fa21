//! Unit tests of cgroups: layouts, plans, writes against a fake tree, real cgroups.

use super::*;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
    LinuxResourcesBuilder,
};
use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const MIB: i64 = 1 << 20;

/// This machine's cgroup mounts (hybrid: v1 hierarchies plus an empty cgroup2).
const HYBRID: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

/// A systemd node on pure cgroup v2.
const PURE_V2: &str = "\
21 26 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 21 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
31 21 0:27 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
";

/// An older v1-only node with co-mounted controllers.
const V1_ONLY: &str = "\
24 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 24 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
29 24 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
30 24 0:28 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,net_cls,net_prio
31 24 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
32 24 0:30 / /sys/fs/cgroup/hugetlb rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,hugetlb
33 24 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
";

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn unique_name() -> String {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!("cairn-test-{}-{n}", std::process::id())
}

/// Kills the test's processes and deletes its cgroup, also when the test fails.
struct Guard {
    cgroup: Cgroup,
    children: Vec<Child>,
}

impl Guard {
    fn new(cgroup: &Cgroup) -> Guard {
        Guard {
            cgroup: cgroup.clone(),
            children: Vec::new(),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.cgroup.kill_all();
        if let Err(err) = self.cgroup.delete() {
            eprintln!("cleanup: {err}");
        }
    }
}

/// Disables again the controllers a test enabled in a v2 root's subtree_control.
struct SubtreeRestore {
    control: PathBuf,
    before: BTreeSet<String>,
}

impl SubtreeRestore {
    fn new(root: &Path) -> SubtreeRestore {
        let control = root.join("cgroup.subtree_control");
        let before = words(&fs::read_to_string(&control).unwrap_or_default());
        SubtreeRestore { control, before }
    }
}

impl Drop for SubtreeRestore {
    fn drop(&mut self) {
        let now = words(&fs::read_to_string(&self.control).unwrap_or_default());
        for added in now.difference(&self.before) {
            let _ = fs::write(&self.control, format!("-{added}"));
        }
    }
}

fn words(text: &str) -> BTreeSet<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// Starts `script` under busybox sh, held at a `read` until [`release`], so that it
/// can be put into a cgroup before it allocates or forks anything.
fn spawn_held(script: &str) -> Child {
    Command::new("/bin/busybox")
        .args(["sh", "-c", &format!("read go; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn release(child: &mut Child) {
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// This machine's layout when it is v1 (or hybrid) with the hierarchies the tests use.
fn v1_layout() -> Layout {
    let layout = Layout::detect().expect("a cgroup filesystem is mounted");
    let needed = ["cpu", "cpuacct", "cpuset", "memory", "pids", "freezer"];
    let ok = is_root() && needed.iter().all(|c| layout.v1_mount(c).is_some());
    assert!(
        ok,
        "this test needs root and the cgroup v1 hierarchies {needed:?} (a v1 or hybrid host)"
    );
    layout
}

fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path).unwrap().trim().to_string()
}

fn assert_gone(cgroup: &Cgroup) {
    for dir in cgroup.dirs() {
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20));
    }
}

// ---- layout -------------------------------------------------------------------------

#[test]
fn detects_this_machines_hybrid_layout() {
    let layout = Layout::detect_from(HYBRID).unwrap();
    assert!(!layout.is_v2());
    assert!(layout.is_hybrid());
    assert_eq!(layout.unified(), Some(Path::new("/sys/fs/cgroup/unified")));
    let Layout::V1 { mounts, .. } = &layout else {
        panic!("expected v1, got {layout:?}");
    };
    let names: Vec<&str> = mounts.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "blkio",
            "cpu",
            "cpuacct",
            "cpuset",
            "devices",
            "freezer",
            "memory",
            "name=systemd",
            "pids"
        ]
    );
    assert_eq!(
        layout.v1_mount("cpu"),
        Some(Path::new("/sys/fs/cgroup/cpu"))
    );
    assert_eq!(layout.v1_mount("hugetlb"), None);
    // Nine v1 hierarchies and the cgroup2 one.
    assert_eq!(layout.hierarchy_roots().len(), 10);
}

#[test]
fn detects_pure_v2() {
    let layout = Layout::detect_from(PURE_V2).unwrap();
    assert_eq!(
        layout,
        Layout::V2 {
            root: PathBuf::from("/sys/fs/cgroup")
        }
    );
    assert!(layout.is_v2());
    assert!(!layout.is_hybrid());
}

#[test]
fn detects_v1_only_with_comounted_controllers() {
    let layout = Layout::detect_from(V1_ONLY).unwrap();
    assert!(!layout.is_v2());
    assert!(!layout.is_hybrid());
    let comounted = Path::new("/sys/fs/cgroup/cpu,cpuacct");
    assert_eq!(layout.v1_mount("cpu"), Some(comounted));
    assert_eq!(layout.v1_mount("cpuacct"), Some(comounted));
    assert_eq!(
        layout.v1_mount("net_prio"),
        Some(Path::new("/sys/fs/cgroup/net_cls,net_prio"))
    );
    assert_eq!(
        layout.v1_mount("name=systemd"),
        Some(Path::new("/sys/fs/cgroup/systemd"))
    );
    // Six distinct hierarchies; "xattr" and "rw" are not controllers.
    assert_eq!(layout.hierarchy_roots().len(), 6);
    assert!(layout.v1_mount("xattr").is_none());
}

#[test]
fn detect_edge_cases() {
    assert!(matches!(
        Layout::detect_from("27 1 254:0 / / rw - ext4 /dev/vda rw\n"),
        Err(CgroupError::NotMounted { .. })
    ));
    // cgroup2 somewhere else and no v1: v2 rooted there.
    let elsewhere = "41 31 0:38 / /run/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
    assert_eq!(
        Layout::detect_from(elsewhere).unwrap(),
        Layout::V2 {
            root: PathBuf::from("/run/my cgroup")
        }
    );
    // /sys/fs/cgroup overmounted by cgroup2 after a tmpfs: the last mount wins.
    let over = format!("{HYBRID}50 23 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
    assert!(Layout::detect_from(&over).unwrap().is_v2());
    assert!(Layout::detect().is_ok());
}

// ---- paths and plans ----------------------------------------------------------------

#[test]
fn cgroup_paths_are_validated() {
    let layout = Layout::detect_from(PURE_V2).unwrap();
    let ok = Cgroup::new(&layout, "kubepods/besteffort/pod1/abc").unwrap();
    assert_eq!(ok.path(), Path::new("kubepods/besteffort/pod1/abc"));
    assert_eq!(
        ok.v2_dir(),
        Some(PathBuf::from("/sys/fs/cgroup/kubepods/besteffort/pod1/abc"))
    );
    // kubelet's cgroupfs parents start with '/': same place.
    let slash = Cgroup::new(&layout, "/kubepods/pod1").unwrap();
    assert_eq!(slash.path(), Path::new("kubepods/pod1"));
    assert_eq!(
        slash.child("c1").unwrap().path(),
        Path::new("kubepods/pod1/c1")
    );
    for bad in [
        "", "/", "//etc", "a//b", "a/", "../x", "a/../b", "a/./b", "a\0b",
    ] {
        assert!(
            matches!(
                Cgroup::new(&layout, bad),
                Err(CgroupError::InvalidPath { .. })
            ),
            "{bad:?} accepted"
        );
    }
    assert!(slash.child("a/b").is_err());
    assert!(slash.child("..").is_err());
    let v1 = Layout::detect_from(HYBRID).unwrap();
    assert_eq!(Cgroup::new(&v1, "x").unwrap().v2_dir(), None);
}

#[test]
fn shares_convert_to_weight() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1), 1);
    assert_eq!(shares_to_weight(512), 20);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(shares_to_weight(1 << 40), 10_000);
}

#[test]
fn v2_cpu_max_and_swap_values() {
    assert_eq!(v2_cpu_max(None, None), None);
    assert_eq!(v2_cpu_max(Some(0), Some(0)), None);
    assert_eq!(
        v2_cpu_max(Some(50_000), Some(100_000)).unwrap(),
        "50000 100000"
    );
    assert_eq!(v2_cpu_max(Some(-1), Some(100_000)).unwrap(), "max 100000");
    assert_eq!(v2_cpu_max(Some(20_000), None).unwrap(), "20000 100000");
    assert_eq!(v2_cpu_max(None, Some(50_000)).unwrap(), "max 50000");

    assert_eq!(v2_swap_max(Some(64), None).unwrap(), None);
    assert_eq!(v2_swap_max(Some(64), Some(0)).unwrap(), None);
    assert_eq!(v2_swap_max(Some(64), Some(-1)).unwrap().unwrap(), "max");
    assert_eq!(v2_swap_max(Some(64), Some(64)).unwrap().unwrap(), "0");
    assert_eq!(v2_swap_max(Some(64), Some(100)).unwrap().unwrap(), "36");
    assert!(v2_swap_max(Some(64), Some(32)).is_err());
    assert!(v2_swap_max(None, Some(32)).is_err());
    assert!(v2_swap_max(Some(-1), Some(32)).is_err());
}

#[test]
fn v1_plan_orders_pairs_and_rejects_unified() {
    let r = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(-1i64)
                .period(100_000u64)
                .build()
                .unwrap(),
        )
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 * MIB)
                .swap(128 * MIB)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(0i64).build().unwrap())
        .build()
        .unwrap();
    let steps = plan_v1(&r).unwrap();
    assert_eq!(steps[0], Step::One(setting("cpu", "cpu.shares", 512)));
    assert_eq!(
        steps[1],
        Step::EitherOrder(
            setting("cpu", "cpu.cfs_period_us", 100_000),
            setting("cpu", "cpu.cfs_quota_us", -1)
        )
    );
    assert_eq!(
        steps[2],
        Step::EitherOrder(
            setting("memory", "memory.limit_in_bytes", 64 * MIB),
            optional(setting("memory", "memory.memsw.limit_in_bytes", 128 * MIB))
        )
    );
    assert_eq!(steps[3], Step::One(setting("pids", "pids.max", "max")));
    assert_eq!(steps.len(), 4);

    let mut bad = r.clone();
    bad.set_unified(Some(HashMap::from([(
        "memory.high".to_string(),
        "1".to_string(),
    )])));
    assert!(plan_v1(&bad).is_err());
    let mut below = r;
    below.set_memory(Some(
        LinuxMemoryBuilder::default()
            .limit(64 * MIB)
            .swap(32 * MIB)
            .build()
            .unwrap(),
    ));
    assert!(plan_v1(&below)
        .unwrap_err()
        .contains("below the memory limit"));
}

#[test]
fn unified_keys_and_page_sizes_are_validated() {
    assert_eq!(validate_unified_key("memory.high").unwrap(), "memory");
    assert_eq!(validate_unified_key("cgroup.freeze").unwrap(), "cgroup");
    assert_eq!(validate_unified_key("foo.bar").unwrap(), "unified");
    for bad in [
        "",
        "memory",
        ".high",
        "memory.",
        "../memory.max",
        "a/b.c",
        "memory..x",
    ] {
        assert!(validate_unified_key(bad).is_err(), "{bad:?} accepted");
    }
    assert!(is_valid_page_size("2MB"));
    assert!(is_valid_page_size("1GB"));
    assert!(is_valid_page_size("64KB"));
    for bad in ["", "MB", "2", "2mb", "2MB/x", "../2MB", "2TB"] {
        assert!(!is_valid_page_size(bad), "{bad:?} accepted");
    }
}

#[test]
fn keyed_files_parse() {
    let parsed = parse_keyed("usage_usec 10\nuser_usec 7\nbogus\nname notanumber\n");
    assert_eq!(parsed.get("usage_usec"), Some(&10));
    assert_eq!(parsed.get("user_usec"), Some(&7));
    assert_eq!(parsed.len(), 2);
}

#[test]
fn oom_score_adj_is_clamped() {
    assert_eq!(clamp_oom_score_adj_to(-998, -999), -998);
    assert_eq!(clamp_oom_score_adj_to(-1000, -999), -999);
    assert_eq!(clamp_oom_score_adj_to(-997, 0), 0);
    assert_eq!(clamp_oom_score_adj_to(1000, 0), 1000);
    assert_eq!(clamp_oom_score_adj_to(5000, 0), 1000);
    assert_eq!(clamp_oom_score_adj_to(-5000, -1000), -1000);
    assert_eq!(
        cap_eff("Name:\tx\nCapEff:\t000001fffeffffff\n"),
        Some(0x1ff_feff_ffff)
    );
    assert_eq!(cap_eff("Name:\tx\n"), None);
    // This VM: no CAP_SYS_RESOURCE, own score 0 (or whatever it is): never below own.
    let own = own_oom_score_adj().unwrap();
    if !has_cap_sys_resource() {
        assert_eq!(clamp_oom_score_adj(-999), own.max(-999));
    }
    assert_eq!(clamp_oom_score_adj(1000), 1000);
}

#[test]
fn set_oom_score_adj_on_a_child() {
    let mut child = Command::new("/bin/busybox")
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let result = set_oom_score_adj(pid, 500);
    let read = fs::read_to_string(format!("/proc/{pid}/oom_score_adj"));
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap();
    assert_eq!(read.unwrap().trim(), "500");
}

// ---- v2 writes against a fake tree --------------------------------------------------

#[test]
fn v2_resources_are_written_to_the_right_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma\n",
    )
    .unwrap();
    fs::write(root.join("cgroup.subtree_control"), "").unwrap();
    let layout = Layout::V2 {
        root: root.to_path_buf(),
    };
    let cg = Cgroup::new(&layout, "kubepods/pod1/ctr1").unwrap();
    cg.create().unwrap();
    let dir = cg.v2_dir().unwrap();
    assert!(dir.is_dir());
    assert_eq!(
        read_trimmed(&root.join("cgroup.subtree_control")),
        "+cpuset +cpu +io +memory +hugetlb +pids"
    );
    let files = [
        "cpu.weight",
        "cpu.max",
        "memory.max",
        "memory.swap.max",
        "memory.high",
        "pids.max",
        "cpuset.cpus",
        "cpuset.mems",
        "hugetlb.2MB.max",
    ];
    for file in files {
        fs::write(dir.join(file), "").unwrap();
    }
    let read = |file: &str| read_trimmed(&dir.join(file));

    let r = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0-1")
                .mems("0")
                .build()
                .unwrap(),
        )
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 * MIB)
                .swap(96 * MIB)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(20i64).build().unwrap())
        .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
            .page_size("2MB")
            .limit(4 * MIB)
            .build()
            .unwrap()])
        .unified(HashMap::from([(
            "memory.high".to_string(),
            "50000000".to_string(),
        )]))
        .build()
        .unwrap();
    cg.apply(&r).unwrap();
    assert_eq!(read("cpu.weight"), "20");
    assert_eq!(read("cpu.max"), "50000 100000");
    assert_eq!(read("memory.max"), (64 * MIB).to_string());
    assert_eq!(read("memory.swap.max"), (32 * MIB).to_string());
    assert_eq!(read("memory.high"), "50000000");
    assert_eq!(read("pids.max"), "20");
    assert_eq!(read("cpuset.cpus"), "0-1");
    assert_eq!(read("cpuset.mems"), "0");
    assert_eq!(read("hugetlb.2MB.max"), (4 * MIB).to_string());

    // Update: lift the limits.
    let lifted = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .quota(-1i64)
                .period(100_000u64)
                .build()
                .unwrap(),
        )
        .memory(
            LinuxMemoryBuilder::default()
                .limit(-1i64)
                .swap(-1i64)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(-1i64).build().unwrap())
        .build()
        .unwrap();
    cg.apply(&lifted).unwrap();
    assert_eq!(read("cpu.max"), "max 100000");
    assert_eq!(read("memory.max"), "max");
    assert_eq!(read("memory.swap.max"), "max");
    assert_eq!(read("pids.max"), "max");

    // A hugepage size whose file is absent: a clear error naming controller and file.
    let gigantic = LinuxResourcesBuilder::default()
        .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
            .page_size("1GB")
            .limit(1i64 << 30)
            .build()
            .unwrap()])
        .build()
        .unwrap();
    let err = cg.apply(&gigantic).unwrap_err();
    assert!(
        matches!(err, CgroupError::ControllerMissing { .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("hugetlb.1GB.max") && message.contains("kubepods/pod1/ctr1"));
    // No hugetlb controller for this cgroup at all: skipped, as runc does.
    fs::write(
        dir.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    cg.apply(&gigantic).unwrap();

    // Unified keys may not leave the directory.
    for key in ["../memory.max", "memory/../../x.max"] {
        let escape = LinuxResourcesBuilder::default()
            .unified(HashMap::from([(key.to_string(), "1".to_string())]))
            .build()
            .unwrap();
        assert!(matches!(
            cg.apply(&escape),
            Err(CgroupError::Invalid { .. })
        ));
    }
    // Swap without a memory limit is refused on v2.
    let swap_only = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().swap(MIB).build().unwrap())
        .build()
        .unwrap();
    assert!(matches!(
        cg.apply(&swap_only),
        Err(CgroupError::Invalid { .. })
    ));

    // A cgroup that was never created.
    let missing = Cgroup::new(&layout, "kubepods/pod1/nope").unwrap();
    assert!(matches!(
        missing.apply(&r),
        Err(CgroupError::NotFound { .. })
    ));
    assert!(!missing.exists());
}

#[test]
fn v2_stats_are_read_from_a_fake_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::V2 {
        root: tmp.path().to_path_buf(),
    };
    let cg = Cgroup::new(&layout, "pod/ctr").unwrap();
    cg.create().unwrap();
    let dir = cg.v2_dir().unwrap();
    let put = |file: &str, text: &str| fs::write(dir.join(file), text).unwrap();
    put("cgroup.procs", "");
    put(
        "cpu.stat",
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n",
    );
    put("memory.current", "10000\n");
    put("memory.max", "max\n");
    put(
        "memory.stat",
        "anon 4000\nfile 6000\ninactive_file 2500\npgfault 77\npgmajfault 3\n",
    );
    put("memory.events", "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n");
    put("pids.current", "4\n");
    let st = cg.stats().unwrap();
    assert_eq!(st.cpu_usage_ns, 1_500_000);
    assert_eq!(st.cpu_user_ns, 1_000_000);
    assert_eq!(st.cpu_system_ns, 500_000);
    assert_eq!(st.memory_usage, 10_000);
    assert_eq!(st.memory_working_set, 7_500);
    assert_eq!(st.memory_rss, 4_000);
    assert_eq!(st.page_faults, 77);
    assert_eq!(st.major_page_faults, 3);
    assert_eq!(st.pids, 4);
    assert_eq!(st.memory_limit, None);
    assert_eq!(cg.oom_kills().unwrap(), 2);

    // Working set floors at 0; a numeric limit is reported.
    put("memory.stat", "inactive_file 20000\n");
    put("memory.max", "67108864\n");
    let st = cg.stats().unwrap();
    assert_eq!(st.memory_working_set, 0);
    assert_eq!(st.memory_limit, Some(64 << 20));

    put("pids.current", "many\n");
    assert!(matches!(cg.stats(), Err(CgroupError::Parse { .. })));
}

// ---- real cgroups on this machine ---------------------------------------------------

#[test]
fn v1_create_apply_stats_update_kill_delete() {
    let layout = v1_layout();
    let cg = Cgroup::new(&layout, &unique_name()).unwrap();
    let mut guard = Guard::new(&cg);
    cg.create().unwrap();
    assert!(cg.exists());
    for dir in cg.dirs() {
        assert!(dir.is_dir(), "{} not created", dir.display());
    }
    if let Some(dir) = cg.device_dir() {
        assert!(
            dir.is_dir(),
            "{} (hybrid cgroup2) not created",
            dir.display()
        );
        assert!(cg.join_dirs().contains(&dir));
    }
    let file = |controller: &str, name: &str| cg.controller_dir(controller).unwrap().join(name);
    let read = |controller: &str, name: &str| read_trimmed(&file(controller, name));
    assert!(!read("cpuset", "cpuset.cpus").is_empty());
    assert!(!read("cpuset", "cpuset.mems").is_empty());

    let r = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0")
                .build()
                .unwrap(),
        )
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 * MIB)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(20i64).build().unwrap())
        .build()
        .unwrap();
    cg.apply(&r).unwrap();
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64 * MIB).to_string()
    );
    assert_eq!(read("pids", "pids.max"), "20");
    assert_eq!(read("cpuset", "cpuset.cpus"), "0");

    // A hugepage limit on a node without the hugetlb hierarchy is skipped (kubelet
    // sends one for every container), the other limits applied.
    if layout.v1_mount("hugetlb").is_none() {
        let huge = LinuxResourcesBuilder::default()
            .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
                .page_size("2MB")
                .limit(0)
                .build()
                .unwrap()])
            .pids(LinuxPidsBuilder::default().limit(21).build().unwrap())
            .build()
            .unwrap();
        cg.apply(&huge).unwrap();
        assert_eq!(read("pids", "pids.max"), "21");
    }

    guard.children.push(spawn_held("exec sleep 30"));
    let pid = guard.children[0].id() as i32;
    cg.add_process(pid).unwrap();
    release(&mut guard.children[0]);
    assert!(cg.procs().unwrap().contains(&pid));
    let stats = wait_for("memory to be charged", || {
        let st = cg.stats().unwrap();
        (st.memory_usage > 0).then_some(st)
    });
    assert!(stats.pids >= 1, "{stats:?}");
    assert_eq!(stats.memory_limit, Some(64 << 20));
    assert!(stats.memory_working_set <= stats.memory_usage);
    assert_eq!(cg.oom_kills().unwrap(), 0);

    // UpdateContainerResources: raise memory (and memory+swap, which must go first).
    let memsw = file("memory", "memory.memsw.limit_in_bytes");
    let update = |limit: i64, swap: i64| {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(limit)
                    .swap(swap)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        cg.apply(&r).unwrap();
        assert_eq!(read("memory", "memory.limit_in_bytes"), limit.to_string());
        if memsw.exists() {
            assert_eq!(read_trimmed(&memsw), swap.to_string());
        }
    };
    update(128 * MIB, 256 * MIB);
    update(512 * MIB, 512 * MIB);
    update(96 * MIB, 96 * MIB);
    assert_eq!(cg.stats().unwrap().memory_limit, Some(96 << 20));

    cg.kill_all().unwrap();
    assert!(cg.procs().unwrap().is_empty());
    let status = guard.children[0].wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    cg.delete().unwrap();
    assert!(!cg.exists());
    cg.delete().unwrap(); // idempotent
    cg.kill_all().unwrap();
    assert!(matches!(cg.procs(), Err(CgroupError::NotFound { .. })));
    drop(guard);
    assert_gone(&cg);
}

#[test]
fn v1_pids_limit_is_enforced() {
    let layout = v1_layout();
    let cg = Cgroup::new(&layout, &unique_name()).unwrap();
    let mut guard = Guard::new(&cg);
    cg.create().unwrap();
    let r = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(3i64).build().unwrap())
        .build()
        .unwrap();
    cg.apply(&r).unwrap();
    guard.children.push(spawn_held(
        "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait",
    ));
    let pid = guard.children[0].id() as i32;
    cg.add_process(pid).unwrap();
    release(&mut guard.children[0]);

    let pids_dir = cg.controller_dir("pids").unwrap();
    let mut most = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let n = cg.procs().unwrap().len();
        assert!(n <= 3, "{n} processes in a cgroup with pids.max=3");
        most = most.max(n);
        sleep(Duration::from_millis(20));
    }
    assert!(most >= 1);
    let events = parse_keyed(&fs::read_to_string(pids_dir.join("pids.events")).unwrap());
    assert!(
        events.get("max").copied().unwrap_or(0) > 0,
        "no fork was refused: {events:?}"
    );
    assert!(cg.stats().unwrap().pids <= 3);

    cg.kill_all().unwrap();
    assert!(cg.procs().unwrap().is_empty());
    cg.delete().unwrap();
    drop(guard);
    assert_gone(&cg);
}

#[test]
fn v1_delete_removes_children_deepest_first() {
    let layout = v1_layout();
    let top = Cgroup::new(&layout, &unique_name()).unwrap();
    let guard = Guard::new(&top);
    let leaf = top.child("pod").unwrap().child("ctr").unwrap();
    leaf.create().unwrap();
    assert!(leaf.exists());
    // cpuset filled at every level.
    let cpuset_leaf = leaf.controller_dir("cpuset").unwrap();
    assert!(!read_trimmed(&cpuset_leaf.join("cpuset.cpus")).is_empty());
    top.delete().unwrap();
    assert!(!leaf.exists());
    drop(guard);
    assert_gone(&top);
}

#[test]
fn v2_unified_create_add_kill_delete() {
    let layout = Layout::detect().ok();
    let root = match &layout {
        Some(
            l @ Layout::V1 {
                unified: Some(_), ..
            },
        ) if is_root() => l.unified().unwrap().to_path_buf(),
        _ => panic!("this test needs root and a hybrid cgroup layout"),
    };
    let v2 = Layout::V2 { root: root.clone() };
    let _restore = SubtreeRestore::new(&root);
    let top = Cgroup::new(&v2, &unique_name()).unwrap();
    let mut guard = Guard::new(&top);
    let cg = top.child("ctr").unwrap();
    cg.create().unwrap();
    assert!(cg.exists());
    assert_eq!(cg.v2_dir(), Some(root.join(cg.path())));

    // The signal loop (the path for kernels without cgroup.kill).
    guard.children.push(spawn_held("exec sleep 30"));
    let first = guard.children[0].id() as i32;
    cg.add_process(first).unwrap();
    release(&mut guard.children[0]);
    assert_eq!(cg.procs().unwrap(), vec![first]);
    assert!(top.procs().unwrap().is_empty());
    let st = top.stats().unwrap();
    assert_eq!(st.pids, 1, "{st:?}");
    cg.signal_until_empty().unwrap();
    assert_eq!(
        guard.children[0].wait().unwrap().signal(),
        Some(libc::SIGKILL)
    );

    // cgroup.kill, through the parent.
    guard.children.push(spawn_held("exec sleep 30"));
    guard.children.push(spawn_held("exec sleep 30"));
    for child in &mut guard.children[1..] {
        cg.add_process(child.id() as i32).unwrap();
        release(child);
    }
    assert_eq!(cg.procs().unwrap().len(), 2);
    assert_eq!(cg.oom_kills().unwrap(), 0);
    top.kill_all().unwrap();
    assert!(cg.procs().unwrap().is_empty());
    for child in &mut guard.children[1..] {
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    top.delete().unwrap();
    assert!(!cg.exists());
    assert!(!top.exists());
    top.delete().unwrap();
    drop(guard);
    assert_gone(&top);
}

#[test]
fn add_process_refuses_non_positive_pids() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::V2 {
        root: tmp.path().to_path_buf(),
    };
    let cg = Cgroup::new(&layout, "x").unwrap();
    cg.create().unwrap();
    assert!(matches!(
        cg.add_process(0),
        Err(CgroupError::Invalid { .. })
    ));
    assert!(matches!(
        cg.add_process(-1),
        Err(CgroupError::Invalid { .. })
    ));
}
