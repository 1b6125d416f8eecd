//! Every example in `examples/` (and each C variant) through the real CLI:
//! `offload package` + `offload run` on inputs written as raw little-endian files, with the
//! outputs compared to the example's native Rust reference (`examples/*/reference.rs`).
//!
//! Integers must match bit for bit. Floats get a tolerance derived from how far a correct
//! compiler may legally move them: clang contracts `a*b + c` into one FMA in C kernels
//! (C allows it by default; Rust never contracts), and a packet-wise `sum` buffer adds the
//! same terms in a different order than a sequential loop. No tolerance covers a JIT that
//! reassociates Rust float code on its own: that would be a bug.

use crate::references::{
    dot_ref, logcrunch_ref, mandelbrot_ref, nbody_ref, raytrace_ref, saxpy_ref,
};
use std::path::{Path, PathBuf};

use crate::common::{package, read_le, repo_path, write_le, Run};

/// Packages `examples/NAME/FILE` with `examples/NAME/manifest.toml` into `dir`.
fn package_example(dir: &Path, name: &str, file: &str) -> PathBuf {
    let pkg_name = format!("{name}-{}", file.replace('.', "-"));
    package(
        &repo_path(&format!("examples/{name}/{file}")),
        &repo_path(&format!("examples/{name}/manifest.toml")),
        dir,
        &pkg_name,
    )
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// Fails with the first few offending elements unless `|got[i] - want[i]| <= tol(i)` for all
/// `i`; `what` names the buffer in the message.
fn assert_within<T>(what: &str, got: &[T], want: &[T], tol: impl Fn(usize) -> f64)
where
    T: Copy + Into<f64>,
{
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<String> = (0..got.len())
        .filter(|&i| {
            let (g, w): (f64, f64) = (got[i].into(), want[i].into());
            // A NaN anywhere is a failure: a comparison with NaN is false.
            let within = (g - w).abs() <= tol(i);
            !within
        })
        .map(|i| {
            let (g, w): (f64, f64) = (got[i].into(), want[i].into());
            format!("[{i}] got {g:e}, want {w:e}, tolerance {:e}", tol(i))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} elements out of tolerance, first: {:#?}",
        bad.len(),
        got.len(),
        &bad[..bad.len().min(5)]
    );
}

/// Root mean square of `v`: the magnitude scale of a whole array.
fn rms(v: &[f32]) -> f64 {
    (v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / v.len() as f64).sqrt()
}

/// saxpy over 300_007 elements (a prime count, so packets cannot all be the same size).
fn check_saxpy(file: &str) {
    let dir = tempdir();
    let pkg = package_example(dir.path(), "saxpy", file);
    let n = 300_007;
    let a = 1.7f32;
    let (x, y0) = saxpy_ref::inputs(n, 1);
    let (xf, yf) = (dir.path().join("x.bin"), dir.path().join("y.bin"));
    write_le(&xf, &x);
    write_le(&yf, &y0);
    Run::new(&pkg, "saxpy", n as u64)
        .arg("a", a)
        .buffer("in", "x", &xf)
        .buffer("inout", "y", &yf)
        .ok();
    let got: Vec<f32> = read_le(&yf);
    let mut want = y0.clone();
    saxpy_ref::saxpy(a, &x, &mut want);
    // Unfused a*x+y rounds twice, fused once: they differ by at most
    // u*|a*x| + 2u*|a*x + y| <= 1.5 * EPSILON * (|a*x| + |y|) (u = EPSILON / 2). A tolerance
    // relative to the result alone would fail where a*x and y nearly cancel.
    let eps = f64::from(f32::EPSILON);
    assert_within("y", &got, &want, |i| {
        2.0 * eps * (f64::from((a * x[i]).abs()) + f64::from(y0[i].abs()))
    });
}

#[test]
fn saxpy_rust_matches_reference() {
    check_saxpy("kernel.rs");
}

#[test]
fn saxpy_c_matches_reference() {
    check_saxpy("kernel.c");
}

#[test]
fn mandelbrot_matches_reference_exactly() {
    let dir = tempdir();
    let pkg = package_example(dir.path(), "mandelbrot", "kernel.rs");
    let (width, height, max_iter) = (480u32, 360u32, 200u32);
    // The classic view, x in [-2.5, 1.25): with 480 pixels the step is 2^-7, so every
    // pixel's c is exact in f64 and the text of the arguments loses nothing.
    let step = 3.75 / f64::from(width);
    let (x0, y0) = (-2.5, -step * f64::from(height) / 2.0);
    let items = u64::from(width) * u64::from(height);
    let out = dir.path().join("iters.bin");
    Run::new(&pkg, "mandelbrot", items)
        .arg("width", width)
        .arg("max_iter", max_iter)
        .arg("x0", x0)
        .arg("y0", y0)
        .arg("step", step)
        .buffer("out", "iters", &out)
        .ok();
    let got: Vec<u32> = read_le(&out);
    let want = mandelbrot_ref::mandelbrot(width, height, max_iter, x0, y0, step);
    // Integer output, and the Rust kernel's float steps carry no fast-math flags, so a
    // correct JIT reproduces every IEEE operation: exact equality.
    assert_eq!(got.len(), want.len(), "iters length");
    let diff: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
    assert!(
        diff.is_empty(),
        "{} of {} pixels differ, first at {:?}: got {}, want {}",
        diff.len(),
        want.len(),
        diff.first(),
        diff.first().map_or(0, |&i| got[i]),
        diff.first().map_or(0, |&i| want[i]),
    );
    // The view must show both escaping and bounded points, or the test proves little.
    assert!(want.contains(&max_iter) && want.iter().any(|&n| n < 5));
}

/// One n-body step of 1024 bodies.
fn check_nbody(file: &str) {
    let dir = tempdir();
    let pkg = package_example(dir.path(), "nbody", file);
    let n = 1024usize;
    let (dt, softening) = (0.01f32, 0.05f32);
    let (pos, vel0) = nbody_ref::bodies(n, 3);
    let (pf, vf, nf) = (
        dir.path().join("pos.bin"),
        dir.path().join("vel.bin"),
        dir.path().join("new_pos.bin"),
    );
    write_le(&pf, &pos);
    write_le(&vf, &vel0);
    Run::new(&pkg, "nbody", n as u64)
        .arg("n", n)
        .arg("dt", dt)
        .arg("softening", softening)
        .buffer("in", "pos", &pf)
        .buffer("inout", "vel", &vf)
        .buffer("out", "new_pos", &nf)
        .ok();
    let (got_vel, got_pos): (Vec<f32>, Vec<f32>) = (read_le(&vf), read_le(&nf));
    let mut want_vel = vel0;
    let want_pos = nbody_ref::step(dt, softening, &pos, &mut want_vel);
    // Each acceleration is a sum of 1024 f32 terms of both signs; with FMA contraction (C)
    // every term may round differently, and the error grows with the sum of the terms'
    // magnitudes, not with the (possibly cancelled) result. So the bound is relative to
    // the array's RMS magnitude: 1e-5 of it, against ~1e-6 observed for clang's FMA code.
    let (tv, tp) = (1e-5 * rms(&want_vel), 1e-5 * rms(&want_pos));
    assert_within("vel", &got_vel, &want_vel, |_| tv);
    assert_within("new_pos", &got_pos, &want_pos, |_| tp);
}

#[test]
fn nbody_rust_matches_reference() {
    check_nbody("kernel.rs");
}

#[test]
fn nbody_c_matches_reference() {
    check_nbody("kernel.c");
}

#[test]
fn dot_sum_buffer_matches_reference() {
    let dir = tempdir();
    let pkg = package_example(dir.path(), "dot", "kernel.rs");
    let n = 500_000usize;
    let (x, y) = dot_ref::inputs(n, 5);
    let (xf, yf, af) = (
        dir.path().join("x.bin"),
        dir.path().join("y.bin"),
        dir.path().join("acc.bin"),
    );
    write_le(&xf, &x);
    write_le(&yf, &y);
    Run::new(&pkg, "dot", n as u64)
        .buffer("in", "x", &xf)
        .buffer("in", "y", &yf)
        .buffer("sum", "acc", &af)
        .ok();
    let got: Vec<f64> = read_le(&af);
    let want = dot_ref::dot(&x, &y);
    // Recursive summation of n terms in any order is within (n-1)*u*sum|x_i*y_i| of the
    // exact sum (Higham, u = EPSILON / 2), so two orders (packets vs. one loop) differ by at
    // most twice that. Relative to the result itself would be wrong: inputs of both signs
    // cancel.
    let bound = n as f64 * f64::EPSILON * dot_ref::abs_dot(&x, &y);
    assert_within("acc", &got, &[want], |_| bound);
}

/// Writes the log and its chunk bounds; returns their paths.
fn write_log(dir: &Path, log: &[u8], bounds: &[u64]) -> (PathBuf, PathBuf) {
    let (lf, bf) = (dir.join("access.log"), dir.join("bounds.bin"));
    write_le(&lf, log);
    write_le(&bf, bounds);
    (lf, bf)
}

#[test]
fn logcrunch_histogram_matches_reference_exactly() {
    let dir = tempdir();
    let pkg = package_example(dir.path(), "logcrunch", "kernel.rs");
    let log = logcrunch_ref::generate_log(50_000, 7);
    let chunks = 1024;
    let bounds = logcrunch_ref::chunk_bounds(&log, chunks);
    let (lf, bf) = write_log(dir.path(), &log, &bounds);
    let hf = dir.path().join("hist.bin");
    Run::new(&pkg, "logcrunch", chunks as u64)
        .buffer("in", "log", &lf)
        .arg("log_len", log.len())
        .buffer("in", "bounds", &bf)
        .arg("bounds_len", bounds.len())
        .buffer("sum", "hist", &hf)
        .ok();
    let got: Vec<u64> = read_le(&hf);
    let want = logcrunch_ref::count(&log);
    assert_eq!(got, want, "histogram [1xx, 2xx, 3xx, 4xx, 5xx, other]");
    // The generated log must exercise every bin, malformed lines included.
    assert!(want.iter().all(|&c| c > 0), "every bin is used: {want:?}");
}

#[test]
fn logcrunch_out_of_bounds_chunk_is_a_kernel_panic() {
    let dir = tempdir();
    let pkg = package_example(dir.path(), "logcrunch", "kernel.rs");
    let log = logcrunch_ref::generate_log(10_000, 11);
    let chunks = 64;
    let mut bounds = logcrunch_ref::chunk_bounds(&log, chunks);
    // The last chunk now ends past the log: the kernel's slice indexing must catch it.
    *bounds.last_mut().expect("chunks + 1 bounds") = log.len() as u64 + 100;
    let (lf, bf) = write_log(dir.path(), &log, &bounds);
    let out = Run::new(&pkg, "logcrunch", chunks as u64)
        .buffer("in", "log", &lf)
        .arg("log_len", log.len())
        .buffer("in", "bounds", &bf)
        .arg("bounds_len", bounds.len())
        .buffer("sum", "hist", &dir.path().join("hist.bin"))
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.to_lowercase().contains("panicked"),
        "expected a failed run reporting a kernel panic, got {}\n--- stderr ---\n{stderr}",
        out.status
    );
}

#[test]
fn raytrace_matches_reference() {
    let dir = tempdir();
    let pkg = package_example(dir.path(), "raytrace", "kernel.rs");
    let (width, height) = (320u32, 240u32);
    let (scene, nspheres) = raytrace_ref::scene();
    let (sf, rf) = (dir.path().join("scene.bin"), dir.path().join("rgb.bin"));
    write_le(&sf, &scene);
    Run::new(&pkg, "raytrace", u64::from(width) * u64::from(height))
        .arg("width", width)
        .arg("height", height)
        .buffer("in", "spheres", &sf)
        .arg("nspheres", nspheres)
        .buffer("out", "rgb", &rf)
        .ok();
    let got: Vec<u8> = read_le(&rf);
    let want = raytrace_ref::render(width, height, &scene);
    assert_eq!(got.len(), want.len(), "rgb length");
    // The kernel mirrors the reference operation for operation and Rust never contracts,
    // so bytes should be equal; we still allow what a last-bit float difference could do:
    // +-1 on a byte after clamping and rounding, and on at most 1 in 10_000 bytes more
    // (a ray grazing a silhouette or shadow edge may flip between hit and miss).
    let far: Vec<usize> = (0..want.len())
        .filter(|&i| got[i].abs_diff(want[i]) > 1)
        .collect();
    assert!(
        far.len() * 10_000 <= want.len(),
        "{} of {} bytes differ by more than 1, first at {:?}",
        far.len(),
        want.len(),
        far.first()
    );
    // The image must not be trivial: sky, lit and shadowed surfaces give many colours.
    let distinct: std::collections::HashSet<&[u8]> = want.chunks_exact(3).collect();
    assert!(distinct.len() > 1000, "{} distinct colours", distinct.len());
}
