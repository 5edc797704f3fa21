//! What a running container's owner sees of its resources through the CRI socket:
//! UpdateContainerResources changing live cgroup limits, log reopening for rotation,
//! statistics of containers and pods, the container event stream, and OOM kills.

mod pods_common;

use std::time::{Duration, Instant};

use cairn_proto::cri;
use pods_common::*;
use tonic::Code;

fn read_trim(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[tokio::test]
async fn update_container_resources_changes_running_limits() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "update").await;
    let mut config = node.container_config("c", &["sleep", "300"]);
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = node.run_config(&mut rt, &pod, config).await;
    let limits = Limits::of(&node, &id);
    assert_eq!(limits.read(), Limits::want(64 << 20, 50_000, 512));
    let before = exec_out(&mut rt, &id, &["cat", "/proc/1/stat"]).await;

    let new = cri::LinuxContainerResources {
        memory_limit_in_bytes: 128 << 20,
        cpu_quota: 20_000,
        cpu_period: 100_000,
        cpu_shares: 256,
        ..Default::default()
    };
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(new.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(limits.read(), Limits::want(128 << 20, 20_000, 256));
    // The same process, still running, and the status reports the new limits.
    assert_eq!(
        exec_out(&mut rt, &id, &["cat", "/proc/1/stat"]).await,
        before
    );
    let st = status(&mut rt, &id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    let r = st.resources.unwrap().linux.unwrap();
    assert_eq!(
        (r.memory_limit_in_bytes, r.cpu_quota, r.cpu_shares),
        (128 << 20, 20_000, 256)
    );

    // Invalid limits are refused and change nothing.
    let err = rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(limits.read(), Limits::want(128 << 20, 20_000, 256));
    let err = rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: "nosuch".into(),
            linux: Some(new),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

/// The files a container's memory limit, CPU quota and CPU weight are in, as the node
/// lays them out: v1's `memory.limit_in_bytes`, `cpu.cfs_quota_us` and `cpu.shares`, or
/// v2's `memory.max`, `cpu.max` and `cpu.weight`.
struct Limits {
    memory: std::path::PathBuf,
    quota: std::path::PathBuf,
    shares: std::path::PathBuf,
}

impl Limits {
    fn of(node: &Node, id: &str) -> Limits {
        let (mem, cpu) = (node.cgroup_dir("memory", id), node.cgroup_dir("cpu", id));
        match host_cgroup_v2() {
            true => Limits {
                memory: mem.join("memory.max"),
                quota: cpu.join("cpu.max"),
                shares: cpu.join("cpu.weight"),
            },
            false => Limits {
                memory: mem.join("memory.limit_in_bytes"),
                quota: cpu.join("cpu.cfs_quota_us"),
                shares: cpu.join("cpu.shares"),
            },
        }
    }

    fn read(&self) -> [String; 3] {
        [&self.memory, &self.quota, &self.shares].map(|p| read_trim(p.clone()))
    }

    /// What the files hold for these CRI values (period 100 ms). On v2 the shares become
    /// a weight as runc and crun convert them: 1 + (shares - 2) * 9999 / 262142.
    fn want(memory: u64, quota: u64, shares: u64) -> [String; 3] {
        match host_cgroup_v2() {
            true => [
                memory.to_string(),
                format!("{quota} 100000"),
                (1 + (shares - 2) * 9999 / 262_142).to_string(),
            ],
            false => [memory.to_string(), quota.to_string(), shares.to_string()],
        }
    }
}

/// The counters of a log file in order (lines `<time> stdout F <n>`).
fn counters(text: &str) -> Vec<u64> {
    text.lines()
        .map(|l| {
            let fields: Vec<&str> = l.splitn(4, ' ').collect();
            assert_eq!(fields.len(), 4, "{l:?}");
            assert_eq!((fields[1], fields[2]), ("stdout", "F"), "{l:?}");
            fields[3].parse().unwrap_or_else(|_| panic!("{l:?}"))
        })
        .collect()
}

#[tokio::test]
async fn reopen_container_log_after_rotation_loses_no_line() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "rotate").await;
    let id = node
        .run(
            &mut rt,
            &pod,
            "counter",
            &[
                "sh",
                "-c",
                "i=0; while true; do echo $i; i=$((i+1)); sleep 0.01; done",
            ],
        )
        .await;
    let log = node.log_of("rotate", "counter");
    let rotated = log.with_extension("log.1");
    let wait_lines = |path: std::path::PathBuf, n: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path)
            .map(|t| t.lines().count())
            .unwrap_or(0)
            < n
        {
            assert!(Instant::now() < deadline, "{} stays short", path.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_lines(log.clone(), 20).await;
    std::fs::rename(&log, &rotated).unwrap();
    // The container keeps writing into the renamed file until the reopen.
    tokio::time::sleep(Duration::from_millis(100)).await;
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    wait_lines(log.clone(), 20).await;
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();

    let old = counters(&std::fs::read_to_string(&rotated).unwrap());
    let new = counters(&std::fs::read_to_string(&log).unwrap());
    assert!(old.len() >= 20 && new.len() >= 20, "{old:?} {new:?}");
    let all: Vec<u64> = old.iter().chain(&new).copied().collect();
    let expected: Vec<u64> = (0..all.len() as u64).collect();
    assert_eq!(all, expected, "a gap or a repeat across the rotation");

    // Reopening the log of a container that is not running is refused.
    let err = rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

#[tokio::test]
async fn stats_of_a_busy_container_and_its_pod() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "busy").await;
    let id = node
        .run(
            &mut rt,
            &pod,
            "spin",
            &[
                "sh",
                "-c",
                "sleep 300 & x=$(head -c 4000000 /dev/zero | wc -c); while true; do :; done",
            ],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let s = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(s.attributes.as_ref().unwrap().id, id);
    let cpu = s.cpu.unwrap().usage_core_nano_seconds.unwrap().value;
    assert!(cpu > 100_000_000, "cpu {cpu}");
    let ws = s.memory.unwrap().working_set_bytes.unwrap().value;
    assert!(ws > 0, "working set {ws}");

    let list = rt
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].attributes.as_ref().unwrap().id, id);

    let ps = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(ps.attributes.as_ref().unwrap().id, pod);
    let linux = ps.linux.unwrap();
    assert!(linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 100_000_000);
    assert!(linux.memory.unwrap().working_set_bytes.unwrap().value > 0);
    let procs = linux.process.unwrap().process_count.unwrap().value;
    assert!(procs >= 2, "the shell and its sleep: {procs}");
    assert_eq!(linux.containers.len(), 1);

    let all = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(all.len(), 1);
    assert!(
        all[0]
            .linux
            .as_ref()
            .unwrap()
            .process
            .as_ref()
            .unwrap()
            .process_count
            .as_ref()
            .unwrap()
            .value
            >= 2
    );
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

#[tokio::test]
async fn container_events_stream_the_lifecycle() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "events").await;
    let mut events = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let id = node.run(&mut rt, &pod, "c", &["sh", "-c", "exit 2"]).await;
    wait_exited(&mut rt, &id).await;
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();

    use cri::ContainerEventType as T;
    let want = [
        T::ContainerCreatedEvent,
        T::ContainerStartedEvent,
        T::ContainerStoppedEvent,
        T::ContainerDeletedEvent,
    ];
    let mut got = Vec::new();
    while got.len() < want.len() {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("no event within 10 s")
            .unwrap()
            .unwrap();
        if ev.container_id != id {
            continue;
        }
        assert!(ev.created_at > 0);
        let ps = ev
            .pod_sandbox_status
            .as_ref()
            .expect("pod status in the event");
        assert_eq!(ps.id, pod);
        let kind = T::try_from(ev.container_event_type).unwrap();
        if kind == T::ContainerStoppedEvent {
            let st = ev
                .containers_statuses
                .iter()
                .find(|c| c.id == id)
                .expect("the container's status in the event");
            assert_eq!(st.exit_code, 2);
        }
        got.push(kind);
    }
    assert_eq!(got, want);
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

#[tokio::test]
async fn an_oom_killed_container_says_so() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "oom").await;
    let mut config =
        node.container_config("hog", &["sh", "-c", "x=a; while true; do x=$x$x; done"]);
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = node.run_config(&mut rt, &pod, config).await;
    let st = wait_exited(&mut rt, &id).await;
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    assert_eq!(st.exit_code, 137, "{st:?}");
    // A container that exits on its own in the same pod is not taken for OOM-killed.
    let ok = node.run(&mut rt, &pod, "ok", &["true"]).await;
    assert_eq!(wait_exited(&mut rt, &ok).await.reason, "Completed");
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

#[tokio::test]
async fn a_container_reads_its_own_limits_under_sys_fs_cgroup() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "limits").await;
    let mut config = node.container_config("c", &["sleep", "300"]);
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            cpu_quota: 30_000,
            cpu_period: 100_000,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = node.run_config(&mut rt, &pod, config).await;
    let read = |files: &[&str]| {
        let mut cmd = vec!["cat"];
        cmd.extend_from_slice(files);
        cmd.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let (files, want): (Vec<&str>, String) = if host_cgroup_v2() {
        (
            vec!["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max"],
            format!("{}\n30000 100000", 96u64 << 20),
        )
    } else {
        (
            vec![
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                // Controllers mounted together on the host appear under each name too.
                "/sys/fs/cgroup/cpuacct/cpuacct.usage",
            ],
            format!("{}\n30000", 96u64 << 20),
        )
    };
    let cmd = read(&files);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let out = exec_out(&mut rt, &id, &cmd).await;
    assert!(out.starts_with(&want), "{out:?} (want {want:?} first)");

    // The container's own cgroup, not the host's root: its init (pid 1) is in it.
    let procs = if host_cgroup_v2() {
        "/sys/fs/cgroup/cgroup.procs"
    } else {
        "/sys/fs/cgroup/memory/cgroup.procs"
    };
    let out = exec_out(&mut rt, &id, &["cat", procs]).await;
    assert!(out.lines().any(|l| l == "1"), "{procs}: {out:?}");

    // Read-only, as the spec's cgroup mount says: neither the hierarchy nor the tmpfs
    // around it (v1) can be written.
    let writes: &[[&str; 2]] = match host_cgroup_v2() {
        true => &[["mkdir", "/sys/fs/cgroup/escape"]],
        false => &[
            ["mkdir", "/sys/fs/cgroup/memory/escape"],
            ["mkdir", "/sys/fs/cgroup/escape"],
        ],
    };
    for cmd in writes {
        let r = exec(&mut rt, &id, cmd).await;
        assert_ne!(r.exit_code, 0, "{cmd:?} succeeded");
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("Read-only file system"),
            "{cmd:?}: {r:?}"
        );
    }
    if host_cgroup_v2() {
        // Its own cgroup namespace: the container's cgroup is the root it sees, and the
        // host's hierarchy above it is out of sight.
        let own = exec_out(&mut rt, &id, &["cat", "/proc/self/cgroup"]).await;
        assert_eq!(own.trim(), "0::/", "/proc/self/cgroup");
        let host_parent = node.cgroups.0.trim_start_matches('/');
        let listing = exec_out(&mut rt, &id, &["ls", "/sys/fs/cgroup"]).await;
        assert!(!listing.contains(host_parent), "{listing:?}");
        assert!(listing.lines().any(|l| l == "memory.max"), "{listing:?}");
    } else {
        let listing = exec_out(&mut rt, &id, &["ls", "/sys/fs/cgroup"]).await;
        for h in ["cpu", "cpuacct", "memory", "pids", "devices"] {
            assert!(listing.lines().any(|l| l == h), "{h} missing: {listing:?}");
        }
    }

    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}
