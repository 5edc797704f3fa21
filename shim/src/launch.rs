//! cairn's built-in OCI launcher: what runc or crun do, as a library called inside the
//! pod's shim, so that nothing on the container-start path execs another program except
//! the container's own process at the very end.
//!
//! [`create`] prepares everything it can in the shim (C strings, opened namespace and
//! cgroup files, parsed mount options: module `plan`), then forks. The middle child joins
//! the cgroups and the namespaces that have a path, creates the others (`unshare`) and
//! forks the container process, sends its pid to the shim and exits; the shim, a child
//! subreaper, adopts the container process. That process (pid 1 of its new pid namespace,
//! or a member of the pod's) mounts its rootfs and the spec's mounts, creates /dev,
//! `pivot_root`s, masks paths, switches user and capabilities, looks the executable up,
//! says "ready" and blocks before `execve` until [`Created::start`] (module `child`).
//!
//! A spec whose user namespace has a path (a pod's, made by its shim) is joined before
//! every other namespace. The middle child first mounts the rootfs while still in the
//! host's user namespace, in a mount namespace of its own: the overlay's lower layers are
//! idmapped through the pod's mappings (`mount_setattr` `MOUNT_ATTR_IDMAP`; the layers
//! themselves are never chowned), the upper dir is the container's with its files under
//! the mapped host ids. It takes detached copies (`open_tree`) of that rootfs and of the
//! bind mount sources, which the container process attaches in its own mount namespace,
//! made inside the user namespace, where the host's private dirs are out of its reach.
//!
//! Two close-on-exec pipes connect them. The shim writes one byte on the *start* pipe to
//! release the process. The children write short records on the *report* pipe: the pid,
//! "ready", or an error message; after start, end of file means `execve` succeeded (the
//! pipe closed on exec) and a message means it failed.
//!
//! [`exec`] and [`exec_now`] have no middle child: the calling thread points the pid
//! namespace of its children at the container's (`setns`, undone right after the fork),
//! so the exec'd process starts in it, and joins the cgroups and the other namespaces
//! itself before its setup. The report pipe then carries no pid (the fork returned it).
//!
//! Cgroups are joined without the kernel's global threadgroup lock, whose write side
//! waits for an RCU grace period (10-20 ms on an idle host, per container, which is what
//! a `cgroup.procs` write costs): a v1 hierarchy through its `tasks` file ("0" moves the
//! single-threaded writer), the cgroup2 dir by cloning the process straight into it
//! (`clone3` with `CLONE_INTO_CGROUP`). The container process is cloned so by the middle
//! child. An exec'd process with a cgroup2 dir to join is cloned so by a short-lived
//! child the shim forks in its own pid namespace: it points its children at the
//! container's pid namespace, clones the exec'd process as the shim's child
//! (`CLONE_PARENT`), reports its pid first on the report pipe and exits (the shim reaps
//! it). A pod with a user namespace joins its cgroup2 dir by writing, before it enters
//! the namespace, whose root may not write the host's cgroups.
//!
//! [`exec_now`] has no start pipe either: the exec'd process calls `execve` as soon as it
//! is set up, and the report pipe carries either a failure or end of file. It needs no
//! handshake because nothing in the caller may reap children it does not know (see
//! below): an exec'd process that exits before the caller looks stays a zombie, its status
//! kept by the kernel until the caller waits for that pid.
//!
//! Requirements on the caller: it must be a child subreaper (`PR_SET_CHILD_SUBREAPER`) so
//! that container processes become its children; it reaps them by pid, never with
//! `waitpid(-1)` or with `SIGCHLD` ignored, which would take the launcher's children and
//! their statuses (the launcher reaps only the middle children, and the container or
//! exec'd process when `create`, `exec` or `exec_now` fails). It may be multi-threaded:
//! children are made with glibc's `fork()`, never log and only use async-signal-safe calls
//! plus malloc. The calls block (a few milliseconds): call them from a blocking thread,
//! not an async task.

mod child;
pub mod oci;
mod plan;
mod sys;
mod syscall;
#[cfg(test)]
pub(crate) mod tests;

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use cairn_kernel::overlay::OverlayMount;
use libc::pid_t;

use child::{ChildIo, ChildStdio, MAX_MESSAGE, TAG_ERROR, TAG_EXEC, TAG_PID, TAG_READY};

/// Why a container could not be created, started or exec'd. The messages are meant for
/// CRI status messages: they name the spec field, path or command at fault.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The spec asks for something impossible or lacks a required part.
    #[error("invalid container spec: {0}")]
    InvalidSpec(String),
    /// The spec asks for something this launcher does not do (yet).
    #[error("not supported by cairn's built-in launcher: {0}")]
    Unsupported(String),
    /// A host-side step failed before or while creating the process.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Setting the container (or exec'd) process up failed inside its namespaces; the
    /// process has exited.
    #[error("container setup failed: {0}")]
    Setup(String),
    /// The command could not be executed (e.g. `exec: "nosuch": executable file not found
    /// in $PATH`); the process has exited.
    #[error("{0}")]
    Exec(String),
    /// The container process died during setup without saying why (e.g. it was killed).
    #[error("container process died during setup ({0})")]
    Died(String),
    /// `start()` found the container process already gone.
    #[error("container process {0} exited before it was started")]
    NotRunning(i32),
    /// The caller is not a child subreaper, so it could not adopt the container process.
    #[error("the launcher's caller must be a child subreaper (PR_SET_CHILD_SUBREAPER)")]
    NotSubreaper,
}

fn io_error(context: impl Into<String>, source: std::io::Error) -> LaunchError {
    LaunchError::Io {
        context: context.into(),
        source,
    }
}

/// The container process's standard streams.
#[derive(Debug)]
pub enum Stdio {
    /// Descriptors to put on 0, 1 and 2 (stdin: /dev/null when None). They are closed in
    /// the caller once the process has them.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A new pseudo-terminal: the process gets the slave as its controlling terminal and
    /// stdio (and on /dev/console); [`Created::pty_master`] holds the master.
    Terminal,
}

/// What [`create`] needs.
pub struct CreateOptions<'a> {
    pub spec: &'a oci_spec::runtime::Spec,
    /// Overlay to mount at spec.root.path inside the container's mount namespace (None:
    /// spec.root.path is already a ready rootfs dir, used by tests and external bundles).
    pub overlay: Option<&'a OverlayMount>,
    /// Cgroup directories (one per v1 hierarchy, and the cgroup2 one) the process joins
    /// before it runs anything (see `plan::CgroupJoin` for how).
    pub cgroup_dirs: Vec<PathBuf>,
    pub stdio: Stdio,
    /// oom_score_adj to set (already clamped by the caller); None: spec.process's, if any.
    pub oom_score_adj: Option<i32>,
    /// The compiled program of the spec's `linux.seccomp`, if the caller has it (cairnd
    /// compiles each profile once); None: it is compiled here.
    pub seccomp: Option<Arc<cairn_kernel::seccomp::Program>>,
    /// The spec's device rules are in the cgroup already ([`cairn_kernel::devices::install`],
    /// which cairnd runs while it makes the cgroup); false: they are installed here.
    pub device_rules_installed: bool,
}

/// A process set up and blocked just before `execve`.
///
/// Dropping it without [`start`](Created::start) makes the process exit (status 1)
/// without running anything; the caller still reaps it.
#[derive(Debug)]
pub struct Created {
    /// Host pid; a child of the caller (a container's adopted by it as subreaper).
    pub pid: i32,
    /// The terminal's master side with [`Stdio::Terminal`]. Take it before `start()`,
    /// which consumes `self`.
    pub pty_master: Option<OwnedFd>,
    /// The compiled seccomp filter the process runs under (from [`create`]: the spec's
    /// `linux.seccomp`), to confine the container's execs alike (see [`exec`]).
    pub seccomp: Option<Arc<cairn_kernel::seccomp::Program>>,
    /// The executable was not found: the message its start fails with.
    not_found: Option<String>,
    start: OwnedFd,
    report: BufReader<File>,
}

/// A container process released into `execve` by [`Created::release`], which did not wait
/// to see `execve` succeed.
#[derive(Debug)]
pub struct Released {
    report: BufReader<File>,
}

impl Released {
    /// Why `execve` or the filter before it failed, if the process says so: read once it
    /// has exited (or exec'd: then the report pipe is at its end and this is None).
    pub fn failure(mut self) -> Option<String> {
        match recv(&mut self.report) {
            Ok(Some((_, msg))) => Some(String::from_utf8_lossy(&msg).into_owned()),
            _ => None,
        }
    }
}

/// Sets the container up and leaves it blocked just before execve; returns its host pid.
///
/// On error nothing is left behind: the processes made are reaped and the mounts lived in
/// the container's own mount namespace, gone with it.
pub fn create(opts: CreateOptions<'_>) -> Result<Created, LaunchError> {
    ensure_subreaper()?;
    let plan = plan::container(
        opts.spec,
        opts.overlay,
        &opts.cgroup_dirs,
        opts.oom_score_adj,
        opts.seccomp,
        opts.device_rules_installed,
    )?;
    let console = opts.spec.process().as_ref().and_then(|p| p.console_size());
    let (stdio, pty_master) = prepare_stdio(opts.stdio, console)?;
    let (start_r, start_w) = start_pipe()?;
    let (middle_pid, mut report) = spawn(Child::Middle(&plan), stdio, Some(start_r))?;
    let outcome = read_setup(&mut report, None);
    let middle_status = sys::waitpid(middle_pid);
    let mut created = held(outcome?, start_w, report, pty_master, Some(middle_status))?;
    created.seccomp = plan.process.seccomp.clone();
    Ok(created)
}

/// Runs `process` inside the running container whose init is `target_pid`: joins its ipc,
/// uts, net, pid and mount namespaces (and its cgroup namespace if it differs from ours)
/// and `cgroup_dirs`, sets user, groups, capabilities, no_new_privs, cwd and env.
///
/// `seccomp` is the container's compiled filter ([`Created::seccomp`] of its [`create`]):
/// an exec'd process is confined like the container's own.
///
/// Like [`create`], it returns the process (a child of the caller) blocked before
/// `execve`: call [`Created::start`] right away (or use [`exec_now`], which does not
/// stop there).
pub fn exec(
    target_pid: i32,
    process: &oci_spec::runtime::Process,
    seccomp: Option<Arc<cairn_kernel::seccomp::Program>>,
    cgroup_dirs: &[PathBuf],
    stdio: Stdio,
) -> Result<Created, LaunchError> {
    ensure_subreaper()?;
    let plan = plan::exec(target_pid, process, seccomp, cgroup_dirs)?;
    let (stdio, pty_master) = prepare_stdio(stdio, process.console_size())?;
    let (start_r, start_w) = start_pipe()?;
    let (forked, mut report) = spawn(Child::Exec(&plan), stdio, Some(start_r))?;
    let outcome = read_setup(&mut report, Some(forked))?;
    reap_intermediate(forked, outcome.0);
    held(outcome, start_w, report, pty_master, None)
}

/// Reaps the process the shim forked for an exec when another one, cloned into the
/// container's cgroup2 directory, became the exec'd process (its pid came first on the
/// report pipe; see `child::exec_into_v2`). The intermediate exits right after the clone.
fn reap_intermediate(forked: pid_t, process: Option<pid_t>) {
    if process.is_some_and(|p| p != forked) {
        let _ = sys::waitpid(forked);
    }
}

/// A process that has called `execve` (from [`exec_now`]).
#[derive(Debug)]
pub struct Running {
    /// Host pid; a child of the caller, which reaps it by pid.
    pub pid: i32,
    /// The terminal's master side with [`Stdio::Terminal`].
    pub pty_master: Option<OwnedFd>,
}

/// [`exec`] without the start handshake: the process calls `execve` as soon as it is set
/// up, and this returns once it has. Wake-ups fewer than `exec` + [`Created::start`], for
/// callers that need nothing done between the two.
///
/// The process may have exited by the time this returns: it stays a zombie until the
/// caller waits for its pid. If the command cannot be executed, returns
/// [`LaunchError::Exec`] with the same message as `start` would; on any error the process
/// has been reaped. A process killed during its setup without a word looks like a success
/// here: its exit status tells.
pub fn exec_now(
    target_pid: i32,
    process: &oci_spec::runtime::Process,
    seccomp: Option<Arc<cairn_kernel::seccomp::Program>>,
    cgroup_dirs: &[PathBuf],
    stdio: Stdio,
) -> Result<Running, LaunchError> {
    ensure_subreaper()?;
    let plan = plan::exec(target_pid, process, seccomp, cgroup_dirs)?;
    let (stdio, pty_master) = prepare_stdio(stdio, process.console_size())?;
    let (forked, mut report) = spawn(Child::Exec(&plan), stdio, None)?;
    let (process, failure) = match read_failure(&mut report) {
        Ok(read) => read,
        Err(e) => (None, Some(e)),
    };
    reap_intermediate(forked, process);
    let pid = process.unwrap_or(forked);
    let Some(failure) = failure else {
        return Ok(Running { pid, pty_master });
    };
    let _ = sys::waitpid(pid);
    Err(failure)
}

impl Created {
    /// Releases the process into `execve` without waiting for it, as runc's `start` returns
    /// once its init has read the exec FIFO: the executable was found before "ready" (if
    /// not, this fails like [`start`](Created::start)), and a failure of `execve` itself
    /// (a binary of another format, a missing interpreter) shows as the process's exit,
    /// with [`Released::failure`] saying why.
    pub fn release(self) -> Result<Released, LaunchError> {
        if let Some(msg) = self.not_found.clone() {
            // The process says why and exits once released.
            return Err(match self.start() {
                Err(e) => e,
                Ok(()) => LaunchError::Exec(msg),
            });
        }
        let Created {
            pid,
            start,
            mut report,
            ..
        } = self;
        match sys::write_all(start.as_raw_fd(), &[1]) {
            Ok(()) => Ok(Released { report }),
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => Err(match recv(&mut report) {
                Ok(Some((_, msg))) => LaunchError::Exec(String::from_utf8_lossy(&msg).into_owned()),
                _ => LaunchError::NotRunning(pid),
            }),
            Err(e) => Err(io_error(format!("starting container process {pid}"), e)),
        }
    }

    /// Releases the process into execve. If the command cannot be executed (not found in
    /// the container's PATH, not executable), returns [`LaunchError::Exec`] naming it, e.g.
    /// `exec: "nosuch": executable file not found in $PATH`, and the process has exited
    /// (not reaped: the caller's reaper gets its status).
    pub fn start(self) -> Result<(), LaunchError> {
        let Created {
            pid,
            start,
            mut report,
            ..
        } = self;
        if let Err(e) = sys::write_all(start.as_raw_fd(), &[1]) {
            if e.raw_os_error() != Some(libc::EPIPE) {
                return Err(io_error(format!("starting container process {pid}"), e));
            }
            // Gone: it may have said why (it cannot wait for start under its filter).
            return Err(match recv(&mut report) {
                Ok(Some((_, msg))) => LaunchError::Exec(String::from_utf8_lossy(&msg).into_owned()),
                _ => LaunchError::NotRunning(pid),
            });
        }
        match recv(&mut report) {
            Ok(None) => Ok(()),
            Ok(Some((_, msg))) => {
                sys::wait_exited(pid);
                Err(LaunchError::Exec(
                    String::from_utf8_lossy(&msg).into_owned(),
                ))
            }
            Err(e) => Err(io_error(
                format!("reading the start result of container process {pid}"),
                e,
            )),
        }
    }
}

fn ensure_subreaper() -> Result<(), LaunchError> {
    let mut flag: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER stores an int at the pointer.
    let r = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut flag as *mut libc::c_int) };
    // SAFETY: getpid cannot fail.
    if r == 0 && flag == 0 && unsafe { libc::getpid() } != 1 {
        return Err(LaunchError::NotSubreaper);
    }
    Ok(())
}

/// The container's stdio as held by the shim until the fork.
enum HostStdio {
    Fds([OwnedFd; 3]),
    Terminal { slave: OwnedFd, path: CString },
}

impl HostStdio {
    fn raw_fds(&self) -> Vec<RawFd> {
        match self {
            HostStdio::Fds(fds) => fds.iter().map(|f| f.as_raw_fd()).collect(),
            HostStdio::Terminal { slave, .. } => vec![slave.as_raw_fd()],
        }
    }

    fn child_view(&self) -> ChildStdio<'_> {
        match self {
            HostStdio::Fds(fds) => ChildStdio::Fds(fds.each_ref().map(|f| f.as_raw_fd())),
            HostStdio::Terminal { slave, path } => ChildStdio::Terminal {
                slave: slave.as_raw_fd(),
                path,
            },
        }
    }
}

fn prepare_stdio(
    stdio: Stdio,
    size: Option<oci_spec::runtime::Box>,
) -> Result<(HostStdio, Option<OwnedFd>), LaunchError> {
    match stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let stdin = match stdin {
                Some(fd) => fd,
                None => sys::open(c"/dev/null", libc::O_RDONLY)
                    .map_err(|e| io_error("opening /dev/null for stdin", e))?,
            };
            Ok((HostStdio::Fds([stdin, stdout, stderr]), None))
        }
        Stdio::Terminal => {
            let (master, slave, path) =
                open_pty(size).map_err(|e| io_error("creating the container's terminal", e))?;
            Ok((HostStdio::Terminal { slave, path }, Some(master)))
        }
    }
}

/// A new pty: (master, slave, slave path).
fn open_pty(size: Option<oci_spec::runtime::Box>) -> std::io::Result<(OwnedFd, OwnedFd, CString)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: posix_openpt returns a fresh descriptor or -1.
    let master = sys::cvt(unsafe { libc::posix_openpt(flags) })?;
    // SAFETY: we own the fresh descriptor.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: grantpt/unlockpt on our master; ptsname_r writes into buf.
    let path = unsafe {
        sys::cvt(libc::grantpt(master.as_raw_fd()))?;
        sys::cvt(libc::unlockpt(master.as_raw_fd()))?;
        let mut buf = [0 as libc::c_char; 128];
        let err = libc::ptsname_r(master.as_raw_fd(), buf.as_mut_ptr(), buf.len());
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err));
        }
        CStr::from_ptr(buf.as_ptr()).to_owned()
    };
    let slave = sys::above_stdio(sys::open(&path, libc::O_RDWR | libc::O_NOCTTY)?)?;
    if let Some(size) = size {
        let ws = libc::winsize {
            ws_row: u16::try_from(size.height()).unwrap_or(u16::MAX),
            ws_col: u16::try_from(size.width()).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize.
        sys::cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) })?;
    }
    Ok((master, slave, path))
}

/// How the setup went, as reported by the children.
enum Setup {
    /// Waiting for start; the message its start fails with if its executable was not
    /// found.
    Ready(Option<String>),
    Failed(String),
    /// End of file without a word.
    Silent,
}

fn start_pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    sys::pipe().map_err(|e| io_error("creating the launcher's start pipe", e))
}

/// The end of a held launch: the process set up and blocked before `execve`, or why not
/// (the processes made reaped). `middle_status` is the middle child's wait status, for a
/// launch that never learnt the pid.
fn held(
    (pid, setup): (Option<pid_t>, Setup),
    start: OwnedFd,
    report: BufReader<File>,
    pty_master: Option<OwnedFd>,
    middle_status: Option<std::io::Result<libc::c_int>>,
) -> Result<Created, LaunchError> {
    match (setup, pid) {
        (Setup::Ready(not_found), Some(pid)) => Ok(Created {
            pid,
            pty_master,
            seccomp: None,
            not_found,
            start,
            report,
        }),
        (Setup::Failed(msg), pid) => {
            if let Some(pid) = pid {
                let _ = sys::waitpid(pid);
            }
            Err(LaunchError::Setup(msg))
        }
        (_, Some(pid)) => {
            let status = sys::waitpid(pid).map(sys::describe_status);
            Err(LaunchError::Died(status.unwrap_or_else(|e| e.to_string())))
        }
        (_, None) => {
            let status = middle_status.map(|s| s.map(sys::describe_status));
            let why = match status {
                Some(Ok(s)) => s,
                Some(Err(e)) => e.to_string(),
                None => "no pid".into(),
            };
            Err(LaunchError::Died(why))
        }
    }
}

/// What a launch forks.
enum Child<'p, 'a> {
    /// The middle child of a container.
    Middle(&'p plan::ContainerPlan<'a>),
    /// An exec'd process, forked straight into the target's pid namespace.
    Exec(&'p plan::ExecPlan),
}

/// Forks `what` with the report pipe and, if given, the start pipe's read end; returns the
/// child's pid and the report pipe's read end, all the children's ends closed in the
/// caller.
fn spawn(
    what: Child<'_, '_>,
    stdio: HostStdio,
    start_r: Option<OwnedFd>,
) -> Result<(pid_t, BufReader<File>), LaunchError> {
    let (report_r, report_w) =
        sys::pipe().map_err(|e| io_error("creating the launcher's report pipe", e))?;
    let mut keep = match &what {
        Child::Middle(plan) => plan.fds(),
        Child::Exec(plan) => plan.fds(),
    };
    keep.push(report_w.as_raw_fd());
    keep.extend(start_r.as_ref().map(|r| r.as_raw_fd()));
    keep.extend(stdio.raw_fds());
    keep.sort_unstable();
    keep.dedup();
    let io = ChildIo {
        report: report_w.as_raw_fd(),
        start: start_r.as_ref().map(|r| r.as_raw_fd()),
        stdio: stdio.child_view(),
        keep: &keep,
    };
    let pid = match &what {
        Child::Middle(_) => sys::fork().map_err(|e| io_error("forking the container process", e)),
        // With a cgroup2 dir to join, the child enters the pid namespace itself and
        // clones the exec'd process (see `child::exec_into_v2`).
        Child::Exec(plan) if plan::v2_join(&plan.cgroups).is_some() => {
            sys::fork().map_err(|e| io_error("forking the exec'd process", e))
        }
        Child::Exec(plan) => fork_in_pid_ns(plan.pid_ns.as_ref()),
    }?;
    if pid == 0 {
        match what {
            Child::Middle(plan) => child::run_middle(plan, &io),
            Child::Exec(plan) => child::run_exec(plan, &io),
        }
    }
    // The children's ends: with these closed, end of file on the report pipe means no
    // child holds it any more.
    drop((report_w, start_r, stdio));
    Ok((pid, BufReader::new(File::from(report_r))))
}

/// The pid namespace of this process, where [`fork_in_pid_ns`] points the calling
/// thread's children back to.
fn own_pid_ns() -> Result<&'static OwnedFd, std::io::Error> {
    static OWN: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = OWN.get() {
        return Ok(fd);
    }
    let fd = sys::open(c"/proc/self/ns/pid", libc::O_RDONLY)?;
    // Another thread may have won the race: then its descriptor is kept, ours closed.
    Ok(OWN.get_or_init(|| fd))
}

/// Forks with the children of the calling thread in pid namespace `ns` (None: ours), so
/// that the child starts as a member of it. `setns` changes this for the calling thread
/// only, and it is undone right after the fork.
fn fork_in_pid_ns(ns: Option<&plan::NsJoin>) -> Result<pid_t, LaunchError> {
    let fork = || sys::fork().map_err(|e| io_error("forking the exec'd process", e));
    let Some(ns) = ns else {
        return fork();
    };
    let home = own_pid_ns().map_err(|e| io_error("opening /proc/self/ns/pid", e))?;
    sys::setns(ns.fd.as_raw_fd(), libc::CLONE_NEWPID)
        .map_err(|e| io_error(format!("joining {}", ns.what), e))?;
    let forked = fork();
    if matches!(forked, Ok(0)) {
        return forked;
    }
    if let Err(e) = sys::setns(home.as_raw_fd(), libc::CLONE_NEWPID) {
        // Cannot happen (back to our own namespace, as root); if it did, every later child
        // of this thread would be born in the container's: stop rather than do that.
        tracing::error!(error = %e, "cannot return to the shim's pid namespace");
        std::process::abort();
    }
    forked
}

/// Reads report records until both the pid (unless `known`) and the setup result are
/// known, or EOF.
fn read_setup(
    report: &mut BufReader<File>,
    known: Option<pid_t>,
) -> Result<(Option<pid_t>, Setup), LaunchError> {
    let mut pid = known;
    let mut setup = None;
    // A failing middle child never sends a pid: then this reads on until EOF.
    while pid.is_none() || setup.is_none() {
        let record = recv(report)
            .map_err(|e| io_error("reading the container process's setup report", e))?;
        let Some((tag, payload)) = record else {
            break;
        };
        let text = String::from_utf8_lossy(&payload).into_owned();
        match tag {
            TAG_PID => pid = text.parse::<pid_t>().ok(),
            TAG_READY => setup = Some(Setup::Ready((!text.is_empty()).then_some(text))),
            TAG_ERROR => setup = Some(Setup::Failed(text)),
            _ => setup = Some(Setup::Failed(format!("unexpected report {text:?}"))),
        }
    }
    Ok((pid, setup.unwrap_or(Setup::Silent)))
}

/// Reads the report of an exec'd process started without a handshake to its end (it has
/// called `execve`, or failed): its pid if it reported one (it is not the forked
/// process), and its failure, if any.
fn read_failure(
    report: &mut BufReader<File>,
) -> Result<(Option<pid_t>, Option<LaunchError>), LaunchError> {
    let mut pid = None;
    let mut failure = None;
    loop {
        let record =
            recv(report).map_err(|e| io_error("reading the exec'd process's report", e))?;
        let Some((tag, payload)) = record else {
            return Ok((pid, failure));
        };
        let text = String::from_utf8_lossy(&payload).into_owned();
        match tag {
            TAG_PID if pid.is_none() => pid = text.parse::<pid_t>().ok(),
            _ if failure.is_some() => {}
            TAG_EXEC => failure = Some(LaunchError::Exec(text)),
            TAG_ERROR => failure = Some(LaunchError::Setup(text)),
            _ => failure = Some(LaunchError::Setup(format!("unexpected report {text:?}"))),
        }
    }
}

/// Reads one record `[tag, len u32 le, payload]`; None at end of file.
fn recv(report: &mut BufReader<File>) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut tag = [0u8; 1];
    loop {
        match report.read(&mut tag) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let mut len = [0u8; 4];
    report.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("report record of {len} bytes"),
        ));
    }
    let mut payload = vec![0u8; len];
    report.read_exact(&mut payload)?;
    Ok(Some((tag[0], payload)))
}
