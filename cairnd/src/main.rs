//! cairnd: the CRI daemon. Serves CRI v1 (and v1alpha2) and cairn's control API on a unix
//! socket, with the image store under its root dir.

use std::path::PathBuf;

use anyhow::Context;
use cairn_snapshotter::image::{ImageService, ImageServiceConfig};
use cairn_snapshotter::manifest::Platform;
use cairnd::config::{Config, DEFAULT_CONFIG};
use clap::Parser;

/// cairn's CRI daemon.
#[derive(Debug, Parser)]
#[command(name = "cairnd", version, about)]
struct Args {
    /// TOML config file; settings it leaves out keep their embedded defaults.
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `root` (persistent state).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Overrides `state` (volatile state).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Overrides `socket`.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Prints the embedded default config and exits.
    #[arg(long)]
    print_default_config: bool,
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    let args = Args::parse();
    if args.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default_config(),
    };
    if let Some(r) = args.root {
        config.root = r;
    }
    if let Some(s) = args.state {
        config.state = s;
    }
    if let Some(s) = args.socket {
        config.socket = s;
    }
    init_tracing(&config.log_level)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(config))
}

/// At most two glibc malloc arenas: otherwise each thread that pulls or unpacks (tokio's
/// workers, its blocking pool) gets an arena of its own, which glibc keeps, untrimmed,
/// after the thread is gone. Called before any thread starts.
fn limit_malloc_arenas() {
    // SAFETY: mallopt with constant arguments, while the process has a single thread.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn init_tracing(level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("log_level {level:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let platform = match config.image.platform.as_str() {
        "" => Platform::host(),
        p => Platform::parse(p).with_context(|| format!("image.platform {p:?}"))?,
    };
    std::fs::create_dir_all(&config.state)
        .with_context(|| format!("creating {}", config.state.display()))?;
    let images = ImageService::open(ImageServiceConfig {
        root: config.root.clone(),
        platform,
        max_concurrent_downloads: config.image.max_concurrent_downloads,
        registries: config.registry_settings()?,
    })
    .with_context(|| format!("opening the image store in {}", config.root.display()))?;
    tracing::info!(root = %config.root.display(), version = env!("CARGO_PKG_VERSION"), "cairnd starting");
    let runtime = cairnd::runtime::Runtime::with_handlers(
        images.clone(),
        &config.state,
        config.runtimes.clone(),
        config.cni_config(),
    )?;
    match runtime.network_status() {
        Ok(name) => tracing::info!("CNI network {name} in use"),
        Err(e) => tracing::warn!(
            "{e}: pods that do not use the host network get loopback only until a CNI config appears"
        ),
    }
    runtime
        .recover()
        .await
        .map_err(|e| anyhow::anyhow!("recovering pods and containers: {}", e.message()))?;
    let streaming = start_streaming(&config, runtime.clone()).await?;
    cairnd::cri::serve(
        &config.socket,
        images,
        runtime,
        streaming,
        shutdown_signal(),
    )
    .await
}

/// Starts the Exec/Attach/PortForward streaming server of `[streaming]`.
async fn start_streaming(
    config: &Config,
    runtime: std::sync::Arc<cairnd::runtime::Runtime>,
) -> anyhow::Result<std::sync::Arc<cairn_streaming::Server>> {
    let s = &config.streaming;
    let addr = std::net::SocketAddr::new(s.address, s.port);
    let server = cairn_streaming::Server::start(
        cairn_streaming::Config {
            addr,
            stream_idle_timeout: std::time::Duration::from_secs(s.idle_timeout_secs),
            ..Default::default()
        },
        std::sync::Arc::new(cairnd::runtime::StreamingRuntime(runtime)),
    )
    .await
    .with_context(|| format!("starting the streaming server on {addr}"))?;
    tracing::info!(address = %server.local_addr(), "streaming server for exec, attach and port-forward");
    Ok(std::sync::Arc::new(server))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
