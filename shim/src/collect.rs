//! Runs an exec's output and exit to their end, in the pod's shim: reads the process's
//! stdout and stderr pipes into memory (each up to
//! [`cairn_proto::shim::exec::OUTPUT_LIMIT`], the rest read and dropped so it never blocks
//! on a full pipe), waits for its exit through a pidfd, and kills it at its deadline.
//! Used by the ExecSync service (`execsync`) through the Task service.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use cairn_proto::shim::exec::OUTPUT_LIMIT;

/// After a SIGKILL at the deadline, how long the shim waits for the process to go before
/// it answers anyway (a process stuck in the kernel) and leaves the reaping to a thread.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Without pidfds (Linux < 5.3): how often the exit is polled.
const EXIT_POLL: Duration = Duration::from_millis(10);

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
    // None where the kernel has no pidfds: then the exit is polled.
    let pidfd = cairn_kernel::process::pidfd_open(pid);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_the_limit_and_counts_the_rest() {
        let mut out = Output::default();
        out.keep(&vec![b'a'; OUTPUT_LIMIT - 2]);
        out.keep(b"bcde");
        assert_eq!(out.data.len(), OUTPUT_LIMIT);
        assert!(out.data.ends_with(b"abc"));
        assert_eq!(out.dropped, 2);
    }
}
