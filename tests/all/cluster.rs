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

use crate::common::{
    die_with_test, offload_ok, package, read_le, repo_path, run_bounded, wait_for_change,
    wait_for_exits, wait_until, write_le, Run,
};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_offload");

/// A node process; killed (and reaped) on drop.
pub(crate) struct Node {
    pub(crate) child: Child,
    pub(crate) addr: String,
    log: PathBuf,
    /// `http://ADDR/metrics` when the node serves metrics.
    pub(crate) metrics: Option<String>,
}

/// How a test node is started, beyond its credentials.
#[derive(Clone, Copy)]
pub(crate) struct Launch<'a> {
    listen: &'a str,
    /// Flags before `node` (`--cache-dir`).
    global: &'a [OsArg],
    /// Flags after `node` (`--opencl`).
    flags: &'a [&'a str],
    /// Part of the log file's name (a restarted node gets a log of its own).
    log_suffix: &'a str,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            listen: "127.0.0.1:0",
            global: &[],
            flags: &[],
            log_suffix: "",
        }
    }
}

impl Node {
    /// Starts `offload node` with `credentials` and waits for its `listening on` line.
    pub(crate) fn start(dir: &Path, credentials: &Path, index: usize) -> Node {
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
    pub(crate) fn start_flags(
        dir: &Path,
        credentials: &Path,
        index: usize,
        flags: &[&str],
    ) -> Node {
        let launch = Launch {
            flags,
            ..Launch::default()
        };
        Node::spawn(dir, credentials, index, &launch)
    }

    fn spawn(dir: &Path, credentials: &Path, index: usize, launch: &Launch<'_>) -> Node {
        let Launch {
            listen,
            global,
            flags,
            log_suffix,
        } = *launch;
        let mut args: Vec<OsArg> = global.to_vec();
        args.extend(["node", "--listen", listen, "--no-mdns", "--cores", "1"].map(OsArg::from));
        args.extend(flags.iter().map(OsArg::from));
        if !sandbox::support().is_complete() && !flags.contains(&"--unsandboxed") {
            // Without seccomp or Landlock a node serves only when told to: these tests
            // are about the cluster, the sandbox's own tests say loudly what is missing.
            args.push("--unsandboxed".into());
        }
        args.extend([
            OsArg::from("--name"),
            format!("test-node-{index}").into(),
            "--credentials".into(),
            credentials.into(),
        ]);
        Node::spawn_raw(dir, index, &args, log_suffix, Some("info"))
    }

    /// Starts `offload ARGS...` (a node: `args` hold `node` and its flags) with its log
    /// in `dir` and `OFFLOAD_LOG` set to `log_level` (`None`: the default levels), and
    /// waits for its `listening on` line (and the `metrics on` line before it, if any).
    pub(crate) fn spawn_raw(
        dir: &Path,
        index: usize,
        args: &[OsArg],
        log_suffix: &str,
        log_level: Option<&str>,
    ) -> Node {
        let log = dir.join(format!("node{index}{log_suffix}.log"));
        let mut command = Command::new(BIN);
        die_with_test(&mut command)
            .args(args)
            .env_remove("OFFLOAD_LOG")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("node log file"));
        if let Some(level) = log_level {
            command.env("OFFLOAD_LOG", level);
        }
        let mut child = command.spawn().expect("start offload node");
        let stdout = child.stdout.take().expect("node stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut metrics = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("metrics on ") {
                    metrics = Some(url.to_string());
                }
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send((addr.to_string(), metrics.clone()));
                }
            }
        });
        let (addr, metrics) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(found) => found,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "node {index} did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Node {
            child,
            addr,
            log,
            metrics,
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// Waits until the node's log contains `text`.
    pub(crate) fn wait_for_log(&self, text: &str, limit: Duration) -> bool {
        wait_for_change(&self.log, None, limit, || self.log().contains(text))
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
pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) nodes: Vec<Node>,
}

impl Cluster {
    pub(crate) fn new(n: usize) -> Cluster {
        Cluster::with_faults(n, |_, _| Vec::new())
    }

    /// A cluster whose node `i` is started with the test-only `--fault` flags
    /// `faults(i, cluster folder)` (see the cluster crate's `fault` module; the tests
    /// build `offload` with them).
    pub(crate) fn with_faults(n: usize, faults: impl Fn(usize, &Path) -> Vec<String>) -> Cluster {
        Cluster::with_flags(n, |i, dir| {
            faults(i, dir)
                .into_iter()
                .flat_map(|fault| ["--fault".to_string(), fault])
                .collect()
        })
    }

    /// A cluster whose node `i` is started with the flags `flags(i, cluster folder)`
    /// after `node`.
    pub(crate) fn with_flags(n: usize, flags: impl Fn(usize, &Path) -> Vec<String>) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let creds = dir.path().join("cluster");
        cluster_init(&creds);
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("n{i}");
            add_node(&creds, &name);
            let flags: Vec<String> = flags(i, dir.path());
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            nodes.push(Node::start_flags(
                dir.path(),
                &creds.join("nodes").join(&name),
                i,
                &flags,
            ));
        }
        Cluster { dir, nodes }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn credentials(&self) -> PathBuf {
        self.path("cluster")
    }

    /// `--cluster --peer ... --credentials ... --no-discovery` for `run`.
    pub(crate) fn cluster_flags(&self, credentials: &Path) -> Vec<OsArg> {
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

pub(crate) type OsArg = std::ffi::OsString;

/// `[fault]` for the chosen node, nothing for the others.
pub(crate) fn faults_of(chosen: bool, fault: &str) -> Vec<String> {
    if chosen {
        vec![fault.to_string()]
    } else {
        Vec::new()
    }
}

/// `kill -SIGNAL PID` (the process may already be gone).
/// Fails with `what` unless the cluster run's output file equals the local run's (compared
/// whole, without printing megabytes of bytes).
pub(crate) fn assert_same_output(remote: &Path, local: &Path, what: &str) {
    let remote = std::fs::read(remote).expect("cluster output");
    let local = std::fs::read(local).expect("local output");
    assert!(
        remote == local,
        "{what} ({} vs {} bytes)",
        remote.len(),
        local.len()
    );
}

/// `offload cluster add-node --dir CLUSTER --name NAME`; returns the identity's folder.
pub(crate) fn add_node(cluster: &Path, name: &str) -> PathBuf {
    offload_ok([
        OsArg::from("cluster"),
        "add-node".into(),
        "--dir".into(),
        cluster.into(),
        "--name".into(),
        name.into(),
    ]);
    cluster.join("nodes").join(name)
}

/// `offload cluster init --dir dir`: a fresh cluster identity.
pub(crate) fn cluster_init(dir: &Path) {
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
pub(crate) fn run_args(
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
pub(crate) struct Mandel {
    pub(crate) pkg: PathBuf,
    width: u32,
    height: u32,
    max_iter: u32,
}

impl Mandel {
    pub(crate) fn new(dir: &Path, width: u32, height: u32, max_iter: u32) -> Mandel {
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

    pub(crate) fn run_args(&self, out: &Path) -> Vec<OsArg> {
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
    pub(crate) fn run_local(&self, out: &Path) {
        offload_ok(self.run_args(out));
    }

    /// The command line of a cluster run, ready to start.
    pub(crate) fn cluster_command(
        &self,
        cluster: &Cluster,
        credentials: &Path,
        out: &Path,
    ) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(self.run_args(out))
            .args(cluster.cluster_flags(credentials));
        command
    }
}

pub(crate) fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
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
    let cluster = Cluster::with_faults(3, |i, _| faults_of(i == 0, "corrupt-results"));
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

/// A cluster run in progress whose output is read as it comes, so that a test can act
/// on what the client says (a node lost, a node back) instead of waiting for time to
/// pass.
pub(crate) struct LiveRun {
    child: Child,
    stderr: mpsc::Receiver<String>,
    stdout: std::thread::JoinHandle<String>,
    seen: String,
}

impl LiveRun {
    pub(crate) fn start(mut command: Command) -> LiveRun {
        let mut child = die_with_test(&mut command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start offload run");
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(out), &mut text);
            text
        });
        LiveRun {
            child,
            stderr,
            stdout,
            seen: String::new(),
        }
    }

    /// Waits until the client printed a line with every one of `needles`.
    pub(crate) fn wait_for(&mut self, needles: &[&str], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = needles.iter().all(|n| line.contains(n));
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if found {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "the client never said {needles:?} within {limit:?}; it said:\n{}",
                        self.seen
                    );
                }
            }
        }
    }

    /// Waits for the run to end (failing the test past `limit`) and returns its status,
    /// stdout and stderr.
    pub(crate) fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, String, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                }
                let stdout = self.stdout.join().unwrap_or_default();
                return (status, stdout, self.seen);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the cluster run did not finish within {limit:?}:\n{}",
                    self.seen
                );
            }
            // Drain what the client says meanwhile, so it never blocks on a full pipe.
            if let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(50)) {
                self.seen.push_str(&line);
                self.seen.push('\n');
            }
        }
    }
}

/// The gate file in a cluster's folder: nodes started with `--fault gate=PATH` run no
/// packet until it exists.
pub(crate) fn gate(dir: &Path) -> PathBuf {
    dir.join("gate")
}

pub(crate) fn open_gate(cluster: &Cluster) {
    std::fs::write(gate(cluster.dir.path()), b"open").expect("open the gate");
}

/// A cluster of `nodes` nodes where node 0 injects `fault` on its first packet and every
/// other node holds its packets at the gate, running a mandelbrot job; `act` runs once
/// the client reported node 0 lost and returns when the survivors may go on. The gate
/// then opens: the job can only have finished through the client's handling of the lost
/// node, whatever the speeds involved. Checks the output against a local run and returns
/// the cluster and the client's stderr.
fn survives(
    nodes: usize,
    fault: &str,
    act: impl FnOnce(&mut Cluster, &mut LiveRun),
) -> (Cluster, String) {
    let mut cluster = Cluster::with_faults(nodes, |i, dir| {
        if i == 0 {
            vec![fault.to_string()]
        } else {
            vec![format!("gate={}", gate(dir).display())]
        }
    });
    let job = Mandel::new(cluster.dir.path(), 240, 160, 400);
    let local = cluster.path("local.bin");
    job.run_local(&local);
    let remote = cluster.path("remote.bin");
    let mut command = job.cluster_command(&cluster, &cluster.credentials(), &remote);
    command.args(["--node-timeout", "1"]);
    let mut run = LiveRun::start(command);
    run.wait_for(&["test-node-0", "lost"], Duration::from_secs(60));
    act(&mut cluster, &mut run);
    open_gate(&cluster);
    let (status, stdout, stderr) = run.finish(Duration::from_secs(240));
    assert!(status.success(), "{stdout}\n{stderr}");
    assert_same_output(
        &remote,
        &local,
        "cluster output differs from the local run after a node fault",
    );
    (cluster, stderr)
}

#[test]
fn a_node_killed_mid_job_still_gives_the_correct_output() {
    let (_, stderr) = survives(3, "die-on-packet", |_, _| {});
    assert!(stderr.contains("re-run on the other nodes"), "{stderr}");
}

#[test]
fn a_node_paused_mid_job_still_gives_the_correct_output() {
    let (_, stderr) = survives(2, "stop-on-packet", |_, _| {});
    assert!(stderr.contains("re-run on the other nodes"), "{stderr}");
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
    // Both sides say it is another cluster's, naming both CAs by fingerprint.
    let fingerprint = |dir: &Path| {
        offload::Credentials::load(dir)
            .expect("credentials")
            .ca_fingerprint()
    };
    let (theirs, ours) = (fingerprint(&outsider), fingerprint(&cluster.credentials()));
    let said = text(&output);
    assert!(
        said.contains("belongs to another cluster")
            && said.contains(&theirs)
            && said.contains(&ours),
        "{said}"
    );
    assert!(
        !said.contains("went away during the hello")
            && said.matches("another cluster").count() <= 2,
        "{said}"
    );
    let node = &cluster.nodes[0];
    assert!(
        node.wait_for_log("refused connection", Duration::from_secs(10)),
        "the node did not log the refusal:\n{}",
        node.log()
    );
    assert!(node.log().contains("another cluster"), "{}", node.log());
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
fn a_node_or_client_without_credentials_names_the_folder_and_how_to_make_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let mut node = Command::new(BIN);
    node.args([
        "node",
        "--listen",
        "127.0.0.1:0",
        "--no-mdns",
        "--credentials",
    ])
    .arg(&empty);
    let output = run_bounded(node, Duration::from_secs(30));
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("cannot load the node's credentials from")
            && said.contains("offload cluster add-node")
            && said.contains("ca.pem"),
        "{said}"
    );
    let job = Mandel::new(dir.path(), 16, 16, 10);
    let mut client = Command::new(BIN);
    client.args(job.run_args(&dir.path().join("out.bin")));
    client.args([
        "--cluster",
        "--no-discovery",
        "--peer",
        "127.0.0.1:9",
        "--credentials",
    ]);
    client.arg(&empty);
    let output = run_bounded(client, Duration::from_secs(30));
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("cannot load cluster credentials from") && said.contains("ca.pem"),
        "{said}"
    );
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
    let test = "discovery_finds_nodes_in_a_private_network_namespace";
    if !crate::common::is_root() {
        crate::common::skip(test, "a private network namespace (unshare -n) needs root");
        return;
    }
    let probe = Command::new("unshare").args(["-n", "true"]).status();
    if !matches!(probe, Ok(s) if s.success()) {
        crate::common::skip(test, "`unshare -n` is not available here");
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
    // Node 0 dies on its first packet; it is started again (without the fault) while the
    // other node holds its packets at the gate, so the job is still running when node 0
    // comes back, and the gate opens only once the client says it rejoined.
    let (cluster, stderr) = survives(2, "die-on-packet", |cluster, run| {
        let addr = kill_node(cluster, 0);
        restart_node(cluster, 0, &addr);
        run.wait_for(
            &["test-node-0", "rejoined the job"],
            Duration::from_secs(60),
        );
    });
    packets_after_rejoining(&stderr, "test-node-0").unwrap_or_else(|| {
        panic!(
            "the restarted node did not rejoin:\n{stderr}\n--- restarted node ---\n{}",
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
    // The tuned node's workers run the settings whose rate it advertised.
    let tuned = "kernel `mandelbrot`: compiling with its tuned settings";
    assert!(
        cluster.nodes[0].log().contains(tuned),
        "{}",
        cluster.nodes[0].log()
    );
    assert!(!cluster.nodes[1].log().contains(tuned));
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
    add_node(&creds, "gpu");
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
pub(crate) fn device_packets(stderr: &str, needle: &str) -> u64 {
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

#[test]
fn a_job_whose_every_node_is_lost_finishes_on_this_machine() {
    // The only node dies on its first packet: the packets it held are run here.
    let cluster = Cluster::with_faults(1, |_, _| vec!["die-on-packet".into()]);
    let job = Mandel::new(cluster.dir.path(), 160, 120, 200);
    let local = cluster.path("local.bin");
    job.run_local(&local);
    let remote = cluster.path("remote.bin");
    let mut command = job.cluster_command(&cluster, &cluster.credentials(), &remote);
    command.args(["--node-timeout", "1"]);
    let output = run_bounded(command, Duration::from_secs(120));
    assert!(output.status.success(), "{}", text(&output));
    assert_same_output(&remote, &local, "the finished job differs from a local run");
    let all = text(&output);
    assert!(
        all.contains("every node was lost") && all.contains("on this machine"),
        "{all}"
    );
}

#[test]
fn without_the_local_fallback_a_job_whose_nodes_are_lost_fails_and_writes_nothing() {
    let cluster = Cluster::with_faults(1, |_, _| vec!["die-on-packet".into()]);
    let job = Mandel::new(cluster.dir.path(), 160, 120, 200);
    let remote = cluster.path("remote.bin");
    std::fs::write(&remote, b"before").expect("old output");
    let mut command = job.cluster_command(&cluster, &cluster.credentials(), &remote);
    command.args(["--node-timeout", "1", "--no-local-fallback"]);
    let output = run_bounded(command, Duration::from_secs(120));
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("every node was lost"),
        "{}",
        text(&output)
    );
    assert_eq!(std::fs::read(&remote).expect("output"), b"before");
}

#[test]
fn a_node_failing_every_packet_is_excluded_and_the_job_finishes_on_the_others() {
    for (nodes, redundancy) in [(2, "1"), (3, "2")] {
        let cluster = Cluster::with_faults(nodes, |i, _| faults_of(i == 0, "fail-packets"));
        let job = Mandel::new(cluster.dir.path(), 160, 120, 200);
        let local = cluster.path("local.bin");
        job.run_local(&local);
        let remote = cluster.path("remote.bin");
        let mut command = job.cluster_command(&cluster, &cluster.credentials(), &remote);
        command.args(["--redundancy", redundancy]);
        let output = run_bounded(command, Duration::from_secs(120));
        assert!(
            output.status.success(),
            "redundancy {redundancy}: {}",
            text(&output)
        );
        assert_same_output(&remote, &local, "cluster output differs from the local run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("node test-node-0") && stderr.contains("it is excluded from the job"),
            "redundancy {redundancy}: {stderr}"
        );
    }
}

#[test]
fn a_kernel_that_fails_on_two_nodes_fails_the_job_naming_both() {
    let cluster = Cluster::new(2);
    let pkg = package(
        &repo_path("tests/cluster-kernels/crash.c"),
        &repo_path("tests/cluster-kernels/crash.toml"),
        cluster.dir.path(),
        "crash",
    );
    let out = cluster.path("crash.bin");
    let mut command = Command::new(BIN);
    command
        .args(run_args(
            &pkg,
            "crash",
            4096,
            &[("from", "0".into())],
            ("out", &out),
        ))
        .args(cluster.cluster_flags(&cluster.credentials()));
    let output = run_bounded(command, Duration::from_secs(120));
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("test-node-0")
            && stderr.contains("test-node-1")
            && stderr.contains("SIGSEGV"),
        "{stderr}"
    );
    assert!(!out.exists(), "a failed job wrote its output");
}

/// The spin kernel (never finishes) packaged in `dir`, and a zero flag file for it.
fn spin_job(dir: &Path) -> (PathBuf, PathBuf) {
    let pkg = package(
        &repo_path("tests/cluster-kernels/spin.c"),
        &repo_path("tests/cluster-kernels/spin.toml"),
        dir,
        "spin",
    );
    let flag = dir.join("flag.bin");
    write_le(&flag, &[0u32]);
    (pkg, flag)
}

/// CPU time (clock ticks in user mode) process `pid` has used, from /proc.
fn user_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which is in parentheses.
            let rest = stat.rsplit_once(')')?.1;
            rest.split_whitespace().nth(11)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Starts a never-ending spin job on node 0 of `cluster` and returns it once a worker of
/// the node is seen spinning in it (its CPU time grows past 0.2 s).
fn start_spinning(cluster: &Cluster, pkg: &Path, flag: &Path) -> Child {
    let out = cluster.path("spin-out.bin");
    let mut command = Command::new(BIN);
    command
        .args([
            "run".as_ref(),
            pkg.as_os_str(),
            "--kernel".as_ref(),
            "spin".as_ref(),
        ])
        .args(["--items", "4", "--in"])
        .arg(format!("flag={}", flag.display()))
        .arg("--out")
        .arg(format!("out={}", out.display()))
        .args(cluster.cluster_flags(&cluster.credentials()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = die_with_test(&mut command)
        .spawn()
        .expect("start the spin job");
    assert!(
        cluster.nodes[0].wait_for_log("prepared kernel `spin`", Duration::from_secs(60)),
        "the node never prepared the spin job:\n{}",
        cluster.nodes[0].log()
    );
    let node = cluster.nodes[0].child.id();
    assert!(
        wait_until(Duration::from_secs(60), || children_of(node)
            .into_iter()
            .any(|w| user_ticks(w) >= 20)),
        "no worker ever spun"
    );
    child
}

#[test]
fn a_client_that_goes_away_has_its_packets_cancelled_and_the_next_job_runs() {
    let cluster = Cluster::new(1);
    let (pkg, flag) = spin_job(cluster.dir.path());
    let mut spinning = start_spinning(&cluster, &pkg, &flag);
    // The client dies without a word; its packet would spin on the node's only worker
    // for the node's packet timeout (300 s) if nobody noticed.
    let _ = spinning.kill();
    let _ = spinning.wait();
    let job = Mandel::new(cluster.dir.path(), 64, 48, 50);
    let local = cluster.path("local.bin");
    job.run_local(&local);
    let remote = cluster.path("remote.bin");
    let output = run_bounded(
        job.cluster_command(&cluster, &cluster.credentials(), &remote),
        Duration::from_secs(60),
    );
    assert!(output.status.success(), "{}", text(&output));
    assert_same_output(
        &remote,
        &local,
        "the next client's job differs from a local run",
    );
    // Noticed by the node's one-second silence rule (the connection itself would only
    // time out after 3 s), and the packet cancelled.
    let log = cluster.nodes[0].log();
    assert!(
        log.contains("taken for gone") && log.contains("its client went away"),
        "{log}"
    );
}

/// The child processes of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

#[test]
fn a_node_killed_with_sigkill_takes_its_workers_with_it() {
    let mut cluster = Cluster::new(1);
    let (pkg, flag) = spin_job(cluster.dir.path());
    let mut spinning = start_spinning(&cluster, &pkg, &flag);
    let node_pid = cluster.nodes[0].child.id();
    let workers = children_of(node_pid);
    assert!(!workers.is_empty(), "the node has no worker process");
    kill_node(&mut cluster, 0);
    assert!(
        wait_for_exits(&workers, Duration::from_secs(20)),
        "a worker outlived its node: {workers:?}"
    );
    let _ = spinning.kill();
    let _ = spinning.wait();
}

#[test]
fn a_node_keeps_its_caches_and_workers_under_their_caps() {
    // Caps smaller than one package and one worker: every new package pushes out the
    // last (once its job is over), every new kernel gets a fresh worker (on a sandboxed
    // node the package change restarts it before the memory cap is looked at: a
    // sandboxed worker serves one package); jobs still run.
    let mut cluster = Cluster::new(0);
    let creds = cluster.credentials();
    add_node(&creds, "small");
    let flags = ["--package-cache", "1K", "--worker-memory", "1K"];
    let node = Node::start_flags(
        cluster.dir.path(),
        &creds.join("nodes").join("small"),
        0,
        &flags,
    );
    cluster.nodes.push(node);
    let mandel = Mandel::new(cluster.dir.path(), 64, 48, 50);
    let saxpy = crate::common::saxpy_package(cluster.dir.path());
    let x = cluster.path("x.bin");
    let y = cluster.path("y.bin");
    write_le(&x, &(0..256).map(|i| i as f32).collect::<Vec<_>>());
    let run_saxpy = || {
        write_le(&y, &vec![1.0f32; 256]);
        Run::new(&saxpy, "saxpy", 256)
            .arg("a", 2.0f32)
            .buffer("in", "x", &x)
            .buffer("inout", "y", &y)
            .flags(cluster.cluster_flags(&cluster.credentials()))
            .ok();
        let ys: Vec<f32> = read_le(&y);
        assert_eq!(ys[100], 201.0);
    };
    let local = cluster.path("local.bin");
    mandel.run_local(&local);
    for round in 0..2 {
        let remote = cluster.path(&format!("remote-{round}.bin"));
        let output = run_bounded(
            mandel.cluster_command(&cluster, &cluster.credentials(), &remote),
            Duration::from_secs(60),
        );
        assert!(output.status.success(), "{}", text(&output));
        assert_same_output(&remote, &local, "mandelbrot on a node with small caps");
        run_saxpy();
    }
    let log = cluster.nodes[0].log();
    assert!(log.contains("(package cache full)"), "{log}");
    assert!(log.contains("starting it afresh"), "{log}");
}

#[test]
fn programs_on_loopback_nodes_equal_the_native_references() {
    use crate::programs::{assert_jacobi_close, floyd_reference, jacobi_reference, Example};
    let cluster = Cluster::new(2);
    let flags: Vec<String> = cluster
        .cluster_flags(&cluster.credentials())
        .into_iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // Halos: every sweep ships each packet's rows and one row either side.
    let jacobi = Example::new("jacobi");
    let stdout = jacobi.run(&[("n", 40), ("tsteps", 4)], &flags);
    assert!(
        stdout.contains("9 steps") && stdout.contains("2 nodes"),
        "{stdout}"
    );
    let grid: Vec<f64> = crate::common::read_le(&jacobi.path("grid.bin"));
    assert_jacobi_close(&grid, &jacobi_reference(40, 4));
    // A whole buffer read and a buffer written in place, step after step.
    let floyd = Example::new("floyd");
    floyd.run(&[("n", 30)], &flags);
    let paths: Vec<i32> = crate::common::read_le(&floyd.path("paths.bin"));
    assert_eq!(paths, floyd_reference(30));
}

#[test]
fn a_program_with_a_dead_peer_does_not_wait_for_it_at_every_step() {
    let cluster = Cluster::new(1);
    // An address nothing answers on: a UDP port bound and given back.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .to_string();
    let example = crate::programs::Example::new("jacobi");
    let mut command = Command::new(BIN);
    command
        .arg("run")
        .arg(example.program())
        .args(["--arg", "n=32", "--arg", "tsteps=10"])
        .args(cluster.cluster_flags(&cluster.credentials()))
        .args(["--peer", &dead]);
    let output = run_bounded(command, Duration::from_secs(120));
    assert!(output.status.success(), "{}", text(&output));
    let grid: Vec<f64> = read_le(&example.path("grid.bin"));
    crate::programs::assert_jacobi_close(&grid, &crate::programs::jacobi_reference(32, 10));
    // 21 steps, each a job: the dead node is waited for once, then tried again in the
    // background with a growing delay, each attempt at least its 3 s connect timeout;
    // waiting for it at every step would say so 21 times.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said = stderr.lines().filter(|l| l.contains(&dead)).count();
    assert!(
        (1..21).contains(&said),
        "{said} lines about {dead}:\n{stderr}"
    );
}
