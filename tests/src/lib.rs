//! Integration-test harness for cairn.
//!
//! * [`registry`]: a private `docker-registry` per test (plain, TLS, htpasswd), with an
//!   access-log reader to count requests.
//! * [`image`]: test images built in Rust as OCI image layouts (busybox-based layers,
//!   whiteouts, xattrs, devices, zstd/gzip/uncompressed, OCI or Docker media types,
//!   multi-platform indexes) and pushed with `skopeo copy`.
//! * [`daemon`]: runs `cairnd` on private dirs and connects CRI/control clients to its socket.
//! * [`cni`]: a private CNI network per test (dirs, bridge, subnet, network lists).
//! * [`net`]: network namespaces, a private bridge, iptables cleanup and TCP inside a
//!   namespace, for the CNI tests.
//! * [`clients`]: CRI clients that are not cairn's (grpc-go 1.33, gRPC C-core), built from
//!   the CRI's api.proto, for tests that drive cairnd as kubelet and crictl do.
//! * [`util`]: free ports and process helpers.

pub mod clients;
pub mod cni;
pub mod daemon;
pub mod image;
pub mod net;
pub mod registry;
pub mod util;

pub use daemon::Cairnd;
pub use registry::{Registry, RegistryOptions};
pub use util::free_port;
