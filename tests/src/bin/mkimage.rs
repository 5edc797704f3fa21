//! cairn-mkimage: writes a small runnable demo image as an OCI layout, for the quickstart
//! and for trying cairn by hand: the busybox base layer (shared by every image it makes)
//! plus one layer of its own.
//!
//! Usage: `cairn-mkimage <layout dir> <name>`; the image is tagged `latest`.

use std::collections::BTreeMap;

use cairn_tests::image::fixtures::busybox_base;
use cairn_tests::image::{ImageConfig, ImageSpec, Layer};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, name] = args.as_slice() else {
        anyhow::bail!("usage: cairn-mkimage <layout dir> <name>");
    };
    let marker = format!("etc/app-{name}");
    let own = Layer::new().dir("etc", 0o755).file(
        &marker,
        format!("this file is only in app-{name}\n"),
        0o644,
    );
    let config = ImageConfig {
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        cmd: vec![
            "sh".into(),
            "-c".into(),
            format!("echo hello from app-{name} in $(hostname); cat /{marker}"),
        ],
        labels: BTreeMap::from([("cairn.demo".into(), name.clone())]),
        ..ImageConfig::default()
    };
    let built = ImageSpec::new(vec![busybox_base()?, own])
        .config(config)
        .write(std::path::Path::new(dir), "latest")?;
    println!("{} {}", dir, built.image_id());
    Ok(())
}
