//! Runtime handlers: the same core lifecycle (run a pod, create, start, logs, a tty,
//! exec_sync, stop with a grace period, remove) through the built-in launcher and
//! through runc, the external OCI runtime a `[runtimes.runc]` config section names.
//!
//! Needs `/usr/sbin/runc` (Debian's `runc`).

mod pods_common;

use std::time::{Duration, Instant};

use cairn_proto::cri;
use cairn_tests::image::ImageConfig;
use pods_common::*;
use tonic::Code;

const RUNC: &str = "/usr/sbin/runc";

fn config_toml() -> String {
    format!("[runtimes.runc]\ntype = \"oci\"\npath = \"{RUNC}\"\n")
}

async fn wait_log(path: &std::path::Path, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(text) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{} lacks {text:?}: {log}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn core_lifecycle(handler: &str) {
    let node = Node::with(ImageConfig::default(), &config_toml()).await;
    let mut rt = node.rt().await;
    let name = format!(
        "life-{}",
        if handler.is_empty() { "cairn" } else { handler }
    );
    let pod = node
        .run_pod_with(&mut rt, node.pod_config(&name), handler)
        .await;
    assert_eq!(pod_status(&mut rt, &pod).await.runtime_handler, handler);

    let main = node
        .run(
            &mut rt,
            &pod,
            "main",
            &[
                "sh",
                "-c",
                "echo started; echo to-stderr >&2; trap 'echo bye; exit 0' TERM; sleep 300 & wait",
            ],
        )
        .await;
    let log = wait_log(&node.log_of(&name, "main"), "to-stderr").await;
    assert!(log.contains(" stdout F started"), "{log}");
    assert!(log.contains(" stderr F to-stderr"), "{log}");
    // Which launcher ran it: runc keeps its state under the pod's run dir.
    let runc_state = node
        .d
        .state()
        .join("pods")
        .join(&pod)
        .join("oci")
        .join(&main);
    assert_eq!(
        runc_state.exists(),
        handler == "runc",
        "{}",
        runc_state.display()
    );

    let r = exec(
        &mut rt,
        &main,
        &["sh", "-c", "hostname; id -u; echo oops >&2; exit 5"],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&r.stdout), format!("{name}\n0\n"));
    assert_eq!(String::from_utf8_lossy(&r.stderr), "oops\n");
    assert_eq!(r.exit_code, 5);
    // The exec shares the container's pid namespace: pid 1 is the container's shell.
    assert_eq!(
        exec_out(&mut rt, &main, &["cat", "/proc/1/comm"]).await,
        "sh"
    );

    // A one-shot container's exit code.
    let once = node
        .run(&mut rt, &pod, "once", &["sh", "-c", "echo once; exit 3"])
        .await;
    let st = wait_exited(&mut rt, &once).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));

    // A container on a terminal.
    let mut c = node.container_config("tty", &["sh", "-c", "tty; echo on-a-tty"]);
    c.tty = true;
    let tty = node.run_config(&mut rt, &pod, c).await;
    assert_eq!(wait_exited(&mut rt, &tty).await.exit_code, 0);
    let log = wait_log(&node.log_of(&name, "tty"), "on-a-tty").await;
    assert!(log.contains("/dev/"), "tty names a device: {log}");

    // Stop: SIGTERM within the grace period, the trap runs.
    rt.stop_container(cri::StopContainerRequest {
        container_id: main.clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    let st = status(&mut rt, &main).await;
    assert_eq!(
        (st.state, st.exit_code),
        (cri::ContainerState::ContainerExited as i32, 0)
    );
    wait_log(&node.log_of(&name, "main"), " stdout F bye").await;

    for id in [&main, &once, &tty] {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    assert!(!runc_state.exists());
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

#[tokio::test]
async fn core_lifecycle_on_the_built_in_launcher() {
    core_lifecycle("").await;
}

#[tokio::test]
async fn core_lifecycle_on_runc() {
    core_lifecycle("runc").await;
}

#[tokio::test]
async fn unknown_or_missing_runtime_handlers_are_refused() {
    let node = Node::with(
        ImageConfig::default(),
        "[runtimes.gone]\ntype = \"oci\"\npath = \"/no/such/runtime\"\n",
    )
    .await;
    let mut rt = node.rt().await;
    for (handler, code) in [
        ("nosuch", Code::InvalidArgument),
        ("gone", Code::FailedPrecondition),
    ] {
        let err = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(node.pod_config(handler)),
                runtime_handler: handler.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(handler), "{err:?}");
    }
    // "cairn" names the built-in launcher.
    let pod = node
        .run_pod_with(&mut rt, node.pod_config("builtin"), "cairn")
        .await;
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}
