//! The one-call ExecSync against a real container made by the built-in launcher (as
//! root, with the launcher tests' busybox rootfs).

use std::time::{Duration, Instant};

use super::*;
use crate::launch::tests::{process, Fixture};
use cairn_proto::shim::exec::OUTPUT_LIMIT;

/// A shim service with one running container `c` (`sleep 300`); shut down on drop.
struct Pod {
    svc: TaskService,
    fx: Fixture,
    _stop: std::sync::mpsc::Receiver<()>,
}

impl Pod {
    fn new() -> Pod {
        let fx = Fixture::new();
        let pod_dir = fx.path("pod");
        let bundle = fx.path("bundle");
        std::fs::create_dir_all(&pod_dir).unwrap();
        std::fs::create_dir_all(&bundle).unwrap();
        fx.spec(&["sleep", "300"])
            .save(bundle.join("config.json"))
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let svc = TaskService::new(&pod_dir, tx, None);
        let create = CreateTaskRequest {
            id: "c".into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        };
        svc.do_create(&create).unwrap();
        let start = StartRequest {
            id: "c".into(),
            ..Default::default()
        };
        svc.do_start(&start).unwrap();
        Pod { svc, fx, _stop: rx }
    }

    fn exec(
        &self,
        exec_id: &str,
        args: &[&str],
        timeout_ms: u64,
    ) -> ttrpc::Result<ExecSyncResponse> {
        self.svc.exec_sync(&ExecSyncRequest {
            id: "c".into(),
            exec_id: exec_id.into(),
            process: serde_json::to_vec(&process(args)).unwrap(),
            timeout_ms,
        })
    }

    fn execs(&self) -> usize {
        self.svc.lock().get("c").map_or(0, |c| c.execs.len())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.svc.do_shutdown();
    }
}

fn status(e: ttrpc::Error) -> ttrpc::Status {
    match e {
        ttrpc::Error::RpcStatus(s) => s,
        other => panic!("not a status: {other:?}"),
    }
}

/// A bundle as cairnd leaves it for the built-in launcher: `spec` in config.json and,
/// if given, `program` as the compiled seccomp program.
fn bundle(fx: &Fixture, spec: &oci_spec::runtime::Spec, program: Option<&[u8]>) -> String {
    let bundle = fx.path("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    spec.save(bundle.join("config.json")).unwrap();
    if let Some(p) = program {
        std::fs::write(bundle.join(SECCOMP_PROGRAM), p).unwrap();
    }
    bundle.display().to_string()
}

/// The program cairnd compiled is the one installed (the spec's profile would allow
/// what it denies), and a damaged one fails the create, naming the file.
#[test]
fn the_compiled_seccomp_program_in_the_bundle_is_installed() {
    use oci_spec::runtime::{LinuxSeccompAction, LinuxSeccompBuilder};
    let fx = Fixture::new();
    let pod_dir = fx.path("pod");
    std::fs::create_dir_all(&pod_dir).unwrap();
    let (tx, _rx) = std::sync::mpsc::channel();
    let svc = TaskService::new(&pod_dir, tx, None);
    let allow_all = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .build()
        .unwrap();
    let deny_mkdir = cairn_kernel::seccomp::profile_denying(&["mkdir", "mkdirat"]);
    let program = cairn_kernel::seccomp::compile(&deny_mkdir)
        .unwrap()
        .to_bytes();
    let mut spec = fx.spec(&["sh", "-c", "mkdir /tmp/x 2>/dev/null; echo $?"]);
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_seccomp(Some(allow_all));
    let out = fx.path("out.log");
    let create = |bundle: String| CreateTaskRequest {
        id: "c".into(),
        bundle,
        stdout: out.display().to_string(),
        ..Default::default()
    };
    let damaged = bundle(&fx, &spec, Some(&program[..program.len() - 3]));
    let e = status(svc.do_create(&create(damaged)).unwrap_err());
    assert!(
        e.message.contains(SECCOMP_PROGRAM) && e.message.contains("compiled seccomp"),
        "{}",
        e.message
    );
    svc.do_create(&create(bundle(&fx, &spec, Some(&program))))
        .unwrap();
    svc.do_start(&StartRequest {
        id: "c".into(),
        ..Default::default()
    })
    .unwrap();
    let exit = svc.wait_exit("c", "").unwrap();
    assert_eq!(exit.code, 0);
    let log = std::fs::read_to_string(&out).unwrap();
    assert!(
        log.trim_end().ends_with(" stdout F 1"),
        "mkdir got EPERM: {log}"
    );
    assert!(!fx.root.join("tmp/x").exists());
    svc.do_shutdown();
}

#[test]
fn exec_sync_output_exit_code_and_fast_exits() {
    let pod = Pod::new();
    let r = pod
        .exec("e1", &["sh", "-c", "echo out; echo err >&2; exit 3"], 0)
        .unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(r.exit_code, 3);
    assert!(!r.timed_out);
    // A command that exits at once is never lost.
    for i in 0..20 {
        let r = pod.exec(&format!("t{i}"), &["true"], 10_000).unwrap();
        assert_eq!(r.exit_code, 0, "{r:?}");
    }
    // Something left behind holding the output does not hold the answer.
    let started = Instant::now();
    let r = pod
        .exec("bg", &["sh", "-c", "sleep 30 & echo done"], 0)
        .unwrap();
    assert_eq!(r.stdout, b"done\n");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Each exec is forgotten once answered.
    assert_eq!(pod.execs(), 0);
}

#[test]
fn exec_sync_keeps_the_first_bytes_of_large_output() {
    let pod = Pod::new();
    let total = 3_000_000;
    let script = format!("head -c {total} /dev/zero; echo end >&2");
    let r = pod.exec("big", &["sh", "-c", &script], 0).unwrap();
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.stdout.len(), OUTPUT_LIMIT);
    assert_eq!(r.stdout_dropped, (total - OUTPUT_LIMIT) as u64);
    assert_eq!((r.stderr.as_slice(), r.stderr_dropped), (&b"end\n"[..], 0));
}

#[test]
fn exec_sync_errors_are_the_task_apis() {
    let pod = Pod::new();
    let e = status(pod.exec("x", &["nosuch"], 0).unwrap_err());
    assert_eq!(e.code(), ttrpc::Code::FAILED_PRECONDITION);
    assert_eq!(
        e.message,
        r#"exec: "nosuch": executable file not found in $PATH"#
    );
    let mut p = process(&["true"]);
    p.set_cwd("/no/such/dir".into());
    let e = status(
        pod.svc
            .exec_sync(&ExecSyncRequest {
                id: "c".into(),
                exec_id: "y".into(),
                process: serde_json::to_vec(&p).unwrap(),
                timeout_ms: 0,
            })
            .unwrap_err(),
    );
    assert_eq!(e.code(), ttrpc::Code::FAILED_PRECONDITION);
    assert!(
        e.message.starts_with("exec in c: container setup failed"),
        "{}",
        e.message
    );
    assert!(e.message.contains("/no/such/dir"), "{}", e.message);
    let mut req = ExecSyncRequest {
        id: "nope".into(),
        exec_id: "z".into(),
        process: serde_json::to_vec(&process(&["true"])).unwrap(),
        timeout_ms: 0,
    };
    let e = status(pod.svc.exec_sync(&req).unwrap_err());
    assert_eq!(e.code(), ttrpc::Code::NOT_FOUND);
    req.id = "c".into();
    req.process = b"{".to_vec();
    let e = status(pod.svc.exec_sync(&req).unwrap_err());
    assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(pod.execs(), 0);
}

#[test]
fn exec_sync_deadline_and_cancels_kill_the_command() {
    let pod = Pod::new();
    let started = Instant::now();
    let r = pod.exec("slow", &["sleep", "30"], 300).unwrap();
    assert!(r.timed_out);
    assert_eq!(r.exit_code, 128 + libc::SIGKILL);
    assert!(started.elapsed() < Duration::from_secs(10));

    // A cancel while it runs.
    let svc = pod.svc.clone();
    let canceller = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pid = svc
                .lock()
                .get("c")
                .and_then(|c| c.execs.get("running"))
                .map_or(0, |x| x.proc.pid);
            if pid > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the exec never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        svc.cancel_exec_sync("c", "running");
    });
    let started = Instant::now();
    let r = pod.exec("running", &["sleep", "30"], 0).unwrap();
    canceller.join().unwrap();
    assert_eq!(r.exit_code, 128 + libc::SIGKILL);
    assert!(started.elapsed() < Duration::from_secs(10));

    // A cancel that overtakes its call: the command never runs.
    pod.svc.cancel_exec_sync("c", "early");
    let e = status(pod.exec("early", &["touch", "/tmp/ran"], 0).unwrap_err());
    assert_eq!(e.code(), ttrpc::Code::CANCELLED);
    assert!(!pod.fx.root.join("tmp/ran").exists());
    assert_eq!(pod.execs(), 0);
}
