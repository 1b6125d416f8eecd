//! `programs`: whole-process wall time of offload programs against the same loop nests
//! compiled with `gcc -O3 -march=native -fopenmp`, side by side in one run.
//!
//! - jacobi-2d: `examples/jacobi` (1300 × 1300 f64, 500 time steps = 1000 sweeps);
//! - floyd-warshall: `examples/floyd` (N = 2000: 4000 steps);
//! - gemm: `benches/programs/gemm` (PolyBench EXTRALARGE: 2000 × 2300 × 2600, one
//!   compute step after three initialization steps);
//! - the per-step cost of a program: `benches/programs/empty`, an empty kernel over 2
//!   items, 20,000 steps against 0 steps.
//!
//! Each native program does what the offload program does, file output included: the
//! same initialization, the same loops over the same rows with OpenMP's `parallel for`
//! on every core, and the result written as raw little-endian data. The bench checks
//! once that both outputs agree (integers bit for bit, floats within 1e-12 relative),
//! then times rounds that alternate the two (which one goes first rotates), and reports
//! the median over rounds of native time / offload time: 1.0 is parity, above 1 offload
//! is faster. Times are wall time of the whole process, start-up included, after one
//! untimed run of each (offload's code cache is warm).
//!
//! Run: `cargo bench --bench programs` (release build of `offload`). Knobs:
//! `OFFLOAD_BENCH_ROUNDS` (default 5), `OFFLOAD_BENCH_SCALE=small` for quick sizes.

#[path = "support/examples.rs"]
#[allow(dead_code)] // shared with the JIT benches, which use all of it
mod examples;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

const OFFLOAD: &str = env!("CARGO_BIN_EXE_offload");

const JACOBI_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
static void sweep(uint64_t n, const double *src, double *dst) {
    #pragma omp parallel for schedule(static)
    for (uint64_t i = 0; i < n; i++) {
        const double *row = src + i * n;
        double *out = dst + i * n;
        if (i == 0 || i + 1 == n) { for (uint64_t j = 0; j < n; j++) out[j] = row[j]; continue; }
        out[0] = row[0];
        out[n - 1] = row[n - 1];
        for (uint64_t j = 1; j + 1 < n; j++)
            out[j] = 0.2 * (row[j] + row[j - 1] + row[j + 1] + row[j + n] + row[j - n]);
    }
}
int main(int argc, char **argv) {
    uint64_t n = strtoull(argv[1], 0, 10), tsteps = strtoull(argv[2], 0, 10);
    double *a = malloc(n * n * sizeof(double)), *b = malloc(n * n * sizeof(double));
    #pragma omp parallel for schedule(static)
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t j = 0; j < n; j++) {
            a[i * n + j] = ((double)i * (double)(j + 2) + 2.0) / (double)n;
            b[i * n + j] = ((double)i * (double)(j + 3) + 3.0) / (double)n;
        }
    for (uint64_t t = 0; t < tsteps; t++) { sweep(n, a, b); sweep(n, b, a); }
    FILE *f = fopen(argv[3], "wb");
    if (!f || fwrite(a, sizeof(double), n * n, f) != n * n || fclose(f)) return 1;
    return 0;
}
"#;

const FLOYD_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
int main(int argc, char **argv) {
    uint64_t n = strtoull(argv[1], 0, 10);
    int32_t *path = malloc(n * n * sizeof(int32_t)), *row = malloc(n * sizeof(int32_t));
    #pragma omp parallel for schedule(static)
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t j = 0; j < n; j++) {
            int32_t v = (int32_t)(i * j % 7 + 1);
            if ((i + j) % 13 == 0 || (i + j) % 7 == 0 || (i + j) % 11 == 0) v = 999;
            path[i * n + j] = v;
        }
    for (uint64_t k = 0; k < n; k++) {
        for (uint64_t j = 0; j < n; j++) row[j] = path[k * n + j];
        #pragma omp parallel for schedule(static)
        for (uint64_t i = 0; i < n; i++) {
            int32_t *r = path + i * n;
            int32_t through = r[k];
            for (uint64_t j = 0; j < n; j++) {
                int32_t via = through + row[j];
                r[j] = r[j] < via ? r[j] : via;
            }
        }
    }
    FILE *f = fopen(argv[2], "wb");
    if (!f || fwrite(path, sizeof(int32_t), n * n, f) != n * n || fclose(f)) return 1;
    return 0;
}
"#;

const GEMM_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
int main(int argc, char **argv) {
    uint64_t ni = strtoull(argv[1], 0, 10), nj = strtoull(argv[2], 0, 10), nk = strtoull(argv[3], 0, 10);
    double alpha = 1.5, beta = 1.2;
    double *a = malloc(ni * nk * 8), *b = malloc(nk * nj * 8), *c = malloc(ni * nj * 8);
    #pragma omp parallel for schedule(static)
    for (uint64_t i = 0; i < ni; i++)
        for (uint64_t k = 0; k < nk; k++) a[i * nk + k] = (double)(i * (k + 1) % nk) / (double)nk;
    #pragma omp parallel for schedule(static)
    for (uint64_t k = 0; k < nk; k++)
        for (uint64_t j = 0; j < nj; j++) b[k * nj + j] = (double)(k * (j + 2) % nj) / (double)nj;
    #pragma omp parallel for schedule(static)
    for (uint64_t i = 0; i < ni; i++)
        for (uint64_t j = 0; j < nj; j++) c[i * nj + j] = (double)((i * j + 1) % ni) / (double)ni;
    #pragma omp parallel for schedule(static)
    for (uint64_t i = 0; i < ni; i++) {
        double *row = c + i * nj;
        for (uint64_t j = 0; j < nj; j++) row[j] *= beta;
        for (uint64_t k = 0; k < nk; k++) {
            double t = alpha * a[i * nk + k];
            for (uint64_t j = 0; j < nj; j++) row[j] += t * b[k * nj + j];
        }
    }
    FILE *f = fopen(argv[4], "wb");
    if (!f || fwrite(c, 8, ni * nj, f) != ni * nj || fclose(f)) return 1;
    return 0;
}
"#;

/// One comparison: the offload program and its native twin, with their outputs.
struct Case {
    name: &'static str,
    offload: Command,
    offload_out: PathBuf,
    native: Command,
    native_out: PathBuf,
    /// Element type of the outputs: integers must match exactly, f64 within 1e-12.
    floats: bool,
}

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn prepare_program(dir: &Path, name: &str, work: &Path) -> Result<PathBuf> {
    examples::prepare_program(OFFLOAD, dir, name, work)
}

fn gcc(source: &str, work: &Path, name: &str) -> Result<PathBuf> {
    let c = work.join(format!("{name}.c"));
    std::fs::write(&c, source)?;
    let exe = work.join(format!("{name}-native"));
    let out = Command::new("gcc")
        .args(["-O3", "-march=native", "-fopenmp"])
        .arg(&c)
        .arg("-o")
        .arg(&exe)
        .output()
        .context("cannot start gcc (apt-get install gcc)")?;
    ensure!(
        out.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(exe)
}

fn offload_run(program: &Path, scalars: &[(&str, u64)]) -> Command {
    let mut command = Command::new(OFFLOAD);
    command.arg("run").arg(program);
    for (name, value) in scalars {
        command.arg("--arg").arg(format!("{name}={value}"));
    }
    command
}

fn native_run(exe: &Path, args: &[String], out: &Path) -> Command {
    let mut command = Command::new(exe);
    command.args(args).arg(out);
    command
}

/// Runs `command` and returns its wall time; fails on a non-zero exit.
fn time(command: &mut Command) -> Result<Duration> {
    let started = Instant::now();
    let out = command.output().context("cannot start the program")?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(elapsed)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn same_output(case: &Case) -> Result<()> {
    let (a, b) = (
        std::fs::read(&case.offload_out)?,
        std::fs::read(&case.native_out)?,
    );
    ensure!(a.len() == b.len(), "{}: outputs differ in size", case.name);
    if !case.floats {
        ensure!(a == b, "{}: outputs differ", case.name);
        return Ok(());
    }
    for (k, (x, y)) in a.chunks_exact(8).zip(b.chunks_exact(8)).enumerate() {
        let x = f64::from_le_bytes(x.try_into()?);
        let y = f64::from_le_bytes(y.try_into()?);
        ensure!(
            (x - y).abs() <= 1e-12 * y.abs().max(1e-300),
            "{}: element {k} is {x} against native {y}",
            case.name
        );
    }
    Ok(())
}

/// Median over `rounds` of native time / offload time, and both medians.
fn compare(case: &mut Case, rounds: usize) -> Result<(f64, f64, f64)> {
    // Untimed: compiles the kernels into offload's cache, warms the page cache.
    time(&mut case.offload)?;
    time(&mut case.native)?;
    same_output(case)?;
    let (mut ratios, mut ours, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (o, n) = if round % 2 == 0 {
            let o = time(&mut case.offload)?;
            (o, time(&mut case.native)?)
        } else {
            let n = time(&mut case.native)?;
            (time(&mut case.offload)?, n)
        };
        ratios.push(n.as_secs_f64() / o.as_secs_f64());
        ours.push(o.as_secs_f64());
        theirs.push(n.as_secs_f64());
    }
    Ok((median(ratios), median(ours), median(theirs)))
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; anything else (a filter) is ignored here.
    let rounds: usize = std::env::var("OFFLOAD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let small = std::env::var("OFFLOAD_BENCH_SCALE").is_ok_and(|v| v == "small");
    let (jn, jt, fw, (gi, gj, gk)) = if small {
        (400, 50, 400, (300, 330, 360))
    } else {
        (1300, 500, 2000, (2000, 2300, 2600))
    };
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("programs-bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    let jacobi = prepare_program(&repo("examples/jacobi"), "jacobi", &work.join("jacobi"))?;
    let floyd = prepare_program(&repo("examples/floyd"), "floyd", &work.join("floyd"))?;
    let gemm = prepare_program(&repo("benches/programs/gemm"), "gemm", &work.join("gemm"))?;
    let empty = prepare_program(
        &repo("benches/programs/empty"),
        "empty",
        &work.join("empty"),
    )?;
    let jacobi_native = gcc(JACOBI_C, &work, "jacobi")?;
    let floyd_native = gcc(FLOYD_C, &work, "floyd")?;
    let gemm_native = gcc(GEMM_C, &work, "gemm")?;

    let mut cases = vec![
        Case {
            name: "jacobi-2d",
            offload: offload_run(&jacobi, &[("n", jn), ("tsteps", jt)]),
            offload_out: work.join("jacobi/grid.bin"),
            native: native_run(
                &jacobi_native,
                &[jn.to_string(), jt.to_string()],
                &work.join("jacobi-native.bin"),
            ),
            native_out: work.join("jacobi-native.bin"),
            floats: true,
        },
        Case {
            name: "floyd-warshall",
            offload: offload_run(&floyd, &[("n", fw)]),
            offload_out: work.join("floyd/paths.bin"),
            native: native_run(
                &floyd_native,
                &[fw.to_string()],
                &work.join("floyd-native.bin"),
            ),
            native_out: work.join("floyd-native.bin"),
            floats: false,
        },
        Case {
            name: "gemm",
            offload: offload_run(&gemm, &[("ni", gi), ("nj", gj), ("nk", gk)]),
            offload_out: work.join("gemm/c.bin"),
            native: native_run(
                &gemm_native,
                &[gi.to_string(), gj.to_string(), gk.to_string()],
                &work.join("gemm-native.bin"),
            ),
            native_out: work.join("gemm-native.bin"),
            floats: true,
        },
    ];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "programs: whole-process wall time, median of {rounds} alternating rounds, {threads} cores"
    );
    println!(
        "{:<16} {:>12} {:>12} {:>16}",
        "program", "offload s", "gcc s", "native/offload"
    );
    for case in &mut cases {
        let (ratio, ours, theirs) = compare(case, rounds)?;
        println!(
            "{:<16} {ours:>12.3} {theirs:>12.3} {ratio:>16.3}",
            case.name
        );
    }

    // Per-step cost: the same process with 20,000 steps and with none, alternating.
    let steps = 20_000u64;
    let mut with = offload_run(&empty, &[("steps", steps)]);
    let mut without = offload_run(&empty, &[("steps", 0)]);
    time(&mut with)?;
    time(&mut without)?;
    let mut per_step = Vec::new();
    for _ in 0..rounds {
        let a = time(&mut with)?;
        let b = time(&mut without)?;
        per_step.push((a.as_secs_f64() - b.as_secs_f64()) / steps as f64 * 1e6);
    }
    println!(
        "{:<16} {:>12.2} µs per step (empty kernel over 2 items, {steps} steps against 0)",
        "per-step cost",
        median(per_step)
    );
    Ok(())
}
