//! Programs: jobs of many steps over resident buffers (`offload run program.toml` and the
//! Rust builder), checked against native Rust references of the examples; every misuse
//! refused before anything runs; `sum` results bit-identical run after run; packages of
//! the previous format still run.

use std::path::PathBuf;
use std::sync::Arc;

use offload::job::{Step, StepItem};
use offload::{ArgValue, Buffer, Cluster, Config, DeviceChoice, Engine, Job, Options, Package};

use crate::common::{offload, offload_ok, package, read_le, repo_path, run_values, write_le};

/// A folder holding an example's package under the name its program file uses, and a
/// copy of the program: `offload run DIR/program.toml` writes its outputs there.
pub struct Example {
    pub dir: tempfile::TempDir,
}

impl Example {
    pub fn new(name: &str) -> Example {
        let dir = tempfile::tempdir().expect("temp dir");
        let example = repo_path(&format!("examples/{name}"));
        package(
            &example.join("kernel.c"),
            &example.join("manifest.toml"),
            dir.path(),
            name,
        );
        std::fs::copy(
            example.join("program.toml"),
            dir.path().join("program.toml"),
        )
        .expect("copy the program");
        Example { dir }
    }

    pub fn program(&self) -> PathBuf {
        self.dir.path().join("program.toml")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn package(&self, name: &str) -> Arc<Package> {
        Arc::new(Package::read(&self.path(&format!("{name}.okp"))).expect("package"))
    }

    /// `offload run program.toml --arg NAME=VALUE... EXTRA...`, which must succeed.
    pub fn run(&self, scalars: &[(&str, u64)], extra: &[&str]) -> String {
        let mut args = vec!["run".to_string(), self.program().display().to_string()];
        for (name, value) in scalars {
            args.push("--arg".into());
            args.push(format!("{name}={value}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = offload_ok(&args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// PolyBench jacobi-2d as plain Rust: `tsteps` pairs of sweeps on an `n × n` grid, the
/// boundary kept; returns grid `a`.
pub fn jacobi_reference(n: usize, tsteps: usize) -> Vec<f64> {
    let mut a = vec![0.0f64; n * n];
    let mut b = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (i as f64 * (j + 2) as f64 + 2.0) / n as f64;
            b[i * n + j] = (i as f64 * (j + 3) as f64 + 3.0) / n as f64;
        }
    }
    let sweep = |src: &[f64], dst: &mut [f64]| {
        dst.copy_from_slice(src);
        for i in 1..n - 1 {
            for j in 1..n - 1 {
                dst[i * n + j] = 0.2
                    * (src[i * n + j]
                        + src[i * n + j - 1]
                        + src[i * n + j + 1]
                        + src[(i + 1) * n + j]
                        + src[(i - 1) * n + j]);
            }
        }
    };
    for _ in 0..tsteps {
        sweep(&a, &mut b);
        sweep(&b, &mut a);
    }
    a
}

/// PolyBench floyd-warshall as plain Rust on the example's starting distances.
pub fn floyd_reference(n: usize) -> Vec<i32> {
    let mut path = vec![0i32; n * n];
    for i in 0..n {
        for j in 0..n {
            let mut v = (i * j % 7 + 1) as i32;
            if (i + j) % 13 == 0 || (i + j) % 7 == 0 || (i + j) % 11 == 0 {
                v = 999;
            }
            path[i * n + j] = v;
        }
    }
    for k in 0..n {
        for i in 0..n {
            for j in 0..n {
                let via = path[i * n + k] + path[k * n + j];
                if via < path[i * n + j] {
                    path[i * n + j] = via;
                }
            }
        }
    }
    path
}

/// Relative tolerance of the Jacobi comparison: the kernel is the reference's loop, so
/// differences come only from the compilers' choice of instructions.
const JACOBI_TOLERANCE: f64 = 1e-12;

pub fn assert_jacobi_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "grid size");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let scale = w.abs().max(1e-300);
        assert!(
            (g - w).abs() / scale <= JACOBI_TOLERANCE,
            "element {k}: {g} against the reference's {w}"
        );
    }
}

#[test]
fn the_jacobi_program_matches_the_native_reference() {
    let example = Example::new("jacobi");
    let stdout = example.run(&[("n", 64), ("tsteps", 10)], &[]);
    // 1 init step + 2 sweeps per time step.
    assert!(stdout.contains("21 steps"), "{stdout}");
    let grid: Vec<f64> = read_le(&example.path("grid.bin"));
    assert_jacobi_close(&grid, &jacobi_reference(64, 10));
}

#[test]
fn the_jacobi_program_with_device_auto_matches_the_native_reference() {
    let example = Example::new("jacobi");
    example.run(
        &[("n", 48), ("tsteps", 6)],
        &["--device", "auto", "--threads", "2"],
    );
    let grid: Vec<f64> = read_le(&example.path("grid.bin"));
    assert_jacobi_close(&grid, &jacobi_reference(48, 6));
}

#[test]
fn the_floyd_warshall_program_is_bit_exact() {
    let example = Example::new("floyd");
    let stdout = example.run(&[("n", 70)], &["--device", "auto"]);
    // 1 init step + 2 steps per k.
    assert!(stdout.contains("141 steps"), "{stdout}");
    let paths: Vec<i32> = read_le(&example.path("paths.bin"));
    assert_eq!(paths, floyd_reference(70));
}

#[test]
fn the_rust_builder_runs_the_same_program_on_lent_memory() {
    let example = Example::new("jacobi");
    let n = 40u64;
    let tsteps = 5u64;
    let mut grid = vec![0.0f64; (n * n) as usize];
    let mut job = Job::builder(example.package("jacobi"))
        .scalar("n", n)
        .buffer("a", &mut grid)
        .zeros("b", offload::ScalarType::F64, n * n)
        .step(
            Step::new("init", "n")
                .value("n", "n")
                .buffer("a", "a")
                .buffer("b", "b"),
        )
        .step(StepItem::repeat(
            2 * tsteps,
            Some("t"),
            vec![Step::new("jacobi", "n")
                .value("n", "n")
                .buffers("src", &["a", "b"])
                .buffers("dst", &["b", "a"])
                .into()],
        ))
        .build()
        .expect("a valid program");
    let report = Cluster::local()
        .expect("local node")
        .run(&mut job, &Options::default().threads(2))
        .expect("run");
    assert_eq!(report.steps, 1 + 2 * tsteps as usize);
    drop(job);
    assert_jacobi_close(&grid, &jacobi_reference(n as usize, tsteps as usize));
}

#[test]
fn a_buffer_lent_read_only_that_a_step_writes_is_refused() {
    let example = Example::new("jacobi");
    let n = 8u64;
    let grid = vec![0.0f64; (n * n) as usize];
    let error = Job::builder(example.package("jacobi"))
        .scalar("n", n)
        .input("a", &grid)
        .zeros("b", offload::ScalarType::F64, n * n)
        .step(
            Step::new("init", "n")
                .value("n", "n")
                .buffer("a", "a")
                .buffer("b", "b"),
        )
        .build()
        .expect_err("init writes a");
    assert!(
        error
            .to_string()
            .contains("writes buffer `a`, which was lent read-only"),
        "{error}"
    );
}

/// Writes `program` as DIR/bad.toml beside the jacobi package and runs it; it must
/// fail before anything runs (no output file) with a message holding every needle.
fn refused_program(example: &Example, program: &str, needles: &[&str]) {
    let path = example.path("bad.toml");
    std::fs::write(&path, program).expect("write the program");
    let out = offload(["run".as_ref(), path.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "the program ran: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
    assert!(
        !example.path("out.bin").exists(),
        "an output was written by a refused program"
    );
}

#[test]
fn every_misuse_of_a_program_is_refused_before_anything_runs() {
    let example = Example::new("jacobi");
    let head = "package = \"jacobi.okp\"\n[scalars]\nn = 16\n[outputs]\na = \"out.bin\"\n";
    // A buffer whose length does not match the kernel's size expression.
    refused_program(
        &example,
        &format!(
            "{head}[buffers]\na = {{ type = \"f64\", zeros = \"n\" }}\nb = {{ type = \"f64\", zeros = \"n*n\" }}\n\
             [[step]]\nkernel = \"init\"\nitems = \"n\"\nargs = {{ n = \"n\", a = \"a\", b = \"b\" }}\n"
        ),
        &["step 1 (init)", "buffer `a`", "must be 256 elements"],
    );
    // A binding to a parameter the kernel does not have.
    refused_program(
        &example,
        &format!(
            "{head}[buffers]\na = {{ type = \"f64\", zeros = \"n*n\" }}\nb = {{ type = \"f64\", zeros = \"n*n\" }}\n\
             [[step]]\nkernel = \"init\"\nitems = \"n\"\nargs = {{ n = \"n\", a = \"a\", b = \"b\", c = \"a\" }}\n"
        ),
        &["init", "`c`"],
    );
    // Two steps of one `together` group, one writing what the other reads.
    refused_program(
        &example,
        &format!(
            "{head}[buffers]\na = {{ type = \"f64\", zeros = \"n*n\" }}\nb = {{ type = \"f64\", zeros = \"n*n\" }}\n\
             [[step]]\ntogether = [\n  {{ kernel = \"jacobi\", items = \"n\", args = {{ n = \"n\", src = \"a\", dst = \"b\" }} }},\n  \
             {{ kernel = \"jacobi\", items = \"n\", args = {{ n = \"n\", src = \"b\", dst = \"a\" }} }},\n]\n"
        ),
        &["writes buffer `a`", "same `together` group"],
    );
    // A buffer of a type the kernel does not take.
    refused_program(
        &example,
        &format!(
            "{head}[buffers]\na = {{ type = \"f32\", zeros = \"n*n\" }}\nb = {{ type = \"f64\", zeros = \"n*n\" }}\n\
             [[step]]\nkernel = \"init\"\nitems = \"n\"\nargs = {{ n = \"n\", a = \"a\", b = \"b\" }}\n"
        ),
        &["init", "`a`", "f32"],
    );
    // Two outputs to one file: by the same name, and through a link (also one whose
    // target does not exist yet), which would have let the second replace the first.
    std::os::unix::fs::symlink("out.bin", example.path("link.bin")).expect("symlink");
    let buffers = "[buffers]\na = { type = \"f64\", zeros = \"n*n\" }\nb = { type = \"f64\", zeros = \"n*n\" }\n\
                   [[step]]\nkernel = \"init\"\nitems = \"n\"\nargs = { n = \"n\", a = \"a\", b = \"b\" }\n";
    for second in ["out.bin", "./out.bin", "link.bin"] {
        refused_program(
            &example,
            &format!("{head}b = \"{second}\"\n{buffers}"),
            &[
                second,
                "buffer `a` is written to this file too",
                "two outputs cannot share a file",
            ],
        );
        assert!(!example.path("out.bin").exists());
    }
    assert!(std::fs::symlink_metadata(example.path("link.bin"))
        .expect("the link")
        .file_type()
        .is_symlink());
}

#[test]
fn a_halo_on_an_out_buffer_is_refused_when_packaging() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = dir.path().join("manifest.toml");
    std::fs::write(
        &manifest,
        "version = 2\n[[kernel]]\nname = \"jacobi\"\nkind = \"item\"\nargs = [\"n: u64\", \"src: in f64[n]\", \"dst: out f64[n] halo 1\"]\n",
    )
    .expect("write the manifest");
    let out = offload([
        "package".as_ref(),
        repo_path("examples/jacobi/kernel.c").as_os_str(),
        "--manifest".as_ref(),
        manifest.as_os_str(),
        "-o".as_ref(),
        dir.path().join("j.okp").as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("dst") && stderr.contains("halo"),
        "{stderr}"
    );
    assert!(!dir.path().join("j.okp").exists());
}

/// The dot kernel's `sum` over values whose float sum depends on the order of adding.
fn dot_values(n: usize) -> (Vec<f64>, Vec<f64>) {
    let x: Vec<f64> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f64 * 1e-3 + if i % 3 == 0 { 1e8 } else { 1e-8 })
        .collect();
    let y: Vec<f64> = (0..n).map(|i| 1.0 + (i % 17) as f64 * 0.1).collect();
    (x, y)
}

#[test]
fn sums_are_bit_identical_run_after_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("dot.c");
    std::fs::write(
        &source,
        "void dot(unsigned long i, const double *x, const double *y, double *total) { total[0] += x[i] * y[i]; }\n",
    )
    .expect("write the kernel");
    let manifest = dir.path().join("dot.toml");
    std::fs::write(
        &manifest,
        "[[kernel]]\nname = \"dot\"\nkind = \"item\"\nargs = [\"x: in f64[1]\", \"y: in f64[1]\", \"total: sum f64[1]\"]\n",
    )
    .expect("write the manifest");
    let pkg = package(&source, &manifest, dir.path(), "dot");
    let package = Package::read(&pkg).expect("package");
    let engine =
        Engine::new(Config::default().cache_dir(crate::common::test_cache_dir())).expect("engine");
    let n = 200_003;
    let (x, y) = dot_values(n);
    let mut results = Vec::new();
    // Different thread counts and packet sizes: the packets of a sum job are fixed by
    // its items, and their partials are added in item order, so nothing may change.
    for threads in [1, 2, 2, 1, 2] {
        let mut args = vec![
            ArgValue::Buffer(Buffer::from_bytes(&to_bytes(&x))),
            ArgValue::Buffer(Buffer::from_bytes(&to_bytes(&y))),
            ArgValue::Buffer(Buffer::zeroed(8)),
        ];
        run_values(
            &engine,
            &package,
            "dot",
            n as u64,
            &mut args,
            &Options::default().threads(threads),
        )
        .expect("dot");
        let ArgValue::Buffer(total) = &args[2] else {
            unreachable!("argument 2 is the sum")
        };
        results.push(total.as_bytes().to_vec());
    }
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "the sum changed between runs: {:?}",
        results
            .iter()
            .map(|r| f64::from_le_bytes(r[..8].try_into().expect("8 bytes")))
            .collect::<Vec<_>>()
    );
    // The same through the CLI, whose result must equal the API's.
    let (xs, ys, total) = (
        dir.path().join("x.bin"),
        dir.path().join("y.bin"),
        dir.path().join("t.bin"),
    );
    write_le(&xs, &x);
    write_le(&ys, &y);
    let mut cli = Vec::new();
    for threads in ["1", "2"] {
        offload_ok([
            "run".as_ref(),
            pkg.as_os_str(),
            "--kernel".as_ref(),
            "dot".as_ref(),
            "--items".as_ref(),
            n.to_string().as_ref(),
            "--threads".as_ref(),
            threads.as_ref(),
            "--in".as_ref(),
            format!("x={}", xs.display()).as_ref(),
            "--in".as_ref(),
            format!("y={}", ys.display()).as_ref(),
            "--sum".as_ref(),
            format!("total={}", total.display()).as_ref(),
        ]);
        cli.push(std::fs::read(&total).expect("the sum file"));
    }
    assert_eq!(cli[0], cli[1], "CLI runs with 1 and 2 threads differ");
    assert_eq!(cli[0], results[0], "the CLI and the API differ");
}

fn to_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn a_package_of_the_previous_format_still_runs() {
    // Written by the release before kernel model v2 (package format 2) from
    // examples/saxpy: the manifest inside is v1 structures, read through their text.
    let old = repo_path("tests/data/saxpy-format2.okp");
    let bytes = std::fs::read(&old).expect("the fixture");
    assert_eq!(
        u16::from_le_bytes([bytes[6], bytes[7]]),
        2,
        "a format 2 file"
    );
    let inspect = offload_ok(["inspect".as_ref(), old.as_os_str()]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("saxpy"), "{text}");
    let dir = tempfile::tempdir().expect("temp dir");
    let (x, y) = (dir.path().join("x.bin"), dir.path().join("y.bin"));
    let xs: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let ys: Vec<f32> = (0..1000).map(|i| 1.0 - i as f32).collect();
    write_le(&x, &xs);
    write_le(&y, &ys);
    offload_ok([
        "run".as_ref(),
        old.as_os_str(),
        "--kernel".as_ref(),
        "saxpy".as_ref(),
        "--items".as_ref(),
        "1000".as_ref(),
        "--arg".as_ref(),
        "a=2".as_ref(),
        "--in".as_ref(),
        format!("x={}", x.display()).as_ref(),
        "--inout".as_ref(),
        format!("y={}", y.display()).as_ref(),
    ]);
    let got: Vec<f32> = read_le(&y);
    let want: Vec<f32> = xs.iter().zip(&ys).map(|(x, y)| 2.0 * x + y).collect();
    assert_eq!(got, want);
}

/// A one-step job of a program's kernel through the API gives the same buffer on the
/// CPU and with `DeviceChoice::Auto`.
#[test]
fn a_one_step_job_of_a_program_kernel_runs_on_every_device_choice() {
    let example = Example::new("floyd");
    let package = example.package("floyd");
    let n = 20u64;
    let mut outputs = Vec::new();
    for device in [DeviceChoice::Cpu, DeviceChoice::Auto] {
        let mut job = Job::kernel(
            package.clone(),
            "init",
            n,
            vec![
                ArgValue::Scalar(offload::ScalarValue::U64(n)),
                ArgValue::Buffer(Buffer::zeroed((n * n * 4) as usize)),
            ],
        )
        .expect("job");
        Cluster::local()
            .expect("local node")
            .run(&mut job, &Options::default().device(device))
            .expect("run");
        outputs.push(job.buffer("path").expect("path").to_vec());
    }
    assert_eq!(outputs[0], outputs[1]);
    let init: Vec<i32> = outputs[0]
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    assert_eq!(init[(3 * n + 4) as usize], 999); // (3 + 4) % 7 == 0
    assert_eq!(init[(n + 1) as usize], 2); // row 1, column 1: 1 * 1 % 7 + 1
}
