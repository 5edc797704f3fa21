//! The compatibility path: an external OCI runtime binary (runc, crun) run by the pod's
//! shim on the same bundle the built-in launcher uses, for pods whose CRI
//! `runtime_handler` names one in cairnd's config. This is the one place where cairn
//! execs another program to start a container.
//!
//! The shim mounts the container's overlay at the bundle's `rootfs` (in its own mount
//! namespace, which is the host's) before `create`, and the runtime's state lives under
//! the pod's run dir (`--root`), so both go away with the pod. The container process's
//! stdio are the runtime's own (pipes the shim reads for the CRI log), or a terminal
//! whose master the runtime sends over `--console-socket`. The runtime's create and exec
//! leave the process running after they exit: the shim, a child subreaper, adopts and
//! reaps it like one of the built-in launcher's.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcStdio};
use std::time::{Duration, Instant};

use super::{io_error, LaunchError, Stdio};

/// How long `create` waits for the runtime to hand over a terminal.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// An OCI runtime binary and the state dir it keeps its containers in.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    pub binary: PathBuf,
    pub root: PathBuf,
}

/// A container the runtime created (blocked before running its process).
#[derive(Debug)]
pub struct OciCreated {
    pub pid: i32,
    /// The terminal's master side, for a tty container.
    pub pty_master: Option<OwnedFd>,
}

impl OciRuntime {
    fn command(&self, log: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        if let Some(log) = log {
            cmd.arg("--log").arg(log).arg("--log-format").arg("json");
        }
        cmd
    }

    fn name(&self) -> String {
        self.binary.display().to_string()
    }

    /// `<runtime> create --bundle B --pid-file F [--console-socket S] id`, with the
    /// container's stdio as the runtime's.
    pub fn create(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<OciCreated, LaunchError> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| io_error(format!("creating {}", self.root.display()), e))?;
        let pid_file = bundle.join("init.pid");
        let log = bundle.join("runtime.log");
        let _ = std::fs::remove_file(&pid_file);
        let mut cmd = self.command(Some(&log));
        cmd.arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file);
        let console = match stdio {
            Stdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                cmd.stdin(stdin.map_or_else(ProcStdio::null, ProcStdio::from))
                    .stdout(ProcStdio::from(stdout))
                    .stderr(ProcStdio::from(stderr));
                None
            }
            Stdio::Terminal => {
                let socket = ConsoleSocket::new(id)?;
                cmd.arg("--console-socket").arg(&socket.path);
                cmd.stdin(ProcStdio::null())
                    .stdout(ProcStdio::null())
                    .stderr(ProcStdio::null());
                Some(socket)
            }
        };
        cmd.arg(id);
        let mut child = cmd
            .spawn()
            .map_err(|e| io_error(format!("running {}", self.name()), e))?;
        // The command's copies of the stdio descriptors are closed by now (moved into
        // `cmd`, dropped with it below), so the log readers see EOF when the process ends.
        drop(cmd);
        let pty_master = match &console {
            Some(socket) => socket.receive(&mut child),
            None => Ok(None),
        };
        let status = child
            .wait()
            .map_err(|e| io_error(format!("waiting for {} create", self.name()), e))?;
        if !status.success() {
            return Err(LaunchError::Setup(format!(
                "{} create {id}: {}",
                self.name(),
                runtime_error(&log).unwrap_or_else(|| status.to_string())
            )));
        }
        let pty_master = pty_master?;
        if console.is_some() && pty_master.is_none() {
            let _ = self.delete(id);
            return Err(LaunchError::Setup(format!(
                "{} create {id}: no terminal was received on the console socket",
                self.name()
            )));
        }
        let pid = read_pid(&pid_file)?;
        Ok(OciCreated { pid, pty_master })
    }

    /// `<runtime> start id`: the container's process runs.
    pub fn start(&self, id: &str) -> Result<(), LaunchError> {
        self.run(&["start", id]).map(|_| ())
    }

    /// `<runtime> exec --detach --process P --pid-file F id`: runs `process` in the
    /// container with `stdio`; returns its pid.
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        bundle: &Path,
        process: &oci_spec::runtime::Process,
        stdio: Stdio,
    ) -> Result<i32, LaunchError> {
        let Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } = stdio
        else {
            return Err(LaunchError::Unsupported(
                "a terminal for an exec through an external OCI runtime".into(),
            ));
        };
        let process_file = bundle.join(format!("exec-{exec_id}.json"));
        let pid_file = bundle.join(format!("exec-{exec_id}.pid"));
        let log = bundle.join(format!("exec-{exec_id}.log"));
        let json = serde_json::to_vec(process)
            .map_err(|e| LaunchError::InvalidSpec(format!("exec process: {e}")))?;
        std::fs::write(&process_file, json)
            .map_err(|e| io_error(format!("writing {}", process_file.display()), e))?;
        let mut cmd = self.command(Some(&log));
        cmd.arg("exec")
            .arg("--detach")
            .arg("--process")
            .arg(&process_file)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdin(stdin.map_or_else(ProcStdio::null, ProcStdio::from))
            .stdout(ProcStdio::from(stdout))
            .stderr(ProcStdio::from(stderr));
        let status = cmd.status();
        drop(cmd);
        let result = match status {
            Ok(s) if s.success() => read_pid(&pid_file),
            Ok(s) => Err(LaunchError::Exec(format!(
                "{} exec in {id}: {}",
                self.name(),
                runtime_error(&log).unwrap_or_else(|| s.to_string())
            ))),
            Err(e) => Err(io_error(format!("running {} exec", self.name()), e)),
        };
        for f in [&process_file, &pid_file, &log] {
            let _ = std::fs::remove_file(f);
        }
        result
    }

    /// `<runtime> delete --force id`: kills what is left and removes the runtime's state
    /// (and the cgroup it made). A container it does not know is fine.
    pub fn delete(&self, id: &str) -> Result<(), LaunchError> {
        match self.run(&["delete", "--force", id]) {
            Ok(_) => Ok(()),
            Err(LaunchError::Setup(msg))
                if msg.contains("does not exist") || msg.contains("not found") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs a short runtime command, its output captured.
    fn run(&self, args: &[&str]) -> Result<Vec<u8>, LaunchError> {
        let mut cmd = self.command(None);
        cmd.args(args).stdin(ProcStdio::null());
        let out = cmd
            .output()
            .map_err(|e| io_error(format!("running {}", self.name()), e))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(LaunchError::Setup(format!(
            "{} {}: {}",
            self.name(),
            args.join(" "),
            if text.is_empty() {
                out.status.to_string()
            } else {
                text
            }
        )))
    }
}

fn read_pid(path: &Path) -> Result<i32, LaunchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| io_error(format!("reading {}", path.display()), e))?;
    text.trim()
        .parse()
        .map_err(|_| LaunchError::Setup(format!("{}: not a pid: {text:?}", path.display())))
}

/// The last error message of a runtime's JSON log (`{"level":"error","msg":...}`).
fn runtime_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(str::to_string))
}

/// A unix socket the runtime connects to to send the terminal's master side.
struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// In the temp dir: a socket path must stay short (108 bytes).
    fn new(id: &str) -> Result<ConsoleSocket, LaunchError> {
        let short = &id[..id.len().min(12)];
        let mut name = OsString::from(format!("cairn-console-{}-{short}", std::process::id()));
        name.push(".sock");
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| io_error(format!("binding {}", path.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_error("console socket", e))?;
        Ok(ConsoleSocket { path, listener })
    }

    /// Accepts the runtime's connection and receives the master; None if the runtime
    /// exited without connecting.
    fn receive(&self, child: &mut std::process::Child) -> Result<Option<OwnedFd>, LaunchError> {
        let deadline = Instant::now() + CONSOLE_TIMEOUT;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream
                        .set_nonblocking(false)
                        .map_err(|e| io_error("console socket", e))?;
                    return recv_fd(&stream).map(Some);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(io_error("accepting on the console socket", e)),
            }
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Receives one descriptor (SCM_RIGHTS) on a connected unix socket.
fn recv_fd(stream: &std::os::unix::net::UnixStream) -> Result<OwnedFd, LaunchError> {
    let mut data = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // Room for one cmsghdr carrying one int, suitably aligned.
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg on our socket with a valid msghdr.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io_error(
            "receiving the terminal",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: walking the control messages recvmsg filled in.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
                return Ok(OwnedFd::from_raw_fd(fd));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Err(LaunchError::Setup(
        "the runtime sent no terminal on the console socket".into(),
    ))
}
