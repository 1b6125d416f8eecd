//! `offload package`, `offload inspect`, `offload compile`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use offload::{Manifest, Package};

use super::Cli;

#[derive(Args)]
pub struct PackageArgs {
    /// Kernel source: a #![no_std] .rs file, a .c file, LLVM IR (.ll) or bitcode (.bc).
    source: PathBuf,
    /// Manifest TOML [default: SOURCE with .toml, else manifest.toml beside SOURCE].
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Where to write the package.
    #[arg(short, long, value_name = "PKG")]
    output: PathBuf,
}

#[derive(Args)]
pub struct InspectArgs {
    /// The package.
    package: PathBuf,
}

#[derive(Args)]
pub struct CompileArgs {
    /// The package.
    package: PathBuf,
    /// Target triple, e.g. aarch64-unknown-linux-gnu, or `native`.
    #[arg(long, default_value = "native")]
    target: String,
    /// Where to write the object file.
    #[arg(short, long, value_name = "FILE.o")]
    output: PathBuf,
}

/// Finds the manifest for `source` when none was given.
fn default_manifest(source: &Path) -> anyhow::Result<PathBuf> {
    let beside = source.with_extension("toml");
    if beside.is_file() {
        return Ok(beside);
    }
    let in_dir = source
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("manifest.toml");
    if in_dir.is_file() {
        return Ok(in_dir);
    }
    anyhow::bail!(
        "no manifest for {}: pass --manifest FILE, or put {} or {} beside it",
        source.display(),
        beside.display(),
        in_dir.display()
    )
}

/// Reads and parses a manifest file.
pub fn read_manifest(path: &Path) -> anyhow::Result<Manifest> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    Manifest::parse(&text).with_context(|| format!("manifest {}", path.display()))
}

pub fn package(cli: &Cli, args: &PackageArgs) -> anyhow::Result<()> {
    let manifest_path = match &args.manifest {
        Some(path) => path.clone(),
        None => default_manifest(&args.source)?,
    };
    let manifest = read_manifest(&manifest_path)?;
    let started = std::time::Instant::now();
    let package = offload::package_source(&args.source, &manifest)?;
    package
        .write(&args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "{} -> {} ({} kernel{}, {} bytes, hash {})",
        args.source.display(),
        args.output.display(),
        package.manifest().kernels.len(),
        if package.manifest().kernels.len() == 1 {
            ""
        } else {
            "s"
        },
        package.as_bytes().len(),
        &package.hash().to_hex()[..16],
    );
    if cli.verbose > 0 {
        eprintln!("packaged in {:.1?}", started.elapsed());
    }
    Ok(())
}

/// Reads a package, naming the file in any error.
pub fn read_package(path: &Path) -> anyhow::Result<Package> {
    Package::read(path).with_context(|| format!("cannot load package {}", path.display()))
}

pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let package = read_package(&args.package)?;
    let p = package.provenance();
    println!("package  {}", args.package.display());
    println!("hash     {}", package.hash());
    println!("format   version {}", offload::ir_packager_format_version());
    println!("source   {} ({})", p.source_name, p.source_kind);
    println!("producer {}", p.front_end);
    println!(
        "llvm     {} (bitcode writer; nodes need this or newer)",
        p.llvm_version
    );
    println!("origin   {}", p.origin_triple);
    println!("bitcode  {} bytes", package.bitcode().len());
    println!("kernels:");
    for kernel in &package.manifest().kernels {
        println!("  {}", kernel.signature());
    }
    Ok(())
}

pub fn compile(cli: &Cli, args: &CompileArgs) -> anyhow::Result<()> {
    let package = read_package(&args.package)?;
    let engine = cli.engine()?;
    let object = engine
        .compile_object_for(&package, &args.target)
        .with_context(|| {
            format!(
                "cannot compile {} for {}",
                args.package.display(),
                args.target
            )
        })?;
    std::fs::write(&args.output, &object)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "{} -> {} ({}, {} bytes)",
        args.package.display(),
        args.output.display(),
        args.target,
        object.len()
    );
    if cli.verbose > 0 {
        for kernel in &package.manifest().kernels {
            eprintln!("  {}", offload::c_prototype(kernel));
        }
    }
    Ok(())
}
