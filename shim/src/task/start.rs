//! Starting a container or an exec (Task Start): the held process released, an exec
//! launched into a running container (built-in or OCI runtime).
//! Runs in cairn-shim.

use super::*;

impl TaskService {
    pub(super) fn do_start(&self, req: &StartRequest) -> Result<u32, ttrpc::Error> {
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

    pub(super) fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32, ttrpc::Error> {
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
    pub(super) fn start_oci_exec(
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
}
