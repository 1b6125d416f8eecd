//! A machine without any OpenCL platform: discovery answers at once with no devices and
//! a one-line reason. The ICD loader is pointed at an empty vendor directory, which is
//! what a machine with `ocl-icd-libopencl1` but no driver looks like. This is the only
//! test of this binary, so the variable is set before the loader first runs.

use std::time::{Duration, Instant};

#[test]
fn no_platform_means_no_devices_and_a_note_without_waiting() {
    let empty = std::env::temp_dir().join(format!("offload-no-icd-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("temp dir");
    // SAFETY: set before any other thread of this test binary touches the environment.
    unsafe { std::env::set_var("OCL_ICD_VENDORS", &empty) };
    let started = Instant::now();
    let found = opencl_backend::discover();
    let opencl = opencl_backend::OpenCl::new();
    assert!(found.devices.is_empty() && opencl.devices().is_empty());
    let note = found.note.expect("a reason");
    assert!(note.contains("no OpenCL platform"), "{note}");
    assert!(!note.contains('\n'), "{note}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir(&empty);
}
