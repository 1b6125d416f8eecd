//! The two baselines the scheduler is compared with: a static equal split, and plain
//! self-scheduling (work stealing from a shared counter) with fixed chunks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::Policy;
use crate::types::{Decision, DeviceId, Event, Packet, PacketId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    EqualSplit,
    FixedChunks { chunks_per_device: u64 },
}

#[derive(Debug, Clone)]
struct Dev {
    slots: u32,
    running: Vec<PacketId>,
}

/// A baseline policy: [`Baseline::equal_split`] or [`Baseline::fixed_chunks`].
///
/// Both commit the first (and only) result of each packet, run a lost device's packets
/// again on the next free device, and ignore digests.
#[derive(Debug, Clone)]
pub struct Baseline {
    mode: Mode,
    items: u64,
    started: bool,
    cursor: u64,
    chunk: u64,
    retry: VecDeque<(u64, u64)>,
    devices: BTreeMap<DeviceId, Dev>,
    free: BTreeSet<DeviceId>,
    running: BTreeMap<PacketId, (DeviceId, Packet)>,
    out: VecDeque<Decision>,
    next: u64,
    committed: u64,
}

impl Baseline {
    fn new(mode: Mode, items: u64) -> Self {
        Baseline {
            mode,
            items,
            started: false,
            cursor: 0,
            chunk: 1,
            retry: VecDeque::new(),
            devices: BTreeMap::new(),
            free: BTreeSet::new(),
            running: BTreeMap::new(),
            out: VecDeque::new(),
            next: 0,
            committed: 0,
        }
    }

    /// Static equal split: the items are divided into equal contiguous ranges, one per
    /// device present at the first decision. Devices joining later only pick up the
    /// ranges of lost devices.
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

    fn run(&mut self, device: DeviceId, start: u64, end: u64) -> Decision {
        let packet = Packet {
            id: PacketId(self.next),
            start,
            end,
        };
        self.next += 1;
        self.running.insert(packet.id, (device, packet));
        if let Some(dev) = self.devices.get_mut(&device) {
            dev.running.push(packet.id);
            if dev.running.len() as u32 >= dev.slots {
                self.free.remove(&device);
            }
        }
        Decision::Run { device, packet }
    }

    fn start(&mut self) {
        self.started = true;
        let n = self.devices.len() as u64;
        match self.mode {
            Mode::EqualSplit => {
                let ids: Vec<DeviceId> = self.devices.keys().copied().collect();
                for (i, device) in ids.into_iter().enumerate() {
                    let start = self.items * i as u64 / n;
                    let end = self.items * (i as u64 + 1) / n;
                    if start < end {
                        let d = self.run(device, start, end);
                        self.out.push_back(d);
                    }
                }
                self.cursor = self.items;
            }
            Mode::FixedChunks { chunks_per_device } => {
                self.chunk = (self.items / (n * chunks_per_device)).max(1);
            }
        }
    }

    fn next_range(&mut self) -> Option<(u64, u64)> {
        if let Some(r) = self.retry.pop_front() {
            return Some(r);
        }
        if self.cursor < self.items {
            let start = self.cursor;
            self.cursor = (start + self.chunk).min(self.items);
            return Some((start, self.cursor));
        }
        None
    }

    fn finish(&mut self, device: DeviceId, packet: PacketId) -> Option<Packet> {
        let (owner, p) = *self.running.get(&packet)?;
        if owner != device {
            return None;
        }
        self.running.remove(&packet);
        if let Some(dev) = self.devices.get_mut(&device) {
            dev.running.retain(|&q| q != packet);
            self.free.insert(device);
        }
        Some(p)
    }
}

impl Policy for Baseline {
    fn handle(&mut self, _now_us: u64, event: Event) {
        match event {
            Event::DeviceJoined { device, spec } => {
                self.devices.insert(
                    device,
                    Dev {
                        slots: spec.slots.max(1),
                        running: Vec::new(),
                    },
                );
                self.free.insert(device);
            }
            Event::PacketFinished { device, packet, .. } => {
                if let Some(p) = self.finish(device, packet) {
                    self.committed += p.items();
                    self.out.push_back(Decision::Commit { device, packet: p });
                }
            }
            Event::PacketFailed { device, packet, .. } => {
                if let Some(p) = self.finish(device, packet) {
                    self.retry.push_back((p.start, p.end));
                }
            }
            Event::DeviceLost { device } => {
                if let Some(dev) = self.devices.remove(&device) {
                    for pid in dev.running {
                        if let Some((_, p)) = self.running.remove(&pid) {
                            self.retry.push_back((p.start, p.end));
                        }
                    }
                }
                self.free.remove(&device);
            }
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
        let &device = self.free.first()?;
        self.next_range()
            .map(|(start, end)| self.run(device, start, end))
    }

    fn is_done(&self) -> bool {
        self.committed == self.items && self.out.is_empty()
    }

    fn stalled(&self) -> bool {
        self.running.is_empty() && !self.is_done() && self.free.is_empty()
    }
}
