//! The isolation a container gets, proven by trying to break it through the real cairnd:
//! a default container must fail every escape attempt (host processes, mounts, /proc/sys,
//! /sys, kernel modules, devices, the host's hostname and clock, ptrace, cairnd's socket
//! and state, another pod's files, system calls the default seccomp profile denies), the
//! security context must be honoured (no_new_privs against a setuid binary, privileged,
//! capabilities, seccomp profiles, read-only mounts, sysctls, pid TARGET), and bad security
//! input must be refused with InvalidArgument leaving nothing behind.
//!
//! The checks run as ExecSyncs in a few long-lived containers, with a small static C probe
//! (built here with `cc -static`) that prints the errno of each system call it tries.

mod pods_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cairn_proto::cri;
use cairn_tests::image::fixtures::busybox_base;
use cairn_tests::image::{push_image, ImageConfig, ImageSpec, Layer, Meta};
use cairn_tests::{Cairnd, Registry, RegistryOptions};
use pods_common::*;

/// The probe: `probe ids` prints the real and effective uid; `probe [pid]` tries escape
/// system calls (pid: a host process to ptrace and signal) and prints `name=ERRNO` or
/// `name=ok` for each. Never run it on the host: it is meant to fail only inside a jail.
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void show(const char *name, long r) {
    printf("%s=%s\n", name, r < 0 ? strerrorname_np(errno) : "ok");
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "ids") == 0) {
        printf("uid=%d euid=%d\n", (int)getuid(), (int)geteuid());
        return 0;
    }
    pid_t host = argc > 1 ? (pid_t)atoi(argv[1]) : 1;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    show("keyctl", syscall(SYS_keyctl, 0, -3, 0));
    show("add_key", syscall(SYS_add_key, "user", "cairn", "v", 1, -3));
    show("setns", syscall(SYS_setns, -1, 0));
    show("mount", mount("none", "/tmp", "tmpfs", 0, NULL));
    show("pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp"));
    show("init_module", syscall(SYS_init_module, NULL, 0, ""));
    show("finit_module", syscall(SYS_finit_module, -1, "", 0));
    show("delete_module", syscall(SYS_delete_module, "cairn_none", 0));
    show("sethostname", sethostname("escaped", 7));
    show("clock_settime", clock_settime(CLOCK_REALTIME, &now));
    show("swapoff", syscall(SYS_swapoff, "/cairn-none"));
    show("bpf", syscall(SYS_bpf, 0, NULL, 0));
    show("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
    show("userfaultfd", syscall(SYS_userfaultfd, 0));
    show("io_uring_setup", syscall(SYS_io_uring_setup, 1, NULL));
    show("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, NULL, 0));
    show("personality", syscall(SYS_personality, 0x0400000));
    show("clone3", syscall(SYS_clone3, NULL, 0));
    show("ptrace_host", ptrace(PTRACE_ATTACH, host, 0, 0));
    show("kill_host", kill(host, 0));
    show("chroot", chroot("/"));
    show("getpid", getpid());
    show("unshare_mnt", syscall(SYS_unshare, CLONE_NEWNS));
    show("unshare_user", syscall(SYS_unshare, CLONE_NEWUSER));
    return 0;
}
"#;

/// What a default container's probe must see.
const DEFAULT_PROBE: &[(&str, &str)] = &[
    ("keyctl", "EPERM"),
    ("add_key", "EPERM"),
    ("setns", "EPERM"),
    ("mount", "EPERM"),
    ("pivot_root", "EPERM"),
    ("init_module", "EPERM"),
    ("finit_module", "EPERM"),
    ("delete_module", "EPERM"),
    ("sethostname", "EPERM"),
    ("clock_settime", "EPERM"),
    ("swapoff", "EPERM"),
    ("bpf", "EPERM"),
    ("perf_event_open", "EPERM"),
    ("userfaultfd", "EPERM"),
    ("io_uring_setup", "EPERM"),
    ("open_by_handle_at", "EPERM"),
    ("personality", "EPERM"),
    ("clone3", "ENOSYS"),
    ("ptrace_host", "ESRCH"),
    ("kill_host", "ESRCH"),
    ("chroot", "ok"),
    ("getpid", "ok"),
    ("unshare_mnt", "EPERM"),
    ("unshare_user", "EPERM"),
];

/// Debian's runc, for the external-OCI-runtime checks (skipped without it).
const RUNC: &str = "/usr/sbin/runc";

/// The capabilities of a default container (CapEff of containerd and Docker).
const DEFAULT_CAP_EFF: u64 = 0xa804_25fb;

/// Builds the probe with the host's C compiler (static, so any rootfs runs it).
fn build_probe(dir: &Path) -> Vec<u8> {
    let src = dir.join("probe.c");
    let bin = dir.join("probe");
    std::fs::write(&src, PROBE_C).unwrap();
    let out = std::process::Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("running cc (gcc and libc6-dev build the test probe)");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&bin).unwrap()
}

/// A node whose image has busybox, the probe (`/bin/probe`) and a setuid-root copy of it
/// (`/bin/suid-probe`).
async fn security_node(name: &str) -> Node {
    security_node_with(name, "").await
}

/// [`security_node`] with `extra_toml` in cairnd's config.
async fn security_node_with(name: &str, extra_toml: &str) -> Node {
    let build = tempfile::tempdir().unwrap();
    let probe = build_probe(build.path());
    let mut extra = Layer::new()
        .file_meta("bin/probe", &probe, Meta::mode(0o755))
        .file_meta("bin/suid-probe", &probe, Meta::mode(0o4755))
        .dir("mnt", 0o755);
    for applet in [
        "mknod", "date", "unshare", "touch", "mkdir", "find", "sort", "uniq", "chown",
    ] {
        extra = extra.symlink(&format!("bin/{applet}"), "busybox");
    }
    let image = ImageSpec::new(vec![busybox_base().unwrap(), extra]).config(ImageConfig::default());
    let registry = Registry::start(RegistryOptions::plain()).unwrap();
    push_image(&registry, &image, "security/probe:1").unwrap();
    let d = Cairnd::start(extra_toml).unwrap();
    let image = registry.reference("security/probe:1");
    let mut images = d.image_client().await.unwrap();
    images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    Node {
        registry,
        d,
        image,
        logs: tempfile::tempdir().unwrap(),
        cgroups: CgroupParentGuard(format!(
            "/cairn-test-{}-security-{name}",
            std::process::id()
        )),
    }
}

fn sc(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// A container config with the RuntimeDefault seccomp profile, as kubelet sends with
/// `seccompDefault` or a pod's `RuntimeDefault` (CRI's default is unconfined).
fn confined(node: &Node, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
    let mut c = node.container_config(name, cmd);
    sc(&mut c).seccomp = profile(cri::security_profile::ProfileType::RuntimeDefault, "");
    c
}

fn profile(kind: cri::security_profile::ProfileType, r: &str) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: r.into(),
    })
}

/// `name=value` lines of the probe (or `Key:\tvalue` lines of /proc/self/status).
fn fields(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(['=', ':']))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Seccomp mode, NoNewPrivs and CapEff of a process the container runs.
async fn proc_status(rt: &mut Rt, id: &str) -> (u64, u64, u64) {
    let out = exec_out(rt, id, &["cat", "/proc/self/status"]).await;
    let f = fields(&out);
    let num = |k: &str| f[k].parse::<u64>().unwrap();
    let cap_eff = u64::from_str_radix(&f["CapEff"], 16).unwrap();
    (num("Seccomp"), num("NoNewPrivs"), cap_eff)
}

/// Runs `sh -c script` in the container; (exit code, stdout + stderr).
async fn sh(rt: &mut Rt, id: &str, script: &str) -> (i32, String) {
    let r = exec(rt, id, &["sh", "-c", script]).await;
    let mut text = String::from_utf8_lossy(&r.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&r.stderr));
    (r.exit_code, text)
}

/// `script` must fail inside the container, saying `why`.
async fn must_fail(rt: &mut Rt, id: &str, script: &str, why: &str) {
    let (code, out) = sh(rt, id, script).await;
    assert_ne!(code, 0, "{script} succeeded: {out}");
    assert!(out.contains(why), "{script}: expected {why:?} in {out:?}");
}

/// The first block device of the host (the disk a container must not open).
fn host_disk() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/partitions").ok()?;
    text.lines().skip(2).find_map(|l| {
        let mut f = l.split_whitespace();
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// The container's directory in the cgroup2 hierarchy (pure v2, or the hybrid layout's
/// controller-less mount), where cairn attaches its device program; None on a node with
/// no cgroup2 hierarchy.
fn device_cgroup_dir(node: &Node, id: &str) -> Option<PathBuf> {
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|p| cairn_kernel::devfilter::is_cgroup2(p))?;
    Some(root.join(node.cgroups.0.trim_start_matches('/')).join(id))
}

/// The device programs attached to the container's cgroup2 directory.
fn device_programs(node: &Node, id: &str) -> Option<Vec<u32>> {
    let dir = device_cgroup_dir(node, id)?;
    Some(cairn_kernel::devfilter::attached(&dir).unwrap_or_else(|e| panic!("{e}")))
}

/// The container's `devices.list` in the v1 `devices` hierarchy; None without one.
fn v1_device_list(node: &Node, id: &str) -> Option<String> {
    let root = Path::new("/sys/fs/cgroup/devices");
    if !root.join("devices.list").exists() {
        return None;
    }
    let dir = root.join(node.cgroups.0.trim_start_matches('/')).join(id);
    Some(std::fs::read_to_string(dir.join("devices.list")).unwrap_or_else(|e| panic!("{e}")))
}

#[tokio::test]
async fn a_default_container_cannot_escape() {
    let node = security_node("escape").await;
    let mut rt = node.rt().await;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();

    // A neighbour pod with a secret in its rootfs and in its shared memory.
    let other = node.run_pod(&mut rt, "other").await;
    let secret = node
        .run(
            &mut rt,
            &other,
            "secret",
            &[
                "sh",
                "-c",
                "echo s3cret > /secret.txt; echo s3cret > /dev/shm/secret; sleep 300",
            ],
        )
        .await;

    // The jail: a default pod (with namespaced sysctls) and container.
    let mut config = node.pod_config("jail");
    config.linux.as_mut().unwrap().sysctls = HashMap::from([
        (
            "net.ipv4.ip_local_port_range".to_string(),
            "40000 41000".to_string(),
        ),
        ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
    ]);
    let jail = node.run_pod_with(&mut rt, config, "").await;
    let jailed = confined(&node, "jailed", &["sleep", "300"]);
    let id = node.run_config(&mut rt, &jail, jailed).await;

    // Seccomp filter on, default capabilities, no_new_privs off.
    assert_eq!(proc_status(&mut rt, &id).await, (2, 0, DEFAULT_CAP_EFF));

    // Every probed escape is refused; EPERM where the default seccomp profile denies.
    let cairnd = node.d.pid().to_string();
    let out = exec_out(&mut rt, &id, &["probe", &cairnd]).await;
    let seen = fields(&out);
    for (call, want) in DEFAULT_PROBE {
        assert_eq!(
            seen.get(*call).map(String::as_str),
            Some(*want),
            "{call}: {out}"
        );
    }
    must_fail(&mut rt, &id, "unshare -U true", "Operation not permitted").await;

    // Host processes: only the container's own are visible; pid 1 is its command.
    let (_, procs) = sh(&mut rt, &id, "ls -d /proc/[0-9]*").await;
    assert!(procs.lines().count() <= 4, "{procs}");
    assert!(
        !procs.lines().any(|l| l == format!("/proc/{cairnd}")),
        "{procs}"
    );
    assert_eq!(
        exec_out(&mut rt, &id, &["cat", "/proc/1/comm"]).await,
        "sleep"
    );

    // Mounts, /proc/sys, /sys, the cgroup tree.
    must_fail(&mut rt, &id, "mount -t tmpfs none /mnt", "denied").await;
    must_fail(&mut rt, &id, "mount -o remount,rw /sys", "denied").await;
    must_fail(
        &mut rt,
        &id,
        "v=$(cat /proc/sys/vm/overcommit_memory); echo $v > /proc/sys/vm/overcommit_memory",
        "Read-only file system",
    )
    .await;
    if Path::new("/proc/sysrq-trigger").exists() {
        must_fail(&mut rt, &id, "echo h > /proc/sysrq-trigger", "Read-only").await;
    }
    must_fail(
        &mut rt,
        &id,
        "touch /sys/kernel/cairn",
        "Read-only file system",
    )
    .await;
    must_fail(
        &mut rt,
        &id,
        "mkdir /sys/fs/cgroup/cairn",
        "Read-only file system",
    )
    .await;
    let (_, sys) = sh(&mut rt, &id, "grep ' /sys ' /proc/mounts").await;
    assert!(sys.contains(" ro,"), "{sys}");
    // Masked kernel files.
    let (_, keys) = sh(&mut rt, &id, "cat /proc/keys /proc/timer_list 2>&1 | wc -c").await;
    assert_eq!(keys.trim(), "0", "masked paths are empty");

    // Devices: any node may be made (CAP_MKNOD), but not opened unless allowed. The v1
    // `devices` controller guards the container where there is one (the hybrid layout
    // too, with no second check by a program); on pure cgroup2 a device program does.
    match v1_device_list(&node, &id) {
        Some(list) => {
            assert!(!list.contains("a *:* rwm"), "devices.list of {id}: {list}");
            assert!(list.contains("c 1:3 rwm"), "/dev/null allowed: {list}");
            if let Some(progs) = device_programs(&node, &id) {
                assert!(progs.is_empty(), "device programs of {id}: {progs:?}");
            }
        }
        None => {
            let progs = device_programs(&node, &id).expect("a cgroup2 hierarchy");
            assert_eq!(progs.len(), 1, "device programs of {id}: {progs:?}");
        }
    }
    if let Some((major, minor)) = host_disk() {
        let script = format!("mknod /tmp/disk b {major} {minor} && head -c 1 /tmp/disk");
        must_fail(&mut rt, &id, &script, "Operation not permitted").await;
    }
    must_fail(
        &mut rt,
        &id,
        "mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem",
        "not permitted",
    )
    .await;
    let (code, dev) = sh(&mut rt, &id, "ls /dev").await;
    assert_eq!(code, 0);
    for node in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
    ] {
        assert!(
            dev.split_whitespace().any(|d| d == node),
            "/dev/{node}: {dev}"
        );
    }
    assert!(!dev.contains("vda") && !dev.contains("mem\n"), "{dev}");

    // The host's hostname and clock.
    must_fail(&mut rt, &id, "hostname escaped", "not permitted").await;
    // (busybox's date exits 0 even when it cannot set the clock.)
    let (_, out) = sh(&mut rt, &id, "date -s 2001-01-01").await;
    assert!(
        out.contains("can't set date: Operation not permitted"),
        "{out}"
    );
    let year_2020 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_577_836_800);
    assert!(std::time::SystemTime::now() > year_2020);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        hostname
    );
    assert_eq!(exec_out(&mut rt, &id, &["hostname"]).await, "jail");

    // cairnd's socket and state, the host's paths of another pod's files.
    let state = node.d.state();
    let paths = [
        node.d.socket(),
        state.clone(),
        node.d.root(),
        state
            .join("containers")
            .join(&secret)
            .join("rootfs/secret.txt"),
    ];
    for p in paths {
        let script = format!("ls {}", p.display());
        must_fail(&mut rt, &id, &script, "No such file").await;
    }
    must_fail(&mut rt, &id, "cat /secret.txt", "No such file").await;
    must_fail(&mut rt, &id, "cat /dev/shm/secret", "No such file").await;
    let find = "find / -name 'secret*' -not -path '/proc/*' -not -path '/sys/*' 2>/dev/null";
    let (_, found) = sh(&mut rt, &id, find).await;
    assert!(found.trim().is_empty(), "found: {found}");

    // The pod's sysctls are set in its namespaces.
    let range = exec_out(
        &mut rt,
        &id,
        &["cat", "/proc/sys/net/ipv4/ip_local_port_range"],
    )
    .await;
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["40000", "41000"]
    );
    let rmid = exec_out(&mut rt, &id, &["cat", "/proc/sys/kernel/shm_rmid_forced"]).await;
    assert_eq!(rmid, "1");

    // pid TARGET: a debug container sees the target's processes, and only those.
    let mut peek = node.container_config("peek", &["sleep", "300"]);
    sc(&mut peek).namespace_options = Some(cri::NamespaceOption {
        pid: cri::NamespaceMode::Target as i32,
        target_id: id.clone(),
        ..Default::default()
    });
    let peek = node.run_config(&mut rt, &jail, peek).await;
    assert_eq!(
        exec_out(&mut rt, &peek, &["cat", "/proc/1/comm"]).await,
        "sleep"
    );
    let (_, procs) = sh(&mut rt, &peek, "cat /proc/[0-9]*/comm | sort | uniq -c").await;
    assert!(procs.contains("2 sleep"), "{procs}");

    remove_pod(&mut rt, &jail).await;
    remove_pod(&mut rt, &other).await;
    assert_clean(&node);
}

/// A host directory with a tmpfs mounted below it (`sub/`), unmounted on drop.
struct NestedMount {
    dir: tempfile::TempDir,
}

impl NestedMount {
    fn new() -> NestedMount {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "cairn-rro", &sub.display().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs on {}", sub.display());
        NestedMount { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for NestedMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path().join("sub"))
            .status();
    }
}

#[tokio::test]
async fn privileges_follow_the_security_context() {
    use cri::security_profile::ProfileType;
    let runc = Path::new(RUNC).exists();
    let toml = format!("[runtimes.runc]\ntype = \"oci\"\npath = \"{RUNC}\"\n");
    let node = security_node_with("privs", if runc { &toml } else { "" }).await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "privs").await;
    let sleep = ["sleep", "300"];

    // runc gets the same seccomp profile in config.json, for the container and its execs.
    if runc {
        let runc_pod = node
            .run_pod_with(&mut rt, node.pod_config("privs-runc"), "runc")
            .await;
        let id = node
            .run_config(&mut rt, &runc_pod, confined(&node, "runc", &sleep))
            .await;
        assert_eq!(proc_status(&mut rt, &id).await, (2, 0, DEFAULT_CAP_EFF));
        let out = exec_out(&mut rt, &id, &["probe"]).await;
        let seen = fields(&out);
        for call in ["keyctl", "mount", "unshare_user", "bpf"] {
            assert_eq!(seen[call], "EPERM", "{call}: {out}");
        }
        remove_pod(&mut rt, &runc_pod).await;
    }

    // no_new_privs: a setuid-root binary gives a user nothing; without it, it does.
    for (nnp, euid) in [(true, "1000"), (false, "0")] {
        let mut c = confined(&node, &format!("nnp-{nnp}"), &sleep);
        sc(&mut c).run_as_user = Some(cri::Int64Value { value: 1000 });
        sc(&mut c).no_new_privs = nnp;
        let id = node.run_config(&mut rt, &pod, c).await;
        let out = exec_out(&mut rt, &id, &["suid-probe", "ids"]).await;
        assert_eq!(out, format!("uid=1000 euid={euid}"), "no_new_privs {nnp}");
        let (seccomp, no_new_privs, cap_eff) = proc_status(&mut rt, &id).await;
        assert_eq!((seccomp, no_new_privs, cap_eff), (2, u64::from(nnp), 0));
    }

    // Privileged: every capability cairnd has (those of this test's root), no seccomp, /sys
    // writable, no masked paths.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let all = u64::from_str_radix(&fields(&status)["CapBnd"], 16).unwrap();
    let mut c = node.container_config("privileged", &sleep);
    sc(&mut c).privileged = true;
    sc(&mut c).seccomp = profile(ProfileType::RuntimeDefault, "");
    let id = node.run_config(&mut rt, &pod, c).await;
    assert_eq!(proc_status(&mut rt, &id).await, (0, 0, all));
    let (_, sys) = sh(&mut rt, &id, "grep ' /sys ' /proc/mounts").await;
    assert!(sys.contains(" rw,"), "{sys}");
    let (_, masked) = sh(&mut rt, &id, "grep -c ' /proc/timer_list ' /proc/mounts").await;
    assert_eq!(masked.trim(), "0");
    if let Some(progs) = device_programs(&node, &id) {
        assert!(
            progs.is_empty(),
            "a privileged container's devices are not filtered"
        );
    }

    // No profile said: unconfined, as CRI defines it (and containerd and CRI-O run it).
    let id = node.run(&mut rt, &pod, "unsaid", &sleep).await;
    assert_eq!(proc_status(&mut rt, &id).await, (0, 0, DEFAULT_CAP_EFF));

    // Unconfined: the same calls reach the kernel, which answers for itself.
    let mut c = node.container_config("unconfined", &sleep);
    sc(&mut c).seccomp = profile(ProfileType::Unconfined, "");
    let id = node.run_config(&mut rt, &pod, c).await;
    assert_eq!(proc_status(&mut rt, &id).await.0, 0);
    let out = exec_out(&mut rt, &id, &["probe"]).await;
    let seen = fields(&out);
    assert_ne!(seen["keyctl"], "EPERM", "{out}");
    assert_eq!(seen["setns"], "EBADF", "{out}");
    assert_eq!(seen["unshare_user"], "ok", "{out}");

    // Capabilities: drop ALL, add one back (names with or without CAP_).
    let mut c = node.container_config("caps", &sleep);
    sc(&mut c).capabilities = Some(cri::Capability {
        drop_capabilities: vec!["ALL".into()],
        add_capabilities: vec!["cap_net_bind_service".into()],
        ..Default::default()
    });
    let id = node.run_config(&mut rt, &pod, c).await;
    assert_eq!(proc_status(&mut rt, &id).await.2, 1 << 10);
    must_fail(&mut rt, &id, "chown 1000 /tmp", "Operation not permitted").await;

    // A Localhost profile (Docker's format), for the container and its execs.
    let profile_path = node.logs.path().join("no-mkdir.json");
    std::fs::write(
        &profile_path,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 13, "comment": "no new directories"}]}"#,
    )
    .unwrap();
    let mut c = node.container_config("localhost", &["sh", "-c", "mkdir /tmp/x; sleep 300"]);
    sc(&mut c).seccomp = profile(ProfileType::Localhost, &profile_path.display().to_string());
    let id = node.run_config(&mut rt, &pod, c).await;
    must_fail(&mut rt, &id, "mkdir /tmp/y", "Permission denied").await;
    assert_eq!(sh(&mut rt, &id, "ls -d /tmp/x").await.0, 1);
    assert_eq!(exec_out(&mut rt, &id, &["probe"]).await.lines().count(), 24);

    // Read-only rootfs, read-only and recursively read-only mounts.
    let nested = NestedMount::new();
    let mount = |path: &str, rro: bool| cri::Mount {
        container_path: path.into(),
        host_path: nested.path().display().to_string(),
        readonly: true,
        recursive_read_only: rro,
        ..Default::default()
    };
    let mut c = node.container_config("readonly", &sleep);
    sc(&mut c).readonly_rootfs = true;
    c.mounts = vec![mount("/ro", false), mount("/rro", true)];
    let id = node.run_config(&mut rt, &pod, c).await;
    must_fail(&mut rt, &id, "touch /x", "Read-only file system").await;
    must_fail(&mut rt, &id, "touch /ro/x", "Read-only file system").await;
    must_fail(&mut rt, &id, "touch /rro/sub/x", "Read-only file system").await;
    // Plain read-only leaves the mount below writable; recursive does not.
    let (code, out) = sh(&mut rt, &id, "touch /ro/sub/x && echo wrote").await;
    assert_eq!((code, out.trim()), (0, "wrote"));
    assert!(nested.path().join("sub/x").exists());

    remove_pod(&mut rt, &pod).await;
    drop(nested);
    assert_clean(&node);
}

/// The InvalidArgument of a refused request, with its message.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) -> String {
    let status = r.expect_err(what);
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{what}: {status:?}"
    );
    status.message().to_string()
}

#[tokio::test]
async fn bad_security_input_is_refused_and_creates_nothing() {
    use cri::security_profile::ProfileType;
    let node = security_node("bad").await;
    let mut rt = node.rt().await;
    let dir = node.logs.path();
    let malformed = dir.join("malformed.json");
    std::fs::write(
        &malformed,
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"#,
    )
    .unwrap();
    let missing = dir.join("missing.json");

    // RunPodSandbox: unsafe sysctls, a net sysctl with the host's network, a missing
    // seccomp profile, conflicting namespace options.
    type PodEdit = Box<dyn Fn(&mut cri::PodSandboxConfig)>;
    let pod_cases: Vec<(&str, PodEdit, &str)> = vec![
        (
            "unsafe sysctl",
            Box::new(|c| {
                c.linux.as_mut().unwrap().sysctls =
                    HashMap::from([("kernel.core_pattern".into(), "|/x".into())]);
            }),
            "kernel.core_pattern",
        ),
        (
            "net sysctl with host network",
            Box::new(|c| {
                let l = c.linux.as_mut().unwrap();
                l.sysctls = HashMap::from([("net.core.somaxconn".into(), "1024".into())]);
                let o = l
                    .security_context
                    .as_mut()
                    .unwrap()
                    .namespace_options
                    .as_mut();
                o.unwrap().network = cri::NamespaceMode::Node as i32;
            }),
            "net.core.somaxconn",
        ),
        (
            "missing pod seccomp profile",
            Box::new(|c| {
                let s = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
                s.seccomp = profile(ProfileType::Localhost, "/cairn/missing/profile.json");
            }),
            "/cairn/missing/profile.json",
        ),
        (
            "pid TARGET for a pod",
            Box::new(|c| {
                let s = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
                s.namespace_options.as_mut().unwrap().pid = cri::NamespaceMode::Target as i32;
            }),
            "TARGET",
        ),
    ];
    for (what, edit, want) in pod_cases {
        let mut config = node.pod_config("refused");
        edit(&mut config);
        let r = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await;
        let msg = refused(r, what);
        assert!(msg.contains(want), "{what}: {msg}");
    }
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");

    // CreateContainer: unknown capability, missing and malformed seccomp profiles,
    // conflicting namespace options, AppArmor and SELinux that cannot be applied.
    let pod = node.run_pod(&mut rt, "bad").await;
    type Edit = Box<dyn Fn(&mut cri::ContainerConfig)>;
    let malformed_ref = malformed.display().to_string();
    let missing_ref = missing.display().to_string();
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "unknown capability",
            Box::new(|c| {
                sc(c).capabilities = Some(cri::Capability {
                    add_capabilities: vec!["CAP_TELEPORT".into()],
                    ..Default::default()
                })
            }),
            "CAP_TELEPORT",
        ),
        (
            "missing seccomp profile",
            Box::new(move |c| sc(c).seccomp = profile(ProfileType::Localhost, &missing_ref)),
            "missing.json",
        ),
        (
            "malformed seccomp profile",
            Box::new(move |c| sc(c).seccomp = profile(ProfileType::Localhost, &malformed_ref)),
            "malformed.json",
        ),
        (
            "host network in a pod with its own",
            Box::new(|c| {
                sc(c).namespace_options = Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                })
            }),
            "network NODE",
        ),
        (
            "pid TARGET without a target",
            Box::new(|c| {
                sc(c).namespace_options = Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Target as i32,
                    ..Default::default()
                })
            }),
            "target_id",
        ),
        (
            "AppArmor profile",
            Box::new(|c| sc(c).apparmor = profile(ProfileType::Localhost, "cairn-strict")),
            "cairn-strict",
        ),
        (
            "SELinux label",
            Box::new(|c| {
                sc(c).selinux_options = Some(cri::SeLinuxOption {
                    r#type: "spc_t".into(),
                    ..Default::default()
                })
            }),
            "SELinux",
        ),
        (
            "user namespace",
            Box::new(|c| {
                sc(c).namespace_options = Some(cri::NamespaceOption {
                    userns_options: Some(cri::UserNamespace {
                        mode: cri::NamespaceMode::Pod as i32,
                        uids: vec![cri::IdMapping {
                            host_id: 100_000,
                            container_id: 0,
                            length: 65536,
                        }],
                        gids: vec![cri::IdMapping {
                            host_id: 100_000,
                            container_id: 0,
                            length: 65536,
                        }],
                    }),
                    ..Default::default()
                })
            }),
            "user namespaces",
        ),
    ];
    for (what, edit, want) in cases {
        let mut c = node.container_config("refused", &["sleep", "300"]);
        edit(&mut c);
        let msg = refused(node.create(&mut rt, &pod, c).await, what);
        assert!(msg.contains(want), "{what}: {msg}");
    }
    assert_no_containers(&mut rt, &node).await;

    // RuntimeDefault AppArmor is accepted (the node has no AppArmor: it runs without).
    let mut c = node.container_config("apparmor", &["true"]);
    sc(&mut c).apparmor = profile(ProfileType::RuntimeDefault, "");
    let id = node.run_config(&mut rt, &pod, c).await;
    assert_eq!(wait_exited(&mut rt, &id).await.exit_code, 0);

    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}
