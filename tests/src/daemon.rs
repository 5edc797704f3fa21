//! Runs `cairnd` on private dirs for one test and connects clients to its socket.
//!
//! [`Cairnd::start`] makes a temp dir holding `root/`, `state/`, `config.toml` and
//! `cairnd.log`, runs `cairnd --config <dir>/config.toml` (stdout and stderr into the log)
//! and waits up to 10 s until `state/cairn.sock` accepts a connection.
//!
//! Binaries are looked up as `$CAIRN_BIN_DIR/<name>` when that variable is set, else next
//! to the test executable's directory (`target/debug/` for `target/debug/deps/harness-*`).
//! Cargo does not build another package's binaries for a test, so run
//! `cargo build --workspace --bins` before the end-to-end tests.
//!
//! Dropping a [`Cairnd`] cleans up everything the daemon may have left, even after a
//! panic: it SIGTERMs the daemon (SIGKILL after 3 s), SIGKILLs every process the daemon
//! had started (found by walking `/proc` for descendants before the daemon is stopped, with
//! their start times so a reused PID is never hit), unmounts everything still mounted under
//! the temp dir (deepest first, lazily), unmounts the tmpfs root, and removes the dir.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cairn_proto::control::control_client::ControlClient;
use cairn_proto::cri::image_service_client::ImageServiceClient;
use cairn_proto::cri::runtime_service_client::RuntimeServiceClient;
use cairn_proto::cri_alpha::image_service_client::ImageServiceClient as AlphaImageServiceClient;
use cairn_proto::cri_alpha::runtime_service_client::RuntimeServiceClient as AlphaRuntimeServiceClient;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::util::{kill_child, stop_child, tail};

/// How long [`Cairnd::start`] waits for the socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace period between SIGTERM and SIGKILL when stopping the daemon.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The path of binary `name` (`cairnd`, `cairnctl`): `$CAIRN_BIN_DIR/name`, else in the
/// parent of the test executable's directory, else in that directory.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CAIRN_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        if path.is_file() {
            return Ok(path);
        }
        bail!("{} does not exist (from CAIRN_BIN_DIR)", path.display());
    }
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    let exe_dir = exe.parent().context("test executable has no parent dir")?;
    let candidates = [
        exe_dir.parent().map(|d| d.join(name)),
        Some(exe_dir.join(name)),
    ];
    for path in candidates.into_iter().flatten() {
        if path.is_file() {
            refuse_stale(&path)?;
            return Ok(path);
        }
    }
    bail!(
        "cannot find {name} near {}: run `cargo build --workspace --bins` first, or set CAIRN_BIN_DIR",
        exe.display()
    )
}

/// The crates each of cairn's binaries is built from, relative to the workspace root:
/// their `.rs` and `.proto` files count (a manifest may change without a rebuild).
fn sources_of(binary: &str) -> &'static [&'static str] {
    const SHARED: &[&str] = &["kernel", "proto"];
    match binary {
        "cairnd" => &["cairnd", "snapshotter", "streaming/src"],
        "cairn-shim" => &["shim"],
        "cairnctl" => &["cairnctl"],
        _ => SHARED,
    }
}

/// Refuses a binary older than a source it is built from: a test of stale code proves
/// nothing (`cargo test` does not rebuild another package's binaries). For cairnd, the
/// `cairn-shim` next to it (which it starts for every pod) is checked too.
fn refuse_stale(bin: &Path) -> anyhow::Result<()> {
    let name = bin.file_name().and_then(|n| n.to_str()).unwrap_or("");
    check_fresh(bin, name)?;
    if name == "cairnd" {
        let shim = bin.with_file_name("cairn-shim");
        if shim.is_file() {
            check_fresh(&shim, "cairn-shim")?;
        }
    }
    Ok(())
}

fn check_fresh(bin: &Path, name: &str) -> anyhow::Result<()> {
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .with_context(|| format!("stat {}", bin.display()))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = sources_of("");
    for source in sources_of(name).iter().chain(shared) {
        if let Some(newer) = newer_file(&root.join(source), built) {
            bail!(
                "{} is older than {}: run `cargo build --workspace --bins` (or tests/run.sh)",
                bin.display(),
                newer.display()
            );
        }
    }
    Ok(())
}

/// A source file (`.rs` but a test-only `tests.rs`, `.proto`) at or below `path` modified
/// after `than`, if any.
fn newer_file(path: &Path, than: std::time::SystemTime) -> Option<PathBuf> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if meta.is_dir() {
        return std::fs::read_dir(path)
            .ok()?
            .flatten()
            .find_map(|e| newer_file(&e.path(), than));
    }
    // A `tests.rs` is compiled only into unit tests, never into a binary.
    let test_only = path.file_name().is_some_and(|n| n == "tests.rs");
    let source = !test_only && path.extension().is_some_and(|e| e == "rs" || e == "proto");
    let newer = source && meta.modified().is_ok_and(|m| m > than);
    newer.then(|| path.to_path_buf())
}

/// A process identified by PID and start time (clock ticks after boot), so that a PID
/// reused by an unrelated process is never signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcId {
    pid: i32,
    start: u64,
}

/// A `cairnd` running on private dirs; everything it leaves is cleaned up on drop.
pub struct Cairnd {
    dir: TempDir,
    bin: PathBuf,
    child: Option<Child>,
    tmpfs_root: bool,
    /// Processes started by earlier daemon instances (or by this one before a kill).
    orphans: Vec<ProcId>,
}

impl Cairnd {
    /// Starts `cairnd` with `config_toml_extra` appended verbatim to the generated config
    /// (e.g. `[registries."127.0.0.1:5000"]` sections).
    pub fn start(config_toml_extra: &str) -> anyhow::Result<Cairnd> {
        Self::start_with_root(None, config_toml_extra)
    }

    /// Like [`Cairnd::start`]; with `Some(size)` (tmpfs syntax: `"64m"`) the root dir is a
    /// tmpfs of that size, for "image filesystem full" tests.
    pub fn start_with_root(tmpfs_size: Option<&str>, extra: &str) -> anyhow::Result<Cairnd> {
        Self::start_binary(&bin_path("cairnd")?, tmpfs_size, extra)
    }

    /// Like [`Cairnd::start`], with the `state` dir (volatile state: the metadata store of
    /// pods and containers, run dirs, the socket) on a private tmpfs of `size` (tmpfs syntax:
    /// `"1g"`), as in production where it is under /run; the root stays on disk. For the
    /// benchmark, whose numbers would otherwise include fsyncs to this VM's disk.
    pub fn start_with_tmpfs_state(size: &str, extra: &str) -> anyhow::Result<Cairnd> {
        Self::start_on(&bin_path("cairnd")?, None, Some(size), extra)
    }

    /// Like [`Cairnd::start_with_root`] with an explicit daemon binary (the harness's own
    /// tests use a stand-in).
    pub fn start_binary(
        bin: &Path,
        tmpfs_size: Option<&str>,
        extra: &str,
    ) -> anyhow::Result<Cairnd> {
        Self::start_on(bin, tmpfs_size, None, extra)
    }

    /// Makes the dirs (`root` a tmpfs of `root_tmpfs`, `state` one of `state_tmpfs` when
    /// given; both unmounted on drop with everything under the temp dir), writes the config
    /// and spawns the daemon.
    fn start_on(
        bin: &Path,
        root_tmpfs: Option<&str>,
        state_tmpfs: Option<&str>,
        extra: &str,
    ) -> anyhow::Result<Cairnd> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-e2e-")
            .tempdir()
            .context("cannot create the daemon's temp dir")?;
        let mut daemon = Cairnd {
            dir,
            bin: bin.to_path_buf(),
            child: None,
            tmpfs_root: false,
            orphans: Vec::new(),
        };
        for sub in ["root", "state"] {
            let path = daemon.dir.path().join(sub);
            std::fs::create_dir(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        if let Some(size) = root_tmpfs {
            mount_tmpfs(&daemon.root(), size)?;
            daemon.tmpfs_root = true;
        }
        if let Some(size) = state_tmpfs {
            mount_tmpfs(&daemon.state(), size)?;
        }
        daemon.write_config(extra)?;
        daemon.spawn()?;
        Ok(daemon)
    }

    fn write_config(&self, extra: &str) -> anyhow::Result<()> {
        let config = format!(
            "root = {}\nstate = {}\nsocket = {}\nlog_level = \"debug\"\n{extra}\n",
            toml_string(&self.root()),
            toml_string(&self.state()),
            toml_string(&self.socket()),
        );
        let path = self.config_path();
        std::fs::write(&path, config).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Spawns the daemon and waits for its socket.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log_path = self.log_path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let log_err = log.try_clone().context("cannot dup the daemon log fd")?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_for_socket()
    }

    fn wait_for_socket(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.exit_status() {
                bail!(
                    "{} exited with {status} on start; log tail:\n{}",
                    self.bin.display(),
                    tail(&self.log_path(), 40)
                );
            }
            if UnixStream::connect(self.socket()).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not accept connections on {} within {START_TIMEOUT:?}; log tail:\n{}",
                    self.bin.display(),
                    self.socket().display(),
                    tail(&self.log_path(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the daemon has exited (or was never started).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    /// The CRI socket.
    pub fn socket(&self) -> PathBuf {
        self.state().join("cairn.sock")
    }

    /// The daemon's `root` (persistent state).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The daemon's `state` (volatile state).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The private temp dir holding root, state, config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The generated `config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Where the daemon's stdout and stderr go (kept across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("cairnd.log")
    }

    /// Everything the daemon logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// PID of the current daemon process (0 if it was never started).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Kills the daemon with SIGKILL and reaps it, as in a crash. Processes it started keep
    /// running (they are still cleaned up on drop).
    pub fn kill9(&mut self) {
        self.remember_descendants();
        if let Some(child) = self.child.as_mut() {
            kill_child(child);
        }
    }

    /// Stops the daemon gracefully: SIGTERM, SIGKILL after 3 s, reaped.
    pub fn stop(&mut self) {
        self.remember_descendants();
        if let Some(child) = self.child.as_mut() {
            stop_child(child, STOP_GRACE);
        }
    }

    /// Stops the daemon (if running) and starts it again on the same dirs and config.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Runs `cairnctl --socket <socket> ARGS...` and returns its output.
    ///
    /// # Panics
    /// If `cairnctl` cannot be found or started.
    pub fn cairnctl(&self, args: &[&str]) -> Output {
        let bin = match bin_path("cairnctl") {
            Ok(bin) => bin,
            Err(err) => panic!("{err:#}"),
        };
        let out = Command::new(&bin)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) => out,
            Err(err) => panic!("cannot run {}: {err}", bin.display()),
        }
    }

    /// A gRPC channel over the daemon's unix socket.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        cairn_proto::client::unix_channel(&self.socket())
            .await
            .with_context(|| format!("cannot connect to {}", self.socket().display()))
    }

    /// CRI v1 RuntimeService client.
    pub async fn runtime_client(&self) -> anyhow::Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(self.channel().await?))
    }

    /// CRI v1 ImageService client.
    pub async fn image_client(&self) -> anyhow::Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(self.channel().await?))
    }

    /// CRI v1alpha2 RuntimeService client.
    pub async fn runtime_client_alpha(&self) -> anyhow::Result<AlphaRuntimeServiceClient<Channel>> {
        Ok(AlphaRuntimeServiceClient::new(self.channel().await?))
    }

    /// CRI v1alpha2 ImageService client.
    pub async fn image_client_alpha(&self) -> anyhow::Result<AlphaImageServiceClient<Channel>> {
        Ok(AlphaImageServiceClient::new(self.channel().await?))
    }

    /// cairn's control API client.
    pub async fn control_client(&self) -> anyhow::Result<ControlClient<Channel>> {
        Ok(ControlClient::new(self.channel().await?))
    }

    /// Adds the running daemon's descendants to the processes to kill on drop.
    fn remember_descendants(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let Ok(pid) = i32::try_from(child.id()) else {
            return;
        };
        for p in descendants(&[pid]) {
            if !self.orphans.contains(&p) {
                self.orphans.push(p);
            }
        }
    }

    /// SIGKILLs every remembered process (and what they started) that still runs, then
    /// waits up to 2 s for them to disappear.
    fn kill_orphans(&mut self) {
        let alive: Vec<ProcId> = self.orphans.iter().copied().filter(is_alive).collect();
        let roots: Vec<i32> = alive.iter().map(|p| p.pid).collect();
        let mut all = alive;
        for p in descendants(&roots) {
            if !all.contains(&p) {
                all.push(p);
            }
        }
        for p in &all {
            // SAFETY: kill(2) on a PID whose start time we just checked.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while all.iter().any(is_alive) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.orphans.clear();
    }
}

impl Drop for Cairnd {
    fn drop(&mut self) {
        self.stop();
        self.kill_orphans();
        unmount_under(self.dir.path());
        if self.tmpfs_root {
            unmount(&self.root());
        }
        // TempDir removes the dir when the field is dropped, right after this.
    }
}

/// A TOML basic string holding `path`.
fn toml_string(path: &Path) -> String {
    let s = path.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Mounts a tmpfs of `size` at `dir`.
fn mount_tmpfs(dir: &Path, size: &str) -> anyhow::Result<()> {
    let c_dir = c_path(dir)?;
    let options = std::ffi::CString::new(format!("size={size},mode=0755"))
        .context("tmpfs size contains a NUL byte")?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c_dir.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("cannot mount a {size} tmpfs on {}: {err}", dir.display());
    }
    Ok(())
}

fn c_path(path: &Path) -> anyhow::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))
}

/// Lazily unmounts `path` (errors ignored: cleanup is best effort).
fn unmount(path: &Path) {
    let Ok(c) = c_path(path) else {
        return;
    };
    // SAFETY: `c` is a valid NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// Unmounts every mount at or below `dir`, deepest first, until none is left.
pub fn unmount_under(dir: &Path) {
    for _ in 0..10 {
        let mut mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in &mounts {
            unmount(m);
        }
    }
}

/// Mount points at or below `dir`, from `/proc/self/mountinfo` (one entry per mount, so a
/// path mounted twice appears twice).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Decodes mountinfo's octal escapes (`\040` is a space).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What `/proc/PID/stat` says about a process.
struct Stat {
    ppid: i32,
    start: u64,
    /// A zombie (or dead) process: it runs no more, only waits to be reaped.
    zombie: bool,
}

fn stat_of(pid: i32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, starttime field 22.
    Some(Stat {
        zombie: matches!(fields.first(), Some(&"Z") | Some(&"X")),
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Whether the process still runs (zombies waiting for their reaper do not).
fn is_alive(p: &ProcId) -> bool {
    stat_of(p.pid).is_some_and(|s| s.start == p.start && !s.zombie)
}

/// Every live descendant of the processes in `roots` (not the roots themselves).
fn descendants(roots: &[i32]) -> Vec<ProcId> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let procs: Vec<(i32, i32, u64)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| stat_of(pid).map(|s| (pid, s.ppid, s.start)))
        .collect();
    let mut found: Vec<ProcId> = Vec::new();
    let mut frontier: Vec<i32> = roots.to_vec();
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid, start) in &procs {
            if ppid == parent && !found.iter().any(|p| p.pid == pid) {
                found.push(ProcId { pid, start });
                frontier.push(pid);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\"), r"/end\");
    }

    #[test]
    fn finds_descendants_with_start_times() {
        let mut child = Command::new("/bin/busybox")
            .args(["sh", "-c", "/bin/busybox sleep 30 & wait"])
            .spawn()
            .unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = Vec::new();
        while Instant::now() < deadline {
            found = descendants(&[i32::try_from(child.id()).unwrap()]);
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(is_alive(&found[0]));
        assert!(descendants(&[me])
            .iter()
            .any(|p| p.pid == i32::try_from(child.id()).unwrap()));
        unsafe { libc::kill(found[0].pid, libc::SIGKILL) };
        child.wait().unwrap();
        assert!(!is_alive(&found[0]));
    }

    #[test]
    fn toml_strings_are_quoted() {
        assert_eq!(toml_string(Path::new("/a/b")), "\"/a/b\"");
        assert_eq!(toml_string(Path::new("/a\"b")), "\"/a\\\"b\"");
    }
}
