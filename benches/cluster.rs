//! The cluster on loopback: empty-packet round trip (p50/p99), packets per second with
//! pipelining, bulk buffer throughput against a plain TCP copy and a TLS-over-TCP
//! (rustls) copy measured in the same run, and a 3-node mandelbrot job against the same
//! job run locally.
//!
//! `cargo bench --bench cluster`. It starts its own `offload node` processes on
//! 127.0.0.1 and kills them at the end. `OFFLOAD_BENCH_QUICK=1` shrinks every figure's
//! sample for a smoke run; `OFFLOAD_BENCH_ONLY=rtt|bulk|job` runs one section
//! (`quic` runs only the QUIC half of `bulk`, for profiling).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::client::{ClientConfig, ClusterClient, JobArg};
use cluster::credentials::{self, Credentials};
use offload::{
    package_source, ArgValue, Buffer, Cluster, Config, Engine, Job, Manifest, Options, ScalarValue,
};

struct Node(Child, String);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node(credentials: &Path, cores: usize) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_offload"))
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--normal-priority",
        ])
        .arg("--cores")
        .arg(cores.to_string())
        .arg("--credentials")
        .arg(credentials)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start offload node");
    let stdout = child.stdout.take().expect("node stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("node's first line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected node output: {line}"))
        .to_string();
    Node(child, addr)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

fn connect(credentials: &Path, nodes: &[&Node]) -> ClusterClient {
    let config = ClientConfig::new(Credentials::load(credentials).expect("credentials"))
        .peers(nodes.iter().map(|n| n.1.parse().expect("node address")));
    ClusterClient::connect(config).expect("connect")
}

fn main() {
    let quick = std::env::var_os("OFFLOAD_BENCH_QUICK").is_some();
    let only = std::env::var("OFFLOAD_BENCH_ONLY").ok();
    let section = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("cluster");
    credentials::init(&creds).expect("cluster init");

    // Round trip and pipelining against one node.
    let node = start_node(&creds, 2);
    let client = connect(&creds, &[&node]);
    for _ in 0..200 {
        client.ping().expect("warm-up ping");
    }
    if section("rtt") {
        round_trips(&client, quick);
    }
    if section("bulk") {
        bulk_baselines(&creds, quick);
    }
    if section("bulk") || section("quic") {
        bulk_quic(&client, quick);
    }
    for line in client.transport_summary() {
        println!("quic path {line}");
    }
    drop(client);
    drop(node);
    if section("job") {
        three_node_job(&creds, quick);
    }
}

fn round_trips(client: &ClusterClient, quick: bool) {
    let samples = if quick { 500 } else { 5000 };
    // `ping` times the round trip inside the client's event loop, as a job's packets
    // see it; the outer time adds handing the loop to and from the calling thread.
    let (mut rtts, mut calls): (Vec<Duration>, Vec<Duration>) = (0..samples)
        .map(|_| {
            let started = Instant::now();
            let rtt = client.ping().expect("ping");
            (rtt, started.elapsed())
        })
        .unzip();
    rtts.sort();
    calls.sort();
    println!(
        "empty packet round trip: p50 {:.1} µs, p99 {:.1} µs ({samples} samples)",
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99)
    );
    println!(
        "one synchronous ping() call: p50 {:.1} µs, p99 {:.1} µs",
        percentile(&calls, 0.5),
        percentile(&calls, 0.99)
    );
    let count = if quick { 5_000 } else { 50_000 };
    for window in [1usize, 16, 64, 256] {
        let elapsed = client
            .ping_pipelined(count, window)
            .expect("pipelined pings");
        println!(
            "pipelined empty packets, {window:>3} in flight: {:.0} packets/s",
            count as f64 / elapsed.as_secs_f64()
        );
    }
}

/// Size of one bulk upload and how many are timed.
fn bulk_size(quick: bool) -> (usize, usize) {
    (64 << 20, if quick { 2 } else { 8 })
}

fn gigabytes_per_second(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64() / 1e9
}

/// The baselines QUIC is held against: plain TCP and TLS 1.3 over TCP copies.
fn bulk_baselines(creds: &Path, quick: bool) {
    let (size, rounds) = bulk_size(quick);
    let total = (size * rounds) as u64;
    let gbs = |d: Duration| gigabytes_per_second(size * rounds, d);
    let tcp = cluster::baseline::tcp_copy(total).expect("tcp copy");
    let credentials = Credentials::load(creds).expect("credentials");
    let tls = cluster::baseline::tls_copy(&credentials, total).expect("tls copy");
    println!(
        "bulk {} MiB: plain TCP copy {:.2} GB/s",
        total >> 20,
        gbs(tcp)
    );
    println!(
        "bulk {} MiB: TLS 1.3 over TCP (rustls, ring) {:.2} GB/s",
        total >> 20,
        gbs(tls)
    );
}

/// Whole-buffer uploads to one node over QUIC, on one stream and on four.
fn bulk_quic(client: &ClusterClient, quick: bool) {
    let (size, rounds) = bulk_size(quick);
    let total = size * rounds;
    let bytes = Arc::new(vec![0x5au8; size]);
    let gbs = |d: Duration| gigabytes_per_second(total, d);
    for streams in [1usize, 4] {
        // The first uploads land in memory fresh from the kernel, which clears every
        // page; a node that has served uploads reuses spare buffers instead. Shown
        // apart, so the timed figure is the steady state.
        let warm_up = client
            .upload_bulk(Arc::clone(&bytes), streams, streams)
            .expect("warm-up upload");
        let quic = client
            .upload_bulk(Arc::clone(&bytes), rounds, streams)
            .expect("quic upload");
        println!(
            "bulk {} MiB: QUIC whole-buffer uploads ({} MiB each, {streams} streams) {:.2} GB/s \
             (untimed warm-up into fresh memory: {:.2} GB/s)",
            total >> 20,
            size >> 20,
            gbs(quic),
            gigabytes_per_second(size * streams, warm_up)
        );
    }
}

/// A mandelbrot job: 3 nodes of 1 worker each vs this machine's cores.
fn three_node_job(creds: &Path, quick: bool) {
    let manifest = Manifest::parse(
        &std::fs::read_to_string("examples/mandelbrot/manifest.toml").expect("manifest"),
    )
    .expect("manifest parses");
    let package =
        package_source(Path::new("examples/mandelbrot/kernel.rs"), &manifest).expect("package");
    let (width, height, max_iter) = if quick {
        (512u32, 384u32, 500u32)
    } else {
        (1600, 1200, 1000)
    };
    let items = u64::from(width) * u64::from(height);
    let scalars = [
        ScalarValue::U32(width),
        ScalarValue::U32(max_iter),
        ScalarValue::F64(-2.0),
        ScalarValue::F64(-1.25),
        ScalarValue::F64(2.5 / f64::from(width)),
    ];
    let engine = Engine::new(Config::default()).expect("engine");
    let mut local_args: Vec<ArgValue> = scalars.iter().map(|s| ArgValue::Scalar(*s)).collect();
    local_args.push(ArgValue::Buffer(Buffer::zeroed(items as usize * 4)));
    let mut local_job = Job::kernel(
        std::sync::Arc::new(package.clone()),
        "mandelbrot",
        items,
        local_args,
    )
    .expect("local job");
    let local_node = Cluster::from_engine(engine);
    // Once to compile, once to measure.
    local_node
        .run(&mut local_job, &Options::default())
        .expect("local run");
    let started = Instant::now();
    let local = local_node
        .run(&mut local_job, &Options::default())
        .expect("local run");
    let local_time = started.elapsed();

    let nodes: Vec<Node> = (0..3).map(|_| start_node(creds, 1)).collect();
    let mut client = connect(creds, &nodes.iter().collect::<Vec<_>>());
    let mut out = vec![0u8; items as usize * 4];
    let mut run = |out: &mut Vec<u8>| {
        let mut args: Vec<JobArg<'_>> = scalars.iter().map(|s| JobArg::Scalar(*s)).collect();
        args.push(JobArg::Output(out));
        let started = Instant::now();
        let report = client
            .run_job(&package, "mandelbrot", items, &mut args)
            .expect("cluster run");
        (started.elapsed(), report)
    };
    run(&mut out); // uploads the package and compiles on the nodes
    let (cluster_time, report) = run(&mut out);
    let local_out = local_job.buffer("iters").expect("the output buffer");
    assert_eq!(
        local_out,
        &out[..],
        "cluster output differs from the local run"
    );
    println!(
        "mandelbrot {width}x{height}, {max_iter} iterations: local {} threads {:.1} ms; 3 nodes x 1 worker {:.1} ms ({} packets, {:?})",
        local.threads,
        local_time.as_secs_f64() * 1e3,
        cluster_time.as_secs_f64() * 1e3,
        report.packets,
        report.packets_per_node.iter().map(|(_, p)| *p).collect::<Vec<_>>()
    );
}
