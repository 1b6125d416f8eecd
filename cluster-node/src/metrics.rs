//! The node's counters and gauges, kept in a [`prometheus_client`] registry, and the
//! small HTTP endpoint that serves them (`offload node --metrics ADDR`).
//!
//! The same counters feed `offload status` ([`cluster::protocol::NodeStatus`]), so the two
//! views never disagree. Metrics (all prefixed `offload_`):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `packets_total` | counter | `outcome`: `done`, `failed`, `paused`, `cancelled` |
//! | `items_total` | counter | (items of the packets answered with results) |
//! | `received_bytes_total`, `sent_bytes_total` | counter | (request and response bodies, raw buffers) |
//! | `queue_depth` | gauge | (packets waiting for a worker) |
//! | `packets_in_progress` | gauge | (received, not answered yet) |
//! | `device_busy_seconds_total` | counter | `device`: `cpu0`..., `opencl0`... |
//! | `kernel_loads_total`, `kernel_load_seconds_total` | counter | `origin`: `compiled`, `disk-cache`, `memory-cache`, `opencl` |
//! | `package_cache_total`, `buffer_cache_total` | counter | `result`: `hit`, `miss` |
//! | `connections` | gauge | (members connected) |
//! | `refused_connections_total` | counter | (handshakes and hellos refused) |
//! | `paused` | gauge | (1 while the owner's load pauses the node or it drains) |
//! | `revocation_list_number` | gauge | (0 without a list) |
//! | `start_time_seconds` | gauge | (Unix time the node started) |
//! | `node_info` | info | `name`, `version`, `arch`, `cpu` |
//!
//! The endpoint answers `GET /metrics` in the Prometheus text format (version 0.0.4),
//! or in OpenMetrics when the request's `Accept` header asks for
//! `application/openmetrics-text`, and `GET /healthz` with `ok` (for probes); anything
//! else gets 404. One request per connection, at most 8 KiB of request head, 5 s to
//! send it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `outcome` of a packet.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    outcome: &'static str,
}

/// A worker (`device`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DeviceLabel {
    device: String,
}

/// Where a loaded kernel's code came from (`origin`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OriginLabel {
    origin: String,
}

/// A cache lookup's `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    result: &'static str,
}

/// The node's description (`node_info`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    name: String,
    version: String,
    arch: String,
    cpu: String,
}

/// How a packet ended, for [`NodeMetrics::packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PacketOutcome {
    Done,
    Failed,
    Paused,
    Cancelled,
}

impl PacketOutcome {
    fn label(self) -> OutcomeLabel {
        let outcome = match self {
            PacketOutcome::Done => "done",
            PacketOutcome::Failed => "failed",
            PacketOutcome::Paused => "paused",
            PacketOutcome::Cancelled => "cancelled",
        };
        OutcomeLabel { outcome }
    }
}

/// Every metric of a node.
pub(crate) struct NodeMetrics {
    registry: Registry,
    packets: Family<OutcomeLabel, Counter>,
    pub(crate) items: Counter,
    pub(crate) received_bytes: Counter,
    pub(crate) sent_bytes: Counter,
    pub(crate) queue_depth: Gauge,
    pub(crate) in_progress: Gauge,
    device_busy: Family<DeviceLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    kernel_loads: Family<OriginLabel, Counter>,
    kernel_load_seconds: Family<OriginLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    package_cache: Family<ResultLabel, Counter>,
    buffer_cache: Family<ResultLabel, Counter>,
    pub(crate) connections: Gauge,
    pub(crate) refused: Counter,
    pub(crate) paused: Gauge,
    pub(crate) revocation_list: Gauge,
}

impl NodeMetrics {
    /// A registry for the node `name` (`version`, `arch`, `cpu`), started at Unix time
    /// `started`.
    pub(crate) fn new(name: &str, arch: &str, cpu: &str, started: i64) -> NodeMetrics {
        let mut metrics = NodeMetrics {
            registry: Registry::with_prefix("offload"),
            packets: Family::default(),
            items: Counter::default(),
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            queue_depth: Gauge::default(),
            in_progress: Gauge::default(),
            device_busy: Family::default(),
            kernel_loads: Family::default(),
            kernel_load_seconds: Family::default(),
            package_cache: Family::default(),
            buffer_cache: Family::default(),
            connections: Gauge::default(),
            refused: Counter::default(),
            paused: Gauge::default(),
            revocation_list: Gauge::default(),
        };
        let r = &mut metrics.registry;
        r.register(
            "packets",
            "Packets answered, by outcome",
            metrics.packets.clone(),
        );
        r.register(
            "items",
            "Items of the packets answered with results",
            metrics.items.clone(),
        );
        r.register(
            "received_bytes",
            "Bytes received in requests (frames and raw buffers)",
            metrics.received_bytes.clone(),
        );
        r.register(
            "sent_bytes",
            "Bytes sent in responses",
            metrics.sent_bytes.clone(),
        );
        r.register(
            "queue_depth",
            "Packets waiting for a worker",
            metrics.queue_depth.clone(),
        );
        r.register(
            "packets_in_progress",
            "Packets received and not answered yet",
            metrics.in_progress.clone(),
        );
        r.register(
            "device_busy_seconds",
            "Seconds each worker spent running packets",
            metrics.device_busy.clone(),
        );
        r.register(
            "kernel_loads",
            "Kernels loaded into workers, by where the code came from",
            metrics.kernel_loads.clone(),
        );
        r.register(
            "kernel_load_seconds",
            "Seconds spent loading kernels (compiling, or reading the code cache)",
            metrics.kernel_load_seconds.clone(),
        );
        r.register(
            "package_cache",
            "Package lookups by clients, by result",
            metrics.package_cache.clone(),
        );
        r.register(
            "buffer_cache",
            "Whole-buffer lookups by clients, by result",
            metrics.buffer_cache.clone(),
        );
        r.register(
            "connections",
            "Members connected",
            metrics.connections.clone(),
        );
        r.register(
            "refused_connections",
            "Connections refused (certificate or protocol version)",
            metrics.refused.clone(),
        );
        r.register(
            "paused",
            "1 while the node takes no packets (its owner is busy, or it drains)",
            metrics.paused.clone(),
        );
        r.register(
            "revocation_list_number",
            "The CRL number of the revocation list in use (0: none)",
            metrics.revocation_list.clone(),
        );
        let start: Gauge = Gauge::default();
        start.set(started);
        r.register(
            "start_time_seconds",
            "Unix time at which the node started",
            start,
        );
        r.register(
            "node",
            "The node's name, offload version, target and CPU",
            Info::new(InfoLabels {
                name: name.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                arch: arch.to_string(),
                cpu: cpu.to_string(),
            }),
        );
        metrics
    }

    /// Counts a packet's outcome.
    pub(crate) fn packet(&self, outcome: PacketOutcome) {
        self.packets.get_or_create(&outcome.label()).inc();
    }

    /// Packets that ended with `outcome` so far.
    pub(crate) fn packets(&self, outcome: PacketOutcome) -> u64 {
        self.packets.get_or_create(&outcome.label()).get()
    }

    /// Adds `seconds` of packet time to worker `device` (`cpu3`, `opencl0`).
    pub(crate) fn busy(&self, device: &str, seconds: f64) {
        self.device_busy
            .get_or_create(&DeviceLabel {
                device: device.to_string(),
            })
            .inc_by(seconds);
    }

    /// Counts a kernel load from `origin` that took `seconds`.
    pub(crate) fn kernel_load(&self, origin: &str, seconds: f64) {
        let label = OriginLabel {
            origin: origin.to_string(),
        };
        self.kernel_loads.get_or_create(&label).inc();
        self.kernel_load_seconds
            .get_or_create(&label)
            .inc_by(seconds);
    }

    /// Counts a package lookup.
    pub(crate) fn package_lookup(&self, hit: bool) {
        self.package_cache.get_or_create(&hit_or_miss(hit)).inc();
    }

    /// Counts a whole-buffer lookup.
    pub(crate) fn buffer_lookup(&self, hit: bool) {
        self.buffer_cache.get_or_create(&hit_or_miss(hit)).inc();
    }

    /// The metrics in the Prometheus text format (0.0.4), or OpenMetrics.
    pub(crate) fn encode(&self, openmetrics: bool) -> String {
        let mut text = String::new();
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        };
        if let Err(e) = encoded {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        text
    }
}

fn hit_or_miss(hit: bool) -> ResultLabel {
    ResultLabel {
        result: if hit { "hit" } else { "miss" },
    }
}

/// Largest request head the endpoint reads.
const MAX_REQUEST_HEAD: usize = 8 << 10;
/// Time a scraper has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the metrics endpoint on `addr`; returns the listener and its address.
pub(crate) async fn bind(
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `metrics` on `listener` until the node stops.
pub(crate) async fn serve(listener: tokio::net::TcpListener, metrics: Arc<NodeMetrics>) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("metrics endpoint: {e}");
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let answer = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
                Ok(Ok(head)) => respond(&head, &metrics),
                Ok(Err(e)) => {
                    tracing::debug!("metrics request from {peer}: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(
                        "metrics request from {peer}: not sent within {REQUEST_TIMEOUT:?}"
                    );
                    return;
                }
            };
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Reads a request head (up to the blank line), at most [`MAX_REQUEST_HEAD`] bytes.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the end of the request head".into());
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(String::from_utf8_lossy(&head).into_owned());
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Err(format!("request head over {MAX_REQUEST_HEAD} bytes"));
        }
    }
}

/// The HTTP response to a request head.
fn respond(head: &str, metrics: &NodeMetrics) -> String {
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let openmetrics = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    });
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") if openmetrics => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(true),
        ),
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(false),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_string()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: the metrics are at /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET is served\n".to_string(),
        ),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_served_in_the_prometheus_text_format_and_openmetrics_on_request() {
        let metrics = NodeMetrics::new("n1", "x86_64-unknown-linux-gnu", "znver5", 1_700_000_000);
        metrics.packet(PacketOutcome::Done);
        metrics.packet(PacketOutcome::Done);
        metrics.packet(PacketOutcome::Paused);
        metrics.items.inc_by(4096);
        metrics.busy("cpu0", 0.25);
        metrics.kernel_load("compiled", 1.5);
        assert_eq!(metrics.packets(PacketOutcome::Done), 2);
        let answer = respond("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &metrics);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("Content-Type: text/plain; version=0.0.4"),
            "{answer}"
        );
        for line in [
            "offload_packets_total{outcome=\"done\"} 2",
            "offload_packets_total{outcome=\"paused\"} 1",
            "offload_items_total 4096",
            "offload_device_busy_seconds_total{device=\"cpu0\"} 0.25",
            "offload_kernel_loads_total{origin=\"compiled\"} 1",
            "offload_start_time_seconds 1700000000",
            "# TYPE offload_queue_depth gauge",
        ] {
            assert!(answer.contains(line), "no `{line}` in:\n{answer}");
        }
        assert!(answer.contains("name=\"n1\""), "{answer}");
        let open = respond(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
            &metrics,
        );
        assert!(open.contains("application/openmetrics-text"), "{open}");
        assert!(open.trim_end().ends_with("# EOF"), "{open}");
        assert!(respond("GET /healthz HTTP/1.1\r\n\r\n", &metrics).ends_with("ok\n"));
        assert!(respond("GET /other HTTP/1.1\r\n\r\n", &metrics).starts_with("HTTP/1.1 404"));
        assert!(respond("POST /metrics HTTP/1.1\r\n\r\n", &metrics).starts_with("HTTP/1.1 405"));
    }
}
