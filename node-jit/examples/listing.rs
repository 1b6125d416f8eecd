//! Prints the code node-jit generates for one kernel: the IR the optimizer receives
//! (`--prepared`), the optimized IR (`--ir`, the default) or the assembly (`--asm`), for
//! this machine's CPU or any CPU LLVM knows (to see what another node would run).
//!
//! ```sh
//! cargo run -p node-jit --example listing -- examples/logcrunch/kernel.rs logcrunch --cpu znver3 --asm
//! ```
//!
//! The manifest is `SOURCE` with `.toml`, else `manifest.toml` beside the source (as for
//! `offload package`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ir_packager::Manifest;
use node_jit::{HostTarget, ListingKind, OptLevel, Tuning};

const USAGE: &str =
    "usage: listing SOURCE KERNEL [--cpu CPU] [--features LLVM-FEATURES] [--prepared | --ir | --asm] [--opt-level 0..3]";

fn manifest_path(source: &Path) -> PathBuf {
    let beside = source.with_extension("toml");
    if beside.is_file() {
        beside
    } else {
        source.with_file_name("manifest.toml")
    }
}

fn run(args: &[String]) -> Result<String, String> {
    let [source, kernel, options @ ..] = args else {
        return Err(USAGE.into());
    };
    let (mut cpu, mut kind, mut opt) = (None, ListingKind::OptimizedIr, OptLevel::O3);
    let mut features = None;
    let mut options = options.iter();
    while let Some(option) = options.next() {
        match option.as_str() {
            "--cpu" => cpu = Some(options.next().ok_or(USAGE)?.clone()),
            "--features" => features = Some(options.next().ok_or(USAGE)?.clone()),
            "--prepared" => kind = ListingKind::PreparedIr,
            "--ir" => kind = ListingKind::OptimizedIr,
            "--asm" => kind = ListingKind::Assembly,
            "--opt-level" => {
                let level = options.next().ok_or(USAGE)?;
                opt = OptLevel::parse(level).ok_or(format!("bad optimization level `{level}`"))?;
            }
            other => return Err(format!("unknown option `{other}`\n{USAGE}")),
        }
    }
    let source = Path::new(source);
    let manifest_file = manifest_path(source);
    let text = std::fs::read_to_string(&manifest_file)
        .map_err(|e| format!("cannot read {}: {e}", manifest_file.display()))?;
    let manifest = Manifest::parse(&text).map_err(|e| e.to_string())?;
    let package = ir_packager::package_source(source, &manifest).map_err(|e| e.to_string())?;
    let host = HostTarget::detect();
    let mut target = match cpu {
        Some(cpu) => HostTarget::named_cpu(&host.triple, &cpu).map_err(|e| e.to_string())?,
        None => host,
    };
    if let Some(features) = features {
        target.features = features;
    }
    node_jit::listing(&package, kernel, &target, opt, &Tuning::default(), kind)
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("listing: {message}");
            ExitCode::FAILURE
        }
    }
}
