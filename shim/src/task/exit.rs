//! Exits: a waiter thread per process, the exit recorded durably under `<pod dir>/exits/`
//! and in memory, pending Waits answered, and what is left in the cgroup of an exited init
//! killed.
//! Runs in cairn-shim.

use super::*;

impl TaskService {
    /// Waits for `pid` on a small thread of its own and records its exit.
    pub(super) fn spawn_waiter(&self, id: String, exec_id: Option<String>, pid: i32) {
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

    pub(super) fn record_exit(&self, id: &str, exec_id: Option<&str>, code: i32) {
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

    /// Blocks until the process has an exit.
    pub(super) fn wait_exit(&self, id: &str, exec_id: &str) -> Result<Exit, ttrpc::Error> {
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
    pub(super) fn notify_exits(&self) {
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
}

/// Reaps `pid` on a small thread of its own, whenever it exits.
pub(super) fn reap_later(pid: i32) {
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

pub(super) fn wait_code(pid: i32) -> i32 {
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

/// The answer to a Wait for `exec_id` of `id` (empty: the container's init) if there is
/// one now: its exit, or why there will be none.
pub(super) fn wait_outcome(
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
