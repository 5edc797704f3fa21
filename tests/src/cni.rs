//! A private CNI network for one test: its own conf, bin, cache and IPAM dirs, a bridge
//! name reserved for it (removed on drop, with its veths) and a /24 of its own, and the
//! network lists of Debian's plugins (bridge with host-local, portmap, loopback) written
//! atomically into the conf dir. The host's /etc/cni/net.d is never read or touched.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use serde_json::{json, Value};

use crate::net::Bridge;

/// Where Debian's containernetworking-plugins are.
pub const PLUGINS: &str = "/usr/lib/cni";

static NEXT: AtomicU8 = AtomicU8::new(1);

/// One test's network; `subnet` is `<base>.<n>.0/24`, `n` unique in the test binary.
pub struct Network {
    pub dir: tempfile::TempDir,
    pub n: u8,
    pub name: String,
    pub bridge: Bridge,
    base: &'static str,
}

impl Network {
    /// A network named `<prefix>-<pid>-<n>` on subnet `<base>.<n>.0/24` (`base` such as
    /// "10.124": one per test binary, so that binaries running at once never collide).
    pub fn new(prefix: &str, base: &'static str) -> Network {
        assert!(
            Path::new(PLUGINS).join("bridge").exists(),
            "needs containernetworking-plugins: run tests/setup.sh"
        );
        let dir = tempfile::tempdir().expect("a temp dir");
        for sub in ["net.d", "bin", "cache", "ipam"] {
            std::fs::create_dir(dir.path().join(sub)).expect("the network's dirs");
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Network {
            dir,
            n,
            name: format!("{prefix}-{}-{n}", std::process::id()),
            bridge: Bridge::new(),
            base,
        }
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// For the tests' own plugins (searched before Debian's).
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// For attachment records.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The `[cni]` section pointing cairnd at this network's dirs.
    pub fn toml(&self) -> String {
        format!(
            "\n[cni]\nconf_dirs = [{:?}]\nbin_dirs = [{:?}, {PLUGINS:?}]\n",
            self.conf_dir().display().to_string(),
            self.bin_dir().display().to_string()
        )
    }

    /// `<base>.<n>.`: what the pods' addresses start with.
    pub fn prefix(&self) -> String {
        format!("{}.{}.", self.base, self.n)
    }

    /// The bridge's address: the pods' gateway, an address of the host.
    pub fn gateway(&self) -> String {
        format!("{}1", self.prefix())
    }

    /// bridge (gateway on the bridge, no masquerade, host-local IPAM in the private dir).
    pub fn bridge_plugin(&self) -> Value {
        json!({
            "type": "bridge",
            "bridge": self.bridge.name,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("{}0/24", self.prefix())}]],
                "dataDir": self.ipam_dir(),
            }
        })
    }

    /// portmap for hostPorts, with SNAT so that connections from the host's 127.0.0.1 are
    /// answered.
    pub fn portmap_plugin() -> Value {
        json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true})
    }

    /// A network list of `plugins`.
    pub fn list(&self, plugins: Vec<Value>) -> Value {
        json!({"cniVersion": "1.0.0", "name": self.name, "plugins": plugins})
    }

    /// bridge, `middle`, then loopback (which passes the result through).
    pub fn list_with(&self, middle: Vec<Value>) -> Value {
        let mut plugins = vec![self.bridge_plugin()];
        plugins.extend(middle);
        plugins.push(json!({"type": "loopback"}));
        self.list(plugins)
    }

    /// Writes `text` as conf file `name`, atomically (temp file, rename).
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(".conf.tmp");
        std::fs::write(&tmp, text).expect("writing a conf file");
        std::fs::rename(tmp, self.conf_dir().join(name)).expect("renaming a conf file");
    }

    /// Writes `list` as conf file `name`.
    pub fn write_value(&self, name: &str, list: &Value) {
        let text = serde_json::to_string_pretty(list).expect("a JSON value");
        self.write(name, &text);
    }

    /// Installs a plugin of the test's own (a script) in the private bin dir.
    pub fn write_plugin(&self, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.bin_dir().join(name);
        std::fs::write(&path, script).expect("writing a plugin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("making a plugin executable");
    }

    /// Whatever host-local keeps in the network's IPAM dir.
    pub fn ipam_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.ipam_dir().join(&self.name))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The addresses host-local holds for this network.
    pub fn allocated(&self) -> Vec<String> {
        self.ipam_entries()
            .into_iter()
            .filter(|n| n.parse::<IpAddr>().is_ok())
            .collect()
    }
}
