//! Pods and containers end to end through cairnd's CRI socket: the lifecycle kubelet
//! drives, logs, exec, copy-on-write as a user sees it, restart survival (of cairnd and
//! of a pod's shim), bad input, and no leaks. Images come from a private registry built
//! from busybox-static.

mod pods_common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_proto::cri;
use cairn_tests::image::ImageConfig;
use pods_common::*;
use tonic::Code;

#[tokio::test]
async fn a_container_runs_logs_exits_and_is_removed() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "life").await;

    let id = node
        .run(
            &mut rt,
            &pod,
            "hello",
            &[
                "sh",
                "-c",
                "echo out-line; echo err-line >&2; printf partial; exit 3",
            ],
        )
        .await;
    let st = wait_exited(&mut rt, &id).await;
    assert_eq!(st.exit_code, 3);
    assert_eq!(st.reason, "Error");
    assert!(st.started_at > 0 && st.finished_at >= st.started_at);
    assert_eq!(
        st.log_path,
        node.log_of("life", "hello").display().to_string()
    );

    // CRI log format.
    let log = std::fs::read_to_string(node.log_of("life", "hello")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F out-line")),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stderr F err-line")),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout P partial")),
        "{log}"
    );
    for l in &lines {
        let ts = l.split(' ').next().unwrap();
        assert!(ts.ends_with('Z') && ts.contains('T'), "{l}");
    }

    // A zero exit is Completed.
    let ok = node.run(&mut rt, &pod, "ok", &["true"]).await;
    let st = wait_exited(&mut rt, &ok).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));

    // Lists with filters.
    let all = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(all.len(), 2);
    let by_pod = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerExited as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(by_pod.len(), 2);
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: HashMap::from([("app".to_string(), "life".to_string())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);

    // Remove is idempotent.
    for _ in 0..2 {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    }
    let err = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    remove_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

#[tokio::test]
async fn exec_sync_stop_with_grace_and_namespaces() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "execpod").await;
    // PID 1 of a pid namespace has no default signal actions: the shell exits on TERM
    // because it traps it.
    let id = node
        .run(
            &mut rt,
            &pod,
            "sleeper",
            &["sh", "-c", "trap 'exit 143' TERM; sleep 300 & wait"],
        )
        .await;
    assert_eq!(
        status(&mut rt, &id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    let r = exec(
        &mut rt,
        &id,
        &["sh", "-c", "echo $(hostname); echo oops >&2; exit 4"],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "execpod");
    assert_eq!(String::from_utf8_lossy(&r.stderr).trim(), "oops");
    assert_eq!(r.exit_code, 4);
    // Same pid namespace as the container: its pid 1 is the shell.
    let r = exec(&mut rt, &id, &["cat", "/proc/1/cmdline"]).await;
    assert!(
        String::from_utf8_lossy(&r.stdout).starts_with("sh"),
        "{r:?}"
    );
    // A timeout kills the command.
    let started = Instant::now();
    let err = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Two containers of one pod share the network: one listens, the other connects.
    let _server = node
        .run(
            &mut rt,
            &pod,
            "server",
            &["sh", "-c", "echo pong | nc -l -p 7777"],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = exec(&mut rt, &id, &["sh", "-c", "nc 127.0.0.1 7777 </dev/null"]).await;
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "pong", "{r:?}");

    // Stop: SIGTERM ends it within the grace period.
    let started = Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let st = status(&mut rt, &id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 128 + 15);
    // Stopping again is fine.
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .unwrap();

    // A shell that traps SIGTERM is killed after the grace period.
    let stubborn = node
        .run(
            &mut rt,
            &pod,
            "stubborn",
            &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: stubborn.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(status(&mut rt, &stubborn).await.exit_code, 137);

    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

#[tokio::test]
async fn copy_on_write_as_a_user_sees_it() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "cow").await;
    let volume = tempfile::tempdir().unwrap();
    let with_volume = |name: &str| {
        let mut c = node.container_config(name, &["sleep", "300"]);
        c.mounts = vec![cri::Mount {
            container_path: "/vol".into(),
            host_path: volume.path().display().to_string(),
            ..Default::default()
        }];
        c
    };
    let a = node.create(&mut rt, &pod, with_volume("a")).await.unwrap();
    let b = node.create(&mut rt, &pod, with_volume("b")).await.unwrap();
    for id in [&a, &b] {
        rt.start_container(cri::StartContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    // Written in one, not seen in the other.
    exec(&mut rt, &a, &["sh", "-c", "echo mine > /data/new.txt"]).await;
    let r = exec(&mut rt, &b, &["cat", "/data/new.txt"]).await;
    assert_ne!(r.exit_code, 0);
    // Changing an image file copies it up; the image layer is untouched.
    exec(
        &mut rt,
        &a,
        &["sh", "-c", "echo changed > /data/from-image.txt"],
    )
    .await;
    let r = exec(&mut rt, &b, &["cat", "/data/from-image.txt"]).await;
    assert_eq!(String::from_utf8_lossy(&r.stdout), "image\n");
    // Deleting an image file hides it in that container only.
    exec(&mut rt, &a, &["busybox", "rm", "/bin/wc"]).await;
    assert_ne!(
        exec(&mut rt, &a, &["test", "-e", "/bin/wc"])
            .await
            .exit_code,
        0
    );
    assert_eq!(
        exec(&mut rt, &b, &["test", "-e", "/bin/wc"])
            .await
            .exit_code,
        0
    );
    // The volume is shared and outlives the container.
    exec(&mut rt, &a, &["sh", "-c", "echo kept > /vol/data.txt"]).await;
    assert_eq!(
        String::from_utf8_lossy(&exec(&mut rt, &b, &["cat", "/vol/data.txt"]).await.stdout),
        "kept\n"
    );
    // The writable layer has a size; removing the container discards it.
    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: a.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.writable_layer.unwrap().used_bytes.unwrap().value > 0);
    assert!(stats.memory.unwrap().working_set_bytes.is_some());
    rt.stop_container(cri::StopContainerRequest {
        container_id: a.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: a.clone(),
    })
    .await
    .unwrap();
    let a2 = node
        .create(&mut rt, &pod, {
            let mut c = with_volume("a");
            c.metadata.as_mut().unwrap().attempt = 1;
            c
        })
        .await
        .unwrap();
    rt.start_container(cri::StartContainerRequest {
        container_id: a2.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        exec(&mut rt, &a2, &["test", "-e", "/data/new.txt"])
            .await
            .exit_code,
        1
    );
    assert_eq!(
        String::from_utf8_lossy(&exec(&mut rt, &a2, &["cat", "/vol/data.txt"]).await.stdout),
        "kept\n"
    );
    assert_eq!(
        std::fs::read_to_string(volume.path().join("data.txt")).unwrap(),
        "kept\n"
    );
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

#[tokio::test]
async fn bad_input_is_refused_and_leaves_nothing() {
    let node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "bad").await;

    // Name reuse.
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(node.pod_config("bad")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // Unknown pod and container.
    let err = node
        .create(&mut rt, "nosuchpod", node.container_config("x", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = rt
        .start_container(cri::StartContainerRequest {
            container_id: "nosuch".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "nosuch".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Image not present.
    let mut c = node.container_config("noimage", &["true"]);
    c.image.as_mut().unwrap().image = "127.0.0.1:1/not/pulled:1".into();
    let err = node.create(&mut rt, &pod, c).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("not/pulled"), "{}", err.message());

    // A command not in the image: create works, start fails naming it.
    let id = node
        .create(
            &mut rt,
            &pod,
            node.container_config("nocmd", &["/no/such/binary"]),
        )
        .await
        .unwrap();
    let err = rt
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("/no/such/binary"),
        "{}",
        err.message()
    );
    let st = status(&mut rt, &id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.reason, "StartError");
    assert!(st.message.contains("/no/such/binary"));

    // A command that is found but that execve refuses: StartContainer releases the
    // process without waiting for execve (as runc's start returns at its exec FIFO), and
    // the container exits with 126, reason StartError, saying why.
    let id = node
        .create(
            &mut rt,
            &pod,
            node.container_config("badexec", &["/data/not-a-program"]),
        )
        .await
        .unwrap();
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let st = loop {
        let st = status(&mut rt, &id).await;
        if st.state == cri::ContainerState::ContainerExited as i32 {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "never exited: {st:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (126, "StartError"),
        "{st:?}"
    );
    assert!(st.message.contains("exec format error"), "{}", st.message);

    // Invalid resources.
    let mut c = node.container_config("badres", &["true"]);
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_period: 5,
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = node.create(&mut rt, &pod, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // A limit the kernel refuses when cairnd writes it into the new cgroup: the cgroup,
    // the writable layer (recorded meanwhile) and the bundle go again (assert_clean).
    let mut c = node.container_config("nocpu", &["true"]);
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpuset_cpus: "4095".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = node.create(&mut rt, &pod, c).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("cpuset.cpus"), "{}", err.message());

    // A container in a stopped pod.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let err = node
        .create(&mut rt, &pod, node.container_config("late", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let left = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    assert_clean(&node);
}

#[tokio::test]
async fn containers_survive_a_daemon_kill_9() {
    let mut node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "survivor").await;
    let long = node.run(&mut rt, &pod, "long", &["sleep", "300"]).await;
    let short = node
        .run(
            &mut rt,
            &pod,
            "short",
            &["sh", "-c", "sleep 2; echo done; exit 7"],
        )
        .await;
    let pid_before = exec(&mut rt, &long, &["cat", "/proc/1/stat"]).await.stdout;

    node.d.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await; // "short" exits meanwhile
    node.d.restart().unwrap();
    let mut rt = node.rt().await;

    let st = status(&mut rt, &long).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    // The very same process.
    assert_eq!(
        exec(&mut rt, &long, &["cat", "/proc/1/stat"]).await.stdout,
        pid_before
    );
    let st = wait_exited(&mut rt, &short).await;
    assert_eq!(st.exit_code, 7);
    assert!(st.finished_at > st.started_at);
    let log = std::fs::read_to_string(node.log_of("survivor", "short")).unwrap();
    assert!(log.contains(" stdout F done"), "{log}");

    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

/// Pids in the container's cgroup (the v1 pids hierarchy).
fn cgroup_pids(node: &Node, id: &str) -> Vec<i32> {
    std::fs::read_to_string(node.cgroup_dir("pids", id).join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[tokio::test]
async fn a_shim_killed_with_kill_9_leaves_exited_containers_and_cleans_up() {
    shim_killed("").await;
}

#[tokio::test]
async fn a_killed_shim_of_a_runc_pod_is_cleaned_up_too() {
    shim_killed("runc").await;
}

async fn shim_killed(handler: &str) {
    let toml = "[runtimes.runc]\ntype = \"oci\"\npath = \"/usr/sbin/runc\"\n";
    let node = Node::with(ImageConfig::default(), toml).await;
    let mut rt = node.rt().await;
    // A shared pid namespace: its holder process must go with the shim too.
    let config = node.pod_config_pid("shimkill", cri::NamespaceMode::Pod);
    let pod = node.run_pod_with(&mut rt, config, handler).await;
    let a = node.run(&mut rt, &pod, "a", &["sleep", "300"]).await;
    let b = node
        .run(
            &mut rt,
            &pod,
            "b",
            &["sh", "-c", "sleep 300 & sleep 301 & wait"],
        )
        .await;
    let created = node
        .create(&mut rt, &pod, node.container_config("c", &["true"]))
        .await
        .unwrap();
    let done = node.run(&mut rt, &pod, "done", &["true"]).await;
    wait_exited(&mut rt, &done).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pids: Vec<i32> = [&a, &b]
        .iter()
        .flat_map(|id| cgroup_pids(&node, id))
        .collect();
    assert!(pids.len() >= 4, "{pids:?}");

    let shim = shim_pid(&mut rt, &pod).await;
    assert!(shims_of(&node.d).contains(&shim));
    // SAFETY: SIGKILL to the pod's shim.
    unsafe { libc::kill(shim, libc::SIGKILL) };

    // Reported exited (not hung), and what ran in them is gone.
    let started = Instant::now();
    for id in [&a, &b, &created] {
        let st = wait_exited(&mut rt, id).await;
        assert_eq!(st.exit_code, 255, "{st:?}");
        assert!(st.message.contains("shim"), "{st:?}");
        assert!(st.finished_at > 0);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let st = status(&mut rt, &done).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));
    for pid in pids {
        assert_process_gone(pid).await;
    }
    assert_eq!(
        pod_status(&mut rt, &pod).await.state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    // The pod's namespaces are released already.
    assert!(
        mounts_under(node.d.dir()).is_empty(),
        "{:?}",
        mounts_under(node.d.dir())
    );
    // Calls on its containers fail cleanly instead of hanging.
    let err = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: a.clone(),
            cmd: vec!["true".into()],
            timeout: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = node
        .create(&mut rt, &pod, node.container_config("late", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // Stop and remove still clean everything up; and they stay idempotent.
    rt.stop_container(cri::StopContainerRequest {
        container_id: a.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    remove_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

#[tokio::test]
async fn a_shim_that_died_while_cairnd_was_down_is_cleaned_up_after_restart() {
    let mut node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "orphaned").await;
    let id = node.run(&mut rt, &pod, "c", &["sleep", "300"]).await;
    let pids = cgroup_pids(&node, &id);
    assert!(!pids.is_empty());
    let shim = shim_pid(&mut rt, &pod).await;

    node.d.kill9();
    // SAFETY: SIGKILL to the pod's shim.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.d.restart().unwrap();
    let mut rt = node.rt().await;

    let st = wait_exited(&mut rt, &id).await;
    assert_eq!(st.exit_code, 255, "{st:?}");
    assert!(st.message.contains("shim"), "{st:?}");
    assert_eq!(
        pod_status(&mut rt, &pod).await.state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    for pid in pids {
        assert_process_gone(pid).await;
    }
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

#[tokio::test]
async fn a_reboot_leaves_no_writable_layer_behind() {
    let mut node = Node::new().await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "rebooted").await;
    node.create(&mut rt, &pod, node.container_config("c", &["true"]))
        .await
        .unwrap();
    let snapshots = node.d.root().join("snapshots");
    assert_eq!(entries(&snapshots).len(), 3, "the image's 2 layers + 1");

    // A reboot: nothing of the pod runs any more, and the state dir (a tmpfs, with the
    // pod and container records) is empty; the root keeps the layers.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    node.d.stop();
    assert!(shims_of(&node.d).is_empty());
    for e in entries(&node.d.state()) {
        let path = node.d.state().join(e);
        match path.is_dir() {
            true => std::fs::remove_dir_all(&path).unwrap(),
            false => std::fs::remove_file(&path).unwrap(),
        }
    }
    node.d.restart().unwrap();
    let mut rt = node.rt().await;

    let left = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        entries(&snapshots).len(),
        2,
        "only the image's layers remain: {:?}",
        entries(&snapshots)
    );
}
