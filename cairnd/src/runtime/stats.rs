//! A container's cgroup statistics, as its shim reports them (CRI ContainerStats and the
//! stats lists).
//! Runs in cairnd.

use super::*;

impl Runtime {
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
}
