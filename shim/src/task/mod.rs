//! The shim's side of containerd's shim v2 `Task` API (ttrpc): it creates containers
//! with cairn's launcher (or, for pods of an OCI runtime handler, with that runtime
//! binary: [`crate::launch::oci`]), starts them, runs execs, signals, waits and deletes
//! them, writes their CRI logs, and records every exit durably under
//! `<pod dir>/exits/`. When a container's init exits, whatever is left in its cgroup
//! (possible when it shares the pod's or the host's pid namespace) is killed.
//!
//! cairn's conventions on the Task messages: `CreateTaskRequest.bundle` holds the OCI
//! `config.json`; `rootfs[0]` is an overlay mount (`lowerdir=a:b`, `upperdir=`,
//! `workdir=`); `stdout` is the CRI log path. `ExecProcessRequest.spec` is the JSON OCI
//! `Process`, and its `stdout`/`stderr` are files the exec writes to directly.
//! `UpdateTaskRequest.resources` is JSON `LinuxResources`; the annotation
//! `io.cairn.reopen-log` reopens the container's log instead.
//!
//! ExecSync has a one-call path beside the Task API (module `execsync`): the handler
//! thread launches the exec, reads its output from pipes, waits for it through a pidfd
//! and reaps it; no output files, no waiter thread.
//!
//! Reaping: every process is reaped by whoever owns it, by pid (a waiter thread, the
//! exec sync handler, the launcher); nothing waits for any child (`waitpid(-1)`). So a
//! process that exits before its owner gets to wait keeps its status as a zombie until
//! then, and nothing needs registering before a process may run.
//!
//! This file holds the service's state and the Task trait's dispatch; each operation has
//! a file: `create`, `start`, `exec_sync`, `exit` (waiters, exit records, Waits),
//! `kill_delete` (Kill, Delete, Shutdown), `attach`, and `process_io` (the stdio ends).

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::ttrpc::{self, TtrpcContext};
use containerd_shim_protos::types::empty::Empty;
use containerd_shim_protos::types::task::Status;

use crate::crilog::{spawn_copiers, LogFile};
use crate::launch::oci::OciRuntime;
use crate::launch::{self, Created, Stdio};
use crate::stdio::Stream;
use crate::stdio::{self as streams, Stdin, Tee};
use cairn_kernel::cgroup::{Cgroup, Layout};
use cairn_kernel::overlay::OverlayMount;
use cairn_proto::shim::bundle::{
    overlay_from, AttachPaths, ATTACH, REOPEN_LOG, SECCOMP_PROGRAM, STDIN_ONCE,
};
use cairn_proto::shim::exec::{ExecSyncRequest, ExecSyncResponse};
use cairn_proto::shim::exit::{write_exit, Exit};
use cairn_proto::shim::stats::StatsJson;

use cairn_kernel::process::now_ns;

mod attach;
mod create;
mod exec_sync;
mod exit;
mod kill_delete;
mod process_io;
mod start;

use attach::*;
use exec_sync::*;
use exit::*;
use kill_delete::*;
use process_io::*;

/// A container process set up and waiting for start.
enum Pending {
    /// Held by the built-in launcher before `execve`.
    Builtin(Created),
    /// Created by the pod's external OCI runtime; `<runtime> start` releases it.
    Oci,
}

/// One process of a container: its init or an exec.
#[derive(Default)]
struct Proc {
    pid: i32,
    /// Set up and waiting for start.
    created: Option<Pending>,
    started: bool,
    exit: Option<Exit>,
}

impl Proc {
    fn status(&self) -> Status {
        match (&self.exit, self.started, self.pid) {
            (Some(_), _, _) => Status::STOPPED,
            (None, true, _) => Status::RUNNING,
            (None, false, 0) => Status::UNKNOWN,
            (None, false, _) => Status::CREATED,
        }
    }
}

struct ExecProc {
    process: oci_spec::runtime::Process,
    /// Paths of its streams: files or FIFOs cairnd made; empty: none.
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    /// The terminal's master, for resizes.
    pty: Option<std::fs::File>,
    proc: Proc,
    /// An exec sync whose caller went away before it had a pid: killed when it has one.
    cancelled: bool,
}

struct Container {
    bundle: String,
    /// Where the shim mounted the rootfs itself (for an external OCI runtime).
    rootfs_mount: Option<PathBuf>,
    log_path: String,
    cgroup: Option<Cgroup>,
    oom_before: u64,
    init: Proc,
    execs: HashMap<String, ExecProc>,
    log: Option<Arc<LogFile>>,
    /// Its open stdin (CRI `stdin`), until closed.
    stdin: Option<Arc<Stdin>>,
    /// Attached clients of its output.
    tee: Arc<Tee>,
    /// The terminal's master (CRI `tty`), for resizes.
    pty: Option<std::fs::File>,
    /// Its compiled seccomp filter (built-in launcher), which its execs run under too.
    seccomp: Option<Arc<cairn_kernel::seccomp::Program>>,
    /// Its init released into `execve` (built-in launcher): says, after its exit, whether
    /// `execve` failed.
    released: Option<launch::Released>,
}

struct Inner {
    pod_dir: PathBuf,
    layout: Option<Layout>,
    /// The external OCI runtime this pod's containers run with; None: the built-in
    /// launcher.
    oci: Option<OciRuntime>,
    containers: Mutex<HashMap<String, Container>>,
    /// Cancels of exec syncs not seen yet, (container, exec) (at most [`MAX_EARLY_CANCELS`],
    /// the oldest go first). Locked after `containers`.
    early_cancels: Mutex<VecDeque<(String, String)>>,
    exited: Condvar,
    /// Wait calls to answer when their process exits (see [`TaskService::wait_then`]).
    /// Locked after `containers`.
    waiters: Mutex<Vec<Waiter>>,
    shutdown: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

/// What [`TaskService::wait_then`] calls with the outcome of a Wait.
pub type WaitDone = Box<dyn FnOnce(Result<Exit, ttrpc::Error>) + Send>;

/// A Wait call waiting for its process's exit.
struct Waiter {
    id: String,
    exec_id: String,
    done: WaitDone,
}

/// How many cancels of exec syncs the shim has not seen yet it remembers: the call and its
/// cancel cross only within a moment, and a cancel whose call never comes is forgotten.
const MAX_EARLY_CANCELS: usize = 64;

/// The Task service of one pod's shim.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

fn err(code: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn not_found(id: &str) -> ttrpc::Error {
    err(
        ttrpc::Code::NOT_FOUND,
        format!("container {id} not found in this pod"),
    )
}

pub(crate) fn timestamp(ns: i64) -> MessageField<Timestamp> {
    MessageField::some(Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
        ..Default::default()
    })
}

impl TaskService {
    /// A service for the pod whose run dir is `pod_dir`; `shutdown` is signalled when
    /// cairnd asks the shim to exit. With `oci`, containers run with that external OCI
    /// runtime instead of the built-in launcher.
    pub fn new(
        pod_dir: &Path,
        shutdown: std::sync::mpsc::Sender<()>,
        oci: Option<OciRuntime>,
    ) -> TaskService {
        let layout = match Layout::detect() {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "no cgroup hierarchy: containers run without limits");
                None
            }
        };
        let _ = std::fs::create_dir_all(pod_dir.join("exits"));
        TaskService {
            inner: Arc::new(Inner {
                pod_dir: pod_dir.to_path_buf(),
                layout,
                oci,
                containers: Mutex::new(HashMap::new()),
                early_cancels: Mutex::new(VecDeque::new()),
                exited: Condvar::new(),
                waiters: Mutex::new(Vec::new()),
                shutdown: Mutex::new(Some(shutdown)),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl containerd_shim_protos::shim::shim_ttrpc::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let pid = self.do_create(&req)?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let pid = self.do_start(&req)?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let containers = self.lock();
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let proc = match req.exec_id.as_str() {
            "" => &c.init,
            e => &c.execs.get(e).ok_or_else(|| not_found(e))?.proc,
        };
        let mut resp = StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.clone(),
            pid: proc.pid as u32,
            stdout: c.log_path.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        resp.status = proc.status().into();
        if let Some(exit) = proc.exit {
            resp.exit_status = exit.code as u32;
            resp.exited_at = timestamp(exit.exited_ns);
        }
        Ok(resp)
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        self.do_delete(&req)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        self.do_kill(&req)?;
        Ok(Empty::default())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(&req.spec.value).map_err(|e| {
                err(
                    ttrpc::Code::INVALID_ARGUMENT,
                    format!("exec process spec: {e}"),
                )
            })?;
        let mut containers = self.lock();
        let c = containers
            .get_mut(&req.id)
            .ok_or_else(|| not_found(&req.id))?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(err(
                ttrpc::Code::ALREADY_EXISTS,
                format!("exec {} already exists", req.exec_id),
            ));
        }
        c.execs.insert(
            req.exec_id.clone(),
            ExecProc {
                process,
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                pty: None,
                proc: Proc::default(),
                cancelled: false,
            },
        );
        Ok(Empty::default())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let containers = self.lock();
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        if let Some(paths) = req.annotations.get(ATTACH) {
            let (tee, stdin) = attachable(&req.id, c)?;
            drop(containers);
            return attach(&req.id, &tee, stdin.as_ref(), paths);
        }
        if req.annotations.contains_key(REOPEN_LOG) {
            if let Some(log) = &c.log {
                log.reopen()
                    .map_err(|e| err(ttrpc::Code::INTERNAL, format!("reopening log: {e}")))?;
            }
            return Ok(Empty::default());
        }
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(&req.resources.value)
                .map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, format!("resources: {e}")))?;
        if let Some(g) = &c.cgroup {
            g.apply(&resources).map_err(|e| {
                err(
                    ttrpc::Code::INVALID_ARGUMENT,
                    format!("container {}: {e}", req.id),
                )
            })?;
        }
        Ok(Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let exit = self.wait_exit(&req.id, &req.exec_id)?;
        Ok(WaitResponse {
            exit_status: exit.code as u32,
            exited_at: timestamp(exit.exited_ns),
            ..Default::default()
        })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let containers = self.lock();
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let stats = match &c.cgroup {
            Some(g) => g
                .stats()
                .map_err(|e| err(ttrpc::Code::INTERNAL, format!("container {}: {e}", req.id)))?,
            None => Default::default(),
        };
        let value = serde_json::to_vec(&StatsJson::from(&stats))
            .map_err(|e| err(ttrpc::Code::INTERNAL, e.to_string()))?;
        Ok(StatsResponse {
            stats: MessageField::some(Any {
                type_url: "io.cairn.stats.v1".into(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let containers = self.lock();
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let pids = c
            .cgroup
            .as_ref()
            .and_then(|g| g.procs().ok())
            .unwrap_or_default();
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| containerd_shim_protos::types::task::ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let task_pid = self
            .lock()
            .get(&req.id)
            .map(|c| c.init.pid as u32)
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let containers = self.lock();
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let pty = match req.exec_id.as_str() {
            "" => c.pty.as_ref(),
            e => c.execs.get(e).ok_or_else(|| not_found(e))?.pty.as_ref(),
        };
        let Some(pty) = pty else {
            return Err(err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("container {} has no terminal to resize", req.id),
            ));
        };
        streams::resize(pty, req.width, req.height)
            .map_err(|e| err(ttrpc::Code::INTERNAL, format!("resizing terminal: {e}")))?;
        Ok(Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let stdin = {
            let containers = self.lock();
            let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            c.stdin.clone()
        };
        // Closing may wait for a feeder's write into a full pipe: not under the lock.
        if let (Some(stdin), true) = (stdin, req.exec_id.is_empty() && req.stdin) {
            stdin.close();
        }
        Ok(Empty::default())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        self.do_shutdown();
        Ok(Empty::default())
    }
}

#[cfg(test)]
mod tests;
