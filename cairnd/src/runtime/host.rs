//! The lifecycle's seam to the machine: starting a pod's `cairn-shim` process and
//! connecting to it, telling whether it still runs, watching for its exit, killing it, and
//! the unmounts cairnd does itself after a shim that could not. Everything else the
//! lifecycle does goes through the stores and the shim's Task API, so with a [`Host`] of
//! their own (an in-process shim on a temp dir) unit tests drive create/start validation
//! and cleanup on failure without root. [`Machine`] is the real one.
//! Runs in cairnd.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::ttrpc;
use futures::future::BoxFuture;

use super::records::PodRecord;
use crate::error::Error;
use cairn_proto::shim::pod as podns;

/// What the lifecycle needs of the machine it runs pods on.
#[async_trait]
pub trait Host: Send + Sync + 'static {
    /// Starts the pod's shim with `args` (after the program name) and waits until it says
    /// it is ready; returns its pid.
    async fn start_shim(&self, pod: &PodRecord, args: Vec<OsString>) -> Result<u32, Error>;

    /// A ttrpc connection to the pod's shim.
    async fn connect_shim(&self, pod: &PodRecord) -> Result<ttrpc::asynchronous::Client, Error>;

    /// Whether the pod's shim process still runs.
    fn shim_alive(&self, pod: &PodRecord) -> bool;

    /// Resolves when the pod's shim has exited: true then, false when it cannot be
    /// watched (it resolves at once, true, when the shim is not running).
    fn shim_exit(&self, pod: &PodRecord) -> BoxFuture<'static, bool>;

    /// Kills the pod's shim process if it still runs (after it was asked to exit).
    fn kill_shim(&self, pod: &PodRecord);

    /// Detaches the mount at `path`, if any.
    fn unmount(&self, path: &Path);

    /// Releases the pod's namespaces and shm the shim had bound in its dir, if any are
    /// left.
    fn release_pod(&self, pod_dir: &Path);
}

/// This machine: the `cairn-shim` binary next to cairnd's, /proc, pidfds, umount2.
pub struct Machine {
    shim_bin: PathBuf,
}

/// How long a starting shim has to say it is ready.
const SHIM_READY_TIMEOUT: Duration = Duration::from_secs(10);

impl Machine {
    /// The machine with the shim binary beside the running executable.
    pub fn new() -> Machine {
        let shim_bin = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("cairn-shim")))
            .unwrap_or_else(|| PathBuf::from("cairn-shim"));
        Machine { shim_bin }
    }
}

impl Default for Machine {
    fn default() -> Machine {
        Machine::new()
    }
}

#[async_trait]
impl Host for Machine {
    async fn start_shim(&self, pod: &PodRecord, args: Vec<OsString>) -> Result<u32, Error> {
        let internal = |e: String| Error::internal(e);
        let log = std::fs::File::create(pod.dir.join("shim.log"))
            .map_err(|e| internal(format!("pod {}: creating shim.log: {e}", pod.id)))?;
        let mut cmd = tokio::process::Command::new(&self.shim_bin);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(false);
        // The shim calls setsid first thing (a session of its own, so that signals to
        // cairnd's process group never reach it): with no pre_exec hook here, std starts
        // it with posix_spawn (vfork) instead of a fork of cairnd.
        let mut child = cmd
            .spawn()
            .map_err(|e| internal(format!("starting {}: {e}", self.shim_bin.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| internal("shim stdout".into()))?;
        let ready = tokio::time::timeout(SHIM_READY_TIMEOUT, async {
            use tokio::io::AsyncBufReadExt;
            let mut line = String::new();
            tokio::io::BufReader::new(stdout)
                .read_line(&mut line)
                .await
                .map(|_| line)
        })
        .await;
        // Reap the shim whenever it exits, so it never lingers as a zombie.
        let pid = child.id().unwrap_or(0);
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        match ready {
            Ok(Ok(line)) if line.starts_with("ready") => Ok(pid),
            _ => {
                let log = std::fs::read_to_string(pod.dir.join("shim.log")).unwrap_or_default();
                Err(Error::internal(format!(
                    "pod {}: shim did not start: {}",
                    pod.id,
                    log.trim()
                )))
            }
        }
    }

    async fn connect_shim(&self, pod: &PodRecord) -> Result<ttrpc::asynchronous::Client, Error> {
        let sock = format!("unix://{}", pod.dir.join("shim.sock").display());
        ttrpc::asynchronous::Client::connect(&sock)
            .await
            .map_err(|e| Error::unavailable(format!("pod {}: shim unreachable: {e}", pod.id)))
    }

    fn shim_alive(&self, pod: &PodRecord) -> bool {
        shim_alive(pod)
    }

    fn shim_exit(&self, pod: &PodRecord) -> BoxFuture<'static, bool> {
        let pidfd = shim_pidfd(pod);
        let id = pod.id.clone();
        Box::pin(async move {
            let Some(fd) = pidfd else {
                // Already gone.
                return true;
            };
            // SAFETY: the AsyncFd owns the pidfd and nothing else closes or replaces it.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            };
            match registered {
                Ok(afd) => afd.readable().await.is_ok(),
                Err(e) => {
                    tracing::warn!(pod = %id, error = %e, "cannot watch the pod's shim");
                    false
                }
            }
        })
    }

    fn kill_shim(&self, pod: &PodRecord) {
        if !shim_alive(pod) {
            return;
        }
        if let Ok(pid) = i32::try_from(pod.shim_pid) {
            // SAFETY: signalling the shim we started for this pod (checked by its
            // command line just above).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    fn unmount(&self, path: &Path) {
        let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    }

    fn release_pod(&self, pod_dir: &Path) {
        podns::release(pod_dir);
    }
}

/// Whether the pod's shim process is still there (its pid, with the pod's id on its
/// command line, so a reused pid is not taken for it).
fn shim_alive(pod: &PodRecord) -> bool {
    if pod.shim_pid == 0 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", pod.shim_pid)) else {
        return false;
    };
    let alive = cmdline
        .windows(pod.id.len())
        .any(|w| w == pod.id.as_bytes());
    // A zombie keeps its pid (and an empty cmdline) until reaped.
    alive
        && std::fs::read_to_string(format!("/proc/{}/stat", pod.shim_pid))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
}

/// A pidfd of the pod's shim, checked to be the shim after it was opened; None when the
/// shim is not running.
fn shim_pidfd(pod: &PodRecord) -> Option<OwnedFd> {
    if pod.shim_pid == 0 {
        return None;
    }
    let fd = cairn_kernel::process::pidfd_open(i32::try_from(pod.shim_pid).ok()?)?;
    shim_alive(pod).then_some(fd)
}
