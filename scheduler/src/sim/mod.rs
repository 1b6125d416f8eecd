//! A discrete-event simulator of clusters that drives the [`Scheduler`] (or a baseline
//! policy) through the same [`Event`]/[`Decision`] interface as the real runtime.
//!
//! The simulator owns a virtual clock in µs and is deterministic: devices of given true
//! speeds compute packets one after the other (`start-up + items / speed`, times a
//! log-normal noise factor and rare spikes drawn from a seeded [`Rng`]); every node
//! has one link, a FIFO per direction (`latency + bytes / bandwidth`), that its devices
//! share, and every transfer over it is reported as [`Event::TransferMeasured`] (its
//! time without the queueing before it, as a runner times a frame); nodes join and fail at given times; lying devices return wrong digests.
//!
//! ```
//! use scheduler::sim::{run_scheduler, scenario};
//!
//! let report = run_scheduler(&scenario("uniform-4").expect("known scenario"));
//! assert!(report.complete && report.exactly_once());
//! assert!(report.ratio() < 1.05, "{report:?}");
//! ```

mod baselines;
mod rng;
mod scenarios;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

pub use self::baselines::Baseline;
pub use self::rng::Rng;
pub use self::scenarios::{scenario, DecisionLoop, SCENARIOS};
use crate::job::JobSpec;
use crate::types::{Decision, DeviceId, DeviceKind, DeviceSpec, Event, Link, NodeId, Packet};
use crate::Scheduler;

/// The interface the simulator drives: the [`Scheduler`] and the [`Baseline`]s.
pub trait Policy {
    /// Applies an event.
    fn handle(&mut self, now_us: u64, event: Event);
    /// The next decision, or `None` until the next event.
    fn poll(&mut self, now_us: u64) -> Option<Decision>;
    /// `true` when the job is over.
    fn is_done(&self) -> bool;
    /// `true` when work remains that no device can take.
    fn stalled(&self) -> bool;
    /// When to poll again without an event.
    fn poll_timeout(&self) -> Option<u64> {
        None
    }
}

impl Policy for Scheduler {
    fn handle(&mut self, now_us: u64, event: Event) {
        Scheduler::handle(self, now_us, event);
    }
    fn poll(&mut self, now_us: u64) -> Option<Decision> {
        Scheduler::poll(self, now_us)
    }
    fn is_done(&self) -> bool {
        Scheduler::is_done(self)
    }
    fn stalled(&self) -> bool {
        Scheduler::stalled(self)
    }
    fn poll_timeout(&self) -> Option<u64> {
        Scheduler::poll_timeout(self)
    }
}

/// A simulated device.
#[derive(Debug, Clone, PartialEq)]
pub struct SimDevice {
    /// Kind reported to the policy.
    pub kind: DeviceKind,
    /// True speed, items per µs.
    pub items_per_us: f64,
    /// True fixed cost per packet, µs.
    pub startup_us: f64,
    /// Packets the device may hold at once.
    pub slots: u32,
    /// Rate told to the policy (a tuning profile, possibly wrong), items per second;
    /// `None` makes the scheduler calibrate.
    pub advertised_items_per_s: Option<f64>,
    /// Returns wrong digests.
    pub lies: bool,
    /// From this time (µs) on, compute times are multiplied by the factor.
    pub slowdown: Option<(u64, f64)>,
    /// The device's own host link (a discrete GPU's PCI Express): a packet's inputs cross
    /// it before the kernel and its results after, while the device is busy. The true
    /// link, also told to the policy as [`DeviceSpec::bus`]. `None`: host memory.
    pub bus: Option<Link>,
}

impl SimDevice {
    /// A CPU device of the given speed (items/µs), 2 µs start-up, one slot, advertising
    /// its true rate.
    pub fn new(items_per_us: f64) -> Self {
        SimDevice {
            kind: DeviceKind::Cpu,
            items_per_us,
            startup_us: 2.0,
            slots: 1,
            advertised_items_per_s: Some(items_per_us * 1e6),
            lies: false,
            slowdown: None,
            bus: None,
        }
    }

    /// This device's speed in items per µs once its own bus is counted (inputs and
    /// results cross it in line with the kernel): what it can sustain on `workload`.
    pub fn sustained_items_per_us(&self, workload: &Workload) -> f64 {
        match self.bus {
            Some(b) if b.bytes_per_us > 0.0 => {
                let bytes = (workload.bytes_in_per_item + workload.bytes_out_per_item) as f64;
                1.0 / (1.0 / self.items_per_us + bytes / b.bytes_per_us)
            }
            _ => self.items_per_us,
        }
    }
}

/// A simulated node: devices behind one link.
#[derive(Debug, Clone, PartialEq)]
pub struct SimNode {
    /// The link, or `None` for the node the scheduler runs on.
    pub link: Option<Link>,
    /// Its devices.
    pub devices: Vec<SimDevice>,
    /// Time the node becomes available, µs.
    pub joins_at_us: u64,
    /// Time the node fails (all its devices are lost), µs.
    pub fails_at_us: Option<u64>,
}

/// Per-packet noise on compute times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Noise {
    /// Standard deviation of the log-normal factor (0.05: about ±5%).
    pub sigma: f64,
    /// Probability that a packet suffers a spike.
    pub spike_probability: f64,
    /// Extra µs of a spike.
    pub spike_us: f64,
}

/// The job a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Workload {
    /// Items of the job.
    pub items: u64,
    /// Bytes sent per item.
    pub bytes_in_per_item: u64,
    /// Bytes returned per item.
    pub bytes_out_per_item: u64,
    /// Bytes sent once per remote node.
    pub broadcast_bytes: u64,
    /// Copies per packet (redundancy).
    pub redundancy: u32,
}

/// A named cluster, workload and noise.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// Nodes; node `i` has `NodeId(i)`, devices are numbered across nodes in order.
    pub nodes: Vec<SimNode>,
    /// The job.
    pub workload: Workload,
    /// Noise.
    pub noise: Noise,
    /// Seed of the noise.
    pub seed: u64,
}

impl Scenario {
    /// The [`JobSpec`] the scheduler gets for this scenario.
    pub fn job_spec(&self) -> JobSpec {
        let w = &self.workload;
        JobSpec::new(w.items)
            .bytes_in_per_item(w.bytes_in_per_item)
            .bytes_out_per_item(w.bytes_out_per_item)
            .broadcast_bytes(w.broadcast_bytes)
            .redundancy(w.redundancy)
    }

    /// Number of devices.
    pub fn devices(&self) -> usize {
        self.nodes.iter().map(|n| n.devices.len()).sum()
    }

    /// Lower bound on the makespan: the time by which the nodes, each computing at its
    /// total speed (slowed down where the scenario says so, and at most at the rate its link can feed) from the moment its
    /// broadcast data and first input can have arrived until it fails, and returning the
    /// last result over its latency, can have done all the work (times the redundancy).
    pub fn lower_bound_us(&self) -> f64 {
        let w = &self.workload;
        let work = w.items as f64 * w.redundancy.max(1) as f64;
        // Links are full duplex: the busier direction bounds the rate a node is fed at.
        let bytes = w.bytes_in_per_item.max(w.bytes_out_per_item) as f64;
        // Per node: (link-fed rate, devices' (speed, slowdown), start of compute, end of
        // the compute window, return latency).
        type Window = (f64, Vec<(f64, Option<(u64, f64)>)>, f64, f64, f64);
        let windows: Vec<Window> = self
            .nodes
            .iter()
            .filter(|n| !n.devices.is_empty())
            .map(|n| {
                let startup = n
                    .devices
                    .iter()
                    .map(|d| d.startup_us)
                    .fold(f64::INFINITY, f64::min);
                let (fed, delay, back) = match n.link {
                    Some(l) => {
                        let fed = if bytes > 0.0 {
                            l.bytes_per_us / bytes
                        } else {
                            f64::INFINITY
                        };
                        let first = l.latency_us + w.broadcast_bytes as f64 / l.bytes_per_us;
                        (fed, first, l.latency_us)
                    }
                    None => (f64::INFINITY, 0.0, 0.0),
                };
                let start = n.joins_at_us as f64 + delay + startup;
                let end = n.fails_at_us.map_or(f64::INFINITY, |t| t as f64);
                let devices = n
                    .devices
                    .iter()
                    .map(|d| (d.sustained_items_per_us(w), d.slowdown))
                    .collect();
                (fed, devices, start, end, back)
            })
            .collect();
        let done_by = |t: f64| -> f64 {
            windows
                .iter()
                .map(|(fed, devices, start, end, back)| {
                    let stop = (t - back).min(*end);
                    if stop <= *start {
                        return 0.0;
                    }
                    let computed: f64 = devices
                        .iter()
                        .map(|&(speed, slowdown)| match slowdown {
                            Some((at, factor)) if (at as f64) < stop => {
                                let at = (at as f64).max(*start);
                                speed * (at - start) + speed / factor * (stop - at)
                            }
                            _ => speed * (stop - start),
                        })
                        .sum();
                    computed.min(fed * (stop - start))
                })
                .sum()
        };
        let mut hi = 1.0;
        while done_by(hi) < work {
            hi *= 2.0;
            if hi > 1e18 {
                return f64::INFINITY;
            }
        }
        let mut lo = 0.0;
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if done_by(mid) >= work {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }
}

/// The outcome of one simulated run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Scenario name.
    pub scenario: String,
    /// Time of the last commit (or of the end of the run if incomplete), µs.
    pub makespan_us: u64,
    /// [`Scenario::lower_bound_us`], rounded up.
    pub lower_bound_us: u64,
    /// Items of the job.
    pub items: u64,
    /// `Run` decisions.
    pub packets: u64,
    /// `Run` decisions for a packet already run elsewhere.
    pub duplicates: u64,
    /// Decisions of any kind.
    pub decisions: u64,
    /// Every commit, in order.
    pub commits: Vec<(DeviceId, Packet)>,
    /// Commits of a result from a lying device.
    pub wrong_commits: u64,
    /// Whether the policy finished the job.
    pub complete: bool,
    /// Whether the run ended stalled (work left, no device able to take it).
    pub stalled: bool,
}

impl SimReport {
    /// Makespan over lower bound.
    pub fn ratio(&self) -> f64 {
        self.makespan_us as f64 / self.lower_bound_us.max(1) as f64
    }

    /// `true` when the commits cover `0..items` exactly once.
    pub fn exactly_once(&self) -> bool {
        covers_exactly_once(&self.commits, self.items)
    }
}

/// `true` when the committed packets cover `0..items` exactly once: no gap, no overlap.
pub fn covers_exactly_once(commits: &[(DeviceId, Packet)], items: u64) -> bool {
    let mut ranges: Vec<(u64, u64)> = commits.iter().map(|(_, p)| (p.start, p.end)).collect();
    ranges.sort_unstable();
    let mut next = 0;
    for (start, end) in ranges {
        if start != next || end <= start {
            return false;
        }
        next = end;
    }
    next == items
}

/// Runs the scenario with the [`Scheduler`] configured by [`Scenario::job_spec`].
pub fn run_scheduler(scenario: &Scenario) -> SimReport {
    let mut sched = Scheduler::new(scenario.job_spec());
    simulate(scenario, &mut sched)
}

/// Runs the scenario with the static equal split.
pub fn run_equal_split(scenario: &Scenario) -> SimReport {
    simulate(
        scenario,
        &mut Baseline::equal_split(scenario.workload.items)
            .redundancy(scenario.workload.redundancy),
    )
}

/// Runs the scenario with fixed-chunk self-scheduling.
pub fn run_fixed_chunks(scenario: &Scenario, chunks_per_device: u64) -> SimReport {
    simulate(
        scenario,
        &mut Baseline::fixed_chunks(scenario.workload.items, chunks_per_device)
            .redundancy(scenario.workload.redundancy),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Wake,
    Join(usize),
    Fail(usize),
    Arrive(usize),
    ComputeDone(usize),
    ResultBack(usize),
}

#[derive(Debug, Clone)]
struct Dev {
    id: DeviceId,
    node: usize,
    /// Index in its node's device list.
    local: usize,
    alive: bool,
    queue: VecDeque<usize>,
    computing: Option<usize>,
}

#[derive(Debug, Clone)]
struct Attempt {
    device: usize,
    packet: Packet,
    dead: bool,
    compute_us: u64,
    in_bytes: u64,
    in_us: u64,
    /// The results' transfer over the node's link: bytes and µs (without queueing).
    out: Option<(u64, u64)>,
    /// Bus transfers of a device with its own bus: (bytes, µs) in, then out.
    bus: Option<[(u64, u64); 2]>,
}

#[derive(Debug, Clone)]
struct NodeState {
    down_free: u64,
    up_free: u64,
    has_broadcast: bool,
}

struct Sim<'a> {
    scenario: &'a Scenario,
    devs: Vec<Dev>,
    /// The devices of node `n` are `devs[node_devs[n].clone()]` (numbered across nodes).
    node_devs: Vec<std::ops::Range<usize>>,
    nodes: Vec<NodeState>,
    attempts: Vec<Attempt>,
    live: BTreeMap<(usize, Packet), usize>,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    rng: Rng,
    now: u64,
    report: SimReport,
    seen: std::collections::BTreeSet<u64>,
    wake: Option<u64>,
}

/// Runs `scenario` with `policy` until the policy is done, stalls, or nothing is left to
/// happen.
pub fn simulate(scenario: &Scenario, policy: &mut dyn Policy) -> SimReport {
    let mut devs = Vec::new();
    let mut node_devs = Vec::with_capacity(scenario.nodes.len());
    for (n, node) in scenario.nodes.iter().enumerate() {
        node_devs.push(devs.len()..devs.len() + node.devices.len());
        for local in 0..node.devices.len() {
            devs.push(Dev {
                id: DeviceId(devs.len() as u32),
                node: n,
                local,
                alive: false,
                queue: VecDeque::new(),
                computing: None,
            });
        }
    }
    let mut sim = Sim {
        scenario,
        devs,
        node_devs,
        nodes: vec![
            NodeState {
                down_free: 0,
                up_free: 0,
                has_broadcast: false
            };
            scenario.nodes.len()
        ],
        attempts: Vec::new(),
        live: BTreeMap::new(),
        heap: BinaryHeap::new(),
        seq: 0,
        rng: Rng::new(scenario.seed),
        now: 0,
        report: SimReport {
            scenario: scenario.name.clone(),
            makespan_us: 0,
            lower_bound_us: scenario.lower_bound_us().ceil() as u64,
            items: scenario.workload.items,
            packets: 0,
            duplicates: 0,
            decisions: 0,
            commits: Vec::new(),
            wrong_commits: 0,
            complete: false,
            stalled: false,
        },
        seen: Default::default(),
        wake: None,
    };
    for (n, node) in scenario.nodes.iter().enumerate() {
        // A node that fails before it would join never takes part (the lower bound
        // counts it so).
        if node.fails_at_us.is_some_and(|t| t <= node.joins_at_us) {
            continue;
        }
        sim.push(node.joins_at_us, Ev::Join(n));
        if let Some(t) = node.fails_at_us {
            sim.push(t, Ev::Fail(n));
        }
    }
    while let Some(Reverse((t, _, ev))) = sim.heap.pop() {
        sim.now = t;
        sim.apply(ev, policy);
        // Simultaneous events (the nodes present at time 0) are applied before polling.
        if sim
            .heap
            .peek()
            .is_some_and(|Reverse((next, _, _))| *next == t)
        {
            continue;
        }
        while let Some(d) = policy.poll(sim.now) {
            sim.decide(d);
        }
        if let Some(t) = policy.poll_timeout() {
            if sim.wake.is_none_or(|w| t < w || w <= sim.now) && t > sim.now {
                sim.wake = Some(t);
                sim.push(t, Ev::Wake);
            }
        }
        if policy.is_done() {
            sim.report.complete = sim
                .report
                .commits
                .iter()
                .map(|(_, p)| p.items())
                .sum::<u64>()
                == scenario.workload.items;
            break;
        }
    }
    sim.report.stalled = policy.stalled();
    sim.report.makespan_us = sim.now;
    sim.report
}

/// Digest of a correct result for `packet`.
fn digest(packet: &Packet) -> [u8; 32] {
    let mut rng = Rng::new(packet.start.wrapping_mul(0x9E37_79B9) ^ packet.end);
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    out
}

impl Sim<'_> {
    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, ev)));
    }

    fn spec(&self, d: usize) -> &SimDevice {
        let dev = &self.devs[d];
        &self.scenario.nodes[dev.node].devices[dev.local]
    }

    fn apply(&mut self, ev: Ev, policy: &mut dyn Policy) {
        let now = self.now;
        match ev {
            Ev::Wake => {}
            Ev::Join(n) => {
                let node = &self.scenario.nodes[n];
                for d in self.node_devs[n].clone() {
                    self.devs[d].alive = true;
                    let s = self.spec(d);
                    let spec = DeviceSpec {
                        name: format!("n{n}d{d}"),
                        node: NodeId(n as u32),
                        kind: s.kind,
                        rate_items_per_s: s.advertised_items_per_s,
                        startup_us: match s.kind {
                            DeviceKind::Cpu => 2.0,
                            DeviceKind::OpenCl => 30.0,
                        },
                        link: node.link,
                        slots: s.slots,
                        bus: s.bus,
                        max_packet: None,
                    };
                    policy.handle(
                        now,
                        Event::DeviceJoined {
                            device: self.devs[d].id,
                            spec,
                        },
                    );
                }
            }
            Ev::Fail(n) => {
                for d in self.node_devs[n].clone() {
                    if !self.devs[d].alive {
                        continue;
                    }
                    self.devs[d].alive = false;
                    let queued: Vec<usize> = self.devs[d].queue.drain(..).collect();
                    for a in queued.into_iter().chain(self.devs[d].computing.take()) {
                        self.attempts[a].dead = true;
                    }
                    let live: Vec<(usize, Packet)> =
                        self.live.keys().filter(|(x, _)| *x == d).copied().collect();
                    for k in live {
                        if let Some(a) = self.live.remove(&k) {
                            self.attempts[a].dead = true;
                        }
                    }
                    policy.handle(
                        now,
                        Event::DeviceLost {
                            device: self.devs[d].id,
                        },
                    );
                }
            }
            Ev::Arrive(a) => {
                if self.attempts[a].dead {
                    return;
                }
                let d = self.attempts[a].device;
                if self.attempts[a].in_bytes > 0 {
                    policy.handle(
                        now,
                        Event::TransferMeasured {
                            device: self.devs[d].id,
                            bytes: self.attempts[a].in_bytes,
                            micros: self.attempts[a].in_us,
                        },
                    );
                }
                self.devs[d].queue.push_back(a);
                self.start_next(d);
            }
            Ev::ComputeDone(a) => {
                let d = self.attempts[a].device;
                if self.devs[d].computing != Some(a) {
                    return; // aborted
                }
                self.devs[d].computing = None;
                self.start_next(d);
                if let Some(transfers) = self.attempts[a].bus {
                    for (bytes, micros) in transfers {
                        policy.handle(
                            now,
                            Event::BusTransferMeasured {
                                device: self.devs[d].id,
                                bytes,
                                micros,
                            },
                        );
                    }
                }
                let bytes =
                    self.attempts[a].packet.items() * self.scenario.workload.bytes_out_per_item;
                let n = self.devs[d].node;
                match self.scenario.nodes[n].link {
                    Some(l) => {
                        let start = now.max(self.nodes[n].up_free);
                        let busy = (bytes as f64 / l.bytes_per_us).ceil() as u64;
                        self.nodes[n].up_free = start + busy;
                        let latency = l.latency_us.ceil() as u64;
                        self.attempts[a].out = Some((bytes, busy + latency));
                        self.push(start + busy + latency, Ev::ResultBack(a));
                    }
                    None => self.push(now, Ev::ResultBack(a)),
                }
            }
            Ev::ResultBack(a) => {
                let at = &self.attempts[a];
                if at.dead {
                    return;
                }
                let d = at.device;
                let packet = at.packet;
                let lies = self.spec(d).lies;
                let mut g = digest(&packet);
                if lies {
                    g[0] ^= 1;
                }
                self.live.remove(&(d, packet));
                if let Some((bytes, micros)) = self.attempts[a].out.filter(|o| o.0 > 0) {
                    policy.handle(
                        now,
                        Event::TransferMeasured {
                            device: self.devs[d].id,
                            bytes,
                            micros,
                        },
                    );
                }
                policy.handle(
                    now,
                    Event::PacketFinished {
                        device: self.devs[d].id,
                        packet: packet.id,
                        compute_us: self.attempts[a].compute_us,
                        digest: Some(g),
                    },
                );
            }
        }
    }

    fn start_next(&mut self, d: usize) {
        if self.devs[d].computing.is_some() || !self.devs[d].alive {
            return;
        }
        let Some(a) = self.devs[d].queue.pop_front() else {
            return;
        };
        let s = self.spec(d).clone();
        let items = self.attempts[a].packet.items() as f64;
        let mut factor = (self.scenario.noise.sigma * self.rng.normal()).exp();
        if let Some((at, slow)) = s.slowdown {
            if self.now >= at {
                factor *= slow;
            }
        }
        let mut us = s.startup_us + items / s.items_per_us * factor;
        if self.rng.uniform() < self.scenario.noise.spike_probability {
            us += self.scenario.noise.spike_us;
        }
        let us = us.ceil().max(1.0) as u64;
        self.attempts[a].compute_us = us;
        // A device with its own bus is busy with its packet's transfers too; it reports
        // them apart from the kernel's time.
        let mut busy = us;
        if let Some(b) = s.bus {
            let w = &self.scenario.workload;
            let packet = self.attempts[a].packet.items();
            let transfer = |bytes: u64| {
                let micros = (b.latency_us + bytes as f64 / b.bytes_per_us).ceil() as u64;
                (bytes, micros)
            };
            let transfers = [
                transfer(packet * w.bytes_in_per_item),
                transfer(packet * w.bytes_out_per_item),
            ];
            busy += transfers[0].1 + transfers[1].1;
            self.attempts[a].bus = Some(transfers);
        }
        self.devs[d].computing = Some(a);
        self.push(self.now + busy, Ev::ComputeDone(a));
    }

    fn decide(&mut self, decision: Decision) {
        self.report.decisions += 1;
        match decision {
            Decision::Run { device, packet } => {
                self.report.packets += 1;
                if !self.seen.insert(packet.id.0) {
                    self.report.duplicates += 1;
                }
                let d = device.0 as usize;
                if d >= self.devs.len() || !self.devs[d].alive {
                    return;
                }
                let a = self.attempts.len();
                self.attempts.push(Attempt {
                    device: d,
                    packet,
                    dead: false,
                    compute_us: 0,
                    in_bytes: 0,
                    in_us: 0,
                    out: None,
                    bus: None,
                });
                self.live.insert((d, packet), a);
                let n = self.devs[d].node;
                let w = &self.scenario.workload;
                match self.scenario.nodes[n].link {
                    Some(l) => {
                        let mut bytes = packet.items() * w.bytes_in_per_item;
                        if !self.nodes[n].has_broadcast {
                            bytes += w.broadcast_bytes;
                            self.nodes[n].has_broadcast = true;
                        }
                        let start = self.now.max(self.nodes[n].down_free);
                        let busy = (bytes as f64 / l.bytes_per_us).ceil() as u64;
                        self.nodes[n].down_free = start + busy;
                        let latency = l.latency_us.ceil() as u64;
                        self.attempts[a].in_bytes = bytes;
                        self.attempts[a].in_us = busy + latency;
                        self.push(start + busy + latency, Ev::Arrive(a));
                    }
                    None => self.push(self.now, Ev::Arrive(a)),
                }
            }
            Decision::Cancel { device, packet } => {
                let d = device.0 as usize;
                if let Some(a) = self.live.remove(&(d, packet)) {
                    self.attempts[a].dead = true;
                    if d < self.devs.len() {
                        self.devs[d].queue.retain(|&x| x != a);
                        if self.devs[d].computing == Some(a) {
                            self.devs[d].computing = None;
                            self.start_next(d);
                        }
                    }
                }
            }
            Decision::Commit { device, packet } => {
                let d = device.0 as usize;
                if d < self.devs.len() && self.spec(d).lies {
                    self.report.wrong_commits += 1;
                }
                self.report.commits.push((device, packet));
                self.report.makespan_us = self.now;
            }
            Decision::Discard { .. } => {}
        }
    }
}
