//! Pod networking through CNI plugins (CNI spec 1.0): picks the network list in use from
//! the conf dirs (re-read whenever they change), runs its plugins for ADD (in order,
//! chaining prevResult), DEL (in reverse, with the cached ADD result) and CHECK, and keeps
//! each pod's attachment on disk so DEL works after a daemon restart or a config change.
//!
//! cairnd calls [`Cni::add`] from RunPodSandbox once the pod's network namespace exists,
//! [`Cni::del`] from StopPodSandbox before the namespace goes (and when a pod's shim
//! dies), [`Cni::check`] for the pods it finds running after a restart, [`Cni::status`]
//! for the NetworkReady condition and [`Cni::result`] for the pod IPs.
//! Runs in cairnd.

mod cache;
pub mod conf;
mod exec;
mod pod;
mod result;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub use conf::NetworkList;
pub use pod::{parse_quantity, Bandwidth, Dns, PodNetwork, PortMapping};
pub use result::NetworkResult;

use cache::{Attachment, Cache};
use exec::{Command, Failure, Invocation};

pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_BIN_DIRS: &[&str] = &["/opt/cni/bin", "/usr/lib/cni"];
/// The pod's interface name.
pub const IFNAME: &str = "eth0";
/// How long one plugin call may take.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where CNI configs, plugins and cairn's attachment records live.
#[derive(Debug, Clone)]
pub struct CniConfig {
    /// Searched in order; in each, `.conf`/`.conflist`/`.json` files in name order.
    pub conf_dirs: Vec<PathBuf>,
    /// Searched in order for plugin executables; also the plugins' CNI_PATH.
    pub bin_dirs: Vec<PathBuf>,
    /// Attachment records (`<cache_dir>/<pod id>/<network>.json`). Keep it on persistent
    /// storage: it is what lets DEL release IPs after a reboot or restart.
    pub cache_dir: PathBuf,
    pub plugin_timeout: Duration,
}

impl CniConfig {
    /// The default dirs, with attachment records under `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> CniConfig {
        CniConfig {
            conf_dirs: vec![PathBuf::from(DEFAULT_CONF_DIR)],
            bin_dirs: DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect(),
            cache_dir: cache_dir.into(),
            plugin_timeout: DEFAULT_PLUGIN_TIMEOUT,
        }
    }
}

/// Why a CNI operation failed; every message names the network and plugin involved.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No valid network list (the NetworkReady reason).
    #[error("CNI network not ready: {0}")]
    NotReady(String),
    #[error("CNI: {0}")]
    InvalidArgument(String),
    #[error("CNI network {network}: plugin {plugin:?} not found in {dirs}")]
    PluginNotFound {
        network: String,
        plugin: String,
        dirs: String,
    },
    #[error("CNI network {network}: plugin {plugin} {command} failed: {msg}{}{}",
        if *code != 0 { format!(" (code {code})") } else { String::new() },
        if details.is_empty() { String::new() } else { format!(": {details}") })]
    Plugin {
        network: String,
        plugin: String,
        command: &'static str,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("CNI network {network}: running plugin {plugin} ({}) for {command}: {source}", path.display())]
    Exec {
        network: String,
        plugin: String,
        command: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CNI network {network}: plugin {plugin} {command} timed out after {}s", timeout.as_secs_f64())]
    Timeout {
        network: String,
        plugin: String,
        command: &'static str,
        timeout: Duration,
    },
    #[error("CNI network {network}: plugin {plugin} {command} returned a bad result: {reason}")]
    BadResult {
        network: String,
        plugin: String,
        command: &'static str,
        reason: String,
    },
    #[error("CNI: pod {0} has no recorded network attachment")]
    NotAttached(String),
    #[error("CNI attachment record {}: {reason}", path.display())]
    Cache { path: PathBuf, reason: String },
}

impl From<(PathBuf, String)> for CniError {
    fn from((path, reason): (PathBuf, String)) -> CniError {
        CniError::Cache { path, reason }
    }
}

/// The gRPC status cairnd answers with: a missing/invalid config or bad input is the
/// caller's precondition, a hung plugin a deadline, the rest internal.
impl From<CniError> for crate::error::Error {
    fn from(e: CniError) -> crate::error::Error {
        let msg = e.to_string();
        match e {
            CniError::NotReady(_) | CniError::NotAttached(_) => {
                crate::error::Error::failed_precondition(msg)
            }
            CniError::InvalidArgument(_) => crate::error::Error::invalid_argument(msg),
            CniError::Timeout { .. } => crate::error::Error::deadline_exceeded(msg),
            _ => crate::error::Error::internal(msg),
        }
    }
}

impl CniError {
    /// A note for a failure known to come from a plugin's bug rather than from a broken
    /// network, to go with it in the log.
    pub fn known_bug(&self) -> Option<&'static str> {
        match self {
            CniError::Plugin {
                plugin,
                command: "CHECK",
                ..
            } if plugin == "portmap" => Some(
                "portmap before 1.2 fails CHECK for pods without IPv6, looking for \
                 ip6tables rules it never made (containernetworking/plugins#819)",
            ),
            _ => None,
        }
    }
}

/// The network list in use, as last loaded, and the listing it was loaded from.
struct Loaded {
    files: Vec<conf::Entry>,
    list: Result<Arc<NetworkList>, String>,
}

/// The CNI client. Cheap to share (`Arc<Cni>`); safe to call concurrently for
/// different pods, and serialises calls for the same pod as the spec requires.
pub struct Cni {
    cfg: CniConfig,
    cache: Cache,
    loaded: Mutex<Option<Loaded>>,
    pods: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Cni {
    pub fn new(cfg: CniConfig) -> Cni {
        Cni {
            cache: Cache::new(&cfg.cache_dir),
            cfg,
            loaded: Mutex::new(None),
            pods: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &CniConfig {
        &self.cfg
    }

    /// The NetworkReady condition: the name of the network list in use, or why there is
    /// none (no config found, or the first invalid config's error).
    pub fn status(&self) -> Result<String, String> {
        self.network().map(|l| l.name.clone())
    }

    /// The network list in use, re-read if the conf dirs changed since the last call.
    pub fn network(&self) -> Result<Arc<NetworkList>, String> {
        let files = conf::list_files(&self.cfg.conf_dirs);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = loaded.as_ref().filter(|l| l.files == files) {
            return l.list.clone();
        }
        let list = conf::select(&self.cfg.conf_dirs, &files).map(Arc::new);
        match &list {
            Ok(l) => tracing::info!("CNI network {} from {}", l.name, l.source.display()),
            Err(e) => tracing::warn!("CNI: {e}"),
        }
        *loaded = Some(Loaded {
            files,
            list: list.clone(),
        });
        list
    }

    /// Attaches the pod to the network in use: ADD for each plugin in order. On failure
    /// everything already set up is deleted again before the error is returned. A pod
    /// already attached gets its recorded result back.
    pub async fn add(&self, pod: &PodNetwork) -> Result<NetworkResult, CniError> {
        check_pod_id(&pod.pod_id)?;
        let cni_args = pod.cni_args().map_err(CniError::InvalidArgument)?;
        let _guard = self.lock_pod(&pod.pod_id).await;
        for a in self.cache.load(&pod.pod_id)? {
            match a.result.clone() {
                Some(raw) => return result_of(&a.network, raw),
                // An ADD that never finished (cairnd died during it): undo it first.
                None => self.del_attachment(&a, live_netns(&pod.netns)).await?,
            }
        }
        let list = self.network().map_err(CniError::NotReady)?;
        if live_netns(&pod.netns).is_none() {
            return Err(CniError::InvalidArgument(format!(
                "pod {}: {} is not a network namespace",
                pod.pod_id,
                pod.netns.display()
            )));
        }
        let mut a = Attachment {
            kind: cache::KIND.into(),
            container_id: pod.pod_id.clone(),
            network: list.name.clone(),
            if_name: IFNAME.into(),
            cni_args,
            config: list.to_json(),
            capability_args: pod.capability_args(),
            result: None,
        };
        // Recorded before anything is made, so a crash leaves something for DEL.
        self.cache.store(&a)?;
        match self.run_add(&list, &a, &pod.netns).await {
            Ok(raw) => {
                let all = list.plugins.len();
                let result = match result_of(&list.name, raw.clone()) {
                    Ok(r) => r,
                    Err(e) => {
                        self.undo(&list, &a, all, &pod.netns, Some(raw)).await;
                        return Err(e);
                    }
                };
                a.result = Some(raw.clone());
                if let Err(e) = self.cache.store(&a) {
                    self.undo(&list, &a, all, &pod.netns, Some(raw)).await;
                    return Err(e.into());
                }
                Ok(result)
            }
            Err((failed_at, prev, e)) => {
                // A plugin that could not even start has nothing to undo (and its DEL
                // would fail the same way, keeping the record forever).
                let ran = !matches!(e, CniError::PluginNotFound { .. } | CniError::Exec { .. });
                let upto = failed_at + usize::from(ran);
                self.undo(&list, &a, upto, &pod.netns, prev).await;
                Err(e)
            }
        }
    }

    /// Runs ADD through the chain; on failure says which plugin failed and the last
    /// result before it.
    async fn run_add(
        &self,
        list: &NetworkList,
        a: &Attachment,
        netns: &Path,
    ) -> Result<Value, (usize, Option<Value>, CniError)> {
        let mut prev: Option<Value> = None;
        for (i, plugin) in list.plugins.iter().enumerate() {
            let chained = prev.as_ref().filter(|_| list.at_least("0.3.0"));
            let out = self
                .call(list, plugin, a, Command::Add, Some(netns), chained)
                .await
                .map_err(|e| (i, prev.clone(), e))?;
            let ty = conf::plugin_type(plugin);
            let value = result::parse_output(&out).map_err(|reason| {
                let e = CniError::BadResult {
                    network: list.name.clone(),
                    plugin: ty.to_string(),
                    command: "ADD",
                    reason,
                };
                (i, prev.clone(), e)
            })?;
            prev = Some(value);
        }
        prev.ok_or_else(|| {
            (
                0,
                None,
                CniError::InvalidArgument("empty plugin list".into()),
            )
        })
    }

    /// Deletes what the first `upto` plugins of a failed ADD set up, then the record;
    /// the record stays (for a later DEL to retry) when this DEL fails too.
    async fn undo(
        &self,
        list: &NetworkList,
        a: &Attachment,
        upto: usize,
        netns: &Path,
        prev: Option<Value>,
    ) {
        let netns = live_netns(netns);
        let mut ok = true;
        for plugin in list.plugins[..upto.min(list.plugins.len())].iter().rev() {
            let prev = prev.as_ref().filter(|_| list.at_least("0.4.0"));
            if let Err(e) = self.call(list, plugin, a, Command::Del, netns, prev).await {
                tracing::warn!("pod {}: undoing a failed ADD: {e}", a.container_id);
                ok = false;
            }
        }
        if ok {
            if let Err((path, e)) = self.cache.remove(&a.container_id, &a.network) {
                tracing::warn!("removing {}: {e}", path.display());
            }
        }
    }

    /// Detaches the pod: DEL for each recorded attachment, plugins in reverse order, with
    /// the recorded config, capability args and result. Idempotent; works when the netns
    /// is gone (plugins then get an empty CNI_NETNS and release what they can). Without a
    /// usable record (the cache was lost, or an entry is corrupt), runs DEL with the
    /// current config, so IPAM still releases the pod's addresses.
    pub async fn del(&self, pod: &PodNetwork) -> Result<(), CniError> {
        check_pod_id(&pod.pod_id)?;
        let _guard = self.lock_pod(&pod.pod_id).await;
        let netns = live_netns(&pod.netns);
        let (recorded, unreadable) = match self.cache.load(&pod.pod_id) {
            Ok(r) => (r, None),
            Err(e) => (Vec::new(), Some(CniError::from(e))),
        };
        if recorded.is_empty() {
            // No usable record: DEL with the current config so that IPAM still releases
            // the pod's addresses. An unreadable record goes once that worked.
            let Ok(list) = self.network() else {
                return unreadable.map_or(Ok(()), Err);
            };
            let a = Attachment {
                kind: cache::KIND.into(),
                container_id: pod.pod_id.clone(),
                network: list.name.clone(),
                if_name: IFNAME.into(),
                cni_args: pod.cni_args().map_err(CniError::InvalidArgument)?,
                config: Value::Null,
                capability_args: pod.capability_args(),
                result: None,
            };
            self.del_with(&list, &a, netns).await?;
            if let Some(e) = unreadable {
                tracing::warn!("pod {}: dropping {e}", pod.pod_id);
                self.cache.purge(&pod.pod_id)?;
            }
            return Ok(());
        }
        let mut first_err = None;
        for a in &recorded {
            if let Err(e) = self.del_attachment(a, netns).await {
                tracing::warn!("pod {}: {e}", pod.pod_id);
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// DEL for one recorded attachment, removing the record on success.
    async fn del_attachment(&self, a: &Attachment, netns: Option<&Path>) -> Result<(), CniError> {
        let list = NetworkList::from_json(&a.config).map_err(|e| CniError::Cache {
            path: self.cache.path(&a.container_id, &a.network),
            reason: format!("recorded network config: {e}"),
        })?;
        self.del_with(&list, a, netns).await?;
        self.cache.remove(&a.container_id, &a.network)?;
        Ok(())
    }

    /// DEL through the chain in reverse; goes on after a failure so that every plugin
    /// releases what it can, and returns the first error.
    async fn del_with(
        &self,
        list: &NetworkList,
        a: &Attachment,
        netns: Option<&Path>,
    ) -> Result<(), CniError> {
        let prev = a.result.as_ref().filter(|_| list.at_least("0.4.0"));
        let mut first_err = None;
        for plugin in list.plugins.iter().rev() {
            if let Err(e) = self.call(list, plugin, a, Command::Del, netns, prev).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// CHECK for each recorded attachment, with the list, capability args and result it
    /// was added with; stops at the first plugin that fails. Returns the networks
    /// checked: lists that disable CHECK, and lists older than CNI 0.4.0 (which have no
    /// CHECK), are skipped.
    pub async fn check(&self, pod: &PodNetwork) -> Result<Vec<String>, CniError> {
        check_pod_id(&pod.pod_id)?;
        let _guard = self.lock_pod(&pod.pod_id).await;
        let recorded = self.cache.load(&pod.pod_id)?;
        let done: Vec<&Attachment> = recorded.iter().filter(|a| a.result.is_some()).collect();
        if done.is_empty() {
            return Err(CniError::NotAttached(pod.pod_id.clone()));
        }
        let mut checked = Vec::new();
        for a in done {
            let list = NetworkList::from_json(&a.config).map_err(|e| CniError::Cache {
                path: self.cache.path(&a.container_id, &a.network),
                reason: format!("recorded network config: {e}"),
            })?;
            if list.disable_check || !list.at_least("0.4.0") {
                tracing::debug!(
                    "pod {}: no CHECK on network {} (cniVersion {}, disableCheck {})",
                    pod.pod_id,
                    list.name,
                    list.cni_version,
                    list.disable_check
                );
                continue;
            }
            for plugin in &list.plugins {
                self.call(
                    &list,
                    plugin,
                    a,
                    Command::Check,
                    Some(&pod.netns),
                    a.result.as_ref(),
                )
                .await?;
            }
            checked.push(list.name);
        }
        Ok(checked)
    }

    /// Whether the pod has any attachment record, finished or not (readable or not):
    /// something a DEL has to undo.
    pub fn recorded(&self, pod_id: &str) -> bool {
        check_pod_id(pod_id).is_ok() && self.cache.has_entries(pod_id)
    }

    /// The recorded ADD result of the pod (for PodSandboxStatus), if it is attached.
    pub fn result(&self, pod_id: &str) -> Option<NetworkResult> {
        if check_pod_id(pod_id).is_err() {
            return None;
        }
        let recorded = match self.cache.load(pod_id) {
            Ok(r) => r,
            Err((path, e)) => {
                tracing::warn!("reading {}: {e}", path.display());
                return None;
            }
        };
        recorded
            .into_iter()
            .find_map(|a| a.result.and_then(|raw| result_of(&a.network, raw).ok()))
    }

    /// Runs one plugin of `list` for the pod of `a`, and returns its stdout.
    async fn call(
        &self,
        list: &NetworkList,
        plugin: &serde_json::Map<String, Value>,
        a: &Attachment,
        command: Command,
        netns: Option<&Path>,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>, CniError> {
        let ty = conf::plugin_type(plugin);
        let stdin = plugin_stdin(list, plugin, &a.capability_args, prev);
        let inv = Invocation {
            command,
            container_id: &a.container_id,
            netns,
            ifname: &a.if_name,
            args: &a.cni_args,
            bin_dirs: &self.cfg.bin_dirs,
            timeout: self.cfg.plugin_timeout,
        };
        tracing::debug!(
            "pod {}: CNI {command} {ty} on {}",
            a.container_id,
            list.name
        );
        let network = list.name.clone();
        let plugin = ty.to_string();
        let command = command.as_str();
        exec::run(ty, &inv, stdin).await.map_err(|f| match f {
            Failure::NotFound => CniError::PluginNotFound {
                network,
                plugin,
                dirs: exec::cni_path(&self.cfg.bin_dirs),
            },
            Failure::Spawn(path, source) => CniError::Exec {
                network,
                plugin,
                command,
                path,
                source,
            },
            Failure::TimedOut => CniError::Timeout {
                network,
                plugin,
                command,
                timeout: self.cfg.plugin_timeout,
            },
            Failure::Plugin { code, msg, details } => CniError::Plugin {
                network,
                plugin,
                command,
                code,
                msg,
                details,
            },
        })
    }

    /// Serialises operations on one pod; the entry goes when no one else waits for it.
    async fn lock_pod(&self, pod_id: &str) -> PodGuard<'_> {
        let m = {
            let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
            pods.entry(pod_id.to_string()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        PodGuard {
            cni: self,
            pod_id: pod_id.to_string(),
            guard: Some(guard),
        }
    }
}

struct PodGuard<'a> {
    cni: &'a Cni,
    pod_id: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        let mut pods = self.cni.pods.lock().unwrap_or_else(|e| e.into_inner());
        // Two holders: the map and this guard; nobody else is waiting.
        if pods
            .get(&self.pod_id)
            .is_some_and(|m| Arc::strong_count(m) == 2)
        {
            pods.remove(&self.pod_id);
        }
        self.guard.take();
    }
}

/// The config a plugin reads on stdin: its own object plus the list's name and version,
/// the capability args it declares (`runtimeConfig`) and the previous result.
pub fn plugin_stdin(
    list: &NetworkList,
    plugin: &serde_json::Map<String, Value>,
    capability_args: &Value,
    prev: Option<&Value>,
) -> Vec<u8> {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(rc) = pod::runtime_config(plugin, capability_args) {
        conf.insert("runtimeConfig".into(), rc);
    }
    match prev {
        Some(p) => conf.insert("prevResult".into(), p.clone()),
        None => conf.remove("prevResult"),
    };
    serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
}

fn result_of(network: &str, raw: Value) -> Result<NetworkResult, CniError> {
    NetworkResult::parse(network, raw).map_err(|reason| CniError::BadResult {
        network: network.to_string(),
        plugin: "(final result)".into(),
        command: "ADD",
        reason,
    })
}

fn check_pod_id(id: &str) -> Result<(), CniError> {
    if conf::valid_name(id) {
        return Ok(());
    }
    Err(CniError::InvalidArgument(format!("invalid pod id {id:?}")))
}

/// The netns path to pass to plugins: `None` (an empty CNI_NETNS) unless it is a live
/// namespace (a mounted nsfs file), as plugins fail on a path that is a plain file.
fn live_netns(path: &Path) -> Option<&Path> {
    if path.as_os_str().is_empty() {
        return None;
    }
    let fs = nix::sys::statfs::statfs(path).ok()?;
    (fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_plugin_stdin() {
        let list = NetworkList::parse(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","prevResult":{"stale":1}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            true,
            Path::new("/x"),
        )
        .unwrap();
        let args =
            serde_json::json!({"portMappings":[{"hostPort":1,"containerPort":2,"protocol":"tcp"}]});
        let first: Value =
            serde_json::from_slice(&plugin_stdin(&list, &list.plugins[0], &args, None)).unwrap();
        assert_eq!(
            first,
            serde_json::json!({"type":"bridge","name":"n","cniVersion":"1.0.0"})
        );
        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let second: Value =
            serde_json::from_slice(&plugin_stdin(&list, &list.plugins[1], &args, Some(&prev)))
                .unwrap();
        assert_eq!(second["runtimeConfig"], args);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["name"], "n");
    }

    #[test]
    fn live_netns_needs_nsfs() {
        assert_eq!(
            live_netns(Path::new("/proc/self/ns/net")),
            Some(Path::new("/proc/self/ns/net"))
        );
        assert_eq!(live_netns(Path::new("/etc/hostname")), None);
        assert_eq!(live_netns(Path::new("/nonexistent/ns/net")), None);
        assert_eq!(live_netns(Path::new("")), None);
    }

    #[tokio::test]
    async fn check_skips_lists_without_check() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = CniConfig::new(dir.path().join("cache"));
        // No plugins at all: a CHECK that runs fails.
        cfg.bin_dirs = vec![dir.path().join("bin")];
        let cni = Cni::new(cfg);
        let pod = PodNetwork {
            pod_id: "p".into(),
            netns: "/proc/self/ns/net".into(),
            ..Default::default()
        };
        assert!(!cni.recorded("p"));
        let record = |network: &str, version: &str, disable: bool| Attachment {
            kind: cache::KIND.into(),
            container_id: "p".into(),
            network: network.into(),
            if_name: IFNAME.into(),
            cni_args: "IgnoreUnknown=1".into(),
            config: serde_json::json!({"cniVersion": version, "name": network,
                "disableCheck": disable, "plugins": [{"type": "cairn-none"}]}),
            capability_args: serde_json::json!({}),
            result: Some(serde_json::json!({"cniVersion": version, "ips": []})),
        };
        cni.cache.store(&record("old", "0.3.1", false)).unwrap();
        cni.cache.store(&record("off", "1.0.0", true)).unwrap();
        assert!(cni.recorded("p"));
        assert!(cni.check(&pod).await.unwrap().is_empty());
        cni.cache.store(&record("new", "0.4.0", false)).unwrap();
        let err = cni.check(&pod).await.unwrap_err();
        assert!(
            matches!(&err, CniError::PluginNotFound { network, .. } if network == "new"),
            "{err:?}"
        );
        assert!(err.known_bug().is_none());
        let portmap = CniError::Plugin {
            network: "n".into(),
            plugin: "portmap".into(),
            command: "CHECK",
            code: 0,
            msg: "exit status: 1".into(),
            details: String::new(),
        };
        assert!(portmap.known_bug().unwrap().contains("#819"));
    }

    #[tokio::test]
    async fn status_follows_the_conf_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = CniConfig::new(dir.path().join("cache"));
        cfg.conf_dirs = vec![dir.path().join("net.d")];
        let cni = Cni::new(cfg);
        let err = cni.status().unwrap_err();
        assert!(err.starts_with("no network config found in "), "{err}");
        std::fs::create_dir(dir.path().join("net.d")).unwrap();
        std::fs::write(dir.path().join("net.d/10-a.conflist"), "{bad").unwrap();
        let err = cni.status().unwrap_err();
        assert!(err.contains("10-a.conflist: invalid JSON"), "{err}");
        std::fs::write(
            dir.path().join("net.d/10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"alpha","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(cni.status().unwrap(), "alpha");
        let pod = PodNetwork {
            pod_id: "bad/id".into(),
            ..Default::default()
        };
        assert!(matches!(
            cni.add(&pod).await,
            Err(CniError::InvalidArgument(_))
        ));
        assert!(cni.result("p").is_none());
        assert!(matches!(
            cni.check(&PodNetwork {
                pod_id: "p".into(),
                ..Default::default()
            })
            .await,
            Err(CniError::NotAttached(_))
        ));
    }
}
