//! Wire bindings for everything cairnd speaks on its socket.
//!
//! * CRI `runtime.v1` and `runtime.v1alpha2`, re-exported from the `k8s-cri` crate
//!   (the upstream .proto files are not copied into this repository).
//! * cairn's own control API (`cairn.control.v1`), for what CRI cannot express:
//!   pull progress, image import and disk usage.

pub use k8s_cri::v1 as cri;
pub use k8s_cri::v1alpha2 as cri_alpha;

/// cairn's control API (pull progress, import, disk usage).
pub mod control {
    tonic::include_proto!("cairn.control.v1");
}
