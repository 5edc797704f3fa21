//! Starting a container (CRI StartContainer) and recording its exit when the shim reports
//! it.
//! Runs in cairnd.

use super::*;

impl Runtime {
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
    pub(super) fn watch(self: &Arc<Self>, pod_id: String, id: String, client: TaskClient) {
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

    pub(super) async fn record_exit(&self, id: &str, code: i32, at: i64, unknown: Option<&str>) {
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
}
