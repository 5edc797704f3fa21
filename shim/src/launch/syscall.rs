//! The kernel calls that the container's mount-namespace setup makes (mounts, the move
//! into the new root, device nodes, sysctls, host and domain name), behind one interface
//! so that their order and arguments can be tested without root: [`LinuxSyscall`] makes
//! them, the tests' `Recorder` (in `syscall/tests.rs`) only writes them down.
//!
//! This runs in cairn-shim, in the container's child between `fork` and `execve` (see
//! `child::setup_container`): like everything there, no locks, no logging, no allocation
//! on the real path. The setup code is generic over [`Syscall`], so the real path is
//! monomorphised onto [`LinuxSyscall`] and costs nothing over calling `sys::` directly.
//!
//! Plain file-system calls on the rootfs directory that need no privilege (the `openat2`
//! walk, creating mount points, symlinks) stay outside: the tests run them for real in a
//! temp dir.

use std::ffi::CStr;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::Path;

use cairn_kernel::overlay::{OverlayError, OverlayMount};
use libc::c_ulong;

use super::sys::{self, cvt};

#[cfg(test)]
mod tests;

/// The privileged or process-changing calls of the container's mount-namespace setup.
/// Each mirrors the `sys::` wrapper or libc call of the same name.
pub(super) trait Syscall {
    /// `mount(2)` with optional source, type and data.
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()>;

    /// The per-mount flags (`MS_RDONLY`, `MS_NOSUID`, ...) of the mount at `path`.
    fn mount_flags(&self, path: &CStr) -> io::Result<c_ulong>;

    /// Makes the mount at `path` and every mount below it read-only.
    fn make_tree_readonly(&self, path: &CStr) -> io::Result<()>;

    /// A detached copy of the mount tree at `path` (with `recursive`, the mounts below too).
    fn open_tree(&self, path: &CStr, recursive: bool) -> io::Result<OwnedFd>;

    /// Sets the per-mount flags among `flags` on the detached mount `tree`.
    fn set_mount_flags(&self, tree: RawFd, flags: c_ulong) -> io::Result<()>;

    /// Attaches the detached tree `tree` onto `path` relative to `dir` (`dir` itself when
    /// `path` is empty).
    fn attach(&self, tree: RawFd, dir: RawFd, path: &CStr) -> io::Result<()>;

    /// Mounts the overlay rootfs at `target` ([`cairn_kernel::overlay::mount`]).
    fn mount_overlay(
        &self,
        overlay: &OverlayMount,
        target: &Path,
        readonly: bool,
    ) -> Result<(), OverlayError>;

    /// Makes the directory `dir` the working directory.
    fn fchdir(&self, dir: RawFd) -> io::Result<()>;

    /// `pivot_root` into the working directory and detach the old root (see
    /// `sys::pivot_to_cwd`).
    fn pivot_to_cwd(&self, slave_old_root: bool) -> io::Result<()>;

    /// Writes `value` to the file `path` (the sysctls under /proc/sys).
    fn write_file(&self, path: &CStr, value: &[u8]) -> io::Result<()>;

    /// Sets the hostname of the uts namespace.
    fn sethostname(&self, name: &CStr) -> io::Result<()>;

    /// Sets the NIS domain name of the uts namespace.
    fn setdomainname(&self, name: &CStr) -> io::Result<()>;

    /// `stat(2)`, following symlinks.
    fn stat(&self, path: &CStr) -> io::Result<libc::stat>;

    /// Creates the node `name` in the directory `dir`.
    fn mknodat(
        &self,
        dir: RawFd,
        name: &CStr,
        mode: libc::mode_t,
        dev: libc::dev_t,
    ) -> io::Result<()>;

    /// Changes the owner of `name` in the directory `dir`, not following a symlink;
    /// `u32::MAX` leaves an id unchanged.
    fn fchownat(&self, dir: RawFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()>;

    /// Sets the process's file mode creation mask; returns the previous one.
    fn umask(&self, mask: libc::mode_t) -> libc::mode_t;
}

/// The real calls.
pub(super) struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()> {
        sys::mount(source, target, fstype, flags, data)
    }

    fn mount_flags(&self, path: &CStr) -> io::Result<c_ulong> {
        sys::mount_flags(path)
    }

    fn make_tree_readonly(&self, path: &CStr) -> io::Result<()> {
        sys::make_tree_readonly(path)
    }

    fn open_tree(&self, path: &CStr, recursive: bool) -> io::Result<OwnedFd> {
        sys::open_tree(path, recursive)
    }

    fn set_mount_flags(&self, tree: RawFd, flags: c_ulong) -> io::Result<()> {
        sys::set_mount_flags(tree, flags)
    }

    fn attach(&self, tree: RawFd, dir: RawFd, path: &CStr) -> io::Result<()> {
        sys::attach(tree, dir, path)
    }

    fn mount_overlay(
        &self,
        overlay: &OverlayMount,
        target: &Path,
        readonly: bool,
    ) -> Result<(), OverlayError> {
        cairn_kernel::overlay::mount(overlay, target, readonly)
    }

    fn fchdir(&self, dir: RawFd) -> io::Result<()> {
        // SAFETY: fchdir on a directory descriptor the caller holds.
        cvt(unsafe { libc::fchdir(dir) }).map(drop)
    }

    fn pivot_to_cwd(&self, slave_old_root: bool) -> io::Result<()> {
        sys::pivot_to_cwd(slave_old_root)
    }

    fn write_file(&self, path: &CStr, value: &[u8]) -> io::Result<()> {
        sys::write_file(path, value)
    }

    fn sethostname(&self, name: &CStr) -> io::Result<()> {
        // SAFETY: name is valid for its length.
        cvt(unsafe { libc::sethostname(name.as_ptr(), name.to_bytes().len()) }).map(drop)
    }

    fn setdomainname(&self, name: &CStr) -> io::Result<()> {
        // SAFETY: as above.
        cvt(unsafe { libc::setdomainname(name.as_ptr(), name.to_bytes().len()) }).map(drop)
    }

    fn stat(&self, path: &CStr) -> io::Result<libc::stat> {
        sys::stat(path)
    }

    fn mknodat(
        &self,
        dir: RawFd,
        name: &CStr,
        mode: libc::mode_t,
        dev: libc::dev_t,
    ) -> io::Result<()> {
        // SAFETY: name is NUL-terminated; dir is a directory the caller holds.
        cvt(unsafe { libc::mknodat(dir, name.as_ptr(), mode, dev) }).map(drop)
    }

    fn fchownat(&self, dir: RawFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
        // SAFETY: as above; -1 (u32::MAX) leaves an id unchanged.
        let r = unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) };
        cvt(r).map(drop)
    }

    fn umask(&self, mask: libc::mode_t) -> libc::mode_t {
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(mask) }
    }
}
