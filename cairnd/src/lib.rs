//! cairnd, the node's CRI daemon: the CRI services on its socket ([`cri`], a thin
//! translation to gRPC codes), the pod and container lifecycle ([`runtime`]) over the
//! image store (`cairn-snapshotter`) and one `cairn-shim` per pod, the OCI spec built from
//! CRI requests ([`spec`]), pod networking through CNI plugins ([`cni`]), cairn's
//! control API ([`control`]) and the configuration ([`config`]). The binary is a thin
//! edge over this library.

pub mod cni;
pub mod config;
pub mod cri;
pub mod error;
pub mod runtime;
pub mod spec;
