//! What cairnd does at start: reconnect to every shim, learn the exits that happened while
//! it was down, drop writable layers no container record names, and CHECK recovered pods'
//! networks.
//! Runs in cairnd.

use super::*;

impl Runtime {
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
            let client = match self.host.shim_alive(&pod) {
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
    pub(super) fn remove_orphan_layers(&self) -> Result<(), Error> {
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
            self.host.unmount(&bundle.join("rootfs"));
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
    pub(super) fn check_networks(self: &Arc<Self>, pods: Vec<PodRecord>) {
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
