//! The CNI plugins alone: the network list both runtimes are given, run by the benchmark
//! itself as a CNI runtime runs it, so that RunPodSandbox with the bridge network can be
//! set against what the plugins themselves take.
//!
//! Each plugin of the list, in order, gets `CNI_COMMAND=ADD`, `CNI_CONTAINERID`,
//! `CNI_NETNS` (a fresh namespace made for the call), `CNI_IFNAME=eth0` and `CNI_PATH`, and
//! on stdin its own config with the list's `name` and `cniVersion` injected and the
//! previous plugin's result as `prevResult`. Only that ADD chain is timed. A drop guard
//! then runs DEL (plugins in reverse, with the last result as `prevResult`) and removes the
//! namespace, also when a plugin failed or the benchmark was interrupted mid-chain.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_tests::net::NetNs;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

/// The interface name plugins create in the namespace (what both runtimes pass).
const IFNAME: &str = "eth0";

/// How long one plugin call may take before the run fails.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A CNI network list, ready to be run plugin by plugin.
pub struct Chain {
    name: String,
    version: String,
    plugins: Vec<Map<String, Value>>,
    bin_dir: PathBuf,
}

impl Chain {
    /// Reads the network list at `list`; plugins are looked up in `bin_dir`.
    pub fn load(list: &Path, bin_dir: &Path) -> Result<Chain> {
        let text =
            std::fs::read(list).with_context(|| format!("cannot read {}", list.display()))?;
        let value: Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not JSON", list.display()))?;
        let field = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .map(String::from)
                .with_context(|| format!("{}: no string {key:?}", list.display()))
        };
        let plugins = value
            .get("plugins")
            .and_then(Value::as_array)
            .with_context(|| format!("{}: no \"plugins\" array", list.display()))?
            .iter()
            .map(|p| p.as_object().cloned())
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("{}: a plugin that is not an object", list.display()))?;
        if plugins.is_empty() {
            bail!("{}: no plugins", list.display());
        }
        Ok(Chain {
            name: field("name")?,
            version: field("cniVersion")?,
            plugins,
            bin_dir: bin_dir.to_path_buf(),
        })
    }

    /// Makes a network namespace, times ADD of the whole chain into it for container `id`
    /// (unique per call), then DELs and removes the namespace (not timed). Milliseconds.
    pub async fn time_add(&self, id: &str) -> Result<f64> {
        let netns = NetNs::new().context("cannot make a network namespace")?;
        // Dropped before `netns`: DEL runs while the namespace still exists.
        let mut attached = Attached {
            chain: self,
            id,
            netns: &netns.path,
            last: None,
        };
        let t0 = Instant::now();
        for plugin in &self.plugins {
            let conf = self.stdin(plugin, attached.last.as_ref());
            let out = self.call(plugin, "ADD", id, &netns.path, conf).await?;
            let result: Value = serde_json::from_slice(&out)
                .with_context(|| format!("{}: ADD printed no JSON result", plugin_type(plugin)))?;
            attached.last = Some(result);
        }
        Ok(t0.elapsed().as_secs_f64() * 1000.0)
    }

    /// A plugin's config as it reads it on stdin.
    fn stdin(&self, plugin: &Map<String, Value>, prev: Option<&Value>) -> Vec<u8> {
        let mut conf = plugin.clone();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.version.clone()));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
    }

    fn env<'a>(&'a self, command: &'a str, id: &'a str, netns: &'a Path) -> [(&'a str, String); 5] {
        [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_NETNS", netns.display().to_string()),
            ("CNI_IFNAME", IFNAME.to_string()),
            ("CNI_PATH", self.bin_dir.display().to_string()),
        ]
    }

    /// Runs one plugin (killed if the future is dropped); its stdout on success.
    async fn call(
        &self,
        plugin: &Map<String, Value>,
        command: &str,
        id: &str,
        netns: &Path,
        conf: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let ty = plugin_type(plugin);
        let path = self.bin_dir.join(ty);
        let mut child = tokio::process::Command::new(&path)
            .envs(self.env(command, id, netns))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", path.display()))?;
        if let Some(mut pipe) = child.stdin.take() {
            // A plugin failing before it reads its config is reported by its exit status.
            let _ = pipe.write_all(&conf).await;
        }
        let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("{ty} {command}: no exit within {PLUGIN_TIMEOUT:?}"))?
            .with_context(|| format!("{ty} {command}: cannot wait for it"))?;
        if !out.status.success() {
            bail!(
                "{ty} {command} exited with {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }

    /// DEL of every plugin, in reverse order, with `last` as `prevResult` (synchronous: it
    /// runs from a drop). Failures are printed as warnings.
    fn del_all(&self, id: &str, netns: &Path, last: Option<&Value>) {
        for plugin in self.plugins.iter().rev() {
            let ty = plugin_type(plugin);
            let path = self.bin_dir.join(ty);
            if let Err(e) = run_sync(&path, self.env("DEL", id, netns), &self.stdin(plugin, last)) {
                eprintln!("warning: CNI {ty} DEL of {id}: {e:#}");
            }
        }
    }
}

/// A chain (partly) added for one container: DELed on drop.
struct Attached<'a> {
    chain: &'a Chain,
    id: &'a str,
    netns: &'a Path,
    /// The last result ADD printed.
    last: Option<Value>,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.chain.del_all(self.id, self.netns, self.last.as_ref());
    }
}

fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// Runs a plugin synchronously with `env` and `stdin`; fails on a non-zero exit.
fn run_sync(path: &Path, env: [(&str, String); 5], stdin: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new(path)
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", path.display()))?;
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("cannot wait for {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_configs_get_name_version_and_prev_result() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("l.conflist");
        std::fs::write(
            &list,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","bridge":"b"},{"type":"loopback"}]}"#,
        )
        .unwrap();
        let chain = Chain::load(&list, Path::new("/x")).unwrap();
        assert_eq!(chain.plugins.len(), 2);
        let first: Value = serde_json::from_slice(&chain.stdin(&chain.plugins[0], None)).unwrap();
        assert_eq!(
            first,
            serde_json::json!({"type":"bridge","bridge":"b","name":"n","cniVersion":"1.0.0"})
        );
        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let second: Value =
            serde_json::from_slice(&chain.stdin(&chain.plugins[1], Some(&prev))).unwrap();
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["name"], "n");
    }

    /// A list of the real bridge plugin (host-local IPAM in `dir`) and then `last`.
    fn real_list(dir: &Path, bridge: &str, last: &str) -> PathBuf {
        let list = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "cairn-bench-test",
            "plugins": [
                {"type": "bridge", "bridge": bridge, "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.126.0.0/24"}]],
                    "dataDir": dir.join("ipam"),
                }},
                {"type": last}
            ]
        });
        let path = dir.join(format!("{last}.conflist"));
        std::fs::write(&path, list.to_string()).unwrap();
        path
    }

    /// IPs host-local still holds (files named like addresses).
    fn leased(dir: &Path) -> Vec<PathBuf> {
        crate::host::entries(&dir.join("ipam").join("cairn-bench-test"))
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("10."))
            })
            .collect()
    }

    #[tokio::test]
    async fn real_plugins_are_added_then_deleted_also_after_a_failure() {
        let plugins = Path::new(crate::host::CNI_PLUGINS);
        // SAFETY: geteuid has no preconditions.
        let ready = unsafe { libc::geteuid() } == 0 && plugins.join("bridge").exists();
        assert!(ready, "this test needs root and {}", plugins.display());
        let dir = tempfile::tempdir().unwrap();
        let bridge = cairn_tests::net::Bridge::new();
        let chain = Chain::load(&real_list(dir.path(), &bridge.name, "loopback"), plugins).unwrap();
        let took = chain.time_add("cairn-bench-test-ok").await.unwrap();
        assert!(took > 0.0);
        assert!(bridge.exists());
        assert!(leased(dir.path()).is_empty(), "{:?}", leased(dir.path()));
        assert!(bridge.ports().is_empty(), "{:?}", bridge.ports());

        let broken = Chain::load(&real_list(dir.path(), &bridge.name, "missing"), plugins).unwrap();
        let err = broken.time_add("cairn-bench-test-bad").await.unwrap_err();
        assert!(format!("{err:#}").contains("missing"), "{err:#}");
        assert!(leased(dir.path()).is_empty(), "{:?}", leased(dir.path()));
        assert!(bridge.ports().is_empty(), "{:?}", bridge.ports());
    }
}
