//! The client's job loop as a pure state machine, like the scheduler core it drives.
//!
//! What happens to a cluster job goes in as a [`JobEvent`]: a packet's answer, a
//! transfer the shell timed, a node's connection closing, a lost node back and prepared
//! again, a paused node serving again. What the client must do comes out of
//! [`JobLoop::advance`] as [`Action`]s: send a packet to a node, copy a committed result
//! into the job's buffers, reconnect to a lost node, ask a paused one, close a
//! connection, tell the user. The loop keeps the scheduler and every member's standing
//! (lost, paused, excluded, failures); it does no I/O and reads no clock (`now` comes
//! with every call), so its rules are tested deterministically without sockets (the
//! tests below), and `client.rs` is the tokio shell that turns actions into streams and
//! answers into events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use scheduler::{
    Decision, DeviceChoice, DeviceEstimate, DeviceId, DeviceSpec, Event, JobSpec, Link, NodeId,
    Scheduler,
};

use crate::client::{ClientError, JobProgress, Unfinished};
use crate::protocol::{Hash, NodeInfo, Response};

/// The bandwidth a node's link is assumed to have until its transfers are measured:
/// gigabit Ethernet's payload rate, 117 bytes/µs. The first results replace it
/// (`link_meter.rs`).
pub(crate) const UNMEASURED_BYTES_PER_US: f64 = 117.0;

/// Packets a node may fail in one job before it is excluded from it (a failure that
/// another node confirms on the same items fails the job instead: the kernel is at fault).
pub(crate) const MAX_NODE_FAILURES: u32 = 2;

/// The device kind of the CPU workers of a node, as [`crate::protocol::TunedRate`]
/// names it.
pub(crate) const CPU_DEVICE: &str = "cpu";

/// What the loop knows of the job besides its members.
pub(crate) struct JobPlan {
    /// The kernel.
    pub(crate) kernel: String,
    /// Its package's hash (tuned rates are per package and kernel).
    pub(crate) package: Hash,
    /// Items of the job.
    pub(crate) items: u64,
    /// Copies of every packet on distinct nodes.
    pub(crate) redundancy: u32,
    /// Which devices of the nodes run packets.
    pub(crate) devices: DeviceChoice,
    /// Packets in flight per device.
    pub(crate) slots: u32,
    /// Links measured by former jobs, by node address: the prior in place of
    /// [`UNMEASURED_BYTES_PER_US`].
    pub(crate) known_links: HashMap<SocketAddr, Link>,
    /// What every packet's result holds, in order.
    pub(crate) outputs: Vec<OutputShape>,
    /// Whether anyone watches progress (no [`Action::Progress`] otherwise).
    pub(crate) progress: bool,
}

/// One entry of a packet's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutputShape {
    /// The slice of an output split buffer: bytes per item.
    PerItem(u64),
    /// A `sum` partial: its bytes.
    Fixed(u64),
}

/// Checks a result's shape against the plan's: one entry per output, sized for `items`.
fn check_outputs(shape: &[OutputShape], outputs: &[Vec<u8>], items: u64) -> Result<(), String> {
    let expected: Vec<u64> = shape
        .iter()
        .map(|s| match *s {
            OutputShape::PerItem(bytes) => items.saturating_mul(bytes),
            OutputShape::Fixed(bytes) => bytes,
        })
        .collect();
    let got: Vec<u64> = outputs.iter().map(|o| o.len() as u64).collect();
    if got == expected {
        Ok(())
    } else {
        Err(format!(
            "result has slices of {got:?} bytes, expected {expected:?}"
        ))
    }
}

/// A node that took the job, as the shell prepared it.
pub(crate) struct Joined {
    /// `NAME (ADDR)`.
    pub(crate) name: String,
    /// Its address.
    pub(crate) addr: SocketAddr,
    /// What it said of itself.
    pub(crate) info: NodeInfo,
    /// Its round trip when it was connected.
    pub(crate) rtt: Duration,
    /// Its OpenCL devices that took the job.
    pub(crate) opencl: Vec<u32>,
}

/// What happened, as the shell saw it.
pub(crate) enum JobEvent {
    /// A transfer on `member`'s link, measured (`link_meter.rs`).
    Transfer {
        /// The member.
        member: usize,
        /// Bytes one way.
        bytes: u64,
        /// In this many µs.
        micros: u64,
    },
    /// A packet's answer, or why none came.
    Packet {
        /// The device it ran on.
        device: DeviceId,
        /// The packet.
        packet: scheduler::Packet,
        /// The node's response, or what went wrong on the way.
        result: Result<Response, String>,
    },
    /// The connection of `generation` of `member` closed (a rejoined member has a new
    /// generation, so a late notice about its old connection is ignored).
    Closed {
        /// The member.
        member: usize,
        /// Its generation when the connection was watched.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// A lost member is reachable again and prepared for the job.
    Rejoined {
        /// The member.
        member: usize,
        /// What it says of itself now.
        info: NodeInfo,
        /// Its round trip now.
        rtt: Duration,
        /// Its OpenCL devices that took the job.
        opencl: Vec<u32>,
    },
    /// A paused member (pause `epoch`) says it takes packets again.
    Resumed {
        /// The member.
        member: usize,
        /// Its pause.
        epoch: u64,
    },
}

/// What the shell must do.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send `packet` to `member`, to run on `device` (`target`: the node's OpenCL
    /// device, `None` for its CPU workers).
    Run {
        /// The member.
        member: usize,
        /// The scheduler's device.
        device: DeviceId,
        /// The packet.
        packet: scheduler::Packet,
        /// Where on the node.
        target: Option<u32>,
    },
    /// Copy a committed result into the job's buffers and add its `sum` partials.
    Commit {
        /// The packet.
        packet: scheduler::Packet,
        /// Its result, checked against the plan's shape.
        outputs: Vec<Vec<u8>>,
    },
    /// Tell the progress observers.
    Progress(JobProgress),
    /// Tell the user (a warning without an event callback).
    Notify(String),
    /// Log, for `-v`.
    Info(String),
    /// Close `member`'s connection: it is lost to the job.
    Close {
        /// The member.
        member: usize,
    },
    /// Reconnect to lost `member` at `addr` with backoff, prepare the job there and
    /// report [`JobEvent::Rejoined`].
    Rejoin {
        /// The member.
        member: usize,
        /// Its address.
        addr: SocketAddr,
    },
    /// Ask paused `member` until it serves again, then report [`JobEvent::Resumed`].
    AwaitResume {
        /// The member.
        member: usize,
        /// Its pause.
        epoch: u64,
    },
    /// Watch `member`'s (new) connection and report [`JobEvent::Closed`].
    Watch {
        /// The member.
        member: usize,
        /// Its generation.
        generation: u64,
    },
}

/// A node taking part in a job, and its standing.
pub(crate) struct Member {
    /// `NAME (ADDR)`.
    pub(crate) name: String,
    /// Its address.
    pub(crate) addr: SocketAddr,
    /// Its scheduler node.
    pub(crate) node: NodeId,
    /// Its current devices (a rejoined member gets new ones; the old stay lost).
    devices: Vec<DeviceId>,
    /// Bumped on every rejoin.
    generation: u64,
    /// Lost to the job (until it rejoins).
    pub(crate) lost: bool,
    /// A reconnect is under way.
    rejoining: bool,
    /// Excluded for failing packets or disagreeing with the majority.
    excluded: bool,
    /// Packets it failed in this job.
    failed: u32,
    /// Packets committed.
    committed: u64,
    /// Packets committed since it last rejoined, if it did.
    committed_since_rejoin: Option<u64>,
    /// What the node said of itself, its round trip and the OpenCL devices that took the
    /// job: what its new devices need when it takes packets again after a pause.
    info: NodeInfo,
    rtt: Duration,
    opencl: Vec<u32>,
    /// Paused by its owner (or draining): its devices left the job until it serves again.
    paused: bool,
    /// Bumped on every pause, so a late "serving again" of an earlier pause is ignored.
    pause_epoch: u64,
    /// Items committed, for progress.
    items: u64,
    /// A device of the node that [`Event::TransferMeasured`] names (the scheduler keeps
    /// one link per node, also for devices that left).
    link_device: Option<DeviceId>,
}

/// A failed packet: its items, the member and the reason.
struct Failure {
    start: u64,
    end: u64,
    member: usize,
    reason: String,
}

/// The job loop's state. See the module's text.
pub(crate) struct JobLoop {
    plan: JobPlan,
    sched: Scheduler,
    members: Vec<Member>,
    device_member: HashMap<DeviceId, usize>,
    device_target: HashMap<DeviceId, Option<u32>>,
    /// Every device's name and committed packets, in the order they joined.
    device_packets: Vec<(DeviceId, String, u64)>,
    /// Devices not yet announced to the scheduler ([`JobLoop::start`]).
    unannounced: Vec<(DeviceId, DeviceSpec)>,
    next_device: u32,
    /// Results waiting for the scheduler's commit.
    pending: HashMap<(DeviceId, u64), Vec<Vec<u8>>>,
    committed_packets: u64,
    committed_ranges: Vec<(u64, u64)>,
    items_done: u64,
    lost_lines: Vec<String>,
    failures: Vec<Failure>,
    last_failure: Option<(String, String)>,
    disagreements: Vec<String>,
    paused_lines: Vec<String>,
    tuned_rates: Vec<(String, f64)>,
    actions: Vec<Action>,
    outcome: Option<Result<(), ClientError>>,
}

impl JobLoop {
    /// A loop for `plan` over the nodes that took the job, in the order they joined
    /// (member `m` is scheduler node `m + 1`). Fails if they serve no device of the
    /// plan's kind or are fewer than its copies.
    pub(crate) fn new(
        plan: JobPlan,
        spec: JobSpec,
        joined: Vec<Joined>,
    ) -> Result<JobLoop, ClientError> {
        let mut job = JobLoop {
            sched: Scheduler::new(spec),
            members: Vec::with_capacity(joined.len()),
            device_member: HashMap::new(),
            device_target: HashMap::new(),
            device_packets: Vec::new(),
            unannounced: Vec::new(),
            next_device: 0,
            pending: HashMap::new(),
            committed_packets: 0,
            committed_ranges: Vec::new(),
            items_done: 0,
            lost_lines: Vec::new(),
            failures: Vec::new(),
            last_failure: None,
            disagreements: Vec::new(),
            paused_lines: Vec::new(),
            tuned_rates: Vec::new(),
            actions: Vec::new(),
            outcome: None,
            plan,
        };
        for joined in joined {
            let m = job.members.len();
            let node = NodeId(m as u32 + 1);
            if let Some(rate) = job.tuned_rate(&joined.info) {
                job.tuned_rates.push((joined.name.clone(), rate));
            }
            job.say_opencl(&joined.name, &joined.info, &joined.opencl);
            job.members.push(Member {
                name: joined.name,
                addr: joined.addr,
                node,
                devices: Vec::new(),
                generation: 0,
                lost: false,
                rejoining: false,
                excluded: false,
                failed: 0,
                committed: 0,
                committed_since_rejoin: None,
                info: joined.info,
                rtt: joined.rtt,
                opencl: joined.opencl,
                paused: false,
                pause_epoch: 0,
                items: 0,
                link_device: None,
            });
            let new = job.add_devices(m);
            job.members[m].link_device = new.first().map(|(d, _)| *d);
            job.unannounced.extend(new);
        }
        if job.unannounced.is_empty() {
            return Err(ClientError::NoDevices {
                kernel: job.plan.kernel.clone(),
                devices: job.plan.devices,
            });
        }
        if job.plan.redundancy as usize > job.members.len() {
            return Err(ClientError::TooFewNodes {
                copies: job.plan.redundancy,
                nodes: job.members.len(),
            });
        }
        Ok(job)
    }

    /// Starts the job at `now`: every device joins the scheduler.
    pub(crate) fn start(&mut self, now: u64) {
        for (device, spec) in std::mem::take(&mut self.unannounced) {
            self.sched.handle(now, Event::DeviceJoined { device, spec });
        }
    }

    /// The members, in the order they joined.
    pub(crate) fn members(&self) -> &[Member] {
        &self.members
    }

    /// The scheduler's estimates of every device (for the links of the report).
    pub(crate) fn estimates(&self) -> Vec<DeviceEstimate> {
        self.sched.estimates()
    }

    /// The end of the job once it is decided: taken once.
    pub(crate) fn take_outcome(&mut self) -> Option<Result<(), ClientError>> {
        self.outcome.take()
    }

    /// The node's tuned rate for this job's kernel, per worker, if it advertised one.
    fn tuned_rate(&self, info: &NodeInfo) -> Option<f64> {
        info.rate_for(&self.plan.package, &self.plan.kernel, CPU_DEVICE)
            .filter(|r| r.is_finite() && *r > 0.0)
    }

    /// Makes scheduler devices for member `m`: one per worker of the node, then one per
    /// OpenCL device that took the job, each with where its packets run on the node.
    /// Returns them to be announced.
    fn add_devices(&mut self, m: usize) -> Vec<(DeviceId, DeviceSpec)> {
        let member = &self.members[m];
        let rate = self.tuned_rate(&member.info);
        let link = self
            .plan
            .known_links
            .get(&member.addr)
            .copied()
            .unwrap_or_else(|| {
                Link::new(
                    (member.rtt.as_micros() as f64 / 2.0).max(1.0),
                    UNMEASURED_BYTES_PER_US,
                )
            });
        let cores = if self.plan.devices.uses_cpu() {
            member.info.cores.max(1)
        } else {
            0
        };
        let mut made: Vec<(DeviceId, DeviceSpec, Option<u32>)> = Vec::new();
        for core in 0..cores {
            let mut spec = DeviceSpec::remote(
                format!("{}/{CPU_DEVICE}{core}", member.name),
                member.node,
                link,
            )
            .slots(self.plan.slots);
            // An advertised tuned rate replaces the calibration packet.
            if let Some(rate) = rate {
                spec = spec.rate(rate);
            }
            made.push((DeviceId(self.next_device), spec, None));
            self.next_device += 1;
        }
        // Each OpenCL device is a scheduler device of its own, with its own rate model
        // (calibrated: tuned rates are for CPU workers).
        if self.plan.devices.uses_opencl() {
            for &index in &member.opencl {
                let label = member
                    .info
                    .opencl
                    .get(index as usize)
                    .map_or_else(|| "?".to_string(), |d| d.name.clone());
                let spec = DeviceSpec::remote(
                    format!("{}/opencl{index}: {label}", member.name),
                    member.node,
                    link,
                )
                .slots(self.plan.slots);
                made.push((DeviceId(self.next_device), spec, Some(index)));
                self.next_device += 1;
            }
        }
        let member = &mut self.members[m];
        member.devices = made.iter().map(|(d, _, _)| *d).collect();
        made.into_iter()
            .map(|(device, spec, target)| {
                self.device_member.insert(device, m);
                self.device_target.insert(device, target);
                self.device_packets.push((device, spec.name.clone(), 0));
                (device, spec)
            })
            .collect()
    }

    /// Says which of a node's OpenCL devices run this job (info), or that none does
    /// (a warning: the node's log says why).
    fn say_opencl(&mut self, name: &str, info: &NodeInfo, opencl: &[u32]) {
        if info.opencl.is_empty() {
            return;
        }
        if opencl.is_empty() {
            self.actions.push(Action::Notify(format!(
                "node {name}: kernel `{}` does not run on its OpenCL devices (the node's log says why); its CPU workers take the job",
                self.plan.kernel
            )));
        } else {
            let names: Vec<String> = opencl
                .iter()
                .map(|&i| {
                    let device = info.opencl.get(i as usize);
                    format!("opencl{i} ({})", device.map_or("?", |d| d.name.as_str()))
                })
                .collect();
            // Not a warning: `-v` shows it, and the report counts each device's packets.
            self.actions.push(Action::Info(format!(
                "node {name}: kernel `{}` runs on its CPU workers and {}",
                self.plan.kernel,
                names.join(", ")
            )));
        }
    }

    /// Takes in what happened at `now`.
    pub(crate) fn handle(&mut self, now: u64, event: JobEvent) {
        if self.outcome.is_some() {
            return;
        }
        match event {
            JobEvent::Transfer {
                member,
                bytes,
                micros,
            } => {
                if let Some(device) = self.members.get(member).and_then(|m| m.link_device) {
                    self.sched.handle(
                        now,
                        Event::TransferMeasured {
                            device,
                            bytes,
                            micros,
                        },
                    );
                }
            }
            JobEvent::Packet {
                device,
                packet,
                result,
            } => self.packet_answered(now, device, packet, result),
            JobEvent::Closed {
                member,
                generation,
                reason,
            } => {
                if self
                    .members
                    .get(member)
                    .is_some_and(|m| !m.lost && m.generation == generation)
                {
                    self.lose(member, &reason, now);
                }
            }
            JobEvent::Rejoined {
                member: m,
                info,
                rtt,
                opencl,
            } => {
                let Some(member) = self.members.get_mut(m) else {
                    return;
                };
                member.generation += 1;
                member.lost = false;
                member.rejoining = false;
                member.committed_since_rejoin = Some(0);
                member.info = info;
                member.rtt = rtt;
                member.opencl = opencl;
                let generation = member.generation;
                let name = member.name.clone();
                let new = self.add_devices(m);
                let member = &mut self.members[m];
                if member.link_device.is_none() {
                    member.link_device = new.first().map(|(d, _)| *d);
                }
                for (device, spec) in new {
                    self.sched.handle(now, Event::DeviceJoined { device, spec });
                }
                self.actions.push(Action::Watch {
                    member: m,
                    generation,
                });
                self.actions
                    .push(Action::Notify(format!("node {name} rejoined the job")));
            }
            JobEvent::Resumed { member: m, epoch } => {
                let Some(member) = self.members.get_mut(m) else {
                    return;
                };
                if !member.paused || member.pause_epoch != epoch || member.lost {
                    return;
                }
                member.paused = false;
                let name = member.name.clone();
                for (device, spec) in self.add_devices(m) {
                    self.sched.handle(now, Event::DeviceJoined { device, spec });
                }
                self.actions.push(Action::Notify(format!(
                    "node {name} takes packets again and is back in the job"
                )));
            }
        }
    }

    /// A packet's answer (or the lack of one) from `device`.
    fn packet_answered(
        &mut self,
        now: u64,
        device: DeviceId,
        packet: scheduler::Packet,
        result: Result<Response, String>,
    ) {
        let Some(&m) = self.device_member.get(&device) else {
            return;
        };
        // A lost or excluded member's late results, also from before it rejoined, are
        // not used.
        let member = &self.members[m];
        if member.lost || member.excluded || member.paused || !member.devices.contains(&device) {
            return;
        }
        match result {
            Ok(Response::Done {
                packet: id,
                compute_us,
                outputs,
            }) if id == packet.id.0 => {
                match check_outputs(&self.plan.outputs, &outputs, packet.items()) {
                    Ok(()) => {
                        // Digests are compared only between redundant copies: without
                        // redundancy, hashing every result would only slow the loop.
                        let digest = (self.plan.redundancy > 1).then(|| {
                            let mut hasher = blake3::Hasher::new();
                            for o in &outputs {
                                hasher.update(&(o.len() as u64).to_le_bytes());
                                hasher.update(o);
                            }
                            *hasher.finalize().as_bytes()
                        });
                        self.pending.insert((device, packet.id.0), outputs);
                        self.sched.handle(
                            now,
                            Event::PacketFinished {
                                device,
                                packet: packet.id,
                                compute_us,
                                digest,
                            },
                        );
                    }
                    Err(reason) => {
                        self.lose(m, &format!("sent a malformed result: {reason}"), now);
                    }
                }
            }
            Ok(Response::Failed { reason, .. }) => {
                self.packet_failed(now, m, device, packet, reason)
            }
            Ok(Response::Paused { reason, .. }) => {
                // Routed around at once: its packets run elsewhere, and it is asked
                // until it serves again.
                let member = &mut self.members[m];
                member.paused = true;
                member.pause_epoch += 1;
                let epoch = member.pause_epoch;
                for device in &member.devices {
                    self.sched
                        .handle(now, Event::DeviceLost { device: *device });
                }
                let line = format!(
                    "node {} is {reason}; its packets run on the other nodes until it takes packets again",
                    member.name
                );
                self.actions.push(Action::Notify(line.clone()));
                self.paused_lines.push(line);
                self.actions.push(Action::AwaitResume { member: m, epoch });
            }
            Ok(other) => {
                let reason = format!("answered a packet with {}", other.describe());
                self.lose(m, &reason, now);
            }
            Err(reason) => self.lose(m, &reason, now),
        }
    }

    /// Packet `packet` failed on member `m`: the kernel's fault if another node failed on
    /// the same items (the job fails), else it runs again; a member that fails too
    /// often is excluded.
    fn packet_failed(
        &mut self,
        now: u64,
        m: usize,
        device: DeviceId,
        packet: scheduler::Packet,
        reason: String,
    ) {
        let confirmed = self
            .failures
            .iter()
            .find(|f| f.member != m && f.start < packet.end && packet.start < f.end)
            .map(|f| (self.members[f.member].name.clone(), f.reason.clone()));
        if let Some((other, first)) = confirmed {
            self.outcome = Some(Err(ClientError::KernelFailed {
                node: format!("{} and on node {other}", self.members[m].name),
                reason: if first == reason {
                    reason
                } else {
                    format!("{reason}; on the other node: {first}")
                },
            }));
            return;
        }
        self.failures.push(Failure {
            start: packet.start,
            end: packet.end,
            member: m,
            reason: reason.clone(),
        });
        self.last_failure = Some((self.members[m].name.clone(), reason.clone()));
        self.sched.handle(
            now,
            Event::PacketFailed {
                device,
                packet: packet.id,
                retryable: true,
            },
        );
        let member = &mut self.members[m];
        member.failed += 1;
        if member.failed >= MAX_NODE_FAILURES {
            member.excluded = true;
            for device in &member.devices {
                self.sched
                    .handle(now, Event::DeviceLost { device: *device });
            }
            let line = format!(
                "node {} failed {} packets (the last: {reason}); it is excluded from the job and its packets run on the other nodes",
                member.name, member.failed
            );
            self.actions.push(Action::Notify(line.clone()));
            self.disagreements.push(line);
        } else {
            self.actions.push(Action::Notify(format!(
                "node {}: items {}..{} failed ({reason}); they run again, on another node if there is one",
                member.name, packet.start, packet.end
            )));
        }
    }

    /// Marks member `m` lost: its devices leave the job, their packets run elsewhere.
    fn lose(&mut self, m: usize, reason: &str, now: u64) {
        let member = &mut self.members[m];
        member.lost = true;
        for device in &member.devices {
            self.sched
                .handle(now, Event::DeviceLost { device: *device });
        }
        let line = format!(
            "node {} lost during the job ({reason}); its packets in flight are re-run on the other nodes",
            member.name
        );
        self.actions.push(Action::Close { member: m });
        self.actions.push(Action::Notify(line.clone()));
        self.lost_lines.push(line);
    }

    /// Runs the scheduler at `now` and returns what to do: packets to send, results to
    /// commit, members to reconnect, lines to show. Decides the job's end once it is
    /// done or can go no further ([`JobLoop::take_outcome`]).
    pub(crate) fn advance(&mut self, now: u64) -> Vec<Action> {
        if self.outcome.is_none() {
            self.decide(now);
        }
        std::mem::take(&mut self.actions)
    }

    fn decide(&mut self, now: u64) {
        while let Some(decision) = self.sched.poll(now) {
            match decision {
                Decision::Run { device, packet } => {
                    let Some(&member) = self.device_member.get(&device) else {
                        continue;
                    };
                    let target = self.device_target.get(&device).copied().flatten();
                    self.actions.push(Action::Run {
                        member,
                        device,
                        packet,
                        target,
                    });
                }
                Decision::Commit { device, packet } => self.commit(device, packet),
                Decision::Discard { device, packet } => {
                    self.pending.remove(&(device, packet.id.0));
                }
                Decision::Cancel { .. } => {}
            }
        }
        self.exclude_disagreeing(now);
        if self.sched.is_done() {
            self.outcome = Some(Ok(()));
            return;
        }
        if self.sched.stalled() {
            self.outcome = Some(Err(self.stalled()));
            return;
        }
        // A lost node may come back (restarted on the same address): keep trying.
        for (m, member) in self.members.iter_mut().enumerate() {
            if member.lost && !member.rejoining {
                member.rejoining = true;
                self.actions.push(Action::Rejoin {
                    member: m,
                    addr: member.addr,
                });
            }
        }
    }

    /// The scheduler committed `packet` of `device`: its result goes to the buffers.
    fn commit(&mut self, device: DeviceId, packet: scheduler::Packet) {
        let Some(outputs) = self.pending.remove(&(device, packet.id.0)) else {
            return;
        };
        self.actions.push(Action::Commit { packet, outputs });
        self.committed_packets += 1;
        self.committed_ranges.push((packet.start, packet.end));
        if let Some(entry) = self
            .device_packets
            .iter_mut()
            .find(|(d, _, _)| *d == device)
        {
            entry.2 += 1;
        }
        if let Some(&m) = self.device_member.get(&device) {
            let member = &mut self.members[m];
            member.committed += 1;
            member.items += packet.items();
            if member.devices.contains(&device) {
                if let Some(n) = &mut member.committed_since_rejoin {
                    *n += 1;
                }
            }
        }
        self.items_done += packet.items();
        if self.plan.progress {
            self.actions.push(Action::Progress(JobProgress {
                items_done: self.items_done,
                items: self.plan.items,
                per_node: self
                    .members
                    .iter()
                    .map(|m| (m.name.clone(), m.items))
                    .collect(),
            }));
        }
    }

    /// Why a job that can go no further stopped.
    fn stalled(&mut self) -> ClientError {
        let left = self
            .members
            .iter()
            .filter(|m| !m.lost && !m.excluded)
            .count();
        if self.plan.redundancy > 1 && left > 0 {
            return ClientError::TooFewNodes {
                copies: self.plan.redundancy,
                nodes: left,
            };
        }
        // No node was lost: every one was excluded for failing packets, so the failures
        // are the answer (there is no node left to run them on).
        if !self.members.iter().any(|m| m.lost) {
            if let Some((node, reason)) = self.last_failure.take() {
                return ClientError::KernelFailed { node, reason };
            }
        }
        let mut why = self.lost_lines.clone();
        why.extend(self.paused_lines.iter().cloned());
        why.extend(self.disagreements.iter().cloned());
        ClientError::Unfinished(Box::new(Unfinished {
            why,
            remaining: remaining_ranges(self.plan.items, &mut self.committed_ranges),
            committed_packets: self.committed_packets,
        }))
    }

    /// Excludes the nodes of the scheduler's new disagreements: the scheduler excluded
    /// the core that disagreed, the node's other cores leave the job too (the same
    /// machine computed them), and a line naming the node and the items goes to the
    /// report.
    fn exclude_disagreeing(&mut self, now: u64) {
        let new: Vec<scheduler::Disagreement> = self
            .sched
            .disagreements()
            .iter()
            .skip(self.disagreements.len())
            .copied()
            .collect();
        for d in new {
            // Members are numbered from node 1 in the order they joined.
            let member = (d.node.0 as usize)
                .checked_sub(1)
                .and_then(|m| self.members.get_mut(m));
            let line = match member {
                Some(member) => {
                    if !member.excluded {
                        member.excluded = true;
                        for device in &member.devices {
                            self.sched.handle(now, Event::DeviceLost { device: *device });
                        }
                    }
                    format!(
                        "node {} returned a result for items {}..{} that disagrees with the majority; it is excluded from the job",
                        member.name, d.packet.start, d.packet.end
                    )
                }
                None => format!(
                    "{} returned a result for items {}..{} that disagrees with the majority; it is excluded from the job",
                    d.device, d.packet.start, d.packet.end
                ),
            };
            self.actions.push(Action::Notify(line.clone()));
            self.disagreements.push(line);
        }
    }

    /// What the job did, for its report (the shell adds times and links).
    pub(crate) fn summary(self) -> JobSummary {
        JobSummary {
            packets: self.committed_packets,
            packets_per_node: self
                .members
                .iter()
                .map(|m| (m.name.clone(), m.committed))
                .collect(),
            packets_per_device: {
                // A rejoined node's new devices carry the names of its old ones.
                let mut per_name: Vec<(String, u64)> = Vec::new();
                for (_, name, packets) in self.device_packets {
                    match per_name.iter_mut().find(|(n, _)| *n == name) {
                        Some(entry) => entry.1 += packets,
                        None => per_name.push((name, packets)),
                    }
                }
                per_name
            },
            lost: self.lost_lines,
            disagreements: self.disagreements,
            paused: self.paused_lines,
            rejoined: self
                .members
                .iter()
                .filter_map(|m| m.committed_since_rejoin.map(|n| (m.name.clone(), n)))
                .collect(),
            tuned_rates: self.tuned_rates,
        }
    }
}

/// What a finished job did, as the loop counted it.
pub(crate) struct JobSummary {
    pub(crate) packets: u64,
    pub(crate) packets_per_node: Vec<(String, u64)>,
    pub(crate) packets_per_device: Vec<(String, u64)>,
    pub(crate) lost: Vec<String>,
    pub(crate) disagreements: Vec<String>,
    pub(crate) paused: Vec<String>,
    pub(crate) rejoined: Vec<(String, u64)>,
    pub(crate) tuned_rates: Vec<(String, f64)>,
}

/// Item ranges of `0..items` not covered by `committed` (which is sorted in place).
pub(crate) fn remaining_ranges(
    items: u64,
    committed: &mut [(u64, u64)],
) -> Vec<std::ops::Range<u64>> {
    committed.sort_unstable();
    let mut remaining = Vec::new();
    let mut next = 0;
    for &(start, end) in committed.iter() {
        if start > next {
            remaining.push(next..start);
        }
        next = next.max(end);
    }
    if next < items {
        remaining.push(next..items);
    }
    remaining
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes per item of the test job's one output.
    const OUT: u64 = 4;

    fn info(name: &str, cores: u32) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            arch: "x86_64-unknown-linux-gnu".into(),
            cpu: "znver5".into(),
            features: String::new(),
            cores,
            rates: Vec::new(),
            opencl: Vec::new(),
            sandboxed: true,
        }
    }

    fn joined(nodes: usize) -> Vec<Joined> {
        (0..nodes)
            .map(|i| {
                let addr: SocketAddr = format!("10.0.0.{}:7000", i + 1).parse().expect("addr");
                Joined {
                    name: format!("n{i} ({addr})"),
                    addr,
                    info: info(&format!("n{i}"), 1),
                    rtt: Duration::from_micros(200),
                    opencl: Vec::new(),
                }
            })
            .collect()
    }

    fn job(nodes: usize, items: u64, redundancy: u32) -> Result<JobLoop, ClientError> {
        let plan = JobPlan {
            kernel: "k".into(),
            package: [7; 32],
            items,
            redundancy,
            devices: DeviceChoice::Cpu,
            slots: 1,
            known_links: HashMap::new(),
            outputs: vec![OutputShape::PerItem(OUT)],
            progress: true,
        };
        let spec = JobSpec::new(items)
            .bytes_in_per_item(4)
            .bytes_out_per_item(OUT)
            .redundancy(redundancy)
            .target_packets_per_device(8.0);
        JobLoop::new(plan, spec, joined(nodes))
    }

    /// How a test node answers a packet.
    enum Answer {
        /// Its result: every byte `value`.
        Done(u8),
        /// A result of the wrong size.
        Malformed,
        /// The kernel failed.
        Failed(&'static str),
        /// Its owner paused it.
        Paused,
        /// Its connection closes instead.
        Lost,
    }

    /// What a driven job did.
    #[derive(Default)]
    struct Record {
        /// Committed packets: items and the byte their result holds.
        commits: Vec<(u64, u64, u8)>,
        /// Packets sent, by member.
        runs: Vec<(usize, u64, u64)>,
        notes: Vec<String>,
        closed: Vec<usize>,
        rejoins: Vec<usize>,
        resumes: Vec<(usize, u64)>,
        watches: Vec<(usize, u64)>,
        last_progress: Option<JobProgress>,
    }

    impl Record {
        /// Whether the commits cover `0..items` exactly once.
        fn covers(&self, items: u64) -> bool {
            let mut ranges: Vec<(u64, u64)> =
                self.commits.iter().map(|&(s, e, _)| (s, e)).collect();
            ranges.sort_unstable();
            let mut next = 0;
            for (start, end) in ranges {
                if start != next {
                    return false;
                }
                next = end;
            }
            next == items
        }
    }

    /// Drives `job` on a simulated clock (1 ms a round), answering every packet sent to
    /// member `m` with `answer(m, packet, round)`; `on_action` may feed more events
    /// (a rejoin, a resume) as actions come. Ends with the job's outcome.
    fn drive(
        job: &mut JobLoop,
        mut answer: impl FnMut(usize, &scheduler::Packet, u64) -> Answer,
        mut on_action: impl FnMut(&Action, &mut Vec<JobEvent>),
    ) -> (Result<(), ClientError>, Record) {
        let mut record = Record::default();
        let mut generations = vec![0u64; job.members().len()];
        let mut now = 0u64;
        job.start(now);
        let mut queue: std::collections::VecDeque<(usize, DeviceId, scheduler::Packet)> =
            Default::default();
        for round in 0..100_000u64 {
            let mut events = Vec::new();
            for action in job.advance(now) {
                on_action(&action, &mut events);
                match action {
                    Action::Run {
                        member,
                        device,
                        packet,
                        ..
                    } => {
                        record.runs.push((member, packet.start, packet.end));
                        queue.push_back((member, device, packet));
                    }
                    Action::Commit { packet, outputs } => {
                        assert_eq!(outputs.len(), 1);
                        assert_eq!(outputs[0].len() as u64, packet.items() * OUT);
                        record
                            .commits
                            .push((packet.start, packet.end, outputs[0][0]));
                    }
                    Action::Progress(p) => record.last_progress = Some(p),
                    Action::Notify(line) | Action::Info(line) => record.notes.push(line),
                    Action::Close { member } => record.closed.push(member),
                    Action::Rejoin { member, .. } => record.rejoins.push(member),
                    Action::AwaitResume { member, epoch } => record.resumes.push((member, epoch)),
                    Action::Watch { member, generation } => {
                        generations[member] = generation;
                        record.watches.push((member, generation));
                    }
                }
            }
            if let Some(outcome) = job.take_outcome() {
                return (outcome, record);
            }
            for event in events {
                job.handle(now, event);
            }
            now += 1000;
            if let Some((member, device, packet)) = queue.pop_front() {
                let result = match answer(member, &packet, round) {
                    Answer::Done(value) => Ok(Response::Done {
                        packet: packet.id.0,
                        compute_us: 900,
                        outputs: vec![vec![value; (packet.items() * OUT) as usize]],
                    }),
                    Answer::Malformed => Ok(Response::Done {
                        packet: packet.id.0,
                        compute_us: 900,
                        outputs: vec![vec![0; 3]],
                    }),
                    Answer::Failed(reason) => Ok(Response::Failed {
                        packet: packet.id.0,
                        reason: reason.into(),
                    }),
                    Answer::Paused => Ok(Response::Paused {
                        packet: packet.id.0,
                        reason: "paused by its owner".into(),
                    }),
                    Answer::Lost => {
                        job.handle(
                            now,
                            JobEvent::Closed {
                                member,
                                generation: generations[member],
                                reason: "connection lost: reset".into(),
                            },
                        );
                        Err("connection lost: reset".into())
                    }
                };
                job.handle(
                    now,
                    JobEvent::Packet {
                        device,
                        packet,
                        result,
                    },
                );
            }
        }
        panic!("the job did not end in 100000 rounds");
    }

    fn no_events(_: &Action, _: &mut Vec<JobEvent>) {}

    #[test]
    fn a_job_on_two_nodes_commits_every_item_once_and_reports_progress() {
        let mut job = job(2, 1000, 1).expect("job");
        let (outcome, record) = drive(&mut job, |m, _, _| Answer::Done(m as u8), no_events);
        assert!(outcome.is_ok());
        assert!(record.covers(1000), "{:?}", record.commits);
        let progress = record.last_progress.expect("progress");
        assert_eq!(progress.items_done, 1000);
        assert_eq!(progress.per_node.iter().map(|(_, n)| n).sum::<u64>(), 1000);
        // Both nodes took part.
        assert!(record.runs.iter().any(|r| r.0 == 0) && record.runs.iter().any(|r| r.0 == 1));
        let summary = job.summary();
        assert_eq!(summary.packets, record.commits.len() as u64);
        assert!(summary.lost.is_empty());
    }

    #[test]
    fn a_node_lost_mid_job_is_closed_its_packets_rerun_elsewhere_and_it_is_asked_back() {
        let mut job = job(2, 1000, 1).expect("job");
        let mut answered = 0;
        let (outcome, record) = drive(
            &mut job,
            |m, _, _| {
                if m == 1 {
                    answered += 1;
                    if answered >= 2 {
                        return Answer::Lost;
                    }
                }
                Answer::Done(m as u8)
            },
            no_events,
        );
        assert!(outcome.is_ok());
        assert!(record.covers(1000));
        assert_eq!(record.closed, vec![1]);
        assert_eq!(record.rejoins, vec![1], "asked back once");
        assert!(
            record.notes.iter().any(|l| l
                .contains("node n1 (10.0.0.2:7000) lost during the job (connection lost: reset)")),
            "{:?}",
            record.notes
        );
        // Only one packet of node 1 was committed; node 0 ran the rest.
        assert_eq!(record.commits.iter().filter(|c| c.2 == 1).count(), 1);
        assert_eq!(job.summary().lost.len(), 1);
    }

    #[test]
    fn a_rejoined_node_is_watched_again_and_gets_packets() {
        let mut job = job(2, 2000, 1).expect("job");
        let mut lost_once = false;
        let (outcome, record) = drive(
            &mut job,
            |m, _, _| {
                if m == 1 && !lost_once {
                    lost_once = true;
                    return Answer::Lost;
                }
                Answer::Done(m as u8)
            },
            |action, events| {
                if let Action::Rejoin { member, .. } = action {
                    events.push(JobEvent::Rejoined {
                        member: *member,
                        info: info("n1", 1),
                        rtt: Duration::from_micros(200),
                        opencl: Vec::new(),
                    });
                }
            },
        );
        assert!(outcome.is_ok());
        assert!(record.covers(2000));
        assert_eq!(
            record.watches,
            vec![(1, 1)],
            "the new connection is watched"
        );
        assert!(
            record.commits.iter().any(|c| c.2 == 1),
            "node 1 committed after rejoining"
        );
        let summary = job.summary();
        assert!(summary
            .rejoined
            .iter()
            .any(|(n, packets)| n.starts_with("n1") && *packets > 0));
    }

    #[test]
    fn the_same_items_failing_on_two_nodes_fail_the_job_as_the_kernels_fault() {
        let mut job = job(2, 100, 1).expect("job");
        let (outcome, _) = drive(
            &mut job,
            |m, p, _| {
                if p.start <= 10 && 10 < p.end {
                    Answer::Failed(if m == 0 { "divide by zero" } else { "SIGFPE" })
                } else {
                    Answer::Done(0)
                }
            },
            no_events,
        );
        match outcome {
            Err(ClientError::KernelFailed { node, reason }) => {
                assert!(node.contains("n0") && node.contains("n1"), "{node}");
                assert!(
                    reason.contains("divide by zero") && reason.contains("SIGFPE"),
                    "{reason}"
                );
            }
            other => panic!("expected the kernel's failure, got {other:?}"),
        }
    }

    #[test]
    fn a_node_that_fails_twice_is_excluded_and_the_job_finishes_on_the_others() {
        let mut job = job(2, 1000, 1).expect("job");
        let (outcome, record) = drive(
            &mut job,
            |m, _, _| {
                if m == 1 {
                    Answer::Failed("the node's disk is full")
                } else {
                    Answer::Done(0)
                }
            },
            no_events,
        );
        assert!(outcome.is_ok(), "{outcome:?}");
        assert!(record.covers(1000));
        assert!(
            record
                .notes
                .iter()
                .any(|l| l.contains("failed 2 packets") && l.contains("excluded")),
            "{:?}",
            record.notes
        );
        assert_eq!(record.runs.iter().filter(|r| r.0 == 1).count(), 2);
    }

    #[test]
    fn a_malformed_result_loses_its_node() {
        let mut job = job(2, 1000, 1).expect("job");
        let (outcome, record) = drive(
            &mut job,
            |m, _, _| {
                if m == 1 {
                    Answer::Malformed
                } else {
                    Answer::Done(0)
                }
            },
            no_events,
        );
        assert!(outcome.is_ok());
        assert!(record.covers(1000));
        assert_eq!(record.closed, vec![1]);
        assert!(record
            .notes
            .iter()
            .any(|l| l.contains("sent a malformed result")));
    }

    #[test]
    fn a_paused_node_is_routed_around_and_takes_packets_when_it_serves_again() {
        let mut job = job(2, 2000, 1).expect("job");
        let mut paused_once = false;
        let (outcome, record) = drive(
            &mut job,
            |m, _, _| {
                if m == 1 && !paused_once {
                    paused_once = true;
                    return Answer::Paused;
                }
                Answer::Done(m as u8)
            },
            |action, events| {
                if let Action::AwaitResume { member, epoch } = action {
                    events.push(JobEvent::Resumed {
                        member: *member,
                        epoch: *epoch,
                    });
                }
            },
        );
        assert!(outcome.is_ok());
        assert!(record.covers(2000));
        assert_eq!(record.resumes, vec![(1, 1)]);
        assert!(record.commits.iter().any(|c| c.2 == 1), "node 1 is back");
        assert!(record
            .notes
            .iter()
            .any(|l| l.contains("takes packets again")));
        assert_eq!(job.summary().paused.len(), 1);
    }

    #[test]
    fn a_late_resume_of_an_earlier_pause_is_ignored() {
        let mut job = job(2, 100, 1).expect("job");
        job.start(0);
        job.handle(
            0,
            JobEvent::Resumed {
                member: 1,
                epoch: 7,
            },
        );
        assert!(job
            .advance(0)
            .iter()
            .all(|a| !matches!(a, Action::Notify(_))));
    }

    #[test]
    fn every_node_lost_leaves_the_job_unfinished_with_what_remains() {
        let mut job = job(2, 1000, 1).expect("job");
        let mut done = 0;
        let (outcome, record) = drive(
            &mut job,
            |m, _, _| {
                done += 1;
                if done > 3 {
                    Answer::Lost
                } else {
                    Answer::Done(m as u8)
                }
            },
            no_events,
        );
        match outcome {
            Err(ClientError::Unfinished(unfinished)) => {
                assert_eq!(unfinished.committed_packets, record.commits.len() as u64);
                let remaining: u64 = unfinished.remaining.iter().map(|r| r.end - r.start).sum();
                let committed: u64 = record.commits.iter().map(|c| c.1 - c.0).sum();
                assert_eq!(remaining + committed, 1000);
                assert_eq!(unfinished.why.len(), 2, "{:?}", unfinished.why);
            }
            other => panic!("expected an unfinished job, got {other:?}"),
        }
    }

    #[test]
    fn more_copies_than_nodes_and_no_devices_are_refused_up_front() {
        assert!(matches!(
            job(2, 100, 3),
            Err(ClientError::TooFewNodes {
                copies: 3,
                nodes: 2
            })
        ));
        let plan = JobPlan {
            kernel: "k".into(),
            package: [7; 32],
            items: 100,
            redundancy: 1,
            devices: DeviceChoice::OpenCl,
            slots: 1,
            known_links: HashMap::new(),
            outputs: vec![OutputShape::PerItem(OUT)],
            progress: false,
        };
        assert!(matches!(
            JobLoop::new(plan, JobSpec::new(100), joined(2)),
            Err(ClientError::NoDevices { .. })
        ));
    }

    #[test]
    fn redundant_copies_that_disagree_exclude_the_odd_node() {
        let mut job = job(3, 600, 2).expect("job");
        let (outcome, record) = drive(
            &mut job,
            |m, _, _| Answer::Done(if m == 2 { 9 } else { 1 }),
            no_events,
        );
        assert!(outcome.is_ok(), "{outcome:?}");
        assert!(record.covers(600));
        assert!(
            record.commits.iter().all(|c| c.2 == 1),
            "only the majority's results"
        );
        assert!(
            record
                .notes
                .iter()
                .any(|l| l.contains("n2") && l.contains("disagrees with the majority")),
            "{:?}",
            record.notes
        );
    }

    #[test]
    fn results_are_checked_against_the_plans_shape() {
        let shape = [OutputShape::PerItem(4), OutputShape::Fixed(8)];
        assert!(check_outputs(&shape, &[vec![0; 40], vec![0; 8]], 10).is_ok());
        let wrong = check_outputs(&shape, &[vec![0; 36], vec![0; 8]], 10).expect_err("short");
        assert!(
            wrong.contains("[36, 8]") && wrong.contains("[40, 8]"),
            "{wrong}"
        );
        assert!(check_outputs(&shape, &[vec![0; 40]], 10).is_err());
    }
}
