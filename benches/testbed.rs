//! `testbed`: a compute-bound job on the multi-host testbed (`scripts/testbed.sh`, root):
//! Mandelbrot on 2 nodes × 1 core against the same job on 1 node × 1 core, both through
//! the cluster client in the testbed's client namespace, links shaped to 1 Gbit/s.
//! Parallel efficiency = T(1 node) / (2 × T(2 nodes)); rounds alternate the two and the
//! median is reported. Each node runs with `--cores 1` and a CPU quota of one core.
//!
//! Then two programs (issue 14's figures for programs on a cluster, with the client
//! holding the buffers, as today):
//! - 2-D Jacobi 1300² (`examples/jacobi`, 10 time steps: 21 steps) on the 2 nodes against
//!   the same program on this machine with 2 threads: wall time, and the bytes that
//!   crossed the client's link per step (its interface's counters);
//! - Jacobi 200² × 250 time steps (501 steps) on the 2 nodes, node 2 killed when half
//!   of an undisturbed run's time has passed: the output must equal the local run's, and
//!   the time lost is what the run took beyond half a 2-node run plus half a 1-node run.
//!
//! Run: `cargo bench --bench testbed` (as root; elsewhere it says why and exits).
//! `OFFLOAD_BENCH_ROUNDS` (default 5).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

const OFFLOAD: &str = env!("CARGO_BIN_EXE_offload");
const NAME: &str = "obench";

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn script(args: &[&str]) -> Command {
    let mut command = Command::new("bash");
    command.arg(repo("scripts/testbed.sh")).args(args);
    command
}

/// Removes the testbed and its nodes when dropped.
struct Testbed {
    nodes: Vec<Child>,
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = script(&["down", NAME]).status();
    }
}

fn offload(args: &[&str]) -> Result<()> {
    let out = Command::new(OFFLOAD).args(args).output()?;
    ensure!(
        out.status.success(),
        "offload {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn start_node(testbed: &mut Testbed, index: usize, creds: &Path) -> Result<()> {
    let node = format!("node{index}");
    let name = format!("n{index}");
    let listen = format!("10.77.0.{}:7878", 10 + index);
    let mut child = script(&["exec", NAME, &node, OFFLOAD, "node", "--listen", &listen])
        .args([
            "--no-mdns",
            "--cores",
            "1",
            "--name",
            &name,
            "--credentials",
        ])
        .arg(creds.join("nodes").join(&name))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start a testbed node")?;
    let stdout = child.stdout.take().context("node stdout")?;
    testbed.nodes.push(child);
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        if line?.starts_with("listening on ") {
            // Keep reading: a node whose stdout is closed fails when it next writes.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(());
        }
    }
    bail!("testbed node {index} ended before listening")
}

/// CPU seconds (user + system) of this process's finished children so far: the
/// client's, as `OFFLOAD_BENCH_VERBOSE` shows beside its wall time.
fn children_cpu() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Wall time of the mandelbrot job on the given nodes, from the client's namespace.
fn run(pkg: &Path, creds: &Path, out: &Path, nodes: &[usize]) -> Result<Duration> {
    let (width, height, iters) = (2048u32, 1024u32, 2000u32);
    let mut command = script(&["exec", NAME, "client", OFFLOAD, "run"]);
    command
        .arg(pkg)
        .args(["--kernel", "mandelbrot", "--items"])
        .arg((width * height).to_string())
        .args(["--arg", &format!("width={width}")])
        .args(["--arg", &format!("max_iter={iters}")])
        .args(["--arg", "x0=-2.0", "--arg", "y0=-1.0"])
        .args(["--arg", &format!("step={}", 3.0 / f64::from(width))])
        .arg("--out")
        .arg(format!("iters={}", out.display()))
        .args(["--cluster", "--no-discovery", "--credentials"])
        .arg(creds);
    for index in nodes {
        command.args(["--peer", &format!("10.77.0.{}:7878", 10 + index)]);
    }
    if std::env::var_os("OFFLOAD_BENCH_VERBOSE").is_some() {
        command.arg("-v");
    }
    let cpu_before = children_cpu();
    let started = Instant::now();
    let output = command.output()?;
    let took = started.elapsed();
    if std::env::var_os("OFFLOAD_BENCH_VERBOSE").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        eprintln!(
            "client: {:.3} s wall, {:.3} s CPU",
            took.as_secs_f64(),
            children_cpu() - cpu_before
        );
    }
    ensure!(
        output.status.success(),
        "the cluster run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(took)
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("testbed bench: skipped: network namespaces and tc need root");
        return Ok(());
    }
    let rounds: usize = std::env::var("OFFLOAD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("testbed-bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let _ = script(&["down", NAME]).status();
    let up = script(&["up", NAME, "2", "1gbit", "100", "100"]).output()?;
    ensure!(
        up.status.success(),
        "scripts/testbed.sh up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let mut testbed = Testbed { nodes: Vec::new() };
    let creds = work.join("cluster");
    let creds_text = creds.display().to_string();
    offload(&["cluster", "init", "--dir", &creds_text])?;
    for name in ["n1", "n2"] {
        offload(&["cluster", "add-node", "--dir", &creds_text, "--name", name])?;
    }
    let pkg = work.join("mandelbrot.okp");
    offload(&[
        "package",
        &repo("examples/mandelbrot/kernel.rs").display().to_string(),
        "--manifest",
        &repo("examples/mandelbrot/manifest.toml")
            .display()
            .to_string(),
        "-o",
        &pkg.display().to_string(),
    ])?;
    start_node(&mut testbed, 1, &creds)?;
    start_node(&mut testbed, 2, &creds)?;
    let (one_out, two_out) = (work.join("one.bin"), work.join("two.bin"));
    // Untimed: the nodes compile the kernel into their caches.
    run(&pkg, &creds, &one_out, &[1])?;
    run(&pkg, &creds, &two_out, &[1, 2])?;
    ensure!(
        std::fs::read(&one_out)? == std::fs::read(&two_out)?,
        "the two runs' outputs differ"
    );
    let mut efficiencies = Vec::new();
    let (mut ones, mut twos) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (one, two) = if round % 2 == 0 {
            let one = run(&pkg, &creds, &one_out, &[1])?;
            (one, run(&pkg, &creds, &two_out, &[1, 2])?)
        } else {
            let two = run(&pkg, &creds, &two_out, &[1, 2])?;
            (run(&pkg, &creds, &one_out, &[1])?, two)
        };
        efficiencies.push(one.as_secs_f64() / (2.0 * two.as_secs_f64()));
        ones.push(one.as_secs_f64());
        twos.push(two.as_secs_f64());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "testbed mandelbrot 2048x1024, 2000 iterations, 1 Gbit/s links, nodes of 1 core: 1 node {:.3} s, 2 nodes {:.3} s, parallel efficiency {:.3} (median of {rounds})",
        median(ones),
        median(twos),
        median(efficiencies)
    );
    programs(&mut testbed, &work, &creds, rounds)
}

/// The jacobi example's package and program, copied into `dir/jacobi`.
fn jacobi_program(dir: &Path) -> Result<PathBuf> {
    let dir = dir.join("jacobi");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(
        repo("examples/jacobi/program.toml"),
        dir.join("program.toml"),
    )?;
    offload(&[
        "package",
        &repo("examples/jacobi/kernel.c").display().to_string(),
        "--manifest",
        &repo("examples/jacobi/manifest.toml").display().to_string(),
        "-o",
        &dir.join("jacobi.okp").display().to_string(),
    ])?;
    Ok(dir.join("program.toml"))
}

/// Bytes the client's interface has received and sent (its namespace's /proc/net/dev).
fn client_bytes() -> Result<u64> {
    let out = script(&["exec", NAME, "client", "cat", "/proc/net/dev"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("eth0:"))
        .context("no eth0 in the client's /proc/net/dev")?;
    let fields: Vec<u64> = line
        .split_once(':')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ensure!(fields.len() >= 9, "unexpected /proc/net/dev line: {line}");
    Ok(fields[0] + fields[8])
}

/// Runs `program` with `scalars`, on the given testbed nodes from the client's namespace
/// (or on this machine with 2 threads when `nodes` is empty), then moves its output to
/// `out`. `kill` ends a node's process after a delay, during the run.
fn run_program(
    program: &Path,
    creds: &Path,
    scalars: &[&str],
    nodes: &[usize],
    out: &Path,
    kill: Option<(&mut Child, Duration)>,
) -> Result<Duration> {
    let mut command = if nodes.is_empty() {
        let mut local = Command::new(OFFLOAD);
        local.args(["run"]).arg(program).args(["--threads", "2"]);
        local
    } else {
        let mut remote = script(&["exec", NAME, "client", OFFLOAD, "run"]);
        remote
            .arg(program)
            .args(["--cluster", "--no-discovery", "--node-timeout", "1"])
            .arg("--credentials")
            .arg(creds);
        for index in nodes {
            remote.args(["--peer", &format!("10.77.0.{}:7878", 10 + index)]);
        }
        remote
    };
    for scalar in scalars {
        command.args(["--arg", scalar]);
    }
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    let started = Instant::now();
    let child = command.spawn()?;
    if let Some((node, after)) = kill {
        std::thread::sleep(after);
        node.kill()?;
        let _ = node.wait();
    }
    let output = child.wait_with_output()?;
    let took = started.elapsed();
    ensure!(
        output.status.success(),
        "the program run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written = program.with_file_name("grid.bin");
    std::fs::rename(&written, out)
        .with_context(|| format!("the run wrote no {}", written.display()))?;
    Ok(took)
}

fn programs(testbed: &mut Testbed, work: &Path, creds: &Path, rounds: usize) -> Result<()> {
    let program = jacobi_program(work)?;
    let big = ["n=1300", "tsteps=10"];
    let steps = 21u64;
    let (local_out, remote_out) = (work.join("jacobi-local.bin"), work.join("jacobi-2.bin"));
    // Untimed: the nodes compile the kernels.
    run_program(&program, creds, &big, &[1, 2], &remote_out, None)?;
    let (mut locals, mut remotes, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds.min(3) {
        locals.push(run_program(&program, creds, &big, &[], &local_out, None)?.as_secs_f64());
        let before = client_bytes()?;
        remotes.push(run_program(&program, creds, &big, &[1, 2], &remote_out, None)?.as_secs_f64());
        bytes.push((client_bytes()? - before) as f64 / steps as f64);
        ensure!(
            std::fs::read(&local_out)? == std::fs::read(&remote_out)?,
            "the 2-node jacobi differs from the local run"
        );
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (local, remote) = (median(locals), median(remotes));
    // With residency each step would move 2 halo rows per node boundary each way.
    let halo_goal = 2.0 * 2.0 * 1300.0 * 8.0;
    println!(
        "testbed jacobi 1300^2 x 10 time steps ({steps} steps), 1 Gbit/s, client-held buffers: 2 nodes x 1 core {remote:.3} s, this machine x 2 threads {local:.3} s, ratio {:.3}; {:.2} MB per step over the client's link (with residency: {:.1} KB)",
        local / remote,
        median(bytes) / 1e6,
        halo_goal / 1e3
    );

    // A node killed half way through a 501-step program.
    let long = ["n=200", "tsteps=250"];
    let kill_out = work.join("jacobi-killed.bin");
    run_program(&program, creds, &long, &[], &local_out, None)?;
    let two = run_program(&program, creds, &long, &[1, 2], &remote_out, None)?;
    let one = run_program(&program, creds, &long, &[1], &remote_out, None)?;
    let mut node = testbed.nodes.pop().context("node 2")?;
    let killed = run_program(
        &program,
        creds,
        &long,
        &[1, 2],
        &kill_out,
        Some((&mut node, two / 2)),
    )?;
    ensure!(
        std::fs::read(&local_out)? == std::fs::read(&kill_out)?,
        "the run that lost a node differs from the local run"
    );
    let expected = two.as_secs_f64() / 2.0 + one.as_secs_f64() / 2.0;
    println!(
        "testbed jacobi 200^2 x 250 time steps (501 steps), node 2 killed at half of a 2-node run ({:.3} s; 1 node {:.3} s), --node-timeout 1: took {:.3} s, {:.3} s more than half of each; output identical to the local run",
        two.as_secs_f64(),
        one.as_secs_f64(),
        killed.as_secs_f64(),
        killed.as_secs_f64() - expected
    );
    Ok(())
}
