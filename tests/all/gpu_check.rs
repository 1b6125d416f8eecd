//! `scripts/gpu-bundle.sh` and `scripts/gpu-check.sh`, run here against PoCL: the bundle
//! is made from the debug binary this test suite built (`--quick` jobs, no compression,
//! so it takes seconds; the release bundle for a GPU machine is the same script without
//! those flags), unpacked, and its check must pass and print its table. On a machine
//! without OpenCL the check runs the CPU rows only; under `CI=true` PoCL must be there.

use std::process::Command;

use crate::common::repo_path;

#[test]
fn the_gpu_bundle_is_made_and_its_check_passes_on_this_machine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("bundle.tar");
    let made = Command::new("bash")
        .arg(repo_path("scripts/gpu-bundle.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_offload")])
        .args(["--compress", "none", "--quick", "--out"])
        .arg(&bundle)
        .output()
        .expect("bash runs");
    assert!(
        made.status.success(),
        "gpu-bundle.sh failed:\n{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let unpacked = Command::new("tar")
        .arg("-xf")
        .arg(&bundle)
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar runs");
    assert!(unpacked.success());
    let root = dir.path().join("offload-gpu-check");
    for part in [
        "bin/offload",
        "lib/libLLVM.so.22.1",
        "pkg/saxpy.okp",
        "ref/saxpy.inout.bin",
        "cases.txt",
    ] {
        assert!(root.join(part).exists(), "{part} missing from the bundle");
    }
    // The C library is the target's own.
    for entry in std::fs::read_dir(root.join("lib")).expect("lib") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(
            !name.starts_with("libc.so") && !name.starts_with("ld-linux"),
            "{name} bundled"
        );
    }
    let check = Command::new(root.join("gpu-check.sh"))
        .args(["--budget", "300"])
        // The check must not lean on this machine's paths to LLVM.
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("gpu-check.sh runs");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "gpu-check.sh failed:\n{out}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(out.contains("| job | device [route] | result |"), "{out}");
    let opencl = out.contains("| devices | - | PASS") && out.contains("routes: opencl-c");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        assert!(opencl, "CI=true requires PoCL's OpenCL device:\n{out}");
    }
    for job in ["saxpy", "mandelbrot-f64", "nbody", "dot", "raytrace"] {
        let modes: &[&str] = if opencl {
            &["cpu", "opencl [opencl-c]", "auto"]
        } else {
            &["cpu"]
        };
        for mode in modes {
            let row = format!("| {job} | {mode} | PASS |");
            assert!(out.contains(&row), "no `{row}` in:\n{out}");
        }
    }
    assert!(
        !out.contains("| FAIL |") && !out.contains("NOT RUN"),
        "{out}"
    );
}
