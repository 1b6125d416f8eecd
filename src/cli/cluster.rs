//! `offload cluster`, `offload node`, `offload nodes`, `offload run --cluster` and the
//! hidden `offload __worker` that nodes run kernels in.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use cluster::client::{ClientConfig, ClientError, ClusterClient, JobArg};
use cluster::credentials::{self, Credentials};
use cluster::node::NodeConfig;
use cluster::protocol::TunedRate;
use offload::tune::Profile;
use offload::{check_args, ArgValue, KernelSpec, Package, PackageHash};

use super::{describe_duration, plural, Cli};

/// `offload cluster ...`: cluster credentials.
#[derive(Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Create a cluster: a CA and an "admin" identity in DIR (files 0600).
    Init {
        /// The cluster directory to create.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate for a node or client NAME into DIR/nodes/NAME/.
    AddNode {
        /// The cluster directory (made by `offload cluster init`).
        #[arg(long)]
        dir: PathBuf,
        /// The member's name (its certificate's common name, and a node's name).
        #[arg(long)]
        name: String,
        /// Issue a new key and certificate for a name issued before (the old certificate
        /// stays valid until it is revoked).
        #[arg(long)]
        reissue: bool,
    },
    /// List the identities issued from DIR: name, serial, expiry, revoked or not.
    List {
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Revoke every certificate issued to NAME: writes DIR/crl.pem (copied into each
    /// DIR/nodes/*/), which nodes and clients load and enforce.
    Revoke {
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
        /// The identity to revoke.
        name: String,
    },
}

/// `offload node`: serve this machine's cores to the cluster.
#[derive(Args)]
pub struct NodeArgs {
    /// UDP address to listen on.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], cluster::protocol::DEFAULT_PORT)))]
    listen: SocketAddr,
    /// Credentials directory (cluster dir or DIR/nodes/NAME).
    #[arg(long, value_name = "DIR", required_unless_present = "insecure")]
    credentials: Option<PathBuf>,
    /// Worker processes, i.e. packets run at once, 1 to 4096 [default: all cores].
    #[arg(long, value_parser = super::parse_count)]
    cores: Option<usize>,
    /// Take no new packets while the machine's owner keeps it busy.
    #[arg(long)]
    idle_only: bool,
    /// With --idle-only: the 1-minute load (less this node's own busy workers) above
    /// which new packets wait [default: half the cores, at least 1].
    #[arg(long, value_name = "LOAD", value_parser = super::parse_load)]
    idle_threshold: Option<f64>,
    /// Cap on bytes sent per second, e.g. 50M, 1.5G, 800K (bytes), or 100Mbit.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    max_bandwidth: Option<u64>,
    /// Seconds a packet may run before its worker is killed.
    #[arg(long, default_value_t = 300.0, value_parser = super::parse_seconds)]
    packet_timeout: f64,
    /// The node's name in logs and discovery [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Run workers at normal priority instead of nice 19 (benchmarks on a dedicated
    /// machine).
    #[arg(long)]
    normal_priority: bool,
    /// Do not advertise by mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Run without cluster credentials: throwaway ones are made and their directory
    /// printed (clients pass it as --credentials). Only with a loopback --listen.
    #[arg(long)]
    insecure: bool,
    /// Also serve this machine's OpenCL devices (one worker process each). Kernels a
    /// device cannot lower or build run on the CPU workers. Off by default: PoCL's CPU
    /// device shares the cores the CPU workers already use.
    #[arg(long)]
    opencl: bool,
    /// Memory for packages kept for later jobs, e.g. 256M; the least recently used go
    /// first.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    package_cache: u64,
    /// Memory for whole input buffers kept for later jobs (and per worker), e.g. 4G; the
    /// least recently used go first.
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = parse_size)]
    buffer_cache: u64,
    /// A worker process using more memory than this is started afresh before it loads
    /// another kernel, e.g. 2G.
    #[arg(long, value_name = "SIZE", default_value = "2G", value_parser = parse_size)]
    worker_memory: u64,
    /// Test builds only: misbehave on purpose (see the cluster crate's `fault` module).
    #[arg(long, value_name = "FAULT", hide = true)]
    fault: Vec<String>,
}

/// `offload nodes`: list the nodes discovery finds.
#[derive(Args)]
pub struct NodesArgs {
    /// Also connect to each node with these credentials and report whether it accepts.
    #[arg(long, value_name = "DIR")]
    credentials: Option<PathBuf>,
    /// Seconds to listen for answers.
    #[arg(long, default_value_t = 2.0, value_parser = super::parse_seconds)]
    wait: f64,
    /// Browse on the loopback interface only.
    #[arg(long)]
    loopback: bool,
}

/// The hidden `offload __worker`.
#[derive(Args)]
pub struct WorkerArgs {
    /// Lower the worker's priority to nice 19.
    #[arg(long)]
    nice: bool,
    /// Run packets on this OpenCL device (index in `offload devices`' OpenCL order)
    /// instead of the CPU JIT.
    #[arg(long, value_name = "N")]
    opencl_device: Option<usize>,
}

/// The flags `offload run` takes for cluster runs.
#[derive(Args)]
pub struct ClusterRunArgs {
    /// Run on the cluster's nodes (found by discovery and given with --peer).
    #[arg(long)]
    pub cluster: bool,
    /// A node to use, HOST:PORT (repeatable); for networks without multicast.
    #[arg(long = "peer", value_name = "HOST:PORT", requires = "cluster")]
    peers: Vec<String>,
    /// Credentials directory for --cluster.
    #[arg(long, value_name = "DIR", requires = "cluster")]
    credentials: Option<PathBuf>,
    /// Use only the --peer nodes: no mDNS discovery.
    #[arg(long, requires = "cluster")]
    no_discovery: bool,
    /// Seconds of silence after which a node counts as gone.
    #[arg(long, default_value_t = 3.0, requires = "cluster", value_parser = super::parse_node_timeout)]
    node_timeout: f64,
    /// If every node is lost before the job is done, fail instead of finishing the
    /// remaining items on this machine.
    #[arg(long, requires = "cluster")]
    no_local_fallback: bool,
    /// Run every packet on K different nodes and keep the result the majority agrees on;
    /// a node whose result disagrees is reported and excluded (for machines nobody
    /// vouches for). Needs at least K nodes.
    #[arg(long, value_name = "K", default_value_t = 1, requires = "cluster",
          value_parser = clap::value_parser!(u32).range(1..=16))]
    redundancy: u32,
}

/// Parses a size in bytes: a whole number with an optional K, M, G or T suffix (powers of
/// 1024, as memory is counted), e.g. `256M`, `4G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("`{text}`: unknown unit (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    number
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("`{text}` is not a size (e.g. 256M, 4G)"))
}

/// Parses a rate: a number with an optional K/M/G suffix (bytes, powers of 1000), or
/// with `bit`/`Kbit`/`Mbit`/`Gbit` for bits per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let (number, factor) = [
        ("gbit", 1e9 / 8.0),
        ("mbit", 1e6 / 8.0),
        ("kbit", 1e3 / 8.0),
        ("bit", 1.0 / 8.0),
        ("gb", 1e9),
        ("mb", 1e6),
        ("kb", 1e3),
        ("g", 1e9),
        ("m", 1e6),
        ("k", 1e3),
        ("b", 1.0),
    ]
    .iter()
    .find_map(|(suffix, f)| {
        lower
            .strip_suffix(suffix)
            .map(|n| (n.trim().to_string(), *f))
    })
    .unwrap_or((lower.clone(), 1.0));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a rate (e.g. 50M, 1.5G, 100Mbit)"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("`{text}` is not a positive rate"));
    }
    Ok((value * factor).max(1.0) as u64)
}

pub fn cluster(args: &ClusterArgs) -> anyhow::Result<()> {
    match &args.command {
        ClusterCommand::Init { dir } => {
            credentials::init(dir)?;
            println!("created cluster credentials in {}", dir.display());
            println!("  CA: ca.pem (public), ca.key (keep it private)");
            println!(
                "  this machine's identity: cert.pem, key.pem (use --credentials {})",
                dir.display()
            );
            println!(
                "add a machine with: offload cluster add-node --dir {} --name NAME",
                dir.display()
            );
        }
        ClusterCommand::AddNode { dir, name, reissue } => {
            let out = credentials::issue(dir, name, *reissue)?;
            println!("issued {name}: {}", out.display());
            println!("copy that directory to {name} and run: offload node --credentials DIR");
        }
        ClusterCommand::List { dir } => {
            let issued = credentials::issued(dir)?;
            println!("{:<20} {:<42} {:<22} status", "name", "serial", "expires");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            for identity in &issued {
                let status = if identity.revoked {
                    "revoked".to_string()
                } else if identity.not_after < now {
                    "expired".to_string()
                } else if identity.superseded {
                    "superseded (re-issued; valid until revoked)".to_string()
                } else {
                    match &identity.location {
                        Some(path) => format!("valid ({})", path.display()),
                        None => "valid".to_string(),
                    }
                };
                println!(
                    "{:<20} {:<42} {:<22} {status}",
                    identity.name,
                    identity.serial,
                    cluster::certs::date(identity.not_after)
                );
            }
        }
        ClusterCommand::Revoke { dir, name } => {
            let revocation = credentials::revoke(dir, name)?;
            if revocation.serials.is_empty() {
                println!(
                    "every certificate of {name} was revoked already; wrote revocation list number {} to {}",
                    revocation.number,
                    revocation.path.display()
                );
            } else {
                println!(
                    "revoked {name} (serial {}): revocation list number {} in {}",
                    revocation.serials.join(", "),
                    revocation.number,
                    revocation.path.display()
                );
            }
            for copy in &revocation.copies {
                println!("  copied into {}", copy.display());
            }
            println!(
                "copy crl.pem beside the credentials of every node and client (nodes pick it up within a second, no restart)"
            );
        }
    }
    Ok(())
}

fn worker_command(cli: &Cli, nice: bool) -> anyhow::Result<(PathBuf, Vec<OsString>)> {
    let program =
        std::env::current_exe().context("cannot find the offload executable for workers")?;
    let mut args: Vec<OsString> = Vec::new();
    if let Some(dir) = &cli.cache_dir {
        args.push("--cache-dir".into());
        args.push(dir.into());
    }
    args.push("--opt-level".into());
    let level = match cli.opt_level {
        offload::OptLevel::O0 => "0",
        offload::OptLevel::O1 => "1",
        offload::OptLevel::O2 => "2",
        offload::OptLevel::O3 => "3",
    };
    args.push(level.into());
    args.push("__worker".into());
    if nice {
        args.push("--nice".into());
    }
    Ok((program, args))
}

pub fn node(cli: &Cli, args: &NodeArgs) -> anyhow::Result<()> {
    let credentials = match (&args.credentials, args.insecure) {
        (Some(dir), _) => Credentials::load(dir)?,
        (None, true) => {
            if !args.listen.ip().is_loopback() {
                bail!(
                    "--insecure binds loopback only: {} is not a loopback address (use --listen 127.0.0.1:{})",
                    args.listen,
                    args.listen.port()
                );
            }
            throwaway_credentials()?
        }
        (None, false) => bail!("a node needs --credentials DIR (or --insecure on loopback)"),
    };
    let (program, worker_args) = worker_command(cli, !args.normal_priority)?;
    let cores = args
        .cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let idle = args.idle_only.then(|| {
        args.idle_threshold.unwrap_or_else(|| {
            (std::thread::available_parallelism().map_or(1, |n| n.get()) as f64 / 2.0).max(1.0)
        })
    });
    let mut config = NodeConfig::new(args.listen, credentials, program, worker_args)
        .cores(cores)
        .idle_only(idle)
        .max_bandwidth(args.max_bandwidth)
        .packet_timeout(Duration::from_secs_f64(args.packet_timeout))
        .advertise(!args.no_mdns)
        .opencl(args.opencl)
        .package_cache_bytes(usize::try_from(args.package_cache).unwrap_or(usize::MAX))
        .buffer_cache_bytes(usize::try_from(args.buffer_cache).unwrap_or(usize::MAX))
        .worker_memory_bytes(args.worker_memory)
        .faults(cluster::fault::Faults::parse(&args.fault).map_err(anyhow::Error::msg)?);
    if let Some(name) = &args.name {
        config = config.name(name);
    }
    // A node without readable profiles still serves: clients calibrate it themselves.
    match tuned_rates(cli) {
        Ok(rates) => {
            for rate in &rates {
                tracing::info!(
                    "advertising tuned rate of {} on {}: {:.0} items/s per worker",
                    rate.kernel,
                    rate.device,
                    rate.items_per_s
                );
            }
            config = config.rates(rates);
        }
        Err(e) => eprintln!("warning: not advertising tuned rates: {e:#}"),
    }
    cluster::node::run(config)?;
    Ok(())
}

/// This machine's tuned rates from the `offload tune` profiles in the cache that belong
/// to this CPU and LLVM (the profile key covers both and the package), per worker: a
/// profile's rate was measured with `threads` threads, a node worker is one thread.
fn tuned_rates(cli: &Cli) -> anyhow::Result<Vec<TunedRate>> {
    let engine = cli.engine()?;
    let mut rates = Vec::new();
    let Some(cache_root) = engine.config().cache_root() else {
        return Ok(rates);
    };
    for (path, profile) in Profile::list(cache_root)? {
        let Some(hash) = parse_hash(&profile.package_hash) else {
            eprintln!(
                "warning: {}: the package hash is not 64 hex digits; ignored",
                path.display()
            );
            continue;
        };
        if profile.key != Profile::key_for(engine.host(), &PackageHash(hash)) {
            continue; // another CPU, LLVM version or hand-edited: not this node's speed
        }
        for kernel in &profile.kernels {
            let per_worker = kernel.items_per_s / kernel.settings.threads.max(1) as f64;
            if per_worker.is_finite() && per_worker > 0.0 {
                rates.push(TunedRate {
                    package: hash,
                    kernel: kernel.kernel.clone(),
                    device: "cpu".into(),
                    items_per_s: per_worker,
                });
            }
        }
    }
    Ok(rates)
}

/// 64 hex digits to 32 bytes.
fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let digits = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(hash)
}

/// Throwaway cluster credentials for `--insecure` nodes, in a fresh private directory
/// that is left in place so that clients can use it.
fn throwaway_credentials() -> anyhow::Result<Credentials> {
    let dir = tempfile::Builder::new()
        .prefix("offload-insecure-")
        .tempdir()
        .context("cannot make a directory for throwaway credentials")?
        .keep();
    let cluster_dir = dir.join("cluster");
    credentials::init(&cluster_dir)?;
    eprintln!(
        "warning: insecure node: throwaway credentials in {} (clients pass --credentials {})",
        cluster_dir.display(),
        cluster_dir.display()
    );
    Ok(Credentials::load(&cluster_dir)?)
}

pub fn nodes(args: &NodesArgs) -> anyhow::Result<()> {
    let window = Duration::from_secs_f64(args.wait);
    let found = cluster::discovery::browse(window, args.loopback)?;
    if found.is_empty() {
        println!("no nodes found within {:.1} s", window.as_secs_f64());
        return Ok(());
    }
    let accepted: Vec<SocketAddr> = match &args.credentials {
        Some(dir) => {
            let config = ClientConfig::new(Credentials::load(dir)?)
                .peers(found.iter().map(|f| f.addr))
                .on_event(|line| eprintln!("{line}"));
            match ClusterClient::connect(config) {
                Ok(client) => client.nodes().into_iter().map(|(addr, _)| addr).collect(),
                Err(e) => {
                    eprintln!("{e}");
                    Vec::new()
                }
            }
        }
        None => Vec::new(),
    };
    for node in &found {
        let p = |key: &str| node.properties.get(key).map_or("?", String::as_str);
        let opencl = node
            .properties
            .get("opencl")
            .map(|d| format!("  opencl: {d}"))
            .unwrap_or_default();
        let membership = match &args.credentials {
            None => "",
            Some(_) if accepted.contains(&node.addr) => "  [accepts our credentials]",
            Some(_) => "  [refused us or unreachable]",
        };
        println!(
            "{}  {}  {} {}  devices: {}{}  features: {}{}{}",
            p("name"),
            node.addr,
            p("arch"),
            p("cpu"),
            p("devices"),
            opencl,
            p("features"),
            node.properties
                .get("rates")
                .map(|r| format!("  tuned (items/s per worker): {r}"))
                .unwrap_or_default(),
            membership
        );
    }
    Ok(())
}

pub fn worker(cli: &Cli, args: &WorkerArgs) -> anyhow::Result<()> {
    let mut config = offload::Config::default().opt_level(cli.opt_level);
    if let Some(dir) = &cli.cache_dir {
        config = config.cache_dir(dir);
    }
    match args.opencl_device {
        Some(index) => cluster::worker::serve_opencl(index, args.nice)?,
        None => cluster::worker::serve(config, args.nice)?,
    }
    Ok(())
}

fn resolve_peer(text: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let with_port = if text.contains(':') {
        text.to_string()
    } else {
        format!("{text}:{}", cluster::protocol::DEFAULT_PORT)
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve --peer {text}"))?
        .next()
        .with_context(|| format!("--peer {text} resolves to no address"))
}

/// Runs a bound job on the cluster; on success the buffers in `values` hold the results.
pub fn run_on_cluster(
    cli: &Cli,
    args: &ClusterRunArgs,
    device: Option<offload::DeviceChoice>,
    package: &Package,
    spec: &KernelSpec,
    items: u64,
    values: &mut [ArgValue],
) -> anyhow::Result<()> {
    check_args(spec, items, values)?;
    let dir = args.credentials.as_deref().context(
        "--cluster needs --credentials DIR (made by `offload cluster init` or `add-node`)",
    )?;
    let credentials = Credentials::load(dir)
        .with_context(|| format!("cannot load cluster credentials from {}", dir.display()))?;
    let peers = args
        .peers
        .iter()
        .map(|p| resolve_peer(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = ClientConfig::new(credentials)
        .peers(peers)
        .discover((!args.no_discovery).then(|| Duration::from_millis(1500)))
        .idle_timeout(Duration::from_secs_f64(args.node_timeout))
        .redundancy(args.redundancy)
        .devices(device.unwrap_or(offload::DeviceChoice::Auto))
        .on_event(|line| eprintln!("cluster: {line}"));
    let mut client = ClusterClient::connect(config)?;
    if args.redundancy as usize > client.nodes().len() {
        bail!(
            "--redundancy {} runs every packet on {} different nodes, but only {} node(s) answered; add nodes or lower --redundancy",
            args.redundancy,
            args.redundancy,
            client.nodes().len()
        );
    }
    if cli.verbose > 0 {
        for (addr, info) in client.nodes() {
            eprintln!(
                "node {} at {addr}: {} cores, {} {} [{}]",
                info.name, info.cores, info.arch, info.cpu, info.features
            );
            for (index, device) in info.opencl.iter().enumerate() {
                eprintln!(
                    "node {} at {addr}: opencl{index} {} ({}, {} compute units)",
                    info.name, device.name, device.kind, device.compute_units
                );
            }
        }
    }
    let mut job_args: Vec<JobArg<'_>> = values
        .iter_mut()
        .map(|v| match v {
            ArgValue::Scalar(s) => JobArg::Scalar(*s),
            ArgValue::Buffer(b) => JobArg::Buffer(b.as_bytes_mut()),
        })
        .collect();
    let report = match client.run_job(package, &spec.name, items, &mut job_args) {
        Ok(report) => report,
        Err(ClientError::Unfinished(unfinished)) if !args.no_local_fallback => {
            drop(job_args);
            return finish_here(cli, package, spec, items, values, &unfinished);
        }
        Err(e) => return Err(e.into()),
    };
    if !report.lost.is_empty() {
        eprintln!(
            "cluster: {} node(s) lost during the job; their packets were re-run and the output is complete",
            report.lost.len()
        );
    }
    for (node, packets) in &report.rejoined {
        eprintln!(
            "cluster: node {node} rejoined the job and ran {packets} packets after rejoining"
        );
    }
    for line in &report.disagreements {
        eprintln!("cluster: {line}");
    }
    if !report.disagreements.is_empty() {
        eprintln!(
            "cluster: {} result(s) disagreed with the majority; the output holds the majority's results",
            report.disagreements.len()
        );
    }
    if cli.verbose > 0 {
        for (node, packets) in &report.packets_per_node {
            eprintln!("node {node}: {packets} packets");
        }
        for (device, packets) in &report.packets_per_device {
            eprintln!("device {device}: {}", plural(*packets, "packet"));
        }
        for (node, rate) in &report.tuned_rates {
            eprintln!("node {node}: tuned rate {rate:.0} items/s per worker (advertised)");
        }
        eprintln!("prepare: {}", describe_duration(report.prepare_time));
    }
    let copies = if args.redundancy > 1 {
        format!(" ({} copies each, majority vote)", args.redundancy)
    } else {
        String::new()
    };
    println!(
        "ran {} over {} in {}{copies} on {}: {}",
        spec.name,
        plural(report.items, "item"),
        plural(report.packets, "packet"),
        plural(report.packets_per_node.len() as u64, "node"),
        describe_duration(report.run_time)
    );
    Ok(())
}

/// Finishes a cluster job whose nodes were all lost on this machine: the committed
/// packets' results are in `values`, the rest of the items run here.
fn finish_here(
    cli: &Cli,
    package: &Package,
    spec: &KernelSpec,
    items: u64,
    values: &mut [ArgValue],
    unfinished: &cluster::client::Unfinished,
) -> anyhow::Result<()> {
    let left: u64 = unfinished.remaining.iter().map(|r| r.end - r.start).sum();
    // Why each node went was said as it happened.
    eprintln!(
        "cluster: every node was lost before the job finished ({} committed); finishing the remaining {} on this machine (--no-local-fallback turns this off)",
        plural(unfinished.committed_packets, "packet"),
        plural(left, "item")
    );
    let engine = cli.engine()?;
    let report = offload::run_ranges_local(
        &engine,
        package,
        &spec.name,
        items,
        &unfinished.remaining,
        values,
        &offload::LocalOptions::default(),
    )?;
    println!(
        "ran {} over {}: {} on the cluster, then {} in {} on this machine ({}): {}",
        spec.name,
        plural(items, "item"),
        plural(unfinished.committed_packets, "packet"),
        plural(left, "item"),
        plural(report.packets, "packet"),
        plural(report.threads as u64, "thread"),
        describe_duration(report.run_time)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_hash, parse_rate, parse_size};

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn hashes_parse_from_hex() {
        let hex = "00ff".repeat(16);
        let hash = parse_hash(&hex).expect("64 hex digits");
        assert_eq!(hash[0], 0x00);
        assert_eq!(hash[1], 0xff);
        assert!(parse_hash("00ff").is_none());
        assert!(parse_hash(&"zz".repeat(32)).is_none());
        assert!(parse_hash(&"é".repeat(32)).is_none());
    }

    #[test]
    fn rates_parse_with_units() {
        assert_eq!(parse_rate("50M"), Ok(50_000_000));
        assert_eq!(parse_rate("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_rate("100Mbit"), Ok(12_500_000));
        assert_eq!(parse_rate("800"), Ok(800));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-1M").is_err());
    }
}
