//! A private containerd 1.6 (Debian's `/usr/bin/containerd`) for the benchmark: its own
//! root, state, socket, runc root and `config.toml` in a temp dir, the CRI plugin with runc
//! (default) and crun handlers, the cgroupfs driver, the shared CNI network and the private
//! registry as a plain-HTTP host. As in production (`/run/containerd` on tmpfs, the root on
//! disk), `state` and the runc and crun roots below it are on a private tmpfs; the root
//! stays on disk.
//!
//! On drop it SIGKILLs every shim it started (found by the socket in their command line)
//! and what runs below them, stops containerd (SIGTERM, SIGKILL after 5 s), unmounts
//! everything under its temp dir, removes the shim sockets it left in /run/containerd/s,
//! and removes the dir.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::host::{entries, kill_tree, mount_tmpfs, processes, CNI_PLUGINS, STATE_TMPFS_SIZE};

const BINARY: &str = "/usr/bin/containerd";
const SHIM: &str = "containerd-shim-runc-v2";
const SHIM_SOCKETS: &str = "/run/containerd/s";

/// A running private containerd.
pub struct Containerd {
    dir: TempDir,
    child: Option<Child>,
    /// Entries of /run/containerd/s before we started, so only ours are removed.
    sockets_before: Vec<PathBuf>,
}

impl Containerd {
    /// Writes the config and starts containerd; waits up to 20 s for its socket.
    pub fn start(registry_host: &str, sandbox_image: &str, cni_conf_dir: &Path) -> Result<Self> {
        if !Path::new(BINARY).exists() {
            bail!("{BINARY} is missing: apt-get install containerd");
        }
        let dir = tempfile::Builder::new()
            .prefix("cairn-bench-ctrd-")
            .tempdir()
            .context("cannot create containerd's temp dir")?;
        let mut c = Containerd {
            dir,
            child: None,
            sockets_before: entries(Path::new(SHIM_SOCKETS)),
        };
        // Mounted once `c` exists: its drop unmounts everything under the dir.
        let state = c.state();
        std::fs::create_dir(&state)
            .with_context(|| format!("cannot create {}", state.display()))?;
        mount_tmpfs(&state, STATE_TMPFS_SIZE)?;
        c.write_config(registry_host, sandbox_image, cni_conf_dir)?;
        c.spawn()?;
        Ok(c)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's `state` dir (a private tmpfs), holding the runc and crun roots too.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// containerd's `root` dir (on disk).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
            .unwrap_or(0)
    }

    /// Pids of the shims this containerd started.
    pub fn shims(&self) -> Vec<i32> {
        processes(SHIM, &self.socket().display().to_string())
    }

    fn write_config(&self, registry_host: &str, sandbox_image: &str, cni: &Path) -> Result<()> {
        let d = self.dir.path();
        let certs = d.join("certs.d").join(registry_host);
        std::fs::create_dir_all(&certs)
            .with_context(|| format!("cannot create {}", certs.display()))?;
        let hosts = format!(
            "server = \"http://{registry_host}\"\n\n[host.\"http://{registry_host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
        );
        std::fs::write(certs.join("hosts.toml"), hosts).context("cannot write hosts.toml")?;
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        let p = |sub: &str| d.join(sub).display().to_string();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[{cri}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{runc_root}"

[{cri}.containerd.runtimes.crun]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.crun.options]
  SystemdCgroup = false
  BinaryName = "/usr/bin/crun"
  Root = "{crun_root}"

[{cri}.cni]
  bin_dir = "{CNI_PLUGINS}"
  conf_dir = "{cni}"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{certs}"
"#,
            root = self.root().display(),
            state = self.state().display(),
            socket = self.socket().display(),
            opt = p("opt"),
            runc_root = self.state().join("runc").display(),
            crun_root = self.state().join("crun").display(),
            cni = cni.display(),
            certs = p("certs.d"),
        );
        let path = d.join("config.toml");
        std::fs::write(&path, config).with_context(|| format!("cannot write {}", path.display()))
    }

    fn spawn(&mut self) -> Result<()> {
        let log_path = self.log_path();
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let log_err = log.try_clone().context("cannot dup the log fd")?;
        let child = Command::new(BINARY)
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("cannot run {BINARY}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!(
                    "containerd exited with {status}; log tail:\n{}",
                    self.tail()
                );
            }
            if UnixStream::connect(self.socket()).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd did not listen within 20 s; log tail:\n{}",
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last 30 lines of containerd's log.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn kill_shims(&self) {
        kill_tree(&self.shims());
    }

    fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.child = None;
    }

    fn remove_shim_sockets(&self) {
        for path in entries(Path::new(SHIM_SOCKETS)) {
            if !self.sockets_before.contains(&path) && UnixStream::connect(&path).is_err() {
                let _ = std::fs::remove_file(&path);
            }
        }
        let _ = std::fs::remove_dir(SHIM_SOCKETS);
        let _ = std::fs::remove_dir("/run/containerd");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill_shims();
        self.stop();
        cairn_tests::daemon::unmount_under(self.dir.path());
        self.remove_shim_sockets();
    }
}
