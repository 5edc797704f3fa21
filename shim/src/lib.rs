//! cairn-shim, the per-pod process: it holds the pod's namespaces ([`podns`]), serves
//! containerd's shim v2 Task API and cairn's ExecSync over ttrpc on the pod's socket
//! ([`serve`], [`task`], [`execsync`]; the contract with cairnd is
//! [`cairn_proto::shim`]), launches containers and execs ([`launch`]), copies their
//! output into CRI logs and to attached clients ([`crilog`], [`stdio`]) and records their
//! exits. The binary (`cairn-shim`) is a thin edge over this library.

pub mod collect;
pub mod crilog;
pub mod execsync;
pub mod launch;
pub mod podns;
pub mod serve;
pub mod stdio;
pub mod task;
