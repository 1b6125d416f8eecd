//! `offload compile --target` emits objects for other architectures: linked with a C
//! harness by Debian's cross compilers and run under qemu-user, they compute exactly what
//! the x86_64 build computes (aarch64: another ISA; s390x: big-endian).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{offload, repo_path};

use crate::references::mandelbrot_ref;

/// Drives the three example kernels in a fixed order and prints every result exactly
/// (`%a` for floats), so outputs of different machines compare as text.
const HARNESS: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

void saxpy(uint64_t i, float a, const float *x, float *y);
void mandelbrot(uint64_t i, uint32_t width, uint32_t max_iter, double x0, double y0,
                double step, uint32_t *iters);
void dot(uint64_t i, const double *x, const double *y, double *acc);

/* Packages with panic paths call this; the embedding program defines it. */
void offload_panic(int32_t code) {
    fprintf(stderr, "kernel panicked with code %d\n", code);
    exit(3);
}

enum { N = 1000, W = 64, H = 48 };

int main(void) {
    static float x[N], y[N];
    static double dx[N], dy[N];
    static uint32_t iters[W * H];
    for (int i = 0; i < N; i++) {
        x[i] = (float)i * 0.25f - 17.0f;
        y[i] = 1.0f / (float)(i + 1);
        dx[i] = (double)i / 7.0;
        dy[i] = 3.0 - (double)i / 11.0;
    }
    for (uint64_t i = 0; i < N; i++) saxpy(i, 1.5f, x, y);
    for (int i = 0; i < N; i++) printf("saxpy %d %a\n", i, y[i]);
    for (uint64_t i = 0; i < W * H; i++) mandelbrot(i, W, 500, -2.2, -1.2, 0.05, iters);
    for (int i = 0; i < W * H; i++) printf("mandelbrot %d %u\n", i, iters[i]);
    double acc = 0.0;
    for (uint64_t i = 0; i < N; i++) dot(i, dx, dy, &acc);
    printf("dot %a\n", acc);
    return 0;
}
"#;

struct Target {
    triple: &'static str,
    gcc: &'static str,
    runner: Option<&'static str>,
}

const NATIVE: Target = Target {
    triple: "x86_64-unknown-linux-gnu",
    gcc: "cc",
    runner: None,
};
const AARCH64: Target = Target {
    triple: "aarch64-unknown-linux-gnu",
    gcc: "aarch64-linux-gnu-gcc",
    runner: Some("qemu-aarch64-static"),
};
const S390X: Target = Target {
    triple: "s390x-unknown-linux-gnu",
    gcc: "s390x-linux-gnu-gcc",
    runner: Some("qemu-s390x-static"),
};

/// Whether `tool` can be started. Outside CI a missing tool skips the test with a
/// printed reason; under CI (`CI=true`) it fails, because the setup installs them.
fn require(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let under_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !under_ci,
            "{tool} is missing under CI: the setup script installs it"
        );
        eprintln!("skipping cross-architecture test: {tool} not installed (run scripts/setup.sh)");
    }
    found
}

fn packages(dir: &Path) -> Vec<PathBuf> {
    ["saxpy", "mandelbrot", "dot"]
        .iter()
        .map(|name| {
            let pkg = dir.join(format!("{name}.okp"));
            let out = offload([
                "package".as_ref(),
                repo_path(&format!("examples/{name}/kernel.rs")).as_os_str(),
                "-o".as_ref(),
                pkg.as_os_str(),
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            pkg
        })
        .collect()
}

/// Compiles the packages for `target`, links them with the harness and runs it.
fn run_harness(target: &Target, packages: &[PathBuf], dir: &Path) -> String {
    let work = dir.join(target.triple);
    std::fs::create_dir_all(&work).expect("work dir");
    let mut objects = Vec::new();
    for pkg in packages {
        let object = work.join(
            pkg.file_stem()
                .map(|s| format!("{}.o", s.to_string_lossy()))
                .unwrap_or_default(),
        );
        let out = offload([
            "compile".as_ref(),
            pkg.as_os_str(),
            "--target".as_ref(),
            target.triple.as_ref(),
            "-o".as_ref(),
            object.as_os_str(),
        ]);
        assert!(
            out.status.success(),
            "compile for {}: {}",
            target.triple,
            String::from_utf8_lossy(&out.stderr)
        );
        objects.push(object);
    }
    let harness = work.join("harness.c");
    std::fs::write(&harness, HARNESS).expect("harness source");
    let exe = work.join("harness");
    let linked = Command::new(target.gcc)
        .arg("-static")
        .arg("-O1")
        .arg(&harness)
        .args(&objects)
        .arg("-lm")
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("start the C compiler");
    assert!(
        linked.status.success(),
        "{} failed: {}",
        target.gcc,
        String::from_utf8_lossy(&linked.stderr)
    );
    let ran = match target.runner {
        Some(runner) => Command::new(runner).arg(&exe).output(),
        None => Command::new(&exe).output(),
    }
    .expect("start the harness");
    assert!(
        ran.status.success(),
        "harness for {} failed: {}",
        target.triple,
        String::from_utf8_lossy(&ran.stderr)
    );
    String::from_utf8_lossy(&ran.stdout).into_owned()
}

fn check_against_native(target: &Target) {
    if !require(target.gcc) || !require(target.runner.unwrap_or("cc")) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let packages = packages(dir.path());
    let native = run_harness(&NATIVE, &packages, dir.path());
    // The x86_64 run itself agrees with the Rust reference for the integer kernel.
    let expected = mandelbrot_ref::mandelbrot(64, 48, 500, -2.2, -1.2, 0.05);
    let native_iters: Vec<u32> = native
        .lines()
        .filter_map(|l| l.strip_prefix("mandelbrot "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert_eq!(native_iters, expected);
    let foreign = run_harness(target, &packages, dir.path());
    assert_eq!(native.lines().count(), foreign.lines().count());
    for (n, f) in native.lines().zip(foreign.lines()) {
        assert_eq!(n, f, "{} differs from x86_64", target.triple);
    }
}

#[test]
fn aarch64_objects_match_x86_64_under_qemu() {
    check_against_native(&AARCH64);
}

#[test]
fn s390x_big_endian_objects_match_x86_64_under_qemu() {
    check_against_native(&S390X);
}

#[test]
fn unknown_target_triple_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let packages = packages(dir.path());
    let out = offload([
        "compile".as_ref(),
        packages[0].as_os_str(),
        "--target".as_ref(),
        "pdp11-unknown-nowhere".as_ref(),
        "-o".as_ref(),
        dir.path().join("x.o").as_os_str(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown target `pdp11-unknown-nowhere`"),
        "{stderr}"
    );
}
