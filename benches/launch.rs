//! `launch`: what `#[offload::kernel]` launches cost on the local node, and what they
//! deliver against the strongest plain-Rust baseline.
//!
//! 1. Overhead: `saxpy::launch_with` of a tiny job (1 and 64 items) on the local node,
//!    repeated; the kernel is compiled once before timing (its first-launch compile time
//!    is printed separately). Reported as median and mean µs per launch.
//! 2. Throughput: the macro-marked kernels `poly` (compute-bound: 16-term Horner per f64
//!    item) and `saxpy` (memory-bound) of `examples/macro-kernels`, launched through
//!    offload on every core, against the same Rust functions called directly in a loop on
//!    every core with rayon (`par_iter_mut`), and serially. Both sides produce the same
//!    output, checked before timing. The offload figure includes everything a launch does
//!    (argument checks, copying inputs into job buffers and results back, scheduling).
//!
//! Run: `cargo bench --bench launch`. Prints a Markdown table; figures for this machine
//! are in `docs/macros.md`.

#[allow(dead_code)]
#[path = "../examples/macro-kernels/src/kernels.rs"]
mod kernels;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use offload::{Cluster, Config, Kernel, Options};
use rayon::prelude::*;

/// Median and mean of `reps` timed runs of `f`, after `warmup` untimed ones.
fn time(
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(Duration, Duration)> {
    for _ in 0..warmup {
        f()?;
    }
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let started = Instant::now();
        f()?;
        samples.push(started.elapsed());
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / reps as u32;
    Ok((samples[reps / 2], mean))
}

fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let built = offload_build::package_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/macro-kernels/src/kernels.rs"),
        dir.path(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let package = Arc::new(built.package);
    let cluster = Cluster::local_with(Config::default().cache_dir(dir.path().join("cache")))?;
    let saxpy = Kernel::new(package.clone(), "saxpy")?;
    let poly = Kernel::new(package, "poly")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "local node: {cores} cores; rayon: {} threads",
        rayon::current_num_threads()
    );

    // 1. Launch overhead.
    let first = {
        let (x, mut y) = (vec![1.0f32; 1], vec![0.0f32; 1]);
        kernels::saxpy::launch_with(&cluster, &saxpy, &Options::default(), 1, 2.0, &x, &mut y)?
    };
    println!(
        "first launch: kernel {} in {:.1} ms\n",
        first
            .code_origin
            .map_or("compiled on the nodes", |o| o.describe()),
        first.compile_time.as_secs_f64() * 1e3
    );
    println!("| launch of a tiny job | median µs | mean µs |\n|---|---|---|");
    for items in [1usize, 64] {
        let x = vec![1.0f32; items];
        let mut y = vec![0.0f32; items];
        let (median, mean) = time(50, 1000, || {
            kernels::saxpy::launch_with(
                &cluster,
                &saxpy,
                &Options::default(),
                items,
                2.0,
                &x,
                &mut y,
            )?;
            Ok(())
        })?;
        println!(
            "| saxpy, {items} item(s) | {:.1} | {:.1} |",
            median.as_secs_f64() * 1e6,
            mean.as_secs_f64() * 1e6
        );
    }

    // 2. Throughput against direct Rust.
    println!("\n| kernel | items | variant | median ms | Mitems/s | vs rayon |\n|---|---|---|---|---|---|");
    let n = 1 << 22;
    let coeffs = values(16, 1);
    let x = values(n, 2);
    let mut expected = vec![0.0; n];
    for i in 0..n {
        kernels::poly(i, &coeffs, &x[i..i + 1], &mut expected[i..i + 1]);
    }
    let mut y = vec![0.0; n];
    kernels::poly::launch_with(&cluster, &poly, &Options::default(), n, &coeffs, &x, &mut y)?;
    ensure!(
        y == expected,
        "poly through offload differs from direct Rust"
    );
    let mut rows = Vec::new();
    // How much of a launch is running packets (the rest: copying arguments in and
    // results out, checks, the code-cache lookup, starting the workers).
    let mut packet_time = Vec::new();
    rows.push((
        "offload launch",
        time(1, 9, || {
            let report = kernels::poly::launch_with(
                &cluster,
                &poly,
                &Options::default(),
                n,
                &coeffs,
                &x,
                &mut y,
            )?;
            packet_time.push(report.run_time);
            Ok(())
        })?,
    ));
    rows.push((
        "offload, 1 thread",
        time(1, 9, || {
            kernels::poly::launch_with(
                &cluster,
                &poly,
                &Options::default().threads(1),
                n,
                &coeffs,
                &x,
                &mut y,
            )?;
            Ok(())
        })?,
    ));
    rows.push((
        "rayon direct",
        time(1, 9, || {
            y.par_iter_mut()
                .zip(x.par_iter())
                .enumerate()
                .for_each(|(i, (yi, xi))| {
                    kernels::poly(
                        i,
                        &coeffs,
                        std::slice::from_ref(xi),
                        std::slice::from_mut(yi),
                    )
                });
            Ok(())
        })?,
    ));
    rows.push((
        "serial direct",
        time(0, 3, || {
            for i in 0..n {
                kernels::poly(i, &coeffs, &x[i..i + 1], &mut y[i..i + 1]);
            }
            Ok(())
        })?,
    ));
    ensure!(y == expected, "poly results changed while timing");
    print_rows("poly (16 terms, f64)", n, &rows);
    print_packet_time("poly", &mut packet_time);

    let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let y0: Vec<f32> = values(n, 3).iter().map(|&v| v as f32).collect();
    let mut expected = y0.clone();
    for i in 0..n {
        kernels::saxpy(i, 0.5, &xf[i..i + 1], &mut expected[i..i + 1]);
    }
    let mut yf = y0.clone();
    kernels::saxpy::launch_with(&cluster, &saxpy, &Options::default(), n, 0.5, &xf, &mut yf)?;
    ensure!(
        yf == expected,
        "saxpy through offload differs from direct Rust"
    );
    // saxpy updates y in place: each timed run starts from a fresh copy of y0, outside
    // the timing, so every variant does the same arithmetic.
    let mut rows = Vec::new();
    let mut packet_time = Vec::new();
    for variant in ["offload launch", "rayon direct", "serial direct"] {
        let mut samples = Vec::new();
        for _ in 0..7 {
            yf.copy_from_slice(&y0);
            let started = Instant::now();
            match variant {
                "offload launch" => {
                    let report = kernels::saxpy::launch_with(
                        &cluster,
                        &saxpy,
                        &Options::default(),
                        n,
                        0.5,
                        &xf,
                        &mut yf,
                    )
                    .context("saxpy launch")?;
                    packet_time.push(report.run_time);
                }
                "rayon direct" => {
                    yf.par_iter_mut()
                        .zip(xf.par_iter())
                        .enumerate()
                        .for_each(|(i, (yi, xi))| {
                            kernels::saxpy(
                                i,
                                0.5,
                                std::slice::from_ref(xi),
                                std::slice::from_mut(yi),
                            )
                        })
                }
                _ => {
                    for i in 0..n {
                        kernels::saxpy(i, 0.5, &xf[i..i + 1], &mut yf[i..i + 1]);
                    }
                }
            }
            samples.push(started.elapsed());
            ensure!(yf == expected, "{variant}: saxpy result differs");
        }
        samples.sort();
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        rows.push((variant, (samples[samples.len() / 2], mean)));
    }
    print_rows("saxpy (f32)", n, &rows);
    print_packet_time("saxpy", &mut packet_time);
    Ok(())
}

fn print_packet_time(kernel: &str, samples: &mut [Duration]) {
    samples.sort();
    if let Some(median) = samples.get(samples.len() / 2) {
        println!(
            "\n{kernel}: offload launches spent a median {:.2} ms running packets\n",
            median.as_secs_f64() * 1e3
        );
    }
}

fn print_rows(kernel: &str, n: usize, rows: &[(&str, (Duration, Duration))]) {
    let rayon = rows
        .iter()
        .find(|r| r.0 == "rayon direct")
        .map_or(f64::NAN, |r| r.1 .0.as_secs_f64());
    for (variant, (median, _)) in rows {
        let s = median.as_secs_f64();
        println!(
            "| {kernel} | {n} | {variant} | {:.2} | {:.1} | {:.2}x |",
            s * 1e3,
            n as f64 / s / 1e6,
            rayon / s
        );
    }
}
