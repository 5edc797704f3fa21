//! Wire contracts of cairn's processes.
//!
//! * CRI `runtime.v1` and `runtime.v1alpha2`, re-exported from the `k8s-cri` crate
//!   (the upstream .proto files are not copied into this repository), and cairn's own
//!   control API (`cairn.control.v1`), for what CRI cannot express: pull progress, image
//!   import and disk usage. What cairnd serves and cairnctl calls (feature `cri`).
//! * [`shim`]: the contract between cairnd and each pod's cairn-shim: containerd's shim v2
//!   Task API (ttrpc) with cairn's conventions on it (bundle files, annotations, the
//!   rootfs mount), the exit records and pod dir layout both read, the stats the shim
//!   reports and cairn's own ExecSync service.

#[cfg(feature = "cri")]
pub use k8s_cri::v1 as cri;
#[cfg(feature = "cri")]
pub use k8s_cri::v1alpha2 as cri_alpha;

pub mod shim;

#[cfg(feature = "cri")]
pub mod client;

/// cairn's control API (pull progress, import, disk usage).
#[cfg(feature = "cri")]
pub mod control {
    tonic::include_proto!("cairn.control.v1");
}
