//! cairnctl: the operator's CLI. Talks to cairnd over the same socket as kubelet (CRI)
//! plus cairn's control API; it never touches the store itself.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use cairn_proto::control::{self as pb, control_client::ControlClient};
use cairn_proto::cri::{
    self, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(name = "cairnctl", version, about = "Operate a cairn node")]
struct Args {
    /// cairnd's socket.
    #[arg(
        long,
        env = "CAIRN_SOCKET",
        default_value = "/run/cairn/cairn.sock",
        global = true
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Images: pull, ls, inspect, rm, import.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Disk usage per image and per snapshot: bytes unique to each and shared.
    Du,
    /// Lists containers; `-s` adds their writable-layer size and image (virtual) size.
    Ps {
        /// Include exited containers.
        #[arg(long, short)]
        all: bool,
        /// Show sizes.
        #[arg(long, short)]
        size: bool,
    },
    /// Lists pods.
    Pods,
    /// Runs IMAGE [COMMAND...] in a new pod, waits for it, prints its output and exits
    /// with its exit code.
    Run {
        /// Remove the pod and container afterwards.
        #[arg(long)]
        rm: bool,
        image: String,
        command: Vec<String>,
    },
    /// The runtime's name, version and readiness.
    Info,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Pulls an image, with progress.
    Pull {
        image: String,
        /// Registry credentials as user:password.
        #[arg(long)]
        creds: Option<String>,
        /// No progress bars, just the image ID.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Lists images.
    #[command(alias = "list")]
    Ls {
        /// Only image IDs.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Shows an image's status and config as JSON.
    Inspect { image: String },
    /// Removes images by ID, tag or digest.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Imports an OCI layout directory or a docker-save / OCI archive on this node.
    Import {
        path: PathBuf,
        /// Name for images the archive leaves unnamed.
        #[arg(long)]
        name: Option<String>,
    },
}

async fn channel(socket: &std::path::Path) -> anyhow::Result<Channel> {
    cairn_proto::client::unix_channel(socket)
        .await
        .with_context(|| format!("connecting to cairnd at {}", socket.display()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("cairnctl: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ch = channel(&args.socket).await?;
    match args.command {
        Command::Image(c) => image(ch, c).await,
        Command::Du => du(ch).await,
        Command::Ps { all, size } => ps(ch, all, size).await,
        Command::Pods => pods(ch).await,
        Command::Run { rm, image, command } => run_container(ch, rm, image, command).await,
        Command::Info => info(ch).await,
    }
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

async fn image(ch: Channel, cmd: ImageCommand) -> anyhow::Result<()> {
    let mut images = ImageServiceClient::new(ch.clone());
    match cmd {
        ImageCommand::Pull {
            image,
            creds,
            quiet,
        } => pull(ch, image, creds, quiet).await,
        ImageCommand::Ls { quiet } => {
            let list = images
                .list_images(cri::ListImagesRequest::default())
                .await
                .map_err(status_error)?
                .into_inner()
                .images;
            if quiet {
                for i in list {
                    println!("{}", i.id);
                }
                return Ok(());
            }
            println!(
                "{:<50} {:<20} {:<15} {:>10}",
                "IMAGE", "TAG", "IMAGE ID", "SIZE"
            );
            for i in list {
                let id = short_id(&i.id);
                if i.repo_tags.is_empty() {
                    println!(
                        "{:<50} {:<20} {:<15} {:>10}",
                        "<none>",
                        "<none>",
                        id,
                        human(i.size)
                    );
                }
                for t in &i.repo_tags {
                    let (repo, tag) = t.rsplit_once(':').unwrap_or((t, ""));
                    println!("{:<50} {:<20} {:<15} {:>10}", repo, tag, id, human(i.size));
                }
            }
            Ok(())
        }
        ImageCommand::Inspect { image } => {
            let resp = images
                .image_status(cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    verbose: true,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let Some(img) = resp.image else {
                anyhow::bail!("image {image} not found");
            };
            let info: HashMap<String, serde_json::Value> = resp
                .info
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v)),
                    )
                })
                .collect();
            let out = serde_json::json!({ "status": img, "info": info });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        ImageCommand::Rm { images: names } => {
            for name in names {
                images
                    .remove_image(cri::RemoveImageRequest {
                        image: Some(cri::ImageSpec {
                            image: name.clone(),
                            ..Default::default()
                        }),
                    })
                    .await
                    .map_err(status_error)
                    .with_context(|| format!("removing {name}"))?;
                println!("Deleted: {name}");
            }
            Ok(())
        }
        ImageCommand::Import { path, name } => {
            let path =
                std::fs::canonicalize(&path).with_context(|| format!("{}", path.display()))?;
            let resp = ControlClient::new(ch)
                .import_image(pb::ImportImageRequest {
                    path: path.display().to_string(),
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            for i in resp.images {
                println!("imported {} {}", i.image_id, i.repo_tags.join(" "));
            }
            Ok(())
        }
    }
}

async fn pull(
    ch: Channel,
    image: String,
    creds: Option<String>,
    quiet: bool,
) -> anyhow::Result<()> {
    let (username, password) = match creds {
        Some(c) => {
            let (u, p) = c.split_once(':').context("--creds must be user:password")?;
            (u.to_string(), p.to_string())
        }
        None => Default::default(),
    };
    let mut stream = ControlClient::new(ch)
        .pull_image(pb::PullImageRequest {
            image: image.clone(),
            username,
            password,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    use std::io::IsTerminal;
    let bars = MultiProgress::new();
    // Without a terminal (logs, CI) progress is one plain line per step instead of bars.
    let plain = !quiet && !std::io::stderr().is_terminal();
    if quiet || plain {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let say = |line: String| {
        if plain {
            eprintln!("{line}");
        } else {
            let _ = bars.println(line);
        }
    };
    let style =
        ProgressStyle::with_template("{prefix:.bold} {bar:30} {bytes:>10}/{total_bytes:<10} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut layers: HashMap<String, ProgressBar> = HashMap::new();
    while let Some(ev) = stream.message().await.map_err(status_error)? {
        match ev.phase.as_str() {
            "resolving" => say(format!("pulling {image}")),
            "resolved" => {
                say(format!(
                    "manifest {} ({} layers, {})",
                    ev.digest,
                    ev.current,
                    human(ev.total)
                ));
            }
            "layer" => {
                let bar = layers.entry(ev.digest.clone()).or_insert_with(|| {
                    let b = bars.add(ProgressBar::new(ev.total));
                    b.set_style(style.clone());
                    b.set_prefix(short_id(&ev.digest));
                    b
                });
                bar.set_position(ev.current.min(ev.total));
                match ev.status.as_str() {
                    "present" => {
                        bar.finish_with_message("already present");
                        if plain {
                            say(format!("layer {} already present", short_id(&ev.digest)));
                        }
                    }
                    "done" => {
                        bar.finish_with_message("unpacked");
                        if plain {
                            say(format!(
                                "layer {} unpacked ({})",
                                short_id(&ev.digest),
                                human(ev.total)
                            ));
                        }
                    }
                    s => bar.set_message(s.to_string()),
                }
            }
            "done" => {
                for b in layers.values() {
                    if !b.is_finished() {
                        b.finish();
                    }
                }
                if quiet {
                    println!("{}", ev.image_id);
                } else {
                    say(format!(
                        "{image}: {} {}",
                        ev.image_id,
                        ev.repo_tags.join(" ")
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

async fn du(ch: Channel) -> anyhow::Result<()> {
    let du = ControlClient::new(ch)
        .disk_usage(pb::DiskUsageRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    println!("IMAGES");
    println!(
        "{:<15} {:<45} {:>10} {:>10} {:>10}",
        "IMAGE ID", "TAGS", "SIZE", "UNIQUE", "SHARED"
    );
    for i in &du.images {
        println!(
            "{:<15} {:<45} {:>10} {:>10} {:>10}",
            short_id(&i.image_id),
            i.repo_tags.join(","),
            human(i.size_bytes),
            human(i.unique_bytes),
            human(i.shared_bytes)
        );
    }
    println!();
    println!("SNAPSHOTS");
    println!(
        "{:<20} {:<10} {:>10} {:>8} {:>6}",
        "KEY", "KIND", "SIZE", "INODES", "USERS"
    );
    for s in &du.snapshots {
        println!(
            "{:<20} {:<10} {:>10} {:>8} {:>6}",
            short_id(&s.key),
            s.kind,
            human(s.bytes),
            s.inodes,
            s.users
        );
    }
    println!();
    let sum: u64 = du.images.iter().map(|i| i.size_bytes).sum();
    println!(
        "stored once: {} in snapshots (images would take {} unshared), {} of metadata content",
        human(du.total_bytes),
        human(sum),
        human(du.content_bytes)
    );
    Ok(())
}

async fn info(ch: Channel) -> anyhow::Result<()> {
    let mut rt = RuntimeServiceClient::new(ch);
    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{} {} (CRI {})",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    );
    let s = rt
        .status(cri::StatusRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    for c in s.status.map(|s| s.conditions).unwrap_or_default() {
        println!("{}: {} {} {}", c.r#type, c.status, c.reason, c.message);
    }
    Ok(())
}

fn short_id(id: &str) -> String {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.chars().take(12).collect()
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

async fn ps(ch: Channel, all: bool, size: bool) -> anyhow::Result<()> {
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let list = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .map_err(status_error)?
        .into_inner()
        .containers;
    let image_sizes: HashMap<String, u64> = if size {
        ControlClient::new(ch)
            .disk_usage(pb::DiskUsageRequest {})
            .await
            .map_err(status_error)?
            .into_inner()
            .images
            .into_iter()
            .map(|i| (i.image_id, i.size_bytes))
            .collect()
    } else {
        HashMap::new()
    };
    let header = format!(
        "{:<14} {:<14} {:<20} {:<10} {:<14}",
        "CONTAINER", "IMAGE", "NAME", "STATE", "POD"
    );
    println!("{header}{}", if size { "  SIZE" } else { "" });
    for c in list {
        let running = c.state == cri::ContainerState::ContainerRunning as i32;
        if !all && !running && c.state != cri::ContainerState::ContainerCreated as i32 {
            continue;
        }
        let state = cri::ContainerState::try_from(c.state)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("CONTAINER_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        let name = c
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let mut line = format!(
            "{:<14} {:<14} {:<20} {:<10} {:<14}",
            short_id(&c.id),
            short_id(&c.image_ref),
            name,
            state,
            short_id(&c.pod_sandbox_id)
        );
        if size {
            let layer = rt
                .container_stats(cri::ContainerStatsRequest {
                    container_id: c.id.clone(),
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().stats)
                .and_then(|s| s.writable_layer)
                .and_then(|w| w.used_bytes)
                .map(|v| v.value)
                .unwrap_or(0);
            let image = image_sizes.get(&c.image_ref).copied().unwrap_or(0);
            line.push_str(&format!(
                "  {} (virtual {})",
                human(layer),
                human(layer + image)
            ));
        }
        println!("{line}");
    }
    Ok(())
}

async fn pods(ch: Channel) -> anyhow::Result<()> {
    let mut rt = RuntimeServiceClient::new(ch);
    let items = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .map_err(status_error)?
        .into_inner()
        .items;
    println!(
        "{:<14} {:<10} {:<30} {:<15}",
        "POD ID", "STATE", "NAME", "NAMESPACE"
    );
    for p in items {
        let meta = p.metadata.unwrap_or_default();
        let state = if p.state == cri::PodSandboxState::SandboxReady as i32 {
            "ready"
        } else {
            "notready"
        };
        println!(
            "{:<14} {:<10} {:<30} {:<15}",
            short_id(&p.id),
            state,
            meta.name,
            meta.namespace
        );
    }
    Ok(())
}

async fn run_container(
    ch: Channel,
    rm: bool,
    image: String,
    command: Vec<String>,
) -> anyhow::Result<()> {
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let mut images = ImageServiceClient::new(ch.clone());
    let spec = Some(cri::ImageSpec {
        image: image.clone(),
        ..Default::default()
    });
    let present = images
        .image_status(cri::ImageStatusRequest {
            image: spec.clone(),
            verbose: false,
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .image
        .is_some();
    if !present {
        images
            .pull_image(cri::PullImageRequest {
                image: spec.clone(),
                ..Default::default()
            })
            .await
            .map_err(status_error)?;
    }
    let uid = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let name = format!("run-{}", &uid[uid.len().saturating_sub(8)..]);
    let log_dir = std::env::temp_dir().join(format!("cairnctl-{uid}"));
    std::fs::create_dir_all(&log_dir)?;
    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: "cairnctl".into(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: log_dir.display().to_string(),
        ..Default::default()
    };
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .pod_sandbox_id;
    let result = async {
        let ctr = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: name.clone(),
                        attempt: 0,
                    }),
                    image: spec.clone(),
                    command,
                    log_path: "main.log".into(),
                    ..Default::default()
                }),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: ctr.clone(),
        })
        .await
        .map_err(status_error)?;
        let status = loop {
            let st = rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: ctr.clone(),
                    verbose: false,
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .status
                .context("no status")?;
            if st.state == cri::ContainerState::ContainerExited as i32 {
                break st;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let log = std::fs::read_to_string(log_dir.join("main.log")).unwrap_or_default();
        for line in log.lines() {
            let mut parts = line.splitn(4, ' ');
            let (_, stream, _, text) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next().unwrap_or(""),
            );
            if stream == Some("stderr") {
                eprintln!("{text}");
            } else {
                println!("{text}");
            }
        }
        anyhow::Ok(status.exit_code)
    }
    .await;
    if rm {
        let _ = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await;
        let _ = std::fs::remove_dir_all(&log_dir);
    }
    let code = result?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
