//! ExecSync in one ttrpc round trip: the shim's `cairn.shim.v1.Exec` service, next to
//! containerd's Task service on the pod's shim socket, and cairnd's client for it.
//!
//! `ExecSync` runs an exec to its end in a single call: the shim launches the process
//! without a start handshake ([`crate::launch::exec_now`]), reads its stdout and stderr
//! from pipes into memory, waits for its exit (or kills it at the deadline), reaps it and
//! forgets it. The Task API needs four calls for the same (Exec, Start, Wait, Delete) and
//! output files in the bundle. `Cancel` is cairnd's guard for a caller that went away
//! (kubelet's deadline, a client that hung up): it kills the exec now, or as soon as it
//! exists if the `ExecSync` call has not got that far yet.
//!
//! Wire format: ttrpc requests to service [`SERVICE`], methods [`EXEC_SYNC`] and
//! [`CANCEL`]; payloads in protobuf encoding, written and read by hand here (no generated
//! code), as if from this schema:
//!
//! ```proto
//! message ExecSyncRequest {
//!   string id = 1;          // the container
//!   string exec_id = 2;     // unique among the container's execs
//!   bytes process = 3;      // JSON OCI Process, as ExecProcessRequest.spec holds it
//!   uint64 timeout_ms = 4;  // 0: none; else the process is SIGKILLed at the deadline
//! }
//! message ExecSyncResponse {
//!   int32 exit_code = 1;        // 128 + signal when killed
//!   bytes stdout = 2;           // the first OUTPUT_LIMIT bytes
//!   bytes stderr = 3;           // the first OUTPUT_LIMIT bytes
//!   bool timed_out = 4;         // killed at the deadline
//!   uint64 stdout_dropped = 5;  // bytes read past the limit and dropped
//!   uint64 stderr_dropped = 6;
//! }
//! message CancelRequest {       // answered with google.protobuf.Empty
//!   string id = 1;
//!   string exec_id = 2;
//! }
//! ```
//!
//! Errors are ttrpc statuses with the codes and messages of the Task API's Exec and Start
//! (e.g. FAILED_PRECONDITION `exec: "nosuch": executable file not found in $PATH`). A shim
//! from before this service answers INVALID_ARGUMENT `/cairn.shim.v1.Exec/ExecSync does
//! not exist`: [`exec_sync`] returns `None` then, and cairnd takes the Task API path.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use containerd_shim_protos::protobuf::rt::WireType;
use containerd_shim_protos::protobuf::{CodedInputStream, CodedOutputStream};
use containerd_shim_protos::ttrpc::{self, MethodHandler, TtrpcContext};

use crate::task::TaskService;

/// The ttrpc service name.
pub const SERVICE: &str = "cairn.shim.v1.Exec";
/// Runs an exec to its end: [`ExecSyncRequest`] → [`ExecSyncResponse`].
pub const EXEC_SYNC: &str = "ExecSync";
/// Kills an exec sync whose caller went away: [`CancelRequest`] → empty.
pub const CANCEL: &str = "Cancel";

/// How much of each stream an ExecSync keeps (the rest is read and dropped, so that the
/// process never blocks on a full pipe): 2 MiB less 1 KiB, so that both streams and the
/// envelope fit in one ttrpc message (4 MiB at most). cairnd's Task API fallback keeps
/// the same amount.
pub const OUTPUT_LIMIT: usize = (2 << 20) - 1024;

/// After a SIGKILL at the deadline, how long the shim waits for the process to go before
/// it answers anyway (a process stuck in the kernel) and leaves the reaping to a thread.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Without pidfds (Linux < 5.3): how often the exit is polled.
const EXIT_POLL: Duration = Duration::from_millis(10);

type ProtoResult<T> = containerd_shim_protos::protobuf::Result<T>;

/// One exec to run to its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSyncRequest {
    pub id: String,
    pub exec_id: String,
    /// JSON OCI `Process`.
    pub process: Vec<u8>,
    /// 0: no deadline.
    pub timeout_ms: u64,
}

/// How an exec sync ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSyncResponse {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Killed at the deadline.
    pub timed_out: bool,
    /// Output past [`OUTPUT_LIMIT`], read and dropped.
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
}

/// The exec sync to cancel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelRequest {
    pub id: String,
    pub exec_id: String,
}

fn encode(write: impl FnOnce(&mut CodedOutputStream<'_>) -> ProtoResult<()>) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut out = CodedOutputStream::vec(&mut buf);
    // Writing into a Vec only fails on allocation failure, which aborts anyway.
    let written = write(&mut out).and_then(|()| out.flush());
    drop(out);
    debug_assert!(written.is_ok());
    buf
}

/// Reads fields until the end, handing each (number, stream) to `field`, which returns
/// false for numbers it does not know (skipped, for newer peers).
fn decode(
    buf: &[u8],
    mut field: impl FnMut(u32, &mut CodedInputStream<'_>) -> ProtoResult<bool>,
) -> Result<(), String> {
    let mut input = CodedInputStream::from_bytes(buf);
    let mut step = || -> ProtoResult<bool> {
        let Some(tag) = input.read_raw_tag_or_eof()? else {
            return Ok(false);
        };
        if !field(tag >> 3, &mut input)? {
            let wire = WireType::new(tag & 7).ok_or_else(|| {
                containerd_shim_protos::protobuf::Error::from(std::io::Error::other(format!(
                    "bad wire type in tag {tag}"
                )))
            })?;
            input.skip_field(wire)?;
        }
        Ok(true)
    };
    loop {
        match step() {
            Ok(true) => continue,
            Ok(false) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

impl ExecSyncRequest {
    pub fn encode(&self) -> Vec<u8> {
        encode(|out| {
            out.write_string(1, &self.id)?;
            out.write_string(2, &self.exec_id)?;
            out.write_bytes(3, &self.process)?;
            out.write_uint64(4, self.timeout_ms)
        })
    }

    pub fn decode(buf: &[u8]) -> Result<ExecSyncRequest, String> {
        let mut r = ExecSyncRequest::default();
        decode(buf, |n, input| {
            match n {
                1 => r.id = input.read_string()?,
                2 => r.exec_id = input.read_string()?,
                3 => r.process = input.read_bytes()?,
                4 => r.timeout_ms = input.read_uint64()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(r)
    }
}

impl ExecSyncResponse {
    pub fn encode(&self) -> Vec<u8> {
        encode(|out| {
            out.write_int32(1, self.exit_code)?;
            out.write_bytes(2, &self.stdout)?;
            out.write_bytes(3, &self.stderr)?;
            out.write_bool(4, self.timed_out)?;
            out.write_uint64(5, self.stdout_dropped)?;
            out.write_uint64(6, self.stderr_dropped)
        })
    }

    pub fn decode(buf: &[u8]) -> Result<ExecSyncResponse, String> {
        let mut r = ExecSyncResponse::default();
        decode(buf, |n, input| {
            match n {
                1 => r.exit_code = input.read_int32()?,
                2 => r.stdout = input.read_bytes()?,
                3 => r.stderr = input.read_bytes()?,
                4 => r.timed_out = input.read_bool()?,
                5 => r.stdout_dropped = input.read_uint64()?,
                6 => r.stderr_dropped = input.read_uint64()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(r)
    }
}

impl CancelRequest {
    pub fn encode(&self) -> Vec<u8> {
        encode(|out| {
            out.write_string(1, &self.id)?;
            out.write_string(2, &self.exec_id)
        })
    }

    pub fn decode(buf: &[u8]) -> Result<CancelRequest, String> {
        let mut r = CancelRequest::default();
        decode(buf, |n, input| {
            match n {
                1 => r.id = input.read_string()?,
                2 => r.exec_id = input.read_string()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(r)
    }
}

// ---- shim side ------------------------------------------------------------------------

/// The service's methods, to register on the shim's ttrpc server next to the Task
/// service.
pub fn service(task: TaskService) -> HashMap<String, Box<dyn MethodHandler + Send + Sync>> {
    let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
    methods.insert(
        format!("/{SERVICE}/{EXEC_SYNC}"),
        Box::new(ExecSyncMethod(task.clone())),
    );
    methods.insert(format!("/{SERVICE}/{CANCEL}"), Box::new(CancelMethod(task)));
    methods
}

struct ExecSyncMethod(TaskService);
struct CancelMethod(TaskService);

fn bad_request(what: &str, e: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        ttrpc::Code::INVALID_ARGUMENT,
        format!("{what}: {e}"),
    ))
}

/// Sends `result` (payload or error status) as the answer to the request of `ctx`.
fn respond(ctx: &TtrpcContext, result: Result<Vec<u8>, ttrpc::Error>) -> ttrpc::Result<()> {
    let (status, payload) = match result {
        Ok(payload) => (ttrpc::get_status(ttrpc::Code::OK, ""), payload),
        Err(ttrpc::Error::RpcStatus(s)) => (s, Vec::new()),
        Err(e) => (
            ttrpc::get_status(ttrpc::Code::UNKNOWN, e.to_string()),
            Vec::new(),
        ),
    };
    let mut res = ttrpc::Response::new();
    res.set_status(status);
    res.payload = payload;
    ctx.respond(ctx.mh.stream_id, res)
}

impl MethodHandler for ExecSyncMethod {
    fn handler(&self, ctx: TtrpcContext, req: ttrpc::Request) -> ttrpc::Result<()> {
        let result = ExecSyncRequest::decode(&req.payload)
            .map_err(|e| bad_request("ExecSync request", e))
            .and_then(|r| self.0.exec_sync(&r))
            .map(|r| r.encode());
        respond(&ctx, result)
    }
}

impl MethodHandler for CancelMethod {
    fn handler(&self, ctx: TtrpcContext, req: ttrpc::Request) -> ttrpc::Result<()> {
        let result = CancelRequest::decode(&req.payload)
            .map_err(|e| bad_request("Cancel request", e))
            .map(|r| {
                self.0.cancel_exec_sync(&r.id, &r.exec_id);
                Vec::new()
            });
        respond(&ctx, result)
    }
}

/// One output stream of the process: what was kept, how much was dropped.
#[derive(Debug, Default)]
pub(crate) struct Output {
    pub(crate) data: Vec<u8>,
    pub(crate) dropped: u64,
}

impl Output {
    fn keep(&mut self, bytes: &[u8]) {
        let room = OUTPUT_LIMIT.saturating_sub(self.data.len());
        let n = bytes.len().min(room);
        self.data.extend_from_slice(&bytes[..n]);
        self.dropped += (bytes.len() - n) as u64;
    }
}

/// What [`collect`] saw of a process.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub(crate) stdout: Output,
    pub(crate) stderr: Output,
    /// Killed at the deadline.
    pub(crate) timed_out: bool,
    /// The process has exited (and is not reaped yet); false only when it outlived the
    /// grace period after its SIGKILL.
    pub(crate) exited: bool,
}

/// Reads the process's output pipes until it exits, killing it (SIGKILL) at `deadline`.
/// Returns once it has exited and what it wrote is read; the process is not reaped (the
/// caller does that after forgetting its pid), so that no kill can reach a reused pid.
///
/// Output written after the exit by processes it left behind (holding the pipes) is not
/// waited for: the pipes are drained of what is there and closed.
pub(crate) fn collect(pid: i32, outputs: [OwnedFd; 2], deadline: Option<Instant>) -> Collected {
    let pidfd = pidfd_open(pid);
    for fd in &outputs {
        set_nonblocking(fd.as_raw_fd());
    }
    let mut streams: [Option<OwnedFd>; 2] = outputs.map(Some);
    let mut c = Collected::default();
    // On the stack: a 64 KiB heap block freed per call makes glibc consolidate its heap.
    let mut buf = [0u8; 16 * 1024];
    let mut deadline = deadline;
    loop {
        let wait = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let wait = match (&pidfd, wait) {
            (Some(_), w) => w,
            (None, Some(w)) => Some(w.min(EXIT_POLL)),
            (None, None) => Some(EXIT_POLL),
        };
        let [out_ready, err_ready, exit_seen] = poll(&streams, pidfd.as_ref(), wait);
        let [out_slot, err_slot] = &mut streams;
        for (ready, slot, out) in [
            (out_ready, out_slot, &mut c.stdout),
            (err_ready, err_slot, &mut c.stderr),
        ] {
            if ready && !read_some(slot, out, &mut buf, 1) {
                *slot = None;
            }
        }
        let exited = match &pidfd {
            Some(_) => exit_seen,
            None => has_exited(pid),
        };
        if exited {
            // Bounded: a process left behind may keep writing.
            read_some(&streams[0], &mut c.stdout, &mut buf, 64);
            read_some(&streams[1], &mut c.stderr, &mut buf, 64);
            c.exited = true;
            return c;
        }
        let Some(d) = deadline else {
            continue;
        };
        if Instant::now() < d {
            continue;
        }
        if c.timed_out {
            // Killed, yet still there after the grace period.
            return c;
        }
        // SAFETY: kill(2) on our child, not reaped yet (so the pid is still its own).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        c.timed_out = true;
        deadline = Some(Instant::now() + KILL_GRACE);
    }
}

/// Reads from `fd` up to `rounds` times until it would block; false once it is at end of
/// file (or broken). Nothing to do (true) for a closed slot.
fn read_some(slot: &Option<OwnedFd>, out: &mut Output, buf: &mut [u8], rounds: usize) -> bool {
    let Some(fd) = slot else {
        return true;
    };
    for _ in 0..rounds {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            out.keep(&buf[..n as usize]);
            continue;
        }
        if n == 0 {
            return false;
        }
        let e = std::io::Error::last_os_error();
        return matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        );
    }
    true
}

/// Waits (at most `wait`; None: no limit) until a stream has data or has ended, or the
/// pidfd says the process exited; returns which of (stdout, stderr, pidfd) are ready.
fn poll(
    streams: &[Option<OwnedFd>; 2],
    pidfd: Option<&OwnedFd>,
    wait: Option<Duration>,
) -> [bool; 3] {
    let entry = |fd: Option<RawFd>| libc::pollfd {
        // A negative fd is ignored by poll(2).
        fd: fd.unwrap_or(-1),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [
        entry(streams[0].as_ref().map(|f| f.as_raw_fd())),
        entry(streams[1].as_ref().map(|f| f.as_raw_fd())),
        entry(pidfd.map(|f| f.as_raw_fd())),
    ];
    let timeout = match wait {
        // Rounded up, so that a deadline is never polled for in a busy loop.
        Some(w) => w.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
        None => -1,
    };
    // SAFETY: fds is a valid array of pollfd for its length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    // On EINTR (n < 0), nothing is ready: the caller comes back.
    fds.map(|f| n > 0 && f.fd >= 0 && f.revents != 0)
}

/// A pidfd for our child `pid`; None where the kernel has none (then the exit is polled).
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(pid, 0) returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor we now own (pidfds are close-on-exec).
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether our child `pid` has exited, without reaping it.
fn has_exited(pid: i32) -> bool {
    // SAFETY: siginfo_t is plain data; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: waitid on our own child with a valid siginfo pointer.
    let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
    // SAFETY: si_pid is valid to read after waitid (0 when nothing has changed).
    r != 0 || unsafe { info.si_pid() } != 0
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we hold.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

// ---- cairnd side ----------------------------------------------------------------------

fn request(method: &str, payload: Vec<u8>) -> ttrpc::Request {
    let mut req = ttrpc::Request::new();
    req.service = SERVICE.to_string();
    req.method = method.to_string();
    req.payload = payload;
    req
}

/// Whether `e` is a shim's answer that it has no such method (a shim from before this
/// service).
fn is_missing_method(e: &ttrpc::Error, method: &str) -> bool {
    let ttrpc::Error::RpcStatus(s) = e else {
        return false;
    };
    match s.code() {
        ttrpc::Code::UNIMPLEMENTED => true,
        ttrpc::Code::INVALID_ARGUMENT | ttrpc::Code::NOT_FOUND => {
            s.message == format!("/{SERVICE}/{method} does not exist")
        }
        _ => false,
    }
}

/// Runs `req` through the shim's ExecSync; `Ok(None)`: the shim does not have it.
pub async fn exec_sync(
    client: &ttrpc::asynchronous::Client,
    req: &ExecSyncRequest,
) -> Result<Option<ExecSyncResponse>, ttrpc::Error> {
    let res = match client.request(request(EXEC_SYNC, req.encode())).await {
        Ok(res) => res,
        Err(e) if is_missing_method(&e, EXEC_SYNC) => return Ok(None),
        Err(e) => return Err(e),
    };
    ExecSyncResponse::decode(&res.payload)
        .map(Some)
        .map_err(|e| ttrpc::Error::Others(format!("ExecSync response: {e}")))
}

/// Asks the shim to kill exec sync `exec_id` of container `id`, now or when it starts.
pub async fn cancel(
    client: &ttrpc::asynchronous::Client,
    id: &str,
    exec_id: &str,
) -> Result<(), ttrpc::Error> {
    let req = CancelRequest {
        id: id.to_string(),
        exec_id: exec_id.to_string(),
    };
    client.request(request(CANCEL, req.encode())).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let req = ExecSyncRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
            process: br#"{"args":["true"]}"#.to_vec(),
            timeout_ms: 5000,
        };
        assert_eq!(ExecSyncRequest::decode(&req.encode()).unwrap(), req);
        let res = ExecSyncResponse {
            exit_code: -3,
            stdout: b"out".to_vec(),
            stderr: vec![0, 255, 10],
            timed_out: true,
            stdout_dropped: 7,
            stderr_dropped: 0,
        };
        assert_eq!(ExecSyncResponse::decode(&res.encode()).unwrap(), res);
        let cancel = CancelRequest {
            id: "c".into(),
            exec_id: "e".into(),
        };
        assert_eq!(CancelRequest::decode(&cancel.encode()).unwrap(), cancel);
        assert_eq!(
            ExecSyncResponse::decode(&[]).unwrap(),
            ExecSyncResponse::default()
        );
    }

    #[test]
    fn unknown_fields_are_skipped_and_garbage_fails() {
        let mut buf = encode(|out| {
            out.write_string(9, "from a newer peer")?;
            out.write_uint64(10, 1)
        });
        buf.extend(
            CancelRequest {
                id: "c".into(),
                exec_id: "e".into(),
            }
            .encode(),
        );
        let r = CancelRequest::decode(&buf).unwrap();
        assert_eq!((r.id.as_str(), r.exec_id.as_str()), ("c", "e"));
        assert!(ExecSyncRequest::decode(&[0x0a, 0x05, b'a']).is_err());
    }

    #[test]
    fn the_limit_fits_one_ttrpc_message() {
        let res = ExecSyncResponse {
            exit_code: -1,
            stdout: vec![1; OUTPUT_LIMIT],
            stderr: vec![2; OUTPUT_LIMIT],
            timed_out: true,
            stdout_dropped: u64::MAX,
            stderr_dropped: u64::MAX,
        };
        let mut envelope = ttrpc::Response::new();
        envelope.set_status(ttrpc::get_status(ttrpc::Code::OK, ""));
        envelope.payload = res.encode();
        let size = ttrpc::proto::Codec::size(&envelope) as usize;
        assert!(size < ttrpc::proto::MESSAGE_LENGTH_MAX, "{size}");
    }

    #[test]
    fn output_keeps_the_limit_and_counts_the_rest() {
        let mut out = Output::default();
        out.keep(&vec![b'a'; OUTPUT_LIMIT - 2]);
        out.keep(b"bcde");
        assert_eq!(out.data.len(), OUTPUT_LIMIT);
        assert!(out.data.ends_with(b"abc"));
        assert_eq!(out.dropped, 2);
    }

    #[test]
    fn the_missing_method_answer_is_recognised() {
        let missing = ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::INVALID_ARGUMENT,
            format!("/{SERVICE}/{EXEC_SYNC} does not exist"),
        ));
        assert!(is_missing_method(&missing, EXEC_SYNC));
        let other = ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::INVALID_ARGUMENT,
            "exec process spec: bad",
        ));
        assert!(!is_missing_method(&other, EXEC_SYNC));
        let not_found = ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::NOT_FOUND,
            "container c not found in this pod",
        ));
        assert!(!is_missing_method(&not_found, EXEC_SYNC));
    }
}
