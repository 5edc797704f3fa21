//! `cairn-bench`: runs the identical CRI workload against cairn and a private containerd
//! (with runc, and with crun) on this machine, interleaved, and prints median and p95 of
//! every row with the cairn/containerd ratio, then whether the targets are met. It also
//! times the CNI plugins alone (the same network list, run by the bench itself). As in
//! production, each runtime's volatile `state` dir is on a (private) tmpfs and its root on
//! disk. Run as root, through `bench/run.sh`.
//!
//! Everything it starts (registry, cairnd, containerd, shims, mounts, cgroups under a
//! private parent, the CNI bridge, network namespaces, the hugetlb mount) is undone by drop
//! guards, also when a step fails.

mod cni;
mod containerd;
mod host;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use cairn_proto::cri::image_service_client::ImageServiceClient;
use cairn_proto::cri::runtime_service_client::RuntimeServiceClient;
use cairn_tests::image::fixtures::{busybox_base, sized};
use cairn_tests::image::{push_image, ImageConfig, ImageSpec};
use cairn_tests::{Cairnd, Registry, RegistryOptions};
use clap::Parser;

use containerd::Containerd;
use host::{CgroupParent, CniNet, HugetlbMount, Leftovers};
use report::{Results, CAIRN, CRUN, PLUGINS, PLUGINS_ROW, RUNC};
use workload::Target;

/// Benchmark cairn against containerd 1.6 (runc and crun) through the same CRI client.
#[derive(Parser, Debug)]
struct Args {
    /// Repetitions of every timed row.
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Size of the generated image for the pull row, in MB.
    #[arg(long, default_value_t = 200)]
    pull_mb: u64,
    /// Pods running while daemon and shim memory is measured.
    #[arg(long, default_value_t = 50)]
    mem_pods: usize,
    /// Pods (one container each) started at once.
    #[arg(long, default_value_t = 100)]
    concurrent: usize,
    /// One repetition, a 20 MB pull, 5 pods for memory and concurrency.
    #[arg(long)]
    smoke: bool,
    /// Leave containerd with crun out.
    #[arg(long)]
    no_crun: bool,
    /// Leave containerd out altogether: cairn's rows only, no ratios (for profiling
    /// cairn between full runs).
    #[arg(long)]
    cairn_only: bool,
    /// Also write the table as markdown to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Args {
    fn apply_smoke(mut self) -> Args {
        if self.smoke {
            self.reps = 1;
            self.pull_mb = 20;
            self.mem_pods = 5;
            self.concurrent = 5;
        }
        if self.cairn_only {
            self.no_crun = true;
        }
        self
    }
}

const BUSYBOX: &str = "bench/busybox:1";
const PAUSE: &str = "bench/pause:1";
const BIG: &str = "bench/big:1";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse().apply_smoke();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark and prints (and writes) the table.
async fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    // Dropping the benchmark's future on a signal runs every drop guard it holds.
    let (results, layout) = tokio::select! {
        r = bench(args) => r?,
        sig = interrupted() => anyhow::bail!("stopped by {sig}; everything started was cleaned up"),
    };
    let settings = format!(
        "reps = {}, pull = {} MB, memory with {} pods, {} pods at once; took {:.0} s",
        args.reps,
        args.pull_mb,
        args.mem_pods,
        args.concurrent,
        started.elapsed().as_secs_f64(),
    );
    println!("\n{settings}\n{layout}\n\n{}", results.text());
    if let Some(out) = &args.out {
        let md = format!("{settings}\n\n{layout}\n\n{}", results.markdown());
        std::fs::write(out, md).with_context(|| format!("cannot write {}", out.display()))?;
    }
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Resolves on SIGINT or SIGTERM, naming the signal.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Pushes the images the workload needs: busybox for containers, a pause image for
/// containerd, and the generated image for the pull row.
fn push_images(registry: &Registry, pull_mb: u64) -> Result<()> {
    let busybox = ImageSpec::new(vec![busybox_base()?]);
    push_image(registry, &busybox, BUSYBOX).context("pushing the busybox image")?;
    let pause = ImageSpec::new(vec![busybox_base()?]).config(ImageConfig {
        cmd: vec!["sleep".into(), "infinity".into()],
        ..ImageConfig::default()
    });
    push_image(registry, &pause, PAUSE).context("pushing the pause image")?;
    let mut big = sized(pull_mb * 1_000_000, 8);
    big.layers.insert(0, busybox_base()?);
    push_image(registry, &big, BIG).context("pushing the pull-row image")?;
    Ok(())
}

/// Runs everything; the results and a line saying where each runtime's state and root are.
async fn bench(args: &Args) -> Result<(Results, String)> {
    eprintln!(
        "starting the registry and pushing images ({} MB)",
        args.pull_mb
    );
    let registry = Registry::start(RegistryOptions::plain()).context("starting the registry")?;
    push_images(&registry, args.pull_mb)?;
    // Declared before `cgroups`, so dropped after it: our cgroups in the hugetlb hierarchy
    // are gone by the time it is unmounted.
    let _hugetlb = if args.no_crun {
        None
    } else {
        Some(HugetlbMount::ensure().context("mounting the hugetlb hierarchy for crun")?)
    };
    let cni = CniNet::new()?;
    let cgroups = CgroupParent::new();
    let logs = tempfile::Builder::new()
        .prefix("cairn-bench-logs-")
        .tempdir()
        .context("cannot create the log dir")?;
    let cni_toml = format!(
        "\n[cni]\nconf_dirs = [{:?}]\nbin_dirs = [{:?}]\n",
        cni.conf_dir().display().to_string(),
        host::CNI_PLUGINS
    );
    eprintln!("starting cairnd and containerd");
    // Dropped after cairnd (and before the cgroups): shims of a cairnd that died.
    let mut cairn_shims = Leftovers::new("cairn-shim");
    let mut cairnd = Cairnd::start_with_tmpfs_state(host::STATE_TMPFS_SIZE, &cni_toml)
        .context("starting cairnd")?;
    cairn_shims.watch(&cairnd.state());
    quiet(&mut cairnd)?;
    let ctrd = match args.cairn_only {
        true => None,
        false => Some(Containerd::start(
            &registry.host(),
            &registry.reference(PAUSE),
            &cni.conf_dir(),
        )?),
    };
    let mut targets = Vec::new();
    let make = |name: &str, channel: tonic::transport::Channel, handler: &str| Target {
        name: name.into(),
        rt: RuntimeServiceClient::new(channel.clone()),
        img: ImageServiceClient::new(channel),
        handler: handler.into(),
        image: registry.reference(BUSYBOX),
        cgroup_parent: cgroups.0.clone(),
        logs: logs.path().join(name),
    };
    targets.push(make(CAIRN, cairnd.channel().await?, ""));
    if let Some(ctrd) = &ctrd {
        let ctrd_channel = workload::connect(&ctrd.socket()).await?;
        targets.push(make(RUNC, ctrd_channel.clone(), ""));
        if !args.no_crun {
            targets.push(make(CRUN, ctrd_channel, "crun"));
        }
    }
    let layout = layout(&cairnd, ctrd.as_ref());
    eprintln!("{layout}");
    let chain = cni::Chain::load(&cni.list_path(), Path::new(host::CNI_PLUGINS))?;
    let outcome = run_all(
        args,
        &registry,
        &mut targets,
        &chain,
        &cairnd,
        ctrd.as_ref(),
    )
    .await;
    for t in &mut targets {
        t.remove_all_pods().await;
    }
    if let Err(e) = &outcome {
        if let Some(ctrd) = &ctrd {
            eprintln!("containerd log tail:\n{}", ctrd.tail());
        }
        eprintln!("cairnd log tail:\n{}", tail(&cairnd.log(), 30));
        eprintln!("failed: {e:#}; cleaning up");
    }
    outcome.map(|r| (r, layout))
}

/// Where each runtime keeps its volatile state and its root, with the filesystem type
/// each is really on.
fn layout(cairnd: &Cairnd, ctrd: Option<&Containerd>) -> String {
    let on = |p: &Path| format!("{} on {}", p.display(), host::fs_kind(p));
    let Some(ctrd) = ctrd else {
        return format!(
            "state dir (volatile): cairn {}\nroot (persistent): cairn {}",
            on(&cairnd.state()),
            on(&cairnd.root()),
        );
    };
    format!(
        "state dirs (volatile, under /run on tmpfs in production): cairn {}, containerd {} \
         (runc and crun roots inside)\nroots (persistent, on disk in production): cairn {}, \
         containerd {}",
        on(&cairnd.state()),
        on(&ctrd.state()),
        on(&cairnd.root()),
        on(&ctrd.root()),
    )
}

/// Restarts cairnd with `log_level = "info"` (the harness writes "debug", whose per-frame
/// logging would be measured too; containerd logs at info).
fn quiet(cairnd: &mut Cairnd) -> Result<()> {
    let path = cairnd.config_path();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let text = text.replace("log_level = \"debug\"", "log_level = \"info\"");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    cairnd
        .restart()
        .context("restarting cairnd at log level info")
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn run_all(
    args: &Args,
    registry: &Registry,
    targets: &mut [Target],
    chain: &cni::Chain,
    cairnd: &Cairnd,
    ctrd: Option<&Containerd>,
) -> Result<Results> {
    let mut res = Results::default();
    let busybox = registry.reference(BUSYBOX);
    let big = registry.reference(BIG);
    for t in targets.iter_mut() {
        eprintln!("{}: pulling busybox and warming up", t.name);
        t.pull(&busybox).await.with_context(|| t.name.clone())?;
        lifecycle(t, "warmup", true).await?;
    }
    // Also makes the bridge, which the first bridge pod would otherwise pay for.
    eprintln!("CNI plugins alone: warming up");
    let id = |what: &str| format!("cairn-bench-{}-{what}", std::process::id());
    chain
        .time_add(&id("warmup"))
        .await
        .context("CNI plugins alone, warmup")?;
    for rep in 0..args.reps {
        eprintln!("repetition {}/{}", rep + 1, args.reps);
        let took = chain
            .time_add(&id(&rep.to_string()))
            .await
            .with_context(|| format!("CNI plugins alone, repetition {rep}"))?;
        res.add(PLUGINS_ROW, "ms", PLUGINS, took);
        for t in targets.iter_mut() {
            one_rep(t, rep, &mut res)
                .await
                .with_context(|| format!("{} repetition {rep}", t.name))?;
            if t.name != CRUN {
                let _ = t.remove_image(&big).await;
                let took = t.pull(&big).await.with_context(|| t.name.clone())?;
                let row = format!("PullImage {} MB, cold", args.pull_mb);
                res.add(&row, "ms", &t.name, took);
                res.add(
                    "pull throughput",
                    "MB/s",
                    &t.name,
                    args.pull_mb as f64 * 1000.0 / took,
                );
                t.remove_image(&big).await?;
            }
        }
    }
    for t in targets.iter_mut() {
        if t.name == CRUN {
            continue;
        }
        eprintln!("{}: memory with {} pods", t.name, args.mem_pods);
        let is_cairn = t.name == CAIRN;
        let daemon = if is_cairn {
            i32::try_from(cairnd.pid()).unwrap_or(0)
        } else {
            ctrd.map_or(0, Containerd::pid)
        };
        let cairn_state = cairnd.state().display().to_string();
        let shims = || {
            if is_cairn {
                host::processes("cairn-shim", &cairn_state)
            } else {
                ctrd.map(Containerd::shims).unwrap_or_default()
            }
        };
        memory(t, args.mem_pods, daemon, &mut res, shims).await?;
    }
    for t in targets.iter_mut() {
        eprintln!("{}: {} pods at once", t.name, args.concurrent);
        let (_, took) = t.start_many("many", args.concurrent).await?;
        res.add(
            &format!("{} pods started at once", args.concurrent),
            "ms",
            &t.name,
            took,
        );
        t.remove_all_pods().await;
    }
    Ok(res)
}

/// One repetition of the timed container and pod rows.
async fn one_rep(t: &mut Target, rep: usize, res: &mut Results) -> Result<()> {
    let name = t.name.clone();
    let took = t.version().await?;
    res.add("Version (a CRI round trip)", "ms", &name, took);
    let pod_name = format!("host-{rep}");
    let (pod, took) = t.run_pod(&pod_name, true).await?;
    res.add("RunPodSandbox (host network)", "ms", &name, took);
    let (ctr, took) = t.start_container(&pod, &pod_name, "c").await?;
    res.add("CreateContainer + StartContainer", "ms", &name, took);
    let took = t.exec_true(&ctr).await?;
    res.add("ExecSync true", "ms", &name, took);
    let took = t.remove_container(&ctr).await?;
    res.add("StopContainer + RemoveContainer", "ms", &name, took);
    let took = t.remove_pod(&pod).await?;
    res.add("StopPodSandbox + RemovePodSandbox", "ms", &name, took);
    let (pod, took) = t.run_pod(&format!("cni-{rep}"), false).await?;
    res.add("RunPodSandbox (CNI bridge)", "ms", &name, took);
    t.remove_pod(&pod).await?;
    let took = lifecycle(t, &format!("life-{rep}"), true).await?;
    res.add("whole pod lifecycle", "ms", &name, took);
    Ok(())
}

/// Run pod, create + start container, exec, stop + remove both; the total time.
async fn lifecycle(t: &mut Target, name: &str, host_net: bool) -> Result<f64> {
    let t0 = Instant::now();
    let (pod, _) = t.run_pod(name, host_net).await?;
    let (ctr, _) = t.start_container(&pod, name, "c").await?;
    t.remove_container(&ctr).await?;
    t.remove_pod(&pod).await?;
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

/// Daemon RSS idle and with `pods` pods, and the mean RSS and PSS of their shims.
async fn memory(
    t: &mut Target,
    pods: usize,
    daemon: i32,
    res: &mut Results,
    shims: impl Fn() -> Vec<i32>,
) -> Result<()> {
    let name = t.name.clone();
    let idle = host::rss_kb(daemon).context("cannot read the daemon's RSS")?;
    res.add("daemon RSS idle", "MB", &name, idle as f64 / 1024.0);
    let (ids, _) = t.start_many("mem", pods).await?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let busy = host::rss_kb(daemon).context("cannot read the daemon's RSS")?;
    res.add(
        &format!("daemon RSS, {pods} pods"),
        "MB",
        &name,
        busy as f64 / 1024.0,
    );
    let pids = shims();
    let count = ids.len().max(1) as f64;
    let rss: u64 = pids.iter().filter_map(|p| host::rss_kb(*p)).sum();
    let pss: u64 = pids.iter().filter_map(|p| host::pss_kb(*p)).sum();
    eprintln!("{name}: {} shims for {} pods", pids.len(), ids.len());
    res.add("shim RSS per pod", "MB", &name, rss as f64 / 1024.0 / count);
    res.add("shim PSS per pod", "MB", &name, pss as f64 / 1024.0 / count);
    t.remove_all_pods().await;
    Ok(())
}
