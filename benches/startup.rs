//! `startup`: whole-process wall time of `offload --version` and of a one-packet `offload
//! run` whose kernel is in the code cache, against a trivial C program doing the same
//! (printing a line; reading the run's inputs and writing its output the way offload
//! does: a temporary file beside it, flushed with fsync, renamed into place), side by
//! side in one run. Rounds alternate the two and the medians are reported, with the
//! difference offload - C (issue 13's goals: at most 3 ms and 5 ms). The run is timed
//! as `offload run` does it (its kernel in an isolated worker process) and, once per
//! round too, with `--in-process`, which shows what starting the worker costs.
//!
//! Run: `cargo bench --bench startup`. `OFFLOAD_BENCH_ROUNDS` (default 41): each round
//! runs each program once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

const OFFLOAD: &str = env!("CARGO_BIN_EXE_offload");

/// What the C side does for `--version` and for the run (saxpy over 1 item).
const REFERENCE_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static float *slurp(const char *path, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) exit(2);
    float *v = malloc(n * sizeof *v);
    if (fread(v, sizeof *v, n, f) != n) exit(3);
    fclose(f);
    return v;
}
int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--version") == 0) { puts("reference 0.1.0"); return 0; }
    size_t n = strtoull(argv[1], 0, 10);
    float a = strtof(argv[2], 0);
    float *x = slurp(argv[3], n), *y = slurp(argv[4], n);
    for (size_t i = 0; i < n; i++) y[i] = a * x[i] + y[i];
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[4]);
    FILE *f = fopen(tmp, "wb");
    if (!f || fwrite(y, sizeof *y, n, f) != n || fflush(f) || fsync(fileno(f))) return 4;
    fclose(f);
    return rename(tmp, argv[4]) ? 5 : 0;
}
"#;

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn timed(command: &mut Command) -> Result<Duration> {
    let started = Instant::now();
    let out = command.output()?;
    let took = started.elapsed();
    ensure!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("OFFLOAD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(41)
        .max(1);
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("startup-bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let cache = work.join("cache");
    let c = work.join("reference.c");
    std::fs::write(&c, REFERENCE_C)?;
    let reference = work.join("reference");
    let gcc = Command::new("gcc")
        .args(["-O2"])
        .arg(&c)
        .arg("-o")
        .arg(&reference)
        .output()
        .context("cannot start gcc (apt-get install gcc)")?;
    ensure!(
        gcc.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&gcc.stderr)
    );
    let pkg = work.join("saxpy.okp");
    let packaged = Command::new(OFFLOAD)
        .arg("package")
        .arg(repo("examples/saxpy/kernel.rs"))
        .arg("-o")
        .arg(&pkg)
        .output()?;
    ensure!(
        packaged.status.success(),
        "offload package: {}",
        String::from_utf8_lossy(&packaged.stderr)
    );
    let (x, y, y_ref) = (
        work.join("x.bin"),
        work.join("y.bin"),
        work.join("y-ref.bin"),
    );
    std::fs::write(&x, 1.0f32.to_le_bytes())?;
    std::fs::write(&y, 2.0f32.to_le_bytes())?;
    std::fs::write(&y_ref, 2.0f32.to_le_bytes())?;
    let y_in_process = work.join("y-in-process.bin");
    std::fs::write(&y_in_process, 2.0f32.to_le_bytes())?;
    let offload_run_in = |in_process: bool| {
        let y = if in_process { &y_in_process } else { &y };
        let mut command = Command::new(OFFLOAD);
        command
            .env("OFFLOAD_CACHE_DIR", &cache)
            .arg("run")
            .arg(&pkg)
            .args([
                "--kernel", "saxpy", "--items", "1", "--arg", "a=0.5", "--in",
            ])
            .arg(format!("x={}", x.display()))
            .arg("--inout")
            .arg(format!("y={}", y.display()));
        if in_process {
            command.arg("--in-process");
        }
        command
    };
    let offload_run = || offload_run_in(false);
    let reference_run = || {
        let mut command = Command::new(&reference);
        command.args(["1", "0.5"]).arg(&x).arg(&y_ref);
        command
    };
    let version = |program: &Path| {
        let mut command = Command::new(program);
        command.env("OFFLOAD_CACHE_DIR", &cache).arg("--version");
        command
    };
    // Untimed: the kernel goes into the code cache (and the host record beside it).
    timed(&mut offload_run())?;
    timed(&mut offload_run_in(true))?;
    timed(&mut reference_run())?;
    let (mut ov, mut cv, mut or, mut cr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut oi = Vec::new();
    for round in 0..rounds {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        oi.push(ms(timed(&mut offload_run_in(true))?));
        if round % 2 == 0 {
            ov.push(ms(timed(&mut version(Path::new(OFFLOAD)))?));
            cv.push(ms(timed(&mut version(&reference))?));
            or.push(ms(timed(&mut offload_run())?));
            cr.push(ms(timed(&mut reference_run())?));
        } else {
            cv.push(ms(timed(&mut version(&reference))?));
            ov.push(ms(timed(&mut version(Path::new(OFFLOAD)))?));
            cr.push(ms(timed(&mut reference_run())?));
            or.push(ms(timed(&mut offload_run())?));
        }
    }
    ensure!(
        std::fs::read(&y)? == std::fs::read(&y_ref)?,
        "offload and the C program disagree on saxpy"
    );
    ensure!(
        std::fs::read(&y_in_process)? == std::fs::read(&y_ref)?,
        "offload --in-process and the C program disagree on saxpy"
    );
    let (ov, cv, or, cr, oi) = (median(ov), median(cv), median(or), median(cr), median(oi));
    println!("startup: whole-process wall time, median of {rounds} alternating rounds");
    println!(
        "offload --version {ov:.2} ms, C {cv:.2} ms: +{:.2} ms (goal <= 3 ms)",
        ov - cv
    );
    println!(
        "one-packet run of a cached kernel {or:.2} ms, C {cr:.2} ms: +{:.2} ms (goal <= 5 ms)",
        or - cr
    );
    println!(
        "the same run --in-process {oi:.2} ms: +{:.2} ms over C (the isolated worker's start: {:.2} ms)",
        oi - cr,
        or - oi
    );
    Ok(())
}
