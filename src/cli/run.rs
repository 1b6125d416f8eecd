//! `offload run`: one kernel over items 0..N on this machine.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use offload::{
    check_memory, describe_bytes, memory_limit, required_bytes, run_local, sum_workspace, Arg,
    ArgKind, ArgValue, Buffer, KernelSpec, LocalOptions, ScalarValue, Shape,
};

use super::files::{commit_outputs, read_input, Expected, StagedOutput};
use super::package::read_package;
use super::{describe_duration, plural, Cli};

#[derive(Args)]
pub struct RunArgs {
    /// The package.
    package: PathBuf,
    /// The kernel to run.
    #[arg(long)]
    kernel: String,
    /// Number of items: the job is items 0..N.
    #[arg(long)]
    items: u64,
    /// A scalar argument, NAME=VALUE.
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
    /// A `sum` buffer: the element-wise total over all packets, written to FILE.
    #[arg(long = "sum", value_name = "NAME=FILE")]
    sums: Vec<String>,
    /// Worker threads on this machine, 1 to 4096 [default: all cores].
    #[arg(long, value_parser = super::parse_count)]
    threads: Option<usize>,
    /// Which devices run packets: the CPU, the OpenCL devices, or both (auto). [default:
    /// cpu on this machine; with --cluster, every device the nodes serve]
    #[arg(long, value_enum)]
    device: Option<super::opencl::DeviceFlag>,
    #[command(flatten)]
    cluster: super::cluster::ClusterRunArgs,
}

/// Per output argument: its position and the staged file its result goes to.
type OutputFiles = Vec<(usize, StagedOutput)>;

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

/// The bytes argument `arg` needs for `items` items (split and sum buffers), or an
/// error when that overflows a 64-bit count.
fn needed_bytes(arg: &Arg, items: u64) -> anyhow::Result<Option<u64>> {
    let whole = matches!(
        arg.kind,
        ArgKind::Buffer {
            shape: Shape::Whole,
            ..
        }
    );
    if whole {
        return Ok(None);
    }
    match required_bytes(arg, items) {
        Some(bytes) => Ok(Some(bytes)),
        None => bail!(
            "buffer `{}` (`{arg}`) for {items} items would need more bytes than a 64-bit count holds",
            arg.name
        ),
    }
}

/// Matches the command line's bindings to the kernel's arguments. Before reading or
/// allocating anything it stages every output file (so a missing or read-only folder is
/// found before the job runs) and checks that the buffers, with the per-device copies of
/// `sum` buffers for `devices` devices, fit in this machine's memory. Then it reads the
/// inputs (no further than they must be long) and allocates the outputs.
fn bind(
    args: &RunArgs,
    spec: &KernelSpec,
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
    let binding_of = |arg: &Arg| -> anyhow::Result<&Binding> {
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
    // Scalars first: checking them touches nothing.
    let mut scalars = Vec::with_capacity(spec.args.len());
    for arg in &spec.args {
        scalars.push(match arg.kind {
            ArgKind::Scalar(ty) => Some(
                ScalarValue::parse(&binding_of(arg)?.value, ty)
                    .map_err(|e| anyhow::anyhow!("argument `{}`: {e}", arg.name))?,
            ),
            ArgKind::Buffer { .. } => None,
        });
    }
    // Stage the outputs and plan the memory before touching any input.
    let mut outputs: OutputFiles = Vec::new();
    let mut needs: Vec<(String, u64)> = Vec::new();
    for (slot, arg) in spec.args.iter().enumerate() {
        let ArgKind::Buffer { access, .. } = arg.kind else {
            continue;
        };
        let path = PathBuf::from(&binding_of(arg)?.value);
        let bytes = match needed_bytes(arg, args.items)? {
            Some(bytes) => bytes,
            // A whole input: as large as its file is (a pipe counts when it is read).
            None => std::fs::metadata(&path)
                .ok()
                .filter(|m| m.is_file())
                .map_or(0, |m| m.len()),
        };
        needs.push((format!("buffer `{}` (`{arg}`)", arg.name), bytes));
        if access.writes_output() {
            let staged = StagedOutput::new(&path, &format!("buffer `{}`", arg.name))?;
            if let Some((other, _)) = outputs
                .iter()
                .find(|(_, o)| o.destination() == staged.destination())
            {
                bail!(
                    "buffers `{}` and `{}` would both be written to {}",
                    spec.args[*other].name,
                    arg.name,
                    path.display()
                );
            }
            outputs.push((slot, staged));
        }
    }
    needs.extend(sum_workspace(spec, devices));
    check_memory(&needs)?;
    let limit = memory_limit().unwrap_or(u64::MAX);
    let mut values = Vec::with_capacity(spec.args.len());
    for (arg, scalar) in spec.args.iter().zip(scalars) {
        let binding = binding_of(arg)?;
        let value = match (arg.kind, scalar) {
            (_, Some(value)) => ArgValue::Scalar(value),
            (ArgKind::Scalar(_), None) => bail!("argument `{}` has no value", arg.name),
            (ArgKind::Buffer { access, elem, .. }, None) => {
                let path = PathBuf::from(&binding.value);
                let needed = needed_bytes(arg, args.items)?;
                if access.reads_input() {
                    let expected = match needed {
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
                        args.items,
                    )?)
                } else {
                    let bytes = needed.unwrap_or(0);
                    let buffer = usize::try_from(bytes)
                        .ok()
                        .and_then(Buffer::try_zeroed)
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
fn progress_reporter(
    items: u64,
) -> (
    Arc<Mutex<Option<ProgressBar>>>,
    impl Fn(u64, u64) + Send + Sync,
) {
    let bar: Arc<Mutex<Option<ProgressBar>>> = Arc::new(Mutex::new(None));
    let shared = Arc::clone(&bar);
    let started = Instant::now();
    let report = move |done: u64, _total: u64| {
        let elapsed = started.elapsed();
        if elapsed < Duration::from_millis(300) {
            return;
        }
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

/// Writes each output buffer to its staged file and renames them all into place.
fn write_outputs(values: &[ArgValue], outputs: OutputFiles) -> anyhow::Result<()> {
    let staged = outputs
        .into_iter()
        .filter_map(|(slot, staged)| match &values[slot] {
            ArgValue::Buffer(buffer) => Some((staged, buffer.as_bytes())),
            ArgValue::Scalar(_) => None,
        })
        .collect();
    commit_outputs(staged)
}

/// Devices a local run uses for `items` items: the threads asked for (or every core)
/// and, with `--device opencl|auto`, room for OpenCL devices.
fn local_threads(args: &RunArgs) -> usize {
    args.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, args.items.clamp(1, 4096) as usize)
}

pub fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<()> {
    let package = read_package(&args.package)?;
    let spec = package
        .manifest()
        .kernel(&args.kernel)
        .with_context(|| {
            format!(
                "package {} has no kernel `{}` (it has: {})",
                args.package.display(),
                args.kernel,
                package.manifest().kernel_names()
            )
        })?
        .clone();
    if args.cluster.cluster {
        if let Some(threads) = args.threads {
            bail!(
                "--threads {threads} sets this machine's worker threads, which a --cluster run does not use: a node's workers are set where it runs (offload node --cores N)"
            );
        }
        // The client keeps the job's buffers and a copy of the packets in flight.
        let (mut values, outputs) = bind(args, &spec, 1)?;
        super::cluster::run_on_cluster(
            cli,
            &args.cluster,
            args.device.map(Into::into),
            &package,
            &spec,
            args.items,
            &mut values,
        )?;
        return write_outputs(&values, outputs);
    }
    let threads = local_threads(args);
    let (mut values, outputs) = bind(args, &spec, threads + 1)?;
    let engine = cli.engine()?;
    let (bar, report) = progress_reporter(args.items);
    let mut options = LocalOptions::default().progress(report);
    if let Some(threads) = args.threads {
        options = options.threads(threads);
    }
    let device = args.device.unwrap_or(super::opencl::DeviceFlag::Cpu);
    options = options.device(device.into());
    let (engine, options) = match super::tune::lookup(&engine, &package, &args.kernel) {
        Some(settings) => {
            if cli.verbose > 0 {
                eprintln!("tuning profile: {settings}");
            }
            super::tune::apply(cli, engine, &settings, args.threads, options)?
        }
        None => (engine, options),
    };
    let result = run_local(
        &engine,
        &package,
        &args.kernel,
        args.items,
        &mut values,
        &options,
    );
    if let Some(bar) = bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
        bar.finish_and_clear();
    }
    let report = result.map_err(|e| {
        anyhow::Error::new(e).context("the run failed; no output or --inout file was changed")
    })?;
    write_outputs(&values, outputs)?;
    if cli.verbose > 0 {
        eprintln!(
            "device: cpu {} ({})",
            engine.host(),
            plural(report.threads as u64, "thread")
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
        eprintln!(
            "kernel {}: {} in {} (key {})",
            args.kernel,
            report.code_origin.describe(),
            describe_duration(report.compile_time),
            &report.cache_key[..16]
        );
    }
    println!(
        "ran {} over {} in {} on {}: {}",
        args.kernel,
        plural(report.items, "item"),
        plural(report.packets, "packet"),
        plural(report.threads as u64, "thread"),
        describe_duration(report.run_time)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
