//! Removing a container (CRI RemoveContainer): stopped if running, then its shim task,
//! writable layer, cgroup, exit record and record; idempotent.
//! Runs in cairnd.

use super::*;

impl Runtime {
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

    /// Removes everything a half-made or removed container had.
    pub(super) async fn discard_container(&self, rec: &ContainerRecord) {
        if let Ok(pod) = self.pod(&rec.pod_id) {
            let client = match self.host.shim_alive(&pod) {
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
        self.host.unmount(&bundle.join("rootfs"));
        if let Err(e) = self.images.snapshotter().remove(&rec.id) {
            tracing::warn!(container = %rec.id, error = %e, "removing writable layer");
        }
        let _ = std::fs::remove_dir_all(&bundle);
        self.forget_process(&rec.id);
        let _ = self.store().delete_record(CONTAINERS, &rec.id);
    }
}
