//! Check mode (`offload run --check`): a kernel that reads or writes outside what its
//! manifest gives an item fails naming the kernel, the buffer and the item, with every
//! `--inout` file as it was; correct kernels (a halo stencil, `sum` buffers) give the
//! same results as a normal run, sums bit for bit. The kernels: tests/kernels/outside.c.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use offload::{ArgValue, Buffer, Config, Engine, Options, Package, ScalarValue};

use crate::common::{offload, offload_ok, package, read_le, repo_path, write_le};

fn outside_package(dir: &Path) -> PathBuf {
    package(
        &repo_path("tests/kernels/outside.c"),
        &repo_path("tests/kernels/outside.toml"),
        dir,
        "outside",
    )
}

fn args(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_os_string()).collect()
}

/// Runs `offload run ... --check`, expecting exit status 1 and a report that contains
/// every one of `expected`; returns the report line.
fn fails_checked(run: Vec<OsString>, expected: &[&str]) -> String {
    let out = offload(run.iter().chain([&OsString::from("--check")]));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{:?}: {stderr}", out.status);
    let line = stderr
        .lines()
        .find(|l| l.contains("(check mode)"))
        .unwrap_or_else(|| panic!("no check-mode report in: {stderr}"))
        .to_string();
    for part in expected {
        assert!(line.contains(part), "`{part}` not in: {line}");
    }
    line
}

#[test]
fn check_mode_names_the_buffer_and_the_item_of_every_access_outside_the_model() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let pkg = outside_package(dir);
    let y = dir.join("y.bin");
    let x = dir.join("x.bin");
    let before = vec![7i32; 100];
    write_le(&y, &before);
    write_le(&x, &(0..100).collect::<Vec<i32>>());
    let inout = format!("y={}", y.display());
    let input = format!("x={}", x.display());
    let output = format!("y={}", dir.join("out.bin").display());
    let one = |kernel: &str, buffers: &[(&str, &str)]| {
        let mut run = args(&[&"run", &pkg, &"--kernel", &kernel, &"--items", &"100"]);
        run.extend(args(&[&"--arg", &"at=57"]));
        for (flag, value) in buffers {
            run.extend(args(&[flag, value]));
        }
        run
    };
    // Past the slice's end: trapped in the guard after the copy.
    fails_checked(
        one("past_end", &[("--inout", &inout)]),
        &[
            "kernel `past_end` wrote outside its slice of `y` on item 57",
            "1 byte past its end",
            "no output or --inout file was changed",
        ],
    );
    // Before its start: found in the patterned bytes after the item ran.
    fails_checked(
        one("before_start", &[("--inout", &inout)]),
        &["kernel `before_start` wrote outside its slice of `y` on item 57 (the access began 4 bytes before its start)"],
    );
    assert_eq!(read_le::<i32>(&y), before, "the --inout file changed");
    // Into an input: the copy is read-only.
    fails_checked(
        one("writes_input", &[("--in", &input), ("--out", &output)]),
        &["kernel `writes_input` wrote into `x`, an `in` buffer, on item 57"],
    );
    assert!(!dir.join("out.bin").exists(), "an output was written");
    // Reading a neighbour's input without a halo: item 0 reads item 1's element.
    let mut run = args(&[
        &"run",
        &pkg,
        &"--kernel",
        &"reads_neighbour",
        &"--items",
        &"100",
    ]);
    run.extend(args(&[&"--in", &input, &"--out", &output]));
    fails_checked(
        run,
        &["kernel `reads_neighbour` read outside the elements of `x` its manifest lets it read on item 0 (the access began 1 byte past its end)"],
    );
    // Past the end of a `sum` accumulator, and past the end of a whole `in` buffer.
    let count = format!("count={}", dir.join("count.bin").display());
    fails_checked(
        one("sum_overrun", &[("--arg", "bins=4"), ("--sum", &count)]),
        &["kernel `sum_overrun` wrote outside the sum buffer `count` on item 57 (the access began 1 byte past its end)"],
    );
    let table = dir.join("table.bin");
    write_le(&table, &[5i32; 8]);
    let table = format!("table={}", table.display());
    fails_checked(
        one("whole_overread", &[("--in", &table), ("--out", &output)]),
        &["kernel `whole_overread` read outside the buffer `table` on item 57 (the access began 1 byte past its end)"],
    );
    crate::common::assert_no_staged_files(dir, "check mode");
}

#[test]
fn correct_kernels_give_the_same_results_under_check_mode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let pkg = outside_package(dir);
    let x = dir.join("x.bin");
    write_le(&x, &(0..1000).map(|i| i * 3 - 500).collect::<Vec<i32>>());
    let w = dir.join("w.bin");
    write_le(
        &w,
        &(0..5000).map(|i| i as f32 * 0.37).collect::<Vec<f32>>(),
    );
    for check in [false, true] {
        let tag = if check { "checked" } else { "normal" };
        let y = format!("y={}", dir.join(format!("stencil-{tag}.bin")).display());
        let mut run = args(&[&"run", &pkg, &"--kernel", &"stencil", &"--items", &"1000"]);
        run.extend(args(&[
            &"--in",
            &format!("x={}", x.display()),
            &"--out",
            &y,
        ]));
        let count = format!("count={}", dir.join(format!("count-{tag}.bin")).display());
        let total = format!("total={}", dir.join(format!("total-{tag}.bin")).display());
        let mut hist = args(&[&"run", &pkg, &"--kernel", &"histogram", &"--items", &"5000"]);
        hist.extend(args(&[
            &"--arg",
            &"bins=7",
            &"--in",
            &format!("w={}", w.display()),
        ]));
        hist.extend(args(&[&"--sum", &count, &"--sum", &total]));
        if check {
            run.push("--check".into());
            hist.push("--check".into());
        }
        let out = offload_ok(&run);
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(said.contains("check mode"), check, "{said}");
        offload_ok(&hist);
    }
    let x: Vec<i32> = read_le(&x);
    let expected: Vec<i32> = (0..x.len())
        .map(|i| {
            let left = if i > 0 { x[i - 1] } else { 0 };
            let right = x.get(i + 1).copied().unwrap_or(0);
            left + 2 * x[i] + right
        })
        .collect();
    assert_eq!(read_le::<i32>(&dir.join("stencil-checked.bin")), expected);
    assert_eq!(read_le::<i32>(&dir.join("stencil-normal.bin")), expected);
    let counts: Vec<u64> = read_le(&dir.join("count-checked.bin"));
    assert_eq!(
        counts,
        (0..7u64)
            .map(|b| (5000 - b).div_ceil(7))
            .collect::<Vec<u64>>()
    );
    assert_eq!(counts, read_le::<u64>(&dir.join("count-normal.bin")));
    // The float totals depend on the order of the additions: bit for bit the same.
    let bits = |name: &str| -> Vec<u32> {
        read_le::<f32>(&dir.join(name))
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    assert_eq!(bits("total-checked.bin"), bits("total-normal.bin"));
}

#[test]
fn check_mode_through_the_api_returns_the_finding_and_refuses_other_devices() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pkg = outside_package(dir.path());
    let package = Arc::new(Package::read(&pkg).expect("package"));
    let engine =
        Engine::new(Config::default().cache_dir(crate::common::test_cache_dir())).expect("engine");
    let values = vec![
        ArgValue::Scalar(ScalarValue::U64(57)),
        ArgValue::Buffer(Buffer::zeroed(100 * 4)),
    ];
    let mut job = offload::Job::kernel(Arc::clone(&package), "before_start", 100, values.clone())
        .expect("job");
    let cluster = offload::Cluster::from_engine(engine);
    let error = cluster
        .run(&mut job, &Options::default().check(true))
        .expect_err("the write before the slice is found");
    let message = error.to_string();
    assert!(
        message.contains("kernel `before_start` wrote outside its slice of `y` on item 57"),
        "{message}"
    );
    // Without check mode the same job runs (the write lands in item 56's slice).
    let mut job =
        offload::Job::kernel(Arc::clone(&package), "before_start", 100, values).expect("job");
    cluster
        .run(&mut job, &Options::default().threads(1))
        .expect("an unchecked run");
    // OpenCL devices cannot be fenced: refused, not ignored.
    let error = cluster
        .run(
            &mut job,
            &Options::default()
                .check(true)
                .device(offload::DeviceChoice::Auto),
        )
        .expect_err("refused");
    assert!(
        error
            .to_string()
            .contains("check mode (--check) runs every item on this machine's CPU"),
        "{error}"
    );
}
