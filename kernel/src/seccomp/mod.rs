//! Seccomp for containers: cairn's RuntimeDefault profile, Localhost profiles read from JSON
//! files (the OCI `linux.seccomp` format or Docker's, with `archMap` and `includes` /
//! `excludes`), and the compiler that turns a profile into the classic BPF program the
//! kernel runs on every system call.
//!
//! A compiled [`Program`] is plain data: the launcher compiles before it forks, and the
//! forked child only hands the instructions to `seccomp(2)`, allocating nothing.
//!
//! The program of each architecture is a binary search over ranges of system call numbers
//! (a dozen instructions to any decision), not a chain of one test per call: when a filter
//! is attached the kernel JIT-compiles it and runs it for every number of every
//! architecture, and a chain made that cost over a millisecond per container start or exec.
//!
//! The RuntimeDefault profile is an allow list: every system call not named returns EPERM.
//! It leaves out what would let a container reach beyond its namespaces (mounts, new
//! namespaces, kernel modules, the keyring, kexec, the clock, swap, raw I/O ports, BPF,
//! perf, handle-based opens, io_uring...); several of those come back when the container
//! holds the capability that governs them (CAP_SYS_ADMIN, CAP_SYS_TIME, CAP_SYS_MODULE, ...),
//! as with containerd's default.
//!
//! Supported architectures: the host's own and its 32-bit companion (x86_64 with i386,
//! aarch64 with arm). x32 system calls on x86_64 are always denied: no container image
//! ships x32 binaries, and letting them through would bypass the rules written for the
//! 64-bit numbers.
//!
//! Its parts: the RuntimeDefault profile (`default`), profile files (`file`) and the
//! compiler with compiled programs and their cache (`compile`).
//! Runs in cairnd (which compiles profiles); cairn-shim loads the compiled program.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg,
    LinuxSeccompArgBuilder, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;

/// Why a profile could not be read or compiled; the message names the file or the rule.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SeccompError(pub String);

fn error(msg: impl Into<String>) -> SeccompError {
    SeccompError(msg.into())
}

mod compile;
mod default;
mod file;
#[cfg(test)]
mod tests;

pub use compile::*;
pub use default::{default_profile, host_architectures};
pub use file::{load_profile, parse_profile};

use default::*;
#[cfg(test)]
use file::*;
