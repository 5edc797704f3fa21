//! Removing a pod (CRI RemovePodSandbox): stopped first, then its containers, its run dir
//! and its record; idempotent.
//! Runs in cairnd.

use super::*;

impl Runtime {
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
        self.host.release_pod(&pod.dir);
        if let Err(e) = std::fs::remove_dir_all(&pod.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(internal(format!("removing {}: {e}", pod.dir.display())));
            }
        }
        let _guard = self.lock.lock().await;
        self.store().delete_record(PODS, &pod.id).map_err(store_err)
    }
}
