//! cairnd's configuration: a TOML file whose every setting has an embedded default.
//!
//! `cairnd --config FILE` reads it; a missing file means "all defaults". Unknown keys are
//! refused so that a typo in a node's config is an error, not a silently ignored setting.
//! Runs in cairnd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_snapshotter::registry::{RegistryHost, RegistrySettings};
use serde::Deserialize;

/// The default configuration, embedded in the binary and printed by `cairnd --print-default-config`.
pub const DEFAULT_CONFIG: &str = r#"# cairnd configuration. Every setting below is the built-in default.

# Persistent state: the metadata store, content and snapshots.
root = "/var/lib/cairn"
# Volatile state: the socket, per-pod and per-container run dirs.
state = "/run/cairn"
# The CRI socket kubelet and crictl connect to (mode 0660, owner root).
socket = "/run/cairn/cairn.sock"
# tracing filter: error, warn, info, debug, trace, or a full EnvFilter directive.
log_level = "info"

[image]
# Layers downloaded and unpacked at once per pull.
max_concurrent_downloads = 3
# Seconds to wait for a registry connection before reporting it Unavailable.
connect_timeout_secs = 5
# The platform images are pulled for; empty means this node's own (e.g. linux/amd64).
platform = ""
# Registries on localhost and 127.0.0.0/8 may be reached over plain HTTP or TLS
# without verification, as Docker allows.
insecure_localhost = true

# Per-registry settings, keyed by registry host as it appears in image names
# ("docker.io", "registry.k8s.io", "127.0.0.1:5000"). Example:
#
# [registries."docker.io"]
# mirrors = ["http://127.0.0.1:5000"]  # tried in order; the registry itself last
# insecure = false                     # plain HTTP allowed, TLS not verified
# ca_file = "/etc/cairn/certs/ca.pem"  # extra CA for this registry and its mirrors
# username = ""                        # credentials used when CRI gives none
# password = ""

# Runtime handlers: the names a pod's CRI runtime_handler may give. "" and "cairn" are
# always cairn's built-in launcher (the default, and the fast path). A handler of
# type "oci" runs an external OCI runtime binary (runc, crun) on the same bundle, for
# compatibility; its pods' shims exec it to create, start, exec into and delete
# containers. Example:
#
# [runtimes.runc]
# type = "oci"
# path = "/usr/sbin/runc"

# Pod networking through CNI plugins. The first valid network list in conf_dirs (files
# *.conflist, *.conf, *.json in name order) is used, re-read whenever the dirs change.
# With no config file at all, pods that do not use the host network get a namespace with
# loopback only and NetworkReady is false; a file that does not parse makes
# RunPodSandbox fail. Attachment records (what DEL needs) live under <root>/cni.
[cni]
conf_dirs = ["/etc/cni/net.d"]
# Searched in order for plugin executables.
bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
# Seconds one plugin call may take.
plugin_timeout_secs = 60

# The streaming server for CRI Exec, Attach and PortForward: the URLs these calls return
# point at it (kubelet connects to them). Port 0 picks a free port at each start.
[streaming]
address = "127.0.0.1"
port = 0
# Seconds a streaming connection may stay idle before it is closed.
idle_timeout_secs = 14400
"#;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub log_level: String,
    pub image: ImageConfig,
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
    #[serde(default)]
    pub runtimes: BTreeMap<String, RuntimeHandler>,
    pub cni: CniSection,
    pub streaming: StreamingSection,
}

/// `[streaming]`: where the Exec/Attach/PortForward streaming server listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamingSection {
    pub address: std::net::IpAddr,
    pub port: u16,
    pub idle_timeout_secs: u64,
}

/// `[cni]`: where CNI network lists and plugins are found.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniSection {
    pub conf_dirs: Vec<PathBuf>,
    pub bin_dirs: Vec<PathBuf>,
    pub plugin_timeout_secs: u64,
}

/// `[runtimes.<name>]`: what a CRI runtime handler name runs containers with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandler {
    #[serde(rename = "type")]
    pub kind: RuntimeKind,
    /// The runtime binary (type "oci").
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// The kinds of runtime handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// cairn's built-in launcher.
    Cairn,
    /// An external OCI runtime binary (runc, crun).
    Oci,
}

/// `[image]`: pulls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub max_concurrent_downloads: usize,
    pub connect_timeout_secs: u64,
    pub platform: String,
    pub insecure_localhost: bool,
}

/// `[registries."host"]`: mirrors, TLS and credentials of one registry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub mirrors: Vec<String>,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

impl Config {
    /// The embedded defaults.
    pub fn default_config() -> Config {
        toml::from_str(DEFAULT_CONFIG).unwrap_or_else(|e| panic!("embedded default config: {e}"))
    }

    /// Loads `path` over the embedded defaults: settings the file leaves out keep their defaults.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("config {}", path.display()))
    }

    /// Parses TOML text over the embedded defaults.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let mut merged: toml::Table = toml::from_str(DEFAULT_CONFIG)?;
        let overlay: toml::Table = toml::from_str(text)?;
        merge(&mut merged, overlay);
        let config: Config = toml::Value::Table(merged).try_into()?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.image.max_concurrent_downloads > 0,
            "image.max_concurrent_downloads must be at least 1"
        );
        for (name, h) in &self.runtimes {
            anyhow::ensure!(!name.is_empty(), "runtimes: a handler needs a name");
            match h.kind {
                RuntimeKind::Oci => anyhow::ensure!(
                    h.path.as_ref().is_some_and(|p| p.is_absolute()),
                    "runtimes.{name}: type \"oci\" needs an absolute path to the runtime binary"
                ),
                RuntimeKind::Cairn => anyhow::ensure!(
                    h.path.is_none(),
                    "runtimes.{name}: type \"cairn\" takes no path"
                ),
            }
        }
        anyhow::ensure!(
            self.cni.plugin_timeout_secs > 0,
            "cni.plugin_timeout_secs must be at least 1"
        );
        for (host, r) in &self.registries {
            for m in &r.mirrors {
                anyhow::ensure!(
                    m.starts_with("http://") || m.starts_with("https://"),
                    "registries.\"{host}\": mirror {m:?} must start with http:// or https://"
                );
            }
        }
        Ok(())
    }

    /// The CNI client's settings, with attachment records under `<root>/cni`.
    pub fn cni_config(&self) -> crate::cni::CniConfig {
        crate::cni::CniConfig {
            conf_dirs: self.cni.conf_dirs.clone(),
            bin_dirs: self.cni.bin_dirs.clone(),
            cache_dir: self.root.join("cni"),
            plugin_timeout: std::time::Duration::from_secs(self.cni.plugin_timeout_secs),
        }
    }

    /// The registry settings the image service uses.
    pub fn registry_settings(&self) -> anyhow::Result<RegistrySettings> {
        let mut hosts = BTreeMap::new();
        for (name, r) in &self.registries {
            let ca_pem =
                match &r.ca_file {
                    Some(p) => Some(std::fs::read(p).with_context(|| {
                        format!("registries.\"{name}\".ca_file {}", p.display())
                    })?),
                    None => None,
                };
            let credentials = match (&r.username, &r.password) {
                (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                _ => None,
            };
            hosts.insert(
                name.clone(),
                RegistryHost {
                    mirrors: r.mirrors.clone(),
                    insecure: r.insecure,
                    ca_pem,
                    credentials,
                },
            );
        }
        Ok(RegistrySettings {
            hosts,
            insecure_localhost: self.image.insecure_localhost,
            connect_timeout: std::time::Duration::from_secs(self.image.connect_timeout_secs),
        })
    }
}

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let c = Config::default_config();
        assert_eq!(c.socket, PathBuf::from("/run/cairn/cairn.sock"));
        assert_eq!(c.image.max_concurrent_downloads, 3);
        assert!(c.registries.is_empty());
        let cni = c.cni_config();
        assert_eq!(cni.conf_dirs, [PathBuf::from(crate::cni::DEFAULT_CONF_DIR)]);
        let bins: Vec<PathBuf> = crate::cni::DEFAULT_BIN_DIRS
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(cni.bin_dirs, bins);
        assert_eq!(cni.cache_dir, PathBuf::from("/var/lib/cairn/cni"));
    }

    #[test]
    fn cni_dirs() {
        let c = Config::parse("[cni]\nconf_dirs = [\"/tmp/n\"]\n").unwrap();
        assert_eq!(c.cni.conf_dirs, [PathBuf::from("/tmp/n")]);
        assert_eq!(c.cni.bin_dirs.len(), 2);
        assert!(Config::parse("[cni]\nconf_dir = \"/x\"").is_err());
        assert!(Config::parse("[cni]\nplugin_timeout_secs = 0").is_err());
    }

    #[test]
    fn file_overrides_only_what_it_names() {
        let c = Config::parse(
            "root = \"/tmp/r\"\n[image]\nmax_concurrent_downloads = 8\n\
             [registries.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\n",
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/tmp/r"));
        assert_eq!(c.state, PathBuf::from("/run/cairn"));
        assert_eq!(c.image.max_concurrent_downloads, 8);
        assert_eq!(c.image.connect_timeout_secs, 5);
        assert_eq!(c.registries["docker.io"].mirrors.len(), 1);
    }

    #[test]
    fn runtime_handlers() {
        let c = Config::parse(
            "[runtimes.runc]\ntype = \"oci\"\npath = \"/usr/sbin/runc\"\n\
             [runtimes.fast]\ntype = \"cairn\"\n",
        )
        .unwrap();
        assert_eq!(c.runtimes["runc"].kind, RuntimeKind::Oci);
        assert_eq!(
            c.runtimes["runc"].path.as_deref(),
            Some(Path::new("/usr/sbin/runc"))
        );
        assert_eq!(c.runtimes["fast"].kind, RuntimeKind::Cairn);
        assert!(Config::default_config().runtimes.is_empty());
        assert!(Config::parse("[runtimes.x]\ntype = \"oci\"").is_err());
        assert!(Config::parse("[runtimes.x]\ntype = \"oci\"\npath = \"runc\"").is_err());
        assert!(Config::parse("[runtimes.x]\ntype = \"kata\"").is_err());
        assert!(Config::parse("[runtimes.x]\ntype = \"cairn\"\npath = \"/x\"").is_err());
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        assert!(Config::parse("roott = \"/x\"").is_err());
        assert!(Config::parse("[image]\nmax_concurrent_downloads = 0").is_err());
        assert!(Config::parse("[registries.\"x\"]\nmirrors = [\"ftp://a\"]").is_err());
    }
}
