//! `offload run`: one kernel over items 0..N on this machine.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use offload::{
    required_bytes, run_local, ArgKind, ArgValue, Buffer, KernelSpec, LocalOptions, ScalarValue,
};

use super::package::read_package;
use super::Cli;

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
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Which devices run packets: the CPU, the OpenCL devices, or both (auto).
    #[arg(long, value_enum, default_value = "cpu")]
    device: super::opencl::DeviceFlag,
    #[command(flatten)]
    cluster: super::cluster::ClusterRunArgs,
}

/// Per output argument: its position and the file its result goes to.
type OutputFiles = Vec<(usize, PathBuf)>;

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

/// Matches the command line's bindings to the kernel's arguments, reads input files
/// and allocates outputs. Returns the values and, per output, the file to write.
fn bind(args: &RunArgs, spec: &KernelSpec) -> anyhow::Result<(Vec<ArgValue>, OutputFiles)> {
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
    let mut values = Vec::with_capacity(spec.args.len());
    let mut outputs = Vec::new();
    for (slot, arg) in spec.args.iter().enumerate() {
        let binding = bindings.iter().find(|b| b.name == arg.name);
        let value = match (arg.kind, binding) {
            (ArgKind::Scalar(ty), Some(b)) => ArgValue::Scalar(
                ScalarValue::parse(&b.value, ty)
                    .map_err(|e| anyhow::anyhow!("argument `{}`: {e}", arg.name))?,
            ),
            (ArgKind::Buffer { access, .. }, Some(b)) => {
                let path = PathBuf::from(&b.value);
                if access.writes_output() {
                    outputs.push((slot, path.clone()));
                }
                if access.reads_input() {
                    let bytes = std::fs::read(&path).with_context(|| {
                        format!("cannot read buffer `{}` from {}", arg.name, path.display())
                    })?;
                    ArgValue::Buffer(Buffer::from_bytes(&bytes))
                } else {
                    let len = required_bytes(arg, args.items).with_context(|| {
                        format!("buffer `{}` would not fit in memory", arg.name)
                    })?;
                    let len = usize::try_from(len).with_context(|| {
                        format!("buffer `{}` would not fit in memory", arg.name)
                    })?;
                    ArgValue::Buffer(Buffer::zeroed(len))
                }
            }
            (kind, None) => {
                let how = match kind {
                    ArgKind::Scalar(_) => format!("--arg {}=VALUE", arg.name),
                    ArgKind::Buffer { access, .. } => {
                        format!("--{} {}=FILE", access.name(), arg.name)
                    }
                };
                bail!(
                    "missing argument `{arg}` of kernel `{}`: pass {how}",
                    spec.name
                );
            }
        };
        values.push(value);
    }
    Ok((values, outputs))
}

/// A progress bar that appears only on a terminal and only once a run has lasted a
/// moment, so short runs and pipes stay quiet.
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
        if started.elapsed() < Duration::from_millis(300) {
            return;
        }
        let mut slot = shared.lock().unwrap_or_else(|p| p.into_inner());
        let bar = slot.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(items), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("{bar:40} {pos}/{len} items {per_sec} eta {eta}")
            {
                bar.set_style(style);
            }
            bar
        });
        bar.set_position(done);
    };
    (bar, report)
}

/// Writes each output buffer to its file, as every kind of run does.
fn write_outputs(values: &[ArgValue], outputs: &[(usize, PathBuf)]) -> anyhow::Result<()> {
    for (slot, path) in outputs {
        if let ArgValue::Buffer(buffer) = &values[*slot] {
            std::fs::write(path, buffer.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
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
    let (mut values, outputs) = bind(args, &spec)?;
    if args.cluster.cluster {
        super::cluster::run_on_cluster(
            cli,
            &args.cluster,
            &package,
            &spec,
            args.items,
            &mut values,
        )?;
        return write_outputs(&values, &outputs);
    }
    let engine = cli.engine()?;
    let (bar, report) = progress_reporter(args.items);
    let mut options = LocalOptions::default().progress(report);
    if let Some(threads) = args.threads {
        options = options.threads(threads);
    }
    options = options.device(args.device.into());
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
    let report = result?;
    write_outputs(&values, &outputs)?;
    if cli.verbose > 0 {
        eprintln!("device: cpu {} ({} threads)", engine.host(), report.threads);
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
            "kernel {}: code from {} in {:.3} ms (key {})",
            args.kernel,
            report.code_origin.describe(),
            report.compile_time.as_secs_f64() * 1e3,
            &report.cache_key[..16]
        );
    }
    println!(
        "ran {} over {} items in {} packets on {} threads: {:.3} ms",
        args.kernel,
        report.items,
        report.packets,
        report.threads,
        report.run_time.as_secs_f64() * 1e3
    );
    Ok(())
}
