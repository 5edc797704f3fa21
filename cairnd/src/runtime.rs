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

mod streams;

pub use streams::StreamingRuntime;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use cairn_proto::cri;
use cairn_snapshotter::image::ImageService;
use cairn_snapshotter::store::{SnapshotKind, Store};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim::shim as task;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::ttrpc;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Mutex};

use crate::cni::{self, Cni, CniConfig};
use crate::config::{RuntimeHandler, RuntimeKind};
use crate::spec::{self, ContainerContext, PodContext};
use cairn_kernel::cgroup::{Cgroup, Layout};
use cairn_proto::shim::bundle::{overlay_to, REOPEN_LOG, SECCOMP_PROGRAM, STDIN_ONCE};
use cairn_proto::shim::exec as execsync;
use cairn_proto::shim::exit::{exit_path, read_exit, read_exit_record};
use cairn_proto::shim::pod as podns;
use cairn_proto::shim::stats::StatsJson;

const PODS: &str = "pods";
const CONTAINERS: &str = "containers";
/// The pod and container records' database, in the state dir.
const RECORDS_DB: &str = "runtime.redb";

/// A pod as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    pub ready: bool,
    pub created_ns: i64,
    pub shim_pid: u32,
    pub dir: PathBuf,
}

/// A container as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: cri::ContainerConfig,
    pub image_id: String,
    pub image_ref: String,
    pub state: i32,
    pub created_ns: i64,
    pub started_ns: i64,
    pub finished_ns: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub log_path: String,
    pub pid: u32,
    pub stop_signal: i32,
    /// The container's cgroup (relative to the hierarchy roots), so that cairnd can kill
    /// and remove it itself when the pod's shim is gone.
    #[serde(default)]
    pub cgroup_path: String,
    /// The identity its process runs as (uid, gid, supplemental groups), as resolved
    /// from the CRI config and the image at creation.
    #[serde(default)]
    pub user: Option<cri::LinuxContainerUser>,
}

fn now_ns() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64
}

fn new_id() -> String {
    let mut buf = [0u8; 32];
    if getrandom(&mut buf).is_err() {
        let t = now_ns().to_le_bytes();
        buf[..8].copy_from_slice(&t);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

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
    shim_bin: PathBuf,
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

/// Opens the records' database, moving into it the records that older versions kept in
/// the image store's database. The move resumes at every start until none are left there
/// (a record already in the new database is kept), so an interrupted one loses nothing.
fn open_records(state: &Path, image_store: &Store) -> anyhow::Result<Store> {
    let path = state.join(RECORDS_DB);
    let records =
        Store::open(&path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    for table in [PODS, CONTAINERS] {
        let moved = image_store.move_records(table, &records).map_err(|e| {
            anyhow::anyhow!("moving the {table} records to {}: {e}", path.display())
        })?;
        if moved > 0 {
            tracing::info!(
                table,
                moved,
                "moved records out of the image store's database"
            );
        }
    }
    Ok(records)
}

impl Runtime {
    /// The runtime with the given runtime handlers (`Config::runtimes`) and CNI settings
    /// (`Config::cni_config`).
    pub fn with_handlers(
        images: Arc<ImageService>,
        state: &Path,
        handlers: BTreeMap<String, RuntimeHandler>,
        cni: CniConfig,
    ) -> anyhow::Result<Arc<Runtime>> {
        let shim_bin = std::env::current_exe()?
            .parent()
            .map(|d| d.join("cairn-shim"))
            .unwrap_or_else(|| PathBuf::from("cairn-shim"));
        for d in ["pods", "containers"] {
            std::fs::create_dir_all(state.join(d))?;
        }
        let records = open_records(state, images.metadata())?;
        let (events, _) = broadcast::channel(256);
        Ok(Arc::new(Runtime {
            images,
            state: state.to_path_buf(),
            shim_bin,
            shims: Mutex::new(HashMap::new()),
            lock: Mutex::new(()),
            events,
            layout: Layout::detect().ok(),
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
        let sock = format!("unix://{}", pod.dir.join("shim.sock").display());
        let conn = ttrpc::asynchronous::Client::connect(&sock)
            .await
            .map_err(|e| Error::unavailable(format!("pod {}: shim unreachable: {e}", pod.id)))?;
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

    // ---- pods --------------------------------------------------------------------------

    pub async fn run_pod(
        self: &Arc<Self>,
        config: cri::PodSandboxConfig,
        handler: String,
    ) -> Result<String, Error> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::invalid_argument("RunPodSandbox: metadata is required"))?;
        if meta.name.is_empty() || meta.namespace.is_empty() {
            return Err(Error::invalid_argument(
                "RunPodSandbox: metadata.name and metadata.namespace are required",
            ));
        }
        spec::validate_sandbox(&config).map_err(|e| match e {
            spec::SpecError::InvalidArgument(m) => Error::invalid_argument(m),
            other => internal(other),
        })?;
        self.oci_runtime(&handler)?;
        let guard = self.lock.lock().await;
        if let Some(other) = self.pods()?.into_iter().find(|p| {
            p.config.metadata.as_ref().is_some_and(|m| {
                m.name == meta.name
                    && m.namespace == meta.namespace
                    && m.uid == meta.uid
                    && m.attempt == meta.attempt
            })
        }) {
            return Err(Error::already_exists(format!(
                "pod sandbox {}/{} (attempt {}) already exists as {}",
                meta.namespace, meta.name, meta.attempt, other.id
            )));
        }
        let id = new_id();
        let dir = self.state.join("pods").join(&id);
        let mut pod = PodRecord {
            id: id.clone(),
            config,
            runtime_handler: handler,
            ready: false,
            created_ns: now_ns(),
            shim_pid: 0,
            dir: dir.clone(),
        };
        // Recorded before anything is made, so a crash leaves something to clean up.
        self.save_pod(&pod)?;
        drop(guard);
        match self.start_pod(&mut pod).await {
            Ok(()) => {
                pod.ready = true;
                self.save_pod(&pod)?;
                self.monitor_shim(&pod);
                Ok(id)
            }
            Err(e) => {
                // A failed ADD undid itself; a record left means its undo failed too.
                if !is_host_network(&pod.config) && self.cni.recorded(&id) {
                    if let Ok(n) = pod_network(&pod) {
                        if let Err(e) = self.cni.del(&n).await {
                            tracing::warn!(pod = %id, error = %e, "detaching a pod that failed to start");
                        }
                    }
                }
                self.teardown_pod(&pod).await;
                if let Err(e) = std::fs::remove_dir_all(&pod.dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(pod = %id, error = %e, "removing {}", pod.dir.display());
                    }
                }
                let _ = self.store().delete_record(PODS, &id);
                Err(e)
            }
        }
    }

    async fn start_pod(&self, pod: &mut PodRecord) -> Result<(), Error> {
        // Fails before anything is made.
        let networked = self.network_wanted(pod)?;
        let userns = spec::requested_userns(&pod.config);
        if userns.is_some() && self.oci_runtime(&pod.runtime_handler)?.is_some() {
            return Err(Error::invalid_argument(format!(
                "pod sandbox {}: user namespaces need cairn's built-in launcher (idmapped \
                 rootfs); runtime handler {:?} runs an external OCI runtime",
                pod.id, pod.runtime_handler
            )));
        }
        std::fs::create_dir_all(&pod.dir).map_err(internal)?;
        let hostname = pod_hostname(&pod.config);
        write_pod_files(&pod.dir, &pod.config, &hostname).map_err(internal)?;
        let host_network = namespace_mode(&pod.config, |o| o.network) == cri::NamespaceMode::Node;
        let host_ipc = namespace_mode(&pod.config, |o| o.ipc) == cri::NamespaceMode::Node;
        let mut cmd = tokio::process::Command::new(&self.shim_bin);
        cmd.arg(&pod.id).arg(&pod.dir).arg(&hostname);
        if host_network {
            cmd.arg("--host-network");
        }
        if host_ipc {
            cmd.arg("--host-ipc");
        }
        if namespace_mode(&pod.config, |o| o.pid) == cri::NamespaceMode::Pod {
            cmd.arg("--share-pid");
        }
        if let Some(u) = userns {
            // The shim's format: `container:host:length`, as in /proc/<pid>/uid_map.
            for (flag, maps) in [("--uid-map", &u.uids), ("--gid-map", &u.gids)] {
                for m in maps {
                    cmd.arg(flag)
                        .arg(format!("{}:{}:{}", m.container_id, m.host_id, m.length));
                }
            }
        }
        if let Some(binary) = self.oci_runtime(&pod.runtime_handler)? {
            cmd.arg("--oci-runtime").arg(binary);
        }
        let log = std::fs::File::create(pod.dir.join("shim.log")).map_err(internal)?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(false);
        // The shim calls setsid first thing (a session of its own, so that signals to
        // cairnd's process group never reach it): with no pre_exec hook here, std starts
        // it with posix_spawn (vfork) instead of a fork of cairnd.
        let mut child = cmd
            .spawn()
            .map_err(|e| internal(format!("starting {}: {e}", self.shim_bin.display())))?;
        let stdout = child.stdout.take().ok_or_else(|| internal("shim stdout"))?;
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            use tokio::io::AsyncBufReadExt;
            let mut line = String::new();
            tokio::io::BufReader::new(stdout)
                .read_line(&mut line)
                .await
                .map(|_| line)
        })
        .await;
        // Reap the shim whenever it exits, so it never lingers as a zombie.
        let pid = child.id().unwrap_or(0);
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        match ready {
            Ok(Ok(line)) if line.starts_with("ready") => {}
            _ => {
                let log = std::fs::read_to_string(pod.dir.join("shim.log")).unwrap_or_default();
                return Err(Error::internal(format!(
                    "pod {}: shim did not start: {}",
                    pod.id,
                    log.trim()
                )));
            }
        }
        pod.shim_pid = pid;
        self.shim(pod).await?;
        if networked {
            self.cni.add(&pod_network(pod)?).await?;
        }
        Ok(())
    }

    /// Whether the pod is to be attached to a CNI network: not with the host network, nor
    /// when there is no CNI config at all (loopback only, as NetworkReady says); an
    /// invalid config is an error.
    fn network_wanted(&self, pod: &PodRecord) -> Result<bool, Error> {
        if is_host_network(&pod.config) {
            return Ok(false);
        }
        match self.cni.status() {
            Ok(_) => Ok(true),
            Err(e) if cni::conf::list_files(&self.cni.config().conf_dirs).is_empty() => {
                tracing::warn!(pod = %pod.id, "{e}: the pod gets loopback only");
                Ok(false)
            }
            Err(e) => Err(Error::failed_precondition(format!(
                "RunPodSandbox: CNI network not ready: {e}"
            ))),
        }
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

    /// Stops every container of the pod and its shim; idempotent.
    pub async fn stop_pod(&self, id: &str) -> Result<(), Error> {
        let Some(mut pod) = self.find_pod(id)? else {
            return Ok(());
        };
        for c in self
            .containers()?
            .into_iter()
            .filter(|c| c.pod_id == pod.id)
        {
            self.stop_container(&c.id, 0).await?;
        }
        // While the shim still holds the namespace; an error makes kubelet retry. A pod
        // stopped before (or whose shim died) was detached then, unless that DEL failed
        // and left its record; a ready pod is detached even without a record.
        if !is_host_network(&pod.config) && (pod.ready || self.cni.recorded(&pod.id)) {
            self.cni.del(&pod_network(&pod)?).await?;
        }
        self.teardown_pod(&pod).await;
        if pod.ready {
            pod.ready = false;
            self.save_pod(&pod)?;
        }
        Ok(())
    }

    /// Asks the shim to exit (it kills what is left and releases the namespaces).
    async fn teardown_pod(&self, pod: &PodRecord) {
        let client = self.shims.lock().await.remove(&pod.id).map(|c| c.task);
        let client = match client {
            Some(c) => Some(c),
            None => self.shim(pod).await.ok(),
        };
        self.shims.lock().await.remove(&pod.id);
        if let Some(c) = client {
            let _ = c.shutdown(ctx(), &task::ShutdownRequest::default()).await;
        }
        // Whatever the shim could not release (it may have been killed).
        podns::release(&pod.dir);
        if pod.shim_pid > 0 && Path::new(&format!("/proc/{}", pod.shim_pid)).exists() {
            let cmdline =
                std::fs::read(format!("/proc/{}/cmdline", pod.shim_pid)).unwrap_or_default();
            if cmdline
                .windows(pod.id.len())
                .any(|w| w == pod.id.as_bytes())
            {
                // SAFETY: signalling the shim we started for this pod.
                unsafe { libc::kill(pod.shim_pid as i32, libc::SIGKILL) };
            }
        }
    }

    /// Watches the pod's shim process (through a pidfd, which works as well for a shim
    /// started by an earlier cairnd) and calls [`Runtime::shim_lost`] when it exits.
    fn monitor_shim(self: &Arc<Self>, pod: &PodRecord) {
        if !self
            .monitored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pod.id.clone())
        {
            return;
        }
        let pidfd = shim_pidfd(pod);
        let rt = self.clone();
        let id = pod.id.clone();
        tokio::spawn(async move {
            let exited = match pidfd {
                // SAFETY: the AsyncFd owns the pidfd and nothing else closes or replaces it.
                Some(fd) => match unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        fd,
                        tokio::io::Interest::READABLE,
                    )
                } {
                    Ok(afd) => afd.readable().await.is_ok(),
                    Err(e) => {
                        tracing::warn!(pod = %id, error = %e, "cannot watch the pod's shim");
                        false
                    }
                },
                // Already gone.
                None => true,
            };
            rt.monitored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if exited {
                rt.shim_lost(&id).await;
            }
        });
    }

    /// The pod's shim is gone (killed, crashed, or asked to exit): whatever still runs in
    /// its containers' cgroups is killed and the cgroups removed, every container not yet
    /// exited is recorded exited (with the code the shim recorded, if it did), the pod is
    /// no longer ready, and the namespaces the shim held are released. Idempotent.
    pub async fn shim_lost(&self, pod_id: &str) {
        self.shims.lock().await.remove(pod_id);
        let Ok(Some(pod)) = self.store().get_record::<PodRecord>(PODS, pod_id) else {
            return;
        };
        let containers: Vec<ContainerRecord> = self
            .containers()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.pod_id == pod.id)
            .collect();
        // Everything is cleaned up before the exits are recorded: whoever sees them
        // finds nothing of the shim's left.
        for c in &containers {
            self.cleanup_cgroup(&pod, c).await;
            // An OCI-runtime pod's shim mounts rootfs in the host's mount namespace.
            let rootfs = self.state.join("containers").join(&c.id).join("rootfs");
            let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        }
        // Detached while the namespace's mount may still hold it (DEL copes without).
        if self.cni.recorded(&pod.id) {
            match pod_network(&pod) {
                Ok(n) => {
                    if let Err(e) = self.cni.del(&n).await {
                        tracing::warn!(pod = %pod_id, error = %e, "detaching the pod from its network");
                    }
                }
                Err(e) => tracing::warn!(pod = %pod_id, error = %e.message(), "detaching the pod"),
            }
        }
        podns::release(&pod.dir);
        {
            let _guard = self.lock.lock().await;
            if let Ok(Some(mut p)) = self.store().get_record::<PodRecord>(PODS, pod_id) {
                if p.ready {
                    tracing::warn!(pod = %pod_id, "the pod's shim exited: pod is not ready");
                    p.ready = false;
                    let _ = self.save_pod(&p);
                }
            }
        }
        let live = containers.iter().filter(|c| {
            c.state == cri::ContainerState::ContainerRunning as i32
                || c.state == cri::ContainerState::ContainerCreated as i32
        });
        for c in live {
            match read_exit(&pod.dir, &c.id) {
                Some(e) => self.record_exit(&c.id, e.code, e.exited_ns, None).await,
                None => {
                    self.record_exit(
                        &c.id,
                        255,
                        now_ns(),
                        Some("the pod's shim exited unexpectedly; the container was killed"),
                    )
                    .await
                }
            }
        }
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

    pub async fn remove_pod(&self, id: &str) -> Result<(), Error> {
        let Some(pod) = self.find_pod(id)? else {
            return Ok(());
        };
        self.stop_pod(&pod.id).await?;
        for c in self
            .containers()?
            .into_iter()
            .filter(|c| c.pod_id == pod.id)
        {
            self.remove_container(&c.id).await?;
        }
        podns::release(&pod.dir);
        if let Err(e) = std::fs::remove_dir_all(&pod.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(internal(format!("removing {}: {e}", pod.dir.display())));
            }
        }
        let _guard = self.lock.lock().await;
        self.store().delete_record(PODS, &pod.id).map_err(store_err)
    }

    // ---- containers --------------------------------------------------------------------

    pub async fn create_container(
        &self,
        pod_id: &str,
        config: cri::ContainerConfig,
    ) -> Result<String, Error> {
        let pod = self.pod(pod_id)?;
        if !pod.ready {
            return Err(Error::failed_precondition(format!(
                "pod sandbox {} is not ready (stopped)",
                pod.id
            )));
        }
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::invalid_argument("CreateContainer: metadata is required"))?;
        if meta.name.is_empty() {
            return Err(Error::invalid_argument(
                "CreateContainer: metadata.name is required",
            ));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(Error::invalid_argument(format!(
                "CreateContainer {}: image is required",
                meta.name
            )));
        }
        let image = self
            .images
            .resolve(&image_name)
            .map_err(store_err)?
            .ok_or_else(|| {
                Error::not_found(format!("image {image_name} not found: pull it first"))
            })?;
        let guard = self.lock.lock().await;
        if let Some(other) = self.containers()?.into_iter().find(|c| {
            c.pod_id == pod.id
                && c.config
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.name == meta.name && m.attempt == meta.attempt)
        }) {
            return Err(Error::already_exists(format!(
                "container {} (attempt {}) already exists in pod {} as {}",
                meta.name, meta.attempt, pod.id, other.id
            )));
        }
        let id = new_id();
        let log_path = match (&pod.config.log_directory, &config.log_path) {
            (d, p) if !d.is_empty() && !p.is_empty() => Path::new(d).join(p).display().to_string(),
            _ => String::new(),
        };
        let mut rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            config: config.clone(),
            image_id: image.record.id.clone(),
            image_ref: image
                .repo_tags
                .first()
                .cloned()
                .unwrap_or_else(|| image.record.id.clone()),
            state: cri::ContainerState::ContainerUnknown as i32,
            created_ns: now_ns(),
            started_ns: 0,
            finished_ns: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path,
            pid: 0,
            stop_signal: spec::stop_signal(&image.config).unwrap_or(libc::SIGTERM),
            cgroup_path: spec::cgroup_path(&pod_context(&pod).cgroup_parent, &id),
            user: None,
        };
        self.save_container(&rec)?;
        drop(guard);
        match self.make_container(&pod, &mut rec, &image).await {
            Ok(()) => {
                rec.state = cri::ContainerState::ContainerCreated as i32;
                self.save_container(&rec)?;
                self.event(&rec, cri::ContainerEventType::ContainerCreatedEvent);
                Ok(id)
            }
            Err(e) => {
                self.discard_container(&rec).await;
                Err(e)
            }
        }
    }

    async fn make_container(
        &self,
        pod: &PodRecord,
        rec: &mut ContainerRecord,
        image: &cairn_snapshotter::image::Image,
    ) -> Result<(), Error> {
        let bundle = self.state.join("containers").join(&rec.id);
        std::fs::create_dir_all(bundle.join("rootfs")).map_err(internal)?;
        // The built-in launcher's cgroup is made while the rest is prepared (an external
        // runtime makes its own).
        let builtin = self.oci_runtime(&pod.runtime_handler)?.is_none();
        let cgroup = builtin.then(|| self.make_cgroup(&rec.id, &rec.cgroup_path));
        // So is the writable layer; the spec needs only the image's layers.
        let parent = image.record.top_chain_id().map(str::to_string);
        let lowers = match &parent {
            Some(p) => self.images.snapshotter().lowers(p).map_err(store_err),
            None => Ok(Vec::new()),
        };
        let mut layer = self.make_layer(&rec.id, parent);
        let oci = lowers.and_then(|l| self.container_spec(pod, rec, image, &bundle, &l));
        let written = oci
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|oci| self.write_bundle(oci, &bundle, &rec.id, builtin));
        // Awaited in any case: a cgroup still being made could outlive the cleanup.
        let cgroup = match cgroup {
            Some(c) => c.finish(oci.as_ref().ok(), &rec.id).await,
            None => Ok(()),
        };
        // On an error the layer's task is over (nothing was recorded).
        let overlay = layer.placed(&rec.id).await?;
        let launched = match (oci, written, cgroup) {
            (Ok(oci), Ok(()), Ok(())) => {
                self.remember_process(&rec.id, &oci);
                self.create_in_shim(pod, rec, &bundle, &overlay).await
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
        };
        // Its disk sync overlapped the rest. Awaited in any case: a container discarded
        // before its layer is recorded would leave the record behind.
        let recorded = layer.recorded.await.map_err(internal).and_then(|r| {
            r.map_err(|e| {
                internal(format!(
                    "container {}: recording its writable layer: {e}",
                    rec.id
                ))
            })
        });
        rec.pid = launched?;
        recorded
    }

    /// The container's OCI spec from its CRI config, its pod and its image; records the
    /// user it runs as.
    fn container_spec(
        &self,
        pod: &PodRecord,
        rec: &mut ContainerRecord,
        image: &cairn_snapshotter::image::Image,
        bundle: &Path,
        lowers: &[PathBuf],
    ) -> Result<oci_spec::runtime::Spec, Error> {
        let pod_ctx = pod_context(pod);
        let cctx = ContainerContext {
            id: &rec.id,
            config: &rec.config,
            image: &image.config,
            rootfs_layers: lowers,
            rootfs: bundle.join("rootfs"),
            cgroup_path: rec.cgroup_path.clone(),
        };
        let mut oci = spec::build_spec(&pod_ctx, &cctx).map_err(|e| match e {
            spec::SpecError::NotFound(m) => Error::not_found(m),
            spec::SpecError::InvalidArgument(m) => Error::invalid_argument(m),
            spec::SpecError::FailedPrecondition(m) => Error::failed_precondition(m),
            other => internal(other),
        })?;
        if let Some(u) = oci.process().as_ref().map(|p| p.user()) {
            rec.user = Some(cri::LinuxContainerUser {
                uid: i64::from(u.uid()),
                gid: i64::from(u.gid()),
                supplemental_groups: u
                    .additional_gids()
                    .iter()
                    .flatten()
                    .map(|g| i64::from(*g))
                    .collect(),
            });
        }
        if rec.config.stdin_once {
            let mut annotations = oci.annotations().clone().unwrap_or_default();
            annotations.insert(STDIN_ONCE.into(), "true".into());
            oci.set_annotations(Some(annotations));
        }
        if let Some(target) = spec::pid_target(&rec.config) {
            // pid TARGET: the namespace of a running container of the same pod.
            let t = self.container(target)?;
            if t.pod_id != pod.id || t.state != cri::ContainerState::ContainerRunning as i32 {
                return Err(Error::invalid_argument(format!(
                    "container {}: pid namespace target {target} is not a running container of pod {}",
                    rec.id, pod.id
                )));
            }
            spec::set_pid_namespace(&mut oci, format!("/proc/{}/ns/pid", t.pid).into());
        }
        Ok(oci)
    }

    /// Creates the container in the pod's shim from its bundle, over `overlay`; its pid.
    async fn create_in_shim(
        &self,
        pod: &PodRecord,
        rec: &ContainerRecord,
        bundle: &Path,
        overlay: &cairn_kernel::overlay::OverlayMount,
    ) -> Result<u32, Error> {
        let client = self.shim(pod).await?;
        let resp = client
            .create(
                ctx(),
                &task::CreateTaskRequest {
                    id: rec.id.clone(),
                    bundle: bundle.display().to_string(),
                    rootfs: vec![overlay_to(overlay)],
                    terminal: rec.config.tty,
                    // cairn's convention: any value keeps the container's stdin open.
                    stdin: if rec.config.stdin {
                        "open".into()
                    } else {
                        String::new()
                    },
                    stdout: rec.log_path.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| ttrpc_status(&format!("creating container {}", rec.id), e))?;
        Ok(resp.pid)
    }

    /// Starts making the container's writable layer on a blocking thread; see
    /// [`LayerMaking`].
    fn make_layer(&self, id: &str, parent: Option<String>) -> LayerMaking {
        let snapshots = self.images.snapshotter().clone();
        let key = id.to_string();
        let (placed_tx, placed) = tokio::sync::oneshot::channel();
        let recorded = tokio::task::spawn_blocking(move || {
            snapshots.prepare_then(&key, parent.as_deref(), |m| {
                let _ = placed_tx.send(m.clone());
            })
        });
        LayerMaking { placed, recorded }
    }

    /// Starts making the container's cgroup on a blocking thread; see [`CgroupMaking`].
    fn make_cgroup(&self, id: &str, path: &str) -> CgroupMaking {
        // The limits and device rules come with the spec (see CgroupMaking::finish).
        let layout = self.layout.clone();
        let path = path.to_string();
        let id = id.to_string();
        let (limits, limits_rx) =
            tokio::sync::oneshot::channel::<Option<oci_spec::runtime::Linux>>();
        let made = tokio::task::spawn_blocking(move || {
            let Some(layout) = layout else {
                return Ok(());
            };
            let cgroup = Cgroup::new(&layout, &path).map_err(|e| e.to_string())?;
            cgroup.create().map_err(|e| e.to_string())?;
            // Nothing when the spec could not be built (the caller then discards the
            // container, and with it the cgroup).
            let Ok(Some(linux)) = limits_rx.blocking_recv() else {
                return Ok(());
            };
            let applied = linux
                .resources()
                .as_ref()
                .map_or(Ok(()), |r| cgroup.apply(r))
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    let dirs = cgroup.join_dirs();
                    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
                    let rules = linux
                        .resources()
                        .as_ref()
                        .and_then(|r| r.devices().as_deref());
                    cairn_kernel::devices::install(&dirs, rules.unwrap_or_default())
                        .map_err(|e| format!("linux.resources.devices: {e}"))
                });
            if let Err(e) = applied {
                if let Err(d) = cgroup.delete() {
                    tracing::warn!(container = %id, error = %d, "removing a cgroup whose limits failed");
                }
                return Err(e);
            }
            Ok(())
        });
        CgroupMaking { limits, made }
    }

    /// The bundle's files: the OCI spec, and for the built-in launcher the compiled
    /// seccomp program.
    fn write_bundle(
        &self,
        oci: &oci_spec::runtime::Spec,
        bundle: &Path,
        id: &str,
        builtin: bool,
    ) -> Result<(), Error> {
        if builtin {
            self.save_seccomp_program(oci, bundle, id)?;
        }
        oci.save(bundle.join("config.json")).map_err(internal)
    }

    /// Compiles the spec's seccomp profile (once per profile: most containers share one)
    /// into the bundle, for the built-in launcher of the pod's shim.
    fn save_seccomp_program(
        &self,
        oci: &oci_spec::runtime::Spec,
        bundle: &Path,
        id: &str,
    ) -> Result<(), Error> {
        let Some(profile) = oci.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
            return Ok(());
        };
        let program = self
            .seccomp
            .bytes(profile)
            .map_err(|e| Error::invalid_argument(format!("container {id}: linux.seccomp: {e}")))?;
        std::fs::write(bundle.join(SECCOMP_PROGRAM), program.as_slice()).map_err(internal)
    }

    /// Removes everything a half-made or removed container had.
    async fn discard_container(&self, rec: &ContainerRecord) {
        if let Ok(pod) = self.pod(&rec.pod_id) {
            let client = match shim_alive(&pod) {
                true => self.shim(&pod).await.ok(),
                false => None,
            };
            if let Some(client) = client {
                let _ = client
                    .kill(
                        ctx(),
                        &task::KillRequest {
                            id: rec.id.clone(),
                            signal: libc::SIGKILL as u32,
                            all: true,
                            ..Default::default()
                        },
                    )
                    .await;
                let _ = client
                    .delete(
                        ctx(),
                        &task::DeleteRequest {
                            id: rec.id.clone(),
                            ..Default::default()
                        },
                    )
                    .await;
            }
            let _ = std::fs::remove_file(exit_path(&pod.dir, &rec.id));
            self.cleanup_cgroup(&pod, rec).await;
        }
        let bundle = self.state.join("containers").join(&rec.id);
        // The shim of an OCI-runtime pod mounts the rootfs in the host's mount namespace;
        // if it could not unmount it (it died), do it before the layer goes.
        let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
        if let Err(e) = self.images.snapshotter().remove(&rec.id) {
            tracing::warn!(container = %rec.id, error = %e, "removing writable layer");
        }
        let _ = std::fs::remove_dir_all(&bundle);
        self.forget_process(&rec.id);
        let _ = self.store().delete_record(CONTAINERS, &rec.id);
    }

    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<(), Error> {
        let mut rec = self.container(id)?;
        if rec.state != cri::ContainerState::ContainerCreated as i32 {
            return Err(Error::failed_precondition(format!(
                "container {} is not in the created state",
                rec.id
            )));
        }
        let pod = self.pod(&rec.pod_id)?;
        let client = self.shim(&pod).await?;
        let started = client
            .start(
                ctx(),
                &task::StartRequest {
                    id: rec.id.clone(),
                    ..Default::default()
                },
            )
            .await;
        match started {
            Ok(resp) => {
                rec.pid = resp.pid;
                rec.started_ns = now_ns();
                rec.state = cri::ContainerState::ContainerRunning as i32;
                self.save_container(&rec)?;
                self.event(&rec, cri::ContainerEventType::ContainerStartedEvent);
                self.watch(pod.id.clone(), rec.id.clone(), client);
                Ok(())
            }
            Err(e) => {
                let status = ttrpc_status(&format!("starting container {}", rec.id), e);
                rec.state = cri::ContainerState::ContainerExited as i32;
                rec.started_ns = now_ns();
                rec.finished_ns = rec.started_ns;
                rec.exit_code = 128;
                rec.reason = "StartError".into();
                rec.message = status.message().to_string();
                self.save_container(&rec)?;
                self.event(&rec, cri::ContainerEventType::ContainerStoppedEvent);
                Err(status)
            }
        }
    }

    /// Waits for a running container's exit in the background and records it. If the
    /// shim goes away meanwhile, [`Runtime::shim_lost`] records it instead.
    fn watch(self: &Arc<Self>, pod_id: String, id: String, client: TaskClient) {
        let rt = self.clone();
        tokio::spawn(async move {
            let waited = client.wait(ctx(), &wait_req(&id)).await;
            match waited {
                Ok(w) => {
                    rt.record_exit(&id, w.exit_status as i32, exited_ns(&w), None)
                        .await
                }
                Err(ttrpc::Error::RpcStatus(s)) => {
                    let msg = format!("the pod's shim lost the container: {}", s.message);
                    rt.record_exit(&id, 255, now_ns(), Some(&msg)).await;
                }
                // The connection broke: the shim died. Its monitor records the exits;
                // without one, do it here.
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "lost the pod's shim while waiting");
                    rt.shims.lock().await.remove(&pod_id);
                    let monitored = rt
                        .monitored
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(&pod_id);
                    if !monitored {
                        rt.shim_lost(&pod_id).await;
                    }
                }
            }
        });
    }

    async fn record_exit(&self, id: &str, code: i32, at: i64, unknown: Option<&str>) {
        let _guard = self.lock.lock().await;
        let Ok(Some(mut rec)) = self.find_container(id) else {
            return;
        };
        if rec.state == cri::ContainerState::ContainerExited as i32 {
            return;
        }
        let recorded = self
            .pod(&rec.pod_id)
            .ok()
            .and_then(|p| read_exit_record(&p.dir, id));
        let oom = recorded.as_ref().is_some_and(|(e, _)| e.oom);
        // Its command never ran: execve failed after StartContainer released it.
        let start_failure = recorded.and_then(|(_, failure)| failure);
        rec.state = cri::ContainerState::ContainerExited as i32;
        rec.exit_code = code;
        rec.finished_ns = at;
        rec.reason = match (unknown, &start_failure, oom, code) {
            (Some(_), _, _, _) => "Unknown".into(),
            (None, Some(_), _, _) => "StartError".into(),
            (None, None, true, _) => "OOMKilled".into(),
            (None, None, false, 0) => "Completed".into(),
            _ => "Error".into(),
        };
        if let Some(m) = unknown.map(str::to_string).or(start_failure) {
            rec.message = m;
        }
        if self.save_container(&rec).is_ok() {
            self.event(&rec, cri::ContainerEventType::ContainerStoppedEvent);
        }
    }

    /// Stops a container (its stop signal, then SIGKILL after `timeout` seconds);
    /// idempotent: a container already stopped, removed or never known answers OK, as
    /// kubelet retries the call.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), Error> {
        let Some(rec) = self.find_container(id)? else {
            tracing::debug!(
                container = id,
                "StopContainer: no such container, nothing to do"
            );
            return Ok(());
        };
        if rec.state != cri::ContainerState::ContainerRunning as i32
            && rec.state != cri::ContainerState::ContainerCreated as i32
        {
            return Ok(());
        }
        let pod = self.pod(&rec.pod_id)?;
        let client = match shim_alive(&pod) {
            true => self.shim(&pod).await.ok(),
            false => None,
        };
        let Some(client) = client else {
            // Its shim is gone: kill what is left and record the exits.
            self.shim_lost(&pod.id).await;
            return Ok(());
        };
        let kill = |signal: i32, all: bool| task::KillRequest {
            id: rec.id.clone(),
            signal: signal as u32,
            all,
            ..Default::default()
        };
        if rec.state == cri::ContainerState::ContainerRunning as i32 && timeout > 0 {
            let _ = client.kill(ctx(), &kill(rec.stop_signal, false)).await;
            let waited = tokio::time::timeout(
                Duration::from_secs(timeout as u64),
                client.wait(ctx(), &wait_req(&rec.id)),
            )
            .await;
            if let Ok(Ok(w)) = waited {
                self.record_exit(&rec.id, w.exit_status as i32, exited_ns(&w), None)
                    .await;
                return Ok(());
            }
        }
        client
            .kill(ctx(), &kill(libc::SIGKILL, true))
            .await
            .map_err(|e| ttrpc_status(&format!("killing container {}", rec.id), e))?;
        if rec.state == cri::ContainerState::ContainerCreated as i32 {
            // Never started: it exits when deleted; record it as exited now.
            self.record_exit(&rec.id, 137, now_ns(), None).await;
            return Ok(());
        }
        match tokio::time::timeout(
            Duration::from_secs(10),
            client.wait(ctx(), &wait_req(&rec.id)),
        )
        .await
        {
            Ok(Ok(w)) => {
                self.record_exit(&rec.id, w.exit_status as i32, exited_ns(&w), None)
                    .await;
                Ok(())
            }
            Ok(Err(e)) => Err(ttrpc_status(
                &format!("waiting for container {}", rec.id),
                e,
            )),
            Err(_) => Err(Error::deadline_exceeded(format!(
                "container {} did not exit after SIGKILL",
                rec.id
            ))),
        }
    }

    pub async fn remove_container(&self, id: &str) -> Result<(), Error> {
        let Some(rec) = self.find_container(id)? else {
            return Ok(());
        };
        if rec.state == cri::ContainerState::ContainerRunning as i32 {
            self.stop_container(&rec.id, 0).await?;
        }
        self.discard_container(&rec).await;
        self.event(&rec, cri::ContainerEventType::ContainerDeletedEvent);
        Ok(())
    }

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
    async fn exec_sync_by_task(
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
    fn remember_process(&self, id: &str, oci: &oci_spec::runtime::Spec) {
        if let Some(process) = oci.process() {
            self.processes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_string(), process.clone());
        }
    }

    fn forget_process(&self, id: &str) {
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The template of a container's execs: its process as created, from memory (or from
    /// its bundle's config.json for a container created before a restart).
    fn process_template(
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

    pub async fn update_resources(
        &self,
        id: &str,
        r: &cri::LinuxContainerResources,
    ) -> Result<(), Error> {
        let rec = self.container(id)?;
        let resources = spec::update_resources(r, &rec.id)
            .map_err(|e| Error::invalid_argument(e.to_string()))?;
        let pod = self.pod(&rec.pod_id)?;
        let client = self.shim(&pod).await?;
        client
            .update(
                ctx(),
                &task::UpdateTaskRequest {
                    id: rec.id.clone(),
                    resources: MessageField::some(Any {
                        type_url: "io.cairn.linux-resources".into(),
                        value: serde_json::to_vec(&resources).map_err(internal)?,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| ttrpc_status(&format!("updating container {}", rec.id), e))?;
        let mut rec = rec;
        if let Some(linux) = rec.config.linux.as_mut() {
            linux.resources = Some(r.clone());
        }
        self.save_container(&rec)
    }

    pub async fn reopen_log(&self, id: &str) -> Result<(), Error> {
        let rec = self.running(id)?;
        let pod = self.pod(&rec.pod_id)?;
        let client = self.shim(&pod).await?;
        let mut annotations = HashMap::new();
        annotations.insert(REOPEN_LOG.to_string(), "1".to_string());
        client
            .update(
                ctx(),
                &task::UpdateTaskRequest {
                    id: rec.id.clone(),
                    annotations,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| ttrpc_status(&format!("reopening the log of {}", rec.id), e))?;
        Ok(())
    }

    /// Cgroup statistics of a container, when its shim can tell.
    pub async fn stats(&self, rec: &ContainerRecord) -> Option<StatsJson> {
        if rec.state != cri::ContainerState::ContainerRunning as i32 {
            return None;
        }
        let pod = self.pod(&rec.pod_id).ok()?;
        let client = self.shim(&pod).await.ok()?;
        let resp = client
            .stats(
                ctx(),
                &task::StatsRequest {
                    id: rec.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .ok()?;
        serde_json::from_slice(&resp.stats.value).ok()
    }

    /// After a restart: reconnect to every pod's shim, resume watching running
    /// containers and the shims themselves, and record what ended while cairnd was down
    /// (a pod whose shim died meanwhile is cleaned up as [`Runtime::shim_lost`] says).
    /// The running pods' networks are then CHECKed in the background. Writable layers
    /// that no container record names any more (after a reboot) are removed.
    pub async fn recover(self: &Arc<Self>) -> Result<(), Error> {
        let mut attached = Vec::new();
        for pod in self.pods()? {
            if !pod.ready {
                continue;
            }
            let client = match shim_alive(&pod) {
                true => self.shim(&pod).await.ok(),
                false => None,
            };
            let Some(client) = client else {
                self.shim_lost(&pod.id).await;
                self.teardown_pod(&pod).await;
                continue;
            };
            for c in self
                .containers()?
                .into_iter()
                .filter(|c| c.pod_id == pod.id)
                .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            {
                self.watch(pod.id.clone(), c.id.clone(), client.clone());
            }
            self.monitor_shim(&pod);
            if !is_host_network(&pod.config) && self.cni.recorded(&pod.id) {
                attached.push(pod);
            }
        }
        self.check_networks(attached);
        if let Err(e) = self.remove_orphan_layers() {
            tracing::warn!(error = %e, "removing writable layers no record names");
        }
        // Containers whose record exists but whose pod is gone are removed.
        let pods: Vec<String> = self.pods()?.into_iter().map(|p| p.id).collect();
        for c in self.containers()? {
            if !pods.contains(&c.pod_id) {
                self.discard_container(&c).await;
            }
        }
        Ok(())
    }

    /// Removes the writable layers (active snapshots, keyed by container ID) of containers
    /// that have no record, with their bundles: what a reboot leaves, since it empties the
    /// state dir with the records but not the root with the layers.
    fn remove_orphan_layers(&self) -> Result<(), Error> {
        let known: HashSet<String> = self.containers()?.into_iter().map(|c| c.id).collect();
        let snapshots = self.images.snapshotter();
        let orphans = snapshots
            .list()
            .map_err(store_err)?
            .into_iter()
            .filter(|s| s.kind == SnapshotKind::Active && !known.contains(&s.key));
        for s in orphans {
            tracing::info!(container = %s.key, "removing a writable layer no record names");
            let bundle = self.state.join("containers").join(&s.key);
            let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
            if let Err(e) = snapshots.remove(&s.key) {
                tracing::warn!(container = %s.key, error = %e, "removing writable layer");
            }
            let _ = std::fs::remove_dir_all(&bundle);
        }
        Ok(())
    }

    /// CNI CHECK for pods found running after a restart (what cairnd could not watch
    /// while it was down), one pod at a time in the background. A failure is logged and
    /// nothing more: the pod keeps running, and kubelet's probes judge whether it works.
    fn check_networks(self: &Arc<Self>, pods: Vec<PodRecord>) {
        if pods.is_empty() {
            return;
        }
        let rt = self.clone();
        tokio::spawn(async move {
            for pod in pods {
                let result = match pod_network(&pod) {
                    Ok(net) => rt.cni.check(&net).await,
                    Err(e) => Err(cni::CniError::InvalidArgument(e.message().to_string())),
                };
                match result {
                    Ok(networks) if networks.is_empty() => {}
                    Ok(networks) => {
                        tracing::info!(pod = %pod.id, "CNI CHECK passed on {}", networks.join(", "))
                    }
                    // Stopped meanwhile.
                    Err(cni::CniError::NotAttached(_)) => {}
                    Err(e) => {
                        let note = e.known_bug().map(|n| format!(" (likely {n})"));
                        tracing::warn!(
                            pod = %pod.id,
                            error = %e,
                            "CNI CHECK failed after a restart{}; the pod keeps running",
                            note.unwrap_or_default()
                        );
                    }
                }
            }
        });
    }
}

/// A container's writable layer being made on a blocking thread: its overlay once its dirs
/// are in place ([`LayerMaking::placed`]), then the durable commit of its record, which
/// overlaps the launch (see `Snapshotter::prepare_then`). `recorded` must be awaited on
/// every path: a container discarded before its layer is recorded would leave the record.
struct LayerMaking {
    placed: tokio::sync::oneshot::Receiver<cairn_kernel::overlay::OverlayMount>,
    recorded: tokio::task::JoinHandle<Result<(), cairn_snapshotter::Error>>,
}

impl LayerMaking {
    /// The layer's overlay, or why it could not be made (then `recorded` has been awaited
    /// already, and nothing was recorded).
    async fn placed(&mut self, id: &str) -> Result<cairn_kernel::overlay::OverlayMount, Error> {
        if let Ok(overlay) = (&mut self.placed).await {
            return Ok(overlay);
        }
        // It failed before its dirs were placed: the task says why.
        match (&mut self.recorded).await {
            Ok(Err(e)) => Err(store_err(e)),
            Ok(Ok(())) => Err(internal(format!("container {id}: no writable layer"))),
            Err(e) => Err(internal(e)),
        }
    }
}

/// A container's cgroup being made on a blocking thread: its dirs at once, then the limits
/// of its spec, once that is built ([`CgroupMaking::finish`]).
struct CgroupMaking {
    limits: tokio::sync::oneshot::Sender<Option<oci_spec::runtime::Linux>>,
    made: tokio::task::JoinHandle<Result<(), String>>,
}

impl CgroupMaking {
    /// Hands over the limits of `oci` (None: the spec could not be built) and waits until
    /// the cgroup is made.
    async fn finish(self, oci: Option<&oci_spec::runtime::Spec>, id: &str) -> Result<(), Error> {
        let _ = self.limits.send(oci.and_then(|o| o.linux().clone()));
        self.made
            .await
            .map_err(internal)?
            .map_err(|e| Error::failed_precondition(format!("container {id}: {e}")))
    }
}

/// One exec in a container's shim, for `ExecSync` and streamed `Exec`. Dropped before
/// [`finish`](ExecRef::finish) (the caller's request was cancelled, e.g. kubelet gave up
/// or the client left), it kills and forgets the exec in the background, as containerd
/// does when kubelet cancels the request context.
struct ExecRef {
    client: TaskClient,
    id: String,
    exec_id: String,
    finished: bool,
}

impl ExecRef {
    fn new(client: &TaskClient, id: &str, exec_id: &str) -> ExecRef {
        ExecRef {
            client: client.clone(),
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            finished: false,
        }
    }

    fn what(&self) -> String {
        format!("exec in container {}", self.id)
    }

    /// The `ExecProcessRequest` for `process` (JSON OCI Process); streams are the caller's.
    fn request(&self, process: Vec<u8>) -> task::ExecProcessRequest {
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

    fn wait_req(&self) -> task::WaitRequest {
        task::WaitRequest {
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            ..Default::default()
        }
    }

    /// Creates and starts the exec.
    async fn create_and_start(&self, req: &task::ExecProcessRequest) -> Result<(), Error> {
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
    async fn wait(&self) -> Result<i32, Error> {
        let w = self.client.wait(ctx(), &self.wait_req()).await;
        Ok(w.map_err(|e| ttrpc_status(&self.what(), e))?.exit_status as i32)
    }

    /// Creates, starts and waits for the exec; a timeout (seconds, > 0) kills it.
    async fn run(&self, req: &task::ExecProcessRequest, timeout: i64) -> Result<i32, Error> {
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
    async fn finish(mut self) {
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
fn timed_out(id: &str, timeout: i64) -> Error {
    Error::deadline_exceeded(format!(
        "ExecSync in {id}: command timed out after {timeout}s and was killed"
    ))
}

/// The first `limit` bytes of a file (empty if it cannot be read).
fn read_capped(path: &Path, limit: usize) -> Vec<u8> {
    use std::io::Read;
    let mut data = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(limit as u64).read_to_end(&mut data);
    }
    data
}

/// A pod's shim connection: the Task API client and the raw connection under it (for
/// cairn's own services, such as [`execsync`]).
#[derive(Clone)]
struct ShimClient {
    task: TaskClient,
    conn: ttrpc::asynchronous::Client,
}

/// The guard of an exec sync call: dropped armed (cairnd's caller went away while the
/// shim ran the command), it asks the shim, in the background, to kill the command.
struct CancelOnDrop {
    conn: Option<ttrpc::asynchronous::Client>,
    id: String,
    exec_id: String,
}

impl CancelOnDrop {
    fn new(conn: &ttrpc::asynchronous::Client, id: &str, exec_id: &str) -> CancelOnDrop {
        CancelOnDrop {
            conn: Some(conn.clone()),
            id: id.to_string(),
            exec_id: exec_id.to_string(),
        }
    }

    /// The call is over: nothing to cancel.
    fn disarm(mut self) {
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
async fn kill_exec(client: &TaskClient, id: &str, exec_id: &str) {
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

async fn delete_exec(client: &TaskClient, id: &str, exec_id: &str) {
    let req = task::DeleteRequest {
        id: id.to_string(),
        exec_id: exec_id.to_string(),
        ..Default::default()
    };
    let _ = client.delete(ctx(), &req).await;
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

/// The pod's hostname: the node's for a host-network pod and, as containerd and CRI-O do,
/// for a pod that asks for none; else the one it asks for (checked by
/// `spec::validate_sandbox`).
fn pod_hostname(config: &cri::PodSandboxConfig) -> String {
    if namespace_mode(config, |o| o.network) != cri::NamespaceMode::Node
        && !config.hostname.is_empty()
    {
        return config.hostname.clone();
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// hostname, hosts and resolv.conf of the pod, bind-mounted into its containers.
fn write_pod_files(
    dir: &Path,
    config: &cri::PodSandboxConfig,
    hostname: &str,
) -> std::io::Result<()> {
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    let hosts = if namespace_mode(config, |o| o.network) == cri::NamespaceMode::Node {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
            .to_string()
    };
    std::fs::write(dir.join("hosts"), hosts)?;
    let resolv = match &config.dns_config {
        Some(d) if !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty() => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for server in &d.servers {
                s.push_str(&format!("nameserver {server}\n"));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            s
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    std::fs::write(dir.join("resolv.conf"), resolv)
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

/// Whether the pod's shim process is still there (its pid, with the pod's id on its
/// command line, so a reused pid is not taken for it).
fn shim_alive(pod: &PodRecord) -> bool {
    if pod.shim_pid == 0 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", pod.shim_pid)) else {
        return false;
    };
    let alive = cmdline
        .windows(pod.id.len())
        .any(|w| w == pod.id.as_bytes());
    // A zombie keeps its pid (and an empty cmdline) until reaped.
    alive
        && std::fs::read_to_string(format!("/proc/{}/stat", pod.shim_pid))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
}

/// A pidfd of the pod's shim, checked to be the shim after it was opened; None when the
/// shim is not running.
fn shim_pidfd(pod: &PodRecord) -> Option<OwnedFd> {
    if pod.shim_pid == 0 {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pod.shim_pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    shim_alive(pod).then_some(fd)
}
