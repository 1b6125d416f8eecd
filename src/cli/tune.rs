//! `offload tune`: per-node auto-tuning of kernels, stored as profiles in the cache
//! directory (see `offload::tune`), and `offload tune --show` to print them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use offload::tune::{tune_kernel, Profile, Settings, TuneOptions};
use offload::{Engine, Manifest, Options, Package, ScalarValue};

use super::package::read_package;
use super::Cli;

#[derive(Args)]
pub struct TuneArgs {
    /// The package to tune [default: the built-in reference set: the saxpy, mandelbrot,
    /// nbody and dot examples].
    package: Option<PathBuf>,
    /// A kernel of the package to tune (repeatable) [default: all of its kernels].
    #[arg(long = "kernel", value_name = "NAME")]
    kernels: Vec<String>,
    /// Print the stored profiles instead of tuning.
    #[arg(long)]
    show: bool,
    /// Items per measured run [default: 1Mi for a package; per kernel for the reference set].
    #[arg(long)]
    items: Option<u64>,
    /// Timed runs per configuration; the median counts.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Only worker count and packet size, one timed run each (for smoke tests).
    #[arg(long)]
    quick: bool,
    /// Stop trying configurations of a kernel after SECS seconds.
    #[arg(long, value_name = "SECS")]
    budget: Option<f64>,
    /// A scalar argument for the timing runs, NAME=VALUE [default: 1.0 for floats, the
    /// item count for integers].
    #[arg(long = "arg", value_name = "NAME=VALUE")]
    scalars: Vec<String>,
    /// The longest one packet of a timing run may take, in seconds: a hung kernel then
    /// ends the tuning naming it and its items, as `offload run --packet-timeout` does
    /// [default: no limit].
    #[arg(long, value_name = "SECONDS", value_parser = super::parse_seconds)]
    packet_timeout: Option<f64>,
}

/// Scalar arguments by name.
type Scalars = Vec<(String, ScalarValue)>;

/// A kernel of the built-in reference set: the example's source, built into the binary,
/// with inputs that make one timed run last milliseconds.
struct Reference {
    name: &'static str,
    source: &'static str,
    manifest: &'static str,
    items: u64,
    scalars: fn(u64) -> Vec<(&'static str, ScalarValue)>,
}

const REFERENCE: &[Reference] = &[
    Reference {
        name: "saxpy",
        source: include_str!("../../examples/saxpy/kernel.rs"),
        manifest: include_str!("../../examples/saxpy/manifest.toml"),
        items: 1 << 20,
        scalars: |_| vec![("a", ScalarValue::F32(2.0))],
    },
    Reference {
        name: "mandelbrot",
        source: include_str!("../../examples/mandelbrot/kernel.rs"),
        manifest: include_str!("../../examples/mandelbrot/manifest.toml"),
        items: 1 << 16,
        scalars: |items| {
            // A square image of `items` pixels over the whole set.
            let width = ((items as f64).sqrt() as u32).max(1);
            vec![
                ("width", ScalarValue::U32(width)),
                ("max_iter", ScalarValue::U32(256)),
                ("x0", ScalarValue::F64(-2.0)),
                ("y0", ScalarValue::F64(-1.5)),
                ("step", ScalarValue::F64(3.0 / f64::from(width))),
            ]
        },
    },
    Reference {
        name: "nbody",
        source: include_str!("../../examples/nbody/kernel.rs"),
        manifest: include_str!("../../examples/nbody/manifest.toml"),
        items: 2048,
        scalars: |items| {
            vec![
                ("n", ScalarValue::U32(items.min(u32::MAX.into()) as u32)),
                ("dt", ScalarValue::F32(0.01)),
                ("softening", ScalarValue::F32(0.01)),
            ]
        },
    },
    Reference {
        name: "dot",
        source: include_str!("../../examples/dot/kernel.rs"),
        manifest: include_str!("../../examples/dot/manifest.toml"),
        items: 1 << 20,
        scalars: |_| Vec::new(),
    },
];

/// Packages a reference kernel from its embedded source (written to a temporary
/// `kernel.rs`, so the binary needs no checkout of the repository).
fn reference_package(reference: &Reference) -> anyhow::Result<Package> {
    let scratch = tempfile::Builder::new()
        .prefix("offload-tune-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let source = scratch.path().join("kernel.rs");
    std::fs::write(&source, reference.source).context("cannot write a reference kernel")?;
    let manifest = Manifest::parse(reference.manifest)
        .with_context(|| format!("manifest of the reference kernel `{}`", reference.name))?;
    Ok(offload::package_source(&source, &manifest)?)
}

pub fn tune(cli: &Cli, args: &TuneArgs) -> anyhow::Result<()> {
    let engine = cli.isolated_engine(&[])?;
    let cache_root = engine
        .config()
        .cache_root()
        .context("tuning profiles are kept in the cache directory, and there is none: set OFFLOAD_CACHE_DIR or HOME, or pass --cache-dir")?
        .to_path_buf();
    if args.show {
        return show(&engine, &cache_root);
    }
    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let mut user_scalars = Vec::new();
    for text in &args.scalars {
        let (name, value) = text
            .split_once('=')
            .with_context(|| format!("--arg `{text}` must be NAME=VALUE"))?;
        user_scalars.push((name.trim().to_string(), value.to_string()));
    }
    // (package, kernel, items, scalars) to tune.
    let mut jobs: Vec<(Package, String, u64, Scalars)> = Vec::new();
    match &args.package {
        Some(path) => {
            let package = read_package(path)?;
            let kernels: Vec<String> = if args.kernels.is_empty() {
                package
                    .manifest()
                    .kernels
                    .iter()
                    .map(|k| k.name.clone())
                    .collect()
            } else {
                args.kernels.clone()
            };
            for kernel in kernels {
                let Some(spec) = package.manifest().kernel(&kernel) else {
                    bail!(
                        "package {} has no kernel `{kernel}` (it has: {})",
                        path.display(),
                        package.manifest().kernel_names()
                    );
                };
                let mut scalars = Vec::new();
                for (name, value) in &user_scalars {
                    let Some(arg) = spec.arg(name) else {
                        bail!(
                            "kernel `{kernel}` has no argument `{name}` (its signature: {})",
                            spec.signature()
                        );
                    };
                    let offload::ArgKind::Scalar(ty) = arg.kind else {
                        bail!("argument `{arg}` is a buffer: tuning synthesizes buffers, --arg sets scalars only");
                    };
                    let value = ScalarValue::parse(value, ty)
                        .map_err(|e| anyhow::anyhow!("argument `{name}`: {e}"))?;
                    scalars.push((name.clone(), value));
                }
                jobs.push((
                    package.clone(),
                    kernel,
                    args.items.unwrap_or(1 << 20),
                    scalars,
                ));
            }
        }
        None => {
            anyhow::ensure!(
                user_scalars.is_empty(),
                "--arg needs a package: the reference set chooses its own inputs"
            );
            for reference in REFERENCE {
                if !args.kernels.is_empty() && !args.kernels.iter().any(|k| k == reference.name) {
                    continue;
                }
                let items = args.items.unwrap_or(reference.items);
                let scalars = (reference.scalars)(items)
                    .into_iter()
                    .map(|(n, v)| (n.to_string(), v))
                    .collect();
                let package = reference_package(reference)?;
                // The package hash depends on the path rustc saw, so a package made by
                // `offload package` elsewhere is another package: keep this one where
                // `offload run` can use it with its profile.
                let dir = cache_root.join(offload::tune::PROFILE_DIR).join("packages");
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let path = dir.join(format!("{}.okp", reference.name));
                package.write(&path)?;
                println!("reference package {}: {}", reference.name, path.display());
                jobs.push((package, reference.name.to_string(), items, scalars));
            }
            if let Some(unknown) = args
                .kernels
                .iter()
                .find(|k| !REFERENCE.iter().any(|r| r.name == k.as_str()))
            {
                let names: Vec<&str> = REFERENCE.iter().map(|r| r.name).collect();
                bail!(
                    "`{unknown}` is not in the reference set ({}); give a package to tune other kernels",
                    names.join(", ")
                );
            }
        }
    }
    let config = engine.config().clone();
    println!("tuning on cpu {}", engine.host());
    for (package, kernel, items, scalars) in jobs {
        let mut options = TuneOptions::new(items);
        options.repeats = if args.quick { 1 } else { args.repeats };
        options.quick = args.quick;
        options.budget = args.budget.map(Duration::from_secs_f64);
        options.packet_timeout = args.packet_timeout.map(Duration::from_secs_f64);
        options.scalars = scalars;
        // Measured as `offload run` executes kernels: in isolated workers.
        options.isolation = Some(super::offload_program()?);
        let verbose = cli.verbose > 0;
        let mut log = |line: &str| {
            if verbose {
                eprintln!("  {line}");
            }
        };
        let result = tune_kernel(&config, &package, &kernel, &options, &mut log)?;
        let mut profile = Profile::load(&cache_root, engine.host(), &package.hash())?
            .unwrap_or_else(|| Profile::new(engine.host(), &package.hash()));
        println!(
            "{kernel}: {} | {:.3e} items/s (default {:.3e}, x{:.2}) over {} configurations",
            result.settings,
            result.items_per_s,
            result.default_items_per_s,
            result.items_per_s / result.default_items_per_s,
            result.candidates
        );
        profile.insert(result);
        let path = profile.save(&cache_root)?;
        println!("  profile {}", path.display());
    }
    Ok(())
}

fn show(engine: &Engine, cache_root: &std::path::Path) -> anyhow::Result<()> {
    let profiles = Profile::list(cache_root)?;
    if profiles.is_empty() {
        println!(
            "no tuning profiles in {} (run `offload tune`)",
            cache_root.join(offload::tune::PROFILE_DIR).display()
        );
        return Ok(());
    }
    let host = engine.host();
    for (path, profile) in profiles {
        let current = profile.cpu == host.cpu
            && profile.features == host.features
            && profile.llvm_version == host.llvm_version.to_string()
            && profile.triple == host.triple;
        println!("profile {} ({})", profile.key, path.display());
        println!(
            "  package {}, cpu {} {}, llvm {}{}",
            &profile.package_hash[..16.min(profile.package_hash.len())],
            profile.triple,
            profile.cpu,
            profile.llvm_version,
            if current {
                ""
            } else {
                " (another CPU or LLVM: not used here)"
            }
        );
        for k in &profile.kernels {
            println!(
                "  {}: {} | {:.3e} items/s (default {:.3e}) at {} items",
                k.kernel, k.settings, k.items_per_s, k.default_items_per_s, k.items
            );
        }
    }
    Ok(())
}

/// The stored tuning of `kernel` of `package` on this node, if any: the settings to run
/// it with. `offload run` applies it unless the user chose the threads.
/// An unreadable profile is reported and ignored: the run goes on untuned.
pub fn lookup(engine: &Engine, package: &Package, kernel: &str) -> Option<Settings> {
    let cache_root = engine.config().cache_root()?;
    match Profile::load(cache_root, engine.host(), &package.hash()) {
        Ok(profile) => profile.and_then(|p| p.kernel(kernel).map(|k| k.settings.clone())),
        Err(error) => {
            eprintln!("warning: {error}; running untuned");
            None
        }
    }
}

/// `options` with `settings` applied, keeping `threads` when the user gave it, and the
/// engine to run with (another one when the profile chose another optimization level).
pub fn apply(
    cli: &Cli,
    engine: Engine,
    settings: &Settings,
    threads: Option<usize>,
    options: Options,
) -> anyhow::Result<(Engine, Options)> {
    let mut options = settings.apply(options);
    if let Some(threads) = threads {
        options = options.threads(threads);
    }
    let engine = if settings.opt() != cli.opt_level {
        Engine::new(engine.config().clone().opt_level(settings.opt()))?
    } else {
        engine
    };
    Ok((engine, options))
}
