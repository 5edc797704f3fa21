//! Creating a container (Task Create): the bundle read, the cgroup (made by cairnd, or
//! here), the launch with the built-in launcher or an OCI runtime, stdio and CRI log
//! copiers.
//! Runs in cairn-shim.

use super::*;

impl TaskService {
    pub(super) fn do_create(&self, req: &CreateTaskRequest) -> Result<u32, ttrpc::Error> {
        if self.lock().contains_key(&req.id) {
            return Err(err(
                ttrpc::Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let config = Path::new(&req.bundle).join("config.json");
        let spec = oci_spec::runtime::Spec::load(&config).map_err(|e| {
            err(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("container {}: reading {}: {e}", req.id, config.display()),
            )
        })?;
        let overlay = match req.rootfs.first() {
            Some(m) => Some(overlay_from(m).map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, e))?),
            None => None,
        };
        let (cgroup, made_by_cairnd) = self.make_cgroup(&req.id, &spec)?;
        let oom_before = cgroup
            .as_ref()
            .and_then(|c| c.oom_kills().ok())
            .unwrap_or(0);
        let log = match req.stdout.as_str() {
            "" => None,
            path => Some(LogFile::open(Path::new(path)).map_err(|e| {
                err(
                    ttrpc::Code::INVALID_ARGUMENT,
                    format!("container {}: opening log {path}: {e}", req.id),
                )
            })?),
        };
        let wants_stdin = !req.stdin.is_empty();
        let mut stdin_w = None;
        let (stdio, readers) = if req.terminal {
            (Stdio::Terminal, Vec::new())
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let stdin = match wants_stdin {
                true => {
                    let (r, w) = pipe()?;
                    stdin_w = Some(std::fs::File::from(w));
                    Some(r)
                }
                false => None,
            };
            (
                Stdio::Pipes {
                    stdin,
                    stdout: out_w,
                    stderr: err_w,
                },
                vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            )
        };
        // The pipes' copiers start while the process is set up; if the launch fails, its
        // ends are closed and the copiers stop at end of file, having written nothing.
        let tee = Arc::new(Tee::default());
        self.spawn_copiers(&req.id, readers, &log, &tee);
        let (pid, pty_master, pending, rootfs_mount) = match self.launch(
            &req.id,
            &req.bundle,
            &spec,
            overlay.as_ref(),
            &cgroup,
            made_by_cairnd,
            stdio,
        ) {
            Ok(l) => l,
            Err(e) => {
                if let Some(c) = &cgroup {
                    let _ = c.delete();
                }
                return Err(err(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("container {}: {e}", req.id),
                ));
            }
        };
        let seccomp = match &pending {
            Pending::Builtin(created) => created.seccomp.clone(),
            Pending::Oci => None,
        };
        let mut pty = None;
        if let Some(master) = pty_master {
            let dup = |fd: &OwnedFd| {
                streams::dup_file(fd).map_err(|e| err(ttrpc::Code::INTERNAL, format!("dup: {e}")))
            };
            pty = Some(dup(&master)?);
            if wants_stdin {
                stdin_w = Some(dup(&master)?);
            }
            self.spawn_copiers(&req.id, vec![(master, Stream::Stdout)], &log, &tee);
        }
        let once = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(STDIN_ONCE))
            .is_some_and(|v| v == "true");
        let stdin = stdin_w.map(|w| Stdin::new(w, once, req.terminal));
        self.lock().insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                rootfs_mount,
                log_path: req.stdout.clone(),
                cgroup,
                oom_before,
                init: Proc {
                    pid,
                    created: Some(pending),
                    started: false,
                    exit: None,
                },
                execs: HashMap::new(),
                log,
                stdin,
                tee,
                pty,
                seccomp,
                released: None,
            },
        );
        self.spawn_waiter(req.id.clone(), None, pid);
        Ok(pid as u32)
    }

    /// Creates the container process with the built-in launcher or the pod's OCI
    /// runtime: (pid, terminal master, start handle, rootfs the shim mounted).
    #[allow(clippy::type_complexity)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch(
        &self,
        id: &str,
        bundle: &str,
        spec: &oci_spec::runtime::Spec,
        overlay: Option<&OverlayMount>,
        cgroup: &Option<Cgroup>,
        device_rules_installed: bool,
        stdio: Stdio,
    ) -> Result<(i32, Option<OwnedFd>, Pending, Option<PathBuf>), String> {
        let wanted_adj = spec.process().as_ref().and_then(|p| p.oom_score_adj());
        let oom_score_adj = wanted_adj.map(cairn_kernel::cgroup::clamp_oom_score_adj);
        let Some(oci) = &self.inner.oci else {
            let opts = launch::CreateOptions {
                spec,
                overlay,
                cgroup_dirs: cgroup.as_ref().map(|c| c.join_dirs()).unwrap_or_default(),
                stdio,
                oom_score_adj,
                seccomp: compiled_seccomp(Path::new(bundle))?,
                device_rules_installed,
            };
            let mut created = launch::create(opts).map_err(|e| e.to_string())?;
            let master = created.pty_master.take();
            return Ok((created.pid, master, Pending::Builtin(created), None));
        };
        let bundle = Path::new(bundle);
        if oom_score_adj != wanted_adj {
            // The runtime writes the spec's value, which this process may not be allowed
            // to set: give it the clamped one.
            let mut spec = spec.clone();
            if let Some(p) = spec.process_mut().as_mut() {
                p.set_oom_score_adj(oom_score_adj);
            }
            spec.save(bundle.join("config.json"))
                .map_err(|e| format!("rewriting config.json: {e}"))?;
        }
        let rootfs = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .ok_or("the spec has no root")?;
        let rootfs = if rootfs.is_absolute() {
            rootfs
        } else {
            bundle.join(rootfs)
        };
        let mounted = match overlay {
            Some(o) => {
                cairn_kernel::overlay::mount(o, &rootfs, false)
                    .map_err(|e| format!("mounting the rootfs: {e}"))?;
                Some(rootfs)
            }
            None => None,
        };
        match oci.create(id, bundle, stdio) {
            Ok(c) => Ok((c.pid, c.pty_master, Pending::Oci, mounted)),
            Err(e) => {
                let _ = oci.delete(id);
                if let Some(m) = &mounted {
                    unmount(m);
                }
                Err(e.to_string())
            }
        }
    }

    /// Copies a container's outputs to its log and attached clients, on a small thread.
    pub(super) fn spawn_copiers(
        &self,
        id: &str,
        outputs: Vec<(OwnedFd, Stream)>,
        log: &Option<Arc<LogFile>>,
        tee: &Arc<Tee>,
    ) {
        if outputs.is_empty() {
            return;
        }
        if let Err(e) = spawn_copiers(outputs, log.clone(), tee.clone()) {
            tracing::warn!(container = %id, error = %e, "log copier");
        }
    }

    /// The container's cgroup: made by cairnd already (with the spec's limits and device
    /// rules: the flag says so), or made here with its limits.
    pub(super) fn make_cgroup(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(Option<Cgroup>, bool), ttrpc::Error> {
        let (Some(layout), Some(linux)) = (&self.inner.layout, spec.linux()) else {
            return Ok((None, false));
        };
        let Some(path) = linux.cgroups_path() else {
            return Ok((None, false));
        };
        let fail = |e: cairn_kernel::cgroup::CgroupError| {
            err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("container {id}: {e}"),
            )
        };
        let cgroup = Cgroup::new(layout, &path.display().to_string()).map_err(fail)?;
        if cgroup.exists() {
            return Ok((Some(cgroup), true));
        }
        cgroup.create().map_err(fail)?;
        if let Some(r) = linux.resources() {
            if let Err(e) = cgroup.apply(r) {
                let _ = cgroup.delete();
                return Err(fail(e));
            }
        }
        Ok((Some(cgroup), false))
    }
}

/// The compiled seccomp program cairnd left in the bundle ([`SECCOMP_PROGRAM`]), if any.
pub(super) fn compiled_seccomp(
    bundle: &Path,
) -> Result<Option<Arc<cairn_kernel::seccomp::Program>>, String> {
    let path = bundle.join(SECCOMP_PROGRAM);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let program = cairn_kernel::seccomp::Program::from_bytes(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(Arc::new(program)))
}
