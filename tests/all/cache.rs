//! Compiled kernels are cached on disk: a second process does not compile again.

use std::path::Path;
use std::process::Output;

use crate::common::{offload, saxpy_package};

/// `offload -v --opt-level LEVEL --cache-dir CACHE run PKG` over 256 saxpy items.
fn run_saxpy(cache: &Path, pkg: &Path, dir: &Path, opt_level: &str) -> Output {
    let x = dir.join("x.bin");
    let y = dir.join("y.bin");
    std::fs::write(&x, vec![0u8; 4 * 256]).expect("x");
    std::fs::write(&y, vec![0u8; 4 * 256]).expect("y");
    offload([
        "-v".as_ref(),
        "--opt-level".as_ref(),
        opt_level.as_ref(),
        "--cache-dir".as_ref(),
        cache.as_os_str(),
        "run".as_ref(),
        pkg.as_os_str(),
        "--kernel".as_ref(),
        "saxpy".as_ref(),
        "--items".as_ref(),
        "256".as_ref(),
        "--arg".as_ref(),
        "a=3".as_ref(),
        "--in".as_ref(),
        format!("x={}", x.display()).as_ref(),
        "--inout".as_ref(),
        format!("y={}", y.display()).as_ref(),
    ])
}

fn stderr_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn second_process_hits_the_disk_cache() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let pkg = saxpy_package(dir.path());

    let first = stderr_of(&run_saxpy(&cache, &pkg, dir.path(), "3"));
    assert!(first.contains("code from compiled"), "{first}");
    let libraries: Vec<_> = std::fs::read_dir(cache.join("jit"))
        .expect("jit cache dir exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "so"))
        .collect();
    assert_eq!(libraries.len(), 1, "one cached library per kernel");

    let second = stderr_of(&run_saxpy(&cache, &pkg, dir.path(), "3"));
    assert!(second.contains("code from disk cache"), "{second}");
}

#[test]
fn a_different_optimization_level_is_a_different_cache_entry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let pkg = saxpy_package(dir.path());
    stderr_of(&run_saxpy(&cache, &pkg, dir.path(), "3"));
    let o1 = stderr_of(&run_saxpy(&cache, &pkg, dir.path(), "1"));
    assert!(o1.contains("code from compiled"), "{o1}");
}
