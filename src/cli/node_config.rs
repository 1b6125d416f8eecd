//! `offload node`'s settings: flags, a TOML configuration file, and the defaults, in
//! that order of precedence (a flag given overrides the file, the file overrides the
//! default).
//!
//! The file is `--config FILE`, else `$OFFLOAD_NODE_CONFIG`, else
//! `/etc/offload/node.toml` if it exists (what the Debian package installs). Every key
//! is optional; unknown keys are refused with their name, so a typo does not silently
//! leave a default in place. Relative paths in the file are relative to its folder.
//!
//! ```toml
//! listen = "0.0.0.0:7878"
//! credentials = "/etc/offload/credentials"
//! # name = "box2"            # default: the certificate's name
//! # cores = 8                # default: every core
//! opencl = false
//! normal_priority = false
//! packet_timeout = 300       # seconds
//! # cache_dir = "/var/cache/offload"
//!
//! [owner]
//! idle_only = false
//! # idle_threshold = 2.0     # default: half the cores, at least 1
//! # max_bandwidth = "100Mbit"
//!
//! [limits]
//! package_cache = "256M"
//! buffer_cache = "4G"
//! worker_memory = "2G"
//!
//! [discovery]
//! mdns = true
//!
//! [metrics]
//! # listen = "127.0.0.1:9464"
//!
//! [revocation]
//! # list = "/etc/offload/crl.pem"   # default: crl.pem beside the credentials
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

use super::cluster::{parse_rate, parse_size};

/// Where the node's configuration is read from when neither `--config` nor
/// `$OFFLOAD_NODE_CONFIG` names a file (only if it exists).
pub const DEFAULT_CONFIG: &str = "/etc/offload/node.toml";

/// `offload node`: serve this machine's cores to the cluster.
#[derive(Args)]
pub struct NodeArgs {
    /// A TOML configuration file (see docs/deploy.md); flags given here override it
    /// [default: /etc/offload/node.toml if it exists].
    #[arg(long, value_name = "FILE", env = "OFFLOAD_NODE_CONFIG")]
    pub config: Option<PathBuf>,
    /// UDP address to listen on [default: 0.0.0.0:7878].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Credentials directory (cluster dir or DIR/nodes/NAME).
    #[arg(long, value_name = "DIR")]
    pub credentials: Option<PathBuf>,
    /// Worker processes, i.e. packets run at once, 1 to 4096 [default: all cores].
    #[arg(long, value_parser = super::parse_count)]
    pub cores: Option<usize>,
    /// Take no new packets while the machine's owner keeps it busy (`--idle-only=false`
    /// turns off what the configuration file turned on).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true, value_name = "BOOL")]
    pub idle_only: Option<bool>,
    /// With --idle-only: the 1-minute load (less this node's own busy workers) above
    /// which the node pauses [default: half the cores, at least 1].
    #[arg(long, value_name = "LOAD", value_parser = super::parse_load)]
    pub idle_threshold: Option<f64>,
    /// Cap on bytes sent per second, e.g. 50M, 1.5G, 800K (bytes), or 100Mbit.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub max_bandwidth: Option<u64>,
    /// Seconds a packet may run before its worker is killed [default: 300].
    #[arg(long, value_parser = super::parse_seconds)]
    pub packet_timeout: Option<f64>,
    /// The node's name in logs, discovery and status [default: its certificate's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Run workers at normal priority instead of nice 19 (benchmarks on a dedicated
    /// machine).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true, value_name = "BOOL")]
    pub normal_priority: Option<bool>,
    /// Do not advertise by mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Run without cluster credentials: throwaway ones are made and their directory
    /// printed (clients pass it as --credentials). Only with a loopback --listen.
    #[arg(long)]
    pub insecure: bool,
    /// Also serve this machine's OpenCL devices (one worker process each). Kernels a
    /// device cannot lower or build run on the CPU workers. Off by default: PoCL's CPU
    /// device shares the cores the CPU workers already use.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true, value_name = "BOOL")]
    pub opencl: Option<bool>,
    /// Memory for packages kept for later jobs, e.g. 256M; the least recently used go
    /// first [default: 256M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub package_cache: Option<u64>,
    /// Memory for whole input buffers kept for later jobs (and per worker), e.g. 4G; the
    /// least recently used go first [default: 4G].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub buffer_cache: Option<u64>,
    /// A worker process using more memory than this is started afresh before it loads
    /// another kernel, e.g. 2G [default: 2G].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub worker_memory: Option<u64>,
    /// Serve Prometheus metrics on this TCP address (GET /metrics), e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// The revocation list to enforce (re-read every second and on SIGHUP) [default:
    /// crl.pem beside the credentials].
    #[arg(long, value_name = "FILE")]
    pub revocation_list: Option<PathBuf>,
    /// Run kernel workers without the sandbox (seccomp, Landlock, limits: see
    /// docs/sandbox.md). A node refuses to serve where this kernel lacks seccomp or
    /// Landlock unless given this flag; `offload status` and `offload nodes` then show it
    /// as unsandboxed. A flag only, never a configuration key: it must be asked for each
    /// time.
    #[arg(long)]
    pub unsandboxed: bool,
    /// Check the configuration (file and flags), print the settings and exit.
    #[arg(long)]
    pub check: bool,
    /// Test builds only: misbehave on purpose (see the cluster crate's `fault` module).
    #[arg(long, value_name = "FAULT", hide = true)]
    pub fault: Vec<String>,
}

/// The configuration file, as written (every key optional).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    listen: Option<String>,
    credentials: Option<PathBuf>,
    name: Option<String>,
    cores: Option<usize>,
    opencl: Option<bool>,
    normal_priority: Option<bool>,
    packet_timeout: Option<f64>,
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    owner: OwnerSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    discovery: DiscoverySection,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    revocation: RevocationSection,
}

/// `[owner]`: what the machine's owner keeps.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct OwnerSection {
    idle_only: Option<bool>,
    idle_threshold: Option<f64>,
    max_bandwidth: Option<String>,
}

/// `[limits]`: memory caps.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    package_cache: Option<String>,
    buffer_cache: Option<String>,
    worker_memory: Option<String>,
}

/// `[discovery]`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct DiscoverySection {
    mdns: Option<bool>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    listen: Option<String>,
}

/// `[revocation]`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RevocationSection {
    list: Option<PathBuf>,
}

/// What the node runs with, every setting decided.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    /// The configuration file read, if any.
    pub file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub credentials: Option<PathBuf>,
    pub name: Option<String>,
    pub cores: Option<usize>,
    pub opencl: bool,
    pub normal_priority: bool,
    pub packet_timeout: f64,
    pub cache_dir: Option<PathBuf>,
    pub idle_only: bool,
    pub idle_threshold: Option<f64>,
    pub max_bandwidth: Option<u64>,
    pub package_cache: u64,
    pub buffer_cache: u64,
    pub worker_memory: u64,
    pub mdns: bool,
    pub metrics: Option<SocketAddr>,
    pub revocation_list: Option<PathBuf>,
    /// `--unsandboxed` (a flag only).
    pub unsandboxed: bool,
}

impl NodeSettings {
    /// The settings as `key = value` lines, for `offload node --check`.
    pub fn describe(&self) -> String {
        let or = |value: Option<String>, default: &str| value.unwrap_or_else(|| default.into());
        let lines = [
            format!("listen = {}", self.listen),
            format!(
                "credentials = {}",
                or(
                    self.credentials.as_ref().map(|p| p.display().to_string()),
                    "(none)"
                )
            ),
            format!(
                "name = {}",
                or(self.name.clone(), "(the certificate's name)")
            ),
            format!(
                "cores = {}",
                or(self.cores.map(|c| c.to_string()), "(every core)")
            ),
            format!("opencl = {}", self.opencl),
            format!("normal_priority = {}", self.normal_priority),
            format!("packet_timeout = {} s", self.packet_timeout),
            format!(
                "cache_dir = {}",
                or(
                    self.cache_dir.as_ref().map(|p| p.display().to_string()),
                    "(the user's cache)"
                )
            ),
            format!("owner.idle_only = {}", self.idle_only),
            format!(
                "owner.idle_threshold = {}",
                or(
                    self.idle_threshold.map(|t| t.to_string()),
                    "(half the cores, at least 1)"
                )
            ),
            format!(
                "owner.max_bandwidth = {}",
                or(self.max_bandwidth.map(|b| format!("{b} bytes/s")), "(none)")
            ),
            format!("limits.package_cache = {} bytes", self.package_cache),
            format!("limits.buffer_cache = {} bytes", self.buffer_cache),
            format!("limits.worker_memory = {} bytes", self.worker_memory),
            format!("discovery.mdns = {}", self.mdns),
            format!(
                "metrics.listen = {}",
                or(self.metrics.map(|m| m.to_string()), "(off)")
            ),
            format!(
                "revocation.list = {}",
                or(
                    self.revocation_list
                        .as_ref()
                        .map(|p| p.display().to_string()),
                    "(crl.pem beside the credentials)"
                )
            ),
            format!("unsandboxed = {} (flag only)", self.unsandboxed),
        ];
        lines.join("\n")
    }
}

/// Reads the configuration file: `explicit` (from `--config` or the environment), else
/// [`DEFAULT_CONFIG`] if it exists.
pub fn read_file(explicit: Option<&Path>) -> anyhow::Result<Option<(PathBuf, NodeFile)>> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
        None => return Ok(None),
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the node configuration {}", path.display()))?;
    let file = parse(&text).with_context(|| format!("in {}", path.display()))?;
    Ok(Some((path, file)))
}

/// Parses a configuration file's text.
pub fn parse(text: &str) -> anyhow::Result<NodeFile> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))
}

/// Decides every setting: the flag if given, else the file's key, else the default.
/// Relative paths of the file are taken relative to the file's folder.
pub fn resolve(args: &NodeArgs, file: Option<(PathBuf, NodeFile)>) -> anyhow::Result<NodeSettings> {
    let (path, file) = match file {
        Some((path, file)) => (Some(path), file),
        None => (None, NodeFile::default()),
    };
    let base = path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let relative = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let key = |name: &str| match &path {
        Some(p) => format!("`{name}` in {}", p.display()),
        None => format!("`{name}`"),
    };
    let listen = match (args.listen, &file.listen) {
        (Some(listen), _) => listen,
        (None, Some(text)) => text.parse().map_err(|_| {
            anyhow::anyhow!("{}: `{text}` is not an address (IP:PORT)", key("listen"))
        })?,
        (None, None) => SocketAddr::from(([0, 0, 0, 0], cluster::protocol::DEFAULT_PORT)),
    };
    let size =
        |flag: Option<u64>, text: &Option<String>, name: &str, default: u64| match (flag, text) {
            (Some(bytes), _) => Ok(bytes),
            (None, Some(text)) => {
                parse_size(text).map_err(|e| anyhow::anyhow!("{}: {e}", key(name)))
            }
            (None, None) => Ok(default),
        };
    let cores = match (args.cores, file.cores) {
        (Some(cores), _) => Some(cores),
        (None, Some(cores)) => Some(
            super::parse_count(&cores.to_string())
                .map_err(|e| anyhow::anyhow!("{}: {e}", key("cores")))?,
        ),
        (None, None) => None,
    };
    let packet_timeout = match (args.packet_timeout, file.packet_timeout) {
        (Some(seconds), _) => seconds,
        (None, Some(seconds)) => super::parse_seconds(&seconds.to_string())
            .map_err(|e| anyhow::anyhow!("{}: {e}", key("packet_timeout")))?,
        (None, None) => 300.0,
    };
    let idle_threshold = match (args.idle_threshold, file.owner.idle_threshold) {
        (Some(load), _) => Some(load),
        (None, Some(load)) => Some(
            super::parse_load(&load.to_string())
                .map_err(|e| anyhow::anyhow!("{}: {e}", key("owner.idle_threshold")))?,
        ),
        (None, None) => None,
    };
    let max_bandwidth = match (args.max_bandwidth, &file.owner.max_bandwidth) {
        (Some(rate), _) => Some(rate),
        (None, Some(text)) => Some(
            parse_rate(text).map_err(|e| anyhow::anyhow!("{}: {e}", key("owner.max_bandwidth")))?,
        ),
        (None, None) => None,
    };
    let metrics = match (args.metrics, &file.metrics.listen) {
        (Some(addr), _) => Some(addr),
        (None, Some(text)) => Some(text.parse().map_err(|_| {
            anyhow::anyhow!(
                "{}: `{text}` is not an address (IP:PORT)",
                key("metrics.listen")
            )
        })?),
        (None, None) => None,
    };
    Ok(NodeSettings {
        listen,
        credentials: args
            .credentials
            .clone()
            .or_else(|| file.credentials.map(relative)),
        name: args.name.clone().or(file.name),
        cores,
        opencl: args.opencl.or(file.opencl).unwrap_or(false),
        normal_priority: args
            .normal_priority
            .or(file.normal_priority)
            .unwrap_or(false),
        packet_timeout,
        cache_dir: file.cache_dir.map(relative),
        idle_only: args.idle_only.or(file.owner.idle_only).unwrap_or(false),
        idle_threshold,
        max_bandwidth,
        package_cache: size(
            args.package_cache,
            &file.limits.package_cache,
            "limits.package_cache",
            256 << 20,
        )?,
        buffer_cache: size(
            args.buffer_cache,
            &file.limits.buffer_cache,
            "limits.buffer_cache",
            4 << 30,
        )?,
        worker_memory: size(
            args.worker_memory,
            &file.limits.worker_memory,
            "limits.worker_memory",
            2 << 30,
        )?,
        mdns: !args.no_mdns && file.discovery.mdns.unwrap_or(true),
        metrics,
        revocation_list: args
            .revocation_list
            .clone()
            .or_else(|| file.revocation.list.map(relative)),
        unsandboxed: args.unsandboxed,
        file: path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn args(flags: &[&str]) -> NodeArgs {
        Wrapper::parse_from(std::iter::once("node").chain(flags.iter().copied())).node
    }

    const FILE: &str = r#"
listen = "0.0.0.0:7000"
credentials = "creds"
name = "from-file"
cores = 3
opencl = true

[owner]
idle_only = true
idle_threshold = 1.5
max_bandwidth = "100Mbit"

[limits]
buffer_cache = "1G"

[discovery]
mdns = false

[metrics]
listen = "127.0.0.1:9464"
"#;

    #[test]
    fn flags_override_the_file_and_the_file_overrides_the_defaults() {
        let file = Some((
            PathBuf::from("/etc/offload/node.toml"),
            parse(FILE).expect("parse"),
        ));
        let settings = resolve(
            &args(&[
                "--name",
                "from-flag",
                "--cores",
                "1",
                "--opencl=false",
                "--buffer-cache",
                "2G",
            ]),
            file,
        )
        .expect("resolve");
        assert_eq!(settings.name.as_deref(), Some("from-flag"));
        assert_eq!(settings.cores, Some(1));
        assert!(!settings.opencl);
        assert_eq!(settings.buffer_cache, 2 << 30);
        // From the file, relative paths beside it.
        assert_eq!(settings.listen, "0.0.0.0:7000".parse().expect("addr"));
        assert_eq!(
            settings.credentials,
            Some(PathBuf::from("/etc/offload/creds"))
        );
        assert!(settings.idle_only);
        assert_eq!(settings.idle_threshold, Some(1.5));
        assert_eq!(settings.max_bandwidth, Some(12_500_000));
        assert!(!settings.mdns);
        assert_eq!(
            settings.metrics,
            Some("127.0.0.1:9464".parse().expect("addr"))
        );
        // Defaults where neither says.
        assert_eq!(settings.package_cache, 256 << 20);
        assert_eq!(settings.worker_memory, 2 << 30);
        assert_eq!(settings.packet_timeout, 300.0);
        let bare = resolve(&args(&[]), None).expect("resolve");
        assert_eq!(bare.listen, "0.0.0.0:7878".parse().expect("addr"));
        assert!(bare.mdns && !bare.idle_only && bare.metrics.is_none());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let text = parse("lisen = \"0.0.0.0:1\"")
            .expect_err("typo")
            .to_string();
        assert!(text.contains("lisen"), "{text}");
        let text = parse("[limits]\nbufer_cache = \"1G\"")
            .expect_err("typo")
            .to_string();
        assert!(text.contains("bufer_cache"), "{text}");
        let bad = |toml: &str| {
            resolve(
                &args(&[]),
                Some((PathBuf::from("/x/node.toml"), parse(toml).expect("parse"))),
            )
            .expect_err(toml)
            .to_string()
        };
        assert!(bad("listen = \"here\"").contains("`listen` in /x/node.toml"));
        assert!(bad("cores = 0").contains("`cores`"));
        assert!(bad("[limits]\nworker_memory = \"2X\"").contains("limits.worker_memory"));
        assert!(bad("[owner]\nmax_bandwidth = \"fast\"").contains("owner.max_bandwidth"));
    }
}
