//! cairn-shim: one per pod. Holds the pod's namespaces, is the subreaper of its
//! containers, writes their CRI logs and records their exits, and serves containerd's
//! shim v2 Task API over ttrpc on `<pod dir>/shim.sock` for cairnd.
//!
//! Usage: `cairn-shim <pod id> <pod dir> <hostname> [--host-network] [--host-ipc]
//! [--share-pid] [--uid-map C:H:L]... [--gid-map C:H:L]... [--oci-runtime PATH]`; with
//! id maps (container id, host id, length) the pod gets a user namespace.
//! It prints `ready <pid>` on stdout once it serves, then closes stdout.
//! Runs in cairn-shim.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_shim::launch::oci::OciRuntime;
use cairn_shim::podns::{self, PodNamespaces};
use cairn_shim::serve::Server;
use cairn_shim::task::TaskService;
use containerd_shim_protos::shim::shim_ttrpc::create_task;

struct Args {
    pod_id: String,
    dir: PathBuf,
    ns: PodNamespaces,
    /// `--oci-runtime PATH`: run containers with this OCI runtime binary.
    oci_runtime: Option<PathBuf>,
}

fn parse() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut ns = PodNamespaces::default();
    let mut oci_runtime = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--oci-runtime" => {
                let path = args.next().ok_or("--oci-runtime needs a path")?;
                oci_runtime = Some(PathBuf::from(path));
            }
            "--host-network" => ns.host_network = true,
            "--host-ipc" => ns.host_ipc = true,
            "--share-pid" => ns.share_pid = true,
            "--uid-map" | "--gid-map" => {
                let value = args.next().ok_or_else(|| format!("{a} needs C:H:L"))?;
                let map = podns::IdMap::parse(&value).map_err(|e| format!("{a}: {e}"))?;
                let userns = ns.userns.get_or_insert_with(Default::default);
                if a == "--uid-map" {
                    userns.uids.push(map);
                } else {
                    userns.gids.push(map);
                }
            }
            s if s.starts_with("--") => return Err(format!("unknown flag {s}")),
            _ => positional.push(a),
        }
    }
    let [pod_id, dir, hostname]: [String; 3] = positional.try_into().map_err(|_| {
        "usage: cairn-shim <pod id> <pod dir> <hostname> [--host-network] [--host-ipc] \
         [--share-pid] [--uid-map C:H:L]... [--gid-map C:H:L]... [--oci-runtime PATH]"
            .to_string()
    })?;
    ns.hostname = hostname;
    Ok(Args {
        pod_id,
        dir: PathBuf::from(dir),
        ns,
        oci_runtime,
    })
}

fn main() {
    // A session of its own, so that signals to cairnd's process group never reach the
    // pod (cairnd spawns us without a pre_exec hook, hence with vfork, not fork).
    // SAFETY: setsid takes no arguments; it fails only if we already lead a group.
    unsafe { libc::setsid() };
    limit_malloc();
    if let Err(e) = run() {
        eprintln!("cairn-shim: {e}");
        std::process::exit(1);
    }
}

/// glibc malloc settings for a small, long-lived process that runs once per pod:
/// - one arena for all threads: the shim's few allocations need no more, and each extra
///   arena costs memory in every pod;
/// - blocks of 16 KiB and more (log and stream buffers, a container's config.json)
///   come from mmap and go back to the kernel when freed, and the heap grows by what is
///   asked, not 128 KiB more: a buffer's untouched pages then never become resident,
///   and a freed one leaves no hole in the heap.
fn limit_malloc() {
    // SAFETY: mallopt with constant arguments, while the process has a single thread.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 * 1024);
        libc::mallopt(libc::M_TOP_PAD, 0);
    }
}

fn run() -> Result<(), String> {
    let args = parse()?;
    // Namespaces first, while this process has a single thread.
    let namespaces = podns::create(&args.dir, &args.ns)?;
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        ));
    }
    // A fixed level: EnvFilter's directive parser would bring its regex engine along.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    let socket = args.dir.join("shim.sock");
    let _ = std::fs::remove_file(&socket);
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let oci = args.oci_runtime.clone().map(|binary| OciRuntime {
        binary,
        root: args.dir.join("oci"),
    });
    let service = TaskService::new(&args.dir, stop_tx, oci);
    let listener =
        UnixListener::bind(&socket).map_err(|e| format!("binding {}: {e}", socket.display()))?;
    let server = Server::new(
        service.clone(),
        vec![
            cairn_shim::execsync::service(service.clone()),
            create_task(Arc::new(service)),
        ],
    );
    tracing::info!(pod = %args.pod_id, pid = std::process::id(), "shim serving");
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready {}", std::process::id());
    let _ = out.flush();
    // SAFETY: closing our own stdout so the reader sees EOF.
    unsafe { libc::close(1) };
    // Until Shutdown, whose answer is written by then.
    server.run(&listener, || {
        !matches!(
            stop_rx.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Empty)
        )
    });
    if let Some(pid) = namespaces.pid_holder {
        // SAFETY: the pod's pid namespace holder is our child; kill and reap it.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    cairn_proto::shim::pod::release(&args.dir);
    let _ = std::fs::remove_file(&socket);
    tracing::info!(pod = %args.pod_id, "shim exiting");
    Ok(())
}
