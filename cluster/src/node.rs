//! The node agent: serves this machine's CPU (and, with [`NodeConfig::opencl`], its
//! OpenCL devices) to cluster members over QUIC.
//!
//! Packets run in worker processes (see [`crate::worker`]), one per core given to the
//! cluster, so a kernel that crashes or hangs costs one worker, never the node: the
//! packet is reported failed with the reason, the worker is started again, and the node
//! goes on serving. Owner controls: the number of workers (`cores`), nice 19 for the
//! workers, an idle-only gate on the machine's load, and a bandwidth cap on results.
//!
//! OpenCL devices get one worker process each (`offload __worker --opencl-device N`),
//! in a pool of their own: a client sends a packet to the CPU workers or to one device
//! ([`Request::Run`]'s `device`). A job's kernel is loaded on every device at prepare
//! time; a device that cannot lower or build it is left out of that job (logged) and
//! the job runs on the CPU workers and the other devices.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ir_packager::{Access, ArgKind, Package, Shape};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{watch, Mutex, Semaphore};

use crate::buffer_cache::{self, lock, BufferCache, ConnectionId};
use crate::credentials::Credentials;
use crate::protocol::{
    self, FromWorker, Hash, Hello, HelloReply, NodeInfo, Request, Response, ToWorker, WireArg,
    MAX_CONTROL, MAX_DATA,
};
use crate::wire::{self, WireError};

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
            listen,
            credentials,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            idle_only: None,
            max_bandwidth: None,
            packet_timeout: Duration::from_secs(300),
            idle_timeout: wire::DEFAULT_IDLE,
            worker_program: worker_program.into(),
            worker_args,
            name: host_name(),
            advertise: true,
            rates: Vec::new(),
            opencl: false,
        }
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

    /// The node's name in logs and discovery. Default: the host name.
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

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
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
    let host = node_jit::HostTarget::detect();
    let mut info = NodeInfo {
        name: config.name.clone(),
        arch: host.triple.clone(),
        cpu: host.cpu.clone(),
        features: crate::discovery::abbreviate_features(&host.enabled_features()),
        cores: config.cores as u32,
        rates: config.rates.clone(),
        opencl: Vec::new(),
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
            let mut args = config.worker_args.clone();
            args.push("--opencl-device".into());
            args.push(index.to_string().into());
            opencl_pools.push(WorkerPool::new(1, &config.worker_program, &args));
        }
    }
    let endpoint = wire::server_endpoint(&config.credentials, config.listen, config.idle_timeout)?;
    let local = endpoint
        .local_addr()
        .map_err(|source| wire::EndpointError::Bind {
            addr: config.listen,
            source,
        })?;
    // Tests and scripts read this line to learn the port.
    println!("listening on {local}");
    tracing::info!(
        "node {} serving {} workers on {local} ({} {})",
        info.name,
        config.cores,
        info.arch,
        info.cpu
    );
    let _advert = if config.advertise {
        match crate::discovery::advertise(&info, local) {
            Ok(advert) => Some(advert),
            Err(e) => {
                tracing::warn!("not advertising by mDNS: {e}");
                None
            }
        }
    } else {
        None
    };
    let pool = WorkerPool::new(config.cores, &config.worker_program, &config.worker_args);
    let (gate_tx, gate) = watch::channel(true);
    if let Some(threshold) = config.idle_only {
        tokio::spawn(watch_load(threshold, Arc::clone(&pool), gate_tx));
    }
    let shared = Arc::new(Shared {
        info,
        packages: std::sync::Mutex::new(HashMap::new()),
        buffers: std::sync::Mutex::new(BufferCache::default()),
        next_connection: std::sync::atomic::AtomicU64::new(0),
        spares: std::sync::Mutex::new(SpareBuffers::default()),
        pool,
        opencl_pools,
        gate,
        bucket: config.max_bandwidth.map(TokenBucket::new),
        packet_timeout: config.packet_timeout,
    });
    while let Some(incoming) = endpoint.accept().await {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(connection) => {
                    if let Err(e) = serve_connection(shared, connection).await {
                        tracing::info!("connection from {remote} ended: {e}");
                    }
                }
                // A peer without a certificate signed by the cluster CA ends here,
                // before it can send a single request.
                Err(e) => tracing::warn!("refused connection from {remote}: {e}"),
            }
        });
    }
    Ok(())
}

struct Shared {
    info: NodeInfo,
    packages: std::sync::Mutex<HashMap<Hash, Arc<Package>>>,
    buffers: std::sync::Mutex<BufferCache>,
    /// Numbers connections for the buffer cache's trust rule.
    next_connection: std::sync::atomic::AtomicU64,
    spares: std::sync::Mutex<SpareBuffers>,
    pool: Arc<WorkerPool>,
    /// One single-worker pool per OpenCL device, indexed as in [`NodeInfo::opencl`].
    opencl_pools: Vec<Arc<WorkerPool>>,
    gate: watch::Receiver<bool>,
    bucket: Option<TokenBucket>,
    packet_timeout: Duration,
}

/// A prepared job of one connection.
struct Job {
    package: Arc<Package>,
    kernel: String,
    args: Vec<WireArg>,
    /// Whole buffers (hash, bytes) the workers need.
    wholes: Vec<(Hash, Arc<Vec<u8>>)>,
    /// The OpenCL devices that loaded the kernel (indices into `Shared::opencl_pools`).
    opencl: Vec<u32>,
}

fn peer_name(connection: &quinn::Connection) -> String {
    let who = connection
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map(|certs| format!("a member with {} certificate(s)", certs.len()))
        .unwrap_or_else(|| "an unidentified peer".into());
    format!("{} ({who})", connection.remote_address())
}

async fn serve_connection(
    shared: Arc<Shared>,
    connection: quinn::Connection,
) -> Result<(), WireError> {
    let peer = peer_name(&connection);
    let connection_id = shared
        .next_connection
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The hello comes first, on the first stream.
    let (mut send, mut recv) = connection.accept_bi().await?;
    let hello: Hello = wire::recv(&mut recv, MAX_CONTROL).await?;
    if let Err(reason) = protocol::check_hello(&hello) {
        tracing::warn!("refused {peer}: {reason}");
        let reply = HelloReply::Refused {
            version: protocol::VERSION,
            reason,
        };
        wire::send(&mut send, &reply, MAX_CONTROL).await?;
        // Let the refusal reach the client before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
        return Ok(());
    }
    tracing::info!("client {} connected from {peer}", hello.client);
    let reply = HelloReply::Welcome {
        version: protocol::VERSION,
        node: shared.info.clone(),
    };
    wire::send(&mut send, &reply, MAX_CONTROL).await?;
    let jobs: Arc<std::sync::Mutex<HashMap<u64, Arc<Job>>>> = Arc::default();
    loop {
        let (mut send, mut recv) = connection.accept_bi().await?;
        let shared = Arc::clone(&shared);
        let jobs = Arc::clone(&jobs);
        tokio::spawn(async move {
            let response = match wire::recv::<Request>(&mut recv, protocol::request_limit()).await {
                Ok(request) => handle(&shared, connection_id, &jobs, request, &mut recv).await,
                Err(WireError::Decode(e)) => {
                    tracing::warn!("refused a message: {e}");
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
            if let Err(e) = wire::send_frame(&mut send, &frame).await {
                tracing::debug!("cannot send a response: {e}");
            }
        });
    }
}

async fn handle(
    shared: &Shared,
    connection: ConnectionId,
    jobs: &std::sync::Mutex<HashMap<u64, Arc<Job>>>,
    request: Request,
    recv: &mut quinn::RecvStream,
) -> Response {
    match request {
        Request::Ping => Response::Pong,
        Request::HavePackage(hash) => Response::Has(lock(&shared.packages).contains_key(&hash)),
        Request::HaveBuffer(hash) => Response::Has(
            buffer_cache::usable(&shared.buffers, hash, connection)
                .await
                .is_some(),
        ),
        Request::Package(bytes) => match Package::from_bytes(&bytes) {
            Ok(package) => {
                let hash = package.hash().0;
                tracing::info!("stored package {}", package.hash());
                lock(&shared.packages).insert(hash, Arc::new(package));
                Response::Stored(hash)
            }
            Err(e) => {
                tracing::warn!("refused a package: {e}");
                Response::Error(format!("package refused: {e}"))
            }
        },
        Request::Buffer { len, hash } => {
            let spare = lock(&shared.spares).take(usize::try_from(len).unwrap_or(usize::MAX));
            let bytes = match wire::recv_payload(recv, len, MAX_DATA, spare).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!("refused a buffer upload: {e}");
                    return Response::Error(format!("buffer upload refused: {e}"));
                }
            };
            let released = lock(&shared.buffers).insert(hash, bytes, connection, NODE_BUFFER_BYTES);
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
                let opencl = prepared.opencl.clone();
                lock(jobs).insert(job, Arc::new(prepared));
                Response::Prepared { opencl }
            }
            Err(e) => {
                tracing::warn!("cannot prepare job {job}: {e}");
                Response::Error(e)
            }
        },
        Request::EndJob(job) => {
            lock(jobs).remove(&job);
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
            let pool = match device {
                None => &shared.pool,
                Some(index) => match shared.opencl_pools.get(index as usize) {
                    Some(pool) if job.opencl.contains(&index) => pool,
                    _ => {
                        return Response::Error(format!(
                            "OpenCL device {index} of this node does not run job {}'s kernel",
                            job.kernel
                        ))
                    }
                },
            };
            run_packet(shared, pool, &job, packet, start, end, slices).await
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
        .cloned()
        .ok_or("the package was not uploaded to this node")?;
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
        let fits = match (arg.kind, wire) {
            (ArgKind::Scalar(_), WireArg::Scalar(_)) => true,
            (
                ArgKind::Buffer {
                    shape: Shape::Whole,
                    access: Access::In,
                    elem,
                },
                WireArg::Whole(hash),
            ) => {
                let bytes = buffer_cache::usable(&shared.buffers, *hash, connection)
                    .await
                    .ok_or_else(|| {
                        format!(
                            "buffer `{}` is not in this node's cache: it was not uploaded, or \
                             was evicted (a node caches at most {} GiB of whole buffers)",
                            arg.name,
                            NODE_BUFFER_BYTES >> 30
                        )
                    })?;
                wholes.push((*hash, bytes.clone()));
                bytes.len() % elem.size() == 0
            }
            (
                ArgKind::Buffer {
                    shape: Shape::PerItem(k),
                    access,
                    elem,
                },
                WireArg::Split {
                    bytes_per_item,
                    input,
                    output,
                },
            ) => {
                Some(*bytes_per_item) == k.checked_mul(elem.size() as u64)
                    && *input == access.reads_input()
                    && *output == access.writes_output()
            }
            (
                ArgKind::Buffer {
                    shape: Shape::Fixed(n),
                    access: Access::Sum,
                    elem,
                },
                WireArg::Sum(bytes),
            ) => Some(*bytes) == n.checked_mul(elem.size() as u64),
            _ => false,
        };
        if !fits {
            return Err(format!(
                "argument `{arg}` of kernel `{kernel}` does not match how the job sends it"
            ));
        }
    }
    let mut job = Job {
        package,
        kernel: kernel.to_string(),
        args,
        wholes,
        opencl: Vec::new(),
    };
    let mut worker = shared.pool.acquire().await;
    let loaded = worker.ensure_loaded(&job).await;
    shared.pool.release(worker).await;
    loaded?;
    // Each OpenCL device lowers and builds the kernel now; one that cannot is left out
    // of the job, which then runs on the CPU workers (and the other devices).
    for (index, pool) in shared.opencl_pools.iter().enumerate() {
        let mut worker = pool.acquire().await;
        let loaded = worker.ensure_loaded(&job).await;
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
    tracing::info!(
        "prepared kernel `{kernel}` for {items} items (CPU workers{})",
        job.opencl
            .iter()
            .map(|i| format!(", OpenCL device {i}"))
            .collect::<String>()
    );
    Ok(job)
}

async fn run_packet(
    shared: &Shared,
    pool: &WorkerPool,
    job: &Job,
    packet: u64,
    start: u64,
    end: u64,
    slices: Vec<Vec<u8>>,
) -> Response {
    // Idle-only: hold new packets while the owner is busy.
    let mut gate = shared.gate.clone();
    if gate.wait_for(|open| *open).await.is_err() {
        tracing::debug!("load gate gone");
    }
    let mut worker = pool.acquire().await;
    let failed = |reason: String, retryable: bool| Response::Failed {
        packet,
        reason,
        retryable,
    };
    let response = match worker.ensure_loaded(job).await {
        Err(reason) => failed(reason, false),
        Ok(()) => {
            let request = ToWorker::Run {
                package: job.package.hash().0,
                kernel: job.kernel.clone(),
                start,
                end,
                args: job.args.clone(),
                slices,
            };
            match worker.call(&request, shared.packet_timeout).await {
                Ok(FromWorker::Done {
                    compute_us,
                    outputs,
                }) => Response::Done {
                    packet,
                    compute_us,
                    outputs: corrupt_for_tests(outputs),
                },
                Ok(FromWorker::Panicked(reason)) => failed(
                    format!(
                        "kernel `{}` panicked on items {start}..{end}: {reason}",
                        job.kernel
                    ),
                    false,
                ),
                Ok(other) => failed(format!("worker answered {other:?}"), false),
                Err(fault) => {
                    let reason = format!(
                        "kernel `{}` on items {start}..{end}: {fault}; the node restarted its worker",
                        job.kernel
                    );
                    tracing::warn!("{reason}");
                    failed(reason, false)
                }
            }
        }
    };
    pool.release(worker).await;
    response
}

/// A kernel worker process and what it holds.
struct Worker {
    index: usize,
    process: Option<(Child, ChildStdin, ChildStdout)>,
    loaded: HashSet<(Hash, String)>,
    /// The whole buffers the worker holds, by hash, and which cached buffer each copy
    /// came from: the cache may replace the bytes under a hash (a dropped lie, then an
    /// honest upload), and the worker must then get the new ones. The weak pointer keeps
    /// the allocation's address from being reused while we compare it.
    buffers: HashMap<Hash, (std::sync::Weak<Vec<u8>>, usize)>,
    buffer_bytes: usize,
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
    #[error("the worker process died ({status})")]
    Died { status: String },
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

/// Whole buffers cached by the node above this are dropped before more are stored.
const NODE_BUFFER_BYTES: usize = 4 << 30;

/// Worker buffers above this are dropped before more are sent.
const WORKER_BUFFER_BYTES: usize = 2 << 30;

impl Worker {
    async fn start(&mut self) -> Result<(), WorkerFault> {
        if self.process.is_some() {
            return Ok(());
        }
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| WorkerFault::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(WorkerFault::Protocol("worker pipes missing".into()));
        };
        tracing::debug!("worker {} started (pid {:?})", self.index, child.id());
        self.process = Some((child, stdin, stdout));
        self.loaded.clear();
        self.buffers.clear();
        self.buffer_bytes = 0;
        Ok(())
    }

    /// Kills the process (if any) and says how it ended.
    async fn reap(&mut self) -> String {
        let Some((mut child, stdin, stdout)) = self.process.take() else {
            return "not running".into();
        };
        drop((stdin, stdout));
        // A crashed worker has already exited; a live one is killed.
        let status = match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
            Ok(Ok(status)) => status,
            _ => {
                let _ = child.kill().await;
                match child.wait().await {
                    Ok(status) => status,
                    Err(e) => return format!("cannot collect it: {e}"),
                }
            }
        };
        describe_status(status)
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
                let status = self.reap().await;
                Err(WorkerFault::Died { status })
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

    /// Makes sure the worker has the job's kernel and whole buffers.
    async fn ensure_loaded(&mut self, job: &Job) -> Result<(), String> {
        let key = (job.package.hash().0, job.kernel.clone());
        // Compiling may take a while; a cache hit is a dlopen.
        let load_timeout = Duration::from_secs(600);
        if self.process.is_none() || !self.loaded.contains(&key) {
            let request = ToWorker::Load {
                package: job.package.as_bytes().to_vec(),
                kernel: job.kernel.clone(),
            };
            match self.call(&request, load_timeout).await {
                Ok(FromWorker::Ready) => {
                    self.loaded.insert(key);
                }
                Ok(FromWorker::Error(e)) => return Err(e),
                Ok(other) => return Err(format!("worker answered {other:?} to a load")),
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
            if self.buffer_bytes + bytes.len() > WORKER_BUFFER_BYTES {
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
                Ok(other) => return Err(format!("worker answered {other:?} to a buffer")),
                Err(fault) => return Err(format!("sending a buffer to the worker: {fault}")),
            }
        }
        Ok(())
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(signal) => {
            let name = match signal {
                libc::SIGSEGV => {
                    "SIGSEGV, a segmentation fault: the kernel accessed memory outside its buffers"
                }
                libc::SIGBUS => "SIGBUS, a bus error",
                libc::SIGILL => "SIGILL, an illegal instruction",
                libc::SIGFPE => "SIGFPE, an arithmetic fault",
                libc::SIGABRT => "SIGABRT, aborted",
                libc::SIGKILL => "SIGKILL",
                _ => "a signal",
            };
            format!("killed by signal {signal}, {name}")
        }
        None => match status.code() {
            Some(code) => format!("exit status {code}"),
            None => "unknown status".into(),
        },
    }
}

/// The node's workers: one process each, handed out one packet at a time.
struct WorkerPool {
    free: Mutex<Vec<Worker>>,
    available: Semaphore,
    busy: std::sync::atomic::AtomicUsize,
}

impl WorkerPool {
    /// `count` workers, each the process `program args...`.
    fn new(count: usize, program: &std::path::Path, args: &[OsString]) -> Arc<WorkerPool> {
        let workers = (0..count)
            .map(|index| Worker {
                index,
                process: None,
                loaded: HashSet::new(),
                buffers: HashMap::new(),
                buffer_bytes: 0,
                program: program.to_path_buf(),
                args: args.to_vec(),
            })
            .collect();
        Arc::new(WorkerPool {
            free: Mutex::new(workers),
            available: Semaphore::new(count),
            busy: std::sync::atomic::AtomicUsize::new(0),
        })
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

/// Opens and closes the gate for new packets from the machine's load.
async fn watch_load(threshold: f64, pool: Arc<WorkerPool>, gate: watch::Sender<bool>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        // A tiny procfs read does not block in practice.
        let Ok(text) = std::fs::read_to_string("/proc/loadavg") else {
            continue;
        };
        let Some(load) = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<f64>().ok())
        else {
            continue;
        };
        let ours = pool.busy.load(std::sync::atomic::Ordering::Relaxed) as f64;
        let owner = (load - ours).max(0.0);
        let open = owner <= threshold;
        if *gate.borrow() != open {
            if open {
                tracing::info!(
                    "owner's load {owner:.2} is at most {threshold}: taking packets again"
                );
            } else {
                tracing::info!("owner's load {owner:.2} is above {threshold}: pausing new packets");
            }
            let _ = gate.send(open);
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
        let wait = {
            let mut state = lock(&self.state);
            let now = Instant::now();
            // Up to 100 ms of burst.
            let burst = self.rate * 0.1;
            let refill = now.duration_since(state.1).as_secs_f64() * self.rate;
            state.0 = (state.0 + refill).min(burst) - bytes as f64;
            state.1 = now;
            if state.0 < 0.0 {
                Duration::from_secs_f64(-state.0 / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Test-only fault injection: with `OFFLOAD_TEST_CORRUPT_RESULTS=1` in its environment
/// the node flips the first byte of every result it sends, so that tests can check that
/// `--redundancy` outvotes, reports and excludes a node returning wrong results. Not a
/// feature: it is read once, never set by offload itself, and has no command-line flag.
fn corrupt_for_tests(mut outputs: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    static CORRUPT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let corrupt = *CORRUPT
        .get_or_init(|| std::env::var_os("OFFLOAD_TEST_CORRUPT_RESULTS").is_some_and(|v| v == "1"));
    if corrupt {
        if let Some(byte) = outputs.iter_mut().find_map(|o| o.first_mut()) {
            *byte ^= 0xff;
        }
    }
    outputs
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

    #[tokio::test]
    async fn token_bucket_holds_the_rate() {
        let bucket = TokenBucket::new(10_000_000);
        let started = Instant::now();
        for _ in 0..10 {
            bucket.take(500_000).await;
        }
        // 5 MB at 10 MB/s, less the 1 MB burst: about 0.4 s.
        let elapsed = started.elapsed().as_secs_f64();
        assert!(elapsed > 0.3 && elapsed < 1.5, "{elapsed}");
    }
}
