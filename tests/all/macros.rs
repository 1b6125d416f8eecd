//! `#[offload::kernel]`, `offload-build` and the `Cluster` API, end to end: the kernels of
//! `examples/macro-kernels/src/kernels.rs` are compiled into this test binary as plain
//! Rust (through the macro) and packaged by `offload_build::package_file` (what the
//! example's build.rs does); results through the engine must equal direct calls. The
//! example crate itself is built and run too, and its embedded package is compared with
//! what `offload package` makes of the generated source.

#[path = "../../examples/macro-kernels/src/kernels.rs"]
mod kernels;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use offload::{ArgError, Cluster, Config, Kernel, KernelArg, LaunchError, Options, Package};

use crate::common::{offload_ok, repo_path, run_bounded};

/// The kernel file, packaged once per test run.
struct Fixture {
    _dir: tempfile::TempDir,
    built: offload_build::Built,
    cluster: Cluster,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let built = offload_build::package_file(
            &repo_path("examples/macro-kernels/src/kernels.rs"),
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("packaging the example's kernels failed: {e}"));
        let cluster = Cluster::local_with(Config::default().cache_dir(dir.path().join("cache")))
            .expect("local node");
        Fixture {
            _dir: dir,
            built,
            cluster,
        }
    })
}

fn kernel(name: &str) -> Kernel {
    Kernel::new(Arc::new(fixture().built.package.clone()), name).expect("kernel in package")
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

fn text(n: usize) -> Vec<u8> {
    let words = ["alpha ", "be\tta ", "gamma\n", "  ", "d", "elta\r\n", "x "];
    words
        .iter()
        .cycle()
        .flat_map(|w| w.bytes())
        .take(n)
        .collect()
}

fn two_threads() -> Options {
    // Two workers: more than one packet, so window offsets and sum merging are exercised.
    Options::default().threads(2)
}

#[test]
fn saxpy_through_the_engine_equals_direct_calls() {
    let n = 10_007;
    let x: Vec<f32> = values(n, 1).iter().map(|&v| v as f32).collect();
    let y0: Vec<f32> = values(n, 2).iter().map(|&v| v as f32).collect();
    let mut direct = y0.clone();
    for i in 0..n {
        kernels::saxpy(i, -1.75, &x[i..i + 1], &mut direct[i..i + 1]);
    }
    let mut offloaded = y0;
    let saxpy = kernel("saxpy");
    saxpy
        .expect_signature(kernels::saxpy::SIGNATURE)
        .expect("macro and build agree");
    let report = kernels::saxpy::launch_with(
        &fixture().cluster,
        &saxpy,
        &two_threads(),
        n,
        -1.75,
        &x,
        &mut offloaded,
    )
    .expect("saxpy runs");
    assert_eq!(report.items, n as u64);
    assert!(
        report.packets > 1,
        "expected several packets, got {}",
        report.packets
    );
    assert_eq!(offloaded, direct);
}

#[test]
fn poly_through_the_engine_equals_direct_calls() {
    let n = 4099;
    let coeffs = values(9, 3);
    let x = values(n, 4);
    let mut direct = vec![0.0; n];
    for i in 0..n {
        kernels::poly(i, &coeffs, &x[i..i + 1], &mut direct[i..i + 1]);
    }
    // `out` buffers are overwritten whatever they held.
    let mut offloaded = vec![f64::NAN; n];
    kernels::poly::launch_with(
        &fixture().cluster,
        &kernel("poly"),
        &two_threads(),
        n,
        &coeffs,
        &x,
        &mut offloaded,
    )
    .expect("poly runs");
    assert_eq!(offloaded, direct);
}

#[test]
fn wc_range_kernel_sums_like_one_direct_call_and_adds_to_the_slice() {
    let text = text(100_003);
    let mut direct = [7u64, 0, 1];
    kernels::wc(0, text.len(), &text, &mut direct);
    // A sum slice receives the job's totals added to what it holds, as a direct call adds.
    let mut offloaded = [7u64, 0, 1];
    let report = kernels::wc::launch_with(
        &fixture().cluster,
        &kernel("wc"),
        &two_threads(),
        text.len(),
        &text,
        &mut offloaded,
    )
    .expect("wc runs");
    assert!(
        report.packets > 1,
        "expected several packets, got {}",
        report.packets
    );
    assert_eq!(offloaded, direct);
    assert_eq!(offloaded[2], 1 + text.len() as u64);
}

#[test]
fn async_launch_gives_the_blocking_result() {
    let n = 2048;
    let x: Vec<f32> = values(n, 5).iter().map(|&v| v as f32).collect();
    let mut blocking = vec![1.0f32; n];
    let saxpy = kernel("saxpy");
    let cluster = &fixture().cluster;
    kernels::saxpy::launch_with(
        cluster,
        &saxpy,
        &Options::default(),
        n,
        3.0,
        &x,
        &mut blocking,
    )
    .expect("blocking launch");
    let mut offloaded = vec![1.0f32; n];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    runtime
        .block_on(async {
            let args = &mut [
                KernelArg::scalar(3.0f32),
                KernelArg::input(&x),
                KernelArg::inout(&mut offloaded),
            ];
            cluster
                .launch_async(&saxpy, n as u64, args, &Options::default())
                .await
        })
        .expect("async launch");
    assert_eq!(offloaded, blocking);
}

#[test]
fn progress_reports_every_item_once_in_increasing_order() {
    let n = 50_000;
    let x = vec![1.0f32; n];
    let mut y = vec![0.0f32; n];
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let options = two_threads().progress(move |done, total| {
        log.lock().expect("progress log").push((done, total));
    });
    kernels::saxpy::launch_with(
        &fixture().cluster,
        &kernel("saxpy"),
        &options,
        n,
        1.0,
        &x,
        &mut y,
    )
    .expect("saxpy runs");
    let seen = seen.lock().expect("progress log").clone();
    assert!(!seen.is_empty(), "no progress reported");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "not increasing: {seen:?}"
    );
    assert!(seen.iter().all(|&(_, total)| total == n as u64));
    assert_eq!(seen.last().map(|p| p.0), Some(n as u64));
}

#[test]
fn wrong_slice_length_is_refused_before_running() {
    let x = vec![0.0f32; 10];
    let mut y = vec![0.0f32; 9];
    let error = kernels::saxpy::launch_with(
        &fixture().cluster,
        &kernel("saxpy"),
        &Options::default(),
        10,
        1.0,
        &x,
        &mut y,
    )
    .expect_err("y is one element short");
    match error.arg_error() {
        Some(ArgError::BufferSize {
            arg,
            items,
            expected,
            actual,
            ..
        }) => {
            assert_eq!(
                (arg.as_str(), *items, expected.as_str(), actual.as_str()),
                ("y", 10, "10 elements (40 bytes)", "9 elements (36 bytes)")
            );
        }
        other => panic!("expected a buffer size error, got {other:?}"),
    }
    assert!(
        error.to_string().contains(
            "must be 10 elements (40 bytes) for 10 items, but it has 9 elements (36 bytes)"
        ),
        "{error}"
    );
}

#[test]
fn mismatched_argument_types_are_refused() {
    let x = vec![0.0f64; 4];
    let mut y = vec![0.0f32; 4];
    let args = &mut [
        KernelArg::scalar(1.0f32),
        KernelArg::input(&x),
        KernelArg::inout(&mut y),
    ];
    let error = fixture()
        .cluster
        .launch(&kernel("saxpy"), 4, args, &Options::default())
        .expect_err("x must be f32");
    assert!(
        error.to_string().contains(
            "argument `x` of kernel `saxpy` is `x: in f32[1]`, but an `in` buffer of f64 was given"
        ),
        "{error}"
    );
}

#[test]
fn launch_without_an_embedded_package_names_the_missing_build_step() {
    // This test crate has no build script, so the macro embedded nothing.
    let mut y = vec![0.0f32; 1];
    let error = kernels::saxpy::launch(&fixture().cluster, 1, 1.0, &[0.0], &mut y)
        .expect_err("no embedded package here");
    assert!(
        matches!(error, LaunchError::NotEmbedded { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("offload_build::package"),
        "{error}"
    );
}

#[test]
fn a_package_from_other_source_is_refused_by_signature() {
    let error = kernel("wc")
        .expect_signature(kernels::poly::SIGNATURE)
        .expect_err("different kernels");
    assert!(
        matches!(error, LaunchError::SignatureMismatch { .. }),
        "{error:?}"
    );
}

#[test]
fn built_package_equals_offload_package_of_the_generated_source() {
    let built = &fixture().built;
    let dir = tempfile::tempdir().expect("temp dir");
    let cli = crate::common::package(&built.source_path, &built.manifest_path, dir.path(), "cli");
    let from_cli = std::fs::read(&cli).expect("read CLI package");
    assert_eq!(
        Package::from_bytes(&from_cli).expect("decodes").hash(),
        built.package.hash()
    );
    assert_eq!(from_cli, built.package.as_bytes());
}

/// The target directory this test binary was built in (`<target>/<profile>/offload`).
fn target_dir() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_offload"));
    exe.ancestors()
        .nth(2)
        .expect("target dir above the binary")
        .to_path_buf()
}

/// Runs `cmd`, killing it after `limit`; returns its output.
#[test]
fn example_crate_builds_embeds_the_cli_package_and_runs() {
    // The same target directory: cargo does not hold its lock while tests run, and the
    // example reuses the artifacts this test binary was built from.
    let target = target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["run", "--quiet", "-p", "macro-kernels", "--", "30000"])
        .current_dir(repo_path(""))
        .env("CARGO_TARGET_DIR", &target);
    let out = run_bounded(cmd, Duration::from_secs(1200));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "macro-kernels failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kernel in ["saxpy", "poly", "wc"] {
        assert!(
            stdout.contains(&format!("{kernel}: ")) && !stdout.contains("DIFFERS"),
            "{stdout}"
        );
    }
    // The package the example embedded is the one `offload package` makes of the
    // generated source and manifest.
    let out_dir = newest_out_dir(&target.join("debug/build")).expect("the example's OUT_DIR");
    let embedded = std::fs::read(out_dir.join("offload_kernels.okp")).expect("embedded package");
    let dir = tempfile::tempdir().expect("temp dir");
    let cli = crate::common::package(
        &out_dir.join("offload_kernels.rs"),
        &out_dir.join("offload_kernels.toml"),
        dir.path(),
        "cli",
    );
    assert_eq!(std::fs::read(cli).expect("CLI package"), embedded);
    let _ = offload_ok([
        "inspect",
        &out_dir.join("offload_kernels.okp").display().to_string(),
    ]);
}

/// The most recently written `macro-kernels-*/out` with a package in it.
fn newest_out_dir(build: &Path) -> Option<PathBuf> {
    std::fs::read_dir(build)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("macro-kernels-")
        })
        .map(|e| e.path().join("out"))
        .filter(|out| out.join("offload_kernels.okp").is_file())
        .max_by_key(|out| {
            std::fs::metadata(out.join("offload_kernels.okp"))
                .and_then(|m| m.modified())
                .ok()
        })
}

/// An `offload node` on 127.0.0.1, killed and reaped on drop.
struct LoopbackNode {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl LoopbackNode {
    fn start(credentials: &Path, name: &str) -> LoopbackNode {
        use std::io::{BufRead, BufReader};
        let mut child =
            crate::common::die_with_test(&mut Command::new(env!("CARGO_BIN_EXE_offload")))
                .args([
                    "node",
                    "--listen",
                    "127.0.0.1:0",
                    "--no-mdns",
                    "--cores",
                    "1",
                    "--name",
                    name,
                ])
                .arg("--credentials")
                .arg(credentials)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start offload node");
        let stdout = child.stdout.take().expect("node stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .and_then(|a| a.parse().ok());
        match addr {
            Some(addr) => LoopbackNode { child, addr },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {name} did not report its address");
            }
        }
    }
}

impl Drop for LoopbackNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn three_loopback_nodes_give_the_local_results() {
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("cluster");
    let creds_arg = creds.display().to_string();
    offload_ok(["cluster", "init", "--dir", &creds_arg]);
    let nodes: Vec<LoopbackNode> = (0..3)
        .map(|i| {
            let name = format!("m{i}");
            offload_ok(["cluster", "add-node", "--dir", &creds_arg, "--name", &name]);
            LoopbackNode::start(&creds.join("nodes").join(&name), &name)
        })
        .collect();
    let credentials = offload::Credentials::load(&creds).expect("client credentials");
    let config = offload::ClientConfig::new(credentials).peers(nodes.iter().map(|n| n.addr));
    let cluster = Cluster::connect(config).expect("connect to the three nodes");
    assert_eq!(cluster.nodes().len(), 3, "{:?}", cluster.nodes());

    let n = 20_011;
    let x: Vec<f32> = values(n, 7).iter().map(|&v| v as f32).collect();
    let y0: Vec<f32> = values(n, 8).iter().map(|&v| v as f32).collect();
    let (mut local, mut remote) = (y0.clone(), y0);
    let saxpy = kernel("saxpy");
    kernels::saxpy::launch_with(
        &fixture().cluster,
        &saxpy,
        &two_threads(),
        n,
        0.25,
        &x,
        &mut local,
    )
    .expect("local saxpy");
    let report = kernels::saxpy::launch_with(
        &cluster,
        &saxpy,
        &Options::default(),
        n,
        0.25,
        &x,
        &mut remote,
    )
    .expect("cluster saxpy");
    assert_eq!(remote, local);
    assert!(
        report.workers >= 1 && report.code_origin.is_none(),
        "{report:?}"
    );

    let text = text(200_003);
    let mut direct = [0u64; 3];
    kernels::wc(0, text.len(), &text, &mut direct);
    let mut remote = [0u64; 3];
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let options =
        Options::default().progress(move |d, t| seen.lock().expect("progress").push((d, t)));
    kernels::wc::launch_with(
        &cluster,
        &kernel("wc"),
        &options,
        text.len(),
        &text,
        &mut remote,
    )
    .expect("cluster wc");
    assert_eq!(remote, direct);
    // Progress comes as the cluster commits packets, not once at the end: the first
    // packets are small calibration packets, so there are several commits.
    let total = text.len() as u64;
    let calls = calls.lock().expect("progress").clone();
    assert!(calls.len() >= 2, "{calls:?}");
    assert!(calls.iter().all(|&(_, t)| t == total), "{calls:?}");
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "{calls:?}");
    assert!(calls[0].0 < total, "{calls:?}");
    assert_eq!(calls.last(), Some(&(total, total)));

    // The async form drives the blocking cluster client from tokio's blocking pool.
    let coeffs = values(5, 9);
    let xs = values(n, 10);
    let mut direct = vec![0.0; n];
    for i in 0..n {
        kernels::poly(i, &coeffs, &xs[i..i + 1], &mut direct[i..i + 1]);
    }
    let mut remote = vec![0.0; n];
    let poly = kernel("poly");
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
        .block_on(async {
            let args = &mut [
                KernelArg::input(&coeffs),
                KernelArg::scalar(coeffs.len() as u64),
                KernelArg::input(&xs),
                KernelArg::output(&mut remote),
            ];
            cluster
                .launch_async(&poly, n as u64, args, &Options::default())
                .await
        })
        .expect("cluster poly");
    assert_eq!(remote, direct);
}

#[test]
fn a_remote_cluster_connects_launches_and_drops_inside_a_tokio_runtime() {
    // What `#[tokio::main]` code does: the blocking `connect`, an async launch and the
    // drop all happen on a runtime thread, where blocking on another runtime panics.
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("cluster");
    let creds_arg = creds.display().to_string();
    offload_ok(["cluster", "init", "--dir", &creds_arg]);
    offload_ok(["cluster", "add-node", "--dir", &creds_arg, "--name", "t0"]);
    let node = LoopbackNode::start(&creds.join("nodes").join("t0"), "t0");
    let n = 4096;
    let x: Vec<f32> = values(n, 11).iter().map(|&v| v as f32).collect();
    let mut local = vec![1.0f32; n];
    let saxpy = kernel("saxpy");
    kernels::saxpy::launch_with(
        &fixture().cluster,
        &saxpy,
        &two_threads(),
        n,
        2.0,
        &x,
        &mut local,
    )
    .expect("local saxpy");
    for multi_thread in [true, false] {
        let runtime = if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        .expect("tokio runtime");
        let remote = runtime.block_on(async {
            let config = || {
                let credentials = offload::Credentials::load(&creds).expect("credentials");
                offload::ClientConfig::new(credentials).peers([node.addr])
            };
            let blocking = Cluster::connect(config()).expect("connect inside a runtime");
            let asynchronous = Cluster::connect_async(config())
                .await
                .expect("connect_async");
            let mut remote = vec![1.0f32; n];
            for cluster in [&blocking, &asynchronous] {
                remote.fill(1.0);
                let args = &mut [
                    KernelArg::scalar(2.0f32),
                    KernelArg::input(&x),
                    KernelArg::inout(&mut remote),
                ];
                cluster
                    .launch_async(&saxpy, n as u64, args, &Options::default())
                    .await
                    .expect("async launch on the node");
            }
            drop((blocking, asynchronous));
            remote
        });
        assert_eq!(remote, local, "multi_thread {multi_thread}");
    }
}
