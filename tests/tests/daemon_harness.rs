//! The daemon harness's life cycle, against `fake-cairnd` (a stand-in that listens on the
//! socket and leaves a child process and a mount behind): start, connect, restart, kill -9,
//! and a drop that cleans up everything, tmpfs root included.

use std::path::{Path, PathBuf};

use cairn_tests::daemon::mounts_under;
use cairn_tests::Cairnd;

fn fake() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fake-cairnd"))
}

/// PIDs of `busybox sleep 3600` processes whose parent is `ppid`.
fn sleeping_children(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let parent: u32 = rest.split_whitespace().nth(1).unwrap().parse().unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if parent == ppid && cmdline.ends_with(b"sleep\x003600\x00") {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` exits (or is a zombie) within 2 s; init reaps killed orphans lazily.
fn gone(pid: u32) -> bool {
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        if state.is_none_or(|s| s.starts_with('Z') || s.starts_with('X')) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

#[test]
fn config_dirs_and_socket() {
    let d = Cairnd::start_binary(&fake(), None, "[image]\nplatform = \"linux/amd64\"").unwrap();
    let config = std::fs::read_to_string(d.config_path()).unwrap();
    assert!(config.contains(&format!("root = \"{}\"", d.root().display())));
    assert!(config.contains(&format!("socket = \"{}\"", d.socket().display())));
    assert!(config.contains("log_level = \"debug\""));
    assert!(config.ends_with("[image]\nplatform = \"linux/amd64\"\n"));
    assert!(d.root().is_dir() && d.state().is_dir());
    assert!(std::os::unix::net::UnixStream::connect(d.socket()).is_ok());
    assert!(d.log().contains("fake-cairnd: listening"));
}

#[test]
fn start_failure_reports_the_log() {
    let err = match Cairnd::start_binary(&fake(), None, "fail_on_start = true") {
        Ok(_) => panic!("fake-cairnd should have failed"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("refusing to start"), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");
}

#[test]
fn drop_cleans_up_processes_mounts_and_dirs() {
    let mut d = Cairnd::start_binary(&fake(), Some("16m"), "").unwrap();
    let dir = d.dir().to_path_buf();
    let first_pid = d.pid();
    let first_sleep = sleeping_children(first_pid);
    assert_eq!(first_sleep.len(), 1);
    // The tmpfs root and the daemon's leftover mount.
    assert_eq!(mounts_under(&dir).len(), 2, "{:?}", mounts_under(&dir));

    // A crash leaves the child running; the restarted daemon makes another.
    d.kill9();
    assert!(!d.is_running());
    assert!(Path::new(&format!("/proc/{}", first_sleep[0])).exists());
    d.restart().unwrap();
    assert_ne!(d.pid(), first_pid);
    let second_sleep = sleeping_children(d.pid());
    assert_eq!(second_sleep.len(), 1);

    drop(d);
    assert!(
        gone(first_sleep[0]),
        "orphan of the first daemon still runs"
    );
    assert!(
        gone(second_sleep[0]),
        "child of the second daemon still runs"
    );
    assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
    assert!(!dir.exists());
}

#[tokio::test]
async fn grpc_channel_connects_over_the_socket() {
    let d = Cairnd::start_binary(&fake(), None, "").unwrap();
    // The fake accepts connections and never answers: connecting works, a call does not.
    let mut client = d.runtime_client().await.unwrap();
    let req = cairn_proto::cri::VersionRequest::default();
    let call = client.version(req);
    let answer = tokio::time::timeout(std::time::Duration::from_millis(300), call).await;
    assert!(!matches!(answer, Ok(Ok(_))));
}

/// Smoke test of the real daemon (the README test command builds it first).
#[tokio::test]
async fn real_cairnd_answers_version() {
    let d = Cairnd::start("").unwrap();
    let mut client = d.runtime_client().await.unwrap();
    let req = cairn_proto::cri::VersionRequest::default();
    let version = client.version(req).await.unwrap().into_inner();
    assert_eq!(version.runtime_name, "cairn", "{}", d.log());
}
