//! cairnd's side of streamed sessions (CRI `Exec`, `Attach`, `PortForward` once the
//! client has connected to the streaming server): FIFOs between cairnd and the pod's
//! shim for a container's streams, and connections into a pod's network namespace.
//!
//! For each session cairnd makes a private dir of FIFOs under the container's bundle,
//! opens its own ends first (outputs for reading without blocking, stdin read-write so
//! that the shim's open never blocks), then hands the paths to the shim: in
//! `ExecProcessRequest` for an exec, in the `io.cairn.attach` update annotation for an
//! attach. Closing its stdin end is how cairnd passes on the client's end of input.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;
use cairn_proto::cri;
use cairn_streaming::{Streams, TerminalSize};
use containerd_shim_protos::shim::shim as task;
use containerd_shim_protos::shim_async::TaskClient;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::exec::ExecRef;
use super::{ctx, internal, new_id, ttrpc_status, ContainerRecord, Runtime};
use cairn_proto::shim::bundle::{AttachPaths, ATTACH};

/// How long output may still flow after the process exited (a child that kept its
/// stdout open must not hold the session forever).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// A session's FIFOs, removed with it.
struct Fifos {
    dir: PathBuf,
}

impl Fifos {
    fn new(bundle: &Path, session: &str) -> Result<Fifos, Error> {
        let dir = bundle.join(format!("io-{session}"));
        std::fs::create_dir(&dir)
            .map_err(|e| internal(format!("creating {}: {e}", dir.display())))?;
        Ok(Fifos { dir })
    }

    fn make(&self, name: &str) -> Result<PathBuf, Error> {
        let path = self.dir.join(name);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| internal(format!("mkfifo {}: {e}", path.display())))?;
        Ok(path)
    }

    /// An output FIFO, opened for reading: (path for the shim, cairnd's end).
    fn output(&self, name: &str) -> Result<(String, pipe::Receiver), Error> {
        let path = self.make(name)?;
        let rx = pipe::OpenOptions::new()
            .open_receiver(&path)
            .map_err(|e| internal(format!("opening {}: {e}", path.display())))?;
        Ok((path.display().to_string(), rx))
    }

    /// The stdin FIFO, opened read-write so that neither side's open blocks.
    fn input(&self) -> Result<(String, pipe::Sender), Error> {
        let path = self.make("stdin")?;
        let tx = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&path)
            .map_err(|e| internal(format!("opening {}: {e}", path.display())))?;
        Ok((path.display().to_string(), tx))
    }
}

impl Drop for Fifos {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The running copies of one session.
#[derive(Default)]
struct Pumps {
    outputs: Vec<JoinHandle<()>>,
    stdin: Option<JoinHandle<()>>,
    resize: Option<JoinHandle<()>>,
}

impl Pumps {
    fn output(&mut self, mut from: pipe::Receiver, mut to: Box<dyn AsyncWrite + Send + Unpin>) {
        self.outputs.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from, &mut to).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut to).await;
        }));
    }

    fn stdin(&mut self, mut from: Box<dyn AsyncRead + Send + Unpin>, mut to: pipe::Sender) {
        self.stdin = Some(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from, &mut to).await;
            // Dropping `to` closes cairnd's end: the shim reads end of file.
        }));
    }

    fn resize(
        &mut self,
        client: TaskClient,
        id: String,
        exec_id: String,
        mut sizes: mpsc::Receiver<TerminalSize>,
    ) {
        self.resize = Some(tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                let req = task::ResizePtyRequest {
                    id: id.clone(),
                    exec_id: exec_id.clone(),
                    width: u32::from(size.width),
                    height: u32::from(size.height),
                    ..Default::default()
                };
                let _ = client.resize_pty(ctx(), &req).await;
            }
        }));
    }

    /// Waits until every output has ended (at most `limit`).
    async fn drain(&mut self, limit: Option<Duration>) {
        let all = futures::future::join_all(self.outputs.iter_mut());
        match limit {
            Some(limit) => {
                let _ = tokio::time::timeout(limit, all).await;
            }
            None => {
                all.await;
            }
        }
    }

    fn has_outputs(&self) -> bool {
        !self.outputs.is_empty()
    }
}

impl Drop for Pumps {
    fn drop(&mut self) {
        for h in self.outputs.iter().chain(&self.stdin).chain(&self.resize) {
            h.abort();
        }
    }
}

impl Runtime {
    pub(crate) fn running(&self, id: &str) -> Result<ContainerRecord, Error> {
        let rec = self.container(id)?;
        if rec.state != cri::ContainerState::ContainerRunning as i32 {
            return Err(Error::failed_precondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        Ok(rec)
    }

    /// Runs `cmd` in a running container with the client's streams; returns its exit code.
    pub async fn exec_streams(
        &self,
        id: &str,
        cmd: Vec<String>,
        streams: Streams,
    ) -> Result<i32, Error> {
        let rec = self.running(id)?;
        if cmd.is_empty() {
            return Err(Error::invalid_argument("Exec: cmd is empty"));
        }
        let pod = self.pod(&rec.pod_id)?;
        let client = self.shim(&pod).await?;
        let bundle = self.state.join("containers").join(&rec.id);
        let mut process = self.process_template(&rec.id, &bundle)?;
        process.set_args(Some(cmd));
        process.set_terminal(Some(streams.tty));
        let exec_id = new_id()[..16].to_string();
        let fifos = Fifos::new(&bundle, &exec_id)?;
        let mut pumps = Pumps::default();
        // The guard exists before the shim knows the exec: if the client leaves during
        // any call below, the exec is killed and forgotten.
        let exec = ExecRef::new(&client, &rec.id, &exec_id);
        let mut req = exec.request(serde_json::to_vec(&process).map_err(internal)?);
        req.terminal = streams.tty;
        if let Some(out) = streams.stdout {
            let (path, rx) = fifos.output("stdout")?;
            req.stdout = path;
            pumps.output(rx, out);
        }
        if let (Some(out), false) = (streams.stderr, streams.tty) {
            let (path, rx) = fifos.output("stderr")?;
            req.stderr = path;
            pumps.output(rx, out);
        }
        let mut stdin = None;
        if let Some(input) = streams.stdin {
            let (path, tx) = fifos.input()?;
            req.stdin = path;
            stdin = Some((input, tx));
        }
        if let Err(e) = exec.create_and_start(&req).await {
            exec.finish().await;
            return Err(e);
        }
        if let Some((input, tx)) = stdin {
            pumps.stdin(input, tx);
        }
        if let (Some(sizes), true) = (streams.resize, streams.tty) {
            pumps.resize(client.clone(), rec.id.clone(), exec_id.clone(), sizes);
        }
        let waited = exec.wait().await;
        pumps.drain(Some(OUTPUT_DRAIN)).await;
        drop(pumps);
        exec.finish().await;
        drop(fifos);
        waited
    }

    /// Attaches the client's streams to a running container's main process until it
    /// exits, or the client's output goes away.
    pub async fn attach_streams(&self, id: &str, streams: Streams) -> Result<(), Error> {
        let rec = self.running(id)?;
        let pod = self.pod(&rec.pod_id)?;
        let client = self.shim(&pod).await?;
        let bundle = self.state.join("containers").join(&rec.id);
        let session = new_id()[..16].to_string();
        let fifos = Fifos::new(&bundle, &format!("attach-{session}"))?;
        let mut pumps = Pumps::default();
        let mut paths = AttachPaths::default();
        if let Some(out) = streams.stdout {
            let (path, rx) = fifos.output("stdout")?;
            paths.stdout = path;
            pumps.output(rx, out);
        }
        if let (Some(out), false) = (streams.stderr, rec.config.tty) {
            let (path, rx) = fifos.output("stderr")?;
            paths.stderr = path;
            pumps.output(rx, out);
        }
        let mut stdin = None;
        if let (Some(input), true) = (streams.stdin, rec.config.stdin) {
            let (path, tx) = fifos.input()?;
            paths.stdin = path;
            stdin = Some((input, tx));
        }
        let req = task::UpdateTaskRequest {
            id: rec.id.clone(),
            annotations: [(
                ATTACH.to_string(),
                serde_json::to_string(&paths).map_err(internal)?,
            )]
            .into(),
            ..Default::default()
        };
        let what = format!("attaching to container {}", rec.id);
        client
            .update(ctx(), &req)
            .await
            .map_err(|e| ttrpc_status(&what, e))?;
        if let Some((input, tx)) = stdin {
            pumps.stdin(input, tx);
        }
        if let (Some(sizes), true) = (streams.resize, rec.config.tty) {
            pumps.resize(client.clone(), rec.id.clone(), String::new(), sizes);
        }
        if pumps.has_outputs() {
            pumps.drain(None).await;
        } else {
            let wait = super::wait_req(&rec.id);
            let exited = client.wait(ctx(), &wait);
            match pumps.stdin.as_mut() {
                Some(input) => {
                    tokio::select! {
                        _ = exited => {}
                        _ = input => {}
                    }
                }
                None => {
                    let _ = exited.await;
                }
            }
        }
        drop(pumps);
        drop(fifos);
        Ok(())
    }

    /// Connects to `port` on the loopback of the pod's network namespace.
    pub async fn port_forward_connect(
        &self,
        pod_id: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, Error> {
        let pod = self.pod(pod_id)?;
        if !pod.ready {
            return Err(Error::failed_precondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let netns = match super::is_host_network(&pod.config) {
            true => None,
            false => Some(cairn_proto::shim::pod::ns_path(&pod.dir, "net")),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("portforward".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = tx.send(connect_in(netns.as_deref(), port));
            })
            .map_err(internal)?;
        let stream = rx
            .await
            .map_err(|_| internal("port-forward connector died"))?
            .map_err(|e| {
                Error::unavailable(format!(
                    "pod sandbox {pod_id}: connecting to port {port}: {e}"
                ))
            })?;
        stream.set_nonblocking(true).map_err(internal)?;
        tokio::net::TcpStream::from_std(stream).map_err(internal)
    }
}

/// On the calling thread (which it moves into `netns`, so it must be a throwaway one):
/// connects to localhost:port, IPv4 first.
fn connect_in(netns: Option<&Path>, port: u16) -> std::io::Result<std::net::TcpStream> {
    if let Some(path) = netns {
        let ns = std::fs::File::open(path)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
    }
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let limit = Duration::from_secs(5);
    std::net::TcpStream::connect_timeout(&v4, limit)
        .or_else(|e| std::net::TcpStream::connect_timeout(&v6, limit).map_err(|_| e))
}

/// The streaming server's view of the runtime: sessions of clients that connected to the
/// URLs that `Exec`, `Attach` and `PortForward` returned.
pub struct StreamingRuntime(pub std::sync::Arc<Runtime>);

fn stream_error(s: Error) -> cairn_streaming::StreamError {
    use cairn_streaming::StreamError;
    let msg = s.message().to_string();
    match s.code() {
        crate::error::Code::NotFound => StreamError::NotFound(msg),
        crate::error::Code::InvalidArgument => StreamError::InvalidArgument(msg),
        _ => StreamError::Other(msg),
    }
}

#[async_trait::async_trait]
impl cairn_streaming::Runtime for StreamingRuntime {
    async fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        streams: Streams,
    ) -> Result<i32, cairn_streaming::StreamError> {
        self.0
            .exec_streams(container_id, cmd, streams)
            .await
            .map_err(stream_error)
    }

    async fn attach(
        &self,
        container_id: &str,
        streams: Streams,
    ) -> Result<(), cairn_streaming::StreamError> {
        self.0
            .attach_streams(container_id, streams)
            .await
            .map_err(stream_error)
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        mut stream: Box<dyn cairn_streaming::AsyncStream>,
    ) -> Result<(), cairn_streaming::StreamError> {
        let mut tcp = self
            .0
            .port_forward_connect(pod_sandbox_id, port)
            .await
            .map_err(stream_error)?;
        let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
        Ok(())
    }
}
