//! The kernel-facing pieces both of cairn's node processes use, cairnd (which prepares a
//! container: its cgroup and limits, its device rules, its compiled seccomp filter) and
//! cairn-shim (whose launcher mounts the rootfs, installs the filter and joins the
//! cgroup): no CRI, no wire format, nothing of either process's own.
//!
//! * [`cgroup`]: cgroup v1, v2 and hybrid layouts, limits, stats, kill and removal.
//! * [`seccomp`]: OCI/Docker seccomp profiles, cairn's default, and their compiler.
//! * [`devices`]: the default device rules and their installation in a cgroup, through
//!   the v1 `devices` controller or a cgroup2 device program ([`devfilter`]).
//! * [`caps`]: capability names, numbers and the default set.
//! * [`overlay`]: overlay mounts of a snapshot's layers.
//! * [`mountinfo`]: the mount table.
//! * [`process`]: pidfds and the wall clock.

pub mod caps;
pub mod cgroup;
pub mod devfilter;
pub mod devices;
pub mod mountinfo;
pub mod overlay;
pub mod process;
pub mod seccomp;
