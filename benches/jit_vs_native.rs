//! `jit_vs_native`: throughput of every example kernel, and of the six kernels of other
//! shapes in `benches/kernels/`, JIT-compiled by node-jit against the same kernel source
//! compiled ahead of time by rustc, twice in the same run: for the generic `x86-64` CPU
//! (what a distributed binary gets) and with `-C target-cpu=native`.
//!
//! `OFFLOAD_BENCH_CPU=znver3` (any LLVM CPU name) makes node-jit generate code for that
//! CPU and the "native" AOT build use `-C target-cpu=znver3`: both run on this machine,
//! which must have that CPU's ISA extensions. That compares the code each pipeline makes
//! for a CPU one does not have; it does not measure that CPU.
//!
//! All three run single-threaded over one packet `0..items` with the same inputs and the
//! same argument block (one 8-byte slot per manifest argument), so thread scheduling does
//! not blur the comparison. The AOT builds let rustc inline the kernel into the item loop
//! (see `support/aot.rs`), the strongest honest baseline. Before timing, the bench checks
//! once that the three produce the same outputs (integers exactly, floats within a
//! tolerance). Each kernel is one criterion group with its three variants side by side.
//! After each group the three builds are timed again in interleaved rounds (each round
//! runs every build for one ~20 ms batch, in rotating order), because this kind of
//! machine is shared and a burst of load during one variant's criterion run would skew a
//! ratio; the table printed at the end takes each build's fastest round for items/s and
//! the median over rounds of the per-round time ratio for JIT/native-AOT and
//! JIT/generic-AOT.
//!
//! Times are the bench thread's CPU time (`support/cpu_time.rs`, `support/cpu_measurement.rs`), not wall time: on a
//! shared machine wall time mostly measures the scheduler's queue.
//!
//! Run: `cargo bench --bench jit_vs_native`. Set `OFFLOAD_BENCH_KEEP=1` to keep the
//! compiled libraries (JIT cache and AOT builds) for `llvm-objdump -d`; their paths are
//! printed.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use criterion::{Criterion, Throughput};
use ir_packager::{ArgKind, KernelSpec};
use node_jit::{CompiledKernel, Config, Engine, ListingKind, OptLevel, Tuning};

#[path = "support/aot.rs"]
mod aot;
#[path = "support/cpu_measurement.rs"]
mod cpu_measurement;
#[path = "support/cpu_time.rs"]
mod cpu_time;
#[path = "support/examples.rs"]
#[allow(dead_code)] // shared with the program benches (which package programs)
mod examples;

// Only the input generators are used here; the reference implementations serve the
// integration tests, so their unused functions are expected.
#[allow(dead_code)]
#[path = "../examples/dot/reference.rs"]
mod dot_ref;
#[allow(dead_code)]
#[path = "kernels/references.rs"]
mod kernels_ref;
#[allow(dead_code)]
#[path = "../examples/logcrunch/reference.rs"]
mod logcrunch_ref;
#[allow(dead_code)]
#[path = "../examples/nbody/reference.rs"]
mod nbody_ref;
#[allow(dead_code)]
#[path = "../examples/raytrace/reference.rs"]
mod raytrace_ref;
#[allow(dead_code)]
#[path = "../examples/saxpy/reference.rs"]
mod saxpy_ref;

use aot::{AotKernel, Cpu};
use cpu_measurement::ThreadCpuTime;
use cpu_time::thread_cpu_time;

/// Criterion samples per variant: few, the machine is small and shared.
const SAMPLE_SIZE: usize = 10;

/// The builds of a kernel, in table order. The fourth is only made for kernels whose JIT
/// code calls the C library for a byte search: the same JIT without that fast path
/// (`Tuning::library_search = Some(false)`), the plain loops as before issue 17.
const VARIANTS: [&str; 4] = ["jit", "aot-native", "aot-generic", "jit-plain-search"];

/// One argument slot's value: a scalar's bits, or a buffer that owns its elements.
#[derive(Clone)]
enum Slot {
    Scalar(u64),
    U8(Vec<u8>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Slot {
    /// The word for the argument block: the scalar's bits or the buffer's address.
    fn word(&mut self) -> u64 {
        match self {
            Slot::Scalar(bits) => *bits,
            Slot::U8(v) => v.as_mut_ptr() as u64,
            Slot::U32(v) => v.as_mut_ptr() as u64,
            Slot::U64(v) => v.as_mut_ptr() as u64,
            Slot::F32(v) => v.as_mut_ptr() as u64,
            Slot::F64(v) => v.as_mut_ptr() as u64,
        }
    }
}

/// The inputs of one kernel's run, and what its throughput counts.
struct Workload {
    /// The packet: items `0..items` (chunks for logcrunch, pixels for the others).
    items: u64,
    /// Units of work per run, for items/s: items, except log lines for logcrunch.
    work: u64,
    /// What `work` counts.
    unit: &'static str,
    /// One slot per manifest argument.
    slots: Vec<Slot>,
    /// A line on the sizes, for the report.
    size: String,
}

fn f32_bits(v: f32) -> Slot {
    Slot::Scalar(u64::from(v.to_bits()))
}

fn f64_bits(v: f64) -> Slot {
    Slot::Scalar(v.to_bits())
}

/// saxpy over `n` elements (`cache` says where `x` and `y` fit).
fn saxpy(n: usize, cache: &str) -> Workload {
    let (x, y) = saxpy_ref::inputs(n, 1);
    Workload {
        items: n as u64,
        work: n as u64,
        unit: "elements",
        slots: vec![f32_bits(0.5), Slot::F32(x), Slot::F32(y)],
        size: format!("{n} f32 elements ({cache})"),
    }
}

/// The benchmark cases: (criterion group, example kernel). saxpy runs twice: with `x` and
/// `y` in L2 (bandwidth-bound, like real use) and in L1 (compute-bound, which shows the
/// vector width).
const CASES: [(&str, &str); 7] = [
    ("saxpy", "saxpy"),
    ("saxpy_l1", "saxpy"),
    ("mandelbrot", "mandelbrot"),
    ("nbody", "nbody"),
    ("dot", "dot"),
    ("logcrunch", "logcrunch"),
    ("raytrace", "raytrace"),
];

/// The kernels of other shapes (`benches/kernels/`), one case each, in a second table.
const OTHER_CASES: [(&str, &str); 6] = [
    ("csvsum", "csvsum"),
    ("hash", "hash"),
    ("matmul6", "matmul6"),
    ("gather", "gather"),
    ("prefixscan", "prefixscan"),
    ("lexer", "lexer"),
];

/// A range kernel's text workload: `text`, cut into `chunks` line-aligned chunks, with
/// one slot for the per-packet sum buffer of `bins` counters.
fn text_chunks(text: Vec<u8>, lines: usize, chunks: usize, bins: usize) -> Workload {
    let bounds = logcrunch_ref::chunk_bounds(&text, chunks);
    let size = format!("{lines} lines, {} bytes, {chunks} chunks", text.len());
    let (text_len, bounds_len) = (text.len() as u64, bounds.len() as u64);
    Workload {
        items: chunks as u64,
        work: lines as u64,
        unit: "lines",
        slots: vec![
            Slot::U8(text),
            Slot::Scalar(text_len),
            Slot::U64(bounds),
            Slot::Scalar(bounds_len),
            Slot::U64(vec![0; bins]),
        ],
        size,
    }
}

/// The inputs of benchmark case `case`, sized so that one run takes about 1 µs to 10 ms
/// and data stays in cache where that matters (saxpy, dot), so the bench measures code,
/// not DRAM.
fn workload(case: &str) -> Result<Workload> {
    Ok(match case {
        "saxpy" => saxpy(1 << 16, "512 KiB, L2-resident"),
        "saxpy_l1" => saxpy(1 << 11, "16 KiB, L1-resident"),
        "mandelbrot" => {
            let (width, height, max_iter) = (320u32, 240u32, 256u32);
            Workload {
                items: u64::from(width * height),
                work: u64::from(width * height),
                unit: "pixels",
                slots: vec![
                    Slot::Scalar(u64::from(width)),
                    Slot::Scalar(u64::from(max_iter)),
                    f64_bits(-2.2),
                    f64_bits(-1.2),
                    f64_bits(0.01),
                    Slot::U32(vec![0; (width * height) as usize]),
                ],
                size: format!("{width}x{height} pixels, max_iter {max_iter}"),
            }
        }
        "nbody" => {
            let n = 1024usize;
            let (pos, vel) = nbody_ref::bodies(n, 7);
            Workload {
                items: n as u64,
                work: n as u64,
                unit: "bodies",
                slots: vec![
                    Slot::Scalar(n as u64),
                    f32_bits(0.001),
                    f32_bits(0.05),
                    Slot::F32(pos),
                    Slot::F32(vel),
                    Slot::F32(vec![0.0; 4 * n]),
                ],
                size: format!("{n} bodies ({} interactions per step)", n * n),
            }
        }
        "dot" => {
            let n = 1usize << 15;
            let (x, y) = dot_ref::inputs(n, 3);
            Workload {
                items: n as u64,
                work: n as u64,
                unit: "elements",
                slots: vec![Slot::F64(x), Slot::F64(y), Slot::F64(vec![0.0])],
                size: format!("{n} f64 elements (512 KiB, L2-resident)"),
            }
        }
        "logcrunch" => {
            let lines = 40_000;
            let log = logcrunch_ref::generate_log(lines, 11);
            text_chunks(log, lines, 64, logcrunch_ref::BINS)
        }
        "raytrace" => {
            let (width, height) = (160u32, 120u32);
            let (scene, nspheres) = raytrace_ref::scene();
            Workload {
                items: u64::from(width * height),
                work: u64::from(width * height),
                unit: "pixels",
                slots: vec![
                    Slot::Scalar(u64::from(width)),
                    Slot::Scalar(u64::from(height)),
                    Slot::F32(scene),
                    Slot::Scalar(u64::from(nspheres)),
                    Slot::U8(vec![0; 3 * (width * height) as usize]),
                ],
                size: format!("{width}x{height} pixels, {nspheres} spheres"),
            }
        }
        "csvsum" => {
            let lines = 40_000;
            text_chunks(kernels_ref::generate_csv(lines, 5), lines, 64, 3)
        }
        "hash" => {
            let records = 8192usize;
            Workload {
                items: records as u64,
                work: records as u64,
                unit: "records",
                slots: vec![
                    Slot::Scalar(0x5EED),
                    Slot::U64(kernels_ref::hash_records(records, 9)),
                    Slot::U64(vec![0; records]),
                ],
                size: format!("{records} records of 64 bytes (512 KiB)"),
            }
        }
        "matmul6" => {
            let n = 2048usize;
            let (a, b) = kernels_ref::matrices(n, 13);
            Workload {
                items: n as u64,
                work: n as u64,
                unit: "products",
                slots: vec![Slot::F32(a), Slot::F32(b), Slot::F32(vec![0.0; 36 * n])],
                size: format!("{n} products of 6x6 f32 matrices"),
            }
        }
        "gather" => {
            let (n, table) = (1usize << 16, 1usize << 14);
            let (x, idx, y) = kernels_ref::gather_inputs(n, table, 17);
            Workload {
                items: n as u64,
                work: n as u64,
                unit: "elements",
                slots: vec![
                    f32_bits(0.75),
                    Slot::F32(x),
                    Slot::Scalar(table as u64),
                    Slot::U32(idx),
                    Slot::F32(y),
                ],
                size: format!("{n} elements from a table of {table} f32 (64 KiB)"),
            }
        }
        "prefixscan" => {
            let rows = 4096usize;
            // The kernel's i32 values and i64 sums travel as their bit patterns.
            let values = kernels_ref::scan_rows(rows, 19)
                .into_iter()
                .map(|v| v as u32)
                .collect();
            Workload {
                items: rows as u64,
                work: rows as u64,
                unit: "rows",
                slots: vec![Slot::U32(values), Slot::U64(vec![0; rows])],
                size: format!("{rows} rows of 64 i32 (1 MiB)"),
            }
        }
        "lexer" => {
            let lines = 40_000;
            text_chunks(kernels_ref::generate_source(lines, 23), lines, 64, 6)
        }
        other => bail!("no workload for benchmark case `{other}`"),
    })
}

/// One build's private copy of the inputs and the argument block pointing into it.
struct Instance {
    slots: Vec<Slot>,
    block: Vec<u64>,
}

impl Instance {
    fn new(workload: &Workload) -> Instance {
        let mut slots = workload.slots.clone();
        // The buffers' heap storage does not move when `slots` does, so the addresses
        // stay valid for the instance's life.
        let block = slots.iter_mut().map(Slot::word).collect();
        Instance { slots, block }
    }
}

/// A compiled kernel: node-jit's or a rustc AOT build.
enum Build {
    Jit(std::sync::Arc<CompiledKernel>),
    Aot(AotKernel),
}

impl Build {
    /// Runs the packet `0..items` with `block`.
    ///
    /// # Safety
    /// `block` must come from an [`Instance`] of this kernel's workload with `items` items.
    unsafe fn run(&self, items: u64, block: &[u64]) {
        match self {
            // SAFETY: upheld by the caller.
            Build::Jit(kernel) => unsafe { kernel.run_packet(0, items, block) }
                .unwrap_or_else(|panic| panic!("the JIT-compiled kernel failed: {panic}")),
            // SAFETY: upheld by the caller.
            Build::Aot(kernel) => unsafe { kernel.run(0, items, block) },
        }
    }

    fn library(&self) -> &Path {
        match self {
            Build::Jit(kernel) => kernel.library_path(),
            Build::Aot(kernel) => kernel.path(),
        }
    }
}

/// Fails unless `x` and `y` are equal element for element.
fn exact<T: PartialEq + std::fmt::Debug>(what: &str, x: &[T], y: &[T]) -> Result<()> {
    if x.len() != y.len() {
        bail!("{what}: lengths differ ({} vs {})", x.len(), y.len());
    }
    if let Some(i) = x.iter().zip(y).position(|(a, b)| a != b) {
        bail!("{what}: element {i} differs ({:?} vs {:?})", x[i], y[i]);
    }
    Ok(())
}

/// Fails unless `x` and `y` agree within `tol` relative to `max(|x|, |y|, 1)`; returns the
/// largest such relative difference.
fn close(what: &str, x: &[f64], y: &[f64], tol: f64) -> Result<f64> {
    if x.len() != y.len() {
        bail!("{what}: lengths differ ({} vs {})", x.len(), y.len());
    }
    let mut worst = 0.0f64;
    for (i, (&a, &b)) in x.iter().zip(y).enumerate() {
        let diff = (a - b).abs() / a.abs().max(b.abs()).max(1.0);
        if diff.is_nan() || diff > tol {
            bail!("{what}: element {i} differs beyond {tol:e} ({a} vs {b})");
        }
        worst = worst.max(diff);
    }
    Ok(worst)
}

/// Compares the output buffers (`out`, `inout`, `sum`) of two instances: integers must
/// match exactly, floats within 1e-5 (f32) or 1e-12 (f64) relative. Returns the largest
/// relative float difference.
fn compare_outputs(spec: &KernelSpec, a: &Instance, b: &Instance, against: &str) -> Result<f64> {
    let mut worst = 0.0f64;
    for (index, arg) in spec.args.iter().enumerate() {
        let ArgKind::Buffer { access, .. } = arg.kind else {
            continue;
        };
        if !access.writes_output() {
            continue;
        }
        let what = format!("{}: `{}` of jit vs {against}", spec.name, arg.name);
        match (&a.slots[index], &b.slots[index]) {
            (Slot::U8(x), Slot::U8(y)) => exact(&what, x, y)?,
            (Slot::U32(x), Slot::U32(y)) => exact(&what, x, y)?,
            (Slot::U64(x), Slot::U64(y)) => exact(&what, x, y)?,
            (Slot::F32(x), Slot::F32(y)) => {
                let widen = |v: &[f32]| v.iter().map(|&f| f64::from(f)).collect::<Vec<_>>();
                worst = worst.max(close(&what, &widen(x), &widen(y), 1e-5)?);
            }
            (Slot::F64(x), Slot::F64(y)) => worst = worst.max(close(&what, x, y, 1e-12)?),
            _ => bail!("{what}: slot {index} is not a buffer of the manifest's type"),
        }
    }
    Ok(worst)
}

/// Whether any output buffer of `run` differs from the workload's initial contents, so
/// that three builds that all did nothing cannot pass the check.
fn wrote_outputs(spec: &KernelSpec, initial: &Workload, run: &Instance) -> bool {
    spec.args.iter().enumerate().any(|(index, arg)| {
        let writes = matches!(arg.kind, ArgKind::Buffer { access, .. } if access.writes_output());
        writes
            && match (&initial.slots[index], &run.slots[index]) {
                (Slot::U8(x), Slot::U8(y)) => x != y,
                (Slot::U32(x), Slot::U32(y)) => x != y,
                (Slot::U64(x), Slot::U64(y)) => x != y,
                (Slot::F32(x), Slot::F32(y)) => x != y,
                (Slot::F64(x), Slot::F64(y)) => x != y,
                _ => false,
            }
    })
}

/// Interleaved rounds after each criterion group: every round times each build for one
/// batch, in rotating order, so that a burst of load from other processes on this shared
/// machine hits all three alike. The table is computed from these rounds.
const ROUNDS: usize = 15;

/// CPU time of one batch in the interleaved rounds.
const BATCH_TIME: Duration = Duration::from_millis(20);

/// Seconds per run of each build in each round: `per_run[variant][round]`.
type Rounds = Vec<Vec<f64>>;

/// Times `builds` in [`ROUNDS`] interleaved rounds (see [`ROUNDS`]).
fn interleaved_rounds(builds: &[Build], instance: &Instance, items: u64) -> Rounds {
    let time_batch = |build: &Build, runs: u64| {
        let start = thread_cpu_time();
        for _ in 0..runs {
            // SAFETY: the block points into this instance's buffers, sized for `items`.
            unsafe { build.run(items, &instance.block) };
        }
        (thread_cpu_time() - start).as_secs_f64()
    };
    // Batch size from one run of the slowest build, so every batch lasts about BATCH_TIME.
    let slowest = builds
        .iter()
        .map(|b| time_batch(b, 1))
        .fold(0.0f64, f64::max);
    let runs = ((BATCH_TIME.as_secs_f64() / slowest.max(1e-9)) as u64).max(1);
    let mut rounds: Rounds = vec![Vec::new(); builds.len()];
    for round in 0..ROUNDS {
        for k in 0..builds.len() {
            let v = (round + k) % builds.len();
            let secs = time_batch(&builds[v], runs);
            rounds[v].push(secs / runs as f64);
        }
    }
    rounds
}

/// One line of the final table.
struct Row {
    case: &'static str,
    unit: &'static str,
    size: String,
    work: u64,
    /// `None` when criterion's filter skipped the kernel.
    rounds: Option<Rounds>,
}

impl Row {
    /// Best (fastest round's) work per second of `variant`.
    fn best_rate(&self, variant: usize) -> Option<f64> {
        let rounds = self.rounds.as_ref()?;
        let fastest = rounds
            .get(variant)?
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        fastest.is_finite().then(|| self.work as f64 / fastest)
    }

    /// Median over rounds of the JIT's speed relative to `variant` in the same round
    /// (time of `variant` / time of the JIT; above 1 means the JIT is faster).
    fn paired_ratio(&self, variant: usize) -> Option<f64> {
        self.ratio_of(0, variant)
    }

    /// Median over rounds of `variant`'s speed relative to `against` in the same round.
    fn ratio_of(&self, variant: usize, against: usize) -> Option<f64> {
        let rounds = self.rounds.as_ref()?;
        let mut ratios: Vec<f64> = rounds
            .get(variant)?
            .iter()
            .zip(rounds.get(against)?)
            .map(|(mine, other)| other / mine)
            .collect();
        examples::median(&mut ratios)
    }
}

/// Whether node-jit's code for `kernel` on the engine's target calls `memchr` or
/// `memrchr` (a byte search got the library fast path).
fn calls_library_search(
    engine: &Engine,
    package: &ir_packager::Package,
    kernel: &str,
    tuning: &Tuning,
) -> Result<bool> {
    let ir = node_jit::listing(
        package,
        kernel,
        engine.host(),
        // The engine's optimization level: the benches keep the default.
        OptLevel::O3,
        tuning,
        ListingKind::OptimizedIr,
    )?;
    Ok(ir.contains("@memchr(") || ir.contains("@memrchr("))
}

/// Compiles `kernel` three ways (four with [`calls_library_search`]), checks that the
/// builds agree, then times them side by side in one criterion group, then in
/// interleaved rounds for the table.
fn bench_kernel(
    criterion: &mut Criterion<ThreadCpuTime>,
    engine: &Engine,
    dir: &Path,
    (case, kernel): (&'static str, &'static str),
    keep: bool,
) -> Result<Row> {
    let manifest = examples::manifest(kernel)?;
    let spec = manifest
        .kernel(kernel)
        .with_context(|| format!("examples/{kernel}/manifest.toml has no kernel `{kernel}`"))?
        .clone();
    let package = examples::package(kernel)?;
    let tuning = examples::bench_tuning()?;
    let jit = engine
        .compile_tuned(&package, kernel, &tuning)
        .with_context(|| format!("node-jit cannot compile {kernel}"))?
        .kernel;
    let kernel_file = examples::example_dir(kernel).join("kernel.rs");
    let native = examples::emulated_cpu().map_or(Cpu::Native, |setting| {
        // rustc takes the CPU; feature changes (`CPU:FEATURES`) apply to the JIT only.
        Cpu::Named(setting.split(':').next().unwrap_or_default().to_string())
    });
    let mut builds = vec![
        Build::Jit(jit),
        Build::Aot(aot::build(dir, case, &kernel_file, &spec, &native)?),
        Build::Aot(aot::build(dir, case, &kernel_file, &spec, &Cpu::Generic)?),
    ];
    if calls_library_search(engine, &package, kernel, &tuning)? {
        let plain = Tuning {
            library_search: Some(false),
            ..tuning.clone()
        };
        let report = engine
            .compile_tuned(&package, kernel, &plain)
            .with_context(|| {
                format!("node-jit cannot compile {kernel} without library searches")
            })?;
        builds.push(Build::Jit(report.kernel));
    }
    let workload = workload(case)?;

    let instances: Vec<Instance> = builds
        .iter()
        .map(|build| {
            let instance = Instance::new(&workload);
            // SAFETY: the block points into this instance's buffers, which `workload`
            // sized for `workload.items` items.
            unsafe { build.run(workload.items, &instance.block) };
            instance
        })
        .collect();
    if !wrote_outputs(&spec, &workload, &instances[0]) {
        bail!("{case}: the JIT-compiled kernel left every output buffer unchanged");
    }
    let mut worst = 0.0f64;
    for (variant, instance) in VARIANTS.iter().zip(&instances).skip(1) {
        worst = worst.max(compare_outputs(&spec, &instances[0], instance, variant)?);
    }
    println!(
        "{case}: {}; the outputs of {} agree (largest relative float difference {worst:.1e})",
        workload.size,
        VARIANTS[..builds.len()].join(", ")
    );
    if keep {
        for (variant, build) in VARIANTS.iter().zip(&builds) {
            println!("  {variant}: {}", build.library().display());
        }
    }

    let mut group = criterion.benchmark_group(case);
    group.throughput(Throughput::Elements(workload.work));
    let mut measured = false;
    // All three builds are timed on the same buffers (the JIT check's instance), so that
    // data placement (alignment, 4 KiB aliasing between input and output arrays) cannot
    // favour one of them. Repeated runs keep updating `inout` and `sum` buffers; nobody
    // looks at them again.
    let timed = &instances[0];
    for (variant, build) in VARIANTS.iter().zip(&builds) {
        group.bench_function(*variant, |b| {
            measured = true;
            b.iter(|| {
                // SAFETY: as for the check above.
                unsafe { build.run(workload.items, &timed.block) }
            })
        });
    }
    group.finish();
    // Skipped by a criterion filter: no rounds either.
    let rounds = (measured && !examples::criterion_test_mode())
        .then(|| interleaved_rounds(&builds, timed, workload.items));
    Ok(Row {
        case,
        unit: workload.unit,
        size: workload.size,
        work: workload.work,
        rounds,
    })
}

/// A rate with three significant digits and a k/M/G prefix.
fn rate(value: Option<f64>) -> String {
    let Some(v) = value else {
        return "-".into();
    };
    let (scaled, prefix) = match v {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v => (v / 1e3, "k"),
    };
    let decimals = if scaled >= 100.0 {
        0
    } else if scaled >= 10.0 {
        1
    } else {
        2
    };
    format!("{scaled:.decimals$} {prefix}/s")
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

/// Prints the results as a Markdown table (ready for docs/jit-benchmarks.md).
fn print_table(title: &str, rows: &[Row]) {
    let native =
        examples::emulated_cpu().map_or_else(|| "native".to_string(), |cpu| format!("`{cpu}`"));
    println!("\n{title}:\n");
    println!(
        "| case | work per run | JIT | AOT {native} | AOT generic | JIT / {native} | JIT / generic | plain-search JIT / {native} |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.case,
            row.size,
            rate(row.best_rate(0)),
            rate(row.best_rate(1)),
            rate(row.best_rate(2)),
            ratio(row.paired_ratio(1)),
            ratio(row.paired_ratio(2)),
            ratio(row.ratio_of(3, 1)),
        );
    }
    let units: Vec<String> = rows
        .iter()
        .map(|r| format!("{}: {}", r.case, r.unit))
        .collect();
    println!(
        "\nRates: {} per second, single thread, thread CPU time, fastest of {ROUNDS} \
         interleaved rounds of ~{} ms per build. Ratios: median over the rounds of (time of the AOT build) / (time \
         of the JIT build) in the same round; above 1 means the JIT is faster. plain-search JIT: \
         node-jit without the C library fast path for byte searches (`Tuning::library_search = \
         Some(false)`), only for kernels that have one.",
        units.join(", "),
        BATCH_TIME.as_millis()
    );
}

/// `OFFLOAD_BENCH_FLUSH_DENORMALS=1`: run every build with denormal inputs read as zero
/// and denormal results flushed to zero (x86 MXCSR DAZ and FTZ) on the bench thread. A
/// diagnostic: a build that speeds up with it spends its time in denormal assists. The
/// output check still runs, so it fails if real values were denormal.
fn flush_denormals_if_asked() -> Result<()> {
    if std::env::var_os("OFFLOAD_BENCH_FLUSH_DENORMALS").is_none() {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    {
        // MXCSR bit 6 is DAZ, bit 15 FTZ.
        #[allow(deprecated)]
        // SAFETY: changes only how this thread's SSE/AVX arithmetic treats denormals.
        unsafe {
            core::arch::x86_64::_mm_setcsr(core::arch::x86_64::_mm_getcsr() | 0x8040)
        };
        println!(
            "OFFLOAD_BENCH_FLUSH_DENORMALS: denormals are flushed to zero on the bench thread"
        );
        Ok(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    bail!("OFFLOAD_BENCH_FLUSH_DENORMALS is only implemented for x86_64")
}

fn main() -> Result<()> {
    flush_denormals_if_asked()?;
    let mut criterion = Criterion::default()
        .with_measurement(ThreadCpuTime)
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let keep = std::env::var_os("OFFLOAD_BENCH_KEEP").is_some();
    let work_dir = tempfile::Builder::new()
        .prefix("offload-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    // A fresh cache: the bench times code compiled now by this build of node-jit.
    let engine = Engine::new(examples::bench_config(
        Config::default().cache_dir(work_dir.path().join("cache")),
    )?)?;
    if let Some(missing) = examples::KERNELS
        .iter()
        .find(|k| !CASES.iter().any(|(_, kernel)| kernel == *k))
    {
        bail!("example `{missing}` has no benchmark case in CASES");
    }
    if let Some(missing) = examples::OTHER_KERNELS
        .iter()
        .find(|k| !OTHER_CASES.iter().any(|(_, kernel)| kernel == *k))
    {
        bail!("kernel `{missing}` of benches/kernels has no benchmark case in OTHER_CASES");
    }
    println!("machine: {}", examples::describe_machine(engine.host()));
    let mut rows = Vec::new();
    for case in CASES {
        rows.push(bench_kernel(
            &mut criterion,
            &engine,
            work_dir.path(),
            case,
            keep,
        )?);
    }
    let mut other_rows = Vec::new();
    for case in OTHER_CASES {
        other_rows.push(bench_kernel(
            &mut criterion,
            &engine,
            work_dir.path(),
            case,
            keep,
        )?);
    }
    criterion.final_summary();
    println!("\nmachine: {}", examples::describe_machine(engine.host()));
    print_table("The examples (`examples/`)", &rows);
    print_table("Kernels of other shapes (`benches/kernels/`)", &other_rows);
    if keep {
        let path = work_dir.keep();
        println!("kept the compiled libraries under {}", path.display());
    }
    Ok(())
}
