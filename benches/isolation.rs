//! `isolation`: local runs in isolated worker processes (`Options::isolated`, what `offload
//! run` uses) against the same jobs in process, side by side in one process.
//!
//! - Example kernels through the Rust API, on every core, buffers in shared memory (as
//!   `offload run` allocates them): saxpy (memory-bound, 2^24 f32), mandelbrot
//!   (compute-bound, 2048 × 1536, 512 iterations), dot (a `sum` buffer, 2^24 f64).
//! - The example programs, read with `Job::from_program_file`: jacobi-2d (1300², 100
//!   time steps = 200 sweeps) and floyd-warshall (N = 1000: 2000 steps).
//! - Per packet: saxpy over 20,000 items in packets of one item on one worker, wall time
//!   per packet in each mode.
//!
//! Rounds alternate the two modes (which goes first rotates); the figure is the median
//! over rounds of in-process time / isolated time, i.e. isolated items/s relative to in
//! process (issue 13's goal: ≥ 0.97), after one untimed run of each (workers start per
//! job: their start is inside every isolated time).
//!
//! Run: `cargo bench --bench isolation`. `OFFLOAD_BENCH_ROUNDS` (default 9).

#[path = "support/examples.rs"]
#[allow(dead_code)]
mod examples;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use offload::{ArgValue, Buffer, Cluster, Config, Engine, Job, Options, ScalarValue};

const OFFLOAD: &str = env!("CARGO_BIN_EXE_offload");

/// A shared buffer holding `values` as little-endian bytes.
fn shared<T: Copy>(values: &[T], to_bytes: impl Fn(T) -> Vec<u8>) -> Result<Buffer> {
    let bytes: Vec<u8> = values.iter().flat_map(|&v| to_bytes(v)).collect();
    let mut buffer = Buffer::try_zeroed_shared(bytes.len()).context("memory")?;
    buffer.as_bytes_mut().copy_from_slice(&bytes);
    Ok(buffer)
}

/// One job to time: how to make it and what its results look like (to check both modes
/// agree).
struct Case {
    name: &'static str,
    make: Box<dyn Fn() -> Result<Job<'static>>>,
}

fn run(cluster: &Cluster, case: &Case, options: &Options) -> Result<(Duration, Vec<Vec<u8>>)> {
    let mut job = (case.make)()?;
    let started = Instant::now();
    cluster
        .run(&mut job, options)
        .with_context(|| case.name.to_string())?;
    let took = started.elapsed();
    let results = job
        .into_values()
        .into_iter()
        .filter_map(|v| match v {
            ArgValue::Buffer(b) => Some(b.as_bytes().to_vec()),
            ArgValue::Scalar(_) => None,
        })
        .collect();
    Ok((took, results))
}

fn median(mut values: Vec<f64>) -> f64 {
    examples::median(&mut values).unwrap_or(f64::NAN)
}

/// Median over `rounds` of in-process / isolated wall time, and both medians (s).
fn compare(
    cluster: &Cluster,
    case: &Case,
    inproc: &Options,
    isolated: &Options,
    rounds: usize,
) -> Result<(f64, f64, f64)> {
    let (_, a) = run(cluster, case, inproc)?;
    let (_, b) = run(cluster, case, isolated)?;
    ensure!(
        a == b,
        "{}: isolated results differ from in-process ones",
        case.name
    );
    let (mut ratios, mut ins, mut isos) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (i, o) = if round % 2 == 0 {
            let i = run(cluster, case, inproc)?.0;
            (i, run(cluster, case, isolated)?.0)
        } else {
            let o = run(cluster, case, isolated)?.0;
            (run(cluster, case, inproc)?.0, o)
        };
        ratios.push(i.as_secs_f64() / o.as_secs_f64());
        ins.push(i.as_secs_f64());
        isos.push(o.as_secs_f64());
    }
    Ok((median(ratios), median(ins), median(isos)))
}

/// `offload package DIR/kernel.c` into `work`, and the program file beside it.
fn program(dir: &Path, name: &str, work: &Path) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(work)?;
    let status = Command::new(OFFLOAD)
        .arg("package")
        .arg(dir.join("kernel.c"))
        .arg("--manifest")
        .arg(dir.join("manifest.toml"))
        .arg("-o")
        .arg(work.join(format!("{name}.okp")))
        .status()?;
    ensure!(status.success(), "packaging {name} failed");
    let file = work.join("program.toml");
    std::fs::copy(dir.join("program.toml"), &file)?;
    Ok(file)
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("OFFLOAD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9)
        .max(1);
    let engine = Engine::new(Config::default())?;
    let host = engine.host().clone();
    let cluster = Cluster::from_engine(engine);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let inproc = Options::default().threads(threads);
    let isolated = Options::default().threads(threads).isolated(OFFLOAD);

    let saxpy = Arc::new(examples::package("saxpy")?);
    let mandelbrot = Arc::new(examples::package("mandelbrot")?);
    let dot = Arc::new(examples::package("dot")?);
    let n = 1usize << 24;
    let mut cases: Vec<Case> = Vec::new();
    {
        let package = Arc::clone(&saxpy);
        cases.push(Case {
            name: "saxpy",
            make: Box::new(move || {
                let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
                let y = vec![1.0f32; n];
                let args = vec![
                    ArgValue::Scalar(ScalarValue::F32(2.0)),
                    ArgValue::Buffer(shared(&x, |v| v.to_le_bytes().to_vec())?),
                    ArgValue::Buffer(shared(&y, |v| v.to_le_bytes().to_vec())?),
                ];
                Ok(Job::kernel(Arc::clone(&package), "saxpy", n as u64, args)?)
            }),
        });
    }
    {
        let package = Arc::clone(&mandelbrot);
        let (width, height) = (2048u32, 1536u32);
        cases.push(Case {
            name: "mandelbrot",
            make: Box::new(move || {
                let items = u64::from(width) * u64::from(height);
                let args = vec![
                    ArgValue::Scalar(ScalarValue::U32(width)),
                    ArgValue::Scalar(ScalarValue::U32(512)),
                    ArgValue::Scalar(ScalarValue::F64(-2.2)),
                    ArgValue::Scalar(ScalarValue::F64(-1.2)),
                    ArgValue::Scalar(ScalarValue::F64(3.2 / f64::from(width))),
                    ArgValue::Buffer(
                        Buffer::try_zeroed_shared(items as usize * 4).context("memory")?,
                    ),
                ];
                Ok(Job::kernel(
                    Arc::clone(&package),
                    "mandelbrot",
                    items,
                    args,
                )?)
            }),
        });
    }
    {
        let package = Arc::clone(&dot);
        cases.push(Case {
            name: "dot",
            make: Box::new(move || {
                let x: Vec<f64> = (0..n).map(|i| 1.0 / (i as f64 + 1.0)).collect();
                let args = vec![
                    ArgValue::Buffer(shared(&x, |v| v.to_le_bytes().to_vec())?),
                    ArgValue::Buffer(shared(&x, |v| v.to_le_bytes().to_vec())?),
                    ArgValue::Buffer(Buffer::try_zeroed_shared(8).context("memory")?),
                ];
                Ok(Job::kernel(Arc::clone(&package), "dot", n as u64, args)?)
            }),
        });
    }
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("isolation-bench");
    let _ = std::fs::remove_dir_all(&work);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let jacobi = program(
        &root.join("examples/jacobi"),
        "jacobi",
        &work.join("jacobi"),
    )?;
    let floyd = program(&root.join("examples/floyd"), "floyd", &work.join("floyd"))?;
    for (name, file, args) in [
        ("jacobi-2d", jacobi, vec![("n", 1300u64), ("tsteps", 100)]),
        ("floyd-warshall", floyd, vec![("n", 1000u64)]),
    ] {
        cases.push(Case {
            name,
            make: Box::new(move || {
                let given: Vec<(String, offload::job::Number)> = args
                    .iter()
                    .map(|&(k, v)| (k.to_string(), offload::job::Number::Int(i128::from(v))))
                    .collect();
                Ok(Job::from_program_file_with(&file, &given)?)
            }),
        });
    }

    println!(
        "isolation: {}\nwall time, median of {rounds} alternating rounds, {threads} workers",
        examples::describe_machine(&host)
    );
    println!(
        "{:<16} {:>14} {:>14} {:>22}",
        "job", "in process s", "isolated s", "isolated items/s rel."
    );
    for case in &cases {
        let (ratio, i, o) = compare(&cluster, case, &inproc, &isolated, rounds)?;
        println!("{:<16} {i:>14.4} {o:>14.4} {ratio:>22.3}", case.name);
    }

    // Per packet: one worker, packets of one item.
    let items = 20_000u64;
    let tiny = Case {
        name: "per packet",
        make: Box::new(move || {
            let v = vec![1.0f32; items as usize];
            let args = vec![
                ArgValue::Scalar(ScalarValue::F32(2.0)),
                ArgValue::Buffer(shared(&v, |x| x.to_le_bytes().to_vec())?),
                ArgValue::Buffer(shared(&v, |x| x.to_le_bytes().to_vec())?),
            ];
            Ok(Job::kernel(Arc::clone(&saxpy), "saxpy", items, args)?)
        }),
    };
    let one = |o: Options| o.threads(1).packet_items(1);
    let (_, i, o) = compare(
        &cluster,
        &tiny,
        &one(Options::default()),
        &one(Options::default().isolated(OFFLOAD)),
        rounds,
    )?;
    println!(
        "{:<16} {:>11.2} µs {:>11.2} µs {:>19.2} µs more",
        "per packet",
        i / items as f64 * 1e6,
        o / items as f64 * 1e6,
        (o - i) / items as f64 * 1e6
    );
    Ok(())
}
