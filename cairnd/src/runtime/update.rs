//! Changing a running container (CRI UpdateContainerResources, ReopenContainerLog).
//! Runs in cairnd.

use super::*;

impl Runtime {
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
}
