//! A stand-in for the machine ([`Host`]) in the lifecycle's unit tests: each pod's "shim"
//! is an in-process ttrpc server on the pod's `shim.sock` serving the Task API the real
//! shim serves, which records every call, can be told to fail one, and holds Wait until
//! the container is killed. Nothing is mounted, forked or signalled, so the tests run
//! without root.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim::shim as task;
use containerd_shim_protos::shim_async::{create_task, Task};
use containerd_shim_protos::ttrpc::{self, asynchronous::Server, asynchronous::TtrpcContext};
use futures::future::BoxFuture;
use tokio::sync::{watch, Notify};

use crate::error::Error;
use crate::runtime::{Host, PodRecord};

/// What the fake machine saw and what it is told to do.
#[derive(Default)]
pub(super) struct FakeHost {
    state: Arc<Shared>,
    servers: Mutex<HashMap<String, Server>>,
}

#[derive(Default)]
struct Shared {
    /// "start_shim <args...>", "create <id>", "start <id>", "kill <id> <signal>",
    /// "delete <id>", "wait <id>", "shutdown", "unmount <path>", "release <dir>", "kill_shim".
    calls: Mutex<Vec<String>>,
    /// A Task method name → the code its next call fails with.
    failing: Mutex<HashMap<String, ttrpc::Code>>,
    /// `start_shim` fails while set.
    shim_fails: Mutex<Option<String>>,
    /// `connect_shim` fails while set (a shim that started but does not answer).
    connects_fail: Mutex<bool>,
    /// Each pod's shim: true once it exited.
    exited: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Containers killed (their Wait returns).
    killed: Mutex<HashSet<String>>,
    kills: Notify,
    next_pid: Mutex<u32>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn record(&self, call: String) {
        lock(&self.calls).push(call);
    }

    fn fail(&self, method: &str) -> ttrpc::Result<()> {
        match lock(&self.failing).remove(method) {
            Some(code) => Err(ttrpc::error::get_rpc_status(
                code,
                format!("{method} failed (as the test asked)"),
            )),
            None => Ok(()),
        }
    }

    fn pid(&self) -> u32 {
        let mut n = lock(&self.next_pid);
        *n += 1;
        40_000 + *n
    }

    fn exit(&self, pod: &str) {
        if let Some(tx) = lock(&self.exited).get(pod) {
            tx.send_replace(true);
        }
    }
}

impl FakeHost {
    /// Every call so far, in order.
    pub(super) fn calls(&self) -> Vec<String> {
        lock(&self.state.calls).clone()
    }

    /// The calls so far that start with `prefix`.
    pub(super) fn calls_of(&self, prefix: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(prefix))
            .collect()
    }

    /// The next call of the Task method `method` fails with `code`.
    pub(super) fn fail_next(&self, method: &str, code: ttrpc::Code) {
        lock(&self.state.failing).insert(method.to_string(), code);
    }

    /// Shims fail to start (with `why` in their log) until told otherwise.
    pub(super) fn shims_fail(&self, why: Option<&str>) {
        *lock(&self.state.shim_fails) = why.map(str::to_string);
    }

    /// Shims that started cannot be reached while `on`.
    pub(super) fn connects_fail(&self, on: bool) {
        *lock(&self.state.connects_fail) = on;
    }

    /// The pod's shim dies on its own (as after `kill -9`).
    pub(super) fn crash(&self, pod: &str) {
        lock(&self.servers).remove(pod);
        self.state.exit(pod);
    }

    /// The pods whose shim still serves.
    pub(super) fn running_shims(&self) -> usize {
        lock(&self.state.exited)
            .values()
            .filter(|tx| !*tx.borrow())
            .count()
    }
}

#[async_trait]
impl Host for FakeHost {
    async fn start_shim(&self, pod: &PodRecord, args: Vec<OsString>) -> Result<u32, Error> {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        self.state.record(format!("start_shim {}", args.join(" ")));
        if let Some(why) = lock(&self.state.shim_fails).clone() {
            return Err(Error::internal(format!(
                "pod {}: shim did not start: {why}",
                pod.id
            )));
        }
        let sock = format!("unix://{}", pod.dir.join("shim.sock").display());
        let service = create_task(Arc::new(FakeTask {
            state: self.state.clone(),
            pod: pod.id.clone(),
        }));
        let mut server = Server::new()
            .bind(&sock)
            .map_err(|e| Error::internal(format!("fake shim: {e}")))?
            .register_service(service);
        server
            .start()
            .await
            .map_err(|e| Error::internal(format!("fake shim: {e}")))?;
        lock(&self.servers).insert(pod.id.clone(), server);
        lock(&self.state.exited).insert(pod.id.clone(), watch::channel(false).0);
        Ok(self.state.pid())
    }

    async fn connect_shim(&self, pod: &PodRecord) -> Result<ttrpc::asynchronous::Client, Error> {
        if !self.shim_alive(pod) || *lock(&self.state.connects_fail) {
            return Err(Error::unavailable(format!(
                "pod {}: shim unreachable",
                pod.id
            )));
        }
        let sock = format!("unix://{}", pod.dir.join("shim.sock").display());
        ttrpc::asynchronous::Client::connect(&sock)
            .await
            .map_err(|e| Error::unavailable(format!("pod {}: shim unreachable: {e}", pod.id)))
    }

    fn shim_alive(&self, pod: &PodRecord) -> bool {
        lock(&self.state.exited)
            .get(&pod.id)
            .is_some_and(|tx| !*tx.borrow())
    }

    fn shim_exit(&self, pod: &PodRecord) -> BoxFuture<'static, bool> {
        let rx = lock(&self.state.exited)
            .get(&pod.id)
            .map(watch::Sender::subscribe);
        Box::pin(async move {
            let Some(mut rx) = rx else {
                return true;
            };
            let exited = rx.wait_for(|exited| *exited).await.is_ok();
            exited
        })
    }

    fn kill_shim(&self, pod: &PodRecord) {
        self.state.record("kill_shim".into());
        lock(&self.servers).remove(&pod.id);
        self.state.exit(&pod.id);
    }

    fn unmount(&self, path: &Path) {
        self.state.record(format!("unmount {}", path.display()));
    }

    fn release_pod(&self, pod_dir: &Path) {
        self.state.record(format!("release {}", pod_dir.display()));
    }
}

/// The Task API of one pod's fake shim.
struct FakeTask {
    state: Arc<Shared>,
    pod: String,
}

#[async_trait]
impl Task for FakeTask {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: task::CreateTaskRequest,
    ) -> ttrpc::Result<task::CreateTaskResponse> {
        self.state.record(format!("create {}", req.id));
        self.state.fail("create")?;
        Ok(task::CreateTaskResponse {
            pid: self.state.pid(),
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: task::StartRequest,
    ) -> ttrpc::Result<task::StartResponse> {
        self.state.record(format!("start {}", req.id));
        self.state.fail("start")?;
        Ok(task::StartResponse {
            pid: self.state.pid(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: task::KillRequest) -> ttrpc::Result<Empty> {
        self.state.record(format!("kill {} {}", req.id, req.signal));
        self.state.fail("kill")?;
        lock(&self.state.killed).insert(req.id);
        self.state.kills.notify_waiters();
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: task::WaitRequest,
    ) -> ttrpc::Result<task::WaitResponse> {
        self.state.record(format!("wait {}", req.id));
        loop {
            let notified = self.state.kills.notified();
            if lock(&self.state.killed).contains(&req.id) {
                break;
            }
            notified.await;
        }
        Ok(task::WaitResponse {
            exit_status: 137,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: task::DeleteRequest,
    ) -> ttrpc::Result<task::DeleteResponse> {
        self.state.record(format!("delete {}", req.id));
        self.state.fail("delete")?;
        Ok(task::DeleteResponse::default())
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: task::ShutdownRequest,
    ) -> ttrpc::Result<Empty> {
        self.state.record("shutdown".into());
        self.state.exit(&self.pod);
        Ok(Empty::new())
    }
}
