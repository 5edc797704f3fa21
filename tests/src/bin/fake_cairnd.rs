//! A stand-in for `cairnd` used by the harness's own tests of `daemon.rs`.
//!
//! `fake-cairnd --config FILE` reads `socket = "..."` and `state = "..."` from FILE, listens
//! on the socket (accepting connections and never answering), and leaves behind what a real daemon
//! may leave when it dies: a child process (`busybox sleep 3600`) and a tmpfs mounted at
//! `STATE/leftover-mount`. The harness must clean both up.
//! With `fail_on_start = true` in the config it prints a message and exits 3 instead.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    if let Err(err) = run() {
        eprintln!("fake-cairnd: {err}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let config_path = match args.as_slice() {
        [_, flag, path] if flag == "--config" => PathBuf::from(path),
        _ => return Err("usage: fake-cairnd --config FILE".into()),
    };
    let config = std::fs::read_to_string(&config_path)
        .map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
    if config.lines().any(|l| l.trim() == "fail_on_start = true") {
        eprintln!("fake-cairnd: refusing to start as configured");
        std::process::exit(3);
    }
    let socket = PathBuf::from(value(&config, "socket")?);
    let state = PathBuf::from(value(&config, "state")?);
    Command::new("/bin/busybox")
        .args(["sleep", "3600"])
        .spawn()
        .map_err(|e| format!("cannot start a child: {e}"))?;
    mount_leftover(&state.join("leftover-mount"))?;
    println!("fake-cairnd: listening on {}", socket.display());
    // Bind last: the harness treats an accepting socket as "started".
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| format!("cannot bind {}: {e}", socket.display()))?;
    // Keep connections open without ever answering.
    let mut open = Vec::new();
    for conn in listener.incoming().flatten() {
        open.push(conn);
    }
    Ok(())
}

/// The quoted value of `key = "..."` in the config.
fn value(config: &str, key: &str) -> Result<String, String> {
    config
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .ok_or_else(|| format!("no {key} in config"))
}

fn mount_leftover(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c_dir.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=1m".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "cannot mount tmpfs on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
