//! Running one CNI plugin: find its executable in the bin dirs, pass the CNI_* environment
//! and the plugin's config on stdin, bound the call by a timeout (killing the plugin's whole
//! process group, as plugins run IPAM plugins of their own), and turn its exit into the
//! stdout bytes or a typed failure carrying the plugin's error JSON.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// The CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The environment of one plugin call (everything but the config on stdin).
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub command: Command,
    pub container_id: &'a str,
    /// `None` passes an empty CNI_NETNS (DEL after the namespace is gone).
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: &'a str,
    pub bin_dirs: &'a [PathBuf],
    pub timeout: Duration,
}

/// Why a plugin call failed, before it is given the network's and plugin's names.
#[derive(Debug)]
pub enum Failure {
    NotFound,
    Spawn(PathBuf, std::io::Error),
    TimedOut,
    /// Non-zero exit: the error the plugin reported (or its output when that is not JSON).
    Plugin {
        code: u32,
        msg: String,
        details: String,
    },
}

/// A CNI error result (`{"code":..,"msg":..,"details":..}`).
#[derive(Debug, Deserialize)]
struct ErrorResult {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// The first bin dir holding an executable named `plugin`.
pub fn find_plugin(bin_dirs: &[PathBuf], plugin: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    bin_dirs.iter().map(|d| d.join(plugin)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The CNI_PATH value: the bin dirs joined with ':'.
pub fn cni_path(bin_dirs: &[PathBuf]) -> String {
    bin_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `plugin` once and returns its stdout on success.
pub async fn run(plugin: &str, inv: &Invocation<'_>, stdin: Vec<u8>) -> Result<Vec<u8>, Failure> {
    let path = find_plugin(inv.bin_dirs, plugin).ok_or(Failure::NotFound)?;
    let netns = inv
        .netns
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut cmd = tokio::process::Command::new(&path);
    cmd.env("CNI_COMMAND", inv.command.as_str())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", cni_path(inv.bin_dirs))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| Failure::Spawn(path.clone(), e))?;
    let pgid = child.id();
    let mut input = child.stdin.take();
    let work = async move {
        // A plugin may exit without reading its config; a broken pipe then is not the
        // error worth reporting, its exit status is.
        if let Some(mut pipe) = input.take() {
            let _ = pipe.write_all(&stdin).await;
            drop(pipe);
        }
        child.wait_with_output().await
    };
    tokio::pin!(work);
    let output = tokio::select! {
        out = &mut work => out.map_err(|e| Failure::Spawn(path.clone(), e))?,
        _ = tokio::time::sleep(inv.timeout) => {
            if let Some(pgid) = pgid {
                // SAFETY: signalling the process group this call created; its leader
                // is not reaped yet (the wait future is still alive), so the id is ours.
                unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
            }
            return Err(Failure::TimedOut);
        }
    };
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(plugin_error(&output.stdout, &output.stderr, output.status))
}

/// Reads the error JSON a failing plugin printed, or falls back to its raw output.
fn plugin_error(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> Failure {
    if let Ok(e) = serde_json::from_slice::<ErrorResult>(stdout) {
        if !e.msg.is_empty() || e.code != 0 {
            return Failure::Plugin {
                code: e.code,
                msg: e.msg,
                details: e.details,
            };
        }
    }
    let text = [stdout, stderr]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Failure::Plugin {
        code: 0,
        msg: format!("{status}"),
        details: truncate(text, 2000),
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn reads_error_json_or_raw_output() {
        let st = std::process::ExitStatus::from_raw(1 << 8);
        match plugin_error(
            br#"{"cniVersion":"1.0.0","code":7,"msg":"bad","details":"more"}"#,
            b"",
            st,
        ) {
            Failure::Plugin { code, msg, details } => {
                assert_eq!((code, msg.as_str(), details.as_str()), (7, "bad", "more"))
            }
            other => panic!("{other:?}"),
        }
        match plugin_error(b"", b"panic: oops\n", st) {
            Failure::Plugin { code, msg, details } => {
                assert_eq!(code, 0);
                assert!(msg.contains("exit status: 1"), "{msg}");
                assert_eq!(details, "panic: oops");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn finds_executables_only() {
        use std::os::unix::fs::PermissionsExt;
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("p"), "not executable").unwrap();
        std::fs::write(b.path().join("p"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(b.path().join("p"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_plugin(&dirs, "p"), Some(b.path().join("p")));
        assert_eq!(find_plugin(&dirs, "q"), None);
        assert_eq!(
            cni_path(&dirs),
            format!("{}:{}", a.path().display(), b.path().display())
        );
    }

    #[tokio::test]
    async fn times_out_and_kills_the_group() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child.pid");
        let script = format!(
            "#!/bin/sh\nsleep 30 &\necho $! > {}\nwait\n",
            marker.display()
        );
        std::fs::write(dir.path().join("slow"), script).unwrap();
        std::fs::set_permissions(
            dir.path().join("slow"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        let inv = Invocation {
            command: Command::Add,
            container_id: "c1",
            netns: None,
            ifname: "eth0",
            args: "",
            bin_dirs: &dirs,
            timeout: Duration::from_millis(500),
        };
        let r = run("slow", &inv, b"{}".to_vec()).await;
        assert!(matches!(r, Err(Failure::TimedOut)), "{r:?}");
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild went with the group (it may linger a moment as a zombie of init).
        let mut gone = false;
        for _ in 0..50 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone, "sleep {pid} survived the timeout");
    }
}
