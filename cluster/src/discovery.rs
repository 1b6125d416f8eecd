//! Zeroconf: nodes advertise `_offload._udp.local.` by mDNS/DNS-SD (mdns-sd), clients
//! browse for it.
//!
//! TXT records: `arch` (target triple), `cpu` (LLVM CPU name), `features` (abbreviated
//! ISA extensions), `devices` (`cpu:N`, or `cpu:N,opencl:M` for a node serving M
//! OpenCL devices), `version` (protocol), `name`, `opencl` (the OpenCL devices,
//! [`opencl_txt`]) when it serves any, and `rates` when the node has tuned rates
//! ([`rates_txt`]). The port is the service's port.
//! A node that listens on a loopback address advertises on loopback only.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::protocol::{NodeInfo, OpenClDevice, TunedRate, VERSION};

/// The DNS-SD service type.
pub const SERVICE_TYPE: &str = "_offload._udp.local.";

/// Discovery failed.
#[derive(Debug, thiserror::Error)]
#[error("mDNS: {0}")]
pub struct DiscoveryError(String);

impl From<mdns_sd::Error> for DiscoveryError {
    fn from(e: mdns_sd::Error) -> Self {
        DiscoveryError(e.to_string())
    }
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

impl Drop for Advertisement {
    fn drop(&mut self) {
        let _ = self.daemon.unregister(&self.fullname);
        let _ = self.daemon.shutdown();
    }
}

/// Advertises the node `info` listening on `addr`.
pub fn advertise(info: &NodeInfo, addr: SocketAddr) -> Result<Advertisement, DiscoveryError> {
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
    if !info.rates.is_empty() {
        properties.insert("rates".to_string(), rates_txt(&info.rates));
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
