//! `offload cluster`, `offload node`, `offload nodes`, `offload status`, `offload run
//! --cluster` and the hidden `offload __worker` that nodes run kernels in.
//!
//! Clients (`run --cluster`, `status`, `nodes --credentials`) take their credentials
//! from `--credentials DIR`, else `$OFFLOAD_CREDENTIALS`; their nodes from `--peer`
//! (else `$OFFLOAD_PEERS`, comma-separated) and from discovery: `--discover SOURCE`
//! (else `$OFFLOAD_DISCOVER`, else `mdns`; `--no-discovery` for none).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use cluster::client::{ClientConfig, ClusterClient, JobProgress};
use cluster::credentials::{self, Credentials};
use cluster::discovery::Source;
use cluster::protocol::{NodeState, NodeStatus, TunedRate};
use cluster_node::node::NodeConfig;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use offload::tune::Profile;
use offload::{ClusterReport, PackageHash};

use super::node_config::NodeArgs;
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

/// `offload nodes`: list the nodes discovery finds.
#[derive(Args)]
pub struct NodesArgs {
    /// Also connect to each node with these credentials and report whether it accepts;
    /// nodes of other clusters are marked [default: $OFFLOAD_CREDENTIALS].
    #[arg(long, value_name = "DIR")]
    credentials: Option<PathBuf>,
    /// Seconds to listen for answers.
    #[arg(long, default_value_t = 2.0, value_parser = super::parse_seconds)]
    wait: f64,
    /// Browse on the loopback interface only.
    #[arg(long)]
    loopback: bool,
}

/// `offload status`: what the cluster's nodes are doing.
#[derive(Args)]
pub struct StatusArgs {
    /// Credentials directory [default: $OFFLOAD_CREDENTIALS].
    #[arg(long, value_name = "DIR")]
    credentials: Option<PathBuf>,
    /// A node to ask, HOST[:PORT] (repeatable) [default: $OFFLOAD_PEERS].
    #[arg(long = "peer", value_name = "HOST:PORT")]
    peers: Vec<String>,
    /// Where to find nodes: mdns, dns:NAME[:PORT][@SERVER], file:PATH (repeatable)
    /// [default: $OFFLOAD_DISCOVER, else mdns].
    #[arg(long, value_name = "SOURCE")]
    discover: Vec<Source>,
    /// Ask only the --peer nodes.
    #[arg(long)]
    no_discovery: bool,
    /// Print JSON (one document per refresh with --watch) instead of a table.
    #[arg(long)]
    json: bool,
    /// Refresh every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
          value_parser = super::parse_seconds)]
    watch: Option<f64>,
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
    /// The node's process id: the worker sandboxes itself once its kernel code is
    /// loaded and dies with that process.
    #[arg(long, value_name = "PID", required_unless_present = "unsandboxed")]
    node_pid: Option<u32>,
    /// Run kernels without the sandbox (the node was started with --unsandboxed).
    #[arg(long)]
    unsandboxed: bool,
    /// Test builds only: misbehave on purpose (see the cluster crate's `fault` module).
    #[arg(long, value_name = "FAULT", hide = true)]
    fault: Vec<String>,
}

/// The flags `offload run` takes for cluster runs.
#[derive(Args)]
pub struct ClusterRunArgs {
    /// Run on the cluster's nodes (found by discovery and given with --peer).
    #[arg(long)]
    pub cluster: bool,
    /// A node to use, HOST[:PORT] (repeatable) [default: $OFFLOAD_PEERS].
    #[arg(long = "peer", value_name = "HOST:PORT", requires = "cluster")]
    peers: Vec<String>,
    /// Credentials directory for --cluster [default: $OFFLOAD_CREDENTIALS].
    #[arg(long, value_name = "DIR", requires = "cluster")]
    credentials: Option<PathBuf>,
    /// Where to find nodes: mdns, dns:NAME[:PORT][@SERVER[:PORT]] (SRV or A/AAAA
    /// records, e.g. a Kubernetes headless Service), file:PATH (repeatable)
    /// [default: $OFFLOAD_DISCOVER, else mdns].
    #[arg(long, value_name = "SOURCE", requires = "cluster")]
    discover: Vec<Source>,
    /// Use only the --peer nodes: no discovery.
    #[arg(long, requires = "cluster")]
    no_discovery: bool,
    /// Seconds of silence after which a node counts as gone.
    #[arg(long, default_value_t = 3.0, requires = "cluster", value_parser = super::parse_node_timeout)]
    node_timeout: f64,
    /// If every node is lost before the job is done, fail instead of finishing the
    /// remaining items on this machine.
    #[arg(long, requires = "cluster")]
    pub no_local_fallback: bool,
    /// Run every packet on K different nodes and keep the result the majority agrees on;
    /// a node whose result disagrees is reported and excluded (for machines nobody
    /// vouches for). Needs at least K nodes.
    #[arg(long, value_name = "K", default_value_t = 1, requires = "cluster",
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub redundancy: u32,
}

/// How long clients browse mDNS.
const MDNS_WINDOW: Duration = Duration::from_millis(1500);

/// A client's credentials directory: the flag, else `$OFFLOAD_CREDENTIALS`.
fn client_credentials(flag: Option<&Path>) -> anyhow::Result<Credentials> {
    let dir = match flag {
        Some(dir) => dir.to_path_buf(),
        None => match std::env::var_os("OFFLOAD_CREDENTIALS") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => bail!(
                "cluster credentials are needed: --credentials DIR or OFFLOAD_CREDENTIALS=DIR (made by `offload cluster init` or `add-node`)"
            ),
        },
    };
    Credentials::load(&dir)
        .with_context(|| format!("cannot load cluster credentials from {}", dir.display()))
}

/// The nodes a client uses: `peers` (else `$OFFLOAD_PEERS`) and what the discovery
/// sources find (`discover`, else `$OFFLOAD_DISCOVER`, else mDNS; none with
/// `no_discovery`). Lines about other clusters' nodes are printed with `-v`.
fn client_nodes(
    cli: &Cli,
    credentials: &Credentials,
    peers: &[String],
    discover: &[Source],
    no_discovery: bool,
) -> anyhow::Result<Vec<SocketAddr>> {
    let env_list = |name: &str| -> Vec<String> {
        std::env::var(name)
            .map(|v| {
                v.split([',', ' '])
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let peers = if peers.is_empty() {
        env_list("OFFLOAD_PEERS")
    } else {
        peers.to_vec()
    };
    let mut addrs = Vec::new();
    for peer in &peers {
        addrs.push(
            cluster::discovery::resolve_peer(peer).with_context(|| format!("--peer {peer}"))?,
        );
    }
    let sources: Vec<Source> = if no_discovery {
        Vec::new()
    } else if !discover.is_empty() {
        discover.to_vec()
    } else {
        let from_env = env_list("OFFLOAD_DISCOVER");
        if from_env.is_empty() {
            vec![Source::Mdns]
        } else {
            from_env
                .iter()
                .map(|s| s.parse::<Source>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()
                .context("OFFLOAD_DISCOVER")?
        }
    };
    let found = cluster::discovery::find(&sources, &credentials.ca_fingerprint(), MDNS_WINDOW);
    if cli.verbose > 0 {
        for line in &found.skipped {
            eprintln!("discovery: {line}");
        }
    }
    for line in &found.failures {
        eprintln!("warning: discovery: {line}");
    }
    addrs.extend(found.addrs);
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
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

fn worker_command(
    cli: &Cli,
    cache_dir: Option<&Path>,
    nice: bool,
) -> anyhow::Result<(PathBuf, Vec<OsString>)> {
    let program = super::offload_program()?;
    let mut args: Vec<OsString> = Vec::new();
    if let Some(dir) = cache_dir {
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
    let file = super::node_config::read_file(args.config.as_deref())?;
    let settings = super::node_config::resolve(args, file)?;
    if args.check {
        match &settings.file {
            Some(file) => println!("configuration {} is valid:", file.display()),
            None => println!("no configuration file; the flags and defaults give:"),
        }
        println!("{}", settings.describe());
        return Ok(());
    }
    if let Some(file) = &settings.file {
        tracing::info!("configuration from {}", file.display());
    }
    let faults = cluster_node::fault::Faults::parse(&args.fault).map_err(anyhow::Error::msg)?;
    let mut credentials = match (&settings.credentials, args.insecure) {
        (Some(dir), _) => Credentials::load(dir).with_context(|| {
            format!(
                "cannot load the node's credentials from {} (made by `offload cluster add-node`)",
                dir.display()
            )
        })?,
        (None, true) => {
            if !settings.listen.ip().is_loopback() {
                bail!(
                    "--insecure binds loopback only: {} is not a loopback address (use --listen 127.0.0.1:{})",
                    settings.listen,
                    settings.listen.port()
                );
            }
            throwaway_credentials()?
        }
        (None, false) => bail!(
            "a node needs --credentials DIR (or `credentials` in its configuration file, or --insecure on loopback)"
        ),
    };
    if let Some(list) = &settings.revocation_list {
        credentials = credentials.with_revocation_list(list)?;
    }
    // The global --cache-dir wins over the file's.
    let cache_dir = cli.cache_dir.clone().or(settings.cache_dir.clone());
    let (program, worker_args) =
        worker_command(cli, cache_dir.as_deref(), !settings.normal_priority)?;
    let cores = settings.cores.unwrap_or_else(node_jit::available_threads);
    let idle = settings.idle_only.then(|| {
        settings
            .idle_threshold
            .unwrap_or_else(|| (node_jit::available_threads() as f64 / 2.0).max(1.0))
    });
    let insecure_name = (settings.credentials.is_none() && settings.name.is_none()).then(host_name);
    let mut config = NodeConfig::new(settings.listen, credentials, program, worker_args)
        .cores(cores)
        .idle_only(idle)
        .max_bandwidth(settings.max_bandwidth)
        .packet_timeout(Duration::from_secs_f64(settings.packet_timeout))
        .advertise(settings.mdns)
        .opencl(settings.opencl)
        .package_cache_bytes(usize::try_from(settings.package_cache).unwrap_or(usize::MAX))
        .buffer_cache_bytes(usize::try_from(settings.buffer_cache).unwrap_or(usize::MAX))
        .worker_memory_bytes(settings.worker_memory)
        .metrics(settings.metrics)
        .unsandboxed(settings.unsandboxed)
        .faults(faults);
    if let Some(name) = settings.name.clone().or(insecure_name) {
        config = config.name(name);
    }
    // A node without readable profiles still serves: clients calibrate it themselves.
    match tuned_rates(cli, cache_dir.as_deref()) {
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
    cluster_node::node::run(config)?;
    Ok(())
}

/// This machine's host name (the name of an `--insecure` node, whose throwaway
/// certificate names nobody).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// This machine's tuned rates from the `offload tune` profiles in the cache that belong
/// to this CPU and LLVM (the profile key covers both and the package), per worker: a
/// profile's rate was measured with `threads` threads, a node worker is one thread.
fn tuned_rates(cli: &Cli, cache_dir: Option<&Path>) -> anyhow::Result<Vec<TunedRate>> {
    let mut engine_config = offload::Config::default().opt_level(cli.opt_level);
    if let Some(dir) = cache_dir {
        engine_config = engine_config.cache_dir(dir);
    }
    let engine = offload::Engine::new(engine_config)?;
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
    let credentials = match &args.credentials {
        Some(dir) => Some(client_credentials(Some(dir))?),
        None if std::env::var_os("OFFLOAD_CREDENTIALS").is_some() => {
            Some(client_credentials(None)?)
        }
        None => None,
    };
    // Only this cluster's nodes are asked; the others are marked from their record.
    let (ours, _) = match &credentials {
        Some(c) => cluster::discovery::split_by_cluster(found.clone(), &c.ca_fingerprint()),
        None => (Vec::new(), Vec::new()),
    };
    let accepted: Vec<SocketAddr> = match &credentials {
        Some(credentials) if !ours.is_empty() => {
            let config = ClientConfig::new(credentials.clone())
                .peers(ours.iter().map(|f| f.addr))
                .on_event(|line| eprintln!("{line}"));
            match ClusterClient::connect(config) {
                Ok(client) => client.nodes().into_iter().map(|(addr, _)| addr).collect(),
                Err(e) => {
                    eprintln!("{e}");
                    Vec::new()
                }
            }
        }
        _ => Vec::new(),
    };
    for node in &found {
        let p = |key: &str| node.properties.get(key).map_or("?", String::as_str);
        let opencl = node
            .properties
            .get("opencl")
            .map(|d| format!("  opencl: {d}"))
            .unwrap_or_default();
        let membership = match &credentials {
            None => "",
            Some(_) if accepted.contains(&node.addr) => "  [accepts our credentials]",
            Some(_) if !ours.iter().any(|o| o.addr == node.addr) => "  [another cluster]",
            Some(_) => "  [refused us or unreachable]",
        };
        // Advertised only by a node whose kernels run without the sandbox.
        let unsandboxed = if node.properties.get("sandbox").map(String::as_str) == Some("off") {
            "  UNSANDBOXED"
        } else {
            ""
        };
        println!(
            "{}  {}  {} {}  devices: {}{}{}  features: {}{}{}",
            p("name"),
            node.addr,
            p("arch"),
            p("cpu"),
            p("devices"),
            opencl,
            unsandboxed,
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

pub fn status(cli: &Cli, args: &StatusArgs) -> anyhow::Result<()> {
    let credentials = client_credentials(args.credentials.as_deref())?;
    let addrs = client_nodes(
        cli,
        &credentials,
        &args.peers,
        &args.discover,
        args.no_discovery,
    )?;
    if addrs.is_empty() {
        bail!("no nodes to ask: give --peer HOST:PORT or --discover SOURCE (mdns found none)");
    }
    let mut survey = cluster::status::Survey::new(&credentials, addrs, Duration::from_secs(3))?;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let reports = survey.refresh()?;
        if args.json {
            println!("{}", status_json(&reports));
        } else {
            if args.watch.is_some() && terminal {
                // Clear the screen and go home: a refreshing view, like `watch`.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", status_table(&reports));
        }
        let Some(every) = args.watch else {
            break;
        };
        if !terminal && !args.json {
            println!();
        }
        std::thread::sleep(Duration::from_secs_f64(every));
    }
    Ok(())
}

/// A node's state in words: `serving`, `paused-by-owner`, `draining`, with
/// `unsandboxed` while kernels run without a sandbox.
fn describe_state(status: &NodeStatus) -> String {
    let mut text = status.state.name().to_string();
    if !status.sandboxed {
        text.push_str(", unsandboxed");
    }
    text
}

/// `cpu:2` or `cpu:2, opencl:1`.
fn describe_devices(status: &NodeStatus) -> String {
    let mut text = format!("cpu:{}", status.info.cores);
    if !status.info.opencl.is_empty() {
        text.push_str(&format!(", opencl:{}", status.info.opencl.len()));
    }
    text
}

/// The status table: one line per node, then one per client with work on it.
fn status_table(reports: &[cluster::status::NodeReport]) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "ADDRESS".into(),
        "STATE".into(),
        "LOAD".into(),
        "BUSY".into(),
        "DEVICES".into(),
        "PACKETS".into(),
        "ITEMS".into(),
        "UPTIME".into(),
    ]];
    let mut notes = Vec::new();
    for report in reports {
        match &report.status {
            Ok(status) => {
                rows.push([
                    status.info.name.clone(),
                    report.addr.to_string(),
                    describe_state(status),
                    format!("{:.2}", status.load),
                    format!("{}/{}", status.busy_workers, status.info.cores),
                    describe_devices(status),
                    format!(
                        "{} done, {} failed, {} queued",
                        status.packets_done, status.packets_failed, status.queued
                    ),
                    status.items_done.to_string(),
                    describe_duration(Duration::from_secs(status.uptime_s)),
                ]);
                if let NodeState::PausedByOwner { reason } = &status.state {
                    notes.push(format!(
                        "  {}: paused by its owner: {reason}",
                        status.info.name
                    ));
                }
                for client in &status.clients {
                    let jobs = if client.jobs.is_empty() {
                        "no job".to_string()
                    } else {
                        format!("jobs: {}", client.jobs.join(", "))
                    };
                    notes.push(format!(
                        "  {}: client `{}` from {}: {jobs}; {} packet(s) in progress, {} done",
                        status.info.name,
                        client.identity,
                        client.addr,
                        client.packets,
                        client.packets_done
                    ));
                }
            }
            Err(reason) => {
                rows.push([
                    "?".into(),
                    report.addr.to_string(),
                    "unreachable".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
                notes.push(format!("  {}: {reason}", report.addr));
            }
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    for note in notes {
        text.push_str(&note);
        text.push('\n');
    }
    text
}

/// The reports as one JSON document: `{"nodes": [...]}`.
fn status_json(reports: &[cluster::status::NodeReport]) -> String {
    use serde_json::json;
    let nodes: Vec<serde_json::Value> = reports
        .iter()
        .map(|report| match &report.status {
            Ok(s) => json!({
                "address": report.addr.to_string(),
                "reachable": true,
                "name": s.info.name,
                "version": s.version,
                "arch": s.info.arch,
                "cpu": s.info.cpu,
                "cores": s.info.cores,
                "opencl": s.info.opencl.iter().map(|d| json!({
                    "name": d.name, "kind": d.kind, "compute_units": d.compute_units,
                })).collect::<Vec<_>>(),
                "state": s.state.name(),
                "state_reason": match &s.state {
                    NodeState::PausedByOwner { reason } => Some(reason.clone()),
                    _ => None,
                },
                "sandboxed": s.sandboxed,
                "load": s.load,
                "uptime_s": s.uptime_s,
                "busy_workers": s.busy_workers,
                "queued": s.queued,
                "packets_done": s.packets_done,
                "packets_failed": s.packets_failed,
                "items_done": s.items_done,
                "bytes_in": s.bytes_in,
                "bytes_out": s.bytes_out,
                "clients": s.clients.iter().map(|c| json!({
                    "identity": c.identity,
                    "address": c.addr,
                    "connected_s": c.connected_s,
                    "jobs": c.jobs,
                    "packets": c.packets,
                    "packets_done": c.packets_done,
                })).collect::<Vec<_>>(),
            }),
            Err(reason) => json!({
                "address": report.addr.to_string(),
                "reachable": false,
                "error": reason,
            }),
        })
        .collect();
    json!({ "nodes": nodes }).to_string()
}

pub fn worker(cli: &Cli, args: &WorkerArgs) -> anyhow::Result<()> {
    let mut config = offload::Config::default().opt_level(cli.opt_level);
    if let Some(dir) = &cli.cache_dir {
        config = config.cache_dir(dir);
    }
    let confinement = match (args.unsandboxed, args.node_pid) {
        (false, Some(node)) => cluster_node::worker::Confinement::Sandboxed { node },
        _ => cluster_node::worker::Confinement::Unsandboxed,
    };
    let options = cluster_node::worker::WorkerOptions {
        nice: args.nice,
        confinement,
        faults: cluster_node::fault::Faults::parse(&args.fault).map_err(anyhow::Error::msg)?,
    };
    match args.opencl_device {
        Some(index) => cluster_node::worker::serve_opencl(index, &options)?,
        None => {
            // The node advertises the rates of its `offload tune` profiles: its workers
            // compile those kernels with the settings that were measured.
            let lookup: cluster_node::worker::TuningLookup = Box::new(|engine, package, kernel| {
                super::tune::lookup(engine, package, kernel)
                    .map(|settings| (settings.tuning(), settings.opt()))
            });
            cluster_node::worker::serve(config, &options, lookup)?
        }
    }
    Ok(())
}

/// A cluster run's progress bar: on a terminal only, once the run has lasted a moment;
/// items done, the rate and time left, and each node's share of the items.
pub struct ClusterBar {
    bar: Mutex<Option<ProgressBar>>,
    started: Instant,
}

impl ClusterBar {
    /// A bar that appears once a job has run for a moment.
    pub fn new() -> ClusterBar {
        ClusterBar {
            bar: Mutex::new(None),
            started: Instant::now(),
        }
    }

    fn update(&self, progress: &JobProgress) {
        let elapsed = self.started.elapsed();
        if elapsed < Duration::from_millis(300) {
            return;
        }
        let mut slot = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        let bar = slot.get_or_insert_with(|| {
            let bar =
                ProgressBar::with_draw_target(Some(progress.items), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} items {msg}") {
                bar.set_style(style);
            }
            bar
        });
        bar.set_position(progress.items_done);
        let rate = super::run::progress_message(progress.items_done, progress.items, elapsed);
        bar.set_message(format!("{rate}  {}", node_shares(progress)));
    }

    /// Prints a line above the bar (or plainly without one).
    fn println(&self, line: &str) {
        let slot = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

/// `n0 55%, n1 45%`: each node's share of the items committed so far.
fn node_shares(progress: &JobProgress) -> String {
    let done = progress.items_done.max(1);
    progress
        .per_node
        .iter()
        .map(|(name, items)| {
            // `NAME (ADDR)`: the name alone is enough here.
            let short = name.split(" (").next().unwrap_or(name);
            format!("{short} {:.0}%", *items as f64 * 100.0 / done as f64)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Connects to the cluster `args` names (peers, discovery, credentials); the client's
/// events and its jobs' progress go to `bar`.
pub fn connect(
    cli: &Cli,
    args: &ClusterRunArgs,
    bar: &Arc<ClusterBar>,
) -> anyhow::Result<offload::Cluster> {
    let credentials = client_credentials(args.credentials.as_deref())?;
    let peers = client_nodes(
        cli,
        &credentials,
        &args.peers,
        &args.discover,
        args.no_discovery,
    )?;
    let (events, progress) = (Arc::clone(bar), Arc::clone(bar));
    let config = ClientConfig::new(credentials)
        .peers(peers)
        .idle_timeout(Duration::from_secs_f64(args.node_timeout))
        .devices(offload::DeviceChoice::Auto)
        .on_event(move |line| events.println(&format!("cluster: {line}")))
        .on_progress(move |p| progress.update(p));
    let cluster = offload::Cluster::connect(config)?;
    let nodes = cluster.nodes();
    if args.redundancy as usize > nodes.len() {
        bail!(
            "--redundancy {} runs every packet on {} different nodes, but only {} answered; add nodes or lower --redundancy",
            args.redundancy,
            args.redundancy,
            plural(nodes.len() as u64, "node")
        );
    }
    if cli.verbose > 0 {
        for line in cluster.node_details() {
            eprintln!("{line}");
        }
    }
    Ok(cluster)
}

/// What happened on the nodes: lost, paused, rejoined and disagreeing nodes always;
/// packets per node and device with `-v`.
pub fn print_cluster_report(cli: &Cli, report: &ClusterReport, redundancy: u32) {
    if let Some((items, packets)) = report.finished_here {
        // Why each node went was said as it happened.
        eprintln!(
            "cluster: every node was lost before the job finished; the remaining {} ran on this machine in {} (--no-local-fallback turns this off)",
            plural(items, "item"),
            plural(packets, "packet")
        );
    } else if !report.lost.is_empty() {
        eprintln!(
            "cluster: {} lost during the job; their packets were re-run and the output is complete",
            plural(report.lost.len() as u64, "node")
        );
    }
    if !report.paused.is_empty() {
        eprintln!(
            "cluster: {} pause(s) during the job; the paused nodes' packets ran on the others and the output is complete",
            report.paused.len()
        );
    }
    for (node, packets) in &report.rejoined {
        eprintln!(
            "cluster: node {node} rejoined the job and ran {} after rejoining",
            plural(*packets, "packet")
        );
    }
    for line in &report.disagreements {
        eprintln!("cluster: {line}");
    }
    if !report.disagreements.is_empty() && redundancy > 1 {
        eprintln!(
            "cluster: {} disagreed with the majority; the output holds the majority's results ({redundancy} copies of every packet)",
            plural(report.disagreements.len() as u64, "result")
        );
    }
    if cli.verbose > 0 {
        for (node, packets) in &report.packets_per_node {
            eprintln!("node {node}: {}", plural(*packets, "packet"));
        }
        for (device, packets) in &report.packets_per_device {
            eprintln!("device {device}: {}", plural(*packets, "packet"));
        }
        for (node, rate) in &report.tuned_rates {
            eprintln!("node {node}: tuned rate {rate:.0} items/s per worker (advertised)");
        }
    }
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
