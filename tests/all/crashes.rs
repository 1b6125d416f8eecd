//! A kernel that traps on this machine (divides by zero, writes through a wild pointer,
//! executes a trap, overflows its stack) fails `offload run` with one line naming the
//! kernel, the items and the signal in words, exit status 1 rather than death by signal,
//! and every `--inout` file as it was, no staged file left beside it: in the isolated
//! workers `offload run` uses, and in process (`--in-process`), where the crash report
//! ends the process. The Rust API's isolated runs live on after such a job and run the
//! next one.

use std::path::Path;

use crate::common::{offload, package, read_le, repo_path, write_le};

/// Runs `kernel` of the traps package over 100 items, item 57 trapping, on an `--inout`
/// file; checks the report, the exit status and that nothing on disk changed.
fn traps_cleanly(dir: &Path, pkg: &Path, kernel: &str, signal: &str, in_process: bool) {
    let y = dir.join(format!("{kernel}.bin"));
    let before: Vec<i32> = vec![7; 100];
    write_le(&y, &before);
    let mode = if in_process {
        "--in-process"
    } else {
        "--threads=2"
    };
    let out = offload([
        "run".as_ref(),
        mode.as_ref(),
        pkg.as_os_str(),
        "--kernel".as_ref(),
        kernel.as_ref(),
        "--items".as_ref(),
        "100".as_ref(),
        "--arg".as_ref(),
        "at=57".as_ref(),
        "--inout".as_ref(),
        format!("y={}", y.display()).as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{kernel}: {:?}: {stderr}",
        out.status
    );
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!("kernel `{kernel}` crashed on items ")))
        .unwrap_or_else(|| panic!("{kernel}: no crash report in: {stderr}"));
    assert!(line.contains(signal), "{kernel}: {line}");
    assert!(
        line.contains("no output or --inout file was changed"),
        "{line}"
    );
    // The items named hold the one that trapped.
    let range = line
        .split("crashed on items ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|r| r.split_once(".."))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("no item range in: {line}"));
    assert!(range.0 <= 57 && 57 < range.1, "{kernel}: {line}");
    let after: Vec<i32> = read_le(&y);
    assert_eq!(after, before, "{kernel}: the --inout file changed");
    crate::common::assert_no_staged_files(dir, kernel);
}

/// `tests/kernels/traps.c` packaged into `dir`.
fn traps_package(dir: &Path) -> std::path::PathBuf {
    package(
        &repo_path("tests/kernels/traps.c"),
        &repo_path("tests/kernels/traps.toml"),
        dir,
        "traps",
    )
}

#[test]
fn kernels_that_trap_are_named_with_their_items_and_nothing_on_disk_changes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pkg = traps_package(dir.path());
    for in_process in [false, true] {
        traps_cleanly(dir.path(), &pkg, "divide", "SIGFPE", in_process);
        traps_cleanly(dir.path(), &pkg, "wild_write", "SIGSEGV", in_process);
        traps_cleanly(dir.path(), &pkg, "trap", "SIGILL", in_process);
        // An isolated worker's sandbox tells an overflow from other faults.
        let overflow = if in_process {
            "SIGSEGV"
        } else {
            "stack overflow"
        };
        traps_cleanly(dir.path(), &pkg, "overflow", overflow, in_process);
    }
}

#[test]
fn the_stack_per_item_is_set_with_stack_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pkg = traps_package(dir.path());
    let y = dir.path().join("y.bin");
    write_le(&y, &[0i32; 4]);
    // A 12 MiB frame per item, more than the default 8 MiB.
    crate::common::offload_ok([
        "run".as_ref(),
        pkg.as_os_str(),
        "--kernel".as_ref(),
        "big_frame".as_ref(),
        "--items".as_ref(),
        "4".as_ref(),
        "--threads".as_ref(),
        "2".as_ref(),
        "--stack-size".as_ref(),
        "32M".as_ref(),
        "--arg".as_ref(),
        "at=10".as_ref(),
        "--inout".as_ref(),
        format!("y={}", y.display()).as_ref(),
    ]);
    let got: Vec<i32> = read_le(&y);
    assert_eq!(got, vec![10, 11, 12, 13]);
}

#[test]
fn ctrl_c_ends_a_run_saying_nothing_was_written_and_leaves_no_staged_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pkg = traps_package(dir.path());
    let y = dir.path().join("y.bin");
    let before = vec![5i32; 2];
    write_le(&y, &before);
    // `spin` never ends: only the signal stops the run.
    let child = crate::common::die_with_test(&mut std::process::Command::new(env!(
        "CARGO_BIN_EXE_offload"
    )))
    .env("OFFLOAD_CACHE_DIR", crate::common::test_cache_dir())
    .arg("run")
    .arg(&pkg)
    .args([
        "--kernel", "spin", "--items", "2", "--arg", "at=0", "--inout",
    ])
    .arg(format!("y={}", y.display()))
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("start offload run");
    // The run has staged its output (and so checked everything) once the temporary file
    // is there; the signal may come before or while the kernel runs: the same outcome.
    let staged = || {
        std::fs::read_dir(dir.path())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().starts_with(".offload-"))
            })
            .unwrap_or(false)
    };
    assert!(
        crate::common::wait_for_change(
            dir.path(),
            None,
            std::time::Duration::from_secs(60),
            staged
        ),
        "the run never staged its output"
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().expect("wait for offload");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{:?}: {stderr}", out.status);
    assert!(
        stderr.contains("interrupted (SIGINT); no output or --inout file was changed"),
        "{stderr}"
    );
    let after: Vec<i32> = read_le(&y);
    assert_eq!(after, before);
    assert!(!staged(), "a staged file was left behind");
}

#[test]
fn a_hung_kernel_ends_the_run_at_the_packet_timeout_naming_its_items() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pkg = traps_package(dir.path());
    let y = dir.path().join("y.bin");
    let before = vec![5i32; 4];
    write_le(&y, &before);
    // `spin` never ends: only the timeout stops the run.
    for check in [false, true] {
        let mut args: Vec<std::ffi::OsString> = [
            "run",
            &pkg.display().to_string(),
            "--kernel",
            "spin",
            "--items",
            "4",
            "--arg",
            "at=7",
            "--packet-timeout",
            "0.3",
            "--inout",
            &format!("y={}", y.display()),
        ]
        .iter()
        .map(Into::into)
        .collect();
        if check {
            args.push("--check".into());
        }
        let out = offload(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{:?}: {stderr}", out.status);
        assert!(
            stderr.contains(
                "error: kernel `spin` ran longer than the packet timeout (0.3 s) on items "
            ) && stderr.contains("no output or --inout file was changed"),
            "{stderr}"
        );
        assert_eq!(read_le::<i32>(&y), before, "the --inout file changed");
    }
    crate::common::assert_no_staged_files(dir.path(), "a hung kernel");
}
