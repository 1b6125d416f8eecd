//! The kernels as the benchmarks see them: the examples of `examples/` and the kernels of
//! other shapes in `benches/kernels/`, where their files are, how they are packaged
//! (in-process, with `ir_packager::package_source`, exactly what `offload package` does),
//! the CPU node-jit compiles for (`OFFLOAD_BENCH_CPU` overrides it) and a description of
//! the machine the figures come from.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use ir_packager::{Manifest, Package};
use node_jit::{CpuIdentity, HostTarget};

/// The examples in `examples/`, in the order the tables list them.
pub const KERNELS: [&str; 6] = [
    "saxpy",
    "mandelbrot",
    "nbody",
    "dot",
    "logcrunch",
    "raytrace",
];

/// The kernels in `benches/kernels/`, in the order the tables list them.
pub const OTHER_KERNELS: [&str; 6] = ["csvsum", "hash", "matmul6", "gather", "prefixscan", "lexer"];

/// The directory of kernel `name`: `examples/NAME`, or `benches/kernels/NAME` for the
/// kernels of [`OTHER_KERNELS`].
pub fn example_dir(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if OTHER_KERNELS.contains(&name) {
        root.join("benches").join("kernels").join(name)
    } else {
        root.join("examples").join(name)
    }
}

/// The LLVM CPU node-jit compiles for: `$OFFLOAD_BENCH_CPU` if set (e.g. `znver3`,
/// `cascadelake`: code generated for that CPU, run on this one, which must have its ISA
/// extensions; `CPU:FEATURES` adds LLVM feature changes such as `znver5:-avx512f`), else
/// `None`, this machine's own CPU.
pub fn emulated_cpu() -> Option<String> {
    std::env::var("OFFLOAD_BENCH_CPU")
        .ok()
        .filter(|cpu| !cpu.is_empty())
}

/// The engine configuration of the benches: `config`, retargeted to [`emulated_cpu`].
pub fn bench_config(config: node_jit::Config) -> Result<node_jit::Config> {
    Ok(match emulated_cpu() {
        Some(setting) => {
            // `CPU` or `CPU:FEATURES` (LLVM's `+avx512f,-fma` form) for experiments.
            let (cpu, features) = setting.split_once(':').unwrap_or((&setting, ""));
            let mut target = HostTarget::named_cpu(&HostTarget::detect().triple, cpu)
                .with_context(|| format!("OFFLOAD_BENCH_CPU={setting}"))?;
            target.features = features.to_string();
            config.target(target)
        }
        None => config,
    })
}

/// The code-generation settings of the benches' JIT builds: the defaults, except the
/// pipeline `$OFFLOAD_BENCH_PIPELINE` names (`post-link`, the default, or `per-module`,
/// node-jit's pipeline before issue 17), so that runs of both can be compared.
pub fn bench_tuning() -> Result<node_jit::Tuning> {
    let pipeline = match std::env::var("OFFLOAD_BENCH_PIPELINE").as_deref() {
        Err(_) | Ok("") => None,
        Ok("post-link") => Some(node_jit::Pipeline::PostLink),
        Ok("per-module") => Some(node_jit::Pipeline::PerModule),
        Ok(other) => anyhow::bail!("OFFLOAD_BENCH_PIPELINE={other}: use post-link or per-module"),
    };
    Ok(node_jit::Tuning {
        pipeline,
        ..node_jit::Tuning::default()
    })
}

/// Parses `NAME/manifest.toml` of [`example_dir`].
pub fn manifest(name: &str) -> Result<Manifest> {
    let path = example_dir(name).join("manifest.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Manifest::parse(&text).with_context(|| format!("invalid manifest {}", path.display()))
}

/// Packages `NAME/kernel.rs` of [`example_dir`] with its manifest.
pub fn package(name: &str) -> Result<Package> {
    let source = example_dir(name).join("kernel.rs");
    let manifest = manifest(name)?;
    ir_packager::package_source(&source, &manifest)
        .with_context(|| format!("cannot package {}", source.display()))
}

/// `offload package SOURCE --manifest MANIFEST -o PKG` with the `offload` at `offload`.
pub fn offload_package(offload: &str, source: &Path, manifest: &Path, pkg: &Path) -> Result<()> {
    let out = Command::new(offload)
        .arg("package")
        .arg(source)
        .arg("--manifest")
        .arg(manifest)
        .arg("-o")
        .arg(pkg)
        .output()
        .context("cannot start offload")?;
    anyhow::ensure!(
        out.status.success(),
        "offload package {}: {}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A program of `examples/` or `benches/programs/` as the benches run it: `DIR/kernel.c`
/// packaged into `work/NAME.okp` and `DIR/program.toml` copied beside it; returns the
/// copy's path.
pub fn prepare_program(offload: &str, dir: &Path, name: &str, work: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(work)?;
    offload_package(
        offload,
        &dir.join("kernel.c"),
        &dir.join("manifest.toml"),
        &work.join(format!("{name}.okp")),
    )?;
    let program = work.join("program.toml");
    std::fs::copy(dir.join("program.toml"), &program)?;
    Ok(program)
}

/// One paragraph naming the machine: the CPU as `/proc/cpuinfo` names it (model name,
/// vendor, family, model, stepping) and its core count, LLVM's name for the CPU the JIT
/// compiles for and its vector features (saying so when that is an emulated CPU), the
/// load average and the AOT compiler.
pub fn describe_machine(host: &HostTarget) -> String {
    let model =
        CpuIdentity::of_this_machine().map_or_else(|| "unknown CPU".into(), |id| id.to_string());
    let emulated = match emulated_cpu() {
        Some(cpu) => format!(" (code generated for `{cpu}` by OFFLOAD_BENCH_CPU, run on this CPU)"),
        None => String::new(),
    };
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc = Command::new(ir_packager::rustc_path())
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "rustc (version unknown)".into());
    let pipeline = match bench_tuning().ok().and_then(|t| t.pipeline) {
        Some(node_jit::Pipeline::PerModule) => " (OFFLOAD_BENCH_PIPELINE=per-module)",
        _ => "",
    };
    format!(
        "{model}, {cores} logical CPUs, load average {load}; node-jit target: {host}{emulated}\
         {pipeline}; AOT compiler: {rustc}"
    )
}

/// Median of `values`, `None` when there are none.
pub fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 0 => Some((values[mid - 1] + values[mid]) / 2.0),
        _ => Some(values[mid]),
    }
}

/// Whether criterion runs in test mode (`cargo test --benches` passes `--test`): each
/// benchmark runs once to check that it works, so the benches skip their extra timing
/// (the checks of results still run).
pub fn criterion_test_mode() -> bool {
    std::env::args().any(|arg| arg == "--test")
}
