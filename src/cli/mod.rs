//! Command-line parsing and the commands. Every error ends here as one readable message.

mod cluster;
mod demo;
mod opencl;
mod package;
mod run;
mod simulate;
mod tune;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use offload::{Config, Engine, OptLevel};

/// offload: run compute kernels shipped as LLVM bitcode on every core of this machine.
#[derive(Parser)]
#[command(name = "offload", version, about, long_about = None)]
pub struct Cli {
    /// Say more: compile times, cache hits, packets (-vv for debug logs).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Code cache directory [default: $OFFLOAD_CACHE_DIR, else ~/.cache/offload].
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// LLVM optimization level for kernels (0-3).
    #[arg(long, global = true, default_value = "3", value_parser = parse_opt_level)]
    opt_level: OptLevel,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a kernel source (.rs .c .ll .bc) into a validated package.
    Package(package::PackageArgs),
    /// Show a package's kernels, signatures, provenance and hash.
    Inspect(package::InspectArgs),
    /// Compile a package ahead of time to an object file for a target triple.
    Compile(package::CompileArgs),
    /// Run a kernel over items 0..N on this machine.
    Run(run::RunArgs),
    /// Render a Mandelbrot image through the engine and write a PNG.
    Demo(demo::DemoArgs),
    /// Show this node's devices: the CPU as the JIT sees it and every OpenCL device.
    Devices,
    /// Print the OpenCL C that a kernel lowers to.
    Lower(opencl::LowerArgs),
    /// Cluster credentials: `init` a cluster CA, `add-node` to issue a member certificate.
    Cluster(cluster::ClusterArgs),
    /// Serve this machine's cores to the cluster (QUIC, default port 7878/udp).
    Node(cluster::NodeArgs),
    /// List the cluster nodes found on the LAN by mDNS.
    Nodes(cluster::NodesArgs),
    /// Simulate named cluster scenarios and print makespans against the baselines.
    Simulate(simulate::SimulateArgs),
    /// Tune this node for kernels (worker count, packet size, vector width, unroll,
    /// optimization level) and store the profile; `--show` prints stored profiles.
    Tune(tune::TuneArgs),
    /// Internal: the kernel worker process a node runs packets in.
    #[command(name = "__worker", hide = true)]
    Worker(cluster::WorkerArgs),
}

fn parse_opt_level(text: &str) -> Result<OptLevel, String> {
    OptLevel::parse(text)
        .ok_or_else(|| format!("`{text}` is not an optimization level (0, 1, 2 or 3)"))
}

impl Cli {
    fn engine(&self) -> anyhow::Result<Engine> {
        let mut config = Config::default().opt_level(self.opt_level);
        if let Some(dir) = &self.cache_dir {
            config = config.cache_dir(dir);
        }
        Ok(Engine::new(config)?)
    }
}

/// Parses arguments, runs the command and turns any error into one message.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 | 1 => "warn",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OFFLOAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let outcome = match &cli.command {
        Command::Package(args) => package::package(&cli, args),
        Command::Inspect(args) => package::inspect(args),
        Command::Compile(args) => package::compile(&cli, args),
        Command::Run(args) => run::run(&cli, args),
        Command::Demo(args) => demo::demo(&cli, args),
        Command::Devices => devices(&cli),
        Command::Lower(args) => opencl::lower(args),
        Command::Cluster(args) => cluster::cluster(args),
        Command::Node(args) => cluster::node(&cli, args),
        Command::Nodes(args) => cluster::nodes(args),
        Command::Worker(args) => cluster::worker(&cli, args),
        Command::Simulate(args) => simulate::simulate(args),
        Command::Tune(args) => tune::tune(&cli, args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line each, without repeating a cause that the
/// message already contains.
fn chain(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(&format!("\n  caused by: {cause}"));
        }
    }
    text
}

fn devices(cli: &Cli) -> anyhow::Result<()> {
    let engine = cli.engine()?;
    let host = engine.host();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cpu: {host}");
    if let Some(identity) = node_jit::CpuIdentity::of_this_machine() {
        println!("  model: {identity}");
    }
    println!("  cores: {cores}");
    println!("  features: {}", host.enabled_features().join(" "));
    opencl::print_devices();
    Ok(())
}
