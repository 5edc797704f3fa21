//! Ready-made test images.
//!
//! * [`busybox_base`]: a runnable root filesystem from the host's static `/bin/busybox`.
//! * [`multi_layer`]: base + a layer with every entry kind + a layer with whiteouts.
//! * [`many_layers`]: n layers of one small file each (n = 128 works).
//! * [`sized`]: incompressible data of a given total size over a given number of layers.
//!
//! All of them are deterministic: the same call gives the same digests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::Context;

use super::{ImageConfig, ImageSpec, Layer, Meta, DEFAULT_PATH};

/// Where the static busybox comes from (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets [`busybox_base`] links into `/bin`.
pub const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "true", "false", "id", "env", "test", "wc", "head", "grep",
    "ps", "mount", "hostname", "nc", "wget",
];

/// `/etc/passwd` of [`busybox_base`].
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
app:x:1000:1000:app:/home/app:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";

/// `/etc/group` of [`busybox_base`].
pub const GROUP: &str = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n";

/// Bytes of `/bin/busybox`, read once.
fn busybox_bytes() -> anyhow::Result<Arc<Vec<u8>>> {
    static CACHE: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    if let Some(bytes) = CACHE.get() {
        return Ok(bytes.clone());
    }
    let bytes = std::fs::read(Path::new(BUSYBOX))
        .with_context(|| format!("cannot read {BUSYBOX} (install busybox-static)"))?;
    Ok(CACHE.get_or_init(|| Arc::new(bytes)).clone())
}

/// A root filesystem layer: `/bin/busybox` (0755) with the [`APPLETS`] as symlinks to it,
/// `/etc/passwd` (root 0, app 1000, nobody 65534), `/etc/group`, `/tmp` (1777),
/// `/home/app` (owned by 1000:1000), `/root` (0700), and empty `/proc`, `/sys`, `/dev`,
/// `/etc`, `/usr/bin`, `/var`.
pub fn busybox_base() -> anyhow::Result<Layer> {
    let busybox = busybox_bytes()?;
    let mut layer =
        Layer::new()
            .dir("bin", 0o755)
            .file_shared("bin/busybox", busybox, Meta::mode(0o755));
    for applet in APPLETS {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    Ok(layer
        .dir("dev", 0o755)
        .dir("etc", 0o755)
        .file("etc/passwd", PASSWD, 0o644)
        .file("etc/group", GROUP, 0o644)
        .dir("home", 0o755)
        .dir_meta("home/app", Meta::mode(0o755).owner(1000, 1000))
        .dir("proc", 0o555)
        .dir("root", 0o700)
        .dir("sys", 0o555)
        .dir("tmp", 0o1777)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .dir("var", 0o755))
}

/// Content of `/data/hello.txt` in [`multi_layer`].
pub const HELLO: &str = "hello from layer 2\n";

/// Three layers exercising every entry kind and both whiteout forms.
///
/// Layer 0: [`busybox_base`].
///
/// Layer 1 (under `/data`, all root-owned unless said):
/// `hello.txt` ([`HELLO`], 0644); `hello-link.txt` hard link to `hello.txt`;
/// `hello-symlink` -> `hello.txt`; `owned.txt` ("owned by app\n", 0640, 1000:1000);
/// `xattr.txt` ("has xattr\n", xattr `user.cairn` = `1`); `script.sh` (0755, prints
/// `script-ok`); `null` (char device 1:3, 0666); `to-delete.txt`; dir `opaque/` with
/// `old-a.txt` and `old-b.txt`; dir `keep/` with `kept.txt`.
///
/// Layer 2: whiteout of `/data/to-delete.txt`; `/data/opaque` made opaque and given
/// `new.txt` ("new\n"); `/data/layer3.txt` ("layer 3\n").
///
/// Result: `/data/to-delete.txt`, `/data/opaque/old-a.txt`, `/data/opaque/old-b.txt` are
/// gone; `/data/opaque` holds only `new.txt`; everything else of layer 1 is there.
///
/// Config: `Env` = PATH + `CAIRN_FIXTURE=multi-layer`, `Cmd` = `sh -c "cat hello.txt"`,
/// `WorkingDir` = `/data`, label `cairn.fixture=multi-layer`.
pub fn multi_layer() -> anyhow::Result<ImageSpec> {
    let files = Layer::new()
        .dir("data", 0o755)
        .file("data/hello.txt", HELLO, 0o644)
        .hardlink("data/hello-link.txt", "data/hello.txt")
        .symlink("data/hello-symlink", "hello.txt")
        .file_meta(
            "data/owned.txt",
            "owned by app\n",
            Meta::mode(0o640).owner(1000, 1000),
        )
        .file_meta(
            "data/xattr.txt",
            "has xattr\n",
            Meta::mode(0o644).xattr("user.cairn", b"1"),
        )
        .file("data/script.sh", "#!/bin/sh\necho script-ok\n", 0o755)
        .char_device("data/null", 1, 3, 0o666)
        .file("data/to-delete.txt", "deleted by layer 2\n", 0o644)
        .dir("data/opaque", 0o755)
        .file("data/opaque/old-a.txt", "old a\n", 0o644)
        .file("data/opaque/old-b.txt", "old b\n", 0o644)
        .dir("data/keep", 0o755)
        .file("data/keep/kept.txt", "kept\n", 0o644);
    let changes = Layer::new()
        .whiteout("data/to-delete.txt")
        .opaque("data/opaque")
        .file("data/opaque/new.txt", "new\n", 0o644)
        .file("data/layer3.txt", "layer 3\n", 0o644);
    let config = ImageConfig {
        env: vec![DEFAULT_PATH.into(), "CAIRN_FIXTURE=multi-layer".into()],
        cmd: vec!["sh".into(), "-c".into(), "cat hello.txt".into()],
        workdir: "/data".into(),
        labels: BTreeMap::from([("cairn.fixture".into(), "multi-layer".into())]),
        ..ImageConfig::default()
    };
    Ok(ImageSpec::new(vec![busybox_base()?, files, changes]).config(config))
}

/// `n` layers (n >= 1): layer 0 is [`busybox_base`] plus `/layers/0`, layer i adds
/// `/layers/i` containing "i\n". All layers differ, so there are `n` distinct diff IDs.
pub fn many_layers(n: usize) -> anyhow::Result<ImageSpec> {
    let mut layers = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        let layer = if i == 0 {
            busybox_base()?.dir("layers", 0o755)
        } else {
            Layer::new()
        };
        layers.push(layer.file(&format!("layers/{i}"), format!("{i}\n"), 0o644));
    }
    Ok(ImageSpec::new(layers))
}

/// `total_bytes` of incompressible pseudo-random data over `layers` layers (>= 1): layer i
/// holds `/data/blob-i` of `total_bytes / layers` bytes (the last one takes the remainder),
/// seeded by i. No busybox: prepend [`busybox_base`] to `spec.layers` to make it runnable.
pub fn sized(total_bytes: u64, layers: usize) -> ImageSpec {
    let count = layers.max(1) as u64;
    let each = total_bytes / count;
    let list = (0..count)
        .map(|i| {
            let len = if i + 1 == count {
                total_bytes - each * (count - 1)
            } else {
                each
            };
            Layer::new().dir("data", 0o755).random_file(
                &format!("data/blob-{i}"),
                len,
                0x00C0_FFEE + i,
            )
        })
        .collect();
    ImageSpec::new(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Compression;

    #[test]
    fn fixtures_are_deterministic() {
        let a = multi_layer().unwrap();
        let b = multi_layer().unwrap();
        for (x, y) in a.layers.iter().zip(&b.layers) {
            assert_eq!(x.diff_id(), y.diff_id());
        }
        assert_eq!(
            sized(1000, 3).layers[2].diff_id(),
            sized(1000, 3).layers[2].diff_id()
        );
    }

    #[test]
    fn many_layers_are_distinct() {
        let spec = many_layers(128).unwrap();
        assert_eq!(spec.layers.len(), 128);
        let mut ids: Vec<String> = spec.layers.iter().map(Layer::diff_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 128);
    }

    #[test]
    fn sized_writes_the_requested_amount() {
        let dir = tempfile::tempdir().unwrap();
        let built = sized(3 * 1024 * 1024 + 5, 3)
            .compression(Compression::Gzip)
            .write(dir.path(), "s")
            .unwrap();
        assert_eq!(built.layers.len(), 3);
        // Incompressible: the blobs are at least as large as the data.
        assert!(
            built.layers_size() >= 3 * 1024 * 1024,
            "{}",
            built.layers_size()
        );
    }
}
