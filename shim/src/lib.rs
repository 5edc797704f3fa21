//! The runtime side of cairn: the CRI daemon's services, its control API and its
//! configuration. The binaries (`cairnd`, `cairnctl`) are thin edges over this library.

pub mod config;
pub mod control;
pub mod cri;
