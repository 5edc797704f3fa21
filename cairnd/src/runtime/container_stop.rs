//! Stopping a container (CRI StopContainer): its stop signal, SIGKILL after the grace
//! period; idempotent.
//! Runs in cairnd.

use super::*;

impl Runtime {
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
        let client = match self.host.shim_alive(&pod) {
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
}
