//! Real kernel code under the sandbox: a C kernel loaded the way node-jit loads code
//! (sealed memfd, dlopen), and an OpenCL kernel run by the OpenCL profile's driver.

use std::path::{Path, PathBuf};
use std::process::Command;

use sandbox::WorkerEnd;

use crate::probe::{cannot_run, sandbox_available, Probe};

const C_KERNEL: &str = r#"
#include <stdio.h>
/* n >= 0: the sum of 0..n, the work. n < 0: a kernel that tries to read a file. */
long probe_kernel(long n) {
    if (n < 0) {
        FILE *file = fopen("/etc/hostname", "r");
        return file != 0;
    }
    long sum = 0;
    for (long i = 0; i < n; i++) sum += i;
    return sum;
}
"#;

fn clang() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("CLANG").map(PathBuf::from),
        Some(PathBuf::from("/usr/lib/llvm-22/bin/clang")),
        Some(PathBuf::from("clang-22")),
        Some(PathBuf::from("clang")),
    ];
    candidates.into_iter().flatten().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn build_c_kernel(folder: &Path) -> Option<PathBuf> {
    let Some(clang) = clang() else {
        cannot_run("no clang (set CLANG) to build the C kernel");
        return None;
    };
    let source = folder.join("kernel.c");
    let library = folder.join("kernel.so");
    std::fs::write(&source, C_KERNEL).expect("write the kernel source");
    let output = Command::new(&clang)
        .args(["-O1", "-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .output()
        .expect("run clang");
    assert!(
        output.status.success(),
        "clang: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(library)
}

#[test]
fn a_c_kernel_that_opens_a_file_reaches_the_filter() {
    if !sandbox_available() {
        return;
    }
    let folder = tempfile::tempdir().expect("a temporary folder");
    let Some(library) = build_c_kernel(folder.path()) else {
        return;
    };
    let library = library.to_str().expect("a UTF-8 path");
    let mut probe = Probe::start(&["--kernel", library]);
    probe.expect_ready();
    // Loaded before the sandbox, it runs under it.
    assert_eq!(probe.ask("kernel 10"), "kernel 45");
    assert_eq!(probe.ask("kernel 1000"), "kernel 499500");
    let ended = probe.end_with("kernel -1");
    assert_eq!(
        ended.blame(),
        "kernel `probe` made a forbidden system call (openat)"
    );
}

#[test]
fn an_opencl_kernel_runs_under_the_opencl_profile() {
    if !sandbox_available() {
        return;
    }
    let cache = tempfile::tempdir().expect("a temporary folder");
    let cache_path = cache.path().to_str().expect("a UTF-8 path");
    let mut probe = Probe::start_with(&["--opencl"], &[("POCL_CACHE_DIR", cache_path)]);
    if probe.ready.starts_with("error no OpenCL") {
        cannot_run(&format!("no OpenCL device: {}", probe.ready));
        return;
    }
    let ready = probe.expect_ready().to_string();
    assert!(ready.contains("sandbox (opencl profile)"), "{ready}");
    // Several packets at new offsets and sizes, each checked by the probe.
    for items in [1000, 4096, 100_000] {
        let answer = probe.ask(&format!("opencl {items}"));
        assert!(
            answer.starts_with("opencl ") && !answer.contains("error"),
            "{answer}"
        );
    }
    // Files outside the driver's folders stay closed; nothing can be created.
    let answer = probe.ask("open-file /etc/hostname");
    assert!(
        answer.starts_with("open failed: Permission denied"),
        "{answer}"
    );
    let answer = probe.ask(&format!("create-file {cache_path}/new"));
    assert!(
        answer.starts_with("create failed: Permission denied"),
        "{answer}"
    );
    let ended = probe.end_with("socket");
    assert_eq!(
        ended.end,
        WorkerEnd::ForbiddenSyscall {
            name: Some("socket"),
            number: None
        },
        "{}",
        ended.stderr
    );
}
