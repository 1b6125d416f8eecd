//! `compile`: how long node-jit takes to get native code for each kernel (the examples and
//! the kernels of `benches/kernels/`), with its optimization pipeline and, side by side,
//! with the per-module pipeline it ran before issue 17.
//!
//! - `cold_compile/<kernel>`: `Engine::compile` with an empty cache directory (a new
//!   engine on a fresh temp dir per iteration): loading and validating the package,
//!   retargeting, the entry wrapper, optimization (`Pipeline::PostLink`, `lto<O3>`),
//!   object emission, linking the shared library with `ld` and loading it.
//! - `cold_compile_per_module/<kernel>`: the same with `Pipeline::PerModule`
//!   (`default<O3>`).
//! - `disk_cache_hit/<kernel>`: `Engine::compile` on a new `Engine` over a warm cache
//!   directory, so the in-memory cache is empty and the library is found on disk and
//!   loaded with `dlopen` (the engine is dropped after each iteration, so every iteration
//!   really maps the library again). This is what a second process pays.
//!
//! Engine creation (host detection) happens outside the timed region; its cost is
//! reported separately. Times are wall-clock: the link step runs in a child process.
//!
//! After the criterion groups, interleaved rounds (both pipelines in turn, every part once
//! per round) give where the time goes: `node_jit::compile_phases` times parse and
//! validation, the target machine, preparation, optimization and object emission; the
//! same object is then linked by hand with the linker command node-jit runs (only the
//! libraries `node_jit::link_needs` names) and with `-lm` and libgcc always (as before
//! issue 17); and plain
//! cold compiles are measured in wall time and in CPU time (this thread plus the linker
//! process), which on an idle machine is what the wall time would be.
//!
//! Run: `cargo bench --bench compile` (`OFFLOAD_BENCH_CPU=znver3` compiles for another
//! CPU, as in `jit_vs_native`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use criterion::{Criterion, SamplingMode};
use ir_packager::Package;
use node_jit::{CodeOrigin, Config, Engine, OptLevel, Pipeline, Tuning};

#[path = "support/cpu_time.rs"]
mod cpu_time;
#[path = "support/examples.rs"]
#[allow(dead_code)] // shared with jit_vs_native, which uses all of it
mod examples;

use cpu_time::{children_cpu_time, thread_cpu_time};

/// Criterion samples per benchmark: few, the machine is small and shared.
const SAMPLE_SIZE: usize = 10;

/// Interleaved rounds of the breakdown (medians reported).
const BREAKDOWN_REPS: usize = 9;

/// The kernels the "cold compile under 50 ms" goal is checked on: the small example and
/// the demo's.
const GOAL_KERNELS: [&str; 2] = ["saxpy", "mandelbrot"];

/// Goal for a cold compile of a small kernel.
const COLD_GOAL: Duration = Duration::from_millis(50);

/// Goal for a disk-cache hit.
const HIT_GOAL: Duration = Duration::from_millis(1);

/// The two pipelines, in table order: node-jit's, and the one before issue 17.
const PIPELINES: [(Pipeline, &str); 2] = [
    (Pipeline::PostLink, "post-link"),
    (Pipeline::PerModule, "per-module"),
];

fn tuning(pipeline: Pipeline) -> Tuning {
    Tuning {
        pipeline: Some(pipeline),
        ..Tuning::default()
    }
}

/// The engine settings of every compile: the defaults, for this CPU or the one
/// `OFFLOAD_BENCH_CPU` names (checked once in `main`).
fn base_config() -> Config {
    examples::bench_config(Config::default()).expect("OFFLOAD_BENCH_CPU was checked in main")
}

/// A fresh, empty cache directory under `parent` and an engine using it.
fn fresh_engine(parent: &Path) -> Result<(tempfile::TempDir, Engine)> {
    let dir = tempfile::Builder::new()
        .prefix("cache-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a cache directory under {}", parent.display()))?;
    let engine = Engine::new(base_config().cache_dir(dir.path()))?;
    Ok((dir, engine))
}

/// Compiles and checks where the code came from.
fn compile_expecting(
    engine: &Engine,
    package: &Package,
    kernel: &str,
    tuning: &Tuning,
    want: CodeOrigin,
) {
    let report = engine
        .compile_tuned(package, kernel, tuning)
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
    median_duration(&mut times)
}

fn median_duration(values: &mut [f64]) -> Result<Duration> {
    examples::median(values)
        .map(Duration::from_secs_f64)
        .context("no repetitions")
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

/// The link command node-jit runs by default (`ld -shared --eh-frame-hdr -z noexecstack
/// -o LIB OBJ`, then `-lm` and libgcc where `needs` says so), as program and arguments.
fn node_jit_link(
    object: &Path,
    library: &Path,
    needs: node_jit::LinkNeeds,
) -> Result<(String, Vec<std::ffi::OsString>)> {
    let output = Command::new("cc")
        .arg("-print-libgcc-file-name")
        .output()
        .context("cannot run cc -print-libgcc-file-name")?;
    let libgcc = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let mut args: Vec<std::ffi::OsString> =
        ["-shared", "--eh-frame-hdr", "-z", "noexecstack", "-o"]
            .iter()
            .map(Into::into)
            .collect();
    args.push(library.into());
    args.push(object.into());
    if needs.libm {
        args.push("-lm".into());
    }
    if needs.libgcc && libgcc.is_file() {
        args.push(libgcc.into());
    }
    Ok(("ld".into(), args))
}

/// One pipeline's share of a kernel's breakdown (medians over the interleaved rounds).
#[derive(Default)]
struct PipelineParts {
    load: Duration,
    target_machine: Duration,
    prepare: Duration,
    optimize: Duration,
    emit: Duration,
    object_bytes: usize,
    /// The object linked by hand with node-jit's linker command.
    link: Duration,
    /// The same with `-lm` and libgcc always, as before issue 17.
    link_all: Duration,
    /// A plain cold `Engine::compile`: wall time, CPU time of this thread, CPU time of the
    /// linker process.
    wall: Duration,
    cpu_self: Duration,
    cpu_children: Duration,
}

/// Interleaved rounds for one kernel: in each round both pipelines run every part once.
fn breakdown(parent: &Path, package: &Package, kernel: &str) -> Result<[PipelineParts; 2]> {
    let work = tempfile::Builder::new()
        .prefix("link-")
        .tempdir_in(parent)
        .context("cannot create a link directory")?;
    let target = base_config();
    let host = Engine::new(target.cache_dir(parent.join("unused")))?
        .host()
        .clone();
    // times[pipeline][part] over the rounds.
    let mut times: [[Vec<f64>; 10]; 2] = Default::default();
    let mut bytes = [0usize; 2];
    for _ in 0..BREAKDOWN_REPS {
        for (p, (pipeline, _)) in PIPELINES.iter().enumerate() {
            let tuning = tuning(*pipeline);
            let phases = node_jit::compile_phases(package, kernel, &host, OptLevel::O3, &tuning)?;
            let object = work.path().join(format!("kernel-{p}.o"));
            let library = work.path().join(format!("kernel-{p}.so"));
            std::fs::write(&object, &phases.object)
                .with_context(|| format!("cannot write {}", object.display()))?;
            let (program, args) =
                node_jit_link(&object, &library, node_jit::link_needs(&phases.object))?;
            let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
            let link = time_command(&program, &args)?;
            // Before issue 17 node-jit always linked libm and libgcc.
            let both = node_jit::LinkNeeds {
                libm: true,
                libgcc: true,
            };
            let (program, args) = node_jit_link(&object, &library, both)?;
            let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
            let link_all = time_command(&program, &args)?;
            let (dir, engine) = fresh_engine(parent)?;
            let (cpu, children, wall) = (thread_cpu_time(), children_cpu_time(), Instant::now());
            compile_expecting(&engine, package, kernel, &tuning, CodeOrigin::Compiled);
            let wall = wall.elapsed();
            let (cpu, children) = (thread_cpu_time() - cpu, children_cpu_time() - children);
            drop(engine);
            drop(dir);
            bytes[p] = phases.object.len();
            let parts = [
                phases.load,
                phases.target_machine,
                phases.prepare,
                phases.optimize,
                phases.emit,
                link,
                link_all,
                wall,
                cpu,
                children,
            ];
            for (list, part) in times[p].iter_mut().zip(parts) {
                list.push(part.as_secs_f64());
            }
        }
    }
    let mut result: [PipelineParts; 2] = Default::default();
    for (p, parts) in result.iter_mut().enumerate() {
        let [load, tm, prepare, optimize, emit, link, link_all, wall, cpu, children] =
            &mut times[p];
        *parts = PipelineParts {
            load: median_duration(load)?,
            target_machine: median_duration(tm)?,
            prepare: median_duration(prepare)?,
            optimize: median_duration(optimize)?,
            emit: median_duration(emit)?,
            object_bytes: bytes[p],
            link: median_duration(link)?,
            link_all: median_duration(link_all)?,
            wall: median_duration(wall)?,
            cpu_self: median_duration(cpu)?,
            cpu_children: median_duration(children)?,
        };
    }
    Ok(result)
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

/// Criterion group `name`: a cold compile of every kernel with `tuning`; returns the
/// median per kernel.
fn cold_group(
    criterion: &mut Criterion,
    name: &str,
    parent: &Path,
    packages: &[(&'static str, Package)],
    tuning: &Tuning,
) -> Vec<Option<Duration>> {
    let mut medians = Vec::new();
    let mut group = criterion.benchmark_group(name);
    group.sampling_mode(SamplingMode::Flat);
    for (kernel, package) in packages {
        let mut samples: Vec<(u64, Duration)> = Vec::new();
        group.bench_function(*kernel, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (dir, engine) = fresh_engine(parent)
                        .unwrap_or_else(|e| panic!("cannot set up a fresh cache: {e:#}"));
                    let start = Instant::now();
                    compile_expecting(&engine, package, kernel, tuning, CodeOrigin::Compiled);
                    total += start.elapsed();
                    drop(engine);
                    drop(dir);
                }
                samples.push((iters, total));
                total
            })
        });
        medians.push(median_per_iter(&samples));
    }
    group.finish();
    medians
}

fn main() -> Result<()> {
    examples::bench_config(Config::default())?;
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
    for kernel in examples::KERNELS.iter().chain(&examples::OTHER_KERNELS) {
        packages.push((*kernel, examples::package(kernel)?));
    }
    let (_probe_dir, probe) = fresh_engine(parent.path())?;
    let machine = examples::describe_machine(probe.host());
    println!("machine: {machine}");

    let cold = cold_group(
        &mut criterion,
        "cold_compile",
        parent.path(),
        &packages,
        &tuning(Pipeline::PostLink),
    );
    let cold_per_module = cold_group(
        &mut criterion,
        "cold_compile_per_module",
        parent.path(),
        &packages,
        &tuning(Pipeline::PerModule),
    );

    let mut hits = Vec::new();
    let mut group = criterion.benchmark_group("disk_cache_hit");
    let default = Tuning::default();
    for (kernel, package) in &packages {
        // One compile warms this kernel's cache directory; every iteration then starts
        // with an empty memory cache.
        let (warm_dir, warm) = fresh_engine(parent.path())?;
        compile_expecting(&warm, package, kernel, &default, CodeOrigin::Compiled);
        drop(warm);
        let mut samples: Vec<(u64, Duration)> = Vec::new();
        group.bench_function(*kernel, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let engine = Engine::new(base_config().cache_dir(warm_dir.path()))
                        .unwrap_or_else(|e| panic!("cannot create an engine: {e}"));
                    let start = Instant::now();
                    compile_expecting(&engine, package, kernel, &default, CodeOrigin::DiskCache);
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

    if examples::criterion_test_mode() {
        // `cargo test --benches`: every benchmark ran once; skip the breakdown.
        return Ok(());
    }

    let engine_new = median_of(|| {
        let start = Instant::now();
        let engine = Engine::new(base_config().cache_dir(parent.path().join("unused")))?;
        let elapsed = start.elapsed();
        drop(engine);
        Ok(elapsed)
    })?;
    // The floor of any external linker: starting a process that does nothing.
    let spawn = median_of(|| time_command("true", &[]))?;

    let mut parts = Vec::new();
    for (kernel, package) in &packages {
        parts.push(breakdown(parent.path(), package, kernel)?);
    }

    println!("\nmachine: {}", examples::describe_machine(probe.host()));
    println!(
        "\n| kernel | cold compile, post-link | cold compile, per-module | post-link / per-module | disk-cache hit |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (i, (kernel, _)) in packages.iter().enumerate() {
        let ratio = match (cold[i], cold_per_module[i]) {
            (Some(a), Some(b)) => format!("{:.2}", a.as_secs_f64() / b.as_secs_f64()),
            _ => "-".into(),
        };
        println!(
            "| {kernel} | {} | {} | {ratio} | {} |",
            opt(cold[i], ms),
            opt(cold_per_module[i], ms),
            opt(hits[i], us),
        );
    }
    println!(
        "\nCriterion medians, wall clock, of `Engine::compile` on an empty cache dir (post-link: \
         `lto<O3>`, node-jit's pipeline; per-module: `default<O3>`, the one before issue 17) \
         and on a warm cache dir with a new engine. `Engine::new` (host detection, in \
         neither): {}. Starting a process that does nothing (`true`): {}.",
        us(engine_new),
        ms(spawn)
    );

    println!(
        "\nWhere the time goes (median of {BREAKDOWN_REPS} rounds, both pipelines in turn in \
         every round; `node_jit::compile_phases`, then the same object linked by hand with \
         node-jit's `ld` command):\n"
    );
    println!(
        "| kernel | pipeline | parse + validate | target machine | prepare | optimize | emit object | `ld` | `ld` with libm + libgcc | object |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((kernel, _), both) in packages.iter().zip(&parts) {
        for ((_, name), part) in PIPELINES.iter().zip(both) {
            println!(
                "| {kernel} | {name} | {} | {} | {} | {} | {} | {} | {} | {} B |",
                ms(part.load),
                ms(part.target_machine),
                ms(part.prepare),
                ms(part.optimize),
                ms(part.emit),
                ms(part.link),
                ms(part.link_all),
                part.object_bytes,
            );
        }
    }

    println!(
        "\nA plain cold compile, wall and CPU time (this thread + the `ld` process; median of \
         {BREAKDOWN_REPS}, interleaved). On an idle machine the wall time is about the CPU \
         total, as the steps run one after the other:\n"
    );
    println!(
        "| kernel | wall, post-link | CPU, post-link (in-process + `ld`) | wall, per-module | CPU, per-module (in-process + `ld`) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for ((kernel, _), [post, per]) in packages.iter().zip(&parts) {
        let cpu = |p: &PipelineParts| {
            format!(
                "{} ({} + {})",
                ms(p.cpu_self + p.cpu_children),
                ms(p.cpu_self),
                ms(p.cpu_children)
            )
        };
        println!(
            "| {kernel} | {} | {} | {} | {} |",
            ms(post.wall),
            cpu(post),
            ms(per.wall),
            cpu(per),
        );
    }
    println!();

    for goal_kernel in GOAL_KERNELS {
        let Some(i) = packages.iter().position(|(k, _)| *k == goal_kernel) else {
            continue;
        };
        if let Some(cold) = cold[i] {
            let verdict = if cold < COLD_GOAL { "met" } else { "NOT met" };
            println!(
                "goal: cold compile of {goal_kernel} under {}: {} wall, criterion median ({verdict})",
                ms(COLD_GOAL),
                ms(cold)
            );
        }
        let cpu = parts[i][0].cpu_self + parts[i][0].cpu_children;
        let verdict = if cpu < COLD_GOAL { "met" } else { "NOT met" };
        println!(
            "goal: cold compile of {goal_kernel} under {} counting CPU time only (an idle \
             machine's wall time): {} ({verdict})",
            ms(COLD_GOAL),
            ms(cpu)
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
