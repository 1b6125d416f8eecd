//! The client side: connects to nodes, feeds the scheduler one device per remote core,
//! sends packets, and commits results into the job's buffers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kernel_model::{ArgLayout, Given, ScalarType, ScalarValue};
use offload_package::Package;
use scheduler::{DeviceChoice, JobSpec, Link};
use tokio::sync::mpsc;

use crate::credentials::Credentials;
use crate::job_loop::{Action, JobEvent, JobLoop, JobPlan, Joined, OutputShape};
use crate::link_meter::{Direction, LinkMeter};
use crate::protocol::{
    self, Hash, Hello, HelloReply, NodeInfo, Request, Response, WireArg, MAX_CONTROL, MAX_DATA,
};
use crate::wire::{self, WireError};

/// Packets per device a job aims at (guided self-scheduling's divisor): items of a real
/// job can differ a hundredfold in cost (a Mandelbrot row inside the set), and rates are
/// learned from the first packets, so a job cut into a few large packets leaves one node
/// with the expensive tail while the other waits (2 testbed nodes were no faster than 1
/// at the scheduler's default of 3). Pipelined slots hide the round trip of the extra
/// packets.
const PACKETS_PER_DEVICE: f64 = 16.0;

/// Timed pings per node when a job starts; the fastest is its latency sample.
const PINGS_PER_JOB: usize = 3;

/// Called with a line describing something the user should know (a node lost, a node
/// refusing us, packets re-run elsewhere).
pub type EventFn = dyn Fn(&str) + Send + Sync;

/// Called as a job's results are committed ([`ClientConfig::on_progress`]).
pub type ProgressFn = dyn Fn(&JobProgress) + Send + Sync;

/// How far a cluster job is, as results are committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobProgress {
    /// Items whose results are committed.
    pub items_done: u64,
    /// Items of the job.
    pub items: u64,
    /// Items committed per node (name and address), in the order the nodes joined.
    pub per_node: Vec<(String, u64)>,
}

/// How a client connects. Every setter documents its default.
pub struct ClientConfig {
    credentials: Credentials,
    peers: Vec<SocketAddr>,
    discover: Option<Duration>,
    idle_timeout: Duration,
    connect_timeout: Duration,
    packet_timeout: Duration,
    slots: u32,
    redundancy: u32,
    devices: DeviceChoice,
    on_event: Option<Arc<EventFn>>,
    on_progress: Option<Arc<ProgressFn>>,
}

impl ClientConfig {
    /// A client presenting `credentials`, with no peers and no discovery.
    pub fn new(credentials: Credentials) -> ClientConfig {
        ClientConfig {
            credentials,
            peers: Vec::new(),
            discover: None,
            idle_timeout: wire::DEFAULT_IDLE,
            connect_timeout: Duration::from_secs(3),
            packet_timeout: Duration::from_secs(330),
            slots: 2,
            redundancy: 1,
            devices: DeviceChoice::Auto,
            on_event: None,
            on_progress: None,
        }
    }

    /// Which of the nodes' devices take packets: their CPU workers, the OpenCL devices
    /// they serve (`offload node --opencl`), or both. Default: [`DeviceChoice::Auto`],
    /// every device the nodes serve.
    pub fn devices(mut self, devices: DeviceChoice) -> Self {
        self.devices = devices;
        self
    }

    /// Nodes to use besides those discovery finds. Default: none.
    pub fn peers(mut self, peers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.peers.extend(peers);
        self
    }

    /// Browse mDNS for this long when connecting. Default: no discovery.
    pub fn discover(mut self, window: Option<Duration>) -> Self {
        self.discover = window;
        self
    }

    /// A node silent this long counts as gone (keep-alives go out at a quarter of it).
    /// Default: 3 s.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Longest wait for one packet's result before its node counts as lost. Default:
    /// 330 s (a node's own packet limit is 300 s).
    pub fn packet_timeout(mut self, timeout: Duration) -> Self {
        self.packet_timeout = timeout;
        self
    }

    /// Packets in flight per remote core, so the link and the core both stay busy.
    /// Default: 2.
    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = slots.max(1);
        self
    }

    /// Runs every packet on this many different nodes and keeps the result the majority
    /// agrees on (by digest); a node whose result disagrees is reported in
    /// [`JobReport::disagreements`] and excluded from the rest of the job. For clusters
    /// with machines nobody vouches for. A job fails with [`ClientError::TooFewNodes`]
    /// when fewer nodes than this take it (or remain). Default: 1 (no redundancy).
    pub fn redundancy(mut self, copies: u32) -> Self {
        self.redundancy = copies.max(1);
        self
    }

    /// Receives a line for each notable event. Default: events go to `tracing` only.
    pub fn on_event(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(f));
        self
    }

    /// Receives a job's progress each time a packet's results are committed (items done,
    /// per node). Default: none.
    pub fn on_progress(mut self, f: impl Fn(&JobProgress) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }
}

/// Errors of the cluster client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint could not be made.
    #[error(transparent)]
    Endpoint(#[from] wire::EndpointError),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// No node could be reached.
    #[error("no cluster node is reachable{}", describe_tried(.0))]
    NoNodes(Vec<String>),
    /// The job does not fit the kernel.
    #[error("{0}")]
    BadJob(String),
    /// The kernel failed on a node (crash, panic, time limit): the job fails.
    #[error("the job failed on node {node}: {reason}")]
    KernelFailed {
        /// The node.
        node: String,
        /// What happened.
        reason: String,
    },
    /// Redundancy needs more nodes than took the job (or remain in it).
    #[error("redundancy {copies} runs every packet on {copies} different nodes, but {}", describe_nodes(*.nodes))]
    TooFewNodes {
        /// Copies of each packet asked for.
        copies: u32,
        /// Nodes available.
        nodes: usize,
    },
    /// Every node refused the job (its package, kernel or buffers), each for its reason.
    #[error("no node could take the job: {}", .0.join("; "))]
    NoNodeTookTheJob(Vec<String>),
    /// The nodes serve no device of the kinds the job may use.
    #[error("no node serves {} that runs kernel `{kernel}`{}", describe_choice(*.devices), hint_choice(*.devices))]
    NoDevices {
        /// The kernel.
        kernel: String,
        /// The kinds of device the job may use.
        devices: DeviceChoice,
    },
    /// Every node was lost before the job finished.
    #[error("every node was lost before the job finished: {}", .0.join("; "))]
    AllNodesLost(Vec<String>),
    /// Every node was lost (or excluded) before the job finished; what was committed is
    /// in the job's buffers and the rest can be run elsewhere (the `offload` CLI and the
    /// `Cluster` API finish it on this machine).
    #[error("{}", .0)]
    Unfinished(Box<Unfinished>),
}

/// A cluster job cut short: the results of the committed packets are in the job's
/// buffers (`out`/`inout` slices written, `sum` partials added); `remaining` are the
/// items still to run.
#[derive(Debug, Clone)]
pub struct Unfinished {
    /// Why, one line per node that was lost or excluded.
    pub why: Vec<String>,
    /// The item ranges not yet committed, in order.
    pub remaining: Vec<std::ops::Range<u64>>,
    /// Packets committed before the job was cut short.
    pub committed_packets: u64,
}

impl std::fmt::Display for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let left: u64 = self.remaining.iter().map(|r| r.end - r.start).sum();
        write!(
            f,
            "every node was lost before the job finished ({} packets were committed, {left} items remain): {}",
            self.committed_packets,
            self.why.join("; ")
        )
    }
}

fn describe_choice(devices: DeviceChoice) -> &'static str {
    match devices {
        DeviceChoice::Cpu => "a CPU worker",
        DeviceChoice::OpenCl => "an OpenCL device",
        DeviceChoice::Auto => "a device",
    }
}

fn hint_choice(devices: DeviceChoice) -> &'static str {
    match devices {
        DeviceChoice::OpenCl => " (nodes serve their OpenCL devices when started with `offload node --opencl`, and only for kernels that lower to OpenCL C)",
        _ => "",
    }
}

fn describe_nodes(nodes: usize) -> String {
    match nodes {
        0 => "no node is left".into(),
        1 => "only 1 node is available".into(),
        n => format!("only {n} nodes are available"),
    }
}

fn describe_tried(tried: &[String]) -> String {
    if tried.is_empty() {
        " (none given with --peer and none found by discovery)".into()
    } else {
        format!(": {}", tried.join("; "))
    }
}

/// One argument of a cluster job, in manifest order.
pub enum JobArg<'a> {
    /// A scalar.
    Scalar(ScalarValue),
    /// A buffer the job only reads (`in`, split or whole).
    Input(&'a [u8]),
    /// A buffer the job writes: `out` and `inout` slices receive the results (what a
    /// kernel leaves unwritten in an `out` slice is zero), `sum` buffers get the job's
    /// totals added to them.
    Output(&'a mut [u8]),
}

impl JobArg<'_> {
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            JobArg::Scalar(_) => None,
            JobArg::Input(bytes) => Some(bytes),
            JobArg::Output(bytes) => Some(bytes),
        }
    }
}

/// Settings of one job that may differ from the client's [`ClientConfig`].
#[derive(Debug, Clone, Copy, Default)]
pub struct JobSettings {
    /// Copies of every packet on distinct nodes (default: the config's).
    pub redundancy: Option<u32>,
    /// Which devices of the nodes run packets (default: the config's).
    pub devices: Option<DeviceChoice>,
}

/// What a finished cluster job did.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Items run.
    pub items: u64,
    /// Packets committed.
    pub packets: u64,
    /// Packets committed per node name.
    pub packets_per_node: Vec<(String, u64)>,
    /// Packets committed per scheduler device (`NODE/cpuN` for a CPU worker,
    /// `NODE/openclN: DEVICE` for an OpenCL device of the node), in the order the
    /// devices joined; devices that committed nothing are listed with 0.
    pub packets_per_device: Vec<(String, u64)>,
    /// Nodes lost during the job, with the reason.
    pub lost: Vec<String>,
    /// Nodes excluded because a result of theirs disagreed with the majority of a
    /// packet's copies (with redundancy), one line each naming the node and the items.
    pub disagreements: Vec<String>,
    /// Nodes that paused during the job (their owner came back, or they were stopped),
    /// one line each naming the node and why; their packets ran elsewhere.
    pub paused: Vec<String>,
    /// Time from the first packet to the last commit.
    pub run_time: Duration,
    /// Time to upload and prepare the job on the nodes.
    pub prepare_time: Duration,
    /// Nodes that were lost and came back during the job (reconnected, prepared again
    /// and given new devices), with the packets they committed after rejoining.
    pub rejoined: Vec<(String, u64)>,
    /// Nodes whose advertised tuned rate (items/s per worker) was the scheduler's first
    /// estimate for this kernel; the others were calibrated with a first small packet.
    pub tuned_rates: Vec<(String, f64)>,
    /// Each node's link as the scheduler saw it at the end of the job: measured from
    /// the job's transfers, or the prior when none was measured.
    pub links: Vec<LinkFigure>,
}

/// A node's link as the client measured it ([`JobReport::links`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkFigure {
    /// The node, as [`JobReport::packets_per_node`] names it.
    pub node: String,
    /// The node's address.
    pub addr: SocketAddr,
    /// Estimated one-way latency, µs.
    pub latency_us: f64,
    /// Estimated bandwidth, bytes per second.
    pub bytes_per_s: f64,
    /// Transfers measured in this job (bandwidth samples); 0 means the bandwidth is the
    /// prior (a former job's measurement, or the client's first guess: gigabit).
    pub transfers: u64,
    /// Latency probes (timed pings) measured in this job.
    pub probes: u64,
}

/// A connected node.
#[derive(Clone)]
pub(crate) struct Remote {
    pub(crate) addr: SocketAddr,
    pub(crate) info: NodeInfo,
    pub(crate) connection: quinn::Connection,
    rtt: Duration,
}

/// A client connected to the nodes of a cluster.
pub struct ClusterClient {
    runtime: crate::driver::Driver,
    endpoint: quinn::Endpoint,
    config: ClientConfig,
    addrs: Vec<SocketAddr>,
    remotes: Vec<Remote>,
    next_job: u64,
    /// Each node's link as the last job measured it: the prior of the next job.
    measured_links: HashMap<SocketAddr, Link>,
    /// Nodes that could not be reached or were lost, tried again in the background.
    unreachable: HashMap<SocketAddr, Unreachable>,
}

/// The first wait before a node that could not be reached is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between two attempts on a node that does not answer.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A node that could not be reached (or was lost): when to try it next, and the
/// attempt under way.
struct Unreachable {
    /// The wait after the next failed attempt, doubled each time up to [`RETRY_MAX`].
    delay: Duration,
    /// When the next attempt may start.
    due: Instant,
    attempt: Option<tokio::task::JoinHandle<Result<Remote, String>>>,
}

impl Unreachable {
    /// A node to try again from `now`.
    fn new(now: Instant) -> Unreachable {
        Unreachable {
            delay: RETRY_FIRST,
            due: now,
            attempt: None,
        }
    }
}

/// Connects to the node at `addr`, giving up after `timeout`.
async fn connect_bounded(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Remote, String> {
    tokio::time::timeout(timeout, connect_one(endpoint, addr))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

impl ClusterClient {
    /// Connects to every peer and every node discovery finds. Nodes that cannot be
    /// reached or refuse us are reported through the event callback; at least one must
    /// accept.
    pub fn connect(config: ClientConfig) -> Result<ClusterClient, ClientError> {
        let runtime = crate::driver::Driver::new().map_err(ClientError::Runtime)?;
        let endpoint = {
            let _guard = runtime.enter();
            wire::client_endpoint(&config.credentials, config.idle_timeout)?
        };
        let mut addrs = config.peers.clone();
        if let Some(window) = config.discover {
            // Only this cluster's nodes: another cluster's on the same LAN would refuse us.
            let ca = config.credentials.ca_fingerprint();
            let found = crate::discovery::find(&[crate::discovery::Source::Mdns], &ca, window);
            for line in &found.skipped {
                tracing::info!("discovery: {line}");
            }
            for line in &found.failures {
                notify(&config.on_event, &format!("discovery failed: {line}"));
            }
            addrs.extend(found.addrs);
        }
        addrs.sort();
        addrs.dedup();
        let mut client = ClusterClient {
            runtime,
            endpoint,
            config,
            addrs,
            remotes: Vec::new(),
            next_job: 1,
            measured_links: HashMap::new(),
            unreachable: HashMap::new(),
        };
        client.reconnect()?;
        Ok(client)
    }

    /// Connects to known nodes that are not connected (a node that restarted rejoins
    /// here). Fails if no node is connected afterwards.
    ///
    /// A node met for the first time is waited for (the first job needs its nodes). One
    /// that could not be reached, or was lost during a job, is tried again in the
    /// background, after a delay that doubles from [`RETRY_FIRST`] to [`RETRY_MAX`],
    /// and joins the first job after it answers: a program of many steps does not wait
    /// for a dead node's connection timeout at every step. With no node connected, the
    /// attempts are waited for.
    fn reconnect(&mut self) -> Result<(), ClientError> {
        let now = Instant::now();
        let (open, closed): (Vec<Remote>, Vec<Remote>) = std::mem::take(&mut self.remotes)
            .into_iter()
            .partition(|r| r.connection.close_reason().is_none());
        self.remotes = open;
        for remote in closed {
            self.unreachable
                .entry(remote.addr)
                .or_insert_with(|| Unreachable::new(now));
        }
        let mut tried = self.collect_attempts(false)?;
        let fresh: Vec<SocketAddr> = self
            .addrs
            .iter()
            .copied()
            .filter(|a| {
                !self.remotes.iter().any(|r| r.addr == *a) && !self.unreachable.contains_key(a)
            })
            .collect();
        let endpoint = self.endpoint.clone();
        let timeout = self.config.connect_timeout;
        let tried_now = fresh.clone();
        let results = self
            .runtime
            .block_on(async move {
                let tasks: Vec<_> = fresh
                    .into_iter()
                    .map(|addr| {
                        let endpoint = endpoint.clone();
                        tokio::spawn(async move {
                            (addr, connect_bounded(&endpoint, addr, timeout).await)
                        })
                    })
                    .collect();
                let mut results = Vec::new();
                for task in tasks {
                    if let Ok(result) = task.await {
                        results.push(result);
                    }
                }
                results
            })
            .map_err(ClientError::Runtime)?;
        let mut refusals = Vec::new();
        for (addr, outcome) in results {
            match outcome {
                Ok(remote) => self.connected(remote),
                Err(reason) => {
                    let line = format!("node {addr}: {reason}");
                    refusals.push(line.clone());
                    tried.push(line);
                    let mut retry = Unreachable::new(now);
                    retry.due = now + retry.delay;
                    self.unreachable.insert(addr, retry);
                }
            }
        }
        // Nothing to run on: every node not just tried is tried now, and waited for.
        let waiting = self.remotes.is_empty();
        let due: Vec<SocketAddr> = self
            .unreachable
            .iter()
            .filter(|(addr, u)| {
                u.attempt.is_none() && !tried_now.contains(addr) && (waiting || u.due <= now)
            })
            .map(|(addr, _)| *addr)
            .collect();
        for addr in due {
            let endpoint = self.endpoint.clone();
            let attempt = {
                let _runtime = self.runtime.enter();
                tokio::spawn(async move { connect_bounded(&endpoint, addr, timeout).await })
            };
            if let Some(u) = self.unreachable.get_mut(&addr) {
                u.attempt = Some(attempt);
            }
        }
        if waiting {
            tried.extend(self.collect_attempts(true)?);
        }
        if self.remotes.is_empty() {
            // The error lists them: said once, not also as events.
            return Err(ClientError::NoNodes(tried));
        }
        for line in refusals {
            notify(&self.config.on_event, &line);
        }
        Ok(())
    }

    /// Takes in the background connection attempts that have ended (all of them, waiting
    /// for each, with `wait`): a node that answered is connected, one that did not is
    /// tried again later. Returns a line per failed attempt.
    fn collect_attempts(&mut self, wait: bool) -> Result<Vec<String>, ClientError> {
        let ended: Vec<SocketAddr> = self
            .unreachable
            .iter()
            .filter(|(_, u)| u.attempt.as_ref().is_some_and(|a| wait || a.is_finished()))
            .map(|(addr, _)| *addr)
            .collect();
        let mut failed = Vec::new();
        for addr in ended {
            let Some(attempt) = self
                .unreachable
                .get_mut(&addr)
                .and_then(|u| u.attempt.take())
            else {
                continue;
            };
            let outcome = self
                .runtime
                .block_on(attempt)
                .map_err(ClientError::Runtime)?
                .unwrap_or_else(|e| Err(format!("connection task failed: {e}")));
            match outcome {
                Ok(remote) => {
                    self.unreachable.remove(&addr);
                    self.connected(remote);
                }
                Err(reason) => {
                    if let Some(u) = self.unreachable.get_mut(&addr) {
                        u.delay = (u.delay * 2).min(RETRY_MAX);
                        u.due = Instant::now() + u.delay;
                        let line = format!("node {addr}: {reason}");
                        if !wait {
                            notify(
                                &self.config.on_event,
                                &format!("{line}; tried again in {:?}", u.delay),
                            );
                        }
                        failed.push(line);
                    }
                }
            }
        }
        Ok(failed)
    }

    /// Keeps a node that answered.
    fn connected(&mut self, remote: Remote) {
        tracing::info!(
            "connected to node {} at {} ({} cores, {})",
            remote.info.name,
            remote.addr,
            remote.info.cores,
            remote.info.cpu
        );
        self.remotes.retain(|r| r.addr != remote.addr);
        self.remotes.push(remote);
    }

    /// Replaces the progress callback for the next jobs ([`ClientConfig::on_progress`]).
    pub fn set_progress(&mut self, f: Option<Arc<ProgressFn>>) {
        self.config.on_progress = f;
    }

    /// The connected nodes: address and description.
    pub fn nodes(&self) -> Vec<(SocketAddr, NodeInfo)> {
        self.remotes
            .iter()
            .map(|r| (r.addr, r.info.clone()))
            .collect()
    }

    /// A line per connected node on its QUIC path: datagram size, round-trip time,
    /// packets sent and lost (diagnostics for benchmarks and `-v`).
    pub fn transport_summary(&self) -> Vec<String> {
        self.remotes
            .iter()
            .map(|r| {
                let stats = r.connection.stats();
                format!(
                    "{}: MTU {} bytes, RTT {:?}, {} datagrams sent, {} packets lost, {} black holes",
                    r.addr,
                    stats.path.current_mtu,
                    stats.path.rtt,
                    stats.udp_tx.datagrams,
                    stats.path.lost_packets,
                    stats.path.black_holes_detected
                )
            })
            .collect()
    }

    /// The first node's connection (the benchmarks talk to one node).
    fn first_connection(&self) -> Result<quinn::Connection, ClientError> {
        self.remotes
            .first()
            .map(|remote| remote.connection.clone())
            .ok_or(ClientError::NoNodes(Vec::new()))
    }

    /// Round trip of an empty request to the first node (benchmarks).
    pub fn ping(&self) -> Result<Duration, ClientError> {
        let connection = self.first_connection()?;
        self.runtime
            .block_on(async move {
                let started = Instant::now();
                request(&connection, &Request::Ping).await?;
                Ok::<_, WireError>(started.elapsed())
            })
            .map_err(ClientError::Runtime)?
            .map_err(|e| ClientError::AllNodesLost(vec![e.to_string()]))
    }

    /// Sends `count` empty requests to the first node with up to `window` in flight and
    /// returns the time taken (benchmarks: packets per second with pipelining).
    pub fn ping_pipelined(&self, count: usize, window: usize) -> Result<Duration, ClientError> {
        self.pipelined(count, window, |connection| async move {
            match request(&connection, &Request::Ping).await {
                Ok(Response::Pong) => Ok(()),
                Ok(other) => Err(format!("unexpected answer to a ping: {}", other.describe())),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    /// Uploads `bytes` as a whole buffer to the first node `count` times over `streams`
    /// parallel streams and returns the time taken (benchmarks: bulk throughput). The
    /// bytes are hashed once, before the clock starts, as a job hashes its buffers once.
    pub fn upload_bulk(
        &self,
        bytes: Arc<Vec<u8>>,
        count: usize,
        streams: usize,
    ) -> Result<Duration, ClientError> {
        let hash = *blake3::hash(&bytes).as_bytes();
        self.pipelined(count, streams, move |connection| {
            let bytes = Arc::clone(&bytes);
            async move {
                match upload_buffer(&connection, hash, bytes).await {
                    Ok(Response::Stored(_)) => Ok(()),
                    Ok(other) => Err(format!("upload refused: {}", other.describe())),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
    }

    /// Runs `count` exchanges made by `exchange` with the first node, at most `window` at
    /// a time, and returns the time taken; the first failure ends it.
    fn pipelined<F, Fut>(
        &self,
        count: usize,
        window: usize,
        exchange: F,
    ) -> Result<Duration, ClientError>
    where
        F: Fn(quinn::Connection) -> Fut + Send,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let connection = self.first_connection()?;
        self.runtime
            .block_on(async move {
                let started = Instant::now();
                let semaphore = Arc::new(tokio::sync::Semaphore::new(window.max(1)));
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..count {
                    let permit = Arc::clone(&semaphore).acquire_owned().await;
                    let one = exchange(connection.clone());
                    tasks.spawn(async move {
                        let _permit = permit;
                        one.await
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    done.map_err(|e| format!("task failed: {e}"))??;
                }
                Ok::<_, String>(started.elapsed())
            })
            .map_err(ClientError::Runtime)?
            .map_err(|e| ClientError::AllNodesLost(vec![e]))
    }

    /// Runs `kernel` of `package` over items `0..items` on the connected nodes. On
    /// success `out`, `inout` and `sum` buffers in `args` hold the results, exactly as a
    /// local run leaves them. Nodes lost during the job have their packets re-run
    /// elsewhere; a kernel failure on any node fails the job.
    pub fn run_job(
        &mut self,
        package: &Package,
        kernel: &str,
        items: u64,
        args: &mut [JobArg<'_>],
    ) -> Result<JobReport, ClientError> {
        self.run_job_with(package, kernel, items, args, &JobSettings::default(), None)
    }

    /// [`run_job`](Self::run_job) with `settings` for this job and `progress` called (as
    /// well as [`ClientConfig::on_progress`]) each time packets are committed.
    pub fn run_job_with(
        &mut self,
        package: &Package,
        kernel: &str,
        items: u64,
        args: &mut [JobArg<'_>],
        settings: &JobSettings,
        progress: Option<&ProgressFn>,
    ) -> Result<JobReport, ClientError> {
        self.reconnect()?;
        let job_id = self.next_job;
        self.next_job += 1;
        let layout = Layout::new(package, kernel, items, args)?;
        let remotes: Vec<Remote> = self.remotes.iter().map(Remote::clone).collect();
        let job = JobRun {
            id: job_id,
            package: package.clone(),
            kernel: kernel.to_string(),
            items,
            layout,
            on_event: self.config.on_event.clone(),
            on_progress: self.config.on_progress.clone(),
            slots: self.config.slots,
            redundancy: settings.redundancy.unwrap_or(self.config.redundancy).max(1),
            devices: settings.devices.unwrap_or(self.config.devices),
            packet_timeout: self.config.packet_timeout,
            endpoint: self.endpoint.clone(),
            connect_timeout: self.config.connect_timeout,
            known_links: self.measured_links.clone(),
        };
        let (report, rejoined) = self
            .runtime
            .block_on(job.run(remotes, args, progress))
            .map_err(ClientError::Runtime)??;
        for link in report.links.iter().filter(|l| l.transfers + l.probes > 0) {
            self.measured_links.insert(
                link.addr,
                Link::new(link.latency_us, link.bytes_per_s / 1e6),
            );
        }
        // Keep the connections of nodes that came back, for the next job.
        for remote in rejoined {
            if let Some(attempt) = self
                .unreachable
                .remove(&remote.addr)
                .and_then(|u| u.attempt)
            {
                attempt.abort();
            }
            self.remotes.retain(|r| r.addr != remote.addr);
            self.remotes.push(remote);
        }
        Ok(report)
    }
}

impl Drop for ClusterClient {
    fn drop(&mut self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"client done");
        // Drive the runtime until the close frames are out, so nodes see a clean close
        // rather than waiting for their idle timeout; bounded, in case a node is gone.
        let endpoint = self.endpoint.clone();
        let closed = self.runtime.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_millis(250), endpoint.wait_idle()).await;
        });
        if let Err(e) = closed {
            tracing::debug!("cannot wait for the connections to close: {e}");
        }
    }
}

/// Tells the user about `line`: through the event callback if there is one (the CLI
/// prints it once), else as a warning in the log.
fn notify(on_event: &Option<Arc<EventFn>>, line: &str) {
    match on_event {
        Some(f) => {
            tracing::debug!("{line}");
            f(line);
        }
        None => tracing::warn!("{line}"),
    }
}

/// Why a connection to a node failed or ended, in words: which side refused whose
/// certificate and why (the node's verifier sends its reason in the close), or that the
/// node stopped answering.
fn describe_connection_error(error: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    let strip = crate::certs::plain;
    // QUIC carries TLS alerts as error codes 0x100-0x1ff.
    let tls = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match error {
        // Our own verifier refused the node's certificate.
        E::TransportError(e) if tls(e.code) => {
            format!("this client refused the node: {}", strip(&e.reason))
        }
        // The node ended the handshake: its verifier refused our certificate.
        E::ConnectionClosed(close) if tls(close.error_code) => {
            let reason = String::from_utf8_lossy(&close.reason);
            if reason.is_empty() {
                format!(
                    "the node refused this client's certificate ({})",
                    close.error_code
                )
            } else {
                format!("the node refused this client: {}", strip(&reason))
            }
        }
        E::TimedOut => "no answer: the node is unreachable or not running".into(),
        E::ApplicationClosed(close) => format!(
            "the node closed the connection ({})",
            String::from_utf8_lossy(&close.reason)
        ),
        other => other.to_string(),
    }
}

pub(crate) async fn connect_one(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<Remote, String> {
    let connection = endpoint
        .connect(addr, crate::credentials::SERVER_NAME)
        .map_err(|e| format!("cannot connect: {e}"))?
        .await
        .map_err(|e| describe_connection_error(&e))?;
    let started = Instant::now();
    let hello = Hello {
        magic: protocol::MAGIC,
        version: protocol::VERSION,
        client: host_label(),
    };
    let reply = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        wire::send(&mut send, &hello, MAX_CONTROL).await?;
        wire::recv::<HelloReply>(&mut recv, MAX_CONTROL).await
    }
    .await
    .map_err(|e| match (e, connection.close_reason()) {
        (WireError::Connection(e), _) => describe_connection_error(&e),
        // In TLS 1.3 the node checks our certificate after our side of the handshake
        // is done: its refusal closes the connection during the hello, and the close
        // says why.
        (_, Some(closed)) => describe_connection_error(&closed),
        (other, None) => format!("the hello failed: {other}"),
    })?;
    let rtt = started.elapsed();
    match reply {
        HelloReply::Welcome { node, .. } => Ok(Remote {
            addr,
            info: node,
            connection,
            rtt,
        }),
        HelloReply::Refused { version, reason } => Err(format!(
            "refused (node protocol version {version}, ours {}): {reason}",
            protocol::VERSION
        )),
    }
}

fn host_label() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "client".into())
}

/// One request on its own stream, one response back.
pub(crate) async fn request(
    connection: &quinn::Connection,
    request: &Request,
) -> Result<Response, WireError> {
    let (mut send, mut recv) = connection.open_bi().await?;
    wire::send(&mut send, request, MAX_DATA).await?;
    wire::recv(&mut recv, MAX_DATA).await
}

/// Uploads a whole buffer: a [`Request::Buffer`] frame, then its bytes raw, without a
/// copy on this side.
async fn upload_buffer(
    connection: &quinn::Connection,
    hash: Hash,
    bytes: Arc<Vec<u8>>,
) -> Result<Response, WireError> {
    let (mut send, mut recv) = connection.open_bi().await?;
    let len = bytes.len() as u64;
    let payload = bytes::Bytes::from_owner(SharedBytes(bytes));
    wire::send_with_payload(&mut send, &Request::Buffer { len, hash }, payload).await?;
    wire::recv(&mut recv, MAX_CONTROL).await
}

/// Runs one packet on its own stream: its request (the inputs) out, its response (the
/// results) back, timing both on `meter` as `link_meter.rs` explains: the request from
/// its first write to QUIC's acknowledgement of its last byte, the response from its
/// first byte's arrival to its last's. The node's compute lies between the two and is
/// in neither.
async fn run_packet(
    connection: &quinn::Connection,
    request: &Request,
    meter: &Arc<Mutex<LinkMeter>>,
) -> Result<Response, WireError> {
    let frame = protocol::encode(request, MAX_DATA)?;
    let sent = frame.len() as u64;
    let (mut send, mut recv) = connection.open_bi().await?;
    let down = TimedTransfer::start(meter, Direction::Down, connection);
    wire::send_frame(&mut send, &frame).await?;
    drop(frame);
    let acknowledged = async {
        // `None`: the node acknowledged every byte; a stop or a lost connection leaves
        // the transfer unfinished, so its period is not measured.
        if let Ok(None) = send.stopped().await {
            down.done(sent);
        }
    };
    let response = async {
        let mut prefix = [0u8; 4];
        recv.read_exact(&mut prefix[..1]).await?;
        let up = TimedTransfer::start(meter, Direction::Up, connection);
        recv.read_exact(&mut prefix[1..]).await?;
        let len = protocol::frame_len(prefix, MAX_DATA)?;
        let mut body = vec![0u8; len];
        // A response found mostly received when this task first reads it (the client
        // was busy while it arrived) says nothing about how fast it came: timed from
        // here it would look many times faster than the link. Only responses read as
        // they arrive are samples.
        let mut filled = 0usize;
        let mut first_read = None;
        while filled < len {
            match recv.read(&mut body[filled..]).await? {
                Some(n) => {
                    filled += n;
                    first_read.get_or_insert(filled);
                }
                None => return Err(quinn::ReadExactError::FinishedEarly(filled).into()),
            }
        }
        if first_read.is_some_and(|first| first * 2 < len) {
            up.done(prefix.len() as u64 + len as u64);
        } else {
            up.discard();
        }
        Ok::<_, WireError>(protocol::decode(&body, MAX_DATA)?)
    };
    let ((), response) = tokio::join!(acknowledged, response);
    response
}

/// A transfer being timed on a node's link meter; one dropped before [`Self::done`]
/// (failed, or cut off by a timeout) counts as failed.
struct TimedTransfer {
    meter: Arc<Mutex<LinkMeter>>,
    direction: Direction,
    connection: quinn::Connection,
    open: bool,
}

impl TimedTransfer {
    fn start(
        meter: &Arc<Mutex<LinkMeter>>,
        direction: Direction,
        connection: &quinn::Connection,
    ) -> TimedTransfer {
        lock_meter(meter).begin(direction, Instant::now());
        TimedTransfer {
            meter: Arc::clone(meter),
            direction,
            connection: connection.clone(),
            open: true,
        }
    }

    fn done(mut self, bytes: u64) {
        self.end(Some(bytes));
    }

    /// Ends the transfer without a measurement: its busy period is not a sample.
    fn discard(mut self) {
        self.end(None);
    }

    fn end(&mut self, bytes: Option<u64>) {
        if std::mem::take(&mut self.open) {
            // Half of QUIC's smoothed round trip, which leaves out the node's reported
            // acknowledgement delays.
            let latency = self.connection.rtt() / 2;
            lock_meter(&self.meter).end(self.direction, Instant::now(), bytes, latency);
        }
    }
}

impl Drop for TimedTransfer {
    fn drop(&mut self) {
        self.end(None);
    }
}

/// The meter, also if a task panicked while holding it (its state is still whole: every
/// update is one call).
fn lock_meter(meter: &Mutex<LinkMeter>) -> std::sync::MutexGuard<'_, LinkMeter> {
    meter
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A shared buffer lent to quinn as [`bytes::Bytes`] without copying it.
struct SharedBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// How each argument travels, derived once from the job's checked layout.
struct Layout {
    wire: Vec<WireArg>,
    /// Whole buffers: hash and bytes.
    wholes: Vec<(Hash, Arc<Vec<u8>>)>,
    /// Per argument: (bytes per item, input, output) for split buffers.
    splits: Vec<Option<(u64, bool, bool)>>,
    /// Per argument: element type of sum buffers.
    sums: Vec<Option<ScalarType>>,
    /// The job as the shared checker saw it (halos, sizes).
    checked: kernel_model::Layout,
}

impl Layout {
    fn new(
        package: &Package,
        kernel: &str,
        items: u64,
        args: &[JobArg<'_>],
    ) -> Result<Layout, ClientError> {
        let spec = package
            .manifest()
            .kernel(kernel)
            .ok_or_else(|| ClientError::BadJob(format!("the package has no kernel `{kernel}`")))?;
        let given: Vec<Given> = args
            .iter()
            .map(|a| match a {
                JobArg::Scalar(v) => Given::Scalar(*v),
                JobArg::Input(bytes) => Given::Buffer {
                    bytes: bytes.len() as u64,
                    elem: None,
                    access: Some(kernel_model::Access::In),
                },
                JobArg::Output(bytes) => Given::bytes(bytes.len() as u64),
            })
            .collect();
        let checked = kernel_model::check(spec, items, &given)
            .map_err(|e| ClientError::BadJob(e.to_string()))?;
        if checked.args.len() != args.len() {
            return Err(ClientError::BadJob(format!(
                "kernel `{kernel}` takes {} arguments ({}): on a cluster every one is given, the lengths the runtime fills in too",
                checked.args.len(),
                spec.signature()
            )));
        }
        let mut layout = Layout {
            wire: Vec::new(),
            wholes: Vec::new(),
            splits: Vec::new(),
            sums: Vec::new(),
            checked: checked.clone(),
        };
        for (slot, (arg, value)) in checked.args.iter().zip(args).enumerate() {
            let (wire, split, sum) = match (arg, value) {
                (ArgLayout::Scalar(v), _) => (WireArg::Scalar(v.to_bits()), None, None),
                (ArgLayout::Whole { .. }, JobArg::Input(bytes)) => {
                    if bytes.len() > MAX_DATA - 64 {
                        return Err(ClientError::BadJob(format!(
                            "a whole buffer of {} bytes is more than one message may carry ({MAX_DATA})",
                            bytes.len()
                        )));
                    }
                    let hash = *blake3::hash(bytes).as_bytes();
                    layout.wholes.push((hash, Arc::new(bytes.to_vec())));
                    (WireArg::Whole(hash), None, None)
                }
                (ArgLayout::Split { access, halo, .. }, value)
                    if value.bytes().is_some()
                        && (!access.writes_output() || matches!(value, JobArg::Output(_))) =>
                {
                    let per_item = arg.bytes_per_item();
                    let (input, output) = (access.reads_input(), access.writes_output());
                    (
                        WireArg::Split {
                            bytes_per_item: per_item,
                            input,
                            output,
                            halo: *halo,
                        },
                        Some((per_item, input, output)),
                        None,
                    )
                }
                (ArgLayout::Sum { elem, .. }, JobArg::Output(bytes)) => {
                    (WireArg::Sum(bytes.len() as u64), None, Some(*elem))
                }
                // The checker matched buffers to buffers; what is left is the kind of
                // view given.
                (layout, _) => {
                    return Err(ClientError::BadJob(format!(
                        "argument `{}` of kernel `{kernel}` is {}: give it as {}",
                        spec.args.get(slot).map_or("?", |a| a.name.as_str()),
                        match layout.access() {
                            Some(access) if access.writes_output() => "a buffer the kernel writes",
                            _ => "a buffer the kernel only reads",
                        },
                        match layout.access() {
                            Some(access) if access.writes_output() => "JobArg::Output",
                            _ => "JobArg::Input",
                        }
                    )))
                }
            };
            layout.wire.push(wire);
            layout.splits.push(split);
            layout.sums.push(sum);
        }
        // One item must fit in a message each way, or no packet could carry it.
        let sums = layout.sum_bytes();
        let room = (MAX_DATA as u64).saturating_sub(PACKET_FRAMING);
        for (what, bytes) in [
            ("inputs", layout.bytes_per_item(true)),
            (
                "outputs and sums",
                layout.bytes_per_item(false).saturating_add(sums),
            ),
        ] {
            if bytes > room {
                return Err(ClientError::BadJob(format!(
                    "one item of kernel `{kernel}` carries {bytes} bytes of {what}, more than a message to a node may hold ({room} bytes): use more, smaller items"
                )));
            }
        }
        Ok(layout)
    }

    /// Bytes of the `sum` partials a result carries.
    fn sum_bytes(&self) -> u64 {
        self.wire
            .iter()
            .map(|arg| match arg {
                WireArg::Sum(bytes) => *bytes,
                _ => 0,
            })
            .sum()
    }

    fn bytes_per_item(&self, inputs: bool) -> u64 {
        self.splits
            .iter()
            .flatten()
            .filter(|(_, input, output)| if inputs { *input } else { *output })
            .map(|(bpi, _, _)| *bpi)
            .sum()
    }

    /// The most items one packet may hold so that its message each way (the input
    /// slices going out, the output slices and `sum` partials coming back) stays within
    /// [`MAX_DATA`], with room for the framing. Without this cap a large job on few
    /// devices would get packets no message can carry.
    fn max_packet_items(&self) -> u64 {
        const FRAMING: u64 = PACKET_FRAMING;
        let sums = self.sum_bytes();
        let per_item = self
            .bytes_per_item(true)
            .max(self.bytes_per_item(false))
            .max(1);
        let room = (MAX_DATA as u64).saturating_sub(FRAMING + sums);
        (room / per_item).max(1)
    }

    /// The packet's slices of the input split buffers.
    fn slices(&self, args: &[JobArg<'_>], start: u64, end: u64) -> Vec<Vec<u8>> {
        let mut slices = Vec::new();
        for (slot, (split, value)) in self.splits.iter().zip(args).enumerate() {
            if let (Some((_, true, _)), Some(bytes)) = (split, value.bytes()) {
                // With its halo: the neighbours' items it may read.
                let range = self.checked.byte_range(slot, start, end, true);
                slices.push(bytes[range.start as usize..range.end as usize].to_vec());
            }
        }
        slices
    }

    /// What every packet's result holds: one entry per output split buffer (bytes per
    /// item) and per sum buffer (its size), in argument order.
    fn output_shape(&self) -> Vec<OutputShape> {
        let mut shape = Vec::new();
        for (wire, split) in self.wire.iter().zip(&self.splits) {
            match (wire, split) {
                (_, Some((bpi, _, true))) => shape.push(OutputShape::PerItem(*bpi)),
                (WireArg::Sum(bytes), _) => shape.push(OutputShape::Fixed(*bytes)),
                _ => {}
            }
        }
        shape
    }

    /// Copies a committed result's slices into the job's buffers and returns its `sum`
    /// partials (added in item order by [`SumFold`]).
    fn commit(&self, args: &mut [JobArg<'_>], start: u64, outputs: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut outputs = outputs.into_iter();
        let mut partials = Vec::new();
        for ((split, sum), value) in self.splits.iter().zip(&self.sums).zip(args.iter_mut()) {
            if let Some((bpi, _, true)) = split {
                if let (Some(slice), JobArg::Output(bytes)) = (outputs.next(), value) {
                    let a = (start * bpi) as usize;
                    bytes[a..a + slice.len()].copy_from_slice(&slice);
                }
            } else if sum.is_some() {
                partials.extend(outputs.next());
            }
        }
        partials
    }

    /// Adds a job's `sum` totals into its `sum` buffers.
    fn add_totals(&self, args: &mut [JobArg<'_>], totals: &[Vec<u8>]) {
        let mut totals = totals.iter();
        for (sum, value) in self.sums.iter().zip(args.iter_mut()) {
            if let (Some(elem), JobArg::Output(bytes)) = (sum, value) {
                if let Some(total) = totals.next() {
                    elem.add_into(bytes, total);
                }
            }
        }
    }
}

/// A job's `sum` partials, added into zeroed totals in item order (by packet start) as
/// they become contiguous, whatever order packets complete in: with the fixed packet
/// size of jobs with `sum` buffers this gives the same totals, bit for bit, run after run
/// and as a local run.
struct SumFold {
    /// Committed partials not yet added, by start: (end, partials).
    waiting: std::collections::BTreeMap<u64, (u64, Vec<Vec<u8>>)>,
    totals: Vec<Vec<u8>>,
    next: u64,
}

impl SumFold {
    fn new(layout: &Layout) -> SumFold {
        let totals = layout
            .wire
            .iter()
            .filter_map(|w| match w {
                WireArg::Sum(bytes) => Some(vec![0u8; *bytes as usize]),
                _ => None,
            })
            .collect();
        SumFold {
            waiting: std::collections::BTreeMap::new(),
            totals,
            next: 0,
        }
    }

    fn add(&mut self, layout: &Layout, start: u64, end: u64, partials: Vec<Vec<u8>>) {
        if self.totals.is_empty() {
            return;
        }
        self.waiting.insert(start, (end, partials));
        while let Some((end, partials)) = self.waiting.remove(&self.next) {
            self.add_now(layout, &partials);
            self.next = end;
        }
    }

    fn add_now(&mut self, layout: &Layout, partials: &[Vec<u8>]) {
        let elems = layout.sums.iter().flatten();
        for ((total, partial), elem) in self.totals.iter_mut().zip(partials).zip(elems) {
            elem.add_into(total, partial);
        }
    }

    /// The totals, with any partials still waiting (a job cut short) added in order.
    fn finish(mut self, layout: &Layout) -> Vec<Vec<u8>> {
        for (_, (_, partials)) in std::mem::take(&mut self.waiting) {
            self.add_now(layout, &partials);
        }
        self.totals
    }
}

struct JobRun {
    id: u64,
    package: Package,
    kernel: String,
    items: u64,
    layout: Layout,
    on_event: Option<Arc<EventFn>>,
    on_progress: Option<Arc<ProgressFn>>,
    slots: u32,
    redundancy: u32,
    devices: DeviceChoice,
    packet_timeout: Duration,
    /// For reconnecting to lost nodes during the job.
    endpoint: quinn::Endpoint,
    connect_timeout: Duration,
    /// Links measured by former jobs, by node address: the prior in place of
    /// [`UNMEASURED_BYTES_PER_US`].
    known_links: HashMap<SocketAddr, Link>,
}

/// Room a packet's message keeps for everything but its slices.
const PACKET_FRAMING: u64 = 1 << 20;

/// Backoff between attempts to reconnect to a lost node during a job: the first after
/// this, each next one twice as late, up to [`REJOIN_MAX_DELAY`].
const REJOIN_FIRST_DELAY: Duration = Duration::from_millis(100);
const REJOIN_MAX_DELAY: Duration = Duration::from_secs(2);

/// What the shell's tasks tell it: an event for the job loop as it is, or a lost member
/// back, whose new connection the shell keeps before the loop hears of it.
enum Wake {
    Event(JobEvent),
    /// A lost member is reachable again and prepared for the job (also on these of
    /// its OpenCL devices).
    Rejoined {
        member: usize,
        remote: Remote,
        opencl: Vec<u32>,
    },
}

/// How often a paused node is asked whether it serves again.
const RESUME_POLL: Duration = Duration::from_millis(250);

impl JobRun {
    fn notify(&self, line: &str) {
        notify(&self.on_event, line);
    }

    /// Uploads what the node lacks and prepares the job there. Returns the node's
    /// OpenCL devices that took the job too.
    async fn prepare(
        connection: quinn::Connection,
        job: u64,
        package: Package,
        kernel: String,
        items: u64,
        wire_args: Vec<WireArg>,
        wholes: Vec<(Hash, Arc<Vec<u8>>)>,
    ) -> Result<Vec<u32>, String> {
        let hash = package.hash().0;
        let text = |e: WireError| e.to_string();
        if request(&connection, &Request::HavePackage(hash))
            .await
            .map_err(text)?
            != Response::Has(true)
        {
            match request(&connection, &Request::Package(package.as_bytes().to_vec()))
                .await
                .map_err(text)?
            {
                Response::Stored(h) if h == hash => {}
                Response::Error(e) => return Err(e),
                other => {
                    return Err(format!(
                        "unexpected answer to the package upload: {}",
                        other.describe()
                    ))
                }
            }
        }
        for (hash, bytes) in wholes {
            if request(&connection, &Request::HaveBuffer(hash))
                .await
                .map_err(text)?
                == Response::Has(true)
            {
                continue;
            }
            match upload_buffer(&connection, hash, Arc::clone(&bytes))
                .await
                .map_err(text)?
            {
                Response::Stored(h) if h == hash => {}
                Response::Error(e) => return Err(e),
                other => {
                    return Err(format!(
                        "unexpected answer to a buffer upload: {}",
                        other.describe()
                    ))
                }
            }
        }
        let prepare = Request::Prepare {
            job,
            package: hash,
            kernel,
            items,
            args: wire_args,
        };
        match request(&connection, &prepare).await.map_err(text)? {
            Response::Prepared { opencl } => Ok(opencl),
            Response::Error(e) => Err(e),
            other => Err(format!(
                "unexpected answer to prepare: {}",
                other.describe()
            )),
        }
    }

    /// Uploads what a node lacks and prepares this job on it, as a future that owns its
    /// data (so it can be spawned).
    fn prepare_task(
        &self,
        connection: quinn::Connection,
    ) -> impl std::future::Future<Output = Result<Vec<u32>, String>> + Send + 'static {
        JobRun::prepare(
            connection,
            self.id,
            self.package.clone(),
            self.kernel.clone(),
            self.items,
            self.layout.wire.clone(),
            self.layout.wholes.clone(),
        )
    }

    /// Reconnects to a lost member at `addr` with backoff until it answers and takes
    /// the job again, then says so on `tx`. Runs until the job ends (it is aborted then).
    fn rejoin(
        &self,
        member: usize,
        addr: SocketAddr,
        tx: mpsc::UnboundedSender<Wake>,
    ) -> tokio::task::JoinHandle<()> {
        let endpoint = self.endpoint.clone();
        let timeout = self.connect_timeout;
        let prepare = {
            let (id, package, kernel, items) = (
                self.id,
                self.package.clone(),
                self.kernel.clone(),
                self.items,
            );
            let (wire, wholes) = (self.layout.wire.clone(), self.layout.wholes.clone());
            move |connection: quinn::Connection| {
                JobRun::prepare(
                    connection,
                    id,
                    package.clone(),
                    kernel.clone(),
                    items,
                    wire.clone(),
                    wholes.clone(),
                )
            }
        };
        tokio::spawn(async move {
            let mut delay = REJOIN_FIRST_DELAY;
            loop {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(REJOIN_MAX_DELAY);
                let remote = match connect_bounded(&endpoint, addr, timeout).await {
                    Ok(remote) => remote,
                    Err(reason) => {
                        tracing::debug!("node {addr} not back yet: {reason}");
                        continue;
                    }
                };
                match prepare(remote.connection.clone()).await {
                    Ok(opencl) => {
                        let _ = tx.send(Wake::Rejoined {
                            member,
                            remote,
                            opencl,
                        });
                        return;
                    }
                    Err(reason) => {
                        tracing::info!("node {addr} is back but cannot take the job: {reason}");
                    }
                }
            }
        })
    }

    /// Watches `member`'s connection and reports its closing on `tx`.
    fn watch(
        member: usize,
        generation: u64,
        connection: quinn::Connection,
        tx: mpsc::UnboundedSender<Wake>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let reason = connection.closed().await;
            let _ = tx.send(Wake::Event(JobEvent::Closed {
                member,
                generation,
                reason: format!("connection lost: {reason}"),
            }));
        })
    }

    /// Asks a paused member's node for its status until it serves again, then says so
    /// on `tx`; ends quietly if the connection goes (its watcher reports that).
    fn await_resume(
        member: usize,
        epoch: u64,
        connection: quinn::Connection,
        tx: mpsc::UnboundedSender<Wake>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RESUME_POLL).await;
                match request(&connection, &Request::Status).await {
                    Ok(Response::Status(status))
                        if status.state == crate::protocol::NodeState::Serving =>
                    {
                        let _ = tx.send(Wake::Event(JobEvent::Resumed { member, epoch }));
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
    }

    /// The tokio shell around the job loop (`job_loop.rs`): prepares the job on every
    /// node, then turns the loop's actions into streams and tasks and what comes back
    /// into its events, until the loop decides the job's end.
    async fn run(
        self,
        remotes: Vec<Remote>,
        args: &mut [JobArg<'_>],
        progress: Option<&ProgressFn>,
    ) -> Result<(JobReport, Vec<Remote>), ClientError> {
        let prepare_started = Instant::now();
        // Prepare on every node at once.
        let tasks: Vec<_> = remotes
            .iter()
            .map(|r| tokio::spawn(self.prepare_task(r.connection.clone())))
            .collect();
        let mut joined: Vec<Joined> = Vec::new();
        // Per member: its connection and the meter its packets' transfers are timed on.
        let mut connections: Vec<quinn::Connection> = Vec::new();
        let mut meters: Vec<Arc<Mutex<LinkMeter>>> = Vec::new();
        let mut refusals = Vec::new();
        for (remote, task) in remotes.into_iter().zip(tasks) {
            let name = format!("{} ({})", remote.info.name, remote.addr);
            let outcome = task
                .await
                .unwrap_or_else(|e| Err(format!("task failed: {e}")));
            match outcome {
                Ok(opencl) => {
                    connections.push(remote.connection);
                    meters.push(Arc::new(Mutex::new(LinkMeter::default())));
                    joined.push(Joined {
                        name,
                        addr: remote.addr,
                        info: remote.info,
                        rtt: remote.rtt,
                        opencl,
                    });
                }
                Err(reason) => {
                    self.notify(&format!("node {name} cannot take the job: {reason}"));
                    refusals.push(format!("{name}: {reason}"));
                }
            }
        }
        if joined.is_empty() {
            return Err(if refusals.iter().all(|r| r.contains("connection lost")) {
                ClientError::AllNodesLost(refusals)
            } else {
                ClientError::NoNodeTookTheJob(refusals)
            });
        }
        let broadcast: u64 = self.layout.wholes.iter().map(|(_, b)| b.len() as u64).sum();
        let mut spec = JobSpec::new(self.items)
            .bytes_in_per_item(self.layout.bytes_per_item(true))
            .bytes_out_per_item(self.layout.bytes_per_item(false))
            .broadcast_bytes(broadcast)
            .max_packet(self.layout.max_packet_items())
            .redundancy(self.redundancy)
            .target_packets_per_device(PACKETS_PER_DEVICE);
        // Jobs with sums cut fixed packets (the same as a local run's), so the partials
        // added in item order give the same totals whatever the timing.
        if let Some(fixed) = self.layout.checked.sum_packet_items() {
            let fixed = fixed.min(self.layout.max_packet_items());
            spec = spec.min_packet(fixed).max_packet(fixed);
        }
        let plan = JobPlan {
            kernel: self.kernel.clone(),
            package: self.package.hash().0,
            items: self.items,
            redundancy: self.redundancy,
            devices: self.devices,
            slots: self.slots,
            known_links: self.known_links.clone(),
            outputs: self.layout.output_shape(),
            progress: self.on_progress.is_some() || progress.is_some(),
        };
        let mut job = JobLoop::new(plan, spec, joined)?;
        let prepare_time = prepare_started.elapsed();
        let mut sums = SumFold::new(&self.layout);
        // A latency probe per node, all nodes at once: the fastest of a few timed pings
        // (a round trip is never shorter than the link's, but one ping can meet a node
        // busy with something else: the minimum is the estimate, as in TCP's).
        let pings: Vec<_> = connections
            .iter()
            .map(|connection| {
                let connection = connection.clone();
                tokio::spawn(async move {
                    let mut fastest: Option<Duration> = None;
                    for _ in 0..PINGS_PER_JOB {
                        let started = Instant::now();
                        match request(&connection, &Request::Ping).await {
                            Ok(Response::Pong) => {
                                let took = started.elapsed();
                                fastest = Some(fastest.map_or(took, |f| f.min(took)));
                            }
                            _ => break,
                        }
                    }
                    fastest
                })
            })
            .collect();
        for (meter, ping) in meters.iter().zip(pings) {
            if let Ok(Some(round_trip)) = ping.await {
                lock_meter(meter).round_trip(round_trip);
            }
        }
        let clock = Instant::now();
        let now = || clock.elapsed().as_micros() as u64;
        job.start(now());
        let (tx, mut rx) = mpsc::unbounded_channel::<Wake>();
        // The watchers and reconnect tasks outlive the job otherwise (connections stay
        // open for the next).
        struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                for task in &self.0 {
                    task.abort();
                }
            }
        }
        let mut background = AbortOnDrop(
            connections
                .iter()
                .enumerate()
                .map(|(m, c)| JobRun::watch(m, 0, c.clone(), tx.clone()))
                .collect(),
        );
        let mut rejoined: Vec<Remote> = Vec::new();
        let outcome: Result<(), ClientError> = loop {
            measured_transfers(&meters, &mut job, now());
            for action in job.advance(now()) {
                match action {
                    Action::Run {
                        member,
                        device,
                        packet,
                        target,
                    } => {
                        let connection = connections[member].clone();
                        let meter = Arc::clone(&meters[member]);
                        let request = Request::Run {
                            job: self.id,
                            packet: packet.id.0,
                            start: packet.start,
                            end: packet.end,
                            device: target,
                            slices: self.layout.slices(args, packet.start, packet.end),
                        };
                        let tx = tx.clone();
                        let timeout = self.packet_timeout;
                        tokio::spawn(async move {
                            let result = match tokio::time::timeout(
                                timeout,
                                run_packet(&connection, &request, &meter),
                            )
                            .await
                            {
                                Ok(Ok(response)) => Ok(response),
                                Ok(Err(e)) => Err(e.to_string()),
                                Err(_) => Err(format!("no result within {timeout:?}")),
                            };
                            let _ = tx.send(Wake::Event(JobEvent::Packet {
                                device,
                                packet,
                                result,
                            }));
                        });
                    }
                    Action::Commit { packet, outputs } => {
                        let partials = self.layout.commit(args, packet.start, outputs);
                        sums.add(&self.layout, packet.start, packet.end, partials);
                    }
                    Action::Progress(now_done) => {
                        for observer in self.on_progress.as_deref().into_iter().chain(progress) {
                            observer(&now_done);
                        }
                    }
                    Action::Notify(line) => self.notify(&line),
                    Action::Info(line) => tracing::info!("{line}"),
                    Action::Close { member } => {
                        connections[member].close(quinn::VarInt::from_u32(1), b"lost");
                    }
                    Action::Rejoin { member, addr } => {
                        background.0.push(self.rejoin(member, addr, tx.clone()));
                    }
                    Action::AwaitResume { member, epoch } => {
                        background.0.push(JobRun::await_resume(
                            member,
                            epoch,
                            connections[member].clone(),
                            tx.clone(),
                        ));
                    }
                    Action::Watch { member, generation } => {
                        background.0.push(JobRun::watch(
                            member,
                            generation,
                            connections[member].clone(),
                            tx.clone(),
                        ));
                    }
                }
            }
            if let Some(outcome) = job.take_outcome() {
                break outcome;
            }
            // Wake up now and then even without results: the scheduler may want to
            // duplicate a straggler.
            let event = match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
                Ok(Some(Wake::Event(event))) => event,
                Ok(Some(Wake::Rejoined {
                    member,
                    remote,
                    opencl,
                })) => {
                    connections[member] = remote.connection.clone();
                    let event = JobEvent::Rejoined {
                        member,
                        info: remote.info.clone(),
                        rtt: remote.rtt,
                        opencl,
                    };
                    rejoined.retain(|r| r.addr != remote.addr);
                    rejoined.push(remote);
                    event
                }
                Ok(None) => {
                    break Err(ClientError::AllNodesLost(vec![
                        "the client's event channel closed".into(),
                    ]))
                }
                Err(_) => continue,
            };
            job.handle(now(), event);
        };
        let run_time = clock.elapsed();
        // Whatever the outcome, the nodes may forget the job: a failed job's buffers
        // must not stay on them for the life of the connection.
        for (member, connection) in job.members().iter().zip(&connections) {
            // Excluded nodes too: they still hold the job's state.
            if member.lost {
                continue;
            }
            let connection = connection.clone();
            let end = Request::EndJob(self.id);
            tokio::spawn(async move {
                let _ = request(&connection, &end).await;
            });
        }
        // Committed sums count also when the job was cut short (its rest runs elsewhere
        // and adds its own).
        self.layout.add_totals(args, &sums.finish(&self.layout));
        outcome?;
        measured_transfers(&meters, &mut job, now());
        let estimates = job.estimates();
        let links = job
            .members()
            .iter()
            .zip(&meters)
            .filter_map(|(m, meter)| {
                let estimate = estimates
                    .iter()
                    .find(|e| e.node == m.node && e.link_bytes_per_us.is_some())?;
                // One lock: a second guard in the same expression would wait on the first.
                let (transfers, probes) = {
                    let meter = lock_meter(meter);
                    (meter.transfers(), meter.probes())
                };
                Some(LinkFigure {
                    node: m.name.clone(),
                    addr: m.addr,
                    latency_us: estimate.link_latency_us.unwrap_or(0.0),
                    bytes_per_s: estimate.link_bytes_per_us.unwrap_or(0.0) * 1e6,
                    transfers,
                    probes,
                })
            })
            .collect();
        // Only connections of members still in the job are worth keeping.
        rejoined.retain(|r| job.members().iter().any(|m| m.addr == r.addr && !m.lost));
        let summary = job.summary();
        let report = JobReport {
            items: self.items,
            packets: summary.packets,
            packets_per_node: summary.packets_per_node,
            packets_per_device: summary.packets_per_device,
            lost: summary.lost,
            disagreements: summary.disagreements,
            paused: summary.paused,
            run_time,
            prepare_time,
            rejoined: summary.rejoined,
            tuned_rates: summary.tuned_rates,
            links,
        };
        Ok((report, rejoined))
    }
}

/// Hands the transfers timed on each member's meter to the job loop.
fn measured_transfers(meters: &[Arc<Mutex<LinkMeter>>], job: &mut JobLoop, now_us: u64) {
    for (member, meter) in meters.iter().enumerate() {
        for sample in lock_meter(meter).take() {
            job.handle(
                now_us,
                JobEvent::Transfer {
                    member,
                    bytes: sample.bytes,
                    micros: sample.micros,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(splits: Vec<Option<(u64, bool, bool)>>, sum_bytes: u64) -> Layout {
        let mut wire: Vec<WireArg> = splits
            .iter()
            .map(|s| {
                let (bytes_per_item, input, output) = s.unwrap_or((0, false, false));
                WireArg::Split {
                    bytes_per_item,
                    input,
                    output,
                    halo: 0,
                }
            })
            .collect();
        wire.push(WireArg::Sum(sum_bytes));
        let mut sums = vec![None; splits.len()];
        sums.push(Some(ScalarType::U64));
        let mut all_splits = splits;
        all_splits.push(None);
        Layout {
            wire,
            wholes: Vec::new(),
            splits: all_splits,
            sums,
            // Packet sizing reads only the wire view.
            checked: kernel_model::Layout {
                kernel: "k".into(),
                items: 1,
                args: Vec::new(),
            },
        }
    }

    #[test]
    fn a_packet_fits_in_one_message_each_way() {
        // 16 bytes in and 4 bytes out per item: the input side decides.
        let l = layout(vec![Some((16, true, false)), Some((4, false, true))], 4096);
        let items = l.max_packet_items();
        assert!(items * 16 + 4096 <= MAX_DATA as u64);
        assert!((items + 1) * 16 + 4096 + (1 << 20) > MAX_DATA as u64);
        // An `inout` buffer counts both ways; outputs larger than inputs decide.
        let l = layout(vec![Some((8, true, true)), Some((64, false, true))], 0);
        assert_eq!(l.max_packet_items(), (MAX_DATA as u64 - (1 << 20)) / 72);
        // Even an item bigger than a message gets packets of one item, not zero.
        let l = layout(vec![Some((2 << 30, true, false))], 0);
        assert_eq!(l.max_packet_items(), 1);
    }
}
