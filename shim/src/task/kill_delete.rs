//! Signals and removal (Task Kill, Delete, Shutdown): a container or exec signalled, a
//! container deleted with its cgroup, mounts and exit record, the shim shut down.
//! Runs in cairn-shim.

use super::*;

impl TaskService {
    pub(super) fn do_kill(&self, req: &KillRequest) -> Result<(), ttrpc::Error> {
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

    pub(super) fn do_delete(&self, req: &DeleteRequest) -> Result<DeleteResponse, ttrpc::Error> {
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
    pub(super) fn do_shutdown(&self) {
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

/// Lazily unmounts a rootfs the shim mounted (nothing happens if it is not mounted).
pub(super) fn unmount(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
}
