//! Command-line parsing and the commands. Every error ends here as one readable message.

mod cluster;
mod demo;
mod node_config;
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
    /// Say more: compile times, cache hits, packets, info logs (-vv debug logs, -vvv
    /// trace logs and the dependencies' too). A node logs its work at the default level
    /// and each -v adds one level.
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
    /// Cluster credentials: `init` a cluster CA, `add-node` to issue a member
    /// certificate, `list` the issued ones, `revoke` one.
    Cluster(cluster::ClusterArgs),
    /// Serve this machine's cores to the cluster (QUIC, default port 7878/udp).
    Node(node_config::NodeArgs),
    /// List the cluster nodes found on the LAN by mDNS.
    Nodes(cluster::NodesArgs),
    /// Show what the cluster's nodes are doing: state, load, jobs and for whom, packets.
    Status(cluster::StatusArgs),
    /// Simulate named cluster scenarios and print makespans against the baselines.
    Simulate(simulate::SimulateArgs),
    /// Tune this node for kernels (worker count, packet size, vector width, unroll,
    /// optimization level) and store the profile; `--show` prints stored profiles.
    Tune(tune::TuneArgs),
    /// Internal: compare two raw buffer files (integers exactly, floats within --ulp).
    #[command(name = "__compare", hide = true)]
    Compare(opencl::CompareArgs),
    /// Internal: the kernel worker process a node runs packets in.
    #[command(name = "__worker", hide = true)]
    Worker(cluster::WorkerArgs),
}

/// The hidden `offload __engine-worker [--fault FAULT]...`: the isolated kernel worker
/// local runs execute packets in (set up on stdin by the engine; `--fault` exists in test
/// builds only, see the node's `fault` module).
/// Raises this process's soft limit of open files to its hard limit (the usual 1024
/// soft limit is a default for programs that use `select`, which offload does not):
/// every buffer of a local run is an anonymous file, one descriptor each, passed to the
/// workers, so a program of more than about a thousand buffers would not run. Worker
/// processes inherit the limit; their sandbox then lowers it to what they hold.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write `limit`, ours.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            // Failing leaves the limit as it was: a job that needs more says so then.
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Starts the first isolated worker of a local `offload run` before anything else: its
/// start (1.5-2 ms: exec, the runtime, the sandbox's filters) is the longest part of a
/// small run, and parsing the command line and setting up the logs would delay it by
/// half a millisecond. Only when the arguments plainly ask for a run of this machine's
/// CPU; the run starts any further workers it needs, and a spare it does not take (its
/// arguments were wrong, say) ends silently with it.
fn start_first_worker_early() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let elsewhere = [
        "--in-process",
        "--cluster",
        "--check",
        "--device",
        "--worker-fault",
        "-h",
        "--help",
    ];
    let local = args.first().is_some_and(|command| command == "run")
        && !args.iter().any(|arg| {
            elsewhere
                .iter()
                .any(|flag| arg == flag || arg.starts_with(&format!("{flag}=")))
        });
    if let (true, Ok(program)) = (local, offload_program()) {
        offload::Options::default().isolated(program).warm_up(1);
    }
}

fn engine_worker(mut args: impl Iterator<Item = String>) -> ExitCode {
    let mut faults = Vec::new();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--fault", Some(fault)) => faults.push(fault),
            _ => {
                eprintln!("error: offload __engine-worker takes only --fault FAULT (it is started by offload run)");
                return ExitCode::from(2);
            }
        }
    }
    match offload::serve_worker(&faults) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("error: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn parse_opt_level(text: &str) -> Result<OptLevel, String> {
    OptLevel::parse(text)
        .ok_or_else(|| format!("`{text}` is not an optimization level (0, 1, 2 or 3)"))
}

impl Cli {
    fn engine(&self) -> anyhow::Result<Engine> {
        Ok(Engine::new(self.engine_config())?)
    }

    /// The engine settings the global flags give (optimization level, cache directory).
    fn engine_config(&self) -> Config {
        let config = Config::default().opt_level(self.opt_level);
        match &self.cache_dir {
            Some(dir) => config.cache_dir(dir),
            None => config,
        }
    }

    /// [`Cli::engine`] for runs with isolated workers: a kernel not in the code cache is
    /// compiled by a helper process (`offload __compile-object`, passed the test-build
    /// faults `faults`), so that LLVM failing on a package ends the helper, not offload.
    fn isolated_engine(&self, faults: &[String]) -> anyhow::Result<Engine> {
        let helper = offload::CompilerProcess::new(offload_program()?, faults);
        Ok(Engine::new(
            self.engine_config()
                .object_compiler(std::sync::Arc::new(helper)),
        )?)
    }
}

/// Parses arguments, runs the command and turns any error into one message.
pub fn main() -> ExitCode {
    raise_open_files_limit();
    // The engine's workers start for every local run: they skip the command line's
    // parser (a third of their start-up) and the log set-up.
    let mut args = std::env::args();
    match args.nth(1).as_deref() {
        Some("__engine-worker") => return engine_worker(args),
        Some("__compile-object") => return offload::serve_compile_object(args),
        _ => {}
    }
    start_first_worker_early();
    let cli = Cli::parse();
    // A kernel that traps on this machine is named, with its items, before the process
    // ends, and no staged output is left behind.
    offload::report_kernel_crashes();
    let filter = log_filter(matches!(cli.command, Command::Node(_)), cli.verbose);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OFFLOAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log piped to a file stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Status(args) => cluster::status(&cli, args),
        Command::Worker(args) => cluster::worker(&cli, args),
        Command::Compare(args) => opencl::compare(args),
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

/// offload's own crates, whose logs `-v` turns up.
const OUR_CRATES: &[&str] = &[
    "offload",
    "cluster",
    "node_jit",
    "scheduler",
    "opencl_backend",
    "ptx_backend",
    "ir_packager",
];

/// The log filter for `verbose` (the count of `-v`). Each `-v` means one level more:
/// warnings only, then info, debug and trace for offload's crates, and at the end the
/// dependencies' logs too (mDNS, QUIC), which stay at errors below that. A node starts
/// one level up, so that its lifecycle, connections, jobs and failures show without
/// flags. `OFFLOAD_LOG` (an `EnvFilter` directive) replaces all of this.
fn log_filter(node: bool, verbose: u8) -> String {
    let ours = |level: &str| {
        OUR_CRATES
            .iter()
            .map(|c| format!("{c}={level}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    match verbose.saturating_add(u8::from(node)) {
        0 => "warn,mdns_sd=error".into(),
        1 => format!("warn,mdns_sd=error,{}", ours("info")),
        2 => format!("warn,mdns_sd=error,{}", ours("debug")),
        3 => format!("debug,{}", ours("trace")),
        _ => "trace".into(),
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

/// The program workers are started from: this very executable, through `/proc/self/exe`
/// (so a worker is this version of offload even if the file was replaced or removed since
/// this process started, as a package upgrade does under a running node), else the path
/// it was started from.
pub fn offload_program() -> anyhow::Result<std::path::PathBuf> {
    let this = std::path::Path::new("/proc/self/exe");
    if this.exists() {
        return Ok(this.to_path_buf());
    }
    std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find the offload program to run workers: {e}"))
}

/// Where a local run's packets ran: `2 isolated workers`, `2 threads`, or the OpenCL
/// devices when no CPU thread ran any.
pub fn describe_workers(report: &offload::Report) -> String {
    if report.isolated_workers > 0 {
        plural(report.isolated_workers as u64, "isolated worker")
    } else if report.threads == 0 && !report.opencl_devices.is_empty() {
        format!("OpenCL ({})", report.opencl_devices.join(", "))
    } else {
        plural(report.threads as u64, "thread")
    }
}

/// Parses a count of threads, workers or cores: a whole number from 1 to 4096 (0 is
/// refused, not silently turned into 1).
pub fn parse_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n @ 1..=4096) => Ok(n),
        Ok(0) => Err("must be at least 1".into()),
        Ok(_) => Err("must be at most 4096".into()),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// Parses a number of seconds: finite, above 0 and at most a day (`nan`, `inf`,
/// negative numbers and 0 are refused).
pub fn parse_seconds(text: &str) -> Result<f64, String> {
    parse_number_in(text, "a number of seconds", 1e-3, 86_400.0)
}

/// Parses `--node-timeout`: from half a second (keep-alives go out every 200 ms) to an
/// hour.
pub fn parse_node_timeout(text: &str) -> Result<f64, String> {
    parse_number_in(text, "a number of seconds", 0.5, 3_600.0)
}

/// Parses a machine load (`--idle-threshold`): finite and not negative.
pub fn parse_load(text: &str) -> Result<f64, String> {
    parse_number_in(text, "a load average", 0.0, 1e6)
}

fn parse_number_in(text: &str, what: &str, min: f64, max: f64) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not {what}"))?;
    if !(value.is_finite() && (min..=max).contains(&value)) {
        return Err(format!("`{text}` is not {what} from {min} to {max}"));
    }
    Ok(value)
}

/// `1 thread`, `2 threads`: a count with its noun in the right number.
pub fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// A duration for people: `0.42 ms`, `12.3 ms`, `4.56 s`, `5 min 30 s`, `2 h 05 min`.
pub fn describe_duration(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 0.01 {
        format!("{:.2} ms", seconds * 1e3)
    } else if seconds < 1.0 {
        format!("{:.1} ms", seconds * 1e3)
    } else if seconds < 60.0 {
        format!("{seconds:.2} s")
    } else if seconds < 3600.0 {
        let whole = seconds.round() as u64;
        format!("{} min {:02} s", whole / 60, whole % 60)
    } else {
        let minutes = (seconds / 60.0).round() as u64;
        format!("{} h {:02} min", minutes / 60, minutes % 60)
    }
}

fn devices(cli: &Cli) -> anyhow::Result<()> {
    let engine = cli.engine()?;
    let host = engine.host();
    let cores = node_jit::available_threads();
    println!("cpu: {host}");
    if let Some(identity) = node_jit::CpuIdentity::of_this_machine() {
        println!("  model: {identity}");
    }
    println!("  cores: {cores}");
    println!("  features: {}", host.enabled_features().join(" "));
    opencl::print_devices();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{describe_duration, plural};
    use std::time::Duration;

    #[test]
    fn each_v_says_more_and_mdns_stays_quiet_until_the_last_levels() {
        use super::log_filter;
        // A client: warnings, then offload's info, debug, trace.
        assert_eq!(log_filter(false, 0), "warn,mdns_sd=error");
        assert!(log_filter(false, 1).contains("cluster=info"));
        assert!(log_filter(false, 2).contains("cluster=debug"));
        // A node: its work at the default level, debug with -v, trace and the
        // dependencies with -vv.
        assert!(log_filter(true, 0).contains("cluster=info"));
        assert!(log_filter(true, 0).contains("mdns_sd=error"));
        assert!(log_filter(true, 1).contains("cluster=debug"));
        assert!(log_filter(true, 1).contains("mdns_sd=error"));
        assert!(
            log_filter(true, 2).starts_with("debug,")
                && log_filter(true, 2).contains("cluster=trace")
        );
        assert_eq!(log_filter(true, 3), "trace");
        for v in 0..3 {
            assert_ne!(log_filter(true, v), log_filter(true, v + 1), "-v {v}");
        }
    }

    #[test]
    fn counts_and_seconds_refuse_what_cannot_be_meant() {
        use super::{parse_count, parse_seconds};
        assert_eq!(parse_count("4"), Ok(4));
        assert!(parse_count("0").is_err());
        assert!(parse_count("4097").is_err());
        assert!(parse_count("-1").is_err());
        assert_eq!(parse_seconds("2.5"), Ok(2.5));
        for bad in ["nan", "NaN", "inf", "-1", "0", "1e9", "x"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_and_durations_read_as_words() {
        assert_eq!(plural(1, "thread"), "1 thread");
        assert_eq!(plural(0, "node"), "0 nodes");
        assert_eq!(plural(3, "packet"), "3 packets");
        assert_eq!(describe_duration(Duration::from_micros(420)), "0.42 ms");
        assert_eq!(describe_duration(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(describe_duration(Duration::from_millis(4_560)), "4.56 s");
        assert_eq!(
            describe_duration(Duration::from_millis(330_002)),
            "5 min 30 s"
        );
        assert_eq!(describe_duration(Duration::from_secs(7_500)), "2 h 05 min");
    }
}
