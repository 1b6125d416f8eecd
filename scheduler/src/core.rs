//! The [`Scheduler`] state machine.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use thiserror::Error;

use crate::job::{JobSpec, JobSpecError};
use crate::link::NodeLink;
use crate::model::RobustLine;
use crate::table::PacketTable;
use crate::types::{Decision, DeviceId, DeviceSpec, Event, NodeId, Packet, PacketId};

/// Fastest devices compared against when a device considers taking tail work.
const FASTEST_CHECKED: usize = 4;
/// Packets of the `needs_copy` queue looked at per decision (redundancy).
const COPY_SCAN: usize = 32;
/// Retryable failures in a row after which a device gets no more work.
const MAX_CONSECUTIVE_FAILURES: u32 = 3;
/// Guided self-scheduling divisor of remote devices, relative to the job's
/// `target_packets_per_device`: their packets are this much smaller (see `packet_size`).
const REMOTE_PACKET_FACTOR: f64 = 2.0;
/// Slow start: a device's first packet is this fraction of its guided self-scheduling
/// size ...
const RAMP_FIRST: f64 = 8.0;
/// ... and each packet at most this many times the largest the device has finished.
const RAMP_GROWTH: f64 = 2.0;
/// A speculative copy must be predicted to finish before this fraction of the time the
/// straggler still needs.
const SPECULATION_GAIN: f64 = 0.7;

/// Why an event was not applied by [`Scheduler::try_handle`]. The scheduler's state is
/// unchanged by a refused event.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EventError {
    /// The event names a device that never joined.
    #[error("{0} is unknown to this job")]
    UnknownDevice(DeviceId),
    /// `DeviceJoined` for a device that is already active.
    #[error("{0} joined twice")]
    AlreadyJoined(DeviceId),
    /// `DeviceJoined` for a device that was excluded (disagreeing results or failures).
    #[error("{0} was excluded from this job and cannot join again")]
    Excluded(DeviceId),
    /// A result or failure for a packet the device is not running (e.g. after it was lost).
    #[error("{device} is not running {packet}")]
    NotRunning {
        /// The device.
        device: DeviceId,
        /// The packet.
        packet: PacketId,
    },
}

/// The job failed: a kernel failed in a way that retrying cannot fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The device that reported the failure.
    pub device: DeviceId,
    /// Its node.
    pub node: NodeId,
    /// The packet it was running.
    pub packet: Packet,
}

/// A device whose result disagreed with the majority of a packet's copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disagreement {
    /// The device (excluded from the rest of the job).
    pub device: DeviceId,
    /// Its node.
    pub node: NodeId,
    /// The packet.
    pub packet: Packet,
    /// The device's digest.
    pub digest: Option<[u8; 32]>,
    /// The majority's digest.
    pub majority: Option<[u8; 32]>,
}

/// A snapshot of the job's progress.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Progress {
    /// Items of the job.
    pub items_total: u64,
    /// Items whose result was committed.
    pub items_committed: u64,
    /// Items not yet given to any device.
    pub items_unassigned: u64,
    /// Packets committed.
    pub packets_committed: u64,
    /// Packet copies running on devices now.
    pub packets_in_flight: u64,
    /// `Run` decisions made so far (all copies).
    pub runs_issued: u64,
    /// `Run` decisions that were a second or later copy of a packet.
    pub duplicates_issued: u64,
    /// Results dropped (`Discard`).
    pub results_discarded: u64,
    /// Devices that may receive work.
    pub devices_active: u32,
    /// Estimated time at which the work still to do would be done, in the caller's µs.
    pub projected_finish_us: Option<u64>,
}

/// What the scheduler has learned about a device, for persisting in a tuning profile.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEstimate {
    /// The device.
    pub device: DeviceId,
    /// Its name from its [`DeviceSpec`].
    pub name: String,
    /// Its node.
    pub node: NodeId,
    /// Estimated compute rate in items per second (`None` before the first result of a
    /// device that joined without one).
    pub rate_items_per_s: Option<f64>,
    /// Estimated fixed cost per packet, µs.
    pub startup_us: f64,
    /// Finished packets the estimate rests on (the spec's estimate alone: 0).
    pub samples: u64,
    /// Estimated one-way link latency of the node, µs.
    pub link_latency_us: Option<f64>,
    /// Estimated link bandwidth of the node, bytes per µs.
    pub link_bytes_per_us: Option<f64>,
    /// Estimated latency of one transfer over the device's own bus, µs (`None` without
    /// a [`DeviceSpec::bus`]).
    pub bus_latency_us: Option<f64>,
    /// Estimated bandwidth of the device's own bus, bytes per µs.
    pub bus_bytes_per_us: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Active,
    Lost,
    Excluded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Nowhere,
    Free,
    Parked,
}

#[derive(Debug, Clone)]
struct Device {
    id: DeviceId,
    spec: DeviceSpec,
    node: usize,
    model: RobustLine,
    /// The device's own host link (`DeviceSpec::bus`): µs = latency + slope × bytes.
    bus: Option<RobustLine>,
    calibrated: bool,
    status: Status,
    in_flight: Vec<PacketId>,
    /// Predicted time at which the device's queue of packets is computed.
    avail: f64,
    /// Contribution to `total_rate` (effective items/µs; 0 when not counted).
    rate: f64,
    /// Contribution `(rate, avail)` to the in-flight work sums.
    load: Option<(f64, f64)>,
    key: u64,
    place: Place,
    in_speed_index: bool,
    failures_in_a_row: u32,
    largest_done: u64,
}

impl Device {
    fn has_free_slot(&self) -> bool {
        self.status == Status::Active && (self.in_flight.len() as u32) < self.spec.slots.max(1)
    }
}

#[derive(Debug, Clone)]
struct Node {
    id: NodeId,
    link: Option<NodeLink>,
    broadcast_sent: bool,
    devices: Vec<usize>,
    active: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum AttemptState {
    Running,
    Finished(Option<[u8; 32]>),
    Dropped,
}

#[derive(Debug, Clone, Copy)]
struct Attempt {
    device: usize,
    state: AttemptState,
    issued: f64,
    result_at: f64,
    compute_est: f64,
}

#[derive(Debug, Clone)]
struct PacketState {
    packet: Packet,
    attempts: Vec<Attempt>,
    wanted: u32,
    straggler: Option<(u64, PacketId)>,
}

impl PacketState {
    fn running(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.state == AttemptState::Running)
            .count()
    }

    fn finished(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| matches!(a.state, AttemptState::Finished(_)))
            .count()
    }
}

/// A copy kept running after its packet was decided: the packet, the majority's digest,
/// the copy's predicted compute time.
type Verify = (Packet, Option<[u8; 32]>, f64);

/// Predicted timeline of a packet on a device.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// When the down direction of the node's link has sent this packet's inputs.
    link_free: f64,
    compute_end: f64,
    /// Time the results occupy the up direction of the node's link, µs.
    upload: f64,
    result_at: f64,
    compute_est: f64,
}

/// The scheduler of one job: feed it [`Event`]s with [`Scheduler::handle`], execute the
/// [`Decision`]s that [`Scheduler::poll`] returns. It owns no clock and does no I/O:
/// every call takes the caller's `now` in µs, and identical call sequences give identical
/// decisions.
#[derive(Debug, Clone)]
pub struct Scheduler {
    job: JobSpec,
    devices: Vec<Device>,
    device_index: BTreeMap<DeviceId, usize>,
    nodes: Vec<Node>,
    node_index: BTreeMap<NodeId, usize>,
    active_nodes: u32,
    packets: PacketTable<PacketState>,
    next_packet: u64,
    pool: BTreeMap<u64, u64>,
    unassigned: u64,
    out: VecDeque<Decision>,
    free: BTreeSet<(Reverse<u64>, usize)>,
    parked: BTreeSet<(Reverse<u64>, usize)>,
    by_speed: BTreeSet<(Reverse<u64>, usize)>,
    retry_parked: bool,
    /// Running packets with a single copy by predicted result time, latest on top. Lazy:
    /// an entry is current only while it equals its packet's `straggler`; stale ones are
    /// dropped when they reach the top (or by [`Scheduler::compact_stragglers`]), which
    /// is cheaper than removing each from an ordered set.
    stragglers: BinaryHeap<(u64, PacketId)>,
    needs_copy: BTreeSet<PacketId>,
    canceled: BTreeMap<(PacketId, usize), Packet>,
    /// Copies still running after their packet was decided by majority (redundancy):
    /// their digests are still checked. Value: the packet, the majority's digest, the
    /// copy's predicted compute time.
    verify: BTreeMap<(PacketId, usize), Verify>,
    total_rate: f64,
    load_rate: f64,
    load_weighted: f64,
    running: u64,
    now: f64,
    progress: Progress,
    failed: Option<Failure>,
    disagreements: Vec<Disagreement>,
    stalled: bool,
    /// Time at which parked devices should look at the stragglers again.
    wakeup: Option<f64>,
}

impl Scheduler {
    /// A scheduler for `job`. Inconsistent tunables are replaced by the nearest valid
    /// values (redundancy 0 becomes 1, a minimum packet above the maximum is lowered);
    /// use [`Scheduler::try_new`] to have them refused instead.
    pub fn new(job: JobSpec) -> Self {
        let job = job.normalized();
        let mut pool = BTreeMap::new();
        if job.items > 0 {
            pool.insert(0, job.items);
        }
        Scheduler {
            devices: Vec::new(),
            device_index: BTreeMap::new(),
            nodes: Vec::new(),
            node_index: BTreeMap::new(),
            active_nodes: 0,
            packets: PacketTable::new(),
            next_packet: 0,
            pool,
            unassigned: job.items,
            out: VecDeque::new(),
            free: BTreeSet::new(),
            parked: BTreeSet::new(),
            by_speed: BTreeSet::new(),
            retry_parked: false,
            stragglers: BinaryHeap::new(),
            needs_copy: BTreeSet::new(),
            canceled: BTreeMap::new(),
            verify: BTreeMap::new(),
            total_rate: 0.0,
            load_rate: 0.0,
            load_weighted: 0.0,
            running: 0,
            now: 0.0,
            progress: Progress {
                items_total: job.items,
                ..Progress::default()
            },
            failed: None,
            disagreements: Vec::new(),
            stalled: false,
            wakeup: None,
            job,
        }
    }

    /// A scheduler for `job`, or the reason its tunables are inconsistent.
    pub fn try_new(job: JobSpec) -> Result<Self, JobSpecError> {
        job.validate()?;
        Ok(Scheduler::new(job))
    }

    /// The job being scheduled.
    pub fn job(&self) -> &JobSpec {
        &self.job
    }

    /// Applies an event that happened at `now_us`; events that do not fit the state (a
    /// result from a device that was declared lost, say) are ignored. See
    /// [`Scheduler::try_handle`] to learn why.
    pub fn handle(&mut self, now_us: u64, event: Event) {
        // Ignoring is the documented behaviour for stale events: a runner cannot avoid
        // races such as a result that crosses a `DeviceLost`.
        let _ignored = self.try_handle(now_us, event);
    }

    /// Applies an event that happened at `now_us`, or says why it does not fit.
    pub fn try_handle(&mut self, now_us: u64, event: Event) -> Result<(), EventError> {
        self.now = self.now.max(now_us as f64);
        self.stalled = false;
        self.retry_parked = true;
        match event {
            Event::DeviceJoined { device, spec } => self.joined(device, spec),
            Event::PacketFinished {
                device,
                packet,
                compute_us,
                digest,
            } => {
                let d = self.device(device)?;
                self.finished(d, packet, compute_us, digest)
            }
            Event::PacketFailed {
                device,
                packet,
                retryable,
            } => {
                let d = self.device(device)?;
                self.packet_failed(d, packet, retryable)
            }
            Event::DeviceLost { device } => {
                let d = self.device(device)?;
                self.remove_device(d, Status::Lost);
                Ok(())
            }
            Event::BusTransferMeasured {
                device,
                bytes,
                micros,
            } => {
                let d = self.device(device)?;
                if let Some(bus) = self.devices[d].bus.as_mut() {
                    bus.add(bytes as f64, micros as f64);
                    self.sync(d);
                }
                Ok(())
            }
            Event::TransferMeasured {
                device,
                bytes,
                micros,
            } => {
                let d = self.device(device)?;
                let n = self.devices[d].node;
                if let Some(link) = self.nodes[n].link.as_mut() {
                    link.model.add(bytes as f64, micros as f64);
                    for k in 0..self.nodes[n].devices.len() {
                        let dev = self.nodes[n].devices[k];
                        self.sync(dev);
                    }
                }
                Ok(())
            }
        }
    }

    /// The next decision at `now_us`, or `None` when there is nothing to do until the next
    /// event. Call it until it returns `None` after every [`Scheduler::handle`].
    pub fn poll(&mut self, now_us: u64) -> Option<Decision> {
        self.now = self.now.max(now_us as f64);
        if let Some(d) = self.out.pop_front() {
            return Some(d);
        }
        if self.wakeup.is_some_and(|t| self.now >= t) {
            self.wakeup = None;
            self.retry_parked = true;
        }
        if self.failed.is_some() || self.is_complete() {
            return None;
        }
        loop {
            let (d, from_parked) = if let Some(&(_, d)) = self.free.first() {
                (d, false)
            } else if self.retry_parked {
                match self.parked.first() {
                    Some(&(_, d)) => (d, true),
                    None => break,
                }
            } else {
                break;
            };
            if let Some(decision) = self.try_assign(d) {
                if !self.devices[d].has_free_slot() {
                    self.place(d, Place::Nowhere);
                }
                return Some(decision);
            }
            self.place(d, Place::Parked);
            if from_parked {
                if self.job.redundancy > 1 {
                    // A copy needs a device of another node, not a faster one: try them
                    // all (redundant clusters are small), in order, once.
                    return self.retry_all_parked();
                }
                self.retry_parked = false;
            }
        }
        self.retry_parked = false;
        self.stalled = self.running == 0 && self.out.is_empty();
        None
    }

    fn retry_all_parked(&mut self) -> Option<Decision> {
        self.retry_parked = false;
        let parked: Vec<usize> = self.parked.iter().map(|&(_, d)| d).collect();
        for d in parked {
            if let Some(decision) = self.try_assign(d) {
                if !self.devices[d].has_free_slot() {
                    self.place(d, Place::Nowhere);
                }
                self.retry_parked = true;
                return Some(decision);
            }
        }
        self.stalled = self.running == 0 && self.out.is_empty();
        None
    }

    /// When the scheduler wants [`Scheduler::poll`] to be called again even if no event
    /// arrives (in the caller's µs), like quinn-proto's `poll_timeout`: near the end of a
    /// job, idle devices wait for a straggler's predicted finish before duplicating it.
    /// Runners should bound their wait for worker results by it.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.is_done() {
            return None;
        }
        self.wakeup.map(|t| t.ceil().max(0.0) as u64)
    }

    /// `true` once every item is committed or the job failed.
    pub fn is_done(&self) -> bool {
        self.is_complete() || self.failed.is_some()
    }

    /// `true` once every item is committed.
    pub fn is_complete(&self) -> bool {
        self.progress.items_committed == self.job.items && self.out.is_empty()
    }

    /// The failure that ended the job, if a packet failed with `retryable: false`.
    pub fn failed(&self) -> Option<Failure> {
        self.failed
    }

    /// `true` when the last [`Scheduler::poll`] found work remaining, nothing running, and
    /// no device able to take it (all devices lost or excluded, or too few nodes for the
    /// redundancy): a runner should report this instead of waiting. A later
    /// `DeviceJoined` can resume the job.
    pub fn stalled(&self) -> bool {
        self.stalled && !self.is_done()
    }

    /// Devices whose results disagreed with the majority, in the order found.
    pub fn disagreements(&self) -> &[Disagreement] {
        &self.disagreements
    }

    /// The job's progress.
    pub fn progress(&self) -> Progress {
        let mut p = self.progress;
        p.items_unassigned = self.unassigned;
        p.packets_in_flight = self.running;
        p.devices_active = self
            .devices
            .iter()
            .filter(|d| d.status == Status::Active)
            .count() as u32;
        let t = self.projected_finish();
        p.projected_finish_us = t.is_finite().then_some(t.max(0.0) as u64);
        p
    }

    /// What the scheduler has learned about every device that joined, in join order.
    pub fn estimates(&self) -> Vec<DeviceEstimate> {
        self.devices
            .iter()
            .map(|d| {
                let link = self.nodes[d.node].link.as_ref().map(|l| &l.model);
                let bus = d.bus.as_ref();
                DeviceEstimate {
                    bus_latency_us: bus.map(|b| b.intercept()),
                    bus_bytes_per_us: bus.and_then(|b| (b.slope() > 0.0).then(|| 1.0 / b.slope())),
                    device: d.id,
                    name: d.spec.name.clone(),
                    node: self.nodes[d.node].id,
                    rate_items_per_s: (d.calibrated && d.model.slope() > 0.0)
                        .then(|| 1e6 / d.model.slope()),
                    startup_us: d.model.intercept(),
                    samples: d.model.samples(),
                    link_latency_us: link.map(|l| l.intercept()),
                    link_bytes_per_us: link
                        .and_then(|l| (l.slope() > 0.0).then(|| 1.0 / l.slope())),
                }
            })
            .collect()
    }

    // ----- events -------------------------------------------------------------------

    fn device(&self, id: DeviceId) -> Result<usize, EventError> {
        self.device_index
            .get(&id)
            .copied()
            .ok_or(EventError::UnknownDevice(id))
    }

    fn joined(&mut self, id: DeviceId, spec: DeviceSpec) -> Result<(), EventError> {
        let existing = self.device_index.get(&id).copied();
        if let Some(d) = existing {
            match self.devices[d].status {
                Status::Active => return Err(EventError::AlreadyJoined(id)),
                Status::Excluded => return Err(EventError::Excluded(id)),
                Status::Lost => {}
            }
        }
        let node = match self.node_index.get(&spec.node) {
            Some(&n) => n,
            None => {
                self.nodes.push(Node {
                    id: spec.node,
                    link: spec.link.map(|l| {
                        NodeLink::new(RobustLine::new(
                            l.latency_us,
                            1.0 / l.bytes_per_us.max(1e-9),
                        ))
                    }),
                    broadcast_sent: false,
                    devices: Vec::new(),
                    active: 0,
                });
                self.node_index.insert(spec.node, self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        let calibrated = spec.rate_items_per_s.is_some_and(|r| r > 0.0);
        let slope = spec
            .rate_items_per_s
            .filter(|r| *r > 0.0)
            .map_or(0.0, |r| 1e6 / r);
        let device = Device {
            id,
            node,
            model: RobustLine::new(spec.startup_us, slope),
            bus: spec
                .bus
                .map(|b| RobustLine::new(b.latency_us, 1.0 / b.bytes_per_us.max(1e-9))),
            calibrated,
            status: Status::Active,
            in_flight: Vec::new(),
            avail: self.now,
            rate: 0.0,
            load: None,
            key: 0,
            place: Place::Nowhere,
            in_speed_index: false,
            failures_in_a_row: 0,
            largest_done: 0,
            spec,
        };
        let d = match existing {
            Some(d) => {
                // A lost device joining again: it may have moved to another node.
                let old = self.devices[d].node;
                self.nodes[old].devices.retain(|&x| x != d);
                self.devices[d] = device;
                d
            }
            None => {
                self.devices.push(device);
                self.device_index.insert(id, self.devices.len() - 1);
                self.devices.len() - 1
            }
        };
        self.nodes[node].devices.push(d);
        self.nodes[node].active += 1;
        if self.nodes[node].active == 1 {
            self.active_nodes += 1;
        }
        for k in 0..self.nodes[node].devices.len() {
            let dev = self.nodes[node].devices[k];
            self.sync(dev);
        }
        self.place(d, Place::Free);
        Ok(())
    }

    fn attempt_of(&self, d: usize, pid: PacketId) -> Option<usize> {
        self.packets
            .get(&pid)?
            .attempts
            .iter()
            .position(|a| a.device == d && a.state == AttemptState::Running)
    }

    fn finished(
        &mut self,
        d: usize,
        pid: PacketId,
        compute_us: u64,
        digest: Option<[u8; 32]>,
    ) -> Result<(), EventError> {
        let Some(a) = self.attempt_of(d, pid) else {
            if let Some(packet) = self.canceled.remove(&(pid, d)) {
                self.discard(d, packet);
                return Ok(());
            }
            if let Some((packet, majority)) = self.end_verify(d, pid) {
                self.devices[d]
                    .model
                    .add(packet.items() as f64, compute_us as f64);
                self.discard(d, packet);
                if digest != majority {
                    self.disagree(d, packet, digest, majority);
                }
                return Ok(());
            }
            return Err(EventError::NotRunning {
                device: self.devices[d].id,
                packet: pid,
            });
        };
        let (items, attempt) = match self.packets.get_mut(&pid) {
            Some(ps) => {
                ps.attempts[a].state = AttemptState::Finished(digest);
                (ps.packet.items(), ps.attempts[a])
            }
            None => return Ok(()),
        };
        let now = self.now;
        let dev = &mut self.devices[d];
        dev.in_flight.retain(|&p| p != pid);
        self.running -= 1;
        dev.model.add(items as f64, compute_us as f64);
        dev.calibrated = true;
        dev.largest_done = dev.largest_done.max(items);
        dev.failures_in_a_row = 0;
        let before = dev.avail;
        dev.avail = if dev.in_flight.is_empty() {
            now
        } else {
            (dev.avail + (now - attempt.result_at)).max(now)
        };
        let delta = dev.avail - before;
        self.unbook_upload(d, pid, delta);
        self.sync(d);
        self.mark_free_if_slot(d);
        self.resolve(pid);
        Ok(())
    }

    fn packet_failed(
        &mut self,
        d: usize,
        pid: PacketId,
        retryable: bool,
    ) -> Result<(), EventError> {
        let Some(a) = self.attempt_of(d, pid) else {
            if self.canceled.remove(&(pid, d)).is_some() || self.end_verify(d, pid).is_some() {
                return Ok(());
            }
            return Err(EventError::NotRunning {
                device: self.devices[d].id,
                packet: pid,
            });
        };
        if !retryable {
            let packet = self.packets.get(&pid).map(|p| p.packet);
            if let Some(packet) = packet {
                self.failed = Some(Failure {
                    device: self.devices[d].id,
                    node: self.nodes[self.devices[d].node].id,
                    packet,
                });
            }
            self.drop_attempt(pid, a);
            self.cancel_everything();
            return Ok(());
        }
        self.drop_attempt(pid, a);
        self.devices[d].failures_in_a_row += 1;
        if self.devices[d].failures_in_a_row >= MAX_CONSECUTIVE_FAILURES {
            self.remove_device(d, Status::Excluded);
        } else {
            self.mark_free_if_slot(d);
        }
        Ok(())
    }

    /// Takes a device out of the job; its running packets go back to work.
    fn remove_device(&mut self, d: usize, status: Status) {
        if self.devices[d].status != Status::Active {
            return;
        }
        let announce = status == Status::Excluded;
        for pid in self.devices[d].in_flight.clone() {
            if self.end_verify(d, pid).is_some() {
                continue;
            }
            if let Some(a) = self.attempt_of(d, pid) {
                if announce {
                    if let Some(packet) = self.packets.get(&pid).map(|ps| ps.packet) {
                        self.cancel_copy(d, pid, packet);
                    }
                }
                self.drop_attempt(pid, a);
            }
        }
        self.place(d, Place::Nowhere);
        self.devices[d].status = status;
        let n = self.devices[d].node;
        self.nodes[n].active -= 1;
        if self.nodes[n].active == 0 {
            self.active_nodes -= 1;
        }
        for k in 0..self.nodes[n].devices.len() {
            let dev = self.nodes[n].devices[k];
            self.sync(dev);
        }
    }

    /// Ends a running attempt without a result; its packet is re-queued if no other copy
    /// runs (or, under redundancy, asks for another copy).
    fn drop_attempt(&mut self, pid: PacketId, a: usize) {
        let Some(ps) = self.packets.get_mut(&pid) else {
            return;
        };
        let attempt = ps.attempts[a];
        ps.attempts[a].state = AttemptState::Dropped;
        let d = attempt.device;
        self.release_slot(d, pid, attempt.compute_est);
        let Some(ps) = self.packets.get(&pid) else {
            return;
        };
        if self.job.redundancy == 1 {
            if ps.running() == 0 {
                let packet = ps.packet;
                self.unlink_straggler(pid);
                self.packets.remove(&pid);
                self.release(packet.start, packet.end);
            } else {
                self.update_straggler(pid);
            }
        } else if (ps.running() + ps.finished()) < ps.wanted as usize {
            self.needs_copy.insert(pid);
        }
    }

    /// Emits `Cancel` for every running copy after the job failed.
    fn cancel_everything(&mut self) {
        let pids: Vec<PacketId> = self.packets.keys().collect();
        for pid in pids {
            let Some(ps) = self.packets.get(&pid) else {
                continue;
            };
            let running: Vec<(usize, Attempt)> = ps
                .attempts
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, a)| a.state == AttemptState::Running)
                .collect();
            let packet = ps.packet;
            for (i, a) in running {
                self.cancel_copy(a.device, pid, packet);
                if let Some(ps) = self.packets.get_mut(&pid) {
                    ps.attempts[i].state = AttemptState::Dropped;
                }
                self.release_slot(a.device, pid, a.compute_est);
            }
        }
    }

    fn discard(&mut self, d: usize, packet: Packet) {
        self.progress.results_discarded += 1;
        self.out.push_back(Decision::Discard {
            device: self.devices[d].id,
            packet,
        });
    }

    /// Decides a packet once enough copies finished: commits the winner, cancels the
    /// other running copies, reports and excludes disagreeing devices.
    fn resolve(&mut self, pid: PacketId) {
        let Some(ps) = self.packets.get(&pid) else {
            return;
        };
        let winner = if self.job.redundancy == 1 {
            ps.attempts
                .iter()
                .position(|a| matches!(a.state, AttemptState::Finished(_)))
        } else {
            let needed = self.job.redundancy as usize / 2 + 1;
            let digests: Vec<(usize, Option<[u8; 32]>)> = ps
                .attempts
                .iter()
                .enumerate()
                .filter_map(|(i, a)| match a.state {
                    AttemptState::Finished(g) => Some((i, g)),
                    _ => None,
                })
                .collect();
            digests
                .iter()
                .find(|(_, g)| digests.iter().filter(|(_, h)| h == g).count() >= needed)
                .map(|&(i, _)| i)
        };
        let Some(w) = winner else {
            // Undecided: ask for another copy when all wanted copies are in and disagree.
            let (running, finished, wanted) = (ps.running(), ps.finished(), ps.wanted as usize);
            if running + finished >= wanted && running == 0 {
                if let Some(ps) = self.packets.get_mut(&pid) {
                    ps.wanted += 1;
                }
                self.needs_copy.insert(pid);
            } else if running + finished < wanted {
                self.needs_copy.insert(pid);
            }
            return;
        };
        self.unlink_straggler(pid);
        self.needs_copy.remove(&pid);
        let Some(ps) = self.packets.remove(&pid) else {
            return;
        };
        let packet = ps.packet;
        let winner = ps.attempts[w];
        let majority = match winner.state {
            AttemptState::Finished(g) => g,
            _ => None,
        };
        self.out.push_back(Decision::Commit {
            device: self.devices[winner.device].id,
            packet,
        });
        self.progress.items_committed += packet.items();
        self.progress.packets_committed += 1;
        let mut liars = Vec::new();
        for (i, a) in ps.attempts.iter().enumerate() {
            match a.state {
                AttemptState::Running if self.job.redundancy > 1 => {
                    // Let it finish: its digest is still checked against the majority.
                    self.verify
                        .insert((pid, a.device), (packet, majority, a.compute_est));
                }
                AttemptState::Running => {
                    let d = a.device;
                    self.cancel_copy(d, pid, packet);
                    self.release_slot(d, pid, a.compute_est);
                    self.mark_free_if_slot(d);
                }
                AttemptState::Finished(g) if i != w => {
                    if self.job.redundancy > 1 && g != majority {
                        liars.push((a.device, g));
                    } else {
                        self.discard(a.device, packet);
                    }
                }
                _ => {}
            }
        }
        for (d, digest) in liars {
            self.discard(d, packet);
            self.disagree(d, packet, digest, majority);
        }
    }

    /// Reports a device whose result disagreed with the majority (once) and excludes it.
    fn disagree(
        &mut self,
        d: usize,
        packet: Packet,
        digest: Option<[u8; 32]>,
        majority: Option<[u8; 32]>,
    ) {
        if self.devices[d].status == Status::Excluded {
            return;
        }
        self.disagreements.push(Disagreement {
            device: self.devices[d].id,
            node: self.nodes[self.devices[d].node].id,
            packet,
            digest,
            majority,
        });
        self.remove_device(d, Status::Excluded);
    }

    /// Ends a copy that was running for verification only; returns its packet and the
    /// majority's digest.
    fn end_verify(&mut self, d: usize, pid: PacketId) -> Option<(Packet, Option<[u8; 32]>)> {
        let (packet, majority, compute_est) = self.verify.remove(&(pid, d))?;
        self.release_slot(d, pid, compute_est);
        self.mark_free_if_slot(d);
        Some((packet, majority))
    }

    /// Takes attempt `pid` off device `d` before it delivered: the device's queue
    /// shortens by the attempt's estimated compute time.
    fn release_slot(&mut self, d: usize, pid: PacketId, compute_est: f64) {
        self.running -= 1;
        let now = self.now;
        let dev = &mut self.devices[d];
        dev.in_flight.retain(|&p| p != pid);
        let before = dev.avail;
        dev.avail = if dev.in_flight.is_empty() {
            now
        } else {
            (dev.avail - compute_est).max(now)
        };
        let delta = dev.avail - before;
        self.unbook_upload(d, pid, delta);
        self.sync(d);
    }

    /// Takes the upload of `pid` on device `d` off its node's link, and moves the
    /// device's other uploads by `delta` µs, as its queue moved.
    fn unbook_upload(&mut self, d: usize, pid: PacketId, delta: f64) {
        let n = self.devices[d].node;
        if let Some(link) = self.nodes[n].link.as_mut() {
            link.release(pid, d);
            link.shift(d, delta);
        }
    }

    /// Tells the runner to cancel `packet` on device `d`; its late result is discarded.
    fn cancel_copy(&mut self, d: usize, pid: PacketId, packet: Packet) {
        self.out.push_back(Decision::Cancel {
            device: self.devices[d].id,
            packet,
        });
        self.canceled.insert((pid, d), packet);
    }

    /// Puts device `d` among the free ones if it has a slot and is not there yet.
    fn mark_free_if_slot(&mut self, d: usize) {
        if self.devices[d].has_free_slot() && self.devices[d].place != Place::Free {
            self.place(d, Place::Free);
        }
    }

    // ----- policy -------------------------------------------------------------------

    /// A decision for device `d`, which has a free slot, or `None` if it should wait.
    fn try_assign(&mut self, d: usize) -> Option<Decision> {
        if self.job.redundancy > 1 {
            if let Some(decision) = self.assign_copy(d) {
                return Some(decision);
            }
            if self.active_nodes < self.job.redundancy {
                return None;
            }
        }
        if self.unassigned > 0 {
            let size = self.packet_size(d)?;
            let (start, end) = self.cut(size)?;
            let pid = PacketId(self.next_packet);
            self.next_packet += 1;
            let packet = Packet {
                id: pid,
                start,
                end,
            };
            self.packets.insert(
                pid,
                PacketState {
                    packet,
                    attempts: Vec::new(),
                    wanted: self.job.redundancy,
                    straggler: None,
                },
            );
            if self.job.redundancy > 1 {
                self.needs_copy.insert(pid);
            }
            return self.issue(d, pid);
        }
        if self.job.speculation && self.job.redundancy == 1 {
            return self.speculate(d);
        }
        None
    }

    fn assign_copy(&mut self, d: usize) -> Option<Decision> {
        let node = self.devices[d].node;
        let pid = self
            .needs_copy
            .iter()
            .take(COPY_SCAN)
            .copied()
            .find(|pid| {
                self.packets.get(pid).is_some_and(|ps| {
                    !ps.attempts.iter().any(|a| {
                        a.state != AttemptState::Dropped && self.devices[a.device].node == node
                    })
                })
            })?;
        self.issue(d, pid)
    }

    /// Duplicates the straggler predicted to finish last, if `d` would finish it clearly
    /// sooner.
    fn speculate(&mut self, d: usize) -> Option<Decision> {
        let pid = self.top_straggler()?;
        let ps = self.packets.get(&pid)?;
        let a = ps
            .attempts
            .iter()
            .find(|a| a.state == AttemptState::Running)?;
        if a.device == d {
            return None;
        }
        let now = self.now;
        let expected = if a.result_at > now {
            a.result_at
        } else {
            // Overdue, so the model was wrong about it: assume it needs as long again as
            // it has run so far.
            now + (now - a.issued)
        };
        let items = ps.packet.items();
        let plan = self.plan(d, items);
        // Look again once the straggler is late by a quarter of its predicted time.
        let again = a.result_at.max(now) + 0.25 * (a.result_at - a.issued).max(1.0);
        self.wakeup = Some(self.wakeup.map_or(again, |t| t.min(again)));
        // Worth a copy, and no faster device (busy now) would finish that copy sooner.
        if plan.result_at < now + SPECULATION_GAIN * (expected - now)
            && plan.result_at <= self.best_other_finish(&[d, a.device], items)
        {
            self.issue(d, pid)
        } else {
            None
        }
    }

    fn min_packet_us(&self, d: usize) -> f64 {
        if let Some(us) = self.job.min_packet_us {
            return us;
        }
        // From the spec's start-up cost, not the fitted one: the fitted intercept of
        // large noisy packets is too uncertain to size the smallest packets with.
        let dev = &self.devices[d];
        let hidden = dev.spec.slots > 1;
        let latency = match &dev.spec.link {
            Some(l) if !hidden => 2.0 * l.latency_us,
            _ => 0.0,
        };
        // A bus transfer in each direction is part of every packet's fixed cost too.
        let bus = dev.spec.bus.map_or(0.0, |b| 2.0 * b.latency_us.max(0.0));
        (20.0 * (dev.spec.startup_us.max(0.0) + latency + bus)).max(50.0)
    }

    /// The largest packet device `d` takes: its own bound within the job's.
    fn max_packet(&self, d: usize) -> u64 {
        let job = self.job.max_packet;
        self.devices[d]
            .spec
            .max_packet
            .map_or(job, |m| m.clamp(1, job))
    }

    /// Guided self-scheduling scaled by the device's share of the total speed, shrunk (or
    /// refused) near the end so that the device finishes with the others.
    fn packet_size(&self, d: usize) -> Option<u64> {
        let w = self.unassigned;
        let dev = &self.devices[d];
        let job = &self.job;
        let max_packet = self.max_packet(d);
        if !dev.calibrated {
            let size = if dev.largest_done == 0 {
                job.calibration_packet(self.devices.len()).min(max_packet)
            } else {
                dev.largest_done.saturating_mul(8).min(max_packet)
            };
            return Some(size.min(w).max(1));
        }
        let r = dev.rate.max(1e-12);
        let total = self.total_rate.max(r);
        // The device's time per item, its own bus included: what a packet's minimum
        // length in µs is measured in. Results come in whole µs, so packets of cheap
        // items can measure 0: such a packet took up to 1 µs, and its slope is at least
        // 1 µs over its items. (Taken as ~0, the minimum packet became the whole job:
        // a Mandelbrot image whose first rows escape at once went out in 5 packets.)
        let resolution = 1.0 / dev.largest_done.max(1) as f64;
        let slope = (dev.model.slope() + self.bus_per_item(d)).max(resolution);
        let s_min = job
            .min_packet
            .max((self.min_packet_us(d) / slope).ceil() as u64)
            .min(max_packet);
        // Guided self-scheduling in time: the device's queue should hold 1/k of the
        // projected remaining time (plus a round trip where slots pipeline), so packets
        // are large while much work remains and shrink toward the end. What the device
        // already has queued counts, so a second slot only covers the round trip.
        let now = self.now;
        let horizon = (w as f64 + (self.load_weighted - now * self.load_rate).max(0.0)) / total;
        let backlog = (dev.avail - now).max(0.0);
        // Work in flight on a remote node is lost if the node fails or drops off the
        // network: remote devices get a smaller share of the remaining time per packet.
        // Not under redundancy, where a lost node costs one copy of its packets and the
        // others live on (and where measured makespans are better with larger packets).
        let single = job.redundancy == 1;
        let k = job.packets_per_device
            * if single && dev.spec.link.is_some() {
                REMOTE_PACKET_FACTOR
            } else {
                1.0
            };
        let base = horizon / k;
        let target_us = if dev.in_flight.is_empty() {
            base
        } else {
            // A second slot (pipelining): enough work to cover the packet ahead's results
            // going back and this packet's inputs coming in (twice: the node's devices
            // share the link) plus a round trip, so the device never waits for data.
            let pipeline = match self.nodes[dev.node].link.as_ref().map(|l| &l.model) {
                Some(l) => {
                    let bytes = (job.bytes_in_per_item + job.bytes_out_per_item) as f64;
                    2.0 * l.intercept()
                        + dev.model.intercept()
                        + 2.0 * l.slope() * bytes * r * backlog
                }
                None => 0.0,
            };
            (base - backlog).max(0.0) + pipeline
        };
        let gss = (target_us.max(0.0) * r).ceil().min(u64::MAX as f64) as u64;
        let mut size = gss.max(s_min).min(max_packet);
        // Slow start: a device's first packets are sized from a guess (a tuning profile or
        // a calibration packet) and from the devices known so far, both of which may be
        // wrong (later joins, a profile off by 30%), and on a link they fill the pipeline
        // before anything comes back. So a packet is at most the larger of 1/RAMP_FIRST
        // of its size by the rule above and RAMP_GROWTH times the largest packet the
        // device has finished. Not under redundancy (copies run on devices other than
        // the one a packet is sized for).
        if single {
            let first = (base / RAMP_FIRST * r).ceil().min(u64::MAX as f64) as u64;
            let grown = (dev.largest_done as f64 * RAMP_GROWTH).min(u64::MAX as f64) as u64;
            size = size.min(first.max(grown).max(s_min));
        }
        if dev.spec.rate_items_per_s.is_none() && dev.model.samples() < 3 {
            size = size.min(dev.largest_done.saturating_mul(8).max(s_min));
        }
        if w.saturating_sub(size) < job.min_packet {
            size = w;
        }
        size = size.min(w);
        if self.running == 0 {
            return Some(size);
        }
        // Tail: will this packet end after the projected common finish?
        let t_star = self.projected_finish();
        let plan = self.plan(d, size);
        if plan.result_at <= t_star {
            return Some(size);
        }
        // Shrink it to end by then; if even a minimal packet cannot, let a device that
        // would finish that sooner take it (earliest finish time wins).
        let fixed = self.plan(d, 0).result_at;
        let per_item = (plan.result_at - fixed) / size as f64;
        if per_item > 0.0 {
            let fit = ((t_star - fixed) / per_item).floor();
            if fit >= s_min.min(w) as f64 {
                return Some((fit as u64).min(size));
            }
        }
        let small = s_min.min(w);
        if self.best_other_finish(&[d], small) < self.plan(d, small).result_at {
            None
        } else {
            Some(small)
        }
    }

    /// Earliest predicted result time of a packet of `size` items among the fastest
    /// busy devices not in `skip`.
    fn best_other_finish(&self, skip: &[usize], size: u64) -> f64 {
        // Idle devices are not counted: they are offered the same work themselves, fastest
        // first. The question is whether to wait for a fast device that is busy.
        self.by_speed
            .iter()
            .filter(|&&(_, e)| !skip.contains(&e) && !self.devices[e].in_flight.is_empty())
            .take(FASTEST_CHECKED)
            .map(|&(_, e)| self.plan(e, size).result_at)
            .fold(f64::INFINITY, f64::min)
    }

    /// Time at which the remaining work would be done if every device kept busy:
    /// `now + (unassigned + in-flight work) / total rate`.
    fn projected_finish(&self) -> f64 {
        if self.total_rate <= 0.0 {
            return f64::INFINITY;
        }
        let in_flight = (self.load_weighted - self.now * self.load_rate).max(0.0);
        self.now + (self.unassigned as f64 + in_flight) / self.total_rate
    }

    /// Predicted timeline of `size` items on device `d` if issued now.
    fn plan(&self, d: usize, size: u64) -> Plan {
        let dev = &self.devices[d];
        let node = &self.nodes[dev.node];
        let now = self.now;
        // On a device with its own bus, inputs cross it before the kernel and results
        // after, while the device is busy: all of it is the device's time.
        let bus = dev.bus.as_ref().map_or(0.0, |b| {
            b.predict((size * self.job.bytes_in_per_item) as f64)
                + b.predict((size * self.job.bytes_out_per_item) as f64)
        });
        let compute_est = dev.model.predict(size as f64) + bus;
        match &node.link {
            Some(link) => {
                let l = &link.model;
                let broadcast = if node.broadcast_sent {
                    0
                } else {
                    self.job.broadcast_bytes
                };
                let bytes = size * self.job.bytes_in_per_item + broadcast;
                let start = now.max(link.down_free);
                let sent = start + l.slope() * bytes as f64;
                let compute_end = (sent + l.intercept()).max(dev.avail).max(now) + compute_est;
                // Results leave in the order packets finish computing, after those ahead.
                let upload = l.slope() * (size * self.job.bytes_out_per_item) as f64;
                let uploaded = link.upload_end(compute_end, upload);
                Plan {
                    link_free: sent,
                    compute_end,
                    upload,
                    result_at: uploaded + l.intercept(),
                    compute_est,
                }
            }
            None => {
                let compute_end = dev.avail.max(now) + compute_est;
                Plan {
                    link_free: now,
                    compute_end,
                    upload: 0.0,
                    result_at: compute_end,
                    compute_est,
                }
            }
        }
    }

    fn issue(&mut self, d: usize, pid: PacketId) -> Option<Decision> {
        let packet = self.packets.get(&pid)?.packet;
        let plan = self.plan(d, packet.items());
        let now = self.now;
        let node = self.devices[d].node;
        if let Some(link) = self.nodes[node].link.as_mut() {
            link.down_free = plan.link_free;
            link.book(pid, d, plan.compute_end, plan.upload);
            self.nodes[node].broadcast_sent = true;
        }
        let dev = &mut self.devices[d];
        dev.avail = plan.compute_end;
        dev.in_flight.push(pid);
        self.running += 1;
        self.progress.runs_issued += 1;
        if let Some(ps) = self.packets.get_mut(&pid) {
            if !ps.attempts.is_empty() {
                self.progress.duplicates_issued += 1;
            }
            ps.attempts.push(Attempt {
                device: d,
                state: AttemptState::Running,
                issued: now,
                result_at: plan.result_at,
                compute_est: plan.compute_est,
            });
            if (ps.running() + ps.finished()) >= ps.wanted as usize {
                self.needs_copy.remove(&pid);
            }
        }
        self.update_straggler(pid);
        self.sync(d);
        Some(Decision::Run {
            device: self.devices[d].id,
            packet,
        })
    }

    // ----- bookkeeping ------------------------------------------------------------

    /// Cuts `size` items from the lowest free range.
    fn cut(&mut self, size: u64) -> Option<(u64, u64)> {
        let (&start, &end) = self.pool.iter().next()?;
        let take = size.min(end - start);
        self.pool.remove(&start);
        if start + take < end {
            self.pool.insert(start + take, end);
        }
        self.unassigned -= take;
        Some((start, start + take))
    }

    /// Returns `start..end` to the free ranges.
    fn release(&mut self, start: u64, end: u64) {
        if start < end {
            self.pool.insert(start, end);
            self.unassigned += end - start;
        }
    }

    fn update_straggler(&mut self, pid: PacketId) {
        let Some(ps) = self.packets.get(&pid) else {
            return;
        };
        let want = if self.job.speculation && self.job.redundancy == 1 && ps.running() == 1 {
            ps.attempts
                .iter()
                .find(|a| a.state == AttemptState::Running)
                .map(|a| (a.result_at.max(0.0) as u64, pid))
        } else {
            None
        };
        if want != ps.straggler {
            // The old entry, if any, goes stale in the heap.
            if let Some(ps) = self.packets.get_mut(&pid) {
                ps.straggler = want;
            }
            if let Some(new) = want {
                self.stragglers.push(new);
                self.compact_stragglers();
            }
        }
    }

    fn unlink_straggler(&mut self, pid: PacketId) {
        if let Some(ps) = self.packets.get_mut(&pid) {
            // Its entry goes stale in the heap.
            ps.straggler = None;
        }
    }

    fn is_current_straggler(&self, entry: (u64, PacketId)) -> bool {
        self.packets
            .get(&entry.1)
            .is_some_and(|ps| ps.straggler == Some(entry))
    }

    /// The straggler predicted to finish last (the greatest current entry).
    fn top_straggler(&mut self) -> Option<PacketId> {
        while let Some(&entry) = self.stragglers.peek() {
            if self.is_current_straggler(entry) {
                return Some(entry.1);
            }
            self.stragglers.pop();
        }
        None
    }

    /// Drops the stale entries once they outnumber the live packets, so that the heap
    /// stays within a constant factor of the packets running.
    fn compact_stragglers(&mut self) {
        if self.stragglers.len() > 2 * self.packets.len() + 64 {
            let mut heap = std::mem::take(&mut self.stragglers);
            heap.retain(|&entry| self.is_current_straggler(entry));
            self.stragglers = heap;
        }
    }

    /// µs per item that device `d`'s own bus adds to its packets (0 without a bus).
    fn bus_per_item(&self, d: usize) -> f64 {
        self.devices[d].bus.as_ref().map_or(0.0, |b| {
            b.slope() * (self.job.bytes_in_per_item + self.job.bytes_out_per_item) as f64
        })
    }

    /// Effective rate of a device in items/µs: its compute rate, capped by its share of
    /// its node's link when items carry bytes.
    fn effective_rate(&self, d: usize) -> f64 {
        let dev = &self.devices[d];
        if dev.status != Status::Active || !dev.calibrated {
            return 0.0;
        }
        // A slope of 0 (results reported as 0 µs) means "very fast", not "no rate". A
        // device's own bus is crossed in line with its packets: its time per item adds.
        let mut r = 1.0 / (dev.model.slope() + self.bus_per_item(d)).max(1e-9);
        let node = &self.nodes[dev.node];
        // Links are full duplex: inputs and results do not compete.
        let bytes = self.job.bytes_in_per_item.max(self.job.bytes_out_per_item);
        if let (Some(l), true) = (node.link.as_ref().map(|l| &l.model), bytes > 0) {
            if l.slope() > 0.0 {
                let share = 1.0 / (l.slope() * bytes as f64 * node.active.max(1) as f64);
                r = r.min(share);
            }
        }
        r
    }

    /// Re-derives a device's contributions to the rate sums and its place in the speed
    /// index after any change to it.
    fn sync(&mut self, d: usize) {
        let rate = self.effective_rate(d);
        let old_rate = self.devices[d].rate;
        self.total_rate += rate - old_rate;
        if self.total_rate < 1e-12 {
            self.total_rate = 0.0;
        }
        self.devices[d].rate = rate;
        if let Some((r, a)) = self.devices[d].load.take() {
            self.load_rate -= r;
            self.load_weighted -= r * a;
        }
        if !self.devices[d].in_flight.is_empty() && rate > 0.0 {
            let a = self.devices[d].avail;
            self.load_rate += rate;
            self.load_weighted += rate * a;
            self.devices[d].load = Some((rate, a));
        }
        let key = if self.devices[d].calibrated {
            rate.to_bits()
        } else {
            f64::INFINITY.to_bits()
        };
        if key != self.devices[d].key || !self.devices[d].in_speed_index {
            let place = self.devices[d].place;
            self.place(d, Place::Nowhere);
            if self.devices[d].in_speed_index {
                self.by_speed.remove(&(Reverse(self.devices[d].key), d));
                self.devices[d].in_speed_index = false;
            }
            self.devices[d].key = key;
            if self.devices[d].status == Status::Active && rate > 0.0 {
                self.by_speed.insert((Reverse(key), d));
                self.devices[d].in_speed_index = true;
            }
            if self.devices[d].status == Status::Active {
                self.place(d, place);
            }
        } else if self.devices[d].status != Status::Active && self.devices[d].in_speed_index {
            self.by_speed.remove(&(Reverse(key), d));
            self.devices[d].in_speed_index = false;
        }
    }

    /// Moves a device between the free and parked sets.
    fn place(&mut self, d: usize, to: Place) {
        let entry = (Reverse(self.devices[d].key), d);
        match self.devices[d].place {
            Place::Free => {
                self.free.remove(&entry);
            }
            Place::Parked => {
                self.parked.remove(&entry);
            }
            Place::Nowhere => {}
        }
        let to = if self.devices[d].has_free_slot() {
            to
        } else {
            Place::Nowhere
        };
        match to {
            Place::Free => {
                self.free.insert(entry);
            }
            Place::Parked => {
                self.parked.insert(entry);
            }
            Place::Nowhere => {}
        }
        self.devices[d].place = to;
    }
}
