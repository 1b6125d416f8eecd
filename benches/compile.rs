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
//! reported separately. Times are wall-clock: the link step runs in child processes.
//!
//! After the criterion groups a breakdown of the cold compile is printed. node-jit does
//! not expose its phases, so the bench runs real cold compiles with a linker wrapper
//! (`Config::linker`) that time-stamps the start and end of the link: code generation
//! (parse, validate, entry wrapper, O3, object emission) is the time before the link,
//! loading (rename into the cache, `dlopen`) the time after it. The same object linked by
//! hand with `cc -shared` and with `ld -shared` shows what the compiler driver costs, and
//! a memory-cache hit is timed too.
//!
//! Run: `cargo bench --bench compile`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use criterion::{Criterion, SamplingMode};
use ir_packager::Package;
use node_jit::{CodeOrigin, Config, Engine, Tuning};

#[path = "support/cpu_time.rs"]
mod cpu_time;
#[path = "support/examples.rs"]
mod examples;

use cpu_time::{children_cpu_time, thread_cpu_time};

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

/// A linker wrapper that records when node-jit's link step starts and ends, so that a
/// real cold `Engine::compile` can be split into code generation, linking and loading.
struct LinkProbe {
    script: PathBuf,
    stamps: PathBuf,
    /// The wrapper copies the object node-jit links here, for timing linkers alone.
    object: PathBuf,
}

impl LinkProbe {
    fn new(dir: &Path) -> Result<LinkProbe> {
        let probe = LinkProbe {
            script: dir.join("timed-cc.sh"),
            stamps: dir.join("link-stamps"),
            object: dir.join("entry.o"),
        };
        let linker = node_jit_linker();
        for path in [&probe.stamps, &probe.object] {
            if path.to_string_lossy().contains('\'') {
                bail!("temporary path {} contains a quote", path.display());
            }
        }
        // node-jit runs `LINKER -shared -o OUT OBJECT -lm`, so the object is "$4".
        let script = format!(
            "#!/bin/sh\n\
             # Written by benches/compile.rs: times the link step of Engine::compile.\n\
             date +%s%N >> '{stamps}'\n\
             {linker} \"$@\"\n\
             status=$?\n\
             date +%s%N >> '{stamps}'\n\
             [ -e '{object}' ] || cp \"$4\" '{object}'\n\
             exit $status\n",
            stamps = probe.stamps.display(),
            object = probe.object.display(),
        );
        std::fs::write(&probe.script, script)
            .with_context(|| format!("cannot write {}", probe.script.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&probe.script, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make {} executable", probe.script.display()))?;
        }
        Ok(probe)
    }

    /// One cold compile through the wrapper: (total, codegen, link, load).
    fn cold_compile(
        &self,
        parent: &Path,
        package: &Package,
        kernel: &str,
    ) -> Result<[Duration; 4]> {
        let dir = tempfile::Builder::new()
            .prefix("cache-")
            .tempdir_in(parent)
            .context("cannot create a cache directory")?;
        let engine = Engine::new(base_config().cache_dir(dir.path()).linker(&self.script))?;
        match std::fs::remove_file(&self.stamps) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).context("cannot reset the link time stamps");
            }
            _ => {}
        }
        let started = epoch_nanos()?;
        let clock = Instant::now();
        compile_expecting(&engine, package, kernel, CodeOrigin::Compiled);
        let total = clock.elapsed();
        let ended = epoch_nanos()?;
        let text = std::fs::read_to_string(&self.stamps)
            .with_context(|| format!("the link probe left no {}", self.stamps.display()))?;
        let stamps: Vec<u128> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let [link_start, link_end] = stamps[..] else {
            bail!("expected two link time stamps, found {text:?}");
        };
        let span = |from: u128, to: u128| Duration::from_nanos(to.saturating_sub(from) as u64);
        Ok([
            total,
            span(started, link_start),
            span(link_start, link_end),
            span(link_end, ended),
        ])
    }
}

fn epoch_nanos() -> Result<u128> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_nanos())
}

/// node-jit's default linker: `$CC`, else `cc`.
fn node_jit_linker() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

/// The parts of one kernel's cold compile, each the median over [`BREAKDOWN_REPS`] rounds;
/// every round measures every part once, so all parts see the same machine load.
struct Breakdown {
    /// A whole cold `Engine::compile` through the link probe.
    cold: Duration,
    parse_validate: Duration,
    /// From the start of `Engine::compile` to the start of the link: parse, validate,
    /// retarget, entry wrapper, O3, object emission, writing the object.
    codegen: Duration,
    /// node-jit's `cc -shared` step (plus one `date` of the probe).
    link: Duration,
    /// From the end of the link to the return: rename into the cache, `dlopen`.
    load: Duration,
    /// `cc -shared` alone on the same object.
    link_cc: Duration,
    /// `ld -shared` alone on the same object; `None` if `ld` is unavailable.
    link_ld: Option<Duration>,
    /// A plain cold compile (default linker): wall time, CPU time of this thread and CPU
    /// time of the linker processes it ran.
    plain_wall: Duration,
    cpu_self: Duration,
    cpu_children: Duration,
    memory_hit: Duration,
}

fn median_duration(values: &mut [f64]) -> Result<Duration> {
    examples::median(values)
        .map(Duration::from_secs_f64)
        .context("no repetitions")
}

fn breakdown(parent: &Path, package: &Package, kernel: &str) -> Result<Breakdown> {
    let work = tempfile::Builder::new()
        .prefix("probe-")
        .tempdir_in(parent)
        .context("cannot create a probe directory")?;
    let probe = LinkProbe::new(work.path())?;
    // One compile through the probe leaves the exact object node-jit links.
    probe.cold_compile(parent, package, kernel)?;
    let library = work.path().join("kernel.so");
    let link_args = [
        "-shared".as_ref(),
        "-o".as_ref(),
        library.as_os_str(),
        probe.object.as_os_str(),
        "-lm".as_ref(),
    ];
    let linker = node_jit_linker();
    let ld_works = time_command("ld", &link_args).is_ok();
    let mut times: [Vec<f64>; 10] = Default::default();
    for _ in 0..BREAKDOWN_REPS {
        let parts = probe.cold_compile(parent, package, kernel)?;
        for (list, part) in times.iter_mut().zip(parts) {
            list.push(part.as_secs_f64());
        }
        let ctx = ir_packager::inkwell::context::Context::create();
        let start = Instant::now();
        let module = ir_packager::load_module(&ctx, package)?;
        times[4].push(start.elapsed().as_secs_f64());
        drop(module);
        times[5].push(time_command(&linker, &link_args)?.as_secs_f64());
        if ld_works {
            times[6].push(time_command("ld", &link_args)?.as_secs_f64());
        }
        let (dir, engine) = fresh_engine(parent)?;
        let (cpu, children, wall) = (thread_cpu_time(), children_cpu_time(), Instant::now());
        compile_expecting(&engine, package, kernel, CodeOrigin::Compiled);
        times[7].push(wall.elapsed().as_secs_f64());
        times[8].push((thread_cpu_time() - cpu).as_secs_f64());
        times[9].push((children_cpu_time() - children).as_secs_f64());
        drop(engine);
        drop(dir);
    }
    let [cold, codegen, link, load, parse, cc, ld, plain_wall, cpu_self, cpu_children] = &mut times;
    let (_dir, engine) = fresh_engine(parent)?;
    compile_expecting(&engine, package, kernel, CodeOrigin::Compiled);
    let memory_hit = median_of(|| {
        let start = Instant::now();
        compile_expecting(&engine, package, kernel, CodeOrigin::MemoryCache);
        Ok(start.elapsed())
    })?;
    Ok(Breakdown {
        cold: median_duration(cold)?,
        parse_validate: median_duration(parse)?,
        codegen: median_duration(codegen)?,
        link: median_duration(link)?,
        load: median_duration(load)?,
        link_cc: median_duration(cc)?,
        link_ld: median_duration(ld).ok(),
        plain_wall: median_duration(plain_wall)?,
        cpu_self: median_duration(cpu_self)?,
        cpu_children: median_duration(cpu_children)?,
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
    examples::bench_config(Config::default())?;
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
                    let engine = Engine::new(base_config().cache_dir(warm_dir.path()))
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

    println!("\nmachine: {machine}");
    println!("\n| kernel | cold compile | disk-cache hit | memory-cache hit |");
    println!("|---|---:|---:|---:|");
    let mut parts = Vec::new();
    for (((kernel, package), cold), hit) in packages.iter().zip(&cold).zip(&hits) {
        let part = breakdown(parent.path(), package, kernel)?;
        println!(
            "| {kernel} | {} | {} | {} |",
            opt(*cold, ms),
            opt(*hit, us),
            us(part.memory_hit),
        );
        parts.push(part);
    }
    println!(
        "\nCold compile and disk-cache hit: criterion medians of `Engine::compile` (empty \
         cache dir; new engine on a warm cache dir). `Engine::new` (host detection, in \
         neither): {}.",
        us(engine_new)
    );
    println!(
        "\nBreakdown of the cold compile (median of {BREAKDOWN_REPS} rounds, every part \
         measured once per round):\n"
    );
    println!(
        "| kernel | cold compile | parse + validate | codegen | link | link share | load | `cc -shared` alone | `ld -shared` alone |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((kernel, _), part) in packages.iter().zip(&parts) {
        println!(
            "| {kernel} | {} | {} | {} | {} | {:.0}% | {} | {} | {} |",
            ms(part.cold),
            ms(part.parse_validate),
            ms(part.codegen),
            ms(part.link),
            100.0 * part.link.as_secs_f64() / part.cold.as_secs_f64(),
            ms(part.load),
            ms(part.link_cc),
            opt(part.link_ld, ms),
        );
    }
    println!(
        "\nThe breakdown's cold compile runs node-jit with a linker wrapper that time-stamps \
         the link: codegen = start of `Engine::compile` to start of the link (includes \
         parse + validate, entry wrapper, O3, object emission); link = node-jit's \
         `cc -shared` (plus one `date` of the wrapper); load = rename into the cache and \
         dlopen. `cc -shared` / `ld -shared` alone: the same object linked by hand. \
         Starting a process that does nothing (`true`): {}.",
        ms(spawn)
    );

    println!(
        "\nCPU time of a plain cold compile (median of {BREAKDOWN_REPS}; on an idle machine \
         its wall time is about the total, as the steps run one after the other):\n"
    );
    println!(
        "| kernel | wall (this run) | CPU in-process | CPU of `cc`/`ld` processes | CPU total |"
    );
    println!("|---|---:|---:|---:|---:|");
    for ((kernel, _), part) in packages.iter().zip(&parts) {
        println!(
            "| {kernel} | {} | {} | {} | {} |",
            ms(part.plain_wall),
            ms(part.cpu_self),
            ms(part.cpu_children),
            ms(part.cpu_self + part.cpu_children),
        );
    }
    println!();

    let small = packages.iter().position(|(k, _)| *k == SMALL_KERNEL);
    if let Some(cold) = small.and_then(|i| cold[i]) {
        let verdict = if cold < COLD_GOAL { "met" } else { "NOT met" };
        println!(
            "goal: cold compile of {SMALL_KERNEL} under {}: {} wall ({verdict})",
            ms(COLD_GOAL),
            ms(cold)
        );
    }
    if let Some(part) = small.map(|i| &parts[i]) {
        let cpu = part.cpu_self + part.cpu_children;
        let verdict = if cpu < COLD_GOAL { "met" } else { "NOT met" };
        println!(
            "goal: cold compile of {SMALL_KERNEL} under {} counting CPU time only (an idle \
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
