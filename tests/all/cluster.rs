//! The cluster through the real CLI: every test makes its own cluster credentials, starts
//! its own `offload node` processes on 127.0.0.1 ephemeral ports (mDNS off, except in the
//! discovery test, which runs in a private network namespace) and kills them at the end.
//! Outputs are compared bit for bit with a local run of the same job (mandelbrot writes
//! integers, so there is no tolerance to argue about).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{die_with_test, offload_ok, package, read_le, repo_path, write_le, Run};

const BIN: &str = env!("CARGO_BIN_EXE_offload");

/// A node process; killed (and reaped) on drop.
struct Node {
    child: Child,
    addr: String,
    log: PathBuf,
}

/// How a test node is started, beyond its credentials.
#[derive(Clone, Copy)]
struct Launch<'a> {
    listen: &'a str,
    /// Flags before `node` (`--cache-dir`).
    global: &'a [OsArg],
    /// Flags after `node` (`--opencl`).
    flags: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
    /// Part of the log file's name (a restarted node gets a log of its own).
    log_suffix: &'a str,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            listen: "127.0.0.1:0",
            global: &[],
            flags: &[],
            env: &[],
            log_suffix: "",
        }
    }
}

impl Node {
    /// Starts `offload node` with `credentials` and waits for its `listening on` line.
    fn start(dir: &Path, credentials: &Path, index: usize) -> Node {
        Node::spawn(dir, credentials, index, &Launch::default())
    }

    /// [`Node::start`] on `listen`, with `global` flags before `node` (`--cache-dir`)
    /// and `log_suffix` in its log file name (a restarted node gets a log of its own).
    fn start_with(
        dir: &Path,
        credentials: &Path,
        index: usize,
        listen: &str,
        global: &[OsArg],
        log_suffix: &str,
    ) -> Node {
        let launch = Launch {
            listen,
            global,
            log_suffix,
            ..Launch::default()
        };
        Node::spawn(dir, credentials, index, &launch)
    }

    /// [`Node::start`] with `flags` after `node` (`--opencl`).
    fn start_flags(dir: &Path, credentials: &Path, index: usize, flags: &[&str]) -> Node {
        let launch = Launch {
            flags,
            ..Launch::default()
        };
        Node::spawn(dir, credentials, index, &launch)
    }

    /// [`Node::start`] with extra environment variables (for test-only fault injection).
    fn start_with_env(dir: &Path, credentials: &Path, index: usize, env: &[(&str, &str)]) -> Node {
        let launch = Launch {
            env,
            ..Launch::default()
        };
        Node::spawn(dir, credentials, index, &launch)
    }

    fn spawn(dir: &Path, credentials: &Path, index: usize, launch: &Launch<'_>) -> Node {
        let Launch {
            listen,
            global,
            flags,
            env,
            log_suffix,
        } = *launch;
        let log = dir.join(format!("node{index}{log_suffix}.log"));
        let mut child = die_with_test(&mut Command::new(BIN))
            .args(global)
            .args(["node", "--listen", listen, "--no-mdns", "--cores", "1"])
            .args(flags)
            .arg("--name")
            .arg(format!("test-node-{index}"))
            .arg("--credentials")
            .arg(credentials)
            .env("OFFLOAD_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("node log file"))
            .spawn()
            .expect("start offload node");
        let stdout = child.stdout.take().expect("node stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "node {index} did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Node { child, addr, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// Waits until the node's log contains `text`.
    fn wait_for_log(&self, text: &str, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.log().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A stopped node must be continued to die of SIGKILL promptly on every kernel.
        let _ = self.child.kill();
        send_signal(self.child.id(), "CONT");
        let _ = self.child.wait();
    }
}

/// A fresh cluster: credentials in a temp dir, a mandelbrot package, `n` nodes.
struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        Cluster::with_liar(n, None)
    }

    /// A cluster whose node `liar` (if any) corrupts every result it sends, through the
    /// node's test-only `OFFLOAD_TEST_CORRUPT_RESULTS` switch.
    fn with_liar(n: usize, liar: Option<usize>) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let creds = dir.path().join("cluster");
        cluster_init(&creds);
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("n{i}");
            offload_ok([
                OsArg::from("cluster"),
                "add-node".into(),
                "--dir".into(),
                creds.clone().into(),
                "--name".into(),
                name.clone().into(),
            ]);
            let env: &[(&str, &str)] = if liar == Some(i) {
                &[("OFFLOAD_TEST_CORRUPT_RESULTS", "1")]
            } else {
                &[]
            };
            nodes.push(Node::start_with_env(
                dir.path(),
                &creds.join("nodes").join(&name),
                i,
                env,
            ));
        }
        Cluster { dir, nodes }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn credentials(&self) -> PathBuf {
        self.path("cluster")
    }

    /// `--cluster --peer ... --credentials ... --no-discovery` for `run`.
    fn cluster_flags(&self, credentials: &Path) -> Vec<OsArg> {
        let mut flags: Vec<OsArg> = vec![
            "--cluster".into(),
            "--no-discovery".into(),
            "--credentials".into(),
            credentials.into(),
        ];
        for node in &self.nodes {
            flags.push("--peer".into());
            flags.push(node.addr.clone().into());
        }
        flags
    }
}

type OsArg = std::ffi::OsString;

/// `kill -SIGNAL PID` (the process may already be gone).
/// Fails with `what` unless the cluster run's output file equals the local run's (compared
/// whole, without printing megabytes of bytes).
fn assert_same_output(remote: &Path, local: &Path, what: &str) {
    let remote = std::fs::read(remote).expect("cluster output");
    let local = std::fs::read(local).expect("local output");
    assert!(
        remote == local,
        "{what} ({} vs {} bytes)",
        remote.len(),
        local.len()
    );
}

/// `offload cluster init --dir dir`: a fresh cluster identity.
fn cluster_init(dir: &Path) {
    offload_ok([
        OsArg::from("cluster"),
        "init".into(),
        "--dir".into(),
        dir.into(),
    ]);
}

fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// `run PKG --kernel K --items N --arg NAME=VALUE... --out NAME=FILE`.
fn run_args(
    pkg: &Path,
    kernel: &str,
    items: u64,
    scalars: &[(&str, String)],
    out: (&str, &Path),
) -> Vec<OsArg> {
    let mut args: Vec<OsArg> = vec![
        "run".into(),
        pkg.into(),
        "--kernel".into(),
        kernel.into(),
        "--items".into(),
        items.to_string().into(),
    ];
    for (name, value) in scalars {
        args.push("--arg".into());
        args.push(format!("{name}={value}").into());
    }
    let mut binding = OsArg::from(format!("{}=", out.0));
    binding.push(out.1);
    args.push("--out".into());
    args.push(binding);
    args
}

/// The mandelbrot job of these tests: `width × height` pixels, `max_iter` iterations.
struct Mandel {
    pkg: PathBuf,
    width: u32,
    height: u32,
    max_iter: u32,
}

impl Mandel {
    fn new(dir: &Path, width: u32, height: u32, max_iter: u32) -> Mandel {
        let pkg = package(
            &repo_path("examples/mandelbrot/kernel.rs"),
            &repo_path("examples/mandelbrot/manifest.toml"),
            dir,
            "mandelbrot",
        );
        Mandel {
            pkg,
            width,
            height,
            max_iter,
        }
    }

    fn run_args(&self, out: &Path) -> Vec<OsArg> {
        let scalars = [
            ("width", self.width.to_string()),
            ("max_iter", self.max_iter.to_string()),
            ("x0", (-2.0f64).to_string()),
            ("y0", (-1.25f64).to_string()),
            ("step", (2.5f64 / f64::from(self.width)).to_string()),
        ];
        let items = u64::from(self.width) * u64::from(self.height);
        run_args(&self.pkg, "mandelbrot", items, &scalars, ("iters", out))
    }

    /// `offload tune --quick` of the kernel, with its profile stored in `cache`.
    fn tune_into(&self, cache: &Path) {
        offload_ok([
            OsArg::from("--cache-dir"),
            cache.into(),
            "tune".into(),
            self.pkg.clone().into(),
            "--kernel".into(),
            "mandelbrot".into(),
            "--items".into(),
            "4096".into(),
            "--arg".into(),
            "max_iter=100".into(),
            "--quick".into(),
        ]);
    }

    /// Runs the job on this machine.
    fn run_local(&self, out: &Path) {
        offload_ok(self.run_args(out));
    }

    /// The command line of a cluster run, ready to start.
    fn cluster_command(&self, cluster: &Cluster, credentials: &Path, out: &Path) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(self.run_args(out))
            .args(cluster.cluster_flags(credentials));
        command
    }
}

fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `command` to completion, failing the test past `limit`.
fn run_bounded(mut command: Command, limit: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start offload run");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("offload run output"),
        Err(_) => {
            send_signal(pid, "KILL");
            panic!("offload run did not finish within {limit:?}");
        }
    }
}

#[test]
fn a_job_across_three_nodes_equals_the_local_run() {
    let cluster = Cluster::new(3);
    let job = Mandel::new(cluster.dir.path(), 320, 240, 300);
    let local = cluster.path("local.bin");
    job.run_local(&local);
    let remote = cluster.path("remote.bin");
    let output = run_bounded(
        job.cluster_command(&cluster, &cluster.credentials(), &remote),
        Duration::from_secs(120),
    );
    assert!(output.status.success(), "{}", text(&output));
    assert_same_output(&remote, &local, "cluster output differs from the local run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("on 3 nodes"), "{stdout}");
}

#[test]
fn whole_input_buffers_reach_the_nodes_and_the_output_equals_the_local_run() {
    let cluster = Cluster::new(2);
    let dir = cluster.dir.path();
    let pkg = package(
        &repo_path("examples/nbody/kernel.rs"),
        &repo_path("examples/nbody/manifest.toml"),
        dir,
        "nbody",
    );
    // 4096 bodies: the whole `pos` buffer (64 KiB) goes to each node once, as raw bytes
    // after its upload header; `vel` and `new_pos` travel in packet slices.
    let n = 4096usize;
    let pos: Vec<f32> = (0..n * 4)
        .map(|i| match i % 4 {
            3 => 1.0 + (i % 7) as f32,
            axis => ((i * 37 + axis * 11) % 101) as f32 / 10.0 - 5.0,
        })
        .collect();
    let vel: Vec<f32> = (0..n * 3)
        .map(|i| ((i % 13) as f32 - 6.0) / 100.0)
        .collect();
    let run = |tag: &str, flags: Vec<OsArg>| {
        let (pf, vf, nf) = (
            dir.join(format!("pos-{tag}.bin")),
            dir.join(format!("vel-{tag}.bin")),
            dir.join(format!("new-{tag}.bin")),
        );
        write_le(&pf, &pos);
        write_le(&vf, &vel);
        let output = Run::new(&pkg, "nbody", n as u64)
            .arg("n", n)
            .arg("dt", 0.01f32)
            .arg("softening", 0.05f32)
            .buffer("in", "pos", &pf)
            .buffer("inout", "vel", &vf)
            .buffer("out", "new_pos", &nf)
            .flags(flags)
            .ok();
        let (vel, new): (Vec<f32>, Vec<f32>) = (read_le(&vf), read_le(&nf));
        (output, vel, new)
    };
    let (_, local_vel, local_new) = run("local", Vec::new());
    let (output, cluster_vel, cluster_new) =
        run("cluster", cluster.cluster_flags(&cluster.credentials()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("on 2 nodes:"), "{stdout}");
    // Same JIT, same machine, every item computed alone: bit-identical results.
    assert!(cluster_vel == local_vel, "vel differs from the local run");
    assert!(
        cluster_new == local_new,
        "new_pos differs from the local run"
    );
    // A second client (a new connection) finds `pos` in each node's cache; the node
    // hashes it once before sharing it, since it was uploaded by another connection.
    let (_, again_vel, again_new) = run("again", cluster.cluster_flags(&cluster.credentials()));
    assert!(
        again_vel == local_vel && again_new == local_new,
        "second run differs"
    );
    for node in &cluster.nodes {
        let log = node.log();
        assert!(
            log.contains("checked against its hash: shared with other connections"),
            "the node did not check and share the cached buffer:\n{log}"
        );
    }
}

/// Runs a small mandelbrot job with `--redundancy copies` on `cluster`, checks that it
/// succeeds with the local run's output, and returns its stderr.
fn redundant_run_equals_the_local_run(cluster: &Cluster, copies: u32) -> String {
    let job = Mandel::new(cluster.dir.path(), 320, 240, 300);
    let local = cluster.path("local.bin");
    job.run_local(&local);
    let remote = cluster.path("remote.bin");
    let mut command = job.cluster_command(cluster, &cluster.credentials(), &remote);
    command.args(["--redundancy", &copies.to_string()]);
    let output = run_bounded(command, Duration::from_secs(120));
    assert!(output.status.success(), "{}", text(&output));
    assert_same_output(
        &remote,
        &local,
        "redundant cluster output differs from the local run",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("({copies} copies each, majority vote)")),
        "{}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn redundancy_3_on_three_honest_nodes_equals_the_local_run() {
    let cluster = Cluster::new(3);
    let stderr = redundant_run_equals_the_local_run(&cluster, 3);
    assert!(!stderr.contains("disagrees"), "{stderr}");
}

#[test]
fn a_node_returning_wrong_results_is_outvoted_reported_and_excluded() {
    // Node 0 flips a byte of every result; with 2 copies per packet, a disagreement
    // brings in a third copy on the third node, the majority wins, node 0 is excluded.
    let cluster = Cluster::with_liar(3, Some(0));
    let stderr = redundant_run_equals_the_local_run(&cluster, 2);
    assert!(
        stderr.contains("node test-node-0") && stderr.contains("disagrees with the majority"),
        "{stderr}"
    );
    for honest in ["test-node-1", "test-node-2"] {
        assert!(
            !stderr.contains(&format!("node {honest} (")),
            "an honest node was blamed: {stderr}"
        );
    }
}

#[test]
fn redundancy_above_the_node_count_is_refused() {
    let cluster = Cluster::new(2);
    let job = Mandel::new(cluster.dir.path(), 64, 48, 50);
    let out = cluster.path("out.bin");
    let mut command = job.cluster_command(&cluster, &cluster.credentials(), &out);
    command.args(["--redundancy", "3"]);
    let output = run_bounded(command, Duration::from_secs(60));
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--redundancy 3") && stderr.contains("only 2 node"),
        "{stderr}"
    );
}

/// Starts a long job on `nodes` nodes, does `fault` to the cluster once node 0 is running
/// it, and checks that the output is still the local one and that node 0's loss was
/// reported. Returns the cluster and the client's output for further checks.
fn survives(nodes: usize, fault: impl FnOnce(&mut Cluster)) -> (Cluster, Output) {
    let mut cluster = Cluster::new(nodes);
    // Deep zoom-out inside the set: every item costs max_iter iterations, so the job
    // runs for seconds on the cluster and a fault lands in the middle of it.
    let job = Mandel::new(cluster.dir.path(), 600, 400, 8000);
    let local = cluster.path("local.bin");
    job.run_local(&local);
    let remote = cluster.path("remote.bin");
    let mut command = job.cluster_command(&cluster, &cluster.credentials(), &remote);
    // Notice the silent node within a second, well before the job could finish without it
    // (speculative copies of its packets would otherwise complete the job first).
    command.args(["--node-timeout", "1"]);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().expect("start offload run");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    assert!(
        cluster.nodes[0].wait_for_log("prepared kernel", Duration::from_secs(60)),
        "node 0 never received the job: {}",
        cluster.nodes[0].log()
    );
    std::thread::sleep(Duration::from_millis(100));
    fault(&mut cluster);
    let output = match rx.recv_timeout(Duration::from_secs(240)) {
        Ok(output) => output.expect("offload run output"),
        Err(_) => {
            send_signal(pid, "KILL");
            panic!("the cluster run did not finish after the fault");
        }
    };
    assert!(output.status.success(), "{}", text(&output));
    assert_same_output(
        &remote,
        &local,
        "cluster output differs from the local run after a node fault",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("test-node-0") && stderr.contains("lost"),
        "the client did not report the lost node:\n{}",
        text(&output)
    );
    (cluster, output)
}

#[test]
fn a_node_killed_mid_job_still_gives_the_correct_output() {
    survives(3, |cluster| cluster.nodes[0].signal("KILL"));
}

#[test]
fn a_node_paused_mid_job_still_gives_the_correct_output() {
    survives(3, |cluster| cluster.nodes[0].signal("STOP"));
}

#[test]
fn a_client_without_cluster_credentials_is_refused_and_runs_nothing() {
    let cluster = Cluster::new(1);
    // An outsider: a perfectly valid identity of another cluster.
    let outsider = cluster.path("outsider");
    cluster_init(&outsider);
    let job = Mandel::new(cluster.dir.path(), 64, 64, 50);
    let out = cluster.path("out.bin");
    let output = run_bounded(
        job.cluster_command(&cluster, &outsider, &out),
        Duration::from_secs(60),
    );
    assert!(
        !output.status.success(),
        "an outsider's job ran:\n{}",
        text(&output)
    );
    assert!(!out.exists(), "an outsider's job wrote output");
    let node = &cluster.nodes[0];
    assert!(
        node.wait_for_log("refused connection", Duration::from_secs(10)),
        "the node did not log the refusal:\n{}",
        node.log()
    );
    let log = node.log();
    assert!(
        !log.contains("stored package") && !log.contains("prepared kernel"),
        "{log}"
    );
    // And the node still serves members.
    let output = run_bounded(
        job.cluster_command(&cluster, &cluster.credentials(), &out),
        Duration::from_secs(60),
    );
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn a_crashing_kernel_fails_its_job_and_leaves_the_node_serving() {
    let cluster = Cluster::new(1);
    let pkg = package(
        &repo_path("tests/cluster-kernels/crash.c"),
        &repo_path("tests/cluster-kernels/crash.toml"),
        cluster.dir.path(),
        "crash",
    );
    let out = cluster.path("crash.bin");
    let crashing = || {
        let mut command = Command::new(BIN);
        command
            .args(run_args(
                &pkg,
                "crash",
                4096,
                &[("from", "1000".into())],
                ("out", &out),
            ))
            .args(cluster.cluster_flags(&cluster.credentials()));
        command
    };
    let output = run_bounded(crashing(), Duration::from_secs(60));
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SIGSEGV"),
        "the error does not say what happened:\n{stderr}"
    );
    // The node is alive and runs the next job (a crash-free range of the same kernel).
    let mut fine = Command::new(BIN);
    fine.args(run_args(
        &pkg,
        "crash",
        4096,
        &[("from", "100000".into())],
        ("out", &out),
    ))
    .args(cluster.cluster_flags(&cluster.credentials()));
    let output = run_bounded(fine, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "the node did not survive the crash:\n{}",
        text(&output)
    );
    let values: Vec<u32> = std::fs::read(&out)
        .expect("output")
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(values, (0..4096).collect::<Vec<u32>>());
}

#[test]
fn discovery_finds_nodes_in_a_private_network_namespace() {
    // mDNS is multicast: test it only where it cannot leave this machine, inside a
    // network namespace of our own that holds nothing but a loopback interface.
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref().ok() != Some("0") {
        println!("skipped: discovery needs root for a private network namespace");
        return;
    }
    let probe = Command::new("unshare").args(["-n", "true"]).status();
    if !matches!(probe, Ok(s) if s.success()) {
        println!("skipped: `unshare -n` is not available here");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("cluster");
    cluster_init(&creds);
    // disc-a has a tuned rate to advertise.
    let job = Mandel::new(dir.path(), 64, 64, 50);
    let cache = dir.path().join("cache-a");
    job.tune_into(&cache);
    let script = format!(
        r#"set -e
ip link set lo up
ip link set lo multicast on
ip route add 224.0.0.0/4 dev lo
"{bin}" --cache-dir "{cache}" node --listen 127.0.0.1:0 --credentials "{creds}" --cores 1 --name disc-a > /dev/null 2>&1 &
A=$!
"{bin}" node --listen 127.0.0.1:0 --credentials "{creds}" --cores 1 --name disc-b > /dev/null 2>&1 &
B=$!
trap 'kill $A $B' EXIT
sleep 1
"{bin}" nodes --loopback --wait 2 --credentials "{creds}"
"#,
        bin = BIN,
        creds = creds.display(),
        cache = cache.display()
    );
    let output = run_bounded(
        {
            let mut c = Command::new("unshare");
            c.args(["-n", "bash", "-c", &script]);
            c
        },
        Duration::from_secs(60),
    );
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for name in ["disc-a", "disc-b"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not discovered:\n{}", text(&output)));
        assert!(line.contains("devices: cpu:1"), "{line}");
        assert!(line.contains("accepts our credentials"), "{line}");
        let tuned = line.contains("tuned (items/s per worker): mandelbrot@");
        assert_eq!(tuned, name == "disc-a", "{line}");
    }
}

/// The number in "node NAME ... rejoined the job and ran N packets after rejoining".
fn packets_after_rejoining(stderr: &str, name: &str) -> Option<u64> {
    stderr
        .lines()
        .find(|l| l.contains(name) && l.contains("rejoined the job and ran"))
        .and_then(|l| l.split("and ran ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Kills node `index` of `cluster` and waits until it is gone (its port is free).
fn kill_node(cluster: &mut Cluster, index: usize) -> String {
    let node = cluster.nodes.remove(index);
    let addr = node.addr.clone();
    node.signal("KILL");
    drop(node); // reaps it
    addr
}

/// Starts node `index` again on `addr`, with its old credentials.
fn restart_node(cluster: &mut Cluster, index: usize, addr: &str) {
    let credentials = cluster
        .credentials()
        .join("nodes")
        .join(format!("n{index}"));
    let node = Node::start_with(
        cluster.dir.path(),
        &credentials,
        index,
        addr,
        &[],
        "-restarted",
    );
    cluster.nodes.insert(index, node);
}

#[test]
fn a_node_restarted_mid_job_rejoins_and_the_output_is_correct() {
    let (cluster, output) = survives(2, |cluster| {
        let addr = kill_node(cluster, 0);
        restart_node(cluster, 0, &addr);
    });
    // Whether the rejoined node gets packets depends on how much work the scheduler had
    // not yet handed to the surviving node when it came back (on this loaded 2-core
    // machine sometimes none): required is that it rejoined and prepared the job again;
    // `a_node_restarted_between_jobs_is_used_again` checks that it then runs work.
    let stderr = String::from_utf8_lossy(&output.stderr);
    packets_after_rejoining(&stderr, "test-node-0").unwrap_or_else(|| {
        panic!(
            "the restarted node did not rejoin:\n{}\n--- restarted node ---\n{}",
            text(&output),
            cluster.nodes[0].log()
        )
    });
    assert!(
        cluster.nodes[0].log().contains("prepared kernel"),
        "the restarted node never prepared the job:\n{}",
        cluster.nodes[0].log()
    );
}

#[test]
fn a_node_restarted_between_jobs_is_used_again() {
    let mut cluster = Cluster::new(2);
    let job = Mandel::new(cluster.dir.path(), 160, 120, 100);
    let local = cluster.path("local.bin");
    job.run_local(&local);
    let remote = cluster.path("remote.bin");
    let addr = kill_node(&mut cluster, 0);
    // The dead node is still given with --peer: the job runs on the other one.
    let mut command = job.cluster_command(&cluster, &cluster.credentials(), &remote);
    command.args(["--peer", &addr]);
    let output = run_bounded(command, Duration::from_secs(60));
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("on 1 node:"),
        "{}",
        text(&output)
    );
    restart_node(&mut cluster, 0, &addr);
    std::fs::remove_file(&remote).expect("remove the first output");
    let output = run_bounded(
        job.cluster_command(&cluster, &cluster.credentials(), &remote),
        Duration::from_secs(60),
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("on 2 nodes:"),
        "the restarted node was not used:\n{}",
        text(&output)
    );
    assert_same_output(&remote, &local, "cluster output differs from the local run");
}

#[test]
fn a_node_advertises_its_tuned_rate_and_the_client_starts_from_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("cluster");
    cluster_init(&creds);
    let job = Mandel::new(dir.path(), 160, 120, 200);
    // Tune the kernel into node 0's cache only.
    let cache = dir.path().join("cache-0");
    job.tune_into(&cache);
    let global = [OsArg::from("--cache-dir"), cache.clone().into()];
    let tuned_node = Node::start_with(dir.path(), &creds, 0, "127.0.0.1:0", &global, "");
    let other = Node::start(dir.path(), &creds, 1);
    assert!(
        tuned_node.wait_for_log(
            "advertising tuned rate of mandelbrot",
            Duration::from_secs(10)
        ),
        "{}",
        tuned_node.log()
    );
    assert!(!other.log().contains("advertising tuned rate"));
    let cluster = Cluster {
        dir,
        nodes: vec![tuned_node, other],
    };
    let local = cluster.path("local.bin");
    job.run_local(&local);
    let remote = cluster.path("remote.bin");
    let mut command = Command::new(BIN);
    command
        .arg("-v")
        .args(job.run_args(&remote))
        .args(cluster.cluster_flags(&creds));
    let output = run_bounded(command, Duration::from_secs(60));
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("items/s per worker (advertised)"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", text(&output));
    assert!(lines[0].contains("test-node-0"), "{}", lines[0]);
    assert_same_output(&remote, &local, "cluster output differs from the local run");
}

/// Whether this machine has an OpenCL device (PoCL here and in CI). Without one, `test`
/// checks only the CPU fallback of `offload node --opencl`, and says so (under CI that
/// is a failure: CI machines have PoCL).
fn opencl_device_present(test: &str) -> bool {
    let found = opencl_backend::discover();
    if found.devices.is_empty() {
        crate::common::skip(
            test,
            &format!(
                "no OpenCL device ({}): only the CPU fallback of `offload node --opencl` is checked",
                found.note.as_deref().unwrap_or("none found")
            ),
        );
        return false;
    }
    true
}

/// One node with `--opencl` (1 CPU worker plus every OpenCL device) in a fresh cluster.
fn opencl_cluster() -> Cluster {
    let mut cluster = Cluster::new(0);
    let creds = cluster.credentials();
    offload_ok([
        OsArg::from("cluster"),
        "add-node".into(),
        "--dir".into(),
        creds.clone().into(),
        "--name".into(),
        "gpu".into(),
    ]);
    let node = Node::start_flags(
        cluster.dir.path(),
        &creds.join("nodes").join("gpu"),
        0,
        &["--opencl"],
    );
    cluster.nodes.push(node);
    cluster
}

/// Packets the `-v` report says device names containing `needle` committed.
fn device_packets(stderr: &str, needle: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("device "))
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let count = l.rsplit(": ").next()?;
            count
                .strip_suffix(" packets")
                .or_else(|| count.strip_suffix(" packet"))?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Packets the final `ran ... in N packets` line (on stdout) says the job committed.
fn total_packets(output: &Output) -> u64 {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("ran "))
        .and_then(|rest| rest.split(" in ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_node_serving_its_opencl_device_runs_packets_there_and_equals_the_local_run() {
    let present = opencl_device_present(
        "a_node_serving_its_opencl_device_runs_packets_there_and_equals_the_local_run",
    );
    let cluster = opencl_cluster();
    let job = Mandel::new(cluster.dir.path(), 320, 240, 300);
    let local = cluster.path("local.bin");
    job.run_local(&local);
    // Each device kind forced in turn, so where packets run is decided by the flag, not
    // by which device happens to be faster on this machine today.
    let run = |device: &str| {
        let remote = cluster.path(&format!("remote-{device}.bin"));
        let mut command = job.cluster_command(&cluster, &cluster.credentials(), &remote);
        command.args(["-v", "--device", device]);
        let output = run_bounded(command, Duration::from_secs(180));
        (output, remote)
    };
    let log = cluster.nodes[0].log();
    if !present {
        assert!(log.contains("no OpenCL device found"), "{log}");
        let (output, _) = run("opencl");
        assert!(!output.status.success(), "{}", text(&output));
        assert!(
            text(&output).contains("no node serves an OpenCL device"),
            "{}",
            text(&output)
        );
        return;
    }
    assert!(log.contains("serving OpenCL device 0"), "{log}");
    for device in ["opencl", "cpu", "auto"] {
        let (output, remote) = run(device);
        assert!(
            output.status.success(),
            "--device {device}: {}",
            text(&output)
        );
        // mandelbrot writes integers: every device's packets must be bit-exact.
        assert_same_output(&remote, &local, "cluster output differs from the local run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("opencl0 "),
            "no OpenCL device listed:\n{stderr}"
        );
        let (on_device, on_cpu) = (
            device_packets(&stderr, "/opencl0: "),
            device_packets(&stderr, "/cpu0"),
        );
        assert_eq!(on_device + on_cpu, total_packets(&output), "{stderr}");
        match device {
            "opencl" => assert_eq!(on_cpu, 0, "{stderr}"),
            "cpu" => assert_eq!(on_device, 0, "{stderr}"),
            _ => {}
        }
        if device == "opencl" {
            assert!(on_device > 0, "the OpenCL device ran no packet:\n{stderr}");
        }
    }
}

#[test]
fn whole_buffers_and_sums_on_a_node_opencl_device_equal_the_local_run() {
    let present =
        opencl_device_present("whole_buffers_and_sums_on_a_node_opencl_device_equal_the_local_run");
    let cluster = opencl_cluster();
    let dir = cluster.dir.path();
    let pkg = package(
        &repo_path("examples/logcrunch/kernel.rs"),
        &repo_path("examples/logcrunch/manifest.toml"),
        dir,
        "logcrunch",
    );
    // Whole `in` buffers (the log and the chunk bounds) go to the device once; each
    // packet's histogram partial comes back and is added up like the CPU's.
    let log = crate::references::logcrunch_ref::generate_log(20_000, 7);
    let chunks = 400u64;
    let bounds = crate::references::logcrunch_ref::chunk_bounds(&log, chunks as usize);
    let (log_file, bounds_file) = (dir.join("log.bin"), dir.join("bounds.bin"));
    std::fs::write(&log_file, &log).expect("log file");
    write_le(&bounds_file, &bounds);
    let run = |tag: &str, flags: Vec<OsArg>| {
        let hist = dir.join(format!("hist-{tag}.bin"));
        let output = Run::new(&pkg, "logcrunch", chunks)
            .buffer("in", "log", &log_file)
            .arg("log_len", log.len())
            .buffer("in", "bounds", &bounds_file)
            .arg("bounds_len", bounds.len())
            .buffer("sum", "hist", &hist)
            .flags(flags)
            .ok();
        let hist: Vec<u64> = read_le(&hist);
        (output, hist)
    };
    let (_, local) = run("local", Vec::new());
    let mut flags = cluster.cluster_flags(&cluster.credentials());
    flags.push("-v".into());
    // On the OpenCL device only, so that its whole buffers and sum partials are what
    // is checked, whatever the CPU worker's speed.
    if present {
        flags.extend(["--device".into(), "opencl".into()]);
    }
    let (output, remote) = run("cluster", flags);
    assert_eq!(remote, local, "histogram differs from the local run");
    assert_eq!(
        local,
        crate::references::logcrunch_ref::count(&log),
        "the local run differs from the reference"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    if present {
        let on_device = device_packets(&stderr, "/opencl0: ");
        assert!(on_device > 0, "the OpenCL device ran no packet:\n{stderr}");
        assert_eq!(on_device, total_packets(&output), "{stderr}");
    }
}

#[test]
fn a_kernel_the_node_cannot_lower_runs_on_its_cpu_workers() {
    let present = opencl_device_present("a_kernel_the_node_cannot_lower_runs_on_its_cpu_workers");
    let cluster = opencl_cluster();
    let dir = cluster.dir.path();
    let special = repo_path("tests/conformance/special/mulhi_u128");
    let pkg = package(
        &special.join("kernel.c"),
        &special.join("manifest.toml"),
        dir,
        "mulhi",
    );
    let a: Vec<u64> = (0..1000u64).map(|i| i << 40 | 0xfff).collect();
    let a_file = dir.join("a.bin");
    write_le(&a_file, &a);
    let out = dir.join("out.bin");
    let mut flags = cluster.cluster_flags(&cluster.credentials());
    flags.push("-v".into());
    let output = Run::new(&pkg, "mulhi_u128", a.len() as u64)
        .buffer("in", "a", &a_file)
        .buffer("out", "out", &out)
        .flags(flags)
        .ok();
    let expected: Vec<u64> = a
        .iter()
        .map(|&x| ((u128::from(x) * 0x1234_5678_9abc_def1u128) >> 64) as u64)
        .collect();
    assert_eq!(read_le::<u64>(&out), expected);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(device_packets(&stderr, "/opencl"), 0, "{stderr}");
    if present {
        assert!(
            stderr.contains("does not run on its OpenCL devices"),
            "no fallback line:\n{stderr}"
        );
        let log = cluster.nodes[0].log();
        assert!(
            log.contains("does not run on OpenCL device 0") && log.contains("i128"),
            "the node did not log why:\n{log}"
        );
    }
}
