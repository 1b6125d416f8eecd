//! `compile`: how long node-jit takes to get native code for each example kernel.
//!
//! - `cold_compile/<kernel>`: `Engine::compile` with an empty cache directory
//!   (`Config::default().cache_dir(fresh temp dir)` per iteration): loading and validating
//!   the package, retargeting, the O3 pipeline, object emission, linking the shared
//!   library with `cc -shared` and loading it.
//! - `disk_cache_hit/<kernel>`: `Engine::compile` on a new `Engine` over a warm cache
//!   directory, so the in-memory cache is empty and the library is found on disk and
//!   loaded with `dlopen` (the engine is dropped after each iteration, so every iteration
//!   really maps the library again). This is what a second process pays.
//!
//! Engine creation (host detection) happens outside the timed region; its cost is
//! reported separately. After the criterion groups a breakdown of the cold compile is
//! printed: parsing and validating the package, O3 + object emission, the `cc -shared`
//! link step (and, for comparison, calling `ld -shared` directly), and a memory-cache hit.
//!
//! Run: `cargo bench --bench compile`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use criterion::{Criterion, SamplingMode};
use ir_packager::Package;
use node_jit::{CodeOrigin, Config, Engine, Tuning};

#[path = "support/examples.rs"]
mod examples;

/// Criterion samples per benchmark: few, the machine is small and shared.
const SAMPLE_SIZE: usize = 10;

/// Repetitions of each step of the breakdown (median reported).
const BREAKDOWN_REPS: usize = 7;

/// The kernel the "cold compile of a small kernel under 50 ms" goal is checked on.
const SMALL_KERNEL: &str = "saxpy";

/// Goal for a cold compile of a small kernel.
const COLD_GOAL: Duration = Duration::from_millis(50);

/// Goal for a disk-cache hit.
const HIT_GOAL: Duration = Duration::from_millis(1);

/// A fresh, empty cache directory under `parent` and an engine using it.
fn fresh_engine(parent: &Path) -> Result<(tempfile::TempDir, Engine)> {
    let dir = tempfile::Builder::new()
        .prefix("cache-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a cache directory under {}", parent.display()))?;
    let engine = Engine::new(Config::default().cache_dir(dir.path()))?;
    Ok((dir, engine))
}

/// Compiles and checks where the code came from.
fn compile_expecting(engine: &Engine, package: &Package, kernel: &str, want: CodeOrigin) {
    let report = engine
        .compile_tuned(package, kernel, &Tuning::default())
        .unwrap_or_else(|e| panic!("compiling {kernel} failed: {e}"));
    assert_eq!(
        report.origin,
        want,
        "{kernel}: expected code from {}, got it from {}",
        want.describe(),
        report.origin.describe()
    );
}

/// Median time per iteration of criterion's measurement samples (the last
/// `SAMPLE_SIZE` calls of the routine; earlier ones are warm-up).
fn median_per_iter(samples: &[(u64, Duration)]) -> Option<Duration> {
    let measured = &samples[samples.len().saturating_sub(SAMPLE_SIZE)..];
    let mut per_iter: Vec<f64> = measured
        .iter()
        .filter(|(iters, _)| *iters > 0)
        .map(|(iters, elapsed)| elapsed.as_secs_f64() / *iters as f64)
        .collect();
    examples::median(&mut per_iter).map(Duration::from_secs_f64)
}

/// Median over `BREAKDOWN_REPS` runs of `step`, which returns the time of its timed part.
fn median_of(mut step: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let mut times = Vec::with_capacity(BREAKDOWN_REPS);
    for _ in 0..BREAKDOWN_REPS {
        times.push(step()?.as_secs_f64());
    }
    let median = examples::median(&mut times).context("no repetitions")?;
    Ok(Duration::from_secs_f64(median))
}

/// Times `program args...`, failing with its stderr if it fails.
fn time_command(program: &str, args: &[&std::ffi::OsStr]) -> Result<Duration> {
    let start = Instant::now();
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let elapsed = start.elapsed();
    if !output.status.success() {
        bail!(
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(elapsed)
}

/// The parts of one kernel's cold compile, measured one by one.
struct Breakdown {
    parse_validate: Duration,
    /// Parse + validate + retarget + O3 + object emission (`compile_object_for("native")`).
    codegen: Duration,
    link_cc: Duration,
    /// `ld -shared` without the compiler driver; `None` if `ld` is unavailable.
    link_ld: Option<Duration>,
    memory_hit: Duration,
}

fn breakdown(parent: &Path, package: &Package, kernel: &str) -> Result<Breakdown> {
    let (_dir, engine) = fresh_engine(parent)?;
    let parse_validate = median_of(|| {
        let ctx = ir_packager::inkwell::context::Context::create();
        let start = Instant::now();
        let module = ir_packager::load_module(&ctx, package)?;
        let elapsed = start.elapsed();
        drop(module);
        Ok(elapsed)
    })?;
    let codegen = median_of(|| {
        let start = Instant::now();
        engine.compile_object_for(package, "native")?;
        Ok(start.elapsed())
    })?;
    let work = tempfile::Builder::new()
        .prefix("link-")
        .tempdir_in(parent)
        .context("cannot create a link directory")?;
    let object = work.path().join("kernel.o");
    std::fs::write(&object, engine.compile_object_for(package, "native")?)
        .with_context(|| format!("cannot write {}", object.display()))?;
    let library = work.path().join("kernel.so");
    // node-jit's default linker: `$CC`, else `cc`.
    let linker = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let link_args = [
        "-shared".as_ref(),
        "-o".as_ref(),
        library.as_os_str(),
        object.as_os_str(),
        "-lm".as_ref(),
    ];
    let link_cc = median_of(|| time_command(&linker, &link_args))?;
    let link_ld = median_of(|| time_command("ld", &link_args)).ok();
    compile_expecting(&engine, package, kernel, CodeOrigin::Compiled);
    let memory_hit = median_of(|| {
        let start = Instant::now();
        compile_expecting(&engine, package, kernel, CodeOrigin::MemoryCache);
        Ok(start.elapsed())
    })?;
    Ok(Breakdown {
        parse_validate,
        codegen,
        link_cc,
        link_ld,
        memory_hit,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn opt(d: Option<Duration>, show: fn(Duration) -> String) -> String {
    d.map_or_else(|| "-".into(), show)
}

fn main() -> Result<()> {
    let mut criterion = Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let parent = tempfile::Builder::new()
        .prefix("offload-compile-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let mut packages = Vec::new();
    for kernel in examples::KERNELS {
        packages.push((kernel, examples::package(kernel)?));
    }
    let (_probe_dir, probe) = fresh_engine(parent.path())?;
    let machine = examples::describe_machine(probe.host());
    println!("machine: {machine}");

    let mut cold = Vec::new();
    let mut group = criterion.benchmark_group("cold_compile");
    group.sampling_mode(SamplingMode::Flat);
    for (kernel, package) in &packages {
        let mut samples: Vec<(u64, Duration)> = Vec::new();
        group.bench_function(*kernel, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (dir, engine) = fresh_engine(parent.path())
                        .unwrap_or_else(|e| panic!("cannot set up a fresh cache: {e:#}"));
                    let start = Instant::now();
                    compile_expecting(&engine, package, kernel, CodeOrigin::Compiled);
                    total += start.elapsed();
                    drop(engine);
                    drop(dir);
                }
                samples.push((iters, total));
                total
            })
        });
        cold.push(median_per_iter(&samples));
    }
    group.finish();

    let mut hits = Vec::new();
    let mut group = criterion.benchmark_group("disk_cache_hit");
    for (kernel, package) in &packages {
        // One compile warms this kernel's cache directory; every iteration then starts
        // with an empty memory cache.
        let (warm_dir, warm) = fresh_engine(parent.path())?;
        compile_expecting(&warm, package, kernel, CodeOrigin::Compiled);
        drop(warm);
        let mut samples: Vec<(u64, Duration)> = Vec::new();
        group.bench_function(*kernel, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let engine = Engine::new(Config::default().cache_dir(warm_dir.path()))
                        .unwrap_or_else(|e| panic!("cannot create an engine: {e}"));
                    let start = Instant::now();
                    compile_expecting(&engine, package, kernel, CodeOrigin::DiskCache);
                    total += start.elapsed();
                    // Dropping the engine unloads the library, so the next iteration maps
                    // it again instead of bumping dlopen's reference count.
                    drop(engine);
                }
                samples.push((iters, total));
                total
            })
        });
        hits.push(median_per_iter(&samples));
    }
    group.finish();
    criterion.final_summary();

    let engine_new = median_of(|| {
        let start = Instant::now();
        let engine = Engine::new(Config::default().cache_dir(parent.path().join("unused")))?;
        let elapsed = start.elapsed();
        drop(engine);
        Ok(elapsed)
    })?;

    // The floor of any external linker: starting a process that does nothing.
    let spawn = median_of(|| time_command("true", &[]))?;

    println!("\nmachine: {machine}");
    println!(
        "\n| kernel | cold compile | parse + validate | O3 + emit | link (`cc -shared`) | link share | link (`ld -shared`) | disk-cache hit | memory-cache hit |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (((kernel, package), cold), hit) in packages.iter().zip(&cold).zip(&hits) {
        let parts = breakdown(parent.path(), package, kernel)?;
        println!(
            "| {kernel} | {} | {} | {} | {} | {} | {} | {} | {} |",
            opt(*cold, ms),
            ms(parts.parse_validate),
            ms(parts.codegen.saturating_sub(parts.parse_validate)),
            ms(parts.link_cc),
            cold.map_or_else(
                || "-".into(),
                |c| format!(
                    "{:.0}%",
                    100.0 * parts.link_cc.as_secs_f64() / c.as_secs_f64()
                )
            ),
            opt(parts.link_ld, ms),
            opt(*hit, us),
            us(parts.memory_hit),
        );
    }
    println!(
        "\nCold compile = criterion median of `Engine::compile` with an empty cache. The other \
         columns are measured separately (median of {BREAKDOWN_REPS}); `O3 + emit` is \
         `compile_object_for(\"native\")` minus parse + validate; link share = `cc -shared` \
         / cold compile. `Engine::new` (host \
         detection, not in any column): {}. Starting a process that does nothing \
         (`true`): {}.",
        us(engine_new),
        ms(spawn)
    );

    let small = packages.iter().position(|(k, _)| *k == SMALL_KERNEL);
    if let Some(cold) = small.and_then(|i| cold[i]) {
        let verdict = if cold < COLD_GOAL { "met" } else { "NOT met" };
        println!(
            "goal: cold compile of {SMALL_KERNEL} under {}: {} ({verdict})",
            ms(COLD_GOAL),
            ms(cold)
        );
    }
    if let Some(worst) = hits.iter().flatten().max() {
        let verdict = if *worst < HIT_GOAL { "met" } else { "NOT met" };
        println!(
            "goal: disk-cache hit under {}: slowest {} ({verdict})",
            ms(HIT_GOAL),
            us(*worst)
        );
    }
    Ok(())
}
