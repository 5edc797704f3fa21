//! CRI RuntimeService: maps the CRI calls onto [`crate::runtime::Runtime`] and its
//! records onto CRI messages (statuses, lists with filters, stats, events).
//! Runs in cairnd.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_proto::cri::{self, runtime_service_server::RuntimeService};
use tonic::{Request, Response, Status};

use crate::runtime::{ContainerEvent, ContainerRecord, PodRecord, Runtime};

/// The CRI API version cairn implements.
const CRI_API_VERSION: &str = "v1";

pub struct RuntimeApi {
    rt: Arc<Runtime>,
    /// Hands out the URLs of Exec, Attach and PortForward sessions.
    streaming: Arc<cairn_streaming::Server>,
}

impl RuntimeApi {
    pub fn new(rt: Arc<Runtime>, streaming: Arc<cairn_streaming::Server>) -> Self {
        RuntimeApi { rt, streaming }
    }
}

fn not_yet(call: &str) -> Status {
    Status::unimplemented(format!(
        "{call}: not implemented by cairn yet (see the README's feature table)"
    ))
}

fn condition(kind: &str, ready: bool, reason: &str, message: &str) -> cri::RuntimeCondition {
    cri::RuntimeCondition {
        r#type: kind.to_string(),
        status: ready,
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

fn pod_state(p: &PodRecord) -> i32 {
    if p.ready {
        cri::PodSandboxState::SandboxReady as i32
    } else {
        cri::PodSandboxState::SandboxNotready as i32
    }
}

fn labels(p: &PodRecord) -> (HashMap<String, String>, HashMap<String, String>) {
    (p.config.labels.clone(), p.config.annotations.clone())
}

fn matches_labels(have: &HashMap<String, String>, want: &HashMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

fn pod_status(rt: &Runtime, p: &PodRecord) -> cri::PodSandboxStatus {
    let (labels, annotations) = labels(p);
    cri::PodSandboxStatus {
        id: p.id.clone(),
        metadata: p.config.metadata.clone(),
        state: pod_state(p),
        created_at: p.created_ns,
        network: Some(rt.pod_network_status(p)),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: p
                    .config
                    .linux
                    .as_ref()
                    .and_then(|l| l.security_context.as_ref())
                    .and_then(|s| s.namespace_options.clone()),
            }),
        }),
        labels,
        annotations,
        runtime_handler: p.runtime_handler.clone(),
    }
}

fn container_status(c: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: c.state,
        created_at: c.created_ns,
        started_at: c.started_ns,
        finished_at: c.finished_ns,
        exit_code: c.exit_code,
        image: Some(cri::ImageSpec {
            image: c
                .config
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            ..Default::default()
        }),
        image_ref: c.image_id.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c.log_path.clone(),
        resources: c
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| cri::ContainerResources {
                linux: Some(r),
                ..Default::default()
            }),
        image_id: c.image_id.clone(),
        user: c
            .user
            .clone()
            .map(|linux| cri::ContainerUser { linux: Some(linux) }),
    }
}

fn container_item(c: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: c.config.metadata.clone(),
        image: Some(cri::ImageSpec {
            image: c.image_id.clone(),
            ..Default::default()
        }),
        image_ref: c.image_id.clone(),
        state: c.state,
        created_at: c.created_ns,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        image_id: c.image_id.clone(),
    }
}

/// A container event as CRI streams it: with the pod's status and the statuses of the
/// pod's containers (the changed one as it was right after the change; a deleted one is
/// left out), as kubelet's evented PLEG reads them.
fn event_response(rt: &Runtime, ev: ContainerEvent) -> cri::ContainerEventResponse {
    let c = &ev.container;
    let pod_sandbox_status = rt.pod(&c.pod_id).ok().map(|p| pod_status(rt, &p));
    let deleted = ev.kind == cri::ContainerEventType::ContainerDeletedEvent;
    let mut containers_statuses: Vec<cri::ContainerStatus> = rt
        .containers()
        .unwrap_or_default()
        .iter()
        .filter(|o| o.pod_id == c.pod_id && o.id != c.id)
        .map(container_status)
        .collect();
    if !deleted {
        containers_statuses.push(container_status(c));
    }
    cri::ContainerEventResponse {
        container_id: c.id.clone(),
        container_event_type: ev.kind as i32,
        created_at: ev.at,
        pod_sandbox_status,
        containers_statuses,
    }
}

fn u64v(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

use cairn_kernel::process::now_ns;

impl RuntimeApi {
    async fn container_stats(&self, c: &ContainerRecord) -> cri::ContainerStats {
        self.container_stats_and_pids(c).await.0
    }

    /// The container's CRI stats and the number of processes in its cgroup.
    async fn container_stats_and_pids(&self, c: &ContainerRecord) -> (cri::ContainerStats, u64) {
        let ts = now_ns();
        let s = self.rt.stats(c).await.unwrap_or_default();
        let layer = self
            .rt
            .images
            .snapshotter()
            .usage(&c.id)
            .unwrap_or_default();
        let stats = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id.clone(),
                metadata: c.config.metadata.clone(),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            cpu: Some(cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: u64v(s.cpu_usage_ns),
                usage_nano_cores: None,
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: u64v(s.memory_working_set),
                available_bytes: None,
                usage_bytes: u64v(s.memory_usage),
                rss_bytes: u64v(s.memory_rss),
                page_faults: u64v(s.page_faults),
                major_page_faults: u64v(s.major_page_faults),
            }),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: ts,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.rt.images.snapshotter().dir().display().to_string(),
                }),
                used_bytes: u64v(layer.bytes),
                inodes_used: u64v(layer.inodes),
            }),
            swap: None,
        };
        (stats, s.pids)
    }

    async fn pod_stats(&self, p: &PodRecord) -> Result<cri::PodSandboxStats, Status> {
        let mut containers = Vec::new();
        let mut processes = 0;
        for c in self.rt.containers()?.iter().filter(|c| c.pod_id == p.id) {
            let (stats, pids) = self.container_stats_and_pids(c).await;
            containers.push(stats);
            processes += pids;
        }
        let ts = now_ns();
        let sum = |f: &dyn Fn(&cri::ContainerStats) -> u64| containers.iter().map(f).sum::<u64>();
        let cpu = sum(&|c| {
            c.cpu
                .as_ref()
                .and_then(|x| x.usage_core_nano_seconds.as_ref())
                .map_or(0, |v| v.value)
        });
        let ws = sum(&|c| {
            c.memory
                .as_ref()
                .and_then(|x| x.working_set_bytes.as_ref())
                .map_or(0, |v| v.value)
        });
        let rss = sum(&|c| {
            c.memory
                .as_ref()
                .and_then(|x| x.rss_bytes.as_ref())
                .map_or(0, |v| v.value)
        });
        let usage = sum(&|c| {
            c.memory
                .as_ref()
                .and_then(|x| x.usage_bytes.as_ref())
                .map_or(0, |v| v.value)
        });
        let (labels, annotations) = labels(p);
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: p.id.clone(),
                metadata: p.config.metadata.clone(),
                labels,
                annotations,
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: ts,
                    usage_core_nano_seconds: u64v(cpu),
                    usage_nano_cores: None,
                }),
                memory: Some(cri::MemoryUsage {
                    timestamp: ts,
                    working_set_bytes: u64v(ws),
                    usage_bytes: u64v(usage),
                    rss_bytes: u64v(rss),
                    ..Default::default()
                }),
                network: None,
                process: Some(cri::ProcessUsage {
                    timestamp: ts,
                    process_count: u64v(processes),
                }),
                containers,
            }),
            windows: None,
        })
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeApi {
    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".to_string(),
            runtime_name: "cairn".to_string(),
            runtime_version: env!("CARGO_PKG_VERSION").to_string(),
            runtime_api_version: CRI_API_VERSION.to_string(),
        }))
    }

    async fn status(
        &self,
        _request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let network = match self.rt.network_status() {
            Ok(_) => condition("NetworkReady", true, "", ""),
            Err(e) => condition("NetworkReady", false, "NetworkPluginNotReady", &e),
        };
        let conditions = vec![condition("RuntimeReady", true, "", ""), network];
        let runtime_handlers = self
            .rt
            .handlers()
            .into_iter()
            .map(|(name, builtin)| cri::RuntimeHandler {
                name,
                // What kubelet (≥ 1.30) and critest enable from here: the built-in
                // launcher mounts "rro" binds and runs user-namespaced pods over idmapped
                // layers; an external OCI runtime gets neither from cairn.
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: builtin,
                    user_namespaces: builtin,
                }),
            })
            .collect();
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            runtime_handlers,
            // SupplementalGroupsPolicy (Merge, Strict) and ContainerStatus.user.
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
            ..Default::default()
        }))
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn update_runtime_config(
        &self,
        _request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("RunPodSandbox: config is required"))?;
        let id = self.rt.run_pod(config, req.runtime_handler).await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        self.rt
            .stop_pod(&request.into_inner().pod_sandbox_id)
            .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        self.rt
            .remove_pod(&request.into_inner().pod_sandbox_id)
            .await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        let p = self.rt.pod(&req.pod_sandbox_id)?;
        let mut info = HashMap::new();
        if req.verbose {
            info.insert(
                "info".to_string(),
                serde_json::json!({
                    "shimPid": p.shim_pid,
                    "runDir": p.dir,
                    "runtimeHandler": p.runtime_handler,
                    "config": p.config,
                })
                .to_string(),
            );
        }
        let containers_statuses = self
            .rt
            .containers()?
            .iter()
            .filter(|c| c.pod_id == p.id)
            .map(container_status)
            .collect();
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(pod_status(&self.rt, &p)),
            info,
            containers_statuses,
            timestamp: now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let items = self
            .rt
            .pods()?
            .into_iter()
            .filter(|p| filter.id.is_empty() || p.id.starts_with(&filter.id))
            .filter(|p| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == pod_state(p))
            })
            .filter(|p| matches_labels(&p.config.labels, &filter.label_selector))
            .map(|p| {
                let (labels, annotations) = labels(&p);
                cri::PodSandbox {
                    id: p.id.clone(),
                    metadata: p.config.metadata.clone(),
                    state: pod_state(&p),
                    created_at: p.created_ns,
                    labels,
                    annotations,
                    runtime_handler: p.runtime_handler.clone(),
                }
            })
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("CreateContainer: config is required"))?;
        let id = self
            .rt
            .create_container(&req.pod_sandbox_id, config)
            .await?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        self.rt
            .start_container(&request.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = request.into_inner();
        self.rt
            .stop_container(&req.container_id, req.timeout)
            .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        self.rt
            .remove_container(&request.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let containers = self
            .rt
            .containers()?
            .iter()
            .filter(|c| filter.id.is_empty() || c.id.starts_with(&filter.id))
            .filter(|c| {
                filter.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&filter.pod_sandbox_id)
            })
            .filter(|c| filter.state.as_ref().is_none_or(|s| s.state == c.state))
            .filter(|c| matches_labels(&c.config.labels, &filter.label_selector))
            .map(container_item)
            .collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        let c = self.rt.container(&req.container_id)?;
        let mut info = HashMap::new();
        if req.verbose {
            info.insert(
                "info".to_string(),
                serde_json::json!({ "pid": c.pid, "podSandboxId": c.pod_id, "config": c.config })
                    .to_string(),
            );
        }
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(container_status(&c)),
            info,
        }))
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        let linux = req.linux.ok_or_else(|| {
            Status::invalid_argument("UpdateContainerResources: linux resources are required")
        })?;
        self.rt.update_resources(&req.container_id, &linux).await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        self.rt
            .reopen_log(&request.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let req = request.into_inner();
        let (stdout, stderr, exit_code) = self
            .rt
            .exec_sync(&req.container_id, req.cmd, req.timeout)
            .await?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout,
            stderr,
            exit_code,
        }))
    }

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let req = request.into_inner();
        self.rt.running(&req.container_id)?;
        Ok(Response::new(self.streaming.get_exec(&req)?))
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let req = request.into_inner();
        let c = self.rt.running(&req.container_id)?;
        if req.stdin && !c.config.stdin {
            return Err(Status::invalid_argument(format!(
                "Attach to container {}: stdin requested but the container was not created with stdin",
                c.id
            )));
        }
        Ok(Response::new(self.streaming.get_attach(&req)?))
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let req = request.into_inner();
        let pod = self.rt.pod(&req.pod_sandbox_id)?;
        if !pod.ready {
            return Err(Status::failed_precondition(format!(
                "PortForward: pod sandbox {} is not ready",
                pod.id
            )));
        }
        Ok(Response::new(self.streaming.get_port_forward(&req)?))
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let c = self.rt.container(&request.into_inner().container_id)?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(self.container_stats(&c).await),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut stats = Vec::new();
        for c in self.rt.containers()? {
            let keep = (filter.id.is_empty() || c.id.starts_with(&filter.id))
                && (filter.pod_sandbox_id.is_empty()
                    || c.pod_id.starts_with(&filter.pod_sandbox_id))
                && matches_labels(&c.config.labels, &filter.label_selector)
                && c.state == cri::ContainerState::ContainerRunning as i32;
            if keep {
                stats.push(self.container_stats(&c).await);
            }
        }
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let p = self.rt.pod(&request.into_inner().pod_sandbox_id)?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(self.pod_stats(&p).await?),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut stats = Vec::new();
        for p in self.rt.pods()? {
            if (filter.id.is_empty() || p.id.starts_with(&filter.id))
                && matches_labels(&p.config.labels, &filter.label_selector)
                && p.ready
            {
                stats.push(self.pod_stats(&p).await?);
            }
        }
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn checkpoint_container(
        &self,
        _request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(not_yet("CheckpointContainer"))
    }

    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let mut rx = self.rt.subscribe();
        let rt = self.rt.clone();
        let stream = async_stream::stream! {
            loop {
                match rx.recv().await {
                    Ok(ev) => yield Ok(event_response(&rt, ev)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a container event subscriber fell behind");
                        continue;
                    }
                    Err(_) => break,
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse::default()))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        Ok(Response::new(cri::ListPodSandboxMetricsResponse::default()))
    }
}
