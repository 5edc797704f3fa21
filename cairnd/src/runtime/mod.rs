//! cairnd's pod and container lifecycle: records in a database in the state dir, one
//! `cairn-shim` per pod reached over ttrpc, and the CRI semantics kubelet relies on (name reuse,
//! idempotent stop/remove, exit reasons). cairnd keeps nothing in memory that it could
//! not rebuild from the store and the shims: [`Runtime::recover`] reconnects after a
//! restart and learns the exits that happened while it was down.
//!
//! Each shim is watched through a pidfd. A shim that dies (`kill -9`, a crash) is
//! handled by [`Runtime::shim_lost`]: cairnd kills what is left in its containers'
//! cgroups, removes them, unmounts what the shim had mounted, records the containers
//! exited and the pod not ready, so that stop and remove find nothing left to do.
//!
//! A pod that does not use the host network is attached to the CNI network in use once
//! its shim made its namespace, and detached (DEL) when it stops or its shim dies. With
//! no CNI config file at all such a pod gets loopback only (NetworkReady is false); an
//! invalid config makes RunPodSandbox fail before anything is made.
//!
//! A pod's CRI `runtime_handler` picks what its shim runs containers with: cairn's
//! built-in launcher ("", "cairn"), or an OCI runtime binary from `[runtimes.<name>]`.
//! Runs in cairnd.

mod container_create;
mod container_remove;
mod container_start;
mod container_stop;
mod exec;
mod host;
mod records;
mod recover;
mod sandbox_remove;
mod sandbox_run;
mod sandbox_stop;
mod stats;
mod streams;
#[cfg(test)]
mod tests;
mod update;

pub use host::{Host, Machine};
pub use records::{ContainerRecord, PodRecord};
pub use streams::StreamingRuntime;

use records::*;
use sandbox_run::pod_hostname;

use crate::cni::{self, Cni, CniConfig};
use crate::config::{RuntimeHandler, RuntimeKind};
use crate::error::Error;
use crate::spec::{self, ContainerContext, PodContext};
use cairn_kernel::cgroup::{Cgroup, Layout};
use cairn_proto::cri;
use cairn_proto::shim::bundle::{overlay_to, REOPEN_LOG, SECCOMP_PROGRAM, STDIN_ONCE};
use cairn_proto::shim::exec as execsync;
use cairn_proto::shim::exit::{exit_path, read_exit, read_exit_record};
use cairn_proto::shim::pod as podns;
use cairn_proto::shim::stats::StatsJson;
use cairn_snapshotter::image::ImageService;
use cairn_snapshotter::store::{SnapshotKind, Store};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim::shim as task;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::ttrpc;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, Mutex};

use cairn_kernel::process::now_ns;

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(e.to_string())
}

fn store_err(e: cairn_snapshotter::Error) -> Error {
    Error::from(e)
}

fn ttrpc_status(what: &str, e: ttrpc::Error) -> Error {
    match e {
        ttrpc::Error::RpcStatus(s) => {
            let msg = format!("{what}: {}", s.message);
            match s.code() {
                ttrpc::Code::NOT_FOUND => Error::not_found(msg),
                ttrpc::Code::INVALID_ARGUMENT => Error::invalid_argument(msg),
                ttrpc::Code::ALREADY_EXISTS => Error::already_exists(msg),
                ttrpc::Code::FAILED_PRECONDITION => Error::failed_precondition(msg),
                _ => Error::internal(msg),
            }
        }
        other => Error::unavailable(format!("{what}: pod shim unreachable: {other}")),
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

/// A change of a container's state, for `GetContainerEvents`: the container as it was
/// right after the change.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub kind: cri::ContainerEventType,
    pub container: ContainerRecord,
    pub at: i64,
}

/// The runtime state shared by the CRI handlers.
pub struct Runtime {
    pub images: Arc<ImageService>,
    state: PathBuf,
    /// Shim processes, their connections, and unmounts: the machine, or a test's stand-in.
    host: Arc<dyn Host>,
    shims: Mutex<HashMap<String, ShimClient>>,
    /// Serialises changes to pod and container records.
    lock: Mutex<()>,
    events: broadcast::Sender<ContainerEvent>,
    /// The cgroup hierarchies, for cleaning up after a shim that died.
    layout: Option<Layout>,
    /// Pods whose shim process is being watched for an unexpected exit.
    monitored: std::sync::Mutex<HashSet<String>>,
    /// The configured runtime handlers (`[runtimes.<name>]`).
    handlers: BTreeMap<String, RuntimeHandler>,
    /// Pod networking.
    cni: Cni,
    /// Pod and container records, in [`RECORDS_DB`] in the state dir (a tmpfs on a node):
    /// their commits cost no disk sync, and they survive a cairnd crash but not a reboot,
    /// like the pods themselves.
    records: Store,
    /// Each container's OCI process as created: the template of its execs.
    processes: std::sync::Mutex<HashMap<String, oci_spec::runtime::Process>>,
    /// Compiled seccomp programs, handed to the shims in the bundles.
    seccomp: cairn_kernel::seccomp::ProgramCache,
}

impl Runtime {
    /// The runtime with the given runtime handlers (`Config::runtimes`) and CNI settings
    /// (`Config::cni_config`), on this machine.
    pub fn with_handlers(
        images: Arc<ImageService>,
        state: &Path,
        handlers: BTreeMap<String, RuntimeHandler>,
        cni: CniConfig,
    ) -> anyhow::Result<Arc<Runtime>> {
        let layout = Layout::detect().ok();
        Runtime::on_host(
            images,
            state,
            handlers,
            cni,
            Arc::new(Machine::new()),
            layout,
        )
    }

    /// The runtime on `host`, with the cgroup hierarchies of `layout` (None: cgroups are
    /// left to the shim, as on a host without them).
    pub fn on_host(
        images: Arc<ImageService>,
        state: &Path,
        handlers: BTreeMap<String, RuntimeHandler>,
        cni: CniConfig,
        host: Arc<dyn Host>,
        layout: Option<Layout>,
    ) -> anyhow::Result<Arc<Runtime>> {
        for d in ["pods", "containers"] {
            std::fs::create_dir_all(state.join(d))?;
        }
        let records = open_records(state, images.metadata())?;
        let (events, _) = broadcast::channel(256);
        Ok(Arc::new(Runtime {
            images,
            state: state.to_path_buf(),
            host,
            shims: Mutex::new(HashMap::new()),
            lock: Mutex::new(()),
            events,
            layout,
            monitored: std::sync::Mutex::new(HashSet::new()),
            handlers,
            cni: Cni::new(cni),
            records,
            processes: std::sync::Mutex::new(HashMap::new()),
            seccomp: Default::default(),
        }))
    }

    fn store(&self) -> &Store {
        &self.records
    }

    pub fn pods(&self) -> Result<Vec<PodRecord>, Error> {
        self.store().list_records(PODS).map_err(store_err)
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>, Error> {
        self.store().list_records(CONTAINERS).map_err(store_err)
    }

    pub fn pod(&self, id: &str) -> Result<PodRecord, Error> {
        self.find_pod(id)?
            .ok_or_else(|| Error::not_found(format!("pod sandbox {id} not found")))
    }

    fn find_pod(&self, id: &str) -> Result<Option<PodRecord>, Error> {
        self.find_record(PODS, "pod sandbox", id, |p: &PodRecord| p.id.as_str())
    }

    /// A record by full ID or by a unique prefix of it, as crictl users type them.
    fn find_record<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        what: &str,
        id: &str,
        id_of: fn(&T) -> &str,
    ) -> Result<Option<T>, Error> {
        if id.is_empty() {
            return Err(Error::invalid_argument(format!("{what} ID is empty")));
        }
        if let Some(r) = self.store().get_record(table, id).map_err(store_err)? {
            return Ok(Some(r));
        }
        let mut matches: Vec<T> = self
            .store()
            .list_records::<T>(table)
            .map_err(store_err)?
            .into_iter()
            .filter(|r| id_of(r).starts_with(id))
            .collect();
        Ok(if matches.len() == 1 {
            matches.pop()
        } else {
            None
        })
    }

    pub fn container(&self, id: &str) -> Result<ContainerRecord, Error> {
        self.find_container(id)?
            .ok_or_else(|| Error::not_found(format!("container {id} not found")))
    }

    fn find_container(&self, id: &str) -> Result<Option<ContainerRecord>, Error> {
        self.find_record(CONTAINERS, "container", id, |c: &ContainerRecord| {
            c.id.as_str()
        })
    }

    fn save_pod(&self, p: &PodRecord) -> Result<(), Error> {
        self.store().put_record(PODS, &p.id, p).map_err(store_err)
    }

    fn save_container(&self, c: &ContainerRecord) -> Result<(), Error> {
        self.store()
            .put_record(CONTAINERS, &c.id, c)
            .map_err(store_err)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ContainerEvent> {
        self.events.subscribe()
    }

    fn event(&self, c: &ContainerRecord, kind: cri::ContainerEventType) {
        let _ = self.events.send(ContainerEvent {
            kind,
            container: c.clone(),
            at: now_ns(),
        });
    }

    async fn shim(&self, pod: &PodRecord) -> Result<TaskClient, Error> {
        Ok(self.shim_client(pod).await?.task)
    }

    /// The pod's shim connection, made on first use and kept.
    async fn shim_client(&self, pod: &PodRecord) -> Result<ShimClient, Error> {
        if let Some(c) = self.shims.lock().await.get(&pod.id) {
            return Ok(c.clone());
        }
        let conn = self.host.connect_shim(pod).await?;
        let client = ShimClient {
            task: TaskClient::new(conn.clone()),
            conn,
        };
        self.shims
            .lock()
            .await
            .insert(pod.id.clone(), client.clone());
        Ok(client)
    }

    /// The NetworkReady condition: the CNI network in use, or why there is none.
    pub fn network_status(&self) -> Result<String, String> {
        self.cni.status()
    }

    /// The pod's IPs, as its CNI ADD result gave them (empty when it has none).
    pub fn pod_network_status(&self, pod: &PodRecord) -> cri::PodSandboxNetworkStatus {
        self.cni
            .result(&pod.id)
            .map(|r| r.to_cri())
            .unwrap_or_default()
    }

    /// The runtime handler names pods may ask for ("" is the default), each with
    /// whether it is the built-in launcher.
    pub fn handlers(&self) -> Vec<(String, bool)> {
        let mut out = vec![(String::new(), true)];
        if !self.handlers.contains_key("cairn") {
            out.push(("cairn".to_string(), true));
        }
        out.extend(
            self.handlers
                .iter()
                .map(|(name, h)| (name.clone(), h.kind == RuntimeKind::Cairn)),
        );
        out
    }

    /// What a CRI runtime handler runs containers with: None for the built-in launcher
    /// ("", "cairn" or a handler of type "cairn"), the binary of an OCI runtime handler.
    fn oci_runtime(&self, handler: &str) -> Result<Option<PathBuf>, Error> {
        if let Some(h) = self.handlers.get(handler) {
            return match (h.kind, &h.path) {
                (RuntimeKind::Cairn, _) => Ok(None),
                (RuntimeKind::Oci, Some(path)) if path.is_file() => Ok(Some(path.clone())),
                (RuntimeKind::Oci, path) => Err(Error::failed_precondition(format!(
                    "runtime handler {handler:?}: the runtime binary {} does not exist",
                    path.as_deref().unwrap_or(Path::new("")).display()
                ))),
            };
        }
        if handler.is_empty() || handler == "cairn" {
            return Ok(None);
        }
        Err(Error::invalid_argument(format!(
            "RunPodSandbox: no runtime for handler {handler:?} (configured: \"\", \"cairn\"{})",
            self.handlers
                .keys()
                .map(|k| format!(", {k:?}"))
                .collect::<String>()
        )))
    }

    /// The container's cgroup, as recorded (or as it was named before it was recorded).
    fn cgroup_of(&self, pod: &PodRecord, c: &ContainerRecord) -> Option<Cgroup> {
        let layout = self.layout.as_ref()?;
        let path = if c.cgroup_path.is_empty() {
            spec::cgroup_path(&pod_context(pod).cgroup_parent, &c.id)
        } else {
            c.cgroup_path.clone()
        };
        Cgroup::new(layout, &path).ok()
    }

    /// Kills whatever is left in the container's cgroup and removes it (the shim does
    /// this on Delete; this is for when the shim cannot).
    async fn cleanup_cgroup(&self, pod: &PodRecord, c: &ContainerRecord) {
        let Some(cgroup) = self.cgroup_of(pod, c) else {
            return;
        };
        // `exists` and `delete` also cover the dir in the hybrid layout's unified
        // hierarchy (which an external OCI runtime makes too).
        if !cgroup.exists() {
            return;
        }
        let id = c.id.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = cgroup.kill_all() {
                tracing::warn!(container = %id, error = %e, "killing the container's processes");
            }
            if let Err(e) = cgroup.delete() {
                tracing::warn!(container = %id, error = %e, "removing the container's cgroup");
            }
        })
        .await;
    }
}

/// A pod's shim connection: the Task API client and the raw connection under it (for
/// cairn's own services, such as [`execsync`]).
#[derive(Clone)]
struct ShimClient {
    task: TaskClient,
    conn: ttrpc::asynchronous::Client,
}

fn wait_req(id: &str) -> task::WaitRequest {
    task::WaitRequest {
        id: id.to_string(),
        ..Default::default()
    }
}

fn exited_ns(w: &task::WaitResponse) -> i64 {
    w.exited_at
        .as_ref()
        .map(|t| t.seconds * 1_000_000_000 + t.nanos as i64)
        .unwrap_or_else(now_ns)
}

fn is_host_network(config: &cri::PodSandboxConfig) -> bool {
    namespace_mode(config, |o| o.network) == cri::NamespaceMode::Node
}

/// The pod as CNI sees it, with the namespace its shim holds.
fn pod_network(p: &PodRecord) -> Result<cni::PodNetwork, Error> {
    cni::PodNetwork::from_sandbox(&p.id, &p.config, &podns::ns_path(&p.dir, "net"))
        .map_err(|e| Error::invalid_argument(format!("pod sandbox {}: {e}", p.id)))
}

fn namespace_mode(
    config: &cri::PodSandboxConfig,
    pick: impl Fn(&cri::NamespaceOption) -> i32,
) -> cri::NamespaceMode {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map(|o| cri::NamespaceMode::try_from(pick(o)).unwrap_or(cri::NamespaceMode::Pod))
        .unwrap_or(cri::NamespaceMode::Pod)
}

/// What the spec builder needs to know about a pod.
pub fn pod_context(pod: &PodRecord) -> PodContext {
    let host_network = namespace_mode(&pod.config, |o| o.network) == cri::NamespaceMode::Node;
    let host_ipc = namespace_mode(&pod.config, |o| o.ipc) == cri::NamespaceMode::Node;
    let pid_mode = namespace_mode(&pod.config, |o| o.pid);
    let linux = pod.config.linux.clone().unwrap_or_default();
    PodContext {
        pod_id: pod.id.clone(),
        hostname: pod_hostname(&pod.config),
        netns: (!host_network).then(|| podns::ns_path(&pod.dir, "net")),
        ipcns: (!host_ipc).then(|| podns::ns_path(&pod.dir, "ipc")),
        utsns: (!host_network).then(|| podns::ns_path(&pod.dir, "uts")),
        // POD: one pid namespace for the pod, held by the shim's holder process.
        pidns: (pid_mode == cri::NamespaceMode::Pod).then(|| podns::ns_path(&pod.dir, "pid")),
        host_pid: pid_mode == cri::NamespaceMode::Node,
        resolv_conf: Some(pod.dir.join("resolv.conf")),
        hosts: pod.dir.join("hosts"),
        hostname_file: pod.dir.join("hostname"),
        shm: (!host_ipc).then(|| podns::shm_path(&pod.dir)),
        cgroup_parent: linux.cgroup_parent.clone(),
        sysctls: linux.sysctls.clone(),
        userns: spec::requested_userns(&pod.config).map(|u| spec::PodUserns {
            path: podns::ns_path(&pod.dir, "user"),
            uids: u.uids.clone(),
            gids: u.gids.clone(),
        }),
    }
}
