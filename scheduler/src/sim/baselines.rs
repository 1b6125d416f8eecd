//! The two baselines the scheduler is compared with: a static equal split, and plain
//! self-scheduling (work stealing from a shared counter) with fixed chunks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::Policy;
use crate::types::{Decision, DeviceId, Event, NodeId, Packet, PacketId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    EqualSplit,
    FixedChunks { chunks_per_device: u64 },
}

#[derive(Debug, Clone)]
struct Dev {
    node: NodeId,
    slots: u32,
    running: Vec<PacketId>,
}

/// A range of items and its copies.
#[derive(Debug, Clone)]
struct Task {
    packet: Packet,
    /// Copies that must agree before the task commits (a majority of the redundancy).
    needed: usize,
    /// Copies wanted in all: the redundancy, plus one per round that found no majority.
    wanted: usize,
    running: Vec<DeviceId>,
    /// Finished copies: device and digest.
    finished: Vec<(DeviceId, Option<[u8; 32]>)>,
    /// The majority's digest, once the task committed.
    committed: Option<Option<[u8; 32]>>,
}

impl Task {
    fn on_node(&self, node: NodeId, devices: &BTreeMap<DeviceId, Dev>) -> bool {
        let node_of = |d: &DeviceId| devices.get(d).map(|dev| dev.node);
        self.running
            .iter()
            .chain(self.finished.iter().map(|(d, _)| d))
            .any(|d| node_of(d) == Some(node))
    }
}

/// A baseline policy: [`Baseline::equal_split`] or [`Baseline::fixed_chunks`].
///
/// Both run a lost device's packets again on the next free device. Under redundancy
/// ([`Baseline::redundancy`]) every range runs that many times on distinct nodes and
/// commits once a majority of its copies agree (with no majority, one more copy runs);
/// a device whose result disagrees with a majority gets no more work. These are the
/// scheduler's rules, so that the baselines do the same work.
#[derive(Debug, Clone)]
pub struct Baseline {
    mode: Mode,
    items: u64,
    redundancy: u32,
    started: bool,
    cursor: u64,
    chunk: u64,
    tasks: BTreeMap<PacketId, Task>,
    /// Tasks that want another copy, in order.
    pending: BTreeSet<PacketId>,
    devices: BTreeMap<DeviceId, Dev>,
    free: BTreeSet<DeviceId>,
    out: VecDeque<Decision>,
    next: u64,
    committed: u64,
}

impl Baseline {
    fn new(mode: Mode, items: u64) -> Self {
        Baseline {
            mode,
            items,
            redundancy: 1,
            started: false,
            cursor: 0,
            chunk: 1,
            tasks: BTreeMap::new(),
            pending: BTreeSet::new(),
            devices: BTreeMap::new(),
            free: BTreeSet::new(),
            out: VecDeque::new(),
            next: 0,
            committed: 0,
        }
    }

    /// Static equal split: the items are divided into equal contiguous ranges, one per
    /// device present at the first decision (under redundancy, range `i` also goes to the
    /// next devices in order, on other nodes). Devices joining later, and devices done
    /// with their range, only pick up the ranges of lost devices.
    pub fn equal_split(items: u64) -> Self {
        Baseline::new(Mode::EqualSplit, items)
    }

    /// Self-scheduling with fixed chunks of `items / (devices × chunks_per_device)` items
    /// (devices present at the first decision): every free slot takes the next chunk.
    pub fn fixed_chunks(items: u64, chunks_per_device: u64) -> Self {
        Baseline::new(
            Mode::FixedChunks {
                chunks_per_device: chunks_per_device.max(1),
            },
            items,
        )
    }

    /// Runs every range `copies` times on distinct nodes (at least 1). Default: 1.
    pub fn redundancy(mut self, copies: u32) -> Self {
        self.redundancy = copies.max(1);
        self
    }

    fn new_task(&mut self, start: u64, end: u64) -> PacketId {
        let id = PacketId(self.next);
        self.next += 1;
        let r = self.redundancy as usize;
        self.tasks.insert(
            id,
            Task {
                packet: Packet { id, start, end },
                needed: r / 2 + 1,
                wanted: r,
                running: Vec::new(),
                finished: Vec::new(),
                committed: None,
            },
        );
        self.pending.insert(id);
        id
    }

    /// Starts a copy of task `id` on `device`.
    fn run(&mut self, device: DeviceId, id: PacketId) -> Option<Decision> {
        let task = self.tasks.get_mut(&id)?;
        task.running.push(device);
        if task.running.len() + task.finished.len() >= task.wanted {
            self.pending.remove(&id);
        }
        let packet = task.packet;
        if let Some(dev) = self.devices.get_mut(&device) {
            dev.running.push(id);
            if dev.running.len() as u32 >= dev.slots {
                self.free.remove(&device);
            }
        }
        Some(Decision::Run { device, packet })
    }

    fn start(&mut self) {
        self.started = true;
        let n = self.devices.len() as u64;
        match self.mode {
            Mode::EqualSplit => {
                let ids: Vec<DeviceId> = self.devices.keys().copied().collect();
                let mut tasks = Vec::new();
                for i in 0..n {
                    let start = self.items * i / n;
                    let end = self.items * (i + 1) / n;
                    if start < end {
                        tasks.push((i as usize, self.new_task(start, end)));
                    }
                }
                self.cursor = self.items;
                // Copy `j` of range `i` on the next device (in order) of another node.
                for (i, id) in tasks {
                    for k in 0..ids.len() {
                        let device = ids[(i + k) % ids.len()];
                        if !self.pending.contains(&id) {
                            break;
                        }
                        if self.can_take(device, id) {
                            if let Some(d) = self.run(device, id) {
                                self.out.push_back(d);
                            }
                        }
                    }
                }
            }
            Mode::FixedChunks { chunks_per_device } => {
                self.chunk = (self.items / (n * chunks_per_device)).max(1);
            }
        }
    }

    /// Whether `device` may run a copy of `id`: a free slot and no copy on its node.
    fn can_take(&self, device: DeviceId, id: PacketId) -> bool {
        let Some(dev) = self.devices.get(&device) else {
            return false;
        };
        (dev.running.len() as u32) < dev.slots
            && self
                .tasks
                .get(&id)
                .is_some_and(|t| !t.on_node(dev.node, &self.devices))
    }

    /// The next task `device` may run a copy of: a pending one, else a new chunk.
    fn next_task(&mut self, device: DeviceId) -> Option<PacketId> {
        if let Some(&id) = self.pending.iter().find(|&&id| self.can_take(device, id)) {
            return Some(id);
        }
        if self.cursor < self.items {
            let start = self.cursor;
            self.cursor = (start + self.chunk).min(self.items);
            return Some(self.new_task(start, self.cursor));
        }
        None
    }

    /// Ends `device`'s copy of `id`; returns `false` if it was not running it.
    fn end_copy(&mut self, device: DeviceId, id: PacketId) -> bool {
        let Some(task) = self.tasks.get_mut(&id) else {
            return false;
        };
        let Some(i) = task.running.iter().position(|&d| d == device) else {
            return false;
        };
        task.running.swap_remove(i);
        if let Some(dev) = self.devices.get_mut(&device) {
            dev.running.retain(|&q| q != id);
            self.free.insert(device);
        }
        true
    }

    /// A copy of `id` ended without a result: another copy is wanted.
    fn lost_copy(&mut self, id: PacketId) {
        if let Some(task) = self.tasks.get(&id) {
            if task.committed.is_none() && task.running.len() + task.finished.len() < task.wanted {
                self.pending.insert(id);
            }
        }
    }

    fn finished(&mut self, device: DeviceId, id: PacketId, digest: Option<[u8; 32]>) {
        if !self.end_copy(device, id) {
            return;
        }
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let packet = task.packet;
        let mut liars = Vec::new();
        match task.committed {
            Some(majority) => {
                self.out.push_back(Decision::Discard { device, packet });
                if digest != majority {
                    liars.push(device);
                }
            }
            None => {
                task.finished.push((device, digest));
                let agreeing = task.finished.iter().filter(|(_, g)| *g == digest).count();
                if agreeing >= task.needed {
                    task.committed = Some(digest);
                    self.pending.remove(&id);
                    self.committed += packet.items();
                    self.out.push_back(Decision::Commit { device, packet });
                    for &(other, g) in &task.finished {
                        if other != device {
                            self.out.push_back(Decision::Discard {
                                device: other,
                                packet,
                            });
                        }
                        if g != digest {
                            liars.push(other);
                        }
                    }
                } else if task.running.is_empty() && task.finished.len() >= task.wanted {
                    task.wanted += 1;
                    self.pending.insert(id);
                }
            }
        }
        // Keep only what is still undecided or running.
        if self
            .tasks
            .get(&id)
            .is_some_and(|t| t.committed.is_some() && t.running.is_empty())
        {
            self.tasks.remove(&id);
        }
        for liar in liars {
            self.remove_device(liar);
        }
    }

    /// Takes a device out: its running copies are wanted again elsewhere.
    fn remove_device(&mut self, device: DeviceId) {
        let running = self
            .devices
            .get(&device)
            .map(|d| d.running.clone())
            .unwrap_or_default();
        for id in running {
            if self.end_copy(device, id) {
                self.lost_copy(id);
            }
        }
        self.devices.remove(&device);
        self.free.remove(&device);
    }
}

impl Policy for Baseline {
    fn handle(&mut self, _now_us: u64, event: Event) {
        match event {
            Event::DeviceJoined { device, spec } => {
                self.devices.insert(
                    device,
                    Dev {
                        node: spec.node,
                        slots: spec.slots.max(1),
                        running: Vec::new(),
                    },
                );
                self.free.insert(device);
            }
            Event::PacketFinished {
                device,
                packet,
                digest,
                ..
            } => self.finished(device, packet, digest),
            Event::PacketFailed { device, packet, .. } => {
                if self.end_copy(device, packet) {
                    self.lost_copy(packet);
                }
            }
            Event::DeviceLost { device } => self.remove_device(device),
            Event::TransferMeasured { .. } | Event::BusTransferMeasured { .. } => {}
        }
    }

    fn poll(&mut self, _now_us: u64) -> Option<Decision> {
        if let Some(d) = self.out.pop_front() {
            return Some(d);
        }
        if !self.started && !self.devices.is_empty() {
            self.start();
            if let Some(d) = self.out.pop_front() {
                return Some(d);
            }
        }
        if self.pending.is_empty() && self.cursor >= self.items {
            return None;
        }
        if self.redundancy == 1 {
            // Any free device may take any range.
            let &device = self.free.first()?;
            let id = self.next_task(device)?;
            return self.run(device, id);
        }
        // A copy needs a device of a node that has none: look further.
        let free: Vec<DeviceId> = self.free.iter().copied().collect();
        for device in free {
            if let Some(id) = self.next_task(device) {
                return self.run(device, id);
            }
        }
        None
    }

    fn is_done(&self) -> bool {
        self.committed == self.items && self.out.is_empty()
    }

    fn stalled(&self) -> bool {
        !self.is_done() && self.devices.values().all(|d| d.running.is_empty())
    }
}
