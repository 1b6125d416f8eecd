//! The example kernels as the benchmarks see them: where their files are, how they are
//! packaged (in-process, with `ir_packager::package_source`, exactly what
//! `offload package` does) and a description of the machine the figures come from.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use ir_packager::{Manifest, Package};
use node_jit::HostTarget;

/// The examples in `examples/`, in the order the tables list them.
pub const KERNELS: [&str; 6] = [
    "saxpy",
    "mandelbrot",
    "nbody",
    "dot",
    "logcrunch",
    "raytrace",
];

/// `examples/NAME` of this repository.
pub fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// Parses `examples/NAME/manifest.toml`.
pub fn manifest(name: &str) -> Result<Manifest> {
    let path = example_dir(name).join("manifest.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Manifest::parse(&text).with_context(|| format!("invalid manifest {}", path.display()))
}

/// Packages `examples/NAME/kernel.rs` with its manifest.
pub fn package(name: &str) -> Result<Package> {
    let source = example_dir(name).join("kernel.rs");
    let manifest = manifest(name)?;
    ir_packager::package_source(&source, &manifest)
        .with_context(|| format!("cannot package {}", source.display()))
}

/// One paragraph naming the machine: the CPU's marketing name and core count (from
/// `/proc/cpuinfo`), LLVM's name for it and the vector features the JIT compiles for.
pub fn describe_machine(host: &HostTarget) -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc = Command::new(ir_packager::rustc_path())
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "rustc (version unknown)".into());
    format!("{model}, {cores} logical CPUs; node-jit target: {host}; AOT compiler: {rustc}")
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
