//! Running a command in a container (CRI ExecSync): one call to the shim's ExecSync, or the
//! Task API with a shim from before it; a caller that goes away takes the command with it.
//! Runs in cairnd.

use super::*;

impl Runtime {
    /// Runs a command in a running container and returns (stdout, stderr, exit code):
    /// one call to the shim's ExecSync ([`execsync`]), or the Task API's Exec, Start, Wait
    /// and Delete with a shim from before it. Each stream keeps its first
    /// [`execsync::OUTPUT_LIMIT`] bytes. A timeout (seconds, > 0) kills the command and
    /// fails with DEADLINE_EXCEEDED; a caller that goes away takes the command with it.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<(Vec<u8>, Vec<u8>, i32), Error> {
        let rec = self.running(id)?;
        if cmd.is_empty() {
            return Err(Error::invalid_argument("ExecSync: cmd is empty"));
        }
        let pod = self.pod(&rec.pod_id)?;
        let client = self.shim_client(&pod).await?;
        let bundle = self.state.join("containers").join(&rec.id);
        let mut process = self.process_template(&rec.id, &bundle)?;
        process.set_args(Some(cmd));
        process.set_terminal(Some(false));
        let exec_id = new_id()[..16].to_string();
        let value = serde_json::to_vec(&process).map_err(internal)?;
        let req = execsync::ExecSyncRequest {
            id: rec.id.clone(),
            exec_id: exec_id.clone(),
            process: value,
            timeout_ms: u64::try_from(timeout).unwrap_or(0).saturating_mul(1000),
        };
        let guard = CancelOnDrop::new(&client.conn, &rec.id, &exec_id);
        let answer = execsync::exec_sync(&client.conn, &req).await;
        guard.disarm();
        let what = || format!("exec in container {}", rec.id);
        let Some(res) = answer.map_err(|e| ttrpc_status(&what(), e))? else {
            return self
                .exec_sync_by_task(&client.task, &req, &bundle, timeout)
                .await;
        };
        if res.timed_out {
            return Err(timed_out(&rec.id, timeout));
        }
        if res.stdout_dropped + res.stderr_dropped > 0 {
            tracing::warn!(
                container = %rec.id,
                stdout_dropped = res.stdout_dropped,
                stderr_dropped = res.stderr_dropped,
                limit = execsync::OUTPUT_LIMIT,
                "ExecSync output over the limit was dropped"
            );
        }
        Ok((res.stdout, res.stderr, res.exit_code))
    }

    /// ExecSync through the Task API, for a shim without the ExecSync service: the exec
    /// writes to files in the bundle, read (up to the same limit) and removed afterwards.
    pub(super) async fn exec_sync_by_task(
        &self,
        client: &TaskClient,
        sync: &execsync::ExecSyncRequest,
        bundle: &Path,
        timeout: i64,
    ) -> Result<(Vec<u8>, Vec<u8>, i32), Error> {
        let exec_id = &sync.exec_id;
        let out = bundle.join(format!("exec-{exec_id}.out"));
        let err = bundle.join(format!("exec-{exec_id}.err"));
        let exec = ExecRef::new(client, &sync.id, exec_id);
        let mut req = exec.request(sync.process.clone());
        req.stdout = out.display().to_string();
        req.stderr = err.display().to_string();
        let result = exec.run(&req, timeout).await;
        exec.finish().await;
        let stdout = read_capped(&out, execsync::OUTPUT_LIMIT);
        let stderr = read_capped(&err, execsync::OUTPUT_LIMIT);
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&err);
        Ok((stdout, stderr, result?))
    }

    /// Keeps the container's process as the template of its execs.
    pub(super) fn remember_process(&self, id: &str, oci: &oci_spec::runtime::Spec) {
        if let Some(process) = oci.process() {
            self.processes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_string(), process.clone());
        }
    }

    pub(super) fn forget_process(&self, id: &str) {
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The template of a container's execs: its process as created, from memory (or from
    /// its bundle's config.json for a container created before a restart).
    pub(super) fn process_template(
        &self,
        id: &str,
        bundle: &Path,
    ) -> Result<oci_spec::runtime::Process, Error> {
        let known = self
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        if let Some(process) = known {
            return Ok(process);
        }
        let path = bundle.join("config.json");
        let spec = oci_spec::runtime::Spec::load(&path)
            .map_err(|e| internal(format!("container {id}: {}: {e}", path.display())))?;
        self.remember_process(id, &spec);
        spec.process()
            .clone()
            .ok_or_else(|| internal(format!("container {id}: its spec has no process")))
    }
}

/// One exec in a container's shim, for `ExecSync` and streamed `Exec`. Dropped before
/// [`finish`](ExecRef::finish) (the caller's request was cancelled, e.g. kubelet gave up
/// or the client left), it kills and forgets the exec in the background, as containerd
/// does when kubelet cancels the request context.
pub(super) struct ExecRef {
    client: TaskClient,
    id: String,
    exec_id: String,
    finished: bool,
}

impl ExecRef {
    pub(super) fn new(client: &TaskClient, id: &str, exec_id: &str) -> ExecRef {
        ExecRef {
            client: client.clone(),
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            finished: false,
        }
    }

    pub(super) fn what(&self) -> String {
        format!("exec in container {}", self.id)
    }

    /// The `ExecProcessRequest` for `process` (JSON OCI Process); streams are the caller's.
    pub(super) fn request(&self, process: Vec<u8>) -> task::ExecProcessRequest {
        task::ExecProcessRequest {
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            spec: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: process,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(super) fn wait_req(&self) -> task::WaitRequest {
        task::WaitRequest {
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            ..Default::default()
        }
    }

    /// Creates and starts the exec.
    pub(super) async fn create_and_start(
        &self,
        req: &task::ExecProcessRequest,
    ) -> Result<(), Error> {
        self.client
            .exec(ctx(), req)
            .await
            .map_err(|e| ttrpc_status(&self.what(), e))?;
        let start = task::StartRequest {
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            ..Default::default()
        };
        self.client
            .start(ctx(), &start)
            .await
            .map_err(|e| ttrpc_status(&self.what(), e))?;
        Ok(())
    }

    /// Waits for the exec's exit code.
    pub(super) async fn wait(&self) -> Result<i32, Error> {
        let w = self.client.wait(ctx(), &self.wait_req()).await;
        Ok(w.map_err(|e| ttrpc_status(&self.what(), e))?.exit_status as i32)
    }

    /// Creates, starts and waits for the exec; a timeout (seconds, > 0) kills it.
    pub(super) async fn run(
        &self,
        req: &task::ExecProcessRequest,
        timeout: i64,
    ) -> Result<i32, Error> {
        self.create_and_start(req).await?;
        if timeout <= 0 {
            return self.wait().await;
        }
        let limit = Duration::from_secs(timeout as u64);
        if let Ok(code) = tokio::time::timeout(limit, self.wait()).await {
            return code;
        }
        kill_exec(&self.client, &self.id, &self.exec_id).await;
        Err(timed_out(&self.id, timeout))
    }

    /// Forgets the exec in the shim once it is over (whatever happened to it).
    pub(super) async fn finish(mut self) {
        self.finished = true;
        delete_exec(&self.client, &self.id, &self.exec_id).await;
    }
}

impl Drop for ExecRef {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (client, id, exec_id) = (self.client.clone(), self.id.clone(), self.exec_id.clone());
        tokio::spawn(async move {
            kill_exec(&client, &id, &exec_id).await;
            delete_exec(&client, &id, &exec_id).await;
        });
    }
}

/// The error of an ExecSync killed at its deadline.
pub(super) fn timed_out(id: &str, timeout: i64) -> Error {
    Error::deadline_exceeded(format!(
        "ExecSync in {id}: command timed out after {timeout}s and was killed"
    ))
}

/// The first `limit` bytes of a file (empty if it cannot be read).
pub(super) fn read_capped(path: &Path, limit: usize) -> Vec<u8> {
    use std::io::Read;
    let mut data = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(limit as u64).read_to_end(&mut data);
    }
    data
}

/// The guard of an exec sync call: dropped armed (cairnd's caller went away while the
/// shim ran the command), it asks the shim, in the background, to kill the command.
pub(super) struct CancelOnDrop {
    conn: Option<ttrpc::asynchronous::Client>,
    id: String,
    exec_id: String,
}

impl CancelOnDrop {
    pub(super) fn new(conn: &ttrpc::asynchronous::Client, id: &str, exec_id: &str) -> CancelOnDrop {
        CancelOnDrop {
            conn: Some(conn.clone()),
            id: id.to_string(),
            exec_id: exec_id.to_string(),
        }
    }

    /// The call is over: nothing to cancel.
    pub(super) fn disarm(mut self) {
        self.conn = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let (id, exec_id) = (
            std::mem::take(&mut self.id),
            std::mem::take(&mut self.exec_id),
        );
        tokio::spawn(async move {
            if let Err(e) = execsync::cancel(&conn, &id, &exec_id).await {
                tracing::warn!(container = %id, error = %e, "cancelling an ExecSync");
            }
        });
    }
}

/// SIGKILLs an exec and waits (at most 10 s) until the shim has its exit.
pub(super) async fn kill_exec(client: &TaskClient, id: &str, exec_id: &str) {
    let kill = task::KillRequest {
        id: id.to_string(),
        exec_id: exec_id.to_string(),
        signal: libc::SIGKILL as u32,
        ..Default::default()
    };
    let _ = client.kill(ctx(), &kill).await;
    let wait = task::WaitRequest {
        id: id.to_string(),
        exec_id: exec_id.to_string(),
        ..Default::default()
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), client.wait(ctx(), &wait)).await;
}

pub(super) async fn delete_exec(client: &TaskClient, id: &str, exec_id: &str) {
    let req = task::DeleteRequest {
        id: id.to_string(),
        exec_id: exec_id.to_string(),
        ..Default::default()
    };
    let _ = client.delete(ctx(), &req).await;
}
