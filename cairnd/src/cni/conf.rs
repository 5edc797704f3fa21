//! CNI network configuration: parsing and validating one network list (a `.conflist`, or a
//! single-plugin `.conf`/`.json` wrapped into a list), and picking the list in use from the
//! conf dirs — the first valid file in name order — with a cheap fingerprint of the dirs so
//! that a config added or changed while cairnd runs is noticed on the next call.
//! Runs in cairnd.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Map, Value};

/// CNI spec versions this runtime speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// File name extensions read from the conf dirs.
const EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

/// A validated network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    /// Each plugin's configuration object; every one has a valid `type`.
    pub plugins: Vec<Map<String, Value>>,
    /// The file it came from (empty for a list restored from the cache).
    pub source: PathBuf,
}

impl NetworkList {
    /// The list as a JSON document (what the result cache stores).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": self.plugins,
        })
    }

    /// Parses the bytes of a `.conflist` (`is_list`) or of a single-plugin `.conf`.
    pub fn parse(bytes: &[u8], is_list: bool, source: &Path) -> Result<NetworkList, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
        let Value::Object(obj) = value else {
            return Err("not a JSON object".into());
        };
        let mut list = if is_list {
            from_list(obj)?
        } else {
            from_single(obj)?
        };
        list.source = source.to_path_buf();
        Ok(list)
    }

    /// Restores a list stored by [`NetworkList::to_json`].
    pub fn from_json(value: &Value) -> Result<NetworkList, String> {
        match value {
            Value::Object(obj) => from_list(obj.clone()),
            _ => Err("not a JSON object".into()),
        }
    }

    /// Whether the list's version knows `min` (e.g. prevResult on DEL needs 0.4.0).
    pub fn at_least(&self, min: &str) -> bool {
        version_at_least(&self.cni_version, min)
    }
}

fn from_list(mut obj: Map<String, Value>) -> Result<NetworkList, String> {
    let name = take_name(&obj)?;
    let cni_version = pick_version(&obj)?;
    let disable_check = match obj.get("disableCheck") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        // Some configs in the wild spell it as a string.
        Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
        Some(other) => return Err(format!("disableCheck must be a boolean, not {other}")),
    };
    let plugins = match obj.remove("plugins") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err("\"plugins\" must be an array".into()),
        None => {
            return Err(
                "no \"plugins\" array (a single plugin config belongs in a .conf file)".into(),
            )
        }
    };
    if plugins.is_empty() {
        return Err("\"plugins\" is empty".into());
    }
    let plugins = plugins
        .into_iter()
        .enumerate()
        .map(|(i, p)| match p {
            Value::Object(p) => {
                check_type(&p).map_err(|e| format!("plugin {i}: {e}"))?;
                Ok(p)
            }
            _ => Err(format!("plugin {i} is not a JSON object")),
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(NetworkList {
        name,
        cni_version,
        disable_check,
        plugins,
        source: PathBuf::new(),
    })
}

fn from_single(obj: Map<String, Value>) -> Result<NetworkList, String> {
    if obj.contains_key("plugins") && !obj.contains_key("type") {
        return Err(
            "has a \"plugins\" array but no \"type\": a network list must be named *.conflist"
                .into(),
        );
    }
    let name = take_name(&obj)?;
    let cni_version = pick_version(&obj)?;
    check_type(&obj)?;
    Ok(NetworkList {
        name,
        cni_version,
        disable_check: false,
        plugins: vec![obj],
        source: PathBuf::new(),
    })
}

fn take_name(obj: &Map<String, Value>) -> Result<String, String> {
    match obj.get("name") {
        Some(Value::String(n)) if valid_name(n) => Ok(n.clone()),
        Some(Value::String(n)) => Err(format!(
            "invalid network name {n:?} (letters, digits, '_', '.', '-'; starting with a letter or digit)"
        )),
        Some(_) => Err("\"name\" must be a string".into()),
        None => Err("no network \"name\"".into()),
    }
}

/// The version to run the list with: `cniVersion`, or the highest supported entry of
/// `cniVersions` (CNI 1.1 lists carry both).
fn pick_version(obj: &Map<String, Value>) -> Result<String, String> {
    if let Some(Value::Array(versions)) = obj.get("cniVersions") {
        let best = versions
            .iter()
            .filter_map(Value::as_str)
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .max_by_key(|v| parse_version(v));
        if let Some(v) = best {
            return Ok(v.to_string());
        }
    }
    match obj.get("cniVersion") {
        Some(Value::String(v)) if SUPPORTED_VERSIONS.contains(&v.as_str()) => Ok(v.clone()),
        Some(Value::String(v)) => Err(format!(
            "unsupported cniVersion {v:?} (supported: {})",
            SUPPORTED_VERSIONS.join(", ")
        )),
        Some(_) => Err("\"cniVersion\" must be a string".into()),
        None => Err("no \"cniVersion\"".into()),
    }
}

fn check_type(plugin: &Map<String, Value>) -> Result<(), String> {
    match plugin.get("type") {
        Some(Value::String(t)) if valid_plugin_type(t) => Ok(()),
        Some(Value::String(t)) => Err(format!("invalid plugin type {t:?}")),
        Some(_) => Err("\"type\" must be a string".into()),
        None => Err("no plugin \"type\"".into()),
    }
}

/// The plugin's `type`, which [`check_type`] has validated.
pub fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// Network names and container IDs: an alphanumeric, then alphanumerics, `_`, `.`, `-`.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A plugin type names an executable in a bin dir: no path separators, no dot names.
fn valid_plugin_type(t: &str) -> bool {
    !t.is_empty() && t != "." && t != ".." && !t.contains('/') && !t.contains('\0')
}

fn parse_version(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

pub fn version_at_least(v: &str, min: &str) -> bool {
    parse_version(v) >= parse_version(min)
}

/// One candidate file of the conf dirs, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub len: u64,
    pub modified: Option<SystemTime>,
    pub changed: (i64, i64),
}

/// The candidate files of `dirs`: each dir's `.conf`/`.conflist`/`.json` files in name
/// order, dirs in the given order. A missing dir contributes nothing. Comparing two
/// listings tells whether anything changed (a file added, removed, renamed or rewritten).
pub fn list_files(dirs: &[PathBuf]) -> Vec<Entry> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(read) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = read
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e))
            })
            .collect();
        paths.sort();
        for path in paths {
            // Follows symlinks: a linked config counts like the file it points to.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            use std::os::unix::fs::MetadataExt;
            out.push(Entry {
                len: meta.len(),
                modified: meta.modified().ok(),
                changed: (meta.ctime(), meta.ctime_nsec()),
                path,
            });
        }
    }
    out
}

/// Which list is in use, given a listing: the first file that parses and validates.
/// The error names the dirs when there is no file, or the first invalid file and why.
pub fn select(dirs: &[PathBuf], files: &[Entry]) -> Result<NetworkList, String> {
    let mut first_error: Option<String> = None;
    for entry in files {
        match load_file(&entry.path) {
            Ok(list) => return Ok(list),
            Err(e) => {
                tracing::warn!("skipping CNI config {}: {e}", entry.path.display());
                first_error.get_or_insert_with(|| format!("{}: {e}", entry.path.display()));
            }
        }
    }
    let where_ = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(match first_error {
        Some(e) => format!("no valid network config found in {where_}: {e}"),
        None => format!("no network config found in {where_}"),
    })
}

/// Reads and parses one conf file (the extension tells list from single plugin).
pub fn load_file(path: &Path) -> Result<NetworkList, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading: {e}"))?;
    let is_list = path.extension().and_then(|e| e.to_str()) == Some("conflist");
    NetworkList::parse(&bytes, is_list, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, is_list: bool) -> Result<NetworkList, String> {
        NetworkList::parse(text.as_bytes(), is_list, Path::new("/x"))
    }

    #[test]
    fn parses_a_list() {
        let l = parse(
            r#"{"cniVersion":"1.0.0","name":"net-1","plugins":[{"type":"bridge","bridge":"b0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            true,
        )
        .unwrap();
        assert_eq!(l.name, "net-1");
        assert_eq!(l.cni_version, "1.0.0");
        assert!(!l.disable_check);
        assert_eq!(l.plugins.len(), 2);
        assert_eq!(plugin_type(&l.plugins[1]), "portmap");
        let back = NetworkList::from_json(&l.to_json()).unwrap();
        assert_eq!(back.plugins, l.plugins);
        assert_eq!(back.name, l.name);
    }

    #[test]
    fn wraps_a_single_conf() {
        let l = parse(
            r#"{"cniVersion":"0.3.1","name":"n","type":"bridge"}"#,
            false,
        )
        .unwrap();
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.cni_version, "0.3.1");
        assert!(!l.at_least("0.4.0"));
        let err = parse(r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, false).unwrap_err();
        assert!(err.contains(".conflist"), "{err}");
    }

    #[test]
    fn picks_the_highest_supported_of_cni_versions() {
        let l = parse(
            r#"{"cniVersion":"0.4.0","cniVersions":["0.4.0","1.0.0","9.9.9"],"name":"n","plugins":[{"type":"x"}]}"#,
            true,
        )
        .unwrap();
        assert_eq!(l.cni_version, "1.0.0");
    }

    #[test]
    fn rejects_invalid_lists() {
        for (text, want) in [
            ("{not json", "invalid JSON"),
            ("[]", "not a JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "no network \"name\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a b","plugins":[{"type":"x"}]}"#,
                "invalid network name",
            ),
            (
                r#"{"cniVersion":"7.0.0","name":"n","plugins":[{"type":"x"}]}"#,
                "unsupported cniVersion",
            ),
            (
                r#"{"name":"n","plugins":[{"type":"x"}]}"#,
                "no \"cniVersion\"",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, "empty"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}"#,
                "plugin 0: no plugin \"type\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
                "invalid plugin type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"}],"disableCheck":3}"#,
                "disableCheck",
            ),
        ] {
            let err = parse(text, true).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn selects_the_first_valid_file_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_path_buf(), dir.path().join("missing")];
        let err = select(&dirs, &list_files(&dirs)).unwrap_err();
        assert!(err.starts_with("no network config found in "), "{err}");
        std::fs::write(dir.path().join("README"), "ignored").unwrap();
        std::fs::write(
            dir.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("30-a.conf"),
            r#"{"cniVersion":"1.0.0","name":"a","type":"x"}"#,
        )
        .unwrap();
        let files = list_files(&dirs);
        assert_eq!(files.len(), 2);
        assert_eq!(select(&dirs, &files).unwrap().name, "b");
        std::fs::write(dir.path().join("10-bad.conflist"), "{").unwrap();
        let files2 = list_files(&dirs);
        assert_ne!(files, files2);
        assert_eq!(select(&dirs, &files2).unwrap().name, "b");
        std::fs::remove_file(dir.path().join("20-b.conflist")).unwrap();
        std::fs::remove_file(dir.path().join("30-a.conf")).unwrap();
        let err = select(&dirs, &list_files(&dirs)).unwrap_err();
        assert!(err.contains("10-bad.conflist: invalid JSON"), "{err}");
    }
}
