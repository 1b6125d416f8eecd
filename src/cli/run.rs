//! `offload run`: a program file, or one kernel over items 0..N (the one-step program),
//! on this machine or on a cluster's nodes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use offload::files::{commit_outputs, read_input, Expected, StagedOutput};
use offload::job::Number;
use offload::{
    check, check_memory, describe_bytes, memory_limit, sum_workspace, ArgKind, ArgValue, Buffer,
    Cluster, Given, Job, KernelSpec, Options, Report, ScalarValue,
};

use super::package::read_package;
use super::{describe_duration, plural, Cli};

#[derive(Args)]
pub struct RunArgs {
    /// A program file (.toml: buffers, steps, outputs) or a package (.okp) with --kernel.
    target: PathBuf,
    /// The kernel to run (a package only).
    #[arg(long)]
    kernel: Option<String>,
    /// Number of items: the job is items 0..N (a package only).
    #[arg(long)]
    items: Option<u64>,
    /// A scalar argument, NAME=VALUE; for a program, a new value for one of its
    /// [scalars].
    #[arg(long = "arg", value_name = "NAME=VALUE")]
    scalars: Vec<String>,
    /// An `in` buffer read from a raw little-endian file, NAME=FILE.
    #[arg(long = "in", value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// An `inout` buffer: read from FILE, results written back to it.
    #[arg(long = "inout", value_name = "NAME=FILE")]
    inouts: Vec<String>,
    /// An `out` buffer written to FILE.
    #[arg(long = "out", value_name = "NAME=FILE")]
    outputs: Vec<String>,
    /// A `sum` buffer: the element-wise total over all items, written to FILE.
    #[arg(long = "sum", value_name = "NAME=FILE")]
    sums: Vec<String>,
    /// Worker threads on this machine, 1 to 4096 [default: all cores].
    #[arg(long, value_parser = super::parse_count)]
    threads: Option<usize>,
    /// Stack of each worker thread, e.g. 64M: what one item may use for local arrays
    /// and recursion [default: 8M].
    #[arg(long, value_name = "SIZE", value_parser = super::cluster::parse_size)]
    stack_size: Option<u64>,
    /// Check mode: run every item alone on fenced copies of its slices and inputs, so a
    /// kernel that reads or writes outside what its manifest gives an item fails naming
    /// the buffer and the item. Slow (one thread); on this machine's CPU only.
    #[arg(long)]
    check: bool,
    /// The longest one packet may run here, in seconds (e.g. 30 or 0.5): a hung kernel
    /// then ends the run naming it and its items [default: no limit]. With --cluster,
    /// each node's own --packet-timeout applies.
    #[arg(long, value_name = "SECONDS", value_parser = super::parse_seconds)]
    packet_timeout: Option<f64>,
    /// Run kernels in this process's threads instead of isolated, sandboxed worker
    /// processes: a trapping kernel then ends offload itself (still reported), and
    /// nothing confines what a kernel does.
    #[arg(long)]
    in_process: bool,
    /// Test builds only: misbehaviour the isolated workers inject (see the node's
    /// `fault` module).
    #[arg(long, value_name = "FAULT", hide = true)]
    worker_fault: Vec<String>,
    /// Which devices run packets: the CPU, the OpenCL devices, or both (auto). [default:
    /// cpu on this machine; with --cluster, every device the nodes serve]
    #[arg(long, value_enum)]
    device: Option<super::opencl::DeviceFlag>,
    #[command(flatten)]
    cluster: super::cluster::ClusterRunArgs,
}

/// Per output buffer: its name and the staged file its result goes to.
type OutputFiles = Vec<(String, StagedOutput)>;

struct Binding {
    flag: &'static str,
    name: String,
    value: String,
}

fn split_binding(flag: &'static str, text: &str) -> anyhow::Result<Binding> {
    let (name, value) = text
        .split_once('=')
        .with_context(|| format!("--{flag} `{text}` must be NAME=VALUE"))?;
    Ok(Binding {
        flag,
        name: name.trim().to_string(),
        value: value.to_string(),
    })
}

/// Matches the command line's bindings to the kernel's arguments (every one but the
/// lengths the runtime fills in). Before reading or allocating anything it checks the
/// arguments with the kernel model's checker (sizes from the manifest and the files),
/// stages every output file (so a missing or read-only folder is found before the job
/// runs) and checks that the buffers, with the per-device copies of `sum` buffers for
/// `devices` devices, fit in this machine's memory. Then it reads the inputs (no further
/// than they must be long) and allocates the outputs.
fn bind(
    args: &RunArgs,
    spec: &KernelSpec,
    items: u64,
    devices: usize,
) -> anyhow::Result<(Vec<ArgValue>, OutputFiles)> {
    let mut bindings = Vec::new();
    for (flag, list) in [
        ("arg", &args.scalars),
        ("in", &args.inputs),
        ("inout", &args.inouts),
        ("out", &args.outputs),
        ("sum", &args.sums),
    ] {
        for text in list {
            bindings.push(split_binding(flag, text)?);
        }
    }
    for b in &bindings {
        let Some(arg) = spec.arg(&b.name) else {
            bail!(
                "kernel `{}` has no argument `{}` (its signature: {})",
                spec.name,
                b.name,
                spec.signature()
            );
        };
        if arg.derived.is_some() {
            bail!(
                "argument `{arg}` is filled in by the runtime; do not pass --arg {}",
                b.name
            );
        }
        let wanted = match arg.kind {
            ArgKind::Scalar(_) => "arg",
            ArgKind::Buffer { access, .. } => access.name(),
        };
        if wanted != b.flag {
            bail!(
                "argument `{arg}` must be given with --{wanted} {}=..., not --{}",
                b.name,
                b.flag
            );
        }
        if bindings.iter().filter(|o| o.name == b.name).count() > 1 {
            bail!("argument `{}` is given more than once", b.name);
        }
    }
    let params: Vec<_> = spec.args.iter().filter(|a| a.derived.is_none()).collect();
    let binding_of = |arg: &offload::Arg| -> anyhow::Result<&Binding> {
        bindings
            .iter()
            .find(|b| b.name == arg.name)
            .with_context(|| {
                let how = match arg.kind {
                    ArgKind::Scalar(_) => format!("--arg {}=VALUE", arg.name),
                    ArgKind::Buffer { access, .. } => {
                        format!("--{} {}=FILE", access.name(), arg.name)
                    }
                };
                format!(
                    "missing argument `{arg}` of kernel `{}`: pass {how}",
                    spec.name
                )
            })
    };
    // Scalars first: checking them touches nothing, and sizes may be expressions of them.
    let mut scalars: Vec<(String, ScalarValue)> = Vec::new();
    for arg in &params {
        if let ArgKind::Scalar(ty) = arg.kind {
            let value = ScalarValue::parse(&binding_of(arg)?.value, ty)
                .map_err(|e| anyhow::anyhow!("argument `{}`: {e}", arg.name))?;
            scalars.push((arg.name.clone(), value));
        }
    }
    let scalar = |name: &str| scalars.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    // The sizes each buffer must have, and what the files hold: the checker names any
    // mismatch before a byte is read.
    let mut given = Vec::with_capacity(params.len());
    let mut needed: Vec<Option<u64>> = Vec::with_capacity(params.len());
    for arg in &params {
        let slot = spec
            .args
            .iter()
            .position(|a| a.name == arg.name)
            .unwrap_or(0);
        match arg.kind {
            ArgKind::Scalar(_) => {
                given.push(Given::Scalar(
                    scalar(&arg.name).unwrap_or(ScalarValue::U64(0)),
                ));
                needed.push(None);
            }
            ArgKind::Buffer { access, .. } => {
                let bytes = offload::needed_bytes(spec, slot, items, &scalar)?;
                let path = PathBuf::from(&binding_of(arg)?.value);
                let size = match bytes {
                    Some(bytes) if !access.reads_input() => bytes,
                    // An input as large as its file is (a pipe counts when it is read).
                    _ => std::fs::metadata(&path)
                        .ok()
                        .filter(|m| m.is_file())
                        .map_or(bytes.unwrap_or(0), |m| m.len()),
                };
                given.push(Given::bytes(size));
                needed.push(bytes);
            }
        }
    }
    let layout = check(spec, items, &given)?;
    // Stage the outputs and plan the memory before touching any input.
    let mut outputs: OutputFiles = Vec::new();
    let mut needs: Vec<(String, u64)> = Vec::new();
    for (arg, g) in params.iter().zip(&given) {
        let (ArgKind::Buffer { access, .. }, Given::Buffer { bytes, .. }) = (&arg.kind, g) else {
            continue;
        };
        needs.push((format!("buffer `{}` (`{arg}`)", arg.name), *bytes));
        if access.writes_output() {
            let path = PathBuf::from(&binding_of(arg)?.value);
            let staged = StagedOutput::new(&path, &format!("buffer `{}`", arg.name))?;
            if let Some((other, _)) = outputs
                .iter()
                .find(|(_, o)| o.destination() == staged.destination())
            {
                bail!(
                    "buffers `{other}` and `{}` would both be written to {}",
                    arg.name,
                    path.display()
                );
            }
            outputs.push((arg.name.clone(), staged));
        }
    }
    needs.extend(sum_workspace(&layout, devices));
    check_memory(&needs)?;
    let limit = memory_limit().unwrap_or(u64::MAX);
    let mut values = Vec::with_capacity(params.len());
    for (arg, bytes) in params.iter().zip(needed) {
        let value = match arg.kind {
            ArgKind::Scalar(_) => match scalar(&arg.name) {
                Some(value) => ArgValue::Scalar(value),
                None => bail!("argument `{}` has no value", arg.name),
            },
            ArgKind::Buffer { access, elem, .. } => {
                let path = PathBuf::from(&binding_of(arg)?.value);
                if access.reads_input() {
                    let expected = match bytes {
                        Some(bytes) => Expected::Exactly(bytes),
                        None => Expected::Elements {
                            size: elem.size() as u64,
                            limit,
                        },
                    };
                    ArgValue::Buffer(read_input(
                        &path,
                        &arg.name,
                        &arg.to_string(),
                        expected,
                        items,
                    )?)
                } else {
                    let bytes = bytes.unwrap_or(0);
                    let buffer = usize::try_from(bytes)
                        .ok()
                        .and_then(Buffer::try_zeroed_shared)
                        .with_context(|| {
                            format!(
                                "cannot allocate {} for buffer `{}`: out of memory",
                                describe_bytes(bytes),
                                arg.name
                            )
                        })?;
                    ArgValue::Buffer(buffer)
                }
            }
        };
        values.push(value);
    }
    Ok((values, outputs))
}

/// A progress bar that appears only on a terminal and only once a run has lasted a
/// moment, so short runs and pipes stay quiet. It shows items done, the rate and the
/// time left, estimated from the run so far.
fn progress_reporter() -> (
    Arc<Mutex<Option<ProgressBar>>>,
    impl Fn(u64, u64) + Send + Sync,
) {
    let bar: Arc<Mutex<Option<ProgressBar>>> = Arc::new(Mutex::new(None));
    let shared = Arc::clone(&bar);
    let started = Instant::now();
    // The engine reports after every packet: off a terminal nothing is drawn, and on one
    // the bar is updated at most every 50 ms (the lock and the message cost as much as a
    // short packet).
    let drawn = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let last_update_ms = std::sync::atomic::AtomicU64::new(0);
    let report = move |done: u64, items: u64| {
        if !drawn {
            return;
        }
        let elapsed = started.elapsed();
        let now_ms = elapsed.as_millis() as u64;
        let last = last_update_ms.load(std::sync::atomic::Ordering::Relaxed);
        if elapsed < Duration::from_millis(300) || (last > 0 && now_ms < last + 50 && done < items)
        {
            return;
        }
        last_update_ms.store(now_ms, std::sync::atomic::Ordering::Relaxed);
        let mut slot = shared.lock().unwrap_or_else(|p| p.into_inner());
        let bar = slot.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(items), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} items {msg}") {
                bar.set_style(style);
            }
            bar
        });
        bar.set_position(done);
        bar.set_message(progress_message(done, items, elapsed));
    };
    (bar, report)
}

/// `1.23 M items/s, about 4.2 s left`, from the items done so far.
pub(super) fn progress_message(done: u64, items: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    if done == 0 || seconds <= 0.0 {
        return String::new();
    }
    let rate = done as f64 / seconds;
    let left = Duration::from_secs_f64((items.saturating_sub(done)) as f64 / rate);
    format!(
        "{} items/s, about {} left",
        describe_rate(rate),
        describe_duration(left)
    )
}

/// A rate with three significant digits and an SI prefix: `950`, `12.3 k`, `4.56 M`.
fn describe_rate(per_second: f64) -> String {
    let (value, prefix) = if per_second >= 1e9 {
        (per_second / 1e9, " G")
    } else if per_second >= 1e6 {
        (per_second / 1e6, " M")
    } else if per_second >= 1e3 {
        (per_second / 1e3, " k")
    } else {
        (per_second, "")
    };
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$}{prefix}")
}

/// Threads a local run uses: the threads asked for, or every core.
fn local_threads(args: &RunArgs) -> usize {
    args.threads
        .unwrap_or_else(node_jit::available_threads)
        .clamp(1, 4096)
}

/// Whether `path` is a program file rather than a package: by its name, or (for other
/// names) because it does not start with a package's magic bytes.
fn is_program(path: &Path) -> bool {
    if path.extension().is_some_and(|e| e == "toml") {
        return true;
    }
    if path.extension().is_some_and(|e| e == "okp") {
        return false;
    }
    let mut magic = [0u8; 6];
    match std::fs::File::open(path) {
        Ok(mut file) => {
            use std::io::Read;
            file.read_exact(&mut magic).is_ok() && &magic != offload::PACKAGE_MAGIC
        }
        Err(_) => false,
    }
}

/// `--arg NAME=VALUE` for a program: new values for its scalars.
fn scalar_overrides(overrides: &[String]) -> anyhow::Result<Vec<(String, Number)>> {
    let mut values = Vec::new();
    for text in overrides {
        let b = split_binding("arg", text)?;
        let value = if let Ok(v) = b.value.trim().parse::<i128>() {
            Number::Int(v)
        } else if let Ok(v) = b.value.trim().parse::<f64>() {
            Number::Float(v)
        } else {
            bail!("--arg {}: `{}` is not a number", b.name, b.value);
        };
        values.push((b.name, value));
    }
    Ok(values)
}

pub fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<()> {
    // Ctrl-C ends the run (every worker with it) and says that nothing was written.
    offload::end_runs_cleanly_on_interrupt();
    // The workers start while the package and the inputs are read.
    let cpu_here = !args.cluster.cluster
        && !args.check
        && !matches!(args.device, Some(super::opencl::DeviceFlag::Opencl));
    if cpu_here {
        let threads = args.threads.unwrap_or_else(node_jit::available_threads);
        // A one-kernel run never has more workers than items.
        let items = args
            .items
            .map_or(threads, |n| n.clamp(1, threads as u64) as usize);
        with_workers(Options::default(), args)?.warm_up(threads.min(items));
    }
    if is_program(&args.target) {
        run_program(cli, args)
    } else {
        run_kernel(cli, args)
    }
}

/// `options` with this run's isolated workers: kernels from package files run in
/// sandboxed worker processes of this program, unless `--in-process`.
fn with_workers(options: Options, args: &RunArgs) -> anyhow::Result<Options> {
    cluster_node::fault::Faults::parse(&args.worker_fault).map_err(anyhow::Error::msg)?;
    if args.in_process {
        return Ok(options);
    }
    Ok(options
        .isolated(super::offload_program()?)
        .worker_faults(&args.worker_fault))
}

/// `offload run program.toml`.
fn run_program(cli: &Cli, args: &RunArgs) -> anyhow::Result<()> {
    for (flag, given) in [
        ("--kernel", args.kernel.is_some()),
        ("--items", args.items.is_some()),
        ("--in", !args.inputs.is_empty()),
        ("--inout", !args.inouts.is_empty()),
        ("--out", !args.outputs.is_empty()),
        ("--sum", !args.sums.is_empty()),
    ] {
        if given {
            bail!(
                "{flag} is for running one kernel of a package; the program {} names its kernels, buffers and outputs itself",
                args.target.display()
            );
        }
    }
    let mut job = Job::from_program_file_with(&args.target, &scalar_overrides(&args.scalars)?)?;
    // Staged now: a missing or read-only folder is found before anything runs.
    let staged = job.stage_outputs()?;
    let (report, threads) = execute(cli, args, &mut job, None)?;
    let written = job.write_outputs(staged)?;
    print_report(cli, &report, None);
    let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    println!(
        "ran {}: {} ({}) in {} on {}: {}{}",
        args.target.display(),
        plural(report.steps as u64, "step"),
        plural(report.items, "item"),
        plural(report.packets, "packet"),
        threads,
        describe_duration(report.run_time),
        if files.is_empty() {
            String::new()
        } else {
            format!("; wrote {}", files.join(", "))
        }
    );
    Ok(())
}

/// `offload run PKG --kernel K --items N ...`: the one-step program.
fn run_kernel(cli: &Cli, args: &RunArgs) -> anyhow::Result<()> {
    let (Some(kernel), Some(items)) = (&args.kernel, args.items) else {
        bail!(
            "{} is a package: name the kernel and the items (--kernel NAME --items N), or run a program file (.toml)",
            args.target.display()
        );
    };
    let package = Arc::new(read_package(&args.target)?);
    let spec = package
        .manifest()
        .kernel(kernel)
        .with_context(|| {
            format!(
                "package {} has no kernel `{kernel}` (it has: {})",
                args.target.display(),
                package.manifest().kernel_names()
            )
        })?
        .clone();
    // A cluster client keeps the job's buffers and a copy of the packets in flight.
    let devices = if args.cluster.cluster {
        1
    } else {
        local_threads(args) + 1
    };
    let (values, outputs) = bind(args, &spec, items, devices)?;
    let mut job = Job::kernel(Arc::clone(&package), kernel, items, values)?;
    let (report, threads) = execute(cli, args, &mut job, Some((&package, kernel.as_str())))?;
    let staged = outputs
        .into_iter()
        .filter_map(|(name, staged)| job.buffer(&name).map(|bytes| (staged, bytes)))
        .collect();
    commit_outputs(staged)?;
    print_report(cli, &report, Some(kernel));
    println!(
        "ran {kernel} over {} in {} on {threads}: {}",
        plural(report.items, "item"),
        plural(report.packets, "packet"),
        describe_duration(report.run_time)
    );
    Ok(())
}

/// Runs `job` here or on the cluster with the command line's options; `tuned` names
/// the package and kernel of a one-step job, whose `offload tune` profile applies here.
/// Returns the report and where it ran, in words (`2 threads`, `3 nodes`).
fn execute(
    cli: &Cli,
    args: &RunArgs,
    job: &mut Job<'_>,
    tuned: Option<(&offload::Package, &str)>,
) -> anyhow::Result<(Report, String)> {
    let (bar, progress) = progress_reporter();
    // On a cluster the cluster's bar shows progress, with each node's share.
    let mut options = if args.cluster.cluster {
        Options::default()
    } else {
        Options::default().progress(progress)
    };
    if let Some(threads) = args.threads {
        options = options.threads(threads);
    }
    if let Some(device) = args.device {
        options = options.device(device.into());
    }
    if let Some(bytes) = args.stack_size {
        options = options.stack_size(usize::try_from(bytes).unwrap_or(usize::MAX));
    }
    if args.check {
        options = options.check(true);
    }
    if let Some(seconds) = args.packet_timeout {
        options = options.packet_timeout(std::time::Duration::from_secs_f64(seconds));
    }
    options = with_workers(options, args)?;
    let result = if args.cluster.cluster {
        let cluster_bar = Arc::new(super::cluster::ClusterBar::new());
        let cluster = super::cluster::connect(cli, &args.cluster, &cluster_bar)?;
        options = options
            .redundancy(args.cluster.redundancy)
            .local_fallback(!args.cluster.no_local_fallback);
        let ran = cluster.run(job, &options);
        cluster_bar.finish();
        ran
    } else {
        let mut engine = if args.in_process {
            cli.engine()?
        } else {
            cli.isolated_engine(&args.worker_fault)?
        };
        if let Some((package, kernel)) = tuned {
            if let Some(settings) = super::tune::lookup(&engine, package, kernel) {
                if cli.verbose > 0 {
                    eprintln!("tuning profile: {settings}");
                }
                (engine, options) =
                    super::tune::apply(cli, engine, &settings, args.threads, options)?;
            }
        }
        Cluster::from_engine(engine).run(job, &options)
    };
    if let Some(bar) = bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
        bar.finish_and_clear();
    }
    let report = result.map_err(|e| {
        let what = e.to_string();
        anyhow::Error::new(e).context(format!("{what}; no output or --inout file was changed"))
    })?;
    let place = match &report.cluster {
        Some(cluster) => {
            super::cluster::print_cluster_report(cli, cluster, args.cluster.redundancy);
            if cli.verbose > 0 {
                for link in &cluster.links {
                    eprintln!("link {}: {}", link.node, describe_link(link));
                }
            }
            let copies = if args.cluster.redundancy > 1 {
                format!(" ({} copies each, majority vote)", args.cluster.redundancy)
            } else {
                String::new()
            };
            format!(
                "{}{copies}",
                plural(cluster.packets_per_node.len() as u64, "node")
            )
        }
        None if args.check => "1 thread in check mode (every item alone, fenced)".to_string(),
        None => super::describe_workers(&report),
    };
    Ok((report, place))
}

/// A node's link figures for `-v`: bandwidth in Mbit/s, one-way latency, and whether
/// they were measured.
fn describe_link(link: &cluster::client::LinkFigure) -> String {
    let measured = if link.transfers > 0 {
        format!(
            "measured from {} and {}",
            plural(link.transfers, "transfer"),
            plural(link.probes, "ping")
        )
    } else {
        format!(
            "bandwidth not measured: the prior; latency from {}",
            plural(link.probes, "ping")
        )
    };
    format!(
        "{:.1} Mbit/s, latency {:.0} µs ({measured})",
        link.bytes_per_s * 8.0 / 1e6,
        link.latency_us
    )
}

/// What `-v` adds about a run on this machine; `kernel` names a one-step job's kernel.
fn print_report(cli: &Cli, report: &Report, kernel: Option<&str>) {
    if cli.verbose == 0 || report.cluster.is_some() {
        return;
    }
    eprintln!(
        "device: cpu {} ({})",
        offload::HostTarget::detect(),
        super::describe_workers(report)
    );
    for device in &report.opencl_devices {
        eprintln!("device: opencl {device}");
    }
    if let Some(note) = &report.opencl_note {
        eprintln!("opencl not used: {note}");
    }
    eprintln!(
        "packets: {} on the cpu, {} on opencl",
        report.cpu_packets, report.opencl_packets
    );
    if let (Some(origin), Some(key)) = (&report.code_origin, &report.cache_key) {
        let key = &key[..16.min(key.len())];
        match kernel {
            Some(kernel) => eprintln!(
                "kernel {kernel}: {} in {} (key {key})",
                origin.describe(),
                describe_duration(report.compile_time)
            ),
            None => eprintln!(
                "kernels: the first {} (key {key}); {} compiling or loading in all",
                origin.describe(),
                describe_duration(report.compile_time)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_says_whether_its_bandwidth_was_measured() {
        let mut link = cluster::client::LinkFigure {
            node: "n1 (10.77.0.11:7878)".into(),
            addr: "10.77.0.11:7878".parse().expect("address"),
            latency_us: 150.4,
            bytes_per_s: 12.5e6,
            transfers: 3,
            probes: 1,
        };
        assert_eq!(
            describe_link(&link),
            "100.0 Mbit/s, latency 150 µs (measured from 3 transfers and 1 ping)"
        );
        link.transfers = 0;
        assert_eq!(
            describe_link(&link),
            "100.0 Mbit/s, latency 150 µs (bandwidth not measured: the prior; latency from 1 ping)"
        );
    }

    #[test]
    fn rates_have_three_significant_digits() {
        assert_eq!(describe_rate(950.0), "950");
        assert_eq!(describe_rate(12_345.0), "12.3 k");
        assert_eq!(describe_rate(4_567_890.0), "4.57 M");
        assert_eq!(describe_rate(1.5), "1.50");
    }

    #[test]
    fn the_time_left_comes_from_the_rate_so_far() {
        // 30 % done in 3 s: 7 s left, not 0.
        let text = progress_message(30, 100, Duration::from_secs(3));
        assert_eq!(text, "10.0 items/s, about 7.00 s left");
    }
}
