//! Host networking fixtures for the CNI tests, every one undone on drop (also when a test
//! panics): network namespaces pinned in private temp dirs, a private bridge whose leftovers
//! (veths, the bridge) are deleted, `net.ipv4.ip_forward` put back once the last user is
//! gone, and the portmap plugin's iptables chains removed when no test had them before.
//! Plus TCP in and out of a namespace from a thread that `setns`es into it.
//!
//! Traffic only ever goes to 127.0.0.0/8 or to addresses inside namespaces the tests made.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Runs a command and returns its stdout; fails with its stderr.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A name unique on this host for this test process: `<prefix><pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace pinned by a bind mount at `<private temp dir>/net` (as cairn pins
/// a pod's at `<pod dir>/ns/net`), unmounted and removed on drop. Made with
/// `unshare --net=<file>`, so nothing under /run/netns is touched.
pub struct NetNs {
    pub name: String,
    pub path: PathBuf,
    deleted: bool,
    _dir: tempfile::TempDir,
}

impl NetNs {
    pub fn new() -> Result<NetNs> {
        let name = unique("cairn-t");
        let dir = tempfile::Builder::new().prefix(&name).tempdir()?;
        let path = dir.path().join("net");
        std::fs::File::create(&path)?;
        let mut ns = NetNs {
            name,
            path,
            deleted: true,
            _dir: dir,
        };
        let arg = format!("--net={}", ns.path.display());
        sh("unshare", &[&arg, "true"])?;
        ns.deleted = false;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `ip` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let arg = format!("--net={}", self.path.display());
        let mut all = vec![arg.as_str(), "ip"];
        all.extend_from_slice(args);
        sh("nsenter", &all)
    }

    /// Deletes the namespace now (its veth ends go with it, a moment later); the path is
    /// gone afterwards. Idempotent.
    pub fn delete(&mut self) {
        if self.deleted {
            return;
        }
        self.deleted = true;
        if let Ok(c) = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: unmounting the bind mount this fixture made, by a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// The IPv4 addresses of `ifname` inside the namespace.
    pub fn ipv4_of(&self, ifname: &str) -> Result<Vec<String>> {
        let out = self.ip(&["-o", "-4", "addr", "show", "dev", ifname])?;
        Ok(out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
            .into_iter()
            .collect())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Users of ip_forward: the first records the value, the last puts it back.
static FORWARD: Mutex<(usize, Option<String>)> = Mutex::new((0, None));
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// A bridge name reserved for one test: whatever the plugins make on it (the bridge, its
/// veths) is deleted on drop, and ip_forward (which the bridge plugin turns on for a
/// gateway) is restored once no test holds a `Bridge`.
pub struct Bridge {
    pub name: String,
}

impl Bridge {
    pub fn new() -> Bridge {
        let mut f = FORWARD.lock().unwrap_or_else(|e| e.into_inner());
        if f.0 == 0 {
            f.1 = std::fs::read_to_string(IP_FORWARD).ok();
        }
        f.0 += 1;
        // IFNAMSIZ: at most 15 characters ("cairn" + pid + "-" + n).
        let name = unique("cairn");
        assert!(name.len() <= 15, "bridge name {name} too long");
        Bridge { name }
    }

    pub fn exists(&self) -> bool {
        link_exists(&self.name)
    }

    /// The links enslaved to the bridge (the pods' host-side veths).
    pub fn ports(&self) -> Vec<String> {
        if !self.exists() {
            return Vec::new();
        }
        let out = sh("ip", &["-o", "link", "show", "master", &self.name]).unwrap_or_default();
        out.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| !n.is_empty())
            .collect()
    }
}

impl Default for Bridge {
    fn default() -> Self {
        Bridge::new()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for port in self.ports() {
            let _ = sh("ip", &["link", "del", &port]);
        }
        if self.exists() {
            let _ = sh("ip", &["link", "del", &self.name]);
        }
        let mut f = FORWARD.lock().unwrap_or_else(|e| e.into_inner());
        f.0 -= 1;
        if f.0 == 0 {
            if let Some(v) = f.1.take() {
                let _ = std::fs::write(IP_FORWARD, v.trim());
            }
        }
    }
}

pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Both iptables dumps (IPv4 and IPv6), for leak checks.
pub fn iptables_dump() -> String {
    let v4 = sh("iptables-save", &[]).unwrap_or_default();
    let v6 = sh("ip6tables-save", &[]).unwrap_or_default();
    format!("{v4}{v6}")
}

/// Serialises the tests that run portmap (its top-level chains are shared) and removes on
/// drop the `CNI-HOSTPORT-*`/`CNI-DN-*` chains, and the rules jumping to them, that did
/// not exist when it was taken.
pub struct PortmapChains {
    before: Vec<(&'static str, String)>,
    /// The nft tables (`ip nat`, `ip6 nat`) that existed before; iptables-nft creates
    /// them on first use, and an empty one we caused is deleted again.
    tables_before: Vec<String>,
    _lock: MutexGuard<'static, ()>,
}

static PORTMAP: Mutex<()> = Mutex::new(());

/// The iptables families: (dump command, command).
const FAMILIES: [(&str, &str); 2] = [
    ("iptables-save", "iptables"),
    ("ip6tables-save", "ip6tables"),
];

impl PortmapChains {
    pub fn take() -> PortmapChains {
        let lock = PORTMAP.lock().unwrap_or_else(|e| e.into_inner());
        let before = FAMILIES
            .iter()
            .flat_map(|(save, _)| portmap_chains(save).into_iter().map(move |c| (*save, c)))
            .collect();
        PortmapChains {
            before,
            tables_before: nft_tables(),
            _lock: lock,
        }
    }
}

impl Drop for PortmapChains {
    fn drop(&mut self) {
        for (save, tables) in FAMILIES {
            let new: Vec<String> = portmap_chains(save)
                .into_iter()
                .filter(|c| !self.before.iter().any(|(s, b)| *s == save && b == c))
                .collect();
            if !new.is_empty() {
                remove_chains(save, tables, &new);
            }
        }
        for (family, save) in [("ip", "iptables-save"), ("ip6", "ip6tables-save")] {
            let table = format!("{family} nat");
            if self.tables_before.contains(&table) || !nft_tables().contains(&table) {
                continue;
            }
            if only_builtin_chains(&sh(save, &["-t", "nat"]).unwrap_or_default()) {
                let _ = sh("nft", &["delete", "table", family, "nat"]);
            }
        }
    }
}

/// `nft list tables` as "<family> <name>" lines (empty without nft).
fn nft_tables() -> Vec<String> {
    sh("nft", &["list", "tables"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("table "))
        .map(|t| t.trim().to_string())
        .collect()
}

/// Whether an iptables-save dump of one table has no rules and no chains of its own.
fn only_builtin_chains(dump: &str) -> bool {
    const BUILTIN: [&str; 5] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD"];
    dump.lines().all(|l| {
        if l.starts_with("-A ") {
            return false;
        }
        match l.strip_prefix(':') {
            Some(chain) => BUILTIN.iter().any(|b| chain.starts_with(&format!("{b} "))),
            None => true,
        }
    })
}

fn portmap_chains(save: &str) -> Vec<String> {
    let dump = sh(save, &["-t", "nat"]).unwrap_or_default();
    dump.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with("CNI-HOSTPORT-") || c.starts_with("CNI-DN-"))
        .map(String::from)
        .collect()
}

/// Deletes the rules that jump to `chains`, then flushes and deletes the chains.
fn remove_chains(save: &str, tables: &str, chains: &[String]) {
    let dump = sh(save, &["-t", "nat"]).unwrap_or_default();
    for line in dump.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let jumps_to_ours = rule
            .split_whitespace()
            .skip_while(|w| *w != "-j")
            .nth(1)
            .is_some_and(|target| chains.iter().any(|c| c == target));
        let in_ours = rule
            .split_whitespace()
            .next()
            .is_some_and(|c| chains.iter().any(|x| x == c));
        if jumps_to_ours && !in_ours {
            // iptables-save quotes comments; let a shell undo that quoting.
            let cmd = format!("{tables} -w -t nat -D {rule}");
            let _ = sh("sh", &["-c", &cmd]);
        }
    }
    for c in chains {
        let _ = sh(tables, &["-w", "-t", "nat", "-F", c]);
    }
    for c in chains {
        let _ = sh(tables, &["-w", "-t", "nat", "-X", c]);
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: setns on a namespace fd we hold open; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A TCP server inside a namespace that answers every connection with `reply` and closes.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(netns: &Path, port: u16, reply: &str) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = netns.to_path_buf();
        let reply = reply.to_string();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let listener = enter(&path)
                .and_then(|_| TcpListener::bind(("0.0.0.0", port)))
                .and_then(|l| l.set_nonblocking(true).map(|_| l));
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(reply.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        rx.recv()
            .context("server thread died")?
            .with_context(|| format!("listening on :{port} in {}", netns.display()))?;
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects to `addr` from inside `netns` (or from the host for `None`) and reads what the
/// server sends until it closes. Retries for up to `patience` while the connection fails.
pub fn fetch(netns: Option<&Path>, addr: SocketAddr, patience: Duration) -> Result<String> {
    let path = netns.map(Path::to_path_buf);
    let thread = std::thread::spawn(move || -> Result<String> {
        if let Some(p) = &path {
            enter(p).with_context(|| format!("entering {}", p.display()))?;
        }
        let deadline = Instant::now() + patience;
        loop {
            let attempt =
                TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut text = String::new();
                    s.read_to_string(&mut text)?;
                    Ok(text)
                });
            match attempt {
                Ok(text) => return Ok(text),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("connecting to {addr}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("fetch thread panicked"))?
}
