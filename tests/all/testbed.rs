//! The cluster on a multi-host testbed (`scripts/testbed.sh`): the client and each node
//! in a network namespace of its own, joined by veth pairs through a bridge in another
//! namespace of the test's own, every node's link shaped to 100 Mbit/s by `tc tbf` in
//! both directions. Nothing here crosses 127.0.0.1: the addresses (10.77.0.0/24) exist only
//! in the test's namespaces. The tests need root (network namespaces, `tc`); where that or
//! `ip netns` is missing they skip with a message, and fail under `CI=true`. A testbed is
//! removed when its test ends, also when it fails (a Drop guard).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::cluster::{assert_same_output, cluster_init, gate, text, LiveRun, Mandel, OsArg, BIN};
use crate::common::{
    die_with_test, is_root, offload_ok, read_le, repo_path, run_bounded, skip, test_cache_dir,
};

/// The shaped rate of every node's link, in Mbit/s, and as `tc` writes it.
const RATE_MBIT: f64 = 100.0;
const RATE: &str = "100mbit";

/// The port every node listens on (each has an address of its own).
const PORT: u16 = 7878;

fn script() -> PathBuf {
    repo_path("scripts/testbed.sh")
}

/// A testbed of `scripts/testbed.sh`, with the nodes started on it; the nodes are killed
/// and the namespaces removed on drop.
struct Testbed {
    name: String,
    nodes: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Testbed {
    /// A testbed with `nodes` nodes on links of [`RATE`], or `None` (after a visible
    /// skip) where this machine cannot make one.
    fn up(test: &str, nodes: usize) -> Option<Testbed> {
        if !is_root() {
            skip(
                test,
                "the testbed's network namespaces and tc shaping need root",
            );
            return None;
        }
        // Unique among concurrent tests and test processes: the process id and a count.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "o{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new("bash");
        command
            .arg(script())
            .args(["up", &name, &nodes.to_string(), RATE]);
        let output = run_bounded(command, Duration::from_secs(30));
        // Made before anything can fail, so a half-made testbed is removed too.
        let testbed = Testbed {
            name,
            nodes: Vec::new(),
            dir,
        };
        if !output.status.success() {
            skip(
                test,
                &format!(
                    "scripts/testbed.sh cannot make a testbed here (ip netns, veth, bridge, tc tbf): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            );
            return None;
        }
        let creds = testbed.credentials();
        cluster_init(&creds);
        Some(testbed)
    }

    fn credentials(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Node `index`'s address (node1 is 10.77.0.11).
    fn addr(index: usize) -> String {
        format!("10.77.0.{}:{PORT}", 10 + index)
    }

    /// A command that runs `program` on `host` (`client`, `node1`, ...) of the testbed.
    fn command(&self, host: &str, program: &str) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(script())
            .args(["exec", &self.name, host, program])
            .env("OFFLOAD_CACHE_DIR", test_cache_dir());
        command
    }

    /// Starts node `index` (1-based) on its namespace with `flags` (`--fault ...`) and
    /// waits for its `listening on` line; it does not advertise itself over mDNS.
    fn start_node(&mut self, index: usize, flags: &[String]) {
        let mut flags = flags.to_vec();
        flags.push("--no-mdns".into());
        self.start_node_advertised(index, &flags);
    }

    /// [`Testbed::start_node`], the node advertising itself over mDNS on its link unless
    /// `flags` say `--no-mdns`.
    fn start_node_advertised(&mut self, index: usize, flags: &[String]) {
        let name = format!("n{index}");
        let creds = self.credentials();
        crate::cluster::add_node(&creds, &name);
        let log = self.path(&format!("node{index}.log"));
        let mut command = self.command(&format!("node{index}"), BIN);
        // The script execs `ip netns exec`, which execs the node: the child is the node,
        // and it dies with this test thread.
        die_with_test(&mut command)
            .args(["node", "--listen", &Testbed::addr(index)])
            .args(["--cores", "1", "--name", &format!("test-node-{index}")])
            .arg("--credentials")
            .arg(creds.join("nodes").join(&name))
            .args(flags)
            .env("OFFLOAD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("node log"));
        let mut child = command.spawn().expect("start a testbed node");
        let stdout = child.stdout.take().expect("node stdout");
        self.nodes.push(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("listening on ") {
                    let _ = tx.send(());
                }
            }
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(30)).is_ok(),
            "testbed node {index} did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `--cluster --no-discovery --credentials ... --peer ...` for every started node.
    fn cluster_flags(&self) -> Vec<OsArg> {
        let mut flags: Vec<OsArg> = vec![
            "--cluster".into(),
            "--no-discovery".into(),
            "--credentials".into(),
            self.credentials().into(),
        ];
        for index in 1..=self.nodes.len() {
            flags.push("--peer".into());
            flags.push(Testbed::addr(index).into());
        }
        flags
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        // Also kills whatever still runs in the namespaces.
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.name])
            .status();
    }
}

/// Rows of the link tests' job: 1 MiB of inputs per item (see tests/kernels/rowsum.c).
const ROW: u64 = 131_072;
const ROWS: u64 = 16;

/// Writes the rowsum job's input into `dir` and packages the kernel there; returns the
/// package and the input file. Row i holds i, i+1, ...: its sum is known exactly.
fn rowsum_job(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let pkg = crate::common::package(
        &repo_path("tests/kernels/rowsum.c"),
        &repo_path("tests/kernels/rowsum.toml"),
        dir,
        "rowsum",
    );
    let x: Vec<f64> = (0..ROWS * ROW)
        .map(|k| ((k / ROW) + (k % ROW)) as f64)
        .collect();
    let input = dir.join("rows.bin");
    crate::common::write_le(&input, &x);
    (pkg, input)
}

/// `run PKG --kernel rowsum ...` arguments reading `input` and writing `out`.
fn rowsum_args(
    pkg: &std::path::Path,
    input: &std::path::Path,
    out: &std::path::Path,
) -> Vec<OsArg> {
    vec![
        "run".into(),
        pkg.into(),
        "--kernel".into(),
        "rowsum".into(),
        "--items".into(),
        ROWS.to_string().into(),
        "--arg".into(),
        format!("n={ROW}").into(),
        "--in".into(),
        format!("x={}", input.display()).into(),
        "--out".into(),
        format!("total={}", out.display()).into(),
    ]
}

/// The rowsum job's output is right: row i sums i*ROW + 0 + 1 + ... + (ROW-1).
fn assert_rowsums(out: &std::path::Path) {
    let totals: Vec<f64> = read_le(out);
    let want: Vec<f64> = (0..ROWS)
        .map(|i| (i * ROW + ROW * (ROW - 1) / 2) as f64)
        .collect();
    assert_eq!(totals, want);
}

/// The measured bandwidth in Mbit/s that `run -v` printed for node `index`, from its
/// line `link test-node-I (ADDR): X Mbit/s, latency Y µs (measured from N transfers and
/// M pings)`.
fn measured_mbit(stderr: &str, index: usize) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("link test-node-{index} ")))
        .unwrap_or_else(|| panic!("no link line for test-node-{index}:\n{stderr}"));
    assert!(
        line.contains("measured from"),
        "bandwidth not measured: {line}"
    );
    // Shown with --nocapture: the figures docs/cluster.md quotes.
    eprintln!("{line}");
    line.split("): ")
        .nth(1)
        .and_then(|rest| rest.split(" Mbit/s").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no bandwidth in {line}"))
}

#[test]
fn a_job_across_two_testbed_nodes_at_100_mbit_equals_the_local_run_and_measures_the_links() {
    let test =
        "a_job_across_two_testbed_nodes_at_100_mbit_equals_the_local_run_and_measures_the_links";
    let Some(mut testbed) = Testbed::up(test, 2) else {
        return;
    };
    testbed.start_node(1, &[]);
    testbed.start_node(2, &[]);
    // 1024 × 1024 pixels of few iterations: 4 MiB of results, link-bound at 100 Mbit/s.
    let job = Mandel::new(testbed.dir.path(), 1024, 1024, 20);
    let local = testbed.path("local.bin");
    job.run_local(&local);
    let remote = testbed.path("remote.bin");
    let mut command = testbed.command("client", BIN);
    command
        .args(job.run_args(&remote))
        .args(testbed.cluster_flags());
    let output = run_bounded(command, Duration::from_secs(120));
    assert!(output.status.success(), "{}", text(&output));
    assert_same_output(
        &remote,
        &local,
        "the testbed run differs from the local run",
    );
    // With two copies of every packet, each on another node, both nodes receive every
    // input: both links are measured whatever the scheduler's split. Every item of this
    // job carries 1 MiB of inputs, so every packet is a bandwidth sample however the
    // scheduler sizes it (the meter counts periods of 1 MiB and more).
    let (pkg, input) = rowsum_job(testbed.dir.path());
    let sums = testbed.path("sums.bin");
    let mut command = testbed.command("client", BIN);
    command
        .args(rowsum_args(&pkg, &input, &sums))
        .args(testbed.cluster_flags())
        .args(["--redundancy", "2", "-v"]);
    let output = run_bounded(command, Duration::from_secs(120));
    assert!(output.status.success(), "{}", text(&output));
    assert_rowsums(&sums);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The links are shaped to 100 Mbit/s: what the client measured must be near that
    // (a loose bound: the shaping's burst, the queue and timer noise move it a little).
    for index in [1, 2] {
        let mbit = measured_mbit(&stderr, index);
        assert!(
            (RATE_MBIT / 3.0..=RATE_MBIT * 3.0).contains(&mbit),
            "test-node-{index}: measured {mbit} Mbit/s on a link shaped to {RATE_MBIT}:\n{stderr}"
        );
    }
}

#[test]
fn the_jacobi_program_on_two_testbed_nodes_matches_the_native_reference() {
    let test = "the_jacobi_program_on_two_testbed_nodes_matches_the_native_reference";
    let Some(mut testbed) = Testbed::up(test, 2) else {
        return;
    };
    testbed.start_node(1, &[]);
    testbed.start_node(2, &[]);
    let example = crate::programs::Example::new("jacobi");
    let mut command = testbed.command("client", BIN);
    command
        .arg("run")
        .arg(example.program())
        .args(["--arg", "n=64", "--arg", "tsteps=10"])
        .args(testbed.cluster_flags());
    let output = run_bounded(command, Duration::from_secs(120));
    assert!(output.status.success(), "{}", text(&output));
    let grid: Vec<f64> = read_le(&example.path("grid.bin"));
    crate::programs::assert_jacobi_close(&grid, &crate::programs::jacobi_reference(64, 10));
}

#[test]
fn a_testbed_node_killed_mid_job_still_gives_the_correct_output() {
    let test = "a_testbed_node_killed_mid_job_still_gives_the_correct_output";
    let Some(mut testbed) = Testbed::up(test, 2) else {
        return;
    };
    // Node 1 dies on its first packet; node 2 holds its packets until node 1 was
    // reported lost: the job can only finish through the client's handling of the loss.
    let gate_file = gate(testbed.dir.path());
    testbed.start_node(1, &["--fault".into(), "die-on-packet".into()]);
    testbed.start_node(
        2,
        &["--fault".into(), format!("gate={}", gate_file.display())],
    );
    let job = Mandel::new(testbed.dir.path(), 240, 160, 400);
    let local = testbed.path("local.bin");
    job.run_local(&local);
    let remote = testbed.path("remote.bin");
    let mut command = testbed.command("client", BIN);
    command
        .args(job.run_args(&remote))
        .args(testbed.cluster_flags())
        .args(["--node-timeout", "1"]);
    let mut run = LiveRun::start(command);
    run.wait_for(&["test-node-1", "lost"], Duration::from_secs(60));
    std::fs::write(&gate_file, b"open").expect("open the gate");
    let (status, stdout, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("re-run on the other nodes"), "{stderr}");
    assert_same_output(
        &remote,
        &local,
        "the testbed run differs from the local run after a node was killed",
    );
}

/// The script refuses what it cannot do with a message, without touching anything.
#[test]
fn the_testbed_script_refuses_bad_arguments() {
    for args in [
        vec!["up", "bad-name!", "2"],
        vec!["up", "ok", "0"],
        vec!["exec", "ok", "router", "true"],
        vec!["frobnicate"],
    ] {
        let output = Command::new("bash")
            .arg(script())
            .args(&args)
            .output()
            .expect("run the script");
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        assert!(!output.stderr.is_empty(), "{args:?} says nothing");
    }
}

/// Without a testbed (any machine): a job on a loopback node reports its link as measured
/// from the job's transfers, not the prior.
#[test]
fn a_loopback_job_reports_its_measured_link() {
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("cluster");
    cluster_init(&creds);
    crate::cluster::add_node(&creds, "n0");
    let node = crate::cluster::Node::start(dir.path(), &creds.join("nodes").join("n0"), 0);
    // Every item carries 1 MiB of inputs, so every packet, however the scheduler sizes
    // it, is a bandwidth sample (the meter counts periods of 1 MiB and more).
    let (pkg, input) = rowsum_job(dir.path());
    let out = dir.path().join("sums.bin");
    let mut args = rowsum_args(&pkg, &input, &out);
    args.extend([
        "--cluster".into(),
        "--no-discovery".into(),
        "--credentials".into(),
        creds.clone().into(),
        "--peer".into(),
        node.addr.clone().into(),
        "-v".into(),
    ]);
    let output = offload_ok(args);
    assert_rowsums(&out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mbit = measured_mbit(&stderr, 0);
    assert!(mbit.is_finite() && mbit > 0.0, "{stderr}");
}

#[test]
fn mdns_discovery_finds_the_testbed_nodes_across_the_bridge_and_a_job_runs_on_them() {
    let test = "mdns_discovery_finds_the_testbed_nodes_across_the_bridge_and_a_job_runs_on_them";
    let Some(mut testbed) = Testbed::up(test, 2) else {
        return;
    };
    testbed.start_node_advertised(1, &[]);
    testbed.start_node_advertised(2, &[]);
    // The client's namespace sees the nodes only through the bridge: what it finds came
    // over the testbed's links, with the nodes' own addresses.
    let mut command = testbed.command("client", BIN);
    command
        .args(["nodes", "--wait", "3", "--credentials"])
        .arg(testbed.credentials());
    let output = run_bounded(command, Duration::from_secs(60));
    assert!(output.status.success(), "{}", text(&output));
    let listed = String::from_utf8_lossy(&output.stdout).into_owned();
    for index in [1, 2] {
        let addr = Testbed::addr(index);
        let ip = addr.split(':').next().unwrap_or_default();
        assert!(
            listed
                .lines()
                .any(|l| l.contains(&format!("test-node-{index}")) && l.contains(ip)),
            "test-node-{index} at {ip} not found:\n{}",
            text(&output)
        );
    }
    // A job with discovery only (no --peer) runs on what mDNS found.
    let job = Mandel::new(testbed.dir.path(), 256, 128, 50);
    let local = testbed.path("local.bin");
    job.run_local(&local);
    let remote = testbed.path("remote.bin");
    let mut command = testbed.command("client", BIN);
    command
        .args(job.run_args(&remote))
        .args(["--cluster", "--credentials"])
        .arg(testbed.credentials())
        .arg("-v");
    let output = run_bounded(command, Duration::from_secs(120));
    assert!(output.status.success(), "{}", text(&output));
    assert_same_output(&remote, &local, "the discovered testbed run differs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("test-node-1") && stderr.contains("test-node-2"),
        "not both nodes were used: {stderr}"
    );
}
