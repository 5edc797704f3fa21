//! Running a pod (CRI RunPodSandbox): its record first, then its run dir, its shim (which
//! makes the pod's namespaces) and its CNI attachment; a failure undoes what was made.
//! Runs in cairnd.

use super::*;

impl Runtime {
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

    pub(super) async fn start_pod(&self, pod: &mut PodRecord) -> Result<(), Error> {
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
        let oci_runtime = self.oci_runtime(&pod.runtime_handler)?;
        let args = shim_args(pod, &hostname, userns, oci_runtime.as_deref());
        let pid = self.host.start_shim(pod, args).await?;
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
    pub(super) fn network_wanted(&self, pod: &PodRecord) -> Result<bool, Error> {
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
}

/// The pod's hostname: the node's for a host-network pod and, as containerd and CRI-O do,
/// for a pod that asks for none; else the one it asks for (checked by
/// `spec::validate_sandbox`).
pub(super) fn pod_hostname(config: &cri::PodSandboxConfig) -> String {
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
pub(super) fn write_pod_files(
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

/// The shim's command line after its name: pod ID, pod dir, hostname, then the namespaces
/// it is to share with the host or across the pod, the user namespace's ID maps
/// (`container:host:length`, as in /proc/<pid>/uid_map) and the OCI runtime binary, if any.
pub(super) fn shim_args(
    pod: &PodRecord,
    hostname: &str,
    userns: Option<&cri::UserNamespace>,
    oci_runtime: Option<&Path>,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        pod.id.clone().into(),
        pod.dir.clone().into(),
        hostname.into(),
    ];
    if namespace_mode(&pod.config, |o| o.network) == cri::NamespaceMode::Node {
        args.push("--host-network".into());
    }
    if namespace_mode(&pod.config, |o| o.ipc) == cri::NamespaceMode::Node {
        args.push("--host-ipc".into());
    }
    if namespace_mode(&pod.config, |o| o.pid) == cri::NamespaceMode::Pod {
        args.push("--share-pid".into());
    }
    if let Some(u) = userns {
        for (flag, maps) in [("--uid-map", &u.uids), ("--gid-map", &u.gids)] {
            for m in maps {
                args.push(flag.into());
                args.push(format!("{}:{}:{}", m.container_id, m.host_id, m.length).into());
            }
        }
    }
    if let Some(binary) = oci_runtime {
        args.push("--oci-runtime".into());
        args.push(binary.into());
    }
    args
}
