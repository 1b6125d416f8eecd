//! The kernels of `benches/kernels/` (the JIT-against-AOT comparison's second set) through
//! the real CLI, `offload package` + `offload run` over many packets, compared with their
//! independent references. All outputs are integers or floats computed in a fixed order,
//! so they must match exactly.

use std::path::{Path, PathBuf};

use crate::common::{package, read_le, repo_path, write_le, Run};
use crate::references::{kernels_ref, logcrunch_ref};

fn package_kernel(dir: &Path, name: &str) -> PathBuf {
    package(
        &repo_path(&format!("benches/kernels/{name}/kernel.rs")),
        &repo_path(&format!("benches/kernels/{name}/manifest.toml")),
        dir,
        name,
    )
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// Runs a range kernel over `text` cut into `chunks` line-aligned chunks and returns its
/// `bins` sum counters.
fn run_text_kernel(name: &str, sum: &str, text: &[u8], chunks: usize) -> Vec<u64> {
    let dir = tempdir();
    let pkg = package_kernel(dir.path(), name);
    let bounds = logcrunch_ref::chunk_bounds(text, chunks);
    let (tf, bf, sf) = (
        dir.path().join("text.bin"),
        dir.path().join("bounds.bin"),
        dir.path().join("sum.bin"),
    );
    write_le(&tf, text);
    write_le(&bf, &bounds);
    Run::new(&pkg, name, chunks as u64)
        .buffer("in", "text", &tf)
        .arg("text_len", text.len())
        .buffer("in", "bounds", &bf)
        .arg("bounds_len", bounds.len())
        .buffer("sum", sum, &sf)
        .ok();
    read_le(&sf)
}

#[test]
fn csvsum_totals_match_reference() {
    let text = kernels_ref::generate_csv(20_000, 3);
    let got = run_text_kernel("csvsum", "totals", &text, 257);
    let want = kernels_ref::csv_totals(&text);
    assert!(
        want[1] > 10_000 && want[2] > 100,
        "the input has both kinds of line: {want:?}"
    );
    assert_eq!(
        got, want,
        "[sum of quantities, parsed lines, malformed lines]"
    );
}

#[test]
fn lexer_counts_match_reference() {
    let text = kernels_ref::generate_source(20_000, 4);
    let got = run_text_kernel("lexer", "counts", &text, 311);
    let want = kernels_ref::token_counts(&text);
    assert!(
        want.iter().all(|&c| c > 0),
        "every token class occurs: {want:?}"
    );
    assert_eq!(
        got, want,
        "[identifiers, numbers, strings, comments, operators, invalid]"
    );
}

#[test]
fn hash_matches_reference() {
    let dir = tempdir();
    let pkg = package_kernel(dir.path(), "hash");
    let records = 5000;
    let words = kernels_ref::hash_records(records, 5);
    let (wf, hf) = (dir.path().join("words.bin"), dir.path().join("hashes.bin"));
    write_le(&wf, &words);
    let seed = 0x1234_5678_9ABC_DEF0u64;
    Run::new(&pkg, "hash", records as u64)
        .arg("seed", seed)
        .buffer("in", "words", &wf)
        .buffer("out", "hashes", &hf)
        .ok();
    let got: Vec<u64> = read_le(&hf);
    assert_eq!(got, kernels_ref::hash_all(seed, &words));
}

#[test]
fn matmul6_matches_reference_bit_for_bit() {
    let dir = tempdir();
    let pkg = package_kernel(dir.path(), "matmul6");
    let n = 999;
    let (a, b) = kernels_ref::matrices(n, 6);
    let (af, bf, cf) = (
        dir.path().join("a.bin"),
        dir.path().join("b.bin"),
        dir.path().join("c.bin"),
    );
    write_le(&af, &a);
    write_le(&bf, &b);
    Run::new(&pkg, "matmul6", n as u64)
        .buffer("in", "a", &af)
        .buffer("in", "b", &bf)
        .buffer("out", "c", &cf)
        .ok();
    let got: Vec<f32> = read_le(&cf);
    let want = kernels_ref::matmul_all(&a, &b);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&got),
        bits(&want),
        "Rust never contracts or reorders the sums"
    );
}

#[test]
fn gather_matches_reference_bit_for_bit() {
    let dir = tempdir();
    let pkg = package_kernel(dir.path(), "gather");
    let (n, table) = (10_000, 3001);
    let (x, idx, y) = kernels_ref::gather_inputs(n, table, 7);
    let (xf, jf, yf) = (
        dir.path().join("x.bin"),
        dir.path().join("idx.bin"),
        dir.path().join("y.bin"),
    );
    write_le(&xf, &x);
    write_le(&jf, &idx);
    write_le(&yf, &y);
    let a = 0.625f32;
    Run::new(&pkg, "gather", n as u64)
        .arg("a", a)
        .buffer("in", "x", &xf)
        .arg("x_len", table)
        .buffer("in", "idx", &jf)
        .buffer("inout", "y", &yf)
        .ok();
    let got: Vec<f32> = read_le(&yf);
    let mut want = y.clone();
    kernels_ref::gather(a, &x, &idx, &mut want);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want));
}

#[test]
fn gather_outside_the_table_is_a_kernel_panic() {
    let dir = tempdir();
    let pkg = package_kernel(dir.path(), "gather");
    let (xf, jf, yf) = (
        dir.path().join("x.bin"),
        dir.path().join("idx.bin"),
        dir.path().join("y.bin"),
    );
    write_le(&xf, &[1.0f32; 8]);
    write_le(&jf, &[0u32, 7, 8, 1]);
    write_le(&yf, &[0.0f32; 4]);
    let out = Run::new(&pkg, "gather", 4)
        .arg("a", 1.0f32)
        .buffer("in", "x", &xf)
        .arg("x_len", 8)
        .buffer("in", "idx", &jf)
        .buffer("inout", "y", &yf)
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "index 8 of 8 must fail");
    assert!(stderr.contains("index out of bounds"), "{stderr}");
}

#[test]
fn prefixscan_matches_reference() {
    let dir = tempdir();
    let pkg = package_kernel(dir.path(), "prefixscan");
    let rows = 3000;
    let values = kernels_ref::scan_rows(rows, 8);
    let (vf, sf) = (dir.path().join("values.bin"), dir.path().join("sums.bin"));
    write_le(&vf, &values);
    Run::new(&pkg, "prefixscan", rows as u64)
        .buffer("in", "values", &vf)
        .buffer("out", "sums", &sf)
        .ok();
    let got: Vec<i64> = read_le(&sf);
    assert_eq!(got, kernels_ref::prefix_sums(&values));
}
