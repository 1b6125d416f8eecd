//! DNS discovery (`--discover dns:NAME`): the nodes behind a name, for fleets that mDNS
//! does not reach (other subnets, Kubernetes pod networks without multicast).
//!
//! First the SRV records `_offload._udp.NAME`: each names a target host and a port
//! (what a Kubernetes headless Service publishes for a port named `offload` with
//! protocol UDP); the targets' A/AAAA records give the addresses. Without SRV records,
//! the A/AAAA records of NAME itself are used with the given port (a headless Service
//! also publishes one A record per ready pod). Queries go to the system's resolver
//! (`/etc/resolv.conf`) or to one server given as `@SERVER[:PORT]`. Lookups use
//! hickory-resolver on a runtime of their own, on a thread of their own, so they work
//! from any caller, inside a tokio runtime or not.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;

use crate::discovery::DiscoveryError;

/// The nodes behind `name`: SRV records `_offload._udp.NAME` (targets resolved), else
/// `name`'s A/AAAA records with `port`. `server` replaces the system's resolver. Sorted,
/// without duplicates; empty when the name exists but has none of these records.
pub fn resolve(
    name: &str,
    port: u16,
    server: Option<SocketAddr>,
) -> Result<Vec<SocketAddr>, DiscoveryError> {
    let failed = |reason: String| DiscoveryError::Dns {
        name: name.to_string(),
        reason,
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| failed(format!("cannot start a runtime: {e}")))?;
                runtime.block_on(lookup(name, port, server))
            })
            .join()
            .unwrap_or_else(|_| Err(failed("the lookup thread panicked".into())))
    })
}

/// How long one query may take, and how often it is tried.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const ATTEMPTS: usize = 2;

async fn lookup(
    name: &str,
    port: u16,
    server: Option<SocketAddr>,
) -> Result<Vec<SocketAddr>, DiscoveryError> {
    let failed = |reason: String| DiscoveryError::Dns {
        name: name.to_string(),
        reason,
    };
    let mut builder = match server {
        Some(server) => {
            let group = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), group),
                TokioConnectionProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| {
            failed(format!(
                "cannot read the system's resolver configuration: {e}"
            ))
        })?,
    };
    let options = builder.options_mut();
    options.timeout = QUERY_TIMEOUT;
    options.attempts = ATTEMPTS;
    let resolver = builder.build();
    let mut found: Vec<SocketAddr> = Vec::new();
    let service = format!("_offload._udp.{name}");
    // A server that refuses or fails the SRV query (many answer only what they hold)
    // still gets asked for A/AAAA records; its SRV error is told only if those fail too.
    let srv_error = match resolver.srv_lookup(service.as_str()).await {
        Ok(records) => {
            for srv in records.iter() {
                let target = srv.target().to_ascii();
                let ips = resolver
                    .lookup_ip(target.as_str())
                    .await
                    .map_err(|e| failed(format!("SRV target {target}: {e}")))?;
                found.extend(ips.iter().map(|ip| SocketAddr::new(ip, srv.port())));
            }
            None
        }
        Err(e) if e.is_no_records_found() => None,
        Err(e) => Some(format!("SRV {service}: {e}")),
    };
    if found.is_empty() {
        match resolver.lookup_ip(name).await {
            Ok(ips) => found.extend(ips.iter().map(|ip: IpAddr| SocketAddr::new(ip, port))),
            Err(e) if e.is_no_records_found() && srv_error.is_none() => {}
            Err(e) => {
                let also = srv_error.map(|s| format!("; {s}")).unwrap_or_default();
                return Err(failed(format!("{e}{also}")));
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}
