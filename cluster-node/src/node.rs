//! The node agent: serves this machine's CPU (and, with [`NodeConfig::opencl`], its
//! OpenCL devices) to cluster members over QUIC.
//!
//! Packets run in worker processes (see [`crate::worker`]), one per core given to the
//! cluster, so a kernel that crashes or hangs costs one worker, never the node: the
//! packet is reported failed with the reason, the worker is started again, and the node
//! goes on serving. Owner controls: the number of workers (`cores`), nice 19 for the
//! workers, an idle-only pause on the machine's load (a paused node answers packets
//! [`Response::Paused`] at once, so clients run them elsewhere), and a bandwidth cap on
//! results.
//!
//! Operation: the node answers [`Request::Status`] (`offload status`), counts what it
//! does in the `metrics` module (served over HTTP with [`NodeConfig::metrics`]), reads its
//! revocation list again every second and on SIGHUP (a changed list applies to the next
//! handshake, and connections of members it revokes are closed), and drains on SIGTERM
//! or SIGINT: running packets finish, new ones are answered paused, then it exits (a
//! second signal exits at once).
//!
//! OpenCL devices get one worker process each (`offload __worker --opencl-device N`),
//! in a pool of their own: a client sends a packet to the CPU workers or to one device
//! ([`Request::Run`]'s `device`). A job's kernel is loaded on every device at prepare
//! time; a device that cannot lower or build it is left out of that job (logged) and
//! the job runs on the CPU workers and the other devices.
//!
//! Sandbox: every worker confines itself once its kernel code is loaded (see
//! [`crate::worker`] and the `sandbox` crate): a CPU worker serves one package, an
//! OpenCL worker one kernel, and the node starts a fresh worker for another. Each worker
//! gets a pipe as its fd 3 on which the sandbox reports a forbidden system call; the
//! node reads it when the worker dies, so the packet fails with
//! `kernel `K` made a forbidden system call (openat)`. Where this kernel lacks seccomp or
//! Landlock the node refuses to serve unless told [`NodeConfig::unsandboxed`], and says
//! so in its status and its mDNS record.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ir_packager::Package;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{watch, Mutex, Semaphore};

use crate::buffer_cache::{self, lock, BufferCache, ConnectionId};
use cluster::credentials::Credentials;
use cluster::protocol::{
    self, FromWorker, Hash, Hello, HelloReply, NodeInfo, NodeState, Request, Response, ToWorker,
    WireArg, MAX_CONTROL, MAX_DATA,
};
use cluster::wire::{self, WireError};

/// How a node runs. Every setter documents its default.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    listen: SocketAddr,
    credentials: Credentials,
    cores: usize,
    idle_only: Option<f64>,
    max_bandwidth: Option<u64>,
    packet_timeout: Duration,
    idle_timeout: Duration,
    worker_program: PathBuf,
    worker_args: Vec<OsString>,
    name: String,
    advertise: bool,
    rates: Vec<protocol::TunedRate>,
    opencl: bool,
    faults: crate::fault::Faults,
    package_cache_bytes: usize,
    buffer_cache_bytes: usize,
    worker_memory_bytes: u64,
    metrics: Option<SocketAddr>,
    unsandboxed: bool,
}

impl NodeConfig {
    /// A node on `listen` with cluster `credentials`, running workers with
    /// `worker_program worker_args...` (the `offload __worker` command).
    pub fn new(
        listen: SocketAddr,
        credentials: Credentials,
        worker_program: impl Into<PathBuf>,
        worker_args: Vec<OsString>,
    ) -> NodeConfig {
        NodeConfig {
            name: credentials.name(),
            listen,
            credentials,
            cores: node_jit::available_threads(),
            idle_only: None,
            max_bandwidth: None,
            packet_timeout: Duration::from_secs(300),
            idle_timeout: wire::DEFAULT_IDLE,
            worker_program: worker_program.into(),
            worker_args,
            advertise: true,
            rates: Vec::new(),
            opencl: false,
            faults: crate::fault::Faults::default(),
            package_cache_bytes: 256 << 20,
            buffer_cache_bytes: 4 << 30,
            worker_memory_bytes: 2 << 30,
            metrics: None,
            unsandboxed: false,
        }
    }

    /// Run kernel workers without the sandbox (`offload node --unsandboxed`): the only
    /// way to serve where this kernel lacks seccomp or Landlock, shown as `unsandboxed`
    /// by `offload status` and `offload nodes`. Default: off (the node sandboxes its
    /// workers, and refuses to serve where it cannot).
    pub fn unsandboxed(mut self, on: bool) -> Self {
        self.unsandboxed = on;
        self
    }

    /// Serve the node's metrics in the Prometheus text format on this TCP address
    /// (`GET /metrics`, see the `metrics` module); the node prints
    /// `metrics on http://ADDR/metrics` once it listens. Default: none.
    pub fn metrics(mut self, addr: Option<SocketAddr>) -> Self {
        self.metrics = addr;
        self
    }

    /// Faults to inject (test builds only, see [`crate::fault`]). Default: none.
    pub fn faults(mut self, faults: crate::fault::Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Cap on the bytes of packages kept for later jobs; the least recently used that no
    /// prepared job holds go first. Default: 256 MiB.
    pub fn package_cache_bytes(mut self, bytes: usize) -> Self {
        self.package_cache_bytes = bytes;
        self
    }

    /// Cap on the bytes of whole buffers kept for later jobs (and per worker process);
    /// the least recently used that no prepared job holds go first. Default: 4 GiB.
    pub fn buffer_cache_bytes(mut self, bytes: usize) -> Self {
        self.buffer_cache_bytes = bytes;
        self
    }

    /// A worker process whose resident memory grows past this is started afresh before
    /// its next kernel is loaded (compilers and loaded kernels only grow). Default: 2 GiB.
    pub fn worker_memory_bytes(mut self, bytes: u64) -> Self {
        self.worker_memory_bytes = bytes;
        self
    }

    /// Worker processes (packets run at once). Default: every core.
    pub fn cores(mut self, cores: usize) -> Self {
        self.cores = cores.max(1);
        self
    }

    /// Take no new packets while the machine's load (1-minute average, minus this
    /// node's busy workers) is above `threshold`. Default: off.
    pub fn idle_only(mut self, threshold: Option<f64>) -> Self {
        self.idle_only = threshold;
        self
    }

    /// Cap on bytes per second sent back to clients. Default: none.
    pub fn max_bandwidth(mut self, bytes_per_s: Option<u64>) -> Self {
        self.max_bandwidth = bytes_per_s.filter(|&b| b > 0);
        self
    }

    /// Time a packet may run before its worker is killed. Default: 300 s.
    pub fn packet_timeout(mut self, timeout: Duration) -> Self {
        self.packet_timeout = timeout;
        self
    }

    /// The node's name in logs, discovery and status. Default: its certificate's name
    /// (the identity's common name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Advertise by mDNS. Default: on.
    pub fn advertise(mut self, on: bool) -> Self {
        self.advertise = on;
        self
    }

    /// Tuned rates to advertise (mDNS and hello), per worker: clients use them as their
    /// first estimate of this node's speed on those kernels. Default: none.
    pub fn rates(mut self, rates: Vec<protocol::TunedRate>) -> Self {
        self.rates = rates;
        self
    }

    /// Also serve every OpenCL device of this machine, one worker process each, started
    /// as the worker command plus `--opencl-device N`. Default: off (PoCL's CPU device
    /// shares the cores the CPU workers use; a GPU node turns it on).
    pub fn opencl(mut self, on: bool) -> Self {
        self.opencl = on;
        self
    }
}

/// Why a node stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The endpoint could not be made.
    #[error(transparent)]
    Endpoint(#[from] wire::EndpointError),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The JIT could not start (to describe this CPU).
    #[error(transparent)]
    Jit(#[from] node_jit::JitError),
    /// This kernel cannot sandbox workers and the node was not told to serve unsandboxed.
    #[error("cannot sandbox kernel workers on this machine ({support}); start the node with --unsandboxed to serve without the sandbox")]
    Unsandboxable {
        /// What the kernel offers, in words.
        support: String,
    },
    /// The metrics endpoint could not listen.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Runs a node until the process is stopped. Prints `listening on ADDR` on stdout once
/// it accepts connections (tests and scripts wait for that line).
pub fn run(config: NodeConfig) -> Result<(), NodeError> {
    // One thread: the node's own work is I/O (kernels run in worker processes), and
    // keeping every task on one thread saves cross-thread wake-ups per packet
    // (measured: about 1.5x the pipelined packet rate of a 2-thread runtime).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NodeError::Runtime)?;
    runtime.block_on(serve(config))
}

async fn serve(config: NodeConfig) -> Result<(), NodeError> {
    let support = config.faults.sandbox_support();
    let sandboxed = !config.unsandboxed;
    if sandboxed && !support.is_complete() {
        return Err(NodeError::Unsandboxable {
            support: support.to_string(),
        });
    }
    // What every worker is told besides the CLI's own arguments: the node's pid (the
    // worker must die with it) or that it runs unsandboxed, and faults to inject.
    let mut worker_args = config.worker_args.clone();
    worker_args.push("--node-pid".into());
    worker_args.push(std::process::id().to_string().into());
    if !sandboxed {
        worker_args.push("--unsandboxed".into());
    }
    worker_args.extend(config.faults.worker_flags().into_iter().map(OsString::from));
    let host = node_jit::HostTarget::detect();
    let mut info = NodeInfo {
        name: config.name.clone(),
        arch: host.triple.clone(),
        cpu: host.cpu.clone(),
        features: cluster::discovery::abbreviate_features(&host.enabled_features()),
        cores: config.cores as u32,
        rates: config.rates.clone(),
        opencl: Vec::new(),
        sandboxed,
    };
    let mut opencl_pools = Vec::new();
    if config.opencl {
        let found = opencl_backend::discover();
        if found.devices.is_empty() {
            tracing::warn!(
                "--opencl: no OpenCL device found{}; serving the CPU workers only",
                found.note.map(|n| format!(" ({n})")).unwrap_or_default()
            );
        }
        for (index, device) in found.devices.iter().enumerate() {
            tracing::info!("serving OpenCL device {index}: {device}");
            info.opencl.push(protocol::OpenClDevice {
                name: device.name.clone(),
                kind: device.kind.to_string(),
                compute_units: device.compute_units,
            });
            let mut args = worker_args.clone();
            args.push("--opencl-device".into());
            args.push(index.to_string().into());
            let limits = WorkerLimits {
                memory_bytes: config.worker_memory_bytes,
                buffer_bytes: config.buffer_cache_bytes,
            };
            opencl_pools.push(WorkerPool::new(
                1,
                &config.worker_program,
                &args,
                limits,
                WorkerKind::OpenCl { sandboxed },
            ));
        }
    }
    let endpoint = wire::server_endpoint(&config.credentials, config.listen, config.idle_timeout)?;
    let local = endpoint
        .local_addr()
        .map_err(|source| wire::EndpointError::Bind {
            addr: config.listen,
            source,
        })?;
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let metrics = Arc::new(crate::metrics::NodeMetrics::new(
        &info.name,
        &info.arch,
        &info.cpu,
        started_unix,
    ));
    if let Some(addr) = config.metrics {
        let (listener, bound) = crate::metrics::bind(addr)
            .await
            .map_err(|source| NodeError::Metrics { addr, source })?;
        // Printed before `listening on`, which tests and scripts wait for.
        println!("metrics on http://{bound}/metrics");
        tracing::info!("serving metrics on http://{bound}/metrics");
        tokio::spawn(crate::metrics::serve(listener, Arc::clone(&metrics)));
    }
    // Tests and scripts read this line to learn the port.
    println!("listening on {local}");
    tracing::info!(
        "node {} serving {} workers on {local} ({} {}); offload {}, protocol version {}",
        info.name,
        config.cores,
        info.arch,
        info.cpu,
        env!("CARGO_PKG_VERSION"),
        protocol::VERSION
    );
    if sandboxed {
        tracing::info!("kernel workers are sandboxed ({support})");
    } else {
        tracing::warn!(
            "kernel workers run UNSANDBOXED (--unsandboxed): a kernel can do whatever this user can ({support})"
        );
    }
    match config.credentials.revocation_list() {
        Some(list) => {
            tracing::info!(
                "revocation list number {} from {}: {} revoked",
                list.number,
                config.credentials.revocation_list_path().display(),
                list.serials.len()
            );
            metrics
                .revocation_list
                .set(i64::try_from(list.number).unwrap_or(i64::MAX));
        }
        None => tracing::info!(
            "no revocation list at {} (checked every second)",
            config.credentials.revocation_list_path().display()
        ),
    }
    let _advert = if config.advertise {
        let ca = config.credentials.ca_fingerprint();
        match cluster::discovery::advertise(&info, local, &ca) {
            Ok(advert) => {
                tracing::info!(
                    "advertising by mDNS as {} (cluster CA {ca})",
                    advert.instance()
                );
                Some(advert)
            }
            Err(e) => {
                tracing::warn!("not advertising by mDNS: {e}");
                None
            }
        }
    } else {
        None
    };
    let limits = WorkerLimits {
        memory_bytes: config.worker_memory_bytes,
        buffer_bytes: config.buffer_cache_bytes,
    };
    let pool = WorkerPool::new(
        config.cores,
        &config.worker_program,
        &worker_args,
        limits,
        WorkerKind::Cpu { sandboxed },
    );
    let (state, _) = watch::channel(NodeState::Serving);
    if let Some(threshold) = config.idle_only {
        tokio::spawn(watch_load(threshold, Arc::clone(&pool), state.clone()));
    }
    if let Some(until) = config.faults.owner_busy() {
        tokio::spawn(pretend_owner_busy(until, state.clone()));
    }
    let shared = Arc::new(Shared {
        info,
        packages: std::sync::Mutex::new(PackageCache::default()),
        package_cache_bytes: config.package_cache_bytes,
        buffers: std::sync::Mutex::new(BufferCache::default()),
        buffer_cache_bytes: config.buffer_cache_bytes,
        in_flight: Semaphore::new(IN_FLIGHT_MIB),
        faults: config.faults.clone(),
        next_connection: std::sync::atomic::AtomicU64::new(0),
        spares: std::sync::Mutex::new(SpareBuffers::default()),
        pool,
        opencl_pools,
        state,
        bucket: config.max_bandwidth.map(TokenBucket::new),
        packet_timeout: config.packet_timeout,
        metrics,
        started: Instant::now(),
        clients: std::sync::Mutex::new(HashMap::new()),
    });
    tokio::spawn(mirror_state(
        shared.state.subscribe(),
        Arc::clone(&shared.metrics),
    ));
    tokio::spawn(watch_revocations(
        config.credentials.clone(),
        config.idle_timeout,
        endpoint.clone(),
        Arc::clone(&shared),
    ));
    let accept = async {
        while let Some(incoming) = endpoint.accept().await {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(connection) => serve_connection(shared, connection).await,
                    // A peer without a certificate signed by the cluster CA (or with a
                    // revoked one) ends here, before it can send a single request.
                    Err(e) => {
                        shared.metrics.refused.inc();
                        tracing::warn!("refused connection from {remote}: {}", describe_refusal(&e))
                    }
                }
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = drain_on_signal(Arc::clone(&shared)) => {}
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"the node is shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    tracing::info!("node {} stopped", shared.info.name);
    Ok(())
}

/// Waits for SIGTERM or SIGINT, then drains: new packets are answered paused, and once
/// the packets in progress are answered (or a second signal comes, or a packet's time
/// limit passes) it returns, so the node exits. Returns never if the signals cannot be
/// watched (the node then stops only when killed, as before).
async fn drain_on_signal(shared: Arc<Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot watch SIGTERM and SIGINT: the node will not drain before it stops");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
    let running = shared.metrics.in_progress.get();
    tracing::info!(
        "draining: {running} packet(s) in progress finish, new packets are answered paused; a second signal stops at once"
    );
    shared.state.send_replace(NodeState::Draining);
    let drained = async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while shared.metrics.in_progress.get() > 0 {
            tick.tick().await;
        }
    };
    tokio::select! {
        () = drained => tracing::info!("drained: no packet in progress"),
        _ = term.recv() => tracing::warn!("second signal: stopping with packets in progress"),
        _ = interrupt.recv() => tracing::warn!("second signal: stopping with packets in progress"),
        () = tokio::time::sleep(shared.packet_timeout) => {
            tracing::warn!("packets still in progress after {:?}: stopping", shared.packet_timeout)
        }
    }
}

/// Reads the revocation list again every second and at once on SIGHUP; a newer list
/// applies to the next handshake, and the connections of members it revokes are
/// closed.
async fn watch_revocations(
    mut credentials: Credentials,
    idle: Duration,
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            () = hup => tracing::info!("SIGHUP: reading the revocation list again"),
        }
        let list = match credentials.reload_revocation_list() {
            Ok(cluster::revocation::Reload::Same) => continue,
            Ok(cluster::revocation::Reload::Refused(reason)) => {
                tracing::warn!("{reason}");
                continue;
            }
            Ok(cluster::revocation::Reload::Newer(list)) => list,
            Err(e) => {
                // Logged once per change of the file would be nicer; the list in use
                // stays either way.
                tracing::warn!("revocation list not reloaded, the one in use stays: {e}");
                continue;
            }
        };
        match wire::server_config(&credentials, idle) {
            Ok(config) => endpoint.set_server_config(Some(config)),
            Err(e) => {
                tracing::warn!("cannot use the new revocation list: {e}");
                continue;
            }
        }
        tracing::info!(
            "revocation list number {} from {}: {} revoked; it applies to every new connection",
            list.number,
            credentials.revocation_list_path().display(),
            list.serials.len()
        );
        shared
            .metrics
            .revocation_list
            .set(i64::try_from(list.number).unwrap_or(i64::MAX));
        if list.revokes(&credentials.serial()) {
            tracing::warn!(
                "this node's own certificate (serial {}) is revoked: members with the new list refuse it",
                credentials.serial()
            );
        }
        let revoked: Vec<(String, quinn::Connection)> = lock(&shared.clients)
            .values()
            .filter(|c| list.revokes(&c.serial))
            .map(|c| (c.identity.clone(), c.connection.clone()))
            .collect();
        for (identity, connection) in revoked {
            tracing::warn!(
                "closing the connection of `{identity}` from {}: its certificate was revoked",
                connection.remote_address()
            );
            connection.close(
                quinn::VarInt::from_u32(3),
                b"this member's certificate was revoked",
            );
        }
    }
}

/// Test builds: pretends the owner keeps the machine busy, until `until` exists (or for
/// good).
async fn pretend_owner_busy(until: Option<PathBuf>, state: watch::Sender<NodeState>) {
    state.send_replace(NodeState::PausedByOwner {
        reason: "fault injection: the owner is busy".into(),
    });
    tracing::info!("fault injection: paused as if by the owner");
    let Some(path) = until else {
        return;
    };
    while !path.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    state.send_if_modified(|s| {
        let paused = matches!(s, NodeState::PausedByOwner { .. });
        if paused {
            *s = NodeState::Serving;
        }
        paused
    });
    tracing::info!("fault injection: the owner is no longer busy: taking packets again");
}

/// A `pre_exec` hook that makes the child process die (SIGKILL) when the thread that
/// starts it ends, and exit at once if the parent died before the hook ran: the
/// sandbox's, which workers and test nodes share.
pub use sandbox::die_with_parent_hook as die_with_parent;

/// Why a connection attempt failed, from the node's side: its verifier refused the
/// client's certificate (the reason says why), or the client refused the node's.
fn describe_refusal(error: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    let tls = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    let plain = cluster::certs::plain;
    match error {
        E::TransportError(e) if tls(e.code) => plain(&e.reason),
        E::ConnectionClosed(close) if tls(close.error_code) => format!(
            "the client refused this node's certificate: {}",
            plain(&String::from_utf8_lossy(&close.reason))
        ),
        other => other.to_string(),
    }
}

struct Shared {
    info: NodeInfo,
    packages: std::sync::Mutex<PackageCache>,
    package_cache_bytes: usize,
    buffers: std::sync::Mutex<BufferCache>,
    buffer_cache_bytes: usize,
    /// MiB of request bodies being received or served at once, over every connection:
    /// 1024 streams of 1 GiB each must not all be allocated at the same time.
    in_flight: Semaphore,
    faults: crate::fault::Faults,
    /// Numbers connections for the buffer cache's trust rule.
    next_connection: std::sync::atomic::AtomicU64,
    spares: std::sync::Mutex<SpareBuffers>,
    pool: Arc<WorkerPool>,
    /// One single-worker pool per OpenCL device, indexed as in [`NodeInfo::opencl`].
    opencl_pools: Vec<Arc<WorkerPool>>,
    /// Whether the node takes packets (its owner's load, a drain).
    state: watch::Sender<NodeState>,
    bucket: Option<TokenBucket>,
    packet_timeout: Duration,
    metrics: Arc<crate::metrics::NodeMetrics>,
    started: Instant,
    /// The members connected now, by connection number (for status and revocation).
    clients: std::sync::Mutex<HashMap<ConnectionId, ClientEntry>>,
}

/// A connected member, as status and revocation see it.
struct ClientEntry {
    identity: String,
    serial: String,
    since: Instant,
    connection: quinn::Connection,
    jobs: Arc<std::sync::Mutex<HashMap<u64, Arc<Job>>>>,
    counters: Arc<ClientCounters>,
}

/// What one member's connection has on the node.
#[derive(Default)]
struct ClientCounters {
    /// Packets received and not answered yet.
    packets: std::sync::atomic::AtomicU32,
    /// Packets answered with results.
    done: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// What the node is doing now.
    fn status(&self) -> protocol::NodeStatus {
        use crate::metrics::PacketOutcome;
        use std::sync::atomic::Ordering::Relaxed;
        let clients = lock(&self.clients)
            .values()
            .map(|c| protocol::ClientActivity {
                identity: c.identity.clone(),
                addr: c.connection.remote_address().to_string(),
                connected_s: c.since.elapsed().as_secs(),
                jobs: lock(&c.jobs).values().map(|j| j.kernel.clone()).collect(),
                packets: c.counters.packets.load(Relaxed),
                packets_done: c.counters.done.load(Relaxed),
            })
            .collect();
        protocol::NodeStatus {
            info: self.info.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            state: self.state.borrow().clone(),
            sandboxed: self.info.sandboxed,
            load: load_average().unwrap_or(0.0),
            uptime_s: self.started.elapsed().as_secs(),
            busy_workers: self.pool.busy.load(Relaxed) as u32,
            queued: u32::try_from(self.metrics.queue_depth.get().max(0)).unwrap_or(u32::MAX),
            packets_done: self.metrics.packets(PacketOutcome::Done),
            packets_failed: self.metrics.packets(PacketOutcome::Failed),
            items_done: self.metrics.items.get(),
            bytes_in: self.metrics.received_bytes.get(),
            bytes_out: self.metrics.sent_bytes.get(),
            clients,
        }
    }
}

/// The machine's 1-minute load average, from `/proc/loadavg`.
fn load_average() -> Option<f64> {
    // A tiny procfs read does not block in practice.
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// MiB of request bodies a node holds at once (see [`Shared::in_flight`]).
const IN_FLIGHT_MIB: usize = 2048;

/// Packages by hash, least recently used first out, never one a prepared job holds.
#[derive(Default)]
struct PackageCache {
    packages: HashMap<Hash, (Arc<Package>, u64)>,
    bytes: usize,
    clock: u64,
}

impl PackageCache {
    fn get(&mut self, hash: &Hash) -> Option<Arc<Package>> {
        self.clock += 1;
        let clock = self.clock;
        self.packages.get_mut(hash).map(|(package, used)| {
            *used = clock;
            Arc::clone(package)
        })
    }

    fn insert(&mut self, package: Package, capacity: usize) {
        let hash = package.hash().0;
        let size = package.as_bytes().len();
        if let Some((old, _)) = self.packages.remove(&hash) {
            self.bytes -= old.as_bytes().len();
        }
        let victims = buffer_cache::lru_victims(
            self.packages
                .iter()
                .map(|(h, (p, used))| (*h, *used, p.as_bytes().len(), Arc::strong_count(p) > 1)),
            self.bytes,
            size,
            capacity,
        );
        for victim in victims {
            if let Some((old, _)) = self.packages.remove(&victim) {
                self.bytes -= old.as_bytes().len();
                tracing::info!("forgot package {} (package cache full)", old.hash());
            }
        }
        self.clock += 1;
        self.bytes += size;
        self.packages.insert(hash, (Arc::new(package), self.clock));
    }
}

/// What a connection's request handlers know of their client: whether it went away
/// (closed the connection, or fell silent: see [`watch_client`]), and how many of its
/// packets are running.
#[derive(Clone)]
struct ClientLink {
    gone: watch::Receiver<bool>,
    running: Arc<std::sync::atomic::AtomicUsize>,
    counters: Arc<ClientCounters>,
    /// `` `NAME` (ADDR) `` for logs.
    peer: String,
}

impl ClientLink {
    /// Resolves once the client is gone.
    async fn gone(&self) {
        let mut gone = self.gone.clone();
        if gone.wait_for(|g| *g).await.is_err() {
            // The watch was dropped with its connection: gone as well.
        }
    }
}

/// A client with packets running that sends nothing for this long is taken for gone:
/// clients send keep-alives every 200 ms (see `wire::transport`), so a second of silence
/// means the process died (SIGKILL sends no goodbye) or was stopped.
const CLIENT_SILENCE: Duration = Duration::from_millis(1000);

/// Watches a connection and reports on `gone` when it closes, or when it stays silent
/// for [`CLIENT_SILENCE`] while its packets run (then the connection is closed too):
/// either way the client's running packets are cancelled and their workers killed.
async fn watch_client(
    connection: quinn::Connection,
    running: Arc<std::sync::atomic::AtomicUsize>,
    gone: watch::Sender<bool>,
    peer: String,
) {
    let mut last_seen = connection.stats().udp_rx.datagrams;
    let mut silent_since = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = connection.closed() => break,
            _ = tick.tick() => {}
        }
        let seen = connection.stats().udp_rx.datagrams;
        if seen != last_seen {
            last_seen = seen;
            silent_since = Instant::now();
            continue;
        }
        let busy = running.load(std::sync::atomic::Ordering::Relaxed);
        if busy > 0 && silent_since.elapsed() >= CLIENT_SILENCE {
            tracing::warn!(
                "client {peer} has been silent for {CLIENT_SILENCE:?} with {busy} packet(s) running: taken for gone; its packets are cancelled"
            );
            connection.close(quinn::VarInt::from_u32(2), b"client silent");
            break;
        }
    }
    let _ = gone.send(true);
}

/// A prepared job of one connection.
struct Job {
    package: Arc<Package>,
    kernel: String,
    items: u64,
    args: Vec<WireArg>,
    /// Whole buffers (hash, bytes) the workers need.
    wholes: Vec<(Hash, Arc<Vec<u8>>)>,
    /// The OpenCL devices that loaded the kernel (indices into `Shared::opencl_pools`).
    opencl: Vec<u32>,
    /// Packets and items answered with results, for the log line at its end.
    packets_done: std::sync::atomic::AtomicU64,
    items_done: std::sync::atomic::AtomicU64,
}

/// The member behind a connection: the common name and serial of the certificate it
/// presented (the handshake verified it).
fn peer_identity(connection: &quinn::Connection) -> (String, String) {
    connection
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| {
            certs
                .first()
                .and_then(|cert| cluster::certs::summarize(cert).ok())
        })
        .map_or_else(
            || ("an unidentified peer".into(), String::new()),
            |cert| (cert.name, cert.serial),
        )
}

/// Serves one member's connection until it closes, and logs how it ended.
async fn serve_connection(shared: Arc<Shared>, connection: quinn::Connection) {
    let (identity, serial) = peer_identity(&connection);
    let peer = format!("`{identity}` ({})", connection.remote_address());
    let connection_id = shared
        .next_connection
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let jobs: Arc<std::sync::Mutex<HashMap<u64, Arc<Job>>>> = Arc::default();
    let counters = Arc::new(ClientCounters::default());
    lock(&shared.clients).insert(
        connection_id,
        ClientEntry {
            identity: identity.clone(),
            serial,
            since: Instant::now(),
            connection: connection.clone(),
            jobs: Arc::clone(&jobs),
            counters: Arc::clone(&counters),
        },
    );
    shared.metrics.connections.inc();
    let ended = serve_requests(&shared, connection_id, &connection, &peer, jobs, &counters).await;
    lock(&shared.clients).remove(&connection_id);
    shared.metrics.connections.dec();
    let done = counters.done.load(std::sync::atomic::Ordering::Relaxed);
    match ended {
        Ok(()) => {}
        Err(WireError::Connection(quinn::ConnectionError::ApplicationClosed(close))) => {
            tracing::info!(
                "member {peer} disconnected ({}); {done} packet(s) answered with results",
                String::from_utf8_lossy(&close.reason)
            )
        }
        Err(e) => tracing::info!(
            "connection of member {peer} ended: {e}; {done} packet(s) answered with results"
        ),
    }
}

async fn serve_requests(
    shared: &Arc<Shared>,
    connection_id: ConnectionId,
    connection: &quinn::Connection,
    peer: &str,
    jobs: Arc<std::sync::Mutex<HashMap<u64, Arc<Job>>>>,
    counters: &Arc<ClientCounters>,
) -> Result<(), WireError> {
    // The hello comes first, on the first stream.
    let (mut send, mut recv) = connection.accept_bi().await?;
    let hello: Hello = wire::recv(&mut recv, MAX_CONTROL).await?;
    if let Err(reason) = protocol::check_hello(&hello) {
        tracing::warn!("refused {peer}: {reason}");
        shared.metrics.refused.inc();
        let reply = HelloReply::Refused {
            version: protocol::VERSION,
            reason,
        };
        wire::send(&mut send, &reply, MAX_CONTROL).await?;
        // Let the refusal reach the client before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
        return Ok(());
    }
    tracing::info!(
        "member {peer} connected (client `{}`, protocol version {})",
        hello.client,
        hello.version
    );
    let reply = HelloReply::Welcome {
        version: protocol::VERSION,
        node: shared.info.clone(),
    };
    wire::send(&mut send, &reply, MAX_CONTROL).await?;
    let (gone_tx, gone) = watch::channel(false);
    let client = ClientLink {
        gone,
        running: Arc::default(),
        counters: Arc::clone(counters),
        peer: peer.to_string(),
    };
    tokio::spawn(watch_client(
        connection.clone(),
        Arc::clone(&client.running),
        gone_tx,
        peer.to_string(),
    ));
    loop {
        let (mut send, mut recv) = connection.accept_bi().await?;
        let shared = Arc::clone(shared);
        let jobs = Arc::clone(&jobs);
        let client = client.clone();
        tokio::spawn(async move {
            let received = wire::recv_request(&mut recv, &shared.in_flight).await;
            let response = match received {
                Ok((request, _budget)) => {
                    handle(&shared, connection_id, &client, &jobs, request, &mut recv).await
                }
                Err(WireError::Decode(e)) => {
                    tracing::warn!("refused a message from {}: {e}", client.peer);
                    Response::Error(format!("refused: {e}"))
                }
                Err(e) => {
                    tracing::debug!("stream ended early: {e}");
                    return;
                }
            };
            let frame = match protocol::encode(&response, MAX_DATA) {
                Ok(frame) => frame,
                Err(e) => match protocol::encode(&Response::Error(e.to_string()), MAX_CONTROL) {
                    Ok(frame) => frame,
                    Err(_) => return,
                },
            };
            if let Some(bucket) = &shared.bucket {
                bucket.take(frame.len() as u64).await;
            }
            shared.metrics.sent_bytes.inc_by(frame.len() as u64);
            if let Err(e) = wire::send_frame(&mut send, &frame).await {
                tracing::debug!("cannot send a response: {e}");
            }
        });
    }
}

/// The approximate size of a request on the wire, for the byte counters.
fn request_bytes(request: &Request) -> u64 {
    match request {
        Request::Package(bytes) => bytes.len() as u64,
        Request::Buffer { len, .. } => *len,
        Request::Run { slices, .. } => slices.iter().map(|s| s.len() as u64).sum(),
        _ => 0,
    }
}

async fn handle(
    shared: &Shared,
    connection: ConnectionId,
    client: &ClientLink,
    jobs: &std::sync::Mutex<HashMap<u64, Arc<Job>>>,
    request: Request,
    recv: &mut quinn::RecvStream,
) -> Response {
    // Frames are small next to the data they carry: count the data.
    shared
        .metrics
        .received_bytes
        .inc_by(request_bytes(&request) + 64);
    match request {
        Request::Ping => Response::Pong,
        Request::Status => Response::Status(Box::new(shared.status())),
        Request::HavePackage(hash) => {
            let has = lock(&shared.packages).get(&hash).is_some();
            shared.metrics.package_lookup(has);
            Response::Has(has)
        }
        Request::HaveBuffer(hash) => {
            let has = buffer_cache::usable(&shared.buffers, hash, connection)
                .await
                .is_some();
            shared.metrics.buffer_lookup(has);
            Response::Has(has)
        }
        Request::Package(bytes) => match Package::from_bytes(&bytes) {
            Ok(package) => {
                let hash = package.hash().0;
                tracing::info!("stored package {} from {}", package.hash(), client.peer);
                lock(&shared.packages).insert(package, shared.package_cache_bytes);
                Response::Stored(hash)
            }
            Err(e) => {
                tracing::warn!("refused a package from {}: {e}", client.peer);
                Response::Error(format!("package refused: {e}"))
            }
        },
        Request::Buffer { len, hash } => {
            let _budget = match wire::reserve(&shared.in_flight, len).await {
                Ok(budget) => budget,
                Err(e) => return Response::Error(format!("buffer upload refused: {e}")),
            };
            let spare = lock(&shared.spares).take(usize::try_from(len).unwrap_or(usize::MAX));
            let bytes = match wire::recv_payload(recv, len, MAX_DATA, spare).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!("refused a buffer upload from {}: {e}", client.peer);
                    return Response::Error(format!("buffer upload refused: {e}"));
                }
            };
            let released =
                lock(&shared.buffers).insert(hash, bytes, connection, shared.buffer_cache_bytes);
            if !released.is_empty() {
                let mut spares = lock(&shared.spares);
                for old in released {
                    spares.give(old);
                }
            }
            Response::Stored(hash)
        }
        Request::Prepare {
            job,
            package,
            kernel,
            items,
            args,
        } => match prepare(shared, connection, package, &kernel, items, args).await {
            Ok(prepared) => {
                tracing::info!(
                    "job {job} of {}: prepared kernel `{kernel}` for {items} items (CPU workers{})",
                    client.peer,
                    prepared
                        .opencl
                        .iter()
                        .map(|i| format!(", OpenCL device {i}"))
                        .collect::<String>()
                );
                let opencl = prepared.opencl.clone();
                lock(jobs).insert(job, Arc::new(prepared));
                Response::Prepared { opencl }
            }
            Err(e) => {
                tracing::warn!("cannot prepare job {job} of {}: {e}", client.peer);
                Response::Error(e)
            }
        },
        Request::EndJob(job) => {
            if let Some(ended) = lock(jobs).remove(&job) {
                use std::sync::atomic::Ordering::Relaxed;
                tracing::info!(
                    "job {job} of {} ended: kernel `{}`, {} packet(s), {} item(s) run here",
                    client.peer,
                    ended.kernel,
                    ended.packets_done.load(Relaxed),
                    ended.items_done.load(Relaxed)
                );
            }
            Response::Prepared { opencl: Vec::new() }
        }
        Request::Run {
            job,
            packet,
            start,
            end,
            device,
            slices,
        } => {
            let Some(job) = lock(jobs).get(&job).cloned() else {
                return Response::Error(format!("job {job} is not prepared on this node"));
            };
            let (pool, label) = match device {
                None => (&shared.pool, "cpu".to_string()),
                Some(index) => match shared.opencl_pools.get(index as usize) {
                    Some(pool) if job.opencl.contains(&index) => (pool, format!("opencl{index}")),
                    _ => {
                        return Response::Error(format!(
                            "OpenCL device {index} of this node does not run job {}'s kernel",
                            job.kernel
                        ))
                    }
                },
            };
            let counters = &client.counters;
            counters
                .packets
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shared.metrics.in_progress.inc();
            let packet = Packet {
                id: packet,
                start,
                end,
                slices,
            };
            let response = run_packet(shared, client, pool, &label, &job, packet).await;
            shared.metrics.in_progress.dec();
            counters
                .packets
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            response
        }
    }
}

/// Checks a job against the package's manifest and compiles its kernel in a worker, so
/// that a compile error fails the job at once.
async fn prepare(
    shared: &Shared,
    connection: ConnectionId,
    package: Hash,
    kernel: &str,
    items: u64,
    args: Vec<WireArg>,
) -> Result<Job, String> {
    let package = lock(&shared.packages)
        .get(&package)
        .ok_or("the package is not on this node: it was not uploaded, or was forgotten to make room (package cache full)")?;
    let spec = package
        .manifest()
        .kernel(kernel)
        .ok_or_else(|| format!("the package has no kernel `{kernel}`"))?;
    if spec.args.len() != args.len() {
        return Err(format!(
            "kernel `{kernel}` takes {} arguments, the job gives {}",
            spec.args.len(),
            args.len()
        ));
    }
    let mut wholes = Vec::new();
    for (arg, wire) in spec.args.iter().zip(&args) {
        if let WireArg::Whole(hash) = wire {
            let bytes = buffer_cache::usable(&shared.buffers, *hash, connection)
                .await
                .ok_or_else(|| {
                    format!(
                        "buffer `{}` is not in this node's cache: it was not uploaded, or \
                         was evicted to make room (this node caches at most {} of whole \
                         buffers)",
                        arg.name,
                        node_jit::describe_bytes(shared.buffer_cache_bytes as u64)
                    )
                })?;
            wholes.push((*hash, bytes));
        }
    }
    let whole_len = |hash: &Hash| {
        wholes
            .iter()
            .find(|(h, _)| h == hash)
            .map(|(_, b)| b.len() as u64)
    };
    protocol::check_wire(spec, items, &args, &whole_len)?;
    check_packet_memory(kernel, &args, shared.pool.size())?;
    let mut job = Job {
        package,
        kernel: kernel.to_string(),
        items,
        args,
        wholes,
        opencl: Vec::new(),
        packets_done: Default::default(),
        items_done: Default::default(),
    };
    let mut worker = shared.pool.acquire().await;
    let loaded = worker.ensure_loaded(&job, &shared.metrics).await;
    shared.pool.release(worker).await;
    loaded?;
    // Each OpenCL device lowers and builds the kernel now; one that cannot is left out
    // of the job, which then runs on the CPU workers (and the other devices).
    for (index, pool) in shared.opencl_pools.iter().enumerate() {
        let mut worker = pool.acquire().await;
        let loaded = worker.ensure_loaded(&job, &shared.metrics).await;
        pool.release(worker).await;
        match loaded {
            Ok(()) => job.opencl.push(index as u32),
            Err(reason) => {
                let name = shared
                    .info
                    .opencl
                    .get(index)
                    .map_or("?", |d| d.name.as_str());
                tracing::warn!(
                    "kernel `{kernel}` does not run on OpenCL device {index} ({name}): {reason}; \
                     its packets run on the CPU workers"
                );
            }
        }
    }
    tracing::debug!("kernel `{kernel}` loaded for {items} items");
    Ok(job)
}

/// Refuses a job whose packets' private `sum` buffers, one set per worker at work, would
/// not fit in this machine's memory (a client may ask for any length).
fn check_packet_memory(kernel: &str, args: &[WireArg], workers: usize) -> Result<(), String> {
    let sums: u64 = args
        .iter()
        .map(|a| match a {
            WireArg::Sum(bytes) => *bytes,
            _ => 0,
        })
        .fold(0, u64::saturating_add);
    let needed = sums.saturating_mul(workers as u64);
    match node_jit::memory_limit() {
        Some(limit) if needed > limit => Err(format!(
            "kernel `{kernel}`'s sum buffers need {} per worker, {} for this node's {workers} workers: more than this machine can hold ({})",
            node_jit::describe_bytes(sums),
            node_jit::describe_bytes(needed),
            node_jit::describe_bytes(limit)
        )),
        _ => Ok(()),
    }
}

/// How a packet's run ended, before it becomes a response.
enum Ran {
    Answered(Result<FromWorker, WorkerFault>),
    ClientGone,
}

/// One packet of a [`Request::Run`].
struct Packet {
    id: u64,
    start: u64,
    end: u64,
    slices: Vec<Vec<u8>>,
}

/// Why the node takes no packets now, if it does not.
fn not_serving(state: &NodeState) -> Option<String> {
    match state {
        NodeState::Serving => None,
        NodeState::PausedByOwner { reason } => Some(format!("paused by its owner: {reason}")),
        NodeState::Draining => Some("the node is shutting down".into()),
    }
}

async fn run_packet(
    shared: &Shared,
    client: &ClientLink,
    pool: &WorkerPool,
    pool_label: &str,
    job: &Job,
    packet: Packet,
) -> Response {
    use crate::metrics::PacketOutcome;
    let Packet {
        id,
        start,
        end,
        slices,
    } = packet;
    let failed = |reason: String| {
        shared.metrics.packet(PacketOutcome::Failed);
        Response::Failed { packet: id, reason }
    };
    let gone = || {
        shared.metrics.packet(PacketOutcome::Cancelled);
        Response::Failed {
            packet: id,
            reason: "the client went away".into(),
        }
    };
    let paused = |reason: String| {
        shared.metrics.packet(PacketOutcome::Paused);
        Response::Paused { packet: id, reason }
    };
    if let crate::fault::Verdict::Fail(reason) = shared.faults.before_packet().await {
        return failed(reason);
    }
    // A paused node says so at once: the client runs the packet elsewhere.
    let mut state = shared.state.subscribe();
    if let Some(reason) = not_serving(&state.borrow_and_update()) {
        return paused(reason);
    }
    shared.metrics.queue_depth.inc();
    let acquired = tokio::select! {
        worker = pool.acquire() => Ok(worker),
        _ = client.gone() => Err(None),
        changed = state.wait_for(|s| *s != NodeState::Serving) => {
            Err(changed.ok().and_then(|s| not_serving(&s)))
        }
    };
    shared.metrics.queue_depth.dec();
    let mut worker = match acquired {
        Ok(worker) => worker,
        Err(Some(reason)) => return paused(reason),
        Err(None) => return gone(),
    };
    client
        .running
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let response = match worker.ensure_loaded(job, &shared.metrics).await {
        Err(reason) => failed(reason),
        Ok(()) => {
            let request = ToWorker::Run {
                package: job.package.hash().0,
                kernel: job.kernel.clone(),
                items: job.items,
                start,
                end,
                args: job.args.clone(),
                slices,
            };
            let ran = tokio::select! {
                answer = worker.call(&request, shared.packet_timeout) => Ran::Answered(answer),
                _ = client.gone() => Ran::ClientGone,
            };
            match ran {
                Ran::ClientGone => {
                    // The exchange was cut off halfway: the worker cannot be reused.
                    let status = worker.reap().await;
                    tracing::warn!(
                        "cancelled kernel `{}` on items {start}..{end}: its client went away ({}; worker {status}; it is started again for the next packet)",
                        job.kernel,
                        client.peer
                    );
                    gone()
                }
                Ran::Answered(Ok(FromWorker::Done {
                    compute_us,
                    outputs,
                })) => {
                    use std::sync::atomic::Ordering::Relaxed;
                    shared.metrics.packet(PacketOutcome::Done);
                    shared.metrics.items.inc_by(end - start);
                    job.packets_done.fetch_add(1, Relaxed);
                    job.items_done.fetch_add(end - start, Relaxed);
                    client.counters.done.fetch_add(1, Relaxed);
                    Response::Done {
                        packet: id,
                        compute_us,
                        outputs: shared.faults.on_outputs(outputs),
                    }
                }
                Ran::Answered(Ok(FromWorker::Panicked(reason))) => {
                    let reason = format!(
                        "kernel `{}` panicked on items {start}..{end}: {reason}",
                        job.kernel
                    );
                    tracing::warn!("{reason} (packet of {})", client.peer);
                    failed(reason)
                }
                Ran::Answered(Ok(FromWorker::Error(reason))) => {
                    tracing::warn!(
                        "kernel `{}` on items {start}..{end} failed: {reason} (packet of {})",
                        job.kernel,
                        client.peer
                    );
                    failed(reason)
                }
                Ran::Answered(Ok(FromWorker::Ready | FromWorker::Loaded { .. })) => {
                    worker.reap().await;
                    failed(
                        "the worker answered a packet as if it were a load; it was restarted"
                            .into(),
                    )
                }
                Ran::Answered(Err(fault)) => {
                    let reason = match &fault {
                        // A trap or a forbidden call: the kernel's doing, in its words.
                        WorkerFault::Died {
                            exit:
                                WorkerExit {
                                    end: Some(how), ..
                                },
                        } if how.is_kernel_fault() => format!(
                            "{} on items {start}..{end}; the node restarted its worker",
                            how.blame(&job.kernel)
                        ),
                        _ => format!(
                            "kernel `{}` on items {start}..{end}: {fault}; the node restarted its worker",
                            job.kernel
                        ),
                    };
                    tracing::warn!("{reason} (packet of {})", client.peer);
                    failed(reason)
                }
            }
        }
    };
    shared.metrics.busy(
        &format!("{pool_label}{}", worker.index),
        started.elapsed().as_secs_f64(),
    );
    client
        .running
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    pool.release(worker).await;
    response
}

/// What a pool's workers run, and so what one worker process may load.
#[derive(Debug, Clone, Copy)]
enum WorkerKind {
    /// CPU JIT workers; sandboxed, each serves one package.
    Cpu { sandboxed: bool },
    /// An OpenCL device's worker; sandboxed, it serves one kernel.
    OpenCl { sandboxed: bool },
}

impl WorkerKind {
    /// Whether a worker that holds `loaded` must be started afresh before loading `key`:
    /// a sandboxed worker can load no code once its sandbox is applied.
    fn needs_fresh_worker(&self, loaded: &HashSet<(Hash, String)>, key: &(Hash, String)) -> bool {
        match self {
            WorkerKind::Cpu { sandboxed: true } => loaded.iter().any(|(p, _)| *p != key.0),
            WorkerKind::OpenCl { sandboxed: true } => loaded.iter().any(|held| held != key),
            WorkerKind::Cpu { sandboxed: false } | WorkerKind::OpenCl { sandboxed: false } => false,
        }
    }
}

/// How a worker process ended: its wait status and what its sandbox reported, in words.
#[derive(Debug)]
struct WorkerExit {
    /// `None` when it could not be collected (then `text` says why).
    end: Option<sandbox::WorkerEnd>,
    text: String,
}

impl std::fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A kernel worker process and what it holds.
struct Worker {
    index: usize,
    kind: WorkerKind,
    process: Option<(Child, ChildStdin, ChildStdout)>,
    /// The read end of the process's sandbox report pipe.
    report: Option<std::os::fd::OwnedFd>,
    loaded: HashSet<(Hash, String)>,
    /// The whole buffers the worker holds, by hash, and which cached buffer each copy
    /// came from: the cache may replace the bytes under a hash (a dropped lie, then an
    /// honest upload), and the worker must then get the new ones. The weak pointer keeps
    /// the allocation's address from being reused while we compare it.
    buffers: HashMap<Hash, (std::sync::Weak<Vec<u8>>, usize)>,
    buffer_bytes: usize,
    limits: WorkerLimits,
    program: PathBuf,
    args: Vec<OsString>,
}

/// Why a worker could not answer.
#[derive(Debug, thiserror::Error)]
enum WorkerFault {
    #[error("cannot start the worker process {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("the worker process died ({exit})")]
    Died { exit: WorkerExit },
    #[error("it ran past the time limit of {0:?} and its worker was killed")]
    TimedOut(Duration),
    #[error("worker pipe: {0}")]
    Protocol(String),
}

/// Large buffers the cache let go of, kept a short while for the next upload: memory
/// fresh from the kernel costs a page fault and a page clearing per 4 KiB, which on a
/// virtual machine took more of the node's time than decrypting the transfer.
#[derive(Default)]
struct SpareBuffers {
    buffers: Vec<(Instant, Vec<u8>)>,
    bytes: usize,
}

/// At most this much memory is kept spare, and for at most [`SPARE_TTL`].
const SPARE_BYTES: usize = 256 << 20;
const SPARE_TTL: Duration = Duration::from_secs(10);
/// Smaller buffers are left to the allocator, which recycles them itself.
const SPARE_MIN: usize = 1 << 20;

impl SpareBuffers {
    /// A spare buffer that can hold `len` bytes without wasting more than as much again.
    fn take(&mut self, len: usize) -> Option<Vec<u8>> {
        self.expire();
        let index = self.buffers.iter().position(|(_, b)| {
            b.capacity() >= len && b.capacity() / 2 <= len && len >= SPARE_MIN
        })?;
        let (_, buffer) = self.buffers.swap_remove(index);
        self.bytes -= buffer.capacity();
        Some(buffer)
    }

    /// Keeps `buffer`'s memory if nobody else holds it and it is worth keeping.
    fn give(&mut self, buffer: Arc<Vec<u8>>) {
        self.expire();
        let Ok(buffer) = Arc::try_unwrap(buffer) else {
            return;
        };
        if !(SPARE_MIN..=SPARE_BYTES).contains(&buffer.capacity()) {
            return;
        }
        self.bytes += buffer.capacity();
        self.buffers.push((Instant::now(), buffer));
        while self.bytes > SPARE_BYTES {
            let (_, oldest) = self.buffers.remove(0);
            self.bytes -= oldest.capacity();
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let bytes = &mut self.bytes;
        self.buffers.retain(|(since, b)| {
            let keep = now.duration_since(*since) < SPARE_TTL;
            if !keep {
                *bytes -= b.capacity();
            }
            keep
        });
    }
}

/// Kernels one worker process loads before it is started afresh: loaded kernels and
/// the compiler's heap only grow.
const KERNELS_PER_WORKER: usize = 64;

/// What a worker process may hold.
#[derive(Debug, Clone, Copy)]
struct WorkerLimits {
    /// Resident memory above which it is started afresh before loading another kernel.
    memory_bytes: u64,
    /// Whole buffers it keeps (other jobs' buffers are forgotten to make room).
    buffer_bytes: usize,
}

/// The resident memory of process `pid`, from `/proc/PID/statm`.
fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).unwrap_or(4096)))
}

impl Worker {
    async fn start(&mut self) -> Result<(), WorkerFault> {
        if self.process.is_some() {
            return Ok(());
        }
        let spawn_error = |source| WorkerFault::Spawn {
            program: self.program.display().to_string(),
            source,
        };
        let (report, report_writer) = sandbox::report_pipe().map_err(spawn_error)?;
        let mut command = Command::new(&self.program);
        command
            // `ps` shows `offload __worker ...` whatever path started it (/proc/self/exe).
            .arg0("offload")
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let WorkerKind::OpenCl { .. } = self.kind {
            // Before the driver loads (see the sandbox's OpenCL profile).
            command.envs(sandbox::OPENCL_WORKER_ENV.iter().copied());
        }
        let writer = std::os::fd::AsRawFd::as_raw_fd(&report_writer);
        // A worker dies with its node, even when the node is killed with SIGKILL while
        // the worker spins in a kernel (the node's runtime lives on the main thread,
        // which spawns every worker and ends only with the process: PDEATHSIG follows
        // the thread that forked). Its report pipe becomes fd 3, open across exec.
        // SAFETY: the hooks only make async-signal-safe calls (prctl, getppid, dup2,
        // fcntl, _exit) on descriptors that stay open until `spawn` returns.
        unsafe {
            command.pre_exec(die_with_parent());
            command.pre_exec(sandbox::report_fd_hook(writer, crate::worker::REPORT_FD));
        }
        let mut child = command.spawn().map_err(spawn_error)?;
        drop(report_writer);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(WorkerFault::Protocol("worker pipes missing".into()));
        };
        tracing::debug!("worker {} started (pid {:?})", self.index, child.id());
        self.process = Some((child, stdin, stdout));
        self.report = Some(report);
        self.loaded.clear();
        self.buffers.clear();
        self.buffer_bytes = 0;
        Ok(())
    }

    /// Kills the process (if any) and says how it ended, with what its sandbox reported.
    async fn reap(&mut self) -> WorkerExit {
        let report = self.report.take();
        let Some((mut child, stdin, stdout)) = self.process.take() else {
            return WorkerExit {
                end: None,
                text: "not running".into(),
            };
        };
        drop((stdin, stdout));
        // A crashed worker has already exited; a live one is killed.
        let status = match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
            Ok(Ok(status)) => status,
            _ => {
                let _ = child.kill().await;
                match child.wait().await {
                    Ok(status) => status,
                    Err(e) => {
                        return WorkerExit {
                            end: None,
                            text: format!("cannot collect it: {e}"),
                        }
                    }
                }
            }
        };
        let end = sandbox::WorkerEnd::from_status(
            status,
            sandbox::Fault::first_in(&sandbox::read_report(report)),
        );
        WorkerExit {
            text: end.to_string(),
            end: Some(end),
        }
    }

    async fn call(
        &mut self,
        request: &ToWorker,
        timeout: Duration,
    ) -> Result<FromWorker, WorkerFault> {
        self.start().await?;
        let frame = protocol::encode(request, MAX_DATA)
            .map_err(|e| WorkerFault::Protocol(e.to_string()))?;
        let exchange = async {
            let Some((_, stdin, stdout)) = self.process.as_mut() else {
                return Err(None);
            };
            stdin.write_all(&frame).await.map_err(|_| None)?;
            stdin.flush().await.map_err(|_| None)?;
            let mut prefix = [0u8; 4];
            stdout.read_exact(&mut prefix).await.map_err(|_| None)?;
            let len = protocol::frame_len(prefix, MAX_DATA).map_err(|e| Some(e.to_string()))?;
            let mut body = vec![0u8; len];
            stdout.read_exact(&mut body).await.map_err(|_| None)?;
            protocol::decode::<FromWorker>(&body, MAX_DATA).map_err(|e| Some(e.to_string()))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(None)) => {
                let exit = self.reap().await;
                Err(WorkerFault::Died { exit })
            }
            Ok(Err(Some(e))) => {
                self.reap().await;
                Err(WorkerFault::Protocol(e))
            }
            Err(_) => {
                self.reap().await;
                Err(WorkerFault::TimedOut(timeout))
            }
        }
    }

    /// Makes sure the worker has the job's kernel and whole buffers. A worker that has
    /// loaded many kernels or grown past its memory limit is started afresh first.
    async fn ensure_loaded(
        &mut self,
        job: &Job,
        metrics: &crate::metrics::NodeMetrics,
    ) -> Result<(), String> {
        let key = (job.package.hash().0, job.kernel.clone());
        // Compiling may take a while; a cache hit is a dlopen.
        let load_timeout = Duration::from_secs(600);
        if self.process.is_some() && self.kind.needs_fresh_worker(&self.loaded, &key) {
            tracing::info!(
                "worker {} is sandboxed with other code: starting it afresh for kernel `{}`",
                self.index,
                job.kernel
            );
            self.reap().await;
        }
        if self.process.is_some() && !self.loaded.contains(&key) {
            let resident = self
                .process
                .as_ref()
                .and_then(|(child, _, _)| child.id())
                .and_then(resident_bytes)
                .unwrap_or(0);
            if self.loaded.len() >= KERNELS_PER_WORKER || resident > self.limits.memory_bytes {
                tracing::info!(
                    "worker {} holds {} kernels in {}: starting it afresh before loading `{}`",
                    self.index,
                    self.loaded.len(),
                    node_jit::describe_bytes(resident),
                    job.kernel
                );
                self.reap().await;
            }
        }
        if self.process.is_none() || !self.loaded.contains(&key) {
            let request = ToWorker::Load {
                package: job.package.as_bytes().to_vec(),
                kernel: job.kernel.clone(),
            };
            match self.call(&request, load_timeout).await {
                Ok(FromWorker::Loaded { origin, micros }) => {
                    metrics.kernel_load(&origin, micros as f64 / 1e6);
                    tracing::debug!(
                        "worker {}: kernel `{}` {origin} in {} µs",
                        self.index,
                        job.kernel,
                        micros
                    );
                    self.loaded.insert(key);
                }
                Ok(FromWorker::Ready) => {
                    self.loaded.insert(key);
                }
                Ok(FromWorker::Error(e)) => return Err(e),
                Ok(other) => {
                    self.reap().await;
                    return Err(format!(
                        "the worker answered a load with {}; it was restarted",
                        other.describe()
                    ));
                }
                Err(WorkerFault::Died { exit }) => {
                    return Err(format!(
                        "compiling or loading kernel `{}` crashed the worker process ({exit}): the compiler failed on this package; no kernel code had run",
                        job.kernel
                    ))
                }
                Err(fault) => return Err(format!("loading kernel `{}`: {fault}", job.kernel)),
            }
        }
        for (hash, bytes) in &job.wholes {
            if self
                .buffers
                .get(hash)
                .is_some_and(|(held, _)| std::ptr::eq(held.as_ptr(), Arc::as_ptr(bytes)))
            {
                continue;
            }
            if self.buffer_bytes + bytes.len() > self.limits.buffer_bytes {
                // Make room from other jobs' buffers only: this job needs all of its own.
                let others: Vec<Hash> = self
                    .buffers
                    .keys()
                    .filter(|held| !job.wholes.iter().any(|(hash, _)| hash == *held))
                    .copied()
                    .collect();
                for old in others {
                    if let Some((_, len)) = self.buffers.remove(&old) {
                        self.buffer_bytes -= len;
                    }
                    let _ = self.call(&ToWorker::Forget(old), load_timeout).await;
                }
            }
            let request = ToWorker::Buffer {
                hash: *hash,
                bytes: bytes.as_ref().clone(),
            };
            match self.call(&request, load_timeout).await {
                Ok(FromWorker::Ready) => {
                    let copy = (Arc::downgrade(bytes), bytes.len());
                    if let Some((_, replaced)) = self.buffers.insert(*hash, copy) {
                        self.buffer_bytes -= replaced;
                    }
                    self.buffer_bytes += bytes.len();
                }
                Ok(FromWorker::Error(e)) => return Err(e),
                Ok(other) => {
                    self.reap().await;
                    return Err(format!(
                        "the worker answered a buffer with {}; it was restarted",
                        other.describe()
                    ));
                }
                Err(fault) => return Err(format!("sending a buffer to the worker: {fault}")),
            }
        }
        Ok(())
    }
}

/// The node's workers: one process each, handed out one packet at a time.
struct WorkerPool {
    free: Mutex<Vec<Worker>>,
    available: Semaphore,
    busy: std::sync::atomic::AtomicUsize,
    size: usize,
}

impl WorkerPool {
    /// `count` workers, each the process `program args...`.
    fn new(
        count: usize,
        program: &std::path::Path,
        args: &[OsString],
        limits: WorkerLimits,
        kind: WorkerKind,
    ) -> Arc<WorkerPool> {
        let workers = (0..count)
            .map(|index| Worker {
                index,
                kind,
                process: None,
                report: None,
                loaded: HashSet::new(),
                buffers: HashMap::new(),
                buffer_bytes: 0,
                limits,
                program: program.to_path_buf(),
                args: args.to_vec(),
            })
            .collect();
        Arc::new(WorkerPool {
            free: Mutex::new(workers),
            available: Semaphore::new(count),
            busy: std::sync::atomic::AtomicUsize::new(0),
            size: count,
        })
    }

    /// Its number of workers.
    fn size(&self) -> usize {
        self.size
    }

    async fn acquire(&self) -> Worker {
        // The semaphore is never closed, so acquiring only waits.
        if let Ok(permit) = self.available.acquire().await {
            permit.forget();
        }
        self.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut free = self.free.lock().await;
        match free.pop() {
            Some(worker) => worker,
            None => unreachable_worker(),
        }
    }

    async fn release(&self, worker: Worker) {
        self.free.lock().await.push(worker);
        self.busy.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.available.add_permits(1);
    }
}

#[cold]
fn unreachable_worker() -> Worker {
    // The semaphore counts free workers exactly; this cannot happen.
    panic!("worker pool out of step with its semaphore")
}

/// Pauses and resumes the node from the machine's load, once a second.
async fn watch_load(threshold: f64, pool: Arc<WorkerPool>, state: watch::Sender<NodeState>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        let Some(load) = load_average() else {
            continue;
        };
        let ours = pool.busy.load(std::sync::atomic::Ordering::Relaxed) as f64;
        state.send_if_modified(
            |current| match owner_state(load, ours, threshold, current) {
                Some(next) => {
                    match &next {
                        NodeState::Serving => tracing::info!(
                            "the owner's load is at most {threshold} again: taking packets"
                        ),
                        other => tracing::info!(
                            "{}: new packets are answered paused, clients run them elsewhere",
                            not_serving(other).unwrap_or_default()
                        ),
                    }
                    *current = next;
                    true
                }
                None => false,
            },
        );
    }
}

/// The state the machine's 1-minute `load`, less `ours` (this node's busy workers),
/// calls for against `threshold`, if it differs from `current`. A draining node stays
/// draining.
fn owner_state(load: f64, ours: f64, threshold: f64, current: &NodeState) -> Option<NodeState> {
    let owner = (load - ours).max(0.0);
    match current {
        NodeState::Draining => None,
        NodeState::Serving if owner > threshold => Some(NodeState::PausedByOwner {
            reason: format!(
                "the machine's load without this node's work is {owner:.2}, above --idle-threshold {threshold}"
            ),
        }),
        NodeState::PausedByOwner { .. } if owner <= threshold => Some(NodeState::Serving),
        _ => None,
    }
}

/// Keeps the `paused` gauge in step with the node's state.
async fn mirror_state(
    mut state: watch::Receiver<NodeState>,
    metrics: Arc<crate::metrics::NodeMetrics>,
) {
    loop {
        let serving = *state.borrow_and_update() == NodeState::Serving;
        metrics.paused.set(i64::from(!serving));
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// A token bucket on bytes sent: sends wait while the node is over its cap.
struct TokenBucket {
    rate: f64,
    state: std::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(bytes_per_s: u64) -> TokenBucket {
        TokenBucket {
            rate: bytes_per_s as f64,
            state: std::sync::Mutex::new((0.0, Instant::now())),
        }
    }

    /// Takes `bytes` tokens, waiting as long as the debt they create needs to drain.
    async fn take(&self, bytes: u64) {
        let wait = self.take_at(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes `bytes` tokens at time `now` and returns how long the sender must wait for
    /// the debt they create to drain (the bucket's logic, apart from the clock).
    fn take_at(&self, bytes: u64, now: Instant) -> Duration {
        let mut state = lock(&self.state);
        // Up to 100 ms of burst.
        let burst = self.rate * 0.1;
        let refill = now.saturating_duration_since(state.1).as_secs_f64() * self.rate;
        state.0 = (state.0 + refill).min(burst) - bytes as f64;
        state.1 = now;
        if state.0 < 0.0 {
            Duration::from_secs_f64(-state.0 / self.rate)
        } else {
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_buffers_are_reused_only_when_they_fit_and_nobody_holds_them() {
        let mut spares = SpareBuffers::default();
        let big = Arc::new(vec![7u8; 4 << 20]);
        let address = big.as_ptr();
        let held = Arc::clone(&big);
        spares.give(big);
        assert!(spares.take(4 << 20).is_none(), "kept a buffer still in use");
        spares.give(held);
        assert!(
            spares.take(1 << 10).is_none(),
            "a tiny request takes a big buffer"
        );
        assert!(
            spares.take(9 << 20).is_none(),
            "a buffer too small was offered"
        );
        let reused = spares.take(3 << 20).expect("a fitting spare");
        assert_eq!(reused.as_ptr(), address);
        assert_eq!(spares.bytes, 0);
        for _ in 0..100 {
            spares.give(Arc::new(Vec::with_capacity(8 << 20)));
        }
        assert!(spares.bytes <= SPARE_BYTES, "{} bytes kept", spares.bytes);
    }

    #[test]
    fn the_owners_load_pauses_and_resumes_the_node_but_not_a_drain() {
        let serving = NodeState::Serving;
        // 3.5 load with 1 of our workers busy: the owner's 2.5 is above 2.
        let paused = owner_state(3.5, 1.0, 2.0, &serving).expect("pauses");
        let NodeState::PausedByOwner { reason } = &paused else {
            panic!("{paused:?}")
        };
        assert!(
            reason.contains("2.50") && reason.contains("threshold 2"),
            "{reason}"
        );
        assert_eq!(owner_state(3.5, 1.0, 2.0, &paused), None);
        // Our own work never pauses us.
        assert_eq!(owner_state(3.5, 2.0, 2.0, &serving), None);
        assert_eq!(
            owner_state(1.0, 0.0, 2.0, &paused),
            Some(NodeState::Serving)
        );
        assert_eq!(owner_state(9.0, 0.0, 2.0, &NodeState::Draining), None);
    }

    #[test]
    fn token_bucket_holds_the_rate() {
        let bucket = TokenBucket::new(10_000_000);
        let start = Instant::now();
        // A sender that waits as told: 5 MB at 10 MB/s from an empty bucket is 0.5 s.
        let mut now = start;
        for _ in 0..10 {
            now += bucket.take_at(500_000, now);
        }
        let waited = now.duration_since(start).as_secs_f64();
        assert!((waited - 0.5).abs() < 1e-6, "{waited}");
        // After a long pause the bucket holds only its 100 ms burst (1 MB).
        now += Duration::from_secs(10);
        assert_eq!(bucket.take_at(1_000_000, now), Duration::ZERO);
        let wait = bucket.take_at(1_000_000, now).as_secs_f64();
        assert!((wait - 0.1).abs() < 1e-6, "{wait}");
    }
}
