//! The CRI workload, identical for every runtime: one [`Target`] is a CRI socket plus a
//! runtime handler; each step is timed around the gRPC calls only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_proto::cri;
use cairn_proto::cri::image_service_client::ImageServiceClient;
use cairn_proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// How long one CRI call may take before the run fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// One runtime under test.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub rt: RuntimeServiceClient<Channel>,
    pub img: ImageServiceClient<Channel>,
    pub handler: String,
    /// The small image containers run.
    pub image: String,
    pub cgroup_parent: String,
    pub logs: PathBuf,
}

/// A gRPC channel over a unix socket.
pub async fn connect(socket: &Path) -> Result<Channel> {
    cairn_proto::client::unix_channel(socket)
        .await
        .with_context(|| format!("cannot connect to {}", socket.display()))
}

/// Awaits a CRI call with [`CALL_TIMEOUT`], naming `what` in errors.
async fn call<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(anyhow::anyhow!("{what}: {status}")),
        Err(_) => Err(anyhow::anyhow!("{what}: no answer within {CALL_TIMEOUT:?}")),
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl Target {
    /// A pod config named `name`: private cgroup parent, pid namespace per container, host
    /// network when `host_net`.
    fn pod_config(&self, name: &str, host_net: bool) -> cri::PodSandboxConfig {
        let network = if host_net {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        };
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "bench".into(),
                attempt: 0,
            }),
            // With the host's UTS namespace the hostname cannot be set (runc refuses).
            hostname: if host_net { String::new() } else { name.into() },
            log_directory: self.logs.join(name).display().to_string(),
            labels: HashMap::from([("bench".to_string(), "1".to_string())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: network as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub async fn run_pod(&mut self, name: &str, host_net: bool) -> Result<(String, f64)> {
        let req = cri::RunPodSandboxRequest {
            config: Some(self.pod_config(name, host_net)),
            runtime_handler: self.handler.clone(),
        };
        let t = Instant::now();
        let r = call("RunPodSandbox", self.rt.run_pod_sandbox(req)).await?;
        Ok((r.pod_sandbox_id, ms(t)))
    }

    /// CreateContainer + StartContainer of `sleep 3600` in `pod` (run from a config of
    /// [`Target::run_pod`] with `pod_name` and host network).
    pub async fn start_container(
        &mut self,
        pod: &str,
        pod_name: &str,
        name: &str,
    ) -> Result<(String, f64)> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: self.image.clone(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "3600".into()],
                log_path: format!("{name}.log"),
                ..Default::default()
            }),
            sandbox_config: Some(self.pod_config(pod_name, true)),
        };
        let t = Instant::now();
        let id = call("CreateContainer", self.rt.create_container(req))
            .await?
            .container_id;
        let start = cri::StartContainerRequest {
            container_id: id.clone(),
        };
        call("StartContainer", self.rt.start_container(start)).await?;
        Ok((id, ms(t)))
    }

    /// `Version`: one CRI round trip that does no work, the floor under every other row.
    pub async fn version(&mut self) -> Result<f64> {
        let t = Instant::now();
        call("Version", self.rt.version(cri::VersionRequest::default())).await?;
        Ok(ms(t))
    }

    pub async fn exec_true(&mut self, ctr: &str) -> Result<f64> {
        let req = cri::ExecSyncRequest {
            container_id: ctr.into(),
            cmd: vec!["true".into()],
            timeout: 30,
        };
        let t = Instant::now();
        let r = call("ExecSync", self.rt.exec_sync(req)).await?;
        let took = ms(t);
        if r.exit_code != 0 {
            anyhow::bail!(
                "ExecSync true in {ctr} exited {}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            );
        }
        Ok(took)
    }

    /// StopContainer (timeout 0) + RemoveContainer.
    pub async fn remove_container(&mut self, ctr: &str) -> Result<f64> {
        let t = Instant::now();
        let stop = cri::StopContainerRequest {
            container_id: ctr.into(),
            timeout: 0,
        };
        call("StopContainer", self.rt.stop_container(stop)).await?;
        let rm = cri::RemoveContainerRequest {
            container_id: ctr.into(),
        };
        call("RemoveContainer", self.rt.remove_container(rm)).await?;
        Ok(ms(t))
    }

    /// StopPodSandbox + RemovePodSandbox.
    pub async fn remove_pod(&mut self, pod: &str) -> Result<f64> {
        let t = Instant::now();
        let stop = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        call("StopPodSandbox", self.rt.stop_pod_sandbox(stop)).await?;
        let rm = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        call("RemovePodSandbox", self.rt.remove_pod_sandbox(rm)).await?;
        Ok(ms(t))
    }

    pub async fn pull(&mut self, image: &str) -> Result<f64> {
        let req = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = Instant::now();
        call("PullImage", self.img.pull_image(req)).await?;
        Ok(ms(t))
    }

    /// Removes `image` if present (the next pull starts from a cold store).
    pub async fn remove_image(&mut self, image: &str) -> Result<()> {
        let req = cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        };
        call("RemoveImage", self.img.remove_image(req)).await?;
        Ok(())
    }

    /// Stops and removes every pod (best effort, for cleanup).
    pub async fn remove_all_pods(&mut self) {
        let req = cri::ListPodSandboxRequest { filter: None };
        let Ok(list) = call("ListPodSandbox", self.rt.list_pod_sandbox(req)).await else {
            return;
        };
        for pod in list.items {
            let _ = self.remove_pod(&pod.id).await;
        }
    }

    /// Runs `n` pods with one container each, all at once; returns the ids of the pods
    /// and the time until every container has started.
    pub async fn start_many(&self, prefix: &str, n: usize) -> Result<(Vec<String>, f64)> {
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let mut me = self.clone();
            let name = format!("{prefix}-{i}");
            tasks.spawn(async move {
                let (pod, _) = me.run_pod(&name, true).await?;
                me.start_container(&pod, &name, "c").await?;
                Ok::<_, anyhow::Error>(pod)
            });
        }
        let mut pods = Vec::new();
        let mut first_err = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(pod)) => pods.push(pod),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(e) => first_err = first_err.or(Some(anyhow::anyhow!("task failed: {e}"))),
            }
        }
        let took = ms(t);
        if let Some(e) = first_err {
            return Err(e.context(format!("{}: starting {n} pods at once", self.name)));
        }
        Ok((pods, took))
    }
}
