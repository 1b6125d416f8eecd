//! Isolated local workers (`Options::isolated`, what `offload run` always uses): a kernel
//! that traps, hangs or makes a system call fails its job with a sentence and the
//! calling process lives on to run the next job; buffers the caller lent are written back
//! only after success; results equal an in-process run's, `sum` totals bit for bit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use offload::job::Step;
use offload::{Cluster, Config, Engine, Job, Options, Package, RunError};

use crate::common::{offload, package, read_le, repo_path, test_cache_dir, write_le};

const BIN: &str = env!("CARGO_BIN_EXE_offload");

fn traps(dir: &Path) -> PathBuf {
    package(
        &repo_path("tests/kernels/traps.c"),
        &repo_path("tests/kernels/traps.toml"),
        dir,
        "traps",
    )
}

/// A folder with the traps package, the package read, and this machine as a cluster.
fn traps_on_this_machine() -> (tempfile::TempDir, Arc<Package>, Cluster) {
    let dir = tempfile::tempdir().expect("temp dir");
    let package = Arc::new(Package::read(&traps(dir.path())).expect("package"));
    (dir, package, local())
}

fn local() -> Cluster {
    Cluster::from_engine(
        Engine::new(Config::default().cache_dir(test_cache_dir())).expect("engine"),
    )
}

/// Runs `kernel` of the traps package over 100 items on `y`, item `at` trapping.
fn run_traps(
    cluster: &Cluster,
    package: &Arc<Package>,
    kernel: &str,
    at: u64,
    y: &mut [i32],
    options: &Options,
) -> Result<offload::Report, RunError> {
    let mut job = Job::builder(Arc::clone(package))
        .scalar("at", at)
        .buffer("y", y)
        .step(Step::new(kernel, "100").value("at", "at").buffer("y", "y"))
        .build()
        .expect("job");
    match cluster.run(&mut job, options) {
        Ok(report) => Ok(report),
        Err(offload::LaunchError::Run(error)) => Err(error),
        Err(other) => panic!("not a run error: {other}"),
    }
}

#[test]
fn a_job_whose_kernel_traps_fails_in_words_and_the_same_process_runs_the_next_one() {
    let (_dir, package, cluster) = traps_on_this_machine();
    let options = Options::default().threads(2).isolated(BIN);
    for (kernel, words) in [
        ("divide", "SIGFPE"),
        ("wild_write", "SIGSEGV"),
        ("trap", "SIGILL"),
        ("overflow", "stack overflow"),
    ] {
        let mut y = vec![7i32; 100];
        let error =
            run_traps(&cluster, &package, kernel, 57, &mut y, &options).expect_err("item 57 traps");
        let message = error.to_string();
        assert!(
            matches!(error, RunError::KernelCrashed { start, end, .. } if start <= 57 && 57 < end),
            "{kernel}: {message}"
        );
        assert!(
            message.contains(&format!("kernel `{kernel}` crashed on items "))
                && message.contains(words),
            "{kernel}: {message}"
        );
        // The lent buffer is the caller's as it was: the kernels wrote a copy.
        assert_eq!(
            y,
            vec![7; 100],
            "{kernel}: a failed job changed the lent buffer"
        );
        // This process lives on, and the next job gets fresh workers.
        let report = run_traps(&cluster, &package, kernel, 1000, &mut y, &options)
            .unwrap_or_else(|e| panic!("{kernel}: the next job: {e}"));
        assert_eq!(report.isolated_workers, 2, "{kernel}");
        assert_eq!(
            y,
            (0..100).collect::<Vec<i32>>(),
            "{kernel}: results written back"
        );
    }
}

#[test]
fn a_hung_kernel_is_stopped_at_the_packet_timeout_and_the_process_lives_on() {
    let (_dir, package, cluster) = traps_on_this_machine();
    let options = Options::default()
        .threads(1)
        .isolated(BIN)
        .packet_timeout(Duration::from_millis(300));
    let mut y = vec![5i32; 100];
    // `spin` never ends for an odd `at + 1`.
    let error =
        run_traps(&cluster, &package, "spin", 8, &mut y, &options).expect_err("the packet hangs");
    assert!(matches!(error, RunError::PacketTimedOut { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("kernel `spin` ran longer than the packet timeout (0.3 s) on items "),
        "{error}"
    );
    assert_eq!(y, vec![5; 100]);
    run_traps(&cluster, &package, "divide", 1000, &mut y, &options).expect("the next job");
    assert_eq!(y, (0..100).collect::<Vec<i32>>());
}

#[test]
fn a_kernel_that_makes_a_system_call_is_named_with_the_call_and_its_items() {
    let test = "a_kernel_that_makes_a_system_call_is_named_with_the_call_and_its_items";
    if !crate::sandbox::sandbox_here(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let pkg = traps(dir.path());
    let y = dir.path().join("y.bin");
    let before = vec![3i32; 100];
    write_le(&y, &before);
    // `divide` over 100 items, none trapping, with `flags` added.
    let divide = |flags: &[&str]| {
        let mut args: Vec<std::ffi::OsString> = vec!["run".into(), pkg.clone().into()];
        args.extend(
            ["--kernel", "divide", "--items", "100", "--arg", "at=1000"]
                .iter()
                .chain(flags)
                .map(Into::into),
        );
        args.push("--inout".into());
        args.push(format!("y={}", y.display()).into());
        offload(&args)
    };
    for call in ["openat", "socket", "execve"] {
        // The test-only fault makes the worker call it, raw, before each packet's kernel
        // (a C kernel cannot reach a system call: the packager refuses them).
        let fault = format!("forbidden-call={call}");
        let out = divide(&["--worker-fault", &fault]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{call}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "kernel `divide` made a forbidden system call ({call}) on items "
            )) && stderr.contains("no output or --inout file was changed"),
            "{call}: {stderr}"
        );
        assert_eq!(
            read_le::<i32>(&y),
            before,
            "{call}: the --inout file changed"
        );
    }
    crate::common::assert_no_staged_files(dir.path(), "a forbidden call");
    // In process nothing confines the kernel: the same call runs and so does the job
    // (which is why `offload run` isolates).
    let out = divide(&["--in-process"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_le::<i32>(&y), (0..100).collect::<Vec<i32>>());
}

#[test]
fn isolated_results_equal_in_process_ones_and_sums_match_bit_for_bit() {
    let manifest = offload::Manifest::parse(
        &std::fs::read_to_string(repo_path("examples/dot/manifest.toml")).expect("manifest"),
    )
    .expect("manifest");
    let package = Arc::new(
        offload::package_source(&repo_path("examples/dot/kernel.rs"), &manifest).expect("package"),
    );
    let n = 100_003usize;
    // Values whose float sum depends on the order of additions.
    let x: Vec<f64> = (0..n).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let y: Vec<f64> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f64 * 1e-3 + 1e7)
        .collect();
    let cluster = local();
    let mut totals = Vec::new();
    for options in [
        Options::default().threads(2),
        Options::default().threads(2).isolated(BIN),
        Options::default().threads(1).isolated(BIN),
    ] {
        let mut acc = [0.0f64];
        let mut job = Job::builder(Arc::clone(&package))
            .input("x", &x)
            .input("y", &y)
            .buffer("acc", &mut acc)
            .step(
                Step::new("dot", n.to_string().as_str())
                    .buffer("x", "x")
                    .buffer("y", "y")
                    .buffer("acc", "acc"),
            )
            .build()
            .expect("job");
        let report = cluster.run(&mut job, &options).expect("run");
        drop(job);
        totals.push((report.isolated_workers, acc[0].to_bits()));
    }
    assert_eq!(
        totals.iter().map(|t| t.0).collect::<Vec<_>>(),
        vec![0, 2, 1]
    );
    assert_eq!(totals[0].1, totals[1].1, "{totals:?}");
    assert_eq!(totals[0].1, totals[2].1, "{totals:?}");
    let exact: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
    assert!((f64::from_bits(totals[0].1) - exact).abs() < 1e-3 * exact.abs());
}

/// The engine workers (`offload __engine-worker`) among the children of `pid`.
fn engine_workers(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|child| {
            std::fs::read(format!("/proc/{child}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__engine-worker"))
        })
        .collect()
}

#[test]
fn the_workers_of_a_run_die_with_it_even_when_it_is_killed_outright() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pkg = traps(dir.path());
    let y = dir.path().join("y.bin");
    write_le(&y, &[5i32; 4]);
    // `spin` never ends: both workers spin until something stops them.
    let mut run = crate::common::die_with_test(&mut std::process::Command::new(BIN))
        .env("OFFLOAD_CACHE_DIR", test_cache_dir())
        .arg("run")
        .arg(&pkg)
        .args([
            "--kernel",
            "spin",
            "--items",
            "4",
            "--arg",
            "at=8",
            "--threads",
            "2",
        ])
        .arg("--inout")
        .arg(format!("y={}", y.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start offload run");
    let mut workers = Vec::new();
    let started = crate::common::wait_until(Duration::from_secs(60), || {
        workers = engine_workers(run.id());
        workers.len() == 2
    });
    assert!(started, "the run did not start two engine workers");
    // SIGKILL: no handler of the run's can do anything; the workers must still end.
    run.kill().expect("kill the run");
    let _ = run.wait();
    assert!(
        crate::common::wait_for_exits(&workers, Duration::from_secs(10)),
        "engine workers {workers:?} outlived their run"
    );
    assert_eq!(
        read_le::<i32>(&y),
        vec![5; 4],
        "a killed run changed its --inout file"
    );
}

#[test]
fn a_worker_program_that_cannot_start_is_an_error_naming_it() {
    let (dir, package, cluster) = traps_on_this_machine();
    let mut y = vec![1i32; 100];
    let missing = dir.path().join("no-such-offload");
    let options = Options::default().threads(2).isolated(&missing);
    let error = run_traps(&cluster, &package, "divide", 1000, &mut y, &options)
        .expect_err("no worker program");
    assert!(
        error.to_string().contains(&format!(
            "cannot start the kernel worker `{}`",
            missing.display()
        )),
        "{error}"
    );
    // A program that is not offload's worker ends before it is ready.
    let options = Options::default().threads(1).isolated("/bin/true");
    let error =
        run_traps(&cluster, &package, "divide", 1000, &mut y, &options).expect_err("not a worker");
    assert!(
        error
            .to_string()
            .contains("the kernel worker could not start"),
        "{error}"
    );
    assert_eq!(y, vec![1; 100]);
}

#[test]
fn workers_started_ahead_serve_runs_on_their_thread_and_other_threads_start_their_own() {
    let (_dir, package, cluster) = traps_on_this_machine();
    let options = Options::default().threads(2).isolated(BIN);
    // Spares started by a thread that ends die with it; a run elsewhere starts its own.
    std::thread::scope(|s| {
        s.spawn(|| options.warm_up(2));
    });
    let mut y = vec![0i32; 100];
    let report = run_traps(&cluster, &package, "divide", 1000, &mut y, &options)
        .expect("a run after the spares' thread ended");
    assert_eq!(report.isolated_workers, 2);
    assert_eq!(y, (0..100).collect::<Vec<i32>>());
    // Spares of this thread are taken (more than asked for are started fresh), and the
    // run is the same.
    options.warm_up(1);
    let mut y = vec![0i32; 100];
    run_traps(&cluster, &package, "divide", 1000, &mut y, &options).expect("a warmed run");
    assert_eq!(y, (0..100).collect::<Vec<i32>>());
    let error =
        run_traps(&cluster, &package, "wild_write", 3, &mut y, &options).expect_err("item 3 traps");
    assert!(
        error
            .to_string()
            .contains("kernel `wild_write` crashed on items "),
        "{error}"
    );
}

#[test]
fn a_job_of_more_buffers_than_one_message_carries_reaches_every_worker() {
    let (_dir, package, cluster) = traps_on_this_machine();
    // 300 buffers: their descriptors travel in two messages (250 at most in one).
    let mut builder = Job::builder(Arc::clone(&package)).scalar("at", 1000u64);
    for b in 0..300 {
        builder = builder.zeros(&format!("b{b}"), offload::ScalarType::I32, 100);
    }
    let mut job = builder
        .step(
            Step::new("divide", "100")
                .value("at", "at")
                .buffer("y", "b0"),
        )
        .step(
            Step::new("trap", "100")
                .value("at", "at")
                .buffer("y", "b299"),
        )
        .build()
        .expect("job");
    let report = cluster
        .run(&mut job, &Options::default().threads(2).isolated(BIN))
        .expect("run");
    assert_eq!(report.isolated_workers, 2);
    let values = |name: &str| -> Vec<i32> {
        job.buffer(name)
            .expect("buffer")
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    assert_eq!(values("b0"), (0..100).collect::<Vec<i32>>());
    assert_eq!(values("b299"), (0..100).collect::<Vec<i32>>());
    assert_eq!(values("b150"), vec![0; 100]);
}

/// A program of `buffers` zero-filled buffers (pairs written by the jacobi example's
/// `init`), its package beside it, and its output file.
fn program_of_many_buffers(buffers: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    package(
        &repo_path("examples/jacobi/kernel.c"),
        &repo_path("examples/jacobi/manifest.toml"),
        dir.path(),
        "jacobi",
    );
    let mut text = String::from("package = \"jacobi.okp\"\n[scalars]\nn = 4\n[buffers]\n");
    for b in 0..buffers {
        text += &format!("b{b} = {{ type = \"f64\", zeros = \"n*n\" }}\n");
    }
    for b in (0..buffers).step_by(2) {
        text += &format!(
            "[[step]]\nkernel = \"init\"\nitems = \"n\"\nargs = {{ n = \"n\", a = \"b{b}\", b = \"b{}\" }}\n",
            b + 1
        );
    }
    text += "[outputs]\nb0 = \"out.bin\"\n";
    let program = dir.path().join("program.toml");
    std::fs::write(&program, text).expect("write the program");
    (dir, program)
}

/// `offload run PROGRAM` with its open-files limit set to `soft` and `hard` first.
fn run_with_open_files_limit(program: &Path, soft: u64, hard: u64) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(BIN);
    command
        .env("OFFLOAD_CACHE_DIR", test_cache_dir())
        .arg("run")
        .arg(program);
    // SAFETY: setrlimit is async-signal-safe; it lowers this child's own limit.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.output().expect("start offload run")
}

#[test]
fn a_program_of_more_buffers_than_the_usual_soft_limit_runs_and_one_beyond_the_hard_limit_says_so()
{
    // 1,200 buffers, one descriptor each: above the usual soft limit of 1,024, which
    // offload raises to the hard limit.
    let (dir, program) = program_of_many_buffers(1200);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `limit`.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    // This process's hard limit where it is high enough (raising it needs root).
    let hard = if limit.rlim_max >= 2048 {
        limit.rlim_max
    } else {
        4096
    };
    let out = run_with_open_files_limit(&program, 1024, hard);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let grid: Vec<f64> = read_le(&dir.path().join("out.bin"));
    assert_eq!(grid.len(), 16);
    std::fs::remove_file(dir.path().join("out.bin")).expect("remove the output");

    // Where the hard limit is 1,024 too, the run is refused in words, and the workers
    // started ahead for it end without a word of their own.
    let out = run_with_open_files_limit(&program, 1024, 1024);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("as many files open as it may (1024")
            && stderr.contains("ulimit -n")
            && stderr.contains("nothing was run"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!dir.path().join("out.bin").exists());
}

#[test]
fn llvm_failing_in_the_compiler_process_fails_the_run_in_words_and_offload_lives_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pkg = crate::common::saxpy_package(dir.path());
    let (x, y) = (dir.path().join("x.bin"), dir.path().join("y.bin"));
    write_le(&x, &[1.0f32; 64]);
    write_le(&y, &[2.0f32; 64]);
    // A cache of its own: the kernel is compiled, not found.
    let cache = dir.path().join("cache");
    let run = |faults: &[&str]| {
        let mut args: Vec<std::ffi::OsString> = vec!["--cache-dir".into(), cache.clone().into()];
        args.extend(
            [
                "run", "", "--kernel", "saxpy", "--items", "64", "--arg", "a=0.5",
            ]
            .iter()
            .map(|a| a.into()),
        );
        args[3] = pkg.clone().into();
        args.push(format!("--in=x={}", x.display()).into());
        args.push(format!("--inout=y={}", y.display()).into());
        for fault in faults {
            args.push(format!("--worker-fault={fault}").into());
        }
        offload(args)
    };
    // The helper aborts, as LLVM failing an assertion does.
    let out = run(&["compiler-abort"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the compiler process for kernel `saxpy` crashed: SIGABRT")
            && stderr.contains("no output or --inout file was changed"),
        "{stderr}"
    );
    assert_eq!(read_le::<f32>(&y), vec![2.0f32; 64]);
    crate::common::assert_no_staged_files(dir.path(), "after the compiler crashed");
    // The helper compiles in the kernel workers' sandbox: code that took it over
    // through LLVM and opened a file is killed, and the call is named.
    if crate::sandbox::sandbox_here(
        "llvm_failing_in_the_compiler_process_fails_the_run_in_words_and_offload_lives_on",
    ) {
        let out = run(&["compiler-forbidden-call"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(
                "the compiler process for kernel `saxpy` crashed: a forbidden system call (openat)"
            ),
            "{stderr}"
        );
        assert_eq!(read_le::<f32>(&y), vec![2.0f32; 64]);
    }
    // Nothing half-made was cached: the next run compiles and runs.
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_le::<f32>(&y), vec![2.5f32; 64]);

    // Through the Rust API, with the same helper: the error, and the process goes on.
    let package = Arc::new(Package::read(&pkg).expect("package"));
    let engine = Engine::new(
        Config::default()
            .cache_dir(dir.path().join("api-cache"))
            .object_compiler(Arc::new(offload::CompilerProcess::new(
                BIN,
                &["compiler-abort".to_string()],
            ))),
    )
    .expect("engine");
    let mut job = Job::kernel(
        package,
        "saxpy",
        64,
        vec![
            offload::ArgValue::Scalar(offload::ScalarValue::F32(0.5)),
            offload::ArgValue::Buffer(offload::Buffer::from_bytes(&[0u8; 256])),
            offload::ArgValue::Buffer(offload::Buffer::from_bytes(&[0u8; 256])),
        ],
    )
    .expect("job");
    let error = Cluster::from_engine(engine)
        .run(&mut job, &Options::default())
        .expect_err("the compiler crashed");
    assert!(
        error
            .to_string()
            .contains("the compiler process for kernel `saxpy` crashed: SIGABRT"),
        "{error}"
    );
}

#[test]
fn a_run_refused_before_it_starts_says_only_why_though_its_first_worker_started_early() {
    // `offload run` starts its first worker before parsing its command line; a run
    // that ends at once (a wrong argument, a package that is not there) says only that,
    // and the worker ends without a word.
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.okp");
    for (args, expected, code) in [
        (
            vec!["--kernel", "k", "--items", "many"],
            "invalid value 'many' for '--items <ITEMS>'",
            2,
        ),
        (vec!["--kernel", "k", "--items", "4"], "missing.okp", 1),
    ] {
        let out = std::process::Command::new(BIN)
            .env("OFFLOAD_CACHE_DIR", test_cache_dir())
            .arg("run")
            .arg(&missing)
            .args(&args)
            .output()
            .expect("run offload");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        let errors = stderr.lines().filter(|l| l.starts_with("error")).count();
        assert_eq!(
            errors, 1,
            "{args:?}: one error, nothing from the worker: {stderr}"
        );
        assert!(!stderr.contains("set-up"), "{args:?}: {stderr}");
    }
}
