//! No leaks: pods with one container each, created and removed in a loop through the CRI
//! socket, leave no mounts, cgroups, shim processes, run-dir files or cairnd file
//! descriptors behind.
//!
//! The default loop runs `DEFAULT_PODS` pods to keep the suite fast in debug builds;
//! `CAIRN_LEAK_PODS=200 cargo test -p cairn-tests --test pods_leaks` runs the 200.

mod pods_common;

use std::time::{Duration, Instant};

use cairn_proto::cri;
use pods_common::*;

const DEFAULT_PODS: usize = 200;

fn fd_count(pid: u32) -> usize {
    entries(std::path::Path::new(&format!("/proc/{pid}/fd"))).len()
}

/// Host mounts that mention the daemon's dirs anywhere (mount point, source or options,
/// e.g. an overlay's lowerdir).
fn mounts_mentioning(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// Children of `pid` (zombies included).
fn children_of(pid: u32) -> Vec<String> {
    entries(std::path::Path::new("/proc"))
        .into_iter()
        .filter_map(|e| {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", e.to_string_lossy())).ok()?;
            let (_, rest) = stat.rsplit_once(") ")?;
            let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
            (ppid == pid).then_some(stat)
        })
        .collect()
}

async fn one_pod(node: &Node, rt: &mut Rt, i: usize) {
    let name = format!("leak-{i}");
    let pod = node.run_pod(rt, &name).await;
    // Half the containers still run when the pod is stopped, half have exited.
    let exits = i % 2 == 1;
    let cmd: &[&str] = if exits {
        &["sh", "-c", "echo bye"]
    } else {
        &["sleep", "300"]
    };
    let id = node.run(rt, &pod, "c", cmd).await;
    if exits {
        wait_exited(rt, &id).await;
    }
    remove_pod(rt, &pod).await;
}

#[tokio::test]
async fn pods_created_and_removed_in_a_loop_leave_nothing() {
    let n: usize = std::env::var("CAIRN_LEAK_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_PODS);
    let node = Node::new().await;
    let mut rt = node.rt().await;
    // One round first, so that whatever cairnd sets up once (clients, caches) exists.
    one_pod(&node, &mut rt, usize::MAX).await;
    let pid = node.d.pid();
    let fds_before = fd_count(pid);

    let started = Instant::now();
    for i in 0..n {
        one_pod(&node, &mut rt, i).await;
    }
    eprintln!(
        "{n} pods in {:?}; cairnd fds {fds_before} -> {}",
        started.elapsed(),
        fd_count(pid)
    );

    let list = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(list.is_empty(), "{list:?}");
    assert!(
        mounts_mentioning(node.d.dir()).is_empty(),
        "{:?}",
        mounts_mentioning(node.d.dir())
    );
    assert_clean(&node);
    // No shim left as a zombie of cairnd either (the last one is reaped a moment after
    // it exits).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let children = children_of(pid);
        if children.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "cairnd's children: {children:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Descriptors cairnd closes asynchronously (shim connections) get a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fds = fd_count(pid);
        if fds <= fds_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cairnd had {fds_before} open fds before the loop and {fds} after"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
