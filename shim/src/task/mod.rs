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

/// The answer to a Wait for `exec_id` of `id` (empty: the container's init) if there is
/// one now: its exit, or why there will be none.
fn wait_outcome(
    containers: &HashMap<String, Container>,
    id: &str,
    exec_id: &str,
) -> Option<Result<Exit, ttrpc::Error>> {
    let Some(c) = containers.get(id) else {
        return Some(Err(not_found(id)));
    };
    let exit = match exec_id {
        "" => c.init.exit,
        e => match c.execs.get(e) {
            Some(x) => x.proc.exit,
            None => {
                return Some(Err(err(
                    ttrpc::Code::NOT_FOUND,
                    format!("exec {e} of container {id} not found"),
                )))
            }
        },
    };
    if let Some(exit) = exit {
        return Some(Ok(exit));
    }
    if exec_id.is_empty() && c.init.pid == 0 {
        return Some(Err(err(
            ttrpc::Code::FAILED_PRECONDITION,
            format!("container {id} has no process"),
        )));
    }
    None
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

    fn do_create(&self, req: &CreateTaskRequest) -> Result<u32, ttrpc::Error> {
        if self.lock().contains_key(&req.id) {
            return Err(err(
                ttrpc::Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let config = Path::new(&req.bundle).join("config.json");
        let spec = oci_spec::runtime::Spec::load(&config).map_err(|e| {
            err(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("container {}: reading {}: {e}", req.id, config.display()),
            )
        })?;
        let overlay = match req.rootfs.first() {
            Some(m) => Some(overlay_from(m).map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, e))?),
            None => None,
        };
        let (cgroup, made_by_cairnd) = self.make_cgroup(&req.id, &spec)?;
        let oom_before = cgroup
            .as_ref()
            .and_then(|c| c.oom_kills().ok())
            .unwrap_or(0);
        let log = match req.stdout.as_str() {
            "" => None,
            path => Some(LogFile::open(Path::new(path)).map_err(|e| {
                err(
                    ttrpc::Code::INVALID_ARGUMENT,
                    format!("container {}: opening log {path}: {e}", req.id),
                )
            })?),
        };
        let wants_stdin = !req.stdin.is_empty();
        let mut stdin_w = None;
        let (stdio, readers) = if req.terminal {
            (Stdio::Terminal, Vec::new())
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let stdin = match wants_stdin {
                true => {
                    let (r, w) = pipe()?;
                    stdin_w = Some(std::fs::File::from(w));
                    Some(r)
                }
                false => None,
            };
            (
                Stdio::Pipes {
                    stdin,
                    stdout: out_w,
                    stderr: err_w,
                },
                vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            )
        };
        // The pipes' copiers start while the process is set up; if the launch fails, its
        // ends are closed and the copiers stop at end of file, having written nothing.
        let tee = Arc::new(Tee::default());
        self.spawn_copiers(&req.id, readers, &log, &tee);
        let (pid, pty_master, pending, rootfs_mount) = match self.launch(
            &req.id,
            &req.bundle,
            &spec,
            overlay.as_ref(),
            &cgroup,
            made_by_cairnd,
            stdio,
        ) {
            Ok(l) => l,
            Err(e) => {
                if let Some(c) = &cgroup {
                    let _ = c.delete();
                }
                return Err(err(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("container {}: {e}", req.id),
                ));
            }
        };
        let seccomp = match &pending {
            Pending::Builtin(created) => created.seccomp.clone(),
            Pending::Oci => None,
        };
        let mut pty = None;
        if let Some(master) = pty_master {
            let dup = |fd: &OwnedFd| {
                streams::dup_file(fd).map_err(|e| err(ttrpc::Code::INTERNAL, format!("dup: {e}")))
            };
            pty = Some(dup(&master)?);
            if wants_stdin {
                stdin_w = Some(dup(&master)?);
            }
            self.spawn_copiers(&req.id, vec![(master, Stream::Stdout)], &log, &tee);
        }
        let once = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(STDIN_ONCE))
            .is_some_and(|v| v == "true");
        let stdin = stdin_w.map(|w| Stdin::new(w, once, req.terminal));
        self.lock().insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                rootfs_mount,
                log_path: req.stdout.clone(),
                cgroup,
                oom_before,
                init: Proc {
                    pid,
                    created: Some(pending),
                    started: false,
                    exit: None,
                },
                execs: HashMap::new(),
                log,
                stdin,
                tee,
                pty,
                seccomp,
                released: None,
            },
        );
        self.spawn_waiter(req.id.clone(), None, pid);
        Ok(pid as u32)
    }

    /// Creates the container process with the built-in launcher or the pod's OCI
    /// runtime: (pid, terminal master, start handle, rootfs the shim mounted).
    #[allow(clippy::type_complexity)]
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        id: &str,
        bundle: &str,
        spec: &oci_spec::runtime::Spec,
        overlay: Option<&OverlayMount>,
        cgroup: &Option<Cgroup>,
        device_rules_installed: bool,
        stdio: Stdio,
    ) -> Result<(i32, Option<OwnedFd>, Pending, Option<PathBuf>), String> {
        let wanted_adj = spec.process().as_ref().and_then(|p| p.oom_score_adj());
        let oom_score_adj = wanted_adj.map(cairn_kernel::cgroup::clamp_oom_score_adj);
        let Some(oci) = &self.inner.oci else {
            let opts = launch::CreateOptions {
                spec,
                overlay,
                cgroup_dirs: cgroup.as_ref().map(|c| c.join_dirs()).unwrap_or_default(),
                stdio,
                oom_score_adj,
                seccomp: compiled_seccomp(Path::new(bundle))?,
                device_rules_installed,
            };
            let mut created = launch::create(opts).map_err(|e| e.to_string())?;
            let master = created.pty_master.take();
            return Ok((created.pid, master, Pending::Builtin(created), None));
        };
        let bundle = Path::new(bundle);
        if oom_score_adj != wanted_adj {
            // The runtime writes the spec's value, which this process may not be allowed
            // to set: give it the clamped one.
            let mut spec = spec.clone();
            if let Some(p) = spec.process_mut().as_mut() {
                p.set_oom_score_adj(oom_score_adj);
            }
            spec.save(bundle.join("config.json"))
                .map_err(|e| format!("rewriting config.json: {e}"))?;
        }
        let rootfs = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .ok_or("the spec has no root")?;
        let rootfs = if rootfs.is_absolute() {
            rootfs
        } else {
            bundle.join(rootfs)
        };
        let mounted = match overlay {
            Some(o) => {
                cairn_kernel::overlay::mount(o, &rootfs, false)
                    .map_err(|e| format!("mounting the rootfs: {e}"))?;
                Some(rootfs)
            }
            None => None,
        };
        match oci.create(id, bundle, stdio) {
            Ok(c) => Ok((c.pid, c.pty_master, Pending::Oci, mounted)),
            Err(e) => {
                let _ = oci.delete(id);
                if let Some(m) = &mounted {
                    unmount(m);
                }
                Err(e.to_string())
            }
        }
    }

    /// Copies a container's outputs to its log and attached clients, on a small thread.
    fn spawn_copiers(
        &self,
        id: &str,
        outputs: Vec<(OwnedFd, Stream)>,
        log: &Option<Arc<LogFile>>,
        tee: &Arc<Tee>,
    ) {
        if outputs.is_empty() {
            return;
        }
        if let Err(e) = spawn_copiers(outputs, log.clone(), tee.clone()) {
            tracing::warn!(container = %id, error = %e, "log copier");
        }
    }

    /// The container's cgroup: made by cairnd already (with the spec's limits and device
    /// rules: the flag says so), or made here with its limits.
    fn make_cgroup(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(Option<Cgroup>, bool), ttrpc::Error> {
        let (Some(layout), Some(linux)) = (&self.inner.layout, spec.linux()) else {
            return Ok((None, false));
        };
        let Some(path) = linux.cgroups_path() else {
            return Ok((None, false));
        };
        let fail = |e: cairn_kernel::cgroup::CgroupError| {
            err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("container {id}: {e}"),
            )
        };
        let cgroup = Cgroup::new(layout, &path.display().to_string()).map_err(fail)?;
        if cgroup.exists() {
            return Ok((Some(cgroup), true));
        }
        cgroup.create().map_err(fail)?;
        if let Some(r) = linux.resources() {
            if let Err(e) = cgroup.apply(r) {
                let _ = cgroup.delete();
                return Err(fail(e));
            }
        }
        Ok((Some(cgroup), false))
    }

    /// Waits for `pid` on a small thread of its own and records its exit.
    fn spawn_waiter(&self, id: String, exec_id: Option<String>, pid: i32) {
        let svc = self.clone();
        let spawned = std::thread::Builder::new()
            .name("wait".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let code = wait_code(pid);
                svc.record_exit(&id, exec_id.as_deref(), code);
            });
        if let Err(e) = spawned {
            tracing::error!(pid, error = %e, "cannot start a waiter thread");
        }
    }

    fn record_exit(&self, id: &str, exec_id: Option<&str>, code: i32) {
        let exited_ns = now_ns();
        let mut containers = self.lock();
        let Some(c) = containers.get_mut(id) else {
            return;
        };
        let Some(exec_id) = exec_id else {
            let oom = c
                .cgroup
                .as_ref()
                .and_then(|g| g.oom_kills().ok())
                .is_some_and(|n| n > c.oom_before);
            let cgroup = c.cgroup.clone();
            let released = c.released.take();
            drop(containers);
            // Written before it exited (or the pipe closed when it exec'd): no wait.
            let start_failure = released.and_then(launch::Released::failure);
            // The container ends with its init: what it left behind (possible when it
            // shares the pod's or the host's pid namespace) and its execs are killed.
            if let Some(g) = cgroup {
                if let Err(e) = g.kill_all() {
                    tracing::warn!(container = id, error = %e, "killing what the container left");
                }
            }
            let exit = Exit {
                code,
                exited_ns,
                oom,
            };
            if let Err(e) = write_exit(&self.inner.pod_dir, id, &exit, start_failure) {
                tracing::error!(container = id, error = %e, "recording exit");
            }
            if let Some(c) = self.lock().get_mut(id) {
                c.init.exit = Some(exit);
            }
            self.notify_exits();
            return;
        };
        if let Some(x) = c.execs.get_mut(exec_id) {
            x.proc.exit = Some(Exit {
                code,
                exited_ns,
                oom: false,
            });
        }
        drop(containers);
        self.notify_exits();
    }

    fn do_start(&self, req: &StartRequest) -> Result<u32, ttrpc::Error> {
        if !req.exec_id.is_empty() {
            return self.start_exec(&req.id, &req.exec_id);
        }
        let mut containers = self.lock();
        let c = containers
            .get_mut(&req.id)
            .ok_or_else(|| not_found(&req.id))?;
        if c.init.started || c.init.exit.is_some() {
            return Err(err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("container {} was already started", req.id),
            ));
        }
        let created = c.init.created.take().ok_or_else(|| {
            err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("container {} is not created", req.id),
            )
        })?;
        let pid = c.init.pid;
        let started = match (created, &self.inner.oci) {
            // Released under the lock (one byte into an empty pipe): its exit, however
            // soon, is recorded after `released` is in place to say why.
            (Pending::Builtin(created), _) => created.release().map(|released| {
                c.released = Some(released);
                c.init.started = true;
            }),
            (Pending::Oci, Some(oci)) => {
                drop(containers);
                let started = oci.start(&req.id);
                if started.is_ok() {
                    if let Some(c) = self.lock().get_mut(&req.id) {
                        c.init.started = true;
                    }
                }
                started
            }
            (Pending::Oci, None) => Err(launch::LaunchError::InvalidSpec(
                "no OCI runtime configured in this shim".into(),
            )),
        };
        started
            .map(|()| pid as u32)
            .map_err(|e| err(ttrpc::Code::FAILED_PRECONDITION, e.to_string()))
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32, ttrpc::Error> {
        if let Some(oci) = &self.inner.oci {
            return self.start_oci_exec(oci, id, exec_id);
        }
        let (target, process, paths, terminal, cgroup_dirs, seccomp) = {
            let containers = self.lock();
            let (c, x) = running_exec(&containers, id, exec_id)?;
            (
                c.init.pid,
                x.process.clone(),
                [x.stdin.clone(), x.stdout.clone(), x.stderr.clone()],
                x.terminal,
                c.cgroup.as_ref().map(|g| g.join_dirs()).unwrap_or_default(),
                c.seccomp.clone(),
            )
        };
        let [stdin, stdout, stderr] = paths;
        // The streams are opened before the process exists, so that a client gone by now
        // fails the exec instead of leaving a process nobody starts or reaps.
        let mut terminal_io = None;
        let stdio = match terminal {
            true => {
                terminal_io = Some((open_input(&stdin)?, open_output(&stdout)?));
                Stdio::Terminal
            }
            false => Stdio::Pipes {
                stdin: open_input(&stdin)?,
                stdout: open_output(&stdout)?,
                stderr: open_output(&stderr)?,
            },
        };
        let mut created =
            launch::exec(target, &process, seccomp, &cgroup_dirs, stdio).map_err(|e| {
                err(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("exec in {id}: {e}"),
                )
            })?;
        let pty = match (created.pty_master.take(), terminal_io) {
            (Some(master), Some((input, output))) => Some(connect_terminal(master, input, output)?),
            _ => None,
        };
        let pid = created.pid;
        if let Some(x) = self
            .lock()
            .get_mut(id)
            .and_then(|c| c.execs.get_mut(exec_id))
        {
            x.proc.pid = pid;
            x.pty = pty;
        }
        self.spawn_waiter(id.to_string(), Some(exec_id.to_string()), pid);
        match created.start() {
            Ok(()) => {
                if let Some(x) = self
                    .lock()
                    .get_mut(id)
                    .and_then(|c| c.execs.get_mut(exec_id))
                {
                    x.proc.started = true;
                }
                Ok(pid as u32)
            }
            Err(e) => Err(err(ttrpc::Code::FAILED_PRECONDITION, e.to_string())),
        }
    }

    /// An exec through the pod's OCI runtime (`exec --detach`): the process runs when
    /// the runtime returns.
    fn start_oci_exec(
        &self,
        oci: &OciRuntime,
        id: &str,
        exec_id: &str,
    ) -> Result<u32, ttrpc::Error> {
        let (bundle, process, stdin, stdout, stderr) = {
            let containers = self.lock();
            let (c, x) = running_exec(&containers, id, exec_id)?;
            if x.terminal {
                return Err(err(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!(
                        "exec in {id}: a terminal is not supported with an external OCI runtime"
                    ),
                ));
            }
            (
                PathBuf::from(&c.bundle),
                x.process.clone(),
                x.stdin.clone(),
                x.stdout.clone(),
                x.stderr.clone(),
            )
        };
        let stdio = Stdio::Pipes {
            stdin: open_input(&stdin)?,
            stdout: open_output(&stdout)?,
            stderr: open_output(&stderr)?,
        };
        let pid = oci
            .exec(id, exec_id, &bundle, &process, stdio)
            .map_err(|e| {
                err(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("exec in {id}: {e}"),
                )
            })?;
        if let Some(x) = self
            .lock()
            .get_mut(id)
            .and_then(|c| c.execs.get_mut(exec_id))
        {
            x.proc.pid = pid;
            x.proc.started = true;
        }
        // The runtime has exited: the process is our child now (we are its subreaper).
        self.spawn_waiter(id.to_string(), Some(exec_id.to_string()), pid);
        Ok(pid as u32)
    }

    /// Runs an exec to its end in one call (`cairn.shim.v1.Exec/ExecSync`): registers it
    /// under its exec id (so that `Kill` and [`cancel_exec_sync`](Self::cancel_exec_sync)
    /// reach it), launches it without a start handshake, collects its output from pipes
    /// (each stream up to [`cairn_proto::shim::exec::OUTPUT_LIMIT`]), kills it at the deadline,
    /// then forgets and reaps it. Errors are those of the Task API's Exec and Start.
    pub fn exec_sync(&self, req: &ExecSyncRequest) -> Result<ExecSyncResponse, ttrpc::Error> {
        let (id, exec_id) = (req.id.as_str(), req.exec_id.as_str());
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(&req.process).map_err(|e| {
                err(
                    ttrpc::Code::INVALID_ARGUMENT,
                    format!("exec process spec: {e}"),
                )
            })?;
        let (slot, target) = self.reserve_exec_sync(id, exec_id, &process)?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let stdio = Stdio::Pipes {
            stdin: None,
            stdout: out_w,
            stderr: err_w,
        };
        let pid = self.spawn_exec_sync(id, exec_id, &target, &process, stdio)?;
        if !self.exec_sync_started(id, exec_id, pid) {
            // Cancelled meanwhile, or forgotten by a Delete: nobody wants its result.
            // SAFETY: kill(2) on our child, not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = (req.timeout_ms > 0)
            .then(|| std::time::Instant::now() + std::time::Duration::from_millis(req.timeout_ms));
        let collected = crate::collect::collect(pid, [out_r, err_r], deadline);
        // Forgotten before it is reaped: no Kill can reach its pid once it is reused.
        drop(slot);
        let exit_code = match collected.exited {
            true => wait_code(pid),
            false => {
                tracing::warn!(
                    container = id,
                    pid,
                    "exec survived SIGKILL; reaping it later"
                );
                reap_later(pid);
                128 + libc::SIGKILL
            }
        };
        Ok(ExecSyncResponse {
            exit_code,
            stdout: collected.stdout.data,
            stderr: collected.stderr.data,
            timed_out: collected.timed_out,
            stdout_dropped: collected.stdout.dropped,
            stderr_dropped: collected.stderr.dropped,
        })
    }

    /// Checks that container `id` runs and takes `exec_id` for an exec sync; returns the
    /// slot (forgotten on drop) and what the launch needs.
    fn reserve_exec_sync(
        &self,
        id: &str,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
    ) -> Result<(ExecSlot, ExecTarget), ttrpc::Error> {
        let mut containers = self.lock();
        if self.take_early_cancel(id, exec_id) {
            return Err(err(
                ttrpc::Code::CANCELLED,
                format!("exec {exec_id} in {id} was cancelled"),
            ));
        }
        let c = containers.get_mut(id).ok_or_else(|| not_found(id))?;
        if c.execs.contains_key(exec_id) {
            return Err(err(
                ttrpc::Code::ALREADY_EXISTS,
                format!("exec {exec_id} already exists"),
            ));
        }
        if !c.init.started || c.init.exit.is_some() {
            return Err(err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("container {id} is not running"),
            ));
        }
        let target = ExecTarget {
            pid: c.init.pid,
            bundle: PathBuf::from(&c.bundle),
            cgroup_dirs: c.cgroup.as_ref().map(|g| g.join_dirs()).unwrap_or_default(),
            seccomp: c.seccomp.clone(),
        };
        c.execs.insert(
            exec_id.to_string(),
            ExecProc {
                process: process.clone(),
                stdin: String::new(),
                stdout: String::new(),
                stderr: String::new(),
                terminal: false,
                pty: None,
                proc: Proc::default(),
                cancelled: false,
            },
        );
        let slot = ExecSlot {
            svc: self.clone(),
            id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        Ok((slot, target))
    }

    /// Launches an exec sync's process with the built-in launcher (no start handshake) or
    /// the pod's OCI runtime; returns its pid once it runs.
    fn spawn_exec_sync(
        &self,
        id: &str,
        exec_id: &str,
        target: &ExecTarget,
        process: &oci_spec::runtime::Process,
        stdio: Stdio,
    ) -> Result<i32, ttrpc::Error> {
        let failed = |e: launch::LaunchError| {
            // The messages of the Task API path: a command that cannot run is reported by
            // its Start, as is; the rest by its Exec, with the container named.
            let msg = match e {
                launch::LaunchError::Exec(_) | launch::LaunchError::NotRunning(_) => e.to_string(),
                e => format!("exec in {id}: {e}"),
            };
            err(ttrpc::Code::FAILED_PRECONDITION, msg)
        };
        match &self.inner.oci {
            None => launch::exec_now(
                target.pid,
                process,
                target.seccomp.clone(),
                &target.cgroup_dirs,
                stdio,
            )
            .map(|running| running.pid)
            .map_err(failed),
            Some(oci) => oci
                .exec(id, exec_id, &target.bundle, process, stdio)
                .map_err(|e| {
                    err(
                        ttrpc::Code::FAILED_PRECONDITION,
                        format!("exec in {id}: {e}"),
                    )
                }),
        }
    }

    /// Records the pid of a running exec sync; false if it was cancelled or forgotten.
    fn exec_sync_started(&self, id: &str, exec_id: &str, pid: i32) -> bool {
        let mut containers = self.lock();
        let Some(x) = containers
            .get_mut(id)
            .and_then(|c| c.execs.get_mut(exec_id))
        else {
            return false;
        };
        x.proc.pid = pid;
        x.proc.started = true;
        !x.cancelled
    }

    /// Kills exec sync `exec_id` of container `id` (its caller went away), or, if it has
    /// no process yet, makes sure it never runs one.
    pub fn cancel_exec_sync(&self, id: &str, exec_id: &str) {
        let mut containers = self.lock();
        let Some(x) = containers
            .get_mut(id)
            .and_then(|c| c.execs.get_mut(exec_id))
        else {
            let mut early = self
                .inner
                .early_cancels
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if early.len() >= MAX_EARLY_CANCELS {
                early.pop_front();
            }
            early.push_back((id.to_string(), exec_id.to_string()));
            return;
        };
        x.cancelled = true;
        if x.proc.pid > 0 && x.proc.exit.is_none() {
            // SAFETY: kill(2) on a process this shim started and has not reaped (an exec
            // sync is forgotten before it is reaped).
            unsafe { libc::kill(x.proc.pid, libc::SIGKILL) };
        }
    }

    /// Whether exec sync `exec_id` of `id` was cancelled before it came (and forgets that).
    /// Called with the containers lock held.
    fn take_early_cancel(&self, id: &str, exec_id: &str) -> bool {
        let mut early = self
            .inner
            .early_cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(i) = early.iter().position(|(c, e)| c == id && e == exec_id) else {
            return false;
        };
        early.remove(i);
        true
    }

    /// Blocks until the process has an exit.
    fn wait_exit(&self, id: &str, exec_id: &str) -> Result<Exit, ttrpc::Error> {
        let mut containers = self.lock();
        loop {
            if let Some(outcome) = wait_outcome(&containers, id, exec_id) {
                return outcome;
            }
            containers = self
                .inner
                .exited
                .wait(containers)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The Task API's Wait without a thread waiting: `done` gets what [`Task::wait`]
    /// would return, at once or when the process exits (called on the thread that records
    /// the exit, with no lock held).
    pub fn wait_then(&self, id: &str, exec_id: &str, done: WaitDone) {
        let containers = self.lock();
        if let Some(outcome) = wait_outcome(&containers, id, exec_id) {
            drop(containers);
            return done(outcome);
        }
        // Registered under the containers lock: no exit can slip in between.
        self.inner
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Waiter {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
                done,
            });
    }

    /// Wakes whoever waits for an exit: Wait calls blocked on the condition variable and
    /// those registered by [`wait_then`](Self::wait_then) that have an answer now.
    fn notify_exits(&self) {
        self.inner.exited.notify_all();
        let answered: Vec<(WaitDone, Result<Exit, ttrpc::Error>)> = {
            let containers = self.lock();
            let mut waiters = self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner());
            let mut answered = Vec::new();
            for w in std::mem::take(&mut *waiters) {
                match wait_outcome(&containers, &w.id, &w.exec_id) {
                    Some(outcome) => answered.push((w.done, outcome)),
                    None => waiters.push(w),
                }
            }
            answered
        };
        for (done, outcome) in answered {
            done(outcome);
        }
    }

    fn do_kill(&self, req: &KillRequest) -> Result<(), ttrpc::Error> {
        let containers = self.lock();
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let signal = req.signal as i32;
        if req.all && req.exec_id.is_empty() {
            if let Some(g) = &c.cgroup {
                if signal == libc::SIGKILL {
                    return g.kill_all().map_err(|e| {
                        err(ttrpc::Code::INTERNAL, format!("container {}: {e}", req.id))
                    });
                }
                for pid in g.procs().unwrap_or_default() {
                    // SAFETY: kill(2) with a pid from the container's own cgroup.
                    unsafe { libc::kill(pid, signal) };
                }
                return Ok(());
            }
        }
        let proc = match req.exec_id.as_str() {
            "" => &c.init,
            e => &c.execs.get(e).ok_or_else(|| not_found(e))?.proc,
        };
        if proc.exit.is_some() || proc.pid <= 0 {
            // Already gone: killing it again is not an error (kubelet retries stops).
            return Ok(());
        }
        // SAFETY: kill(2) on a process this shim started and has not reaped.
        let r = unsafe { libc::kill(proc.pid, signal) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(err(
                    ttrpc::Code::INTERNAL,
                    format!("kill {}: {e}", proc.pid),
                ));
            }
        }
        Ok(())
    }

    fn do_delete(&self, req: &DeleteRequest) -> Result<DeleteResponse, ttrpc::Error> {
        let mut containers = self.lock();
        if !req.exec_id.is_empty() {
            let c = containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            let x = c
                .execs
                .remove(&req.exec_id)
                .ok_or_else(|| not_found(&req.exec_id))?;
            drop(containers);
            // A Wait on it ends (NOT_FOUND).
            self.notify_exits();
            let exit = x.proc.exit.unwrap_or(Exit {
                code: 255,
                exited_ns: now_ns(),
                oom: false,
            });
            return Ok(DeleteResponse {
                pid: x.proc.pid as u32,
                exit_status: exit.code as u32,
                exited_at: timestamp(exit.exited_ns),
                ..Default::default()
            });
        }
        let Some(c) = containers.get(&req.id) else {
            return Err(not_found(&req.id));
        };
        if c.init.exit.is_none() && c.init.started {
            return Err(err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("container {} is still running", req.id),
            ));
        }
        let c = containers
            .remove(&req.id)
            .ok_or_else(|| not_found(&req.id))?;
        drop(containers);
        self.notify_exits();
        // A created-but-never-started process exits when its start handle is dropped;
        // the OCI runtime removes its state (killing what is left).
        drop(c.init.created);
        if let Some(oci) = &self.inner.oci {
            if let Err(e) = oci.delete(&req.id) {
                tracing::warn!(container = %req.id, error = %e, "runtime delete");
            }
        }
        if let Some(m) = &c.rootfs_mount {
            unmount(m);
        }
        if let Some(g) = &c.cgroup {
            let _ = g.kill_all();
            if let Err(e) = g.delete() {
                tracing::warn!(container = %req.id, error = %e, "deleting cgroup");
            }
        }
        let exit = c.init.exit.unwrap_or(Exit {
            code: 255,
            exited_ns: now_ns(),
            oom: false,
        });
        Ok(DeleteResponse {
            pid: c.init.pid as u32,
            exit_status: exit.code as u32,
            exited_at: timestamp(exit.exited_ns),
            ..Default::default()
        })
    }

    /// Kills every container, deletes their cgroups and tells the main thread to exit.
    fn do_shutdown(&self) {
        let containers: Vec<(String, Option<Cgroup>, i32)> = self
            .lock()
            .iter()
            .map(|(id, c)| (id.clone(), c.cgroup.clone(), c.init.pid))
            .collect();
        for (_, cgroup, pid) in &containers {
            match cgroup {
                Some(g) => {
                    let _ = g.kill_all();
                }
                None if *pid > 0 => {
                    // SAFETY: kill(2) on a process this shim started.
                    unsafe { libc::kill(*pid, libc::SIGKILL) };
                }
                None => {}
            }
        }
        for (id, _, _) in &containers {
            let _ = self.do_delete(&DeleteRequest {
                id: id.clone(),
                ..Default::default()
            });
        }
        if let Some(tx) = self
            .inner
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(());
        }
    }
}

/// What an attach to container `id` joins: its output tee and its open stdin, if it is
/// running.
fn attachable(id: &str, c: &Container) -> Result<(Arc<Tee>, Option<Arc<Stdin>>), ttrpc::Error> {
    if !c.init.started || c.init.exit.is_some() {
        return Err(err(
            ttrpc::Code::FAILED_PRECONDITION,
            format!("container {id} is not running"),
        ));
    }
    Ok((c.tee.clone(), c.stdin.clone()))
}

/// Attaches cairnd's FIFOs (JSON [`AttachPaths`]) to a container's streams. Called without
/// the containers lock: the opens do not block, but nothing here needs the lock.
fn attach(id: &str, tee: &Tee, stdin: Option<&Arc<Stdin>>, paths: &str) -> ttrpc::Result<Empty> {
    let paths: AttachPaths = serde_json::from_str(paths)
        .map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, format!("attach paths: {e}")))?;
    let fail = |what: &str, e: std::io::Error| {
        err(
            ttrpc::Code::INVALID_ARGUMENT,
            format!("attaching to container {id}: {what}: {e}"),
        )
    };
    if !paths.stdin.is_empty() && stdin.is_none() {
        return Err(err(
            ttrpc::Code::FAILED_PRECONDITION,
            format!("container {id} was not created with stdin"),
        ));
    }
    let mut sinks = Vec::new();
    for (path, stream) in [
        (&paths.stdout, Stream::Stdout),
        (&paths.stderr, Stream::Stderr),
    ] {
        if !path.is_empty() {
            sinks.push((
                stream,
                streams::open_writer(path).map_err(|e| fail(path, e))?,
            ));
        }
    }
    let feeder = match (stdin, paths.stdin.as_str()) {
        (Some(stdin), path) if !path.is_empty() => Some((
            stdin,
            streams::open_reader(path).map_err(|e| fail(path, e))?,
        )),
        _ => None,
    };
    for (stream, sink) in sinks {
        tee.add(stream, sink);
    }
    if let Some((stdin, src)) = feeder {
        stdin
            .spawn_feeder(src)
            .map_err(|e| fail("starting the stdin feeder", e))?;
    }
    Ok(Empty::default())
}

/// What launching an exec in a container needs, copied out of its record.
struct ExecTarget {
    /// The container's init.
    pid: i32,
    bundle: PathBuf,
    cgroup_dirs: Vec<PathBuf>,
    seccomp: Option<Arc<cairn_kernel::seccomp::Program>>,
}

/// An exec sync's entry among its container's execs; forgotten when dropped.
struct ExecSlot {
    svc: TaskService,
    id: String,
    exec_id: String,
}

impl Drop for ExecSlot {
    fn drop(&mut self) {
        if let Some(c) = self.svc.lock().get_mut(&self.id) {
            c.execs.remove(&self.exec_id);
        }
        // A Task API Wait on it ends (NOT_FOUND) instead of waiting for another exit.
        self.svc.notify_exits();
    }
}

/// Reaps `pid` on a small thread of its own, whenever it exits.
fn reap_later(pid: i32) {
    let spawned = std::thread::Builder::new()
        .name("reap".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            wait_code(pid);
        });
    if let Err(e) = spawned {
        tracing::error!(pid, error = %e, "cannot start a reaper thread");
    }
}

/// A running container and one of its execs, or why not.
fn running_exec<'a>(
    containers: &'a HashMap<String, Container>,
    id: &str,
    exec_id: &str,
) -> Result<(&'a Container, &'a ExecProc), ttrpc::Error> {
    let c = containers.get(id).ok_or_else(|| not_found(id))?;
    if !c.init.started || c.init.exit.is_some() {
        return Err(err(
            ttrpc::Code::FAILED_PRECONDITION,
            format!("container {id} is not running"),
        ));
    }
    let x = c.execs.get(exec_id).ok_or_else(|| {
        err(
            ttrpc::Code::NOT_FOUND,
            format!("exec {exec_id} of container {id} not found"),
        )
    })?;
    Ok((c, x))
}

fn wait_code(pid: i32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            if libc::WIFSIGNALED(status) {
                return 128 + libc::WTERMSIG(status);
            }
            continue;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        // Reaped elsewhere (a failed start): its status is lost.
        return 255;
    }
}

/// Lazily unmounts a rootfs the shim mounted (nothing happens if it is not mounted).
fn unmount(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ttrpc::Error> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| err(ttrpc::Code::INTERNAL, format!("pipe: {e}")))
}

/// An exec's stdin: the FIFO cairnd feeds, or /dev/null (None) without one.
fn open_input(path: &str) -> Result<Option<OwnedFd>, ttrpc::Error> {
    if path.is_empty() {
        return Ok(None);
    }
    streams::open_reader(path)
        .map(|f| Some(OwnedFd::from(f)))
        .map_err(|e| {
            err(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("exec input {path}: {e}"),
            )
        })
}

/// Joins an exec's terminal to its streams (output to `output`, `input` into it) on
/// small threads; returns a handle on the master for resizes.
fn connect_terminal(
    master: OwnedFd,
    input: Option<OwnedFd>,
    output: OwnedFd,
) -> Result<std::fs::File, ttrpc::Error> {
    let internal = |e: std::io::Error| err(ttrpc::Code::INTERNAL, format!("exec terminal: {e}"));
    let handle = streams::dup_file(&master).map_err(internal)?;
    if let Some(input) = input {
        let to_master = streams::dup_file(&master).map_err(internal)?;
        streams::spawn_terminal_input(std::fs::File::from(input), to_master).map_err(internal)?;
    }
    let out = std::fs::File::from(output);
    streams::spawn_copy("exec-stdout", std::fs::File::from(master), out).map_err(internal)?;
    Ok(handle)
}

fn open_output(path: &str) -> Result<OwnedFd, ttrpc::Error> {
    if path.is_empty() {
        return std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| err(ttrpc::Code::INTERNAL, format!("/dev/null: {e}")));
    }
    // Non-blocking open: a FIFO whose reader (cairnd) is gone fails instead of hanging.
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| streams::set_blocking(&f).map(|()| f));
    opened.map(OwnedFd::from).map_err(|e| {
        err(
            ttrpc::Code::INVALID_ARGUMENT,
            format!("exec output {path}: {e}"),
        )
    })
}

/// The compiled seccomp program cairnd left in the bundle ([`SECCOMP_PROGRAM`]), if any.
fn compiled_seccomp(bundle: &Path) -> Result<Option<Arc<cairn_kernel::seccomp::Program>>, String> {
    let path = bundle.join(SECCOMP_PROGRAM);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let program = cairn_kernel::seccomp::Program::from_bytes(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(Arc::new(program)))
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
