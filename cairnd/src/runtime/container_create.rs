//! Creating a container (CRI CreateContainer): its record, then in parallel its writable
//! layer, its cgroup with limits and device rules, and its OCI spec and bundle; then the
//! shim's Create, which sets the process up and holds it before execve.
//! Runs in cairnd.

use super::*;

impl Runtime {
    // ---- containers --------------------------------------------------------------------

    pub async fn create_container(
        &self,
        pod_id: &str,
        config: cri::ContainerConfig,
    ) -> Result<String, Error> {
        let pod = self.pod(pod_id)?;
        if !pod.ready {
            return Err(Error::failed_precondition(format!(
                "pod sandbox {} is not ready (stopped)",
                pod.id
            )));
        }
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::invalid_argument("CreateContainer: metadata is required"))?;
        if meta.name.is_empty() {
            return Err(Error::invalid_argument(
                "CreateContainer: metadata.name is required",
            ));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(Error::invalid_argument(format!(
                "CreateContainer {}: image is required",
                meta.name
            )));
        }
        let image = self
            .images
            .resolve(&image_name)
            .map_err(store_err)?
            .ok_or_else(|| {
                Error::not_found(format!("image {image_name} not found: pull it first"))
            })?;
        let guard = self.lock.lock().await;
        if let Some(other) = self.containers()?.into_iter().find(|c| {
            c.pod_id == pod.id
                && c.config
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.name == meta.name && m.attempt == meta.attempt)
        }) {
            return Err(Error::already_exists(format!(
                "container {} (attempt {}) already exists in pod {} as {}",
                meta.name, meta.attempt, pod.id, other.id
            )));
        }
        let id = new_id();
        let log_path = match (&pod.config.log_directory, &config.log_path) {
            (d, p) if !d.is_empty() && !p.is_empty() => Path::new(d).join(p).display().to_string(),
            _ => String::new(),
        };
        let mut rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            config: config.clone(),
            image_id: image.record.id.clone(),
            image_ref: image
                .repo_tags
                .first()
                .cloned()
                .unwrap_or_else(|| image.record.id.clone()),
            state: cri::ContainerState::ContainerUnknown as i32,
            created_ns: now_ns(),
            started_ns: 0,
            finished_ns: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path,
            pid: 0,
            stop_signal: spec::stop_signal(&image.config).unwrap_or(libc::SIGTERM),
            cgroup_path: spec::cgroup_path(&pod_context(&pod).cgroup_parent, &id),
            user: None,
        };
        self.save_container(&rec)?;
        drop(guard);
        match self.make_container(&pod, &mut rec, &image).await {
            Ok(()) => {
                rec.state = cri::ContainerState::ContainerCreated as i32;
                self.save_container(&rec)?;
                self.event(&rec, cri::ContainerEventType::ContainerCreatedEvent);
                Ok(id)
            }
            Err(e) => {
                self.discard_container(&rec).await;
                Err(e)
            }
        }
    }

    pub(super) async fn make_container(
        &self,
        pod: &PodRecord,
        rec: &mut ContainerRecord,
        image: &cairn_snapshotter::image::Image,
    ) -> Result<(), Error> {
        let bundle = self.state.join("containers").join(&rec.id);
        std::fs::create_dir_all(bundle.join("rootfs")).map_err(internal)?;
        // The built-in launcher's cgroup is made while the rest is prepared (an external
        // runtime makes its own).
        let builtin = self.oci_runtime(&pod.runtime_handler)?.is_none();
        let cgroup = builtin.then(|| self.make_cgroup(&rec.id, &rec.cgroup_path));
        // So is the writable layer; the spec needs only the image's layers.
        let parent = image.record.top_chain_id().map(str::to_string);
        let lowers = match &parent {
            Some(p) => self.images.snapshotter().lowers(p).map_err(store_err),
            None => Ok(Vec::new()),
        };
        let mut layer = self.make_layer(&rec.id, parent);
        let oci = lowers.and_then(|l| self.container_spec(pod, rec, image, &bundle, &l));
        let written = oci
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|oci| self.write_bundle(oci, &bundle, &rec.id, builtin));
        // Awaited in any case: a cgroup still being made could outlive the cleanup.
        let cgroup = match cgroup {
            Some(c) => c.finish(oci.as_ref().ok(), &rec.id).await,
            None => Ok(()),
        };
        // On an error the layer's task is over (nothing was recorded).
        let overlay = layer.placed(&rec.id).await?;
        let launched = match (oci, written, cgroup) {
            (Ok(oci), Ok(()), Ok(())) => {
                self.remember_process(&rec.id, &oci);
                self.create_in_shim(pod, rec, &bundle, &overlay).await
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
        };
        // Its disk sync overlapped the rest. Awaited in any case: a container discarded
        // before its layer is recorded would leave the record behind.
        let recorded = layer.recorded.await.map_err(internal).and_then(|r| {
            r.map_err(|e| {
                internal(format!(
                    "container {}: recording its writable layer: {e}",
                    rec.id
                ))
            })
        });
        rec.pid = launched?;
        recorded
    }

    /// The container's OCI spec from its CRI config, its pod and its image; records the
    /// user it runs as.
    pub(super) fn container_spec(
        &self,
        pod: &PodRecord,
        rec: &mut ContainerRecord,
        image: &cairn_snapshotter::image::Image,
        bundle: &Path,
        lowers: &[PathBuf],
    ) -> Result<oci_spec::runtime::Spec, Error> {
        let pod_ctx = pod_context(pod);
        let cctx = ContainerContext {
            id: &rec.id,
            config: &rec.config,
            image: &image.config,
            rootfs_layers: lowers,
            rootfs: bundle.join("rootfs"),
            cgroup_path: rec.cgroup_path.clone(),
        };
        let mut oci = spec::build_spec(&pod_ctx, &cctx).map_err(|e| match e {
            spec::SpecError::NotFound(m) => Error::not_found(m),
            spec::SpecError::InvalidArgument(m) => Error::invalid_argument(m),
            spec::SpecError::FailedPrecondition(m) => Error::failed_precondition(m),
            other => internal(other),
        })?;
        if let Some(u) = oci.process().as_ref().map(|p| p.user()) {
            rec.user = Some(cri::LinuxContainerUser {
                uid: i64::from(u.uid()),
                gid: i64::from(u.gid()),
                supplemental_groups: u
                    .additional_gids()
                    .iter()
                    .flatten()
                    .map(|g| i64::from(*g))
                    .collect(),
            });
        }
        if rec.config.stdin_once {
            let mut annotations = oci.annotations().clone().unwrap_or_default();
            annotations.insert(STDIN_ONCE.into(), "true".into());
            oci.set_annotations(Some(annotations));
        }
        if let Some(target) = spec::pid_target(&rec.config) {
            // pid TARGET: the namespace of a running container of the same pod.
            let t = self.container(target)?;
            if t.pod_id != pod.id || t.state != cri::ContainerState::ContainerRunning as i32 {
                return Err(Error::invalid_argument(format!(
                    "container {}: pid namespace target {target} is not a running container of pod {}",
                    rec.id, pod.id
                )));
            }
            spec::set_pid_namespace(&mut oci, format!("/proc/{}/ns/pid", t.pid).into());
        }
        Ok(oci)
    }

    /// Creates the container in the pod's shim from its bundle, over `overlay`; its pid.
    pub(super) async fn create_in_shim(
        &self,
        pod: &PodRecord,
        rec: &ContainerRecord,
        bundle: &Path,
        overlay: &cairn_kernel::overlay::OverlayMount,
    ) -> Result<u32, Error> {
        let client = self.shim(pod).await?;
        let resp = client
            .create(
                ctx(),
                &task::CreateTaskRequest {
                    id: rec.id.clone(),
                    bundle: bundle.display().to_string(),
                    rootfs: vec![overlay_to(overlay)],
                    terminal: rec.config.tty,
                    // cairn's convention: any value keeps the container's stdin open.
                    stdin: if rec.config.stdin {
                        "open".into()
                    } else {
                        String::new()
                    },
                    stdout: rec.log_path.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| ttrpc_status(&format!("creating container {}", rec.id), e))?;
        Ok(resp.pid)
    }

    /// Starts making the container's writable layer on a blocking thread; see
    /// [`LayerMaking`].
    pub(super) fn make_layer(&self, id: &str, parent: Option<String>) -> LayerMaking {
        let snapshots = self.images.snapshotter().clone();
        let key = id.to_string();
        let (placed_tx, placed) = tokio::sync::oneshot::channel();
        let recorded = tokio::task::spawn_blocking(move || {
            snapshots.prepare_then(&key, parent.as_deref(), |m| {
                let _ = placed_tx.send(m.clone());
            })
        });
        LayerMaking { placed, recorded }
    }

    /// Starts making the container's cgroup on a blocking thread; see [`CgroupMaking`].
    pub(super) fn make_cgroup(&self, id: &str, path: &str) -> CgroupMaking {
        // The limits and device rules come with the spec (see CgroupMaking::finish).
        let layout = self.layout.clone();
        let path = path.to_string();
        let id = id.to_string();
        let (limits, limits_rx) =
            tokio::sync::oneshot::channel::<Option<oci_spec::runtime::Linux>>();
        let made = tokio::task::spawn_blocking(move || {
            let Some(layout) = layout else {
                return Ok(());
            };
            let cgroup = Cgroup::new(&layout, &path).map_err(|e| e.to_string())?;
            cgroup.create().map_err(|e| e.to_string())?;
            // Nothing when the spec could not be built (the caller then discards the
            // container, and with it the cgroup).
            let Ok(Some(linux)) = limits_rx.blocking_recv() else {
                return Ok(());
            };
            let applied = linux
                .resources()
                .as_ref()
                .map_or(Ok(()), |r| cgroup.apply(r))
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    let dirs = cgroup.join_dirs();
                    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
                    let rules = linux
                        .resources()
                        .as_ref()
                        .and_then(|r| r.devices().as_deref());
                    cairn_kernel::devices::install(&dirs, rules.unwrap_or_default())
                        .map_err(|e| format!("linux.resources.devices: {e}"))
                });
            if let Err(e) = applied {
                if let Err(d) = cgroup.delete() {
                    tracing::warn!(container = %id, error = %d, "removing a cgroup whose limits failed");
                }
                return Err(e);
            }
            Ok(())
        });
        CgroupMaking { limits, made }
    }

    /// The bundle's files: the OCI spec, and for the built-in launcher the compiled
    /// seccomp program.
    pub(super) fn write_bundle(
        &self,
        oci: &oci_spec::runtime::Spec,
        bundle: &Path,
        id: &str,
        builtin: bool,
    ) -> Result<(), Error> {
        if builtin {
            self.save_seccomp_program(oci, bundle, id)?;
        }
        oci.save(bundle.join("config.json")).map_err(internal)
    }

    /// Compiles the spec's seccomp profile (once per profile: most containers share one)
    /// into the bundle, for the built-in launcher of the pod's shim.
    pub(super) fn save_seccomp_program(
        &self,
        oci: &oci_spec::runtime::Spec,
        bundle: &Path,
        id: &str,
    ) -> Result<(), Error> {
        let Some(profile) = oci.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
            return Ok(());
        };
        let program = self
            .seccomp
            .bytes(profile)
            .map_err(|e| Error::invalid_argument(format!("container {id}: linux.seccomp: {e}")))?;
        std::fs::write(bundle.join(SECCOMP_PROGRAM), program.as_slice()).map_err(internal)
    }
}

/// A container's writable layer being made on a blocking thread: its overlay once its dirs
/// are in place ([`LayerMaking::placed`]), then the durable commit of its record, which
/// overlaps the launch (see `Snapshotter::prepare_then`). `recorded` must be awaited on
/// every path: a container discarded before its layer is recorded would leave the record.
pub(super) struct LayerMaking {
    placed: tokio::sync::oneshot::Receiver<cairn_kernel::overlay::OverlayMount>,
    recorded: tokio::task::JoinHandle<Result<(), cairn_snapshotter::Error>>,
}

impl LayerMaking {
    /// The layer's overlay, or why it could not be made (then `recorded` has been awaited
    /// already, and nothing was recorded).
    async fn placed(&mut self, id: &str) -> Result<cairn_kernel::overlay::OverlayMount, Error> {
        if let Ok(overlay) = (&mut self.placed).await {
            return Ok(overlay);
        }
        // It failed before its dirs were placed: the task says why.
        match (&mut self.recorded).await {
            Ok(Err(e)) => Err(store_err(e)),
            Ok(Ok(())) => Err(internal(format!("container {id}: no writable layer"))),
            Err(e) => Err(internal(e)),
        }
    }
}

/// A container's cgroup being made on a blocking thread: its dirs at once, then the limits
/// of its spec, once that is built ([`CgroupMaking::finish`]).
pub(super) struct CgroupMaking {
    limits: tokio::sync::oneshot::Sender<Option<oci_spec::runtime::Linux>>,
    made: tokio::task::JoinHandle<Result<(), String>>,
}

impl CgroupMaking {
    /// Hands over the limits of `oci` (None: the spec could not be built) and waits until
    /// the cgroup is made.
    async fn finish(self, oci: Option<&oci_spec::runtime::Spec>, id: &str) -> Result<(), Error> {
        let _ = self.limits.send(oci.and_then(|o| o.linux().clone()));
        self.made
            .await
            .map_err(internal)?
            .map_err(|e| Error::failed_precondition(format!("container {id}: {e}")))
    }
}
