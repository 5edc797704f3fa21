//! The contract between cairnd and each pod's cairn-shim (read and written by both).
//!
//! The transport is containerd's shim v2 `Task` API over ttrpc on the pod's shim socket,
//! with cairn's conventions on its messages ([`bundle`]); beside it cairn's own
//! `cairn.shim.v1.Exec` service runs an ExecSync in one call ([`exec`]). The shim records
//! every exit durably under the pod's dir, where cairnd reads them also after a restart
//! ([`exit`]), pins the pod's namespaces at fixed paths ([`pod`]) and reports cgroup
//! stats as JSON ([`stats`]).
//! Shared by cairnd and cairn-shim: the contract between them.

pub mod bundle;
pub mod exec;
pub mod exit;
pub mod pod;
pub mod stats;
