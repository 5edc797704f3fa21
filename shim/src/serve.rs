//! The shim's ttrpc server, serving the services of [`crate::task`] and
//! [`crate::execsync`] on the pod's socket.
//!
//! containerd's ttrpc crate runs a reader thread, a writer thread and a pool of handler
//! threads per connection (six or more threads per shim), so every call crosses two
//! threads before its answer is written. Here one thread (the caller of [`Server::run`])
//! polls the listener and the connections, reads each request and answers it in line: a
//! few tens of microseconds less per call, and no idle threads in every pod. Only calls
//! that may take long run elsewhere: `Wait` is answered when its process exits, from the
//! thread that records the exit ([`TaskService::wait_then`]); `ExecSync` and `Delete` run
//! on a thread of their own, so that a long one never holds up the others.
//!
//! The wire format is ttrpc's: a 10-byte header (payload length and stream id as u32
//! big-endian, message type, flags) and a protobuf `Request` / `Response`. Each response is
//! written whole under its connection's write lock.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::{WaitRequest, WaitResponse};
use containerd_shim_protos::ttrpc::proto::{
    Codec, ResponseInit, MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX, MESSAGE_TYPE_REQUEST,
};
use containerd_shim_protos::ttrpc::{
    self, get_status, Code, ConnectionContext, MessageHeader, MethodHandler, Request, Response,
    TtrpcContext,
};

use crate::task::TaskService;

/// A service's methods by path (`/service/method`), as generated for ttrpc.
pub type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

/// The Task API's Wait, answered without a waiting thread.
const WAIT: &str = "/containerd.task.v3.Task/Wait";

/// Calls that may take long (an exec's whole run, killing and removing a container's
/// processes and cgroup): each runs on a thread of its own. (Shutdown runs in line: its
/// answer is written before [`Server::run`] returns.)
const ON_THEIR_OWN_THREAD: &[&str] = &[
    "/cairn.shim.v1.Exec/ExecSync",
    "/containerd.task.v3.Task/Delete",
];

/// The services of one shim.
pub struct Server {
    methods: Methods,
    task: TaskService,
}

/// One client connection; its reads happen on the serving thread only.
struct Conn {
    stream: UnixStream,
    writing: Mutex<()>,
}

impl Conn {
    /// Writes one response frame; a client gone is not an error here (it reads nothing).
    fn respond(&self, stream_id: u32, res: &Response) {
        let payload = match res.encode() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "encoding a ttrpc response");
                return;
            }
        };
        let header: Vec<u8> = MessageHeader::new_response(stream_id, payload.len() as u32).into();
        let _guard = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = &self.stream;
        if let Err(e) = out
            .write_all(&header)
            .and_then(|()| out.write_all(&payload))
        {
            tracing::debug!(error = %e, "writing a ttrpc response");
        }
    }

    fn respond_status(&self, stream_id: u32, code: Code, message: String) {
        self.respond(stream_id, &Response::init_status(get_status(code, message)));
    }
}

impl Server {
    /// A server for the methods of `services`; `task` answers the Task API's Wait calls.
    pub fn new(task: TaskService, services: Vec<Methods>) -> Arc<Server> {
        let methods = services.into_iter().flatten().collect();
        Arc::new(Server { methods, task })
    }

    /// Serves `listener` on the calling thread until `stop` says so (checked after each
    /// call; the Shutdown call is what makes it say so).
    pub fn run(self: &Arc<Self>, listener: &UnixListener, stop: impl Fn() -> bool) {
        let mut conns: Vec<Arc<Conn>> = Vec::new();
        while !stop() {
            let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
                .chain(conns.iter().map(|c| c.stream.as_raw_fd()))
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: fds is a valid array of pollfd for its length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "polling the shim socket");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                continue;
            }
            let ready: Vec<bool> = fds.iter().map(|f| f.revents != 0).collect();
            // Connections first, by index, before the list changes.
            let mut gone = Vec::new();
            for (i, conn) in conns.iter().enumerate() {
                if ready[i + 1] && !self.serve_one(conn) {
                    gone.push(i);
                }
                if stop() {
                    return;
                }
            }
            for i in gone.into_iter().rev() {
                conns.swap_remove(i);
            }
            if ready[0] {
                match listener.accept() {
                    Ok((stream, _)) => conns.push(Arc::new(Conn {
                        stream,
                        writing: Mutex::new(()),
                    })),
                    Err(e) => tracing::warn!(error = %e, "accepting on the shim socket"),
                }
            }
        }
    }

    /// Reads one request from `conn` and answers it (or has it answered); false when the
    /// connection is closed or broken.
    fn serve_one(self: &Arc<Self>, conn: &Arc<Conn>) -> bool {
        let mut head = [0u8; MESSAGE_HEADER_LENGTH];
        if (&conn.stream).read_exact(&mut head).is_err() {
            return false;
        }
        let mh = MessageHeader::from(&head[..]);
        let len = mh.length as usize;
        if len > MESSAGE_LENGTH_MAX {
            // Not read: the stream cannot be followed any more.
            conn.respond_status(
                mh.stream_id,
                Code::INVALID_ARGUMENT,
                format!("message of {len} bytes is over the limit of {MESSAGE_LENGTH_MAX}"),
            );
            return false;
        }
        let mut payload = vec![0u8; len];
        if (&conn.stream).read_exact(&mut payload).is_err() {
            return false;
        }
        if mh.type_ == MESSAGE_TYPE_REQUEST {
            self.dispatch(conn, mh, &payload);
        }
        true
    }

    fn dispatch(self: &Arc<Self>, conn: &Arc<Conn>, mh: MessageHeader, payload: &[u8]) {
        let req = match Request::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("decoding the request: {e}");
                return conn.respond_status(mh.stream_id, Code::INVALID_ARGUMENT, msg);
            }
        };
        let path = format!("/{}/{}", req.service, req.method);
        if path == WAIT {
            return self.wait(conn, mh.stream_id, &req);
        }
        if !self.methods.contains_key(&path) {
            let msg = format!("{path} does not exist");
            return conn.respond_status(mh.stream_id, Code::INVALID_ARGUMENT, msg);
        }
        if !ON_THEIR_OWN_THREAD.contains(&path.as_str()) {
            return self.call(conn, &path, mh, req);
        }
        let (me, conn2, path2) = (self.clone(), conn.clone(), path.clone());
        let spawned = std::thread::Builder::new()
            .name("call".into())
            .spawn(move || me.call(&conn2, &path2, mh, req));
        if let Err(e) = spawned {
            let msg = format!("{path}: no thread for the call: {e}");
            conn.respond_status(mh.stream_id, Code::UNAVAILABLE, msg);
        }
    }

    /// Runs the generated handler of `path` and writes what it answers.
    fn call(&self, conn: &Conn, path: &str, mh: MessageHeader, req: Request) {
        let Some(handler) = self.methods.get(path) else {
            return;
        };
        let stream_id = mh.stream_id;
        let (res_tx, res_rx) = std::sync::mpsc::channel();
        let ctx = TtrpcContext {
            fd: conn.stream.as_raw_fd(),
            cancel_rx: crossbeam_channel::never(),
            mh,
            res_tx,
            metadata: ttrpc::context::from_pb(&req.metadata),
            timeout_nano: req.timeout_nano,
            conn_ctx: Arc::new(ConnectionContext::default()),
        };
        if let Err(e) = handler.handler(ctx, req) {
            let msg = format!("{path}: {e:?}");
            return conn.respond_status(stream_id, Code::INVALID_ARGUMENT, msg);
        }
        for (_, frame) in res_rx.try_iter() {
            // Already a whole encoded Response: re-framed as is.
            let header: Vec<u8> = MessageHeader::new_response(stream_id, frame.len() as u32).into();
            let _guard = conn.writing.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = &conn.stream;
            if let Err(e) = out.write_all(&header).and_then(|()| out.write_all(&frame)) {
                tracing::debug!(error = %e, "writing a ttrpc response");
            }
        }
    }

    /// Wait: answered now if the process has exited, else when it does.
    fn wait(&self, conn: &Arc<Conn>, stream_id: u32, req: &Request) {
        let wait = match WaitRequest::parse_from_bytes(&req.payload) {
            Ok(w) => w,
            Err(e) => {
                let msg = format!("decoding the Wait request: {e}");
                return conn.respond_status(stream_id, Code::INVALID_ARGUMENT, msg);
            }
        };
        let conn = conn.clone();
        self.task.wait_then(
            &wait.id,
            &wait.exec_id,
            Box::new(move |outcome| {
                let exit = match outcome {
                    Ok(exit) => exit,
                    Err(ttrpc::Error::RpcStatus(s)) => {
                        return conn.respond(stream_id, &Response::init_status(s))
                    }
                    Err(e) => return conn.respond_status(stream_id, Code::UNKNOWN, e.to_string()),
                };
                let payload = WaitResponse {
                    exit_status: exit.code as u32,
                    exited_at: crate::task::timestamp(exit.exited_ns),
                    ..Default::default()
                }
                .write_to_bytes();
                match payload {
                    Ok(payload) => {
                        let mut res = Response::init_status(get_status(Code::OK, String::new()));
                        res.set_payload(payload);
                        conn.respond(stream_id, &res)
                    }
                    Err(e) => conn.respond_status(stream_id, Code::INTERNAL, e.to_string()),
                }
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    //! The server against ttrpc's own client, with a real container (as root, with the
    //! launcher tests' busybox rootfs).

    use std::time::{Duration, Instant};

    use containerd_shim_protos::shim::shim::{
        CreateTaskRequest, KillRequest, StartRequest, StateRequest, WaitRequest,
    };
    use containerd_shim_protos::shim::shim_ttrpc::{create_task, TaskClient};
    use containerd_shim_protos::ttrpc::context;

    use super::*;
    use crate::launch::tests::Fixture;

    /// A shim's server on a socket in the fixture's dir, serving on a thread of its own
    /// until dropped.
    struct Served {
        fx: Fixture,
        socket: String,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Served {
        fn new() -> Served {
            let fx = Fixture::new();
            let pod_dir = fx.path("pod");
            std::fs::create_dir_all(&pod_dir).unwrap();
            let (stop_tx, stop_rx) = std::sync::mpsc::channel();
            let svc = TaskService::new(&pod_dir, stop_tx, None);
            let path = pod_dir.join("shim.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let server = Server::new(
                svc.clone(),
                vec![
                    crate::execsync::service(svc.clone()),
                    create_task(Arc::new(svc.clone())),
                ],
            );
            let thread = std::thread::spawn(move || {
                server.run(&listener, || {
                    !matches!(
                        stop_rx.try_recv(),
                        Err(std::sync::mpsc::TryRecvError::Empty)
                    )
                })
            });
            Served {
                fx,
                socket: format!("unix://{}", path.display()),
                thread: Some(thread),
            }
        }

        fn client(&self) -> TaskClient {
            TaskClient::new(ttrpc::sync::Client::connect(&self.socket).unwrap())
        }

        /// Creates and starts container `id` running `args`.
        fn run(&self, id: &str, args: &[&str]) {
            let bundle = self.fx.path(&format!("bundle-{id}"));
            std::fs::create_dir_all(&bundle).unwrap();
            self.fx.spec(args).save(bundle.join("config.json")).unwrap();
            let c = self.client();
            let create = CreateTaskRequest {
                id: id.into(),
                bundle: bundle.display().to_string(),
                ..Default::default()
            };
            c.create(context::with_timeout(0), &create).unwrap();
            let start = StartRequest {
                id: id.into(),
                ..Default::default()
            };
            c.start(context::with_timeout(0), &start).unwrap();
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            let _ = self
                .client()
                .shutdown(context::with_timeout(0), &Default::default());
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn wait_req(id: &str) -> WaitRequest {
        WaitRequest {
            id: id.into(),
            ..Default::default()
        }
    }

    fn code(e: ttrpc::Error) -> (Code, String) {
        match e {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("not a status: {other:?}"),
        }
    }

    /// Waits are answered when their process exits, each on its own stream, while the
    /// connection keeps serving other calls; errors keep the Task API's codes.
    #[test]
    fn waits_are_answered_at_exit_while_other_calls_go_on() {
        let s = Served::new();
        s.run("a", &["sleep", "300"]);
        // As pid 1 of its namespace it dies of SIGTERM only through a handler.
        s.run(
            "b",
            &[
                "sh",
                "-c",
                "trap 'exit 3' TERM; while true; do sleep 1; done",
            ],
        );
        // Two Waits on one connection, from two threads, both pending.
        let client = s.client();
        let waits: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|id| {
                let c = client.clone();
                std::thread::spawn(move || c.wait(context::with_timeout(0), &wait_req(id)))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        // The same connection answers a State meanwhile.
        let state = client
            .state(
                context::with_timeout(0),
                &StateRequest {
                    id: "a".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(state.pid > 0);
        let started = Instant::now();
        for (id, signal) in [("a", libc::SIGKILL), ("b", libc::SIGTERM)] {
            let kill = KillRequest {
                id: id.into(),
                signal: signal as u32,
                ..Default::default()
            };
            client.kill(context::with_timeout(0), &kill).unwrap();
        }
        let codes: Vec<u32> = waits
            .into_iter()
            .map(|w| w.join().unwrap().unwrap().exit_status)
            .collect();
        assert_eq!(codes, vec![137, 3]);
        assert!(started.elapsed() < Duration::from_secs(10));
        // A Wait on an exited container answers at once; on none, NOT_FOUND.
        let w = client
            .wait(context::with_timeout(0), &wait_req("a"))
            .unwrap();
        assert_eq!(w.exit_status, 137);
        let (c, msg) = code(
            client
                .wait(context::with_timeout(0), &wait_req("nope"))
                .unwrap_err(),
        );
        assert_eq!(c, Code::NOT_FOUND, "{msg}");
    }

    /// Unknown methods and undecodable requests get INVALID_ARGUMENT, and the connection
    /// stays usable.
    #[test]
    fn bad_calls_are_answered_and_the_connection_goes_on() {
        let s = Served::new();
        let raw = ttrpc::sync::Client::connect(&s.socket).unwrap();
        let mut req = <Request as ttrpc::proto::RequestInit>::init_request(
            "containerd.task.v3.Task".into(),
            "NoSuchMethod".into(),
            0,
            Vec::new(),
        );
        ttrpc::proto::RequestInit::set_payload(&mut req, Vec::new());
        let (c, msg) = code(raw.request(req).unwrap_err());
        assert_eq!(c, Code::INVALID_ARGUMENT);
        assert_eq!(msg, "/containerd.task.v3.Task/NoSuchMethod does not exist");
        let mut req = <Request as ttrpc::proto::RequestInit>::init_request(
            "containerd.task.v3.Task".into(),
            "State".into(),
            0,
            Vec::new(),
        );
        ttrpc::proto::RequestInit::set_payload(&mut req, vec![0xff, 0xff, 0xff]);
        let (c, _) = code(raw.request(req).unwrap_err());
        assert_eq!(c, Code::INVALID_ARGUMENT);
        let client = TaskClient::new(raw);
        let (c, msg) = code(
            client
                .state(
                    context::with_timeout(0),
                    &StateRequest {
                        id: "nope".into(),
                        ..Default::default()
                    },
                )
                .unwrap_err(),
        );
        assert_eq!(c, Code::NOT_FOUND, "{msg}");
    }
}
