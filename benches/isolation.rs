//! `isolation`: local runs in isolated worker processes (`Options::isolated`, what `offload
//! run` uses) against the same jobs in process, side by side in one process.
//!
//! - `offload run` of example kernels on every core, whole process (files read and
//!   written): saxpy (memory-bound, 2^24 f32), mandelbrot (compute-bound, 2048 × 1536,
//!   512 iterations), dot (a `sum` buffer, 2^24 f64);
//! - `offload run` of the example programs: jacobi-2d (1300², 100 time steps = 200
//!   sweeps) and floyd-warshall (N = 1000: 2000 steps);
//! - per packet: saxpy over 20,000 items in packets of one item on one worker through the
//!   Rust API, wall time per packet in each mode.
//!
//! Rounds alternate the two modes (which goes first rotates); the figure is the median
//! over rounds of in-process time / isolated time, i.e. isolated items/s relative to in
//! process (issue 13's goal: ≥ 0.97), after one untimed run of each whose outputs must
//! agree. The workers' start (a few ms) is inside every isolated time.
//!
//! Run: `cargo bench --bench isolation`. `OFFLOAD_BENCH_ROUNDS` (default 9).

#[path = "support/examples.rs"]
#[allow(dead_code)] // shared with the JIT benches, which use all of it
mod examples;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use offload::{ArgValue, Buffer, Cluster, Config, Engine, Job, Options, ScalarValue};

const OFFLOAD: &str = env!("CARGO_BIN_EXE_offload");

/// One `offload run` to time in both modes: its arguments, the file to restore before
/// each run (an `--inout` input: `(pristine copy, file)`) and the outputs both modes must
/// agree on.
struct Case {
    name: &'static str,
    args: Vec<String>,
    restore: Option<(PathBuf, PathBuf)>,
    outputs: Vec<PathBuf>,
}

/// Runs `case` (isolated, or `--in-process`) and returns its wall time and outputs.
fn run(case: &Case, in_process: bool) -> Result<(Duration, Vec<Vec<u8>>)> {
    if let Some((pristine, file)) = &case.restore {
        std::fs::copy(pristine, file)?;
    }
    let mut command = Command::new(OFFLOAD);
    command.args(&case.args);
    if in_process {
        command.arg("--in-process");
    }
    let started = Instant::now();
    let out = command.output().context("cannot start offload")?;
    let took = started.elapsed();
    ensure!(
        out.status.success(),
        "{}: {}",
        case.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let outputs = case
        .outputs
        .iter()
        .map(std::fs::read)
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok((took, outputs))
}

fn median(mut values: Vec<f64>) -> f64 {
    examples::median(&mut values).unwrap_or(f64::NAN)
}

/// Median over `rounds` of in-process / isolated wall time, and both medians (s).
fn compare(case: &Case, rounds: usize) -> Result<(f64, f64, f64)> {
    let (_, a) = run(case, true)?;
    let (_, b) = run(case, false)?;
    ensure!(
        a == b,
        "{}: isolated results differ from in-process ones",
        case.name
    );
    let (mut ratios, mut ins, mut isos) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (i, o) = if round % 2 == 0 {
            let i = run(case, true)?.0;
            (i, run(case, false)?.0)
        } else {
            let o = run(case, false)?.0;
            (run(case, true)?.0, o)
        };
        ratios.push(i.as_secs_f64() / o.as_secs_f64());
        ins.push(i.as_secs_f64());
        isos.push(o.as_secs_f64());
    }
    Ok((median(ratios), median(ins), median(isos)))
}

/// Writes `values` as raw little-endian data.
fn write_file<T: Copy>(path: &Path, values: &[T], to_bytes: impl Fn(T) -> Vec<u8>) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|&v| to_bytes(v)).collect();
    Ok(std::fs::write(path, bytes)?)
}

/// `offload package` of example `name`'s `kernel.rs` into `work/NAME.okp`.
fn package_rust(name: &str, work: &Path) -> Result<String> {
    let dir = examples::example_dir(name);
    let pkg = work.join(format!("{name}.okp"));
    examples::offload_package(
        OFFLOAD,
        &dir.join("kernel.rs"),
        &dir.join("manifest.toml"),
        &pkg,
    )?;
    Ok(pkg.display().to_string())
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("OFFLOAD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9)
        .max(1);
    let host = Engine::new(Config::default())?.host().clone();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("isolation-bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let at = |name: &str| work.join(name).display().to_string();
    let n = 1usize << 24;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    write_file(&work.join("x.bin"), &x, |v| v.to_le_bytes().to_vec())?;
    write_file(&work.join("y0.bin"), &vec![1.0f32; n], |v| {
        v.to_le_bytes().to_vec()
    })?;
    let d: Vec<f64> = (0..n).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    write_file(&work.join("d.bin"), &d, |v| v.to_le_bytes().to_vec())?;
    let (width, height) = (2048u32, 1536u32);
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut cases = vec![
        Case {
            name: "saxpy",
            args: [
                strings(&["run", &package_rust("saxpy", &work)?, "--kernel", "saxpy"]),
                strings(&["--items", &n.to_string(), "--arg", "a=2.0"]),
                strings(&["--in", &format!("x={}", at("x.bin"))]),
                strings(&["--inout", &format!("y={}", at("y.bin"))]),
            ]
            .concat(),
            restore: Some((work.join("y0.bin"), work.join("y.bin"))),
            outputs: vec![work.join("y.bin")],
        },
        Case {
            name: "mandelbrot",
            args: [
                strings(&["run", &package_rust("mandelbrot", &work)?]),
                strings(&["--kernel", "mandelbrot"]),
                strings(&[
                    "--items",
                    &(u64::from(width) * u64::from(height)).to_string(),
                ]),
                strings(&["--arg", &format!("width={width}"), "--arg", "max_iter=512"]),
                strings(&["--arg", "x0=-2.2", "--arg", "y0=-1.2"]),
                strings(&["--arg", &format!("step={}", 3.2 / f64::from(width))]),
                strings(&["--out", &format!("iters={}", at("iters.bin"))]),
            ]
            .concat(),
            restore: None,
            outputs: vec![work.join("iters.bin")],
        },
        Case {
            name: "dot",
            args: [
                strings(&["run", &package_rust("dot", &work)?, "--kernel", "dot"]),
                strings(&["--items", &n.to_string()]),
                strings(&["--in", &format!("x={}", at("d.bin"))]),
                strings(&["--in", &format!("y={}", at("d.bin"))]),
                strings(&["--sum", &format!("acc={}", at("acc.bin"))]),
            ]
            .concat(),
            restore: None,
            outputs: vec![work.join("acc.bin")],
        },
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let program = |dir: &str, name: &str| {
        examples::prepare_program(OFFLOAD, &root.join(dir), name, &work.join(name))
    };
    let jacobi = program("examples/jacobi", "jacobi")?;
    let floyd = program("examples/floyd", "floyd")?;
    cases.push(Case {
        name: "jacobi-2d",
        args: strings(&[
            "run",
            &jacobi.display().to_string(),
            "--arg",
            "n=1300",
            "--arg",
            "tsteps=100",
        ]),
        restore: None,
        outputs: vec![work.join("jacobi/grid.bin")],
    });
    cases.push(Case {
        name: "floyd-warshall",
        args: strings(&["run", &floyd.display().to_string(), "--arg", "n=1000"]),
        restore: None,
        outputs: vec![work.join("floyd/paths.bin")],
    });

    println!(
        "isolation: {}\nwhole-process wall time of `offload run`, median of {rounds} alternating rounds, {threads} workers",
        examples::describe_machine(&host)
    );
    println!(
        "{:<16} {:>14} {:>14} {:>22}",
        "job", "in process s", "isolated s", "isolated items/s rel."
    );
    for case in &cases {
        let (ratio, i, o) = compare(case, rounds)?;
        println!("{:<16} {i:>14.4} {o:>14.4} {ratio:>22.3}", case.name);
    }
    per_packet(rounds)
}

/// Per packet: saxpy over 20,000 items in packets of one item on one worker, through the
/// Rust API in this process (no process start in the figure), both modes alternating.
fn per_packet(rounds: usize) -> Result<()> {
    let cluster = Cluster::from_engine(Engine::new(Config::default())?);
    let saxpy = Arc::new(examples::package("saxpy")?);
    let items = 20_000u64;
    let job = || -> Result<Job<'static>> {
        let v = vec![1.0f32; items as usize];
        let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
        let mut x = Buffer::try_zeroed_shared(bytes.len()).context("memory")?;
        x.as_bytes_mut().copy_from_slice(&bytes);
        let y = x.clone();
        let args = vec![
            ArgValue::Scalar(ScalarValue::F32(2.0)),
            ArgValue::Buffer(x),
            ArgValue::Buffer(y),
        ];
        Ok(Job::kernel(Arc::clone(&saxpy), "saxpy", items, args)?)
    };
    let inproc = Options::default().threads(1).packet_items(1);
    let isolated = inproc.clone().isolated(OFFLOAD);
    let time = |options: &Options| -> Result<f64> {
        let mut job = job()?;
        let started = Instant::now();
        cluster.run(&mut job, options)?;
        Ok(started.elapsed().as_secs_f64())
    };
    time(&inproc)?;
    time(&isolated)?;
    let (mut ins, mut isos) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        ins.push(time(&inproc)?);
        isos.push(time(&isolated)?);
    }
    let (i, o) = (median(ins), median(isos));
    println!(
        "{:<16} {:>11.2} µs {:>11.2} µs {:>19.2} µs more (one worker, 20,000 packets of 1 item; API, worker start included)",
        "per packet",
        i / items as f64 * 1e6,
        o / items as f64 * 1e6,
        (o - i) / items as f64 * 1e6
    );
    Ok(())
}
