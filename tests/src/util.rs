//! Small process and file helpers shared by the harness modules: free ports, stopping a
//! child by PID with a grace period, and reading the tail of a log file.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A TCP port on 127.0.0.1 that was free a moment ago: bound to port 0, read back, released.
///
/// Use it for "registry down" cases (nothing listens there) or to give a server its port.
/// Another process may grab it in between; callers that start a server retry on
/// "address already in use".
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local_addr of a bound socket")
        .port()
}

/// Stops `child`: SIGTERM by its PID, then SIGKILL if it is still running after `grace`,
/// and reaps it. Does nothing more if it has already exited.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) with a PID we spawned and have not reaped yet, so it cannot be reused.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends SIGKILL to `child` and reaps it.
pub fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `lines` lines of the file at `path`, or a note saying why it could not be read.
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    if let Err(err) = read {
        return format!("<cannot read {}: {err}>", path.display());
    }
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// Runs `cmd` to completion and fails, with its stderr, unless it exits 0.
pub fn run_checked(cmd: &mut Command) -> anyhow::Result<Output> {
    let program = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} failed with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
