//! ExecSync, cairn's one-call exec beside the Task API: a slot reserved, the exec launched
//! with pipes, its output collected, cancels that arrive before their call remembered.
//! Runs in cairn-shim.

use super::*;

impl TaskService {
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
    pub(super) fn reserve_exec_sync(
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
    pub(super) fn spawn_exec_sync(
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
    pub(super) fn exec_sync_started(&self, id: &str, exec_id: &str, pid: i32) -> bool {
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
    pub(super) fn take_early_cancel(&self, id: &str, exec_id: &str) -> bool {
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
}

/// What launching an exec in a container needs, copied out of its record.
pub(super) struct ExecTarget {
    /// The container's init.
    pid: i32,
    bundle: PathBuf,
    cgroup_dirs: Vec<PathBuf>,
    seccomp: Option<Arc<cairn_kernel::seccomp::Program>>,
}

/// An exec sync's entry among its container's execs; forgotten when dropped.
pub(super) struct ExecSlot {
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

/// A running container and one of its execs, or why not.
pub(super) fn running_exec<'a>(
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
