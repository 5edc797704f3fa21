//! Stopping a pod (CRI StopPodSandbox) and what happens when its shim dies on its own: its
//! containers stopped, its network detached, its shim and namespaces gone; idempotent.
//! Runs in cairnd.

use super::*;

impl Runtime {
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
    pub(super) async fn teardown_pod(&self, pod: &PodRecord) {
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
        self.host.release_pod(&pod.dir);
        self.host.kill_shim(pod);
    }

    /// Watches the pod's shim process (through a pidfd, which works as well for a shim
    /// started by an earlier cairnd) and calls [`Runtime::shim_lost`] when it exits.
    pub(super) fn monitor_shim(self: &Arc<Self>, pod: &PodRecord) {
        if !self
            .monitored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pod.id.clone())
        {
            return;
        }
        let exit = self.host.shim_exit(pod);
        let rt = self.clone();
        let id = pod.id.clone();
        tokio::spawn(async move {
            let exited = exit.await;
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
            self.host.unmount(&rootfs);
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
        self.host.release_pod(&pod.dir);
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
}
