//! Finding nodes: zeroconf on the LAN, DNS beyond it, and files of peers.
//!
//! - **mDNS**: nodes advertise `_offload._udp.local.` by mDNS/DNS-SD (mdns-sd), clients
//!   browse for it. TXT records: `arch` (target triple), `cpu` (LLVM CPU name),
//!   `features` (abbreviated ISA extensions), `devices` (`cpu:N`, or `cpu:N,opencl:M`
//!   for a node serving M OpenCL devices), `version` (protocol), `name`, `ca` (the
//!   SHA-256 fingerprint of the node's cluster CA, as OpenSSL prints it), `opencl` (the
//!   OpenCL devices, [`opencl_txt`]) when it serves any, and `rates` when the node has
//!   tuned rates ([`rates_txt`]), and `sandbox=off` when its kernel workers run
//!   unsandboxed (`offload node --unsandboxed`). The port is the service's port. A node that listens
//!   on a loopback address advertises on loopback only. Clients keep only the nodes
//!   whose `ca` is their own cluster's, compared whole ([`split_by_cluster`]): another
//!   cluster's nodes on the same LAN are skipped without a word (listed with `-v`).
//! - **DNS** ([`Source::Dns`], `--discover dns:NAME`): the SRV records
//!   `_offload._udp.NAME` (target and port each), else the A/AAAA records of NAME on the
//!   default port; a Kubernetes headless Service gives exactly these ([`crate::dns`]).
//! - **A peers file** ([`Source::File`], `--discover file:PATH`): one `HOST[:PORT]` per
//!   line, `#` starts a comment.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::protocol::{NodeInfo, OpenClDevice, TunedRate, VERSION};

/// The DNS-SD service type.
pub const SERVICE_TYPE: &str = "_offload._udp.local.";

/// Discovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// mDNS could not browse or advertise.
    #[error("mDNS: {0}")]
    Mdns(String),
    /// A DNS name could not be resolved.
    #[error("DNS {name}: {reason}")]
    Dns {
        /// The name asked for.
        name: String,
        /// Why.
        reason: String,
    },
    /// A peers file could not be read.
    #[error("peers file {path}: {reason}")]
    PeersFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A peer or discovery source that does not parse or resolve.
    #[error("{0}")]
    Peer(String),
}

impl From<mdns_sd::Error> for DiscoveryError {
    fn from(e: mdns_sd::Error) -> Self {
        DiscoveryError::Mdns(e.to_string())
    }
}

/// Where to look for nodes besides the peers given by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// mDNS on the LAN (and loopback).
    Mdns,
    /// DNS: `dns:NAME[:PORT][@SERVER[:PORT]]`. SRV records `_offload._udp.NAME` give
    /// the nodes' names and ports; without them the A/AAAA records of NAME are used with
    /// PORT (default 7878). `@SERVER` asks that DNS server instead of the system's.
    Dns {
        /// The name (e.g. a Kubernetes headless Service's
        /// `offload-nodes.offload.svc.cluster.local`).
        name: String,
        /// The port for A/AAAA records.
        port: Option<u16>,
        /// The DNS server to ask instead of the system's resolver configuration.
        server: Option<SocketAddr>,
    },
    /// A file of peers: `file:PATH`, one `HOST[:PORT]` per line.
    File(PathBuf),
}

impl std::str::FromStr for Source {
    type Err = String;

    /// `mdns`, `dns:NAME[:PORT][@SERVER[:PORT]]` or `file:PATH`.
    fn from_str(text: &str) -> Result<Source, String> {
        let text = text.trim();
        if text == "mdns" {
            return Ok(Source::Mdns);
        }
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err("`file:` needs a path: file:PATH".into());
            }
            return Ok(Source::File(path.into()));
        }
        let Some(rest) = text.strip_prefix("dns:") else {
            return Err(format!(
                "`{text}` is not a discovery source: use mdns, dns:NAME[:PORT][@SERVER[:PORT]] or file:PATH"
            ));
        };
        let (target, server) = match rest.split_once('@') {
            Some((target, server)) => {
                let server = parse_addr(server, 53)
                    .ok_or_else(|| format!("`{server}` is not a DNS server address (IP[:PORT])"))?;
                (target, Some(server))
            }
            None => (rest, None),
        };
        let (name, port) = match target.rsplit_once(':') {
            Some((name, port)) => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("`{port}` is not a port in `{text}`"))?;
                (name, Some(port))
            }
            None => (target, None),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(format!("`{name}` is not a DNS name"));
        }
        Ok(Source::Dns {
            name: name.to_string(),
            port,
            server,
        })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Mdns => f.write_str("mdns"),
            Source::File(path) => write!(f, "file:{}", path.display()),
            Source::Dns { name, port, server } => {
                write!(f, "dns:{name}")?;
                if let Some(port) = port {
                    write!(f, ":{port}")?;
                }
                if let Some(server) = server {
                    write!(f, "@{server}")?;
                }
                Ok(())
            }
        }
    }
}

/// `IP[:PORT]` (IPv6 in brackets with a port) with `default` as the port.
fn parse_addr(text: &str, default: u16) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, default))
    })
}

/// Resolves a peer given as `HOST[:PORT]` (a name or an address; default port 7878).
pub fn resolve_peer(text: &str) -> Result<SocketAddr, DiscoveryError> {
    use std::net::ToSocketAddrs;
    let text = text.trim();
    if let Some(addr) = parse_addr(text, crate::protocol::DEFAULT_PORT) {
        return Ok(addr);
    }
    let with_port = if text.contains(':') {
        text.to_string()
    } else {
        format!("{text}:{}", crate::protocol::DEFAULT_PORT)
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| DiscoveryError::Peer(format!("cannot resolve peer `{text}`: {e}")))?
        .next()
        .ok_or_else(|| DiscoveryError::Peer(format!("peer `{text}` resolves to no address")))
}

/// The peers listed in a file: one `HOST[:PORT]` per line; blank lines and `#` comments
/// are skipped.
pub fn read_peers_file(path: &Path) -> Result<Vec<SocketAddr>, DiscoveryError> {
    let text = std::fs::read_to_string(path).map_err(|e| DiscoveryError::PeersFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut peers = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let addr = resolve_peer(line).map_err(|e| DiscoveryError::PeersFile {
            path: path.to_path_buf(),
            reason: format!("line {}: {e}", number + 1),
        })?;
        peers.push(addr);
    }
    Ok(peers)
}

/// What [`find`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// Nodes of this cluster (or not known to be of another: DNS and files say nothing
    /// of the cluster, the handshake decides), without duplicates.
    pub addrs: Vec<SocketAddr>,
    /// Nodes skipped because their mDNS record names another cluster, one line each.
    pub skipped: Vec<String>,
    /// Sources that failed, one line each (the others still count).
    pub failures: Vec<String>,
}

/// Looks for nodes in every source: mDNS for `window` (keeping only nodes of the cluster
/// whose CA fingerprint is `ca`), DNS names, peers files.
pub fn find(sources: &[Source], ca: &str, window: Duration) -> Found {
    let mut found = Found::default();
    for source in sources {
        match source {
            Source::Mdns => match browse(window, false) {
                Ok(nodes) => {
                    let (ours, others) = split_by_cluster(nodes, ca);
                    found.addrs.extend(ours.iter().map(|n| n.addr));
                    found.skipped.extend(others);
                }
                Err(e) => found.failures.push(e.to_string()),
            },
            Source::Dns { name, port, server } => {
                match crate::dns::resolve(
                    name,
                    port.unwrap_or(crate::protocol::DEFAULT_PORT),
                    *server,
                ) {
                    Ok(addrs) if addrs.is_empty() => found
                        .failures
                        .push(format!("DNS {name}: no SRV, A or AAAA record")),
                    Ok(addrs) => found.addrs.extend(addrs),
                    Err(e) => found.failures.push(e.to_string()),
                }
            }
            Source::File(path) => match read_peers_file(path) {
                Ok(addrs) => found.addrs.extend(addrs),
                Err(e) => found.failures.push(e.to_string()),
            },
        }
    }
    found.addrs.sort();
    found.addrs.dedup();
    found
}

/// Splits mDNS finds into the nodes of the cluster whose CA has fingerprint `ca` and a
/// line for each of the others (another cluster's, or a node too old to say).
pub fn split_by_cluster(found: Vec<FoundNode>, ca: &str) -> (Vec<FoundNode>, Vec<String>) {
    let ours = normalize_fingerprint(ca);
    let mut members = Vec::new();
    let mut others = Vec::new();
    for node in found {
        let name = node
            .properties
            .get("name")
            .map_or("?", String::as_str)
            .to_string();
        match node.properties.get("ca") {
            Some(theirs) if normalize_fingerprint(theirs) == ours => members.push(node),
            Some(theirs) => others.push(format!(
                "skipped node {name} at {}: it belongs to another cluster (CA fingerprint {theirs})",
                node.addr
            )),
            None => others.push(format!(
                "skipped node {name} at {}: its record names no cluster CA (an offload older than protocol version 5)",
                node.addr
            )),
        }
    }
    (members, others)
}

/// A fingerprint's hex digits, uppercase, without separators.
fn normalize_fingerprint(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The ISA features worth telling apart in a listing (the full string is long).
pub fn abbreviate_features(features: &[&str]) -> String {
    const INTERESTING: &[&str] = &[
        "sse4.2",
        "avx",
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512vnni",
        "amx-tile",
        "neon",
        "sve",
        "sve2",
        "vsx",
        "vector",
        "v",
    ];
    let found: Vec<&str> = INTERESTING
        .iter()
        .copied()
        .filter(|f| features.contains(f))
        .collect();
    found.join(" ")
}

/// Most bytes of one TXT value: a DNS TXT string holds at most 255 bytes, key and `=`
/// included.
const TXT_VALUE_MAX: usize = 240;

/// `entries` joined by `separator`, as many as fit in one TXT value, then `+N` for the
/// N left out.
fn fit_txt(entries: impl ExactSizeIterator<Item = String>, separator: &str) -> String {
    let total = entries.len();
    let mut text = String::new();
    for (i, entry) in entries.enumerate() {
        let more = format!("{separator}+{}", total - i);
        if text.len() + separator.len() + entry.len() + more.len() > TXT_VALUE_MAX {
            text.push_str(if text.is_empty() {
                &more[separator.len()..]
            } else {
                &more
            });
            break;
        }
        if !text.is_empty() {
            text.push_str(separator);
        }
        text.push_str(&entry);
    }
    text
}

/// The `rates` TXT value: `KERNEL@PACKAGE/DEVICE=ITEMS_PER_S` entries separated by
/// commas (package: the first 8 hex digits of its hash; rate per worker, rounded), as
/// many as fit in one TXT string, then `+N` for the N left out. The hello carries them
/// all with full hashes; this is for people reading `offload nodes`.
pub fn rates_txt(rates: &[TunedRate]) -> String {
    let entries = rates.iter().map(|rate| {
        let hex: String = rate.package[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "{}@{hex}/{}={:.0}",
            rate.kernel, rate.device, rate.items_per_s
        )
    });
    fit_txt(entries, ",")
}

/// The `opencl` TXT value: `NAME (KIND, N CU)` per OpenCL device the node serves,
/// separated by `; `, as many as fit in one TXT string, then `+N` for the rest.
pub fn opencl_txt(devices: &[OpenClDevice]) -> String {
    let entries = devices.iter().map(|device| {
        format!(
            "{} ({}, {} CU)",
            device.name, device.kind, device.compute_units
        )
    });
    fit_txt(entries, "; ")
}

/// An active advertisement; dropping it withdraws the service.
pub struct Advertisement {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Advertisement {
    /// The advertised service instance's full name.
    pub fn instance(&self) -> &str {
        &self.fullname
    }
}

impl Drop for Advertisement {
    fn drop(&mut self) {
        let _ = self.daemon.unregister(&self.fullname);
        let _ = self.daemon.shutdown();
    }
}

/// Advertises the node `info` listening on `addr`, member of the cluster whose CA has
/// the SHA-256 fingerprint `ca`.
pub fn advertise(
    info: &NodeInfo,
    addr: SocketAddr,
    ca: &str,
) -> Result<Advertisement, DiscoveryError> {
    let daemon = ServiceDaemon::new()?;
    let loopback = addr.ip().is_loopback();
    if loopback {
        daemon.disable_interface(IfKind::All)?;
        daemon.enable_interface(IfKind::LoopbackV4)?;
    }
    let mut properties = std::collections::HashMap::new();
    properties.insert("name".to_string(), info.name.clone());
    properties.insert("arch".to_string(), info.arch.clone());
    properties.insert("cpu".to_string(), info.cpu.clone());
    properties.insert("features".to_string(), info.features.clone());
    let devices = if info.opencl.is_empty() {
        format!("cpu:{}", info.cores)
    } else {
        properties.insert("opencl".to_string(), opencl_txt(&info.opencl));
        format!("cpu:{},opencl:{}", info.cores, info.opencl.len())
    };
    properties.insert("devices".to_string(), devices);
    properties.insert("version".to_string(), VERSION.to_string());
    properties.insert("ca".to_string(), ca.to_string());
    if !info.rates.is_empty() {
        properties.insert("rates".to_string(), rates_txt(&info.rates));
    }
    // Only the exception is advertised: a node that runs kernels without a sandbox.
    if !info.sandboxed {
        properties.insert("sandbox".to_string(), "off".to_string());
    }
    let instance = format!("{}-{}", info.name, addr.port());
    let host = format!("{}.local.", info.name);
    let service = if addr.ip().is_unspecified() {
        ServiceInfo::new(SERVICE_TYPE, &instance, &host, "", addr.port(), properties)?
            .enable_addr_auto()
    } else {
        ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            addr.ip(),
            addr.port(),
            properties,
        )?
    };
    let fullname = service.get_fullname().to_string();
    daemon.register(service)?;
    Ok(Advertisement { daemon, fullname })
}

/// A node found by discovery.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundNode {
    /// The service instance name.
    pub instance: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// The TXT records.
    pub properties: BTreeMap<String, String>,
}

/// Browses for `window` and returns the nodes found, on every interface and loopback;
/// `loopback_only` restricts mDNS to the loopback interface (tests).
pub fn browse(window: Duration, loopback_only: bool) -> Result<Vec<FoundNode>, DiscoveryError> {
    let daemon = ServiceDaemon::new()?;
    if loopback_only {
        daemon.disable_interface(IfKind::All)?;
    }
    // Nodes on this machine advertise on loopback; multicast there stays on the host.
    daemon.enable_interface(IfKind::LoopbackV4)?;
    let events = daemon.browse(SERVICE_TYPE)?;
    let deadline = Instant::now() + window;
    let mut found: BTreeMap<String, FoundNode> = BTreeMap::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(ServiceEvent::ServiceResolved(info)) => {
                let properties: BTreeMap<String, String> = info
                    .get_properties()
                    .iter()
                    .map(|p| (p.key().to_string(), p.val_str().to_string()))
                    .collect();
                // Prefer IPv4, then any address.
                let mut addrs: Vec<IpAddr> = info.get_addresses().iter().copied().collect();
                addrs.sort_by_key(|a| (!a.is_ipv4(), *a));
                if let Some(ip) = addrs.first() {
                    let instance = info.get_fullname().to_string();
                    found.insert(
                        instance.clone(),
                        FoundNode {
                            instance,
                            addr: SocketAddr::new(*ip, info.get_port()),
                            properties,
                        },
                    );
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = daemon.stop_browse(SERVICE_TYPE);
    let _ = daemon.shutdown();
    Ok(found.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(kernel: &str, items_per_s: f64) -> TunedRate {
        TunedRate {
            package: [0xab; 32],
            kernel: kernel.into(),
            device: "cpu".into(),
            items_per_s,
        }
    }

    #[test]
    fn sources_parse_and_print_back() {
        for text in [
            "mdns",
            "dns:offload-nodes.offload.svc.cluster.local",
            "dns:nodes.test:7001@127.0.0.1:5353",
            "dns:nodes.test@[::1]:53",
            "file:/etc/offload/peers",
        ] {
            let source: Source = text.parse().expect(text);
            assert_eq!(source.to_string(), text);
        }
        assert_eq!(
            "dns:n.test@10.0.0.1".parse::<Source>(),
            Ok(Source::Dns {
                name: "n.test".into(),
                port: None,
                server: Some("10.0.0.1:53".parse().expect("addr")),
            })
        );
        for bad in [
            "dns:",
            "dns:a b",
            "dns:n:x",
            "dns:n@nowhere",
            "file:",
            "ldap:x",
        ] {
            assert!(bad.parse::<Source>().is_err(), "{bad}");
        }
    }

    #[test]
    fn other_clusters_nodes_are_skipped_on_the_whole_fingerprint() {
        let ours = "AB:CD:EF";
        let node = |name: &str, ca: Option<&str>| FoundNode {
            instance: name.into(),
            addr: "127.0.0.1:7000".parse().expect("addr"),
            properties: [("name".to_string(), name.to_string())]
                .into_iter()
                .chain(ca.map(|c| ("ca".to_string(), c.to_string())))
                .collect(),
        };
        let (members, others) = split_by_cluster(
            vec![
                node("mine", Some("abcdef")),
                // Shares a prefix (an abbreviation would match): not ours.
                node("near", Some("AB:CD:EF:01")),
                node("old", None),
            ],
            ours,
        );
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].instance, "mine");
        assert!(others[0].contains("near") && others[0].contains("another cluster"));
        assert!(others[1].contains("old") && others[1].contains("no cluster CA"));
    }

    #[test]
    fn peers_files_list_hosts_and_say_which_line_is_wrong() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("peers");
        std::fs::write(
            &path,
            "# the fleet\n127.0.0.1:7001\n\n127.0.0.2  # default port\n",
        )
        .expect("write");
        let peers = read_peers_file(&path).expect("read");
        assert_eq!(
            peers,
            [
                "127.0.0.1:7001".parse::<SocketAddr>().expect("addr"),
                "127.0.0.2:7878".parse().expect("addr")
            ]
        );
        std::fs::write(&path, "127.0.0.1:7001\nno such host name.invalid\n").expect("write");
        let text = read_peers_file(&path).expect_err("bad line").to_string();
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn opencl_txt_names_devices_and_fits_one_txt_string() {
        let device = |name: &str| OpenClDevice {
            name: name.into(),
            kind: "gpu".into(),
            compute_units: 40,
        };
        assert_eq!(
            opencl_txt(&[device("A"), device("B")]),
            "A (gpu, 40 CU); B (gpu, 40 CU)"
        );
        let many: Vec<OpenClDevice> = (0..20).map(|i| device(&format!("card {i:02}"))).collect();
        let text = opencl_txt(&many);
        assert!(text.len() <= TXT_VALUE_MAX, "{} bytes", text.len());
        assert!(text.starts_with("card 00 (gpu, 40 CU)"), "{text}");
        // Every device is either listed or counted in the `+N` at the end.
        let (listed, rest) = text.rsplit_once("; +").expect("a `+N` for the rest");
        let left_out: usize = rest.parse().expect("N");
        assert_eq!(listed.split("; ").count() + left_out, many.len(), "{text}");
    }

    #[test]
    fn rates_txt_lists_entries_and_fits_one_txt_string() {
        assert_eq!(
            rates_txt(&[rate("saxpy", 1.5e8), rate("dot", 2e6)]),
            "saxpy@abababab/cpu=150000000,dot@abababab/cpu=2000000"
        );
        let many: Vec<TunedRate> = (0..40).map(|i| rate(&format!("kernel{i}"), 1e6)).collect();
        let text = rates_txt(&many);
        assert!(text.len() <= TXT_VALUE_MAX, "{} bytes", text.len());
        let shown = text.split(',').filter(|e| !e.starts_with('+')).count();
        assert!(shown > 0);
        assert!(text.ends_with(&format!(",+{}", 40 - shown)), "{text}");
    }
}
