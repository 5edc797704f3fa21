//! The runtime side of cairn: the CRI daemon's services, its control API and its
//! configuration, and the pieces that run containers (spec builder, cgroups, launcher).
//! The binaries (`cairnd`, `cairnctl`) are thin edges over this library.

pub mod cni;
pub mod config;
pub mod control;
pub mod cri;
pub mod crilog;
pub mod execsync;
pub mod launch;
pub mod podns;
pub mod runtime;
pub mod serve;
pub mod spec;
pub mod stdio;
pub mod task;
