//! Processes through descriptors and the wall clock, as both node processes use them:
//! cairnd watches each pod's shim through a pidfd, the shim waits for execs through one;
//! both time-stamp what they record in nanoseconds since the epoch.

use std::os::fd::{FromRawFd, OwnedFd};

/// A pidfd for `pid`; None where the process is gone or the kernel has no pidfds
/// (before 5.3). pidfds are close-on-exec.
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(pid, 0) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    let fd = i32::try_from(fd).ok()?;
    // SAFETY: a fresh descriptor we now own.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Now, in nanoseconds since the Unix epoch (what CRI's timestamps carry).
pub fn now_ns() -> i64 {
    let ns = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(ns).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_for_ourselves_and_none_for_a_pid_that_is_not() {
        assert!(pidfd_open(std::process::id() as i32).is_some());
        assert!(pidfd_open(i32::MAX).is_none());
        let before = now_ns();
        assert!(before > 1_600_000_000_000_000_000);
        assert!(now_ns() >= before);
    }
}
